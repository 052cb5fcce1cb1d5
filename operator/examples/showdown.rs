//! The HPA showdown: wsgiscale's two-level autoscaling against what Python shops run today, on
//! a real Kubernetes control plane: `make bench-showdown`, or
//!
//! ```text
//! cargo build --release -p wsgiscale-sidecar -p wsgiscale-operator
//! bash bench/setup.sh      # gunicorn and uWSGI in bench/.venv
//! cargo run --release -p wsgiscale-operator --example showdown
//! ```
//!
//! Starts etcd, kube-apiserver and kube-controller-manager (whose HPA controller runs with its
//! default sync period and behaviour) from the envtest assets, the stand-in node, kube-proxy
//! and metrics-server of `wsgiscale-envtest` (pods as processes with their CPU limits
//! enforced; CPU and requests-in-flight metrics as aggregated APIs), installs the CRD and runs
//! the release `wsgiscale-operator`. Then, for each app kind, trace and contender (the
//! manifests in bench/showdown/contenders/, filled with the same values for all), in a
//! namespace of its own: applies the manifests, waits for the first pods, replays the trace
//! open-loop against the Service (bench/apps/showdown.py: `/work?cpu_ms=..&io_ms=..`), samples
//! the deployment every second, and sums up (p50/p99/p99.9, failures, pod-seconds,
//! worker-seconds, time from the load step to the first new pod ready, scale events) with one
//! plot per run. Writes bench/results/showdown-YYYYMMDD-HHMMSS/{report.md,results.json,*.png}.
//!
//! The rules, fixed before the first run (bench/RESULTS-showdown.md says them too):
//! - every trace is compressed in time to `--seconds` and its rates scaled so its peak is 60%
//!   of the capacity of `--max-replicas` pods of the app kind (per-pod capacity: the lesser of
//!   CPU limit / CPU per request and worker slots / time per request);
//! - the Azure trace: of the HTTP-triggered functions in the given invocations file, the one
//!   with the most invocations, its 50 busiest consecutive minutes;
//! - every contender gets the same pods (CPU and memory), replica bounds, worker slots per pod,
//!   probes' timing, start-up delay, trace and arrival seed.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _};
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::Client;
use serde_json::{json, Value};
use wsgiscale_core::trace::{AzureFunction, Trace};
use wsgiscale_envtest::bound::{least_pod_seconds, lowest_p99, PodModel};
use wsgiscale_envtest::load::{self, Progress, Record};
use wsgiscale_envtest::node::plan::Image;
use wsgiscale_envtest::report::{self, Sample, Summary};
use wsgiscale_envtest::standin::StandIn;
use wsgiscale_operator::simulate::plot::{line, write_panels, Panel};

// Each example uses part of the shared cluster module.
#[allow(dead_code)]
#[path = "common/cluster.rs"]
mod cluster;
use cluster::{pick_bin, repo, Cluster};

/// The HPA showdown on a real control plane.
#[derive(Debug, Parser)]
struct Args {
    /// Traces: names of examples/traces/*.csv, and `azure` (see --azure-csv).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "step,spike,ramp,sawtooth,azure"
    )]
    traces: Vec<String>,
    /// App kinds: `io` (1 ms of CPU and 50 ms of waiting per request), `cpu` (5 ms of CPU).
    #[arg(long, value_delimiter = ',', default_value = "io,cpu")]
    kinds: Vec<String>,
    /// Contenders: names of bench/showdown/contenders/*.yaml. The default is the full
    /// table: the three HPA contenders and wsgiscale as it ships (the activator in the path
    /// below its burst target); `wsgiscale` (the operator's autoscaler without the activator)
    /// is an ablation, run on request, so that the full table stays within its 90 minutes.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gunicorn-cpu,uwsgi-cpu,gunicorn-rif,wsgiscale-activator"
    )]
    contenders: Vec<String>,
    /// Every trace is compressed to this many seconds.
    #[arg(long, default_value_t = 100.0)]
    seconds: f64,
    /// Image pull and container start of every pod, seconds.
    #[arg(long, default_value_t = 5.0)]
    start_delay: f64,
    /// Seed of the arrivals (the same for every contender).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Pods of every contender: at least.
    #[arg(long, default_value_t = 1)]
    min_replicas: u32,
    /// Pods of every contender: at most.
    #[arg(long, default_value_t = 5)]
    max_replicas: u32,
    /// CPU request and limit of every pod.
    #[arg(long, default_value = "250m")]
    cpu: String,
    /// Memory request of every pod.
    #[arg(long, default_value = "256Mi")]
    memory: String,
    /// Memory limit of every pod.
    #[arg(long, default_value = "512Mi")]
    memory_limit: String,
    /// Worker processes per pod (gunicorn's fixed count; uWSGI's and wsgiscale's maximum).
    #[arg(long, default_value_t = 2)]
    workers_fixed: u32,
    /// Most worker processes per pod for the servers that scale them (uWSGI cheaper, wsgiscale);
    /// with `--threads` the same worker slots per pod as gunicorn's fixed workers x threads.
    #[arg(long, default_value_t = 4)]
    workers_max: u32,
    /// Threads per worker: gunicorn's, uWSGI's and wsgiscale's are chosen so that every pod
    /// has the same number of worker slots (workers x threads).
    #[arg(long, default_value_t = 4)]
    threads_fixed: u32,
    /// Threads per worker of the scaling servers.
    #[arg(long, default_value_t = 2)]
    threads_scaling: u32,
    /// Peak arrival rate as a share of the capacity of --max-replicas pods.
    #[arg(long, default_value_t = 0.6)]
    peak_share: f64,
    /// Per-request timeout of the load generator, seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// The Azure Functions 2019 invocations file (`invocations_per_function_md.anon.dNN.csv`,
    /// or a sample of it in the same format).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/showdown/data/azure-invocations.csv"))]
    azure_csv: PathBuf,
    /// Directory holding `python`, `gunicorn` and `uwsgi`. [default: bench/.venv/bin]
    #[arg(long, env = "SHOWDOWN_PYTHON_BIN")]
    python_bin: Option<PathBuf>,
    /// The server binary. [default: target/release/wsgiscale]
    #[arg(long, env = "WSGISCALE_BIN")]
    server_bin: Option<PathBuf>,
    /// The operator binary. [default: target/release/wsgiscale-operator]
    #[arg(long, env = "OPERATOR_BIN")]
    operator_bin: Option<PathBuf>,
    /// The activator binary, for the `wsgiscale-activator` contender (default
    /// target/release/wsgiscale-activator): the cluster then runs it on the node's address
    /// and the operator routes autoscaled apps through it.
    #[arg(long, env = "ACTIVATOR_BIN")]
    activator_bin: Option<PathBuf>,
    /// Where the report goes. [default: bench/results/showdown-YYYYMMDD-HHMMSS]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Before each run, wait (at most 75 s) until fewer than this many TCP connections are in
    /// TIME_WAIT, so that a run does not start among its predecessor's closed connections;
    /// 0 starts at once.
    #[arg(long, default_value_t = 0)]
    settle_time_wait: usize,
    /// A short run for `make test`: checks that every run served requests, that the HPA read
    /// its metric and that the report and plots were written; exits 1 otherwise.
    #[arg(long)]
    smoke: bool,
    /// Runs nothing: reads DIR/results.json of an earlier run and writes DIR/bound.md, the
    /// least pod-seconds any policy could have spent on each of its runs (the report's last
    /// section, for runs made before it existed). The other arguments must be the run's
    /// (trace length, seed, pods, worker slots); the defaults are the default table's.
    #[arg(long, value_name = "DIR")]
    bound_from: Option<PathBuf>,
}

