//! Settings from the environment, read once, typed, failing fast with the variable's name.
//! Defaults work on a developer machine with local PostgreSQL and Redis; secrets are never
//! printed (`Debug` shows how many tokens there are, not what they are).

mod outbound;
mod tokens;
mod worker;

use std::{fmt, net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use secrecy::SecretSlice;

use self::{outbound::parse_oauth_clients, tokens::parse_tokens};
pub use self::{
    outbound::{OAuthClient, OutboundSettings, WebhookSettings},
    tokens::ApiToken,
    worker::{DbTimeouts, FaultKind, FaultSpec, StepSettings, WorkerSettings},
};

/// The development token: accepted only with `OFFBOARD_DEV_TOKEN=1`, never beside configured
/// tokens, and only while the API is bound to a loopback address.
pub const DEV_TOKEN: &str = "offboard-dev-token";

/// The most `OFFBOARD_MAX_IN_FLIGHT` may be. apalis-redis 1.0's fetch fails for good once
/// more than ~8,000 tasks are due in one queue; the step queue can hold the in-flight steps
/// plus as many re-pushed after a lost delivery, so half of that, with a margin.
pub const MAX_IN_FLIGHT_LIMIT: i64 = 3_000;

/// Purges fire from the sweeper only this long after they were due (by default:
/// `OFFBOARD_PURGE_GRACE`); before that they are the purge queue's to fire.
pub const PURGE_GRACE: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct Settings {
    pub database_url: String,
    pub redis_url: String,
    /// Redis key prefix of the queues, so several installs (or tests) can share one Redis.
    pub queue_prefix: String,
    pub bind: SocketAddr,
    /// Connections in this process' PostgreSQL pool.
    pub db_pool_size: u32,
    /// Time limits every PostgreSQL connection of the process gets.
    pub db_timeouts: DbTimeouts,
    pub api_tokens: Vec<ApiToken>,
    /// The development token is accepted (`OFFBOARD_DEV_TOKEN=1`): local development,
    /// tests and `offboard demo` only. Refused beside `OFFBOARD_API_TOKENS`.
    pub dev_token: bool,
    /// The key of the HMAC kept of each idempotent request's body
    /// (`OFFBOARD_IDEMPOTENCY_SECRET`); required to serve unless `dev_token` is on, where a
    /// random one per process stands in.
    pub idempotency_secret: Option<SecretSlice<u8>>,
    /// Idempotency keys older than this are deleted by the sweeper
    /// (`OFFBOARD_IDEMPOTENCY_RETENTION`, default 7 days): a replay after it creates nothing
    /// new only if the user's state refuses it.
    pub idempotency_retention: Duration,
    pub log_format: LogFormat,
    /// Faults to inject into steps (`OFFBOARD_FAULTS`), for fault drills; empty normally.
    pub faults: Vec<FaultSpec>,
    /// How old the ledger counts of `/metrics` and `/v1/stats` may be
    /// (`OFFBOARD_STATS_MAX_AGE`, default 5 s): at most one set of counts per process per period.
    pub stats_max_age: Duration,
    pub worker: WorkerSettings,
    pub steps: StepSettings,
    pub webhooks: WebhookSettings,
    pub outbound: OutboundSettings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can supply their own environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let worker_defaults = WorkerSettings::default();
        let step_defaults = StepSettings::default();

        let bind = match var("OFFBOARD_BIND") {
            Some(v) => v.parse().with_context(|| {
                format!("OFFBOARD_BIND: {v:?} is not an address like 127.0.0.1:8080")
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let api_tokens = match var("OFFBOARD_API_TOKENS") {
            Some(v) => parse_tokens(&v).context("OFFBOARD_API_TOKENS")?,
            None => Vec::new(),
        };
        let dev_token = match var("OFFBOARD_DEV_TOKEN").as_deref() {
            None | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(other) => bail!("OFFBOARD_DEV_TOKEN: {:?} is neither 1 nor 0", other),
        };
        if dev_token && !api_tokens.is_empty() {
            bail!(
                "OFFBOARD_DEV_TOKEN=1 and OFFBOARD_API_TOKENS are both set: the development token \
                 is never accepted beside configured tokens; unset OFFBOARD_DEV_TOKEN"
            );
        }
        if dev_token && !bind.ip().is_loopback() {
            bail!(
                "OFFBOARD_DEV_TOKEN=1 with OFFBOARD_BIND={bind}: the development token is only \
                 accepted on a loopback address; set OFFBOARD_API_TOKENS instead"
            );
        }
        let idempotency_secret = match var("OFFBOARD_IDEMPOTENCY_SECRET") {
            Some(v) if v.trim().len() < 32 => {
                bail!("OFFBOARD_IDEMPOTENCY_SECRET: must be at least 32 characters")
            }
            Some(v) => Some(SecretSlice::from(v.trim().as_bytes().to_vec())),
            None => None,
        };
        let log_format = match var("OFFBOARD_LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("OFFBOARD_LOG_FORMAT: {other:?} is neither text nor json"),
        };

        let duration = |name: &str, default: Duration| -> anyhow::Result<Duration> {
            match var(name) {
                Some(v) => parse_duration(&v).with_context(|| format!("{name}: {v:?}")),
                None => Ok(default),
            }
        };
        let number = |name: &str, default: i64, min: i64| -> anyhow::Result<i64> {
            match var(name) {
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
        };

        let concurrency =
            number("OFFBOARD_WORKER_CONCURRENCY", worker_defaults.concurrency as i64, 1)? as usize;
        let worker = WorkerSettings {
            concurrency,
            // A connection per task running at once, and a few for the dispatcher, the
            // sweeper and lease renewal.
            db_pool_size: number("OFFBOARD_WORKER_DB_POOL", concurrency as i64 + 8, 2)? as u32,
            max_in_flight: number("OFFBOARD_MAX_IN_FLIGHT", worker_defaults.max_in_flight, 1)?,
            max_in_flight_per_company: number(
                "OFFBOARD_MAX_IN_FLIGHT_PER_COMPANY",
                worker_defaults.max_in_flight_per_company,
                1,
            )?,
            lease: duration("OFFBOARD_LEASE", worker_defaults.lease)?,
            redeliver_after: duration("OFFBOARD_REDELIVER_AFTER", worker_defaults.redeliver_after)?,
            max_attempts: number("OFFBOARD_MAX_ATTEMPTS", worker_defaults.max_attempts as i64, 1)?
                as i32,
            backoff_base: duration("OFFBOARD_BACKOFF_BASE", worker_defaults.backoff_base)?,
            backoff_cap: duration("OFFBOARD_BACKOFF_CAP", worker_defaults.backoff_cap)?,
            poll_interval: duration("OFFBOARD_POLL_INTERVAL", worker_defaults.poll_interval)?,
            dispatch_interval: duration(
                "OFFBOARD_DISPATCH_INTERVAL",
                worker_defaults.dispatch_interval,
            )?,
            shutdown_timeout: duration(
                "OFFBOARD_SHUTDOWN_TIMEOUT",
                worker_defaults.shutdown_timeout,
            )?,
            bulk_chunk: number("OFFBOARD_BULK_CHUNK", worker_defaults.bulk_chunk, 1)?,
            bulk_pause: duration("OFFBOARD_BULK_PAUSE", worker_defaults.bulk_pause)?,
            purge_grace: duration("OFFBOARD_PURGE_GRACE", worker_defaults.purge_grace)?,
            step_timeout: duration("OFFBOARD_STEP_TIMEOUT", worker_defaults.step_timeout)?,
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
        let timeout_defaults = DbTimeouts::default();
        let db_timeouts = DbTimeouts {
            statement: duration("OFFBOARD_DB_STATEMENT_TIMEOUT", timeout_defaults.statement)?,
            lock: duration("OFFBOARD_DB_LOCK_TIMEOUT", timeout_defaults.lock)?,
            idle_in_transaction: duration(
                "OFFBOARD_DB_IDLE_IN_TRANSACTION_TIMEOUT",
                timeout_defaults.idle_in_transaction,
            )?,
            keepalive_idle: duration("OFFBOARD_DB_KEEPALIVE", timeout_defaults.keepalive_idle)?,
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
        if worker.lease < Duration::from_millis(500) {
            bail!("OFFBOARD_LEASE: must be at least 500ms");
        }
        let steps = StepSettings {
            reassign_batch: number("OFFBOARD_REASSIGN_BATCH", step_defaults.reassign_batch, 1)?,
            private_email_retention: duration(
                "OFFBOARD_PRIVATE_EMAIL_RETENTION",
                step_defaults.private_email_retention,
            )?,
        };

        let hook_defaults = WebhookSettings::default();
        let webhooks = WebhookSettings {
            timeout: duration("OFFBOARD_WEBHOOK_TIMEOUT", hook_defaults.timeout)?,
            retry_schedule: match var("OFFBOARD_WEBHOOK_RETRY_SCHEDULE") {
                Some(v) => v
                    .split(',')
                    .map(parse_duration)
                    .collect::<anyhow::Result<Vec<_>>>()
                    .with_context(|| format!("OFFBOARD_WEBHOOK_RETRY_SCHEDULE: {v:?}"))?,
                None => hook_defaults.retry_schedule,
            },
            allow_private: match var("OFFBOARD_WEBHOOK_ALLOW_PRIVATE").as_deref() {
                None | Some("0") | Some("false") => false,
                Some("1") | Some("true") => true,
                Some(other) => {
                    bail!("OFFBOARD_WEBHOOK_ALLOW_PRIVATE: {other:?} is neither 1 nor 0")
                }
            },
            max_in_flight_per_endpoint: number(
                "OFFBOARD_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT",
                hook_defaults.max_in_flight_per_endpoint,
                1,
            )?,
            concurrency: number(
                "OFFBOARD_WEBHOOK_CONCURRENCY",
                hook_defaults.concurrency as i64,
                1,
            )? as usize,
            breaker_after: number(
                "OFFBOARD_WEBHOOK_BREAKER_AFTER",
                hook_defaults.breaker_after as i64,
                1,
            )? as i32,
            breaker_pause: duration("OFFBOARD_WEBHOOK_BREAKER_PAUSE", hook_defaults.breaker_pause)?,
            secret_overlap: duration(
                "OFFBOARD_WEBHOOK_SECRET_OVERLAP",
                hook_defaults.secret_overlap,
            )?,
            poll_interval: duration("OFFBOARD_WEBHOOK_POLL_INTERVAL", hook_defaults.poll_interval)?,
        };
        if webhooks.timeout.is_zero() {
            bail!("OFFBOARD_WEBHOOK_TIMEOUT: must be above 0");
        }

        let out_defaults = OutboundSettings::default();
        let outbound = OutboundSettings {
            timeout: duration("OFFBOARD_OUTBOUND_TIMEOUT", out_defaults.timeout)?,
            allow_private: match var("OFFBOARD_OUTBOUND_ALLOW_PRIVATE").as_deref() {
                None => webhooks.allow_private,
                Some("0") | Some("false") => false,
                Some("1") | Some("true") => true,
                Some(other) => {
                    bail!("OFFBOARD_OUTBOUND_ALLOW_PRIVATE: {other:?} is neither 1 nor 0")
                }
            },
            max_in_flight_per_host: number(
                "OFFBOARD_OUTBOUND_MAX_IN_FLIGHT_PER_HOST",
                out_defaults.max_in_flight_per_host as i64,
                1,
            )? as usize,
            rate_per_host: match var("OFFBOARD_OUTBOUND_RATE_PER_HOST") {
                Some(v) => {
                    let r: f64 = v.trim().parse().with_context(|| {
                        format!("OFFBOARD_OUTBOUND_RATE_PER_HOST: {v:?} is not a number")
                    })?;
                    if !(r > 0.0 && r.is_finite()) {
                        bail!("OFFBOARD_OUTBOUND_RATE_PER_HOST: must be above 0");
                    }
                    r
                }
                None => out_defaults.rate_per_host,
            },
            burst_per_host: number(
                "OFFBOARD_OUTBOUND_BURST_PER_HOST",
                out_defaults.burst_per_host as i64,
                1,
            )? as u32,
            breaker_after: number(
                "OFFBOARD_OUTBOUND_BREAKER_AFTER",
                out_defaults.breaker_after as i64,
                1,
            )? as i32,
            breaker_pause: duration("OFFBOARD_OUTBOUND_BREAKER_PAUSE", out_defaults.breaker_pause)?,
            concurrency: number(
                "OFFBOARD_OUTBOUND_CONCURRENCY",
                out_defaults.concurrency as i64,
                1,
            )? as usize,
            oauth_clients: match var("OFFBOARD_OAUTH_CLIENTS") {
                Some(v) => parse_oauth_clients(&v).context("OFFBOARD_OAUTH_CLIENTS")?,
                None => Vec::new(),
            },
        };
        if outbound.timeout.is_zero() {
            bail!("OFFBOARD_OUTBOUND_TIMEOUT: must be above 0");
        }

        Ok(Self {
            database_url: var("DATABASE_URL")
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/offboard".into()),
            redis_url: var("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            queue_prefix: var("OFFBOARD_QUEUE_PREFIX").unwrap_or_else(|| "offboard".into()),
            bind,
            db_pool_size: number("OFFBOARD_DB_POOL", 16, 2)? as u32,
            db_timeouts,
            api_tokens,
            dev_token,
            idempotency_secret,
            idempotency_retention: duration(
                "OFFBOARD_IDEMPOTENCY_RETENTION",
                Duration::from_secs(7 * 86_400),
            )?,
            log_format,
            faults: match var("OFFBOARD_FAULTS") {
                Some(spec) => {
                    FaultSpec::parse(&spec).map_err(|e| anyhow::anyhow!("OFFBOARD_FAULTS: {e}"))?
                }
                None => Vec::new(),
            },
            stats_max_age: duration("OFFBOARD_STATS_MAX_AGE", Duration::from_secs(5))?,
            worker,
            steps,
            webhooks,
            outbound,
        })
    }

    /// The tokens the API accepts: the configured ones, or the development token alone when
    /// it is enabled (the two never together: `from_lookup` refuses that).
    pub fn accepted_tokens(&self) -> Vec<ApiToken> {
        if self.dev_token && self.api_tokens.is_empty() && self.bind.ip().is_loopback() {
            return vec![ApiToken::new(DEV_TOKEN, None)];
        }
        self.api_tokens.clone()
    }

    /// What `offboard serve` needs beyond what every command needs: a way in (tokens or the
    /// development token) and the idempotency secret (outside development).
    pub fn check_serving(&self) -> anyhow::Result<()> {
        if self.dev_token {
            return Ok(());
        }
        if self.api_tokens.is_empty() {
            bail!(
                "no API token: set OFFBOARD_API_TOKENS (comma-separated, TOKEN@COMPANY_ID for a \
                 company's), or OFFBOARD_DEV_TOKEN=1 for local development"
            );
        }
        if self.idempotency_secret.is_none() {
            bail!(
                "OFFBOARD_IDEMPOTENCY_SECRET is not set: it keys the hash kept of each \
                 idempotent request (at least 32 random characters, e.g. `openssl rand -hex 32`)"
            );
        }
        Ok(())
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &redact_url(&self.database_url))
            .field("redis_url", &redact_url(&self.redis_url))
            .field("queue_prefix", &self.queue_prefix)
            .field("bind", &self.bind)
            .field("db_pool_size", &self.db_pool_size)
            .field("db_timeouts", &self.db_timeouts)
            .field("api_tokens", &format_args!("{} configured", self.api_tokens.len()))
            .field("dev_token", &self.dev_token)
            .field("idempotency_secret", &self.idempotency_secret.as_ref().map(|_| "[redacted]"))
            .field("idempotency_retention", &self.idempotency_retention)
            .field("log_format", &self.log_format)
            .field("faults", &self.faults)
            .field("stats_max_age", &self.stats_max_age)
            .field("worker", &self.worker)
            .field("steps", &self.steps)
            .field("webhooks", &self.webhooks)
            .field("outbound", &self.outbound)
            .finish()
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

/// Hides a password in a connection URL.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests;
