//! The HTTP front: accept loops, one hyper connection task per client (HTTP/1.1, or HTTP/2
//! over TLS or h2c: [`crate::protocol`]), and the service that turns a complete request into
//! a queued job and the worker's reply into a response. Slow clients only ever hold this
//! cheap task, never a Python worker: a request is read whole before it is queued (a large
//! body into a temporary file), and a streamed response is buffered by the master
//! ([`crate::spool`]) while its client reads it.

use std::convert::Infallible;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use wsgiscale_core::config::{BindAddr, HttpConfig};
use wsgiscale_core::protocols::ProtocolConfig;

use crate::dispatch::{Failure, Job, Reply};
use crate::environ::{self, ConnInfo, RequestView};
use crate::metrics::Metrics;
use crate::proto::Head;
use crate::protocol::{Connections, HandshakeError};
use crate::spool::SpoolReader;
use crate::state::Shared;
use crate::tls::Certs;

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
/// connections to finish their current request. With `tls` the listener serves HTTPS
/// (HTTP/2 or HTTP/1.1 by ALPN); `protocols` says which peers may speak h2c on a plain one
/// ([`crate::protocol`]).
pub async fn accept_loop(
    listener: Listener,
    ctx: Arc<Shared>,
    tls: Option<Arc<Certs>>,
    protocols: ProtocolConfig,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let conns = Arc::new(Connections::new(
        &ctx.http,
        &protocols,
        MAX_BUF,
        MAX_HEADER_BYTES,
    ));
    let serve = |(io, mut conn): (TokioIo<Stream>, ConnInfo)| {
        if tls.is_some() {
            conn.url_scheme = "https";
        }
        let mode = conns.mode(tls.as_ref(), conn.remote.map(|r| r.ip()));
        let conn = Arc::new(conn);
        let ctx = ctx.clone();
        ctx.metrics.connections_accepted.inc();
        ctx.metrics.connections.inc();
        let service_ctx = ctx.clone();
        let service_conn = conn.clone();
        let service = service_fn(move |req| handle(req, service_conn.clone(), service_ctx.clone()));
        // Held until the connection ends: the graceful shutdown below waits for it.
        let watching = graceful.watcher();
        let (conns, stop) = (conns.clone(), stop.clone());
        tokio::spawn(async move {
            if let Err(e) = conns.serve(io.into_inner(), mode, service, &stop).await {
                connection_error(&ctx, &conn, &*e);
            }
            drop(watching);
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

/// Logs (and counts) how a connection ended with an error.
fn connection_error(ctx: &Shared, conn: &ConnInfo, e: &(dyn std::error::Error + 'static)) {
    if let Some(h) = e.downcast_ref::<HandshakeError>() {
        ctx.metrics.count_tls_handshake_failure();
        tracing::debug!(remote = %remote_text(conn), error = %h, "TLS handshake failed");
        return;
    }
    let Some(e) = e.downcast_ref::<hyper::Error>() else {
        tracing::debug!(error = %e, "connection ended with an error");
        return;
    };
    if e.is_parse_version_h2() {
        tracing::info!(
            remote = %remote_text(conn),
            "HTTP/2 (h2c) refused: the peer is not in --h2c-allow-ips or --h2c is off"
        );
        return;
    }
    match malformed_status(e) {
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
                    remote = %remote_text(conn),
                    error = %e,
                    "malformed request"
                );
            }
        }
        None => tracing::debug!(error = %e, "connection ended with an error"),
    }
}

/// Either kind of accepted stream (tokio-util's `Either` forwards reads and writes, vectored
/// writes included).
pub type Stream = Either<tokio::net::TcpStream, tokio::net::UnixStream>;

async fn accept(l: &Listener) -> io::Result<(TokioIo<Stream>, ConnInfo)> {
    match l {
        Listener::Tcp(l) => {
            let (s, remote) = l.accept().await?;
            let _ = s.set_nodelay(true);
            let local = s.local_addr().ok();
            Ok((
                TokioIo::new(Either::Left(s)),
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
                TokioIo::new(Either::Right(s)),
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
    let body = match tokio::time::timeout(
        ctx.http.body_timeout,
        read_body(body, declared, &ctx.http, &ctx.metrics),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(ReadBodyError::TooLarge)) => {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n", true)
        }
        Ok(Err(ReadBodyError::Client)) => {
            return plain(
                StatusCode::BAD_REQUEST,
                "Bad Request: could not read the body\n",
                true,
            )
        }
        Ok(Err(ReadBodyError::Spill(e))) => {
            tracing::error!(
                error = %e,
                dir = %ctx.http.buffers.temp_dir().display(),
                "cannot write a request body to a temporary file: 500"
            );
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error: the request body could not be stored\n",
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
        body_len: usize::try_from(body.len()).unwrap_or(usize::MAX),
    };
    let (encoded, body_file) = match body {
        ReqBody::Memory(body) => {
            let mut frame = BytesMut::with_capacity(512 + body.len());
            let encoded = environ::encode_request(view, conn, &body, &mut frame);
            (encoded.map(|()| frame), None)
        }
        ReqBody::File(file, len) => {
            let mut frame = BytesMut::with_capacity(512);
            let encoded = environ::encode_request_file(view, conn, len, &mut frame);
            (encoded.map(|()| frame), Some(Arc::new(file)))
        }
    };
    let frame = match encoded {
        Ok(frame) => frame,
        Err(e) => {
            tracing::debug!(error = %e, "request cannot be encoded");
            return plain(StatusCode::BAD_REQUEST, "Bad Request\n", true);
        }
    };
    let (tx, rx) = oneshot::channel();
    let job = Job {
        frame,
        body_file,
        reply: tx,
        enqueued: Instant::now(),
        ticket: Default::default(),
        target: (parts.method.clone(), parts.uri.clone()),
        ahead: false,
    };
    if ctx.dispatcher.submit(job).is_err() {
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
            plain(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout\n", false)
        }
        Ok(Reply::Failed(Failure::WorkerDied)) | Err(_) => plain(
            StatusCode::BAD_GATEWAY,
            "Bad Gateway: the worker died\n",
            false,
        ),
    }
}

/// A request body read whole: in memory, or (past `--body-buffer`) in an unnamed temporary
/// file, with its length.
enum ReqBody {
    Memory(Bytes),
    File(File, u64),
}

impl ReqBody {
    fn len(&self) -> u64 {
        match self {
            ReqBody::Memory(b) => b.len() as u64,
            ReqBody::File(_, len) => *len,
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
enum ReadBodyError {
    /// Past `--max-body`.
    #[error("request body too large")]
    TooLarge,
    /// The client sent a broken body or went away.
    #[error("the client's body could not be read")]
    Client,
    /// The temporary file could not be made or written.
    #[error("request body file: {0}")]
    Spill(io::Error),
}

/// Reads a request body whole. Up to `--body-buffer` it stays in memory; a body declared
/// larger goes straight to a temporary file, and one that grows past it (chunked) moves
/// there, so a large upload costs the master a few buffers, not its size.
async fn read_body(
    mut body: Incoming,
    declared: Option<u64>,
    http: &HttpConfig,
    metrics: &Metrics,
) -> Result<ReqBody, ReadBodyError> {
    let threshold = http.buffers.body_buffer;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut in_memory = 0u64;
    let mut file: Option<File> = None;
    let mut total = 0u64;
    let spill = |metrics: &Metrics, e: io::Error| {
        metrics.spill_errors("request").inc();
        ReadBodyError::Spill(e)
    };
    if declared.is_some_and(|n| n > threshold) {
        file = Some(new_body_file(http, metrics).map_err(|e| spill(metrics, e))?);
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ReadBodyError::Client)?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        total += data.len() as u64;
        if total > http.max_body {
            return Err(ReadBodyError::TooLarge);
        }
        if file.is_none() && in_memory + data.len() as u64 > threshold {
            let mut f = new_body_file(http, metrics).map_err(|e| spill(metrics, e))?;
            for c in chunks.drain(..) {
                f.write_all(&c).map_err(|e| spill(metrics, e))?;
            }
            file = Some(f);
        }
        match &mut file {
            Some(f) => f.write_all(&data).map_err(|e| spill(metrics, e))?,
            None => {
                in_memory += data.len() as u64;
                chunks.push(data);
            }
        }
    }
    if let Some(f) = file {
        metrics.spill_bytes("request").inc_by(total);
        return Ok(ReqBody::File(f, total));
    }
    Ok(ReqBody::Memory(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => chunks.concat().into(),
    }))
}

/// An unnamed temporary file for a request body, in the temp dir.
fn new_body_file(http: &HttpConfig, metrics: &Metrics) -> io::Result<File> {
    let f = tempfile::tempfile_in(http.buffers.temp_dir())?;
    metrics.spill_files("request").inc();
    Ok(f)
}

/// Turns a worker's head into a response. The app's Content-Length is a promise the body
/// enforces; a whole response without one gets one (so it need not be chunked).
fn build_response(head: Head, rest: Option<SpoolReader>, is_head: bool) -> Response<RespBody> {
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

/// A response body: the whole body that came with the head, or the streamed one from its
/// spool. It enforces the app's Content-Length: extra bytes are cut, and a body that ends
/// short is an error, so hyper closes the connection instead of leaving the client waiting.
pub struct RespBody {
    first: Option<Bytes>,
    rest: Option<SpoolReader>,
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

    fn new(first: Bytes, rest: Option<SpoolReader>, content_length: Option<u64>) -> Self {
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
            let Some(rest) = &mut this.rest else {
                return this.end();
            };
            match std::task::ready!(rest.poll_next(cx)) {
                Some(Ok(b)) => {
                    if this.remaining == Some(0) {
                        continue;
                    }
                    let b = this.clip(b);
                    if !b.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                }
                None => return this.end(),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "streamed response cut short");
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
