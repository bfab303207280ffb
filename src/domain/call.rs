//! A step's call to an outside system (`offboard.outbound_calls`): what it is, and where it
//! is — pending (intent committed), sending (in flight), succeeded, failed (retried later)
//! or dead (a permanent refusal; an operator retry puts it back).

use super::text_enum::text_enum;

text_enum! {
    pub enum CallKind("call kind") {
        /// An RFC 7009 revocation of an OAuth grant at its provider.
        RevokeGrant = "revoke_grant",
        /// A marketplace app vendor's uninstall callback.
        UninstallCallback = "uninstall_callback",
    }
}

text_enum! {
    /// A destination host's breaker (`offboard.outbound_hosts`, read from `open_until`):
    /// closed, open (calls wait out the pause), or half-open (the pause is over; the next
    /// call probes).
    pub enum BreakerState("breaker state") {
        Closed = "closed",
        Open = "open",
        HalfOpen = "half_open",
    }
}

text_enum! {
    pub enum CallStatus("call status") {
        Pending = "pending",
        Sending = "sending",
        Succeeded = "succeeded",
        Failed = "failed",
        Dead = "dead",
    }
}
