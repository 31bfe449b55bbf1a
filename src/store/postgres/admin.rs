//! What the API reads and what operators do: task and delivery views,
//! task listings, dead letters by filter, the activity overview, learned
//! durations, counts, deletes, replays (one or by filter), resumes, purge,
//! the write probe.
//!
//! Writes that change whether an event is settled lock its task and event
//! rows first (see the parent module), reads of one task run in one
//! read-only snapshot.
//!
//! May call: the parent module's helpers, `queue`'s lock statements,
//! `redact`.

use async_trait::async_trait;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::queue::{LOCK_EVENTS, LOCK_TASKS};
use super::*;

const TASK_COLUMNS: &str = "id, service, status, upstream_state, outcome, polls, enqueued_at, \
     next_poll_at, finished_at, event_id, metadata, webhooks";

const TASK: &str = "
SELECT id, service, status, upstream_state, outcome, polls, enqueued_at, next_poll_at,
    finished_at, event_id, metadata, webhooks
FROM tasks WHERE id = $1";

/// The attempt log of a task's event, oldest first.
const TASK_ATTEMPTS: &str = "
SELECT delivery_id, webhook, attempt, at, status, latency_ms, error, answer, verdict
FROM attempts WHERE event_id = (SELECT event_id FROM tasks WHERE id = $1)
ORDER BY at, id";

/// Dead letters or parked deliveries (`$1`, 2 or 4) settled in `[$2, $3)`,
/// of webhook `$4` and event type `$5` when given. The literal `IN (2, 4)`
/// lets the planner use the partial index `deliveries_dead` for the window.
const MATCHING: &str = "FROM deliveries d LEFT JOIN events e ON e.id = d.event_id
WHERE d.state = $1 AND d.state IN (2, 4) AND d.updated_at >= $2 AND d.updated_at < $3
  AND ($4::text IS NULL OR d.webhook = $4) AND ($5::text IS NULL OR e.type = $5)";

/// Activity: tasks enqueued since `$1`.
const ACTIVITY_ENQUEUED: &str = "SELECT count(*) FROM tasks WHERE enqueued_at >= $1";

/// Activity: attempts, deliveries and failures per webhook since `$1`.
const ACTIVITY_COUNTS: &str = "
SELECT webhook, count(*), count(*) FILTER (WHERE verdict = 'delivered'),
    count(*) FILTER (WHERE verdict IN ('retry', 'failed'))
FROM attempts WHERE at >= $1 GROUP BY webhook";

/// Activity: nearest-rank p50 and p95 of each webhook's latencies since
/// `$1` (rank `ceil(p·n)`, in integers so both backends agree exactly).
const ACTIVITY_LATENCY: &str = "
SELECT webhook,
    max(CASE WHEN rn = (n * 50 + 99) / 100 THEN latency_ms END),
    max(CASE WHEN rn = (n * 95 + 99) / 100 THEN latency_ms END)
FROM (SELECT webhook, latency_ms,
        row_number() OVER (PARTITION BY webhook ORDER BY latency_ms) AS rn,
        count(*) OVER (PARTITION BY webhook) AS n
      FROM attempts WHERE at >= $1 AND latency_ms IS NOT NULL) AS l
GROUP BY webhook";

/// Activity: each webhook's last error since `$1`.
const ACTIVITY_LAST_ERROR: &str = "
SELECT DISTINCT ON (webhook) webhook, error, at FROM attempts
WHERE at >= $1 AND error IS NOT NULL
ORDER BY webhook, at DESC, id DESC";

/// Activity: each webhook's deliveries leased at `$1` (the index of leased
/// deliveries serves it).
const ACTIVITY_IN_FLIGHT: &str = "
SELECT webhook, count(*) FROM deliveries
WHERE state = 0 AND leased AND next_attempt_at > $1 GROUP BY webhook";

const DURATION_MODELS: &str = "SELECT service, observed, buckets, updated_at FROM durations";

