//! The autoscaler's I/O around the pure decision ([`crate::autoscale`]): every tick, for each
//! WsgiApp with `autoscaling.enabled`, take its ready pods from the shared pod cache
//! ([`crate::cache::PodCache`]: no LIST per app per tick), read `GET /load` from their admin
//! port (concurrently, with a timeout and a bound; a random sample above `maxPodsScraped`),
//! then the pure [`compute_step`] (samples, decision, status, whether to write), and publish:
//! an Event (queued) and a log line when the recommendation changes, metrics, and the status'
//! `load` and `autoscaler` blocks (with the autoscaler's own field manager) only when they
//! changed beyond a threshold, or every [`STATUS_HEARTBEAT`] ([`compute_write`]).
//!
//! One owner for the Deployment's replicas: this module never writes the Deployment. It
//! writes `status.autoscaler.recommendedReplicas` and hands a new recommendation to the
//! reconciler in memory at the same time ([`crate::handoff`]: the app's reconcile is woken at
//! once, not when the status write comes back through the watch); the reconciler applies the
//! count within replicas.min..max ([`crate::status::compute_replicas`]) with
//! its field manager, as it applies `spec.replicas.desired` (the scale subresource that
//! `kubectl scale`, an HPA or KEDA drive) when autoscaling is off. While autoscaling is off
//! this module does nothing at all.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, info};
use wsgiscale_core::load::LoadReport;

use crate::activation::{
    decide_path, may_scale_to_zero, render_public_slice, PathInputs, PathState, PodEndpoint, Route,
};
use crate::autoscale::{
    compute_tick, decide, pick_sample, Action, Decision, PodLoad, PodSample, Policy, Samples,
    State, TickSample,
};
use crate::cache::PodCache;
use crate::crd::{AutoscalerStatus, LoadSummary, WsgiApp};
use crate::dependency::Dependency;
use crate::events::{EventSink, Queued, Reporting};
use crate::handoff::Recommendations;
use crate::metrics::Metrics;
use crate::routing::{self, Routing};
use crate::validate::{validate_app, ValidatedApp};

/// The field manager of the autoscaler's status writes (`status.load`, `status.autoscaler`;
/// also the `reportingController` of its Events).
pub const FIELD_MANAGER: &str = Reporting::Autoscaler.name();

/// Largest load report read, bytes.
const MAX_REPORT_BYTES: usize = 256 << 10;

/// Why one pod's load could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// The TCP connection failed.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// The server answered with an error status.
    #[error("status {0}")]
    Status(u16),
    /// The body was too large or broken.
    #[error("body: {0}")]
    Body(String),
    /// The body is not a load report.
    #[error("report: {0}")]
    Report(#[from] serde_json::Error),
}

impl ScrapeError {
    /// A fixed label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            ScrapeError::Timeout => "timeout",
            ScrapeError::Connect(_) => "connect",
            ScrapeError::Http(_) => "http",
            ScrapeError::Status(_) => "status",
            ScrapeError::Body(_) => "body",
            ScrapeError::Report(_) => "report",
        }
    }
}

/// Why a tick of one app failed (it is retried at the next tick).
#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    /// Writing the status failed.
    #[error("patch status of {name}: {source}")]
    PatchStatus {
        /// The WsgiApp.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Reads one server's load report from `http://addr/load`, within `timeout`.
pub async fn scrape_load(addr: SocketAddr, timeout: Duration) -> Result<LoadReport, ScrapeError> {
    tokio::time::timeout(timeout, async move {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(ScrapeError::Connect)?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        // Ends when the sender is dropped (or the timeout drops this future).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = http::Request::get("/load")
            .header(http::header::HOST, addr.to_string())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| ScrapeError::Body(e.to_string()))?;
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            return Err(ScrapeError::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), MAX_REPORT_BYTES)
            .collect()
            .await
            .map_err(|e| ScrapeError::Body(e.to_string()))?
            .to_bytes();
        Ok(serde_json::from_slice(&body)?)
    })
    .await
    .map_err(|_| ScrapeError::Timeout)?
}

/// One read of a load report: what came back, and how long it took.
pub type Scraped = (Result<LoadReport, ScrapeError>, Duration);

