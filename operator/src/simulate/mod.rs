//! `wsgiscale-operator simulate`: replays a load trace through a model of the pods and the
//! pod autoscaler, and reports cost (worker-seconds), queue waits and scale events.
//!
//! What is real and what is modelled:
//!
//! * **Real**: each pod's worker count is decided by the server's own algorithm and driver
//!   (`wsgiscale_core::scaling::{Cheaper, drive}`) once a second, its load report by the
//!   server's own tracker (`wsgiscale_core::loadtrack`), and the pod count by the operator's
//!   own decision ([`crate::autoscale::compute_tick`] and [`crate::autoscale::decide`]) on
//!   those reports. The policy file is validated by the operator's own
//!   [`crate::validate::validate_app`], so its keys and defaults are the CRD's.
//! * **Modelled**: Poisson arrivals (seeded, so every run is the same), exponential service
//!   times, round-robin load balancing over the ready pods (kube-proxy), a FIFO queue per pod
//!   bounded by `maxQueue`, a fork delay before a new worker serves, a start-up delay before a
//!   new pod is ready, and pods removed from the Service at once when scaled down (they finish
//!   their queue first and cost workers until then).
//!
//! [`PolicyKind::Hpa`] and [`PolicyKind::Knative`] replace the operator's decision with models
//! of the peers ([`baselines`]) and run every pod at workers.max.
//!
//! [`PolicyKind::WsgiscaleActivator`] adds the activator ([`activator`]): where traffic goes
//! is the operator's real [`crate::activation::decide_path`], evaluated at every autoscaler
//! tick (and at once when a request arrives with no ready pod); while the activator is in the
//! path, requests wait in its one FIFO and go, oldest first, to the ready pod with the most
//! free slots, one hop ([`activator::HOP_SECONDS`]) later; held requests count as demand in
//! the next tick, and with no ready pod the activator's push starts pods at once.
//! [`PolicyKind::WsgiscaleActivatorZero`] also lets the app go to zero pods when the real
//! [`crate::activation::may_scale_to_zero`] says so.

pub mod activator;
pub mod baselines;
pub mod model;
pub mod plot;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use wsgiscale_core::config::{Algorithm, ScalingConfig, WorkerLimits};

use wsgiscale_core::activator::HoldLimits;

use crate::activation::{decide_path, may_scale_to_zero, PathInputs, PathState, Route};
use crate::autoscale::{
    self, compute_tick, held_arrivals, pick_sample, PodLoad, PodSample, Samples, SplitMix64,
};
use crate::crd::{AutoscalingSpec, ReplicasSpec, WorkersSpec, WsgiApp, WsgiAppSpec};
use crate::validate::validate_app;
use activator::{compute_push_replicas, Activator, ActivatorConfig, Held};
use baselines::{HpaLike, KnativeLike};
use model::{Pod, ServerModel, Started};
pub use wsgiscale_core::trace::Trace;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The trace is malformed.
    #[error(transparent)]
    Trace(#[from] wsgiscale_core::trace::TraceError),
    /// The policy file is malformed or breaks the CRD's rules.
    #[error("policy: {0}")]
    Policy(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Drawing the plot failed.
    #[error("plot {path}: {reason}")]
    Plot {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// Which pod autoscaler drives the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// The operator's own decision, with the server's adaptive workers in each pod.
    Wsgiscale,
    /// An HPA on CPU-like utilization, pods at workers.max.
    Hpa,
    /// A Knative-style autoscaler on concurrency, pods at workers.max.
    Knative,
    /// As `wsgiscale`, with the activator in the path below the burst target (the policy
    /// file's `activator` block).
    #[value(name = "wsgiscale+activator")]
    #[serde(rename = "wsgiscale+activator")]
    WsgiscaleActivator,
    /// As `wsgiscale+activator`, and the app goes to zero pods after
    /// `activator.scaleToZeroIdleSeconds` without a request.
    #[value(name = "wsgiscale+activator+zero")]
    #[serde(rename = "wsgiscale+activator+zero")]
    WsgiscaleActivatorZero,
}

impl PolicyKind {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Wsgiscale => "wsgiscale",
            PolicyKind::Hpa => "hpa",
            PolicyKind::Knative => "knative",
            PolicyKind::WsgiscaleActivator => "wsgiscale+activator",
            PolicyKind::WsgiscaleActivatorZero => "wsgiscale+activator+zero",
        }
    }

    /// True when the activator is modelled.
    pub fn has_activator(self) -> bool {
        matches!(
            self,
            PolicyKind::WsgiscaleActivator | PolicyKind::WsgiscaleActivatorZero
        )
    }
}

/// The policy file's `activator` block (used by the `wsgiscale+activator*` kinds).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActivatorFile {
    /// The burst target: spare capacity, in requests, the ready pods must have for the
    /// activator to leave the path (0: only at zero pods; negative: always). Default: one
    /// pod's capacity (workers.max x threads).
    #[serde(default)]
    pub burst_capacity: Option<f64>,
    /// Seconds the pods must cover the burst target before the activator leaves the path.
    /// Default: half the stable window (the autoscaler's own scale-down hysteresis).
    #[serde(default)]
    pub settle_seconds: Option<f64>,
    /// Seconds without a request before `wsgiscale+activator+zero` may go to zero pods.
    /// Default: the stable window (Knative: the last pod goes after a stable window idle).
    #[serde(default)]
    pub scale_to_zero_idle_seconds: Option<f64>,
    /// Requests held at once; past it, 503. Default: the activator's (1000).
    #[serde(default)]
    pub max_requests: Option<u32>,
    /// Seconds a request may wait at the activator; past it, 503. Default: the activator's
    /// (60).
    #[serde(default)]
    pub max_wait_seconds: Option<f64>,
}

/// The policy file: the CRD's `autoscaling`, `replicas` and `workers` blocks (same keys, same
/// defaults, same validation) and what a cluster would decide (start-up delays, the seed).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyFile {
    /// As `spec.autoscaling` (`enabled` is implied).
    #[serde(default)]
    pub autoscaling: Option<AutoscalingSpec>,
    /// As `spec.replicas`. Default here: min 1, max 20.
    #[serde(default)]
    pub replicas: Option<ReplicasSpec>,
    /// As `spec.workers`. Default here: min 1, max 4, spare2 (spare, the CRD's default, grows
    /// one worker per three overloaded seconds: too slow for the traces' steps).
    #[serde(default)]
    pub workers: Option<WorkersSpec>,
    /// Seconds from a pod's creation to ready (image, container, Python import). Default 10.
    #[serde(default)]
    pub pod_startup_seconds: Option<f64>,
    /// Seconds from a worker's fork to ready (preloaded app: short). Default 1.
    #[serde(default)]
    pub worker_startup_seconds: Option<f64>,
    /// Pods at the start. Default: replicas.min.
    #[serde(default)]
    pub initial_replicas: Option<u32>,
    /// Requests a pod queues before refusing (503). Default 1024.
    #[serde(default)]
    pub max_queue: Option<u32>,
    /// Seed of the arrivals and service times. Default 1.
    #[serde(default)]
    pub seed: Option<u64>,
    /// The activator (only the `wsgiscale+activator*` kinds use it).
    #[serde(default)]
    pub activator: Option<ActivatorFile>,
}

