//! PostgreSQL-only cases, against the real server (see `testing` for
//! which server, and when a missing one skips): leases across instances,
//! racing claimers, the per-webhook cap across instances, concurrent
//! settlers of one event, migrations, wake-ups and their reconnection,
//! leadership, recovery after the server drops every connection, TLS, and
//! the enqueue and claim figures. The shared rules are checked by the
//! conformance suite (`tests/it/store_conformance.rs`).

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;

use super::testing::{SchemaGuard, fresh, open, reachable, schema_name, url};
use super::*;
use crate::store::testing::{finish, task};

/// A plain client on `schema` for looking behind the store's back.
async fn raw(schema: &str) -> tokio_postgres::Client {
    conn::connect_spawned(&conn::target(&url(), Some(schema)).unwrap())
        .await
        .unwrap()
}

/// A line on the test process's stderr, shown even when the test passes.
fn report(line: String) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn delivered(d: &ClaimedDelivery) -> DeliveryReport {
    DeliveryReport {
        id: d.id,
        claim: d.claim,
        task_id: d.task_id.clone(),
        event_id: d.event_id.clone(),
        verdict: DeliveryVerdict::Delivered,
        status: Some(200),
        error: None,
        webhook: d.webhook.clone(),
        attempt: d.attempts + 1,
        latency_ms: None,
        answer: None,
    }
}