/// Reads every address in `targets`, at most `concurrency` at once; the results are in the
/// order of `targets`.
pub async fn scrape_all(
    targets: &[SocketAddr],
    concurrency: usize,
    timeout: Duration,
) -> Vec<Scraped> {
    let mut out: Vec<Option<Scraped>> = targets.iter().map(|_| None).collect();
    let mut results = futures::stream::iter(targets.iter().copied().enumerate())
        .map(|(i, addr)| async move {
            let start = Instant::now();
            let r = scrape_load(addr, timeout).await;
            (i, (r, start.elapsed()))
        })
        .buffer_unordered(concurrency.max(1));
    while let Some((i, r)) = results.next().await {
        out[i] = Some(r);
    }
    out.into_iter()
        .map(|r| r.unwrap_or((Err(ScrapeError::Timeout), timeout)))
        .collect()
}

/// A ready pod of an app: where its admin port is, and how long it has been ready.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadyPod {
    /// Its IP.
    pub ip: IpAddr,
    /// Time since it became ready.
    pub age: Duration,
}

/// The pods of `pods` that serve: Ready, with an IP, not being deleted. `now` is the wall
/// clock, for their age (from the Ready condition's transition, else the start time).
pub fn compute_ready_pods<P: Borrow<Pod>>(pods: &[P], now: Timestamp) -> Vec<ReadyPod> {
    pods.iter()
        .map(Borrow::borrow)
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let ready = status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready" && c.status == "True")?;
            let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
            let since = ready
                .last_transition_time
                .as_ref()
                .or(status.start_time.as_ref())
                .map(|t| t.0);
            let age = since
                .and_then(|s| now.duration_since(s).try_into().ok())
                .unwrap_or(Duration::ZERO);
            Some(ReadyPod { ip, age })
        })
        .collect()
}

/// The status blocks the autoscaler writes, from the tick and the decision.
pub fn build_status(
    tick: &TickSample,
    decision: &Decision,
    now: Time,
    previous: Option<&AutoscalerStatus>,
) -> (LoadSummary, AutoscalerStatus) {
    let i = |n: u32| Some(i32::try_from(n).unwrap_or(i32::MAX));
    let load = LoadSummary {
        time: Some(now.clone()),
        pods_scraped: i(tick.answered),
        pods_ready: i(tick.ready_pods),
        busy_workers: i(tick.busy_workers),
        total_workers: i(tick.total_workers),
        queue_depth: i(tick.queue_depth),
        utilization_percent: Some((decision.figures.utilization * 100.0).round() as i32),
    };
    let changed = decision.action != Action::Hold;
    let autoscaler = AutoscalerStatus {
        recommended_replicas: i(decision.desired),
        panic_mode: Some(decision.panic),
        last_scale_time: if changed {
            Some(now)
        } else {
            previous.and_then(|p| p.last_scale_time.clone())
        },
        last_scale_reason: if changed {
            Some(decision.reason.clone())
        } else {
            previous.and_then(|p| p.last_scale_reason.clone())
        },
    };
    (load, autoscaler)
}

/// How often the load summary is rewritten while nothing changes beyond
/// [`LOAD_CHANGE_POINTS`]: its `time` then says the autoscaler is alive, and `kubectl get
/// wsgi` never shows a summary older than this.
pub const STATUS_HEARTBEAT: Duration = Duration::from_secs(60);

/// Utilization points (of 100) the load summary must move from the value last written to be
/// written before the heartbeat.
pub const LOAD_CHANGE_POINTS: i32 = 10;

/// Why the autoscaler writes its status blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteCause {
    /// The recommendation, panic mode or the load changed enough to matter.
    Change,
    /// Nothing changed, but the summary last written is [`STATUS_HEARTBEAT`] old.
    Heartbeat,
}

impl WriteCause {
    /// A fixed label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteCause::Change => "change",
            WriteCause::Heartbeat => "heartbeat",
        }
    }
}

