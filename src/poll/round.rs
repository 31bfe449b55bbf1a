//! One poll round, in stages: request (paced, within the concurrency cap)
//! → decide (each task's next step) → persist (one write for the round) →
//! hand off (new deliveries to the dispatcher, already leased).
//!
//! May call: `poll::{upstream, decide, batches, pace, schedule}`, `profile`,
//! `outcome`, `store`, `metrics`, `config`, `clock`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::Instrument;

use crate::clock::{Millis, SharedClock};
use crate::config::Config;
use crate::outcome::Outcome;
use crate::poll::batches::Batches;
use crate::poll::decide::{decide, finished_at_secs, ms, retry_or_expire};
use crate::poll::pace::Pace;
use crate::poll::schedule::PollSchedule;
use crate::poll::upstream::{BatchAnswer, UpstreamClient, UpstreamError};
use crate::profile::Profile;
use crate::store::{ClaimedDelivery, ClaimedTask, PollQueue, PollUpdate};

/// One round: a batch of one service's tasks, what it needs to ask, decide
/// and record.
pub(super) struct Round {
    pub store: Arc<dyn PollQueue>,
    pub upstream: Arc<UpstreamClient>,
    pub cfg: Arc<Config>,
    pub clock: SharedClock,
    pub deliveries_ready: Arc<Notify>,
    pub batches: Arc<Batches>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub handoff: tokio::sync::mpsc::UnboundedSender<Vec<ClaimedDelivery>>,
    /// The poll loop's wake-up: a round may make tasks due sooner than the
    /// loop planned to look (a failed batch is retried after the back-off).
    pub poller_wake: Arc<Notify>,
    /// Store new deliveries leased to this daemon and hand them over.
    pub hand_off: bool,
    /// The poll interval in force; learns from the tasks that finish.
    pub pace: Arc<Pace>,
    /// The claim's lease. Past it the loop may claim these tasks again, so
    /// no request for them may start that could still be running then.
    pub lease: Millis,
    /// When the rate limiter lets this round's request start (reserved by
    /// the loop).
    pub start_at: std::time::Instant,
}

impl Round {
    /// Runs the round's stages in a span naming the service and the batch.
    pub async fn poll(
        self,
        service: String,
        tasks: Vec<ClaimedTask>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let span = tracing::info_span!("round", service = %service, ids = tasks.len());
        async move {
            let profile = self.cfg.upstream.profiles.for_task(&service).clone();
            let Some(answer) = self.request(&service, &profile, &tasks, slot).await else {
                self.give_back(&tasks).await;
                return;
            };
            let now = self.clock.now_ms();
            let updates = self.decide(&service, &tasks, &answer, now).await;
            let durations = self.observe(&profile, &tasks, &updates, &answer, now);
            self.persist(updates, now).await;
            self.learn(&service, durations, now).await;
        }
        .instrument(span)
        .await
    }