/// Enqueues `n` tasks named `{prefix}{i}`, claims and finishes them with
/// deliveries to `hooks` (not handed off), all at `now`.
async fn finished(s: &PostgresStore, prefix: &str, n: usize, hooks: &[&str], now: Millis) {
    let tasks = (0..n).map(|i| task(&format!("{prefix}{i}"))).collect();
    s.enqueue(now, 0, tasks).await.unwrap();
    let mut left = n;
    while left > 0 {
        let c = s
            .claim_poll_batch(now, now, 500.into(), now + 60_000)
            .await
            .unwrap();
        assert!(!c.tasks.is_empty());
        left -= c.tasks.len();
        s.record_polls(
            now,
            c.tasks.iter().map(|t| finish(t, hooks)).collect(),
            None,
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn an_expired_lease_goes_to_another_instance_and_the_stale_write_is_ignored() {
    let Some((a, guard)) = fresh(2).await else {
        return;
    };
    let b = open(&guard, 2).await;
    a.enqueue(0, 0, vec![task("t")]).await.unwrap();
    let first = a
        .claim_poll_batch(0, 0, 10.into(), 1_000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    // Instance A stalls; its lease runs out and B takes the task.
    assert!(
        b.claim_poll_batch(999, 999, 10.into(), 5_000)
            .await
            .unwrap()
            .tasks
            .is_empty(),
        "not before the lease ends"
    );
    let second = b
        .claim_poll_batch(1_000, 1_000, 10.into(), 5_000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    assert!(
        second.claim > first.claim,
        "{} then {}",
        first.claim,
        second.claim
    );
    // A wakes up and reports: nothing changes, no event, no delivery.
    let handed = a
        .record_polls(1_100, vec![finish(&first, &["w"])], Some(9_000))
        .await
        .unwrap();
    assert!(handed.is_empty());
    let v = b.get_task("t".into()).await.unwrap().unwrap();
    assert_eq!((v.status, v.event_id), (TaskStatus::Watching, None));
    assert_eq!(a.stats().await.unwrap().deliveries_pending, 0);
    // A's stale expiry claim and deferral do not touch B's lease either.
    assert!(
        a.claim_expired(1_200, 10_000, 10, 9_000)
            .await
            .unwrap()
            .is_empty()
    );
    // B's report lands.
    b.record_polls(1_200, vec![finish(&second, &["w"])], None)
        .await
        .unwrap();
    let v = a.get_task("t".into()).await.unwrap().unwrap();
    assert_eq!(v.status, TaskStatus::Delivering);
    assert_eq!(v.deliveries.len(), 1);
}

fn instance(id: &str, now: Millis) -> InstanceInfo {
    InstanceInfo {
        id: id.into(),
        host: "h".into(),
        started_at: now,
        heartbeat_at: now,
    }
}

/// A daemon that dies holding leases does not hold its tasks and its
/// webhooks' concurrency slots until the leases run out: the next heartbeat
/// of another instance after its own lapsed gives them back, due at once;
/// the dead one's late writes are ignored (a task hinted meanwhile is due
/// ahead of the rest). A live instance's leases stay.
#[tokio::test]
async fn the_leases_of_a_dead_instance_are_given_back_at_once() {
    let Some((a, guard)) = fresh(2).await else {
        return;
    };
    let b = open(&guard, 2).await;
    let ttl = 8_000;
    a.heartbeat(0, instance("a", 0), ttl).await.unwrap();
    b.heartbeat(0, instance("b", 0), ttl).await.unwrap();
    finished(&a, "d", 3, &["w"], 0).await;
    a.enqueue(0, 0, vec![task("p")]).await.unwrap();
    let polled = a
        .claim_poll_batch(0, 0, 10.into(), 600_000)
        .await
        .unwrap()
        .tasks;
    assert_eq!(polled.len(), 1);
    // Its task settles during the poll A never finishes: a callback says so.
    assert_eq!(
        a.hurry(500, "producer".into(), vec!["p".into()])
            .await
            .unwrap(),
        1
    );
    let sending = a
        .claim_deliveries(0, 10, 600_000, vec![], 2)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(sending.len(), 2, "the cap of 2");
    // B, alive, sees the cap full and the task leased.
    b.heartbeat(1_000, instance("b", 0), ttl).await.unwrap();
    assert!(
        b.claim_deliveries(1_000, 10, 600_000, vec![], 2)
            .await
            .unwrap()
            .deliveries
            .is_empty()
    );
    assert!(
        b.claim_poll_batch(1_000, 1_000, 10.into(), 600_000)
            .await
            .unwrap()
            .tasks
            .is_empty()
    );
    // A dies (no more heartbeats). Past its TTL, B's heartbeat frees its leases.
    b.heartbeat(9_000, instance("b", 0), ttl).await.unwrap();
    let taken = b
        .claim_deliveries(9_000, 10, 600_000, vec![], 2)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(taken.len(), 2, "the slots A held are free");
    assert_eq!(
        b.get_task("p".into()).await.unwrap().unwrap().next_poll_at,
        Some(9_000 - crate::store::HINT_LEAD_MS),
        "the hint A's lost poll was given is kept: due ahead of the rest"
    );
    let task = b
        .claim_poll_batch(9_000, 9_000, 10.into(), 600_000)
        .await
        .unwrap()
        .tasks;
    assert_eq!(task.len(), 1, "the task A held is due again");
    // A's late report of its attempt is ignored: B's lease holds.
    a.record_deliveries(9_100, sending.iter().map(delivered).collect())
        .await
        .unwrap();
    assert_eq!(a.stats().await.unwrap().deliveries_pending, 3);
    // B is alive: its own leases survive its own and others' heartbeats.
    b.heartbeat(10_000, instance("b", 0), ttl).await.unwrap();
    a.heartbeat(10_000, instance("a2", 10_000), ttl)
        .await
        .unwrap();
    assert!(
        a.claim_deliveries(10_000, 10, 600_000, vec![], 2)
            .await
            .unwrap()
            .deliveries
            .is_empty()
    );
    b.record_deliveries(10_100, taken.iter().map(delivered).collect())
        .await
        .unwrap();
    assert_eq!(b.stats().await.unwrap().deliveries_pending, 1);
}

/// 2,000 tasks, eight claim loops on eight connections (six poll claims,
/// two expiry claims) until nothing is left: every task is claimed exactly
/// once, and no claim number is shared by two batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_claimers_never_get_the_same_task() {
    let Some((s, _guard)) = fresh(8).await else {
        return;
    };
    const N: usize = 2_000;
    let tasks = (0..N)
        .map(|i| {
            let mut t = task(&format!("t{i}"));
            // Several services, so the picks differ between claimers.
            t.service = format!("svc{}", i % 3);
            t
        })
        .collect();
    s.enqueue(0, 0, tasks).await.unwrap();
    let mut loops = tokio::task::JoinSet::new();
    for claimer in 0..8 {
        let s = s.clone();
        loops.spawn(async move {
            let mut got: Vec<(String, i64)> = Vec::new();
            loop {
                let batch = if claimer < 6 {
                    let c = s
                        .claim_poll_batch(10, 10, 25.into(), 1_000_000)
                        .await
                        .unwrap();
                    if c.tasks.is_empty() && c.next_due.is_none_or(|d| d > 10) {
                        break;
                    }
                    c.tasks
                } else {
                    let t = s.claim_expired(10, 5, 25, 1_000_000).await.unwrap();
                    if t.is_empty() {
                        break;
                    }
                    t
                };
                got.extend(batch.into_iter().map(|t| (t.id, t.claim)));
            }
            got
        });
    }
    let mut seen: HashMap<String, i64> = HashMap::new();
    let mut per_claim: HashMap<i64, usize> = HashMap::new();
    let mut busy = 0;
    while let Some(got) = loops.join_next().await {
        let got = got.unwrap();
        if !got.is_empty() {
            busy += 1;
        }
        for (id, claim) in got {
            assert!(
                seen.insert(id.clone(), claim).is_none(),
                "{id} claimed twice"
            );
            *per_claim.entry(claim).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), N, "every task claimed");
    assert!(
        per_claim.values().all(|n| *n <= 25),
        "a claim number per batch"
    );
    report(format!(
        "racing claimers: {N} tasks, {} batches, {busy} of 8 claimers got some",
        per_claim.len()
    ));
}

/// Two instances claim one webhook's deliveries at once: never more than
/// the cap leased in total; a webhook at its cap does not hold up another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_webhook_cap_holds_across_instances() {
    let Some((a, guard)) = fresh(4).await else {
        return;
    };
    let b = open(&guard, 4).await;
    finished(&a, "w", 60, &["hot"], 0).await;
    finished(&a, "x", 5, &["other"], 10).await;
    const CAP: usize = 4;
    let mut claims = tokio::task::JoinSet::new();
    for s in [a.clone(), b.clone()] {
        for _ in 0..3 {
            let s = s.clone();
            claims.spawn(async move {
                let mut got = Vec::new();
                for _ in 0..10 {
                    let c = s
                        .claim_deliveries(100, 10, 1_000_000, vec![], CAP)
                        .await
                        .unwrap();
                    got.extend(c.deliveries);
                }
                got
            });
        }
    }
    let mut got = Vec::new();
    while let Some(g) = claims.join_next().await {
        got.extend(g.unwrap());
    }
    let per_hook = |ds: &[ClaimedDelivery]| {
        let mut n: HashMap<String, usize> = HashMap::new();
        for d in ds {
            *n.entry(d.webhook.clone()).or_default() += 1;
        }
        n
    };
    let n = per_hook(&got);
    assert_eq!(n.get("hot"), Some(&CAP), "{n:?}");
    assert_eq!(
        n.get("other"),
        Some(&CAP),
        "the full webhook held up no other: {n:?}"
    );
    // Two sent: two more of it may go, from either instance.
    let hot: Vec<_> = got.iter().filter(|d| d.webhook == "hot").collect();
    a.record_deliveries(200, hot[..2].iter().map(|d| delivered(d)).collect())
        .await
        .unwrap();
    let again = b
        .claim_deliveries(200, 50, 1_000_000, vec!["other".into()], CAP)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(again.len(), 2);
    assert!(
        a.claim_deliveries(200, 50, 1_000_000, vec!["other".into()], CAP)
            .await
            .unwrap()
            .deliveries
            .is_empty()
    );
    // Leases that ran out no longer count.
    let late = a
        .claim_deliveries(1_000_000, 50, 2_000_000, vec!["other".into()], CAP)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(late.len(), CAP);
}

/// Two instances report the two deliveries of each event at the same time:
/// every task still ends done (neither report may miss the other's).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_settlers_of_one_event_finish_its_task() {
    let Some((a, guard)) = fresh(6).await else {
        return;
    };
    let b = open(&guard, 6).await;
    const N: usize = 150;
    finished(&a, "t", N, &["one", "two"], 0).await;
    let ones = a
        .claim_deliveries(10, 1_000, 1_000_000, vec!["two".into()], 1_000)
        .await
        .unwrap()
        .deliveries;
    let twos = b
        .claim_deliveries(10, 1_000, 1_000_000, vec!["one".into()], 1_000)
        .await
        .unwrap()
        .deliveries;
    assert_eq!((ones.len(), twos.len()), (N, N));
    let mut reports = tokio::task::JoinSet::new();
    for (s, ds) in [(a.clone(), ones), (b.clone(), twos)] {
        // Three writers per instance, one report each, all at once.
        for part in 0..3 {
            let s = s.clone();
            let mine: Vec<_> = ds.iter().skip(part).step_by(3).cloned().collect();
            reports.spawn(async move {
                for d in mine {
                    s.record_deliveries(20, vec![delivered(&d)]).await.unwrap();
                }
            });
        }
    }
    while let Some(r) = reports.join_next().await {
        r.unwrap();
    }
    let st = a.stats().await.unwrap();
    assert_eq!(
        (st.delivering, st.done, st.deliveries_pending),
        (0, N as u64, 0)
    );
}

#[tokio::test]
async fn migrations_run_once_when_instances_start_together() {
    if !reachable().await {
        return;
    }
    let guard = SchemaGuard::new(url(), schema_name());
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let (url, schema) = (url(), guard.schema().to_string());
            tokio::spawn(async move {
                PostgresStore::connect(
                    &url,
                    PostgresOptions {
                        pool_size: 1,
                        schema: Some(schema),
                    },
                )
                .await
            })
        })
        .collect();
    for s in starts {
        let s = s.await.unwrap().unwrap();
        assert_eq!(s.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
    }
    let c = raw(guard.schema()).await;
    let rows = c
        .query(
            "SELECT version FROM taskhook_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let applied: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(applied, (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_schema_written_by_a_newer_version_is_refused() {
    let Some((s, guard)) = fresh(1).await else {
        return;
    };
    drop(s);
    raw(guard.schema())
        .await
        .execute(
            "INSERT INTO taskhook_migrations (version, taskhook) VALUES (99, 'future')",
            &[],
        )
        .await
        .unwrap();
    let err = PostgresStore::connect(
        &url(),
        PostgresOptions {
            pool_size: 1,
            schema: Some(guard.schema().into()),
        },
    )
    .await
    .err()
    .expect("refused");
    assert!(!err.is_transient(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("newer taskhook")
            && msg.contains("99")
            && msg.contains(&format!("up to {}", MIGRATIONS.len())),
        "{msg}"
    );
}

/// Waits for the next wake-up, at most 5 s.
async fn next_wake(rx: &mut tokio::sync::broadcast::Receiver<Wake>) -> Wake {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a wake-up within 5 s")
        .unwrap()
}

#[tokio::test]
async fn notifications_wake_the_other_instances_of_the_schema_only() {
    let Some((a, guard)) = fresh(2).await else {
        return;
    };
    let b = open(&guard, 2).await;
    let Some((elsewhere, _other)) = fresh(1).await else {
        return;
    };
    let mut rx = b.wakeups().expect("carried");
    let mut rx_elsewhere = elsewhere.wakeups().expect("carried");
    // The LISTEN sessions start with the stores; wait until they listen.
    wait_listening(&b).await;
    wait_listening(&elsewhere).await;
    a.enqueue(0, 0, vec![task("t")]).await.unwrap();
    assert_eq!(next_wake(&mut rx).await, Wake::Tasks);
    let t = a
        .claim_poll_batch(0, 0, 10.into(), 1_000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    a.record_polls(10, vec![finish(&t, &["w"])], None)
        .await
        .unwrap();
    assert_eq!(next_wake(&mut rx).await, Wake::Deliveries);
    // A claim and a retry make nothing due now: no wake-up. A give-back does.
    let d = a
        .claim_deliveries(20, 10, 1_000, vec![], 10)
        .await
        .unwrap()
        .deliveries
        .remove(0);
    a.release_deliveries(30, vec![(d.id, d.claim)])
        .await
        .unwrap();
    assert_eq!(next_wake(&mut rx).await, Wake::Deliveries);
    assert!(rx.try_recv().is_err(), "one wake-up per statement");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        rx_elsewhere.try_recv().is_err(),
        "another schema's store hears nothing"
    );
}

/// Until `s`'s LISTEN session has a backend.
async fn wait_listening(s: &PostgresStore) -> i32 {
    for _ in 0..500 {
        let pid = s.inner.listener.backend_pid();
        if pid != 0 {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the LISTEN session never connected");
}

#[tokio::test]
async fn the_listen_session_comes_back_after_its_backend_is_terminated() {
    let Some((a, guard)) = fresh(2).await else {
        return;
    };
    let b = open(&guard, 2).await;
    let mut rx = a.wakeups().unwrap();
    let pid = wait_listening(&a).await;
    let c = raw(guard.schema()).await;
    let ended: bool = c
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(ended);
    // Back with a new backend; it says to look again, since it may have
    // missed something.
    let mut again = 0;
    for _ in 0..500 {
        again = a.inner.listener.backend_pid();
        if again != 0 && again != pid {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(again != 0 && again != pid, "reconnected ({pid} -> {again})");
    let looked = [next_wake(&mut rx).await, next_wake(&mut rx).await];
    assert!(
        looked.contains(&Wake::Tasks) && looked.contains(&Wake::Deliveries),
        "both kinds after a reconnection: {looked:?}"
    );
    b.enqueue(0, 0, vec![task("t")]).await.unwrap();
    assert_eq!(next_wake(&mut rx).await, Wake::Tasks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_a_new_term_when_it_lapses_and_leaving_frees_it() {
    let Some((s, guard)) = fresh(4).await else {
        return;
    };
    let others = [open(&guard, 1).await, open(&guard, 1).await];
    let names = ["i0", "i1", "i2", "i3", "i4"];
    // Five instances ask at once: one leads.
    let mut asks = tokio::task::JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let s = if i < 2 { others[i].clone() } else { s.clone() };
        let name = name.to_string();
        asks.spawn(async move { (name.clone(), s.lead(0, name, 1_000).await.unwrap()) });
    }
    let mut leaders = Vec::new();
    while let Some(r) = asks.join_next().await {
        let (name, term) = r.unwrap();
        if let Some(term) = term {
            leaders.push((name, term));
        }
    }
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    let (first, term) = leaders.remove(0);
    assert_eq!(s.leader(500).await.unwrap(), Some((first.clone(), term)));
    let other = names.iter().find(|n| **n != first).unwrap().to_string();
    assert_eq!(s.lead(500, other.clone(), 1_000).await.unwrap(), None);
    // The leader keeps its term while it renews in time.
    assert_eq!(s.lead(900, first.clone(), 1_000).await.unwrap(), Some(term));
    assert_eq!(s.lead(1_500, other.clone(), 1_000).await.unwrap(), None);
    // It dies: within one TTL of its last renewal another takes over, in a
    // new term; the old one no longer leads.
    assert_eq!(s.leader(1_900).await.unwrap(), None);
    let next = s.lead(1_900, other.clone(), 1_000).await.unwrap().unwrap();
    assert!(next > term);
    assert_eq!(s.lead(1_901, first.clone(), 1_000).await.unwrap(), None);
    assert_eq!(s.leader(1_901).await.unwrap(), Some((other.clone(), next)));
    // Leaving frees it at once; the next term is newer still.
    s.leave(other.clone()).await.unwrap();
    assert_eq!(s.leader(1_902).await.unwrap(), None);
    let third = s.lead(1_903, first.clone(), 1_000).await.unwrap().unwrap();
    assert!(third > next);
    // Someone else's leave does not resign the leader.
    s.leave(other).await.unwrap();
    assert_eq!(s.leader(1_904).await.unwrap(), Some((first, third)));
}

#[tokio::test]
async fn heartbeats_list_the_live_instances_oldest_first() {
    let Some((s, guard)) = fresh(2).await else {
        return;
    };
    let b = open(&guard, 1).await;
    let info = |id: &str, started_at| InstanceInfo {
        id: id.into(),
        host: format!("{id}.host"),
        started_at,
        heartbeat_at: 0,
    };
    s.heartbeat(100, info("young", 90), 1_000).await.unwrap();
    b.heartbeat(100, info("old", 10), 1_000).await.unwrap();
    let live = s.heartbeat(200, info("young", 90), 1_000).await.unwrap();
    let ids: Vec<_> = live
        .iter()
        .map(|i| (i.id.as_str(), i.heartbeat_at))
        .collect();
    assert_eq!(ids, [("old", 100), ("young", 200)]);
    assert_eq!(live[0].host, "old.host");
    // "old" stops beating: gone once its TTL is over.
    let live = s.heartbeat(1_100, info("young", 90), 1_000).await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, "young");
    b.heartbeat(1_150, info("old", 10), 1_000).await.unwrap();
    b.leave("old".into()).await.unwrap();
    let live = s.heartbeat(1_200, info("young", 90), 1_000).await.unwrap();
    assert_eq!(live.len(), 1);
}

/// The server drops every connection of the store (as in a restart): the
/// store reports the failure as transient and recovers on its own, with
/// new connections, the LISTEN session included.
#[tokio::test]
async fn the_store_recovers_when_the_server_drops_its_connections() {
    if !reachable().await {
        return;
    }
    let guard = SchemaGuard::new(url(), schema_name());
    let app = guard.schema().to_string();
    let sep = if url().contains('?') { '&' } else { '?' };
    let s = PostgresStore::connect(
        &format!("{}{sep}application_name={app}", url()),
        PostgresOptions {
            pool_size: 3,
            schema: Some(guard.schema().into()),
        },
    )
    .await
    .unwrap();
    s.enqueue(0, 0, vec![task("a")]).await.unwrap();
    let listening = wait_listening(&s).await;
    let c = raw(guard.schema()).await;
    let ended: i64 = c
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ended >= 2, "pool and LISTEN connections ended: {ended}");
    let mut failures = 0;
    let stats = loop {
        match s.stats().await {
            Ok(st) => break st,
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                failures += 1;
                assert!(failures < 50, "never recovered: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(stats.watching, 1);
    s.enqueue(10, 0, vec![task("b")]).await.unwrap();
    for _ in 0..500 {
        let pid = s.inner.listener.backend_pid();
        if pid != 0 && pid != listening {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the LISTEN session did not come back");
}

/// Unreachable servers are transient; bad URLs and credentials are fatal.
#[tokio::test]
async fn connect_failures_are_classed() {
    if !reachable().await {
        return;
    }
    let err = PostgresStore::connect(
        "postgres://postgres@127.0.0.1:1/test?connect_timeout=2",
        PostgresOptions::default(),
    )
    .await
    .err()
    .unwrap();
    assert!(err.is_transient(), "{err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the cause is kept"
    );
    let mut u = ::url::Url::parse(&url()).unwrap();
    u.set_path("/taskhook_no_such_database");
    let err = PostgresStore::connect(u.as_str(), PostgresOptions::default())
        .await
        .err()
        .unwrap();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// TLS with the server's certificate checked, when this server has TLS on
/// with Debian's snake-oil certificate (issued to `localhost`).
#[tokio::test]
async fn tls_connections_check_the_certificate() {
    const CERT: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    let Some((_, guard)) = fresh(1).await else {
        return;
    };
    let ssl: String = raw(guard.schema())
        .await
        .query_one("SHOW ssl", &[])
        .await
        .unwrap()
        .get(0);
    let mut u = ::url::Url::parse(&url()).unwrap();
    if ssl != "on" || !std::path::Path::new(CERT).exists() || u.host_str() != Some("127.0.0.1") {
        report("tls test: the server has no snake-oil TLS here; not run".into());
        return;
    }
    u.set_host(Some("localhost")).unwrap();
    let opts = || PostgresOptions {
        pool_size: 1,
        schema: Some(guard.schema().into()),
    };
    let s = PostgresStore::connect(
        &format!("{u}?sslmode=verify-full&sslrootcert={CERT}"),
        opts(),
    )
    .await
    .unwrap();
    let c = s.conn().await.unwrap();
    let on: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(on, "the session is encrypted");
    // Without the certificate's issuer among the roots, no connection.
    let err = PostgresStore::connect(&format!("{u}?sslmode=require"), opts())
        .await
        .err()
        .unwrap();
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
}

/// Enqueue of 10,000 IDs in one call, then claims of 100 until none is
/// left, then delivery claims of 100: the figures go to stderr (timings
/// are reported, not asserted).
#[tokio::test]
async fn enqueue_and_claim_figures() {
    let Some((s, _guard)) = fresh(2).await else {
        return;
    };
    const N: usize = 10_000;
    let tasks: Vec<NewTask> = (0..N).map(|i| task(&format!("task-{i:06}"))).collect();
    let started = Instant::now();
    let out = s.enqueue(0, 0, tasks).await.unwrap();
    let took = started.elapsed();
    assert_eq!(out.accepted, N);
    report(format!(
        "enqueue: {N} IDs in {:.1} ms = {:.0} IDs/s",
        took.as_secs_f64() * 1e3,
        N as f64 / took.as_secs_f64()
    ));
    let again = s
        .enqueue(
            1,
            0,
            (0..N).map(|i| task(&format!("task-{i:06}"))).collect(),
        )
        .await
        .unwrap();
    assert_eq!(again.duplicates, N);

    let mut times = Vec::new();
    let mut claimed = Vec::new();
    loop {
        let started = Instant::now();
        let c = s
            .claim_poll_batch(10, 10, 100.into(), 1_000_000)
            .await
            .unwrap();
        times.push(started.elapsed());
        if c.tasks.is_empty() {
            break;
        }
        claimed.extend(c.tasks);
    }
    assert_eq!(claimed.len(), N);
    report(format!("claim_poll_batch of 100: {}", figures(&mut times)));

    let started = Instant::now();
    for chunk in claimed[..2_000].chunks(100) {
        s.record_polls(20, chunk.iter().map(|t| finish(t, &["w"])).collect(), None)
            .await
            .unwrap();
    }
    let took = started.elapsed();
    report(format!(
        "record_polls: 2000 finishes (event + delivery each) in rounds of 100: {:.0} tasks/s",
        2_000.0 / took.as_secs_f64()
    ));
    let mut times = Vec::new();
    let mut n = 0;
    loop {
        let started = Instant::now();
        let c = s
            .claim_deliveries(30, 100, 1_000_000, vec![], 100_000)
            .await
            .unwrap();
        times.push(started.elapsed());
        if c.deliveries.is_empty() {
            break;
        }
        n += c.deliveries.len();
    }
    assert_eq!(n, 2_000);
    report(format!("claim_deliveries of 100: {}", figures(&mut times)));
}

/// "p50 …, p99 …, max …" of `times`.
fn figures(times: &mut [Duration]) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    format!(
        "{} calls, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        times.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

/// A Unix-socket URL (no TLS) reaches the same server, when this machine
/// has the socket.
#[tokio::test]
async fn a_unix_socket_url_connects() {
    const SOCKET: &str = "/var/run/postgresql/.s.PGSQL.5432";
    let Some((_, guard)) = fresh(1).await else {
        return;
    };
    let u = ::url::Url::parse(&url()).unwrap();
    if !std::path::Path::new(SOCKET).exists() || u.port().is_some_and(|p| p != 5432) {
        report("unix socket test: no socket here; not run".into());
        return;
    }
    let s = PostgresStore::connect(
        &format!(
            "postgres://{}@%2Fvar%2Frun%2Fpostgresql{}",
            u.username(),
            u.path()
        ),
        PostgresOptions {
            pool_size: 1,
            schema: Some(guard.schema().into()),
        },
    )
    .await
    .unwrap();
    s.check_writable(0).await.unwrap();
}

/// A schema written by version 1 (here with task IDs under a linguistic
/// collation, as a database's default may be) migrates with its rows: IDs
/// compare in byte order afterwards, so an ID prefix is an exact range.
#[tokio::test]
async fn a_version_1_schema_migrates_with_its_rows_and_ids_in_byte_order() {
    if !reachable().await {
        return;
    }
    let guard = SchemaGuard::new(url(), schema_name());
    let schema = guard.schema().to_string();
    let c = raw(&schema).await;
    let v1 = MIGRATIONS[0].replacen(
        "id             text PRIMARY KEY",
        "id             text COLLATE \"en-US-x-icu\" PRIMARY KEY",
        1,
    );
    assert_ne!(v1, MIGRATIONS[0], "the test's edit applies");
    c.batch_execute(&format!(
        "CREATE SCHEMA {schema}; SET search_path TO {schema}; {v1};
         CREATE TABLE taskhook_migrations (version integer PRIMARY KEY, taskhook text NOT NULL);
         INSERT INTO taskhook_migrations VALUES (1, 'old');
         INSERT INTO tasks (id, service, status, enqueued_at, next_poll_at, event_id, outcome)
           VALUES ('Ba', 'producer', 1, 50, 0, 'msg_1', 'failed'),
                  ('bz', 'producer', 0, 60, 1000, NULL, NULL),
                  ('B', 'producer', 0, 70, 1000, NULL, NULL);
         INSERT INTO events (id, task_id, type, body, created_at)
           VALUES ('msg_1', 'Ba', 'task.failed', '{{}}', 0);
         INSERT INTO deliveries (event_id, task_id, webhook, kind, url, state, attempts,
             next_attempt_at, task_enqueued_at, created_at, updated_at)
           VALUES ('msg_1', 'Ba', 'w', 0, 'http://w.example/', 2, 4, 0, 50, 0, 40);"
    ))
    .await
    .unwrap();
    // The premise: under that collation "bz" lies between "B" and "C".
    let between: bool = c
        .query_one(
            "SELECT count(*) = 1 FROM tasks WHERE id >= 'B' AND id < 'C' AND id = 'bz'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(between);
    let s = open(&guard, 2).await;
    assert_eq!(s.schema_version().await.unwrap(), MIGRATIONS.len() as i64);
    let collation: Option<String> = c
        .query_one(
            "SELECT collation_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = 'tasks' AND column_name = 'id'",
            &[&schema],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(collation.as_deref(), Some("C"));
    let ids = |f: TaskFilter| {
        let s = s.clone();
        async move {
            s.list_tasks(f)
                .await
                .unwrap()
                .into_iter()
                .map(|t| t.id)
                .collect::<Vec<_>>()
        }
    };
    let prefix = |p: &str| TaskFilter {
        id_prefix: Some(p.into()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(ids(prefix("B")).await, ["B", "Ba"]);
    assert_eq!(ids(prefix("b")).await, ["bz"]);
    let v = s.get_task("Ba".into()).await.unwrap().unwrap();
    assert_eq!(
        (v.status, v.deliveries.len(), v.attempts.len()),
        (TaskStatus::Delivering, 1, 0)
    );
    let dead = s
        .list_matching(
            ReplayFilter {
                state: DeliveryState::Failed,
                webhook: Some("w".into()),
                event_type: Some("task.failed".into()),
                since: None,
                until: Some(41),
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!((dead.len(), dead[0].attempts), (1, 4));
    assert_eq!(
        s.hurry(100, "producer".into(), vec!["bz".into(), "B".into()])
            .await
            .unwrap(),
        2
    );
}

/// EXPLAIN of `sql` with `args`, on a session that avoids sequential scans
/// where any index serves (the test tables are too small for the planner
/// to prefer an index on its own).
async fn explain(c: &tokio_postgres::Client, sql: &str, args: &[&(dyn ToSql + Sync)]) -> String {
    c.batch_execute("SET enable_seqscan = off").await.unwrap();
    let rows = c.query(&format!("EXPLAIN {sql}"), args).await.unwrap();
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The new reads can use the indexes meant for them: an ID prefix the
/// primary key, watched tasks their age, dead letters their settle time,
/// the attempt log its event and its time, a hint the primary key, the
/// demand count the due and the running tasks' partial indexes.
#[tokio::test]
async fn listings_and_the_attempt_log_can_use_their_indexes() {
    let Some((s, guard)) = fresh(1).await else {
        return;
    };
    // Enough rows, with statistics, for the planner to weigh its choices.
    for batch in 0..20 {
        let tasks = (0..100).map(|i| task(&format!("t{batch}-{i}"))).collect();
        s.enqueue(batch * 1_000, 0, tasks).await.unwrap();
    }
    drop(s);
    let c = raw(guard.schema()).await;
    c.batch_execute("ANALYZE tasks").await.unwrap();
    let listing = |f: TaskFilter| {
        let c = &c;
        async move {
            let (sql, args) = super::admin::list_tasks_query(&f);
            let args: Vec<&(dyn ToSql + Sync)> = args
                .iter()
                .map(|a| a.as_ref() as &(dyn ToSql + Sync))
                .collect();
            explain(c, &sql, &args).await
        }
    };
    let p = listing(TaskFilter {
        id_prefix: Some("job".into()),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert!(p.contains("tasks_pkey"), "{p}");
    let p = listing(TaskFilter {
        status: Some(TaskStatus::Watching),
        after: Some((5, "x".into())),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert!(p.contains("tasks_age"), "{p}");
    let p = explain(
        &c,
        "SELECT d.id FROM deliveries d LEFT JOIN events e ON e.id = d.event_id \
         WHERE d.state = $1 AND d.state IN (2, 4) AND d.updated_at >= $2 AND d.updated_at < $3 \
         ORDER BY d.updated_at DESC, d.id DESC LIMIT 10",
        &[&FAILED, &0i64, &100i64],
    )
    .await;
    assert!(p.contains("deliveries_dead"), "{p}");
    let p = explain(
        &c,
        "SELECT * FROM attempts WHERE event_id = $1 ORDER BY at, id",
        &[&"e"],
    )
    .await;
    assert!(p.contains("attempts_event"), "{p}");
    let p = explain(
        &c,
        "SELECT webhook, count(*) FROM attempts WHERE at >= $1 GROUP BY webhook",
        &[&5i64],
    )
    .await;
    assert!(p.contains("attempts_at"), "{p}");
    let p = explain(
        &c,
        "UPDATE tasks SET next_poll_at = $1 WHERE id = ANY($3::text[]) AND service = $2 \
         AND status = 0 AND NOT leased AND next_poll_at > $1",
        &[&5i64, &"producer", &vec!["a".to_string()]],
    )
    .await;
    assert!(p.contains("tasks_pkey"), "{p}");
    let p = explain(&c, super::queue::DEMAND, &[&5i64]).await;
    assert!(
        p.contains("tasks_due") && p.contains("tasks_polled") && !p.contains("tasks_age"),
        "{p}"
    );
}

/// Replays and hints wake the other instances: one wake-up per call,
/// however many rows it moved; a hint that moved nothing wakes no one.
#[tokio::test]
async fn bulk_replays_and_hints_wake_the_other_instances() {
    let Some((a, guard)) = fresh(2).await else {
        return;
    };
    let b = open(&guard, 2).await;
    finished(&a, "t", 20, &["w"], 0).await;
    let ds = a
        .claim_deliveries(10, 100, 1_000, vec![], 100)
        .await
        .unwrap()
        .deliveries;
    let dead = ds
        .iter()
        .map(|d| DeliveryReport {
            verdict: DeliveryVerdict::DeadLetter,
            ..delivered(d)
        })
        .collect();
    a.record_deliveries(20, dead).await.unwrap();
    a.enqueue(30, 60_000, vec![task("later")]).await.unwrap();
    let mut rx = b.wakeups().expect("carried");
    wait_listening(&b).await;
    // The set-up's own wake-ups may still be on their way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while rx.try_recv().is_ok() {}
    let all = ReplayFilter {
        state: DeliveryState::Failed,
        webhook: None,
        event_type: None,
        since: None,
        until: None,
    };
    assert_eq!(a.replay_matching(40, all.clone()).await.unwrap(), 20);
    assert_eq!(next_wake(&mut rx).await, Wake::Deliveries);
    assert_eq!(a.replay_matching(40, all).await.unwrap(), 0);
    assert_eq!(
        a.hurry(50, "producer".into(), vec!["nope".into()])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        a.hurry(50, "producer".into(), vec!["later".into()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(next_wake(&mut rx).await, Wake::Tasks);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        rx.try_recv().is_err(),
        "one wake-up per call that moved rows"
    );
}

/// Twenty thousand dead letters go back to pending in one call, their
/// tasks delivering again.
#[tokio::test]
async fn a_bulk_replay_of_twenty_thousand_dead_letters() {
    let Some((s, _guard)) = fresh(2).await else {
        return;
    };
    const N: usize = 20_000;
    finished(&s, "t", N, &["w"], 0).await;
    loop {
        let ds = s
            .claim_deliveries(10, 2_000, 1_000_000, vec![], N)
            .await
            .unwrap()
            .deliveries;
        if ds.is_empty() {
            break;
        }
        let dead = ds
            .iter()
            .map(|d| DeliveryReport {
                verdict: DeliveryVerdict::DeadLetter,
                ..delivered(d)
            })
            .collect();
        s.record_deliveries(20, dead).await.unwrap();
    }
    let st = s.stats().await.unwrap();
    assert_eq!((st.dead_letters, st.done), (N as u64, N as u64));
    let started = Instant::now();
    let n = s
        .replay_matching(
            100,
            ReplayFilter {
                state: DeliveryState::Failed,
                webhook: Some("w".into()),
                event_type: None,
                since: Some(0),
                until: None,
            },
        )
        .await
        .unwrap();
    report(format!(
        "bulk replay of {N} dead letters: {:?}",
        started.elapsed()
    ));
    assert_eq!(n, N as u64);
    let st = s.stats().await.unwrap();
    assert_eq!(
        (
            st.dead_letters,
            st.deliveries_pending,
            st.delivering,
            st.done
        ),
        (0, N as u64, N as u64, 0)
    );
}

/// Two instances learning one service's durations at once lose nothing:
/// the stored histogram is the merge of everything learned, as the
/// estimator computes it (forgetting included).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_learning_at_once_add_up() {
    let Some((a, guard)) = fresh(4).await else {
        return;
    };
    let b = open(&guard, 4).await;
    let batch = |i: i64| -> Vec<i64> {
        (0..50)
            .map(|j| 1_000 + 137 * ((i * 50 + j) % 400))
            .collect()
    };
    let mut learners = tokio::task::JoinSet::new();
    for (w, s) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        learners.spawn(async move {
            for k in 0..25 {
                let i = (w * 25 + k) as i64;
                s.learn_durations(i, "producer".into(), batch(i))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(l) = learners.join_next().await {
        l.unwrap();
    }
    let mut expected = durations::Histogram::default();
    for i in 0..100 {
        expected.merge(&durations::Histogram::of(&batch(i)));
    }
    let models = b.duration_models().await.unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(
        models[0],
        expected.model("producer".into(), 5_000, models[0].updated_at)
    );
    // Past the forgetting threshold, the statement halves as the estimator does.
    let big: Vec<i64> = (0..durations::AGE_ABOVE as i64)
        .map(|i| 500 + i % 90_000)
        .collect();
    let mut aged = expected.clone();
    for at in [200, 201] {
        aged.merge(&durations::Histogram::of(&big));
        let m = a
            .learn_durations(at, "producer".into(), big.clone())
            .await
            .unwrap();
        assert_eq!(m, aged.model("producer".into(), m.count, at));
    }
    let stored: Vec<i64> = raw(guard.schema())
        .await
        .query_one(
            "SELECT buckets FROM durations WHERE service = 'producer'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(durations::Histogram::from_stored(&stored), aged);
    // A new service's first learning forgets the same way.
    let mut fresh_one = durations::Histogram::default();
    fresh_one.merge(&durations::Histogram::of(&big));
    let m = b.learn_durations(300, "kling".into(), big).await.unwrap();
    assert_eq!(
        m,
        fresh_one.model("kling".into(), durations::AGE_ABOVE, 300)
    );
}

/// The plan of `sql` with `params`, as text.
async fn plan_of(c: &tokio_postgres::Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> String {
    c.query(&format!("EXPLAIN {sql}"), params)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// With the planner's statistics stale (tables never analyzed: a fresh
/// schema, a burst before autoanalyze, a server without autovacuum), the
/// settle's pending check and the claim's per-webhook lease count read
/// deliveries by their own indexes, never by scanning every pending
/// delivery in `deliveries_due` (which made a settle of 64 events take a
/// second at 100,000 pending deliveries).
#[tokio::test]
async fn stale_statistics_never_send_a_settle_or_a_lease_count_through_every_pending_delivery() {
    let Some((s, guard)) = fresh(2).await else {
        return;
    };
    finished(&s, "t", 3000, &["a", "b"], 1000).await;
    let c = raw(guard.schema()).await;
    let analyzed: Option<std::time::SystemTime> = c
        .query_one(
            "SELECT coalesce(last_analyze, last_autoanalyze) FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND relname = 'deliveries'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if analyzed.is_some() {
        report("stale-statistics plan test: the table was analyzed already; the plans below are checked anyway".into());
    }
    let now: i64 = 2000;
    let tasks: Vec<String> = (0..64).map(|i| format!("t{i}")).collect();
    let events: Vec<String> = (0..64).map(|i| format!("msg_t{i}")).collect();
    let settle = plan_of(&c, queue::SETTLE_EVENTS, &[&now, &tasks, &events]).await;
    assert!(!settle.contains("deliveries_due"), "{settle}");
    // The lease count alone (the claim's `busy`), as the claim plans it.
    let busy_sql = queue::CLAIM_DELIVERIES
        .split_once("),\ncand AS")
        .map(|(busy, _)| format!("{busy}) SELECT * FROM busy"))
        .unwrap();
    let busy = plan_of(&c, &busy_sql, &[&now]).await;
    assert!(!busy.contains("deliveries_due"), "{busy}");
}
