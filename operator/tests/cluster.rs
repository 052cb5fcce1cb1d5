//! Against a real API server: the envtest control plane of `wsgiscale-envtest` (started from
//! `KUBEBUILDER_ASSETS` or `../shared/envtest`), or with `USE_EXISTING_CLUSTER=true` the
//! cluster of `KUBECONFIG` (kind, or a real one). Without either they skip with one line.
//!
//! ```text
//! cargo test -p wsgiscale-operator --test cluster
//! USE_EXISTING_CLUSTER=true KUBECONFIG=~/.kube/config cargo test -p wsgiscale-operator --test cluster
//! ```
//!
//! Each test installs the CRD (server-side apply), runs the controllers in-process, works in a
//! namespace of its own, deleted when the test ends (also when it fails). The pods need not
//! become ready (there is no kubelet): the tests look at the objects and the status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ResourceQuota, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Client, ResourceExt};
use tokio_util::sync::CancellationToken;
use wsgiscale_envtest::TestNamespace;
use wsgiscale_operator::crd::WsgiApp;
use wsgiscale_operator::metrics::Metrics;
use wsgiscale_operator::reconcile::Context;
use wsgiscale_operator::run::run_controllers;

mod support;
use support::{eventually, example_app, install_crd};

const MANAGER: &str = "wsgiscale-cluster-test";

struct Env {
    client: Client,
    ns: String,
    stop: CancellationToken,
    controllers: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
    _namespace: TestNamespace,
}

impl Env {
    /// The test namespace's objects of kind `K`.
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Applies `app` (named shop) as the test's user would, with server-side apply.
    async fn apply(&self, app: &WsgiApp) -> WsgiApp {
        let apps: Api<WsgiApp> = Api::namespaced(self.client.clone(), &self.ns);
        apps.patch("shop", &PatchParams::apply(MANAGER), &Patch::Apply(app))
            .await
            .expect("apply the app")
    }
}

/// The CRD, a namespace and the controllers; `None` when there is no cluster to test against.
async fn setup(tag: &str) -> Option<Env> {
    let cluster = wsgiscale_envtest::shared()?;
    let client = cluster.client().await;
    install_crd(&client, MANAGER).await;
    let namespace = TestNamespace::create(cluster, tag).await;
    let ns = namespace.name.clone();
    let metrics = Arc::new(Metrics::default());
    let ctx = Arc::new(Context::new(
        client.clone(),
        Some("cluster-test".into()),
        metrics.clone(),
        Duration::from_secs(60),
    ));
    let stop = CancellationToken::new();
    let controllers = {
        let (ns, stop) = (ns.clone(), stop.clone());
        tokio::spawn(async move { run_controllers(&ctx, &[ns], 2, stop).await })
    };
    Some(Env {
        client,
        ns,
        stop,
        controllers,
        metrics,
        _namespace: namespace,
    })
}

/// Stops the controllers; the namespace goes when `env` drops.
async fn teardown(env: Env) {
    env.stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), env.controllers).await;
}

