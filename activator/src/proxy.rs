//! The HTTP side: one listener per app port (the one accept loop of `wsgiscale-net`), the
//! request path (hold, wait for a pod, forward, retry what was never delivered), and the admin
//! port.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::app::{pod_host, App, Assignment};
use crate::metrics::RejectLabels;
use crate::queue::Reject;
use crate::{AppKey, HttpBody, Inner};

/// Hop-by-hop headers (RFC 9110 7.6.1), not forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// The answer to a connection past `--max-connections`.
const OVER_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 43\r\n\r\nthe activator has too many connections now\n";

/// How long a pod that refused a connection gets no request.
const REFUSED_PAUSE_MS: u64 = 1000;

fn full(status: StatusCode, body: &'static str) -> Response<HttpBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A 503 the client may retry after a second.
fn unavailable(body: &'static str) -> Response<HttpBody> {
    let mut r = full(StatusCode::SERVICE_UNAVAILABLE, body);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The longest pause between two attempts to listen on an app's port.
const BIND_RETRY_MAX: Duration = Duration::from_secs(1);

/// Serves app `key` on `port` until `stop`. The port may still be held for a moment by the
/// listener of an app that left it in the same route table change (the operator gives a
/// freed port to the next new app), so a port that cannot be bound yet is tried again, 10 ms
/// later and then less often, until it binds or the route goes.
pub async fn listen(inner: Arc<Inner>, key: AppKey, port: u16, stop: CancellationToken) {
    let addr = SocketAddr::new(inner.config.listen_ip, port);
    let mut pause = Duration::from_millis(10);
    let mut failed = false;
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                if !failed {
                    tracing::warn!(namespace = %key.0, app = %key.1, port, error = %e, "cannot listen yet: trying again");
                    failed = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(BIND_RETRY_MAX);
            }
        }
    };
    if failed {
        tracing::info!(namespace = %key.0, app = %key.1, port, "listening");
    }
    wsgiscale_net::accept_loop(
        "activator",
        &stop,
        || listener.accept(),
        |(stream, peer): (tokio::net::TcpStream, SocketAddr)| {
            if inner.connections.load(Ordering::SeqCst) >= inner.config.max_connections {
                // Every connection costs memory whether or not it sends a request: past the
                // bound, a short 503 (written only if the socket takes it at once) and close.
                let _ = stream.try_write(OVER_CONNECTIONS);
                reject(&inner, &key, "max_connections");
                return;
            }
            let (inner, key) = (inner.clone(), key.clone());
            tokio::spawn(serve_connection(inner, key, stream, peer));
        },
    )
    .await;
}

