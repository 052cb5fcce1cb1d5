//! The activator's path end to end, against a real API server with the stand-in node (real
//! server processes in their own network namespaces, their CPU limits, a stand-in kube-proxy
//! that follows EndpointSlices): the operator (in-process, with its demand endpoint) routes
//! an autoscaled app with `scaleToZero` through the activator (in-process, listening on the
//! node's address as a pod would), and
//!
//! - at zero pods the app's Service leads to the activator (the operator's EndpointSlice; the
//!   public Service has no selector), and a request through the Service is held, its demand
//!   pushed, a pod started from zero and the request answered, with its time measured;
//! - the ScaledUp Event says the activator's held requests caused it;
//! - a step through the Service while one pod serves loses no request while the activator
//!   enters the path, a second pod starts and the path goes back to the pods;
//! - an activator replica rolled under load (its endpoint terminating, then SIGTERM) loses no
//!   request and drains;
//! - after the idle period the app goes back to zero pods, the activator in the path before
//!   the last pod goes, and the next request wakes it again;
//! - at zero with an image no node can pull, a held request gets 503 with Retry-After at its
//!   deadline and the status names the image pull.
//!
//! Needs root (the stand-in node) and the envtest assets; elsewhere it says why and passes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wsgiscale_activator::{Activator, Config};
use wsgiscale_envtest::load::{free_port, get_once as get};
use wsgiscale_envtest::node::plan::Image;
use wsgiscale_envtest::node::NodeConfig;
use wsgiscale_envtest::standin::{StandIn, StandInConfig};
use wsgiscale_envtest::TestNamespace;
use wsgiscale_operator::metrics::Metrics;
use wsgiscale_operator::reconcile::Context;
use wsgiscale_operator::routing::{ActivatorConfig, DemandBoard, Routing};
use wsgiscale_operator::run::run_controllers;

mod support;
use support::{eventually, install_crd, repo, server_bin};

const MANAGER: &str = "wsgiscale-activator-path-test";
const IMAGE: &str = "wsgiscale:activator-path";
const ACTIVATOR_SERVICE: &str = "wsgiscale-activator";
const ROUTES: &str = "wsgiscale-activator-routes";

fn app() -> serde_json::Value {
    json!({
        "apiVersion": "wsgiscale.dev/v1alpha1", "kind": "WsgiApp", "metadata": {"name": "web"},
        "spec": {
            "image": IMAGE, "app": "demo:application", "chdir": "/app",
            "workers": {"min": 1, "max": 2},
            "replicas": {"min": 0, "max": 2},
            "autoscaling": {"enabled": true, "stableWindowSeconds": 10, "panicWindowSeconds": 2,
                            "tickSeconds": 1},
            "scaleToZero": {"enabled": true, "idleSeconds": 30},
            "service": {"port": 80},
            "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}},
        },
    })
}

/// An activator replica on `ip` (its "pod" address), following the routes in `namespace` and
/// pushing demand to the operator's port on loopback.
fn activator_config(
    ip: std::net::IpAddr,
    namespace: &str,
    operator_port: u16,
    name: &str,
) -> Config {
    Config {
        listen_ip: ip,
        admin_bind: SocketAddr::from(([127, 0, 0, 1], free_port())),
        routes_namespace: namespace.into(),
        routes_configmap: ROUTES.into(),
        operator_url: Some(format!("http://127.0.0.1:{operator_port}")),
        pod_name: name.into(),
        drain_timeout: Duration::from_secs(20),
        namespaces: vec![namespace.into()],
        drain_delay: Duration::from_secs(3),
        backlog_per_slot: wsgiscale_activator::app::Backlog::Auto,
        max_connections: 10_000,
    }
}

/// The activator Service's EndpointSlice listing `endpoints` (address, conditions), as the
/// endpointslice controller writes it for the chart's headless Service.
fn activator_slice(endpoints: &[(std::net::Ipv4Addr, serde_json::Value)]) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, c)| json!({"addresses": [ip.to_string()], "conditions": c}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "wsgiscale-activator-1",
                     "labels": {"kubernetes.io/service-name": ACTIVATOR_SERVICE}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "admin", "port": 9090, "protocol": "TCP"}],
    })
}

async fn replicas(deploys: &Api<Deployment>) -> Option<i32> {
    deploys.get_opt("web").await.ok().flatten()?.spec.replicas
}

