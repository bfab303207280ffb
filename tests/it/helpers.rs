//! A test app over the real PostgreSQL (a fresh database per test, from `#[sqlx::test]`)
//! and the real Redis (a key prefix per test). Work is drained or polled with a deadline,
//! never waited for with a sleep.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode},
};
use offboard::{
    api::{self, AppState},
    config::{DEV_TOKEN, Settings},
    crm::seed::{self, SeedOptions, Seeded},
    domain::RunStatus,
    executor::Outcome,
    ledger::steps::{self, DispatchLimits},
    queue::Queues,
    shutdown::Shutdown,
    worker::Workers,
};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Notify;
use tower::ServiceExt;
use uuid::Uuid;

pub const DEADLINE: Duration = Duration::from_secs(60);

/// Waits until some backend waits for a lock of `locktype` (`advisory`, `transactionid`):
/// the statement a test holds back has reached its lock. `who` names it in the failure.
pub async fn until_a_lock_is_awaited(pool: &PgPool, locktype: &str, who: &str) {
    let started = Instant::now();
    loop {
        let waiting: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = $1 AND NOT granted")
                .bind(locktype)
                .fetch_one(pool)
                .await
                .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{who} never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The unscoped token a test app accepts beside the tokens a test configures (the
/// development token is never accepted beside configured ones).
pub const ADMIN_TOKEN: &str = "offboard-test-unscoped-token";

pub struct TestApp {
    pub pool: PgPool,
    pub settings: Settings,
    pub queues: Queues,
    pub router: Router,
    pub nudge: Arc<Notify>,
    pub workers: Workers,
    pub company: Seeded,
}

/// Settings for tests: short leases and backoff so recovery paths run in seconds. The
/// development token is on, unless the test configures `OFFBOARD_API_TOKENS`: then
/// [`ADMIN_TOKEN`] is configured beside them instead.
pub fn test_settings(database_url: &str, prefix: &str, overrides: &[(&str, &str)]) -> Settings {
    let mut vars: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), database_url.into()),
        ("OFFBOARD_QUEUE_PREFIX".into(), prefix.into()),
        ("OFFBOARD_LEASE".into(), "2s".into()),
        ("OFFBOARD_REDELIVER_AFTER".into(), "2s".into()),
        ("OFFBOARD_BACKOFF_BASE".into(), "20ms".into()),
        ("OFFBOARD_BACKOFF_CAP".into(), "500ms".into()),
        ("OFFBOARD_DISPATCH_INTERVAL".into(), "20ms".into()),
        ("OFFBOARD_POLL_INTERVAL".into(), "20ms".into()),
        ("OFFBOARD_SHUTDOWN_TIMEOUT".into(), "5s".into()),
        ("OFFBOARD_DB_POOL".into(), "10".into()),
        ("OFFBOARD_DEV_TOKEN".into(), "1".into()),
        ("OFFBOARD_IDEMPOTENCY_SECRET".into(), "a-test-secret-of-32-characters-at-least".into()),
    ];
    if let Ok(redis) = std::env::var("REDIS_URL") {
        vars.push(("REDIS_URL".into(), redis));
    }
    for (k, v) in overrides {
        vars.retain(|(name, _)| name != k);
        let v = match *k {
            "OFFBOARD_API_TOKENS" => {
                vars.retain(|(name, _)| name != "OFFBOARD_DEV_TOKEN");
                format!("{v},{ADMIN_TOKEN}")
            }
            _ => v.to_string(),
        };
        vars.push((k.to_string(), v));
    }
    Settings::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        .expect("test settings")
}

/// The URL of the per-test database behind `pool`, for child processes.
pub fn database_url_of(pool: &PgPool) -> String {
    let options = pool.connect_options();
    let base = std::env::var("DATABASE_URL")
        .ok()
        .or_else(dotenv_database_url)
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let server = base.rsplit_once('/').map(|(s, _)| s.to_string()).unwrap_or(base);
    format!("{server}/{}", options.get_database().expect("test database name"))
}

fn dotenv_database_url() -> Option<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("DATABASE_URL=").map(|v| v.trim().to_string()))
}

impl TestApp {
    pub async fn new(pool: PgPool) -> Self {
        Self::with(pool, &[], SeedOptions { users: 8, items_per_user: 40, seed: 7 }).await
    }

    pub async fn with(pool: PgPool, overrides: &[(&str, &str)], seed_options: SeedOptions) -> Self {
        let prefix = format!("offboard-test-{}", Uuid::new_v4().simple());
        let settings = test_settings(&database_url_of(&pool), &prefix, overrides);
        let queues =
            Queues::connect(&settings.redis_url, &prefix).await.expect("Redis must be running");
        let nudge = Arc::new(Notify::new());
        let router = api::router(AppState::new(
            pool.clone(),
            queues.clone(),
            settings.clone(),
            nudge.clone(),
        ));
        let workers = Workers::new(pool.clone(), queues.clone(), &settings, nudge.clone());
        let company = seed::seed(&pool, seed_options).await.expect("seed");
        Self { pool, settings, queues, router, nudge, workers, company }
    }

