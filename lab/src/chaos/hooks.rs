//! The host's webhook receivers of the fault suite: real HTTP servers on loopback, one per
//! registered endpoint, that answer ~30 % of deliveries 500 and never answer ~5 % (the
//! deliverer's timeout, short in the suite, ends them), while workers are killed during
//! delivery. Each receiver verifies every request's Standard Webhooks signature with its
//! endpoint's secret and applies an event's effect once, deduplicating by `webhook-id`
//! as the spec asks receivers to; a delivery that comes again after its effect counts as
//! a duplicate absorbed.
//!
//! After the run, [`check`] reads the outbox: every event written reached every endpoint
//! (its delivery `succeeded` and its receiver applied it, with the body the outbox holds),
//! exactly one effect per event, no unknown event, no bad signature; and every run that
//! ended and every purge done wrote its event.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use offboard::{
    domain::{
        DeliveryStatus, RunStatus,
        webhook::{EVENT_TYPES, WebhookSecret},
    },
    outbound::signing,
};

/// The share of deliveries answered 500, and of deliveries never answered.
const FAIL: f64 = 0.30;
const HANG: f64 = 0.05;

#[derive(Default)]
struct Log {
    secret: Option<WebhookSecret>,
    requests: usize,
    failed_or_hung: usize,
    bad_signatures: usize,
    /// Effects applied per `webhook-id`, with the body the first one came with.
    effects: HashMap<String, (usize, Value)>,
    absorbed: usize,
}

/// One receiver, and the endpoint it was registered as.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub endpoint_id: Option<Uuid>,
    log: Arc<Mutex<Log>>,
}

impl Receiver {
    pub async fn start(path: &str) -> anyhow::Result<Self> {
        let log: Arc<Mutex<Log>> = Arc::default();
        let router = Router::new().fallback(receive).with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self { url: format!("http://{addr}{path}"), endpoint_id: None, log })
    }

    /// Registers the receiver as an endpoint of the company (all event types) through
    /// the API, and keeps the secret it is shown to verify what arrives.
    pub async fn register(&mut self, api: &super::api::Api, company_id: i64) -> anyhow::Result<()> {
        let body = json!({"company_id": company_id, "url": self.url,
                          "description": "offboard-lab chaos receiver"});
        let (status, answer) = api.post("/v1/webhook-endpoints", &body, None).await?;
        anyhow::ensure!(status == 201, "registering a receiver answered {status}: {answer}");
        let secret = answer["secret"].as_str().and_then(WebhookSecret::parse);
        anyhow::ensure!(secret.is_some(), "the endpoint came without a usable secret");
        self.log.lock().expect("log lock").secret = secret;
        self.endpoint_id = answer["id"].as_str().and_then(|s| s.parse().ok());
        anyhow::ensure!(self.endpoint_id.is_some(), "the endpoint came without an id");
        Ok(())
    }
}

async fn receive(
    State(log): State<Arc<Mutex<Log>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let id = header("webhook-id").to_string();
    let draw: f64 = rand::random();
    let (hang, fail) = (draw < HANG, (HANG..HANG + FAIL).contains(&draw));
    {
        let mut log = log.lock().expect("log lock");
        log.requests += 1;
        let valid = match (&log.secret, header("webhook-timestamp").parse::<i64>()) {
            (Some(secret), Ok(timestamp)) => {
                let expected = signing::sign(secret, &id, timestamp, &body);
                header("webhook-signature").split(' ').any(|s| s == expected)
            }
            _ => false,
        };
        if !valid {
            // A receiver rejects what it cannot verify; the suite reports it.
            log.bad_signatures += 1;
            return StatusCode::UNAUTHORIZED;
        }
        if hang || fail {
            log.failed_or_hung += 1;
        } else {
            let parsed = serde_json::from_slice(&body).unwrap_or(Value::Null);
            match log.effects.get_mut(&id) {
                // Seen: the effect is not applied twice.
                Some(_) => log.absorbed += 1,
                None => {
                    log.effects.insert(id, (1, parsed));
                }
            }
        }
    }
    if hang {
        std::future::pending::<()>().await;
    }
    if fail { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::NO_CONTENT }
}

/// What the receivers saw, checked against the outbox.
#[derive(Debug, Default)]
pub struct HookTally {
    pub endpoints: usize,
    pub events: usize,
    /// Delivery rows (one per event and endpoint).
    pub deliveries: usize,
    /// Requests the receivers got (every attempt that reached them).
    pub requests: usize,
    pub failed_or_hung: usize,
    /// Deliveries that came again after the receiver had applied them.
    pub duplicates_absorbed: usize,
    pub bad_signatures: usize,
}

