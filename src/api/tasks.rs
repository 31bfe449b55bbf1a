//! `/v1/tasks`: enqueue (through `ingest`), list, inspect and stop
//! watching tasks.
//!
//! May call: `ingest`, `store`, `deliver::ssrf` (per-task URLs), `config`,
//! `clock`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::{ApiError, ApiResult, ErrorBody, body_or_error};
use crate::clock::Millis;
use crate::ingest::{Rules, parse_enqueue};
use crate::store::{TaskFilter, TaskStatus, TaskView};

/// Hands tasks to the daemon: 202 once they are durably stored. An ID
/// already watched counts as a duplicate, not an error.
#[utoipa::path(
    post,
    path = "/v1/tasks",
    tag = "tasks",
    responses(
        (status = 202, description = "Stored: counted as accepted or duplicates", body = EnqueueResponse),
        (status = 400, description = "Bad JSON or a field of the wrong type", body = ErrorBody),
        (status = 413, description = "The body is over `api.max_body_bytes`", body = ErrorBody),
        (status = 422, description = "An empty or over-long ID, an unknown service, a bad webhook URL", body = ErrorBody),
    )
)]
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
    // Each service's tasks are first polled when its tasks usually finish
    // (one write per service; a request rarely names more than one).
    let mut by_service: std::collections::BTreeMap<String, Vec<_>> = Default::default();
    for t in tasks {
        by_service.entry(t.service.clone()).or_default().push(t);
    }
    let mut out = crate::store::EnqueueOutcome::default();
    let started = std::time::Instant::now();
    for (service, tasks) in by_service {
        let first = s.pace.first_poll_after(&cfg, &service).as_millis() as i64;
        let o = s.store.enqueue(s.clock.now_ms(), first, tasks).await?;
        out.accepted += o.accepted;
        out.duplicates += o.duplicates;
    }
    s.metrics.store_call("enqueue", started);
    tracing::info!(
        tasks = n,
        accepted = out.accepted,
        duplicates = out.duplicates,
        "enqueued"
    );
    s.metrics.enqueued.inc_by(out.accepted as u64);
    s.poller_wake.notify_one();
    let warning = (cfg.webhooks.is_empty() && !receives).then(|| {
        "no webhook is configured and some tasks name none: their results reach no receiver \
         (they stay visible through GET /v1/tasks/ID for store.done_retention)"
            .to_string()
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(EnqueueResponse {
            accepted: out.accepted,
            duplicates: out.duplicates,
            warning,
        }),
    ))
}

/// The answer to an enqueue.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnqueueResponse {
    /// IDs newly watched.
    pub accepted: usize,
    /// IDs already watched or delivering.
    pub duplicates: usize,
    /// Set when the results of some of these tasks reach no receiver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The query of `GET /v1/tasks`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only tasks of this service.
    service: Option<String>,
    /// Only tasks in this status: `watching`, `delivering` or `done`.
    #[param(value_type = Option<TaskStatus>)]
    status: Option<String>,
    /// Only finished tasks with this outcome: `succeeded`, `failed`,
    /// `not_found` or `expired`.
    #[param(schema_with = outcome_schema)]
    outcome: Option<String>,
    /// Only tasks whose ID starts with this.
    prefix: Option<String>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
    /// At most this many (1 to 1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// One page of tasks, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    /// The tasks, without their deliveries, event and attempts.
    pub tasks: Vec<TaskView>,
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<String>,
}

/// The outcomes a finished task can have.
const OUTCOMES: [&str; 4] = ["succeeded", "failed", "not_found", "expired"];

fn outcome_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(OUTCOMES))
        .build()
}

/// Lists tasks, newest first, filtered by service, status, outcome and ID
/// prefix; page with the `next` cursor.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "tasks",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of tasks", body = TaskList),
        (status = 400, description = "A bad filter or cursor", body = ErrorBody),
    )
)]
pub(super) async fn list_tasks(
    State(s): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<TaskList>> {
    let Query(q) = query?;
    let bad = |field: &str, message: String| {
        ApiError::new(400, "invalid_query", format!("{field}: {message}"))
    };
    let status = match q.status.as_deref() {
        None => None,
        Some(w) => Some(TaskStatus::parse(w).ok_or_else(|| {
            bad(
                "status",
                format!("{w:?} is not one of watching, delivering, done"),
            )
        })?),
    };
    if let Some(o) = q.outcome.as_deref()
        && !OUTCOMES.contains(&o)
    {
        return Err(bad(
            "outcome",
            format!("{o:?} is not one of {}", OUTCOMES.join(", ")),
        ));
    }
    let after = match q.after.as_deref() {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| {
            bad(
                "after",
                "is not a cursor this API gave (pass `next` as it is)".into(),
            )
        })?),
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(bad("limit", format!("{limit} is not between 1 and 1000")));
    }
    let tasks = s
        .store
        .list_tasks(TaskFilter {
            service: q.service,
            status,
            outcome: q.outcome,
            id_prefix: q.prefix.filter(|p| !p.is_empty()),
            after,
            limit,
        })
        .await?;
    let next = (tasks.len() == limit)
        .then(|| tasks.last().map(|t| encode_cursor(t.enqueued_at, &t.id)))
        .flatten();
    Ok(Json(TaskList { tasks, next }))
}

/// A page cursor: the last task's `(enqueued_at, id)`, base64url.
pub(crate) fn encode_cursor(at: Millis, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{at}:{id}"))
}

/// Reads a cursor [`encode_cursor`] made.
pub(crate) fn decode_cursor(c: &str) -> Option<(Millis, String)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    let (at, id) = raw.split_once(':')?;
    Some((at.parse().ok()?, id.to_string()))
}

/// One task: its status, upstream state, event, deliveries and every
/// delivery attempt.
#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = String, Path, description = "The task ID")),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 404, description = "Not watched (never enqueued, or purged)", body = ErrorBody),
    )
)]
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

/// Stops watching a task: removes it and its pending deliveries.
#[utoipa::path(
    delete,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = String, Path, description = "The task ID")),
    responses(
        (status = 204, description = "No longer watched"),
        (status = 404, description = "Not watched", body = ErrorBody),
    )
)]
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
