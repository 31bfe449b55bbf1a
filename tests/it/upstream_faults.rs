//! The upstream misbehaving: faults of every kind, a refused token, refused
//! batch sizes. Whatever happens, no ID is dropped.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_kind_is_survived_without_losing_an_id() {
    let sim = spawn_sim(&[]);
    let a = Receiver::start(Some(SECRET_A)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &sim.url,
        &webhook_toml("a", &a.url, Some(SECRET_A)),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "request_timeout = \"5s\"\nbackoff",
        "request_timeout = \"300ms\"\nbackoff",
    );
    std::fs::write(&cfg, text).unwrap();
    let (s, _) = post_json(
        &format!("{}/_sim/faults", sim.url),
        &json!({"script": ["429", "500", "502-html", "truncated", "reset", "slow", "429-no-retry-after", "503-html"], "slow_ms": 2000}),
    )
    .await;
    assert_eq!(s, 200);
    let ids: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
    sim_create_ids(&sim.url, &ids, 100).await;
    let daemon = spawn_daemon(&cfg);
    enqueue_ids(&daemon.url, &ids).await;
    eventually(
        "every task despite the faults",
        Duration::from_secs(60),
        || async { (a.accepted_by_task().len() == ids.len()).then_some(()) },
    )
    .await;
    for hits in a.accepted_by_task().values() {
        assert_eq!(hits.len(), 1);
    }
    let (_, stats) = get_json(&format!("{}/_sim/stats", sim.url)).await;
    let faults: u64 = stats["faults"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(faults, 8, "{stats}");
    let (_, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
    assert!(st["upstream"]["failures"].as_u64().unwrap() >= 8, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_pauses_polling_until_a_reload_fixes_it() {
    let sim = spawn_sim(&["--token", "right"]);
    let a = Receiver::start(Some(SECRET_A)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &sim.url,
        &webhook_toml("a", &a.url, Some(SECRET_A)),
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("token = \"test-token\"", "token = \"wrong\"");
    std::fs::write(&cfg, &text).unwrap();
    let daemon = spawn_daemon(&cfg);
    sim_create(&sim.url, vec![json!({"id": "t1", "duration_ms": 50})]).await;
    enqueue_ids(&daemon.url, &["t1".to_string()]).await;

    let ready = format!("{}/readyz", daemon.url);
    let body = eventually("readyz to fail", Duration::from_secs(10), || async {
        let (s, v) = get_json(&ready).await;
        (s == 503).then_some(v)
    })
    .await;
    assert!(
        body["problems"][0].as_str().unwrap().contains("token"),
        "{body}"
    );
    let (_, t) = get_json(&format!("{}/v1/tasks/t1", daemon.url)).await;
    assert_eq!(t["status"], "watching", "the ID is kept");
    // Paused: no more requests reach the upstream.
    let (_, before) = get_json(&format!("{}/_sim/stats", sim.url)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, after) = get_json(&format!("{}/_sim/stats", sim.url)).await;
    assert_eq!(before["requests"], after["requests"], "polling is paused");

    std::fs::write(&cfg, text.replace("token = \"wrong\"", "token = \"right\"")).unwrap();
    daemon.signal("HUP");
    eventually(
        "delivery after the reload",
        Duration::from_secs(15),
        || async { a.accepted_by_task().contains_key("t1").then_some(()) },
    )
    .await;
    let (s, _) = get_json(&ready).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_size_is_halved_until_it_fits() {
    let sim = spawn_sim(&["--max-batch", "10"]);
    let a = Receiver::start(Some(SECRET_A)).await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = spawn_daemon(&daemon_config(
        dir.path(),
        &sim.url,
        &webhook_toml("a", &a.url, Some(SECRET_A)),
    ));
    let ids: Vec<String> = (0..60).map(|i| format!("b{i}")).collect();
    sim_create_ids(&sim.url, &ids, 300).await;
    enqueue_ids(&daemon.url, &ids).await;
    eventually("every task", Duration::from_secs(30), || async {
        (a.accepted_by_task().len() == ids.len()).then_some(())
    })
    .await;
    let (_, stats) = get_json(&format!("{}/_sim/stats", sim.url)).await;
    assert!(
        stats["statuses"]["400"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );
    assert!(stats["statuses"]["200"].as_u64().unwrap() >= 6, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiting_halves_the_request_rate_and_it_climbs_back() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    // One ID per request: many requests, so successes raise the rate fast.
    let cfg = daemon_config(dir.path(), &sim.url, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("batch_size = 50", "batch_size = 1");
    std::fs::write(&cfg, text).unwrap();
    let daemon = spawn_daemon(&cfg);
    let stats = format!("{}/v1/stats", daemon.url);
    let (_, st) = get_json(&stats).await;
    assert_eq!(st["upstream"]["requests_per_second"], 200.0, "{st}");
    let (s, v) = post_json(
        &format!("{}/_sim/faults", sim.url),
        &json!({"script": ["429", "429"]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
    sim_create(
        &sim.url,
        ids.iter()
            .map(|id| json!({"id": id, "outcome": "never"}))
            .collect(),
    )
    .await;
    enqueue_ids(&daemon.url, &ids).await;
    let st = eventually("two 429s seen", Duration::from_secs(10), || async {
        let (_, st) = get_json(&stats).await;
        (st["upstream"]["failures"].as_u64() >= Some(2)).then_some(st)
    })
    .await;
    let lowered = st["upstream"]["requests_per_second"].as_f64().unwrap();
    // Halved twice from 200/s (once would be 100), plus the few successes
    // since (0.25/s each).
    assert!(
        (50.0..=60.0).contains(&lowered),
        "halved twice from 200/s: {st}"
    );
    let st = eventually(
        "the rate climbing back",
        Duration::from_secs(20),
        || async {
            let (_, st) = get_json(&stats).await;
            let rate = st["upstream"]["requests_per_second"].as_f64().unwrap();
            (rate >= lowered + 5.0).then_some(st)
        },
    )
    .await;
    assert!(
        st["upstream"]["requests_per_second"].as_f64().unwrap() <= 200.0,
        "never above the configured rate: {st}"
    );
    assert_eq!(st["upstream"]["failures"], 2, "no other failure: {st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_tried_again_every_token_retry_and_polling_resumes_by_itself() {
    let sim = spawn_sim(&[]);
    let a = Receiver::start(Some(SECRET_A)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &sim.url,
        &webhook_toml("a", &a.url, Some(SECRET_A)),
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("batch_size = 50", "batch_size = 50\ntoken_retry = \"1s\"");
    std::fs::write(&cfg, text).unwrap();
    let daemon = spawn_daemon(&cfg);
    // The upstream refuses the token twice, then accepts it again.
    let (s, v) = post_json(
        &format!("{}/_sim/faults", sim.url),
        &json!({"script": ["401", "401"]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    sim_create(&sim.url, vec![json!({"id": "t1", "duration_ms": 50})]).await;
    let started = std::time::Instant::now();
    enqueue_ids(&daemon.url, &["t1".to_string()]).await;

    let ready = format!("{}/readyz", daemon.url);
    let body = eventually("readyz to fail", Duration::from_secs(10), || async {
        let (s, v) = get_json(&ready).await;
        (s == 503).then_some(v)
    })
    .await;
    assert!(
        body["problems"][0].as_str().unwrap().contains("token"),
        "{body}"
    );
    // No SIGHUP, no restart: the token is tried again and polling resumes.
    eventually(
        "delivery after the token is accepted again",
        Duration::from_secs(15),
        || async { a.accepted_by_task().contains_key("t1").then_some(()) },
    )
    .await;
    let took = started.elapsed();
    let (_, stats) = get_json(&format!("{}/_sim/stats", sim.url)).await;
    assert_eq!(stats["statuses"]["401"], 2, "{stats}");
    // Each refusal paused polling for token_retry (1 s) before the next try,
    // and not for the default minute.
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(15),
        "{took:?}"
    );
    eventually("ready again", Duration::from_secs(5), || async {
        let (s, _) = get_json(&ready).await;
        (s == 200).then_some(())
    })
    .await;
}
