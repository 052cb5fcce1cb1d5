//! The admin server: liveness (`/healthz`) and readiness (`/readyz`) for Kubernetes probes,
//! Prometheus metrics (`/metrics`) and the load report for the operator (`/load`).

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use crate::front::{plain, Listener, RespBody, Stream};
use crate::state::Shared;

/// Serves the admin endpoints until `stop`.
pub async fn serve(listener: Listener, ctx: Arc<Shared>, stop: CancellationToken) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    let builder = Arc::new(builder);
    let serve = |io: TokioIo<Stream>| {
        let ctx = ctx.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| route(req, ctx.clone()));
            let _ = builder.serve_connection(io, service).await;
        });
    };
    wsgiscale_net::accept_loop("admin", &stop, || accept(&listener), serve).await;
}

async fn accept(l: &Listener) -> std::io::Result<TokioIo<Stream>> {
    Ok(match l {
        Listener::Tcp(l) => TokioIo::new(Stream::Left(l.accept().await?.0)),
        Listener::Unix(l, _) => TokioIo::new(Stream::Right(l.accept().await?.0)),
    })
}

async fn route(req: Request<Incoming>, ctx: Arc<Shared>) -> Result<Response<RespBody>, Infallible> {
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
            if ctx.is_draining() {
                plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n", false)
            } else if !ctx.dispatcher.any_ready() {
                plain(StatusCode::SERVICE_UNAVAILABLE, "no worker ready\n", false)
            } else {
                plain(StatusCode::OK, "ready\n", false)
            }
        }
        "/metrics" => {
            let mut r = plain(StatusCode::OK, &ctx.metrics.render(), false);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/load" => {
            let report = ctx.load_report();
            let body = serde_json::to_string(&report).unwrap_or_else(|_| "{}".into());
            let mut r = plain(StatusCode::OK, &body, false);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => plain(StatusCode::NOT_FOUND, "not found\n", false),
    })
}
