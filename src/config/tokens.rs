//! API bearer tokens: secrets compared by digest, optionally scoped to one company.

use std::fmt;

use anyhow::{Context, bail};
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use super::DEV_TOKEN;

/// One bearer token, optionally scoped to a single company. The token is held as a secret
/// (zeroed on drop, never in `Debug`); requests are matched against its SHA-256 digest.
#[derive(Clone)]
pub struct ApiToken {
    secret: SecretString,
    digest: [u8; 32],
    pub company_id: Option<i64>,
}

impl ApiToken {
    pub fn new(secret: &str, company_id: Option<i64>) -> Self {
        Self { secret: secret.into(), digest: Sha256::digest(secret.as_bytes()).into(), company_id }
    }

    /// The token itself, for a client that must present it.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// The SHA-256 digest requests are compared against (in constant time, by the API).
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("secret", &"[redacted]")
            .field("company_id", &self.company_id)
            .finish()
    }
}

/// `TOKEN` (any company) or `TOKEN@COMPANY_ID` (one company), comma-separated.
pub(super) fn parse_tokens(raw: &str) -> anyhow::Result<Vec<ApiToken>> {
    raw.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|entry| match entry.rsplit_once('@') {
            Some((secret, company)) => {
                let company_id = company.parse().with_context(|| {
                    format!("the company after '@' in token entry {} is not a number", entry.len())
                })?;
                check_token_secret(secret)?;
                Ok(ApiToken::new(secret, Some(company_id)))
            }
            None => {
                check_token_secret(entry)?;
                Ok(ApiToken::new(entry, None))
            }
        })
        .collect()
}

fn check_token_secret(secret: &str) -> anyhow::Result<()> {
    if secret.len() < 16 {
        bail!("a token is shorter than 16 characters");
    }
    if secret == DEV_TOKEN {
        bail!("the development token cannot be configured; choose a secret of your own");
    }
    Ok(())
}
