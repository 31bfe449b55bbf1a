//! `POST /{service}/tasks`: parsing the call, gatekeeping (auth, rate limit,
//! concurrency, faults) and the normal answers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use rand::Rng;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::faults::{Bucket, FaultKind, fault};
use crate::ids::now_ms;
use crate::records::{not_found, record, single_answer};
use crate::reply::{
    error_body, error_response, invalid_token, json_response, to_json, too_many_requests,
};
use crate::services::Profile;
use crate::state::{InFlight, Outcome, Shared, Task};

/// Body of `POST /{service}/tasks`; other fields (offset, trace_ids, ...)
/// are ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct TasksRequest {
    pub(crate) action: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) ids: Option<Vec<String>>,
    /// The ID key of the single-task services (captcha, digital-human).
    pub(crate) task_id: Option<String>,
    pub(crate) limit: Option<u64>,
}

/// A parsed tasks request, or the 400 it deserves.
pub(crate) enum Call {
    Single(String),
    Batch {
        ids: Vec<String>,
        limit: Option<u64>,
    },
    Invalid(&'static str, String),
}

/// Services that page their answers (openai, webextrator, maestro) never
/// serve more items than this in one answer, whatever `limit` says (their
/// tools document 1..=100). Others serve every ID asked for.
const MAX_LIMIT: u64 = 100;

pub(crate) fn parse_call(body: &[u8], profile: &Profile) -> Call {
    let req: TasksRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Call::Invalid("bad_request", format!("invalid JSON body: {e}")),
    };
    let action = req.action.as_deref().unwrap_or(if req.ids.is_some() {
        "retrieve_batch"
    } else {
        "retrieve"
    });
    if !profile.batches() {
        return match (action, req.task_id) {
            ("retrieve_batch", _) => Call::Invalid(
                "bad_request",
                format!(
                    "/{}/tasks retrieves one task at a time: send {{\"task_id\": ...}}",
                    profile.name
                ),
            ),
            (_, _) if req.ids.is_some() => Call::Invalid(
                "bad_request",
                "unexpected field `ids`: send one `task_id`".into(),
            ),
            ("retrieve", Some(id)) => Call::Single(id),
            ("retrieve", None) => Call::Invalid("bad_request", "missing field `task_id`".into()),
            (other, _) => Call::Invalid(
                "api_not_implemented",
                format!("action `{other}` is not implemented"),
            ),
        };
    }
    match (action, req.id, req.ids) {
        ("retrieve", Some(id), _) => Call::Single(id),
        ("retrieve_batch", _, Some(ids)) => Call::Batch {
            ids,
            limit: req.limit,
        },
        ("retrieve", None, _) => Call::Invalid("bad_request", "missing field `id`".into()),
        ("retrieve_batch", _, None) => Call::Invalid("bad_request", "missing field `ids`".into()),
        (other, _, _) => Call::Invalid(
            "api_not_implemented",
            format!("action `{other}` is not implemented"),
        ),
    }
}

/// What the gatekeeping decided for a request.
pub(crate) enum Gate {
    Reject(Response),
    Fault(FaultKind, u64),
    Normal,
}

