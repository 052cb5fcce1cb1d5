//! The apps' pods, from a watch (a reflector store per controller scope), so that the status
//! can say why pods are not ready ([`crate::explain`]) without a LIST per reconcile, and so
//! that a pod that changes state wakes its app's reconcile.
//!
//! Only the lookup is used by the reconciler ([`PodCache::pods_of`]): a shared store of the
//! operator's (one reflector for every purpose) can take its place without touching the
//! reconcile.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;

use crate::crd::WsgiApp;
use crate::validate::APP_LABEL;

/// The pods of the apps, looked up by the app label.
#[derive(Default)]
pub struct PodCache {
    stores: RwLock<Vec<Store<Pod>>>,
}

impl PodCache {
    /// Adds the store of one watch (a controller's scope: a namespace, or all).
    pub fn register(&self, store: Store<Pod>) {
        self.write().push(store);
    }

    /// Forgets every store (the controllers stopped).
    pub fn clear(&self) {
        self.write().clear();
    }

    /// The pods of app `name` in `namespace`, as last seen by the watch.
    pub fn pods_of(&self, namespace: &str, name: &str) -> Vec<Arc<Pod>> {
        let stores = self.stores.read().unwrap_or_else(|e| e.into_inner());
        stores
            .iter()
            .flat_map(|s| s.state())
            .filter(|p| p.namespace().as_deref() == Some(namespace))
            .filter(|p| p.labels().get(APP_LABEL).map(String::as_str) == Some(name))
            .collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Store<Pod>>> {
        // A poisoned lock only means a reader panicked; the list is still whole.
        self.stores.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The app a pod belongs to, by its label.
pub fn app_of_pod(pod: &Pod) -> Option<ObjectRef<WsgiApp>> {
    let name = pod.labels().get(APP_LABEL)?;
    Some(ObjectRef::new(name).within(&pod.namespace()?))
}

/// What of a pod can change why its app is (not) ready: its status and whether it is being
/// deleted. A pod event that leaves this alone (a label, an annotation) wakes nothing.
pub fn compute_pod_trigger_hash(pod: &Pod) -> Option<u64> {
    let mut h = DefaultHasher::new();
    serde_json::to_string(&pod.status).ok()?.hash(&mut h);
    pod.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// A pod as the cache keeps it: without its managed fields, which no decision reads.
pub fn strip_pod(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(ns: &str, app: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some(ns.into()),
                labels: app.map(|a| [(APP_LABEL.to_string(), a.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn a_pod_maps_to_its_app_and_only_status_changes_wake_it() {
        assert_eq!(
            app_of_pod(&pod("shop-ns", Some("shop"))),
            Some(ObjectRef::new("shop").within("shop-ns"))
        );
        assert_eq!(app_of_pod(&pod("shop-ns", None)), None);

        let a = pod("ns", Some("shop"));
        let mut labelled = a.clone();
        labelled.labels_mut().insert("x".into(), "y".into());
        assert_eq!(
            compute_pod_trigger_hash(&a),
            compute_pod_trigger_hash(&labelled)
        );
        let mut started = a.clone();
        started.status = Some(PodStatus {
            phase: Some("Running".into()),
            ..PodStatus::default()
        });
        assert_ne!(
            compute_pod_trigger_hash(&a),
            compute_pod_trigger_hash(&started)
        );
    }

    #[test]
    fn lookup_is_by_namespace_and_app_label() {
        let (reader, mut writer) = kube::runtime::reflector::store();
        let mut other_ns = pod("other", Some("shop"));
        other_ns.metadata.name = Some("q".into());
        for p in [pod("ns", Some("shop")), other_ns, {
            let mut p = pod("ns", Some("cart"));
            p.metadata.name = Some("r".into());
            p
        }] {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(p));
        }
        let cache = PodCache::default();
        cache.register(reader);
        let found = cache.pods_of("ns", "shop");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name_any(), "p");
        cache.clear();
        assert!(cache.pods_of("ns", "shop").is_empty());
    }
}
