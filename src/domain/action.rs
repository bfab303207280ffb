//! What an offboarding run does to its user.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Block login, stop syncs, hand over what others rely on, free the seat.
    Deactivate,
    /// Erase the personal data of a user who is already deactivated. Irreversible.
    Delete,
    /// Both, in one run: the deletion steps start after the deactivation finished.
    DeactivateAndDelete,
    /// Rename and/or remove the picture of a deactivated user, keeping the user.
    Redact,
    /// Give a deactivated user a seat again and cancel the private-email purge.
    Reactivate,
    /// Give back what an earlier run transferred, to the reactivated user or another one
    /// (`POST /v1/offboardings/{id}/undo-transfer`; never a request of its own).
    UndoTransfer,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::Deactivate,
        Action::Delete,
        Action::DeactivateAndDelete,
        Action::Redact,
        Action::Reactivate,
        Action::UndoTransfer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deactivate => "deactivate",
            Action::Delete => "delete",
            Action::DeactivateAndDelete => "deactivate_and_delete",
            Action::Redact => "redact",
            Action::Reactivate => "reactivate",
            Action::UndoTransfer => "undo_transfer",
        }
    }

    /// The user status an action starts from.
    pub fn required_status(self) -> &'static str {
        match self {
            Action::Deactivate | Action::DeactivateAndDelete => "active",
            Action::Delete | Action::Redact | Action::Reactivate => "deactivated",
            // Only checked when an undo is asked for: the user, unless another is named.
            Action::UndoTransfer => "active",
        }
    }

    /// Whether the action takes the user out of the active set (and so must leave an admin).
    pub fn deactivates(self) -> bool {
        matches!(self, Action::Deactivate | Action::DeactivateAndDelete)
    }

    /// Whether a host may ask for the action in `POST /v1/offboardings` (an undo is asked
    /// for on the run it undoes).
    pub fn requestable(self) -> bool {
        !matches!(self, Action::UndoTransfer)
    }

    /// Whether the action's runs move items to other users (and journal them).
    pub fn transfers(self) -> bool {
        matches!(self, Action::Deactivate | Action::Delete | Action::DeactivateAndDelete)
    }

    /// Whether a transfer plan makes sense for the action.
    pub fn accepts_transfer(self) -> bool {
        matches!(self, Action::Deactivate | Action::Delete | Action::DeactivateAndDelete)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| {
            format!(
                "unknown action {s:?}; expected one of {}",
                Action::ALL.map(Action::as_str).join(", ")
            )
        })
    }
}
