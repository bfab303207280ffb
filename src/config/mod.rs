//! Settings from the environment, read once, typed, failing fast with the variable's name.
//! Defaults work on a developer machine with local PostgreSQL and Redis; secrets are never
//! printed (`Debug` shows how many tokens there are, not what they are).

mod env;
mod outbound;
mod tokens;
mod worker;

use std::{fmt, net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use secrecy::SecretSlice;

use self::{env::Env, tokens::parse_tokens};
pub use self::{
    env::parse_duration,
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
        let env = Env::new(&lookup);

        let bind = match env.var("OFFBOARD_BIND") {
            Some(v) => v.parse().with_context(|| {
                format!("OFFBOARD_BIND: {v:?} is not an address like 127.0.0.1:8080")
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let api_tokens = match env.var("OFFBOARD_API_TOKENS") {
            Some(v) => parse_tokens(&v).context("OFFBOARD_API_TOKENS")?,
            None => Vec::new(),
        };
        let dev_token = env.flag("OFFBOARD_DEV_TOKEN", false)?;
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
        let idempotency_secret = match env.var("OFFBOARD_IDEMPOTENCY_SECRET") {
            Some(v) if v.trim().len() < 32 => {
                bail!("OFFBOARD_IDEMPOTENCY_SECRET: must be at least 32 characters")
            }
            Some(v) => Some(SecretSlice::from(v.trim().as_bytes().to_vec())),
            None => None,
        };
        let log_format = match env.var("OFFBOARD_LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("OFFBOARD_LOG_FORMAT: {other:?} is neither text nor json"),
        };
        let worker = env::worker(&env)?;
        let db_timeouts = env::db_timeouts(&env)?;
        let steps = env::steps(&env)?;
        let webhooks = env::webhooks(&env)?;
        let outbound = env::outbound(&env, webhooks.allow_private)?;

        Ok(Self {
            database_url: env
                .var("DATABASE_URL")
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/offboard".into()),
            redis_url: env.var("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            queue_prefix: env.var("OFFBOARD_QUEUE_PREFIX").unwrap_or_else(|| "offboard".into()),
            bind,
            db_pool_size: env.number("OFFBOARD_DB_POOL", 16, 2)? as u32,
            db_timeouts,
            api_tokens,
            dev_token,
            idempotency_secret,
            idempotency_retention: env
                .duration("OFFBOARD_IDEMPOTENCY_RETENTION", Duration::from_secs(7 * 86_400))?,
            log_format,
            faults: match env.var("OFFBOARD_FAULTS") {
                Some(spec) => {
                    FaultSpec::parse(&spec).map_err(|e| anyhow::anyhow!("OFFBOARD_FAULTS: {e}"))?
                }
                None => Vec::new(),
            },
            stats_max_age: env.duration("OFFBOARD_STATS_MAX_AGE", Duration::from_secs(5))?,
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