    /// The unscoped token this app's router accepts.
    pub fn token(&self) -> &'static str {
        if self.settings.dev_token { DEV_TOKEN } else { ADMIN_TOKEN }
    }

    pub fn admin(&self) -> i64 {
        self.company.admin_ids[0]
    }

    /// The n-th regular (non-admin) user.
    pub fn regular(&self, n: usize) -> i64 {
        self.company.users.iter().filter(|u| !u.is_admin).nth(n).expect("enough regular users").id
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = Request::builder().method(method).uri(path);
        let mut has_auth = false;
        for (k, v) in headers {
            has_auth |= k.eq_ignore_ascii_case("authorization");
            request = request.header(*k, *v);
        }
        if !has_auth {
            request = request.header("authorization", format!("Bearer {}", self.token()));
        }
        let request = match body {
            Some(b) => {
                request.header("content-type", "application/json").body(Body::from(b.to_string()))
            }
            None => request.body(Body::empty()),
        }
        .expect("request");
        let response = self.router.clone().oneshot(request).await.expect("response");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.expect("body");
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, value)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let (status, _, value) = self.call(Method::POST, path, Some(&body.to_string()), &[]).await;
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, value) = self.call(Method::GET, path, None, &[]).await;
        (status, value)
    }

    /// A deactivation request of `user` by the first admin, with `transfer`.
    pub fn deactivation(&self, user: i64, transfer: Value) -> Value {
        json!({
            "company_id": self.company.company_id,
            "user_id": user,
            "actor_user_id": self.admin(),
            "action": "deactivate",
            "transfer": transfer,
        })
    }

    /// Enqueues and returns the run id; the request must be accepted.
    pub async fn enqueue(&self, body: &Value) -> Uuid {
        let (status, value) = self.post("/v1/offboardings", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "enqueue refused: {value}");
        value["id"].as_str().and_then(|s| s.parse().ok()).expect("run id")
    }

    pub async fn run(&self, id: Uuid) -> Value {
        let (status, value) = self.get(&format!("/v1/offboardings/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{value}");
        value
    }

    /// Runs every step that can run, in this task and without Redis (dispatch, then execute
    /// each dispatched task), until nothing is ready, queued or running. Waits for retries
    /// that are not yet due, up to the deadline. Returns each step's outcome in order.
    pub async fn drain(&self) -> Vec<(String, Outcome)> {
        self.drain_tasks().await.into_iter().flatten().collect()
    }

    /// [`TestApp::drain`], with the outcomes of each task apart.
    pub async fn drain_tasks(&self) -> Vec<Vec<(String, Outcome)>> {
        let started = Instant::now();
        let limits = DispatchLimits { max_in_flight: 10_000, max_in_flight_per_company: 10_000 };
        let mut tasks = Vec::new();
        loop {
            assert!(started.elapsed() < DEADLINE, "drain did not finish within {DEADLINE:?}");
            let dispatched = steps::dispatch_ready(&self.pool, limits).await.expect("dispatch");
            for task in steps::into_tasks(&dispatched) {
                let outcomes = self.workers.executor.run_steps(&task).await.expect("run steps");
                let mut named = Vec::new();
                for (id, outcome) in outcomes {
                    let name: String = sqlx::query_scalar(
                        "SELECT name FROM offboard.steps WHERE run_id = $1 AND position = $2",
                    )
                    .bind(id.run_id)
                    .bind(id.position)
                    .fetch_one(&self.pool)
                    .await
                    .unwrap();
                    named.push((name, outcome));
                }
                tasks.push(named);
            }
            if !dispatched.is_empty() {
                continue;
            }
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM offboard.steps WHERE status IN ('ready', 'queued', 'running')",
            )
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if waiting == 0 {
                return tasks;
            }
            // A retry is not due yet: poll.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts the real worker runtime (apalis over Redis) in this process.
    pub fn start_workers(&self) -> RunningWorkers {
        let shutdown = Shutdown::new();
        let workers = Workers::new(
            self.pool.clone(),
            self.queues.clone(),
            &self.settings,
            self.nudge.clone(),
        );
        let handle = tokio::spawn(workers.run(shutdown.clone()));
        RunningWorkers { shutdown, handle }
    }

    /// Polls the run until it finishes ([`RunStatus::is_finished`]) or the deadline.
    pub async fn wait_for_run(&self, id: Uuid) -> Value {
        self.wait_until(id, |run| {
            run["status"]
                .as_str()
                .and_then(|s| s.parse::<RunStatus>().ok())
                .is_some_and(RunStatus::is_finished)
        })
        .await
    }

    /// Serves the app's API on a loopback port, as `offboard api` would; answers its URL.
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = self.router.clone();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    pub async fn wait_until(&self, id: Uuid, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let run = self.run(id).await;
            if done(&run) {
                return run;
            }
            assert!(started.elapsed() < DEADLINE, "run {id} did not get there in time: {run}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pool)
            .await
            .expect(sql)
    }

    pub async fn count_for(&self, sql: &str, user: i64) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .bind(user)
            .fetch_one(&self.pool)
            .await
            .expect(sql)
    }

    /// Removes this test's Redis keys.
    pub async fn cleanup(&self) {
        let mut conn = self.queues.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.queues.prefix()))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        }
        // apalis registers every queue in one global sorted set.
        let queues = [
            format!("{}:steps:workers", self.queues.prefix()),
            format!("{}:purges:workers", self.queues.prefix()),
        ];
        let _: Result<(), _> = redis::cmd("ZREM")
            .arg("core:apalis:queues:list")
            .arg(&queues)
            .query_async(&mut conn)
            .await;
    }
}

pub struct RunningWorkers {
    pub shutdown: Shutdown,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningWorkers {
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.handle.await.expect("workers task").expect("workers");
    }
}
