//! What the operator's watches already hold, for reading instead of asking the API server:
//! the children of every WsgiApp ([`ChildStores`], the reflector stores of the controllers'
//! `owns` watches) and the pods of every app ([`PodCache`], one shared pod watch per watched
//! scope, looked up by app).
//!
//! The best-run controllers (controller-runtime's cached client, kube-rs `Store`s, Knative's
//! listers) read this way: a reconcile that changes nothing makes no request, and the
//! autoscaler never lists pods on a timer. A cache lags the API server by one watch event; the
//! reconciler is level-triggered (the event that moves the cache on triggers the next
//! reconcile), so a stale read costs at most one apply that changes nothing. A miss is asked of
//! the API server (see [`crate::reconcile`]): the caches hold only objects labelled as the
//! operator's, so a child's name taken by someone else's object is still found.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::layout::APP_LABEL;

/// The reflector stores of one kind, one per watched scope (a namespace, or `None` for all).
#[derive(Clone)]
pub struct Stores<K: kube::Resource<DynamicType = ()> + 'static> {
    scopes: Vec<(Option<String>, Store<K>)>,
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Default for Stores<K> {
    fn default() -> Self {
        Stores { scopes: Vec::new() }
    }
}

impl<K: kube::Resource<DynamicType = ()> + Clone + 'static> Stores<K> {
    /// Adds the store of `scope`.
    pub fn add(&mut self, scope: Option<&str>, store: Store<K>) {
        self.scopes.push((scope.map(str::to_string), store));
    }

    /// The cached object `namespace/name`, if a store of its scope holds it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let key = ObjectRef::new(name).within(namespace);
        self.scopes
            .iter()
            .filter(|(scope, _)| scope.as_deref().is_none_or(|s| s == namespace))
            .find_map(|(_, store)| store.get(&key))
    }
}

/// The stores of every kind of child.
#[derive(Clone, Default)]
pub struct ChildStores {
    /// ConfigMaps labelled as the operator's.
    pub config_maps: Stores<ConfigMap>,
    /// Deployments labelled as the operator's.
    pub deployments: Stores<Deployment>,
    /// Services labelled as the operator's.
    pub services: Stores<Service>,
    /// PodDisruptionBudgets labelled as the operator's.
    pub pdbs: Stores<PodDisruptionBudget>,
}

/// Drops what the operator never reads from a cached object: its managed fields, about half
/// of an object's metadata.
pub fn trim<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// What the pod cache keeps of a pod: its metadata but annotations and managed fields, the
/// name and image of each container, its node, and its whole status (addresses, conditions,
/// container states with their termination messages). The rest of the spec (the rendered
/// command, environment, volumes, probes) is most of a pod's size and nothing reads it from
/// here; a reader that needs more of it adds it here.
pub fn trim_pod(pod: &mut Pod) {
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    trim(pod);
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.take() {
        let keep = |c: Container| Container {
            name: c.name,
            image: c.image,
            ..Container::default()
        };
        pod.spec = Some(PodSpec {
            containers: spec.containers.into_iter().map(keep).collect(),
            init_containers: spec
                .init_containers
                .map(|cs| cs.into_iter().map(keep).collect()),
            node_name: spec.node_name,
            ..PodSpec::default()
        });
    }
}

/// A namespace and an app name.
pub type AppKey = (String, String);

/// The pods of one scope, by app, as one watch of that scope reports them.
#[derive(Debug, Default)]
struct ScopeIndex {
    by_app: HashMap<AppKey, BTreeMap<String, Arc<Pod>>>,
    /// Where each pod is filed, so a relabelled or deleted pod is found.
    app_of: HashMap<(String, String), AppKey>,
    /// A relist in progress.
    relist: Option<Vec<Pod>>,
    listed: bool,
}

impl ScopeIndex {
    fn remove(&mut self, ns: &str, name: &str) {
        if let Some(app) = self.app_of.remove(&(ns.to_string(), name.to_string())) {
            if let Some(pods) = self.by_app.get_mut(&app) {
                pods.remove(name);
                if pods.is_empty() {
                    self.by_app.remove(&app);
                }
            }
        }
    }

