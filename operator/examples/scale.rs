//! The operator at scale, against a real API server: `make bench-operator`, or
//!
//! ```text
//! cargo build --release -p wsgiscale-operator
//! cargo run --release -p wsgiscale-operator --example scale -- --apps 1000 --namespaces 50
//! ```
//!
//! Starts etcd, kube-apiserver (with an audit log) and kube-controller-manager from the
//! envtest assets, installs the CRD, runs the release `wsgiscale-operator run` as its own
//! process (found next to this example's directory, or `OPERATOR_BIN`), creates the WsgiApps
//! and measures, in phases: the time until every app has its children and a status for its
//! generation; the operator's RSS and CPU; reconcile latency from its own histogram; API writes
//! at rest by client, resource and verb (the audit log tells the operator from the controller
//! manager: the operator's kubeconfig impersonates the user `wsgiscale-operator`), before and
//! after a restart of the operator, with the fields that changed between two versions of each
//! object written; then the autoscaler's CPU per tick for the autoscaled apps, whose pods this
//! program plays (a `/load` server on 127.0.0.N each). Prints a markdown report and writes it,
//! with the raw figures as JSON, to bench/results/operator-scale-YYYYMMDD-HHMMSS.{md,json}.

#[path = "scale/audit.rs"]
mod audit;
#[path = "scale/prom.rs"]
mod prom;
#[path = "scale/standin.rs"]
mod standin;
#[path = "scale/watch.rs"]
mod watch;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use wsgiscale_envtest::{ControlPlane, Options};
use wsgiscale_operator::crd::{ReplicasSpec, WsgiApp, WsgiAppSpec};
use wsgiscale_operator::render::config_map_name;
use wsgiscale_operator::validate::defaults::ADMIN_PORT;

/// The operator at scale against a real API server.
#[derive(Debug, Parser)]
struct Args {
    /// WsgiApps to create.
    #[arg(long, default_value_t = 1000)]
    apps: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    /// Apps then given `autoscaling.enabled: true` and stand-in pods.
    #[arg(long, default_value_t = 100)]
    autoscaled: usize,
    /// Length of each measured window at rest (and of the autoscaler's), seconds.
    #[arg(long, default_value_t = 60)]
    rest_seconds: u64,
    /// `replicas.min` of every app (above 1 the operator also keeps a PodDisruptionBudget).
    #[arg(long, default_value_t = 2)]
    min_replicas: i32,
    /// `--concurrency` of the operator (default: the operator's own default).
    #[arg(long)]
    concurrency: Option<u16>,
    /// Most seconds to wait for the controller manager to stop writing after convergence.
    #[arg(long, default_value_t = 900)]
    settle_timeout_seconds: u64,
    /// Record a `perf` profile of the operator during convergence and the autoscaler window.
    #[arg(long)]
    perf: bool,
    /// Where the report goes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/results"))]
    out: PathBuf,
    /// The operator binary. [default: wsgiscale-operator next to target/release/examples/]
    #[arg(long, env = "OPERATOR_BIN")]
    operator_bin: Option<PathBuf>,
}

const PHASES: [&str; 7] = [
    "create + converge",
    "controller manager settling",
    "rest",
    "restart: initial sweep",
    "rest after restart",
    "autoscale: setup",
    "autoscale: steady",
];
const CONVERGE: usize = 0;
const SETTLE: usize = 1;
const REST: usize = 2;
const SWEEP: usize = 3;
const REST2: usize = 4;
const AS_SETUP: usize = 5;
const AS_STEADY: usize = 6;

/// Seconds of kube-controller-manager silence that count as settled.
const QUIET: Duration = Duration::from_secs(20);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.apps > 0 && args.namespaces > 0,
        "--apps and --namespaces must be positive"
    );
    ensure!(
        args.autoscaled <= args.apps,
        "--autoscaled must be at most --apps"
    );
    let bin = match &args.operator_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("the example's directory")?
            .join("wsgiscale-operator"),
    };
    ensure!(
        bin.is_file(),
        "{} is missing: run `cargo build --release -p wsgiscale-operator` or set OPERATOR_BIN",
        bin.display()
    );
    let assets = wsgiscale_envtest::assets().context(
        "no envtest assets: set KUBEBUILDER_ASSETS to a folder with etcd, kube-apiserver and kube-controller-manager",
    )?;
    let work = std::env::temp_dir().join(format!("wsgiscale-scale-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let policy = work.join("audit-policy.yaml");
    std::fs::write(&policy, audit::POLICY)?;
    let audit_log = work.join("audit.log");
    let uptime_start = uptime();
    eprintln!("scale: starting the control plane ({})", assets.display());
    let started = Instant::now();
    let cp = ControlPlane::start(
        &assets,
        &Options {
            apiserver_flags: vec![
                format!("--audit-policy-file={}", policy.display()),
                format!("--audit-log-path={}", audit_log.display()),
                "--audit-log-maxsize=0".into(),
            ],
            ..Options::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("control plane: {e}"))?;
    let cp_start_s = started.elapsed().as_secs_f64();
    eprintln!("scale: control plane ready in {cp_start_s:.1} s");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(bench(&args, &bin, &cp, &work, &audit_log, uptime_start));
    // Not dropped: `ControlPlane`'s Drop runs `kill -TERM -PGID`, which procps-ng 4's kill
    // takes for an option (it needs `--`), signals nothing and then waits for etcd forever.
    // When this process exits, the envtest guardian stops the control plane and removes its
    // folder.
    std::mem::forget(cp);
    result
}

fn uptime() -> String {
    Command::new("uptime")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (comm, process group, utime + stime in ticks) of a /proc/PID/stat.
fn read_stat(path: &Path) -> Option<(String, i64, f64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let pgrp = f.get(2)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((comm, pgrp, ticks))
}

/// CPU seconds of the control plane's processes, by name.
fn group_cpu(group: i32, tck: f64) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if !e
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            if let Some((comm, pgrp, ticks)) = read_stat(&e.path().join("stat")) {
                if pgrp == i64::from(group) && comm != "sh" {
                    *out.entry(comm).or_insert(0.0) += ticks / tck;
                }
            }
        }
    }
    out
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn mib(kib: Option<u64>) -> f64 {
    kib.unwrap_or(0) as f64 / 1024.0
}

async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), work).await??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    ensure!(head.contains(" 200 "), "GET {path}: {head}");
    Ok(body.to_string())
}

/// The operator process.
struct Operator {
    child: Child,
    pid: u32,
    http: SocketAddr,
    tck: f64,
}

