//! The activator's path, the I/O around the pure [`crate::activation`]: the demand the
//! activators push (`POST /v1/demand` on the operator's HTTP port, [`DemandBoard`]), the
//! route table ConfigMap the activators read (which activator port serves which app), and
//! each autoscaled app's public EndpointSlice (its ready pods, or the ready activators on the
//! app's port), written by the autoscaler's tick only when it changes.
//!
//! Only apps with `autoscaling.enabled` and without TLS take part, and only when the operator
//! runs with `--activator-service`; every other app keeps a Service with a selector.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use wsgiscale_core::activator::{Demand, Route as TableRoute, RouteTable, ROUTES_KEY};

use crate::activation::{PathState, Route, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL};
use crate::autoscale::held_arrivals;
use crate::cache::Stores;
use crate::validate::ValidatedApp;

/// The field manager of the operator's EndpointSlice and route table writes.
pub const FIELD_MANAGER: &str = "wsgiscale-operator-routing";

/// A demand report older than this no longer counts (the activators push every 500 ms while
/// requests wait).
pub const DEMAND_FRESH: Duration = Duration::from_secs(3);

/// How long the pods must cover the burst target before the activator leaves the path.
pub const SETTLE: Duration = Duration::from_secs(10);

pub use crate::render::{PODS_SERVICE_SUFFIX, PUBLIC_SLICE_SUFFIX};

/// Where the activator is, from `--activator-service` and `--activator-routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivatorConfig {
    /// The operator's (and the activator's) namespace.
    pub namespace: String,
    /// The activator's headless Service (its EndpointSlices list the ready activators).
    pub service: String,
    /// The route table's ConfigMap.
    pub routes: String,
}

/// `namespace/name` of an app.
pub type AppKey = (String, String);

/// One app's latest report from each activator (by its name), with when it came.
type Reports = HashMap<String, (Demand, Instant)>;

/// The latest demand each activator pushed, per app. Written by the HTTP server, read by the
/// autoscaler's tick; a report with requests held wakes the autoscaler at once.
#[derive(Debug, Default)]
pub struct DemandBoard {
    reports: Mutex<HashMap<AppKey, Reports>>,
    /// Apps with requests held that the autoscaler has not looked at since.
    urgent: Mutex<HashSet<AppKey>>,
    /// Wakes the autoscaler.
    pub wake: tokio::sync::Notify,
    /// Reports are taken only while this replica leads (a standby answers 503, and the
    /// activator's next push, 500 ms later, reaches a replica again).
    accepting: AtomicBool,
}

/// What the activators hold for one app, summed over their fresh reports.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HeldSum {
    /// Requests waiting for a pod.
    pub held: u32,
    /// Requests forwarded and not yet answered.
    pub in_flight: u32,
    /// Requests per second joining the activators' queues ([`held_arrivals`] of each).
    pub arrivals: f64,
}

/// What the activators hold for one app, from fresh reports. Pure.
pub fn sum_fresh<'a>(
    reports: impl IntoIterator<Item = &'a (Demand, Instant)>,
    now: Instant,
) -> HeldSum {
    reports
        .into_iter()
        .filter(|(_, at)| now.saturating_duration_since(*at) < DEMAND_FRESH)
        .fold(HeldSum::default(), |s, (d, _)| HeldSum {
            held: s.held.saturating_add(d.held),
            in_flight: s.in_flight.saturating_add(d.in_flight),
            arrivals: s.arrivals + held_arrivals(d.held, Duration::from_millis(d.oldest_wait_ms)),
        })
}

