//! How one accepted connection is spoken to: HTTP/1.1 on a plain bind; HTTP/1.1 or h2c (HTTP/2
//! with prior knowledge, told apart by the connection preface) on a plain bind for a peer in
//! `--h2c-allow-ips`; TLS on a `--tls-bind`, then HTTP/2 or HTTP/1.1 as ALPN chose. Every
//! request, whatever its protocol, goes through the same service (the front's `handle`):
//! the body is read whole before the request is queued in the one FIFO, so a slow HTTP/2
//! stream holds its own task, never a worker, and counts in the load like any request.
//!
//! Each connection stops gracefully when the front stops accepting (an HTTP/2 connection
//! sends GOAWAY and finishes its open streams). An HTTP/2 connection with no request in
//! flight for `--keepalive-timeout` is closed the same way, as an idle HTTP/1 keep-alive
//! connection is by hyper's header-read timeout; so is a TLS handshake that takes longer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, Version};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wsgiscale_core::config::protocols::{PlainProtocols, ProtocolConfig};
use wsgiscale_core::config::HttpConfig;

use crate::tls::Certs;

/// An error that ended a connection.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Most concurrent streams of one HTTP/2 connection (gunicorn's default too); each is a
/// request in the FIFO, which `--max-queue` bounds as a whole.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// How often an HTTP/2 connection is pinged, and how long the answer may take, to notice a
/// peer that went away while a long request runs.
pub const H2_KEEPALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(20));

/// What an accepted connection is served.
#[derive(Clone)]
pub enum Mode {
    /// Plain text: HTTP/1.1 only, or HTTP/1.1 and h2c.
    Plain(PlainProtocols),
    /// TLS with these certificates, then what ALPN chose.
    Tls(Arc<Certs>),
}

/// The per-protocol hyper builders, made once per listener.
pub struct Connections {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    auto: auto::Builder<TokioExecutor>,
    protocols: ProtocolConfig,
    idle: Duration,
}

impl Connections {
    /// Builders configured from the front's limits. `max_buf` is hyper's HTTP/1 read
    /// buffer and `max_header_bytes` the front's header limit, which an HTTP/2 header list
    /// may reach too before the front answers it 431.
    pub fn new(http: &HttpConfig, protocols: &ProtocolConfig) -> Connections {
        // Above --limit-request-*: a request just over them gets the front's 414/431 with a
        // body (crate::limits), not hyper's bare one.
        let max_buf = crate::limits::hyper_max_buf(&http.limits);
        let max_headers = crate::limits::hyper_max_headers(&http.limits);
        let max_header_bytes = http.limits.headers_size;
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(http.keepalive_timeout)
            .max_buf_size(max_buf)
            .max_headers(max_headers)
            // A client may send a whole request and shut down its write side (`nc -N`, some
            // HTTP/1.0 clients and proxies): answer it instead of dropping it at EOF.
            .half_close(true);
        let header_list = u32::try_from(max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_header_list_size(header_list)
            .keep_alive_interval(H2_KEEPALIVE.0)
            .keep_alive_timeout(H2_KEEPALIVE.1);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(http.keepalive_timeout)
            .max_buf_size(max_buf)
            .max_headers(max_headers)
            .half_close(true);
        auto.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_header_list_size(header_list)
            .keep_alive_interval(H2_KEEPALIVE.0)
            .keep_alive_timeout(H2_KEEPALIVE.1);
        Connections {
            http1: h1,
            http2: h2,
            auto,
            protocols: protocols.clone(),
            idle: http.keepalive_timeout,
        }
    }

    /// What a connection from `peer` (None: a unix socket) on a listener with `tls` is
    /// served.
    pub fn mode(&self, tls: Option<&Arc<Certs>>, peer: Option<std::net::IpAddr>) -> Mode {
        match tls {
            Some(certs) => Mode::Tls(certs.clone()),
            None => Mode::Plain(self.protocols.plain_for(peer)),
        }
    }

    /// Serves one connection until it ends or, after `stop`, until it has finished what it
    /// was doing.
    pub async fn serve<I, S, B>(
        &self,
        io: I,
        mode: Mode,
        service: S,
        stop: &CancellationToken,
    ) -> Result<(), BoxError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        match mode {
            Mode::Plain(PlainProtocols::Http1) => {
                let conn = self.http1.serve_connection(TokioIo::new(io), service);
                drive(conn, stop, None).await
            }
            Mode::Plain(PlainProtocols::Http1OrH2c) => {
                let (service, activity) = Tracked::new(service);
                let conn = self.auto.serve_connection(TokioIo::new(io), service);
                drive(conn, stop, Some((activity, self.idle))).await
            }
            Mode::Tls(certs) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(certs.config());
                let handshake = tokio::time::timeout(self.idle, acceptor.accept(io));
                let tls = tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    r = handshake => match r {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return Err(Box::new(HandshakeError(e))),
                        Err(_) => return Err(Box::new(HandshakeError(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "TLS handshake timed out",
                        )))),
                    },
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                if h2 {
                    let (service, activity) = Tracked::new(service);
                    let conn = self.http2.serve_connection(TokioIo::new(tls), service);
                    drive(conn, stop, Some((activity, self.idle))).await
                } else {
                    let conn = self.http1.serve_connection(TokioIo::new(tls), service);
                    drive(conn, stop, None).await
                }
            }
        }
    }
}

