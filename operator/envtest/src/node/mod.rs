//! A stand-in node: what a kubelet (and, for its own pods, the scheduler) does, for tests and
//! benchmarks on a machine with a real API server and no kubelet.
//!
//! [`StandInNode::start`] registers a `Node` (with a `Lease` it renews, so the node lifecycle
//! controller keeps it Ready), binds the unscheduled pods of the namespaces it serves whose
//! `nodeSelector` its labels match, and runs each of its pods as real processes:
//!
//! - in a network namespace of its own with a 198.18.X.N address on the node's bridge
//!   ([`crate::netns`]), so that the endpointslice controller publishes it and the stand-in
//!   kube-proxy, the API server's aggregator and the operator reach it as in a cluster;
//! - in a cgroup of its own ([`crate::cgroup`]) with the pod's CPU limit enforced by the
//!   kernel (a `limits.cpu: 250m` pod gets 25 ms of CPU per 100 ms) and its CPU time and memory
//!   accounted, which the stand-in metrics-server reports;
//! - after a start-up delay the run chooses (image pull and container start), with the Pod's
//!   own command and arguments (any server), its environment, volumes (emptyDir, ConfigMap,
//!   Secret, image, downward API: the paths are mapped to directories, see [`plan`]), init
//!   containers and native sidecars;
//! - with its startup, liveness and readiness probes run against the real process, restarts
//!   with the kubelet's back-off, preStop hooks, SIGTERM and the grace period on deletion,
//!   and the status, conditions and Events a kubelet reports.
//!
//! Images are not pulled: the node knows a table of [`plan::Image`]s (what is on the PATH,
//! which paths hold what); a pod with an image outside it waits in `ErrImagePull` /
//! `ImagePullBackOff`, as with a bad image in a cluster.
//!
//! Everything a node makes (processes, cgroups, network namespaces, directories, the Node
//! object) is removed by [`StandInNode::stop`] or when it is dropped.

pub mod plan;
pub mod probe;
pub mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::cgroup::{self, Hierarchy, PodCgroup};
use crate::netns::{PodNet, PodNetwork};
use plan::{
    ContainerPlan, EnvRef, Image, PlanError, PodPlan, PreStop, ProbeAction, ProbeSpec, Projection,
    VolumeSource,
};
use probe::ProbeState;
use status::{CState, ContainerStatus, PodState, Terminated, Transitions};

/// The label every stand-in node carries (`true`).
pub const NODE_LABEL: &str = "wsgiscale.dev/stand-in-node";

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// cgroups are not usable here.
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    /// The pod network could not be made.
    #[error(transparent)]
    Net(#[from] crate::netns::NetError),
    /// The API server refused the Node.
    #[error("register the Node: {0}")]
    Register(#[from] kube::Error),
    /// A file operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A program the node needs is missing.
    #[error("{0}")]
    Missing(String),
}

/// How a node behaves.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Node's name.
    pub name: String,
    /// Labels beyond `kubernetes.io/hostname` and [`NODE_LABEL`].
    pub labels: BTreeMap<String, String>,
    /// The namespaces whose pods it binds and runs (more with [`StandInNode::serve`]).
    pub namespaces: Vec<String>,
    /// Image pull and container start, before the pod's first process starts.
    pub start_delay: Duration,
    /// The images it can run.
    pub images: BTreeMap<String, Image>,
    /// Capacity it reports (`cpu`, `memory`, `pods`).
    pub capacity_cpu: String,
    /// Memory capacity it reports.
    pub capacity_memory: String,
    /// Publish Events (Pulled, Started, Unhealthy, Killing, BackOff) as a kubelet does.
    pub events: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: format!("stand-in-{}", std::process::id()),
            labels: BTreeMap::new(),
            namespaces: Vec::new(),
            start_delay: Duration::from_secs(2),
            images: BTreeMap::new(),
            capacity_cpu: std::thread::available_parallelism()
                .map(|n| n.get().to_string())
                .unwrap_or_else(|_| "2".into()),
            capacity_memory: "16Gi".into(),
            events: true,
        }
    }
}

/// One pod as the node sees it now (for the metrics-server and for reports).
#[derive(Debug, Clone)]
pub struct PodSample {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Address, once it has one.
    pub ip: Option<Ipv4Addr>,
    /// The Ready condition.
    pub ready: bool,
    /// Deleted, still stopping.
    pub terminating: bool,
    /// The first app container's name (the metrics are the pod's, reported under it).
    pub container: String,
    /// CPU time since the pod's cgroup was made, nanoseconds.
    pub cpu_ns: u64,
    /// Memory working set, bytes.
    pub memory: u64,
    /// Processes in the pod.
    pub processes: usize,
}

/// One pod's life on the node, in seconds since the Unix epoch.
#[derive(Debug, Clone, Default)]
pub struct PodRecord {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Taken by the node (bound or found bound).
    pub taken: f64,
    /// First process started.
    pub started: Option<f64>,
    /// First Ready.
    pub ready: Option<f64>,
    /// Deletion seen.
    pub deleting: Option<f64>,
    /// Every process gone and resources released.
    pub gone: Option<f64>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// How often a pod's status is checked against the API server's copy (the kubelet's status
/// manager's sync period).
const STATUS_RESYNC: Duration = Duration::from_secs(10);

fn rfc3339_now() -> String {
    rfc3339_ago(Duration::ZERO)
}

/// RFC 3339, whole seconds, `ago` before now.
fn rfc3339_ago(ago: Duration) -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    let then = k8s_openapi::jiff::SignedDuration::try_from(ago)
        .ok()
        .and_then(|d| now.checked_sub(d).ok())
        .unwrap_or(now);
    then.round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl Inner {
    /// Now, as the pods of `namespace` write it ([`StandInNode::backdate`]).
    fn pod_now(&self, namespace: &str) -> String {
        let ago = self
            .history
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(namespace)
            .copied()
            .unwrap_or_default();
        rfc3339_ago(ago)
    }
}

/// What the node shares with each pod's task.
#[derive(Debug, Default)]
struct PodLive {
    ip: Option<Ipv4Addr>,
    ready: bool,
    terminating: bool,
    /// Its processes are stopped and its cgroup removed; the task is releasing the rest and
    /// confirming the deletion, and is about to end (the next sync forgets it).
    gone: bool,
    cgroup: Option<Arc<PodCgroup>>,
    container: String,
    labels: BTreeMap<String, String>,
}

struct RunningPod {
    namespace: String,
    name: String,
    /// `true`: stop now (deleted, or gone from the API).
    stop: watch::Sender<Stop>,
    live: Arc<Mutex<PodLive>>,
    task: tokio::task::JoinHandle<()>,
}

/// How a pod is to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Keep running.
    No,
    /// Deleted gracefully: preStop, SIGTERM, the grace period, SIGKILL.
    Graceful,
    /// Now (the object is gone, or the node is stopping, or its namespace is torn down).
    Now,
}

struct Inner {
    client: Client,
    config: NodeConfig,
    hierarchy: Hierarchy,
    network: PodNetwork,
    dir: PathBuf,
    nsenter: PathBuf,
    served: RwLock<HashSet<String>>,
    fast: RwLock<HashSet<String>>,
    /// Per namespace: how much earlier than now its pods' times are written ([`StandInNode::backdate`]).
    history: RwLock<HashMap<String, Duration>>,
    running: Mutex<HashMap<String, RunningPod>>,
    records: Mutex<BTreeMap<String, PodRecord>>,
    recorder: Option<Recorder>,
}

impl Inner {
    fn record(&self, uid: &str, f: impl FnOnce(&mut PodRecord)) {
        let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rec) = r.get_mut(uid) {
            f(rec);
        }
    }

    async fn event(&self, pod: &Pod, type_: EventType, reason: &str, note: String) {
        if let Some(rec) = &self.recorder {
            let ev = Event {
                type_,
                reason: reason.into(),
                note: Some(note.chars().take(1000).collect()),
                action: reason.into(),
                secondary: None,
            };
            let _ = rec.publish(&ev, &pod.object_ref(&())).await;
        }
    }
}

