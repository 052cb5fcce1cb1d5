//! `validate`: a [`WsgiApp`] as stored in the cluster -> a [`ValidatedApp`] with every default
//! resolved and every rule checked, or the list of what is wrong with it.
//!
//! The CRD's CEL rules refuse most bad specs at `kubectl apply`; this is the second line for the
//! ones that got past admission (an older CRD, a rule the schema cannot express, a size that
//! overflows). Its last check resolves the server's [`Settings`] that the pods will get
//! ([`ValidatedApp::server_settings`]) with the server's own typed `resolve`, so a spec that
//! validates is one the server accepts; nothing is rendered to text and parsed back, and the
//! operator's own environment plays no part.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EnvFromSource, EnvVar, LocalObjectReference, PodTemplateSpec, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use wsgiscale_core::config::hooks::Hooks;
use wsgiscale_core::config::protocols::ClientVerify;
use wsgiscale_core::config::{
    resolve, Algorithm, AppSpec, BindAddr, ByteSize, Dur, HeaderLimits, LogFormat, LogHeader,
    ProxyConfig, ProxyList, Settings, StaticConfig, StaticMount, UrlPrefix, WorkerRange,
};
use wsgiscale_core::shutdown::ShutdownBudget;
use wsgiscale_core::units::parse_size;

use crate::crd::{
    AutoscalingSpec, BusynessSpec, HttpSpec, LifecycleSpec, LimitsSpec, LoggingSpec, PodOverrides,
    ProbesSpec, ProxySpec, PullPolicy, ReplicasSpec, ServiceSpec, ServiceType, StaticSpec,
    WorkersSpec, WsgiApp,
};
pub mod overrides;
mod serving;

use crate::layout::{
    APP_LABEL, CLIENT_CA_DIR, CONFIG_DIR, CONFIG_KEY, INJECT_DIR, RESERVED_VOLUME_PREFIX, TLS_DIR,
    TMP_DIR,
};
use overrides::{validate_pod_overrides, Owned};
pub use serving::{Http2, Tls};

/// The defaults of every optional field. Those of server settings are the server's own
/// (`wsgiscale_core::config::defaults`), not copies; a test checks the CRD's `Default:` texts
/// and CEL literals against these.
pub mod defaults {
    use wsgiscale_core::config::defaults as server;

    /// Worker processes per pod (min, and so max and initial).
    pub const WORKERS_MIN: i32 = server::WORKERS as i32;
    /// Threads per worker.
    pub const THREADS: i32 = server::THREADS as i32;
    /// Workers spawned per decision.
    pub const STEP: i32 = server::CHEAPER_STEP as i32;
    /// spare/busyness checks.
    pub const OVERLOAD_CHECKS: i32 = server::CHEAPER_OVERLOAD as i32;
    /// spare2 checks.
    pub const IDLE_CHECKS: i32 = server::CHEAPER_IDLE as i32;
    /// backlog threshold.
    pub const BACKLOG: i32 = server::CHEAPER_BACKLOG as i32;
    /// busyness lower threshold, percent.
    pub const BUSYNESS_MIN_PERCENT: i32 = server::CHEAPER_BUSYNESS_MIN as i32;
    /// busyness upper threshold, percent.
    pub const BUSYNESS_MAX_PERCENT: i32 = server::CHEAPER_BUSYNESS_MAX as i32;
    /// busyness retirement multiplier.
    pub const BUSYNESS_MULTIPLIER: i32 = server::CHEAPER_BUSYNESS_MULTIPLIER as i32;
    /// busyness anti-flap penalty.
    pub const BUSYNESS_PENALTY: i32 = server::CHEAPER_BUSYNESS_PENALTY as i32;
    /// busyness emergency queue threshold.
    pub const BUSYNESS_BACKLOG: i32 = server::CHEAPER_BUSYNESS_BACKLOG as i32;
    /// HTTP container port.
    pub const PORT: i32 = 8000;
    /// Admin container port.
    pub const ADMIN_PORT: i32 = 9191;
    /// Service port.
    pub const SERVICE_PORT: i32 = 80;
    /// Graceful shutdown deadline, seconds.
    pub const GRACEFUL_TIMEOUT_SECONDS: i32 = server::GRACEFUL_TIMEOUT.as_secs() as i32;
    /// preStop sleep, seconds.
    pub const PRE_STOP_DELAY_SECONDS: i32 = 5;
    /// Largest request body.
    pub const MAX_BODY: &str = "64Mi";
    /// Request queue bound.
    pub const MAX_QUEUE: i32 = server::MAX_QUEUE as i32;
    /// Keep-alive timeout, seconds.
    pub const KEEPALIVE_TIMEOUT_SECONDS: i32 = server::KEEPALIVE_TIMEOUT.as_secs() as i32;
    /// Body timeout, seconds.
    pub const BODY_TIMEOUT_SECONDS: i32 = server::BODY_TIMEOUT.as_secs() as i32;
    /// Log filter.
    pub const LOG_LEVEL: &str = server::LOG_LEVEL;
    /// Trusted proxies of a pod behind a Service.
    pub const FORWARDED_ALLOW_IPS: &str = server::FORWARDED_ALLOW_IPS_IN_CLUSTER;
    /// Longest request line, bytes.
    pub const REQUEST_LINE_BYTES: i32 = server::LIMIT_REQUEST_LINE as i32;
    /// Most header fields.
    pub const HEADER_FIELDS: i32 = server::LIMIT_REQUEST_FIELDS as i32;
    /// Largest header field, bytes.
    pub const HEADER_FIELD_BYTES: i32 = server::LIMIT_REQUEST_FIELD_SIZE as i32;
    /// Largest header section, bytes.
    pub const HEADERS_BYTES: i32 = server::LIMIT_REQUEST_HEADERS_SIZE as i32;
    /// Static files' max-age, seconds.
    pub const STATIC_MAX_AGE_SECONDS: i32 = server::STATIC_MAX_AGE.as_secs() as i32;
    /// Fewest pods.
    pub const REPLICAS_MIN: i32 = 1;
    /// The program that runs the server.
    pub const COMMAND: &str = "wsgiscale";
    /// Memory of the server beyond its workers.
    pub const MEMORY_OVERHEAD: &str = "128Mi";
    /// Autoscaler target utilization, percent.
    pub const TARGET_UTILIZATION_PERCENT: i32 = 70;
    /// Autoscaler stable window, seconds.
    pub const STABLE_WINDOW_SECONDS: i32 = 60;
    /// Autoscaler panic window, seconds.
    pub const PANIC_WINDOW_SECONDS: i32 = 6;
    /// Autoscaler panic threshold, percent of ready pods.
    pub const PANIC_THRESHOLD_PERCENT: i32 = 200;
    /// Autoscaler most growth per decision, multiple of ready pods.
    pub const MAX_SCALE_UP_RATE: i32 = 1000;
    /// Autoscaler most shrink per decision, divisor of ready pods.
    pub const MAX_SCALE_DOWN_RATE: i32 = 2;
    /// Autoscaler scale-down delay, seconds.
    pub const SCALE_DOWN_DELAY_SECONDS: i32 = 0;
    /// Autoscaler tolerance, percent.
    pub const TOLERANCE_PERCENT: i32 = 10;
    /// Autoscaler tick, seconds.
    pub const TICK_SECONDS: i32 = 2;
    /// Autoscaler most pods scraped per decision.
    pub const MAX_PODS_SCRAPED: i32 = 16;
    /// Seconds a new pod gets to pass its startup probe.
    pub const STARTUP_TIMEOUT_SECONDS: i32 = 300;
    /// Seconds between two startup probes (not a setting: the budget is).
    pub const STARTUP_PERIOD_SECONDS: i32 = 2;
    /// Liveness probe: seconds between probes.
    pub const LIVENESS_PERIOD_SECONDS: i32 = 10;
    /// Liveness probe: seconds one probe may take.
    pub const LIVENESS_TIMEOUT_SECONDS: i32 = 2;
    /// Liveness probe: failures in a row before a restart.
    pub const LIVENESS_FAILURE_THRESHOLD: i32 = 3;
    /// Readiness probe: seconds between probes.
    pub const READINESS_PERIOD_SECONDS: i32 = 5;
    /// Readiness probe: seconds one probe may take.
    pub const READINESS_TIMEOUT_SECONDS: i32 = 2;
    /// Readiness probe: failures in a row before the pod is unready.
    pub const READINESS_FAILURE_THRESHOLD: i32 = 2;
}

/// One thing wrong with a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field at fault, e.g. `spec.workers.initial`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Why a WsgiApp cannot be turned into objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The object has no namespace or uid: it did not come from the API server.
    #[error("the WsgiApp has no {0}: only objects read from the API server can be reconciled")]
    MissingMetadata(&'static str),
    /// The spec breaks one or more rules.
    #[error("invalid spec: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidSpec(Vec<FieldError>),
}

