//! The values that cross the store's traits: tasks and deliveries going
//! in, claims coming out, and the views the API shows.

use std::sync::Arc;

use serde::Serialize;

use crate::clock::{Millis, ser_opt_time, ser_time};
use crate::poll::terminal::Outcome;

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
