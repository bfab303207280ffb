//! The rules a request about one user must pass before its run is written — the one place
//! they live, as SQL. Both ways a run is enqueued read them: [`insert_if_clear`] writes the
//! run in the statement that judges it, [`judge`] judges it for the caller's
//! transaction (company-wide rules, a replacement user, many targets). Each answers which
//! rule refused, if one did, with the facts its message needs; the API only maps that
//! code to its error.
//!
//! The refusals, in the order they are judged: `replay` (the idempotency key already has a
//! run), `self_offboarding`, `actor_not_permitted` (the actor is not an active user of the
//! company with account-settings access), `user_not_found`, `user_deleted`,
//! `user_not_in_status` (not in the status the action needs), `active_run_exists`,
//! `user_is_transfer_target` (the action deactivates or deletes a user an active run is
//! moving items to). Each named target then has its `problem`: `is_user` (the user being
//! offboarded), `not_in_company`, `inactive`, `leaving` (an active run deactivates them).

use sqlx::{Connection, PgConnection, PgExecutor, Postgres, Transaction};
use uuid::Uuid;

use super::{NewRun, bind_new_run, step_columns};
use crate::domain::{UserRole, UserStatus};

/// Each target of the array `$ids` with its problem, if it has one (see the module doc),
/// in the order given (`ord`, from 1): one index probe per target for "leaving" (a
/// company's active runs are many during a layoff).
macro_rules! target_states_sql {
    (company = $c:literal, user = $u:literal, ids = $ids:literal) => {
        concat!(
            "SELECT t.ord, t.id, u.status,
                    CASE WHEN t.id = ",
            $u,
            "::bigint THEN 'is_user'
                         WHEN u.id IS NULL THEN 'not_in_company'
                         WHEN u.status <> 'active' THEN 'inactive'
                         WHEN l.leaving IS NOT NULL THEN 'leaving' END AS problem
             FROM unnest(",
            $ids,
            ") WITH ORDINALITY AS t(id, ord)
             LEFT JOIN crm.users u ON u.id = t.id AND u.company_id = ",
            $c,
            "
             LEFT JOIN LATERAL (
                 SELECT 1 AS leaving FROM offboard.runs r
                 WHERE r.company_id = u.company_id AND r.user_id = u.id
                   AND r.status IN ",
            crate::active_run_statuses_sql!(),
            "
                   AND r.action IN ('deactivate', 'deactivate_and_delete')
                 LIMIT 1) l ON true
             WHERE t.id IS NOT NULL"
        )
    };
}

/// The CTEs `targets`, `subject` (the facts) and `verdict` (the facts, the first refusal
/// and the first target with a problem); the request's values are the
/// numbered parameters given.
macro_rules! request_rules_sql {
    (company = $c:literal, actor = $a:literal, user = $u:literal, key = $k:literal,
     user_status = $s:literal, leaves = $l:literal, targets = $t:literal) => {
        concat!(
            "targets AS (",
            target_states_sql!(company = $c, user = $u, ids = $t),
            "),
             subject AS MATERIALIZED (
                 SELECT k.run_id AS key_run_id, k.request_hash AS key_hash,
                        coalesce((SELECT a.status = 'active' AND a.account_settings_access
                                  FROM crm.users a WHERE a.id = ", $a, " AND a.company_id = ", $c, "),
                                 false) AS actor_permitted,
                        s.role AS user_role, s.status AS user_status,
                        (SELECT r.id FROM offboard.runs r
                         WHERE r.company_id = ", $c, " AND r.user_id = ", $u, "
                           AND r.status IN ",
            crate::active_run_statuses_sql!(),
            ") AS active_run,
                        -- An aggregate, not ORDER BY … LIMIT 1 or EXISTS: planned for
                        -- its first row, those walked every active run of the company
                        -- (a layoff's thousands), evaluating the JSON path of each;
                        -- aggregated, it probes runs_active_targets. The company is
                        -- checked on the few rows the probe finds (`+ 0`), not read from
                        -- an index: AND-ed with the company's index entries, the probe
                        -- read every run of the company (8,000 runs: 44 buffers, 0.25 ms
                        -- a request, against 3 buffers). The active runs are named
                        -- by the final statuses they are not in: the predicate of
                        -- runs_active_targets and of no other index, so that no plan,
                        -- however empty the ledger was when it was made, reads
                        -- runs_one_active_per_user whole instead (see BEGIN_ENQUEUE).
                        CASE WHEN ", $l, "::bool THEN
                            (SELECT (array_agg(r.id ORDER BY r.created_at))[1]
                             FROM offboard.runs r
                             WHERE r.company_id + 0 = ", $c, " AND r.status NOT IN ",
            crate::final_run_statuses_sql!(),
            "
                               AND jsonb_path_query_array(r.plan, '$.*.targets[*].user_id')
                                   @> jsonb_build_array(", $u, "::bigint)) END
                            AS transfer_target_of
                 FROM (SELECT 1) AS one
                 LEFT JOIN crm.users s ON s.id = ", $u, " AND s.company_id = ", $c, "
                 LEFT JOIN offboard.idempotency_keys k ON k.company_id = ", $c, " AND k.key = ", $k, "),
             verdict AS (
                 SELECT subject.*,
                        CASE WHEN key_run_id IS NOT NULL THEN 'replay'
                             WHEN ", $a, "::bigint = ", $u, "::bigint THEN 'self_offboarding'
                             WHEN NOT actor_permitted THEN 'actor_not_permitted'
                             WHEN user_status IS NULL THEN 'user_not_found'
                             WHEN user_status = 'deleted' THEN 'user_deleted'
                             WHEN user_status <> ", $s, "::text THEN 'user_not_in_status'
                             WHEN active_run IS NOT NULL THEN 'active_run_exists'
                             WHEN transfer_target_of IS NOT NULL THEN 'user_is_transfer_target'
                        END AS refusal,
                        bad.ord AS bad_target_ord, bad.id AS bad_target_id,
                        bad.status AS bad_target_status, bad.problem AS bad_target_problem
                 FROM subject
                 LEFT JOIN LATERAL (SELECT ord, id, status, problem FROM targets
                                    WHERE problem IS NOT NULL ORDER BY ord LIMIT 1) bad ON true)"
        )
    };
}

/// How an enqueue's transaction begins: in the same round trip, with sequential scans off
/// for its statements ([`judge`], [`insert_if_clear`], [`super::insert`]).
///
/// Every table they read they probe by key (a user, a company's active run for a user, an
/// idempotency key, the runs naming a user as a target), so an index is right at any size.
/// But PostgreSQL plans a prepared statement once for its connection after five calls
/// (the generic plan) and keeps that plan until the table's statistics change; made while
/// the ledger is empty or small (a new deployment, a ledger just vacuumed, autovacuum not
/// yet round), it scanned `runs` and `idempotency_keys` whole, evaluating the JSON path of
/// every run — and went on doing so as a layoff wrote thousands. Measured with
/// `pg_stat_statements` (`offboard-lab bench enqueue` on a server that loads it): the
/// enqueue statement took 0.9 ms and 117 buffers a request on the first load, then 5.7 ms
/// and 409 buffers on the next load on the same connections, and 18.3 ms on the layoff
/// shape, where every run is the one company's.
///
/// And that generic plan is the one used from the first call (`plan_cache_mode`): the five
/// custom plans PostgreSQL makes first on each connection cost 3.4 ms each for the judging
/// insert (`pg_stat_statements` with `track_planning`, `bench layoff`: 93 plans, 314 ms),
/// and they buy nothing — the plan it then keeps is the generic one.
pub const BEGIN_ENQUEUE: &str =
    "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL plan_cache_mode = force_generic_plan";

/// Begins an enqueue's transaction on `conn` (see [`BEGIN_ENQUEUE`]).
pub async fn begin_enqueue(
    conn: &mut PgConnection,
) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
    conn.begin_with(BEGIN_ENQUEUE).await
}

/// What the rules say of a request (see the module doc).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestVerdict {
    /// The run and request hash already recorded under the request's idempotency key.
    pub key_run_id: Option<Uuid>,
    pub key_hash: Option<String>,
    /// The user's role and status; `None` if not a user of the company.
    pub user_role: Option<UserRole>,
    pub user_status: Option<UserStatus>,
    /// The user's active run (see [`crate::domain::run_status::ACTIVE_RUN_STATUSES`]).
    pub active_run: Option<Uuid>,
    /// When the action deactivates or deletes the user: the oldest active run that names
    /// them as a target.
    pub transfer_target_of: Option<Uuid>,
    /// The first rule about the user that refuses the request.
    pub refusal: Option<String>,
    /// The first named target with a problem, by its position among the targets (from 1).
    pub bad_target_ord: Option<i64>,
    pub bad_target_id: Option<i64>,
    pub bad_target_status: Option<UserStatus>,
    pub bad_target_problem: Option<String>,
}

impl RequestVerdict {
    /// The first named target with a problem.
    pub fn bad_target(&self) -> Option<TargetState> {
        Some(TargetState {
            ord: self.bad_target_ord?,
            id: self.bad_target_id?,
            status: self.bad_target_status,
            problem: self.bad_target_problem.clone(),
        })
    }

    pub fn user_is_admin(&self) -> bool {
        self.user_role == Some(UserRole::Admin)
    }
}

/// A user named as a transfer target, as the target rule judges it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TargetState {
    /// Its position among the targets asked about, from 1.
    pub ord: i64,
    pub id: i64,
    /// `None` if not a user of the company.
    pub status: Option<UserStatus>,
    /// `is_user`, `not_in_company`, `inactive` or `leaving`; `None` if it may receive items.
    pub problem: Option<String>,
}

