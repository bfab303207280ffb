//! Reading the environment: each variable once, a blank value as unset, and every refusal
//! naming the variable. [`Settings::from_lookup`](super::Settings::from_lookup) puts the
//! sections read here together and checks what spans them.

use std::time::Duration;

use anyhow::{Context, bail};

use super::{
    DbTimeouts, MAX_IN_FLIGHT_LIMIT, OutboundSettings, StepSettings, WebhookSettings,
    WorkerSettings, outbound::parse_oauth_clients,
};

/// The environment as a lookup (the process' own, or a test's).
pub(super) struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Env<'a> {
    pub(super) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { lookup }
    }

    /// The variable's value; unset or blank is `None`.
    pub(super) fn var(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    pub(super) fn duration(&self, name: &str, default: Duration) -> anyhow::Result<Duration> {
        match self.var(name) {
            Some(v) => parse_duration(&v).with_context(|| format!("{name}: {v:?}")),
            None => Ok(default),
        }
    }

    /// A whole number no smaller than `min`.
    pub(super) fn number(&self, name: &str, default: i64, min: i64) -> anyhow::Result<i64> {
        match self.var(name) {
            Some(v) => {
                let n: i64 = v
                    .trim()
                    .parse()
                    .with_context(|| format!("{name}: {v:?} is not a whole number"))?;
                if n < min {
                    bail!("{name}: {n} is below the minimum {min}");
                }
                Ok(n)
            }
            None => Ok(default),
        }
    }

    /// `1`/`true` or `0`/`false`.
    pub(super) fn flag(&self, name: &str, default: bool) -> anyhow::Result<bool> {
        match self.var(name).as_deref() {
            None => Ok(default),
            Some("0") | Some("false") => Ok(false),
            Some("1") | Some("true") => Ok(true),
            Some(other) => bail!("{name}: {other:?} is neither 1 nor 0"),
        }
    }
}

/// `250ms`, `10s`, `5m`, `2h`, `30d`, or a bare number of seconds.
pub fn parse_duration(raw: &str) -> anyhow::Result<Duration> {
    let raw = raw.trim();
    // A bare number is seconds, as it always was; anything else is humantime's
    // (`250ms`, `90s`, `2m`, `1h 30m`, `30d`).
    if let Ok(seconds) = raw.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(raw).context("expected a duration such as 250ms, 90s, 2m, 1h or 30d")
}

/// The worker runtime's settings (`OFFBOARD_WORKER_*`, in-flight limits, leases, backoff).
pub(super) fn worker(env: &Env<'_>) -> anyhow::Result<WorkerSettings> {
    let defaults = WorkerSettings::default();
    let concurrency =
        env.number("OFFBOARD_WORKER_CONCURRENCY", defaults.concurrency as i64, 1)? as usize;
    let worker = WorkerSettings {
        concurrency,
        // A connection per task running at once, and a few for the dispatcher, the
        // sweeper and lease renewal.
        db_pool_size: env.number("OFFBOARD_WORKER_DB_POOL", concurrency as i64 + 8, 2)? as u32,
        max_in_flight: env.number("OFFBOARD_MAX_IN_FLIGHT", defaults.max_in_flight, 1)?,
        max_in_flight_per_company: env.number(
            "OFFBOARD_MAX_IN_FLIGHT_PER_COMPANY",
            defaults.max_in_flight_per_company,
            1,
        )?,
        lease: env.duration("OFFBOARD_LEASE", defaults.lease)?,
        redeliver_after: env.duration("OFFBOARD_REDELIVER_AFTER", defaults.redeliver_after)?,
        max_attempts: env.number("OFFBOARD_MAX_ATTEMPTS", defaults.max_attempts as i64, 1)? as i32,
        backoff_base: env.duration("OFFBOARD_BACKOFF_BASE", defaults.backoff_base)?,
        backoff_cap: env.duration("OFFBOARD_BACKOFF_CAP", defaults.backoff_cap)?,
        poll_interval: env.duration("OFFBOARD_POLL_INTERVAL", defaults.poll_interval)?,
        dispatch_interval: env
            .duration("OFFBOARD_DISPATCH_INTERVAL", defaults.dispatch_interval)?,
        shutdown_timeout: env.duration("OFFBOARD_SHUTDOWN_TIMEOUT", defaults.shutdown_timeout)?,
        bulk_chunk: env.number("OFFBOARD_BULK_CHUNK", defaults.bulk_chunk, 1)?,
        bulk_pause: env.duration("OFFBOARD_BULK_PAUSE", defaults.bulk_pause)?,
        purge_grace: env.duration("OFFBOARD_PURGE_GRACE", defaults.purge_grace)?,
        step_timeout: env.duration("OFFBOARD_STEP_TIMEOUT", defaults.step_timeout)?,
    };
    if worker.max_in_flight > MAX_IN_FLIGHT_LIMIT {
        bail!(
            "OFFBOARD_MAX_IN_FLIGHT: {} is above {MAX_IN_FLIGHT_LIMIT}: Redis (apalis-redis) \
             fails for good once ~8,000 tasks are due in one queue; the ledger holds the rest",
            worker.max_in_flight
        );
    }
    if worker.step_timeout < Duration::from_millis(100) {
        bail!("OFFBOARD_STEP_TIMEOUT: must be at least 100ms");
    }
    if worker.lease < Duration::from_millis(500) {
        bail!("OFFBOARD_LEASE: must be at least 500ms");
    }
    Ok(worker)
}