/// How old the pods that are there before a trace starts look (the stand-in node's `backdate`).
const HISTORY: Duration = Duration::from_secs(3600);

const IMAGE: &str = "showdown-app:1";

/// An app kind: what each request costs.
#[derive(Debug, Clone, Copy)]
struct Kind {
    name: &'static str,
    cpu_ms: f64,
    io_ms: f64,
}

const KINDS: [Kind; 2] = [
    Kind {
        name: "io",
        cpu_ms: 1.0,
        io_ms: 50.0,
    },
    Kind {
        name: "cpu",
        cpu_ms: 5.0,
        io_ms: 0.0,
    },
];

/// A contender: its manifest, its label in reports, the processes of a pod that are not
/// workers (gunicorn's arbiter, uWSGI's master, wsgiscale's master and fork server), and
/// whether an HPA scales it.
struct Contender {
    name: String,
    label: &'static str,
    overhead: usize,
    hpa: bool,
}

fn contender(name: &str) -> anyhow::Result<Contender> {
    let (label, overhead, hpa) = match name {
        "gunicorn-cpu" => ("gunicorn + HPA (CPU 70%)", 1, true),
        "uwsgi-cpu" => ("uWSGI cheaper + HPA (CPU 70%)", 1, true),
        "gunicorn-rif" => ("gunicorn + HPA (requests in flight)", 1, true),
        // A sensitivity run outside the table: gunicorn-cpu with TCP probes.
        "gunicorn-cpu-tcp" => ("gunicorn + HPA (CPU 70%), TCP probes", 1, true),
        "wsgiscale" => ("wsgiscale (operator's autoscaler)", 2, false),
        "wsgiscale-activator" => ("wsgiscale + activator (burst target one pod)", 2, false),
        // A sensitivity run outside the table: wsgiscale-activator with a 20 s stable window.
        "wsgiscale-activator-w20" => ("wsgiscale + activator, 20 s stable window", 2, false),
        other => {
            bail!("unknown contender {other:?} (gunicorn-cpu, uwsgi-cpu, gunicorn-rif, wsgiscale, wsgiscale-activator, gunicorn-cpu-tcp, wsgiscale-activator-w20)")
        }
    };
    Ok(Contender {
        name: name.into(),
        label,
        overhead,
        hpa,
    })
}

/// What every contender's pods get.
struct Pods {
    min: u32,
    max: u32,
    cpu: String,
    memory: String,
    memory_limit: String,
}

/// Requests per second one pod of `kind` can serve: the lesser of its CPU limit over the CPU
/// per request and its worker slots over the time per request.
fn pod_capacity(kind: &Kind, cpu_millis: u64, slots: u32) -> f64 {
    let by_cpu = cpu_millis as f64 / kind.cpu_ms;
    let by_slots = f64::from(slots) / ((kind.cpu_ms + kind.io_ms) / 1000.0);
    by_cpu.min(by_slots)
}

/// The trace `name`, compressed and scaled by the rules.
fn load_trace(args: &Args, name: &str, kind: &Kind, peak: f64) -> anyhow::Result<(Trace, String)> {
    let service_ms = kind.cpu_ms + kind.io_ms;
    let (trace, note) = if name == "azure" {
        let text = std::fs::read_to_string(&args.azure_csv).with_context(|| {
            format!(
                "{} (the Azure Functions 2019 trace: see bench/showdown/README.md for how to get it)",
                args.azure_csv.display()
            )
        })?;
        let all = AzureFunction::parse_all(&text)?;
        let f = AzureFunction::busiest_http(&all)
            .context("no HTTP-triggered function in the Azure file")?;
        let minutes = 50.min(f.per_minute.len());
        let t = f.window_trace(minutes, args.seconds / minutes as f64, service_ms);
        let note = format!(
            "Azure Functions 2019, HashFunction {}..., {} invocations in the file, its busiest {minutes} minutes",
            &f.function[..12.min(f.function.len())],
            f.total()
        );
        (t, note)
    } else {
        let path = repo().join(format!("examples/traces/{name}.csv"));
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        (Trace::parse(&text)?, format!("examples/traces/{name}.csv"))
    };
    Ok((
        trace
            .compressed_to(args.seconds)
            .scaled_to(peak, service_ms),
        note,
    ))
}

fn fill(template: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("${{{k}}}"), v);
    }
    s
}

fn resource_of(api_version: &str, kind: &str) -> anyhow::Result<ApiResource> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Deployment" => "deployments",
        "Service" => "services",
        "HorizontalPodAutoscaler" => "horizontalpodautoscalers",
        "WsgiApp" => "wsgiapps",
        other => bail!("the showdown does not apply {other} objects"),
    };
    Ok(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        plural,
    ))
}

async fn apply_manifests(client: &Client, ns: &str, text: &str) -> anyhow::Result<()> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).context("contender manifest")?;
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        let ar = resource_of(
            doc["apiVersion"].as_str().unwrap_or(""),
            doc["kind"].as_str().unwrap_or(""),
        )?;
        let name = doc["metadata"]["name"].as_str().unwrap_or("").to_string();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        api.patch(
            &name,
            &PatchParams::apply("wsgiscale-showdown").force(),
            &Patch::Apply(&doc),
        )
        .await
        .with_context(|| format!("apply {} {name}", doc["kind"]))?;
    }
    Ok(())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One run's results.
