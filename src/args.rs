//! The `offboard` command's arguments, as clap reads them (the binary's own; the
//! library's `cli` module is what the commands do).

use clap::{Parser, Subcommand};

use offboard::{config::DEV_TOKEN, crm::seed::SeedOptions};

#[derive(Parser)]
#[command(name = "offboard", version, about = "Offboards users of a multi-tenant CRM")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
pub(crate) struct SeedArgs {
    #[arg(long, default_value_t = 12)]
    pub(crate) users: usize,
    #[arg(long, default_value_t = 40)]
    pub(crate) items_per_user: usize,
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Points the seeded company's OAuth providers (RFC 7009 revocation endpoints) at this
    /// server, and gives each sync a refresh token to revoke.
    #[arg(long)]
    pub(crate) provider_base_url: Option<String>,
    /// Points the app catalogue's vendor uninstall callbacks at this server.
    #[arg(long)]
    pub(crate) vendor_base_url: Option<String>,
}

impl From<SeedArgs> for SeedOptions {
    fn from(a: SeedArgs) -> Self {
        SeedOptions { users: a.users, items_per_user: a.items_per_user, seed: a.seed }
    }
}

#[derive(clap::Args)]
pub(crate) struct ApiArgs {
    /// Base URL of the API.
    #[arg(long, env = "OFFBOARD_API_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub(crate) api_url: String,
    /// Bearer token (the development token works against a loopback-bound API).
    #[arg(long, env = "OFFBOARD_API_TOKEN", default_value = DEV_TOKEN, hide_default_value = true, global = true)]
    pub(crate) token: String,
}

#[derive(clap::Args)]
pub(crate) struct BulkArgs {
    /// Which runs: `key=value`, repeated or comma-separated (company_id, user_id, status,
    /// action, step, step_status, created_after, created_before, id_prefix, id_suffix,
    /// batch_id).
    #[arg(long, conflicts_with = "id", value_delimiter = ',')]
    pub(crate) filter: Vec<String>,
    /// Only count the runs it would touch.
    #[arg(long, requires = "filter")]
    pub(crate) dry_run: bool,
    /// Do not ask before acting.
    #[arg(long, short = 'y', requires = "filter")]
    pub(crate) yes: bool,
}

#[derive(Subcommand)]
pub(crate) enum WebhooksCommand {
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
pub(crate) enum BatchCommand {
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
pub(crate) enum RunsCommand {
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
