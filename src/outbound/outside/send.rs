//! Sending one call: its host's token and breaker, its intent committed, the call made
//! outside any transaction, its outcome committed with its effects.

use std::time::Duration;

use uuid::Uuid;

use super::{
    CallKind, Outside,
    request::{Outgoing, classify, outgoing, said},
};
use crate::{
    domain::StepKey,
    ledger::calls::{self, CallOutcome, CallRow},
    metrics::METRICS,
    outbound::{
        client::{Answer, Call},
        limits::NoRoom,
    },
};

/// How one call went.
#[derive(Debug)]
pub(super) enum Sent {
    Succeeded,
    Retry {
        message: String,
        retry_after: Option<Duration>,
    },
    Dead {
        message: String,
    },
    /// Not sent: its host may not be called now (rate, breaker, no slot).
    Waiting {
        message: String,
        pause: Duration,
    },
}

/// A call that may not go now, counted in `/metrics`.
pub(super) fn waiting(host: &str, no_room: NoRoom) -> Sent {
    METRICS.outbound_call(host, "waiting", None);
    let why = match no_room {
        NoRoom::InFlight(_) => "has as many calls in flight as allowed",
        NoRoom::Rate(_) => "is at its rate limit",
    };
    Sent::Waiting {
        message: format!("{host} {why}; the step waits for it"),
        pause: no_room.pause(),
    }
}

impl Outside {
    /// One call, its host's slot already held: the host's token and breaker, then intent,
    /// call, outcome.
    pub(super) async fn one(
        &self,
        kind: CallKind,
        call: &CallRow,
        step_id: StepKey,
        token: Uuid,
    ) -> Result<Sent, sqlx::Error> {
        let host = call.host.as_str();
        if let Err(no_room) = self.limits.try_token(host) {
            return Ok(waiting(host, no_room));
        }
        let probe_lease = self.settings.timeout + Duration::from_secs(1);
        if let Err(pause) = calls::breaker_admit(&self.pool, host, probe_lease).await? {
            METRICS.outbound_call(host, "waiting", None);
            return Ok(Sent::Waiting {
                message: format!("the breaker of {host} is open; the step waits for it"),
                pause,
            });
        }
        let target = format!("{} {}", kind.what(), call.target_id);
        let (url, headers, body) = match outgoing(&self.pool, &self.settings, kind, call).await? {
            Outgoing::Send { url, headers, body } => (url, headers, body),
            Outgoing::Nothing => {
                self.record(kind, call, step_id, token, CallOutcome::Succeeded, None, None, None)
                    .await?;
                return Ok(Sent::Succeeded);
            }
            Outgoing::Refused { code, message } => {
                self.record(kind, call, step_id, token, CallOutcome::Dead, None, Some(code), None)
                    .await?;
                METRICS.outbound_call(host, "dead", None);
                return Ok(Sent::Dead { message });
            }
        };
        calls::mark_sending(&self.pool, call.id).await?;
        let answer = self.client.post(Call { url: &url, headers, body }).await;
        let outcome = classify(&answer);
        self.record(
            kind,
            call,
            step_id,
            token,
            outcome,
            answer.status,
            answer.error.as_deref(),
            Some(&answer),
        )
        .await?;
        METRICS.outbound_call(
            host,
            match outcome {
                CallOutcome::Succeeded => "succeeded",
                CallOutcome::Failed => "retry",
                CallOutcome::Dead => "dead",
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
        let message = || said(host, &target, &answer);
        Ok(match outcome {
            CallOutcome::Succeeded => Sent::Succeeded,
            CallOutcome::Failed => {
                Sent::Retry { message: message(), retry_after: answer.retry_after }
            }
            CallOutcome::Dead => Sent::Dead { message: message() },
        })
    }

    /// The outcome of one call, with its effects, in one transaction: the call's row, the
    /// grant's token overwritten once revoked, the host's breaker, the step's progress.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        kind: CallKind,
        call: &CallRow,
        step_id: StepKey,
        token: Uuid,
        outcome: CallOutcome,
        code: Option<u16>,
        error: Option<&str>,
        answer: Option<&Answer>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        calls::record(&mut tx, call.id, outcome, code, error, answer.map(|a| a.latency)).await?;
        if outcome == CallOutcome::Succeeded && kind == CallKind::RevokeGrant {
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
                    outcome != CallOutcome::Failed,
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
}
