//! The outbound HTTP client every remote call goes through: the SSRF guard on every
//! connection, no redirects followed (a 3xx is an answer, not a hop), no proxies from the
//! environment, one timeout per attempt from connect to the last byte, and the answer
//! reduced to what the caller records: the status, a stable error code, the latency and
//! any `Retry-After`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::{StatusCode, header::HeaderMap};

use super::guard::{self, AddressRefused, GuardedResolver};

/// The body of a call: JSON (signed webhooks) or a form (OAuth revocation, RFC 7009).
#[derive(Debug, Clone)]
pub enum Body {
    Json(String),
    Form(Vec<(String, String)>),
}

/// One POST.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub url: &'a str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The receiver's status; `None` when no answer came.
    pub status: Option<u16>,
    /// A stable code when the call did not succeed: `timeout`, `connect`,
    /// `address_refused`, `invalid_url`, `request`, `redirect` (3xx) or `http_<status>`.
    pub error: Option<String>,
    pub latency: Duration,
    /// `Retry-After` of a 429 or 503, as a pause.
    pub retry_after: Option<Duration>,
}

impl Answer {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    allow_private: bool,
}

impl Client {
    pub fn new(timeout: Duration, allow_private: bool) -> anyhow::Result<Self> {
        Self::with_agent(
            timeout,
            allow_private,
            concat!("offboard-webhooks/", env!("CARGO_PKG_VERSION")),
        )
    }

    /// A client that names itself `user_agent` (steps' calls to providers and vendors say
    /// `offboard/…`).
    pub fn with_agent(
        timeout: Duration,
        allow_private: bool,
        user_agent: &'static str,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(user_agent)
            .build()?;
        Ok(Self { http, allow_private })
    }

    /// Sends one POST and reports how it went; never an error: every failure is an answer.
    pub async fn post(&self, call: Call<'_>) -> Answer {
        let started = Instant::now();
        let failed = |code: &str| Answer {
            status: None,
            error: Some(code.to_string()),
            latency: started.elapsed(),
            retry_after: None,
        };
        let Ok(url) = url::Url::parse(call.url) else { return failed("invalid_url") };
        if guard::check_literal(&url, self.allow_private).is_err() {
            return failed("address_refused");
        }
        let mut request = self.http.post(url);
        for (name, value) in &call.headers {
            request = request.header(*name, value);
        }
        request = match call.body {
            Body::Json(body) => request.header("content-type", "application/json").body(body),
            Body::Form(fields) => request.form(&fields),
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return failed(error_code(&e)),
        };
        let status = response.status();
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                retry_after(response.headers())
            }
            _ => None,
        };
        let read = drain(response).await;
        let latency = started.elapsed();
        let error = if read.is_err() {
            Some("timeout".to_string())
        } else if status.is_success() {
            None
        } else if status.is_redirection() {
            Some("redirect".to_string())
        } else {
            Some(format!("http_{}", status.as_u16()))
        };
        Answer { status: Some(status.as_u16()), error, latency, retry_after }
    }
}

/// Largest answer body read (and thrown away) so the connection can be reused; past it
/// the connection is dropped instead. Its content is never kept.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

async fn drain(mut response: reqwest::Response) -> Result<(), reqwest::Error> {
    let mut read = 0;
    while let Some(chunk) = response.chunk().await? {
        read += chunk.len();
        if read > MAX_ANSWER_BYTES {
            break;
        }
    }
    Ok(())
}

fn error_code(e: &reqwest::Error) -> &'static str {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.downcast_ref::<AddressRefused>().is_some() {
            return "address_refused";
        }
        source = err.source();
    }
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    }
}

/// `Retry-After` as seconds or an HTTP date, capped at a day.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let raw = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let pause = match raw.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or_default()
        }
    };
    Some(pause.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "120".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
        h.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", "999999999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[tokio::test]
    async fn private_destinations_are_refused_before_any_connection() {
        let client = Client::new(Duration::from_secs(2), false).unwrap();
        for url in ["http://127.0.0.1:9/x", "https://169.254.169.254/x", "https://localhost:9/x"] {
            let answer =
                client.post(Call { url, headers: vec![], body: Body::Json("{}".into()) }).await;
            assert_eq!(answer.error.as_deref(), Some("address_refused"), "{url}");
            assert_eq!(answer.status, None);
        }
    }
}
