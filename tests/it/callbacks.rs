//! Callbacks as hints (contract §5): the upstream's call to
//! `/v1/callbacks/{service}` makes the task it names be polled at once, and
//! only the poll decides; forged, unknown, oversized or flooding callbacks
//! change nothing but counters.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::*;

/// A daemon that polls new tasks only after a minute: anything delivered
/// sooner was found through a callback.
fn slow_poller(dir: &std::path::Path, sim: &str, extra: &str) -> std::path::PathBuf {
    let cfg = daemon_config(dir, sim, extra);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("first_poll_after = \"100ms\"", "first_poll_after = \"60s\"")
        .replace("interval = \"200ms\"", "interval = \"60s\"")
        .replace("max_interval = \"400ms\"", "max_interval = \"60s\"")
        .replace("[api]\n", "[api]\ncallbacks_per_second_per_source = 20\n");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

async fn callback(url: &str, body: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn sim_requests(sim: &str) -> u64 {
    let (_, st) = get_json(&format!("{sim}/_sim/stats")).await;
    st["requests"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_makes_its_task_be_polled_at_once_and_the_poll_decides() {
    let sim = spawn_sim(&[]);
    let receiver = Receiver::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = slow_poller(
        dir.path(),
        &sim.url,
        &webhook_toml("r", &receiver.url, None),
    );
    set_api_token(&cfg, "api-tok");
    let daemon = spawn_daemon(&cfg);
    let hook = format!("{}/v1/callbacks/suno?token=api-tok", daemon.url);
    let http = reqwest::Client::new();
    let enqueue = |id: &'static str| {
        let http = http.clone();
        let url = format!("{}/v1/tasks", daemon.url);
        async move {
            let r = http
                .post(url)
                .bearer_auth("api-tok")
                .json(&json!({"id": id, "service": "suno"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
    };

    // The upstream calls back when the task settles: delivered at once,
    // not after the minute the schedule says.
    enqueue("cb-1").await;
    let started = Instant::now();
    sim_create(
        &sim.url,
        vec![json!({"id": "cb-1", "service": "suno", "duration_ms": 300, "callback_url": hook})],
    )
    .await;
    eventually(
        "delivered through the callback",
        Duration::from_secs(20),
        || async {
            receiver
                .accepted_by_task()
                .contains_key("cb-1")
                .then_some(())
        },
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    let hit = &receiver.accepted_by_task()["cb-1"][0];
    assert_eq!(hit.body["type"], "task.succeeded");

    // A callback for a task still running: it is polled, the poll says
    // running, nothing is delivered, the task stays watched.
    enqueue("cb-2").await;
    sim_create(
        &sim.url,
        vec![json!({"id": "cb-2", "service": "suno", "outcome": "never"})],
    )
    .await;
    let before = sim_requests(&sim.url).await;
    let (s, v) = callback(&hook, r#"{"success": true, "task_id": "cb-2", "data": []}"#).await;
    assert_eq!((s, &v), (202, &json!({"received": true})));
    eventually("cb-2 polled once", Duration::from_secs(10), || async {
        (sim_requests(&sim.url).await > before).then_some(())
    })
    .await;
    let (_, t) = get_json_auth(&format!("{}/v1/tasks/cb-2", daemon.url), "api-tok").await;
    assert_eq!(t["status"], "watching", "{t}");
    assert_eq!(t["polls"], 1, "{t}");
    assert!(!receiver.accepted_by_task().contains_key("cb-2"));

    // Forged and unknown: the same answer, nothing polled, a counter moves.
    let before = sim_requests(&sim.url).await;
    for body in [
        r#"{"task_id": "never-enqueued"}"#,
        r#"{"id": "also-unknown", "success": false}"#,
        r#"{"nothing": "here"}"#,
        r#"[1, 2, 3]"#,
    ] {
        let (s, v) = callback(&hook, body).await;
        assert_eq!((s, &v), (202, &json!({"received": true})), "{body}");
    }
    assert_eq!(
        metric_value(&daemon.url, "taskhook_callbacks_total{result=\"no_id\"} ").await,
        Some(2.0)
    );
    // A task of another service is not touched by a callback for this one.
    let (s, _) = callback(
        &format!("{}/v1/callbacks/midjourney?token=api-tok", daemon.url),
        r#"{"task_id": "cb-2"}"#,
    )
    .await;
    assert_eq!(s, 202);

    // Refused outright: not JSON, too large, unknown service, no token.
    assert_eq!(callback(&hook, "{not json").await.0, 400);
    let huge = format!(r#"{{"task_id": "cb-2", "pad": "{}"}}"#, "x".repeat(300_000));
    let (s, v) = callback(&hook, &huge).await;
    assert_eq!(s, 413, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("api.max_callback_bytes")
    );
    let (s, _) = callback(
        &format!("{}/v1/callbacks/nope?token=api-tok", daemon.url),
        "{}",
    )
    .await;
    assert_eq!(s, 404);
    let (s, v) = callback(
        &format!("{}/v1/callbacks/suno", daemon.url),
        r#"{"task_id": "cb-2"}"#,
    )
    .await;
    assert_eq!(s, 401, "{v}");
    let (s, _) = callback(
        &format!("{}/v1/callbacks/suno?token=wrong", daemon.url),
        "{}",
    )
    .await;
    assert_eq!(s, 401);

    // A flood from one source: answered, counted, capped.
    let flood: Vec<_> = (0..200)
        .map(|i| {
            let hook = hook.clone();
            async move {
                callback(&hook, &format!(r#"{{"task_id": "flood-{i}"}}"#))
                    .await
                    .0
            }
        })
        .collect();
    let answers = futures::future::join_all(flood).await;
    assert!(answers.iter().all(|s| *s == 202));
    let limited = metric_value(
        &daemon.url,
        "taskhook_callbacks_total{result=\"rate_limited\"} ",
    )
    .await
    .unwrap_or(0.0);
    assert!(limited >= 100.0, "{limited} of 200 rate limited");

    // None of it polled anything but cb-2, delivered anything, or touched the queue.
    let after = sim_requests(&sim.url).await;
    assert!(
        after - before <= 1,
        "{} requests for forged callbacks",
        after - before
    );
    let (_, st) = get_json_auth(&format!("{}/v1/stats", daemon.url), "api-tok").await;
    assert_eq!(st["tasks"]["watching"], 1, "{st}");
    assert_eq!(receiver.hits().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_token_is_the_only_one_a_callback_url_takes() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim.url, "");
    set_api_token(&cfg, "api-tok");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[api]\n", "[api]\ncallback_token = \"cb-tok\"\n");
    std::fs::write(&cfg, text).unwrap();
    let daemon = spawn_daemon(&cfg);
    let at = |token: &str| format!("{}/v1/callbacks/suno?token={token}", daemon.url);
    assert_eq!(callback(&at("cb-tok"), "{}").await.0, 202);
    assert_eq!(callback(&at("api-tok"), "{}").await.0, 401);
    // The callback token opens nothing else.
    let r = reqwest::Client::new()
        .get(format!("{}/v1/stats", daemon.url))
        .bearer_auth("cb-tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// A callback that arrives while its task's poll is on the way (the
/// upstream read the task as running, its answer is slow) is not lost: the
/// task is polled again as soon as that round is recorded, not at its next
/// planned poll a minute later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_during_its_tasks_poll_is_kept_for_the_next() {
    let sim = spawn_sim(&[]);
    let receiver = Receiver::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &sim.url,
        &webhook_toml("r", &receiver.url, None),
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("interval = \"200ms\"", "interval = \"60s\"")
        .replace("max_interval = \"400ms\"", "max_interval = \"60s\"");
    std::fs::write(&cfg, text).unwrap();
    // The first request (100 ms after the enqueue) is answered 4 s late,
    // as the task was when it arrived; the task settles at 2 s (and calls
    // back) meanwhile.
    let (s, _) = post_json(
        &format!("{}/_sim/faults", sim.url),
        &json!({"script": ["slow"], "slow_ms": 4000}),
    )
    .await;
    assert_eq!(s, 200);
    let daemon = spawn_daemon(&cfg);
    let hook = format!("{}/v1/callbacks/suno", daemon.url);
    sim_create(
        &sim.url,
        vec![
            json!({"id": "inflight", "service": "suno", "duration_ms": 2000, "callback_url": hook}),
        ],
    )
    .await;
    let started = Instant::now();
    let (s, _) = post_json(
        &format!("{}/v1/tasks", daemon.url),
        &json!({"id": "inflight", "service": "suno"}),
    )
    .await;
    assert_eq!(s, 202);
    eventually(
        "delivered after the slow poll, through the kept hint",
        Duration::from_secs(30),
        || async {
            receiver
                .accepted_by_task()
                .contains_key("inflight")
                .then_some(())
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "not left to the next planned poll"
    );
    let hit = &receiver.accepted_by_task()["inflight"][0];
    assert_eq!(hit.body["type"], "task.succeeded");
    // Two polls: the slow one (running) and the one the hint asked for.
    assert_eq!(sim_requests(&sim.url).await, 2);
    assert_eq!(
        metric_value(&daemon.url, "taskhook_callback_hinted_tasks_total ").await,
        Some(1.0)
    );
}
