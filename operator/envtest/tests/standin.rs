//! The stand-in node, kube-proxy and metrics-server against the real control plane: a
//! Deployment's pods run as processes in their own network namespaces and cgroups, become
//! Ready through their own readiness probes, are published in EndpointSlices by the real
//! endpointslice controller and reached through the stand-in kube-proxy; a pod limited to
//! 250m of CPU uses a quarter of a core, which the metrics APIs report, and the real HPA
//! controller acts on it; a bad image waits in ErrImagePull; deleted pods stop and leave
//! nothing behind.
//!
//! Needs root (network namespaces, cgroups): elsewhere it prints why and passes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;
use wsgiscale_envtest::node::plan::Image;
use wsgiscale_envtest::node::NodeConfig;
use wsgiscale_envtest::standin::{StandIn, StandInConfig};
use wsgiscale_envtest::TestNamespace;

const IMAGE: &str = "python:stand-in";

fn python_dir() -> PathBuf {
    // The machine's plain CPython (no pyenv shim: a shim needs HOME and its own PATH).
    for p in ["/usr/bin/python3", "/usr/local/bin/python3"] {
        let p = PathBuf::from(p);
        if p.exists() {
            return p.parent().map(PathBuf::from).unwrap_or_default();
        }
    }
    PathBuf::from("/usr/bin")
}

fn deployment(
    name: &str,
    command: &[&str],
    port: Option<i32>,
    cpu: &str,
    image: &str,
) -> serde_json::Value {
    let mut container = json!({
        "name": "app",
        "image": image,
        "command": command,
        "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}, "limits": {"cpu": cpu, "memory": "256Mi"}},
    });
    if let Some(p) = port {
        container["ports"] = json!([{"name": "http", "containerPort": p}]);
        container["readinessProbe"] =
            json!({"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1});
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 5, "containers": [container]},
            },
        },
    })
}

async fn wait<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Prints the pods' status when the test fails (what the node reported).
struct DumpOnPanic(Option<Box<dyn FnOnce() + Send>>);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
}

