//! Receivers misbehaving (contract §6): 410 Gone, redirects, slow answers,
//! concurrency caps; and the dead-letter commands of the CLI.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::*;
use serde_json::json;

fn hook(name: &str, r: &Receiver) -> String {
    webhook_toml(name, &r.url, None)
}

async fn deliveries_of(api: &str, task: &str) -> Vec<serde_json::Value> {
    let (_, v) = get_json(&format!("{api}/v1/tasks/{task}")).await;
    v["deliveries"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_stops_redirects_are_not_followed_and_slow_answers_time_out() {
    let sim = spawn_sim(&[]);
    let gone = Receiver::start(None).await;
    let redirect = Receiver::start(None).await;
    let target = Receiver::start(None).await;
    let slow = Receiver::start(None).await;
    gone.behaviour.lock().unwrap().status = Some(410);
    {
        let mut b = redirect.behaviour.lock().unwrap();
        b.status = Some(302);
        b.location = Some(target.url.clone());
    }
    slow.behaviour.lock().unwrap().delay = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        hook("gone", &gone),
        hook("redirect", &redirect),
        hook("slow", &slow),
    ]
    .concat();
    let cfg = daemon_config(dir.path(), &sim.url, &extra);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[delivery]\nretry_schedule = [\"100ms\", \"200ms\", \"300ms\"]\nrequest_timeout = \"5s\"",
        "[delivery]\nretry_schedule = [\"100ms\", \"100ms\"]\nrequest_timeout = \"300ms\"",
    );
    assert!(text.contains("request_timeout = \"300ms\""));
    std::fs::write(&cfg, text).unwrap();
    let daemon = spawn_daemon(&cfg);
    sim_create(&sim.url, vec![json!({"id": "g1", "duration_ms": 50})]).await;
    let (s, v) = post_json(&format!("{}/v1/tasks", daemon.url), &json!({"id": "g1"})).await;
    assert_eq!(s, 202, "{v}");

    let api = daemon.url.clone();
    let ds = eventually(
        "every delivery settled",
        Duration::from_secs(20),
        || async {
            let ds = deliveries_of(&api, "g1").await;
            (ds.len() == 3 && ds.iter().all(|d| d["state"] != "pending")).then_some(ds)
        },
    )
    .await;
    let by = |name: &str| ds.iter().find(|d| d["webhook"] == name).unwrap().clone();
    let g = by("gone");
    assert_eq!(
        (g["state"].as_str(), g["attempts"].as_u64()),
        (Some("gone"), Some(1)),
        "410 stops at once: {g}"
    );
    let r = by("redirect");
    assert_eq!(
        (
            r["state"].as_str(),
            r["attempts"].as_u64(),
            r["last_status"].as_u64()
        ),
        (Some("failed"), Some(3), Some(302)),
        "{r}"
    );
    assert!(target.hits().is_empty(), "the redirect was not followed");
    let s = by("slow");
    assert_eq!(
        (s["state"].as_str(), s["attempts"].as_u64()),
        (Some("failed"), Some(3)),
        "{s}"
    );
    assert!(
        s["last_error"].as_str().unwrap().contains("timed out"),
        "{s}"
    );
    assert_eq!(gone.hits().len(), 1);

    // The dead letters through the CLI: listed, then replayed.
    let out = taskhook_async(&["deliveries", "--api", &daemon.url, "--failed"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(
        text.lines().filter(|l| l.contains("g1")).count(),
        2,
        "{text}"
    );
    assert!(text.contains("HTTP 302"), "{text}");
    redirect.behaviour.lock().unwrap().status = Some(200);
    slow.behaviour.lock().unwrap().delay = Duration::ZERO;
    let out = taskhook_async(&["replay", "--api", &daemon.url, "--all-failed"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "replayed 2");
    eventually("the replays delivered", Duration::from_secs(15), || async {
        (redirect.accepted_by_task().contains_key("g1")
            && slow.accepted_by_task().contains_key("g1"))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_gets_at_most_its_cap_and_never_delays_the_others() {
    let sim = spawn_sim(&[]);
    let slow = Receiver::start(None).await;
    let fast = Receiver::start(None).await;
    slow.behaviour.lock().unwrap().delay = Duration::from_millis(300);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &sim.url,
        &[hook("slow", &slow), hook("fast", &fast)].concat(),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[delivery]\n",
        "[delivery]\nmax_concurrent_per_webhook = 2\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let daemon = spawn_daemon(&cfg);
    let ids: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    sim_create(
        &sim.url,
        ids.iter()
            .map(|id| json!({"id": id, "duration_ms": 50}))
            .collect(),
    )
    .await;
    enqueue_ids(&daemon.url, &ids).await;

    // The fast receiver has everything long before the slow one could.
    eventually("the fast receiver", Duration::from_secs(10), || async {
        (fast.accepted_by_task().len() == 20).then_some(())
    })
    .await;
    assert!(
        slow.hits().len() < 20,
        "the fast receiver did not wait for the slow one ({} slow hits)",
        slow.hits().len()
    );
    eventually("the slow receiver", Duration::from_secs(20), || async {
        (slow.accepted_by_task().len() == 20).then_some(())
    })
    .await;
    assert_eq!(
        slow.max_in_flight.load(Ordering::SeqCst),
        2,
        "max_concurrent_per_webhook holds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_from_a_receiver_is_honoured_within_the_schedule() {
    let sim = spawn_sim(&[]);
    let r = Receiver::start(Some(SECRET_A)).await;
    // 429 and 503 ask for 1 s (each step alone is 100 ms); then 503 asks for
    // an hour, which the schedule's last step (1.5 s) caps; then 200.
    r.script.lock().unwrap().extend([
        Answer::retry_after(429, "1"),
        Answer::retry_after(503, "1"),
        Answer::retry_after(503, "3600"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &sim.url,
        &webhook_toml("r", &r.url, Some(SECRET_A)),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        r#"retry_schedule = ["100ms", "200ms", "300ms"]"#,
        r#"retry_schedule = ["100ms", "100ms", "100ms", "1500ms"]"#,
    );
    std::fs::write(&cfg, text).unwrap();
    let daemon = spawn_daemon(&cfg);
    sim_create(&sim.url, vec![json!({"id": "ra1", "duration_ms": 50})]).await;
    enqueue_ids(&daemon.url, &["ra1".to_string()]).await;
    eventually("the fourth attempt", Duration::from_secs(20), || async {
        r.accepted_by_task().contains_key("ra1").then_some(())
    })
    .await;
    let hits = r.hits();
    assert_eq!(
        hits.iter().map(|h| h.status_sent).collect::<Vec<_>>(),
        vec![429, 503, 503, 200]
    );
    let gaps: Vec<i64> = hits
        .windows(2)
        .map(|w| w[1].received_at_ms - w[0].received_at_ms)
        .collect();
    assert!(gaps[0] >= 990, "429 Retry-After: 1 honoured: {gaps:?}");
    assert!(gaps[1] >= 990, "503 Retry-After: 1 honoured: {gaps:?}");
    assert!(
        (1490..4000).contains(&gaps[2]),
        "Retry-After: 3600 held to the last step (1.5 s): {gaps:?}"
    );
    let (_, t) = get_json(&format!("{}/v1/tasks/ra1", daemon.url)).await;
    assert_eq!(t["deliveries"][0]["attempts"], 4, "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_one_dead_letter_or_all_of_them() {
    let sim = spawn_sim(&[]);
    let r = Receiver::start(Some(SECRET_A)).await;
    r.behaviour.lock().unwrap().status = Some(500);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &sim.url,
        &webhook_toml("r", &r.url, Some(SECRET_A)),
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        r#"retry_schedule = ["100ms", "200ms", "300ms"]"#,
        r#"retry_schedule = ["50ms"]"#,
    );
    std::fs::write(&cfg, text).unwrap();
    let daemon = spawn_daemon(&cfg);
    let ids: Vec<String> = ["dl1", "dl2", "dl3"].map(String::from).to_vec();
    sim_create_ids(&sim.url, &ids, 50).await;
    enqueue_ids(&daemon.url, &ids).await;
    let failed_url = format!("{}/v1/deliveries?state=failed", daemon.url);
    let failed = eventually("three dead letters", Duration::from_secs(20), || async {
        let (_, v) = get_json(&failed_url).await;
        let list = v["deliveries"].as_array().cloned().unwrap_or_default();
        (list.len() == 3).then_some(list)
    })
    .await;
    r.behaviour.lock().unwrap().status = None;
    let id_of =
        |task: &str| failed.iter().find(|d| d["task_id"] == task).unwrap()["id"].to_string();

    // One by its ID: only that one is sent.
    let out = taskhook_async(&["replay", "--api", &daemon.url, &id_of("dl2")]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "replayed 1");
    eventually("the replayed delivery", Duration::from_secs(10), || async {
        r.accepted_by_task().contains_key("dl2").then_some(())
    })
    .await;
    let left = eventually("two dead letters left", Duration::from_secs(10), || async {
        let (_, v) = get_json(&failed_url).await;
        let list = v["deliveries"].as_array().cloned().unwrap_or_default();
        (list.len() == 2).then_some(list)
    })
    .await;
    let mut tasks: Vec<_> = left.iter().map(|d| d["task_id"].clone()).collect();
    tasks.sort_by_key(|t| t.to_string());
    assert_eq!(tasks, vec![json!("dl1"), json!("dl3")]);
    assert_eq!(r.accepted_by_task().len(), 1, "only dl2 was replayed");

    // The rest at once.
    let out = taskhook_async(&["replay", "--api", &daemon.url, "--all-failed"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "replayed 2");
    eventually(
        "every replayed delivery",
        Duration::from_secs(10),
        || async { (r.accepted_by_task().len() == 3).then_some(()) },
    )
    .await;
    for (task, hits) in r.accepted_by_task() {
        assert_eq!(hits.len(), 1, "{task}");
        assert!(hits[0].signature_ok, "{task}");
    }
    // A replay of something that is no dead letter any more: exit 1.
    let out = taskhook_async(&["replay", "--api", &daemon.url, &id_of("dl2")]).await;
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotation_signs_with_both_keys_so_receivers_switch_at_their_own_pace() {
    let sim = spawn_sim(&[]);
    let configured = Receiver::start(None).await;
    let per_task = Receiver::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[[webhooks]]\nname = \"rotating\"\nurl = \"{}\"\nsecrets = [\"{SECRET_B}\", \"{SECRET_A}\"]\n",
        configured.url
    );
    let cfg = daemon_config(dir.path(), &sim.url, &extra);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[delivery]\n",
        &format!("[delivery]\nsecrets = [\"{SECRET_B}\", \"{SECRET_A}\"]\nallow_private_networks = true\n"),
    );
    std::fs::write(&cfg, text).unwrap();
    let daemon = spawn_daemon(&cfg);
    sim_create(&sim.url, vec![json!({"id": "rot-1", "duration_ms": 50})]).await;
    let (s, v) = post_json(
        &format!("{}/v1/tasks", daemon.url),
        &json!({"id": "rot-1", "webhooks": [per_task.url]}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    for r in [&configured, &per_task] {
        let hit = eventually("the delivery", Duration::from_secs(20), || async {
            r.hits().into_iter().find(|h| h.status_sent == 200)
        })
        .await;
        let mut headers = axum::http::HeaderMap::new();
        for (k, v) in &hit.headers {
            headers.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let signatures = hit.headers["webhook-signature"].split(' ').count();
        assert_eq!(signatures, 2, "one signature per key: {:?}", hit.headers);
        // A receiver still on the old key and one already on the new key
        // both accept it; a receiver with another key does not.
        for key in [SECRET_A, SECRET_B] {
            let verifier = standardwebhooks::Webhook::new(key).unwrap();
            assert!(
                verifier.verify(&hit.raw, &headers).is_ok(),
                "{key} verifies"
            );
        }
        let stranger =
            standardwebhooks::Webhook::new("whsec_dGhpcyBpcyBub3QgYSBrZXkgd2UgdXNl").unwrap();
        assert!(stranger.verify(&hit.raw, &headers).is_err());
    }
}