/// The Service, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// ClusterIP, NodePort or LoadBalancer.
    pub type_: ServiceType,
    /// Service port.
    pub port: i32,
    /// Service annotations.
    pub annotations: BTreeMap<String, String>,
    /// Extra Service labels.
    pub labels: BTreeMap<String, String>,
}

/// Worker limits and algorithm knobs, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workers {
    /// Fewest workers.
    pub min: u32,
    /// Most workers.
    pub max: u32,
    /// Workers at boot.
    pub initial: u32,
    /// Threads per worker.
    pub threads: u32,
    /// Workers spawned per decision.
    pub step: u32,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// spare/busyness checks.
    pub overload_checks: u32,
    /// spare2 checks.
    pub idle_checks: u32,
    /// backlog threshold.
    pub backlog: u32,
    /// busyness lower threshold, percent.
    pub busyness_min_percent: u32,
    /// busyness upper threshold, percent.
    pub busyness_max_percent: u32,
    /// busyness multiplier.
    pub busyness_multiplier: u32,
    /// busyness penalty.
    pub busyness_penalty: u32,
    /// busyness emergency backlog.
    pub busyness_backlog: u32,
}

/// Lifecycle rules, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// Per-request deadline.
    pub timeout: Option<Duration>,
    /// Requests before recycling (0: never).
    pub max_requests: u64,
    /// Extra random requests per worker.
    pub max_requests_jitter: u64,
    /// Age before recycling.
    pub max_lifetime: Option<Duration>,
    /// RSS before recycling, bytes.
    pub max_rss: Option<u64>,
    /// Drain deadline on shutdown.
    pub graceful_timeout: Duration,
    /// preStop sleep.
    pub pre_stop_delay: Duration,
}

impl Lifecycle {
    /// The pod's terminationGracePeriodSeconds: the preStop sleep, then the server's whole
    /// shutdown from its drain deadline (the contract both follow, [`ShutdownBudget`]).
    pub fn termination_grace_period_seconds(&self) -> i64 {
        ShutdownBudget::new(self.graceful_timeout)
            .termination_grace_period(self.pre_stop_delay)
            .as_secs() as i64
    }
}

/// HTTP front, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http {
    /// Largest request body, bytes.
    pub max_body: u64,
    /// Queue bound.
    pub max_queue: u32,
    /// Keep-alive timeout.
    pub keepalive_timeout: Duration,
    /// Body timeout.
    pub body_timeout: Duration,
    /// One log line per request.
    pub access_log: bool,
    /// Request headers in each access line.
    pub access_log_request_headers: Vec<LogHeader>,
    /// Response headers in each access line.
    pub access_log_response_headers: Vec<LogHeader>,
    /// Trusted proxies and the root path.
    pub proxy: ProxyConfig,
    /// Head limits.
    pub limits: HeaderLimits,
}

/// Replica bounds, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicas {
    /// Fewest pods.
    pub min: i32,
    /// Most pods, if bounded.
    pub max: Option<i32>,
    /// The scale subresource's count, if set.
    pub desired: Option<i32>,
}

impl Replicas {
    /// `n` kept within min..max.
    pub fn clamp(&self, n: i32) -> i32 {
        let n = n.max(self.min);
        match self.max {
            Some(max) => n.min(max),
            None => n,
        }
    }
}

/// One probe's timing, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    /// Seconds between two probes.
    pub period_seconds: i32,
    /// Seconds one probe may take.
    pub timeout_seconds: i32,
    /// Failures in a row that count.
    pub failure_threshold: i32,
}

/// The server container's probes, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probes {
    /// The startup probe's timing: `failure_threshold x period_seconds` covers the budget.
    pub startup: ProbeTiming,
    /// The liveness probe's.
    pub liveness: ProbeTiming,
    /// The readiness probe's.
    pub readiness: ProbeTiming,
}

/// Autoscaling policy, resolved (used by the autoscaler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoscaling {
    /// The operator sets the pod count from load.
    pub enabled: bool,
    /// Target busy share, percent.
    pub target_utilization_percent: u32,
    /// Stable window.
    pub stable_window: Duration,
    /// Panic window.
    pub panic_window: Duration,
    /// Panic threshold, percent of ready pods.
    pub panic_threshold_percent: u32,
    /// Most growth per decision, multiple of ready pods.
    pub max_scale_up_rate: u32,
    /// Most shrink per decision, divisor of ready pods.
    pub max_scale_down_rate: u32,
    /// Delay before scaling down.
    pub scale_down_delay: Duration,
    /// Ignored relative change, percent.
    pub tolerance_percent: u32,
    /// Time between decisions.
    pub tick: Duration,
    /// Most pods scraped per decision.
    pub max_pods_scraped: u32,
    /// Spare capacity in requests below which the activator is in the path (None: one
    /// pod's worth; negative: always).
    pub burst_capacity: Option<i32>,
    /// The idle period after which the app may go to zero pods (None: scale to zero off).
    pub scale_to_zero: Option<Duration>,
    /// What the activator may hold for the app.
    pub hold: wsgiscale_core::activator::HoldLimits,
}

/// A WsgiApp with every default resolved and every rule checked: what `render` needs, and
/// nothing optional that has a default.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedApp {
    /// metadata.name.
    pub name: String,
    /// metadata.namespace.
    pub namespace: String,
    /// The owner reference every child carries (controller, blockOwnerDeletion).
    pub owner: OwnerReference,
    /// metadata.generation.
    pub generation: Option<i64>,
    /// Container image.
    pub image: String,
    /// Pull policy, if set.
    pub image_pull_policy: Option<PullPolicy>,
    /// Pull secrets.
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// MODULE:CALLABLE.
    pub app: AppSpec,
    /// Directory to change into.
    pub chdir: Option<String>,
    /// sys.path additions.
    pub pythonpath: Vec<String>,
    /// Virtualenv.
    pub venv: Option<String>,
    /// Import in the fork server.
    pub preload: bool,
    /// Program running the server.
    pub command: Vec<String>,
    /// Container environment.
    pub env: Vec<EnvVar>,
    /// Container environment sources.
    pub env_from: Vec<EnvFromSource>,
    /// HTTP port.
    pub port: i32,
    /// Admin port.
    pub admin_port: i32,
    /// The Service.
    pub service: Service,
    /// Worker limits.
    pub workers: Workers,
    /// Lifecycle rules.
    pub lifecycle: Lifecycle,
    /// HTTP front.
    pub http: Http,
    /// Static files.
    pub static_files: StaticConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Replica bounds.
    pub replicas: Replicas,
    /// Autoscaling policy.
    pub autoscaling: Autoscaling,
    /// Container resources, with memory sizing applied.
    pub resources: Option<ResourceRequirements>,
    /// Pod settings.
    pub pod: PodOverrides,
    /// The server container's probes.
    pub probes: Probes,
    /// `spec.podOverrides`, read and checked: merged over the rendered pod template.
    pub pod_overrides: Option<PodTemplateSpec>,
    /// wsgiscale brought into the pod, when the image lacks it.
    pub inject: Option<Inject>,
    /// Server hooks.
    pub hooks: Hooks,
    /// HTTPS, when configured.
    pub tls: Option<Tls>,
    /// HTTP/2 and h2c.
    pub http2: Http2,
}

