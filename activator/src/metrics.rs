//! The activator's Prometheus metrics (`/metrics` on its admin port). Labels are the app's
//! namespace and name (bounded by the apps it fronts) and, for rejections, a fixed reason.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// An app.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    /// Namespace.
    pub namespace: String,
    /// WsgiApp name.
    pub app: String,
}

/// An app and why a request was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// Namespace.
    pub namespace: String,
    /// WsgiApp name.
    pub app: String,
    /// `max_requests`, `max_bytes`, `deadline`, `draining`, `no_route`, `max_connections`.
    pub reason: &'static str,
}

fn wait_histogram() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

/// Every metric.
pub struct Metrics {
    /// Requests held now.
    pub held: Family<AppLabels, Gauge>,
    /// Body bytes held now.
    pub held_bytes: Family<AppLabels, Gauge>,
    /// Requests per worker slot its pods may queue beyond what they run (the most over its
    /// ready pods).
    pub backlog_per_slot: Family<AppLabels, Gauge>,
    /// Time from arrival to being handed to a pod.
    pub wait: Family<AppLabels, Histogram, fn() -> Histogram>,
    /// Requests handed to a pod.
    pub forwarded: Family<AppLabels, Counter>,
    /// Requests sent to another pod because the first refused the connection.
    pub retried: Family<AppLabels, Counter>,
    /// Requests answered 503 because they waited their whole deadline.
    pub timed_out: Family<AppLabels, Counter>,
    /// Requests refused, by reason.
    pub rejected: Family<RejectLabels, Counter>,
    /// Responses 502: the pod failed after the request may have reached it.
    pub failed: Family<AppLabels, Counter>,
    registry: Registry,
}

impl Metrics {
    /// Registers everything.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wsgiscale_activator");
        let held = Family::<AppLabels, Gauge>::default();
        let held_bytes = Family::<AppLabels, Gauge>::default();
        let backlog_per_slot = Family::<AppLabels, Gauge>::default();
        let wait =
            Family::<AppLabels, Histogram, fn() -> Histogram>::new_with_constructor(wait_histogram);
        let forwarded = Family::<AppLabels, Counter>::default();
        let retried = Family::<AppLabels, Counter>::default();
        let timed_out = Family::<AppLabels, Counter>::default();
        let rejected = Family::<RejectLabels, Counter>::default();
        let failed = Family::<AppLabels, Counter>::default();
        registry.register(
            "held_requests",
            "Requests held, waiting for a pod",
            held.clone(),
        );
        registry.register("held_bytes", "Request body bytes held", held_bytes.clone());
        registry.register(
            "backlog_per_slot",
            "Requests per worker slot the app's ready pods may queue beyond what they run (the most over them)",
            backlog_per_slot.clone(),
        );
        registry.register(
            "wait_seconds",
            "Time from arrival to being handed to a pod",
            wait.clone(),
        );
        registry.register("forwarded", "Requests handed to a pod", forwarded.clone());
        registry.register(
            "retried",
            "Requests sent to another pod after a refused connection",
            retried.clone(),
        );
        registry.register(
            "timed_out",
            "Requests answered 503 at their deadline",
            timed_out.clone(),
        );
        registry.register(
            "rejected",
            "Requests refused (503), by reason",
            rejected.clone(),
        );
        registry.register(
            "failed",
            "Requests answered 502 because the pod failed after it may have received them",
            failed.clone(),
        );
        Metrics {
            held,
            held_bytes,
            backlog_per_slot,
            wait,
            forwarded,
            retried,
            timed_out,
            rejected,
            failed,
            registry,
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
