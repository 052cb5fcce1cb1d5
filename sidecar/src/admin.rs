//! The admin server: liveness (`/healthz`) and readiness (`/readyz`) for Kubernetes probes,
//! Prometheus metrics (`/metrics`) and the load report for the operator (`/load`).
//!
//! It listens and answers from the moment the master starts, before the app is imported:
//! `/healthz` is 200 as long as the master runs (a slow import is not a dead server), and
//! `/readyz` is 503 with the reason (`importing the app`, `no worker ready`, `draining`) until
//! the server can take a request.

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
        "/readyz" => match readiness(
            ctx.is_importing(),
            ctx.is_draining(),
            ctx.dispatcher.any_ready(),
        ) {
            Ok(()) => plain(StatusCode::OK, "ready\n", false),
            Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, &format!("{why}\n"), false),
        },
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

/// Whether the server can take a request, or why not (the body of `/readyz`'s 503). Draining
/// comes first: a SIGTERM during the import must not read as "still importing".
pub fn readiness(
    importing: bool,
    draining: bool,
    any_worker_ready: bool,
) -> Result<(), &'static str> {
    if draining {
        Err("draining")
    } else if importing {
        Err("importing the app")
    } else if !any_worker_ready {
        Err("no worker ready")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::readiness;

    #[test]
    fn readiness_says_why_not() {
        let cases = [
            ((true, false, false), Err("importing the app")),
            ((true, true, false), Err("draining")),
            ((false, false, false), Err("no worker ready")),
            ((false, true, true), Err("draining")),
            ((false, false, true), Ok(())),
        ];
        for ((importing, draining, ready), want) in cases {
            assert_eq!(readiness(importing, draining, ready), want);
        }
    }
}
