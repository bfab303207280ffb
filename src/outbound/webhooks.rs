//! The deliverer of host webhooks. It claims due deliveries from the ledger (the outbox:
//! rows written by the transaction that changed state), signs each at send time, sends
//! it through the guarded [`Client`], and records the outcome — never inside a database
//! transaction. Every delivery runs on its own task within the process' slots, and a claim
//! takes at most `OFFBOARD_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT` deliveries of one endpoint,
//! so a hanging endpoint holds only its own slots and never delays another's deliveries
//! (nor any step: deliveries never run on the step workers).
//!
//! Redis carries nothing here: the deliverer wakes on PostgreSQL's `NOTIFY` from the
//! transaction that wrote a delivery, and polls besides. A flushed Redis cannot touch a
//! delivery; a killed deliverer leaves its deliveries `sending` until their lease expires,
//! and they are sent again (receivers dedupe by `webhook-id`).

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::{
    sync::{Notify, Semaphore},
    task::JoinSet,
};

use super::{
    client::{Answer, Body, Call, Client},
    schedule, signing,
};
use crate::{
    config::WebhookSettings,
    domain::webhook::WebhookSecret,
    ledger::webhooks::{self as ledger, AttemptRecord, Breaker, ClaimLimits, Claimed, Next},
    metrics::METRICS,
    shutdown::Shutdown,
};

/// The channel the ledger's triggers notify when they write a delivery.
pub const CHANNEL: &str = "offboard_webhooks";

pub struct Deliverer {
    pool: PgPool,
    client: Client,
    settings: WebhookSettings,
    slots: Arc<Semaphore>,
    wake: Arc<Notify>,
}

impl Deliverer {
    pub fn new(pool: PgPool, settings: WebhookSettings) -> anyhow::Result<Self> {
        let client = Client::new(settings.timeout, settings.allow_private)?;
        let slots = Arc::new(Semaphore::new(settings.concurrency));
        Ok(Self { pool, client, settings, slots, wake: Arc::new(Notify::new()) })
    }

    /// How long a claim lasts: longer than any attempt can take.
    fn lease(&self) -> Duration {
        self.settings.timeout * 2 + Duration::from_secs(5)
    }

    /// Claims what is due and may go now, within the free slots.
    pub async fn claim(&self) -> Result<Vec<Claimed>, sqlx::Error> {
        ledger::claim_due(
            &self.pool,
            ClaimLimits {
                max: self.slots.available_permits() as i64,
                per_endpoint: self.settings.max_in_flight_per_endpoint,
                lease: self.lease(),
            },
        )
        .await
    }

    /// Runs until `shutdown`; deliveries in flight then get one timeout to finish (what
    /// does not is sent again after its lease expires).
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let listener = tokio::spawn(crate::nudge::listen(
            self.pool.clone(),
            CHANNEL,
            self.wake.clone(),
            shutdown.clone(),
        ));
        let mut tasks = JoinSet::new();
        let mut last_reap = tokio::time::Instant::now();
        loop {
            if last_reap.elapsed() >= Duration::from_secs(1) {
                last_reap = tokio::time::Instant::now();
                match ledger::reap_expired(&self.pool).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        deliveries = n,
                        "deliveries whose deliverer was lost are due again"
                    ),
                    Err(e) => tracing::warn!(error = %e, "reaping lost deliveries failed"),
                }
            }
            let claimed = match self.claim().await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming deliveries failed; will retry");
                    Vec::new()
                }
            };
            let any = !claimed.is_empty();
            for delivery in claimed {
                let Ok(permit) = self.slots.clone().acquire_owned().await else { break };
                let this = self.clone();
                tasks.spawn(async move {
                    this.deliver(&delivery).await;
                    drop(permit);
                    this.wake.notify_one();
                });
            }
            while tasks.try_join_next().is_some() {}
            if any {
                continue;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
                _ = shutdown.wait() => break,
            }
        }
        listener.abort();
        let drained = tokio::time::timeout(self.settings.timeout + Duration::from_secs(1), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "deliveries still in flight at shutdown are sent again after their lease"
            );
        }
    }

    /// Signs and sends one claimed delivery, and records how it went. Returns what the
    /// ledger was told.
    pub async fn deliver(&self, delivery: &Claimed) -> Next {
        let secrets: Vec<WebhookSecret> = std::iter::once(delivery.secret.as_str())
            .chain(delivery.previous_secret.as_deref())
            .filter_map(WebhookSecret::parse)
            .collect();
        let msg_id = format!("msg_{}", delivery.event_id.simple());
        let timestamp = chrono::Utc::now().timestamp();
        let headers = signing::headers(&secrets, &msg_id, timestamp, delivery.payload.as_bytes());
        let answer = self
            .client
            .post(Call {
                url: &delivery.url,
                headers: headers.into_iter().collect(),
                body: Body::Json(delivery.payload.clone()),
            })
            .await;
        let next = self.next(delivery, &answer);
        let outcome = match next {
            Next::Succeeded => "succeeded",
            Next::Gone => "gone",
            Next::RetryIn(_) => "retry",
            Next::Exhausted => "failed",
        };
        METRICS.webhook_attempt(&delivery.endpoint_id.to_string(), outcome, answer.latency);
        let record = AttemptRecord {
            status_code: answer.status,
            error: answer.error.as_deref(),
            latency: answer.latency,
        };
        let breaker =
            Breaker { after: self.settings.breaker_after, pause: self.settings.breaker_pause };
        match ledger::record_attempt(&self.pool, delivery, &record, next, breaker).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(delivery_id = delivery.id, "delivery's claim was lost; not recorded")
            }
            // The claim expires and the delivery is sent again.
            Err(e) => {
                tracing::warn!(delivery_id = delivery.id, error = %e, "recording a delivery failed")
            }
        }
        tracing::debug!(
            delivery_id = delivery.id,
            endpoint_id = %delivery.endpoint_id,
            attempt = delivery.attempts,
            status = answer.status,
            error = answer.error.as_deref(),
            took_ms = answer.latency.as_millis() as u64,
            outcome,
            "webhook attempt"
        );
        next
    }

    fn next(&self, delivery: &Claimed, answer: &Answer) -> Next {
        if answer.succeeded() {
            return Next::Succeeded;
        }
        if answer.status == Some(410) {
            tracing::warn!(endpoint_id = %delivery.endpoint_id, "endpoint answered 410 Gone; disabled");
            return Next::Gone;
        }
        match schedule::next_pause(
            &self.settings.retry_schedule,
            delivery.attempts,
            answer.retry_after,
            &mut rand::rng(),
        ) {
            Some(pause) => Next::RetryIn(pause),
            None => {
                tracing::warn!(delivery_id = delivery.id, endpoint_id = %delivery.endpoint_id,
                               "delivery used up its retry schedule; failed");
                Next::Exhausted
            }
        }
    }
}