/// Every event delivered to every receiver and applied exactly once, with the outbox's
/// body; every ended run and done purge wrote its event. Returns the tally and the
/// findings (lost, doubled, broken).
pub async fn check(
    pool: &PgPool,
    company_id: i64,
    receivers: &[Receiver],
) -> anyhow::Result<(HookTally, Vec<String>, Vec<String>, Vec<String>)> {
    let (mut lost, mut doubled, mut broken) = (Vec::new(), Vec::new(), Vec::new());
    let mut tally = HookTally { endpoints: receivers.len(), ..HookTally::default() };
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT e.id, e.type, e.payload, d.endpoint_id, d.status, d.attempts
         FROM offboard.webhook_events e JOIN offboard.webhook_deliveries d ON d.event_id = e.id
         WHERE e.company_id = $1 ORDER BY d.id",
    )
    .bind(company_id)
    .fetch_all(pool)
    .await?;
    tally.events = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM offboard.webhook_events WHERE company_id = $1",
    )
    .bind(company_id)
    .fetch_one(pool)
    .await? as usize;
    tally.deliveries = rows.len();
    // The outbox itself: each ended run and each done purge wrote its event. A run that
    // ends expired or rejected has no event of its own, so the statuses checked are the
    // finished ones the domain's event types name.
    let announced: Vec<&str> = RunStatus::ALL
        .into_iter()
        .filter(|s| s.is_finished())
        .map(|s| s.as_str())
        .filter(|s| EVENT_TYPES.contains(&format!("offboarding.{s}").as_str()))
        .collect();
    let unwritten: Vec<(String, String)> = sqlx::query_as(
        "SELECT 'run ' || r.id || ' ended ' || r.status, 'offboarding.' || r.status
         FROM offboard.runs r WHERE r.company_id = $1
           AND r.status = ANY($2)
           AND NOT EXISTS (SELECT 1 FROM offboard.webhook_events e
                           WHERE e.company_id = r.company_id AND e.type = 'offboarding.' || r.status
                             AND e.payload->'data'->>'run_id' = r.id::text)
         UNION ALL
         SELECT 'purge ' || p.id || ' done', 'private_emails.purged'
         FROM offboard.scheduled_purges p WHERE p.company_id = $1 AND p.status = 'done'
           AND NOT EXISTS (SELECT 1 FROM offboard.webhook_events e
                           WHERE e.company_id = p.company_id AND e.type = 'private_emails.purged'
                             AND e.payload->'data'->>'purge_id' = p.id::text)",
    )
    .bind(company_id)
    .bind(announced)
    .fetch_all(pool)
    .await?;
    for (what, kind) in unwritten {
        lost.push(format!("{what} without a {kind} event in the outbox"));
    }
    // The receivers' logs, locked from here on (no await below).
    let guards: Vec<(Uuid, std::sync::MutexGuard<'_, Log>)> = receivers
        .iter()
        .filter_map(|r| Some((r.endpoint_id?, r.log.lock().expect("log lock"))))
        .collect();
    let logs: HashMap<Uuid, &Log> = guards.iter().map(|(id, log)| (*id, &**log)).collect();
    judge(&rows, &logs, &mut tally, &mut lost, &mut doubled, &mut broken);
    Ok((tally, lost, doubled, broken))
}

/// One delivery row of the outbox: event id, type, payload, endpoint, status, attempts.
type Row = (Uuid, String, Value, Uuid, DeliveryStatus, i32);

/// The outbox's deliveries against what each endpoint's receiver applied.
fn judge(
    rows: &[Row],
    logs: &HashMap<Uuid, &Log>,
    tally: &mut HookTally,
    lost: &mut Vec<String>,
    doubled: &mut Vec<String>,
    broken: &mut Vec<String>,
) {
    let mut expected: HashMap<Uuid, usize> = HashMap::new();
    for (event, kind, payload, endpoint, status, attempts) in rows {
        let Some(log) = logs.get(endpoint) else {
            broken.push(format!("a delivery of event {event} to unknown endpoint {endpoint}"));
            continue;
        };
        *expected.entry(*endpoint).or_default() += 1;
        let msg = format!("msg_{}", event.simple());
        match log.effects.get(&msg) {
            _ if *status != DeliveryStatus::Succeeded => lost.push(format!(
                "event {event} ({kind}) to endpoint {endpoint}: delivery {status} after {attempts} attempts"
            )),
            None => lost.push(format!(
                "event {event} ({kind}) marked delivered to endpoint {endpoint}, never applied by its receiver"
            )),
            Some((n, _)) if *n != 1 => {
                doubled.push(format!("event {event} ({kind}) applied {n} times at {endpoint}"))
            }
            Some((_, body)) if body != payload => {
                broken.push(format!("event {event} ({kind}) arrived with another body"))
            }
            Some(_) => {}
        }
    }
    for (endpoint, log) in logs {
        tally.requests += log.requests;
        tally.failed_or_hung += log.failed_or_hung;
        tally.duplicates_absorbed += log.absorbed;
        tally.bad_signatures += log.bad_signatures;
        let known = expected.get(endpoint).copied().unwrap_or(0);
        if log.effects.len() > known {
            broken.push(format!(
                "endpoint {endpoint}'s receiver applied {} events the outbox does not hold for it",
                log.effects.len() - known
            ));
        }
    }
    if tally.bad_signatures > 0 {
        broken.push(format!("{} deliveries failed signature verification", tally.bad_signatures));
    }
}

