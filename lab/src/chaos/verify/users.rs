//! Users: each offboarded user's status, seat, access and redaction as its last run left
//! them; the targets still active; no more seats held than the company has.

use std::collections::HashSet;

use super::{Findings, Input};
use crate::chaos::RunRecord;
use offboard::domain::{Action, UserStatus};

#[derive(sqlx::FromRow)]
struct UserRow {
    id: i64,
    status: UserStatus,
    holds_seat: bool,
    name: Option<String>,
    picture_removed: bool,
    deactivated: bool,
    deleted: bool,
    access: i64,
}

pub async fn check(
    input: &Input<'_>,
    unpredictable: &HashSet<i64>,
    f: &mut Findings,
) -> anyhow::Result<()> {
    let users: Vec<UserRow> = sqlx::query_as(
        "SELECT u.id, u.status, u.holds_seat, u.name, u.picture_url IS NULL AS picture_removed,
                u.deactivated_at IS NOT NULL AS deactivated, u.deleted_at IS NOT NULL AS deleted,
                (SELECT count(*) FROM crm.sessions s WHERE s.user_id = u.id)
                  + (SELECT count(*) FROM crm.api_tokens a WHERE a.user_id = u.id) AS access
         FROM crm.users u WHERE u.company_id = $1",
    )
    .bind(input.company_id)
    .fetch_all(input.pool)
    .await?;
    let seats_held = users.iter().filter(|u| u.holds_seat).count() as i64;
    if seats_held > input.seats {
        f.doubled.push(format!("{seats_held} seats held; the company has {}", input.seats));
    }
    for user in &users {
        if input.keepers.contains(&user.id) {
            if user.status != UserStatus::Active || !user.holds_seat {
                f.broken.push(format!("target user {} is {}", user.id, user.status));
            }
            continue;
        }
        if !input.leavers.contains(&user.id) || unpredictable.contains(&user.id) {
            continue;
        }
        let runs: Vec<&RunRecord> = input.records.iter().filter(|r| r.user == user.id).collect();
        let mut before = UserStatus::Active;
        let mut expected = UserStatus::Active;
        for run in &runs {
            before = expected;
            expected = run.step.status_after(expected);
        }
        if user.status != expected {
            let what = format!(
                "user {} is {}; its last run ({}) should have left it {}",
                user.id,
                user.status,
                runs.last().map_or("none", |r| r.step.action.as_str()),
                expected
            );
            if user.status == before {
                f.lost.push(what)
            } else {
                f.doubled.push(what)
            }
            continue;
        }
        if user.holds_seat != (expected == UserStatus::Active) {
            f.lost.push(format!(
                "user {} is {} and {} a seat",
                user.id,
                user.status,
                if user.holds_seat { "holds" } else { "holds no" }
            ));
        }
        if user.deactivated != (expected != UserStatus::Active)
            || user.deleted != (expected == UserStatus::Deleted)
        {
            f.lost.push(format!("user {} is {} with the wrong timestamps", user.id, user.status));
        }
        if !runs.is_empty() && user.access > 0 {
            f.lost
                .push(format!("user {} still has {} sessions or API tokens", user.id, user.access));
        }
        // The last redaction stands unless a deletion erased everything after it.
        if expected != UserStatus::Deleted
            && let Some(redaction) = runs.iter().rev().find(|r| r.step.action == Action::Redact)
        {
            if let Some(name) = &redaction.step.display_name
                && user.name.as_deref() != Some(name.as_str())
            {
                f.lost.push(format!("user {} was not renamed by run {}", user.id, redaction.id));
            }
            if redaction.step.remove_picture && !user.picture_removed {
                f.lost.push(format!(
                    "user {} kept the picture run {} removed",
                    user.id, redaction.id
                ));
            }
        }
    }
    Ok(())
}
