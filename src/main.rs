//! The `offboard` command: wiring only; the work lives in the library.

use clap::{Parser, Subcommand};

use offboard::{
    app, batch_cli,
    cli::{self, ApiClient},
    config::{DEV_TOKEN, Settings},
    crm::seed::{self, SeedOptions},
    demo, ledger,
};
use serde_json::json;

#[derive(Parser)]
#[command(name = "offboard", version, about = "Offboards users of a multi-tenant CRM")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API and workers in one process (migrates first).
    Serve,
    /// Run the HTTP API only, without workers (beside `offboard worker` processes).
    Api,
    /// Run workers only (the same as the offboard-worker binary).
    Worker,
    /// Apply pending migrations, creating the database if missing, and exit.
    Migrate,
    /// Exit 0 when PostgreSQL and Redis answer (a container healthcheck).
    Check,
    /// Create a realistic company in the CRM store; prints its ids as JSON.
    Seed(SeedArgs),
    /// Migrate, seed, serve in-process, deactivate a user over HTTP, show progress and the receipt.
    Demo(SeedArgs),
    /// Operate on runs through the HTTP API.
    Runs {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Bulk offboarding from a file (CSV, NDJSON or JSON) through the HTTP API.
    Batch {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Host webhooks through the HTTP API: endpoints, deliveries, replays.
    Webhooks {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// What a user owns; with --transfer, a dry run of the plan.
    Preview {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        company: i64,
        #[arg(long)]
        user: i64,
        /// A transfer plan as JSON, e.g. '{"default":{"mode":"single","targets":[{"user_id":3}]}}'.
        #[arg(long)]
        transfer: Option<String>,
    },
}

#[derive(clap::Args)]
struct SeedArgs {
    #[arg(long, default_value_t = 12)]
    users: usize,
    #[arg(long, default_value_t = 40)]
    items_per_user: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Points the seeded company's OAuth providers (RFC 7009 revocation endpoints) at this
    /// server, and gives each sync a refresh token to revoke.
    #[arg(long)]
    provider_base_url: Option<String>,
    /// Points the app catalogue's vendor uninstall callbacks at this server.
    #[arg(long)]
    vendor_base_url: Option<String>,
}

impl From<SeedArgs> for SeedOptions {
    fn from(a: SeedArgs) -> Self {
        SeedOptions { users: a.users, items_per_user: a.items_per_user, seed: a.seed }
    }
}

#[derive(clap::Args)]
struct ApiArgs {
    /// Base URL of the API.
    #[arg(long, env = "OFFBOARD_API_URL", default_value = "http://127.0.0.1:8080", global = true)]
    api_url: String,
    /// Bearer token (the development token works against a loopback-bound API).
    #[arg(long, env = "OFFBOARD_API_TOKEN", default_value = DEV_TOKEN, hide_default_value = true, global = true)]
    token: String,
}

#[derive(clap::Args)]
struct BulkArgs {
    /// Which runs: `key=value`, repeated or comma-separated (company_id, user_id, status,
    /// action, step, step_status, created_after, created_before, id_prefix, id_suffix,
    /// batch_id).
    #[arg(long, conflicts_with = "id", value_delimiter = ',')]
    filter: Vec<String>,
    /// Only count the runs it would touch.
    #[arg(long, requires = "filter")]
    dry_run: bool,
    /// Do not ask before acting.
    #[arg(long, short = 'y', requires = "filter")]
    yes: bool,
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// Endpoints, oldest first.
    List {
        #[arg(long)]
        company: Option<i64>,
    },
    /// Deliveries, newest first.
    Deliveries {
        #[arg(long)]
        endpoint: Option<String>,
        /// pending, sending, succeeded or failed.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        company: Option<i64>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Send a delivery again (same webhook-id), or with --failed every failed delivery of
    /// --endpoint.
    Replay {
        #[arg(required_unless_present = "failed")]
        delivery: Option<i64>,
        #[arg(long, requires = "endpoint")]
        failed: bool,
        #[arg(long)]
        endpoint: Option<String>,
    },
}

#[derive(Subcommand)]
enum BatchCommand {
    /// Submit a batch file (.csv, .ndjson/.jsonl, else JSON): refused rows first, then one
    /// progress bar until every run of it has ended.
    Submit {
        file: std::path::PathBuf,
        /// Create nothing when any row is refused.
        #[arg(long)]
        all_or_nothing: bool,
        /// The actor of rows that name none.
        #[arg(long)]
        actor: Option<i64>,
        /// Submitting again with the same key returns the first batch.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Print the answer and return; do not follow the runs.
        #[arg(long)]
        no_wait: bool,
    },
    /// A batch's progress, as one bar until its runs have ended.
    Show { id: String },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Newest runs first.
    List {
        #[arg(long)]
        company: Option<i64>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        action: Option<String>,
        /// The runs of this batch.
        #[arg(long)]
        batch: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Live progress bars per step until the run finishes.
    Watch { id: String },
    /// Put the run's dead steps back in line; or, with --filter, those of every run the
    /// filter matches (a bulk operation, drawn as a progress bar).
    Retry {
        #[arg(required_unless_present = "filter")]
        id: Option<String>,
        #[command(flatten)]
        bulk: BulkArgs,
    },
    /// Start no new step of the run; or, with --filter, of every active run it matches.
    Cancel {
        #[arg(required_unless_present = "filter")]
        id: Option<String>,
        #[command(flatten)]
        bulk: BulkArgs,
    },
    /// Put a failed or canceled run back in line from a step (it and what waits on it).
    Restart {
        id: String,
        #[arg(long)]
        step: String,
    },
    /// Approve a run awaiting approval, as a second admin of its company.
    Approve {
        id: String,
        #[arg(long)]
        approver: i64,
    },
    /// Reject a run awaiting approval.
    Reject {
        id: String,
        #[arg(long)]
        approver: i64,
    },
    /// Move a scheduled run to a new start time (RFC 3339).
    Reschedule {
        id: String,
        #[arg(long)]
        at: String,
    },
    /// The whole run as JSON.
    Show { id: String },
}

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
