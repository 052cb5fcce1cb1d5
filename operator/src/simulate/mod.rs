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

pub mod baselines;
pub mod model;
pub mod plot;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use wsgiscale_core::config::{Algorithm, ScalingConfig, WorkerLimits};

use crate::autoscale::{self, compute_tick, pick_sample, PodLoad, PodSample, Samples, SplitMix64};
use crate::crd::{AutoscalingSpec, ReplicasSpec, WorkersSpec, WsgiApp, WsgiAppSpec};
use crate::validate::validate_app;
use baselines::{HpaLike, KnativeLike};
use model::{Pod, ServerModel};
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
}

impl PolicyKind {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Wsgiscale => "wsgiscale",
            PolicyKind::Hpa => "hpa",
            PolicyKind::Knative => "knative",
        }
    }
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
        Ok(SimConfig {
            initial_replicas: policy.clamp(file.initial_replicas.unwrap_or(policy.min_replicas)),
            policy,
            server,
            pod_startup,
            seed: file.seed.unwrap_or(1),
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

/// Runs `trace` under `kind` with `cfg`. Deterministic: the same inputs give the same outcome.
pub fn run(trace: &Trace, cfg: &SimConfig, kind: PolicyKind) -> Outcome {
    let p = cfg.policy;
    let server = match kind {
        PolicyKind::Wsgiscale => cfg.server,
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
        PolicyKind::Wsgiscale => (
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
    let mut scaler = scaler;
    let mut rng = SplitMix64(cfg.seed);
    // Pods at the start have been up and ready for an hour, with their initial workers.
    let mut pods: Vec<Pod> = (0..cfg.initial_replicas)
        .map(|_| Pod::new(-3600.0, 0.0, server))
        .collect();
    let mut gone: Vec<Pod> = Vec::new();
    let mut waits: Vec<f32> = Vec::new();
    let mut series = Vec::new();
    let mut events = Vec::new();
    let (mut requests, mut rejected) = (0u64, 0u64);
    let (mut worker_seconds, mut pod_seconds) = (0.0f64, 0.0f64);
    let mut rr = 0usize;
    let mut replicas = cfg.initial_replicas;
    let mut max_replicas = replicas;
    let end = trace.duration().floor() as u64;

    for sec in 0..end {
        let t0 = sec as f64;
        let t1 = t0 + 1.0;
        let step = trace.at(t0);
        let mut arrivals = 0u32;
        if step.rate > 0.0 {
            let mut a = t0;
            loop {
                a += -(1.0 - rng.next_f64()).ln() / step.rate;
                if a >= t1 {
                    break;
                }
                arrivals += 1;
                requests += 1;
                let service = -(1.0 - rng.next_f64()).ln() * step.service_ms / 1000.0;
                let ready: Vec<usize> = (0..pods.len()).filter(|&i| pods[i].is_ready(a)).collect();
                if ready.is_empty() {
                    rejected += 1;
                    continue;
                }
                rr = rr.wrapping_add(1);
                let i = ready[rr % ready.len()];
                if !pods[i].offer(a, service) {
                    rejected += 1;
                }
            }
        }
        let before = waits.len();
        for pod in pods.iter_mut().chain(gone.iter_mut()) {
            pod.advance(t1, &mut waits);
        }
        let wait_ms = waits[before..]
            .iter()
            .fold(0.0f64, |m, w| m.max(f64::from(*w) * 1000.0));
        // Terminated pods that have drained go away.
        gone.retain(|pod| !pod.is_drained(t1));
        // Cost over this second: every pod and worker alive at its end.
        for pod in pods.iter().chain(gone.iter()) {
            pod_seconds += 1.0;
            if pod.ready_at <= t1 {
                worker_seconds += pod.workers() as f64;
            }
        }
        for pod in pods.iter_mut().chain(gone.iter_mut()) {
            pod.check(t1);
        }

        if (sec + 1) % tick == 0 {
            let ready_idx: Vec<usize> = (0..pods.len()).filter(|&i| pods[i].is_ready(t1)).collect();
            let ready = ready_idx.len() as u32;
            let (desired, reason) = match &mut scaler {
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
                    samples.push(compute_tick(now, ready, &sampled, &p), p.stable_window);
                    state.current = replicas;
                    let d = autoscale::decide(&p, samples, state, now);
                    *state = d.state.clone();
                    (d.desired, d.reason)
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
                    let d = h.decide(t1, util, ready, replicas);
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
                    let d = k.decide(t1, conc, ready, replicas);
                    (
                        d,
                        format!("knative: concurrency {conc:.1} in {ready} ready"),
                    )
                }
            };
            if desired != replicas {
                events.push((t1, replicas, desired, reason));
                scale_to(&mut pods, &mut gone, desired, t1, cfg.pod_startup, server);
                replicas = desired;
                max_replicas = max_replicas.max(replicas);
            }
        }

        series.push(Point {
            t: t1,
            arrivals,
            replicas,
            ready: pods.iter().filter(|p| p.is_ready(t1)).count() as u32,
            workers: pods
                .iter()
                .chain(gone.iter())
                .filter(|p| p.ready_at <= t1)
                .map(|p| p.workers() as u32)
                .sum(),
            queue: pods
                .iter()
                .chain(gone.iter())
                .map(|p| p.queue_len() as u32)
                .sum(),
            wait_ms,
        });
    }

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
    let summary = Summary {
        policy: kind,
        duration_seconds: end as f64,
        requests,
        rejected,
        max_replicas,
        final_replicas: replicas,
        scale_events: events.len() as u32,
        mean_queue_wait_ms: mean_ms,
        p50_queue_wait_ms: pct(0.5),
        p99_queue_wait_ms: pct(0.99),
        max_queue_wait_ms: pct(1.0),
        worker_seconds: worker_seconds.round(),
        pod_seconds: pod_seconds.round(),
    };
    Outcome {
        summary,
        series,
        events,
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
        for kind in [PolicyKind::Wsgiscale, PolicyKind::Hpa, PolicyKind::Knative] {
            let a = run(&trace, &cfg, kind);
            let b = run(&trace, &cfg, kind);
            assert_eq!(a.summary, b.summary, "{kind:?}");
            assert_eq!(a.series.len(), 120);
            assert!(a.summary.requests > 5000, "{:?}", a.summary);
            assert!(a.summary.worker_seconds > 0.0);
            assert_eq!(a.summary.scale_events as usize, a.events.len());
        }
    }
}
