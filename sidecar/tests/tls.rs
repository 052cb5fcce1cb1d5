//! TLS and HTTP/2 through the real binary and real sockets: a TLS handshake and requests over
//! HTTP/1.1 and HTTP/2 (ALPN), a certificate rotation picked up without dropping an open
//! connection, mutual TLS, h2c from a trusted peer and refused from an untrusted one, and an
//! HTTP/2 stream that sends slowly without holding a worker.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Channel, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::{start_failing, tempdir, wait_for, Server};
use tokio::net::TcpStream;

const APP: &str = "pep3333:application";

type Body = BoxBody<Bytes, std::convert::Infallible>;

/// A CA and the certificates it issues, as PEM.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = p.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(p, key),
        }
    }

    fn issue(&self, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self, cn: &str) -> Leaf {
        self.issue(
            cn,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }
}

fn write_leaf(dir: &Path, leaf: &Leaf) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("tls.crt"), &leaf.cert).unwrap();
    std::fs::write(dir.join("tls.key"), &leaf.key).unwrap();
}

/// The TLS listener's address, from the server's "listening" log line that says `tls`.
fn tls_addr(s: &Server) -> SocketAddr {
    s.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "listening" && v["tls"] == true)
        .and_then(|v| v["addr"].as_str().and_then(|a| a.parse().ok()))
        .unwrap_or_else(|| panic!("no TLS listener; log:\n{}", s.log_text()))
}

fn client_config(ca_pem: &str, alpn: &[&[u8]], client: Option<&Leaf>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => {
            let chain = CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(addr: SocketAddr, config: rustls::ClientConfig) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Whether the server presented `leaf`'s certificate.
fn presents(tls: &Tls, leaf: &Leaf) -> bool {
    let der = CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0] == der
}

async fn h2_client<I>(io: I) -> http2::SendRequest<Body>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    send
}

async fn h1_client<I>(io: I) -> http1::SendRequest<Body>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = http1::handshake(TokioIo::new(io))
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(conn);
    send
}

struct Answer {
    status: StatusCode,
    version: Version,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn answer(r: hyper::Result<http::Response<hyper::body::Incoming>>) -> Answer {
    let r = r.expect("a response");
    let (status, version) = (r.status(), r.version());
    let body = r.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        version,
        body,
    }
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Empty::new().boxed()).unwrap()
}

async fn h2_get(send: &mut http2::SendRequest<Body>, uri: &str) -> Answer {
    answer(send.send_request(get(uri)).await).await
}

async fn h1_get(send: &mut http1::SendRequest<Body>, path: &str) -> Answer {
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Empty::new().boxed())
        .unwrap();
    answer(send.send_request(req).await).await
}

