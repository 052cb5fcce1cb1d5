//! Reconcile against a scripted API server (kube-rs controller-rs's Scenario pattern): each
//! test lists the exact requests the reconciler must make, in order, and what the server
//! answers; a request that is not in the script fails the test, and so does a script step the
//! reconciler never reached.

use std::task::Poll;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};

use super::*;
use crate::crd::{WorkersSpec, WsgiAppStatus};
use crate::drift::DESIRED_HASH_ANNOTATION;
use crate::fixtures::{json_response, mk_app, next_request, Handle, Responder, UID};
use crate::status::{condition, reasons, DEGRADED, READY};

const CM: &str = "/api/v1/namespaces/default/configmaps/shop-config";
const DEP: &str = "/apis/apps/v1/namespaces/default/deployments/shop";
const SVC: &str = "/api/v1/namespaces/default/services/shop";
const PDB: &str = "/apis/policy/v1/namespaces/default/poddisruptionbudgets/shop";
const STATUS: &str = "/apis/wsgiscale.dev/v1alpha1/namespaces/default/wsgiapps/shop/status";

/// The scripted API server.
struct ApiServer {
    handle: Handle,
}

fn api_status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

/// What the API server adds to an object it stores.
fn stored(mut obj: Value, resource_version: u64) -> Value {
    let meta = obj["metadata"].as_object_mut().expect("metadata");
    meta.insert("uid".into(), json!(format!("uid-{resource_version}")));
    meta.insert(
        "resourceVersion".into(),
        json!(resource_version.to_string()),
    );
    meta.insert("creationTimestamp".into(), json!("2026-01-01T00:00:00Z"));
    meta.insert("generation".into(), json!(1));
    meta.insert(
        "managedFields".into(),
        json!([{"manager": FIELD_MANAGER, "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {}}]),
    );
    obj
}

impl ApiServer {
    async fn expect(&mut self, method: Method, path: &str) -> (Request<Body>, Responder) {
        let (req, send) = next_request(&mut self.handle).await;
        assert_eq!(
            (req.method().clone(), req.uri().path().to_string()),
            (method, path.to_string()),
            "unexpected request {}",
            req.uri()
        );
        (req, send)
    }

    async fn get_missing(&mut self, path: &str) {
        let (_, send) = self.expect(Method::GET, path).await;
        send.send_response(json_response(
            StatusCode::NOT_FOUND,
            &api_status(404, "NotFound", "not found"),
        ));
    }

    async fn get(&mut self, path: &str, obj: &Value) {
        let (_, send) = self.expect(Method::GET, path).await;
        send.send_response(json_response(StatusCode::OK, obj));
    }

    async fn get_error(&mut self, path: &str) {
        let (_, send) = self.expect(Method::GET, path).await;
        send.send_response(json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &api_status(500, "InternalError", "etcd leader changed"),
        ));
    }

    /// A server-side apply with our field manager, forced; answers with the stored object.
    async fn apply(&mut self, path: &str) -> Value {
        let (req, send) = self.expect(Method::PATCH, path).await;
        let query: Vec<(String, String)> = url_pairs(req.uri().query().unwrap_or_default());
        assert!(
            query.contains(&("fieldManager".into(), FIELD_MANAGER.into())),
            "{query:?}"
        );
        assert!(
            query.contains(&("force".into(), "true".into())),
            "{query:?}"
        );
        assert_eq!(
            req.headers()
                .get("content-type")
                .map(|v| v.to_str().expect("ascii")),
            Some("application/apply-patch+yaml")
        );
        let body: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.expect("body"))
                .expect("json body");
        send.send_response(json_response(StatusCode::OK, &stored(body.clone(), 200)));
        body
    }

    async fn apply_rejected(&mut self, path: &str, message: &str) {
        let (_, send) = self.expect(Method::PATCH, path).await;
        send.send_response(json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &api_status(422, "Invalid", message),
        ));
    }

    async fn delete(&mut self, path: &str) {
        let (_, send) = self.expect(Method::DELETE, path).await;
        send.send_response(json_response(StatusCode::OK, &api_status(200, "", "")));
    }

    /// The status apply; returns the status sent.
    async fn status(&mut self) -> WsgiAppStatus {
        let (req, send) = self.expect(Method::PATCH, STATUS).await;
        let query = url_pairs(req.uri().query().unwrap_or_default());
        assert!(
            query.contains(&("fieldManager".into(), FIELD_MANAGER.into())),
            "{query:?}"
        );
        assert!(
            query.contains(&("force".into(), "true".into())),
            "{query:?}"
        );
        let body: Value =
            serde_json::from_slice(&req.into_body().collect_bytes().await.expect("body"))
                .expect("json body");
        assert_eq!(body["apiVersion"], "wsgiscale.dev/v1alpha1");
        assert_eq!(body["kind"], "WsgiApp");
        assert!(
            body.get("spec").is_none(),
            "a status apply must not carry the spec"
        );
        let status: WsgiAppStatus = serde_json::from_value(body["status"].clone()).expect("status");
        let mut app = serde_json::to_value(mk_app("shop")).expect("json");
        app["status"] = body["status"].clone();
        send.send_response(json_response(StatusCode::OK, &app));
        status
    }

    /// Nothing else was asked: the reconciler has returned, so no request can still come.
    fn assert_idle(&mut self) {
        assert!(
            matches!(self.handle.poll_request(), Poll::Pending),
            "the reconciler made a request the script does not expect"
        );
    }
}

