//! The running daemon: wiring the stages of the data path (store, poller,
//! dispatcher, control API) and the housekeeping beside them, all stopped by
//! one cancellation token; reloads, the watchdog, the purge, the signals.
//!
//! May call: every stage (it wires them: `store`, `poll`, `deliver`,
//! `hints`, `api`, `console`), `config`, `cluster`, `metrics`, `clock`,
//! `heartbeat`.

mod cluster;
mod purge;
mod reload;
mod signals;
mod watchdog;

pub use reload::Reloader;
pub use signals::signal;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiState, router};
use crate::clock::SharedClock;
use crate::cluster::Cluster;
use crate::config::{Backend, Config};
use crate::deliver::Dispatcher;
use crate::heartbeat::Heartbeat;
use crate::poll::Poller;
use crate::poll::upstream::UpstreamClient;
use crate::store::postgres::{PostgresOptions, PostgresStore};
use crate::store::{SqliteStore, Store, StoreError, Wake};

/// A started daemon: where its API listens, and how to stop it.
pub struct Daemon {
    pub api_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    grace: Duration,
    reloader: Reloader,
}

/// The longest a worker loop sleeps when systemd's watchdog is off.
const MAX_IDLE: Duration = Duration::from_secs(10);
/// With a shared store, the longest a loop sleeps: other daemons' work is
/// announced by NOTIFY, and a lost notification delays nothing for longer.
const SHARED_MAX_IDLE: Duration = Duration::from_secs(1);

/// What the workers share: the store, the configuration as it changes,
/// the upstream client, the wake-ups between stages, the metrics, the clock.
struct Shared {
    store: Arc<dyn Store>,
    config: watch::Receiver<Arc<Config>>,
    upstream: Arc<UpstreamClient>,
    poller_wake: Arc<Notify>,
    dispatcher_wake: Arc<Notify>,
    metrics: Arc<crate::metrics::Metrics>,
    clock: SharedClock,
    cluster: Arc<Cluster>,
    /// Callbacks' hints, passed on to the store in coalesced writes.
    hints: Arc<crate::hints::Hints>,
    /// The poll interval in force and the learned first polls.
    pace: Arc<crate::poll::pace::Pace>,
    /// Several daemons may share the store (PostgreSQL).
    shared_store: bool,
}

impl Daemon {
    /// Opens the store, binds the API and starts every worker, on the
    /// system clock.
    pub async fn start(config: Config) -> anyhow::Result<Daemon> {
        Self::start_with_clock(config, crate::clock::system()).await
    }

    /// [`Daemon::start`] on a given clock (tests drive time with it).
    pub async fn start_with_clock(config: Config, clock: SharedClock) -> anyhow::Result<Daemon> {
        let shared_store = matches!(config.store.backend(), Backend::Postgres(_));
        let store = open_store(&config, &clock).await?;
        tracing::info!(store = %config.store.describe(), "store open");
        let listener = TcpListener::bind(config.api.listen)
            .await
            .with_context(|| format!("api.listen: cannot listen on {}", config.api.listen))?;
        let api_addr = listener.local_addr()?;
        let grace = config.daemon.shutdown_grace;
        if let Some(w) = config.nothing_receives() {
            tracing::warn!("{w}");
        }
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let upstream = Arc::new(UpstreamClient::new(
            config.upstream.clone(),
            metrics.clone(),
        )?);
        let hints = crate::hints::Hints::new(config.api.callbacks_per_second_per_source);
        let learned = store.duration_models().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the learned durations; first polls follow poll.first_poll_after until tasks finish");
            Vec::new()
        });
        let pace = crate::poll::pace::Pace::new(learned);
        let (config_tx, config_rx) = watch::channel(Arc::new(config));
        let shared = Shared {
            store,
            config: config_rx,
            upstream,
            poller_wake: Arc::new(Notify::new()),
            dispatcher_wake: Arc::new(Notify::new()),
            metrics,
            cluster: Arc::new(Cluster::new(clock.now_ms())),
            clock,
            hints,
            pace,
            shared_store,
        };
        let reloader = Reloader::new(
            config_tx,
            shared.upstream.clone(),
            shared.store.clone(),
            shared.dispatcher_wake.clone(),
        );
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(reload::resume_parked(
            shared.store.clone(),
            shared.dispatcher_wake.clone(),
            webhook_names(&shared.config.borrow()),
        ));
        tasks.spawn(cluster::run(
            shared.cluster.clone(),
            shared.store.clone(),
            shared.upstream.clone(),
            shared.metrics.clone(),
            shared.clock.clone(),
            shutdown.child_token(),
        ));
        tasks.spawn(shared.hints.clone().run(
            shared.store.clone(),
            shared.clock.clone(),
            shared.poller_wake.clone(),
            shared.metrics.clone(),
            shutdown.child_token(),
        ));
        spawn_wakeups(&shared, &mut tasks, &shutdown);
        spawn_workers(&shared, &mut tasks, &shutdown);
        serve_api(&shared, listener, &mut tasks, &shutdown);
        tracing::info!(api = %api_addr, "taskhook is running");
        Ok(Daemon {
            api_addr,
            shutdown,
            tasks,
            grace,
            reloader,
        })
    }

    /// A handle that reloads the configuration of this daemon.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// A token that stops the daemon when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for the token, then stops: no new claims, work in flight gets
    /// the grace period, whatever is unfinished stays in the store.
    pub async fn run_until_stopped(mut self) {
        self.shutdown.cancelled().await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        tracing::info!(grace = ?self.grace, "shutting down");
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.grace, drain).await.is_err() {
            tracing::warn!("grace period over; unfinished work stays queued for the next start");
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        tracing::info!("stopped");
    }
}

