//! Wires the pieces into one running daemon: store, poller, dispatcher,
//! purger and control API, all stopped by one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiState, router};
use crate::clock::now_ms;
use crate::config::Config;
use crate::dispatcher::Dispatcher;
use crate::poller::Poller;
use crate::store::{Admin, SqliteStore, Store, StoreError};
use crate::upstream::UpstreamClient;

/// A started daemon: where its API listens, and how to stop it.
pub struct Daemon {
    pub api_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    grace: Duration,
    reloader: Reloader,
}

/// Applies a new configuration to a running daemon (SIGHUP).
#[derive(Clone)]
pub struct Reloader {
    config: Arc<watch::Sender<Arc<Config>>>,
    upstream: Arc<UpstreamClient>,
    store: Arc<dyn Admin>,
    dispatcher_wake: Arc<Notify>,
}

impl Reloader {
    /// Installs `new`: webhooks, retry settings, poll settings, batch size,
    /// the upstream token and the API token take effect at once. Settings
    /// fixed at start keep their running value; each one that changed is
    /// returned so the caller can log that it needs a restart.
    pub fn reload(&self, mut new: Config) -> Vec<&'static str> {
        let old = self.config.borrow().clone();
        let mut restart = Vec::new();
        macro_rules! keep {
            ($($field:ident).+, $name:literal) => {
                if new.$($field).+ != old.$($field).+ {
                    restart.push($name);
                    new.$($field).+ = old.$($field).+.clone();
                }
            };
        }
        keep!(store.path, "store.path");
        keep!(store.sync, "store.sync");
        keep!(api.listen, "api.listen");
        keep!(api.max_body_bytes, "api.max_body_bytes");
        keep!(upstream.base_url, "upstream.base_url");
        keep!(
            upstream.max_requests_per_second,
            "upstream.max_requests_per_second"
        );
        keep!(
            upstream.max_concurrent_requests,
            "upstream.max_concurrent_requests"
        );
        keep!(upstream.request_timeout, "upstream.request_timeout");
        keep!(delivery.request_timeout, "delivery.request_timeout");
        keep!(delivery.connect_timeout, "delivery.connect_timeout");
        keep!(daemon.log_format, "daemon.log_format");
        keep!(daemon.log_level, "daemon.log_level");
        if new.upstream.token != old.upstream.token || self.upstream.token_refused() {
            self.upstream.set_token(new.upstream.token.clone());
        }
        self.upstream
            .set_broken_service_retry(new.upstream.broken_service_retry);
        let names: Vec<String> = new.webhooks.iter().map(|w| w.name.clone()).collect();
        warn_if_nothing_receives(&new);
        self.config.send_replace(Arc::new(new));
        // Deliveries parked because their webhook had left the
        // configuration go out again now that it is back.
        let (store, wake) = (self.store.clone(), self.dispatcher_wake.clone());
        tokio::spawn(resume_parked(store, wake, names));
        restart
    }
}

/// Makes deliveries parked for a missing webhook pending again, for the
/// webhooks configured now.
async fn resume_parked(store: Arc<dyn Admin>, wake: Arc<Notify>, names: Vec<String>) {
    match store.resume_parked(now_ms(), names).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(
                deliveries = n,
                "deliveries parked for a removed webhook resume: the webhook is configured again"
            );
            wake.notify_one();
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot resume parked deliveries; replay them by hand")
        }
    }
}

/// Without a webhook, a finished task's result reaches nobody unless the
/// task named its own URL: say so where an operator looks.
pub fn nothing_receives(cfg: &Config) -> Option<String> {
    cfg.webhooks.is_empty().then(|| {
        "no [[webhooks]] configured: results reach only tasks that name their own \
         webhooks (events are kept for store.done_retention, visible through \
         GET /v1/tasks/ID)"
            .to_string()
    })
}

fn warn_if_nothing_receives(cfg: &Config) {
    if let Some(w) = nothing_receives(cfg) {
        tracing::warn!("{w}");
    }
}

/// Proof of life from a loop: the last time it went round. The systemd
/// watchdog is fed only while every loop keeps beating, so a loop never
/// sleeps longer than [`Heartbeat::max_idle`]. Times are monotonic: a jump
/// of the wall clock neither starves nor fools the watchdog.
#[derive(Clone)]
pub struct Heartbeat {
    /// Nanoseconds since `origin` at the last beat.
    last: Arc<std::sync::atomic::AtomicU64>,
    origin: std::time::Instant,
    max_idle: Duration,
}

impl Heartbeat {
    pub fn new(max_idle: Duration) -> Self {
        let h = Heartbeat {
            last: Arc::default(),
            origin: std::time::Instant::now(),
            max_idle,
        };
        h.beat();
        h
    }
    pub fn beat(&self) {
        let since = self.origin.elapsed().as_nanos() as u64;
        self.last.store(since, std::sync::atomic::Ordering::Relaxed);
    }
    /// The longest the loop may sleep between beats.
    pub fn max_idle(&self) -> Duration {
        self.max_idle
    }
    /// How long ago the loop last beat.
    pub fn age(&self) -> Duration {
        let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
        self.origin
            .elapsed()
            .saturating_sub(Duration::from_nanos(last))
    }
}

