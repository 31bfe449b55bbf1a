//! The terminal rule: decides from one upstream task record, read through
//! its service's [`Profile`], whether the task has finished, and how. This
//! is the only place that rule lives.
//!
//! The rule (product contract §2), in order:
//! 1. A failure signal means failed: a failure word in the record's own
//!    state, `success: false` with an `error`, or a failed item once no item
//!    is still running. Without `finished_at` it is a *sighting*: the poller
//!    calls it failed only after `failure_confirmations` in a row.
//! 2. `finished_at` present (and not null): settled, succeeded unless a
//!    failure signal or `success: false` says otherwise. No `data` needed.
//! 3. No `finished_at`: settled (succeeded) only when the record's own state
//!    is a success word, or every item carries a success word (or, under
//!    `settle_without_finished_at = "result"`, a result URL instead of a
//!    word). One item succeeded beside one running is not finished.
//! 4. Anything else is still running. Unknown words count as running and
//!    are reported so the caller can log and count each one.
//!
//! May call: `outcome`, `profile`.

use serde_json::Value;

use crate::outcome::Outcome;

use crate::profile::{Profile, Settle, Word, has_result, response_of};

/// What one record says about its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The task has settled (rules 2 and 3).
    Finished(Outcome),
    /// A failure signal without `finished_at` (rule 1): terminal only once
    /// seen on `failure_confirmations` consecutive polls.
    FailureSighted,
    /// Not finished yet (rule 4).
    Running,
}

/// The verdict plus what an operator wants to see about the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub verdict: Verdict,
    /// A short human label for `upstream_state`, e.g. `running 45%`.
    pub state: String,
    /// State words the profile does not know (read as running), lower-cased.
    pub unknown_states: Vec<String>,
}

/// Where an item stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ItemState {
    Running,
    Succeeded,
    Failed,
}

fn present(v: Option<&Value>) -> bool {
    !matches!(v, None | Some(Value::Null))
}

