-- Schema version 2: the attempt log, learned durations, and task IDs in
-- byte order.

-- Task IDs compare byte by byte (code point order), as in SQLite: an ID
-- prefix is then a range on the primary key (`id >= prefix AND id <
-- next`), whatever the database's collation (under a linguistic one,
-- "a-b" sorts after "a."). Equality is unchanged; the primary key index
-- is rebuilt, the table is not rewritten.
ALTER TABLE tasks ALTER COLUMN id TYPE text COLLATE "C";

-- One row per attempt whose report landed (a stale report logs nothing),
-- kept until the longest retention (the dead-letter TTL) has passed,
-- whatever happens to its delivery. Append-only.
CREATE TABLE attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id bigint NOT NULL,
    event_id    text NOT NULL,
    task_id     text NOT NULL,
    webhook     text NOT NULL,        -- the delivery's stored name (configured name, or redacted URL)
    attempt     integer NOT NULL,     -- 1-based, counted since the last replay
    at          bigint NOT NULL,
    status      integer,
    latency_ms  bigint,
    error       text,
    answer      text,                 -- the first KiB of the receiver's answer
    verdict     text NOT NULL         -- delivered, retry, failed, gone, webhook_removed
);
-- A task's page (its event's attempts).
CREATE INDEX attempts_event ON attempts (event_id);
-- The activity view (a recent window) and the purge (the oldest).
CREATE INDEX attempts_at ON attempts (at);

-- Learned task durations: one histogram per service (see store::durations);
-- merged in one upsert, so instances learning at once add up.
CREATE TABLE durations (
    service    text PRIMARY KEY,
    observed   bigint NOT NULL,       -- durations taken, ever
    buckets    bigint[] NOT NULL,     -- 64 counts
    updated_at bigint NOT NULL
);
