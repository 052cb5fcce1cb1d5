//! The operator's Prometheus metrics, served at `/metrics`.
//!
//! Names are `wsgiscale_operator_*` with unit suffixes; label values are fixed strings (an
//! error variant's [`crate::reconcile::Error::metric_label`], never Debug output), so the
//! series count stays bounded.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Labels of the reconcile counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok`, `invalid` (spec refused) or `error` (transient, retried).
    pub result: &'static str,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// A fixed string per error kind.
    pub reason: &'static str,
}

/// Labels of the write counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// The kind of the object written.
    pub kind: &'static str,
}

/// Labels of the autoscaler's counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AutoscaleLabels {
    /// `scale_up`/`scale_down` for decisions; `ok`, `draining` or an error kind for scrapes.
    pub result: &'static str,
}

/// Every metric of the operator, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result.
    pub reconciles: Family<ResultLabels, Counter>,
    /// Errors by reason (transient reconcile failures, refused objects, failed events).
    pub errors: Family<ErrorLabels, Counter>,
    /// Objects applied or deleted, by kind.
    pub writes: Family<WriteLabels, Counter>,
    /// Reconcile duration.
    pub duration: Histogram,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge<i64, AtomicI64>,
    /// Changes of the autoscaler's recommendation, by direction.
    pub scale_decisions: Family<AutoscaleLabels, Counter>,
    /// Load report reads, by result.
    pub load_scrapes: Family<AutoscaleLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wsgiscale_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "WsgiApp reconciles, by result",
            reconciles.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("errors", "Errors, by reason", errors.clone());
        let writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "writes",
            "Child objects applied or deleted, by kind",
            writes.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register_with_unit(
            "reconcile_duration",
            "Time one reconcile takes",
            Unit::Seconds,
            duration.clone(),
        );
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        let scale_decisions = Family::<AutoscaleLabels, Counter>::default();
        registry.register(
            "autoscale_decisions",
            "Changes of the pod count the autoscaler recommends, by direction",
            scale_decisions.clone(),
        );
        let load_scrapes = Family::<AutoscaleLabels, Counter>::default();
        registry.register(
            "load_scrapes",
            "Reads of the servers' /load report, by result",
            load_scrapes.clone(),
        );
        Metrics {
            scale_decisions,
            load_scrapes,
            registry,
            reconciles,
            errors,
            writes,
            duration,
            leader,
        }
    }
}

impl Metrics {
    /// Counts one reconcile that took `elapsed` and ended with `result`.
    pub fn observe_reconcile(&self, result: &'static str, elapsed: Duration) {
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one error of kind `reason`.
    pub fn count_error(&self, reason: &'static str) {
        self.errors.get_or_create(&ErrorLabels { reason }).inc();
    }

    /// Counts one write of a `kind` object.
    pub fn count_write(&self, kind: &'static str) {
        self.writes.get_or_create(&WriteLabels { kind }).inc();
    }

    /// Counts one change of the autoscaler's recommendation (`scale_up` or `scale_down`).
    pub fn count_scale(&self, result: &'static str) {
        self.scale_decisions
            .get_or_create(&AutoscaleLabels { result })
            .inc();
    }

    /// Counts one load report read with `result`.
    pub fn count_scrape(&self, result: &'static str) {
        self.load_scrapes
            .get_or_create(&AutoscaleLabels { result })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_prefix_and_units() {
        let m = Metrics::default();
        m.observe_reconcile("ok", Duration::from_millis(12));
        m.count_error("apply_object");
        m.count_write("Deployment");
        m.leader.set(1);
        let text = m.encode();
        for want in [
            "wsgiscale_operator_reconciles_total{result=\"ok\"} 1",
            "wsgiscale_operator_errors_total{reason=\"apply_object\"} 1",
            "wsgiscale_operator_writes_total{kind=\"Deployment\"} 1",
            "wsgiscale_operator_reconcile_duration_seconds_count 1",
            "wsgiscale_operator_leader 1",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }
}
