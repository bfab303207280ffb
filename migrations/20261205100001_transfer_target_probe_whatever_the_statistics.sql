-- Issue 17: the enqueue's transfer-target rule must probe runs_active_targets whatever
-- the table's statistics say. Its predicate was the one of runs_one_active_per_user, so a
-- plan made while the ledger was empty could read that index whole instead (its
-- predicate implied, no condition on it), and a prepared statement keeps its plan: the
-- probe then read every active run as a layoff wrote them. Now its predicate is the
-- same set of runs said the other way (not in a final status), which the rule states and
-- which implies nothing of runs_one_active_per_user: the only index left for the rule is
-- this one (and the enqueue's transaction turns sequential scans off, see
-- runs::BEGIN_ENQUEUE). The index holds active runs only, so it is rebuilt in moments.
DROP INDEX offboard.runs_active_targets;
CREATE INDEX runs_active_targets ON offboard.runs
    USING gin (jsonb_path_query_array(plan, '$.*.targets[*].user_id') jsonb_path_ops)
    WITH (fastupdate = off)
    WHERE status NOT IN ('succeeded', 'canceled', 'expired', 'rejected');
