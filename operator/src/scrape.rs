//! The autoscaler's I/O around the pure decision ([`crate::autoscale`]): every tick, for each
//! WsgiApp with `autoscaling.enabled`, list its ready pods, read `GET /load` from their admin
//! port (concurrently, with a timeout and a bound; a random sample above `maxPodsScraped`),
//! decide, and publish: the status' `load` and `autoscaler` blocks (with the autoscaler's own
//! field manager), an Event and a log line when the recommendation changes, and metrics.
//!
//! One owner for the Deployment's replicas: this module never writes the Deployment. It
//! writes `status.autoscaler.recommendedReplicas`; the status change wakes the reconciler,
//! which applies the count within replicas.min..max ([`crate::status::compute_replicas`]) with
//! its field manager, as it applies `spec.replicas.desired` (the scale subresource that
//! `kubectl scale`, an HPA or KEDA drive) when autoscaling is off. While autoscaling is off
//! this module does nothing at all.

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
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, info, warn};
use wsgiscale_core::load::LoadReport;

use crate::autoscale::{
    compute_tick, decide, pick_sample, Action, Decision, PodLoad, PodSample, Policy, Samples,
    State, TickSample,
};
use crate::crd::{AutoscalerStatus, LoadSummary, WsgiApp};
use crate::metrics::Metrics;
use crate::render::selector_string;
use crate::validate::validate_app;