async fn serve_connection(
    inner: Arc<Inner>,
    key: AppKey,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    inner.connections.fetch_add(1, Ordering::SeqCst);
    let service = {
        let inner = inner.clone();
        hyper::service::service_fn(move |req| {
            let (inner, key) = (inner.clone(), key.clone());
            async move { Ok::<_, Infallible>(handle(inner, key, peer.ip(), req).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let stop = inner.stop_listening.clone();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            // Draining: finish the request in progress, then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    inner.connections.fetch_sub(1, Ordering::SeqCst);
}

/// A held request's wait for a pod. If the client goes away first (hyper drops the request's
/// future), the request leaves the queue, and an assignment that was already made gives its
/// pod's slot back: the pod never got it.
struct Waiting {
    inner: Arc<Inner>,
    key: AppKey,
    app: Arc<Mutex<App>>,
    id: u64,
    rx: Option<oneshot::Receiver<Assignment>>,
}

impl Waiting {
    /// The request's assignment.
    async fn assignment(&mut self) -> Result<Assignment, oneshot::error::RecvError> {
        let got = self.rx.as_mut().expect("waiting for an assignment").await;
        self.rx = None;
        got
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let freed = {
            let mut a = self.app.lock();
            a.abandon(self.id);
            match rx.try_recv() {
                Ok(Assignment::Pod(target)) => {
                    a.finished(target.addr.ip());
                    true
                }
                _ => false,
            }
        };
        if freed {
            self.inner.kick(&self.key, &self.app);
        }
    }
}

/// What ends a forwarded request's slot: the activator, the app and the pod.
type Slot = (Arc<Inner>, AppKey, Arc<Mutex<App>>, IpAddr);

/// A forwarded request's slot at its pod, given back exactly once: when its response's body
/// ends, or when it is dropped (the client went away while the request was at the pod, or
/// the response failed), so a pod's free slots never leak.
struct SlotGuard(Option<Slot>);

impl SlotGuard {
    /// Gives the slot back and dispatches what waits.
    fn release(&mut self) {
        if let Some((inner, key, app, pod)) = self.0.take() {
            app.lock().finished(pod);
            inner.kick(&key, &app);
        }
    }

    /// Hands the slot to the caller, which ends it itself.
    fn take(&mut self) -> Option<Slot> {
        self.0.take()
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.release();
    }
}

/// The response's body, ending its slot when it ends (or is dropped).
struct Tracked {
    body: HttpBody,
    slot: SlotGuard,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.slot.release();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Body bytes reserved against an app's byte bound while they arrive; given back when
/// dropped unless disarmed (the bytes became held).
struct Reservation {
    app: Arc<Mutex<App>>,
    bytes: u64,
}

impl Reservation {
    /// The bytes reserved; the caller now accounts for them.
    fn disarm(&mut self) -> u64 {
        std::mem::take(&mut self.bytes)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.app.lock().queue.unreserve(self.bytes);
        }
    }
}

/// Why a request body was not received.
enum BodyError {
    /// It would pass the app's byte bound, with what is held and arriving.
    OverBound,
    /// The client's body failed (reset, malformed chunking).
    Read,
}

/// Receives a whole request body, reserving each chunk against the app's byte bound first (a
/// declared length that cannot fit is refused before a byte is read).
async fn receive(
    app: &Arc<Mutex<App>>,
    mut body: Incoming,
) -> Result<(Bytes, Reservation), BodyError> {
    let mut reservation = Reservation {
        app: app.clone(),
        bytes: 0,
    };
    // (No body, the common case: nothing to check, no lock taken.)
    if let Some(declared) = body.size_hint().exact().filter(|&n| n > 0) {
        if declared > app.lock().route.hold.max_bytes {
            return Err(BodyError::OverBound);
        }
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Read)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: not forwarded
        };
        let n = data.len() as u64;
        app.lock()
            .queue
            .reserve(n)
            .map_err(|_| BodyError::OverBound)?;
        reservation.bytes += n;
        chunks.push(data);
    }
    let body = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => {
            let mut all = bytes::BytesMut::with_capacity(reservation.bytes as usize);
            for c in chunks {
                all.extend_from_slice(&c);
            }
            all.freeze()
        }
    };
    Ok((body, reservation))
}

fn reject(inner: &Inner, key: &AppKey, reason: &'static str) {
    inner
        .metrics
        .rejected
        .get_or_create(&RejectLabels {
            namespace: key.0.clone(),
            app: key.1.clone(),
            reason,
        })
        .inc();
    tracing::info!(namespace = %key.0, app = %key.1, reason, "request refused: 503");
}

async fn handle(
    inner: Arc<Inner>,
    key: AppKey,
    peer: IpAddr,
    req: Request<Incoming>,
) -> Response<HttpBody> {
    let Some(app) = inner.app(&key) else {
        reject(&inner, &key, "no_route");
        return full(StatusCode::NOT_FOUND, "no such app on this port\n");
    };
    if let Err(why) = app.lock().queue.has_room() {
        reject(&inner, &key, why.as_str());
        return unavailable("this app holds as many requests as it may; retry\n");
    }
    let (parts, body) = req.into_parts();
    // The whole body first, each chunk reserved against the app's byte bound before it is
    // kept: a request is held, or forwarded, complete, and what is buffered for an app stays
    // within its bound however many clients send at once.
    let (body, mut reservation) = match receive(&app, body).await {
        Ok(got) => got,
        Err(BodyError::OverBound) => {
            reject(&inner, &key, Reject::Bytes.as_str());
            return unavailable("the request body is larger than this app may hold now; retry\n");
        }
        Err(BodyError::Read) => {
            return full(
                StatusCode::BAD_REQUEST,
                "the request body could not be read\n",
            )
        }
    };
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let bytes = body.len() as u64;
    let arrived = inner.now_ms();
    let (mut rx, was_idle) = {
        let mut a = app.lock();
        // The reservation becomes held bytes (or goes, if the request is refused).
        a.queue.unreserve(reservation.disarm());
        let was_idle = a.queue.is_empty() && a.in_flight == 0;
        match a.hold(id, bytes, arrived) {
            Ok(rx) => (rx, was_idle),
            Err(why) => {
                drop(a);
                reject(&inner, &key, why.as_str());
                return unavailable("this app holds as many requests as it may; retry\n");
            }
        }
    };
    inner.kick(&key, &app);
    // Still held after the dispatch (no pod had a free slot) where nothing waited or ran
    // before: the first request for an app at zero pods, which the operator hears of at once.
    // A request a ready pod took is no news: the report (of what is in flight) waits its turn.
    let held_now = !app.lock().queue.is_empty();
    inner.push_demand(&key, &app, was_idle && held_now);
    let labels = Inner::labels(&key);
    loop {
        let mut waiting = Waiting {
            inner: inner.clone(),
            key: key.clone(),
            app: app.clone(),
            id,
            rx: Some(rx),
        };
        let target = match waiting.assignment().await {
            Ok(Assignment::Pod(target)) => target,
            Ok(Assignment::Expired) => {
                reject(&inner, &key, "deadline");
                return unavailable("no pod of this app was ready in time; retry\n");
            }
            Ok(Assignment::Gone) | Err(_) => {
                reject(&inner, &key, "no_route");
                return unavailable("this app is no longer served here\n");
            }
        };
        // From here the pod's slot is this request's until the guard gives it back.
        let pod = target.addr.ip();
        let mut slot = SlotGuard(Some((inner.clone(), key.clone(), app.clone(), pod)));
        let mut fwd = Request::builder()
            .method(parts.method.clone())
            .uri(format!(
                "http://{}:{}{}",
                pod_host(&target),
                target.addr.port(),
                parts.uri.path_and_query().map_or("/", |p| p.as_str())
            ))
            .version(http::Version::HTTP_11);
        for (name, value) in &parts.headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                fwd = fwd.header(name, value);
            }
        }
        // The client's Host, or the pod's address (never the pool's host name for it).
        if !parts.headers.contains_key(header::HOST) {
            fwd = fwd.header(header::HOST, target.addr.to_string());
        }
        // The client's address for the app, after any the client sent.
        let xff = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {peer}"),
            None => peer.to_string(),
        };
        fwd = fwd.header("x-forwarded-for", xff);
        let Ok(fwd) = fwd.body(Full::new(body.clone())) else {
            return full(
                StatusCode::BAD_REQUEST,
                "the request could not be forwarded\n",
            );
        };
        match inner.client.request(fwd).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                let tracked = Tracked {
                    body: body.map_err(Into::into).boxed(),
                    slot,
                };
                return Response::from_parts(parts, tracked.boxed());
            }
            Err(e) if e.is_connect() => {
                // Never delivered: back to the head of the queue, for another pod.
                let _ = slot.take();
                let now = inner.now_ms();
                {
                    let mut a = app.lock();
                    a.finished(pod);
                    a.unreachable(pod, now, REFUSED_PAUSE_MS);
                    rx = a.hold_again(id, bytes, arrived);
                }
                inner.metrics.retried.get_or_create(&labels).inc();
                tracing::info!(namespace = %key.0, app = %key.1, pod = %pod, error = %e, "pod refused the connection: the request goes to another");
                inner.kick(&key, &app);
            }
            Err(e) => {
                slot.release();
                inner.metrics.failed.get_or_create(&labels).inc();
                tracing::warn!(namespace = %key.0, app = %key.1, pod = %pod, error = %e, "the pod failed after the request may have reached it: 502, not retried");
                return full(
                    StatusCode::BAD_GATEWAY,
                    "the app's pod failed while answering\n",
                );
            }
        }
    }
}

