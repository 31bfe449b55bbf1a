//! Every family of record shapes over HTTP: each service's tasks pass
//! through their running shapes and settle in their documented shapes;
//! paging, minimax's envelopes, the single-task services, replayed records,
//! unknown services and the new statistics.
//!
//! Records are read with rules written from `INDEX.md` (not from the
//! simulator's code): what an upstream client would look at per family.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{TestSim, start};
use crate::SimArgs;
use crate::services::{SERVICES, profile};

/// How long lifecycle tasks run (ms).
const DURATION: u64 = 400;

/// What a record says, read the way a client reads that service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Running,
    Succeeded,
    Failed,
}

/// The result URL keys of each urls-family service (INDEX.md).
fn url_keys(service: &str) -> &'static [&'static str] {
    match service {
        "suno" => &["audio_url", "video_url", "image_url"],
        "fish" => &["audio_url"],
        "pixverse" => &["video_url"],
        "openai" => &["url"],
        _ => &["image_url"],
    }
}

fn is_https(v: &Value) -> bool {
    v.as_str().is_some_and(|u| u.starts_with("https://"))
}

/// Whether `item` has every result URL of `service`.
fn item_has_urls(service: &str, item: &Value) -> bool {
    url_keys(service).iter().all(|k| is_https(&item[k]))
}

fn family(service: &str) -> &'static str {
    profile(service)
        .expect("a documented service")
        .family
        .name()
}

/// Reads `r` (the answer to `retrieve`) as a client of `service` would.
fn classify(service: &str, r: &Value) -> Seen {
    let resp = &r["response"];
    let word = |v: &Value, done: &[&str]| match v.as_str() {
        Some("failed") => Seen::Failed,
        Some(w) if done.contains(&w) => Seen::Succeeded,
        _ => Seen::Running,
    };
    match family(service) {
        "items" => match (r.get("finished_at"), &resp["success"]) {
            (None, _) => Seen::Running,
            (Some(_), Value::Bool(false)) => Seen::Failed,
            (Some(_), _) => Seen::Succeeded,
        },
        "urls" => {
            if resp["success"] == false && resp["error"]["code"].is_string() {
                return Seen::Failed;
            }
            match resp["data"].as_array() {
                Some(d) if !d.is_empty() && d.iter().all(|i| item_has_urls(service, i)) => {
                    Seen::Succeeded
                }
                _ => Seen::Running,
            }
        }
        "flat_state" => word(&resp["state"], &["completed", "succeed"]),
        "flat_progress" if resp["success"] == false => Seen::Failed,
        "flat_progress" if is_https(&resp["image_url"]) => Seen::Succeeded,
        "flat_progress" => Seen::Running,
        "data_object" => word(&resp["data"]["status"], &["succeeded", "done"]),
        "top_status" => word(&r["status"], &["succeeded"]),
        "task_envelope" => word(&r["task"]["status"], &["succeeded"]),
        "single" if service == "captcha" => word(&r["status"], &["ready"]),
        "single" => word(&r["state"], &["succeed"]),
        "finished_only" => match r.get("response") {
            None => Seen::Running,
            Some(x) if x["success"] == false => Seen::Failed,
            Some(_) => Seen::Succeeded,
        },
        other => panic!("unknown family {other}"),
    }
}

/// The body of `retrieve` for `id` at `service`.
fn retrieve_body(service: &str, id: &str) -> Value {
    match service {
        "captcha" => json!({"task_id": id}),
        "digital-human" => json!({"task_id": id, "action": "retrieve"}),
        _ => json!({"id": id, "action": "retrieve"}),
    }
}

impl TestSim {
    /// `retrieve` of `id` at `service`: status and body.
    async fn get(&self, service: &str, id: &str) -> (u16, Value) {
        self.call(&format!("/{service}/tasks"), retrieve_body(service, id))
            .await
    }