    fn insert(&mut self, mut pod: Pod) {
        trim_pod(&mut pod);
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        self.remove(&ns, &name);
        let Some(app) = pod.labels().get(APP_LABEL).cloned() else {
            return;
        };
        let key = (ns.clone(), app);
        self.app_of.insert((ns, name.clone()), key.clone());
        self.by_app
            .entry(key)
            .or_default()
            .insert(name, Arc::new(pod));
    }

    fn apply(&mut self, event: &watcher::Event<Pod>) {
        match event {
            watcher::Event::Apply(pod) => self.insert(pod.clone()),
            watcher::Event::Delete(pod) => {
                self.remove(&pod.namespace().unwrap_or_default(), &pod.name_any())
            }
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(pod) => {
                // Trimmed now, not at the end of the list: a relist of thousands of pods held
                // whole until then was most of the operator's peak memory.
                let mut pod = pod.clone();
                trim_pod(&mut pod);
                self.relist.get_or_insert_with(Vec::new).push(pod)
            }
            watcher::Event::InitDone => {
                let pods = self.relist.take().unwrap_or_default();
                self.by_app.clear();
                self.app_of.clear();
                for pod in pods {
                    self.insert(pod);
                }
                self.listed = true;
            }
        }
    }
}

/// Every app's pods, from one pod watch per watched scope (label `wsgiscale.dev/app`
/// present), shared by the autoscaler and the reconciler. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PodCache {
    scopes: Arc<RwLock<BTreeMap<Option<String>, ScopeIndex>>>,
    /// Woken when a scope's watch has listed.
    listed: Arc<tokio::sync::Notify>,
}

impl PodCache {
    /// Files one event of the pod watch of `scope` (a namespace, or `None` for all).
    pub fn apply(&self, scope: Option<&str>, event: &watcher::Event<Pod>) {
        let mut scopes = self.scopes.write().unwrap_or_else(|e| e.into_inner());
        scopes
            .entry(scope.map(str::to_string))
            .or_default()
            .apply(event);
        drop(scopes);
        if matches!(event, watcher::Event::InitDone) {
            self.listed.notify_waiters();
        }
    }

    /// Whether the watch of the scope that holds `namespace` has listed once.
    pub fn is_listed_in(&self, namespace: &str) -> bool {
        let scopes = self.scopes.read().unwrap_or_else(|e| e.into_inner());
        scopes
            .iter()
            .any(|(scope, s)| s.listed && scope.as_deref().is_none_or(|n| n == namespace))
    }

    /// Waits at most `limit` for [`Self::is_listed_in`] (right after a start, the pod watch
    /// is still listing while the first reconciles run); returns it.
    pub async fn wait_listed_in(&self, namespace: &str, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.listed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_listed_in(namespace) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_listed_in(namespace);
            }
        }
    }

    /// Forgets the scope (its watch stopped: leadership lost).
    pub fn forget(&self, scope: Option<&str>) {
        let mut scopes = self.scopes.write().unwrap_or_else(|e| e.into_inner());
        scopes.remove(&scope.map(str::to_string));
    }

    /// The pods of app `name` in `namespace` (label `wsgiscale.dev/app=name`), by pod name.
    pub fn pods_of(&self, namespace: &str, name: &str) -> Vec<Arc<Pod>> {
        let scopes = self.scopes.read().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), name.to_string());
        scopes
            .values()
            .filter_map(|s| s.by_app.get(&key))
            .flat_map(|pods| pods.values().cloned())
            .collect()
    }

    /// Pods cached, over every scope.
    pub fn len(&self) -> usize {
        let scopes = self.scopes.read().unwrap_or_else(|e| e.into_inner());
        scopes.values().map(|s| s.app_of.len()).sum()
    }

    /// Whether no pod is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything the watches hold that the reconciler and the autoscaler read.
#[derive(Clone, Default)]
pub struct Caches {
    /// The children, by kind.
    pub children: ChildStores,
    /// The pods, by app.
    pub pods: PodCache,
    /// The autoscaler's newest recommendations, before their status write comes back.
    pub recommendations: Arc<crate::handoff::Recommendations>,
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::reflector::store::Writer;

    use super::*;

