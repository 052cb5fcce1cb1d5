//! A one-node cluster on this machine for the examples that need running pods (`showdown`,
//! `demo`): the envtest control plane, the stand-in node, kube-proxy and metrics-server of
//! `wsgiscale-envtest`, the WsgiApp CRD and the operator binary as its own process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use wsgiscale_envtest::node::plan::Image;
use wsgiscale_envtest::node::NodeConfig;
use wsgiscale_envtest::standin::{StandIn, StandInConfig};
use wsgiscale_envtest::{ControlPlane, Options};

/// The repository's root.
pub fn repo() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::canonicalize(&root).unwrap_or(root)
}

/// A binary: `given` (made absolute: pods run in directories of their own), else
/// target/release/NAME, which must exist.
pub fn pick_bin(given: &Option<PathBuf>, name: &str, flag: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return std::fs::canonicalize(p).with_context(|| p.display().to_string());
    }
    let release = repo().join("target/release").join(name);
    ensure!(
        release.exists(),
        "{} is missing: run `cargo build --release -p wsgiscale-sidecar -p wsgiscale-operator` (or give {flag})",
        release.display()
    );
    Ok(release)
}

/// Removes from `cmd`'s environment every variable of this process whose name starts with one
/// of `prefixes`: a setting of the caller's shell must not change the process a run starts.
pub fn scrub_env(cmd: &mut Command, prefixes: &[&str]) {
    for (k, _) in std::env::vars_os() {
        if prefixes.iter().any(|p| k.to_string_lossy().starts_with(p)) {
            cmd.env_remove(k);
        }
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The operator, as its own process (SIGTERM when dropped).
pub struct Operator(Child);

impl Operator {
    /// Runs `bin run` against the cluster of `kubeconfig` with `extra` flags, its log in
    /// `log`.
    pub fn start(
        bin: &Path,
        kubeconfig: &Path,
        log: &Path,
        extra: &[String],
    ) -> anyhow::Result<Operator> {
        let out = std::fs::File::create(log)?;
        let mut cmd = Command::new(bin);
        let bind = if extra.iter().any(|a| a == "--http-bind") {
            Vec::new()
        } else {
            vec!["--http-bind".to_string(), "127.0.0.1:0".to_string()]
        };
        cmd.arg("run")
            .args(bind)
            .args(["--leader-election", "false", "--log-format", "plain"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        scrub_env(&mut cmd, &["WSGISCALE_OPERATOR_", "WSGISCALE_ACTIVATOR_"]);
        Ok(Operator(
            cmd.spawn()
                .with_context(|| format!("start {}", bin.display()))?,
        ))
    }

    /// Runs `wsgiscale-activator` (`bin`) against the cluster of `kubeconfig`, listening for
    /// the apps on `ip` (its "pod" address), its route table in `namespace`, pushing demand
    /// to the operator on `operator_port`; its log in `log`.
    pub fn start_activator(
        bin: &Path,
        kubeconfig: &Path,
        log: &Path,
        ip: std::net::Ipv4Addr,
        namespace: &str,
        operator_port: u16,
    ) -> anyhow::Result<Operator> {
        let out = std::fs::File::create(log)?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "--listen-ip",
            &ip.to_string(),
            "--admin-bind",
            &format!("127.0.0.1:{}", free_port()?),
            "--namespace",
            namespace,
            "--operator-url",
            &format!("http://127.0.0.1:{operator_port}"),
            "--pod-name",
            "stand-in-activator",
            "--log-format",
            "plain",
        ])
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
        scrub_env(&mut cmd, &["WSGISCALE_ACTIVATOR_"]);
        Ok(Operator(
            cmd.spawn()
                .with_context(|| format!("start {}", bin.display()))?,
        ))
    }
}

/// The namespace of the activator's Service and route table on the stand-in cluster.
pub const ACTIVATOR_NAMESPACE: &str = "wsgiscale-system";

/// The activator's headless Service there, whose EndpointSlice lists the node's address (the
/// activator runs on the node, as a host-network pod would).
pub async fn publish_activator(client: &Client, ip: std::net::Ipv4Addr) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{Namespace, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let pp = PatchParams::apply("wsgiscale-examples").force();
    Api::<Namespace>::all(client.clone())
        .patch(
            ACTIVATOR_NAMESPACE,
            &pp,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ACTIVATOR_NAMESPACE},
            })),
        )
        .await?;
    Api::<Service>::namespaced(client.clone(), ACTIVATOR_NAMESPACE)
        .patch(
            "wsgiscale-activator",
            &pp,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "wsgiscale-activator"},
                "spec": {"clusterIP": "None", "ports": [{"name": "admin", "port": 9090}]},
            })),
        )
        .await?;
    Api::<EndpointSlice>::namespaced(client.clone(), ACTIVATOR_NAMESPACE)
        .patch(
            "wsgiscale-activator-1",
            &pp,
            &Patch::Apply(serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "wsgiscale-activator-1",
                             "labels": {"kubernetes.io/service-name": "wsgiscale-activator"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
                "ports": [{"name": "admin", "port": 9090, "protocol": "TCP"}],
            })),
        )
        .await?;
    Ok(())
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Applies the CRD the operator binary prints (so the binary and the CRD match) and waits
/// until it is Established.
pub async fn install_crd(client: &Client, operator_bin: &Path) -> anyhow::Result<()> {
    let out = Command::new(operator_bin).arg("crd").output()?;
    ensure!(
        out.status.success(),
        "{} crd: {}",
        operator_bin.display(),
        out.status
    );
    let crd: CustomResourceDefinition = serde_saphyr::from_slice(&out.stdout)?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply("wsgiscale-examples").force(),
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
    bail!("the CRD was not established")
}

