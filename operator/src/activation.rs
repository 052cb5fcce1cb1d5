//! Where an app's traffic goes (pure): straight to its pods, or through the activator, by
//! Knative's rule. The app's public Service has no selector; the operator writes its
//! EndpointSlice: the pods' endpoints while their spare capacity covers the burst target, the
//! activator's (on the app's own activator port) when the app is at zero pods or short of it.
//! Entering the path is immediate; leaving it waits until the pods have covered the target
//! for a settle period, so the path does not flap.

use std::time::Duration;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages an EndpointSlice (the endpointslice controller leaves the
/// slices of other managers alone).
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of it.
pub const MANAGED_BY: &str = "operator.wsgiscale.dev";

/// Where the app's traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Route {
    /// Straight to the ready pods.
    #[default]
    Pods,
    /// Through the activator.
    Activator,
}

impl Route {
    /// The word in status and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Pods => "pods",
            Route::Activator => "activator",
        }
    }
}

/// The path and since when the pods have covered the burst target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathState {
    /// Where traffic goes now.
    pub route: Route,
    /// Since when (monotonic) the pods' spare capacity has covered the burst target.
    pub covered_since: Option<Duration>,
}

/// What the decision reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathInputs {
    /// Ready pods.
    pub ready_pods: u32,
    /// Requests one pod runs at once (workers.max x threads).
    pub pod_capacity: f64,
    /// Requests in the app now: in the pods and held by the activator.
    pub demand: f64,
    /// Spare capacity, in requests, the pods must have for the activator to leave the path;
    /// 0: the activator is in the path only at zero pods; negative: always.
    pub burst_capacity: f64,
    /// How long the pods must cover it before the activator leaves the path.
    pub settle: Duration,
}

/// The spare capacity beyond the burst target: negative puts the activator in the path.
pub fn excess_capacity(i: &PathInputs) -> f64 {
    f64::from(i.ready_pods) * i.pod_capacity - i.demand - i.burst_capacity
}

/// Knative's rule, with hysteresis on the way out.
pub fn decide_path(state: PathState, i: &PathInputs, now: Duration) -> PathState {
    let needed = i.burst_capacity < 0.0
        || i.ready_pods == 0
        || (i.burst_capacity > 0.0 && excess_capacity(i) < 0.0);
    if needed {
        return PathState {
            route: Route::Activator,
            covered_since: None,
        };
    }
    let since = state.covered_since.unwrap_or(now);
    let route = match state.route {
        Route::Pods => Route::Pods,
        Route::Activator if now.saturating_sub(since) >= i.settle => Route::Pods,
        Route::Activator => Route::Activator,
    };
    PathState {
        route,
        covered_since: Some(since),
    }
}

/// One endpoint of a pod of the app (from its pods Service's EndpointSlices).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodEndpoint {
    /// Address.
    pub ip: String,
    /// Ready.
    pub ready: bool,
    /// Serving (ready, or terminating and still serving).
    pub serving: bool,
    /// Terminating.
    pub terminating: bool,
    /// The pod's name (`targetRef`).
    pub pod: Option<String>,
    /// The node.
    pub node: Option<String>,
}

/// The endpoints of the pods Service named `service` in `slices` (every slice of it).
pub fn pod_endpoints(
    slices: &[&EndpointSlice],
    service: &str,
    port_name: &str,
) -> (Vec<PodEndpoint>, Option<i32>) {
    let mut eps = Vec::new();
    let mut port = None;
    for s in slices {
        if s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(String::as_str)
            != Some(service)
        {
            continue;
        }
        if let Some(p) = s
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| p.port)
        {
            port = Some(p);
        }
        for e in s.endpoints.iter().flatten() {
            let c = e.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            for ip in e.addresses.iter().take(1) {
                eps.push(PodEndpoint {
                    ip: ip.clone(),
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating.unwrap_or(false),
                    pod: e.target_ref.as_ref().and_then(|r| r.name.clone()),
                    node: e.node_name.clone(),
                });
            }
        }
    }
    eps.sort();
    eps.dedup();
    (eps, port)
}

/// The public Service's EndpointSlice: the pods (on their HTTP port) or the ready activators
/// (on the app's activator port). With no ready activator the pods stay in it: a path that
/// may refuse beats none.
#[allow(clippy::too_many_arguments)]
pub fn render_public_slice(
    name: &str,
    namespace: &str,
    service: &str,
    owner: &OwnerReference,
    port_name: &str,
    route: Route,
    pods: &[PodEndpoint],
    pod_port: Option<i32>,
    activators: &[String],
    activator_port: u16,
) -> (EndpointSlice, Route) {
    let use_activator = route == Route::Activator && !activators.is_empty();
    let (endpoints, port): (Vec<Endpoint>, Option<i32>) = if use_activator {
        (
            activators
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Endpoint::default()
                })
                .collect(),
            Some(i32::from(activator_port)),
        )
    } else {
        (
            pods.iter()
                .map(|p| Endpoint {
                    addresses: vec![p.ip.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(p.ready),
                        serving: Some(p.serving),
                        terminating: Some(p.terminating),
                    }),
                    node_name: p.node.clone(),
                    ..Endpoint::default()
                })
                .collect(),
            pod_port,
        )
    };
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [
                    (SERVICE_NAME_LABEL.to_string(), service.to_string()),
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
                ]
                .into(),
            ),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(endpoints),
        ports: port.map(|p| {
            vec![EndpointPort {
                name: Some(port_name.into()),
                port: Some(p),
                protocol: Some("TCP".into()),
                ..EndpointPort::default()
            }]
        }),
    };
    (
        slice,
        if use_activator {
            Route::Activator
        } else {
            Route::Pods
        },
    )
}

