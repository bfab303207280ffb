//! A bulk operator action (`offboard.bulk_operations`): a retry or a cancel of every run a
//! filter matches, worked through chunk by chunk until it has succeeded.

use super::text_enum::text_enum;

text_enum! {
    pub enum BulkKind("bulk action") {
        Retry = "retry",
        Cancel = "cancel",
    }
}

text_enum! {
    pub enum BulkStatus("bulk action status") {
        Running = "running",
        Succeeded = "succeeded",
    }
}
