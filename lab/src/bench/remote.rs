//! Outside systems of the benches: a real HTTP server on loopback in the bench process
//! that answers every POST 200 after a set delay (or never, while told to hang), and counts
//! what it received. It plays a host's webhook receiver, an OAuth provider's revocation
//! endpoint and an app vendor's uninstall callback alike: each answers 200 to success.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode};

#[derive(Default)]
struct Behaviour {
    delay_ms: AtomicU64,
    hang: AtomicBool,
    received: AtomicUsize,
}

#[derive(Clone)]
pub(crate) struct Remote {
    /// `http://127.0.0.1:<port>`: each server is a destination host of its own.
    pub base: String,
    behaviour: Arc<Behaviour>,
}

impl Remote {
    pub async fn start(delay: Duration) -> anyhow::Result<Self> {
        let behaviour = Arc::new(Behaviour::default());
        behaviour.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
        let router = Router::new().fallback(answer).with_state(behaviour.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self { base: format!("http://{addr}"), behaviour })
    }

    pub fn set_delay(&self, delay: Duration) {
        self.behaviour.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// While set, requests are received (and counted) and never answered.
    pub fn set_hang(&self, hang: bool) {
        self.behaviour.hang.store(hang, Ordering::Relaxed);
    }

    pub fn received(&self) -> usize {
        self.behaviour.received.load(Ordering::Relaxed)
    }
}

async fn answer(State(behaviour): State<Arc<Behaviour>>) -> StatusCode {
    behaviour.received.fetch_add(1, Ordering::Relaxed);
    if behaviour.hang.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
    let delay = behaviour.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    StatusCode::OK
}
