//! Runs: created with all their steps in one transaction, read by the API and operators,
//! finished with a receipt, retried and canceled by operators.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
// Dynamic SQL here only splices the fixed RUN_COLUMNS list and FILTER_SQL.
use sqlx::{AssertSqlSafe, PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::filter::FILTER_SQL;
pub use super::filter::RunFilter;
use crate::{
    domain::{Action, Actor, FiredBy, PurgeStatus, RunEventKind, RunStatus, StepStatus},
    steps::StepSpec,
};

mod operator;
mod receipt;

pub(super) use self::operator::lock_for_operator;
pub use self::{
    operator::{
        Cancellation, OPERATOR_LOCK_TIMEOUT, OperatorRefusal, cancel, cancel_locked,
        finish_canceled_if_idle, retry, retry_locked,
    },
    receipt::{Finished, build_receipt, finish},
};

/// A new run's id: time-ordered (UUIDv7), so the indexes keyed by run id (the runs' primary
/// key, each step's and history entry's run) take new entries at their right edge instead
/// of on a random page each, as random (v4) ids did.
pub fn new_run_id() -> Uuid {
    Uuid::now_v7()
}

/// A run to write, with its steps.
#[derive(Clone)]
pub struct NewRun<'a> {
    pub id: Uuid,
    pub company_id: i64,
    pub user_id: i64,
    pub action: Action,
    pub plan: Value,
    pub params: Value,
    pub actor_user_id: i64,
    pub idempotency_key: Option<&'a str>,
    pub steps: Vec<StepSpec>,
    pub max_attempts: i32,
    /// `queued` or `scheduled`: a scheduled run's steps are all written pending, and
    /// [`crate::ledger::scheduled::start_locked`] readies them. A `delete` or
    /// `deactivate_and_delete` of a company whose policy asks for approval is written
    /// `awaiting_approval` instead, whatever this says ([`crate::ledger::approval`]).
    pub status: RunStatus,
    /// When a scheduled run starts.
    pub effective_at: Option<DateTime<Utc>>,
}

/// Ids and statuses only: the params may hold a redaction's new display name.
impl std::fmt::Debug for NewRun<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewRun")
            .field("id", &self.id)
            .field("company_id", &self.company_id)
            .field("user_id", &self.user_id)
            .field("action", &self.action)
            .field("actor_user_id", &self.actor_user_id)
            .field("steps", &self.steps)
            .field("status", &self.status)
            .field("effective_at", &self.effective_at)
            .finish_non_exhaustive()
    }
}

/// Who asked for a run, in SQL, spelled as [`Actor`] spells it: `service:<started_by>` when
/// a service started it, else `user:<actor_user_id>`. `$params` and `$actor_user_id` are the
/// SQL of the run's parameters and actor (columns or bind parameters).
macro_rules! requested_by_sql {
    ($params:literal, $actor_user_id:literal) => {
        concat!(
            "coalesce('service:' || (",
            $params,
            " ->> 'started_by'), 'user:' || ",
            $actor_user_id,
            ")"
        )
    };
}
pub(crate) use requested_by_sql;

/// The company's approval policy for the run's action, as [`insert_run_sql`] reads it:
/// a row with the hours an approval waits (`ttl`) when the policy asks for one.
macro_rules! approval_policy_sql {
    () => {
        "SELECT approval_ttl_hours AS ttl FROM offboard.offboarding_policies
         WHERE company_id = $2 AND require_approval
           AND $4::text IN ('delete', 'deactivate_and_delete')"
    };
}

