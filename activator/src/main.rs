//! `wsgiscale-activator`: wires the activator's configuration, logging, the Kubernetes client
//! and SIGTERM together; everything else is in the library.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use wsgiscale_activator::app::Backlog;
use wsgiscale_activator::{Activator, Config};
use wsgiscale_core::config::LogFormat;

/// The wsgiscale activator: holds requests for apps at zero pods or short of spare capacity.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The address every app port listens on.
    #[arg(long, env = "WSGISCALE_ACTIVATOR_LISTEN_IP", default_value = "0.0.0.0")]
    listen_ip: IpAddr,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "WSGISCALE_ACTIVATOR_ADMIN_BIND",
        default_value = "0.0.0.0:9090"
    )]
    admin_bind: SocketAddr,
    /// Namespace of the route table's ConfigMap. [default: this pod's namespace]
    #[arg(long, env = "WSGISCALE_ACTIVATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Name of the route table's ConfigMap (the operator writes it).
    #[arg(
        long,
        env = "WSGISCALE_ACTIVATOR_ROUTES",
        default_value = "wsgiscale-activator-routes"
    )]
    routes: String,
    /// The operator's HTTP base URL, where demand is pushed (e.g.
    /// http://wsgiscale-operator.wsgiscale-system.svc:8080); none: no pushes.
    #[arg(long, env = "WSGISCALE_ACTIVATOR_OPERATOR_URL")]
    operator_url: Option<String>,
    /// This replica's name in demand reports. [default: $HOSTNAME]
    #[arg(long, env = "WSGISCALE_ACTIVATOR_POD_NAME")]
    pod_name: Option<String>,
    /// Seconds a drain may take after SIGTERM (keep it below terminationGracePeriodSeconds).
    #[arg(long, env = "WSGISCALE_ACTIVATOR_DRAIN_TIMEOUT_SECONDS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=3600))]
    drain_timeout_seconds: u64,
    /// Namespaces of the apps whose pods it may forward to, comma-separated (one watch of
    /// EndpointSlices each; for an activator granted Roles in those namespaces only). Empty:
    /// all namespaces (a cluster-wide watch).
    #[arg(
        long,
        env = "WSGISCALE_ACTIVATOR_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    watch_namespaces: Vec<String>,
    /// Seconds it still takes connections after SIGTERM (unready) while the endpoints that
    /// lead to it catch up; the drain proper follows. Keep the delay plus the drain below
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "WSGISCALE_ACTIVATOR_DRAIN_DELAY_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=300))]
    drain_delay_seconds: u64,
    /// Requests per worker slot of a pod (MAX workers x threads, from its /load) that may
    /// wait in the pod's own queue beyond what it runs at once, so that a worker that finishes
    /// finds the next one there instead of idling for the round trip through the activator.
    /// `auto`: as many as cover that round trip, pod by pod (its /load's service time against
    /// the measured round trip to it; 1 for requests slower than the hop, at most 8). A number
    /// from 0 to 16 fixes it: with 1, a pod of 4 slots gets up to 8 requests; 0 never gives a
    /// pod more than it runs (the strictest first come, first served across pods, at a cost in
    /// throughput).
    #[arg(
        long,
        env = "WSGISCALE_ACTIVATOR_BACKLOG_PER_SLOT",
        default_value = "auto"
    )]
    backlog_per_slot: Backlog,
    /// Open client connections, over every app, past which a new one gets a 503 and is
    /// closed: each costs memory whether or not it sends a request (about 18 KiB with a held
    /// request, measured by `make bench-activator`; 10,000 of them about 180 MiB).
    #[arg(long, env = "WSGISCALE_ACTIVATOR_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Log format.
    #[arg(long, env = "WSGISCALE_ACTIVATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    /// Log filter in tracing's EnvFilter syntax.
    #[arg(long, env = "WSGISCALE_ACTIVATOR_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn namespace_of_pod() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("invalid --log-level {:?}", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(wsgiscale_core::colour::stderr_colour());
    match args.log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    let client = kube::Client::try_default()
        .await
        .context("a Kubernetes client")?;
    let namespace = args
        .namespace
        .or_else(namespace_of_pod)
        .unwrap_or_else(|| client.default_namespace().to_string());
    let pod_name = args
        .pod_name
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "wsgiscale-activator".into());
    let activator = Activator::new(Config {
        listen_ip: args.listen_ip,
        admin_bind: args.admin_bind,
        routes_namespace: namespace,
        routes_configmap: args.routes,
        operator_url: args.operator_url,
        pod_name,
        drain_timeout: Duration::from_secs(args.drain_timeout_seconds),
        drain_delay: Duration::from_secs(args.drain_delay_seconds),
        backlog_per_slot: args.backlog_per_slot,
        max_connections: args.max_connections,
        namespaces: args
            .watch_namespaces
            .into_iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect(),
    });
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            shutdown.cancel();
        });
    }
    activator.run(client, shutdown).await
}
