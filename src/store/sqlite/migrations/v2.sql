-- Schema version 2.
--
-- Delivery IDs are never reused (AUTOINCREMENT): a late report about a
-- deleted delivery cannot settle a new one. A delivery says whether it goes
-- to a configured webhook (by its name, resolved at send time) or to a
-- per-task URL; state 4 parks deliveries whose webhook left the
-- configuration.
CREATE TABLE deliveries_v2 (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL,
    task_id          TEXT NOT NULL,
    webhook          TEXT NOT NULL,        -- configured name, or the per-task URL (redacted)
    kind             INTEGER NOT NULL,     -- 0 configured webhook, 1 per-task URL
    url              TEXT NOT NULL,        -- per-task: where to send; configured: the URL when created
    state            INTEGER NOT NULL,     -- 0 pending, 1 delivered, 2 failed, 3 gone, 4 webhook removed
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    leased           INTEGER NOT NULL DEFAULT 0,
    claim            INTEGER NOT NULL DEFAULT 0,
    last_status      INTEGER,
    last_error       TEXT,
    task_enqueued_at INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
INSERT INTO deliveries_v2 (id, event_id, task_id, webhook, kind, url, state, attempts,
    next_attempt_at, leased, claim, last_status, last_error, task_enqueued_at, created_at, updated_at)
SELECT id, event_id, task_id, webhook, CASE WHEN webhook = url THEN 1 ELSE 0 END, url, state,
    attempts, next_attempt_at, leased, claim, last_status, last_error, task_enqueued_at,
    created_at, updated_at
FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_v2 RENAME TO deliveries;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 0;
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX deliveries_settled ON deliveries (state, updated_at) WHERE state <> 0;

-- Task claims come from one counter that only grows, so a task deleted and
-- enqueued again never sees a claim number its earlier life had.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value)
SELECT 'claim', coalesce(max(claim), 0) FROM tasks;

-- Finds tasks past poll.task_ttl, whatever their next poll.
CREATE INDEX tasks_age ON tasks (enqueued_at) WHERE status = 0;