fn owned_by(meta: &kube::api::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

#[tokio::test]
async fn example_runs_reloads_limits_live_and_is_collected() {
    let Some(env) = setup("lifecycle").await else {
        return;
    };
    let apps: Api<WsgiApp> = env.api();
    let deployments: Api<Deployment> = env.api();
    let services: Api<Service> = env.api();
    let config_maps: Api<ConfigMap> = env.api();

    // kubectl apply -f examples/wsgiapp.yaml
    let app = example_app(&env.ns);
    let created = apps
        .patch("shop", &PatchParams::apply(MANAGER), &Patch::Apply(&app))
        .await
        .expect("apply the example");
    let uid = created.uid().expect("uid");

    // The children appear, owned by the WsgiApp.
    let dep = eventually("the Deployment", 60, || {
        let d = deployments.clone();
        async move { d.get_opt("shop").await.ok().flatten() }
    })
    .await;
    assert!(owned_by(&dep.metadata, &uid));
    let svc = services.get("shop").await.expect("the Service");
    assert!(owned_by(&svc.metadata, &uid));
    let cm = config_maps.get("shop-config").await.expect("the ConfigMap");
    assert!(owned_by(&cm.metadata, &uid));
    assert!(cm.data.as_ref().expect("data")["config.yaml"].contains("workers: \"2:8\""));
    let args = dep.spec.template.spec.as_ref().expect("pod").containers[0]
        .args
        .clone()
        .expect("args");
    assert_eq!(&args[..2], ["serve", "demo:application"]);

    // The status reports the three conditions for the current generation.
    let status = eventually("the status", 60, || {
        let apps = apps.clone();
        async move {
            let s = apps.get_status("shop").await.ok()?.status?;
            (s.observed_generation == Some(1) && s.conditions.len() == 4).then_some(s)
        }
    })
    .await;
    let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Ready", "Progressing", "Degraded", "ScaleConflict"]);
    assert_eq!(status.selector.as_deref(), Some("wsgiscale.dev/app=shop"));

    // workers.max changes: the ConfigMap follows, the pod template (and so the pods) does not.
    let template_before = serde_json::to_value(&dep.spec.template).expect("json");
    let generation_before = dep.metadata.generation;
    let mut changed = app.clone();
    changed.spec.workers.as_mut().expect("workers").max = Some(12);
    env.apply(&changed).await;
    eventually("the ConfigMap to carry workers.max 12", 60, || {
        let c = config_maps.clone();
        async move {
            let cm = c.get("shop-config").await.ok()?;
            cm.data?
                .get("config.yaml")?
                .contains("workers: \"2:12\"")
                .then_some(())
        }
    })
    .await;
    let dep_after = deployments.get("shop").await.expect("the Deployment");
    assert_eq!(
        serde_json::to_value(&dep_after.spec.template).expect("json"),
        template_before
    );
    assert_eq!(
        dep_after.metadata.generation, generation_before,
        "the Deployment was not touched"
    );

    // Above the ceiling the pods' memory is sized for, workers.max is refused at admission.
    let mut above = changed.clone();
    above.spec.workers.as_mut().expect("workers").max = Some(13);
    let err = apps
        .patch("shop", &PatchParams::apply(MANAGER), &Patch::Apply(&above))
        .await
        .expect_err("workers.max above memorySizing.maxWorkers");
    assert!(
        err.to_string()
            .contains("workers.max must be at most memorySizing.maxWorkers"),
        "{err}"
    );

    // Deleting the WsgiApp collects its children.
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..DeleteParams::default()
    };
    apps.delete("shop", &dp).await.expect("delete");
    eventually("the children to be collected", 120, || {
        let (d, s, c) = (deployments.clone(), services.clone(), config_maps.clone());
        async move {
            let gone = d.get_opt("shop").await.ok()?.is_none()
                && s.get_opt("shop").await.ok()?.is_none()
                && c.get_opt("shop-config").await.ok()?.is_none();
            gone.then_some(())
        }
    })
    .await;
    teardown(env).await;
}

#[tokio::test]
async fn the_api_server_refuses_what_the_cel_rules_refuse() {
    let Some(env) = setup("cel").await else {
        return;
    };
    let apps: Api<WsgiApp> = env.api();
    let mut app = example_app(&env.ns);
    let workers = app.spec.workers.as_mut().expect("workers");
    workers.min = Some(8);
    workers.max = Some(4);
    let err = apps
        .patch("shop", &PatchParams::apply(MANAGER), &Patch::Apply(&app))
        .await
        .expect_err("the CEL rule refuses min > max");
    assert!(
        err.to_string()
            .contains("workers.min must be at most workers.max"),
        "{err}"
    );
    teardown(env).await;
}

#[tokio::test]
async fn steady_state_leaves_resource_versions_alone() {
    let Some(env) = setup("steady").await else {
        return;
    };
    let config_maps: Api<ConfigMap> = env.api();
    let services: Api<Service> = env.api();
    env.apply(&example_app(&env.ns)).await;
    let versions = || {
        let (c, s) = (config_maps.clone(), services.clone());
        async move {
            let cm = c.get_opt("shop-config").await.ok()??;
            let svc = s.get_opt("shop").await.ok()??;
            Some((cm.resource_version()?, svc.resource_version()?))
        }
    };
    let first = eventually("the children", 60, versions).await;
    // Several reconciles later, nothing was rewritten. Each is woken by another manager's
    // annotation on the Deployment (a watch event the operator must answer by writing nothing).
    let deployments: Api<Deployment> = env.api();
    let reconciled = || {
        env.metrics
            .reconciles
            .get_or_create(&wsgiscale_operator::metrics::ResultLabels { result: "ok" })
            .get()
    };
    for poke in 0..3 {
        let before = reconciled();
        let patch = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "shop", "annotations": {"test.wsgiscale.dev/poke": poke.to_string()}},
        });
        deployments
            .patch(
                "shop",
                &PatchParams::apply("cluster-test-poker"),
                &Patch::Apply(&patch),
            )
            .await
            .expect("annotate the Deployment");
        eventually("a reconcile of the poked app", 30, || async {
            (reconciled() > before).then_some(())
        })
        .await;
    }
    let later = versions().await.expect("children still there");
    assert_eq!(first, later);
    teardown(env).await;
}

