-- Schema version 1 of the PostgreSQL store: the tables of SQLite's schema
-- version 2, for several daemons sharing one queue. Times are unix
-- milliseconds that callers pass in; no statement reads the server's clock.
--
-- Every claim rewrites an indexed column (the due time), so no claim is a
-- HOT update and every index on a hot table costs a write per claim: the
-- indexes below are the due predicates and what purge, expiry and lookups
-- need, nothing more. The hot tables vacuum early (2% dead rows instead of
-- the default 20%).

-- Task claim numbers: one sequence that only grows, so a task deleted and
-- enqueued again never sees a claim number its earlier life had.
CREATE SEQUENCE task_claims AS bigint;

-- Leadership terms: only grow, across resignations and across the loss of
-- the (unlogged) leader row in a server crash.
CREATE SEQUENCE leader_terms AS bigint;

CREATE TABLE tasks (
    id             text PRIMARY KEY,
    service        text NOT NULL,
    status         smallint NOT NULL,          -- 0 watching, 1 delivering, 2 done
    enqueued_at    bigint NOT NULL,
    next_poll_at   bigint NOT NULL,            -- due time; while leased, the lease expiry
    leased         boolean NOT NULL DEFAULT false,
    claim          bigint NOT NULL DEFAULT 0,  -- fencing token, from task_claims at every lease
    polls          integer NOT NULL DEFAULT 0,
    misses         integer NOT NULL DEFAULT 0,
    fail_seen      integer NOT NULL DEFAULT 0,
    upstream_state text,
    outcome        text,
    event_id       text,
    finished_at    bigint,
    done_at        bigint,
    metadata       text,                       -- the enqueue metadata, JSON text as given
    webhooks       text                        -- JSON array of per-task URLs
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);
-- Due tasks, in due order (claims, the next due time).
CREATE INDEX tasks_due ON tasks (next_poll_at) WHERE status = 0;
-- Tasks past poll.task_ttl, whatever their next poll (expiry claims).
CREATE INDEX tasks_age ON tasks (enqueued_at) WHERE status = 0;
-- Done tasks past their retention (purge).
CREATE INDEX tasks_done ON tasks (done_at) WHERE status = 2;

CREATE TABLE events (
    id         text PRIMARY KEY,
    task_id    text NOT NULL,
    type       text NOT NULL,
    body       text NOT NULL,
    created_at bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.05);

CREATE TABLE deliveries (
    -- Never reused: a late report about a deleted delivery cannot settle a new one.
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         text NOT NULL,
    task_id          text NOT NULL,
    webhook          text NOT NULL,            -- configured name, or the per-task URL (redacted)
    kind             smallint NOT NULL,        -- 0 configured webhook, 1 per-task URL
    url              text NOT NULL,            -- per-task: where to send; configured: the URL when created
    state            smallint NOT NULL,        -- 0 pending, 1 delivered, 2 failed, 3 gone, 4 webhook removed
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  bigint NOT NULL,          -- due time; while leased, the lease expiry
    leased           boolean NOT NULL DEFAULT false,
    claim            bigint NOT NULL DEFAULT 0, -- fencing token, bumped by every lease
    last_status      integer,
    last_error       text,
    task_enqueued_at bigint NOT NULL,          -- for enqueue-to-delivered latency
    created_at       bigint NOT NULL,
    updated_at       bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.05);
-- Due deliveries, in due order then ID (claims read it in that order and
-- stop at their limit; the next due time).
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, id) WHERE state = 0;
-- Leased deliveries per webhook: the claim counts them to hold every
-- webhook to its cap across instances. Only leased rows enter it.
CREATE INDEX deliveries_leased ON deliveries (webhook) WHERE state = 0 AND leased;
-- An event's deliveries (settling a task, dropping an event, the task view).
CREATE INDEX deliveries_event ON deliveries (event_id);
-- Dead letters and parked deliveries (their TTL, replays, resumes).
CREATE INDEX deliveries_dead ON deliveries (updated_at) WHERE state IN (2, 4);

-- Written by the readiness probe.
CREATE TABLE probe (at bigint);

-- Coordination: throwaway by nature, so unlogged (no WAL; emptied if the
-- server crashes, which only costs one heartbeat and one election).
CREATE UNLOGGED TABLE instances (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    started_at   bigint NOT NULL,
    heartbeat_at bigint NOT NULL,
    expires_at   bigint NOT NULL
);

-- One row at most: who leads the periodic work, in which term, until when.
CREATE UNLOGGED TABLE leader (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    instance   text NOT NULL,
    term       bigint NOT NULL,
    elected_at bigint NOT NULL,
    expires_at bigint NOT NULL
);
