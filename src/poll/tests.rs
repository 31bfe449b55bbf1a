//! The poll loop in this process, end to end: the real SQLite store, the
//! real upstream client talking HTTP to the simulator, the loop as the
//! daemon runs it; only the claim's spare lease is shortened, so that an
//! upstream back-off can outlast a lease within a test.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{Batches, Poller, pace};
use crate::config::Config;
use crate::poll::upstream::UpstreamClient;
use crate::store::{NewTask, SqliteStore, Store};

/// The simulator on a loopback port, logging every request; stops with the token.
async fn simulator(stop: &CancellationToken) -> String {
    let args = taskhook_sim::SimArgs {
        log_requests: true,
        ..Default::default()
    };
    let stop = stop.clone();
    taskhook_sim::serve_on_loopback(
        taskhook_sim::router(args),
        async move { stop.cancelled().await },
    )
    .await
    .unwrap()
}

async fn post(url: String, body: Value) {
    reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
}

/// The daemon's poll loop over a fresh SQLite store in `dir`, configured by
/// `toml` (its `[store]` section added here), ready to run.
async fn poller(dir: &std::path::Path, toml: &str) -> (Poller, Arc<dyn Store>) {
    let cfg = Config::from_toml(&format!(
        "{toml}\n[store]\npath = \"{}\"\nsync = \"normal\"\n",
        dir.join("taskhook.db").display()
    ))
    .unwrap();
    let now = crate::clock::now_ms();
    let (path, sync) = (cfg.store.path.clone(), cfg.store.sync);
    let store: Arc<dyn Store> = Arc::new(
        tokio::task::spawn_blocking(move || SqliteStore::open(&path, sync, now))
            .await
            .unwrap()
            .unwrap(),
    );
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let upstream = Arc::new(UpstreamClient::new(cfg.upstream.clone(), metrics.clone()).unwrap());
    let cluster = Arc::new(crate::cluster::Cluster::new(now));
    cluster.set_ready();
    let (handoff, _deliveries) = tokio::sync::mpsc::unbounded_channel();
    let (_config_tx, config) = watch::channel(Arc::new(cfg));
    let poller = Poller {
        handoff,
        heartbeat: crate::heartbeat::Heartbeat::new(Duration::from_secs(10)),
        clock: crate::clock::system(),
        metrics,
        batches: Arc::new(Batches::new()),
        store: store.clone(),
        upstream,
        config,
        wake: Arc::new(Notify::new()),
        deliveries_ready: Arc::new(Notify::new()),
        cluster,
        hand_off: true,
        pace: pace::Pace::new(Vec::new()),
        lease_spare: Duration::from_millis(300),
    };
    (poller, store)
}

/// New producer tasks named `ids`.
fn new_tasks(ids: &[String]) -> Vec<NewTask> {
    ids.iter()
        .map(|id| NewTask {
            id: id.clone(),
            service: "producer".into(),
            webhooks: Vec::new(),
            metadata: None,
        })
        .collect()
}

/// Stops the poll loop and waits for it: its requests in flight are
/// answered first.
async fn stop_loop(poll_loop: CancellationToken, running: tokio::task::JoinHandle<()>) {
    poll_loop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the poll loop stops")
        .unwrap();
}

