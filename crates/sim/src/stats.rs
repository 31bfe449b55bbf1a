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
    /// Requests per path service name (unknown names included).
    pub(crate) requests_by_service: BTreeMap<String, u64>,
    /// Batch requests whose `limit` was absent or not the number of IDs.
    pub(crate) limit_mismatches: u64,
    /// Every request in arrival order, under `--log-requests`.
    pub(crate) log: Vec<RequestRecord>,
}

/// One request to `/{service}/tasks` as `GET /_sim/requests` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RequestRecord {
    /// Its place in arrival order (1 for the first since the last reset).
    pub(crate) seq: u64,
    /// The path's service name.
    pub(crate) service: String,
    /// The IDs it asked about (`ids`, or the one `id` / `task_id`).
    pub(crate) ids: Vec<String>,
    /// When it arrived and when it was answered (unix milliseconds); not
    /// answered (`None`) while in flight, or when the client gave up first.
    pub(crate) at_ms: u64,
    pub(crate) answered_ms: Option<u64>,
    pub(crate) status: Option<u16>,
    /// The fault it drew, if any.
    pub(crate) fault: Option<&'static str>,
}

impl Stats {
    /// Logs request `seq` as it arrives.
    pub(crate) fn log_arrival(
        &mut self,
        seq: u64,
        service: &str,
        body: &[u8],
        at_ms: u64,
        fault: Option<&'static str>,
    ) {
        self.log.push(RequestRecord {
            seq,
            service: service.to_owned(),
            ids: requested_ids(body),
            at_ms,
            answered_ms: None,
            status: None,
            fault,
        });
    }

    /// Logs the answer to request `seq`.
    pub(crate) fn log_answer(&mut self, seq: u64, status: u16, at_ms: u64) {
        if let Some(r) = self.log.iter_mut().rev().find(|r| r.seq == seq) {
            r.status = Some(status);
            r.answered_ms = Some(at_ms);
        }
    }
}

/// The IDs a tasks request names, whatever the service: `ids`, else `id`
/// or `task_id`; none when the body is not such JSON.
fn requested_ids(body: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        ids: Option<Vec<String>>,
        id: Option<String>,
        task_id: Option<String>,
    }
    match serde_json::from_slice::<Named>(body) {
        Ok(Named { ids: Some(ids), .. }) => ids,
        Ok(Named { id, task_id, .. }) => id.or(task_id).into_iter().collect(),
        Err(_) => Vec::new(),
    }
}

impl Stats {
    /// Counts a request to `/{service}/tasks`.
    pub(crate) fn count_request(&mut self, service: &str) {
        self.requests += 1;
        match self.requests_by_service.get_mut(service) {
            Some(n) => *n += 1,
            None => {
                self.requests_by_service.insert(service.to_owned(), 1);
            }
        }
    }

    /// Counts an answer's status.
    pub(crate) fn count_status(&mut self, status: axum::http::StatusCode) {
        *self.statuses.entry(status.as_u16()).or_default() += 1;
    }

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
            "requests_by_service": self.requests_by_service,
            "limit_mismatches": self.limit_mismatches,
            "tasks": tasks,
        })
    }
}