/// The events a reconcile queued: (Warning?, reason, note), in order; each about the WsgiApp
/// `shop` and reported by the reconciler.
fn queued_events(ctx: &Context) -> Vec<(bool, String, String)> {
    let mut rx = ctx.take_event_receiver().expect("the receiver");
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        assert_eq!(e.regarding.kind.as_deref(), Some("WsgiApp"));
        assert_eq!(e.regarding.name.as_deref(), Some("shop"));
        assert_eq!(e.reporting, Reporting::Reconciler);
        out.push((e.warning, e.reason, e.note));
    }
    ctx.return_event_receiver(rx);
    out
}

/// The (Warning?, reason) of the queued events.
fn reasons_of(events: &[(bool, String, String)]) -> Vec<(bool, &str)> {
    events.iter().map(|(w, r, _)| (*w, r.as_str())).collect()
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn test_context() -> (Arc<Context>, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Context::new(
        client,
        Some("test".into()),
        Arc::default(),
        Duration::from_secs(300),
    );
    (Arc::new(ctx), ApiServer { handle })
}

/// Runs one reconcile against `script`, nothing cached; returns its result and the context.
async fn run<F, Fut>(app: WsgiApp, script: F) -> (Result<Action, Error>, Arc<Context>)
where
    F: FnOnce(ApiServer) -> Fut,
    Fut: std::future::Future<Output = ApiServer> + Send + 'static,
{
    run_with(listed(Caches::default()), app, script).await
}

/// `c` with its pod watch listed (no pods), as after the first moments of a run.
fn listed(c: Caches) -> Caches {
    c.pods.apply(None, &kube::runtime::watcher::Event::Init);
    c.pods.apply(None, &kube::runtime::watcher::Event::InitDone);
    c
}

/// Runs one reconcile with `caches` against `script`.
async fn run_with<F, Fut>(
    caches: Caches,
    app: WsgiApp,
    script: F,
) -> (Result<Action, Error>, Arc<Context>)
where
    F: FnOnce(ApiServer) -> Fut,
    Fut: std::future::Future<Output = ApiServer> + Send + 'static,
{
    let (ctx, server) = test_context();
    ctx.set_caches(caches);
    let scenario = tokio::spawn(script(server));
    let result = reconcile(Arc::new(app), ctx.clone()).await;
    let mut server = tokio::time::timeout(std::time::Duration::from_secs(5), scenario)
        .await
        .expect("the script finished")
        .expect("the script's assertions held");
    server.assert_idle();
    (result, ctx)
}

fn owner_of(obj: &Value) -> &Value {
    &obj["metadata"]["ownerReferences"][0]
}

/// What a fresh app's first reconcile applies: (config map, deployment, service, pdb, status).
async fn first_reconcile(app: WsgiApp) -> (Value, Value, Value, Value, WsgiAppStatus) {
    let captured = Arc::new(Mutex::new(None));
    let out = captured.clone();
    let (result, ctx) = run(app, |mut s| async move {
        // Nothing cached: the four reads go out together, then the ConfigMap, then the rest
        // together, then the status.
        s.get_missing(CM).await;
        s.get_missing(DEP).await;
        s.get_missing(SVC).await;
        s.get_missing(PDB).await;
        let cm = s.apply(CM).await;
        let dep = s.apply(DEP).await;
        let svc = s.apply(SVC).await;
        let pdb = s.apply(PDB).await;
        let status = s.status().await;
        *out.lock().expect("lock") = Some((cm, dep, svc, pdb, status));
        s
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    // One event for the four children, queued (published by another task, not awaited here).
    let events = queued_events(&ctx);
    assert_eq!(reasons_of(&events), [(false, "Created")]);
    assert_eq!(
        events[0].2,
        "Created ConfigMap shop-config, Deployment shop, Service shop and PodDisruptionBudget shop"
    );
    let taken = captured.lock().expect("lock").take();
    taken.expect("captured")
}

fn scaled_app() -> WsgiApp {
    mk_app("shop")
        .with_workers(2, Some(8))
        .with_replicas(2, Some(6))
        .map(|a| {
            a.spec.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
                requests: Some(
                    [(
                        "cpu".to_string(),
                        k8s_openapi::apimachinery::pkg::api::resource::Quantity("0.5".into()),
                    )]
                    .into(),
                ),
                ..Default::default()
            })
        })
}

#[tokio::test]
async fn first_reconcile_applies_every_child_owned_with_one_field_manager() {
    let (cm, dep, svc, pdb, status) = first_reconcile(scaled_app()).await;
    for (obj, kind) in [
        (&cm, "ConfigMap"),
        (&dep, "Deployment"),
        (&svc, "Service"),
        (&pdb, "PodDisruptionBudget"),
    ] {
        assert_eq!(obj["kind"], kind);
        let owner = owner_of(obj);
        assert_eq!(owner["apiVersion"], "wsgiscale.dev/v1alpha1");
        assert_eq!(owner["kind"], "WsgiApp");
        assert_eq!(owner["name"], "shop");
        assert_eq!(owner["uid"], UID);
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["blockOwnerDeletion"], true);
        assert!(obj["metadata"]["annotations"][DESIRED_HASH_ANNOTATION].is_string());
        assert_eq!(obj["metadata"]["labels"]["wsgiscale.dev/app"], "shop");
    }
    assert!(cm["data"]["config.yaml"]
        .as_str()
        .expect("file")
        .contains("workers: \"2:8\""));
    assert_eq!(dep["spec"]["replicas"], 2);
    let args = dep["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert_eq!(args[0], "serve");
    assert_eq!(args[1], "shop.wsgi:application");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    // The Deployment controller has not seen it yet: not ready, rolling out.
    let ready = condition(&status, READY).expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::ROLLING_OUT)
    );
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.desired_replicas, Some(2));
    assert_eq!(status.selector.as_deref(), Some("wsgiscale.dev/app=shop"));
}

