//! SQLite-only cases: opening, restarts, bad files, migrations. The shared
//! rules are checked by the conformance suite (`tests/it/store_conformance.rs`).

use super::*;
use crate::store::testing::{finish, task};

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
    assert_eq!(first.schema_version(), 2);
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
