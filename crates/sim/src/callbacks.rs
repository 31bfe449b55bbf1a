//! Callbacks: a task created with a `callback_url` (or under `--callback-url`)
//! POSTs its final body to that URL at the moment it settles, as AceData
//! Cloud does for a generation request's `callback_url`: JSON, unsigned,
//! never retried. A timer is armed when the task is created, so the POST
//! leaves at creation + duration + delay whether or not anyone polls.
//!
//! Knobs: `--callback-delay-ms`, `--callback-loss-rate` and
//! `--callback-duplicate-rate`, overridden per task by the spec's
//! `callback_delay_ms`, `callback_loss` and `callback_duplicate`. Whether a
//! task's callback is lost or sent twice derives from hash(seed, task ID),
//! like every other pseudo-random choice of a task, so a run is reproducible.
//!
//! What became of each task's callback (pending, lost, delivered or
//! failed, and when it left and was answered) is kept per task and served
//! by `GET /_sim/callbacks` and `GET /_sim/tasks/{id}`, so a test or the
//! benchmark can tell the tasks whose callback arrived from the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, header};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use crate::ids::{mix, now_ms, unit};
use crate::records::record;
use crate::reply::to_json;
use crate::services::{Family, Multi};
use crate::state::{Outcome, Task};

/// How long the simulator waits for a callback receiver to answer before
/// counting the callback as failed.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The callback a task makes when it settles, decided when the task is
/// created so that its fate does not depend on when or whether it is polled.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Where the final body is POSTed.
    pub(crate) url: String,
    /// How long after settling the POST leaves (ms).
    pub(crate) delay_ms: u64,
    /// Never sent (the upstream "missed" it).
    pub(crate) lost: bool,
    /// Sent twice, one POST after the other.
    pub(crate) twice: bool,
}

impl Plan {
    /// The plan for the task of hash `key`: `loss` and `duplicate` are the
    /// fractions of tasks whose callback is lost or sent twice.
    pub(crate) fn new(url: String, delay_ms: u64, loss: f64, duplicate: f64, key: u64) -> Self {
        Self {
            url,
            delay_ms,
            lost: unit(mix(key, 31)) < loss,
            twice: unit(mix(key, 32)) < duplicate,
        }
    }
}

/// Callback counters, served by `GET /_sim/stats`. They are atomics outside
/// the state's mutex because callbacks finish on their own tasks, long after
/// the request that created them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// POSTs made (a duplicated callback counts two).
    sent: AtomicU64,
    /// Callbacks dropped on purpose (`--callback-loss-rate`).
    lost: AtomicU64,
    /// Callbacks sent twice (`--callback-duplicate-rate`).
    duplicated: AtomicU64,
    /// POSTs whose receiver was unreachable, timed out or answered non-2xx.
    failed: AtomicU64,
    /// Callbacks armed and not finished yet (not cleared by a reset).
    pending: AtomicU64,
}

impl Counters {
    /// Writes the counters into the stats body `v`.
    pub(crate) fn write_into(&self, v: &mut Value) {
        if let Value::Object(m) = v {
            for (k, c) in [
                ("callbacks_sent", &self.sent),
                ("callbacks_lost", &self.lost),
                ("callbacks_duplicated", &self.duplicated),
                ("callbacks_failed", &self.failed),
                ("callbacks_pending", &self.pending),
            ] {
                m.insert(k.into(), c.load(Ordering::Relaxed).into());
            }
        }
    }

    /// Clears every counter but `pending` (a gauge of armed timers).
    pub(crate) fn reset(&self) {
        for c in [&self.sent, &self.lost, &self.duplicated, &self.failed] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// What became of a task's callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Fate {
    /// Armed; not due yet, or waiting for a connection.
    Pending,
    /// Dropped on purpose (`--callback-loss-rate`, `callback_loss`).
    Lost,
    /// A POST was answered 2xx (the first such answer is recorded).
    Delivered,
    /// Every POST failed: unreachable, timed out or not 2xx.
    Failed,
}

/// One task's callback as it went, served by `GET /_sim/callbacks`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Record {
    pub(crate) outcome: Fate,
    /// When it was due to leave: settled + delay (ms since the epoch).
    pub(crate) due_at_ms: u64,
    /// When the first POST left, if one did.
    pub(crate) sent_at_ms: Option<u64>,
    /// When the first 2xx answer came back, if one did.
    pub(crate) answered_at_ms: Option<u64>,
    /// The last POST's HTTP status, if one was answered at all.
    pub(crate) status: Option<u16>,
    /// POSTs made (2 for a duplicated callback).
    pub(crate) posts: u32,
}