/// A running stand-in node.
pub struct StandInNode {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Whether this machine can run a stand-in node (root, cgroups, `ip`, `nsenter`), and why
/// not: tests print the reason and skip.
pub fn check_available() -> Result<(), String> {
    crate::netns::check_available()?;
    Hierarchy::detect().map(|_| ()).map_err(|e| e.to_string())
}

impl StandInNode {
    /// Registers the Node and starts running the pods of its namespaces.
    pub async fn start(client: Client, config: NodeConfig) -> Result<StandInNode, NodeError> {
        let hierarchy = Hierarchy::detect()?;
        crate::netns::check_available().map_err(NodeError::Missing)?;
        let nsenter = which("nsenter").ok_or_else(|| NodeError::Missing("nsenter".into()))?;
        // A node of the same name left by a crashed run: its cgroups go first.
        cgroup::remove_node(&hierarchy, &config.name);
        let network = PodNetwork::create()?;
        let base = std::env::var_os("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "stand-in-node-{}-{}",
            config.name,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let recorder = config.events.then(|| {
            Recorder::new(
                client.clone(),
                Reporter {
                    controller: "kubelet".into(),
                    instance: Some(config.name.clone()),
                },
            )
        });
        let inner = Arc::new(Inner {
            served: RwLock::new(config.namespaces.iter().cloned().collect()),
            client,
            hierarchy,
            network,
            dir,
            nsenter,
            fast: RwLock::new(HashSet::new()),
            history: RwLock::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            records: Mutex::new(BTreeMap::new()),
            recorder,
            config,
        });
        register(&inner).await?;
        let cancel = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(heartbeat(inner.clone(), cancel.clone())),
            tokio::spawn(run_node(inner.clone(), cancel.clone())),
        ];
        Ok(StandInNode {
            inner,
            cancel,
            tasks: Mutex::new(tasks),
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The prefix of this node's pod network namespaces (`wsgiscale-pod-X-`).
    pub fn netns_prefix(&self) -> String {
        self.inner.network.netns_prefix()
    }

    /// The node's own address on the pod network (stand-ins that run in the root namespace,
    /// such as the metrics-server, listen on it).
    pub fn address(&self) -> Ipv4Addr {
        self.inner.network.gateway()
    }

    /// One more address of the node's own (root namespace) on the pod network, for a second
    /// stand-in that needs an address of its own (a second activator replica).
    pub fn add_host_address(&self) -> Result<Ipv4Addr, NodeError> {
        Ok(self.inner.network.add_host_address()?)
    }

    /// Starts binding and running the pods of `namespace` too.
    pub fn serve(&self, namespace: &str) {
        self.inner
            .served
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(namespace.to_string());
    }

    /// Until called again with `None`, the pods of `namespace` write the times of what
    /// happens to them (start, container start and finish, condition transitions) `by`
    /// earlier than now: pods that are there before a measurement starts look like those of
    /// a Deployment that has run for a while, not like pods started a moment ago. The
    /// HorizontalPodAutoscaler treats pods younger than its CPU initialization period (5 min)
    /// differently: it ignores the CPU of such a pod whenever it is unready, where it counts
    /// that of an older pod that has been ready; so a measurement compressed into minutes
    /// must not start with brand-new pods.
    pub fn backdate(&self, namespace: &str, by: Option<Duration>) {
        let mut h = self
            .inner
            .history
            .write()
            .unwrap_or_else(|e| e.into_inner());
        match by {
            Some(by) => h.insert(namespace.to_string(), by),
            None => h.remove(namespace),
        };
    }

    /// From now on, pods of `namespace` that are deleted stop at once (SIGKILL, no preStop,
    /// no grace): for tearing a run down quickly once its measurement is over.
    pub fn stop_at_once(&self, namespace: &str) {
        self.inner
            .fast
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(namespace.to_string());
    }

    /// Every pod the node runs now (not one whose processes are already stopped and whose
    /// deletion is being confirmed: that one is gone from the node before it is gone from the
    /// API server).
    pub fn pods(&self) -> Vec<PodSample> {
        let running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .values()
            .filter_map(|p| {
                let live = p.live.lock().unwrap_or_else(|e| e.into_inner());
                if live.gone {
                    return None;
                }
                let (cpu_ns, memory, processes) = match &live.cgroup {
                    Some(cg) => (
                        cg.cpu_usage_ns().unwrap_or(0),
                        cg.memory_working_set(),
                        cg.pids().len(),
                    ),
                    None => (0, 0, 0),
                };
                Some(PodSample {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    labels: live.labels.clone(),
                    ip: live.ip,
                    ready: live.ready,
                    terminating: live.terminating,
                    container: live.container.clone(),
                    cpu_ns,
                    memory,
                    processes,
                })
            })
            .collect()
    }

    /// The life of every pod the node took, in the order it took them.
    pub fn records(&self) -> Vec<PodRecord> {
        let mut v: Vec<PodRecord> = self
            .inner
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.taken.total_cmp(&b.taken));
        v
    }

    /// Stops every pod at once, deletes the Node and removes what the node made.
    pub async fn stop(&self) {
        if self.cancel.is_cancelled() {
            return;
        }
        self.cancel.cancel();
        let pods: Vec<RunningPod> = {
            let mut running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
            running.drain().map(|(_, p)| p).collect()
        };
        for p in &pods {
            let _ = p.stop.send(Stop::Now);
        }
        for p in pods {
            let _ = tokio::time::timeout(Duration::from_secs(10), p.task).await;
        }
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        let nodes: Api<Node> = Api::all(self.inner.client.clone());
        let _ = nodes
            .delete(&self.inner.config.name, &DeleteParams::default())
            .await;
        cgroup::remove_node(&self.inner.hierarchy, &self.inner.config.name);
        // A pod task that did not end within its grace still holds the network: remove it
        // here rather than when the last holder goes.
        self.inner.network.release();
        let _ = std::fs::remove_dir_all(&self.inner.dir);
    }
}

impl Drop for StandInNode {
    fn drop(&mut self) {
        if self.cancel.is_cancelled() {
            return;
        }
        // Not stopped (a test failed): kill what runs, synchronously; the network and the
        // cgroups go with `inner` once the pod tasks end.
        self.cancel.cancel();
        let running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        for p in running.values() {
            let _ = p.stop.send(Stop::Now);
            if let Some(cg) = &p.live.lock().unwrap_or_else(|e| e.into_inner()).cgroup {
                let _ = cg.remove();
            }
        }
        drop(running);
        cgroup::remove_node(&self.inner.hierarchy, &self.inner.config.name);
        self.inner.network.release();
        let _ = std::fs::remove_dir_all(&self.inner.dir);
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

fn node_labels(config: &NodeConfig) -> BTreeMap<String, String> {
    let mut labels = config.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), config.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert(NODE_LABEL.into(), "true".into());
    labels
}

async fn register(inner: &Inner) -> Result<(), NodeError> {
    let c = &inner.config;
    let nodes: Api<Node> = Api::all(inner.client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": c.name, "labels": node_labels(c)},
        "spec": {},
    }))
    .expect("a Node literal");
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    patch_node_status(inner).await?;
    Ok(())
}

async fn patch_node_status(inner: &Inner) -> Result<(), kube::Error> {
    let c = &inner.config;
    let now = rfc3339_now();
    let status = json!({"status": {
        "capacity": {"cpu": c.capacity_cpu, "memory": c.capacity_memory, "pods": "250"},
        "allocatable": {"cpu": c.capacity_cpu, "memory": c.capacity_memory, "pods": "250"},
        "addresses": [
            {"type": "InternalIP", "address": inner.network.gateway().to_string()},
            {"type": "Hostname", "address": c.name},
        ],
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "stand-in kubelet is posting ready status",
             "lastHeartbeatTime": now, "lastTransitionTime": now},
        ],
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
            "osImage": "wsgiscale stand-in node", "containerRuntimeVersion": "stand-in://1",
            "kubeletVersion": "v1.32.0", "kubeProxyVersion": "v1.32.0",
            "operatingSystem": "linux", "architecture": "amd64",
        },
    }});
    let nodes: Api<Node> = Api::all(inner.client.clone());
    nodes
        .patch_status(&c.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map(|_| ())
}

