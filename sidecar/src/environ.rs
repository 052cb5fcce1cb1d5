//! Building the CGI part of a WSGI environ from a parsed HTTP request (PEP 3333), in the
//! master. The worker only turns these byte pairs into Python strings and adds the `wsgi.*`
//! objects.
//!
//! Rules: `SCRIPT_NAME` and `PATH_INFO` are the request's [`Route`] (the root path cut from the
//! percent-decoded path: bytes, shown to Python as latin-1); `REMOTE_ADDR`, `wsgi.url_scheme`
//! (and `HTTPS=on`) and the host are the route's too, so a trusted proxy's forwarding headers
//! count; the socket's peer stays in `wsgiscale.peer_addr` and `wsgiscale.peer_port`;
//! `QUERY_STRING` stays raw; `CONTENT_TYPE`/`CONTENT_LENGTH` have no `HTTP_`
//! prefix, and `CONTENT_LENGTH` is the length of the body the master received (also for chunked
//! uploads, which it has de-chunked); other headers become `HTTP_*`, repeated ones joined with
//! `,` (cookies with `; `); header names containing `_` are dropped, since `X_Foo` and `X-Foo`
//! would otherwise collide in the environ (header spoofing, as nginx and gunicorn also do).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use http::{header, HeaderMap, Method, Uri, Version};

use crate::forwarded::Route;
use crate::proto::{self, ProtoError};

/// What the master knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address (None on a unix socket).
    pub remote: Option<SocketAddr>,
    /// The address the client connected to (None on a unix socket).
    pub local: Option<SocketAddr>,
    /// `http` or `https`.
    pub url_scheme: &'static str,
}

/// The parts of a request the environ is built from.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// Request target.
    pub uri: &'a Uri,
    /// HTTP version.
    pub version: Version,
    /// Headers as received.
    pub headers: &'a HeaderMap,
    /// Length of the received body.
    pub body_len: usize,
    /// Client, scheme, host and mount point ([`crate::forwarded::decide`]).
    pub route: &'a Route<'a>,
}

/// The percent-decoded path of `uri` (bytes; `%2F` becomes `/` as in every WSGI server).
pub fn decoded_path(uri: &Uri) -> std::borrow::Cow<'_, [u8]> {
    percent_encoding::percent_decode(uri.path().as_bytes()).into()
}

/// Calls `emit(key, value)` for every CGI environ pair of the request.
pub fn for_each_pair(req: RequestView<'_>, conn: &ConnInfo, mut emit: impl FnMut(&[u8], &[u8])) {
    let mut scratch = String::new();
    let route = req.route;
    emit(b"REQUEST_METHOD", req.method.as_str().as_bytes());
    emit(b"SCRIPT_NAME", &route.script_name);
    emit(b"PATH_INFO", route.path_info);
    emit(b"QUERY_STRING", req.uri.query().unwrap_or("").as_bytes());
    emit(b"wsgi.url_scheme", route.scheme.as_bytes());
    if route.scheme == "https" {
        emit(b"HTTPS", b"on");
    }
    emit(
        b"SERVER_PROTOCOL",
        match req.version {
            Version::HTTP_10 => b"HTTP/1.0",
            Version::HTTP_09 => b"HTTP/0.9",
            Version::HTTP_2 => b"HTTP/2.0",
            _ => b"HTTP/1.1",
        },
    );

    // SERVER_NAME / SERVER_PORT: from the route's host (a trusted proxy's), the Host header,
    // else the socket.
    let default_port = if route.scheme == "https" { "443" } else { "80" };
    let host = route.host.as_deref().or_else(|| {
        req.headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
    });
    if let Some(h) = &route.host {
        emit(b"HTTP_HOST", h.as_bytes());
    }
    match host {
        Some(h) => {
            let (name, port) = split_host_port(h);
            emit(b"SERVER_NAME", name.as_bytes());
            emit(b"SERVER_PORT", port.unwrap_or(default_port).as_bytes());
        }
        None => match conn.local {
            Some(local) => {
                emit_ip(&mut scratch, &mut emit, b"SERVER_NAME", local.ip());
                emit_int(&mut emit, b"SERVER_PORT", local.port());
            }
            None => {
                emit(b"SERVER_NAME", b"localhost");
                emit(b"SERVER_PORT", default_port.as_bytes());
            }
        },
    }
    match route.client {
        Some(client) => {
            emit_ip(&mut scratch, &mut emit, b"REMOTE_ADDR", client.ip);
            if let Some(port) = client.port {
                emit_int(&mut emit, b"REMOTE_PORT", port);
            }
        }
        None => emit(b"REMOTE_ADDR", b""),
    }
    match conn.remote {
        Some(peer) => {
            emit_ip(&mut scratch, &mut emit, b"wsgiscale.peer_addr", peer.ip());
            emit_int(&mut emit, b"wsgiscale.peer_port", peer.port());
        }
        None => emit(b"wsgiscale.peer_addr", b""),
    }

    if req.body_len > 0 || req.headers.contains_key(header::CONTENT_LENGTH) {
        emit_int(&mut emit, b"CONTENT_LENGTH", req.body_len);
    }

    let mut key: Vec<u8> = Vec::with_capacity(64);
    let mut joined: Vec<u8> = Vec::new();
    for name in req.headers.keys() {
        if *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING {
            continue;
        }
        let n = name.as_str();
        if n.contains('_') || (*name == header::HOST && route.host.is_some()) {
            continue;
        }
        key.clear();
        if *name == header::CONTENT_TYPE {
            key.extend_from_slice(b"CONTENT_TYPE");
        } else {
            key.extend_from_slice(b"HTTP_");
            key.extend(n.bytes().map(|b| match b {
                b'-' => b'_',
                b => b.to_ascii_uppercase(),
            }));
        }
        let sep: &[u8] = if *name == header::COOKIE { b"; " } else { b"," };
        let mut values = req.headers.get_all(name).iter();
        let first = values.next().map(|v| v.as_bytes()).unwrap_or(b"");
        match values.next() {
            None => emit(&key, first),
            Some(second) => {
                joined.clear();
                joined.extend_from_slice(first);
                joined.extend_from_slice(sep);
                joined.extend_from_slice(second.as_bytes());
                for v in values {
                    joined.extend_from_slice(sep);
                    joined.extend_from_slice(v.as_bytes());
                }
                emit(&key, &joined);
            }
        }
    }
}

