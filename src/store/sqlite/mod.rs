//! The embedded backend: one SQLite file in WAL mode. Writes go to one
//! writer thread that commits them in groups: every write waiting when a
//! transaction starts joins it under its own savepoint, so one fsync covers
//! many callers and a failing write rolls back alone. Reads use a separate
//! connection; WAL checkpoints run on a third, off the writer's path. A lock
//! file beside the database keeps a second taskhook off the same store,
//! which is what lets this backend take back every lease at start-up.
//!
//! May call: `clock`, `config`, `redact`.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::*;
use crate::clock::Millis;
use crate::config::SyncMode;

mod export;
pub use export::in_use;

/// This backend's schema migrations, in order; `PRAGMA user_version`
/// counts those applied.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/v1.sql"),
    include_str!("migrations/v2.sql"),
    include_str!("migrations/v3.sql"),
    include_str!("migrations/v4.sql"),
    include_str!("migrations/v5.sql"),
];

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    jobs: std::sync::mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    /// Held while any handle lives; the checkpointer stops when it goes.
    _alive: Arc<File>,
}

/// What the writer hands back once the group's commit is known.
type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;
/// One write: runs inside the group's transaction (or hears why there is
/// none) and says whether it succeeded.
type Job = Box<dyn FnOnce(Result<&Connection, &StoreError>) -> (bool, Option<Completion>) + Send>;

/// At most this many writes share one transaction.
const GROUP_MAX: usize = 256;
/// How often the WAL is checkpointed into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The writer thread: takes every job waiting, runs them in one
/// transaction, each under a savepoint, commits once, then completes them.
fn writer_loop(conn: Connection, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let e = unavailable(e);
            for job in group {
                job(Err(&e));
            }
            continue;
        }
        let mut completions = Vec::with_capacity(group.len());
        // A lone write needs no savepoint: the transaction is its own.
        let alone = group.len() == 1;
        for job in group {
            if alone {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Ok(&conn))));
                match ran {
                    Ok((true, done)) => completions.extend(done),
                    Ok((false, done)) => {
                        // Roll back and report the job's own error.
                        let _ = conn.execute_batch("ROLLBACK");
                        if let Some(done) = done {
                            done(None);
                        }
                    }
                    Err(_) => {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                }
                continue;
            }
            if let Err(e) = conn.execute_batch("SAVEPOINT job") {
                job(Err(&unavailable(e)));
                continue;
            }
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Ok(&conn))));
            let (ok, done) = ran.unwrap_or((false, None));
            let end = if ok {
                "RELEASE job"
            } else {
                "ROLLBACK TO job; RELEASE job"
            };
            let _ = conn.execute_batch(end);
            completions.extend(done);
        }
        if conn.is_autocommit() {
            // A lone write failed and was rolled back; it has its answer.
            continue;
        }
        let commit = conn.execute_batch("COMMIT").map_err(unavailable).err();
        if commit.is_some() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for done in completions {
            done(commit.as_ref());
        }
    }
}

/// Checkpoints the WAL every [`CHECKPOINT_EVERY`] without blocking the
/// writer, until the store is dropped.
fn checkpoint_loop(conn: Connection, alive: std::sync::Weak<File>) {
    while alive.strong_count() > 0 {
        std::thread::sleep(CHECKPOINT_EVERY);
        if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
            tracing::debug!(error = %e, "WAL checkpoint failed; will try again");
        }
    }
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::unavailable(e)
}

const WATCHING: i64 = 0;
const DELIVERING: i64 = 1;
const DONE: i64 = 2;

const PENDING: i64 = 0;
const DELIVERED: i64 = 1;
const FAILED: i64 = 2;
const GONE: i64 = 3;
const REMOVED: i64 = 4;

fn state_code(s: DeliveryState) -> i64 {
    match s {
        DeliveryState::Pending => PENDING,
        DeliveryState::Delivered => DELIVERED,
        DeliveryState::Failed => FAILED,
        DeliveryState::Gone => GONE,
        DeliveryState::WebhookRemoved => REMOVED,
    }
}

fn state_of(code: i64) -> DeliveryState {
    match code {
        PENDING => DeliveryState::Pending,
        DELIVERED => DeliveryState::Delivered,
        FAILED => DeliveryState::Failed,
        REMOVED => DeliveryState::WebhookRemoved,
        _ => DeliveryState::Gone,
    }
}