impl Operator {
    fn start(
        bin: &Path,
        kubeconfig: &Path,
        identity: &str,
        concurrency: Option<u16>,
        log: &Path,
        tck: f64,
    ) -> anyhow::Result<Operator> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let http = SocketAddr::from(([127, 0, 0, 1], port));
        let out = std::fs::File::create(log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .args(["--http-bind", &http.to_string()])
            .args(["--leader-election", "true", "--lease-namespace", "default"])
            .args(["--identity", identity, "--log-format", "plain"])
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // Only the flags above: no WSGISCALE_OPERATOR_* twin from the caller's environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("WSGISCALE_OPERATOR_") {
                cmd.env_remove(k);
            }
        }
        if let Some(c) = concurrency {
            cmd.args(["--concurrency", &c.to_string()]);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        Ok(Operator {
            pid: child.id(),
            child,
            http,
            tck,
        })
    }

    async fn metrics(&self) -> Vec<prom::Sample> {
        match http_get(self.http, "/metrics").await {
            Ok(text) => prom::parse(&text),
            Err(e) => {
                eprintln!("scale: operator /metrics: {e}");
                Vec::new()
            }
        }
    }

    fn cpu_s(&self) -> f64 {
        read_stat(Path::new(&format!("/proc/{}/stat", self.pid)))
            .map(|(_, _, t)| t / self.tck)
            .unwrap_or(0.0)
    }

    fn rss_kib(&self) -> Option<u64> {
        status_kib(self.pid, "VmRSS:")
    }

    fn hwm_kib(&self) -> Option<u64> {
        status_kib(self.pid, "VmHWM:")
    }

    async fn wait_leading(&mut self, timeout: Duration) -> anyhow::Result<f64> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("the operator exited: {status}");
            }
            let m = self.metrics().await;
            if prom::sum(&m, "wsgiscale_operator_leader", |_| true) >= 1.0 {
                return Ok(t.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("the operator did not lead within {timeout:?}")
    }

    /// SIGTERM, then the exit status (SIGKILL after 30 s).
    async fn stop(&mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.to_string();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        "killed after 30 s".into()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn client_for(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static("wsgiscale-scale-bench"),
    ));
    Ok(Client::try_from(config)?)
}

/// The admin kubeconfig with `as: wsgiscale-operator` (and the admin's group), so the audit
/// log names the operator's requests.
fn operator_kubeconfig(admin: &Path, out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(admin)?;
    let with = text.replacen(
        "  user:\n",
        &format!(
            "  user:\n    as: {}\n    as-groups:\n    - system:masters\n",
            audit::OPERATOR_USER
        ),
        1,
    );
    ensure!(
        with != text,
        "unexpected kubeconfig layout in {}",
        admin.display()
    );
    std::fs::write(out, &with)?;
    let kc = Kubeconfig::read_from(out)?;
    let impersonates = kc
        .auth_infos
        .first()
        .and_then(|a| a.auth_info.as_ref())
        .and_then(|a| a.impersonate.as_deref())
        == Some(audit::OPERATOR_USER);
    ensure!(
        impersonates,
        "the operator's kubeconfig does not impersonate"
    );
    Ok(())
}

/// Applies the CRD the operator binary prints (`wsgiscale-operator crd`, so the binary and the
/// CRD always match) and waits until it is Established.
async fn install_crd(client: &Client, bin: &Path) -> anyhow::Result<()> {
    let out = Command::new(bin).arg("crd").output()?;
    ensure!(
        out.status.success(),
        "{} crd: {}",
        bin.display(),
        out.status
    );
    let crd: CustomResourceDefinition = serde_saphyr::from_slice(&out.stdout)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply("wsgiscale-scale-bench").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    for _ in 0..240 {
        let established = crds
            .get(&crd.name_any())
            .await
            .ok()
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("the CRD was not Established within 60 s")
}

#[derive(Clone)]
struct App {
    ns: String,
    name: String,
}

impl App {
    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
}

fn app_object(app: &App, min: i32) -> WsgiApp {
    let mut o = WsgiApp::new(
        &app.name,
        WsgiAppSpec {
            image: "registry.example.com/hello:1.0.0".into(),
            app: "hello:application".into(),
            replicas: Some(ReplicasSpec {
                min: Some(min),
                max: Some(min.max(1) * 2),
                ..ReplicasSpec::default()
            }),
            ..WsgiAppSpec::default()
        },
    );
    o.metadata.namespace = Some(app.ns.clone());
    o
}

/// Every child present and a status for the app's generation.
fn converged(w: &watch::Watched, app: &App, pdb: bool) -> bool {
    let key = app.key();
    w.check("WsgiApp", &key, |o| {
        let generation = o["metadata"]["generation"].as_i64();
        generation.is_some()
            && o["status"]["observedGeneration"].as_i64() == generation
            && o["status"]["conditions"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
    }) && w.has(
        "ConfigMap",
        &format!("{}/{}", app.ns, config_map_name(&app.name)),
    ) && w.has("Deployment", &key)
        && w.has("Service", &key)
        && (!pdb || w.has("PodDisruptionBudget", &key))
}

/// An autoscaled app whose stand-in pods are ready, with the autoscaler's status written.
fn autoscaled_ready(w: &watch::Watched, app: &App) -> bool {
    w.check("WsgiApp", &app.key(), |o| {
        let s = &o["status"];
        o["metadata"]["generation"].as_i64() == s["observedGeneration"].as_i64()
            && s["readyReplicas"].as_i64().unwrap_or(0)
                >= s["desiredReplicas"].as_i64().unwrap_or(1)
            && s["autoscaler"]["recommendedReplicas"].is_i64()
    })
}

/// Everything measured over one phase.
struct PhaseStats {
    name: &'static str,
    seconds: f64,
    operator_cpu_s: f64,
    control_plane_cpu_s: BTreeMap<String, f64>,
    rss_end_mib: f64,
    hwm_mib: f64,
    audit: Vec<audit::Entry>,
    /// `apiserver_request_total` increase, all clients, write verbs: (verb, resource) -> n.
    api_writes: BTreeMap<(String, String), f64>,
    harness_cpu_s: f64,
    reconciles: f64,
    reconcile_buckets: Vec<(f64, f64)>,
    operator_writes: BTreeMap<String, f64>,
    operator_errors: BTreeMap<String, f64>,
    scrapes: BTreeMap<String, f64>,
    scale_decisions: f64,
    load_end: String,
}

struct PhaseStart {
    idx: usize,
    t: Instant,
    audit: u64,
    cpu: f64,
    harness: f64,
    cp: BTreeMap<String, f64>,
    api: Vec<prom::Sample>,
    op: Vec<prom::Sample>,
}

fn api_writes(samples: &[prom::Sample]) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == "apiserver_request_total")
    {
        let verb = s.label("verb");
        if !matches!(
            verb,
            "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION"
        ) {
            continue;
        }
        let mut res = s.label("resource").to_string();
        if !s.label("group").is_empty() {
            res = format!("{res}.{}", s.label("group"));
        }
        if !s.label("subresource").is_empty() {
            res = format!("{res}/{}", s.label("subresource"));
        }
        *out.entry((verb.to_string(), res)).or_insert(0.0) += s.value;
    }
    out
}