/// Emits `ip` as its `Display` writes it; IPv4 (nearly every peer and client) without the
/// formatting machinery, which cost over a thousand instructions per address.
fn emit_ip(scratch: &mut String, emit: &mut impl FnMut(&[u8], &[u8]), key: &[u8], ip: IpAddr) {
    write_ip(scratch, ip);
    emit(key, scratch.as_bytes());
}

/// `ip` into `out` (cleared first), as `Display` writes it.
fn write_ip(out: &mut String, ip: IpAddr) {
    out.clear();
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Emits an integer in decimal.
fn emit_int(emit: &mut impl FnMut(&[u8], &[u8]), key: &[u8], n: impl itoa::Integer) {
    emit(key, itoa::Buffer::new().format(n).as_bytes());
}

/// Splits a Host header into name and optional port (`[::1]:8080`, `example.com:80`,
/// `example.com`).
fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let name = &host[..end + 2];
            let port = rest[end + 1..].strip_prefix(':').filter(|p| !p.is_empty());
            return (name, port);
        }
        return (host, None);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (name, Some(port))
        }
        _ => (host, None),
    }
}

/// Encodes the request frame (environ pairs and body) for a worker.
pub fn encode_request(
    req: RequestView<'_>,
    conn: &ConnInfo,
    body: &[u8],
    out: &mut BytesMut,
) -> Result<(), ProtoError> {
    let mut enc = proto::RequestEncoder::new(out);
    for_each_pair(req, conn, |k, v| enc.push(k, v));
    enc.finish(body)
}

