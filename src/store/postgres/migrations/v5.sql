-- Schema version 5. The pacing's demand count (every 2 s) reads the watched
-- tasks already polled through an index of their own, and new tasks
-- through tasks_due up to the horizon, instead of every watched row (at a
-- million watched tasks a count took about 0.1 s of CPU). The index holds
-- only the running tasks: a task enters at its first poll and leaves when
-- it finishes.
CREATE INDEX tasks_polled ON tasks (service) WHERE status = 0 AND polls > 0;

-- How many hints a task has taken: a task is hurried at most
-- MAX_HINTS_PER_TASK times while it is watched, so naming it in callback
-- after callback cannot keep it at the head of the queue.
ALTER TABLE tasks ADD COLUMN hints integer NOT NULL DEFAULT 0;
