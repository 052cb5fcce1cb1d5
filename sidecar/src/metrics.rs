//! Prometheus metrics of the server (`/metrics` on the admin port), via prometheus-client.
//! Names are `wsgiscale_*` with unit suffixes; label values come from fixed sets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use wsgiscale_core::scoreboard::{Scoreboard, SlotState};

/// `state` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// starting, idle, busy or retiring.
    pub state: &'static str,
}

/// `class` label: 1xx..5xx, or the failure kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// Status class.
    pub class: &'static str,
}

/// `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why (a fixed string per variant).
    pub reason: &'static str,
}

/// `kind` label of the temporary-file metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// request (a large body) or response (a slow client's).
    pub kind: &'static str,
}

/// Scaling decision labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    /// spare, spare2, backlog, busyness, manual.
    pub algorithm: &'static str,
    /// up or down.
    pub direction: &'static str,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Workers by state.
    pub workers: Family<StateLabel, Gauge>,
    /// Requests waiting for a worker.
    pub queue_depth: Gauge,
    /// Time requests waited in the queue.
    pub queue_wait: Histogram,
    /// Time from a complete request to the response head.
    pub request_duration: Histogram,
    /// Requests answered, by status class.
    pub requests: Family<ClassLabel, Counter>,
    /// Requests answered by a static mount, by status class.
    pub static_requests: Family<ClassLabel, Counter>,
    /// Worker spawns by reason.
    pub spawns: Family<ReasonLabel, Counter>,
    /// Worker retirements by reason.
    pub retirements: Family<ReasonLabel, Counter>,
    /// Worker deaths that were not asked for (crash, timeout kill).
    pub deaths: Family<ReasonLabel, Counter>,
    /// Scaling decisions that changed the worker count.
    pub decisions: Family<DecisionLabel, Counter>,
    /// Spawns the driver refused, by reason (at_max, memory, ...).
    pub refusals: Family<ReasonLabel, Counter>,
    /// Memory (USS) of all workers.
    pub workers_memory: Gauge,
    /// Largest worker's memory (USS).
    pub worker_memory_max: Gauge,
    /// Open client connections.
    pub connections: Gauge,
    /// Accepted client connections.
    pub connections_accepted: Counter,
    /// Config reloads by outcome.
    pub config_reloads: Family<ReasonLabel, Counter>,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: Counter,
    /// TLS certificate reloads by outcome.
    pub tls_reloads: Family<ReasonLabel, Counter>,
    /// Temporary files made for bodies, by kind.
    spill_files: Family<KindLabel, Counter>,
    /// Bytes written to them, by kind.
    spill_bytes: Family<KindLabel, Counter>,
    /// Requests or responses that failed because of their temporary file, by kind.
    spill_errors: Family<KindLabel, Counter>,
    /// The configured workers.min.
    pub workers_min: Gauge,
    /// The configured workers.max.
    pub workers_max: Gauge,
    /// Responses the server made itself for want of one from the app, by reason.
    pub server_errors: Family<ReasonLabel, Counter>,
}