impl ValidatedApp {
    /// Every setting the app's server gets, typed: the restart half goes on its command line
    /// and the live half in its config file ([`Settings::split_live`]). Every live setting is
    /// written out, so the operator's defaults, not the server's, are in force.
    pub fn server_settings(&self) -> Settings {
        let w = &self.workers;
        let l = &self.lifecycle;
        let h = &self.http;
        let tls = self.tls.as_ref();
        let any = std::net::Ipv4Addr::UNSPECIFIED;
        Settings {
            app: Some(self.app.to_string()),
            config: Some(format!("{CONFIG_DIR}/{CONFIG_KEY}").into()),
            ignore_env: true,
            bind: vec![BindAddr::Tcp((any, port_u16(self.port)).into())],
            admin_bind: Some(BindAddr::Tcp((any, self.admin_port_number()).into())),
            workers: Some(WorkerRange {
                min: w.min,
                max: w.max,
            }),
            workers_initial: Some(w.initial),
            cheaper_algo: Some(w.algorithm),
            cheaper_step: Some(w.step),
            cheaper_overload: Some(w.overload_checks),
            cheaper_idle: Some(w.idle_checks),
            cheaper_backlog: Some(w.backlog),
            cheaper_busyness_min: Some(w.busyness_min_percent),
            cheaper_busyness_max: Some(w.busyness_max_percent),
            cheaper_busyness_multiplier: Some(w.busyness_multiplier),
            cheaper_busyness_penalty: Some(w.busyness_penalty),
            cheaper_busyness_backlog: Some(w.busyness_backlog),
            threads: Some(w.threads),
            front_threads: None,
            chdir: self.chdir.clone().map(Into::into),
            pythonpath: self.pythonpath.iter().map(Into::into).collect(),
            venv: self.venv.clone().map(Into::into),
            preload: (!self.preload).then_some(false),
            max_body: Some(ByteSize(h.max_body)),
            // Buffering and its temporary files keep the server's defaults (the pod's /tmp).
            body_buffer: None,
            response_buffer: None,
            response_spill: None,
            temp_dir: None,
            max_queue: Some(h.max_queue),
            keepalive_timeout: Some(Dur(h.keepalive_timeout)),
            body_timeout: Some(Dur(h.body_timeout)),
            graceful_timeout: Some(Dur(l.graceful_timeout)),
            timeout: l.timeout.map(Dur),
            max_requests: Some(l.max_requests),
            max_requests_jitter: Some(l.max_requests_jitter),
            max_lifetime: l.max_lifetime.map(Dur),
            max_rss: l.max_rss.map(ByteSize),
            log_format: Some(self.log_format),
            log_level: Some(self.log_level.clone()),
            access_log: h.access_log.then_some(true),
            post_load: self.hooks.post_load.clone(),
            on_reload: self.hooks.on_reload.clone(),
            post_fork: self.hooks.post_fork.clone(),
            post_worker_init: self.hooks.post_worker_init.clone(),
            worker_exit: self.hooks.worker_exit.clone(),
            pre_request: self.hooks.pre_request.clone(),
            post_request: self.hooks.post_request.clone(),
            tls_bind: tls
                .iter()
                .map(|t| BindAddr::Tcp((any, port_u16(t.port)).into()))
                .collect(),
            tls_cert: tls.map(|_| format!("{TLS_DIR}/tls.crt").into()),
            tls_key: tls.map(|_| format!("{TLS_DIR}/tls.key").into()),
            tls_client_ca: tls
                .and_then(|t| t.client_ca_secret_name.as_ref())
                .map(|_| format!("{CLIENT_CA_DIR}/ca.crt").into()),
            tls_client_verify: tls
                .map(|t| t.client_verify)
                .filter(|v| *v != ClientVerify::Off),
            http2: (!self.http2.enabled).then_some(false),
            h2c: self.http2.h2c.then_some(true),
            h2c_allow_ips: self.http2.h2c_allow_ips.clone(),
            access_log_request_header: h.access_log_request_headers.clone(),
            access_log_response_header: h.access_log_response_headers.clone(),
            forwarded_allow_ips: Some(h.proxy.trusted.clone()),
            forwarded_headers: Some(h.proxy.headers),
            root_path: (!h.proxy.root_path.is_root()).then(|| h.proxy.root_path.clone()),
            outside_root_path: Some(h.proxy.outside_root_path),
            limit_request_line: Some(ByteSize(h.limits.request_line as u64)),
            limit_request_fields: Some(h.limits.fields as u32),
            limit_request_field_size: Some(ByteSize(h.limits.field_size as u64)),
            limit_request_headers_size: Some(ByteSize(h.limits.headers_size as u64)),
            r#static: self.static_files.mounts.clone(),
            static_max_age: Some(Dur(self.static_files.max_age.unwrap_or_default())),
        }
    }
}

/// A port validated to 1..=65535 (0 is unreachable: validation refused anything else).
fn port_u16(port: i32) -> u16 {
    u16::try_from(port).unwrap_or_default()
}

impl ValidatedApp {
    /// The admin port as the server binds it and the autoscaler scrapes it: one rule for both.
    pub fn admin_port_number(&self) -> u16 {
        port_u16(self.admin_port)
    }
}

/// `spec.inject`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inject {
    /// How the package reaches the pod.
    pub source: crate::crd::InjectSource,
    /// The inject image.
    pub image: String,
    /// The image's Python, if not python3/python on PATH.
    pub python: Option<String>,
}

/// The inject image of this operator's version.
pub fn default_inject_image() -> String {
    format!(
        "ghcr.io/wsgiscale/wsgiscale-inject:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Collects field errors while the spec is resolved.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: &str, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_string(),
            reason: reason.into(),
        });
    }

    /// `value` (or `default`) checked against `lo..=hi`.
    fn int(&mut self, field: &str, value: Option<i32>, default: i32, lo: i32, hi: i32) -> i32 {
        let v = value.unwrap_or(default);
        if v < lo || v > hi {
            self.push(field, format!("{v} is outside {lo}..={hi}"));
            return default;
        }
        v
    }

    /// A non-negative count.
    fn count(&mut self, field: &str, value: Option<i64>) -> u64 {
        match value {
            None => 0,
            Some(v) if v < 0 => {
                self.push(field, format!("{v} is negative"));
                0
            }
            Some(v) => v as u64,
        }
    }

    /// `value` parsed by `T`'s own parser (the server's).
    fn parse<T: std::str::FromStr<Err = String>>(&mut self, field: &str, value: &str) -> Option<T> {
        match value.parse() {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(field, e);
                None
            }
        }
    }

    fn size(&mut self, field: &str, value: &str) -> Option<u64> {
        match parse_size(value) {
            Ok(b) => Some(b),
            Err(e) => {
                self.push(field, e.to_string());
                None
            }
        }
    }
}

fn seconds(s: i32) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

/// Whether `name` is a DNS-1035 label (what a Service name must be).
fn is_dns1035_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-'
}

