//! The layoff submitted as one batch file: the same deactivations (each with its plan
//! inline) as one CSV to `POST /v1/offboarding-batches`, timed from the upload to the last
//! run's finish like the layoff over single requests, on an identical company with the
//! same worker process.

use std::time::{Duration, Instant};

use offboard::config::DEV_TOKEN;
use serde_json::Value;

use super::{ApiServer, BenchEnv, Layoff};

/// What the batch took: the answer (every row checked and written) and the whole layoff.
pub(super) struct BatchLayoff {
    pub written: Duration,
    pub elapsed: Duration,
}

/// The layoff as one CSV file: `company_id,user_id,action,plan,actor_user_id`, the plan as
/// quoted JSON.
fn csv_file(layoff: &Layoff) -> String {
    let mut csv = String::from("company_id,user_id,action,plan,actor_user_id\n");
    for &(user, target) in &layoff.leaving {
        let plan = Layoff::plan(target).to_string().replace('"', "\"\"");
        csv.push_str(&format!(
            "{},{user},deactivate,\"{plan}\",{}\n",
            layoff.company.company_id, layoff.actor
        ));
    }
    csv
}

pub(super) async fn layoff_as_batch(
    env: &BenchEnv,
    api: &ApiServer,
    layoff: &Layoff,
) -> anyhow::Result<BatchLayoff> {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(600)).build()?;
    let body = csv_file(layoff);
    let started = Instant::now();
    let response = client
        .post(api.url("/v1/offboarding-batches"))
        .bearer_auth(DEV_TOKEN)
        .header("content-type", "text/csv")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let answer: Value = response.json().await?;
    anyhow::ensure!(status.as_u16() == 202, "the batch was refused: {answer}");
    anyhow::ensure!(answer["rows_refused"] == 0, "rows were refused: {}", answer["refused"]);
    let written = started.elapsed();
    let elapsed = super::wait_for_layoff(env, layoff, started).await?;
    Ok(BatchLayoff { written, elapsed })
}