/// The next value of the claim counter: task claims only ever grow, across
/// a task's deletion and re-enqueue too.
fn next_claim(tx: &Connection) -> rusqlite::Result<i64> {
    tx.prepare_cached("UPDATE counters SET value = value + 1 WHERE name = 'claim' RETURNING value")?
        .query_row([], |r| r.get(0))
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, applies migrations and
    /// takes back the leases a previous process left behind.
    pub fn open(path: &Path, sync: SyncMode, now: Millis) -> StoreResult<SqliteStore> {
        let fatal = |m: String| StoreError::Fatal(format!("store {}: {m}", path.display()));
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(fatal(format!(
                "directory {} does not exist (create it, or set store.path)",
                dir.display()
            )));
        }
        let lock_path = path.with_extension("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                fatal(format!(
                    "cannot open lock file {}: {e}",
                    lock_path.display()
                ))
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(fatal(
                    "another taskhook is using this store (its lock file is held)".into(),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(fatal(format!("cannot lock {}: {e}", lock_path.display())));
            }
        }
        let writer = Self::connect(path, sync).map_err(|e| fatal(describe_open_error(&e)))?;
        Self::migrate(&writer).map_err(fatal)?;
        let reader = Self::connect(path, sync).map_err(|e| fatal(describe_open_error(&e)))?;
        // Single owner: whatever was leased belonged to a process now gone.
        // A task hinted during its lost poll keeps its place ahead.
        writer
            .execute(
                "UPDATE tasks SET leased = 0, hinted = 0, \
                   next_poll_at = CASE WHEN hinted THEN ?2 ELSE ?1 END WHERE leased = 1",
                [now, now - crate::store::HINT_LEAD_MS],
            )
            .and_then(|_| {
                writer.execute(
                    "UPDATE deliveries SET leased = 0, next_attempt_at = ?1 WHERE leased = 1",
                    [now],
                )
            })
            .map_err(|e| fatal(describe_open_error(&e)))?;
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| fatal(describe_open_error(&e)))?;
        let checkpointer = Self::connect(path, sync).map_err(|e| fatal(describe_open_error(&e)))?;
        let alive = Arc::new(lock);
        let (jobs, queue) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("taskhook-store-writer".into())
            .spawn(move || writer_loop(writer, queue))
            .map_err(|e| fatal(format!("cannot start the writer thread: {e}")))?;
        let weak = Arc::downgrade(&alive);
        std::thread::Builder::new()
            .name("taskhook-store-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, weak))
            .map_err(|e| fatal(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(SqliteStore {
            jobs,
            reader: Arc::new(Mutex::new(reader)),
            _alive: alive,
        })
    }

    fn connect(path: &Path, sync: SyncMode) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match sync {
                SyncMode::Full => "FULL",
                SyncMode::Normal => "NORMAL",
            },
        )?;
        conn.pragma_update(None, "cache_size", -16000)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    fn migrate(conn: &Connection) -> Result<(), String> {
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| describe_open_error(&e))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(format!(
                "written by a newer taskhook (schema version {version}, this one knows up to {known}); \
                 upgrade taskhook or point store.path elsewhere"
            ));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let v = i as i64 + 1;
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {v}; COMMIT;"
            ))
            .map_err(|e| format!("migrating to schema version {v}: {e}"))?;
        }
        Ok(())
    }

    /// The schema version of an open store.
    pub fn schema_version(&self) -> i64 {
        let c = self.reader.lock().expect("reader lock");
        c.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap_or(-1)
    }

    /// Runs `f` on the writer thread inside a group transaction; answers
    /// once the commit is durable (or failed).
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| match conn {
            Err(e) => {
                let _ = tx.send(Err(e.clone()));
                (false, None)
            }
            Ok(conn) => {
                let result = f(conn).map_err(unavailable);
                let ok = result.is_ok();
                let done: Completion = Box::new(move |commit| {
                    let _ = tx.send(match commit {
                        Some(e) => Err(e.clone()),
                        None => result,
                    });
                });
                (ok, Some(done))
            }
        });
        self.jobs
            .send(job)
            .map_err(|_| StoreError::unavailable_msg("the store writer has stopped"))?;
        rx.await
            .map_err(|_| StoreError::unavailable_msg("the store writer dropped a write"))?
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&c).map_err(unavailable)
        })
        .await
        .map_err(|e| StoreError::unavailable_msg(format!("store worker: {e}")))?
    }
}

fn describe_open_error(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            "the file is not a taskhook database (corrupt, or something else)".into()
        }
        Some(rusqlite::ErrorCode::CannotOpen) => format!("cannot open: {e}"),
        Some(rusqlite::ErrorCode::ReadOnly) => format!("read-only: {e}"),
        _ => e.to_string(),
    }
}

fn claimed_task(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClaimedTask> {
    let webhooks: Option<String> = r.get(8)?;
    Ok(ClaimedTask {
        id: r.get(0)?,
        service: r.get(1)?,
        claim: r.get(2)?,
        enqueued_at: r.get(3)?,
        polls: r.get(4)?,
        misses: r.get(5)?,
        fail_seen: r.get(6)?,
        metadata: r.get(7)?,
        webhooks: webhooks
            .and_then(|w| serde_json::from_str(&w).ok())
            .unwrap_or_default(),
    })
}

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, d.task_id, e.type, d.webhook, d.url, d.state, \
     d.attempts, d.next_attempt_at, d.last_status, d.last_error, d.created_at, d.updated_at, d.kind";

fn delivery_view(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryView> {
    let state = state_of(r.get(6)?);
    Ok(DeliveryView {
        id: r.get(0)?,
        event_id: r.get(1)?,
        task_id: r.get(2)?,
        event_type: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
        webhook: crate::redact::url(&r.get::<_, String>(4)?),
        kind: DeliveryKind::from_code(r.get(13)?),
        url: crate::redact::url(&r.get::<_, String>(5)?),
        state,
        attempts: r.get(7)?,
        next_attempt_at: if state == DeliveryState::Pending {
            r.get(8)?
        } else {
            None
        },
        last_status: r.get(9)?,
        last_error: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
    })
}

const TASK_COLUMNS: &str = "id, service, status, upstream_state, outcome, polls, enqueued_at, \
     next_poll_at, finished_at, event_id, metadata, webhooks";

/// A task as the API shows it (per-task URLs redacted), without its event,
/// deliveries and attempts.
fn task_view(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskView> {
    let status = match r.get::<_, i64>(2)? {
        WATCHING => TaskStatus::Watching,
        DELIVERING => TaskStatus::Delivering,
        _ => TaskStatus::Done,
    };
    let metadata: Option<String> = r.get(10)?;
    let webhooks: Option<String> = r.get(11)?;
    Ok(TaskView {
        id: r.get(0)?,
        service: r.get(1)?,
        status,
        upstream_state: r.get(3)?,
        outcome: r.get(4)?,
        polls: r.get(5)?,
        enqueued_at: r.get(6)?,
        next_poll_at: if status == TaskStatus::Watching {
            r.get(7)?
        } else {
            None
        },
        finished_at: r.get(8)?,
        event_id: r.get(9)?,
        metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
        webhooks: webhooks
            .and_then(|w| serde_json::from_str::<Vec<String>>(&w).ok())
            .unwrap_or_default()
            .iter()
            .map(|u| crate::redact::url(u))
            .collect(),
        event: None,
        event_body: None,
        deliveries: Vec::new(),
        attempts: Vec::new(),
    })
}

const ATTEMPT_COLUMNS: &str =
    "delivery_id, webhook, attempt, at, status, latency_ms, error, answer, verdict";

fn attempt_view(r: &rusqlite::Row<'_>) -> rusqlite::Result<AttemptView> {
    Ok(AttemptView {
        delivery_id: r.get(0)?,
        webhook: crate::redact::url(&r.get::<_, String>(1)?),
        attempt: r.get(2)?,
        at: r.get(3)?,
        status: shared::status_of(r.get(4)?),
        latency_ms: r.get(5)?,
        error: r.get(6)?,
        answer: r.get(7)?,
        verdict: r.get(8)?,
    })
}

/// The SQL and arguments of a task listing (see [`ReadModel::list_tasks`]).
/// The status is written into the SQL, so the partial index `tasks_age`
/// serves a listing of watched tasks; an ID prefix is a range on the
/// primary key, which the listing is then told to use.
fn list_tasks_query(f: &TaskFilter) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut args: Vec<Value> = Vec::new();
    let mut bind = |v: Value| {
        args.push(v);
        format!("?{}", args.len())
    };
    let mut terms: Vec<String> = Vec::new();
    let mut index = "";
    if let Some(p) = f.id_prefix.as_deref().filter(|p| !p.is_empty()) {
        let lo = bind(p.to_string().into());
        terms.push(match shared::prefix_upper_bound(p) {
            Some(hi) => format!("id >= {lo} AND id < {}", bind(hi.into())),
            None => format!("id >= {lo} AND substr(id, 1, length({lo})) = {lo}"),
        });
        index = " INDEXED BY sqlite_autoindex_tasks_1";
    }
    if let Some(status) = f.status {
        terms.push(format!(
            "status = {}",
            match status {
                TaskStatus::Watching => WATCHING,
                TaskStatus::Delivering => DELIVERING,
                TaskStatus::Done => DONE,
            }
        ));
    }
    if let Some(service) = &f.service {
        terms.push(format!("service = {}", bind(service.clone().into())));
    }
    if let Some(outcome) = &f.outcome {
        terms.push(format!("outcome = {}", bind(outcome.clone().into())));
    }
    if let Some((at, id)) = &f.after {
        let (at, id) = (bind((*at).into()), bind(id.clone().into()));
        terms.push(format!(
            "enqueued_at <= {at} AND (enqueued_at < {at} OR id < {id})"
        ));
    }
    let limit = bind((f.limit.min(i64::MAX as usize) as i64).into());
    let filter = if terms.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", terms.join(" AND "))
    };
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks{index}{filter} \
         ORDER BY enqueued_at DESC, id DESC LIMIT {limit}"
    );
    (sql, args)
}

