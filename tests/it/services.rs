//! Every AceData service through the whole daemon: the simulator replays
//! every documented record (`tests/fixtures/upstream-records/`), the daemon
//! polls each service its own way, and the receiver gets the documented
//! event. Also: a service that pages its answers, unknown state words, and
//! a profile override applied by SIGHUP.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// Every single-record fixture: (task ID, service, documented state, record).
fn fixtures() -> Vec<(String, String, String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream-records");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let mut parts: Vec<&str> = stem.rsplitn(3, '-').collect();
        parts.reverse();
        let [service, state, _] = parts[..] else {
            panic!("{name}")
        };
        if state == "batch" {
            continue;
        }
        let record: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        out.push((format!("fx-{stem}"), service.into(), state.into(), record));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn event_for(state: &str) -> Option<&'static str> {
    match state {
        "succeeded" => Some("task.succeeded"),
        "failed" => Some("task.failed"),
        "notfound" => Some("task.not_found"),
        "running" | "unknown" | "deleted" => None,
        other => panic!("no expectation for {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_record_reaches_the_receiver_as_its_documented_event() {
    let sim = spawn_sim(&[]);
    let receiver = Receiver::start(Some(SECRET_A)).await;
    let dir = tempfile::tempdir().unwrap();
    let hook = webhook_toml("pipeline", &receiver.url, Some(SECRET_A));
    let daemon = spawn_daemon(&daemon_config(dir.path(), &sim.url, &hook));

    let fx = fixtures();
    assert_eq!(fx.len(), 50);
    let specs = fx
        .iter()
        .map(|(id, service, _, record)| {
            json!({"id": id, "service": service, "record": record, "duration_ms": 300})
        })
        .collect();
    sim_create(&sim.url, specs).await;
    let tasks: Vec<Value> = fx
        .iter()
        .map(|(id, service, _, _)| json!({"id": id, "service": service}))
        .collect();
    let (s, v) = post_json(
        &format!("{}/v1/tasks", daemon.url),
        &json!({"tasks": tasks}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["accepted"], 50);

    let settling = fx.iter().filter(|f| event_for(&f.2).is_some()).count();
    let got = eventually(
        "every settling record's event",
        Duration::from_secs(60),
        || async {
            let got = receiver.accepted_by_task();
            (got.len() >= settling).then_some(got)
        },
    )
    .await;
    let by_id: HashMap<&str, &(String, String, String, Value)> =
        fx.iter().map(|f| (f.0.as_str(), f)).collect();
    for (id, hits) in &got {
        let (_, service, state, record) = by_id[id.as_str()];
        let want = event_for(state).unwrap_or_else(|| panic!("{id} ({state}) must not settle"));
        assert_eq!(hits.len(), 1, "{id}: one event");
        let hit = &hits[0];
        assert!(hit.signature_ok, "{id}");
        assert_eq!(hit.body["type"], want, "{id} under the {service} profile");
        assert_eq!(hit.body["data"]["service"], service.as_str());
        let task = &hit.body["data"]["task"];
        if want == "task.not_found" {
            assert!(task.is_null(), "{id}: {task}");
        } else if let Some(response) = record.get("response") {
            // The upstream record is forwarded as received.
            assert_eq!(&task["response"], response, "{id}");
        }
    }
    // The documented running, unknown and deleted shapes are still watched.
    for (id, _, state, _) in fx.iter().filter(|f| event_for(&f.2).is_none()) {
        assert!(!got.contains_key(id), "{id} ({state}) settled");
        let (s, v) = get_json(&format!("{}/v1/tasks/{id}", daemon.url)).await;
        assert_eq!(
            (s, v["status"].as_str()),
            (200, Some("watching")),
            "{id}: {v}"
        );
        assert!(v["polls"].as_u64().unwrap() > 0, "{id} was polled: {v}");
    }
    // Each request asked for exactly the IDs it named, at its own path.
    let (_, st) = get_json(&format!("{}/_sim/stats", sim.url)).await;
    assert_eq!(st["limit_mismatches"], 0, "{st}");
    for service in [
        "minimax",
        "captcha",
        "digital-human",
        "webextrator",
        "kling",
        "maestro",
    ] {
        assert!(
            st["requests_by_service"][service].as_u64().unwrap_or(0) > 0,
            "{service} was polled at its own path: {st}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_pages_its_answers_is_asked_in_smaller_batches() {
    // An upstream that serves at most 12 items per answer, whatever `limit`
    // says; its `count` says how many it knows.
    let sim = spawn_sim(&["--page-size", "12"]);
    let receiver = Receiver::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let hook = webhook_toml("pipeline", &receiver.url, None);
    let cfg = daemon_config(dir.path(), &sim.url, &hook);
    let daemon = spawn_daemon(&cfg);
    let ids: Vec<String> = (0..60).map(|i| format!("page-{i}")).collect();
    sim_create_ids(&sim.url, &ids, 300).await;
    enqueue_ids(&daemon.url, &ids).await;
    let got = eventually("all 60 events", Duration::from_secs(40), || async {
        let got = receiver.accepted_by_task();
        (got.len() == 60).then_some(got)
    })
    .await;
    for (id, hits) in got {
        assert_eq!(
            hits[0].body["type"], "task.succeeded",
            "{id}: the IDs left out are no misses"
        );
    }
    let (_, st) = get_json(&format!("{}/_sim/stats", sim.url)).await;
    assert_eq!(
        st["max_ids_per_request"], 50,
        "the first batch is full: {st}"
    );
    // After the first short answer, batches shrink to the page: 60 IDs
    // cannot take fewer than 5 requests a round.
    assert!(st["batch_requests"].as_u64().unwrap() >= 5, "{st}");
}

/// Sends SIGHUP to `pid`.
fn hup(pid: u32) {
    // SAFETY: kill(2) with a valid pid and signal number has no memory effects.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    assert_eq!(
        rc,
        0,
        "kill -HUP {pid}: {}",
        std::io::Error::last_os_error()
    );
}

/// The value of `taskhook_upstream_unknown_states_total` for (service, word).
async fn unknown_count(api: &str, service: &str, word: &str) -> f64 {
    let text = reqwest::get(format!("{api}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let want =
        format!("taskhook_upstream_unknown_states_total{{service=\"{service}\",word=\"{word}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_words_are_counted_and_an_override_applied_by_sighup_settles_them() {
    let sim = spawn_sim(&[]);
    let receiver = Receiver::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let hook = webhook_toml("pipeline", &receiver.url, None);
    let cfg = daemon_config(dir.path(), &sim.url, &hook);
    let log = dir.path().join("daemon.log");
    let (mut child, api) = spawn_daemon_logging(&cfg, "taskhook=info", &log);

    // A producer task whose items say a word nobody documented.
    let record = json!({"id": "w1", "request": {}, "response": {"task_id": "w1", "data": [
        {"id": "i1", "state": "Baked", "audio_url": "https://cdn.example/1.mp3"}
    ]}});
    sim_create(
        &sim.url,
        vec![json!({"id": "w1", "record": record, "duration_ms": 0})],
    )
    .await;
    sim_create(&sim.url, vec![json!({"id": "h1", "duration_ms": 100})]).await;
    enqueue_ids(&api, &["w1".to_string()]).await;
    // A service described nowhere is refused.
    let in_house = json!({"id": "h1", "service": "in-house"});
    let (s, v) = post_json(&format!("{api}/v1/tasks"), &in_house).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("unknown_service")),
        "{v}"
    );

    eventually(
        "the word counted on two polls",
        Duration::from_secs(20),
        || async { (unknown_count(&api, "producer", "baked").await >= 2.0).then_some(()) },
    )
    .await;
    let (_, t) = get_json(&format!("{api}/v1/tasks/w1")).await;
    assert_eq!(
        t["status"], "watching",
        "an unknown word is still running: {t}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("unknown state word"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "logged once per service and word: {lines:?}"
    );
    assert!(
        lines[0].contains("\"word\":\"baked\"") && lines[0].contains("\"service\":\"producer\"")
    );

    // The operator teaches the profile the word and describes the new
    // service, then reloads.
    let text = std::fs::read_to_string(&cfg).unwrap()
        + "\n[upstream.services.producer]\nsuccess_words = [\"succeeded\", \"baked\"]\n\
           [upstream.services.in-house]\ntasks_path = \"/producer/tasks\"\n";
    std::fs::write(&cfg, text).unwrap();
    hup(child.id());
    eventually(
        "w1 settles under the new words",
        Duration::from_secs(20),
        || async {
            let got = receiver.accepted_by_task();
            got.get("w1").map(|h| h[0].body["type"].clone())
        },
    )
    .await;
    assert_eq!(
        receiver.accepted_by_task()["w1"][0].body["type"],
        "task.succeeded"
    );
    let (s, v) = post_json(&format!("{api}/v1/tasks"), &in_house).await;
    assert_eq!(s, 202, "the new service is known after SIGHUP: {v}");
    let hit = eventually("h1's event", Duration::from_secs(20), || async {
        receiver.accepted_by_task().get("h1").map(|h| h[0].clone())
    })
    .await;
    assert_eq!(hit.body["data"]["service"], "in-house");
    assert_eq!(hit.body["type"], "task.succeeded");
    let _ = child.kill();
    let _ = child.wait();
}

/// Every service the daemon knows, as the simulator speaks it.
const SERVICES: [&str; 29] = [
    "producer",
    "suno",
    "veo",
    "sora",
    "hailuo",
    "gemini",
    "grok",
    "happyhorse",
    "pika",
    "seedream",
    "nano-banana",
    "flux",
    "fish",
    "pixverse",
    "qwen-image",
    "headshots",
    "openai",
    "luma",
    "kling",
    "wan",
    "midjourney",
    "qrart",
    "seedance",
    "dreamina",
    "maestro",
    "minimax",
    "captcha",
    "digital-human",
    "webextrator",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_is_watched_through_its_running_shapes_to_the_right_event() {
    let sim = spawn_sim(&[]);
    let receiver = Receiver::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let hook = webhook_toml("pipeline", &receiver.url, None);
    let daemon = spawn_daemon(&daemon_config(dir.path(), &sim.url, &hook));
    let mut specs = Vec::new();
    let mut tasks = Vec::new();
    for s in SERVICES {
        for (outcome, items) in [("succeeded", 2), ("failed", 1)] {
            let id = format!("{s}-{outcome}");
            specs.push(json!({"id": id, "service": s, "outcome": outcome, "duration_ms": 900, "items": items}));
            tasks.push(json!({"id": id, "service": s}));
        }
    }
    sim_create(&sim.url, specs).await;
    let (s, v) = post_json(
        &format!("{}/v1/tasks", daemon.url),
        &json!({"tasks": tasks}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let got = eventually(
        "every service's two events",
        Duration::from_secs(60),
        || async {
            let got = receiver.accepted_by_task();
            (got.len() == SERVICES.len() * 2).then_some(got)
        },
    )
    .await;
    for s in SERVICES {
        for outcome in ["succeeded", "failed"] {
            let id = format!("{s}-{outcome}");
            let hit = &got[&id][0];
            assert_eq!(hit.body["type"], format!("task.{outcome}"), "{id}");
            // Never announced while the task was still running upstream.
            let (_, info) = get_json(&format!("{}/_sim/tasks/{id}", sim.url)).await;
            let finishes = info["finishes_at_ms"].as_i64().unwrap();
            assert!(
                hit.received_at_ms >= finishes,
                "{id}: announced {} ms early",
                finishes - hit.received_at_ms
            );
            assert!(
                info["polls"].as_u64().unwrap() >= 2,
                "{id} was seen running: {info}"
            );
        }
    }
}
