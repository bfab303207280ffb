-- The reaper finds running steps through steps_in_flight (status queued or running); a
-- separate index on lease_expires_at only cost every lease renewal an index update, and
-- with few running steps in its statistics the planner sometimes chose it over the primary
-- key for single-step updates.
DROP INDEX IF EXISTS offboard.steps_lease_expiry;