/// Renews the node's Lease every 10 s (the node lifecycle controller's signal of a live
/// kubelet) and re-posts its status every minute. A renewal that fails is logged once and once
/// when renewals succeed again: without them the node lifecycle controller marks the node and
/// every pod on it NotReady 50 s after the last status post.
async fn heartbeat(inner: Arc<Inner>, cancel: CancellationToken) {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    let leases: Api<Lease> = Api::namespaced(inner.client.clone(), "kube-node-lease");
    let name = inner.config.name.clone();
    let mut n = 0u64;
    let mut failing = false;
    loop {
        // Typed, so the renew time is a MicroTime as the API server parses it (exactly six
        // fractional digits); a timestamp with nine is refused.
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(name.clone()),
                lease_duration_seconds: Some(40),
                renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
                ..Default::default()
            }),
        };
        let renewed = leases
            .patch(
                &name,
                &PatchParams::apply("stand-in-kubelet").force(),
                &Patch::Apply(&lease),
            )
            .await;
        match (renewed, failing) {
            (Err(e), false) => {
                tracing::warn!(node = %name, error = %e, "stand-in node: Lease not renewed");
                failing = true;
            }
            (Ok(_), true) => {
                tracing::info!(node = %name, "stand-in node: Lease renewed again");
                failing = false;
            }
            _ => {}
        }
        if n % 6 == 5 {
            let _ = patch_node_status(&inner).await;
        }
        n += 1;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// Whether the node may bind `pod`: unscheduled, for the default scheduler, in a served
/// namespace, with a nodeSelector its labels match.
fn bindable(pod: &Pod, labels: &BTreeMap<String, String>) -> bool {
    let Some(spec) = &pod.spec else { return false };
    if spec.node_name.as_deref().is_some_and(|n| !n.is_empty()) {
        return false;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    if spec
        .scheduler_name
        .as_deref()
        .is_some_and(|s| s != "default-scheduler")
    {
        return false;
    }
    spec.node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
}

/// The node's loop: bind, start, stop, following the pods of the served namespaces.
async fn run_node(inner: Arc<Inner>, cancel: CancellationToken) {
    let pods: Api<Pod> = Api::all(inner.client.clone());
    let (store, writer) = reflector::store::<Pod>();
    let stream = reflector::reflector(
        writer,
        watcher(pods.clone(), watcher::Config::default()).default_backoff(),
    )
    .touched_objects();
    let mut stream = std::pin::pin!(stream);
    let labels = node_labels(&inner.config);
    let mut bound_tried: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = stream.next() => {}
            _ = tick.tick() => {}
        }
        // Drain whatever else the watch has ready before acting.
        while let Some(Some(_)) = futures::FutureExt::now_or_never(stream.next()) {}
        sync(&inner, &store, &labels, &mut bound_tried).await;
    }
}

/// What [`sync`] decided for one pod.
enum Action {
    Bind(Arc<Pod>),
    ConfirmDelete(Arc<Pod>),
    Start(Arc<Pod>, bool),
}

async fn sync(
    inner: &Arc<Inner>,
    store: &Store<Pod>,
    labels: &BTreeMap<String, String>,
    bound_tried: &mut HashMap<String, Instant>,
) {
    let served = inner
        .served
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let fast = inner.fast.read().unwrap_or_else(|e| e.into_inner()).clone();
    let mut seen: HashSet<String> = HashSet::new();
    let mut actions = Vec::new();
    {
        let running = inner.running.lock().unwrap_or_else(|e| e.into_inner());
        let records = inner.records.lock().unwrap_or_else(|e| e.into_inner());
        for pod in store.state() {
            let ns = pod.namespace().unwrap_or_default();
            if !served.contains(&ns) {
                continue;
            }
            let uid = pod.uid().unwrap_or_default();
            seen.insert(uid.clone());
            let node_name = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            if node_name.is_empty() {
                if bindable(&pod, labels)
                    && bound_tried
                        .get(&uid)
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(2))
                {
                    bound_tried.insert(uid.clone(), Instant::now());
                    actions.push(Action::Bind(pod.clone()));
                }
                continue;
            }
            if node_name != inner.config.name {
                continue;
            }
            let deleting = pod.metadata.deletion_timestamp.is_some();
            match running.get(&uid) {
                Some(p) => {
                    if deleting {
                        let want = if fast.contains(&ns) {
                            Stop::Now
                        } else {
                            Stop::Graceful
                        };
                        let now = *p.stop.borrow();
                        if now != Stop::Now && now != want {
                            let _ = p.stop.send(want);
                        }
                    }
                }
                // Deleted before the node ever ran it: confirm the deletion.
                None if deleting && !records.contains_key(&uid) => {
                    actions.push(Action::ConfirmDelete(pod.clone()));
                }
                // Its task ended (it was deleted and is being removed).
                None if records.contains_key(&uid) => {}
                None => actions.push(Action::Start(pod.clone(), deleting)),
            }
        }
    }
    for action in actions {
        match action {
            Action::Bind(pod) => {
                tracing::debug!(pod = %pod.name_any(), "stand-in node: binding");
                bind(inner, &pod).await
            }
            Action::ConfirmDelete(pod) => {
                let api: Api<Pod> =
                    Api::namespaced(inner.client.clone(), &pod.namespace().unwrap_or_default());
                let _ = api
                    .delete(
                        &pod.name_any(),
                        &final_delete(&pod.uid().unwrap_or_default()),
                    )
                    .await;
            }
            Action::Start(pod, deleting) => {
                tracing::debug!(pod = %pod.name_any(), deleting, "stand-in node: starting");
                let ns = pod.namespace().unwrap_or_default();
                let uid = pod.uid().unwrap_or_default();
                let (tx, rx) = watch::channel(if deleting { Stop::Graceful } else { Stop::No });
                let live = Arc::new(Mutex::new(PodLive {
                    labels: pod.labels().clone(),
                    ..PodLive::default()
                }));
                inner
                    .records
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        uid.clone(),
                        PodRecord {
                            namespace: ns.clone(),
                            name: pod.name_any(),
                            taken: unix_now(),
                            ..PodRecord::default()
                        },
                    );
                let task = tokio::spawn(run_pod(inner.clone(), (*pod).clone(), rx, live.clone()));
                inner
                    .running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        uid,
                        RunningPod {
                            namespace: ns,
                            name: pod.name_any(),
                            stop: tx,
                            live,
                            task,
                        },
                    );
            }
        }
    }
    // Pods gone from the API (force-deleted) stop now; finished tasks are forgotten.
    let mut running = inner.running.lock().unwrap_or_else(|e| e.into_inner());
    for (uid, p) in running.iter() {
        if !seen.contains(uid) && store.find(|q| q.uid().as_deref() == Some(uid)).is_none() {
            let _ = p.stop.send(Stop::Now);
        }
    }
    running.retain(|_, p| !p.task.is_finished());
    bound_tried.retain(|uid, _| seen.contains(uid));
}

fn final_delete(uid: &str) -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    }
}