/// Runs kubectl against the test cluster; `None` (after a skip line) when kubectl is missing.
fn kubectl(args: &[&str]) -> Option<std::process::Output> {
    let cluster = wsgiscale_envtest::shared()?;
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    match std::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(args)
        .output()
    {
        Ok(out) => Some(out),
        Err(e) => {
            wsgiscale_envtest::skip_line(&format!("{kubectl}: {e}"));
            None
        }
    }
}

#[tokio::test]
async fn kubectl_scale_outside_the_bounds_is_refused_with_the_reason() {
    let Some(env) = setup("scale").await else {
        return;
    };
    let apps: Api<WsgiApp> = env.api();
    let deployments: Api<Deployment> = env.api();
    env.apply(&example_app(&env.ns)).await;
    // The example has replicas 2..10.
    for (count, refused) in [("20", true), ("0", true), ("4", false)] {
        let Some(out) = kubectl(&["-n", &env.ns, "scale", "wsgiapp/shop", "--replicas", count])
        else {
            return;
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            !out.status.success(),
            refused,
            "--replicas={count}: {stderr}"
        );
        if refused {
            assert!(
                stderr.contains("must be within replicas.min..replicas.max"),
                "--replicas={count}: {stderr}"
            );
        }
    }
    let desired = apps.get("shop").await.expect("the app").spec.replicas;
    assert_eq!(desired.and_then(|r| r.desired), Some(4));
    eventually("the Deployment at 4 replicas", 60, || {
        let d = deployments.clone();
        async move { (d.get_opt("shop").await.ok()??.spec.replicas == Some(4)).then_some(()) }
    })
    .await;
    teardown(env).await;
}

/// The value of one sample line of the operator's metrics, 0 when absent.
fn metric(metrics: &Metrics, line_start: &str) -> u64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_persistent_api_error_shows_in_a_condition_and_an_event_and_backs_off() {
    let Some(env) = setup("quota").await else {
        return;
    };
    let apps: Api<WsgiApp> = env.api();
    let services: Api<Service> = env.api();
    let quotas: Api<ResourceQuota> = env.api();
    // No Service may be created here: the API server refuses the app's Service every time,
    // as it did for every Service past a full service IP range.
    let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "no-services"},
        "spec": {"hard": {"services": "0"}},
    }))
    .expect("a quota literal");
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("create the quota");
    eventually("the quota controller to count", 60, || {
        let q = quotas.clone();
        async move { q.get("no-services").await.ok()?.status?.hard.map(|_| ()) }
    })
    .await;
    env.apply(&example_app(&env.ns)).await;

    // Past the first retries: Degraded, with the API server's words, and a Warning Event.
    let degraded = eventually("Degraded=True ApiError", 90, || {
        let apps = apps.clone();
        async move {
            let s = apps.get_status("shop").await.ok()?.status?;
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "ApiError")
        }
    })
    .await;
    assert!(
        degraded.message.contains("apply Service shop")
            && degraded.message.contains("exceeded quota"),
        "{}",
        degraded.message
    );
    let events: Api<Event> = env.api();
    eventually("a Warning Event ApiError", 30, || {
        let e = events.clone();
        async move {
            let list = e.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("ApiError")
                        && e.type_.as_deref() == Some("Warning")
                        && e.note
                            .as_deref()
                            .is_some_and(|n| n.contains("exceeded quota"))
                })
                .map(|_| ())
        }
    })
    .await;

    // The retries back off, also while the app's children keep changing (as the Deployment's
    // status does while its controller churns pods): each change triggers the app, but the
    // attempts wait for the backoff. Here another client touches the Deployment every second.
    let deployments: Api<Deployment> = env.api();
    let line = "wsgiscale_operator_errors_total{reason=\"apply_object\"}";
    let before = metric(&env.metrics, line);
    for i in 0..40 {
        let poke = serde_json::json!({"metadata": {"annotations": {"test.wsgiscale.dev/poke": i.to_string()}}});
        deployments
            .patch("shop", &PatchParams::default(), &Patch::Merge(&poke))
            .await
            .expect("touch the Deployment");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let attempts = metric(&env.metrics, line) - before;
    assert!(
        attempts <= 5,
        "{attempts} failed applies in 40 s after {before}: not backing off"
    );

    // The user lifts the quota and edits the app: tried at once, and it heals.
    quotas
        .delete("no-services", &Default::default())
        .await
        .expect("delete the quota");
    let mut changed = example_app(&env.ns);
    changed.spec.env[0].value = Some("staging".into());
    env.apply(&changed).await;
    eventually("the Service, and Degraded=False", 60, || {
        let (apps, services) = (apps.clone(), services.clone());
        async move {
            services.get_opt("shop").await.ok()??;
            let s = apps.get_status("shop").await.ok()?.status?;
            s.conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status == "False")
                .then_some(())
        }
    })
    .await;
    teardown(env).await;
}

