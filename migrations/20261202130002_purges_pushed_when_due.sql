-- A purge lives only in the ledger until it is due; then the dispatcher pushes it to Redis
-- in bounded batches and records when (`pushed_at`). A purge pushed but still scheduled a
-- while later (Redis flushed, restarted) is pushed again; firing locks the row and checks
-- its status, so a second task finds nothing to do.
ALTER TABLE offboard.scheduled_purges ADD COLUMN pushed_at timestamptz;
