//! Which client, scheme, host and mount point a request has: the connection's own, or what a
//! trusted proxy says in its forwarding headers. [`decide`] is pure (peer + headers + settings
//! -> [`Route`]); the front calls it once per request and the environ and the access log read
//! the result.
//!
//! Rules:
//! - A peer is trusted when it connected over a unix socket or its address is in
//!   `--forwarded-allow-ips`. An untrusted peer's forwarding headers reach the app untouched
//!   (as `HTTP_X_FORWARDED_FOR`, ...) and change nothing.
//! - The client is found by walking the hops the trusted proxies appended (`X-Forwarded-For`,
//!   or the `for=` of RFC 7239 `Forwarded`) from the right: the first address that is not
//!   trusted is the client. Everything left of it was written by the client or by proxies we
//!   do not trust, so a client cannot forge its address by sending the header itself. A hop
//!   that is not an address (`unknown`, an obfuscated `_name`, garbage) stops the walk: the
//!   client is then the last trusted address. When every hop is trusted, the leftmost is the
//!   client.
//! - With `x-forwarded`, the scheme, host and port are the rightmost values of
//!   `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Forwarded-Port` (what the nearest proxy
//!   set). With `forwarded`, they are the `proto=` and `host=` of the element that named the
//!   client (the element the proxy that received the client's request wrote).
//! - `X-Forwarded-Prefix` (the prefix a trusted proxy cut from the path) is prepended to
//!   `SCRIPT_NAME`; a trusted `SCRIPT_NAME` header (as gunicorn reads it) replaces
//!   `--root-path` for its request: the prefix is cut from `PATH_INFO` on a segment boundary.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use http::{header, HeaderMap, HeaderName};
use wsgiscale_core::config::{ForwardedHeaders, OutsideRootPath, ProxyConfig, UrlPrefix};

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Port`.
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
/// `X-Forwarded-Prefix`.
pub static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
/// The `SCRIPT_NAME` header a proxy may send (gunicorn's `forwarder_headers`).
pub static SCRIPT_NAME: HeaderName = HeaderName::from_static("script_name");

/// The client as the request's route names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// Its address.
    pub ip: IpAddr,
    /// Its port, when known (the peer's own, or a `Forwarded` `for="[::1]:4711"`).
    pub port: Option<u16>,
}

/// What a request is, once the trusted proxies have had their say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// Whether the peer's forwarding headers were read.
    pub trusted: bool,
    /// The client (`REMOTE_ADDR`); None for a unix-socket peer no proxy named one for.
    pub client: Option<Client>,
    /// `http` or `https` (`wsgi.url_scheme`).
    pub scheme: &'static str,
    /// The host (and port) the client asked for, when a proxy said so: it replaces the Host
    /// header in `HTTP_HOST`, `SERVER_NAME` and `SERVER_PORT`.
    pub host: Option<Cow<'a, str>>,
    /// `SCRIPT_NAME`, percent-decoded bytes.
    pub script_name: Cow<'a, [u8]>,
    /// `PATH_INFO`, percent-decoded bytes.
    pub path_info: &'a [u8],
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// To the app (or a static mount), with this route.
    Serve(Route<'a>),
    /// Nowhere: its path is outside the root path and `--outside-root-path` is `not-found`.
    OutsideRootPath {
        /// The root path it missed.
        root: String,
        /// The client, for the access log.
        client: Option<Client>,
    },
}

impl Outcome<'_> {
    /// The client, whichever the outcome.
    pub fn client(&self) -> Option<Client> {
        match self {
            Outcome::Serve(r) => r.client,
            Outcome::OutsideRootPath { client, .. } => *client,
        }
    }
}

/// Decides the route of a request that came from `peer` (None: a unix socket) on a
/// connection of scheme `conn_scheme`, with `headers` and the percent-decoded `path`.
pub fn decide<'a>(
    peer: Option<SocketAddr>,
    conn_scheme: &'static str,
    headers: &'a HeaderMap,
    path: &'a [u8],
    policy: &'a ProxyConfig,
) -> Outcome<'a> {
    let peer_client = peer.map(|p| Client {
        ip: p.ip(),
        port: Some(p.port()),
    });
    let trusted = peer.is_none_or(|p| policy.trusted.contains(p.ip()));
    if !trusted {
        return mount(
            Route {
                trusted,
                client: peer_client,
                scheme: conn_scheme,
                host: None,
                script_name: Cow::Borrowed(&[]),
                path_info: path,
            },
            None,
            None,
            policy,
        );
    }
    let found = Found::gather(headers);
    let said = match policy.headers {
        ForwardedHeaders::XForwarded => read_x_forwarded(headers, &found, policy),
        ForwardedHeaders::Forwarded => read_forwarded(headers, &found, policy),
    };
    let scheme = said.scheme.unwrap_or(conn_scheme);
    let host = match (said.host, said.port) {
        (None, None) => None,
        (host, port) => host
            .or_else(|| {
                headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(Cow::Borrowed)
            })
            .map(|h| with_port(h, port, scheme)),
    };
    let prefix = found
        .last_element(headers, Field::Prefix)
        .and_then(|p| p.parse().ok());
    let script_name = found
        .first(headers, Field::ScriptName)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<UrlPrefix>().ok());
    mount(
        Route {
            trusted,
            client: said.client.or(peer_client),
            scheme,
            host,
            script_name: Cow::Borrowed(&[]),
            path_info: path,
        },
        prefix,
        script_name,
        policy,
    )
}

/// Applies the root path (a trusted `SCRIPT_NAME` header's, else `--root-path`) and a trusted
/// `X-Forwarded-Prefix` to a route whose `path_info` is still the whole path.
fn mount<'a>(
    mut route: Route<'a>,
    forwarded_prefix: Option<UrlPrefix>,
    script_name: Option<UrlPrefix>,
    policy: &'a ProxyConfig,
) -> Outcome<'a> {
    let path = route.path_info;
    let (root, rest): (Cow<'_, str>, _) = match &script_name {
        Some(header) => (Cow::Owned(header.as_str().to_string()), header.strip(path)),
        None => (
            Cow::Borrowed(policy.root_path.as_str()),
            policy.root_path.strip(path),
        ),
    };
    let (mounted_at, path_info): (Cow<'_, str>, &[u8]) = match rest {
        Some(rest) => (root, rest),
        None => match policy.outside_root_path {
            OutsideRootPath::NotFound => {
                return Outcome::OutsideRootPath {
                    root: root.into_owned(),
                    client: route.client,
                }
            }
            OutsideRootPath::Pass => (Cow::Borrowed(""), path),
        },
    };
    route.path_info = path_info;
    route.script_name = match (forwarded_prefix, mounted_at) {
        (None, Cow::Borrowed(r)) => Cow::Borrowed(r.as_bytes()),
        (None, Cow::Owned(r)) => Cow::Owned(r.into_bytes()),
        (Some(p), r) => Cow::Owned(format!("{}{r}", p.as_str()).into_bytes()),
    };
    Outcome::Serve(route)
}

/// What a trusted proxy's headers said.
#[derive(Debug, Default)]
struct Said<'h> {
    client: Option<Client>,
    scheme: Option<&'static str>,
    host: Option<Cow<'h, str>>,
    port: Option<u16>,
}

/// The forwarding headers a request has.
#[derive(Debug, Clone, Copy)]
enum Field {
    For,
    Proto,
    Host,
    Port,
    Prefix,
    ScriptName,
    Forwarded,
}

impl Field {
    fn name(self) -> &'static HeaderName {
        match self {
            Field::For => &X_FORWARDED_FOR,
            Field::Proto => &X_FORWARDED_PROTO,
            Field::Host => &X_FORWARDED_HOST,
            Field::Port => &X_FORWARDED_PORT,
            Field::Prefix => &X_FORWARDED_PREFIX,
            Field::ScriptName => &SCRIPT_NAME,
            Field::Forwarded => &header::FORWARDED,
        }
    }
}

/// Where a request's forwarding headers are, found in one pass over its headers: a lookup per
/// name would hash each of these non-standard names byte by byte, several times the cost.
#[derive(Debug, Default)]
struct Found<'h> {
    /// Per [`Field`]: how many lines (up to 2: one or more than one) and the last one.
    slots: [(u8, Option<&'h http::HeaderValue>); 7],
}

impl<'h> Found<'h> {
    fn gather(headers: &'h HeaderMap) -> Found<'h> {
        let mut found = Found::default();
        for (name, value) in headers {
            let field = match name.as_str() {
                "x-forwarded-for" => Field::For,
                "x-forwarded-proto" => Field::Proto,
                "x-forwarded-host" => Field::Host,
                "x-forwarded-port" => Field::Port,
                "x-forwarded-prefix" => Field::Prefix,
                "script_name" => Field::ScriptName,
                "forwarded" => Field::Forwarded,
                _ => continue,
            };
            let slot = &mut found.slots[field as usize];
            slot.0 = (slot.0 + 1).min(2);
            slot.1 = Some(value);
        }
        found
    }

    /// The elements of `field`, the rightmost first (see [`elements_rev`]).
    fn elements_rev(&self, headers: &'h HeaderMap, field: Field) -> impl Iterator<Item = &'h str> {
        let (one, all) = match self.slots[field as usize] {
            (1, Some(only)) => (Some(only), None),
            (2, Some(_)) => (None, Some(field.name())),
            _ => (None, None),
        };
        one.into_iter()
            .flat_map(split_rev)
            .chain(all.into_iter().flat_map(|name| elements_rev(headers, name)))
    }

    /// The rightmost element of `field` (the nearest proxy's).
    fn last_element(&self, headers: &'h HeaderMap, field: Field) -> Option<&'h str> {
        match self.slots[field as usize] {
            (0, _) | (_, None) => None,
            (1, Some(only)) => split_rev(only).next(),
            _ => elements_rev(headers, field.name()).next(),
        }
    }

    /// The first line of `field`.
    fn first(&self, headers: &'h HeaderMap, field: Field) -> Option<&'h http::HeaderValue> {
        match self.slots[field as usize] {
            (0, _) | (_, None) => None,
            (1, only) => only,
            _ => headers.get(field.name()),
        }
    }
}

fn read_x_forwarded<'h>(
    headers: &'h HeaderMap,
    found: &Found<'h>,
    policy: &ProxyConfig,
) -> Said<'h> {
    let (client, _) = walk(
        found.elements_rev(headers, Field::For).map(parse_node),
        policy,
    );
    Said {
        client,
        scheme: found.last_element(headers, Field::Proto).and_then(scheme),
        host: found
            .last_element(headers, Field::Host)
            .filter(|h| valid_host(h))
            .map(Cow::Borrowed),
        port: found
            .last_element(headers, Field::Port)
            .and_then(|p| p.parse().ok()),
    }
}

fn read_forwarded<'h>(headers: &'h HeaderMap, found: &Found<'h>, policy: &ProxyConfig) -> Said<'h> {
    if found.first(headers, Field::Forwarded).is_none() {
        return Said::default();
    }
    // Parsed only in this mode, and only from a trusted peer.
    let elements: Vec<Element> = headers
        .get_all(header::FORWARDED)
        .iter()
        .flat_map(|v| parse_forwarded(v.as_bytes()))
        .collect();
    let (client, at) = walk(elements.iter().rev().map(|e| e.for_), policy);
    let Some(element) = at
        .and_then(|i| elements.len().checked_sub(i + 1))
        .map(|i| &elements[i])
    else {
        return Said::default();
    };
    let host = element
        .host
        .clone()
        .filter(|h| valid_host(h))
        .map(Cow::Owned);
    Said {
        client,
        scheme: element.proto.as_deref().and_then(scheme),
        host,
        port: None,
    }
}

/// Walks the hops from the right (the nearest proxy's first): returns the client and how
/// many hops from the right the walk stopped at (0: the rightmost; the leftmost when every
/// hop is trusted). None, None for no hops.
fn walk(
    hops_from_right: impl Iterator<Item = Option<Client>>,
    policy: &ProxyConfig,
) -> (Option<Client>, Option<usize>) {
    let mut client = None;
    let mut at = None;
    for (i, hop) in hops_from_right.enumerate() {
        at = Some(i);
        match hop {
            Some(c) => {
                client = Some(c);
                if !policy.trusted.contains(c.ip) {
                    break;
                }
            }
            None => break,
        }
    }
    (client, at)
}

/// The comma-separated elements of every line of header `name`, the rightmost first,
/// trimmed, empty ones skipped.
fn elements_rev<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h str> {
    headers.get_all(name).iter().rev().flat_map(split_rev)
}

/// The comma-separated elements of one header line, the rightmost first, trimmed, empty ones
/// skipped; a line that is not visible ASCII has none.
fn split_rev(value: &http::HeaderValue) -> RevElements<'_> {
    RevElements {
        rest: value.to_str().ok(),
    }
}

/// [`split_rev`]'s iterator. A plain backwards scan for the comma: these lines are tens of
/// bytes, where `str::rsplit` (a `memrchr` per element, set up for long haystacks) costs
/// several times as many instructions (callgrind, the proxy-hello requests: about 900 of the
/// 2,100 the trusted-proxy handling added per request).
struct RevElements<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for RevElements<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            let rest = self.rest?;
            // ',' is ASCII: both cuts are on character boundaries.
            let (element, more) = match rest.as_bytes().iter().rposition(|&b| b == b',') {
                Some(i) => (&rest[i + 1..], Some(&rest[..i])),
                None => (rest, None),
            };
            self.rest = more;
            let element = element.trim_ascii();
            if !element.is_empty() {
                return Some(element);
            }
        }
    }
}

fn scheme(s: &str) -> Option<&'static str> {
    if s.eq_ignore_ascii_case("https") {
        Some("https")
    } else if s.eq_ignore_ascii_case("http") {
        Some("http")
    } else {
        None
    }
}

/// A host as a Host header holds it: a name or address, optionally `:port`.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes().all(|b| {
            matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b':' | b'[' | b']')
        })
}

/// `host` with its port replaced by `port` (dropped when it is the scheme's default).
fn with_port<'h>(host: Cow<'h, str>, port: Option<u16>, scheme: &str) -> Cow<'h, str> {
    let Some(port) = port else {
        return host;
    };
    // A backwards scan, not `rsplit_once` (a `memrchr` set up for long haystacks).
    let bytes = host.as_bytes();
    let name_len = match bytes.iter().rposition(|&b| b == b':') {
        Some(i) if !host.ends_with(']') && bytes[i + 1..].iter().all(u8::is_ascii_digit) => i,
        _ => host.len(),
    };
    let default = if scheme == "https" { 443 } else { 80 };
    if port != default {
        return Cow::Owned(format!("{}:{port}", &host[..name_len]));
    }
    match host {
        Cow::Borrowed(h) => Cow::Borrowed(&h[..name_len]),
        Cow::Owned(mut h) => {
            h.truncate(name_len);
            Cow::Owned(h)
        }
    }
}

/// A hop as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]`, `[::1]:5678`
/// (quotes around it allowed). Anything else (`unknown`, `_hidden`) is None.
fn parse_node(s: &str) -> Option<Client> {
    let s = s.trim_ascii().trim_matches('"');
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: IpAddr = ip.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return ip.is_ipv6().then_some(Client { ip, port });
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(Client { ip, port: None });
    }
    let (ip, port) = s.rsplit_once(':')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    Some(Client {
        ip: IpAddr::V4(ip),
        port: Some(port.parse().ok()?),
    })
}

