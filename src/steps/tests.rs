//! The registry and the plans: every planned name maps back to its step, and a new step
//! is one file and one registry line.

use serde_json::json;

use super::{plan::plan_in, *};
use crate::domain::{Action, transfer::TransferPlan as Plan};

#[test]
fn every_step_name_maps_back_to_its_kind() {
    let plan_json = json!({"default": {"mode": "single", "targets": [{"user_id": 2}]}});
    let transfer = Plan::from_stored(&plan_json).unwrap();
    for action in Action::ALL {
        for spec in plan(action, &transfer) {
            let kind = StepKind::from_name(&spec.name).expect(&spec.name);
            assert_eq!(kind.name(), spec.name);
        }
    }
}

#[test]
fn noop_steps_are_numbered_and_never_planned() {
    let noop = StepKind::from_name("noop_7").unwrap();
    assert_eq!(noop, StepKind::of(&noop::STEP, StepArg::Number(7)));
    assert_eq!(noop.name(), "noop_7");
    assert_eq!(StepKind::from_name("noop_x"), None);
    let transfer =
        Plan::from_stored(&json!({"default": {"mode": "single", "targets": [{"user_id": 2}]}}))
            .unwrap();
    for action in Action::ALL {
        assert!(plan(action, &transfer).iter().all(|s| !s.name.starts_with("noop")));
    }
}

#[test]
fn deactivation_blocks_login_first_and_finishes_last() {
    let transfer =
        Plan::from_stored(&json!({"deals": {"mode": "single", "targets": [{"user_id": 2}]}}))
            .unwrap();
    let specs = plan(Action::Deactivate, &transfer);
    assert_eq!(specs[0].name, "block_login");
    assert!(specs[0].depends_on.is_empty());
    let last = specs.last().unwrap();
    assert_eq!(last.name, "finish_deactivation");
    assert_eq!(last.depends_on.len(), specs.len() - 1);
    assert!(specs.iter().any(|s| s.name == "reassign_deals"));
    assert!(!specs.iter().any(|s| s.name == "reassign_leads"));
    for middle in &specs[1..specs.len() - 1] {
        assert_eq!(middle.depends_on, vec!["block_login".to_string()]);
    }
}

#[test]
fn deletion_waits_for_deactivation_in_one_run() {
    let specs = plan(Action::DeactivateAndDelete, &Plan::default());
    let erase = specs.iter().find(|s| s.name == "erase_personal_data").unwrap();
    assert_eq!(erase.depends_on, vec!["finish_deactivation".to_string()]);
}

mod archive_notes {
    //! A step written as a new one would be: this module and one registry line.
    use serde_json::json;
    use sqlx::PgConnection;

    use super::super::{Finished, Progress, Stage, Step, StepContext, StepError};

    pub const STEP: Step = Step {
        name: "archive_notes",
        stage: Stage::WhileDeactivating,
        safe_to_repeat: true,
        apply: |cx, tx, _| Box::pin(apply(cx, tx)),
    };

    async fn apply(_: &StepContext<'_>, _: &mut PgConnection) -> Result<Progress, StepError> {
        Ok(Finished::with_counts(json!({"notes_archived": 0})))
    }
}

/// The registry with one more line, as a developer adding `archive_notes` writes it.
static WITH_ARCHIVE_NOTES: std::sync::LazyLock<&'static [Step]> = std::sync::LazyLock::new(|| {
    let mut registry: Vec<Step> = REGISTRY
        .iter()
        .map(|s| Step {
            name: s.name,
            stage: s.stage,
            safe_to_repeat: s.safe_to_repeat,
            apply: s.apply,
        })
        .collect();
    registry.push(archive_notes::STEP);
    Vec::leak(registry)
});

#[test]
fn a_new_step_is_one_entry_in_the_registry() {
    let registry: &'static [Step] = *WITH_ARCHIVE_NOTES;
    let specs = plan_in(registry, Action::Deactivate, &Plan::default());
    let archive = specs.iter().find(|s| s.name == "archive_notes").expect("planned");
    assert_eq!(archive.depends_on, vec!["block_login".to_string()]);
    let finish = specs.last().unwrap();
    assert_eq!(finish.name, "finish_deactivation");
    assert!(finish.depends_on.contains(&"archive_notes".to_string()));
    let kind = from_name_in(registry, "archive_notes").expect("found by name");
    assert_eq!(kind.name(), "archive_notes");
    // Not planned where its stage does not belong.
    assert!(
        !plan_in(registry, Action::Redact, &Plan::default())
            .iter()
            .any(|s| s.name == "archive_notes")
    );
    // And unknown to the real registry until its line is added.
    assert!(StepKind::from_name("archive_notes").is_none());
}

#[test]
fn every_registered_step_has_a_unique_name() {
    let mut names: Vec<&str> = REGISTRY.iter().map(|s| s.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), REGISTRY.len());
}