/// An `error` that says something: not null, not an empty string or object.
fn error_present(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

fn progress_label(item: &Value) -> Option<String> {
    let p = ["progress", "percent"].iter().find_map(|k| item.get(*k))?;
    match p {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(format!("{n}%")),
        Value::Object(o) => match o.get("percent") {
            Some(Value::Number(n)) => Some(format!("{n}%")),
            _ => None,
        },
        _ => None,
    }
}

/// `word` with the item's progress, e.g. `running 45%`. Blank words read
/// as `running`.
fn label(word: Option<&str>, progress_from: &Value) -> String {
    let w = word
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .unwrap_or("running")
        .to_ascii_lowercase();
    match progress_label(progress_from) {
        Some(p) => format!("{w} {p}"),
        None => w,
    }
}

/// Applies the terminal rule to one record (as the upstream sent it) under
/// `profile`.
pub fn assess(profile: &Profile, answer: &Value) -> Assessment {
    let record = profile.record(answer);
    let mut unknown_states: Vec<String> = Vec::new();
    let mut note = |w: &str| {
        let w = w.trim().to_ascii_lowercase();
        if !unknown_states.contains(&w) {
            unknown_states.push(w);
        }
    };

    let finished = present(record.get("finished_at"));
    let body = response_of(record).filter(|r| r.is_object());
    let success_false = body.and_then(|b| b.get("success")) == Some(&Value::Bool(false));
    let has_error = error_present(body.and_then(|b| b.get("error")));

    let record_word = profile.record_word(record);
    let record_class = record_word.map(|w| profile.classify(w));
    if record_class == Some(Word::Unknown) {
        note(record_word.unwrap_or_default());
    }

    let items = profile.items(record);
    let settle = profile.settle_without_finished_at;
    let mut states = Vec::with_capacity(items.len());
    let mut running_label: Option<String> = None;
    for item in &items {
        let word = profile.item_word(item);
        let state = match word.map(|w| profile.classify(w)) {
            Some(Word::Success) => ItemState::Succeeded,
            Some(Word::Failure) => ItemState::Failed,
            Some(Word::Unknown) => {
                note(word.unwrap_or_default());
                ItemState::Running
            }
            Some(Word::Running) => ItemState::Running,
            None if settle == Settle::Result && has_result(item) => ItemState::Succeeded,
            None => ItemState::Running,
        };
        if state == ItemState::Running && running_label.is_none() {
            running_label = Some(label(word, item));
        }
        states.push(state);
    }
    let all_terminal = !states.is_empty() && !states.contains(&ItemState::Running);
    let item_failed = states.contains(&ItemState::Failed);

    // Rule 1: failure signals. An item's failure counts once no item is
    // still running (or the task says it finished).
    let failure = record_class == Some(Word::Failure)
        || (success_false && has_error)
        || (item_failed && (all_terminal || finished));

    let verdict = if finished {
        // Rule 2: settled; failed on any failure signal or success:false.
        Verdict::Finished(if failure || success_false {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        })
    } else if failure {
        Verdict::FailureSighted
    } else if settle == Settle::Never {
        Verdict::Running
    } else {
        // Rule 3: without finished_at, only every state word settles.
        match record_class {
            Some(Word::Success) => Verdict::Finished(Outcome::Succeeded),
            Some(_) => Verdict::Running,
            None if all_terminal => Verdict::Finished(Outcome::Succeeded),
            None => Verdict::Running,
        }
    };
    let state = match &verdict {
        Verdict::Finished(o) => o.as_str().to_string(),
        Verdict::FailureSighted => "failing".to_string(),
        Verdict::Running => match (record_class, record_word) {
            (Some(Word::Running | Word::Unknown), Some(w)) => label(Some(w), record),
            _ => running_label.unwrap_or_else(|| {
                if items.is_empty() {
                    "pending".to_string()
                } else {
                    "running".to_string()
                }
            }),
        },
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
    use crate::profile::Profiles;
    use serde_json::json;

    fn profiles() -> Profiles {
        Profiles::new(&Default::default(), true, "producer").unwrap()
    }

    fn v(service: &str, record: Value) -> Verdict {
        assess(profiles().get(service).unwrap(), &record).verdict
    }
    const OK: Verdict = Verdict::Finished(Outcome::Succeeded);
    const FAILED: Verdict = Verdict::Finished(Outcome::Failed);
    const SIGHTED: Verdict = Verdict::FailureSighted;
    const RUNNING: Verdict = Verdict::Running;

    #[test]
    fn the_platform_record_family() {
        let item = |state: &str| json!({"id": "i", "state": state, "progress": "50%"});
        let table: Vec<(&str, Value, Verdict)> = vec![
            (
                "response missing",
                json!({"id": "t", "request": {}}),
                RUNNING,
            ),
            (
                "response null",
                json!({"id": "t", "response": null}),
                RUNNING,
            ),
            ("response {}", json!({"id": "t", "response": {}}), RUNNING),
            (
                "ack only",
                json!({"id": "t", "response": {"success": true, "task_id": "t"}}),
                RUNNING,
            ),
            (
                "one pending item",
                json!({"response": {"data": [item("pending")]}}),
                RUNNING,
            ),
            (
                "succeeded beside running is not finished",
                json!({"response": {"data": [item("succeeded"), item("running")]}}),
                RUNNING,
            ),
            (
                "failed beside running is not finished either",
                json!({"response": {"data": [item("error"), item("running")]}}),
                RUNNING,
            ),
            (
                "all items succeeded without finished_at",
                json!({"response": {"data": [item("succeeded"), item("complete")]}}),
                OK,
            ),
            (
                "all items terminal, one error, no finished_at: a sighting",
                json!({"response": {"data": [item("succeeded"), item("error")]}}),
                SIGHTED,
            ),
            (
                "finished with data",
                json!({"finished_at": 1767119785.589, "response": {"task_id": "t", "data": [item("succeeded")]}}),
                OK,
            ),
            (
                "finished without data is succeeded",
                json!({"finished_at": 1.0, "response": {"success": true}}),
                OK,
            ),
            (
                "finished with an ISO-8601 time",
                json!({"finished_at": "2025-05-02T10:30:05.456Z", "response": {"kind": "render"}}),
                OK,
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
                "finished with success:false and no error",
                json!({"finished_at": 1.0, "response": {"success": false}}),
                FAILED,
            ),
            (
                "finished with an item in error",
                json!({"finished_at": 1.0, "response": {"data": [item("succeeded"), item("error")]}}),
                FAILED,
            ),
            (
                "finished_at null is not finished",
                json!({"finished_at": null, "response": {"data": [item("running")]}}),
                RUNNING,
            ),
            (
                "success:false with error object, no finished_at",
                json!({"response": {"success": false, "error": {"code": "c", "message": "m"}}}),
                SIGHTED,
            ),
            (
                "success:false with string error, no finished_at",
                json!({"response": {"success": false, "error": "hiccup"}}),
                SIGHTED,
            ),
            (
                "success:false without error",
                json!({"response": {"success": false}}),
                RUNNING,
            ),
            (
                "success:false with an empty error",
                json!({"response": {"success": false, "error": ""}}),
                RUNNING,
            ),
            (
                "unknown state word",
                json!({"response": {"data": [item("queued_for_gpu")]}}),
                RUNNING,
            ),
            (
                "item without state",
                json!({"response": {"data": [{"id": "x"}]}}),
                RUNNING,
            ),
        ];
        for (name, record, want) in table {
            assert_eq!(v("producer", record), want, "{name}");
        }
    }

    #[test]
    fn results_without_state_words() {
        let url = |u: &str| json!({"audio_url": u});
        // suno: a URL in every item settles without finished_at...
        assert_eq!(
            v(
                "suno",
                json!({"response": {"success": true, "data": [url("https://a"), url("https://b")]}})
            ),
            OK
        );
        // ...but not a URL in one item beside one without (the SDK's false positive).
        assert_eq!(
            v(
                "suno",
                json!({"response": {"success": true, "data": [url("https://a"), {"audio_url": null}]}})
            ),
            RUNNING
        );
        // A URL beside an explicit running word is still running.
        assert_eq!(
            v(
                "suno",
                json!({"response": {"data": [{"state": "running", "audio_url": "https://a"}]}})
            ),
            RUNNING
        );
        // A success word without a URL (lyrics) is succeeded, not failed.
        assert_eq!(
            v(
                "suno",
                json!({"response": {"data": [{"status": "complete", "text": "la la"}]}})
            ),
            OK
        );
        // midjourney: the image before progress reaches 100 is a preview.
        assert_eq!(
            v(
                "midjourney",
                json!({"response": {"success": true, "progress": 60, "image_url": "https://p"}})
            ),
            RUNNING
        );
        assert_eq!(
            v(
                "midjourney",
                json!({"response": {"success": true, "progress": 100, "image_url": "https://p"}})
            ),
            OK
        );
        // webextrator: only finished_at settles.
        assert_eq!(
            v(
                "webextrator",
                json!({"response": {"url": "https://e", "title": "x"}})
            ),
            RUNNING
        );
    }

    #[test]
    fn record_level_states() {
        assert_eq!(
            v("maestro", json!({"status": "producing", "response": null})),
            RUNNING
        );
        assert_eq!(
            v(
                "maestro",
                json!({"status": "succeeded", "started_at": 1, "finished_at": null})
            ),
            OK
        );
        assert_eq!(
            v("maestro", json!({"status": "failed", "finished_at": 2.0})),
            FAILED
        );
        assert_eq!(v("maestro", json!({"status": "failed"})), SIGHTED);
        assert_eq!(
            v(
                "headshots",
                json!({"request": {}, "response": {"status": "unknown", "data": []}})
            ),
            RUNNING
        );
        assert_eq!(
            v(
                "headshots",
                json!({"request": {}, "response": {"status": "unknown", "data": [{"image_url": "https://x"}]}})
            ),
            RUNNING,
            "the record's running word wins over item results"
        );
        assert_eq!(
            v("captcha", json!({"task_id": "c", "status": "processing"})),
            RUNNING
        );
        assert_eq!(
            v(
                "captcha",
                json!({"task_id": "c", "status": "ready", "token": "t"})
            ),
            OK
        );
        assert_eq!(
            v("minimax", json!({"task": {"id": "m", "status": "queued"}})),
            RUNNING
        );
        assert_eq!(
            v("minimax", json!({"id": "m", "status": "cancelled"})),
            SIGHTED
        );
        assert_eq!(
            v(
                "seedance",
                json!({"request": {}, "response": {"data": {"status": "running"}}})
            ),
            RUNNING
        );
        assert_eq!(
            v(
                "dreamina",
                json!({"request": {}, "response": {"data": {"status": "done"}}})
            ),
            OK
        );
        assert_eq!(
            v(
                "kling",
                json!({"request": {}, "response": {"state": "submitted"}})
            ),
            RUNNING
        );
        assert_eq!(
            v(
                "kling",
                json!({"request": {}, "response": {"state": "failed"}})
            ),
            SIGHTED
        );
    }

    #[test]
    fn inputs_are_not_results() {
        // A running platform record whose request carries URLs.
        let r = json!({"id": "t", "request": {"image_url": "https://in", "callback_url": "https://cb"}});
        for s in ["qrart", "midjourney", "nonesuch"] {
            assert_eq!(v(s, r.clone()), RUNNING, "{s}");
        }
    }

    #[test]
    fn labels_and_unknown_words() {
        let p = profiles();
        let producer = p.get("producer").unwrap();
        let a = assess(
            producer,
            &json!({"response": {"data": [
                {"state": "succeeded"}, {"state": "running", "progress": 42}, {"state": "Mystery"}, {"state": "mystery"}
            ]}}),
        );
        assert_eq!(a.state, "running 42%");
        assert_eq!(a.unknown_states, vec!["mystery".to_string()]);
        assert_eq!(
            assess(producer, &json!({"response": null})).state,
            "pending"
        );
        assert_eq!(
            assess(
                producer,
                &json!({"response": {"data": [{"state": "pending", "progress": "0%"}]}})
            )
            .state,
            "pending 0%"
        );
        let maestro = p.get("maestro").unwrap();
        let a = assess(
            maestro,
            &json!({"status": "qc", "progress": {"percent": 80, "stage": "qc"}}),
        );
        assert_eq!(a.state, "qc 80%");
        let a = assess(maestro, &json!({"status": "polishing"}));
        assert_eq!(a.unknown_states, vec!["polishing".to_string()]);
        for w in ["", " "] {
            let a = assess(
                producer,
                &json!({"response": {"data": [{"state": w}, {"id": "x"}]}}),
            );
            assert_eq!((a.verdict, a.state.as_str()), (RUNNING, "running"));
        }
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
