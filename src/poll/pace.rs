//! Spending the request budget: the interval every watched task can be
//! polled at, given how many are watched and how many IDs one request
//! carries; and the first poll of a task, placed near the moment its
//! service's tasks usually finish. The rules are pure functions; [`Pace`]
//! holds what they found last (refreshed by [`Pace::run`] from the store's
//! demand) for the rounds, the API and `taskhook status`.
//!
//! May call: `store` (demand, learned durations), `poll::{batches,
//! schedule, upstream}`, `cluster`, `config`, `metrics`, `clock`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::clock::SharedClock;
use crate::config::{Config, Strategy};
use crate::poll::batches::{Batches, batch_for};
use crate::poll::schedule::PollSchedule;
use crate::poll::upstream::UpstreamClient;
use crate::store::{DurationModel, PollQueue};

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

/// The spacing of polls in force: what deciding a poll needs to place a
/// running task's next one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spacing {
    pub strategy: Strategy,
    /// Under [`Strategy::Budget`]: the interval every task gets now.
    pub effective: Duration,
}

impl Spacing {
    /// Pure back-off, whatever the budget.
    pub fn backoff() -> Spacing {
        Spacing {
            strategy: Strategy::Backoff,
            effective: Duration::ZERO,
        }
    }

    /// The delay after poll number `polls` (1-based) of a running task.
    pub fn delay_after(&self, schedule: &PollSchedule, polls: u32) -> Duration {
        match self.strategy {
            Strategy::Budget => self.effective.max(schedule.interval),
            Strategy::Backoff => schedule.delay_after(polls),
        }
    }
}

/// What the pacing found last, for `taskhook status`, `/v1/stats` and the
/// console.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct PaceView {
    /// `budget` or `backoff` (`poll.strategy`).
    pub strategy: Option<Strategy>,
    /// `poll.interval`: the fastest any task is polled.
    pub floor_interval_ms: u64,
    /// The interval every task is polled at now (the floor while the
    /// budget allows; under `backoff`, the floor too, before back-off).
    pub effective_interval_ms: u64,
    /// Requests per second polling may use (all daemons together).
    pub budget_requests_per_second: f64,
    /// Requests per second polling every task at the floor would take.
    pub needed_at_floor_requests_per_second: f64,
    /// The share of the budget polling at the effective interval takes.
    pub budget_in_use: f64,
    /// Per service: tasks taking polls, IDs per request, the first poll.
    pub services: Vec<ServicePace>,
}

/// One service's part of the demand, and how its new tasks are first polled.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServicePace {
    pub service: String,
    /// Watched tasks taking polls now.
    pub watching: u64,
    /// IDs per request in force.
    pub batch: usize,
    /// How long after enqueue its new tasks are first polled.
    pub first_poll_after_ms: u64,
    /// What was learned of its tasks' durations, once there is something.
    pub learned: Option<DurationModel>,
}

/// The pacing in force, shared by the poll loop's rounds (the interval),
/// the API (first polls of new tasks) and the status views.
#[derive(Debug, Default)]
pub struct Pace {
    effective_ms: AtomicU64,
    view: Mutex<PaceView>,
    models: RwLock<HashMap<String, DurationModel>>,
}

/// Where [`Pace::run`] reads the demand and the budget.
pub struct Sources {
    pub store: Arc<dyn PollQueue>,
    pub config: watch::Receiver<Arc<Config>>,
    pub upstream: Arc<UpstreamClient>,
    pub cluster: Arc<crate::cluster::Cluster>,
    pub batches: Arc<Batches>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub clock: SharedClock,
}

/// How often the demand is counted, at least; a slow count waits longer.
pub const REFRESH: Duration = Duration::from_secs(2);
/// Counting the demand may take at most one part in this many of the time
/// between counts. The count reads the running tasks and those due by the
/// horizon through their own indexes, so it is cheap while few are; with a
/// million running or overdue it takes tens of milliseconds, and an idle
/// daemon must stay near zero CPU (at that scale the interval is many
/// minutes, so a count every minute or two keeps up).
pub const COST_SHARE: u32 = 1000;
/// The longest wait between counts, however long the last one took (it
/// may have waited for a busy store rather than worked).
pub const MAX_REFRESH: Duration = Duration::from_secs(120);