impl Record {
    fn pending(due_at_ms: u64) -> Self {
        Self {
            outcome: Fate::Pending,
            due_at_ms,
            sent_at_ms: None,
            answered_at_ms: None,
            status: None,
            posts: 0,
        }
    }
}

/// Every task's callback record, by task ID. Kept across `/_sim/reset`
/// (like the tasks themselves); a task created again starts a new one.
#[derive(Debug, Default)]
pub(crate) struct Records(Mutex<HashMap<String, Record>>);

impl Records {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Record)) {
        if let Some(r) = self.lock().get_mut(id) {
            f(r);
        }
    }

    /// The record of task `id`, if it has a callback.
    pub(crate) fn get(&self, id: &str) -> Option<Record> {
        self.lock().get(id).cloned()
    }

    /// Every record, by task ID: the body of `GET /_sim/callbacks`.
    pub(crate) fn to_json(&self) -> Value {
        let all = self.lock();
        let mut m = Map::with_capacity(all.len());
        for (id, r) in all.iter() {
            m.insert(id.clone(), serde_json::to_value(r).unwrap_or(Value::Null));
        }
        json!({ "callbacks": m })
    }
}

/// What sends callbacks: one HTTP client for every receiver, the counters,
/// and the cap on callbacks in flight.
#[derive(Debug)]
pub(crate) struct Callbacks {
    client: reqwest::Client,
    pub(crate) counters: Arc<Counters>,
    /// What became of each task's callback.
    pub(crate) records: Arc<Records>,
    /// `--callback-concurrency` permits. When many tasks settle at once,
    /// the callbacks beyond the cap wait for a connection to come free and
    /// reuse it, rather than each opening its own: on loopback that halves
    /// the lag of a burst of a thousand.
    in_flight: Arc<Semaphore>,
}

impl Callbacks {
    pub(crate) fn new(concurrency: u32) -> Self {
        // No proxy: receivers are the caller's own (usually on loopback).
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            client,
            counters: Arc::default(),
            records: Arc::default(),
            in_flight: Arc::new(Semaphore::new(concurrency.max(1) as usize)),
        }
    }

    /// Arms the callback of `t`, if it has one and ever settles. Must run
    /// inside the Tokio runtime (any request handler does).
    pub(crate) fn schedule(&self, t: &Task) {
        let Some(plan) = t.callback.clone() else {
            return;
        };
        if !settles(t) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(task = %t.id, "no runtime to send the callback from");
            return;
        };
        let due_ms = t.created_ms + t.duration_ms + plan.delay_ms;
        // now_ms() rounds down, so the timer never fires before `due_ms`.
        let at = Instant::now() + Duration::from_millis(due_ms.saturating_sub(now_ms()));
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        self.records
            .lock()
            .insert(t.id.clone(), Record::pending(due_ms));
        let (client, counters, task) = (self.client.clone(), self.counters.clone(), t.clone());
        let (in_flight, records) = (self.in_flight.clone(), self.records.clone());
        rt.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            // Never closed, so this always gets a permit.
            let _permit = in_flight.acquire().await;
            fire(&client, &counters, &records, &task, &plan).await;
            counters.pending.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Whether `t` ever reaches a final record: a replayed record always does
/// (unless it is `{}`, an ID the upstream does not know); otherwise every
/// outcome but `never`. `failed_unfinished` counts: its failure answer is
/// final, only `finished_at` never comes.
fn settles(t: &Task) -> bool {
    if t.record.is_some() {
        return !t.replays_nothing();
    }
    t.outcome != Outcome::Never
}

