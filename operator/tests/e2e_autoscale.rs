//! The closed loop, end to end, against a real API server: the envtest control plane of
//! `wsgiscale-envtest` (or, with `USE_EXISTING_CLUSTER=true`, the cluster of KUBECONFIG), and
//! the server binary: WSGISCALE_BIN, else target/release/wsgiscale when built, else the
//! target/debug/wsgiscale that `cargo test --workspace` builds.
//!
//! ```text
//! cargo test -p wsgiscale-operator --test e2e_autoscale -- --nocapture
//! ```
//!
//! No container runs in the cluster. The WsgiApp's pods carry a nodeSelector no node matches,
//! so they stay unscheduled and no kubelet touches them; this test's stand-in kubelet turns
//! each of them into a real `wsgiscale serve` process on its own loopback address 127.X.0.N
//! (N from 2), waits until it answers `/load`, and patches the Pod's status to Running and
//! Ready with that podIP; it stops the process when the Pod goes away. The operator runs
//! in-process (controllers and autoscaler), so it reaches 127.X.0.N:adminPort like it reaches
//! a pod IP in a cluster. A load generator sends requests round-robin to the ready stand-ins.
//! The test asserts that the replicas rise under the load and fall after it, with the reasons
//! in Events.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use wsgiscale_envtest::TestNamespace;
use wsgiscale_operator::crd::{
    AutoscalingSpec, PodOverrides, ReplicasSpec, WorkersSpec, WsgiApp, WsgiAppSpec,
};
use wsgiscale_operator::metrics::Metrics;
use wsgiscale_operator::reconcile::Context;
use wsgiscale_operator::run::run_controllers;
use wsgiscale_operator::scrape::scrape_load;

mod support;
use support::install_crd;

const MANAGER: &str = "wsgiscale-e2e";
const APP: &str = "shop";
const ADMIN_PORT: u16 = 9191;
const HTTP_PORT: u16 = 8000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("WSGISCALE_BIN") {
        return PathBuf::from(bin);
    }
    let release = repo().join("target/release/wsgiscale");
    if release.exists() {
        return release;
    }
    repo().join("target/debug/wsgiscale")
}

/// The WsgiApp: 1..4 workers per pod, 1..6 pods, fast windows so the test is short.
fn app(ns: &str) -> WsgiApp {
    let mut app = WsgiApp::new(
        APP,
        WsgiAppSpec {
            image: "registry.invalid/stand-in:never-pulled".into(),
            app: "demo:application".into(),
            workers: Some(WorkersSpec {
                min: Some(1),
                max: Some(4),
                ..WorkersSpec::default()
            }),
            replicas: Some(ReplicasSpec {
                min: Some(1),
                max: Some(6),
                ..ReplicasSpec::default()
            }),
            autoscaling: Some(AutoscalingSpec {
                enabled: Some(true),
                stable_window_seconds: Some(20),
                panic_window_seconds: Some(4),
                tick_seconds: Some(2),
                ..AutoscalingSpec::default()
            }),
            pod: Some(PodOverrides {
                // No node has it: the pods stay unscheduled, and the stand-in runs them.
                node_selector: BTreeMap::from([(
                    "wsgiscale.dev/e2e-stand-in".to_string(),
                    "true".to_string(),
                )]),
                ..PodOverrides::default()
            }),
            ..WsgiAppSpec::default()
        },
    );
    app.metadata.namespace = Some(ns.to_string());
    app
}

/// A pod turned into a process.
struct StandIn {
    ip: Ipv4Addr,
    child: std::process::Child,
}

