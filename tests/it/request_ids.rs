//! Every request has an id (`x-request-id`): set when the caller sent none (or an unfit one),
//! echoed on the response, and on every log line of the request, beside the route template
//! and never the URI.

use axum::http::Method;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{erasure::Captured, helpers::TestApp};

#[sqlx::test]
async fn each_request_is_logged_under_its_id_and_route_never_its_query(pool: PgPool) {
    let (logs, _capture) = Captured::start();
    let app = TestApp::new(pool).await;

    // None sent: one is made (a UUID) and echoed.
    let (_, headers, _) = app.call(Method::GET, "/healthz", None, &[]).await;
    let made = headers["x-request-id"].to_str().unwrap().to_string();
    assert!(Uuid::parse_str(&made).is_ok(), "{made}");

    // A plain token from the caller (a proxy's id) is kept and echoed.
    let path = "/v1/offboardings?company_id=1&limit=5&cursor=jane.doe%40example.test";
    let (_, headers, _) =
        app.call(Method::GET, path, None, &[("x-request-id", "lb-7f3a_91")]).await;
    assert_eq!(headers["x-request-id"], "lb-7f3a_91");

    // Anything else is replaced: no caller writes personal data into the logs through it.
    let (_, headers, _) =
        app.call(Method::GET, "/healthz", None, &[("x-request-id", "jane.doe@example.test")]).await;
    let replaced = headers["x-request-id"].to_str().unwrap();
    assert!(Uuid::parse_str(replaced).is_ok(), "{replaced}");

    let logged = logs.text();
    let line = logged
        .lines()
        .find(|l| l.contains(r#"request_id="lb-7f3a_91""#) && l.contains("status="))
        .unwrap_or_else(|| panic!("no log line of the request under its id:\n{logged}"));
    assert!(line.contains(r#"route="/v1/offboardings""#), "{line}");
    assert!(logged.contains(&format!("request_id=\"{made}\"")), "{logged}");
    assert!(!logged.contains("jane"), "the query string or the unfit id was logged:\n{logged}");
    app.cleanup().await;
}
