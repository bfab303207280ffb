//! The operator CLI, a client of the HTTP API: list, watch (live progress bars per step),
//! retry and cancel runs, preview a user. Also renders the demo's live progress.

use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::domain::RunStatus;

/// Where the API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str, token: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Self { base: base.trim_end_matches('/').to_string(), token: token.to_string(), http }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let code = body["error"]["code"].as_str().unwrap_or("unknown");
            let message = body["error"]["message"].as_str().unwrap_or("");
            bail!("{status}: {code}: {message}");
        }
        Ok(body)
    }

    /// Posts a raw body (a batch file) and answers the status and body, error or not;
    /// waits up to `timeout` (a large batch is written before the answer).
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        idempotency_key: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<(reqwest::StatusCode, Value)> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .bearer_auth(&self.token)
            .body(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response =
            request.send().await.with_context(|| format!("cannot reach {}", self.base))?;
        let status = response.status();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.patch(format!("{}{path}", self.base)).json(body)).await
    }

    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request).await
    }
}

/// `offboard runs list`.
pub async fn list(client: &ApiClient, query: &str) -> anyhow::Result<()> {
    let body = client.get(&format!("/v1/offboardings?{query}")).await?;
    println!(
        "{:<36}  {:>8}  {:>8}  {:<22}  {:<17}  {:>5}  {:<27}  due",
        "id", "company", "user", "action", "status", "steps", "created"
    );
    for run in body["runs"].as_array().into_iter().flatten() {
        println!(
            "{:<36}  {:>8}  {:>8}  {:<22}  {:<17}  {:>2}/{:<2}  {:<27}  {}",
            run["id"].as_str().unwrap_or(""),
            run["company_id"],
            run["user_id"],
            run["action"].as_str().unwrap_or(""),
            run["status"].as_str().unwrap_or(""),
            run["steps_succeeded"],
            run["steps_total"],
            run["created_at"].as_str().unwrap_or(""),
            run["effective_at"].as_str().unwrap_or("-"),
        );
    }
    if let Some(cursor) = body["next_cursor"].as_str() {
        println!("more: --cursor {cursor}");
    }
    Ok(())
}

/// Reads `key=value` pairs into a bulk action's filter (ids as numbers).
pub fn parse_filter_args(pairs: &[String]) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut filter = serde_json::Map::new();
    for pair in pairs.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let (key, value) =
            pair.split_once('=').with_context(|| format!("--filter {pair}: expected key=value"))?;
        let value = match key {
            "company_id" | "user_id" => Value::from(
                value.parse::<i64>().with_context(|| format!("--filter {key}: not a number"))?,
            ),
            _ => Value::from(value),
        };
        filter.insert(key.to_string(), value);
    }
    Ok(filter)
}

/// `offboard runs retry|cancel --filter …`: the dry run's count, a confirmation, then the
/// operation's progress as a bar until the workers have worked through it.
pub async fn bulk(
    client: &ApiClient,
    kind: &str,
    pairs: &[String],
    dry_run: bool,
    yes: bool,
) -> anyhow::Result<()> {
    let filter = Value::Object(parse_filter_args(pairs)?);
    let path = format!("/v1/offboardings/bulk-{kind}");
    let dry =
        client.post(&path, &serde_json::json!({"filter": filter, "dry_run": true}), None).await?;
    let matched = dry["matched"].as_i64().unwrap_or(0);
    println!("{kind}: {matched} runs match {}", dry["filter"]);
    if dry_run || matched == 0 {
        return Ok(());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            bail!("not a terminal: pass --yes to {kind} {matched} runs");
        }
        print!("{kind} {matched} runs? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing done");
            return Ok(());
        }
    }
    let mut op = client.post(&path, &serde_json::json!({"filter": filter}), None).await?;
    let id = op["id"].as_str().unwrap_or_default().to_string();
    let live = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let touched = op["touched"].as_i64().unwrap_or(0);
        let of = op["matched"].as_i64().unwrap_or(0).max(1);
        let line = format!(
            "{} {touched}/{} runs, {} chunks, {}",
            bar(touched as f64 / of as f64, 30),
            op["matched"],
            op["chunks"],
            op["status"].as_str().unwrap_or("?"),
        );
        redraw(live, line, &mut last)?;
        if op["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        op = client.get(&format!("/v1/bulk-operations/{id}")).await?;
    }
    if live {
        println!();
    }
    println!("bulk {kind} {id}: {} runs", op["touched"]);
    Ok(())
}

