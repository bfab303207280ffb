//! Bearer tokens from `OFFBOARD_API_TOKENS`. A token may be scoped to one company
//! (`TOKEN@COMPANY_ID`): it then sees and touches that company's runs only.

use axum::{extract::FromRequestParts, http::request::Parts};

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
        state
            .tokens
            .iter()
            .find(|t| constant_time_eq(t.secret.as_bytes(), presented.as_bytes()))
            .map(|t| Caller { company_scope: t.company_id })
            .ok_or_else(ApiError::unauthorized)
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_whole_tokens() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
