//! The real `wsgiscale-operator` binary against a fake API server on 127.0.0.1: it starts with
//! KUBECONFIG, serves /healthz, /readyz and /metrics, wins the leader Lease, and on SIGTERM
//! releases the Lease and exits 0. The fake answers lists with empty lists, holds watches open
//! and keeps one Lease in memory.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/wsgiscale-operator";
const LEASES_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

#[derive(Default)]
struct FakeApi {
    lease: Option<Value>,
    version: u64,
    /// (method, holderIdentity) of every Lease write.
    lease_writes: Vec<(String, Option<String>)>,
}

type Body = BoxBody<Bytes, Infallible>;

fn reply(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("response")
}

fn not_found() -> Response<Body> {
    reply(
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    )
}

async fn handle(
    state: Arc<Mutex<FakeApi>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if query.contains("watch=true") || query.contains("watch=1") {
        // A watch that never sends anything until the client goes away.
        let pending = futures::stream::pending::<Result<Frame<Bytes>, Infallible>>();
        return Ok(Response::new(StreamBody::new(pending).boxed()));
    }
    let mut st = state.lock().expect("lock");
    let resp = match (method, path.as_str()) {
        (Method::GET, LEASE_PATH) => match &st.lease {
            Some(l) => reply(StatusCode::OK, l.clone()),
            None => not_found(),
        },
        (m @ (Method::POST | Method::PUT), p) if p == LEASES_PATH || p == LEASE_PATH => {
            let mut lease: Value = serde_json::from_slice(&body).expect("a Lease");
            st.version += 1;
            lease["metadata"]["resourceVersion"] = json!(st.version.to_string());
            lease["metadata"]["namespace"] = json!("ops");
            let holder = lease["spec"]["holderIdentity"].as_str().map(String::from);
            st.lease_writes.push((m.to_string(), holder));
            st.lease = Some(lease.clone());
            reply(
                if m == Method::POST {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                lease,
            )
        }
        (Method::GET, _) => reply(
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}),
        ),
        _ => not_found(),
    };
    Ok(resp)
}

async fn start_fake_api(state: Arc<Mutex<FakeApi>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A blocking HTTP/1.0 GET; (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

async fn wait_for(what: &str, child: &mut Child, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the operator exited ({status}) while waiting for {what}");
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_leads_and_exits_cleanly_on_sigterm() {
    let state = Arc::new(Mutex::new(FakeApi::default()));
    let api = start_fake_api(state.clone()).await;
    let dir = std::env::temp_dir().join(format!("wsgiscale-operator-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{api}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: ops\ncurrent-context: fake\n"
        ),
    )
    .expect("write kubeconfig");

    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsgiscale-operator"))
        .args([
            "run",
            "--http-bind",
            &format!("127.0.0.1:{port}"),
            "--identity",
            "test-1",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("WSGISCALE_OPERATOR_LEASE_DURATION_SECONDS", "3")
        .env("WSGISCALE_OPERATOR_LOG_FORMAT", "json")
        .env_remove("WSGISCALE_OPERATOR_NAMESPACES")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the operator");

    wait_for("/readyz", &mut child, || {
        matches!(get(port, "/readyz"), Some((200, _)))
    })
    .await;
    assert!(matches!(get(port, "/healthz"), Some((200, _))));
    wait_for("the leader lease", &mut child, || {
        get(port, "/metrics").is_some_and(|(_, m)| m.contains("wsgiscale_operator_leader 1"))
    })
    .await;
    // Renewals keep the lease with us.
    wait_for("a renewal", &mut child, || {
        state
            .lock()
            .expect("lock")
            .lease_writes
            .iter()
            .any(|(m, _)| m == "PUT")
    })
    .await;

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the operator did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut logs = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut logs);
    }
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; logs:\n{logs}"
    );

    let writes = state.lock().expect("lock").lease_writes.clone();
    assert_eq!(
        writes.first(),
        Some(&("POST".to_string(), Some("test-1".to_string()))),
        "{writes:?}"
    );
    assert_eq!(
        writes.last(),
        Some(&("PUT".to_string(), None)),
        "the lease is released: {writes:?}"
    );
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not a JSON log line: {line}"
        );
    }
    assert!(logs.contains("SIGTERM"), "{logs}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `wsgiscale-operator crd | head -1`: the reader goes away after one line; the command ends
/// quietly with status 0 (before: exit 1, "Broken pipe" and a backtrace).
#[test]
fn crd_into_a_closed_pipe_exits_quietly() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsgiscale-operator"))
        .arg("crd")
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wsgiscale-operator crd");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read a line");
    assert!(first.starts_with('#'), "{first}");
    // The reader is dropped: the rest of the 250 KB CRD meets a closed pipe.
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}

/// `wsgiscale-operator run` without a usable kubeconfig: one line that says so, naming the
/// file once, and a failure status (before: the same message five times and a backtrace).
#[test]
fn run_without_a_kubeconfig_says_so_once() {
    let missing =
        std::env::temp_dir().join(format!("wsgiscale-no-kubeconfig-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_wsgiscale-operator"))
        .arg("run")
        .env("KUBECONFIG", &missing)
        .env("RUST_BACKTRACE", "1")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run wsgiscale-operator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("kubeconfig"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(
        errors[0].matches(&*missing.to_string_lossy()).count(),
        1,
        "{stderr}"
    );
    assert!(
        !stderr.contains("Stack backtrace") && !stderr.contains("Caused by"),
        "{stderr}"
    );
}
