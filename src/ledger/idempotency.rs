//! `Idempotency-Key`: a repeated request with the same key returns the original run
//! instead of creating a second. The key is scoped to the company; the stored hash of the
//! request body catches a key reused for a different request.

use sha2::{Digest, Sha256};
use sqlx::PgExecutor;
use uuid::Uuid;

/// The hex sha256 of the canonical request body.
pub fn request_hash(canonical_body: &[u8]) -> String {
    Sha256::digest(canonical_body).iter().map(|b| format!("{b:02x}")).collect()
}

/// The run and request hash already recorded under this key, if any.
pub async fn lookup<'e>(
    db: impl PgExecutor<'e>,
    company_id: i64,
    key: &str,
) -> Result<Option<(Uuid, String)>, sqlx::Error> {
    sqlx::query_as("SELECT run_id, request_hash FROM offboard.idempotency_keys WHERE company_id = $1 AND key = $2")
        .bind(company_id)
        .bind(key)
        .fetch_optional(db)
        .await
}