/// A learned model from its row (service, observed, buckets, updated_at).
fn duration_model(r: &rusqlite::Row<'_>) -> rusqlite::Result<DurationModel> {
    let buckets: String = r.get(2)?;
    let counts: Vec<i64> = serde_json::from_str(&buckets).unwrap_or_default();
    let observed: i64 = r.get(1)?;
    Ok(durations::Histogram::from_stored(&counts).model(
        r.get(0)?,
        observed.max(0) as u64,
        r.get(3)?,
    ))
}

/// Dead letters or parked deliveries (`?1`, 2 or 4) settled in `[?2, ?3)`,
/// of webhook `?4` and event type `?5` when given (the settled-deliveries
/// index serves the state and the window).
const MATCHING: &str = "FROM deliveries d LEFT JOIN events e ON e.id = d.event_id \
     WHERE d.state = ?1 AND d.state <> 0 AND d.updated_at >= ?2 AND d.updated_at < ?3 \
       AND (?4 IS NULL OR d.webhook = ?4) AND (?5 IS NULL OR e.type = ?5)";

/// The first five arguments of [`MATCHING`].
fn matching_args(f: &ReplayFilter) -> [rusqlite::types::Value; 5] {
    [
        state_code(f.state).into(),
        f.since.unwrap_or(Millis::MIN).into(),
        f.until.unwrap_or(Millis::MAX).into(),
        f.webhook.clone().into(),
        f.event_type.clone().into(),
    ]
}

/// Marks task `task_id` done if `event_id` is its event and nothing of it
/// is pending any more.
fn settle_task(
    tx: &Connection,
    now: Millis,
    task_id: &str,
    event_id: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE tasks SET status = 2, done_at = ?1 \
         WHERE id = ?2 AND event_id = ?3 AND status = 1 AND NOT EXISTS \
         (SELECT 1 FROM deliveries WHERE event_id = ?3 AND state = 0)",
    )?
    .execute(params![now, task_id, event_id])?;
    Ok(())
}

/// Removes what is left of a finished event once nobody needs it: its
/// delivered and gone deliveries always, the event itself when no dead
/// letter still refers to it.
fn drop_event(tx: &Connection, event_id: &str) -> rusqlite::Result<usize> {
    let mut n = tx
        .prepare_cached("DELETE FROM deliveries WHERE event_id = ?1 AND state IN (0, 1, 3)")?
        .execute([event_id])?;
    n += tx
        .prepare_cached(
            "DELETE FROM events WHERE id = ?1 AND NOT EXISTS \
             (SELECT 1 FROM deliveries WHERE event_id = ?1)",
        )?
        .execute([event_id])?;
    Ok(n)
}

/// Removes the settled deliveries of an event whose task is gone (a dead
/// letter replayed after its task was purged), and the event with the last.
fn drop_orphaned(tx: &Connection, task_id: &str, event_id: &str) -> rusqlite::Result<()> {
    let task_lives: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM tasks WHERE id = ?1 AND event_id = ?2)")?
        .query_row([task_id, event_id], |r| r.get(0))?;
    if !task_lives {
        tx.prepare_cached("DELETE FROM deliveries WHERE event_id = ?1 AND state IN (1, 3)")?
            .execute([event_id])?;
        tx.prepare_cached(
            "DELETE FROM events WHERE id = ?1 AND NOT EXISTS \
             (SELECT 1 FROM deliveries WHERE event_id = ?1)",
        )?
        .execute([event_id])?;
    }
    Ok(())
}

/// `AND service NOT IN (?n, ...)` for the skipped services, numbered from
/// `first`, and the values to bind.
fn not_in(column: &str, skipped: &[String], first: usize) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let marks: Vec<String> = (0..skipped.len())
        .map(|i| format!("?{}", first + i))
        .collect();
    format!(" AND {column} NOT IN ({})", marks.join(","))
}

/// The tasks the pacing counts, per service: those polled already (the
/// running ones, in `tasks_polled`) and new ones due by the horizon
/// (`tasks_due`). Each part reads its own index only, whatever the
/// planner would guess without statistics: the count runs every few
/// seconds, and a scan of every watched row would make an idle daemon
/// with a million of them busy.
const DEMAND: &str = "\
    SELECT service, count(*) FROM ( \
      SELECT service FROM tasks INDEXED BY tasks_due \
       WHERE status = 0 AND polls = 0 AND next_poll_at <= ?1 \
      UNION ALL \
      SELECT service FROM tasks INDEXED BY tasks_polled \
       WHERE status = 0 AND polls > 0) \
    GROUP BY service ORDER BY service";

