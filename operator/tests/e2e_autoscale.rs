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
//!
//! With `spec.inject` the stand-in plays the kubelet more closely: it does what the init
//! container does (copies the package folder, WSGISCALE_INJECT_DIR as `make inject-package`
//! builds it, into the pod's "emptyDir", a temporary directory), writes the ConfigMap into
//! the pod's "volume", and runs the app container's own command and arguments from the Pod
//! (the paths of those volumes mapped to the directories) with a plain CPython on the PATH
//! that has no wsgiscale installed. When the start command refuses the image, the stand-in
//! records its termination message in the Pod's status, as the kubelet does.

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
    AutoscalingSpec, InjectSpec, PodOverrides, ReplicasSpec, WorkersSpec, WsgiApp, WsgiAppSpec,
};
use wsgiscale_operator::metrics::Metrics;
use wsgiscale_operator::reconcile::Context;
use wsgiscale_operator::run::run_controllers;
use wsgiscale_operator::scrape::scrape_load;

mod support;
use support::{install_crd, repo, server_bin};

const MANAGER: &str = "wsgiscale-e2e";
const APP: &str = "shop";
const ADMIN_PORT: u16 = 9191;
const HTTP_PORT: u16 = 8000;

const IMAGE: &str = "registry.invalid/stand-in:never-pulled";