/// The time limits of every PostgreSQL connection (`OFFBOARD_DB_*_TIMEOUT`, keepalive).
pub(super) fn db_timeouts(env: &Env<'_>) -> anyhow::Result<DbTimeouts> {
    let defaults = DbTimeouts::default();
    let db_timeouts = DbTimeouts {
        statement: env.duration("OFFBOARD_DB_STATEMENT_TIMEOUT", defaults.statement)?,
        lock: env.duration("OFFBOARD_DB_LOCK_TIMEOUT", defaults.lock)?,
        idle_in_transaction: env
            .duration("OFFBOARD_DB_IDLE_IN_TRANSACTION_TIMEOUT", defaults.idle_in_transaction)?,
        keepalive_idle: env.duration("OFFBOARD_DB_KEEPALIVE", defaults.keepalive_idle)?,
    };
    for (name, value) in [
        ("OFFBOARD_DB_STATEMENT_TIMEOUT", db_timeouts.statement),
        ("OFFBOARD_DB_LOCK_TIMEOUT", db_timeouts.lock),
        ("OFFBOARD_DB_IDLE_IN_TRANSACTION_TIMEOUT", db_timeouts.idle_in_transaction),
        ("OFFBOARD_DB_KEEPALIVE", db_timeouts.keepalive_idle),
    ] {
        if value < Duration::from_secs(1) {
            bail!("{name}: must be at least 1s");
        }
    }
    Ok(db_timeouts)
}

/// What steps read (`OFFBOARD_REASSIGN_BATCH`, `OFFBOARD_PRIVATE_EMAIL_RETENTION`).
pub(super) fn steps(env: &Env<'_>) -> anyhow::Result<StepSettings> {
    let defaults = StepSettings::default();
    Ok(StepSettings {
        reassign_batch: env.number("OFFBOARD_REASSIGN_BATCH", defaults.reassign_batch, 1)?,
        private_email_retention: env
            .duration("OFFBOARD_PRIVATE_EMAIL_RETENTION", defaults.private_email_retention)?,
    })
}

