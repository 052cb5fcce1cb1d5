//! `wsgiscale-operator run`: wires the client, the HTTP server, leader election and one
//! controller per watched namespace, and shuts them all down on SIGTERM.
//!
//! Each leadership term runs, per watched scope (a namespace, or all of them): a watch of the
//! WsgiApps (the controller's trigger and store), one watch per kind of child (the triggers of
//! `owns`, and the reflector stores the reconciler reads instead of GETs) and one shared pod
//! watch (the [`PodCache`] the autoscaler and the reconciler read by app); plus the
//! autoscaler and the task that publishes the queued Events. Every watch retries as
//! [`crate::watch`] says.

use std::future::ready;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, ListParams};
use kube::client::ClientBuilder;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, reflector, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cache::{trim, Caches, PodCache, Stores};
use crate::cli::RunArgs;
use crate::crd::WsgiApp;
use crate::events::publish_events;
use crate::http::{self, Health};
use crate::layout::APP_LABEL;
use crate::leader::{LeaderElector, LeaseTiming};
use crate::metrics::{ApiLatencyLayer, Metrics};
use crate::pods::PodWakes;
use crate::reconcile::{compute_trigger_hash, error_policy, reconcile, Context};
use crate::routing::{public_slice_selector, ActivatorConfig, DemandBoard, Routing, RoutingStores};
use crate::scrape::{run_autoscaler, Autoscaler};
use crate::watch::{objects, resilient, QUIET};

/// Objects per page of a watch's (re)list: a page is held whole while its objects are filed,
/// so smaller pages lower the peak memory of a start with thousands of children and pods.
const LIST_PAGE: u32 = 100;

/// Two-second attempts at listing WsgiApps before giving up at startup.
const CRD_WAIT_ATTEMPTS: u32 = 30;

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No kubeconfig and not in a cluster.
    #[error("cannot configure the Kubernetes client (KUBECONFIG or in-cluster): {0}")]
    Client(#[source] kube::Error),
    /// The HTTP server's address is taken.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The WsgiApp CRD is not installed (or not readable).
    #[error("cannot list WsgiApps; is the CRD installed (`wsgiscale-operator crd | kubectl apply --server-side -f -`)? {0}")]
    Crd(#[source] kube::Error),
    /// A signal handler could not be installed.
    #[error("cannot install the signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// Runs the operator until SIGTERM or SIGINT; returns Ok on a graceful shutdown.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let RunArgs {
        namespaces,
        http_bind,
        leader_election,
        lease_name,
        lease_namespace,
        lease_duration_seconds,
        identity,
        resync_seconds,
        concurrency,
        activator_service,
        activator_routes,
        activator_namespace,
        log_format: _,
        log_level: _,
    } = args;

    // Installed before anything else, so a SIGTERM during startup is not lost.
    let shutdown = shutdown_on_signal()?;
    // An empty WSGISCALE_OPERATOR_NAMESPACES means all namespaces, not the namespace "".
    let namespaces: Vec<String> = namespaces
        .into_iter()
        .filter(|n| !n.trim().is_empty())
        .collect();

    let metrics = Arc::new(Metrics::default());
    let client = build_client(&metrics).await?;
    let health = Arc::new(Health::default());
    let listener = http::bind(http_bind)
        .await
        .map_err(|source| RunError::Bind {
            addr: http_bind,
            source,
        })?;
    let demand = Arc::new(DemandBoard::default());
    let routing = activator_service.map(|service| {
        let namespace = activator_namespace
            .clone()
            .or_else(|| lease_namespace.clone())
            .unwrap_or_else(|| client.default_namespace().to_string());
        info!(%namespace, %service, routes = %activator_routes, "routing autoscaled apps through the activator");
        Arc::new(Routing::new(
            client.clone(),
            ActivatorConfig {
                namespace,
                service,
                routes: activator_routes.clone(),
            },
            demand.clone(),
        ))
    });
    let http_task = tokio::spawn(http::serve(
        listener,
        health.clone(),
        metrics.clone(),
        routing.clone(),
        shutdown.clone(),
    ));

    let probe: Api<WsgiApp> = match namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    wait_for_crd(&probe, &shutdown).await?;
    health.set_ready(true);

    let identity = identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("wsgiscale-operator-{}", std::process::id()));
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            Some(identity.clone()),
            metrics.clone(),
            Duration::from_secs(resync_seconds),
        )
        .with_health(health.clone())
        .with_routing(routing),
    );
    let prober = tokio::spawn(probe_api(probe, ctx.clone(), shutdown.clone()));

    let (leading, elector) = if leader_election {
        let ns = lease_namespace.unwrap_or_else(|| client.default_namespace().to_string());
        let timing = LeaseTiming::from_lease_duration(Duration::from_secs(lease_duration_seconds));
        info!(lease = %lease_name, namespace = %ns, identity = %identity, "campaigning for the leader lease");
        let elector = LeaderElector::new(
            Api::namespaced(client.clone(), &ns),
            lease_name,
            identity,
            timing,
        )
        .with_health(health.clone());
        let (tx, rx) = watch::channel(false);
        (rx, Some(tokio::spawn(elector.run(tx, shutdown.clone()))))
    } else {
        // No election: this replica leads until shutdown (the sender is dropped at once).
        (watch::channel(true).1, None)
    };

    lead_while_elected(&ctx, &namespaces, concurrency, leading, &shutdown).await;

    health.set_ready(false);
    shutdown.cancel();
    if let Some(elector) = elector {
        if let Err(e) = elector.await {
            error!(error = %e, "leader election task failed");
        }
    }
    let _ = prober.await;
    let _ = http_task.await;
    info!("stopped");
    Ok(())
}