/// Each of `ids`, in order, as the target rule judges it for a request about `user_id`
/// (0 for none).
pub async fn target_states<'e>(
    db: impl PgExecutor<'e>,
    company_id: i64,
    user_id: i64,
    ids: &[i64],
) -> Result<Vec<TargetState>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(concat!(
        target_states_sql!(company = "$1", user = "$2", ids = "$3::bigint[]"),
        " ORDER BY t.ord"
    ))
    .bind(company_id)
    .bind(user_id)
    .bind(ids)
    .fetch_all(db)
    .await
}

/// The targets the rules judge in their one statement; a plan naming more users costs
/// [`judge`] a second statement ([`target_states`]).
pub const TARGETS_JUDGED_WITH_REQUEST: usize = 4;

/// A request as [`judge`] and [`insert_if_clear`] judge it.
#[derive(Debug, Clone)]
pub struct Clearance<'a> {
    pub company_id: i64,
    pub actor_user_id: i64,
    pub user_id: i64,
    pub idempotency_key: Option<&'a str>,
    /// The status the action needs the user in.
    pub user_status: UserStatus,
    /// The action deactivates the user: an admin's would put the last-admin rule at stake.
    pub deactivates: bool,
    /// The action deactivates or deletes the user: an active run must not name them as a
    /// target.
    pub leaves: bool,
    /// The users named as targets, in the plan's order.
    pub targets: &'a [i64],
}

