//! The activator's measurements (issue 20): `make bench-activator`, or
//!
//! ```text
//! cargo build --release -p wsgiscale-sidecar -p wsgiscale-activator
//! cargo run --release -p wsgiscale-operator --example activator_bench
//! ```
//!
//! On a real control plane (the envtest assets) and the stand-in node (root), with the operator
//! in this process (its demand endpoint on loopback, as in operator/tests/activator_path.rs)
//! and the release `wsgiscale-activator` as a process of its own, listening on the node's
//! address as the activator's pod would:
//!
//! 1. **In the path.** One pod of bench/apps `basic:hello` with a fixed worker count (once per
//!    count of `--workers`, 2 and 8 by default; the activator sends a pod at most workers x
//!    threads requests at once), an autoscaled WsgiApp the operator routes through the
//!    activator. The same requests go (a) straight to the pod's address and (b) to the
//!    activator's port for the app, the two paths alternating in rounds: closed loop
//!    (`wrk -t1 -cN`, keep-alive) for the most requests a second, then open loop (Poisson
//!    arrivals on keep-alive connections, each latency from the request's scheduled arrival,
//!    so a slow path cannot hide its queue) at a moderate rate, half the lower of the two
//!    paths' closed-loop medians, for the added latency. The pod's processes and the load
//!    generators are pinned to one core (`--generator-cpu` moves the generators), the
//!    activator to the other: the pod and the generators see the same machine in both paths,
//!    and the activator has a core of its own, as its pod would. Its CPU time comes from
//!    /proc/PID/stat, the pod's from its cgroup.
//! 2. **Cold start.** Apps at zero pods behind the activator, one request each, its time split
//!    at what this process can see with local clocks: the operator's log events (demand
//!    received, the scale-up decision: a tracing layer in this process), watches of the
//!    Deployment, the Pods and the pods Service's EndpointSlices (local receive times), the
//!    node's record of the pod (taken, first process started), this process's own 5 ms probe
//!    of the server's `/readyz`, the activator's log (its own `/readyz` probe succeeded) and the
//!    response.
//!
//! Writes bench/results/activator-STAMP.md (and .json) and prints the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;
use wsgiscale_core::activator::{RouteTable, ROUTES_KEY};
use wsgiscale_core::trace::{Trace, HEADER};
use wsgiscale_envtest::cgroup::Hierarchy;
use wsgiscale_envtest::node::plan::Image;
use wsgiscale_envtest::node::{NodeConfig, StandInNode};
use wsgiscale_envtest::standin::{StandIn, StandInConfig};
use wsgiscale_envtest::{ControlPlane, Options};
use wsgiscale_operator::crd::WsgiApp;
use wsgiscale_operator::layout::APP_LABEL;
use wsgiscale_operator::metrics::Metrics;
use wsgiscale_operator::reconcile::Context;
use wsgiscale_operator::routing::{ActivatorConfig, DemandBoard, Routing};

// Each example uses part of the shared cluster module.
#[allow(dead_code)]
#[path = "common/cluster.rs"]
mod cluster;
use cluster::{pick_bin, repo};

const NS: &str = "activator-bench";
const IMAGE: &str = "wsgiscale:activator-bench";
const ACTIVATOR_SERVICE: &str = "wsgiscale-activator";
const ROUTES: &str = "wsgiscale-activator-routes";
const MANAGER: &str = "wsgiscale-activator-bench";
/// The server's admin port (the WsgiApp default).
const ADMIN_PORT: u16 = 9191;
/// The pod's HTTP port (the WsgiApp default).
const HTTP_PORT: u16 = 8000;

/// The activator's measurements: in the path, and the cold start.
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    args: Args,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The open-loop load generator (the bench runs it pinned to a core); prints a JSON summary.
    #[command(hide = true)]
    Generate(GenArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct Args {
    /// Seconds of each measured run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds of each path (they alternate), for the closed loop and again for the open loop.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Keep-alive connections of the closed-loop runs (`wrk -c`).
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Open-loop rate, requests a second. [default: half the lower of the two paths'
    /// closed-loop medians]
    #[arg(long)]
    rate: Option<f64>,
    /// Keep-alive connections of the open-loop generator.
    #[arg(long, default_value_t = 32)]
    open_connections: usize,
    /// Worker processes of the measured pod (a fixed count, 1 thread each); part 1 runs once
    /// for each count given. The first is the one held against the targets.
    #[arg(long, value_delimiter = ',', default_values_t = [2u32, 8])]
    workers: Vec<u32>,
    /// Cold starts to measure (each a new app at zero pods).
    #[arg(long, default_value_t = 5)]
    cold_starts: usize,
    /// The stand-in node's container start delay (image pull and container start), ms.
    #[arg(long, default_value_t = 500)]
    start_delay_ms: u64,
    /// The core of the measured pod and of the load generators.
    #[arg(long, default_value_t = 0)]
    pod_cpu: u32,
    /// The core of the activator. The pod's core too puts every process on one core, so
    /// that no request crosses cores (for the added latency; the throughput per core of the
    /// activator is then not judged).
    #[arg(long, default_value_t = 1)]
    activator_cpu: u32,
    /// The core of the load generators. [default: the pod's]
    #[arg(long)]
    generator_cpu: Option<u32>,
    /// The server binary. [default: target/release/wsgiscale]
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The activator binary. [default: target/release/wsgiscale-activator]
    #[arg(long)]
    activator_bin: Option<PathBuf>,
    /// Leave out part 1 (the activator in the path).
    #[arg(long)]
    skip_path: bool,
    /// Leave out part 2 (the cold start).
    #[arg(long)]
    skip_cold_start: bool,
    /// Skip part 3 (the activator's memory under a flood).
    #[arg(long)]
    skip_flood: bool,
    /// The activator's `--backlog-per-slot` (requests per worker slot that may wait in a
    /// pod's own queue): `auto` or 0-16.
    #[arg(long, default_value = "auto")]
    backlog_per_slot: String,
    /// Part 3: clients that send a request at once to an app that cannot start.
    #[arg(long, default_value_t = 3000)]
    flood_clients: usize,
    /// Where the report goes. [default: bench/results]
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Args {
    fn generator_cpu(&self) -> u32 {
        self.generator_cpu.unwrap_or(self.pod_cpu)
    }
}

#[derive(Debug, Clone, clap::Args)]
struct GenArgs {
    /// Where requests go.
    #[arg(long)]
    target: SocketAddr,
    /// The path of every request.
    #[arg(long, default_value = "/")]
    path: String,
    /// Mean arrivals a second (Poisson).
    #[arg(long)]
    rate: f64,
    /// Seconds of arrivals.
    #[arg(long)]
    seconds: f64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seed of the arrivals.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    wsgiscale_envtest::report::quantile(sorted, q)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if !n.is_multiple_of(2) => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

// ---- The open-loop generator -------------------------------------------------------------

/// What one open-loop run came to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct OpenLoop {
    requests: u64,
    ok: u64,
    errors: u64,
    seconds: f64,
    achieved_rps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(target: SocketAddr) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(target).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(sender)
}

/// One keep-alive connection: takes the next due request, sends it, records its latency from
/// when it was due.
async fn generator_connection(
    args: Arc<GenArgs>,
    due: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>>,
    latencies: Arc<Mutex<Vec<f64>>>,
    errors: Arc<AtomicU64>,
) {
    let mut sender: Option<Sender> = None;
    loop {
        let Some(at) = due.lock().await.recv().await else {
            return;
        };
        let ok = tokio::time::timeout(Duration::from_secs(10), async {
            if sender.as_ref().is_none_or(|s| s.is_closed()) {
                sender = connect(args.target).await;
            }
            let s = sender.as_mut()?;
            s.ready().await.ok()?;
            let req = http::Request::get(args.path.as_str())
                .header(http::header::HOST, args.target.to_string())
                .body(Empty::<Bytes>::new())
                .ok()?;
            let resp = s.send_request(req).await.ok()?;
            let status = resp.status();
            resp.into_body().collect().await.ok()?;
            Some(status.is_success())
        })
        .await;
        let latency = at.elapsed().as_secs_f64() * 1000.0;
        if matches!(ok, Ok(Some(true))) {
            latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(latency);
        } else {
            errors.fetch_add(1, Ordering::Relaxed);
            sender = None;
        }
    }
}

/// Sends GET requests at Poisson arrivals on keep-alive connections; a request due while every
/// connection is busy waits for one, and that wait is in its latency.
fn generate(args: GenArgs) -> anyhow::Result<()> {
    ensure!(
        args.rate > 0.0 && args.seconds > 0.0,
        "rate and seconds > 0"
    );
    let trace = Trace::parse(&format!(
        "{HEADER}\n0,{r},1\n{s},{r},1\n",
        r = args.rate,
        s = args.seconds
    ))?;
    let arrivals = trace.arrivals(args.seed);
    let n = arrivals.len();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let errors = Arc::new(AtomicU64::new(0));
    let args = Arc::new(args);
    // The connections open before the first arrival.
    let t0 = Instant::now() + Duration::from_millis(300);
    // The schedule on a thread of its own: tokio's timer has a 1 ms grain, which would send
    // the arrivals of each millisecond together.
    let scheduler = std::thread::spawn(move || {
        for at in arrivals {
            let due = t0 + Duration::from_secs_f64(at);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send(due).is_err() {
                return;
            }
        }
    });
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.connections {
            tasks.spawn(generator_connection(
                args.clone(),
                rx.clone(),
                latencies.clone(),
                errors.clone(),
            ));
        }
        while tasks.join_next().await.is_some() {}
    });
    let _ = scheduler.join();
    let elapsed = t0.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    l.sort_by(f64::total_cmp);
    let ok = l.len() as u64;
    let out = OpenLoop {
        requests: n as u64,
        ok,
        errors: errors.load(Ordering::Relaxed),
        seconds: elapsed,
        achieved_rps: ok as f64 / args.seconds,
        p50_ms: quantile(&l, 0.5),
        p90_ms: quantile(&l, 0.9),
        p99_ms: quantile(&l, 0.99),
        p999_ms: quantile(&l, 0.999),
        max_ms: l.last().copied().unwrap_or(0.0),
        mean_ms: if l.is_empty() {
            0.0
        } else {
            l.iter().sum::<f64>() / l.len() as f64
        },
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

// ---- Events seen in this process ---------------------------------------------------------

/// Something that happened to an app, at a Unix time seen here.
#[derive(Debug, Clone)]
struct Seen {
    t: f64,
    kind: &'static str,
    app: String,
    detail: String,
}

static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

fn note(kind: &'static str, app: &str, detail: String) {
    let t = unix_now();
    SEEN.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
        t,
        kind,
        app: app.to_string(),
        detail,
    });
}

/// The first `kind` for `app` at or after `after`.
fn first_seen(kind: &str, app: &str, after: f64) -> Option<Seen> {
    SEEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|s| s.kind == kind && s.app == app && s.t >= after)
        .min_by(|a, b| a.t.total_cmp(&b.t))
        .cloned()
}