    /// Stage 1: waits for its start, sends, and gives the request slot
    /// back as soon as the answer is in. Sends nothing (`None`) when the
    /// wait for the rate limiter outlasted the claim's lease: a back-off
    /// that began after the claim (a 429's long `Retry-After`) may be
    /// longer than the lease, and by then the loop may have claimed these
    /// tasks again.
    async fn request(
        &self,
        service: &str,
        profile: &Profile,
        tasks: &[ClaimedTask],
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Option<Result<BatchAnswer, UpstreamError>> {
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        self.upstream.wait_for(self.start_at).await;
        if self.clock.now_ms() + ms(self.cfg.upstream.request_timeout) >= self.lease {
            return None;
        }
        let answer = self.upstream.retrieve(service, profile, &ids).await;
        drop(slot);
        Some(answer)
    }

    /// The claim's lease ran out before its request could go: the tasks go
    /// back to the queue unpolled, due when requests may flow again. (If
    /// the loop has claimed them again meanwhile, this write is stale and
    /// changes nothing.)
    async fn give_back(&self, tasks: &[ClaimedTask]) {
        let now = self.clock.now_ms();
        let due = now + ms(self.upstream.pause_remaining());
        tracing::warn!(
            "a back-off outlasted this batch's lease; its tasks go back to the queue unpolled"
        );
        let updates = tasks
            .iter()
            .map(|t| retry_or_expire(&self.cfg, t, due, now))
            .collect();
        self.persist(updates, now).await;
    }

    /// Stage 2: each task's next step. An answer is read task by task; a
    /// failed request asks again later, when and how its class says.
    async fn decide(
        &self,
        service: &str,
        tasks: &[ClaimedTask],
        answer: &Result<BatchAnswer, UpstreamError>,
        now: Millis,
    ) -> Vec<PollUpdate> {
        let cfg = &self.cfg;
        let again = |at: Millis| -> Vec<PollUpdate> {
            tasks
                .iter()
                .map(|t| retry_or_expire(cfg, t, at, now))
                .collect()
        };
        match answer {
            Ok(answer) => self.decide_answer(service, tasks, answer, now),
            Err(e @ UpstreamError::TooLarge { .. }) if tasks.len() > 1 => {
                let smaller = self.batches.refused(service, tasks.len());
                tracing::warn!(error = %e, next_batch = smaller, "the upstream refused a batch as too large; halving this service's batch size");
                again(now)
            }
            Err(e @ UpstreamError::TooLarge { .. }) => {
                let t = &tasks[0];
                let delay = PollSchedule::of(&cfg.poll).delay_after(t.polls.max(1));
                tracing::warn!(task_id = %t.id, error = %e, retry_in = ?delay, "the upstream refused this task's poll; it stays queued");
                again(now + ms(delay))
            }
            Err(UpstreamError::ServiceRefused { .. }) => {
                // Logged once by the client when the service turned broken.
                // The rest of its tasks wait too, off the claim's path.
                let until = now + ms(cfg.upstream.broken_service_retry);
                if let Err(e) = self.store.defer_service(service.to_string(), until).await {
                    tracing::warn!(error = %e, "cannot defer a refused service's tasks");
                }
                again(until)
            }
            Err(e @ UpstreamError::Unauthorized { .. }) => {
                tracing::error!(error = %e, "the upstream refuses the token; polling pauses, every task stays queued");
                again(now)
            }
            Err(e) => {
                let wait = self
                    .upstream
                    .pause_remaining()
                    .max(self.upstream.config().backoff_initial);
                tracing::warn!(error = %e, retry_in = ?wait, "batch poll failed; its tasks stay queued");
                again(now + ms(wait))
            }
        }
    }

    /// Logs and counts the tasks that finished and how late they were
    /// seen; returns how long those the upstream finished took since their
    /// enqueue (its `finished_at`, else now), to learn from.
    fn observe(
        &self,
        profile: &Profile,
        tasks: &[ClaimedTask],
        updates: &[PollUpdate],
        answer: &Result<BatchAnswer, UpstreamError>,
        now: Millis,
    ) -> Vec<i64> {
        let mut durations = Vec::new();
        for u in updates {
            let PollUpdate::Finish { id, outcome, .. } = u else {
                continue;
            };
            tracing::info!(task_id = %id, outcome = outcome.as_str(), "task finished");
            self.metrics.task_finished(outcome.as_str());
            let finished_at = answer
                .as_ref()
                .ok()
                .and_then(|a| a.records.get(id))
                .and_then(|r| finished_at_secs(profile.record(&r.value)));
            if let Some(lag) = finished_at.map(|at| now as f64 / 1000.0 - at)
                && lag >= 0.0
            {
                self.metrics.detection_lag.observe(lag);
            }
            if matches!(outcome, Outcome::Succeeded | Outcome::Failed)
                && let Some(t) = tasks.iter().find(|t| &t.id == id)
            {
                let at = finished_at.map_or(now, |s| (s * 1000.0) as Millis);
                durations.push(at - t.enqueued_at);
            }
        }
        durations
    }

    /// Folds the finished tasks' durations into the service's learned
    /// model, when first polls are learned.
    async fn learn(&self, service: &str, durations: Vec<i64>, now: Millis) {
        if durations.is_empty() || !self.cfg.poll.learn_first_poll {
            return;
        }
        match self
            .store
            .learn_durations(now, service.to_string(), durations)
            .await
        {
            Ok(model) => self.pace.learned(model),
            Err(e) => tracing::debug!(error = %e, "cannot record the finished tasks' durations"),
        }
    }

    /// Stages 3 and 4: the round in one write; the finished tasks' new
    /// deliveries handed to the dispatcher already leased. A store that
    /// cannot take the write for now (the database restarting, say) is
    /// asked again within the claim's spare lease time, so a short outage
    /// does not leave the round's tasks waiting for their leases to run
    /// out. Writing a round twice is harmless: a finish applies only to a
    /// task still watched under the same claim.
    async fn persist(&self, updates: Vec<PollUpdate>, now: Millis) {
        let finished = updates
            .iter()
            .any(|u| matches!(u, PollUpdate::Finish { .. }));
        let lease = self.hand_off.then(|| self.cfg.delivery.lease_until(now));
        let give_up = std::time::Instant::now() + super::LEASE_SPARE;
        let mut delay = Duration::from_millis(100);
        let recorded = loop {
            let started = std::time::Instant::now();
            let recorded = self.store.record_polls(now, updates.clone(), lease).await;
            self.metrics.store_call("record_polls", started);
            match recorded {
                Err(e) if e.is_transient() && std::time::Instant::now() + delay < give_up => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot record a poll round; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                recorded => break recorded,
            }
        };
        match recorded {
            Ok(handed) if !handed.is_empty() => {
                // If the dispatcher is gone (shutdown), the leases are taken
                // back at the next start: nothing is lost.
                let _ = self.handoff.send(handed);
            }
            Ok(_) => {}
            Err(e) => {
                // The leases run out and these tasks are polled again.
                tracing::error!(error = %e, "cannot record a poll round; its tasks will be polled again");
                return;
            }
        }
        self.poller_wake.notify_one();
        if finished {
            self.deliveries_ready.notify_one();
        }
    }

    /// What an answer means for each task of the batch. An answer whose
    /// total says items were left out counts no misses: its absent tasks
    /// are asked again, in smaller batches when the service pages.
    fn decide_answer(
        &self,
        service: &str,
        tasks: &[ClaimedTask],
        answer: &BatchAnswer,
        now: Millis,
    ) -> Vec<PollUpdate> {
        self.batches.succeeded(service);
        tracing::debug!(answered = answer.records.len(), "polled a batch");
        let complete = answer.complete();
        // Ask the absent ones again at once when a smaller batch can help.
        let mut again_now = false;
        if !complete {
            if answer.unattributed > 0 {
                tracing::warn!(
                    items = answer.unattributed,
                    "upstream items without a readable id were skipped; retrying their tasks"
                );
            }
            let pages = answer.count.is_some_and(|c| c > answer.items as u64);
            if pages && answer.items < tasks.len() {
                let page = self.batches.paged(service, answer.items);
                tracing::warn!(
                    asked = tasks.len(),
                    items = answer.items,
                    total = answer.count,
                    next_batch = page,
                    "the upstream left items out of its answer (it pages); asking again in smaller batches"
                );
                again_now = true;
            }
        }
        let cfg = &self.cfg;
        let spacing = self.pace.spacing(cfg);
        let schedule = PollSchedule::of(&cfg.poll);
        let later = |t: &ClaimedTask| now + ms(spacing.delay_after(&schedule, t.polls.max(1)));
        tasks
            .iter()
            .map(|t| match answer.records.get(&t.id) {
                // Its record is there but unreadable: only this task waits.
                None if answer.unreadable.contains(&t.id) => {
                    tracing::warn!(task_id = %t.id, "the upstream's record of this task is not valid JSON; asking again later");
                    retry_or_expire(cfg, t, later(t), now)
                }
                None if !complete => {
                    retry_or_expire(cfg, t, if again_now { now } else { later(t) }, now)
                }
                record => {
                    let (update, unknown) = decide(cfg, t, record, now, spacing, rand::random());
                    for w in unknown {
                        self.metrics.unknown_state(service, &w);
                    }
                    update
                }
            })
            .collect()
    }
}