/// The statement [`judge`] runs: company, actor, user, idempotency key ($1–$4), up to four
/// targets ($5–$8, absent ones NULL), the status the user must be in ($9) and whether the
/// action takes the user away ($10). Public so that tests can read its plan.
pub const JUDGE_SQL: &str = concat!(
    "WITH ",
    request_rules_sql!(
        company = "$1",
        actor = "$2",
        user = "$3",
        key = "$4",
        user_status = "$9",
        leaves = "$10",
        targets = "ARRAY[$5, $6, $7, $8]::bigint[]"
    ),
    " SELECT * FROM verdict"
);

/// The rules' verdict on a request, in one round trip and without a lock (targets past
/// [`TARGETS_JUDGED_WITH_REQUEST`] in a second): two requests about one user that both
/// read "no active run" cannot both write one, because the unique index on active runs
/// refuses the second at insert.
///
/// The targets travel as a fixed number of parameters (absent ones NULL), so the plan does
/// not depend on how many there are and PostgreSQL keeps one generic plan per connection.
/// Passed as one array, the custom plan for each array length looked cheaper than the
/// generic one, and the statement was planned again on every call: 0.55 ms of planning
/// for 0.15 ms of execution.
pub async fn judge(
    conn: &mut PgConnection,
    request: &Clearance<'_>,
) -> Result<RequestVerdict, sqlx::Error> {
    let inline = request.targets.len() <= TARGETS_JUDGED_WITH_REQUEST;
    let target = |i: usize| request.targets.get(i).filter(|_| inline);
    let mut verdict: RequestVerdict = sqlx::query_as(JUDGE_SQL)
        .bind(request.company_id)
        .bind(request.actor_user_id)
        .bind(request.user_id)
        .bind(request.idempotency_key)
        .bind(target(0))
        .bind(target(1))
        .bind(target(2))
        .bind(target(3))
        .bind(request.user_status)
        .bind(request.leaves)
        .fetch_one(&mut *conn)
        .await?;
    if !inline {
        let states =
            target_states(&mut *conn, request.company_id, request.user_id, request.targets).await?;
        let bad = states.into_iter().find(|t| t.problem.is_some());
        verdict.bad_target_ord = bad.as_ref().map(|t| t.ord);
        verdict.bad_target_id = bad.as_ref().map(|t| t.id);
        verdict.bad_target_status = bad.as_ref().and_then(|t| t.status);
        verdict.bad_target_problem = bad.and_then(|t| t.problem);
    }
    Ok(verdict)
}