/// Whether the app may go to zero pods now: scale to zero is on, the activator is already in
/// the path (so the next request is held, not refused), and no request has arrived for the
/// idle period (`last_request`: monotonic time of the last one seen, by the activator or the
/// pods).
pub fn may_scale_to_zero(
    idle: Option<Duration>,
    route: Route,
    last_request: Option<Duration>,
    now: Duration,
) -> bool {
    let Some(idle) = idle else { return false };
    route == Route::Activator && last_request.is_none_or(|t| now.saturating_sub(t) >= idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(ready: u32, demand: f64, burst: f64) -> PathInputs {
        PathInputs {
            ready_pods: ready,
            pod_capacity: 8.0,
            demand,
            burst_capacity: burst,
            settle: Duration::from_secs(10),
        }
    }

    fn at(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn knatives_rule_with_a_settle_on_the_way_out() {
        let s0 = PathState::default();
        // At zero pods: the activator, whatever the target.
        let s = decide_path(s0, &inputs(0, 0.0, 0.0), at(0));
        assert_eq!(s.route, Route::Activator);
        // One pod, 8 slots, demand 1, target 8: 8 - 1 - 8 < 0, still the activator.
        let s = decide_path(s, &inputs(1, 1.0, 8.0), at(1));
        assert_eq!(s.route, Route::Activator);
        // Two pods: 16 - 1 - 8 = 7 >= 0: covered, but only leaves after the settle.
        let s = decide_path(s, &inputs(2, 1.0, 8.0), at(2));
        assert_eq!((s.route, s.covered_since), (Route::Activator, Some(at(2))));
        let s = decide_path(s, &inputs(2, 1.0, 8.0), at(11));
        assert_eq!(s.route, Route::Activator);
        let s = decide_path(s, &inputs(2, 1.0, 8.0), at(12));
        assert_eq!(s.route, Route::Pods);
        // A burst puts it back at once.
        let s = decide_path(s, &inputs(2, 12.0, 8.0), at(13));
        assert_eq!((s.route, s.covered_since), (Route::Activator, None));
        // Target 0: only at zero pods; negative: always.
        assert_eq!(
            decide_path(PathState::default(), &inputs(1, 100.0, 0.0), at(0)).route,
            Route::Pods
        );
        assert_eq!(
            decide_path(PathState::default(), &inputs(9, 0.0, -1.0), at(0)).route,
            Route::Activator
        );
    }

    #[test]
    fn the_public_slice_lists_pods_or_activators() {
        let owner = OwnerReference {
            api_version: "wsgiscale.dev/v1alpha1".into(),
            kind: "WsgiApp".into(),
            name: "web".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let pods = vec![PodEndpoint {
            ip: "198.18.0.2".into(),
            ready: true,
            serving: true,
            terminating: false,
            pod: Some("web-1".into()),
            node: Some("n".into()),
        }];
        let (s, r) = render_public_slice(
            "web-wsgiscale",
            "ns",
            "web",
            &owner,
            "http",
            Route::Activator,
            &pods,
            Some(8000),
            &["198.18.0.9".into()],
            20001,
        );
        assert_eq!(r, Route::Activator);
        assert_eq!(
            s.endpoints.as_ref().expect("endpoints")[0].addresses,
            ["198.18.0.9"]
        );
        assert_eq!(s.ports.as_ref().expect("ports")[0].port, Some(20001));
        assert_eq!(
            s.metadata.labels.as_ref().expect("labels")[SERVICE_NAME_LABEL],
            "web"
        );
        // No activator is ready: the pods stay.
        let (s, r) = render_public_slice(
            "web-wsgiscale",
            "ns",
            "web",
            &owner,
            "http",
            Route::Activator,
            &pods,
            Some(8000),
            &[],
            20001,
        );
        assert_eq!(r, Route::Pods);
        assert_eq!(s.ports.as_ref().expect("ports")[0].port, Some(8000));
    }

    #[test]
    fn zero_only_behind_the_activator_after_the_idle_period() {
        let idle = Some(at(300));
        assert!(!may_scale_to_zero(None, Route::Activator, None, at(1000)));
        assert!(!may_scale_to_zero(idle, Route::Pods, None, at(1000)));
        assert!(!may_scale_to_zero(
            idle,
            Route::Activator,
            Some(at(800)),
            at(1000)
        ));
        assert!(may_scale_to_zero(
            idle,
            Route::Activator,
            Some(at(700)),
            at(1000)
        ));
    }
}
