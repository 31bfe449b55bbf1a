//! The poller: leases due tasks in batches of one service, asks the upstream
//! about them with one `retrieve_batch`, applies the terminal rule, and
//! records the whole round (reschedules, finished tasks' events and their
//! deliveries) in one transaction.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::{ClaimedTask, Millis, NewDelivery, NewEvent, PollUpdate, Store, now_ms};
use crate::terminal::{Outcome, Verdict, assess};
use crate::upstream::{Record, UpstreamClient, UpstreamError};
use crate::webhook;

/// Runs the poll loop until cancelled.
pub struct Poller {
    /// Where finished tasks' new deliveries go, already leased.
    pub handoff: tokio::sync::mpsc::UnboundedSender<Vec<crate::store::ClaimedDelivery>>,
    pub heartbeat: crate::daemon::Heartbeat,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// IDs per request in force: `upstream.batch_size`, halved whenever the
    /// upstream refuses a batch with 400, growing back by one per success up
    /// to just below the size that was refused.
    pub batch: Arc<BatchSize>,
    pub store: Arc<dyn Store>,
    pub upstream: Arc<UpstreamClient>,
    pub config: watch::Receiver<Arc<Config>>,
    /// Woken by enqueue, so a new task's first poll is planned at once.
    pub wake: Arc<Notify>,
    /// Woken when a round produced events, so delivery starts at once.
    pub deliveries_ready: Arc<Notify>,
}

/// The adaptive batch size shared by the poll loop and its rounds.
#[derive(Debug)]
pub struct BatchSize {
    state: Mutex<BatchState>,
}

/// The batch size in force and its ceiling.
#[derive(Debug)]
struct BatchState {
    current: usize,
    /// Below the smallest size refused lately; forgotten after [`CEILING_MEMORY`].
    ceiling: usize,
    refused_at: Option<std::time::Instant>,
}

/// How long a refused batch size is remembered. A 400 may come from one
/// bad ID rather than the size, so the ceiling must not last for ever.
const CEILING_MEMORY: Duration = Duration::from_secs(600);

impl BatchSize {
    pub fn new() -> Self {
        BatchSize {
            state: Mutex::new(BatchState {
                current: usize::MAX,
                ceiling: usize::MAX,
                refused_at: None,
            }),
        }
    }
    /// The size to use now, at most `configured`.
    pub fn get(&self, configured: usize) -> usize {
        let s = self.state.lock().expect("batch lock");
        s.current.min(configured).max(1)
    }
    /// A batch of `n` was refused: halve, and stay below `n` for a while.
    pub fn refused(&self, n: usize) -> usize {
        let mut s = self.state.lock().expect("batch lock");
        s.ceiling = s.ceiling.min(n.saturating_sub(1)).max(1);
        s.current = (n / 2).max(1);
        s.refused_at = Some(std::time::Instant::now());
        s.current
    }
    pub fn succeeded(&self) {
        let mut s = self.state.lock().expect("batch lock");
        if s.refused_at.is_some_and(|at| at.elapsed() > CEILING_MEMORY) {
            s.ceiling = usize::MAX;
            s.refused_at = None;
        }
        s.current = s.current.saturating_add(1).min(s.ceiling);
    }
}

impl Default for BatchSize {
    fn default() -> Self {
        Self::new()
    }
}

