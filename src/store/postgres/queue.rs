//! The hot path: enqueue, poll claims and their results, hints that hurry
//! tasks, learned durations, delivery claims and their results (with the
//! attempt log). Each is one statement, or one transaction whose
//! statements go out together (`BEGIN`, locks, the write, `COMMIT` in one
//! round trip), with batches passed as arrays and expanded by `unnest`.
//!
//! May call: the parent module's helpers (pool, `Tx`, codes), `redact`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::*;

/// Stores new tasks; rewatches done ones (dropping what their old event
/// leaves: its delivered and pending deliveries, and the event unless a
/// dead letter still needs it). `old` reads the statement's snapshot, so it
/// holds the event a rewatched task had whichever CTE runs first.
const ENQUEUE: &str = "
WITH input AS (
    SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[])
        AS u(id, service, metadata, webhooks)
),
old AS (
    SELECT t.id, t.event_id FROM tasks t JOIN input ON input.id = t.id WHERE t.status = 2
),
up AS (
    INSERT INTO tasks AS t (id, service, status, enqueued_at, next_poll_at, metadata, webhooks)
    SELECT id, service, 0, $1, $2, metadata, webhooks FROM input
    ON CONFLICT (id) DO UPDATE SET service = excluded.service, status = 0,
        enqueued_at = excluded.enqueued_at, next_poll_at = excluded.next_poll_at,
        leased = false, hinted = false, hints = 0, claim = 0, polls = 0, misses = 0, fail_seen = 0,
        upstream_state = NULL, outcome = NULL, event_id = NULL, finished_at = NULL,
        done_at = NULL, metadata = excluded.metadata, webhooks = excluded.webhooks
    WHERE t.status = 2
    RETURNING t.id
),
gone AS (
    SELECT old.event_id FROM old JOIN up ON up.id = old.id WHERE old.event_id IS NOT NULL
),
dropped AS (
    DELETE FROM deliveries d USING gone
    WHERE d.event_id = gone.event_id AND d.state IN (0, 1, 3)
),
dropped_events AS (
    DELETE FROM events e USING gone
    WHERE e.id = gone.event_id
      AND NOT EXISTS (SELECT 1 FROM deliveries x WHERE x.event_id = e.id AND x.state IN (2, 4))
),
wake AS (
    SELECT pg_notify('taskhook_tasks', $7) FROM (SELECT 1 FROM up LIMIT 1) AS any_new
)
SELECT (SELECT count(*) FROM up), (SELECT count(*) FROM wake)";

/// Leases due tasks of one service: `pick` locks the earliest due task
/// not locked by another claimer and not of a skipped service; `due` locks
/// that service's tasks due by the window's end, up to its limit; the
/// update leases them under one new claim number. (`= ANY(ARRAY(...))`
/// makes the update look its rows up by key: joined to the CTE, whose size
/// the planner cannot know, it may scan the whole table.) When nothing was
/// leased, one extra row says which service was picked (its limit was 0)
/// or, if none, when the earliest task comes due.
const CLAIM_POLL_BATCH: &str = "
WITH pick AS (
    SELECT service FROM tasks
    WHERE status = 0 AND next_poll_at <= $1 AND service <> ALL($4::text[])
    ORDER BY next_poll_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
),
lim AS (
    SELECT coalesce(
        (SELECT l.n FROM unnest($5::text[], $6::int8[]) AS l(service, n)
         WHERE l.service = pick.service LIMIT 1),
        $7::int8) AS n
    FROM pick
),
due AS (
    SELECT t.id, t.next_poll_at FROM tasks t
    WHERE t.status = 0 AND t.service = (SELECT service FROM pick) AND t.next_poll_at <= $2
    ORDER BY t.next_poll_at
    LIMIT (SELECT n FROM lim)
    FOR UPDATE SKIP LOCKED
),
c AS (SELECT nextval('task_claims') AS n),
leased AS (
    UPDATE tasks t SET leased = true, claim = c.n, next_poll_at = $3, leased_by = $8
    FROM c
    WHERE t.id = ANY(ARRAY(SELECT id FROM due))
    RETURNING t.id, t.service, t.claim, t.enqueued_at, t.polls, t.misses, t.fail_seen,
        t.metadata, t.webhooks
)
SELECT l.id, l.service, l.claim, l.enqueued_at, l.polls, l.misses, l.fail_seen, l.metadata,
    l.webhooks, due.next_poll_at AS due, NULL::bigint AS next_due
FROM leased l JOIN due ON due.id = l.id
UNION ALL
SELECT NULL, (SELECT service FROM pick), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    CASE WHEN EXISTS (SELECT 1 FROM pick) THEN NULL
         ELSE (SELECT min(next_poll_at) FROM tasks
               WHERE status = 0 AND service <> ALL($4::text[])) END
WHERE NOT EXISTS (SELECT 1 FROM leased)";

