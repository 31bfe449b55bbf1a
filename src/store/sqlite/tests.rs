//! SQLite-only cases: opening, restarts, bad files, migrations. The shared
//! rules are checked by the conformance suite (`tests/it/store_conformance.rs`).

use super::*;
use crate::store::testing::{finish, resched, task};

#[tokio::test]
async fn a_restart_takes_back_every_lease() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let s = SqliteStore::open(&path, SyncMode::Full, 0).unwrap();
        s.enqueue(0, 0, vec![task("a")]).await.unwrap();
        let t = s
            .claim_poll_batch(0, 0, 10.into(), 1_000_000)
            .await
            .unwrap()
            .tasks;
        assert_eq!(t.len(), 1);
    }
    let s = SqliteStore::open(&path, SyncMode::Full, 50).unwrap();
    let t = s
        .claim_poll_batch(50, 50, 10.into(), 1000)
        .await
        .unwrap()
        .tasks;
    assert_eq!(t.len(), 1, "the dead process's lease is released at open");
}

#[test]
fn refuses_a_second_owner_missing_dirs_corrupt_and_newer_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let first = SqliteStore::open(&path, SyncMode::Full, 0).unwrap();
    assert_eq!(first.schema_version(), MIGRATIONS.len() as i64);
    let err = SqliteStore::open(&path, SyncMode::Full, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another taskhook"), "{err}");
    drop(first);

    let err = SqliteStore::open(&dir.path().join("nope/t.db"), SyncMode::Full, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");

    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
    let err = SqliteStore::open(&junk, SyncMode::Full, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a taskhook database"), "{err}");

    let newer = dir.path().join("newer.db");
    let c = rusqlite::Connection::open(&newer).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let err = SqliteStore::open(&newer, SyncMode::Full, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("newer taskhook"), "{err}");
}

/// A store written by schema version 1 (delivery IDs could be reused,
/// per-task deliveries named by their URL) opens as version 2 with every
/// row kept and each delivery's kind worked out.
#[tokio::test]
async fn a_version_1_store_migrates_with_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO tasks (id, service, status, enqueued_at, next_poll_at, event_id, claim)
               VALUES ('t', 'producer', 1, 0, 0, 'msg_1', 7);
             INSERT INTO events (id, task_id, type, body, created_at)
               VALUES ('msg_1', 't', 'task.succeeded', '{}', 0);
             INSERT INTO deliveries (id, event_id, task_id, webhook, url, state, next_attempt_at,
               task_enqueued_at, created_at, updated_at)
               VALUES (5, 'msg_1', 't', 'pipeline', 'http://p.example/h', 0, 0, 0, 0, 0),
                      (9, 'msg_1', 't', 'http://own.example/h', 'http://own.example/h', 0, 0, 0, 0, 0);",
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path, SyncMode::Full, 100).unwrap();
    assert_eq!(s.schema_version(), MIGRATIONS.len() as i64);
    let v = s.get_task("t".into()).await.unwrap().unwrap();
    let kinds: Vec<_> = v.deliveries.iter().map(|d| (d.id, d.kind)).collect();
    assert_eq!(
        kinds,
        [(5, DeliveryKind::Webhook), (9, DeliveryKind::TaskUrl)]
    );
    // New rows never take an old ID, and claims continue past the old ones.
    s.enqueue(100, 0, vec![task("u")]).await.unwrap();
    let u = s
        .claim_poll_batch(100, 100, 10.into(), 1000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    assert!(u.claim > 7, "claim {}", u.claim);
    s.record_polls(110, vec![finish(&u, &["w"])], None)
        .await
        .unwrap();
    let d = s.get_task("u".into()).await.unwrap().unwrap().deliveries;
    assert!(d[0].id > 9, "delivery id {}", d[0].id);
}

/// A store written by schema version 2 opens as version 3 with every row
/// kept; the attempt log and learned durations start empty and work.
#[tokio::test]
async fn a_version_2_store_migrates_with_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.execute_batch(MIGRATIONS[1]).unwrap();
        c.execute_batch(
            "PRAGMA user_version = 2;
             UPDATE counters SET value = 7 WHERE name = 'claim';
             INSERT INTO tasks (id, service, status, enqueued_at, next_poll_at, event_id,
                 outcome, claim)
               VALUES ('t', 'producer', 1, 50, 0, 'msg_1', 'succeeded', 7),
                      ('w', 'producer', 0, 60, 1000, NULL, NULL, 0);
             INSERT INTO events (id, task_id, type, body, created_at)
               VALUES ('msg_1', 't', 'task.succeeded', '{}', 0);
             INSERT INTO deliveries (id, event_id, task_id, webhook, kind, url, state,
                 attempts, next_attempt_at, task_enqueued_at, created_at, updated_at)
               VALUES (5, 'msg_1', 't', 'pipeline', 0, 'http://p.example/h', 2, 3, 0, 50, 0, 40),
                      (9, 'msg_1', 't', 'other', 0, 'http://o.example/h', 0, 0, 0, 50, 0, 0);",
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path, SyncMode::Full, 100).unwrap();
    assert_eq!(s.schema_version(), MIGRATIONS.len() as i64);
    let listed: Vec<_> = s
        .list_tasks(TaskFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.id, t.status))
        .collect();
    assert_eq!(
        listed,
        [
            ("w".to_string(), TaskStatus::Watching),
            ("t".to_string(), TaskStatus::Delivering)
        ]
    );
    let v = s.get_task("t".into()).await.unwrap().unwrap();
    assert_eq!(v.deliveries.len(), 2);
    assert!(v.attempts.is_empty(), "no log before version 3");
    let dead = s
        .list_matching(
            ReplayFilter {
                state: DeliveryState::Failed,
                webhook: Some("pipeline".into()),
                event_type: Some("task.succeeded".into()),
                since: Some(40),
                until: None,
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!((dead.len(), dead[0].id, dead[0].attempts), (1, 5, 3));
    // The old pending delivery is sent and logged.
    let d = s
        .claim_deliveries(100, 10, 1000, vec![], 10)
        .await
        .unwrap()
        .deliveries
        .remove(0);
    assert_eq!(d.id, 9);
    s.record_deliveries(
        110,
        vec![DeliveryReport {
            id: d.id,
            claim: d.claim,
            task_id: d.task_id.clone(),
            event_id: d.event_id.clone(),
            verdict: DeliveryVerdict::Delivered,
            status: Some(204),
            error: None,
            webhook: d.webhook.clone(),
            attempt: 1,
            latency_ms: Some(12),
            answer: None,
        }],
    )
    .await
    .unwrap();
    let v = s.get_task("t".into()).await.unwrap().unwrap();
    let log: Vec<_> = v
        .attempts
        .iter()
        .map(|a| (a.delivery_id, a.webhook.as_str(), a.verdict.as_str()))
        .collect();
    assert_eq!(log, [(9, "other", "delivered")]);
    assert_eq!(
        s.replay_matching(
            120,
            ReplayFilter {
                state: DeliveryState::Failed,
                webhook: None,
                event_type: None,
                since: None,
                until: None,
            }
        )
        .await
        .unwrap(),
        1
    );
    let m = s
        .learn_durations(130, "producer".into(), vec![5_000])
        .await
        .unwrap();
    assert_eq!(m.count, 1);
    // Claims continue past the old ones.
    assert_eq!(
        s.hurry(140, "producer".into(), vec!["w".into()])
            .await
            .unwrap(),
        1
    );
    let w = s
        .claim_poll_batch(140, 140, 10.into(), 1000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    assert!(w.claim > 7, "claim {}", w.claim);
}

/// Learned durations are in the file: a reopened store has them, and goes
/// on adding to them.
#[tokio::test]
async fn learned_durations_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let before = {
        let s = SqliteStore::open(&path, SyncMode::Full, 0).unwrap();
        s.learn_durations(10, "producer".into(), vec![3_000; 40])
            .await
            .unwrap();
        s.learn_durations(20, "kling".into(), vec![90_000; 5])
            .await
            .unwrap();
        s.duration_models().await.unwrap()
    };
    let s = SqliteStore::open(&path, SyncMode::Full, 100).unwrap();
    assert_eq!(s.duration_models().await.unwrap(), before);
    let m = s
        .learn_durations(110, "producer".into(), vec![3_000; 10])
        .await
        .unwrap();
    assert_eq!((m.count, m.updated_at), (50, 110));
    assert_eq!(m.p50_ms, before[1].p50_ms, "same durations, same model");
}

/// `EXPLAIN QUERY PLAN` of `sql`, its rows' details joined.
fn plan(c: &Connection, sql: &str, args: Vec<rusqlite::types::Value>) -> String {
    let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    st.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
        .unwrap()
        .map(|r| r.unwrap())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The new reads use the indexes meant for them: watched tasks by age, the
/// demand count the running tasks' and the due tasks' indexes only,
/// an ID prefix by the primary key (whatever else is asked), dead letters
/// by state and settle time, the attempt log by event and by time.
#[test]
fn listings_and_the_attempt_log_use_their_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(SqliteStore::open(&path, SyncMode::Full, 0).unwrap());
    let c = Connection::open(&path).unwrap();
    let listing = |f: TaskFilter| {
        let (sql, args) = list_tasks_query(&f);
        plan(&c, &sql, args)
    };
    let watching = TaskFilter {
        status: Some(TaskStatus::Watching),
        after: Some((5, "x".into())),
        limit: 10,
        ..Default::default()
    };
    let p = listing(watching.clone());
    assert!(p.contains("USING INDEX tasks_age (enqueued_at<?)"), "{p}");
    let p = plan(&c, super::DEMAND, vec![5i64.into()]);
    assert!(
        p.contains("SEARCH tasks USING INDEX tasks_due (next_poll_at<?)")
            && p.contains("SCAN tasks USING INDEX tasks_polled")
            && !p.contains("tasks_age"),
        "{p}"
    );
    for f in [
        TaskFilter {
            id_prefix: Some("job".into()),
            limit: 10,
            ..Default::default()
        },
        TaskFilter {
            id_prefix: Some("job".into()),
            ..watching
        },
    ] {
        let p = listing(f);
        assert!(
            p.contains("SEARCH tasks USING INDEX sqlite_autoindex_tasks_1 (id>? AND id<?)"),
            "{p}"
        );
    }
    let mut args = matching_args(&ReplayFilter {
        state: DeliveryState::Failed,
        webhook: Some("w".into()),
        event_type: None,
        since: Some(5),
        until: None,
    })
    .to_vec();
    args.push(10i64.into());
    let p = plan(
        &c,
        &format!("SELECT {DELIVERY_COLUMNS} {MATCHING} ORDER BY d.updated_at DESC LIMIT ?6"),
        args,
    );
    assert!(
        p.contains("USING INDEX deliveries_settled (state=? AND updated_at>? AND updated_at<?)"),
        "{p}"
    );
    let p = plan(
        &c,
        &format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE event_id = ?1 ORDER BY at, id"),
        vec!["e".to_string().into()],
    );
    assert!(p.contains("USING INDEX attempts_event"), "{p}");
    let p = plan(
        &c,
        "SELECT webhook, count(*) FROM attempts WHERE at >= ?1 GROUP BY webhook",
        vec![5i64.into()],
    );
    assert!(p.contains("USING INDEX attempts_at (at>?)"), "{p}");
}

/// A leased task keeps its lease through a hint even once it expired (its
/// due time is the lease's end, already past): the hint is only marked, and
/// the task is claimed again then.
#[tokio::test]
async fn hurry_leaves_an_expired_lease_to_the_next_claim() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("t.db"), SyncMode::Full, 0).unwrap();
    s.enqueue(0, 0, vec![task("a")]).await.unwrap();
    let first = s
        .claim_poll_batch(0, 0, 10.into(), 500)
        .await
        .unwrap()
        .tasks
        .remove(0);
    assert_eq!(
        s.hurry(600, "producer".into(), vec!["a".into()])
            .await
            .unwrap(),
        1
    );
    let again = s
        .claim_poll_batch(600, 600, 10.into(), 5000)
        .await
        .unwrap()
        .tasks
        .remove(0);
    assert!(again.claim > first.claim);
    s.record_polls(700, vec![resched(&first, 50)], None)
        .await
        .unwrap();
    assert_eq!(
        s.get_task("a".into()).await.unwrap().unwrap().next_poll_at,
        Some(5000),
        "the stale worker's write is ignored"
    );
}

