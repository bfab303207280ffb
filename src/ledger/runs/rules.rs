//! The rules a request about one user must pass before its run is written. They live once,
//! as SQL, in the ledger's function `offboard.enqueue_verdict` (migration
//! `20261209100001_enqueue_rules_in_one_call.sql`, with `offboard.target_states` for the
//! named targets and `offboard.lock_users` for the request's locks). Both ways a run is
//! enqueued call it: [`insert_if_clear`] writes the run in the statement that judges it,
//! [`judge`] judges it in the caller's transaction (company-wide rules, a replacement
//! user). Each answers which rule refused, if one did, with the facts its message needs;
//! the API only maps that code to its error.
//!
//! The refusals, in the order they are judged: `replay` (the idempotency key already has a
//! run), `self_offboarding`, `actor_not_permitted` (the actor is not an active user of the
//! company with account-settings access), `user_not_found`, `user_deleted`,
//! `user_not_in_status` (not in the status the action needs), `active_run_exists`,
//! `user_is_transfer_target` (the action deactivates or deletes a user an active run is
//! moving items to). Each named target then has its `problem`: `is_user` (the user being
//! offboarded), `not_in_company`, `inactive`, `leaving` (an active run deactivates them).
//!
//! The function takes the request's user locks before it reads anything: exclusive on a
//! user the action takes away, shared on each target, so that two requests that would make
//! one user both leaving and a target of an active run serialize, and the second judges
//! what the first wrote. Its every statement reads with a snapshot of its own (it is
//! `VOLATILE`), taken after the locks; so an enqueue needs no transaction of its own around
//! the locks, and the judging insert commits by itself: one round trip.

use sqlx::{Connection, PgConnection, PgExecutor, Postgres, Transaction};
use uuid::Uuid;

use super::{NewRun, bind_new_run, step_columns};
use crate::domain::{Action, UserRole, UserStatus};

/// How an enqueue's transaction begins when it needs one (the company-wide rules, a
/// batch's chunk): in the same round trip, with sequential scans off for its statements
/// ([`super::insert`] and the company-wide rules' reads). `offboard.enqueue_verdict`, which
/// [`judge`] and [`insert_if_clear`] call, is declared with the same two settings, for the
/// same reason.
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
    sqlx::query_as(
        "SELECT ord, id, status, problem FROM offboard.target_states($1, $2, $3) ORDER BY ord",
    )
    .bind(company_id)
    .bind(user_id)
    .bind(ids)
    .fetch_all(db)
    .await
}

/// A request as [`judge`] and [`insert_if_clear`] judge it.
#[derive(Debug, Clone)]
pub struct Clearance<'a> {
    pub company_id: i64,
    pub actor_user_id: i64,
    pub user_id: i64,
    pub idempotency_key: Option<&'a str>,
    pub action: Action,
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

/// The statement [`judge`] runs: company, actor, user, idempotency key ($1–$4), the named
/// targets ($5), the status the user must be in ($6), whether the action takes the user
/// away ($7) and the action ($8); the request's user locks taken first. Public so that
/// tests can read what it costs.
pub const JUDGE_SQL: &str =
    "SELECT * FROM offboard.enqueue_verdict($1, $2, $3, $4, $6, $7, $5, $8, true)";

/// The rules' verdict on a request, in one round trip, after the request's user locks
/// (held to the end of the caller's transaction). Two requests about one user that both
/// read "no active run" cannot both write one: the unique index on active runs refuses the
/// second at insert.
pub async fn judge(
    conn: &mut PgConnection,
    request: &Clearance<'_>,
) -> Result<RequestVerdict, sqlx::Error> {
    sqlx::query_as(JUDGE_SQL)
        .bind(request.company_id)
        .bind(request.actor_user_id)
        .bind(request.user_id)
        .bind(request.idempotency_key)
        .bind(request.targets)
        .bind(request.user_status)
        .bind(request.leaves)
        .bind(request.action)
        .fetch_one(&mut *conn)
        .await
}

/// What [`insert_if_clear`] did: wrote the run, or judged it with the rules' verdict.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Judged {
    pub written: bool,
    #[sqlx(flatten)]
    pub verdict: RequestVerdict,
}

/// [`super::insert`], in the same one statement as the rules' verdict, which takes the
/// request's user locks first: the run is written when no rule refuses, no target has a
/// problem and no company-wide rule is at stake (an admin being deactivated; the caller
/// routes a reactivation and a replacement elsewhere). An enqueue is so one statement,
/// outside any transaction of the caller's — the same write as [`super::insert`] plus the
/// rules' index probes — and a refusal needs no second one. The company's approval policy
/// comes with the verdict, read with the same settings as the rules.
pub async fn insert_if_clear(
    conn: &mut PgConnection,
    run: &NewRun<'_>,
    idempotency: Option<(&str, &str)>,
    clearance: &Clearance<'_>,
) -> Result<Judged, sqlx::Error> {
    let (names, deps) = step_columns(run);
    bind_new_run(
        insert_run_sql!(
            "verdict AS MATERIALIZED (
                 SELECT * FROM offboard.enqueue_verdict($2, $7, $3, $13, $17, $20, $19, $4, true)),
             clear AS (
                 SELECT 1 FROM verdict
                 WHERE refusal IS NULL AND bad_target_ord IS NULL
                   AND NOT ($18 AND user_role = 'admin')),",
            "SELECT approval_ttl_hours AS ttl FROM verdict WHERE approval_ttl_hours IS NOT NULL",
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
    .bind(clearance.targets)
    .bind(clearance.leaves)
    .fetch_one(&mut *conn)
    .await
}

#[cfg(test)]
mod tests {
    /// The function's active and final statuses are the ledger's lists, as every other rule
    /// states them.
    #[test]
    fn the_rules_statuses_are_the_ledger_s() {
        let migration =
            include_str!("../../../migrations/20261209100001_enqueue_rules_in_one_call.sql");
        let active = concat!("r.status IN ", crate::active_run_statuses_sql!());
        assert_eq!(migration.matches(active).count(), 2, "the user's run and a leaving target");
        assert!(migration.contains(concat!("r.status NOT IN ", crate::final_run_statuses_sql!())));
    }
}