/// Everything a run needs, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// The operator's policy (also the bounds and the target of the baselines).
    pub policy: autoscale::Policy,
    /// The server in each pod under the wsgiscale policy.
    pub server: ServerModel,
    /// Seconds from creation to ready.
    pub pod_startup: f64,
    /// Pods at the start.
    pub initial_replicas: u32,
    /// Seed.
    pub seed: u64,
    /// The activator of the `wsgiscale+activator*` kinds (`scale_to_zero_idle` is the idle
    /// period of `wsgiscale+activator+zero`; the other kind never goes to zero).
    pub activator: ActivatorConfig,
}

impl SimConfig {
    /// Parses and validates a policy file (empty text: all defaults).
    pub fn from_yaml(text: &str) -> Result<SimConfig, SimError> {
        let file: PolicyFile = if text.trim().is_empty() {
            PolicyFile::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| SimError::Policy(e.to_string()))?
        };
        SimConfig::from_file(&file)
    }

    /// Resolves a policy file through the CRD's validation.
    pub fn from_file(file: &PolicyFile) -> Result<SimConfig, SimError> {
        let mut autoscaling = file.autoscaling.clone().unwrap_or_default();
        autoscaling.enabled = Some(true);
        let mut replicas = file.replicas.clone().unwrap_or_default();
        replicas.min.get_or_insert(1);
        replicas.max.get_or_insert(20);
        let mut workers = file.workers.clone().unwrap_or_default();
        workers.min.get_or_insert(1);
        workers.max.get_or_insert(4);
        workers
            .algorithm
            .get_or_insert(crate::crd::Algorithm::Spare2);
        let app = WsgiApp {
            metadata: ObjectMeta {
                name: Some("sim".into()),
                namespace: Some("sim".into()),
                uid: Some("sim".into()),
                ..ObjectMeta::default()
            },
            spec: WsgiAppSpec {
                image: "sim".into(),
                app: "sim:application".into(),
                autoscaling: Some(autoscaling),
                replicas: Some(replicas),
                workers: Some(workers),
                ..WsgiAppSpec::default()
            },
            status: None,
        };
        let v = validate_app(&app).map_err(|e| SimError::Policy(e.to_string()))?;
        let w = &v.workers;
        let scaling = ScalingConfig {
            algo: w.algorithm,
            step: w.step,
            overload: w.overload_checks,
            idle: w.idle_checks,
            backlog: w.backlog,
            busyness_min: w.busyness_min_percent,
            busyness_max: w.busyness_max_percent,
            busyness_multiplier: w.busyness_multiplier,
            busyness_penalty: w.busyness_penalty,
            busyness_backlog: w.busyness_backlog,
        };
        let secs = |name: &str, v: Option<f64>, d: f64| -> Result<f64, SimError> {
            let x = v.unwrap_or(d);
            if x.is_finite() && (0.0..=3600.0).contains(&x) {
                Ok(x)
            } else {
                Err(SimError::Policy(format!("{name} must be within 0..3600")))
            }
        };
        let pod_startup = secs("podStartupSeconds", file.pod_startup_seconds, 10.0)?;
        let mut policy = autoscale::Policy::from_app(&v);
        policy.startup_period = Duration::from_secs_f64(pod_startup.max(1.0) * 3.0);
        let server = ServerModel {
            scaling,
            limits: WorkerLimits {
                min: w.min,
                max: w.max,
                initial: w.initial,
            },
            threads: w.threads,
            worker_startup: secs("workerStartupSeconds", file.worker_startup_seconds, 1.0)?,
            max_queue: file.max_queue.unwrap_or(1024).max(1),
        };
        let a = file.activator.clone().unwrap_or_default();
        let defaults = HoldLimits::default();
        let max_wait = secs(
            "activator.maxWaitSeconds",
            a.max_wait_seconds,
            defaults.max_wait_ms as f64 / 1000.0,
        )?;
        let burst_capacity = a.burst_capacity.unwrap_or(policy.pod_capacity);
        if !burst_capacity.is_finite() {
            return Err(SimError::Policy(
                "activator.burstCapacity must be a number".into(),
            ));
        }
        let activator = ActivatorConfig {
            burst_capacity,
            settle: Duration::from_secs_f64(secs(
                "activator.settleSeconds",
                a.settle_seconds,
                policy.stable_window.as_secs_f64() / 2.0,
            )?),
            scale_to_zero_idle: Some(Duration::from_secs_f64(secs(
                "activator.scaleToZeroIdleSeconds",
                a.scale_to_zero_idle_seconds,
                policy.stable_window.as_secs_f64(),
            )?)),
            hold: HoldLimits {
                max_requests: a.max_requests.unwrap_or(defaults.max_requests).max(1),
                max_wait_ms: (max_wait * 1000.0).round() as u64,
                ..defaults
            },
        };
        Ok(SimConfig {
            initial_replicas: policy.clamp(file.initial_replicas.unwrap_or(policy.min_replicas)),
            policy,
            server,
            pod_startup,
            seed: file.seed.unwrap_or(1),
            activator,
        })
    }
}

/// The one-line summary (`--json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Which autoscaler.
    pub policy: PolicyKind,
    /// Simulated seconds.
    pub duration_seconds: f64,
    /// Requests that arrived.
    pub requests: u64,
    /// Requests refused: queue full, or no ready pod.
    pub rejected: u64,
    /// Most replicas at once.
    pub max_replicas: u32,
    /// Replicas at the end.
    pub final_replicas: u32,
    /// Changes of the replica count.
    pub scale_events: u32,
    /// Mean wait in a queue before a worker took the request, ms.
    pub mean_queue_wait_ms: f64,
    /// Median wait, ms.
    pub p50_queue_wait_ms: f64,
    /// 99th percentile of the wait, ms.
    pub p99_queue_wait_ms: f64,
    /// Longest wait, ms.
    pub max_queue_wait_ms: f64,
    /// Worker processes alive, integrated over time (the cost).
    pub worker_seconds: f64,
    /// Pods alive (creation to gone), integrated over time.
    pub pod_seconds: f64,
    /// The activator's figures (the `wsgiscale+activator*` kinds only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activator: Option<ActivatorSummary>,
}

