-- Issue 17: an enqueue is one round trip. The rules a request about one user must pass
-- (src/ledger/runs/rules.rs names them and maps their verdict) move here, from SQL the
-- service built, so that one call can take the request's user locks and then judge the
-- request with a snapshot taken after the locks: a VOLATILE function's every statement
-- reads with a new snapshot. Before, the locks needed a statement and a transaction of
-- their own (`BEGIN` with its `SET LOCAL`s, the locks, the judging insert, `COMMIT`: four
-- round trips against the raw write's one); the judging insert now calls
-- offboard.enqueue_verdict and commits by itself.
--
-- Every statement here is planned once per connection, generic, with sequential scans
-- off: each table is probed by key (a user, the user's active run, an idempotency key,
-- the runs naming a user as a target), and a plan made while the ledger was empty or small
-- must not read them whole as a layoff writes thousands (see runs::BEGIN_ENQUEUE).
--
-- The active and final statuses are the lists of `active_run_statuses_sql!` and
-- `final_run_statuses_sql!` (src/domain/run_status.rs); a test compares them.

-- The locks two requests take when one would make a user leave and the other name that
-- user as a target: exclusive on the leaving user, shared on each target, in id order.
CREATE FUNCTION offboard.lock_users(user_id bigint, leaving boolean, target_ids bigint[])
    RETURNS void
    LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF NOT leaving AND coalesce(cardinality(target_ids), 0) = 0 THEN
        RETURN;
    END IF;
    PERFORM count(CASE WHEN k.exclusive THEN pg_advisory_xact_lock(k.key)
                       ELSE pg_advisory_xact_lock_shared(k.key) END)
    FROM (SELECT u.id # 72057594037927936 AS key, bool_or(u.exclusive) AS exclusive
          FROM (SELECT lock_users.user_id AS id, lock_users.leaving AS exclusive
                UNION ALL SELECT t, false FROM unnest(lock_users.target_ids) AS t) u
          GROUP BY u.id ORDER BY u.id) k;
END $$;

-- Each of `ids` with its problem, if it has one, in the order given (`ord`, from 1), for
-- a request about `subject` (0 for none): `is_user` (the user being offboarded),
-- `not_in_company`, `inactive`, `leaving` (an active run deactivates them). One index
-- probe per target for "leaving": a company's active runs are many during a layoff.
-- Plain SQL, so PostgreSQL inlines it into the statement that calls it.
CREATE FUNCTION offboard.target_states(company_id bigint, subject bigint, ids bigint[])
    RETURNS TABLE (ord bigint, id bigint, status text, problem text)
    LANGUAGE sql STABLE
AS $$
    SELECT t.ord, t.id, u.status,
           CASE WHEN t.id = target_states.subject THEN 'is_user'
                WHEN u.id IS NULL THEN 'not_in_company'
                WHEN u.status <> 'active' THEN 'inactive'
                WHEN l.leaving IS NOT NULL THEN 'leaving' END
    FROM unnest(target_states.ids) WITH ORDINALITY AS t(id, ord)
    LEFT JOIN crm.users u ON u.id = t.id AND u.company_id = target_states.company_id
    LEFT JOIN LATERAL (
        SELECT 1 AS leaving FROM offboard.runs r
        WHERE r.company_id = u.company_id AND r.user_id = u.id
          AND r.status IN ('scheduled', 'awaiting_approval', 'queued', 'running', 'canceling', 'failed')
          AND r.action IN ('deactivate', 'deactivate_and_delete')
        LIMIT 1) l ON true
    WHERE t.id IS NOT NULL
$$;

-- The rules' verdict on a request (src/ledger/runs/rules.rs): the facts, the first rule
-- about the user that refuses it, the first named target with a problem, and the hours an
-- approval of the action would wait under the company's policy (NULL when the policy asks
-- for none). With `take_locks`, the request's user locks (offboard.lock_users) are taken
-- first, and the verdict is read after them.
CREATE FUNCTION offboard.enqueue_verdict(
        company_id bigint, actor_user_id bigint, user_id bigint, idempotency_key text,
        required_status text, leaves boolean, target_ids bigint[], action text,
        take_locks boolean)
    RETURNS TABLE (key_run_id uuid, key_hash text, user_role text, user_status text,
                   active_run uuid, transfer_target_of uuid, refusal text,
                   bad_target_ord bigint, bad_target_id bigint, bad_target_status text,
                   bad_target_problem text, approval_ttl_hours integer)
    LANGUAGE plpgsql VOLATILE
    SET enable_seqscan = off
    SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    IF enqueue_verdict.take_locks THEN
        PERFORM offboard.lock_users(enqueue_verdict.user_id, enqueue_verdict.leaves,
                                    enqueue_verdict.target_ids);
    END IF;
    RETURN QUERY
    WITH subject AS MATERIALIZED (
        SELECT k.run_id AS key_run_id, k.request_hash AS key_hash,
               coalesce((SELECT a.status = 'active' AND a.account_settings_access
                         FROM crm.users a
                         WHERE a.id = enqueue_verdict.actor_user_id
                           AND a.company_id = enqueue_verdict.company_id),
                        false) AS actor_permitted,
               s.role AS user_role, s.status AS user_status,
               (SELECT r.id FROM offboard.runs r
                WHERE r.company_id = enqueue_verdict.company_id
                  AND r.user_id = enqueue_verdict.user_id
                  AND r.status IN ('scheduled', 'awaiting_approval', 'queued', 'running', 'canceling', 'failed'))
                   AS active_run,
               -- An aggregate, not ORDER BY … LIMIT 1 or EXISTS: planned for its first
               -- row, those walked every active run of the company (a layoff's
               -- thousands), evaluating the JSON path of each; aggregated, it probes
               -- runs_active_targets. The company is checked on the few rows the probe
               -- finds (`+ 0`), not read from an index: AND-ed with the company's index
               -- entries, the probe read every run of the company (8,000 runs: 44
               -- buffers a request, against 3). The active runs are named by the final
               -- statuses they are not in: the predicate of runs_active_targets and of no
               -- other index.
               CASE WHEN enqueue_verdict.leaves THEN
                   (SELECT (array_agg(r.id ORDER BY r.created_at))[1]
                    FROM offboard.runs r
                    WHERE r.company_id + 0 = enqueue_verdict.company_id
                      AND r.status NOT IN ('succeeded', 'canceled', 'expired', 'rejected')
                      AND jsonb_path_query_array(r.plan, '$.*.targets[*].user_id')
                          @> jsonb_build_array(enqueue_verdict.user_id)) END
                   AS transfer_target_of,
               (SELECT p.approval_ttl_hours FROM offboard.offboarding_policies p
                WHERE p.company_id = enqueue_verdict.company_id AND p.require_approval
                  AND enqueue_verdict.action IN ('delete', 'deactivate_and_delete'))
                   AS approval_ttl_hours
        FROM (SELECT 1) AS one
        LEFT JOIN crm.users s
               ON s.id = enqueue_verdict.user_id AND s.company_id = enqueue_verdict.company_id
        LEFT JOIN offboard.idempotency_keys k
               ON k.company_id = enqueue_verdict.company_id
              AND k.key = enqueue_verdict.idempotency_key)
    SELECT subject.key_run_id, subject.key_hash, subject.user_role, subject.user_status,
           subject.active_run, subject.transfer_target_of,
           CASE WHEN subject.key_run_id IS NOT NULL THEN 'replay'
                WHEN enqueue_verdict.actor_user_id = enqueue_verdict.user_id THEN 'self_offboarding'
                WHEN NOT subject.actor_permitted THEN 'actor_not_permitted'
                WHEN subject.user_status IS NULL THEN 'user_not_found'
                WHEN subject.user_status = 'deleted' THEN 'user_deleted'
                WHEN subject.user_status <> enqueue_verdict.required_status THEN 'user_not_in_status'
                WHEN subject.active_run IS NOT NULL THEN 'active_run_exists'
                WHEN subject.transfer_target_of IS NOT NULL THEN 'user_is_transfer_target'
           END,
           bad.ord, bad.id, bad.status, bad.problem, subject.approval_ttl_hours
    FROM subject
    LEFT JOIN LATERAL (
        SELECT t.ord, t.id, t.status, t.problem
        FROM offboard.target_states(enqueue_verdict.company_id, enqueue_verdict.user_id,
                                    enqueue_verdict.target_ids) t
        WHERE t.problem IS NOT NULL ORDER BY t.ord LIMIT 1) bad ON true;
END $$;
