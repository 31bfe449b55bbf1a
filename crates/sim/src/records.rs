//! Task records: what a task looks like at a given moment, whatever its
//! service. This module holds what every family shares (the timeline, the
//! timestamps, the platform record wrapper, the failure shapes, replayed
//! records and the single-task and not-found answers); `families.rs` holds
//! one builder per family.

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::families;
use crate::ids::{hex24, iso8601_millis, mix, random_uuid, secs, uuid};
use crate::services::{Clock, Family, IdAt, NotFound, Profile};
use crate::state::{Outcome, Task};

/// The model name of generated requests and items.
pub(crate) const MODEL: &str = "FUZZ-2.0 Pro";

/// Where a task stands at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The first fifth of its duration: accepted, nothing produced yet.
    Pending,
    /// Working (the items family's items may already be finishing).
    Running,
    /// Settled with its results.
    Succeeded,
    /// Settled with an error.
    Failed,
}

impl Phase {
    /// Succeeded or failed.
    pub(crate) fn settled(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// A task seen at one moment: `e` ms after its creation; `hiccup` when this
/// poll is the hiccup of a `hiccup` task.
pub(crate) struct At<'a> {
    pub(crate) t: &'a Task,
    pub(crate) e: u64,
    pub(crate) hiccup: bool,
}

impl At<'_> {
    /// Where the task stands.
    pub(crate) fn phase(&self) -> Phase {
        let t = self.t;
        let d = t.duration_ms;
        if self.e >= d
            && !self.hiccup
            && !matches!(t.outcome, Outcome::Never | Outcome::FailedUnfinished)
        {
            return match t.outcome {
                Outcome::Failed | Outcome::FailedString => Phase::Failed,
                _ => Phase::Succeeded,
            };
        }
        if self.e * 5 < d {
            Phase::Pending
        } else {
            Phase::Running
        }
    }

    /// When the task started, in ms after its creation.
    pub(crate) fn start_offset(&self) -> u64 {
        500.min(self.t.duration_ms / 5)
    }

    /// Progress in percent while unsettled: 1..=99, growing with time.
    pub(crate) fn percent(&self) -> u64 {
        (self.e * 100 / self.t.duration_ms.max(1)).clamp(1, 99)
    }

    /// Whether result `i` (of `t.items`, finishing one after another) is ready.
    pub(crate) fn item_done(&self, i: u64) -> bool {
        let t = self.t;
        let finish = t.duration_ms * (i + 1) / u64::from(t.items);
        match self.phase() {
            Phase::Succeeded => true,
            Phase::Failed | Phase::Pending => false,
            Phase::Running => t.outcome != Outcome::Never && self.e >= finish,
        }
    }

    /// The record's trace ID.
    pub(crate) fn trace_id(&self) -> String {
        uuid(mix(self.t.key, 15))
    }

    /// Writes the timestamps `clock` calls for into `r`.
    pub(crate) fn stamp(&self, r: &mut Map<String, Value>, clock: Clock) {
        let t = self.t;
        let phase = self.phase();
        let settled = phase.settled();
        let started = self.e >= self.start_offset();
        let start = t.created_ms + self.start_offset();
        let end = t.created_ms + t.duration_ms;
        let elapsed = || Value::from((end - start) as f64 / 1000.0);
        let mut put = |k: &str, v: Value| {
            r.insert(k.into(), v);
        };
        match clock {
            Clock::Full => {
                if started {
                    put("started_at", secs(start).into());
                }
                if settled {
                    put("finished_at", secs(end).into());
                    put("elapsed", elapsed());
                }
            }
            Clock::FinishedAt => {
                if settled {
                    put("finished_at", secs(end).into());
                }
            }
            Clock::Duration => {
                if settled {
                    put("finished_at", secs(end).into());
                    put("duration", (t.duration_ms as f64 / 1000.0).into());
                }
            }
            Clock::FailureOnly => {
                if phase == Phase::Failed {
                    put("finished_at", secs(end).into());
                }
            }
            Clock::Nullable => {
                put("started_at", started.then(|| secs(start)).into());
                put("finished_at", settled.then(|| secs(end)).into());
                if settled {
                    put("elapsed", elapsed());
                }
            }
            Clock::FinishedNullable => put("finished_at", settled.then(|| secs(end)).into()),
            Clock::AtSettle => {
                if settled {
                    put("started_at", secs(start).into());
                    put("finished_at", secs(end).into());
                    put("elapsed", elapsed());
                }
            }
            Clock::Iso => {
                if started {
                    put("started_at", iso8601_millis(start).into());
                }
                if settled {
                    put("finished_at", iso8601_millis(end).into());
                    put("elapsed", elapsed());
                }
            }
            Clock::Never => {}
        }
    }

