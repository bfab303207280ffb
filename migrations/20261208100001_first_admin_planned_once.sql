-- Issue 17: the search for a company's first admin who stays (who receives a leaving
-- user's shared dashboards and LeadBooster settings) is planned once per connection. It
-- was sent unprepared, so PostgreSQL planned it on every call: a prepared copy kept the
-- plan it made while the ledger was empty, which read `runs` whole for each candidate (a
-- thousand buffers a call in `bench layoff`). Planning every call cost 0.37 ms a call, two
-- calls a run (transfer_dashboards, hand_over_leadbooster): 2.2 s of the 10 s PostgreSQL
-- spent planning in one `bench layoff`
-- (pg_stat_statements with track_planning). Here the plan is made once per connection,
-- generic, with sequential scans off while it is made and run, so it probes each
-- candidate's runs by key whatever the statistics say.
--
-- The active statuses are the list of `active_run_statuses_sql!` (src/domain/run_status.rs);
-- a test compares the two.
CREATE FUNCTION offboard.first_admin(company bigint, excluding bigint) RETURNS bigint
    LANGUAGE plpgsql VOLATILE
    SET enable_seqscan = off
    SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    admin bigint;
BEGIN
    -- OFFSET 0 keeps the check a subquery run per candidate: as a join, PostgreSQL read
    -- every active run of the company to rule out the first admin.
    SELECT u.id INTO admin FROM crm.users u
    WHERE u.company_id = first_admin.company AND u.role = 'admin' AND u.status = 'active'
      AND u.id <> first_admin.excluding
      AND NOT EXISTS (
          SELECT 1 FROM offboard.runs r
          WHERE r.company_id = u.company_id AND r.user_id = u.id
            AND r.action IN ('deactivate', 'deactivate_and_delete')
            AND r.status IN ('scheduled', 'awaiting_approval', 'queued', 'running', 'canceling', 'failed')
          OFFSET 0)
    ORDER BY u.id LIMIT 1
    FOR SHARE OF u;
    RETURN admin;
END $$;