/// Turns what the reconciler applied into what a GET returns once the controllers ran: server
/// fields, defaults, normalised quantities, a Deployment whose pods are all ready.
fn as_served(mut obj: Value, ready_replicas: i64) -> Value {
    obj = stored(obj, 300);
    if obj["kind"] == "Deployment" {
        let spec = &mut obj["spec"];
        spec["progressDeadlineSeconds"] = json!(600);
        spec["revisionHistoryLimit"] = json!(10);
        let pod = &mut spec["template"]["spec"];
        pod["dnsPolicy"] = json!("ClusterFirst");
        pod["restartPolicy"] = json!("Always");
        pod["schedulerName"] = json!("default-scheduler");
        pod["volumes"][0]["configMap"]["defaultMode"] = json!(420);
        let c = &mut pod["containers"][0];
        c["terminationMessagePath"] = json!("/dev/termination-log");
        c["imagePullPolicy"] = json!("IfNotPresent");
        c["livenessProbe"]["httpGet"]["scheme"] = json!("HTTP");
        c["livenessProbe"]["successThreshold"] = json!(1);
        // The API server stores quantities in canonical form.
        if c["resources"]["requests"]["cpu"] == json!("0.5") {
            c["resources"]["requests"]["cpu"] = json!("500m");
        }
        obj["status"] = json!({
            "observedGeneration": 1,
            "replicas": ready_replicas, "updatedReplicas": ready_replicas,
            "readyReplicas": ready_replicas, "availableReplicas": ready_replicas,
        });
    }
    if obj["kind"] == "Service" {
        obj["spec"]["clusterIP"] = json!("10.96.0.42");
        obj["spec"]["clusterIPs"] = json!(["10.96.0.42"]);
        obj["spec"]["sessionAffinity"] = json!("None");
        obj["spec"]["ipFamilies"] = json!(["IPv4"]);
    }
    obj
}