/// Encodes the frame of a request whose body, `len` bytes, is in a temporary file (a
/// `RequestFile`: the file's descriptor goes to the worker with it).
pub fn encode_request_file(
    req: RequestView<'_>,
    conn: &ConnInfo,
    len: u64,
    out: &mut BytesMut,
) -> Result<(), ProtoError> {
    let mut enc = proto::RequestEncoder::new(out);
    for_each_pair(req, conn, |k, v| enc.push(k, v));
    enc.finish_file(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarded::{decide, Outcome};
    use std::collections::BTreeMap;
    use wsgiscale_core::config::ProxyConfig;

    fn environ(
        method: &str,
        target: &str,
        version: Version,
        headers: &[(&str, &str)],
        body_len: usize,
    ) -> BTreeMap<String, Vec<u8>> {
        environ_with(method, target, version, headers, body_len, "")
    }

    /// The environ of a request from 10.1.2.3:5555, with `trusted` as --forwarded-allow-ips.
    fn environ_with(
        method: &str,
        target: &str,
        version: Version,
        headers: &[(&str, &str)],
        body_len: usize,
        trusted: &str,
    ) -> BTreeMap<String, Vec<u8>> {
        let method: Method = method.parse().expect("method");
        let uri: Uri = target.parse().expect("uri");
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        let conn = ConnInfo {
            remote: Some("10.1.2.3:5555".parse().expect("addr")),
            local: Some("127.0.0.1:8000".parse().expect("addr")),
            url_scheme: "http",
        };
        let mut out = BTreeMap::new();
        let policy = ProxyConfig {
            trusted: trusted.parse().expect("valid list"),
            ..ProxyConfig::default()
        };
        let path = decoded_path(&uri);
        let Outcome::Serve(route) = decide(conn.remote, conn.url_scheme, &map, &path, &policy)
        else {
            panic!("no root path, so every request is served");
        };
        let view = RequestView {
            method: &method,
            uri: &uri,
            version,
            headers: &map,
            body_len,
            route: &route,
        };
        for_each_pair(view, &conn, |k, v| {
            let prev = out.insert(
                String::from_utf8(k.to_vec()).expect("ascii key"),
                v.to_vec(),
            );
            assert!(prev.is_none(), "key emitted twice");
        });
        out
    }

    fn get<'a>(env: &'a BTreeMap<String, Vec<u8>>, k: &str) -> Option<&'a [u8]> {
        env.get(k).map(|v| &v[..])
    }

    proptest::proptest! {
        /// Every address is written as `Display` writes it.
        #[test]
        fn addresses_are_written_as_display_writes_them(a in proptest::prelude::any::<u32>(), b in proptest::prelude::any::<u128>()) {
            let mut out = String::from("stale");
            for ip in [IpAddr::V4(a.into()), IpAddr::V6(b.into())] {
                write_ip(&mut out, ip);
                proptest::prop_assert_eq!(&out, &ip.to_string());
            }
        }
    }

    #[test]
    fn basic_cgi_keys() {
        let env = environ(
            "GET",
            "/caf%C3%A9/a%2Fb?x=%20y&z",
            Version::HTTP_11,
            &[("host", "example.com:8080")],
            0,
        );
        assert_eq!(get(&env, "REQUEST_METHOD"), Some(&b"GET"[..]));
        assert_eq!(get(&env, "SCRIPT_NAME"), Some(&b""[..]));
        assert_eq!(get(&env, "PATH_INFO"), Some("/café/a/b".as_bytes()));
        assert_eq!(get(&env, "QUERY_STRING"), Some(&b"x=%20y&z"[..]));
        assert_eq!(get(&env, "SERVER_NAME"), Some(&b"example.com"[..]));
        assert_eq!(get(&env, "SERVER_PORT"), Some(&b"8080"[..]));
        assert_eq!(get(&env, "SERVER_PROTOCOL"), Some(&b"HTTP/1.1"[..]));
        assert_eq!(get(&env, "REMOTE_ADDR"), Some(&b"10.1.2.3"[..]));
        assert_eq!(get(&env, "REMOTE_PORT"), Some(&b"5555"[..]));
        assert_eq!(get(&env, "HTTP_HOST"), Some(&b"example.com:8080"[..]));
        assert_eq!(get(&env, "CONTENT_LENGTH"), None);
        assert_eq!(get(&env, "wsgi.url_scheme"), Some(&b"http"[..]));
    }

    #[test]
    fn content_headers_and_joining() {
        let env = environ(
            "POST",
            "/",
            Version::HTTP_10,
            &[
                ("content-type", "text/plain"),
                ("content-length", "5"),
                ("x-multi", "a"),
                ("x-multi", "b"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
                ("x_spoof", "evil"),
                ("transfer-encoding", "chunked"),
            ],
            5,
        );
        assert_eq!(get(&env, "CONTENT_TYPE"), Some(&b"text/plain"[..]));
        assert_eq!(get(&env, "CONTENT_LENGTH"), Some(&b"5"[..]));
        assert_eq!(get(&env, "HTTP_CONTENT_TYPE"), None);
        assert_eq!(get(&env, "HTTP_CONTENT_LENGTH"), None);
        assert_eq!(get(&env, "HTTP_X_MULTI"), Some(&b"a,b"[..]));
        assert_eq!(get(&env, "HTTP_COOKIE"), Some(&b"a=1; b=2"[..]));
        assert_eq!(get(&env, "HTTP_X_SPOOF"), None);
        assert_eq!(get(&env, "HTTP_TRANSFER_ENCODING"), None);
        assert_eq!(get(&env, "SERVER_PROTOCOL"), Some(&b"HTTP/1.0"[..]));
        // No Host: the socket's address.
        assert_eq!(get(&env, "SERVER_NAME"), Some(&b"127.0.0.1"[..]));
        assert_eq!(get(&env, "SERVER_PORT"), Some(&b"8000"[..]));
    }

    #[test]
    fn host_forms() {
        let cases = [
            ("example.com", ("example.com", None)),
            ("example.com:81", ("example.com", Some("81"))),
            ("[::1]:8080", ("[::1]", Some("8080"))),
            ("[::1]", ("[::1]", None)),
            ("weird:", ("weird:", None)),
        ];
        for (host, want) in cases {
            assert_eq!(split_host_port(host), want, "{host}");
        }
    }

    #[test]
    fn the_peer_stays_available_and_a_trusted_proxy_sets_client_scheme_and_host() {
        let forwarded = [
            ("host", "pod:8000"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example"),
        ];
        let env = environ_with("GET", "/", Version::HTTP_11, &forwarded, 0, "10.0.0.0/8");
        assert_eq!(get(&env, "REMOTE_ADDR"), Some(&b"203.0.113.9"[..]));
        assert_eq!(get(&env, "REMOTE_PORT"), None);
        assert_eq!(get(&env, "wsgiscale.peer_addr"), Some(&b"10.1.2.3"[..]));
        assert_eq!(get(&env, "wsgiscale.peer_port"), Some(&b"5555"[..]));
        assert_eq!(get(&env, "wsgi.url_scheme"), Some(&b"https"[..]));
        assert_eq!(get(&env, "HTTPS"), Some(&b"on"[..]));
        assert_eq!(get(&env, "HTTP_HOST"), Some(&b"shop.example"[..]));
        assert_eq!(get(&env, "SERVER_NAME"), Some(&b"shop.example"[..]));
        assert_eq!(get(&env, "SERVER_PORT"), Some(&b"443"[..]));
        assert_eq!(get(&env, "HTTP_X_FORWARDED_FOR"), Some(&b"203.0.113.9"[..]));
        // The same request from a peer nobody trusts: the headers pass, nothing changes.
        let env = environ_with("GET", "/", Version::HTTP_11, &forwarded, 0, "");
        assert_eq!(get(&env, "REMOTE_ADDR"), Some(&b"10.1.2.3"[..]));
        assert_eq!(get(&env, "REMOTE_PORT"), Some(&b"5555"[..]));
        assert_eq!(get(&env, "wsgi.url_scheme"), Some(&b"http"[..]));
        assert_eq!(get(&env, "HTTPS"), None);
        assert_eq!(get(&env, "HTTP_HOST"), Some(&b"pod:8000"[..]));
        assert_eq!(get(&env, "SERVER_NAME"), Some(&b"pod"[..]));
        assert_eq!(get(&env, "HTTP_X_FORWARDED_PROTO"), Some(&b"https"[..]));
    }

    #[test]
    fn latin1_bytes_survive_in_path() {
        let env = environ("GET", "/%FF%00x", Version::HTTP_11, &[], 0);
        assert_eq!(get(&env, "PATH_INFO"), Some(&b"/\xff\x00x"[..]));
    }

    #[test]
    fn encoded_frame_decodes_to_the_same_pairs() {
        let method = Method::PUT;
        let uri: Uri = "/p?q".parse().expect("uri");
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "h".parse().expect("value"));
        let conn = ConnInfo {
            remote: None,
            local: None,
            url_scheme: "https",
        };
        let route = Route {
            trusted: true,
            client: None,
            scheme: "https",
            host: None,
            script_name: std::borrow::Cow::Borrowed(b"/mnt"),
            path_info: b"/p",
        };
        let view = RequestView {
            method: &method,
            uri: &uri,
            version: Version::HTTP_11,
            headers: &headers,
            body_len: 3,
            route: &route,
        };
        let mut buf = BytesMut::new();
        encode_request(view, &conn, b"abc", &mut buf).expect("encodes");
        let frame = proto::decode(&mut buf, 1 << 20)
            .expect("valid")
            .expect("complete");
        let mut want = Vec::new();
        for_each_pair(view, &conn, |k, v| want.push((k.to_vec(), v.to_vec())));
        match frame {
            proto::Frame::Request { env, body, .. } => {
                let got: Vec<_> = env.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
                assert_eq!(got, want);
                assert_eq!(&body[..], b"abc");
                assert!(got.contains(&(b"SERVER_PORT".to_vec(), b"443".to_vec())));
                assert!(got.contains(&(b"REMOTE_ADDR".to_vec(), b"".to_vec())));
                assert!(got.contains(&(b"SCRIPT_NAME".to_vec(), b"/mnt".to_vec())));
                assert!(got.contains(&(b"HTTPS".to_vec(), b"on".to_vec())));
            }
            other => panic!("expected request, got {other:?}"),
        }
    }
}