fn by_label(samples: &[prom::Sample], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        *out.entry(s.label(label).to_string()).or_insert(0.0) += s.value;
    }
    out
}

fn sub_maps<K: Ord + Clone>(a: &BTreeMap<K, f64>, b: &BTreeMap<K, f64>) -> BTreeMap<K, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

struct Bench<'a> {
    cp: &'a ControlPlane,
    audit_log: PathBuf,
    tck: f64,
    phase: Arc<AtomicUsize>,
}

impl Bench<'_> {
    fn harness_cpu_s(&self) -> f64 {
        read_stat(Path::new("/proc/self/stat"))
            .map(|(_, _, t)| t / self.tck)
            .unwrap_or(0.0)
    }

    async fn api_metrics(&self) -> Vec<prom::Sample> {
        match self.cp.apiserver_metrics().await {
            Ok(t) => prom::parse(&t),
            Err(e) => {
                eprintln!("scale: apiserver /metrics: {e}");
                Vec::new()
            }
        }
    }

    async fn begin(&self, idx: usize, op: &Operator) -> PhaseStart {
        self.phase.store(idx, Ordering::Relaxed);
        eprintln!("scale: phase {idx}: {}", PHASES[idx]);
        PhaseStart {
            idx,
            t: Instant::now(),
            audit: audit::offset(&self.audit_log),
            cpu: op.cpu_s(),
            harness: self.harness_cpu_s(),
            cp: group_cpu(self.cp.process_group(), self.tck),
            api: self.api_metrics().await,
            op: op.metrics().await,
        }
    }

    async fn end(&self, p: PhaseStart, op: &Operator) -> PhaseStats {
        let seconds = p.t.elapsed().as_secs_f64();
        // The audit backend writes as requests complete; give the last ones a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let api = self.api_metrics().await;
        let m = op.metrics().await;
        let name = "wsgiscale_operator_reconcile_duration_seconds";
        let stats = PhaseStats {
            name: PHASES[p.idx],
            seconds,
            operator_cpu_s: op.cpu_s() - p.cpu,
            harness_cpu_s: self.harness_cpu_s() - p.harness,
            control_plane_cpu_s: sub_maps(&p.cp, &group_cpu(self.cp.process_group(), self.tck)),
            rss_end_mib: mib(op.rss_kib()),
            hwm_mib: mib(op.hwm_kib()),
            audit: audit::between(&self.audit_log, p.audit, audit::offset(&self.audit_log)),
            api_writes: sub_maps(&api_writes(&p.api), &api_writes(&api)),
            reconciles: prom::sum(&m, "wsgiscale_operator_reconciles_total", |_| true)
                - prom::sum(&p.op, "wsgiscale_operator_reconciles_total", |_| true),
            reconcile_buckets: prom::delta(&prom::buckets(&p.op, name), &prom::buckets(&m, name)),
            operator_writes: sub_maps(
                &by_label(&p.op, "wsgiscale_operator_writes_total", "kind"),
                &by_label(&m, "wsgiscale_operator_writes_total", "kind"),
            ),
            operator_errors: sub_maps(
                &by_label(&p.op, "wsgiscale_operator_errors_total", "reason"),
                &by_label(&m, "wsgiscale_operator_errors_total", "reason"),
            ),
            scrapes: sub_maps(
                &by_label(&p.op, "wsgiscale_operator_load_scrapes_total", "result"),
                &by_label(&m, "wsgiscale_operator_load_scrapes_total", "result"),
            ),
            scale_decisions: prom::sum(&m, "wsgiscale_operator_autoscale_decisions_total", |_| {
                true
            }) - prom::sum(
                &p.op,
                "wsgiscale_operator_autoscale_decisions_total",
                |_| true,
            ),
            load_end: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        };
        eprintln!(
            "scale: phase {} done in {:.1} s: operator CPU {:.2} s, RSS {:.1} MiB, {} audited requests",
            p.idx,
            seconds,
            stats.operator_cpu_s,
            stats.rss_end_mib,
            stats.audit.len()
        );
        stats
    }

    /// Waits until kube-controller-manager has written nothing for [`QUIET`]; the seconds
    /// waited, and whether it settled before `timeout`.
    async fn wait_settled(&self, timeout: Duration) -> (f64, bool) {
        let t = Instant::now();
        let mut tail = audit::Tail::new(&self.audit_log);
        let mut last = Instant::now();
        let mut report = Instant::now();
        while t.elapsed() < timeout {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let new = tail.read_new();
            let kcm = new
                .iter()
                .filter(|e| {
                    // Refused writes retried with backoff (the endpoints controller refuses
                    // the stand-ins' loopback pod IPs) and the events about them do not count.
                    e.is_write()
                        && e.client == "kube-controller-manager"
                        && (200..300).contains(&e.code)
                        && !e.resource.starts_with("events")
                })
                .count();
            if kcm > 0 {
                last = Instant::now();
            }
            if report.elapsed() > Duration::from_secs(10) {
                let op = new
                    .iter()
                    .filter(|e| e.is_write() && e.client == "wsgiscale-operator" && !e.is_lease())
                    .count();
                eprintln!(
                    "scale: settling {:.0} s: last 2 s: {kcm} controller-manager writes, {op} operator writes",
                    t.elapsed().as_secs_f64()
                );
                report = Instant::now();
            }
            if last.elapsed() >= QUIET {
                return (t.elapsed().as_secs_f64(), true);
            }
        }
        (t.elapsed().as_secs_f64(), false)
    }
}

/// A `perf record` of `pid` until [`Perf::finish`].
struct Perf {
    child: Child,
    data: PathBuf,
}

