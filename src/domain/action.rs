//! What an offboarding run does to its user.

use super::{UserStatus, text_enum::text_enum};

text_enum! {
    pub enum Action("action") {
        /// Block login, stop syncs, hand over what others rely on, free the seat.
        Deactivate = "deactivate",
        /// Erase the personal data of a user who is already deactivated. Irreversible.
        Delete = "delete",
        /// Both, in one run: the deletion steps start after the deactivation finished.
        DeactivateAndDelete = "deactivate_and_delete",
        /// Rename and/or remove the picture of a deactivated user, keeping the user.
        Redact = "redact",
        /// Give a deactivated user a seat again and cancel the private-email purge.
        Reactivate = "reactivate",
        /// Give back what an earlier run transferred, to the reactivated user or another one
        /// (`POST /v1/offboardings/{id}/undo-transfer`; never a request of its own).
        UndoTransfer = "undo_transfer",
    }
}

impl Action {
    /// The user status an action starts from.
    pub fn required_status(self) -> UserStatus {
        match self {
            Action::Deactivate | Action::DeactivateAndDelete => UserStatus::Active,
            Action::Delete | Action::Redact | Action::Reactivate => UserStatus::Deactivated,
            // Only checked when an undo is asked for: the user, unless another is named.
            Action::UndoTransfer => UserStatus::Active,
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
