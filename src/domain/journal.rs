//! What the transfer journal records: the kinds of items a run hands to someone else, and
//! where each keeps its owner. The reassignments journal every item type of the plan; the
//! hand-overs journal shared dashboards (to an admin) and LeadBooster's chatbot playbooks
//! and web forms (their responsible user). Automations are not journaled: the run turns
//! the user's off and flags others for review, but never changes who owns one. Open live
//! chats lose their operator (the team picks them up): nobody owns them, so nothing is
//! given back.

use super::ItemType;

/// A kind of item the journal records and an undo gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournaledKind {
    /// The journal's `item_type` and the key in previews and receipts.
    pub key: &'static str,
    /// The CRM table (a fixed name, never user input).
    pub table: &'static str,
    /// The column naming the owner.
    pub owner_column: &'static str,
}

const fn item(item: ItemType, key: &'static str, table: &'static str) -> JournaledKind {
    // `item` only documents which item type the entry is.
    let _ = item;
    JournaledKind { key, table, owner_column: "owner_id" }
}

/// Every journaled kind, the item types first in [`ItemType::ALL`]'s order.
pub const JOURNALED: [JournaledKind; 10] = [
    item(ItemType::Leads, "leads", "crm.leads"),
    item(ItemType::Deals, "deals", "crm.deals"),
    item(ItemType::Contacts, "contacts", "crm.persons"),
    item(ItemType::Products, "products", "crm.products"),
    item(ItemType::Activities, "activities", "crm.activities"),
    item(ItemType::Projects, "projects", "crm.projects"),
    item(ItemType::ProjectTasks, "project_tasks", "crm.project_tasks"),
    JournaledKind { key: "dashboards", table: "crm.dashboards", owner_column: "owner_id" },
    JournaledKind {
        key: "chatbot_playbooks",
        table: "crm.chatbot_playbooks",
        owner_column: "responsible_user_id",
    },
    JournaledKind { key: "web_forms", table: "crm.web_forms", owner_column: "responsible_user_id" },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_type_is_journaled_under_its_own_key_and_table() {
        for (kind, item) in JOURNALED.iter().zip(ItemType::ALL) {
            assert_eq!(kind.key, item.key());
            assert_eq!(kind.table, item.table());
        }
        let mut keys: Vec<&str> = JOURNALED.iter().map(|k| k.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), JOURNALED.len());
    }
}