/// The stand-in kubelet: every 500 ms, start a server for each new pod of the app and mark
/// it Ready once it answers; stop the server of each pod that is gone. Publishes the ready
/// HTTP addresses for the load generator.
async fn stand_in_kubelet(
    pods: Api<Pod>,
    ready: Arc<Mutex<Vec<SocketAddr>>>,
    stop: CancellationToken,
) {
    let mut running: HashMap<String, StandIn> = HashMap::new();
    let mut next_ip = 2u8;
    // A loopback /24 of this process's own (127.X.0.0), so that two runs at once (two
    // checkouts, a CI run beside a developer's) never serve on each other's addresses.
    let subnet = u8::try_from(std::process::id() % 250 + 1).expect("1..=250");
    let selector = format!("wsgiscale.dev/app={APP}");
    while !stop.is_cancelled() {
        let listed = match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(l) => l.items,
            Err(e) => {
                eprintln!("stand-in: list pods: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let alive: Vec<String> = listed
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect();
        // Pods gone (or going): stop their servers.
        let gone: Vec<String> = running
            .keys()
            .filter(|k| !alive.contains(k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(mut s) = running.remove(&name) {
                eprintln!("stand-in: {name} gone, stopping {}", s.ip);
                stop_server(&mut s.child).await;
            }
        }
        // New pods: start a server on the next loopback address.
        let new: Vec<String> = alive
            .iter()
            .filter(|n| !running.contains_key(*n))
            .cloned()
            .collect();
        for name in new {
            let ip = Ipv4Addr::new(127, subnet, 0, next_ip);
            next_ip = next_ip.wrapping_add(1).max(2);
            let child = std::process::Command::new(server_bin())
                .arg("serve")
                .args(["--bind", &format!("{ip}:{HTTP_PORT}")])
                .args(["--admin-bind", &format!("{ip}:{ADMIN_PORT}")])
                .args(["--workers", "1:4", "--cheaper-algo", "spare2"])
                .arg("--chdir")
                .arg(repo().join("examples/apps"))
                .arg("demo:application")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start wsgiscale serve (make build, or set WSGISCALE_BIN)");
            eprintln!("stand-in: {name} -> {ip}");
            running.insert(name, StandIn { ip, child });
        }
        // Servers that answer /load: their pods become Running and Ready.
        let mut addrs = Vec::new();
        for pod in listed.iter().filter(|p| alive.contains(&p.name_any())) {
            let Some(s) = running.get(&pod.name_any()) else {
                continue;
            };
            let admin = SocketAddr::new(IpAddr::V4(s.ip), ADMIN_PORT);
            if scrape_load(admin, Duration::from_millis(300))
                .await
                .is_err()
            {
                continue;
            }
            addrs.push(SocketAddr::new(IpAddr::V4(s.ip), HTTP_PORT));
            let is_ready = pod.status.as_ref().is_some_and(|st| {
                st.pod_ip.as_deref() == Some(&s.ip.to_string())
                    && st
                        .conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if !is_ready {
                if let Err(e) =
                    wsgiscale_envtest::mark_pod_ready(&pods, &pod.name_any(), &s.ip.to_string())
                        .await
                {
                    eprintln!("stand-in: patch status of {}: {e}", pod.name_any());
                }
            }
        }
        *ready.lock().expect("lock") = addrs;
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    for (_, mut s) in running {
        stop_server(&mut s.child).await;
    }
}

/// SIGTERM (the server drains and stops its workers), then SIGKILL after 10 s.
async fn stop_server(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..100 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One HTTP/1.0 request to `addr`; true on a 200.
async fn get(addr: SocketAddr, path: &str) -> bool {
    let work = async {
        let mut sock = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        sock.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        sock.read_to_end(&mut buf).await.ok()?;
        Some(buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200"))
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// `clients` loops sending `GET /work?ms=200` round-robin to the ready stand-ins until
/// `until`; returns the successful requests.
async fn load(
    ready: Arc<Mutex<Vec<SocketAddr>>>,
    clients: usize,
    until: tokio::time::Instant,
) -> u64 {
    let ok = Arc::new(AtomicU64::new(0));
    let rr = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (ready, ok, rr) = (ready.clone(), ok.clone(), rr.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < until {
                    let addr = {
                        let r = ready.lock().expect("lock");
                        if r.is_empty() {
                            None
                        } else {
                            let i = rr.fetch_add(1, Ordering::Relaxed) as usize % r.len();
                            Some(r[i])
                        }
                    };
                    match addr {
                        Some(a) if get(a, "/work?ms=200").await => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    ok.load(Ordering::Relaxed)
}

async fn replicas(deployments: &Api<Deployment>) -> i32 {
    deployments
        .get_opt(APP)
        .await
        .ok()
        .flatten()
        .and_then(|d| d.spec.replicas)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_rise_under_load_and_fall_after_with_reasons_in_events() {
    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    assert!(
        server_bin().exists(),
        "{} is missing: run `make build` or set WSGISCALE_BIN",
        server_bin().display()
    );
    let client = cluster.client().await;
    install_crd(&client, MANAGER).await;
    let namespace = TestNamespace::create(cluster, "e2e").await;
    let ns = namespace.name.clone();

    let stop = CancellationToken::new();
    let ctx = Arc::new(Context::new(
        client.clone(),
        Some("e2e".into()),
        Arc::new(Metrics::default()),
        Duration::from_secs(60),
    ));
    let operator = {
        let (ns, stop) = (ns.clone(), stop.clone());
        tokio::spawn(async move { run_controllers(&ctx, &[ns], 2, stop).await })
    };
    let ready = Arc::new(Mutex::new(Vec::new()));
    let kubelet = tokio::spawn(stand_in_kubelet(
        Api::namespaced(client.clone(), &ns),
        ready.clone(),
        stop.clone(),
    ));

    let apps: Api<WsgiApp> = Api::namespaced(client.clone(), &ns);
    apps.create(&PostParams::default(), &app(&ns))
        .await
        .expect("create the WsgiApp");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    // One pod comes up.
    let mut waited = 0;
    while ready.lock().expect("lock").is_empty() {
        assert!(waited < 120, "no stand-in pod became ready");
        tokio::time::sleep(Duration::from_secs(1)).await;
        waited += 1;
    }
    assert_eq!(replicas(&deployments).await, 1);

    // 12 clients of 200 ms requests: 12 in flight against 4 workers per pod at 70% (2.8):
    // about 5 pods. Watch the replicas while the load runs.
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    let peak = Arc::new(AtomicU64::new(1));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (deployments, peak, watching) = (deployments.clone(), peak.clone(), watching.clone());
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                let r = u64::try_from(replicas(&deployments).await).unwrap_or(0);
                peak.fetch_max(r, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let served = load(ready.clone(), 12, until).await;
    eprintln!("load: {served} requests served");
    assert!(served > 100, "the stand-ins served only {served} requests");
    let peak_replicas = peak.load(Ordering::Relaxed);
    assert!(peak_replicas >= 3, "replicas peaked at {peak_replicas}");

    // The load is gone: back to replicas.min within a few stable windows.
    let mut fell = false;
    for _ in 0..180 {
        if replicas(&deployments).await == 1 {
            fell = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    watching.store(false, Ordering::Relaxed);
    let _ = watcher.await;
    assert!(fell, "replicas did not fall back to 1");

    // The reasons, in words and numbers, are in the Events.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let list = events.list(&ListParams::default()).await.expect("events");
    let notes = |reason: &str| -> Vec<String> {
        list.items
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(APP))
            .filter_map(|e| e.note.clone())
            .collect()
    };
    let up = notes("ScaledUp");
    let down = notes("ScaledDown");
    eprintln!("ScaledUp: {up:?}\nScaledDown: {down:?}");
    assert!(up.iter().any(|n| n.contains("capacity 2.8/pod")), "{up:?}");
    assert!(!down.is_empty(), "no ScaledDown event");
    let status = apps
        .get(APP)
        .await
        .expect("the app")
        .status
        .unwrap_or_default();
    let load = status.load.unwrap_or_default();
    assert!(load.pods_scraped.unwrap_or(0) >= 1, "{load:?}");
    assert!(status
        .autoscaler
        .and_then(|a| a.last_scale_reason)
        .is_some());

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), operator).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), kubelet).await;
}
