//! The HTTP front: accept loops, one hyper HTTP/1.1 connection task per client, and the
//! service that turns a complete request into a queued job and the worker's reply into a
//! response. Slow clients only ever hold this cheap task, never a Python worker.

use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use wsgiscale_core::config::BindAddr;

use crate::dispatch::{Chunk, Failure, Job, Reply};
use crate::environ::{self, ConnInfo, RequestView};
use crate::proto::Head;
use crate::state::Shared;

/// Longest request target (path and query) accepted; longer gets 414.
pub const MAX_REQUEST_TARGET: usize = 8190;
/// Most header bytes accepted (names and values); more gets 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// hyper's read buffer: large enough that our own limits above decide, not hyper's.
const MAX_BUF: usize = 256 * 1024;

/// A bound listener.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix socket, with its path (removed on shutdown).
    Unix(UnixListener, PathBuf),
}

/// Binds `addr` with a deep accept backlog (so bursts are not refused by the kernel).
pub fn bind(addr: &BindAddr) -> io::Result<Listener> {
    match addr {
        BindAddr::Tcp(sa) => {
            let domain = socket2::Domain::for_address(*sa);
            let s =
                socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
            s.set_reuse_address(true)?;
            if sa.is_ipv6() {
                let _ = s.set_only_v6(false);
            }
            s.set_nonblocking(true)?;
            s.bind(&(*sa).into())?;
            s.listen(2048)?;
            Ok(Listener::Tcp(TcpListener::from_std(s.into())?))
        }
        BindAddr::Unix(path) => {
            use std::os::unix::fs::FileTypeExt;
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.file_type().is_socket() {
                    // A socket someone still accepts on is in use, as a TCP address would
                    // be; only a stale one (nobody listening) is replaced.
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            "address in use: another server is listening on this socket",
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
            }
            Ok(Listener::Unix(UnixListener::bind(path)?, path.clone()))
        }
    }
}

impl Listener {
    /// The bound address, for the log (with the real port when binding port 0).
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

/// Accepts connections until `stop`, then waits (at most the graceful timeout) for open
/// connections to finish their current request.
pub async fn accept_loop(listener: Listener, ctx: Arc<Shared>, stop: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.http.keepalive_timeout)
        .max_buf_size(MAX_BUF)
        // A client may send a whole request and shut down its write side (`nc -N`, some
        // HTTP/1.0 clients and proxies): answer it instead of dropping the connection at EOF.
        .half_close(true);
    let serve = |(io, conn): (TokioIo<Stream>, ConnInfo)| {
        let conn = Arc::new(conn);
        let ctx = ctx.clone();
        ctx.metrics.connections_accepted.inc();
        ctx.metrics.connections.inc();
        let service_ctx = ctx.clone();
        let service_conn = conn.clone();
        let service = service_fn(move |req| handle(req, service_conn.clone(), service_ctx.clone()));
        let watched = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                match malformed_status(&e) {
                    // hyper answered a request it could not parse and closed the connection:
                    // count and log it as the request it was.
                    Some(status) => {
                        ctx.metrics.count_status(status);
                        if ctx.http.access_log {
                            tracing::info!(
                                target: "access",
                                method = "-",
                                path = "-",
                                status,
                                remote = %remote_text(&conn),
                                error = %e,
                                "malformed request"
                            );
                        }
                    }
                    None => tracing::debug!(error = %e, "connection ended with an error"),
                }
            }
            ctx.metrics.connections.dec();
        });
    };
    wsgiscale_net::accept_loop("front", &stop, || accept(&listener), serve).await;
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
    drop(listener);
    if tokio::time::timeout(ctx.http.graceful_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("graceful timeout reached with connections still open");
    }
}

