//! Housekeeping: done tasks past `store.done_retention`, dead letters past
//! `delivery.dead_letter_ttl`.
//!
//! May call: `store` (admin), `config`, `clock`, `cluster`.

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::config::SyncMode;
    use crate::store::testing::{finish, task};
    use crate::store::{PollQueue, ReadModel, SqliteStore};

    /// The purge loop keeps time by the clock and the timers it is given:
    /// under paused tokio time an hour passes at once, and a finished task
    /// goes only once `done_retention` has passed on that clock. The clock
    /// starts a day after the wall clock, so a loop that read the wall
    /// clock would never purge it.
    #[tokio::test(start_paused = true)]
    async fn the_purge_keeps_time_by_the_clock_it_is_given() {
        let start = crate::clock::now_ms() + 24 * 3600 * 1000;
        let clock: SharedClock = Arc::new(TokioClock::starting_at(start));
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(SqliteStore::open(&dir.path().join("t.db"), SyncMode::Normal, start).unwrap());
        store.enqueue(start, 0, vec![task("a")]).await.unwrap();
        let t = store
            .claim_poll_batch(start, start, 10.into(), start + 60_000)
            .await
            .unwrap()
            .tasks
            .remove(0);
        store
            .record_polls(start, vec![finish(&t, &[])], None)
            .await
            .unwrap();
        assert_eq!(store.stats().await.unwrap().done, 1);

        let config = Config::from_toml("[store]\ndone_retention = \"10m\"").unwrap();
        let (_tx, rx) = watch::channel(Arc::new(config));
        let cluster = Arc::new(crate::cluster::Cluster::new(start));
        cluster.set_leading(Some(1));
        let stop = CancellationToken::new();
        let purge = tokio::spawn(purge_loop(
            cluster,
            clock.clone(),
            store.clone(),
            rx,
            stop.clone(),
        ));

        // Nine purges, all before the retention is over: the task stays.
        tokio::time::sleep(PURGE_EVERY * 9 + PURGE_EVERY / 2).await;
        assert_eq!(store.stats().await.unwrap().done, 1);
        // The tenth and eleventh come after it: gone (each store call runs
        // on the store's thread, so wait for it, on the paused clock).
        let mut waited = Duration::ZERO;
        while store.stats().await.unwrap().done == 1 {
            assert!(waited < PURGE_EVERY * 5, "not purged after the retention");
            tokio::time::sleep(PURGE_EVERY / 10).await;
            waited += PURGE_EVERY / 10;
        }
        assert!(clock.now_ms() - start >= 10 * 60 * 1000);
        stop.cancel();
        purge.await.unwrap();
    }
}
