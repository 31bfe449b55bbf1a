//! Deciding one poll: what an answer (or its absence) means for one task:
//! poll again later (and when), or finished (and how), with the event that
//! finish makes. Pure: no I/O, the random draw passed in.
//!
//! May call: `poll::terminal`, `poll::upstream` (the record type), `profile`,
//! `outcome`, `fanout`, `config`, `store` (the update types), `clock`.

use std::time::Duration;

use crate::clock::Millis;
use crate::config::Config;
use crate::outcome::Outcome;
use crate::poll::pace::Spacing;
use crate::poll::schedule::{POLL_JITTER, PollSchedule, shrink};
use crate::poll::terminal::{Assessment, Verdict, assess};
use crate::poll::upstream::Record;
use crate::profile::Profile;
use crate::store::{ClaimedTask, PollUpdate};

pub(crate) fn ms(d: Duration) -> Millis {
    d.as_millis().min(i64::MAX as u128) as Millis
}

/// A task the upstream did not answer for: asked again at `at`, unless it
/// has been watched longer than `poll.task_ttl` (then it expires now).
pub(crate) fn retry_or_expire(
    cfg: &Config,
    t: &ClaimedTask,
    at: Millis,
    now: Millis,
) -> PollUpdate {
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
/// service's profile; a running task's next poll follows `spacing`. `r` is
/// a uniform draw in [0, 1) for jitter. Returns the update and the state
/// words the profile does not know. Pure.
pub fn decide(
    cfg: &Config,
    task: &ClaimedTask,
    record: Option<&Record>,
    now: Millis,
    spacing: Spacing,
    r: f64,
) -> (PollUpdate, Vec<String>) {
    let profile = cfg.upstream.profiles.for_task(&task.service);
    let (update, a) = decide_with(cfg, profile, task, record, now, spacing, r);
    (update, a.map(|a| a.unknown_states).unwrap_or_default())
}

/// [`decide`] under an explicit profile; also returns the assessment.
fn decide_with(
    cfg: &Config,
    profile: &Profile,
    task: &ClaimedTask,
    record: Option<&Record>,
    now: Millis,
    spacing: Spacing,
    r: f64,
) -> (PollUpdate, Option<Assessment>) {
    let poll = &cfg.poll;
    let schedule = PollSchedule::of(poll);
    let polls = task.polls + 1;
    let delay = shrink(spacing.delay_after(&schedule, polls), POLL_JITTER, r);
    let next = now + ms(delay);
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

/// A finished task: its event and deliveries (fan-out), recorded with it.
pub(crate) fn finish_update(
    cfg: &Config,
    task: &ClaimedTask,
    outcome: Outcome,
    state: String,
    record: Option<&Record>,
    now: Millis,
) -> PollUpdate {
    PollUpdate::Finish {
        id: task.id.clone(),
        claim: task.claim,
        polled: record.is_some(),
        outcome,
        upstream_state: state,
        event: crate::fanout::event(cfg, task, outcome, record.map(|r| r.raw.as_ref()), now),
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
        decide(c, t, r, now, Spacing::backoff(), draw).0
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
    fn unknown_words_are_reported_with_the_update() {
        let c = cfg();
        let t = task();
        let r = rec(json!({"id": "t1", "response": {"data": [{"state": "Thinking"}]}}));
        let (u, unknown) = decide(&c, &t, Some(&r), 0, Spacing::backoff(), 0.5);
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
