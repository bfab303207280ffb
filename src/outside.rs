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
//! plans its calls (a row per grant or install, in a transaction fenced by its lease),
//! then sends every call not yet `succeeded` — each one's intent committed before it
//! goes, the call made outside any transaction, its outcome committed after — and only
//! when all succeeded applies the step's local effect. A retry of the step, after a
//! failure or a lost worker, sends only what is not recorded as succeeded.
//!
//! Failures: 5xx, 408, 429 and no answer (timeout, connection) are worth another attempt
//! of the step, with backoff and no sooner than a `Retry-After`; any other answer is
//! permanent: the step is dead, its error naming the destination host and status (never a
//! URL or a token), and an operator's retry sends only the calls that failed.
//!
//! Isolation per destination host: calls in flight and a token bucket per process
//! ([`crate::outbound::limits`]), and a breaker shared by every process (the ledger's
//! `outbound_hosts`). None of them waits: a call that may not go now leaves its step
//! re-scheduled for when it may (the attempt given back), so a dead vendor never holds a
//! worker slot, and other destinations' calls go on.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    config::OutboundSettings,
    domain::webhook::WebhookSecret,
    ledger::{
        calls::{self, CallRow, CallStatus},
        steps,
    },
    metrics::METRICS,
    outbound::{
        client::{Answer, Body, Call, Client},
        limits::{HostLimits, NoRoom},
        signing,
    },
    steps::{RunContext, StepError},
};

/// What a step calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// RFC 7009 revocation of an account sync's grant.
    RevokeGrant,
    /// A vendor's uninstall callback for an app install.
    UninstallCallback,
}

impl CallKind {
    /// The calls the step of this name makes, if any.
    pub fn of_step(name: &str) -> Option<Self> {
        match name {
            "stop_syncs" => Some(CallKind::RevokeGrant),
            "uninstall_apps" => Some(CallKind::UninstallCallback),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::RevokeGrant => "revoke_grant",
            CallKind::UninstallCallback => "uninstall_callback",
        }
    }

    fn what(self) -> &'static str {
        match self {
            CallKind::RevokeGrant => "revocation of the grant of account sync",
            CallKind::UninstallCallback => "uninstall callback of app install",
        }
    }
}

/// The host (and port) of a URL column, in SQL: what the ledger records as destination.
macro_rules! host_of {
    ($col:literal) => {
        concat!(
            "coalesce(substring(",
            $col,
            " from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]+)'), 'invalid')"
        )
    };
}

/// Plans the step's calls in the caller's transaction: one row per grant still live (or
/// per install a vendor wants to hear of) that has none yet. Returns how many of the
/// step's calls have not succeeded.
///
/// The idempotency key of a revocation is drawn per call (a grant is revoked by one run:
/// its user's). That of an uninstall callback derives from the install, so when two runs
/// tell the vendor of one shared install (two admins leaving together), the vendor sees
/// one `webhook-id` and dedupes.
pub async fn plan(
    tx: &mut PgConnection,
    kind: CallKind,
    run: &RunContext,
    step_id: i64,
) -> Result<i64, sqlx::Error> {
    let sql = match kind {
        CallKind::RevokeGrant => concat!(
            "INSERT INTO offboard.outbound_calls
                 (run_id, step_id, company_id, kind, target_id, host, idempotency_key)
             SELECT $1, $2, s.company_id, 'revoke_grant', s.id, ",
            host_of!("p.revocation_url"),
            ", gen_random_uuid()
             FROM crm.account_syncs s JOIN crm.oauth_providers p ON p.id = s.provider_id
             WHERE s.company_id = $3 AND s.user_id = $4 AND s.refresh_token IS NOT NULL
             ORDER BY s.id
             ON CONFLICT (step_id, kind, target_id) DO NOTHING"
        ),
        CallKind::UninstallCallback => concat!(
            "INSERT INTO offboard.outbound_calls
                 (run_id, step_id, company_id, kind, target_id, host, idempotency_key)
             SELECT $1, $2, i.company_id, 'uninstall_callback', i.id, ",
            host_of!("a.vendor_uninstall_url"),
            ", md5('uninstall_callback:' || i.id)::uuid
             FROM crm.app_installs i JOIN crm.apps a ON a.key = i.app_key
             WHERE i.company_id = $3 AND i.status = 'installed'
               AND a.vendor_uninstall_url IS NOT NULL
               AND (i.installed_by = $4
                    OR (i.shared AND coalesce((SELECT u.role = 'admin' FROM crm.users u
                                               WHERE u.id = $4 AND u.company_id = $3), false)))
             ORDER BY i.id
             ON CONFLICT (step_id, kind, target_id) DO NOTHING"
        ),
    };
    sqlx::query(sql)
        .bind(run.id)
        .bind(step_id)
        .bind(run.company_id.get())
        .bind(run.user_id.get())
        .execute(&mut *tx)
        .await?;
    sqlx::query_scalar(
        "SELECT count(*) FROM offboard.outbound_calls WHERE step_id = $1 AND status <> 'succeeded'",
    )
    .bind(step_id)
    .fetch_one(&mut *tx)
    .await
}

