//! Settings from the environment, read once, typed, failing fast with the variable's name.
//! Defaults work on a developer machine with local PostgreSQL and Redis; secrets are never
//! printed (`Debug` shows how many tokens there are, not what they are).

use std::{fmt, net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use secrecy::{SecretSlice, SecretString};
use sha2::{Digest, Sha256};

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

/// How steps call outside systems (OAuth providers, app vendors): per-call timeout,
/// per-destination limits and breaker, and the OAuth clients.
#[derive(Clone)]
pub struct OutboundSettings {
    /// One call's limit, connect to last byte (`OFFBOARD_OUTBOUND_TIMEOUT`).
    pub timeout: Duration,
    /// Plain http and private destinations (`OFFBOARD_OUTBOUND_ALLOW_PRIVATE`, by default
    /// as `OFFBOARD_WEBHOOK_ALLOW_PRIVATE`).
    pub allow_private: bool,
    /// Calls in flight to one destination host from one process
    /// (`OFFBOARD_OUTBOUND_MAX_IN_FLIGHT_PER_HOST`).
    pub max_in_flight_per_host: usize,
    /// Token bucket per destination host and process: calls per second and burst
    /// (`OFFBOARD_OUTBOUND_RATE_PER_HOST`, `OFFBOARD_OUTBOUND_BURST_PER_HOST`).
    pub rate_per_host: f64,
    pub burst_per_host: u32,
    /// Failed calls in a row that open a host's breaker, and how long it stays open before
    /// one probe goes (`OFFBOARD_OUTBOUND_BREAKER_AFTER`, `OFFBOARD_OUTBOUND_BREAKER_PAUSE`).
    pub breaker_after: i32,
    pub breaker_pause: Duration,
    /// OAuth client credentials per provider name (`OFFBOARD_OAUTH_CLIENTS`).
    pub oauth_clients: Vec<OAuthClient>,
}

/// An OAuth client's credentials at one provider. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthClient {
    pub provider: String,
    pub client_id: String,
    pub client_secret: String,
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClient")
            .field("provider", &self.provider)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for OutboundSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundSettings")
            .field("timeout", &self.timeout)
            .field("allow_private", &self.allow_private)
            .field("max_in_flight_per_host", &self.max_in_flight_per_host)
            .field("rate_per_host", &self.rate_per_host)
            .field("burst_per_host", &self.burst_per_host)
            .field("breaker_after", &self.breaker_after)
            .field("breaker_pause", &self.breaker_pause)
            .field("oauth_clients", &self.oauth_clients)
            .finish()
    }
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            allow_private: false,
            max_in_flight_per_host: 8,
            rate_per_host: 50.0,
            burst_per_host: 50,
            breaker_after: 5,
            breaker_pause: Duration::from_secs(30),
            oauth_clients: Vec::new(),
        }
    }
}

impl OutboundSettings {
    pub fn client(&self, provider: &str) -> Option<&OAuthClient> {
        self.oauth_clients.iter().find(|c| c.provider == provider)
    }
}

/// `provider=client_id:client_secret`, comma-separated (the secret is everything after the
/// first `:`). Errors name the entry's position, never its text.
fn parse_oauth_clients(raw: &str) -> anyhow::Result<Vec<OAuthClient>> {
    raw.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
        .map(|(i, entry)| {
            let (provider, creds) = entry
                .split_once('=')
                .with_context(|| format!("entry {} is not provider=client_id:secret", i + 1))?;
            let (id, secret) = creds
                .split_once(':')
                .with_context(|| format!("entry {} is not provider=client_id:secret", i + 1))?;
            if provider.trim().is_empty() || id.is_empty() || secret.is_empty() {
                bail!("entry {} has an empty provider, client id or secret", i + 1);
            }
            Ok(OAuthClient {
                provider: provider.trim().to_string(),
                client_id: id.to_string(),
                client_secret: secret.to_string(),
            })
        })
        .collect()
}

/// One bearer token, optionally scoped to a single company. The token is held as a secret
/// (zeroed on drop, never in `Debug`); requests are matched against its SHA-256 digest.
#[derive(Clone)]
pub struct ApiToken {
    secret: SecretString,
    digest: [u8; 32],
    pub company_id: Option<i64>,
}

impl ApiToken {
    pub fn new(secret: &str, company_id: Option<i64>) -> Self {
        Self { secret: secret.into(), digest: Sha256::digest(secret.as_bytes()).into(), company_id }
    }