/// Applies one poll round: reschedules and finishes fenced by claim (a
/// stale row is simply not updated, so it gets no event and no
/// deliveries), the finished tasks' events and deliveries, and one NOTIFY
/// when deliveries became due. With a hand-off (`$19`), the deliveries are
/// stored leased (claim 1) until `$18` and returned.
const RECORD_POLLS: &str = "
WITH resched AS (
    UPDATE tasks t SET leased = false, hinted = false,
        next_poll_at = CASE WHEN t.hinted THEN least(u.next_poll_at, $25::int8) ELSE u.next_poll_at END,
        polls = t.polls + u.polled, misses = u.misses, fail_seen = u.fail_seen,
        upstream_state = coalesce(u.upstream_state, t.upstream_state)
    FROM unnest($2::text[], $3::int8[], $4::int8[], $5::int4[], $6::int4[], $7::int4[], $8::text[])
        AS u(id, claim, next_poll_at, polled, misses, fail_seen, upstream_state)
    WHERE t.id = u.id AND t.claim = u.claim AND t.status = 0
    RETURNING t.id
),
finished AS (
    UPDATE tasks t SET leased = false, hinted = false,
        status = CASE WHEN u.settled THEN 2 ELSE 1 END,
        polls = t.polls + u.polled, upstream_state = u.upstream_state, outcome = u.outcome,
        event_id = u.event_id, finished_at = $1::int8, done_at = CASE WHEN u.settled THEN $1::int8 END
    FROM unnest($9::text[], $10::int8[], $11::int4[], $12::text[], $13::text[], $14::text[],
                $15::bool[], $16::text[], $17::text[])
        WITH ORDINALITY AS u(id, claim, polled, upstream_state, outcome, event_id, settled,
                             type, body, idx)
    WHERE t.id = u.id AND t.claim = u.claim AND t.status = 0
    RETURNING t.id, t.enqueued_at, u.event_id, u.type, u.body, u.idx
),
new_events AS (
    INSERT INTO events (id, task_id, type, body, created_at)
    SELECT event_id, id, type, body, $1::int8 FROM finished
),
new_deliveries AS (
    INSERT INTO deliveries (event_id, task_id, webhook, kind, url, state, next_attempt_at,
        leased, claim, task_enqueued_at, created_at, updated_at)
    SELECT f.event_id, f.id, d.webhook, d.kind, d.url, 0, $18::int8, $19::bool,
        CASE WHEN $19::bool THEN 1 ELSE 0 END, f.enqueued_at, $1::int8, $1::int8
    FROM unnest($20::int8[], $21::text[], $22::int2[], $23::text[])
        WITH ORDINALITY AS d(idx, webhook, kind, url, ord)
    JOIN finished f ON f.idx = d.idx
    ORDER BY d.ord
    RETURNING id, event_id, task_id, webhook, kind, url, task_enqueued_at
),
wake AS (
    SELECT pg_notify('taskhook_deliveries', $24::text)
    FROM (SELECT 1 FROM new_deliveries LIMIT 1) AS any_new
    WHERE NOT $19::bool
)
SELECT id, event_id, task_id, webhook, kind, url, task_enqueued_at
FROM new_deliveries WHERE $19::bool
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM wake";

/// Leases watched tasks past their TTL, oldest first, whatever their next
/// poll, unless another lease on them still runs.
const CLAIM_EXPIRED: &str = "
WITH due AS (
    SELECT id FROM tasks
    WHERE status = 0 AND enqueued_at < $2 AND (NOT leased OR next_poll_at <= $1)
    ORDER BY enqueued_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
),
c AS (SELECT nextval('task_claims') AS n)
UPDATE tasks t SET leased = true, claim = c.n, next_poll_at = $4, leased_by = $5
FROM c
WHERE t.id = ANY(ARRAY(SELECT id FROM due))
RETURNING t.id, t.service, t.claim, t.enqueued_at, t.polls, t.misses, t.fail_seen,
    t.metadata, t.webhooks, t.enqueued_at AS due";

/// Watched tasks taking polls now, per service (see `PollQueue::demand`): those polled already (the
/// running ones, in `tasks_polled`) and new ones due by the horizon
/// (`tasks_due`), each part from its own partial index rather than a scan
/// of every watched row.
pub(super) const DEMAND: &str = "
SELECT service, count(*) FROM (
  SELECT service FROM tasks WHERE status = 0 AND polls = 0 AND next_poll_at <= $1
  UNION ALL
  SELECT service FROM tasks WHERE status = 0 AND polls > 0) d
GROUP BY service ORDER BY service";

const DEFER_SERVICE: &str = "
UPDATE tasks SET next_poll_at = $1
WHERE status = 0 AND NOT leased AND next_poll_at < $1 AND service = $2";