/// Either kind of accepted stream.
pub enum Stream {
    /// TCP.
    Tcp(tokio::net::TcpStream),
    /// Unix.
    Unix(tokio::net::UnixStream),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

async fn accept(l: &Listener) -> io::Result<(TokioIo<Stream>, ConnInfo)> {
    match l {
        Listener::Tcp(l) => {
            let (s, remote) = l.accept().await?;
            let _ = s.set_nodelay(true);
            let local = s.local_addr().ok();
            Ok((
                TokioIo::new(Stream::Tcp(s)),
                ConnInfo {
                    remote: Some(remote),
                    local,
                    url_scheme: "http",
                },
            ))
        }
        Listener::Unix(l, _) => {
            let (s, _) = l.accept().await?;
            Ok((
                TokioIo::new(Stream::Unix(s)),
                ConnInfo {
                    remote: None,
                    local: None,
                    url_scheme: "http",
                },
            ))
        }
    }
}

/// A simple response with a text body.
pub fn plain(status: StatusCode, text: &str, close: bool) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(Bytes::copy_from_slice(text.as_bytes())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    ctx: Arc<Shared>,
) -> Result<Response<RespBody>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let target = ctx.http.access_log.then(|| req.uri().to_string());
    let mut resp = respond(req, &conn, &ctx).await;
    ctx.metrics.count_status(resp.status().as_u16());
    ctx.metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    if ctx.is_draining() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(target) = target {
        tracing::info!(
            target: "access",
            method = %method,
            path = %target,
            status = resp.status().as_u16(),
            remote = %remote_text(&conn),
            duration_ms = format!("{:.2}", started.elapsed().as_secs_f64() * 1000.0),
            "request"
        );
    }
    Ok(resp)
}

/// The client's IP for the log; "-" on a unix socket (as common log format writes it).
fn remote_text(conn: &ConnInfo) -> String {
    conn.remote
        .map_or_else(|| "-".to_string(), |r| r.ip().to_string())
}

/// The status hyper answered a request it could not parse with, if that is how the
/// connection ended (431 for headers over the buffer, 400 for the rest).
fn malformed_status(e: &hyper::Error) -> Option<u16> {
    if e.is_parse_too_large() {
        Some(431)
    } else if e.is_parse() {
        Some(400)
    } else {
        None
    }
}

fn header_bytes(req: &Request<Incoming>) -> usize {
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

async fn respond(req: Request<Incoming>, conn: &ConnInfo, ctx: &Shared) -> Response<RespBody> {
    let target_len = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().len())
        .unwrap_or(0);
    if target_len > MAX_REQUEST_TARGET {
        return plain(StatusCode::URI_TOO_LONG, "Request-URI Too Long\n", true);
    }
    if header_bytes(&req) > MAX_HEADER_BYTES {
        return plain(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request Header Fields Too Large\n",
            true,
        );
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > ctx.http.max_body) {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n", true);
    }
    let (parts, body) = req.into_parts();
    let limit = usize::try_from(ctx.http.max_body).unwrap_or(usize::MAX);
    let body = match tokio::time::timeout(
        ctx.http.body_timeout,
        Limited::new(body, limit).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n", true);
            }
            return plain(
                StatusCode::BAD_REQUEST,
                "Bad Request: could not read the body\n",
                true,
            );
        }
        Err(_) => return plain(StatusCode::REQUEST_TIMEOUT, "Request Timeout\n", true),
    };
    let view = RequestView {
        method: &parts.method,
        uri: &parts.uri,
        version: parts.version,
        headers: &parts.headers,
        body_len: body.len(),
    };
    let mut frame = BytesMut::with_capacity(512 + body.len());
    if let Err(e) = environ::encode_request(view, conn, &body, &mut frame) {
        tracing::debug!(error = %e, "request cannot be encoded");
        return plain(StatusCode::BAD_REQUEST, "Bad Request\n", true);
    }
    let (tx, rx) = oneshot::channel();
    let job = Job {
        frame,
        reply: tx,
        enqueued: Instant::now(),
        ticket: Default::default(),
        target: (parts.method.clone(), parts.uri.clone()),
        ahead: false,
    };
    if ctx.dispatcher.submit(job).is_err() {
        ctx.metrics.count_server_error("queue_full");
        let mut r = plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: queue full\n",
            false,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    match rx.await {
        Ok(Reply::Response { head, rest }) => {
            build_response(head, rest, parts.method == Method::HEAD)
        }
        Ok(Reply::Failed(Failure::Timeout)) => {
            ctx.metrics.count_server_error("timeout");
            plain(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout\n", false)
        }
        Ok(Reply::Failed(Failure::WorkerDied)) | Err(_) => {
            ctx.metrics.count_server_error("worker_died");
            plain(
                StatusCode::BAD_GATEWAY,
                "Bad Gateway: the worker died\n",
                false,
            )
        }
    }
}

/// Turns a worker's head into a response. The app's Content-Length is a promise the body
/// enforces; a whole response without one gets one (so it need not be chunked).
fn build_response(
    head: Head,
    rest: Option<mpsc::Receiver<Chunk>>,
    is_head: bool,
) -> Response<RespBody> {
    let Head {
        status,
        reason,
        headers,
        body,
        ..
    } = head;
    let Ok(status) = StatusCode::from_u16(status) else {
        tracing::error!(status, "app returned an invalid status code");
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error\n",
            false,
        );
    };
    let mut content_length = None;
    let mut map = http::HeaderMap::with_capacity(headers.len() + 1);
    for (k, v) in headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&k),
            HeaderValue::from_maybe_shared(v),
        ) else {
            tracing::warn!(header = %String::from_utf8_lossy(&k), "dropped an invalid response header");
            continue;
        };
        if name == header::CONTENT_LENGTH {
            match value
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                Some(n) if content_length.is_none() => content_length = Some(n),
                _ => {
                    tracing::warn!("dropped an invalid or repeated Content-Length from the app");
                    continue;
                }
            }
        }
        map.append(name, value);
    }
    if content_length.is_none() && rest.is_none() && !is_head {
        content_length = Some(body.len() as u64);
        map.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let mut r = Response::new(RespBody::new(
        body,
        rest,
        if is_head { None } else { content_length },
    ));
    *r.status_mut() = status;
    *r.headers_mut() = map;
    if status.canonical_reason().map(str::as_bytes) != Some(&reason[..]) && !reason.is_empty() {
        if let Ok(rp) = hyper::ext::ReasonPhrase::try_from(reason) {
            r.extensions_mut().insert(rp);
        }
    }
    r
}

