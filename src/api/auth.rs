//! Bearer tokens from `OFFBOARD_API_TOKENS` (or the development token, when enabled). A
//! token may be scoped to one company (`TOKEN@COMPANY_ID`): it then sees and touches that
//! company's runs only. A presented token is hashed and its SHA-256 digest compared with
//! every accepted token's in constant time, so neither its length nor its first differing
//! byte shows in the answer's timing.

use axum::{extract::FromRequestParts, http::request::Parts};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::config::ApiToken;

use super::{AppState, error::ApiError};

/// The authenticated caller.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// `Some(id)`: this caller may only act within company `id`.
    pub company_scope: Option<i64>,
}

impl Caller {
    /// Refuses a company outside the token's scope. Reported as not found, so a scoped
    /// token cannot probe which companies exist.
    pub fn check_company(&self, company_id: i64) -> Result<(), ApiError> {
        match self.company_scope {
            Some(scope) if scope != company_id => Err(ApiError::not_found("company")),
            _ => Ok(()),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        find_token(&state.tokens, presented)
            .map(|t| Caller { company_scope: t.company_id })
            .ok_or_else(ApiError::unauthorized)
    }
}

/// The accepted token `presented` is, comparing digests in constant time and looking at
/// every token whether or not an earlier one matched.
fn find_token<'a>(tokens: &'a [ApiToken], presented: &str) -> Option<&'a ApiToken> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = 0u32;
    let mut matched = subtle::Choice::from(0);
    for (i, token) in tokens.iter().enumerate() {
        let equal = token.digest().ct_eq(&digest);
        found.conditional_assign(&(i as u32), equal);
        matched |= equal;
    }
    bool::from(matched).then(|| &tokens[found as usize])
}

#[cfg(test)]
mod tests {
    use super::find_token;
    use crate::config::ApiToken;

    #[test]
    fn finds_the_whole_token_only() {
        let tokens = [
            ApiToken::new("first-token-0123456789", None),
            ApiToken::new("second-token-0123456789", Some(7)),
        ];
        assert_eq!(find_token(&tokens, "second-token-0123456789").unwrap().company_id, Some(7));
        assert_eq!(find_token(&tokens, "first-token-0123456789").unwrap().company_id, None);
        assert!(find_token(&tokens, "second-token-012345678").is_none());
        assert!(find_token(&tokens, "second-token-01234567890").is_none());
        assert!(find_token(&tokens, "").is_none());
        assert!(find_token(&[], "first-token-0123456789").is_none());
    }
}