impl DemandBoard {
    /// Whether reports are taken (this replica leads).
    pub fn set_accepting(&self, on: bool) {
        self.accepting.store(on, Ordering::SeqCst);
        if !on {
            self.reports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    /// Files one report received at `now`; false when this replica does not lead.
    pub fn record(&self, demand: Demand, now: Instant) -> bool {
        if !self.accepting.load(Ordering::SeqCst) {
            return false;
        }
        let key = (demand.namespace.clone(), demand.app.clone());
        let held = demand.held;
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .insert(demand.activator.clone(), (demand, now));
        if held > 0 {
            tracing::debug!(
                namespace = %key.0,
                app = %key.1,
                held,
                "held demand reported: the autoscaler ticks at once"
            );
            self.urgent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key);
            self.wake.notify_one();
        }
        true
    }

    /// What the activators hold for `key` at `now`, over the fresh reports of every one.
    pub fn of(&self, key: &AppKey, now: Instant) -> HeldSum {
        let reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        reports
            .get(key)
            .map(|r| sum_fresh(r.values(), now))
            .unwrap_or_default()
    }

    /// The apps with requests held since the last call.
    pub fn take_urgent(&self) -> HashSet<AppKey> {
        std::mem::take(&mut *self.urgent.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The burst target of `app` in requests: its setting, else one pod's worth.
pub fn burst_capacity(app: &ValidatedApp) -> f64 {
    match app.autoscaling.burst_capacity {
        Some(b) => f64::from(b),
        None => f64::from(app.workers.max.max(1)) * f64::from(app.workers.threads.max(1)),
    }
}

/// Whether `app` takes part in the activator's path (given that the operator has one).
pub fn takes_part(app: &ValidatedApp) -> bool {
    app.autoscaling.enabled && app.tls.is_none()
}

/// The route table for `apps` (those that take part), keeping each app's port from `old`.
/// Apps beyond the port range are left out (and logged by the caller). Pure.
pub fn compute_table(old: &RouteTable, apps: &[&ValidatedApp]) -> RouteTable {
    let mut sorted: Vec<&ValidatedApp> = apps.to_vec();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut table = RouteTable::default();
    // Keep the ports of the apps that stay, then give new ones the lowest free ports.
    let keeps: Vec<Option<u16>> = sorted
        .iter()
        .map(|a| old.find(&a.namespace, &a.name).map(|r| r.port))
        .collect();
    for (a, keep) in sorted.iter().zip(&keeps) {
        if let Some(port) = keep {
            table.routes.push(table_route(a, *port));
        }
    }
    for (a, keep) in sorted.iter().zip(&keeps) {
        if keep.is_none() {
            if let Some(port) = table.port_for(&a.namespace, &a.name) {
                table.routes.push(table_route(a, port));
            }
        }
    }
    table
        .routes
        .sort_by(|a, b| (&a.namespace, &a.app).cmp(&(&b.namespace, &b.app)));
    table
}

fn table_route(app: &ValidatedApp, port: u16) -> TableRoute {
    TableRoute {
        namespace: app.namespace.clone(),
        app: app.name.clone(),
        port,
        pods_service: format!("{}{PODS_SERVICE_SUFFIX}", app.name),
        http_port_name: crate::layout::HTTP_PORT_NAME.into(),
        admin_port: u16::try_from(app.admin_port).unwrap_or(9191),
        slots_per_pod: app
            .workers
            .max
            .max(1)
            .saturating_mul(app.workers.threads.max(1)),
        hold: app.autoscaling.hold,
    }
}

/// The ready activators' addresses in `slices` (the activator Service's EndpointSlices).
/// Pure.
pub fn activator_ips<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    service: &str,
) -> Vec<String> {
    let mut ips: Vec<String> = slices
        .into_iter()
        .filter(|s| s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(service))
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| {
            let c = e.conditions.as_ref();
            c.and_then(|c| c.ready).unwrap_or(true)
                && !c.and_then(|c| c.terminating).unwrap_or(false)
        })
        .filter_map(|e| e.addresses.first().cloned())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Whether two EndpointSlices say the same (labels, endpoints, ports), so a tick writes only
/// a change. Pure.
pub fn same_slice(a: &EndpointSlice, b: &EndpointSlice) -> bool {
    let labels = |s: &EndpointSlice| {
        s.metadata
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k == SERVICE_NAME_LABEL || k == MANAGED_BY_LABEL)
            .collect::<BTreeMap<_, _>>()
    };
    let endpoints = |s: &EndpointSlice| {
        let mut e: Vec<_> = s
            .endpoints
            .iter()
            .flatten()
            .map(|e| {
                (
                    e.addresses.clone(),
                    e.conditions
                        .clone()
                        .map(|c| (c.ready, c.serving, c.terminating)),
                )
            })
            .collect();
        e.sort();
        e
    };
    let ports = |s: &EndpointSlice| {
        s.ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.port))
            .collect::<Vec<_>>()
    };
    labels(a) == labels(b) && endpoints(a) == endpoints(b) && ports(a) == ports(b)
}

/// The operator's side of the activator: the demand board, the stores it reads, and what it
/// last wrote.
pub struct Routing {
    /// Where the activator is.
    pub config: ActivatorConfig,
    /// The demand the activators push.
    pub demand: Arc<DemandBoard>,
    client: Client,
    /// The activator Service's EndpointSlices and the public slices the operator wrote (set
    /// per leadership term).
    stores: Mutex<Option<RoutingStores>>,
    /// The route table as last written (or read at the start of a term).
    table: tokio::sync::Mutex<Option<RouteTable>>,
    /// Per app: where its traffic goes.
    paths: Mutex<HashMap<AppKey, PathState>>,
}

