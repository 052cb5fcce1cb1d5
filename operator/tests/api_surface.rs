//! What a user meets first, checked where they meet it: the operator's log lines in a pipe
//! and on a terminal, and, against a real API server (envtest, see `wsgiscale-envtest`), the
//! CRD as `kubectl explain` shows it, the error of an invalid name, and the two ways to
//! `helm install` the chart beside a CRD applied with kubectl.
//!
//! ```text
//! cargo test -p wsgiscale-operator --test api_surface
//! HELM=.cache/bin/helm cargo test -p wsgiscale-operator --test api_surface   # with the helm test
//! ```
//!
//! Without a cluster the cluster tests skip with one line; without `HELM` (`python3
//! tests/chart/fetch_tools.py .cache` prints its path) the helm test does, and without
//! `script` (util-linux) the terminal test does.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use kube::ResourceExt;
use wsgiscale_envtest::{skip_line, Cluster, TestNamespace};
use wsgiscale_operator::crd::{crd, crd_yaml, WsgiApp};

mod support;
use support::{eventually, install_crd, wait_established};

const MANAGER: &str = "wsgiscale-api-surface-test";
const CRD_NAME: &str = "wsgiapps.wsgiscale.dev";
const ESC: u8 = 0x1b;
/// What the operator logs (a warning) while its API server does not answer.
const RETRY_LOG: &str = "cannot list WsgiApps yet";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate sits in the repository")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// Log colour: plain log lines carry ANSI escapes only on a terminal, and never with NO_COLOR.

/// A kubeconfig whose API server refuses every connection (port 1 of the loopback), so that
/// `run` keeps logging `RETRY_LOG` until it is stopped.
fn unreachable_kubeconfig() -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("unreachable-{}.kubeconfig", std::process::id()));
    let text = "apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster:\n    \
                server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\n\
                users:\n- name: none\n  user: {}\ncontexts:\n- name: none\n  context:\n    \
                cluster: none\n    user: none\ncurrent-context: none\n";
    std::fs::write(&path, text).expect("write the kubeconfig");
    path
}

/// `wsgiscale-operator run` with plain logs, against the unreachable API server.
fn operator_run(kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgiscale-operator"));
    cmd.args([
        "run",
        "--leader-election=false",
        "--http-bind",
        "127.0.0.1:0",
        "--log-format",
        "plain",
        "--log-level",
        "info",
    ])
    .env("KUBECONFIG", kubeconfig)
    .env_remove("KUBERNETES_SERVICE_HOST")
    .env_remove("WSGISCALE_OPERATOR_LOG_FORMAT")
    .env_remove("WSGISCALE_OPERATOR_LOG_LEVEL");
    cmd
}

/// Reads `child`'s `stream` until a line contains `needle` (or 60 s pass), then sends the
/// process `pid` SIGTERM and returns everything it wrote, up to its exit.
fn read_until_then_terminate(
    mut child: Child,
    stream: impl Read,
    needle: &str,
    pid: impl Fn() -> String,
) -> Vec<u8> {
    let mut reader = BufReader::new(stream);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                seen = String::from_utf8_lossy(&line).contains(needle);
                out.extend_from_slice(&line);
            }
        }
    }
    let _ = Command::new("kill").args(["-TERM", &pid()]).status();
    let _ = reader.read_to_end(&mut out);
    let status = child.wait().expect("wait for the operator");
    let text = String::from_utf8_lossy(&out);
    assert!(seen, "no {needle:?} in the output ({status}):\n{text}");
    out
}

#[test]
fn plain_logs_in_a_pipe_have_no_colour() {
    let kubeconfig = unreachable_kubeconfig();
    let mut child = operator_run(&kubeconfig)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wsgiscale-operator");
    let pid = child.id().to_string();
    let stderr = child.stderr.take().expect("piped stderr");
    let out = read_until_then_terminate(child, stderr, RETRY_LOG, || pid.clone());
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("WARN"), "a plain warning line:\n{text}");
    assert!(
        !out.contains(&ESC),
        "ANSI escapes in a pipe:\n{}",
        text.escape_debug()
    );
}

