//! How a finished task ended: the four outcomes and the webhook event type
//! each one names. Every stage speaks of outcomes (the terminal rule
//! decides one, the store keeps it, fan-out names the event after it, the
//! configuration filters webhooks by it), so it sits below them all.
//!
//! May call: nothing of taskhook's.

/// How a finished task ended. Also names the webhook event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Succeeded,
    Failed,
    NotFound,
    Expired,
}

impl Outcome {
    /// The event type sent to webhooks, e.g. `task.succeeded`.
    pub fn event_type(self) -> &'static str {
        match self {
            Outcome::Succeeded => "task.succeeded",
            Outcome::Failed => "task.failed",
            Outcome::NotFound => "task.not_found",
            Outcome::Expired => "task.expired",
        }
    }

    /// The bare outcome word, as in the envelope's `data.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::NotFound => "not_found",
            Outcome::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "succeeded" => Outcome::Succeeded,
            "failed" => Outcome::Failed,
            "not_found" => Outcome::NotFound,
            "expired" => Outcome::Expired,
            _ => return None,
        })
    }

    /// Every event type, for validating `events` filters.
    pub const EVENT_TYPES: [&'static str; 4] = [
        "task.succeeded",
        "task.failed",
        "task.not_found",
        "task.expired",
    ];
}
