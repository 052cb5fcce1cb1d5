//! A stand-in metrics-server: the aggregated APIs the HorizontalPodAutoscaler controller
//! reads, served over TLS by this process and registered with the API server through
//! `APIService` objects, so that the real HPA controller inside kube-controller-manager
//! computes utilization exactly as in a cluster.
//!
//! - `metrics.k8s.io/v1beta1` (`v1beta1.metrics.k8s.io`): `PodMetrics` from each stand-in pod's
//!   real CPU time (its cgroup's counter) and memory working set. Like metrics-server, it
//!   samples every pod once per *resolution* (15 s, metrics-server's default
//!   `--metric-resolution`) and reports the CPU rate between the last two samples, with that
//!   interval as the `window` and the later sample's time as the `timestamp`; a pod with one
//!   sample has no metrics yet.
//! - `custom.metrics.k8s.io/v1beta2` (`v1beta2.custom.metrics.k8s.io`), prometheus-adapter
//!   style: one Pods metric, [`REQUESTS_IN_FLIGHT`], each pod's average number of requests in
//!   flight over the same window, as a service mesh's proxy counts them (the stand-in
//!   kube-proxy's connection counts, one request per connection), the same source for every
//!   server.
//!
//! The API server dials the Service's endpoint (the node's address on the pod network), as
//! `--enable-aggregator-routing` makes it do.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::Client;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::node::PodSample;
use crate::proxy::InFlight;

/// The custom metric's name.
pub const REQUESTS_IN_FLIGHT: &str = "requests_in_flight";

const NAMESPACE: &str = "kube-system";
const SERVICE: &str = "wsgiscale-stand-in-metrics";
const MANAGER: &str = "wsgiscale-stand-in-metrics";

/// Where the samples come from.
pub struct Sources {
    /// The pods now (the stand-in node's [`crate::node::StandInNode::pods`]).
    pub pods: Box<dyn Fn() -> Vec<PodSample> + Send + Sync>,
    /// Requests in flight by pod address (the stand-in proxy's
    /// [`crate::proxy::StandInProxy::inflight`]).
    pub inflight: Box<dyn Fn() -> HashMap<Ipv4Addr, InFlight> + Send + Sync>,
}

/// Why it could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Certificates.
    #[error("certificate: {0}")]
    Cert(String),
    /// TLS setup.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// Listening.
    #[error("listen: {0}")]
    Io(#[from] std::io::Error),
    /// Registering with the API server.
    #[error("register: {0}")]
    Api(#[from] kube::Error),
    /// The API server never said the APIs are available.
    #[error("{0}")]
    NotAvailable(String),
}

/// One pod's metrics as last computed.
#[derive(Debug, Clone, PartialEq)]
pub struct PodMetric {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels (for selectors).
    pub labels: BTreeMap<String, String>,
    /// The container the pod's figures are reported under.
    pub container: String,
    /// The later sample's time (RFC 3339).
    pub timestamp: String,
    /// Seconds between the two samples.
    pub window: f64,
    /// CPU, cores.
    pub cpu: f64,
    /// Memory working set, bytes.
    pub memory: u64,
    /// Mean requests in flight over the window.
    pub inflight: f64,
}

/// One sample of one pod.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    cpu_ns: u64,
    inflight_seconds: f64,
}

/// The metrics of the pods from two consecutive samples (pure).
fn compute(
    prev: &HashMap<(String, String), Sample>,
    now: &[(PodSample, Sample)],
    timestamp: &str,
) -> Vec<PodMetric> {
    now.iter()
        .filter_map(|(p, s)| {
            let before = prev.get(&(p.namespace.clone(), p.name.clone()))?;
            let dt = s.at.saturating_duration_since(before.at).as_secs_f64();
            if dt <= 0.0 {
                return None;
            }
            Some(PodMetric {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                labels: p.labels.clone(),
                container: p.container.clone(),
                timestamp: timestamp.to_string(),
                window: dt,
                cpu: s.cpu_ns.saturating_sub(before.cpu_ns) as f64 / 1e9 / dt,
                memory: p.memory,
                inflight: ((s.inflight_seconds - before.inflight_seconds) / dt).max(0.0),
            })
        })
        .collect()
}

