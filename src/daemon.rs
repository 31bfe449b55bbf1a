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
use crate::config::Config;
use crate::dispatcher::Dispatcher;
use crate::poller::Poller;
use crate::store::{SqliteStore, Store, StoreError, now_ms};
use crate::upstream::UpstreamClient;

/// A started daemon: where its API listens, and how to stop it.
pub struct Daemon {
    pub api_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    grace: Duration,
}

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
                StoreError::Fatal(m) | StoreError::Unavailable(m) => anyhow::anyhow!(m),
            })?;
        let store: Arc<dyn Store> = Arc::new(store);
        let listener = TcpListener::bind(config.api.listen)
            .await
            .with_context(|| format!("api.listen: cannot listen on {}", config.api.listen))?;
        let api_addr = listener.local_addr()?;
        let grace = config.daemon.shutdown_grace;
        let upstream = Arc::new(UpstreamClient::new(config.upstream.clone())?);
        let (_config_tx, config_rx) = watch::channel(Arc::new(config));
        let shutdown = CancellationToken::new();
        let poller_wake = Arc::new(Notify::new());
        let dispatcher_wake = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();

        let poller = Poller {
            store: store.clone(),
            upstream: upstream.clone(),
            config: config_rx.clone(),
            wake: poller_wake.clone(),
            deliveries_ready: dispatcher_wake.clone(),
        };
        tasks.spawn(poller.run(shutdown.child_token()));
        let dispatcher = Dispatcher {
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
        Ok(Daemon {
            api_addr,
            store,
            shutdown,
            tasks,
            grace,
        })
    }

    /// A token that stops the daemon when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for the token, then stops: no new claims, work in flight gets
    /// the grace period, whatever is unfinished stays in the store.
    pub async fn run_until_stopped(mut self) {
        self.shutdown.cancelled().await;
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

async fn purge_loop(
    store: Arc<dyn Store>,
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
        match store.purge(done_before, dead_before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "purged finished work"),
            Err(e) => tracing::warn!(error = %e, "purge failed; will try again"),
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
