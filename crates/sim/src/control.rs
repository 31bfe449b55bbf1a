//! The control endpoints under `/_sim/`: create tasks, inspect one, script
//! faults, read and reset statistics and the request log, read what became
//! of the callbacks.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::faults::FaultKind;
use crate::ids::now_ms;
use crate::reply::{error_response, json_response, to_json};
use crate::state::{Outcome, Shared, Task, TaskSpec};
use crate::stats::Stats;

pub(crate) async fn create_tasks(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let specs: Result<Vec<TaskSpec>, serde_json::Error> = serde_json::from_slice::<Value>(&body)
        .and_then(|v| match v {
            Value::Object(mut m) if m.contains_key("tasks") => {
                serde_json::from_value(m.remove("tasks").unwrap_or_default())
            }
            other => serde_json::from_value(other).map(|s| vec![s]),
        });
    let specs = match specs {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("invalid task spec: {e}");
            return error_response(StatusCode::BAD_REQUEST, "bad_request", &msg);
        }
    };
    let now = now_ms();
    let tasks: Result<Vec<Task>, String> = specs
        .into_iter()
        .map(|s| sh.task_from_spec(s, now))
        .collect();
    let tasks = match tasks {
        Ok(t) => t,
        Err(msg) => {
            let msg = format!("invalid task spec: {msg}");
            return error_response(StatusCode::BAD_REQUEST, "bad_request", &msg);
        }
    };
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    {
        let mut st = sh.lock();
        for t in tasks {
            sh.callbacks.schedule(&t);
            st.tasks.insert(t.id.clone(), t);
        }
    }
    json_response(StatusCode::CREATED, to_json(&json!({ "ids": ids })))
}

pub(crate) async fn task_info(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Some(t) = sh.lock().tasks.get(&id).cloned() else {
        return error_response(StatusCode::NOT_FOUND, "not_found", "task not found");
    };
    // A replayed record is served once the duration has passed, whatever the outcome.
    let finishes =
        (t.outcome != Outcome::Never || t.record.is_some()).then_some(t.created_ms + t.duration_ms);
    let v = json!({
        "id": t.id, "service": t.service, "family": t.profile.family.name(),
        "created_at_ms": t.created_ms, "finishes_at_ms": finishes,
        "duration_ms": t.duration_ms, "items": t.items, "outcome": t.outcome,
        "replay": t.record.is_some(), "polls": t.polls,
        "callback_url": t.callback.as_ref().map(|c| c.url.as_str()),
        "callback": sh.callbacks.records.get(&t.id),
    });
    json_response(StatusCode::OK, to_json(&v))
}

/// Body of `POST /_sim/faults`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultsUpdate {
    pub(crate) rate: Option<f64>,
    pub(crate) kinds: Option<Vec<FaultKind>>,
    pub(crate) script: Option<Vec<FaultKind>>,
    pub(crate) slow_ms: Option<u64>,
    /// The `Retry-After` (seconds) a `429` fault sends.
    pub(crate) retry_after_s: Option<u64>,
    /// How long every fault waits before it answers (ms).
    pub(crate) delay_ms: Option<u64>,
}

pub(crate) async fn set_faults(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let update = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(FaultsUpdate::default())
    } else {
        serde_json::from_slice::<FaultsUpdate>(&body)
    };
    let update = match update {
        Ok(u) => u,
        Err(e) => {
            let msg = format!("invalid faults settings: {e}");
            return error_response(StatusCode::BAD_REQUEST, "bad_request", &msg);
        }
    };
    let v = {
        let mut st = sh.lock();
        let f = &mut st.faults;
        if let Some(rate) = update.rate {
            f.rate = rate;
        }
        if let Some(kinds) = update.kinds {
            f.kinds = kinds;
        }
        if let Some(slow_ms) = update.slow_ms {
            f.slow_ms = slow_ms;
        }
        if let Some(secs) = update.retry_after_s {
            f.retry_after_s = secs;
        }
        if let Some(ms) = update.delay_ms {
            f.delay_ms = ms;
        }
        f.script.extend(update.script.unwrap_or_default());
        json!({"rate": f.rate, "kinds": f.kinds, "script": f.script, "slow_ms": f.slow_ms,
               "retry_after_s": f.retry_after_s, "delay_ms": f.delay_ms})
    };
    json_response(StatusCode::OK, to_json(&v))
}

pub(crate) async fn stats(State(sh): State<Arc<Shared>>) -> Response {
    let mut v = {
        let st = sh.lock();
        st.stats.to_json(st.tasks.len())
    };
    sh.callbacks.counters.write_into(&mut v);
    json_response(StatusCode::OK, to_json(&v))
}

/// `GET /_sim/callbacks`: what became of every task's callback, by task ID
/// (`outcome`: pending, lost, delivered or failed; `due_at_ms`,
/// `sent_at_ms`, `answered_at_ms`, `status`, `posts`).
pub(crate) async fn callbacks(State(sh): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, to_json(&sh.callbacks.records.to_json()))
}

/// `GET /_sim/requests`: every request since the last reset, in arrival
/// order, when the simulator runs with `--log-requests`.
pub(crate) async fn requests(State(sh): State<Arc<Shared>>) -> Response {
    let v = {
        let st = sh.lock();
        let mut log = st.stats.log.clone();
        log.sort_by_key(|r| r.seq);
        json!({"logging": sh.args.log_requests, "requests": log})
    };
    json_response(StatusCode::OK, to_json(&v))
}

pub(crate) async fn reset_stats(State(sh): State<Arc<Shared>>) -> Response {
    sh.lock().stats = Stats::default();
    sh.callbacks.counters.reset();
    json_response(StatusCode::OK, to_json(&json!({"reset": true})))
}