#[tokio::test]
async fn another_managers_edits_of_list_entries_are_reverted() {
    let Some(env) = setup("foreign").await else {
        return;
    };
    let apps: Api<WsgiApp> = env.api();
    let services: Api<Service> = env.api();
    let deployments: Api<Deployment> = env.api();
    env.apply(&example_app(&env.ns)).await;
    eventually("the Service and the Deployment", 60, || {
        let (s, d) = (services.clone(), deployments.clone());
        async move {
            s.get_opt("shop")
                .await
                .ok()?
                .and(d.get_opt("shop").await.ok()?)
        }
    })
    .await;

    // As `kubectl patch --type json` does it: the port's key changes from 80 to 81 (same name),
    // and an env entry and a volume are added to what the operator renders.
    let foreign = PatchParams {
        field_manager: Some("kubectl-patch".into()),
        ..PatchParams::default()
    };
    let json = |v: serde_json::Value| -> Patch<()> {
        Patch::Json(serde_json::from_value(v).expect("a JSON patch"))
    };
    services
        .patch(
            "shop",
            &foreign,
            &json(
                serde_json::json!([{"op": "replace", "path": "/spec/ports/0/port", "value": 81}]),
            ),
        )
        .await
        .expect("patch the Service's port");
    deployments
        .patch(
            "shop",
            &foreign,
            &json(serde_json::json!([
                {"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": "INJECTED", "value": "1"}},
                {"op": "add", "path": "/spec/template/spec/volumes/-", "value": {"name": "extra", "emptyDir": {}}},
            ])),
        )
        .await
        .expect("patch the Deployment");

    eventually("the operator's port, env and volumes back", 60, || {
        let (s, d) = (services.clone(), deployments.clone());
        async move {
            let ports: Vec<i32> = s
                .get("shop")
                .await
                .ok()?
                .spec?
                .ports?
                .iter()
                .map(|p| p.port)
                .collect();
            let pod = d.get("shop").await.ok()?.spec.template.spec?;
            let env: Vec<String> = pod.containers[0]
                .env
                .iter()
                .flatten()
                .map(|e| e.name.clone())
                .collect();
            let volumes: Vec<String> = pod
                .volumes
                .iter()
                .flatten()
                .map(|v| v.name.clone())
                .collect();
            (ports == [80] && env == ["APP_ENV"] && !volumes.contains(&"extra".to_string()))
                .then_some(())
        }
    })
    .await;
    // And the status blames nothing: no refusal was needed.
    let status = apps
        .get_status("shop")
        .await
        .expect("the app")
        .status
        .expect("status");
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.reason != "ApplyRejected"),
        "{:?}",
        status.conditions
    );
    teardown(env).await;
}

