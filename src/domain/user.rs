//! A CRM user's role and status (`crm.users.role`, `crm.users.status`), as the rules of
//! offboarding read them: who is an admin (the last one may not leave), and who is active,
//! deactivated or deleted (the status an action starts from).

use super::text_enum::text_enum;

text_enum! {
    pub enum UserRole("user role") {
        Admin = "admin",
        Regular = "regular",
    }
}

text_enum! {
    pub enum UserStatus("user status") {
        /// Holds a seat and may log in.
        Active = "active",
        /// Keeps their data, holds no seat, cannot log in.
        Deactivated = "deactivated",
        /// Personal data erased (final).
        Deleted = "deleted",
    }
}
