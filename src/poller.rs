//! The poller: leases due tasks in batches of one service, asks the upstream
//! about them with one `retrieve_batch`, applies the terminal rule, and
//! records the whole round (reschedules, finished tasks' events and their
//! deliveries) in one transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::{Millis, now_ms};
use crate::config::Config;
use crate::profile::Profile;
use crate::store::{
    ClaimLimits, ClaimedTask, DeliveryKind, NewDelivery, NewEvent, PollQueue, PollUpdate,
};
use crate::terminal::{Outcome, Verdict, assess};
use crate::upstream::{BatchAnswer, Record, UpstreamClient, UpstreamError};
use crate::webhook;

/// Runs the poll loop until cancelled.
pub struct Poller {
    /// Where finished tasks' new deliveries go, already leased.
    pub handoff: tokio::sync::mpsc::UnboundedSender<Vec<crate::store::ClaimedDelivery>>,
    pub heartbeat: crate::daemon::Heartbeat,
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
}

/// The batch size in force per service, shared by the poll loop and its
/// rounds: `upstream.batch_size` capped by the profile's `max_batch`;
/// halved when the upstream refuses a batch as too large, lowered to the
/// page it served when its answer says items were left out, then growing
/// back by one per success to just below the size that failed.
#[derive(Debug, Default)]
pub struct Batches {
    state: Mutex<HashMap<String, BatchState>>,
}

/// One service's batch size and its ceiling.
#[derive(Debug)]
struct BatchState {
    current: usize,
    /// Below the smallest size refused lately; forgotten after [`CEILING_MEMORY`].
    ceiling: usize,
    lowered_at: Option<std::time::Instant>,
}

impl Default for BatchState {
    fn default() -> Self {
        BatchState {
            current: usize::MAX,
            ceiling: usize::MAX,
            lowered_at: None,
        }
    }
}

/// How long a refused batch size is remembered. A 400 may come from one
/// bad ID rather than the size, so the ceiling must not last for ever.
const CEILING_MEMORY: Duration = Duration::from_secs(600);

impl Batches {
    pub fn new() -> Self {
        Self::default()
    }
    fn with<T>(&self, service: &str, f: impl FnOnce(&mut BatchState) -> T) -> T {
        let mut s = self.state.lock().expect("batch lock");
        f(s.entry(service.to_string()).or_default())
    }
    /// The size to use now for `service`, at most `configured`.
    pub fn get(&self, service: &str, configured: usize) -> usize {
        let s = self.state.lock().expect("batch lock");
        s.get(service)
            .map_or(configured, |b| b.current.min(configured))
            .max(1)
    }
    /// A batch of `n` was refused: halve, and stay below `n` for a while.
    pub fn refused(&self, service: &str, n: usize) -> usize {
        self.lower(service, n.saturating_sub(1), n / 2)
    }
    /// A batch of `n` came back with only `served` items and a total that
    /// says more exist: the service pages; stay at `served`.
    pub fn paged(&self, service: &str, served: usize) -> usize {
        self.lower(service, served, served)
    }
    fn lower(&self, service: &str, ceiling: usize, current: usize) -> usize {
        self.with(service, |s| {
            s.ceiling = s.ceiling.min(ceiling).max(1);
            s.current = current.clamp(1, s.ceiling);
            s.lowered_at = Some(std::time::Instant::now());
            s.current
        })
    }
    pub fn succeeded(&self, service: &str) {
        let mut all = self.state.lock().expect("batch lock");
        let Some(s) = all.get_mut(service) else {
            return;
        };
        if s.lowered_at.is_some_and(|at| at.elapsed() > CEILING_MEMORY) {
            all.remove(service);
            return;
        }
        s.current = s.current.saturating_add(1).min(s.ceiling);
    }
    /// Services whose batch size is lowered now.
    fn lowered(&self) -> Vec<String> {
        self.state
            .lock()
            .expect("batch lock")
            .keys()
            .cloned()
            .collect()
    }
}

fn ms(d: Duration) -> Millis {
    d.as_millis().min(i64::MAX as u128) as Millis
}

