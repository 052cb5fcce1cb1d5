//! PEP 3333 through the real binary: stdlib apps wrapped in wsgiref.validate.validator.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{parse_responses, post, raw, Server};

const APP: &str = "pep3333:application";

#[test]
fn environ_has_every_cgi_key_with_pep3333_types() {
    let s = Server::start(APP, &["--workers", "1"]);
    let r = s.get("/environ/caf%C3%A9/a%2Fb?x=%20y&z");
    assert_eq!(r.status, 200, "{}", r.text());
    let env = r.json();
    assert_eq!(env["REQUEST_METHOD"], "GET");
    assert_eq!(env["SCRIPT_NAME"], "");
    // Percent-decoded bytes shown as latin-1: "é" is two code points.
    let path_bytes: Vec<u8> = env["path_info_latin1_bytes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(path_bytes, "/environ/café/a/b".as_bytes());
    assert_eq!(env["QUERY_STRING"], "x=%20y&z");
    assert_eq!(env["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(env["SERVER_NAME"], "127.0.0.1");
    assert_eq!(env["SERVER_PORT"], s.addr.port().to_string());
    assert_eq!(env["REMOTE_ADDR"], "127.0.0.1");
    assert!(env["REMOTE_PORT"].as_str().unwrap().parse::<u16>().is_ok());
    assert_eq!(env["wsgi.url_scheme"], "http");
    assert_eq!(env["wsgi.version"], serde_json::json!([1, 0]));
    assert_eq!(env["wsgi.multithread"], false);
    assert_eq!(env["wsgi.multiprocess"], true);
    assert_eq!(env["wsgi.run_once"], false);
    assert_eq!(env["wsgi.input_terminated"], true);
    assert_eq!(env["has_file_wrapper"], true);
}

#[test]
fn headers_become_http_keys_joined_and_content_keys_unprefixed() {
    let s = Server::start(APP, &["--workers", "1"]);
    let req = b"POST /environ HTTP/1.1\r\nHost: example.com:8080\r\nContent-Type: text/plain\r\n\
Content-Length: 2\r\nX-Multi: a\r\nX-Multi: b\r\nCookie: a=1\r\nCookie: b=2\r\nX_Spoof: 1\r\n\
Connection: close\r\n\r\nhi";
    let resp = parse_responses(&raw(s.addr, req, Duration::from_secs(10)));
    let env = resp[0].json();
    assert_eq!(env["CONTENT_TYPE"], "text/plain");
    assert_eq!(env["CONTENT_LENGTH"], "2");
    assert!(env.get("HTTP_CONTENT_TYPE").is_none());
    assert_eq!(env["HTTP_X_MULTI"], "a,b");
    assert_eq!(env["HTTP_COOKIE"], "a=1; b=2");
    assert!(
        env.get("HTTP_X_SPOOF").is_none(),
        "underscored header names are dropped"
    );
    assert_eq!(env["SERVER_NAME"], "example.com");
    assert_eq!(env["SERVER_PORT"], "8080");
}

/// Every way of reading `wsgi.input`, with the body in memory and (`--body-buffer 0`) in a
/// temporary file the worker reads itself.
#[test]
fn wsgi_input_read_modes_never_pass_the_body() {
    for buffer in ["1Mi", "0"] {
        let s = Server::start(APP, &["--workers", "1", "--body-buffer", buffer]);
        read_modes(&s);
    }
}

fn read_modes(s: &Server) {
    let r = post(s.addr, "/input?read", "text/plain", b"hello world").unwrap();
    assert_eq!(
        r.json(),
        serde_json::json!({"data": "hello world", "extra": ""})
    );
    let r = post(s.addr, "/input?chunks", "text/plain", b"abcdefgh").unwrap();
    assert_eq!(r.json()["parts"], serde_json::json!(["abc", "def", "gh"]));
    let r = post(s.addr, "/input?readline", "text/plain", b"l1\nl2\nl3").unwrap();
    assert_eq!(
        r.json(),
        serde_json::json!({"first": "l1\n", "second": "l2"})
    );
    let r = post(s.addr, "/input?readlines", "text/plain", b"l1\nl2\nl3").unwrap();
    assert_eq!(r.json()["lines"], serde_json::json!(["l1\n", "l2\n", "l3"]));
    let r = post(s.addr, "/input?iter", "text/plain", b"l1\nl2").unwrap();
    assert_eq!(r.json()["lines"], serde_json::json!(["l1\n", "l2"]));
}

/// A chunked upload, kept in memory, and (`--body-buffer 8`) moved to a temporary file when
/// its second chunk takes it past the buffer.
#[test]
fn chunked_upload_is_readable_to_eof() {
    for buffer in ["1Mi", "8"] {
        let s = Server::start(APP, &["--workers", "1", "--body-buffer", buffer]);
        let req = b"POST /input HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let resp = parse_responses(&raw(s.addr, req, Duration::from_secs(10)));
        assert_eq!(resp[0].status, 200);
        let j = resp[0].json();
        assert_eq!(j["len"], 11);
        assert_eq!(j["terminated"], true);
        assert_eq!(j["content_length"], "11");
    }
}

#[test]
fn write_callable_sends_before_the_iterable() {
    let s = Server::start(APP, &["--workers", "1"]);
    let r = s.get("/write");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "written directly then returned");
}

#[test]
fn exc_info_replaces_unsent_headers() {
    let s = Server::start(APP, &["--workers", "1"]);
    let r = s.get("/exc_info");
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "replaced");
    assert!(r.header("x-replaced").is_none());
}

#[test]
fn exc_info_after_headers_reraises_and_aborts_the_response() {
    let s = Server::start(APP, &["--workers", "1"]);
    let out = raw(
        s.addr,
        b"GET /exc_info_late HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("never"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the chunked body must not end cleanly: {text}"
    );
    assert!(
        s.wait_log("KeyError", Duration::from_secs(5)),
        "{}",
        s.log_text()
    );
    assert_eq!(s.get("/pid").status, 200, "the server keeps serving");
}

#[test]
fn status_may_be_set_in_the_first_iteration() {
    let s = Server::start(APP, &["--workers", "1"]);
    let r = s.get("/lazy");
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-lazy"), Some("yes"));
    assert_eq!(r.text(), "made lazily");
}

#[test]
fn close_is_called_on_success_and_on_error() {
    let s = Server::start(APP, &["--workers", "1"]);
    let before = s.get("/closed").json()["closed"].as_u64().unwrap();
    assert_eq!(s.get("/closing").text(), "ab");
    let _ = raw(
        s.addr,
        b"GET /closing_raises HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let after = s.get("/closed").json()["closed"].as_u64().unwrap();
    assert_eq!(after, before + 2, "close() ran for both iterables");
}

#[test]
fn file_wrapper_sends_the_whole_file() {
    let s = Server::start(APP, &["--workers", "1"]);
    let r = s.get("/file");
    let want = std::fs::read(support::apps().join("static.txt")).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), want.len());
    assert_eq!(r.body, want);
}

