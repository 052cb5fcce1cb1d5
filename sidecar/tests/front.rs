//! The front's request handling through real sockets: trusted proxy headers, the root path,
//! the head limits, the access log and what the server says when it replaces an answer.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{get_with, raw_one, Server};

const APP: &str = "pep3333:application";

fn environ(s: &Server, path: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let r = get_with(s.addr, path, headers);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

const FORWARDED: &[(&str, &str)] = &[
    ("X-Forwarded-For", "198.51.100.1, 203.0.113.9"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "shop.example.com"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Prefix", "/edge"),
];

/// From a trusted peer (loopback, the default), the headers set the client, the scheme, the
/// host and the mount point; the peer stays in wsgiscale.peer_addr.
#[test]
fn a_trusted_proxy_sets_client_scheme_host_and_prefix() {
    let s = Server::start(APP, &["--workers", "1"]);
    let env = environ(&s, "/environ", FORWARDED);
    assert_eq!(env["REMOTE_ADDR"], "203.0.113.9");
    assert!(env.get("REMOTE_PORT").is_none(), "{env}");
    assert_eq!(env["wsgiscale.peer_addr"], "127.0.0.1");
    assert_eq!(env["wsgi.url_scheme"], "https");
    assert_eq!(env["HTTPS"], "on");
    assert_eq!(env["HTTP_HOST"], "shop.example.com");
    assert_eq!(env["SERVER_NAME"], "shop.example.com");
    assert_eq!(env["SERVER_PORT"], "443");
    assert_eq!(env["SCRIPT_NAME"], "/edge");
    assert_eq!(env["PATH_INFO"], "/environ");
    // The headers themselves still reach the app.
    assert_eq!(env["HTTP_X_FORWARDED_FOR"], "198.51.100.1, 203.0.113.9");

    // RFC 7239 instead, when that is the proxy's family.
    drop(s);
    let s = Server::start(APP, &["--workers", "1", "--forwarded-headers", "forwarded"]);
    let env = environ(
        &s,
        "/environ",
        &[
            (
                "Forwarded",
                "for=\"[2001:db8::5]:4711\";proto=https;host=a.example",
            ),
            ("X-Forwarded-For", "192.0.2.99"),
        ],
    );
    assert_eq!(env["REMOTE_ADDR"], "2001:db8::5");
    assert_eq!(env["REMOTE_PORT"], "4711");
    assert_eq!(env["wsgi.url_scheme"], "https");
    assert_eq!(env["HTTP_HOST"], "a.example");
}

/// The attack: a client that reaches the server directly forges the headers a proxy would
/// send. They reach the app as they came and change nothing.
#[test]
fn a_forged_x_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let s = Server::start(
        APP,
        &["--workers", "1", "--forwarded-allow-ips", "10.0.0.0/8"],
    );
    let env = environ(&s, "/environ", FORWARDED);
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    assert!(env["REMOTE_PORT"].as_str().is_some(), "{env}");
    assert_eq!(env["wsgi.url_scheme"], "http");
    assert!(env.get("HTTPS").is_none(), "{env}");
    assert_eq!(env["HTTP_HOST"], "test");
    assert_eq!(env["SCRIPT_NAME"], "");
    assert_eq!(env["HTTP_X_FORWARDED_FOR"], "198.51.100.1, 203.0.113.9");
    assert_eq!(env["HTTP_X_FORWARDED_PROTO"], "https");
}

/// `--root-path`: SCRIPT_NAME set and the prefix cut on a segment boundary; outside it, 404
/// by default, or the app with `--outside-root-path pass`.
#[test]
fn the_root_path_is_cut_on_a_segment_boundary() {
    let s = Server::start(APP, &["--workers", "1", "--root-path", "/app"]);
    let env = environ(&s, "/app/environ", &[]);
    assert_eq!(env["SCRIPT_NAME"], "/app");
    assert_eq!(env["PATH_INFO"], "/environ");
    let r = get_with(s.addr, "/apple/environ", &[]);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("under /app"), "{}", r.text());
    assert_eq!(get_with(s.addr, "/environ", &[]).status, 404);
    drop(s);
    let s = Server::start(
        APP,
        &[
            "--workers",
            "1",
            "--root-path",
            "/app/",
            "--outside-root-path",
            "pass",
        ],
    );
    let env = environ(&s, "/environ", &[]);
    assert_eq!(env["SCRIPT_NAME"], "");
    assert_eq!(env["PATH_INFO"], "/environ");
    let env = environ(&s, "/app/environ", &[]);
    assert_eq!(
        (&env["SCRIPT_NAME"], &env["PATH_INFO"]),
        (&"/app".into(), &"/environ".into())
    );
}