/// Gives leased deliveries back, due now, and wakes the dispatchers.
const RELEASE_DELIVERIES: &str = "
WITH released AS (
    UPDATE deliveries d SET leased = false, next_attempt_at = $1
    FROM unnest($2::int8[], $3::int8[]) AS r(id, claim)
    WHERE d.id = r.id AND d.claim = r.claim AND d.state = 0 AND d.leased
    RETURNING d.id
),
wake AS (
    SELECT pg_notify('taskhook_deliveries', $4) FROM (SELECT 1 FROM released LIMIT 1) AS any_new
)
SELECT (SELECT count(*) FROM released), (SELECT count(*) FROM wake)";

/// Taken before [`CLAIM_DELIVERIES`], in the same transaction: claims of
/// one schema count leased deliveries one at a time, so two instances
/// cannot each see room for the same webhook's last slot.
const DELIVERY_CLAIM_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock($1, hashtext($2))";

/// Leases due deliveries: `busy` counts each webhook's running leases
/// (read through `deliveries_leased`: its condition is the whole `WHERE`,
/// so stale statistics cannot send it through `deliveries_due`);
/// `cand` locks due deliveries of webhooks neither excluded nor full;
/// `pick` keeps, per webhook, only as many as leave it at the cap; the
/// update bumps each one's claim (looked up by key, see
/// [`CLAIM_POLL_BATCH`]). The event body comes once per event.
/// When nothing was leased, one extra row says when the earliest pending
/// delivery comes due.
pub(super) const CLAIM_DELIVERIES: &str = "
WITH busy AS (
    SELECT webhook, count(*) FILTER (WHERE next_attempt_at > $1) AS n FROM deliveries
    WHERE state = 0 AND leased
    GROUP BY webhook
),
cand AS (
    SELECT id, webhook, next_attempt_at FROM deliveries
    WHERE state = 0 AND next_attempt_at <= $1 AND webhook <> ALL($4::text[])
      AND webhook NOT IN (SELECT webhook FROM busy WHERE n >= $5)
    ORDER BY next_attempt_at, id
    LIMIT $6
    FOR UPDATE SKIP LOCKED
),
pick AS (
    SELECT id, due FROM (
        SELECT c.id, c.next_attempt_at AS due,
            row_number() OVER (PARTITION BY c.webhook ORDER BY c.next_attempt_at, c.id)
                + coalesce(b.n, 0) AS slot
        FROM cand c LEFT JOIN busy b ON b.webhook = c.webhook
    ) AS r
    WHERE slot <= $5
    ORDER BY due, id
    LIMIT $2
),
leased AS (
    UPDATE deliveries d SET leased = true, claim = d.claim + 1, next_attempt_at = $3,
        leased_by = $7
    WHERE d.id = ANY(ARRAY(SELECT id FROM pick))
    RETURNING d.id, d.claim, d.event_id, d.task_id, d.webhook, d.url, d.attempts,
        d.task_enqueued_at, d.kind
)
SELECT l.id, l.claim, l.event_id, l.task_id, l.webhook, l.url, l.attempts,
    l.task_enqueued_at, l.kind, pick.due,
    CASE WHEN row_number() OVER (PARTITION BY l.event_id ORDER BY l.id) = 1
         THEN e.body END AS body,
    NULL::bigint AS next_due
FROM leased l JOIN pick ON pick.id = l.id LEFT JOIN events e ON e.id = l.event_id
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    (SELECT min(next_attempt_at) FROM deliveries WHERE state = 0)
WHERE NOT EXISTS (SELECT 1 FROM leased)";

/// Locks tasks by ID, in ID order (the first lock of every write that
/// decides whether an event is settled).
pub(super) const LOCK_TASKS: &str =
    "SELECT 1 FROM tasks WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE";
/// Locks events by ID, in ID order (taken after [`LOCK_TASKS`]).
pub(super) const LOCK_EVENTS: &str =
    "SELECT 1 FROM events WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE";

/// Records attempts fenced by claim: a retry keeps the delivery pending
/// with its next attempt; any other verdict settles it. Every attempt that
/// landed is appended to the attempt log under the delivery's stored name
/// and count (a stale one matches no row, so logs nothing). Returns the
/// updated ones' task, event and state.
const RECORD_ATTEMPTS: &str = "
WITH u AS (
    UPDATE deliveries d SET leased = false,
        state = coalesce(r.state, d.state),
        next_attempt_at = coalesce(r.at, d.next_attempt_at),
        attempts = d.attempts + 1, last_status = r.status, last_error = r.error, updated_at = $1
    FROM unnest($2::int8[], $3::int8[], $4::int2[], $5::int8[], $6::int4[], $7::text[],
                $8::int8[], $9::text[], $10::text[])
        AS r(id, claim, state, at, status, error, latency, answer, verdict)
    WHERE d.id = r.id AND d.claim = r.claim AND d.state = 0
    RETURNING d.id, d.task_id, d.event_id, d.webhook, d.attempts, d.state,
        r.status, r.error, r.latency, r.answer, r.verdict
),
logged AS (
    INSERT INTO attempts (delivery_id, event_id, task_id, webhook, attempt, at, status,
        latency_ms, error, answer, verdict)
    SELECT id, event_id, task_id, webhook, attempts, $1, status, latency, error, answer, verdict
    FROM u ORDER BY id
)
SELECT task_id, event_id, state FROM u";