#[test]
fn content_length_is_a_promise() {
    let s = Server::start(APP, &["--workers", "1"]);
    // Too long: cut at Content-Length, connection still usable.
    let out = raw(
        s.addr,
        b"GET /long HTTP/1.1\r\nHost: x\r\n\r\nGET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let resp = parse_responses(&out);
    assert_eq!(resp[0].text(), "12345");
    assert_eq!(resp.len(), 2, "keep-alive survives truncation");
    // A generator reaching its Content-Length: the response ends with those bytes (the
    // worker sends it whole), the generator still runs to its end, extra bytes are dropped.
    let before = s.get("/closed").json()["after"].as_u64().unwrap();
    let out = raw(
        s.addr,
        b"GET /long_gen HTTP/1.1\r\nHost: x\r\n\r\nGET /closed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let resp = parse_responses(&out);
    assert_eq!(resp[0].text(), "12345");
    assert_eq!(resp.len(), 2, "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(
        resp[1].json()["after"].as_u64(),
        Some(before + 1),
        "ran past its last yield"
    );
    // Too short: the connection is closed, the client never sees a complete response.
    let out = raw(
        s.addr,
        b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&out);
    assert!(
        !text.contains("only twenty bytes...") || out.len() < 100 + 20,
        "{text}"
    );
    let body_at = out.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    if let Some(at) = body_at {
        assert!(
            out.len() - at < 100,
            "short body must not be padded: {text}"
        );
    }
}

#[test]
fn head_sends_no_body() {
    let s = Server::start(APP, &["--workers", "1"]);
    let out = raw(
        s.addr,
        b"HEAD /pid HTTP/1.1\r\nHost: x\r\n\r\nGET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&out);
    let first_end = text.find("\r\n\r\n").unwrap() + 4;
    assert!(
        text[first_end..].starts_with("HTTP/1.1 200"),
        "HEAD had a body: {text}"
    );
}

#[test]
fn streamed_response_is_chunked_for_http11_and_close_delimited_for_http10() {
    let s = Server::start(APP, &["--workers", "1"]);
    let out = raw(
        s.addr,
        b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let r = &parse_responses(&out)[0];
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "chunk0;chunk1;chunk2;chunk3;chunk4;");
    let out = raw(
        s.addr,
        b"GET /stream HTTP/1.0\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
    assert!(
        text.ends_with("chunk0;chunk1;chunk2;chunk3;chunk4;"),
        "{text}"
    );
    let out = raw(
        s.addr,
        b"GET /environ HTTP/1.0\r\n\r\n",
        Duration::from_secs(10),
    );
    let env = parse_responses(&out)[0].json();
    assert_eq!(env["SERVER_PROTOCOL"], "HTTP/1.0");
}

#[test]
fn app_exception_is_a_500_with_the_traceback_logged() {
    let s = Server::start(APP, &["--workers", "1"]);
    let r = s.get("/raise");
    assert_eq!(r.status, 500);
    assert!(s.wait_log("deliberate failure for the test", Duration::from_secs(5)));
    assert!(s.log_text().contains("Traceback"), "{}", s.log_text());
    // The line names the request.
    let log = s.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("request failed inside the app"))
        .unwrap_or_default();
    assert!(line.contains("GET") && line.contains("/raise"), "{log}");
    assert_eq!(s.get("/pid").status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Server::start(APP, &["--workers", "2"]);
    let out = raw(
        s.addr,
        b"GET /sleep?200 HTTP/1.1\r\nHost: x\r\n\r\nGET /lazy HTTP/1.1\r\nHost: x\r\n\r\nGET /write HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let resp = parse_responses(&out);
    assert_eq!(resp.len(), 3, "{}", String::from_utf8_lossy(&out));
    assert_eq!(resp[0].json()["slept_ms"], 200);
    assert_eq!(resp[1].text(), "made lazily");
    assert_eq!(resp[2].text(), "written directly then returned");
}

#[test]
fn keep_alive_reuses_the_connection() {
    let s = Server::start(APP, &["--workers", "1"]);
    let out = raw(
        s.addr,
        b"GET /environ HTTP/1.1\r\nHost: x\r\n\r\nGET /environ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let resp = parse_responses(&out);
    assert_eq!(resp.len(), 2);
    assert_eq!(resp[0].json()["REMOTE_PORT"], resp[1].json()["REMOTE_PORT"]);
    // HTTP/1.0 with keep-alive asked for.
    let out = raw(
        s.addr,
        b"GET /pid HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /pid HTTP/1.0\r\n\r\n",
        Duration::from_secs(10),
    );
    assert_eq!(
        parse_responses(&out).len(),
        2,
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn expect_100_continue_gets_an_interim_response() {
    let s = Server::start(APP, &["--workers", "1"]);
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"POST /input?read HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").unwrap();
    let mut buf = [0u8; 256];
    let n = c.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    c.write_all(b"abcde").unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    let resp = parse_responses(&rest);
    assert_eq!(resp.last().unwrap().json()["data"], "abcde");
}

#[test]
fn malformed_and_oversized_requests_get_4xx_and_the_server_keeps_serving() {
    let s = Server::start(APP, &["--workers", "1", "--max-body", "1000"]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"THIS IS NOT HTTP\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(), "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n".to_vec(), "HTTP/1.1 400"),
        (format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(17_000)).into_bytes(), "HTTP/1.1 414"),
        (format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(70_000)).into_bytes(), "HTTP/1.1 431"),
        (b"POST /input HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".to_vec(), "HTTP/1.1 413"),
        (
            format!("POST /input HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{}\r\n0\r\n\r\n", "c".repeat(2000)).into_bytes(),
            "HTTP/1.1 413",
        ),
    ];
    for (req, want) in cases {
        let out = raw(s.addr, &req, Duration::from_secs(10));
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(want),
            "request {:?} got {text:?}",
            String::from_utf8_lossy(&req[..req.len().min(60)])
        );
    }
    assert_eq!(s.get("/pid").status, 200);
}

/// Look-ahead keeps the one FIFO: a request handed to a busy worker as its next one is taken
/// back when the other worker frees first, instead of waiting for the slow request. Two
/// rounds, so that each worker is the slow one once (which of two equally busy workers gets
/// the look-ahead depends on their ids).
#[test]
fn a_request_never_waits_behind_a_busy_worker_while_another_frees() {
    let s = Server::start(APP, &["--workers", "2"]);
    s.wait_load(Duration::from_secs(10), "two workers", |l| {
        l["workers"]["idle"].as_u64() == Some(2)
    });
    for (first, second) in [(4000, 400), (400, 4000)] {
        let addr = s.addr;
        let a = std::thread::spawn(move || support::get(addr, &format!("/sleep?{first}")));
        s.wait_in_flight(1);
        let b = std::thread::spawn(move || support::get(addr, &format!("/sleep?{second}")));
        s.wait_in_flight(2);
        let t = std::time::Instant::now();
        let r = s.get("/pid");
        let waited = t.elapsed();
        assert_eq!(r.status, 200);
        assert!(
            waited < Duration::from_millis(3000),
            "the quick request waited {waited:?}, behind the 4 s one"
        );
        for h in [a, b] {
            assert_eq!(h.join().unwrap().unwrap().status, 200);
        }
    }
}

#[test]
fn full_queue_gets_503_with_retry_after() {
    let s = Server::start(APP, &["--workers", "1", "--max-queue", "1"]);
    let addr = s.addr;
    let busy: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || support::get(addr, "/sleep?1500").unwrap().status))
        .collect();
    // One request runs, one waits: the queue is full.
    s.wait_load(Duration::from_secs(10), "a full queue", |l| {
        l["in_flight"] == 1 && l["queue"]["depth"] == 1
    });
    let r = s.get("/pid");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    for b in busy {
        assert_eq!(b.join().unwrap(), 200);
    }
    assert_eq!(s.get("/pid").status, 200);
}

#[test]
fn threads_run_requests_concurrently_in_one_worker() {
    let s = Server::start(APP, &["--workers", "1", "--threads", "4"]);
    let addr = s.addr;
    let clients: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || support::get(addr, "/track").unwrap().json()))
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap()["multithread"], true);
    }
    assert_eq!(s.get("/maxconc").json()["max"], 4);
}

