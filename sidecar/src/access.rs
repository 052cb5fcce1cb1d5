//! The access log: one line per request, written when its response has ended (so the line
//! carries the bytes sent and the time to the last byte), in the server's log format.
//!
//! - `duration_ms` is from the complete request head to the last body byte handed to the
//!   connection (hyper's write buffer, not the client's acknowledgement); `head_ms` is from the
//!   request head to the response head (queueing and the app's time to its first answer).
//!   `bytes` counts the response body sent, not the head.
//! - Every value is escaped so that no request or response can forge a field or a line: the
//!   JSON form is ASCII only (everything else as `\u` escapes; bytes that are not UTF-8 are
//!   shown as the latin-1 characters WSGI gives the app), the plain form (logfmt) quotes any
//!   value with a space, `"`, `=`, `\`, a control or a non-ASCII byte and writes those as `\"`,
//!   `\\`, `\n`, `\r`, `\t` or `\xNN`.
//!
//! [`Record`] -> text is pure ([`render_json`], [`render_plain`]); [`Logged`] is the response
//! body wrapper that counts and writes.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use wsgiscale_core::config::{AccessLogConfig, LogFormat, LogHeader};

/// Who answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The application, through a worker.
    App,
    /// A static mount, in the front.
    Static,
    /// The server itself (a limit, the queue, a failure, a path outside the root path).
    Server,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::App => "app",
            Source::Static => "static",
            Source::Server => "server",
        }
    }
}

/// One access log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// When the request head was complete.
    pub time: SystemTime,
    /// `request`, or `malformed request` for one hyper could not parse.
    pub message: &'static str,
    /// The method, `-` when unknown.
    pub method: String,
    /// The request target as received (path and query), `-` when unknown.
    pub path: String,
    /// `HTTP/1.1`, `HTTP/1.0`, `-`.
    pub protocol: &'static str,
    /// The status the client got.
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Request head -> response head.
    pub head: Duration,
    /// Request head -> last body byte.
    pub duration: Duration,
    /// The client (a trusted proxy's word, or the peer); None on a unix socket.
    pub remote: Option<IpAddr>,
    /// The peer, when a trusted proxy named another client.
    pub peer: Option<IpAddr>,
    /// Who answered.
    pub source: Source,
    /// Why the server answered or the response ended early, if it did.
    pub error: Option<Cow<'static, str>>,
    /// The chosen request headers, in the configured order (None: absent).
    pub request_headers: Vec<(LogHeader, Option<Bytes>)>,
    /// The chosen response headers, in the configured order (None: absent).
    pub response_headers: Vec<(LogHeader, Option<Bytes>)>,
}

/// The values of the `wanted` headers in `headers` (repeated ones joined with `, `).
pub fn pick(wanted: &[LogHeader], headers: &HeaderMap) -> Vec<(LogHeader, Option<Bytes>)> {
    wanted
        .iter()
        .map(|name| {
            let mut values = headers.get_all(name.as_str()).iter();
            let value = values.next().map(|first| {
                let mut joined = first.as_bytes().to_vec();
                for v in values {
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(v.as_bytes());
                }
                Bytes::from(joined)
            });
            (name.clone(), value)
        })
        .collect()
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

fn timestamp(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => format!("{ts:.6}"),
        Err(_) => "-".into(),
    }
}