    /// The token itself, for a client that must present it.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// The SHA-256 digest requests are compared against (in constant time, by the API).
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("secret", &"[redacted]")
            .field("company_id", &self.company_id)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How workers take and run steps.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Tasks one worker process runs at once (a task: one step, or a run's ready steps).
    pub concurrency: usize,
    /// Steps handed to Redis (queued) or running, across all companies.
    pub max_in_flight: i64,
    /// Steps in flight for one company, so one tenant's layoff cannot starve another.
    pub max_in_flight_per_company: i64,
    /// How long a worker's claim on a step lasts without renewal.
    pub lease: Duration,
    /// A queued step not claimed within this time is pushed to Redis again (outbox).
    pub redeliver_after: Duration,
    /// Attempts before a step is dead (a lease that expires counts as one).
    pub max_attempts: i32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// How often an idle worker looks for work in Redis.
    pub poll_interval: Duration,
    /// How often the dispatcher looks for ready steps without being nudged.
    pub dispatch_interval: Duration,
    /// Running steps get this long to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// PostgreSQL connections of a process's workers (their own pool, beside the API's).
    pub db_pool_size: u32,
    /// Runs one transaction of a bulk retry or cancel acts on.
    pub bulk_chunk: i64,
    /// The pause between two chunks of a bulk action, so steps keep running beside it.
    pub bulk_pause: Duration,
    /// A purge is the purge queue's to fire until this long after it was due; then the
    /// sweeper fires it itself (its Redis task was lost).
    pub purge_grace: Duration,
    /// The deadline of one attempt of a step (every batch of it): past it the attempt
    /// fails with `timeout` and is retried with backoff, and its lease is no longer renewed.
    pub step_timeout: Duration,
}

/// Time limits set on every PostgreSQL connection of both pools (sent with the connection's
/// start-up, so they cost no statement): a statement, a lock wait, a transaction left idle
/// never run past them; the server's TCP keepalive finds a peer that vanished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbTimeouts {
    /// `statement_timeout`.
    pub statement: Duration,
    /// `lock_timeout`.
    pub lock: Duration,
    /// `idle_in_transaction_session_timeout`.
    pub idle_in_transaction: Duration,
    /// `tcp_keepalives_idle` (probes every tenth of it after, 3 of them).
    pub keepalive_idle: Duration,
}

impl Default for DbTimeouts {
    fn default() -> Self {
        Self {
            statement: Duration::from_secs(60),
            lock: Duration::from_secs(10),
            idle_in_transaction: Duration::from_secs(60),
            keepalive_idle: Duration::from_secs(30),
        }
    }
}

/// What steps need to know beyond the run.
#[derive(Clone, Debug)]
pub struct StepSettings {
    /// Rows one reassignment transaction may touch.
    pub reassign_batch: i64,
    /// Private emails are purged this long after deactivation.
    pub private_email_retention: Duration,
}

/// How host webhooks are delivered (the outbound engine).
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// One attempt's limit, connect to last byte (`OFFBOARD_WEBHOOK_TIMEOUT`).
    pub timeout: Duration,
    /// Pauses after each failed attempt; one attempt more than pauses in all
    /// (`OFFBOARD_WEBHOOK_RETRY_SCHEDULE`, comma-separated durations).
    pub retry_schedule: Vec<Duration>,
    /// Plain http and private, loopback and link-local destinations allowed
    /// (`OFFBOARD_WEBHOOK_ALLOW_PRIVATE=1`): tests and local development only.
    pub allow_private: bool,
    /// Deliveries in flight to one endpoint, across processes.
    pub max_in_flight_per_endpoint: i64,
    /// Deliveries one process sends at once.
    pub concurrency: usize,
    /// Failed attempts in a row that open an endpoint's breaker, and how long it pauses.
    pub breaker_after: i32,
    pub breaker_pause: Duration,
    /// After a rotation, the previous secret still signs for this long.
    pub secret_overlap: Duration,
    /// How often the deliverer looks for due deliveries without being woken.
    pub poll_interval: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let h = |n: u64| Duration::from_secs(n * 3600);
        Self {
            timeout: Duration::from_secs(15),
            // Standard Webhooks' example: at once, then these pauses.
            retry_schedule: vec![
                Duration::from_secs(5),
                Duration::from_secs(300),
                Duration::from_secs(1800),
                h(2),
                h(5),
                h(10),
                h(14),
                h(20),
                h(24),
            ],
            allow_private: false,
            max_in_flight_per_endpoint: 4,
            concurrency: 64,
            breaker_after: 5,
            breaker_pause: Duration::from_secs(60),
            secret_overlap: h(24),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// What a fault drill injects into a named step (`OFFBOARD_FAULTS`): plain data, turned into
/// live faults by the engine's `faults` module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSpec {
    pub step: String,
    pub kind: FaultKind,
    pub times: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Retryable,
    Permanent,
    /// Abort the whole process after the claim: a step that kills its worker.
    Crash,
}