/// Checks `app` and resolves its defaults.
pub fn validate_app(app: &WsgiApp) -> Result<ValidatedApp, ValidationError> {
    let namespace = app
        .namespace()
        .ok_or(ValidationError::MissingMetadata("namespace"))?;
    let mut owner = app
        .controller_owner_ref(&())
        .ok_or(ValidationError::MissingMetadata("uid"))?;
    // Foreground deletion of the WsgiApp waits for its children.
    owner.block_owner_deletion = Some(true);
    let name = app.name_any();
    let spec = &app.spec;
    let mut errs = Errors::default();

    if !is_dns1035_label(&name) {
        errs.push(
            "metadata.name",
            "must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, at most 63 characters)",
        );
    }
    if spec.image.trim().is_empty() {
        errs.push("spec.image", "must not be empty");
    }
    let app_spec = match spec.app.parse::<AppSpec>() {
        Ok(a) => Some(a),
        Err(e) => {
            errs.push("spec.app", e);
            None
        }
    };
    for (i, p) in spec.pythonpath.iter().enumerate() {
        if p.is_empty() || p.contains(':') {
            errs.push(
                &format!("spec.pythonpath[{i}]"),
                "must be a non-empty path without ':'",
            );
        }
    }
    for (i, e) in spec.env.iter().enumerate() {
        if e.name.starts_with("WSGISCALE_") {
            errs.push(
                &format!("spec.env[{i}].name"),
                format!("{} would override the WsgiApp's fields", e.name),
            );
        }
    }
    if spec.command.iter().any(|c| c.is_empty()) {
        errs.push("spec.command", "must not contain empty strings");
    }
    let inject = spec
        .inject
        .as_ref()
        .filter(|i| i.enabled.unwrap_or(false))
        .map(|i| Inject {
            source: i.source.unwrap_or_default(),
            image: i.image.clone().unwrap_or_else(default_inject_image),
            python: i.python.clone(),
        });
    if inject.is_some() && !spec.command.is_empty() {
        errs.push(
            "spec.command",
            "command and inject.enabled are exclusive: with inject the operator runs the wsgiscale it brings",
        );
    }
    if let Some(i) = &inject {
        let pod = spec.pod.as_ref();
        for (n, m) in pod.iter().flat_map(|p| p.volume_mounts.iter()).enumerate() {
            if m.mount_path == INJECT_DIR {
                errs.push(
                    &format!("spec.pod.volumeMounts[{n}].mountPath"),
                    "/wsgiscale is where inject mounts the package",
                );
            }
        }
        if i.image.is_empty() {
            errs.push("spec.inject.image", "must not be empty");
        }
        if i.python
            .as_deref()
            .is_some_and(|p| p.is_empty() || p.contains('\0'))
        {
            errs.push("spec.inject.python", "must be a non-empty name or path");
        }
    }

    let port = errs.int("spec.port", spec.port, defaults::PORT, 1, 65535);
    let admin_port = errs.int(
        "spec.adminPort",
        spec.admin_port,
        defaults::ADMIN_PORT,
        1,
        65535,
    );
    if port == admin_port {
        errs.push("spec.adminPort", "must differ from spec.port");
    }

    let service = resolve_service(spec.service.as_ref(), &mut errs);
    let workers = resolve_workers(spec.workers.as_ref(), &mut errs);
    let lifecycle_spec = spec.lifecycle.clone().unwrap_or_default();
    let http = resolve_http(spec.http.as_ref(), &mut errs);
    let static_files = resolve_static(spec.static_files.as_ref(), &mut errs);
    let LoggingSpec { format, level } = spec.logging.clone().unwrap_or_default();
    let replicas = resolve_replicas(spec.replicas.as_ref(), &mut errs);
    let autoscaling = resolve_autoscaling(spec.autoscaling.as_ref(), &mut errs);
    if autoscaling.enabled && replicas.max.is_none() {
        errs.push(
            "spec.replicas.max",
            "is required when autoscaling.enabled is true",
        );
    }
    let mut autoscaling = autoscaling;
    let to_zero = spec.scale_to_zero.clone().unwrap_or_default();
    let idle = errs.int(
        "spec.scaleToZero.idleSeconds",
        to_zero.idle_seconds,
        300,
        30,
        86_400,
    );
    if to_zero.enabled == Some(true) {
        if !autoscaling.enabled {
            errs.push(
                "spec.scaleToZero.enabled",
                "needs autoscaling.enabled: the autoscaler decides when the last pod goes",
            );
        }
        if spec.tls.is_some() {
            errs.push(
                "spec.scaleToZero.enabled",
                "is not available with tls: the activator forwards plain HTTP",
            );
        }
        autoscaling.scale_to_zero = Some(seconds(idle));
    }
    if let Some(a) = &spec.activator {
        let d = wsgiscale_core::activator::HoldLimits::default();
        let requests = errs.int(
            "spec.activator.maxHeldRequests",
            a.max_held_requests,
            d.max_requests as i32,
            1,
            1_000_000,
        );
        let wait = errs.int(
            "spec.activator.maxWaitSeconds",
            a.max_wait_seconds,
            (d.max_wait_ms / 1000) as i32,
            1,
            3600,
        );
        let bytes = match &a.max_held_bytes {
            Some(v) => errs
                .size("spec.activator.maxHeldBytes", v)
                .unwrap_or(d.max_bytes),
            None => d.max_bytes,
        };
        autoscaling.hold = wsgiscale_core::activator::HoldLimits {
            max_requests: requests as u32,
            max_bytes: bytes,
            max_wait_ms: wait as u64 * 1000,
        };
    }
    if autoscaling.enabled && replicas.min == 0 && autoscaling.scale_to_zero.is_none() {
        errs.push(
            "spec.replicas.min",
            "must be at least 1 when autoscaling.enabled is true unless scaleToZero.enabled: \
             only then does the activator hold the first request and wake the app",
        );
    }

    // Memory sizing: overhead + maxWorkers x perWorker, also the default per-worker RSS limit.
    let mut per_worker = None;
    let mut sized_memory = None;
    if let Some(sizing) = &spec.memory_sizing {
        let limit = wsgiscale_core::config::defaults::WORKERS_LIMIT as i32;
        let sized_for = errs.int(
            "spec.memorySizing.maxWorkers",
            sizing.max_workers,
            workers.max as i32,
            1,
            limit,
        );
        if (workers.max as i32) > sized_for {
            errs.push(
                "spec.workers.max",
                format!(
                    "{} is above memorySizing.maxWorkers {sized_for}: the pods' memory is sized for that many workers",
                    workers.max
                ),
            );
        }
        let pw = errs.size("spec.memorySizing.perWorker", &sizing.per_worker);
        let oh = errs.size(
            "spec.memorySizing.overhead",
            sizing
                .overhead
                .as_deref()
                .unwrap_or(defaults::MEMORY_OVERHEAD),
        );
        if let (Some(pw), Some(oh)) = (pw, oh) {
            if pw == 0 {
                errs.push("spec.memorySizing.perWorker", "must be above zero");
            }
            match pw
                .checked_mul(u64::try_from(sized_for).unwrap_or(0))
                .and_then(|w| w.checked_add(oh))
                .filter(|total| *total <= i64::MAX as u64)
            {
                Some(total) => sized_memory = Some(total),
                None => errs.push(
                    "spec.memorySizing",
                    "overhead + maxWorkers x perWorker overflows",
                ),
            }
            per_worker = Some(pw);
        }
    }
    let lifecycle = resolve_lifecycle(&lifecycle_spec, per_worker, &mut errs);
    let resources = apply_memory_sizing(spec.resources.clone(), sized_memory);

    let pod = spec.pod.clone().unwrap_or_default();
    check_pod(&pod, &mut errs);
    let hooks = serving::resolve_hooks(spec.hooks.as_ref(), &mut errs);
    let tls = serving::resolve_tls(spec.tls.as_ref(), port, admin_port, service.port, &mut errs);
    let http2 = serving::resolve_http2(spec.http2.as_ref(), &mut errs);
    if tls.is_some() {
        for (i, m) in pod.volume_mounts.iter().enumerate() {
            if m.mount_path == TLS_DIR || m.mount_path == CLIENT_CA_DIR {
                errs.push(
                    &format!("spec.pod.volumeMounts[{i}].mountPath"),
                    format!("{} is where spec.tls is mounted", m.mount_path),
                );
            }
        }
    }
    let probes = resolve_probes(spec.probes.as_ref(), &mut errs);
    let pod_overrides = match &spec.pod_overrides {
        None => None,
        Some(v) => match validate_pod_overrides(v, Owned { port, admin_port }) {
            Ok(t) => Some(t),
            Err(e) => {
                errs.0.extend(e);
                None
            }
        },
    };

    let command = if spec.command.is_empty() {
        vec![defaults::COMMAND.to_string()]
    } else {
        spec.command.clone()
    };

    let Some(app_spec) = app_spec else {
        return Err(ValidationError::InvalidSpec(errs.0));
    };
    if !errs.0.is_empty() {
        return Err(ValidationError::InvalidSpec(errs.0));
    }

    let validated = ValidatedApp {
        name,
        namespace,
        owner,
        generation: app.meta().generation,
        image: spec.image.clone(),
        image_pull_policy: spec.image_pull_policy,
        image_pull_secrets: spec.image_pull_secrets.clone(),
        app: app_spec,
        chdir: spec.chdir.clone(),
        pythonpath: spec.pythonpath.clone(),
        venv: spec.venv.clone(),
        preload: spec.preload.unwrap_or(true),
        command,
        inject,
        env: spec.env.clone(),
        env_from: spec.env_from.clone(),
        port,
        admin_port,
        service,
        workers,
        lifecycle,
        http,
        static_files,
        log_format: format.unwrap_or_default(),
        log_level: level.unwrap_or_else(|| defaults::LOG_LEVEL.to_string()),
        replicas,
        autoscaling,
        resources,
        pod,
        hooks,
        tls,
        http2,
        probes,
        pod_overrides,
    };

    // The last word is the server's: what the pods get must resolve with its own rules.
    resolve(&validated.server_settings(), None).map_err(|e| {
        ValidationError::InvalidSpec(vec![FieldError {
            field: "spec".into(),
            reason: format!("the server refuses the rendered configuration: {e}"),
        }])
    })?;
    Ok(validated)
}

fn resolve_service(spec: Option<&ServiceSpec>, errs: &mut Errors) -> Service {
    let spec = spec.cloned().unwrap_or_default();
    Service {
        type_: spec.type_.unwrap_or(ServiceType::ClusterIP),
        port: errs.int(
            "spec.service.port",
            spec.port,
            defaults::SERVICE_PORT,
            1,
            65535,
        ),
        annotations: spec.annotations,
        labels: spec.labels,
    }
}

fn resolve_workers(spec: Option<&WorkersSpec>, errs: &mut Errors) -> Workers {
    let spec = spec.cloned().unwrap_or_default();
    let limit = wsgiscale_core::config::defaults::WORKERS_LIMIT as i32;
    let min = errs.int(
        "spec.workers.min",
        spec.min,
        defaults::WORKERS_MIN,
        1,
        limit,
    );
    let max = errs.int("spec.workers.max", spec.max, min, 1, limit);
    if min > max {
        errs.push(
            "spec.workers.min",
            format!("{min} is greater than workers.max {max}"),
        );
    }
    let initial = errs.int("spec.workers.initial", spec.initial, min, 1, limit);
    if initial < min || initial > max {
        errs.push(
            "spec.workers.initial",
            format!("{initial} is outside workers.min..workers.max ({min}..={max})"),
        );
    }
    let threads_limit = wsgiscale_core::config::defaults::THREADS_LIMIT as i32;
    let threads = errs.int(
        "spec.workers.threads",
        spec.threads,
        defaults::THREADS,
        1,
        threads_limit,
    );
    let step = errs.int("spec.workers.step", spec.step, defaults::STEP, 1, limit);
    let overload = errs.int(
        "spec.workers.overloadChecks",
        spec.overload_checks,
        defaults::OVERLOAD_CHECKS,
        1,
        3600,
    );
    let idle = errs.int(
        "spec.workers.idleChecks",
        spec.idle_checks,
        defaults::IDLE_CHECKS,
        1,
        3600,
    );
    let backlog = errs.int(
        "spec.workers.backlog",
        spec.backlog,
        defaults::BACKLOG,
        0,
        100_000,
    );
    let b: BusynessSpec = spec.busyness.unwrap_or_default();
    let bmin = errs.int(
        "spec.workers.busyness.minPercent",
        b.min_percent,
        defaults::BUSYNESS_MIN_PERCENT,
        0,
        99,
    );
    let bmax = errs.int(
        "spec.workers.busyness.maxPercent",
        b.max_percent,
        defaults::BUSYNESS_MAX_PERCENT,
        1,
        100,
    );
    if bmin >= bmax {
        errs.push(
            "spec.workers.busyness.minPercent",
            format!("{bmin} is not below busyness.maxPercent {bmax}"),
        );
    }
    let multiplier = errs.int(
        "spec.workers.busyness.multiplier",
        b.multiplier,
        defaults::BUSYNESS_MULTIPLIER,
        1,
        1000,
    );
    let penalty = errs.int(
        "spec.workers.busyness.penalty",
        b.penalty,
        defaults::BUSYNESS_PENALTY,
        0,
        1000,
    );
    let bbacklog = errs.int(
        "spec.workers.busyness.backlog",
        b.backlog,
        defaults::BUSYNESS_BACKLOG,
        1,
        100_000,
    );
    let algorithm = spec.algorithm.unwrap_or_default();
    // Every value above was checked to be non-negative.
    let u = |v: i32| v as u32;
    Workers {
        min: u(min),
        max: u(max),
        initial: u(initial),
        threads: u(threads),
        step: u(step),
        algorithm,
        overload_checks: u(overload),
        idle_checks: u(idle),
        backlog: u(backlog),
        busyness_min_percent: u(bmin),
        busyness_max_percent: u(bmax),
        busyness_multiplier: u(multiplier),
        busyness_penalty: u(penalty),
        busyness_backlog: u(bbacklog),
    }
}

