//! The reconcile loop's I/O: read the children (from the watches' caches, asking the API
//! server only on a miss), apply what [`crate::render`] wants with server-side apply, patch the
//! status, queue events. Every decision is made by the pure functions of
//! [`crate::validate`], [`crate::render`], [`crate::status`] and [`crate::drift`]; this
//! module only carries them out.
//!
//! A first reconcile is four round trips, not thirteen: the reads of the children that are not
//! cached go out together; the ConfigMap is applied first (new pods mount it), then the
//! Deployment, Service and PodDisruptionBudget together; then the status. Events go to a
//! queue that another task publishes ([`crate::events`]). Reconciles of different apps run
//! side by side (`--concurrency`); the controller never runs one app twice at once.
//!
//! * Invalid spec (permanent): `Ready=False` with the reason, a Warning event, no child
//!   touched, wait for the next change.
//! * Object refused by the API server (400/422) or a name taken by an object this app does not
//!   own (permanent until the spec changes): the same, retried after the resync period.
//! * API or network error (transient): the error goes back to the controller, which retries
//!   with a per-object exponential backoff ([`compute_backoff`]).
//! * Steady state: every child in the caches is already what would be applied and the status
//!   is unchanged, so the reconcile sends the API server nothing at all.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::api_error::namespace_terminating;
use crate::cache::{Caches, Stores};
use crate::crd::WsgiApp;
use crate::drift::{
    compute_drift, compute_field_managers, compute_list_repair, display_path, hash_matches,
    is_applied, owning_field, repaired_paths, stamp_hash,
};
use crate::events::{EventSink, Queued, Reporting};
use crate::explain::compute_pod_issue;
use crate::http::Health;
use crate::metrics::Metrics;
use crate::render::{config_map_name, pods_service_name, render_routed_children, Routed};
use crate::status::{
    compute_hpas_targeting, compute_replicas, compute_status, compute_unservable,
    needs_scale_writers, published_recommendation, ready_transition, reconciler_fields,
    warning_transition, Outcome, DEGRADED, SCALE_CONFLICT,
};
use crate::validate::{validate_app, ValidatedApp, ValidationError};

/// The one field manager of every write the reconciler makes (also the `reportingController`
/// of its Events).
pub const FIELD_MANAGER: &str = Reporting::Reconciler.name();

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

    /// Whether the API server could not be reached or could not answer (a network error, a
    /// 5xx, 429): an outage, not something wrong with the object.
    pub fn is_unreachable(&self) -> bool {
        let source = match self {
            Error::Metadata(_) => return false,
            Error::GetObject { source, .. }
            | Error::ApplyObject { source, .. }
            | Error::DeleteObject { source, .. }
            | Error::PatchStatus { source, .. } => source,
        };
        match source {
            kube::Error::Api(status) => status.code >= 500 || status.code == 429,
            _ => true,
        }
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
    /// Where events are queued; [`publish_events`](crate::events::publish_events) sends them.
    pub events: EventSink,
    /// The receiving end of `events`, while no publisher runs.
    events_rx: Mutex<Option<mpsc::Receiver<Queued>>>,
    /// This operator replica's name in events.
    pub instance: Option<String>,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// How often a healthy app is reconciled without a change (drift repair).
    pub resync: Duration,
    /// What `/readyz` reports; the controllers' watches report to it.
    pub health: Arc<Health>,
    /// What the watches hold (empty until the controllers run: every read then goes to the
    /// API server).
    caches: RwLock<Arc<Caches>>,
    /// The failing objects and their backoff.
    failures: Mutex<HashMap<String, Failure>>,
    /// The activator's path, when the operator runs with an activator.
    pub routing: Option<Arc<crate::routing::Routing>>,
}

impl Context {
    /// A context for `client`; `instance` names this operator replica in events.
    pub fn new(
        client: Client,
        instance: Option<String>,
        metrics: Arc<Metrics>,
        resync: Duration,
    ) -> Self {
        let (events, rx) = EventSink::new(metrics.clone());
        Context {
            client,
            events,
            events_rx: Mutex::new(Some(rx)),
            instance,
            metrics,
            resync,
            health: Arc::new(Health::default()),
            caches: RwLock::new(Arc::default()),
            failures: Mutex::new(HashMap::new()),
            routing: None,
        }
    }

