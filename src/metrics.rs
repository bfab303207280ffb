//! Process-local counters and histograms, rendered in the Prometheus text format next to
//! gauges read from the ledger. Labels are step names and outcomes only: bounded sets,
//! never user or company data.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{LazyLock, Mutex},
    time::Duration,
};

/// Upper bounds (seconds) of the step-duration histogram buckets.
const BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    /// (step, outcome) -> attempts that ended so.
    step_attempts: BTreeMap<(String, &'static str), u64>,
    step_seconds: BTreeMap<String, Histogram>,
    items_reassigned: u64,
    purges_fired: BTreeMap<&'static str, u64>,
    http_requests: BTreeMap<(String, u16), u64>,
    /// (endpoint id, outcome) -> webhook attempts that ended so.
    webhook_attempts: BTreeMap<(String, &'static str), u64>,
    webhook_seconds: BTreeMap<String, Histogram>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

impl Histogram {
    fn observe(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }

    fn render(&self, out: &mut String, name: &str, label: &str, value: &str) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{label}=\"{value}\",le=\"{bound}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(out, "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{label}=\"{value}\"}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{label}=\"{value}\"}} {}", self.count);
    }
}

impl Metrics {
    /// One attempt of a step ended: `succeeded`, `retry`, `dead` or `lease_lost`.
    pub fn step_attempt(&self, step: &str, outcome: &'static str, took: Duration) {
        let mut inner = self.inner.lock().expect("metrics lock");
        *inner.step_attempts.entry((step.to_string(), outcome)).or_default() += 1;
        inner.step_seconds.entry(step.to_string()).or_default().observe(took);
    }

    /// One attempt of a webhook delivery ended: `succeeded`, `retry`, `failed` (schedule
    /// used up) or `gone` (410). Labelled by endpoint id, never by URL.
    pub fn webhook_attempt(&self, endpoint_id: &str, outcome: &'static str, took: Duration) {
        let mut inner = self.inner.lock().expect("metrics lock");
        *inner.webhook_attempts.entry((endpoint_id.to_string(), outcome)).or_default() += 1;
        inner.webhook_seconds.entry(endpoint_id.to_string()).or_default().observe(took);
    }

    pub fn items_reassigned(&self, n: u64) {
        self.inner.lock().expect("metrics lock").items_reassigned += n;
    }

    pub fn purge_fired(&self, by: &'static str) {
        *self.inner.lock().expect("metrics lock").purges_fired.entry(by).or_default() += 1;
    }

    /// `route` is the matched route template (e.g. `/v1/offboardings/{id}`), never a raw path.
    pub fn http_request(&self, route: &str, status: u16) {
        *self
            .inner
            .lock()
            .expect("metrics lock")
            .http_requests
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    /// Appends this process' series to `out`.
    pub fn render(&self, out: &mut String) {
        let inner = self.inner.lock().expect("metrics lock");
        out.push_str("# HELP offboard_step_attempts_total Step attempts by step and outcome.\n");
        out.push_str("# TYPE offboard_step_attempts_total counter\n");
        for ((step, outcome), n) in &inner.step_attempts {
            let _ = writeln!(
                out,
                "offboard_step_attempts_total{{step=\"{step}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str("# HELP offboard_step_duration_seconds Time one attempt of a step took.\n");
        out.push_str("# TYPE offboard_step_duration_seconds histogram\n");
        for (step, h) in &inner.step_seconds {
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "offboard_step_duration_seconds_bucket{{step=\"{step}\",le=\"{bound}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "offboard_step_duration_seconds_bucket{{step=\"{step}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ =
                writeln!(out, "offboard_step_duration_seconds_sum{{step=\"{step}\"}} {}", h.sum);
            let _ = writeln!(
                out,
                "offboard_step_duration_seconds_count{{step=\"{step}\"}} {}",
                h.count
            );
        }
        out.push_str("# HELP offboard_items_reassigned_total Owned items moved to new owners by this process.\n");
        out.push_str("# TYPE offboard_items_reassigned_total counter\n");
        let _ = writeln!(out, "offboard_items_reassigned_total {}", inner.items_reassigned);
        out.push_str(
            "# HELP offboard_purges_fired_total Private-email purges fired by this process.\n",
        );
        out.push_str("# TYPE offboard_purges_fired_total counter\n");
        for by in ["queue", "sweeper"] {
            let _ = writeln!(
                out,
                "offboard_purges_fired_total{{fired_by=\"{by}\"}} {}",
                inner.purges_fired.get(by).copied().unwrap_or(0)
            );
        }
        out.push_str("# HELP offboard_webhook_attempts_total Webhook delivery attempts by endpoint and outcome.\n");
        out.push_str("# TYPE offboard_webhook_attempts_total counter\n");
        for ((endpoint, outcome), n) in &inner.webhook_attempts {
            let _ = writeln!(
                out,
                "offboard_webhook_attempts_total{{endpoint_id=\"{endpoint}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str("# HELP offboard_webhook_attempt_duration_seconds Time one webhook attempt took, by endpoint.\n");
        out.push_str("# TYPE offboard_webhook_attempt_duration_seconds histogram\n");
        for (endpoint, h) in &inner.webhook_seconds {
            h.render(out, "offboard_webhook_attempt_duration_seconds", "endpoint_id", endpoint);
        }
        out.push_str("# HELP offboard_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE offboard_http_requests_total counter\n");
        for ((route, status), n) in &inner.http_requests {
            let _ = writeln!(
                out,
                "offboard_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
}
