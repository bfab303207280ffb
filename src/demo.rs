//! `offboard demo`: with only local PostgreSQL and Redis running, migrate (creating the
//! database if missing), seed a company, start the API and workers in this process,
//! deactivate a user through the HTTP API, show live per-step progress, print the receipt.

use std::sync::Arc;

use anyhow::{Context, bail};
use serde_json::json;
use tokio::sync::Notify;

use crate::{
    app::{self, Services},
    cli::{self, ApiClient},
    config::{DEV_TOKEN, Settings},
    crm::seed::{self, SeedOptions},
    shutdown::Shutdown,
};

pub async fn run(mut settings: Settings, options: SeedOptions) -> anyhow::Result<()> {
    // A free loopback port, so the demo never collides with a running `offboard serve`,
    // and the development token for this process alone (its API lives as long as the demo).
    settings.bind = "127.0.0.1:0".parse().expect("valid address");
    settings.dev_token = true;
    settings.api_tokens.clear();
    let services = Services::connect(settings).await?;
    eprintln!("offboard demo: database migrated, seeding a company…");
    let seeded = seed::seed(&services.pool, options).await?;
    let admin = seeded.admin_ids[0];
    let regular: Vec<i64> = seeded.users.iter().filter(|u| !u.is_admin).map(|u| u.id).collect();
    if regular.len() < 3 {
        bail!("the demo needs at least 3 regular users; use --users 5 or more");
    }
    let (leaver, heir, helper) = (regular[0], regular[1], regular[2]);
    eprintln!(
        "seeded company {} with {} users; deactivating user {leaver} (actor: admin {admin})",
        seeded.company_id,
        seeded.users.len()
    );

    let shutdown = Shutdown::new();
    let nudge = Arc::new(Notify::new());
    let server =
        app::start_api(services.app_state(nudge.clone()), services.settings.bind, shutdown.clone())
            .await?;
    let workers = tokio::spawn(services.workers(nudge).run(shutdown.clone()));
    let client = ApiClient::new(&format!("http://{}", server.addr), DEV_TOKEN);

    let preview =
        client.get(&format!("/v1/companies/{}/users/{leaver}/preview", seeded.company_id)).await?;
    eprintln!(
        "preview: {} open deals, {} open leads, {} undone activities, {} syncs, {} private emails",
        preview["items"]["deals"]["open"],
        preview["items"]["leads"]["open"],
        preview["items"]["activities"]["open"],
        preview["syncs"]["count"],
        preview["private_emails"],
    );

    let request = json!({
        "company_id": seeded.company_id,
        "user_id": leaver,
        "actor_user_id": admin,
        "action": "deactivate",
        "transfer": {
            "default": {"mode": "single", "targets": [{"user_id": heir}]},
            "deals": {"mode": "ratio", "scope": "all",
                      "targets": [{"user_id": heir, "weight": 2}, {"user_id": helper, "weight": 1}]},
        },
    });
    let key = format!("demo-{}-{leaver}", seeded.company_id);
    let created = client
        .post("/v1/offboardings", &request, Some(&key))
        .await
        .context("enqueueing the deactivation")?;
    let run_id = created["id"].as_str().context("no run id in the response")?.to_string();
    eprintln!("POST /v1/offboardings -> 202 {created}\n");

    let run = cli::watch(&client, &run_id).await?;
    println!("\nreceipt:\n{}", serde_json::to_string_pretty(&run["receipt"])?);

    shutdown.trigger();
    let _ = server.handle.await;
    let _ = workers.await;
    match run["status"].as_str() {
        Some("succeeded") => Ok(()),
        other => bail!("the run ended {}", other.unwrap_or("unknown")),
    }
}
