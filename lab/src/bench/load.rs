//! The load generator and its arithmetic: keep-alive HTTP/1.1 loops counting what
//! completes in a measuring window, the requests they send, percentiles and medians, and
//! the polling the scenarios wait with.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// An HTTP client for the layoff's status polling and single requests.
pub(crate) fn http_client(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// One request of a load, built afresh for each send.
pub(crate) type LoadRequest = hyper::Request<Full<Bytes>>;

/// `GET path`, without a token.
pub(crate) fn get(path: &str) -> LoadRequest {
    hyper::Request::get(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
}

/// `POST path` with a JSON body, the development token and `headers`.
pub(crate) fn post_json(
    path: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> LoadRequest {
    let mut request = hyper::Request::post(path)
        .header(hyper::header::HOST, "127.0.0.1")
        .header(hyper::header::AUTHORIZATION, format!("Bearer {}", offboard::config::DEV_TOKEN))
        .header(hyper::header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::new(Bytes::from(body.to_string()))).expect("a valid request")
}

/// What a load run saw within its measuring window.
#[derive(Debug, Default)]
pub(crate) struct LoadResult {
    pub ok: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Latency of each successful request in the window.
    pub latencies: Vec<Duration>,
    pub first_failure: Option<String>,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`-th percentile latency in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies, p).as_secs_f64() * 1000.0
    }
}

pub(crate) fn percentile(sorted_or_not: &[Duration], p: f64) -> Duration {
    if sorted_or_not.is_empty() {
        return Duration::ZERO;
    }
    let mut v = sorted_or_not.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[rank.min(v.len() - 1)]
}

/// `connections` concurrent loops against `addr`, each on one keep-alive HTTP/1.1
/// connection of its own (bare hyper: no pool, no redirects, no per-request set-up, so
/// the generator takes as little as it can of the CPU it shares with the service), each
/// sending the next request from `next` (given a sequence number; `None` ends the load)
/// and expecting `expect`. Requests that complete within `[warmup, warmup + measure)` are
/// counted; the load stops after that window or when `next` runs out (the window then
/// ends at the last completion).
pub(crate) async fn http_load<F>(
    addr: SocketAddr,
    connections: usize,
    warmup: Duration,
    measure: Duration,
    expect: hyper::StatusCode,
    next: F,
) -> anyhow::Result<LoadResult>
where
    F: Fn(usize) -> Option<LoadRequest> + Send + Sync + 'static,
{
    let next = Arc::new(next);
    let sequence = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let window_start = start + warmup;
    let window_end = window_start + measure;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (next, sequence) = (next.clone(), sequence.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            let driver = tokio::spawn(connection);
            let mut seen = LoadResult::default();
            let mut last_done = start;
            while Instant::now() < window_end {
                let i = sequence.fetch_add(1, Ordering::Relaxed);
                let Some(request) = next(i) else { break };
                let sent = Instant::now();
                let outcome = match sender.ready().await {
                    Ok(()) => sender.send_request(request).await,
                    Err(e) => Err(e),
                };
                let outcome = match outcome {
                    Ok(response) => {
                        let status = response.status();
                        response.into_body().collect().await.map(|b| (status, b.to_bytes()))
                    }
                    Err(e) => Err(e),
                };
                let done = Instant::now();
                match outcome {
                    Ok((status, _)) if status == expect => {
                        if done >= window_start && done < window_end {
                            seen.ok += 1;
                            seen.latencies.push(done - sent);
                            last_done = last_done.max(done);
                        }
                    }
                    Ok((status, body)) => {
                        seen.failed += 1;
                        seen.first_failure.get_or_insert_with(|| {
                            format!("{status}: {}", String::from_utf8_lossy(&body))
                        });
                    }
                    Err(e) => {
                        seen.failed += 1;
                        seen.first_failure.get_or_insert_with(|| e.to_string());
                        break;
                    }
                }
            }
            drop(sender);
            driver.abort();
            anyhow::Ok((seen, last_done))
        }));
    }
    let mut total = LoadResult::default();
    let mut last_done = window_start;
    for task in tasks {
        let (seen, done) = task.await??;
        total.ok += seen.ok;
        total.failed += seen.failed;
        total.latencies.extend(seen.latencies);
        if total.first_failure.is_none() {
            total.first_failure = seen.first_failure;
        }
        last_done = last_done.max(done);
    }
    total.elapsed = window_end.min(last_done.max(window_start)) - window_start;
    if total.elapsed.is_zero() {
        total.elapsed = Duration::from_millis(1);
    }
    Ok(total)
}

/// Polls until `done` says so, every `every`, failing after `limit`.
pub(crate) async fn wait_until<F, Fut>(
    what: &str,
    every: Duration,
    limit: Duration,
    mut done: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if done().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not finish within {limit:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// The time from `started` to the last finish the ledger recorded, `since_last` seconds
/// before now: the polling's last interval is not counted.
pub(crate) fn until_last_finish(started: Instant, since_last: f64) -> Duration {
    started.elapsed().saturating_sub(Duration::from_secs_f64(since_last.max(0.0)))
}

/// `met` or `MISSED` for a target line.
pub(crate) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}