/// How many `kind` for `app` so far.
fn seen_count(kind: &str, app: &str) -> usize {
    SEEN.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|s| s.kind == kind && s.app == app)
        .count()
}

#[derive(Default)]
struct Fields {
    message: String,
    app: String,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "app" => self.app = format!("{value:?}"),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "app" => self.app = value.to_string(),
            _ => {}
        }
    }
}

/// Notes the operator's events of a cold start as they are emitted: the demand it received
/// and its scale-up decision.
struct Capture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut f = Fields::default();
        event.record(&mut f);
        let kind = if f.message.starts_with("held demand reported") {
            "demand"
        } else if f.message == "autoscaler: scale_up" {
            "decision"
        } else {
            return;
        };
        // The decision names the app `namespace/name`.
        let app = f.app.rsplit('/').next().unwrap_or_default().to_string();
        note(kind, &app, f.message);
    }
}

/// Runs `on` for every object `api`'s watch applies, until `stop`.
fn follow<K>(api: Api<K>, stop: &CancellationToken, on: impl Fn(K) + Send + 'static)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut w = std::pin::pin!(watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                o = w.next() => match o {
                    Some(Ok(o)) => on(o),
                    Some(Err(_)) => {}
                    None => return,
                },
            }
        }
    });
}

/// Follows the Deployments, Pods and pods Services' EndpointSlices of the namespace, noting
/// when each change arrives here.
fn spawn_watches(client: &Client, stop: &CancellationToken) {
    follow(
        Api::<Deployment>::namespaced(client.clone(), NS),
        stop,
        |d| {
            let replicas = d.spec.replicas.unwrap_or(0);
            if replicas > 0 {
                note("deployment", &d.name_any(), replicas.to_string());
            }
        },
    );
    follow(Api::<Pod>::namespaced(client.clone(), NS), stop, |p| {
        if let Some(app) = p.labels().get(APP_LABEL) {
            note("pod", app, p.name_any());
        }
    });
    follow(
        Api::<EndpointSlice>::namespaced(client.clone(), NS),
        stop,
        |e| {
            let Some(svc) = e.labels().get("kubernetes.io/service-name") else {
                return;
            };
            let Some(app) = svc.strip_suffix("-pods") else {
                return;
            };
            let eps = e.endpoints.clone().unwrap_or_default();
            if !eps.is_empty() {
                note("slice", app, String::new());
            }
            if eps
                .iter()
                .any(|x| x.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            {
                note("slice_ready", app, String::new());
            }
        },
    );
}

/// The two paths in the order round `round` runs them: alternating which goes first, so a
/// drift of the machine hits both.
fn paths_in_round(
    round: usize,
    direct: SocketAddr,
    through: SocketAddr,
) -> [(&'static str, SocketAddr); 2] {
    if round.is_multiple_of(2) {
        [("direct", direct), ("activator", through)]
    } else {
        [("activator", through), ("direct", direct)]
    }
}

// ---- Processes and measurements ----------------------------------------------------------

/// The activator's process (SIGTERM when dropped).
struct ActivatorProcess {
    child: Child,
    log: PathBuf,
    admin: SocketAddr,
}

impl ActivatorProcess {
    #[allow(clippy::too_many_arguments)]
    fn start(
        bin: &Path,
        cpu: u32,
        listen: IpAddr,
        admin: SocketAddr,
        kubeconfig: &Path,
        operator_url: &str,
        backlog_per_slot: &str,
        log: &Path,
    ) -> anyhow::Result<ActivatorProcess> {
        let out = std::fs::File::create(log)?;
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(cpu.to_string())
            .arg(bin)
            .args(["--listen-ip", &listen.to_string()])
            .args(["--admin-bind", &admin.to_string()])
            .args(["--namespace", NS, "--routes", ROUTES])
            .args(["--operator-url", operator_url])
            .args(["--backlog-per-slot", backlog_per_slot])
            .args(["--pod-name", "activator-bench", "--log-format", "json"])
            .args(["--log-level", "wsgiscale_activator=debug,warn"])
            .env("KUBECONFIG", kubeconfig)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        cluster::scrub_env(&mut cmd, &["WSGISCALE_ACTIVATOR_"]);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        Ok(ActivatorProcess {
            child,
            log: log.to_path_buf(),
            admin,
        })
    }

    fn pid(&self) -> u32 {
        // taskset execs the binary: the same process.
        self.child.id()
    }

    /// The times (Unix seconds) of its log lines with `message` for `app`.
    fn logged(&self, message: &str, app: &str) -> Vec<f64> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message && v["app"] == app)
            .filter_map(|v| {
                let ts: k8s_openapi::jiff::Timestamp = v["timestamp"].as_str()?.parse().ok()?;
                Some(ts.as_microsecond() as f64 / 1e6)
            })
            .collect()
    }
}