/// A Kubernetes label selector (equality- and set-based), parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Selector {
    /// Parses `a=b,c!=d,e in (x,y),f notin (z),g,!h`; `None` for malformed text.
    pub fn parse(text: &str) -> Option<Selector> {
        let mut reqs = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            // Split at the next comma outside parentheses.
            let mut depth = 0;
            let mut cut = rest.len();
            for (i, ch) in rest.char_indices() {
                match ch {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ',' if depth == 0 => {
                        cut = i;
                        break;
                    }
                    _ => {}
                }
            }
            let part = rest[..cut].trim();
            rest = rest.get(cut + 1..).unwrap_or("").trim();
            if part.is_empty() {
                continue;
            }
            let set = |s: &str| -> Option<Vec<String>> {
                let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
                Some(inner.split(',').map(|v| v.trim().to_string()).collect())
            };
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(v)?)
            } else if let Some((k, v)) = part.split_once(" in ") {
                Requirement::In(k.trim().into(), set(v)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            reqs.push(req);
        }
        Some(Selector(reqs))
    }

    /// Whether `labels` match.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            Requirement::Ne(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|x| vs.contains(x)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|x| !vs.contains(x)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn pod_metrics_json(m: &PodMetric) -> Value {
    json!({
        "metadata": {"name": m.name, "namespace": m.namespace, "labels": m.labels,
                     "creationTimestamp": m.timestamp},
        "timestamp": m.timestamp,
        "window": format!("{}s", m.window.round() as u64),
        "containers": [{
            "name": m.container,
            "usage": {
                "cpu": format!("{}n", (m.cpu * 1e9).round() as u64),
                "memory": format!("{}Ki", m.memory / 1024),
            },
        }],
    })
}

