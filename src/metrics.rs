//! Prometheus metrics. One [`Metrics`] per daemon, shared by every stage;
//! labels are fixed, small sets (never a task ID).
//!
//! May call: `store`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::StoreStats;

/// The `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// The `status` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

/// The labels of `upstream_unknown_states_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnknownStateLabel {
    pub service: String,
    pub word: String,
}

/// The `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// The `op` label: a store operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// The `kind` label: what a claim took.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// The `service` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

/// Distinct (service, word) pairs counted under their own labels; beyond
/// this, a word an upstream invents counts as `(other)`, so a misbehaving
/// upstream cannot grow the metric without bound.
const MAX_UNKNOWN_STATE_LABELS: usize = 200;

fn outcome(o: &'static str) -> OutcomeLabel {
    OutcomeLabel { outcome: o }
}

/// Every metric taskhook exports.
pub struct Metrics {
    registry: Registry,
    pub tasks: Family<StatusLabel, Gauge>,
    pub dead_letters: Gauge,
    pub deliveries_pending: Gauge,
    pub enqueued: Counter,
    pub upstream_requests: Family<OutcomeLabel, Counter>,
    pub upstream_duration: Histogram,
    pub ids_per_request: Histogram,
    pub rate_limiter_wait: Counter<f64, AtomicU64>,
    pub finished: Family<OutcomeLabel, Counter>,
    pub deliveries: Family<OutcomeLabel, Counter>,
    pub delivery_duration: Histogram,
    pub enqueue_to_delivered: Histogram,
    pub detection_lag: Histogram,
    pub unknown_states: Family<UnknownStateLabel, Counter>,
    pub service_broken: Family<ServiceLabel, Gauge>,
    /// Live daemons sharing the store (1 on SQLite).
    pub instances: Gauge,
    /// 1 while this daemon leads the periodic work.
    pub leader: Gauge,
    /// 1 once this daemon has its share of the budget and polls.
    pub sharing: Gauge,
    pub store_query: Family<OpLabel, Histogram>,
    pub claim_size: Family<KindLabel, Histogram>,
    /// The interval every watched task is polled at now.
    pub poll_interval: Gauge<f64, AtomicU64>,
    /// The share of the request budget polling at that interval takes.
    pub poll_budget_in_use: Gauge<f64, AtomicU64>,
    /// Callbacks received, by what became of them.
    pub callbacks: Family<ResultLabel, Counter>,
    /// Watched tasks a callback made due at once, or marked to be when a
    /// poll of theirs on its way is recorded.
    pub hinted: Counter,
    /// The (service, word) pairs seen, each logged once.
    unknown_seen: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("taskhook");
        let m = Metrics {
            tasks: Family::default(),
            dead_letters: Gauge::default(),
            deliveries_pending: Gauge::default(),
            enqueued: Counter::default(),
            upstream_requests: Family::default(),
            upstream_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            ids_per_request: Histogram::new([1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0]),
            rate_limiter_wait: Counter::default(),
            finished: Family::default(),
            deliveries: Family::default(),
            delivery_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            enqueue_to_delivered: Histogram::new(exponential_buckets(0.1, 2.0, 18)),
            detection_lag: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            unknown_states: Family::default(),
            service_broken: Family::default(),
            instances: Gauge::default(),
            leader: Gauge::default(),
            sharing: Gauge::default(),
            store_query: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 14))
            }),
            claim_size: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0, 1.0, 5.0, 10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
                ])
            }),
            poll_interval: Gauge::default(),
            poll_budget_in_use: Gauge::default(),
            callbacks: Family::default(),
            hinted: Counter::default(),
            unknown_seen: Default::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "tasks",
            "Tasks in the store by status (watching, delivering, done)",
            m.tasks.clone(),
        );
        r.register(
            "dead_letters",
            "Deliveries dead-lettered and kept for replay",
            m.dead_letters.clone(),
        );
        r.register(
            "deliveries_pending",
            "Deliveries waiting for their next attempt",
            m.deliveries_pending.clone(),
        );
        r.register(
            "tasks_enqueued",
            "Task IDs accepted for watching",
            m.enqueued.clone(),
        );
        r.register(
            "upstream_requests",
            "retrieve_batch requests by outcome",
            m.upstream_requests.clone(),
        );
        r.register(
            "upstream_request_duration_seconds",
            "Time for one retrieve_batch request",
            m.upstream_duration.clone(),
        );
        r.register(
            "upstream_ids_per_request",
            "Task IDs carried by one retrieve_batch request",
            m.ids_per_request.clone(),
        );
        r.register(
            "rate_limiter_wait_seconds",
            "Time spent waiting for the rate limiter or an upstream back-off",
            m.rate_limiter_wait.clone(),
        );
        r.register(
            "tasks_finished",
            "Tasks found finished, by outcome",
            m.finished.clone(),
        );
        r.register(
            "deliveries",
            "Delivery attempts by outcome (delivered, retry, dead_letter, gone)",
            m.deliveries.clone(),
        );
        r.register(
            "delivery_duration_seconds",
            "Time for one delivery attempt",
            m.delivery_duration.clone(),
        );
        r.register(
            "enqueue_to_delivered_seconds",
            "From enqueue to the first successful delivery of the task's event",
            m.enqueue_to_delivered.clone(),
        );
        r.register(
            "detection_lag_seconds",
            "From the upstream's finished_at to taskhook noticing",
            m.detection_lag.clone(),
        );
        r.register(
            "upstream_unknown_states",
            "State words a service's profile does not know (read as still running), by service and word",
            m.unknown_states.clone(),
        );
        r.register(
            "upstream_service_broken",
            "1 while the upstream refuses a service (404, 405, api_not_implemented, ...), else 0",
            m.service_broken.clone(),
        );
        r.register(
            "instances",
            "Live daemons sharing the store (1 with SQLite)",
            m.instances.clone(),
        );
        r.register(
            "leader",
            "1 while this daemon leads the periodic work (purge, expiry)",
            m.leader.clone(),
        );
        r.register(
            "sharing",
            "1 once this daemon has its share of the upstream budget and polls and delivers \
             (a daemon joining others waits for them to make room)",
            m.sharing.clone(),
        );
        r.register(
            "store_query_duration_seconds",
            "Time for one store call on the hot path (and readyz's write check), by operation",
            m.store_query.clone(),
        );
        r.register(
            "claim_size",
            "Rows one claim took, by kind (tasks, deliveries)",
            m.claim_size.clone(),
        );
        r.register(
            "poll_interval_seconds",
            "The interval every watched task is polled at now (poll.interval while the budget allows)",
            m.poll_interval.clone(),
        );
        r.register(
            "poll_budget_in_use_ratio",
            "The share of the upstream request budget polling at that interval takes",
            m.poll_budget_in_use.clone(),
        );
        r.register(
            "callbacks",
            "Upstream callbacks received, by result (hinted, no_id, rate_limited, overflow, \
             bad_json, too_large, unknown_service)",
            m.callbacks.clone(),
        );
        r.register(
            "callback_hinted_tasks",
            "Watched tasks a callback made due for a poll at once (or marked, when a poll of theirs was on its way)",
            m.hinted.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Sets the gauges that come from the store.
    pub fn set_store_stats(&self, st: &StoreStats) {
        let set = |status: &'static str, v: u64| {
            self.tasks
                .get_or_create(&StatusLabel { status })
                .set(v as i64);
        };
        set("watching", st.watching);
        set("delivering", st.delivering);
        set("done", st.done);
        self.dead_letters.set(st.dead_letters as i64);
        self.deliveries_pending.set(st.deliveries_pending as i64);
    }

    pub fn upstream_request(&self, result: &'static str) {
        self.upstream_requests.get_or_create(&outcome(result)).inc();
    }

    pub fn task_finished(&self, o: &'static str) {
        self.finished.get_or_create(&outcome(o)).inc();
    }

    /// Counts a state word `service`'s profile does not know, logging each
    /// (service, word) once.
    pub fn unknown_state(&self, service: &str, word: &str) {
        let word: String = word.chars().take(64).collect();
        let label = {
            let mut seen = self.unknown_seen.lock().expect("unknown-state lock");
            let key = (service.to_string(), word.clone());
            if seen.contains(&key) {
                Some(key)
            } else if seen.len() < MAX_UNKNOWN_STATE_LABELS {
                tracing::warn!(
                    service,
                    word = %word,
                    "unknown state word; read as still running. If the service changed its \
                     vocabulary, add the word to [upstream.services.{service}]"
                );
                seen.insert(key.clone());
                Some(key)
            } else {
                None
            }
        };
        let (service, word) = label.unwrap_or_else(|| (service.to_string(), "(other)".into()));
        self.unknown_states
            .get_or_create(&UnknownStateLabel { service, word })
            .inc();
    }

    /// Marks `service` broken (refused by the upstream) or answering again.
    pub fn service_broken(&self, service: &str, broken: bool) {
        self.service_broken
            .get_or_create(&ServiceLabel {
                service: service.to_string(),
            })
            .set(broken as i64);
    }

    /// Times one store call on the hot path.
    pub fn store_call(&self, op: &'static str, started: std::time::Instant) {
        self.store_query
            .get_or_create(&OpLabel { op })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records how many rows a claim took.
    pub fn claimed(&self, kind: &'static str, n: usize) {
        self.claim_size
            .get_or_create(&KindLabel { kind })
            .observe(n as f64);
    }

    pub fn callback(&self, result: &'static str) {
        self.callbacks.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn delivery(&self, o: &'static str) {
        self.deliveries.get_or_create(&outcome(o)).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