/// Binds `pod` to this node, as the scheduler would.
async fn bind(inner: &Inner, pod: &Pod) {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(inner.client.clone(), &ns);
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": pod.name_any(), "namespace": ns},
        "target": {"apiVersion": "v1", "kind": "Node", "name": inner.config.name},
    });
    let _ = api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            &pod.name_any(),
            &PostParams::default(),
            &binding,
        )
        .await;
}

/// One container's run state in the pod task.
struct Running {
    child: Option<tokio::process::Child>,
    started_at: String,
    /// A new run after each restart; probe results of an earlier run are ignored.
    generation: u64,
    startup: Option<ProbeState>,
    liveness: Option<ProbeState>,
    readiness: Option<ProbeState>,
    probes: Vec<tokio::task::JoinHandle<()>>,
    /// When it may start again (after a restart back-off).
    restart_at: Option<Instant>,
    status: ContainerStatus,
}

impl Drop for Running {
    fn drop(&mut self) {
        for p in &self.probes {
            p.abort();
        }
    }
}

/// A probe result from a probe task.
struct ProbeResult {
    container: usize,
    generation: u64,
    kind: ProbeKind,
    result: probe::CheckResult,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// How long after its `attempt`-th failure a pod's sandbox is tried again: 1 s, doubling, at
/// most 10 s (the kubelet retries on its next pod sync).
pub fn sandbox_retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.clamp(1, 5).saturating_sub(1)).min(Duration::from_secs(10))
}

/// The kubelet's restart back-off: 10 s, doubling, at most 5 minutes.
pub fn restart_delay(restarts: i32) -> Duration {
    let exp = (restarts.max(1) - 1).min(5) as u32;
    Duration::from_secs((10u64 << exp).min(300))
}

/// Everything one pod's task holds.
struct PodTask {
    inner: Arc<Inner>,
    pod: Pod,
    api: Api<Pod>,
    uid: String,
    dir: PathBuf,
    live: Arc<Mutex<PodLive>>,
    state: PodState,
    transitions: Transitions,
    written: Option<serde_json::Value>,
    /// When the status was last written or checked against the API server's copy.
    written_at: Instant,
    net: Option<PodNet>,
    cgroup: Option<Arc<PodCgroup>>,
}

impl PodTask {
    /// Now, as this pod writes it.
    fn now(&self) -> String {
        self.inner
            .pod_now(&self.pod.namespace().unwrap_or_default())
    }

    async fn write_status(&mut self) {
        let now = self.now();
        let status = status::render(&self.state, &mut self.transitions, &now);
        if self.written.as_ref() == Some(&status) {
            // As the kubelet's status manager does every 10 s: put back a status that someone
            // else changed (the node lifecycle controller marks pods NotReady when it loses
            // the node, and a kubelet that comes back makes them Ready again).
            if self.written_at.elapsed() < STATUS_RESYNC || self.api_agrees(&status).await {
                return;
            }
        }
        let ready = status::ready(&self.state);
        {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            if ready && !live.ready {
                self.inner.record(&self.uid, |r| {
                    r.ready.get_or_insert(unix_now());
                });
            }
            live.ready = ready;
        }
        match self
            .api
            .patch_status(
                &self.pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
        {
            Ok(_) => {
                self.written = Some(status);
                self.written_at = Instant::now();
            }
            Err(e) => {
                tracing::debug!(pod = %self.pod.name_any(), error = %e, "stand-in node: status not written");
                self.written = None
            }
        }
    }

    /// Whether the API server's copy of the pod has the conditions of `status` (and notes the
    /// time of the check). A failed read counts as agreement: the next resync asks again.
    async fn api_agrees(&mut self, status: &serde_json::Value) -> bool {
        self.written_at = Instant::now();
        let Ok(pod) = self.api.get(&self.pod.name_any()).await else {
            return true;
        };
        let agrees = status::conditions_agree(status, pod.status.as_ref());
        if !agrees {
            tracing::info!(pod = %self.pod.name_any(), "stand-in node: pod conditions changed by someone else; putting them back");
        }
        agrees
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        self.inner.event(&self.pod, type_, reason, note).await;
    }
}

async fn wait_stop(stop: &mut watch::Receiver<Stop>) -> Stop {
    loop {
        let s = *stop.borrow_and_update();
        if s != Stop::No {
            return s;
        }
        if stop.changed().await.is_err() {
            return Stop::Now;
        }
    }
}

/// Sleeps `d` unless told to stop first; the stop, if any.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<Stop>) -> Option<Stop> {
    tokio::select! {
        s = wait_stop(stop) => Some(s),
        _ = tokio::time::sleep(d) => None,
    }
}

async fn run_pod(
    inner: Arc<Inner>,
    pod: Pod,
    mut stop: watch::Receiver<Stop>,
    live: Arc<Mutex<PodLive>>,
) {
    let ns = pod.namespace().unwrap_or_default();
    let uid = pod.uid().unwrap_or_default();
    let dir = inner.dir.join(format!(
        "{ns}-{}-{}",
        pod.name_any(),
        &uid[..uid.len().min(8)]
    ));
    let mut t = PodTask {
        api: Api::namespaced(inner.client.clone(), &ns),
        dir,
        uid,
        live,
        state: PodState {
            host_ip: inner.network.gateway().to_string(),
            start_time: inner.pod_now(&ns),
            ..PodState::default()
        },
        transitions: Transitions::default(),
        written: None,
        written_at: Instant::now(),
        net: None,
        cgroup: None,
        inner,
        pod,
    };
    let outcome = run_pod_inner(&mut t, &mut stop).await;
    let how = match outcome {
        Some(s) => s,
        None => wait_stop(&mut stop).await,
    };
    finish(&mut t, how).await;
}

fn waiting(reason: &str, message: &str) -> CState {
    CState::Waiting {
        reason: reason.into(),
        message: message.into(),
    }
}

fn initial_status(c: &ContainerPlan, reason: &str) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        state: waiting(reason, ""),
        last: None,
        restarts: 0,
        ready: false,
        started: false,
    }
}