/// The IDs one request for `service` carries now.
fn batch_for(cfg: &Config, batches: &Batches, service: &str) -> usize {
    let profile = cfg.upstream.profiles.for_task(service);
    batches.get(service, cfg.upstream.batch_size.min(profile.max_batch))
}

/// How many tasks one claim takes: enough to fill every request slot with
/// a full batch of the claimed service; none of a service that must wait.
fn claim_limits(cfg: &Config, batches: &Batches, paused: &[(String, Duration)]) -> ClaimLimits {
    let slots = cfg.upstream.max_concurrent_requests;
    let mut limits = ClaimLimits::from(cfg.upstream.batch_size * slots);
    let services: Vec<String> = cfg
        .upstream
        .profiles
        .names()
        .map(str::to_string)
        .chain(batches.lowered())
        .collect();
    for s in services {
        let n = batch_for(cfg, batches, &s) * slots;
        if n != limits.default {
            limits.per_service.insert(s, n);
        }
    }
    for (s, _) in paused {
        limits.per_service.insert(s.clone(), 0);
    }
    limits
}

/// How far ahead of its due time a task may be polled to fill a batch.
pub fn coalesce_window(cfg: &Config) -> Duration {
    (cfg.poll.interval / 4).min(Duration::from_secs(2))
}