#[tokio::test]
async fn kubectl_applies_every_valid_sample_and_refuses_every_invalid_one_with_its_reason() {
    let Some(env) = setup("samples").await else {
        return;
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/manifests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/manifests")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() > 10, "{files:?}");
    for file in files {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let text = std::fs::read_to_string(&file).expect("readable");
        let Some(out) = kubectl(&["-n", &env.ns, "apply", "-f", &file.to_string_lossy()]) else {
            return;
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        if name.starts_with("valid-") {
            assert!(out.status.success(), "{name} refused: {stderr}");
        } else {
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .expect("an invalid sample starts with `# expect: <message>`");
            assert!(!out.status.success(), "{name} accepted");
            assert!(stderr.contains(expect), "{name}: {stderr}");
        }
    }
    teardown(env).await;
}

/// A file under the test target's temporary directory, removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn write(name: &str, text: &str) -> TempFile {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write a temporary manifest");
        TempFile(path)
    }

    fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What a Django app on Kubernetes carries, through `spec.podOverrides`: a migrate init
/// container, a native sidecar (cloud-sql-proxy), an old-style sidecar with a volume of its
/// own, the security context of an added container, the probe timing of the server
/// container, pod fields the WsgiApp does not name.
fn overrides() -> serde_json::Value {
    serde_json::json!({
        "metadata": {"annotations": {"example.com/team": "web"}},
        "spec": {
            "initContainers": [
                {"name": "migrate", "image": "ghcr.io/wsgiscale/demo:0.1.0",
                 "command": ["python", "manage.py", "migrate", "--noinput"],
                 "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false,
                                     "capabilities": {"drop": ["ALL"]}},
                 "resources": {"requests": {"cpu": "0.1", "memory": "128Mi"}}},
                {"name": "cloud-sql-proxy", "image": "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.14.0",
                 "restartPolicy": "Always", "args": ["--port=5432", "project:region:db"],
                 "ports": [{"containerPort": 5432, "name": "postgres"}],
                 "securityContext": {"runAsNonRoot": true, "readOnlyRootFilesystem": true}},
            ],
            "containers": [
                {"name": "app",
                 "livenessProbe": {"periodSeconds": 20, "failureThreshold": 6},
                 "env": [{"name": "DATABASE_HOST", "value": "127.0.0.1"}],
                 "volumeMounts": [{"name": "media", "mountPath": "/srv/media"}]},
                {"name": "log-shipper", "image": "fluent/fluent-bit:3.2",
                 "volumeMounts": [{"name": "media", "mountPath": "/logs", "readOnly": true}],
                 "resources": {"limits": {"memory": "64Mi"}}},
            ],
            "volumes": [{"name": "media", "emptyDir": {"sizeLimit": "1Gi"}}],
            "shareProcessNamespace": true,
            "hostAliases": [{"ip": "10.0.0.10", "hostnames": ["db.internal"]}],
            "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]},
        },
    })
}

/// The operator's own entry in an object's managedFields: (operation, time, fields).
fn operator_entry(meta: &kube::api::ObjectMeta) -> Option<serde_json::Value> {
    meta.managed_fields
        .iter()
        .flatten()
        .find(|e| e.manager.as_deref() == Some("wsgiscale-operator") && e.subresource.is_none())
        .map(|e| serde_json::to_value(e).expect("json"))
}