/// Sends the callback of `task` now (or drops it, as `plan` says), and
/// records what became of it.
async fn fire(
    client: &reqwest::Client,
    counters: &Counters,
    records: &Records,
    task: &Task,
    plan: &Plan,
) {
    if plan.lost {
        counters.lost.fetch_add(1, Ordering::Relaxed);
        records.update(&task.id, |r| r.outcome = Fate::Lost);
        return;
    }
    let settled_at = task.created_ms + task.duration_ms;
    let body = to_json(&body(task, record(task, settled_at, false)));
    if plan.twice {
        counters.duplicated.fetch_add(1, Ordering::Relaxed);
    }
    for _ in 0..if plan.twice { 2 } else { 1 } {
        counters.sent.fetch_add(1, Ordering::Relaxed);
        let sent_at = now_ms();
        records.update(&task.id, |r| {
            r.sent_at_ms.get_or_insert(sent_at);
            r.posts += 1;
        });
        let sent = client
            .post(&plan.url)
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .body(body.clone())
            .send()
            .await;
        let answered = now_ms();
        let (ok, status) = match sent {
            Ok(resp) => {
                let status = resp.status();
                // Read the answer so the connection can be reused.
                let _ = resp.bytes().await;
                (status.is_success(), Some(status.as_u16()))
            }
            Err(_) => (false, None),
        };
        records.update(&task.id, |r| {
            r.status = status.or(r.status);
            if ok && r.outcome != Fate::Delivered {
                r.outcome = Fate::Delivered;
                r.answered_at_ms = Some(answered);
            } else if !ok && r.outcome == Fate::Pending {
                r.outcome = Fate::Failed;
            }
        });
        if !ok {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(task = %task.id, url = %plan.url, "callback failed (not retried)");
        }
    }
}

/// Checks a callback URL (`--callback-url`, a spec's `callback_url`): an
/// absolute `http` or `https` URL with a host.
pub(crate) fn parse_callback_url(s: &str) -> Result<String, String> {
    match reqwest::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(s.to_owned()),
        Ok(_) => Err(format!("callback URL `{s}` is not an http(s) URL")),
        Err(e) => Err(format!("callback URL `{s}`: {e}")),
    }
}

