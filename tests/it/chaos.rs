//! Chaos: tasks flowing while the daemon is SIGKILLed again and again, the
//! upstream serves 30% faults and the receiver refuses 20% of attempts.
//! Nothing may be lost, nothing delivered early, and duplicates may only
//! straddle a kill.
//!
//! CI runs a short form. The full run:
//!   CHAOS_TASKS=2000 CHAOS_KILLS=10 cargo test --release --test it chaos:: -- --nocapture

use std::time::{Duration, Instant};

use crate::common::*;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_through_kills_faults_and_refusals() {
    let n_tasks = env_or("CHAOS_TASKS", 300);
    let n_kills = env_or("CHAOS_KILLS", 3);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    eprintln!("chaos: seed {seed} (CHAOS_SEED to repeat), {n_tasks} tasks, {n_kills} kills");

    let sim = spawn_sim(&[
        "--fault-rate",
        "0.3",
        "--faults",
        "429,429-no-retry-after,500,502-html,truncated,slow,reset",
        "--slow-ms",
        "1500",
    ]);
    let receiver = Receiver::start(Some(SECRET_A)).await;
    *receiver.fail_rate.lock().unwrap() = 0.2;
    let dir = tempfile::tempdir().unwrap();
    let extra = webhook_toml("pipeline", &receiver.url, Some(SECRET_A));
    let cfg = daemon_config(dir.path(), &sim.url, &extra);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("request_timeout = \"5s\"\nbackoff", "request_timeout = \"500ms\"\nbackoff")
        .replace("retry_schedule = [\"100ms\", \"200ms\", \"300ms\"]", "retry_schedule = [\"50ms\", \"100ms\", \"200ms\", \"400ms\", \"400ms\", \"400ms\", \"400ms\", \"400ms\", \"400ms\", \"400ms\"]");
    std::fs::write(&cfg, text).unwrap();

    // The tasks: mixed outcomes, some unknown upstream.
    let (expected, specs) = chaos_tasks("chaos", n_tasks, 200..3000, &mut rng);
    for chunk in specs.chunks(500) {
        sim_create(&sim.url, chunk.to_vec()).await;
    }
    let ids: Vec<String> = expected.keys().cloned().collect();

    let started = Instant::now();
    let mut daemon = spawn_daemon(&cfg);
    for chunk in ids.chunks(500) {
        let body = json!({"tasks": chunk.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()});
        let (s, v) = post_json(&format!("{}/v1/tasks", daemon.url), &body).await;
        assert_eq!(s, 202, "{v}");
    }

    // Kill at random moments while work is in flight.
    let mut kills: Vec<i64> = Vec::new();
    for _ in 0..n_kills {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1500))).await;
        daemon.kill9();
        kills.push(now_ms());
        daemon = spawn_daemon(&cfg);
    }

    let deadline = Duration::from_secs(60 + n_tasks as u64 / 10);
    eventually("every task delivered", deadline, || async {
        (receiver.accepted_by_task().len() == ids.len()).then_some(())
    })
    .await;
    let api = daemon.url.clone();
    eventually("nothing left watching", Duration::from_secs(30), || async {
        let (_, st) = get_json(&format!("{api}/v1/stats")).await;
        (st["tasks"]["watching"] == 0 && st["tasks"]["delivering"] == 0).then_some(())
    })
    .await;
    let wall = started.elapsed();

    let accepted = receiver.accepted_by_task();
    let mut duplicates = 0;
    let mut lost = 0;
    for (id, want) in &expected {
        let Some(hits) = accepted.get(id) else {
            lost += 1;
            continue;
        };
        let first = &hits[0];
        assert!(
            hits.iter().all(|h| h.webhook_id == first.webhook_id),
            "{id}: one webhook-id per event"
        );
        assert!(hits.iter().all(|h| h.signature_ok), "{id}: signatures");
        assert_eq!(first.body["type"], *want, "{id}");
        if hits.len() > 1 {
            duplicates += hits.len() - 1;
            let (lo, hi) = (hits[0].received_at_ms, hits[hits.len() - 1].received_at_ms);
            assert!(
                kills.iter().any(|k| *k + 50 >= lo && *k <= hi + 50),
                "{id}: a duplicate that does not straddle a kill ({lo}..{hi}, kills {kills:?})"
            );
        }
        if !id.starts_with("missing-") {
            let (_, truth) = get_json(&format!("{}/_sim/tasks/{id}", sim.url)).await;
            let finishes = truth["finishes_at_ms"]
                .as_i64()
                .unwrap_or_else(|| panic!("{id}: the simulator knows when it finishes: {truth}"));
            assert!(
                first.received_at_ms >= finishes,
                "{id} delivered before it finished"
            );
        }
    }
    let (_, sim_stats) = get_json(&format!("{}/_sim/stats", sim.url)).await;
    let faults: u64 = sim_stats["faults"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let refusals = receiver
        .hits()
        .iter()
        .filter(|h| h.status_sent >= 300)
        .count();
    eprintln!(
        "CHAOS tasks={} kills={} faults_served={faults} upstream_requests={} receiver_refusals={refusals} duplicates={duplicates} lost={lost} wall={:.1}s",
        ids.len(),
        kills.len(),
        sim_stats["requests"],
        wall.as_secs_f64()
    );
    assert_eq!(lost, 0);
    assert!(faults > 0 && refusals > 0, "the chaos really happened");
}
