//! The dashboards and alerts of charts/wsgiscale, checked against real software: Prometheus
//! (Debian's `prometheus` package: /usr/bin/prometheus and promtool; without them this test
//! says it is skipped) scrapes a real `wsgiscale serve` and the real `wsgiscale-operator run`
//! (against the envtest control plane) under a short load, and every query of every panel of
//! every dashboard must return data over the run: no query error, no panel empty (or only
//! NaN). The alerting rules load into that Prometheus and evaluate without error, and
//! `promtool check rules` and `promtool test rules` (tests/monitoring/rules.test.yaml: each
//! alert fires when it should and stays quiet when it should not) pass.
//!
//! The server plays the app's one pod: the operator sees the Deployment's pod marked Ready at
//! 127.0.0.1, scrapes its `/load` like a pod IP's, and Prometheus (started first, so it sees
//! the first reconciles) scrapes both with the labels the chart's PodMonitor and
//! ServiceMonitor give them (`namespace`, `pod`, `wsgiapp`; the operator's with
//! `honor_labels`). A change of the spec in the middle of the load makes a reconcile there too.
//!
//! ```text
//! cargo test -p wsgiscale-operator --test monitoring -- --nocapture
//! ```

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsgiscale_envtest::TestNamespace;
use wsgiscale_operator::crd::{AutoscalingSpec, ReplicasSpec, WorkersSpec, WsgiApp, WsgiAppSpec};

mod support;
use support::{eventually, install_crd, repo, server_bin};

const MANAGER: &str = "wsgiscale-monitoring-test";
const APP: &str = "shop";

/// `name` on the PATH, or in /usr/bin.
fn tool(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A process killed (and its folder removed) when dropped, also when the test fails.
struct Proc {
    child: Child,
    dir: Option<PathBuf>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            for _ in 0..50 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `GET path` on `addr` over HTTP/1.0: the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .ok()
        .flatten()
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Every query of a dashboard: (panel title, expr), and its template variables' queries.
fn dashboard_queries(path: &Path) -> (Vec<(String, String)>, Vec<String>) {
    let text = std::fs::read_to_string(path).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("a PromQL expr").to_string();
            out.push((title.clone(), expr));
        }
    }
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["query"]["query"].as_str().map(str::to_string))
        .collect();
    (out, vars)
}

/// The dashboard files of the chart.
fn dashboards() -> Vec<PathBuf> {
    let dir = repo().join("charts/wsgiscale/files/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("charts/wsgiscale/files/dashboards")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "an app and an operator dashboard");
    files
}

/// Grafana's variables, as the dashboards would set them for this app.
fn substitute(expr: &str, ns: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$__interval", "2s")
        .replace("$namespace", ns)
        .replace("$wsgiapp", APP)
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let Some(promtool) = tool("promtool") else {
        wsgiscale_envtest::skip_line("monitoring: no promtool (apt-get install prometheus)");
        return;
    };
    let rules = repo().join("charts/wsgiscale/files/prometheus/rules.yaml");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&promtool)
        .args(["test", "rules", "rules.test.yaml"])
        .current_dir(repo().join("tests/monitoring"))
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every alert has a unit test and a runbook section.
    let text = std::fs::read_to_string(&rules).expect("rules");
    let tests = std::fs::read_to_string(repo().join("tests/monitoring/rules.test.yaml"))
        .expect("rule tests");
    let runbook = std::fs::read_to_string(repo().join("docs/runbook.md")).expect("runbook");
    let alerts: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n        exp_alerts:")),
            "{alert} has no test that makes it fire"
        );
        assert!(
            runbook.contains(&format!("\n## {alert}\n")),
            "{alert} has no section in docs/runbook.md"
        );
        assert!(
            text.contains(&format!("runbook.md#{}", alert.to_lowercase())),
            "{alert} does not link its runbook section"
        );
    }
}

/// The WsgiApp: one pod (the test's server), autoscaled on a 2 s tick.
fn app(ns: &str, port: u16, admin: u16) -> WsgiApp {
    let mut app = WsgiApp::new(
        APP,
        WsgiAppSpec {
            image: "registry.invalid/stand-in:never-pulled".into(),
            app: "demo:application".into(),
            port: Some(i32::from(port)),
            admin_port: Some(i32::from(admin)),
            workers: Some(WorkersSpec {
                min: Some(1),
                max: Some(4),
                ..WorkersSpec::default()
            }),
            replicas: Some(ReplicasSpec {
                min: Some(1),
                max: Some(1),
                ..ReplicasSpec::default()
            }),
            autoscaling: Some(AutoscalingSpec {
                enabled: Some(true),
                tick_seconds: Some(2),
                ..AutoscalingSpec::default()
            }),
            ..WsgiAppSpec::default()
        },
    );
    app.metadata.namespace = Some(ns.to_string());
    app
}

