//! An action's plan: which registered steps it takes, and what each waits on.

use super::{
    REGISTRY, Stage, Step, StepArg, StepKind, block_login, erase_personal_data,
    finish_deactivation, reactivate_user, redact_profile, undo_transfer,
};
use crate::domain::{Action, TransferPlan};

/// A step as the ledger records it when a run is enqueued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepSpec {
    pub name: String,
    pub depends_on: Vec<String>,
}

/// The steps an action takes, with their dependencies. Login is blocked first so no new
/// data arrives; everything else a deactivation does runs concurrently after it; the
/// user is marked deactivated last; deletion starts only once deactivation has finished.
pub fn plan(action: Action, transfer: &TransferPlan) -> Vec<StepSpec> {
    plan_in(REGISTRY, action, transfer)
}

pub(super) fn plan_in(
    registry: &'static [Step],
    action: Action,
    transfer: &TransferPlan,
) -> Vec<StepSpec> {
    let fixed = |step: &'static Step| StepKind::of(step, StepArg::None).name();
    let spec = |name: String, deps: &[String]| StepSpec { name, depends_on: deps.to_vec() };
    let in_stage = |stage: Stage| registry.iter().filter(move |s| s.stage == stage);
    let per_item: Vec<String> = in_stage(Stage::PerItemType)
        .flat_map(|step| {
            transfer.item_types().into_iter().map(|item| StepKind::of(step, StepArg::Item(item)))
        })
        .map(StepKind::name)
        .collect();

    let deactivation = |specs: &mut Vec<StepSpec>| {
        let blocked = [fixed(&block_login::STEP)];
        specs.push(spec(fixed(&block_login::STEP), &[]));
        let alongside = in_stage(Stage::WhileDeactivating).map(fixed).chain(per_item.clone());
        for name in alongside {
            specs.push(spec(name, &blocked));
        }
        let all_before: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        specs.push(spec(fixed(&finish_deactivation::STEP), &all_before));
    };

    let mut specs = Vec::new();
    match action {
        Action::Deactivate => deactivation(&mut specs),
        Action::DeactivateAndDelete => {
            deactivation(&mut specs);
            specs.push(spec(
                fixed(&erase_personal_data::STEP),
                &[fixed(&finish_deactivation::STEP)],
            ));
        }
        Action::Delete => {
            for name in &per_item {
                specs.push(spec(name.clone(), &[]));
            }
            let before: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
            specs.push(spec(fixed(&erase_personal_data::STEP), &before));
        }
        Action::Redact => specs.push(spec(fixed(&redact_profile::STEP), &[])),
        Action::Reactivate => specs.push(spec(fixed(&reactivate_user::STEP), &[])),
        Action::UndoTransfer => specs.push(spec(fixed(&undo_transfer::STEP), &[])),
    }
    specs
}
