//! Several daemons on one PostgreSQL schema, end to end: the real binary,
//! three at a time, sharing one queue. They must share one upstream budget
//! and one per-webhook cap, elect one leader and move the leadership when
//! it dies, lose nothing through SIGKILLs, faults and refusals, ride out the
//! database going away, and show the same queue whichever one is asked.
//!
//! Each test works on a fresh schema of the test server
//! (`TASKHOOK_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`) and skips with one line when
//! no server is reachable, as the store tests do; under `CI=true` a missing
//! server fails. The outage test starts a private server of its own
//! (`initdb`, `pg_ctl`) so stopping it disturbs no other test.
//!
//! The chaos run's size: `SCALE_TASKS` (default 2000), `SCALE_KILLS`
//! (default 10), `SCALE_SEED` to repeat a run:
//!   cargo test --test it scale_out::chaos -- --nocapture

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use taskhook::store::postgres::testing::{self as pg, SchemaGuard};

use crate::common::*;

/// A daemon's heartbeat period and TTL (`src/runtime/cluster.rs`).
const HEARTBEAT: Duration = Duration::from_secs(2);
const TTL: Duration = Duration::from_secs(8);

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

fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A fresh schema on the test server, dropped with its guard; `None` (the
/// test passes after one `SKIPPED:` line) when the server is unreachable
/// outside CI.
async fn fresh_schema() -> Option<SchemaGuard> {
    if !pg::reachable().await {
        return None;
    }
    Some(SchemaGuard::new(pg::url(), pg::schema_name()))
}

/// One HTTP client with a deadline on every request: a daemon that hangs
/// fails its test instead of hanging it.
fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    })
}

/// GET `url`: status and JSON body, or `None` when no answer came.
async fn get(url: &str) -> Option<(u16, Value)> {
    let r = http().get(url).send().await.ok()?;
    let s = r.status().as_u16();
    Some((s, r.json().await.unwrap_or(Value::Null)))
}

/// POST `body` to `url`: status and JSON body, or `None` when no answer came.
async fn post(url: &str, body: &Value) -> Option<(u16, Value)> {
    let r = http().post(url).json(body).send().await.ok()?;
    let s = r.status().as_u16();
    Some((s, r.json().await.unwrap_or(Value::Null)))
}

/// `tasks` in one enqueue body.
fn tasks_body(ids: &[String]) -> Value {
    json!({"tasks": ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()})
}

/// Enqueues `ids` through `api`; asserts 202.
async fn enqueue(api: &str, ids: &[String]) {
    for chunk in ids.chunks(500) {
        let answer = post(&format!("{api}/v1/tasks"), &tasks_body(chunk)).await;
        assert!(
            matches!(answer, Some((202, _))),
            "enqueue through {api}: {answer:?}"
        );
    }
}

/// A daemon on the shared store, its JSON logs in a file of its own.
struct Node {
    name: String,
    child: ChildGuard,
    api: String,
    cfg: PathBuf,
    logs: PathBuf,
    /// Starts so far (a restart writes a new log file).
    starts: usize,
}