impl Drop for ActivatorProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
fn process_cpu_seconds(pid: u32, ticks_per_second: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    ensure!(f.len() > 12, "short /proc/{pid}/stat");
    let utime: f64 = f[11].parse()?;
    let stime: f64 = f[12].parse()?;
    Ok((utime + stime) / ticks_per_second)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The measured pod's CPU seconds (its cgroup).
fn pod_cpu_seconds(node: &StandInNode, name: &str) -> f64 {
    node.pods()
        .iter()
        .find(|p| p.namespace == NS && p.name == name)
        .map_or(0.0, |p| p.cpu_ns as f64 / 1e9)
}

/// Pins every process of the pod (its cgroup) to `cpu`; how many.
fn pin_pod(node: &StandInNode, uid: &str, cpu: u32) -> anyhow::Result<usize> {
    let hierarchy = Hierarchy::detect()?;
    let dir = hierarchy
        .node_dirs(node.name())
        .into_iter()
        .next()
        .context("no cgroup directory of the node")?
        .join(format!("pod-{uid}"));
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
        .with_context(|| format!("{}", dir.display()))?;
    let mut n = 0;
    for pid in procs.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let ok = Command::new("taskset")
            .args(["-a", "-p", "-c", &cpu.to_string(), pid])
            .stdout(Stdio::null())
            .status()?
            .success();
        ensure!(ok, "taskset -a -p -c {cpu} {pid} failed");
        // Every thread of it, read back.
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let status = std::fs::read_to_string(task?.path().join("status"))?;
            let allowed = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(str::trim);
            ensure!(
                allowed == Some(cpu.to_string().as_str()),
                "process {pid} of the pod runs on cores {allowed:?}, not {cpu}"
            );
        }
        n += 1;
    }
    Ok(n)
}

/// What one closed-loop run (wrk) came to.
#[derive(Debug, Clone, Default, Serialize)]
struct ClosedLoop {
    requests: u64,
    seconds: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn parse_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))?;
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

/// wrk's output: requests, seconds, req/s, p50, p99, errors (socket errors and non-2xx/3xx).
fn parse_wrk(out: &str) -> anyhow::Result<ClosedLoop> {
    let mut r = ClosedLoop::default();
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("50%") {
            r.p50_ms = parse_duration_ms(v).context("wrk p50")?;
        } else if let Some(v) = line.strip_prefix("99%") {
            r.p99_ms = parse_duration_ms(v).context("wrk p99")?;
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse()?;
        } else if line.contains(" requests in ") {
            let mut it = line.split_whitespace();
            r.requests = it.next().context("wrk requests")?.parse()?;
            let secs = line
                .split(" in ")
                .nth(1)
                .and_then(|x| x.split(',').next())
                .context("wrk seconds")?;
            r.seconds = parse_duration_ms(secs).context("wrk seconds")? / 1000.0;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            r.errors += v
                .split(',')
                .filter_map(|x| x.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    ensure!(
        r.requests > 0 && r.rps > 0.0,
        "no result in wrk's output:\n{out}"
    );
    Ok(r)
}

async fn run_wrk(
    cpu: u32,
    connections: u32,
    seconds: u64,
    url: String,
) -> anyhow::Result<ClosedLoop> {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("taskset")
            .args(["-c", &cpu.to_string(), "wrk", "-t1"])
            .arg(format!("-c{connections}"))
            .arg(format!("-d{seconds}s"))
            .args(["--latency", &url])
            .output()?;
        ensure!(
            out.status.success(),
            "wrk: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_wrk(&String::from_utf8_lossy(&out.stdout))
    })
    .await?
}

async fn run_generator(
    cpu: u32,
    target: SocketAddr,
    rate: f64,
    seconds: u64,
    connections: usize,
    seed: u64,
) -> anyhow::Result<OpenLoop> {
    let exe = std::env::current_exe()?;
    tokio::task::spawn_blocking(move || {
        let out = Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(exe)
            .arg("generate")
            .args(["--target", &target.to_string()])
            .args(["--rate", &rate.to_string()])
            .args(["--seconds", &seconds.to_string()])
            .args(["--connections", &connections.to_string()])
            .args(["--seed", &seed.to_string()])
            .stderr(Stdio::inherit())
            .output()?;
        ensure!(out.status.success(), "the generator failed");
        Ok(serde_json::from_slice::<OpenLoop>(&out.stdout)?)
    })
    .await?
}

/// GET `path` on a connection of its own: the status.
async fn get_once(addr: SocketAddr, path: &str, timeout: Duration) -> u16 {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let _ = s.set_nodelay(true);
        let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        wsgiscale_envtest::node::probe::parse_status_line(&buf)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

async fn until<T, F, Fut>(what: &str, secs: u64, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {secs} s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The app's port on the activator, from the operator's route table.
async fn activator_port(client: &Client, app: &str) -> Option<u16> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let cm = cms.get_opt(ROUTES).await.ok().flatten()?;
    let text = cm.data?.remove(ROUTES_KEY)?;
    let table: RouteTable = serde_json::from_str(&text).ok()?;
    table.find(NS, app).map(|r| r.port)
}

fn path_app(name: &str, workers: u32) -> serde_json::Value {
    json!({
        "apiVersion": "wsgiscale.dev/v1alpha1", "kind": "WsgiApp", "metadata": {"name": name},
        "spec": {
            "image": IMAGE, "app": "basic:hello", "chdir": "/app",
            "workers": {"min": workers, "max": workers, "threads": 1},
            "replicas": {"min": 1, "max": 1},
            "autoscaling": {"enabled": true},
            "service": {"port": 80},
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        },
    })
}

fn cold_app(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "wsgiscale.dev/v1alpha1", "kind": "WsgiApp", "metadata": {"name": name},
        "spec": {
            "image": IMAGE, "app": "basic:hello", "chdir": "/app",
            "workers": {"min": 1, "max": 2},
            "replicas": {"min": 0, "max": 1},
            "autoscaling": {"enabled": true, "stableWindowSeconds": 10, "panicWindowSeconds": 2,
                            "tickSeconds": 1},
            "scaleToZero": {"enabled": true, "idleSeconds": 600},
            "service": {"port": 80},
            "resources": {"limits": {"cpu": "1", "memory": "256Mi"}},
        },
    })
}

// ---- Part 1: the activator in the path ----------------------------------------------------

#[derive(Debug, Clone, Serialize)]
struct ClosedRun {
    path: &'static str,
    round: usize,
    wrk: ClosedLoop,
    activator_cpu_s: f64,
    pod_cpu_s: f64,
    /// Through the activator: the backlog per slot it gave the pod at the end of the run.
    backlog: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct OpenRun {
    path: &'static str,
    round: usize,
    rate: f64,
    run: OpenLoop,
    activator_cpu_s: f64,
    pod_cpu_s: f64,
}

#[derive(Debug, Clone, Serialize)]
struct PathResults {
    workers: u32,
    direct: SocketAddr,
    through: SocketAddr,
    /// Reports of held requests the operator received during the open-loop runs.
    held_reports: usize,
    pinned_processes: usize,
    closed: Vec<ClosedRun>,
    open: Vec<OpenRun>,
    rate: f64,
}

struct Bench<'a> {
    args: &'a Args,
    client: Client,
    standin: &'a StandIn,
    activator: &'a ActivatorProcess,
    ticks: f64,
}

