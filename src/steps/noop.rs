//! A step that does nothing and succeeds at once. No action plans it: `offboard-lab bench
//! steps` inserts runs of them directly, to measure the path every step takes (ledger,
//! dispatcher, Redis, worker, ledger) without any CRM work.

use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, Stage, Step, StepContext, StepError};

/// Registered in [`super::REGISTRY`].
pub(super) const STEP: Step =
    Step { name: "noop", stage: Stage::Numbered, apply: |cx, tx, _| Box::pin(apply(cx, tx)) };

pub(super) async fn apply(
    _cx: &StepContext<'_>,
    _tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    Ok(Finished::with_counts(json!({})))
}