/// Whether the load summary changed enough to be written before the heartbeat: the ready pods
/// changed, utilization moved [`LOAD_CHANGE_POINTS`] or more, requests started or stopped
/// queueing, or the pods started or stopped answering. Busy and total worker counts alone
/// move with every request and do not count.
pub fn load_changed(old: &LoadSummary, new: &LoadSummary) -> bool {
    let u = |l: &LoadSummary| l.utilization_percent.unwrap_or(0);
    let some = |v: Option<i32>| v.unwrap_or(0) > 0;
    old.pods_ready != new.pods_ready
        || (u(old) - u(new)).abs() >= LOAD_CHANGE_POINTS
        || some(old.queue_depth) != some(new.queue_depth)
        || some(old.pods_scraped) != some(new.pods_scraped)
}

/// Whether to write the status blocks, and why: `written` is what the WsgiApp holds (the
/// autoscaler's last write, or another replica's), `now` the wall clock. A recommendation or
/// panic mode that changed, or a load that changed beyond [`load_changed`], is written at
/// once; otherwise the summary is rewritten every `heartbeat` (its `time` is when it was
/// last written). Pure.
pub fn compute_write(
    written: Option<(&AutoscalerStatus, &LoadSummary)>,
    status: &AutoscalerStatus,
    load: &LoadSummary,
    now: Timestamp,
    heartbeat: Duration,
) -> Option<WriteCause> {
    let Some((old_status, old_load)) = written else {
        return Some(WriteCause::Change);
    };
    let changed = old_status.recommended_replicas != status.recommended_replicas
        || old_status.panic_mode != status.panic_mode
        || load_changed(old_load, load);
    if changed {
        return Some(WriteCause::Change);
    }
    let age = old_load
        .time
        .as_ref()
        .and_then(|t| Duration::try_from(now.duration_since(t.0)).ok());
    match age {
        Some(age) if age < heartbeat => None,
        _ => Some(WriteCause::Heartbeat),
    }
}

/// What the autoscaler keeps per app between ticks.
#[derive(Debug, Clone)]
pub struct AppState {
    samples: Samples,
    state: State,
    next: Instant,
    /// The blocks the WsgiApp holds, as last written (by this replica or another).
    written: Option<(AutoscalerStatus, LoadSummary)>,
    /// When (monotonic, since the autoscaler started) a request was last seen: in a pod's
    /// report (running, queued, or any in its last 10 s) or held by the activator.
    pub last_request: Option<Duration>,
}

impl AppState {
    /// The state of an app first seen at `now`, whose status holds `status` (the count of pods
    /// the reconciler last asked for, and the autoscaler blocks another replica may have
    /// written).
    pub fn new(app: &WsgiApp, ready_pods: u32, now: Instant) -> Self {
        let status = app.status.as_ref();
        let current = status
            .and_then(|s| s.desired_replicas)
            .and_then(|r| u32::try_from(r).ok());
        AppState {
            samples: Samples::new(),
            state: State::new(current.unwrap_or(ready_pods)),
            next: now,
            written: status.and_then(|s| Some((s.autoscaler.clone()?, s.load.clone()?))),
            last_request: None,
        }
    }

    /// Records a successful write of `status` and `load`.
    pub fn mark_written(&mut self, status: AutoscalerStatus, load: LoadSummary) {
        self.written = Some((status, load));
    }
}

/// Where to scrape in one tick: the ready pods, the sample of them to read, and their admin
/// addresses. Pure.
pub fn plan_scrape<P: Borrow<Pod>>(
    pods: &[P],
    wall: Timestamp,
    policy: &Policy,
    admin_port: u16,
    seed: u64,
) -> (Vec<ReadyPod>, Vec<usize>, Vec<SocketAddr>) {
    let ready = compute_ready_pods(pods, wall);
    let pick = pick_sample(ready.len(), policy.max_pods_scraped as usize, seed);
    let targets = pick
        .iter()
        .map(|&i| SocketAddr::new(ready[i].ip, admin_port))
        .collect();
    (ready, pick, targets)
}

/// The outcome of one tick of one app, for the I/O to carry out.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The decision.
    pub decision: Decision,
    /// The pod count before it.
    pub before: u32,
    /// The load summary.
    pub load: LoadSummary,
    /// The autoscaler block.
    pub status: AutoscalerStatus,
    /// Whether to write both, and why.
    pub write: Option<WriteCause>,
    /// The result label of each scrape (`ok`, `draining`, an error kind), in order.
    pub scrapes: Vec<&'static str>,
}