/// How long after a count the next is made: [`COST_SHARE`] times as long
/// as it `took`, within [`REFRESH`] and [`MAX_REFRESH`]; after a failed
/// count (`None`), [`REFRESH`].
pub fn next_count_in(took: Option<Duration>) -> Duration {
    match took {
        Some(t) => (t * COST_SHARE).clamp(REFRESH, MAX_REFRESH),
        None => REFRESH,
    }
}

impl Pace {
    /// Starts from the durations learned so far (the store's).
    pub fn new(models: Vec<DurationModel>) -> Arc<Self> {
        let pace = Pace::default();
        for m in models {
            pace.learned(m);
        }
        Arc::new(pace)
    }

    /// The spacing the rounds use now.
    pub fn spacing(&self, cfg: &Config) -> Spacing {
        let effective = Duration::from_millis(self.effective_ms.load(Ordering::Relaxed));
        Spacing {
            strategy: cfg.poll.strategy,
            effective: effective.max(cfg.poll.interval),
        }
    }

    /// When a new task of `service` is first polled, after its enqueue.
    pub fn first_poll_after(&self, cfg: &Config, service: &str) -> Duration {
        if !cfg.poll.learn_first_poll {
            return cfg.poll.first_poll_after;
        }
        let models = self.models.read().expect("pace lock");
        first_poll_after(
            models.get(service),
            cfg.poll.first_poll_after,
            cfg.poll.first_poll_max,
        )
    }

    /// Takes a service's newly learned durations.
    pub fn learned(&self, model: DurationModel) {
        self.models
            .write()
            .expect("pace lock")
            .insert(model.service.clone(), model);
    }

    /// What the pacing found last.
    pub fn view(&self) -> PaceView {
        self.view.lock().expect("pace lock").clone()
    }