/// Makes the watched, unleased tasks `$3` of service `$2` due at `$1` if
/// they were due later (marks leased ones), each at most `$5` times in
/// all, and wakes the pollers when any moved.
const HURRY: &str = "
WITH h AS (
    UPDATE tasks SET next_poll_at = CASE WHEN leased THEN next_poll_at ELSE $1 END,
        hinted = leased, hints = hints + 1
    WHERE id = ANY($3::text[]) AND service = $2 AND status = 0 AND hints < $5
      AND CASE WHEN leased THEN NOT hinted ELSE next_poll_at > $1 END
    RETURNING leased
),
wake AS (
    SELECT pg_notify('taskhook_tasks', $4) FROM (SELECT 1 FROM h WHERE NOT leased LIMIT 1) AS any_new
)
SELECT (SELECT count(*) FROM h), (SELECT count(*) FROM wake)";

/// Folds a histogram of durations (`$3`, `$2` of them) into service `$1`'s
/// learned one, computing from the locked row when there is one, exactly as
/// `durations::Histogram::merge` does (counts added, then halved rounding
/// up once the total passes `$5`); a new row takes `$6`, the histogram
/// merged into an empty one.
const LEARN_DURATIONS: &str = "
INSERT INTO durations AS d (service, observed, buckets, updated_at)
VALUES ($1, $2, $6::int8[], $4)
ON CONFLICT (service) DO UPDATE SET
    observed = d.observed + excluded.observed,
    buckets = ARRAY(
        SELECT CASE WHEN sum(coalesce(a, 0) + coalesce(b, 0)) OVER () > $5::int8
                    THEN (coalesce(a, 0) + coalesce(b, 0) + 1) / 2
                    ELSE coalesce(a, 0) + coalesce(b, 0) END
        FROM unnest(d.buckets, $3::int8[]) WITH ORDINALITY AS u(a, b, i)
        ORDER BY i),
    updated_at = excluded.updated_at
RETURNING observed, buckets, updated_at";

const DURATION_MODEL: &str =
    "SELECT service, observed, buckets, updated_at FROM durations WHERE service = $1";

/// For events whose deliveries were just settled: the task is done once
/// none is pending; an event whose task is gone (a dead letter replayed
/// after its task was purged) loses its settled deliveries, and is dropped
/// with the last one. The pending check reads an event's few deliveries
/// by `deliveries_event` and filters them: with `state = 0` in its `WHERE`,
/// stale statistics (a fresh schema, a burst before autoanalyze) made the
/// planner scan all of `deliveries_due` for each event.
pub(super) const SETTLE_EVENTS: &str = "
WITH s AS (
    SELECT DISTINCT task_id, event_id FROM unnest($2::text[], $3::text[]) AS s(task_id, event_id)
),
done AS (
    UPDATE tasks t SET status = 2, done_at = $1
    FROM s
    WHERE t.id = s.task_id AND t.event_id = s.event_id AND t.status = 1
      AND (SELECT count(*) FILTER (WHERE d.state = 0) FROM deliveries d
           WHERE d.event_id = s.event_id) = 0
),
orphan AS (
    SELECT s.event_id FROM s
    WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = s.task_id AND t.event_id = s.event_id)
),
settled_gone AS (
    DELETE FROM deliveries d USING orphan o WHERE d.event_id = o.event_id AND d.state IN (1, 3)
)
DELETE FROM events e USING orphan o
WHERE e.id = o.event_id
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.state NOT IN (1, 3))";

/// How many due deliveries a claim looks at for each one it may lease: the
/// per-webhook cap can turn some down.
const CLAIM_SCAN_FACTOR: usize = 4;

fn claimed_task(r: &Row) -> ClaimedTask {
    let webhooks: Option<String> = r.get(8);
    ClaimedTask {
        id: r.get(0),
        service: r.get(1),
        claim: r.get(2),
        enqueued_at: r.get(3),
        polls: count(r.get(4)),
        misses: count(r.get(5)),
        fail_seen: count(r.get(6)),
        metadata: r.get(7),
        webhooks: webhooks
            .and_then(|w| serde_json::from_str(&w).ok())
            .unwrap_or_default(),
    }
}

/// Claimed tasks in due order (then ID), as the rows' `due` column says.
fn claimed_tasks(rows: &[Row]) -> Vec<ClaimedTask> {
    let mut tasks: Vec<(Millis, ClaimedTask)> = rows
        .iter()
        .filter(|r| r.get::<_, Option<String>>(0).is_some())
        .map(|r| (r.get::<_, Millis>(9), claimed_task(r)))
        .collect();
    tasks.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
    tasks.into_iter().map(|(_, t)| t).collect()
}