/// What [`insert_if_clear`] did: wrote the run, or judged it with the rules' verdict.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Judged {
    pub written: bool,
    #[sqlx(flatten)]
    pub verdict: RequestVerdict,
}

/// [`super::insert`], in the same one statement as the rules' verdict: the run is written
/// when no rule refuses, no target has a problem and no company-wide rule is at stake (an
/// admin being deactivated; the caller routes a reactivation, a replacement and more than
/// [`TARGETS_JUDGED_WITH_REQUEST`] targets elsewhere). An enqueue is so one statement, the
/// same write as [`super::insert`] plus its index probes, and a refusal needs no second one.
pub async fn insert_if_clear(
    conn: &mut PgConnection,
    run: &NewRun<'_>,
    idempotency: Option<(&str, &str)>,
    clearance: &Clearance<'_>,
) -> Result<Judged, sqlx::Error> {
    assert!(
        clearance.targets.len() <= TARGETS_JUDGED_WITH_REQUEST,
        "at most four targets are judged here"
    );
    let (names, deps) = step_columns(run);
    let target = |i: usize| clearance.targets.get(i);
    bind_new_run(
        insert_run_sql!(
            concat!(
                request_rules_sql!(
                    company = "$2",
                    actor = "$7",
                    user = "$3",
                    key = "$13",
                    user_status = "$17",
                    leaves = "$23",
                    targets = "ARRAY[$19, $20, $21, $22]::bigint[]"
                ),
                ",
                 clear AS (
                     SELECT 1 FROM verdict
                     WHERE refusal IS NULL AND bad_target_ord IS NULL
                       AND NOT ($18 AND user_role = 'admin')),"
            ),
            "FROM clear",
            ", verdict.* FROM verdict"
        ),
        run,
        &names,
        &deps,
        idempotency,
    )
    .bind(clearance.user_status)
    .bind(clearance.deactivates)
    .bind(target(0))
    .bind(target(1))
    .bind(target(2))
    .bind(target(3))
    .bind(clearance.leaves)
    .fetch_one(&mut *conn)
    .await
}