    /// The same context with the activator's path.
    pub fn with_routing(mut self, routing: Option<Arc<crate::routing::Routing>>) -> Self {
        self.routing = routing;
        self
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

    /// What the watches hold now.
    pub fn caches(&self) -> Arc<Caches> {
        self.caches
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads from `caches` from now on (the controllers started), or from the API server only
    /// (they stopped: `Caches::default()`).
    pub fn set_caches(&self, caches: Caches) {
        *self.caches.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(caches);
    }

    /// The receiver of the event queue, for the publisher of one leadership term (None while
    /// another publisher has it).
    pub fn take_event_receiver(&self) -> Option<mpsc::Receiver<Queued>> {
        self.events_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Gives the receiver back when the publisher stops.
    pub fn return_event_receiver(&self, rx: mpsc::Receiver<Queued>) {
        *self.events_rx.lock().unwrap_or_else(|e| e.into_inner()) = Some(rx);
    }

    /// The API server answers again after an outage: objects whose reconciles failed only
    /// because it could not be reached are tried at the next trigger instead of waiting out a
    /// backoff grown during the outage (up to 5 minutes).
    pub fn forget_unreachable_failures(&self) {
        let mut failures = self.failures();
        let before = failures.len();
        failures.retain(|_, f| !f.unreachable);
        let forgotten = before - failures.len();
        if forgotten > 0 {
            info!(
                apps = forgotten,
                "the API server answers again: retrying the apps its outage failed"
            );
        }
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
    /// The last failure was the API server not answering (no status from it, or a 5xx/429).
    pub unreachable: bool,
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
        unreachable: false,
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
    published_recommendation(app).hash(&mut h);
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
    let unreachable = error.is_unreachable();
    let failure = {
        let mut failures = ctx.failures();
        let key = object_key(&app);
        let f = Failure {
            unreachable,
            ..compute_failure(failures.get(&key), app.metadata.generation, Instant::now())
        };
        failures.insert(key, f);
        f
    };
    ctx.metrics.count_error(error.metric_label());
    let delay = compute_backoff(failure.count);
    if unreachable {
        // The API server's outage is logged once, by its probe and the watches; a line per
        // app and attempt would bury it.
        debug!(
            namespace = app.namespace().unwrap_or_default(),
            name = %app.name_any(),
            error = %error,
            attempt = failure.count,
            retry_in_seconds = delay.as_secs(),
            "reconcile failed: API server unreachable"
        );
    } else {
        warn!(
            namespace = app.namespace().unwrap_or_default(),
            name = %app.name_any(),
            error = %error,
            attempt = failure.count,
            retry_in_seconds = delay.as_secs(),
            "reconcile failed"
        );
    }
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
        Ok(Settled::Yes) => return Ok((Action::requeue(ctx.resync), "ok")),
        Ok(Settled::WatchPods) => {
            return Ok((Action::requeue(ctx.resync.min(INJECT_RECHECK)), "ok"))
        }
        Err(Refusal::Api(Error::ApplyObject { source, .. })) if namespace_terminating(&source) => {
            debug!("the namespace is being deleted; the app goes with it");
            return Ok((Action::await_change(), "deleting"));
        }
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

/// The child `name` as it is: from the watch's cache, else (not cached: not created yet, not
/// listed yet, or someone else's object without the operator's label) from the API server.
async fn observe<K>(
    ctx: &Context,
    cached: &Stores<K>,
    api: &Api<K>,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    if let Some(obj) = cached.get(namespace, name) {
        ctx.metrics.count_child_read("cache");
        return Ok(Some((*obj).clone()));
    }
    ctx.metrics.count_child_read("api");
    api.get_opt(name).await.map_err(|source| Error::GetObject {
        kind: kind_of::<K>(),
        name: name.to_string(),
        source,
    })
}

/// The first child whose name is taken by an object this app does not control.
fn find_conflict(
    observed: &[Option<&ObjectMeta>],
    kinds: &[&'static str],
    uid: &str,
) -> Option<Refusal> {
    observed
        .iter()
        .zip(kinds)
        .find_map(|(meta, kind)| match meta {
            Some(m) if !controlled_by(m, uid) => Some(Refusal::Conflict {
                kind,
                name: m.name.clone().unwrap_or_default(),
            }),
            _ => None,
        })
}

/// A child the reconcile wrote, for its Event.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `Created`, `Updated`, `Reverted` or `Deleted`.
    pub verb: &'static str,
    /// The child's kind.
    pub kind: &'static str,
    /// The child's name.
    pub name: String,
    /// The child.
    pub related: ObjectReference,
    /// What was put back, for a `Reverted` change (its own Event).
    pub note: Option<String>,
}

/// The Events of one reconcile's writes: one per verb (Created, Updated, Deleted), naming
/// every child it concerns (`Created ConfigMap shop-config, Deployment shop and Service
/// shop`), with the child as the related object when there is one. One Event instead of one
/// per child: during the convergence of 1000 new apps the Events were 4000 of the operator's
/// 13,000 requests to a busy API server. Pure.
pub fn build_change_events(
    changes: &[Change],
) -> Vec<(&'static str, String, Option<ObjectReference>)> {
    let mut out = Vec::new();
    for verb in ["Created", "Updated", "Deleted"] {
        let these: Vec<&Change> = changes.iter().filter(|c| c.verb == verb).collect();
        let Some(first) = these.first() else { continue };
        let names: Vec<String> = these
            .iter()
            .map(|c| format!("{} {}", c.kind, c.name))
            .collect();
        let listed = match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => names.join(""),
        };
        let mut note = format!("{verb} {listed}");
        if verb == "Updated" && these.iter().any(|c| c.kind == "ConfigMap") {
            note.push_str(": running servers reload the ConfigMap without a restart");
        }
        if verb == "Deleted" && these.iter().any(|c| c.kind == "PodDisruptionBudget") {
            note.push_str(": replicas.min is 1 or less");
        }
        let related = (these.len() == 1).then(|| first.related.clone());
        out.push((verb, note, related));
    }
    // A put-back field is news to whoever changed it: one Event per child, naming the field,
    // the manager and the WsgiApp field that sets it.
    for c in changes.iter().filter(|c| c.verb == "Reverted") {
        let note = c
            .note
            .clone()
            .unwrap_or_else(|| format!("Put back {} {}", c.kind, c.name));
        out.push(("Reverted", note, Some(c.related.clone())));
    }
    out
}

/// Applies `desired` unless `observed` already is it; returns the object as it now is, and
/// what was written.
async fn ensure<K>(
    ctx: &Context,
    app: &WsgiApp,
    api: &Api<K>,
    desired: K,
    observed: Option<K>,
) -> Result<(K, Option<Change>), Refusal>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let kind = kind_of::<K>();
    let name = desired.name_any();
    let desired = stamp_hash(desired);
    let (verb, note) = match observed {
        Some(observed) if is_applied(&desired, &observed) => {
            debug!(kind, name, "unchanged");
            return Ok((observed, None));
        }
        Some(observed) => {
            // The operator applied this very object last: what differs, another manager
            // changed. The caches keep no managed fields, so the child is read again to
            // name that manager (only on such a drift).
            let reverted = if hash_matches(&desired, &observed) {
                let fresh = match observed.meta().managed_fields {
                    None => api.get(&name).await.ok(),
                    Some(_) => None,
                };
                describe_drift(
                    app,
                    kind,
                    &name,
                    &desired,
                    fresh.as_ref().unwrap_or(&observed),
                )
            } else {
                None
            };
            repair_lists(ctx, app, api, &desired, &observed).await?;
            match reverted {
                Some(note) => ("Reverted", Some(note)),
                None => ("Updated", None),
            }
        }
        None => ("Created", None),
    };
    let applied = apply(ctx, api, &desired, verb).await?;
    let change = Change {
        verb,
        kind,
        name,
        related: applied.object_ref(&()),
        note,
    };
    Ok((applied, Some(change)))
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
    let patch = compute_list_repair(&to_json(desired), &to_json(observed));
    if patch.0.is_empty() {
        return Ok(());
    }
    let kind = kind_of::<K>();
    let name = desired.name_any();
    let paths = repaired_paths(&patch).join(", ");
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let repaired = api
        .patch(&name, &params, &Patch::<()>::Json(patch))
        .await
        .map_err(apply_error(kind, &name))?;
    ctx.metrics.count_write(kind);
    info!(
        kind,
        name, paths, "took out list entries another manager added"
    );
    let note = format!("Took out of {kind} {name} the entries another manager put at {paths}");
    queue_event(
        ctx,
        app,
        false,
        "Repaired",
        "Apply",
        note,
        Some(repaired.object_ref(&())),
    );
    Ok(())
}

/// An object the operator built, as JSON.
fn to_json<K: Serialize>(obj: &K) -> serde_json::Value {
    serde_json::to_value(obj).expect("k8s objects serialize to JSON")
}

async fn apply<K>(ctx: &Context, api: &Api<K>, desired: &K, verb: &str) -> Result<K, Refusal>
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
    Ok(applied)
}

/// Deletes the PodDisruptionBudget the app no longer needs (replicas.min is 1 or less).
async fn delete_pdb(
    ctx: &Context,
    pdbs: &Api<PodDisruptionBudget>,
    stale: &PodDisruptionBudget,
) -> Result<Option<Change>, Refusal> {
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
    Ok(Some(Change {
        verb: "Deleted",
        kind: "PodDisruptionBudget",
        name,
        related: stale.object_ref(&()),
        note: None,
    }))
}

/// An app that left the activator's path (autoscaling off, TLS on): the public Service has
/// its selector back (applied beside this), so the operator's EndpointSlice and the pods
/// Service go.
async fn leave_activator_path(
    ctx: &Context,
    services: &Api<Service>,
    stale: &Service,
    v: &ValidatedApp,
) -> Result<Option<Change>, Refusal> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &v.namespace);
    let slice = format!("{}{}", v.name, crate::routing::PUBLIC_SLICE_SUFFIX);
    for (kind, result) in [
        (
            "EndpointSlice",
            slices
                .delete(&slice, &DeleteParams::default())
                .await
                .map(|_| ()),
        ),
        (
            "Service",
            services
                .delete(&stale.name_any(), &DeleteParams::default())
                .await
                .map(|_| ()),
        ),
    ] {
        match result {
            Ok(()) => ctx.metrics.count_write(kind),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::DeleteObject {
                    kind,
                    name: if kind == "Service" {
                        stale.name_any()
                    } else {
                        slice
                    },
                    source,
                }
                .into())
            }
        }
    }
    info!(app = %v.name, "left the activator's path: deleted its pods Service and EndpointSlice");
    Ok(Some(Change {
        verb: "Deleted",
        kind: "Service",
        name: stale.name_any(),
        related: stale.object_ref(&()),
        note: None,
    }))
}

