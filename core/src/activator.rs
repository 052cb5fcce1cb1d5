//! The contract between the operator and the activator (`wsgiscale-activator`): the route
//! table the operator writes (which app each activator port serves, where its pods are, how
//! much the activator may hold for it) and the demand report the activator pushes to the
//! operator's autoscaler the moment requests wait. Both sides read these types, so they agree.

use serde::{Deserialize, Serialize};

/// The ConfigMap key holding the route table (JSON).
pub const ROUTES_KEY: &str = "routes.json";

/// The path of the operator's HTTP port that takes [`Demand`] reports (POST, JSON).
pub const DEMAND_PATH: &str = "/v1/demand";

/// The first port the operator assigns to apps on the activator.
pub const FIRST_APP_PORT: u16 = 20000;

/// The last one.
pub const LAST_APP_PORT: u16 = 29999;

/// How much the activator may hold for one app, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldLimits {
    /// Requests held at once; past it, 503.
    pub max_requests: u32,
    /// Bytes of request bodies held at once; past it, 503.
    pub max_bytes: u64,
    /// How long a request may wait for a pod, milliseconds; past it, 503.
    pub max_wait_ms: u64,
}

impl Default for HoldLimits {
    /// 10,000 requests (Knative's activator queues as many per revision), 64 MiB of bodies,
    /// 60 s (a pod's start plus the app's import fits with room to spare; the request of a
    /// client who gave up earlier is dropped when it goes). 1,000 was too few: in the
    /// simulator a step to 50 req/s of 1 s requests holds 1,592 while pods start.
    fn default() -> Self {
        HoldLimits {
            max_requests: 10_000,
            max_bytes: 64 << 20,
            max_wait_ms: 60_000,
        }
    }
}

/// One app the activator fronts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The app's namespace.
    pub namespace: String,
    /// The WsgiApp's name.
    pub app: String,
    /// The activator's port for this app: the app's public EndpointSlice names it, so a
    /// connection's port says which app it is for (nothing the client sends is trusted).
    pub port: u16,
    /// The Service (in the app's namespace) whose EndpointSlices list the app's pods.
    pub pods_service: String,
    /// The name of the pods' HTTP port in those EndpointSlices.
    pub http_port_name: String,
    /// The pods' admin port (`/readyz`, `/load`).
    pub admin_port: u16,
    /// Requests one pod can run at once (MAX workers x threads), until its `/load` says more.
    pub slots_per_pod: u32,
    /// The hold limits.
    pub hold: HoldLimits,
}

/// Every app the activator fronts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RouteTable {
    /// Routes, by port.
    pub routes: Vec<Route>,
}

impl RouteTable {
    /// The route of `namespace/app`.
    pub fn find(&self, namespace: &str, app: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.namespace == namespace && r.app == app)
    }

    /// The port `namespace/app` keeps, or the lowest free one in
    /// [`FIRST_APP_PORT`]..=[`LAST_APP_PORT`] (None when all are taken).
    pub fn port_for(&self, namespace: &str, app: &str) -> Option<u16> {
        if let Some(r) = self.find(namespace, app) {
            return Some(r.port);
        }
        let used: std::collections::BTreeSet<u16> = self.routes.iter().map(|r| r.port).collect();
        (FIRST_APP_PORT..=LAST_APP_PORT).find(|p| !used.contains(p))
    }
}

/// What an activator holds for one app, pushed to the operator when requests start waiting
/// and while they wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Demand {
    /// The app's namespace.
    pub namespace: String,
    /// The WsgiApp's name.
    pub app: String,
    /// The activator replica that reports (its pod name).
    pub activator: String,
    /// Requests waiting for a pod.
    pub held: u32,
    /// Requests it has forwarded and not yet seen answered.
    pub in_flight: u32,
    /// How long the oldest held request has waited, milliseconds.
    pub oldest_wait_ms: u64,
    /// When, milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(ns: &str, app: &str, port: u16) -> Route {
        Route {
            namespace: ns.into(),
            app: app.into(),
            port,
            pods_service: format!("{app}-pods"),
            http_port_name: "http".into(),
            admin_port: 9191,
            slots_per_pod: 8,
            hold: HoldLimits::default(),
        }
    }

    #[test]
    fn ports_are_kept_and_the_lowest_free_is_given() {
        let t = RouteTable {
            routes: vec![route("a", "x", 20000), route("a", "y", 20002)],
        };
        assert_eq!(t.port_for("a", "y"), Some(20002));
        assert_eq!(t.port_for("b", "z"), Some(20001));
        let json = serde_json::to_string(&t).expect("json");
        assert!(json.contains("\"podsService\""));
        assert_eq!(serde_json::from_str::<RouteTable>(&json).expect("back"), t);
    }
}