/// What the activator did in a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActivatorSummary {
    /// The burst target, requests.
    pub burst_capacity: f64,
    /// Seconds the pods must cover it before the activator leaves the path.
    pub settle_seconds: f64,
    /// The idle period before zero pods, when scale to zero is on.
    pub scale_to_zero_idle_seconds: Option<f64>,
    /// The hold limit in requests.
    pub hold_max_requests: u32,
    /// The hold limit in seconds.
    pub hold_max_wait_seconds: f64,
    /// Requests handed to a pod.
    pub forwarded: u64,
    /// Requests refused because the activator held its maximum.
    pub refused_full: u64,
    /// Requests refused at their deadline.
    pub refused_deadline: u64,
    /// Most requests held at once.
    pub max_held: u32,
    /// Seconds with the activator in the path.
    pub seconds_in_path: f64,
    /// Changes of the path (pods <-> activator).
    pub route_changes: u32,
    /// Scale-ups from zero pods.
    pub cold_starts: u32,
    /// The wait of the first request of each cold start, ms (null: refused).
    pub cold_start_first_wait_ms: Vec<Option<f64>>,
}

/// One second of the run, for the plot.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Point {
    /// Seconds since the start.
    pub t: f64,
    /// Requests that arrived in this second.
    pub arrivals: u32,
    /// The replica count.
    pub replicas: u32,
    /// Ready pods.
    pub ready: u32,
    /// Live workers in all pods.
    pub workers: u32,
    /// Requests queued in all pods.
    pub queue: u32,
    /// Longest wait of the requests started in this second, ms.
    pub wait_ms: f64,
    /// Requests held at the activator.
    pub held: u32,
    /// The activator is in the path.
    pub activator: bool,
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The numbers.
    pub summary: Summary,
    /// One point per second.
    pub series: Vec<Point>,
    /// Every change of the replica count: (time, from, to, reason).
    pub events: Vec<(f64, u32, u32, String)>,
    /// Per request (by number): 1 when a worker took it or it was refused, 0 when it was
    /// still waiting at the end. Anything else would be a bug in the model.
    pub fates: Vec<u8>,
    /// Requests still waiting (at the activator or in a pod's queue) at the end.
    pub unfinished: u64,
    /// The requests that left the activator (to a pod, or refused at their deadline), in
    /// the order they left.
    pub left_activator: Vec<u64>,
}

/// The decision that drives the replicas.
enum Scaler {
    Wsgiscale {
        samples: Samples,
        state: autoscale::State,
    },
    Hpa(HpaLike),
    Knative(KnativeLike),
}

/// One request of the trace.
#[derive(Debug, Clone, Copy)]
struct Request {
    id: u64,
    at: f64,
    service: f64,
}

/// A scale-up from zero pods and the wait of its first request (seconds; `None` while it
/// waits or when it was refused).
#[derive(Debug, Clone, Copy)]
struct ColdStart {
    first: u64,
    wait: Option<f64>,
}

/// What changes during a run: the pods, the activator, the counters.
struct Sim {
    policy: autoscale::Policy,
    server: ServerModel,
    pod_startup: f64,
    pods: Vec<Pod>,
    /// Pods out of the Service that still finish their queue.
    gone: Vec<Pod>,
    started: Vec<Started>,
    fates: Vec<u8>,
    rejected: u64,
    events: Vec<(f64, u32, u32, String)>,
    replicas: u32,
    max_replicas: u32,
    rr: usize,
    act: Option<Activator>,
    cold: Vec<ColdStart>,
    left_activator: Vec<u64>,
    route_changes: u32,
}

impl Sim {
    /// Request `id` is refused (503).
    fn refuse(&mut self, id: u64) {
        self.rejected += 1;
        self.fates[id as usize] += 1;
    }

    /// A request on the pods' path: kube-proxy's choice (round robin) among the ready pods.
    fn send_to_pods(&mut self, r: Request) {
        let ready: Vec<usize> = (0..self.pods.len())
            .filter(|&i| self.pods[i].is_ready(r.at))
            .collect();
        if ready.is_empty() {
            self.refuse(r.id);
            return;
        }
        self.rr = self.rr.wrapping_add(1);
        let i = ready[self.rr % ready.len()];
        if !self.pods[i].offer(r.id, r.at, r.service) {
            self.refuse(r.id);
        }
    }

    /// Every pod (in the Service or draining) advanced to `t`.
    fn advance_all(&mut self, t: f64) {
        let before = self.started.len();
        for pod in self.pods.iter_mut().chain(self.gone.iter_mut()) {
            pod.advance(t, &mut self.started);
        }
        for s in &self.started[before..] {
            self.fates[s.id as usize] += 1;
            for c in self.cold.iter_mut().filter(|c| c.first == s.id) {
                c.wait = Some(f64::from(s.wait));
            }
        }
    }

    /// The activator at `t`: the pods advanced to `t`, the held requests past their deadline
    /// refused, then the oldest held requests handed to the freest ready pods, one hop away.
    fn settle(&mut self, t: f64) {
        self.advance_all(t);
        let Some(act) = self.act.as_mut() else {
            return;
        };
        let expired = act.expire(t);
        let ready: Vec<usize> = (0..self.pods.len())
            .filter(|&i| self.pods[i].is_ready(t))
            .collect();
        let mut assigned = Vec::new();
        if act.held() > 0 && !ready.is_empty() {
            let slots = (self.policy.pod_capacity.round() as u32).max(1);
            let mut free: Vec<u32> = ready
                .iter()
                .map(|&i| slots.saturating_sub(self.pods[i].activator_in_flight(t)))
                .collect();
            assigned = act.assign(&mut free);
        }
        for h in expired {
            self.left_activator.push(h.id);
            self.refuse(h.id);
        }
        for (h, k) in assigned {
            self.left_activator.push(h.id);
            let pod = &mut self.pods[ready[k]];
            if !pod.forward(h.id, h.arrival, t + activator::HOP_SECONDS, h.service) {
                self.refuse(h.id);
            }
        }
    }

    /// After [`Sim::settle`] at `t`, while requests are held: the next time something can
    /// let one go (a deadline, a pod becoming ready, one of the activator's requests
    /// starting or ending).
    fn next_event(&self, t: f64) -> Option<f64> {
        let act = self.act.as_ref()?;
        if act.held() == 0 {
            return None;
        }
        let pods = self.pods.iter().filter(|p| !p.terminating).filter_map(|p| {
            if p.ready_at > t {
                Some(p.ready_at)
            } else {
                p.next_activator_change(t)
            }
        });
        act.next_deadline()
            .into_iter()
            .chain(pods)
            .filter(|&x| x > t)
            .min_by(f64::total_cmp)
    }

    /// What [`decide_path`] reads at `t`, with the burst target `burst`.
    fn path_inputs(&self, t: f64, burst: f64) -> PathInputs {
        let ready: Vec<&Pod> = self.pods.iter().filter(|p| p.is_ready(t)).collect();
        let in_pods: u32 = ready
            .iter()
            .map(|p| p.in_flight(t) + p.queue_len() as u32)
            .sum();
        let (held, settle) = self
            .act
            .as_ref()
            .map_or((0, Duration::ZERO), |a| (a.held(), a.config.settle));
        PathInputs {
            ready_pods: ready.len() as u32,
            pod_capacity: self.policy.pod_capacity,
            demand: f64::from(in_pods + held),
            burst_capacity: burst,
            settle,
        }
    }