#[async_trait]
impl PollQueue for PostgresStore {
    async fn hurry(&self, now: Millis, service: String, ids: Vec<String>) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let c = self.conn().await?;
        let st = c.prepare_cached(HURRY).await.map_err(db)?;
        let row = c
            .query_one(
                &st,
                &[
                    &(now - crate::store::HINT_LEAD_MS),
                    &service,
                    &ids,
                    &self.inner.schema,
                    &(crate::store::MAX_HINTS_PER_TASK as i32),
                ],
            )
            .await
            .map_err(db)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn demand(&self, horizon: Millis) -> StoreResult<Vec<(String, u64)>> {
        let c = self.conn().await?;
        let st = c.prepare_cached(DEMAND).await.map_err(db)?;
        let rows = c.query(&st, &[&horizon]).await.map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    async fn learn_durations(
        &self,
        now: Millis,
        service: String,
        durations_ms: Vec<i64>,
    ) -> StoreResult<DurationModel> {
        let learned = durations::Histogram::of(&durations_ms);
        let taken = learned.total();
        let c = self.conn().await?;
        if taken == 0 {
            let st = c.prepare_cached(DURATION_MODEL).await.map_err(db)?;
            let row = c.query_opt(&st, &[&service]).await.map_err(db)?;
            return Ok(match row {
                Some(r) => duration_model(&r),
                None => durations::Histogram::default().model(service, 0, 0),
            });
        }
        let mut fresh = durations::Histogram::default();
        fresh.merge(&learned);
        let st = c.prepare_cached(LEARN_DURATIONS).await.map_err(db)?;
        let row = c
            .query_one(
                &st,
                &[
                    &service,
                    &i64::try_from(taken).unwrap_or(i64::MAX),
                    &learned.to_stored(),
                    &now,
                    &(durations::AGE_ABOVE as i64),
                    &fresh.to_stored(),
                ],
            )
            .await
            .map_err(db)?;
        let counts: Vec<i64> = row.get(1);
        Ok(durations::Histogram::from_stored(&counts).model(
            service,
            row.get::<_, i64>(0).max(0) as u64,
            row.get(2),
        ))
    }

    async fn enqueue(
        &self,
        now: Millis,
        first_poll_after_ms: Millis,
        tasks: Vec<NewTask>,
    ) -> StoreResult<EnqueueOutcome> {
        let total = tasks.len();
        // Within one call the first of an ID counts; later ones are
        // duplicates of it (one statement cannot insert a row twice).
        let mut seen = std::collections::HashSet::with_capacity(total);
        let (mut ids, mut services, mut metadata, mut webhooks) = (
            Vec::with_capacity(total),
            Vec::with_capacity(total),
            Vec::with_capacity(total),
            Vec::with_capacity(total),
        );
        for t in tasks {
            if !seen.insert(t.id.clone()) {
                continue;
            }
            webhooks.push(
                (!t.webhooks.is_empty())
                    .then(|| serde_json::to_string(&t.webhooks).expect("strings serialize")),
            );
            ids.push(t.id);
            services.push(t.service);
            metadata.push(t.metadata);
        }
        if ids.is_empty() {
            return Ok(EnqueueOutcome::default());
        }
        let c = self.conn().await?;
        let st = c.prepare_cached(ENQUEUE).await.map_err(db)?;
        let due = now + first_poll_after_ms;
        let row = c
            .query_one(
                &st,
                &[
                    &now,
                    &due,
                    &ids,
                    &services,
                    &metadata,
                    &webhooks,
                    &self.inner.schema,
                ],
            )
            .await
            .map_err(db)?;
        let accepted = row.get::<_, i64>(0) as usize;
        Ok(EnqueueOutcome {
            accepted,
            duplicates: total - accepted,
        })
    }

    async fn claim_poll_batch(
        &self,
        now: Millis,
        window_end: Millis,
        limits: ClaimLimits,
        lease_until: Millis,
    ) -> StoreResult<PollClaim> {
        let skipped = limits.skipped();
        let (services, ns): (Vec<String>, Vec<i64>) = limits
            .per_service
            .iter()
            .map(|(s, n)| (s.clone(), *n as i64))
            .unzip();
        let c = self.conn().await?;
        let st = c.prepare_cached(CLAIM_POLL_BATCH).await.map_err(db)?;
        let rows = c
            .query(
                &st,
                &[
                    &now,
                    &window_end.max(now),
                    &lease_until,
                    &skipped,
                    &services,
                    &ns,
                    &(limits.default as i64),
                    &self.me(),
                ],
            )
            .await
            .map_err(db)?;
        let tasks = claimed_tasks(&rows);
        if let Some(first) = tasks.first() {
            return Ok(PollClaim {
                service: first.service.clone(),
                tasks,
                next_due: None,
            });
        }
        let row = rows.first();
        Ok(PollClaim {
            service: row
                .and_then(|r| r.get::<_, Option<String>>(1))
                .unwrap_or_default(),
            tasks,
            next_due: row.and_then(|r| r.get(10)),
        })
    }

    async fn record_polls(
        &self,
        now: Millis,
        updates: Vec<PollUpdate>,
        handoff_lease: Option<Millis>,
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let rounds = rounds(updates, |u| match u {
            PollUpdate::Reschedule { id, .. } | PollUpdate::Finish { id, .. } => id.clone(),
        });
        if rounds.len() == 1 {
            let c = self.conn().await?;
            let round = rounds.into_iter().next().expect("one round");
            return record_round(&c, &self.inner.schema, now, round, handoff_lease).await;
        }
        // A task named twice: the rounds run one after the other, as one.
        let tx = self.tx().await?;
        tx.client().batch_execute("BEGIN").await.map_err(db)?;
        let mut handed = Vec::new();
        for round in rounds {
            handed.extend(
                record_round(tx.client(), &self.inner.schema, now, round, handoff_lease).await?,
            );
        }
        tx.client().batch_execute("COMMIT").await.map_err(db)?;
        tx.done();
        Ok(handed)
    }

    async fn claim_expired(
        &self,
        now: Millis,
        enqueued_before: Millis,
        limit: usize,
        lease_until: Millis,
    ) -> StoreResult<Vec<ClaimedTask>> {
        let c = self.conn().await?;
        let st = c.prepare_cached(CLAIM_EXPIRED).await.map_err(db)?;
        let rows = c
            .query(
                &st,
                &[
                    &now,
                    &enqueued_before,
                    &(limit as i64),
                    &lease_until,
                    &self.me(),
                ],
            )
            .await
            .map_err(db)?;
        Ok(claimed_tasks(&rows))
    }

    async fn defer_service(&self, service: String, until: Millis) -> StoreResult<u64> {
        let c = self.conn().await?;
        let st = c.prepare_cached(DEFER_SERVICE).await.map_err(db)?;
        c.execute(&st, &[&until, &service]).await.map_err(db)
    }
}

/// One round of [`PollQueue::record_polls`] (no task named twice): one
/// statement.
async fn record_round(
    c: &Object,
    schema: &str,
    now: Millis,
    updates: Vec<PollUpdate>,
    handoff_lease: Option<Millis>,
) -> StoreResult<Vec<ClaimedDelivery>> {
    /// The reschedules, as the statement's arrays.
    #[derive(Default)]
    struct Resched {
        id: Vec<String>,
        claim: Vec<i64>,
        next: Vec<i64>,
        polled: Vec<i32>,
        misses: Vec<i32>,
        fail_seen: Vec<i32>,
        state: Vec<Option<String>>,
    }
    /// The finishes (with their events), as the statement's arrays.
    #[derive(Default)]
    struct Finish {
        id: Vec<String>,
        claim: Vec<i64>,
        polled: Vec<i32>,
        state: Vec<String>,
        outcome: Vec<&'static str>,
        event_id: Vec<String>,
        settled: Vec<bool>,
        kind: Vec<&'static str>,
        body: Vec<String>,
    }
    /// The finishes' deliveries, each pointing at its finish by position.
    #[derive(Default)]
    struct Deliveries {
        finish: Vec<i64>,
        webhook: Vec<String>,
        kind: Vec<i16>,
        url: Vec<String>,
    }
    let (mut r, mut f, mut d) = (Resched::default(), Finish::default(), Deliveries::default());
    let mut bodies: HashMap<String, Arc<str>> = HashMap::new();
    for u in updates {
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
                r.id.push(id);
                r.claim.push(claim);
                r.next.push(next_poll_at);
                r.polled.push(polled as i32);
                r.misses.push(int(misses));
                r.fail_seen.push(int(fail_seen));
                r.state.push(upstream_state);
            }
            PollUpdate::Finish {
                id,
                claim,
                polled,
                outcome,
                upstream_state,
                event,
            } => {
                // WITH ORDINALITY counts from 1.
                let idx = f.id.len() as i64 + 1;
                for nd in event.deliveries.iter() {
                    d.finish.push(idx);
                    d.webhook.push(nd.webhook.clone());
                    d.kind.push(nd.kind.code() as i16);
                    d.url.push(nd.url.clone());
                }
                if handoff_lease.is_some() {
                    bodies.insert(event.id.clone(), event.body.as_str().into());
                }
                f.id.push(id);
                f.claim.push(claim);
                f.polled.push(polled as i32);
                f.state.push(upstream_state);
                f.outcome.push(outcome.as_str());
                f.settled.push(event.deliveries.is_empty());
                f.event_id.push(event.id);
                f.kind.push(outcome.event_type());
                f.body.push(event.body);
            }
        }
    }
    let handoff = handoff_lease.is_some();
    let due = handoff_lease.unwrap_or(now);
    let st = c.prepare_cached(RECORD_POLLS).await.map_err(db)?;
    let rows = c
        .query(
            &st,
            &[
                &now,
                &r.id,
                &r.claim,
                &r.next,
                &r.polled,
                &r.misses,
                &r.fail_seen,
                &r.state,
                &f.id,
                &f.claim,
                &f.polled,
                &f.state,
                &f.outcome,
                &f.event_id,
                &f.settled,
                &f.kind,
                &f.body,
                &due,
                &handoff,
                &d.finish,
                &d.webhook,
                &d.kind,
                &d.url,
                &schema,
                &(now - crate::store::HINT_LEAD_MS),
            ],
        )
        .await
        .map_err(db)?;
    let mut handed: Vec<ClaimedDelivery> = rows
        .iter()
        .filter_map(|row| {
            let id: Option<i64> = row.get(0);
            let event_id: String = row.get::<_, Option<String>>(1)?;
            Some(ClaimedDelivery {
                id: id?,
                claim: 1,
                body: bodies.get(&event_id).cloned().unwrap_or_else(|| "".into()),
                event_id,
                task_id: row.get(2),
                webhook: row.get(3),
                kind: DeliveryKind::from_code(row.get::<_, i16>(4) as i64),
                url: row.get(5),
                attempts: 0,
                enqueued_at: row.get(6),
            })
        })
        .collect();
    handed.sort_by_key(|d| d.id);
    Ok(handed)
}

