//! The core watch loop end to end: the real binary, the simulator and
//! recording receivers on loopback ports.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

fn webhooks_toml(a: &Receiver, b: &Receiver) -> String {
    format!(
        r#"
[[webhooks]]
name = "everything"
url = "{}"
secret = "{SECRET_A}"
headers = {{ "x-env" = "test" }}

[[webhooks]]
name = "bad-news"
url = "{}"
secret = "{SECRET_B}"
events = ["task.failed", "task.not_found"]
"#,
        a.url, b.url
    )
}

/// The sim spec and the event type taskhook must announce for task `i`.
fn mixed_task(i: usize) -> (String, Option<Value>, &'static str) {
    let shapes = ["missing", "null", "empty", "ack"];
    let duration = 200 + (i * 37 % 1000) as u64;
    let (outcome, want) = match i % 10 {
        0..=3 => ("succeeded", "task.succeeded"),
        4 => ("hiccup", "task.succeeded"),
        5 => ("failed", "task.failed"),
        6 => ("failed_string", "task.failed"),
        7 => ("item_error", "task.failed"),
        8 => ("failed_unfinished", "task.failed"),
        _ => return (format!("missing-{i}"), None, "task.not_found"),
    };
    let id = format!("task-{i}");
    let spec = json!({
        "id": id,
        "outcome": outcome,
        "duration_ms": duration,
        "items": 1 + i % 2,
        "running_shape": shapes[i % 4],
        "state_words": if i.is_multiple_of(3) { "alt" } else { "standard" },
    });
    (id, Some(spec), want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_tasks_reach_every_matching_receiver_exactly_once() {
    let sim = spawn_sim(&["--token", "test-token"]);
    let a = Receiver::start(Some(SECRET_A)).await;
    let b = Receiver::start(Some(SECRET_B)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim.url, &webhooks_toml(&a, &b));
    let daemon = spawn_daemon(&cfg);

    let tasks: Vec<_> = (0..300).map(mixed_task).collect();
    sim_create(&sim.url, tasks.iter().filter_map(|t| t.1.clone()).collect()).await;
    let started = Instant::now();
    for chunk in tasks.chunks(100) {
        let body = json!({"tasks": chunk.iter().map(|(id, _, _)| json!({"id": id, "metadata": {"n": id}})).collect::<Vec<_>>()});
        let (status, out) = post_json(&format!("{}/v1/tasks", daemon.url), &body).await;
        assert_eq!(status, 202, "{out}");
        assert_eq!(out, json!({"accepted": 100, "duplicates": 0}));
    }

    let want_b: usize = tasks.iter().filter(|t| t.2 != "task.succeeded").count();
    eventually(
        "every event at both receivers",
        Duration::from_secs(60),
        || async {
            let got_a = a.accepted_by_task().len();
            let got_b = b.accepted_by_task().len();
            (got_a == 300 && got_b == want_b).then_some(())
        },
    )
    .await;
    let wall = started.elapsed();

    // Every task shows done once its deliveries are settled.
    for (id, _, _) in &tasks {
        let url = format!("{}/v1/tasks/{id}", daemon.url);
        eventually("task done", Duration::from_secs(10), || async {
            let (s, v) = get_json(&url).await;
            (s == 200 && v["status"] == "done").then_some(())
        })
        .await;
    }

    let by_a = a.accepted_by_task();
    let by_b = b.accepted_by_task();
    for (id, _, want) in &tasks {
        let hits = &by_a[id.as_str()];
        assert_eq!(hits.len(), 1, "{id} delivered {} times to A", hits.len());
        let h = &hits[0];
        assert!(h.signature_ok, "{id}: bad signature at A");
        assert_eq!(h.body["type"], *want, "{id}");
        assert_eq!(h.body["data"]["task_id"], id.as_str());
        assert_eq!(h.body["data"]["metadata"], json!({"n": id}));
        assert_eq!(h.headers["x-env"], "test");
        assert!(h.headers["user-agent"].starts_with("taskhook/"));
        assert!(h.webhook_id.starts_with("msg_"));
        if *want != "task.not_found" {
            assert_eq!(
                h.body["data"]["task"]["id"],
                id.as_str(),
                "record forwarded"
            );
        }
        match by_b.get(id.as_str()) {
            Some(hits) => {
                assert_ne!(*want, "task.succeeded", "{id}: B filters out successes");
                assert_eq!(hits.len(), 1);
                assert!(hits[0].signature_ok);
                assert_eq!(hits[0].webhook_id, h.webhook_id, "one webhook-id per event");
            }
            None => assert_eq!(*want, "task.succeeded", "{id} missing at B"),
        }
    }
    // No retries were needed, so no receiver saw a request twice.
    assert_eq!(a.hits().len(), 300);
    assert_eq!(b.hits().len(), want_b);

    let (_, stats) = get_json(&format!("{}/_sim/stats", sim.url)).await;
    let requests = stats["requests"].as_f64().unwrap();
    let per_request = stats["mean_ids_per_request"].as_f64().unwrap();
    assert!(per_request > 1.0, "batches carry several IDs: {stats}");
    eprintln!(
        "FIGURES 300 tasks: wall {:.2}s, upstream requests {requests}, requests/task {:.3}, IDs/request {per_request:.1}, max IDs/request {}",
        wall.as_secs_f64(),
        requests / 300.0,
        stats["max_ids_per_request"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_refusing_twice_gets_the_event_on_the_third_attempt() {
    let sim = spawn_sim(&[]);
    let a = Receiver::start(Some(SECRET_A)).await;
    *a.refuse_first.lock().unwrap() = 2;
    let dir = tempfile::tempdir().unwrap();
    let extra = webhook_toml("flaky", &a.url, Some(SECRET_A));
    let daemon = spawn_daemon(&daemon_config(dir.path(), &sim.url, &extra));
    sim_create(&sim.url, vec![json!({"id": "r1", "duration_ms": 100})]).await;
    let (s, _) = post_json(&format!("{}/v1/tasks", daemon.url), &json!({"id": "r1"})).await;
    assert_eq!(s, 202);
    eventually("the third attempt", Duration::from_secs(20), || async {
        a.accepted_by_task().contains_key("r1").then_some(())
    })
    .await;
    let hits = a.hits();
    assert_eq!(hits.len(), 3);
    assert_eq!(
        hits.iter().map(|h| h.status_sent).collect::<Vec<_>>(),
        vec![500, 500, 200]
    );
    let ids: HashSet<_> = hits.iter().map(|h| h.webhook_id.clone()).collect();
    assert_eq!(ids.len(), 1, "same webhook-id on every attempt");
    assert!(hits.iter().all(|h| h.signature_ok));
    let url = format!("{}/v1/tasks/r1", daemon.url);
    let task = eventually("done", Duration::from_secs(10), || async {
        let (_, v) = get_json(&url).await;
        (v["status"] == "done").then_some(v)
    })
    .await;
    assert_eq!(task["deliveries"][0]["attempts"], 3);
    assert_eq!(task["deliveries"][0]["state"], "delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_and_restart_still_delivers_every_task() {
    let sim = spawn_sim(&[]);
    let a = Receiver::start(Some(SECRET_A)).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = webhook_toml("a", &a.url, Some(SECRET_A));
    // The default users get: an fsync per commit.
    let cfg = daemon_config_sync(dir.path(), &sim.url, &extra, "full");
    assert!(
        std::fs::read_to_string(&cfg)
            .unwrap()
            .contains("sync = \"full\"")
    );
    let mut daemon = spawn_daemon(&cfg);
    let n: usize = 200;
    let specs: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("k{i}"), "duration_ms": 100 + (i * 13 % 1500), "outcome": if i.is_multiple_of(4) {"failed"} else {"succeeded"}}))
        .collect();
    sim_create(&sim.url, specs).await;
    let ids: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let body = json!({"tasks": ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()});
    let (s, _) = post_json(&format!("{}/v1/tasks", daemon.url), &body).await;
    assert_eq!(s, 202);

    eventually(
        "some deliveries before the kill",
        Duration::from_secs(30),
        || async { (a.accepted_by_task().len() >= 20).then_some(()) },
    )
    .await;
    daemon.kill9();
    let before = a.accepted_by_task().len();
    assert!(before < n, "the kill came mid-run");

    let daemon = spawn_daemon(&cfg);
    eventually(
        "every task after the restart",
        Duration::from_secs(60),
        || async { (a.accepted_by_task().len() == n).then_some(()) },
    )
    .await;
    let by_task: HashMap<String, Vec<Hit>> = a.accepted_by_task();
    for id in &ids {
        let hits = &by_task[id.as_str()];
        let wids: HashSet<_> = hits.iter().map(|h| &h.webhook_id).collect();
        assert_eq!(wids.len(), 1, "{id}: one webhook-id across copies");
        assert!(hits.iter().all(|h| h.signature_ok));
    }
    let stats = eventually("nothing left watching", Duration::from_secs(10), || async {
        let (s, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
        (s == 200 && st["tasks"]["watching"] == 0 && st["tasks"]["delivering"] == 0).then_some(st)
    })
    .await;
    // Every task survived the kill into the store and finished there: done,
    // nothing pending, nothing dead-lettered.
    assert_eq!(stats["tasks"]["done"].as_u64(), Some(n as u64), "{stats}");
    assert_eq!(stats["deliveries"]["pending"].as_u64(), Some(0), "{stats}");
    assert_eq!(stats["dead_letters"].as_u64(), Some(0), "{stats}");
    // The upstream was reached after the restart, with batches.
    assert!(stats["upstream"]["token_accepted"] == true, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_keeps_the_queue() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim.url, "");
    let mut daemon = spawn_daemon(&cfg);
    sim_create(&sim.url, vec![json!({"id": "slow-1", "outcome": "never"})]).await;
    let (s, _) = post_json(
        &format!("{}/v1/tasks", daemon.url),
        &json!({"id": "slow-1"}),
    )
    .await;
    assert_eq!(s, 202);
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(15)), Some(0));
    let daemon = spawn_daemon(&cfg);
    let (s, v) = get_json(&format!("{}/v1/tasks/slow-1", daemon.url)).await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "watching");
}
