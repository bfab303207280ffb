//! `Idempotency-Key`: a repeated request with the same key returns the original run
//! instead of creating a second. The key is scoped to the company; the stored hash of the
//! request body catches a key reused for a different request.

use sha2::{Digest, Sha256};

/// The hex sha256 of the canonical request body.
pub fn request_hash(canonical_body: &[u8]) -> String {
    Sha256::digest(canonical_body).iter().map(|b| format!("{b:02x}")).collect()
}