/// One element of an RFC 7239 `Forwarded` header.
#[derive(Debug, Default, PartialEq, Eq)]
struct Element {
    for_: Option<Client>,
    proto: Option<String>,
    host: Option<String>,
}

/// Parses a `Forwarded` value: elements separated by `,`, pairs by `;`, values tokens or
/// quoted strings (whose `,` and `;` are not separators). A pair that is not `name=value`
/// is ignored; an element without `for=` names no client (and so stops the walk).
fn parse_forwarded(value: &[u8]) -> Vec<Element> {
    let mut out = Vec::new();
    let mut element = Element::default();
    let mut any = false;
    let mut pair: Vec<u8> = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let finish_pair = |pair: &mut Vec<u8>, element: &mut Element, any: &mut bool| {
        if let Some((name, val)) = split_pair(pair) {
            *any = true;
            match name.to_ascii_lowercase().as_str() {
                "for" => element.for_ = parse_node(&val),
                "proto" => element.proto = Some(val),
                "host" => element.host = Some(val),
                _ => {}
            }
        }
        pair.clear();
    };
    for &b in value {
        if quoted {
            if escaped {
                escaped = false;
                pair.push(b);
            } else if b == b'\\' {
                escaped = true;
            } else {
                if b == b'"' {
                    quoted = false;
                }
                pair.push(b);
            }
            continue;
        }
        match b {
            b'"' => {
                quoted = true;
                pair.push(b);
            }
            b';' => finish_pair(&mut pair, &mut element, &mut any),
            b',' => {
                finish_pair(&mut pair, &mut element, &mut any);
                if any {
                    out.push(std::mem::take(&mut element));
                }
                any = false;
            }
            _ => pair.push(b),
        }
    }
    finish_pair(&mut pair, &mut element, &mut any);
    if any {
        out.push(element);
    }
    out
}