#[tokio::test]
async fn pod_overrides_are_accepted_merged_as_the_api_server_merges_and_show_no_drift() {
    use wsgiscale_operator::drift::stamp_hash;
    use wsgiscale_operator::render::render_children;
    use wsgiscale_operator::validate::validate_app;

    let Some(env) = setup("overrides").await else {
        return;
    };
    let apps: Api<WsgiApp> = env.api();
    let deployments: Api<Deployment> = env.api();
    let mut app = example_app(&env.ns);
    app.spec.pod_overrides = Some(overrides());
    app.spec.probes = Some(wsgiscale_operator::crd::ProbesSpec {
        startup_timeout_seconds: Some(600),
        ..Default::default()
    });

    // Applied as a GitOps tool does: server-side, from a manifest.
    let manifest = TempFile::write(
        "overrides-app.yaml",
        &serde_saphyr::to_string(&app).expect("yaml"),
    );
    let Some(out) = kubectl(&[
        "apply",
        "--server-side",
        "--field-manager",
        "gitops",
        "-f",
        &manifest.arg(),
    ]) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The API server accepts what the operator renders from it.
    let dep = eventually("the Deployment with the overrides", 60, || {
        let d = deployments.clone();
        async move { d.get_opt("shop").await.ok().flatten() }
    })
    .await;
    let pod = dep.spec.template.spec.clone().expect("pod");
    let init: Vec<(&str, Option<&str>)> = pod
        .init_containers
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.restart_policy.as_deref()))
        .collect();
    assert_eq!(
        init,
        [("migrate", None), ("cloud-sql-proxy", Some("Always"))]
    );
    let containers: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(containers, ["app", "log-shipper"]);
    let server = &pod.containers[0];
    let live = server.liveness_probe.clone().expect("liveness");
    assert_eq!(
        (live.period_seconds, live.failure_threshold),
        (Some(20), Some(6))
    );
    assert_eq!(
        live.http_get.and_then(|h| h.path).as_deref(),
        Some("/healthz")
    );
    let startup = server.startup_probe.clone().expect("startup");
    assert_eq!(startup.failure_threshold, Some(300));
    assert_eq!(pod.share_process_namespace, Some(true));
    assert!(pod.volumes.iter().flatten().any(|v| v.name == "media"));
    let status = eventually("a status for the current generation", 60, || {
        let apps = apps.clone();
        async move {
            let s = apps.get_status("shop").await.ok()?.status?;
            (s.observed_generation == Some(1) && !s.conditions.is_empty()).then_some(s)
        }
    })
    .await;
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.reason != "InvalidSpec" && c.reason != "ApplyRejected"),
        "{:?}",
        status.conditions
    );

    // GitOps sees no drift: the WsgiApp is stored as applied.
    let Some(diff) = kubectl(&[
        "diff",
        "--server-side",
        "--field-manager",
        "gitops",
        "-f",
        &manifest.arg(),
    ]) else {
        return;
    };
    assert_eq!(
        diff.status.code(),
        Some(0),
        "kubectl diff of the WsgiApp: {}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    // Nor in the Deployment: what the operator would apply now changes nothing.
    let stored = apps.get("shop").await.expect("the app");
    let validated = validate_app(&stored).expect("valid");
    let replicas = dep.spec.replicas.expect("replicas");
    let desired = stamp_hash(render_children(&validated, replicas).deployment);
    let rendered = TempFile::write(
        "overrides-deployment.yaml",
        &serde_saphyr::to_string(&desired).expect("yaml"),
    );
    let diff = kubectl(&[
        "diff",
        "--server-side",
        "--force-conflicts",
        "--field-manager",
        "wsgiscale-operator",
        "-f",
        &rendered.arg(),
    ])
    .expect("kubectl ran before");
    assert_eq!(
        diff.status.code(),
        Some(0),
        "kubectl diff of the rendered Deployment: {}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );
    // And reconciles write nothing: the operator's managed fields and the generation stay.
    let before = (dep.metadata.generation, operator_entry(&dep.metadata));
    let config_maps: Api<ConfigMap> = env.api();
    let reconciled = || {
        env.metrics
            .reconciles
            .get_or_create(&wsgiscale_operator::metrics::ResultLabels { result: "ok" })
            .get()
    };
    for poke in 0..3 {
        let count = reconciled();
        let patch = serde_json::json!({"metadata": {"annotations": {"test.wsgiscale.dev/poke": poke.to_string()}}});
        config_maps
            .patch(
                "shop-config",
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .expect("poke the ConfigMap");
        eventually("a reconcile", 30, || async {
            (reconciled() > count).then_some(())
        })
        .await;
    }
    let after = deployments.get("shop").await.expect("the Deployment");
    assert_eq!(
        (after.metadata.generation, operator_entry(&after.metadata)),
        before
    );

    // The merge is the API server's own: a Deployment of the operator's template without the
    // overrides, then the overrides applied by a second manager, comes out the same.
    let mut plain = validated.clone();
    plain.pod_overrides = None;
    let mut base = render_children(&plain, 0).deployment;
    base.metadata.name = Some("merge-check".into());
    base.metadata.owner_references = None;
    deployments
        .patch(
            "merge-check",
            &PatchParams::apply("base"),
            &Patch::Apply(&base),
        )
        .await
        .expect("apply the base");
    let over = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "merge-check"},
        "spec": {"template": overrides()},
    });
    let merged = deployments
        .patch(
            "merge-check",
            &PatchParams::apply("overrides").force().dry_run(),
            &Patch::Apply(&over),
        )
        .await
        .expect("the API server merges the overrides");
    let ours = serde_json::to_value(&after.spec.template).expect("json");
    let theirs = serde_json::to_value(&merged.spec.template).expect("json");
    assert_eq!(ours, theirs);
    teardown(env).await;
}

