//! Fault injection for drills and tests: faults queued per step name, each call of the step
//! takes the next one. Empty in normal operation; filled from `OFFBOARD_FAULTS` (a
//! [`FaultSpec`] list in the settings) or by tests.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use crate::{
    config::{FaultKind, FaultSpec},
    steps::StepError,
};

/// A fault injected into a named step, for the fault suite, the browser test and tests.
#[derive(Debug)]
pub enum Fault {
    Fail(StepError),
    /// Abort the whole process after the claim: a step that kills its worker.
    Crash,
}

impl Fault {
    fn of(kind: FaultKind) -> Self {
        match kind {
            FaultKind::Retryable => {
                Fault::Fail(StepError::retryable("injected", "injected retryable fault"))
            }
            FaultKind::Permanent => {
                Fault::Fail(StepError::permanent("injected", "injected permanent fault"))
            }
            FaultKind::Crash => Fault::Crash,
        }
    }
}

/// Faults to inject: each call of the named step takes the next one.
#[derive(Debug, Default)]
pub struct Faults {
    queued: Mutex<HashMap<String, VecDeque<Fault>>>,
}

impl Faults {
    pub fn from_specs(specs: &[FaultSpec]) -> Self {
        let faults = Faults::default();
        for spec in specs {
            for _ in 0..spec.times {
                faults.inject(&spec.step, Fault::of(spec.kind));
            }
        }
        faults
    }

    pub fn inject(&self, step: &str, fault: Fault) {
        self.queued
            .lock()
            .expect("faults lock")
            .entry(step.to_string())
            .or_default()
            .push_back(fault);
    }

    pub(crate) fn take(&self, step: &str) -> Option<Fault> {
        let mut queued = self.queued.lock().expect("faults lock");
        queued.get_mut(step).and_then(VecDeque::pop_front)
    }
}