    /// Sets where traffic goes.
    fn set_path(&mut self, path: PathState) {
        if let Some(act) = self.act.as_mut() {
            if act.path.route != path.route {
                self.route_changes += 1;
            }
            act.path = path;
        }
    }

    /// Sets the Deployment to `desired` pods at `now`, for `reason`.
    fn set_replicas(&mut self, desired: u32, now: f64, reason: String) {
        if self.replicas == 0 && desired > 0 {
            if let Some(first) = self.act.as_ref().and_then(Activator::oldest) {
                self.cold.push(ColdStart {
                    first: first.id,
                    wait: None,
                });
            }
        }
        self.events.push((now, self.replicas, desired, reason));
        scale_to(
            &mut self.pods,
            &mut self.gone,
            desired,
            now,
            self.pod_startup,
            self.server,
        );
        self.replicas = desired;
        self.max_replicas = self.max_replicas.max(desired);
    }

    /// A request arrives with the activator modelled: to the pods while they are the path
    /// (with no ready pod the path is decided again at once), else held at the activator;
    /// at zero pods the activator's push starts pods at once.
    fn arrive(&mut self, r: Request) {
        let Some(act) = self.act.as_mut() else {
            self.send_to_pods(r);
            return;
        };
        act.last_request = Some(r.at);
        if act.path.route == Route::Pods {
            if self.pods.iter().any(|p| p.is_ready(r.at)) {
                self.send_to_pods(r);
                return;
            }
            let burst = act.config.burst_capacity;
            let state = act.path;
            let inputs = self.path_inputs(r.at, burst);
            self.set_path(decide_path(state, &inputs, Duration::from_secs_f64(r.at)));
        }
        let Some(act) = self.act.as_mut() else {
            return;
        };
        if act.path.route == Route::Pods {
            // decide_path always puts the activator in the path at zero ready pods; should
            // it not, kube-proxy has nowhere to send the request.
            self.send_to_pods(r);
            return;
        }
        let admitted = act.admit(Held {
            id: r.id,
            arrival: r.at,
            service: r.service,
        });
        let held = act.held();
        if admitted.is_err() {
            self.refuse(r.id);
        }
        if self.replicas == 0 && held > 0 {
            let p = self.policy;
            let n = compute_push_replicas(held, p.target_per_pod(), p.min_replicas, p.max_replicas);
            self.set_replicas(
                n,
                r.at,
                format!("activator push: {held} held at zero pods -> {n} pods"),
            );
        }
        self.settle(r.at);
    }

    /// One second `[t0, t1)` with the activator modelled: its events (arrivals, deadlines,
    /// pods becoming ready, its requests starting and ending) in time order.
    fn activator_second(&mut self, arrivals: &[Request], t0: f64, t1: f64) {
        let mut next = 0usize;
        let mut t = t0;
        self.settle(t0);
        loop {
            let arrival = arrivals.get(next).map(|r| r.at);
            let Some(at) = arrival
                .into_iter()
                .chain(self.next_event(t))
                .min_by(f64::total_cmp)
            else {
                break;
            };
            if at >= t1 {
                break;
            }
            t = at;
            self.settle(t);
            while let Some(r) = arrivals.get(next).filter(|r| r.at <= t) {
                self.arrive(*r);
                next += 1;
            }
        }
    }

    /// The operator's path decision at the tick `now`, after the replica decision: returns
    /// why the app goes to zero pods, when it may. `route_before` is the path in force
    /// before this tick.
    fn tick_path(&mut self, now: f64, route_before: Route) -> Option<String> {
        let act = self.act.as_ref()?;
        let held = act.held();
        let idle = act.config.scale_to_zero_idle;
        let last = act.last_request.map(Duration::from_secs_f64);
        let at = Duration::from_secs_f64(now);
        // Knative puts the activator in the path when the autoscaler wants zero pods;
        // decide_path has no such input, so an app idle for the period gets the burst
        // target "always" (negative): the activator comes into the path, and at the next
        // tick may_scale_to_zero sees it there.
        let idle_long = held == 0 && may_scale_to_zero(idle, Route::Activator, last, at);
        let burst = if idle_long {
            -1.0
        } else {
            act.config.burst_capacity
        };
        let state = act.path;
        let inputs = self.path_inputs(now, burst);
        self.set_path(decide_path(state, &inputs, at));
        let idle_secs = idle.map_or(0.0, |d| d.as_secs_f64());
        (self.replicas > 0 && held == 0 && may_scale_to_zero(idle, route_before, last, at)).then(
            || format!("scale to zero: no request for {idle_secs:.0} s, the activator in the path"),
        )
    }
}

