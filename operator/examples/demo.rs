//! `make demo`: wsgiscale on a laptop with no cluster. Starts the envtest control plane, the
//! stand-in node (pods as processes, each with its own address 198.18.X.N and a CPU limit),
//! kube-proxy and metrics-server, the operator, and the demo app (examples/apps/demo.py) as a
//! WsgiApp; then sends a load that rises and falls (requests of 50 ms of waiting, through the
//! Service) until Ctrl-C, printing every 5 s the rate, the pods and the workers, so that pods
//! and workers can be seen following the load. It prints the `kubectl` commands to watch it.
//!
//! ```text
//! make demo      # or: cargo run --release -p wsgiscale-operator --example demo
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use clap::Parser;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use wsgiscale_core::trace::{Step, Trace};
use wsgiscale_envtest::load::{self, Progress};
use wsgiscale_envtest::node::plan::Image;

#[path = "common/cluster.rs"]
mod cluster;
use cluster::{pick_bin, repo, Cluster};

/// wsgiscale on a stand-in cluster, under a load that rises and falls.
#[derive(Debug, Parser)]
struct Args {
    /// Highest load, requests per second.
    #[arg(long, default_value_t = 120.0)]
    peak: f64,
    /// Seconds from no load to the peak (and back).
    #[arg(long, default_value_t = 90.0)]
    ramp: f64,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    seconds: Option<f64>,
    /// The server binary. [default: target/release/wsgiscale]
    #[arg(long, env = "WSGISCALE_BIN")]
    server_bin: Option<PathBuf>,
    /// The operator binary. [default: target/release/wsgiscale-operator]
    #[arg(long, env = "OPERATOR_BIN")]
    operator_bin: Option<PathBuf>,
}

const NS: &str = "demo";

/// One rise and fall: 2 req/s to the peak and back, in steps of 5 s.
fn wave(peak: f64, ramp: f64) -> Trace {
    let n = (ramp / 5.0).ceil().max(1.0) as usize;
    let mut steps = Vec::new();
    for i in 0..=2 * n {
        let up = if i <= n { i } else { 2 * n - i };
        steps.push(Step {
            t: i as f64 * 5.0,
            rate: (2.0 + (peak - 2.0) * up as f64 / n as f64).max(0.0),
            service_ms: 50.0,
        });
    }
    steps.push(Step {
        t: (2 * n + 1) as f64 * 5.0,
        rate: 2.0,
        service_ms: 50.0,
    });
    Trace { steps }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.peak > 0.0 && args.ramp > 0.0,
        "--peak and --ramp must be positive"
    );
    let server_bin = pick_bin(&args.server_bin, "wsgiscale", "--server-bin")?;
    let operator_bin = pick_bin(&args.operator_bin, "wsgiscale-operator", "--operator-bin")?;
    let log_dir = repo().join(".cache/demo");
    std::fs::create_dir_all(&log_dir)?;
    eprintln!(
        "demo: starting the control plane, the stand-in node and the operator (about 20 s)..."
    );
    let image = Image {
        path: vec![server_bin
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()],
        files: vec![("/app".into(), repo().join("examples/apps"))],
        workdir: Some("/app".into()),
        ..Image::default()
    };
    let cluster = Cluster::start(
        "demo-node",
        BTreeMap::from([("wsgiscale-demo:1".to_string(), image)]),
        Duration::from_secs(3),
        &operator_bin,
        &log_dir.join("operator.log"),
    )
    .await?;
    let client = cluster.client.clone();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await?;
    cluster.standin.serve(NS);
    let apps: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        NS,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::core::GroupVersionKind::gvk("wsgiscale.dev", "v1alpha1", "WsgiApp"),
            "wsgiapps",
        ),
    );
    let app = json!({
        "apiVersion": "wsgiscale.dev/v1alpha1", "kind": "WsgiApp",
        "metadata": {"name": "demo"},
        "spec": {
            "image": "wsgiscale-demo:1", "app": "demo:application", "chdir": "/app",
            "workers": {"min": 1, "max": 4},
            "replicas": {"min": 1, "max": 4},
            "autoscaling": {"enabled": true, "stableWindowSeconds": 30},
            "service": {"port": 80},
            "resources": {"requests": {"cpu": "250m", "memory": "128Mi"},
                          "limits": {"cpu": "250m", "memory": "256Mi"}},
        },
    });
    apps.patch(
        "demo",
        &PatchParams::apply("wsgiscale-demo"),
        &Patch::Apply(&app),
    )
    .await
    .context("create the WsgiApp")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let target = loop {
        ensure!(
            Instant::now() < deadline,
            "the demo app has no ready pod after 120 s"
        );
        if let Some(addr) = cluster.standin.proxy.address(NS, "demo") {
            if !cluster.standin.proxy.endpoints(NS, "demo").is_empty() {
                break SocketAddr::from((addr, 80));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let pod_ip = cluster.standin.node.pods().into_iter().find_map(|p| p.ip);
    let kc = cluster.kubeconfig().display().to_string();
    println!(
        "\nThe demo runs. In another terminal:\n\n  export KUBECONFIG={kc}\n  kubectl -n {NS} get wsgi -w            # pods and workers, busy and total, as the operator sees them\n  kubectl -n {NS} get pods -o wide -w    # the pods on the stand-in node\n  kubectl -n {NS} get events -w          # why it scaled\n  curl http://{target}/work?ms=50      # the app, through its Service\n{}\nThe operator's log: {}\nCtrl-C stops everything.\n",
        pod_ip.map(|ip| format!("  curl http://{ip}:9191/load             # one pod's admin port: its load report\n")).unwrap_or_default(),
        log_dir.join("operator.log").display()
    );

    let trace = wave(args.peak, args.ramp);
    let progress = Arc::new(Progress::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let s2 = stop.clone();
    let p2 = progress.clone();
    let load_task = tokio::spawn(async move {
        let mut round = 0u64;
        while !s2.is_cancelled() {
            let arrivals = trace.arrivals(round);
            tokio::select! {
                _ = s2.cancelled() => return,
                _ = load::run(target, &arrivals, "/work?ms=50", Duration::from_secs(30), p2.clone()) => {}
            }
            round += 1;
        }
    });
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut last = (0u64, Instant::now());
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {}
        }
        if args
            .seconds
            .is_some_and(|s| started.elapsed().as_secs_f64() >= s)
        {
            break;
        }
        let done = progress.done.load(Ordering::Relaxed);
        let rate = (done - last.0) as f64 / last.1.elapsed().as_secs_f64().max(1e-3);
        last = (done, Instant::now());
        let pods = cluster.standin.node.pods();
        let ready = pods.iter().filter(|p| p.ready).count();
        let workers: usize = pods.iter().map(|p| p.processes.saturating_sub(2)).sum();
        println!(
            "{:>5.0} s  {:>5.0} req/s served   pods ready {ready}/{}   workers {workers}",
            started.elapsed().as_secs_f64(),
            rate,
            pods.len()
        );
    }
    eprintln!("demo: stopping");
    stop.cancel();
    let _ = load_task.await;
    cluster.stop().await;
    Ok(())
}