/// The answer to one request (pure, given the current metrics).
pub fn respond(method: &str, path: &str, query: &str, metrics: &[PodMetric]) -> (u16, Value) {
    if method != "GET" {
        return (405, status_json(405, "MethodNotAllowed", "only GET"));
    }
    let selector = match query_param(query, "labelSelector") {
        Some(s) => match Selector::parse(&s) {
            Some(sel) => sel,
            None => {
                return (
                    400,
                    status_json(400, "BadRequest", &format!("bad labelSelector {s:?}")),
                )
            }
        },
        None => Selector(Vec::new()),
    };
    // Segments percent-decoded: client-go escapes the `*` of "every object" as `%2A` (Go's
    // url.URL escapes it in a path), and that is how the HPA controller asks for a Pods metric.
    let decoded: Vec<String> = path
        .trim_end_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let parts: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match parts.as_slice() {
        ["apis", "metrics.k8s.io", "v1beta1"] => (
            200,
            json!({
                "kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": "metrics.k8s.io/v1beta1",
                "resources": [
                    {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
                    {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
                ],
            }),
        ),
        ["apis", "metrics.k8s.io", "v1beta1", "pods"] => (
            200,
            pod_list(metrics.iter().filter(|m| selector.matches(&m.labels))),
        ),
        ["apis", "metrics.k8s.io", "v1beta1", "namespaces", ns, "pods"] => (
            200,
            pod_list(
                metrics
                    .iter()
                    .filter(|m| m.namespace == *ns && selector.matches(&m.labels)),
            ),
        ),
        ["apis", "metrics.k8s.io", "v1beta1", "namespaces", ns, "pods", name] => {
            match metrics
                .iter()
                .find(|m| m.namespace == *ns && m.name == *name)
            {
                Some(m) => {
                    let mut v = pod_metrics_json(m);
                    v["kind"] = json!("PodMetrics");
                    v["apiVersion"] = json!("metrics.k8s.io/v1beta1");
                    (200, v)
                }
                None => (
                    404,
                    status_json(
                        404,
                        "NotFound",
                        &format!("podmetrics.metrics.k8s.io {name:?} not found"),
                    ),
                ),
            }
        }
        ["apis", "metrics.k8s.io", "v1beta1", "nodes"] => (
            200,
            json!({"kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": []}),
        ),
        ["apis", "custom.metrics.k8s.io", "v1beta2"] => (
            200,
            json!({
                "kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": "custom.metrics.k8s.io/v1beta2",
                "resources": [{"name": format!("pods/{REQUESTS_IN_FLIGHT}"), "singularName": "",
                               "namespaced": true, "kind": "MetricValueList", "verbs": ["get"]}],
            }),
        ),
        ["apis", "custom.metrics.k8s.io", "v1beta2", "namespaces", ns, "pods", name, metric] => {
            if *metric != REQUESTS_IN_FLIGHT {
                return (
                    404,
                    status_json(
                        404,
                        "NotFound",
                        &format!("the server could not find the metric {metric} for pods"),
                    ),
                );
            }
            let items: Vec<Value> = metrics
                .iter()
                .filter(|m| m.namespace == *ns && (*name == "*" || m.name == *name) && selector.matches(&m.labels))
                .map(|m| {
                    json!({
                        "describedObject": {"kind": "Pod", "namespace": m.namespace, "name": m.name, "apiVersion": "/v1"},
                        "metric": {"name": REQUESTS_IN_FLIGHT, "selector": null},
                        "timestamp": m.timestamp,
                        "windowSeconds": m.window.round() as u64,
                        "value": format!("{}m", (m.inflight * 1000.0).round() as u64),
                    })
                })
                .collect();
            (
                200,
                json!({"kind": "MetricValueList", "apiVersion": "custom.metrics.k8s.io/v1beta2", "metadata": {}, "items": items}),
            )
        }
        ["openapi", "v2"] => (
            200,
            json!({"swagger": "2.0", "info": {"title": "stand-in metrics", "version": "v1"}, "paths": {}}),
        ),
        ["openapi", "v3"] => (200, json!({"paths": {}})),
        ["healthz"] | ["readyz"] | ["livez"] => (200, json!("ok")),
        _ => (
            404,
            status_json(404, "NotFound", &format!("{path} not found")),
        ),
    }
}

fn pod_list<'a>(items: impl Iterator<Item = &'a PodMetric>) -> Value {
    json!({
        "kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {},
        "items": items.map(pod_metrics_json).collect::<Vec<_>>(),
    })
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// A running stand-in metrics-server.
pub struct MetricsServer {
    client: Client,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    metrics: Arc<Mutex<Vec<PodMetric>>>,
}

fn api_service_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService"),
        "apiservices",
    )
}

const API_SERVICES: [(&str, &str, &str, i32); 2] = [
    ("v1beta1.metrics.k8s.io", "metrics.k8s.io", "v1beta1", 100),
    (
        "v1beta2.custom.metrics.k8s.io",
        "custom.metrics.k8s.io",
        "v1beta2",
        200,
    ),
];

