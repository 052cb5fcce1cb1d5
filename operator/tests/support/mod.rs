//! What the operator's real-API-server tests share: the CRD installed and established, the
//! example WsgiApp, and waiting for a condition with a deadline.

#![allow(dead_code)] // each test binary uses its own part

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use wsgiscale_operator::crd::{crd, WsgiApp};

/// Polls `f` every quarter second until it returns Some, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Applies the CRD of this build (server-side, as `manager`) and waits until it is served.
pub async fn install_crd(client: &Client, manager: &str) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crd();
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the CRD");
    wait_established(client).await;
}

/// Waits until the WsgiApp CRD (however it was installed) is Established.
pub async fn wait_established(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd().name_any();
    eventually("the CRD to be established", 60, || {
        let crds = crds.clone();
        let name = name.clone();
        async move {
            let c = crds.get(&name).await.ok()?;
            let established = c
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        }
    })
    .await;
}

/// The WsgiApp of examples/wsgiapp.yaml, moved to `ns`.
pub fn example_app(ns: &str) -> WsgiApp {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/wsgiapp.yaml");
    let text = std::fs::read_to_string(path).expect("examples/wsgiapp.yaml");
    let doc = text
        .split("\n---")
        .find(|d| d.contains("kind: WsgiApp"))
        .expect("the example holds a WsgiApp");
    let mut app: WsgiApp = serde_saphyr::from_str(doc).expect("the example parses");
    app.metadata.namespace = Some(ns.to_string());
    app
}

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The server binary: WSGISCALE_BIN, else target/release/wsgiscale when built, else the
/// target/debug/wsgiscale that `cargo test --workspace` builds.
pub fn server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("WSGISCALE_BIN") {
        return PathBuf::from(bin);
    }
    // The newer of the two builds: a release binary left from an older commit must not stand
    // in for the debug one `cargo test` just built (or the other way round).
    let built = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let release = repo().join("target/release/wsgiscale");
    let debug = repo().join("target/debug/wsgiscale");
    match (built(&release), built(&debug)) {
        (Some(r), Some(d)) if r >= d => release,
        (Some(_), None) => release,
        _ => debug,
    }
}
