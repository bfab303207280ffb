//! What the fault suite expects: who is offboarded and how (a script of runs per user),
//! the transfer plans, and — item by item — who owns what after each run. The arithmetic
//! is written here again on purpose, independently of `domain::transfer`, so the suite
//! checks the service against the README's rules rather than against itself.
//!
//! Here the scripts (the runs each offboarded user goes through); [`plan`] the transfer
//! plans and how a rule shares items, [`ledger`] who owns what after each run.

mod ledger;
mod plan;

use rand::{Rng, rngs::StdRng};
use serde_json::{Value, json};

pub use self::{
    ledger::{Ledger, Promise},
    plan::Plan,
};
use offboard::domain::{Action, UserStatus};

/// One run the suite will request.
#[derive(Clone, Debug)]
pub struct Step {
    pub user: i64,
    pub action: Action,
    pub plan: Option<Plan>,
    /// Redaction: the new display name (never personal data: it names an id) and whether
    /// the picture goes.
    pub display_name: Option<String>,
    pub remove_picture: bool,
}

impl Step {
    pub fn status_after(&self, before: UserStatus) -> UserStatus {
        match self.action {
            Action::Deactivate => UserStatus::Deactivated,
            Action::Delete | Action::DeactivateAndDelete => UserStatus::Deleted,
            Action::Reactivate => UserStatus::Active,
            Action::Redact | Action::UndoTransfer => before,
        }
    }

    /// The request body (without the transfer plan's absence spelled out).
    pub fn body(&self, company_id: i64, actor: i64) -> Value {
        let mut body = json!({
            "company_id": company_id,
            "user_id": self.user,
            "actor_user_id": actor,
            "action": self.action,
        });
        if let Some(plan) = &self.plan {
            body["transfer"] = plan.to_json();
        }
        if self.action == Action::Redact {
            if let Some(name) = &self.display_name {
                body["display_name"] = json!(name);
            }
            if self.remove_picture {
                body["remove_picture"] = json!(true);
            }
        }
        body
    }
}

/// A script per offboarded user: a random walk over the actions each status allows, one
/// action per user per round, until `runs` actions are scripted.
pub fn scripts(
    rng: &mut StdRng,
    leavers: &[i64],
    targets: &[i64],
    runs: usize,
) -> anyhow::Result<Vec<Vec<Step>>> {
    let mut scripts: Vec<Vec<Step>> = vec![Vec::new(); leavers.len()];
    let mut status = vec![UserStatus::Active; leavers.len()];
    let mut scripted = 0;
    while scripted < runs {
        let mut progressed = false;
        for (k, &user) in leavers.iter().enumerate() {
            if scripted == runs {
                break;
            }
            let step = match status[k] {
                UserStatus::Deleted => continue,
                UserStatus::Active if rng.random_bool(0.75) => Step {
                    user,
                    action: Action::Deactivate,
                    plan: rng.random_bool(0.85).then(|| Plan::random(rng, targets)),
                    display_name: None,
                    remove_picture: false,
                },
                UserStatus::Active => Step {
                    user,
                    action: Action::DeactivateAndDelete,
                    plan: Some(Plan::random(rng, targets)),
                    display_name: None,
                    remove_picture: false,
                },
                UserStatus::Deactivated => match rng.random_range(0..10) {
                    0..4 => Step {
                        user,
                        action: Action::Reactivate,
                        plan: None,
                        display_name: None,
                        remove_picture: false,
                    },
                    4..7 => {
                        let rename = rng.random_bool(0.7);
                        Step {
                            user,
                            action: Action::Redact,
                            plan: None,
                            display_name: rename.then(|| format!("Former colleague {user}")),
                            remove_picture: !rename || rng.random_bool(0.5),
                        }
                    }
                    _ => Step {
                        user,
                        action: Action::Delete,
                        plan: rng.random_bool(0.5).then(|| Plan::random(rng, targets)),
                        display_name: None,
                        remove_picture: false,
                    },
                },
            };
            status[k] = step.status_after(status[k]);
            scripts[k].push(step);
            scripted += 1;
            progressed = true;
        }
        anyhow::ensure!(
            progressed,
            "every offboarded user was deleted after {scripted} runs; use more --users for {runs} runs"
        );
    }
    Ok(scripts)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn scripts_have_exactly_the_runs_asked_for_and_respect_statuses() {
        let mut rng = StdRng::seed_from_u64(3);
        let leavers: Vec<i64> = (10..60).collect();
        let scripts = scripts(&mut rng, &leavers, &[1, 2, 3, 4], 130).unwrap();
        assert_eq!(scripts.iter().map(Vec::len).sum::<usize>(), 130);
        for script in &scripts {
            let mut status = UserStatus::Active;
            for step in script {
                let needs = match step.action {
                    Action::Deactivate | Action::DeactivateAndDelete => UserStatus::Active,
                    _ => UserStatus::Deactivated,
                };
                assert_eq!(status, needs, "{script:?}");
                status = step.status_after(status);
            }
        }
    }
}
