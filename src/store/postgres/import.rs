//! Taking in what another store exported (`taskhook store copy`): tasks,
//! events with their deliveries, learned durations. Each call is one
//! statement, so one transaction; rows the schema has already (by task ID,
//! event ID, service) are left alone and counted, which makes a copy safe
//! to run again. Daemons running on the schema are woken when watched
//! tasks or pending deliveries arrive.
//!
//! May call: the parent module's helpers (pool, codes).

use async_trait::async_trait;

use super::*;

const DONE: i16 = 2;

/// Inserts the tasks not there yet, unleased (claim 0: the next lease
/// takes a number from `task_claims`); wakes the pollers when a watched
/// one arrived.
const IMPORT_TASKS: &str = "
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::int2[], $4::int8[], $5::int8[],
                         $6::int4[], $7::int4[], $8::int4[], $9::text[], $10::text[],
                         $11::text[], $12::int8[], $13::int8[], $14::text[], $15::text[])
        AS u(id, service, status, enqueued_at, next_poll_at, polls, misses, fail_seen,
             upstream_state, outcome, event_id, finished_at, done_at, metadata, webhooks)
),
new AS (
    INSERT INTO tasks (id, service, status, enqueued_at, next_poll_at, polls, misses,
        fail_seen, upstream_state, outcome, event_id, finished_at, done_at, metadata, webhooks)
    SELECT id, service, status, enqueued_at, next_poll_at, polls, misses, fail_seen,
        upstream_state, outcome, event_id, finished_at, done_at, metadata, webhooks
    FROM input
    ON CONFLICT (id) DO NOTHING
    RETURNING status
),
wake AS (
    SELECT pg_notify('taskhook_tasks', $16)
    FROM (SELECT 1 FROM new WHERE status = 0 LIMIT 1) AS any_new
)
SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM wake)";

/// Inserts the events not there yet and, for those only, their
/// deliveries (new IDs, unleased, claim 0); wakes the dispatchers when a
/// pending one arrived.
const IMPORT_EVENTS: &str = "
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[])
        WITH ORDINALITY AS u(id, task_id, type, body, created_at, idx)
),
new AS (
    INSERT INTO events (id, task_id, type, body, created_at)
    SELECT id, task_id, type, body, created_at FROM input ORDER BY idx
    ON CONFLICT (id) DO NOTHING
    RETURNING id
),
new_deliveries AS (
    INSERT INTO deliveries (event_id, task_id, webhook, kind, url, state, attempts,
        next_attempt_at, leased, claim, last_status, last_error, task_enqueued_at,
        created_at, updated_at)
    SELECT i.id, i.task_id, d.webhook, d.kind, d.url, d.state, d.attempts, d.next_attempt_at,
        false, 0, d.last_status, d.last_error, d.task_enqueued_at, d.created_at, d.updated_at
    FROM unnest($6::int8[], $7::text[], $8::int2[], $9::text[], $10::int2[], $11::int4[],
                $12::int8[], $13::int4[], $14::text[], $15::int8[], $16::int8[], $17::int8[])
        WITH ORDINALITY AS d(idx, webhook, kind, url, state, attempts, next_attempt_at,
                             last_status, last_error, task_enqueued_at, created_at,
                             updated_at, ord)
    JOIN input i ON i.idx = d.idx
    JOIN new n ON n.id = i.id
    ORDER BY d.ord
    RETURNING state
),
wake AS (
    SELECT pg_notify('taskhook_deliveries', $18)
    FROM (SELECT 1 FROM new_deliveries WHERE state = 0 LIMIT 1) AS any_new
)
SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM new_deliveries),
    (SELECT count(*) FROM wake)";

/// Stores one service's learned durations unless it has some already.
const IMPORT_DURATIONS: &str = "
INSERT INTO durations (service, observed, buckets, updated_at)
VALUES ($1, $2, $3::int8[], $4)
ON CONFLICT (service) DO NOTHING";

fn status_code(s: TaskStatus) -> i16 {
    match s {
        TaskStatus::Watching => WATCHING,
        TaskStatus::Delivering => DELIVERING,
        TaskStatus::Done => DONE,
    }
}

