//! The operator's Prometheus metrics, served at `/metrics`.
//!
//! Names are `wsgiscale_operator_*` with unit suffixes; label values are fixed strings (an
//! error variant's [`crate::reconcile::Error::metric_label`], never Debug output), so the
//! series count stays bounded. Per-app series (`namespace`, `wsgiapp`: one set per WsgiApp, as
//! kube-state-metrics has one per Deployment) come from the WsgiApps in the controllers'
//! caches at each scrape ([`AppCollector`]), so a deleted app leaves no series behind; only the
//! leading replica has them. The dashboards and alerts of charts/wsgiscale read these.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::crd::WsgiApp;

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
    /// `ok`, `draining` or an error kind for scrapes; `change` or `heartbeat` for status
    /// writes.
    pub result: &'static str,
}

/// Labels of the autoscaler's decisions, per app.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The WsgiApp's namespace.
    pub namespace: String,
    /// The WsgiApp's name.
    pub wsgiapp: String,
    /// `scale_up` or `scale_down`.
    pub direction: &'static str,
    /// `panic` (the 6 s window's burst) or `stable` (the 60 s window).
    pub mode: &'static str,
}

/// Labels of the load report reads, per app.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScrapeLabels {
    /// The WsgiApp's namespace.
    pub namespace: String,
    /// The WsgiApp's name.
    pub wsgiapp: String,
    /// `ok`, `draining`, or the error kind (see [`crate::scrape::ScrapeError::as_str`]).
    pub result: &'static str,
}

/// Every result of a load report read.
const SCRAPE_RESULTS: [&str; 8] = [
    "ok", "draining", "timeout", "connect", "http", "status", "body", "report",
];

/// Error reasons that start at zero (others appear when first counted).
const ERROR_REASONS: [&str; 9] = [
    "get_object",
    "apply_object",
    "delete_object",
    "patch_status",
    "object_rejected",
    "name_conflict",
    "publish_event",
    "events_dropped",
    "autoscale_patch_status",
];

/// Kinds the reconciler writes, started at zero.
const WRITE_KINDS: [&str; 5] = [
    "ConfigMap",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "WsgiApp/status",
];

/// Labels of the child reads.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    /// `cache` (a watch's store) or `api` (a GET, on a cache miss).
    pub source: &'static str,
}

/// Labels of the API request histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// get, list, watch, create, update, patch, delete.
    pub verb: &'static str,
    /// 2xx, 3xx, 4xx, 5xx, or `error` (no answer).
    pub code: &'static str,
}

/// Labels of the per-app series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    namespace: String,
    wsgiapp: String,
}

