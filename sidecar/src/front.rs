//! The HTTP front: accept loops, one hyper connection task per client (HTTP/1.1, or HTTP/2
//! over TLS or h2c: [`crate::protocol`]), and the service that turns a complete request into
//! a queued job and the worker's reply into a response. Slow clients only ever hold this
//! cheap task, never a Python worker: a request is read whole before it is queued (a large
//! body into a temporary file), and a streamed response is buffered by the master
//! ([`crate::spool`]) while its client reads it.

use std::borrow::Cow;
use std::convert::Infallible;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use wsgiscale_core::config::protocols::ProtocolConfig;
use wsgiscale_core::config::{BindAddr, HttpConfig};

use crate::access::{self, Logged, Pending, Record, Source};
use crate::dispatch::{Failure, Job, Reply};
use crate::environ::{self, ConnInfo, RequestView};
use crate::forwarded::{self, Client, Outcome, Route};
use crate::limits;
use crate::metrics::Metrics;
use crate::proto::Head;
use crate::protocol::{Connections, HandshakeError};
use crate::spool::SpoolReader;
use crate::state::Shared;
use crate::static_files::StaticBody;
use crate::tls::Certs;

/// The body of every response of the front: the app's (or the server's own), or a static
/// file's, counted for the access log.
pub type FrontBody = Logged<Either<RespBody, StaticBody>>;

/// Why the server answered a request itself, or replaced the app's answer: a response
/// extension the access log reads.
#[derive(Debug, Clone)]
pub struct Note(pub Cow<'static, str>);

/// `resp` with the reason the server answered it.
fn noted<B>(mut resp: Response<B>, why: impl Into<Cow<'static, str>>) -> Response<B> {
    resp.extensions_mut().insert(Note(why.into()));
    resp
}

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
    let conns = Arc::new(Connections::new(&ctx.http, &protocols));
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
            if let Some(log) = &ctx.access {
                log.write(&Record {
                    time: SystemTime::now(),
                    message: "malformed request",
                    method: "-".into(),
                    path: "-".into(),
                    protocol: "-",
                    status,
                    bytes: 0,
                    head: Duration::ZERO,
                    duration: Duration::ZERO,
                    remote: conn.remote.map(|r| r.ip()),
                    peer: None,
                    source: Source::Server,
                    error: Some(e.to_string().into()),
                    request_headers: Vec::new(),
                    response_headers: Vec::new(),
                });
            }
        }
        None => tracing::debug!(error = %e, "connection ended with an error"),
    }
}

/// Either kind of accepted stream (tokio-util's `Either` forwards reads and writes, vectored
/// writes included).
pub type Stream = tokio_util::either::Either<tokio::net::TcpStream, tokio::net::UnixStream>;