/// `offboard webhooks list`: endpoints, one a line.
pub async fn webhook_endpoints(client: &ApiClient, query: &str) -> anyhow::Result<()> {
    let body = client.get(&format!("/v1/webhook-endpoints?{query}")).await?;
    println!(
        "{:<36}  {:>8}  {:<8}  {:<7}  {:<8}  url",
        "id", "company", "enabled", "failing", "events"
    );
    for e in body["endpoints"].as_array().into_iter().flatten() {
        let events = e["events"].as_array().map_or(0, Vec::len);
        println!(
            "{:<36}  {:>8}  {:<8}  {:<7}  {:<8}  {}",
            e["id"].as_str().unwrap_or(""),
            e["company_id"],
            match (e["enabled"].as_bool(), e["disabled_reason"].as_str()) {
                (Some(true), _) => "yes".to_string(),
                (_, Some(reason)) => format!("no ({reason})"),
                _ => "no".to_string(),
            },
            if e["failing"] == true { "yes" } else { "no" },
            if events == 0 { "all".to_string() } else { events.to_string() },
            e["url"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

/// `offboard webhooks deliveries`: newest first.
pub async fn webhook_deliveries(client: &ApiClient, query: &str) -> anyhow::Result<()> {
    let body = client.get(&format!("/v1/webhook-deliveries?{query}")).await?;
    println!(
        "{:>8}  {:<23}  {:<36}  {:<9}  {:>8}  {:>4}  {:>7}  webhook-id",
        "id", "type", "endpoint", "status", "attempts", "code", "ms"
    );
    for d in body["deliveries"].as_array().into_iter().flatten() {
        let or_dash = |v: &Value| if v.is_null() { "-".to_string() } else { v.to_string() };
        println!(
            "{:>8}  {:<23}  {:<36}  {:<9}  {:>8}  {:>4}  {:>7}  {}",
            d["id"],
            d["event_type"].as_str().unwrap_or(""),
            d["endpoint_id"].as_str().unwrap_or(""),
            d["status"].as_str().unwrap_or(""),
            d["attempts"],
            or_dash(&d["last_status_code"]),
            or_dash(&d["last_latency_ms"]),
            d["webhook_id"].as_str().unwrap_or(""),
        );
    }
    if let Some(cursor) = body["next_cursor"].as_str() {
        println!("more: --cursor {cursor}");
    }
    Ok(())
}

/// Whether the run has stopped moving (every final status, and failed), by the domain's
/// one list; a status this CLI does not know (a newer server) is not finished.
fn is_finished(run: &Value) -> bool {
    run["status"]
        .as_str()
        .and_then(|s| s.parse::<RunStatus>().ok())
        .is_some_and(RunStatus::is_finished)
}

/// Polls a run and draws its steps until it finishes; returns the final run.
pub async fn watch(client: &ApiClient, run_id: &str) -> anyhow::Result<Value> {
    let mut out = std::io::stdout();
    let live = out.is_terminal();
    let mut drawn = 0usize;
    let mut last_lines: Vec<String> = Vec::new();
    loop {
        let run = client.get(&format!("/v1/offboardings/{run_id}")).await?;
        let lines = render(&run);
        if live {
            if drawn > 0 {
                write!(out, "\x1b[{drawn}A")?;
            }
            for line in &lines {
                writeln!(out, "\x1b[2K{line}")?;
            }
            drawn = lines.len();
        } else {
            for line in lines.iter().filter(|l| !last_lines.contains(l)) {
                writeln!(out, "{line}")?;
            }
        }
        out.flush()?;
        last_lines = lines;
        if is_finished(&run) {
            return Ok(run);
        }
        tokio::time::sleep(Duration::from_millis(if live { 100 } else { 250 })).await;
    }
}

/// One header line and one progress bar per step.
pub fn render(run: &Value) -> Vec<String> {
    let steps = run["steps"].as_array().cloned().unwrap_or_default();
    let finished = steps
        .iter()
        .filter(|s| matches!(s["status"].as_str(), Some("succeeded" | "skipped")))
        .count();
    let due = match (run["status"].as_str(), run["effective_at"].as_str()) {
        (Some("scheduled"), Some(at)) => format!(" · due {at}"),
        _ => String::new(),
    };
    let mut lines = vec![format!(
        "run {} · {} user {} · {} ({finished}/{} steps){due}",
        run["id"].as_str().unwrap_or("?"),
        run["action"].as_str().unwrap_or("?"),
        run["user_id"],
        run["status"].as_str().unwrap_or("?"),
        steps.len(),
    )];
    for step in &steps {
        let status = step["status"].as_str().unwrap_or("?");
        let done = step["done"].as_i64().unwrap_or(0);
        let total = step["total"].as_i64();
        let fraction = match (status, total) {
            ("succeeded" | "skipped", _) => 1.0,
            (_, Some(t)) if t > 0 => done as f64 / t as f64,
            _ => 0.0,
        };
        let progress = match total {
            Some(t) => format!("{done}/{t}"),
            None => String::new(),
        };
        let error =
            step["last_error"]["code"].as_str().map(|c| format!("  [{c}]")).unwrap_or_default();
        lines.push(format!(
            "  {:<24} {} {:<9} {:>15} attempts {}{error}",
            step["name"].as_str().unwrap_or("?"),
            bar(fraction, 24),
            status,
            progress,
            step["attempts"],
        ));
    }
    lines
}

/// Shows a progress line: redrawn in place on a terminal, else printed when it changed.
pub(crate) fn redraw(live: bool, line: String, last: &mut String) -> std::io::Result<()> {
    if live {
        print!("\r\x1b[2K{line}");
        std::io::stdout().flush()?;
    } else if line != *last {
        println!("{line}");
    }
    *last = line;
    Ok(())
}

pub(crate) fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round()) as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn filter_arguments_become_a_filter_with_numeric_ids() {
        let pairs =
            ["company_id=7".to_string(), "status=failed".into(), " step=uninstall_apps".into()];
        let filter = parse_filter_args(&pairs).unwrap();
        assert_eq!(
            Value::Object(filter),
            json!({"company_id": 7, "status": "failed", "step": "uninstall_apps"})
        );
        assert!(parse_filter_args(&["company_id=x".into()]).is_err());
        assert!(parse_filter_args(&["status".into()]).is_err());
    }

    #[test]
    fn renders_a_bar_per_step() {
        let run = json!({"id": "r1", "action": "deactivate", "user_id": 5, "status": "running", "steps": [
            {"name": "block_login", "status": "succeeded", "done": 1, "total": 1, "attempts": 1, "last_error": null},
            {"name": "reassign_deals", "status": "running", "done": 50, "total": 200, "attempts": 1, "last_error": null},
        ]});
        let lines = render(&run);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].contains("(1/2 steps)"));
        assert!(lines[1].contains(&format!("[{}]", "#".repeat(24))));
        assert!(lines[2].contains(&format!("[{}{}]", "#".repeat(6), ".".repeat(18))));
        assert!(lines[2].contains("50/200"));
    }
}
