//! Request statistics, served by `GET /_sim/stats` and cleared by
//! `POST /_sim/reset`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Request counters, cleared by `POST /_sim/reset`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) requests: u64,
    pub(crate) batch_requests: u64,
    pub(crate) single_requests: u64,
    pub(crate) ids_requested: u64,
    pub(crate) max_ids_per_request: u64,
    pub(crate) faults: BTreeMap<&'static str, u64>,
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) max_in_flight: usize,
}

impl Stats {
    /// The body of `GET /_sim/stats`; `tasks` is how many tasks exist.
    pub(crate) fn to_json(&self, tasks: usize) -> Value {
        let mean = if self.batch_requests == 0 {
            0.0
        } else {
            self.ids_requested as f64 / self.batch_requests as f64
        };
        json!({
            "requests": self.requests,
            "batch_requests": self.batch_requests,
            "single_requests": self.single_requests,
            "ids_requested": self.ids_requested,
            "max_ids_per_request": self.max_ids_per_request,
            "mean_ids_per_request": mean,
            "faults": self.faults,
            "statuses": self.statuses,
            "max_in_flight": self.max_in_flight,
            "tasks": tasks,
        })
    }
}
