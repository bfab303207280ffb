//! Host webhooks against real HTTP receivers on loopback: every event type arrives signed
//! (Standard Webhooks), retries keep the `webhook-id`, 410 disables, an exhausted schedule
//! fails and flags, a hanging endpoint delays no other, a rotation signs twice, a lost
//! deliverer delays a delivery but never drops it, and the outbox is written with the
//! state change or not at all.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode},
    response::IntoResponse,
};
use offboard::{
    api::{self, AppState},
    config::DEV_TOKEN,
    crm::seed::SeedOptions,
    domain::webhook::WebhookSecret,
    faults::Fault,
    ledger::webhooks::{self as ledger, ClaimLimits},
    outbound::signing,
    shutdown::Shutdown,
    steps::{
        StepError,
        private_email_purge::{self, FiredBy},
    },
};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{DEADLINE, TestApp, database_url_of, test_settings};

/// Short schedule, private loopback receivers allowed.
const HOOKS: &[(&str, &str)] = &[
    ("OFFBOARD_WEBHOOK_ALLOW_PRIVATE", "1"),
    ("OFFBOARD_WEBHOOK_RETRY_SCHEDULE", "50ms,50ms,50ms"),
    ("OFFBOARD_WEBHOOK_TIMEOUT", "1s"),
    ("OFFBOARD_WEBHOOK_POLL_INTERVAL", "50ms"),
    ("OFFBOARD_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT", "2"),
    ("OFFBOARD_PRIVATE_EMAIL_RETENTION", "1s"),
];

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// How a receiver answers its n-th request (0-based).
type Script = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

#[derive(Clone, Copy)]
enum Reply {
    Status(u16),
    /// Never answers.
    Hang,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(script: Script) -> Self {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let state = (got.clone(), script);
        let router = Router::new().route("/hook", axum::routing::post(receive)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url: format!("http://{addr}/hook"), got }
    }