const TASK_EVENT: &str = "
SELECT body FROM events WHERE id = (SELECT event_id FROM tasks WHERE id = $1)";

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, d.task_id, e.type, d.webhook, d.url, d.state, \
     d.attempts, d.next_attempt_at, d.last_status, d.last_error, d.created_at, d.updated_at, d.kind";

const STATS: &str = "
SELECT
    (SELECT count(*) FROM tasks WHERE status = 0),
    (SELECT count(*) FROM tasks WHERE status = 1),
    (SELECT count(*) FROM tasks WHERE status = 2),
    (SELECT count(*) FROM deliveries WHERE state = 0),
    (SELECT count(*) FROM deliveries WHERE state = 2),
    (SELECT count(*) FROM deliveries WHERE state = 4),
    (SELECT min(enqueued_at) FROM tasks WHERE status = 0)";

/// Removes a task with what its event leaves (its pending, delivered and
/// gone deliveries; the event unless a dead letter still needs it) and its
/// event's attempt log.
const DELETE_TASK: &str = "
WITH t AS (DELETE FROM tasks WHERE id = $1 RETURNING event_id),
a AS (DELETE FROM attempts x USING t WHERE x.event_id = t.event_id),
d AS (
    DELETE FROM deliveries x USING t WHERE x.event_id = t.event_id AND x.state IN (0, 1, 3)
),
e AS (
    DELETE FROM events e USING t
    WHERE e.id = t.event_id
      AND NOT EXISTS (SELECT 1 FROM deliveries x WHERE x.event_id = e.id AND x.state IN (2, 4))
)
SELECT count(*) FROM t";

/// Locks the task the statement's `$1` names by ID...
const LOCK_TASK: &str = "SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE";
/// ...then its event (read after the task lock is held).
const LOCK_TASK_EVENT: &str =
    "SELECT 1 FROM events WHERE id = (SELECT event_id FROM tasks WHERE id = $1) FOR UPDATE";

/// Locks the task of delivery `$1`...
const LOCK_DELIVERY_TASK: &str =
    "SELECT 1 FROM tasks WHERE id = (SELECT task_id FROM deliveries WHERE id = $1) FOR UPDATE";
/// ...then its event.
const LOCK_DELIVERY_EVENT: &str =
    "SELECT 1 FROM events WHERE id = (SELECT event_id FROM deliveries WHERE id = $1) FOR UPDATE";

/// Makes the deliveries `$2` pending again (due `$1`) if they are still in
/// one of the states `$3`, their attempts reset when `$4`; reopens their tasks if done;
/// one NOTIFY.
const REOPEN: &str = "
WITH d AS (
    UPDATE deliveries SET state = 0, next_attempt_at = $1, updated_at = $1,
        attempts = CASE WHEN $4 THEN 0 ELSE attempts END
    WHERE id = ANY($2::int8[]) AND state = ANY($3::int2[])
    RETURNING task_id, event_id
),
reopened AS (
    UPDATE tasks t SET status = 1, done_at = NULL
    FROM (SELECT DISTINCT task_id, event_id FROM d) AS x
    WHERE t.id = x.task_id AND t.event_id = x.event_id AND t.status = 2
),
wake AS (
    SELECT pg_notify('taskhook_deliveries', $5) FROM (SELECT 1 FROM d LIMIT 1) AS any_new
)
SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM wake)";

/// Done tasks past their retention, with what their event leaves.
const PURGE_DONE: &str = "
WITH old AS (
    SELECT id FROM tasks WHERE status = 2 AND done_at < $1
    ORDER BY done_at LIMIT $2
    FOR UPDATE SKIP LOCKED
),
t AS (DELETE FROM tasks WHERE id = ANY(ARRAY(SELECT id FROM old)) RETURNING event_id),
d AS (
    DELETE FROM deliveries x USING t
    WHERE x.event_id = t.event_id AND x.state IN (0, 1, 3)
    RETURNING 1
),
e AS (
    DELETE FROM events e USING t
    WHERE e.id = t.event_id
      AND NOT EXISTS (SELECT 1 FROM deliveries x WHERE x.event_id = e.id AND x.state IN (2, 4))
    RETURNING 1
)
SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM d) + (SELECT count(*) FROM e)";

