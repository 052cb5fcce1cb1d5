//! What the activator follows in the API: the operator's route table (one ConfigMap) and the
//! EndpointSlices of each app's pods Service (ready, not ready, terminating).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;
use wsgiscale_core::activator::{Route, RouteTable, ROUTES_KEY};

use crate::Inner;

/// The endpoints of `route`'s pods in `slices`: (address, HTTP port, ready, terminating).
pub fn endpoints_of(
    route: &Route,
    slices: &[Arc<EndpointSlice>],
) -> Vec<(IpAddr, u16, bool, bool)> {
    let mut out = Vec::new();
    for s in slices {
        if s.namespace().as_deref() != Some(route.namespace.as_str())
            || s.labels().get("kubernetes.io/service-name") != Some(&route.pods_service)
        {
            continue;
        }
        let Some(port) = s
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == route.http_port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in s.endpoints.iter().flatten() {
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            if let Some(ip) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) {
                out.push((ip, port, ready, terminating));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The route table in a ConfigMap (an absent or empty one: no routes; a malformed one is
/// logged and changes nothing).
pub fn routes_of(cm: &ConfigMap) -> Option<Vec<Route>> {
    let text = cm.data.as_ref().and_then(|d| d.get(ROUTES_KEY));
    match text {
        None => Some(Vec::new()),
        Some(t) => match serde_json::from_str::<RouteTable>(t) {
            Ok(table) => Some(table.routes),
            Err(e) => {
                tracing::error!(error = %e, "the route table is malformed: keeping the routes in force");
                None
            }
        },
    }
}

fn sync_endpoints(inner: &Arc<Inner>, slices: &[Store<EndpointSlice>]) {
    let state: Vec<Arc<EndpointSlice>> = slices.iter().flat_map(Store::state).collect();
    let apps: Vec<_> = inner
        .apps
        .lock()
        .iter()
        .map(|(k, a)| (k.clone(), a.clone()))
        .collect();
    for (key, app) in apps {
        {
            let mut a = app.lock();
            let eps = endpoints_of(&a.route, &state);
            a.set_endpoints(&eps);
        }
        inner.kick(&key, &app);
        // A pod that just appeared, while requests wait for one: probe it now, not at the
        // next upkeep tick.
        crate::start_probes(inner, &key, &app);
    }
}

/// Follows the route table and the EndpointSlices until `stop`.
pub async fn run(inner: Arc<Inner>, client: kube::Client, stop: CancellationToken) {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &inner.config.routes_namespace);
    let routes = watcher(
        cms,
        watcher::Config::default()
            .fields(&format!("metadata.name={}", inner.config.routes_configmap)),
    )
    .default_backoff()
    .applied_objects();
    // All namespaces, or one watch per namespace (an activator granted Roles in the apps'
    // namespaces only cannot watch cluster-wide).
    let apis: Vec<Api<EndpointSlice>> = if inner.config.namespaces.is_empty() {
        vec![Api::all(client)]
    } else {
        inner
            .config
            .namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let mut slice_stores = Vec::new();
    let mut streams = Vec::new();
    for api in apis {
        let (store, writer) = reflector::store::<EndpointSlice>();
        slice_stores.push(store);
        streams.push(
            reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).default_backoff(),
            )
            .touched_objects()
            .boxed(),
        );
    }
    let slices = futures::stream::select_all(streams);
    let slice_store = slice_stores;
    let mut routes = std::pin::pin!(routes);
    let mut slices = std::pin::pin!(slices);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            cm = routes.next() => match cm {
                Some(Ok(cm)) => {
                    if let Some(r) = routes_of(&cm) {
                        crate::apply_routes(&inner, r);
                        sync_endpoints(&inner, &slice_store);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "watching the route table"),
                None => return,
            },
            ev = slices.next() => match ev {
                Some(Ok(_)) => {
                    while let Some(Some(_)) = futures::FutureExt::now_or_never(slices.next()) {}
                    sync_endpoints(&inner, &slice_store);
                }
                Some(Err(e)) => tracing::warn!(error = %e, "watching EndpointSlices"),
                None => return,
            },
            _ = tick.tick() => sync_endpoints(&inner, &slice_store),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsgiscale_core::activator::HoldLimits;

    #[test]
    fn endpoints_of_the_routes_pods_service_only() {
        let route = Route {
            namespace: "ns".into(),
            app: "web".into(),
            port: 20000,
            pods_service: "web-pods".into(),
            http_port_name: "http".into(),
            admin_port: 9191,
            slots_per_pod: 4,
            hold: HoldLimits::default(),
        };
        let slice = |ns: &str, svc: &str| -> Arc<EndpointSlice> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("{svc}-x"), "namespace": ns,
                                 "labels": {"kubernetes.io/service-name": svc}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8000}],
                    "endpoints": [
                        {"addresses": ["198.18.0.2"], "conditions": {"ready": true}},
                        {"addresses": ["198.18.0.3"], "conditions": {"ready": false, "terminating": true}},
                    ],
                }))
                .expect("a slice"),
            )
        };
        let eps = endpoints_of(
            &route,
            &[
                slice("ns", "web-pods"),
                slice("other", "web-pods"),
                slice("ns", "web"),
            ],
        );
        assert_eq!(
            eps,
            vec![
                ("198.18.0.2".parse().expect("ip"), 8000, true, false),
                ("198.18.0.3".parse().expect("ip"), 8000, false, true),
            ]
        );
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "routes"},
            "data": {"routes.json": serde_json::to_string(&RouteTable { routes: vec![route.clone()] }).expect("json")},
        }))
        .expect("cm");
        assert_eq!(routes_of(&cm), Some(vec![route]));
        let bad: ConfigMap = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "routes"}, "data": {"routes.json": "{"}}),
        )
        .expect("cm");
        assert_eq!(routes_of(&bad), None);
    }
}
