//! A step that does nothing and succeeds at once. No action plans it: `offboard-lab bench
//! steps` inserts runs of them directly, to measure the path every step takes (ledger,
//! dispatcher, Redis, worker, ledger) without any CRM work.

use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, StepContext, StepError};

pub(super) async fn apply(
    _cx: &StepContext<'_>,
    _tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    Ok(Finished::with_counts(json!({})))
}
