//! A real Kubernetes control plane for the operator's tests, following the ecosystem's
//! envtest convention: `KUBEBUILDER_ASSETS` names a folder holding `etcd`, `kube-apiserver`
//! and `kube-controller-manager` (`setup-envtest use -p path` makes one on a laptop; here it
//! defaults to `../shared/envtest` beside the repository when that folder exists).
//!
//! [`shared`] starts one control plane per test binary, on the first call, and hands every
//! test of that binary the same [`Cluster`]: its own certificates, free loopback ports, data
//! directory and process group. A small guardian process holds the read end of a pipe whose
//! write end only this test process has; when the test binary ends in any way (success, a
//! panic, a signal), the pipe closes and the guardian stops the whole process group and
//! removes the data directory, so nothing is left behind.
//!
//! With `USE_EXISTING_CLUSTER=true` (controller-runtime's name for it) the tests run against
//! the cluster of `KUBECONFIG` (kind, or a real one) instead. A stray `KUBECONFIG` alone never
//! sends test namespaces to a production cluster. Without assets and without that opt-in,
//! [`shared`] returns `None` after printing one line that says why, and the test skips.
//!
//! [`TestNamespace`] gives each test a namespace that is deleted when the guard drops, also
//! when the test panics.

pub mod bound;
pub mod cgroup;
pub mod fdlimit;
pub mod load;
pub mod metrics_server;
pub mod netns;
pub mod node;
pub mod proxy;
pub mod report;
pub mod standin;

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tracing::instrument::WithSubscriber as _;

/// How long the API server may take to answer `/readyz` with `ok` (5-15 s is usual on 2 cores).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The common name of the API server's aggregation-layer client certificate.
const FRONT_PROXY_CN: &str = "front-proxy-client";

/// Why a control plane could not be started.
#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error(format!("{what}: {e}"))
}

/// Where the tests run.
pub enum Cluster {
    /// A control plane this process started from the envtest assets.
    Envtest(ControlPlane),
    /// The cluster of `KUBECONFIG` (`USE_EXISTING_CLUSTER=true`).
    Existing {
        /// The kubeconfig file, for kubectl and helm.
        kubeconfig: PathBuf,
    },
}

impl Cluster {
    /// A kubeconfig file naming the cluster, for kubectl and helm (`--kubeconfig`).
    pub fn kubeconfig(&self) -> &Path {
        match self {
            Cluster::Envtest(cp) => &cp.kubeconfig,
            Cluster::Existing { kubeconfig } => kubeconfig,
        }
    }

    /// A new client of the cluster. Make one per test (per tokio runtime): a client's
    /// connection pool lives on the runtime that made it.
    pub async fn client(&self) -> Client {
        client_from(self.kubeconfig())
            .await
            .unwrap_or_else(|e| panic!("client for {}: {e}", self.kubeconfig().display()))
    }

    /// The control plane, when this process runs it (not for an existing cluster).
    pub fn control_plane(&self) -> Option<&ControlPlane> {
        match self {
            Cluster::Envtest(cp) => Some(cp),
            Cluster::Existing { .. } => None,
        }
    }
}

async fn client_from(kubeconfig: &Path) -> Result<Client, Error> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| err("read kubeconfig", e))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| err("kubeconfig", e))?;
    Client::try_from(config).map_err(|e| err("client", e))
}

/// The cluster shared by every test of this test binary, started on first use; `None` (after
/// one line on the terminal saying why) when there is nothing to test against.
///
/// Panics when the assets are there but the control plane does not start: that is a failure,
/// not a reason to skip.
pub fn shared() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| match locate() {
            Ok(Target::Existing(kubeconfig)) => Some(Cluster::Existing { kubeconfig }),
            Ok(Target::Assets(dir)) => match ControlPlane::start(&dir, &Options::default()) {
                Ok(cp) => Some(Cluster::Envtest(cp)),
                Err(e) => panic!("envtest control plane from {}: {e}", dir.display()),
            },
            Err(why) => {
                skip_line(&why);
                None
            }
        })
        .as_ref()
}

