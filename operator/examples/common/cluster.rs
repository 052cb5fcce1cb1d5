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

/// The operator, as its own process (SIGTERM when dropped).
pub struct Operator(Child);

impl Operator {
    /// Runs `bin run` against the cluster of `kubeconfig`, its log in `log`.
    pub fn start(bin: &Path, kubeconfig: &Path, log: &Path) -> anyhow::Result<Operator> {
        let out = std::fs::File::create(log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .args([
                "--http-bind",
                "127.0.0.1:0",
                "--leader-election",
                "false",
                "--log-format",
                "plain",
            ])
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("WSGISCALE_OPERATOR_") {
                cmd.env_remove(k);
            }
        }
        Ok(Operator(
            cmd.spawn()
                .with_context(|| format!("start {}", bin.display()))?,
        ))
    }
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
        let operator = Some(Operator::start(
            operator_bin,
            control_plane.kubeconfig(),
            operator_log,
        )?);
        Ok(Cluster {
            operator,
            standin,
            client,
            control_plane,
        })
    }

    /// Stops the operator and the stand-ins (the control plane stops when dropped).
    pub async fn stop(mut self) {
        self.operator.take();
        match Arc::try_unwrap(self.standin) {
            Ok(s) => s.stop().await,
            Err(s) => s.node.stop().await,
        }
    }
}
