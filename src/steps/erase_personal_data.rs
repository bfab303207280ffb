//! Delete: erase the user's name, email, phone and profile picture (and what an identity
//! provider set: userName, externalId, given and family name). The user is shown as
//! `deleted user, ID <id>` from then on and can no longer be chosen in filters. Items stay
//! with the deleted user unless the plan moved them. Irreversible.

use serde_json::json;
use sqlx::PgConnection;

use super::{Finished, Progress, Stage, Step, StepContext, StepError};
use crate::domain::UserStatus;

pub const ERASED_FIELDS: [&str; 8] = [
    "name",
    "email",
    "phone",
    "picture_url",
    "user_name",
    "external_id",
    "given_name",
    "family_name",
];

/// Registered in [`super::REGISTRY`].
pub(super) const STEP: Step = Step {
    name: "erase_personal_data",
    stage: Stage::Fixed,
    safe_to_repeat: false,
    apply: |cx, tx, _| Box::pin(apply(cx, tx)),
};

pub(super) async fn apply(
    cx: &StepContext<'_>,
    tx: &mut PgConnection,
) -> Result<Progress, StepError> {
    let status: Option<UserStatus> = sqlx::query_scalar(
        "SELECT status FROM crm.users WHERE id = $2 AND company_id = $1 FOR UPDATE",
    )
    .bind(cx.company())
    .bind(cx.user())
    .fetch_optional(&mut *tx)
    .await?;
    match status {
        Some(UserStatus::Deactivated | UserStatus::Deleted) => {}
        Some(_) => {
            return Err(StepError::permanent(
                "user_not_deactivated",
                "only a deactivated user can be deleted",
            ));
        }
        None => return Err(StepError::permanent("user_not_found", "the user no longer exists")),
    }
    sqlx::query(
        "UPDATE crm.users
         SET name = NULL, email = NULL, phone = NULL, picture_url = NULL, user_name = NULL,
             external_id = NULL, given_name = NULL, family_name = NULL,
             status = 'deleted', holds_seat = false, deleted_at = coalesce(deleted_at, now())
         WHERE id = $2 AND company_id = $1",
    )
    .bind(cx.company())
    .bind(cx.user())
    .execute(&mut *tx)
    .await?;
    // The ledger holds no personal data by design; a pending redaction name is the one
    // exception, and it goes too.
    sqlx::query("UPDATE offboard.runs SET params = params - 'display_name' WHERE company_id = $1 AND user_id = $2")
        .bind(cx.company())
        .bind(cx.user())
        .execute(&mut *tx)
        .await?;
    Ok(Finished::with_counts(json!({
        "erased_fields": ERASED_FIELDS,
        "shown_as": format!("deleted user, ID {}", cx.user()),
        "excluded_from_filters": true,
    })))
}