impl Poller {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(
            self.upstream.config().max_concurrent_requests,
        ));
        let mut batches = JoinSet::new();
        let mut paused_since: Option<std::time::Instant> = None;
        let mut last_sweep: Option<std::time::Instant> = None;
        'run: loop {
            self.heartbeat.beat();
            while batches.try_join_next().is_some() {}
            if last_sweep.is_none_or(|at| at.elapsed() >= EXPIRY_SWEEP_EVERY) {
                last_sweep = Some(std::time::Instant::now());
                let cfg = self.config.borrow().clone();
                self.expire_overdue(&cfg).await;
            }
            if self.upstream.token_refused() {
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
                            continue;
                        }
                    }
                    _ = shutdown.cancelled() => break,
                }
                paused_since = None;
                if self.upstream.token_refused() {
                    // Probe with one batch; its answer decides whether to resume.
                    self.upstream
                        .set_token(self.config.borrow().upstream.token.clone());
                }
            }
            // While the whole upstream asked for a pause, claim nothing: a
            // claim would only wait, and its lease could run out.
            let pause = self.upstream.pause_remaining();
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause.min(self.heartbeat.max_idle())) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
            // Claim first, then wait for request slots: the claim's commit
            // overlaps with requests in flight. At most one claim's batches
            // wait here; their lease covers the wait.
            let cfg = self.config.borrow().clone();
            let now = now_ms();
            let window_end = now + ms(coalesce_window(&cfg));
            // One claim feeds every request slot: claims go through the
            // store's single writer, so each one must carry a lot.
            let paused = self.upstream.paused_services();
            let limits = claim_limits(&cfg, &self.batches, &paused);
            // The lease covers pacing every request of the claim, then the
            // slowest answer, with room to spare.
            let lease = now
                + ms(self
                    .upstream
                    .time_for(cfg.upstream.max_concurrent_requests * 2))
                + ms(cfg.upstream.request_timeout * 2)
                + 30_000;
            let claim = match self
                .store
                .claim_poll_batch(now, window_end, limits, lease)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim tasks to poll; retrying in 1s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            };
            if claim.tasks.is_empty() {
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
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let mut tasks = claim.tasks;
            let batch = batch_for(&cfg, &self.batches, &claim.service);
            while !tasks.is_empty() {
                let rest = tasks.split_off(batch.min(tasks.len()));
                let slot = tokio::select! {
                    p = slots.clone().acquire_owned() => p.expect("never closed"),
                    _ = shutdown.cancelled() => break 'run,
                };
                let round = Round {
                    store: self.store.clone(),
                    upstream: self.upstream.clone(),
                    cfg: cfg.clone(),
                    deliveries_ready: self.deliveries_ready.clone(),
                    batches: self.batches.clone(),
                    poller_wake: self.wake.clone(),
                    metrics: self.metrics.clone(),
                    handoff: self.handoff.clone(),
                };
                batches.spawn(round.poll(claim.service.clone(), tasks, slot));
                tasks = rest;
            }
        }
        // Requests in flight may finish; their leases protect them if not.
        while batches.join_next().await.is_some() {}
    }

    /// Finishes as `task.expired` every task watched longer than
    /// `poll.task_ttl`, whatever keeps it from being polled (a refused
    /// token, a refused service, an upstream that keeps failing).
    async fn expire_overdue(&self, cfg: &Config) {
        let ttl = ms(cfg.poll.task_ttl);
        loop {
            let now = now_ms();
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
            let handoff = crate::dispatcher::delivery_lease(cfg, now);
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

/// How often tasks past `poll.task_ttl` are looked for.
const EXPIRY_SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Tasks expired per statement.
const EXPIRY_BATCH: usize = 500;

/// One batch: request, decide, record.
struct Round {
    store: Arc<dyn PollQueue>,
    upstream: Arc<UpstreamClient>,
    cfg: Arc<Config>,
    deliveries_ready: Arc<Notify>,
    batches: Arc<Batches>,
    metrics: Arc<crate::metrics::Metrics>,
    handoff: tokio::sync::mpsc::UnboundedSender<Vec<crate::store::ClaimedDelivery>>,
    /// The poll loop's wake-up: a round may make tasks due sooner than the
    /// loop planned to look (a failed batch is retried after the back-off).
    poller_wake: Arc<Notify>,
}

impl Round {
    /// Paces, sends, gives the request slot back as soon as the answer is
    /// in, then decides and records.
    async fn poll(
        self,
        service: String,
        tasks: Vec<ClaimedTask>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let profile = self.cfg.upstream.profiles.for_task(&service).clone();
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        self.upstream.pace().await;
        let result = self.upstream.retrieve(&service, &profile, &ids).await;
        drop(slot);
        let now = now_ms();
        let cfg = &self.cfg;
        let again = |at: Millis| -> Vec<PollUpdate> {
            tasks
                .iter()
                .map(|t| retry_or_expire(cfg, t, at, now))
                .collect()
        };
        let updates: Vec<PollUpdate> = match &result {
            Ok(answer) => self.decide_answer(&service, &tasks, answer, now),
            Err(e @ UpstreamError::TooLarge { .. }) if tasks.len() > 1 => {
                let smaller = self.batches.refused(&service, tasks.len());
                tracing::warn!(service, ids = tasks.len(), error = %e, next_batch = smaller, "the upstream refused a batch as too large; halving this service's batch size");
                again(now)
            }
            Err(e @ UpstreamError::TooLarge { .. }) => {
                let t = &tasks[0];
                let delay = cfg.poll.schedule().delay_after(t.polls.max(1));
                tracing::warn!(task_id = %t.id, service, error = %e, retry_in = ?delay, "the upstream refused this task's poll; it stays queued");
                again(now + ms(delay))
            }
            Err(UpstreamError::ServiceRefused { .. }) => {
                // Logged once by the client when the service turned broken.
                // The rest of its tasks wait too, off the claim's path.
                let until = now + ms(cfg.upstream.broken_service_retry);
                if let Err(e) = self.store.defer_service(service.clone(), until).await {
                    tracing::warn!(service, error = %e, "cannot defer a refused service's tasks");
                }
                again(until)
            }
            Err(e @ UpstreamError::Unauthorized { .. }) => {
                tracing::error!(service, ids = ids.len(), error = %e, "the upstream refuses the token; polling pauses, every task stays queued");
                again(now)
            }
            Err(e) => {
                let wait = self
                    .upstream
                    .pause_remaining()
                    .max(self.upstream.config().backoff_initial);
                tracing::warn!(service, ids = ids.len(), error = %e, retry_in = ?wait, "batch poll failed; its tasks stay queued");
                again(now + ms(wait))
            }
        };
        let finished = updates
            .iter()
            .filter(|u| matches!(u, PollUpdate::Finish { .. }))
            .count();
        for u in &updates {
            if let PollUpdate::Finish { id, outcome, .. } = u {
                tracing::info!(task_id = %id, service, outcome = outcome.as_str(), "task finished");
                self.metrics.task_finished(outcome.as_str());
                let finished_at = result
                    .as_ref()
                    .ok()
                    .and_then(|a| a.records.get(id))
                    .and_then(|r| finished_at_secs(profile.record(&r.value)));
                if let Some(at) = finished_at {
                    let lag = now as f64 / 1000.0 - at;
                    if lag >= 0.0 {
                        self.metrics.detection_lag.observe(lag);
                    }
                }
            }
        }
        let lease = crate::dispatcher::delivery_lease(&self.cfg, now);
        match self.store.record_polls(now, updates, Some(lease)).await {
            Ok(handed) => {
                if !handed.is_empty() {
                    // If the dispatcher is gone (shutdown), the leases are
                    // taken back at the next start: nothing is lost.
                    let _ = self.handoff.send(handed);
                }
            }
            Err(e) => {
                // The leases run out and these tasks are polled again: nothing lost.
                tracing::error!(error = %e, "cannot record a poll round; its tasks will be polled again");
                return;
            }
        }
        self.poller_wake.notify_one();
        if finished > 0 {
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
        tracing::debug!(
            service,
            ids = tasks.len(),
            answered = answer.records.len(),
            "polled a batch"
        );
        let complete = answer.complete();
        // Ask the absent ones again at once when a smaller batch can help.
        let mut again_now = false;
        if !complete {
            if answer.unattributed > 0 {
                tracing::warn!(
                    service,
                    items = answer.unattributed,
                    "upstream items without a readable id were skipped; retrying their tasks"
                );
            }
            let pages = answer.count.is_some_and(|c| c > answer.items as u64);
            if pages && answer.items < tasks.len() {
                let page = self.batches.paged(service, answer.items);
                tracing::warn!(
                    service,
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
        let later = |t: &ClaimedTask| now + ms(cfg.poll.schedule().delay_after(t.polls.max(1)));
        tasks
            .iter()
            .map(|t| match answer.records.get(&t.id) {
                // Its record is there but unreadable: only this task waits.
                None if answer.unreadable.contains(&t.id) => {
                    tracing::warn!(task_id = %t.id, service, "the upstream's record of this task is not valid JSON; asking again later");
                    retry_or_expire(cfg, t, later(t), now)
                }
                None if !complete => {
                    retry_or_expire(cfg, t, if again_now { now } else { later(t) }, now)
                }
                record => {
                    let (update, unknown) = decide(cfg, t, record, now, rand::random());
                    for w in unknown {
                        self.metrics.unknown_state(service, &w);
                    }
                    update
                }
            })
            .collect()
    }
}

/// A task the upstream did not answer for: asked again at `at`, unless it
/// has been watched longer than `poll.task_ttl` (then it expires now).
fn retry_or_expire(cfg: &Config, t: &ClaimedTask, at: Millis, now: Millis) -> PollUpdate {
    if now - t.enqueued_at > ms(cfg.poll.task_ttl) {
        return finish_update(cfg, t, Outcome::Expired, "expired".into(), None, now);
    }
    PollUpdate::Reschedule {
        id: t.id.clone(),
        claim: t.claim,
        next_poll_at: at,
        polled: false,
        misses: t.misses,
        fail_seen: t.fail_seen,
        upstream_state: None,
    }
}

/// A record's `finished_at` in unix seconds: a number, or an RFC 3339 /
/// ISO-8601 string.
pub fn finished_at_secs(record: &serde_json::Value) -> Option<f64> {
    match record.get("finished_at")? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => humantime::parse_rfc3339_weak(s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64()),
        _ => None,
    }
}

/// Decides what one poll means for one task, reading the record with its
/// service's profile. `r` is a uniform draw in [0, 1) for jitter. Returns
/// the update and the state words the profile does not know. Pure.
pub fn decide(
    cfg: &Config,
    task: &ClaimedTask,
    record: Option<&Record>,
    now: Millis,
    r: f64,
) -> (PollUpdate, Vec<String>) {
    let profile = cfg.upstream.profiles.for_task(&task.service);
    let (update, a) = decide_with(cfg, profile, task, record, now, r);
    (update, a.map(|a| a.unknown_states).unwrap_or_default())
}

/// [`decide`] under an explicit profile; also returns the assessment.
fn decide_with(
    cfg: &Config,
    profile: &Profile,
    task: &ClaimedTask,
    record: Option<&Record>,
    now: Millis,
    r: f64,
) -> (PollUpdate, Option<crate::terminal::Assessment>) {
    let poll = &cfg.poll;
    let schedule = poll.schedule();
    let polls = task.polls + 1;
    let next = now + ms(schedule.jittered_delay_after(polls, r));
    let expired = now - task.enqueued_at > ms(poll.task_ttl);
    let finish = |outcome: Outcome, state: String, record: Option<&Record>| {
        finish_update(cfg, task, outcome, state, record, now)
    };
    let Some(record) = record else {
        let misses = task.misses + 1;
        let update = if misses >= poll.missing_grace {
            finish(Outcome::NotFound, "not found".into(), None)
        } else if expired {
            finish(Outcome::Expired, "expired".into(), None)
        } else {
            PollUpdate::Reschedule {
                id: task.id.clone(),
                claim: task.claim,
                next_poll_at: next,
                polled: true,
                misses,
                fail_seen: 0,
                upstream_state: Some("not found yet".into()),
            }
        };
        return (update, None);
    };
    let a = assess(profile, &record.value);
    let update = match &a.verdict {
        Verdict::Finished(outcome) => finish(*outcome, a.state.clone(), Some(record)),
        Verdict::FailureSighted => {
            let seen = task.fail_seen + 1;
            if seen >= poll.failure_confirmations {
                finish(Outcome::Failed, "failed".into(), Some(record))
            } else if expired {
                finish(Outcome::Expired, "expired".into(), Some(record))
            } else {
                // Confirm soon rather than after a backed-off interval.
                PollUpdate::Reschedule {
                    id: task.id.clone(),
                    claim: task.claim,
                    next_poll_at: now + ms(schedule.interval),
                    polled: true,
                    misses: 0,
                    fail_seen: seen,
                    upstream_state: Some(a.state.clone()),
                }
            }
        }
        Verdict::Running if expired => finish(Outcome::Expired, "expired".into(), Some(record)),
        Verdict::Running => PollUpdate::Reschedule {
            id: task.id.clone(),
            claim: task.claim,
            next_poll_at: next,
            polled: true,
            misses: 0,
            fail_seen: 0,
            upstream_state: Some(a.state.clone()),
        },
    };
    (update, Some(a))
}

/// The event for a finished task, routed to every webhook that wants it.
fn finish_update(
    cfg: &Config,
    task: &ClaimedTask,
    outcome: Outcome,
    state: String,
    record: Option<&Record>,
    now: Millis,
) -> PollUpdate {
    let metadata = task
        .metadata
        .as_deref()
        .and_then(|m| serde_json::value::RawValue::from_string(m.to_string()).ok());
    let at = std::time::UNIX_EPOCH + Duration::from_millis(now.max(0) as u64);
    let body = webhook::envelope(
        outcome,
        at,
        &task.id,
        &task.service,
        metadata.as_deref(),
        record.map(|r| r.raw.as_ref()),
    );
    let mut deliveries: Vec<NewDelivery> = cfg
        .webhooks
        .iter()
        .filter(|w| w.wants(outcome))
        .map(|w| NewDelivery {
            webhook: w.name.clone(),
            kind: DeliveryKind::Webhook,
            url: w.url.to_string(),
        })
        .collect();
    for url in &task.webhooks {
        let taken = deliveries
            .iter()
            .any(|d| d.kind == DeliveryKind::TaskUrl && &d.url == url);
        if !taken {
            deliveries.push(NewDelivery {
                webhook: crate::redact::url(url),
                kind: DeliveryKind::TaskUrl,
                url: url.clone(),
            });
        }
    }
    PollUpdate::Finish {
        id: task.id.clone(),
        claim: task.claim,
        polled: record.is_some(),
        outcome,
        upstream_state: state,
        event: NewEvent {
            id: webhook::new_event_id(),
            body,
            deliveries,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> Config {
        Config::from_toml(
            "[poll]\nmissing_grace = 3\nfailure_confirmations = 2\ntask_ttl = \"1h\"\n\
             [[webhooks]]\nname = \"all\"\nurl = \"http://a.example/\"\n\
             [[webhooks]]\nname = \"failures\"\nurl = \"http://b.example/\"\nevents = [\"task.failed\"]",
        )
        .unwrap()
    }

    fn task() -> ClaimedTask {
        ClaimedTask {
            id: "t1".into(),
            service: "producer".into(),
            claim: 7,
            enqueued_at: 0,
            polls: 0,
            misses: 0,
            fail_seen: 0,
            metadata: Some(r#"{"job":1}"#.into()),
            webhooks: vec!["http://own.example/hook".into()],
        }
    }

    fn rec(v: serde_json::Value) -> Record {
        let text = v.to_string();
        Record {
            value: v,
            raw: serde_json::value::RawValue::from_string(text).unwrap(),
        }
    }

    fn d(c: &Config, t: &ClaimedTask, r: Option<&Record>, now: Millis, draw: f64) -> PollUpdate {
        decide(c, t, r, now, draw).0
    }

    fn outcome(u: &PollUpdate) -> Option<Outcome> {
        match u {
            PollUpdate::Finish { outcome, .. } => Some(*outcome),
            _ => None,
        }
    }

    #[test]
    fn a_single_failure_hiccup_then_success_is_succeeded() {
        let c = cfg();
        let mut t = task();
        let hiccup = rec(json!({"id": "t1", "response": {"success": false, "error": "blip"}}));
        let u = d(&c, &t, Some(&hiccup), 1000, 0.5);
        let PollUpdate::Reschedule { fail_seen, .. } = u else {
            panic!("{u:?}")
        };
        assert_eq!(fail_seen, 1);
        t.fail_seen = fail_seen;
        let running = rec(json!({"id": "t1", "response": {"data": [{"state": "running"}]}}));
        let PollUpdate::Reschedule { fail_seen, .. } = d(&c, &t, Some(&running), 2000, 0.5) else {
            panic!()
        };
        assert_eq!(fail_seen, 0);
        t.fail_seen = 0;
        let done = rec(
            json!({"id": "t1", "finished_at": 3.0, "response": {"data": [{"state": "succeeded"}]}}),
        );
        assert_eq!(
            outcome(&d(&c, &t, Some(&done), 3000, 0.5)),
            Some(Outcome::Succeeded)
        );
    }

    #[test]
    fn repeated_failure_sightings_confirm_failure() {
        let c = cfg();
        let mut t = task();
        t.fail_seen = 1;
        let fail = rec(
            json!({"id": "t1", "response": {"success": false, "error": {"code": "x", "message": "y"}}}),
        );
        assert_eq!(
            outcome(&d(&c, &t, Some(&fail), 1000, 0.5)),
            Some(Outcome::Failed)
        );
    }

    #[test]
    fn absence_becomes_not_found_after_the_grace() {
        let c = cfg();
        let mut t = task();
        t.misses = 1;
        assert!(outcome(&d(&c, &t, None, 1000, 0.5)).is_none());
        t.misses = 2;
        assert_eq!(
            outcome(&d(&c, &t, None, 1000, 0.5)),
            Some(Outcome::NotFound)
        );
    }

    #[test]
    fn old_tasks_expire() {
        let c = cfg();
        let t = task();
        let running = rec(json!({"id": "t1", "response": null}));
        let hour = 3_600_000;
        assert!(outcome(&d(&c, &t, Some(&running), hour, 0.5)).is_none());
        assert_eq!(
            outcome(&d(&c, &t, Some(&running), hour + 1, 0.5)),
            Some(Outcome::Expired)
        );
    }

    #[test]
    fn events_go_to_matching_webhooks_and_the_tasks_own() {
        let c = cfg();
        let t = task();
        let done = rec(
            json!({"id": "t1", "finished_at": 3.0, "response": {"data": [{"state": "succeeded"}]}}),
        );
        let PollUpdate::Finish { event, .. } = d(&c, &t, Some(&done), 3000, 0.5) else {
            panic!()
        };
        let names: Vec<_> = event
            .deliveries
            .iter()
            .map(|d| d.webhook.as_str())
            .collect();
        assert_eq!(names, vec!["all", "http://own.example/hook"]);
        assert!(event.body.contains(r#""metadata":{"job":1}"#));
        let failed = rec(
            json!({"id": "t1", "finished_at": 3.0, "response": {"success": false, "error": "x"}}),
        );
        let PollUpdate::Finish { event, .. } = d(&c, &t, Some(&failed), 3000, 0.5) else {
            panic!()
        };
        assert_eq!(event.deliveries.len(), 3);
    }

    #[test]
    fn refused_batches_halve_and_never_regrow_to_the_refused_size() {
        let b = Batches::new();
        assert_eq!(b.get("p", 50), 50);
        assert_eq!(b.refused("p", 50), 25);
        assert_eq!(b.get("other", 50), 50, "other services keep their size");
        for _ in 0..100 {
            b.succeeded("p");
        }
        assert_eq!(b.get("p", 50), 49);
        assert_eq!(b.refused("p", 49), 24);
        assert_eq!(b.refused("p", 2), 1);
        assert_eq!(b.get("p", 50), 1);
        b.succeeded("p");
        assert_eq!(b.get("p", 50), 1, "the ceiling is now 1");
        assert_eq!(b.paged("q", 12), 12);
        b.succeeded("q");
        assert_eq!(b.get("q", 50), 12, "a paging service stays at its page");
    }

    #[test]
    fn claim_limits_follow_each_service_s_batch() {
        let c = cfg();
        let b = Batches::new();
        let l = claim_limits(&c, &b, &[]);
        assert_eq!(l.default, 50 * 4);
        assert_eq!(l.of("producer"), 200);
        assert_eq!(l.of("captcha"), 4, "one task per request");
        b.paged("openai", 12);
        assert_eq!(claim_limits(&c, &b, &[]).of("openai"), 48);
        let paused = [("kling".to_string(), Duration::from_secs(5))];
        assert_eq!(
            claim_limits(&c, &b, &paused).of("kling"),
            0,
            "a refused service waits"
        );
    }

    #[test]
    fn unknown_words_are_reported_with_the_update() {
        let c = cfg();
        let t = task();
        let r = rec(json!({"id": "t1", "response": {"data": [{"state": "Thinking"}]}}));
        let (u, unknown) = decide(&c, &t, Some(&r), 0, 0.5);
        assert!(outcome(&u).is_none());
        assert_eq!(unknown, vec!["thinking".to_string()]);
    }

    #[test]
    fn iso_8601_finished_at_gives_a_detection_time() {
        let at = finished_at_secs(&json!({"finished_at": "2025-05-02T10:30:05.456Z"})).unwrap();
        assert!((at - 1_746_181_805.456).abs() < 1e-3, "{at}");
        assert_eq!(finished_at_secs(&json!({"finished_at": 12.5})), Some(12.5));
        assert_eq!(finished_at_secs(&json!({"finished_at": "soon"})), None);
    }

    #[test]
    fn running_tasks_back_off() {
        let c = cfg();
        let mut t = task();
        t.polls = 30;
        let running = rec(json!({"id": "t1", "response": {}}));
        let PollUpdate::Reschedule { next_poll_at, .. } = d(&c, &t, Some(&running), 0, 0.0) else {
            panic!()
        };
        assert_eq!(next_poll_at, 60_000);
    }
}