impl MetricsServer {
    /// Listens on `address` (the node's address on the pod network), registers the APIs and
    /// waits (up to a minute) until the API server reports them available.
    pub async fn start(
        client: Client,
        address: Ipv4Addr,
        sources: Sources,
        resolution: Duration,
    ) -> Result<MetricsServer, MetricsError> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((address, 0))).await?;
        let port = listener.local_addr()?.port();
        let tls = tls_config(address)?;
        let cancel = CancellationToken::new();
        let metrics = Arc::new(Mutex::new(Vec::new()));
        let tasks = vec![
            tokio::spawn(serve(listener, tls, metrics.clone(), cancel.clone())),
            tokio::spawn(sample(sources, metrics.clone(), resolution, cancel.clone())),
        ];
        let server = MetricsServer {
            client: client.clone(),
            cancel,
            tasks,
            metrics,
        };
        register(&client, address, port).await?;
        wait_available(&client).await?;
        Ok(server)
    }

    /// The metrics as last computed.
    pub fn metrics(&self) -> Vec<PodMetric> {
        self.metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Unregisters the APIs and stops serving.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        unregister(&self.client).await;
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn tls_config(address: Ipv4Addr) -> Result<Arc<rustls::ServerConfig>, MetricsError> {
    let key = rcgen::KeyPair::generate().map_err(|e| MetricsError::Cert(e.to_string()))?;
    let params = rcgen::CertificateParams::new(vec![
        format!("{SERVICE}.{NAMESPACE}.svc"),
        address.to_string(),
    ])
    .map_err(|e| MetricsError::Cert(e.to_string()))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| MetricsError::Cert(e.to_string()))?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    metrics: Arc<Mutex<Vec<PodMetric>>>,
    cancel: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let conn = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((c, _)) => c,
                Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
            },
        };
        let acceptor = acceptor.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(conn).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let m = metrics.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let (code, body) = respond(
                        req.method().as_str(),
                        req.uri().path(),
                        req.uri().query().unwrap_or(""),
                        &m,
                    );
                    let resp = Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.to_string())))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn sample(
    sources: Sources,
    metrics: Arc<Mutex<Vec<PodMetric>>>,
    resolution: Duration,
    cancel: CancellationToken,
) {
    let mut prev: HashMap<(String, String), Sample> = HashMap::new();
    let mut tick = tokio::time::interval(resolution);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let at = Instant::now();
        let inflight = (sources.inflight)();
        let now: Vec<(PodSample, Sample)> = (sources.pods)()
            .into_iter()
            .filter(|p| p.ip.is_some() && !p.terminating)
            .map(|p| {
                let f =
                    p.ip.and_then(|ip| inflight.get(&ip))
                        .copied()
                        .unwrap_or_default();
                let s = Sample {
                    at,
                    cpu_ns: p.cpu_ns,
                    inflight_seconds: f.seconds,
                };
                (p, s)
            })
            .collect();
        let timestamp = k8s_openapi::jiff::Timestamp::try_from(SystemTime::now())
            .map(|t| t.to_string())
            .unwrap_or_default();
        let computed = compute(&prev, &now, &timestamp);
        *metrics.lock().unwrap_or_else(|e| e.into_inner()) = computed;
        prev = now
            .into_iter()
            .map(|(p, s)| ((p.namespace, p.name), s))
            .collect();
    }
}

async fn register(client: &Client, address: Ipv4Addr, port: u16) -> Result<(), MetricsError> {
    let pp = PatchParams::apply(MANAGER).force();
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    services
        .patch(
            SERVICE,
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": SERVICE, "namespace": NAMESPACE},
                "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port, "protocol": "TCP"}]},
            })),
        )
        .await?;
    // A selector-less Service: its Endpoints are ours (mirrored to an EndpointSlice).
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), NAMESPACE);
    endpoints
        .patch(
            SERVICE,
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": SERVICE, "namespace": NAMESPACE},
                "subsets": [{"addresses": [{"ip": address.to_string()}],
                             "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
            })),
        )
        .await?;
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_service_resource());
    for (name, group, version, priority) in API_SERVICES {
        api.patch(
            name,
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": name},
                "spec": {
                    "service": {"namespace": NAMESPACE, "name": SERVICE, "port": 443},
                    "group": group, "version": version,
                    "insecureSkipTLSVerify": true,
                    "groupPriorityMinimum": 100, "versionPriority": priority,
                },
            })),
        )
        .await?;
    }
    Ok(())
}

