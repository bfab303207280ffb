//! The calls steps make to outside systems, before their local effect:
//!
//! - `stop_syncs` revokes each of the user's OAuth grants at its provider (RFC 7009: a form
//!   POST `token=…&token_type_hint=refresh_token` with the client's HTTP Basic
//!   authentication; 200 means revoked, also for a token already revoked), then stops the
//!   syncs locally.
//! - `uninstall_apps` tells each app's vendor of the uninstall (a JSON callback signed with
//!   Standard Webhooks headers under the app's secret: install id, company id, app key;
//!   never a name or an email), then marks the installs uninstalled.
//!
//! One call, one ledger row (`offboard.outbound_calls`): an attempt of the step first
//! plans its calls ([`plan`]: a row per grant or install, in a transaction fenced by its
//! lease), then sends every call not yet `succeeded` ([`send`]: each one's intent
//! committed before it goes, the call made outside any transaction, its outcome committed
//! after — [`request`] builds what goes) and only when all succeeded may the step apply
//! its local effect. A retry of the step, after a failure or a lost worker, sends only
//! what is not recorded as succeeded.
//!
//! Failures: 5xx, 408, 429 and no answer (timeout, connection) are worth another attempt
//! of the step, with backoff and no sooner than a `Retry-After`; any other answer is
//! permanent: the step is dead, its error naming the destination host and status (never a
//! URL or a token), and an operator's retry sends only the calls that failed.
//!
//! Isolation per destination host: calls in flight, shared fairly between companies, and
//! a token bucket per process ([`crate::outbound::limits`]), and a breaker shared by every
//! process (the ledger's `outbound_hosts`). None of them waits: a step takes what slots of
//! each host its company may have now and sends that host's calls over them (one after
//! another when it has more calls than slots); a host that gives it none, a spent bucket
//! or an open breaker leaves the step re-scheduled for when it may (the attempt given
//! back), while its calls to other hosts go on.
//!
//! This module never imports steps or api: the executor turns a [`CallsEnd`] into the
//! step's outcome.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    config::OutboundSettings,
    domain::{CallStatus, StepKey},
    ledger::{
        calls::{self, CallRow},
        steps,
    },
    outbound::{
        client::Client,
        limits::{HostLimits, Slot},
    },
};

mod plan;
mod request;
mod send;

pub use plan::{Subject, plan};
pub use request::classify;
use send::{Sent, waiting};

pub use crate::domain::CallKind;

impl CallKind {
    /// The calls the step of this name makes, if any.
    pub fn of_step(name: &str) -> Option<Self> {
        match name {
            "stop_syncs" => Some(CallKind::RevokeGrant),
            "uninstall_apps" => Some(CallKind::UninstallCallback),
            _ => None,
        }
    }

    fn what(self) -> &'static str {
        match self {
            CallKind::RevokeGrant => "revocation of the grant of account sync",
            CallKind::UninstallCallback => "uninstall callback of app install",
        }
    }
}

/// How the calls of a step's attempt went.
#[derive(Debug)]
pub enum CallsEnd {
    /// Every call succeeded: the local effect may be applied.
    Done,
    /// The step's lease was lost before the calls were planned.
    LeaseLost,
    /// Some call failed or may not go yet.
    Failed(CallsFailure),
}

/// Why a step's calls did not all succeed: a stable code and a message naming hosts,
/// statuses and ids only.
#[derive(Debug)]
pub struct CallsFailure {
    pub code: &'static str,
    pub message: String,
    pub retry: Retry,
}

/// Whether another attempt of the step can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A permanent answer: only an operator's retry sends the call again.
    Never,
    /// Try again no sooner than `pause`; `counted: false` when nothing was attempted (a
    /// host's slots, bucket or breaker) and the attempt is given back.
    After { pause: Duration, counted: bool },
}

/// The engine: one per worker process.
pub struct Outside {
    pool: PgPool,
    client: Client,
    settings: OutboundSettings,
    limits: HostLimits,
}

impl Outside {
    pub fn new(pool: PgPool, settings: OutboundSettings) -> anyhow::Result<Self> {
        let client = Client::with_agent(
            settings.timeout,
            settings.allow_private,
            concat!("offboard/", env!("CARGO_PKG_VERSION")),
        )?;
        let limits = HostLimits::new(
            settings.max_in_flight_per_host,
            settings.rate_per_host,
            settings.burst_per_host,
        );
        Ok(Self { pool, client, settings, limits })
    }

