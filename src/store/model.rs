//! The values that cross the store's traits: tasks and deliveries going
//! in, claims coming out, and the views the API shows.
//!
//! May call: `clock`, `outcome`.

use std::sync::Arc;

use serde::Serialize;

use crate::clock::{Millis, ser_opt_time, ser_time};
use crate::outcome::Outcome;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema, Default)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
    /// The webhook's name (configured) or redacted URL, for the attempt log
    /// (which records the delivery's stored name, the same).
    pub webhook: String,
    /// This attempt's number (1-based; the log records the delivery's
    /// count, the same).
    pub attempt: u32,
    /// How long the attempt took, in milliseconds (`None` when no request
    /// was made: parked, blocked).
    pub latency_ms: Option<i64>,
    /// The first KiB of the receiver's answer, as text.
    pub answer: Option<String>,
}

/// The lifecycle of a watched task, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Watching,
    Delivering,
    Done,
}

impl TaskStatus {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "watching" => Self::Watching,
            "delivering" => Self::Delivering,
            "done" => Self::Done,
            _ => return None,
        })
    }
}

/// The lifecycle of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
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
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<Millis>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Millis,
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Millis,
}

/// One task as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
pub struct TaskView {
    pub id: String,
    pub service: String,
    pub status: TaskStatus,
    pub upstream_state: Option<String>,
    pub outcome: Option<String>,
    pub polls: u32,
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub enqueued_at: Millis,
    #[serde(serialize_with = "ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_poll_at: Option<Millis>,
    #[serde(serialize_with = "ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Millis>,
    pub event_id: Option<String>,
    pub metadata: Option<serde_json::Value>,
    /// Per-task webhook URLs, secrets redacted.
    pub webhooks: Vec<String>,
    /// The event body as signed and sent, while it is kept.
    pub event: Option<serde_json::Value>,
    /// The same body, byte for byte as it was signed (for the console).
    #[serde(skip)]
    pub event_body: Option<String>,
    pub deliveries: Vec<DeliveryView>,
    /// Every attempt of its deliveries, oldest first (while kept).
    pub attempts: Vec<AttemptView>,
}

/// One delivery attempt as it is logged: kept until purged by age, shown
/// on a task's page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
pub struct AttemptView {
    pub delivery_id: i64,
    pub webhook: String,
    pub attempt: u32,
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Millis,
    pub status: Option<u16>,
    pub latency_ms: Option<i64>,
    pub error: Option<String>,
    /// The first KiB of the receiver's answer.
    pub answer: Option<String>,
    /// What the attempt led to: delivered, retry, failed (dead letter),
    /// gone, webhook_removed.
    pub verdict: String,
}

/// Which tasks a listing shows, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskFilter {
    pub service: Option<String>,
    pub status: Option<TaskStatus>,
    /// `succeeded`, `failed`, `not_found` or `expired`.
    pub outcome: Option<String>,
    /// IDs that start with this.
    pub id_prefix: Option<String>,
    /// Only tasks listed after this one (its `(enqueued_at, id)`): the
    /// next page.
    pub after: Option<(Millis, String)>,
    pub limit: usize,
}

/// Which dead letters (or parked deliveries) a bulk replay takes.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayFilter {
    /// `Failed` (dead letters) or `WebhookRemoved` (parked).
    pub state: DeliveryState,
    pub webhook: Option<String>,
    /// An event type, e.g. `task.failed`.
    pub event_type: Option<String>,
    /// Settled (dead-lettered or parked) at or after this.
    pub since: Option<Millis>,
    /// Settled before this.
    pub until: Option<Millis>,
}

impl ReplayFilter {
    /// Every dead letter.
    pub fn dead_letters() -> ReplayFilter {
        ReplayFilter {
            state: DeliveryState::Failed,
            webhook: None,
            event_type: None,
            since: None,
            until: None,
        }
    }
}