impl Bench<'_> {
    async fn measure_path(&self, workers: u32) -> anyhow::Result<PathResults> {
        let name = format!("hello-{workers}");
        let name = name.as_str();
        let args = self.args;
        let pp = PatchParams::apply(MANAGER).force();
        let apps: Api<WsgiApp> = Api::namespaced(self.client.clone(), NS);
        apps.patch(name, &pp, &Patch::Apply(path_app(name, workers)))
            .await
            .context("the measured WsgiApp")?;
        let node = &self.standin.node;
        let pod = until("the measured pod ready", 120, || async {
            node.pods()
                .into_iter()
                .find(|p| {
                    p.namespace == NS
                        && p.labels.get(APP_LABEL).map(String::as_str) == Some(name)
                        && p.ready
                        && !p.terminating
                })
                .and_then(|p| Some((p.name.clone(), p.ip?)))
        })
        .await?;
        let (pod_name, pod_ip) = pod;
        let port = until("the app's port on the activator", 60, || {
            activator_port(&self.client, name)
        })
        .await?;
        let direct = SocketAddr::from((pod_ip, HTTP_PORT));
        let through = SocketAddr::from((node.address(), port));
        until("the app answering through the activator", 60, || async {
            (get_once(through, "/", Duration::from_secs(5)).await == 200).then_some(())
        })
        .await?;
        ensure!(
            get_once(direct, "/", Duration::from_secs(5)).await == 200,
            "the pod does not answer at {direct}"
        );
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let uid = pods
            .get(&pod_name)
            .await?
            .metadata
            .uid
            .context("the pod's uid")?;
        let pinned = pin_pod(node, &uid, args.pod_cpu)?;
        eprintln!(
            "activator-bench: pod {pod_name} at {direct} ({pinned} processes on core {}), \
             through the activator at {through} (core {})",
            args.pod_cpu, args.activator_cpu
        );

        let url = |a: SocketAddr| format!("http://{a}/");
        // Warm both paths (connections, the pod's and the activator's first requests).
        for a in [direct, through] {
            run_wrk(args.generator_cpu(), args.connections, 2, url(a)).await?;
        }
        let mut closed = Vec::new();
        for round in 0..args.rounds {
            // Alternate which path goes first, so a drift of the machine hits both.
            let order = paths_in_round(round, direct, through);
            for (path, addr) in order {
                let (a0, p0) = self.cpu(&pod_name)?;
                let wrk = run_wrk(
                    args.generator_cpu(),
                    args.connections,
                    args.seconds,
                    url(addr),
                )
                .await?;
                let (a1, p1) = self.cpu(&pod_name)?;
                let backlog = if path == "activator" {
                    backlog_per_slot(self.activator.admin, name).await
                } else {
                    None
                };
                eprintln!(
                    "activator-bench: closed loop, {path}, round {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, activator {:.2} CPU s, backlog {backlog:?}",
                    round + 1,
                    wrk.rps,
                    wrk.p50_ms,
                    wrk.p99_ms,
                    a1 - a0
                );
                closed.push(ClosedRun {
                    path,
                    round,
                    wrk,
                    activator_cpu_s: a1 - a0,
                    pod_cpu_s: p1 - p0,
                    backlog,
                });
            }
        }
        let direct_max = median(
            &closed
                .iter()
                .filter(|r| r.path == "direct")
                .map(|r| r.wrk.rps)
                .collect::<Vec<_>>(),
        );
        let through_max = median(
            &closed
                .iter()
                .filter(|r| r.path == "activator")
                .map(|r| r.wrk.rps)
                .collect::<Vec<_>>(),
        );
        // Moderate for both paths, so the hop is measured and not a queue: half the lower of
        // the two closed-loop medians.
        let rate = args
            .rate
            .unwrap_or((direct_max.min(through_max) / 2.0).round());
        let demand_before = seen_count("demand", name);
        let mut open = Vec::new();
        for round in 0..args.rounds {
            let order = paths_in_round(round, direct, through);
            for (path, addr) in order {
                let (a0, p0) = self.cpu(&pod_name)?;
                let run = run_generator(
                    args.generator_cpu(),
                    addr,
                    rate,
                    args.seconds,
                    args.open_connections,
                    round as u64 + 1,
                )
                .await?;
                let (a1, p1) = self.cpu(&pod_name)?;
                eprintln!(
                    "activator-bench: open loop at {rate:.0} req/s, {path}, round {}: p50 {:.3} ms, p99 {:.3} ms, errors {}",
                    round + 1,
                    run.p50_ms,
                    run.p99_ms,
                    run.errors
                );
                open.push(OpenRun {
                    path,
                    round,
                    rate,
                    run,
                    activator_cpu_s: a1 - a0,
                    pod_cpu_s: p1 - p0,
                });
            }
        }
        // Its pod goes, so the next measured pod has the core alone.
        apps.delete(name, &DeleteParams::default()).await?;
        until("the measured pod gone", 60, || async {
            (!node
                .pods()
                .iter()
                .any(|p| p.labels.get(APP_LABEL).map(String::as_str) == Some(name)))
            .then_some(())
        })
        .await?;
        Ok(PathResults {
            workers,
            direct,
            through,
            held_reports: seen_count("demand", name) - demand_before,
            pinned_processes: pinned,
            closed,
            open,
            rate,
        })
    }

    /// (activator CPU s, pod CPU s) so far.
    fn cpu(&self, pod: &str) -> anyhow::Result<(f64, f64)> {
        Ok((
            process_cpu_seconds(self.activator.pid(), self.ticks)?,
            pod_cpu_seconds(&self.standin.node, pod),
        ))
    }

    // ---- Part 2: the cold start ---------------------------------------------------------

    async fn cold_start(&self, name: &str) -> anyhow::Result<Cold> {
        let pp = PatchParams::apply(MANAGER).force();
        let apps: Api<WsgiApp> = Api::namespaced(self.client.clone(), NS);
        apps.patch(name, &pp, &Patch::Apply(cold_app(name)))
            .await
            .context("a cold-start WsgiApp")?;
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), NS);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), NS);
        let port = until("the app's port on the activator", 60, || {
            activator_port(&self.client, name)
        })
        .await?;
        until(
            "the Service leading to the activator at zero pods",
            60,
            || async {
                let s = slices.get_opt(&format!("{name}-wsgiscale")).await.ok()??;
                let on_activator = s.ports?.first()?.port == Some(i32::from(port));
                let d = deployments.get_opt(name).await.ok()??;
                (on_activator && d.spec.replicas == Some(0)).then_some(())
            },
        )
        .await?;
        let addr = SocketAddr::from((self.standin.node.address(), port));
        until("the activator listening on the app's port", 60, || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await?;
        // Whatever the new app set going settles first.
        tokio::time::sleep(Duration::from_secs(2)).await;

        let node = self.standin.node.clone();
        let app = name.to_string();
        let prober = tokio::spawn(async move { probe_server(&node, &app).await });
        let sent = unix_now();
        let status = get_once(addr, "/", Duration::from_secs(60)).await;
        let answered = unix_now();
        let server_ready = tokio::time::timeout(Duration::from_secs(5), prober)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        // The activator's log line and the watches' last events.
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let ms = |t: f64| (t - sent) * 1000.0;
        let seen = |kind: &str| first_seen(kind, name, sent);
        let pod = seen("pod");
        let record = pod.as_ref().and_then(|p| {
            self.standin
                .node
                .records()
                .into_iter()
                .find(|r| r.namespace == NS && r.name == p.detail)
        });
        let activator_ready = self
            .activator
            .logged("pod ready by its /readyz", name)
            .into_iter()
            .filter(|t| *t >= sent)
            .min_by(f64::total_cmp);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let restarts = match &pod {
            Some(p) => pods
                .get_opt(&p.detail)
                .await?
                .and_then(|p| p.status?.container_statuses)
                .map_or(0, |c| c.iter().map(|c| c.restart_count).sum()),
            None => 0,
        };
        let cold = Cold {
            app: name.to_string(),
            status,
            restarts,
            demand: seen("demand").map(|s| ms(s.t)),
            decision: seen("decision").map(|s| ms(s.t)),
            deployment: seen("deployment").map(|s| ms(s.t)),
            pod_created: pod.as_ref().map(|s| ms(s.t)),
            taken: record.as_ref().map(|r| ms(r.taken)),
            started: record.as_ref().and_then(|r| r.started).map(ms),
            in_slice: seen("slice").map(|s| ms(s.t)),
            server_ready: server_ready.map(ms),
            activator_ready: activator_ready.map(ms),
            node_ready: record.as_ref().and_then(|r| r.ready).map(ms),
            slice_ready: seen("slice_ready").map(|s| ms(s.t)),
            response: ms(answered),
        };
        apps.delete(name, &DeleteParams::default()).await?;
        Ok(cold)
    }
}

/// Until the app's pod's server answers `/readyz` 200 (this process's own probe, every 5 ms
/// once the node gave the pod its address): when, in Unix seconds.
async fn probe_server(node: &StandInNode, app: &str) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let ip = node
            .pods()
            .into_iter()
            .find(|p| {
                p.namespace == NS
                    && p.labels.get(APP_LABEL).map(String::as_str) == Some(app)
                    && !p.terminating
            })
            .and_then(|p| p.ip);
        if let Some(ip) = ip {
            let admin = SocketAddr::from((ip, ADMIN_PORT));
            if get_once(admin, "/readyz", Duration::from_millis(200)).await == 200 {
                return Some(unix_now());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// One cold start: milliseconds from the request's send to each event (None: not seen).
#[derive(Debug, Clone, Default, Serialize)]
struct Cold {
    app: String,
    status: u16,
    /// Restarts of the pod's containers.
    restarts: i32,
    /// The operator received the activator's demand push (its log event).
    demand: Option<f64>,
    /// The operator's autoscaler decided to scale up (its log event).
    decision: Option<f64>,
    /// The Deployment's replicas above zero (watch).
    deployment: Option<f64>,
    /// The Pod (watch).
    pod_created: Option<f64>,
    /// The node took the pod (its record).
    taken: Option<f64>,
    /// The pod's first process started, after the node's start delay (its record).
    started: Option<f64>,
    /// The pod in its pods Service's EndpointSlice, not ready yet (watch).
    in_slice: Option<f64>,
    /// The server's `/readyz` answered 200 (this process's probe).
    server_ready: Option<f64>,
    /// The activator's own `/readyz` probe succeeded (its log).
    activator_ready: Option<f64>,
    /// The node's readiness probe passed (its record).
    node_ready: Option<f64>,
    /// The pod ready in the EndpointSlice (watch).
    slice_ready: Option<f64>,
    /// The whole response received.
    response: f64,
}

impl Cold {
    /// The pod's own start: from the node taking it to its server ready.
    fn own_start(&self) -> Option<f64> {
        Some(self.server_ready? - self.taken?)
    }

    /// What the cold start adds to the pod's own start.
    fn overhead(&self) -> Option<f64> {
        Some(self.response - self.own_start()?)
    }
}

// ---- The report --------------------------------------------------------------------------

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.0}"))
}