/// Runs the operator on a pseudo-terminal (util-linux `script`) and returns what it wrote;
/// None when `script` is missing.
fn operator_on_a_terminal(no_color: Option<&str>) -> Option<Vec<u8>> {
    if Command::new("script").arg("--version").output().is_err() {
        skip_line("no `script` (util-linux) for a pseudo-terminal");
        return None;
    }
    let kubeconfig = unreachable_kubeconfig();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let pid_file = dir.join(format!(
        "tty-operator-{}-{}.pid",
        std::process::id(),
        no_color.is_some()
    ));
    let run = operator_run(&kubeconfig);
    let args: Vec<String> = run
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    // `exec`: the shell's pid becomes the operator's, which the test stops with SIGTERM.
    let shell = format!(
        "echo $$ > '{}'; exec '{}' {}",
        pid_file.display(),
        run.get_program().to_string_lossy(),
        args.join(" ")
    );
    let mut script = Command::new("script");
    script
        .args(["-qefc", &shell, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("WSGISCALE_OPERATOR_LOG_FORMAT")
        .env_remove("WSGISCALE_OPERATOR_LOG_LEVEL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match no_color {
        Some(v) => script.env("NO_COLOR", v),
        None => script.env_remove("NO_COLOR"),
    };
    let mut child = script.spawn().expect("start script");
    let stdout = child.stdout.take().expect("piped stdout");
    Some(read_until_then_terminate(child, stdout, RETRY_LOG, || {
        std::fs::read_to_string(&pid_file)
            .unwrap_or_default()
            .trim()
            .to_string()
    }))
}

#[test]
fn plain_logs_on_a_terminal_are_coloured_unless_no_color() {
    let Some(coloured) = operator_on_a_terminal(None) else {
        return;
    };
    assert!(
        coloured.contains(&ESC),
        "a terminal gets colours:\n{}",
        String::from_utf8_lossy(&coloured)
    );
    let Some(plain) = operator_on_a_terminal(Some("1")) else {
        return;
    };
    assert!(
        !plain.contains(&ESC),
        "NO_COLOR=1 on a terminal:\n{}",
        String::from_utf8_lossy(&plain).escape_debug()
    );
}

// ---------------------------------------------------------------------------------------------
// The CRD against a real API server.

/// kubectl: `KUBECTL`, else the one on PATH (or /usr/bin/kubectl).
fn kubectl_path() -> Option<PathBuf> {
    let candidates = std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("kubectl"))
                .collect::<Vec<_>>()
        }))
        .chain([PathBuf::from("/usr/bin/kubectl")]);
    candidates.into_iter().find(|p| p.is_file())
}

/// Runs a tool and returns its output, whatever the exit status.
fn run_tool(program: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Output {
    Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_os_str())))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