/// A count or a time that must fit a signed 64-bit column.
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl Import for PostgresStore {
    async fn import_tasks(&self, tasks: Vec<TaskRecord>) -> StoreResult<Imported> {
        if tasks.is_empty() {
            return Ok(Imported::default());
        }
        let n = tasks.len() as u64;
        let mut ids = Vec::with_capacity(tasks.len());
        let mut services = Vec::with_capacity(tasks.len());
        let mut statuses = Vec::with_capacity(tasks.len());
        let mut enqueued = Vec::with_capacity(tasks.len());
        let mut next_polls = Vec::with_capacity(tasks.len());
        let mut polls = Vec::with_capacity(tasks.len());
        let mut misses = Vec::with_capacity(tasks.len());
        let mut fail_seen = Vec::with_capacity(tasks.len());
        let mut upstream_states = Vec::with_capacity(tasks.len());
        let mut outcomes = Vec::with_capacity(tasks.len());
        let mut event_ids = Vec::with_capacity(tasks.len());
        let mut finished = Vec::with_capacity(tasks.len());
        let mut done = Vec::with_capacity(tasks.len());
        let mut metadata = Vec::with_capacity(tasks.len());
        let mut webhooks: Vec<Option<String>> = Vec::with_capacity(tasks.len());
        for t in tasks {
            ids.push(t.id);
            services.push(t.service);
            statuses.push(status_code(t.status));
            enqueued.push(t.enqueued_at);
            next_polls.push(t.next_poll_at);
            polls.push(int(t.polls));
            misses.push(int(t.misses));
            fail_seen.push(int(t.fail_seen));
            upstream_states.push(t.upstream_state);
            outcomes.push(t.outcome);
            event_ids.push(t.event_id);
            finished.push(t.finished_at);
            done.push(t.done_at);
            metadata.push(t.metadata);
            webhooks.push(
                (!t.webhooks.is_empty())
                    .then(|| serde_json::to_string(&t.webhooks).expect("strings serialize")),
            );
        }
        let c = self.conn().await?;
        let st = c.prepare_cached(IMPORT_TASKS).await.map_err(db)?;
        let row = c
            .query_one(
                &st,
                &[
                    &ids,
                    &services,
                    &statuses,
                    &enqueued,
                    &next_polls,
                    &polls,
                    &misses,
                    &fail_seen,
                    &upstream_states,
                    &outcomes,
                    &event_ids,
                    &finished,
                    &done,
                    &metadata,
                    &webhooks,
                    &self.inner.schema,
                ],
            )
            .await
            .map_err(db)?;
        let copied = row.get::<_, i64>(0) as u64;
        Ok(Imported {
            copied,
            duplicates: n - copied,
            deliveries: 0,
        })
    }

    async fn import_events(&self, events: Vec<EventRecord>) -> StoreResult<Imported> {
        if events.is_empty() {
            return Ok(Imported::default());
        }
        let n = events.len() as u64;
        let mut ids = Vec::with_capacity(events.len());
        let mut task_ids = Vec::with_capacity(events.len());
        let mut types = Vec::with_capacity(events.len());
        let mut bodies = Vec::with_capacity(events.len());
        let mut created = Vec::with_capacity(events.len());
        let mut d_event: Vec<i64> = Vec::new();
        let mut d_webhook = Vec::new();
        let mut d_kind: Vec<i16> = Vec::new();
        let mut d_url = Vec::new();
        let mut d_state: Vec<i16> = Vec::new();
        let mut d_attempts: Vec<i32> = Vec::new();
        let mut d_next: Vec<Millis> = Vec::new();
        let mut d_status: Vec<Option<i32>> = Vec::new();
        let mut d_error: Vec<Option<String>> = Vec::new();
        let mut d_enqueued: Vec<Millis> = Vec::new();
        let mut d_created: Vec<Millis> = Vec::new();
        let mut d_updated: Vec<Millis> = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            // WITH ORDINALITY counts from 1.
            let idx = i as i64 + 1;
            ids.push(e.id);
            task_ids.push(e.task_id);
            types.push(e.event_type);
            bodies.push(e.body);
            created.push(e.created_at);
            for d in e.deliveries {
                d_event.push(idx);
                d_webhook.push(d.webhook);
                d_kind.push(d.kind.code() as i16);
                d_url.push(d.url);
                d_state.push(state_code(d.state));
                d_attempts.push(int(d.attempts));
                d_next.push(d.next_attempt_at);
                d_status.push(d.last_status.map(i32::from));
                d_error.push(d.last_error);
                d_enqueued.push(d.task_enqueued_at);
                d_created.push(d.created_at);
                d_updated.push(d.updated_at);
            }
        }
        let c = self.conn().await?;
        let st = c.prepare_cached(IMPORT_EVENTS).await.map_err(db)?;
        let row = c
            .query_one(
                &st,
                &[
                    &ids,
                    &task_ids,
                    &types,
                    &bodies,
                    &created,
                    &d_event,
                    &d_webhook,
                    &d_kind,
                    &d_url,
                    &d_state,
                    &d_attempts,
                    &d_next,
                    &d_status,
                    &d_error,
                    &d_enqueued,
                    &d_created,
                    &d_updated,
                    &self.inner.schema,
                ],
            )
            .await
            .map_err(db)?;
        let copied = row.get::<_, i64>(0) as u64;
        Ok(Imported {
            copied,
            duplicates: n - copied,
            deliveries: row.get::<_, i64>(1) as u64,
        })
    }

    async fn import_durations(&self, models: Vec<DurationRecord>) -> StoreResult<Imported> {
        let mut out = Imported::default();
        if models.is_empty() {
            return Ok(out);
        }
        let c = self.conn().await?;
        let st = c.prepare_cached(IMPORT_DURATIONS).await.map_err(db)?;
        for m in models {
            let n = c
                .execute(
                    &st,
                    &[&m.service, &big(m.observed), &m.buckets, &m.updated_at],
                )
                .await
                .map_err(db)?;
            if n == 1 {
                out.copied += 1;
            } else {
                out.duplicates += 1;
            }
        }
        Ok(out)
    }
}
