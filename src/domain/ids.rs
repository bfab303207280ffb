//! Identifiers. Users and companies are referred to by id everywhere outside the CRM store,
//! which is what keeps personal data out of the ledger, logs and metrics.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("The id of a ", $what, " in the CRM store (always positive).")]
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            pub fn new(raw: i64) -> Option<Self> {
                (raw > 0).then_some(Self(raw))
            }

            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(CompanyId, "company");
id_type!(UserId, "user");

/// A step of a run: the run and the step's place in the run's plan (the ledger's primary
/// key for steps). Tasks, leases and outside calls name a step by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StepKey {
    pub run_id: uuid::Uuid,
    pub position: i32,
}

impl StepKey {
    pub fn new(run_id: uuid::Uuid, position: i32) -> Self {
        Self { run_id, position }
    }
}

impl fmt::Display for StepKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.run_id, self.position)
    }
}