/// Runs the pod until it is told to stop (Some) or cannot run at all (None: it waits for its
/// deletion, its status saying why).
async fn run_pod_inner(t: &mut PodTask, stop: &mut watch::Receiver<Stop>) -> Option<Stop> {
    let spec = t.pod.spec.clone().unwrap_or_default();
    let names = |v: &Option<Vec<k8s_openapi::api::core::v1::Container>>| -> Vec<(String, String)> {
        v.iter()
            .flatten()
            .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
            .collect()
    };
    let placeholder = |(name, image): (String, String), reason: &str| ContainerStatus {
        name,
        image,
        state: waiting(reason, ""),
        last: None,
        restarts: 0,
        ready: false,
        started: false,
    };
    t.state.init = names(&spec.init_containers)
        .into_iter()
        .map(|n| placeholder(n, "PodInitializing"))
        .collect();
    t.state.containers = names(&Some(spec.containers.clone()))
        .into_iter()
        .map(|n| {
            placeholder(
                n,
                if t.state.init.is_empty() {
                    "ContainerCreating"
                } else {
                    "PodInitializing"
                },
            )
        })
        .collect();
    t.state.initialized = t.state.init.is_empty();
    t.write_status().await;

    let plan = match PodPlan::from_pod(&t.pod, &t.inner.config.images, &t.dir) {
        Ok(p) => p,
        Err(PlanError::UnknownImage(image)) => {
            // The kubelet's ErrImagePull, then ImagePullBackOff with a growing back-off.
            let msg = format!("Failed to pull image {image:?}: not known to the stand-in node");
            let mut attempt = 0;
            loop {
                let reason = if attempt == 0 {
                    "ErrImagePull"
                } else {
                    "ImagePullBackOff"
                };
                for c in t.state.containers.iter_mut().chain(t.state.init.iter_mut()) {
                    if c.image == image {
                        c.state = waiting(reason, &msg);
                    }
                }
                t.write_status().await;
                t.event(EventType::Warning, "Failed", msg.clone()).await;
                attempt += 1;
                if let Some(s) = sleep_or_stop(restart_delay(attempt), stop).await {
                    return Some(s);
                }
            }
        }
        Err(PlanError::Unsupported(msg)) => {
            for c in t.state.containers.iter_mut() {
                c.state = waiting("CreateContainerConfigError", &msg);
            }
            t.write_status().await;
            t.event(EventType::Warning, "Failed", msg).await;
            return None;
        }
    };
    {
        let mut live = t.live.lock().unwrap_or_else(|e| e.into_inner());
        live.container = plan
            .containers
            .first()
            .map(|c| c.name.clone())
            .unwrap_or_default();
    }

    // Image pull and container start.
    let images: Vec<&str> = plan.all().map(|c| c.image.as_str()).collect();
    t.event(
        EventType::Normal,
        "Pulled",
        format!(
            "Container image {:?} already present on machine",
            images.join(", ")
        ),
    )
    .await;
    if let Some(s) = sleep_or_stop(t.inner.config.start_delay, stop).await {
        return Some(s);
    }

    // Network, cgroup, volumes. A failed sandbox is tried again, as the kubelet does on its
    // next sync, rather than left Pending for good.
    let mut attempt = 0u32;
    let net = loop {
        match t.inner.network.add_pod() {
            Ok(n) => break n,
            Err(e) => {
                for c in t.state.containers.iter_mut() {
                    c.state = waiting("ContainerCreating", &format!("pod network: {e}"));
                }
                t.write_status().await;
                t.event(EventType::Warning, "FailedCreatePodSandBox", e.to_string())
                    .await;
                attempt += 1;
                if let Some(s) = sleep_or_stop(sandbox_retry_delay(attempt), stop).await {
                    return Some(s);
                }
            }
        }
    };
    t.state.pod_ip = Some(net.ip.to_string());
    let cg = match PodCgroup::create(
        &t.inner.hierarchy,
        &t.inner.config.name,
        &t.uid,
        plan.cpu_millis,
        plan.memory_bytes,
    ) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            t.net = Some(net);
            t.event(EventType::Warning, "FailedCreatePodSandBox", e.to_string())
                .await;
            return None;
        }
    };
    {
        let mut live = t.live.lock().unwrap_or_else(|e| e.into_inner());
        live.ip = Some(net.ip);
        live.cgroup = Some(cg.clone());
    }
    t.net = Some(net);
    t.cgroup = Some(cg);
    loop {
        match materialize_volumes(t, &plan).await {
            Ok(()) => break,
            Err(msg) => {
                for c in t.state.containers.iter_mut() {
                    c.state = waiting("ContainerCreating", &msg);
                }
                t.write_status().await;
                t.event(EventType::Warning, "FailedMount", msg).await;
                if let Some(s) = sleep_or_stop(Duration::from_secs(2), stop).await {
                    return Some(s);
                }
            }
        }
    }

    // Containers: init containers in order (sidecars keep running), then the app's.
    let (probe_tx, mut probe_rx) = mpsc::channel::<ProbeResult>(64);
    let mut runs: Vec<Running> = Vec::new();
    let all: Vec<ContainerPlan> = plan.all().cloned().collect();
    let n_init = plan.init.len();
    for (i, c) in all.iter().enumerate() {
        runs.push(Running {
            child: None,
            started_at: String::new(),
            generation: 0,
            startup: None,
            liveness: None,
            readiness: None,
            probes: Vec::new(),
            restart_at: None,
            status: initial_status(
                c,
                if i < n_init || n_init == 0 {
                    "ContainerCreating"
                } else {
                    "PodInitializing"
                },
            ),
        });
    }
    let mut next_init = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Start what is due: the next init container once the previous one completed (or,
        // for a sidecar, started); the app containers once every init container is done.
        while next_init < n_init {
            let i = next_init;
            let done = matches!(&runs[i].status.state, CState::Terminated(x) if x.exit_code == 0)
                || (all[i].sidecar && runs[i].status.started);
            if done {
                next_init += 1;
                continue;
            }
            if runs[i].child.is_none() && runs[i].restart_at.is_none_or(|at| at <= Instant::now()) {
                start_container(t, &all[i], &mut runs[i], i, &probe_tx).await;
            }
            break;
        }
        if next_init == n_init {
            t.state.initialized = true;
            // The app containers, and sidecars that died since.
            for i in 0..all.len() {
                let restartable = i >= n_init || all[i].sidecar;
                if restartable
                    && runs[i].child.is_none()
                    && runs[i].restart_at.is_none_or(|at| at <= Instant::now())
                {
                    start_container(t, &all[i], &mut runs[i], i, &probe_tx).await;
                }
            }
        }
        // Restart sidecars and app containers that died.
        for i in 0..all.len() {
            let exited = match runs[i].child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(status),
                Some(Err(_)) => None,
                _ => None,
            };
            if let Some(status) = exited {
                let code = status.code().unwrap_or_else(|| {
                    128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(9)
                });
                container_exited(
                    t,
                    &all[i],
                    &mut runs[i],
                    code,
                    i < n_init && !all[i].sidecar,
                )
                .await;
            }
        }
        t.state.init = runs[..n_init].iter().map(|r| r.status.clone()).collect();
        t.state.containers = runs[n_init..].iter().map(|r| r.status.clone()).collect();
        t.write_status().await;

        tokio::select! {
            s = wait_stop(stop) => {
                t.state.init = runs[..n_init].iter().map(|r| r.status.clone()).collect();
                t.state.containers = runs[n_init..].iter().map(|r| r.status.clone()).collect();
                terminate(t, &all, &mut runs, s).await;
                return Some(s);
            }
            Some(r) = probe_rx.recv() => {
                handle_probe(t, &all, &mut runs, r, &probe_tx).await;
            }
            _ = tick.tick() => {}
        }
    }
}

/// What a container's process sees: PATH, the pod's identity, the container's variables
/// resolved and `$(VAR)`-expanded.
async fn build_env(t: &PodTask, c: &ContainerPlan) -> Result<Vec<(String, String)>, String> {
    let mut path: Vec<String> = c.path.iter().map(|p| p.display().to_string()).collect();
    path.extend(["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(String::from));
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), path.join(":")),
        ("HOSTNAME".into(), t.pod.name_any()),
        ("HOME".into(), t.dir.display().to_string()),
        (
            "WSGISCALE_START_TERMINATION_LOG".into(),
            t.dir
                .join(format!("{}.termination-log", c.name))
                .display()
                .to_string(),
        ),
    ];
    let ns = t.pod.namespace().unwrap_or_default();
    let client = t.inner.client.clone();
    let get_data = |secret: bool, name: String| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            if secret {
                let api: Api<Secret> = Api::namespaced(client, &ns);
                api.get_opt(&name).await.map(|o| {
                    o.map(|s| {
                        s.data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                            .chain(s.string_data.unwrap_or_default())
                            .collect::<BTreeMap<String, String>>()
                    })
                })
            } else {
                let api: Api<ConfigMap> = Api::namespaced(client, &ns);
                api.get_opt(&name)
                    .await
                    .map(|o| o.map(|c| c.data.unwrap_or_default()))
            }
        }
    };
    for (k, v) in &c.env {
        let v = plan::expand_vars(v, &env);
        env.push((k.clone(), v));
    }
    for r in &c.env_refs {
        match r {
            EnvRef::Field { name, path } => {
                let v = field_value(t, path);
                env.push((name.clone(), v));
            }
            EnvRef::Resource {
                name,
                resource,
                divisor,
            } => {
                env.push((
                    name.clone(),
                    resource_value(&t.pod, &c.name, resource, divisor.as_deref()),
                ));
            }
            EnvRef::Key {
                name,
                secret,
                object,
                key,
                optional,
            } => match get_data(*secret, object.clone()).await {
                Ok(Some(data)) => match data.get(key) {
                    Some(v) => env.push((name.clone(), v.clone())),
                    None if *optional => {}
                    None => return Err(format!("couldn't find key {key} in {object}")),
                },
                Ok(None) if *optional => {}
                Ok(None) => return Err(format!("{object} not found")),
                Err(e) => return Err(e.to_string()),
            },
            EnvRef::All {
                secret,
                object,
                prefix,
                optional,
            } => match get_data(*secret, object.clone()).await {
                Ok(Some(data)) => {
                    for (k, v) in data {
                        env.push((format!("{prefix}{k}"), v));
                    }
                }
                Ok(None) if *optional => {}
                Ok(None) => return Err(format!("{object} not found")),
                Err(e) => return Err(e.to_string()),
            },
        }
    }
    Ok(env)
}

