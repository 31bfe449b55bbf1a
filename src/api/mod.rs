//! The control API (contract §5): enqueue, list and inspect tasks, list
//! and replay deliveries (one, or all a filter matches), the queue summary
//! and recent activity, health and metrics; its OpenAPI description. JSON in, JSON out; every error is
//! `{"error": {"code", "message"}}`. Health and metrics are open; `/v1`
//! needs the bearer token when `api.token` is set.
//!
//! May call: `ingest`, `store`, `config`, `poll::upstream` (health),
//! `deliver::ssrf`, `metrics`, `clock`, `cluster`, `hints`.

mod callbacks;
mod deliveries;
mod error;
mod health;
pub mod openapi;
pub(crate) mod stats;
mod tasks;

pub use error::{ApiError, ApiResult};

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{Notify, watch};

use crate::clock::SharedClock;
use crate::config::Config;
use crate::poll::upstream::UpstreamClient;
use crate::store::Store;

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
    /// Where callbacks' hints go.
    pub hints: Arc<crate::hints::Hints>,
    /// The poll interval in force; each service's first poll.
    pub pace: Arc<crate::poll::pace::Pace>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub clock: SharedClock,
    /// This daemon among others sharing the store.
    pub cluster: Arc<crate::cluster::Cluster>,
    /// The last store write check and when it ran: `/readyz` writes at most
    /// once a second however often it is asked.
    pub write_check: Arc<tokio::sync::Mutex<Option<WriteCheck>>>,
}

/// One store write check: when it ran and what it found.
pub type WriteCheck = (std::time::Instant, Result<(), String>);

/// How long a store write check answers for `/readyz`.
const WRITE_CHECK_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The router, with `beside` (the console's routes) served on the same
/// listener under the same body limit and error shape. Health and metrics
/// are open; everything under `/v1` needs the bearer token when `api.token`
/// is set.
pub fn router(state: ApiState, beside: Router<ApiState>) -> Router {
    let limit = state.config.borrow().api.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/tasks", post(tasks::enqueue).get(tasks::list_tasks))
        .route(
            "/v1/tasks/{id}",
            get(tasks::get_task).delete(tasks::delete_task),
        )
        .route("/v1/stats", get(stats::stats))
        .route("/v1/activity", get(stats::activity))
        .route("/v1/deliveries", get(deliveries::list_deliveries))
        .route("/v1/deliveries/replay", post(deliveries::replay_matching))
        .route("/v1/deliveries/{id}/replay", post(deliveries::replay))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .merge(beside)
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/callbacks/{service}", post(callbacks::receive))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
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
        match callbacks::bearer(&headers) {
            Some(g) if constant_time_eq(g.as_bytes(), token.expose().as_bytes()) => {}
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