/// The attack of gunicorn #2650: a SCRIPT_NAME header from a client that is not a trusted
/// proxy would move the path past a proxy's path rules. It is ignored; from a trusted proxy
/// it replaces --root-path for its request.
#[test]
fn a_script_name_header_counts_only_from_a_trusted_peer() {
    let untrusted = Server::start(
        APP,
        &[
            "--workers",
            "1",
            "--root-path",
            "/app",
            "--forwarded-allow-ips",
            "10.0.0.0/8",
        ],
    );
    let r = get_with(
        untrusted.addr,
        "/admin/environ",
        &[("SCRIPT_NAME", "/admin")],
    );
    assert_eq!(r.status, 404, "{}", r.text());
    let env = environ(
        &untrusted,
        "/app/environ",
        &[("SCRIPT_NAME", "/app/environ")],
    );
    assert_eq!(
        (&env["SCRIPT_NAME"], &env["PATH_INFO"]),
        (&"/app".into(), &"/environ".into())
    );
    drop(untrusted);
    let trusted = Server::start(APP, &["--workers", "1", "--root-path", "/app"]);
    let env = environ(&trusted, "/admin/environ", &[("SCRIPT_NAME", "/admin")]);
    assert_eq!(
        (&env["SCRIPT_NAME"], &env["PATH_INFO"]),
        (&"/admin".into(), &"/environ".into())
    );
    // A header name with an underscore never becomes an HTTP_ key (spoofing), trusted or not.
    assert!(env.get("HTTP_SCRIPT_NAME").is_none(), "{env}");
}

