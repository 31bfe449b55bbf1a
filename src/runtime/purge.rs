//! Housekeeping: done tasks past `store.done_retention`, dead letters past
//! `delivery.dead_letter_ttl`.
//!
//! May call: `store` (admin), `config`, `clock`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::store::Admin;

/// How often finished tasks and old dead letters are purged.
pub const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Drops finished work past its retention, every [`PURGE_EVERY`], chunk
/// after chunk until nothing is left.
pub(super) async fn purge_loop(
    cluster: Arc<crate::cluster::Cluster>,
    clock: SharedClock,
    store: Arc<dyn Admin>,
    config: watch::Receiver<Arc<Config>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PURGE_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        // One daemon purges a shared store; a second doing it too would be
        // harmless (each chunk is idempotent), only wasteful.
        if !cluster.is_leader() {
            continue;
        }
        let cfg = config.borrow().clone();
        let now = clock.now_ms();
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