/// A token cancelled on SIGTERM or SIGINT.
fn shutdown_on_signal() -> Result<CancellationToken, RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let shutdown = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    Ok(shutdown)
}

/// The client from KUBECONFIG or the pod's service account, every request timed into
/// `metrics`.
async fn build_client(metrics: &Arc<Metrics>) -> Result<Client, RunError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| RunError::Client(kube::Error::InferConfig(e)))?;
    let builder = ClientBuilder::try_from(config).map_err(RunError::Client)?;
    Ok(builder
        .with_layer(&ApiLatencyLayer::new(metrics.clone()))
        .build())
}

/// The CRD may be installed together with the operator and not be served yet: waits a little
/// for it, then fails with a hint.
async fn wait_for_crd(probe: &Api<WsgiApp>, shutdown: &CancellationToken) -> Result<(), RunError> {
    let mut attempt = 0u32;
    loop {
        match probe.list(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt < CRD_WAIT_ATTEMPTS && !shutdown.is_cancelled() => {
                attempt += 1;
                warn!(error = %e, attempt, "cannot list WsgiApps yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
            Err(e) => return Err(RunError::Crd(e)),
        }
    }
}

/// Runs the controllers during each term this replica leads, standing by between terms, until
/// `shutdown` (or until the elector is gone).
async fn lead_while_elected(
    ctx: &Arc<Context>,
    namespaces: &[String],
    concurrency: u16,
    mut leading: watch::Receiver<bool>,
    shutdown: &CancellationToken,
) {
    loop {
        // Standby until we lead.
        while !*leading.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = leading.changed() => if changed.is_err() { return },
            }
        }
        ctx.metrics.leader.set(1);
        info!("leading: starting the controllers");
        let stop = shutdown.child_token();
        let lost = {
            let stop = stop.clone();
            let mut leading = leading.clone();
            tokio::spawn(async move {
                // Sender dropped means leader election is off: we lead until shutdown.
                while leading.changed().await.is_ok() {
                    if !*leading.borrow() {
                        stop.cancel();
                        return;
                    }
                }
            })
        };
        run_controllers(ctx, namespaces, concurrency, stop).await;
        lost.abort();
        ctx.metrics.leader.set(0);
        if shutdown.is_cancelled() {
            return;
        }
        warn!("lost leadership: controllers stopped, back to standby");
    }
}

/// How often the API server is probed for readiness while it answers, and while it does not.
const PROBE_PERIOD: Duration = Duration::from_secs(5);
const PROBE_PERIOD_FAILING: Duration = Duration::from_secs(1);

