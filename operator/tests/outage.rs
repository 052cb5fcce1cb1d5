//! The operator survives an API server outage: the real `wsgiscale-operator run` process
//! against the envtest control plane, whose kube-apiserver this test stops and starts again
//! (its data kept). While the API server is away `/readyz` turns false; once it is back every
//! watch relists at once, readiness returns, and a change made 3 s after the API server
//! answers again is applied within 30 s (the watches' backoff grown during a long outage once
//! delayed it by a minute: see operator/src/watch.rs; OPERATOR_BIN runs the test against
//! another build, e.g. an older one, to see it). During the outage each failing
//! dependency is logged once, not once per attempt: the warnings and errors logged from the
//! stop to the change's arrival stay under a bound that does not grow with the outage. Run
//! with and without leader election (with it, losing and regaining the Lease restarts the
//! controllers; without it, nothing but the watches' own recovery can).
//!
//! The outage lasts WSGISCALE_OUTAGE_SECONDS (default 45; `make test` runs that; the 90 s of
//! bench/RESULTS.md's "Operator at scale" is run by hand):
//!
//! ```text
//! WSGISCALE_OUTAGE_SECONDS=90 cargo test -p wsgiscale-operator --test outage -- --nocapture
//! ```
//!
//! Only against the envtest control plane: an existing cluster's API server is not this
//! test's to stop.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsgiscale_envtest::TestNamespace;
use wsgiscale_operator::crd::WsgiApp;

mod support;
use support::{eventually, example_app, install_crd};

const MANAGER: &str = "wsgiscale-outage-test";

/// How long the API server stays away by default: longer than every retry the client makes on
/// its own.
const OUTAGE_SECONDS: u64 = 45;

fn outage() -> Duration {
    let secs = std::env::var("WSGISCALE_OUTAGE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(OUTAGE_SECONDS);
    Duration::from_secs(secs)
}

/// How soon a change made 3 s after the API server answers again must reach its ConfigMap:
/// three times the 10 s target (the machine is shared), where the backoff grown during the
/// outage once made it a minute.
const CHANGE_DEADLINE: Duration = Duration::from_secs(30);

/// The most warnings and errors the operator may log from the stop of the API server to the
/// arrival of the change after it: a line or two per dependency (the API probe, six watches,
/// the Lease, the autoscaler's and the events' writes) when it fails and when it recovers,
/// whatever the outage's length.
const MAX_OUTAGE_LOG_LINES: usize = 40;

/// The warnings and errors in the log text.
fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

/// The operator process, killed when dropped.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// `GET /readyz` of the operator: Some(true) on 200, Some(false) on 503, None when it does not
/// answer.
async fn readyz(addr: SocketAddr) -> Option<bool> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        Some(text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .ok()
        .flatten()
}

/// Waits until `f` holds, for at most `secs` seconds.
async fn wait_for<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually(what, secs, || {
        let check = f();
        async move { check.await.then_some(()) }
    })
    .await
}

async fn config_has(cms: &Api<ConfigMap>, text: &str) -> bool {
    cms.get_opt("shop-config")
        .await
        .ok()
        .flatten()
        .and_then(|cm| cm.data)
        .and_then(|d| d.get("config.yaml").cloned())
        .is_some_and(|c| c.contains(text))
}