/// What the activator adds to one tick of an app: the requests it holds and has in flight
/// (from the demand board), and whether the app may go to zero pods.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HeldDemand {
    /// Requests waiting at the activators.
    pub held: u32,
    /// Requests per second joining the activators' queues.
    pub arrivals: f64,
    /// Requests the activators forwarded and have not seen answered.
    pub in_flight: u32,
    /// The idle period of scale to zero (None: off, or the operator has no activator).
    pub scale_to_zero: Option<Duration>,
    /// Where the app's traffic goes now.
    pub route: Route,
}

impl HeldDemand {
    /// Whether the last pod may go at `at`, the last request seen at `last_request`.
    pub fn zero_allowed(&self, last_request: Option<Duration>, at: Duration) -> bool {
        may_scale_to_zero(self.scale_to_zero, self.route, last_request, at)
    }

    /// Whether the app has been idle for its scale-to-zero period (the activator must take
    /// the path before the last pod goes).
    pub fn idle(&self, last_request: Option<Duration>, at: Duration) -> bool {
        self.scale_to_zero
            .is_some_and(|idle| last_request.is_none_or(|t| at.saturating_sub(t) >= idle))
    }
}

/// One tick of one app from what its pods answered: the samples, the decision, the status
/// and whether to write it. `at` is the monotonic time since the autoscaler started, `now`
/// the monotonic and `wall` the wall clock; `current` the pod count the reconciler last asked
/// for. Updates `state` (samples, decision state, next tick). Pure.
#[allow(clippy::too_many_arguments)]
pub fn compute_step(
    state: &mut AppState,
    policy: &Policy,
    ready: &[ReadyPod],
    pick: &[usize],
    results: &[Result<LoadReport, ScrapeError>],
    current: Option<u32>,
    (at, now, wall): (Duration, Instant, Timestamp),
    heartbeat: Duration,
    activator: HeldDemand,
) -> Step {
    let mut scrapes = Vec::with_capacity(results.len());
    let samples: Vec<PodSample> = pick
        .iter()
        .zip(results)
        .map(|(&i, r)| {
            let load = match r {
                Ok(report) if !report.draining => {
                    scrapes.push("ok");
                    Some(PodLoad::from_report(report))
                }
                Ok(_) => {
                    scrapes.push("draining");
                    None
                }
                Err(e) => {
                    scrapes.push(e.as_str());
                    None
                }
            };
            PodSample {
                age: ready[i].age,
                load,
            }
        })
        .collect();
    let mut tick = compute_tick(at, ready.len() as u32, &samples, policy);
    // Held requests are demand the pods have not seen yet.
    tick.add_held(activator.held, activator.arrivals, policy.panic_window);
    let active = activator.held > 0
        || activator.in_flight > 0
        || results
            .iter()
            .flatten()
            .any(|r| r.in_flight > 0 || r.queue.depth > 0 || r.rates.s10.requests_per_second > 0.0);
    if active || state.last_request.is_none() {
        // A first sight counts as activity: the idle period runs from the autoscaler's
        // start, not from an unknown past.
        state.last_request = Some(at);
    }
    state.samples.push(tick, policy.stable_window);
    if let Some(c) = current {
        state.state.current = c;
    }
    state.state.zero_allowed = activator.zero_allowed(state.last_request, at);
    let before = state.state.current;
    let decision = decide(policy, &state.samples, &state.state, at);
    state.state = decision.state.clone();
    state.next = now + policy.tick;
    let previous = state.written.as_ref().map(|(s, _)| s);
    let (load, status) = build_status(&tick, &decision, Time(wall), previous);
    let write = compute_write(
        state.written.as_ref().map(|(s, l)| (s, l)),
        &status,
        &load,
        wall,
        heartbeat,
    );
    Step {
        decision,
        before,
        load,
        status,
        write,
        scrapes,
    }
}

