//! `/v1/deliveries`: list deliveries, replay dead letters.
//!
//! May call: `store`.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::ApiState;
use super::error::{ApiError, ApiResult};
use crate::store::DeliveryState;

/// The query of `GET /v1/deliveries`.
#[derive(Deserialize)]
pub(super) struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn list_deliveries(
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

pub(super) async fn replay(
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
    if s.store.replay_delivery(s.clock.now_ms(), n).await? {
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

pub(super) async fn replay_all(State(s): State<ApiState>) -> ApiResult<Response> {
    let n = s.store.replay_all_failed(s.clock.now_ms()).await?;
    s.dispatcher_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(json!({"replayed": n}))).into_response())
}
