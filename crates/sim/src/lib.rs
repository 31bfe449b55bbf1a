//! taskhook-sim: an in-memory simulator of AceData Cloud's task-retrieval APIs
//! (`taskhook sim` on the command line).
//!
//! It serves `POST /{service}/tasks` (actions `retrieve` and `retrieve_batch`)
//! for every documented AceData Cloud service, each in its own record shapes,
//! evolving over time from running to succeeded or failed; plus control
//! endpoints under `/_sim/` to create tasks (or replay documented records),
//! script faults and read statistics. Used by tests, benchmarks and demos (in
//! the spirit of stripe-mock).
//!
//! Tasks created with a `callback_url` (or under `--callback-url`) POST their
//! final body to it when they settle, as the real upstream does;
//! `GET /_sim/callbacks` says what became of each one.
//!
//! Modules: `services` (the per-service table), `families` (one record
//! builder per family of shapes) and `records` (what they share), `state`
//! (tasks and the shared state), `endpoint` (the tasks API), `faults`,
//! `callbacks`, `control` (`/_sim/`), `stats`, `reply` and `ids`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

mod callbacks;
mod control;
mod endpoint;
mod families;
mod faults;
mod ids;
mod records;
mod reply;
mod services;
mod state;
mod stats;
#[cfg(test)]
mod tests;

pub use faults::FaultKind;

use state::Shared;

/// Options of the simulator; also the CLI flags of `taskhook sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Seed of the pseudo-random choices (implicit task specs, faults, duplicates).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Require `authorization: Bearer TOKEN` (401 invalid_token otherwise).
    #[arg(long)]
    pub token: Option<String>,
    /// Durations of implicitly created tasks, uniform between these (milliseconds).
    #[arg(long, default_value_t = 2000)]
    pub min_duration_ms: u64,
    /// Upper bound of implicit task durations (milliseconds).
    #[arg(long, default_value_t = 10000)]
    pub max_duration_ms: u64,
    /// Fraction of implicit tasks that fail.
    #[arg(long, default_value_t = 0.2)]
    pub fail_rate: f64,
    /// Fraction of implicit IDs the upstream never knows (always absent from answers).
    #[arg(long, default_value_t = 0.0)]
    pub unknown_rate: f64,
    /// Answer 400 when a batch has more IDs than this.
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Requests per second allowed (token bucket, 1 s of burst); beyond: 429 with Retry-After: 1.
    #[arg(long)]
    pub rate_limit: Option<f64>,
    /// Requests in flight allowed; beyond: 429.
    #[arg(long)]
    pub max_concurrent: Option<usize>,
    /// Fraction of requests answered with a random fault from --faults.
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Fault kinds to draw from, comma separated (default: all kinds).
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<FaultKind>,
    /// How long a "slow" fault delays its answer (ms).
    #[arg(long, default_value_t = 30000)]
    pub slow_ms: u64,
    /// Fraction of items repeated twice in a batch answer.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_rate: f64,
    /// Serve any service name with the producer shape (by default a name that
    /// is not a documented AceData service answers 404, as a path that does
    /// not exist).
    #[arg(long)]
    pub any_service: bool,
    /// Serve at most this many items per batch answer whatever its `limit`
    /// says (an upstream with a hard page size); `count` still says how many
    /// of the requested IDs it knows.
    #[arg(long)]
    pub page_size: Option<usize>,
    /// POST each task's final body to this URL when it settles (JSON,
    /// unsigned, never retried, as the real upstream's `callback_url`), for
    /// every task whose spec names no `callback_url`, implicit tasks included.
    #[arg(long, value_parser = callbacks::parse_callback_url)]
    pub callback_url: Option<String>,
    /// How long after a task settles its callback leaves (ms).
    #[arg(long, default_value_t = 0)]
    pub callback_delay_ms: u64,
    /// Fraction of callbacks never sent.
    #[arg(long, default_value_t = 0.0)]
    pub callback_loss_rate: f64,
    /// Fraction of callbacks sent twice.
    #[arg(long, default_value_t = 0.0)]
    pub callback_duplicate_rate: f64,
    /// Callbacks in flight at once; more wait their turn (when many tasks
    /// settle together they then reuse connections, which keeps them prompt).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub callback_concurrency: u32,
    /// Keep every request to `/{service}/tasks` (its service, IDs, status,
    /// fault and times) for `GET /_sim/requests`. The log grows with every
    /// request: for tests, not for long runs.
    #[arg(long)]
    pub log_requests: bool,
}

impl Default for SimArgs {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 1,
            token: None,
            min_duration_ms: 2000,
            max_duration_ms: 10000,
            fail_rate: 0.2,
            unknown_rate: 0.0,
            max_batch: None,
            rate_limit: None,
            max_concurrent: None,
            fault_rate: 0.0,
            faults: Vec::new(),
            slow_ms: 30000,
            duplicate_rate: 0.0,
            any_service: false,
            page_size: None,
            callback_url: None,
            callback_delay_ms: 0,
            callback_loss_rate: 0.0,
            callback_duplicate_rate: 0.0,
            callback_concurrency: 64,
            log_requests: false,
        }
    }
}

/// Starts serving; resolves when `shutdown` resolves (graceful).
pub async fn serve(
    listener: tokio::net::TcpListener,
    args: SimArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "task API simulator listening");
    axum::serve(listener, router(args))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves any router (the simulator's, a test receiver) on a free loopback
/// port until `shutdown` resolves; returns its base URL, `http://127.0.0.1:PORT`.
pub async fn serve_on_loopback(
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
    });
    Ok(format!("http://{addr}"))
}

/// The router, for embedding.
pub fn router(args: SimArgs) -> Router {
    let shared = Arc::new(Shared::new(args));
    Router::new()
        .route("/_sim/tasks", post(control::create_tasks))
        .route("/_sim/tasks/{id}", get(control::task_info))
        .route("/_sim/faults", post(control::set_faults))
        .route("/_sim/stats", get(control::stats))
        .route("/_sim/callbacks", get(control::callbacks))
        .route("/_sim/requests", get(control::requests))
        .route("/_sim/reset", post(control::reset_stats))
        .route("/{service}/tasks", post(endpoint::tasks_endpoint))
        .with_state(shared)
}