/// The body AceData Cloud POSTs to a `callback_url`, given the task's final
/// `record`. A callback carries what the generation request would have
/// answered synchronously, and that answer is what the platform stores as
/// the task record's `response`, so per family:
///
/// - items, urls, flat_state, flat_progress, data_object, top_status,
///   finished_only (the platform record families): the record's `response`
///   object, with `task_id` (the task's ID), `success` (false if it holds an
///   `error`) and the record's `trace_id` filled in where the stored
///   `response` leaves them out (producer's, qrart's, dreamina's, maestro's
///   and webextrator's do; the synchronous answers have them).
/// - openai (urls, results at once): its `response` is the bare OpenAI
///   images body, and its documented callback wraps it:
///   `{"success": true, "task_id", "trace_id", "data": {created, data}}`.
///   A failure `response` already names the task and is sent as is.
/// - task_envelope (minimax) and single (captcha, digital-human): the record
///   is the answer itself (there is no `response`), so
///   `{"task_id": ID, ...the record's fields}`.
///
/// A record without a `response` object (a replayed one, say) falls back to
/// `{"task_id": ID, ...the record's fields}` too.
pub(crate) fn body(t: &Task, record: Value) -> Value {
    let mut r = match record {
        Value::Object(m) => m,
        _ => return json!({"task_id": t.id}),
    };
    let flat = matches!(t.profile.family, Family::TaskEnvelope | Family::Single);
    let response = if flat { None } else { r.remove("response") };
    let Some(Value::Object(mut resp)) = response else {
        r.insert("task_id".into(), t.id.clone().into());
        return Value::Object(r);
    };
    let trace_id = r.get("trace_id").filter(|v| v.is_string()).cloned();
    let openai = t.profile.family == Family::Urls && t.profile.multi == Multi::AtOnce;
    if openai && !resp.contains_key("task_id") {
        let mut wrapped = Map::new();
        wrapped.insert("success".into(), true.into());
        wrapped.insert("task_id".into(), t.id.clone().into());
        if let Some(tr) = trace_id {
            wrapped.insert("trace_id".into(), tr);
        }
        wrapped.insert("data".into(), Value::Object(resp));
        return Value::Object(wrapped);
    }
    let success = !resp.contains_key("error");
    resp.entry("success").or_insert(success.into());
    resp.entry("task_id").or_insert(t.id.clone().into());
    if let Some(tr) = trace_id {
        resp.entry("trace_id").or_insert(tr);
    }
    Value::Object(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimArgs;
    use crate::services::SERVICES;
    use crate::state::{Shared, TaskSpec};

    fn task(sh: &Shared, service: &str, outcome: Outcome) -> Task {
        let spec = TaskSpec {
            id: Some("cb-1".into()),
            service: Some(service.into()),
            outcome: Some(outcome),
            items: Some(2),
            ..TaskSpec::default()
        };
        sh.task_from_spec(spec, 1_767_000_000_000).unwrap()
    }

    fn final_body(t: &Task) -> Value {
        body(t, record(t, t.created_ms + t.duration_ms, false))
    }

    #[test]
    fn every_service_names_the_task_and_says_whether_it_succeeded() {
        let sh = Shared::new(SimArgs::default());
        for p in SERVICES {
            for outcome in [Outcome::Succeeded, Outcome::Failed] {
                let t = task(&sh, p.name, outcome);
                let b = final_body(&t);
                assert_eq!(b["task_id"], "cb-1", "{} {outcome:?}: {b}", p.name);
                let ok = outcome == Outcome::Succeeded;
                match p.name {
                    // minimax says it with `status`, captcha and
                    // digital-human with `success` and their state word.
                    "minimax" => {
                        let status = if ok { "succeeded" } else { "failed" };
                        assert_eq!(b["status"], status, "{b}");
                    }
                    _ => assert_eq!(b["success"], ok, "{} {outcome:?}: {b}", p.name),
                }
                assert!(b.get("response").is_none(), "{} {b}", p.name);
            }
        }
    }

    #[test]
    fn shapes_per_family() {
        let sh = Shared::new(SimArgs::default());
        // producer: the response, `success` and `trace_id` filled in.
        let t = task(&sh, "producer", Outcome::Succeeded);
        let b = final_body(&t);
        assert_eq!(b["data"].as_array().unwrap().len(), 2);
        assert_eq!(b["data"][1]["state"], "succeeded");
        assert_eq!(b["trace_id"].as_str().unwrap().len(), 36);
        let t = task(&sh, "producer", Outcome::Failed);
        let b = final_body(&t);
        assert_eq!(b["error"]["code"], "generation_failed");
        // suno's response is already the whole answer.
        let t = task(&sh, "suno", Outcome::Succeeded);
        let rec = record(&t, t.created_ms + t.duration_ms, false);
        assert_eq!(body(&t, rec.clone()), rec["response"]);
        // openai: the images body under `data`, as documented.
        let t = task(&sh, "openai", Outcome::Succeeded);
        let b = final_body(&t);
        assert_eq!(b["data"]["data"].as_array().unwrap().len(), 2);
        assert!(b["data"]["created"].is_u64());
        // minimax: the bare task object, named.
        let t = task(&sh, "minimax", Outcome::Succeeded);
        let b = final_body(&t);
        assert_eq!(b["id"], "cb-1");
        assert!(b["content"]["url"].is_string());
        // dreamina keeps its provider ID inside `data`.
        let t = task(&sh, "dreamina", Outcome::Succeeded);
        let b = final_body(&t);
        assert_eq!(b["data"]["task_id"], "cb1");
        assert_eq!(b["data"]["status"], "done");
        // A replayed record without `response` is sent whole, named.
        let b = body(&t, json!({"id": "cb-1", "status": "odd"}));
        assert_eq!(b, json!({"id": "cb-1", "status": "odd", "task_id": "cb-1"}));
    }

    #[test]
    fn plan_draws_from_the_seed() {
        let all = Plan::new("http://x/".into(), 0, 1.0, 1.0, 7);
        assert!(all.lost && all.twice);
        let none = Plan::new("http://x/".into(), 0, 0.0, 0.0, 7);
        assert!(!none.lost && !none.twice);
        let lost = (0..1000u64)
            .filter(|k| Plan::new(String::new(), 0, 0.3, 0.0, *k).lost)
            .count();
        assert!((200..400).contains(&lost), "{lost}");
    }

    #[test]
    fn callback_urls_must_be_http() {
        assert_eq!(
            parse_callback_url("http://127.0.0.1:9/cb?x=1").unwrap(),
            "http://127.0.0.1:9/cb?x=1"
        );
        assert!(parse_callback_url("https://example.com/").is_ok());
        for bad in [
            "",
            "127.0.0.1:9/cb",
            "ftp://example.com/",
            "file:///tmp/x",
            "http://",
        ] {
            assert!(parse_callback_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn never_settling_tasks_do_not_call_back() {
        let sh = Shared::new(SimArgs::default());
        assert!(settles(&task(&sh, "producer", Outcome::Succeeded)));
        assert!(settles(&task(&sh, "producer", Outcome::FailedUnfinished)));
        assert!(!settles(&task(&sh, "producer", Outcome::Never)));
    }
}
