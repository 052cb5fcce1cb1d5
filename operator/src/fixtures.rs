//! Test fixtures: WsgiApp builders (`mk_app("shop").with_workers(2, Some(8))`) and the
//! helpers of the scripted mock API server (tower-test) the reconcile and autoscale tests use.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::client::Body;
use serde_json::Value;

use crate::crd::{ReplicasSpec, WorkersSpec, WsgiApp, WsgiAppSpec, WsgiAppStatus};

/// The uid every fixture app carries.
pub const UID: &str = "5f1a2b3c-0000-4000-8000-000000000001";

/// A minimal valid WsgiApp `name` in namespace `default`, as read from the API server.
pub fn mk_app(name: &str) -> WsgiApp {
    WsgiApp {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(UID.into()),
            generation: Some(1),
            resource_version: Some("100".into()),
            ..ObjectMeta::default()
        },
        spec: WsgiAppSpec {
            image: "registry.example.com/shop:1.0".into(),
            app: "shop.wsgi:application".into(),
            ..WsgiAppSpec::default()
        },
        status: None,
    }
}

impl WsgiApp {
    /// Sets workers.min and workers.max.
    pub fn with_workers(mut self, min: i32, max: Option<i32>) -> Self {
        let w = self.spec.workers.get_or_insert_with(WorkersSpec::default);
        w.min = Some(min);
        w.max = max;
        self
    }

    /// Sets replicas.min and replicas.max.
    pub fn with_replicas(mut self, min: i32, max: Option<i32>) -> Self {
        let r = self.spec.replicas.get_or_insert_with(ReplicasSpec::default);
        r.min = Some(min);
        r.max = max;
        self
    }

    /// Sets the MODULE:CALLABLE.
    pub fn with_app(mut self, app: &str) -> Self {
        self.spec.app = app.into();
        self
    }

    /// Sets the status.
    pub fn with_status(mut self, status: WsgiAppStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Sets metadata.generation.
    pub fn with_generation(mut self, generation: i64) -> Self {
        self.metadata.generation = Some(generation);
        self
    }

    /// Applies any other change.
    pub fn map(mut self, f: impl FnOnce(&mut WsgiApp)) -> Self {
        f(&mut self);
        self
    }
}

/// The test's end of the mock API server.
pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Where the mock API server sends the answer to one request.
pub type Responder = tower_test::mock::SendResponse<Response<Body>>;

/// A JSON answer of the mock API server.
pub fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

/// The next request the code under test makes; fails the test after 5 s without one.
pub async fn next_request(handle: &mut Handle) -> (Request<Body>, Responder) {
    tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("the code under test made the next request in time")
        .expect("the client is still alive")
}
