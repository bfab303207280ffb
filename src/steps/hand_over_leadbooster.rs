//! LeadBooster: open live chats lose their operator (so the team picks them up); chatbot
//! playbooks and web forms get the company's first admin as responsible user, flagged so
//! someone checks the notification email they send to. Playbooks and forms handed over are
//! journaled (`offboard.transfer_journal`), so an undo can give them back; chats are not
//! (nobody owns them after).

use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, Stage, Step, StepContext, StepError, first_admin};

/// Registered in [`super::REGISTRY`].
pub(super) const STEP: Step = Step {
    name: "hand_over_leadbooster",
    stage: Stage::WhileDeactivating,
    safe_to_repeat: true,
    apply: |cx, tx, _| Box::pin(apply(cx, tx)),
};

pub(super) async fn apply(
    cx: &StepContext<'_>,
    tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    let admin = first_admin(tx, cx.company(), cx.user()).await?;
    let (chats, playbooks, forms): (i64, i64, i64) = sqlx::query_as(
        "WITH c AS (UPDATE crm.live_chats SET operator_id = NULL
                    WHERE company_id = $1 AND operator_id = $2 AND status = 'open' RETURNING 1),
              p AS (UPDATE crm.chatbot_playbooks SET responsible_user_id = $3, email_review_needed = true
                    WHERE company_id = $1 AND responsible_user_id = $2 RETURNING 1),
              f AS (UPDATE crm.web_forms SET responsible_user_id = $3, email_review_needed = true
                    WHERE company_id = $1 AND responsible_user_id = $2 RETURNING 1)
         SELECT (SELECT count(*) FROM c), (SELECT count(*) FROM p), (SELECT count(*) FROM f)",
    )
    .bind(cx.company())
    .bind(cx.user())
    .bind(admin)
    .bind(cx.run.id)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Finished::with_counts(json!({
        "chats_unassigned": chats,
        "playbooks_handed_over": playbooks,
        "web_forms_handed_over": forms,
        "new_responsible_user_id": admin,
    })))
}