/// Probes the API server (a one-item list of WsgiApps) until `stop`, for `/readyz`: unready
/// while it does not answer; once it answers again, the watches that stayed quiet since count
/// as resumed, and the apps whose reconciles failed only for the outage are retried at once.
pub async fn probe_api(probe: Api<WsgiApp>, ctx: Arc<Context>, stop: CancellationToken) {
    const SOURCE: &str = "api server";
    let mut failing = false;
    loop {
        match probe.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => {
                ctx.health.report(SOURCE, None);
                ctx.health.settle(QUIET, std::time::Instant::now());
                if std::mem::replace(&mut failing, false) {
                    ctx.forget_unreachable_failures();
                }
            }
            Err(e) => {
                failing = true;
                ctx.health.report(SOURCE, Some(e.to_string()));
            }
        }
        let period = if failing {
            PROBE_PERIOD_FAILING
        } else {
            PROBE_PERIOD
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// The API of a namespaced kind in `scope` (a namespace, or all).
fn api<K>(client: &Client, scope: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The watch sources of one leadership term, for `/readyz`: registered as not ready yet (until
/// each watch's first list) and forgotten when the term ends.
struct Sources {
    health: Arc<Health>,
    names: Vec<String>,
}

impl Sources {
    fn add(&mut self, kind: &str, scope: Option<&str>) -> String {
        let name = format!("watch {kind} in {}", scope.unwrap_or("all namespaces"));
        self.health.expect(&name);
        self.names.push(name.clone());
        name
    }
}

impl Drop for Sources {
    fn drop(&mut self) {
        for name in &self.names {
            self.health.forget(name);
        }
    }
}

/// What a watched kind of child is.
trait Watched:
    kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A watch of the children of kind `K` labelled as the operator's in `scope`: its reflector
/// store goes into `stores`, the stream of touched children (for `owns`) is returned.
fn child_watch<K: Watched>(
    ctx: &Context,
    sources: &mut Sources,
    stores: &mut Stores<K>,
    scope: Option<&str>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    labelled_watch(
        ctx,
        sources,
        stores,
        scope,
        "app.kubernetes.io/managed-by=wsgiscale-operator",
    )
}

/// A watch of the objects of kind `K` in `scope` matching `labels`, filed into `stores`.
fn labelled_watch<K: Watched>(
    ctx: &Context,
    sources: &mut Sources,
    stores: &mut Stores<K>,
    scope: Option<&str>,
    labels: &str,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    let owned = watcher::Config::default()
        .labels(labels)
        .page_size(LIST_PAGE);
    let (reader, writer) = reflector::store();
    stores.add(scope, reader);
    let kind = K::kind(&()).to_string();
    let events = watcher(api::<K>(&ctx.client, scope), owned).map_ok(|e| e.modify(trim));
    objects(
        reflector(
            writer,
            resilient(events, ctx.health.clone(), sources.add(&kind, scope)),
        )
        .touched_objects(),
    )
}

/// The shared pod watch of `scope`: every pod labelled with an app, filed into `pods` by app.
/// Runs until `stop`.
async fn run_pod_watch(
    ctx: Arc<Context>,
    name: String,
    pods: PodCache,
    wake: futures::channel::mpsc::UnboundedSender<ObjectRef<WsgiApp>>,
    scope: Option<String>,
    stop: CancellationToken,
) {
    let config = watcher::Config::default()
        .labels(APP_LABEL)
        .page_size(LIST_PAGE);
    let events = watcher(api::<Pod>(&ctx.client, scope.as_deref()), config);
    let mut wakes = PodWakes::default();
    resilient(events, ctx.health.clone(), name)
        .take_until(stop.cancelled())
        .for_each(|r| {
            if let Ok(event) = r {
                pods.apply(scope.as_deref(), &event);
                for app in wakes.apply(&event) {
                    // A routed app's slice lists its ready pods: rewritten now, not at the
                    // next tick.
                    if let Some(r) = &ctx.routing {
                        r.pods_changed(&(
                            app.namespace.clone().unwrap_or_default(),
                            app.name.clone(),
                        ));
                    }
                    // The controller is gone only when stopping.
                    let _ = wake.unbounded_send(app);
                }
            }
            ready(())
        })
        .await;
    pods.forget(scope.as_deref());
}

/// One controller per namespace (or one for all), the shared pod watches, the autoscaler and
/// the Event publisher, until `stop`; in-flight reconciles finish.
pub async fn run_controllers(
    ctx: &Arc<Context>,
    namespaces: &[String],
    concurrency: u16,
    stop: CancellationToken,
) {
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut sources = Sources {
        health: ctx.health.clone(),
        names: Vec::new(),
    };
    let mut caches = Caches::default();
    let mut public_slices: Stores<EndpointSlice> = Stores::default();
    let mut app_stores: Vec<Store<WsgiApp>> = Vec::new();
    let mut pod_watches = Vec::new();
    let mut controllers = Vec::new();
    for scope in scopes {
        let (reader, writer) = reflector::store();
        let events = watcher(
            api::<WsgiApp>(&ctx.client, scope),
            watcher::Config::default().any_semantic(),
        )
        .map_ok(|e| e.modify(trim));
        let apps = reflector(
            writer,
            resilient(events, ctx.health.clone(), sources.add("WsgiApp", scope)),
        )
        .applied_objects();
        let apps = objects(apps).predicate_filter(compute_trigger_hash, Default::default());
        let c = &mut caches.children;
        // A pod whose state changes wakes its app (the status says why pods are not ready).
        let (wake, woken) = futures::channel::mpsc::unbounded();
        // So does a new recommendation of the autoscaler.
        caches.recommendations.add_wake(scope, wake.clone());
        let controller = Controller::for_stream(apps, reader)
            .reconcile_on(woken)
            .with_config(ControllerConfig::default().concurrency(concurrency))
            .owns_stream(child_watch::<ConfigMap>(
                ctx,
                &mut sources,
                &mut c.config_maps,
                scope,
            ))
            .owns_stream(child_watch::<Deployment>(
                ctx,
                &mut sources,
                &mut c.deployments,
                scope,
            ))
            .owns_stream(child_watch::<Service>(
                ctx,
                &mut sources,
                &mut c.services,
                scope,
            ))
            .owns_stream(child_watch::<PodDisruptionBudget>(
                ctx,
                &mut sources,
                &mut c.pdbs,
                scope,
            ));
        // The public EndpointSlices the operator writes (owned by their app, so a change or a
        // deletion wakes it).
        let controller = match &ctx.routing {
            Some(_) => controller.owns_stream(labelled_watch::<EndpointSlice>(
                ctx,
                &mut sources,
                &mut public_slices,
                scope,
                &public_slice_selector(),
            )),
            None => controller,
        };
        // The autoscaler and the per-app metrics read the WsgiApps from the controllers' caches.
        app_stores.push(controller.store());
        pod_watches.push(run_pod_watch(
            ctx.clone(),
            sources.add("Pod", scope),
            caches.pods.clone(),
            wake,
            scope.map(str::to_string),
            stop.clone(),
        ));
        let stop = stop.clone();
        controllers.push(
            controller
                .graceful_shutdown_on(async move { stop.cancelled().await })
                .run(reconcile, error_policy, ctx.clone())
                .for_each(|result| async move {
                    match result {
                        Ok((obj, _)) => tracing::debug!(name = %obj.name, "reconciled"),
                        Err(e) => tracing::debug!(error = %e, "reconcile error"),
                    }
                }),
        );
    }
    // The ready activators, from their Service's EndpointSlices.
    let activator_watch = match &ctx.routing {
        Some(routing) => {
            let (reader, writer) = reflector::store();
            routing.set_stores(Some(RoutingStores {
                activators: reader,
                public: public_slices,
            }));
            routing.demand.set_accepting(true);
            let config = watcher::Config::default().labels(&format!(
                "kubernetes.io/service-name={}",
                routing.config.service
            ));
            let name = sources.add("EndpointSlice (activator)", Some(&routing.config.namespace));
            let events = watcher(
                Api::<EndpointSlice>::namespaced(ctx.client.clone(), &routing.config.namespace),
                config,
            );
            let stop = stop.clone();
            let health = ctx.health.clone();
            let routing = routing.clone();
            futures::future::Either::Left(async move {
                reflector(writer, resilient(events, health, name))
                    .take_until(stop.cancelled())
                    .for_each(|r| {
                        if r.is_ok() {
                            routing.activators_changed();
                        }
                        ready(())
                    })
                    .await;
            })
        }
        None => futures::future::Either::Right(ready(())),
    };
    let pods = caches.pods.clone();
    let recommendations = caches.recommendations.clone();
    ctx.set_caches(caches);
    ctx.metrics.set_app_stores(app_stores.clone());

    // Pod autoscaling from the servers' load reports, for the apps that enable it. It writes
    // only its recommendation (to the status, and handed over in memory); the reconcilers
    // apply it to the Deployments.
    let autoscaler = Arc::new(
        Autoscaler::new(
            ctx.client.clone(),
            ctx.events.clone(),
            ctx.metrics.clone(),
            pods,
        )
        .with_routing(ctx.routing.clone())
        .with_recommendations(recommendations),
    );
    let events = async {
        // Published by this term's task; the receiver goes back for the next term.
        if let Some(rx) = ctx.take_event_receiver() {
            let rx = publish_events(
                ctx.client.clone(),
                ctx.instance.clone(),
                rx,
                ctx.metrics.clone(),
                stop.clone(),
            )
            .await;
            ctx.return_event_receiver(rx);
        }
    };
    futures::future::join5(
        futures::future::join_all(controllers),
        futures::future::join_all(pod_watches),
        run_autoscaler(autoscaler, app_stores, stop.clone()),
        events,
        activator_watch,
    )
    .await;
    if let Some(routing) = &ctx.routing {
        routing.demand.set_accepting(false);
        routing.set_stores(None);
    }
    ctx.set_caches(Caches::default());
    ctx.metrics.set_app_stores(Vec::new());
    drop(sources);
}