#[async_trait]
impl DeliveryQueue for PostgresStore {
    async fn release_deliveries(&self, now: Millis, leases: Vec<(i64, i64)>) -> StoreResult<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let (ids, claims): (Vec<i64>, Vec<i64>) = leases.into_iter().unzip();
        let c = self.conn().await?;
        let st = c.prepare_cached(RELEASE_DELIVERIES).await.map_err(db)?;
        c.query_one(&st, &[&now, &ids, &claims, &self.inner.schema])
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn claim_deliveries(
        &self,
        now: Millis,
        limit: usize,
        lease_until: Millis,
        exclude: Vec<String>,
        per_webhook: usize,
    ) -> StoreResult<DeliveryClaim> {
        let tx = self.tx().await?;
        let c = tx.client();
        let lock = c
            .prepare_cached(DELIVERY_CLAIM_LOCK_SQL)
            .await
            .map_err(db)?;
        let claim = c.prepare_cached(CLAIM_DELIVERIES).await.map_err(db)?;
        let scan = (limit.saturating_mul(CLAIM_SCAN_FACTOR)).max(limit) as i64;
        let (limit, per_webhook) = (limit as i64, per_webhook as i64);
        let schema = &self.inner.schema;
        // One round trip: the claim's snapshot is taken once the lock is
        // held, so it sees every lease committed before.
        let lock_args: [&(dyn ToSql + Sync); 2] = [&DELIVERY_CLAIM_LOCK, schema];
        let me = self.me();
        let claim_args: [&(dyn ToSql + Sync); 7] = [
            &now,
            &limit,
            &lease_until,
            &exclude,
            &per_webhook,
            &scan,
            &me,
        ];
        let (_, _, rows, _) = tokio::try_join!(
            biased;
            c.batch_execute("BEGIN"),
            c.execute(&lock, &lock_args),
            c.query(&claim, &claim_args),
            c.batch_execute("COMMIT"),
        )
        .map_err(db)?;
        tx.done();
        let mut bodies: HashMap<String, Arc<str>> = HashMap::new();
        let mut claimed = Vec::with_capacity(rows.len());
        let mut next_due = None;
        for r in &rows {
            let Some(id) = r.get::<_, Option<i64>>(0) else {
                next_due = r.get(11);
                continue;
            };
            let event_id: String = r.get(2);
            if let Some(body) = r.get::<_, Option<String>>(10) {
                bodies.insert(event_id.clone(), body.into());
            }
            claimed.push((
                r.get::<_, Millis>(9),
                id,
                r.get::<_, i64>(1),
                event_id,
                r.get::<_, String>(3),
                r.get::<_, String>(4),
                r.get::<_, String>(5),
                count(r.get(6)),
                r.get::<_, Millis>(7),
                r.get::<_, i16>(8),
            ));
        }
        claimed.sort_by_key(|d| (d.0, d.1));
        let deliveries = claimed
            .into_iter()
            .map(
                |(_, id, claim, event_id, task_id, webhook, url, attempts, enqueued_at, kind)| {
                    ClaimedDelivery {
                        id,
                        claim,
                        body: bodies.get(&event_id).cloned().unwrap_or_else(|| "".into()),
                        event_id,
                        task_id,
                        webhook,
                        kind: DeliveryKind::from_code(kind as i64),
                        url,
                        attempts,
                        enqueued_at,
                    }
                },
            )
            .collect();
        Ok(DeliveryClaim {
            deliveries,
            next_due,
        })
    }