async fn http_get(addr: SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    wsgiscale_envtest::node::probe::parse_status_line(&buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_limited_ready_routed_measured_and_scaled() {
    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    if let Err(why) = wsgiscale_envtest::node::check_available() {
        wsgiscale_envtest::skip_line(&format!("stand-in node: {why}"));
        return;
    }
    let ns = TestNamespace::create(cluster, "standin").await;
    let client = cluster.client().await;
    let standin = StandIn::start(
        client.clone(),
        StandInConfig {
            node: NodeConfig {
                name: format!("standin-test-{}", std::process::id()),
                namespaces: vec![ns.name.clone()],
                start_delay: Duration::from_millis(500),
                images: BTreeMap::from([(
                    IMAGE.to_string(),
                    Image {
                        path: vec![python_dir()],
                        ..Image::default()
                    },
                )]),
                ..NodeConfig::default()
            },
            metrics_resolution: Duration::from_secs(5),
        },
    )
    .await
    .expect("the stand-ins start");

    let pp = PatchParams::apply("standin-test").force();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // A web server behind a Service, and a CPU burner limited to 250m.
    deploys
        .patch(
            "web",
            &pp,
            &Patch::Apply(deployment(
                "web",
                &["python3", "-m", "http.server", "8080"],
                Some(8080),
                "100m",
                IMAGE,
            )),
        )
        .await
        .expect("web");
    deploys
        .patch(
            "burn",
            &pp,
            &Patch::Apply(deployment(
                "burn",
                &["python3", "-c", "while True: pass"],
                None,
                "250m",
                IMAGE,
            )),
        )
        .await
        .expect("burn");
    deploys
        .patch(
            "bad",
            &pp,
            &Patch::Apply(deployment(
                "bad",
                &["true"],
                None,
                "100m",
                "registry.invalid/nope:1",
            )),
        )
        .await
        .expect("bad");
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    services
        .patch(
            "web",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
            })),
        )
        .await
        .expect("service");

    // Ready through its own probe, with a pod address from the node's network.
    let dump = pods.clone();
    let _guard = DumpOnPanic(Some(Box::new(move || {
        let pods = dump.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            rt.block_on(async {
                if let Ok(list) = pods.list(&ListParams::default()).await {
                    for p in list.items {
                        eprintln!(
                            "{}: {}",
                            p.metadata.name.unwrap_or_default(),
                            serde_json::to_string(&p.status).unwrap_or_default()
                        );
                    }
                }
            })
        })
        .join()
        .ok();
    })));
    let web = wait("the web pod Ready", Duration::from_secs(60), async || {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        list.items.into_iter().find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    })
    .await;
    let ip = web.status.and_then(|s| s.pod_ip).expect("a pod IP");
    assert!(ip.starts_with("198.18."), "{ip}");

    // Through the Service, as clients reach it.
    let addr = standin
        .proxy
        .wait_for(&ns.name, "web", 80, Duration::from_secs(30))
        .await
        .expect("the Service gets an address");
    let code = wait(
        "a response through the Service",
        Duration::from_secs(30),
        async || http_get(addr).await,
    )
    .await;
    assert_eq!(code, 200);

    // The burner is held to a quarter of a core, as the metrics API reports.
    let pod_metrics = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "PodMetrics"),
        "pods",
    );
    let metrics: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &pod_metrics);
    let cpu = wait(
        "CPU metrics of the burner",
        Duration::from_secs(60),
        async || {
            let list = metrics
                .list(&ListParams::default().labels("app=burn"))
                .await
                .ok()?;
            let item = list.items.first()?;
            let cpu = item.data["containers"][0]["usage"]["cpu"]
                .as_str()?
                .strip_suffix('n')?
                .parse::<f64>()
                .ok()?
                / 1e9;
            // The first window may include the start-up; wait for a full one at the limit.
            (cpu > 0.15).then_some(cpu)
        },
    )
    .await;
    assert!(cpu < 0.30, "the 250m limit holds: {cpu} cores");

    // The real HPA controller reads it (CPU at 100% of its request, target 50%: 2 pods).
    let hpas = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("autoscaling", "v2", "HorizontalPodAutoscaler"),
        "horizontalpodautoscalers",
    );
    let hpa_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &hpas);
    hpa_api
        .patch(
            "burn",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "burn"},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"},
                    "minReplicas": 1, "maxReplicas": 2,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
                },
            })),
        )
        .await
        .expect("hpa");
    wait(
        "the HPA to scale the burner to 2",
        Duration::from_secs(120),
        async || {
            let d = deploys.get("burn").await.ok()?;
            (d.spec.replicas? == 2).then_some(())
        },
    )
    .await;

    // The custom metric: requests in flight through the proxy, per pod.
    let raw = client
        .request_text(
            http::Request::get(format!(
                "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{}/pods/*/requests_in_flight?labelSelector=app%3Dweb",
                ns.name
            ))
            .body(Vec::new())
            .expect("request"),
        )
        .await
        .expect("the custom metrics API answers");
    assert!(raw.contains("MetricValueList"), "{raw}");
    // And the real HPA controller reads it: an HPA on it becomes ScalingActive with a current
    // value. (It asks for `pods/%2A/...`; before the stand-in decoded the path, it got an empty
    // list, "no metrics returned from custom metrics API", and never scaled.)
    hpa_api
        .patch(
            "web",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "web"},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                    "minReplicas": 1, "maxReplicas": 2,
                    "metrics": [{"type": "Pods", "pods": {
                        "metric": {"name": "requests_in_flight"},
                        "target": {"type": "AverageValue", "averageValue": "10"},
                    }}],
                },
            })),
        )
        .await
        .expect("hpa on requests in flight");
    let current = wait(
        "the HPA on requests in flight to read the metric",
        Duration::from_secs(90),
        async || {
            let h = hpa_api.get("web").await.ok()?;
            let status = h.data.get("status")?;
            let active = status["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "ScalingActive" && c["status"] == "True");
            let value = status["currentMetrics"][0]["pods"]["current"]["averageValue"].as_str()?;
            active.then(|| value.to_string())
        },
    )
    .await;
    assert!(!current.is_empty());

    // A bad image waits in ErrImagePull / ImagePullBackOff, never starts.
    let reason = wait(
        "the bad pod's image pull error",
        Duration::from_secs(30),
        async || {
            let list = pods
                .list(&ListParams::default().labels("app=bad"))
                .await
                .ok()?;
            let p = list.items.first()?;
            let st = p.status.as_ref()?.container_statuses.as_ref()?.first()?;
            st.state.as_ref()?.waiting.as_ref()?.reason.clone()
        },
    )
    .await;
    assert!(
        reason == "ErrImagePull" || reason == "ImagePullBackOff",
        "{reason}"
    );

    // Deleting the Deployment stops its pods' processes and releases their network.
    deploys
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete web");
    wait("the web pods gone", Duration::from_secs(60), async || {
        let left = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?
            .items
            .len();
        (left == 0).then_some(())
    })
    .await;
    assert!(
        !standin
            .node
            .pods()
            .iter()
            .any(|p| p.name.starts_with("web-")),
        "no web process is left"
    );
    let records = standin.node.records();
    let web_rec = records
        .iter()
        .find(|r| r.name.starts_with("web-"))
        .expect("a record");
    assert!(
        web_rec.ready.is_some() && web_rec.gone.is_some(),
        "{web_rec:?}"
    );

    let prefix = standin.node.netns_prefix();
    standin.stop().await;
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let left = String::from_utf8_lossy(&netns.stdout).to_string();
    assert!(
        !left.lines().any(|l| l.starts_with(&prefix)),
        "network namespaces left: {left}"
    );
}
