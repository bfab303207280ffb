//! The outside systems of the fault suite: an OAuth provider and an app vendor on
//! loopback that fail ~30 % of calls (500) and hang ~5 % (never answer: the caller's
//! timeout ends it), recording every call. After the run, [`check`] reads the store and
//! the records: every grant of a deactivated user revoked, every uninstalled install's
//! vendor told, one idempotency key per grant and per install, and how many calls came
//! again after one had been answered 200 (allowed only when the outcome was unknown to a
//! worker that died).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
};
use sqlx::PgPool;

/// The share of calls answered 500, and of calls never answered.
const FAIL: f64 = 0.30;
const HANG: f64 = 0.05;

/// One call: what it was about (a token, an install id), its idempotency key, the answer.
#[derive(Debug, Clone)]
struct Call {
    subject: String,
    key: String,
    answered_ok: bool,
}

#[derive(Clone)]
pub struct Remote {
    pub base: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Remote {
    pub async fn start() -> anyhow::Result<Self> {
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let router = Router::new().fallback(receive).with_state(calls.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self { base: format!("http://{addr}"), calls })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }
}

async fn receive(
    State(calls): State<Arc<Mutex<Vec<Call>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let header = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    let (subject, key) = match url::form_urlencoded::parse(&body).find(|(k, _)| k == "token") {
        Some((_, token)) => (token.into_owned(), header("idempotency-key")),
        None => {
            let install = serde_json::from_slice::<serde_json::Value>(&body)
                .map(|v| v["data"]["install_id"].to_string())
                .unwrap_or_default();
            (install, header("webhook-id"))
        }
    };
    let draw: f64 = rand::random();
    let hang = draw < HANG;
    let fail = !hang && draw < HANG + FAIL;
    calls.lock().expect("calls lock").push(Call { subject, key, answered_ok: !hang && !fail });
    if hang {
        std::future::pending::<()>().await;
    }
    if fail { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }.into_response()
}

/// What the outside systems saw, checked against the store.
#[derive(Debug, Default)]
pub struct OutsideTally {
    pub grants_revoked: usize,
    pub installs_told: usize,
    pub calls: usize,
    pub failed_or_hung: usize,
    /// Grants or installs whose calls came again after one was answered 200.
    pub repeated_after_ok: usize,
}

/// The company's refresh tokens by sync id, read right after they were seeded (the store
/// overwrites them once revoked).
pub async fn tokens(pool: &PgPool, company_id: i64) -> anyhow::Result<HashMap<i64, String>> {
    Ok(sqlx::query_as(
        "SELECT id, refresh_token FROM crm.account_syncs
         WHERE company_id = $1 AND refresh_token IS NOT NULL",
    )
    .bind(company_id)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect())
}

/// Every grant of a user who is deactivated or deleted is revoked and the provider said
/// 200 to it; every install uninstalled by a run had its vendor answer 200; one key per
/// grant and per install. Returns the tally and the findings (lost, broken).
pub async fn check(
    pool: &PgPool,
    company_id: i64,
    tokens: &HashMap<i64, String>,
    provider: &Remote,
    vendor: &Remote,
) -> anyhow::Result<(OutsideTally, Vec<String>, Vec<String>)> {
    let mut lost = Vec::new();
    let mut broken = Vec::new();
    let mut tally = OutsideTally::default();
    let all: Vec<Call> = provider.calls().into_iter().chain(vendor.calls()).collect();
    tally.calls = all.len();
    tally.failed_or_hung = all.iter().filter(|c| !c.answered_ok).count();
    let mut ok: HashMap<&str, usize> = HashMap::new();
    let mut keys: HashMap<&str, HashSet<&str>> = HashMap::new();
    for c in &all {
        if c.answered_ok {
            *ok.entry(c.subject.as_str()).or_default() += 1;
        }
        keys.entry(c.subject.as_str()).or_default().insert(c.key.as_str());
    }
    tally.repeated_after_ok = ok.values().filter(|n| **n > 1).count();
    for (subject, k) in &keys {
        if k.len() != 1 {
            broken.push(format!(
                "{} idempotency keys for one {}",
                k.len(),
                if subject.starts_with("rt_") { "grant" } else { "install" }
            ));
        }
    }

    let syncs: Vec<(i64, bool, bool)> = sqlx::query_as(
        "SELECT s.id, s.refresh_token IS NULL, u.status IN ('deactivated', 'deleted')
         FROM crm.account_syncs s JOIN crm.users u ON u.id = s.user_id
         WHERE s.company_id = $1",
    )
    .bind(company_id)
    .fetch_all(pool)
    .await?;
    for (sync_id, revoked, user_gone) in syncs {
        let Some(token) = tokens.get(&sync_id) else { continue };
        if user_gone && !revoked {
            lost.push(format!("the grant of account sync {sync_id} was never revoked"));
        }
        if revoked {
            tally.grants_revoked += 1;
            if ok.get(token.as_str()).copied().unwrap_or(0) == 0 {
                lost.push(format!(
                    "account sync {sync_id}'s token was overwritten without a 200 from the provider"
                ));
            }
        }
    }
    let installs: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM crm.app_installs WHERE company_id = $1 AND status = 'uninstalled'",
    )
    .bind(company_id)
    .fetch_all(pool)
    .await?;
    for install in installs {
        if ok.get(install.to_string().as_str()).copied().unwrap_or(0) == 0 {
            lost.push(format!("install {install} was uninstalled without its vendor told"));
        } else {
            tally.installs_told += 1;
        }
    }
    Ok((tally, lost, broken))
}