/// Dead letters and parked deliveries past their TTL; an event goes with
/// its last delivery when its task is gone too. (`d`'s rows are still in
/// the statement's snapshot, hence `NOT IN`.)
const PURGE_DEAD: &str = "
WITH old AS (
    SELECT id FROM deliveries WHERE state IN (2, 4) AND updated_at < $1
    ORDER BY updated_at LIMIT $2
    FOR UPDATE SKIP LOCKED
),
d AS (
    DELETE FROM deliveries WHERE id = ANY(ARRAY(SELECT id FROM old))
    RETURNING id, task_id, event_id
),
e AS (
    DELETE FROM events e USING (SELECT DISTINCT task_id, event_id FROM d) AS g
    WHERE e.id = g.event_id
      AND NOT EXISTS (SELECT 1 FROM deliveries x
                      WHERE x.event_id = e.id AND x.id NOT IN (SELECT id FROM d))
      AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = g.task_id AND t.event_id = g.event_id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM e)";

/// The attempt log past the longest retention, oldest first.
const PURGE_ATTEMPTS: &str = "
WITH old AS (SELECT id FROM attempts WHERE at < $1 ORDER BY at LIMIT $2)
DELETE FROM attempts WHERE id = ANY(ARRAY(SELECT id FROM old))";

const CHECK_WRITABLE: &str = "
WITH gone AS (DELETE FROM probe) INSERT INTO probe (at) VALUES ($1)";

fn delivery_view(r: &Row) -> DeliveryView {
    let state = state_of(r.get(6));
    DeliveryView {
        id: r.get(0),
        event_id: r.get(1),
        task_id: r.get(2),
        event_type: r.get::<_, Option<String>>(3).unwrap_or_default(),
        webhook: crate::redact::url(&r.get::<_, String>(4)),
        kind: DeliveryKind::from_code(r.get::<_, i16>(13) as i64),
        url: crate::redact::url(&r.get::<_, String>(5)),
        state,
        attempts: count(r.get(7)),
        next_attempt_at: if state == DeliveryState::Pending {
            r.get(8)
        } else {
            None
        },
        last_status: r
            .get::<_, Option<i32>>(9)
            .and_then(|s| u16::try_from(s).ok()),
        last_error: r.get(10),
        created_at: r.get(11),
        updated_at: r.get(12),
    }
}

fn attempt_view(r: &Row) -> AttemptView {
    AttemptView {
        delivery_id: r.get(0),
        webhook: crate::redact::url(&r.get::<_, String>(1)),
        attempt: count(r.get(2)),
        at: r.get(3),
        status: shared::status_of(r.get::<_, Option<i32>>(4).map(i64::from)),
        latency_ms: r.get(5),
        error: r.get(6),
        answer: r.get(7),
        verdict: r.get(8),
    }
}

/// The SQL and arguments of a task listing (see [`ReadModel::list_tasks`]).
/// The status is written into the SQL, so the partial index `tasks_age`
/// serves a listing of watched tasks; an ID prefix is a range on the
/// primary key (IDs compare in byte order, see migration 2).
pub(super) fn list_tasks_query(f: &TaskFilter) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut bind = |v: Box<dyn ToSql + Sync + Send>| {
        args.push(v);
        format!("${}", args.len())
    };
    let mut terms: Vec<String> = Vec::new();
    if let Some(p) = f.id_prefix.as_deref().filter(|p| !p.is_empty()) {
        let lo = bind(Box::new(p.to_string()));
        terms.push(match shared::prefix_upper_bound(p) {
            Some(hi) => format!("id >= {lo}::text AND id < {}::text", bind(Box::new(hi))),
            None => format!("id >= {lo}::text AND starts_with(id, {lo}::text)"),
        });
    }
    if let Some(status) = f.status {
        terms.push(format!(
            "status = {}",
            match status {
                TaskStatus::Watching => 0,
                TaskStatus::Delivering => 1,
                TaskStatus::Done => 2,
            }
        ));
    }
    if let Some(service) = &f.service {
        terms.push(format!(
            "service = {}::text",
            bind(Box::new(service.clone()))
        ));
    }
    if let Some(outcome) = &f.outcome {
        terms.push(format!(
            "outcome = {}::text",
            bind(Box::new(outcome.clone()))
        ));
    }
    if let Some((at, id)) = &f.after {
        let (at, id) = (bind(Box::new(*at)), bind(Box::new(id.clone())));
        terms.push(format!(
            "enqueued_at <= {at}::int8 AND (enqueued_at, id) < ({at}::int8, {id}::text)"
        ));
    }
    let limit = bind(Box::new(f.limit.min(i64::MAX as usize) as i64));
    let filter = if terms.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", terms.join(" AND "))
    };
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks{filter} \
         ORDER BY enqueued_at DESC, id DESC LIMIT {limit}::int8"
    );
    (sql, args)
}

