-- Issue 12: what an enqueue costs PostgreSQL, measured statement by statement against the
-- build before the redesign (ced7f6e). pgbench, one client, each build's enqueue statement
-- with its rules on a company of 300,000 users, `pg_stat_statements` executor time a call
-- (lab/RESULTS.md, 2026-12-04 16:00–17:00 UTC): the raw write 130 µs against ced7f6e's 108,
-- the whole enqueue 245–270 µs against 131–152. Two parts of that are taken back here.
--
-- 1. steps_company_finished held every step from its insert: a run's 15 steps entered the
--    index under one key (company, finished_at NULL, status) and each status change of an
--    unfinished step (ready, queued, running) entered it again. Those entries answered one
--    read: the unfinished steps of a company in `/v1/stats` for a company-scoped token. The
--    index now holds finished steps only; that read counts the unfinished ones through the
--    company's active runs (src/api/dashboard.rs). The raw write: 130 → 116 µs.
CREATE INDEX steps_company_finished_only ON offboard.steps (company_id, finished_at, status)
    WHERE finished_at IS NOT NULL;
DROP INDEX offboard.steps_company_finished;
ALTER INDEX offboard.steps_company_finished_only RENAME TO steps_company_finished;

-- 2. The request's user locks went through a query that grouped and sorted the ids, even
--    for the common request: a leaving user and one target. That request now takes its two
--    locks directly, in the same order (by id) and with the same keys as every other:
--    the verdict with its locks 65 → 56 µs a call.
CREATE OR REPLACE FUNCTION offboard.lock_users(user_id bigint, leaving boolean, target_ids bigint[])
    RETURNS void
    LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF NOT leaving AND coalesce(cardinality(target_ids), 0) = 0 THEN
        RETURN;
    END IF;
    IF leaving AND cardinality(target_ids) = 1 AND target_ids[1] IS DISTINCT FROM user_id
       AND target_ids[1] IS NOT NULL THEN
        IF lock_users.user_id < target_ids[1] THEN
            PERFORM pg_advisory_xact_lock(lock_users.user_id # 72057594037927936);
            PERFORM pg_advisory_xact_lock_shared(target_ids[1] # 72057594037927936);
        ELSE
            PERFORM pg_advisory_xact_lock_shared(target_ids[1] # 72057594037927936);
            PERFORM pg_advisory_xact_lock(lock_users.user_id # 72057594037927936);
        END IF;
        RETURN;
    END IF;
    PERFORM count(CASE WHEN k.exclusive THEN pg_advisory_xact_lock(k.key)
                       ELSE pg_advisory_xact_lock_shared(k.key) END)
    FROM (SELECT u.id # 72057594037927936 AS key, bool_or(u.exclusive) AS exclusive
          FROM (SELECT lock_users.user_id AS id, lock_users.leaving AS exclusive
                UNION ALL SELECT t, false FROM unnest(lock_users.target_ids) AS t) u
          GROUP BY u.id ORDER BY u.id) k;
END $$;