/// The autoscaler: its clients, the shared pod cache, and the state of every autoscaled app.
pub struct Autoscaler {
    client: Client,
    events: EventSink,
    metrics: Arc<Metrics>,
    pods: PodCache,
    /// Timeout of one scrape.
    pub scrape_timeout: Duration,
    /// Scrapes at once, per app.
    pub scrape_concurrency: usize,
    /// The load summary is rewritten at least this often while nothing else changes.
    pub status_heartbeat: Duration,
    start: Instant,
    apps: tokio::sync::Mutex<HashMap<String, AppState>>,
    /// Each autoscaled app's policy and admin port, for the generation it was validated at.
    policies: std::sync::Mutex<HashMap<String, Validated>>,
    /// How the status writes fare, logged once per change of state.
    writes: std::sync::Mutex<Dependency>,
    /// The activator's path, when the operator has an activator.
    routing: Option<Arc<Routing>>,
    /// Where each new recommendation is handed to the reconciler before its status write.
    recommendations: Arc<Recommendations>,
}

/// An app's policy, admin port and validated spec (None: its spec is invalid or not
/// autoscaled) for the generation it was validated at.
type Validated = (Option<i64>, Option<(Policy, u16, Arc<ValidatedApp>)>);

impl Autoscaler {
    /// An autoscaler on `client` that reads pods from `pods` and queues its events on `events`.
    pub fn new(client: Client, events: EventSink, metrics: Arc<Metrics>, pods: PodCache) -> Self {
        Autoscaler {
            client,
            events,
            metrics,
            pods,
            scrape_timeout: Duration::from_secs(1),
            scrape_concurrency: 16,
            status_heartbeat: STATUS_HEARTBEAT,
            start: Instant::now(),
            apps: tokio::sync::Mutex::new(HashMap::new()),
            policies: std::sync::Mutex::new(HashMap::new()),
            writes: std::sync::Mutex::new(Dependency::new("autoscaler status writes")),
            routing: None,
            recommendations: Arc::default(),
        }
    }

    /// The same autoscaler, handing its recommendations to the reconcilers that read
    /// `recommendations` (the board of the term's [`crate::cache::Caches`]).
    pub fn with_recommendations(mut self, recommendations: Arc<Recommendations>) -> Self {
        self.recommendations = recommendations;
        self
    }

    /// The same autoscaler, routing its apps through the activator when `routing` is set.
    pub fn with_routing(mut self, routing: Option<Arc<Routing>>) -> Self {
        self.routing = routing;
        self
    }