fn span(v: &[f64], digits: usize) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.d$} ({:.d$}–{:.d$})", median(v), min, max, d = digits)
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "**met**"
    } else {
        "**missed**"
    }
}

fn path_report(md: &mut String, p: &PathResults, args: &Args, first: bool) {
    let closed =
        |path: &str| -> Vec<&ClosedRun> { p.closed.iter().filter(|r| r.path == path).collect() };
    let open = |path: &str| -> Vec<&OpenRun> { p.open.iter().filter(|r| r.path == path).collect() };
    let _ = writeln!(
        md,
        "## 1. The activator in the path: a pod of {} workers{}\n",
        p.workers,
        if first {
            " (held against the targets)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "One pod of bench/apps `basic:hello` (13 bytes), {} worker processes of 1 thread (the \
         activator sends it at most {}: `--backlog-per-slot {}`), no CPU \
         limit; its {} processes pinned to core {}, the load generators (wrk, and this \
         program's open-loop generator) to core {} ({}), the release `wsgiscale-activator` to \
         core {} (`taskset`). Direct: {}; through the activator: {} (its port for the app on \
         the node's address). The paths alternate, {} rounds of {} s each; medians with \
         (min–max) over the rounds.\n",
        p.workers,
        match args.backlog_per_slot.parse::<u32>() {
            Ok(n) => format!("{} requests at once", p.workers * (n + 1)),
            Err(_) => {
                let seen: Vec<String> = closed("activator")
                    .iter()
                    .map(|r| r.backlog.map_or("?".to_string(), |b| format!("{b:.0}")))
                    .collect();
                format!(
                    "its workers plus as many per worker as cover the round trip to it; the \
                     backlog per slot it chose, after each closed-loop round: {}",
                    seen.join(", ")
                )
            }
        },
        args.backlog_per_slot,
        p.pinned_processes,
        args.pod_cpu,
        args.generator_cpu(),
        if args.activator_cpu == args.pod_cpu {
            "one core for every process: no request crosses cores"
        } else if args.generator_cpu() == args.pod_cpu {
            "with the pod: the activator has its core to itself"
        } else if args.generator_cpu() == args.activator_cpu {
            "with the activator"
        } else {
            "a core of their own"
        },
        args.activator_cpu,
        p.direct,
        p.through,
        args.rounds,
        args.seconds
    );
    let _ = writeln!(
        md,
        "### Closed loop: `wrk -t1 -c{} -d{}s --latency` (keep-alive)\n",
        args.connections, args.seconds
    );
    let _ = writeln!(
        md,
        "| path | req/s | p50 ms | p99 ms | errors | activator CPU s per 1,000 req | activator cores busy | pod CPU s per 1,000 req |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for path in ["direct", "activator"] {
        let rs = closed(path);
        let rps: Vec<f64> = rs.iter().map(|r| r.wrk.rps).collect();
        let p50: Vec<f64> = rs.iter().map(|r| r.wrk.p50_ms).collect();
        let p99: Vec<f64> = rs.iter().map(|r| r.wrk.p99_ms).collect();
        let errors: u64 = rs.iter().map(|r| r.wrk.errors).sum();
        let act: Vec<f64> = rs
            .iter()
            .map(|r| r.activator_cpu_s / (r.wrk.requests as f64 / 1000.0))
            .collect();
        let cores: Vec<f64> = rs
            .iter()
            .map(|r| r.activator_cpu_s / r.wrk.seconds.max(1e-9))
            .collect();
        let pod: Vec<f64> = rs
            .iter()
            .map(|r| r.pod_cpu_s / (r.wrk.requests as f64 / 1000.0))
            .collect();
        let act_cell = if path == "direct" {
            "–".to_string()
        } else {
            span(&act, 4)
        };
        let cores_cell = if path == "direct" {
            "–".to_string()
        } else {
            span(&cores, 2)
        };
        let _ = writeln!(
            md,
            "| {path} | {} | {} | {} | {errors} | {act_cell} | {cores_cell} | {} |",
            span(&rps, 0),
            span(&p50, 2),
            span(&p99, 2),
            span(&pod, 4)
        );
    }
    // Per round: through / direct, and the activator's capacity per core.
    let mut ratios = Vec::new();
    let mut per_core = Vec::new();
    for round in 0..args.rounds {
        let d = p
            .closed
            .iter()
            .find(|r| r.path == "direct" && r.round == round);
        let a = p
            .closed
            .iter()
            .find(|r| r.path == "activator" && r.round == round);
        if let (Some(d), Some(a)) = (d, a) {
            ratios.push(a.wrk.rps / d.wrk.rps);
            let cores = a.activator_cpu_s / a.wrk.seconds.max(1e-9);
            per_core.push(a.wrk.rps / cores.max(1e-9) / d.wrk.rps);
        }
    }
    let act_cpu_per_k = median(
        &closed("activator")
            .iter()
            .map(|r| r.activator_cpu_s / (r.wrk.requests as f64 / 1000.0))
            .collect::<Vec<_>>(),
    );
    let _ = writeln!(
        md,
        "\nThrough / direct, per round: {} (median {:.2}). The activator's throughput per core \
         it used (req/s through it / its CPU cores busy) over the direct path's req/s, per \
         round: {} (median {:.2}); at {:.4} CPU s per 1,000 requests one core of it carries \
         about {} req/s.\n",
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        median(&ratios),
        per_core
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        median(&per_core),
        act_cpu_per_k,
        thousands(1000.0 / act_cpu_per_k.max(1e-12)),
    );
    let _ = writeln!(
        md,
        "### Open loop at {} req/s (Poisson, {} keep-alive connections; latency from each request's scheduled arrival)\n",
        thousands(p.rate),
        args.open_connections
    );
    let _ = writeln!(
        md,
        "| path | req/s answered | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | activator CPU s per 1,000 req |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for path in ["direct", "activator"] {
        let rs = open(path);
        let col = |f: fn(&OpenLoop) -> f64| rs.iter().map(|r| f(&r.run)).collect::<Vec<f64>>();
        let errors: u64 = rs.iter().map(|r| r.run.errors).sum();
        let act: Vec<f64> = rs
            .iter()
            .map(|r| r.activator_cpu_s / (r.run.ok.max(1) as f64 / 1000.0))
            .collect();
        let act_cell = if path == "direct" {
            "–".to_string()
        } else {
            span(&act, 4)
        };
        let _ = writeln!(
            md,
            "| {path} | {} | {} | {} | {} | {} | {} | {errors} | {act_cell} |",
            span(&col(|r| r.achieved_rps), 0),
            span(&col(|r| r.p50_ms), 3),
            span(&col(|r| r.p90_ms), 3),
            span(&col(|r| r.p99_ms), 3),
            span(&col(|r| r.p999_ms), 3),
            span(&col(|r| r.max_ms), 1),
        );
    }
    let mut added50 = Vec::new();
    let mut added99 = Vec::new();
    for round in 0..args.rounds {
        let d = p
            .open
            .iter()
            .find(|r| r.path == "direct" && r.round == round);
        let a = p
            .open
            .iter()
            .find(|r| r.path == "activator" && r.round == round);
        if let (Some(d), Some(a)) = (d, a) {
            added50.push(a.run.p50_ms - d.run.p50_ms);
            added99.push(a.run.p99_ms - d.run.p99_ms);
        }
    }
    let _ = writeln!(
        md,
        "\nAdded latency (activator minus direct, same round): p50 {} ms, p99 {} ms (median, min–max over the rounds).\n",
        span(&added50, 3),
        span(&added99, 3)
    );
    let _ = writeln!(
        md,
        "### Against the targets{}\n",
        if first { "" } else { " (for comparison)" }
    );
    let tp = median(&per_core);
    if args.activator_cpu == args.pod_cpu {
        // One core for everything: the direct path had the activator's share of it too.
        let _ = writeln!(
            md,
            "- Throughput: not judged: the activator shares the pod's core (`--activator-cpu \
             {}`), so the direct path had its share of that core too. Through / direct is \
             {:.2}x.",
            args.activator_cpu,
            median(&ratios)
        );
    } else {
        let _ = writeln!(
            md,
            "- Throughput: through the activator at least 0.8x the direct path's throughput \
             per core of the activator: {:.2}x (median of the rounds; req/s through it divided \
             by the cores it kept busy, over the direct path's req/s): {}. Without the \
             per-core normalisation, through / direct is {:.2}x.",
            tp,
            verdict(tp >= 0.8),
            median(&ratios)
        );
    }
    let a99 = median(&added99);
    let _ = writeln!(
        md,
        "- Added latency: p99 under 2 ms at a moderate rate, {} req/s (half the lower of the \
         two paths' closed-loop medians unless --rate was given): +{:.3} ms: {}.\n",
        thousands(p.rate),
        a99,
        verdict(a99 < 2.0)
    );
    let _ = writeln!(
        md,
        "During the open-loop runs the operator received {} reports of held requests for this \
         app (each makes its autoscaler tick at once).\n",
        p.held_reports
    );
}

fn cold_report(md: &mut String, cold: &[Cold], args: &Args) {
    let _ = writeln!(md, "## 2. The cold start\n");
    let _ = writeln!(
        md,
        "{} apps, each created at zero pods behind the activator (`replicas.min: 0`, \
         `scaleToZero`), one `GET /` (bench/apps `basic:hello`, 1..2 workers, CPU limit 1) sent \
         straight to the activator's port for it on a new connection once it listens there. \
         The stand-in node's start delay (image pull and container start): {} ms. Milliseconds \
         from the request's send; the operator's events are its log events in this process, \
         the activator's its log (its own clock), the rest watches and probes in this process.\n",
        cold.len(),
        args.start_delay_ms
    );
    let _ = writeln!(
        md,
        "| app | demand at the operator | scale-up decision | Deployment replicas 1 | Pod created | node took it | process started | in pods slice | server ready | activator's probe ok | response | status | pod's own start | overhead |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for c in cold {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} |",
            c.app,
            fmt_ms(c.demand),
            fmt_ms(c.decision),
            fmt_ms(c.deployment),
            fmt_ms(c.pod_created),
            fmt_ms(c.taken),
            fmt_ms(c.started),
            fmt_ms(c.in_slice),
            fmt_ms(c.server_ready),
            fmt_ms(c.activator_ready),
            c.response,
            c.status,
            fmt_ms(c.own_start()),
            fmt_ms(c.overhead()),
        );
    }
    // The segments, each from the event before.
    type Get = fn(&Cold) -> Option<f64>;
    let steps: [(&str, Get, Get); 9] = [
        (
            "request sent -> demand received by the operator",
            |_| Some(0.0),
            |c| c.demand,
        ),
        (
            "-> the operator's scale-up decision",
            |c| c.demand,
            |c| c.decision,
        ),
        ("-> Deployment updated", |c| c.decision, |c| c.deployment),
        ("-> Pod created", |c| c.deployment, |c| c.pod_created),
        ("-> the node took the pod", |c| c.pod_created, |c| c.taken),
        (
            "-> the pod's process started (the node's start delay)",
            |c| c.taken,
            |c| c.started,
        ),
        (
            "-> the server ready (import, workers, `/readyz` 200)",
            |c| c.started,
            |c| c.server_ready,
        ),
        (
            "-> the activator's own `/readyz` probe succeeded",
            |c| c.server_ready,
            |c| c.activator_ready,
        ),
        (
            "-> the response received",
            |c| c.activator_ready,
            |c| Some(c.response),
        ),
    ];
    let _ = writeln!(
        md,
        "\n| segment | median ms | min–max ms |\n|---|---:|---:|"
    );
    for (what, from, to) in steps {
        let v: Vec<f64> = cold
            .iter()
            .filter_map(|c| Some(to(c)? - from(c)?))
            .collect();
        if v.is_empty() {
            let _ = writeln!(md, "| {what} | – | – |");
            continue;
        }
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(md, "| {what} | {:.1} | {min:.1}–{max:.1} |", median(&v));
    }
    let total: Vec<f64> = cold.iter().map(|c| c.response).collect();
    let own: Vec<f64> = cold.iter().filter_map(Cold::own_start).collect();
    let over: Vec<f64> = cold.iter().filter_map(Cold::overhead).collect();
    let in_slice: Vec<f64> = cold
        .iter()
        .filter_map(|c| Some(c.in_slice? - c.started?))
        .collect();
    let node_ready: Vec<f64> = cold
        .iter()
        .filter_map(|c| Some(c.node_ready? - c.server_ready?))
        .collect();
    let _ = writeln!(
        md,
        "\nTotal {} ms; the pod's own start (node took it -> server ready) {} ms; overhead \
         (total less the pod's own start) {} ms (median, min–max). For comparison: the pod \
         appeared in its pods Service's EndpointSlice {} ms after its process started; the \
         node's readiness probe (the kubelet's, which the EndpointSlice then follows) {}.\n",
        span(&total, 0),
        span(&own, 0),
        span(&over, 0),
        if in_slice.is_empty() {
            "–".into()
        } else {
            span(&in_slice, 0)
        },
        match node_ready.len() {
            0 => "had passed for none of them 1.5 s after its response".to_string(),
            n if n < cold.len() => format!(
                "had passed for {n} of them 1.5 s after its response, {} ms after the server \
                 was ready",
                span(&node_ready, 0)
            ),
            _ => format!(
                "passed {} ms after the server was ready",
                span(&node_ready, 0)
            ),
        },
    );
    let worst = over.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // A cold start answered with anything but 200 failed, however fast.
    let failed: Vec<String> = cold
        .iter()
        .filter(|c| c.status != 200)
        .map(|c| format!("{} ({})", c.app, c.status))
        .collect();
    let _ =
        writeln!(
        md,
        "Against the target (cold start no more than the pod's own start plus 100 ms): overhead \
         {:.0} ms median, {:.0} ms at worst; not answered 200: {}: {}.\n",
        median(&over),
        worst,
        if failed.is_empty() { "none".into() } else { failed.join(", ") },
        verdict(
            !over.is_empty() && worst <= 100.0 && over.len() == cold.len() && failed.is_empty()
        )
    );
}