fn ms(d: Duration) -> Millis {
    d.as_millis().min(i64::MAX as u128) as Millis
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
        'run: loop {
            self.heartbeat.beat();
            while batches.try_join_next().is_some() {}
            if self.upstream.token_refused() {
                if paused_since.is_none() {
                    tracing::error!(
                        "polling paused: the upstream refuses the token (401 invalid_token); \
                         every task stays queued. Fix upstream.token and send SIGHUP (or restart); \
                         the token is tried again every minute meanwhile"
                    );
                }
                let since = *paused_since.get_or_insert_with(std::time::Instant::now);
                tokio::select! {
                    _ = self.config.changed() => {}
                    _ = tokio::time::sleep(self.heartbeat.max_idle()) => {
                        if since.elapsed() < TOKEN_PROBE_EVERY {
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
            // Claim first, then wait for request slots: the claim's commit
            // overlaps with requests in flight. At most one claim's batches
            // wait here; their lease covers the wait.
            let cfg = self.config.borrow().clone();
            let now = now_ms();
            let lease = now + ms(cfg.upstream.request_timeout * 2) + 30_000;
            let window_end = now + ms(coalesce_window(&cfg));
            // One claim feeds every request slot: claims go through the
            // store's single writer, so each one must carry a lot.
            let batch = self.batch.get(cfg.upstream.batch_size);
            let limit = batch * cfg.upstream.max_concurrent_requests;
            let claim = match self
                .store
                .claim_poll_batch(now, window_end, limit, lease)
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
                let sleep = match claim.next_due {
                    Some(due) => Duration::from_millis((due - now).max(1) as u64),
                    None => self.heartbeat.max_idle(),
                }
                .min(self.heartbeat.max_idle());
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = self.wake.notified() => {}
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let mut tasks = claim.tasks;
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
                    batch: self.batch.clone(),
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
}

/// How often a paused poller (token refused) tries the token again.
const TOKEN_PROBE_EVERY: Duration = Duration::from_secs(60);

/// One batch: request, decide, record.
struct Round {
    store: Arc<dyn Store>,
    upstream: Arc<UpstreamClient>,
    cfg: Arc<Config>,
    deliveries_ready: Arc<Notify>,
    batch: Arc<BatchSize>,
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
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        self.upstream.pace().await;
        let result = self.upstream.retrieve_batch(&service, &ids).await;
        drop(slot);
        let now = now_ms();
        let retry_at = |t: &ClaimedTask, at: Millis| PollUpdate::Reschedule {
            id: t.id.clone(),
            claim: t.claim,
            next_poll_at: at,
            polled: false,
            misses: t.misses,
            fail_seen: t.fail_seen,
            upstream_state: None,
        };
        let updates: Vec<PollUpdate> = match &result {
            Ok(answer) => {
                self.batch.succeeded();
                tracing::debug!(
                    service,
                    ids = ids.len(),
                    answered = answer.records.len(),
                    "polled a batch"
                );
                // An item we could not read may be any of the absent IDs:
                // this answer then counts no misses.
                let complete = answer.unattributed == 0;
                if !complete {
                    tracing::warn!(
                        service,
                        items = answer.unattributed,
                        "upstream items without a readable id were skipped; retrying their tasks"
                    );
                }
                tasks
                    .iter()
                    .map(|t| match answer.records.get(&t.id) {
                        None if !complete => retry_at(
                            t,
                            now + ms(self.cfg.poll.schedule().delay_after(t.polls.max(1))),
                        ),
                        record => decide(&self.cfg, t, record, now, rand::random()),
                    })
                    .collect()
            }
            Err(UpstreamError::BadRequest { code, message }) if tasks.len() > 1 => {
                let smaller = self.batch.refused(tasks.len());
                tracing::warn!(
                    service,
                    ids = tasks.len(),
                    code,
                    message,
                    next_batch = smaller,
                    "the upstream refused a batch (400); halving the batch size"
                );
                tasks.iter().map(|t| retry_at(t, now)).collect()
            }
            Err(UpstreamError::BadRequest { code, message }) => {
                let t = &tasks[0];
                let delay = self.cfg.poll.schedule().delay_after(t.polls.max(1));
                tracing::warn!(task_id = %t.id, service, code, message, retry_in = ?delay, "the upstream refused this task's poll (400); it stays queued");
                vec![retry_at(t, now + ms(delay))]
            }
            Err(e @ UpstreamError::Unauthorized { .. }) => {
                tracing::error!(service, ids = ids.len(), error = %e, "the upstream refuses the token; polling pauses, every task stays queued");
                tasks.iter().map(|t| retry_at(t, now)).collect()
            }
            Err(e) => {
                let wait = self
                    .upstream
                    .pause_remaining()
                    .max(self.upstream.config().backoff_initial);
                tracing::warn!(service, ids = ids.len(), error = %e, retry_in = ?wait, "batch poll failed; its tasks stay queued");
                tasks.iter().map(|t| retry_at(t, now + ms(wait))).collect()
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
                    .and_then(|r| r.value.get("finished_at"))
                    .and_then(serde_json::Value::as_f64);
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
}

static UNKNOWN_STATES: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn log_unknown_states(task_id: &str, words: &[String]) {
    let mut seen = UNKNOWN_STATES.lock().expect("unknown-state lock");
    let seen = seen.get_or_insert_with(HashSet::new);
    for w in words {
        if seen.insert(w.clone()) {
            tracing::warn!(task_id, state = %w, "unknown item state; treating it as running");
        }
    }
}

/// Decides what one poll means for one task. `r` is a uniform draw in [0, 1)
/// for jitter. Pure apart from logging unknown state words.
pub fn decide(
    cfg: &Config,
    task: &ClaimedTask,
    record: Option<&Record>,
    now: Millis,
    r: f64,
) -> PollUpdate {
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
        if misses >= poll.missing_grace {
            return finish(Outcome::NotFound, "not found".into(), None);
        }
        if expired {
            return finish(Outcome::Expired, "expired".into(), None);
        }
        return PollUpdate::Reschedule {
            id: task.id.clone(),
            claim: task.claim,
            next_poll_at: next,
            polled: true,
            misses,
            fail_seen: 0,
            upstream_state: Some("not found yet".into()),
        };
    };
    let a = assess(&record.value);
    if !a.unknown_states.is_empty() {
        log_unknown_states(&task.id, &a.unknown_states);
    }
    match a.verdict {
        Verdict::Finished(outcome) => finish(outcome, a.state, Some(record)),
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
                    upstream_state: Some(a.state),
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
            upstream_state: Some(a.state),
        },
    }
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
            url: w.url.to_string(),
        })
        .collect();
    for url in &task.webhooks {
        if !deliveries.iter().any(|d| &d.url == url) {
            deliveries.push(NewDelivery {
                webhook: url.clone(),
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
        let u = decide(&c, &t, Some(&hiccup), 1000, 0.5);
        let PollUpdate::Reschedule { fail_seen, .. } = u else {
            panic!("{u:?}")
        };
        assert_eq!(fail_seen, 1);
        t.fail_seen = fail_seen;
        let running = rec(json!({"id": "t1", "response": {"data": [{"state": "running"}]}}));
        let PollUpdate::Reschedule { fail_seen, .. } = decide(&c, &t, Some(&running), 2000, 0.5)
        else {
            panic!()
        };
        assert_eq!(fail_seen, 0);
        t.fail_seen = 0;
        let done = rec(
            json!({"id": "t1", "finished_at": 3.0, "response": {"data": [{"state": "succeeded"}]}}),
        );
        assert_eq!(
            outcome(&decide(&c, &t, Some(&done), 3000, 0.5)),
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
            outcome(&decide(&c, &t, Some(&fail), 1000, 0.5)),
            Some(Outcome::Failed)
        );
    }

    #[test]
    fn absence_becomes_not_found_after_the_grace() {
        let c = cfg();
        let mut t = task();
        t.misses = 1;
        assert!(outcome(&decide(&c, &t, None, 1000, 0.5)).is_none());
        t.misses = 2;
        assert_eq!(
            outcome(&decide(&c, &t, None, 1000, 0.5)),
            Some(Outcome::NotFound)
        );
    }

    #[test]
    fn old_tasks_expire() {
        let c = cfg();
        let t = task();
        let running = rec(json!({"id": "t1", "response": null}));
        let hour = 3_600_000;
        assert!(outcome(&decide(&c, &t, Some(&running), hour, 0.5)).is_none());
        assert_eq!(
            outcome(&decide(&c, &t, Some(&running), hour + 1, 0.5)),
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
        let PollUpdate::Finish { event, .. } = decide(&c, &t, Some(&done), 3000, 0.5) else {
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
        let PollUpdate::Finish { event, .. } = decide(&c, &t, Some(&failed), 3000, 0.5) else {
            panic!()
        };
        assert_eq!(event.deliveries.len(), 3);
    }

    #[test]
    fn refused_batches_halve_and_never_regrow_to_the_refused_size() {
        let b = BatchSize::new();
        assert_eq!(b.get(50), 50);
        assert_eq!(b.refused(50), 25);
        for _ in 0..100 {
            b.succeeded();
        }
        assert_eq!(b.get(50), 49);
        assert_eq!(b.refused(49), 24);
        assert_eq!(b.refused(2), 1);
        assert_eq!(b.get(50), 1);
        b.succeeded();
        assert_eq!(b.get(50), 1, "the ceiling is now 1");
    }

    #[test]
    fn running_tasks_back_off() {
        let c = cfg();
        let mut t = task();
        t.polls = 30;
        let running = rec(json!({"id": "t1", "response": {}}));
        let PollUpdate::Reschedule { next_poll_at, .. } = decide(&c, &t, Some(&running), 0, 0.0)
        else {
            panic!()
        };
        assert_eq!(next_poll_at, 60_000);
    }
}
