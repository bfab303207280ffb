//! What one call sends, read when it goes (the token and secrets are never kept longer
//! than the call), and how its answer is classified.

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::json;
use sqlx::PgPool;

use super::CallKind;
use crate::{
    config::OutboundSettings,
    domain::webhook::WebhookSecret,
    ledger::calls::{CallOutcome, CallRow},
    outbound::{
        client::{Answer, Body},
        signing,
    },
};

/// What to send for one call.
pub(super) enum Outgoing {
    Send {
        url: String,
        headers: Vec<(&'static str, String)>,
        body: Body,
    },
    /// Nothing left to do: the grant has no token any more, or the app no callback.
    Nothing,
    /// Cannot be sent: a stable code and a message naming ids only.
    Refused {
        code: &'static str,
        message: String,
    },
}

/// An install with its app's callback: id, company, app key, callback URL, secret.
type InstallRow = (i64, i64, String, Option<String>, Option<String>);

/// What to send for a call, read now.
pub(super) async fn outgoing(
    pool: &PgPool,
    settings: &OutboundSettings,
    kind: CallKind,
    call: &CallRow,
) -> Result<Outgoing, sqlx::Error> {
    match kind {
        CallKind::RevokeGrant => {
            let row: Option<(Option<String>, String, String)> = sqlx::query_as(
                "SELECT s.refresh_token, p.name, p.revocation_url
                 FROM crm.account_syncs s JOIN crm.oauth_providers p ON p.id = s.provider_id
                 WHERE s.id = $1",
            )
            .bind(call.target_id)
            .fetch_optional(pool)
            .await?;
            let Some((Some(refresh_token), provider, url)) = row else {
                return Ok(Outgoing::Nothing);
            };
            let Some(client) = settings.client(&provider) else {
                return Ok(Outgoing::Refused {
                    code: "no_oauth_client",
                    message: format!(
                        "no OAuth client is configured for provider {provider} \
                         (OFFBOARD_OAUTH_CLIENTS), needed for the {} {}",
                        kind.what(),
                        call.target_id
                    ),
                });
            };
            let basic = STANDARD.encode(format!(
                "{}:{}",
                form_encode(&client.client_id),
                form_encode(&client.client_secret)
            ));
            Ok(Outgoing::Send {
                url,
                headers: vec![
                    ("authorization", format!("Basic {basic}")),
                    ("idempotency-key", call.idempotency_key.to_string()),
                ],
                body: Body::Form(vec![
                    ("token".into(), refresh_token),
                    ("token_type_hint".into(), "refresh_token".into()),
                ]),
            })
        }
        CallKind::UninstallCallback => {
            let row: Option<InstallRow> = sqlx::query_as(
                "SELECT i.id, i.company_id, i.app_key, a.vendor_uninstall_url,
                        a.vendor_signing_secret
                 FROM crm.app_installs i JOIN crm.apps a ON a.key = i.app_key
                 WHERE i.id = $1",
            )
            .bind(call.target_id)
            .fetch_optional(pool)
            .await?;
            let Some((install_id, company_id, app_key, Some(url), secret)) = row else {
                return Ok(Outgoing::Nothing);
            };
            let Some(secret) = secret.as_deref().and_then(WebhookSecret::parse) else {
                return Ok(Outgoing::Refused {
                    code: "vendor_secret_invalid",
                    message: format!(
                        "the signing secret of app {app_key} is missing or not a whsec_ \
                         secret, needed for the {} {}",
                        kind.what(),
                        call.target_id
                    ),
                });
            };
            let body = json!({
                "type": "app.uninstalled",
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "data": {"install_id": install_id, "company_id": company_id, "app_key": app_key},
            })
            .to_string();
            let msg_id = format!("msg_{}", call.idempotency_key.simple());
            let timestamp = chrono::Utc::now().timestamp();
            let headers = signing::headers(&[secret], &msg_id, timestamp, body.as_bytes());
            Ok(Outgoing::Send {
                url,
                headers: headers.into_iter().collect(),
                body: Body::Json(body),
            })
        }
    }
}

/// Which answers are worth another attempt: 5xx, 408, 429 and no answer at all; a refused
/// or unusable destination and every other answer are permanent.
pub fn classify(answer: &Answer) -> CallOutcome {
    if answer.succeeded() {
        return CallOutcome::Succeeded;
    }
    match answer.status {
        Some(408 | 429) => CallOutcome::Failed,
        Some(code) if code >= 500 => CallOutcome::Failed,
        Some(_) => CallOutcome::Dead,
        None => match answer.error.as_deref() {
            Some("address_refused" | "invalid_url") => CallOutcome::Dead,
            _ => CallOutcome::Failed,
        },
    }
}

/// What the step's error says of an answer: the host and the status, never a URL or a
/// token.
pub(super) fn said(host: &str, target: &str, answer: &Answer) -> String {
    match (answer.status, answer.error.as_deref()) {
        (Some(code), _) => format!("{host} answered {code} to the {target}"),
        (None, Some("address_refused")) => format!(
            "{host} was refused for the {target}: it resolves only to private, loopback or \
             reserved addresses"
        ),
        (None, error) => {
            format!("{host} did not answer the {target} ({})", error.unwrap_or("no answer"))
        }
    }
}

/// `application/x-www-form-urlencoded` of a client id or secret, as RFC 6749 §2.3.1 asks
/// before HTTP Basic.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn answer(status: Option<u16>, error: Option<&str>) -> Answer {
        Answer {
            status,
            error: error.map(str::to_string),
            latency: Duration::ZERO,
            retry_after: None,
        }
    }

    #[test]
    fn server_errors_timeouts_and_rate_limits_retry_other_answers_are_permanent() {
        assert_eq!(classify(&answer(Some(200), None)), CallOutcome::Succeeded);
        for code in [500, 502, 503, 408, 429] {
            let a = answer(Some(code), Some(&format!("http_{code}")));
            assert_eq!(classify(&a), CallOutcome::Failed, "{code}");
        }
        for code in [400, 401, 403, 404, 410, 301] {
            let a = answer(Some(code), Some(&format!("http_{code}")));
            assert_eq!(classify(&a), CallOutcome::Dead, "{code}");
        }
        assert_eq!(classify(&answer(None, Some("timeout"))), CallOutcome::Failed);
        assert_eq!(classify(&answer(None, Some("connect"))), CallOutcome::Failed);
        assert_eq!(classify(&answer(None, Some("address_refused"))), CallOutcome::Dead);
    }

    #[test]
    fn client_credentials_are_form_encoded_before_basic() {
        assert_eq!(form_encode("a b:c"), "a+b%3Ac");
    }

    #[test]
    fn an_error_names_the_host_and_status_only() {
        let m = said(
            "oauth2.example",
            "revocation of the grant of account sync 4",
            &answer(Some(400), None),
        );
        assert_eq!(
            m,
            "oauth2.example answered 400 to the revocation of the grant of account sync 4"
        );
    }
}
