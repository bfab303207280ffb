-- An experiment, not a migration of the product: main's code with the enqueue rules of
-- ced7f6e only (issue 12). It replaces offboard.enqueue_verdict with the rules ced7f6e
-- judged — the idempotency key, the actor, the user's status, the user's active run, each
-- target's status and whether an active run deactivates it — in main's form, and drops
-- what the later rules added: the request's user locks (and with them the PL/pgSQL body
-- and its settings: the function is plain SQL, inlined into the enqueue statement), the
-- transfer-target probe and the GIN entry each run writes for it (runs_active_targets),
-- and the approval policy's probe. So `bench enqueue` of such a build measures the
-- redesign on ced7f6e's workload.
--
-- Never ship it: without the locks two requests can make one user both leaving and a
-- transfer target, and without the function's settings the rules are planned as the
-- statistics of the moment say ((c) and (d) of `bench enqueue` fell to 0.17-0.30 of the
-- raw write, against main's 0.50-0.62; lab/RESULTS.md, 2026-12-05).
--
-- To build it, on a scratch checkout (sqlx::migrate! embeds migrations/ at build time):
--   cp lab/experiments/enqueue_with_ced7f6e_rules.sql migrations/20991231000001_experiment.sql
--   cargo build --release --workspace
--   target/release/offboard-lab bench enqueue
DROP INDEX offboard.runs_active_targets;
CREATE OR REPLACE FUNCTION offboard.enqueue_verdict(
        company_id bigint, actor_user_id bigint, user_id bigint, idempotency_key text,
        required_status text, leaves boolean, target_ids bigint[], action text,
        take_locks boolean)
    RETURNS TABLE (key_run_id uuid, key_hash text, user_role text, user_status text,
                   active_run uuid, transfer_target_of uuid, refusal text,
                   bad_target_ord bigint, bad_target_id bigint, bad_target_status text,
                   bad_target_problem text, approval_ttl_hours integer)
    LANGUAGE sql STABLE
AS $$
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
                   AS active_run
        FROM (SELECT 1) AS one
        LEFT JOIN crm.users s
               ON s.id = enqueue_verdict.user_id AND s.company_id = enqueue_verdict.company_id
        LEFT JOIN offboard.idempotency_keys k
               ON k.company_id = enqueue_verdict.company_id
              AND k.key = enqueue_verdict.idempotency_key)
    SELECT subject.key_run_id, subject.key_hash, subject.user_role, subject.user_status,
           subject.active_run, NULL::uuid,
           CASE WHEN subject.key_run_id IS NOT NULL THEN 'replay'
                WHEN enqueue_verdict.actor_user_id = enqueue_verdict.user_id THEN 'self_offboarding'
                WHEN NOT subject.actor_permitted THEN 'actor_not_permitted'
                WHEN subject.user_status IS NULL THEN 'user_not_found'
                WHEN subject.user_status = 'deleted' THEN 'user_deleted'
                WHEN subject.user_status <> enqueue_verdict.required_status THEN 'user_not_in_status'
                WHEN subject.active_run IS NOT NULL THEN 'active_run_exists'
           END,
           bad.ord, bad.id, bad.status, bad.problem, NULL::integer
    FROM subject
    LEFT JOIN LATERAL (
        SELECT t.ord, t.id, t.status, t.problem
        FROM offboard.target_states(enqueue_verdict.company_id, enqueue_verdict.user_id,
                                    enqueue_verdict.target_ids) t
        WHERE t.problem IS NOT NULL ORDER BY t.ord LIMIT 1) bad ON true
$$;