/// A restart gives back what the gone process held, due at once; a task
/// hinted during its lost poll ahead of the rest.
#[tokio::test]
async fn a_restart_keeps_the_hint_of_a_task_whose_poll_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let s = SqliteStore::open(&path, SyncMode::Full, 0).unwrap();
    s.enqueue(0, 0, vec![task("a"), task("b")]).await.unwrap();
    let claimed = s.claim_poll_batch(0, 0, 10.into(), 500).await.unwrap();
    assert_eq!(claimed.tasks.len(), 2);
    assert_eq!(
        s.hurry(100, "producer".into(), vec!["a".into()])
            .await
            .unwrap(),
        1
    );
    drop(s);
    let s = SqliteStore::open(&path, SyncMode::Full, 1_000).unwrap();
    let due = |id: &'static str| {
        let s = s.clone();
        async move { s.get_task(id.into()).await.unwrap().unwrap().next_poll_at }
    };
    assert_eq!(due("a").await, Some(1_000 - crate::store::HINT_LEAD_MS));
    assert_eq!(due("b").await, Some(1_000));
}

#[test]
fn in_use_says_whether_a_daemon_holds_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    assert!(!in_use(&path).unwrap(), "no lock file yet");
    let s = SqliteStore::open(&path, SyncMode::Full, 0).unwrap();
    assert!(in_use(&path).unwrap());
    assert!(in_use(&path).unwrap(), "asking does not take the lock");
    drop(s);
    assert!(!in_use(&path).unwrap());
    let again = SqliteStore::open(&path, SyncMode::Full, 0);
    assert!(again.is_ok(), "asking left the lock free");
}