    async fn record_deliveries(
        &self,
        now: Millis,
        reports: Vec<DeliveryReport>,
    ) -> StoreResult<()> {
        if reports.is_empty() {
            return Ok(());
        }
        // The task and event of every settling report, locked first.
        let mut tasks: Vec<String> = Vec::new();
        let mut events: Vec<String> = Vec::new();
        for r in &reports {
            if !matches!(r.verdict, DeliveryVerdict::Retry { .. }) {
                tasks.push(r.task_id.clone());
                events.push(r.event_id.clone());
            }
        }
        tasks.sort();
        tasks.dedup();
        events.sort();
        events.dedup();
        let rounds: Vec<Attempts> = rounds(reports, |r| r.id)
            .into_iter()
            .map(|round| {
                let mut a = Attempts::default();
                round.into_iter().for_each(|r| a.push(r));
                a
            })
            .collect();
        let tx = self.tx().await?;
        let c = tx.client();
        let record = c.prepare_cached(RECORD_ATTEMPTS).await.map_err(db)?;
        if tasks.is_empty() && rounds.len() == 1 {
            // Only retries: nothing settles; one statement.
            c.query(&record, &rounds[0].params(&now))
                .await
                .map_err(db)?;
            tx.done();
            return Ok(());
        }
        let lock_tasks = c.prepare_cached(LOCK_TASKS).await.map_err(db)?;
        let lock_events = c.prepare_cached(LOCK_EVENTS).await.map_err(db)?;
        let mut settled_tasks = Vec::new();
        let mut settled_events = Vec::new();
        let mut keep = |rows: Vec<Row>| {
            for row in rows {
                if row.get::<_, i16>(2) != PENDING {
                    settled_tasks.push(row.get::<_, String>(0));
                    settled_events.push(row.get::<_, String>(1));
                }
            }
        };
        // Locks first, then the first round, in one round trip: the round's
        // snapshot is taken with the locks held.
        let tasks: [&(dyn ToSql + Sync); 1] = [&tasks];
        let events: [&(dyn ToSql + Sync); 1] = [&events];
        let first = rounds[0].params(&now);
        let (_, _, _, rows) = tokio::try_join!(
            biased;
            c.batch_execute("BEGIN"),
            c.execute(&lock_tasks, &tasks),
            c.execute(&lock_events, &events),
            c.query(&record, &first),
        )
        .map_err(db)?;
        keep(rows);
        for round in &rounds[1..] {
            keep(c.query(&record, &round.params(&now)).await.map_err(db)?);
        }
        if settled_tasks.is_empty() {
            c.batch_execute("COMMIT").await.map_err(db)?;
        } else {
            let settle = c.prepare_cached(SETTLE_EVENTS).await.map_err(db)?;
            let args: [&(dyn ToSql + Sync); 3] = [&now, &settled_tasks, &settled_events];
            tokio::try_join!(
                biased;
                c.execute(&settle, &args),
                c.batch_execute("COMMIT"),
            )
            .map_err(db)?;
        }
        tx.done();
        Ok(())
    }
}