/// The record as one JSON object (ASCII only), without the newline.
pub fn render_json(r: &Record) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"timestamp\":");
    json_str(&mut out, timestamp(r.time).as_bytes());
    out.push_str(",\"level\":\"INFO\",\"message\":");
    json_str(&mut out, r.message.as_bytes());
    out.push_str(",\"target\":\"access\",\"method\":");
    json_str(&mut out, r.method.as_bytes());
    out.push_str(",\"path\":");
    json_str(&mut out, r.path.as_bytes());
    out.push_str(",\"protocol\":");
    json_str(&mut out, r.protocol.as_bytes());
    let _ = write!(
        out,
        ",\"status\":{},\"bytes\":{},\"head_ms\":{},\"duration_ms\":{},\"remote\":",
        r.status,
        r.bytes,
        millis(r.head),
        millis(r.duration)
    );
    match r.remote {
        Some(ip) => json_str(&mut out, ip.to_string().as_bytes()),
        None => out.push_str("\"-\""),
    }
    if let Some(peer) = r.peer {
        out.push_str(",\"peer\":");
        json_str(&mut out, peer.to_string().as_bytes());
    }
    out.push_str(",\"source\":");
    json_str(&mut out, r.source.as_str().as_bytes());
    if let Some(e) = &r.error {
        out.push_str(",\"error\":");
        json_str(&mut out, e.as_bytes());
    }
    for (key, headers) in [
        ("request_headers", &r.request_headers),
        ("response_headers", &r.response_headers),
    ] {
        if headers.is_empty() {
            continue;
        }
        let _ = write!(out, ",\"{key}\":{{");
        for (i, (name, value)) in headers.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_str(&mut out, name.as_str().as_bytes());
            out.push(':');
            match value {
                Some(v) => json_str(&mut out, v),
                None => out.push_str("null"),
            }
        }
        out.push('}');
    }
    out.push('}');
    out
}

/// A JSON string of `bytes`: UTF-8 as its characters, anything else as latin-1; everything
/// outside printable ASCII, `"` and `\` escaped, so the output is ASCII and one line.
fn json_str(out: &mut String, bytes: &[u8]) {
    out.push('"');
    let mut push = |c: char| match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        ' '..='~' => out.push(c),
        c => {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{u:04x}");
            }
        }
    };
    match std::str::from_utf8(bytes) {
        Ok(text) => text.chars().for_each(&mut push),
        Err(_) => bytes.iter().map(|&b| char::from(b)).for_each(&mut push),
    }
    out.push('"');
}

/// The record as one logfmt line, without the newline.
pub fn render_plain(r: &Record) -> String {
    let mut out = String::with_capacity(256);
    let _ = write!(out, "{}  INFO {}", timestamp(r.time), r.message);
    let mut field = |key: &str, value: &[u8]| {
        out.push(' ');
        out.push_str(key);
        out.push('=');
        logfmt_value(&mut out, value);
    };
    field("method", r.method.as_bytes());
    field("path", r.path.as_bytes());
    field("protocol", r.protocol.as_bytes());
    field("status", r.status.to_string().as_bytes());
    field("bytes", r.bytes.to_string().as_bytes());
    field("head_ms", format!("{:.2}", millis(r.head)).as_bytes());
    field(
        "duration_ms",
        format!("{:.2}", millis(r.duration)).as_bytes(),
    );
    let remote = r
        .remote
        .map_or_else(|| "-".to_string(), |ip| ip.to_string());
    field("remote", remote.as_bytes());
    if let Some(peer) = r.peer {
        field("peer", peer.to_string().as_bytes());
    }
    field("source", r.source.as_str().as_bytes());
    if let Some(e) = &r.error {
        field("error", e.as_bytes());
    }
    for (prefix, headers) in [("req.", &r.request_headers), ("resp.", &r.response_headers)] {
        for (name, value) in headers.iter() {
            let key = format!("{prefix}{}", name.as_str());
            field(&key, value.as_deref().unwrap_or(b"-"));
        }
    }
    out
}