/// `/healthz` (alive), `/readyz` (503 while draining), `/metrics`; anything else 404.
pub async fn serve_admin(
    inner: Arc<Inner>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) {
    wsgiscale_net::accept_loop("admin", &stop, || listener.accept(), |(stream, _)| {
        let inner = inner.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let inner = inner.clone();
                async move {
                    let r = match req.uri().path() {
                        "/healthz" => full(StatusCode::OK, "ok\n"),
                        "/readyz" if inner.draining.load(Ordering::SeqCst) => full(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
                        "/readyz" => full(StatusCode::OK, "ok\n"),
                        "/metrics" => {
                            let mut r = Response::new(Full::new(Bytes::from(inner.metrics.encode())).map_err(|never: Infallible| match never {}).boxed());
                            r.headers_mut().insert(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                            );
                            r
                        }
                        _ => full(StatusCode::NOT_FOUND, "not found\n"),
                    };
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_apps_port_still_held_is_listened_on_once_it_is_free() {
        let activator = crate::Activator::new(crate::Config {
            listen_ip: "127.0.0.1".parse().expect("ip"),
            admin_bind: "127.0.0.1:0".parse().expect("addr"),
            routes_namespace: "ns".into(),
            routes_configmap: "routes".into(),
            operator_url: None,
            pod_name: "test".into(),
            drain_timeout: Duration::from_secs(1),
            namespaces: Vec::new(),
            drain_delay: Duration::ZERO,
            backlog_per_slot: crate::app::Backlog::Fixed(1),
            max_connections: 100,
        });
        // The listener of the app that had the port, not closed yet.
        let old = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = old.local_addr().expect("addr").port();
        let stop = CancellationToken::new();
        let task = tokio::spawn(listen(
            activator.inner.clone(),
            ("ns".into(), "new".into()),
            port,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(old);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut served = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        let _ = task.await;
        assert!(
            served,
            "the new app's port is served once the old listener closed"
        );
    }
}
