//! One record builder per family of shapes (see `services.rs` for which
//! service speaks which). Each takes a task at one moment and returns the
//! record the upstream serves in a batch answer; `records::single_answer`
//! adds what `retrieve` adds (minimax's `{"task": ...}`).
//!
//! Field names and values follow the documented records in
//! `tests/fixtures/upstream-records/`; the few differences between services
//! of one family are matched on the service's name here.

use serde_json::{Map, Value, json};

use crate::ids::{iso8601, mix, uuid};
use crate::records::{At, MODEL, Phase, failure, generation_failed, prompt};
use crate::services::{Multi, Profile, Words};
use crate::state::{Outcome, RunningShape, StateWords};

/// The object inside `v` (an empty one if `v` is not an object).
fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Sets the service's result URL fields in `v` (`null` where the table says so).
fn put_urls(v: &mut Map<String, Value>, p: &Profile) {
    for (key, url) in p.urls {
        v.insert((*key).into(), url.map_or(Value::Null, Value::from));
    }
}

/// The state word of `phase`.
fn word(w: &Words, phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => w.pending,
        Phase::Running => w.running,
        Phase::Succeeded => w.done,
        Phase::Failed => w.failed,
    }
}

/// The record with `response` (if any) and the service's timestamps.
fn platform_record(at: &At, response: Option<Value>) -> Value {
    let mut r = at.platform();
    if let Some(resp) = response {
        r.insert("response".into(), resp);
    }
    at.stamp(&mut r, at.t.profile.clock);
    Value::Object(r)
}

// ---------------------------------------------------------------------------
// items: producer, veo, sora, hailuo, gemini, grok, happyhorse, pika

/// The items family: `response.data[]` items with `state` and `progress`,
/// each item finishing at its own time; every knob of the task applies.
pub(crate) fn items(at: &At) -> Value {
    let mut r = at.platform();
    if let Some(resp) = items_response(at) {
        r.insert("response".into(), resp);
    }
    at.stamp(&mut r, at.t.profile.clock);
    if at.phase().settled() {
        r.insert("duration".into(), (at.t.duration_ms as f64 / 1000.0).into());
    }
    Value::Object(r)
}

