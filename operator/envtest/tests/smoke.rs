//! The control plane starts, serves, survives an API server restart and makes pods' owners work.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

#[tokio::test]
async fn starts_serves_and_restarts_the_api_server() {
    let Some(cluster) = wsgiscale_envtest::shared() else {
        return;
    };
    let ns = wsgiscale_envtest::TestNamespace::create(cluster, "smoke").await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client().await, &ns.name);
    let cm: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "a"}})).unwrap();
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("create");
    if let Some(cp) = cluster.control_plane() {
        cp.stop_apiserver();
        assert!(cms.get("a").await.is_err(), "the API server is down");
        cp.start_apiserver().expect("restart");
        let fresh: Api<ConfigMap> = Api::namespaced(cluster.client().await, &ns.name);
        fresh
            .get("a")
            .await
            .expect("the ConfigMap survived in etcd");
    }
}
