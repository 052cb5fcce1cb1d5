//! `wsgiscale-operator run`: wires the client, the HTTP server, leader election and one
//! controller per watched namespace, and shuts them all down on SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cli::RunArgs;
use crate::crd::WsgiApp;
use crate::http::{self, Health};
use crate::leader::{LeaderElector, LeaseTiming};
use crate::metrics::Metrics;
use crate::pods::{app_of_pod, compute_pod_trigger_hash, strip_pod};
use crate::reconcile::{compute_trigger_hash, error_policy, reconcile, Context};
use crate::scrape::{run_autoscaler, Autoscaler};

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
        log_format: _,
        log_level: _,
    } = args;

    // Installed before anything else, so a SIGTERM during startup is not lost.
    // An empty WSGISCALE_OPERATOR_NAMESPACES means all namespaces, not the namespace "".
    let namespaces: Vec<String> = namespaces
        .into_iter()
        .filter(|n| !n.trim().is_empty())
        .collect();
    let shutdown = CancellationToken::new();
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
        let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: shutting down"),
                _ = int.recv() => info!("SIGINT: shutting down"),
            }
            shutdown.cancel();
        });
    }

    let client = Client::try_default().await.map_err(RunError::Client)?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let listener = http::bind(http_bind)
        .await
        .map_err(|source| RunError::Bind {
            addr: http_bind,
            source,
        })?;
    let http_task = tokio::spawn(http::serve(
        listener,
        health.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    // The CRD may be installed together with the operator and not be served yet: wait a
    // little for it, then fail with a hint.
    let probe: Api<WsgiApp> = match namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut attempt = 0u32;
    loop {
        match probe.list(&ListParams::default().limit(1)).await {
            Ok(_) => break,
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
    health.set_ready(true);
    let prober = tokio::spawn(probe_api(probe, health.clone(), shutdown.clone()));

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
        .with_health(health.clone()),
    );

    let (leading_tx, mut leading) = watch::channel(!leader_election);
    let elector = if leader_election {
        let ns = lease_namespace.unwrap_or_else(|| client.default_namespace().to_string());
        let api: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let timing = LeaseTiming::from_lease_duration(Duration::from_secs(lease_duration_seconds));
        info!(lease = %lease_name, namespace = %ns, identity = %identity, "campaigning for the leader lease");
        let elector = LeaderElector::new(api, lease_name, identity, timing);
        Some(tokio::spawn(elector.run(leading_tx, shutdown.clone())))
    } else {
        drop(leading_tx);
        None
    };

    'outer: loop {
        // Standby until we lead.
        while !*leading.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                changed = leading.changed() => if changed.is_err() { break 'outer },
            }
        }
        metrics.leader.set(1);
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
        run_controllers(&ctx, &namespaces, concurrency, stop.clone()).await;
        lost.abort();
        metrics.leader.set(0);
        if shutdown.is_cancelled() {
            break;
        }
        warn!("lost leadership: controllers stopped, back to standby");
    }

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

/// How long a watch must stay quiet, while the API server answers, to count as resumed: past
/// the cap of its backoff (client-go's default, 30 s), a watch that still failed would have
/// failed again.
const WATCH_QUIET: Duration = Duration::from_secs(35);

/// How often the API server is probed for readiness.
const PROBE_PERIOD: Duration = Duration::from_secs(5);

/// Probes the API server (a one-item list of WsgiApps) every few seconds until `stop`, for
/// `/readyz`: unready while it does not answer, and once it answers again the watches that
/// stayed quiet since count as resumed.
pub async fn probe_api(probe: Api<WsgiApp>, health: Arc<Health>, stop: CancellationToken) {
    loop {
        match probe.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => {
                health.report("api server", None);
                health.settle(WATCH_QUIET, std::time::Instant::now());
            }
            Err(e) => health.report("api server", Some(e.to_string())),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_PERIOD) => {}
        }
    }
}

/// A watch stream that backs off on its own (client-go's default backoff) and reports how it
/// fares to `health` as `source`; the controller gets only its objects, so one failing watch
/// never pauses the others. (With the controller's shared trigger backoff, every error of any
/// of the five watches lengthened one common pause: after an API server restart each watch's
/// "resource version too old" cost another 30-40 s, and the controllers stayed blind for
/// minutes.)
fn guarded<K, S>(
    events: S,
    health: Arc<Health>,
    source: String,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    events.default_backoff().inspect(move |event| match event {
        Ok(_) => health.report(&source, None),
        Err(e) => {
            warn!(watch = %source, error = %e, "watch failed; retrying with backoff");
            health.report(&source, Some(e.to_string()));
        }
    })
}