fn timestamp() -> String {
    Command::new("date")
        .arg("+%Y%m%d-%H%M%S")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "now".into())
}

fn machine() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}); load average {}", load.join(" "))
}

#[derive(Debug, Serialize)]
struct Results {
    date: String,
    commit: String,
    command: String,
    machine_at_start: String,
    machine_at_end: String,
    path: Vec<PathResults>,
    cold: Vec<Cold>,
    floods: Vec<Flood>,
}

// ---- Part 3: the activator's memory under a flood -----------------------------------------

/// What the flood app may hold: small bounds, so that passing them is cheap to show.
const FLOOD_MAX_REQUESTS: u32 = 2000;
const FLOOD_MAX_BYTES_MIB: u64 = 8;
const FLOOD_WAIT_SECONDS: u64 = 10;

fn flood_app(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "wsgiscale.dev/v1alpha1", "kind": "WsgiApp", "metadata": {"name": name},
        "spec": {
            // No node can pull it: the app's requests are held until their deadline.
            "image": "registry.invalid/nothing:1", "app": "basic:hello", "chdir": "/app",
            "workers": {"min": 1, "max": 2},
            "replicas": {"min": 0, "max": 1},
            "autoscaling": {"enabled": true, "tickSeconds": 1},
            "scaleToZero": {"enabled": true, "idleSeconds": 600},
            "activator": {
                "maxHeldRequests": FLOOD_MAX_REQUESTS,
                "maxHeldBytes": format!("{FLOOD_MAX_BYTES_MIB}Mi"),
                "maxWaitSeconds": FLOOD_WAIT_SECONDS,
            },
            "service": {"port": 80},
        },
    })
}