fn task_view(r: &Row) -> TaskView {
    let status = match r.get::<_, i16>(2) {
        WATCHING => TaskStatus::Watching,
        DELIVERING => TaskStatus::Delivering,
        _ => TaskStatus::Done,
    };
    let metadata: Option<String> = r.get(10);
    let webhooks: Option<String> = r.get(11);
    TaskView {
        id: r.get(0),
        service: r.get(1),
        status,
        upstream_state: r.get(3),
        outcome: r.get(4),
        polls: count(r.get(5)),
        enqueued_at: r.get(6),
        next_poll_at: if status == TaskStatus::Watching {
            r.get(7)
        } else {
            None
        },
        finished_at: r.get(8),
        event_id: r.get(9),
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
    }
}

#[async_trait]
impl ReadModel for PostgresStore {
    async fn list_tasks(&self, filter: TaskFilter) -> StoreResult<Vec<TaskView>> {
        if filter.limit == 0 {
            return Ok(Vec::new());
        }
        let (sql, args) = list_tasks_query(&filter);
        let args: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let c = self.conn().await?;
        let st = c.prepare_cached(&sql).await.map_err(db)?;
        let rows = c.query(&st, &args).await.map_err(db)?;
        Ok(rows.iter().map(task_view).collect())
    }

    async fn list_matching(
        &self,
        filter: ReplayFilter,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryView>> {
        if !shared::replayable(filter.state) || limit == 0 {
            return Ok(Vec::new());
        }
        let c = self.conn().await?;
        let st = c
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} {MATCHING} \
                 ORDER BY d.updated_at DESC, d.id DESC LIMIT $6"
            ))
            .await
            .map_err(db)?;
        let limit = limit.min(i64::MAX as usize) as i64;
        let (state, since, until) = matching_window(&filter);
        let rows = c
            .query(
                &st,
                &[
                    &state,
                    &since,
                    &until,
                    &filter.webhook,
                    &filter.event_type,
                    &limit,
                ],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(delivery_view).collect())
    }

    async fn count_matching(&self, filter: ReplayFilter) -> StoreResult<u64> {
        if !shared::replayable(filter.state) {
            return Ok(0);
        }
        let c = self.conn().await?;
        let st = c
            .prepare_cached(&format!("SELECT count(*) {MATCHING}"))
            .await
            .map_err(db)?;
        let (state, since, until) = matching_window(&filter);
        let row = c
            .query_one(
                &st,
                &[&state, &since, &until, &filter.webhook, &filter.event_type],
            )
            .await
            .map_err(db)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn activity(&self, now: Millis, since: Millis) -> StoreResult<Activity> {
        let tx = self.tx().await?;
        let c = tx.client();
        let enqueued = c.prepare_cached(ACTIVITY_ENQUEUED).await.map_err(db)?;
        let counts = c.prepare_cached(ACTIVITY_COUNTS).await.map_err(db)?;
        let latency = c.prepare_cached(ACTIVITY_LATENCY).await.map_err(db)?;
        let last_error = c.prepare_cached(ACTIVITY_LAST_ERROR).await.map_err(db)?;
        let in_flight = c.prepare_cached(ACTIVITY_IN_FLIGHT).await.map_err(db)?;
        let since_arg: [&(dyn ToSql + Sync); 1] = [&since];
        let now_arg: [&(dyn ToSql + Sync); 1] = [&now];
        // One snapshot, one round trip.
        let (_, enqueued, counts, latency, last_error, in_flight, _) = tokio::try_join!(
            biased;
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
            c.query_one(&enqueued, &since_arg),
            c.query(&counts, &since_arg),
            c.query(&latency, &since_arg),
            c.query(&last_error, &since_arg),
            c.query(&in_flight, &now_arg),
            c.batch_execute("COMMIT"),
        )
        .map_err(db)?;
        tx.done();
        let mut a = Activity {
            since,
            enqueued: enqueued.get::<_, i64>(0) as u64,
            ..Default::default()
        };
        let mut book = shared::HealthBook::default();
        for r in &counts {
            let (n, delivered, failed) = (
                r.get::<_, i64>(1) as u64,
                r.get::<_, i64>(2) as u64,
                r.get::<_, i64>(3) as u64,
            );
            let h = book.entry(r.get(0));
            h.attempts += n;
            h.delivered += delivered;
            a.delivered += delivered;
            a.failed_attempts += failed;
        }
        for r in &latency {
            let h = book.entry(r.get(0));
            (h.p50_ms, h.p95_ms) = (r.get(1), r.get(2));
        }
        for r in &last_error {
            let h = book.entry(r.get(0));
            (h.last_error, h.last_error_at) = (r.get(1), r.get(2));
        }
        for r in &in_flight {
            book.entry(r.get(0)).in_flight += r.get::<_, i64>(1) as u64;
        }
        a.webhooks = book.into_sorted();
        Ok(a)
    }

    async fn duration_models(&self) -> StoreResult<Vec<DurationModel>> {
        let c = self.conn().await?;
        let st = c.prepare_cached(DURATION_MODELS).await.map_err(db)?;
        let rows = c.query(&st, &[]).await.map_err(db)?;
        let mut models: Vec<DurationModel> =
            rows.iter().map(super::queue::duration_model).collect();
        // In byte order, whatever the database's collation.
        models.sort_by(|a, b| a.service.cmp(&b.service));
        Ok(models)
    }

    async fn get_task(&self, id: String) -> StoreResult<Option<TaskView>> {
        let tx = self.tx().await?;
        let c = tx.client();
        let task = c.prepare_cached(TASK).await.map_err(db)?;
        let event = c.prepare_cached(TASK_EVENT).await.map_err(db)?;
        let deliveries = c
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries d LEFT JOIN events e ON e.id = d.event_id \
                 WHERE d.event_id = (SELECT event_id FROM tasks WHERE id = $1) ORDER BY d.id"
            ))
            .await
            .map_err(db)?;
        let attempts = c.prepare_cached(TASK_ATTEMPTS).await.map_err(db)?;
        let args: [&(dyn ToSql + Sync); 1] = [&id];
        // One snapshot, one round trip.
        let (_, task, event, deliveries, attempts, _) = tokio::try_join!(
            biased;
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
            c.query_opt(&task, &args),
            c.query_opt(&event, &args),
            c.query(&deliveries, &args),
            c.query(&attempts, &args),
            c.batch_execute("COMMIT"),
        )
        .map_err(db)?;
        tx.done();
        let Some(task) = task else {
            return Ok(None);
        };
        let mut view = task_view(&task);
        if view.event_id.is_some() {
            let body = event.and_then(|r| r.get::<_, Option<String>>(0));
            view.event = body.as_deref().and_then(|b| serde_json::from_str(b).ok());
            view.event_body = body;
            view.deliveries = deliveries.iter().map(delivery_view).collect();
            view.attempts = attempts.iter().map(attempt_view).collect();
        }
        Ok(Some(view))
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let c = self.conn().await?;
        let st = c.prepare_cached(STATS).await.map_err(db)?;
        let r = c.query_one(&st, &[]).await.map_err(db)?;
        let n = |i: usize| r.get::<_, i64>(i) as u64;
        Ok(StoreStats {
            watching: n(0),
            delivering: n(1),
            done: n(2),
            deliveries_pending: n(3),
            dead_letters: n(4),
            webhook_removed: n(5),
            oldest_watching_enqueued_at: r.get(6),
        })
    }

    async fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> StoreResult<Vec<DeliveryView>> {
        let c = self.conn().await?;
        let rows = match state {
            Some(s) => {
                let st = c
                    .prepare_cached(&format!(
                        "SELECT {DELIVERY_COLUMNS} FROM deliveries d \
                         LEFT JOIN events e ON e.id = d.event_id \
                         WHERE d.state = $1 ORDER BY d.id DESC LIMIT $2"
                    ))
                    .await
                    .map_err(db)?;
                c.query(&st, &[&state_code(s), &(limit as i64)]).await
            }
            None => {
                let st = c
                    .prepare_cached(&format!(
                        "SELECT {DELIVERY_COLUMNS} FROM deliveries d \
                         LEFT JOIN events e ON e.id = d.event_id ORDER BY d.id DESC LIMIT $1"
                    ))
                    .await
                    .map_err(db)?;
                c.query(&st, &[&(limit as i64)]).await
            }
        }
        .map_err(db)?;
        Ok(rows.iter().map(delivery_view).collect())
    }
}