/// The longest a worker loop sleeps when systemd's watchdog is off.
const MAX_IDLE: Duration = Duration::from_secs(10);

/// How often finished tasks and old dead letters are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

impl Daemon {
    /// Opens the store, binds the API and starts every worker.
    pub async fn start(config: Config) -> anyhow::Result<Daemon> {
        let path = config.store.path.clone();
        let sync = config.store.sync;
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path, sync, now_ms()))
            .await
            .context("opening the store")?
            .map_err(|e| match e {
                StoreError::Fatal(m) => anyhow::anyhow!(m),
                e @ StoreError::Unavailable(_) => anyhow::anyhow!(e),
            })?;
        let store: Arc<dyn Store> = Arc::new(store);
        let listener = TcpListener::bind(config.api.listen)
            .await
            .with_context(|| format!("api.listen: cannot listen on {}", config.api.listen))?;
        let api_addr = listener.local_addr()?;
        let grace = config.daemon.shutdown_grace;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let upstream = Arc::new(UpstreamClient::new(
            config.upstream.clone(),
            metrics.clone(),
        )?);
        let (config_tx, config_rx) = watch::channel(Arc::new(config));
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let poller_wake = Arc::new(Notify::new());
        let dispatcher_wake = Arc::new(Notify::new());
        let reloader = Reloader {
            config: Arc::new(config_tx),
            upstream: upstream.clone(),
            store: store.clone(),
            dispatcher_wake: dispatcher_wake.clone(),
        };
        warn_if_nothing_receives(&config_rx.borrow());
        let names: Vec<String> = config_rx
            .borrow()
            .webhooks
            .iter()
            .map(|w| w.name.clone())
            .collect();
        tasks.spawn(resume_parked(store.clone(), dispatcher_wake.clone(), names));

        let mut watchdog_usec = 0;
        let watchdog_timeout = sd_notify::watchdog_enabled(false, &mut watchdog_usec)
            .then(|| Duration::from_micros(watchdog_usec));
        let max_idle = watchdog_timeout.map_or(MAX_IDLE, |t| (t / 4).min(MAX_IDLE));
        let poller_beat = Heartbeat::new(max_idle);
        let dispatcher_beat = Heartbeat::new(max_idle);
        let (handoff_tx, handoff_rx) = tokio::sync::mpsc::unbounded_channel();
        let poller = Poller {
            handoff: handoff_tx,
            heartbeat: poller_beat.clone(),
            metrics: metrics.clone(),
            batches: Arc::new(crate::poller::Batches::new()),
            store: store.clone(),
            upstream: upstream.clone(),
            config: config_rx.clone(),
            wake: poller_wake.clone(),
            deliveries_ready: dispatcher_wake.clone(),
        };
        tasks.spawn(poller.run(shutdown.child_token()));
        let dispatcher = Dispatcher {
            handoff: handoff_rx,
            heartbeat: dispatcher_beat.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            config: config_rx.clone(),
            wake: dispatcher_wake.clone(),
        };
        tasks.spawn(dispatcher.run(shutdown.child_token()));
        tasks.spawn(purge_loop(
            store.clone(),
            config_rx.clone(),
            shutdown.child_token(),
        ));

        let app = router(ApiState {
            store: store.clone(),
            config: config_rx,
            upstream,
            poller_wake,
            dispatcher_wake,
            metrics,
            write_check: Default::default(),
        });
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "control API stopped");
            }
        });
        tracing::info!(api = %api_addr, "taskhook is running");
        // systemd (Type=notify): the store is open and the API listens.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        if let Some(timeout) = watchdog_timeout {
            tasks.spawn(watchdog(
                timeout,
                vec![poller_beat, dispatcher_beat],
                shutdown.child_token(),
            ));
        }
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

/// Feeds the systemd watchdog every `timeout / 2` while every loop has
/// beaten within `timeout`; a stuck loop starves it and systemd restarts us.
async fn watchdog(timeout: Duration, beats: Vec<Heartbeat>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(timeout / 2) => {}
            _ = shutdown.cancelled() => return,
        }
        if beats.iter().all(|b| b.age() < timeout) {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!("a worker loop is stuck; not feeding the systemd watchdog");
        }
    }
}

async fn purge_loop(
    store: Arc<dyn Admin>,
    config: watch::Receiver<Arc<Config>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PURGE_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        let cfg = config.borrow().clone();
        let now = now_ms();
        let done_before = now - cfg.store.done_retention.as_millis() as i64;
        let dead_before = now - cfg.delivery.dead_letter_ttl.as_millis() as i64;
        // Chunk after chunk until nothing is left, yielding between, so the
        // purge keeps up with any finishing rate without holding the writer.
        loop {
            match store.purge(done_before, dead_before).await {
                Ok(p) => {
                    if p.rows > 0 {
                        tracing::debug!(rows = p.rows, "purged finished work");
                    }
                    if !p.more || shutdown.is_cancelled() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purge failed; will try again");
                    break;
                }
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
