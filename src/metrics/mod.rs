//! Metrics in the OpenMetrics text format (`prometheus-client`): this process' counters and
//! histograms, and gauges read from the ledger — a snapshot a process refreshes at most once
//! per `OFFBOARD_STATS_MAX_AGE`, so a scrape never costs more than one set of counts in that
//! time. Labels are step names, statuses and routes only: bounded sets, never user or
//! company data.

use std::{sync::LazyLock, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

mod ledger;

pub use self::ledger::{LedgerCounts, LedgerSnapshot};

/// Upper bounds (seconds) of the step-duration histogram buckets.
const BUCKETS: [f64; 12] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepOutcome {
    step: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FiredBy {
    fired_by: &'static str,
}

/// Webhook attempts are labelled by endpoint id (a bounded set an operator registered),
/// never by URL.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookOutcome {
    endpoint_id: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint_id: String,
}

/// Calls of steps to outside systems are labelled by destination host (a provider's or
/// vendor's, from the catalogue: a bounded set), never by URL.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallOutcome {
    destination: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabel {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status: u16,
}

fn step_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// This process' counters, registered once.
pub struct Metrics {
    registry: Registry,
    step_attempts: Family<StepOutcome, Counter>,
    step_seconds: Family<StepLabel, Histogram>,
    items_reassigned: Counter,
    purges_fired: Family<FiredBy, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    webhook_attempts: Family<WebhookOutcome, Counter>,
    webhook_seconds: Family<EndpointLabel, Histogram>,
    outbound_calls: Family<CallOutcome, Counter>,
    outbound_seconds: Family<DestinationLabel, Histogram>,
    dispatch_passes: Counter,
    dispatched_steps: Counter,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let step_attempts = Family::<StepOutcome, Counter>::default();
        registry.register(
            "offboard_step_attempts",
            "Step attempts by step and outcome",
            step_attempts.clone(),
        );
        let step_seconds =
            Family::<StepLabel, Histogram>::new_with_constructor(step_histogram as fn() -> _);
        registry.register(
            "offboard_step_duration_seconds",
            "Time one attempt of a step took",
            step_seconds.clone(),
        );
        let items_reassigned = Counter::default();
        registry.register(
            "offboard_items_reassigned",
            "Owned items moved to new owners by this process",
            items_reassigned.clone(),
        );
        let purges_fired = Family::<FiredBy, Counter>::default();
        registry.register(
            "offboard_purges_fired",
            "Private-email purges fired by this process",
            purges_fired.clone(),
        );
        // Present from the start, so a rate over them never begins with a gap.
        for fired_by in ["queue", "sweeper"] {
            let _ = purges_fired.get_or_create(&FiredBy { fired_by });
        }
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "offboard_http_requests",
            "HTTP requests by route and status",
            http_requests.clone(),
        );
        let webhook_attempts = Family::<WebhookOutcome, Counter>::default();
        registry.register(
            "offboard_webhook_attempts",
            "Webhook delivery attempts by endpoint and outcome (succeeded, retry, failed, gone)",
            webhook_attempts.clone(),
        );
        let webhook_seconds =
            Family::<EndpointLabel, Histogram>::new_with_constructor(step_histogram as fn() -> _);
        registry.register(
            "offboard_webhook_attempt_duration_seconds",
            "Time one webhook attempt took, by endpoint",
            webhook_seconds.clone(),
        );
        let outbound_calls = Family::<CallOutcome, Counter>::default();
        registry.register(
            "offboard_outbound_calls",
            "Calls of steps to outside systems by destination host and outcome \
             (succeeded, retry, dead, waiting)",
            outbound_calls.clone(),
        );
        let outbound_seconds = Family::<DestinationLabel, Histogram>::new_with_constructor(
            step_histogram as fn() -> _,
        );
        registry.register(
            "offboard_outbound_call_duration_seconds",
            "Time one call to an outside system took, by destination host",
            outbound_seconds.clone(),
        );
        let dispatch_passes = Counter::default();
        registry.register(
            "offboard_dispatch_passes",
            "Passes of this process's dispatcher (at most one in flight, at least 10 ms apart)",
            dispatch_passes.clone(),
        );
        let dispatched_steps = Counter::default();
        registry.register(
            "offboard_dispatched_steps",
            "Steps this process's dispatcher moved to queued and pushed",
            dispatched_steps.clone(),
        );
        Self {
            registry,
            dispatch_passes,
            dispatched_steps,
            outbound_calls,
            outbound_seconds,
            step_attempts,
            step_seconds,
            items_reassigned,
            purges_fired,
            http_requests,
            webhook_attempts,
            webhook_seconds,
        }
    }

    /// One pass of the dispatcher, which dispatched `steps` steps.
    pub fn dispatch_pass(&self, steps: usize) {
        self.dispatch_passes.inc();
        self.dispatched_steps.inc_by(steps as u64);
    }

    /// One attempt of a step ended: `succeeded`, `retry`, `dead` or `lease_lost`.
    pub fn step_attempt(&self, step: &str, outcome: &'static str, took: Duration) {
        self.step_attempts.get_or_create(&StepOutcome { step: step.to_string(), outcome }).inc();
        self.step_seconds
            .get_or_create(&StepLabel { step: step.to_string() })
            .observe(took.as_secs_f64());
    }

    /// One attempt of a webhook delivery ended: `succeeded`, `retry`, `failed` (schedule
    /// used up) or `gone` (410).
    pub fn webhook_attempt(&self, endpoint_id: &str, outcome: &'static str, took: Duration) {
        let endpoint_id = endpoint_id.to_string();
        self.webhook_attempts
            .get_or_create(&WebhookOutcome { endpoint_id: endpoint_id.clone(), outcome })
            .inc();
        self.webhook_seconds
            .get_or_create(&EndpointLabel { endpoint_id })
            .observe(took.as_secs_f64());
    }

    /// One call of a step to an outside system ended: `succeeded`, `retry`, `dead`; or
    /// did not go (`waiting`: breaker open, rate limit, host at its in-flight limit).
    pub fn outbound_call(&self, destination: &str, outcome: &'static str, took: Option<Duration>) {
        let destination = destination.to_string();
        self.outbound_calls
            .get_or_create(&CallOutcome { destination: destination.clone(), outcome })
            .inc();
        if let Some(took) = took {
            self.outbound_seconds
                .get_or_create(&DestinationLabel { destination })
                .observe(took.as_secs_f64());
        }
    }

    pub fn items_reassigned(&self, n: u64) {
        self.items_reassigned.inc_by(n);
    }

    pub fn purge_fired(&self, by: &'static str) {
        self.purges_fired.get_or_create(&FiredBy { fired_by: by }).inc();
    }

    /// `route` is the matched route template (e.g. `/v1/offboardings/{id}`), never a raw path.
    pub fn http_request(&self, route: &str, status: u16) {
        self.http_requests.get_or_create(&HttpLabels { route: route.to_string(), status }).inc();
    }

    /// This process' series, ending the exposition (`# EOF`).
    fn encode(&self, out: &mut String) -> std::fmt::Result {
        text::encode(out, &self.registry)
    }
}

/// The whole exposition: the ledger gauges, then this process' counters.
pub fn render(counts: &LedgerCounts) -> String {
    let mut out = String::with_capacity(8192);
    // Writing to a String cannot fail.
    let _ = text::encode_registry(&mut out, &counts.registry());
    let _ = METRICS.encode(&mut out);
    out
}

/// The exposition's content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
