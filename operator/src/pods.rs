//! Which app a pod wakes, and when: the shared pod watch ([`crate::cache::PodCache`], read by
//! the status's explanations in [`crate::explain`] and by the autoscaler) wakes an app's
//! reconcile when one of its pods changes state ([`PodWakes`]).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::crd::WsgiApp;
use crate::layout::APP_LABEL;

/// Which apps a pod event wakes: those of pods whose state (status, deletion) changed since
/// last seen. The first list wakes nothing (every app is reconciled at start); a relist after
/// an outage wakes the apps of pods that changed meanwhile. Pure: fed the watch's events.
#[derive(Default)]
pub struct PodWakes {
    seen: std::collections::HashMap<(String, String), u64>,
    listed: bool,
}

impl PodWakes {
    /// The apps `event` wakes.
    pub fn apply(&mut self, event: &watcher::Event<Pod>) -> Vec<ObjectRef<WsgiApp>> {
        let key = |p: &Pod| (p.namespace().unwrap_or_default(), p.name_any());
        match event {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                let hash = compute_pod_trigger_hash(p);
                let old = match hash {
                    Some(h) => self.seen.insert(key(p), h),
                    None => None,
                };
                let changed = match old {
                    Some(old) => Some(old) != hash,
                    None => self.listed,
                };
                if changed {
                    app_of_pod(p).into_iter().collect()
                } else {
                    Vec::new()
                }
            }
            watcher::Event::Delete(p) => {
                self.seen.remove(&key(p));
                app_of_pod(p).into_iter().collect()
            }
            watcher::Event::Init => Vec::new(),
            watcher::Event::InitDone => {
                self.listed = true;
                Vec::new()
            }
        }
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
    fn pods_wake_their_app_when_their_state_changes_after_the_first_list() {
        use kube::runtime::watcher::Event;
        let mut wakes = PodWakes::default();
        let shop = ObjectRef::new("shop").within("ns");
        let p = pod("ns", Some("shop"));
        // The first list wakes nothing: every app is reconciled at start.
        assert!(wakes.apply(&Event::Init).is_empty());
        assert!(wakes.apply(&Event::InitApply(p.clone())).is_empty());
        assert!(wakes.apply(&Event::InitDone).is_empty());
        // The same state again (a label, a resync) wakes nothing; a new state wakes the app.
        let mut labelled = p.clone();
        labelled.labels_mut().insert("x".into(), "y".into());
        assert!(wakes.apply(&Event::Apply(labelled)).is_empty());
        let mut running = p.clone();
        running.status = Some(PodStatus {
            phase: Some("Running".into()),
            ..PodStatus::default()
        });
        assert_eq!(
            wakes.apply(&Event::Apply(running.clone())),
            vec![shop.clone()]
        );
        // A relist after an outage wakes the apps of pods that changed or are new.
        let mut other = pod("ns", Some("cart"));
        other.metadata.name = Some("q".into());
        wakes.apply(&Event::Init);
        assert!(wakes.apply(&Event::InitApply(running.clone())).is_empty());
        assert_eq!(
            wakes.apply(&Event::InitApply(other)),
            vec![ObjectRef::new("cart").within("ns")]
        );
        wakes.apply(&Event::InitDone);
        // A deleted pod wakes its app; a pod without the app label wakes nothing.
        assert_eq!(wakes.apply(&Event::Delete(running)), vec![shop]);
        assert!(wakes.apply(&Event::Apply(pod("ns", None))).is_empty());
    }
}
