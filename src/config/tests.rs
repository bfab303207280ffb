use secrecy::ExposeSecret;

use super::{outbound::parse_oauth_clients, *};

fn settings(pairs: &[(&str, &str)]) -> anyhow::Result<Settings> {
    let pairs: Vec<(String, String)> =
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Settings::from_lookup(|name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
}

#[test]
fn defaults_work_on_a_developer_machine() {
    let s = settings(&[]).unwrap();
    assert_eq!(s.database_url, "postgres://postgres@127.0.0.1:5432/offboard");
    assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(s.steps.private_email_retention, Duration::from_secs(30 * 86_400));
    assert_eq!(s.idempotency_retention, Duration::from_secs(7 * 86_400));
}

fn accepts(s: &Settings, token: &str) -> bool {
    s.accepted_tokens().iter().any(|t| t.secret().expose_secret() == token)
}

#[test]
fn the_dev_token_needs_the_flag_even_on_loopback() {
    let s = settings(&[]).unwrap();
    assert!(!s.dev_token);
    assert!(!accepts(&s, DEV_TOKEN));
    let err = s.check_serving().unwrap_err();
    assert!(format!("{err:#}").contains("OFFBOARD_API_TOKENS"), "{err:#}");
    let s = settings(&[("OFFBOARD_DEV_TOKEN", "1")]).unwrap();
    assert!(accepts(&s, DEV_TOKEN));
    s.check_serving().unwrap();
}

#[test]
fn the_dev_token_is_never_beside_configured_tokens() {
    let err = settings(&[
        ("OFFBOARD_DEV_TOKEN", "1"),
        ("OFFBOARD_API_TOKENS", "aaaaaaaaaaaaaaaaaaaa"),
        ("OFFBOARD_BIND", "127.0.0.1:8080"),
    ])
    .unwrap_err();
    assert!(format!("{err:#}").contains("both set"), "{err:#}");
    // Configured tokens on loopback: only they are accepted.
    let s = settings(&[("OFFBOARD_API_TOKENS", "aaaaaaaaaaaaaaaaaaaa")]).unwrap();
    assert!(!accepts(&s, DEV_TOKEN));
    assert!(accepts(&s, "aaaaaaaaaaaaaaaaaaaa"));
    // Nor can it be configured as a token of its own.
    let err = settings(&[("OFFBOARD_API_TOKENS", DEV_TOKEN)]).unwrap_err();
    assert!(format!("{err:#}").contains("development token"), "{err:#}");
}

#[test]
fn the_dev_token_is_refused_off_loopback() {
    let err =
        settings(&[("OFFBOARD_BIND", "0.0.0.0:8080"), ("OFFBOARD_DEV_TOKEN", "1")]).unwrap_err();
    assert!(format!("{err:#}").contains("loopback"), "{err:#}");
    let s = settings(&[("OFFBOARD_BIND", "0.0.0.0:8080")]).unwrap();
    assert!(s.accepted_tokens().is_empty());
}

#[test]
fn serving_with_tokens_needs_the_idempotency_secret() {
    let s = settings(&[("OFFBOARD_API_TOKENS", "aaaaaaaaaaaaaaaaaaaa")]).unwrap();
    let err = s.check_serving().unwrap_err();
    assert!(format!("{err:#}").contains("OFFBOARD_IDEMPOTENCY_SECRET"), "{err:#}");
    let s = settings(&[
        ("OFFBOARD_API_TOKENS", "aaaaaaaaaaaaaaaaaaaa"),
        ("OFFBOARD_IDEMPOTENCY_SECRET", "0123456789abcdef0123456789abcdef"),
    ])
    .unwrap();
    s.check_serving().unwrap();
    assert!(settings(&[("OFFBOARD_IDEMPOTENCY_SECRET", "short")]).is_err());
}

#[test]
fn max_in_flight_stays_below_what_redis_can_fetch() {
    let s = settings(&[("OFFBOARD_MAX_IN_FLIGHT", "3000")]).unwrap();
    assert_eq!(s.worker.max_in_flight, MAX_IN_FLIGHT_LIMIT);
    let err = settings(&[("OFFBOARD_MAX_IN_FLIGHT", "3001")]).unwrap_err();
    assert!(format!("{err:#}").contains("OFFBOARD_MAX_IN_FLIGHT"), "{err:#}");
    assert!(format!("{err:#}").contains("8,000"), "{err:#}");
}

#[test]
fn errors_name_the_variable() {
    let err = settings(&[("OFFBOARD_PRIVATE_EMAIL_RETENTION", "soon")]).unwrap_err();
    assert!(format!("{err:#}").contains("OFFBOARD_PRIVATE_EMAIL_RETENTION"));
    let err = settings(&[("OFFBOARD_WORKER_CONCURRENCY", "0")]).unwrap_err();
    assert!(format!("{err:#}").contains("OFFBOARD_WORKER_CONCURRENCY"));
}

#[test]
fn tokens_may_be_scoped_to_a_company() {
    let s = settings(&[("OFFBOARD_API_TOKENS", "aaaaaaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbbbbbb@17")])
        .unwrap();
    assert_eq!(s.api_tokens[0].company_id, None);
    assert_eq!(s.api_tokens[1].company_id, Some(17));
    assert_eq!(s.api_tokens[1].secret().expose_secret(), "bbbbbbbbbbbbbbbbbbbb");
    assert!(settings(&[("OFFBOARD_API_TOKENS", "short")]).is_err());
}

#[test]
fn webhook_settings_default_to_the_standard_schedule_and_public_https_only() {
    let s = settings(&[]).unwrap();
    assert_eq!(s.webhooks.timeout, Duration::from_secs(15));
    assert_eq!(s.webhooks.retry_schedule.len(), 9);
    assert_eq!(s.webhooks.retry_schedule[8], Duration::from_secs(86_400));
    assert!(!s.webhooks.allow_private);
    let s = settings(&[
        ("OFFBOARD_WEBHOOK_RETRY_SCHEDULE", "50ms, 1s"),
        ("OFFBOARD_WEBHOOK_ALLOW_PRIVATE", "1"),
    ])
    .unwrap();
    assert_eq!(s.webhooks.retry_schedule, vec![Duration::from_millis(50), Duration::from_secs(1)]);
    assert!(s.webhooks.allow_private);
    let err = settings(&[("OFFBOARD_WEBHOOK_RETRY_SCHEDULE", "5s,soon")]).unwrap_err();
    assert!(format!("{err:#}").contains("OFFBOARD_WEBHOOK_RETRY_SCHEDULE"));
}

#[test]
fn durations_parse_with_units() {
    assert_eq!(parse_duration("30d").unwrap(), Duration::from_secs(2_592_000));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
    assert!(parse_duration("3x").is_err());
    assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5_400));
}

