//! Reading the whole store in pages, for `taskhook store copy`: tasks,
//! events with their deliveries, learned durations, as stored. Reads go
//! through the reader connection; the caller owns the store (its lock
//! file), so nothing changes between pages.
//!
//! May call: the parent module's helpers (codes, `read`).

use async_trait::async_trait;
use rusqlite::params;

use super::*;

const TASK_COLUMNS: &str = "id, service, status, enqueued_at, next_poll_at, polls, misses, \
     fail_seen, upstream_state, outcome, event_id, finished_at, done_at, metadata, webhooks";

fn task_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRecord> {
    let status = match r.get::<_, i64>(2)? {
        WATCHING => TaskStatus::Watching,
        DELIVERING => TaskStatus::Delivering,
        _ => TaskStatus::Done,
    };
    let webhooks: Option<String> = r.get(14)?;
    Ok(TaskRecord {
        id: r.get(0)?,
        service: r.get(1)?,
        status,
        enqueued_at: r.get(3)?,
        next_poll_at: r.get(4)?,
        polls: r.get(5)?,
        misses: r.get(6)?,
        fail_seen: r.get(7)?,
        upstream_state: r.get(8)?,
        outcome: r.get(9)?,
        event_id: r.get(10)?,
        finished_at: r.get(11)?,
        done_at: r.get(12)?,
        metadata: r.get(13)?,
        webhooks: webhooks
            .and_then(|w| serde_json::from_str(&w).ok())
            .unwrap_or_default(),
    })
}

fn delivery_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        webhook: r.get(0)?,
        kind: DeliveryKind::from_code(r.get(1)?),
        url: r.get(2)?,
        state: state_of(r.get(3)?),
        attempts: r.get(4)?,
        next_attempt_at: r.get(5)?,
        last_status: r.get(6)?,
        last_error: r.get(7)?,
        task_enqueued_at: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

/// Whether a running taskhook holds the lock file of the store at `path`
/// (`Ok(false)` when there is no lock file: no daemon ever opened it, or
/// it was removed). The lock is let go at once when free.
pub fn in_use(path: &Path) -> std::io::Result<bool> {
    let lock_path = path.with_extension("lock");
    let lock = match File::options().write(true).open(&lock_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match lock.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

#[async_trait]
impl Export for SqliteStore {
    async fn export_tasks(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> StoreResult<Vec<TaskRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| match after {
            Some(after) => c
                .prepare_cached(&format!(
                    "SELECT {TASK_COLUMNS} FROM tasks WHERE id > ?1 ORDER BY id LIMIT ?2"
                ))?
                .query_map(params![after, limit], task_record)?
                .collect(),
            None => c
                .prepare_cached(&format!(
                    "SELECT {TASK_COLUMNS} FROM tasks ORDER BY id LIMIT ?1"
                ))?
                .query_map([limit], task_record)?
                .collect(),
        })
        .await
    }

    async fn export_events(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> StoreResult<Vec<EventRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let event = |r: &rusqlite::Row<'_>| {
                Ok(EventRecord {
                    id: r.get(0)?,
                    task_id: r.get(1)?,
                    event_type: r.get(2)?,
                    body: r.get(3)?,
                    created_at: r.get(4)?,
                    deliveries: Vec::new(),
                })
            };
            let mut events: Vec<EventRecord> = match after {
                Some(after) => c
                    .prepare_cached(
                        "SELECT id, task_id, type, body, created_at FROM events \
                         WHERE id > ?1 ORDER BY id LIMIT ?2",
                    )?
                    .query_map(params![after, limit], event)?
                    .collect::<rusqlite::Result<_>>()?,
                None => c
                    .prepare_cached(
                        "SELECT id, task_id, type, body, created_at FROM events \
                         ORDER BY id LIMIT ?1",
                    )?
                    .query_map([limit], event)?
                    .collect::<rusqlite::Result<_>>()?,
            };
            let mut deliveries = c.prepare_cached(
                "SELECT webhook, kind, url, state, attempts, next_attempt_at, last_status, \
                   last_error, task_enqueued_at, created_at, updated_at \
                 FROM deliveries WHERE event_id = ?1 ORDER BY id",
            )?;
            for e in &mut events {
                e.deliveries = deliveries
                    .query_map([&e.id], delivery_record)?
                    .collect::<rusqlite::Result<_>>()?;
            }
            Ok(events)
        })
        .await
    }

    async fn export_durations(&self) -> StoreResult<Vec<DurationRecord>> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT service, observed, buckets, updated_at FROM durations ORDER BY service",
            )?
            .query_map([], |r| {
                let buckets: String = r.get(2)?;
                let observed: i64 = r.get(1)?;
                Ok(DurationRecord {
                    service: r.get(0)?,
                    observed: observed.max(0) as u64,
                    buckets: serde_json::from_str(&buckets).unwrap_or_default(),
                    updated_at: r.get(3)?,
                })
            })?
            .collect()
        })
        .await
    }
}
