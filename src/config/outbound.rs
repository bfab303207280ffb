//! How steps call outside systems and how host webhooks are delivered.

use std::{fmt, time::Duration};

use anyhow::{Context, bail};

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
    /// Steps that call outside one process runs at once, apart from the worker's
    /// concurrency: such a step runs on a task of its own and gives its worker slot back
    /// at once, so a slow or hanging destination never holds the slots other steps need
    /// (`OFFBOARD_OUTBOUND_CONCURRENCY`).
    pub concurrency: usize,
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
            .field("concurrency", &self.concurrency)
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
            concurrency: 32,
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
pub(super) fn parse_oauth_clients(raw: &str) -> anyhow::Result<Vec<OAuthClient>> {
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
