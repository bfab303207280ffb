//! How a step fails, said where it fails: retryable, permanent, or "later" (an outside
//! system asked for time); a database error is classified by its SQLSTATE.

/// A failed step says at its source whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Connection lost, deadlock, serialization failure, timeout: worth another attempt.
    #[error("{code}: {message}")]
    Retryable { code: String, message: String },
    /// A rule that cannot start holding by waiting: the step is dead at once.
    #[error("{code}: {message}")]
    Permanent { code: String, message: String },
    /// An outside system asked for time: try again no sooner than `pause` (a
    /// `Retry-After`), or — `counted: false` — nothing was attempted (a destination's
    /// breaker is open, its rate limit spent) and the attempt is given back.
    #[error("{code}: {message}")]
    Later { code: String, message: String, pause: std::time::Duration, counted: bool },
}

impl StepError {
    pub fn permanent(code: &str, message: impl Into<String>) -> Self {
        StepError::Permanent { code: code.into(), message: message.into() }
    }

    pub fn retryable(code: &str, message: impl Into<String>) -> Self {
        StepError::Retryable { code: code.into(), message: message.into() }
    }

    pub fn later(
        code: &str,
        message: impl Into<String>,
        pause: std::time::Duration,
        counted: bool,
    ) -> Self {
        StepError::Later { code: code.into(), message: message.into(), pause, counted }
    }

    pub fn code(&self) -> &str {
        match self {
            StepError::Retryable { code, .. }
            | StepError::Permanent { code, .. }
            | StepError::Later { code, .. } => code,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            StepError::Retryable { message, .. }
            | StepError::Permanent { message, .. }
            | StepError::Later { message, .. } => message,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, StepError::Retryable { .. } | StepError::Later { .. })
    }
}

impl From<sqlx::Error> for StepError {
    /// Classifies a database error. Messages carry the SQLSTATE and constraint name only:
    /// PostgreSQL's detail text can quote row values, which may be personal data.
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) => {
                let state = db.code().map(|c| c.to_string()).unwrap_or_default();
                let constraint = db.constraint().map(|c| format!(" ({c})")).unwrap_or_default();
                let message = format!("database error {state}{constraint}");
                // A statement or lock wait past the pool's statement_timeout or
                // lock_timeout: worth another attempt, under its own code.
                if matches!(state.as_str(), "57014" | "55P03") {
                    let what = if state == "55P03" { "a lock wait" } else { "a statement" };
                    return StepError::retryable(
                        "timeout",
                        format!("{what} passed its time limit ({message})"),
                    );
                }
                match state.get(..2) {
                    // serialization failure, deadlock; connection exceptions; operator
                    // intervention (shutdown, cancel); insufficient resources.
                    Some("40") | Some("08") | Some("57") | Some("53") => {
                        StepError::retryable("database_unavailable", message)
                    }
                    _ => StepError::permanent("database_rejected", message),
                }
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_) => StepError::retryable("database_unavailable", err.to_string()),
            _ => StepError::permanent("database_rejected", err.to_string()),
        }
    }
}
