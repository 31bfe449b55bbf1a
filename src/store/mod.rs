//! The durable queue. Every piece of state that must survive a crash lives
//! behind [`Store`]: watched tasks with their poll schedule, finished tasks'
//! events, and one delivery row per (event, webhook).
//!
//! Every method takes `now` (unix milliseconds) from the caller, so tests
//! control time. Claims hand out a fencing token (`claim`): a write that
//! carries a stale token is ignored, so a worker whose lease ran out can
//! never overwrite the work of the one that took over.

mod sqlite;

pub use sqlite::SqliteStore;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::terminal::Outcome;

/// Unix time in milliseconds.
pub type Millis = i64;

/// The wall clock in unix milliseconds.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Serializes unix milliseconds as an RFC 3339 timestamp.
pub fn ser_time<S: serde::Serializer>(t: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// [`ser_time`] for optional times (`null` when absent).
pub fn ser_opt_time<S: serde::Serializer>(t: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}

/// Unix milliseconds as RFC 3339 with milliseconds, e.g. `2026-01-01T00:00:00.000Z`.
pub fn rfc3339(t: Millis) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot take writes right now (disk full, read-only, locked).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store cannot be opened at all; the daemon must not start.
    #[error("{0}")]
    Fatal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A task handed in by the pipeline, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub id: String,
    pub service: String,
    /// Per-task webhook URLs, in addition to the configured webhooks.
    pub webhooks: Vec<String>,
    /// The enqueue `metadata` object as JSON text, echoed in the event.
    pub metadata: Option<String>,
}

/// What an enqueue did: IDs newly watched, and IDs already watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct EnqueueOutcome {
    pub accepted: usize,
    pub duplicates: usize,
}

/// A task leased to the poller.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedTask {
    pub id: String,
    pub service: String,
    pub claim: i64,
    pub enqueued_at: Millis,
    pub polls: u32,
    pub misses: u32,
    pub fail_seen: u32,
    pub metadata: Option<String>,
    pub webhooks: Vec<String>,
}

/// How many tasks one poll claim may take: per service where it differs
/// (a smaller page, a single-task profile, 0 for a service that must
/// wait), else the default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaimLimits {
    pub default: usize,
    pub per_service: std::collections::HashMap<String, usize>,
}

impl ClaimLimits {
    /// The limit for `service`'s tasks.
    /// 0 means: claim none of this service's tasks now.
    pub fn of(&self, service: &str) -> usize {
        self.per_service
            .get(service)
            .copied()
            .unwrap_or(self.default)
    }

    /// Services not to claim now.
    pub fn skipped(&self) -> Vec<String> {
        self.per_service
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(s, _)| s.clone())
            .collect()
    }
}

impl From<usize> for ClaimLimits {
    fn from(default: usize) -> Self {
        ClaimLimits {
            default,
            per_service: Default::default(),
        }
    }
}

/// One batch for the poller: tasks of a single service.
#[derive(Debug, Clone, Default)]
pub struct PollClaim {
    pub service: String,
    pub tasks: Vec<ClaimedTask>,
    /// When the earliest watched task is due, if nothing is due now.
    pub next_due: Option<Millis>,
}

/// What one poll did to one task.
#[derive(Debug, Clone, PartialEq)]
pub enum PollUpdate {
    /// Still running (or the request failed): poll again at `next_poll_at`.
    Reschedule {
        id: String,
        claim: i64,
        next_poll_at: Millis,
        /// Whether the upstream answered for this task (counts as a poll).
        polled: bool,
        misses: u32,
        fail_seen: u32,
        upstream_state: Option<String>,
    },
    /// Finished: record the event and its deliveries atomically.
    Finish {
        id: String,
        claim: i64,
        polled: bool,
        outcome: Outcome,
        upstream_state: String,
        event: NewEvent,
    },
}

/// A finished task's event and where it must go.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: String,
    pub body: String,
    pub deliveries: Vec<NewDelivery>,
}

/// Where a delivery goes: a configured webhook, looked up by name when it
/// is sent (its URL, secret and headers as configured then), or a URL a
/// task named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    Webhook,
    TaskUrl,
}