#[tokio::test]
async fn an_override_of_what_the_operator_owns_is_refused_with_the_field() {
    let Some(env) = setup("owned").await else {
        return;
    };
    let apps: Api<WsgiApp> = env.api();
    let mut app = example_app(&env.ns);
    app.spec.pod_overrides = Some(serde_json::json!({
        "spec": {"containers": [{"name": "app", "image": "other:1", "args": ["serve", "x:y"]}],
                 "initContainers": [{"name": "migrate", "image": "shop:1", "comand": ["migrate"]}]}
    }));
    env.apply(&app).await;
    let ready = eventually("Ready=False InvalidSpec", 60, || {
        let apps = apps.clone();
        async move {
            let s = apps.get_status("shop").await.ok()?.status?;
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.reason == "InvalidSpec")
        }
    })
    .await;
    for field in [
        "spec.podOverrides.spec.containers[0].image: is spec.image",
        "spec.podOverrides.spec.containers[0].args",
        "spec.podOverrides.spec.initContainers[0].comand: is not a field",
    ] {
        assert!(ready.message.contains(field), "{field}: {}", ready.message);
    }
    let deployments: Api<Deployment> = env.api();
    assert!(
        deployments.get_opt("shop").await.expect("get").is_none(),
        "nothing rendered"
    );
    teardown(env).await;
}

/// Patches the status of every pod of the app as the scheduler or the kubelet would.
async fn set_pod_status(env: &Env, status: serde_json::Value) -> usize {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = env.api();
    let list = eventually("the app's pods", 60, || {
        let pods = pods.clone();
        async move {
            let l = pods
                .list(&ListParams::default().labels("wsgiscale.dev/app=shop"))
                .await
                .ok()?;
            (!l.items.is_empty()).then_some(l)
        }
    })
    .await;
    for p in &list.items {
        pods.patch_status(
            &p.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"status": status})),
        )
        .await
        .expect("patch the pod's status");
    }
    list.items.len()
}

async fn condition_of(
    apps: &Api<WsgiApp>,
    type_: &str,
    reason: &str,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    eventually(&format!("{type_} with reason {reason}"), 60, || {
        let apps = apps.clone();
        async move {
            let s = apps.get_status("shop").await.ok()?.status?;
            s.conditions
                .into_iter()
                .find(|c| c.type_ == type_ && c.reason == reason)
        }
    })
    .await
}

async fn event_with(env: &Env, type_: &str, reason: &str) -> Event {
    let events: Api<Event> = env.api();
    eventually(&format!("a {type_} Event {reason}"), 60, || {
        let e = events.clone();
        async move {
            let list = e.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some(type_))
        }
    })
    .await
}

#[tokio::test]
async fn the_status_says_why_pods_are_not_ready_from_the_pods_themselves() {
    let Some(env) = setup("explain").await else {
        return;
    };
    let apps: Api<WsgiApp> = env.api();
    env.apply(&example_app(&env.ns)).await;

    // No pod is placed: the scheduler's words. Not Complete, not (yet) Degraded.
    let scheduler = "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.";
    let n = set_pod_status(
        &env,
        serde_json::json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": scheduler}
        ]}),
    )
    .await;
    // Every pod's status reached the operator through its pod watch.
    let want = format!(
        "{n} of {n} pods of the current spec: the scheduler cannot place them: {scheduler}"
    );
    eventually("Ready=False Unschedulable for every pod", 60, || {
        let (apps, want) = (apps.clone(), want.clone());
        async move {
            let s = apps.get_status("shop").await.ok()?.status?;
            s.conditions
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.reason == "Unschedulable" && c.message == want)
        }
    })
    .await;
    let progressing = condition_of(&apps, "Progressing", "PodsNotReady").await;
    assert!(
        progressing.message.contains("Unschedulable"),
        "{}",
        progressing.message
    );
    let status = apps
        .get_status("shop")
        .await
        .expect("app")
        .status
        .expect("status");
    assert!(
        status.conditions.iter().all(|c| c.reason != "Complete"),
        "{:?}",
        status.conditions
    );
    assert!(status
        .conditions
        .iter()
        .any(|c| c.type_ == "Degraded" && c.status == "False"));

    // Placed, but the image cannot be pulled: Degraded, with the image, and a Warning Event.
    set_pod_status(
        &env,
        serde_json::json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}
        ], "containerStatuses": [{
            "name": "app", "image": "ghcr.io/wsgiscale/demo:0.1.0", "imageID": "", "ready": false,
            "restartCount": 0, "started": false,
            "state": {"waiting": {"reason": "ImagePullBackOff",
                      "message": "Back-off pulling image \"ghcr.io/wsgiscale/demo:0.1.0\""}}
        }]}),
    )
    .await;
    let degraded = condition_of(&apps, "Degraded", "ImagePullBackOff").await;
    assert!(
        degraded
            .message
            .contains("container app cannot pull image ghcr.io/wsgiscale/demo:0.1.0"),
        "{}",
        degraded.message
    );
    let event = event_with(&env, "Warning", "ImagePullBackOff").await;
    assert!(event
        .note
        .unwrap_or_default()
        .contains("ghcr.io/wsgiscale/demo:0.1.0"));
    teardown(env).await;
}

