//! `offboard-worker`: workers only — takes steps from Redis and applies them. Run several
//! to share one queue; `offboard serve` runs the same workers beside the API.

use offboard::{app, config::Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    app::init_tracing(settings.log_format, app::DEFAULT_LOG_FILTER);
    app::run_workers(settings).await
}
