//! What the trusted-proxy handling costs per request, in isolation: the route decision
//! (`forwarded::decide`), the head limits check and the environ built from the route, for the
//! request bench/run.py's proxy scenarios send (wrk's headers plus four X-Forwarded-*),
//! from a trusted peer ("on") and from an untrusted one ("off"). Nanoseconds per request, the
//! best of several interleaved runs (the least disturbed by other work on the machine).
//!
//!     cargo bench -p wsgiscale-sidecar --bench front_cost
//!
//! With `on` or `off` as its argument the binary runs that variant alone, once: under
//! `valgrind --tool=callgrind` the two counts of instructions give the difference per request
//! without the noise of a shared machine.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use wsgiscale_core::config::{HeaderLimits, ProxyConfig};
use wsgiscale_sidecar::environ::{decoded_path, for_each_pair, ConnInfo, RequestView};
use wsgiscale_sidecar::forwarded::{decide, Outcome};
use wsgiscale_sidecar::limits::check_head;

const N: u32 = 100_000;
const RUNS: usize = 25;

fn one(headers: &HeaderMap, uri: &Uri, conn: &ConnInfo, policy: &ProxyConfig) -> usize {
    let limits = HeaderLimits {
        request_line: 16 << 10,
        fields: 100,
        field_size: 32 << 10,
        headers_size: 64 << 10,
    };
    check_head(&Method::GET, uri, headers, &limits).unwrap();
    let path = decoded_path(uri);
    let Outcome::Serve(route) = decide(conn.remote, conn.url_scheme, headers, &path, policy) else {
        unreachable!("no root path")
    };
    let view = RequestView {
        method: &Method::GET,
        uri,
        version: Version::HTTP_11,
        headers,
        body_len: 0,
        route: &route,
    };
    let mut bytes = 0;
    for_each_pair(view, conn, |k, v| bytes += k.len() + v.len());
    bytes
}

fn main() {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1:8000"),
        ("x-forwarded-for", "198.51.100.7, 203.0.113.9"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "bench.example.com"),
        ("x-forwarded-port", "443"),
    ] {
        headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    let uri: Uri = "/".parse().unwrap();
    let conn = ConnInfo {
        remote: Some("127.0.0.1:40000".parse().unwrap()),
        local: Some("127.0.0.1:8000".parse().unwrap()),
        url_scheme: "http",
    };
    let on = ProxyConfig {
        trusted: "127.0.0.1,::1".parse().unwrap(),
        ..ProxyConfig::default()
    };
    let off = ProxyConfig::default();
    if let Some(variant) = std::env::args().skip(1).find(|a| a == "on" || a == "off") {
        let policy = if variant == "on" { &on } else { &off };
        let mut sink = 0;
        for _ in 0..N {
            sink += one(black_box(&headers), &uri, &conn, black_box(policy));
        }
        println!("{variant}: {N} requests ({sink} environ bytes)");
        return;
    }
    let mut best = [f64::MAX; 2];
    for _ in 0..RUNS {
        for (i, policy) in [&on, &off].into_iter().enumerate() {
            let t = Instant::now();
            let mut sink = 0;
            for _ in 0..N {
                sink += one(black_box(&headers), &uri, &conn, black_box(policy));
            }
            black_box(sink);
            best[i] = best[i].min(t.elapsed().as_nanos() as f64 / f64::from(N));
        }
    }
    println!(
        "per request (limits + route + environ): proxy headers read (trusted peer) {:.0} ns, ignored (untrusted peer) {:.0} ns, difference {:.0} ns",
        best[0],
        best[1],
        best[0] - best[1]
    );
}