    fn pod(ns: &str, name: &str, app: Option<&str>) -> Pod {
        use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: app.map(|a| [(APP_LABEL.to_string(), a.to_string())].into()),
                managed_fields: Some(vec![Default::default()]),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("shop:1".into()),
                    args: Some(vec!["serve".into()]),
                    ..Container::default()
                }],
                volumes: Some(vec![Volume::default()]),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<String> {
        pods.iter().map(|p| p.name_any()).collect()
    }

    #[test]
    fn pods_are_found_by_app_through_adds_relabels_deletes_and_relists() {
        use watcher::Event::*;
        let cache = PodCache::default();
        let s = Some("shop");
        assert!(!cache.is_listed_in("shop"));
        cache.apply(s, &Init);
        cache.apply(s, &InitApply(pod("shop", "web-1", Some("web"))));
        cache.apply(s, &InitApply(pod("shop", "api-1", Some("api"))));
        assert!(
            cache.pods_of("shop", "web").is_empty(),
            "not before the list ends"
        );
        cache.apply(s, &InitDone);
        assert!(cache.is_listed_in("shop") && !cache.is_listed_in("blog"));
        assert_eq!(names(&cache.pods_of("shop", "web")), ["web-1"]);
        assert!(
            cache.pods_of("shop", "web")[0]
                .metadata
                .managed_fields
                .is_none(),
            "trimmed"
        );
        cache.apply(s, &Apply(pod("shop", "web-2", Some("web"))));
        assert_eq!(names(&cache.pods_of("shop", "web")), ["web-1", "web-2"]);
        // Relabelled to another app, then its label taken away.
        cache.apply(s, &Apply(pod("shop", "web-2", Some("api"))));
        assert_eq!(names(&cache.pods_of("shop", "api")), ["api-1", "web-2"]);
        cache.apply(s, &Apply(pod("shop", "web-2", None)));
        assert_eq!(names(&cache.pods_of("shop", "api")), ["api-1"]);
        cache.apply(s, &Delete(pod("shop", "web-1", Some("web"))));
        assert!(cache.pods_of("shop", "web").is_empty());
        assert_eq!(cache.len(), 1);

        // Another scope's relist leaves this one's pods alone; this scope's relist replaces
        // them (a pod deleted while the watch was down is gone).
        cache.apply(Some("blog"), &Init);
        cache.apply(Some("blog"), &InitApply(pod("blog", "web-1", Some("web"))));
        cache.apply(Some("blog"), &InitDone);
        assert_eq!(names(&cache.pods_of("blog", "web")), ["web-1"]);
        assert_eq!(names(&cache.pods_of("shop", "api")), ["api-1"]);
        cache.apply(s, &Init);
        cache.apply(s, &InitApply(pod("shop", "api-9", Some("api"))));
        cache.apply(s, &InitDone);
        assert_eq!(names(&cache.pods_of("shop", "api")), ["api-9"]);
        assert_eq!(cache.len(), 2);
        cache.forget(Some("blog"));
        assert!(cache.pods_of("blog", "web").is_empty());
    }

    #[test]
    fn stores_are_read_by_namespace_and_name_in_their_scope() {
        let cm = |ns: &str, name: &str| ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let mut all: Writer<ConfigMap> = Writer::default();
        all.apply_watcher_event(&watcher::Event::Apply(cm("shop", "web-config")));
        let mut blog: Writer<ConfigMap> = Writer::default();
        blog.apply_watcher_event(&watcher::Event::Apply(cm("blog", "web-config")));
        let mut stores = Stores::default();
        stores.add(Some("blog"), blog.as_reader());
        assert!(stores.get("shop", "web-config").is_none());
        stores.add(None, all.as_reader());
        assert!(stores.get("shop", "web-config").is_some());
        assert!(stores.get("blog", "web-config").is_some());
        assert!(stores.get("shop", "other").is_none());
    }

    #[tokio::test]
    async fn a_reconcile_waits_for_the_first_list_of_its_scope_and_no_longer_than_told() {
        use std::time::Duration;
        let cache = PodCache::default();
        let waiting = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.wait_listed_in("shop", Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        cache.apply(Some("shop"), &watcher::Event::Init);
        assert!(!waiting.is_finished());
        cache.apply(Some("shop"), &watcher::Event::InitDone);
        assert!(waiting.await.expect("joined"));
        // Another scope never lists: the wait ends at its limit, saying so.
        assert!(
            !cache
                .wait_listed_in("blog", Duration::from_millis(30))
                .await
        );
    }
}