/// The state and settle window of a replay filter, as [`MATCHING`] takes
/// them (an open end is the farthest time).
fn matching_window(f: &ReplayFilter) -> (i16, Millis, Millis) {
    (
        state_code(f.state),
        f.since.unwrap_or(Millis::MIN),
        f.until.unwrap_or(Millis::MAX),
    )
}

impl PostgresStore {
    /// Makes deliveries pending again: those `select` (with `params`)
    /// lists, still in `state`, after locking their tasks and events.
    async fn reopen(
        &self,
        now: Millis,
        select: &str,
        params: &[&(dyn ToSql + Sync)],
        state: i16,
        reset_attempts: bool,
    ) -> StoreResult<u64> {
        let states = vec![state];
        let tx = self.tx().await?;
        let c = tx.client();
        let select = c.prepare_cached(select).await.map_err(db)?;
        let (_, found) = tokio::try_join!(
            biased;
            c.batch_execute("BEGIN"),
            c.query(&select, params),
        )
        .map_err(db)?;
        let mut ids = Vec::with_capacity(found.len());
        let mut tasks = Vec::with_capacity(found.len());
        let mut events = Vec::with_capacity(found.len());
        for r in &found {
            ids.push(r.get::<_, i64>(0));
            tasks.push(r.get::<_, String>(1));
            events.push(r.get::<_, String>(2));
        }
        tasks.sort();
        tasks.dedup();
        events.sort();
        events.dedup();
        let lock_tasks = c.prepare_cached(LOCK_TASKS).await.map_err(db)?;
        let lock_events = c.prepare_cached(LOCK_EVENTS).await.map_err(db)?;
        let reopen = c.prepare_cached(REOPEN).await.map_err(db)?;
        let tasks: [&(dyn ToSql + Sync); 1] = [&tasks];
        let events: [&(dyn ToSql + Sync); 1] = [&events];
        let args: [&(dyn ToSql + Sync); 5] =
            [&now, &ids, &states, &reset_attempts, &self.inner.schema];
        let (_, _, row, _) = tokio::try_join!(
            biased;
            c.execute(&lock_tasks, &tasks),
            c.execute(&lock_events, &events),
            c.query_one(&reopen, &args),
            c.batch_execute("COMMIT"),
        )
        .map_err(db)?;
        tx.done();
        Ok(row.get::<_, i64>(0) as u64)
    }
}