/// A logfmt value: bare when it is printable ASCII without space, `"`, `=` or `\` (and not
/// empty); else quoted with those escaped and any other byte as `\xNN`.
fn logfmt_value(out: &mut String, v: &[u8]) {
    let bare = !v.is_empty()
        && v.iter()
            .all(|&b| b.is_ascii_graphic() && !matches!(b, b'"' | b'=' | b'\\'));
    if bare {
        // Printable ASCII: valid UTF-8.
        out.push_str(std::str::from_utf8(v).unwrap_or("-"));
        return;
    }
    out.push('"');
    for &b in v {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b' '..=b'~' => out.push(char::from(b)),
            b => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
}

/// Where and how access lines are written.
#[derive(Debug, Clone)]
pub struct AccessLog {
    /// The settings.
    pub config: AccessLogConfig,
    /// plain or json, as the rest of the log.
    pub format: LogFormat,
}

impl AccessLog {
    /// Writes `r` as one line on stderr (one write, under stderr's lock, so lines from
    /// different tasks and the tracing subscriber never interleave).
    pub fn write(&self, r: &Record) {
        let mut line = match self.format {
            LogFormat::Json => render_json(r),
            LogFormat::Plain => render_plain(r),
        };
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// What the body wrapper needs to finish a line.
#[derive(Debug)]
pub struct Pending {
    /// The line so far (status, head time, headers).
    pub record: Record,
    /// When the request head was complete.
    pub started: Instant,
    /// The writer.
    pub log: std::sync::Arc<AccessLog>,
    /// The response's Content-Length, if it has one.
    pub length: Option<u64>,
}

/// A response body that counts the bytes it yields and, when hyper is done with it (sent to
/// the end, or dropped because the client went away), writes the access line.
pub struct Logged<B: Body> {
    inner: B,
    pending: Option<Box<Pending>>,
    /// The body's length when it is known: hyper stops reading a body once it has written
    /// that many bytes, without asking it for its end.
    length: Option<u64>,
    ended: bool,
}

impl<B: Body> Logged<B> {
    /// Wraps `inner`; with no `pending` line it only passes frames through.
    pub fn new(inner: B, pending: Option<Box<Pending>>) -> Self {
        let length = pending
            .as_ref()
            .and_then(|p| p.length)
            .or_else(|| inner.size_hint().exact());
        Logged {
            inner,
            pending,
            length,
            ended: false,
        }
    }
}

impl<B> Body for Logged<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(p) = &mut this.pending {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        p.record.bytes += data.len() as u64;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    p.record.error.get_or_insert_with(|| e.to_string().into());
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for Logged<B> {
    fn drop(&mut self) {
        let Some(mut p) = self.pending.take() else {
            return;
        };
        p.record.duration = p.started.elapsed();
        // hyper drops a body it has not read to the end when the connection fails (the client
        // went away). It never reads the body of a HEAD response or one that was empty from
        // the start, and stops at a known length.
        let whole = self.ended
            || self.inner.is_end_stream()
            || self.length.is_some_and(|n| p.record.bytes >= n)
            || p.record.method == "HEAD";
        if !whole && p.record.error.is_none() {
            p.record.error = Some("the connection ended before the whole response was sent".into());
        }
        p.log.write(&p.record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> Record {
        Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_000_000_123_456),
            message: "request",
            method: "GET".into(),
            path: "/x?y=1".into(),
            protocol: "HTTP/1.1",
            status: 200,
            bytes: 13,
            head: Duration::from_micros(1500),
            duration: Duration::from_micros(2250),
            remote: Some("203.0.113.9".parse().expect("ip")),
            peer: Some("10.0.0.2".parse().expect("ip")),
            source: Source::App,
            error: None,
            request_headers: vec![(
                "X-Request-ID".parse().expect("name"),
                Some(Bytes::from_static(b"abc")),
            )],
            response_headers: vec![("Content-Type".parse().expect("name"), None)],
        }
    }

    #[test]
    fn json_line_has_every_field() {
        let line = render_json(&record());
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["timestamp"], "2025-11-24T16:00:00.123456Z");
        assert_eq!(v["message"], "request");
        assert_eq!(v["target"], "access");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/x?y=1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 13);
        assert_eq!(v["head_ms"], 1.5);
        assert_eq!(v["duration_ms"], 2.25);
        assert_eq!(v["remote"], "203.0.113.9");
        assert_eq!(v["peer"], "10.0.0.2");
        assert_eq!(v["source"], "app");
        assert_eq!(v["request_headers"]["x-request-id"], "abc");
        assert_eq!(
            v["response_headers"]["content-type"],
            serde_json::Value::Null
        );
        assert!(v.get("error").is_none());
    }

    #[test]
    fn plain_line_is_logfmt() {
        assert_eq!(
            render_plain(&record()),
            "2025-11-24T16:00:00.123456Z  INFO request method=GET path=\"/x?y=1\" protocol=HTTP/1.1 \
             status=200 bytes=13 head_ms=1.50 duration_ms=2.25 remote=203.0.113.9 peer=10.0.0.2 \
             source=app req.x-request-id=abc resp.content-type=-"
        );
    }

    #[test]
    fn hostile_values_are_escaped() {
        let mut r = record();
        r.request_headers[0].1 = Some(Bytes::from_static(
            b"a\" status=500 x=\"\n{\"forged\":1}\xe2\x80\xa8\xc2\x85\xff",
        ));
        let line = render_json(&r);
        assert!(line.is_ascii() && !line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["status"], 200);
        assert!(v.get("forged").is_none());
        // Not UTF-8 (the \xff): shown byte for byte as latin-1.
        assert_eq!(
            v["request_headers"]["x-request-id"],
            "a\" status=500 x=\"\n{\"forged\":1}\u{e2}\u{80}\u{a8}\u{c2}\u{85}\u{ff}"
        );
        let plain = render_plain(&r);
        assert!(plain.is_ascii() && !plain.contains('\n'), "{plain}");
        assert!(
            plain.contains(
                r#"req.x-request-id="a\" status=500 x=\"\n{\"forged\":1}\xe2\x80\xa8\xc2\x85\xff""#
            ),
            "{plain}"
        );
        let pairs = logfmt_pairs(&plain);
        assert_eq!(
            pairs.iter().filter(|(k, _)| k == "status").count(),
            1,
            "{plain}"
        );
        assert_eq!(pairs.len(), 12, "{plain}");
    }

    /// Splits a logfmt line into its key=value pairs, honouring quotes and escapes.
    fn logfmt_pairs(line: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        // Skip the timestamp, level and message.
        let mut rest = line;
        for _ in 0..3 {
            rest = rest.trim_start();
            rest = &rest[rest.find(' ').unwrap_or(rest.len())..];
        }
        let mut it = rest.trim_start().chars().peekable();
        loop {
            let key: String = it.by_ref().take_while(|c| *c != '=').collect();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if it.peek() == Some(&'"') {
                it.next();
                while let Some(c) = it.next() {
                    match c {
                        '\\' => {
                            value.push('\\');
                            value.extend(it.next());
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
                let _ = it.next();
            } else {
                value = it.by_ref().take_while(|c| *c != ' ').collect();
            }
            out.push((key.trim().to_string(), value));
        }
        out
    }

    proptest! {
        /// Whatever bytes a header holds, each line is one line of ASCII whose fields are
        /// exactly the record's: JSON parses back to the value, logfmt has the same keys.
        #[test]
        fn no_value_forges_a_field_or_a_line(
            value in proptest::collection::vec(any::<u8>(), 0..40),
            path in "[ -~]{0,20}",
        ) {
            let mut r = record();
            r.path = path.clone();
            r.request_headers[0].1 = Some(Bytes::from(value.clone()));
            let json = render_json(&r);
            prop_assert!(json.is_ascii() && !json.contains('\n') && !json.contains('\r'));
            let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
            prop_assert_eq!(v.as_object().map(|o| o.len()), Some(16));
            let want: String = match std::str::from_utf8(&value) {
                Ok(t) => t.to_string(),
                Err(_) => value.iter().map(|&b| char::from(b)).collect(),
            };
            prop_assert_eq!(v["request_headers"]["x-request-id"].as_str(), Some(want.as_str()));
            prop_assert_eq!(v["path"].as_str(), Some(path.as_str()));
            let plain = render_plain(&r);
            prop_assert!(plain.is_ascii() && !plain.contains('\n') && !plain.contains('\r'));
            let keys: Vec<String> = logfmt_pairs(&plain).into_iter().map(|(k, _)| k).collect();
            prop_assert_eq!(keys, [
                "method", "path", "protocol", "status", "bytes", "head_ms", "duration_ms",
                "remote", "peer", "source", "req.x-request-id", "resp.content-type",
            ].map(String::from).to_vec());
        }
    }
}