/// Writes straight to the terminal's stderr, past libtest's capture, so a skip is visible.
pub fn skip_line(why: &str) {
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

enum Target {
    Assets(PathBuf),
    Existing(PathBuf),
}

/// The envtest assets folder this process would use: `KUBEBUILDER_ASSETS`, else
/// `../shared/envtest` from the repository root.
pub fn assets() -> Option<PathBuf> {
    let dir = match std::env::var_os("KUBEBUILDER_ASSETS") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/envtest"),
    };
    ["etcd", "kube-apiserver", "kube-controller-manager"]
        .iter()
        .all(|b| dir.join(b).is_file())
        .then_some(dir)
}

fn locate() -> Result<Target, String> {
    if std::env::var("USE_EXISTING_CLUSTER").is_ok_and(|v| v == "true") {
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube/config")))
            .ok_or("USE_EXISTING_CLUSTER=true but no KUBECONFIG and no HOME")?;
        return Ok(Target::Existing(kubeconfig));
    }
    assets().map(Target::Assets).ok_or_else(|| {
        "no envtest assets (set KUBEBUILDER_ASSETS to a folder with etcd, kube-apiserver and \
         kube-controller-manager, or USE_EXISTING_CLUSTER=true with KUBECONFIG)"
            .to_string()
    })
}

/// How to start a control plane.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--service-cluster-ip-range`; a /16 holds 65k Services, a /24 only ~250.
    pub service_cidr: String,
    /// Start kube-controller-manager (garbage collection, Deployment -> ReplicaSet -> Pod,
    /// service accounts).
    pub controller_manager: bool,
    /// Extra kube-apiserver flags.
    pub apiserver_flags: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            service_cidr: "10.96.0.0/16".into(),
            controller_manager: true,
            apiserver_flags: Vec::new(),
        }
    }
}

/// etcd, kube-apiserver and kube-controller-manager, in one process group of their own, with
/// a guardian that stops them when this process ends.
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    apiserver_cmd: Vec<String>,
    group: i32,
    apiserver: Mutex<Option<Child>>,
    children: Mutex<Vec<Child>>,
    // Held open for the life of the process: its closing tells the guardian to clean up.
    _guardian: Mutex<ChildStdin>,
}

fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| err("bind a free port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| err("local_addr", e))
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| err(format!("write {}", path.display()), e))
}

