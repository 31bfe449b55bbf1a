//! Delivering: due deliveries leased from the store (or handed over by the
//! poller already leased), each sent within its webhook's lane, results
//! recorded in batches. A slow receiver only ever holds its own slots: the
//! claim skips webhooks that are at their cap.
//!
//! Inside: `lanes` (per-webhook concurrency), `attempt` (prepare → send →
//! classify → record), `send` (the request), `sign` (Standard Webhooks),
//! `retry` (the schedule), `ssrf` (the guard for per-task URLs), `clients`,
//! `reports` (batched writes).
//!
//! May call: `store`, `config`, `metrics`, `heartbeat`, `clock`, `http`,
//! `cluster`.

mod attempt;
mod clients;
mod lanes;
mod reports;
pub mod retry;
pub mod send;
pub mod sign;
pub mod ssrf;

pub use attempt::{Classified, classify};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::store::{ClaimedDelivery, DeliveryQueue, DeliveryReport};
use clients::Clients;
use lanes::Work;

/// Deliveries leased per claim.
const CLAIM_BATCH: usize = 256;
/// Attempts in flight (or queued for a webhook slot) at most.
const MAX_IN_FLIGHT: usize = 4096;

/// Runs the delivery loop until cancelled.
pub struct Dispatcher {
    /// Deliveries the poller stored already leased, to send at once.
    pub handoff: mpsc::UnboundedReceiver<Vec<ClaimedDelivery>>,
    pub heartbeat: crate::heartbeat::Heartbeat,
    pub clock: SharedClock,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub store: Arc<dyn DeliveryQueue>,
    pub config: watch::Receiver<Arc<Config>>,
    /// Woken by the poller when it stored events, and by result writes.
    pub wake: Arc<Notify>,
    /// Claims wait for this daemon's first heartbeat, so that every lease
    /// it takes names a live instance (and is given back if it dies).
    pub cluster: Arc<crate::cluster::Cluster>,
}

/// How soon to look again when deliveries are due but every one of them
/// is for a webhook at its cap (here or across daemons): a slot frees up
/// when an attempt ends, which other daemons do not announce.
const CAP_RECHECK: Duration = Duration::from_millis(100);

impl Dispatcher {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let client = match Clients::new(&self.config.borrow()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook client");
                return;
            }
        };
        let (tx, rx) = mpsc::channel::<DeliveryReport>(MAX_IN_FLIGHT);
        let writer = tokio::spawn(reports::write_reports(
            self.metrics.clone(),
            self.clock.clone(),
            self.store.clone(),
            rx,
            self.wake.clone(),
        ));
        let mut work = Work {
            clock: self.clock.clone(),
            client,
            report: tx,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            lanes: HashMap::new(),
            attempts: JoinSet::new(),
            metrics: self.metrics.clone(),
        };
        let mut stash: Vec<Vec<ClaimedDelivery>> = Vec::new();
        loop {
            self.heartbeat.beat();
            while work.attempts.try_join_next().is_some() {}
            if shutdown.is_cancelled() {
                break;
            }
            let cfg = self.config.borrow().clone();
            // Fresh deliveries handed over by the poller, already leased.
            while let Ok(batch) = self.handoff.try_recv() {
                stash.push(batch);
            }
            self.start(&mut work, &cfg, stash.drain(..).flatten()).await;
            let free = work.in_flight.available_permits().min(CLAIM_BATCH);
            if free == 0 {
                tokio::select! {
                    _ = work.attempts.join_next() => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
            if !self.cluster.is_ready() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
            let exclude = work.saturated();
            let now = self.clock.now_ms();
            let saturated = !exclude.is_empty();
            let Some(claim) = self.claim(&cfg, now, free, exclude).await else {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => break,
                }
            };
            if claim.deliveries.is_empty() {
                let sleep = match claim.next_due {
                    // Everything due is for webhooks at their cap: wait for a slot.
                    Some(_) if saturated && !work.attempts.is_empty() => self.heartbeat.max_idle(),
                    Some(due) if due <= now => CAP_RECHECK,
                    Some(due) => Duration::from_millis((due - now) as u64),
                    None => self.heartbeat.max_idle(),
                }
                .min(self.heartbeat.max_idle());
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = self.wake.notified() => {}
                    Some(batch) = self.handoff.recv() => stash.push(batch),
                    _ = work.attempts.join_next(), if !work.attempts.is_empty() => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            self.start(&mut work, &cfg, claim.deliveries).await;
        }
        // Let attempts in flight finish (the daemon bounds this by its grace
        // period); unfinished ones keep their lease and are retried later.
        while work.attempts.join_next().await.is_some() {}
        drop(work);
        let _ = writer.await;
    }

    /// Returns unsent deliveries (id, claim) to the store, due now. If that
    /// fails, their lease runs out and they are claimed then.
    /// Leases due deliveries (at most `free`, none for the webhooks in
    /// `exclude`, which are at their cap). `None` when the store refused.
    async fn claim(
        &self,
        cfg: &Config,
        now: crate::clock::Millis,
        free: usize,
        exclude: Vec<String>,
    ) -> Option<crate::store::DeliveryClaim> {
        let started = std::time::Instant::now();
        let claimed = self
            .store
            .claim_deliveries(
                now,
                free,
                cfg.delivery.lease_until(now),
                exclude,
                cfg.delivery.max_concurrent_per_webhook,
            )
            .await;
        self.metrics.store_call("claim_deliveries", started);
        match claimed {
            Ok(c) => {
                self.metrics.claimed("deliveries", c.deliveries.len());
                Some(c)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim deliveries; retrying in 1s");
                None
            }
        }
    }

    /// Starts each leased delivery in its webhook's lane; those a full lane
    /// cannot take go back to the store, due at once.
    async fn start(
        &self,
        work: &mut Work,
        cfg: &Arc<Config>,
        deliveries: impl IntoIterator<Item = ClaimedDelivery>,
    ) {
        let mut give_back = Vec::new();
        for d in deliveries {
            let lease = (d.id, d.claim);
            if !work.start(cfg, d) {
                give_back.push(lease);
            }
        }
        self.give_back(give_back).await;
    }

    async fn give_back(&self, leases: Vec<(i64, i64)>) {
        if leases.is_empty() {
            return;
        }
        if let Err(e) = self
            .store
            .release_deliveries(self.clock.now_ms(), leases)
            .await
        {
            tracing::warn!(error = %e, "cannot give back deliveries; they wait for their lease");
        }
    }
}