impl Perf {
    fn start(pid: u32, data: PathBuf) -> Option<Perf> {
        let child = Command::new("perf")
            .args(["record", "-F", "199", "--call-graph", "dwarf,8192"])
            .args(["-p", &pid.to_string(), "-o"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("scale: perf: {e}"))
            .ok()?;
        Some(Perf { child, data })
    }

    /// Stops recording; the flat profile's top lines.
    fn finish(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let report = |mode: &str, limit: &str, n: usize| {
            let out = Command::new("perf")
                .args(["report", "--stdio", "--no-inline", mode, "-g", "none"])
                .args(["--sort", "symbol", "--percent-limit", limit, "-i"])
                .arg(&self.data)
                .stderr(Stdio::null())
                .output();
            match out {
                Ok(o) => String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .map(|l| l.trim_end().chars().take(160).collect::<String>())
                    .take(n)
                    .collect::<Vec<_>>()
                    .join("\n"),
                Err(e) => format!("perf report: {e}"),
            }
        };
        format!(
            "self time (>= 1.5%):\n{}\n\nwith callees (children, >= 8%):\n{}",
            report("--no-children", "1.5", 25),
            report("--children", "8", 40)
        )
    }
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

async fn bench(
    args: &Args,
    bin: &Path,
    cp: &ControlPlane,
    work: &Path,
    audit_log: &Path,
    uptime_start: String,
) -> anyhow::Result<()> {
    let tck = clock_ticks();
    let t_start = Instant::now();
    let client = client_for(cp.kubeconfig()).await?;
    install_crd(&client, bin).await?;
    let op_kubeconfig = work.join("operator.kubeconfig");
    operator_kubeconfig(cp.kubeconfig(), &op_kubeconfig)?;

    let phase = Arc::new(AtomicUsize::new(0));
    let watched = watch::Watched::new(
        &[
            "WsgiApp",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
        ],
        phase.clone(),
    );
    let owned = Some("app.kubernetes.io/managed-by=wsgiscale-operator");
    let watchers = [
        tokio::spawn(watch::run(
            client.clone(),
            ApiResource::erase::<WsgiApp>(&()),
            "WsgiApp",
            None,
            watched.clone(),
        )),
        tokio::spawn(watch::run(
            client.clone(),
            ApiResource::erase::<ConfigMap>(&()),
            "ConfigMap",
            owned,
            watched.clone(),
        )),
        tokio::spawn(watch::run(
            client.clone(),
            ApiResource::erase::<Deployment>(&()),
            "Deployment",
            owned,
            watched.clone(),
        )),
        tokio::spawn(watch::run(
            client.clone(),
            ApiResource::erase::<Service>(&()),
            "Service",
            owned,
            watched.clone(),
        )),
        tokio::spawn(watch::run(
            client.clone(),
            ApiResource::erase::<PodDisruptionBudget>(&()),
            "PodDisruptionBudget",
            owned,
            watched.clone(),
        )),
    ];

    let namespaces: Vec<String> = (0..args.namespaces)
        .map(|i| format!("scale-{i:02}"))
        .collect();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    for ns in &namespaces {
        let obj = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        ns_api.create(&PostParams::default(), &obj).await?;
    }
    let apps: Vec<App> = (0..args.apps)
        .map(|i| App {
            ns: namespaces[i % args.namespaces].clone(),
            name: format!("app-{i:04}"),
        })
        .collect();
    let pdb = args.min_replicas > 1;

    let b = Bench {
        cp,
        audit_log: audit_log.to_path_buf(),
        tck,
        phase,
    };
    let mut op = Operator::start(
        bin,
        &op_kubeconfig,
        "scale-bench-1",
        args.concurrency,
        &work.join("operator-1.log"),
        tck,
    )?;
    let leading_s = op.wait_leading(Duration::from_secs(60)).await?;
    let rss_idle_mib = mib(op.rss_kib());
    eprintln!("scale: operator leading after {leading_s:.1} s, RSS {rss_idle_mib:.1} MiB");
    let mut phases: Vec<PhaseStats> = Vec::new();
    let mut profiles: BTreeMap<&str, String> = BTreeMap::new();

    // Phase 0: create every app and wait until each has its children and its status.
    let p = b.begin(CONVERGE, &op).await;
    let perf = args
        .perf
        .then(|| Perf::start(op.pid, work.join("perf-converge.data")))
        .flatten();
    let t0 = Instant::now();
    let created = futures::stream::iter(apps.iter())
        .map(|a| {
            let api: Api<WsgiApp> = Api::namespaced(client.clone(), &a.ns);
            let obj = app_object(a, args.min_replicas);
            async move { api.create(&PostParams::default(), &obj).await }
        })
        .buffer_unordered(16)
        .filter(|r| futures::future::ready(r.is_ok()))
        .count()
        .await;
    ensure!(
        created == apps.len(),
        "created only {created} of {} apps",
        apps.len()
    );
    let create_s = t0.elapsed().as_secs_f64();
    eprintln!("scale: {created} WsgiApps created in {create_s:.1} s");
    let mut converge_s = None;
    let mut last_report = Instant::now();
    let mut done = 0;
    while t0.elapsed() < Duration::from_secs(900) {
        done = apps.iter().filter(|a| converged(&watched, a, pdb)).count();
        if done == apps.len() {
            converge_s = Some(t0.elapsed().as_secs_f64());
            break;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "scale: {:.0} s: {done}/{} converged, operator RSS {:.1} MiB",
                t0.elapsed().as_secs_f64(),
                apps.len(),
                mib(op.rss_kib())
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Some(perf) = perf {
        profiles.insert("convergence", perf.finish());
    }
    match converge_s {
        Some(s) => eprintln!("scale: all {} converged after {s:.1} s", apps.len()),
        None => eprintln!("scale: only {done}/{} converged in 900 s", apps.len()),
    }
    phases.push(b.end(p, &op).await);

    // Phase 1: the controller manager makes ReplicaSets and pods and writes statuses; the
    // operator follows the Deployments' statuses. Until the controller manager is quiet.
    let p = b.begin(SETTLE, &op).await;
    let (settle_s, settled) = b
        .wait_settled(Duration::from_secs(args.settle_timeout_seconds))
        .await;
    phases.push(b.end(p, &op).await);

    // Phase 2: rest.
    let rest = Duration::from_secs(args.rest_seconds);
    let p = b.begin(REST, &op).await;
    let perf = args
        .perf
        .then(|| Perf::start(op.pid, work.join("perf-rest.data")))
        .flatten();
    tokio::time::sleep(rest).await;
    if let Some(perf) = perf {
        profiles.insert("rest", perf.finish());
    }
    phases.push(b.end(p, &op).await);
    let rss_rest_mib = mib(op.rss_kib());
    let hwm_first_mib = mib(op.hwm_kib());

    // Phase 3: restart the operator; its first reconcile of every app.
    let exit = op.stop().await;
    eprintln!("scale: operator stopped: {exit}");
    op = Operator::start(
        bin,
        &op_kubeconfig,
        "scale-bench-2",
        args.concurrency,
        &work.join("operator-2.log"),
        tck,
    )?;
    let t_restart = Instant::now();
    let p = b.begin(SWEEP, &op).await;
    let relead_s = op.wait_leading(Duration::from_secs(60)).await?;
    let mut sweep_s = None;
    while t_restart.elapsed() < Duration::from_secs(600) {
        let m = op.metrics().await;
        if prom::sum(&m, "wsgiscale_operator_reconciles_total", |_| true) >= apps.len() as f64 {
            sweep_s = Some(t_restart.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    phases.push(b.end(p, &op).await);

    // Phase 4: rest after the restart.
    let p = b.begin(REST2, &op).await;
    tokio::time::sleep(rest).await;
    phases.push(b.end(p, &op).await);
    let rss_rest2_mib = mib(op.rss_kib());

    // Phase 5: autoscaling on for some apps, spread over the namespaces; stand-in pods.
    let step = (apps.len() / args.autoscaled.max(1)).max(1);
    let scaled: Vec<App> = apps
        .iter()
        .step_by(step)
        .take(args.autoscaled)
        .cloned()
        .collect();
    let seen = Arc::new(Mutex::new(standin::Seen::default()));
    let stop = CancellationToken::new();
    let mut as_setup_s = None;
    let mut standin_task = None;
    let mut autoscale = json!(null);
    if !scaled.is_empty() {
        let p = b.begin(AS_SETUP, &op).await;
        let t = Instant::now();
        standin_task = Some(tokio::spawn(standin::run(
            client.clone(),
            scaled.iter().map(|a| a.name.clone()).collect(),
            u16::try_from(ADMIN_PORT).unwrap_or(9191),
            t_start,
            seen.clone(),
            stop.clone(),
        )));
        let patch = json!({"spec": {"autoscaling": {"enabled": true, "tickSeconds": 2}}});
        for a in &scaled {
            let api: Api<WsgiApp> = Api::namespaced(client.clone(), &a.ns);
            api.patch(&a.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        while t.elapsed() < Duration::from_secs(300) {
            if scaled.iter().all(|a| autoscaled_ready(&watched, a)) {
                as_setup_s = Some(t.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let n_ready = scaled
            .iter()
            .filter(|a| autoscaled_ready(&watched, a))
            .count();
        eprintln!(
            "scale: {n_ready}/{} autoscaled apps ready with stand-in pods",
            scaled.len()
        );
        let _ = b.wait_settled(Duration::from_secs(180)).await;
        phases.push(b.end(p, &op).await);

        // Phase 6: the autoscaler's steady state.
        let scrapes0 = seen.lock().map(|s| s.scrapes.len()).unwrap_or(0);
        let p = b.begin(AS_STEADY, &op).await;
        let perf = args
            .perf
            .then(|| Perf::start(op.pid, work.join("perf-autoscale.data")))
            .flatten();
        tokio::time::sleep(rest).await;
        if let Some(perf) = perf {
            profiles.insert("autoscaler", perf.finish());
        }
        let st = b.end(p, &op).await;
        let (scrape_times, serve_us, pods) = {
            let s = seen.lock().unwrap_or_else(|e| e.into_inner());
            (s.scrapes[scrapes0..].to_vec(), s.serve_us.clone(), s.pods)
        };
        // Scrapes arrive in one burst per tick; a gap of 0.5 s separates two bursts.
        let mut bursts: Vec<(f64, f64, usize)> = Vec::new();
        for &t in &scrape_times {
            match bursts.last_mut() {
                Some(b) if t - b.1 < 0.5 => {
                    b.1 = t;
                    b.2 += 1;
                }
                _ => bursts.push((t, t, 1)),
            }
        }
        let mut spans: Vec<f64> = bursts.iter().map(|b| (b.1 - b.0) * 1000.0).collect();
        let mut sizes: Vec<f64> = bursts.iter().map(|b| b.2 as f64).collect();
        let mut serve = serve_us;
        let window = st.seconds;
        let ticks = window / 2.0;
        let ok = st.scrapes.get("ok").copied().unwrap_or(0.0);
        let measured_ticks = if pods > 0 { ok / pods as f64 } else { 0.0 };
        let baseline = phases
            .iter()
            .find(|p| p.name == PHASES[REST2])
            .map(|p| p.operator_cpu_s / p.seconds)
            .unwrap_or(0.0);
        // The operator's pod LISTs and its autoscaler's status writes in the window (audit).
        let pod_lists = st
            .audit
            .iter()
            .filter(|e| {
                e.client == "wsgiscale-operator" && e.verb == "list" && e.resource == "pods"
            })
            .count();
        let status_writes = st
            .audit
            .iter()
            .filter(|e| {
                e.is_write()
                    && e.client == "wsgiscale-operator"
                    && e.resource == "wsgiapps.wsgiscale.dev/status"
                    && e.manager == "wsgiscale-autoscaler"
            })
            .count();
        autoscale = json!({
            "pod_lists": pod_lists,
            "status_writes": status_writes,
            "status_writes_per_min": status_writes as f64 / window * 60.0,
            "apps": scaled.len(),
            "pods": pods,
            "window_s": window,
            "ticks": ticks,
            "ticks_from_scrapes": measured_ticks,
            "operator_cpu_s": st.operator_cpu_s,
            "cpu_percent_of_core": st.operator_cpu_s / window * 100.0,
            "cpu_ms_per_tick": st.operator_cpu_s / measured_ticks.max(1.0) * 1000.0,
            "cpu_ms_per_nominal_tick": st.operator_cpu_s / ticks * 1000.0,
            "baseline_cpu_percent_of_core": baseline * 100.0,
            "cpu_ms_per_tick_above_rest": (st.operator_cpu_s - baseline * window) / measured_ticks.max(1.0) * 1000.0,
            "scrapes": st.scrapes,
            "scale_decisions": st.scale_decisions,
            "bursts": bursts.len(),
            "burst_size_median": audit::percentile(&mut sizes, 0.5),
            "burst_span_ms_median": audit::percentile(&mut spans, 0.5),
            "burst_span_ms_max": audit::percentile(&mut spans, 1.0),
            "standin_serve_us_p50": audit::percentile(&mut serve, 0.5),
            "standin_serve_us_p99": audit::percentile(&mut serve, 0.99),
        });
        phases.push(st);
    }
    let hwm_second_mib = mib(op.hwm_kib());
    let rss_end_mib = mib(op.rss_kib());
    stop.cancel();
    if let Some(t) = standin_task {
        let _ = t.await;
    }
    let exit2 = op.stop().await;
    for w in &watchers {
        w.abort();
    }
    let uptime_end = uptime();

    // The report.
    let converge = &phases[CONVERGE];
    let p50 = prom::quantile(&converge.reconcile_buckets, 0.5).map(|q| q.0);
    let p99 = prom::quantile(&converge.reconcile_buckets, 0.99).map(|q| q.0);
    let all_buckets = phases.iter().fold(Vec::new(), |acc: Vec<(f64, f64)>, p| {
        if acc.is_empty() {
            p.reconcile_buckets.clone()
        } else {
            acc.iter()
                .zip(&p.reconcile_buckets)
                .map(|(a, b)| (a.0, a.1 + b.1))
                .collect()
        }
    });
    let op_writes_per_min = |p: &PhaseStats, leases: bool| {
        p.audit
            .iter()
            .filter(|e| e.is_write() && e.client == "wsgiscale-operator" && e.is_lease() == leases)
            .count() as f64
            / p.seconds
            * 60.0
    };
    let changes = watched.changes.lock().unwrap_or_else(|e| e.into_inner());
    let stamp = Timestamp::now().strftime("%Y%m%d-%H%M%S").to_string();
    let commit = std::env::var("BENCH_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| git(&["rev-parse", "--short", "HEAD"]));
    let dirty = !git(&["status", "--porcelain", "--", "src"]).is_empty();

    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(
        w,
        "# Operator at scale: {} WsgiApps in {} namespaces\n",
        args.apps, args.namespaces
    );
    let _ = writeln!(
        w,
        "Run {stamp} (UTC), commit {commit}{}; operator binary {}; kube-apiserver and kube-controller-manager v1.32.0-beta.0 (envtest assets), etcd 3.4.\n",
        if dirty { " with uncommitted changes in operator/src" } else { "" },
        bin.display()
    );
    let _ = writeln!(
        w,
        "Command: `cargo run --release -p wsgiscale-operator --example scale -- --apps {} --namespaces {} --autoscaled {} --rest-seconds {} --min-replicas {}{}{}`\n",
        args.apps,
        args.namespaces,
        args.autoscaled,
        args.rest_seconds,
        args.min_replicas,
        args.concurrency.map(|c| format!(" --concurrency {c}")).unwrap_or_default(),
        if args.perf { " --perf" } else { "" }
    );
    let _ = writeln!(
        w,
        "Machine: {} cores; `uptime` at the start: `{uptime_start}`; at the end: `{uptime_end}`.\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let _ = writeln!(
        w,
        "Each app: `image`, `app`, `replicas: {{min: {}, max: {}}}` ({} children: ConfigMap, Deployment, Service{}); {} pods stay Pending (no scheduler, no kubelet). The operator runs with leader election (Lease renewed every 2 s) and `--concurrency {}`.\n",
        args.min_replicas,
        args.min_replicas.max(1) * 2,
        if pdb { 4 } else { 3 },
        if pdb { ", PodDisruptionBudget" } else { "" },
        args.apps as i64 * i64::from(args.min_replicas),
        args.concurrency.map(|c| c.to_string()).unwrap_or_else(|| "(the operator's default)".into())
    );

    // Targets.
    let peak_mib = hwm_first_mib.max(hwm_second_mib);
    let rest_w = op_writes_per_min(&phases[REST], false);
    let rest2_w = op_writes_per_min(&phases[REST2], false);
    let verdict = |met: bool| if met { "met" } else { "missed" };
    let _ = writeln!(
        w,
        "## Against the targets\n\n| target | measured | verdict |\n|---|---:|---|"
    );
    let _ = writeln!(
        w,
        "| operator RSS < 100 MiB | peak {peak_mib:.1} MiB (VmHWM), {rss_rest_mib:.1} MiB at rest, {rss_rest2_mib:.1} MiB at rest after the restart, {rss_end_mib:.1} MiB autoscaling | {} |",
        verdict(peak_mib < 100.0)
    );
    let _ = writeln!(
        w,
        "| all {} converged within 30 s | {} | {} |",
        args.apps,
        converge_s
            .map(|s| format!("{s:.1} s (creation took {create_s:.1} s)"))
            .unwrap_or_else(|| format!("not within 900 s ({done} done)")),
        verdict(converge_s.is_some_and(|s| s < 30.0))
    );
    let _ = writeln!(
        w,
        "| reconcile p99 < 50 ms | p99 {} during convergence (p50 {}); over the whole run p99 {} | {} |",
        prom::describe_quantile(&converge.reconcile_buckets, 0.99),
        prom::describe_quantile(&converge.reconcile_buckets, 0.5),
        prom::describe_quantile(&all_buckets, 0.99),
        verdict(p99.is_some_and(|v| v < 0.05))
    );
    let _ = writeln!(
        w,
        "| 0 writes/min at rest (Leases aside) | {rest_w:.1} writes/min (Lease: {:.1}/min) | {} |",
        op_writes_per_min(&phases[REST], true),
        verdict(rest_w == 0.0)
    );
    let _ = writeln!(
        w,
        "| 0 writes/min after a restart (Leases aside) | initial sweep: {} writes in {:.1} s; then {rest2_w:.1} writes/min (Lease: {:.1}/min) | {} |",
        phases[SWEEP].audit.iter().filter(|e| e.is_write() && e.client == "wsgiscale-operator" && !e.is_lease()).count(),
        phases[SWEEP].seconds,
        op_writes_per_min(&phases[REST2], true),
        verdict(rest2_w == 0.0 && !phases[SWEEP].audit.iter().any(|e| e.is_write() && e.client == "wsgiscale-operator" && !e.is_lease()))
    );
    if !autoscale.is_null() {
        let pct = autoscale["cpu_percent_of_core"].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            w,
            "| 2 s tick for {} apps < 2% of a core | {pct:.2}% of a core ({:.1} ms CPU per tick; {:.2}% at rest without autoscaling) | {} |",
            autoscale["apps"],
            autoscale["cpu_ms_per_tick"].as_f64().unwrap_or(0.0),
            autoscale["baseline_cpu_percent_of_core"].as_f64().unwrap_or(0.0),
            verdict(pct < 2.0)
        );
        let lists = autoscale["pod_lists"].as_u64().unwrap_or(0);
        let _ = writeln!(
            w,
            "| 0 pod LISTs per tick after start-up (audit log) | {lists} pod LISTs in {:.0} s ({:.2} per tick) | {} |",
            autoscale["window_s"].as_f64().unwrap_or(0.0),
            lists as f64 / autoscale["ticks"].as_f64().unwrap_or(1.0).max(1.0),
            verdict(lists == 0)
        );
        let writes = autoscale["status_writes_per_min"].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            w,
            "| status writes at steady load < 200/min for {} apps | {writes:.1}/min (the autoscaler's patches of wsgiapps/status) | {} |",
            autoscale["apps"],
            verdict(writes < 200.0)
        );
    }

    // Phases.
    let _ = writeln!(w, "\n## Phases\n\n| phase | seconds | operator CPU s (% core) | RSS at end MiB | reconciles | operator writes (non-Lease) | Lease writes | controller-manager writes | harness writes | apiserver + etcd + kcm CPU s | harness CPU s | load avg at end |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for p in &phases {
        let count = |f: &dyn Fn(&audit::Entry) -> bool| {
            p.audit.iter().filter(|e| e.is_write() && f(e)).count()
        };
        let _ = writeln!(
            w,
            "| {} | {:.1} | {:.2} ({:.1}%) | {:.1} | {:.0} | {} | {} | {} | {} | {:.1} | {:.1} | {} |",
            p.name,
            p.seconds,
            p.operator_cpu_s,
            p.operator_cpu_s / p.seconds * 100.0,
            p.rss_end_mib,
            p.reconciles,
            count(&|e| e.client == "wsgiscale-operator" && !e.is_lease()),
            count(&|e| e.client == "wsgiscale-operator" && e.is_lease()),
            count(&|e| e.client == "kube-controller-manager"),
            count(&|e| e.client == "bench harness"),
            p.control_plane_cpu_s.values().sum::<f64>(),
            p.harness_cpu_s,
            p.load_end
        );
    }
    let _ = writeln!(
        w,
        "\nThe controller manager settled {} {settle_s:.0} s after convergence (no write for {} s). Operator start to leading: {leading_s:.1} s; after the restart {relead_s:.1} s, and its first reconcile of all {} apps done {} after the new process started. Exit statuses on SIGTERM: {exit}, {exit2}.",
        if settled { "" } else { " NOT (timeout)" },
        QUIET.as_secs(),
        args.apps,
        sweep_s.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "not within 600 s".into())
    );

    // Reconcile latency.
    let _ = writeln!(w, "\n## Reconcile latency (the operator's histogram, buckets 5 ms x 2^n)\n\n| phase | reconciles | p50 | p99 |\n|---|---:|---:|---:|");
    for p in phases
        .iter()
        .filter(|p| prom::count(&p.reconcile_buckets) > 0.0)
    {
        let _ = writeln!(
            w,
            "| {} | {:.0} | {} | {} |",
            p.name,
            prom::count(&p.reconcile_buckets),
            prom::describe_quantile(&p.reconcile_buckets, 0.5),
            prom::describe_quantile(&p.reconcile_buckets, 0.99)
        );
    }
    let _ = writeln!(w, "\nThe operator's requests during convergence, as the API server timed them (audit log, received to response complete; reads of single objects and pod lists are audited, list/watch are not):\n\n| verb | resource | requests | p50 ms | p99 ms |\n|---|---|---:|---:|---:|");
    for (verb, res, n, p50, p99) in audit::operator_latency(&converge.audit) {
        let _ = writeln!(w, "| {verb} | {res} | {n} | {p50:.1} | {p99:.1} |");
    }

    // Writes by client per phase.
    let _ = writeln!(w, "\n## Writes by client (audit log)\n");
    for p in &phases {
        let table = audit::writes_by_client(&p.audit);
        if table.is_empty() {
            continue;
        }
        let _ = writeln!(
            w,
            "### {} ({:.0} s)\n\n| client | resource | verb | field manager / controller | writes | per minute |\n|---|---|---|---|---:|---:|",
            p.name, p.seconds
        );
        let mut rows: Vec<_> = table.into_iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1));
        for ((client, res, verb, who), n) in rows.iter().take(25) {
            let _ = writeln!(
                w,
                "| {client} | {res} | {verb} | {who} | {n} | {:.1} |",
                *n as f64 / p.seconds * 60.0
            );
        }
        if rows.len() > 25 {
            let _ = writeln!(
                w,
                "| ... {} more rows in the JSON | | | | | |",
                rows.len() - 25
            );
        }
        if matches!(p.name, n if n == PHASES[REST] || n == PHASES[REST2] || n == PHASES[AS_STEADY])
        {
            let sample = audit::sample_writes(&p.audit, "wsgiscale-operator", 8);
            if !sample.is_empty() {
                let _ = writeln!(
                    w,
                    "\nThe operator's first non-Lease writes in this window: {}",
                    sample
                        .iter()
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let _ = writeln!(w, "\n`apiserver_request_total` increase over the same window, all clients, write verbs:\n\n| verb | resource | requests |\n|---|---|---:|");
            for ((verb, res), n) in &p.api_writes {
                let _ = writeln!(w, "| {verb} | {res} | {n:.0} |");
            }
        }
        let _ = writeln!(w);
    }

    // Object changes.
    let _ = writeln!(w, "## What changed between two successive versions of an object (watch, diffed)\n\nPer phase, kind and the field manager that wrote last (managedFields): the fields whose values changed, with the first example.\n");
    for (i, name) in PHASES.iter().enumerate() {
        let rows: Vec<_> = changes.counts.iter().filter(|(k, _)| k.0 == i).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(w, "### {name}\n\n| kind | written by | versions | field | changes | example (object: before -> after) |\n|---|---|---:|---|---:|---|");
        let mut rows = rows;
        rows.sort_by_key(|r| std::cmp::Reverse(*r.1));
        for (k, n) in rows.iter().take(30) {
            let versions = changes
                .versions
                .get(&(k.0, k.1.clone(), k.2.clone()))
                .copied()
                .unwrap_or(0);
            let ex = changes
                .examples
                .get(*k)
                .map(|(o, a, b)| format!("{o}: `{a}` -> `{b}`"))
                .unwrap_or_default();
            let _ = writeln!(
                w,
                "| {} | {} | {versions} | {} | {n} | {} |",
                k.1,
                k.2,
                k.3,
                ex.replace('|', "\\|")
            );
        }
        let _ = writeln!(w);
    }

    if !autoscale.is_null() {
        let a = &autoscale;
        let _ = writeln!(w, "## Autoscaler\n");
        let _ = writeln!(
            w,
            "{} apps with `autoscaling.enabled: true, tickSeconds: 2`, {} stand-in pods (each a `/load` server on 127.0.0.N:9191 returning a `wsgiscale_core::load::LoadReport`: 1 of 2 workers busy, no queue). Ready with the autoscaler's status written {} after the patch. Over {:.0} s ({:.0} ticks of 2 s expected; {:.1} counted from the scrapes, which the per-tick figures use): operator CPU {:.2} s = **{:.2}% of a core**, {:.1} ms per tick ({:.1} ms per tick above the operator's CPU at rest after the restart, {:.2}% of a core). Scrapes by result: {}; scale decisions: {}.",
            a["apps"], a["pods"],
            as_setup_s.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "not within 300 s".into()),
            a["window_s"].as_f64().unwrap_or(0.0), a["ticks"].as_f64().unwrap_or(0.0), a["ticks_from_scrapes"].as_f64().unwrap_or(0.0),
            a["operator_cpu_s"].as_f64().unwrap_or(0.0), a["cpu_percent_of_core"].as_f64().unwrap_or(0.0),
            a["cpu_ms_per_tick"].as_f64().unwrap_or(0.0), a["cpu_ms_per_tick_above_rest"].as_f64().unwrap_or(0.0),
            a["baseline_cpu_percent_of_core"].as_f64().unwrap_or(0.0),
            a["scrapes"], a["scale_decisions"]
        );
        let _ = writeln!(
            w,
            "\nScrape latency, seen from the stand-ins: the scrapes of one tick arrive in a burst of {} (median) whose first-to-last span is {:.0} ms median, {:.0} ms max, which bounds the time one tick takes over all apps (scrapes, 8 apps at once); a stand-in answers in {:.0} µs p50, {:.0} µs p99 (accept to response written).",
            a["burst_size_median"], a["burst_span_ms_median"].as_f64().unwrap_or(0.0), a["burst_span_ms_max"].as_f64().unwrap_or(0.0),
            a["standin_serve_us_p50"].as_f64().unwrap_or(0.0), a["standin_serve_us_p99"].as_f64().unwrap_or(0.0)
        );
        let _ = writeln!(w, "\nThe operator's reads in that window (audit: single-object gets and pod lists):\n\n| verb | resource | requests | per minute |\n|---|---|---:|---:|");
        let st = &phases[phases.len() - 1];
        for (verb, res, n, _, _) in audit::operator_latency(&st.audit) {
            let _ = writeln!(
                w,
                "| {verb} | {res} | {n} | {:.0} |",
                n as f64 / st.seconds * 60.0
            );
        }
    }
    for (name, text) in &profiles {
        let _ = writeln!(w, "\n## Profile of the operator: {name} (`perf record -F 199 --call-graph dwarf -p PID`)\n\n```text\n{text}\n```");
    }
    let _ = writeln!(
        w,
        "\nLogs, audit log and kubeconfigs of the run: {}",
        work.display()
    );

    let json = json!({
        "stamp": stamp,
        "commit": commit,
        "dirty_operator_src": dirty,
        "args": {"apps": args.apps, "namespaces": args.namespaces, "autoscaled": args.autoscaled, "rest_seconds": args.rest_seconds, "min_replicas": args.min_replicas, "concurrency": args.concurrency},
        "uptime_start": uptime_start,
        "uptime_end": uptime_end,
        "create_s": create_s,
        "converge_s": converge_s,
        "settle_s": settle_s,
        "settled": settled,
        "leading_s": leading_s,
        "relead_s": relead_s,
        "sweep_s": sweep_s,
        "rss_mib": {"idle_before_apps": rss_idle_mib, "peak_first": hwm_first_mib, "rest": rss_rest_mib, "peak_second": hwm_second_mib, "rest_after_restart": rss_rest2_mib, "end": rss_end_mib},
        "reconcile_converge": {"p50_s": p50, "p99_s": p99, "buckets": converge.reconcile_buckets},
        "autoscale": autoscale,
        "phases": phases.iter().map(|p| json!({
            "name": p.name,
            "seconds": p.seconds,
            "operator_cpu_s": p.operator_cpu_s,
            "harness_cpu_s": p.harness_cpu_s,
            "control_plane_cpu_s": p.control_plane_cpu_s,
            "rss_end_mib": p.rss_end_mib,
            "hwm_mib": p.hwm_mib,
            "reconciles": p.reconciles,
            "reconcile_buckets": p.reconcile_buckets,
            "operator_writes_metric": p.operator_writes,
            "operator_errors": p.operator_errors,
            "scrapes": p.scrapes,
            "load_end": p.load_end,
            "writes_by_client": audit::writes_by_client(&p.audit).into_iter().map(|((c, r, v, m), n)| json!({"client": c, "resource": r, "verb": v, "manager": m, "n": n})).collect::<Vec<_>>(),
            "operator_requests": audit::operator_latency(&p.audit).into_iter().map(|(v, r, n, p50, p99)| json!({"verb": v, "resource": r, "n": n, "p50_ms": p50, "p99_ms": p99})).collect::<Vec<_>>(),
            "apiserver_request_total_writes": p.api_writes.iter().map(|((v, r), n)| json!({"verb": v, "resource": r, "n": n})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "changes": changes.counts.iter().map(|(k, n)| {
            let ex = changes.examples.get(k);
            json!({"phase": PHASES[k.0], "kind": k.1, "manager": k.2, "path": k.3, "n": n, "example": ex.map(|(o, a, b)| json!({"object": o, "before": a, "after": b}))})
        }).collect::<Vec<_>>(),
        "profiles": profiles,
    });
    drop(changes);

    println!("{md}");
    std::fs::create_dir_all(&args.out)?;
    let base = args.out.join(format!("operator-scale-{stamp}"));
    std::fs::write(base.with_extension("md"), &md)?;
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    eprintln!("scale: wrote {}.{{md,json}}", base.display());
    Ok(())
}
