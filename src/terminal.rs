//! The terminal rule: decides from one upstream task record whether the task
//! has finished, and how. This is the only place that rule lives.
//!
//! The rule (product contract §2), in order:
//! 1. `finished_at` present → terminal. Succeeded when `response.success` is
//!    not false, there is no `response.error`, `data` is non-empty and no item
//!    is in a failure state; otherwise failed.
//! 2. No `finished_at`, but `response.success == false` with an `error` →
//!    a failure *sighting*; the poller calls it failed only after
//!    `failure_confirmations` consecutive sightings.
//! 3. No `finished_at`, `data` non-empty and every item in a terminal state →
//!    terminal; succeeded if all items succeeded, else failed.
//! 4. Anything else → still running. Unknown item states count as running
//!    and are reported so the caller can log each word once.

use serde_json::Value;

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

/// What one record says about its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Rules 1 and 3: the task has settled.
    Finished(Outcome),
    /// Rule 2: `success:false` with an error but no `finished_at`. Terminal
    /// only once seen on enough consecutive polls.
    FailureSighted,
    /// Rule 4: not finished yet.
    Running,
}

/// The verdict plus what an operator wants to see about the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub verdict: Verdict,
    /// A short human label for `upstream_state`, e.g. `running 45%`.
    pub state: String,
    /// Item state words this rule does not know (treated as running).
    pub unknown_states: Vec<String>,
}

/// What an item state word means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ItemState {
    Running,
    Succeeded,
    Failed,
    Unknown,
}

fn classify(word: &str) -> ItemState {
    match word {
        "pending" | "running" => ItemState::Running,
        "succeeded" | "complete" | "completed" => ItemState::Succeeded,
        "error" | "failed" => ItemState::Failed,
        _ => ItemState::Unknown,
    }
}

fn present(v: Option<&Value>) -> bool {
    !matches!(v, None | Some(Value::Null))
}

/// The items of `response.data`: an array's elements, or a lone object.
fn items(response: Option<&Value>) -> Vec<&Value> {
    match response.and_then(|r| r.get("data")) {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(o @ Value::Object(m)) if !m.is_empty() => vec![o],
        _ => Vec::new(),
    }
}

fn item_state(item: &Value) -> Option<&str> {
    item.get("state").and_then(Value::as_str)
}

fn progress_label(item: &Value) -> Option<String> {
    match item.get("progress")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(format!("{n}%")),
        _ => None,
    }
}