/// The certificates and keys of one control plane, as PEM files in `dir`.
fn write_pki(dir: &Path) -> Result<(), Error> {
    let e = |e: rcgen::Error| err("certificates", e);
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.distinguished_name.push(DnType::CommonName, "envtest-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    write(&dir.join("ca.crt"), &ca_cert.pem())?;
    write(&dir.join("ca.key"), &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |file: &str,
                sans: Vec<String>,
                cn: &str,
                org: Option<&str>,
                usage: ExtendedKeyUsagePurpose|
     -> Result<(), Error> {
        let key = KeyPair::generate().map_err(e)?;
        let mut p = CertificateParams::new(sans).map_err(e)?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        if let Some(o) = org {
            p.distinguished_name.push(DnType::OrganizationName, o);
        }
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &issuer).map_err(e)?;
        write(&dir.join(format!("{file}.crt")), &cert.pem())?;
        write(&dir.join(format!("{file}.key")), &key.serialize_pem())
    };
    leaf(
        "apiserver",
        vec!["127.0.0.1".into(), "localhost".into(), "kubernetes".into()],
        "kube-apiserver",
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    leaf(
        "admin",
        vec![],
        "envtest-admin",
        Some("system:masters"),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    leaf(
        "kcm",
        vec![],
        "system:kube-controller-manager",
        None,
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    // The aggregation layer's client certificate: the API server presents it when it proxies a
    // request to an aggregated API (the stand-in metrics-server), which trusts the CA.
    leaf(
        "front-proxy",
        vec![],
        FRONT_PROXY_CN,
        None,
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let sa = KeyPair::generate().map_err(e)?;
    write(&dir.join("sa.key"), &sa.serialize_pem())?;
    write(&dir.join("sa.pub"), &sa.public_key_pem())
}

fn kubeconfig_text(dir: &Path, url: &str, user: &str) -> String {
    let d = dir.display();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {url}\n    \
         certificate-authority: {d}/ca.crt\nusers:\n- name: {user}\n  user:\n    \
         client-certificate: {d}/{user}.crt\n    client-key: {d}/{user}.key\ncontexts:\n- name: envtest\n  \
         context:\n    cluster: envtest\n    user: {user}\n    namespace: default\ncurrent-context: envtest\n"
    )
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and (unless told not to) kube-controller-manager from
    /// `assets`, and waits until the API server is ready and the controller manager has made
    /// the `default` ServiceAccount.
    pub fn start(assets: &Path, opts: &Options) -> Result<ControlPlane, Error> {
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let dir = base.join(format!(
            "envtest-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("etcd")).map_err(|e| err("data dir", e))?;
        write_pki(&dir)?;

        // The guardian leads the process group; everything else joins it. It ignores the
        // signals a terminal sends, waits for EOF on its stdin, then stops the group.
        let script = format!(
            "trap '' INT TERM HUP; read -r _; kill -TERM -$$ 2>/dev/null; sleep 3; \
             rm -rf '{}'; kill -KILL -$$ 2>/dev/null",
            dir.display()
        );
        let mut guardian = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| err("start the guardian (sh)", e))?;
        let group = i32::try_from(guardian.id()).map_err(|e| err("pid", e))?;
        let guardian_in = guardian
            .stdin
            .take()
            .ok_or(Error("guardian stdin".into()))?;

        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let spawn = |name: &str, args: &[String]| -> Result<Child, Error> {
            let log = std::fs::File::create(dir.join(format!("{name}.log")))
                .map_err(|e| err("log file", e))?;
            let log2 = log.try_clone().map_err(|e| err("log file", e))?;
            Command::new(assets.join(name))
                .args(args)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .process_group(group)
                .spawn()
                .map_err(|e| err(format!("start {name}"), e))
        };
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let d = dir.display().to_string();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = spawn(
            "etcd",
            &s(&[
                "--data-dir",
                &format!("{d}/etcd"),
                "--name",
                "envtest",
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("envtest={peer_url}"),
                "--unsafe-no-fsync",
            ]),
        )?;
        let mut children = vec![etcd];

        let url = format!("https://127.0.0.1:{api_port}");
        let mut apiserver_cmd = s(&[
            "--etcd-servers",
            &etcd_url,
            "--bind-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
            "--secure-port",
            &api_port.to_string(),
            "--tls-cert-file",
            &format!("{d}/apiserver.crt"),
            "--tls-private-key-file",
            &format!("{d}/apiserver.key"),
            "--client-ca-file",
            &format!("{d}/ca.crt"),
            "--service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file",
            &format!("{d}/sa.pub"),
            "--service-account-signing-key-file",
            &format!("{d}/sa.key"),
            "--service-cluster-ip-range",
            &opts.service_cidr,
            "--authorization-mode",
            "Node,RBAC",
            "--endpoint-reconciler-type",
            "none",
            // The aggregation layer, for aggregated APIs served by the stand-ins
            // (metrics.k8s.io, custom.metrics.k8s.io): the API server dials the endpoint
            // addresses of their Services (nothing routes ClusterIPs here).
            "--requestheader-client-ca-file",
            &format!("{d}/ca.crt"),
            "--requestheader-allowed-names",
            FRONT_PROXY_CN,
            "--requestheader-username-headers",
            "X-Remote-User",
            "--requestheader-group-headers",
            "X-Remote-Group",
            "--requestheader-extra-headers-prefix",
            "X-Remote-Extra-",
            "--proxy-client-cert-file",
            &format!("{d}/front-proxy.crt"),
            "--proxy-client-key-file",
            &format!("{d}/front-proxy.key"),
            "--enable-aggregator-routing=true",
        ]);
        apiserver_cmd.extend(opts.apiserver_flags.iter().cloned());
        let kubeconfig = dir.join("kubeconfig");
        write(&kubeconfig, &kubeconfig_text(&dir, &url, "admin"))?;
        write(
            &dir.join("kcm.kubeconfig"),
            &kubeconfig_text(&dir, &url, "kcm"),
        )?;

        let apiserver = spawn("kube-apiserver", &apiserver_cmd)?;
        let cp = ControlPlane {
            dir: dir.clone(),
            kubeconfig,
            url,
            apiserver_cmd,
            group,
            apiserver: Mutex::new(Some(apiserver)),
            children: Mutex::new(Vec::new()),
            _guardian: Mutex::new(guardian_in),
        };
        cp.wait_ready()?;
        if opts.controller_manager {
            children.push(spawn(
                "kube-controller-manager",
                &s(&[
                    "--kubeconfig",
                    &format!("{d}/kcm.kubeconfig"),
                    "--service-account-private-key-file",
                    &format!("{d}/sa.key"),
                    "--root-ca-file",
                    &format!("{d}/ca.crt"),
                    "--use-service-account-credentials=true",
                    "--cluster-signing-cert-file",
                    &format!("{d}/ca.crt"),
                    "--cluster-signing-key-file",
                    &format!("{d}/ca.key"),
                    "--bind-address",
                    "127.0.0.1",
                    "--secure-port",
                    "0",
                    "--leader-elect=false",
                ]),
            )?);
            cp.wait_for_default_service_account()?;
        }
        *cp.children.lock().unwrap_or_else(|e| e.into_inner()) = children;
        Ok(cp)
    }

    /// The admin kubeconfig (`system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The process group of the control plane (and of its guardian).
    pub fn process_group(&self) -> i32 {
        self.group
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T> + Send) -> T
    where
        T: Send,
    {
        // Called from tests that may already run inside a tokio runtime: a thread of its own
        // with a runtime of its own.
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds")
                    .block_on(f)
            })
            .join()
            .expect("the waiting thread does not panic")
        })
    }

    /// Waits until the API server answers `/readyz` with `ok`.
    pub fn wait_ready(&self) -> Result<(), Error> {
        let kubeconfig = self.kubeconfig.clone();
        let log = self.dir.join("kube-apiserver.log");
        let started = Instant::now();
        // Refused connections and 500s are what a starting API server answers: kube's client
        // would log each as an ERROR. The last one is in the error if it never gets ready.
        let wait = async move {
            let client = client_from(&kubeconfig).await?;
            let mut last = String::new();
            while started.elapsed() < READY_TIMEOUT {
                let req = http_get("/readyz");
                match client.request_text(req).await {
                    Ok(body) if body.trim() == "ok" => return Ok(()),
                    Ok(body) => last = body,
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(Error(format!(
                "kube-apiserver not ready after {}s ({last}); its log ends:\n{}",
                READY_TIMEOUT.as_secs(),
                log_tail(&log)
            )))
        };
        self.block_on(wait.with_subscriber(tracing::subscriber::NoSubscriber::default()))
    }

    fn wait_for_default_service_account(&self) -> Result<(), Error> {
        let kubeconfig = self.kubeconfig.clone();
        let log = self.dir.join("kube-controller-manager.log");
        self.block_on(async move {
            let client = client_from(&kubeconfig).await?;
            let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
            let started = Instant::now();
            while started.elapsed() < READY_TIMEOUT {
                if let Ok(Some(_)) = sas.get_opt("default").await {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(Error(format!(
                "kube-controller-manager made no default ServiceAccount in {}s; its log ends:\n{}",
                READY_TIMEOUT.as_secs(),
                log_tail(&log)
            )))
        })
    }

    /// Stops kube-apiserver (SIGTERM, then SIGKILL after 10 s) and waits for it to exit: an
    /// API server outage. etcd and the controller manager keep running.
    pub fn stop_apiserver(&self) {
        let mut slot = self.apiserver.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut child) = slot.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts kube-apiserver again with the same flags, port and data, and waits until ready.
    pub fn start_apiserver(&self) -> Result<(), Error> {
        {
            let mut slot = self.apiserver.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                let log = std::fs::OpenOptions::new()
                    .append(true)
                    .open(self.dir.join("kube-apiserver.log"))
                    .map_err(|e| err("log file", e))?;
                let log2 = log.try_clone().map_err(|e| err("log file", e))?;
                let assets = assets().ok_or(Error("no envtest assets".into()))?;
                let child = Command::new(assets.join("kube-apiserver"))
                    .args(&self.apiserver_cmd)
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(log2)
                    .process_group(self.group)
                    .spawn()
                    .map_err(|e| err("start kube-apiserver", e))?;
                *slot = Some(child);
            }
        }
        self.wait_ready()
    }

    /// The API server's Prometheus metrics text.
    pub async fn apiserver_metrics(&self) -> Result<String, Error> {
        let client = client_from(&self.kubeconfig).await?;
        client
            .request_text(http_get("/metrics"))
            .await
            .map_err(|e| err("GET /metrics", e))
    }
}

fn http_get(path: &str) -> http::Request<Vec<u8>> {
    http::Request::get(path)
        .body(Vec::new())
        .expect("a GET of a fixed path is a valid request")
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // A control plane owned by a test (not the shared one, which lives as long as the
        // process and is stopped by the guardian): stop the group now.
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.group)])
            .status();
        for mut c in self
            .children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .chain(
                self.apiserver
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(),
            )
        {
            let _ = c.wait();
        }
    }
}