/// The WsgiApp: 1..4 workers per pod, 1..6 pods, fast windows so the test is short.
fn app(ns: &str, inject: bool) -> WsgiApp {
    let mut app = WsgiApp::new(
        APP,
        WsgiAppSpec {
            image: IMAGE.into(),
            app: "demo:application".into(),
            chdir: Some(repo().join("examples/apps").display().to_string()),
            inject: inject.then(|| InjectSpec {
                enabled: Some(true),
                ..InjectSpec::default()
            }),
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
    /// The pod's volumes (inject mode), removed with the pod.
    dir: Option<PathBuf>,
    /// The container exited; its termination message is in the Pod's status.
    exited: bool,
}

/// However the stand-in ends (stopped, or dropped with a test that failed): no process and
/// no pod directory is left behind.
impl Drop for StandIn {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// How the stand-in runs a pod.
#[derive(Clone)]
enum Mode {
    /// `wsgiscale serve` from the server binary.
    Binary,
    /// The Pod's own command, with the injected package and this plain CPython's directory
    /// (holding `python3`) on the PATH.
    Inject {
        package: PathBuf,
        python_dir: PathBuf,
    },
}

/// The injected package folder of `make inject-package`; without it the test says it is
/// skipped.
fn inject_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("WSGISCALE_INJECT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/inject"));
    if dir.join("bin/wsgiscale-start").exists() {
        return Some(dir);
    }
    wsgiscale_envtest::skip_line(
        "no injected package folder: run `make inject-package` (make test does)",
    );
    None
}

/// The CPython minor versions the package folder has an extension for.
fn packaged_versions(package: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(package.join("python/wsgiscale"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let tag = n
                        .strip_prefix("_wsgiscale.cpython-3")?
                        .split('-')
                        .next()?
                        .to_string();
                    Some(format!("3.{tag}"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|s| {
        s.split('.')
            .map(|n| n.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    v
}

/// CPython `version`, found as make wheel finds it (packaging/wheels.py).
fn find_python(version: &str) -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .arg(repo().join("packaging/wheels.py"))
        .args(["interpreter", version])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The directory of a plain CPython `version`, holding `python3`.
fn python_dir(version: &str) -> PathBuf {
    let exe = find_python(version).unwrap_or_else(|| panic!("no CPython {version} here"));
    // A plain CPython: it cannot import wsgiscale by itself.
    let plain = std::process::Command::new(&exe)
        .args(["-c", "import wsgiscale"])
        .stderr(Stdio::null())
        .status()
        .expect("run python");
    assert!(
        !plain.success(),
        "{} has wsgiscale installed; the test needs one without",
        exe.display()
    );
    let (dir, link) = python3_dir(&format!("python{version}"));
    std::os::unix::fs::symlink(&exe, &link).expect("link python3");
    dir
}

/// A fresh directory for the stand-in's PATH, and the path of the `python3` to put in it.
fn python3_dir(label: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("wsgiscale-e2e-{label}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let link = dir.join("python3");
    let _ = std::fs::remove_file(&link);
    (dir, link)
}

/// Maps the pod's paths to the stand-in's directories, and its listeners to `ip`.
fn rewrite(arg: &str, ip: Ipv4Addr, package: &std::path::Path, config: &std::path::Path) -> String {
    if let Some(rest) = arg.strip_prefix("0.0.0.0:") {
        return format!("{ip}:{rest}");
    }
    if let Some(rest) = arg.strip_prefix("/etc/wsgiscale") {
        return format!("{}{rest}", config.display());
    }
    if let Some(rest) = arg.strip_prefix("/wsgiscale/") {
        return format!("{}/{rest}", package.display());
    }
    arg.to_string()
}

/// Starts the pod's process: the init container's copy, the ConfigMap volume, the command.
async fn start_injected(
    pod: &Pod,
    configs: &Api<k8s_openapi::api::core::v1::ConfigMap>,
    ip: Ipv4Addr,
    package: &std::path::Path,
    python_dir: &std::path::Path,
) -> Result<(std::process::Child, PathBuf), String> {
    let spec = pod.spec.as_ref().ok_or("no spec")?;
    let dir = std::env::temp_dir().join(format!(
        "wsgiscale-e2e-pod-{}-{}",
        std::process::id(),
        pod.name_any()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // The init container: cp -a /wsgiscale/. /target/ (the emptyDir).
    let empty_dir = dir.join("inject");
    let init = spec
        .init_containers
        .as_ref()
        .and_then(|c| c.first())
        .ok_or("no init container")?;
    assert_eq!(init.name, "wsgiscale-inject");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(package)
        .arg(&empty_dir)
        .status()
        .map_err(|e| e.to_string())?;
    if !copied.success() {
        return Err("the init container's copy failed".into());
    }
    // The ConfigMap volume.
    let config = dir.join("config");
    std::fs::create_dir_all(&config).map_err(|e| e.to_string())?;
    let cm = configs
        .get(&format!("{APP}-config"))
        .await
        .map_err(|e| e.to_string())?;
    for (k, v) in cm.data.unwrap_or_default() {
        std::fs::write(config.join(k), v).map_err(|e| e.to_string())?;
    }
    let c = spec
        .containers
        .iter()
        .find(|c| c.name == "app")
        .ok_or("no app container")?;
    let map = |a: &String| rewrite(a, ip, &empty_dir, &config);
    let command: Vec<String> = c.command.iter().flatten().map(map).collect();
    let args: Vec<String> = c.args.iter().flatten().map(map).collect();
    let (program, rest) = command.split_first().ok_or("no command")?;
    let child = std::process::Command::new(program)
        .args(rest)
        .args(&args)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", python_dir.display()))
        .env(
            "WSGISCALE_START_TERMINATION_LOG",
            dir.join("termination-log"),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    Ok((child, dir))
}

/// The stand-in kubelet: every 500 ms, start a server for each new pod of the app and mark
/// it Ready once it answers; stop the server of each pod that is gone. Publishes the ready
/// HTTP addresses for the load generator.
async fn stand_in_kubelet(
    pods: Api<Pod>,
    configs: Api<k8s_openapi::api::core::v1::ConfigMap>,
    mode: Mode,
    ready: Arc<Mutex<Vec<SocketAddr>>>,
    stop: CancellationToken,
) {
    let mut running: HashMap<String, StandIn> = HashMap::new();
    let mut next_ip = 2u8;
    // A loopback /24 of this stand-in's own (127.X.0.0; X from the process id and the
    // stand-ins started before in it), so that two runs at once (two checkouts, a CI run
    // beside a developer's) and the tests of one run never serve on each other's addresses.
    static STARTED: AtomicU64 = AtomicU64::new(0);
    let nth = STARTED.fetch_add(1, Ordering::Relaxed) % 3;
    let subnet = u8::try_from(u64::from(std::process::id() % 83) * 3 + nth + 1).expect("1..=249");
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
            let (child, dir) = match &mode {
                Mode::Binary => {
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
                    (child, None)
                }
                Mode::Inject {
                    package,
                    python_dir,
                } => {
                    let Some(pod) = listed.iter().find(|p| p.name_any() == name) else {
                        continue;
                    };
                    match start_injected(pod, &configs, ip, package, python_dir).await {
                        Ok((child, dir)) => (child, Some(dir)),
                        Err(e) => {
                            eprintln!("stand-in: cannot start {name}: {e}");
                            continue;
                        }
                    }
                }
            };
            eprintln!("stand-in: {name} -> {ip}");
            running.insert(
                name,
                StandIn {
                    ip,
                    child,
                    dir,
                    exited: false,
                },
            );
        }
        // Containers that exited: their termination message goes to the Pod's status.
        for (name, s) in running.iter_mut().filter(|(_, s)| !s.exited) {
            let Ok(Some(status)) = s.child.try_wait() else {
                continue;
            };
            s.exited = true;
            let message = s
                .dir
                .as_ref()
                .and_then(|d| std::fs::read_to_string(d.join("termination-log")).ok())
                .unwrap_or_default();
            let log = s
                .dir
                .as_ref()
                .and_then(|d| std::fs::read_to_string(d.join("log")).ok())
                .unwrap_or_default();
            eprintln!("stand-in: {name} exited with {status}: {message}\n{log}");
            if let Err(e) = wsgiscale_envtest::mark_pod_crashed(
                &pods,
                name,
                IMAGE,
                status.code().unwrap_or(137),
                &message,
            )
            .await
            {
                eprintln!("stand-in: patch status of {name}: {e}");
            }
        }
        // Servers that answer /load: their pods become Running and Ready.
        let mut addrs = Vec::new();
        for pod in listed.iter().filter(|p| alive.contains(&p.name_any())) {
            let Some(s) = running.get(&pod.name_any()).filter(|s| !s.exited) else {
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

/// The operator in-process and the stand-in kubelet, in a namespace of their own.
struct Loop {
    client: kube::Client,
    namespace: TestNamespace,
    ready: Arc<Mutex<Vec<SocketAddr>>>,
    stop: CancellationToken,
    operator: tokio::task::JoinHandle<()>,
    kubelet: tokio::task::JoinHandle<()>,
}

impl Loop {
    async fn start(cluster: &'static wsgiscale_envtest::Cluster, name: &str, mode: Mode) -> Loop {
        let client = cluster.client().await;
        install_crd(&client, MANAGER).await;
        let namespace = TestNamespace::create(cluster, name).await;
        let ns = namespace.name.clone();
        let stop = CancellationToken::new();
        let ctx = Arc::new(Context::new(
            client.clone(),
            Some(name.into()),
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
            Api::namespaced(client.clone(), &ns),
            mode,
            ready.clone(),
            stop.clone(),
        ));
        Loop {
            client,
            namespace,
            ready,
            stop,
            operator,
            kubelet,
        }
    }

    async fn finish(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.operator).await;
        let _ = tokio::time::timeout(Duration::from_secs(30), self.kubelet).await;
        drop(self.namespace);
    }
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
    closed_loop(cluster, "e2e", Mode::Binary).await;
}

/// The same closed loop with `spec.inject`: the pods run the Pod's own command (the injected
/// start command, then `python3 -m wsgiscale serve`) on a plain CPython without wsgiscale.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn injected_pods_serve_from_a_plain_python_and_scale_the_same() {
    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    let Some(package) = inject_dir() else {
        return;
    };
    let versions = packaged_versions(&package);
    let version = versions
        .last()
        .expect("the package folder holds an extension");
    let python_dir = python_dir(version);
    eprintln!(
        "inject: package {} ({versions:?}), plain CPython {version}",
        package.display()
    );
    closed_loop(
        cluster,
        "e2e-inject",
        Mode::Inject {
            package,
            python_dir,
        },
    )
    .await;
}

/// An image whose Python the package cannot run: the start command says so, and the status
/// and an Event carry its words, not a crash loop's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_the_package_cannot_serve_gets_a_clear_status_and_event() {
    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    let Some(package) = inject_dir() else {
        return;
    };
    // A directory whose python3 is CPython 3.8 (pyenv's, when it is here), else a stand-in
    // that prints what 3.8's probe prints (the start command reads only the probe).
    let (python_dir, link) = python3_dir("oldpython");
    match find_python("3.8") {
        Some(exe) => std::os::unix::fs::symlink(exe, &link).expect("link python3"),
        None => {
            std::fs::write(
                &link,
                "#!/bin/sh\nprintf 'CPython\\n3.8.18\\ncpython-38-x86_64-linux-gnu\\nglibc 2.36\\n'\n",
            )
            .expect("write");
            std::fs::set_permissions(&link, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod");
        }
    }
    let l = Loop::start(
        cluster,
        "e2e-unservable",
        Mode::Inject {
            package,
            python_dir,
        },
    )
    .await;
    let ns = l.namespace.name.clone();
    let apps: Api<WsgiApp> = Api::namespaced(l.client.clone(), &ns);
    apps.create(&PostParams::default(), &app(&ns, true))
        .await
        .expect("create the WsgiApp");
    let mut found = None;
    for _ in 0..90 {
        let st = apps
            .get(APP)
            .await
            .expect("the app")
            .status
            .unwrap_or_default();
        if let Some(c) = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.reason == "UnsupportedPython")
        {
            found = Some(c.clone());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let ready = found.expect("Ready=False with reason UnsupportedPython within 90 s");
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("CPython 3.8.18"),
        "{}",
        ready.message
    );
    assert!(ready.message.contains("3.9 to 3.13"), "{}", ready.message);
    let events: Api<Event> = Api::namespaced(l.client.clone(), &ns);
    let mut warned = false;
    for _ in 0..30 {
        let list = events.list(&ListParams::default()).await.expect("events");
        warned = list.items.iter().any(|e| {
            e.reason.as_deref() == Some("UnsupportedPython")
                && e.type_.as_deref() == Some("Warning")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.contains("CPython 3.8.18"))
        });
        if warned {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(warned, "a Warning Event with reason UnsupportedPython");
    l.finish().await;
}

async fn closed_loop(cluster: &'static wsgiscale_envtest::Cluster, name: &str, mode: Mode) {
    let inject = matches!(mode, Mode::Inject { .. });
    let l = Loop::start(cluster, name, mode).await;
    let (client, ready) = (l.client.clone(), l.ready.clone());
    let ns = l.namespace.name.clone();
    let apps: Api<WsgiApp> = Api::namespaced(client.clone(), &ns);
    apps.create(&PostParams::default(), &app(&ns, inject))
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

    l.finish().await;
}
