//! Per-webhook concurrency: each receiver gets its own lane of slots, so a
//! slow receiver only ever holds its own; attempts in flight are capped as
//! a whole too.
//!
//! May call: `deliver::attempt`, `config`, `store` (the delivery type),
//! `clock`, `limit`, `metrics`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::attempt::Job;
use super::clients::Clients;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::limit::Limit;
use crate::store::{ClaimedDelivery, DeliveryReport};

/// Deliveries queued for one webhook, per slot, at most; a handed-off
/// delivery beyond that is given back to the store instead. Each queued
/// delivery waits at most this many attempts (each bounded by the request
/// timeout), well inside the lease of 40 request timeouts.
const LANE_QUEUE_PER_SLOT: usize = 32;

/// One webhook's concurrency: its slots, their number, and how many
/// attempts wait for one.
#[derive(Clone)]
pub(super) struct Lane {
    /// Follows a reloaded `max_concurrent_per_webhook`.
    slots: Limit,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl Lane {
    fn new(cap: usize) -> Lane {
        Lane {
            slots: Limit::new(cap),
            waiting: Arc::default(),
        }
    }
}

/// The dispatch loop's working state: the lanes and the attempts in flight.
pub(super) struct Work {
    pub client: Clients,
    pub clock: SharedClock,
    pub report: mpsc::Sender<DeliveryReport>,
    pub in_flight: Arc<Semaphore>,
    pub lanes: HashMap<String, Lane>,
    pub attempts: JoinSet<()>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Work {
    /// Starts an attempt for `d`; false (and `d` dropped, still leased:
    /// the caller gives it back) when its webhook's queue or the global
    /// cap is full.
    pub fn start(&mut self, cfg: &Arc<Config>, d: ClaimedDelivery) -> bool {
        use std::sync::atomic::Ordering;
        let cap = cfg.delivery.max_concurrent_per_webhook;
        let lane = self
            .lanes
            .entry(d.webhook.clone())
            .or_insert_with(|| Lane::new(cap));
        if lane.slots.size() != cap {
            lane.slots.resize(cap);
        }
        let lane = lane.clone();
        if lane.waiting.load(Ordering::Relaxed) >= LANE_QUEUE_PER_SLOT * cap {
            return false;
        }
        let Ok(slot) = self.in_flight.clone().try_acquire_owned() else {
            return false;
        };
        let job = Job {
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            client: self.client.clone(),
            cfg: cfg.clone(),
            report: self.report.clone(),
        };
        lane.waiting.fetch_add(1, Ordering::Relaxed);
        self.attempts.spawn(async move {
            let _slot = slot;
            let turn = lane.slots.acquire().await;
            lane.waiting.fetch_sub(1, Ordering::Relaxed);
            job.attempt(d).await;
            drop(turn);
        });
        true
    }

    /// Webhooks whose slots are all taken.
    pub fn saturated(&mut self) -> Vec<String> {
        self.lanes.retain(|_, l| {
            l.slots.available() < l.slots.size()
                || l.waiting.load(std::sync::atomic::Ordering::Relaxed) > 0
        });
        self.lanes
            .iter()
            .filter(|(_, l)| l.slots.available() == 0)
            .map(|(k, _)| k.clone())
            .collect()
    }
}