/// A response body: the bytes that came with the head, then any streamed chunks. It enforces
/// the app's Content-Length: extra bytes are cut, and a body that ends short is an error, so
/// hyper closes the connection instead of leaving the client waiting.
pub struct RespBody {
    first: Option<Bytes>,
    rest: Option<mpsc::Receiver<Chunk>>,
    remaining: Option<u64>,
    done: bool,
}

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The app or its worker failed mid-response.
    #[error("response aborted")]
    Aborted,
    /// Fewer bytes than the app's Content-Length.
    #[error("response shorter than its Content-Length")]
    Short,
}

impl RespBody {
    /// A complete body.
    pub fn full(b: Bytes) -> Self {
        RespBody::new(b, None, None)
    }

    fn new(first: Bytes, rest: Option<mpsc::Receiver<Chunk>>, content_length: Option<u64>) -> Self {
        RespBody {
            first: (!first.is_empty()).then_some(first),
            rest,
            remaining: content_length,
            done: false,
        }
    }

    fn clip(&mut self, mut b: Bytes) -> Bytes {
        if let Some(rem) = &mut self.remaining {
            if b.len() as u64 > *rem {
                b.truncate(*rem as usize);
            }
            *rem -= b.len() as u64;
        }
        b
    }

    fn end(&mut self) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.done = true;
        self.rest = None;
        if self.remaining.is_some_and(|r| r > 0) {
            return Poll::Ready(Some(Err(BodyError::Short)));
        }
        Poll::Ready(None)
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(b) = this.first.take() {
            let b = this.clip(b);
            if !b.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
        }
        loop {
            let Some(rx) = &mut this.rest else {
                return this.end();
            };
            match std::task::ready!(rx.poll_recv(cx)) {
                Some(Chunk::Data(b)) => {
                    if this.remaining == Some(0) {
                        continue;
                    }
                    let b = this.clip(b);
                    if !b.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                }
                Some(Chunk::End) => return this.end(),
                Some(Chunk::Abort) | None => {
                    this.done = true;
                    this.rest = None;
                    return Poll::Ready(Some(Err(BodyError::Aborted)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
            || (self.first.is_none() && self.rest.is_none() && self.remaining.unwrap_or(0) == 0)
    }

    fn size_hint(&self) -> SizeHint {
        match (self.remaining, &self.rest) {
            (Some(n), _) => SizeHint::with_exact(n),
            (None, None) => SizeHint::with_exact(self.first.as_ref().map_or(0, |b| b.len() as u64)),
            (None, Some(_)) => SizeHint::default(),
        }
    }
}