async fn wait_available(client: &Client) -> Result<(), MetricsError> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_service_resource());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut all = true;
        for (name, ..) in API_SERVICES {
            let available = match api.get_opt(name).await {
                Ok(Some(o)) => {
                    let conds = o.data["status"]["conditions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let c = conds.iter().find(|c| c["type"] == "Available");
                    if let Some(c) = c {
                        last = format!("{name}: {} {}", c["reason"], c["message"]);
                    }
                    c.is_some_and(|c| c["status"] == "True")
                }
                _ => false,
            };
            all &= available;
        }
        if all {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(MetricsError::NotAvailable(format!(
        "the API server did not report the stand-in metrics APIs available within 60 s ({last})"
    )))
}

async fn unregister(client: &Client) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_service_resource());
    for (name, ..) in API_SERVICES {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let _ = services.delete(SERVICE, &DeleteParams::default()).await;
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), NAMESPACE);
    let _ = endpoints.delete(SERVICE, &DeleteParams::default()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_match_like_the_api_server() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app=api", false),
            ("app!=api", true),
            ("tier in (front, back)", true),
            ("tier notin (front)", false),
            ("app,!missing", true),
            ("missing", false),
            ("", true),
        ] {
            assert_eq!(
                Selector::parse(sel).expect("parses").matches(&l),
                want,
                "{sel}"
            );
        }
        assert_eq!(Selector::parse("x in (a"), None);
    }

    fn pod(name: &str, cpu_ns: u64) -> PodSample {
        PodSample {
            namespace: "ns".into(),
            name: name.into(),
            labels: labels(&[("app", "web")]),
            ip: Some(Ipv4Addr::new(198, 18, 0, 2)),
            ready: true,
            terminating: false,
            container: "app".into(),
            cpu_ns,
            memory: 100 << 20,
            processes: 3,
        }
    }

    #[test]
    fn rates_come_from_two_samples() {
        let t0 = Instant::now();
        let prev = HashMap::from([(
            ("ns".to_string(), "a".to_string()),
            Sample {
                at: t0,
                cpu_ns: 1_000_000_000,
                inflight_seconds: 10.0,
            },
        )]);
        let t1 = t0 + Duration::from_secs(15);
        let now = vec![
            (
                pod("a", 4_750_000_000),
                Sample {
                    at: t1,
                    cpu_ns: 4_750_000_000,
                    inflight_seconds: 40.0,
                },
            ),
            (
                pod("b", 9),
                Sample {
                    at: t1,
                    cpu_ns: 9,
                    inflight_seconds: 0.0,
                },
            ),
        ];
        let m = compute(&prev, &now, "T");
        assert_eq!(m.len(), 1, "a pod with one sample has no metrics yet");
        assert!((m[0].cpu - 0.25).abs() < 1e-9, "{}", m[0].cpu);
        assert!((m[0].inflight - 2.0).abs() < 1e-9);
        assert_eq!(m[0].window, 15.0);
    }

    #[test]
    fn answers_the_hpa_paths() {
        let m = vec![PodMetric {
            namespace: "ns".into(),
            name: "a".into(),
            labels: labels(&[("app", "web")]),
            container: "app".into(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            window: 15.0,
            cpu: 0.25,
            memory: 64 << 20,
            inflight: 1.5,
        }];
        let (code, v) = respond(
            "GET",
            "/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods",
            "labelSelector=app%3Dweb",
            &m,
        );
        assert_eq!(code, 200);
        assert_eq!(v["items"][0]["containers"][0]["usage"]["cpu"], "250000000n");
        assert_eq!(v["items"][0]["containers"][0]["usage"]["memory"], "65536Ki");
        assert_eq!(v["items"][0]["window"], "15s");
        let (_, v) = respond(
            "GET",
            "/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods",
            "labelSelector=app%3Dother",
            &m,
        );
        assert_eq!(v["items"].as_array().map(Vec::len), Some(0));
        let (code, v) = respond(
            "GET",
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ns/pods/*/requests_in_flight",
            "labelSelector=app%3Dweb",
            &m,
        );
        assert_eq!(code, 200);
        assert_eq!(v["items"][0]["value"], "1500m");
        assert_eq!(v["items"][0]["describedObject"]["name"], "a");
        // As the HPA controller asks (client-go escapes the `*`): the same answer.
        let (code, escaped) = respond(
            "GET",
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ns/pods/%2A/requests_in_flight",
            "labelSelector=app%3Dweb&metricLabelSelector=",
            &m,
        );
        assert_eq!(code, 200);
        assert_eq!(escaped, v);
        assert_eq!(
            respond(
                "GET",
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/ns/pods/*/other",
                "",
                &m
            )
            .0,
            404
        );
        assert_eq!(
            respond("POST", "/apis/metrics.k8s.io/v1beta1", "", &m).0,
            405
        );
        assert_eq!(
            respond(
                "GET",
                "/apis/metrics.k8s.io/v1beta1/namespaces/ns/pods",
                "labelSelector=x+in+(a",
                &m
            )
            .0,
            400
        );
    }
}