/// Deliveries of the company not yet finished.
pub async fn unfinished(pool: &PgPool, company_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM offboard.webhook_deliveries
         WHERE company_id = $1 AND status IN ('pending', 'sending')",
    )
    .bind(company_id)
    .fetch_one(pool)
    .await
}

/// Deliveries being sent right now (by any worker).
pub async fn sending(pool: &PgPool) -> Option<i64> {
    sqlx::query_scalar("SELECT count(*) FROM offboard.webhook_deliveries WHERE status = 'sending'")
        .fetch_one(pool)
        .await
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(event: Uuid, endpoint: Uuid, status: DeliveryStatus) -> Row {
        (
            event,
            "offboarding.succeeded".into(),
            json!({"type": "offboarding.succeeded"}),
            endpoint,
            status,
            3,
        )
    }

    fn applied(events: &[Uuid]) -> Log {
        let effects = events
            .iter()
            .map(|e| (format!("msg_{}", e.simple()), (1, json!({"type": "offboarding.succeeded"}))))
            .collect();
        Log { requests: events.len() + 1, absorbed: 1, effects, ..Log::default() }
    }

    fn judged(
        rows: &[Row],
        endpoint: Uuid,
        log: &Log,
    ) -> (HookTally, Vec<String>, Vec<String>, Vec<String>) {
        let logs = HashMap::from([(endpoint, log)]);
        let (mut tally, mut lost, mut doubled, mut broken) = Default::default();
        judge(rows, &logs, &mut tally, &mut lost, &mut doubled, &mut broken);
        (tally, lost, doubled, broken)
    }

    #[test]
    fn every_event_applied_once_passes() {
        let (endpoint, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let log = applied(&[a, b]);
        let (tally, lost, doubled, broken) = judged(
            &[
                row(a, endpoint, DeliveryStatus::Succeeded),
                row(b, endpoint, DeliveryStatus::Succeeded),
            ],
            endpoint,
            &log,
        );
        assert!(lost.is_empty() && doubled.is_empty() && broken.is_empty());
        assert_eq!((tally.requests, tally.duplicates_absorbed), (3, 1));
    }

    #[test]
    fn a_failed_delivery_or_one_the_receiver_never_applied_is_lost() {
        let (endpoint, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let log = applied(&[]);
        let (_, lost, _, _) = judged(
            &[
                row(a, endpoint, DeliveryStatus::Failed),
                row(b, endpoint, DeliveryStatus::Succeeded),
            ],
            endpoint,
            &log,
        );
        assert_eq!(lost.len(), 2, "{lost:?}");
        assert!(lost[0].contains("delivery failed") && lost[1].contains("never applied"));
    }

    #[test]
    fn a_second_effect_another_body_or_a_bad_signature_is_reported() {
        let (endpoint, a) = (Uuid::new_v4(), Uuid::new_v4());
        let mut log = applied(&[a]);
        log.effects.get_mut(&format!("msg_{}", a.simple())).expect("applied").0 = 2;
        let (_, _, doubled, _) =
            judged(&[row(a, endpoint, DeliveryStatus::Succeeded)], endpoint, &log);
        assert_eq!(doubled.len(), 1);
        let mut log = applied(&[a]);
        log.effects.get_mut(&format!("msg_{}", a.simple())).expect("applied").1 = json!({});
        log.bad_signatures = 1;
        let (_, _, _, broken) =
            judged(&[row(a, endpoint, DeliveryStatus::Succeeded)], endpoint, &log);
        assert_eq!(broken.len(), 2, "{broken:?}");
    }
}