/// The field manager of the autoscaler's status writes (`status.load`, `status.autoscaler`).
pub const FIELD_MANAGER: &str = "wsgiscale-autoscaler";

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
    /// Listing the app's pods failed.
    #[error("list pods of {name}: {source}")]
    ListPods {
        /// The WsgiApp.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
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

/// Reads every address in `targets`, at most `concurrency` at once; the results are in the
/// order of `targets`.
pub async fn scrape_all(
    targets: &[SocketAddr],
    concurrency: usize,
    timeout: Duration,
) -> Vec<Result<LoadReport, ScrapeError>> {
    let mut out: Vec<Option<Result<LoadReport, ScrapeError>>> =
        targets.iter().map(|_| None).collect();
    let mut results = futures::stream::iter(targets.iter().copied().enumerate())
        .map(|(i, addr)| async move { (i, scrape_load(addr, timeout).await) })
        .buffer_unordered(concurrency.max(1));
    while let Some((i, r)) = results.next().await {
        out[i] = Some(r);
    }
    out.into_iter()
        .map(|r| r.unwrap_or(Err(ScrapeError::Timeout)))
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
pub fn compute_ready_pods(pods: &[Pod], now: Timestamp) -> Vec<ReadyPod> {
    pods.iter()
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

/// Whether the status is worth writing: the recommendation or panic mode changed, or the load
/// summary last written is older than `refresh`.
pub fn should_write_status(
    previous: Option<&AutoscalerStatus>,
    new: &AutoscalerStatus,
    last_write: Option<Instant>,
    now: Instant,
    refresh: Duration,
) -> bool {
    let changed = previous.is_none_or(|p| {
        p.recommended_replicas != new.recommended_replicas || p.panic_mode != new.panic_mode
    });
    changed || last_write.is_none_or(|w| now.saturating_duration_since(w) >= refresh)
}

/// What the autoscaler keeps per app.
#[derive(Debug, Clone)]
struct AppState {
    samples: Samples,
    state: State,
    next: Instant,
    last_write: Option<Instant>,
    written: Option<AutoscalerStatus>,
}

/// The autoscaler: its clients and the state of every autoscaled app.
pub struct Autoscaler {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// Timeout of one scrape.
    pub scrape_timeout: Duration,
    /// Scrapes at once, per app.
    pub scrape_concurrency: usize,
    /// The load summary is rewritten at least this often while nothing else changes.
    pub status_refresh: Duration,
    start: Instant,
    apps: tokio::sync::Mutex<HashMap<String, AppState>>,
    /// Each autoscaled app's policy and admin port, for the generation it was validated at.
    policies: std::sync::Mutex<HashMap<String, Validated>>,
}

/// An app's policy and admin port (None: its spec is invalid or not autoscaled) for the
/// generation it was validated at.
type Validated = (Option<i64>, Option<(Policy, i32)>);

impl Autoscaler {
    /// An autoscaler on `client`; `instance` names this operator replica in events.
    pub fn new(client: Client, instance: Option<String>, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Autoscaler {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            scrape_timeout: Duration::from_secs(1),
            scrape_concurrency: 16,
            status_refresh: Duration::from_secs(10),
            start: Instant::now(),
            apps: tokio::sync::Mutex::new(HashMap::new()),
            policies: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// One tick at `now` over `apps` (the WsgiApps the operator watches): each autoscaled app
    /// whose own tick is due is measured and decided; the state of apps no longer autoscaled is
    /// dropped. Errors are logged and counted; the app is retried at its next tick.
    pub async fn tick(&self, apps: &[Arc<WsgiApp>], now: Instant) {
        let mut keep = Vec::new();
        let mut due = Vec::new();
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
                        .map(|v| (Policy::from_app(&v), v.admin_port));
                    policies.insert(key.clone(), (generation, policy));
                }
                let Some((_, Some((policy, port)))) = policies.get(&key) else {
                    continue;
                };
                if states.get(&key).is_none_or(|s| now >= s.next) {
                    due.push((app.clone(), *policy, *port, key.clone()));
                }
                keep.push(key);
            }
            policies.retain(|k, _| keep.contains(k));
        }
        // Apps are measured side by side, so one slow app does not delay the others.
        futures::stream::iter(due)
            .for_each_concurrent(8, |(app, policy, port, key)| async move {
                if let Err(e) = self.tick_app(&app, &policy, port, now).await {
                    self.metrics.count_error(match e {
                        AutoscaleError::ListPods { .. } => "autoscale_list_pods",
                        AutoscaleError::PatchStatus { .. } => "autoscale_patch_status",
                    });
                    warn!(app = %key, error = %e, "autoscaler tick failed");
                }
            })
            .await;
        self.apps.lock().await.retain(|k, _| keep.contains(k));
    }

    /// Measures and decides one app at `now`, publishing the outcome. Returns the decision.
    pub async fn tick_app(
        &self,
        app: &WsgiApp,
        policy: &Policy,
        admin_port: i32,
        now: Instant,
    ) -> Result<Decision, AutoscaleError> {
        let ns = app.namespace().unwrap_or_default();
        let name = app.name_any();
        let key = format!("{ns}/{name}");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let list = pods
            .list(&ListParams::default().labels(&selector_string(&name)))
            .await
            .map_err(|source| AutoscaleError::ListPods {
                name: key.clone(),
                source,
            })?;
        let ready = compute_ready_pods(&list.items, Timestamp::now());
        let seed = now.duration_since(self.start).as_nanos() as u64 ^ 0x5851_F42D_4C95_7F2D;
        let pick = pick_sample(ready.len(), policy.max_pods_scraped as usize, seed);
        let port = u16::try_from(admin_port).unwrap_or(9191);
        let targets: Vec<SocketAddr> = pick
            .iter()
            .map(|&i| SocketAddr::new(ready[i].ip, port))
            .collect();
        let results = scrape_all(&targets, self.scrape_concurrency, self.scrape_timeout).await;
        let mut samples = Vec::with_capacity(results.len());
        for (i, r) in pick.iter().zip(results) {
            let load = match r {
                Ok(report) if !report.draining => {
                    self.metrics.count_scrape("ok");
                    Some(PodLoad::from_report(&report))
                }
                Ok(_) => {
                    self.metrics.count_scrape("draining");
                    None
                }
                Err(e) => {
                    self.metrics.count_scrape(e.as_str());
                    debug!(app = %key, pod = %ready[*i].ip, error = %e, "no load report");
                    None
                }
            };
            samples.push(PodSample {
                age: ready[*i].age,
                load,
            });
        }

        let at = now.saturating_duration_since(self.start);
        let current = app
            .status
            .as_ref()
            .and_then(|s| s.desired_replicas)
            .and_then(|r| u32::try_from(r).ok());
        let tick = compute_tick(at, ready.len() as u32, &samples, policy);
        let (decision, before, previous, last_write) = {
            let mut states = self.apps.lock().await;
            let entry = states.entry(key.clone()).or_insert_with(|| AppState {
                samples: Samples::new(),
                state: State::new(current.unwrap_or(ready.len() as u32)),
                next: now,
                last_write: None,
                written: app.status.as_ref().and_then(|s| s.autoscaler.clone()),
            });
            entry.samples.push(tick, policy.stable_window);
            if let Some(c) = current {
                entry.state.current = c;
            }
            let before = entry.state.current;
            let decision = decide(policy, &entry.samples, &entry.state, at);
            entry.state = decision.state.clone();
            entry.next = now + policy.tick;
            (decision, before, entry.written.clone(), entry.last_write)
        };

        let wall = Time(Timestamp::now());
        let (load, status) = build_status(&tick, &decision, wall, previous.as_ref());
        if decision.action != Action::Hold {
            self.metrics.count_scale(decision.action.as_str());
            info!(
                app = %key,
                from = before,
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
            let note = format!("{before} -> {} pods: {}", decision.desired, decision.reason);
            self.publish_event(app, verb, note).await;
        }
        if should_write_status(
            previous.as_ref(),
            &status,
            last_write,
            now,
            self.status_refresh,
        ) {
            self.patch_status(app, &load, &status).await?;
            let mut states = self.apps.lock().await;
            if let Some(entry) = states.get_mut(&key) {
                entry.last_write = Some(now);
                entry.written = Some(status);
            }
        }
        Ok(decision)
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

    /// Events are best effort: a failure is logged and counted.
    async fn publish_event(&self, app: &WsgiApp, reason: &str, note: String) {
        let event = Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Autoscale".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &app.object_ref(&())).await {
            self.metrics.count_error("publish_event");
            warn!(error = %e, reason, "cannot publish event");
        }
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
    loop {
        // The tick's scheduled instant, not the time it was polled: an app due every 2 s is
        // due on the grid, and a tick polled a little late does not push it to the third second.
        let at = tokio::select! {
            _ = stop.cancelled() => break,
            at = interval.tick() => at.into_std(),
        };
        let apps: Vec<Arc<WsgiApp>> = stores.iter().flat_map(|s| s.state()).collect();
        autoscaler.tick(&apps, at).await;
    }
}

#[cfg(test)]
mod tests;