/// The children of an app as the API server holds them once its pods are ready.
#[derive(Clone)]
struct Served {
    cm: Value,
    dep: Value,
    svc: Value,
    pdb: Value,
}

/// A fresh app's first reconcile; returns its children as served with 2 ready pods, and the
/// status that reconcile wrote.
async fn served_children(app: WsgiApp) -> (Served, WsgiAppStatus) {
    let (cm, dep, svc, pdb, status) = first_reconcile(app).await;
    let served = Served {
        cm: as_served(cm, 2),
        dep: as_served(dep, 2),
        svc: as_served(svc, 2),
        pdb: as_served(pdb, 2),
    };
    (served, status)
}

impl ApiServer {
    /// Answers the reconciler's reads of the four children.
    async fn get_children(&mut self, c: &Served) {
        self.get(CM, &c.cm).await;
        self.get(DEP, &c.dep).await;
        self.get(SVC, &c.svc).await;
        self.get(PDB, &c.pdb).await;
    }
}

#[tokio::test]
async fn steady_state_writes_nothing() {
    let app = scaled_app();
    let (served, status) = served_children(app.clone()).await;

    // The pods became ready: the status says so once, with an event.
    let app = app.with_status(status);
    let served2 = served.clone();
    let captured = Arc::new(Mutex::new(None));
    let out = captured.clone();
    let (result, ctx) = run(app.clone(), |mut s| async move {
        s.get_children(&served2).await;
        let status = s.status().await;
        *out.lock().expect("lock") = Some(status);
        s
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        reasons_of(&queued_events(&ctx)),
        [(false, reasons::AVAILABLE)]
    );
    let status = captured.lock().expect("lock").take().expect("status");
    let ready = condition(&status, READY).expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", reasons::AVAILABLE)
    );
    assert_eq!(status.ready_replicas, Some(2));

    // And then, nothing changes: reads only, no apply, no status patch, no event.
    let app = app.with_status(status);
    let served3 = served.clone();
    let (result, ctx) = run(app.clone(), |mut s| async move {
        s.get_children(&served3).await;
        s
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert!(queued_events(&ctx).is_empty());

    // With the children in the watches' caches: no request at all.
    let (result, ctx) = run_cached(app, &served, |s| async move { s }).await;
    assert!(result.is_ok(), "{result:?}");
    assert!(queued_events(&ctx).is_empty());
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains("wsgiscale_operator_child_reads_total{source=\"cache\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wsgiscale_operator_child_reads_total{source=\"api\"} 0"),
        "{metrics}"
    );
}

/// The children of `served` in the caches, as the controllers' watches would hold them.
fn caches_of(served: &Served) -> Caches {
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher::Event;
    fn store<K>(obj: &Value) -> kube::runtime::reflector::Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + 'static,
    {
        let mut w: Writer<K> = Writer::default();
        w.apply_watcher_event(&Event::Apply(
            serde_json::from_value(obj.clone()).expect("a served object"),
        ));
        w.as_reader()
    }
    let mut c = Caches::default();
    c.children.config_maps.add(None, store(&served.cm));
    c.children.deployments.add(None, store(&served.dep));
    c.children.services.add(None, store(&served.svc));
    c.children.pdbs.add(Some("default"), store(&served.pdb));
    listed(c)
}

/// [`run`], with the children of `served` in the context's caches.
async fn run_cached<F, Fut>(
    app: WsgiApp,
    served: &Served,
    script: F,
) -> (Result<Action, Error>, Arc<Context>)
where
    F: FnOnce(ApiServer) -> Fut,
    Fut: std::future::Future<Output = ApiServer> + Send + 'static,
{
    run_with(caches_of(served), app, script).await
}

#[tokio::test]
async fn a_cache_miss_is_read_from_the_api_server() {
    let app = scaled_app();
    let (mut served, status) = served_children(app.clone()).await;
    let app = app.with_status(status);
    // The Service is not in the cache (its watch has not listed yet, or it lost its label):
    // it is read, and the rest comes from the caches.
    let svc = served.svc.clone();
    served.svc["metadata"]["name"] = json!("not-this-one");
    let (result, ctx) = run_cached(app, &served, |mut s| async move {
        s.get(SVC, &svc).await;
        s.status().await;
        s
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains("wsgiscale_operator_child_reads_total{source=\"api\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_worker_limit_change_updates_only_the_config_map() {
    let app = scaled_app();
    let (served, status) = served_children(app.clone()).await;
    let app = app.with_generation(2).with_status(status).map(|a| {
        a.spec.workers = Some(WorkersSpec {
            min: Some(2),
            max: Some(16),
            ..WorkersSpec::default()
        })
    });
    let captured = Arc::new(Mutex::new(None));
    let out = captured.clone();
    let (result, ctx) = run(app, |mut s| async move {
        s.get_children(&served).await;
        let applied = s.apply(CM).await;
        let status = s.status().await;
        *out.lock().expect("lock") = Some((applied, status));
        s
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    let events = queued_events(&ctx);
    assert_eq!(
        reasons_of(&events),
        [(false, "Updated"), (false, reasons::AVAILABLE)]
    );
    assert!(events[0].2.contains("reload"), "{events:?}");
    let (applied, status) = captured.lock().expect("lock").take().expect("captured");
    assert!(applied["data"]["config.yaml"]
        .as_str()
        .expect("file")
        .contains("workers: \"2:16\""));
    assert_eq!(status.observed_generation, Some(2));
}

#[tokio::test]
async fn an_edited_deployment_is_taken_back() {
    let app = scaled_app();
    let (mut served, status) = served_children(app.clone()).await;
    served.dep["spec"]["replicas"] = json!(5); // kubectl scale deployment shop --replicas=5
    let app = app.with_status(status);
    let (result, ctx) = run(app, |mut s| async move {
        s.get_children(&served).await;
        let applied = s.apply(DEP).await;
        assert_eq!(applied["spec"]["replicas"], 2);
        // The answer to the apply has no rollout status yet, as after the first reconcile:
        // the status is unchanged and not written.
        s
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    // The Event names the field and the WsgiApp field that sets it, and the manager from the
    // managed fields (the scripted server records only the operator's, so "another manager").
    let events = queued_events(&ctx);
    assert_eq!(reasons_of(&events), [(false, "Reverted")]);
    assert_eq!(
        events[0].2,
        "Put back Deployment shop: another manager changed spec.replicas, which the WsgiApp sets through spec.replicas.desired: change it with kubectl scale wsgiapp/shop --replicas=N"
    );
}

#[tokio::test]
async fn the_pdb_goes_when_min_drops_to_one() {
    let app = scaled_app();
    let (served, status) = served_children(app.clone()).await;
    let app = app
        .with_generation(2)
        .with_status(status)
        .with_replicas(1, Some(6));
    let (result, ctx) = run(app, |mut s| async move {
        s.get_children(&served).await;
        // With no replicas.desired the pod count is replicas.min: the Deployment goes to 1,
        // and the PodDisruptionBudget goes, side by side.
        let applied = s.apply(DEP).await;
        assert_eq!(applied["spec"]["replicas"], 1);
        s.delete(PDB).await;
        s.status().await;
        s
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        reasons_of(&queued_events(&ctx)),
        [(false, "Updated"), (false, "Deleted")]
    );
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_touches_nothing() {
    let app = mk_app("shop").with_workers(4, Some(2));
    let captured = Arc::new(Mutex::new(None));
    let out = captured.clone();
    let (result, ctx) = run(app.clone(), |mut s| async move {
        let status = s.status().await;
        *out.lock().expect("lock") = Some(status);
        s
    })
    .await;
    assert!(result.is_ok(), "an invalid spec is not retried: {result:?}");
    let events = queued_events(&ctx);
    assert_eq!(reasons_of(&events), [(true, reasons::INVALID_SPEC)]);
    assert!(events[0].2.contains("spec.workers.min"), "{events:?}");
    let status = captured.lock().expect("lock").take().expect("status");
    let ready = condition(&status, READY).expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::INVALID_SPEC)
    );
    assert_eq!(
        condition(&status, DEGRADED).expect("Degraded").status,
        "True"
    );

    // Reconciled again while still invalid: no status patch, no second event.
    let (result, ctx) = run(app.with_status(status), |s| async move { s }).await;
    assert!(result.is_ok());
    assert!(queued_events(&ctx).is_empty());
    assert!(ctx
        .metrics
        .encode()
        .contains("wsgiscale_operator_reconciles_total{result=\"invalid\"} 1"));
}

#[tokio::test]
async fn an_object_the_api_server_refuses_is_reported_not_retried_hot() {
    let app = mk_app("shop");
    let captured = Arc::new(Mutex::new(None));
    let out = captured.clone();
    let (result, ctx) = run(app, |mut s| async move {
        s.get_missing(CM).await;
        s.get_missing(DEP).await;
        s.get_missing(SVC).await;
        s.get_missing(PDB).await;
        s.apply(CM).await;
        s.apply_rejected(DEP, "Deployment.apps \"shop\" is invalid: spec.template.spec.volumes[2].name: Duplicate value").await;
        // Applied beside the Deployment, each to its end.
        s.apply(SVC).await;
        let status = s.status().await;
        *out.lock().expect("lock") = Some(status);
        s
    })
    .await;
    let events = queued_events(&ctx);
    assert_eq!(
        reasons_of(&events),
        [(false, "Created"), (true, reasons::APPLY_REJECTED)]
    );
    assert_eq!(
        events[0].2,
        "Created ConfigMap shop-config and Service shop"
    );
    let action = result.expect("a refusal is reported in the status, not retried with backoff");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let status = captured.lock().expect("lock").take().expect("status");
    let ready = condition(&status, READY).expect("Ready");
    assert_eq!(ready.reason, reasons::APPLY_REJECTED);
    assert!(ready.message.contains("Duplicate value"));
    assert!(ctx.metrics.encode().contains("reason=\"object_rejected\""));
}

#[tokio::test]
async fn an_app_in_a_namespace_being_deleted_is_left_to_go_with_it() {
    let app = mk_app("shop");
    let (result, ctx) = run(app, |mut s| async move {
        s.get_missing(CM).await;
        s.get_missing(DEP).await;
        s.get_missing(SVC).await;
        s.get_missing(PDB).await;
        let (_, send) = s.expect(Method::PATCH, CM).await;
        let mut refusal = api_status(
            403,
            "Forbidden",
            "configmaps \"shop-config\" is forbidden: unable to create new content in namespace default because it is being terminated",
        );
        refusal["details"] = json!({
            "name": "shop-config", "kind": "configmaps",
            "causes": [{"reason": "NamespaceTerminating", "message": "namespace default is being terminated", "field": "metadata.namespace"}],
        });
        send.send_response(json_response(StatusCode::FORBIDDEN, &refusal));
        // Nothing else: no retry, no status, no Event.
        s
    })
    .await;
    assert_eq!(result.expect("not an error"), Action::await_change());
    assert!(queued_events(&ctx).is_empty());
    let metrics = ctx.metrics.encode();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("wsgiscale_operator_errors_total{") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_foreign_object_with_our_name_is_left_alone() {
    let app = mk_app("shop");
    let foreign = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "shop", "namespace": "default", "uid": "someone-else", "resourceVersion": "5"},
        "spec": {"ports": [{"port": 80}]},
    });
    let (result, ctx) = run(app, |mut s| async move {
        s.get_missing(CM).await;
        s.get_missing(DEP).await;
        s.get(SVC, &foreign).await;
        s.get_missing(PDB).await;
        // Nothing is applied: the clash is reported in the status.
        let status = s.status().await;
        let ready = condition(&status, READY).expect("Ready");
        assert!(
            ready
                .message
                .contains("Service shop exists and is not controlled by this WsgiApp"),
            "{}",
            ready.message
        );
        s
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        reasons_of(&queued_events(&ctx)),
        [(true, reasons::APPLY_REJECTED)]
    );
}

#[tokio::test]
async fn transient_errors_back_off_exponentially() {
    let app = Arc::new(mk_app("shop"));
    let (ctx, mut server) = test_context();
    let scenario = tokio::spawn(async move {
        for _ in 0..2 {
            // The four reads go out together; the first error is the one reported.
            server.get_error(CM).await;
            server.get_missing(DEP).await;
            server.get_missing(SVC).await;
            server.get_missing(PDB).await;
        }
        server
    });
    let err = reconcile(app.clone(), ctx.clone())
        .await
        .expect_err("a 500 fails the reconcile");
    assert_eq!(err.metric_label(), "get_object");
    assert_eq!(
        error_policy(app.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    // Triggered again at once (a child's status changed): it waits out the backoff without a
    // request.
    let held = reconcile(app.clone(), ctx.clone())
        .await
        .expect("a held reconcile is no failure");
    assert_ne!(held, Action::await_change());
    // A new generation (the user changed the spec) is tried at once, and backs off further.
    let changed = Arc::new(mk_app("shop").map(|a| a.metadata.generation = Some(2)));
    let err = reconcile(changed.clone(), ctx.clone())
        .await
        .expect_err("a 500 fails the reconcile");
    assert_eq!(
        error_policy(changed, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(2))
    );
    let mut server = scenario.await.expect("script");
    server.assert_idle();
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains("wsgiscale_operator_errors_total{reason=\"get_object\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wsgiscale_operator_reconciles_total{result=\"error\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_app_being_deleted_is_left_to_the_garbage_collector() {
    let app = scaled_app().map(|a| {
        let t: k8s_openapi::jiff::Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        a.metadata.deletion_timestamp = Some(Time(t));
    });
    let (result, _) = run(app, |s| async move { s }).await;
    assert_eq!(result.expect("ok"), Action::await_change());
}

#[test]
fn backoff_doubles_and_caps() {
    let secs: Vec<u64> = [1, 2, 3, 4, 9, 10, 50]
        .iter()
        .map(|n| compute_backoff(*n).as_secs())
        .collect();
    assert_eq!(secs, vec![1, 2, 4, 8, 256, 300, 300]);
}

#[test]
fn a_failing_object_waits_out_its_backoff_whatever_triggers_it_unless_its_spec_changes() {
    use std::time::{Duration, Instant};

    use super::{compute_failure, compute_hold};

    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut f = None;
    // Failures at once after each other: 1, 2, 4, 8, ... seconds, capped at 5 minutes.
    let mut waits = Vec::new();
    for _ in 0..12 {
        let next = compute_failure(f.as_ref(), Some(1), t0);
        waits.push(next.retry_at - t0);
        f = Some(next);
    }
    assert_eq!(&waits[..5], &[s(1), s(2), s(4), s(8), s(16)]);
    assert_eq!(waits[11], s(300));

    let f = compute_failure(Some(&compute_failure(None, Some(1), t0)), Some(1), t0); // 2 s
    let table = [
        // (generation, at, hold)
        (Some(1), t0, Some(s(2))),
        (Some(1), t0 + s(1), Some(s(1))),
        (Some(1), t0 + s(2), None),
        (Some(2), t0, None),
    ];
    for (generation, at, want) in table {
        assert_eq!(
            compute_hold(Some(&f), generation, at),
            want,
            "{generation:?} {at:?}"
        );
    }
    assert_eq!(compute_hold(None, Some(1), t0), None);
}

#[test]
fn only_the_spec_deletion_and_recommendation_trigger_a_reconcile() {
    use crate::crd::AutoscalerStatus;

    use super::compute_trigger_hash;

    let app = mk_app("shop");
    let base = compute_trigger_hash(&app);
    // The load summary or a condition written into the status: no reconcile.
    let with_status = mk_app("shop").map(|a| {
        a.status = Some(WsgiAppStatus {
            observed_generation: Some(7),
            ..WsgiAppStatus::default()
        })
    });
    assert_eq!(compute_trigger_hash(&with_status), base);
    // A new generation, a recommendation, a deletion: a reconcile each.
    let newer = mk_app("shop").map(|a| a.metadata.generation = Some(2));
    assert_ne!(compute_trigger_hash(&newer), base);
    let recommended = mk_app("shop").map(|a| {
        a.status = Some(WsgiAppStatus {
            autoscaler: Some(AutoscalerStatus {
                recommended_replicas: Some(3),
                ..AutoscalerStatus::default()
            }),
            ..WsgiAppStatus::default()
        })
    });
    assert_ne!(compute_trigger_hash(&recommended), base);
    let deleting = mk_app("shop").map(|a| {
        a.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ))
    });
    assert_ne!(compute_trigger_hash(&deleting), base);
}

#[tokio::test]
async fn an_injected_apps_pods_are_read_from_the_pod_cache() {
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateTerminated, ContainerStatus, PodSpec, PodStatus,
    };
    use kube::runtime::watcher::Event;

    let app = mk_app("shop").with_replicas(2, Some(4)).map(|a| {
        a.spec.inject = Some(crate::crd::InjectSpec {
            enabled: Some(true),
            ..Default::default()
        })
    });
    // The children as applied, served with no pod ready.
    let children = crate::render::render_children(&validate_app(&app).expect("valid"), 2);
    let served_as = |obj: serde_json::Value| as_served(obj, 0);
    let served = Served {
        cm: served_as(to_json(&stamp_hash(children.config_map))),
        dep: served_as(to_json(&stamp_hash(children.deployment))),
        svc: served_as(to_json(&stamp_hash(children.service))),
        pdb: served_as(to_json(&stamp_hash(children.pdb.expect("min 2: a PDB")))),
    };
    // The start command refused the image, as the kubelet reports it in the pod's status.
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("shop-1".into()),
            namespace: Some("default".into()),
            labels: Some([("wsgiscale.dev/app".to_string(), "shop".to_string())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: crate::layout::CONTAINER_NAME.into(),
                image: Some(app.spec.image.clone()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: crate::layout::CONTAINER_NAME.into(),
                last_state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 3,
                        message: Some(
                            "wsgiscale-start: MuslLibc: python3 is CPython 3.12.7 built for musl libc"
                                .into(),
                        ),
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
    };
    let caches = caches_of(&served);
    caches.pods.apply(None, &Event::Init);
    caches.pods.apply(None, &Event::InitApply(pod));
    caches.pods.apply(None, &Event::InitDone);
    let captured = Arc::new(Mutex::new(None));
    let out = captured.clone();
    // No pod LIST: only the status, from the children and the pods in the caches.
    let (result, _) = run_with(caches, app, |mut s| async move {
        *out.lock().expect("lock") = Some(s.status().await);
        s
    })
    .await;
    assert_eq!(result.expect("ok"), Action::requeue(INJECT_RECHECK));
    let status = captured.lock().expect("lock").take().expect("status");
    let ready = condition(&status, READY).expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "MuslLibc")
    );
}

#[test]
fn one_event_per_verb_names_every_child() {
    let change = |verb, kind, name: &str| Change {
        verb,
        kind,
        name: name.to_string(),
        related: ObjectReference {
            kind: Some(kind.to_string()),
            name: Some(name.to_string()),
            ..ObjectReference::default()
        },
        note: None,
    };
    assert!(build_change_events(&[]).is_empty());
    let events = build_change_events(&[
        change("Updated", "Deployment", "shop"),
        change("Created", "ConfigMap", "shop-config"),
        change("Updated", "ConfigMap", "shop-config"),
        change("Deleted", "PodDisruptionBudget", "shop"),
    ]);
    let notes: Vec<(&str, &str, bool)> = events
        .iter()
        .map(|(verb, note, related)| (*verb, note.as_str(), related.is_some()))
        .collect();
    assert_eq!(
        notes,
        [
            ("Created", "Created ConfigMap shop-config", true),
            (
                "Updated",
                "Updated Deployment shop and ConfigMap shop-config: running servers reload the ConfigMap without a restart",
                false
            ),
            (
                "Deleted",
                "Deleted PodDisruptionBudget shop: replicas.min is 1 or less",
                true
            ),
        ]
    );
}

#[tokio::test]
async fn a_recommendation_handed_over_moves_the_deployment_before_its_status_write() {
    let app = scaled_app().map(|a| {
        a.spec.autoscaling = Some(crate::crd::AutoscalingSpec {
            enabled: Some(true),
            ..Default::default()
        })
    });
    let (served, status) = served_children(app.clone()).await;
    // The status still publishes 2 pods; the autoscaler has just decided 5 and handed it over
    // (its status write is on its way).
    let app = app.with_status(WsgiAppStatus {
        autoscaler: Some(crate::crd::AutoscalerStatus {
            recommended_replicas: Some(2),
            ..Default::default()
        }),
        ..status
    });
    let caches = caches_of(&served);
    assert!(caches
        .recommendations
        .hand_over("default", "shop", 5, Some(2)));
    let (result, _) = run_with(caches, app, |mut s| async move {
        let applied = s.apply(DEP).await;
        assert_eq!(applied["spec"]["replicas"], 5, "the handed-over count");
        assert_eq!(s.status().await.desired_replicas, Some(5));
        s
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
}