#[async_trait]
impl PollQueue for SqliteStore {
    async fn hurry(&self, now: Millis, service: String, ids: Vec<String>) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.write(move |tx| {
            // One primary-key lookup per ID (callers pass a few hundred).
            let mut hurry = tx.prepare_cached(
                "UPDATE tasks SET next_poll_at = CASE WHEN leased THEN next_poll_at ELSE ?1 END, \
                   hinted = leased, hints = hints + 1 \
                 WHERE id = ?2 AND service = ?3 AND status = 0 AND hints < ?4 \
                   AND CASE WHEN leased THEN hinted = 0 ELSE next_poll_at > ?1 END",
            )?;
            let mut seen = std::collections::HashSet::with_capacity(ids.len());
            let mut n = 0;
            for id in &ids {
                if seen.insert(id) {
                    n += hurry.execute(params![
                        now - crate::store::HINT_LEAD_MS,
                        id,
                        service,
                        crate::store::MAX_HINTS_PER_TASK
                    ])? as u64;
                }
            }
            Ok(n)
        })
        .await
    }

    async fn demand(&self, horizon: Millis) -> StoreResult<Vec<(String, u64)>> {
        self.read(move |c| {
            c.prepare_cached(DEMAND)?
                .query_map([horizon], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .await
    }

    async fn learn_durations(
        &self,
        now: Millis,
        service: String,
        durations_ms: Vec<i64>,
    ) -> StoreResult<DurationModel> {
        let learned = durations::Histogram::of(&durations_ms);
        self.write(move |tx| {
            let stored = tx
                .prepare_cached(
                    "SELECT service, observed, buckets, updated_at FROM durations \
                     WHERE service = ?1",
                )?
                .query_row([&service], |r| {
                    let buckets: String = r.get(2)?;
                    let observed: i64 = r.get(1)?;
                    Ok((observed.max(0) as u64, buckets, r.get::<_, Millis>(3)?))
                })
                .optional()?;
            let (observed, mut hist, updated_at) = match stored {
                Some((observed, buckets, at)) => {
                    let counts: Vec<i64> = serde_json::from_str(&buckets).unwrap_or_default();
                    (observed, durations::Histogram::from_stored(&counts), at)
                }
                None => (0, durations::Histogram::default(), 0),
            };
            let taken = learned.total();
            if taken == 0 {
                return Ok(hist.model(service, observed, updated_at));
            }
            hist.merge(&learned);
            let observed = observed.saturating_add(taken);
            let buckets = serde_json::to_string(&hist.to_stored()).expect("integers serialize");
            tx.prepare_cached(
                "INSERT INTO durations (service, observed, buckets, updated_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (service) DO UPDATE SET \
                   observed = excluded.observed, buckets = excluded.buckets, \
                   updated_at = excluded.updated_at",
            )?
            .execute(params![
                service,
                i64::try_from(observed).unwrap_or(i64::MAX),
                buckets,
                now
            ])?;
            Ok(hist.model(service, observed, now))
        })
        .await
    }

    async fn enqueue(
        &self,
        now: Millis,
        first_poll_after_ms: Millis,
        tasks: Vec<NewTask>,
    ) -> StoreResult<EnqueueOutcome> {
        self.write(move |tx| {
            let mut out = EnqueueOutcome::default();
            let mut stmt = tx.prepare_cached(
                "INSERT INTO tasks (id, service, status, enqueued_at, next_poll_at, metadata, webhooks) \
                 VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (id) DO UPDATE SET service = excluded.service, status = 0, \
                   enqueued_at = excluded.enqueued_at, next_poll_at = excluded.next_poll_at, \
                   leased = 0, hinted = 0, hints = 0, claim = 0, polls = 0, misses = 0, fail_seen = 0, \
                   upstream_state = NULL, outcome = NULL, event_id = NULL, finished_at = NULL, \
                   done_at = NULL, metadata = excluded.metadata, webhooks = excluded.webhooks \
                 WHERE tasks.status = 2",
            )?;
            let mut previous = tx.prepare_cached(
                "SELECT event_id FROM tasks WHERE id = ?1 AND status = 2",
            )?;
            for t in &tasks {
                // A done task watched afresh: its old event is finished with.
                let old: Option<Option<String>> =
                    previous.query_row([&t.id], |r| r.get(0)).optional()?;
                if let Some(Some(e)) = old {
                    drop_event(tx, &e)?;
                }
                let hooks = (!t.webhooks.is_empty())
                    .then(|| serde_json::to_string(&t.webhooks).expect("strings serialize"));
                let n = stmt.execute(params![
                    t.id,
                    t.service,
                    now,
                    now + first_poll_after_ms,
                    t.metadata,
                    hooks
                ])?;
                if n == 1 {
                    out.accepted += 1;
                } else {
                    out.duplicates += 1;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn claim_poll_batch(
        &self,
        now: Millis,
        window_end: Millis,
        limits: ClaimLimits,
        lease_until: Millis,
    ) -> StoreResult<PollClaim> {
        self.write(move |tx| {
            let skipped = limits.skipped();
            let skip = not_in("service", &skipped, 1);
            let first: Option<(String, Millis)> = tx
                .prepare_cached(&format!(
                    "SELECT service, next_poll_at FROM tasks WHERE status = 0{skip} \
                     ORDER BY next_poll_at LIMIT 1"
                ))?
                .query_row(rusqlite::params_from_iter(&skipped), |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((service, due)) = first else {
                return Ok(PollClaim::default());
            };
            if due > now {
                return Ok(PollClaim {
                    next_due: Some(due),
                    ..Default::default()
                });
            }
            let claim = next_claim(tx)?;
            let mut stmt = tx.prepare_cached(
                "UPDATE tasks SET leased = 1, claim = ?1, next_poll_at = ?2 \
                 WHERE id IN (SELECT id FROM tasks WHERE status = 0 AND service = ?3 \
                              AND next_poll_at <= ?4 ORDER BY next_poll_at LIMIT ?5) \
                 RETURNING id, service, claim, enqueued_at, polls, misses, fail_seen, metadata, webhooks",
            )?;
            let limit = limits.of(&service) as i64;
            let tasks = stmt
                .query_map(
                    params![claim, lease_until, service, window_end.max(now), limit],
                    claimed_task,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(PollClaim {
                service,
                tasks,
                next_due: None,
            })
        })
        .await
    }

    async fn record_polls(
        &self,
        now: Millis,
        updates: Vec<PollUpdate>,
        handoff_lease: Option<Millis>,
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        self.write(move |tx| {
            let mut handed = Vec::new();
            let mut resched = tx.prepare_cached(
                "UPDATE tasks SET leased = 0, polls = polls + ?2, misses = ?3, fail_seen = ?4, \
                   upstream_state = COALESCE(?5, upstream_state), \
                   next_poll_at = CASE WHEN hinted THEN min(?1, ?8) ELSE ?1 END, hinted = 0 \
                 WHERE id = ?6 AND claim = ?7 AND status = 0",
            )?;
            let mut finish = tx.prepare_cached(
                "UPDATE tasks SET leased = 0, hinted = 0, status = ?1, polls = polls + ?2, upstream_state = ?3, \
                   outcome = ?4, event_id = ?5, finished_at = ?6, done_at = ?7 \
                 WHERE id = ?8 AND claim = ?9 AND status = 0",
            )?;
            let mut event = tx.prepare_cached(
                "INSERT INTO events (id, task_id, type, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            // Handed-off deliveries are inserted already leased (claim 1)
            // to the caller, who sends them without a claim round trip.
            let mut delivery = tx.prepare_cached(
                "INSERT INTO deliveries (event_id, task_id, webhook, kind, url, state, next_attempt_at, \
                   leased, claim, created_at, updated_at, task_enqueued_at) \
                 VALUES (?1, ?2, ?3, ?8, ?4, 0, ?5, ?6, ?6, ?7, ?7, \
                   (SELECT enqueued_at FROM tasks WHERE id = ?2)) \
                 RETURNING id, task_enqueued_at",
            )?;
            let (due, leased) = match handoff_lease {
                Some(until) => (until, 1),
                None => (now, 0),
            };
            for u in &updates {
                match u {
                    PollUpdate::Reschedule {
                        id,
                        claim,
                        next_poll_at,
                        polled,
                        misses,
                        fail_seen,
                        upstream_state,
                    } => {
                        resched.execute(params![
                            next_poll_at,
                            *polled as i64,
                            misses,
                            fail_seen,
                            upstream_state,
                            id,
                            claim,
                            now - crate::store::HINT_LEAD_MS
                        ])?;
                    }
                    PollUpdate::Finish {
                        id,
                        claim,
                        polled,
                        outcome,
                        upstream_state,
                        event: ev,
                    } => {
                        let settled = ev.deliveries.is_empty();
                        let n = finish.execute(params![
                            if settled { DONE } else { DELIVERING },
                            *polled as i64,
                            upstream_state,
                            outcome.as_str(),
                            ev.id,
                            now,
                            settled.then_some(now),
                            id,
                            claim
                        ])?;
                        if n == 0 {
                            continue; // stale claim: someone else owns the task now
                        }
                        event.execute(params![ev.id, id, outcome.event_type(), ev.body, now])?;
                        let body: Option<Arc<str>> = (leased == 1).then(|| ev.body.as_str().into());
                        for d in &ev.deliveries {
                            let (row, enqueued_at): (i64, Millis) = delivery.query_row(
                                params![ev.id, id, d.webhook, d.url, due, leased, now, d.kind.code()],
                                |r| Ok((r.get(0)?, r.get(1)?)),
                            )?;
                            if let Some(body) = &body {
                                handed.push(ClaimedDelivery {
                                    id: row,
                                    claim: 1,
                                    event_id: ev.id.clone(),
                                    task_id: id.clone(),
                                    webhook: d.webhook.clone(),
                                    kind: d.kind,
                                    url: d.url.clone(),
                                    attempts: 0,
                                    enqueued_at,
                                    body: body.clone(),
                                });
                            }
                        }
                    }
                }
            }
            Ok(handed)
        })
        .await
    }

    async fn claim_expired(
        &self,
        now: Millis,
        enqueued_before: Millis,
        limit: usize,
        lease_until: Millis,
    ) -> StoreResult<Vec<ClaimedTask>> {
        self.write(move |tx| {
            let claim = next_claim(tx)?;
            tx.prepare_cached(
                "UPDATE tasks SET leased = 1, claim = ?1, next_poll_at = ?2 \
                 WHERE id IN (SELECT id FROM tasks WHERE status = 0 AND enqueued_at < ?3 \
                              AND (leased = 0 OR next_poll_at <= ?4) LIMIT ?5) \
                 RETURNING id, service, claim, enqueued_at, polls, misses, fail_seen, metadata, webhooks",
            )?
            .query_map(
                params![claim, lease_until, enqueued_before, now, limit as i64],
                claimed_task,
            )?
            .collect()
        })
        .await
    }

    async fn defer_service(&self, service: String, until: Millis) -> StoreResult<u64> {
        self.write(move |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE tasks SET next_poll_at = ?1 WHERE status = 0 AND leased = 0 \
                     AND next_poll_at < ?1 AND service = ?2",
                )?
                .execute(params![until, service])?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl DeliveryQueue for SqliteStore {
    async fn release_deliveries(&self, now: Millis, leases: Vec<(i64, i64)>) -> StoreResult<()> {
        self.write(move |tx| {
            let mut release = tx.prepare_cached(
                "UPDATE deliveries SET leased = 0, next_attempt_at = ?1 \
                 WHERE id = ?2 AND claim = ?3 AND state = 0 AND leased = 1",
            )?;
            for (id, claim) in &leases {
                release.execute(params![now, id, claim])?;
            }
            Ok(())
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        now: Millis,
        limit: usize,
        lease_until: Millis,
        exclude: Vec<String>,
        // One daemon owns a SQLite store: its lanes hold each webhook to
        // the cap, so the claim need not count.
        _per_webhook: usize,
    ) -> StoreResult<DeliveryClaim> {
        self.write(move |tx| {
            let mut sql = String::from(
                "UPDATE deliveries SET leased = 1, claim = claim + 1, next_attempt_at = ?1 \
                 WHERE id IN (SELECT id FROM deliveries WHERE state = 0 AND next_attempt_at <= ?2",
            );
            if !exclude.is_empty() {
                sql.push_str(" AND webhook NOT IN (");
                for i in 0..exclude.len() {
                    if i > 0 {
                        sql.push(',');
                    }
                    sql.push_str(&format!("?{}", i + 4));
                }
                sql.push(')');
            }
            sql.push_str(
                " ORDER BY next_attempt_at LIMIT ?3) \
                 RETURNING id, claim, event_id, task_id, webhook, url, attempts, task_enqueued_at, kind",
            );
            let mut args: Vec<rusqlite::types::Value> =
                vec![lease_until.into(), now.into(), (limit as i64).into()];
            args.extend(exclude.into_iter().map(rusqlite::types::Value::from));
            let mut stmt = tx.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, u32>(6)?,
                        r.get::<_, Millis>(7)?,
                        r.get::<_, i64>(8)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut bodies: HashMap<String, Arc<str>> = HashMap::new();
            let mut body_stmt = tx.prepare_cached("SELECT body FROM events WHERE id = ?1")?;
            let mut deliveries = Vec::with_capacity(rows.len());
            for (id, claim, event_id, task_id, webhook, url, attempts, enqueued_at, kind) in rows {
                let body = match bodies.get(&event_id) {
                    Some(b) => b.clone(),
                    None => {
                        let b: String = body_stmt.query_row([&event_id], |r| r.get(0))?;
                        let b: Arc<str> = b.into();
                        bodies.insert(event_id.clone(), b.clone());
                        b
                    }
                };
                deliveries.push(ClaimedDelivery {
                    id,
                    claim,
                    event_id,
                    task_id,
                    webhook,
                    kind: DeliveryKind::from_code(kind),
                    url,
                    attempts,
                    enqueued_at,
                    body,
                });
            }
            let next_due = if deliveries.is_empty() {
                tx.prepare_cached("SELECT min(next_attempt_at) FROM deliveries WHERE state = 0")?
                    .query_row([], |r| r.get::<_, Option<Millis>>(0))?
            } else {
                None
            };
            Ok(DeliveryClaim {
                deliveries,
                next_due,
            })
        })
        .await
    }

    async fn record_deliveries(
        &self,
        now: Millis,
        reports: Vec<DeliveryReport>,
    ) -> StoreResult<()> {
        self.write(move |tx| {
            let mut settle = tx.prepare_cached(
                "UPDATE deliveries SET leased = 0, state = ?1, attempts = attempts + 1, \
                   last_status = ?2, last_error = ?3, updated_at = ?4 \
                 WHERE id = ?5 AND claim = ?6 AND state = 0 \
                 RETURNING event_id, task_id, webhook, attempts",
            )?;
            let mut retry = tx.prepare_cached(
                "UPDATE deliveries SET leased = 0, next_attempt_at = ?1, attempts = attempts + 1, \
                   last_status = ?2, last_error = ?3, updated_at = ?4 \
                 WHERE id = ?5 AND claim = ?6 AND state = 0 \
                 RETURNING event_id, task_id, webhook, attempts",
            )?;
            let mut log = tx.prepare_cached(
                "INSERT INTO attempts (delivery_id, event_id, task_id, webhook, attempt, at, \
                   status, latency_ms, error, answer, verdict) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            let row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(String, String, String, i64)> {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            };
            let mut touched: std::collections::HashSet<(&str, &str)> = Default::default();
            for r in &reports {
                let updated = match r.verdict {
                    DeliveryVerdict::Retry { at } => retry
                        .query_row(params![at, r.status, r.error, now, r.id, r.claim], row)
                        .optional()?,
                    DeliveryVerdict::Delivered
                    | DeliveryVerdict::DeadLetter
                    | DeliveryVerdict::Gone
                    | DeliveryVerdict::WebhookRemoved => {
                        let state = match r.verdict {
                            DeliveryVerdict::Delivered => DELIVERED,
                            DeliveryVerdict::DeadLetter => FAILED,
                            DeliveryVerdict::Gone => GONE,
                            _ => REMOVED,
                        };
                        let updated = settle
                            .query_row(params![state, r.status, r.error, now, r.id, r.claim], row)
                            .optional()?;
                        if updated.is_some() {
                            touched.insert((&r.task_id, &r.event_id));
                        }
                        updated
                    }
                };
                // Only an attempt whose report landed is logged, under the
                // delivery's stored name and count.
                if let Some((event_id, task_id, webhook, attempt)) = updated {
                    log.execute(params![
                        r.id,
                        event_id,
                        task_id,
                        webhook,
                        attempt,
                        now,
                        r.status,
                        r.latency_ms,
                        r.error,
                        shared::answer_kept(r.answer.clone()),
                        shared::verdict_word(&r.verdict)
                    ])?;
                }
            }
            for (task_id, event_id) in touched {
                settle_task(tx, now, task_id, event_id)?;
                drop_orphaned(tx, task_id, event_id)?;
            }
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl ReadModel for SqliteStore {
    async fn list_tasks(&self, filter: TaskFilter) -> StoreResult<Vec<TaskView>> {
        if filter.limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |c| {
            let (sql, args) = list_tasks_query(&filter);
            // Many shapes, seldom run: not worth a place in the cache.
            c.prepare(&sql)?
                .query_map(rusqlite::params_from_iter(args), task_view)?
                .collect()
        })
        .await
    }

    async fn list_matching(
        &self,
        filter: ReplayFilter,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryView>> {
        if !shared::replayable(filter.state) || limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |c| {
            let mut args = matching_args(&filter).to_vec();
            args.push((limit.min(i64::MAX as usize) as i64).into());
            c.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} {MATCHING} \
                 ORDER BY d.updated_at DESC, d.id DESC LIMIT ?6"
            ))?
            .query_map(rusqlite::params_from_iter(args), delivery_view)?
            .collect()
        })
        .await
    }

    async fn count_matching(&self, filter: ReplayFilter) -> StoreResult<u64> {
        if !shared::replayable(filter.state) {
            return Ok(0);
        }
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT count(*) {MATCHING}"))?
                .query_row(rusqlite::params_from_iter(matching_args(&filter)), |r| {
                    r.get(0)
                })
        })
        .await
    }

    async fn activity(&self, now: Millis, since: Millis) -> StoreResult<Activity> {
        self.read(move |c| {
            // One snapshot for every figure.
            let c = c.unchecked_transaction()?;
            let mut a = Activity {
                since,
                enqueued: c
                    .prepare_cached("SELECT count(*) FROM tasks WHERE enqueued_at >= ?1")?
                    .query_row([since], |r| r.get(0))?,
                ..Default::default()
            };
            let mut book = shared::HealthBook::default();
            let mut counts = c.prepare_cached(
                "SELECT webhook, count(*), coalesce(sum(verdict = 'delivered'), 0), \
                   coalesce(sum(verdict IN ('retry', 'failed')), 0) \
                 FROM attempts WHERE at >= ?1 GROUP BY webhook",
            )?;
            let mut rows = counts.query([since])?;
            while let Some(r) = rows.next()? {
                let (n, delivered, failed): (u64, u64, u64) = (r.get(1)?, r.get(2)?, r.get(3)?);
                let h = book.entry(&r.get::<_, String>(0)?);
                h.attempts += n;
                h.delivered += delivered;
                a.delivered += delivered;
                a.failed_attempts += failed;
            }
            let mut pct = c.prepare_cached(
                "SELECT webhook, \
                   max(CASE WHEN rn = (n * 50 + 99) / 100 THEN latency_ms END), \
                   max(CASE WHEN rn = (n * 95 + 99) / 100 THEN latency_ms END) \
                 FROM (SELECT webhook, latency_ms, \
                         row_number() OVER (PARTITION BY webhook ORDER BY latency_ms) AS rn, \
                         count(*) OVER (PARTITION BY webhook) AS n \
                       FROM attempts WHERE at >= ?1 AND latency_ms IS NOT NULL) \
                 GROUP BY webhook",
            )?;
            let mut rows = pct.query([since])?;
            while let Some(r) = rows.next()? {
                let h = book.entry(&r.get::<_, String>(0)?);
                (h.p50_ms, h.p95_ms) = (r.get(1)?, r.get(2)?);
            }
            let mut last = c.prepare_cached(
                "SELECT webhook, error, at FROM \
                   (SELECT webhook, error, at, \
                      row_number() OVER (PARTITION BY webhook ORDER BY at DESC, id DESC) AS rn \
                    FROM attempts WHERE at >= ?1 AND error IS NOT NULL) \
                 WHERE rn = 1",
            )?;
            let mut rows = last.query([since])?;
            while let Some(r) = rows.next()? {
                let h = book.entry(&r.get::<_, String>(0)?);
                (h.last_error, h.last_error_at) = (r.get(1)?, r.get(2)?);
            }
            let mut leased = c.prepare_cached(
                "SELECT webhook, count(*) FROM deliveries \
                 WHERE state = 0 AND leased = 1 AND next_attempt_at > ?1 GROUP BY webhook",
            )?;
            let mut rows = leased.query([now])?;
            while let Some(r) = rows.next()? {
                let n: u64 = r.get(1)?;
                book.entry(&r.get::<_, String>(0)?).in_flight += n;
            }
            a.webhooks = book.into_sorted();
            Ok(a)
        })
        .await
    }

    async fn duration_models(&self) -> StoreResult<Vec<DurationModel>> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT service, observed, buckets, updated_at FROM durations ORDER BY service",
            )?
            .query_map([], duration_model)?
            .collect()
        })
        .await
    }

    async fn get_task(&self, id: String) -> StoreResult<Option<TaskView>> {
        self.read(move |c| {
            // One snapshot for the task, its event, deliveries and attempts.
            let c = c.unchecked_transaction()?;
            let task = c
                .prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?
                .query_row([&id], task_view)
                .optional()?;
            let Some(mut task) = task else {
                return Ok(None);
            };
            if let Some(event_id) = &task.event_id {
                let body = c
                    .prepare_cached("SELECT body FROM events WHERE id = ?1")?
                    .query_row([event_id], |r| r.get::<_, String>(0))
                    .optional()?;
                task.event = body.as_deref().and_then(|b| serde_json::from_str(b).ok());
                task.event_body = body;
                task.deliveries = c
                    .prepare_cached(&format!(
                        "SELECT {DELIVERY_COLUMNS} FROM deliveries d \
                         LEFT JOIN events e ON e.id = d.event_id WHERE d.event_id = ?1 ORDER BY d.id"
                    ))?
                    .query_map([event_id], delivery_view)?
                    .collect::<rusqlite::Result<_>>()?;
                task.attempts = c
                    .prepare_cached(&format!(
                        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE event_id = ?1 ORDER BY at, id"
                    ))?
                    .query_map([event_id], attempt_view)?
                    .collect::<rusqlite::Result<_>>()?;
            }
            Ok(Some(task))
        })
        .await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        self.read(|c| {
            let count = |sql: &str| -> rusqlite::Result<u64> {
                c.prepare_cached(sql)?.query_row([], |r| r.get(0))
            };
            Ok(StoreStats {
                watching: count("SELECT count(*) FROM tasks WHERE status = 0")?,
                delivering: count("SELECT count(*) FROM tasks WHERE status = 1")?,
                done: count("SELECT count(*) FROM tasks WHERE status = 2")?,
                deliveries_pending: count("SELECT count(*) FROM deliveries WHERE state = 0")?,
                dead_letters: count("SELECT count(*) FROM deliveries WHERE state = 2")?,
                webhook_removed: count("SELECT count(*) FROM deliveries WHERE state = 4")?,
                oldest_watching_enqueued_at: c
                    .prepare_cached("SELECT min(enqueued_at) FROM tasks WHERE status = 0")?
                    .query_row([], |r| r.get(0))?,
            })
        })
        .await
    }

    async fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryView>> {
        self.read(move |c| {
            let filter = if state.is_some() {
                "WHERE d.state = ?1"
            } else {
                "WHERE ?1 IS NULL"
            };
            c.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d LEFT JOIN events e ON e.id = d.event_id \
                 {filter} ORDER BY d.id DESC LIMIT ?2"
            ))?
            .query_map(params![state.map(state_code), limit as i64], delivery_view)?
            .collect()
        })
        .await
    }
}

#[async_trait]
impl Admin for SqliteStore {
    async fn replay_matching(&self, now: Millis, filter: ReplayFilter) -> StoreResult<u64> {
        if !shared::replayable(filter.state) {
            return Ok(0);
        }
        self.write(move |tx| {
            let mut args = matching_args(&filter).to_vec();
            args.push(now.into());
            // One statement, however many match; then each task once.
            let replayed: Vec<(String, String)> = tx
                .prepare_cached(&format!(
                    "UPDATE deliveries SET state = 0, attempts = 0, next_attempt_at = ?6, \
                       updated_at = ?6 WHERE id IN (SELECT d.id {MATCHING}) \
                     RETURNING task_id, event_id"
                ))?
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let n = replayed.len() as u64;
            let replayed: std::collections::HashSet<_> = replayed.into_iter().collect();
            let mut reopen = tx.prepare_cached(
                "UPDATE tasks SET status = 1, done_at = NULL \
                 WHERE id = ?1 AND event_id = ?2 AND status = 2",
            )?;
            for (task, e) in &replayed {
                reopen.execute([task, e])?;
            }
            Ok(n)
        })
        .await
    }

    async fn delete_task(&self, id: String) -> StoreResult<bool> {
        self.write(move |tx| {
            let event: Option<Option<String>> = tx
                .query_row(
                    "DELETE FROM tasks WHERE id = ?1 RETURNING event_id",
                    [&id],
                    |r| r.get(0),
                )
                .optional()?;
            match event {
                None => Ok(false),
                Some(event) => {
                    if let Some(e) = event {
                        drop_event(tx, &e)?;
                        tx.prepare_cached("DELETE FROM attempts WHERE event_id = ?1")?
                            .execute([&e])?;
                    }
                    Ok(true)
                }
            }
        })
        .await
    }

    async fn replay_delivery(&self, now: Millis, id: i64) -> StoreResult<bool> {
        self.write(move |tx| {
            let event: Option<(String, String)> = tx
                .query_row(
                    "UPDATE deliveries SET state = 0, attempts = 0, next_attempt_at = ?1, \
                       updated_at = ?1 WHERE id = ?2 AND state IN (2, 4) RETURNING task_id, event_id",
                    params![now, id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((task, e)) = &event {
                tx.execute(
                    "UPDATE tasks SET status = 1, done_at = NULL \
                     WHERE id = ?1 AND event_id = ?2 AND status = 2",
                    [task, e],
                )?;
            }
            Ok(event.is_some())
        })
        .await
    }

    async fn resume_parked(&self, now: Millis, names: Vec<String>) -> StoreResult<u64> {
        if names.is_empty() {
            return Ok(0);
        }
        self.write(move |tx| {
            let marks: Vec<String> = (0..names.len()).map(|i| format!("?{}", i + 2)).collect();
            let sql = format!(
                "UPDATE deliveries SET state = 0, next_attempt_at = ?1, updated_at = ?1 \
                 WHERE state = 4 AND kind = 0 AND webhook IN ({}) RETURNING task_id, event_id",
                marks.join(",")
            );
            let mut args: Vec<rusqlite::types::Value> = vec![now.into()];
            args.extend(names.into_iter().map(rusqlite::types::Value::from));
            let resumed: Vec<(String, String)> = tx
                .prepare(&sql)?
                .query_map(rusqlite::params_from_iter(args), |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut reopen = tx.prepare_cached(
                "UPDATE tasks SET status = 1, done_at = NULL \
                 WHERE id = ?1 AND event_id = ?2 AND status = 2",
            )?;
            for (task, e) in &resumed {
                reopen.execute([task, e])?;
            }
            Ok(resumed.len() as u64)
        })
        .await
    }

    async fn purge(&self, done_before: Millis, dead_before: Millis) -> StoreResult<Purged> {
        self.write(move |tx| {
            let chunk = PURGE_CHUNK as i64;
            let mut n = 0;
            // Done tasks past their retention, with what their event leaves.
            let events: Vec<Option<String>> = tx
                .prepare_cached(
                    "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE status = 2 \
                     AND done_at < ?1 LIMIT ?2) RETURNING event_id",
                )?
                .query_map(params![done_before, chunk], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let more = events.len() == PURGE_CHUNK;
            n += events.len();
            for e in events.iter().flatten() {
                n += drop_event(tx, e)?;
            }
            // Dead letters and parked deliveries past their TTL; their event
            // goes with the last one.
            let dead: Vec<(String, String)> = tx
                .prepare_cached(
                    "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries \
                     WHERE state IN (2, 4) AND updated_at < ?1 LIMIT ?2) RETURNING task_id, event_id",
                )?
                .query_map(params![dead_before, chunk], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let more = more || dead.len() == PURGE_CHUNK;
            n += dead.len();
            let mut orphan = tx.prepare_cached(
                "DELETE FROM events WHERE id = ?2 \
                 AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_id = ?2) \
                 AND NOT EXISTS (SELECT 1 FROM tasks WHERE id = ?1 AND event_id = ?2)",
            )?;
            for (task, e) in &dead {
                n += orphan.execute([task, e])?;
            }
            // The attempt log, past the longest retention.
            let logged = tx
                .prepare_cached(
                    "DELETE FROM attempts WHERE id IN (SELECT id FROM attempts \
                     WHERE at < ?1 ORDER BY at LIMIT ?2)",
                )?
                .execute(params![dead_before, chunk])?;
            let more = more || logged == PURGE_CHUNK;
            n += logged;
            Ok(Purged {
                rows: n as u64,
                more,
            })
        })
        .await
    }

    async fn check_writable(&self, now: Millis) -> StoreResult<()> {
        self.write(move |tx| {
            tx.execute("DELETE FROM probe", [])?;
            tx.execute("INSERT INTO probe (at) VALUES (?1)", [now])?;
            Ok(())
        })
        .await
    }
}

/// One daemon owns a SQLite store (its lock file says so): it is the only
/// live instance and always the leader.
#[async_trait]
impl Coordination for SqliteStore {
    async fn heartbeat(
        &self,
        _now: Millis,
        instance: InstanceInfo,
        _ttl_ms: Millis,
    ) -> StoreResult<Vec<InstanceInfo>> {
        Ok(vec![instance])
    }

    async fn lead(
        &self,
        _now: Millis,
        _instance: String,
        _ttl_ms: Millis,
    ) -> StoreResult<Option<i64>> {
        Ok(Some(1))
    }

    async fn leader(&self, _now: Millis) -> StoreResult<Option<(String, i64)>> {
        Ok(None)
    }

    async fn leave(&self, _instance: String) -> StoreResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
