//! The suite's HTTP client for the API it runs in this process.

use std::time::{Duration, Instant};

use anyhow::bail;
use offboard::config::DEV_TOKEN;
use serde_json::Value;

/// The suite's HTTP client. Requests are retried while the API cannot answer (PostgreSQL
/// restarting): with the same Idempotency-Key, so a retry never enqueues a second run.
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Self { base: base.to_string(), http }
    }

    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut request =
                self.http.post(format!("{}{path}", self.base)).bearer_auth(DEV_TOKEN).json(body);
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            let last = match request.send().await {
                Ok(response) if !response.status().is_server_error() => {
                    let status = response.status().as_u16();
                    match response.json::<Value>().await {
                        Ok(value) => return Ok((status, value)),
                        Err(e) => e.to_string(),
                    }
                }
                Ok(response) => response.status().to_string(),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                bail!("POST {path}: no answer within two minutes (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
