//! Task records: what a task looks like at a given moment.

use serde_json::{Map, Value, json};

use crate::ids::{hex24, iso8601, mix, secs, uuid};
use crate::state::{Outcome, RunningShape, StateWords, Task};

pub(crate) const MODEL: &str = "FUZZ-2.0 Pro";

/// The record of `t` as seen at `now` (ms since the epoch).
pub(crate) fn record(t: &Task, now: u64, hiccup: bool) -> Value {
    let k = t.key;
    let d = t.duration_ms;
    let e = now.saturating_sub(t.created_ms);
    let start_off = 500.min(d / 5);
    let finished =
        e >= d && !hiccup && !matches!(t.outcome, Outcome::Never | Outcome::FailedUnfinished);
    let kind = if t.service == "producer" {
        "audios"
    } else {
        t.service.as_str()
    };
    let mut r = Map::new();
    r.insert("_id".into(), hex24(k).into());
    r.insert("id".into(), t.id.clone().into());
    r.insert("api_id".into(), uuid(mix(k, 11)).into());
    r.insert("application_id".into(), uuid(mix(k, 12)).into());
    r.insert("user_id".into(), uuid(mix(k, 13)).into());
    r.insert("credential_id".into(), uuid(mix(k, 14)).into());
    r.insert("trace_id".into(), uuid(mix(k, 15)).into());
    r.insert("type".into(), kind.into());
    r.insert(
        "request".into(),
        json!({"action": "generate", "model": MODEL,
               "prompt": format!("a calm song about lighthouse number {}", k % 1000)}),
    );
    r.insert("created_at".into(), secs(t.created_ms).into());
    if e >= start_off {
        r.insert("started_at".into(), secs(t.created_ms + start_off).into());
    }
    if let Some(resp) = response(t, e, hiccup) {
        r.insert("response".into(), resp);
    }
    if finished {
        r.insert("finished_at".into(), secs(t.created_ms + d).into());
        r.insert("elapsed".into(), ((d - start_off) as f64 / 1000.0).into());
        r.insert("duration".into(), (d as f64 / 1000.0).into());
    }
    Value::Object(r)
}

/// The `response` field after `e` ms; `None` when the key is missing.
pub(crate) fn response(t: &Task, e: u64, hiccup: bool) -> Option<Value> {
    let d = t.duration_ms;
    if hiccup {
        let err = json!({"code": "api_error", "message": "upstream temporarily unavailable"});
        return Some(failure(t, err));
    }
    if e >= d && t.outcome != Outcome::Never {
        let generation_failed = || {
            json!({"code": "generation_failed",
                   "message": "generation failed: the model could not complete the request"})
        };
        match t.outcome {
            Outcome::Failed | Outcome::FailedUnfinished => {
                return Some(failure(t, generation_failed()));
            }
            Outcome::FailedString => {
                let err = "generation failed: content policy violation".into();
                return Some(failure(t, err));
            }
            _ => {}
        }
    } else if e * 5 < d {
        return match t.running_shape {
            RunningShape::Missing => None,
            RunningShape::Null => Some(Value::Null),
            RunningShape::Empty => Some(json!({})),
            RunningShape::Ack => Some(json!({"success": true, "task_id": t.id})),
        };
    }
    let items: Vec<Value> = (0..u64::from(t.items)).map(|i| item(t, i, e)).collect();
    Some(json!({"task_id": t.id, "data": items}))
}

pub(crate) fn failure(t: &Task, error: Value) -> Value {
    json!({"success": false, "error": error, "task_id": t.id, "trace_id": uuid(mix(t.key, 16))})
}

/// Item `i` of `t` after `e` ms: pending, running with progress, or finished.
pub(crate) fn item(t: &Task, i: u64, e: u64) -> Value {
    let n = u64::from(t.items);
    let d = t.duration_ms;
    let finish = d * (i + 1) / n;
    let ik = mix(t.key, 100 + i);
    let id = uuid(ik);
    let created_at = iso8601(t.created_ms + 300, ik % 1000);
    let title = format!("Lighthouse {}", ik % 100);
    if t.outcome == Outcome::Never || e < finish {
        if e * 5 < d * 2 {
            return json!({"id": id, "state": "pending", "model": MODEL, "created_at": created_at});
        }
        let pct = (e * 100 / finish.max(1)).clamp(1, 99);
        let progress = if i.is_multiple_of(2) {
            Value::from(format!("{pct}%"))
        } else {
            Value::from(pct)
        };
        return json!({"id": id, "title": title, "state": "running", "progress": progress,
                      "model": MODEL, "created_at": created_at});
    }
    let error = t.outcome == Outcome::ItemError && i == n - 1;
    let state = match (t.state_words, error) {
        (StateWords::Standard, false) => "succeeded",
        (StateWords::Standard, true) => "error",
        (StateWords::Alt, true) => "failed",
        (StateWords::Alt, false) if i.is_multiple_of(2) => "completed",
        (StateWords::Alt, false) => "complete",
    };
    let url = |u: &str| if error { Value::Null } else { u.into() };
    let mut v = json!({
        "id": id,
        "title": title,
        "image_url": url("https://example.invalid/i.jpg"),
        "audio_url": url("https://example.invalid/a.m4a"),
        "video_url": null,
        "model": MODEL,
        "progress": "100%",
        "state": state,
        "duration": format!("{}.{:02}", 60 + ik % 180, (ik >> 8) % 100),
        "created_at": created_at,
    });
    if error {
        v["error_message"] = "generation failed for this item".into();
    }
    v
}