#[async_trait]
impl Admin for PostgresStore {
    async fn replay_matching(&self, now: Millis, filter: ReplayFilter) -> StoreResult<u64> {
        if !shared::replayable(filter.state) {
            return Ok(0);
        }
        let (state, since, until) = matching_window(&filter);
        // One transaction: the matches are listed, their tasks and events
        // locked, then one statement reopens them all (with one NOTIFY).
        self.reopen(
            now,
            &format!("SELECT d.id, d.task_id, d.event_id {MATCHING}"),
            &[&state, &since, &until, &filter.webhook, &filter.event_type],
            state,
            true,
        )
        .await
    }

    async fn delete_task(&self, id: String) -> StoreResult<bool> {
        let tx = self.tx().await?;
        let c = tx.client();
        let lock_task = c.prepare_cached(LOCK_TASK).await.map_err(db)?;
        let lock_event = c.prepare_cached(LOCK_TASK_EVENT).await.map_err(db)?;
        let delete = c.prepare_cached(DELETE_TASK).await.map_err(db)?;
        let args: [&(dyn ToSql + Sync); 1] = [&id];
        let (_, _, _, row, _) = tokio::try_join!(
            biased;
            c.batch_execute("BEGIN"),
            c.execute(&lock_task, &args),
            c.execute(&lock_event, &args),
            c.query_one(&delete, &args),
            c.batch_execute("COMMIT"),
        )
        .map_err(db)?;
        tx.done();
        Ok(row.get::<_, i64>(0) > 0)
    }