/// The reflector stores the routing reads.
#[derive(Clone)]
pub struct RoutingStores {
    /// EndpointSlices of the activator's Service.
    pub activators: Store<EndpointSlice>,
    /// The public EndpointSlices the operator manages.
    pub public: Stores<EndpointSlice>,
}

impl Routing {
    /// The routing for `config`.
    pub fn new(client: Client, config: ActivatorConfig, demand: Arc<DemandBoard>) -> Self {
        Routing {
            config,
            demand,
            client,
            stores: Mutex::new(None),
            table: tokio::sync::Mutex::new(None),
            paths: Mutex::new(HashMap::new()),
        }
    }

    /// Sets (or clears, between terms) the stores.
    pub fn set_stores(&self, stores: Option<RoutingStores>) {
        *self.stores.lock().unwrap_or_else(|e| e.into_inner()) = stores;
        if let Ok(mut t) = self.table.try_lock() {
            *t = None;
        }
    }

    /// The public slice the operator wrote for `namespace/app`, from the store.
    pub fn public_slice(&self, namespace: &str, app: &str) -> Option<Arc<EndpointSlice>> {
        let stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        stores
            .as_ref()?
            .public
            .get(namespace, &format!("{app}{PUBLIC_SLICE_SUFFIX}"))
    }

    /// The ready activators' addresses.
    pub fn activators(&self) -> Vec<String> {
        let stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        stores
            .as_ref()
            .map(|s| {
                let slices = s.activators.state();
                activator_ips(slices.iter().map(|s| s.as_ref()), &self.config.service)
            })
            .unwrap_or_default()
    }

    /// Where `key`'s traffic goes now (the decision's state; at a term's start, what the
    /// written slice says).
    pub fn path(&self, key: &AppKey, port: Option<u16>) -> PathState {
        let mut paths = self.paths.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = paths.get(key) {
            return *p;
        }
        let written = self.public_slice(&key.0, &key.1);
        let route = match (written, port) {
            (Some(s), Some(port)) => {
                let on_activator = s
                    .ports
                    .iter()
                    .flatten()
                    .any(|p| p.port == Some(i32::from(port)));
                if on_activator {
                    Route::Activator
                } else {
                    Route::Pods
                }
            }
            _ => Route::Pods,
        };
        let p = PathState {
            route,
            covered_since: None,
        };
        paths.insert(key.clone(), p);
        p
    }

    /// The ready activators changed: every app behind the activator gets its slice
    /// rewritten at once (a terminating activator must leave the apps' endpoints before its
    /// drain delay ends), not at its next tick.
    pub fn activators_changed(&self) {
        let keys: Vec<AppKey> = self
            .paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, p)| p.route == Route::Activator)
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        self.demand
            .urgent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(keys);
        self.demand.wake.notify_one();
    }

    /// The pods of `key` changed state: its slice (when the app is routed) is rewritten at
    /// once.
    pub fn pods_changed(&self, key: &AppKey) {
        let routed = self
            .paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key);
        if routed {
            self.demand
                .urgent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone());
            self.demand.wake.notify_one();
        }
    }

    /// Records `key`'s path.
    pub fn set_path(&self, key: &AppKey, p: PathState) {
        self.paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), p);
    }

    /// Forgets the apps not in `keep`.
    pub fn retain(&self, keep: &HashSet<AppKey>) {
        self.paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep.contains(k));
    }

    /// The app's activator port in the table last written.
    pub async fn port_of(&self, namespace: &str, app: &str) -> Option<u16> {
        let table = self.table.lock().await;
        table.as_ref()?.find(namespace, app).map(|r| r.port)
    }

    /// Writes the route table for `apps` when it changed. Returns the table in force.
    pub async fn sync_table(&self, apps: &[&ValidatedApp]) -> Result<RouteTable, kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let mut table = self.table.lock().await;
        // At a term's start: the table another term (or replica) wrote keeps every app's
        // port; an absent ConfigMap is created even for an empty table, so the activators
        // find it.
        let (old, absent) = match table.as_ref() {
            Some(t) => (t.clone(), false),
            None => {
                let found = api.get_opt(&self.config.routes).await?.map(|cm| {
                    cm.data
                        .and_then(|mut d| d.remove(ROUTES_KEY))
                        .and_then(|t| serde_json::from_str::<RouteTable>(&t).ok())
                        .unwrap_or_default()
                });
                (found.clone().unwrap_or_default(), found.is_none())
            }
        };
        let new = compute_table(&old, apps);
        if new == old && !absent {
            *table = Some(new.clone());
            return Ok(new);
        }
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.config.routes.clone()),
                namespace: Some(self.config.namespace.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_string(),
                        "wsgiscale-operator".to_string(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            data: Some(
                [(
                    ROUTES_KEY.to_string(),
                    serde_json::to_string_pretty(&new).unwrap_or_default(),
                )]
                .into(),
            ),
            ..ConfigMap::default()
        };
        api.patch(
            &self.config.routes,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
        *table = Some(new.clone());
        Ok(new)
    }

    /// Applies `slice` unless the store already holds the same.
    pub async fn apply_slice(&self, slice: &EndpointSlice) -> Result<bool, kube::Error> {
        let ns = slice.namespace().unwrap_or_default();
        let name = slice.name_any();
        let app = name.trim_end_matches(PUBLIC_SLICE_SUFFIX);
        if self
            .public_slice(&ns, app)
            .is_some_and(|old| same_slice(&old, slice))
        {
            return Ok(false);
        }
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &ns);
        let mut body = slice.clone();
        body.metadata.managed_fields = None;
        let value = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": body.metadata,
            "addressType": body.address_type,
            "endpoints": body.endpoints.unwrap_or_default(),
            "ports": body.ports.unwrap_or_default(),
        });
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await?;
        Ok(true)
    }
}