/// `clients` loops of `GET /work?ms=40` (and one in ten a 404) against `addr` while `run`.
async fn load(addr: SocketAddr, clients: usize, run: Arc<AtomicBool>) -> u64 {
    let ok = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (run, ok) = (run.clone(), ok.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while run.load(Ordering::Relaxed) {
                    n += 1;
                    let path = if (n + c as u64).is_multiple_of(10) {
                        "/missing"
                    } else {
                        "/work?ms=40"
                    };
                    if http_get(addr, path).await.is_some() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    ok.load(Ordering::Relaxed)
}

#[tokio::test]
async fn every_dashboard_panel_has_data_in_a_real_prometheus() {
    let (Some(prometheus), Some(_)) = (tool("prometheus"), tool("promtool")) else {
        wsgiscale_envtest::skip_line("monitoring: no prometheus (apt-get install prometheus)");
        return;
    };
    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    let client = cluster.client().await;
    install_crd(&client, MANAGER).await;
    let ns = TestNamespace::create(cluster, "monitoring").await;
    let work = std::env::temp_dir().join(format!("wsgiscale-monitoring-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("temp dir");

    // The server: the app's one pod.
    let (port, admin) = (free_port(), free_port());
    let server = Proc {
        child: Command::new(server_bin())
            .arg("serve")
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--admin-bind", &format!("127.0.0.1:{admin}")])
            .args(["--workers", "1:4", "--cheaper-algo", "spare2"])
            .arg("--chdir")
            .arg(repo().join("examples/apps"))
            .arg("demo:application")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start wsgiscale serve (cargo build -p wsgiscale-sidecar, or WSGISCALE_BIN)"),
        dir: None,
    };
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
    eventually("the server's /load", 60, || async {
        http_get(admin_addr, "/load")
            .await
            .filter(|(c, _)| *c == 200)
    })
    .await;

    // The operator.
    let op_port = free_port();
    let op_addr = SocketAddr::from(([127, 0, 0, 1], op_port));
    let operator = Proc {
        child: Command::new(env!("CARGO_BIN_EXE_wsgiscale-operator"))
            .args(["run", "--namespace", &ns.name, "--leader-election", "false"])
            .args(["--http-bind", &op_addr.to_string()])
            .env("KUBECONFIG", cluster.kubeconfig())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join("operator.log")).expect("operator log"))
            .spawn()
            .expect("start wsgiscale-operator"),
        dir: None,
    };

    // Prometheus, scraping both as the chart's monitors would label them.
    let prom_port = free_port();
    let prom_addr = SocketAddr::from(([127, 0, 0, 1], prom_port));
    let rules = repo().join("charts/wsgiscale/files/prometheus/rules.yaml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n\
         \x20 - job_name: wsgiscale-apps\n    static_configs:\n\
         \x20     - targets: ['127.0.0.1:{admin}']\n        labels: {{namespace: {ns}, pod: {APP}-0, wsgiapp: {APP}}}\n\
         \x20 - job_name: wsgiscale-operator\n    honor_labels: true\n    static_configs:\n\
         \x20     - targets: ['127.0.0.1:{op_port}']\n        labels: {{namespace: wsgiscale-system}}\n",
        rules = rules.display(),
        ns = ns.name,
    );
    std::fs::write(work.join("prometheus.yml"), config).expect("prometheus config");
    let prom = Proc {
        child: Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                work.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join("prometheus.log")).expect("prometheus log"))
            .spawn()
            .expect("start prometheus"),
        dir: Some(work.clone()),
    };
    eventually("prometheus to be ready", 60, || async {
        http_get(prom_addr, "/-/ready")
            .await
            .filter(|(c, _)| *c == 200)
    })
    .await;
    let start = unix_now();

    let apps: Api<WsgiApp> = Api::namespaced(client.clone(), &ns.name);
    apps.patch(
        APP,
        &PatchParams::apply(MANAGER),
        &Patch::Apply(&app(&ns.name, port, admin)),
    )
    .await
    .expect("apply the WsgiApp");
    // The Deployment's pod (no scheduler, no kubelet: it stays Pending) plays the server.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod = eventually("the app's pod", 90, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("wsgiscale.dev/app={APP}")))
            .await
            .ok()?;
        list.items.first().map(|p| p.name_any())
    })
    .await;
    wsgiscale_envtest::mark_pod_ready(&pods, &pod, "127.0.0.1")
        .await
        .expect("mark the pod ready");

    // The app becomes Ready, the autoscaler writes its status: the operator's per-app series
    // and its scrapes exist.
    eventually(
        "the app Ready with the autoscaler's status",
        120,
        || async {
            let a = apps.get(APP).await.ok()?;
            let s = a.status?;
            let ready = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            (ready && s.autoscaler.is_some()).then_some(())
        },
    )
    .await;

    // A short load: queueing, worker scaling, latencies; and a change of the spec in the
    // middle of it (a reconcile that applies the ConfigMap).
    let run = Arc::new(AtomicBool::new(true));
    let loader = tokio::spawn(load(
        SocketAddr::from(([127, 0, 0, 1], port)),
        8,
        run.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut changed = app(&ns.name, port, admin);
    changed.spec.workers.as_mut().expect("workers").max = Some(6);
    apps.patch(APP, &PatchParams::apply(MANAGER), &Patch::Apply(&changed))
        .await
        .expect("change the WsgiApp");
    tokio::time::sleep(Duration::from_secs(10)).await;
    run.store(false, Ordering::Relaxed);
    let served = loader.await.expect("load");
    assert!(served > 50, "the load got {served} answers");
    // Rates over the end of the run need a few scrapes after it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let end = unix_now();

    // Every panel's query: no error, and data (a finite value) somewhere in the run.
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in dashboards() {
        let (queries, variables) = dashboard_queries(&file);
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        for (title, expr) in queries {
            let q = substitute(&expr, &ns.name);
            let path = format!(
                "/api/v1/query_range?query={}&start={start}&end={end}&step=2",
                enc(&q)
            );
            checked += 1;
            match http_get(prom_addr, &path).await {
                Some((200, body)) => {
                    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let finite = v["data"]["result"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
                        .filter_map(|p| p[1].as_str().and_then(|x| x.parse::<f64>().ok()))
                        .any(f64::is_finite);
                    if !finite {
                        failures.push(format!("{name} / {title}: no data: {q}"));
                    }
                }
                other => failures.push(format!("{name} / {title}: {other:?}: {q}")),
            }
        }
        // The variables list this app: `label_values(METRIC, LABEL)`.
        for var in variables {
            let inner = var
                .trim()
                .strip_prefix("label_values(")
                .and_then(|v| v.strip_suffix(')'))
                .expect("label_values(...)");
            let (metric, label) = inner.rsplit_once(',').expect("METRIC, LABEL");
            let metric = substitute(metric.trim(), &ns.name);
            let path = format!(
                "/api/v1/label/{}/values?match[]={}&start={start}&end={end}",
                label.trim(),
                enc(&metric)
            );
            let want = if label.trim() == "namespace" {
                ns.name.clone()
            } else {
                APP.to_string()
            };
            let values = http_get(prom_addr, &path)
                .await
                .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                .map(|v| v["data"].clone())
                .unwrap_or(Value::Null);
            if !values
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(want.as_str())))
            {
                failures.push(format!(
                    "{name}: variable {var} does not list {want}: {values}"
                ));
            }
        }
    }
    // Every alerting rule evaluated without error (none should fire on a healthy app).
    let rules_state = http_get(prom_addr, "/api/v1/rules")
        .await
        .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
        .expect("the rules API");
    let mut rules_seen = 0;
    for group in rules_state["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for rule in group["rules"].as_array().into_iter().flatten() {
            rules_seen += 1;
            let name = rule["name"].as_str().unwrap_or("?");
            if rule["health"] != "ok" {
                failures.push(format!(
                    "rule {name}: health {} {}",
                    rule["health"], rule["lastError"]
                ));
            }
            if rule["state"] == "firing" {
                failures.push(format!("rule {name} fires on a healthy app"));
            }
        }
    }
    assert!(rules_seen >= 8, "the rules were not loaded: {rules_state}");
    eprintln!("monitoring: {checked} panel queries, {rules_seen} rules, {served} requests");
    if !failures.is_empty() {
        let log = std::fs::read_to_string(work.join("operator.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "{} problems:\n{}\noperator log (last lines, newest first):\n{}",
            failures.len(),
            failures.join("\n"),
            tail.join("\n")
        );
    }
    drop(prom);
    drop(operator);
    drop(server);
}