fn field_value(t: &PodTask, path: &str) -> String {
    let p = &t.pod;
    let label = |m: &BTreeMap<String, String>, key: &str| m.get(key).cloned().unwrap_or_default();
    match path {
        "metadata.name" => p.name_any(),
        "metadata.namespace" => p.namespace().unwrap_or_default(),
        "metadata.uid" => p.uid().unwrap_or_default(),
        "spec.nodeName" => t.inner.config.name.clone(),
        "spec.serviceAccountName" => p
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => t.state.pod_ip.clone().unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => t.state.host_ip.clone(),
        other => {
            if let Some(k) = other
                .strip_prefix("metadata.labels['")
                .and_then(|s| s.strip_suffix("']"))
            {
                label(p.labels(), k)
            } else if let Some(k) = other
                .strip_prefix("metadata.annotations['")
                .and_then(|s| s.strip_suffix("']"))
            {
                label(p.annotations(), k)
            } else {
                String::new()
            }
        }
    }
}

fn resource_value(pod: &Pod, container: &str, resource: &str, divisor: Option<&str>) -> String {
    let c = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == container));
    let (kind, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let q = c
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| match kind {
            "requests" => r.requests.as_ref(),
            _ => r.limits.as_ref(),
        });
    let q = q.and_then(|m| m.get(name)).map(|q| q.0.clone());
    if name == "cpu" {
        let millis = q.as_deref().and_then(plan::parse_cpu_millis).unwrap_or(
            std::thread::available_parallelism()
                .map(|n| n.get() as u64 * 1000)
                .unwrap_or(1000),
        );
        let d = divisor
            .and_then(plan::parse_cpu_millis)
            .unwrap_or(1000)
            .max(1);
        millis.div_ceil(d).to_string()
    } else {
        let bytes = q.as_deref().and_then(plan::parse_bytes).unwrap_or(0);
        let d = divisor.and_then(plan::parse_bytes).unwrap_or(1).max(1);
        bytes.div_ceil(d).to_string()
    }
}

