//! `Idempotency-Key`: a repeated request with the same key returns the original run
//! instead of creating a second. The key is scoped to the company; a keyed hash of the
//! request body catches a key reused for a different request.
//!
//! The bodies hold emails and ids anyone could guess, so a plain hash of one would confirm
//! a guess to whoever reads the table: the stored hash is an HMAC-SHA256 under the server's
//! `OFFBOARD_IDEMPOTENCY_SECRET`. Keys are deleted by the sweeper once older than
//! `OFFBOARD_IDEMPOTENCY_RETENTION`.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sqlx::PgExecutor;

/// Marks a keyed hash; a stored hash without it was written before keys were keyed.
const KEYED: &str = "hmac-sha256:";

/// The hashes one request's body is known by.
#[derive(Clone)]
pub struct RequestHash {
    keyed: String,
    /// The plain SHA-256 that rows written before the keyed hash hold (they expire within
    /// the retention); never stored again.
    legacy: String,
}

impl RequestHash {
    /// The hashes of the canonical request body under `secret`.
    pub fn of(secret: &[u8], canonical_body: &[u8]) -> Self {
        let mut mac =
            <Hmac<sha2_hmac::Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
        mac.update(canonical_body);
        let keyed = format!("{KEYED}{}", hex(&mac.finalize().into_bytes()));
        let legacy = hex(&<sha2::Sha256 as sha2::Digest>::digest(canonical_body));
        Self { keyed, legacy }
    }

    /// What is stored with the key.
    pub fn stored(&self) -> &str {
        &self.keyed
    }

    /// Whether a stored hash is this request's.
    pub fn matches(&self, stored: &str) -> bool {
        match stored.strip_prefix(KEYED) {
            Some(_) => stored == self.keyed,
            None => stored == self.legacy,
        }
    }
}

impl std::fmt::Debug for RequestHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestHash([redacted])")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deletes up to `limit` keys older than `retention`, oldest first; returns how many.
pub async fn delete_expired(
    db: impl PgExecutor<'_>,
    retention: Duration,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM offboard.idempotency_keys
         WHERE (company_id, key) IN (
             SELECT company_id, key FROM offboard.idempotency_keys
             WHERE created_at < now() - make_interval(secs => $1)
             ORDER BY created_at LIMIT $2)",
    )
    .bind(retention.as_secs_f64())
    .bind(limit)
    .execute(db)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_hash_is_keyed_and_not_the_plain_sha256() {
        let body = br#"{"user_id":17,"email":"ann@example.com"}"#;
        let a = RequestHash::of(b"secret-one", body);
        let b = RequestHash::of(b"secret-two", body);
        assert_ne!(a.stored(), b.stored(), "the secret changes the hash");
        assert!(!a.stored().contains(&hex(&<sha2::Sha256 as sha2::Digest>::digest(body))));
        assert!(a.matches(a.stored()));
        assert!(!a.matches(b.stored()));
        assert!(!a.matches(RequestHash::of(b"secret-one", b"{}").stored()));
        // A row written before the hash was keyed still recognizes its request.
        assert!(a.matches(&hex(&<sha2::Sha256 as sha2::Digest>::digest(body))));
        assert!(!format!("{a:?}").contains(&a.stored()[KEYED.len()..]));
    }
}
