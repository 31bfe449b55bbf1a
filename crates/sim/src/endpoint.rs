//! `POST /{service}/tasks`: parsing the call, gatekeeping (auth, rate limit,
//! concurrency, faults) and the normal answers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use rand::Rng;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::faults::{Bucket, FaultKind, fault};
use crate::ids::now_ms;
use crate::records::record;
use crate::reply::{error_body, invalid_token, json_response, to_json, too_many_requests};
use crate::state::{InFlight, Outcome, Shared, Task};

/// Body of `POST /{service}/tasks`.
#[derive(Debug, Deserialize)]
pub(crate) struct TasksRequest {
    pub(crate) action: Option<String>,
    pub(crate) id: Option<String>,
    pub(crate) ids: Option<Vec<String>>,
}

/// A parsed tasks request, or the 400 it deserves.
pub(crate) enum Call {
    Single(String),
    Batch(Vec<String>),
    Invalid(&'static str, String),
}

pub(crate) fn parse_call(body: &[u8]) -> Call {
    let req: TasksRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Call::Invalid("bad_request", format!("invalid JSON body: {e}")),
    };
    let action = req.action.as_deref().unwrap_or(if req.ids.is_some() {
        "retrieve_batch"
    } else {
        "retrieve"
    });
    match (action, req.id, req.ids) {
        ("retrieve", Some(id), _) => Call::Single(id),
        ("retrieve_batch", _, Some(ids)) => Call::Batch(ids),
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
    let call = parse_call(&body);
    let authorized = match &sh.args.token {
        None => true,
        Some(t) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| v == t),
    };
    let (guard, gate) = {
        let mut st = sh.lock();
        st.in_flight += 1;
        st.stats.max_in_flight = st.stats.max_in_flight.max(st.in_flight);
        let s = &mut st.stats;
        s.requests += 1;
        match &call {
            Call::Single(_) => s.single_requests += 1,
            Call::Batch(ids) => {
                s.batch_requests += 1;
                s.ids_requested += ids.len() as u64;
                s.max_ids_per_request = s.max_ids_per_request.max(ids.len() as u64);
            }
            Call::Invalid(..) => {}
        }
        let gate = if !authorized {
            Gate::Reject(invalid_token())
        } else if !st.bucket.as_mut().is_none_or(Bucket::take)
            || sh.args.max_concurrent.is_some_and(|m| st.in_flight > m)
        {
            Gate::Reject(too_many_requests(true))
        } else if let Some(kind) = st.next_fault() {
            *st.stats.faults.entry(kind.name()).or_default() += 1;
            Gate::Fault(kind, st.faults.slow_ms)
        } else {
            Gate::Normal
        };
        (InFlight(sh.clone()), gate)
    };
    let resp = match gate {
        Gate::Reject(resp) => resp,
        Gate::Normal => answer(&sh, &service, call),
        Gate::Fault(kind, slow_ms) => fault(&sh, &service, call, kind, slow_ms).await,
    };
    *sh.lock()
        .stats
        .statuses
        .entry(resp.status().as_u16())
        .or_default() += 1;
    drop(guard);
    resp
}

pub(crate) fn answer(sh: &Shared, service: &str, call: Call) -> Response {
    let (status, body) = answer_body(sh, service, call);
    json_response(status, body)
}

/// The normal answer: status and JSON body.
pub(crate) fn answer_body(sh: &Shared, service: &str, call: Call) -> (StatusCode, Vec<u8>) {
    match call {
        Call::Invalid(code, msg) => (StatusCode::BAD_REQUEST, error_body(code, &msg)),
        Call::Single(id) => {
            let now = now_ms();
            let snap = {
                let mut st = sh.lock();
                sh.lookup(&mut st, &id, service, now).map(|t| poll(t, now))
            };
            match snap {
                Some((task, hiccup)) => (StatusCode::OK, to_json(&record(&task, now, hiccup))),
                None => (
                    StatusCode::NOT_FOUND,
                    error_body("not_found", "task not found"),
                ),
            }
        }
        Call::Batch(ids) => {
            if let Some(max) = sh.args.max_batch.filter(|&max| ids.len() > max) {
                let msg = format!("too many ids in one batch: {} > {max}", ids.len());
                return (StatusCode::BAD_REQUEST, error_body("bad_request", &msg));
            }
            let now = now_ms();
            let mut snaps = Vec::with_capacity(ids.len());
            {
                let mut st = sh.lock();
                for id in &ids {
                    let Some(snap) = sh.lookup(&mut st, id, service, now).map(|t| poll(t, now))
                    else {
                        continue;
                    };
                    let rate = sh.args.duplicate_rate;
                    if rate > 0.0 && st.rng.r#gen::<f64>() < rate {
                        snaps.push(snap.clone());
                    }
                    snaps.push(snap);
                }
            }
            let items: Vec<Value> = snaps.iter().map(|(t, h)| record(t, now, *h)).collect();
            let count = items.len();
            (
                StatusCode::OK,
                to_json(&json!({"items": items, "count": count})),
            )
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