/// A namespace of one test, deleted when dropped (also when the test panics).
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    kubeconfig: PathBuf,
}

impl TestNamespace {
    /// Creates `wsgiscale-test-TAG-PID` in `cluster`.
    pub async fn create(cluster: &Cluster, tag: &str) -> TestNamespace {
        let name = format!("wsgiscale-test-{tag}-{}", std::process::id());
        let namespaces: Api<Namespace> = Api::all(cluster.client().await);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"wsgiscale.dev/test": "true"}}
        }))
        .expect("a namespace literal");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        TestNamespace {
            name,
            kubeconfig: cluster.kubeconfig().to_path_buf(),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let (name, kubeconfig) = (self.name.clone(), self.kubeconfig.clone());
        // Its own thread and runtime: the test's runtime may be the one unwinding.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = client_from(&kubeconfig).await.ok()?;
                let namespaces: Api<Namespace> = Api::all(client);
                tokio::time::timeout(
                    Duration::from_secs(10),
                    namespaces.delete(&name, &DeleteParams::default()),
                )
                .await
                .ok()?
                .ok()
            })
        })
        .join();
    }
}

/// The part of a kubelet that tests play (there is none here): marks pod `name` Running and
/// Ready at `ip`, as a kubelet reports a started pod whose readiness probe passed.
pub async fn mark_pod_ready(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
    ip: &str,
) -> Result<(), kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": now,
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
        ],
    }});
    pods.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Strategic(&status),
    )
    .await
    .map(|_| ())
}

/// The part of a kubelet that tests play: what it writes when the `app` container of pod
/// `name` (running `image`) exited with `code`: its termination message in lastState, and
/// the container waiting in CrashLoopBackOff.
pub async fn mark_pod_crashed(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    name: &str,
    image: &str,
    code: i32,
    message: &str,
) -> Result<(), kube::Error> {
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "containerStatuses": [{
            "name": "app",
            "image": image,
            "imageID": "",
            "ready": false,
            "restartCount": 1,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": code, "reason": "Error", "message": message}},
        }],
    }});
    pods.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&status),
    )
    .await
    .map(|_| ())
}