fn resolve_lifecycle(
    spec: &LifecycleSpec,
    per_worker: Option<u64>,
    errs: &mut Errors,
) -> Lifecycle {
    let timeout = errs.int(
        "spec.lifecycle.timeoutSeconds",
        spec.timeout_seconds,
        0,
        0,
        86_400,
    );
    let max_requests = errs.count("spec.lifecycle.maxRequests", spec.max_requests);
    let jitter = errs.count("spec.lifecycle.maxRequestsJitter", spec.max_requests_jitter);
    if jitter > 0 && max_requests == 0 {
        errs.push(
            "spec.lifecycle.maxRequestsJitter",
            "needs lifecycle.maxRequests above 0",
        );
    }
    let lifetime = errs.count(
        "spec.lifecycle.maxLifetimeSeconds",
        spec.max_lifetime_seconds,
    );
    let max_rss = match &spec.max_rss {
        Some(text) => errs.size("spec.lifecycle.maxRss", text),
        None => per_worker,
    };
    let graceful = errs.int(
        "spec.lifecycle.gracefulTimeoutSeconds",
        spec.graceful_timeout_seconds,
        defaults::GRACEFUL_TIMEOUT_SECONDS,
        0,
        3600,
    );
    let pre_stop = errs.int(
        "spec.lifecycle.preStopDelaySeconds",
        spec.pre_stop_delay_seconds,
        defaults::PRE_STOP_DELAY_SECONDS,
        0,
        120,
    );
    Lifecycle {
        timeout: (timeout > 0).then(|| seconds(timeout)),
        max_requests,
        max_requests_jitter: jitter,
        max_lifetime: (lifetime > 0).then(|| Duration::from_secs(lifetime)),
        max_rss: max_rss.filter(|b| *b > 0),
        graceful_timeout: seconds(graceful),
        pre_stop_delay: seconds(pre_stop),
    }
}

fn resolve_http(spec: Option<&HttpSpec>, errs: &mut Errors) -> Http {
    let spec = spec.cloned().unwrap_or_default();
    let max_body = errs
        .size(
            "spec.http.maxBodySize",
            spec.max_body_size.as_deref().unwrap_or(defaults::MAX_BODY),
        )
        .unwrap_or(0);
    let max_queue = errs.int(
        "spec.http.maxQueue",
        spec.max_queue,
        defaults::MAX_QUEUE,
        0,
        1_000_000,
    );
    let keepalive = errs.int(
        "spec.http.keepaliveTimeoutSeconds",
        spec.keepalive_timeout_seconds,
        defaults::KEEPALIVE_TIMEOUT_SECONDS,
        1,
        86_400,
    );
    let body = errs.int(
        "spec.http.bodyTimeoutSeconds",
        spec.body_timeout_seconds,
        defaults::BODY_TIMEOUT_SECONDS,
        1,
        86_400,
    );
    let headers = |field: &str, names: &[String], errs: &mut Errors| -> Vec<LogHeader> {
        names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| errs.parse(&format!("{field}[{i}]"), n))
            .collect()
    };
    Http {
        max_body,
        max_queue: max_queue as u32,
        keepalive_timeout: seconds(keepalive),
        body_timeout: seconds(body),
        access_log: spec.access_log.unwrap_or(false),
        access_log_request_headers: headers(
            "spec.http.accessLogRequestHeaders",
            &spec.access_log_request_headers,
            errs,
        ),
        access_log_response_headers: headers(
            "spec.http.accessLogResponseHeaders",
            &spec.access_log_response_headers,
            errs,
        ),
        proxy: resolve_proxy(spec.proxy.as_ref(), errs),
        limits: resolve_limits(spec.limits.as_ref(), errs),
    }
}

fn resolve_proxy(spec: Option<&ProxySpec>, errs: &mut Errors) -> ProxyConfig {
    let spec = spec.cloned().unwrap_or_default();
    let trusted = match &spec.forwarded_allow_ips {
        None => defaults::FORWARDED_ALLOW_IPS
            .parse()
            .expect("the default trusted proxies parse"),
        Some(list) => {
            let mut all = ProxyList::default();
            for (i, item) in list.iter().enumerate() {
                let field = format!("spec.http.proxy.forwardedAllowIps[{i}]");
                if item.contains(',') {
                    errs.push(&field, "one address, CIDR block or * per entry");
                    continue;
                }
                if let Some(one) = errs.parse::<ProxyList>(&field, item) {
                    all.any |= one.any;
                    all.nets.extend(one.nets);
                }
            }
            all
        }
    };
    let root_path = match &spec.root_path {
        Some(p) => errs
            .parse::<UrlPrefix>("spec.http.proxy.rootPath", p)
            .unwrap_or_default(),
        None => UrlPrefix::default(),
    };
    ProxyConfig {
        trusted,
        headers: spec.forwarded_headers.unwrap_or_default(),
        root_path,
        outside_root_path: spec.outside_root_path.unwrap_or_default(),
    }
}

fn resolve_limits(spec: Option<&LimitsSpec>, errs: &mut Errors) -> HeaderLimits {
    let spec = spec.cloned().unwrap_or_default();
    let bytes_max = wsgiscale_core::config::defaults::LIMIT_REQUEST_HEADERS_SIZE_MAX as i32;
    let line_max = wsgiscale_core::config::defaults::LIMIT_REQUEST_LINE_MAX as i32;
    let fields_max = wsgiscale_core::config::defaults::LIMIT_REQUEST_FIELDS_MAX as i32;
    let min = wsgiscale_core::config::defaults::LIMIT_BYTES_MIN as i32;
    let request_line = errs.int(
        "spec.http.limits.requestLineBytes",
        spec.request_line_bytes,
        defaults::REQUEST_LINE_BYTES,
        min,
        line_max,
    );
    let fields = errs.int(
        "spec.http.limits.headerFields",
        spec.header_fields,
        defaults::HEADER_FIELDS,
        1,
        fields_max,
    );
    let headers_size = errs.int(
        "spec.http.limits.headersBytes",
        spec.headers_bytes,
        defaults::HEADERS_BYTES,
        min,
        bytes_max,
    );
    let field_size = errs.int(
        "spec.http.limits.headerFieldBytes",
        spec.header_field_bytes,
        defaults::HEADER_FIELD_BYTES,
        min,
        headers_size,
    );
    HeaderLimits {
        request_line: request_line as usize,
        fields: fields as usize,
        field_size: field_size as usize,
        headers_size: headers_size as usize,
    }
}

fn resolve_static(spec: Option<&StaticSpec>, errs: &mut Errors) -> StaticConfig {
    let spec = spec.cloned().unwrap_or_default();
    let mut mounts = Vec::new();
    for (i, m) in spec.mounts.iter().enumerate() {
        if !m.directory.starts_with('/') || m.directory.contains(',') {
            errs.push(
                &format!("spec.static.mounts[{i}].directory"),
                "must be an absolute path without ','",
            );
            continue;
        }
        if let Some(mount) = errs.parse::<StaticMount>(
            &format!("spec.static.mounts[{i}].urlPrefix"),
            &format!("{}={}", m.url_prefix, m.directory),
        ) {
            mounts.push(mount);
        }
    }
    let max_age = errs.int(
        "spec.static.maxAgeSeconds",
        spec.max_age_seconds,
        defaults::STATIC_MAX_AGE_SECONDS,
        0,
        31_536_000,
    );
    StaticConfig {
        mounts,
        max_age: (max_age > 0).then(|| seconds(max_age)),
    }
}