impl FaultSpec {
    /// `step=kind[*n],...` with kind `retryable`, `permanent` or `crash`, e.g.
    /// `stop_syncs=permanent,reassign_deals=retryable*3`.
    pub fn parse(spec: &str) -> Result<Vec<Self>, String> {
        let mut specs = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (step, rest) =
                entry.split_once('=').ok_or_else(|| format!("{entry:?}: expected step=kind"))?;
            let (kind, times) = match rest.split_once('*') {
                Some((kind, n)) => {
                    (kind, n.parse::<usize>().map_err(|_| format!("{entry:?}: bad count"))?)
                }
                None => (rest, 1),
            };
            let kind = match kind {
                "retryable" => FaultKind::Retryable,
                "permanent" => FaultKind::Permanent,
                "crash" => FaultKind::Crash,
                other => return Err(format!("{entry:?}: unknown fault kind {other:?}")),
            };
            specs.push(Self { step: step.to_string(), kind, times });
        }
        Ok(specs)
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            max_in_flight: 1024,
            max_in_flight_per_company: 48,
            lease: Duration::from_secs(10),
            redeliver_after: Duration::from_secs(10),
            max_attempts: 8,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(600),
            poll_interval: Duration::from_millis(50),
            dispatch_interval: Duration::from_millis(100),
            shutdown_timeout: Duration::from_secs(20),
            db_pool_size: 16 + 8,
            bulk_chunk: 100,
            bulk_pause: Duration::from_millis(20),
            purge_grace: PURGE_GRACE,
            step_timeout: Duration::from_secs(600),
        }
    }
}

impl Default for StepSettings {
    fn default() -> Self {
        Self { reassign_batch: 5_000, private_email_retention: Duration::from_secs(30 * 24 * 3600) }
    }
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

/// `TOKEN` (any company) or `TOKEN@COMPANY_ID` (one company), comma-separated.
fn parse_tokens(raw: &str) -> anyhow::Result<Vec<ApiToken>> {
    raw.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|entry| match entry.rsplit_once('@') {
            Some((secret, company)) => {
                let company_id = company.parse().with_context(|| {
                    format!("the company after '@' in token entry {} is not a number", entry.len())
                })?;
                check_token_secret(secret)?;
                Ok(ApiToken::new(secret, Some(company_id)))
            }
            None => {
                check_token_secret(entry)?;
                Ok(ApiToken::new(entry, None))
            }
        })
        .collect()
}

fn check_token_secret(secret: &str) -> anyhow::Result<()> {
    if secret.len() < 16 {
        bail!("a token is shorter than 16 characters");
    }
    if secret == DEV_TOKEN {
        bail!("the development token cannot be configured; choose a secret of your own");
    }
    Ok(())
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
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

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
        let err = settings(&[("OFFBOARD_BIND", "0.0.0.0:8080"), ("OFFBOARD_DEV_TOKEN", "1")])
            .unwrap_err();
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
        let s =
            settings(&[("OFFBOARD_API_TOKENS", "aaaaaaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbbbbbb@17")])
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
        assert_eq!(
            s.webhooks.retry_schedule,
            vec![Duration::from_millis(50), Duration::from_secs(1)]
        );
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
        let clients =
            parse_oauth_clients("google=abc.apps:s3cr:et, microsoft=id2:x").expect("parses");
        assert_eq!(clients.len(), 2);
        assert_eq!(clients[0].client_id, "abc.apps");
        assert_eq!(clients[0].client_secret, "s3cr:et");
        assert!(!format!("{:?}", clients).contains("s3cr"));
        let err = parse_oauth_clients("google=nosecret").unwrap_err();
        assert!(!format!("{err:#}").contains("nosecret"), "{err:#}");
        assert!(parse_oauth_clients("=a:b").is_err());
    }
}