#[test]
fn unix_socket_bind_serves() {
    let dir = std::env::temp_dir().join(format!("wsgiscale-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let bind = format!("unix:{}", path.display());
    let s = Server::start(APP, &["--workers", "1", "--bind", &bind]);
    use std::io::{Read, Write};
    let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
    c.write_all(b"GET /environ HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let env = parse_responses(&out)[0].json();
    assert_eq!(env["REMOTE_ADDR"], "");
    assert_eq!(env["SERVER_NAME"], "local");
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn large_bodies_cross_in_pieces() {
    let s = Server::start(APP, &["--workers", "1"]);
    let n = 9 * 1024 * 1024 + 7;
    let r = s.get(&format!("/big?{n}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), n + 10);
    assert_eq!(
        r.header("content-length"),
        None,
        "streamed, not buffered whole"
    );
    assert!(r.body[..n].iter().all(|b| *b == b'x') && r.body.ends_with(b"yyyyyyyyyy"));
    let r = s.get(&format!("/big_gen?{n}"));
    assert_eq!((r.status, r.body.len()), (200, n));
    let r = support::post(
        s.addr,
        "/input",
        "application/octet-stream",
        &vec![b'q'; 3 << 20],
    )
    .unwrap();
    assert_eq!(r.json()["len"], 3 << 20);
}

/// `printf 'GET / HTTP/1.0\r\n\r\n' | nc -N`: the client sends a whole request and shuts
/// down its write side; it still gets the response (as from wsgiref and gunicorn).
#[test]
fn a_request_followed_by_a_half_close_is_answered() {
    use std::io::{Read, Write};
    let s = Server::start(APP, &["--workers", "1"]);
    for req in [
        "GET /environ HTTP/1.0\r\nHost: t\r\n\r\n",
        "GET /environ HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        let mut c = std::net::TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        c.write_all(req.as_bytes()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"),
            "{req:?} got {text:?}"
        );
    }
}

/// A second server on a live `unix:` path is refused, as TCP refuses an address in use, and
/// the first keeps serving; a stale socket file (nobody listening) is replaced.
#[test]
fn a_live_unix_socket_is_refused_and_a_stale_one_replaced() {
    use std::io::{Read, Write};
    let dir = std::env::temp_dir().join(format!("wsgiscale-test-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let bind = format!("unix:{}", path.display());
    // A stale socket: bound, then its listener gone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let first = Server::start(APP, &["--workers", "1", "--bind", &bind]);
    let (status, log) = support::start_failing(APP, &["--workers", "1", "--bind", &bind]);
    assert!(!status.success());
    assert!(log.contains("in use"), "{log}");
    let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
    c.write_all(b"GET /environ HTTP/1.1\r\nHost: local\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    assert_eq!(parse_responses(&out)[0].status, 200);
    drop(first);
    let _ = std::fs::remove_dir_all(dir);
}

/// A request hyper cannot parse gets its 400, and is counted and logged like any request.
#[test]
fn malformed_requests_are_counted_and_logged() {
    let s = Server::start_env(
        APP,
        &["--workers", "1"],
        &[("WSGISCALE_ACCESS_LOG", "true")],
    );
    let out = support::raw(
        s.addr,
        b"THIS IS NOT HTTP\r\n\r\n",
        std::time::Duration::from_secs(5),
    );
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"),
        "{out:?}"
    );
    let metrics = support::get(s.admin, "/metrics").unwrap().text();
    assert!(
        metrics.contains("wsgiscale_requests_total{class=\"4xx\"} 1"),
        "{metrics}"
    );
    assert!(
        s.wait_log("malformed request", std::time::Duration::from_secs(5)),
        "{}",
        s.log_text()
    );
}
