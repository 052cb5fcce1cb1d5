//! The operator's small HTTP server: `/healthz` (liveness), `/readyz` (readiness) and
//! `/metrics` (Prometheus).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use http_body_util::{BodyExt, Full, Limited};
use wsgiscale_core::activator::{Demand, DEMAND_PATH};

use crate::dependency::{log_change, Dependency};
use crate::metrics::Metrics;
use crate::routing::{DemandBoard, Routing};

/// What the probes report: the operator is ready once it has started (connected, CRD found)
/// and while every source it depends on can reach the API server: each watch of each
/// controller, and the leader lease's renewals. A source that fails (a watch cut by an API
/// server outage) makes it unready until that source succeeds again (the watch is back). Each
/// source is a [`Dependency`]: its failures are logged once per change of state, with a count.
#[derive(Debug, Default)]
pub struct Health {
    started: AtomicBool,
    sources: Mutex<BTreeMap<String, Dependency>>,
}

/// Whether the operator is ready, and why not: the failing sources, `name: error` each.
/// Pure, for the table test.
pub fn compute_readiness<'a, E: std::fmt::Display + ?Sized + 'a>(
    started: bool,
    sources: impl IntoIterator<Item = (&'a String, Option<&'a E>)>,
) -> Result<(), Vec<String>> {
    let failing: Vec<String> = sources
        .into_iter()
        .filter_map(|(name, err)| err.map(|e| format!("{name}: {e}")))
        .collect();
    match (started, failing.is_empty()) {
        (true, true) => Ok(()),
        (false, _) => Err(vec!["starting".into()]),
        (true, false) => Err(failing),
    }
}

impl Health {
    /// Marks the operator started (connected to the API server, CRD found) or not (shutting
    /// down).
    pub fn set_ready(&self, ready: bool) {
        self.started.store(ready, Ordering::SeqCst);
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Dependency>> {
        // A poisoned lock only means a reporter panicked; the records are still usable.
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `source` as not ready yet (a watch before its first list), without a log line.
    pub fn expect(&self, source: &str) {
        self.sources()
            .insert(source.to_string(), Dependency::new(source));
    }

    /// Records how `source` (a watch, the lease, the API probe) last fared: `None` for a
    /// success, or the error. Logs only a change of state. A new source counts from its first
    /// report.
    pub fn report(&self, source: &str, error: Option<String>) {
        let mut sources = self.sources();
        let dep = sources
            .entry(source.to_string())
            .or_insert_with(|| Dependency::new(source));
        let change = dep.record(error, Instant::now());
        drop(sources);
        if let Some(change) = change {
            log_change(source, &change);
        }
    }

    /// After a successful call to the API server: counts as recovered every source whose last
    /// failure is older than `quiet`. A watch retries within its backoff's cap, so one whose
    /// last error is older than that while the API server answers has resumed, even if no
    /// object changed since.
    pub fn settle(&self, quiet: std::time::Duration, now: Instant) {
        let mut changes = Vec::new();
        for (name, dep) in self.sources().iter_mut() {
            let resumed = dep
                .last_failure()
                .is_some_and(|at| now.saturating_duration_since(at) >= quiet);
            if resumed {
                if let Some(change) = dep.record(None, now) {
                    changes.push((name.clone(), change));
                }
            }
        }
        for (name, change) in changes {
            log_change(&name, &change);
        }
    }

    /// Forgets `source` (its controller stopped).
    pub fn forget(&self, source: &str) {
        self.sources().remove(source);
    }

    /// Whether the operator is ready, and if not the reasons.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let sources = self.sources();
        compute_readiness(
            self.started.load(Ordering::SeqCst),
            sources.iter().map(|(name, dep)| (name, dep.error())),
        )
    }

    /// Whether the operator is ready.
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }
}

/// The content type of the OpenMetrics text format that prometheus-client writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn text(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

/// Answers one request (pure over the shared state, so it is tested without a socket).
pub fn route(
    method: &Method,
    path: &str,
    health: &Health,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n",
        );
    }
    match path {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" => match health.readiness() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("not ready: {}\n", why.join("; ")),
            ),
        },
        "/metrics" => text(StatusCode::OK, OPENMETRICS, metrics.encode()),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n"),
    }
}

/// Largest demand report read, bytes.
const MAX_DEMAND_BYTES: usize = 64 << 10;

/// What `POST /v1/demand` answers (pure over the board, for the table test): 202 once
/// filed, 400 for a report that does not parse, 403 from a peer that is neither loopback
/// nor a ready activator, 404 when the operator runs without an activator, 405 for another
/// method, 503 on a standby replica (the activator pushes again within 500 ms).
pub fn take_demand(
    method: &Method,
    body: Result<&[u8], String>,
    peer_allowed: bool,
    board: Option<&DemandBoard>,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let Some(board) = board else {
        return text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "no activator: the operator runs without --activator-service\n",
        );
    };
    if method != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "POST a demand report\n",
        );
    }
    if !peer_allowed {
        return text(
            StatusCode::FORBIDDEN,
            PLAIN,
            "demand is taken only from the ready activators\n",
        );
    }
    let demand = match body.and_then(|b| {
        serde_json::from_slice::<Demand>(b).map_err(|e| format!("not a demand report: {e}"))
    }) {
        Ok(d) => d,
        Err(why) => return text(StatusCode::BAD_REQUEST, PLAIN, format!("{why}\n")),
    };
    if board.record(demand, Instant::now()) {
        text(StatusCode::ACCEPTED, PLAIN, "accepted\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "not the leader: this replica stands by\n",
        )
    }
}

