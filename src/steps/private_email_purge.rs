//! The private-email purge, due 30 days (by default) after deactivation: delete the user's
//! private emails linked to deals, persons, leads or projects. Until it is due a purge is
//! only a ledger row: Redis never holds a month of future work (apalis-redis fails for good
//! past ~8,000 due tasks). When due, the dispatcher pushes it in bounded batches
//! ([`take_due`]) and the purge queue fires it; a pushed purge Redis lost is pushed again,
//! and one still not fired past a grace is fired by the sweeper itself. The purge row is
//! locked and its status checked in the same transaction as the delete, so it fires at
//! most once and never after a reactivation canceled it.

use sqlx::PgPool;

/// Who fired a purge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FiredBy {
    Queue,
    Sweeper,
}

impl FiredBy {
    pub fn as_str(self) -> &'static str {
        match self {
            FiredBy::Queue => "queue",
            FiredBy::Sweeper => "sweeper",
        }
    }
}

/// Fires one purge if it is due and still scheduled. Returns the number of emails
/// deleted, or `None` when there was nothing to fire (not due, done, or canceled).
pub async fn fire(pool: &PgPool, purge_id: i64, by: FiredBy) -> Result<Option<u64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let due: Option<(i64, i64)> = sqlx::query_as(
        "SELECT company_id, user_id FROM offboard.scheduled_purges
         WHERE id = $1 AND status = 'scheduled' AND due_at <= now()
         FOR UPDATE SKIP LOCKED",
    )
    .bind(purge_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((company_id, user_id)) = due else {
        return Ok(None);
    };
    let deleted = sqlx::query(
        "DELETE FROM crm.emails
         WHERE company_id = $1 AND owner_id = $2 AND visibility = 'private' AND linked_type IS NOT NULL",
    )
    .bind(company_id)
    .bind(user_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE offboard.scheduled_purges
         SET status = 'done', fired_at = now(), fired_by = $2, emails_deleted = $3
         WHERE id = $1",
    )
    .bind(purge_id)
    .bind(by.as_str())
    .bind(deleted as i32)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(
        purge_id,
        company_id,
        user_id,
        emails_deleted = deleted,
        fired_by = by.as_str(),
        "private emails purged"
    );
    Ok(Some(deleted))
}

/// Marks up to `limit` due purges as pushed and returns them, oldest first: those never
/// pushed, and those pushed more than `repush_after` ago and still scheduled (their Redis
/// task was lost). The caller pushes them to Redis after this commits.
pub async fn take_due(
    pool: &PgPool,
    limit: i64,
    repush_after: std::time::Duration,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE offboard.scheduled_purges SET pushed_at = now()
         WHERE id IN (
             SELECT id FROM offboard.scheduled_purges
             WHERE status = 'scheduled' AND due_at <= now()
               AND (pushed_at IS NULL OR pushed_at < now() - make_interval(secs => $2))
             ORDER BY due_at, id LIMIT $1
             FOR UPDATE SKIP LOCKED)
         RETURNING id",
    )
    .bind(limit)
    .bind(repush_after.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Purges still scheduled `grace` after they were due, oldest first: the ones whose Redis
/// task was lost (flush, restart) or found no worker. The grace leaves punctual purges to
/// the queue.
pub async fn overdue(
    pool: &PgPool,
    grace: std::time::Duration,
    limit: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM offboard.scheduled_purges
         WHERE status = 'scheduled' AND due_at <= now() - make_interval(secs => $2)
         ORDER BY due_at, id LIMIT $1",
    )
    .bind(limit)
    .bind(grace.as_secs_f64())
    .fetch_all(pool)
    .await
}