fn tls_server(dir: &Path, extra: &[&str]) -> Server {
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    let mut args = vec![
        "--tls-bind",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start(APP, &args)
}

#[tokio::test]
async fn tls_serves_http2_by_alpn_and_http1_without_it() {
    let ca = Ca::new("test CA");
    let dir = tempdir();
    write_leaf(dir.path(), &ca.server("first"));
    let s = tls_server(dir.path(), &["--workers", "1"]);
    let addr = tls_addr(&s);

    let tls = tls_connect(addr, client_config(&ca.pem, &[b"h2", b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = h2_client(tls).await;
    let a = h2_get(&mut h2, "https://localhost/environ").await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.version, Version::HTTP_2);
    let env = a.json();
    assert_eq!(env["wsgi.url_scheme"], "https");
    assert_eq!(env["SERVER_PROTOCOL"], "HTTP/2.0");
    // :authority becomes Host, as Django's ALLOWED_HOSTS needs.
    assert_eq!(env["HTTP_HOST"], "localhost");
    assert_eq!(env["SERVER_NAME"], "localhost");
    assert_eq!(env["SERVER_PORT"], "443");
    // An OIDC-sized cookie (30 KiB: under --limit-request-field-size's 32 KiB with its
    // name) passes over HTTP/2 as over HTTP/1.1.
    let cookie = format!("session={}", "x".repeat(30 * 1024));
    let req = Request::get("https://localhost/environ")
        .header("cookie", &cookie)
        .body(Empty::new().boxed())
        .unwrap();
    let big = answer(h2.send_request(req).await).await;
    assert_eq!(big.status, 200);
    assert_eq!(
        big.json()["HTTP_COOKIE"].as_str().map(str::len),
        Some(cookie.len())
    );
    // Several requests multiplexed on the one connection.
    let many: Vec<_> = (0..8)
        .map(|i| {
            let mut h2 = h2.clone();
            tokio::spawn(
                async move { h2_get(&mut h2, &format!("https://localhost/environ?{i}")).await },
            )
        })
        .collect();
    for t in many {
        assert_eq!(t.await.unwrap().status, 200);
    }

    let tls = tls_connect(addr, client_config(&ca.pem, &[b"http/1.1"], None))
        .await
        .unwrap();
    let mut h1 = h1_client(tls).await;
    let a = h1_get(&mut h1, "/environ").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.version, Version::HTTP_11);
    assert_eq!(a.json()["wsgi.url_scheme"], "https");
    assert_eq!(a.json()["SERVER_PROTOCOL"], "HTTP/1.1");
    // No ALPN at all: HTTP/1.1.
    let tls = tls_connect(addr, client_config(&ca.pem, &[], None))
        .await
        .unwrap();
    let mut h1 = h1_client(tls).await;
    assert_eq!(h1_get(&mut h1, "/pid").await.status, 200);
    // The plain bind still speaks plain HTTP/1.1.
    assert_eq!(s.get("/pid").status, 200);

    // --http2=false: ALPN offers HTTP/1.1 only.
    let s2 = tls_server(dir.path(), &["--workers", "1", "--http2=false"]);
    let tls = tls_connect(
        tls_addr(&s2),
        client_config(&ca.pem, &[b"h2", b"http/1.1"], None),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

/// cert-manager renews a Secret volume by swapping a symlink to a new directory: the next
/// handshake gets the new certificate, and a connection opened before keeps working.
#[tokio::test]
async fn a_rotated_certificate_is_picked_up_without_dropping_connections() {
    let ca = Ca::new("test CA");
    let dir = tempdir();
    let (first, second) = (ca.server("first"), ca.server("second"));
    write_leaf(&dir.path().join("v1"), &first);
    let current = dir.path().join("current");
    std::os::unix::fs::symlink("v1", &current).unwrap();
    let s = tls_server(&current, &["--workers", "1"]);
    let addr = tls_addr(&s);
    let config = || client_config(&ca.pem, &[b"h2"], None);
    let tls = tls_connect(addr, config()).await.unwrap();
    assert!(presents(&tls, &first));
    let mut old = h2_client(tls).await;
    assert_eq!(h2_get(&mut old, "https://localhost/pid").await.status, 200);

    // The kubelet's atomic swap: a new directory, then a rename of a new link over the old.
    write_leaf(&dir.path().join("v2"), &second);
    let next = dir.path().join("current.new");
    std::os::unix::fs::symlink("v2", &next).unwrap();
    std::fs::rename(&next, &current).unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let tls = tls_connect(addr, config()).await.unwrap();
        if presents(&tls, &second) {
            let mut new = h2_client(tls).await;
            assert_eq!(h2_get(&mut new, "https://localhost/pid").await.status, 200);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reloaded:\n{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(s.wait_log("TLS certificate reloaded", Duration::from_secs(5)));
    // The connection made with the first certificate still serves.
    assert_eq!(h2_get(&mut old, "https://localhost/pid").await.status, 200);

    // A broken renewal (a key that does not match) is refused; the last good one stays.
    std::fs::write(
        dir.path().join("v2/tls.key"),
        ca.server("third").key.as_bytes(),
    )
    .unwrap();
    assert!(
        s.wait_log("new TLS files refused", Duration::from_secs(30)),
        "{}",
        s.log_text()
    );
    let tls = tls_connect(addr, config()).await.unwrap();
    assert!(presents(&tls, &second));
    let metrics = support::get(s.admin, "/metrics").unwrap().text();
    assert!(
        metrics.contains("wsgiscale_tls_reloads_total{reason=\"applied\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wsgiscale_tls_reloads_total{reason=\"rejected\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_its_ca() {
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    let other = Ca::new("another CA");
    let dir = tempdir();
    write_leaf(dir.path(), &ca.server("server"));
    let client_ca = dir.path().join("client-ca.crt");
    std::fs::write(&client_ca, &clients.pem).unwrap();
    let s = tls_server(
        dir.path(),
        &[
            "--workers",
            "1",
            "--tls-client-ca",
            client_ca.to_str().unwrap(),
            "--tls-client-verify",
            "require",
        ],
    );
    let addr = tls_addr(&s);
    let good = clients.issue("alice", &[], ExtendedKeyUsagePurpose::ClientAuth);
    let tls = tls_connect(addr, client_config(&ca.pem, &[b"h2"], Some(&good)))
        .await
        .unwrap();
    let mut h2 = h2_client(tls).await;
    assert_eq!(h2_get(&mut h2, "https://localhost/pid").await.status, 200);

    let bad = other.issue("mallory", &[], ExtendedKeyUsagePurpose::ClientAuth);
    for client in [None, Some(&bad)] {
        // With TLS 1.3 the client learns of the refusal on its first read, not in the
        // handshake; either way it gets no response.
        let refused = async {
            let tls = tls_connect(addr, client_config(&ca.pem, &[b"http/1.1"], client)).await?;
            let (mut send, conn) = http1::handshake::<_, Body>(TokioIo::new(tls))
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            let req = Request::get("/pid")
                .header("host", "localhost")
                .body(Empty::new().boxed())
                .unwrap();
            send.send_request(req).await.map_err(std::io::Error::other)
        };
        let result = tokio::time::timeout(Duration::from_secs(30), refused)
            .await
            .expect("refused promptly, not hung");
        assert!(
            result.is_err(),
            "a client with {:?} was served",
            client.map(|_| "a foreign cert")
        );
    }
    let metrics = support::get(s.admin, "/metrics").unwrap().text();
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("wsgiscale_tls_handshake_failures_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(failures >= 2.0, "{metrics}");
    // optional: a client without a certificate is served, one with a foreign one is not.
    let s = tls_server(
        dir.path(),
        &[
            "--workers",
            "1",
            "--tls-client-ca",
            client_ca.to_str().unwrap(),
            "--tls-client-verify",
            "optional",
        ],
    );
    let tls = tls_connect(tls_addr(&s), client_config(&ca.pem, &[b"h2"], None))
        .await
        .unwrap();
    let mut h2 = h2_client(tls).await;
    assert_eq!(h2_get(&mut h2, "https://localhost/pid").await.status, 200);
}

#[test]
fn tls_settings_that_cannot_work_refuse_to_start() {
    let ca = Ca::new("test CA");
    let dir = tempdir();
    write_leaf(dir.path(), &ca.server("server"));
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    let tls = [
        "--tls-bind",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    // granian #853: client verification asked for without a CA must not silently be off.
    for verify in ["require", "optional"] {
        let args = [&tls[..], &["--tls-client-verify", verify]].concat();
        let (status, log) = start_failing(APP, &args);
        assert_eq!(status.code(), Some(2), "{log}");
        assert!(log.contains("needs --tls-client-ca"), "{log}");
    }
    let missing = dir.path().join("missing.key");
    let args = [&tls[..4], &["--tls-key", missing.to_str().unwrap()]].concat();
    let (status, log) = start_failing(APP, &args);
    assert!(!status.success());
    assert!(log.contains("missing.key"), "{log}");
    // The key of another certificate.
    let other = dir.path().join("other.key");
    std::fs::write(&other, ca.server("other").key).unwrap();
    let args = [&tls[..4], &["--tls-key", other.to_str().unwrap()]].concat();
    let (status, log) = start_failing(APP, &args);
    assert!(!status.success());
    assert!(log.contains("other.key"), "{log}");
}

/// An HTTP/2 handshake and one GET on `io`, however it ends (within 30 s).
async fn h2_request(
    io: TcpStream,
    uri: &str,
) -> hyper::Result<http::Response<hyper::body::Incoming>> {
    let attempt = async {
        let (mut send, conn) =
            http2::handshake::<_, _, Body>(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(conn);
        send.send_request(get(uri)).await
    };
    tokio::time::timeout(Duration::from_secs(30), attempt)
        .await
        .expect("answered or refused promptly, not hung")
}

/// h2c with prior knowledge is served to a peer in --h2c-allow-ips and refused to any other,
/// which can still speak HTTP/1.1.
#[tokio::test]
async fn h2c_is_served_to_trusted_peers_only() {
    let s = Server::start(
        APP,
        &["--workers", "1", "--h2c", "--h2c-allow-ips", "127.0.0.1/32"],
    );
    let from = |ip: [u8; 4]| async move {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from((ip, 0))).unwrap();
        sock.connect(s.addr).await.unwrap()
    };
    let mut h2 = h2_client(from([127, 0, 0, 1]).await).await;
    let a = h2_get(&mut h2, &format!("http://{}/environ", s.addr)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.version, Version::HTTP_2);
    assert_eq!(a.json()["SERVER_PROTOCOL"], "HTTP/2.0");
    assert_eq!(a.json()["wsgi.url_scheme"], "http");
    // The same trusted peer may still speak HTTP/1.1.
    let mut h1 = h1_client(from([127, 0, 0, 1]).await).await;
    assert_eq!(h1_get(&mut h1, "/pid").await.status, 200);

    // 127.0.0.2 is not in the list: its HTTP/2 preface is refused, its HTTP/1.1 served.
    let untrusted = from([127, 0, 0, 2]).await;
    let r = h2_request(untrusted, &format!("http://{}/pid", s.addr)).await;
    assert!(r.is_err(), "h2c served to an untrusted peer");
    assert!(
        s.wait_log("HTTP/2 (h2c) refused", Duration::from_secs(5)),
        "{}",
        s.log_text()
    );
    let mut h1 = h1_client(from([127, 0, 0, 2]).await).await;
    assert_eq!(h1_get(&mut h1, "/pid").await.status, 200);

    // Without --h2c nobody gets h2c, loopback included.
    let off = Server::start(APP, &["--workers", "1"]);
    let tcp = TcpStream::connect(off.addr).await.unwrap();
    let r = h2_request(tcp, &format!("http://{}/pid", off.addr)).await;
    assert!(r.is_err());
}

/// An HTTP/2 stream whose body arrives slowly waits in its own task: the only worker stays
/// free for the connection's other streams and for other clients, and the stream that never
/// finishes gets 408 at --body-timeout, as over HTTP/1.1. Streams queue in the one FIFO and
/// count in the load report.
#[tokio::test]
async fn a_slow_http2_stream_never_holds_a_worker() {
    let s = Server::start(APP, &["--workers", "1", "--h2c", "--body-timeout", "3s"]);
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let h2 = h2_client(tcp).await;
    let base = format!("http://{}", s.addr);

    // Stream A: declares 100 bytes, sends 10.
    let (mut body_tx, body) = Channel::<Bytes, std::convert::Infallible>::new(4);
    let req = Request::post(format!("{base}/input"))
        .header("content-length", "100")
        .body(body.boxed())
        .unwrap();
    let mut a_send = h2.clone();
    let slow = tokio::spawn(async move { answer(a_send.send_request(req).await).await });
    body_tx
        .send_data(Bytes::from_static(b"0123456789"))
        .await
        .unwrap();

    // Stream B on the same connection, and another client over HTTP/1.1: both served by the
    // one worker while A is still sending.
    let mut b_send = h2.clone();
    let b = h2_get(&mut b_send, &format!("{base}/pid")).await;
    assert_eq!(b.status, 200);
    assert_eq!(s.get("/pid").status, 200);
    let load = s.load();
    assert_eq!(load["in_flight"], 0, "A holds no worker: {load}");
    assert_eq!(load["queue"]["depth"], 0, "{load}");
    assert!(!slow.is_finished());

    // A completes: served whole.
    body_tx
        .send_data(Bytes::from(vec![b'x'; 90]))
        .await
        .unwrap();
    drop(body_tx);
    let a = slow.await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["len"], 100);

    // Stream C never finishes its body: 408 at the body timeout.
    let (mut c_tx, body) = Channel::<Bytes, std::convert::Infallible>::new(4);
    let req = Request::post(format!("{base}/input"))
        .header("content-length", "100")
        .body(body.boxed())
        .unwrap();
    let mut c_send = h2.clone();
    let stalled = tokio::spawn(async move { answer(c_send.send_request(req).await).await });
    c_tx.send_data(Bytes::from_static(b"abc")).await.unwrap();
    let c = tokio::time::timeout(Duration::from_secs(30), stalled)
        .await
        .expect("answered at the body timeout")
        .unwrap();
    assert_eq!(c.status, StatusCode::REQUEST_TIMEOUT);
    drop(c_tx);

    // Three slow requests as streams of one connection: one runs, two wait in the FIFO.
    let waits: Vec<_> = (0..3)
        .map(|_| {
            let mut send = h2.clone();
            let uri = format!("{base}/sleep?1500");
            tokio::spawn(async move { h2_get(&mut send, &uri).await })
        })
        .collect();
    let admin = s.admin;
    let seen = tokio::task::spawn_blocking(move || {
        wait_for(Duration::from_secs(10), "two h2 streams queued", || {
            let l = support::get(admin, "/load").unwrap().json();
            (l["in_flight"] == 1 && l["queue"]["depth"] == 2).then_some(l)
        })
    })
    .await
    .unwrap();
    assert_eq!(seen["workers"]["busy"], 1);
    for w in waits {
        assert_eq!(w.await.unwrap().status, 200);
    }
}
