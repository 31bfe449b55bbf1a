//! Spending the request budget: the interval every watched task can be
//! polled at, given how many are watched and how many IDs one request
//! carries; and the first poll of a task, placed near the moment its
//! service's tasks usually finish. Pure: the demand and the learned
//! durations are passed in.
//!
//! May call: `store` (the duration model type).

use std::time::Duration;

use serde::Deserialize;

use crate::store::DurationModel;

/// How the time between two polls of a task is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Every task at `poll.interval` while the budget allows, all slower
    /// alike when it does not: the lag follows the demand.
    Budget,
    /// `interval × backoff_factor^(polls-1)` up to `max_interval`, whatever
    /// the budget.
    Backoff,
}

/// The share of the request budget polling plans to use: the rest absorbs
/// confirmations, paging, retries and callback hints.
pub const UTILISATION: f64 = 0.8;

/// Watched tasks of one service that take polls now, and the IDs one of
/// its requests carries.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDemand {
    pub service: String,
    pub watching: u64,
    pub batch: usize,
}

/// Requests per second that polling every task of `demand` once per
/// `interval` takes (a batch request per `batch` tasks, per service).
pub fn requests_per_second(interval: Duration, demand: &[ServiceDemand]) -> f64 {
    let requests: u64 = demand
        .iter()
        .map(|d| d.watching.div_ceil(d.batch.max(1) as u64))
        .sum();
    requests as f64 / interval.as_secs_f64().max(1e-3)
}

/// The interval every task can be polled at within [`UTILISATION`] of
/// `budget` requests per second: `floor` while that fits, longer in
/// proportion to the excess when it does not.
pub fn effective_interval(floor: Duration, demand: &[ServiceDemand], budget: f64) -> Duration {
    let need = requests_per_second(floor, demand);
    let usable = budget * UTILISATION;
    if need <= usable || usable <= 0.0 {
        floor
    } else {
        floor.mul_f64(need / usable)
    }
}

/// Tasks a service must have finished before its durations are trusted.
pub const MIN_SAMPLES: u64 = 20;

/// When to poll a new task of a service first: near the earliest its tasks
/// usually finish (the learned 10th percentile of their durations), at most
/// `max`; `fixed` until enough of them have finished.
pub fn first_poll_after(model: Option<&DurationModel>, fixed: Duration, max: Duration) -> Duration {
    match model {
        Some(m) if m.count >= MIN_SAMPLES => Duration::from_millis(m.p10_ms.max(0) as u64)
            .clamp(FIRST_POLL_MIN, max.max(FIRST_POLL_MIN)),
        _ => fixed,
    }
}

/// The earliest a learned first poll is placed.
pub const FIRST_POLL_MIN: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(watching: u64, batch: usize) -> ServiceDemand {
        ServiceDemand {
            service: "suno".into(),
            watching,
            batch,
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn while_demand_fits_every_task_is_polled_at_the_floor() {
        // 1000 tasks, 50 per request, every 5 s: 4 requests/s of 5 × 0.8.
        let d = [demand(1000, 50)];
        assert_eq!(requests_per_second(secs(5.0), &d), 4.0);
        assert_eq!(effective_interval(secs(5.0), &d, 5.0), secs(5.0));
        assert_eq!(effective_interval(secs(5.0), &[], 5.0), secs(5.0));
    }

    #[test]
    fn past_the_budget_the_interval_grows_in_proportion() {
        // 10 000 tasks need 40 requests/s at the floor; 4 are usable.
        let at = |n| effective_interval(secs(5.0), &[demand(n, 50)], 5.0);
        assert_eq!(at(10_000), secs(50.0));
        assert_eq!(at(100_000), secs(500.0));
        // Smooth and monotonic: no cliff as demand crosses the budget.
        let mut last = Duration::ZERO;
        for n in (0..20_000).step_by(250) {
            let e = at(n);
            assert!(e >= last, "{n}: {e:?} < {last:?}");
            assert!(e.as_secs_f64() <= 5.0_f64.max(n as f64 / 50.0 / 4.0) + 1e-9);
            last = e;
        }
    }

    #[test]
    fn a_service_asked_one_id_at_a_time_costs_a_request_per_task() {
        let d = [
            demand(100, 50),
            ServiceDemand {
                service: "captcha".into(),
                watching: 30,
                batch: 1,
            },
        ];
        assert_eq!(requests_per_second(secs(1.0), &d), 32.0);
        assert_eq!(effective_interval(secs(1.0), &d, 10.0), secs(4.0));
    }

    #[test]
    fn the_first_poll_follows_the_learned_durations_within_bounds() {
        let fixed = secs(10.0);
        let max = secs(600.0);
        let model = |count, p10_ms| DurationModel {
            service: "kling".into(),
            count,
            p10_ms,
            p50_ms: p10_ms * 2,
            p90_ms: p10_ms * 3,
            updated_at: 0,
        };
        assert_eq!(first_poll_after(None, fixed, max), fixed);
        assert_eq!(
            first_poll_after(Some(&model(5, 300_000)), fixed, max),
            fixed
        );
        assert_eq!(
            first_poll_after(Some(&model(50, 300_000)), fixed, max),
            secs(300.0)
        );
        assert_eq!(
            first_poll_after(Some(&model(50, 3_600_000)), fixed, max),
            max
        );
        assert_eq!(
            first_poll_after(Some(&model(50, 20)), fixed, max),
            FIRST_POLL_MIN
        );
    }
}
