//! The last deactivation step: mark the user deactivated, release the seat (to the
//! replacement user, if the request created one), revoke any session or API token again
//! (one created before login was blocked, by a host that does not honour the flag), and
//! record the private-email purge due at deactivated_at + retention.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, Stage, Step, StepContext, StepError};

/// Registered in [`super::REGISTRY`].
pub(super) const STEP: Step = Step {
    name: "finish_deactivation",
    stage: Stage::Fixed,
    safe_to_repeat: false,
    apply: |cx, tx, _| Box::pin(apply(cx, tx)),
};

pub(super) async fn apply(
    cx: &StepContext<'_>,
    tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    // Idempotent: a user already deactivated keeps the original deactivation time.
    let deactivated_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "WITH changed AS (
             UPDATE crm.users SET status = 'deactivated', holds_seat = false,
                                  deactivated_at = coalesce(deactivated_at, now())
             WHERE id = $2 AND company_id = $1 AND status IN ('active', 'deactivated')
             RETURNING deactivated_at)
         SELECT deactivated_at FROM changed",
    )
    .bind(cx.company())
    .bind(cx.user())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(deactivated_at) = deactivated_at else {
        return Err(StepError::permanent(
            "user_not_found",
            "the user no longer exists or was deleted",
        ));
    };

    // The store refuses new ones from here on (the user is no longer active).
    let (sessions, tokens): (i64, i64) = sqlx::query_as(
        "WITH s AS (DELETE FROM crm.sessions WHERE company_id = $1 AND user_id = $2 RETURNING 1),
              t AS (DELETE FROM crm.api_tokens WHERE company_id = $1 AND user_id = $2 RETURNING 1)
         SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM t)",
    )
    .bind(cx.company())
    .bind(cx.user())
    .fetch_one(&mut *tx)
    .await?;

    let mut seat_to = None;
    if let Some(replacement) = cx.run.params.replacement_user_id {
        sqlx::query(
            "UPDATE crm.users SET holds_seat = true WHERE id = $2 AND company_id = $1 AND status = 'active'",
        )
        .bind(cx.company())
        .bind(replacement.get())
        .execute(&mut *tx)
        .await?;
        seat_to = Some(replacement.get());
    }

    let retention = chrono::Duration::from_std(cx.settings.private_email_retention)
        .map_err(|_| StepError::permanent("bad_retention", "retention is out of range"))?;
    let due_at = deactivated_at + retention;
    let purge: Option<(i64, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO offboard.scheduled_purges (company_id, user_id, run_id, due_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id) WHERE status = 'scheduled' DO NOTHING
         RETURNING id, due_at",
    )
    .bind(cx.company())
    .bind(cx.user())
    .bind(cx.run.id)
    .bind(due_at)
    .fetch_optional(&mut *tx)
    .await?;
    // A purge already scheduled for this user (from an earlier deactivation) stands.
    let (purge_id, due_at) = match purge {
        Some(p) => p,
        None => sqlx::query_as(
            "SELECT id, due_at FROM offboard.scheduled_purges WHERE user_id = $1 AND status = 'scheduled'",
        )
        .bind(cx.user())
        .fetch_one(&mut *tx)
        .await?,
    };
    let private_emails: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM crm.emails
         WHERE company_id = $1 AND owner_id = $2 AND visibility = 'private' AND linked_type IS NOT NULL",
    )
    .bind(cx.company())
    .bind(cx.user())
    .fetch_one(&mut *tx)
    .await?;

    Ok(Progress::Finished(Finished {
        counts: json!({
            "deactivated": 1,
            "deactivated_at": deactivated_at,
            "seat_released": true,
            "seat_given_to_user_id": seat_to,
            "private_email_purge_id": purge_id,
            "private_email_purge_due_at": due_at,
            "private_emails_to_purge": private_emails,
            "late_sessions_revoked": sessions,
            "late_api_tokens_revoked": tokens,
        }),
        done: 1,
        total: 1,
        // The purge stays in the ledger until due; the dispatcher pushes it then.
        after_commit: Vec::new(),
    }))
}