/// Applies the terminal rule to one upstream record.
pub fn assess(record: &Value) -> Assessment {
    let response = record.get("response").filter(|r| !r.is_null());
    let success_false = response.and_then(|r| r.get("success")) == Some(&Value::Bool(false));
    let has_error = present(response.and_then(|r| r.get("error")));
    let data = items(response);

    let mut unknown_states = Vec::new();
    let mut all_terminal = !data.is_empty();
    let mut any_failed = false;
    let mut all_succeeded = !data.is_empty();
    let mut running_label: Option<String> = None;
    for item in &data {
        let word = item_state(item);
        let class = word.map(classify).unwrap_or(ItemState::Running);
        if class == ItemState::Unknown {
            let w = word.unwrap_or_default().to_string();
            if !unknown_states.contains(&w) {
                unknown_states.push(w);
            }
        }
        match class {
            ItemState::Succeeded => {}
            ItemState::Failed => {
                any_failed = true;
                all_succeeded = false;
            }
            ItemState::Running | ItemState::Unknown => {
                all_terminal = false;
                all_succeeded = false;
                if running_label.is_none() {
                    // A blank state word would make an empty label.
                    let w = word.filter(|w| !w.trim().is_empty()).unwrap_or("running");
                    running_label = Some(match progress_label(item) {
                        Some(p) => format!("{w} {p}"),
                        None => w.to_string(),
                    });
                }
            }
        }
    }

    let (verdict, state) = if present(record.get("finished_at")) {
        let ok = !success_false && !has_error && !data.is_empty() && !any_failed;
        let outcome = if ok {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        };
        (Verdict::Finished(outcome), outcome.as_str().to_string())
    } else if success_false && has_error {
        (Verdict::FailureSighted, "failing".to_string())
    } else if all_terminal {
        let outcome = if all_succeeded {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        };
        (Verdict::Finished(outcome), outcome.as_str().to_string())
    } else {
        let label = running_label.unwrap_or_else(|| {
            if data.is_empty() {
                "pending".to_string()
            } else {
                "running".to_string()
            }
        });
        (Verdict::Running, label)
    };
    Assessment {
        verdict,
        state,
        unknown_states,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(record: Value) -> Verdict {
        assess(&record).verdict
    }
    const OK: Verdict = Verdict::Finished(Outcome::Succeeded);
    const FAILED: Verdict = Verdict::Finished(Outcome::Failed);

    #[test]
    fn every_record_shape_of_the_contract() {
        let item = |state: &str| json!({"id": "i", "state": state, "progress": "50%"});
        let table: Vec<(&str, Value, Verdict)> = vec![
            ("response missing", json!({"id": "t"}), Verdict::Running),
            (
                "response null",
                json!({"id": "t", "response": null}),
                Verdict::Running,
            ),
            (
                "response {}",
                json!({"id": "t", "response": {}}),
                Verdict::Running,
            ),
            (
                "ack only",
                json!({"id": "t", "response": {"success": true, "task_id": "t"}}),
                Verdict::Running,
            ),
            (
                "one pending item",
                json!({"response": {"data": [item("pending")]}}),
                Verdict::Running,
            ),
            (
                "succeeded beside running is not finished",
                json!({"response": {"data": [item("succeeded"), item("running")]}}),
                Verdict::Running,
            ),
            (
                "all items succeeded without finished_at",
                json!({"response": {"data": [item("succeeded"), item("complete")]}}),
                OK,
            ),
            (
                "all items terminal, one error, no finished_at",
                json!({"response": {"data": [item("succeeded"), item("error")]}}),
                FAILED,
            ),
            (
                "completed and failed words of other services",
                json!({"response": {"data": [item("completed"), item("failed")]}}),
                FAILED,
            ),
            (
                "finished with data",
                json!({"finished_at": 1767119785.589, "response": {"task_id": "t", "data": [item("succeeded")]}}),
                OK,
            ),
            (
                "finished with empty data is failed",
                json!({"finished_at": 1.0, "response": {"data": []}}),
                FAILED,
            ),
            (
                "finished with no response is failed",
                json!({"finished_at": 1.0}),
                FAILED,
            ),
            (
                "finished with success:false and error object",
                json!({"finished_at": 1.0, "response": {"success": false, "error": {"code": "api_error", "message": "x"}, "task_id": "t", "trace_id": "r"}}),
                FAILED,
            ),
            (
                "finished with a bare string error",
                json!({"finished_at": 1.0, "response": {"success": false, "error": "boom"}}),
                FAILED,
            ),
            (
                "finished with an item in error",
                json!({"finished_at": 1.0, "response": {"data": [item("succeeded"), item("error")]}}),
                FAILED,
            ),
            (
                "finished but error beside data",
                json!({"finished_at": 1.0, "response": {"error": "late", "data": [item("succeeded")]}}),
                FAILED,
            ),
            (
                "finished with unknown item state is still succeeded by rule 1",
                json!({"finished_at": 1.0, "response": {"data": [item("weird")]}}),
                OK,
            ),
            (
                "finished_at null is not finished",
                json!({"finished_at": null, "response": {"data": [item("running")]}}),
                Verdict::Running,
            ),
            (
                "success:false with error, no finished_at",
                json!({"response": {"success": false, "error": {"code": "c", "message": "m"}}}),
                Verdict::FailureSighted,
            ),
            (
                "success:false with string error, no finished_at",
                json!({"response": {"success": false, "error": "hiccup"}}),
                Verdict::FailureSighted,
            ),
            (
                "success:false without error is running",
                json!({"response": {"success": false}}),
                Verdict::Running,
            ),
            (
                "unknown state word is running",
                json!({"response": {"data": [item("queued_for_gpu")]}}),
                Verdict::Running,
            ),
            (
                "numeric progress",
                json!({"response": {"data": [{"state": "running", "progress": 42}]}}),
                Verdict::Running,
            ),
            (
                "item without state is running",
                json!({"response": {"data": [{"id": "x"}]}}),
                Verdict::Running,
            ),
            (
                "data as a single object",
                json!({"response": {"data": {"state": "succeeded"}}}),
                OK,
            ),
        ];
        for (name, record, want) in table {
            assert_eq!(v(record), want, "{name}");
        }
    }

    #[test]
    fn labels_and_unknown_words() {
        let a = assess(&json!({"response": {"data": [
            {"state": "succeeded"}, {"state": "running", "progress": 42}, {"state": "mystery"}, {"state": "mystery"}
        ]}}));
        assert_eq!(a.state, "running 42%");
        assert_eq!(a.unknown_states, vec!["mystery".to_string()]);
        assert_eq!(assess(&json!({"response": null})).state, "pending");
        assert_eq!(
            assess(&json!({"response": {"data": [{"state": "pending", "progress": "0%"}]}})).state,
            "pending 0%"
        );
    }

    #[test]
    fn outcome_words_round_trip() {
        for o in [
            Outcome::Succeeded,
            Outcome::Failed,
            Outcome::NotFound,
            Outcome::Expired,
        ] {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
            assert!(Outcome::EVENT_TYPES.contains(&o.event_type()));
        }
    }
}
