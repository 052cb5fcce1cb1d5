//! The wsgiscale activator: the cluster-level data plane that is in an app's path only when it
//! is needed (the app is at zero pods, or short of spare capacity for a burst), as Knative's
//! activator is, and does better than a proxy kept in every path:
//!
//! - It knows which app a connection is for by the port it arrived on (one port per app,
//!   named in that app's EndpointSlice by the operator), never by anything the client sends,
//!   and forwards only to that app's pods: it is no open proxy.
//! - It holds each app's requests in one FIFO bounded in requests, body bytes and wait
//!   ([`queue`]; past a bound: 503 with `Retry-After`, counted and logged with the reason) and
//!   hands each to the ready pod with the most free slots ([`app`]), never more than a pod can
//!   run plus a backlog per slot in the pod's own queue (by default as many as cover the
//!   round trip through the activator, measured pod by pod, so that a worker never idles for
//!   it), so a burst is served first come first served by whichever pod frees first.
//! - It learns that a pod is ready as soon as its server is: it follows the pods'
//!   EndpointSlices and, while requests wait, probes not-yet-ready pods' `/readyz` every 5 ms.
//! - A request that could not be delivered (the connection refused) goes to another pod; one
//!   that may have reached the app is never sent twice (502).
//! - It tells the operator's autoscaler about held demand at once (a push to the operator's
//!   HTTP port), so the first request for an app at zero starts a pod without waiting for a
//!   tick.
//! - SIGTERM drains it: it stops accepting connections, delivers what it holds, and exits.
//!
//! The route table (which app on which port, where its pods are, its hold limits) is the
//! operator's, in a ConfigMap ([`wsgiscale_core::activator`]).

pub mod app;
pub mod metrics;
pub mod queue;

mod discovery;
mod proxy;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use wsgiscale_core::activator::{Demand, Route, DEMAND_PATH};
use wsgiscale_core::load::LoadReport;

use app::App;
use metrics::{AppLabels, Metrics};

/// How the activator runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The address every app port listens on (`0.0.0.0`).
    pub listen_ip: IpAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin_bind: SocketAddr,
    /// The namespace of the route table's ConfigMap.
    pub routes_namespace: String,
    /// Its name.
    pub routes_configmap: String,
    /// The operator's HTTP base URL, for demand reports (None: no pushes).
    pub operator_url: Option<String>,
    /// This replica's name (its pod name), in demand reports.
    pub pod_name: String,
    /// How long a drain may take after SIGTERM.
    pub drain_timeout: Duration,
    /// The namespaces whose EndpointSlices it watches (empty: all, cluster-wide).
    pub namespaces: Vec<String>,
    /// After SIGTERM, how long it still takes new connections (with `/readyz` failing) while
    /// the endpoints that lead to it catch up: a terminating pod leaves its Service's
    /// EndpointSlices at once, but the operator rewrites the apps' slices and every
    /// kube-proxy follows only after that, and a connection sent meanwhile must not be
    /// refused.
    pub drain_delay: Duration,
    /// Requests per worker slot of a pod that may wait in the pod's own queue beyond what it
    /// runs at once: a number (0: never more than it runs) or as many as cover the hop. See
    /// [`app::Pod::limit`].
    pub backlog_per_slot: app::Backlog,
    /// Open client connections, over every app, past which a new one is answered 503 and
    /// closed: each costs memory whether or not it sends a request.
    pub max_connections: u64,
}

/// An app's key: namespace and name.
pub type AppKey = (String, String);

type HttpBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// State shared by every task.
pub struct Inner {
    config: Config,
    apps: Mutex<HashMap<AppKey, Arc<Mutex<App>>>>,
    listeners: Mutex<HashMap<u16, (AppKey, CancellationToken)>>,
    metrics: Metrics,
    client: HttpClient<HttpConnector<PodResolver>, Full<Bytes>>,
    probe_client: HttpClient<HttpConnector, Empty<Bytes>>,
    next_id: AtomicU64,
    epoch: Instant,
    draining: AtomicBool,
    /// Connections being served, for the drain.
    connections: AtomicU64,
    /// The last demand push per app (ms).
    pushed: Mutex<HashMap<AppKey, u64>>,
    stop_listening: CancellationToken,
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn labels(key: &AppKey) -> AppLabels {
        AppLabels {
            namespace: key.0.clone(),
            app: key.1.clone(),
        }
    }

    fn app(&self, key: &AppKey) -> Option<Arc<Mutex<App>>> {
        self.apps.lock().get(key).cloned()
    }