/// Serves on `listener` until `shutdown`, then lets open connections finish. With `routing`,
/// also takes the activators' demand reports.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    routing: Option<Arc<Routing>>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /healthz, /readyz and /metrics");
    }
    let serve = |(stream, peer): (tokio::net::TcpStream, SocketAddr)| {
        let (health, metrics, routing) = (health.clone(), metrics.clone(), routing.clone());
        let service = service_fn(move |req: Request<Incoming>| {
            let (health, metrics, routing) = (health.clone(), metrics.clone(), routing.clone());
            async move {
                if req.uri().path() != DEMAND_PATH {
                    let resp = route(req.method(), req.uri().path(), &health, &metrics);
                    return Ok::<_, std::convert::Infallible>(resp);
                }
                let method = req.method().clone();
                let body = Limited::new(req.into_body(), MAX_DEMAND_BYTES)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .map_err(|e| format!("cannot read the report: {e}"));
                let allowed = peer.ip().is_loopback()
                    || routing
                        .as_ref()
                        .is_some_and(|r| r.activators().contains(&peer.ip().to_string()));
                Ok(take_demand(
                    &method,
                    body.as_deref().map_err(Clone::clone),
                    allowed,
                    routing.as_ref().map(|r| r.demand.as_ref()),
                ))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(10))
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    };
    wsgiscale_net::accept_loop("operator", &shutdown, || listener.accept(), serve).await;
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
    }
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn routes() {
        let health = Health::default();
        let metrics = Metrics::default();
        let get = |p: &str| route(&Method::GET, p, &health, &metrics).status();
        assert_eq!(get("/healthz"), StatusCode::OK);
        assert_eq!(get("/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        health.set_ready(true);
        assert_eq!(get("/readyz"), StatusCode::OK);
        // A watch cut off from the API server makes it unready until the watch is back.
        health.report("watch WsgiApp", Some("connection refused".into()));
        assert_eq!(get("/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        health.report("watch WsgiApp", None);
        assert_eq!(get("/readyz"), StatusCode::OK);
        // A watch that resumed silently: cleared once the API answers and it stayed quiet.
        health.report("watch WsgiApp", Some("connection refused".into()));
        let later = Instant::now() + std::time::Duration::from_secs(31);
        health.settle(std::time::Duration::from_secs(60), later);
        assert_eq!(get("/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        health.settle(std::time::Duration::from_secs(30), later);
        assert_eq!(get("/readyz"), StatusCode::OK);
        assert_eq!(get("/metrics"), StatusCode::OK);
        assert_eq!(get("/nope"), StatusCode::NOT_FOUND);
        assert_eq!(
            route(&Method::POST, "/healthz", &health, &metrics).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn demand_reports_are_taken_from_activators_on_the_leader_only() {
        let board = DemandBoard::default();
        let report = br#"{"namespace":"ns","app":"web","activator":"a-1","held":2,"inFlight":0,"oldestWaitMs":10,"timeUnixMs":1}"#;
        let post = |body: Result<&[u8], String>, allowed, board| {
            take_demand(&Method::POST, body, allowed, board).status()
        };
        assert_eq!(post(Ok(report), true, None), StatusCode::NOT_FOUND);
        assert_eq!(
            post(Ok(report), true, Some(&board)),
            StatusCode::SERVICE_UNAVAILABLE
        );
        board.set_accepting(true);
        assert_eq!(post(Ok(report), false, Some(&board)), StatusCode::FORBIDDEN);
        assert_eq!(post(Ok(b"{"), true, Some(&board)), StatusCode::BAD_REQUEST);
        assert_eq!(
            post(Err("length limit exceeded".into()), true, Some(&board)),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            take_demand(&Method::GET, Ok(report), true, Some(&board)).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(post(Ok(report), true, Some(&board)), StatusCode::ACCEPTED);
        let key = ("ns".to_string(), "web".to_string());
        assert_eq!(board.of(&key, Instant::now()).held, 2);
    }

    #[test]
    fn readiness_needs_a_start_and_every_source_healthy() {
        let s = |v: &[(&str, Option<&'static str>)]| -> BTreeMap<String, Option<&'static str>> {
            v.iter().map(|(k, e)| (k.to_string(), *e)).collect()
        };
        let cases = [
            (false, s(&[]), Err(vec!["starting".to_string()])),
            (true, s(&[]), Ok(())),
            (true, s(&[("lease", None), ("watch a", None)]), Ok(())),
            (
                true,
                s(&[("lease", None), ("watch a", Some("refused"))]),
                Err(vec!["watch a: refused".to_string()]),
            ),
            (
                false,
                s(&[("watch a", Some("refused"))]),
                Err(vec!["starting".to_string()]),
            ),
        ];
        for (started, sources, want) in cases {
            let got = compute_readiness(started, sources.iter().map(|(k, e)| (k, e.as_ref())));
            assert_eq!(got, want, "{sources:?}");
        }
    }

    #[tokio::test]
    async fn serves_metrics_over_tcp_and_stops_on_shutdown() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::default());
        metrics.count_write("Deployment");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, health, metrics, None, shutdown.clone()));

        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::get("/metrics")
            .header("host", "localhost")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let body = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(
            body.contains("wsgiscale_operator_writes_total{kind=\"Deployment\"} 1"),
            "{body}"
        );
        drop(sender);

        shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("the server stops after shutdown")
            .expect("no panic");
    }
}
