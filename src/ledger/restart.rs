//! Restart a failed or canceled run from a chosen step: that step, every step that waits
//! on it (directly or not), and the run's dead and canceled steps go back in line with
//! fresh attempts and no progress; steps before it keep what they did. A step that
//! succeeded and would run again must be safe to repeat ([`StepKind::safe_to_repeat`]).

use std::collections::BTreeSet;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::runs::record_event;
use crate::{
    domain::{Actor, RunEventKind, RunStatus, StepStatus},
    steps::StepKind,
};

/// Why a restart was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartRefusal {
    NotFound,
    /// Only failed and canceled runs restart; carries the run's status.
    RunNotRestartable(RunStatus),
    /// The run has no step of that name.
    UnknownStep,
    /// These steps succeeded and are not safe to repeat.
    NotRepeatable(Vec<String>),
    /// These steps are still queued or running.
    StepsInFlight(Vec<String>),
    /// The user has another active run (a canceled run gave its place up).
    ActiveRunExists,
}

/// Puts the run back in line from `step`. Returns the steps that will run again.
pub async fn restart_from(
    pool: &PgPool,
    run_id: Uuid,
    company: Option<i64>,
    step: &str,
    actor: Actor,
) -> Result<Result<Vec<String>, RestartRefusal>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let status: Option<RunStatus> = sqlx::query_scalar(
        "SELECT status FROM offboard.runs
         WHERE id = $1 AND ($2::bigint IS NULL OR company_id = $2) FOR UPDATE",
    )
    .bind(run_id)
    .bind(company)
    .fetch_optional(&mut *tx)
    .await?;
    let status = match status {
        None => return Ok(Err(RestartRefusal::NotFound)),
        Some(status @ (RunStatus::Failed | RunStatus::Canceled)) => status,
        Some(other) => return Ok(Err(RestartRefusal::RunNotRestartable(other))),
    };
    let steps: Vec<(String, StepStatus, Vec<String>)> = sqlx::query_as(
        "SELECT name, status, depends_on FROM offboard.steps WHERE run_id = $1 ORDER BY position FOR UPDATE",
    )
    .bind(run_id)
    .fetch_all(&mut *tx)
    .await?;
    if !steps.iter().any(|(name, _, _)| name == step) {
        return Ok(Err(RestartRefusal::UnknownStep));
    }
    let again = steps_again(&steps, step);

    let in_flight: Vec<String> = steps
        .iter()
        .filter(|(name, status, _)| {
            again.contains(name) && matches!(status, StepStatus::Queued | StepStatus::Running)
        })
        .map(|(name, _, _)| name.clone())
        .collect();
    if !in_flight.is_empty() {
        return Ok(Err(RestartRefusal::StepsInFlight(in_flight)));
    }
    let not_repeatable: Vec<String> = steps
        .iter()
        .filter(|(name, status, _)| {
            again.contains(name)
                && status.is_done()
                && !StepKind::from_name(name).is_some_and(StepKind::safe_to_repeat)
        })
        .map(|(name, _, _)| name.clone())
        .collect();
    if !not_repeatable.is_empty() {
        return Ok(Err(RestartRefusal::NotRepeatable(not_repeatable)));
    }

    let names: Vec<String> =
        steps.iter().filter(|(n, _, _)| again.contains(n)).map(|(n, _, _)| n.clone()).collect();
    sqlx::query(
        "UPDATE offboard.steps
         SET status = 'pending', attempts = 0, done = 0, total = NULL, cursor = NULL, result = NULL,
             last_error_code = NULL, last_error_message = NULL, started_at = NULL,
             finished_at = NULL, queued_at = NULL, next_attempt_at = now(),
             lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
         WHERE run_id = $1 AND name = ANY ($2)",
    )
    .bind(run_id)
    .bind(&names)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE offboard.steps s
         SET deps_remaining = (SELECT count(*) FROM offboard.steps d
                               WHERE d.run_id = s.run_id AND d.name = ANY (s.depends_on)
                                 AND d.status NOT IN ('succeeded', 'skipped')),
             status = CASE WHEN NOT EXISTS (
                               SELECT 1 FROM offboard.steps d
                               WHERE d.run_id = s.run_id AND d.name = ANY (s.depends_on)
                                 AND d.status NOT IN ('succeeded', 'skipped'))
                           THEN 'ready' ELSE 'pending' END
         WHERE s.run_id = $1 AND s.name = ANY ($2)",
    )
    .bind(run_id)
    .bind(&names)
    .execute(&mut *tx)
    .await?;
    let resumed = sqlx::query(
        "UPDATE offboard.runs
         SET status = 'running', finished_at = NULL, receipt = NULL, error_code = NULL, error_message = NULL,
             steps_remaining = (SELECT count(*) FROM offboard.steps
                                WHERE run_id = $1 AND status NOT IN ('succeeded', 'skipped'))
         WHERE id = $1",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await;
    match resumed {
        Err(e) if matches!(&e, sqlx::Error::Database(db) if db.constraint() == Some("runs_one_active_per_user")) =>
        {
            return Ok(Err(RestartRefusal::ActiveRunExists));
        }
        other => {
            other?;
        }
    }
    record_event(
        &mut *tx,
        run_id,
        RunEventKind::Restarted,
        Some(step),
        actor,
        json!({"from_step": step, "steps": names, "previous_status": status}),
    )
    .await?;
    tx.commit().await?;
    Ok(Ok(names))
}

/// The chosen step, every step that waits on it directly or not, and the steps that are
/// dead or were canceled (else the run could not finish).
fn steps_again(steps: &[(String, StepStatus, Vec<String>)], from: &str) -> BTreeSet<String> {
    let mut again: BTreeSet<String> = BTreeSet::from([from.to_string()]);
    loop {
        let before = again.len();
        for (name, _, depends_on) in steps {
            if depends_on.iter().any(|d| again.contains(d)) {
                again.insert(name.clone());
            }
        }
        if again.len() == before {
            break;
        }
    }
    for (name, status, _) in steps {
        if matches!(status, StepStatus::Dead | StepStatus::Canceled) {
            again.insert(name.clone());
        }
    }
    again
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, status: StepStatus, deps: &[&str]) -> (String, StepStatus, Vec<String>) {
        (name.into(), status, deps.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn a_restart_takes_the_step_what_waits_on_it_and_what_died() {
        let steps = vec![
            step("a", StepStatus::Succeeded, &[]),
            step("b", StepStatus::Succeeded, &["a"]),
            step("c", StepStatus::Dead, &["a"]),
            step("d", StepStatus::Pending, &["b", "c"]),
            step("e", StepStatus::Succeeded, &["a"]),
        ];
        let again: Vec<String> = steps_again(&steps, "b").into_iter().collect();
        assert_eq!(again, ["b", "c", "d"]);
        let again: Vec<String> = steps_again(&steps, "a").into_iter().collect();
        assert_eq!(again, ["a", "b", "c", "d", "e"]);
    }
}