    /// Dispatches what it can for `key` and records it.
    fn kick(&self, key: &AppKey, app: &Mutex<App>) {
        let now = self.now_ms();
        let dispatched = app.lock().dispatch(now);
        let labels = Self::labels(key);
        for d in dispatched {
            self.metrics.forwarded.get_or_create(&labels).inc();
            self.metrics
                .wait
                .get_or_create(&labels)
                .observe(now.saturating_sub(d.arrived) as f64 / 1000.0);
        }
    }

    /// Tells the operator what is held for `key`, at most every 500 ms unless `urgent`.
    fn push_demand(self: &Arc<Self>, key: &AppKey, app: &Mutex<App>, urgent: bool) {
        let Some(base) = self.config.operator_url.clone() else {
            return;
        };
        let now = self.now_ms();
        {
            let mut pushed = self.pushed.lock();
            let last = pushed.get(key).copied();
            if !urgent && last.is_some_and(|t| now.saturating_sub(t) < 500) {
                return;
            }
            pushed.insert(key.clone(), now);
        }
        let demand = {
            let a = app.lock();
            Demand {
                namespace: key.0.clone(),
                app: key.1.clone(),
                activator: self.config.pod_name.clone(),
                held: a.queue.len() as u32,
                in_flight: a.in_flight,
                oldest_wait_ms: a.queue.oldest_wait(now),
                time_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            }
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            let Ok(body) = serde_json::to_vec(&demand) else {
                return;
            };
            let uri = format!("{}{DEMAND_PATH}", base.trim_end_matches('/'));
            // A connection per push: the operator's Service spreads connections over its
            // replicas and only the leader takes reports (a standby answers 503), so the next
            // push, 500 ms later, must be free to reach another replica.
            let Ok(req) = http::Request::post(uri)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::CONNECTION, "close")
                .body(Full::new(Bytes::from(body)))
            else {
                return;
            };
            match tokio::time::timeout(Duration::from_secs(1), client.request(req)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "demand push failed"),
                Err(_) => tracing::debug!("demand push timed out"),
            }
        });
    }
}

/// Resolves a pod's host name ([`app::pod_host`]) to its address without a lookup, and any
/// other name through the system's resolver.
#[derive(Clone)]
struct PodResolver {
    system: GaiResolver,
}

type Resolved = std::vec::IntoIter<SocketAddr>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Name> for PodResolver {
    type Response = Resolved;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Resolved, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.system.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if let Some(ip) = app::parse_pod_host(name.as_str()) {
            // The connector puts the URI's port on it.
            return Box::pin(std::future::ready(Ok(
                vec![SocketAddr::new(ip, 0)].into_iter()
            )));
        }
        let lookup = self.system.call(name);
        Box::pin(async move {
            let addrs = lookup.await?;
            Ok(addrs.collect::<Vec<_>>().into_iter())
        })
    }
}

/// The activator.
pub struct Activator {
    inner: Arc<Inner>,
}

impl Activator {
    /// A new activator (nothing runs until [`Activator::run`]).
    pub fn new(config: Config) -> Activator {
        // Requests go to pods by a host name of the pod's address and instance
        // (app::pod_host), so no pooled connection passes from a pod to the next one at its
        // address; other names (the operator's) are looked up as usual.
        let mut connector = HttpConnector::new_with_resolver(PodResolver {
            system: GaiResolver::new(),
        });
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        let client = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        // A connection to a pod takes well under a millisecond; a SYN that was lost is sent
        // again by the kernel only a second later. A probe gives up on the connection sooner
        // and the next one, 5 ms later, tries a new one.
        let mut probe_connector = HttpConnector::new();
        probe_connector.set_nodelay(true);
        probe_connector.set_connect_timeout(Some(PROBE_CONNECT_TIMEOUT));
        let probe_client = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build(probe_connector);
        Activator {
            inner: Arc::new(Inner {
                config,
                apps: Mutex::new(HashMap::new()),
                listeners: Mutex::new(HashMap::new()),
                metrics: Metrics::new(),
                client,
                probe_client,
                next_id: AtomicU64::new(1),
                epoch: Instant::now(),
                draining: AtomicBool::new(false),
                connections: AtomicU64::new(0),
                pushed: Mutex::new(HashMap::new()),
                stop_listening: CancellationToken::new(),
            }),
        }
    }

