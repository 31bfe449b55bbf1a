//! `POST /v1/callbacks/{service}`: the URL a pipeline gives the upstream as
//! a generation request's `callback_url`. The call is a hint (see `hints`):
//! the watched task it names is polled at once, and the poll decides. The
//! answer is the same whatever the body names, so a caller learns nothing
//! about which tasks are watched.
//!
//! May call: `hints`, `config`, `metrics`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::{ApiState, constant_time_eq};
use crate::hints::ids_in;

/// The answer to every well-formed callback.
#[derive(Debug, Serialize, ToSchema)]
pub struct Received {
    /// Always true: what the body named, and whether it was acted on, is
    /// not said.
    pub received: bool,
}

/// Takes an upstream callback as a hint to poll the task it names now.
#[utoipa::path(
    post,
    path = "/v1/callbacks/{service}",
    tag = "tasks",
    params(
        ("service" = String, Path, description = "The service the task belongs to"),
        ("token" = Option<String>, Query, description = "`api.callback_token` (else `api.token`), when set: the upstream cannot send headers"),
    ),
    request_body(content = serde_json::Value, description = "The upstream's callback body, any JSON; only `task_id` or `id` (at the top, or in `response` or `data`) is read"),
    responses(
        (status = 202, description = "Received (acted on or not)", body = Received),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 404, description = "No such service", body = ErrorBody),
        (status = 413, description = "The body is over `api.max_callback_bytes`", body = ErrorBody),
    ),
    security(("bearer" = []), ("callback_token" = []))
)]
pub(super) async fn receive(
    State(s): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> ApiResult<(StatusCode, Json<Received>)> {
    let Path(service) = path?;
    let cfg = s.config.borrow().clone();
    if let Some(want) = cfg.api.callback_token() {
        let given = query_token(request.uri().query())
            .or_else(|| bearer(request.headers()).map(str::to_string));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), want.expose().as_bytes())) {
            return Err(ApiError::new(
                401,
                "unauthorized",
                "missing or wrong callback token: add ?token=TOKEN to the callback URL",
            ));
        }
    }
    if cfg.upstream.profiles.get(&service).is_none() {
        s.metrics.callback("unknown_service");
        return Err(ApiError::new(
            404,
            "unknown_service",
            format!("service {service:?} is not known"),
        ));
    }
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let limit = cfg.api.max_callback_bytes;
    let body = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| {
            s.metrics.callback("too_large");
            ApiError::new(
                413,
                "body_too_large",
                format!("callback body is over api.max_callback_bytes ({limit})"),
            )
        })?;
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        s.metrics.callback("bad_json");
        ApiError::new(400, "bad_json", format!("invalid JSON: {e}"))
    })?;
    let result = s.hints.receive(source, &service, ids_in(&value));
    s.metrics.callback(result.label());
    Ok((StatusCode::ACCEPTED, Json(Received { received: true })))
}

/// The `token` query parameter.
fn query_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// The bearer token of an `authorization` header.
pub(super) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}