impl DeliveryKind {
    pub fn code(self) -> i64 {
        match self {
            DeliveryKind::Webhook => 0,
            DeliveryKind::TaskUrl => 1,
        }
    }
    pub fn from_code(c: i64) -> Self {
        if c == 1 {
            DeliveryKind::TaskUrl
        } else {
            DeliveryKind::Webhook
        }
    }
}

/// One receiver of an event: a configured webhook by name, or a per-task
/// URL (whose `webhook` is the URL with its secrets redacted).
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub webhook: String,
    pub kind: DeliveryKind,
    pub url: String,
}

/// A delivery leased to the dispatcher, with the event body to send.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub claim: i64,
    pub event_id: String,
    pub task_id: String,
    pub webhook: String,
    pub kind: DeliveryKind,
    pub url: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// When the task was enqueued, for the enqueue-to-delivered metric.
    pub enqueued_at: Millis,
    pub body: Arc<str>,
}

/// Deliveries leased to the dispatcher.
#[derive(Debug, Clone, Default)]
pub struct DeliveryClaim {
    pub deliveries: Vec<ClaimedDelivery>,
    /// When the earliest pending delivery is due.
    pub next_due: Option<Millis>,
}

/// How an attempt ended, as the store records it.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryVerdict {
    Delivered,
    Retry {
        at: Millis,
    },
    DeadLetter,
    Gone,
    /// Not sent: its webhook is no longer configured.
    WebhookRemoved,
}

/// The result of one attempt, to record.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryReport {
    pub id: i64,
    pub claim: i64,
    pub task_id: String,
    pub event_id: String,
    pub verdict: DeliveryVerdict,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// The lifecycle of a watched task, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Watching,
    Delivering,
    Done,
}

/// The lifecycle of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    /// Dead-lettered after the retry schedule ran out.
    Failed,
    /// The receiver answered 410: it wants no more of this event.
    Gone,
    /// Parked: its webhook left the configuration. Resumed when a webhook
    /// of that name is configured again; replayable like a dead letter.
    WebhookRemoved,
}

impl DeliveryState {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            "gone" => Self::Gone,
            "webhook_removed" => Self::WebhookRemoved,
            _ => return None,
        })
    }
    /// Every state's name, for error messages.
    pub const NAMES: &'static str = "pending, delivered, failed, gone, webhook_removed";
}

/// One delivery as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeliveryView {
    pub id: i64,
    pub event_id: String,
    pub task_id: String,
    pub event_type: String,
    pub webhook: String,
    pub kind: DeliveryKind,
    /// Secrets in it (userinfo, query values) are redacted.
    pub url: String,
    pub state: DeliveryState,
    pub attempts: u32,
    #[serde(serialize_with = "ser_opt_time")]
    pub next_attempt_at: Option<Millis>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "ser_time")]
    pub created_at: Millis,
    #[serde(serialize_with = "ser_time")]
    pub updated_at: Millis,
}

/// One task as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskView {
    pub id: String,
    pub service: String,
    pub status: TaskStatus,
    pub upstream_state: Option<String>,
    pub outcome: Option<String>,
    pub polls: u32,
    #[serde(serialize_with = "ser_time")]
    pub enqueued_at: Millis,
    #[serde(serialize_with = "ser_opt_time")]
    pub next_poll_at: Option<Millis>,
    #[serde(serialize_with = "ser_opt_time")]
    pub finished_at: Option<Millis>,
    pub event_id: Option<String>,
    pub metadata: Option<serde_json::Value>,
    /// Per-task webhook URLs, secrets redacted.
    pub webhooks: Vec<String>,
    /// The event body as signed and sent, while it is kept.
    pub event: Option<serde_json::Value>,
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct StoreStats {
    pub watching: u64,
    pub delivering: u64,
    pub done: u64,
    pub deliveries_pending: u64,
    pub dead_letters: u64,
    /// Deliveries parked because their webhook left the configuration.
    pub webhook_removed: u64,
    #[serde(serialize_with = "ser_opt_time")]
    pub oldest_watching_enqueued_at: Option<Millis>,
}

/// Rows removed per purge call and kind, so the writer is never held long.
pub const PURGE_CHUNK: usize = 5_000;