/// Opens the configured store; a store that cannot be opened stops the
/// start with its reason.
async fn open_store(config: &Config, clock: &SharedClock) -> anyhow::Result<Arc<dyn Store>> {
    let fail = |e: StoreError| match e {
        StoreError::Fatal(m) => anyhow::anyhow!(m),
        e @ StoreError::Unavailable(_) => anyhow::anyhow!(e),
    };
    match config.store.backend() {
        Backend::Postgres(url) => {
            let opts = PostgresOptions {
                pool_size: config.store.pool_size,
                schema: None,
            };
            let store = PostgresStore::connect(url, opts)
                .await
                .map_err(|e| fail(e).context("store.url"))?;
            Ok(Arc::new(store))
        }
        Backend::Sqlite(path) => {
            let path = path.to_path_buf();
            let sync = config.store.sync;
            let now = clock.now_ms();
            let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path, sync, now))
                .await
                .context("opening the store")?
                .map_err(fail)?;
            Ok(Arc::new(store))
        }
    }
}

/// Work other daemons announce (new tasks, newly due deliveries) wakes this
/// daemon's loops at once.
fn spawn_wakeups(s: &Shared, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
    let Some(mut rx) = s.store.wakeups() else {
        return;
    };
    let (poller, dispatcher) = (s.poller_wake.clone(), s.dispatcher_wake.clone());
    let stop = shutdown.child_token();
    tasks.spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let wake = tokio::select! {
                w = rx.recv() => w,
                _ = stop.cancelled() => return,
            };
            match wake {
                Ok(Wake::Tasks) => poller.notify_one(),
                Ok(Wake::Deliveries) => dispatcher.notify_one(),
                Err(RecvError::Lagged(_)) => {
                    poller.notify_one();
                    dispatcher.notify_one();
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

fn webhook_names(cfg: &Config) -> Vec<String> {
    cfg.webhooks.iter().map(|w| w.name.clone()).collect()
}

/// The poller, the dispatcher, the purge, and the systemd watchdog when
/// systemd asked for one (notified ready here: the store is open).
fn spawn_workers(s: &Shared, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
    let mut watchdog_usec = 0;
    let watchdog_timeout = sd_notify::watchdog_enabled(false, &mut watchdog_usec)
        .then(|| Duration::from_micros(watchdog_usec));
    let idle = if s.shared_store {
        SHARED_MAX_IDLE
    } else {
        MAX_IDLE
    };
    let max_idle = watchdog_timeout.map_or(idle, |t| (t / 4).min(idle));
    let poller_beat = Heartbeat::new(max_idle);
    let dispatcher_beat = Heartbeat::new(max_idle);
    let (handoff_tx, handoff_rx) = tokio::sync::mpsc::unbounded_channel();
    let poller = Poller {
        handoff: handoff_tx,
        heartbeat: poller_beat.clone(),
        clock: s.clock.clone(),
        metrics: s.metrics.clone(),
        batches: Arc::new(crate::poll::Batches::new()),
        store: s.store.clone(),
        upstream: s.upstream.clone(),
        config: s.config.clone(),
        wake: s.poller_wake.clone(),
        deliveries_ready: s.dispatcher_wake.clone(),
        cluster: s.cluster.clone(),
        // With several daemons, new deliveries wait to be claimed, so the
        // claim can hold each webhook to its cap across all of them.
        hand_off: !s.shared_store,
        pace: s.pace.clone(),
        lease_spare: crate::poll::LEASE_SPARE,
    };
    tasks.spawn(poller.run(shutdown.child_token()));
    let dispatcher = Dispatcher {
        handoff: handoff_rx,
        heartbeat: dispatcher_beat.clone(),
        clock: s.clock.clone(),
        metrics: s.metrics.clone(),
        store: s.store.clone(),
        config: s.config.clone(),
        wake: s.dispatcher_wake.clone(),
        cluster: s.cluster.clone(),
    };
    tasks.spawn(dispatcher.run(shutdown.child_token()));
    tasks.spawn(purge::purge_loop(
        s.cluster.clone(),
        s.clock.clone(),
        s.store.clone(),
        s.config.clone(),
        shutdown.child_token(),
    ));
    // systemd (Type=notify): the store is open, the workers run.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    if let Some(timeout) = watchdog_timeout {
        tasks.spawn(watchdog::watchdog(
            timeout,
            vec![poller_beat, dispatcher_beat],
            shutdown.child_token(),
        ));
    }
}

/// The control API, until the shutdown token.
fn serve_api(
    s: &Shared,
    listener: TcpListener,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) {
    let state = ApiState {
        store: s.store.clone(),
        config: s.config.clone(),
        upstream: s.upstream.clone(),
        poller_wake: s.poller_wake.clone(),
        dispatcher_wake: s.dispatcher_wake.clone(),
        hints: s.hints.clone(),
        pace: s.pace.clone(),
        metrics: s.metrics.clone(),
        clock: s.clock.clone(),
        cluster: s.cluster.clone(),
        write_check: Default::default(),
    };
    let app = router(state.clone(), crate::console::router(state));
    let stop = shutdown.clone();
    tasks.spawn(async move {
        // The peer address keys the callbacks' rate cap per source.
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "control API stopped");
        }
    });
}
