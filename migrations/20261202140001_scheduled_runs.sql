-- Scheduled runs: a run asked for with `effective_at` is written `scheduled`, its steps
-- pending (none ready), and started by the sweeper once `effective_at` has passed. The row
-- is the promise: nothing about it lives in Redis, so a flushed Redis or workers down at
-- that moment only delay it until the next sweep.
ALTER TABLE offboard.runs ADD COLUMN effective_at timestamptz;
CREATE INDEX runs_scheduled_due ON offboard.runs (effective_at) WHERE status = 'scheduled';

-- A deactivated user is deleted this many days after the deactivation finished, by a
-- scheduled delete run written when the deactivation succeeds. NULL: never.
ALTER TABLE offboard.offboarding_policies
    ADD COLUMN delete_after_days integer CHECK (delete_after_days BETWEEN 1 AND 365);