    /// `retrieve_batch` at `service` with `extra` fields; asserts 200.
    async fn batch_at(&self, service: &str, ids: &[&str], extra: Value) -> Value {
        let mut body = json!({"ids": ids, "action": "retrieve_batch"});
        if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
            b.extend(extra);
        }
        self.post_json(&format!("/{service}/tasks"), body).await
    }

    /// Polls `id` of `service` every 10 ms until it settles; every answer seen.
    async fn until_settled(&self, service: &str, id: &str) -> Vec<(u16, Value)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        loop {
            let (status, r) = self.get(service, id).await;
            let settled = classify(service, &r) != Seen::Running;
            seen.push((status, r));
            if settled {
                return seen;
            }
            assert!(Instant::now() < deadline, "{service} {id}: never settled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Every answer seen for one task, split into the unsettled ones and the last.
struct Life {
    service: String,
    running: Vec<Value>,
    last_status: u16,
    last: Value,
}

/// Creates a task per service and outcome (`items` results where the
/// service has several), polls each until it settles, and checks the
/// common rules: it was seen unsettled first, it settled as asked.
async fn lifecycles(sim: &TestSim, services: &[&str], items: u8) -> BTreeMap<String, Life> {
    let mut specs = Vec::new();
    let mut ids = Vec::new();
    for service in services {
        for outcome in ["succeeded", "failed"] {
            let id = format!("{service}-{outcome}");
            specs.push(json!({"id": id, "service": service, "outcome": outcome,
                              "duration_ms": DURATION, "items": items}));
            ids.push((service.to_string(), outcome, id));
        }
    }
    sim.create(json!({ "tasks": specs })).await;
    let polls = ids
        .iter()
        .map(|(service, _, id)| sim.until_settled(service, id));
    let seen = futures::future::join_all(polls).await;
    let mut out = BTreeMap::new();
    for ((service, outcome, id), mut answers) in ids.into_iter().zip(seen) {
        let (last_status, last) = answers.pop().unwrap();
        assert!(!answers.is_empty(), "{id}: settled on the first poll");
        let want = if outcome == "succeeded" {
            Seen::Succeeded
        } else {
            Seen::Failed
        };
        assert_eq!(classify(&service, &last), want, "{id}: {last}");
        for (status, r) in &answers {
            assert_eq!(*status, 200, "{id}: {r}");
        }
        let running = answers.into_iter().map(|(_, r)| r).collect();
        out.insert(
            id,
            Life {
                service,
                running,
                last_status,
                last,
            },
        );
    }
    out
}

/// The keys of an object.
fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Asserts the platform failure `response` with `finished_at`.
fn assert_platform_failure(id: &str, r: &Value) {
    let resp = &r["response"];
    assert_eq!(resp["success"], false, "{id}: {r}");
    assert!(resp["error"]["code"].is_string(), "{id}: {r}");
    assert!(resp["error"]["message"].is_string(), "{id}: {r}");
    assert!(r["finished_at"].is_f64(), "{id}: {r}");
}

#[tokio::test]
async fn items_family_settles_with_item_states() {
    let sim = start(SimArgs::default()).await;
    let services = [
        "producer",
        "veo",
        "sora",
        "hailuo",
        "gemini",
        "grok",
        "happyhorse",
        "pika",
    ];
    for (id, life) in lifecycles(&sim, &services, 2).await {
        let (s, r) = (life.service.as_str(), &life.last);
        for run in &life.running {
            assert!(run.get("finished_at").is_none(), "{id}: {run}");
        }
        let seen_running = life.running.iter().any(|run| {
            run["response"]["data"]
                .as_array()
                .is_some_and(|d| d.iter().any(|i| i["state"] == "running"))
        });
        assert!(seen_running, "{id}: no running item seen");
        if id.ends_with("failed") {
            assert_platform_failure(&id, r);
            continue;
        }
        let data = r["response"]["data"].as_array().unwrap();
        assert_eq!(data.len(), 2, "{id}");
        for item in data {
            assert_eq!(item["state"], "succeeded", "{id}");
            let urls: &[&str] = match s {
                "producer" => &["image_url", "audio_url"],
                "pika" => &["video_url", "image_url"],
                _ => &["video_url"],
            };
            for k in urls {
                assert!(is_https(&item[k]), "{id}: {k} in {item}");
            }
        }
        let want_type = match s {
            "producer" => Some("audios"),
            "hailuo" => None,
            _ => Some("videos"),
        };
        assert_eq!(r["type"].as_str(), want_type, "{id}");
        assert_eq!(r["response"].get("success").is_some(), s != "producer");
    }
}

#[tokio::test]
async fn urls_family_settles_with_urls_and_finished_at_where_documented() {
    let sim = start(SimArgs::default()).await;
    let services = [
        "suno",
        "seedream",
        "nano-banana",
        "flux",
        "fish",
        "pixverse",
        "headshots",
        "qwen-image",
        "openai",
    ];
    for (id, life) in lifecycles(&sim, &services, 2).await {
        let (s, r) = (life.service.as_str(), &life.last);
        for run in &life.running {
            assert!(run.get("finished_at").is_none(), "{id}: {run}");
            let resp = &run["response"];
            let ack = if s == "headshots" {
                json!({"task_id": id, "status": "unknown", "data": []})
            } else {
                json!({"success": true, "task_id": id})
            };
            if *resp != ack {
                assert_eq!(resp["success"], true, "{id}: {run}");
                assert_eq!(resp["data"].as_array().unwrap().len(), 2, "{id}: {run}");
            }
        }
        if id.ends_with("failed") {
            assert_platform_failure(&id, r);
            assert_eq!(r["response"]["task_id"], id.as_str());
            assert!(r["response"]["trace_id"].is_string());
            continue;
        }
        let documented_finish = ["suno", "flux", "nano-banana", "openai", "qwen-image"];
        assert_eq!(
            r.get("finished_at").is_some(),
            documented_finish.contains(&s),
            "{id}: {r}"
        );
        if s == "openai" {
            assert_eq!(
                keys(&r["response"]),
                BTreeSet::from(["created", "data", "success"])
            );
            assert_eq!(r["response"]["success"], true);
        }
        assert_eq!(r["response"]["data"].as_array().unwrap().len(), 2, "{id}");
    }
}

#[tokio::test]
async fn url_items_finish_one_by_one() {
    let sim = start(SimArgs::default()).await;
    let services = [
        "suno",
        "seedream",
        "nano-banana",
        "flux",
        "fish",
        "pixverse",
        "headshots",
        "qwen-image",
    ];
    let ids: Vec<String> = services.iter().map(|s| format!("{s}-3")).collect();
    let specs: Vec<Value> = services
        .iter()
        .zip(&ids)
        .map(|(s, id)| json!({"id": id, "service": s, "items": 3, "duration_ms": 360}))
        .collect();
    sim.create(json!({ "tasks": specs })).await;
    let polls = services
        .iter()
        .zip(&ids)
        .map(|(s, id)| sim.until_settled(s, id));
    for (s, seen) in services.iter().zip(futures::future::join_all(polls).await) {
        let (_, last) = seen.last().unwrap();
        assert_eq!(classify(s, last), Seen::Succeeded);
        let mut partial = false;
        for (_, r) in &seen[..seen.len() - 1] {
            let Some(data) = r["response"]["data"].as_array() else {
                continue;
            };
            let done = data.iter().filter(|i| item_has_urls(s, i)).count();
            assert!(data.is_empty() || done < 3, "{s}: finished early: {r}");
            partial |= (1..3).contains(&done);
        }
        assert!(partial, "{s}: no answer with some items finished");
    }
}

#[tokio::test]
async fn flat_state_family_uses_each_services_words() {
    let sim = start(SimArgs::default()).await;
    let words = |s: &str| match s {
        "luma" => (["pending", "processing"], "completed"),
        "kling" => (["submitted", "processing"], "succeed"),
        _ => (["pending", "running"], "completed"),
    };
    for (id, life) in lifecycles(&sim, &["luma", "kling", "wan"], 1).await {
        let (s, r) = (life.service.as_str(), &life.last);
        let (running, done) = words(s);
        for run in &life.running {
            let word = run["response"]["state"].as_str().unwrap();
            assert!(running.contains(&word), "{id}: {run}");
            assert!(run["response"].get("video_url").is_none(), "{id}: {run}");
            assert!(run.get("finished_at").is_none(), "{id}: {run}");
            assert!(run["response"].get("data").is_none(), "{id}: {run}");
        }
        assert!(
            life.running
                .iter()
                .any(|run| run["response"]["state"] == running[1]),
            "{id}"
        );
        assert!(r["finished_at"].is_f64(), "{id}: {r}");
        if id.ends_with("failed") {
            assert_eq!(r["response"]["state"], "failed");
            assert!(r["response"]["error"]["code"].is_string(), "{id}: {r}");
            assert!(r["response"]["error"]["message"].is_string(), "{id}: {r}");
            continue;
        }
        assert_eq!(r["response"]["state"], done, "{id}");
        assert!(is_https(&r["response"]["video_url"]), "{id}: {r}");
        assert_eq!(
            is_https(&r["response"]["thumbnail_url"]),
            s == "luma",
            "{id}"
        );
    }
}

#[tokio::test]
async fn flat_progress_family_reports_progress_then_images() {
    let sim = start(SimArgs::default()).await;
    for (id, life) in lifecycles(&sim, &["midjourney", "qrart"], 1).await {
        let (s, r) = (life.service.as_str(), &life.last);
        let mut last_progress = 0;
        for run in &life.running {
            let resp = &run["response"];
            assert_eq!(resp["success"], true, "{id}: {run}");
            assert!(resp.get("state").is_none() && resp.get("status").is_none());
            let p = resp["progress"].as_u64().expect("an integer progress");
            assert!(p >= last_progress && p < 100, "{id}: {run}");
            last_progress = p;
            assert!(resp.get("image_url").is_none(), "{id}: {run}");
            assert!(run.get("finished_at").is_none(), "{id}: {run}");
        }
        if id.ends_with("failed") {
            assert_eq!(keys(&r["response"]), BTreeSet::from(["error", "success"]));
            assert_platform_failure(&id, r);
            continue;
        }
        assert_eq!(r["response"]["success"], true);
        assert!(is_https(&r["response"]["image_url"]), "{id}: {r}");
        if s == "midjourney" {
            assert!(is_https(&r["response"]["raw_image_url"]), "{id}: {r}");
            assert_eq!(r["response"]["progress"], 100);
            assert!(
                r["finished_at"].is_f64() && r["duration"].is_f64(),
                "{id}: {r}"
            );
            assert!(r.get("elapsed").is_none(), "{id}: {r}");
        } else {
            assert!(r.get("finished_at").is_none(), "{id}: {r}");
        }
    }
}

#[tokio::test]
async fn data_object_family_settles_in_data_status() {
    let sim = start(SimArgs::default()).await;
    for (id, life) in lifecycles(&sim, &["seedance", "dreamina"], 1).await {
        let (s, r) = (life.service.as_str(), &life.last);
        let running: &[&str] = if s == "seedance" {
            &["queued", "running"]
        } else {
            &["generating"]
        };
        for run in &life.running {
            let data = &run["response"]["data"];
            assert!(data.is_object(), "{id}: {run}");
            assert!(
                running.contains(&data["status"].as_str().unwrap()),
                "{id}: {run}"
            );
            assert!(data.get("video_url").is_none(), "{id}: {run}");
            assert!(run.get("finished_at").is_none(), "{id}: {run}");
        }
        assert!(r["finished_at"].is_f64(), "{id}: {r}");
        let data = &r["response"]["data"];
        if id.ends_with("failed") {
            assert_eq!(data["status"], "failed", "{id}: {r}");
            continue;
        }
        let done = if s == "seedance" { "succeeded" } else { "done" };
        assert_eq!(data["status"], done, "{id}: {r}");
        assert!(is_https(&data["video_url"]), "{id}: {r}");
    }
}

#[tokio::test]
async fn top_status_family_goes_through_planning_and_producing() {
    let sim = start(SimArgs::default()).await;
    for (id, life) in lifecycles(&sim, &["maestro"], 2).await {
        let r = &life.last;
        let mut stages = BTreeSet::new();
        for run in &life.running {
            let status = run["status"].as_str().unwrap();
            assert!(
                ["pending", "planning", "producing"].contains(&status),
                "{id}: {run}"
            );
            stages.insert(status.to_owned());
            let progress = &run["progress"];
            assert!(progress["percent"].is_u64(), "{id}: {run}");
            assert!(progress["stage"].is_string() && progress["message"].is_string());
            assert!(run["finished_at"].is_null() && run.get("finished_at").is_some());
            assert!(run.get("started_at").is_some(), "{id}: {run}");
            assert!(run.get("response").is_none(), "{id}: {run}");
        }
        assert!(stages.contains("planning") && stages.contains("producing"));
        assert!(
            r["finished_at"].is_f64() && r["started_at"].is_f64(),
            "{id}: {r}"
        );
        if id.ends_with("failed") {
            assert_eq!(r["status"], "failed");
            continue;
        }
        assert_eq!(r["status"], "succeeded");
        assert_eq!(r["progress"]["percent"], 100);
        let variants = r["response"]["data"]["variants"].as_array().unwrap();
        assert_eq!(variants.len(), 2);
        assert!(variants.iter().all(|v| is_https(&v["output_url"])), "{r}");
        assert!(r["response"]["data"]["project"].is_object());
    }
}

#[tokio::test]
async fn minimax_retrieve_wraps_the_task_and_never_has_finished_at() {
    let sim = start(SimArgs::default()).await;
    for (id, life) in lifecycles(&sim, &["minimax"], 1).await {
        let r = &life.last;
        for run in life.running.iter().chain([r]) {
            assert_eq!(keys(run), BTreeSet::from(["task"]), "{id}: {run}");
            let task = &run["task"];
            assert_eq!(task["id"], id.as_str());
            assert!(task["created_at"].is_u64() && task["updated_at"].is_u64());
            assert!(!run.to_string().contains("finished_at"), "{id}: {run}");
        }
        for run in &life.running {
            let status = run["task"]["status"].as_str().unwrap();
            assert!(["queued", "running"].contains(&status), "{id}: {run}");
            assert!(run["task"].get("content").is_none(), "{id}: {run}");
        }
        let task = &r["task"];
        if id.ends_with("failed") {
            assert_eq!(task["status"], "failed");
            assert!(task["error"]["code"].is_string() && task["error"]["message"].is_string());
        } else {
            assert_eq!(task["status"], "succeeded");
            assert!(is_https(&task["content"]["url"]), "{r}");
        }
    }
}

#[tokio::test]
async fn minimax_batches_answer_bare_tasks_and_total() {
    let sim = start(SimArgs::default()).await;
    sim.create(json!({"tasks": [
        {"id": "m1", "service": "minimax", "duration_ms": 50},
        {"id": "m2", "service": "minimax", "outcome": "never"},
    ]}))
    .await;
    let v = sim
        .batch_at("minimax", &["m2", "missing-m", "m1"], json!({}))
        .await;
    assert_eq!(keys(&v), BTreeSet::from(["items", "total"]), "{v}");
    assert_eq!(v["total"], 2);
    let items = v["items"].as_array().unwrap();
    let ids: Vec<&str> = items.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["m2", "m1"]);
    assert!(
        items
            .iter()
            .all(|t| t.get("task").is_none() && t["status"].is_string())
    );
    let (status, single) = sim.get("minimax", "m2").await;
    assert_eq!(status, 200);
    assert_eq!(single["task"]["id"], "m2");
    let status = single["task"]["status"].as_str().unwrap();
    assert!(["queued", "running"].contains(&status), "{single}");
}

#[tokio::test]
async fn single_task_services_settle_as_documented() {
    let sim = start(SimArgs::default()).await;
    for (id, life) in lifecycles(&sim, &["captcha", "digital-human"], 1).await {
        let (s, r) = (life.service.as_str(), &life.last);
        if s == "captcha" {
            for run in &life.running {
                assert_eq!(
                    *run,
                    json!({"success": true, "task_id": id, "status": "processing"})
                );
            }
            for k in ["started_at", "finished_at", "elapsed"] {
                assert!(r[k].is_f64(), "{id}: {k} in {r}");
            }
            if id.ends_with("failed") {
                assert_eq!(life.last_status, 504);
                assert_eq!(r["code"], "timeout");
                assert_eq!(r["success"], false);
                assert_eq!(r["status"], "failed");
                assert!(r["detail"].is_string());
            } else {
                assert_eq!(life.last_status, 200);
                assert_eq!(r["status"], "ready");
                assert!(r["token"].is_string());
            }
            continue;
        }
        for run in &life.running {
            let state = run["state"].as_str().unwrap();
            assert!(["pending", "processing"].contains(&state), "{id}: {run}");
            assert!(run["progress"].is_u64(), "{id}: {run}");
            assert!(run["finished_at"].is_null() && run.get("finished_at").is_some());
            assert!(run.get("video_url").is_none());
            assert_eq!(run["task_id"], id.as_str());
            assert!(run["trace_id"].is_string());
        }
        assert_eq!(life.last_status, 200);
        assert!(r["finished_at"].is_f64(), "{id}: {r}");
        if id.ends_with("failed") {
            assert_eq!(r["state"], "failed");
        } else {
            assert_eq!(r["state"], "succeed");
            assert_eq!(r["progress"], 100);
            assert!(is_https(&r["video_url"]));
        }
    }
}

#[tokio::test]
async fn single_task_services_refuse_batches_and_unknown_ids() {
    let sim = start(SimArgs::default()).await;
    let (status, v) = sim.get("captcha", "missing-1").await;
    assert_eq!(status, 404);
    assert_eq!(keys(&v), BTreeSet::from(["error", "success"]), "{v}");
    assert_eq!(v["success"], false);
    assert_eq!(v["error"]["code"], "not_found");
    assert!(v["error"]["message"].is_string());
    let (status, v) = sim.get("digital-human", "missing-1").await;
    assert_eq!(status, 404);
    assert_eq!(keys(&v), BTreeSet::from(["error"]), "{v}");
    assert_eq!(v["error"]["code"], "no_task");
    assert!(v["error"]["message"].is_string());
    for service in ["captcha", "digital-human"] {
        let path = format!("/{service}/tasks");
        for body in [
            json!({"ids": ["a", "b"], "action": "retrieve_batch"}),
            json!({"ids": ["a", "b"]}),
            json!({"task_id": "a", "action": "retrieve_batch"}),
            json!({"id": "a", "action": "retrieve"}),
        ] {
            let (status, v) = sim.call(&path, body.clone()).await;
            assert_eq!(status, 400, "{service} {body}: {v}");
            assert_eq!(v["success"], false);
            assert_eq!(v["error"]["code"], "bad_request", "{v}");
        }
    }
    let stats = sim.get_json("/_sim/stats").await;
    assert_eq!(stats["batch_requests"], 0);
}

#[tokio::test]
async fn webextrator_answers_nothing_until_done_with_iso_times() {
    let sim = start(SimArgs::default()).await;
    let iso = |v: &Value| {
        v.as_str().is_some_and(|s| {
            s.len() == 24
                && s.ends_with('Z')
                && s.as_bytes()[10] == b'T'
                && s.as_bytes()[19] == b'.'
        })
    };
    for (id, life) in lifecycles(&sim, &["webextrator"], 1).await {
        let r = &life.last;
        for run in life.running.iter().chain([r]) {
            assert_eq!(run["id"], id.as_str());
            assert_eq!(run["task_id"], id.as_str());
            if let Some(started) = run.get("started_at") {
                assert!(iso(started), "{id}: {run}");
            }
        }
        for run in &life.running {
            assert!(run.get("response").is_none() && run.get("finished_at").is_none());
        }
        assert!(iso(&r["finished_at"]) && iso(&r["started_at"]), "{id}: {r}");
        if id.ends_with("failed") {
            assert_eq!(r["response"]["success"], false);
            assert!(r["response"]["error"]["code"].is_string());
        } else {
            assert_eq!(r["response"]["kind"], "render");
            assert!(r["response"]["title"].is_string());
            assert!(is_https(&r["response"]["url"]), "{r}");
        }
    }
}

#[tokio::test]
async fn items_only_outcomes_map_to_the_nearest_shape() {
    let sim = start(SimArgs::default()).await;
    let cases = [
        ("failed_string", "failed"),
        ("item_error", "failed"),
        ("failed_unfinished", "failed"),
        ("hiccup", "succeeded"),
    ];
    let mut specs = Vec::new();
    for (outcome, _) in cases {
        specs.push(json!({"id": format!("luma-{outcome}"), "service": "luma",
                          "outcome": outcome, "duration_ms": 50}));
    }
    sim.create(json!({ "tasks": specs })).await;
    for (outcome, want) in cases {
        let id = format!("luma-{outcome}");
        let info = sim.get_json(&format!("/_sim/tasks/{id}")).await;
        assert_eq!(info["outcome"], want, "{outcome}");
        assert_eq!(info["family"], "flat_state");
        let seen = sim.until_settled("luma", &id).await;
        let last = &seen.last().unwrap().1;
        let expected = if want == "failed" {
            Seen::Failed
        } else {
            Seen::Succeeded
        };
        assert_eq!(classify("luma", last), expected, "{outcome}: {last}");
    }
}

#[tokio::test]
async fn batch_limit_pages_and_count_says_what_was_left_out() {
    let sim = start(SimArgs::default()).await;
    let ids = |service: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{service}-{i:03}")).collect()
    };
    let page_ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // Default pages: openai and webextrator 12, maestro 20, others everything.
    for (service, page) in [
        ("openai", 12),
        ("webextrator", 12),
        ("maestro", 20),
        ("veo", 30),
    ] {
        let all = ids(service, 30);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let v = sim.batch_at(service, &refs, json!({})).await;
        assert_eq!(page_ids(&v), all[..page], "{service}");
        assert_eq!(v["count"], 30, "{service}");
        // `limit` wins.
        let v = sim.batch_at(service, &refs, json!({"limit": 5})).await;
        assert_eq!(page_ids(&v), all[..5], "{service}");
        assert_eq!(v["count"], 30, "{service}");
    }
    // ... capped at 100 where the service pages, whole elsewhere.
    let all = ids("openai", 130);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let v = sim.batch_at("openai", &refs, json!({"limit": 1000})).await;
    assert_eq!(page_ids(&v), all[..100]);
    assert_eq!(v["count"], 130);
    let all = ids("producer", 130);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let v = sim
        .batch_at("producer", &refs, json!({"limit": 1000}))
        .await;
    assert_eq!(page_ids(&v), all[..]);
    assert_eq!(v["count"], 130);
    // Unknown IDs neither take a place nor count; the order is the request's.
    let mixed = [
        "openai-005",
        "missing-1",
        "openai-001",
        "openai-003",
        "producer-000",
        "openai-002",
    ];
    let v = sim.batch_at("openai", &mixed, json!({"limit": 2})).await;
    assert_eq!(page_ids(&v), ["openai-005", "openai-001"]);
    assert_eq!(v["count"], 4);
    let v = sim.batch_at("openai", &mixed, json!({"limit": 6})).await;
    assert_eq!(
        page_ids(&v),
        ["openai-005", "openai-001", "openai-003", "openai-002"]
    );
    assert_eq!(v["count"], 4);
}

