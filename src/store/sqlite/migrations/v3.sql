-- Schema version 3.
--
-- The attempt log: one row per attempt whose report landed (a stale
-- report logs nothing), kept until the longest retention (the dead-letter
-- TTL) has passed, whatever happens to its delivery. A task's page reads it
-- by event; the activity view and the purge read it by time.
CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY,
    delivery_id INTEGER NOT NULL,
    event_id    TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    webhook     TEXT NOT NULL,        -- the delivery's stored name (configured name, or redacted URL)
    attempt     INTEGER NOT NULL,     -- 1-based, counted since the last replay
    at          INTEGER NOT NULL,
    status      INTEGER,
    latency_ms  INTEGER,
    error       TEXT,
    answer      TEXT,                 -- the first KiB of the receiver's answer
    verdict     TEXT NOT NULL         -- delivered, retry, failed, gone, webhook_removed
);
CREATE INDEX attempts_event ON attempts (event_id);
CREATE INDEX attempts_at ON attempts (at);

-- Learned task durations: one histogram per service (see store::durations).
CREATE TABLE durations (
    service    TEXT PRIMARY KEY,
    observed   INTEGER NOT NULL,      -- durations taken, ever
    buckets    TEXT NOT NULL,         -- JSON array of 64 counts
    updated_at INTEGER NOT NULL
);