#[test]
fn debug_output_hides_secrets() {
    let s = settings(&[
        ("OFFBOARD_API_TOKENS", "supersecrettoken123"),
        ("DATABASE_URL", "postgres://app:hunter2@db/offboard"),
        ("OFFBOARD_IDEMPOTENCY_SECRET", "idempotency-secret-0123456789abcdef"),
    ])
    .unwrap();
    for shown in [
        format!("{s:?}"),
        format!("{:?}", s.api_tokens),
        format!("{:?}", s.accepted_tokens()),
        format!("{:?}", s.idempotency_secret),
    ] {
        assert!(!shown.contains("supersecrettoken123"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("idempotency-secret-0123456789abcdef"), "{shown}");
    }
}

#[test]
fn oauth_clients_parse_and_never_show_their_secret() {
    let clients = parse_oauth_clients("google=abc.apps:s3cr:et, microsoft=id2:x").expect("parses");
    assert_eq!(clients.len(), 2);
    assert_eq!(clients[0].client_id, "abc.apps");
    assert_eq!(clients[0].client_secret, "s3cr:et");
    assert!(!format!("{:?}", clients).contains("s3cr"));
    let err = parse_oauth_clients("google=nosecret").unwrap_err();
    assert!(!format!("{err:#}").contains("nosecret"), "{err:#}");
    assert!(parse_oauth_clients("=a:b").is_err());
}