    /// The calls of one attempt of the step: planned (fenced by the lease), then every one
    /// not yet succeeded sent, each host's over the slots its company may have now.
    pub async fn run(
        &self,
        kind: CallKind,
        subject: Subject,
        step_id: StepKey,
        token: Uuid,
        lease: Duration,
    ) -> Result<CallsEnd, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        if steps::fence(&mut tx, step_id, token, lease).await?.is_none() {
            return Ok(CallsEnd::LeaseLost);
        }
        plan(&mut tx, kind, subject, step_id).await?;
        let planned = calls::of_step(&mut tx, step_id).await?;
        calls::record_step_progress(&mut tx, step_id, token).await?;
        tx.commit().await?;
        let todo: Vec<&CallRow> =
            planned.iter().filter(|c| c.status != CallStatus::Succeeded).collect();
        if todo.is_empty() {
            return Ok(CallsEnd::Done);
        }
        // By host, in planning order; each host's calls over the slots granted now.
        let mut hosts: Vec<(&str, Vec<&CallRow>)> = Vec::new();
        for call in todo {
            match hosts.iter_mut().find(|(h, _)| *h == call.host) {
                Some((_, calls)) => calls.push(call),
                None => hosts.push((call.host.as_str(), vec![call])),
            }
        }
        let mut sent = Vec::new();
        let mut lanes = Vec::new();
        for (host, calls) in hosts {
            match self.limits.try_slots(host, subject.company_id, calls.len()) {
                Err(no_room) => sent.extend(calls.iter().map(|_| waiting(host, no_room))),
                Ok(slots) => {
                    let k = slots.len();
                    for (i, slot) in slots.into_iter().enumerate() {
                        let mine: Vec<&CallRow> =
                            calls.iter().skip(i).step_by(k).copied().collect();
                        lanes.push(self.lane(kind, slot, mine, step_id, token));
                    }
                }
            }
        }
        for lane in futures::future::join_all(lanes).await {
            sent.extend(lane?);
        }
        Ok(conclude(sent))
    }

    /// One slot's calls, one after another; after one that did not succeed the rest wait
    /// for the step's next attempt (a host that failed one call is not asked again at once).
    async fn lane(
        &self,
        kind: CallKind,
        slot: Slot,
        calls: Vec<&CallRow>,
        step_id: StepKey,
        token: Uuid,
    ) -> Result<Vec<Sent>, sqlx::Error> {
        let _slot = slot;
        let mut sent = Vec::with_capacity(calls.len());
        for call in calls {
            let s = self.one(kind, call, step_id, token).await?;
            let go_on = matches!(s, Sent::Succeeded);
            sent.push(s);
            if !go_on {
                break;
            }
        }
        Ok(sent)
    }
}

/// The step's end from its calls': permanent over retry over waiting.
fn conclude(sent: Vec<Sent>) -> CallsEnd {
    let mut dead = Vec::new();
    let mut retry = Vec::new();
    let mut waiting = Vec::new();
    let mut retry_after = Duration::ZERO;
    for s in sent {
        match s {
            Sent::Succeeded => {}
            Sent::Dead { message } => dead.push(message),
            Sent::Retry { message, retry_after: after } => {
                retry_after = retry_after.max(after.unwrap_or_default());
                retry.push(message);
            }
            Sent::Waiting { message, pause } => waiting.push((message, pause)),
        }
    }
    let summary = |messages: &[String]| match messages.len() {
        1 => messages[0].clone(),
        n => format!("{} (and {} more)", messages[0], n - 1),
    };
    if !dead.is_empty() {
        CallsEnd::Failed(CallsFailure {
            code: "outside_rejected",
            message: summary(&dead),
            retry: Retry::Never,
        })
    } else if !retry.is_empty() {
        CallsEnd::Failed(CallsFailure {
            code: "outside_unavailable",
            message: summary(&retry),
            retry: Retry::After { pause: retry_after, counted: true },
        })
    } else if !waiting.is_empty() {
        let pause = waiting.iter().map(|(_, p)| *p).min().unwrap_or_default();
        let messages: Vec<String> = waiting.into_iter().map(|(m, _)| m).collect();
        CallsEnd::Failed(CallsFailure {
            code: "outside_waiting",
            message: summary(&messages),
            retry: Retry::After { pause, counted: false },
        })
    } else {
        CallsEnd::Done
    }
}