/// Each head limit: at the limit the request is served, one byte (or field) over it gets 414
/// or 431 with a body that names the limit; the server keeps serving.
#[test]
fn a_head_one_byte_over_each_limit_is_refused_with_a_clear_answer() {
    let s = Server::start(
        APP,
        &[
            "--workers",
            "1",
            "--limit-request-line",
            "300",
            "--limit-request-fields",
            "10",
            "--limit-request-field-size",
            "1000",
            "--limit-request-headers-size",
            "3000",
        ],
    );
    let request = |target: &str, headers: &[(String, String)]| {
        let mut req = format!("GET {target} HTTP/1.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        raw_one(s.addr, req.as_bytes())
    };
    let base = || {
        vec![
            ("Host".to_string(), "x".to_string()),
            ("Connection".to_string(), "close".to_string()),
        ]
    };
    // Request line: "GET " + target + " HTTP/1.1" = 13 + target.
    let at = format!("/environ?{}", "q".repeat(300 - 13 - 9));
    assert_eq!(request(&at, &base()).status, 200);
    let over = format!("{at}q");
    let r = request(&over, &base());
    assert_eq!(r.status, 414, "{}", r.text());
    assert!(r.text().contains("--limit-request-line"), "{}", r.text());
    assert!(r.text().contains("301 bytes"), "{}", r.text());

    // Fields: 10 allowed.
    let mut h = base();
    h.extend((0..8).map(|i| (format!("X-F{i}"), "v".to_string())));
    assert_eq!(request("/environ", &h).status, 200);
    h.push(("X-F8".into(), "v".into()));
    let r = request("/environ", &h);
    assert_eq!(r.status, 431, "{}", r.text());
    assert!(r.text().contains("11 header fields"), "{}", r.text());

    // One field: "X-Big: " + value = 1000 allowed.
    let mut h = base();
    h.push(("X-Big".into(), "b".repeat(1000 - 7)));
    assert_eq!(request("/environ", &h).status, 200);
    h.last_mut().unwrap().1.push('b');
    let r = request("/environ", &h);
    assert_eq!(r.status, 431, "{}", r.text());
    assert!(
        r.text().contains("--limit-request-field-size"),
        "{}",
        r.text()
    );

    // All fields: each "Name: value\r\n"; Host (9) and Connection (19) are 28 bytes.
    let mut h = base();
    h.push(("X-A".into(), "a".repeat(995)));
    h.push(("X-B".into(), "a".repeat(995)));
    let rest = 3000 - 28 - 2 * 1002 - 7;
    h.push(("X-C".into(), "a".repeat(rest)));
    assert_eq!(request("/environ", &h).status, 200);
    h.last_mut().unwrap().1.push('a');
    let r = request("/environ", &h);
    assert_eq!(r.status, 431, "{}", r.text());
    assert!(r.text().contains("3001 bytes"), "{}", r.text());
    assert!(
        r.text().contains("--limit-request-headers-size"),
        "{}",
        r.text()
    );

    assert_eq!(s.get("/pid").status, 200);
}

/// The defaults are large enough for OIDC session cookies and Kerberos tokens: a 30 KiB
/// cookie and a 16 KiB query reach the app.
#[test]
fn default_limits_pass_large_cookies_and_queries() {
    let s = Server::start(APP, &["--workers", "1"]);
    let cookie = format!("session={}", "c".repeat(30 * 1024));
    let env = environ(
        &s,
        &format!("/environ?{}", "q".repeat(16 * 1024 - 40)),
        &[("Cookie", &cookie)],
    );
    assert_eq!(
        env["HTTP_COOKIE"].as_str().map(str::len),
        Some(cookie.len())
    );
}

/// The attack on the log: a request header holding quotes, a JSON fragment, an `=` and bytes
/// that some viewers take for line breaks (NEL, LINE SEPARATOR) cannot forge a field or a
/// line. The line also carries the bytes sent and both durations.
#[test]
fn access_log_fields_are_escaped_and_carry_bytes_and_durations() {
    let s = Server::start(
        APP,
        &[
            "--workers",
            "1",
            "--access-log",
            "--access-log-request-header",
            "X-Request-ID,traceparent",
            "--access-log-response-header",
            "X-Echo,Content-Type",
        ],
    );
    let hostile: &[u8] =
        b"abc\" \"status\":999, \"x\"=\"1 {\"forged\":true}\xc2\x85\xe2\x80\xa8end";
    let mut req =
        b"GET /headers HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Request-ID: ".to_vec();
    req.extend_from_slice(hostile);
    req.extend_from_slice(b"\r\nX-Echo: \"quoted\" and =\r\n\r\n");
    let r = raw_one(s.addr, &req);
    assert_eq!(r.status, 200);
    let line = s.access_line("/headers");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 7);
    assert_eq!(line["method"], "GET");
    assert_eq!(line["source"], "app");
    assert!(line.get("error").is_none(), "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() >= line["head_ms"].as_f64().unwrap());
    assert_eq!(
        line["request_headers"]["x-request-id"].as_str().unwrap(),
        String::from_utf8(hostile.to_vec()).unwrap()
    );
    assert_eq!(
        line["request_headers"]["traceparent"],
        serde_json::Value::Null
    );
    assert_eq!(line["response_headers"]["x-echo"], "\"quoted\" and =");
    assert_eq!(line["response_headers"]["content-type"], "text/plain");
    assert!(line.get("forged").is_none());
    // The raw line is one line of ASCII.
    let text = s.log_text();
    let raw_line = text
        .lines()
        .find(|l| l.contains("\"path\":\"/headers\""))
        .unwrap();
    assert!(raw_line.is_ascii(), "{raw_line}");
    assert_eq!(s.access_lines().len(), 1);
}

/// The plain access log is logfmt with the same escaping.
#[test]
fn plain_access_log_quotes_what_could_forge_a_field() {
    let s = Server::start(
        APP,
        &[
            "--workers",
            "1",
            "--log-format",
            "plain",
            "--access-log",
            "--access-log-request-header",
            "X-Request-ID",
        ],
    );
    let req = b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Request-ID: a\" status=500 b=\xff\r\n\r\n".to_vec();
    let r = raw_one(s.addr, &req);
    assert_eq!(r.status, 200);
    assert!(
        s.wait_log(
            r#"req.x-request-id="a\" status=500 b=\xff""#,
            Duration::from_secs(10)
        ),
        "{}",
        s.log_text()
    );
    let text = s.log_text();
    let line = text.lines().find(|l| l.contains("path=/pid")).unwrap();
    assert!(line.contains(" status=200 "), "{line}");
    assert!(line.contains(" bytes="), "{line}");
    assert!(line.contains(" duration_ms="), "{line}");
}

/// Item 9's defect: an app that returns a 1xx gets its client a 500, and the metrics and the
/// log say 500, with the reason.
#[test]
fn an_informational_final_status_is_a_500_everywhere() {
    let s = Server::start(APP, &["--workers", "1", "--access-log"]);
    let r = s.get("/informational");
    assert_eq!(r.status, 500);
    let line = s.access_line("/informational");
    assert_eq!(line["status"], 500);
    assert_eq!(line["source"], "server");
    assert!(line["error"].as_str().unwrap().contains("103"), "{line}");
    assert_eq!(s.metric("wsgiscale_requests_total{class=\"1xx\"}"), 0.0);
    assert_eq!(s.metric("wsgiscale_requests_total{class=\"5xx\"}"), 1.0);
    assert!(s.get("/pid").status == 200);
    // The server never sends a Server header.
    assert!(r.header("server").is_none());
}

/// A response cut short by the client is logged with what was sent and why it ended.
#[test]
fn a_response_the_client_abandons_is_logged_as_such() {
    let s = Server::start(APP, &["--workers", "1", "--access-log"]);
    {
        let mut c = std::net::TcpStream::connect(s.addr).unwrap();
        use std::io::{Read, Write};
        c.write_all(b"GET /big_gen?50000000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let _ = c.read(&mut buf).unwrap();
    }
    let line = s.access_line("/big_gen?50000000");
    assert_eq!(line["status"], 200);
    assert!(line["bytes"].as_u64().unwrap() < 50_000_000, "{line}");
    assert!(line["error"].as_str().is_some(), "{line}");
}