/// The statement that writes a run, its steps (those without dependencies ready at once),
/// its first history entry and its idempotency key; `$gate` are CTEs ending in a
/// comma, `$approval` the query of the company's approval policy for the action
/// ([`approval_policy_sql`]'s row), and `$from` the clause the run's row is selected from
/// (nothing is written when it yields no row). It answers `written`, then `$more`
/// (columns and a `FROM`).
macro_rules! insert_run_sql {
    ($gate:expr, $approval:expr, $from:expr, $more:expr) => {
        concat!(
            "WITH ",
            $gate,
            "
             approval AS (",
            $approval,
            "),
             run AS (
                 INSERT INTO offboard.runs
                     (id, company_id, user_id, action, plan, params, actor_user_id, idempotency_key,
                      steps_total, steps_remaining, status, effective_at, approval_expires_at)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $9,
                        CASE WHEN EXISTS (SELECT 1 FROM approval) THEN 'awaiting_approval'
                             ELSE $15 END,
                        $16,
                        greatest(now(), $16::timestamptz)
                            + make_interval(hours => (SELECT ttl FROM approval)) ",
            $from,
            "
                 RETURNING id, status, effective_at),
             planned AS (
                 SELECT name, position,
                        CASE WHEN deps = '' THEN '{}'::text[] ELSE string_to_array(deps, ',') END AS depends_on
                 FROM unnest($10::text[], $11::text[]) WITH ORDINALITY AS x(name, deps, position)),
             steps AS (
                 INSERT INTO offboard.steps
                     (run_id, company_id, name, position, depends_on, deps_remaining, status, max_attempts)
                 SELECT run.id, $2, name, position, depends_on, cardinality(depends_on),
                        CASE WHEN cardinality(depends_on) = 0 AND run.status = 'queued' THEN 'ready'
                             ELSE 'pending' END, $12
                 FROM planned, run),
             history AS (
                 INSERT INTO offboard.run_events (run_id, kind, actor, detail)
                 SELECT id, 'enqueued',
                        ",
            requested_by_sql!("$6::jsonb", "$7"),
            ",
                        CASE WHEN status = 'queued' THEN '{}'::jsonb
                             ELSE jsonb_strip_nulls(jsonb_build_object(
                                 'status', status, 'effective_at', effective_at)) END
                 FROM run),
             key AS (
                 INSERT INTO offboard.idempotency_keys (company_id, key, request_hash, run_id)
                 SELECT $2, $13, $14, id FROM run WHERE $13::text IS NOT NULL)
             SELECT EXISTS (SELECT 1 FROM run) AS written",
            $more
        )
    };
}

/// Binds a [`NewRun`] to the parameters of [`insert_run_sql`].
fn bind_new_run<'q, O>(
    sql: &'q str,
    run: &'q NewRun<'q>,
    names: &'q [&'q str],
    deps: &'q [String],
    idempotency: Option<(&'q str, &'q str)>,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let (key, hash) = idempotency.unzip();
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(run.id)
        .bind(run.company_id)
        .bind(run.user_id)
        .bind(run.action)
        .bind(&run.plan)
        .bind(&run.params)
        .bind(run.actor_user_id)
        .bind(run.idempotency_key)
        .bind(run.steps.len() as i32)
        .bind(names)
        .bind(deps)
        .bind(run.max_attempts)
        .bind(key)
        .bind(hash)
        .bind(run.status)
        .bind(run.effective_at)
}

/// Step names and dependency lists as [`insert_run_sql`] takes them. Step names never
/// contain commas, so each dependency list travels as one string.
fn step_columns<'a>(run: &'a NewRun<'_>) -> (Vec<&'a str>, Vec<String>) {
    let names = run.steps.iter().map(|s| s.name.as_str()).collect();
    let deps = run.steps.iter().map(|s| s.depends_on.join(",")).collect();
    (names, deps)
}

// After the macro it uses.
mod rules;
pub use self::rules::{
    BEGIN_ENQUEUE, Clearance, JUDGE_SQL, Judged, RequestVerdict, TargetState, begin_enqueue,
    insert_if_clear, judge, target_states,
};

/// Writes the run, its steps, the first history entry and the idempotency key, in one
/// statement. Fails with a unique violation on `runs_one_active_per_user` when the user
/// already has an active run, or on `idempotency_keys_pkey` when a concurrent request took
/// the key.
pub async fn insert(
    tx: &mut PgConnection,
    run: &NewRun<'_>,
    idempotency: Option<(&str, &str)>,
) -> Result<(), sqlx::Error> {
    let (names, deps) = step_columns(run);
    bind_new_run::<(bool,)>(
        insert_run_sql!("", approval_policy_sql!(), "", ""),
        run,
        &names,
        &deps,
        idempotency,
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(())
}

pub async fn record_event<'e>(
    db: impl PgExecutor<'e>,
    run_id: Uuid,
    kind: RunEventKind,
    step: Option<&str>,
    actor: Actor,
    detail: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO offboard.run_events (run_id, kind, step, actor, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(run_id)
        .bind(kind)
        .bind(step)
        .bind(actor)
        .bind(detail)
        .execute(db)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub id: Uuid,
    pub company_id: i64,
    pub user_id: i64,
    pub action: Action,
    pub status: RunStatus,
    pub plan: Value,
    pub actor_user_id: i64,
    pub steps_total: i32,
    pub steps_remaining: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub receipt: Option<Value>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// Who asked, as the history names it: `user:<actor_user_id>`, or `service:scim` for a
    /// run an identity provider started (its actor is the company's service actor).
    pub requested_by: Actor,
    /// When a scheduled run starts.
    pub effective_at: Option<DateTime<Utc>>,
    /// Until when a run awaiting approval may be approved.
    pub approval_expires_at: Option<DateTime<Utc>>,
    /// The admin who approved (or rejected) the run.
    pub approver_user_id: Option<i64>,
    /// The batch the run came from.
    pub batch_id: Option<Uuid>,
}

const RUN_COLUMNS: &str = concat!(
    "id, company_id, user_id, action, status, plan, actor_user_id, steps_total, effective_at, \
     approval_expires_at, approver_user_id, batch_id, \
     steps_remaining, created_at, started_at, finished_at, receipt, error_code, error_message, ",
    requested_by_sql!("params", "actor_user_id"),
    " AS requested_by"
);

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StepRow {
    pub name: String,
    pub status: StepStatus,
    pub depends_on: Vec<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub done: i64,
    pub total: Option<i64>,
    pub next_attempt_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<Value>,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
}

/// One entry of a run's history, with who acted ([`Actor`]).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EventRow {
    pub at: DateTime<Utc>,
    pub kind: RunEventKind,
    pub step: Option<String>,
    pub actor: Actor,
    #[schema(value_type = Object)]
    pub detail: Value,
}

