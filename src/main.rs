//! The `offboard` command: wiring only; the work lives in the library.

mod args;

use clap::Parser;

use args::{BatchCommand, Cli, Command, RunsCommand, WebhooksCommand};
use offboard::{
    app, batch_cli,
    cli::{self, ApiClient},
    config::Settings,
    crm::seed,
    demo, ledger,
};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::from_env()?;
    // The demo draws live progress; only warnings may interrupt it.
    let filter = match cli.command {
        Command::Demo { .. }
        | Command::Runs { .. }
        | Command::Webhooks { .. }
        | Command::Batch { .. }
        | Command::Preview { .. }
        | Command::Seed { .. } => "warn",
        _ => app::DEFAULT_LOG_FILTER,
    };
    app::init_tracing(settings.log_format, filter);
    match cli.command {
        Command::Serve => app::serve(settings).await,
        Command::Api => app::serve_api(settings).await,
        Command::Worker => app::run_workers(settings).await,
        Command::Migrate => {
            ledger::connect_and_migrate(&settings.database_url, 2).await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Check => {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&settings.database_url).await?;
            sqlx::query("SELECT 1").execute(&mut conn).await?;
            offboard::queue::Queues::connect(&settings.redis_url, &settings.queue_prefix)
                .await?
                .ping()
                .await?;
            Ok(())
        }
        Command::Seed(args) => {
            let pool = ledger::connect_and_migrate(&settings.database_url, 4).await?;
            let (provider, vendor) = (args.provider_base_url.clone(), args.vendor_base_url.clone());
            let seeded = seed::seed(&pool, args.into()).await?;
            let secrets = seed::connect_outside(
                &pool,
                seeded.company_id,
                provider.as_deref(),
                vendor.as_deref(),
            )
            .await?;
            let mut out = serde_json::to_value(&seeded)?;
            if !secrets.is_empty() {
                // The vendors' signing secrets, for whoever plays the vendor.
                out["vendor_signing_secrets"] = serde_json::json!(
                    secrets.into_iter().collect::<std::collections::BTreeMap<_, _>>()
                );
            }
            println!("{out}");
            Ok(())
        }
        Command::Demo(args) => demo::run(settings, args.into()).await,
        Command::Runs { api, command } => {
            let client = ApiClient::new(&api.api_url, &api.token);
            match command {
                RunsCommand::List { company, status, action, batch, limit, cursor } => {
                    let mut query = vec![format!("limit={limit}")];
                    query.extend(company.map(|c| format!("company_id={c}")));
                    query.extend(status.map(|s| format!("status={s}")));
                    query.extend(action.map(|a| format!("action={a}")));
                    query.extend(batch.map(|b| format!("batch_id={b}")));
                    query.extend(cursor.map(|c| format!("cursor={c}")));
                    cli::list(&client, &query.join("&")).await
                }
                RunsCommand::Watch { id } => {
                    let run = cli::watch(&client, &id).await?;
                    if run["status"] != "succeeded" {
                        std::process::exit(1);
                    }
                    Ok(())
                }
                RunsCommand::Retry { id: Some(id), .. } => print(
                    client.post(&format!("/v1/offboardings/{id}/retry"), &json!({}), None).await?,
                ),
                RunsCommand::Cancel { id: Some(id), .. } => print(
                    client.post(&format!("/v1/offboardings/{id}/cancel"), &json!({}), None).await?,
                ),
                RunsCommand::Retry { id: None, bulk } => {
                    cli::bulk(&client, "retry", &bulk.filter, bulk.dry_run, bulk.yes).await
                }
                RunsCommand::Cancel { id: None, bulk } => {
                    cli::bulk(&client, "cancel", &bulk.filter, bulk.dry_run, bulk.yes).await
                }
                RunsCommand::Restart { id, step } => print(
                    client
                        .post(
                            &format!("/v1/offboardings/{id}/restart"),
                            &json!({"step": step}),
                            None,
                        )
                        .await?,
                ),
                RunsCommand::Approve { id, approver } => print(
                    client
                        .post(
                            &format!("/v1/offboardings/{id}/approve"),
                            &json!({"approver_user_id": approver}),
                            None,
                        )
                        .await?,
                ),
                RunsCommand::Reject { id, approver } => print(
                    client
                        .post(
                            &format!("/v1/offboardings/{id}/reject"),
                            &json!({"approver_user_id": approver}),
                            None,
                        )
                        .await?,
                ),
                RunsCommand::Reschedule { id, at } => print(
                    client
                        .patch(&format!("/v1/offboardings/{id}"), &json!({"effective_at": at}))
                        .await?,
                ),
                RunsCommand::Show { id } => {
                    print(client.get(&format!("/v1/offboardings/{id}")).await?)
                }
            }
        }
        Command::Batch { api, command } => {
            let client = ApiClient::new(&api.api_url, &api.token);
            match command {
                BatchCommand::Submit { file, all_or_nothing, actor, idempotency_key, no_wait } => {
                    let options = batch_cli::SubmitOptions {
                        all_or_nothing,
                        actor_user_id: actor,
                        idempotency_key,
                        no_wait,
                    };
                    batch_cli::submit(&client, &file, &options).await
                }
                BatchCommand::Show { id } => batch_cli::follow(&client, &id).await,
            }
        }
        Command::Webhooks { api, command } => {
            let client = ApiClient::new(&api.api_url, &api.token);
            match command {
                WebhooksCommand::List { company } => {
                    let query = company.map(|c| format!("company_id={c}")).unwrap_or_default();
                    cli::webhook_endpoints(&client, &query).await
                }
                WebhooksCommand::Deliveries { endpoint, status, company, limit, cursor } => {
                    let mut query = vec![format!("limit={limit}")];
                    query.extend(endpoint.map(|e| format!("endpoint_id={e}")));
                    query.extend(status.map(|s| format!("status={s}")));
                    query.extend(company.map(|c| format!("company_id={c}")));
                    query.extend(cursor.map(|c| format!("cursor={c}")));
                    cli::webhook_deliveries(&client, &query.join("&")).await
                }
                WebhooksCommand::Replay { delivery, failed, endpoint } => {
                    let path = match (failed, delivery, endpoint) {
                        (true, _, Some(endpoint)) => {
                            format!("/v1/webhook-endpoints/{endpoint}/replay-failed")
                        }
                        (_, Some(delivery), _) => {
                            format!("/v1/webhook-deliveries/{delivery}/replay")
                        }
                        _ => anyhow::bail!("give a delivery id, or --failed --endpoint ID"),
                    };
                    print(client.post(&path, &json!({}), None).await?)
                }
            }
        }
        Command::Preview { api, company, user, transfer } => {
            let client = ApiClient::new(&api.api_url, &api.token);
            let path = format!("/v1/companies/{company}/users/{user}/preview");
            let body = match transfer {
                None => client.get(&path).await?,
                Some(plan) => {
                    let plan: serde_json::Value = serde_json::from_str(&plan)
                        .map_err(|e| anyhow::anyhow!("--transfer is not JSON: {e}"))?;
                    client.post(&path, &json!({"transfer": plan}), None).await?
                }
            };
            print(body)
        }
    }
}

fn print(value: serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}
