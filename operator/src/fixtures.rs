//! Test fixtures: WsgiApp builders (`mk_app("shop").with_workers(2, Some(8))`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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
