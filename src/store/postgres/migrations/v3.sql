-- Schema version 3: leases name the instance holding them, so the leases of
-- a daemon that died (its heartbeat lapsed) are given back at once instead
-- of when they run out; they would otherwise hold their webhook's
-- concurrency slots and their tasks for the whole lease.
ALTER TABLE tasks ADD COLUMN leased_by text;
ALTER TABLE deliveries ADD COLUMN leased_by text;
-- Leased rows only: a handful, however large the tables.
CREATE INDEX tasks_leased_by ON tasks (leased_by) WHERE status = 0 AND leased;
CREATE INDEX deliveries_leased_by ON deliveries (leased_by) WHERE state = 0 AND leased;