/// One flood: `clients` connections at once, each with one request of `body` bytes.
#[derive(Debug, Clone, Serialize)]
struct Flood {
    what: &'static str,
    clients: usize,
    body: usize,
    /// The activator's RSS (KiB) before, at its peak while the requests were held, and 2 s
    /// after the last answer.
    rss_before: u64,
    rss_peak: u64,
    rss_after: u64,
    /// Answered 503 before the deadline (refused at a bound).
    refused: usize,
    /// Answered 503 at or after the deadline (held until then).
    held: usize,
    /// Anything else (connection errors, other statuses).
    other: usize,
    /// The activator's rejections by reason during this flood.
    reasons: Vec<(String, f64)>,
    seconds: f64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The activator's /metrics.
async fn activator_metrics(admin: SocketAddr) -> Option<prometheus_parse::Scrape> {
    let (_, _, response) = wsgiscale_envtest::load::get_once(admin, "/metrics").await;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).ok()
}

/// The backlog per slot the activator gives `app`'s pods now, from its /metrics.
async fn backlog_per_slot(admin: SocketAddr, app: &str) -> Option<f64> {
    let scrape = activator_metrics(admin).await?;
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "wsgiscale_activator_backlog_per_slot" && s.labels.get("app") == Some(app)
        })
        .and_then(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// The activator's rejected requests by reason, from its /metrics.
async fn rejections(admin: SocketAddr) -> Vec<(String, f64)> {
    let Some(scrape) = activator_metrics(admin).await else {
        return Vec::new();
    };
    let mut out: Vec<(String, f64)> = Vec::new();
    for s in scrape
        .samples
        .iter()
        .filter(|s| s.metric == "wsgiscale_activator_rejected_total")
    {
        // OpenMetrics declares the type without `_total`: the sample comes back untyped.
        let (prometheus_parse::Value::Counter(value) | prometheus_parse::Value::Untyped(value)) =
            s.value
        else {
            continue;
        };
        let reason = s.labels.get("reason").unwrap_or("?").to_string();
        match out.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, v)) => *v += value,
            None => out.push((reason, value)),
        }
    }
    out
}

/// Sends one request with a `body`-byte body on a new connection; its status (0: failed)
/// and seconds to the answer.
async fn one_request(addr: SocketAddr, body: usize) -> (u16, f64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = Instant::now();
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let head = if body == 0 {
            "GET / HTTP/1.1\r\nhost: flood\r\n\r\n".to_string()
        } else {
            format!("POST / HTTP/1.1\r\nhost: flood\r\ncontent-type: application/octet-stream\r\ncontent-length: {body}\r\n\r\n")
        };
        s.write_all(head.as_bytes()).await?;
        if body > 0 {
            // A refusal may come (and the connection close) before the body is all sent.
            let _ = s.write_all(&vec![b'x'; body]).await;
        }
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&got).to_string();
        anyhow::Ok(
            line.split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
        )
    };
    let limit = Duration::from_secs(FLOOD_WAIT_SECONDS + 30);
    let status = tokio::time::timeout(limit, attempt)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    (status, start.elapsed().as_secs_f64())
}