    /// Runs until `shutdown` is cancelled (SIGTERM), then drains: stops accepting, delivers
    /// what it holds and what is in flight, and returns (at the latest after the drain
    /// timeout).
    pub async fn run(
        &self,
        client: kube::Client,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let inner = self.inner.clone();
        let admin = tokio::net::TcpListener::bind(inner.config.admin_bind).await?;
        tracing::info!(
            addr = %inner.config.admin_bind,
            backlog_per_slot = %inner.config.backlog_per_slot,
            max_connections = inner.config.max_connections,
            "serving /healthz, /readyz and /metrics"
        );
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(proxy::serve_admin(inner.clone(), admin, admin_stop.clone()));
        let discovery_stop = CancellationToken::new();
        let discovery_task = tokio::spawn(discovery::run(
            inner.clone(),
            client,
            discovery_stop.clone(),
        ));
        let upkeep_task = tokio::spawn(upkeep(inner.clone(), discovery_stop.clone()));

        shutdown.cancelled().await;
        let deadline = Instant::now() + inner.config.drain_timeout;
        tracing::info!(
            delay_seconds = inner.config.drain_delay.as_secs_f64(),
            "SIGTERM: unready, taking connections until the endpoints follow, then draining"
        );
        inner.draining.store(true, Ordering::SeqCst);
        tokio::time::sleep(inner.config.drain_delay.min(inner.config.drain_timeout / 2)).await;
        tracing::info!("draining: no new connections");
        inner.stop_listening.cancel();
        loop {
            let (held, in_flight) = inner.apps.lock().values().fold((0, 0), |(h, f), a| {
                let a = a.lock();
                (h + a.queue.len(), f + a.in_flight)
            });
            let conns = inner.connections.load(Ordering::SeqCst);
            if held == 0 && in_flight == 0 && conns == 0 {
                tracing::info!("drained");
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    held,
                    in_flight,
                    connections = conns,
                    "drain timeout: exiting with work left"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        discovery_stop.cancel();
        admin_stop.cancel();
        let _ = tokio::join!(admin_task, discovery_task, upkeep_task);
        Ok(())
    }

    /// The metrics text (for tests).
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.encode()
    }
}

/// Applies a new route table: new apps get a listener, changed ones new limits, removed ones
/// stop (their held requests are answered 503).
fn apply_routes(inner: &Arc<Inner>, routes: Vec<Route>) {
    let wanted: HashMap<AppKey, Route> = routes
        .into_iter()
        .map(|r| ((r.namespace.clone(), r.app.clone()), r))
        .collect();
    let mut apps = inner.apps.lock();
    let mut listeners = inner.listeners.lock();
    // Removed apps, and apps whose port changed.
    let gone: Vec<AppKey> = apps
        .iter()
        .filter(|(k, a)| wanted.get(*k).is_none_or(|r| r.port != a.lock().route.port))
        .map(|(k, _)| k.clone())
        .collect();
    for k in gone {
        if let Some(a) = apps.remove(&k) {
            let mut a = a.lock();
            listeners.retain(|port, (key, stop)| {
                let keep = *port != a.route.port || key != &k;
                if !keep {
                    stop.cancel();
                }
                keep
            });
            a.close();
            tracing::info!(namespace = %k.0, app = %k.1, "route removed");
        }
    }
    for (k, r) in wanted {
        match apps.get(&k) {
            Some(a) => {
                let mut a = a.lock();
                a.queue.set_limits(r.hold);
                a.route = r;
            }
            None => {
                if inner.draining.load(Ordering::SeqCst) {
                    continue;
                }
                let port = r.port;
                let app = Arc::new(Mutex::new(App::new(r, inner.config.backlog_per_slot)));
                apps.insert(k.clone(), app);
                let stop = inner.stop_listening.child_token();
                listeners.insert(port, (k.clone(), stop.clone()));
                tokio::spawn(proxy::listen(inner.clone(), k.clone(), port, stop));
                tracing::info!(namespace = %k.0, app = %k.1, port, "route added");
            }
        }
    }
}

/// Every 25 ms: deadlines, dispatch, the start of readiness probes of pods while requests wait,
/// demand pushes while requests wait, gauges; every second, the `/load` of pods of active apps.
async fn upkeep(inner: Arc<Inner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let now = inner.now_ms();
        let apps: Vec<(AppKey, Arc<Mutex<App>>)> = inner
            .apps
            .lock()
            .iter()
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        for (key, app) in apps {
            let labels = Inner::labels(&key);
            let (expired, scrape, held, bytes, waiting, backlog) = {
                let mut a = app.lock();
                let rule = a.backlog;
                let backlog = a
                    .pods
                    .values()
                    .filter(|p| p.usable(now))
                    .map(|p| p.backlog(rule))
                    .max()
                    .unwrap_or(0);
                let expired = a.expire(now);
                let waiting = !a.queue.is_empty();
                let admin = a.route.admin_port;
                let active = now.saturating_sub(a.last_request) < 60_000 || a.in_flight > 0;
                let scrape: Vec<SocketAddr> = if n.is_multiple_of(40) && active {
                    a.pods
                        .iter()
                        .filter(|(_, p)| p.ready || p.probed_ready)
                        .map(|(ip, _)| SocketAddr::new(*ip, admin))
                        .collect()
                } else {
                    Vec::new()
                };
                (
                    expired,
                    scrape,
                    a.queue.len(),
                    a.queue.bytes(),
                    waiting,
                    backlog,
                )
            };
            if !expired.is_empty() {
                inner
                    .metrics
                    .timed_out
                    .get_or_create(&labels)
                    .inc_by(expired.len() as u64);
            }
            inner.metrics.held.get_or_create(&labels).set(held as i64);
            inner
                .metrics
                .held_bytes
                .get_or_create(&labels)
                .set(bytes as i64);
            inner
                .metrics
                .backlog_per_slot
                .get_or_create(&labels)
                .set(i64::from(backlog));
            inner.kick(&key, &app);
            if waiting {
                inner.push_demand(&key, &app, false);
            }
            start_probes(&inner, &key, &app);
            for addr in scrape {
                tokio::spawn(scrape_load(inner.clone(), app.clone(), addr));
            }
        }
    }
}