    async fn answering(status: u16) -> Self {
        Self::start(Arc::new(move |_| Reply::Status(status))).await
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Polls until `done` holds for what arrived, or the deadline.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{what}: not within {DEADLINE:?}; got {}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    State((got, script)): State<(Arc<Mutex<Vec<Received>>>, Script)>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let n = {
        let mut got = got.lock().unwrap();
        got.push(Received { headers, body, at: Instant::now() });
        got.len() - 1
    };
    match script(n) {
        Reply::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Reply::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
    }
}

/// Whether every signature in the header is valid for `secret`'s, and one of them is.
fn signed_by(r: &Received, secret: &str) -> bool {
    let secret = WebhookSecret::parse(secret).unwrap();
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    let expected = signing::sign(&secret, r.header("webhook-id"), ts, &r.body);
    r.header("webhook-signature").split(' ').any(|s| s == expected)
}

/// Registers an endpoint through the API; returns (id, secret).
async fn register(app: &TestApp, company: i64, url: &str, events: Value) -> (Uuid, String) {
    let (status, body) = app
        .post(
            "/v1/webhook-endpoints",
            &json!({"company_id": company, "url": url, "events": events, "description": "test"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let secret = body["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    (body["id"].as_str().unwrap().parse().unwrap(), secret)
}

/// Runs the app's deliverer until the returned shutdown is triggered.
fn start_deliverer(app: &TestApp) -> Shutdown {
    let shutdown = Shutdown::new();
    tokio::spawn(app.workers.deliverer.clone().run(shutdown.clone()));
    shutdown
}

/// Writes an event as the ledger's triggers do.
async fn emit(pool: &PgPool, company: i64, kind: &str, data: Value) {
    sqlx::query("SELECT offboard.emit_webhook_event($1, $2, $3)")
        .bind(company)
        .bind(kind)
        .bind(data)
        .execute(pool)
        .await
        .unwrap();
}

/// The oldest delivery to `endpoint`.
async fn delivery_of(app: &TestApp, endpoint: Uuid) -> Value {
    let (status, body) = app.get(&format!("/v1/webhook-deliveries?endpoint_id={endpoint}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["deliveries"].as_array().and_then(|d| d.last()).cloned().expect("a delivery")
}

async fn wait_for_delivery(app: &TestApp, endpoint: Uuid, status: &str) -> Value {
    let started = Instant::now();
    loop {
        let d = delivery_of(app, endpoint).await;
        if d["status"] == status {
            return d;
        }
        assert!(started.elapsed() < DEADLINE, "delivery never became {status}: {d}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test]
async fn every_event_type_reaches_the_receiver_signed_with_ids_and_counts_only(pool: PgPool) {
    let app =
        TestApp::with(pool, HOOKS, SeedOptions { users: 8, items_per_user: 40, seed: 7 }).await;
    let receiver = Receiver::answering(204).await;
    let (endpoint, secret) = register(&app, app.company.company_id, &receiver.url, json!([])).await;
    let stop = start_deliverer(&app);

    // A deactivation that splits its items between two recipients: succeeded, one
    // items.transferred per recipient, and (after the retention) private_emails.purged.
    let user = app.regular(0);
    let (a, b) = (app.regular(1), app.regular(2));
    let run = app
        .enqueue(&app.deactivation(
            user,
            json!({"default": {"mode": "ratio", "targets": [{"user_id": a, "weight": 1}, {"user_id": b, "weight": 1}]}}),
        ))
        .await;
    app.drain().await;
    let receipt = app.run(run).await["receipt"].clone();
    let purge: i64 =
        sqlx::query_scalar("SELECT id FROM offboard.scheduled_purges WHERE user_id = $1")
            .bind(user)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let started = Instant::now();
    // Fires once due (a 1 s retention).
    while private_email_purge::fire(&app.pool, purge, FiredBy::Sweeper).await.unwrap().is_none() {
        assert!(started.elapsed() < DEADLINE, "the purge never came due");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A step that dies: step_dead and failed; then canceled by an operator.
    app.workers
        .executor
        .faults
        .inject("stop_syncs", Fault::Fail(StepError::permanent("provider_refused", "injected")));
    let doomed = app.regular(3);
    let failing = app
        .enqueue(&app.deactivation(
            doomed,
            json!({"default": {"mode": "single", "targets": [{"user_id": a}]}}),
        ))
        .await;
    app.drain().await;
    let (status, body) = app.post(&format!("/v1/offboardings/{failing}/cancel"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The canceled run's reassignments that finished before the step died are told too.
    let canceled_receipt = app.run(failing).await["receipt"].clone();
    let mut canceled_recipients: Vec<String> = canceled_receipt["reassigned"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(|r| r["to"].as_object().cloned().unwrap_or_default())
        .filter(|(_, n)| n.as_i64() > Some(0))
        .map(|(user, _)| user)
        .collect();
    canceled_recipients.sort();
    canceled_recipients.dedup();
    // Each run's uninstalled apps are told too (app.uninstalled, one per install).
    let uninstalled = app
        .count("SELECT count(*) FROM offboard.webhook_events WHERE type = 'app.uninstalled'")
        .await as usize;
    assert!(uninstalled > 0);
    let expected = 7 + canceled_recipients.len() + uninstalled;
    let got = receiver.wait_for("every event", |got| got.len() >= expected).await;
    let mut types: Vec<String> =
        got.iter().map(|r| r.json()["type"].as_str().unwrap().to_string()).collect();
    types.sort();
    types.dedup();
    assert_eq!(
        types,
        vec![
            "app.uninstalled",
            "items.transferred",
            "offboarding.canceled",
            "offboarding.failed",
            "offboarding.step_dead",
            "offboarding.succeeded",
            "private_emails.purged",
        ]
    );
    let transferred_of = |run_id: Uuid| {
        got.iter()
            .map(Received::json)
            .filter(|e| {
                e["type"] == "items.transferred" && e["data"]["run_id"] == run_id.to_string()
            })
            .count()
    };
    assert_eq!(transferred_of(run), 2, "one per recipient");
    assert_eq!(transferred_of(failing), canceled_recipients.len());
    let emails: Vec<String> =
        sqlx::query_scalar("SELECT email FROM crm.users").fetch_all(&app.pool).await.unwrap();
    for r in &got {
        assert!(r.header("webhook-id").starts_with("msg_"), "{:?}", r.headers);
        assert!(signed_by(r, &secret), "bad signature on {}", r.json());
        let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
        let text = String::from_utf8(r.body.to_vec()).unwrap();
        assert!(emails.iter().all(|e| !text.contains(e.as_str())), "personal data in {text}");
        let body = r.json();
        assert!(body["timestamp"].as_str().is_some() && body["data"].is_object(), "{body}");
    }
    // Distinct events, distinct ids.
    let mut ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), expected);

    // Each recipient is told what it received, per item type, as the receipt counted.
    for recipient in [a, b] {
        let event = got
            .iter()
            .map(Received::json)
            .find(|e| {
                e["type"] == "items.transferred" && e["data"]["recipient_user_id"] == recipient
            })
            .expect("an event per recipient");
        assert_eq!(event["data"]["run_id"], run.to_string());
        assert_eq!(event["data"]["from_user_id"], user);
        let items = event["data"]["items"].as_object().unwrap();
        assert!(!items.is_empty());
        for (item_type, n) in items {
            assert_eq!(
                receipt["reassigned"][item_type]["to"][recipient.to_string()],
                *n,
                "{item_type} for {recipient}"
            );
        }
    }
    let dead =
        got.iter().map(Received::json).find(|e| e["type"] == "offboarding.step_dead").unwrap();
    assert_eq!(dead["data"]["step"], "stop_syncs");
    assert_eq!(dead["data"]["error_code"], "provider_refused");
    assert_eq!(dead["data"]["attempts"], 1);
    let purged =
        got.iter().map(Received::json).find(|e| e["type"] == "private_emails.purged").unwrap();
    assert_eq!(purged["data"]["purge_id"], purge);

    let d = wait_for_delivery(&app, endpoint, "succeeded").await;
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["last_status_code"], 204);
    stop.trigger();
    app.cleanup().await;
}

#[sqlx::test]
async fn an_endpoint_receives_only_the_event_types_it_asked_for(pool: PgPool) {
    let app = TestApp::with(pool, HOOKS, SeedOptions::default()).await;
    let receiver = Receiver::answering(200).await;
    let company = app.company.company_id;
    register(&app, company, &receiver.url, json!(["private_emails.purged"])).await;
    emit(&app.pool, company, "offboarding.succeeded", json!({})).await;
    emit(&app.pool, company, "private_emails.purged", json!({"purge_id": 1})).await;
    let events = app.count("SELECT count(*) FROM offboard.webhook_events").await;
    assert_eq!(events, 1, "an event nobody takes is not written");
    let stop = start_deliverer(&app);
    let got = receiver.wait_for("the purge event", |g| !g.is_empty()).await;
    assert_eq!(got[0].json()["type"], "private_emails.purged");
    stop.trigger();
}

#[sqlx::test]
async fn a_receiver_failing_three_times_gets_the_same_webhook_id_four_times_and_succeeds(
    pool: PgPool,
) {
    let app = TestApp::with(pool, HOOKS, SeedOptions::default()).await;
    let receiver =
        Receiver::start(Arc::new(|n| Reply::Status(if n < 3 { 500 } else { 200 }))).await;
    let company = app.company.company_id;
    let (endpoint, secret) = register(&app, company, &receiver.url, json!([])).await;
    emit(&app.pool, company, "offboarding.succeeded", json!({"run_id": "x"})).await;
    let stop = start_deliverer(&app);
    let got = receiver.wait_for("four attempts", |g| g.len() >= 4).await;
    let d = wait_for_delivery(&app, endpoint, "succeeded").await;
    assert_eq!(d["attempts"], 4, "{d}");
    assert_eq!(d["last_status_code"], 200);
    let id = got[0].header("webhook-id").to_string();
    assert!(got.iter().all(|r| r.header("webhook-id") == id));
    assert!(got.iter().all(|r| signed_by(r, &secret)));
    // Retries come after the schedule's pauses (50 ms, less 10 % jitter), not at once.
    for pair in got.windows(2) {
        assert!(pair[1].at - pair[0].at >= Duration::from_millis(40));
    }
    // The breaker and the flag are clear after the success.
    let (_, e) = app.get(&format!("/v1/webhook-endpoints/{endpoint}")).await;
    assert_eq!(e["failing"], false);
    // /metrics counts the attempts by endpoint and outcome, with their latencies.
    let (status, _, _) = app.call(Method::GET, "/metrics", None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let response = tower::ServiceExt::oneshot(
        app.router.clone(),
        axum::http::Request::get("/metrics")
            .header("authorization", format!("Bearer {DEV_TOKEN}"))
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(response.into_body(), 1 << 22).await.unwrap().to_vec(),
    )
    .unwrap();
    for line in [
        format!(
            "offboard_webhook_attempts_total{{endpoint_id=\"{endpoint}\",outcome=\"retry\"}} 3"
        ),
        format!(
            "offboard_webhook_attempts_total{{endpoint_id=\"{endpoint}\",outcome=\"succeeded\"}} 1"
        ),
        format!("offboard_webhook_attempt_duration_seconds_count{{endpoint_id=\"{endpoint}\"}} 4"),
    ] {
        assert!(text.contains(&line), "missing {line}");
    }
    stop.trigger();
}

#[sqlx::test]
async fn gone_disables_the_endpoint_and_an_exhausted_schedule_fails_and_flags_it(pool: PgPool) {
    let app = TestApp::with(pool, HOOKS, SeedOptions::default()).await;
    let company = app.company.company_id;
    let gone = Receiver::answering(410).await;
    let broken = Receiver::answering(503).await;
    let (gone_id, _) = register(&app, company, &gone.url, json!([])).await;
    let (broken_id, _) = register(&app, company, &broken.url, json!([])).await;
    emit(&app.pool, company, "offboarding.succeeded", json!({})).await;
    let stop = start_deliverer(&app);

    let d = wait_for_delivery(&app, gone_id, "failed").await;
    assert_eq!((d["attempts"].as_i64(), d["last_status_code"].as_i64()), (Some(1), Some(410)));
    let (_, e) = app.get(&format!("/v1/webhook-endpoints/{gone_id}")).await;
    assert_eq!(
        (e["enabled"].as_bool(), e["disabled_reason"].as_str()),
        (Some(false), Some("gone"))
    );
    let d = wait_for_delivery(&app, broken_id, "failed").await;
    assert_eq!(d["attempts"], 4, "one attempt and three retries: {d}");
    assert_eq!(d["last_error"], "http_503");
    let (_, e) = app.get(&format!("/v1/webhook-endpoints/{broken_id}")).await;
    assert_eq!(e["failing"], true, "{e}");
    assert_eq!(e["enabled"], true);
    // A disabled endpoint gets no new events.
    emit(&app.pool, company, "offboarding.failed", json!({})).await;
    assert_eq!(gone.received().len(), 1);
    // The second event's first failure is the fifth in a row: the breaker opens, and the
    // endpoint gets nothing more while it is paused.
    let started = Instant::now();
    let paused = loop {
        let (_, e) = app.get(&format!("/v1/webhook-endpoints/{broken_id}")).await;
        if e["paused_until"].is_string() {
            break e;
        }
        assert!(started.elapsed() < DEADLINE, "the breaker never opened: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let until: chrono::DateTime<chrono::Utc> =
        paused["paused_until"].as_str().unwrap().parse().unwrap();
    assert!(until > chrono::Utc::now() + chrono::Duration::seconds(50), "{paused}");
    let sent = broken.received().len();
    assert_eq!(sent, 5);
    tokio::time::sleep(Duration::from_millis(300)).await; // six retry pauses of the schedule
    assert_eq!(broken.received().len(), sent, "a paused endpoint got a delivery");

    // Replay: refused while disabled, accepted once the host enables it again.
    let (status, body) =
        app.post(&format!("/v1/webhook-endpoints/{gone_id}/replay-failed"), &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "endpoint_disabled");
    let gone_delivery = delivery_of(&app, gone_id).await;
    let (status, body) = app
        .post(&format!("/v1/webhook-deliveries/{}/replay", gone_delivery["id"]), &json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("endpoint_disabled"))
    );
    let (status, _, body) = app
        .call(
            Method::PATCH,
            &format!("/v1/webhook-endpoints/{gone_id}"),
            Some(r#"{"enabled": true}"#),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["disabled_reason"], Value::Null);
    let (status, replay) = app
        .post(&format!("/v1/webhook-deliveries/{}/replay", gone_delivery["id"]), &json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replay}");
    assert_eq!(replay["webhook_id"], gone_delivery["webhook_id"], "a replay keeps the webhook-id");
    assert_ne!(replay["id"], gone_delivery["id"]);
    gone.wait_for("the replay", |g| g.len() == 2).await;
    assert_eq!(
        gone.received()[1].header("webhook-id"),
        gone_delivery["webhook_id"].as_str().unwrap()
    );
    let (status, body) =
        app.post(&format!("/v1/webhook-endpoints/{broken_id}/replay-failed"), &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["replayed"], 1, "the event that failed on it: {body}");
    let (status, body) =
        app.post(&format!("/v1/webhook-endpoints/{broken_id}/replay-failed"), &json!({})).await;
    assert_eq!(
        (status, body["replayed"].as_i64()),
        (StatusCode::ACCEPTED, Some(0)),
        "replayed twice: {body}"
    );
    stop.trigger();
}

#[sqlx::test]
async fn a_hanging_endpoint_does_not_delay_another_companys_deliveries(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[
            ("OFFBOARD_WEBHOOK_ALLOW_PRIVATE", "1"),
            ("OFFBOARD_WEBHOOK_TIMEOUT", "30s"),
            ("OFFBOARD_WEBHOOK_POLL_INTERVAL", "50ms"),
            ("OFFBOARD_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT", "2"),
            ("OFFBOARD_WEBHOOK_CONCURRENCY", "8"),
        ],
        SeedOptions::default(),
    )
    .await;
    let hanging = Receiver::start(Arc::new(|_| Reply::Hang)).await;
    let healthy = Receiver::answering(200).await;
    let (slow_company, other_company) = (app.company.company_id, app.company.company_id + 1000);
    register(&app, slow_company, &hanging.url, json!([])).await;
    register(&app, other_company, &healthy.url, json!([])).await;
    for i in 0..20 {
        emit(&app.pool, slow_company, "offboarding.succeeded", json!({"n": i})).await;
    }
    let stop = start_deliverer(&app);
    hanging.wait_for("the hanging endpoint's first two", |g| g.len() >= 2).await;

    // The hanging endpoint holds its two slots; the other company's events go at once.
    for i in 0..5 {
        let sent = Instant::now();
        emit(&app.pool, other_company, "offboarding.succeeded", json!({"n": i})).await;
        healthy.wait_for("the healthy endpoint", |g| g.len() > i).await;
        let took = sent.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "delivery {i} took {took:?} behind a hanging endpoint"
        );
    }
    assert_eq!(hanging.received().len(), 2, "no more than the per-endpoint cap in flight");
    stop.trigger();
}

#[sqlx::test]
async fn a_rotated_secret_signs_beside_the_previous_one(pool: PgPool) {
    let app = TestApp::with(pool, HOOKS, SeedOptions::default()).await;
    let receiver = Receiver::answering(200).await;
    let company = app.company.company_id;
    let (endpoint, old) = register(&app, company, &receiver.url, json!([])).await;
    let (status, body) =
        app.post(&format!("/v1/webhook-endpoints/{endpoint}/rotate-secret"), &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(body["previous_secret_until"].is_string());
    emit(&app.pool, company, "offboarding.succeeded", json!({})).await;
    let stop = start_deliverer(&app);
    let got = receiver.wait_for("one delivery", |g| !g.is_empty()).await;
    let header = got[0].header("webhook-signature");
    let sigs: Vec<&str> = header.split(' ').collect();
    assert_eq!(sigs.len(), 2, "{header}");
    let ts: i64 = got[0].header("webhook-timestamp").parse().unwrap();
    let id = got[0].header("webhook-id");
    let sign = |s: &str| signing::sign(&WebhookSecret::parse(s).unwrap(), id, ts, &got[0].body);
    assert_eq!(sigs, vec![sign(&new), sign(&old)]);
    stop.trigger();
}

#[sqlx::test]
async fn a_lost_deliverer_delays_a_delivery_but_never_drops_it(pool: PgPool) {
    let app = TestApp::with(pool, HOOKS, SeedOptions::default()).await;
    let receiver = Receiver::answering(200).await;
    let company = app.company.company_id;
    let (endpoint, _) = register(&app, company, &receiver.url, json!([])).await;
    emit(&app.pool, company, "offboarding.succeeded", json!({})).await;
    // A deliverer claims it and dies before sending: the claim lapses after its lease.
    let claimed = ledger::claim_due(
        &app.pool,
        ClaimLimits { max: 10, per_endpoint: 2, lease: Duration::from_millis(300) },
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(delivery_of(&app, endpoint).await["status"], "sending");
    let stop = start_deliverer(&app);
    let got = receiver.wait_for("the delivery, sent again", |g| !g.is_empty()).await;
    assert_eq!(got.len(), 1);
    let d = wait_for_delivery(&app, endpoint, "succeeded").await;
    assert_eq!(d["attempts"], 2, "the lost attempt counts: {d}");
    // The lost deliverer's late record is fenced out.
    let late = ledger::record_attempt(
        &app.pool,
        &claimed[0],
        &ledger::AttemptRecord {
            status_code: Some(500),
            error: Some("http_500"),
            latency: Duration::ZERO,
        },
        ledger::Next::Exhausted,
        ledger::Breaker { after: 5, pause: Duration::from_secs(60) },
    )
    .await
    .unwrap();
    assert!(!late);
    assert_eq!(delivery_of(&app, endpoint).await["status"], "succeeded");
    stop.trigger();
}

#[sqlx::test]
async fn an_event_is_written_with_its_state_change_or_not_at_all(pool: PgPool) {
    let app = TestApp::with(pool, HOOKS, SeedOptions::default()).await;
    let receiver = Receiver::answering(200).await;
    register(&app, app.company.company_id, &receiver.url, json!([])).await;
    let user = app.regular(0);
    let run = app
        .enqueue(&app.deactivation(
            user,
            json!({"default": {"mode": "single", "targets": [{"user_id": app.regular(1)}]}}),
        ))
        .await;
    // A transaction that cancels the run and then rolls back leaves no event.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("UPDATE offboard.runs SET status = 'canceled' WHERE id = $1")
        .bind(run)
        .execute(&mut *tx)
        .await
        .unwrap();
    let inside: i64 = sqlx::query_scalar("SELECT count(*) FROM offboard.webhook_deliveries")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(inside, 1, "the delivery is written inside the state change's transaction");
    tx.rollback().await.unwrap();
    assert_eq!(app.count("SELECT count(*) FROM offboard.webhook_events").await, 0);
    app.drain().await;
    assert_eq!(
        app.count(
            "SELECT count(*) FROM offboard.webhook_events WHERE type = 'offboarding.succeeded'"
        )
        .await,
        1
    );
    app.cleanup().await;
}

#[sqlx::test]
async fn endpoints_are_company_scoped_and_checked_at_the_boundary(pool: PgPool) {
    let app = TestApp::new(pool).await; // private destinations not allowed
    let company = app.company.company_id;
    for (url, field) in [
        ("http://hooks.example.com/x", "url"),
        ("https://127.0.0.1/x", "url"),
        ("https://169.254.169.254/latest/meta-data", "url"),
    ] {
        let (status, body) =
            app.post("/v1/webhook-endpoints", &json!({"company_id": company, "url": url})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(body["error"]["code"], "url_not_allowed");
        assert_eq!(body["error"]["field"], field);
    }
    let (status, body) = app
        .post(
            "/v1/webhook-endpoints",
            &json!({"company_id": company, "url": "https://hooks.example.com/x", "events": ["user.created"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "events[0]");
    // PostgreSQL's text cannot hold NUL: a clear 422, not a 500 from the insert.
    let (status, body) = app
        .post(
            "/v1/webhook-endpoints",
            &json!({"company_id": company, "url": "https://hooks.example.com/x", "description": "a\u{0}b"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "description");
    assert_eq!(app.count("SELECT count(*) FROM offboard.webhook_endpoints").await, 0);

    let (mine, _) = register(&app, company, "https://hooks.example.com/x", json!([])).await;
    for description in ["a\u{0}b", "line\u{7}bell", "c1\u{85}"] {
        let (status, _, body) = app
            .call(
                Method::PATCH,
                &format!("/v1/webhook-endpoints/{mine}"),
                Some(&json!({"description": description}).to_string()),
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{description:?}: {body}");
        assert_eq!(body["error"]["field"], "description");
    }
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM offboard.webhook_endpoints WHERE id = '{mine}' AND description = 'test'"
        ))
        .await,
        1,
        "a refused change leaves the endpoint as it was"
    );
    let (theirs, _) = register(&app, company + 1, "https://other.example.com/x", json!([])).await;
    let settings_token = "scopedtoken-0123456789";
    let settings = test_settings(
        &database_url_of(&app.pool),
        app.queues.prefix(),
        &[("OFFBOARD_API_TOKENS", &format!("{settings_token}@{company}"))],
    );
    let router = api::router(AppState::new(
        app.pool.clone(),
        app.queues.clone(),
        settings,
        app.nudge.clone(),
    ));
    let call = |method: Method, path: String| {
        let router = router.clone();
        async move {
            let request = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {settings_token}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let response = tower::ServiceExt::oneshot(router, request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
        }
    };
    let (status, body) = call(Method::GET, "/v1/webhook-endpoints".into()).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> =
        body["endpoints"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![mine.to_string()]);
    assert!(body.to_string().find("whsec_").is_none(), "a listing never shows secrets");
    for (method, path) in [
        (Method::GET, format!("/v1/webhook-endpoints/{theirs}")),
        (Method::DELETE, format!("/v1/webhook-endpoints/{theirs}")),
        (Method::POST, format!("/v1/webhook-endpoints/{theirs}/rotate-secret")),
    ] {
        let (status, _) = call(method, path.clone()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(app.count("SELECT count(*) FROM offboard.webhook_endpoints").await, 2);
}

#[sqlx::test]
async fn a_run_an_identity_provider_started_is_told_like_any_other(pool: PgPool) {
    let token = "scim-hooks-token-0123456789";
    let tokens = format!("{token}@1");
    let settings = [HOOKS, &[("OFFBOARD_API_TOKENS", tokens.as_str())]].concat();
    let app =
        TestApp::with(pool, &settings, SeedOptions { users: 8, items_per_user: 10, seed: 7 }).await;
    let (leaver, heir) = (app.regular(0), app.regular(1));
    let (status, _, policy) = app
        .call(
            Method::PUT,
            "/v1/companies/1/offboarding-policy",
            Some(&json!({"transfer": {"default": {"mode": "single", "targets": [{"user_id": heir}]}}}).to_string()),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    let receiver = Receiver::answering(200).await;
    let (_, secret) = register(&app, 1, &receiver.url, json!([])).await;
    let deliverer = start_deliverer(&app);
    let workers = app.start_workers();

    // Okta deactivates the user over SCIM.
    let auth = format!("Bearer {token}");
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                       "Operations": [{"op": "replace", "value": {"active": false}}]})
    .to_string();
    let (status, _, user) = app
        .call(
            Method::PATCH,
            &format!("/scim/v2/Users/{leaver}"),
            Some(&patch),
            &[("authorization", auth.as_str()), ("content-type", "application/scim+json")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");

    let got = receiver
        .wait_for("offboarding.succeeded", |got| {
            got.iter().any(|r| r.json()["type"] == "offboarding.succeeded")
        })
        .await;
    let done = got.iter().find(|r| r.json()["type"] == "offboarding.succeeded").unwrap();
    assert!(signed_by(done, &secret));
    let data = done.json()["data"].clone();
    assert_eq!(
        (data["user_id"].as_i64(), data["action"].as_str()),
        (Some(leaver), Some("deactivate"))
    );
    let run_id: Uuid = data["run_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(app.run(run_id).await["requested_by"], "service:scim");
    // The items the policy sent to the heir are told too, with counts and ids only.
    let got = receiver
        .wait_for("items.transferred", |got| {
            got.iter().any(|r| r.json()["type"] == "items.transferred")
        })
        .await;
    let moved = got.iter().find(|r| r.json()["type"] == "items.transferred").unwrap().json();
    assert_eq!(moved["data"]["recipient_user_id"].as_i64(), Some(heir), "{moved}");
    workers.stop().await;
    deliverer.trigger();
    app.cleanup().await;
}