async fn accept(l: &Listener) -> io::Result<(TokioIo<Stream>, ConnInfo)> {
    match l {
        Listener::Tcp(l) => {
            let (s, remote) = l.accept().await?;
            let _ = s.set_nodelay(true);
            let local = s.local_addr().ok();
            Ok((
                TokioIo::new(tokio_util::either::Either::Left(s)),
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
                TokioIo::new(tokio_util::either::Either::Right(s)),
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
) -> Result<Response<FrontBody>, Infallible> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    // What the access line needs from the request, taken before the request is consumed.
    let logged = ctx.access.as_ref().map(|log| {
        (
            SystemTime::now(),
            parts.method.to_string(),
            parts.uri.to_string(),
            access::pick(&log.config.request_headers, &parts.headers),
        )
    });
    let version = parts.version;
    let (mut resp, source, client) = route(parts, body, &conn, &ctx).await;
    let status = resp.status().as_u16();
    let head = started.elapsed();
    if source == Source::Static {
        ctx.metrics.count_static(status);
    } else {
        ctx.metrics.count_status(status);
        ctx.metrics.request_duration.observe(head.as_secs_f64());
    }
    if ctx.is_draining() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let pending = match (logged, &ctx.access) {
        (Some((time, method, path, request_headers)), Some(log)) => {
            let peer = conn.remote.map(|r| r.ip());
            let remote = client.map(|c| c.ip);
            Some(Box::new(Pending {
                record: Record {
                    time,
                    message: "request",
                    method,
                    path,
                    protocol: protocol(version),
                    status,
                    bytes: 0,
                    head,
                    duration: head,
                    remote,
                    peer: peer.filter(|p| Some(*p) != remote),
                    source,
                    error: resp.extensions().get::<Note>().map(|n| n.0.clone()),
                    request_headers,
                    response_headers: access::pick(&log.config.response_headers, resp.headers()),
                },
                started,
                log: log.clone(),
                length: resp
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
            }))
        }
        _ => None,
    };
    Ok(resp.map(|b| Logged::new(b, pending)))
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

/// Where a request goes: the head limits, then a static mount (matched on the raw path),
/// then the root path, then the app.
async fn route(
    parts: Parts,
    body: Incoming,
    conn: &ConnInfo,
    ctx: &Shared,
) -> (
    Response<Either<RespBody, StaticBody>>,
    Source,
    Option<Client>,
) {
    let peer = conn.remote.map(|p| Client {
        ip: p.ip(),
        port: Some(p.port()),
    });
    if let Err(too_large) =
        limits::check_head(&parts.method, &parts.uri, &parts.headers, &ctx.http.limits)
    {
        let status = StatusCode::from_u16(too_large.status())
            .unwrap_or(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let text = too_large.message();
        let resp = noted(plain(status, &text, true), text.trim_end().to_string());
        return (resp.map(Either::Left), Source::Server, peer);
    }
    let path = environ::decoded_path(&parts.uri);
    let outcome = forwarded::decide(
        conn.remote,
        conn.url_scheme,
        &parts.headers,
        &path,
        &ctx.http.proxy,
    );
    let client = outcome.client();
    if let Some((mount, rest)) = ctx.statics.find(parts.uri.path()) {
        let resp = ctx
            .statics
            .serve(mount, rest, &parts.method, &parts.headers)
            .await;
        return (resp.map(Either::Right), Source::Static, client);
    }
    let resp = match outcome {
        Outcome::OutsideRootPath { root, .. } => noted(
            plain(
                StatusCode::NOT_FOUND,
                &format!("Not Found: this server serves the paths under {root}\n"),
                false,
            ),
            format!("the path is outside the root path {root}"),
        ),
        Outcome::Serve(route) => respond(&parts, body, &route, conn, ctx).await,
    };
    let source = if resp.extensions().get::<Note>().is_some() {
        Source::Server
    } else {
        Source::App
    };
    (resp.map(Either::Left), source, client)
}

/// The status hyper answered a request it could not parse with, if that is how the
/// connection ended (414 for a target longer than it parses, 431 for a head over its
/// buffer or field count, 400 for the rest).
fn malformed_status(e: &hyper::Error) -> Option<u16> {
    if e.is_parse_too_large() {
        // hyper tells the two apart only in its message.
        Some(if e.to_string().contains("URI") {
            414
        } else {
            431
        })
    } else if e.is_parse() {
        Some(400)
    } else {
        None
    }
}

/// The client's IP for the log; "-" on a unix socket (as common log format writes it).
fn remote_text(conn: &ConnInfo) -> String {
    conn.remote
        .map_or_else(|| "-".to_string(), |r| r.ip().to_string())
}

async fn respond(
    parts: &Parts,
    body: Incoming,
    route: &Route<'_>,
    conn: &ConnInfo,
    ctx: &Shared,
) -> Response<RespBody> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > ctx.http.max_body) {
        return noted(
            plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n", true),
            "the body is larger than --max-body",
        );
    }
    let body = match tokio::time::timeout(
        ctx.http.body_timeout,
        read_body(body, declared, &ctx.http, &ctx.metrics),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(ReadBodyError::TooLarge)) => {
            return noted(
                plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n", true),
                "the body is larger than --max-body",
            )
        }
        Ok(Err(ReadBodyError::Client(e))) => {
            return noted(
                plain(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: could not read the body\n",
                    true,
                ),
                format!("could not read the body: {e}"),
            )
        }
        Ok(Err(ReadBodyError::Spill(e))) => {
            tracing::error!(
                error = %e,
                dir = %ctx.http.buffers.temp_dir().display(),
                "cannot write a request body to a temporary file: 500"
            );
            return noted(
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error: the request body could not be stored\n",
                    true,
                ),
                format!("the request body could not be stored: {e}"),
            );
        }
        Err(_) => {
            return noted(
                plain(StatusCode::REQUEST_TIMEOUT, "Request Timeout\n", true),
                "the body took longer than --body-timeout",
            )
        }
    };
    let view = RequestView {
        method: &parts.method,
        uri: &parts.uri,
        version: parts.version,
        headers: &parts.headers,
        body_len: usize::try_from(body.len()).unwrap_or(usize::MAX),
        route,
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
            return noted(
                plain(StatusCode::BAD_REQUEST, "Bad Request\n", true),
                format!("the request cannot be encoded: {e}"),
            );
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
        ctx.metrics.count_server_error("queue_full");
        let mut r = plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: queue full\n",
            false,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return noted(r, "the queue is full (--max-queue)");
    }
    match rx.await {
        Ok(Reply::Response { head, rest }) => {
            build_response(head, rest, parts.method == Method::HEAD)
        }
        Ok(Reply::Failed(Failure::Timeout)) => {
            ctx.metrics.count_server_error("timeout");
            noted(
                plain(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout\n", false),
                "the request ran longer than --timeout; its worker was killed",
            )
        }
        Ok(Reply::Failed(Failure::WorkerDied)) | Err(_) => {
            ctx.metrics.count_server_error("worker_died");
            noted(
                plain(
                    StatusCode::BAD_GATEWAY,
                    "Bad Gateway: the worker died\n",
                    false,
                ),
                "the worker died before it answered",
            )
        }
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
    #[error("the client's body could not be read: {0}")]
    Client(hyper::Error),
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
        let frame = frame.map_err(ReadBodyError::Client)?;
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
    let status = match StatusCode::from_u16(status) {
        // An informational status cannot end a request (hyper would send a 500 of its own
        // without saying so): answer the 500 here, so the metrics and the log say it.
        Ok(s) if s.is_informational() => {
            tracing::error!(
                status = s.as_u16(),
                "the app returned an informational (1xx) status as its final status; sent 500"
            );
            return noted(
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error\n",
                    false,
                ),
                format!(
                    "the app returned {}, an informational status, as its final status",
                    s.as_u16()
                ),
            );
        }
        Ok(s) => s,
        Err(_) => {
            tracing::error!(status, "the app returned an invalid status code; sent 500");
            return noted(
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error\n",
                    false,
                ),
                format!("the app returned an invalid status code {status}"),
            );
        }
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