fn resolve_replicas(spec: Option<&ReplicasSpec>, errs: &mut Errors) -> Replicas {
    let spec = spec.cloned().unwrap_or_default();
    let min = errs.int(
        "spec.replicas.min",
        spec.min,
        defaults::REPLICAS_MIN,
        0,
        10_000,
    );
    let max = spec
        .max
        .map(|m| errs.int("spec.replicas.max", Some(m), min, 0, 10_000));
    if let Some(max) = max {
        if min > max {
            errs.push(
                "spec.replicas.min",
                format!("{min} is greater than replicas.max {max}"),
            );
        }
    }
    let desired = spec
        .desired
        .map(|d| errs.int("spec.replicas.desired", Some(d), min, 0, 10_000));
    if let Some(d) = desired {
        if d < min || max.is_some_and(|m| d > m) {
            let bounds = max.map_or(format!("{min}.."), |m| format!("{min}..={m}"));
            errs.push(
                "spec.replicas.desired",
                format!("{d} is outside replicas.min..replicas.max ({bounds})"),
            );
        }
    }
    Replicas { min, max, desired }
}

fn resolve_autoscaling(spec: Option<&AutoscalingSpec>, errs: &mut Errors) -> Autoscaling {
    let spec = spec.cloned().unwrap_or_default();
    let f = "spec.autoscaling.";
    let mut int = |key: &str, v: Option<i32>, d: i32, lo: i32, hi: i32| {
        errs.int(&format!("{f}{key}"), v, d, lo, hi)
    };
    let target = int(
        "targetUtilizationPercent",
        spec.target_utilization_percent,
        defaults::TARGET_UTILIZATION_PERCENT,
        1,
        100,
    );
    let stable = int(
        "stableWindowSeconds",
        spec.stable_window_seconds,
        defaults::STABLE_WINDOW_SECONDS,
        1,
        3600,
    );
    let panic = int(
        "panicWindowSeconds",
        spec.panic_window_seconds,
        defaults::PANIC_WINDOW_SECONDS,
        1,
        3600,
    );
    let threshold = int(
        "panicThresholdPercent",
        spec.panic_threshold_percent,
        defaults::PANIC_THRESHOLD_PERCENT,
        110,
        1000,
    );
    let up = int(
        "maxScaleUpRate",
        spec.max_scale_up_rate,
        defaults::MAX_SCALE_UP_RATE,
        2,
        10_000,
    );
    let down = int(
        "maxScaleDownRate",
        spec.max_scale_down_rate,
        defaults::MAX_SCALE_DOWN_RATE,
        2,
        10_000,
    );
    let delay = int(
        "scaleDownDelaySeconds",
        spec.scale_down_delay_seconds,
        defaults::SCALE_DOWN_DELAY_SECONDS,
        0,
        3600,
    );
    let tolerance = int(
        "tolerancePercent",
        spec.tolerance_percent,
        defaults::TOLERANCE_PERCENT,
        0,
        50,
    );
    let tick = int(
        "tickSeconds",
        spec.tick_seconds,
        defaults::TICK_SECONDS,
        1,
        60,
    );
    let scraped = int(
        "maxPodsScraped",
        spec.max_pods_scraped,
        defaults::MAX_PODS_SCRAPED,
        1,
        1000,
    );
    if panic > stable {
        errs.push(
            "spec.autoscaling.panicWindowSeconds",
            format!("{panic} is above stableWindowSeconds {stable}"),
        );
    }
    if tick > panic {
        errs.push(
            "spec.autoscaling.tickSeconds",
            format!("{tick} is above panicWindowSeconds {panic}"),
        );
    }
    // Every value above was checked to be within a non-negative range.
    Autoscaling {
        enabled: spec.enabled.unwrap_or(false),
        target_utilization_percent: target as u32,
        stable_window: seconds(stable),
        panic_window: seconds(panic),
        panic_threshold_percent: threshold as u32,
        max_scale_up_rate: up as u32,
        max_scale_down_rate: down as u32,
        scale_down_delay: seconds(delay),
        tolerance_percent: tolerance as u32,
        tick: seconds(tick),
        max_pods_scraped: scraped as u32,
        burst_capacity: spec
            .burst_capacity
            .map(|b| errs.int("spec.autoscaling.burstCapacity", Some(b), 0, -1, 100_000)),
        scale_to_zero: None,
        hold: wsgiscale_core::activator::HoldLimits::default(),
    }
}

fn resolve_probes(spec: Option<&ProbesSpec>, errs: &mut Errors) -> Probes {
    let spec = spec.cloned().unwrap_or_default();
    let budget = errs.int(
        "spec.probes.startupTimeoutSeconds",
        spec.startup_timeout_seconds,
        defaults::STARTUP_TIMEOUT_SECONDS,
        2,
        86_400,
    );
    let period = defaults::STARTUP_PERIOD_SECONDS;
    let mut timing = |name: &str, t: Option<&crate::crd::ProbeTiming>, d: (i32, i32, i32)| {
        let t = t.cloned().unwrap_or_default();
        let f = |key: &str| format!("spec.probes.{name}.{key}");
        ProbeTiming {
            period_seconds: errs.int(&f("periodSeconds"), t.period_seconds, d.0, 1, 3600),
            timeout_seconds: errs.int(&f("timeoutSeconds"), t.timeout_seconds, d.1, 1, 3600),
            failure_threshold: errs.int(&f("failureThreshold"), t.failure_threshold, d.2, 1, 1000),
        }
    };
    let liveness = timing(
        "liveness",
        spec.liveness.as_ref(),
        (
            defaults::LIVENESS_PERIOD_SECONDS,
            defaults::LIVENESS_TIMEOUT_SECONDS,
            defaults::LIVENESS_FAILURE_THRESHOLD,
        ),
    );
    let readiness = timing(
        "readiness",
        spec.readiness.as_ref(),
        (
            defaults::READINESS_PERIOD_SECONDS,
            defaults::READINESS_TIMEOUT_SECONDS,
            defaults::READINESS_FAILURE_THRESHOLD,
        ),
    );
    Probes {
        startup: ProbeTiming {
            period_seconds: period,
            timeout_seconds: readiness.timeout_seconds,
            // Enough probes to cover the budget, rounded up.
            failure_threshold: (budget + period - 1) / period,
        },
        liveness,
        readiness,
    }
}

fn check_pod(pod: &PodOverrides, errs: &mut Errors) {
    if pod.labels.contains_key(APP_LABEL) {
        errs.push(
            "spec.pod.labels",
            format!("{APP_LABEL} is reserved: the operator selects the pods with it"),
        );
    }
    for (i, v) in pod.volumes.iter().enumerate() {
        if v.name.starts_with(RESERVED_VOLUME_PREFIX) {
            errs.push(
                &format!("spec.pod.volumes[{i}].name"),
                format!("names starting with {RESERVED_VOLUME_PREFIX} are reserved"),
            );
        }
    }
    for (i, m) in pod.volume_mounts.iter().enumerate() {
        if m.mount_path == CONFIG_DIR || m.mount_path == TMP_DIR {
            errs.push(
                &format!("spec.pod.volumeMounts[{i}].mountPath"),
                format!("{} is mounted by the operator", m.mount_path),
            );
        }
    }
}

/// Formats a byte count as a Kubernetes quantity, with the largest binary suffix that keeps it
/// whole (`1536Mi`, `2Gi`), or plain bytes.
pub fn format_bytes(bytes: u64) -> String {
    const KI: u64 = 1 << 10;
    const MI: u64 = 1 << 20;
    const GI: u64 = 1 << 30;
    const TI: u64 = 1 << 40;
    match bytes {
        0 => "0".to_string(),
        b if b % TI == 0 => format!("{}Ti", b / TI),
        b if b % GI == 0 => format!("{}Gi", b / GI),
        b if b % MI == 0 => format!("{}Mi", b / MI),
        b if b % KI == 0 => format!("{}Ki", b / KI),
        b => b.to_string(),
    }
}

