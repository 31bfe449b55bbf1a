//! `/v1/stats` and `/v1/activity`: the queue summary with the upstream's
//! health and the cluster, and what happened in a recent window. The
//! console's overview shows the same [`Stats`] value.
//!
//! May call: `store`, `poll::upstream` (health), `cluster`, `config`,
//! `clock`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::{ApiError, ApiResult, ErrorBody};
use crate::clock::Millis;
use crate::poll::upstream::UpstreamHealth;
use crate::store::{Activity, InstanceInfo, StoreResult};

/// The queue summary: what `taskhook status` prints and the console's
/// overview shows.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Stats {
    pub tasks: TaskCounts,
    pub deliveries: DeliveryCounts,
    /// Dead-lettered deliveries (the same as `deliveries.dead_letters`).
    pub dead_letters: u64,
    /// When the oldest watched task was enqueued.
    #[serde(serialize_with = "crate::clock::ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub oldest_watching_enqueued_at: Option<Millis>,
    pub upstream: UpstreamHealth,
    /// The store, its password redacted.
    pub store: String,
    /// This daemon's instance ID.
    pub instance: String,
    /// Every live daemon sharing the store, oldest first.
    pub instances: Vec<InstanceInfo>,
    /// The daemon that runs the periodic work (purge, expiry sweep).
    pub leader: Option<Leader>,
    /// This daemon's share of the upstream budget.
    pub budget: Budget,
    /// How polling spends the budget: the interval in force, the demand,
    /// each service's first poll and learned durations.
    pub polling: crate::poll::pace::PaceView,
}

/// Tasks by status.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskCounts {
    pub watching: u64,
    pub delivering: u64,
    pub done: u64,
}

/// Deliveries that are not settled, or settled badly.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryCounts {
    pub pending: u64,
    pub dead_letters: u64,
    /// Parked: their webhook left the configuration.
    pub webhook_removed: u64,
}

/// The daemon leading the periodic work, and its term.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Leader {
    pub instance: String,
    pub term: i64,
}

/// This daemon's share of `upstream.max_requests_per_second` and
/// `upstream.max_concurrent_requests`, divided among live daemons.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Budget {
    pub requests_per_second: f64,
    pub concurrent_requests: usize,
}

/// Builds the summary.
pub(crate) async fn snapshot(s: &ApiState) -> StoreResult<Stats> {
    let st = s.store.stats().await?;
    let (concurrent_requests, requests_per_second) = s.upstream.share();
    Ok(Stats {
        tasks: TaskCounts {
            watching: st.watching,
            delivering: st.delivering,
            done: st.done,
        },
        deliveries: DeliveryCounts {
            pending: st.deliveries_pending,
            dead_letters: st.dead_letters,
            webhook_removed: st.webhook_removed,
        },
        dead_letters: st.dead_letters,
        oldest_watching_enqueued_at: st.oldest_watching_enqueued_at,
        upstream: s.upstream.health(),
        store: s.config.borrow().store.describe(),
        instance: s.cluster.me.id.clone(),
        instances: s.cluster.live(),
        leader: s
            .cluster
            .leader()
            .map(|(instance, term)| Leader { instance, term }),
        budget: Budget {
            requests_per_second,
            concurrent_requests,
        },
        polling: s.pace.view(),
    })
}

/// The queue summary.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "queue",
    responses((status = 200, description = "The queue summary", body = Stats))
)]
pub(super) async fn stats(State(s): State<ApiState>) -> ApiResult<Json<Stats>> {
    Ok(Json(snapshot(&s).await?))
}

/// The query of `GET /v1/activity`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ActivityQuery {
    /// How far back to look, e.g. `15m`, `2h` (default `15m`, at most `7d`).
    #[param(example = "15m")]
    window: Option<String>,
}

/// The longest window `/v1/activity` looks back over.
const MAX_WINDOW: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Enqueues, deliveries and failed attempts in a recent window, and each
/// webhook's health (success rate, latency, last error, in flight).
#[utoipa::path(
    get,
    path = "/v1/activity",
    tag = "queue",
    params(ActivityQuery),
    responses(
        (status = 200, description = "What happened in the window", body = Activity),
        (status = 400, description = "A bad `window`", body = ErrorBody),
    )
)]
pub(super) async fn activity(
    State(s): State<ApiState>,
    query: Result<Query<ActivityQuery>, QueryRejection>,
) -> ApiResult<Json<Activity>> {
    let Query(q) = query?;
    let window = match q.window.as_deref() {
        None => std::time::Duration::from_secs(15 * 60),
        Some(w) => humantime::parse_duration(w)
            .ok()
            .filter(|d| !d.is_zero() && *d <= MAX_WINDOW)
            .ok_or_else(|| {
                ApiError::new(
                    400,
                    "invalid_query",
                    format!("window: {w:?} is not a duration between 1ms and 7d (e.g. 15m, 2h)"),
                )
            })?,
    };
    let now = s.clock.now_ms();
    let since = now - window.as_millis() as Millis;
    Ok(Json(s.store.activity(now, since).await?))
}
