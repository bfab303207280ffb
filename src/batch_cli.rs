//! `offboard batch submit FILE` and `offboard batch show ID`: a batch file through the API,
//! its refused rows first, then one progress bar until every run of it has ended.

use std::{io::IsTerminal, path::Path, time::Duration};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::{ApiClient, bar, redraw};

/// How long the API may take to write a batch (10,000 rows) before it answers.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(600);

/// The content type of a batch file, by its extension.
pub fn content_type_of(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => "text/csv",
        Some("ndjson" | "jsonl") => "application/x-ndjson",
        _ => "application/json",
    }
}

/// Options of `offboard batch submit`.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    pub all_or_nothing: bool,
    pub actor_user_id: Option<i64>,
    pub idempotency_key: Option<String>,
    /// Answer once written; do not follow the runs.
    pub no_wait: bool,
}

/// Submits the file; prints the refused rows, then follows the batch to its end. Fails
/// when the batch was refused as a whole.
pub async fn submit(
    client: &ApiClient,
    file: &Path,
    options: &SubmitOptions,
) -> anyhow::Result<()> {
    let body = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut query = Vec::new();
    if options.all_or_nothing {
        query.push("all_or_nothing=true".to_string());
    }
    query.extend(options.actor_user_id.map(|a| format!("actor_user_id={a}")));
    let path = format!("/v1/offboarding-batches?{}", query.join("&"));
    let (status, answer) = client
        .post_raw(
            &path,
            content_type_of(file),
            body,
            options.idempotency_key.as_deref(),
            SUBMIT_TIMEOUT,
        )
        .await?;
    if !status.is_success() {
        let error = &answer["error"];
        print_refused(&error["details"]["refused"]);
        bail!(
            "{status}: {}: {}",
            error["code"].as_str().unwrap_or("unknown"),
            error["message"].as_str().unwrap_or("")
        );
    }
    print_refused(&answer["refused"]);
    let id = answer["id"].as_str().unwrap_or_default().to_string();
    println!(
        "batch {id}: {} rows, {} accepted, {} refused{}",
        answer["rows_total"],
        answer["rows_accepted"],
        answer["rows_refused"],
        if answer["replayed"] == true { " (replayed)" } else { "" }
    );
    if options.no_wait {
        return Ok(());
    }
    follow(client, &id).await
}

fn print_refused(refused: &Value) {
    for row in refused.as_array().into_iter().flatten() {
        println!(
            "row {:>5}  {:<22} {:<36} {}",
            row["row"],
            row["code"].as_str().unwrap_or(""),
            row["field"].as_str().unwrap_or("-"),
            row["message"].as_str().unwrap_or("")
        );
    }
}

/// One line of a batch's progress.
pub fn progress_line(batch: &Value) -> String {
    let runs = &batch["runs"];
    let total = runs["total"].as_i64().unwrap_or(0);
    let finished = runs["finished"].as_i64().unwrap_or(0);
    let fraction = if total == 0 { 1.0 } else { finished as f64 / total as f64 };
    let statuses: Vec<String> = runs["by_status"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(status, n)| format!("{status} {n}"))
        .collect();
    let eta = match runs["eta_seconds"].as_i64() {
        Some(s) => format!("ETA {}m{:02}s", s / 60, s % 60),
        None => "ETA -".to_string(),
    };
    format!(
        "{} {finished}/{total} runs, {} items moved, {eta} ({})",
        bar(fraction, 30),
        runs["items_moved"],
        statuses.join(", ")
    )
}

/// Draws the batch's bar until every run of it has ended.
pub async fn follow(client: &ApiClient, id: &str) -> anyhow::Result<()> {
    let live = std::io::stdout().is_terminal();
    let mut last = String::new();
    loop {
        let batch = client.get(&format!("/v1/offboarding-batches/{id}")).await?;
        let line = progress_line(&batch);
        redraw(live, line, &mut last)?;
        let runs = &batch["runs"];
        if batch["status"] != "writing" && runs["finished"] == runs["total"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if live {
        println!();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn files_are_sent_by_their_extension() {
        assert_eq!(content_type_of(Path::new("layoff.CSV")), "text/csv");
        assert_eq!(content_type_of(Path::new("rows.ndjson")), "application/x-ndjson");
        assert_eq!(content_type_of(Path::new("rows.json")), "application/json");
    }

    #[test]
    fn the_progress_line_is_one_bar_with_counts_and_eta() {
        let batch = json!({"runs": {"total": 40, "finished": 10, "items_moved": 700,
                                    "eta_seconds": 95, "by_status": {"running": 30, "succeeded": 10}}});
        let line = progress_line(&batch);
        assert!(line.starts_with(&format!("[{}{}]", "#".repeat(8), ".".repeat(22))), "{line}");
        assert!(line.contains("10/40 runs, 700 items moved, ETA 1m35s (running 30, succeeded 10)"));
    }
}
