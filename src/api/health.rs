//! Operations endpoints: `/healthz` (the process is up; checks nothing
//! else), `/readyz` (the store takes writes, the upstream accepts the
//! token; warnings an operator should see), `/metrics`.
//!
//! May call: `store`, `poll::upstream` (its health), `config`, `metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiState, WRITE_CHECK_TTL};

pub(super) async fn metrics(State(s): State<ApiState>) -> Response {
    match s.store.stats().await {
        Ok(st) => s.metrics.set_store_stats(&st),
        Err(e) => tracing::warn!(error = %e, "metrics: store gauges are stale"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

pub(super) async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub(super) async fn readyz(State(s): State<ApiState>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = write_check(&s).await {
        problems.push(format!("store: {e}"));
    }
    let up = s.upstream.health();
    if !up.token_accepted {
        problems.push("upstream: the token is refused (401); fix upstream.token".to_string());
    }
    // Not reasons to stop taking work, but an operator should see them.
    let mut warnings: Vec<String> = up
        .broken_services
        .iter()
        .map(|b| {
            format!(
                "service {}: the upstream refuses it ({} {}: {}); its tasks wait",
                b.service, b.status, b.code, b.message
            )
        })
        .collect();
    warnings.extend(s.config.borrow().nothing_receives());
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({"status": if problems.is_empty() { "ready" } else { "not ready" }});
    if !problems.is_empty() {
        body["problems"] = json!(problems);
    }
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    (status, Json(body)).into_response()
}

/// Proves the store takes writes, at most once per [`WRITE_CHECK_TTL`].
pub(super) async fn write_check(s: &ApiState) -> Result<(), String> {
    let mut last = s.write_check.lock().await;
    if let Some((at, result)) = last.as_ref()
        && at.elapsed() < WRITE_CHECK_TTL
    {
        return result.clone();
    }
    let started = std::time::Instant::now();
    let result = s
        .store
        .check_writable(s.clock.now_ms())
        .await
        .map_err(|e| e.to_string());
    s.metrics.store_call("check_writable", started);
    *last = Some((std::time::Instant::now(), result.clone()));
    result
}