/// Fills requests.memory and limits.memory from the sized total where the user left them out.
fn apply_memory_sizing(
    resources: Option<ResourceRequirements>,
    sized: Option<u64>,
) -> Option<ResourceRequirements> {
    let Some(total) = sized else {
        return resources;
    };
    let mut r = resources.unwrap_or_default();
    let q = Quantity(format_bytes(total));
    r.requests
        .get_or_insert_with(BTreeMap::new)
        .entry("memory".into())
        .or_insert_with(|| q.clone());
    r.limits
        .get_or_insert_with(BTreeMap::new)
        .entry("memory".into())
        .or_insert(q);
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::mk_app;

    fn invalid_fields(app: &WsgiApp) -> Vec<String> {
        match validate_app(app) {
            Err(ValidationError::InvalidSpec(errs)) => errs.into_iter().map(|e| e.field).collect(),
            other => panic!("expected an invalid spec, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_resolved() {
        let v = validate_app(&mk_app("shop")).expect("valid");
        assert_eq!(v.workers.min, 2);
        assert_eq!(v.workers.max, 2);
        assert_eq!(v.workers.initial, 2);
        assert_eq!(v.workers.algorithm, Algorithm::default());
        assert_eq!(v.port, 8000);
        assert_eq!(v.admin_port, 9191);
        assert_eq!(v.service.port, 80);
        assert_eq!(v.service.type_, ServiceType::ClusterIP);
        assert_eq!(
            v.replicas,
            Replicas {
                min: 1,
                max: None,
                desired: None
            }
        );
        assert_eq!(v.command, vec!["wsgiscale".to_string()]);
        assert_eq!(v.lifecycle.graceful_timeout, Duration::from_secs(25));
        assert_eq!(v.lifecycle.termination_grace_period_seconds(), 39);
        assert_eq!(v.http.max_body, 64 << 20);
        // A pod behind a Service trusts the ingress controller's pod addresses, not the world.
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        assert!(v.http.proxy.trusted.contains(ip("10.244.3.7")));
        assert!(v.http.proxy.trusted.contains(ip("fd00:10:244::7")));
        assert!(!v.http.proxy.trusted.contains(ip("203.0.113.9")));
        let server = resolve(
            &Settings {
                app: Some("a:b".into()),
                ..Settings::default()
            },
            None,
        )
        .expect("valid");
        assert_eq!(v.http.limits, server.http.limits);
        assert_eq!(v.static_files.mounts, vec![]);
        assert_eq!(v.static_files.max_age, server.http.static_files.max_age);
        assert!(v.preload);
        assert!(!v.autoscaling.enabled);
        assert_eq!(v.autoscaling.target_utilization_percent, 70);
        assert_eq!(v.autoscaling.stable_window, Duration::from_secs(60));
        assert_eq!(v.autoscaling.panic_window, Duration::from_secs(6));
        assert_eq!(v.autoscaling.panic_threshold_percent, 200);
        assert_eq!(v.autoscaling.tick, Duration::from_secs(2));
        assert_eq!(v.autoscaling.max_pods_scraped, 16);
        assert_eq!(v.owner.kind, "WsgiApp");
        assert_eq!(v.owner.controller, Some(true));
        assert_eq!(v.resources, None);
        assert_eq!(v.pod_overrides, None);
        let p = v.probes;
        assert_eq!(
            (p.startup.period_seconds, p.startup.failure_threshold),
            (2, 150)
        );
        assert_eq!(
            (
                p.liveness.period_seconds,
                p.liveness.timeout_seconds,
                p.liveness.failure_threshold
            ),
            (10, 2, 3)
        );
        assert_eq!(
            (
                p.readiness.period_seconds,
                p.readiness.timeout_seconds,
                p.readiness.failure_threshold
            ),
            (5, 2, 2)
        );
    }

    #[test]
    fn max_defaults_to_min_and_initial_to_min() {
        let v = validate_app(&mk_app("shop").with_workers(3, None)).expect("valid");
        assert_eq!((v.workers.min, v.workers.max, v.workers.initial), (3, 3, 3));
        let v = validate_app(&mk_app("shop").with_workers(2, Some(8))).expect("valid");
        assert_eq!((v.workers.min, v.workers.max, v.workers.initial), (2, 8, 2));
    }

    #[test]
    fn invalid_specs_name_their_fields() {
        let tls = |verify, ca: Option<&str>| crate::crd::TlsSpec {
            secret_name: "shop-tls".into(),
            client_verify: verify,
            client_ca_secret_name: ca.map(Into::into),
            ..Default::default()
        };
        let mut cases: Vec<(WsgiApp, &str)> = vec![
            (mk_app("shop").with_workers(4, Some(2)), "spec.workers.min"),
            (
                mk_app("shop").map(|a| {
                    a.spec.hooks = Some(crate::crd::HooksSpec {
                        post_fork: Some("shop-hooks:post_fork".into()),
                        ..Default::default()
                    })
                }),
                "spec.hooks.postFork",
            ),
            (
                mk_app("shop")
                    .map(|a| a.spec.tls = Some(tls(Some(crate::crd::ClientVerify::Require), None))),
                "spec.tls.clientVerify",
            ),
            (
                mk_app("shop").map(|a| a.spec.tls = Some(tls(None, Some("shop-ca")))),
                "spec.tls.clientCaSecretName",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.tls = Some(crate::crd::TlsSpec {
                        port: Some(9191),
                        ..tls(None, None)
                    })
                }),
                "spec.tls.port",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.tls = Some(tls(None, None));
                    a.spec.pod = Some(PodOverrides {
                        volume_mounts: vec![k8s_openapi::api::core::v1::VolumeMount {
                            name: "certs".into(),
                            mount_path: "/etc/wsgiscale-tls".into(),
                            ..Default::default()
                        }],
                        ..PodOverrides::default()
                    });
                }),
                "spec.pod.volumeMounts[0].mountPath",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.http2 = Some(crate::crd::Http2Spec {
                        h2c_allow_ips: vec!["the cluster".into()],
                        ..Default::default()
                    })
                }),
                "spec.http2.h2cAllowIps[0]",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.command = vec!["/opt/venv/bin/wsgiscale".into()];
                    a.spec.inject = Some(crate::crd::InjectSpec {
                        enabled: Some(true),
                        ..Default::default()
                    });
                }),
                "spec.command",
            ),
            (
                mk_app("shop")
                    .with_workers(1, None)
                    .map(|a| a.spec.workers.get_or_insert_with(Default::default).initial = Some(5)),
                "spec.workers.initial",
            ),
            (mk_app("shop").with_app("not-a-callable"), "spec.app"),
            (
                mk_app("shop").with_replicas(3, Some(2)),
                "spec.replicas.min",
            ),
            (
                mk_app("shop").with_replicas(0, Some(4)).map(|a| {
                    a.spec.autoscaling = Some(crate::crd::AutoscalingSpec {
                        enabled: Some(true),
                        ..Default::default()
                    })
                }),
                "spec.replicas.min",
            ),
            (mk_app("Shop"), "metadata.name"),
            (
                mk_app("shop").map(|a| a.spec.admin_port = Some(8000)),
                "spec.adminPort",
            ),
            (
                mk_app("shop").map(|a| a.spec.pythonpath = vec!["/a:/b".into()]),
                "spec.pythonpath[0]",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.env = vec![EnvVar {
                        name: "WSGISCALE_WORKERS".into(),
                        value: Some("9".into()),
                        ..EnvVar::default()
                    }]
                }),
                "spec.env[0].name",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.autoscaling = Some(AutoscalingSpec {
                        enabled: Some(true),
                        ..AutoscalingSpec::default()
                    })
                }),
                "spec.replicas.max",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.lifecycle = Some(LifecycleSpec {
                        max_requests_jitter: Some(10),
                        ..LifecycleSpec::default()
                    })
                }),
                "spec.lifecycle.maxRequestsJitter",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.lifecycle = Some(LifecycleSpec {
                        max_rss: Some("lots".into()),
                        ..LifecycleSpec::default()
                    })
                }),
                "spec.lifecycle.maxRss",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.pod = Some(PodOverrides {
                        labels: [(APP_LABEL.to_string(), "x".to_string())].into(),
                        ..PodOverrides::default()
                    })
                }),
                "spec.pod.labels",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.http = Some(HttpSpec {
                        proxy: Some(ProxySpec {
                            forwarded_allow_ips: Some(vec!["10.0.0.0/8".into(), "lan".into()]),
                            ..ProxySpec::default()
                        }),
                        ..HttpSpec::default()
                    })
                }),
                "spec.http.proxy.forwardedAllowIps[1]",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.http = Some(HttpSpec {
                        proxy: Some(ProxySpec {
                            root_path: Some("shop".into()),
                            ..ProxySpec::default()
                        }),
                        ..HttpSpec::default()
                    })
                }),
                "spec.http.proxy.rootPath",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.http = Some(HttpSpec {
                        limits: Some(LimitsSpec {
                            header_field_bytes: Some(70_000),
                            ..LimitsSpec::default()
                        }),
                        access_log_request_headers: vec!["X Request".into()],
                        ..HttpSpec::default()
                    })
                }),
                "spec.http.limits.headerFieldBytes",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.http = Some(HttpSpec {
                        access_log_request_headers: vec!["X Request".into()],
                        ..HttpSpec::default()
                    })
                }),
                "spec.http.accessLogRequestHeaders[0]",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.static_files = Some(StaticSpec {
                        mounts: vec![crate::crd::StaticMountSpec {
                            url_prefix: "/".into(),
                            directory: "/app/static".into(),
                        }],
                        ..StaticSpec::default()
                    })
                }),
                "spec.static.mounts[0].urlPrefix",
            ),
            (
                mk_app("shop").map(|a| {
                    a.spec.static_files = Some(StaticSpec {
                        mounts: vec![crate::crd::StaticMountSpec {
                            url_prefix: "/static".into(),
                            directory: "static".into(),
                        }],
                        ..StaticSpec::default()
                    })
                }),
                "spec.static.mounts[0].directory",
            ),
        ];
        cases.push((
            mk_app("shop").map(|a| {
                a.spec.probes = Some(crate::crd::ProbesSpec {
                    startup_timeout_seconds: Some(1),
                    ..Default::default()
                })
            }),
            "spec.probes.startupTimeoutSeconds",
        ));
        cases.push((
            mk_app("shop").map(|a| {
                a.spec.pod_overrides = Some(serde_json::json!({
                    "spec": {"containers": [{"name": "app", "image": "other:1"}]}
                }))
            }),
            "spec.podOverrides.spec.containers[0].image",
        ));
        cases.push((
            // The admin port moved: the overrides' sidecar may not take it.
            mk_app("shop").map(|a| {
                a.spec.admin_port = Some(9000);
                a.spec.pod_overrides = Some(serde_json::json!({
                    "spec": {"containers": [{"name": "proxy", "image": "p:1", "ports": [{"containerPort": 9000}]}]}
                }))
            }),
            "spec.podOverrides.spec.containers[0].ports[0].containerPort",
        ));
        for (app, field) in cases {
            let fields = invalid_fields(&app);
            assert!(
                fields.iter().any(|f| f == field),
                "{field} not in {fields:?}"
            );
        }
    }

    #[test]
    fn objects_not_from_the_api_server_are_refused() {
        let mut app = mk_app("shop");
        app.metadata.uid = None;
        assert_eq!(
            validate_app(&app),
            Err(ValidationError::MissingMetadata("uid"))
        );
    }

    #[test]
    fn memory_sizing_fills_only_what_is_missing() {
        let app = mk_app("shop").with_workers(2, Some(8)).map(|a| {
            a.spec.memory_sizing = Some(crate::crd::MemorySizing {
                per_worker: "200Mi".into(),
                overhead: None,
                max_workers: None,
            })
        });
        let v = validate_app(&app).expect("valid");
        let r = v.resources.expect("sized");
        // 128Mi + 8 x 200Mi = 1728Mi
        assert_eq!(
            r.requests.expect("requests")["memory"],
            Quantity("1728Mi".into())
        );
        assert_eq!(
            r.limits.expect("limits")["memory"],
            Quantity("1728Mi".into())
        );
        assert_eq!(v.lifecycle.max_rss, Some(200 << 20));

        let explicit = app.map(|a| {
            a.spec.resources = Some(ResourceRequirements {
                limits: Some([("memory".to_string(), Quantity("4Gi".into()))].into()),
                ..ResourceRequirements::default()
            });
            a.spec.lifecycle = Some(LifecycleSpec {
                max_rss: Some("300Mi".into()),
                ..LifecycleSpec::default()
            });
        });
        let v = validate_app(&explicit).expect("valid");
        let r = v.resources.expect("sized");
        assert_eq!(r.limits.expect("limits")["memory"], Quantity("4Gi".into()));
        assert_eq!(
            r.requests.expect("requests")["memory"],
            Quantity("1728Mi".into())
        );
        assert_eq!(v.lifecycle.max_rss, Some(300 << 20));
    }

    #[test]
    fn memory_is_sized_for_max_workers_so_workers_max_stays_live_below_it() {
        let sized = |max: i32| {
            mk_app("shop").with_workers(2, Some(max)).map(|a| {
                a.spec.memory_sizing = Some(crate::crd::MemorySizing {
                    per_worker: "150Mi".into(),
                    overhead: Some("128Mi".into()),
                    max_workers: Some(12),
                })
            })
        };
        let memory = |app: &WsgiApp| {
            validate_app(app)
                .expect("valid")
                .resources
                .expect("sized")
                .limits
                .expect("limits")["memory"]
                .clone()
        };
        // 128Mi + 12 x 150Mi, whatever workers.max is below the ceiling.
        assert_eq!(memory(&sized(8)), Quantity("1928Mi".into()));
        assert_eq!(memory(&sized(12)), Quantity("1928Mi".into()));
        let fields = invalid_fields(&sized(13));
        assert!(fields.iter().any(|f| f == "spec.workers.max"), "{fields:?}");
    }

    #[test]
    fn a_desired_count_outside_the_bounds_is_refused_not_clamped() {
        let scaled = |desired: i32| {
            mk_app("shop").map(|a| {
                a.spec.replicas = Some(ReplicasSpec {
                    min: Some(1),
                    max: Some(10),
                    desired: Some(desired),
                })
            })
        };
        assert!(validate_app(&scaled(10)).is_ok());
        for desired in [0, 11, 20] {
            let fields = invalid_fields(&scaled(desired));
            assert!(
                fields.iter().any(|f| f == "spec.replicas.desired"),
                "{desired}: {fields:?}"
            );
        }
    }

    #[test]
    fn bytes_format_as_whole_binary_quantities() {
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_bytes(1 << 30), "1Gi");
        assert_eq!(format_bytes(1536 << 20), "1536Mi");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(3 << 10), "3Ki");
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "shop", "shop-2", &"a".repeat(63)] {
            assert!(is_dns1035_label(ok), "{ok}");
        }
        for bad in ["", "Shop", "2shop", "shop-", "sh.op", &"a".repeat(64)] {
            assert!(!is_dns1035_label(bad), "{bad}");
        }
    }

    #[test]
    fn scale_to_zero_needs_autoscaling_and_allows_min_zero() {
        use crate::crd::{ActivatorSpec, AutoscalingSpec, ReplicasSpec, ScaleToZeroSpec};
        let with = |autoscaling: bool, zero: bool, min: i32| {
            mk_app("shop").map(|a| {
                a.spec.replicas = Some(ReplicasSpec {
                    min: Some(min),
                    max: Some(4),
                    ..ReplicasSpec::default()
                });
                a.spec.autoscaling = Some(AutoscalingSpec {
                    enabled: Some(autoscaling),
                    ..AutoscalingSpec::default()
                });
                a.spec.scale_to_zero = zero.then_some(ScaleToZeroSpec {
                    enabled: Some(true),
                    idle_seconds: None,
                });
            })
        };
        let fields = |app: &WsgiApp| match validate_app(app) {
            Ok(_) => Vec::new(),
            Err(ValidationError::InvalidSpec(errs)) => errs.into_iter().map(|e| e.field).collect(),
            Err(e) => vec![e.to_string()],
        };
        assert_eq!(fields(&with(true, false, 0)), ["spec.replicas.min"]);
        let v = validate_app(&with(true, true, 0)).expect("min 0 with scaleToZero");
        assert_eq!(v.autoscaling.scale_to_zero, Some(Duration::from_secs(300)));
        assert_eq!(fields(&with(false, true, 1)), ["spec.scaleToZero.enabled"]);
        // Hold limits: defaults, and the app's own.
        assert_eq!(v.autoscaling.hold.max_requests, 10_000);
        let held = with(true, true, 0).map(|a| {
            a.spec.activator = Some(ActivatorSpec {
                max_held_requests: Some(50),
                max_held_bytes: Some("1Mi".into()),
                max_wait_seconds: Some(5),
            })
        });
        let h = validate_app(&held).expect("valid").autoscaling.hold;
        assert_eq!(
            (h.max_requests, h.max_bytes, h.max_wait_ms),
            (50, 1 << 20, 5000)
        );
    }

    #[test]
    fn clamp_keeps_counts_in_bounds() {
        let r = Replicas {
            min: 2,
            max: Some(5),
            desired: None,
        };
        assert_eq!(r.clamp(0), 2);
        assert_eq!(r.clamp(3), 3);
        assert_eq!(r.clamp(9), 5);
        let open = Replicas {
            min: 0,
            max: None,
            desired: None,
        };
        assert_eq!(open.clamp(1000), 1000);
    }

    proptest::proptest! {
        /// The operator's own checks of the worker limits and the busyness thresholds (which
        /// name the spec's fields, all at once) accept exactly what the server's `resolve`
        /// accepts for the same values: the rule is the server's, stated once.
        #[test]
        fn worker_rules_agree_with_the_server(
            min in 1i32..6,
            max in proptest::option::of(1i32..6),
            initial in proptest::option::of(1i32..6),
            lo in proptest::option::of(0i32..100),
            hi in proptest::option::of(1i32..101),
        ) {
            let app = mk_app("shop").map(|a| {
                a.spec.workers = Some(crate::crd::WorkersSpec {
                    min: Some(min),
                    max,
                    initial,
                    busyness: Some(crate::crd::BusynessSpec {
                        min_percent: lo,
                        max_percent: hi,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            });
            let max_v = max.unwrap_or(min);
            let settings = Settings {
                app: Some("a:b".into()),
                workers: Some(WorkerRange { min: min as u32, max: max_v as u32 }),
                workers_initial: initial.map(|i| i as u32),
                cheaper_busyness_min: lo.map(|v| v as u32),
                cheaper_busyness_max: hi.map(|v| v as u32),
                ..Settings::default()
            };
            let server = resolve(&settings, None);
            let ours = validate_app(&app);
            proptest::prop_assert_eq!(ours.is_ok(), server.is_ok(), "operator {:?}, server {:?}", ours.err(), server.err());
        }
    }
}
