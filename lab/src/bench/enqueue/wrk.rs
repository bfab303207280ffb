//! The enqueue load of shape (a) from `wrk`, an independent load generator, when it is on
//! `PATH`: its script, its run, and its figures read from what it prints.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;

use super::{CONNECTIONS, Tenants};
use crate::bench::{BenchEnv, Cpu, WorkerProcess, cpu_of};

/// The wrk script: POSTs of the same requests as ours.
const WRK_SCRIPT: &str = include_str!("../wrk-enqueue.lua");
pub(super) const WRK_THREADS: usize = 2;

/// What `wrk` printed, and what it cost.
pub(super) struct WrkResult {
    pub(super) version: String,
    pub(super) rate: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) non_2xx: u64,
    pub(super) cpu: Cpu,
    /// Runs the ledger holds afterwards (its 202s that wrote one).
    pub(super) accepted: i64,
}

pub(super) fn find_on_path(program: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// `wrk` with the POST script against the API at `addr`, for `duration` (on a ledger the
/// caller emptied); its own CPU is
/// sampled from `/proc` while it runs (the last tenth of a second is missed).
pub(super) async fn wrk_load(
    env: &BenchEnv,
    wrk: &std::path::Path,
    addr: SocketAddr,
    process: &WorkerProcess,
    tenants: &Tenants,
    duration: Duration,
) -> anyhow::Result<WrkResult> {
    let script =
        std::env::temp_dir().join(format!("{}-wrk-enqueue.lua", env.settings.queue_prefix));
    std::fs::write(&script, WRK_SCRIPT)?;
    let spec: Vec<String> = tenants
        .iter()
        .map(|t| {
            let first = t.users[0];
            anyhow::ensure!(
                t.users.iter().enumerate().all(|(i, &u)| u == first + i as i64),
                "wrk needs consecutive user ids"
            );
            Ok(format!("{},{},{},{},{}", t.company_id, t.actor, t.target, first, t.users.len()))
        })
        .collect::<anyhow::Result<_>>()?;
    let version = std::process::Command::new(wrk)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.split_whitespace().nth(1).map(str::to_string)
        })
        .unwrap_or_else(|| "?".into());
    let cpu_before = Cpu::sample_with(env, &[], &[process]).await?;
    let child = tokio::process::Command::new(wrk)
        .arg(format!("-t{WRK_THREADS}"))
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{addr}"))
        .env("WRK_TENANTS", spec.join(";"))
        .env("WRK_THREADS", WRK_THREADS.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start wrk")?;
    let pid = child.id().context("wrk exited at once")?;
    let waited = tokio::spawn(child.wait_with_output());
    let mut wrk_cpu = Duration::ZERO;
    while !waited.is_finished() {
        if let Some(t) = cpu_of(format!("/proc/{pid}/stat")) {
            wrk_cpu = t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = waited.await??;
    let _ = std::fs::remove_file(&script);
    let mut cpu = Cpu::sample_with(env, &[], &[process]).await?.since(&cpu_before);
    cpu.wrk = wrk_cpu;
    cpu.bench = Duration::ZERO;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rate = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))?;
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(str::trim))
            .and_then(wrk_duration_ms)
            .unwrap_or(f64::NAN)
    };
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let accepted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM offboard.runs").fetch_one(&env.pool).await?;
    Ok(WrkResult {
        version,
        rate,
        p50_ms: percentile("50%"),
        p99_ms: percentile("99%"),
        non_2xx,
        cpu,
        accepted,
    })
}

/// A wrk duration (`812.00us`, `12.34ms`, `1.02s`) in milliseconds.
fn wrk_duration_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return None;
    };
    number.trim().parse::<f64>().ok().map(|n| n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_durations_read_in_milliseconds() {
        assert_eq!(wrk_duration_ms("812.00us"), Some(0.812));
        assert_eq!(wrk_duration_ms("12.34ms"), Some(12.34));
        assert_eq!(wrk_duration_ms("1.50s"), Some(1500.0));
        assert_eq!(wrk_duration_ms("fast"), None);
    }
}