/// Runs `trace` under `kind` with `cfg`. Deterministic: the same inputs give the same outcome.
pub fn run(trace: &Trace, cfg: &SimConfig, kind: PolicyKind) -> Outcome {
    let p = cfg.policy;
    let server = match kind {
        PolicyKind::Wsgiscale
        | PolicyKind::WsgiscaleActivator
        | PolicyKind::WsgiscaleActivatorZero => cfg.server,
        // The peers know nothing of the workers: a fixed workers.max per pod.
        PolicyKind::Hpa | PolicyKind::Knative => ServerModel {
            scaling: ScalingConfig {
                algo: Algorithm::Manual,
                ..cfg.server.scaling
            },
            limits: WorkerLimits {
                min: cfg.server.limits.max,
                max: cfg.server.limits.max,
                initial: cfg.server.limits.max,
            },
            ..cfg.server
        },
    };
    let (tick, scaler) = match kind {
        PolicyKind::Wsgiscale
        | PolicyKind::WsgiscaleActivator
        | PolicyKind::WsgiscaleActivatorZero => (
            p.tick.as_secs().max(1),
            Scaler::Wsgiscale {
                samples: Samples::new(),
                state: autoscale::State::new(cfg.initial_replicas),
            },
        ),
        PolicyKind::Hpa => (
            15,
            Scaler::Hpa(HpaLike::new(
                p.target_utilization,
                p.min_replicas,
                p.max_replicas,
            )),
        ),
        PolicyKind::Knative => (
            2,
            Scaler::Knative(KnativeLike::new(
                p.target_per_pod(),
                p.min_replicas,
                p.max_replicas,
            )),
        ),
    };
    let act = kind.has_activator().then(|| {
        let mut config = cfg.activator;
        if kind != PolicyKind::WsgiscaleActivatorZero {
            config.scale_to_zero_idle = None;
        }
        Activator::new(config)
    });
    let mut scaler = scaler;
    let mut rng = SplitMix64(cfg.seed);
    let mut sim = Sim {
        policy: p,
        server,
        pod_startup: cfg.pod_startup,
        // Pods at the start have been up and ready for an hour, with their initial workers.
        pods: (0..cfg.initial_replicas)
            .map(|_| Pod::new(-3600.0, 0.0, server))
            .collect(),
        gone: Vec::new(),
        started: Vec::new(),
        fates: Vec::new(),
        rejected: 0,
        events: Vec::new(),
        replicas: cfg.initial_replicas,
        max_replicas: cfg.initial_replicas,
        rr: 0,
        act,
        cold: Vec::new(),
        left_activator: Vec::new(),
        route_changes: 0,
    };
    // The path before the first request.
    if let Some(a) = &sim.act {
        let inputs = sim.path_inputs(0.0, a.config.burst_capacity);
        let state = a.path;
        sim.set_path(decide_path(state, &inputs, Duration::ZERO));
        sim.route_changes = 0;
    }
    let mut series = Vec::new();
    let mut requests = 0u64;
    let (mut worker_seconds, mut pod_seconds) = (0.0f64, 0.0f64);
    let mut seconds_in_path = 0.0f64;
    let end = trace.duration().floor() as u64;

    for sec in 0..end {
        let t0 = sec as f64;
        let t1 = t0 + 1.0;
        let step = trace.at(t0);
        let before = sim.started.len();
        let mut arrivals = Vec::new();
        if step.rate > 0.0 {
            let mut a = t0;
            loop {
                a += -(1.0 - rng.next_f64()).ln() / step.rate;
                if a >= t1 {
                    break;
                }
                let service = -(1.0 - rng.next_f64()).ln() * step.service_ms / 1000.0;
                arrivals.push(Request {
                    id: requests,
                    at: a,
                    service,
                });
                requests += 1;
            }
        }
        sim.fates.resize(requests as usize, 0);
        if sim.act.is_some() {
            sim.activator_second(&arrivals, t0, t1);
        } else {
            for r in &arrivals {
                sim.send_to_pods(*r);
            }
        }
        sim.advance_all(t1);
        let wait_ms = sim.started[before..]
            .iter()
            .fold(0.0f64, |m, s| m.max(f64::from(s.wait) * 1000.0));
        // Terminated pods that have drained go away.
        sim.gone.retain(|pod| !pod.is_drained(t1));
        // Cost over this second: every pod and worker alive at its end.
        for pod in sim.pods.iter().chain(sim.gone.iter()) {
            pod_seconds += 1.0;
            if pod.ready_at <= t1 {
                worker_seconds += pod.workers() as f64;
            }
        }
        for pod in sim.pods.iter_mut().chain(sim.gone.iter_mut()) {
            pod.check(t1);
        }

        if (sec + 1) % tick == 0 {
            let ready_idx: Vec<usize> = (0..sim.pods.len())
                .filter(|&i| sim.pods[i].is_ready(t1))
                .collect();
            let ready = ready_idx.len() as u32;
            let held = sim.act.as_ref().map_or(0, Activator::held);
            let route_before = sim.act.as_ref().map_or(Route::Pods, |a| a.path.route);
            let pods = &sim.pods;
            let (mut desired, mut reason) = match &mut scaler {
                Scaler::Wsgiscale { samples, state } => {
                    let pick =
                        pick_sample(ready_idx.len(), p.max_pods_scraped as usize, rng.next_u64());
                    let sampled: Vec<PodSample> = pick
                        .iter()
                        .map(|&k| {
                            let pod = &pods[ready_idx[k]];
                            PodSample {
                                age: Duration::from_secs_f64((t1 - pod.ready_at).max(0.0)),
                                load: Some(PodLoad::from_report(&pod.report(t1))),
                            }
                        })
                        .collect();
                    let now = Duration::from_secs_f64(t1);
                    let mut sample = compute_tick(now, ready, &sampled, &p);
                    // What the activator holds is demand no pod reports (it pushes it).
                    let waited = sim
                        .act
                        .as_ref()
                        .and_then(Activator::oldest)
                        .map_or(0.0, |h| (t1 - h.arrival).max(0.0));
                    sample.add_held(
                        held,
                        held_arrivals(held, Duration::from_secs_f64(waited)),
                        p.panic_window,
                    );
                    samples.push(sample, p.stable_window);
                    if sim.replicas == 0 {
                        // At zero only the activator's push starts pods (decide would hold
                        // at replicas.min).
                        if held > 0 {
                            let n = compute_push_replicas(
                                held,
                                p.target_per_pod(),
                                p.min_replicas,
                                p.max_replicas,
                            );
                            (
                                n,
                                format!("activator push: {held} held at zero pods -> {n} pods"),
                            )
                        } else {
                            (0, String::new())
                        }
                    } else {
                        state.current = sim.replicas;
                        let d = autoscale::decide(&p, samples, state, now);
                        *state = d.state.clone();
                        let (mut desired, mut why) = (d.desired, d.reason);
                        if ready == 0 && held > 0 {
                            // No pod to measure: what the activator holds is the measure.
                            let n = compute_push_replicas(
                                held,
                                p.target_per_pod(),
                                p.min_replicas,
                                p.max_replicas,
                            );
                            if n > desired {
                                why = format!(
                                    "{why}; the activator holds {held} with no ready pod -> {n} pods"
                                );
                                desired = n;
                            }
                        }
                        (desired, why)
                    }
                }
                Scaler::Hpa(h) => {
                    let util = if ready == 0 {
                        0.0
                    } else {
                        ready_idx
                            .iter()
                            .map(|&i| pods[i].utilization(Duration::from_secs(15)))
                            .sum::<f64>()
                            / f64::from(ready)
                    };
                    let d = h.decide(t1, util, ready, sim.replicas);
                    (
                        d,
                        format!("hpa: utilization {:.0}% of {ready} ready", util * 100.0),
                    )
                }
                Scaler::Knative(k) => {
                    let conc: f64 = ready_idx
                        .iter()
                        .map(|&i| PodLoad::from_report(&pods[i].report(t1)).concurrency)
                        .sum();
                    let d = k.decide(t1, conc, ready, sim.replicas);
                    (
                        d,
                        format!("knative: concurrency {conc:.1} in {ready} ready"),
                    )
                }
            };
            if let Some(why) = sim.tick_path(t1, route_before) {
                desired = 0;
                reason = why;
            }
            if desired != sim.replicas {
                sim.set_replicas(desired, t1, reason);
            }
        }

        let (held, in_path) = sim
            .act
            .as_ref()
            .map_or((0, false), |a| (a.held(), a.path.route == Route::Activator));
        if in_path {
            seconds_in_path += 1.0;
        }
        series.push(Point {
            t: t1,
            arrivals: arrivals.len() as u32,
            replicas: sim.replicas,
            ready: sim.pods.iter().filter(|p| p.is_ready(t1)).count() as u32,
            workers: sim
                .pods
                .iter()
                .chain(sim.gone.iter())
                .filter(|p| p.ready_at <= t1)
                .map(|p| p.workers() as u32)
                .sum(),
            queue: sim
                .pods
                .iter()
                .chain(sim.gone.iter())
                .map(|p| p.queue_len() as u32)
                .sum(),
            wait_ms,
            held,
            activator: in_path,
        });
    }

    let waits: Vec<f32> = sim.started.iter().map(|s| s.wait).collect();
    let mean_ms = if waits.is_empty() {
        0.0
    } else {
        let total: f64 = waits.iter().map(|w| f64::from(*w)).sum();
        (total / waits.len() as f64 * 1000.0 * 10.0).round() / 10.0
    };
    let mut sorted = waits;
    sorted.sort_unstable_by(f32::total_cmp);
    let pct = |q: f64| -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
        (f64::from(sorted[i]) * 1000.0 * 10.0).round() / 10.0
    };
    let unfinished = sim.act.as_ref().map_or(0, |a| u64::from(a.held()))
        + sim
            .pods
            .iter()
            .chain(sim.gone.iter())
            .map(|p| p.queue_len() as u64)
            .sum::<u64>();
    let activator = sim.act.as_ref().map(|a| ActivatorSummary {
        burst_capacity: a.config.burst_capacity,
        settle_seconds: a.config.settle.as_secs_f64(),
        scale_to_zero_idle_seconds: a.config.scale_to_zero_idle.map(|d| d.as_secs_f64()),
        hold_max_requests: a.config.hold.max_requests,
        hold_max_wait_seconds: a.config.hold.max_wait_ms as f64 / 1000.0,
        forwarded: a.forwarded,
        refused_full: a.refused_full,
        refused_deadline: a.refused_deadline,
        max_held: a.max_held,
        seconds_in_path,
        route_changes: sim.route_changes,
        cold_starts: sim.cold.len() as u32,
        cold_start_first_wait_ms: sim
            .cold
            .iter()
            .map(|c| c.wait.map(|w| (w * 1000.0 * 10.0).round() / 10.0))
            .collect(),
    });
    let summary = Summary {
        policy: kind,
        duration_seconds: end as f64,
        requests,
        rejected: sim.rejected,
        max_replicas: sim.max_replicas,
        final_replicas: sim.replicas,
        scale_events: sim.events.len() as u32,
        mean_queue_wait_ms: mean_ms,
        p50_queue_wait_ms: pct(0.5),
        p99_queue_wait_ms: pct(0.99),
        max_queue_wait_ms: pct(1.0),
        worker_seconds: worker_seconds.round(),
        pod_seconds: pod_seconds.round(),
        activator,
    };
    Outcome {
        summary,
        series,
        events: sim.events,
        fates: sim.fates,
        unfinished,
        left_activator: sim.left_activator,
    }
}