async fn get(
    inner: &Inner,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Option<(u16, Bytes)> {
    let req = http::Request::get(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .ok()?;
    let resp = tokio::time::timeout(timeout, inner.probe_client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(timeout, resp.into_body().collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    Some((status, body))
}

/// How often a pod that is not ready yet is probed while requests wait for it: the wait
/// between the server's readiness and the activator's knowing it is at most this (a refused
/// connection or a 503 comes back in well under a millisecond on a pod's network).
const PROBE_INTERVAL: Duration = Duration::from_millis(5);

/// How long a probe or a `/load` request waits for its connection to a pod.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);

/// Starts a `/readyz` probe of each pod that requests wait for (see [`App::start_probes`]).
fn start_probes(inner: &Arc<Inner>, key: &AppKey, app: &Arc<Mutex<App>>) {
    let (ips, admin) = {
        let mut a = app.lock();
        (a.start_probes(), a.route.admin_port)
    };
    for ip in ips {
        tokio::spawn(probe_until_ready(
            inner.clone(),
            key.clone(),
            app.clone(),
            SocketAddr::new(ip, admin),
        ));
    }
}

/// A not-yet-ready pod's `/readyz`, every [`PROBE_INTERVAL`] while requests wait for it: 200
/// makes it ready for the activator at once, ahead of its EndpointSlice.
async fn probe_until_ready(
    inner: Arc<Inner>,
    key: AppKey,
    app: Arc<Mutex<App>>,
    admin: SocketAddr,
) {
    loop {
        let ok = matches!(
            get(&inner, admin, "/readyz", Duration::from_millis(300)).await,
            Some((200, _))
        );
        if ok {
            app.lock().probed_ready(admin.ip());
            tracing::debug!(namespace = %key.0, app = %key.1, pod = %admin.ip(), "pod ready by its /readyz");
            inner.kick(&key, &app);
            return;
        }
        if !app.lock().keep_probing(admin.ip()) {
            return;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// A pod's `/load`, for its capacity, its service time and whether it drains; the request's
/// round trip is the pod's hop (see [`app::covering_backlog`]).
async fn scrape_load(inner: Arc<Inner>, app: Arc<Mutex<App>>, admin: SocketAddr) {
    let sent = Instant::now();
    if let Some((200, body)) = get(&inner, admin, "/load", Duration::from_millis(500)).await {
        let rtt_ms = sent.elapsed().as_secs_f64() * 1000.0;
        if let Ok(load) = serde_json::from_slice::<LoadReport>(&body) {
            if let Some(p) = app.lock().pods.get_mut(&admin.ip()) {
                p.load = Some(load);
                p.observe_hop(rtt_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tower_service::Service;

    use super::*;

    async fn resolve(name: &str) -> Vec<SocketAddr> {
        let mut r = PodResolver {
            system: GaiResolver::new(),
        };
        let name: Name = name.parse().expect("a name");
        std::future::poll_fn(|cx| r.poll_ready(cx))
            .await
            .expect("ready");
        r.call(name).await.expect("resolved").collect()
    }

    #[tokio::test]
    async fn pod_names_resolve_to_their_address_and_other_names_through_the_system() {
        let target = app::PodTarget {
            addr: "198.18.3.7:8000".parse().expect("addr"),
            instance: 9,
        };
        assert_eq!(
            resolve(&app::pod_host(&target)).await,
            vec!["198.18.3.7:0".parse::<SocketAddr>().expect("addr")]
        );
        // The operator's Service name in a cluster; here the machine's own name for itself.
        assert!(resolve("localhost")
            .await
            .iter()
            .any(|a| a.ip().is_loopback()));
    }
}
