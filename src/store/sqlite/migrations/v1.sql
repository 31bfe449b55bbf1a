-- Schema version 1. Times are unix milliseconds.
CREATE TABLE tasks (
    id             TEXT PRIMARY KEY,
    service        TEXT NOT NULL,
    status         INTEGER NOT NULL,           -- 0 watching, 1 delivering, 2 done
    enqueued_at    INTEGER NOT NULL,
    next_poll_at   INTEGER NOT NULL,           -- due time; while leased, the lease expiry
    leased         INTEGER NOT NULL DEFAULT 0,
    claim          INTEGER NOT NULL DEFAULT 0, -- fencing token, bumped by every lease
    polls          INTEGER NOT NULL DEFAULT 0,
    misses         INTEGER NOT NULL DEFAULT 0,
    fail_seen      INTEGER NOT NULL DEFAULT 0,
    upstream_state TEXT,
    outcome        TEXT,
    event_id       TEXT,
    finished_at    INTEGER,
    done_at        INTEGER,
    metadata       TEXT,
    webhooks       TEXT                        -- JSON array of per-task URLs
);
CREATE INDEX tasks_due ON tasks (next_poll_at) WHERE status = 0;
CREATE INDEX tasks_done ON tasks (done_at) WHERE status = 2;

CREATE TABLE events (
    id         TEXT PRIMARY KEY,
    task_id    TEXT NOT NULL,
    type       TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    event_id        TEXT NOT NULL,
    task_id         TEXT NOT NULL,
    webhook         TEXT NOT NULL,             -- configured name, or the per-task URL
    url             TEXT NOT NULL,
    state           INTEGER NOT NULL,          -- 0 pending, 1 delivered, 2 failed, 3 gone
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    leased          INTEGER NOT NULL DEFAULT 0,
    claim           INTEGER NOT NULL DEFAULT 0,
    last_status     INTEGER,
    last_error      TEXT,
    task_enqueued_at INTEGER NOT NULL,         -- for enqueue-to-delivered latency
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 0;
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX deliveries_settled ON deliveries (state, updated_at) WHERE state <> 0;

CREATE TABLE probe (at INTEGER);