    async fn replay_delivery(&self, now: Millis, id: i64) -> StoreResult<bool> {
        let tx = self.tx().await?;
        let c = tx.client();
        let lock_task = c.prepare_cached(LOCK_DELIVERY_TASK).await.map_err(db)?;
        let lock_event = c.prepare_cached(LOCK_DELIVERY_EVENT).await.map_err(db)?;
        let reopen = c.prepare_cached(REOPEN).await.map_err(db)?;
        let ids = vec![id];
        let schema = &self.inner.schema;
        let states = vec![FAILED, REMOVED];
        let args: [&(dyn ToSql + Sync); 1] = [&id];
        let reopen_args: [&(dyn ToSql + Sync); 5] = [&now, &ids, &states, &true, schema];
        let (_, _, _, row, _) = tokio::try_join!(
            biased;
            c.batch_execute("BEGIN"),
            c.execute(&lock_task, &args),
            c.execute(&lock_event, &args),
            c.query_one(&reopen, &reopen_args),
            c.batch_execute("COMMIT"),
        )
        .map_err(db)?;
        tx.done();
        Ok(row.get::<_, i64>(0) > 0)
    }

    async fn resume_parked(&self, now: Millis, names: Vec<String>) -> StoreResult<u64> {
        if names.is_empty() {
            return Ok(0);
        }
        self.reopen(
            now,
            "SELECT id, task_id, event_id FROM deliveries \
             WHERE state = 4 AND kind = 0 AND webhook = ANY($1::text[])",
            &[&names],
            REMOVED,
            false,
        )
        .await
    }

    async fn purge(&self, done_before: Millis, dead_before: Millis) -> StoreResult<Purged> {
        let chunk = PURGE_CHUNK as i64;
        let c = self.conn().await?;
        let done = c.prepare_cached(PURGE_DONE).await.map_err(db)?;
        let dead = c.prepare_cached(PURGE_DEAD).await.map_err(db)?;
        let logged = c.prepare_cached(PURGE_ATTEMPTS).await.map_err(db)?;
        // Three statements, each its own transaction: locks are held briefly.
        let a = c
            .query_one(&done, &[&done_before, &chunk])
            .await
            .map_err(db)?;
        let b = c
            .query_one(&dead, &[&dead_before, &chunk])
            .await
            .map_err(db)?;
        let attempts = c
            .execute(&logged, &[&dead_before, &chunk])
            .await
            .map_err(db)? as i64;
        let (tasks, rest) = (a.get::<_, i64>(0), a.get::<_, i64>(1));
        let (dead, events) = (b.get::<_, i64>(0), b.get::<_, i64>(1));
        Ok(Purged {
            rows: (tasks + rest + dead + events + attempts) as u64,
            more: tasks == chunk || dead == chunk || attempts == chunk,
        })
    }

    async fn check_writable(&self, now: Millis) -> StoreResult<()> {
        let c = self.conn().await?;
        let st = c.prepare_cached(CHECK_WRITABLE).await.map_err(db)?;
        c.execute(&st, &[&now]).await.map_err(db)?;
        Ok(())
    }
}