/// Sets the Deployment to `desired` pods at `now`: new pods start, or pods leave the Service
/// as a ReplicaSet picks them (not-ready ones first, then the newest) and drain.
fn scale_to(
    pods: &mut Vec<Pod>,
    gone: &mut Vec<Pod>,
    desired: u32,
    now: f64,
    startup: f64,
    server: ServerModel,
) {
    let desired = desired as usize;
    while pods.len() < desired {
        pods.push(Pod::new(now, startup, server));
    }
    while pods.len() > desired {
        let victim = pods
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| {
                let ka = (!a.is_ready(now), a.created);
                let kb = (!b.is_ready(now), b.created);
                ka.partial_cmp(&kb).unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|(i, _)| i);
        let Some(i) = victim else { break };
        let mut pod = pods.remove(i);
        pod.terminating = true;
        if pod.ready_at > now {
            // Never served: gone at once.
            continue;
        }
        gone.push(pod);
    }
}

/// Flags of `wsgiscale-operator simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// The load trace: CSV with the header `t_seconds,arrival_rate_rps,service_time_ms`.
    #[arg(long, value_name = "TRACE.csv")]
    pub trace: std::path::PathBuf,

    /// The policy: YAML with the CRD's `autoscaling`, `replicas` and `workers` blocks and
    /// `podStartupSeconds`, `workerStartupSeconds`, `initialReplicas`, `maxQueue`, `seed`.
    /// Default: the CRD's defaults with 1..20 pods of 1..4 workers.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<std::path::PathBuf>,

    /// Which pod autoscaler drives the replicas.
    #[arg(long, value_enum, default_value_t = PolicyKind::Wsgiscale)]
    pub policy_kind: PolicyKind,

    /// Write a PNG plot of the run here.
    #[arg(long, value_name = "OUT.png")]
    pub plot: Option<std::path::PathBuf>,

    /// Print a one-line JSON summary as the last line.
    #[arg(long)]
    pub json: bool,

    /// Override the policy file's seed.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Runs `simulate` and writes its report to `out`: the scale events, the figures, and with