#[tokio::test]
async fn a_reverted_scale_of_the_deployment_names_the_field_the_manager_and_the_owner() {
    let Some(env) = setup("revert").await else {
        return;
    };
    let deployments: Api<Deployment> = env.api();
    env.apply(&example_app(&env.ns)).await;
    eventually("the Deployment at 2", 60, || {
        let d = deployments.clone();
        async move { (d.get_opt("shop").await.ok()??.spec.replicas == Some(2)).then_some(()) }
    })
    .await;
    let Some(out) = kubectl(&["-n", &env.ns, "scale", "deployment/shop", "--replicas", "1"]) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event = event_with(&env, "Normal", "Reverted").await;
    let note = event.note.unwrap_or_default();
    assert!(
        note.starts_with("Put back Deployment shop: kubectl"),
        "{note}"
    );
    assert!(
        note.contains("changed spec.replicas, which the WsgiApp sets through spec.replicas.desired: change it with kubectl scale wsgiapp/shop --replicas=N"),
        "{note}"
    );
    eventually("the Deployment back at 2", 60, || {
        let d = deployments.clone();
        async move { (d.get_opt("shop").await.ok()??.spec.replicas == Some(2)).then_some(()) }
    })
    .await;
    teardown(env).await;
}

#[tokio::test]
async fn another_scale_writer_of_an_autoscaled_app_is_a_condition_and_a_warning() {
    let Some(env) = setup("conflict").await else {
        return;
    };
    let apps: Api<WsgiApp> = env.api();
    let mut app = example_app(&env.ns);
    app.spec.autoscaling = Some(wsgiscale_operator::crd::AutoscalingSpec {
        enabled: Some(true),
        ..Default::default()
    });
    env.apply(&app).await;
    let calm = condition_of(&apps, "ScaleConflict", "AsExpected").await;
    assert_eq!(calm.status, "False");
    // An HPA on the WsgiApp, and a write of its scale (what the HPA does, here by kubectl:
    // without metrics this control plane's HPA controller writes nothing).
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> = env.api();
    let hpa = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "shop-cpu"},
        "spec": {"scaleTargetRef": {"apiVersion": "wsgiscale.dev/v1alpha1", "kind": "WsgiApp", "name": "shop"},
                 "minReplicas": 2, "maxReplicas": 10,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]},
    }))
    .expect("an HPA literal");
    hpas.create(&PostParams::default(), &hpa)
        .await
        .expect("create the HPA");
    let Some(out) = kubectl(&["-n", &env.ns, "scale", "wsgiapp/shop", "--replicas", "3"]) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // This API server records no manager for a write of a custom resource's scale
    // (kubernetes#131892): the HPA that targets the app names the writer.
    let conflict = condition_of(&apps, "ScaleConflict", "ScaleWrittenByOther").await;
    assert_eq!(conflict.status, "True");
    assert!(
        conflict
            .message
            .starts_with("HorizontalPodAutoscaler shop-cpu writes"),
        "{}",
        conflict.message
    );
    let event = event_with(&env, "Warning", "ScaleWrittenByOther").await;
    assert!(event
        .note
        .unwrap_or_default()
        .starts_with("HorizontalPodAutoscaler shop-cpu"));
    // Taken out as the message says, the conflict ends.
    let Some(out) = kubectl(&[
        "-n",
        &env.ns,
        "patch",
        "wsgiapp",
        "shop",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/replicas/desired"}]"#,
    ]) else {
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    condition_of(&apps, "ScaleConflict", "AsExpected").await;
    teardown(env).await;
}