/// Everything running: drop order stops the operator, then the stand-ins (with `stop`), then
/// the control plane.
pub struct Cluster {
    /// The activator process, when the cluster has one.
    pub activator: Option<Operator>,
    /// The operator process.
    pub operator: Option<Operator>,
    /// Node, kube-proxy, metrics-server.
    pub standin: Arc<StandIn>,
    /// An admin client.
    pub client: Client,
    /// etcd, kube-apiserver, kube-controller-manager.
    pub control_plane: ControlPlane,
}

impl Cluster {
    /// The admin kubeconfig (for kubectl).
    pub fn kubeconfig(&self) -> &Path {
        self.control_plane.kubeconfig()
    }
}

impl Cluster {
    /// Starts it all: `images` on a node named `node` whose pods start after `start_delay`,
    /// the operator's log in `operator_log`.
    pub async fn start(
        node: &str,
        images: BTreeMap<String, Image>,
        start_delay: Duration,
        operator_bin: &Path,
        operator_log: &Path,
    ) -> anyhow::Result<Cluster> {
        Self::start_with(node, images, start_delay, operator_bin, operator_log, None).await
    }

    /// As [`Cluster::start`], with the activator (`activator`: its binary and its log) when
    /// given: the operator routes autoscaled apps through it.
    pub async fn start_with(
        node: &str,
        images: BTreeMap<String, Image>,
        start_delay: Duration,
        operator_bin: &Path,
        operator_log: &Path,
        activator: Option<(&Path, &Path)>,
    ) -> anyhow::Result<Cluster> {
        wsgiscale_envtest::node::check_available()
            .map_err(|e| anyhow::anyhow!("the stand-in node cannot run here: {e}"))?;
        let assets =
            wsgiscale_envtest::assets().context("no envtest assets (set KUBEBUILDER_ASSETS)")?;
        let control_plane =
            tokio::task::spawn_blocking(move || ControlPlane::start(&assets, &Options::default()))
                .await?
                .map_err(|e| anyhow::anyhow!("control plane: {e}"))?;
        let client = Client::try_from(
            kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(control_plane.kubeconfig())?,
                &kube::config::KubeConfigOptions::default(),
            )
            .await?,
        )?;
        let standin = Arc::new(
            StandIn::start(
                client.clone(),
                StandInConfig {
                    node: NodeConfig {
                        name: node.into(),
                        start_delay,
                        images,
                        ..NodeConfig::default()
                    },
                    ..StandInConfig::default()
                },
            )
            .await?,
        );
        install_crd(&client, operator_bin).await?;
        let (extra, activator) = match activator {
            Some((bin, log)) => {
                let port = free_port()?;
                let ip = standin.node.address();
                publish_activator(&client, ip).await?;
                let a = Operator::start_activator(
                    bin,
                    control_plane.kubeconfig(),
                    log,
                    ip,
                    ACTIVATOR_NAMESPACE,
                    port,
                )?;
                let extra = vec![
                    "--http-bind".to_string(),
                    format!("127.0.0.1:{port}"),
                    "--activator-service".to_string(),
                    "wsgiscale-activator".to_string(),
                    "--activator-namespace".to_string(),
                    ACTIVATOR_NAMESPACE.to_string(),
                ];
                (extra, Some(a))
            }
            None => (Vec::new(), None),
        };
        let operator = Some(Operator::start(
            operator_bin,
            control_plane.kubeconfig(),
            operator_log,
            &extra,
        )?);
        Ok(Cluster {
            activator,
            operator,
            standin,
            client,
            control_plane,
        })
    }

    /// Stops the operator and the stand-ins (the control plane stops when dropped).
    pub async fn stop(mut self) {
        self.activator.take();
        self.operator.take();
        match Arc::try_unwrap(self.standin) {
            Ok(s) => s.stop().await,
            Err(s) => s.node.stop().await,
        }
    }
}
