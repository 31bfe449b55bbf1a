-- Schema version 4: a callback's hint about a task whose poll is in flight
-- is remembered, and applied when that poll's round is recorded (the task
-- is then due at once, ahead of the others), instead of being dropped.
ALTER TABLE tasks ADD COLUMN hinted boolean NOT NULL DEFAULT false;