    /// The platform task record's wrapper, without `response` and the
    /// timestamps after `created_at`.
    pub(crate) fn platform(&self) -> Map<String, Value> {
        let t = self.t;
        let k = t.key;
        let mut r = Map::new();
        r.insert("_id".into(), hex24(k).into());
        r.insert("id".into(), t.id.clone().into());
        r.insert("api_id".into(), uuid(mix(k, 11)).into());
        r.insert("application_id".into(), uuid(mix(k, 12)).into());
        r.insert("user_id".into(), uuid(mix(k, 13)).into());
        r.insert("credential_id".into(), uuid(mix(k, 14)).into());
        r.insert("trace_id".into(), self.trace_id().into());
        match t.profile.type_word {
            "" => {}
            "*" => {
                r.insert("type".into(), t.service.clone().into());
            }
            word => {
                r.insert("type".into(), word.into());
            }
        }
        r.insert(
            "request".into(),
            json!({"action": "generate", "model": MODEL, "prompt": prompt(k)}),
        );
        r.insert("created_at".into(), secs(t.created_ms).into());
        r
    }
}

/// The prompt of a task's request.
pub(crate) fn prompt(key: u64) -> String {
    format!("a calm song about lighthouse number {}", key % 1000)
}

/// The error of a failed generation.
pub(crate) fn generation_failed() -> Value {
    json!({"code": "generation_failed",
           "message": "generation failed: the model could not complete the request"})
}

/// A platform `response` reporting a failure.
pub(crate) fn failure(t: &Task, error: Value) -> Value {
    json!({"success": false, "error": error, "task_id": t.id, "trace_id": uuid(mix(t.key, 16))})
}

/// The record of `t` as seen at `now` (ms since the epoch): for a batch
/// answer as is, for a single answer through [`single_answer`].
pub(crate) fn record(t: &Task, now: u64, hiccup: bool) -> Value {
    let e = now.saturating_sub(t.created_ms);
    if let Some(replayed) = &t.record {
        if e >= t.duration_ms {
            return (**replayed).clone();
        }
        // Until then the service's own running shape.
        let running = Task {
            outcome: Outcome::Never,
            ..t.clone()
        };
        return build(&At {
            t: &running,
            e,
            hiccup: false,
        });
    }
    build(&At { t, e, hiccup })
}

fn build(at: &At) -> Value {
    match at.t.profile.family {
        Family::Items => families::items(at),
        Family::Urls => families::urls(at),
        Family::FlatState => families::flat_state(at),
        Family::FlatProgress => families::flat_progress(at),
        Family::DataObject => families::data_object(at),
        Family::TopStatus => families::top_status(at),
        Family::TaskEnvelope => families::task_envelope(at),
        Family::Single => families::single(at),
        Family::FinishedOnly => families::finished_only(at),
    }
}

/// The answer to `retrieve` of `t`, given its record.
pub(crate) fn single_answer(t: &Task, record: Value) -> (StatusCode, Value) {
    match t.profile.family {
        Family::TaskEnvelope => (StatusCode::OK, json!({ "task": record })),
        // captcha reports a timed-out task with HTTP 504 (documented as terminal).
        Family::Single if t.profile.name == "captcha" && record["status"] == "failed" => {
            (StatusCode::GATEWAY_TIMEOUT, record)
        }
        _ => (StatusCode::OK, record),
    }
}

/// The answer to `retrieve` of an ID the upstream does not know.
pub(crate) fn not_found(profile: &Profile) -> (StatusCode, Value) {
    let message = "task not found";
    match profile.not_found {
        NotFound::Error404 => (
            StatusCode::NOT_FOUND,
            json!({"success": false, "error": {"code": "not_found", "message": message},
                   "trace_id": random_uuid()}),
        ),
        NotFound::Plain404 => (
            StatusCode::NOT_FOUND,
            json!({"success": false, "error": {"code": "not_found", "message": message}}),
        ),
        NotFound::NoTask404 => (
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "no_task", "message": message}}),
        ),
        NotFound::Empty200 => (StatusCode::OK, json!({})),
    }
}

/// A replayed `record` with the task's ID written where the service keeps
/// it. minimax's `{"task": {...}}` is kept bare (as batch answers serve it;
/// `retrieve` wraps it again). `{}` stays `{}`: the ID is unknown.
pub(crate) fn place_id(profile: &Profile, record: Value, id: &str) -> Value {
    let Value::Object(mut o) = record else {
        return record;
    };
    if o.is_empty() {
        return Value::Object(o);
    }
    match profile.id_at {
        IdAt::Id => {
            o.insert("id".into(), id.into());
        }
        IdAt::Task => match o.remove("task") {
            Some(Value::Object(mut task)) => {
                task.insert("id".into(), id.into());
                return Value::Object(task);
            }
            other => {
                if let Some(v) = other {
                    o.insert("task".into(), v);
                }
                o.insert("id".into(), id.into());
            }
        },
        IdAt::TaskId => {
            o.insert("task_id".into(), id.into());
        }
        IdAt::IdAndTaskId => {
            o.insert("id".into(), id.into());
            o.insert("task_id".into(), id.into());
        }
    }
    Value::Object(o)
}