/// What one purge call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Purged {
    pub rows: u64,
    /// A chunk was full: more may be waiting.
    pub more: bool,
}

/// The durable queue. See the module docs for the rules every backend keeps.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores new tasks, first poll at `now + first_poll_after_ms`. Returns
    /// only after the commit. IDs already watched or delivering count as
    /// duplicates; a done ID is watched afresh.
    async fn enqueue(
        &self,
        now: Millis,
        first_poll_after_ms: Millis,
        tasks: Vec<NewTask>,
    ) -> StoreResult<EnqueueOutcome>;

    /// Leases tasks of one service, at most `limits.of(service)`: the service
    /// of the earliest due task, taking its tasks due by `window_end` (≥ now)
    /// so batches fill. Leased tasks are not handed out again before
    /// `lease_until`.
    async fn claim_poll_batch(
        &self,
        now: Millis,
        window_end: Millis,
        limits: ClaimLimits,
        lease_until: Millis,
    ) -> StoreResult<PollClaim>;

    /// Applies one poll round in one transaction; stale claims are ignored.
    /// With `handoff_lease`, the new deliveries are stored already leased
    /// until then (claim 1) and returned, so the caller can send them
    /// without claiming; otherwise they wait to be claimed and none are
    /// returned.
    async fn record_polls(
        &self,
        now: Millis,
        updates: Vec<PollUpdate>,
        handoff_lease: Option<Millis>,
    ) -> StoreResult<Vec<ClaimedDelivery>>;

    /// Gives back leased deliveries (id, claim) unsent: due `now`, for any
    /// worker to claim. Stale claims are ignored.
    async fn release_deliveries(&self, now: Millis, leases: Vec<(i64, i64)>) -> StoreResult<()>;

    /// Leases up to `limit` due deliveries, skipping the webhooks in
    /// `exclude` (those already at their concurrency limit).
    async fn claim_deliveries(
        &self,
        now: Millis,
        limit: usize,
        lease_until: Millis,
        exclude: Vec<String>,
    ) -> StoreResult<DeliveryClaim>;

    /// Records attempt results in one transaction; a task whose deliveries
    /// are all settled becomes done. Stale claims are ignored.
    async fn record_deliveries(&self, now: Millis, reports: Vec<DeliveryReport>)
    -> StoreResult<()>;

    async fn get_task(&self, id: String) -> StoreResult<Option<TaskView>>;
    /// Stops watching: removes the task and its pending deliveries.
    async fn delete_task(&self, id: String) -> StoreResult<bool>;
    async fn stats(&self) -> StoreResult<StoreStats>;
    async fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryView>>;
    /// Makes a failed (dead-lettered) delivery pending again, due `now`.
    async fn replay_delivery(&self, now: Millis, id: i64) -> StoreResult<bool>;
    async fn replay_all_failed(&self, now: Millis) -> StoreResult<u64>;
    /// Makes deliveries parked because their webhook left the
    /// configuration pending again, for the webhooks in `names` (those
    /// configured now). Returns how many.
    async fn resume_parked(&self, now: Millis, names: Vec<String>) -> StoreResult<u64>;
    /// Leases up to `limit` watched tasks enqueued before `enqueued_before`
    /// (past their TTL), whatever their next poll, unless leased now.
    async fn claim_expired(
        &self,
        now: Millis,
        enqueued_before: Millis,
        limit: usize,
        lease_until: Millis,
    ) -> StoreResult<Vec<ClaimedTask>>;
    /// Pushes the next poll of `service`'s unleased tasks to `until` (at
    /// the latest): the upstream refuses that service for now.
    async fn defer_service(&self, service: String, until: Millis) -> StoreResult<u64>;
    /// Drops done tasks settled before `done_before` with their delivered
    /// deliveries, and dead letters (and parked deliveries) older than
    /// `dead_before`, at most [`PURGE_CHUNK`] of each. Returns the rows
    /// removed; call again while it says [`Purged::more`].
    async fn purge(&self, done_before: Millis, dead_before: Millis) -> StoreResult<Purged>;
    /// Proves the store takes writes (for readiness).
    async fn check_writable(&self, now: Millis) -> StoreResult<()>;
}