/// A TLS handshake that failed or timed out (a client without an acceptable certificate,
/// one that does not trust ours, a port scanner).
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake: {0}")]
pub struct HandshakeError(pub std::io::Error);

/// A hyper connection that can be told to finish gracefully.
trait Graceful {
    fn graceful(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for auto::Connection<'_, I, S, E>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs `conn` to its end; on `stop`, or once it has been idle for the given time, asks it
/// to finish gracefully and waits for that.
async fn drive<C, E>(
    conn: C,
    stop: &CancellationToken,
    idle: Option<(Arc<Activity>, Duration)>,
) -> Result<(), BoxError>
where
    C: Future<Output = Result<(), E>> + Graceful,
    E: Into<BoxError>,
{
    tokio::pin!(conn);
    let idle_out = async {
        match &idle {
            Some((activity, after)) => activity.idle_for(*after).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(idle_out);
    let mut finishing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => return r.map_err(Into::into),
            _ = stop.cancelled(), if !finishing => {
                finishing = true;
                conn.as_mut().graceful();
            }
            _ = &mut idle_out, if !finishing => {
                tracing::debug!("closing an idle HTTP/2 connection");
                finishing = true;
                conn.as_mut().graceful();
            }
        }
    }
}

/// Requests in flight on a connection, and since when it has had none.
struct Activity {
    state: Mutex<(usize, Instant)>,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.state.lock().0 += 1;
        InFlight(self.clone())
    }

    /// Returns once no request has been in flight for `after`.
    async fn idle_for(&self, after: Duration) {
        loop {
            let (in_flight, since) = *self.state.lock();
            let wait = if in_flight > 0 {
                after
            } else {
                match after.checked_sub(since.elapsed()) {
                    None | Some(Duration::ZERO) => return,
                    Some(left) => left,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.0 -= 1;
        if state.0 == 0 {
            state.1 = Instant::now();
        }
    }
}

/// The front's service on a connection that may speak HTTP/2: counts the requests in flight
/// (for the idle close) and gives an HTTP/2 request the `Host` header of its `:authority`,
/// as RFC 9113 asks of a server that maps it to HTTP/1.1 semantics (the WSGI environ's
/// `HTTP_HOST` and `SERVER_NAME`, which Django's ALLOWED_HOSTS checks).
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    fn new(inner: S) -> (Tracked<S>, Arc<Activity>) {
        let activity = Arc::new(Activity {
            state: Mutex::new((0, Instant::now())),
        });
        (
            Tracked {
                inner,
                activity: activity.clone(),
            },
            activity,
        )
    }
}

/// Sets `Host` from the `:authority` of an HTTP/2 request that has none.
pub fn authority_to_host<T>(req: &mut Request<T>) {
    if req.version() != Version::HTTP_2 || req.headers().contains_key(header::HOST) {
        return;
    }
    let Some(value) = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    else {
        return;
    };
    req.headers_mut().insert(header::HOST, value);
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        authority_to_host(&mut req);
        let in_flight = self.activity.begin();
        let response = self.inner.call(req);
        Box::pin(async move {
            let r = response.await;
            drop(in_flight);
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_requests_get_a_host_from_their_authority() {
        let mut h2 = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://example.com:8443/path?q")
            .body(())
            .expect("request");
        authority_to_host(&mut h2);
        assert_eq!(h2.headers()[header::HOST], "example.com:8443");
        // A Host already sent is kept; HTTP/1 requests are left alone.
        let mut kept = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://a.example/")
            .header(header::HOST, "b.example")
            .body(())
            .expect("request");
        authority_to_host(&mut kept);
        assert_eq!(kept.headers()[header::HOST], "b.example");
        let mut h1 = Request::builder()
            .uri("http://example.com/")
            .body(())
            .expect("request");
        authority_to_host(&mut h1);
        assert!(!h1.headers().contains_key(header::HOST));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_nothing_in_flight_for_the_whole_time() {
        let activity = Arc::new(Activity {
            state: Mutex::new((0, Instant::now())),
        });
        let after = Duration::from_secs(75);
        let started = Instant::now();
        let request = activity.begin();
        let idle = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(after).await }
        });
        // A request running for 200 s: not idle meanwhile.
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert!(!idle.is_finished());
        drop(request);
        idle.await.expect("no panic");
        assert!(started.elapsed() >= Duration::from_secs(275));
    }
}