/// Labels of the per-app condition series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConditionLabels {
    namespace: String,
    wsgiapp: String,
    condition: String,
    reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn api_histogram() -> Histogram {
    // 1 ms .. 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
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
    /// Changes of the autoscaler's recommendation, by app, direction and window.
    pub scale_decisions: Family<DecisionLabels, Counter>,
    /// Load report reads, by app and result.
    pub load_scrapes: Family<ScrapeLabels, Counter>,
    /// Time one load report read takes.
    pub load_scrape_duration: Histogram,
    /// Autoscaler ticks (one pass over the autoscaled apps that are due).
    pub autoscale_ticks: Counter,
    /// Time one autoscaler tick takes.
    pub autoscale_tick_duration: Histogram,
    /// The autoscaler's status writes, by cause.
    pub autoscale_status_writes: Family<AutoscaleLabels, Counter>,
    /// Reads of the children, by source.
    pub child_reads: Family<ReadLabels, Counter>,
    /// Requests to the API server, by verb and answer, time to the response head.
    pub api_requests: HistogramFamily<ApiLabels>,
    /// The WsgiApps the per-app series are read from.
    apps: Arc<AppCollector>,
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
            "Objects applied, patched or deleted by the reconciler, by kind",
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
        let scale_decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "autoscale_decisions",
            "Changes of the pod count the autoscaler recommends, by app, direction and window",
            scale_decisions.clone(),
        );
        let load_scrapes = Family::<ScrapeLabels, Counter>::default();
        registry.register(
            "load_scrapes",
            "Reads of the servers' /load report by the autoscaler, by app and result",
            load_scrapes.clone(),
        );
        let load_scrape_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register_with_unit(
            "load_scrape_duration",
            "Time one read of a server's /load report takes",
            Unit::Seconds,
            load_scrape_duration.clone(),
        );
        let autoscale_ticks = Counter::default();
        registry.register(
            "autoscale_ticks",
            "Autoscaler ticks (every second; each app is measured on its own tick period)",
            autoscale_ticks.clone(),
        );
        let autoscale_tick_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register_with_unit(
            "autoscale_tick_duration",
            "Time one autoscaler tick takes over the apps that are due",
            Unit::Seconds,
            autoscale_tick_duration.clone(),
        );
        let autoscale_status_writes = Family::<AutoscaleLabels, Counter>::default();
        registry.register(
            "autoscale_status_writes",
            "The autoscaler's writes of status.load and status.autoscaler, by cause (change, heartbeat)",
            autoscale_status_writes.clone(),
        );
        let child_reads = Family::<ReadLabels, Counter>::default();
        registry.register(
            "child_reads",
            "Reads of a WsgiApp's children by the reconciler, by source (cache, api)",
            child_reads.clone(),
        );
        let api_requests: HistogramFamily<ApiLabels> = Family::new_with_constructor(api_histogram);
        registry.register_with_unit(
            "api_request_duration",
            "Requests to the API server, by verb and answer: time to the response head",
            Unit::Seconds,
            api_requests.clone(),
        );
        let apps = Arc::new(AppCollector::default());
        registry.register_collector(Box::new(apps.clone()));
        // Known label values start at zero, so a rate over them is 0 rather than no data.
        for result in ["ok", "invalid", "rejected", "error"] {
            drop(reconciles.get_or_create(&ResultLabels { result }));
        }
        for reason in ERROR_REASONS {
            drop(errors.get_or_create(&ErrorLabels { reason }));
        }
        for kind in WRITE_KINDS {
            drop(writes.get_or_create(&WriteLabels { kind }));
        }
        for result in ["change", "heartbeat"] {
            drop(autoscale_status_writes.get_or_create(&AutoscaleLabels { result }));
        }
        for source in ["cache", "api"] {
            drop(child_reads.get_or_create(&ReadLabels { source }));
        }
        Metrics {
            scale_decisions,
            load_scrapes,
            load_scrape_duration,
            autoscale_ticks,
            autoscale_tick_duration,
            autoscale_status_writes,
            child_reads,
            api_requests,
            apps,
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

    /// Counts one read of a child from `source` (`cache` or `api`).
    pub fn count_child_read(&self, source: &'static str) {
        self.child_reads.get_or_create(&ReadLabels { source }).inc();
    }

    /// Counts one change of the autoscaler's recommendation for an app.
    pub fn count_scale(
        &self,
        namespace: &str,
        wsgiapp: &str,
        direction: &'static str,
        panic: bool,
    ) {
        self.scale_decisions
            .get_or_create(&DecisionLabels {
                namespace: namespace.to_string(),
                wsgiapp: wsgiapp.to_string(),
                direction,
                mode: if panic { "panic" } else { "stable" },
            })
            .inc();
    }

    /// Starts the decision and scrape series of an app at zero (so their rates are 0, not
    /// missing).
    pub fn init_scale(&self, namespace: &str, wsgiapp: &str) {
        for direction in ["scale_up", "scale_down"] {
            for mode in ["panic", "stable"] {
                drop(self.scale_decisions.get_or_create(&DecisionLabels {
                    namespace: namespace.to_string(),
                    wsgiapp: wsgiapp.to_string(),
                    direction,
                    mode,
                }));
            }
        }
        for result in ["ok", "timeout", "connect"] {
            drop(self.load_scrapes.get_or_create(&ScrapeLabels {
                namespace: namespace.to_string(),
                wsgiapp: wsgiapp.to_string(),
                result,
            }));
        }
    }

    /// Drops the decision and scrape series of an app the autoscaler no longer tracks.
    pub fn forget_scale(&self, namespace: &str, wsgiapp: &str) {
        for result in SCRAPE_RESULTS {
            self.load_scrapes.remove(&ScrapeLabels {
                namespace: namespace.to_string(),
                wsgiapp: wsgiapp.to_string(),
                result,
            });
        }
        for direction in ["scale_up", "scale_down"] {
            for mode in ["panic", "stable"] {
                self.scale_decisions.remove(&DecisionLabels {
                    namespace: namespace.to_string(),
                    wsgiapp: wsgiapp.to_string(),
                    direction,
                    mode,
                });
            }
        }
    }

    /// Counts one read of a load report of an app's pod with `result`, which took `elapsed`.
    pub fn count_scrape(
        &self,
        namespace: &str,
        wsgiapp: &str,
        result: &'static str,
        elapsed: Duration,
    ) {
        self.load_scrapes
            .get_or_create(&ScrapeLabels {
                namespace: namespace.to_string(),
                wsgiapp: wsgiapp.to_string(),
                result,
            })
            .inc();
        self.load_scrape_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one status write of the autoscaler, `change` or `heartbeat`.
    pub fn count_autoscale_write(&self, result: &'static str) {
        self.autoscale_status_writes
            .get_or_create(&AutoscaleLabels { result })
            .inc();
    }

    /// Counts one autoscaler tick that took `elapsed`.
    pub fn observe_tick(&self, elapsed: Duration) {
        self.autoscale_ticks.inc();
        self.autoscale_tick_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one API request answered with `code` (or not: `error`) after `elapsed`.
    pub fn observe_api(&self, verb: &'static str, code: &'static str, elapsed: Duration) {
        self.api_requests
            .get_or_create(&ApiLabels { verb, code })
            .observe(elapsed.as_secs_f64());
    }

    /// The WsgiApps the per-app series are read from: the controllers' caches while this
    /// replica leads, nothing otherwise.
    pub fn set_app_stores(&self, stores: Vec<Store<WsgiApp>>) {
        *self.apps.stores.write().unwrap_or_else(|e| e.into_inner()) = stores;
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The per-app series, computed at each scrape from the WsgiApps in the caches: replicas
/// (desired, ready, and the spec's min and max), and each condition (1 while True) with its
/// reason.
#[derive(Debug, Default)]
struct AppCollector {
    stores: RwLock<Vec<Store<WsgiApp>>>,
}

impl Collector for AppCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let apps: Vec<Arc<WsgiApp>> = self
            .stores
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flat_map(|s| s.state())
            .collect();
        let count = Gauge::<i64, AtomicI64>::default();
        count.set(apps.len() as i64);
        let gauges: [(&str, &str, Family<AppLabels, Gauge>); 4] = [
            (
                "app_desired_replicas",
                "Pods the operator asks of the app's Deployment",
                Family::default(),
            ),
            (
                "app_ready_replicas",
                "Pods of the app passing their readiness probe",
                Family::default(),
            ),
            (
                "app_min_replicas",
                "spec.replicas.min of the app",
                Family::default(),
            ),
            (
                "app_max_replicas",
                "spec.replicas.max of the app (absent: unbounded)",
                Family::default(),
            ),
        ];
        let conditions = Family::<ConditionLabels, Gauge>::default();
        for app in &apps {
            let labels = AppLabels {
                namespace: app.metadata.namespace.clone().unwrap_or_default(),
                wsgiapp: app.metadata.name.clone().unwrap_or_default(),
            };
            let spec = app.spec.replicas.as_ref();
            let status = app.status.as_ref();
            let values = [
                status.and_then(|s| s.desired_replicas),
                status.map(|s| s.ready_replicas.unwrap_or(0)),
                Some(
                    spec.and_then(|r| r.min)
                        .unwrap_or(crate::validate::defaults::REPLICAS_MIN),
                ),
                spec.and_then(|r| r.max),
            ];
            for ((_, _, family), value) in gauges.iter().zip(values) {
                if let Some(v) = value {
                    family.get_or_create(&labels).set(i64::from(v));
                }
            }
            for c in status.map(|s| s.conditions.as_slice()).unwrap_or_default() {
                conditions
                    .get_or_create(&ConditionLabels {
                        namespace: labels.namespace.clone(),
                        wsgiapp: labels.wsgiapp.clone(),
                        condition: c.type_.clone(),
                        reason: c.reason.clone(),
                    })
                    .set(i64::from(c.status == "True"));
            }
        }
        // Names without the registry's prefix (`wsgiscale_operator_`), which the encoder adds.
        count.encode(encoder.encode_descriptor(
            "apps",
            "WsgiApps in the leading replica's caches",
            None,
            count.metric_type(),
        )?)?;
        for (name, help, family) in &gauges {
            family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)?;
        }
        conditions.encode(encoder.encode_descriptor(
            "app_condition",
            "Each condition of each app: 1 while True, 0 otherwise, with its reason",
            None,
            conditions.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The verb of an API request (`get`, `list`, `watch`, `create`, `update`, `patch`,
/// `delete`), from its method and path. Pure.
pub fn request_verb(method: &Method, path: &str, query: Option<&str>) -> &'static str {
    let watch = query
        .unwrap_or_default()
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    match *method {
        Method::GET if watch => "watch",
        Method::GET if is_collection(path) => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// Whether `path` names a collection (`/api/v1/namespaces/shop/pods`) rather than one object
/// (`/api/v1/namespaces/shop/pods/web-1`, `.../wsgiapps/shop/status`).
fn is_collection(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    // After /api/v1 or /apis/GROUP/VERSION.
    let rest = match segs.first() {
        Some(&"api") => segs.get(2..),
        Some(&"apis") => segs.get(3..),
        _ => None,
    }
    .unwrap_or_default();
    // namespaces/NS/RESOURCE[/NAME...]; a bare `namespaces[/NAME]` is the namespaces resource.
    let rest = match rest {
        ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    rest.len() == 1
}

/// The class of an HTTP status, as a label.
fn code_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A tower layer that times every request of the kube client into
/// `wsgiscale_operator_api_request_duration_seconds`.
#[derive(Clone)]
pub struct ApiLatencyLayer {
    metrics: Arc<Metrics>,
}

impl ApiLatencyLayer {
    /// Records into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        ApiLatencyLayer { metrics }
    }
}

impl<S> tower::Layer<S> for ApiLatencyLayer {
    type Service = ApiLatency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiLatency {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`ApiLatencyLayer`].
#[derive(Clone)]
pub struct ApiLatency<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tower::Service<Request<B>> for ApiLatency<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let verb = request_verb(req.method(), req.uri().path(), req.uri().query());
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let code = match &result {
                Ok(resp) => code_class(resp.status()),
                Err(_) => "error",
            };
            metrics.observe_api(verb, code, start.elapsed());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;

    use super::*;
    use crate::crd::WsgiAppStatus;
    use crate::fixtures::mk_app;

    /// Whether a line of `text` is exactly `line`.
    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn names_carry_prefix_and_units() {
        let m = Metrics::default();
        m.observe_reconcile("ok", Duration::from_millis(12));
        m.count_error("apply_object");
        m.count_write("Deployment");
        m.count_scale("shop", "web", "scale_up", true);
        m.observe_api("patch", "2xx", Duration::from_millis(3));
        m.leader.set(1);
        let text = m.encode();
        for want in [
            "wsgiscale_operator_reconciles_total{result=\"ok\"} 1",
            "wsgiscale_operator_reconciles_total{result=\"error\"} 0",
            "wsgiscale_operator_errors_total{reason=\"apply_object\"} 1",
            "wsgiscale_operator_writes_total{kind=\"Deployment\"} 1",
            "wsgiscale_operator_reconcile_duration_seconds_count 1",
            "wsgiscale_operator_leader 1",
            "wsgiscale_operator_autoscale_decisions_total{namespace=\"shop\",wsgiapp=\"web\",direction=\"scale_up\",mode=\"panic\"} 1",
            "wsgiscale_operator_api_request_duration_seconds_count{verb=\"patch\",code=\"2xx\"} 1",
            "wsgiscale_operator_apps 0",
        ] {
            assert!(has_line(&text, want), "{want} missing from:\n{text}");
        }
    }

    #[test]
    fn per_app_series_come_from_the_cached_apps() {
        let m = Metrics::default();
        let mut writer: Writer<WsgiApp> = Writer::default();
        let mut status = WsgiAppStatus {
            desired_replicas: Some(3),
            ready_replicas: Some(2),
            ..WsgiAppStatus::default()
        };
        status
            .conditions
            .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Degraded".into(),
                status: "True".into(),
                reason: "ProgressDeadlineExceeded".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
            });
        let app = mk_app("shop").with_replicas(2, Some(6)).with_status(status);
        writer.apply_watcher_event(&watcher::Event::Apply(app));
        m.set_app_stores(vec![writer.as_reader()]);
        let text = m.encode();
        for want in [
            "wsgiscale_operator_apps 1",
            "wsgiscale_operator_app_desired_replicas{namespace=\"default\",wsgiapp=\"shop\"} 3",
            "wsgiscale_operator_app_ready_replicas{namespace=\"default\",wsgiapp=\"shop\"} 2",
            "wsgiscale_operator_app_min_replicas{namespace=\"default\",wsgiapp=\"shop\"} 2",
            "wsgiscale_operator_app_max_replicas{namespace=\"default\",wsgiapp=\"shop\"} 6",
            "wsgiscale_operator_app_condition{namespace=\"default\",wsgiapp=\"shop\",condition=\"Degraded\",reason=\"ProgressDeadlineExceeded\"} 1",
        ] {
            assert!(has_line(&text, want), "{want} missing from:\n{text}");
        }
        // The app is gone from the cache: so are its series.
        m.set_app_stores(Vec::new());
        assert!(!m.encode().contains("wsgiapp=\"shop\""));
    }

    #[test]
    fn verbs_of_api_requests() {
        let cases = [
            (Method::GET, "/api/v1/namespaces/shop/pods", None, "list"),
            (
                Method::GET,
                "/api/v1/namespaces/shop/pods",
                Some("watch=true&resourceVersion=5"),
                "watch",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/shop/pods/web-1",
                None,
                "get",
            ),
            (
                Method::GET,
                "/apis/apps/v1/deployments",
                Some("labelSelector=a"),
                "list",
            ),
            (
                Method::GET,
                "/apis/wsgiscale.dev/v1alpha1/namespaces/shop/wsgiapps/web/status",
                None,
                "get",
            ),
            (Method::GET, "/api/v1/namespaces", None, "list"),
            (Method::GET, "/api/v1/namespaces/shop", None, "get"),
            (
                Method::PATCH,
                "/apis/wsgiscale.dev/v1alpha1/namespaces/shop/wsgiapps/web/status",
                None,
                "patch",
            ),
            (
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/shop/events",
                None,
                "create",
            ),
            (
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/ops/leases/op",
                None,
                "update",
            ),
            (
                Method::DELETE,
                "/apis/policy/v1/namespaces/shop/poddisruptionbudgets/web",
                None,
                "delete",
            ),
        ];
        for (method, path, query, want) in cases {
            assert_eq!(request_verb(&method, path, query), want, "{method} {path}");
        }
    }
}
