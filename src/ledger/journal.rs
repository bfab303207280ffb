//! The transfer journal (`offboard.transfer_journal`, written by the steps that move items
//! in the statement that moves them) as an undo reads it: what a run moved, what of it
//! its recipients still hold, and the undo runs already asked for.

use std::collections::BTreeMap;

// Dynamic SQL here only splices fixed table, column and kind names from `JOURNALED`.
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use crate::domain::{Action, RunStatus, UserStatus, journal::JOURNALED};

/// The run an undo is asked for, as the rules need it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Source {
    pub id: Uuid,
    pub company_id: i64,
    pub user_id: i64,
    pub action: Action,
    pub status: RunStatus,
    pub actor_user_id: i64,
}

/// The run, locked `FOR SHARE` when read in a transaction that writes its undo.
pub async fn source(conn: &mut PgConnection, run_id: Uuid) -> Result<Option<Source>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, company_id, user_id, action, status, actor_user_id
         FROM offboard.runs WHERE id = $1",
    )
    .bind(run_id)
    .fetch_optional(&mut *conn)
    .await
}

/// Of one kind: what the run moved, and what its recipients still hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub journaled: i64,
    pub still_held: i64,
}

/// Per journaled kind the run moved anything of: the entries, and those whose item is
/// still owned by the user the run gave it to — exactly what an undo would move back now.
pub async fn held(
    conn: &mut PgConnection,
    run_id: Uuid,
    company_id: i64,
) -> Result<BTreeMap<String, Held>, sqlx::Error> {
    let arms: Vec<String> = JOURNALED
        .iter()
        .map(|kind| {
            format!(
                "WHEN '{key}' THEN EXISTS (SELECT 1 FROM {table} t WHERE t.id = e.item_id
                                           AND t.company_id = $2 AND t.{owner} = e.new_owner)",
                key = kind.key,
                table = kind.table,
                owner = kind.owner_column,
            )
        })
        .collect();
    let sql = format!(
        "WITH entries AS (
             SELECT j.item_type, x.item_id, x.new_owner
             FROM offboard.transfer_journal j,
                  unnest(j.item_ids, j.new_owner_ids) AS x(item_id, new_owner)
             WHERE j.run_id = $1)
         SELECT e.item_type, count(*)::bigint,
                count(*) FILTER (WHERE CASE e.item_type {arms} ELSE false END)::bigint
         FROM entries e
         GROUP BY e.item_type",
        arms = arms.join("\n                     "),
    );
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(run_id)
        .bind(company_id)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, journaled, still_held)| (kind, Held { journaled, still_held }))
        .collect())
}

/// Whether the run journaled anything.
pub async fn moved_anything(conn: &mut PgConnection, run_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM offboard.transfer_journal WHERE run_id = $1)")
        .bind(run_id)
        .fetch_one(&mut *conn)
        .await
}

/// The latest undo asked for of the run: its id and status.
pub async fn latest_undo(
    conn: &mut PgConnection,
    run_id: Uuid,
) -> Result<Option<(Uuid, RunStatus)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, status FROM offboard.runs
         WHERE action = 'undo_transfer' AND params ->> 'undo_of' = $1::text
         ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(run_id)
    .fetch_optional(&mut *conn)
    .await
}

/// A user of the company as an undo needs them: their status, whether an active run is
/// deactivating them, and whether they may act for the company (account-settings access).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserState {
    pub status: UserStatus,
    pub leaving: bool,
    pub may_act: bool,
}

pub async fn user_state(
    conn: &mut PgConnection,
    company_id: i64,
    user_id: i64,
) -> Result<Option<UserState>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT u.status, u.account_settings_access AS may_act,
                EXISTS (SELECT 1 FROM offboard.runs r
                        WHERE r.company_id = u.company_id AND r.user_id = u.id
                          AND r.action IN ('deactivate', 'deactivate_and_delete')
                          AND r.status IN ",
        crate::active_run_statuses_sql!(),
        ") AS leaving
         FROM crm.users u WHERE u.company_id = $1 AND u.id = $2 FOR SHARE OF u",
    ))
    .bind(company_id)
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await
}

/// The user's active run, if any: its id, action, status and the run it undoes.
pub async fn active_run_of(
    conn: &mut PgConnection,
    company_id: i64,
    user_id: i64,
) -> Result<Option<(Uuid, Action, RunStatus, Option<String>)>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT id, action, status, params ->> 'undo_of' FROM offboard.runs
         WHERE company_id = $1 AND user_id = $2 AND status IN ",
        crate::active_run_statuses_sql!(),
        " LIMIT 1",
    ))
    .bind(company_id)
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await
}
