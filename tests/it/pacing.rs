//! Spending the request budget (contract §4 `poll.strategy`): every task
//! at the floor while the budget covers them, all alike slower when it does
//! not, within the rate; first polls learned from the durations of the
//! tasks that finished, kept across restarts.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

fn with_poll(cfg: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(cfg).unwrap();
    assert!(text.contains(from), "{from} not in the config");
    std::fs::write(cfg, text.replace(from, to)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_budget_every_task_is_polled_alike_at_the_interval_the_budget_allows() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim.url, "");
    with_poll(&cfg, "batch_size = 50", "batch_size = 2");
    with_poll(
        &cfg,
        "max_requests_per_second = 200",
        "max_requests_per_second = 5",
    );
    with_poll(&cfg, "interval = \"200ms\"", "interval = \"100ms\"");
    let daemon = spawn_daemon(&cfg);
    // 20 tasks that never finish, 2 per request, every 100 ms: 100
    // requests/s at the floor, 4 usable (80% of 5): every 2.5 s instead.
    let ids: Vec<String> = (0..20).map(|i| format!("b-{i}")).collect();
    sim_create(
        &sim.url,
        ids.iter()
            .map(|id| json!({"id": id, "outcome": "never"}))
            .collect(),
    )
    .await;
    enqueue_ids(&daemon.url, &ids).await;
    let polling = eventually(
        "the interval the budget allows",
        Duration::from_secs(15),
        || async {
            let (_, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
            (st["polling"]["effective_interval_ms"] == 2500).then(|| st["polling"].clone())
        },
    )
    .await;
    assert_eq!(polling["floor_interval_ms"], 100, "{polling}");
    assert_eq!(polling["strategy"], "budget");
    assert_eq!(polling["budget_requests_per_second"], 5.0);
    assert_eq!(polling["needed_at_floor_requests_per_second"], 100.0);
    assert_eq!(polling["services"][0]["watching"], 20, "{polling}");
    assert_eq!(
        metric_value(&daemon.url, "taskhook_poll_interval_seconds ").await,
        Some(2.5)
    );
    let out = taskhook_async(&["status", "--api", &daemon.url]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("every 2.5s (the budget cannot cover 100ms)"),
        "{text}"
    );

    // Every task is polled, none starved, within the rate.
    let (_, before) = get_json(&format!("{}/_sim/stats", sim.url)).await;
    let started = std::time::Instant::now();
    let api = daemon.url.clone();
    let all_polls = || {
        let (api, ids) = (api.clone(), ids.clone());
        async move {
            let polls = |v: Value| v["polls"].as_u64().unwrap_or(0);
            let mut out = Vec::new();
            for id in ids {
                out.push(polls(get_json(&format!("{api}/v1/tasks/{id}")).await.1));
            }
            out
        }
    };
    let first = all_polls().await;
    eventually(
        "every task polled twice more",
        Duration::from_secs(30),
        || async {
            let now = all_polls().await;
            now.iter()
                .zip(&first)
                .all(|(n, f)| *n >= f + 2)
                .then_some(())
        },
    )
    .await;
    let (_, after) = get_json(&format!("{}/_sim/stats", sim.url)).await;
    let requests = after["requests"].as_u64().unwrap() - before["requests"].as_u64().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        requests as f64 <= 5.0 * elapsed + 10.0,
        "{requests} requests in {elapsed:.1}s over a budget of 5/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_polls_are_learned_from_finished_tasks_and_kept_across_restarts() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim.url, "");
    let mut daemon = spawn_daemon(&cfg);
    // 24 tasks that each take about 1.5 s: the first poll moves there.
    let ids: Vec<String> = (0..24).map(|i| format!("l-{i}")).collect();
    sim_create(
        &sim.url,
        ids.iter()
            .map(|id| json!({"id": id, "service": "suno", "duration_ms": 1500}))
            .collect(),
    )
    .await;
    let body = json!({"tasks": ids.iter().map(|id| json!({"id": id, "service": "suno"})).collect::<Vec<_>>()});
    let (s, v) = post_json(&format!("{}/v1/tasks", daemon.url), &body).await;
    assert_eq!(s, 202, "{v}");
    let learned = eventually("learned from 20 tasks", Duration::from_secs(30), || async {
        let (_, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
        let services = st["polling"]["services"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        services
            .into_iter()
            .find(|s| s["service"] == "suno" && s["learned"]["count"].as_u64() >= Some(20))
    })
    .await;
    let first = learned["first_poll_after_ms"].as_u64().unwrap();
    assert!((1_000..=1_900).contains(&first), "{learned}");

    // A new task of that service is first polled then, not after 100 ms.
    let check = |id: &'static str, url: String| async move {
        let (s, v) = post_json(
            &format!("{url}/v1/tasks"),
            &json!({"id": id, "service": "suno"}),
        )
        .await;
        assert_eq!(s, 202, "{v}");
        let (_, t) = get_json(&format!("{url}/v1/tasks/{id}")).await;
        let at = |k: &str| humantime::parse_rfc3339(t[k].as_str().unwrap()).unwrap();
        at("next_poll_at")
            .duration_since(at("enqueued_at"))
            .unwrap()
    };
    let wait = check("new-1", daemon.url.clone()).await;
    assert!(wait >= Duration::from_millis(1_000), "{wait:?}");
    // Another service still starts at poll.first_poll_after.
    let (s, _) = post_json(
        &format!("{}/v1/tasks", daemon.url),
        &json!({"id": "other", "service": "midjourney"}),
    )
    .await;
    assert_eq!(s, 202);
    let (_, t) = get_json(&format!("{}/v1/tasks/other", daemon.url)).await;
    let at = |k: &str| humantime::parse_rfc3339(t[k].as_str().unwrap()).unwrap();
    assert!(
        at("next_poll_at")
            .duration_since(at("enqueued_at"))
            .unwrap()
            < Duration::from_millis(500)
    );

    // The learned durations are in the store: a restart keeps them.
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
    let daemon = spawn_daemon(&cfg);
    let wait = check("new-2", daemon.url.clone()).await;
    assert!(
        wait >= Duration::from_millis(1_000),
        "after a restart: {wait:?}"
    );
}