/// What happened since a moment, for the console's overview.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq, Default)]
pub struct Activity {
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub since: Millis,
    /// Tasks enqueued since then.
    pub enqueued: u64,
    /// Deliveries delivered since then.
    pub delivered: u64,
    /// Attempts that failed since then (retried or dead-lettered).
    pub failed_attempts: u64,
    pub webhooks: Vec<WebhookHealth>,
}

/// One webhook's recent health, from the attempt log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq, Default)]
pub struct WebhookHealth {
    pub webhook: String,
    pub attempts: u64,
    pub delivered: u64,
    /// Latency of the attempts that made a request (a timeout counts with
    /// its time), in milliseconds: nearest-rank percentiles.
    pub p50_ms: Option<i64>,
    pub p95_ms: Option<i64>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_error_at: Option<Millis>,
    /// Deliveries of it leased now (in flight, across every daemon).
    pub in_flight: u64,
}

/// How long one service's tasks take, learned from those that finished:
/// a streaming estimate of quantiles of (finished_at - enqueued_at); see
/// [`durations`](super::durations) for the estimator and its accuracy.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq, Default)]
pub struct DurationModel {
    pub service: String,
    /// Tasks observed.
    pub count: u64,
    /// Estimated quantiles of the duration, in milliseconds: p10, p50, p90.
    pub p10_ms: i64,
    pub p50_ms: i64,
    pub p90_ms: i64,
    #[serde(serialize_with = "ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Millis,
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

/// One task as a store keeps it, for copying it into another store
/// (`taskhook store copy`): every field but the lease, since a copy starts
/// unleased. Metadata and per-task webhook URLs are as enqueued (not
/// redacted).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub id: String,
    pub service: String,
    pub status: TaskStatus,
    pub enqueued_at: Millis,
    pub next_poll_at: Millis,
    pub polls: u32,
    pub misses: u32,
    pub fail_seen: u32,
    pub upstream_state: Option<String>,
    pub outcome: Option<String>,
    pub event_id: Option<String>,
    pub finished_at: Option<Millis>,
    pub done_at: Option<Millis>,
    /// The enqueue `metadata` object as JSON text, byte for byte.
    pub metadata: Option<String>,
    pub webhooks: Vec<String>,
}

/// One event as a store keeps it, with every delivery of it, for copying
/// into another store. The event's ID (its `webhook-id`) and body travel
/// unchanged, so a receiver that already has the event recognises it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: String,
    pub task_id: String,
    /// `task.succeeded`, `task.failed`, ...
    pub event_type: String,
    /// The body exactly as it is signed and sent.
    pub body: String,
    pub created_at: Millis,
    pub deliveries: Vec<DeliveryRecord>,
}

/// One delivery of an [`EventRecord`]: everything but its ID (the store it
/// is copied into numbers it afresh) and its lease (a copy starts
/// unleased).
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    pub webhook: String,
    pub kind: DeliveryKind,
    /// Where a per-task delivery goes (not redacted).
    pub url: String,
    pub state: DeliveryState,
    pub attempts: u32,
    pub next_attempt_at: Millis,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub task_enqueued_at: Millis,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// One service's learned durations as stored (see
/// [`durations`](super::durations)), for copying into another store.
#[derive(Debug, Clone, PartialEq)]
pub struct DurationRecord {
    pub service: String,
    /// Durations taken, ever.
    pub observed: u64,
    /// The histogram's counts, as `Histogram::to_stored` writes them.
    pub buckets: Vec<i64>,
    pub updated_at: Millis,
}

/// What one import call did: rows written, and rows left alone because
/// the store had them already (by task ID, event ID or service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Imported {
    pub copied: u64,
    pub duplicates: u64,
    /// Deliveries written with the events copied (0 for tasks and
    /// durations).
    pub deliveries: u64,
}

impl std::ops::AddAssign for Imported {
    fn add_assign(&mut self, other: Imported) {
        self.copied += other.copied;
        self.duplicates += other.duplicates;
        self.deliveries += other.deliveries;
    }
}
