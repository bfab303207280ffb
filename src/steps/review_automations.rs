//! Automations: the ones the user created are turned off; automations and assignment rules
//! that merely name the user keep running and are listed as "needs review".

use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, Stage, Step, StepContext, StepError};

/// The step's one statement (`$1` the company, `$2` the user): turns off the automations
/// the user created and marks for review those naming the user and the assignment rules
/// assigning to them — each found by the user (`automations_creator` and the arrays' GIN
/// indexes), not among every automation of the company. Public so that tests can read
/// what it costs.
pub const REVIEW_SQL: &str = "WITH off AS (UPDATE crm.automations SET active = false
                  WHERE company_id = $1 AND creator_id = $2 AND active RETURNING id),
          named AS (UPDATE crm.automations SET needs_review = true
                    WHERE company_id = $1 AND creator_id <> $2
                      AND trigger_user_ids @> ARRAY[$2::bigint]
                    RETURNING id),
          rules AS (UPDATE crm.assignment_rules SET needs_review = true
                    WHERE company_id = $1 AND assignee_ids @> ARRAY[$2::bigint] RETURNING id)
     SELECT coalesce((SELECT array_agg(id ORDER BY id) FROM off), '{}'),
            coalesce((SELECT array_agg(id ORDER BY id) FROM named), '{}'),
            coalesce((SELECT array_agg(id ORDER BY id) FROM rules), '{}')";

/// Registered in [`super::REGISTRY`].
pub(super) const STEP: Step = Step {
    name: "review_automations",
    stage: Stage::WhileDeactivating,
    safe_to_repeat: true,
    apply: |cx, tx, _| Box::pin(apply(cx, tx)),
};

pub(super) async fn apply(
    cx: &StepContext<'_>,
    tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    let (deactivated, automations, rules): (Vec<i64>, Vec<i64>, Vec<i64>) =
        sqlx::query_as(REVIEW_SQL).bind(cx.company()).bind(cx.user()).fetch_one(&mut *tx).await?;
    Ok(Finished::with_counts(json!({
        "automations_deactivated": deactivated.len(),
        "deactivated_automation_ids": deactivated,
        "automations_needing_review": automations,
        "assignment_rules_needing_review": rules,
    })))
}