/// The simulator's log of the requests it answered.
async fn requests(sim: &str) -> Vec<Value> {
    let log: Value = reqwest::get(format!("{sim}/_sim/requests"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    log["requests"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_off_longer_than_a_claims_lease_never_polls_a_task_twice() {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    // Two claims' worth of finished tasks (one request slot, 50 IDs each).
    let ids: Vec<String> = (0..100).map(|i| format!("t-{i:03}")).collect();
    let specs: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "duration_ms": 0}))
        .collect();
    post(format!("{sim}/_sim/tasks"), json!({"tasks": specs})).await;
    // The first request is answered late (after the second claim is
    // made) with a 429 whose Retry-After, 3 s, outlasts every lease taken
    // so far (about 2.3 s). The next is slow, so that a request sent after
    // the back-off by a round whose lease ran out would still be in flight
    // when these tasks are claimed and polled again.
    post(
        format!("{sim}/_sim/faults"),
        json!({"script": ["429", "slow"], "retry_after_s": 3, "delay_ms": 300, "slow_ms": 300}),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let (poller, store) = poller(
        dir.path(),
        &format!(
            r#"
[upstream]
base_url = "{sim}"
batch_size = 50
max_requests_per_second = 200
max_concurrent_requests = 1
request_timeout = "1s"
backoff_initial = "50ms"
backoff_max = "100ms"
[poll]
first_poll_after = "10ms"
interval = "200ms"
max_interval = "400ms"
"#
        ),
    )
    .await;
    store
        .enqueue(crate::clock::now_ms(), 10, new_tasks(&ids))
        .await
        .unwrap();
    let poll_loop = CancellationToken::new();
    let running = tokio::spawn(poller.run(poll_loop.clone()));

    // Every task finishes (the back-off is 2 s of it).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = store.stats().await.unwrap();
        if st.done == 100 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tasks still watched: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The loop stops after its requests in flight are answered: the log
    // below is complete.
    stop_loop(poll_loop, running).await;
    let log = requests(&sim).await;
    stop.cancel();

    let mut answered = std::collections::BTreeMap::<&str, usize>::new();
    for r in &log {
        let status = r["status"].as_u64().unwrap();
        assert!(matches!(status, 200 | 429), "{r}");
        if status == 200 {
            for id in r["ids"].as_array().unwrap() {
                *answered.entry(id.as_str().unwrap()).or_default() += 1;
            }
        }
    }
    let twice: Vec<_> = answered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "polled twice: {twice:?}");
    assert_eq!(answered.len(), 100);
    let summary: Vec<(u64, usize)> = log
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["ids"].as_array().unwrap().len(),
            )
        })
        .collect();
    // The 429's batch, then each claim's batch once.
    assert_eq!(summary, [(429, 50), (200, 50), (200, 50)], "{log:?}");
}

/// With the budget in full use, a task a callback hurried leaves in the
/// next request, not behind batches claimed before the hint and queued at
/// the rate limiter: the loop claims only what can leave now, and hinted
/// tasks sort ahead of every due one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hinted_task_leaves_in_the_next_request_however_much_is_due() {
    let stop = CancellationToken::new();
    let sim = simulator(&stop).await;
    // Two hundred tasks that never finish keep every request full; one more is
    // not due for an hour.
    let backlog: Vec<String> = (0..200).map(|i| format!("b-{i:03}")).collect();
    let mut specs: Vec<Value> = backlog
        .iter()
        .map(|id| json!({"id": id, "outcome": "never"}))
        .collect();
    specs.push(json!({"id": "hinted", "outcome": "never"}));
    post(format!("{sim}/_sim/tasks"), json!({"tasks": specs})).await;

    let dir = tempfile::tempdir().unwrap();
    // Two requests a second of ten IDs: far less than the backlog asks.
    let (poller, store) = poller(
        dir.path(),
        &format!(
            r#"
[upstream]
base_url = "{sim}"
batch_size = 10
max_requests_per_second = 2
max_concurrent_requests = 8
[poll]
first_poll_after = "10ms"
interval = "200ms"
"#
        ),
    )
    .await;
    let now = crate::clock::now_ms();
    store.enqueue(now, 0, new_tasks(&backlog)).await.unwrap();
    store
        .enqueue(now, 3_600_000, new_tasks(&["hinted".to_string()]))
        .await
        .unwrap();
    let wake = poller.wake.clone();
    let poll_loop = CancellationToken::new();
    let running = tokio::spawn(poller.run(poll_loop.clone()));

    // Once the loop is in its stride, the hint.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while requests(&sim).await.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "no requests");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = store
        .hurry(
            crate::clock::now_ms(),
            "producer".into(),
            vec!["hinted".into()],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    wake.notify_one();
    // Counted once the hint is in: requests claimed before it are answered
    // or on their way.
    let before = requests(&sim).await.len();
    let carried = loop {
        let log = requests(&sim).await;
        if let Some(i) = log
            .iter()
            .position(|r| r["ids"].as_array().unwrap().iter().any(|id| id == "hinted"))
        {
            break i;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hinted task was never polled: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop_loop(poll_loop, running).await;
    stop.cancel();
    // At most the one request that may have been on its way at the hint
    // goes first (four were claimed at once before this change).
    assert!(
        carried <= before + 1,
        "the hinted task left in request {carried}; {before} had been answered at the hint"
    );
}