impl Node {
    fn start(name: &str, cfg: &Path, logs: &Path) -> Node {
        let log = logs.join(format!("{name}.1.log"));
        let (child, api) = spawn_daemon_logging(cfg, &log_level(), &log);
        Node {
            name: name.to_string(),
            child,
            api,
            cfg: cfg.to_path_buf(),
            logs: logs.to_path_buf(),
            starts: 1,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL from this process, and reap.
    fn kill9(&mut self) {
        send_signal(self.pid(), "KILL");
        wait_child(&mut self.child, Duration::from_secs(10));
    }

    /// Starts it again with the same configuration (a new instance).
    fn restart(&mut self) {
        self.starts += 1;
        let log = self.logs.join(format!("{}.{}.log", self.name, self.starts));
        let (child, api) = spawn_daemon_logging(&self.cfg, &log_level(), &log);
        self.child = child;
        self.api = api;
    }

    async fn stats(&self) -> Option<Value> {
        match get(&format!("{}/v1/stats", self.api)).await {
            Some((200, v)) => Some(v),
            _ => None,
        }
    }

    /// This daemon's instance ID (from its stats).
    async fn instance(&self) -> String {
        let st = eventually("the daemon's stats", Duration::from_secs(10), || async {
            self.stats().await
        })
        .await;
        st["instance"]
            .as_str()
            .expect("stats name the instance")
            .to_string()
    }
}

fn log_level() -> String {
    std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into())
}

/// One node's view of the cluster: the live instances (IDs, sorted) and
/// the leader (instance, term), if it names one.
type View = (Vec<String>, Option<(String, i64)>);

/// What every node says about the cluster once they agree: the live
/// instances (IDs, sorted), the leader (instance, term), and each node's
/// stats.
struct Agreement {
    instances: Vec<String>,
    leader: (String, i64),
    stats: Vec<Value>,
}

/// Waits (at most `timeout`) until every node lists the same `n` live
/// instances and names the same leader, one of them.
async fn agree(nodes: &[&Node], n: usize, timeout: Duration) -> Agreement {
    let deadline = Instant::now() + timeout;
    loop {
        let mut stats = Vec::new();
        for node in nodes {
            stats.push(node.stats().await.unwrap_or(Value::Null));
        }
        let views: Vec<View> = stats
            .iter()
            .map(|st| {
                let mut ids: Vec<String> = st["instances"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i["id"].as_str().map(str::to_string))
                    .collect();
                ids.sort();
                let leader = st["leader"]["instance"]
                    .as_str()
                    .map(|l| (l.to_string(), st["leader"]["term"].as_i64().unwrap_or(0)));
                (ids, leader)
            })
            .collect();
        let (ids, leader) = views[0].clone();
        if ids.len() == n
            && views.iter().all(|v| *v == views[0])
            && let Some(leader) = leader
            && ids.contains(&leader.0)
        {
            return Agreement {
                instances: ids,
                leader,
                stats,
            };
        }
        if Instant::now() > deadline {
            panic!(
                "the daemons did not agree on {n} instances and one leader within {timeout:?}; \
                 their views (instances, leader): {views:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The budget shares the nodes' stats show: (sum of the rates, sum of the
/// concurrent requests).
fn budget_sums(stats: &[Value]) -> (f64, u64) {
    stats.iter().fold((0.0, 0), |(r, c), st| {
        (
            r + st["budget"]["requests_per_second"].as_f64().unwrap_or(0.0),
            c + st["budget"]["concurrent_requests"].as_u64().unwrap_or(0),
        )
    })
}

/// Fails with the nodes' logs' last lines.
fn logs_tail(logs: &Path) -> String {
    let mut out = String::new();
    let mut files: Vec<_> = std::fs::read_dir(logs)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        out.push_str(&format!("--- {}\n{}\n", f.display(), tail.join("\n")));
    }
    out
}

/// A test config for a daemon on `schema` of the test server.
fn shared_config(dir: &Path, sim: &str, schema: &SchemaGuard, extra: &str) -> PathBuf {
    let cfg = daemon_config(dir, sim, extra);
    use_postgres(&cfg, &pg_store_url(&pg::url(), schema.schema()));
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_share_one_upstream_budget_and_one_webhook_cap() {
    let Some(schema) = fresh_schema().await else {
        return;
    };
    // The upstream's limits, which the three daemons are each configured
    // with in full: together they must keep to them.
    const RATE: f64 = 20.0;
    const CONCURRENT: u64 = 3;
    const CAP: usize = 2;
    // Half the answers take 250 ms, so requests overlap and the
    // concurrency limit matters as much as the rate.
    let sim = spawn_sim(&[
        "--rate-limit",
        "20",
        "--max-concurrent",
        "3",
        "--fault-rate",
        "0.5",
        "--faults",
        "slow",
        "--slow-ms",
        "250",
    ]);
    let fast = Receiver::start(Some(SECRET_A)).await;
    let slow = Receiver::start(Some(SECRET_B)).await;
    slow.behaviour.lock().unwrap().delay = Duration::from_millis(300);
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let extra = webhook_toml("pipeline", &fast.url, Some(SECRET_A))
        + &webhook_toml_for("audit", &slow.url, Some(SECRET_B), &["task.failed"]);
    let cfg = shared_config(dir.path(), &sim.url, &schema, &extra);
    set_config_key(
        &cfg,
        "upstream",
        "max_requests_per_second",
        &RATE.to_string(),
    );
    set_config_key(
        &cfg,
        "upstream",
        "max_concurrent_requests",
        &CONCURRENT.to_string(),
    );
    // Small batches: polling wants far more requests than the budget allows.
    set_config_key(&cfg, "upstream", "batch_size", "10");
    set_config_key(
        &cfg,
        "delivery",
        "max_concurrent_per_webhook",
        &CAP.to_string(),
    );

    // 300 tasks; every tenth fails, and those finish together, so the slow
    // receiver (the only one that gets failures) has a backlog to cap.
    let n = 300;
    let ids: Vec<String> = (0..n).map(|i| format!("budget-{i}")).collect();
    let mut rng = rand::thread_rng();
    let specs: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            if i % 10 == 9 {
                json!({"id": id, "outcome": "failed", "duration_ms": 3000})
            } else {
                json!({"id": id, "outcome": "succeeded", "duration_ms": rng.gen_range(500..4000)})
            }
        })
        .collect();
    let failing: HashSet<&String> = ids.iter().skip(9).step_by(10).collect();

    // The first daemon polls alone at first; the others join while the
    // budget is in full use, each waiting its turn.
    let a = Node::start("a", &cfg, &logs);
    agree(&[&a], 1, Duration::from_secs(10)).await;
    sim_create(&sim.url, specs).await;
    enqueue(&a.api, &ids[..150]).await;
    let b = Node::start("b", &cfg, &logs);
    let c = Node::start("c", &cfg, &logs);
    enqueue(&b.api, &ids[150..225]).await;
    enqueue(&c.api, &ids[225..]).await;

    let deadline = Duration::from_secs(60);
    let delivered = tokio::time::timeout(deadline, async {
        loop {
            if fast.accepted_by_task().len() == n && slow.accepted_by_task().len() == failing.len()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        delivered.is_ok(),
        "not every event delivered within {deadline:?}: {} of {n} to the fast receiver, {} of {} \
         to the slow one\n{}",
        fast.accepted_by_task().len(),
        slow.accepted_by_task().len(),
        failing.len(),
        logs_tail(&logs)
    );

    // One delivery per event and webhook, its webhook-id its own, signed.
    for (receiver, name, want) in [(&fast, "pipeline", n), (&slow, "audit", failing.len())] {
        let hits = receiver.hits();
        assert!(
            hits.iter().all(|h| h.signature_ok),
            "{name}: every signature valid"
        );
        let by_task = receiver.accepted_by_task();
        assert_eq!(by_task.len(), want, "{name}: every event");
        let mut webhook_ids = HashSet::new();
        for (task, hits) in &by_task {
            assert_eq!(
                hits.len(),
                1,
                "{name}: {task} delivered {} times without any kill",
                hits.len()
            );
            assert!(
                webhook_ids.insert(hits[0].webhook_id.clone()),
                "{name}: {task} shares its webhook-id with another event"
            );
        }
        assert_eq!(
            hits.len(),
            want,
            "{name}: no attempt was refused or repeated"
        );
    }
    for task in slow.accepted_by_task().keys() {
        assert!(
            failing.contains(task),
            "audit got {task}, not a failed task"
        );
    }

    // The upstream's limits held: no 429, never more in flight than allowed.
    let (_, sim_stats) = get(&format!("{}/_sim/stats", sim.url)).await.unwrap();
    let statuses = &sim_stats["statuses"];
    assert!(
        statuses.get("429").is_none(),
        "the three daemons went over the upstream's limits: statuses {statuses}, \
         max in flight {}",
        sim_stats["max_in_flight"]
    );
    let in_flight = sim_stats["max_in_flight"].as_u64().unwrap();
    assert!(
        in_flight <= CONCURRENT,
        "the upstream saw {in_flight} requests in flight (allowed: {CONCURRENT})"
    );

    // The webhook cap held across the three daemons, and was reached.
    let slow_peak = slow.max_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        slow_peak <= CAP,
        "the slow receiver had {slow_peak} requests in flight (cap {CAP}, three daemons)"
    );
    assert_eq!(
        slow_peak, CAP,
        "the backlog kept the slow receiver at its cap"
    );

    // One view of the cluster, and the budget divided without remainder.
    let view = agree(&[&a, &b, &c], 3, Duration::from_secs(10)).await;
    let mine: Vec<String> = vec![a.instance().await, b.instance().await, c.instance().await];
    let mut sorted = mine.clone();
    sorted.sort();
    assert_eq!(
        view.instances, sorted,
        "the live instances are the three daemons"
    );
    let (rate, concurrent) = budget_sums(&view.stats);
    assert!(
        (rate - RATE).abs() < 1e-6,
        "the daemons' rates add up to {rate}, not {RATE}"
    );
    assert_eq!(
        concurrent, CONCURRENT,
        "the daemons' concurrent requests add up to the budget"
    );
    eprintln!(
        "BUDGET tasks={n} upstream_requests={} max_in_flight={in_flight} statuses={statuses} \
         slow_receiver_peak={slow_peak} leader={:?}",
        sim_stats["requests"], view.leader
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_and_budget_move_when_the_leader_is_killed() {
    let Some(schema) = fresh_schema().await else {
        return;
    };
    // 5 concurrent requests among 3: 2, 2, 1 (the remainder to the
    // oldest); among 2: 3, 2.
    const RATE: f64 = 30.0;
    const CONCURRENT: u64 = 5;
    let sim = spawn_sim(&[]);
    let receiver = Receiver::start(Some(SECRET_A)).await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let extra = webhook_toml("pipeline", &receiver.url, Some(SECRET_A));
    let cfg = shared_config(dir.path(), &sim.url, &schema, &extra);
    set_config_key(
        &cfg,
        "upstream",
        "max_requests_per_second",
        &RATE.to_string(),
    );
    set_config_key(
        &cfg,
        "upstream",
        "max_concurrent_requests",
        &CONCURRENT.to_string(),
    );
    set_config_key(&cfg, "poll", "first_poll_after", "\"3s\"");

    let mut nodes = vec![
        Node::start("a", &cfg, &logs),
        Node::start("b", &cfg, &logs),
        Node::start("c", &cfg, &logs),
    ];
    let before = agree(
        &nodes.iter().collect::<Vec<_>>(),
        3,
        Duration::from_secs(15),
    )
    .await;
    let (rate, concurrent) = budget_sums(&before.stats);
    assert!((rate - RATE).abs() < 1e-6, "rates add up to {rate}");
    assert_eq!(concurrent, CONCURRENT);
    let mut shares: Vec<u64> = before
        .stats
        .iter()
        .map(|st| st["budget"]["concurrent_requests"].as_u64().unwrap())
        .collect();
    shares.sort();
    assert_eq!(shares, [1, 2, 2], "the remainder goes to the oldest");

    // Work enqueued just before the leader dies comes due after it (poll
    // claims of a killed daemon wait for their lease; the chaos test has
    // those): the survivors do all of it.
    let ids: Vec<String> = (0..60).map(|i| format!("lead-{i}")).collect();
    sim_create_ids(&sim.url, &ids, 1500).await;
    enqueue(&nodes[0].api, &ids).await;

    let mut leader_at = None;
    for (i, node) in nodes.iter().enumerate() {
        if node.instance().await == before.leader.0 {
            leader_at = Some(i);
        }
    }
    let leader_at = leader_at.expect("the leader is one of the three daemons");
    let mut dead = nodes.remove(leader_at);
    dead.kill9();
    let killed_at = Instant::now();

    // Within a TTL and a few heartbeats: a new leader with a higher term,
    // the dead one gone from the live set, the budget divided by two.
    let bound = TTL + HEARTBEAT * 4;
    let after = agree(&nodes.iter().collect::<Vec<_>>(), 2, bound).await;
    let moved_in = killed_at.elapsed();
    assert!(
        !after.instances.contains(&before.leader.0),
        "the killed leader left the live set"
    );
    assert_ne!(after.leader.0, before.leader.0, "another daemon leads");
    assert!(
        after.leader.1 > before.leader.1,
        "the new leader's term {} is above the old one's {}",
        after.leader.1,
        before.leader.1
    );
    let (rate, concurrent) = budget_sums(&after.stats);
    assert!(
        (rate - RATE).abs() < 1e-6,
        "the survivors' rates add up to {rate}, not {RATE}"
    );
    assert_eq!(
        concurrent, CONCURRENT,
        "the survivors' concurrent requests add up to the budget again"
    );
    let mut leading = 0;
    for node in &nodes {
        let v = metric_value(&node.api, "taskhook_leader ").await;
        leading += (v == Some(1.0)) as usize;
    }
    assert_eq!(leading, 1, "exactly one survivor says it leads");

    // The work carried on without the dead leader.
    eventually("every task delivered", Duration::from_secs(30), || async {
        (receiver.accepted_by_task().len() == ids.len()).then_some(())
    })
    .await;
    eprintln!(
        "LEADERSHIP old={:?} new={:?} moved_in={:.1}s",
        before.leader,
        after.leader,
        moved_in.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_three_daemons_killed_in_turn_lose_nothing() {
    let Some(schema) = fresh_schema().await else {
        return;
    };
    let n_tasks = env_or("SCALE_TASKS", 2000);
    let n_kills = env_or("SCALE_KILLS", 10);
    let seed: u64 = std::env::var("SCALE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    eprintln!("scale chaos: seed {seed} (SCALE_SEED to repeat), {n_tasks} tasks, {n_kills} kills");

    // Faults that do not refuse the token (401 would pause every daemon
    // for upstream.token_retry).
    let sim = spawn_sim(&[
        "--fault-rate",
        "0.3",
        "--faults",
        "429,500,502-html,503-html,truncated,reset,slow",
        "--slow-ms",
        "300",
    ]);
    let receiver = Receiver::start(Some(SECRET_A)).await;
    *receiver.fail_rate.lock().unwrap() = 0.2;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let extra = webhook_toml("pipeline", &receiver.url, Some(SECRET_A));
    let cfg = shared_config(dir.path(), &sim.url, &schema, &extra);
    // Killed daemons stay in the live set for a TTL: room in the budget
    // for them and the restarted ones.
    set_config_key(&cfg, "upstream", "max_requests_per_second", "300");
    set_config_key(&cfg, "upstream", "max_concurrent_requests", "12");
    set_config_key(&cfg, "upstream", "request_timeout", "\"1s\"");
    // More, smaller batches: more requests for the faults to hit.
    set_config_key(&cfg, "upstream", "batch_size", "20");
    set_config_key(
        &cfg,
        "delivery",
        "retry_schedule",
        r#"["50ms", "100ms", "200ms", "400ms", "400ms", "400ms", "400ms", "400ms", "400ms", "400ms"]"#,
    );
    set_config_key(&cfg, "delivery", "request_timeout", "\"2s\"");
    const CAP: usize = 16;
    set_config_key(
        &cfg,
        "delivery",
        "max_concurrent_per_webhook",
        &CAP.to_string(),
    );

    let (expected, specs) = chaos_tasks("scale", n_tasks, 200..4000, &mut rng);
    let mut ids: Vec<String> = expected.keys().cloned().collect();
    ids.sort();

    let started = Instant::now();
    let mut nodes = [
        Node::start("a", &cfg, &logs),
        Node::start("b", &cfg, &logs),
        Node::start("c", &cfg, &logs),
    ];
    for chunk in specs.chunks(500) {
        sim_create(&sim.url, chunk.to_vec()).await;
    }
    // Each daemon takes a share of the enqueues.
    for (i, chunk) in ids.chunks(500).enumerate() {
        enqueue(&nodes[i % nodes.len()].api, chunk).await;
    }

    // A random daemon SIGKILLed every few seconds, and started again.
    let mut kills: Vec<i64> = Vec::new();
    for _ in 0..n_kills {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..2500))).await;
        let victim = rng.gen_range(0..nodes.len());
        nodes[victim].kill9();
        kills.push(now_ms());
        nodes[victim].restart();
    }
    let kills_done = started.elapsed();

    // A killed daemon's claimed tasks wait for their poll lease (about
    // 30 s here) before another daemon polls them.
    let deadline = Duration::from_secs(50 + n_tasks as u64 / 100);
    let all_in = tokio::time::timeout(deadline, async {
        loop {
            if receiver.accepted_by_task().len() == ids.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if all_in.is_err() {
        let got = receiver.accepted_by_task();
        let missing: Vec<&String> = ids.iter().filter(|id| !got.contains_key(*id)).collect();
        // A pending delivery due over a minute from now is still leased: by
        // a daemon killed while it held it, since a live one sends what it
        // claims at once. Such leases also count against the webhook's cap.
        let pending = get(&format!(
            "{}/v1/deliveries?state=pending&limit=10000",
            nodes[0].api
        ))
        .await
        .map(|(_, v)| v["deliveries"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default();
        let soon = std::time::SystemTime::now() + Duration::from_secs(60);
        let held = pending
            .iter()
            .filter(|d| {
                d["next_attempt_at"]
                    .as_str()
                    .and_then(|at| humantime::parse_rfc3339(at).ok())
                    .is_some_and(|at| at > soon)
            })
            .count();
        let mut views = Vec::new();
        for id in missing.iter().take(3) {
            let view = get(&format!("{}/v1/tasks/{id}", nodes[0].api)).await;
            views.push(view.map(|(_, t)| {
                json!({"id": t["id"], "status": t["status"], "deliveries": t["deliveries"]})
            }));
        }
        panic!(
            "{} of {} events not delivered within {deadline:?} of the last kill; of {} pending \
             deliveries, {held} are still leased for over a minute (claimed by a daemon that \
             was killed; max_concurrent_per_webhook is {CAP}). The first missing: {views:#?}\n\
             stats: {:#}",
            missing.len(),
            ids.len(),
            pending.len(),
            nodes[0].stats().await.unwrap_or_default()
        );
    }
    let api = nodes[0].api.clone();
    let total = ids.len() as u64;
    eventually("every task done", Duration::from_secs(30), || async {
        let st = get(&format!("{api}/v1/stats")).await?.1;
        (st["tasks"]["watching"] == 0
            && st["tasks"]["delivering"] == 0
            && st["tasks"]["done"] == total)
            .then_some(())
    })
    .await;
    let wall = started.elapsed();

    // An attempt the receiver accepted is sent again only when its result
    // never reached the store: the daemon that sent it died first. The
    // dispatcher records each result as soon as it has it (one transaction
    // for whatever is waiting), so that death comes within a moment of
    // the acceptance: a kill from 50 ms before it (the receiver stamps a
    // request once it has read it) to `RECORD_WITHIN` after.
    const RECORD_WITHIN: i64 = 1000;
    let accepted = receiver.accepted_by_task();
    let mut duplicates = 0;
    let mut lost = 0;
    let mut webhook_ids = HashSet::new();
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
        assert!(
            webhook_ids.insert(first.webhook_id.clone()),
            "{id}: its webhook-id is its own"
        );
        assert_eq!(first.body["type"], *want, "{id}");
        duplicates += hits.len() - 1;
        for h in &hits[..hits.len() - 1] {
            let t = h.received_at_ms;
            assert!(
                kills
                    .iter()
                    .any(|k| *k + 50 >= t && *k <= t + RECORD_WITHIN),
                "{id}: accepted at {t} and sent again, but no daemon was killed within \
                 {RECORD_WITHIN} ms after (kills {kills:?})"
            );
        }
        if !id.starts_with("missing-") {
            let (_, truth) = get(&format!("{}/_sim/tasks/{id}", sim.url)).await.unwrap();
            let finishes = truth["finishes_at_ms"]
                .as_i64()
                .unwrap_or_else(|| panic!("{id}: the simulator knows when it finishes: {truth}"));
            assert!(
                first.received_at_ms >= finishes,
                "{id} delivered before it finished"
            );
        }
    }
    let hits = receiver.hits();
    assert!(hits.iter().all(|h| h.signature_ok), "every signature valid");
    let refusals = hits.iter().filter(|h| h.status_sent >= 300).count();
    let (_, sim_stats) = get(&format!("{}/_sim/stats", sim.url)).await.unwrap();
    let faults: u64 = sim_stats["faults"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    eprintln!(
        "SCALE tasks={} daemons=3 kills={} faults_served={faults} upstream_requests={} \
         receiver_refusals={refusals} duplicates={duplicates} lost={lost} \
         kills_over={:.1}s wall={:.1}s seed={seed}",
        ids.len(),
        kills.len(),
        sim_stats["requests"],
        kills_done.as_secs_f64(),
        wall.as_secs_f64()
    );
    assert_eq!(lost, 0);
    assert!(kills.len() >= n_kills, "every kill happened");
    assert!(faults > 0 && refusals > 0, "the chaos really happened");
}

/// A PostgreSQL server of one test's own: a new cluster (`initdb`) in a
/// temporary directory, on a free loopback port, stopped when dropped.
/// As root the server runs as the `postgres` user (through `runuser`),
/// since PostgreSQL refuses to run as root.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// Creates and starts the server, or says why it cannot.
    fn start() -> Result<PrivatePostgres, String> {
        let bin = pg_bin().ok_or("no initdb on PATH or under /usr/lib/postgresql/*/bin")?;
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        if as_postgres {
            let out = output_within(
                Command::new("chown")
                    .args(["-R", "postgres:"])
                    .arg(dir.path()),
                Duration::from_secs(10),
            );
            if !out.status.success() {
                return Err(format!(
                    "chown postgres {}: {}",
                    dir.path().display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let server = PrivatePostgres {
            dir,
            bin,
            port,
            as_postgres,
        };
        let data = server.data();
        let data = data.to_str().unwrap();
        server.run(
            "initdb",
            &["-D", data, "-U", "postgres", "-A", "trust", "-N"],
        )?;
        server.up()?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `tool ARGS` of the server's binaries (as `postgres` when root).
    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        cmd.args(args).current_dir(self.dir.path());
        let out = output_within(&mut cmd, Duration::from_secs(60));
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Starts the server and waits until it takes connections.
    fn up(&self) -> Result<(), String> {
        let data = self.data();
        let log = self.dir.path().join("server.log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
    }

    /// Stops the server: `fast` ends every session at once.
    fn down(&self, mode: &str) -> Result<(), String> {
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                mode,
                "-w",
                "-t",
                "30",
                "stop",
            ],
        )
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Stopped already (or never started): pg_ctl says so and fails.
        let _ = self.down("immediate");
    }
}

/// The directory of PostgreSQL's server binaries: `initdb` on PATH, else
/// the newest `/usr/lib/postgresql/VERSION/bin`.
fn pg_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    });
    on_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").is_file().then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_daemons_ride_out_the_database_going_away() {
    let server = match tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .unwrap()
    {
        Ok(s) => s,
        Err(why) if is_ci() => panic!("cannot start a private PostgreSQL server: {why}"),
        Err(why) => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: cannot start a private PostgreSQL server ({why})"
            );
            return;
        }
    };
    // Every answer takes 800 ms: when the database goes, rounds are in
    // flight, and their results can only be written once it is back.
    let sim = spawn_sim(&["--fault-rate", "1", "--faults", "slow", "--slow-ms", "800"]);
    let receiver = Receiver::start(Some(SECRET_A)).await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let extra = webhook_toml("pipeline", &receiver.url, Some(SECRET_A));
    let cfg = daemon_config(dir.path(), &sim.url, &extra);
    use_postgres(&cfg, &pg_store_url(&server.url(), "outage"));
    let nodes = [Node::start("a", &cfg, &logs), Node::start("b", &cfg, &logs)];
    agree(&[&nodes[0], &nodes[1]], 2, Duration::from_secs(15)).await;

    // Tasks in flight: they finish upstream while the database is away.
    let before: Vec<String> = (0..40).map(|i| format!("outage-{i}")).collect();
    sim_create_ids(&sim.url, &before, 2500).await;
    enqueue(&nodes[0].api, &before[..20]).await;
    enqueue(&nodes[1].api, &before[20..]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let server = tokio::task::spawn_blocking(move || {
        server.down("fast").expect("the private server stops");
        server
    })
    .await
    .unwrap();
    let stopped = Instant::now();
    for node in &nodes {
        let api = &node.api;
        eventually(
            &format!("{} not ready while the database is away", node.name),
            Duration::from_secs(5),
            || async {
                let (s, v) = get(&format!("{api}/readyz")).await?;
                (s == 503).then_some(v)
            },
        )
        .await;
        let answer = post(&format!("{api}/v1/tasks"), &json!({"id": "during-outage"})).await;
        let Some((status, body)) = answer else {
            panic!(
                "{}: enqueue got no answer while the database is away",
                node.name
            );
        };
        assert_eq!(
            status, 503,
            "{}: enqueue while the database is away: {body}",
            node.name
        );
        assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        let live = get(&format!("{api}/healthz")).await;
        assert!(
            matches!(live, Some((200, _))),
            "{}: /healthz stays 200: {live:?}",
            node.name
        );
    }
    // Long enough for the tasks to finish upstream and for every loop to
    // hit the missing database.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(stopped.elapsed())).await;

    let server = tokio::task::spawn_blocking(move || {
        server.up().expect("the private server starts again");
        server
    })
    .await
    .unwrap();
    for node in &nodes {
        let api = &node.api;
        eventually(
            &format!("{} ready again by itself", node.name),
            Duration::from_secs(30),
            || async {
                let (s, _) = get(&format!("{api}/readyz")).await?;
                (s == 200).then_some(())
            },
        )
        .await;
    }
    let delivered = tokio::time::timeout(Duration::from_secs(30), async {
        while receiver.accepted_by_task().len() < before.len() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        delivered.is_ok(),
        "{} of {} tasks enqueued before the outage delivered after it\n{}",
        receiver.accepted_by_task().len(),
        before.len(),
        logs_tail(&logs)
    );

    // Enqueue works again, through both.
    let after: Vec<String> = (0..10).map(|i| format!("after-{i}")).collect();
    sim_create_ids(&sim.url, &after, 200).await;
    enqueue(&nodes[0].api, &after[..5]).await;
    enqueue(&nodes[1].api, &after[5..]).await;
    eventually(
        "the tasks enqueued after it delivered",
        Duration::from_secs(30),
        || async {
            let got = receiver.accepted_by_task();
            after.iter().all(|id| got.contains_key(id)).then_some(())
        },
    )
    .await;
    let got = receiver.accepted_by_task();
    assert!(
        !got.contains_key("during-outage"),
        "a task refused during the outage was not stored"
    );
    assert!(receiver.hits().iter().all(|h| h.signature_ok));
    drop(nodes);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_daemon_shows_the_same_shared_queue() {
    let Some(schema) = fresh_schema().await else {
        return;
    };
    let sim = spawn_sim(&[]);
    let receiver = Receiver::start(Some(SECRET_A)).await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let extra = webhook_toml("pipeline", &receiver.url, Some(SECRET_A));
    let cfg = shared_config(dir.path(), &sim.url, &schema, &extra);
    let nodes = [
        Node::start("a", &cfg, &logs),
        Node::start("b", &cfg, &logs),
        Node::start("c", &cfg, &logs),
    ];

    // 30 tasks finish at once; 20 stay running upstream for the whole test.
    let quick: Vec<String> = (0..30).map(|i| format!("quick-{i}")).collect();
    let long: Vec<String> = (0..20).map(|i| format!("long-{i}")).collect();
    sim_create_ids(&sim.url, &quick, 200).await;
    sim_create_ids(&sim.url, &long, 600_000).await;
    enqueue(&nodes[0].api, &quick[..10]).await;
    enqueue(&nodes[1].api, &quick[10..20]).await;
    enqueue(&nodes[2].api, &quick[20..]).await;
    enqueue(&nodes[2].api, &long).await;
    eventually("the quick tasks done", Duration::from_secs(30), || async {
        let st = nodes[0].stats().await?;
        (st["tasks"]["done"] == 30 && st["tasks"]["delivering"] == 0).then_some(())
    })
    .await;

    // `taskhook status` of each daemon: the same queue counts.
    let queue_lines = |out: &std::process::Output| -> Vec<String> {
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "taskhook status: {text}");
        let rows = [
            "watching",
            "delivering",
            "done",
            "pending deliveries",
            "dead letters",
            "oldest watching",
        ];
        let lines: Vec<String> = text
            .lines()
            .filter(|l| rows.iter().any(|r| l.starts_with(r)))
            .map(str::to_string)
            .collect();
        assert_eq!(lines.len(), rows.len(), "every queue row in: {text}");
        lines
    };
    let mut shown = Vec::new();
    for node in &nodes {
        let out = taskhook_async(&["status", "--api", &node.api]).await;
        shown.push(queue_lines(&out));
    }
    let row = |lines: &[String], name: &str| -> String {
        lines
            .iter()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(row(&shown[0], "watching"), "20", "{:?}", shown[0]);
    assert_eq!(row(&shown[0], "done"), "30", "{:?}", shown[0]);
    assert_eq!(row(&shown[0], "delivering"), "0", "{:?}", shown[0]);
    assert_ne!(row(&shown[0], "oldest watching"), "-", "{:?}", shown[0]);
    assert!(
        shown.iter().all(|s| *s == shown[0]),
        "each daemon shows the same queue: {shown:#?}"
    );

    // /metrics: three instances on each, each with its share, one leader
    // among them.
    let leaders = eventually(
        "each daemon's metrics: 3 instances, each sharing, one leader",
        Duration::from_secs(15),
        || async {
            let mut leaders = Vec::new();
            for node in &nodes {
                let instances = metric_value(&node.api, "taskhook_instances ").await?;
                let sharing = metric_value(&node.api, "taskhook_sharing ").await?;
                let leader = metric_value(&node.api, "taskhook_leader ").await?;
                if instances != 3.0 || sharing != 1.0 {
                    return None;
                }
                leaders.push(leader);
            }
            (leaders.iter().filter(|l| **l == 1.0).count() == 1
                && leaders.iter().all(|l| *l == 0.0 || *l == 1.0))
            .then_some(leaders)
        },
    )
    .await;
    let view = agree(
        &nodes.iter().collect::<Vec<_>>(),
        3,
        Duration::from_secs(10),
    )
    .await;
    let leading = leaders.iter().position(|l| *l == 1.0).unwrap();
    assert_eq!(
        nodes[leading].instance().await,
        view.leader.0,
        "the daemon whose metrics say it leads is the leader every daemon names"
    );
}
