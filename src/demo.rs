//! `offboard demo`: with only local PostgreSQL and Redis running, migrate (creating the
//! database if missing), seed a company, start the API and workers in this process,
//! deactivate a user through the HTTP API, show live per-step progress, print the receipt.
//! A small OAuth provider and app vendor run on loopback too, so the demo shows the steps'
//! calls to outside systems (grant revocations, uninstall callbacks) without internet.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::sync::Notify;

use crate::{
    app::{self, Services},
    cli::{self, ApiClient},
    config::{DEV_TOKEN, OAuthClient, Settings},
    crm::seed::{self, SeedOptions},
    shutdown::Shutdown,
};

pub async fn run(mut settings: Settings, options: SeedOptions) -> anyhow::Result<()> {
    // A free loopback port, so the demo never collides with a running `offboard serve`,
    // and the development token for this process alone (its API lives as long as the demo).
    settings.bind = "127.0.0.1:0".parse().expect("valid address");
    settings.dev_token = true;
    settings.api_tokens.clear();
    // The local provider and vendor: loopback destinations, a demo OAuth client.
    let (provider, revocations) = local_remote().await?;
    let (vendor, callbacks) = local_remote().await?;
    settings.outbound.allow_private = true;
    for name in ["google", "microsoft"] {
        if settings.outbound.client(name).is_none() {
            settings.outbound.oauth_clients.push(OAuthClient {
                provider: name.into(),
                client_id: "offboard-demo".into(),
                client_secret: "demo-secret".into(),
            });
        }
    }
    let services = Services::connect(settings).await?;
    eprintln!("offboard demo: database migrated, seeding a company…");
    let seeded = seed::seed(&services.pool, options).await?;
    seed::connect_outside(
        &services.pool,
        seeded.company_id,
        Some(&format!("http://{provider}")),
        Some(&format!("http://{vendor}")),
    )
    .await?;
    eprintln!("a local OAuth provider listens on {provider}, an app vendor on {vendor}");
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
    for step in run["steps"].as_array().into_iter().flatten() {
        for call in step["calls"].as_array().into_iter().flatten() {
            eprintln!(
                "{}: {} {} -> {} {} ({} attempt(s), HTTP {})",
                step["name"].as_str().unwrap_or(""),
                call["kind"].as_str().unwrap_or(""),
                call["target_id"],
                call["destination"].as_str().unwrap_or(""),
                call["status"].as_str().unwrap_or(""),
                call["attempts"],
                call["last_status_code"],
            );
        }
    }
    eprintln!(
        "the provider received {} revocation(s), the vendor {} uninstall callback(s)",
        revocations.load(Ordering::SeqCst),
        callbacks.load(Ordering::SeqCst)
    );

    shutdown.trigger();
    let _ = server.handle.await;
    let _ = workers.await;
    match run["status"].as_str() {
        Some("succeeded") => Ok(()),
        other => bail!("the run ended {}", other.unwrap_or("unknown")),
    }
}

/// A server on loopback that answers every POST with 200 and counts them: the demo's OAuth
/// provider (RFC 7009: 200 for a revoked token) or app vendor.
async fn local_remote() -> anyhow::Result<(std::net::SocketAddr, Arc<AtomicUsize>)> {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let router = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::http::StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((addr, count))
}
