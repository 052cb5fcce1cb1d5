//! The reconcile loop's I/O: read the children, apply what [`crate::render`] wants with
//! server-side apply, patch the status, publish events. Every decision is made by the pure
//! functions of [`crate::validate`], [`crate::render`], [`crate::status`] and
//! [`crate::drift`]; this module only carries them out.
//!
//! * Invalid spec (permanent): `Ready=False` with the reason, a Warning event, no child
//!   touched, wait for the next change.
//! * Object refused by the API server (400/422) or a name taken by an object this app does not
//!   own (permanent until the spec changes): the same, retried after the resync period.
//! * API or network error (transient): the error goes back to the controller, which retries
//!   with a per-object exponential backoff ([`compute_backoff`]).
//! * Steady state: every child is already what would be applied and the status is unchanged,
//!   so the reconcile reads and writes nothing.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::crd::WsgiApp;
use crate::drift::{
    compute_drift, compute_field_managers, compute_list_repair, display_path, hash_matches,
    is_applied, owning_field, stamp_hash,
};
use crate::explain::compute_pod_issue;
use crate::http::Health;
use crate::metrics::Metrics;
use crate::pods::PodCache;
use crate::render::{config_map_name, render_children};
use crate::status::{
    compute_hpas_targeting, compute_replicas, compute_status, compute_unservable,
    needs_scale_writers, ready_transition, reconciler_fields, warning_transition, Outcome,
    DEGRADED, SCALE_CONFLICT,
};
use crate::validate::{validate_app, ValidatedApp, ValidationError};

/// The one field manager of every write the reconciler makes.
pub const FIELD_MANAGER: &str = "wsgiscale-operator";

