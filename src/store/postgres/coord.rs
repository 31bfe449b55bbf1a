//! Several daemons on one schema: who is alive (`instances`), who runs the
//! periodic work (`leader`, one row with a term, River's `river_leader`
//! pattern), and wake-ups (the LISTEN session's broadcast).
//!
//! Leadership is a lease on one row: taken when the row is absent or
//! expired (a new term from the `leader_terms` sequence, so terms only grow
//! even across a resignation or the unlogged row's loss in a crash), kept
//! by its holder extending the expiry (same term), given up by deleting
//! it. Times are the callers'.
//!
//! May call: the parent module's helpers.

use async_trait::async_trait;

use super::*;

/// Upserts this instance; removes rows that expired (skipping any another
/// heartbeat holds); returns the live ones, this one included, oldest first.
const HEARTBEAT: &str = "
WITH me AS (
    INSERT INTO instances AS i (id, host, started_at, heartbeat_at, expires_at)
    VALUES ($1, $2, $3, $4::int8, $4::int8 + $5::int8)
    ON CONFLICT (id) DO UPDATE SET host = excluded.host, started_at = excluded.started_at,
        heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at
    RETURNING id, host, started_at, heartbeat_at
),
expired AS (
    DELETE FROM instances WHERE id IN (
        SELECT id FROM instances WHERE expires_at <= $4 AND id <> $1 FOR UPDATE SKIP LOCKED)
)
SELECT id, host, started_at, heartbeat_at FROM instances WHERE expires_at > $4 AND id <> $1
UNION ALL
SELECT id, host, started_at, heartbeat_at FROM me
ORDER BY started_at, id";

/// Takes or keeps the lead. `kept`: the row exists and is this instance's
/// (a new term if its own lease had lapsed) or expired (a new term for
/// this one). `taken`: there is no row. A concurrent taker waits on the row
/// lock and then finds it held and unexpired, or loses the insert.
const LEAD: &str = "
WITH kept AS (
    UPDATE leader l SET
        term = CASE WHEN l.instance = $1 AND l.expires_at > $2 THEN l.term
                    ELSE nextval('leader_terms') END,
        elected_at = CASE WHEN l.instance = $1 AND l.expires_at > $2 THEN l.elected_at
                          ELSE $2 END,
        instance = $1,
        expires_at = $2::int8 + $3::int8
    WHERE l.id AND (l.instance = $1 OR l.expires_at <= $2)
    RETURNING l.term
),
taken AS (
    INSERT INTO leader (id, instance, term, elected_at, expires_at)
    SELECT true, $1, nextval('leader_terms'), $2, $2::int8 + $3::int8
    WHERE NOT EXISTS (SELECT 1 FROM leader)
    ON CONFLICT (id) DO NOTHING
    RETURNING term
)
SELECT term FROM kept UNION ALL SELECT term FROM taken";

/// Gives back, due now, every lease held by an instance that is not live
/// (its heartbeat lapsed, or it left): its tasks are polled and its
/// deliveries sent by others at once, and its webhooks' concurrency slots
/// are free again (a task hinted during the lost poll due ahead of the
/// rest, `$3`). Rows locked by a claim in progress are skipped (a live
/// instance's). The fencing token moves on, so a late write by the
/// instance, should it still run, is ignored. Wakes the others.
const RESCUE: &str = "
WITH live AS (SELECT id FROM instances WHERE expires_at > $1),
d AS (
    UPDATE deliveries SET leased = false, next_attempt_at = $1, claim = claim + 1
    WHERE id IN (
        SELECT id FROM deliveries
        WHERE state = 0 AND leased AND leased_by IS NOT NULL
          AND leased_by <> ALL(ARRAY(SELECT id FROM live))
        FOR UPDATE SKIP LOCKED)
    RETURNING 1
),
t AS (
    UPDATE tasks SET leased = false, hinted = false, claim = nextval('task_claims'),
        next_poll_at = CASE WHEN hinted THEN $3 ELSE $1 END
    WHERE id IN (
        SELECT id FROM tasks
        WHERE status = 0 AND leased AND leased_by IS NOT NULL
          AND leased_by <> ALL(ARRAY(SELECT id FROM live))
        FOR UPDATE SKIP LOCKED)
    RETURNING 1
)
SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM t),
    (SELECT pg_notify('taskhook_deliveries', $2) WHERE EXISTS (SELECT 1 FROM d)),
    (SELECT pg_notify('taskhook_tasks', $2) WHERE EXISTS (SELECT 1 FROM t))";

const LEADER: &str = "SELECT instance, term FROM leader WHERE id AND expires_at > $1";

const LEAVE: &str = "
WITH gone AS (DELETE FROM instances WHERE id = $1)
DELETE FROM leader WHERE instance = $1";

#[async_trait]
impl Coordination for PostgresStore {
    async fn heartbeat(
        &self,
        now: Millis,
        instance: InstanceInfo,
        ttl_ms: Millis,
    ) -> StoreResult<Vec<InstanceInfo>> {
        *self.inner.me.write().expect("instance lock") = Some(instance.id.clone());
        let c = self.conn().await?;
        let st = c.prepare_cached(HEARTBEAT).await.map_err(db)?;
        let rows = c
            .query(
                &st,
                &[
                    &instance.id,
                    &instance.host,
                    &instance.started_at,
                    &now,
                    &ttl_ms,
                ],
            )
            .await
            .map_err(db)?;
        let rescue = c.prepare_cached(RESCUE).await.map_err(db)?;
        let given = c
            .query_one(
                &rescue,
                &[
                    &now,
                    &self.inner.schema,
                    &(now - crate::store::HINT_LEAD_MS),
                ],
            )
            .await
            .map_err(db)?;
        let (deliveries, tasks): (i64, i64) = (given.get(0), given.get(1));
        if deliveries + tasks > 0 {
            tracing::info!(
                deliveries,
                tasks,
                "gave back the leases of daemons that stopped; others take the work now"
            );
        }
        Ok(rows
            .iter()
            .map(|r| InstanceInfo {
                id: r.get(0),
                host: r.get(1),
                started_at: r.get(2),
                heartbeat_at: r.get(3),
            })
            .collect())
    }

    async fn lead(
        &self,
        now: Millis,
        instance: String,
        ttl_ms: Millis,
    ) -> StoreResult<Option<i64>> {
        let c = self.conn().await?;
        let st = c.prepare_cached(LEAD).await.map_err(db)?;
        let row = c
            .query_opt(&st, &[&instance, &now, &ttl_ms])
            .await
            .map_err(db)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn leader(&self, now: Millis) -> StoreResult<Option<(String, i64)>> {
        let c = self.conn().await?;
        let st = c.prepare_cached(LEADER).await.map_err(db)?;
        let row = c.query_opt(&st, &[&now]).await.map_err(db)?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    async fn leave(&self, instance: String) -> StoreResult<()> {
        let c = self.conn().await?;
        let st = c.prepare_cached(LEAVE).await.map_err(db)?;
        c.execute(&st, &[&instance]).await.map_err(db)?;
        Ok(())
    }

    fn wakeups(&self) -> Option<tokio::sync::broadcast::Receiver<Wake>> {
        Some(self.inner.listener.subscribe())
    }
}