    /// One tick at `now` over `apps` (the WsgiApps the operator watches): each autoscaled app
    /// whose own tick is due is measured and decided; the state of apps no longer autoscaled is
    /// dropped. Errors are counted, logged once per change from working to failing, and the
    /// app is retried at its next tick.
    pub async fn tick(&self, apps: &[Arc<WsgiApp>], now: Instant) {
        let started = Instant::now();
        let mut keep = Vec::new();
        let mut due = Vec::new();
        let mut routed: Vec<Arc<ValidatedApp>> = Vec::new();
        // Apps whose requests wait at the activator are decided now, not at their next tick.
        let urgent = self
            .routing
            .as_ref()
            .map(|r| r.demand.take_urgent())
            .unwrap_or_default();
        {
            let states = self.apps.lock().await;
            let mut policies = self.policies.lock().unwrap_or_else(|e| e.into_inner());
            for app in apps {
                // Most apps are not autoscaled: a look at the field, not a validation.
                let enabled = app.spec.autoscaling.as_ref().and_then(|a| a.enabled);
                if enabled != Some(true) {
                    continue;
                }
                let key = format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any());
                // Validated once per generation of the spec, not on every tick.
                let generation = app.metadata.generation;
                let fresh = policies.get(&key).is_some_and(|(g, _)| *g == generation);
                if !fresh {
                    let policy = validate_app(app)
                        .ok()
                        .filter(|v| v.autoscaling.enabled)
                        .map(|v| (Policy::from_app(&v), v.admin_port_number(), Arc::new(v)));
                    policies.insert(key.clone(), (generation, policy));
                }
                let Some((_, Some((policy, port, validated)))) = policies.get(&key) else {
                    continue;
                };
                let (ns, name) = (app.namespace().unwrap_or_default(), app.name_any());
                let pressing = urgent.contains(&(ns, name));
                if pressing || states.get(&key).is_none_or(|s| now >= s.next) {
                    due.push((app.clone(), *policy, *port, validated.clone()));
                }
                if routing::takes_part(validated) {
                    routed.push(validated.clone());
                }
                keep.push(key);
            }
            policies.retain(|k, _| keep.contains(k));
        }
        // The route table first: a new app's activator port is known before its first path
        // decision.
        if let Some(r) = &self.routing {
            let apps: Vec<&ValidatedApp> = routed.iter().map(AsRef::as_ref).collect();
            match r.sync_table(&apps).await {
                Ok(t) if t.routes.len() < apps.len() => {
                    debug!(
                        apps = apps.len(),
                        routed = t.routes.len(),
                        "the activator's ports are all taken: some apps are not routed"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics.count_error("activator_routes");
                    debug!(error = %e, "cannot write the activator's route table");
                }
            }
            r.retain(
                &routed
                    .iter()
                    .map(|v| (v.namespace.clone(), v.name.clone()))
                    .collect(),
            );
        }
        // Apps are measured side by side, so one slow app does not delay the others.
        futures::stream::iter(due)
            .for_each_concurrent(8, |(app, policy, port, validated)| async move {
                let result = self.tick_app(&app, &policy, port, &validated, now).await;
                if let Err(e) = &result {
                    self.metrics.count_error(match e {
                        AutoscaleError::PatchStatus { .. } => "autoscale_patch_status",
                    });
                    debug!(app = %app.name_any(), error = %e, "autoscaler tick failed");
                }
                let error = match result {
                    Ok(step) if step.write.is_some() => None,
                    Ok(_) => return,
                    Err(e) => Some(e.to_string()),
                };
                self.writes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .observe(error);
            })
            .await;
        self.recommendations
            .retain(&keep.iter().map(String::as_str).collect());
        let mut states = self.apps.lock().await;
        states.retain(|k, _| {
            let kept = keep.contains(k);
            if !kept {
                let (ns, name) = k.split_once('/').unwrap_or_default();
                self.metrics.forget_scale(ns, name);
            }
            kept
        });
        drop(states);
        self.metrics.observe_tick(started.elapsed());
    }