/// A private-email purge: `status` scheduled, done or canceled; `fired_by` queue or sweeper.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PurgeRow {
    pub id: i64,
    pub due_at: DateTime<Utc>,
    pub status: PurgeStatus,
    pub fired_at: Option<DateTime<Utc>>,
    pub fired_by: Option<FiredBy>,
    pub emails_deleted: Option<i32>,
}

/// One run as the API shows it.
#[derive(Debug, Clone)]
pub struct RunDetail {
    pub run: RunRow,
    pub steps: Vec<StepRow>,
    pub events: Vec<EventRow>,
    pub purge: Option<PurgeRow>,
    /// The steps' calls to outside systems.
    pub calls: Vec<super::calls::CallView>,
}

/// Reads a run; with `company` given, a run of another company is not found.
pub async fn find<'e>(
    db: impl PgExecutor<'e> + Copy,
    id: Uuid,
    company: Option<i64>,
) -> Result<Option<RunDetail>, sqlx::Error> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM offboard.runs WHERE id = $1 AND ($2::bigint IS NULL OR company_id = $2)"
    );
    let Some(run) = sqlx::query_as::<_, RunRow>(AssertSqlSafe(sql))
        .bind(id)
        .bind(company)
        .fetch_optional(db)
        .await?
    else {
        return Ok(None);
    };
    let steps = steps_of(db, id).await?;
    let events = sqlx::query_as(
        "SELECT at, kind, step, actor, detail FROM offboard.run_events WHERE run_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    let purge = sqlx::query_as(
        "SELECT id, due_at, status, fired_at, fired_by, emails_deleted
         FROM offboard.scheduled_purges WHERE run_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?;
    let calls = super::calls::of_run(db, id).await?;
    Ok(Some(RunDetail { run, steps, events, purge, calls }))
}

async fn steps_of<'e>(db: impl PgExecutor<'e>, run_id: Uuid) -> Result<Vec<StepRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, status, depends_on, attempts, max_attempts, done, total, next_attempt_at,
                started_at, finished_at, result, last_error_code, last_error_message
         FROM offboard.steps WHERE run_id = $1 ORDER BY position",
    )
    .bind(run_id)
    .fetch_all(db)
    .await
}

/// A run in a list, with step progress summed up.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RunSummary {
    pub id: Uuid,
    pub company_id: i64,
    pub user_id: i64,
    pub action: Action,
    pub status: RunStatus,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub steps_total: i32,
    pub steps_succeeded: i64,
    pub steps_dead: i64,
    pub error_code: Option<String>,
    /// When a scheduled run starts.
    pub effective_at: Option<DateTime<Utc>>,
    /// The batch the run came from.
    pub batch_id: Option<Uuid>,
}

/// Runs the filter matches, newest first, after the keyset cursor `before` (the
/// `(created_at, id)` of the last run of the previous page): a page never shifts when runs
/// are added meanwhile.
pub async fn list(
    db: &PgPool,
    filter: &RunFilter,
    before: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<RunSummary>, sqlx::Error> {
    let (before_at, before_id) = before.unzip();
    let sql = format!(
        "SELECT r.id, r.company_id, r.user_id, r.action, r.status, r.created_at, r.finished_at,
                r.steps_total,
                (SELECT count(*) FROM offboard.steps s
                 WHERE s.run_id = r.id AND s.status IN ('succeeded', 'skipped')) AS steps_succeeded,
                (SELECT count(*) FROM offboard.steps s
                 WHERE s.run_id = r.id AND s.status = 'dead') AS steps_dead,
                r.error_code, r.effective_at, r.batch_id
         FROM offboard.runs r
         WHERE {FILTER_SQL}
           AND ($12::timestamptz IS NULL OR (r.created_at, r.id) < ($12, $13))
         ORDER BY r.created_at DESC, r.id DESC
         LIMIT $14"
    );
    crate::bind_filter!(sqlx::query_as(AssertSqlSafe(sql)), filter)
        .bind(before_at)
        .bind(before_id)
        .bind(limit)
        .fetch_all(db)
        .await
}
