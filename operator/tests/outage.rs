//! The operator survives an API server outage: the real `wsgiscale-operator run` process
//! against the envtest control plane, whose kube-apiserver this test stops and starts again.
//! While the API server is away `/readyz` turns false; once it is back every watch resumes by
//! itself, readiness returns, and a change made after the outage is applied. Run with and
//! without leader election (with it, losing and regaining the Lease restarts the controllers;
//! without it, nothing but the watches' own recovery can).
//!
//! Only against the envtest control plane: an existing cluster's API server is not this
//! test's to stop.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsgiscale_envtest::TestNamespace;
use wsgiscale_operator::crd::WsgiApp;

mod support;
use support::{eventually, example_app, install_crd};

const MANAGER: &str = "wsgiscale-outage-test";

/// How long the API server stays away: longer than every retry the client makes on its own.
const OUTAGE: Duration = Duration::from_secs(45);

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

    for leader_election in [false, true] {
        let tag = if leader_election { "le" } else { "nole" };
        eprintln!("outage: leader election {leader_election}");
        let ns = TestNamespace::create(cluster, &format!("outage-{tag}")).await;
        let http = free_addr();
        let log =
            std::fs::File::create(std::env::temp_dir().join(format!("wsgiscale-outage-{tag}.log")))
                .expect("log file");
        let _operator = Operator(
            Command::new(env!("CARGO_BIN_EXE_wsgiscale-operator"))
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
        let (apps, cms) = apis().await;
        apps.patch(
            "shop",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&example_app(&ns.name)),
        )
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

        cp.stop_apiserver();
        wait_for("readiness to turn false in the outage", 60, || async {
            readyz(http).await == Some(false)
        })
        .await;
        tokio::time::sleep(OUTAGE).await;
        cp.start_apiserver().expect("start the API server again");

        wait_for("readiness after the outage", 90, || async {
            readyz(http).await == Some(true)
        })
        .await;
        let (apps, cms) = apis().await;
        let mut changed = example_app(&ns.name);
        changed.spec.workers.as_mut().expect("workers").max = Some(12);
        apps.patch(
            "shop",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&changed),
        )
        .await
        .expect("apply the change after the outage");
        wait_for("the change made after the outage", 60, || async {
            config_has(&cms, "workers: \"2:12\"").await
        })
        .await;
    }
}