async fn apply_children(
    ctx: &Context,
    app: &WsgiApp,
    v: &ValidatedApp,
) -> Result<Settled, Refusal> {
    let client = &ctx.client;
    let ns = v.namespace.as_str();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let caches = ctx.caches();
    let cached = &caches.children;

    // Only what the caches miss goes to the API server, all of it at once (each read runs to
    // its end; the first error, in this order, is the one reported).
    let cm_name = config_map_name(&v.name);
    let (observed_cm, observed_dep, observed_svc, observed_pdb) = futures::join!(
        observe(ctx, &cached.config_maps, &config_maps, ns, &cm_name),
        observe(ctx, &cached.deployments, &deployments, ns, &v.name),
        observe(ctx, &cached.services, &services, ns, &v.name),
        observe(ctx, &cached.pdbs, &pdbs, ns, &v.name),
    );
    let (observed_cm, observed_dep, observed_svc, observed_pdb) =
        (observed_cm?, observed_dep?, observed_svc?, observed_pdb?);
    // The autoscaler's newest recommendation: handed over in memory before its status write
    // comes back through the watch (crate::handoff), else the status'.
    let recommended = caches
        .recommendations
        .of(ns, &v.name)
        .or_else(|| published_recommendation(app));
    let current = observed_dep.as_ref().and_then(|d| d.spec.replicas);
    let replicas = compute_replicas(v, recommended, current);
    // On the activator's path: a pods Service, and the public one without a selector once
    // the operator's EndpointSlice exists.
    let routed = match &ctx.routing {
        Some(r) if crate::routing::takes_part(v) => Routed {
            enabled: true,
            public_slice: r.public_slice(ns, &v.name).is_some(),
        },
        _ => Routed::default(),
    };
    if v.autoscaling.scale_to_zero.is_some() && ctx.routing.is_none() {
        queue_event(
            ctx,
            app,
            true,
            "ScaleToZeroUnavailable",
            "Reconcile",
            "scaleToZero is on but the operator runs without the activator \
             (--activator-service, the chart's activator.enabled): the app keeps at least 1 pod"
                .into(),
            None,
        );
    }
    let pods_svc_name = pods_service_name(&v.name);
    let observed_pods_svc = match &ctx.routing {
        Some(_) => observe(ctx, &cached.services, &services, ns, &pods_svc_name).await?,
        None => None,
    };
    let children = render_routed_children(v, replicas, routed);

    // A name taken by someone else's object: touch nothing (a permanent refusal until a human
    // renames one of them). A PodDisruptionBudget the app does not want is not its business.
    let wanted_pdb = observed_pdb.as_ref().filter(|_| children.pdb.is_some());
    if let Some(conflict) = find_conflict(
        &[
            observed_cm.as_ref().map(|o| &o.metadata),
            observed_dep.as_ref().map(|o| &o.metadata),
            observed_svc.as_ref().map(|o| &o.metadata),
            wanted_pdb.map(|o| &o.metadata),
        ],
        &["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"],
        &v.owner.uid,
    ) {
        return Err(conflict);
    }

    // The ConfigMap first: new pods mount it. Then the rest, side by side; each runs to its
    // end, and the first refusal (in this order) is the one reported, after the Events of
    // what was written.
    let (_, cm_change) = Box::pin(ensure(
        ctx,
        app,
        &config_maps,
        children.config_map,
        observed_cm,
    ))
    .await?;
    let pdb = async {
        match (children.pdb, observed_pdb) {
            (Some(pdb), observed) => Box::pin(ensure(ctx, app, &pdbs, pdb, observed))
                .await
                .map(|(_, c)| c),
            (None, Some(stale)) if controlled_by(&stale.metadata, &v.owner.uid) => {
                delete_pdb(ctx, &pdbs, &stale).await
            }
            (None, _) => Ok(None),
        }
    };
    let pods_service = async {
        match (children.pods_service, observed_pods_svc) {
            (Some(svc), observed) => Box::pin(ensure(ctx, app, &services, svc, observed))
                .await
                .map(|(_, c)| c),
            (None, Some(stale)) if controlled_by(&stale.metadata, &v.owner.uid) => {
                leave_activator_path(ctx, &services, &stale, v).await
            }
            (None, _) => Ok(None),
        }
    };
    let (deployment, service, pdb, pods_service) = futures::join!(
        Box::pin(ensure(
            ctx,
            app,
            &deployments,
            children.deployment,
            observed_dep
        )),
        Box::pin(ensure(ctx, app, &services, children.service, observed_svc)),
        pdb,
        pods_service,
    );
    let changes: Vec<Change> = [
        cm_change,
        deployment.as_ref().ok().and_then(|(_, c)| c.clone()),
        service.as_ref().ok().and_then(|(_, c)| c.clone()),
        pdb.as_ref().ok().and_then(Clone::clone),
        pods_service.as_ref().ok().and_then(Clone::clone),
    ]
    .into_iter()
    .flatten()
    .collect();
    for (verb, note, related) in build_change_events(&changes) {
        let action = if verb == "Deleted" { "Delete" } else { "Apply" };
        queue_event(ctx, app, false, verb, action, note, related);
    }
    let (deployment, _) = deployment?;
    service?;
    pdb?;
    pods_service?;

    // Why pods are not ready, from the shared pod watch (whose changes wake this reconcile).
    // With spec.inject, an image the package cannot run shows only in its pods' termination
    // messages (the Deployment just sees unready pods): the start command's verdict comes
    // first, read while pods are not ready.
    let all_ready = deployment
        .status
        .as_ref()
        .is_some_and(|s| s.ready_replicas.unwrap_or(0) >= replicas);
    let pods = pods_of_app(ctx, &caches, v).await;
    let unservable = match &v.inject {
        Some(_) if !all_ready => compute_unservable(pods.iter().map(AsRef::as_ref), &v.image),
        _ => None,
    };
    let pod_issue = compute_pod_issue(pods.iter().map(AsRef::as_ref));
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
    Ok(if v.inject.is_some() && !all_ready {
        Settled::WatchPods
    } else {
        Settled::Yes
    })
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

/// Whether the children have settled, or the pods need another look soon.
enum Settled {
    /// Nothing to look at before the next change or resync.
    Yes,
    /// Injected pods are not all ready: their start command may yet report on the image.
    WatchPods,
}

/// How soon the pods of an injected app that are not ready are looked at again.
const INJECT_RECHECK: Duration = Duration::from_secs(15);

/// How long a reconcile waits for the shared pod watch's first list after a start, before it
/// lists the app's pods itself.
const POD_CACHE_WAIT: Duration = Duration::from_secs(5);

/// The pods of the app, for what the status says about them (why they are not ready, the
/// start command's verdict on an injected image): the shared pod cache, once its watch has
/// listed (a reconcile right after a start waits up to [`POD_CACHE_WAIT`] for that: reading
/// the empty cache would write a status without the pods' reasons and, one list later,
/// write it back; 98 of 1000 apps did after a restart), else a list (best effort: a failed
/// list is logged and counted, and the status says what the Deployment says).
async fn pods_of_app(ctx: &Context, caches: &Caches, v: &ValidatedApp) -> Vec<Arc<Pod>> {
    if caches
        .pods
        .wait_listed_in(&v.namespace, POD_CACHE_WAIT)
        .await
    {
        return caches.pods.pods_of(&v.namespace, &v.name);
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &v.namespace);
    let selector = crate::render::selector_string(&v.name);
    match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items.into_iter().map(Arc::new).collect(),
        Err(e) => {
            ctx.metrics.count_error("list_app_pods");
            warn!(error = %e, "cannot list the pods of the app");
            Vec::new()
        }
    }
}

/// Writes `status` when it differs from what the WsgiApp has, and queues the events of its
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
    ctx.metrics.count_write("WsgiApp/status");
    for (condition, what) in [
        (DEGRADED, "degraded"),
        (SCALE_CONFLICT, "another writer sets the scale"),
    ] {
        if let Some((reason, message)) = warning_transition(old, &status, condition) {
            warn!(reason, message, "{what}");
            queue_event(ctx, app, true, &reason, "Reconcile", message, None);
        }
    }
    if let Some((reason, message)) = ready_transition(old, &status) {
        info!(reason, message, "ready");
        queue_event(ctx, app, false, &reason, "Reconcile", message, None);
    }
    Ok(())
}

/// Queues an event about `app` for the publisher (best effort, never waits: see
/// [`crate::events`]). `related` is the child the event is about.
fn queue_event(
    ctx: &Context,
    app: &WsgiApp,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    ctx.events.queue(Queued {
        reporting: Reporting::Reconciler,
        regarding: app.object_ref(&()),
        warning,
        reason: reason.to_string(),
        action: action.to_string(),
        note,
        related,
    });
}

#[cfg(test)]
mod tests;