/// The documented records, from the repository's fixtures.
fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../../tests/fixtures/upstream-records/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// The fixture each service's replay test uses (`None`: no documented record).
fn replay_fixture(service: &str) -> Option<String> {
    match service {
        "qwen-image" | "pika" => None,
        "seedream" => Some("seedream-succeeded-2.json".into()),
        "captcha" => Some("captcha-failed-1.json".into()),
        _ => Some(format!("{service}-succeeded-1.json")),
    }
}

#[tokio::test]
async fn replayed_records_get_the_id_where_each_service_keeps_it() {
    let sim = start(SimArgs::default()).await;
    let mut cases = Vec::new();
    let mut specs = Vec::new();
    for p in SERVICES {
        let Some(file) = replay_fixture(p.name) else {
            continue;
        };
        let record = fixture(&file);
        let id = format!("replay-{}", p.name);
        specs.push(json!({"id": id, "service": p.name, "record": record, "duration_ms": 300}));
        cases.push((p.name, id, record));
    }
    sim.create(json!({ "tasks": specs })).await;
    // Before the duration: the service's own running shape.
    for (service, id, record) in &cases {
        let (_, r) = sim.get(service, id).await;
        assert_ne!(r, *record, "{service}");
        assert_eq!(classify(service, &r), Seen::Running, "{service}: {r}");
    }
    for (service, id, record) in &cases {
        let mut want = record.clone();
        match *service {
            "minimax" => want["task"]["id"] = id.as_str().into(),
            "captcha" | "digital-human" => want["task_id"] = id.as_str().into(),
            "webextrator" => {
                want["id"] = id.as_str().into();
                want["task_id"] = id.as_str().into();
            }
            _ => want["id"] = id.as_str().into(),
        }
        let deadline = Instant::now() + Duration::from_secs(4);
        let status = loop {
            let (status, r) = sim.get(service, id).await;
            if r == want {
                break status;
            }
            assert!(Instant::now() < deadline, "{service}: never replayed: {r}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(status, if *service == "captcha" { 504 } else { 200 });
        if family(service) != "single" {
            let v = sim.batch_at(service, &[id], json!({})).await;
            let item = &v["items"][0];
            let bare = if *service == "minimax" {
                &want["task"]
            } else {
                &want
            };
            assert_eq!(item, bare, "{service}");
        }
    }
}

#[tokio::test]
async fn an_empty_record_makes_the_id_unknown() {
    let sim = start(SimArgs::default()).await;
    let notfound = fixture("dreamina-notfound-1.json");
    assert_eq!(notfound, json!({}));
    let cases = [
        ("dreamina", 200, json!({})),
        ("openai", 200, json!({})),
        ("producer", 404, Value::Null),
        ("captcha", 404, Value::Null),
    ];
    for (service, ..) in &cases {
        sim.create(json!({"id": format!("gone-{service}"), "service": service,
                          "record": notfound, "duration_ms": 50}))
            .await;
    }
    for (service, status, body) in cases {
        let id = format!("gone-{service}");
        let (s, v) = sim.get(service, &id).await;
        assert_eq!(s, status, "{service}: {v}");
        if !body.is_null() {
            assert_eq!(v, body, "{service}");
        }
        if family(service) != "single" {
            let v = sim.batch_at(service, &[&id], json!({})).await;
            assert_eq!(v["items"], json!([]), "{service}");
            assert_eq!(v["count"], 0, "{service}");
        }
    }
    let info = sim.get_json("/_sim/tasks/gone-openai").await;
    assert_eq!(info["replay"], true);
}

#[tokio::test]
async fn bad_task_specs_are_refused() {
    let sim = start(SimArgs::default()).await;
    for spec in [
        json!({"service": "nope"}),
        json!({"service": "veo", "record": [1, 2]}),
    ] {
        let (status, v) = sim.call("/_sim/tasks", spec.clone()).await;
        assert_eq!(status, 400, "{spec}: {v}");
        assert_eq!(v["error"]["code"], "bad_request");
    }
}

#[tokio::test]
async fn unknown_services_are_404_unless_any_service() {
    let sim = start(SimArgs::default()).await;
    let (status, v) = sim.get("nope", "x").await;
    assert_eq!(status, 404);
    assert_eq!(v["success"], false);
    assert_eq!(v["error"]["code"], "not_found");
    let (status, _) = sim
        .call(
            "/nope/tasks",
            json!({"ids": ["x"], "action": "retrieve_batch"}),
        )
        .await;
    assert_eq!(status, 404);

    let any = start(SimArgs {
        any_service: true,
        ..SimArgs::default()
    })
    .await;
    let (status, r) = any.get("nope", "x").await;
    assert_eq!(status, 200);
    assert_eq!(r["id"], "x");
    assert_eq!(r["type"], "nope");
    any.create(json!({"id": "y", "service": "custom", "duration_ms": 50}))
        .await;
    let seen = any.poll_until_at("custom", "y").await;
    let last = seen.last().unwrap();
    assert_eq!(last["response"]["data"][0]["state"], "succeeded", "{last}");
    // A task belongs to its service: under another name it is unknown.
    let v = any.batch_at("veo", &["y"], json!({})).await;
    assert_eq!(v["count"], 0);
    let info = any.get_json("/_sim/tasks/y").await;
    assert_eq!(info["service"], "custom");
    assert_eq!(info["family"], "items");
}

impl TestSim {
    /// Polls `id` at `service` (producer shape) until `finished_at` appears.
    async fn poll_until_at(&self, service: &str, id: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(4);
        let mut seen = Vec::new();
        loop {
            let (_, r) = self.get(service, id).await;
            let done = r.get("finished_at").is_some();
            seen.push(r);
            if done {
                return seen;
            }
            assert!(Instant::now() < deadline, "{service} {id}: never finished");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn stats_count_services_and_limit_mismatches() {
    let sim = start(SimArgs::default()).await;
    sim.batch_at("veo", &["a", "b"], json!({"limit": 2})).await;
    sim.batch_at("veo", &["a", "b"], json!({})).await;
    sim.batch_at("veo", &["a", "b", "c"], json!({"limit": 2}))
        .await;
    sim.batch_at("openai", &["a"], json!({"limit": 1})).await;
    sim.get("captcha", "c1").await;
    sim.get("nope", "x").await;
    let s = sim.get_json("/_sim/stats").await;
    assert_eq!(
        s["requests_by_service"],
        json!({"veo": 3, "openai": 1, "captcha": 1, "nope": 1})
    );
    assert_eq!(s["limit_mismatches"], 2);
    assert_eq!(s["batch_requests"], 4);
    assert_eq!(s["single_requests"], 1);
    assert_eq!(s["requests"], 6);
    assert_eq!(s["statuses"], json!({"200": 5, "404": 1}));
    sim.post("/_sim/reset", json!({})).await;
    let s = sim.get_json("/_sim/stats").await;
    assert_eq!(s["requests_by_service"], json!({}));
    assert_eq!(s["limit_mismatches"], 0);
}

/// Every key path of `v` (arrays: their elements merged), below `prefix`.
fn key_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let p = format!("{prefix}.{k}");
                out.insert(p.clone());
                key_paths(x, &p, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                key_paths(x, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn settled_records_carry_the_documented_keys() {
    let sim = start(SimArgs::default()).await;
    // Full documented records (not abbreviated or illustrative), outside the
    // items family (whose shape is the simulator's historical producer shape).
    let documented = [
        "suno",
        "midjourney",
        "luma",
        "kling",
        "seedance",
        "nano-banana",
        "flux",
        "wan",
        "fish",
        "pixverse",
        "qrart",
        "headshots",
        "openai",
        "maestro",
        "dreamina",
        "minimax",
        "captcha",
        "webextrator",
    ];
    let mut specs = Vec::new();
    for s in documented {
        specs.push(json!({"id": format!("k-{s}"), "service": s, "duration_ms": 50, "items": 2}));
    }
    sim.create(json!({ "tasks": specs })).await;
    for s in documented {
        let id = format!("k-{s}");
        let mut got = sim.until_settled(s, &id).await.pop().unwrap().1;
        let mut want = fixture(&format!("{s}-succeeded-1.json"));
        if s == "minimax" {
            (got, want) = (got["task"].take(), want["task"].take());
        }
        let (mut g, mut w) = (BTreeSet::new(), BTreeSet::new());
        // Where the result lives: every documented key path is there.
        let carrier = if ["maestro", "minimax", "captcha", "webextrator"].contains(&s) {
            ""
        } else {
            ".response"
        };
        let pick = |v: &Value| {
            if carrier.is_empty() {
                v.clone()
            } else {
                v["response"].clone()
            }
        };
        key_paths(&pick(&got), carrier, &mut g);
        key_paths(&pick(&want), carrier, &mut w);
        let missing: Vec<&String> = w
            .difference(&g)
            .filter(|p| !p.starts_with(".request"))
            .collect();
        assert!(missing.is_empty(), "{s}: missing {missing:?} in {got}");
        // The timestamps and the record type are the documented ones.
        for k in ["started_at", "finished_at", "elapsed"] {
            let documented = want.get(k).is_some();
            assert_eq!(got.get(k).is_some(), documented, "{s}: {k} in {got}");
        }
        assert_eq!(got.get("type"), want.get("type"), "{s}");
    }
}
