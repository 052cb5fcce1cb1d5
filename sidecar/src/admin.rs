//! The admin server: liveness (`/healthz`) and readiness (`/readyz`) for Kubernetes probes.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use crate::front::{plain, FrontCtx, Listener, RespBody, Stream};

/// Serves the admin endpoints until `stop`.
pub async fn serve(listener: Listener, ctx: Arc<FrontCtx>, stop: CancellationToken) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    let builder = Arc::new(builder);
    loop {
        let io = tokio::select! {
            _ = stop.cancelled() => break,
            r = accept(&listener) => match r {
                Ok(io) => io,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| route(req, ctx.clone()));
            let _ = builder.serve_connection(io, service).await;
        });
    }
}

async fn accept(l: &Listener) -> std::io::Result<TokioIo<Stream>> {
    Ok(match l {
        Listener::Tcp(l) => TokioIo::new(Stream::Tcp(l.accept().await?.0)),
        Listener::Unix(l, _) => TokioIo::new(Stream::Unix(l.accept().await?.0)),
    })
}

async fn route(
    req: Request<Incoming>,
    ctx: Arc<FrontCtx>,
) -> Result<Response<RespBody>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n",
            false,
        ));
    }
    Ok(match req.uri().path() {
        "/healthz" => plain(StatusCode::OK, "ok\n", false),
        "/readyz" => {
            if ctx.draining.load(Ordering::Relaxed) {
                plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n", false)
            } else if !ctx.dispatcher.any_ready() {
                plain(StatusCode::SERVICE_UNAVAILABLE, "no worker ready\n", false)
            } else {
                plain(StatusCode::OK, "ready\n", false)
            }
        }
        _ => plain(StatusCode::NOT_FOUND, "not found\n", false),
    })
}