/// Why a reconcile failed and will be retried.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The WsgiApp lacks metadata only the API server sets.
    #[error("{0}")]
    Metadata(#[source] ValidationError),
    /// Reading a child failed.
    #[error("get {kind} {name}: {source}")]
    GetObject {
        /// Kind of the child.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Applying a child failed.
    #[error("apply {kind} {name}: {source}")]
    ApplyObject {
        /// Kind of the child.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Deleting a child failed.
    #[error("delete {kind} {name}: {source}")]
    DeleteObject {
        /// Kind of the child.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the WsgiApp's status failed.
    #[error("patch status of WsgiApp {name}: {source}")]
    PatchStatus {
        /// The WsgiApp.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// A fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Metadata(_) => "metadata",
            Error::GetObject { .. } => "get_object",
            Error::ApplyObject { .. } => "apply_object",
            Error::DeleteObject { .. } => "delete_object",
            Error::PatchStatus { .. } => "patch_status",
        }
    }

    /// What failed ("apply Service shop") and why, in the API server's words where it gave
    /// some, for the status.
    pub fn describe(&self) -> (String, String) {
        let (action, source) = match self {
            Error::Metadata(e) => return ("read the WsgiApp".into(), e.to_string()),
            Error::GetObject { kind, name, source } => (format!("read {kind} {name}"), source),
            Error::ApplyObject { kind, name, source } => (format!("apply {kind} {name}"), source),
            Error::DeleteObject { kind, name, source } => (format!("delete {kind} {name}"), source),
            Error::PatchStatus { name, source } => {
                (format!("write the status of WsgiApp {name}"), source)
            }
        };
        let message = match source {
            kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
            other => other.to_string(),
        };
        (action, message)
    }

    /// The kind and the API server's message when it refused an applied object for good
    /// (400 Bad Request, 422 Invalid): retrying the same object cannot succeed.
    fn rejection(&self) -> Option<(&'static str, String)> {
        match self {
            Error::ApplyObject {
                kind,
                source: kube::Error::Api(status),
                ..
            } if status.code == 400 || status.code == 422 => Some((kind, status.message.clone())),
            _ => None,
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes events on WsgiApps.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// How often a healthy app is reconciled without a change (drift repair).
    pub resync: Duration,
    /// What `/readyz` reports; the controllers' watches report to it.
    pub health: Arc<Health>,
    /// The apps' pods, from the controllers' pod watches.
    pub pods: PodCache,
    /// The failing objects and their backoff.
    failures: Mutex<HashMap<String, Failure>>,
}

impl Context {
    /// A context for `client`; `instance` names this operator replica in events.
    pub fn new(
        client: Client,
        instance: Option<String>,
        metrics: Arc<Metrics>,
        resync: Duration,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            resync,
            health: Arc::new(Health::default()),
            pods: PodCache::default(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The same context reporting to `health` (the HTTP server's).
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = health;
        self
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failure>> {
        // A poisoned lock only means another reconcile panicked; the records are still usable.
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An object whose reconciles keep failing: how often in a row, for which generation of its
/// spec, and when it may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// Consecutive failures.
    pub count: u32,
    /// The generation that failed.
    pub generation: Option<i64>,
    /// Not before then, unless the spec changes.
    pub retry_at: Instant,
}

/// After this many failures in a row a failure shows in the status and an Event: the first
/// retries absorb a blip, a failure that outlasts them needs a human to see it.
pub const SURFACE_AFTER_FAILURES: u32 = 3;

/// The failure record after one more failure of `generation` at `now`.
pub fn compute_failure(prev: Option<&Failure>, generation: Option<i64>, now: Instant) -> Failure {
    let count = prev.map_or(0, |f| f.count).saturating_add(1);
    Failure {
        count,
        generation,
        retry_at: now + compute_backoff(count),
    }
}

/// How long a reconcile triggered now must wait: while a failing object's backoff runs, every
/// trigger (a child's status changing, a resync) waits for it, so the backoff holds; a new
/// generation (the user changed the spec) is tried at once.
pub fn compute_hold(
    failure: Option<&Failure>,
    generation: Option<i64>,
    now: Instant,
) -> Option<Duration> {
    let f = failure?;
    if f.generation != generation || now >= f.retry_at {
        return None;
    }
    Some(f.retry_at - now)
}

/// The retry delay after `attempt` consecutive failures: 1 s doubling up to 5 minutes.
pub fn compute_backoff(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(16);
    Duration::from_secs((1u64 << exp).min(300))
}

fn object_key(app: &WsgiApp) -> String {
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

/// What a change of a WsgiApp must touch to need a reconcile: its generation (the spec), the
/// start of its deletion, and the autoscaler's recommendation. The status the reconciler and
/// the autoscaler write themselves (conditions, the load summary every few seconds) does not,
/// so those writes do not each cost a reconcile; the resync still repairs anything missed.
pub fn compute_trigger_hash(app: &WsgiApp) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    app.metadata.uid.hash(&mut h);
    app.metadata.generation.hash(&mut h);
    app.metadata.deletion_timestamp.is_some().hash(&mut h);
    app.status
        .as_ref()
        .and_then(|s| s.autoscaler.as_ref())
        .and_then(|a| a.recommended_replicas)
        .hash(&mut h);
    Some(h.finish())
}

/// The controller's reconcile function.
pub async fn reconcile(app: Arc<WsgiApp>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = object_key(&app);
    let generation = app.metadata.generation;
    let hold = compute_hold(ctx.failures().get(&key), generation, Instant::now());
    if let Some(wait) = hold {
        debug!(name = %app.name_any(), wait_seconds = wait.as_secs(), "backing off");
        return Ok(Action::requeue(wait));
    }
    let span = info_span!(
        "reconcile",
        namespace = app.namespace().unwrap_or_default(),
        name = %app.name_any(),
        generation = generation.unwrap_or(0),
    );
    let start = Instant::now();
    let result = reconcile_app(&app, &ctx).instrument(span.clone()).await;
    let label = match &result {
        Ok((_, label)) => label,
        Err(_) => "error",
    };
    ctx.metrics.observe_reconcile(label, start.elapsed());
    match &result {
        Ok(_) => {
            ctx.failures().remove(&key);
        }
        Err(e) => {
            let count = ctx.failures().get(&key).map_or(0, |f| f.count) + 1;
            if count >= SURFACE_AFTER_FAILURES {
                surface_failure(&ctx, &app, e).instrument(span).await;
            }
        }
    }
    result.map(|(action, _)| action)
}

/// Shows a failure that persists in the status (Ready and Progressing False, Degraded True,
/// reason `ApiError`, with the API server's message) and, through the Degraded transition, in
/// a Warning Event. Best effort: the API server may be the one failing.
async fn surface_failure(ctx: &Context, app: &WsgiApp, error: &Error) {
    let (action, message) = error.describe();
    let status = compute_status(
        app,
        Outcome::Failing {
            action: &action,
            message: &message,
        },
        now(),
    );
    if let Err(e) = publish_status(ctx, app, status).await {
        debug!(error = %e, "cannot write the failure to the status");
    }
}

/// The controller's error policy: count, log, retry with an exponential backoff that every
/// other trigger of the object also waits for ([`compute_hold`]).
pub fn error_policy(app: Arc<WsgiApp>, error: &Error, ctx: Arc<Context>) -> Action {
    let failure = {
        let mut failures = ctx.failures();
        let key = object_key(&app);
        let f = compute_failure(failures.get(&key), app.metadata.generation, Instant::now());
        failures.insert(key, f);
        f
    };
    ctx.metrics.count_error(error.metric_label());
    let delay = compute_backoff(failure.count);
    warn!(
        namespace = app.namespace().unwrap_or_default(),
        name = %app.name_any(),
        error = %error,
        attempt = failure.count,
        retry_in_seconds = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

fn now() -> Time {
    Time(Timestamp::now())
}

async fn reconcile_app(app: &WsgiApp, ctx: &Context) -> Result<(Action, &'static str), Error> {
    if app.metadata.deletion_timestamp.is_some() {
        // Being deleted: the garbage collector removes the children; applying them again
        // would only race it (and recreate them during a foreground deletion).
        debug!("being deleted");
        return Ok((Action::await_change(), "deleting"));
    }
    let validated = match validate_app(app) {
        Ok(v) => v,
        Err(e @ ValidationError::MissingMetadata(_)) => return Err(Error::Metadata(e)),
        Err(e) => {
            info!(error = %e, "invalid spec");
            let status = compute_status(app, Outcome::Invalid(&e), now());
            publish_status(ctx, app, status).await?;
            return Ok((Action::await_change(), "invalid"));
        }
    };
    let (error_reason, kind, message) = match apply_children(ctx, app, &validated).await {
        Ok(()) => return Ok((Action::requeue(ctx.resync), "ok")),
        Err(Refusal::Api(e)) => {
            let Some((kind, message)) = e.rejection() else {
                return Err(e);
            };
            ("object_rejected", kind, message)
        }
        Err(Refusal::Conflict { kind, name }) => (
            "name_conflict",
            kind,
            format!("{kind} {name} exists and is not controlled by this WsgiApp"),
        ),
    };
    ctx.metrics.count_error(error_reason);
    let status = compute_status(
        app,
        Outcome::Rejected {
            kind,
            message: &message,
        },
        now(),
    );
    publish_status(ctx, app, status).await?;
    Ok((Action::requeue(ctx.resync), "rejected"))
}

/// Why the children could not be applied.
enum Refusal {
    /// An API error (maybe a permanent refusal, see [`Error::rejection`]).
    Api(Error),
    /// A child's name is taken by an object this app does not control.
    Conflict { kind: &'static str, name: String },
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Api(e)
    }
}

fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

async fn get<K>(api: &Api<K>, name: &str) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    api.get_opt(name).await.map_err(|source| Error::GetObject {
        kind: kind_of::<K>(),
        name: name.to_string(),
        source,
    })
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    // The four kinds the operator writes; `K::kind` borrows from a temporary.
    match K::kind(&()).as_ref() {
        "ConfigMap" => "ConfigMap",
        "Deployment" => "Deployment",
        "Service" => "Service",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        "WsgiApp" => "WsgiApp",
        _ => "object",
    }
}

/// Applies `desired` unless `observed` already is it; returns the object as it now is.
async fn ensure<K>(
    ctx: &Context,
    app: &WsgiApp,
    api: &Api<K>,
    desired: K,
    observed: Option<K>,
) -> Result<K, Refusal>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let kind = kind_of::<K>();
    let name = desired.name_any();
    let desired = stamp_hash(desired);
    if let Some(observed) = observed {
        if !controlled_by(observed.meta(), &app.uid().unwrap_or_default()) {
            return Err(Refusal::Conflict { kind, name });
        }
        if is_applied(&desired, &observed) {
            debug!(kind, name, "unchanged");
            return Ok(observed);
        }
        // The operator applied this very object last: what differs, another manager changed.
        let reverted = hash_matches(&desired, &observed)
            .then(|| describe_drift(app, kind, &name, &desired, &observed))
            .flatten();
        repair_lists(ctx, app, api, &desired, &observed).await?;
        return match reverted {
            Some(note) => apply(ctx, app, api, &desired, "Reverted", Some(note)).await,
            None => apply(ctx, app, api, &desired, "Updated", None).await,
        };
    }
    apply(ctx, app, api, &desired, "Created", None).await
}

/// What another manager changed in a child the operator applied, for the Event that says it
/// was put back: each field, the manager that changed it (from the child's managedFields) and
/// the WsgiApp field that sets it. None when no field of the operator's differs (an entry
/// added to a list, which [`repair_lists`] reports).
fn describe_drift<K>(
    app: &WsgiApp,
    kind: &str,
    name: &str,
    desired: &K,
    observed: &K,
) -> Option<String>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let d = serde_json::to_value(desired).expect("k8s objects serialize to JSON");
    let o = serde_json::to_value(observed).expect("k8s objects serialize to JSON");
    let managed = observed.meta().managed_fields.clone().unwrap_or_default();
    let autoscaling = app
        .spec
        .autoscaling
        .as_ref()
        .and_then(|a| a.enabled)
        .unwrap_or(false);
    let app_name = app.name_any();
    let changes: Vec<String> = compute_drift(&d, &o)
        .iter()
        .map(|path| {
            let field = display_path(path);
            let managers = compute_field_managers(&managed, path, FIELD_MANAGER);
            let who = if managers.is_empty() {
                "another manager".to_string()
            } else {
                managers.join(" and ")
            };
            let owner = owning_field(kind, &field, &app_name, autoscaling);
            format!("{who} changed {field}, which the WsgiApp sets through {owner}")
        })
        .collect();
    (!changes.is_empty()).then(|| format!("Put back {kind} {name}: {}", changes.join("; ")))
}

fn apply_error<'a>(kind: &'static str, name: &'a str) -> impl FnOnce(kube::Error) -> Error + 'a {
    move |source| Error::ApplyObject {
        kind,
        name: name.to_string(),
        source,
    }
}

/// Takes the entries of keyed lists that another manager put into a child out of it (see
/// [`compute_list_repair`]), so that the apply that follows leaves exactly the desired entries.
async fn repair_lists<K>(
    ctx: &Context,
    app: &WsgiApp,
    api: &Api<K>,
    desired: &K,
    observed: &K,
) -> Result<(), Refusal>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let d = serde_json::to_value(desired).expect("k8s objects serialize to JSON");
    let o = serde_json::to_value(observed).expect("k8s objects serialize to JSON");
    let ops = compute_list_repair(&d, &o);
    if ops.is_empty() {
        return Ok(());
    }
    let kind = kind_of::<K>();
    let name = desired.name_any();
    let paths: Vec<String> = ops
        .iter()
        .filter(|op| op["op"] == "replace")
        .filter_map(|op| op["path"].as_str().map(str::to_string))
        .collect();
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).expect("well-formed JSON Patch ops");
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let repaired = api
        .patch(&name, &params, &Patch::<()>::Json(patch))
        .await
        .map_err(apply_error(kind, &name))?;
    ctx.metrics.count_write(kind);
    let paths = paths.join(", ");
    info!(
        kind,
        name, paths, "took out list entries another manager added"
    );
    let note = format!("Took out of {kind} {name} the entries another manager put at {paths}");
    let related = repaired.object_ref(&());
    publish_event(
        ctx,
        app,
        EventType::Normal,
        "Repaired",
        "Apply",
        note,
        Some(related),
    )
    .await;
    Ok(())
}

async fn apply<K>(
    ctx: &Context,
    app: &WsgiApp,
    api: &Api<K>,
    desired: &K,
    verb: &str,
    note: Option<String>,
) -> Result<K, Refusal>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let kind = kind_of::<K>();
    let name = desired.name_any();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api
        .patch(&name, &params, &Patch::Apply(desired))
        .await
        .map_err(apply_error(kind, &name))?;
    ctx.metrics.count_write(kind);
    info!(kind, name, verb, "applied");
    let note = match note {
        Some(note) => note,
        None if kind == "ConfigMap" => {
            format!("{verb} {kind} {name}: running servers reload it without a restart")
        }
        None => format!("{verb} {kind} {name}"),
    };
    let related = applied.object_ref(&());
    publish_event(
        ctx,
        app,
        EventType::Normal,
        verb,
        "Apply",
        note,
        Some(related),
    )
    .await;
    Ok(applied)
}

async fn apply_children(ctx: &Context, app: &WsgiApp, v: &ValidatedApp) -> Result<(), Refusal> {
    let client = &ctx.client;
    let ns = &v.namespace;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);

    let observed_cm = get(&config_maps, &config_map_name(&v.name)).await?;
    let observed_dep = get(&deployments, &v.name).await?;
    let observed_svc = get(&services, &v.name).await?;
    let observed_pdb = get(&pdbs, &v.name).await?;

    let recommended = app
        .status
        .as_ref()
        .and_then(|s| s.autoscaler.as_ref())
        .and_then(|a| a.recommended_replicas);
    let current = observed_dep.as_ref().and_then(|d| d.spec.replicas);
    let replicas = compute_replicas(v, recommended, current);
    let children = render_children(v, replicas);

    // The ConfigMap first: new pods mount it.
    ensure(ctx, app, &config_maps, children.config_map, observed_cm).await?;
    let deployment = ensure(ctx, app, &deployments, children.deployment, observed_dep).await?;
    ensure(ctx, app, &services, children.service, observed_svc).await?;
    match (children.pdb, observed_pdb) {
        (Some(pdb), observed) => {
            ensure(ctx, app, &pdbs, pdb, observed).await?;
        }
        (None, Some(stale)) if controlled_by(&stale.metadata, &v.owner.uid) => {
            let name = stale.name_any();
            pdbs.delete(&name, &DeleteParams::default())
                .await
                .map_err(|source| Error::DeleteObject {
                    kind: "PodDisruptionBudget",
                    name: name.clone(),
                    source,
                })?;
            ctx.metrics.count_write("PodDisruptionBudget");
            info!(
                name,
                "deleted PodDisruptionBudget: replicas.min is 1 or less"
            );
            let note = format!("Deleted PodDisruptionBudget {name}: replicas.min is 1 or less");
            let related = stale.object_ref(&());
            publish_event(
                ctx,
                app,
                EventType::Normal,
                "Deleted",
                "Delete",
                note,
                Some(related),
            )
            .await;
        }
        (None, _) => {}
    }

    // Why pods are not ready, from the pod watch (whose changes wake this reconcile). With
    // spec.inject, an image the package cannot run shows only in its pods' termination
    // messages: the start command's verdict comes first.
    let pods = ctx.pods.pods_of(&v.namespace, &v.name);
    let pods = pods.iter().map(AsRef::as_ref);
    let unservable = v
        .inject
        .as_ref()
        .and_then(|_| compute_unservable(pods.clone(), &v.image));
    let pod_issue = compute_pod_issue(pods);
    let scale_writers = if needs_scale_writers(app) {
        hpas_targeting(ctx, v).await
    } else {
        Vec::new()
    };
    let status = compute_status(
        app,
        Outcome::Applied {
            app: v,
            deployment: Some(&deployment),
            desired: replicas,
            unservable: unservable.as_ref(),
            pod_issue: pod_issue.as_ref(),
            scale_writers: &scale_writers,
        },
        now(),
    );
    publish_status(ctx, app, status).await?;
    Ok(())
}

/// The HorizontalPodAutoscalers in the app's namespace that target it, to name who writes
/// its scale (the API server does not record it for a custom resource). Listed only while
/// autoscaling is on and the scale was written; best effort: a failed list is logged and
/// counted, and the condition says the writer is unknown.
async fn hpas_targeting(ctx: &Context, v: &ValidatedApp) -> Vec<String> {
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &v.namespace);
    match api.list(&ListParams::default()).await {
        Ok(list) => compute_hpas_targeting(&list.items, &v.name),
        Err(e) => {
            ctx.metrics.count_error("list_hpas");
            warn!(error = %e, "cannot list the HorizontalPodAutoscalers");
            Vec::new()
        }
    }
}

/// Writes `status` when it differs from what the WsgiApp has, and publishes the events of its
/// transitions. An unchanged status writes nothing.
async fn publish_status(
    ctx: &Context,
    app: &WsgiApp,
    status: crate::crd::WsgiAppStatus,
) -> Result<(), Error> {
    let old = app.status.as_ref();
    if old.map(reconciler_fields).as_ref() == Some(&status) {
        return Ok(());
    }
    let name = app.name_any();
    let api: Api<WsgiApp> =
        Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": WsgiApp::api_version(&()),
        "kind": WsgiApp::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::PatchStatus {
        name: name.clone(),
        source,
    })?;
    for (condition, what) in [
        (DEGRADED, "degraded"),
        (SCALE_CONFLICT, "another writer sets the scale"),
    ] {
        if let Some((reason, message)) = warning_transition(old, &status, condition) {
            warn!(reason, message, "{what}");
            publish_event(
                ctx,
                app,
                EventType::Warning,
                &reason,
                "Reconcile",
                message,
                None,
            )
            .await;
        }
    }
    if let Some((reason, message)) = ready_transition(old, &status) {
        info!(reason, message, "ready");
        publish_event(
            ctx,
            app,
            EventType::Normal,
            &reason,
            "Reconcile",
            message,
            None,
        )
        .await;
    }
    Ok(())
}

/// Events are best effort: a failure is logged and counted, never fails the reconcile.
/// `related` is the child the event is about: the recorder folds repeats of the same event
/// into a series, and the child tells "Created ConfigMap" from "Created Deployment".
async fn publish_event(
    ctx: &Context,
    app: &WsgiApp,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        // The Events API caps notes at 1 kB.
        note: Some(note.chars().take(1000).collect()),
        action: action.to_string(),
        secondary: related,
    };
    if let Err(e) = ctx.recorder.publish(&event, &app.object_ref(&())).await {
        ctx.metrics.count_error("publish_event");
        warn!(error = %e, reason, "cannot publish event");
    }
}

#[cfg(test)]
mod tests;
