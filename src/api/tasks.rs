//! `/v1/tasks` and `/v1/stats`: enqueue (through `ingest`), inspect and
//! stop watching tasks; the queue summary.
//!
//! May call: `ingest`, `store`, `deliver::ssrf` (per-task URLs), `config`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use super::error::{ApiError, ApiResult, body_or_error};
use crate::ingest::{Rules, parse_enqueue};

pub(super) async fn enqueue(
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
                crate::deliver::ssrf::check_url(&url).map_err(|m| {
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
    let started = std::time::Instant::now();
    let out = s.store.enqueue(s.clock.now_ms(), first, tasks).await?;
    s.metrics.store_call("enqueue", started);
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

pub(super) async fn get_task(
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

pub(super) async fn delete_task(
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

pub(super) async fn stats(State(s): State<ApiState>) -> ApiResult<Response> {
    let st = s.store.stats().await?;
    let up = s.upstream.health();
    Ok(Json(json!({
        "tasks": {"watching": st.watching, "delivering": st.delivering, "done": st.done},
        "deliveries": {"pending": st.deliveries_pending, "dead_letters": st.dead_letters,
                       "webhook_removed": st.webhook_removed},
        "dead_letters": st.dead_letters,
        "oldest_watching_enqueued_at": st.oldest_watching_enqueued_at.map(crate::clock::rfc3339),
        "upstream": up,
        "store": s.config.borrow().store.describe(),
        "instance": s.cluster.me.id,
        "instances": s.cluster.live(),
        "leader": s.cluster.leader().map(|(instance, term)| json!({"instance": instance, "term": term})),
        "budget": {
            "requests_per_second": s.upstream.share().1,
            "concurrent_requests": s.upstream.share().0,
        },
    }))
    .into_response())
}