/// The managed-by label value the public slices carry (for the watch's selector).
pub fn public_slice_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::mk_app;
    use crate::validate::validate_app;

    fn demand(activator: &str, held: u32) -> Demand {
        Demand {
            namespace: "ns".into(),
            app: "web".into(),
            activator: activator.into(),
            held,
            in_flight: 1,
            oldest_wait_ms: 0,
            time_unix_ms: 0,
        }
    }

    #[test]
    fn the_arrival_rate_is_each_activators_held_over_its_oldest_wait() {
        let t0 = Instant::now();
        let a = Demand {
            oldest_wait_ms: 2000,
            ..demand("a", 600)
        };
        let b = Demand {
            oldest_wait_ms: 500,
            ..demand("b", 100)
        };
        let reports = [(a, t0), (b, t0)];
        let sum = sum_fresh(reports.iter(), t0);
        // 600 over 2 s, and 100 over (at least) 1 s.
        assert_eq!((sum.held, sum.in_flight), (700, 2));
        assert!((sum.arrivals - 400.0).abs() < 1e-9, "{sum:?}");
    }

    #[test]
    fn demand_sums_fresh_reports_of_every_activator_and_wakes_on_held() {
        let board = DemandBoard::default();
        let t0 = Instant::now();
        assert!(
            !board.record(demand("a", 3), t0),
            "a standby takes no report"
        );
        board.set_accepting(true);
        assert!(board.record(demand("a", 3), t0));
        assert!(board.record(demand("b", 2), t0));
        let key = ("ns".to_string(), "web".to_string());
        let sum = |t| {
            let s = board.of(&key, t);
            (s.held, s.in_flight)
        };
        assert_eq!(sum(t0), (5, 2));
        assert_eq!(board.take_urgent(), HashSet::from([key.clone()]));
        assert!(board.take_urgent().is_empty());
        // A newer report replaces the activator's older one; stale ones stop counting.
        assert!(board.record(demand("a", 0), t0 + Duration::from_secs(2)));
        assert_eq!(sum(t0 + Duration::from_secs(2)), (2, 2));
        assert_eq!(sum(t0 + Duration::from_secs(4)), (0, 1));
        assert!(board.take_urgent().is_empty(), "held 0 is not urgent");
    }

    #[test]
    fn the_table_keeps_ports_and_gives_new_apps_the_lowest_free() {
        let mut a = mk_app("a");
        a.metadata.namespace = Some("ns".into());
        let mut b = mk_app("b");
        b.metadata.namespace = Some("ns".into());
        let (a, b) = (
            validate_app(&a).expect("valid"),
            validate_app(&b).expect("valid"),
        );
        let t1 = compute_table(&RouteTable::default(), &[&b]);
        assert_eq!(t1.routes[0].port, 20000);
        let t2 = compute_table(&t1, &[&a, &b]);
        assert_eq!(
            t2.routes
                .iter()
                .map(|r| (r.app.as_str(), r.port, r.pods_service.as_str()))
                .collect::<Vec<_>>(),
            vec![("a", 20001, "a-pods"), ("b", 20000, "b-pods")]
        );
        // b leaves: a keeps its port.
        let t3 = compute_table(&t2, &[&a]);
        assert_eq!(t3.routes[0].port, 20001);
        assert_eq!(t3.routes.len(), 1);
    }
}
