//! Receivers misbehaving (contract §6): 410 Gone, redirects, slow answers,
//! concurrency caps; and the dead-letter commands of the CLI.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
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
