//! `/v1/deliveries`: list deliveries, replay one dead letter, or replay
//! every dead letter a filter matches (recovery after a receiver outage).
//!
//! May call: `store`, `clock`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::{ApiError, ApiResult, ErrorBody, body_or_error};
use crate::clock::{Millis, parse_rfc3339};
use crate::store::{DeliveryState, DeliveryView, ReplayFilter};

/// The query of `GET /v1/deliveries`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only deliveries in this state: `pending`, `delivered`, `failed`
    /// (dead letters), `gone` or `webhook_removed` (parked).
    #[param(value_type = Option<DeliveryState>)]
    state: Option<String>,
    /// At most this many, newest first (1 to 10000, default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// Deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}

/// Lists deliveries, newest first.
#[utoipa::path(
    get,
    path = "/v1/deliveries",
    tag = "deliveries",
    params(ListQuery),
    responses(
        (status = 200, description = "Deliveries, newest first", body = DeliveryList),
        (status = 400, description = "A bad state or limit", body = ErrorBody),
    )
)]
pub(super) async fn list_deliveries(
    State(s): State<ApiState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<DeliveryList>> {
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
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::new(
            400,
            "invalid_query",
            format!("limit: {limit} is not between 1 and 10000"),
        ));
    }
    let deliveries = s.store.list_deliveries(state, limit).await?;
    Ok(Json(DeliveryList { deliveries }))
}

/// What a replay did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    /// Deliveries made pending again.
    pub replayed: u64,
    /// With `dry_run`: how many the filter matches (nothing is replayed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matching: Option<u64>,
}

/// Sends one dead-lettered (or parked) delivery again.
#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/replay",
    tag = "deliveries",
    params(("id" = i64, Path, description = "The delivery ID")),
    responses(
        (status = 202, description = "Pending again", body = Replayed),
        (status = 400, description = "Not a delivery ID", body = ErrorBody),
        (status = 404, description = "No failed or parked delivery has that ID", body = ErrorBody),
    )
)]
pub(super) async fn replay(
    State(s): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<(StatusCode, Json<Replayed>)> {
    let Path(id) = path?;
    let n: i64 = id.parse().map_err(|_| {
        ApiError::new(
            400,
            "invalid_field",
            format!("id: {id:?} is not a delivery id"),
        )
    })?;
    if s.store.replay_delivery(s.clock.now_ms(), n).await? {
        s.dispatcher_wake.notify_one();
        Ok((
            StatusCode::ACCEPTED,
            Json(Replayed {
                replayed: 1,
                matching: None,
            }),
        ))
    } else {
        Err(ApiError::new(
            404,
            "not_found",
            format!("delivery {n} is not a failed (dead-lettered) or parked delivery"),
        ))
    }
}

/// Which settled deliveries a bulk replay takes. Every field is optional;
/// `{}` replays every dead letter.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// `failed` (dead letters, the default) or `webhook_removed` (parked).
    #[schema(default = "failed")]
    pub state: Option<ReplayState>,
    /// Only deliveries to this webhook (its name, or a per-task URL as
    /// listed).
    pub webhook: Option<String>,
    /// Only events of this type, e.g. `task.failed`.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Only deliveries settled at or after this instant (RFC 3339).
    #[schema(format = DateTime)]
    pub since: Option<String>,
    /// Only deliveries settled before this instant (RFC 3339).
    #[schema(format = DateTime)]
    pub until: Option<String>,
    /// Count what the filter matches, replay nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The settled states a bulk replay can take.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplayState {
    Failed,
    WebhookRemoved,
}

impl ReplayRequest {
    /// The store's filter, or what is wrong with the request.
    pub fn filter(&self) -> Result<ReplayFilter, ApiError> {
        let time = |field: &str, v: &Option<String>| -> Result<Option<Millis>, ApiError> {
            v.as_deref()
                .map(|t| {
                    parse_rfc3339(t).ok_or_else(|| {
                        ApiError::new(
                            400,
                            "invalid_field",
                            format!(
                                "{field}: {t:?} is not an RFC 3339 time (e.g. 2026-01-31T09:00:00Z)"
                            ),
                        )
                    })
                })
                .transpose()
        };
        let since = time("since", &self.since)?;
        let until = time("until", &self.until)?;
        if let (Some(a), Some(b)) = (since, until)
            && a >= b
        {
            return Err(ApiError::new(
                400,
                "invalid_field",
                "until: must be after since",
            ));
        }
        Ok(ReplayFilter {
            state: match self.state.unwrap_or(ReplayState::Failed) {
                ReplayState::Failed => DeliveryState::Failed,
                ReplayState::WebhookRemoved => DeliveryState::WebhookRemoved,
            },
            webhook: self.webhook.clone(),
            event_type: self.event_type.clone(),
            since,
            until,
        })
    }
}

/// Sends again every dead letter (or parked delivery) the filter matches:
/// recovery after a receiver outage. The deliveries become due now and
/// the dispatcher paces them within each webhook's concurrency cap.
#[utoipa::path(
    post,
    path = "/v1/deliveries/replay",
    tag = "deliveries",
    request_body(content = Option<ReplayRequest>, description = "The filter (no body, or `null`, is `{}`)"),
    responses(
        (status = 202, description = "Replayed (or, with `dry_run`, counted)", body = Replayed),
        (status = 400, description = "Bad JSON, an unknown field, a bad time", body = ErrorBody),
        (status = 413, description = "The body is over `api.max_body_bytes`", body = ErrorBody),
    )
)]
pub(super) async fn replay_matching(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Replayed>)> {
    let body = body_or_error(body)?;
    let req: ReplayRequest = if body.is_empty() {
        ReplayRequest::default()
    } else {
        serde_json::from_slice::<Option<ReplayRequest>>(&body)
            .map_err(|e| ApiError::new(400, "bad_json", format!("replay filter: {e}")))?
            .unwrap_or_default()
    };
    let filter = req.filter()?;
    if req.dry_run {
        let n = s.store.count_matching(filter).await?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(Replayed {
                replayed: 0,
                matching: Some(n),
            }),
        ));
    }
    let n = s.store.replay_matching(s.clock.now_ms(), filter).await?;
    tracing::info!(replayed = n, "bulk replay");
    if n > 0 {
        s.dispatcher_wake.notify_one();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Replayed {
            replayed: n,
            matching: None,
        }),
    ))
}