/// Why the server answered a 5xx itself: 502 (the worker died running the request), 503
/// (the queue was full), 504 (the request ran past its deadline).
pub const SERVER_ERROR_REASONS: [&str; 3] = ["worker_died", "queue_full", "timeout"];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let workers = Family::<StateLabel, Gauge>::default();
        r.register(
            "wsgiscale_workers",
            "Worker processes by state",
            workers.clone(),
        );
        let queue_depth = Gauge::default();
        r.register(
            "wsgiscale_queue_depth",
            "Requests waiting for a worker",
            queue_depth.clone(),
        );
        let queue_wait = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        r.register(
            "wsgiscale_queue_wait_seconds",
            "Time requests waited for a worker",
            queue_wait.clone(),
        );
        let request_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 18));
        r.register(
            "wsgiscale_request_duration_seconds",
            "Time from a complete request to its response head, queueing included",
            request_duration.clone(),
        );
        let requests = Family::<ClassLabel, Counter>::default();
        r.register(
            "wsgiscale_requests",
            "Requests answered, by status class",
            requests.clone(),
        );
        let static_requests = Family::<ClassLabel, Counter>::default();
        r.register(
            "wsgiscale_static_requests",
            "Requests answered by a static mount in the front, by status class (never queued, never counted in wsgiscale_requests or the load report)",
            static_requests.clone(),
        );
        let spawns = Family::<ReasonLabel, Counter>::default();
        r.register(
            "wsgiscale_worker_spawns",
            "Worker spawns by reason",
            spawns.clone(),
        );
        let retirements = Family::<ReasonLabel, Counter>::default();
        r.register(
            "wsgiscale_worker_retirements",
            "Graceful worker retirements by reason",
            retirements.clone(),
        );
        let deaths = Family::<ReasonLabel, Counter>::default();
        r.register(
            "wsgiscale_worker_deaths",
            "Worker exits nobody asked for, by reason",
            deaths.clone(),
        );
        let decisions = Family::<DecisionLabel, Counter>::default();
        r.register(
            "wsgiscale_scaling_decisions",
            "Scaling decisions that changed the worker count, by algorithm and direction",
            decisions.clone(),
        );
        let refusals = Family::<ReasonLabel, Counter>::default();
        r.register(
            "wsgiscale_scaling_refusals",
            "Spawns or retirements the driver refused, by reason",
            refusals.clone(),
        );
        let workers_memory = Gauge::default();
        r.register(
            "wsgiscale_workers_memory_bytes",
            "Memory of all workers: the sum of their unique set sizes (USS), the pages each \
             has beyond what it shares with the fork server and the others",
            workers_memory.clone(),
        );
        let worker_memory_max = Gauge::default();
        r.register(
            "wsgiscale_worker_memory_max_bytes",
            "Memory (USS) of the largest worker, the figure --max-rss compares",
            worker_memory_max.clone(),
        );
        let connections = Gauge::default();
        r.register(
            "wsgiscale_connections",
            "Open client connections",
            connections.clone(),
        );
        let connections_accepted = Counter::default();
        r.register(
            "wsgiscale_connections_accepted",
            "Client connections accepted",
            connections_accepted.clone(),
        );
        let config_reloads = Family::<ReasonLabel, Counter>::default();
        r.register(
            "wsgiscale_config_reloads",
            "Config file reloads by outcome (applied, rejected)",
            config_reloads.clone(),
        );
        let tls_handshake_failures = Counter::default();
        r.register(
            "wsgiscale_tls_handshake_failures",
            "TLS handshakes that failed (no or a refused client certificate, a client that does not trust ours) or timed out",
            tls_handshake_failures.clone(),
        );
        let tls_reloads = Family::<ReasonLabel, Counter>::default();
        r.register(
            "wsgiscale_tls_reloads",
            "Changed TLS certificate files by outcome (applied, rejected)",
            tls_reloads.clone(),
        );
        let spill_files = Family::<KindLabel, Counter>::default();
        r.register(
            "wsgiscale_spill_files",
            "Temporary files made for request bodies past --body-buffer and responses past \
             --response-buffer, by kind",
            spill_files.clone(),
        );
        let spill_bytes = Family::<KindLabel, Counter>::default();
        r.register_with_unit(
            "wsgiscale_spill",
            "Bytes written to temporary files, by kind",
            prometheus_client::registry::Unit::Bytes,
            spill_bytes.clone(),
        );
        let spill_errors = Family::<KindLabel, Counter>::default();
        r.register(
            "wsgiscale_spill_errors",
            "Requests (500) or responses (cut short) lost to a temporary file that could not \
             be made, written or read, by kind",
            spill_errors.clone(),
        );
        let workers_min = Gauge::default();
        r.register(
            "wsgiscale_workers_min",
            "The configured workers.min (live-reloadable)",
            workers_min.clone(),
        );
        let workers_max = Gauge::default();
        r.register(
            "wsgiscale_workers_max",
            "The configured workers.max (live-reloadable)",
            workers_max.clone(),
        );
        let server_errors = Family::<ReasonLabel, Counter>::default();
        r.register(
            "wsgiscale_server_errors",
            "5xx responses the server made itself, by reason (worker_died 502, queue_full 503, timeout 504)",
            server_errors.clone(),
        );
        // Known reasons start at zero, so a rate over them is 0 rather than no data.
        for reason in SERVER_ERROR_REASONS {
            drop(server_errors.get_or_create(&ReasonLabel { reason }));
        }
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            drop(requests.get_or_create(&ClassLabel { class }));
        }
        for reason in ["crash", "timeout"] {
            drop(deaths.get_or_create(&ReasonLabel { reason }));
        }
        for reason in ["max-requests", "lifetime", "rss"] {
            drop(retirements.get_or_create(&ReasonLabel { reason }));
        }
        Metrics {
            registry: r,
            workers_min,
            workers_max,
            server_errors,
            workers,
            queue_depth,
            queue_wait,
            request_duration,
            requests,
            static_requests,
            spawns,
            retirements,
            deaths,
            decisions,
            refusals,
            workers_memory,
            worker_memory_max,
            connections,
            connections_accepted,
            config_reloads,
            tls_handshake_failures,
            tls_reloads,
            spill_files,
            spill_bytes,
            spill_errors,
        }
    }

    /// Temporary files made for `kind` ("request" or "response").
    pub fn spill_files(&self, kind: &'static str) -> Counter {
        self.spill_files.get_or_create(&KindLabel { kind }).clone()
    }

    /// Bytes written to temporary files for `kind`.
    pub fn spill_bytes(&self, kind: &'static str) -> Counter {
        self.spill_bytes.get_or_create(&KindLabel { kind }).clone()
    }

    /// Losses to temporary files for `kind`.
    pub fn spill_errors(&self, kind: &'static str) -> Counter {
        self.spill_errors.get_or_create(&KindLabel { kind }).clone()
    }

    /// The counters a response spool updates.
    pub fn response_spill_stats(&self) -> crate::spool::SpillStats {
        crate::spool::SpillStats {
            files: self.spill_files("response"),
            bytes: self.spill_bytes("response"),
            errors: self.spill_errors("response"),
        }
    }

    /// Counts a failed TLS handshake.
    pub fn count_tls_handshake_failure(&self) {
        self.tls_handshake_failures.inc();
    }

    /// Counts one answered request (the status the client got).
    pub fn count_status(&self, status: u16) {
        self.requests
            .get_or_create(&ClassLabel {
                class: class(status),
            })
            .inc();
    }

    /// Counts one request a static mount answered.
    pub fn count_static(&self, status: u16) {
        self.static_requests
            .get_or_create(&ClassLabel {
                class: class(status),
            })
            .inc();
    }

    /// Counts one 5xx the server made itself (`reason` one of [`SERVER_ERROR_REASONS`]).
    pub fn count_server_error(&self, reason: &'static str) {
        self.server_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Sets the configured worker limits.
    pub fn observe_limits(&self, min: u32, max: u32) {
        self.workers_min.set(i64::from(min));
        self.workers_max.set(i64::from(max));
    }

    /// Updates the gauges that mirror the scoreboard.
    pub fn observe_scoreboard(&self, sb: &Scoreboard) {
        for (state, name) in [
            (SlotState::Starting, "starting"),
            (SlotState::Idle, "idle"),
            (SlotState::Busy, "busy"),
            (SlotState::Retiring, "retiring"),
        ] {
            self.workers
                .get_or_create(&StateLabel { state: name })
                .set(i64::from(sb.count(state)));
        }
        self.queue_depth.set(i64::from(sb.queue_depth));
        let memory: Vec<u64> = sb.workers.iter().filter_map(|w| w.memory_bytes).collect();
        self.workers_memory.set(memory.iter().sum::<u64>() as i64);
        self.worker_memory_max
            .set(memory.iter().copied().max().unwrap_or(0) as i64);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

fn class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_unit_suffixes() {
        let m = Metrics::new();
        m.count_status(204);
        m.spawns
            .get_or_create(&ReasonLabel { reason: "initial" })
            .inc();
        m.queue_wait.observe(0.002);
        m.spill_bytes("request").inc_by(5);
        let text = m.render();
        assert!(
            text.contains("wsgiscale_spill_bytes_total{kind=\"request\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("wsgiscale_requests_total{class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wsgiscale_worker_spawns_total{reason=\"initial\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE wsgiscale_queue_wait_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("wsgiscale_queue_wait_seconds_bucket{le=\"+Inf\"} 1"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
        m.observe_limits(2, 8);
        m.count_server_error("queue_full");
        let text = m.render();
        for want in [
            "wsgiscale_workers_min 2",
            "wsgiscale_workers_max 8",
            "wsgiscale_server_errors_total{reason=\"queue_full\"} 1",
            "wsgiscale_server_errors_total{reason=\"worker_died\"} 0",
            "wsgiscale_worker_deaths_total{reason=\"crash\"} 0",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }
}