    /// Measures and decides one app at `now`: its pods from the shared cache, their load
    /// reports (the I/O), the pure [`compute_step`], then what it publishes (metrics, a log
    /// line and an Event for a change, the status when [`compute_write`] says so). Returns the
    /// step.
    pub async fn tick_app(
        &self,
        app: &WsgiApp,
        policy: &Policy,
        admin_port: u16,
        validated: &ValidatedApp,
        now: Instant,
    ) -> Result<Step, AutoscaleError> {
        let ns = app.namespace().unwrap_or_default();
        let name = app.name_any();
        let key = format!("{ns}/{name}");
        let pods = self.pods.pods_of(&ns, &name);
        let wall = Timestamp::now();
        let seed = now.duration_since(self.start).as_nanos() as u64 ^ 0x5851_F42D_4C95_7F2D;
        let (ready, pick, targets) = plan_scrape(&pods, wall, policy, admin_port, seed);
        let scraped = scrape_all(&targets, self.scrape_concurrency, self.scrape_timeout).await;
        let (results, elapsed): (Vec<_>, Vec<_>) = scraped.into_iter().unzip();
        for (r, t) in results.iter().zip(&targets) {
            if let Err(e) = r {
                debug!(app = %key, pod = %t.ip(), error = %e, "no load report");
            }
        }

        let current = app
            .status
            .as_ref()
            .and_then(|s| s.desired_replicas)
            .and_then(|r| u32::try_from(r).ok());
        let at = now.saturating_duration_since(self.start);
        let routing = self
            .routing
            .as_ref()
            .filter(|_| routing::takes_part(validated));
        let activator_port = match routing {
            Some(r) => r.port_of(&ns, &name).await,
            None => None,
        };
        let key2 = (ns.clone(), name.clone());
        let held = match routing {
            Some(r) => {
                let sum = r.demand.of(&key2, now);
                HeldDemand {
                    held: sum.held,
                    in_flight: sum.in_flight,
                    arrivals: sum.arrivals,
                    scale_to_zero: validated.autoscaling.scale_to_zero,
                    route: r.path(&key2, activator_port).route,
                }
            }
            None => HeldDemand::default(),
        };
        let step = {
            let mut states = self.apps.lock().await;
            let state = states.entry(key.clone()).or_insert_with(|| {
                self.metrics.init_scale(&ns, &name);
                AppState::new(app, ready.len() as u32, now)
            });
            compute_step(
                state,
                policy,
                &ready,
                &pick,
                &results,
                current,
                (at, now, wall),
                self.status_heartbeat,
                held,
            )
        };
        if let (Some(r), Some(port)) = (routing, activator_port) {
            let last_request = self
                .apps
                .lock()
                .await
                .get(&key)
                .and_then(|s| s.last_request);
            self.route_app(
                r,
                app,
                validated,
                policy,
                &ready,
                &step,
                held,
                last_request,
                port,
                at,
            )
            .await;
        }
        for (result, took) in step.scrapes.iter().zip(elapsed) {
            self.metrics.count_scrape(&ns, &name, result, took);
        }
        self.publish_decision(app, &step);
        // The reconciler applies a new recommendation now, while its status write is on the
        // way (the write would otherwise wake it only once it came back through the watch).
        if let Some(replicas) = step.status.recommended_replicas {
            self.recommendations.hand_over(
                &ns,
                &name,
                replicas,
                crate::status::published_recommendation(app),
            );
        }
        let Some(cause) = step.write else {
            return Ok(step);
        };
        self.patch_status(app, &step.load, &step.status).await?;
        self.metrics.count_autoscale_write(cause.as_str());
        if let Some(state) = self.apps.lock().await.get_mut(&key) {
            state.mark_written(step.status.clone(), step.load.clone());
        }
        Ok(step)
    }

    /// Decides where the app's traffic goes (Knative's rule, [`decide_path`]) and writes its
    /// public EndpointSlice when that changes: the ready pods, or the ready activators on the
    /// app's port. An idle app with scale to zero puts the activator in the path first, so the
    /// last pod goes only once requests are held instead of refused.
    #[allow(clippy::too_many_arguments)]
    async fn route_app(
        &self,
        routing: &Routing,
        app: &WsgiApp,
        v: &ValidatedApp,
        policy: &Policy,
        ready: &[ReadyPod],
        step: &Step,
        held: HeldDemand,
        last_request: Option<Duration>,
        port: u16,
        at: Duration,
    ) {
        let key = (v.namespace.clone(), v.name.clone());
        let before = routing.path(&key, Some(port));
        let demand = step.decision.figures.panic_demand.max(f64::from(held.held));
        let inputs = PathInputs {
            ready_pods: ready.len() as u32,
            pod_capacity: policy.pod_capacity,
            demand,
            burst_capacity: if held.idle(last_request, at) {
                -1.0
            } else {
                routing::burst_capacity(v)
            },
            settle: routing::SETTLE,
        };
        let decided = decide_path(before, &inputs, at);
        let pods: Vec<PodEndpoint> = ready
            .iter()
            .map(|p| PodEndpoint {
                ip: p.ip.to_string(),
                ready: true,
                serving: true,
                terminating: false,
                pod: None,
                node: None,
            })
            .collect();
        let activators = routing.activators();
        let (slice, route) = render_public_slice(
            &format!("{}{}", v.name, routing::PUBLIC_SLICE_SUFFIX),
            &v.namespace,
            &v.name,
            &v.owner,
            crate::layout::HTTP_PORT_NAME,
            decided.route,
            &pods,
            Some(v.port),
            &activators,
            port,
        );
        match routing.apply_slice(&slice).await {
            Ok(written) => {
                if written {
                    self.metrics.count_write("EndpointSlice");
                }
                routing.set_path(
                    &key,
                    PathState {
                        route,
                        covered_since: decided.covered_since,
                    },
                );
                if route != before.route {
                    let why = if route == Route::Activator {
                        format!(
                            "{} ready pods, demand {demand:.1}, burst capacity {}: requests wait at the activator",
                            ready.len(),
                            inputs.burst_capacity
                        )
                    } else {
                        format!(
                            "{} ready pods cover demand {demand:.1} and burst capacity {} for {} s",
                            ready.len(),
                            inputs.burst_capacity,
                            routing::SETTLE.as_secs()
                        )
                    };
                    info!(app = %format!("{}/{}", v.namespace, v.name), route = route.as_str(), reason = %why, "traffic path changed");
                    self.events.queue(Queued {
                        reporting: Reporting::Autoscaler,
                        regarding: app.object_ref(&()),
                        warning: false,
                        reason: if route == Route::Activator {
                            "ActivatorInPath".into()
                        } else {
                            "ActivatorOutOfPath".into()
                        },
                        action: "Route".into(),
                        note: why,
                        related: None,
                    });
                }
            }
            Err(e) => {
                self.metrics.count_error("apply_endpointslice");
                debug!(app = %v.name, error = %e, "cannot write the public EndpointSlice");
            }
        }
    }