pub(crate) async fn tasks_endpoint(
    State(sh): State<Arc<Shared>>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at_ms = now_ms();
    let Some(profile) = sh.profile(&service) else {
        // An API gateway's answer for a path that does not exist.
        let resp = error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no API at /{service}/tasks"),
        );
        let mut st = sh.lock();
        st.stats.count_request(&service);
        let seq = st.stats.requests;
        st.stats.count_status(resp.status());
        if sh.args.log_requests {
            st.stats.log_arrival(seq, &service, &body, at_ms, None);
            st.stats.log_answer(seq, resp.status().as_u16(), now_ms());
        }
        return resp;
    };
    let call = parse_call(&body, profile);
    let authorized = match &sh.args.token {
        None => true,
        Some(t) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| v == t),
    };
    let (guard, gate, seq) = {
        let mut st = sh.lock();
        st.in_flight += 1;
        st.stats.max_in_flight = st.stats.max_in_flight.max(st.in_flight);
        let s = &mut st.stats;
        s.count_request(&service);
        let seq = s.requests;
        match &call {
            Call::Single(_) => s.single_requests += 1,
            Call::Batch { ids, limit } => {
                s.batch_requests += 1;
                s.ids_requested += ids.len() as u64;
                s.max_ids_per_request = s.max_ids_per_request.max(ids.len() as u64);
                if *limit != Some(ids.len() as u64) {
                    s.limit_mismatches += 1;
                }
            }
            Call::Invalid(..) => {}
        }
        let gate = if !authorized {
            Gate::Reject(invalid_token())
        } else if !st.bucket.as_mut().is_none_or(Bucket::take)
            || sh.args.max_concurrent.is_some_and(|m| st.in_flight > m)
        {
            Gate::Reject(too_many_requests(Some(1)))
        } else if let Some(kind) = st.next_fault() {
            *st.stats.faults.entry(kind.name()).or_default() += 1;
            Gate::Fault(kind, st.faults.slow_ms)
        } else {
            Gate::Normal
        };
        if sh.args.log_requests {
            let fault = match gate {
                Gate::Fault(kind, _) => Some(kind.name()),
                _ => None,
            };
            st.stats.log_arrival(seq, &service, &body, at_ms, fault);
        }
        (InFlight(sh.clone()), gate, seq)
    };
    let resp = match gate {
        Gate::Reject(resp) => resp,
        Gate::Normal => answer(&sh, &service, profile, call),
        Gate::Fault(kind, slow_ms) => fault(&sh, &service, profile, call, kind, slow_ms).await,
    };
    {
        let mut st = sh.lock();
        st.stats.count_status(resp.status());
        if sh.args.log_requests {
            st.stats.log_answer(seq, resp.status().as_u16(), now_ms());
        }
    }
    drop(guard);
    resp
}

pub(crate) fn answer(sh: &Shared, service: &str, profile: &Profile, call: Call) -> Response {
    let (status, body) = answer_body(sh, service, profile, call);
    json_response(status, body)
}

/// The normal answer: status and JSON body.
pub(crate) fn answer_body(
    sh: &Shared,
    service: &str,
    profile: &Profile,
    call: Call,
) -> (StatusCode, Vec<u8>) {
    match call {
        Call::Invalid(code, msg) => (StatusCode::BAD_REQUEST, error_body(code, &msg)),
        Call::Single(id) => {
            let now = now_ms();
            let snap = {
                let mut st = sh.lock();
                sh.lookup(&mut st, &id, service, now).map(|t| poll(t, now))
            };
            let (status, body) = match snap {
                Some((task, hiccup)) => single_answer(&task, record(&task, now, hiccup)),
                None => not_found(profile),
            };
            (status, to_json(&body))
        }
        Call::Batch { ids, limit } => {
            if let Some(max) = sh.args.max_batch.filter(|&max| ids.len() > max) {
                let msg = format!("too many ids in one batch: {} > {max}", ids.len());
                return (StatusCode::BAD_REQUEST, error_body("bad_request", &msg));
            }
            let cap = if profile.page.is_some() {
                MAX_LIMIT
            } else {
                u64::MAX
            };
            let page = limit
                .map(|l| l.clamp(1, cap) as usize)
                .or(profile.page)
                .unwrap_or(usize::MAX)
                .min(sh.args.page_size.unwrap_or(usize::MAX));
            let now = now_ms();
            // `known` counts every requested ID the upstream knows, so a
            // count above the items says the page left some out.
            let mut known = 0usize;
            let mut snaps = Vec::with_capacity(ids.len().min(page));
            {
                let mut st = sh.lock();
                for id in &ids {
                    let Some(task) = sh.lookup(&mut st, id, service, now) else {
                        continue;
                    };
                    known += 1;
                    if known > page {
                        continue;
                    }
                    let snap = poll(task, now);
                    let rate = sh.args.duplicate_rate;
                    if rate > 0.0 && st.rng.r#gen::<f64>() < rate {
                        snaps.push(snap.clone());
                    }
                    snaps.push(snap);
                }
            }
            let items: Vec<Value> = snaps.iter().map(|(t, h)| record(t, now, *h)).collect();
            let mut body = Map::new();
            body.insert("items".into(), items.into());
            body.insert(profile.count_key.into(), known.into());
            (StatusCode::OK, to_json(&Value::Object(body)))
        }
    }
}

/// Counts a poll of `t`; decides whether this poll is the hiccup; snapshots the task.
pub(crate) fn poll(t: &mut Task, now: u64) -> (Task, bool) {
    t.polls += 1;
    let hiccup =
        t.outcome == Outcome::Hiccup && !t.hiccup_done && now >= t.created_ms + t.duration_ms / 2;
    t.hiccup_done |= hiccup;
    (t.clone(), hiccup)
}
