//! Polling: which tasks to ask about and when. The loop claims due tasks of
//! one service from the store, splits them into batches and runs a round
//! for each; a sweep finishes tasks past their TTL whatever keeps them from
//! being polled.
//!
//! Inside: `batches` (IDs per request), `round` (request → decide → persist
//! → hand off), `decide` (one task's next step), `upstream` (the client),
//! `terminal` (reading records through the service `profile`), `schedule`
//! (timing), `pace` (spending the request budget, the learned first poll),
//! `pacer` (the rate limiter).
//!
//! May call: `store`, `fanout`, `profile`, `outcome`, `config`, `metrics`,
//! `heartbeat`, `http`, `limit`, `cluster`, `clock`.

mod batches;
mod decide;
pub mod pace;
mod pacer;
mod round;
pub mod schedule;
pub mod terminal;
#[cfg(all(test, feature = "dev-tools"))]
mod tests;
pub mod upstream;

pub use batches::Batches;
pub use decide::{decide, finished_at_secs};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::outcome::Outcome;
use crate::store::{ClaimedDelivery, PollQueue, PollUpdate};
use batches::{batch_for, claim_limits};
use decide::{finish_update, ms};
use round::Round;
use upstream::UpstreamClient;

/// Runs the poll loop until cancelled.
pub struct Poller {
    /// Where finished tasks' new deliveries go, already leased.
    pub handoff: tokio::sync::mpsc::UnboundedSender<Vec<ClaimedDelivery>>,
    pub heartbeat: crate::heartbeat::Heartbeat,
    pub clock: SharedClock,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// IDs per request in force, per service.
    pub batches: Arc<Batches>,
    pub store: Arc<dyn PollQueue>,
    pub upstream: Arc<UpstreamClient>,
    pub config: watch::Receiver<Arc<Config>>,
    /// Woken by enqueue, so a new task's first poll is planned at once.
    pub wake: Arc<Notify>,
    /// Woken when a round produced events, so delivery starts at once.
    pub deliveries_ready: Arc<Notify>,
    /// Whether this daemon leads the periodic work (the expiry sweep), and
    /// knows its share of the budget (before that it claims nothing).
    pub cluster: Arc<crate::cluster::Cluster>,
    /// Hand new deliveries to this daemon's dispatcher already leased (one
    /// daemon); with several, they wait to be claimed.
    pub hand_off: bool,
    /// The poll interval the budget allows, refreshed beside the loop.
    pub pace: Arc<pace::Pace>,
    /// A claim's lease beyond pacing and the slowest answer:
    /// [`LEASE_SPARE`] (tests shorten it).
    pub lease_spare: Duration,
}

/// What the loop does after a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Carry on.
    Go,
    /// Start the turn over (still waiting for something).
    Again,
    /// Shut down.
    Stop,
}

/// How far ahead of its due time a task may be polled to fill a batch.
pub fn coalesce_window(cfg: &Config) -> Duration {
    (cfg.poll.interval / 4).min(Duration::from_secs(2))
}

