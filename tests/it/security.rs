//! Hardening, the doors (issue 11): the development token only when asked for and never
//! beside real tokens, personal data kept out of `Debug`, idempotency keys that expire and
//! keep only a keyed hash of the request.

use axum::http::{Method, StatusCode};
use offboard::{
    api::{self, AppState},
    config::{DEV_TOKEN, Settings},
    crm::provisioning::{ProvisionedUser, UserAttributes, UserFilter},
    domain::OffboardingRequest,
    steps::RunParams,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::helpers::{TestApp, database_url_of};

/// Settings from exactly these variables (no test defaults).
fn settings_of(pairs: &[(&str, &str)]) -> anyhow::Result<Settings> {
    Settings::from_lookup(|name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
}

async fn status_with(router: &axum::Router, token: &str) -> StatusCode {
    let request = axum::http::Request::builder()
        .method(Method::GET)
        .uri("/v1/offboardings")
        .header("authorization", format!("Bearer {token}"))
        .body(axum::body::Body::empty())
        .unwrap();
    tower::ServiceExt::oneshot(router.clone(), request).await.unwrap().status()
}

#[sqlx::test]
async fn the_dev_token_is_refused_without_the_flag_and_beside_configured_tokens(pool: PgPool) {
    let app = TestApp::new(pool.clone()).await;
    let database_url = database_url_of(&pool);
    let redis_url = app.settings.redis_url.clone();
    let router_of = |settings: Settings| {
        api::router(AppState::new(pool.clone(), app.queues.clone(), settings, app.nudge.clone()))
    };
    let base = [
        ("DATABASE_URL", database_url.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("OFFBOARD_BIND", "127.0.0.1:8080"),
    ];

    // On loopback, no flag: refused (the API would not even start: no token at all).
    let plain = settings_of(&base).unwrap();
    assert!(plain.check_serving().is_err());
    assert_eq!(status_with(&router_of(plain), DEV_TOKEN).await, StatusCode::UNAUTHORIZED);

    // With the flag: accepted.
    let with_flag =
        settings_of(&[base.as_slice(), &[("OFFBOARD_DEV_TOKEN", "1")]].concat()).unwrap();
    assert_eq!(status_with(&router_of(with_flag), DEV_TOKEN).await, StatusCode::OK);

    // Real tokens on loopback: only they open the API.
    let configured = "a-real-token-0123456789";
    let real =
        settings_of(&[base.as_slice(), &[("OFFBOARD_API_TOKENS", configured)]].concat()).unwrap();
    let router = router_of(real);
    assert_eq!(status_with(&router, DEV_TOKEN).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_with(&router, configured).await, StatusCode::OK);
    assert_eq!(status_with(&router, &configured[1..]).await, StatusCode::UNAUTHORIZED);

    // Both: the process refuses to start, saying why.
    let err = settings_of(
        &[base.as_slice(), &[("OFFBOARD_API_TOKENS", configured), ("OFFBOARD_DEV_TOKEN", "1")]]
            .concat(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("OFFBOARD_DEV_TOKEN"), "{err:#}");
    app.cleanup().await;
}

#[sqlx::test]
async fn types_holding_names_or_emails_never_show_them_in_debug(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let (name, surname, email) = ("Philippa", "Quartermaine", "philippa.q@example.com");
    let request = OffboardingRequest::parse(&json!({
        "company_id": 1, "user_id": 3, "actor_user_id": 1, "action": "delete",
        "replacement": {"first_name": name, "last_name": surname, "email": email},
    }))
    .unwrap();
    let redaction = OffboardingRequest::parse(&json!({
        "company_id": 1, "user_id": 3, "actor_user_id": 1, "action": "redact",
        "display_name": surname,
    }))
    .unwrap();
    let attributes = UserAttributes {
        user_name: email.into(),
        external_id: Some("ext-1".into()),
        given_name: Some(name.into()),
        family_name: Some(surname.into()),
        display_name: Some(format!("{name} {surname}")),
        email: Some(email.into()),
        email_type: Some("work".into()),
        email_primary: Some(true),
        extension_hidden: false,
    };
    let filter = UserFilter {
        id: None,
        user_name: Some(email.into()),
        external_id: None,
        email: Some(email.into()),
        email_type: None,
    };
    let provisioned = ProvisionedUser {
        id: 5,
        status: offboard::domain::UserStatus::Active,
        user_name: Some(email.into()),
        external_id: None,
        given_name: Some(name.into()),
        family_name: Some(surname.into()),
        display_name: Some(surname.into()),
        email: Some(email.into()),
        email_type: None,
        email_primary: None,
        extension_hidden: false,
        created_at: chrono::Utc::now(),
        last_modified: chrono::Utc::now(),
        run_id: None,
        run_action: None,
        run_status: None,
        run_active: false,
    };
    let params = RunParams {
        display_name: Some(format!("{name} {surname}")),
        remove_picture: true,
        ..RunParams::default()
    };
    let seeded_email = app.company.users[0].email.clone();
    for shown in [
        format!("{request:?}"),
        format!("{:?}", request.replacement),
        format!("{redaction:?}"),
        format!("{attributes:?}"),
        format!("{attributes:#?}"),
        format!("{filter:?}"),
        format!("{provisioned:?}"),
        format!("{:?}", app.company),
        format!("{params:?}"),
    ] {
        for secret in [name, surname, email, seeded_email.as_str()] {
            assert!(!shown.contains(secret), "{secret:?} shown in {shown}");
        }
        assert!(!shown.contains('@'), "an email shown in {shown}");
    }
    // Ids and statuses stay, so the output is still worth reading.
    assert!(format!("{provisioned:?}").contains("id: 5"));
    assert!(format!("{request:?}").contains("user_id"));
    app.cleanup().await;
}

#[sqlx::test]
async fn the_stored_request_hash_is_keyed_not_the_plain_sha256_of_the_body(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let body = app.deactivation(app.regular(0), json!({}));
    let raw = body.to_string();
    let (status, _, first) = app
        .call(Method::POST, "/v1/offboardings", Some(&raw), &[("idempotency-key", "key-1")])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let stored: String = sqlx::query_scalar(
        "SELECT request_hash FROM offboard.idempotency_keys WHERE key = 'key-1'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let plain = |bytes: &[u8]| -> String {
        Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    };
    assert!(!stored.contains(&plain(raw.as_bytes())), "{stored}");
    assert!(!stored.contains(&plain(&serde_json::to_vec(&body).unwrap())), "{stored}");
    assert!(stored.starts_with("hmac-sha256:"), "{stored}");

    // Still a replay for the same body, still refused for another.
    let (status, _, again) = app
        .call(Method::POST, "/v1/offboardings", Some(&raw), &[("idempotency-key", "key-1")])
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["replayed"], true);
    let other = app.deactivation(app.regular(1), json!({})).to_string();
    let (status, _, err) = app
        .call(Method::POST, "/v1/offboardings", Some(&other), &[("idempotency-key", "key-1")])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["code"], "idempotency_key_reused");

    // It is the HMAC of the body under the server's secret.
    let mut mac = <hmac::Hmac<sha2_hmac::Sha256> as hmac::KeyInit>::new_from_slice(
        b"a-test-secret-of-32-characters-at-least",
    )
    .unwrap();
    hmac::Mac::update(&mut mac, &serde_json::to_vec(&body).unwrap());
    let expected: String =
        hmac::Mac::finalize(mac).into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(stored, format!("hmac-sha256:{expected}"));
    app.cleanup().await;
}

#[sqlx::test]
async fn the_sweeper_deletes_idempotency_keys_older_than_the_retention(pool: PgPool) {
    let app = TestApp::with(
        pool,
        &[("OFFBOARD_IDEMPOTENCY_RETENTION", "1h")],
        offboard::crm::seed::SeedOptions { users: 8, items_per_user: 2, seed: 7 },
    )
    .await;
    for (n, key) in ["old", "recent"].iter().enumerate() {
        let body = app.deactivation(app.regular(n), json!({})).to_string();
        let (status, _, value) = app
            .call(Method::POST, "/v1/offboardings", Some(&body), &[("idempotency-key", key)])
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{value}");
    }
    sqlx::query(
        "UPDATE offboard.idempotency_keys SET created_at = now() - CASE key
             WHEN 'old' THEN interval '61 minutes' ELSE interval '59 minutes' END",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    assert_eq!(app.workers.dispatcher.sweep().await.idempotency_keys_expired, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM offboard.idempotency_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, vec!["recent".to_string()]);
    // The runs themselves stay; only the key is gone.
    assert_eq!(app.count("SELECT count(*) FROM offboard.runs").await, 2);
    assert_eq!(app.workers.dispatcher.sweep().await.idempotency_keys_expired, 0);
    app.cleanup().await;
}