/// The port of the operator's EndpointSlice of the public Service, when it exists.
async fn public_port(slices: &Api<EndpointSlice>) -> Option<i32> {
    slices
        .get_opt("web-wsgiscale")
        .await
        .ok()
        .flatten()?
        .ports?
        .first()?
        .port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_from_zero_through_the_activator_and_back_to_zero_when_idle() {
    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    if let Err(why) = wsgiscale_envtest::node::check_available() {
        wsgiscale_envtest::skip_line(&format!("stand-in node: {why}"));
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter("wsgiscale_operator=debug,wsgiscale_activator=debug,kube=warn")
        .with_test_writer()
        .try_init();
    let client = cluster.client().await;
    install_crd(&client, MANAGER).await;
    let ns = TestNamespace::create(cluster, "activator-path").await;
    let standin = StandIn::start(
        client.clone(),
        StandInConfig {
            node: NodeConfig {
                name: format!("activator-path-{}", std::process::id()),
                namespaces: vec![ns.name.clone()],
                start_delay: Duration::from_millis(500),
                images: BTreeMap::from([(
                    IMAGE.to_string(),
                    Image {
                        path: vec![server_bin().parent().expect("bin dir").to_path_buf()],
                        files: vec![("/app".into(), repo().join("examples/apps"))],
                        workdir: Some("/app".into()),
                        ..Image::default()
                    },
                )]),
                ..NodeConfig::default()
            },
            metrics_resolution: Duration::from_secs(15),
        },
    )
    .await
    .expect("the stand-ins start");
    let node_ip = standin.node.address();
    let pp = PatchParams::apply(MANAGER).force();

    // The activator "pod": the node's address, published like the chart's headless Service.
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    services
        .patch(
            ACTIVATOR_SERVICE,
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": ACTIVATOR_SERVICE},
                "spec": {"clusterIP": "None", "ports": [{"name": "admin", "port": 9090}]},
            })),
        )
        .await
        .expect("activator service");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns.name);
    slices
        .patch(
            "wsgiscale-activator-1",
            &pp,
            &Patch::Apply(activator_slice(&[(node_ip, json!({"ready": true}))])),
        )
        .await
        .expect("activator slice");

    // The operator, in-process, with its demand endpoint on loopback.
    let stop = CancellationToken::new();
    let demand = Arc::new(DemandBoard::default());
    let routing = Arc::new(Routing::new(
        client.clone(),
        ActivatorConfig {
            namespace: ns.name.clone(),
            service: ACTIVATOR_SERVICE.into(),
            routes: ROUTES.into(),
        },
        demand,
    ));
    let metrics = Arc::new(Metrics::default());
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            Some("activator-path".into()),
            metrics.clone(),
            Duration::from_secs(60),
        )
        .with_routing(Some(routing.clone())),
    );
    let http_port = free_port();
    let listener = wsgiscale_operator::http::bind(SocketAddr::from(([127, 0, 0, 1], http_port)))
        .await
        .expect("bind");
    let http = tokio::spawn(wsgiscale_operator::http::serve(
        listener,
        ctx.health.clone(),
        metrics,
        Some(routing),
        stop.clone(),
    ));
    let operator = {
        let (ctx, ns, stop) = (ctx.clone(), ns.name.clone(), stop.clone());
        tokio::spawn(async move { run_controllers(&ctx, &[ns], 2, stop).await })
    };

    // The activator, in-process, on the node's address.
    let activator = Arc::new(Activator::new(activator_config(
        node_ip.into(),
        &ns.name,
        http_port,
        "activator-path-test",
    )));
    let activator_stop = CancellationToken::new();
    let activator_run = {
        let (a, c, s) = (activator.clone(), client.clone(), activator_stop.clone());
        tokio::spawn(async move { a.run(c, s).await })
    };

    let apps: Api<wsgiscale_operator::crd::WsgiApp> = Api::namespaced(client.clone(), &ns.name);
    apps.patch("web", &pp, &Patch::Apply(app()))
        .await
        .expect("the WsgiApp with replicas.min 0 and scaleToZero is accepted");
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);

    // At zero pods the Service leads to the activator, and has no selector.
    let port = eventually("the public slice on the activator's port", 60, || async {
        public_port(&slices).await.filter(|p| *p >= 20000)
    })
    .await;
    assert_eq!(replicas(&deploys).await, Some(0), "the app starts at zero");
    eventually("the public Service without a selector", 60, || async {
        let svc = services.get_opt("web").await.ok().flatten()?;
        svc.spec?.selector.is_none().then_some(())
    })
    .await;
    let service = standin
        .proxy
        .wait_for(&ns.name, "web", 80, Duration::from_secs(60))
        .await
        .expect("the stand-in kube-proxy serves the Service");
    let activator_addr = SocketAddr::from((node_ip, u16::try_from(port).expect("port")));
    eventually("the activator listening on the app's port", 60, || async {
        tokio::net::TcpStream::connect(activator_addr)
            .await
            .ok()
            .map(|_| ())
    })
    .await;

    // The first request: held, a pod started from zero, answered.
    let (code, took, text) = get(service, "/work?ms=10").await;
    assert_eq!(
        code, 200,
        "the first request after zero is answered: {text}"
    );
    eprintln!(
        "cold start through the activator: {} ms (pod start delay 500 ms + import + readiness)",
        took.as_millis()
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    eventually("a ScaledUp Event naming the held requests", 30, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("ScaledUp")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("held by the activator"))
            })
            .then_some(())
    })
    .await;

    // A step while one pod serves: 40 req/s of 100 ms requests for 15 s (4 in flight on
    // average, twice one pod's 2 slots): the activator takes the path, a second pod comes,
    // the path goes back to the pods. Not one request may fail on the way.
    let arrivals: Vec<f64> = (0..600).map(|i| f64::from(i) / 40.0).collect();
    let records = wsgiscale_envtest::load::run(
        service,
        &arrivals,
        "/work?ms=100",
        Duration::from_secs(60),
        Arc::new(wsgiscale_envtest::load::Progress::default()),
    )
    .await;
    let failed: Vec<_> = records.iter().filter(|r| !r.outcome.ok()).collect();
    let mut latencies: Vec<f64> = records.iter().map(|r| r.latency).collect();
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "step through the Service: {} requests, {} failed, p50 {:.0} ms, p99 {:.0} ms",
        records.len(),
        failed.len(),
        latencies[latencies.len() / 2] * 1000.0,
        latencies[latencies.len() * 99 / 100] * 1000.0
    );
    assert!(
        failed.is_empty(),
        "no request lost while the path switches: {:?}",
        &failed[..failed.len().min(5)]
    );
    let reasons = |list: &[Event]| -> Vec<String> {
        list.iter()
            .filter_map(|e| {
                let r = e.reason.clone()?;
                (r.starts_with("Activator") || r.starts_with("Scaled"))
                    .then(|| format!("{r}: {}", e.note.clone().unwrap_or_default()))
            })
            .collect()
    };
    let seen = eventually(
        "the path to go back to the pods after the step",
        60,
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            let r = reasons(&list.items);
            r.iter()
                .any(|n| n.starts_with("ActivatorOutOfPath"))
                .then_some(r)
        },
    )
    .await;
    eprintln!("events: {seen:#?}");

    // The activator rolled under load: a second replica on another address of the node, the
    // activator always in the path (burstCapacity -1), 20 req/s; 4 s in, the first replica
    // is deleted as the kubelet does it (its endpoint terminating, then SIGTERM). Not one
    // request may fail, and the first replica drains and returns.
    let mut always = app();
    always["spec"]["autoscaling"]["burstCapacity"] = json!(-1);
    apps.patch("web", &pp, &Patch::Apply(always))
        .await
        .expect("burstCapacity -1");
    let second_ip = standin.node.add_host_address().expect("a second address");
    let second = Arc::new(Activator::new(activator_config(
        second_ip.into(),
        &ns.name,
        http_port,
        "activator-path-test-2",
    )));
    let second_stop = CancellationToken::new();
    let second_run = {
        let (a, c, s) = (second.clone(), client.clone(), second_stop.clone());
        tokio::spawn(async move { a.run(c, s).await })
    };
    let both = |first: serde_json::Value, second: serde_json::Value| {
        activator_slice(&[(node_ip, first), (second_ip, second)])
    };
    let ready = json!({"ready": true, "serving": true, "terminating": false});
    slices
        .patch(
            "wsgiscale-activator-1",
            &pp,
            &Patch::Apply(both(ready.clone(), ready.clone())),
        )
        .await
        .expect("two activators");
    eventually("the app's slice listing both activators", 60, || async {
        let s = slices.get_opt("web-wsgiscale").await.ok().flatten()?;
        let n = s.endpoints.as_ref().map_or(0, Vec::len);
        (n == 2 && s.ports?.first()?.port == Some(port)).then_some(())
    })
    .await;
    eventually("the second activator listening", 30, || async {
        let addr = SocketAddr::from((second_ip, u16::try_from(port).ok()?));
        tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await;
    let arrivals: Vec<f64> = (0..240).map(|i| f64::from(i) / 20.0).collect();
    let load = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            wsgiscale_envtest::load::run(
                service,
                &arrivals,
                "/work?ms=100",
                Duration::from_secs(60),
                Arc::new(wsgiscale_envtest::load::Progress::default()),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    slices
        .patch(
            "wsgiscale-activator-1",
            &pp,
            &Patch::Apply(both(
                json!({"ready": false, "serving": true, "terminating": true}),
                ready.clone(),
            )),
        )
        .await
        .expect("the first activator terminating");
    activator_stop.cancel();
    let records = load.await.expect("load");
    let failed: Vec<_> = records.iter().filter(|r| !r.outcome.ok()).collect();
    eprintln!(
        "activator rolled under load: {} requests, {} failed",
        records.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "nothing lost while an activator is rolled: {:?}",
        &failed[..failed.len().min(5)]
    );
    tokio::time::timeout(Duration::from_secs(30), activator_run)
        .await
        .expect("the first activator drains in time")
        .expect("task")
        .expect("the first activator ran and drained");
    slices
        .patch(
            "wsgiscale-activator-1",
            &pp,
            &Patch::Apply(activator_slice(&[(second_ip, ready)])),
        )
        .await
        .expect("the first activator gone");

    // Idle for 30 s: the activator takes the path first, then the last pod goes.
    let t = Instant::now();
    eventually("the app back at zero pods", 180, || async {
        (replicas(&deploys).await == Some(0)).then_some(())
    })
    .await;
    eprintln!(
        "back to zero {} s after the last request",
        t.elapsed().as_secs()
    );
    assert_eq!(
        public_port(&slices).await,
        Some(port),
        "at zero the Service leads to the activator"
    );
    eventually("the pod gone", 60, || async {
        (!standin.node.pods().iter().any(|p| p.namespace == ns.name)).then_some(())
    })
    .await;

    // And it wakes again.
    let (code, took, text) = get(service, "/work?ms=10").await;
    assert_eq!(
        code, 200,
        "the request after the second zero is answered: {text}"
    );
    eprintln!("second cold start: {} ms", took.as_millis());

    // At zero with an image no node can pull: the held request gets 503 with Retry-After at
    // its deadline (3 s here), not a hang, and the status says why the pods do not start.
    let mut bad = app();
    bad["spec"]["image"] = json!("registry.invalid/nothing:1");
    bad["spec"]["activator"] = json!({"maxWaitSeconds": 3});
    apps.patch("web", &pp, &Patch::Apply(bad))
        .await
        .expect("a bad image");
    eventually(
        "the app back at zero pods with the bad image",
        180,
        || async {
            let zero = replicas(&deploys).await == Some(0)
                && !standin.node.pods().iter().any(|p| p.namespace == ns.name);
            zero.then_some(())
        },
    )
    .await;
    // The activator follows the new hold limit from the route table.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, took, text) = get(service, "/work?ms=10").await;
    assert_eq!(code, 503, "held until the deadline: {text}");
    assert!(text.to_ascii_lowercase().contains("retry-after"), "{text}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "answered at its deadline: {took:?}"
    );
    let why = eventually("a status naming the image pull", 60, || async {
        let app = apps.get("web").await.ok()?;
        let conditions = app.status?.conditions;
        let text = serde_json::to_string(&conditions).ok()?;
        text.contains("ImagePull").then_some(text)
    })
    .await;
    eprintln!("status with the bad image: {why}");

    second_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), second_run).await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), operator).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), http).await;
    standin.node.stop_at_once(&ns.name);
    standin.stop().await;
    drop(ns);
}