/// A learned model from its row (service, observed, buckets, updated_at).
pub(super) fn duration_model(r: &Row) -> DurationModel {
    let counts: Vec<i64> = r.get(2);
    durations::Histogram::from_stored(&counts).model(
        r.get(0),
        r.get::<_, i64>(1).max(0) as u64,
        r.get(3),
    )
}

/// One round of attempt reports as the arrays [`RECORD_ATTEMPTS`] takes.
#[derive(Default)]
struct Attempts {
    id: Vec<i64>,
    claim: Vec<i64>,
    /// `None` for a retry: the delivery stays pending.
    state: Vec<Option<i16>>,
    /// The retry's due time; `None` for a settled one.
    at: Vec<Option<i64>>,
    status: Vec<Option<i32>>,
    error: Vec<Option<String>>,
    /// For the attempt log: how long it took, the start of the answer,
    /// the verdict's word.
    latency: Vec<Option<i64>>,
    answer: Vec<Option<String>>,
    verdict: Vec<&'static str>,
}

impl Attempts {
    /// The parameters of [`RECORD_ATTEMPTS`].
    fn params<'a>(&'a self, now: &'a Millis) -> [&'a (dyn ToSql + Sync); 10] {
        [
            now,
            &self.id,
            &self.claim,
            &self.state,
            &self.at,
            &self.status,
            &self.error,
            &self.latency,
            &self.answer,
            &self.verdict,
        ]
    }

    fn push(&mut self, r: DeliveryReport) {
        let (state, at) = match r.verdict {
            DeliveryVerdict::Retry { at } => (None, Some(at)),
            DeliveryVerdict::Delivered => (Some(DELIVERED), None),
            DeliveryVerdict::DeadLetter => (Some(FAILED), None),
            DeliveryVerdict::Gone => (Some(GONE), None),
            DeliveryVerdict::WebhookRemoved => (Some(REMOVED), None),
        };
        self.verdict.push(shared::verdict_word(&r.verdict));
        self.id.push(r.id);
        self.claim.push(r.claim);
        self.state.push(state);
        self.at.push(at);
        self.status.push(r.status.map(i32::from));
        self.error.push(r.error);
        self.latency.push(r.latency_ms);
        self.answer.push(shared::answer_kept(r.answer));
    }
}