    /// Logs, counts and queues an event for a decision that changes the pod count.
    fn publish_decision(&self, app: &WsgiApp, step: &Step) {
        let decision = &step.decision;
        if decision.action == Action::Hold {
            return;
        }
        let (ns, name) = (app.namespace().unwrap_or_default(), app.name_any());
        self.metrics
            .count_scale(&ns, &name, decision.action.as_str(), decision.panic);
        info!(
            app = %format!("{ns}/{name}"),
            from = step.before,
            replicas = decision.desired,
            panic = decision.panic,
            reason = %decision.reason,
            "autoscaler: {}",
            decision.action.as_str()
        );
        let verb = if decision.action == Action::ScaleUp {
            "ScaledUp"
        } else {
            "ScaledDown"
        };
        self.events.queue(Queued {
            reporting: Reporting::Autoscaler,
            regarding: app.object_ref(&()),
            warning: false,
            reason: verb.into(),
            action: "Autoscale".into(),
            note: format!(
                "{} -> {} pods: {}",
                step.before, decision.desired, decision.reason
            ),
            related: None,
        });
    }

    async fn patch_status(
        &self,
        app: &WsgiApp,
        load: &LoadSummary,
        autoscaler: &AutoscalerStatus,
    ) -> Result<(), AutoscaleError> {
        let name = app.name_any();
        let api: Api<WsgiApp> =
            Api::namespaced(self.client.clone(), &app.namespace().unwrap_or_default());
        let patch = serde_json::json!({
            "apiVersion": WsgiApp::api_version(&()),
            "kind": WsgiApp::kind(&()),
            "status": { "load": load, "autoscaler": autoscaler },
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| AutoscaleError::PatchStatus { name, source })?;
        Ok(())
    }
}

/// Until an activator pushes held demand (forever without an activator).
async fn wait_for_push(demand: Option<&routing::DemandBoard>) {
    match demand {
        Some(d) => d.wake.notified().await,
        None => std::future::pending().await,
    }
}

/// Runs the autoscaler once a second over the WsgiApps in `stores` (the controllers' caches)
/// until `stop`.
pub async fn run_autoscaler(
    autoscaler: Arc<Autoscaler>,
    stores: Vec<kube::runtime::reflector::Store<WsgiApp>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let demand = autoscaler.routing.as_ref().map(|r| r.demand.clone());
    loop {
        // The tick's scheduled instant, not the time it was polled: an app due every 2 s is
        // due on the grid, and a tick polled a little late does not push it to the third second.
        // A demand push with requests held runs a tick at once (the pushed apps are due).
        let at = tokio::select! {
            _ = stop.cancelled() => break,
            at = interval.tick() => at.into_std(),
            () = wait_for_push(demand.as_deref()) => Instant::now(),
        };
        let apps: Vec<Arc<WsgiApp>> = stores.iter().flat_map(|s| s.state()).collect();
        autoscaler.tick(&apps, at).await;
    }
}

#[cfg(test)]
mod tests;
