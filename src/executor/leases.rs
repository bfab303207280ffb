//! The leases and group transactions this process holds: what the lease renewer renews
//! and what a graceful shutdown waits for.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use uuid::Uuid;

/// Lease tokens of the steps this process is running, each with its attempt's deadline,
/// renewed in the background while inside it, and the group transactions it has open
/// (their steps are locked, not leased): what a graceful shutdown waits for.
#[derive(Debug, Default)]
pub struct Leases {
    tokens: Mutex<HashMap<Uuid, Instant>>,
    groups: std::sync::atomic::AtomicUsize,
}

impl Leases {
    /// The leases to renew: those of attempts still inside their deadline. An attempt past
    /// it (hung in a statement the server has not yet timed out, say) lets its lease
    /// expire, and the sweeper takes the step back.
    pub fn snapshot(&self) -> Vec<Uuid> {
        let now = Instant::now();
        let tokens = self.tokens.lock().expect("leases lock");
        tokens.iter().filter(|(_, deadline)| **deadline > now).map(|(t, _)| *t).collect()
    }

    /// Steps leased plus group transactions open.
    pub fn running(&self) -> usize {
        self.tokens.lock().expect("leases lock").len()
            + self.groups.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(super) fn hold(self: &Arc<Self>, token: Uuid, deadline: Instant) -> LeaseGuard {
        self.tokens.lock().expect("leases lock").insert(token, deadline);
        LeaseGuard { leases: self.clone(), held: Held::Token(token) }
    }

    pub(super) fn hold_group(self: &Arc<Self>) -> LeaseGuard {
        self.groups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        LeaseGuard { leases: self.clone(), held: Held::Group }
    }
}

enum Held {
    Token(Uuid),
    Group,
}

pub(super) struct LeaseGuard {
    leases: Arc<Leases>,
    held: Held,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        match self.held {
            Held::Token(token) => {
                self.leases.tokens.lock().expect("leases lock").remove(&token);
            }
            Held::Group => {
                self.leases.groups.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}
