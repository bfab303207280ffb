//! Approval before the irreversible: a `delete` or `deactivate_and_delete` run of a company
//! whose policy asks for approval is written `awaiting_approval` (its steps pending, see
//! [`super::runs::insert`]) and waits here for a second admin of the company — not the one
//! who asked — to approve it ([`decide`]: it then starts, through the same re-check as a
//! scheduled run, or waits for its `effective_at`) or reject it (`rejected`, final).
//! Unanswered, it turns `expired` after the policy's TTL ([`expire_overdue`], from the
//! sweeper). Both are recorded with the approver in the run and its history.

use sqlx::PgPool;
use uuid::Uuid;

use super::{
    runs::{self, OperatorRefusal},
    scheduled::{self, Start},
};
use crate::domain::{Actor, RunStatus};

/// What the second admin says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

/// Why a decision was refused; nothing changed (except [`Refusal::Expired`], which
/// records the expiry it found).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Operator(OperatorRefusal),
    /// The run does not wait for approval (any more).
    NotAwaiting,
    /// Its approval window had passed: the run is now `expired`.
    Expired,
    /// The approver asked for the run.
    Requester,
    /// The approver is not an active admin of the run's company.
    NotAnAdmin,
}

/// What an accepted decision did: the run's new status (`queued`, `scheduled`, `failed`
/// when its plan no longer held, or `rejected`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub status: RunStatus,
    pub error_code: Option<&'static str>,
}

/// Approves or rejects the run `run_id` as `approver` (a user id of its company).
pub async fn decide(
    pool: &PgPool,
    run_id: Uuid,
    company: Option<i64>,
    approver: i64,
    decision: Decision,
) -> Result<Result<Decided, Refusal>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    match runs::lock_for_operator(&mut tx, run_id, company).await? {
        Err(refusal) => return Ok(Err(Refusal::Operator(refusal))),
        Ok(status) if status != RunStatus::AwaitingApproval => {
            return Ok(Err(Refusal::NotAwaiting));
        }
        Ok(_) => {}
    }
    let (company_id, requester, expired, due_later): (i64, i64, bool, bool) = sqlx::query_as(
        "SELECT company_id, actor_user_id, approval_expires_at <= now(),
                coalesce(effective_at > now(), false)
         FROM offboard.runs WHERE id = $1",
    )
    .bind(run_id)
    .fetch_one(&mut *tx)
    .await?;
    if expired {
        expire(&mut tx, run_id).await?;
        tx.commit().await?;
        return Ok(Err(Refusal::Expired));
    }
    let is_admin: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM crm.users
                        WHERE id = $1 AND company_id = $2 AND status = 'active' AND role = 'admin'
                          AND kind = 'person')",
    )
    .bind(approver)
    .bind(company_id)
    .fetch_one(&mut *tx)
    .await?;
    if !is_admin {
        return Ok(Err(Refusal::NotAnAdmin));
    }
    if decision == Decision::Approve && approver == requester {
        return Ok(Err(Refusal::Requester));
    }
    let actor = Actor::User(approver);
    let decided = match decision {
        Decision::Reject => {
            sqlx::query(
                "WITH steps AS (
                     UPDATE offboard.steps SET status = 'canceled', finished_at = now()
                     WHERE run_id = $1 AND status = 'pending'),
                 rejected AS (
                     UPDATE offboard.runs SET status = 'rejected', finished_at = now(),
                                              approver_user_id = $2
                     WHERE id = $1)
                 INSERT INTO offboard.run_events (run_id, kind, actor) VALUES ($1, 'rejected', $3)",
            )
            .bind(run_id)
            .bind(approver)
            .bind(actor)
            .execute(&mut *tx)
            .await?;
            Decided { status: RunStatus::Rejected, error_code: None }
        }
        Decision::Approve => {
            sqlx::query(
                "WITH approved AS (
                     UPDATE offboard.runs SET approver_user_id = $2 WHERE id = $1)
                 INSERT INTO offboard.run_events (run_id, kind, actor) VALUES ($1, 'approved', $3)",
            )
            .bind(run_id)
            .bind(approver)
            .bind(actor)
            .execute(&mut *tx)
            .await?;
            if due_later {
                sqlx::query("UPDATE offboard.runs SET status = 'scheduled' WHERE id = $1")
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await?;
                Decided { status: RunStatus::Scheduled, error_code: None }
            } else {
                match scheduled::start_locked(&mut tx, run_id).await? {
                    Start::Queued => Decided { status: RunStatus::Queued, error_code: None },
                    Start::Refused(code) => {
                        Decided { status: RunStatus::Failed, error_code: Some(code) }
                    }
                }
            }
        }
    };
    tx.commit().await?;
    Ok(Ok(decided))
}

/// Marks one locked run awaiting approval `expired`, its steps canceled.
async fn expire(tx: &mut sqlx::PgConnection, run_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH steps AS (
             UPDATE offboard.steps SET status = 'canceled', finished_at = now()
             WHERE run_id = $1 AND status = 'pending'),
         expired AS (
             UPDATE offboard.runs SET status = 'expired', finished_at = now()
             WHERE id = $1 AND status = 'awaiting_approval')
         INSERT INTO offboard.run_events (run_id, kind, actor) VALUES ($1, 'expired', 'system')",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Runs whose approval window has passed become `expired` (up to `limit` a call, in one
/// statement); returns how many.
pub async fn expire_overdue(pool: &PgPool, limit: i64) -> Result<u64, sqlx::Error> {
    let expired: i64 = sqlx::query_scalar(
        "WITH due AS (
             SELECT id FROM offboard.runs
             WHERE status = 'awaiting_approval' AND approval_expires_at <= now()
             ORDER BY approval_expires_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED),
         expired AS (
             UPDATE offboard.runs r SET status = 'expired', finished_at = now()
             FROM due WHERE r.id = due.id
             RETURNING r.id),
         steps AS (
             UPDATE offboard.steps SET status = 'canceled', finished_at = now()
             WHERE run_id IN (SELECT id FROM expired) AND status = 'pending'),
         history AS (
             INSERT INTO offboard.run_events (run_id, kind, actor)
             SELECT id, 'expired', 'system' FROM expired)
         SELECT count(*) FROM expired",
    )
    .bind(limit)
    .fetch_one(pool)
    .await?;
    Ok(expired as u64)
}