/// `--json` the summary as the last line.
pub fn run_cli(args: &SimulateArgs, out: &mut impl std::io::Write) -> Result<Summary, SimError> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|source| SimError::Io {
            path: p.display().to_string(),
            source,
        })
    };
    let trace = Trace::parse(&read(&args.trace)?)?;
    let mut cfg = match &args.policy {
        Some(p) => SimConfig::from_yaml(&read(p)?)?,
        None => SimConfig::from_yaml("")?,
    };
    if let Some(seed) = args.seed {
        cfg.seed = seed;
    }
    let outcome = run(&trace, &cfg, args.policy_kind);
    let io = |source| SimError::Io {
        path: "stdout".into(),
        source,
    };
    let name = args
        .trace
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (t, from, to, why) in &outcome.events {
        writeln!(out, "t={t:>6.0}s  {from:>3} -> {to:<3} {why}").map_err(io)?;
    }
    let m = &outcome.summary;
    writeln!(
        out,
        "{name} under {}: {} requests ({} rejected), pods max {} final {}, {} scale events, queue wait mean {:.1} ms p50 {:.1} ms p99 {:.1} ms max {:.1} ms, {:.0} worker-seconds, {:.0} pod-seconds",
        m.policy.as_str(), m.requests, m.rejected, m.max_replicas, m.final_replicas, m.scale_events,
        m.mean_queue_wait_ms, m.p50_queue_wait_ms, m.p99_queue_wait_ms, m.max_queue_wait_ms, m.worker_seconds, m.pod_seconds
    )
    .map_err(io)?;
    if let Some(a) = &m.activator {
        let waits: Vec<String> = a
            .cold_start_first_wait_ms
            .iter()
            .map(|w| w.map_or_else(|| "refused".into(), |w| format!("{w:.0} ms")))
            .collect();
        writeln!(
            out,
            "activator: burst target {:.1}, {} s in the path, {} route changes, {} forwarded, held max {} of {}, refused {} full + {} at the {:.0} s deadline, {} cold starts (first request waited: {})",
            a.burst_capacity, a.seconds_in_path, a.route_changes, a.forwarded, a.max_held, a.hold_max_requests,
            a.refused_full, a.refused_deadline, a.hold_max_wait_seconds, a.cold_starts,
            if waits.is_empty() { "-".into() } else { waits.join(", ") }
        )
        .map_err(io)?;
    }
    if let Some(path) = &args.plot {
        let title = format!("{name}: {} policy", m.policy.as_str());
        plot::write_png(&outcome, &title, path)?;
    }
    if args.json {
        let line = serde_json::to_string(m).expect("a summary of numbers serializes");
        writeln!(out, "{line}").map_err(io)?;
    }
    Ok(outcome.summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_file_keys_are_the_crds() {
        let cfg = SimConfig::from_yaml(
            "autoscaling:\n  targetUtilizationPercent: 60\n  panicWindowSeconds: 10\nreplicas:\n  min: 2\n  max: 30\nworkers:\n  min: 2\n  max: 8\n  algorithm: busyness\npodStartupSeconds: 20\nseed: 7\n",
        )
        .expect("valid");
        assert_eq!(cfg.policy.target_utilization, 0.6);
        assert_eq!(cfg.policy.panic_window, Duration::from_secs(10));
        assert_eq!((cfg.policy.min_replicas, cfg.policy.max_replicas), (2, 30));
        assert_eq!(cfg.policy.pod_capacity, 8.0);
        assert_eq!(cfg.server.scaling.algo, Algorithm::Busyness);
        assert_eq!(cfg.pod_startup, 20.0);
        assert_eq!(cfg.initial_replicas, 2);
        assert_eq!(cfg.seed, 7);
        // The CRD's rules apply.
        let e = SimConfig::from_yaml("workers:\n  min: 5\n  max: 2\n").expect_err("min > max");
        assert!(e.to_string().contains("workers"), "{e}");
        let e = SimConfig::from_yaml("nope: 1\n").expect_err("unknown key");
        assert!(e.to_string().contains("nope"), "{e}");
        let e = SimConfig::from_yaml("podStartupSeconds: -1\n").expect_err("negative");
        assert!(e.to_string().contains("podStartupSeconds"), "{e}");
    }

    #[test]
    fn runs_are_deterministic_and_account_every_request() {
        let trace = Trace::parse(
            "t_seconds,arrival_rate_rps,service_time_ms\n0,20,100\n60,80,100\n120,80,100\n",
        )
        .expect("trace");
        let cfg = SimConfig::from_yaml("").expect("defaults");
        for kind in [
            PolicyKind::Wsgiscale,
            PolicyKind::Hpa,
            PolicyKind::Knative,
            PolicyKind::WsgiscaleActivator,
            PolicyKind::WsgiscaleActivatorZero,
        ] {
            let a = run(&trace, &cfg, kind);
            let b = run(&trace, &cfg, kind);
            assert_eq!(a.summary, b.summary, "{kind:?}");
            assert_eq!(a.series.len(), 120);
            assert!(a.summary.requests > 5000, "{:?}", a.summary);
            assert!(a.summary.worker_seconds > 0.0);
            assert_eq!(a.summary.scale_events as usize, a.events.len());
            assert_accounted(&a);
            assert_eq!(a.summary.activator.is_some(), kind.has_activator());
        }
    }

    const STEP: &str = include_str!("../../../examples/traces/step.csv");

    /// The bench's policy (bench/autoscale/policy.yaml): 1..20 pods of 1..8 workers (spare2,
    /// 4 at boot), 10 s pod start, so one pod is 8 requests at once.
    const BENCH: &str = "replicas:\n  min: 1\n  max: 20\nworkers:\n  min: 1\n  initial: 4\n  max: 8\n  algorithm: spare2\npodStartupSeconds: 10\nworkerStartupSeconds: 1\nseed: 1\n";

    /// Every request is served (a worker took it) or refused exactly once, or still waits at
    /// the end; what left the activator left in arrival order.
    fn assert_accounted(o: &Outcome) {
        let s = &o.summary;
        assert_eq!(o.fates.len() as u64, s.requests);
        assert!(o.fates.iter().all(|&f| f <= 1), "a request finished twice");
        let waiting = o.fates.iter().filter(|&&f| f == 0).count() as u64;
        assert_eq!(waiting, o.unfinished, "{s:?}");
        assert!(s.rejected <= s.requests - waiting);
        assert!(
            o.left_activator.windows(2).all(|w| w[0] < w[1]),
            "the activator let a request go before an older one"
        );
        if let Some(a) = &s.activator {
            assert!(a.max_held <= a.hold_max_requests, "{a:?}");
            assert_eq!(
                a.forwarded + a.refused_deadline,
                o.left_activator.len() as u64
            );
            assert!(a.refused_full + a.refused_deadline <= s.rejected);
            assert!(o.series.iter().all(|p| p.held <= a.hold_max_requests));
        } else {
            assert!(o.left_activator.is_empty());
        }
    }

    #[test]
    fn the_activator_block_defaults_to_one_pod_and_the_activators_limits() {
        let cfg = SimConfig::from_yaml(BENCH).expect("valid");
        let a = cfg.activator;
        assert_eq!(a.burst_capacity, 8.0, "one pod: workers.max x threads");
        assert_eq!(a.settle, Duration::from_secs(30), "half the stable window");
        assert_eq!(a.scale_to_zero_idle, Some(Duration::from_secs(60)));
        assert_eq!(a.hold, HoldLimits::default());
        let cfg = SimConfig::from_yaml(
            "activator:\n  burstCapacity: -1\n  settleSeconds: 5\n  scaleToZeroIdleSeconds: 900\n  maxRequests: 10\n  maxWaitSeconds: 2.5\n",
        )
        .expect("valid");
        let a = cfg.activator;
        assert_eq!(a.burst_capacity, -1.0);
        assert_eq!(a.settle, Duration::from_secs(5));
        assert_eq!(a.scale_to_zero_idle, Some(Duration::from_secs(900)));
        assert_eq!((a.hold.max_requests, a.hold.max_wait_ms), (10, 2500));
        let e = SimConfig::from_yaml("activator:\n  maxWaitSeconds: -1\n").expect_err("negative");
        assert!(e.to_string().contains("maxWaitSeconds"), "{e}");
        let e = SimConfig::from_yaml("activator:\n  nope: 1\n").expect_err("unknown key");
        assert!(e.to_string().contains("nope"), "{e}");
    }

    /// Issue 20's target: with the activator in the path and a burst target of one pod, the
    /// step trace rejects nothing with the activator's default hold limit (10,000 requests:
    /// about 1,600 wait at the peak, while the new pods start).
    #[test]
    fn the_step_rejects_nothing_behind_the_activator() {
        let trace = Trace::parse(STEP).expect("trace");
        let cfg = SimConfig::from_yaml(&format!("{BENCH}activator:\n  burstCapacity: 8\n"))
            .expect("valid");
        let o = run(&trace, &cfg, PolicyKind::WsgiscaleActivator);
        assert_accounted(&o);
        assert_eq!(o.summary.rejected, 0, "{:?}", o.summary);
        assert!(o.summary.p99_queue_wait_ms < 10_000.0, "{:?}", o.summary);
    }

    /// With a hold limit below what waits while pods start (the old default, 1,000), the
    /// activator is in the path at the step (one pod at 10 req/s has less than a pod spare),
    /// the pods refuse nothing, and the only refusals are the activator's at its limit, which
    /// it held at the peak; the waits stay below a pod start.
    #[test]
    fn the_step_rejects_only_past_the_hold_limit() {
        let trace = Trace::parse(STEP).expect("trace");
        let small = format!("{BENCH}activator:\n  burstCapacity: 8\n  maxRequests: 1000\n");
        let cfg = SimConfig::from_yaml(&small).expect("valid");
        let o = run(&trace, &cfg, PolicyKind::WsgiscaleActivator);
        assert_accounted(&o);
        let a = o.summary.activator.as_ref().expect("activator figures");
        let at_step = o.series.iter().find(|p| p.t == 61.0).expect("t = 61 s");
        assert!(at_step.activator, "{at_step:?}");
        assert!(o.summary.rejected > 0);
        assert_eq!(o.summary.rejected, a.refused_full, "{:?}", o.summary);
        assert_eq!(a.refused_deadline, 0);
        assert_eq!(a.max_held, 1000);
        assert!(o.summary.p99_queue_wait_ms < 10_000.0, "{:?}", o.summary);
    }

    /// A burst, then nothing: the app goes to zero pods one idle period (and a tick for the
    /// activator to come into the path) after the last request, and the next request starts
    /// a pod at once (the push) and waits one pod start plus the hop.
    #[test]
    fn an_idle_app_goes_to_zero_and_the_next_request_starts_a_pod() {
        let trace = Trace::parse(
            "t_seconds,arrival_rate_rps,service_time_ms\n0,20,100\n30,0,100\n400,2,100\n410,0,100\n500,0,100\n",
        )
        .expect("trace");
        let cfg = SimConfig::from_yaml(&format!(
            "{BENCH}activator:\n  scaleToZeroIdleSeconds: 120\n"
        ))
        .expect("valid");
        let zero = run(&trace, &cfg, PolicyKind::WsgiscaleActivatorZero);
        assert_accounted(&zero);
        let warm = run(&trace, &cfg, PolicyKind::WsgiscaleActivator);
        assert_accounted(&warm);
        // Gone to zero no earlier than the idle period after the last request of the burst.
        let (t_zero, ..) = zero
            .events
            .iter()
            .find(|(_, _, to, _)| *to == 0)
            .expect("scaled to zero");
        assert!(
            *t_zero >= 30.0 + 120.0 && *t_zero <= 30.0 + 120.0 + 6.0,
            "{t_zero}"
        );
        let s = &zero.summary;
        assert_eq!(s.rejected, 0);
        let a = s.activator.as_ref().expect("figures");
        // The second burst's first request starts the one pod; it waits its start and the hop.
        assert_eq!(a.cold_starts, 1, "{:?}", zero.events);
        let w = a.cold_start_first_wait_ms[0].expect("served");
        assert!((w - 10_001.0).abs() < 1.0, "{w}");
        assert!(s.pod_seconds < warm.summary.pod_seconds, "{s:?}");
        assert_eq!(
            warm.summary.activator.as_ref().map(|a| a.cold_starts),
            Some(0)
        );
        assert!(warm.series.iter().all(|p| p.replicas >= 1));
    }

    /// At zero pods with a pod start longer than the hold deadline, the first requests are
    /// refused at their deadline (503), once each, and the pods still come.
    #[test]
    fn held_requests_past_their_deadline_are_refused_once() {
        let trace = Trace::parse(
            "t_seconds,arrival_rate_rps,service_time_ms\n0,0,100\n100,5,100\n130,0,100\n200,0,100\n",
        )
        .expect("trace");
        let cfg = SimConfig::from_yaml(&format!(
            "{}activator:\n  scaleToZeroIdleSeconds: 30\n  maxWaitSeconds: 5\n",
            BENCH.replace("podStartupSeconds: 10", "podStartupSeconds: 20")
        ))
        .expect("valid");
        let o = run(&trace, &cfg, PolicyKind::WsgiscaleActivatorZero);
        assert_accounted(&o);
        let a = o.summary.activator.as_ref().expect("figures");
        assert!(a.refused_deadline > 0, "{a:?}");
        assert_eq!(a.cold_starts, 1, "{:?}", o.events);
        assert_eq!(
            a.cold_start_first_wait_ms,
            vec![None],
            "the first request was refused"
        );
        assert!(
            o.summary.rejected < o.summary.requests,
            "the pod came: {:?}",
            o.summary
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn trace() -> impl Strategy<Value = Trace> {
            prop::collection::vec((0.0f64..150.0, 20.0f64..300.0, 5u32..40), 1..5).prop_map(
                |rows| {
                    let mut text = String::from("t_seconds,arrival_rate_rps,service_time_ms\n");
                    let mut t = 0u32;
                    for (rate, ms, len) in &rows {
                        // Some idle rows, so that scale to zero is reached.
                        let rate = if *rate < 30.0 { 0.0 } else { *rate };
                        text.push_str(&format!("{t},{rate:.1},{ms:.0}\n"));
                        t += len;
                    }
                    text.push_str(&format!("{t},0,100\n"));
                    Trace::parse(&text).expect("generated trace")
                },
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]

            /// Whatever the trace, the burst target and the hold limits: the FIFO never holds
            /// more than its limit, nothing leaves it out of arrival order, every request is
            /// served or refused exactly once (or still waits at the end), and the pods stay
            /// within [min, max] (or at zero behind the activator, with scale to zero on).
            #[test]
            fn the_activator_model_keeps_its_limits_its_order_and_every_request(
                tr in trace(),
                burst in -1.0f64..24.0,
                max_requests in 1u32..300,
                max_wait in 0.5f64..30.0,
                idle in 5.0f64..60.0,
                startup in 1.0f64..15.0,
                zero in any::<bool>(),
                seed in 1u64..1000,
            ) {
                let cfg = SimConfig::from_yaml(&format!(
                    "replicas:\n  min: 1\n  max: 6\nworkers:\n  min: 1\n  initial: 2\n  max: 4\n  algorithm: spare2\npodStartupSeconds: {startup}\nseed: {seed}\nactivator:\n  burstCapacity: {burst}\n  maxRequests: {max_requests}\n  maxWaitSeconds: {max_wait}\n  scaleToZeroIdleSeconds: {idle}\n"
                ))
                .expect("valid");
                let kind = if zero {
                    PolicyKind::WsgiscaleActivatorZero
                } else {
                    PolicyKind::WsgiscaleActivator
                };
                let o = run(&tr, &cfg, kind);
                assert_accounted(&o);
                let a = o.summary.activator.as_ref().expect("figures");
                prop_assert!(a.max_held <= max_requests);
                for p in &o.series {
                    prop_assert!(p.replicas <= 6);
                    prop_assert!(p.replicas >= 1 || zero, "{p:?}");
                }
                if !zero {
                    prop_assert_eq!(a.cold_starts, 0);
                }
            }
        }
    }
}