/// Spawns `argv` inside the pod: its network namespace, its cgroup, `env` only.
fn spawn_in_pod(
    t: &PodTask,
    argv: &[String],
    env: &[(String, String)],
    workdir: &Path,
    log: Option<std::fs::File>,
) -> std::io::Result<tokio::process::Child> {
    let (Some(net), Some(cg)) = (&t.net, &t.cgroup) else {
        return Err(std::io::Error::other("the pod has no sandbox"));
    };
    // Join every hierarchy's cgroup, then become the program.
    let joins: Vec<String> = cg
        .procs_files()
        .iter()
        .map(|f| format!("echo $$ > '{}' || exit 126", f.display()))
        .collect();
    // The pod's open-file limit stays what the node had, however far the harness raised its own.
    let limit = crate::fdlimit::for_pods()
        .map(|n| format!("ulimit -n {n} || exit 126; "))
        .unwrap_or_default();
    let script = format!("{limit}{}; exec \"$@\"", joins.join("; "));
    let mut cmd = tokio::process::Command::new(&t.inner.nsenter);
    cmd.arg(format!("--net={}", net.ns_path().display()))
        .arg("--")
        .arg("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(argv)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(workdir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match log {
        Some(f) => {
            let f2 = f.try_clone()?;
            cmd.stdout(f).stderr(f2);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    cmd.spawn()
}

async fn start_container(
    t: &mut PodTask,
    c: &ContainerPlan,
    run: &mut Running,
    index: usize,
    probe_tx: &mpsc::Sender<ProbeResult>,
) {
    run.restart_at = None;
    let env = match build_env(t, c).await {
        Ok(e) => e,
        Err(msg) => {
            run.status.state = waiting("CreateContainerConfigError", &msg);
            run.restart_at = Some(Instant::now() + Duration::from_secs(2));
            return;
        }
    };
    let argv: Vec<String> = c.argv.iter().map(|a| plan::expand_vars(a, &env)).collect();
    let workdir = c.workdir.clone().unwrap_or_else(|| t.dir.clone());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(t.dir.join(format!("{}.log", c.name)))
        .ok();
    match spawn_in_pod(t, &argv, &env, &workdir, log) {
        Ok(child) => {
            run.child = Some(child);
            run.started_at = t.now();
            run.generation += 1;
            run.status.state = CState::Running {
                started_at: run.started_at.clone(),
            };
            run.status.ready = c.readiness.is_none();
            run.status.started = c.startup.is_none();
            run.startup = c.startup.as_ref().map(|_| ProbeState::new(false));
            run.liveness = None;
            run.readiness = None;
            for p in run.probes.drain(..) {
                p.abort();
            }
            t.inner.record(&t.uid, |r| {
                r.started.get_or_insert(unix_now());
            });
            match &c.startup {
                Some(spec) => run.probes.push(spawn_probe(
                    t,
                    spec,
                    index,
                    run.generation,
                    ProbeKind::Startup,
                    probe_tx,
                )),
                None => start_steady_probes(t, c, run, index, probe_tx),
            }
            t.event(
                EventType::Normal,
                "Started",
                format!("Started container {}", c.name),
            )
            .await;
        }
        Err(e) => {
            run.status.state = waiting("RunContainerError", &e.to_string());
            run.restart_at = Some(Instant::now() + restart_delay(run.status.restarts + 1));
            t.event(EventType::Warning, "Failed", format!("Error: {e}"))
                .await;
        }
    }
}

fn start_steady_probes(
    t: &PodTask,
    c: &ContainerPlan,
    run: &mut Running,
    index: usize,
    probe_tx: &mpsc::Sender<ProbeResult>,
) {
    run.status.started = true;
    if let Some(spec) = &c.liveness {
        run.liveness = Some(ProbeState::new(true));
        run.probes.push(spawn_probe(
            t,
            spec,
            index,
            run.generation,
            ProbeKind::Liveness,
            probe_tx,
        ));
    }
    if let Some(spec) = &c.readiness {
        run.readiness = Some(ProbeState::new(false));
        run.probes.push(spawn_probe(
            t,
            spec,
            index,
            run.generation,
            ProbeKind::Readiness,
            probe_tx,
        ));
    } else {
        run.status.ready = true;
    }
}

fn spawn_probe(
    t: &PodTask,
    spec: &ProbeSpec,
    container: usize,
    generation: u64,
    kind: ProbeKind,
    tx: &mpsc::Sender<ProbeResult>,
) -> tokio::task::JoinHandle<()> {
    let spec = spec.clone();
    let tx = tx.clone();
    let ip = t
        .net
        .as_ref()
        .map(|n| n.ip)
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    // An exec probe runs in the pod: the same sandbox the containers run in.
    let exec = match &spec.action {
        ProbeAction::Exec { argv } => Some((
            argv.clone(),
            t.inner.nsenter.clone(),
            t.net.as_ref().map(|n| n.ns_path()),
            t.cgroup.as_ref().map(|c| c.procs_files()),
            t.dir.clone(),
        )),
        _ => None,
    };
    tokio::spawn(async move {
        tokio::time::sleep(spec.initial_delay).await;
        loop {
            let result = match &exec {
                None => probe::check_network(&spec.action, ip, spec.timeout).await,
                Some((argv, nsenter, ns, procs, dir)) => {
                    run_exec_probe(
                        argv,
                        nsenter,
                        ns.as_deref(),
                        procs.as_deref(),
                        dir,
                        spec.timeout,
                    )
                    .await
                }
            };
            if tx
                .send(ProbeResult {
                    container,
                    generation,
                    kind,
                    result,
                })
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(spec.period).await;
        }
    })
}

async fn run_exec_probe(
    argv: &[String],
    nsenter: &Path,
    ns: Option<&Path>,
    procs: Option<&[PathBuf]>,
    dir: &Path,
    timeout: Duration,
) -> probe::CheckResult {
    let (Some(ns), Some(procs)) = (ns, procs) else {
        return Err("no sandbox".into());
    };
    let joins: Vec<String> = procs
        .iter()
        .map(|f| format!("echo $$ > '{}' || exit 126", f.display()))
        .collect();
    let mut cmd = tokio::process::Command::new(nsenter);
    cmd.arg(format!("--net={}", ns.display()))
        .arg("--")
        .arg("/bin/sh")
        .arg("-c")
        .arg(format!("{}; exec \"$@\"", joins.join("; ")))
        .arg("sh")
        .args(argv)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.status()).await {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!("command exited with {s}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
    }
}

async fn handle_probe(
    t: &mut PodTask,
    all: &[ContainerPlan],
    runs: &mut [Running],
    r: ProbeResult,
    probe_tx: &mpsc::Sender<ProbeResult>,
) {
    let c = &all[r.container];
    let run = &mut runs[r.container];
    if r.generation != run.generation || run.child.is_none() {
        return;
    }
    let ok = r.result.is_ok();
    if let Err(msg) = &r.result {
        t.event(
            EventType::Warning,
            "Unhealthy",
            format!("{} probe failed: {msg}", r.kind.name()),
        )
        .await;
    }
    match r.kind {
        ProbeKind::Startup => {
            let (Some(spec), Some(state)) = (&c.startup, run.startup.as_mut()) else {
                return;
            };
            state.observe(spec, ok);
            if state.passing {
                for p in run.probes.drain(..) {
                    p.abort();
                }
                start_steady_probes(t, c, run, r.container, probe_tx);
            } else if state.failures() >= spec.failure_threshold {
                t.event(
                    EventType::Normal,
                    "Killing",
                    format!(
                        "Container {} failed startup probe, will be restarted",
                        c.name
                    ),
                )
                .await;
                kill_container(run, c.name.as_str(), Duration::from_secs(2)).await;
            }
        }
        ProbeKind::Liveness => {
            let (Some(spec), Some(state)) = (&c.liveness, run.liveness.as_mut()) else {
                return;
            };
            if state.observe(spec, ok) && !state.passing {
                t.event(
                    EventType::Normal,
                    "Killing",
                    format!(
                        "Container {} failed liveness probe, will be restarted",
                        c.name
                    ),
                )
                .await;
                kill_container(run, c.name.as_str(), Duration::from_secs(2)).await;
            }
        }
        ProbeKind::Readiness => {
            let (Some(spec), Some(state)) = (&c.readiness, run.readiness.as_mut()) else {
                return;
            };
            state.observe(spec, ok);
            run.status.ready = state.passing;
        }
    }
}

/// SIGTERM to the container's process, SIGKILL after `grace`; the exit is handled by the
/// loop's `try_wait`.
async fn kill_container(run: &mut Running, _name: &str, grace: Duration) {
    if let Some(child) = run.child.as_mut() {
        if let Some(pid) = child.id() {
            signal(pid, "TERM");
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                let _ = child.start_kill();
            }
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

async fn container_exited(
    t: &mut PodTask,
    c: &ContainerPlan,
    run: &mut Running,
    code: i32,
    run_to_completion: bool,
) {
    run.child = None;
    for p in run.probes.drain(..) {
        p.abort();
    }
    let message = termination_message(t, c, code);
    let ended = Terminated {
        exit_code: code,
        reason: if code == 0 {
            "Completed".into()
        } else {
            "Error".into()
        },
        message,
        started_at: run.started_at.clone(),
        finished_at: t.now(),
    };
    run.status.ready = false;
    run.status.started = false;
    if run_to_completion && code == 0 {
        run.status.state = CState::Terminated(ended);
        return;
    }
    // restartPolicy Always (what Deployments use): back off, then start again.
    run.status.restarts += 1;
    let delay = restart_delay(run.status.restarts);
    run.restart_at = Some(Instant::now() + delay);
    run.status.last = Some(ended);
    run.status.state = waiting(
        "CrashLoopBackOff",
        &format!(
            "back-off {}s restarting failed container={} pod={}",
            delay.as_secs(),
            c.name,
            t.pod.name_any()
        ),
    );
    t.event(
        EventType::Warning,
        "BackOff",
        format!(
            "Back-off restarting failed container {} in pod {}",
            c.name,
            t.pod.name_any()
        ),
    )
    .await;
}

fn termination_message(t: &PodTask, c: &ContainerPlan, code: i32) -> String {
    let file = t.dir.join(format!("{}.termination-log", c.name));
    if let Ok(text) = std::fs::read_to_string(&file) {
        let _ = std::fs::remove_file(&file);
        if !text.trim().is_empty() {
            return text.chars().take(4096).collect();
        }
    }
    if c.fallback_to_logs && code != 0 {
        let log =
            std::fs::read_to_string(t.dir.join(format!("{}.log", c.name))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let start = tail.len().saturating_sub(2048);
        return tail[tail
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| i >= start)
            .unwrap_or(0)..]
            .to_string();
    }
    String::new()
}

async fn materialize_volumes(t: &PodTask, plan: &PodPlan) -> Result<(), String> {
    let ns = t.pod.namespace().unwrap_or_default();
    for (name, source) in &plan.volumes {
        let dir = plan::volume_dir(&t.dir, name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let write = |file: &str, data: &[u8]| -> Result<(), String> {
            let path = dir.join(file);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&path, data).map_err(|e| format!("{}: {e}", path.display()))
        };
        match source {
            VolumeSource::EmptyDir => {}
            VolumeSource::ConfigMap { name: cm, optional } => {
                let api: Api<ConfigMap> = Api::namespaced(t.inner.client.clone(), &ns);
                match api.get_opt(cm).await.map_err(|e| e.to_string())? {
                    Some(c) => {
                        for (k, v) in c.data.unwrap_or_default() {
                            write(&k, v.as_bytes())?;
                        }
                        for (k, v) in c.binary_data.unwrap_or_default() {
                            write(&k, &v.0)?;
                        }
                    }
                    None if *optional => {}
                    None => {
                        return Err(format!(
                        "MountVolume.SetUp failed for volume {name:?} : configmap {cm:?} not found"
                    ))
                    }
                }
            }
            VolumeSource::Secret { name: s, optional } => {
                let api: Api<Secret> = Api::namespaced(t.inner.client.clone(), &ns);
                match api.get_opt(s).await.map_err(|e| e.to_string())? {
                    Some(sec) => {
                        for (k, v) in sec.data.unwrap_or_default() {
                            write(&k, &v.0)?;
                        }
                    }
                    None if *optional => {}
                    None => {
                        return Err(format!(
                            "MountVolume.SetUp failed for volume {name:?} : secret {s:?} not found"
                        ))
                    }
                }
            }
            VolumeSource::Image { reference } => {
                let image = t
                    .inner
                    .config
                    .images
                    .get(reference)
                    .cloned()
                    .unwrap_or_default();
                for (path, host) in image.files {
                    let link = dir.join(path.trim_start_matches('/'));
                    if let Some(parent) = link.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                    }
                    let _ = std::fs::remove_file(&link);
                    std::os::unix::fs::symlink(&host, &link)
                        .map_err(|e| format!("{}: {e}", link.display()))?;
                }
            }
            VolumeSource::DownwardApi { items } => {
                for (file, field) in items {
                    write(file, downward_value(t, field).as_bytes())?;
                }
            }
            VolumeSource::Projected(sources) => {
                for src in sources {
                    match src {
                        Projection::Token { path, expiration } => {
                            let token = request_token(t, *expiration).await?;
                            write(path, token.as_bytes())?;
                        }
                        Projection::ConfigMap {
                            name: cm,
                            items,
                            optional,
                        } => {
                            let api: Api<ConfigMap> = Api::namespaced(t.inner.client.clone(), &ns);
                            match api.get_opt(cm).await.map_err(|e| e.to_string())? {
                                Some(c) => {
                                    let data = c.data.unwrap_or_default();
                                    if items.is_empty() {
                                        for (k, v) in &data {
                                            write(k, v.as_bytes())?;
                                        }
                                    }
                                    for (key, path) in items {
                                        match data.get(key) {
                                            Some(v) => write(path, v.as_bytes())?,
                                            None if *optional => {}
                                            None => return Err(format!("configmap {cm:?} has no key {key:?}")),
                                        }
                                    }
                                }
                                None if *optional => {}
                                None => {
                                    return Err(format!(
                                        "MountVolume.SetUp failed for volume {name:?} : configmap {cm:?} not found"
                                    ))
                                }
                            }
                        }
                        Projection::DownwardApi(items) => {
                            for (file, field) in items {
                                write(file, downward_value(t, field).as_bytes())?;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn downward_value(t: &PodTask, field: &str) -> String {
    let pairs = |m: &BTreeMap<String, String>| -> String {
        m.iter().map(|(k, v)| format!("{k}=\"{v}\"\n")).collect()
    };
    match field {
        "metadata.labels" => pairs(t.pod.labels()),
        "metadata.annotations" => pairs(t.pod.annotations()),
        other => field_value(t, other),
    }
}

/// A token for the pod's service account, bound to the pod, from the TokenRequest API.
async fn request_token(t: &PodTask, expiration: i64) -> Result<String, String> {
    let ns = t.pod.namespace().unwrap_or_default();
    let sa = t
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(t.inner.client.clone(), &ns);
    let req = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": expiration.max(600),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": t.pod.name_any(), "uid": t.uid},
        },
    });
    let resp: serde_json::Value = api
        .create_subresource("token", &sa, &PostParams::default(), &req)
        .await
        .map_err(|e| format!("token for service account {sa:?}: {e}"))?;
    Ok(resp["status"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Stops the pod's containers: at once, or as the kubelet does on a graceful deletion
/// (preStop hooks, SIGTERM, the grace period, then SIGKILL).
async fn terminate(t: &mut PodTask, all: &[ContainerPlan], runs: &mut [Running], how: Stop) {
    t.inner.record(&t.uid, |r| {
        r.deleting.get_or_insert(unix_now());
    });
    {
        let mut live = t.live.lock().unwrap_or_else(|e| e.into_inner());
        live.terminating = true;
    }
    for r in runs.iter_mut() {
        for p in r.probes.drain(..) {
            p.abort();
        }
    }
    if how == Stop::Graceful {
        let deadline = Instant::now()
            + t.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .map_or(Duration::from_secs(30), |g| {
                    Duration::from_secs(g.max(0) as u64)
                });
        // The deletion's own grace period, when it is shorter.
        let deadline = match t.pod.metadata.deletion_grace_period_seconds {
            Some(g) => deadline.min(Instant::now() + Duration::from_secs(g.max(0) as u64)),
            None => deadline,
        };
        let names: Vec<String> = all.iter().map(|c| c.name.clone()).collect();
        t.event(
            EventType::Normal,
            "Killing",
            format!("Stopping container {}", names.join(", ")),
        )
        .await;
        // preStop hooks, all at once, within the grace period.
        let hooks = all
            .iter()
            .zip(runs.iter())
            .filter(|(_, r)| r.child.is_some())
            .filter_map(|(c, _)| c.pre_stop.clone());
        let mut pending = Vec::new();
        for hook in hooks {
            let ip = t
                .net
                .as_ref()
                .map(|n| n.ip)
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            let exec = (
                t.inner.nsenter.clone(),
                t.net.as_ref().map(|n| n.ns_path()),
                t.cgroup.as_ref().map(|c| c.procs_files()),
                t.dir.clone(),
            );
            pending.push(async move {
                match hook {
                    PreStop::Sleep(d) => tokio::time::sleep(d).await,
                    PreStop::HttpGet { port, path } => {
                        let _ = probe::http_get(ip, port, &path).await;
                    }
                    PreStop::Exec(argv) => {
                        let (nsenter, ns, procs, dir) = exec;
                        let _ = run_exec_probe(
                            &argv,
                            &nsenter,
                            ns.as_deref(),
                            procs.as_deref(),
                            &dir,
                            Duration::from_secs(3600),
                        )
                        .await;
                    }
                }
            });
        }
        let _ = tokio::time::timeout_at(deadline.into(), futures::future::join_all(pending)).await;
        for r in runs.iter() {
            if let Some(pid) = r.child.as_ref().and_then(|c| c.id()) {
                signal(pid, "TERM");
            }
        }
        for r in runs.iter_mut() {
            if let Some(child) = r.child.as_mut() {
                let _ = tokio::time::timeout_at(deadline.into(), child.wait()).await;
            }
        }
    }
    for r in runs.iter_mut() {
        if let Some(mut child) = r.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

/// Releases what the pod held and confirms its deletion to the API server.
async fn finish(t: &mut PodTask, how: Stop) {
    if let Some(cg) = t.cgroup.take() {
        let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
    }
    {
        let mut live = t.live.lock().unwrap_or_else(|e| e.into_inner());
        live.cgroup = None;
        live.ready = false;
        live.terminating = true;
        live.gone = true;
    }
    if let Some(net) = t.net.take() {
        t.inner.network.remove_pod(net);
    }
    let _ = std::fs::remove_dir_all(&t.dir);
    t.inner.record(&t.uid, |r| {
        r.deleting.get_or_insert(unix_now());
        r.gone = Some(unix_now());
    });
    if how != Stop::No {
        let _ = t.api.delete(&t.pod.name_any(), &final_delete(&t.uid)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_sandbox_is_retried_within_ten_seconds() {
        let d: Vec<u64> = (1..=6).map(|n| sandbox_retry_delay(n).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn back_off_doubles_to_five_minutes() {
        let d: Vec<u64> = (1..=8).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(d, [10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn binds_only_what_it_may() {
        let labels = BTreeMap::from([("kubernetes.io/hostname".to_string(), "n1".to_string())]);
        let pod = |v: serde_json::Value| -> Pod { serde_json::from_value(v).expect("pod") };
        assert!(bindable(
            &pod(json!({"metadata": {"name": "a"}, "spec": {"containers": []}})),
            &labels
        ));
        assert!(!bindable(
            &pod(
                json!({"metadata": {"name": "a"}, "spec": {"containers": [], "nodeName": "other"}})
            ),
            &labels
        ));
        assert!(!bindable(
            &pod(
                json!({"metadata": {"name": "a"}, "spec": {"containers": [], "nodeSelector": {"x": "y"}}})
            ),
            &labels
        ));
        assert!(bindable(
            &pod(
                json!({"metadata": {"name": "a"}, "spec": {"containers": [], "nodeSelector": {"kubernetes.io/hostname": "n1"}}})
            ),
            &labels
        ));
        assert!(!bindable(
            &pod(
                json!({"metadata": {"name": "a"}, "spec": {"containers": [], "schedulerName": "other"}})
            ),
            &labels
        ));
    }
}