/// `name=value` -> (name, value without its quotes); None when it is not a pair.
fn split_pair(pair: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(pair).ok()?.trim();
    let (name, value) = text.split_once('=')?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    Some((name.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(trusted: &str, headers: ForwardedHeaders) -> ProxyConfig {
        ProxyConfig {
            trusted: trusted.parse().expect("valid list"),
            headers,
            root_path: UrlPrefix::default(),
            outside_root_path: OutsideRootPath::NotFound,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_bytes(v.as_bytes()).expect("value"),
            );
        }
        map
    }

    fn peer(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("socket address"))
    }

    fn serve<'a>(
        p: Option<SocketAddr>,
        h: &'a HeaderMap,
        path: &'a [u8],
        pol: &'a ProxyConfig,
    ) -> Route<'a> {
        match decide(p, "http", h, path, pol) {
            Outcome::Serve(r) => r,
            other => panic!("expected a route, got {other:?}"),
        }
    }

    fn ip(c: Option<Client>) -> String {
        c.map_or("-".into(), |c| c.ip.to_string())
    }

    const LB: &str = "10.0.0.2:40000";

    #[test]
    fn x_forwarded_for_takes_the_rightmost_untrusted_address() {
        let pol = policy("10.0.0.0/8", ForwardedHeaders::XForwarded);
        let cases = [
            // (X-Forwarded-For, client)
            ("203.0.113.9", "203.0.113.9"),
            // A client's forged entry sits left of the one the proxy appended.
            ("1.1.1.1, 203.0.113.9", "203.0.113.9"),
            // Several trusted proxies: skip them.
            ("203.0.113.9, 10.1.1.1, 10.2.2.2", "203.0.113.9"),
            // Every hop trusted: the leftmost.
            ("10.3.3.3, 10.1.1.1", "10.3.3.3"),
            // Garbage stops the walk at the last trusted hop.
            ("1.1.1.1, unknown, 10.1.1.1", "10.1.1.1"),
            ("1.1.1.1, nonsense", "10.0.0.2"),
            // Ports and brackets.
            ("203.0.113.9:5555", "203.0.113.9"),
            ("[2001:db8::1]:5555", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
        ];
        for (xff, want) in cases {
            let h = headers(&[("x-forwarded-for", xff)]);
            let r = serve(peer(LB), &h, b"/", &pol);
            assert_eq!(ip(r.client), want, "{xff}");
            assert!(r.trusted);
        }
        // Two header lines are one list, in order.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.9, 10.1.1.1"),
        ]);
        assert_eq!(ip(serve(peer(LB), &h, b"/", &pol).client), "203.0.113.9");
    }

    #[test]
    fn an_untrusted_peer_changes_nothing() {
        let pol = policy("10.0.0.0/8", ForwardedHeaders::XForwarded);
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-prefix", "/evil"),
            ("script_name", "/admin"),
            ("forwarded", "for=1.2.3.4;proto=https"),
        ]);
        let r = serve(peer("198.51.100.7:1234"), &h, b"/admin/x", &pol);
        assert!(!r.trusted);
        assert_eq!(
            r.client,
            Some(Client {
                ip: "198.51.100.7".parse().expect("ip"),
                port: Some(1234)
            })
        );
        assert_eq!(r.scheme, "http");
        assert_eq!(r.host, None);
        assert_eq!(&r.script_name[..], b"");
        assert_eq!(r.path_info, b"/admin/x");
    }

    #[test]
    fn proto_host_port_and_prefix_from_a_trusted_proxy() {
        let pol = policy("10.0.0.0/8", ForwardedHeaders::XForwarded);
        let h = headers(&[
            ("host", "app.internal:8000"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "http, HTTPS"),
            ("x-forwarded-host", "shop.example.com"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/shop/"),
        ]);
        let r = serve(peer(LB), &h, b"/cart", &pol);
        assert_eq!(r.scheme, "https");
        assert_eq!(r.host.as_deref(), Some("shop.example.com"));
        assert_eq!(&r.script_name[..], b"/shop");
        assert_eq!(r.path_info, b"/cart");
        // A port alone replaces the Host header's; a non-default one is kept.
        let h = headers(&[("host", "app.internal:8000"), ("x-forwarded-port", "8443")]);
        assert_eq!(
            serve(peer(LB), &h, b"/", &pol).host.as_deref(),
            Some("app.internal:8443")
        );
        // Values that are not what they claim are ignored.
        let h = headers(&[
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "bad host/"),
            ("x-forwarded-port", "99999"),
            ("x-forwarded-prefix", "no-slash"),
        ]);
        let r = serve(peer(LB), &h, b"/", &pol);
        assert_eq!(
            (r.scheme, r.host, &r.script_name[..]),
            ("http", None, &b""[..])
        );
    }

    #[test]
    fn rfc7239_forwarded_names_client_proto_and_host_in_one_element() {
        let pol = policy("10.0.0.0/8", ForwardedHeaders::Forwarded);
        let h = headers(&[
            (
                "forwarded",
                "for=1.1.1.1;proto=http, for=\"[2001:db8::7]:4711\";proto=https;host=\"a.example\"",
            ),
            ("forwarded", "For=10.9.9.9;proto=http;by=10.0.0.2"),
            // The other family changes nothing in this mode.
            ("x-forwarded-for", "5.5.5.5"),
            ("x-forwarded-proto", "http"),
        ]);
        let r = serve(peer(LB), &h, b"/", &pol);
        assert_eq!(
            r.client,
            Some(Client {
                ip: "2001:db8::7".parse().expect("ip"),
                port: Some(4711)
            })
        );
        assert_eq!(r.scheme, "https");
        assert_eq!(r.host.as_deref(), Some("a.example"));
        // Quoted separators do not split; an element without for= stops the walk.
        assert_eq!(
            parse_forwarded(b"for=\"_a,b;c\";proto=https, proto=http"),
            vec![
                Element {
                    for_: None,
                    proto: Some("https".into()),
                    host: None
                },
                Element {
                    for_: None,
                    proto: Some("http".into()),
                    host: None
                },
            ]
        );
        let h = headers(&[("forwarded", "for=1.1.1.1, proto=https")]);
        let r = serve(peer(LB), &h, b"/", &pol);
        assert_eq!(ip(r.client), "10.0.0.2");
        assert_eq!(r.scheme, "https");
        // In x-forwarded mode a Forwarded header changes nothing.
        let pol = policy("10.0.0.0/8", ForwardedHeaders::XForwarded);
        let h = headers(&[("forwarded", "for=1.1.1.1;proto=https")]);
        let r = serve(peer(LB), &h, b"/", &pol);
        assert_eq!((ip(r.client).as_str(), r.scheme), ("10.0.0.2", "http"));
    }

    #[test]
    fn unix_socket_peers_are_trusted_and_may_have_no_client() {
        let pol = policy("", ForwardedHeaders::XForwarded);
        let none = HeaderMap::new();
        let r = serve(None, &none, b"/", &pol);
        assert!(r.trusted);
        assert_eq!(r.client, None);
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(ip(serve(None, &h, b"/", &pol).client), "203.0.113.9");
        // The empty list trusts no TCP peer, loopback included.
        let r = serve(peer("127.0.0.1:5"), &h, b"/", &pol);
        assert!(!r.trusted);
    }

    #[test]
    fn root_path_is_cut_on_a_segment_boundary() {
        let mut pol = policy("", ForwardedHeaders::XForwarded);
        pol.root_path = "/app".parse().expect("prefix");
        let h = HeaderMap::new();
        let p = peer("127.0.0.1:5");
        for (path, script, info) in [
            (&b"/app"[..], &b"/app"[..], &b""[..]),
            (b"/app/", b"/app", b"/"),
            (b"/app/x/y", b"/app", b"/x/y"),
        ] {
            let r = serve(p, &h, path, &pol);
            assert_eq!((&r.script_name[..], r.path_info), (script, info));
        }
        for outside in [&b"/apple"[..], b"/", b"/ap", b"/other/app"] {
            assert_eq!(
                decide(p, "http", &h, outside, &pol),
                Outcome::OutsideRootPath {
                    root: "/app".into(),
                    client: p.map(|a| Client {
                        ip: a.ip(),
                        port: Some(a.port())
                    })
                }
            );
        }
        pol.outside_root_path = OutsideRootPath::Pass;
        let r = serve(p, &h, b"/apple", &pol);
        assert_eq!(
            (&r.script_name[..], r.path_info),
            (&b""[..], &b"/apple"[..])
        );
    }

    #[test]
    fn a_script_name_header_counts_only_from_a_trusted_peer() {
        let mut pol = policy("10.0.0.0/8", ForwardedHeaders::XForwarded);
        pol.root_path = "/app".parse().expect("prefix");
        let h = headers(&[("script_name", "/admin")]);
        // Trusted: it replaces --root-path for this request.
        let r = serve(peer(LB), &h, b"/admin/users", &pol);
        assert_eq!(
            (&r.script_name[..], r.path_info),
            (&b"/admin"[..], &b"/users"[..])
        );
        // Untrusted (gunicorn #2650): ignored, and the path is judged against /app.
        assert!(matches!(
            decide(peer("8.8.8.8:1"), "http", &h, b"/admin/users", &pol),
            Outcome::OutsideRootPath { .. }
        ));
        // With a prefix the proxy already cut.
        let h = headers(&[("x-forwarded-prefix", "/edge")]);
        let r = serve(peer(LB), &h, b"/app/x", &pol);
        assert_eq!(
            (&r.script_name[..], r.path_info),
            (&b"/edge/app"[..], &b"/x"[..])
        );
    }

    #[test]
    fn elements_split_from_the_right_as_rsplit_does() {
        for line in [
            "",
            ",",
            " , ,",
            "a",
            "198.51.100.7, 203.0.113.9",
            " a ,b,, c ",
            "https",
            "x,",
            ",y",
        ] {
            let value = http::HeaderValue::from_str(line).expect("a header value");
            let ours: Vec<&str> = split_rev(&value).collect();
            let theirs: Vec<&str> = line
                .rsplit(',')
                .map(str::trim_ascii)
                .filter(|e| !e.is_empty())
                .collect();
            assert_eq!(ours, theirs, "{line:?}");
        }
        let bytes = http::HeaderValue::from_bytes(b"a,\xff").expect("a header value");
        assert_eq!(
            split_rev(&bytes).count(),
            0,
            "not visible ASCII: no elements"
        );
    }

    #[test]
    fn nodes_parse() {
        let c = |s: &str| parse_node(s).map(|c| (c.ip.to_string(), c.port));
        assert_eq!(c("1.2.3.4"), Some(("1.2.3.4".into(), None)));
        assert_eq!(c("1.2.3.4:80"), Some(("1.2.3.4".into(), Some(80))));
        assert_eq!(c("\"[::1]:80\""), Some(("::1".into(), Some(80))));
        assert_eq!(c("[::1]"), Some(("::1".into(), None)));
        for bad in [
            "unknown",
            "_hidden",
            "[1.2.3.4]",
            "1.2.3.4:x",
            "[::1]x",
            "",
            "::1]",
        ] {
            assert_eq!(c(bad), None, "{bad}");
        }
    }

    fn hop() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u8..4, any::<u8>()).prop_map(|(a, b)| format!("10.0.{a}.{b}")),
            any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
            Just("unknown".to_string()),
            "[a-z_]{1,6}",
        ]
    }

    proptest! {
        /// The backwards scan finds what `str::rsplit` would, on any visible-ASCII line.
        #[test]
        fn split_rev_is_rsplit(line in "[ -~]{0,40}") {
            let value = http::HeaderValue::from_str(&line).expect("visible ASCII");
            let ours: Vec<&str> = split_rev(&value).collect();
            let theirs: Vec<&str> = line
                .rsplit(',')
                .map(str::trim_ascii)
                .filter(|e| !e.is_empty())
                .collect();
            prop_assert_eq!(ours, theirs);
        }

        /// An untrusted peer's headers change nothing: the route is the one without them.
        #[test]
        fn untrusted_peers_headers_are_inert(
            xff in proptest::collection::vec(hop(), 0..5),
            proto in "(https?|[a-z]{1,5})",
            host in "[a-z.]{1,12}",
            mode in prop_oneof![Just(ForwardedHeaders::XForwarded), Just(ForwardedHeaders::Forwarded)],
        ) {
            let pol = policy("10.0.0.0/8", mode);
            let h = headers(&[
                ("x-forwarded-for", &xff.join(", ")),
                ("x-forwarded-proto", &proto),
                ("x-forwarded-host", &host),
                ("forwarded", &format!("for={};proto={proto};host={host}", xff.first().map_or("x", |s| s.as_str()))),
                ("script_name", "/x"),
            ]);
            let p = peer("192.0.2.1:9");
            let none = HeaderMap::new();
            prop_assert_eq!(
                decide(p, "http", &h, b"/x/y", &pol),
                decide(p, "http", &none, b"/x/y", &pol)
            );
        }

        /// Whatever a client prepends to X-Forwarded-For (or Forwarded) before a trusted proxy
        /// appends its address, the client found is the same.
        #[test]
        fn a_client_cannot_forge_its_address(
            forged in proptest::collection::vec(hop(), 0..5),
            real in any::<[u8; 4]>().prop_filter("not trusted", |o| o[0] != 10),
            proxies in proptest::collection::vec(hop().prop_filter("trusted", |h| h.starts_with("10.")), 0..3),
        ) {
            let real = std::net::Ipv4Addr::from(real).to_string();
            for mode in [ForwardedHeaders::XForwarded, ForwardedHeaders::Forwarded] {
                let pol = policy("10.0.0.0/8", mode);
                let appended: Vec<String> = std::iter::once(real.clone()).chain(proxies.iter().cloned()).collect();
                let line = |hops: &[String]| match mode {
                    ForwardedHeaders::XForwarded => ("x-forwarded-for", hops.join(", ")),
                    ForwardedHeaders::Forwarded => ("forwarded", hops.iter().map(|h| format!("for=\"{h}\"")).collect::<Vec<_>>().join(", ")),
                };
                let clean = line(&appended);
                let all: Vec<String> = forged.iter().cloned().chain(appended.iter().cloned()).collect();
                let dirty = line(&all);
                let a = serve(peer(LB), &headers(&[(clean.0, &clean.1)]), b"/", &pol).client;
                let b = serve(peer(LB), &headers(&[(dirty.0, &dirty.1)]), b"/", &pol).client;
                prop_assert_eq!(a, b);
                prop_assert_eq!(ip(a), real.clone());
            }
        }

        /// Under the root path, SCRIPT_NAME + PATH_INFO is the path; outside it, 404 or pass.
        #[test]
        fn root_path_splits_the_path(
            root in proptest::collection::vec("[a-z]{1,3}", 0..3),
            path in proptest::collection::vec("[a-z]{0,3}", 0..4),
            pass in any::<bool>(),
        ) {
            let root: String = root.iter().map(|s| format!("/{s}")).collect();
            let path: String = path.iter().map(|s| format!("/{s}")).collect();
            let mut pol = policy("", ForwardedHeaders::XForwarded);
            pol.root_path = root.parse().expect("prefix");
            pol.outside_root_path = if pass { OutsideRootPath::Pass } else { OutsideRootPath::NotFound };
            let under = path == root || path.starts_with(&format!("{root}/"));
            match decide(None, "http", &HeaderMap::new(), path.as_bytes(), &pol) {
                Outcome::Serve(r) => {
                    prop_assert!(under || pass);
                    let mut whole = r.script_name.to_vec();
                    whole.extend_from_slice(r.path_info);
                    prop_assert_eq!(whole, path.as_bytes().to_vec());
                    prop_assert!(r.path_info.is_empty() || r.path_info[0] == b'/');
                    if !under {
                        prop_assert!(r.script_name.is_empty());
                    }
                }
                Outcome::OutsideRootPath { .. } => prop_assert!(!under && !pass),
            }
        }
    }
}
