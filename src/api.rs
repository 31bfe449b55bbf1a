//! The control API (contract §5): enqueue and inspect tasks, list and replay
//! deliveries, health. JSON in, JSON out; every error is
//! `{"error": {"code", "message"}}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::clock::now_ms;
use crate::config::Config;
use crate::ingest::{IngestError, Rules, parse_enqueue};
use crate::store::{DeliveryState, Store, StoreError};
use crate::upstream::UpstreamClient;

/// What every handler needs.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub config: watch::Receiver<Arc<Config>>,
    pub upstream: Arc<UpstreamClient>,
    /// Wakes the poller after an enqueue.
    pub poller_wake: Arc<Notify>,
    /// Wakes the dispatcher after a replay.
    pub dispatcher_wake: Arc<Notify>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The last store write check and when it ran: `/readyz` writes at most
    /// once a second however often it is asked.
    pub write_check: Arc<tokio::sync::Mutex<Option<WriteCheck>>>,
}

/// One store write check: when it ran and what it found.
pub type WriteCheck = (std::time::Instant, Result<(), String>);

/// How long a store write check answers for `/readyz`.
const WRITE_CHECK_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// An API error: status, machine code and message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error in the control API");
        ApiError::new(503, "store_unavailable", e.to_string())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::new(400, "invalid_query", e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::new(400, "invalid_path", e.body_text())
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        ApiError::new(e.status, e.code, e.message)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The router. Health and metrics are open; everything under `/v1` needs
/// the bearer token when `api.token` is set.
pub fn router(state: ApiState) -> Router {
    let limit = state.config.borrow().api.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/tasks", post(enqueue))
        .route("/v1/tasks/{id}", get(get_task).delete(delete_task))
        .route("/v1/stats", get(stats))
        .route("/v1/deliveries", get(list_deliveries))
        .route("/v1/deliveries/{id}/replay", post(replay))
        .route("/v1/deliveries/replay-failed", post(replay_all))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(404, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                405,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(s): State<ApiState>, headers: HeaderMap, req: Request, next: Next) -> Response {
    let token = s.config.borrow().api.token.clone();
    if let Some(token) = token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if constant_time_eq(g.trim().as_bytes(), token.expose().as_bytes()) => {}
            Some(_) => {
                return ApiError::new(401, "unauthorized", "wrong API token").into_response();
            }
            None => {
                return ApiError::new(
                    401,
                    "unauthorized",
                    "missing API token: send authorization: Bearer TOKEN",
                )
                .into_response();
            }
        }
    }
    next.run(req).await
}

fn body_or_error(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                413,
                "body_too_large",
                "request body is over api.max_body_bytes",
            )
        } else {
            ApiError::new(400, "bad_body", e.body_text())
        }
    })
}

async fn enqueue(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<impl IntoResponse> {
    let body = body_or_error(body)?;
    let cfg = s.config.borrow().clone();
    let tasks = parse_enqueue(
        &body,
        Rules {
            default_service: &cfg.upstream.default_service,
            profiles: &cfg.upstream.profiles,
            max_webhooks: cfg.api.max_webhooks_per_task,
        },
    )?;
    if !cfg.delivery.allow_private_networks {
        for t in &tasks {
            for (i, w) in t.webhooks.iter().enumerate() {
                let url = url::Url::parse(w).map_err(|e| {
                    ApiError::new(
                        422,
                        "invalid_webhook",
                        format!("webhooks[{i}] of task {:?}: {e}", t.id),
                    )
                })?;
                crate::ssrf::check_url(&url).map_err(|m| {
                    ApiError::new(
                        422,
                        "invalid_webhook",
                        format!("webhooks[{i}] of task {:?}: {m}", t.id),
                    )
                })?;
            }
        }
    }
    let n = tasks.len();
    let receives = tasks.iter().all(|t| !t.webhooks.is_empty());
    let first = cfg.poll.first_poll_after.as_millis() as i64;
    let out = s.store.enqueue(now_ms(), first, tasks).await?;
    tracing::info!(
        tasks = n,
        accepted = out.accepted,
        duplicates = out.duplicates,
        "enqueued"
    );
    s.metrics.enqueued.inc_by(out.accepted as u64);
    s.poller_wake.notify_one();
    let mut answer = json!(out);
    if cfg.webhooks.is_empty() && !receives {
        answer["warning"] = json!(
            "no webhook is configured and some tasks name none: their results reach no receiver \
             (they stay visible through GET /v1/tasks/ID for store.done_retention)"
        );
    }
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

async fn get_task(
    State(s): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = path?;
    match s.store.get_task(id.clone()).await? {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(ApiError::new(
            404,
            "not_found",
            format!("task {id:?} is not watched"),
        )),
    }
}

async fn delete_task(
    State(s): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(id) = path?;
    if s.store.delete_task(id.clone()).await? {
        tracing::info!(task_id = %id, "stopped watching on request");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            404,
            "not_found",
            format!("task {id:?} is not watched"),
        ))
    }
}

async fn stats(State(s): State<ApiState>) -> ApiResult<Response> {
    let st = s.store.stats().await?;
    let up = s.upstream.health();
    Ok(Json(json!({
        "tasks": {"watching": st.watching, "delivering": st.delivering, "done": st.done},
        "deliveries": {"pending": st.deliveries_pending, "dead_letters": st.dead_letters,
                       "webhook_removed": st.webhook_removed},
        "dead_letters": st.dead_letters,
        "oldest_watching_enqueued_at": st.oldest_watching_enqueued_at.map(crate::clock::rfc3339),
        "upstream": up,
    }))
    .into_response())
}

/// The query of `GET /v1/deliveries`.
#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list_deliveries(
    State(s): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = query?;
    let state = match q.state.as_deref() {
        None => None,
        Some(w) => Some(DeliveryState::parse(w).ok_or_else(|| {
            ApiError::new(
                400,
                "invalid_field",
                format!("state: {w:?} is not one of {}", DeliveryState::NAMES),
            )
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let list = s.store.list_deliveries(state, limit).await?;
    Ok(Json(json!({"deliveries": list})).into_response())
}

async fn replay(
    State(s): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = path?;
    let n: i64 = id.parse().map_err(|_| {
        ApiError::new(
            400,
            "invalid_field",
            format!("id: {id:?} is not a delivery id"),
        )
    })?;
    if s.store.replay_delivery(now_ms(), n).await? {
        s.dispatcher_wake.notify_one();
        Ok((StatusCode::ACCEPTED, Json(json!({"replayed": 1}))).into_response())
    } else {
        Err(ApiError::new(
            404,
            "not_found",
            format!("delivery {n} is not a failed (dead-lettered) or parked delivery"),
        ))
    }
}

async fn replay_all(State(s): State<ApiState>) -> ApiResult<Response> {
    let n = s.store.replay_all_failed(now_ms()).await?;
    s.dispatcher_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(json!({"replayed": n}))).into_response())
}

async fn metrics(State(s): State<ApiState>) -> Response {
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

async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(s): State<ApiState>) -> Response {
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
    warnings.extend(crate::daemon::nothing_receives(&s.config.borrow()));
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
async fn write_check(s: &ApiState) -> Result<(), String> {
    let mut last = s.write_check.lock().await;
    if let Some((at, result)) = last.as_ref()
        && at.elapsed() < WRITE_CHECK_TTL
    {
        return result.clone();
    }
    let result = s
        .store
        .check_writable(now_ms())
        .await
        .map_err(|e| e.to_string());
    *last = Some((std::time::Instant::now(), result.clone()));
    result
}