/// Only the objects of a watch stream whose errors [`guarded`] has already handled.
fn objects<T: Send>(
    stream: impl futures::Stream<Item = Result<T, watcher::Error>> + Send,
) -> impl futures::Stream<Item = Result<T, watcher::Error>> + Send {
    stream.filter_map(|r| std::future::ready(r.ok().map(Ok)))
}

/// One controller per namespace (or one for all), until `stop`; in-flight reconciles finish.
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
    let mut stores = Vec::new();
    let mut sources = Vec::new();
    let controllers: Vec<_> = scopes
        .into_iter()
        .map(|ns| {
            let client = ctx.client.clone();
            fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
            where
                K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
            {
                match ns {
                    Some(ns) => Api::namespaced(client.clone(), ns),
                    None => Api::all(client.clone()),
                }
            }
            let scope = ns.unwrap_or("all namespaces");
            let mut source = |kind: &str| {
                let name = format!("watch {kind} in {scope}");
                // Unready until the watch's first list arrives.
                ctx.health.report(&name, Some("not listed yet".into()));
                sources.push(name.clone());
                name
            };
            let stop = stop.clone();
            let owned = watcher::Config::default()
                .labels("app.kubernetes.io/managed-by=wsgiscale-operator");
            let (reader, writer) = reflector::store();
            let apps = reflector(
                writer,
                guarded(
                    watcher(
                        api::<WsgiApp>(&client, ns),
                        watcher::Config::default().any_semantic(),
                    ),
                    ctx.health.clone(),
                    source("WsgiApp"),
                ),
            )
            .applied_objects();
            macro_rules! owned {
                ($kind:ty, $name:literal) => {
                    objects(
                        guarded(
                            watcher(api::<PartialObjectMeta<$kind>>(&client, ns), owned.clone()),
                            ctx.health.clone(),
                            source($name),
                        )
                        .touched_objects(),
                    )
                };
            }
            let apps = objects(apps).predicate_filter(compute_trigger_hash, Default::default());
            // The apps' pods: kept for the status's explanations, and a pod whose state
            // changes wakes its app.
            let (pod_reader, pod_writer) = reflector::store();
            ctx.pods.register(pod_reader);
            let pods = objects(
                reflector(
                    pod_writer,
                    guarded(
                        watcher(
                            api::<Pod>(&client, ns),
                            watcher::Config::default().labels(crate::validate::APP_LABEL),
                        ),
                        ctx.health.clone(),
                        source("Pod"),
                    )
                    .modify(strip_pod),
                )
                .touched_objects(),
            )
            .predicate_filter(compute_pod_trigger_hash, Default::default());
            let controller = Controller::for_stream(apps, reader)
                .with_config(ControllerConfig::default().concurrency(concurrency))
                .owns_stream(owned!(ConfigMap, "ConfigMap"))
                .owns_stream(owned!(Deployment, "Deployment"))
                .owns_stream(owned!(Service, "Service"))
                .owns_stream(owned!(PodDisruptionBudget, "PodDisruptionBudget"))
                .watches_stream(pods, |pod| app_of_pod(&pod));
            // The autoscaler reads the WsgiApps from the controllers' caches.
            stores.push(controller.store());
            controller
                .graceful_shutdown_on(async move { stop.cancelled().await })
                .run(reconcile, error_policy, ctx.clone())
                .for_each(|result| async move {
                    match result {
                        Ok((obj, _)) => tracing::debug!(name = %obj.name, "reconciled"),
                        Err(e) => tracing::debug!(error = %e, "reconcile error"),
                    }
                })
        })
        .collect();
    // Pod autoscaling from the servers' load reports, for the apps that enable it. It writes
    // only its recommendation to the status; the reconcilers apply it to the Deployments.
    let autoscaler = Arc::new(Autoscaler::new(
        ctx.client.clone(),
        std::env::var("HOSTNAME").ok(),
        ctx.metrics.clone(),
    ));
    futures::future::join(
        futures::future::join_all(controllers),
        run_autoscaler(autoscaler, stores, stop),
    )
    .await;
    for name in sources {
        ctx.health.forget(&name);
    }
    ctx.pods.clear();
}