/// Host webhooks' delivery (`OFFBOARD_WEBHOOK_*`).
pub(super) fn webhooks(env: &Env<'_>) -> anyhow::Result<WebhookSettings> {
    let defaults = WebhookSettings::default();
    let webhooks = WebhookSettings {
        timeout: env.duration("OFFBOARD_WEBHOOK_TIMEOUT", defaults.timeout)?,
        retry_schedule: match env.var("OFFBOARD_WEBHOOK_RETRY_SCHEDULE") {
            Some(v) => v
                .split(',')
                .map(parse_duration)
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("OFFBOARD_WEBHOOK_RETRY_SCHEDULE: {v:?}"))?,
            None => defaults.retry_schedule,
        },
        allow_private: env.flag("OFFBOARD_WEBHOOK_ALLOW_PRIVATE", false)?,
        max_in_flight_per_endpoint: env.number(
            "OFFBOARD_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT",
            defaults.max_in_flight_per_endpoint,
            1,
        )?,
        concurrency: env.number("OFFBOARD_WEBHOOK_CONCURRENCY", defaults.concurrency as i64, 1)?
            as usize,
        breaker_after: env.number(
            "OFFBOARD_WEBHOOK_BREAKER_AFTER",
            defaults.breaker_after as i64,
            1,
        )? as i32,
        breaker_pause: env.duration("OFFBOARD_WEBHOOK_BREAKER_PAUSE", defaults.breaker_pause)?,
        secret_overlap: env.duration("OFFBOARD_WEBHOOK_SECRET_OVERLAP", defaults.secret_overlap)?,
        poll_interval: env.duration("OFFBOARD_WEBHOOK_POLL_INTERVAL", defaults.poll_interval)?,
    };
    if webhooks.timeout.is_zero() {
        bail!("OFFBOARD_WEBHOOK_TIMEOUT: must be above 0");
    }
    Ok(webhooks)
}

/// Steps' calls to outside systems (`OFFBOARD_OUTBOUND_*`, `OFFBOARD_OAUTH_CLIENTS`);
/// private destinations are allowed as for webhooks unless said otherwise.
pub(super) fn outbound(
    env: &Env<'_>,
    webhooks_allow_private: bool,
) -> anyhow::Result<OutboundSettings> {
    let defaults = OutboundSettings::default();
    let outbound = OutboundSettings {
        timeout: env.duration("OFFBOARD_OUTBOUND_TIMEOUT", defaults.timeout)?,
        allow_private: env.flag("OFFBOARD_OUTBOUND_ALLOW_PRIVATE", webhooks_allow_private)?,
        max_in_flight_per_host: env.number(
            "OFFBOARD_OUTBOUND_MAX_IN_FLIGHT_PER_HOST",
            defaults.max_in_flight_per_host as i64,
            1,
        )? as usize,
        rate_per_host: match env.var("OFFBOARD_OUTBOUND_RATE_PER_HOST") {
            Some(v) => {
                let r: f64 = v.trim().parse().with_context(|| {
                    format!("OFFBOARD_OUTBOUND_RATE_PER_HOST: {v:?} is not a number")
                })?;
                if !(r > 0.0 && r.is_finite()) {
                    bail!("OFFBOARD_OUTBOUND_RATE_PER_HOST: must be above 0");
                }
                r
            }
            None => defaults.rate_per_host,
        },
        burst_per_host: env.number(
            "OFFBOARD_OUTBOUND_BURST_PER_HOST",
            defaults.burst_per_host as i64,
            1,
        )? as u32,
        breaker_after: env.number(
            "OFFBOARD_OUTBOUND_BREAKER_AFTER",
            defaults.breaker_after as i64,
            1,
        )? as i32,
        breaker_pause: env.duration("OFFBOARD_OUTBOUND_BREAKER_PAUSE", defaults.breaker_pause)?,
        concurrency: env.number("OFFBOARD_OUTBOUND_CONCURRENCY", defaults.concurrency as i64, 1)?
            as usize,
        oauth_clients: match env.var("OFFBOARD_OAUTH_CLIENTS") {
            Some(v) => parse_oauth_clients(&v).context("OFFBOARD_OAUTH_CLIENTS")?,
            None => Vec::new(),
        },
    };
    if outbound.timeout.is_zero() {
        bail!("OFFBOARD_OUTBOUND_TIMEOUT: must be above 0");
    }
    Ok(outbound)
}
