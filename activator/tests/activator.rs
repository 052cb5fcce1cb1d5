//! The activator against a real API server and real pods on the stand-in node: a request for
//! an app at zero pods is held until a pod's server is ready and then answered; a burst waits
//! in the one FIFO and is spread over the ready pods; a request whose deadline passes gets a
//! 503 with Retry-After; SIGTERM drains what is held before the activator returns.
//!
//! Needs root (the stand-in node) and the envtest assets; elsewhere it says why and passes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use wsgiscale_activator::{Activator, Config};
use wsgiscale_core::activator::{Demand, HoldLimits, Route, RouteTable, ROUTES_KEY};
use wsgiscale_envtest::load::{free_port, get_once as get};
use wsgiscale_envtest::node::plan::Image;
use wsgiscale_envtest::node::NodeConfig;
use wsgiscale_envtest::standin::{StandIn, StandInConfig};
use wsgiscale_envtest::TestNamespace;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn server_dir() -> PathBuf {
    // The newer of the release and debug builds (a stale one must not stand in).
    let built = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let release = repo().join("target/release/wsgiscale");
    let debug = repo().join("target/debug/wsgiscale");
    let bin = std::env::var_os("WSGISCALE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| match (built(&release), built(&debug)) {
            (Some(r), Some(d)) if r >= d => release,
            (Some(_), None) => release,
            _ => debug,
        });
    std::fs::canonicalize(&bin)
        .unwrap_or(bin)
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A stand-in for the operator's demand endpoint: answers 202 and counts the reports that say
/// requests are held.
async fn demand_counter() -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let held = Arc::new(AtomicU64::new(0));
    let count = held.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // The head, then as much body as its Content-Length says.
                let body = loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break buf[end + 4..end + 4 + len].to_vec();
                    }
                };
                if let Ok(d) = serde_json::from_slice::<Demand>(&body) {
                    if d.held > 0 {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    (url, held)
}

fn deployment(replicas: i32) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{
                        "name": "app", "image": "wsgiscale:test",
                        "command": ["wsgiscale"],
                        "args": ["serve", "--bind", "0.0.0.0:8000", "--admin-bind", "0.0.0.0:9191",
                                 "--workers", "1:2", "--chdir", "/app", "demo:application"],
                        "ports": [{"name": "http", "containerPort": 8000}, {"name": "admin", "containerPort": 9191}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 10},
                        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
                    }],
                },
            },
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_until_ready_spreads_a_burst_expires_and_drains() {
    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    if let Err(why) = wsgiscale_envtest::node::check_available() {
        wsgiscale_envtest::skip_line(&format!("stand-in node: {why}"));
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter("wsgiscale_activator=debug,wsgiscale_envtest=debug")
        .with_test_writer()
        .try_init();
    let ns = TestNamespace::create(cluster, "activator").await;
    let client = cluster.client().await;
    let standin = StandIn::start(
        client.clone(),
        StandInConfig {
            node: NodeConfig {
                name: format!("activator-test-{}", std::process::id()),
                namespaces: vec![ns.name.clone()],
                start_delay: Duration::from_millis(500),
                images: BTreeMap::from([(
                    "wsgiscale:test".to_string(),
                    Image {
                        path: vec![server_dir()],
                        files: vec![("/app".into(), repo().join("examples/apps"))],
                        ..Image::default()
                    },
                )]),
                ..NodeConfig::default()
            },
            metrics_resolution: Duration::from_secs(15),
        },
    )
    .await
    .expect("the stand-ins start");
    let pp = PatchParams::apply("activator-test").force();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    deploys
        .patch("web", &pp, &Patch::Apply(deployment(0)))
        .await
        .expect("deployment");
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    services
        .patch(
            "web-pods",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-pods"},
                "spec": {"clusterIP": "None", "selector": {"app": "web"},
                         "ports": [{"name": "http", "port": 8000, "targetPort": "http"}]},
            })),
        )
        .await
        .expect("service");
    let port = free_port();
    let route = Route {
        namespace: ns.name.clone(),
        app: "web".into(),
        port,
        pods_service: "web-pods".into(),
        http_port_name: "http".into(),
        admin_port: 9191,
        slots_per_pod: 2,
        hold: HoldLimits {
            max_requests: 100,
            max_bytes: 1 << 20,
            max_wait_ms: 2000,
        },
    };
    let table = RouteTable {
        routes: vec![route],
    };
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    cms.patch(
        "routes",
        &pp,
        &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "routes"},
            "data": {ROUTES_KEY: serde_json::to_string(&table).expect("json")},
        })),
    )
    .await
    .expect("routes");
    let (operator_url, held_reports) = demand_counter().await;
    let activator = Arc::new(Activator::new(Config {
        listen_ip: "127.0.0.1".parse().expect("ip"),
        admin_bind: SocketAddr::from(([127, 0, 0, 1], free_port())),
        routes_namespace: ns.name.clone(),
        routes_configmap: "routes".into(),
        operator_url: Some(operator_url),
        pod_name: "activator-test".into(),
        drain_timeout: Duration::from_secs(30),
        namespaces: Vec::new(),
        drain_delay: Duration::ZERO,
        // Strict: the slot counts below are the pods' own.
        backlog_per_slot: wsgiscale_activator::app::Backlog::Fixed(0),
        max_connections: 10_000,
    }));
    let shutdown = CancellationToken::new();
    let run = {
        let (a, c, s) = (activator.clone(), client.clone(), shutdown.clone());
        tokio::spawn(async move { a.run(c, s).await })
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Wait until it listens.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the activator does not listen on the app's port"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // At zero pods: held until its deadline, then 503 with Retry-After.
    let (code, took, text) = get(addr, "/").await;
    assert_eq!(code, 503, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(
        took >= Duration::from_secs(2),
        "held for its deadline: {took:?}"
    );
    assert!(
        held_reports.load(Ordering::SeqCst) > 0,
        "the operator heard of the held request"
    );
    // From now on a pod's start (the server's import, under a loaded machine) fits.
    let mut table = table;
    table.routes[0].hold.max_wait_ms = 60_000;
    cms.patch(
        "routes",
        &pp,
        &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "routes"},
            "data": {ROUTES_KEY: serde_json::to_string(&table).expect("json")},
        })),
    )
    .await
    .expect("routes");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Held, then answered once a pod's server is ready (scale from zero).
    let first = tokio::spawn(async move { get(addr, "/work?ms=10").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    deploys
        .patch("web", &pp, &Patch::Apply(deployment(2)))
        .await
        .expect("scale to 2");
    let (code, _, text) = first.await.expect("task");
    if code != 200 {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns.name);
        for p in pods.list(&Default::default()).await.expect("pods").items {
            eprintln!(
                "pod {:?}: {}",
                p.metadata.name,
                serde_json::to_string(&p.status).unwrap_or_default()
            );
        }
        let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
            Api::namespaced(client.clone(), &ns.name);
        for s in slices
            .list(&Default::default())
            .await
            .expect("slices")
            .items
        {
            eprintln!("slice {}", serde_json::to_string(&s).unwrap_or_default());
        }
    }
    assert_eq!(code, 200, "{text}");

    // A burst of 40 requests of 200 ms over the pods' 4 slots: all answered, by both pods.
    let mut burst = Vec::new();
    for _ in 0..40 {
        burst.push(tokio::spawn(async move { get(addr, "/work?ms=200").await }));
    }
    let mut pids = std::collections::BTreeSet::new();
    for b in burst {
        let (code, _, text) = b.await.expect("task");
        assert_eq!(code, 200, "{text}");
        if let Some(i) = text.find("\"pid\":") {
            pids.insert(text[i..].chars().take(14).collect::<String>());
        }
    }
    let metrics = activator.metrics_text();
    assert!(
        metrics.contains("wsgiscale_activator_forwarded_total"),
        "{metrics}"
    );
    assert!(
        pids.len() >= 2,
        "the burst was spread over the workers of the pods: {pids:?}"
    );

    // Clients that go away while their requests are at the pods (or just handed to them) give
    // the pods' slots back: six clients of 1 s requests leave after 150 ms, more than the
    // pods' 4 slots; then a request is answered (a slot lost for good would hold it until its
    // deadline, and with all four lost the app would take nothing again).
    let mut gone = Vec::new();
    for _ in 0..6 {
        gone.push(tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_millis(150), get(addr, "/work?ms=1000")).await;
        }));
    }
    for g in gone {
        g.await.expect("task");
    }
    let after: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(addr, "/work?ms=10").await }))
        .collect();
    for a in after {
        let (code, _, text) = a.await.expect("task");
        assert_eq!(
            code, 200,
            "the slots of the clients that left came back: {text}"
        );
    }

    // A request that a ready pod takes at once is not reported to the operator as held (each
    // such report makes the autoscaler tick the app at once).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = held_reports.load(Ordering::SeqCst);
    for _ in 0..5 {
        let (code, _, text) = get(addr, "/work?ms=10").await;
        assert_eq!(code, 200, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        held_reports.load(Ordering::SeqCst),
        before,
        "requests taken at once by a ready pod were reported held"
    );

    // SIGTERM while requests are held: they are delivered before the activator returns.
    deploys
        .patch("web", &pp, &Patch::Apply(deployment(0)))
        .await
        .expect("scale to 0");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !standin.proxy.endpoints(&ns.name, "web-pods").is_empty()
        || standin.node.pods().iter().any(|p| p.namespace == ns.name)
    {
        assert!(Instant::now() < deadline, "the pods did not go");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Bodies still arriving count against the app's byte bound (1 MiB here): eight clients
    // each declare 300 KiB and send 150 KiB, then stall. Their 1,200 KiB cannot all be
    // buffered: some are refused (503) while every one of them is still sending.
    let stalled: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                s.write_all(
                    b"POST /work?ms=1 HTTP/1.1\r\nhost: web\r\ncontent-length: 307200\r\n\r\n",
                )
                .await
                .expect("head");
                let _ = s.write_all(&[b'x'; 150 * 1024]).await;
                let mut buf = [0u8; 12];
                let answered =
                    tokio::time::timeout(Duration::from_millis(1500), s.read_exact(&mut buf))
                        .await
                        .is_ok_and(|r| r.is_ok());
                (
                    answered.then(|| String::from_utf8_lossy(&buf).to_string()),
                    s,
                )
            })
        })
        .collect();
    let mut refused = 0;
    let mut streams = Vec::new();
    for t in stalled {
        let (line, s) = t.await.expect("task");
        if let Some(line) = line {
            assert_eq!(line, "HTTP/1.1 503", "a refused body gets a 503");
            refused += 1;
        }
        streams.push(s);
    }
    assert!(
        (1..8).contains(&refused),
        "part of the eight stalled bodies was refused at the byte bound: {refused}"
    );
    assert!(
        activator.metrics_text().contains("reason=\"max_bytes\""),
        "{}",
        activator.metrics_text()
    );
    // Their clients leave: the reservations are given back, and a body of 900 KiB (which
    // fits the bound only if they were) is held (no pod: no answer), not refused.
    drop(streams);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /work?ms=1 HTTP/1.1\r\nhost: web\r\ncontent-length: 921600\r\n\r\n")
        .await
        .expect("head");
    s.write_all(&vec![b'x'; 900 * 1024]).await.expect("body");
    let mut buf = [0u8; 12];
    let answer = tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await;
    assert!(
        answer.is_err(),
        "a body that fits once the reservations are back was refused: {:?}",
        String::from_utf8_lossy(&buf)
    );
    drop(s);

    let held = tokio::spawn(async move { get(addr, "/work?ms=10").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections while draining"
    );
    deploys
        .patch("web", &pp, &Patch::Apply(deployment(1)))
        .await
        .expect("scale to 1");
    let (code, _, text) = held.await.expect("task");
    assert_eq!(
        code, 200,
        "the held request was delivered during the drain: {text}"
    );
    run.await
        .expect("task")
        .expect("the activator ran and drained");
    standin.stop().await;
}
