//! The reference CRM store (schema `crm`): what offboard reads to validate requests and
//! preview a user's belongings, and the seed that fills it. Every query takes the company.

pub mod items;
pub mod preview;
pub mod seed;
pub mod users;