impl Poller {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let pacing = tokio::spawn(self.pace.clone().run(
            pace::Sources {
                store: self.store.clone(),
                config: self.config.clone(),
                upstream: self.upstream.clone(),
                cluster: self.cluster.clone(),
                batches: self.batches.clone(),
                metrics: self.metrics.clone(),
                clock: self.clock.clone(),
            },
            shutdown.clone(),
        ));
        let mut rounds = JoinSet::new();
        let mut token_paused_since: Option<std::time::Instant> = None;
        let mut claim_ahead = Duration::ZERO;
        let mut last_sweep: Option<std::time::Instant> = None;
        loop {
            self.heartbeat.beat();
            while rounds.try_join_next().is_some() {}
            let step = if !self.cluster.is_ready() {
                self.idle(Duration::from_millis(100), &shutdown).await
            } else {
                if self.cluster.is_leader()
                    && last_sweep.is_none_or(|at| at.elapsed() >= EXPIRY_SWEEP_EVERY)
                {
                    last_sweep = Some(std::time::Instant::now());
                    let cfg = self.config.borrow().clone();
                    self.expire_overdue(&cfg).await;
                }
                self.poll_once(
                    &mut token_paused_since,
                    &mut claim_ahead,
                    &mut rounds,
                    &shutdown,
                )
                .await
            };
            if step == Step::Stop {
                break;
            }
        }
        // Requests in flight may finish; their leases protect them if not.
        while rounds.join_next().await.is_some() {}
        let _ = pacing.await;
    }

    /// One turn of the loop past readiness and the sweep: wait out a
    /// refused token or an upstream pause, else claim due tasks and start
    /// their rounds, or sleep until the next is due.
    /// `claim_ahead`: how long claims take lately, so the next is made
    /// that long before its requests may leave.
    async fn poll_once(
        &mut self,
        token_paused_since: &mut Option<std::time::Instant>,
        claim_ahead: &mut Duration,
        rounds: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) -> Step {
        if self.upstream.token_refused() {
            match self.wait_for_token(token_paused_since, shutdown).await {
                Step::Go => {}
                other => return other,
            }
        }
        // While the whole upstream asked for a pause, claim nothing: a
        // claim would only wait, and its lease could run out.
        let pause = self.upstream.pause_remaining();
        if !pause.is_zero() {
            return self
                .idle(pause.min(self.heartbeat.max_idle()), shutdown)
                .await;
        }
        // Claim only what can leave by the time the claim is written (a
        // request slot and the rate limiter's go first, the claim made as
        // long before as claims take lately, at most MAX_CLAIM_AHEAD), so
        // every request carries the tasks most due when it leaves (a task
        // a callback hurried among them), not those most due when an
        // earlier claim queued it behind the rate limiter.
        let (wait, ready) = self.upstream.ready(*claim_ahead);
        if !wait.is_zero() {
            return self
                .idle(wait.min(self.heartbeat.max_idle()), shutdown)
                .await;
        }
        let slot = tokio::select! {
            s = self.upstream.slot() => s,
            _ = shutdown.cancelled() => return Step::Stop,
        };
        // Only batches that have a slot now: one waiting for a request in
        // flight to end would hold its tasks (and any hinted among them)
        // out of the next claim.
        let requests = ready.min(1 + self.upstream.free_slots());
        let cfg = self.config.borrow().clone();
        let now = self.clock.now_ms();
        let paused = self.upstream.paused_services();
        let started = std::time::Instant::now();
        let claimed = self.claim(&cfg, now, &paused, requests).await;
        *claim_ahead = ((*claim_ahead * 4 + started.elapsed()) / 5).min(MAX_CLAIM_AHEAD);
        let Some((claim, lease)) = claimed else {
            return self.idle(Duration::from_secs(1), shutdown).await;
        };
        if claim.tasks.is_empty() {
            drop(slot);
            let unpause = paused.iter().map(|(_, d)| *d).min();
            let sleep = match claim.next_due {
                Some(due) => Duration::from_millis((due - now).max(1) as u64),
                None => self.heartbeat.max_idle(),
            }
            .min(unpause.unwrap_or(Duration::MAX))
            .min(self.heartbeat.max_idle());
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => return Step::Stop,
            }
            return Step::Go;
        }
        self.start_rounds(&cfg, claim, lease, slot, rounds, shutdown)
            .await
    }

    /// While the upstream refuses the token: nothing is claimed; the token
    /// is tried again every `upstream.token_retry`, or at once when a
    /// reload brings a new one. `Go` means: try polling now.
    async fn wait_for_token(
        &mut self,
        paused_since: &mut Option<std::time::Instant>,
        shutdown: &CancellationToken,
    ) -> Step {
        let retry = self.config.borrow().upstream.token_retry;
        if paused_since.is_none() {
            tracing::error!(
                retry_every = ?retry,
                "polling paused: the upstream refuses the token (401 invalid_token); \
                 every task stays queued. Fix upstream.token and send SIGHUP (or restart); \
                 the token is tried again meanwhile"
            );
        }
        let since = *paused_since.get_or_insert_with(std::time::Instant::now);
        let left = retry.saturating_sub(since.elapsed());
        tokio::select! {
            _ = self.config.changed() => {}
            _ = tokio::time::sleep(left.min(self.heartbeat.max_idle())) => {
                if since.elapsed() < retry {
                    return Step::Again;
                }
            }
            _ = shutdown.cancelled() => return Step::Stop,
        }
        *paused_since = None;
        if self.upstream.token_refused() {
            // Probe with one batch; its answer decides whether to resume.
            self.upstream
                .set_token(self.config.borrow().upstream.token.clone());
        }
        Step::Go
    }

    /// Leases one service's due tasks for `requests` requests (those due
    /// within the coalescing window too, so batches fill), with the lease
    /// they were taken until. `None` when the store refused.
    async fn claim(
        &self,
        cfg: &Config,
        now: crate::clock::Millis,
        paused: &[(String, Duration)],
        requests: usize,
    ) -> Option<(crate::store::PollClaim, crate::clock::Millis)> {
        // One claim feeds every request that may leave now: claims go
        // through the store's single writer, so under load each carries
        // several batches.
        let window_end = now + ms(coalesce_window(cfg));
        let limits = claim_limits(cfg, &self.batches, paused, requests);
        // The lease covers pacing every request of the claim, then the
        // slowest answer, with room to spare.
        let lease = now
            + ms(self
                .upstream
                .time_for(cfg.upstream.max_concurrent_requests * 2))
            + ms(cfg.upstream.request_timeout * 2)
            + ms(self.lease_spare);
        let started = std::time::Instant::now();
        let claimed = self
            .store
            .claim_poll_batch(now, window_end, limits, lease)
            .await;
        self.metrics.store_call("claim_poll_batch", started);
        match claimed {
            Ok(c) => {
                self.metrics.claimed("tasks", c.tasks.len());
                Some((c, lease))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim tasks to poll; retrying in 1s");
                None
            }
        }
    }

    /// Splits a claim into batches and starts a round for each as request
    /// slots free up, the first in `slot`.
    async fn start_rounds(
        &self,
        cfg: &Arc<Config>,
        claim: crate::store::PollClaim,
        lease: crate::clock::Millis,
        slot: tokio::sync::OwnedSemaphorePermit,
        rounds: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) -> Step {
        let mut tasks = claim.tasks;
        let batch = batch_for(cfg, &self.batches, &claim.service);
        let mut first = Some(slot);
        while !tasks.is_empty() {
            let rest = tasks.split_off(batch.min(tasks.len()));
            let slot = match first.take() {
                Some(s) => s,
                // Free when the claim was made; only a shrinking share of
                // the budget makes this wait, for requests in flight (which
                // may sit out an upstream pause): alive, so it beats.
                None => loop {
                    tokio::select! {
                        p = self.upstream.slot() => break p,
                        _ = tokio::time::sleep(self.heartbeat.max_idle()) => self.heartbeat.beat(),
                        _ = shutdown.cancelled() => return Step::Stop,
                    }
                },
            };
            let round = Round {
                hand_off: self.hand_off,
                clock: self.clock.clone(),
                store: self.store.clone(),
                upstream: self.upstream.clone(),
                cfg: cfg.clone(),
                deliveries_ready: self.deliveries_ready.clone(),
                batches: self.batches.clone(),
                poller_wake: self.wake.clone(),
                metrics: self.metrics.clone(),
                handoff: self.handoff.clone(),
                pace: self.pace.clone(),
                lease,
                start_at: self.upstream.reserve(),
            };
            rounds.spawn(round.poll(claim.service.clone(), tasks, slot));
            tasks = rest;
        }
        Step::Go
    }

    /// Sleeps `d` unless shut down first.
    async fn idle(&self, d: Duration, shutdown: &CancellationToken) -> Step {
        tokio::select! {
            _ = tokio::time::sleep(d) => Step::Go,
            _ = shutdown.cancelled() => Step::Stop,
        }
    }

    /// Finishes as `task.expired` every task watched longer than
    /// `poll.task_ttl`, whatever keeps it from being polled (a refused
    /// token, a refused service, an upstream that keeps failing).
    async fn expire_overdue(&self, cfg: &Config) {
        let ttl = ms(cfg.poll.task_ttl);
        loop {
            let now = self.clock.now_ms();
            let lease = now + 60_000;
            let tasks = match self
                .store
                .claim_expired(now, now - ttl, EXPIRY_BATCH, lease)
                .await
            {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for expired tasks; will try again");
                    return;
                }
            };
            let full = tasks.len() == EXPIRY_BATCH;
            if tasks.is_empty() {
                return;
            }
            let updates: Vec<PollUpdate> = tasks
                .iter()
                .map(|t| {
                    tracing::info!(task_id = %t.id, service = %t.service, outcome = "expired", "task finished");
                    self.metrics.task_finished("expired");
                    finish_update(cfg, t, Outcome::Expired, "expired".into(), None, now)
                })
                .collect();
            let handoff = cfg.delivery.lease_until(now);
            match self.store.record_polls(now, updates, Some(handoff)).await {
                Ok(handed) if !handed.is_empty() => {
                    let _ = self.handoff.send(handed);
                    self.deliveries_ready.notify_one();
                }
                Ok(_) => self.deliveries_ready.notify_one(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record expired tasks; will try again");
                    return;
                }
            }
            if !full {
                return;
            }
        }
    }
}

/// A claim is made at most this long before its requests may leave, however
/// slow claims are lately: a task a callback hurried meanwhile waits at most
/// this long behind it.
const MAX_CLAIM_AHEAD: Duration = Duration::from_millis(50);
/// How often tasks past `poll.task_ttl` are looked for.
const EXPIRY_SWEEP_EVERY: Duration = Duration::from_secs(5);
/// A poll claim's lease beyond pacing and the slowest answer: the time a
/// round has to write its results, store hiccups included.
pub const LEASE_SPARE: Duration = Duration::from_secs(30);
/// Tasks expired per statement.
const EXPIRY_BATCH: usize = 500;