#[tokio::test]
async fn every_watch_comes_back_after_an_api_server_outage() {
    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    let Some(cp) = cluster.control_plane() else {
        wsgiscale_envtest::skip_line(
            "outage: an existing cluster's API server is not ours to stop",
        );
        return;
    };
    install_crd(&cluster.client().await, MANAGER).await;

    let outage = outage();
    for leader_election in [false, true] {
        let tag = if leader_election { "le" } else { "nole" };
        eprintln!(
            "outage: leader election {leader_election}, {} s",
            outage.as_secs()
        );
        let ns = TestNamespace::create(cluster, &format!("outage-{tag}")).await;
        let http = free_addr();
        // Kept (and overwritten by the next run) for a look after a failure.
        let log_path = std::env::temp_dir().join(format!("wsgiscale-outage-{tag}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        // OPERATOR_BIN runs the same test against another build (a release, an older one).
        let bin = std::env::var_os("OPERATOR_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_wsgiscale-operator").into());
        let _operator = Operator(
            Command::new(bin)
                .args([
                    "run",
                    "--namespace",
                    &ns.name,
                    "--lease-namespace",
                    &ns.name,
                ])
                .args(["--http-bind", &http.to_string()])
                .args(["--leader-election", &leader_election.to_string()])
                .args(["--lease-duration-seconds", "6"])
                .env("KUBECONFIG", cluster.kubeconfig())
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start wsgiscale-operator"),
        );

        // Fresh clients after each restart of the API server: this test's own client is not
        // what is under test.
        let apis = || async {
            let c = cluster.client().await;
            (
                Api::<WsgiApp>::namespaced(c.clone(), &ns.name),
                Api::<ConfigMap>::namespaced(c, &ns.name),
            )
        };
        // Autoscaled too: its status writes fail during the outage like every other request.
        let app = || {
            let mut app = example_app(&ns.name);
            app.spec.autoscaling = Some(wsgiscale_operator::crd::AutoscalingSpec {
                enabled: Some(true),
                tick_seconds: Some(2),
                ..Default::default()
            });
            app
        };
        let (apps, cms) = apis().await;
        apps.patch("shop", &PatchParams::apply(MANAGER), &Patch::Apply(&app()))
            .await
            .expect("apply the example");
        wait_for("the ConfigMap", 60, || async {
            config_has(&cms, "workers: \"2:8\"").await
        })
        .await;
        wait_for("readiness", 60, || async {
            readyz(http).await == Some(true)
        })
        .await;

        let log_before = std::fs::read_to_string(&log_path).unwrap_or_default().len();
        let stopped = Instant::now();
        cp.stop_apiserver();
        wait_for("readiness to turn false in the outage", 60, || async {
            readyz(http).await == Some(false)
        })
        .await;
        tokio::time::sleep(outage.saturating_sub(stopped.elapsed())).await;
        cp.start_apiserver().expect("start the API server again");
        let back = Instant::now();
        eprintln!(
            "outage: the API server answers again at {}",
            k8s_openapi::jiff::Timestamp::now()
        );

        // A change 3 s after the API server answers again, without waiting for the operator.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (apps, cms) = apis().await;
        let mut changed = app();
        changed.spec.workers.as_mut().expect("workers").max = Some(12);
        apps.patch(
            "shop",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&changed),
        )
        .await
        .expect("apply the change after the outage");
        let changed_at = Instant::now();
        eprintln!("outage: changed at {}", k8s_openapi::jiff::Timestamp::now());
        wait_for("the change made after the outage", 180, || async {
            config_has(&cms, "workers: \"2:12\"").await
        })
        .await;
        let applied = changed_at.elapsed();
        wait_for("readiness after the outage", 60, || async {
            readyz(http).await == Some(true)
        })
        .await;
        let ready = back.elapsed();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let during = warnings(log.get(log_before..).unwrap_or_default());
        eprintln!(
            "outage: {} s outage ({tag}): the change applied {:.1} s after it was made, ready {:.1} s after the API server; {} warnings/errors logged:\n{}",
            stopped.elapsed().as_secs() - back.elapsed().as_secs(),
            applied.as_secs_f64(),
            ready.as_secs_f64(),
            during.len(),
            during.join("\n")
        );
        assert!(
            applied <= CHANGE_DEADLINE,
            "the change was applied {:.1} s after it was made: the watches did not relist \
             promptly when the API server came back (the log: {})",
            applied.as_secs_f64(),
            log_path.display()
        );
        assert!(
            during.len() <= MAX_OUTAGE_LOG_LINES,
            "{} warnings/errors for one outage: a failing dependency is logged once per change of state",
            during.len()
        );
    }
}