/// Runs a tool that must succeed; returns its stdout.
fn run_ok(program: &Path, args: &[&str], envs: &[(&str, &Path)]) -> String {
    let out = run_tool(program, args, envs);
    assert!(
        out.status.success(),
        "{} {} failed ({}):\n{}{}",
        program.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kubectl on `cluster`, which must succeed; None (after a skip line) without kubectl.
fn kubectl(cluster: &Cluster, args: &[&str]) -> Option<String> {
    let Some(kubectl) = kubectl_path() else {
        skip_line("no kubectl on PATH (or KUBECTL)");
        return None;
    };
    Some(run_ok(&kubectl, &kubectl_args(cluster, args), &[]))
}

/// kubectl on `cluster`; its stdout when it succeeds.
fn kubectl_try(cluster: &Cluster, args: &[&str]) -> Option<String> {
    let out = run_tool(&kubectl_path()?, &kubectl_args(cluster, args), &[]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kubectl_args<'a>(cluster: &'a Cluster, args: &[&'a str]) -> Vec<&'a str> {
    let kubeconfig = cluster
        .kubeconfig()
        .to_str()
        .expect("a UTF-8 kubeconfig path");
    let mut all = vec!["--kubeconfig", kubeconfig];
    all.extend_from_slice(args);
    all
}

/// `kubectl explain FIELD` once the CRD is served: it is a moment after it is Established,
/// and kubectl reads it from the OpenAPI document, which lags a little more.
async fn explain(cluster: &Cluster, field: &str) -> String {
    install_crd(&cluster.client().await, MANAGER).await;
    eventually(&format!("kubectl explain {field}"), 60, || async {
        let text = kubectl_try(cluster, &["explain", field])?;
        text.contains("DESCRIPTION:").then_some(text)
    })
    .await
}

/// The DESCRIPTION block of `kubectl explain` output, one entry per line, without the indent.
fn explain_description(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| l.trim() != "DESCRIPTION:")
        .skip(1)
        .take_while(|l| !l.starts_with("FIELDS:"))
        .map(|l| l.trim().to_string())
        .collect()
}

#[tokio::test]
async fn kubectl_explain_shows_descriptions_as_flowing_text() {
    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    if kubectl_path().is_none() {
        skip_line("no kubectl on PATH (or KUBECTL)");
        return;
    }
    let explained = explain(cluster, "wsgiapps.spec.workers").await;

    // The comment of `WsgiAppSpec::workers` spans three `///` lines.
    let schema = crd().spec.versions[0]
        .schema
        .clone()
        .and_then(|s| s.open_api_v3_schema)
        .expect("a schema");
    let workers = &schema.properties.as_ref().expect("properties")["spec"]
        .properties
        .as_ref()
        .expect("spec properties")["workers"];
    let want = workers
        .description
        .clone()
        .expect("workers has a description");

    let lines = explain_description(&explained);
    let shown: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| !l.is_empty())
        .collect();
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(words(&shown.join(" ")), words(&want), "{explained}");
    // kubectl wraps at a fixed width: in flowing text a line ends only where the next word
    // would not have fitted. A hard break in the description shows as a short line.
    let width = explained.lines().map(|l| l.len()).max().unwrap_or(80);
    let indent = explained
        .lines()
        .skip_while(|l| l.trim() != "DESCRIPTION:")
        .nth(1)
        .map(|l| l.len() - l.trim_start().len())
        .unwrap_or(4);
    for pair in shown.windows(2) {
        let next_word = pair[1].split_whitespace().next().unwrap_or("");
        assert!(
            indent + pair[0].len() + 1 + next_word.len() > width,
            "line broken mid-sentence before {next_word:?}: {:?}\n{explained}",
            pair[0]
        );
    }
}

/// `kubectl explain wsgiapps.spec.image` says what is true of the image: the server ships as
/// the `wsgiscale` Python package (the one pyproject.toml builds, which examples/Dockerfile
/// installs) or is brought in by `inject.enabled` (a field the CRD has), never as "the
/// wsgiscale binary".
#[tokio::test]
async fn kubectl_explain_of_the_image_says_what_is_true() {
    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    if kubectl_path().is_none() {
        skip_line("no kubectl on PATH (or KUBECTL)");
        return;
    }
    let explained = explain(cluster, "wsgiapps.spec.image").await;
    let text = explain_description(&explained).join(" ");
    let pyproject =
        std::fs::read_to_string(repo_root().join("pyproject.toml")).expect("pyproject.toml");
    let package = pyproject
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the project's name");
    assert!(text.contains(&format!("pip install {package}")), "{text}");
    let dockerfile = std::fs::read_to_string(repo_root().join("examples/Dockerfile"))
        .expect("the image example it names");
    assert!(text.contains("examples/Dockerfile") && dockerfile.contains("pip install"));
    assert!(!text.contains("binary"), "{text}");
    assert!(text.contains("`inject.enabled`"), "{text}");
    // The field it points to exists.
    let inject = kubectl_try(cluster, &["explain", "wsgiapps.spec.inject.enabled"])
        .expect("spec.inject.enabled exists");
    assert!(inject.contains("DESCRIPTION:"), "{inject}");
}

#[tokio::test]
async fn an_invalid_name_is_refused_at_metadata_name() {
    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    let client = cluster.client().await;
    install_crd(&client, MANAGER).await;
    let ns = TestNamespace::create(cluster, "bad-name").await;
    let path = repo_root().join("tests/manifests/invalid-name-not-dns-label.yaml");
    let mut app: WsgiApp =
        serde_saphyr::from_str(&std::fs::read_to_string(&path).expect("the manifest"))
            .expect("the manifest parses");
    app.metadata.namespace = Some(ns.name.clone());
    let apps: Api<WsgiApp> = Api::namespaced(client, &ns.name);
    // Right after Established the server may not validate the new kind yet: retry until it
    // answers with a validation error.
    let err = eventually("the API server to refuse the name", 60, || {
        let (apps, app) = (apps.clone(), app.clone());
        async move {
            match apps.create(&PostParams::default(), &app).await {
                Ok(created) => panic!("{} was accepted", created.name_any()),
                Err(kube::Error::Api(e)) if e.code == 422 => Some(e),
                Err(_) => None,
            }
        }
    })
    .await;
    assert!(
        err.message.contains(
            "metadata.name: Invalid value: \"string\": metadata.name must be a DNS-1035 label"
        ),
        "{}",
        err.message
    );
    assert!(!err.message.contains("<nil>"), "{}", err.message);
}

#[tokio::test]
async fn an_autoscaled_app_at_zero_pods_is_refused() {
    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    let client = cluster.client().await;
    install_crd(&client, MANAGER).await;
    let ns = TestNamespace::create(cluster, "min-zero").await;
    let app: WsgiApp = serde_json::from_value(serde_json::json!({
        "apiVersion": "wsgiscale.dev/v1alpha1",
        "kind": "WsgiApp",
        "metadata": {"name": "shop", "namespace": ns.name},
        "spec": {
            "image": "shop:1",
            "app": "shop.wsgi:application",
            "replicas": {"min": 0, "max": 4},
            "autoscaling": {"enabled": true},
        },
    }))
    .expect("a WsgiApp");
    let apps: Api<WsgiApp> = Api::namespaced(client, &ns.name);
    let err = eventually("the API server to refuse min 0", 60, || {
        let (apps, app) = (apps.clone(), app.clone());
        async move {
            match apps.create(&PostParams::default(), &app).await {
                Ok(created) => panic!("{} was accepted", created.name_any()),
                Err(kube::Error::Api(e)) if e.code == 422 => Some(e),
                Err(_) => None,
            }
        }
    })
    .await;
    assert!(
        err.message.contains("spec.replicas.min")
            && err
                .message
                .contains("autoscaling.enabled needs replicas.min of at least 1"),
        "{}",
        err.message
    );
    // With scaleToZero it is what scale to zero means: accepted.
    let mut zero = app.clone();
    zero.spec.scale_to_zero = Some(wsgiscale_operator::crd::ScaleToZeroSpec {
        enabled: Some(true),
        idle_seconds: Some(600),
    });
    apps.create(&PostParams::default(), &zero)
        .await
        .expect("min 0 with scaleToZero is accepted");
    // scaleToZero without autoscaling: refused, saying why.
    let mut alone = zero.clone();
    alone.metadata.name = Some("alone".into());
    alone.spec.autoscaling = None;
    alone.spec.replicas = None;
    match apps.create(&PostParams::default(), &alone).await {
        Err(kube::Error::Api(e)) => assert!(
            e.code == 422
                && e.message
                    .contains("scaleToZero.enabled needs autoscaling.enabled"),
            "{}",
            e.message
        ),
        other => panic!("scaleToZero without autoscaling: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// helm install beside a CRD applied with kubectl.

/// helm from `HELM` (a relative path is taken from the repository root, as `make test` sets
/// it), or None after a skip line.
fn helm_path() -> Option<PathBuf> {
    let Some(helm) = std::env::var_os("HELM").filter(|h| !h.is_empty()) else {
        skip_line("HELM is not set (python3 tests/chart/fetch_tools.py .cache prints a helm)");
        return None;
    };
    let helm = PathBuf::from(helm);
    let helm = if helm.is_relative() && !helm.is_file() {
        repo_root().join(helm)
    } else {
        helm
    };
    if !helm.is_file() {
        skip_line(&format!("HELM={} does not exist", helm.display()));
        return None;
    }
    Some(helm)
}

/// helm with its caches, config and data in a folder of this test, and the cluster's
/// kubeconfig.
struct Helm {
    program: PathBuf,
    home: PathBuf,
    kubeconfig: PathBuf,
}

impl Helm {
    fn run(&self, args: &[&str]) -> Output {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let mut all = vec!["--kubeconfig", kubeconfig.as_str()];
        all.extend_from_slice(args);
        let (cache, config, data) = (
            self.home.join("cache"),
            self.home.join("config"),
            self.home.join("data"),
        );
        run_tool(
            &self.program,
            &all,
            &[
                ("HELM_CACHE_HOME", &cache),
                ("HELM_CONFIG_HOME", &config),
                ("HELM_DATA_HOME", &data),
            ],
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "helm {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `helm install RELEASE charts/wsgiscale` into `ns`, not waiting for pods (there is no
    /// kubelet), with extra flags.
    fn install(&self, release: &str, ns: &str, extra: &[&str]) -> Output {
        let chart = repo_root().join("charts/wsgiscale");
        let chart = chart.to_string_lossy().into_owned();
        let mut args = vec!["install", release, chart.as_str(), "--namespace", ns];
        // helm 4's name for --wait=false (which it still takes, with a deprecation warning).
        args.push("--wait=hookOnly");
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Both ways docs/operator.md gives, in one test because they share the cluster-scoped CRD:
/// `crds.install=false`, then (after uninstalling) adopting the CRD into the release.
#[tokio::test]
async fn helm_installs_beside_a_crd_applied_with_kubectl() {
    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    let Some(program) = helm_path() else {
        return;
    };
    // kubectl applies crds/, helm the chart's copy and the other tests `crd()`, all with
    // server-side apply: with one of them stale, their managers conflict on the CRD.
    let generated = std::fs::read_to_string(repo_root().join("crds/wsgiapp.yaml"));
    assert!(
        generated.is_ok_and(|text| text == crd_yaml()),
        "crds/wsgiapp.yaml is out of date with operator/src/crd.rs: run `make generate`"
    );
    let crds = repo_root().join("crds");
    let crds = crds.to_string_lossy().into_owned();
    // The CRD as the docs' "without Helm" path leaves it: applied by kubectl, with no Helm
    // ownership (a previous run on an existing cluster may have left some).
    let Some(_) = kubectl(cluster, &["apply", "--server-side", "-f", &crds]) else {
        return;
    };
    kubectl(
        cluster,
        &["label", "crd", CRD_NAME, "app.kubernetes.io/managed-by-"],
    );
    kubectl(
        cluster,
        &[
            "annotate",
            "crd",
            CRD_NAME,
            "meta.helm.sh/release-name-",
            "meta.helm.sh/release-namespace-",
        ],
    );
    wait_established(&cluster.client().await).await;
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("helm-{}", std::process::id()));
    let helm = Helm {
        program,
        home,
        kubeconfig: cluster.kubeconfig().to_path_buf(),
    };

    // The finding: the chart's own CRD collides with the one kubectl applied.
    let ns = TestNamespace::create(cluster, "helm-crdless").await;
    let refused = helm.install("wsgiscale", &ns.name, &[]);
    assert!(!refused.status.success(), "installed over a foreign CRD");
    assert!(
        stderr_of(&refused).contains("invalid ownership metadata"),
        "{}",
        stderr_of(&refused)
    );

    // Way 1: leave the CRD to kubectl.
    let installed = helm.install("wsgiscale", &ns.name, &["--set", "crds.install=false"]);
    assert!(
        installed.status.success(),
        "install with crds.install=false failed:\n{}",
        stderr_of(&installed)
    );
    let manifest = helm.ok(&["get", "manifest", "wsgiscale", "--namespace", &ns.name]);
    assert!(
        !manifest.contains("kind: CustomResourceDefinition"),
        "{manifest}"
    );
    assert!(manifest.contains("kind: Deployment"), "{manifest}");
    helm.ok(&["uninstall", "wsgiscale", "--namespace", &ns.name]);
    drop(ns);

    // Way 2: adopt the CRD into the release, which then manages (and upgrades) it.
    let ns = TestNamespace::create(cluster, "helm-adopt").await;
    let release_name = "meta.helm.sh/release-name=wsgiscale".to_string();
    let release_ns = format!("meta.helm.sh/release-namespace={}", ns.name);
    kubectl(
        cluster,
        &[
            "label",
            "crd",
            CRD_NAME,
            "app.kubernetes.io/managed-by=Helm",
            "--overwrite",
        ],
    );
    kubectl(
        cluster,
        &[
            "annotate",
            "crd",
            CRD_NAME,
            &release_name,
            &release_ns,
            "--overwrite",
        ],
    );
    let adopted = helm.install("wsgiscale", &ns.name, &[]);
    assert!(
        adopted.status.success(),
        "adopting install failed:\n{}",
        stderr_of(&adopted)
    );
    let manifest = helm.ok(&["get", "manifest", "wsgiscale", "--namespace", &ns.name]);
    assert!(
        manifest.contains("kind: CustomResourceDefinition"),
        "{manifest}"
    );
    // Uninstalling keeps the CRD (crds.keep, the default): the other tests still use it.
    helm.ok(&["uninstall", "wsgiscale", "--namespace", &ns.name]);
    wait_established(&cluster.client().await).await;
}

/// The chart's RBAC is enough for the operator, and no more is assumed: after `helm install`,
/// the controllers and the leader election run with a client that impersonates the chart's
/// ServiceAccount (read from the Deployment the chart rendered, as is the Lease's name), and an
/// app is reconciled: children applied, status written, Events published.
#[tokio::test]
async fn the_operator_works_with_exactly_the_charts_rbac() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    use kube::api::{ListParams, Patch, PatchParams};
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;
    use wsgiscale_operator::leader::{LeaderElector, LeaseTiming};
    use wsgiscale_operator::metrics::Metrics;
    use wsgiscale_operator::reconcile::Context;
    use wsgiscale_operator::run::run_controllers;

    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    let Some(program) = helm_path() else {
        return;
    };
    // The operator's warnings say which request was refused, should one be.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("wsgiscale_operator=warn")
        .with_test_writer()
        .try_init();
    let admin = cluster.client().await;
    install_crd(&admin, MANAGER).await;
    let release_ns = TestNamespace::create(cluster, "rbac-operator").await;
    let app_ns = TestNamespace::create(cluster, "rbac-app").await;
    let helm = Helm {
        program,
        home: Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("helm-rbac-{}", std::process::id())),
        kubeconfig: cluster.kubeconfig().to_path_buf(),
    };
    let release = "wsgiscale-rbac";
    let installed = helm.install(release, &release_ns.name, &["--set", "crds.install=false"]);
    assert!(installed.status.success(), "{}", stderr_of(&installed));

    // What the chart gives the operator's pod.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &release_ns.name);
    let dep = deployments
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
        .await
        .expect("list the chart's Deployments")
        .items
        .into_iter()
        .next()
        .expect("the chart renders the operator's Deployment");
    let pod = dep.spec.template.spec.expect("a pod spec");
    let sa = pod
        .service_account_name
        .expect("the chart names a ServiceAccount");
    let lease_name = pod.containers[0]
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "WSGISCALE_OPERATOR_LEASE_NAME")
        .and_then(|e| e.value.clone())
        .expect("the chart passes the lease name");

    // A client with exactly that ServiceAccount's permissions.
    let kc = kube::config::Kubeconfig::read_from(cluster.kubeconfig()).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{}:{sa}", release_ns.name));
    let operator = kube::Client::try_from(config).expect("an impersonating client");
    // The impersonation is real: what the chart does not grant is refused.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::all(operator.clone());
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("the chart's ServiceAccount listed Secrets: {other:?}"),
    }

    // The API server's RBAC authorizer learns of new roles and bindings through its own watch,
    // a moment after `helm install` returns (longer on a loaded machine): wait until it grants
    // every rule the chart's ClusterRole lists, so that a refusal below is the chart's, not
    // that delay's.
    wait_until_granted(&admin, &operator, release, &app_ns.name).await;

    let leases: Api<Lease> = Api::namespaced(operator.clone(), &release_ns.name);
    let mut elector = LeaderElector::new(
        leases,
        lease_name,
        "rbac-test".into(),
        LeaseTiming::from_lease_duration(Duration::from_secs(15)),
    );
    assert!(
        elector
            .try_acquire_or_renew()
            .await
            .expect("create the Lease"),
        "the first candidate leads"
    );
    assert!(
        elector
            .try_acquire_or_renew()
            .await
            .expect("renew the Lease"),
        "and renews"
    );

    let ctx = Arc::new(Context::new(
        operator.clone(),
        Some("rbac-test".into()),
        Arc::new(Metrics::default()),
        Duration::from_secs(60),
    ));
    let stop = CancellationToken::new();
    let controllers = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        // All namespaces: the default chart binds a ClusterRole.
        tokio::spawn(async move { run_controllers(&ctx, &[], 2, stop).await })
    };
    let apps: Api<WsgiApp> = Api::namespaced(admin.clone(), &app_ns.name);
    let mut app = support::example_app(&app_ns.name);
    app.metadata.namespace = Some(app_ns.name.clone());
    apps.patch("shop", &PatchParams::apply(MANAGER), &Patch::Apply(&app))
        .await
        .expect("apply the example");
    let (cms, svcs) = (
        Api::<ConfigMap>::namespaced(admin.clone(), &app_ns.name),
        Api::<Service>::namespaced(admin.clone(), &app_ns.name),
    );
    eventually("children and status under the chart's RBAC", 60, || {
        let (apps, cms, svcs) = (apps.clone(), cms.clone(), svcs.clone());
        async move {
            cms.get_opt("shop-config").await.ok()??;
            svcs.get_opt("shop").await.ok()??;
            let s = apps.get_status("shop").await.ok()?.status?;
            (s.conditions.len() == 4).then_some(())
        }
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(admin.clone(), &app_ns.name);
    eventually("an Event published under the chart's RBAC", 30, || {
        let e = events.clone();
        async move {
            let list = e.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| e.reporting_controller.as_deref() == Some("wsgiscale-operator"))
                .then_some(())
        }
    })
    .await;
    // Every watch (the apps', their children's, their pods') lists and watches under it.
    ctx.health.set_ready(true);
    let health = ctx.health.clone();
    eventually("every watch to work under the chart's RBAC", 60, || {
        let health = health.clone();
        async move { health.readiness().ok() }
    })
    .await;
    let errors = ctx.metrics.encode();
    assert!(
        !errors
            .lines()
            .any(|l| l.starts_with("wsgiscale_operator_errors_total{") && !l.ends_with(" 0")),
        "errors under the chart's RBAC:\n{errors}"
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), controllers).await;
    helm.ok(&["uninstall", release, "--namespace", &release_ns.name]);
}

/// Waits until the API server's authorizer grants `client` every verb on every resource that
/// the ClusterRoles of `release` list (rules limited to resource names are checked without
/// one, as the rule grants nothing else), in `namespace`: asked through
/// SelfSubjectAccessReviews, which the same authorizer answers.
async fn wait_until_granted(
    admin: &kube::Client,
    client: &kube::Client,
    release: &str,
    namespace: &str,
) {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    use k8s_openapi::api::rbac::v1::ClusterRole;
    use kube::api::ListParams;

    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let roles = roles
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
        .await
        .expect("list the chart's ClusterRoles");
    let mut asks = Vec::new();
    for rule in roles.items.iter().flat_map(|r| r.rules.iter().flatten()) {
        if rule.resource_names.as_ref().is_some_and(|n| !n.is_empty()) {
            continue;
        }
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    let (resource, subresource) = match resource.split_once('/') {
                        Some((r, s)) => (r.to_string(), Some(s.to_string())),
                        None => (resource.clone(), None),
                    };
                    asks.push(ResourceAttributes {
                        namespace: Some(namespace.to_string()),
                        group: Some(group.clone()),
                        resource: Some(resource),
                        subresource,
                        verb: Some(verb.clone()),
                        ..Default::default()
                    });
                }
            }
        }
    }
    assert!(!asks.is_empty(), "the chart's ClusterRole lists rules");
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for ask in asks {
        let what = format!("{ask:?}");
        eventually(&format!("the authorizer to grant {what}"), 60, || {
            let (reviews, ask) = (reviews.clone(), ask.clone());
            async move {
                let review = SelfSubjectAccessReview {
                    spec: SelfSubjectAccessReviewSpec {
                        resource_attributes: Some(ask),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let answer = reviews.create(&PostParams::default(), &review).await.ok()?;
                answer.status.is_some_and(|s| s.allowed).then_some(())
            }
        })
        .await;
    }
}
