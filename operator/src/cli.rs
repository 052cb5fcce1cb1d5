//! The command line: `wsgiscale-operator run` and `wsgiscale-operator crd`. Every flag has a
//! `WSGISCALE_OPERATOR_*` environment twin (the Helm chart sets those).

use std::net::SocketAddr;

use clap::{ArgAction, Args, Parser, Subcommand};

/// The wsgiscale Kubernetes operator.
#[derive(Debug, Parser)]
#[command(name = "wsgiscale-operator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: watch WsgiApps and reconcile them.
    Run(RunArgs),
    /// Print the WsgiApp CustomResourceDefinition as YAML.
    Crd(CrdArgs),
    /// Replay a load trace through a model of the pods and the pod autoscaler.
    Simulate(crate::simulate::SimulateArgs),
}

/// Log line formats: the server's own type.
pub use wsgiscale_core::config::LogFormat;

/// Flags of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Namespaces to watch, comma-separated; empty: all namespaces.
    #[arg(
        long = "namespace",
        env = "WSGISCALE_OPERATOR_NAMESPACES",
        value_delimiter = ',',
        value_name = "NS"
    )]
    pub namespaces: Vec<String>,

    /// Address of the /healthz, /readyz and /metrics server.
    #[arg(
        long,
        env = "WSGISCALE_OPERATOR_HTTP_BIND",
        default_value = "0.0.0.0:8080",
        value_name = "ADDR"
    )]
    pub http_bind: SocketAddr,

    /// Elect one active replica through a Lease; turn off only when running a single replica.
    #[arg(long, env = "WSGISCALE_OPERATOR_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set, value_name = "BOOL")]
    pub leader_election: bool,

    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "WSGISCALE_OPERATOR_LEASE_NAME",
        default_value = "wsgiscale-operator",
        value_name = "NAME"
    )]
    pub lease_name: String,

    /// Namespace of the Lease. [default: the namespace of the kubeconfig context, or the pod's]
    #[arg(long, env = "WSGISCALE_OPERATOR_LEASE_NAMESPACE", value_name = "NS")]
    pub lease_namespace: Option<String>,

    /// Seconds a lease is valid without renewal; a standby takes over after that.
    #[arg(long, env = "WSGISCALE_OPERATOR_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300), value_name = "SECONDS")]
    pub lease_duration_seconds: u64,

    /// This replica's identity in the Lease and in events. [default: $HOSTNAME, the pod name]
    #[arg(long, env = "WSGISCALE_OPERATOR_IDENTITY", value_name = "NAME")]
    pub identity: Option<String>,

    /// Seconds between reconciles of an unchanged WsgiApp (repairs drift nobody reported).
    #[arg(long, env = "WSGISCALE_OPERATOR_RESYNC_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=86400), value_name = "SECONDS")]
    pub resync_seconds: u64,

    /// WsgiApps reconciled at once (one app is never reconciled twice at once).
    #[arg(long, env = "WSGISCALE_OPERATOR_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64), value_name = "N")]
    pub concurrency: u16,

    /// The activator's headless Service in the operator's namespace (its EndpointSlices list
    /// the ready activators). Set: autoscaled apps without TLS are routed through it at zero
    /// pods and below their burst capacity, and may scale to zero. Unset: no activator.
    #[arg(long, env = "WSGISCALE_ACTIVATOR_SERVICE", value_name = "NAME")]
    pub activator_service: Option<String>,

    /// The ConfigMap (in the operator's namespace) the operator writes the activator's route
    /// table to.
    #[arg(
        long,
        env = "WSGISCALE_ACTIVATOR_ROUTES",
        default_value = "wsgiscale-activator-routes",
        value_name = "NAME"
    )]
    pub activator_routes: String,

    /// The namespace of the activator's Service and route table. [default: the operator's
    /// own namespace]
    #[arg(long, env = "WSGISCALE_ACTIVATOR_NAMESPACE", value_name = "NS")]
    pub activator_namespace: Option<String>,

    /// Log format.
    #[arg(long, env = "WSGISCALE_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `wsgiscale_operator=debug,kube=info`.
    /// kube-client's line per failed request is off unless the filter names `kube_client`: a
    /// failing dependency is logged once when it fails and once when it recovers.
    #[arg(
        long,
        env = "WSGISCALE_OPERATOR_LOG_LEVEL",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub log_level: String,
}

/// Flags of `crd`.
#[derive(Debug, Clone, Args)]
pub struct CrdArgs {
    /// Print the Helm chart's template (charts/wsgiscale/templates/crds.yaml) instead.
    #[arg(long)]
    pub helm_template: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_flags() {
        let cli = Cli::try_parse_from(["wsgiscale-operator", "run"]).expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        assert!(args.namespaces.is_empty());
        assert!(args.leader_election);
        assert_eq!(args.http_bind, "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(args.lease_duration_seconds, 15);

        let cli = Cli::try_parse_from([
            "wsgiscale-operator",
            "run",
            "--namespace",
            "a,b",
            "--leader-election",
            "false",
            "--log-format",
            "json",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        assert_eq!(args.namespaces, vec!["a".to_string(), "b".to_string()]);
        assert!(!args.leader_election);
        assert_eq!(args.log_format, LogFormat::Json);

        assert!(Cli::try_parse_from([
            "wsgiscale-operator",
            "run",
            "--lease-duration-seconds",
            "1"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["wsgiscale-operator", "run", "--http-bind", "nope"]).is_err());
    }
}