impl Bench<'_> {
    /// Floods an app that cannot start: `clients` requests at once with `body`-byte bodies,
    /// while the activator's RSS is sampled every 20 ms.
    async fn flood(
        &self,
        what: &'static str,
        addr: SocketAddr,
        clients: usize,
        body: usize,
    ) -> anyhow::Result<Flood> {
        let pid = self.activator.pid();
        let before_reasons = rejections(self.activator.admin).await;
        let rss_before = rss_kib(pid);
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|_| tokio::spawn(one_request(addr, body)))
            .collect();
        let all = futures::future::join_all(tasks);
        tokio::pin!(all);
        let mut rss_peak = rss_before;
        let results = loop {
            tokio::select! {
                r = &mut all => break r,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    rss_peak = rss_peak.max(rss_kib(pid));
                }
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = rss_kib(pid);
        let (mut refused, mut held, mut other) = (0, 0, 0);
        for (status, took) in results.into_iter().filter_map(Result::ok) {
            match status {
                503 if took < FLOOD_WAIT_SECONDS as f64 - 0.5 => refused += 1,
                503 if took >= FLOOD_WAIT_SECONDS as f64 - 0.5 => held += 1,
                _ => other += 1,
            }
        }
        let after_reasons = rejections(self.activator.admin).await;
        let reasons = after_reasons
            .into_iter()
            .map(|(r, v)| {
                let b = before_reasons
                    .iter()
                    .find(|(x, _)| *x == r)
                    .map_or(0.0, |(_, v)| *v);
                (r, v - b)
            })
            .filter(|(_, v)| *v > 0.0)
            .collect();
        Ok(Flood {
            what,
            clients,
            body,
            rss_before,
            rss_peak,
            rss_after,
            refused,
            held,
            other,
            reasons,
            seconds,
        })
    }

    /// Part 3: the app that cannot start, then its floods.
    async fn floods(&self) -> anyhow::Result<Vec<Flood>> {
        let name = "flood";
        let pp = PatchParams::apply(MANAGER).force();
        let apps: Api<WsgiApp> = Api::namespaced(self.client.clone(), NS);
        apps.patch(name, &pp, &Patch::Apply(flood_app(name)))
            .await
            .context("the flood WsgiApp")?;
        let port = until("the flood app's port on the activator", 60, || {
            activator_port(&self.client, name)
        })
        .await?;
        let addr = SocketAddr::from((self.standin.node.address(), port));
        until(
            "the activator listening on the flood app's port",
            60,
            || async { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let clients = self.args.flood_clients;
        let mut out = Vec::new();
        out.push(
            self.flood(
                "requests without a body, past the request bound",
                addr,
                clients,
                0,
            )
            .await?,
        );
        eprintln!("activator-bench: flood 1: {:?}", out.last());
        out.push(
            self.flood("256 KiB bodies, past the byte bound", addr, 200, 256 * 1024)
                .await?,
        );
        eprintln!("activator-bench: flood 2: {:?}", out.last());
        apps.delete(name, &DeleteParams::default()).await?;
        Ok(out)
    }
}

fn flood_report(md: &mut String, floods: &[Flood]) {
    let _ = writeln!(
        md,
        "## 3. The activator's memory under a flood\n\n\
         One app that cannot start (its image cannot be pulled), held at \
         `maxHeldRequests: {FLOOD_MAX_REQUESTS}`, `maxHeldBytes: {FLOOD_MAX_BYTES_MIB}Mi`, \
         `maxWaitSeconds: {FLOOD_WAIT_SECONDS}`; each client opens its own connection and sends \
         one request, all at once; the activator's RSS (VmRSS) sampled every 20 ms. \
         \"Refused\" is a 503 before the deadline (a bound), \"held\" a 503 at the deadline.\n\n\
         | flood | clients | body | refused | held | other | rejections by reason | RSS before MiB | peak MiB | after MiB | peak growth per held request KiB |\n\
         |---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    );
    for f in floods {
        let mib = |k: u64| k as f64 / 1024.0;
        let growth = f.rss_peak.saturating_sub(f.rss_before) as f64;
        let per = if f.held > 0 {
            format!("{:.1}", growth / f.held as f64)
        } else {
            "–".into()
        };
        let reasons = f
            .reasons
            .iter()
            .map(|(r, v)| format!("{r} {v:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} |",
            f.what,
            f.clients,
            f.body,
            f.refused,
            f.held,
            f.other,
            reasons,
            mib(f.rss_before),
            mib(f.rss_peak),
            mib(f.rss_after),
            per
        );
    }
    let _ = writeln!(
        md,
        "\nThe bound: what the activator buffers for an app, held or still arriving, stays within \
         `maxHeldBytes` ({FLOOD_MAX_BYTES_MIB} MiB here), and each held request costs its \
         connection and its waiting task besides (the per-request growth above); connections \
         past `--max-connections` are answered 503 at once.\n"
    );
}

// ---- Main --------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::Generate(g)) = cli.command {
        return generate(g);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench(cli.args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    wsgiscale_envtest::node::check_available()
        .map_err(|e| anyhow::anyhow!("the stand-in node cannot run here: {e}"))?;
    let server_bin = pick_bin(&args.server_bin, "wsgiscale", "--server-bin")?;
    let activator_bin = pick_bin(
        &args.activator_bin,
        "wsgiscale-activator",
        "--activator-bin",
    )?;
    for tool in ["wrk", "taskset", "getconf"] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()?
                .success(),
            "{tool} is missing"
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    ensure!(
        args.pod_cpu < cores && args.activator_cpu < cores && args.generator_cpu() < cores,
        "--pod-cpu, --activator-cpu and --generator-cpu must be cores of the {cores}"
    );
    let machine_at_start = machine();
    let stamp = timestamp();
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| repo().join("bench/results"));
    std::fs::create_dir_all(&out_dir)?;
    let work = std::env::temp_dir().join(format!("activator-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    // Logs: warnings to stderr; the operator's events of a cold start to the capture layer.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(
            Capture.with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("wsgiscale_operator", tracing::Level::DEBUG),
            ),
        )
        .init();

    // The control plane, the stand-in node, the CRD.
    let assets =
        wsgiscale_envtest::assets().context("no envtest assets (set KUBEBUILDER_ASSETS)")?;
    eprintln!("activator-bench: starting the control plane");
    let control_plane =
        tokio::task::spawn_blocking(move || ControlPlane::start(&assets, &Options::default()))
            .await?
            .map_err(|e| anyhow::anyhow!("control plane: {e}"))?;
    let kubeconfig = control_plane.kubeconfig().to_path_buf();
    let client = Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await?,
    )?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = wsgiscale_operator::crd::crd();
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await?;
    until("the CRD established", 60, || async {
        let c = crds.get(&crd.name_any()).await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await?;
    let standin = StandIn::start(
        client.clone(),
        StandInConfig {
            node: NodeConfig {
                name: format!("activator-bench-{}", std::process::id()),
                namespaces: vec![NS.to_string()],
                start_delay: Duration::from_millis(args.start_delay_ms),
                images: BTreeMap::from([(
                    IMAGE.to_string(),
                    Image {
                        path: vec![server_bin
                            .parent()
                            .map(Path::to_path_buf)
                            .unwrap_or_default()],
                        files: vec![("/app".into(), repo().join("bench/apps"))],
                        workdir: Some("/app".into()),
                        ..Image::default()
                    },
                )]),
                ..NodeConfig::default()
            },
            metrics_resolution: Duration::from_secs(15),
        },
    )
    .await?;
    let node_ip = standin.node.address();

    // The activator "pod": the node's address, published as the chart's headless Service.
    let pp = PatchParams::apply(MANAGER).force();
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    services
        .patch(
            ACTIVATOR_SERVICE,
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": ACTIVATOR_SERVICE},
                "spec": {"clusterIP": "None", "ports": [{"name": "admin", "port": 9090}]},
            })),
        )
        .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    slices
        .patch(
            "wsgiscale-activator-1",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "wsgiscale-activator-1",
                             "labels": {"kubernetes.io/service-name": ACTIVATOR_SERVICE}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [node_ip.to_string()], "conditions": {"ready": true}}],
                "ports": [{"name": "admin", "port": 9090, "protocol": "TCP"}],
            })),
        )
        .await?;

    // The operator, in this process, with its demand endpoint on loopback.
    let stop = CancellationToken::new();
    let routing = Arc::new(Routing::new(
        client.clone(),
        ActivatorConfig {
            namespace: NS.into(),
            service: ACTIVATOR_SERVICE.into(),
            routes: ROUTES.into(),
        },
        Arc::new(DemandBoard::default()),
    ));
    let metrics = Arc::new(Metrics::default());
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            Some("activator-bench".into()),
            metrics.clone(),
            Duration::from_secs(60),
        )
        .with_routing(Some(routing.clone())),
    );
    let http_port = free_port()?;
    let listener =
        wsgiscale_operator::http::bind(SocketAddr::from(([127, 0, 0, 1], http_port))).await?;
    let http = tokio::spawn(wsgiscale_operator::http::serve(
        listener,
        ctx.health.clone(),
        metrics,
        Some(routing),
        stop.clone(),
    ));
    let operator = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tokio::spawn(async move {
            wsgiscale_operator::run::run_controllers(&ctx, &[NS.to_string()], 2, stop).await
        })
    };
    spawn_watches(&client, &stop);

    // The activator, its own process on its own core, on the node's address.
    let activator = ActivatorProcess::start(
        &activator_bin,
        args.activator_cpu,
        IpAddr::V4(node_ip),
        SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        &kubeconfig,
        &format!("http://127.0.0.1:{http_port}"),
        &args.backlog_per_slot,
        &work.join("activator.log"),
    )?;

    let bench = Bench {
        args: &args,
        client: client.clone(),
        standin: &standin,
        activator: &activator,
        ticks: clock_ticks(),
    };
    let result: anyhow::Result<(Vec<PathResults>, Vec<Cold>, Vec<Flood>)> = async {
        let mut path = Vec::new();
        if !args.skip_path {
            for &w in &args.workers {
                path.push(bench.measure_path(w).await?);
            }
        }
        let mut cold = Vec::new();
        if !args.skip_cold_start {
            for i in 1..=args.cold_starts {
                let name = format!("cold-{i}");
                let c = bench.cold_start(&name).await?;
                eprintln!(
                    "activator-bench: cold start {name}: {} in {:.0} ms (pod's own start {} ms, overhead {} ms)",
                    c.status,
                    c.response,
                    fmt_ms(c.own_start()),
                    fmt_ms(c.overhead())
                );
                cold.push(c);
            }
        }
        let floods = if args.skip_flood {
            Vec::new()
        } else {
            bench.floods().await?
        };
        Ok((path, cold, floods))
    }
    .await;

    // Tear down before reporting (or failing).
    drop(activator);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), operator).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), http).await;
    standin.node.stop_at_once(NS);
    standin.stop().await;
    let keep_log = out_dir.join(format!("activator-{stamp}.activator.log"));
    let (path, cold, floods) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::copy(work.join("activator.log"), &keep_log);
            return Err(e.context(format!("the activator's log is in {}", keep_log.display())));
        }
    };
    let _ = std::fs::remove_dir_all(&work);
    drop(control_plane);

    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let command = format!(
        "cargo run --release -p wsgiscale-operator --example activator_bench -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let results = Results {
        date: stamp.clone(),
        commit: commit.clone(),
        command: command.trim_end().to_string(),
        machine_at_start: machine_at_start.clone(),
        machine_at_end: machine(),
        path,
        cold,
        floods,
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# The activator in the path and the cold start — {stamp}\n\nCommit {commit}; {:.1} min. \
         Machine at the start: {}; at the end: {}.\nCommand: `{}`\n",
        started.elapsed().as_secs_f64() / 60.0,
        results.machine_at_start,
        results.machine_at_end,
        results.command
    );
    for (i, p) in results.path.iter().enumerate() {
        path_report(&mut md, p, &args, i == 0);
    }
    if !results.cold.is_empty() {
        cold_report(&mut md, &results.cold, &args);
    }
    if !results.floods.is_empty() {
        flood_report(&mut md, &results.floods);
    }
    let md_path = out_dir.join(format!("activator-{stamp}.md"));
    std::fs::write(&md_path, &md)?;
    std::fs::write(
        out_dir.join(format!("activator-{stamp}.json")),
        serde_json::to_string_pretty(&results)?,
    )?;
    println!("{md}");
    eprintln!("activator-bench: report in {}", md_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let out = "Running 10s test @ http://10.0.0.2:8000/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms  500.00us  20.00ms   90.00%
    Req/Sec    30.00k     1.00k   32.00k    80.00%
  Latency Distribution
     50%    1.95ms
     75%    2.20ms
     90%    2.60ms
     99%  850.00us
  300000 requests in 10.00s, 30.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  29999.50
Transfer/sec:      3.00MB
";
        let r = parse_wrk(out).expect("parses");
        assert_eq!(r.requests, 300_000);
        assert!((r.seconds - 10.0).abs() < 1e-9);
        assert!((r.rps - 29_999.5).abs() < 1e-9);
        assert!((r.p50_ms - 1.95).abs() < 1e-9);
        assert!((r.p99_ms - 0.85).abs() < 1e-9);
        assert_eq!(r.errors, 7);
    }
}
