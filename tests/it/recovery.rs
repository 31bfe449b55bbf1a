//! Recovery after a receiver outage (contract §5): every dead letter a
//! filter matches is replayed in one action, from the API or the CLI, and
//! the recovered receiver gets them within its webhook's concurrency cap.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

async fn dead_letters(api: &str, webhook: &str) -> Vec<Value> {
    let (_, v) = get_json(&format!("{api}/v1/deliveries?state=failed&limit=1000")).await;
    v["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["webhook"] == webhook)
        .collect()
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_that_failed_during_an_outage_is_replayed_by_filter_within_the_cap() {
    let sim = spawn_sim(&[]);
    let billing = Receiver::start(None).await;
    let audit = Receiver::start(None).await;
    billing.behaviour.lock().unwrap().status = Some(503);
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        webhook_toml("billing", &billing.url, None),
        webhook_toml("audit", &audit.url, None),
    ]
    .concat();
    let cfg = daemon_config(dir.path(), &sim.url, &extra);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[delivery]\nretry_schedule = [\"100ms\", \"200ms\", \"300ms\"]",
        "[delivery]\nretry_schedule = [\"50ms\"]\nmax_concurrent_per_webhook = 2",
    );
    assert!(text.contains("max_concurrent_per_webhook = 2"));
    std::fs::write(&cfg, text).unwrap();
    let daemon = spawn_daemon(&cfg);
    let api = daemon.url.clone();

    // The outage: 12 tasks finish (4 of them failed), billing refuses all.
    let ids: Vec<String> = (0..12).map(|i| format!("out-{i}")).collect();
    let specs = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let outcome = if i % 3 == 0 { "failed" } else { "succeeded" };
            json!({"id": id, "duration_ms": 50, "outcome": outcome})
        })
        .collect();
    sim_create(&sim.url, specs).await;
    enqueue_ids(&api, &ids).await;
    eventually(
        "12 dead letters at billing",
        Duration::from_secs(30),
        || async { (dead_letters(&api, "billing").await.len() == 12).then_some(()) },
    )
    .await;
    eventually("audit got all 12", Duration::from_secs(30), || async {
        (audit.accepted_by_task().len() == 12).then_some(())
    })
    .await;
    let audit_hits = audit.hits().len();

    // Bad filters are refused by name and replay nothing.
    let bulk = format!("{api}/v1/deliveries/replay");
    let (s, v) = post_json(&bulk, &json!({"webhook": "billing", "sinse": "x"})).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("sinse"),
        "{v}"
    );
    let (s, v) = post_json(&bulk, &json!({"since": "two hours ago"})).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("since:"),
        "{v}"
    );
    let (s, v) = post_json(
        &bulk,
        &json!({"since": "2030-01-01T00:00:00Z", "until": "2029-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(dead_letters(&api, "billing").await.len(), 12);

    // What a replay would take: counted, nothing replayed.
    let out = taskhook_async(&[
        "replay",
        "--api",
        &api,
        "--since",
        "1h",
        "--webhook",
        "billing",
        "--dry-run",
    ])
    .await;
    assert_eq!(stdout(&out), "12 match (dry run: nothing replayed)");
    let (s, v) = post_json(
        &bulk,
        &json!({"webhook": "billing", "type": "task.failed", "dry_run": true}),
    )
    .await;
    assert_eq!((s, v["matching"].as_u64()), (202, Some(4)), "{v}");
    let (_, v) = post_json(
        &bulk,
        &json!({"until": "2020-01-01T00:00:00Z", "dry_run": true}),
    )
    .await;
    assert_eq!(v["matching"], 0, "{v}");
    let (_, v) = post_json(&bulk, &json!({"webhook": "audit", "dry_run": true})).await;
    assert_eq!(v["matching"], 0, "{v}");
    assert_eq!(dead_letters(&api, "billing").await.len(), 12);

    // Billing recovers, slowly: replays arrive at most 2 at a time.
    {
        let mut b = billing.behaviour.lock().unwrap();
        b.status = None;
        b.delay = Duration::from_millis(150);
    }
    billing.max_in_flight.store(0, Ordering::SeqCst);
    let out = taskhook_async(&[
        "replay",
        "--api",
        &api,
        "--since",
        "2h",
        "--webhook",
        "billing",
        "--type",
        "task.succeeded",
    ])
    .await;
    assert_eq!(stdout(&out), "replayed 8");
    eventually("8 replays delivered", Duration::from_secs(30), || async {
        (billing.accepted_by_task().len() == 8).then_some(())
    })
    .await;
    assert_eq!(dead_letters(&api, "billing").await.len(), 4);
    let (s, v) = post_json(&bulk, &json!({"webhook": "billing"})).await;
    assert_eq!((s, v["replayed"].as_u64()), (202, Some(4)), "{v}");
    eventually(
        "every replay delivered",
        Duration::from_secs(30),
        || async { (billing.accepted_by_task().len() == 12).then_some(()) },
    )
    .await;
    let (_, st) = get_json(&format!("{api}/v1/stats")).await;
    assert_eq!(st["dead_letters"], 0, "{st}");
    assert!(
        billing.max_in_flight.load(Ordering::SeqCst) <= 2,
        "the recovered receiver got more than its cap at once"
    );
    assert_eq!(audit.hits().len(), audit_hits, "audit got nothing again");
    // Nothing left to replay.
    let (_, v) = post_json(&bulk, &json!({})).await;
    assert_eq!(v["replayed"], 0, "{v}");
}