    /// Counts the demand every [`REFRESH`] (or [`COST_SHARE`] times as long
    /// as the count took, see [`next_count_in`]) and sets the interval it
    /// allows, until cancelled.
    pub async fn run(self: Arc<Self>, from: Sources, shutdown: CancellationToken) {
        loop {
            let cfg = from.config.borrow().clone();
            let started = std::time::Instant::now();
            let now = from.clock.now_ms();
            let horizon = now + cfg.poll.interval.as_millis() as i64;
            let counted = from.store.demand(horizon).await;
            let took = counted.is_ok().then(|| started.elapsed());
            match counted {
                Ok(demand) => {
                    let demand: Vec<ServiceDemand> = demand
                        .into_iter()
                        .map(|(service, watching)| ServiceDemand {
                            batch: batch_for(&cfg, &from.batches, &service),
                            service,
                            watching,
                        })
                        .collect();
                    // The rate in force (lowered after 429s) for every
                    // daemon, within the configured budget.
                    let instances = from.cluster.live().len().max(1) as f64;
                    let budget = (from.upstream.health().requests_per_second * instances)
                        .min(cfg.upstream.max_requests_per_second);
                    self.set(&cfg, demand, budget, &from.metrics);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot count the watched tasks; keeping the last poll interval")
                }
            }
            let wait = next_count_in(took);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Sets the interval `demand` allows within `budget`, and the view.
    pub fn set(
        &self,
        cfg: &Config,
        demand: Vec<ServiceDemand>,
        budget: f64,
        metrics: &crate::metrics::Metrics,
    ) {
        let floor = cfg.poll.interval;
        let effective = match cfg.poll.strategy {
            Strategy::Budget => effective_interval(floor, &demand, budget),
            Strategy::Backoff => floor,
        };
        self.effective_ms
            .store(effective.as_millis() as u64, Ordering::Relaxed);
        let needed = requests_per_second(floor, &demand);
        let in_use = if budget > 0.0 {
            requests_per_second(effective, &demand) / budget
        } else {
            0.0
        };
        metrics.poll_interval.set(effective.as_secs_f64());
        metrics.poll_budget_in_use.set(in_use);
        let models = self.models.read().expect("pace lock").clone();
        let mut services: Vec<ServicePace> = demand
            .iter()
            .map(|d| ServicePace {
                service: d.service.clone(),
                watching: d.watching,
                batch: d.batch,
                first_poll_after_ms: self.first_poll_after(cfg, &d.service).as_millis() as u64,
                learned: models.get(&d.service).cloned(),
            })
            .collect();
        for (service, m) in &models {
            if !demand.iter().any(|d| &d.service == service) {
                services.push(ServicePace {
                    service: service.clone(),
                    watching: 0,
                    batch: batch_for(cfg, &Batches::new(), service),
                    first_poll_after_ms: self.first_poll_after(cfg, service).as_millis() as u64,
                    learned: Some(m.clone()),
                });
            }
        }
        services.sort_by(|a, b| a.service.cmp(&b.service));
        *self.view.lock().expect("pace lock") = PaceView {
            strategy: Some(cfg.poll.strategy),
            floor_interval_ms: floor.as_millis() as u64,
            effective_interval_ms: effective.as_millis() as u64,
            budget_requests_per_second: budget,
            needed_at_floor_requests_per_second: needed,
            budget_in_use: in_use,
            services,
        };
    }
}

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
    fn a_slow_count_waits_longer_but_never_past_the_cap_and_a_failed_one_not_at_all() {
        let ms = Duration::from_millis;
        assert_eq!(next_count_in(Some(ms(0))), REFRESH);
        assert_eq!(next_count_in(Some(ms(30))), Duration::from_secs(30));
        // A count that waited 30 s for a pooled connection during a
        // failover must not put the next one off for eight hours.
        assert_eq!(next_count_in(Some(Duration::from_secs(30))), MAX_REFRESH);
        assert_eq!(next_count_in(None), REFRESH);
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

    fn cfg(extra: &str) -> Config {
        Config::from_toml(&format!(
            "[poll]\ninterval = \"5s\"\nfirst_poll_after = \"10s\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn the_pace_sets_the_interval_the_view_and_the_first_polls() {
        let metrics = crate::metrics::Metrics::new();
        let c = cfg("");
        let pace = Pace::new(vec![DurationModel {
            service: "kling".into(),
            count: 40,
            p10_ms: 240_000,
            p50_ms: 300_000,
            p90_ms: 360_000,
            updated_at: 0,
        }]);
        pace.set(&c, vec![demand(10_000, 50)], 5.0, &metrics);
        let sp = pace.spacing(&c);
        assert_eq!((sp.strategy, sp.effective), (Strategy::Budget, secs(50.0)));
        let v = pace.view();
        assert_eq!(
            (v.floor_interval_ms, v.effective_interval_ms),
            (5_000, 50_000)
        );
        assert_eq!(v.needed_at_floor_requests_per_second, 40.0);
        assert!((v.budget_in_use - 0.8).abs() < 1e-9, "{}", v.budget_in_use);
        let names: Vec<&str> = v.services.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(names, ["kling", "suno"], "learned services are listed too");
        assert_eq!(v.services[0].first_poll_after_ms, 240_000);
        assert_eq!(pace.first_poll_after(&c, "suno"), secs(10.0));
        assert_eq!(pace.first_poll_after(&c, "kling"), secs(240.0));
        // Learning off: the fixed first poll; back-off: the floor.
        let fixed = cfg("learn_first_poll = false\nstrategy = \"backoff\"");
        assert_eq!(pace.first_poll_after(&fixed, "kling"), secs(10.0));
        pace.set(&fixed, vec![demand(10_000, 50)], 5.0, &metrics);
        assert_eq!(pace.spacing(&fixed).strategy, Strategy::Backoff);
        assert_eq!(pace.view().effective_interval_ms, 5_000);
    }

    #[test]
    fn under_the_budget_strategy_every_poll_waits_the_effective_interval() {
        let schedule = PollSchedule::of(&cfg("").poll);
        let budget = Spacing {
            strategy: Strategy::Budget,
            effective: secs(12.0),
        };
        for polls in [1, 2, 10, 100] {
            assert_eq!(budget.delay_after(&schedule, polls), secs(12.0));
            assert_eq!(
                Spacing::backoff().delay_after(&schedule, polls),
                schedule.delay_after(polls)
            );
        }
        // Never below the floor (a reload may raise it before the next count).
        let stale = Spacing {
            strategy: Strategy::Budget,
            effective: secs(1.0),
        };
        assert_eq!(stale.delay_after(&schedule, 1), secs(5.0));
    }
}