#[derive(serde::Serialize, serde::Deserialize)]
struct RunResult {
    kind: String,
    trace: String,
    trace_note: String,
    contender: String,
    label: String,
    peak_rps: f64,
    summary: Summary,
    /// What the HPA last reported (current metrics, desired replicas), for HPA contenders.
    hpa_status: Option<Value>,
    /// The most descriptors the harness process held during the run (proxy, load, probes).
    peak_fds: usize,
    /// TCP connections in TIME_WAIT when the run started.
    time_wait_at_start: usize,
    samples: Vec<Sample>,
    plot: String,
}

/// Samples the deployment once a second until told to stop.
async fn sample_loop(
    client: Client,
    standin: Arc<StandIn>,
    ns: String,
    overhead: usize,
    t0: Instant,
    stop: tokio_util::sync::CancellationToken,
) -> (Vec<Sample>, usize) {
    let deploys_client = client.clone();
    let deploys: Api<Deployment> = Api::namespaced(client, &ns);
    let mut last_endpoints = usize::MAX;
    let mut out = Vec::new();
    let mut last_cpu: HashMap<String, u64> = HashMap::new();
    let mut last_t = t0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut peak_fds = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return (out, peak_fds),
            _ = tick.tick() => {}
        }
        peak_fds = peak_fds.max(wsgiscale_envtest::fdlimit::open_now());
        let now = Instant::now();
        // The Service's ready endpoints as the kube-proxy sees them, logged when they change:
        // what the load can reach, beside what the node reports.
        let endpoints = standin.proxy.endpoints(&ns, "app").len();
        if endpoints != last_endpoints {
            let pods: Api<Pod> = Api::namespaced(deploys_client.clone(), &ns);
            let conditions: Vec<String> = pods
                .list(&Default::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .map(|p| {
                            let ready = p
                                .status
                                .as_ref()
                                .and_then(|s| s.conditions.as_ref())
                                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                                .map(|c| {
                                    format!("{} {}", c.status, c.reason.clone().unwrap_or_default())
                                })
                                .unwrap_or_default();
                            format!("{}={ready}", p.metadata.name.clone().unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default();
            eprintln!(
                "showdown: {ns} t={:.0}s: {endpoints} endpoints in the Service; pods Ready: {}",
                now.saturating_duration_since(t0).as_secs_f64(),
                conditions.join(", ")
            );
            last_endpoints = endpoints;
        }
        let desired = deploys
            .get_opt("app")
            .await
            .ok()
            .flatten()
            .and_then(|d| d.spec.replicas)
            .unwrap_or(0);
        let pods: Vec<_> = standin
            .node
            .pods()
            .into_iter()
            .filter(|p| p.namespace == ns)
            .collect();
        let dt = now
            .saturating_duration_since(last_t)
            .as_secs_f64()
            .max(1e-3);
        let mut cpu_ns = 0u64;
        let mut cpu_now = HashMap::new();
        for p in &pods {
            if let Some(before) = last_cpu.get(&p.name) {
                cpu_ns += p.cpu_ns.saturating_sub(*before);
            }
            cpu_now.insert(p.name.clone(), p.cpu_ns);
        }
        last_cpu = cpu_now;
        last_t = now;
        out.push(Sample {
            t: now.saturating_duration_since(t0).as_secs_f64(),
            desired,
            ready: pods.iter().filter(|p| p.ready && !p.terminating).count(),
            pods: pods.len(),
            workers: pods
                .iter()
                .map(|p| p.processes.saturating_sub(overhead))
                .sum(),
            cpu: cpu_ns as f64 / 1e9 / dt,
        });
    }
}

/// Fails unless every running pod of `ns` has a start time in the API server at least half of
/// [`HISTORY`] ago (the stand-in node writes its status a moment after a change).
async fn check_history(client: &Client, ns: &str) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pods = api.list(&Default::default()).await?;
        let now = k8s_openapi::jiff::Timestamp::now();
        let young: Vec<String> = pods
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .and_then(|t| now.duration_since(t.0).try_into().ok())
                    .is_none_or(|age: Duration| age < HISTORY / 2)
            })
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect();
        if young.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{ns}: the pods there before the trace do not look {HISTORY:?} old: {young:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The newest modification time of the files under `dir`.
fn newest_under(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_under(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// The pods put `python_bin` first on their PATH, so when that venv has wsgiscale installed
/// they run it, not `--server-bin`: refuses to measure one built before the server's source
/// last changed (a stale wheel measured an old server while the operator was new).
fn check_venv_server(python_bin: &Path) -> anyhow::Result<()> {
    if !python_bin.join("wsgiscale").exists() {
        return Ok(());
    }
    let Some(lib) = python_bin.parent().map(|v| v.join("lib")) else {
        return Ok(());
    };
    let installed = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages/wsgiscale"))
        .find(|p| p.is_dir())
        .and_then(|p| newest_under(&p));
    let source = ["sidecar/src", "core/src"]
        .iter()
        .filter_map(|d| newest_under(&repo().join(d)))
        .max();
    if let (Some(installed), Some(source)) = (installed, source) {
        ensure!(
            installed >= source,
            "the wsgiscale installed in {} is older than the server's source (sidecar/src, core/src): \
             the pods would run a stale server; build and install the wheel first \
             (`make wheel-default && bash bench/setup.sh`, or `make bench-showdown`)",
            python_bin.display()
        );
    }
    Ok(())
}

/// What the API server says about the pods of `ns` (each container's state, last state and
/// restarts) and the namespace's Warning Events: why a run found no ready pod, for its report.
async fn why_not_ready(client: &Client, ns: &str) -> String {
    use k8s_openapi::api::core::v1::Event;
    let mut out = String::new();
    match Api::<Pod>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
    {
        Ok(list) => {
            for p in list {
                let name = p.metadata.name.unwrap_or_default();
                let status = p.status.unwrap_or_default();
                let _ = write!(out, "pod {name} phase {:?}:", status.phase);
                for c in status.container_statuses.unwrap_or_default() {
                    let state = serde_json::to_string(&c.state).unwrap_or_default();
                    let last = serde_json::to_string(&c.last_state).unwrap_or_default();
                    let _ = write!(
                        out,
                        " container {} ready {} restarts {} state {state} last {last};",
                        c.name, c.ready, c.restart_count
                    );
                }
            }
        }
        Err(e) => {
            let _ = write!(out, "pods not listed: {e};");
        }
    }
    match Api::<Event>::namespaced(client.clone(), ns)
        .list(&Default::default())
        .await
    {
        Ok(list) => {
            for e in list
                .items
                .iter()
                .filter(|e| e.type_.as_deref() == Some("Warning"))
            {
                let _ = write!(
                    out,
                    " event {} {}: {};",
                    e.involved_object.name.as_deref().unwrap_or(""),
                    e.reason.as_deref().unwrap_or(""),
                    e.message.as_deref().unwrap_or("")
                );
            }
        }
        Err(e) => {
            let _ = write!(out, " events not listed: {e};");
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn run_one(
    client: &Client,
    standin: &Arc<StandIn>,
    args: &Args,
    out: &Path,
    kind: &Kind,
    trace_name: &str,
    trace: &Trace,
    trace_note: &str,
    c: &Contender,
    vars: &BTreeMap<&str, String>,
    pods: &Pods,
    peak: f64,
) -> anyhow::Result<RunResult> {
    let ns = format!("sd-{}-{}-{}", kind.name, trace_name, c.name);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let nso: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    namespaces
        .create(&PostParams::default(), &nso)
        .await
        .with_context(|| format!("namespace {ns}"))?;
    standin.serve(&ns);
    // The pods there before the trace look an hour old, as those of a Deployment that has
    // served for a while: the HPA ignores the CPU of an unready pod younger than its CPU
    // initialization period (5 min) but counts that of an older one that has been ready, so
    // brand-new pods would blind it under overload in a way a running service does not.
    standin.node.backdate(&ns, Some(HISTORY));
    let template =
        std::fs::read_to_string(repo().join(format!("bench/showdown/contenders/{}.yaml", c.name)))?;
    apply_manifests(client, &ns, &fill(&template, vars)).await?;

    // Ready to serve: the Service answers through the proxy with the minimum pods behind it,
    // and those pods are ready (with an activator, the operator lists it in the Service while
    // no pod is ready, so an endpoint alone does not mean a ready pod).
    let deadline = Instant::now() + Duration::from_secs(180);
    let target: SocketAddr = loop {
        if Instant::now() >= deadline {
            let seen: Vec<String> = standin
                .node
                .pods()
                .into_iter()
                .filter(|p| p.namespace == ns)
                .map(|p| {
                    format!(
                        "{} (ready {}, terminating {}, {} processes)",
                        p.name, p.ready, p.terminating, p.processes
                    )
                })
                .collect();
            bail!(
                "{ns}: no ready pods behind the Service after 180 s; the node runs: [{}]; the proxy has {} endpoints; {}",
                seen.join(", "),
                standin.proxy.endpoints(&ns, "app").len(),
                why_not_ready(client, &ns).await
            );
        }
        if let Some(addr) = standin.proxy.address(&ns, "app") {
            let ready_pods = standin
                .node
                .pods()
                .into_iter()
                .filter(|p| p.namespace == ns && p.ready && !p.terminating)
                .count();
            if standin.proxy.endpoints(&ns, "app").len() >= pods.min as usize
                && ready_pods >= pods.min as usize
            {
                break SocketAddr::from((addr, 80));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "showdown: {ns}: ready, replaying {:.0} s of {trace_name} (peak {peak:.0} req/s)",
        trace.duration()
    );

    // Pods started from here on are new, with the times of now. The ones serving now must
    // show their history to the API server (the HPA reads it there).
    standin.node.backdate(&ns, None);
    check_history(client, &ns).await?;
    let t0 = Instant::now();
    let start_unix = unix_now();
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn(sample_loop(
        client.clone(),
        standin.clone(),
        ns.clone(),
        c.overhead,
        t0,
        stop.clone(),
    ));
    let arrivals = trace.arrivals(args.seed);
    let path = format!("/work?cpu_ms={}&io_ms={}", kind.cpu_ms, kind.io_ms);
    let records: Vec<Record> = load::run(
        target,
        &arrivals,
        &path,
        Duration::from_secs_f64(args.timeout),
        Arc::new(Progress::default()),
    )
    .await;
    stop.cancel();
    let (samples, peak_fds) = sampler.await.unwrap_or_default();
    let duration = trace.duration();
    let pod_records: Vec<_> = standin
        .node
        .records()
        .into_iter()
        .filter(|r| r.namespace == ns)
        .collect();
    let summary = report::summarize(
        &records,
        &pod_records,
        &samples,
        trace,
        start_unix,
        duration,
    );

    let hpa_status = if c.hpa {
        let ar = resource_of("autoscaling/v2", "HorizontalPodAutoscaler")?;
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        api.get_opt("app")
            .await
            .ok()
            .flatten()
            .map(|h| h.data["status"].clone())
    } else {
        None
    };

    let plot = format!("{}-{}-{}.png", kind.name, trace_name, c.name);
    draw(
        &out.join(&plot),
        kind,
        trace_name,
        c,
        trace,
        &records,
        &samples,
        &summary,
        duration,
    )?;

    // Tear down at once: the measurement is over.
    standin.node.stop_at_once(&ns);
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while standin.node.pods().iter().any(|p| p.namespace == ns) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(RunResult {
        kind: kind.name.into(),
        trace: trace_name.into(),
        trace_note: trace_note.into(),
        contender: c.name.clone(),
        label: c.label.into(),
        peak_rps: peak,
        summary,
        hpa_status,
        peak_fds,
        time_wait_at_start: 0,
        samples,
        plot,
    })
}

#[allow(clippy::too_many_arguments)]
fn draw(
    path: &Path,
    kind: &Kind,
    trace_name: &str,
    c: &Contender,
    trace: &Trace,
    records: &[Record],
    samples: &[Sample],
    s: &Summary,
    duration: f64,
) -> anyhow::Result<()> {
    let offered: Vec<(f64, f64)> = trace
        .rate_per_second()
        .iter()
        .enumerate()
        .map(|(i, r)| (i as f64, *r))
        .collect();
    let (ok, bad) = report::outcomes_per_second(records, duration);
    let per_s = |v: &[f64]| {
        v.iter()
            .enumerate()
            .map(|(i, y)| (i as f64, *y))
            .collect::<Vec<_>>()
    };
    let col = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(|x| (x.t, f(x))).collect::<Vec<_>>();
    let lat = report::latency_over_time(records, 5.0, duration);
    let panels = vec![
        Panel {
            title: "requests per second: offered (the trace), served well, failed".into(),
            unit: "req/s".into(),
            lines: vec![
                line("offered", (120, 120, 120), offered),
                line("ok", (44, 160, 44), per_s(&ok)),
                line("failed", (214, 39, 40), per_s(&bad)),
            ],
        },
        Panel {
            title: "pods".into(),
            unit: "pods".into(),
            lines: vec![
                line("desired", (31, 119, 180), col(&|x| f64::from(x.desired))),
                line("ready", (44, 160, 44), col(&|x| x.ready as f64)),
            ],
        },
        Panel {
            title: "worker processes (all pods) and CPU used (cores x 10)".into(),
            unit: "workers".into(),
            lines: vec![
                line("workers", (148, 103, 189), col(&|x| x.workers as f64)),
                line("CPU x 10", (255, 127, 14), col(&|x| x.cpu * 10.0)),
            ],
        },
        Panel {
            title: "latency of the requests started in each 5 s".into(),
            unit: "ms".into(),
            lines: vec![
                line(
                    "p50",
                    (31, 119, 180),
                    lat.iter().map(|(t, p50, _)| (*t, *p50)).collect(),
                ),
                line(
                    "p99",
                    (214, 39, 40),
                    lat.iter().map(|(t, _, p99)| (*t, *p99)).collect(),
                ),
            ],
        },
    ];
    let title = format!("{} — {} trace, {} app", c.label, trace_name, kind.name);
    let subtitle = format!(
        "p50 {:.0} ms  p99 {:.0} ms  p99.9 {:.0} ms  ok {}  503 {}  errors {}  pod-s {:.0}  worker-s {:.0}  scale events {}",
        s.p50_ms, s.p99_ms, s.p999_ms, s.ok, s.rejected_503, s.errors, s.pod_seconds, s.worker_seconds, s.scale_events
    );
    write_panels(path, &title, &subtitle, &panels)
        .map_err(|e| anyhow::anyhow!("plot {}: {e}", path.display()))
}

fn markdown(results: &[RunResult], args: &Args, pods: &Pods, header: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "{header}");
    for kind in &args.kinds {
        let _ = writeln!(md, "\n### {kind} app\n");
        let _ = writeln!(
            md,
            "| trace | contender | p50 ms | p99 ms | p99.9 ms | ok | 503 | errors | pod-s | worker-s | step to new pod ready, s | scale events | max ready |"
        );
        let _ = writeln!(
            md,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in results.iter().filter(|r| &r.kind == kind) {
            let s = &r.summary;
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} |",
                r.trace,
                r.label,
                s.p50_ms,
                s.p99_ms,
                s.p999_ms,
                s.ok,
                s.rejected_503,
                describe_errors(s),
                s.pod_seconds,
                s.worker_seconds,
                s.step_to_ready_s.map_or("–".into(), |v| format!("{v:.1}")),
                s.scale_events,
                s.max_ready,
            );
        }
    }
    let _ = writeln!(
        md,
        "\nErrors: the count, then in brackets: refused (connection refused or reset before a response), broken (cut short), timeouts, other statuses; shed: not sent, the load generator already had {} requests outstanding (its limit, the same for everyone).", wsgiscale_envtest::load::MAX_OUTSTANDING
    );
    let _ = writeln!(
        md,
        "\nHarness: at most {} descriptors open in the harness process during a run (its limit {}; the pods keep {}); at most {} TCP connections in TIME_WAIT when a run started.",
        results.iter().map(|r| r.peak_fds).max().unwrap_or(0),
        wsgiscale_envtest::fdlimit::limit_now(),
        wsgiscale_envtest::fdlimit::for_pods().map_or("the same".into(), |n| n.to_string()),
        results.iter().map(|r| r.time_wait_at_start).max().unwrap_or(0),
    );
    // A run whose harness ran out of descriptors refused some connections itself: its
    // refusals are partly the harness's (requests that would have waited, most of them into
    // the timeout, in an overloaded contender).
    let limit = wsgiscale_envtest::fdlimit::limit_now() as usize;
    let starved: Vec<String> = results
        .iter()
        .filter(|r| limit > 0 && r.peak_fds * 100 >= limit * 98)
        .map(|r| format!("{} {} {}", r.kind, r.trace, r.contender))
        .collect();
    if !starved.is_empty() {
        let _ = writeln!(
            md,
            "\n**At the harness's descriptor limit** (some refusals are the harness's, not the contender's): {}.",
            starved.join(", ")
        );
    }
    let blind: Vec<String> = results
        .iter()
        .filter_map(|r| {
            hpa_blind(r).map(|why| format!("{} {} {} ({why})", r.kind, r.trace, r.contender))
        })
        .collect();
    if !blind.is_empty() {
        let _ = writeln!(
            md,
            "\n**Void: the HPA read no metric by the end of the run**, so it never scaled and the run measured a fixed pod count, not an HPA; left out of the comparison below: {}.",
            blind.join("; ")
        );
    }
    let _ = writeln!(md, "\n### Against the target\n");
    let _ = writeln!(
        md,
        "wsgiscale's p99 below every HPA contender's, at no more pod-seconds than the cheapest of them, with no more failures (503s and errors):\n"
    );
    let _ = writeln!(md, "| app | trace | wsgiscale | p99: wsgiscale / best HPA | pod-s: wsgiscale / cheapest HPA | failures: wsgiscale / fewest HPA | verdict |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for kind in &args.kinds {
        for trace in &args.traces {
            let runs: Vec<&RunResult> = results
                .iter()
                .filter(|r| &r.kind == kind && &r.trace == trace)
                .collect();
            let others = hpa_runs(&runs);
            if others.is_empty() {
                continue;
            }
            for w in runs.iter().filter(|r| r.contender.starts_with("wsgiscale")) {
                let (best_p99, min_pods, min_fail) = hpa_marks(&others);
                let ws = &w.summary;
                let p99_ok = ws.p99_ms < best_p99;
                let pods_ok = ws.pod_seconds <= min_pods;
                let fail_ok = fails(w) <= min_fail;
                let verdict = if p99_ok && pods_ok && fail_ok {
                    "met".to_string()
                } else {
                    let mut why = Vec::new();
                    if !p99_ok {
                        why.push("p99");
                    }
                    if !pods_ok {
                        why.push("pod-seconds");
                    }
                    if !fail_ok {
                        why.push("failures");
                    }
                    format!("missed: {}", why.join(", "))
                };
                let _ = writeln!(
                    md,
                    "| {kind} | {trace} | {} | {:.0} / {:.0} ms | {:.0} / {:.0} | {} / {} | {verdict} |",
                    w.contender,
                    ws.p99_ms,
                    best_p99,
                    ws.pod_seconds,
                    min_pods,
                    fails(w),
                    min_fail
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\nPods: {}..{} replicas, CPU {} (request = limit), memory {} (limit {}); start-up delay {} s; seed {}.",
        pods.min, pods.max, pods.cpu, pods.memory, pods.memory_limit, args.start_delay, args.seed
    );
    match bound_section(results, args) {
        Ok(section) => md.push_str(&section),
        Err(e) => {
            let _ = writeln!(
                md,
                "\n(The least pod-seconds of any policy could not be computed: {e:#}.)"
            );
        }
    }
    md
}

/// A run's failures: 503s and errors.
fn fails(r: &RunResult) -> usize {
    r.summary.rejected_503 + r.summary.errors
}

/// The HPA contenders' runs of a cell that the target is held against (a run whose HPA read
/// no metric is void).
fn hpa_runs<'a>(runs: &'a [&'a RunResult]) -> Vec<&'a &'a RunResult> {
    runs.iter()
        .filter(|r| !r.contender.starts_with("wsgiscale") && hpa_blind(r).is_none())
        .collect()
}

/// What the HPA contenders of a cell set for the target: the best p99 (ms), the fewest
/// pod-seconds and the fewest failures.
fn hpa_marks(others: &[&&RunResult]) -> (f64, f64, usize) {
    let best_p99 = others
        .iter()
        .map(|r| r.summary.p99_ms)
        .fold(f64::INFINITY, f64::min);
    let cheapest = others
        .iter()
        .map(|r| r.summary.pod_seconds)
        .fold(f64::INFINITY, f64::min);
    let fewest = others.iter().map(|r| fails(r)).min().unwrap_or(0);
    (best_p99, cheapest, fewest)
}

/// The report's section on what any policy could do: for each app and trace, the least
/// pod-seconds (wsgiscale_envtest::bound, a clairvoyant policy whose pods start at once)
/// that reach the best HPA contender's p99 with its fewest failures, against the cheapest
/// HPA contender's pod-seconds; and each wsgiscale run's pod-seconds against the least that
/// reach its own p99 and failures.
fn bound_section(results: &[RunResult], args: &Args) -> anyhow::Result<String> {
    let cpu_millis = wsgiscale_envtest::node::plan::parse_cpu_millis(&args.cpu).context("--cpu")?;
    let slots = args.workers_fixed * args.threads_fixed;
    let mut md = String::new();
    let _ = writeln!(md, "\n### What any policy could do\n");
    let _ = writeln!(
        md,
        "The least pod-seconds that serve a run's arrivals (the same seed) at a given p99 with a given number of failures, for a policy that knows the future, whose pods start at once and are bought by the request-second (`wsgiscale_envtest::bound`: a lower bound for every real policy), and its inverse, the lowest p99 any policy could keep within a number of pod-seconds. Where the least pod-seconds for the best HPA contender's p99 are above the cheapest HPA contender's pod-seconds, no policy can meet the target on that run.\n"
    );
    let _ = writeln!(md, "| app | trace | cheapest HPA pod-s | least pod-s for the best HPA p99, fewest HPA failures | can any policy meet the target? | the same with no failure | lowest p99 any policy keeps with no failure at the cheapest HPA pod-s | wsgiscale run: p99, pod-s | least pod-s for wsgiscale's p99 and failures | wsgiscale / least |");
    let _ = writeln!(md, "|---|---|---:|---:|---|---:|---:|---:|---:|---:|");
    let mut cells: Vec<(&str, &str)> = Vec::new();
    for r in results {
        if !cells.contains(&(r.kind.as_str(), r.trace.as_str())) {
            cells.push((r.kind.as_str(), r.trace.as_str()));
        }
    }
    for (kind_name, trace_name) in cells {
        let kind = KINDS
            .iter()
            .find(|k| k.name == kind_name)
            .with_context(|| format!("unknown kind {kind_name:?}"))?;
        let runs: Vec<&RunResult> = results
            .iter()
            .filter(|r| r.kind == kind_name && r.trace == trace_name)
            .collect();
        let Some(first) = runs.first() else { continue };
        let (trace, _) = load_trace(args, trace_name, kind, first.peak_rps)?;
        let arrivals = trace.arrivals(args.seed);
        // The arrivals rebuilt from the arguments must be the ones the run sent.
        ensure!(
            runs.iter().all(|r| r.summary.requests == arrivals.len()),
            "{kind_name} {trace_name}: the run sent {} requests, the arguments give {} (pass the run's --seconds, --seed and pod arguments)",
            first.summary.requests,
            arrivals.len()
        );
        let model = PodModel {
            min: args.min_replicas,
            capacity: pod_capacity(kind, cpu_millis, slots),
            slots: f64::from(slots),
        };
        let least = |p99_ms: f64, failures: usize| {
            least_pod_seconds(&arrivals, args.seconds, model, p99_ms / 1000.0, failures)
        };
        let others = hpa_runs(&runs);
        let hpa_cols = if others.is_empty() {
            "– | – | no HPA run | – | –".to_string()
        } else {
            let (best_p99, cheapest, fewest) = hpa_marks(&others);
            let (with_fewest, with_none) = (least(best_p99, fewest), least(best_p99, 0));
            let verdict = if with_fewest > cheapest {
                format!("**no**: {:.2}x", with_fewest / cheapest)
            } else {
                "yes".to_string()
            };
            let lowest = lowest_p99(&arrivals, args.seconds, model, cheapest, 0).map_or(
                "none".to_string(),
                |p| {
                    if p > 0.0 {
                        format!("{p:.1} s")
                    } else {
                        "none waits".to_string()
                    }
                },
            );
            format!("{cheapest:.0} | {with_fewest:.0} | {verdict} | {with_none:.0} | {lowest}")
        };
        let mut ours = runs
            .iter()
            .filter(|r| r.contender.starts_with("wsgiscale"))
            .peekable();
        if ours.peek().is_none() {
            let _ = writeln!(
                md,
                "| {kind_name} | {trace_name} | {hpa_cols} | – | – | – |"
            );
        }
        for w in ours {
            let own = least(w.summary.p99_ms, fails(w));
            let _ = writeln!(
                md,
                "| {kind_name} | {trace_name} | {hpa_cols} | {}: {:.1} s, {:.0} | {own:.0} | {:.2}x |",
                w.contender,
                w.summary.p99_ms / 1000.0,
                w.summary.pod_seconds,
                w.summary.pod_seconds / own
            );
        }
    }
    let _ = writeln!(
        md,
        "\nPer pod: {} (the lesser of CPU and worker slots per request), {slots} slots; at least {} pods; {} s of trace, seed {}.",
        KINDS
            .iter()
            .map(|k| format!("{} app {:.0} req/s", k.name, pod_capacity(k, cpu_millis, slots)))
            .collect::<Vec<_>>()
            .join(", "),
        args.min_replicas,
        args.seconds,
        args.seed
    );
    Ok(md)
}

fn timestamp() -> String {
    let out = Command::new("date").arg("+%Y%m%d-%H%M%S").output();
    out.ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "now".into())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.bound_from {
        let text = std::fs::read_to_string(dir.join("results.json"))
            .with_context(|| format!("{}/results.json", dir.display()))?;
        let results: Vec<RunResult> = serde_json::from_str(&text)
            .with_context(|| format!("{}/results.json", dir.display()))?;
        let md = format!(
            "## What any policy could do on run {}\n\nComputed afterwards from its results.json: `{}`\n{}",
            dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
            std::env::args().collect::<Vec<_>>().join(" "),
            bound_section(&results, &args)?
        );
        std::fs::write(dir.join("bound.md"), &md)?;
        println!("{md}");
        return Ok(());
    }
    // `make test` runs the smoke everywhere: where the stand-in node cannot run (not root, no
    // cgroups) or there is no control plane to start, it says why and passes, as the envtest
    // tests do. A full run needs both and fails without them.
    if args.smoke {
        let why = match (
            wsgiscale_envtest::node::check_available(),
            wsgiscale_envtest::assets(),
        ) {
            (Err(e), _) => Some(format!("the stand-in node cannot run here: {e}")),
            (Ok(_), None) => Some(
                "no envtest assets (set KUBEBUILDER_ASSETS to a folder with etcd, kube-apiserver and kube-controller-manager)"
                    .to_string(),
            ),
            _ => None,
        };
        if let Some(why) = why {
            wsgiscale_envtest::skip_line(&format!("showdown smoke: {why}"));
            return Ok(());
        }
    }
    wsgiscale_envtest::node::check_available()
        .map_err(|e| anyhow::anyhow!("the stand-in node cannot run here: {e}"))?;
    let server_bin = pick_bin(&args.server_bin, "wsgiscale", "--server-bin")?;
    let operator_bin = pick_bin(&args.operator_bin, "wsgiscale-operator", "--operator-bin")?;
    let python_bin = args
        .python_bin
        .clone()
        .unwrap_or_else(|| repo().join("bench/.venv/bin"));
    // Absolute, without resolving the venv's symlinked python (it must run as the venv's).
    let python_bin = std::path::absolute(&python_bin)?;
    check_venv_server(&python_bin)?;
    let contenders: Vec<Contender> = args
        .contenders
        .iter()
        .map(|c| contender(c))
        .collect::<Result<_, _>>()?;
    for c in &contenders {
        let tool = match c.name.as_str() {
            "uwsgi-cpu" => "uwsgi",
            n if n.starts_with("gunicorn") => "gunicorn",
            _ => continue,
        };
        ensure!(
            python_bin.join(tool).exists(),
            "{} has no {tool}: run `bash bench/setup.sh` (or give --python-bin)",
            python_bin.display()
        );
    }
    let kinds: Vec<Kind> = args
        .kinds
        .iter()
        .map(|k| {
            KINDS
                .iter()
                .find(|x| x.name == k)
                .copied()
                .with_context(|| format!("unknown kind {k:?} (io, cpu)"))
        })
        .collect::<Result<_, _>>()?;
    let pods = Pods {
        min: args.min_replicas,
        max: args.max_replicas,
        cpu: args.cpu.clone(),
        memory: args.memory.clone(),
        memory_limit: args.memory_limit.clone(),
    };
    let cpu_millis = wsgiscale_envtest::node::plan::parse_cpu_millis(&args.cpu).context("--cpu")?;
    let slots = args.workers_fixed * args.threads_fixed;
    ensure!(
        args.workers_max * args.threads_scaling == slots,
        "every contender must get the same worker slots per pod: {} x {} != {} x {}",
        args.workers_max,
        args.threads_scaling,
        args.workers_fixed,
        args.threads_fixed
    );
    // Check every trace before the first run.
    for kind in &kinds {
        for t in &args.traces {
            load_trace(&args, t, kind, 1.0)?;
        }
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| repo().join(format!("bench/results/showdown-{}", timestamp())));
    std::fs::create_dir_all(&out)?;

    // The cluster: control plane, stand-ins, CRD, operator.
    let image = Image {
        path: vec![
            python_bin.clone(),
            server_bin
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        ],
        files: vec![("/app".into(), repo().join("bench/apps"))],
        workdir: Some("/app".into()),
        ..Image::default()
    };
    let activator_bin = if contenders
        .iter()
        .any(|c| c.name.starts_with("wsgiscale-activator"))
    {
        Some(pick_bin(
            &args.activator_bin,
            "wsgiscale-activator",
            "--activator-bin",
        )?)
    } else {
        None
    };
    let activator_log = out.join("activator.log");
    let cluster = Cluster::start_with(
        "showdown-node",
        BTreeMap::from([(IMAGE.to_string(), image)]),
        Duration::from_secs_f64(args.start_delay),
        &operator_bin,
        &out.join("operator.log"),
        activator_bin
            .as_deref()
            .map(|b| (b, activator_log.as_path())),
    )
    .await?;
    let (client, standin) = (cluster.client.clone(), cluster.standin.clone());

    let mut results = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let started = Instant::now();
    for kind in &kinds {
        let capacity = pod_capacity(kind, cpu_millis, slots);
        let peak = args.peak_share * f64::from(pods.max) * capacity;
        for trace_name in &args.traces {
            let (trace, note) = load_trace(&args, trace_name, kind, peak)?;
            for c in &contenders {
                let (workers, threads) = if c.name.starts_with("gunicorn") {
                    (args.workers_fixed, args.threads_fixed)
                } else {
                    (args.workers_max, args.threads_scaling)
                };
                let vars: BTreeMap<&str, String> = BTreeMap::from([
                    ("IMAGE", IMAGE.to_string()),
                    ("MIN", pods.min.to_string()),
                    ("MAX", pods.max.to_string()),
                    ("CPU", pods.cpu.clone()),
                    ("MEMORY", pods.memory.clone()),
                    ("MEMORY_LIMIT", pods.memory_limit.clone()),
                    ("WORKERS", workers.to_string()),
                    ("THREADS", threads.to_string()),
                    // 70% of the worker slots, in milli-requests.
                    ("INFLIGHT_TARGET", format!("{}m", slots * 700)),
                ]);
                // The last run's closed connections wait out TIME_WAIT (60 s); optionally a
                // run starts only when most are gone. Their count is recorded either way.
                settle_time_wait(args.settle_time_wait).await;
                let time_wait = time_wait_count();
                let run = run_one(
                    &client, &standin, &args, &out, kind, trace_name, &trace, &note, c, &vars,
                    &pods, peak,
                )
                .await;
                let mut r = match run {
                    Ok(r) => r,
                    Err(e) => {
                        // One run that could not be measured does not end the table: it is
                        // reported as such, its namespace torn down, and the next one runs.
                        let what = format!("{} {trace_name} {}: {e:#}", kind.name, c.name);
                        eprintln!("showdown: run failed: {what}");
                        failed.push(what);
                        let ns = format!("sd-{}-{}-{}", kind.name, trace_name, c.name);
                        standin.node.stop_at_once(&ns);
                        let namespaces: Api<Namespace> = Api::all(client.clone());
                        let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
                        continue;
                    }
                };
                r.time_wait_at_start = time_wait;
                eprintln!(
                    "showdown: {} {} {}: p99 {:.0} ms, ok {}, 503 {}, errors {}, pod-s {:.0}, fds {}, TIME_WAIT at start {} ({:.0} s so far)",
                    r.kind,
                    r.trace,
                    r.contender,
                    r.summary.p99_ms,
                    r.summary.ok,
                    r.summary.rejected_503,
                    r.summary.errors,
                    r.summary.pod_seconds,
                    r.peak_fds,
                    r.time_wait_at_start,
                    started.elapsed().as_secs_f64()
                );
                results.push(r);
                // What is measured so far, in case the harness itself dies later.
                let _ = std::fs::write(
                    out.join("results.json"),
                    serde_json::to_string_pretty(&results).unwrap_or_default(),
                );
            }
        }
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let header = format!(
        "## Run {} (commit {commit}, {:.0} min)\n\nCommand: `cargo run --release -p wsgiscale-operator --example showdown -- {}`",
        out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        started.elapsed().as_secs_f64() / 60.0,
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let mut md = markdown(&results, &args, &pods, &header);
    if !failed.is_empty() {
        let _ = writeln!(md, "\n### Runs that could not be measured\n");
        for f in &failed {
            let _ = writeln!(md, "- {f}");
        }
    }
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    println!("{md}");
    eprintln!("showdown: report in {}", out.display());

    drop(standin);
    cluster.stop().await;
    if args.smoke {
        ensure!(failed.is_empty(), "runs failed: {}", failed.join("; "));
        smoke_check(&results)?;
    }
    Ok(())
}

/// TCP connections in TIME_WAIT in this network namespace (IPv4 and IPv6).
fn time_wait_count() -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| {
            t.lines()
                .skip(1)
                .filter(|l| l.split_whitespace().nth(3) == Some("06"))
                .count()
        })
        .sum()
}

/// Waits (at most 75 s) until fewer than `most` connections are in TIME_WAIT.
async fn settle_time_wait(most: usize) {
    if most == 0 {
        return;
    }
    let until = Instant::now() + Duration::from_secs(75);
    loop {
        let n = time_wait_count();
        if n < most || Instant::now() >= until {
            if n >= most {
                eprintln!("showdown: starting with {n} connections still in TIME_WAIT");
            }
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// A run's errors with their kinds: `15 (refused 10, timeout 2, 502 x3)`.
fn describe_errors(s: &Summary) -> String {
    if s.errors == 0 {
        return "0".into();
    }
    let mut kinds = Vec::new();
    for (name, n) in [
        ("refused", s.refused),
        ("broken", s.broken),
        ("timeout", s.timeouts),
        ("shed", s.shed),
    ] {
        if n > 0 {
            kinds.push(format!("{name} {n}"));
        }
    }
    for (status, n) in &s.error_statuses {
        kinds.push(format!("{status} x{n}"));
    }
    format!("{} ({})", s.errors, kinds.join(", "))
}

/// Whether an HPA's status shows a metric it computed (a current utilization or average
/// value): without one it never scaled, and its run measured a fixed pod count.
fn hpa_read_metric(status: &Value) -> bool {
    status["currentMetrics"].as_array().is_some_and(|m| {
        m.iter().any(|x| {
            x["resource"]["current"]["averageUtilization"].is_number()
                || x["resource"]["current"]["averageValue"].is_string()
                || x["pods"]["current"]["averageValue"].is_string()
        })
    })
}

/// Why an HPA could not scale, from its `ScalingActive` condition, when it read no metric.
fn hpa_blind(r: &RunResult) -> Option<String> {
    let h = r.hpa_status.as_ref()?;
    if hpa_read_metric(h) {
        return None;
    }
    let why = h["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "ScalingActive"))
        .map(|c| {
            format!(
                "{}: {}",
                c["reason"].as_str().unwrap_or("?"),
                c["message"].as_str().unwrap_or("")
            )
        })
        .unwrap_or_else(|| "no ScalingActive condition".into());
    Some(why)
}

/// What `make test` checks of a short run: the harness worked end to end.
fn smoke_check(results: &[RunResult]) -> anyhow::Result<()> {
    ensure!(!results.is_empty(), "no run");
    for r in results {
        ensure!(
            r.summary.ok > 0,
            "{} {}: no request succeeded",
            r.trace,
            r.contender
        );
        ensure!(!r.samples.is_empty(), "{}: no samples", r.contender);
        ensure!(
            r.summary.pod_seconds > 0.0,
            "{}: no pod-seconds",
            r.contender
        );
        if let Some(h) = &r.hpa_status {
            ensure!(
                hpa_read_metric(h),
                "{}: the HPA read no metric: {h}",
                r.contender
            );
        }
    }
    eprintln!("showdown: smoke checks passed");
    Ok(())
}