/// How the calls of a step's attempt went.
#[derive(Debug)]
pub enum CallsEnd {
    /// Every call succeeded: the local effect may be applied.
    Done,
    /// The step's lease was lost before the calls were planned.
    LeaseLost,
    /// Some call failed or may not go yet.
    Failed(StepError),
}

/// How one call went.
#[derive(Debug)]
enum Sent {
    Succeeded,
    Retry { message: String, retry_after: Option<Duration> },
    Dead { message: String },
    Waiting { message: String, pause: Duration },
}

/// What to send for one call, read when it goes (the token and secrets are never kept
/// longer than the call).
enum Outgoing {
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
    /// not yet succeeded sent at once, each within its host's limits and breaker.
    pub async fn run(
        &self,
        kind: CallKind,
        run: &RunContext,
        step_id: i64,
        token: Uuid,
        lease: Duration,
    ) -> Result<CallsEnd, StepError> {
        let mut tx = self.pool.begin().await?;
        if steps::fence(&mut tx, step_id, token, lease).await?.is_none() {
            return Ok(CallsEnd::LeaseLost);
        }
        plan(&mut tx, kind, run, step_id).await?;
        let planned = calls::of_step(&mut tx, step_id).await?;
        calls::record_step_progress(&mut tx, step_id, token).await?;
        tx.commit().await?;
        let todo: Vec<&CallRow> = planned.iter().filter(|c| c.status != "succeeded").collect();
        if todo.is_empty() {
            return Ok(CallsEnd::Done);
        }
        let sent =
            futures::future::join_all(todo.iter().map(|c| self.one(kind, c, step_id, token))).await;
        let mut dead = Vec::new();
        let mut retry = Vec::new();
        let mut waiting = Vec::new();
        let mut retry_after = Duration::ZERO;
        let mut first_error = None;
        for s in sent {
            match s {
                Ok(Sent::Succeeded) => {}
                Ok(Sent::Dead { message }) => dead.push(message),
                Ok(Sent::Retry { message, retry_after: after }) => {
                    retry_after = retry_after.max(after.unwrap_or_default());
                    retry.push(message);
                }
                Ok(Sent::Waiting { message, pause }) => waiting.push((message, pause)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Ok(CallsEnd::Failed(e));
        }
        let summary = |messages: &[String]| match messages.len() {
            1 => messages[0].clone(),
            n => format!("{} (and {} more)", messages[0], n - 1),
        };
        Ok(if !dead.is_empty() {
            CallsEnd::Failed(StepError::permanent("outside_rejected", summary(&dead)))
        } else if !retry.is_empty() {
            CallsEnd::Failed(StepError::later(
                "outside_unavailable",
                summary(&retry),
                retry_after,
                true,
            ))
        } else if !waiting.is_empty() {
            let pause = waiting.iter().map(|(_, p)| *p).min().unwrap_or_default();
            let messages: Vec<String> = waiting.into_iter().map(|(m, _)| m).collect();
            CallsEnd::Failed(StepError::later("outside_waiting", summary(&messages), pause, false))
        } else {
            CallsEnd::Done
        })
    }

    /// One call: within its host's limits and breaker, intent, call, outcome.
    async fn one(
        &self,
        kind: CallKind,
        call: &CallRow,
        step_id: i64,
        token: Uuid,
    ) -> Result<Sent, StepError> {
        let host = call.host.as_str();
        let permit = match self.limits.try_acquire(host) {
            Ok(permit) => permit,
            Err(no_room) => {
                METRICS.outbound_call(host, "waiting", None);
                let why = match no_room {
                    NoRoom::InFlight(_) => "has as many calls in flight as allowed",
                    NoRoom::Rate(_) => "is at its rate limit",
                };
                return Ok(Sent::Waiting {
                    message: format!("{host} {why}; the step waits for it"),
                    pause: no_room.pause(),
                });
            }
        };
        let probe_lease = self.settings.timeout + Duration::from_secs(1);
        if let Err(pause) = calls::breaker_admit(&self.pool, host, probe_lease).await? {
            METRICS.outbound_call(host, "waiting", None);
            return Ok(Sent::Waiting {
                message: format!("the breaker of {host} is open; the step waits for it"),
                pause,
            });
        }
        let target = format!("{} {}", kind.what(), call.target_id);
        let (url, headers, body) = match self.outgoing(kind, call).await? {
            Outgoing::Send { url, headers, body } => (url, headers, body),
            Outgoing::Nothing => {
                self.record(kind, call, step_id, token, CallStatus::Succeeded, None, None, None)
                    .await?;
                return Ok(Sent::Succeeded);
            }
            Outgoing::Refused { code, message } => {
                self.record(kind, call, step_id, token, CallStatus::Dead, None, Some(code), None)
                    .await?;
                METRICS.outbound_call(host, "dead", None);
                return Ok(Sent::Dead { message });
            }
        };
        calls::mark_sending(&self.pool, call.id).await?;
        let answer = self.client.post(Call { url: &url, headers, body }).await;
        drop(permit);
        let status = classify(&answer);
        self.record(
            kind,
            call,
            step_id,
            token,
            status,
            answer.status,
            answer.error.as_deref(),
            Some(&answer),
        )
        .await?;
        let said = match (answer.status, answer.error.as_deref()) {
            (Some(code), _) => format!("{host} answered {code} to the {target}"),
            (None, Some("address_refused")) => format!(
                "{host} was refused for the {target}: it resolves only to private, loopback or \
                 reserved addresses"
            ),
            (None, error) => {
                format!("{host} did not answer the {target} ({})", error.unwrap_or("no answer"))
            }
        };
        METRICS.outbound_call(
            host,
            match status {
                CallStatus::Succeeded => "succeeded",
                CallStatus::Failed => "retry",
                CallStatus::Dead => "dead",
            },
            Some(answer.latency),
        );
        tracing::debug!(
            call_id = call.id,
            destination = host,
            kind = kind.as_str(),
            target_id = call.target_id,
            status = answer.status,
            error = answer.error.as_deref(),
            took_ms = answer.latency.as_millis() as u64,
            "outside call"
        );
        Ok(match status {
            CallStatus::Succeeded => Sent::Succeeded,
            CallStatus::Failed => Sent::Retry { message: said, retry_after: answer.retry_after },
            CallStatus::Dead => Sent::Dead { message: said },
        })
    }

    /// The outcome of one call, with its effects, in one transaction: the call's row, the
    /// grant's token overwritten once revoked, the host's breaker, the step's progress.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        kind: CallKind,
        call: &CallRow,
        step_id: i64,
        token: Uuid,
        status: CallStatus,
        code: Option<u16>,
        error: Option<&str>,
        answer: Option<&Answer>,
    ) -> Result<(), StepError> {
        let mut tx = self.pool.begin().await?;
        calls::record(&mut tx, call.id, status, code, error, answer.map(|a| a.latency)).await?;
        if status == CallStatus::Succeeded && kind == CallKind::RevokeGrant {
            sqlx::query(
                "UPDATE crm.account_syncs SET refresh_token = NULL, revoked_at = now()
                 WHERE id = $1",
            )
            .bind(call.target_id)
            .execute(&mut *tx)
            .await?;
        }
        // The breaker counts what the host did: an answer other than 5xx/408/429 says it
        // is up; a retryable one or none says it is not. A call that never went does not
        // count.
        if let Some(answer) = answer {
            let refused =
                matches!(answer.error.as_deref(), Some("address_refused" | "invalid_url"));
            if !refused {
                calls::breaker_record(
                    &mut tx,
                    &call.host,
                    status != CallStatus::Failed,
                    self.settings.breaker_after,
                    self.settings.breaker_pause,
                )
                .await?;
            }
        }
        // A lost lease does not undo the record: the call happened.
        calls::record_step_progress(&mut tx, step_id, token).await?;
        tx.commit().await?;
        Ok(())
    }

    /// What to send for a call, read now.
    async fn outgoing(&self, kind: CallKind, call: &CallRow) -> Result<Outgoing, StepError> {
        match kind {
            CallKind::RevokeGrant => {
                let row: Option<(Option<String>, String, String)> = sqlx::query_as(
                    "SELECT s.refresh_token, p.name, p.revocation_url
                     FROM crm.account_syncs s JOIN crm.oauth_providers p ON p.id = s.provider_id
                     WHERE s.id = $1",
                )
                .bind(call.target_id)
                .fetch_optional(&self.pool)
                .await?;
                let Some((Some(refresh_token), provider, url)) = row else {
                    return Ok(Outgoing::Nothing);
                };
                let Some(client) = self.settings.client(&provider) else {
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
                .fetch_optional(&self.pool)
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
}

/// Which answers are worth another attempt: 5xx, 408, 429 and no answer at all; a refused
/// or unusable destination and every other answer are permanent.
pub fn classify(answer: &Answer) -> CallStatus {
    if answer.succeeded() {
        return CallStatus::Succeeded;
    }
    match answer.status {
        Some(408 | 429) => CallStatus::Failed,
        Some(code) if code >= 500 => CallStatus::Failed,
        Some(_) => CallStatus::Dead,
        None => match answer.error.as_deref() {
            Some("address_refused" | "invalid_url") => CallStatus::Dead,
            _ => CallStatus::Failed,
        },
    }
}

/// `application/x-www-form-urlencoded` of a client id or secret, as RFC 6749 §2.3.1 asks
/// before HTTP Basic.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
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
        assert_eq!(classify(&answer(Some(200), None)), CallStatus::Succeeded);
        for code in [500, 502, 503, 408, 429] {
            let a = answer(Some(code), Some(&format!("http_{code}")));
            assert_eq!(classify(&a), CallStatus::Failed, "{code}");
        }
        for code in [400, 401, 403, 404, 410, 301] {
            let a = answer(Some(code), Some(&format!("http_{code}")));
            assert_eq!(classify(&a), CallStatus::Dead, "{code}");
        }
        assert_eq!(classify(&answer(None, Some("timeout"))), CallStatus::Failed);
        assert_eq!(classify(&answer(None, Some("connect"))), CallStatus::Failed);
        assert_eq!(classify(&answer(None, Some("address_refused"))), CallStatus::Dead);
    }

    #[test]
    fn client_credentials_are_form_encoded_before_basic() {
        assert_eq!(form_encode("a b:c"), "a+b%3Ac");
    }
}