/// The items family's `response`; `None` when the key is missing.
fn items_response(at: &At) -> Option<Value> {
    let t = at.t;
    let (d, e) = (t.duration_ms, at.e);
    if at.hiccup {
        let err = json!({"code": "api_error", "message": "upstream temporarily unavailable"});
        return Some(failure(t, err));
    }
    if e >= d && t.outcome != Outcome::Never {
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
    let items: Vec<Value> = (0..u64::from(t.items)).map(|i| item(at, i)).collect();
    let p = t.profile;
    if p.name == "producer" || p.type_word == "*" {
        // producer's documented response has no `success` and no `trace_id`.
        Some(json!({"task_id": t.id, "data": items}))
    } else {
        Some(json!({"success": true, "task_id": t.id, "trace_id": at.trace_id(), "data": items}))
    }
}

/// Item `i`: pending, running with progress, or finished.
fn item(at: &At, i: u64) -> Value {
    let t = at.t;
    let (d, e) = (t.duration_ms, at.e);
    let n = u64::from(t.items);
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
    let mut v = obj(json!({
        "id": id,
        "title": title,
        "model": MODEL,
        "progress": "100%",
        "state": state,
        "duration": format!("{}.{:02}", 60 + ik % 180, (ik >> 8) % 100),
        "created_at": created_at,
    }));
    put_urls(&mut v, t.profile);
    if error {
        for (key, _) in t.profile.urls {
            v.insert((*key).into(), Value::Null);
        }
        v.insert(
            "error_message".into(),
            "generation failed for this item".into(),
        );
    }
    Value::Object(v)
}

// ---------------------------------------------------------------------------
// urls: suno, seedream, nano-banana, flux, fish, pixverse, headshots,
// qwen-image, openai

/// The urls family: `response.data[]` items carry result URLs but no state
/// word. Every item is listed from the start; an item gets its URL fields
/// when it finishes, so a task is finished only when every item has them.
pub(crate) fn urls(at: &At) -> Value {
    let t = at.t;
    let p = t.profile;
    let ack = || {
        if p.name == "headshots" {
            json!({"task_id": t.id, "status": "unknown", "data": []})
        } else {
            json!({"success": true, "task_id": t.id})
        }
    };
    let response = match at.phase() {
        Phase::Failed => failure(t, generation_failed()),
        Phase::Pending => ack(),
        // openai (the one urls service with results at once) keeps the ack
        // until the OpenAI images body arrives whole.
        Phase::Running if p.multi == Multi::AtOnce => ack(),
        Phase::Succeeded if p.multi == Multi::AtOnce => openai_images(at),
        Phase::Running | Phase::Succeeded => {
            let items: Vec<Value> = (0..u64::from(t.items)).map(|i| url_item(at, i)).collect();
            json!({"success": true, "task_id": t.id, "trace_id": at.trace_id(), "data": items})
        }
    };
    platform_record(at, Some(response))
}

/// openai's `response`: an OpenAI images body.
fn openai_images(at: &At) -> Value {
    let t = at.t;
    let data: Vec<Value> = (0..u64::from(t.items))
        .map(|i| {
            let mut v = Map::new();
            for (key, url) in t.profile.urls {
                let url = url.map_or(Value::Null, |u| format!("{u}?n={i}").into());
                v.insert((*key).into(), url);
            }
            Value::Object(v)
        })
        .collect();
    json!({"created": (t.created_ms + t.duration_ms) / 1000, "data": data, "success": true})
}

/// Item `i` of a urls-family task: its service's fields, plus its URL
/// fields once it is finished.
fn url_item(at: &At, i: u64) -> Value {
    let t = at.t;
    let p = t.profile;
    let ik = mix(t.key, 100 + i);
    let mut v = obj(match p.name {
        "suno" => json!({
            "id": uuid(ik),
            "title": format!("Lighthouse {}", ik % 100),
            "created_at": iso8601(t.created_ms + 300, ik % 1000),
            "model": "chirp-v3.5",
            "prompt": prompt(t.key),
            "style": "pop",
        }),
        "seedream" => json!({"prompt": prompt(t.key), "size": "2048x2048"}),
        "nano-banana" | "flux" => json!({"prompt": prompt(t.key)}),
        "pixverse" => json!({
            "id": ik % 1_000_000_000_000_000,
            "first_frame": "",
            "last_frame": "",
            "video_width": 0,
            "video_height": 0,
            "prompt": prompt(t.key),
            "model": "v3.5",
            "quality": "360p",
            "motion": "normal",
            "template_id": 0,
            "template_name": "",
            "style": "",
            "aspect_ratio": "16:9",
            "duration": 5,
            "extended": 0,
            "seed": 0,
            "asset_id": 0,
            "asset_name": "",
        }),
        "headshots" => json!({
            "id": format!("2024110320220{:05}", ik % 100_000),
            "template": "Male Portrait",
        }),
        _ => json!({}),
    });
    if at.item_done(i) {
        put_urls(&mut v, p);
        match p.name {
            "suno" => {
                v.insert("lyric".into(), "[Verse]\nA light across the water".into());
                v.insert(
                    "duration".into(),
                    (120.0 + (ik % 6000) as f64 / 100.0).into(),
                );
            }
            "flux" => {
                v.insert("seed".into(), (ik % 1_000_000_000).into());
                v.insert("timings".into(), json!({"inference": 3.193}));
            }
            _ => {}
        }
    }
    Value::Object(v)
}

// ---------------------------------------------------------------------------
// flat_state: luma, kling, wan

/// The flat_state family: a flat `response` with a state word and, once
/// done, the video URL.
pub(crate) fn flat_state(at: &At) -> Value {
    let t = at.t;
    let p = t.profile;
    let phase = at.phase();
    let mut resp = obj(json!({"success": phase != Phase::Failed, "task_id": t.id}));
    resp.insert(p.words.key.into(), word(&p.words, phase).into());
    if p.name == "luma" {
        resp.insert("video_id".into(), uuid(mix(t.key, 21)).into());
        resp.insert("prompt".into(), prompt(t.key).into());
    }
    match phase {
        Phase::Succeeded => {
            put_urls(&mut resp, p);
            match p.name {
                "luma" => {
                    for (k, v) in [
                        ("video_width", 1360),
                        ("video_height", 752),
                        ("thumbnail_width", 1360),
                        ("thumbnail_height", 752),
                    ] {
                        resp.insert(k.into(), v.into());
                    }
                }
                "kling" => {
                    resp.insert("video_id".into(), uuid(mix(t.key, 21)).into());
                    resp.insert("duration".into(), "5.1".into());
                }
                _ => {}
            }
        }
        Phase::Failed => {
            resp.insert("error".into(), generation_failed());
        }
        Phase::Pending | Phase::Running => {}
    }
    platform_record(at, Some(Value::Object(resp)))
}

// ---------------------------------------------------------------------------
// flat_progress: midjourney, qrart

/// The flat_progress family: a flat `response` with `success` and a numeric
/// `progress`, no state word; the image URLs only at the end.
pub(crate) fn flat_progress(at: &At) -> Value {
    let t = at.t;
    let p = t.profile;
    let midjourney = p.name == "midjourney";
    let response = match at.phase() {
        Phase::Failed => json!({"success": false, "error": generation_failed()}),
        Phase::Succeeded if midjourney => {
            let image_id = (mix(t.key, 22) % 10_000_000_000_000_000_000).to_string();
            let mut v = obj(json!({
                "image_width": 1024,
                "image_height": 1024,
                "raw_image_width": 2048,
                "raw_image_height": 2048,
                "actions": ["upscale1", "upscale2", "upscale3", "upscale4", "reroll",
                            "variation1", "variation2", "variation3", "variation4"],
                "progress": 100,
                "image_id": image_id,
                "task_id": t.id,
                "success": true,
                "job_id": uuid(mix(t.key, 23)),
                "hold": false,
            }));
            put_urls(&mut v, p);
            Value::Object(v)
        }
        Phase::Succeeded => {
            let mut v = obj(json!({
                "image_width": 768,
                "image_height": 768,
                "seed": mix(t.key, 22) % 10_000_000_000_000_000,
                "success": true,
            }));
            put_urls(&mut v, p);
            Value::Object(v)
        }
        phase => {
            let progress = if phase == Phase::Pending {
                0
            } else {
                at.percent()
            };
            let mut v = obj(json!({"success": true, "progress": progress}));
            if midjourney {
                v.insert("task_id".into(), t.id.clone().into());
            }
            Value::Object(v)
        }
    };
    platform_record(at, Some(response))
}

// ---------------------------------------------------------------------------
// data_object: seedance, dreamina

/// The data_object family: `response.data` is one object with `status`.
pub(crate) fn data_object(at: &At) -> Value {
    let t = at.t;
    let p = t.profile;
    let phase = at.phase();
    let seedance = p.name == "seedance";
    let mut data = Map::new();
    if seedance {
        let provider_id = format!("cgt-{:014}-{:05x}", t.created_ms / 1000, t.key % 0x10_0000);
        data.insert("task_id".into(), provider_id.into());
        data.insert("model".into(), "doubao-seedance-1-0-pro-250528".into());
    } else {
        data.insert("task_id".into(), t.id.replace('-', "").into());
    }
    data.insert(p.words.key.into(), word(&p.words, phase).into());
    match phase {
        Phase::Succeeded => {
            put_urls(&mut data, p);
            if seedance {
                data.insert("last_frame_url".into(), Value::Null);
            } else {
                // dreamina echoes its inputs.
                data.insert("image_url".into(), "https://example.invalid/in.jpg".into());
                data.insert("audio_url".into(), "https://example.invalid/in.wav".into());
            }
        }
        Phase::Failed => {
            data.insert("error".into(), generation_failed());
        }
        Phase::Pending | Phase::Running => {}
    }
    let mut resp = obj(json!({"success": phase != Phase::Failed}));
    if seedance {
        resp.insert("task_id".into(), t.id.clone().into());
        resp.insert("trace_id".into(), at.trace_id().into());
    }
    resp.insert("data".into(), Value::Object(data));
    platform_record(at, Some(Value::Object(resp)))
}

// ---------------------------------------------------------------------------
// top_status: maestro

/// Languages of maestro's variants, one per item.
const LANGS: [&str; 4] = ["zh-cn", "en", "ja", "fr"];

/// The top_status family (maestro): top-level `status` and `progress
/// {percent, stage, message}`, `started_at`/`finished_at` null until set,
/// the variants' URLs in `response.data` at the end.
pub(crate) fn top_status(at: &At) -> Value {
    let t = at.t;
    let p = t.profile;
    let w = &p.words;
    let n = usize::from(t.items);
    let phase = at.phase();
    // maestro has two running stages: planning, then producing.
    let producing = at.e * 5 >= t.duration_ms * 3;
    let (status, percent, stage, message) = match phase {
        Phase::Pending => (w.pending, 0, "pending", "waiting for a worker".to_owned()),
        Phase::Running if !producing => (
            w.running,
            at.percent(),
            "planning",
            "writing the script".to_owned(),
        ),
        Phase::Running => (
            "producing",
            at.percent(),
            "producing",
            format!("rendering scene {}", 1 + at.e * 4 / t.duration_ms.max(1)),
        ),
        Phase::Succeeded => (w.done, 100, "producing", "done".to_owned()),
        Phase::Failed => (w.failed, 99, "producing", "failed".to_owned()),
    };
    let mut r = obj(json!({
        "id": t.id,
        "status": status,
        "progress": {"percent": percent, "stage": stage, "message": message},
        "request": {"prompt": prompt(t.key), "langs": &LANGS[..n], "aspect": "9:16", "duration": 20},
    }));
    at.stamp(&mut r, p.clock);
    match phase {
        Phase::Succeeded => {
            let base = p.urls.first().and_then(|u| u.1).unwrap_or_default();
            let outputs: Vec<String> = LANGS[..n]
                .iter()
                .map(|l| format!("{base}?lang={l}"))
                .collect();
            let variants: Vec<Value> = LANGS[..n]
                .iter()
                .zip(&outputs)
                .map(|(lang, url)| {
                    json!({"lang": lang, "aspect": "9:16", "kind": "video",
                           "title": format!("Lighthouse ({lang})"), "output_url": url})
                })
                .collect();
            r.insert(
                "response".into(),
                json!({"success": true, "data": {
                    "variants": variants,
                    "project": {"tarball_url": "https://example.invalid/project.tar.gz",
                                "outputs": outputs},
                    "percent": 100,
                    "stage": "producing",
                    "progress": [{"stage": "producing", "message": "done", "pct": 100,
                                  "t": (t.created_ms + t.duration_ms) / 1000}],
                }}),
            );
        }
        Phase::Failed => {
            r.insert(
                "response".into(),
                json!({"success": false, "error": generation_failed()}),
            );
        }
        Phase::Pending | Phase::Running => {}
    }
    Value::Object(r)
}

// ---------------------------------------------------------------------------
// task_envelope: minimax

/// The task_envelope family (minimax): a bare task object with `status`,
/// integer `created_at` / `updated_at`, `content.url` when it succeeds,
/// `error` when it fails, never `finished_at`.
pub(crate) fn task_envelope(at: &At) -> Value {
    let t = at.t;
    let p = t.profile;
    let phase = at.phase();
    let d = t.duration_ms;
    let updated_ms = match phase {
        Phase::Pending => t.created_ms,
        Phase::Running => t.created_ms + d / 5,
        Phase::Succeeded | Phase::Failed => t.created_ms + d,
    };
    let mut task = obj(json!({
        "id": t.id,
        "model": "MiniMax-H3",
        "status": word(&p.words, phase),
        "created_at": t.created_ms / 1000,
        "updated_at": updated_ms / 1000,
        "resolution": "768P",
        "duration": 4,
        "ratio": "16:9",
        "task_type": "generation",
        "modality": "video",
    }));
    match phase {
        Phase::Succeeded => {
            let mut content = Map::new();
            put_urls(&mut content, p);
            task.insert("content".into(), Value::Object(content));
            task.insert(
                "usage".into(),
                json!({"total_seconds": 4, "input_seconds": 0, "output_seconds": 4,
                       "input_image_count": 0}),
            );
        }
        Phase::Failed => {
            task.insert(
                "error".into(),
                json!({"code": "1026", "message": "video description contains sensitive content"}),
            );
        }
        Phase::Pending | Phase::Running => {}
    }
    Value::Object(task)
}

// ---------------------------------------------------------------------------
// single: captcha, digital-human

/// The single family: a flat answer for one `task_id` (no batch).
pub(crate) fn single(at: &At) -> Value {
    if at.t.profile.name == "captcha" {
        captcha(at)
    } else {
        digital_human(at)
    }
}

/// captcha: `status` processing → ready (with the token) or failed (timeout).
fn captcha(at: &At) -> Value {
    let t = at.t;
    let p = t.profile;
    let phase = at.phase();
    let mut o = match phase {
        Phase::Failed => obj(json!({
            "detail": "The captcha task timed out.",
            "code": "timeout",
            "success": false,
            "task_id": t.id,
            "status": p.words.failed,
        })),
        Phase::Succeeded => obj(json!({
            "success": true,
            "task_id": t.id,
            "status": p.words.done,
            "token": format!("03AFcWeA{:016x}{:016x}", mix(t.key, 24), mix(t.key, 25)),
        })),
        Phase::Pending | Phase::Running => obj(json!({
            "success": true,
            "task_id": t.id,
            "status": word(&p.words, phase),
        })),
    };
    at.stamp(&mut o, p.clock);
    Value::Object(o)
}

/// digital-human: `state` pending → processing → succeed / failed, numeric
/// `progress`, `finished_at` null until settled.
fn digital_human(at: &At) -> Value {
    let t = at.t;
    let p = t.profile;
    let phase = at.phase();
    let progress = match phase {
        Phase::Pending => 0,
        Phase::Succeeded => 100,
        Phase::Running | Phase::Failed => at.percent(),
    };
    let mut o = obj(json!({
        "success": phase != Phase::Failed,
        "task_id": t.id,
        "trace_id": at.trace_id(),
        "progress": progress,
    }));
    o.insert(p.words.key.into(), word(&p.words, phase).into());
    match phase {
        Phase::Succeeded => {
            put_urls(&mut o, p);
            for (k, v) in [
                ("duration", json!(17.2)),
                ("width", json!(1280)),
                ("height", json!(720)),
                ("engine", json!("latentsync")),
            ] {
                o.insert(k.into(), v);
            }
        }
        Phase::Failed => {
            o.insert("error".into(), generation_failed());
        }
        Phase::Pending | Phase::Running => {}
    }
    at.stamp(&mut o, p.clock);
    Value::Object(o)
}

// ---------------------------------------------------------------------------
// finished_only: webextrator

/// The finished_only family (webextrator): no `response` until done, then
/// the render result; `id` and `task_id`; ISO-8601 timestamps.
pub(crate) fn finished_only(at: &At) -> Value {
    let t = at.t;
    let p = t.profile;
    let mut r = obj(json!({
        "id": t.id,
        "task_id": t.id,
        "trace_id": at.trace_id(),
        "request": {"url": "https://example.com/"},
    }));
    if !p.type_word.is_empty() {
        r.insert("type".into(), p.type_word.into());
    }
    match at.phase() {
        Phase::Succeeded => {
            let mut resp = obj(json!({"kind": "render", "title": "Example Domain"}));
            put_urls(&mut resp, p);
            r.insert("response".into(), Value::Object(resp));
        }
        Phase::Failed => {
            r.insert(
                "response".into(),
                json!({"success": false, "error": generation_failed()}),
            );
        }
        Phase::Pending | Phase::Running => {}
    }
    at.stamp(&mut r, p.clock);
    Value::Object(r)
}
