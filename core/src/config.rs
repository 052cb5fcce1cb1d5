//! The server's configuration: command-line flags (each with a `WSGISCALE_*` environment twin),
//! the optional YAML config file with the same keys, and the resolved, validated
//! [`ServerConfig`] that the rest of the server reads.
//!
//! Precedence, lowest first: built-in defaults, the config file, environment, flags. Flags and
//! environment are both seen by clap and arrive here as `Some`; the file fills what they left
//! `None`. [`resolve`] is pure: it never touches the file system, so the live-reload path can
//! call it again with a re-read file and the original flags.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{format_duration, parse_duration, parse_size};

/// Errors found while resolving the configuration; each names the key at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No `MODULE:CALLABLE` was given on the command line, in the environment or the file.
    #[error("no application given: pass MODULE:CALLABLE (or `app:` in the config file)")]
    MissingApp,
    /// A value is syntactically or semantically wrong.
    #[error("invalid {key}: {reason}")]
    Invalid {
        /// The flag or file key at fault, as the user wrote it.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The config file is not valid YAML of the expected shape.
    #[error("config file: {0}")]
    File(String),
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Where a listener binds: a TCP address or a unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddr {
    /// `host:port`; `localhost` means 127.0.0.1 and an empty host means all interfaces.
    Tcp(SocketAddr),
    /// `unix:/path/to/socket`.
    Unix(PathBuf),
}

impl FromStr for BindAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path".into());
            }
            return Ok(BindAddr::Unix(PathBuf::from(path)));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(BindAddr::Tcp(addr));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not host:port or unix:/path"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?} has an invalid port"))?;
        let ip = match host {
            "" | "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            _ => return Err(format!("{s:?}: host must be an IP address or localhost")),
        };
        Ok(BindAddr::Tcp(SocketAddr::new(ip, port)))
    }
}

impl std::fmt::Display for BindAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindAddr::Tcp(a) => write!(f, "{a}"),
            BindAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `--workers`: a fixed count `N`, or an adaptive range `MIN:MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerRange {
    /// The fewest workers kept running.
    pub min: u32,
    /// The most workers ever running.
    pub max: u32,
}

impl FromStr for WorkerRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let num = |t: &str| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| format!("{s:?} is not N or MIN:MAX"))
        };
        let (min, max) = match s.split_once(':') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let n = num(s)?;
                (n, n)
            }
        };
        Ok(WorkerRange { min, max })
    }
}

impl std::fmt::Display for WorkerRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}:{}", self.min, self.max)
        }
    }
}

/// A byte size as written by the user (`64Mi`, `1048576`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(ByteSize).map_err(|e| e.to_string())
    }
}

/// A duration as written by the user (`30`, `250ms`, `2m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Dur).map_err(|e| e.to_string())
    }
}

/// The worker-count algorithm (uWSGI's "cheaper" algorithms, fixed where uWSGI is broken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Spawn `step` after `overload` checks with every worker busy; retire one idle worker
    /// every `overload` checks while more than one is idle.
    #[default]
    Spare,
    /// Keep `idle` spare workers: spawn the shortfall at once (up to `step`), retire one after
    /// `cheaper-idle` checks of surplus.
    Spare2,
    /// Spawn while the request queue is deeper than `cheaper-backlog`; retire below it.
    Backlog,
    /// Average busy fraction over a window against min/max thresholds, with anti-flap penalty.
    Busyness,
    /// Only SIGTTIN/SIGTTOU (or a new config) change the count.
    Manual,
}

impl Algorithm {
    /// The name used on the command line and in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Spare => "spare",
            Algorithm::Spare2 => "spare2",
            Algorithm::Backlog => "backlog",
            Algorithm::Busyness => "busyness",
            Algorithm::Manual => "manual",
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// Flags of `wsgiscale serve`. Every field is optional so that the config file can fill what
/// the command line and environment leave out; defaults are applied by [`resolve`].
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
#[command(about = "Serve a WSGI application")]
pub struct ServeArgs {
    /// The WSGI application as MODULE:CALLABLE, e.g. `myproject.wsgi:application`.
    #[arg(env = "WSGISCALE_APP", value_name = "MODULE:CALLABLE")]
    pub app: Option<String>,

    /// YAML file with the same keys as these flags (without the dashes prefix); flags and
    /// environment override it. Worker limits, algorithm and lifecycle settings in it are
    /// re-read live when the file changes or on SIGHUP.
    #[arg(long, env = "WSGISCALE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to serve HTTP on: `host:port` or `unix:/path`. Repeatable; comma-separated in
    /// the environment. [default: 127.0.0.1:8000]
    #[arg(
        long,
        env = "WSGISCALE_BIND",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub bind: Vec<BindAddr>,

    /// Address of the admin server (/healthz, /readyz, /metrics, /load).
    /// [default: 127.0.0.1:9191]
    #[arg(long, env = "WSGISCALE_ADMIN_BIND", value_name = "ADDR")]
    pub admin_bind: Option<BindAddr>,

    /// Worker processes: a fixed `N`, or `MIN:MAX` for adaptive scaling. [default: 2]
    #[arg(long, env = "WSGISCALE_WORKERS", value_name = "N|MIN:MAX")]
    pub workers: Option<WorkerRange>,

    /// Workers started at boot, within MIN..=MAX. [default: MIN]
    #[arg(long, env = "WSGISCALE_WORKERS_INITIAL", value_name = "N")]
    pub workers_initial: Option<u32>,

    /// Worker-count algorithm. [default: spare]
    #[arg(long, env = "WSGISCALE_CHEAPER_ALGO", value_name = "ALGO")]
    pub cheaper_algo: Option<Algorithm>,

    /// Workers spawned at most per scaling decision. [default: 1]
    #[arg(long, env = "WSGISCALE_CHEAPER_STEP", value_name = "N")]
    pub cheaper_step: Option<u32>,

    /// Checks (one per second) of sustained overload or idleness before acting (spare,
    /// busyness window). [default: 3]
    #[arg(long, env = "WSGISCALE_CHEAPER_OVERLOAD", value_name = "CHECKS")]
    pub cheaper_overload: Option<u32>,

    /// spare2: checks with surplus idle workers before one is retired; also the number of idle
    /// workers spare2 keeps is MIN. [default: 10]
    #[arg(long, env = "WSGISCALE_CHEAPER_IDLE", value_name = "CHECKS")]
    pub cheaper_idle: Option<u32>,

    /// backlog: queued requests above which workers are spawned. [default: 1]
    #[arg(long, env = "WSGISCALE_CHEAPER_BACKLOG", value_name = "REQUESTS")]
    pub cheaper_backlog: Option<u32>,

    /// busyness: average busy percentage below which a worker is retired. [default: 25]
    #[arg(long, env = "WSGISCALE_CHEAPER_BUSYNESS_MIN", value_name = "PERCENT")]
    pub cheaper_busyness_min: Option<u32>,

    /// busyness: average busy percentage above which workers are spawned. [default: 50]
    #[arg(long, env = "WSGISCALE_CHEAPER_BUSYNESS_MAX", value_name = "PERCENT")]
    pub cheaper_busyness_max: Option<u32>,

    /// busyness: retirement waits `overload x multiplier` checks of low busyness. [default: 10]
    #[arg(long, env = "WSGISCALE_CHEAPER_BUSYNESS_MULTIPLIER", value_name = "N")]
    pub cheaper_busyness_multiplier: Option<u32>,

    /// busyness: added to the multiplier each time a retired worker is needed again soon after
    /// (anti-flap); decays back when retirements stick. [default: 2]
    #[arg(long, env = "WSGISCALE_CHEAPER_BUSYNESS_PENALTY", value_name = "N")]
    pub cheaper_busyness_penalty: Option<u32>,

    /// busyness: queued requests that trigger emergency spawns regardless of the window.
    /// [default: 33]
    #[arg(
        long,
        env = "WSGISCALE_CHEAPER_BUSYNESS_BACKLOG",
        value_name = "REQUESTS"
    )]
    pub cheaper_busyness_backlog: Option<u32>,

    /// Python threads per worker; the master dispatches up to this many requests to a worker
    /// at once. [default: 1]
    #[arg(long, env = "WSGISCALE_THREADS", value_name = "N")]
    pub threads: Option<u32>,

    /// Threads of the HTTP front (the master's event loop). One is fastest unless the machine
    /// has cores to spare beyond the workers'. [default: 1]
    #[arg(long, env = "WSGISCALE_FRONT_THREADS", value_name = "N")]
    pub front_threads: Option<u32>,

    /// Directory to change into before importing the application.
    #[arg(long, env = "WSGISCALE_CHDIR", value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// Directory prepended to sys.path. Repeatable; colon-separated in the environment.
    #[arg(
        long,
        env = "WSGISCALE_PYTHONPATH",
        value_name = "DIR",
        value_delimiter = ':'
    )]
    pub pythonpath: Vec<PathBuf>,

    /// Virtualenv whose site-packages the application uses. [default: $VIRTUAL_ENV]
    #[arg(long, env = "WSGISCALE_VENV", value_name = "DIR")]
    pub venv: Option<PathBuf>,

    /// Import the application in every worker instead of once in the fork server.
    #[arg(long, env = "WSGISCALE_NO_PRELOAD")]
    pub no_preload: bool,

    /// Largest request body accepted; larger ones get 413. [default: 64Mi]
    #[arg(long, env = "WSGISCALE_MAX_BODY", value_name = "BYTES")]
    pub max_body: Option<ByteSize>,

    /// Requests waiting for a worker beyond this get 503 with Retry-After. [default: 1024]
    #[arg(long, env = "WSGISCALE_MAX_QUEUE", value_name = "REQUESTS")]
    pub max_queue: Option<u32>,

    /// How long an idle keep-alive connection (or one sending its headers) may stay open.
    /// Keep it above your load balancer's idle timeout. [default: 75s]
    #[arg(long, env = "WSGISCALE_KEEPALIVE_TIMEOUT", value_name = "DURATION")]
    pub keepalive_timeout: Option<Dur>,

    /// How long a client may take to send a request body; then 408. [default: 60s]
    #[arg(long, env = "WSGISCALE_BODY_TIMEOUT", value_name = "DURATION")]
    pub body_timeout: Option<Dur>,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish. Keep it below the
    /// pod's terminationGracePeriodSeconds. [default: 25s]
    #[arg(long, env = "WSGISCALE_GRACEFUL_TIMEOUT", value_name = "DURATION")]
    pub graceful_timeout: Option<Dur>,

    /// Per-request deadline: a worker still busy after it has its Python stack logged, is
    /// killed and replaced, and the client gets 504. [default: off]
    #[arg(long, env = "WSGISCALE_TIMEOUT", value_name = "DURATION")]
    pub timeout: Option<Dur>,

    /// Recycle a worker after this many requests (0: never). [default: 0]
    #[arg(long, env = "WSGISCALE_MAX_REQUESTS", value_name = "N")]
    pub max_requests: Option<u64>,

    /// Random extra requests (0..=N) per worker before recycling, so workers do not recycle
    /// together. [default: 0]
    #[arg(long, env = "WSGISCALE_MAX_REQUESTS_JITTER", value_name = "N")]
    pub max_requests_jitter: Option<u64>,

    /// Recycle a worker after it has lived this long. [default: off]
    #[arg(long, env = "WSGISCALE_MAX_LIFETIME", value_name = "DURATION")]
    pub max_lifetime: Option<Dur>,

    /// Recycle a worker after a request when its resident memory exceeds this. [default: off]
    #[arg(long, env = "WSGISCALE_MAX_RSS", value_name = "BYTES")]
    pub max_rss: Option<ByteSize>,

    /// Log format. [default: plain]
    #[arg(long, env = "WSGISCALE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `wsgiscale=debug`.
    /// [default: info]
    #[arg(long, env = "WSGISCALE_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Log one line per request (method, path, status, bytes, duration).
    #[arg(long, env = "WSGISCALE_ACCESS_LOG")]
    pub access_log: bool,
}

/// The config file: the same keys as the flags of [`ServeArgs`], in kebab-case. Unknown keys
/// are an error so that a typo is not silently ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct FileConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bind: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_bind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_initial: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cheaper_algo: Option<Algorithm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cheaper_step: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cheaper_overload: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cheaper_idle: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cheaper_backlog: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cheaper_busyness_min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cheaper_busyness_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cheaper_busyness_multiplier: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cheaper_busyness_penalty: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cheaper_busyness_backlog: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front_threads: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chdir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pythonpath: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venv: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preload: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_timeout: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_timeout: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_timeout: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_jitter: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rss: Option<Scalar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<bool>,
}

/// A YAML scalar that may be written as a number or a string (`workers: 4`, `workers: "2:8"`,
/// `max-rss: 512Mi`, `timeout: 30`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// An unquoted integer.
    Int(u64),
    /// An unquoted decimal.
    Float(f64),
    /// Anything else.
    Text(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(s) => s.clone(),
        }
    }
}

impl FileConfig {
    /// Parses the YAML text of a config file. An empty file is an empty config.
    pub fn from_yaml(text: &str) -> Result<FileConfig, ConfigError> {
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        // No source snippet: the message goes on one log line (a live reload that fails).
        let options = serde_saphyr::options! { with_snippet: false };
        serde_saphyr::from_str_with_options(text, options)
            .map_err(|e| ConfigError::File(e.to_string()))
    }

    /// Renders the file as YAML.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("FileConfig serializes: it holds only plain values")
    }
}

/// `MODULE:CALLABLE`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    /// Dotted module path, e.g. `myproject.wsgi`.
    pub module: String,
    /// Attribute of the module, e.g. `application`.
    pub callable: String,
}

impl FromStr for AppSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (module, callable) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not MODULE:CALLABLE"))?;
        let ident = |t: &str| {
            !t.is_empty()
                && !t.starts_with(|c: char| c.is_ascii_digit())
                && t.chars().all(|c| c.is_alphanumeric() || c == '_')
        };
        if !module.split('.').all(ident) || !ident(callable) {
            return Err(format!(
                "{s:?} is not MODULE:CALLABLE (dotted Python identifiers, e.g. app.wsgi:application)"
            ));
        }
        Ok(AppSpec {
            module: module.to_string(),
            callable: callable.to_string(),
        })
    }
}

impl std::fmt::Display for AppSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.module, self.callable)
    }
}

/// How the Python side is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PythonConfig {
    /// The application to import.
    pub app: AppSpec,
    /// Directory to change into first.
    pub chdir: Option<PathBuf>,
    /// Directories prepended to sys.path, in order.
    pub pythonpath: Vec<PathBuf>,
    /// Virtualenv to use.
    pub venv: Option<PathBuf>,
    /// Import once in the fork server (true) or in each worker (false).
    pub preload: bool,
    /// Python threads (and so concurrent requests) per worker.
    pub threads: u32,
}

/// Limits and timeouts of the HTTP front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Largest request body, bytes.
    pub max_body: u64,
    /// Most requests waiting for a worker.
    pub max_queue: usize,
    /// Idle keep-alive (and header read) timeout.
    pub keepalive_timeout: Duration,
    /// Request body read timeout.
    pub body_timeout: Duration,
    /// Drain deadline on shutdown.
    pub graceful_timeout: Duration,
    /// Whether to log one line per request.
    pub access_log: bool,
}

/// Worker-count limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Fewest workers.
    pub min: u32,
    /// Most workers.
    pub max: u32,
    /// Workers at boot.
    pub initial: u32,
}

/// Knobs of the worker-count algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalingConfig {
    /// Which algorithm.
    pub algo: Algorithm,
    /// Most workers spawned per decision.
    pub step: u32,
    /// Checks of sustained overload/idleness (spare), window (busyness).
    pub overload: u32,
    /// spare2: checks of surplus before retiring.
    pub idle: u32,
    /// backlog: queue threshold.
    pub backlog: u32,
    /// busyness: lower threshold, percent.
    pub busyness_min: u32,
    /// busyness: upper threshold, percent.
    pub busyness_max: u32,
    /// busyness: retirement multiplier.
    pub busyness_multiplier: u32,
    /// busyness: anti-flap penalty.
    pub busyness_penalty: u32,
    /// busyness: emergency queue threshold.
    pub busyness_backlog: u32,
}

impl Default for ScalingConfig {
    /// The defaults of the `--cheaper-*` flags.
    fn default() -> Self {
        ScalingConfig {
            algo: Algorithm::default(),
            step: 1,
            overload: 3,
            idle: 10,
            backlog: 1,
            busyness_min: 25,
            busyness_max: 50,
            busyness_multiplier: 10,
            busyness_penalty: 2,
            busyness_backlog: 33,
        }
    }
}

/// Worker lifecycle rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// Per-request deadline.
    pub timeout: Option<Duration>,
    /// Requests before recycling (0: never).
    pub max_requests: u64,
    /// Random extra requests per worker.
    pub max_requests_jitter: u64,
    /// Age before recycling.
    pub max_lifetime: Option<Duration>,
    /// RSS before recycling, bytes.
    pub max_rss: Option<u64>,
}

/// The settings that a changed config file (or SIGHUP) applies to a running server without
/// restarting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveConfig {
    /// Worker-count limits.
    pub workers: WorkerLimits,
    /// Scaling algorithm and knobs.
    pub scaling: ScalingConfig,
    /// Lifecycle rules.
    pub lifecycle: LifecycleConfig,
}

/// Logging setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// EnvFilter directive.
    pub level: String,
}

/// The fully resolved and validated server configuration: no `Option` left that has a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// HTTP listeners.
    pub binds: Vec<BindAddr>,
    /// Admin listener.
    pub admin_bind: BindAddr,
    /// Python setup.
    pub python: PythonConfig,
    /// HTTP front limits.
    pub http: HttpConfig,
    /// Live-reloadable settings.
    pub live: LiveConfig,
    /// Logging.
    pub log: LogConfig,
    /// The config file, if one was given (watched for changes).
    pub config_file: Option<PathBuf>,
    /// Threads of the HTTP front's event loop.
    pub front_threads: u32,
}

/// Defaults, in one place (the `[default: ...]` texts of the flags repeat them).
pub mod defaults {
    use std::time::Duration;
    /// Default HTTP bind address.
    pub const BIND: &str = "127.0.0.1:8000";
    /// Default admin bind address.
    pub const ADMIN_BIND: &str = "127.0.0.1:9191";
    /// Default worker count.
    pub const WORKERS: u32 = 2;
    /// Default largest body.
    pub const MAX_BODY: u64 = 64 << 20;
    /// Default queue bound.
    pub const MAX_QUEUE: u32 = 1024;
    /// Default keep-alive timeout.
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
    /// Default body timeout.
    pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default graceful timeout.
    pub const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(25);
    /// Most workers accepted for MAX.
    pub const WORKERS_LIMIT: u32 = 1024;
    /// Most threads per worker accepted.
    pub const THREADS_LIMIT: u32 = 256;
}

fn from_file<T: FromStr<Err = String>>(
    key: &'static str,
    value: &Option<Scalar>,
) -> Result<Option<T>, ConfigError> {
    value
        .as_ref()
        .map(|v| v.text().parse::<T>().map_err(|e| invalid(key, e)))
        .transpose()
}

/// Resolves flags/environment (`args`) over the config file (`file`) over the defaults, and
/// validates the result. `virtual_env` is `$VIRTUAL_ENV`, the fallback for `--venv`.
pub fn resolve(
    args: &ServeArgs,
    file: &FileConfig,
    virtual_env: Option<PathBuf>,
) -> Result<ServerConfig, ConfigError> {
    // Destructured so that a flag added to ServeArgs and forgotten here fails to compile.
    let ServeArgs {
        app,
        config,
        bind,
        admin_bind,
        workers,
        workers_initial,
        cheaper_algo,
        cheaper_step,
        cheaper_overload,
        cheaper_idle,
        cheaper_backlog,
        cheaper_busyness_min,
        cheaper_busyness_max,
        cheaper_busyness_multiplier,
        cheaper_busyness_penalty,
        cheaper_busyness_backlog,
        threads,
        front_threads,
        chdir,
        pythonpath,
        venv,
        no_preload,
        max_body,
        max_queue,
        keepalive_timeout,
        body_timeout,
        graceful_timeout,
        timeout,
        max_requests,
        max_requests_jitter,
        max_lifetime,
        max_rss,
        log_format,
        log_level,
        access_log,
    } = args;

    let app_text = app.clone().or_else(|| file.app.clone());
    let app: AppSpec = app_text
        .ok_or(ConfigError::MissingApp)?
        .parse()
        .map_err(|e| invalid("app", e))?;

    let binds = if !bind.is_empty() {
        bind.clone()
    } else if !file.bind.is_empty() {
        file.bind
            .iter()
            .map(|b| b.parse().map_err(|e| invalid("bind", e)))
            .collect::<Result<_, _>>()?
    } else {
        vec![defaults::BIND.parse().expect("default bind parses")]
    };
    let admin_bind = match (admin_bind, &file.admin_bind) {
        (Some(a), _) => a.clone(),
        (None, Some(a)) => a.parse().map_err(|e| invalid("admin-bind", e))?,
        (None, None) => defaults::ADMIN_BIND
            .parse()
            .expect("default admin bind parses"),
    };
    let ephemeral = matches!(&admin_bind, BindAddr::Tcp(a) if a.port() == 0);
    for b in &binds {
        if *b == admin_bind && !ephemeral {
            return Err(invalid(
                "admin-bind",
                format!("{b} is also a --bind address"),
            ));
        }
    }

    let range = match workers {
        Some(w) => *w,
        None => from_file::<WorkerRange>("workers", &file.workers)?.unwrap_or(WorkerRange {
            min: defaults::WORKERS,
            max: defaults::WORKERS,
        }),
    };
    if range.min == 0 {
        return Err(invalid("workers", "MIN must be at least 1"));
    }
    if range.min > range.max {
        return Err(invalid(
            "workers",
            format!("MIN {} is greater than MAX {}", range.min, range.max),
        ));
    }
    if range.max > defaults::WORKERS_LIMIT {
        return Err(invalid(
            "workers",
            format!("MAX {} is above {}", range.max, defaults::WORKERS_LIMIT),
        ));
    }
    let initial = workers_initial
        .or(file.workers_initial)
        .unwrap_or(range.min);
    if initial < range.min || initial > range.max {
        return Err(invalid(
            "workers-initial",
            format!("{initial} is outside {}..={}", range.min, range.max),
        ));
    }

    let pick =
        |flag: &Option<u32>, file: Option<u32>, default: u32| flag.or(file).unwrap_or(default);
    let d = ScalingConfig::default();
    let scaling = ScalingConfig {
        algo: cheaper_algo.or(file.cheaper_algo).unwrap_or(d.algo),
        step: pick(cheaper_step, file.cheaper_step, d.step),
        overload: pick(cheaper_overload, file.cheaper_overload, d.overload),
        idle: pick(cheaper_idle, file.cheaper_idle, d.idle),
        backlog: pick(cheaper_backlog, file.cheaper_backlog, d.backlog),
        busyness_min: pick(
            cheaper_busyness_min,
            file.cheaper_busyness_min,
            d.busyness_min,
        ),
        busyness_max: pick(
            cheaper_busyness_max,
            file.cheaper_busyness_max,
            d.busyness_max,
        ),
        busyness_multiplier: pick(
            cheaper_busyness_multiplier,
            file.cheaper_busyness_multiplier,
            d.busyness_multiplier,
        ),
        busyness_penalty: pick(
            cheaper_busyness_penalty,
            file.cheaper_busyness_penalty,
            d.busyness_penalty,
        ),
        busyness_backlog: pick(
            cheaper_busyness_backlog,
            file.cheaper_busyness_backlog,
            d.busyness_backlog,
        ),
    };
    if scaling.step == 0 {
        return Err(invalid("cheaper-step", "must be at least 1"));
    }
    if scaling.overload == 0 {
        return Err(invalid("cheaper-overload", "must be at least 1"));
    }
    if scaling.idle == 0 {
        return Err(invalid("cheaper-idle", "must be at least 1"));
    }
    if scaling.busyness_multiplier == 0 {
        return Err(invalid("cheaper-busyness-multiplier", "must be at least 1"));
    }
    if scaling.busyness_max > 100 || scaling.busyness_min >= scaling.busyness_max {
        return Err(invalid(
            "cheaper-busyness-min",
            format!(
                "need 0 <= min < max <= 100, got min {} and max {}",
                scaling.busyness_min, scaling.busyness_max
            ),
        ));
    }

    let front_threads = front_threads.or(file.front_threads).unwrap_or(1);
    if front_threads == 0 || front_threads > defaults::THREADS_LIMIT {
        return Err(invalid(
            "front-threads",
            format!("{front_threads} is outside 1..={}", defaults::THREADS_LIMIT),
        ));
    }
    let threads = threads.or(file.threads).unwrap_or(1);
    if threads == 0 || threads > defaults::THREADS_LIMIT {
        return Err(invalid(
            "threads",
            format!("{threads} is outside 1..={}", defaults::THREADS_LIMIT),
        ));
    }

    let dur = |key: &'static str, flag: &Option<Dur>, file: &Option<Scalar>| {
        Ok::<_, ConfigError>(match flag {
            Some(d) => Some(d.0),
            None => from_file::<Dur>(key, file)?.map(|d| d.0),
        })
    };
    let nonzero = |d: Option<Duration>| d.filter(|d| !d.is_zero());

    let max_body = match max_body {
        Some(b) => b.0,
        None => from_file::<ByteSize>("max-body", &file.max_body)?
            .map(|b| b.0)
            .unwrap_or(defaults::MAX_BODY),
    };
    let max_queue = max_queue.or(file.max_queue).unwrap_or(defaults::MAX_QUEUE) as usize;
    let keepalive_timeout = dur(
        "keepalive-timeout",
        keepalive_timeout,
        &file.keepalive_timeout,
    )?
    .unwrap_or(defaults::KEEPALIVE_TIMEOUT);
    if keepalive_timeout.is_zero() {
        return Err(invalid("keepalive-timeout", "must be above zero"));
    }
    let body_timeout =
        dur("body-timeout", body_timeout, &file.body_timeout)?.unwrap_or(defaults::BODY_TIMEOUT);
    if body_timeout.is_zero() {
        return Err(invalid("body-timeout", "must be above zero"));
    }
    let graceful_timeout = dur("graceful-timeout", graceful_timeout, &file.graceful_timeout)?
        .unwrap_or(defaults::GRACEFUL_TIMEOUT);

    let lifecycle = LifecycleConfig {
        timeout: nonzero(dur("timeout", timeout, &file.timeout)?),
        max_requests: max_requests.or(file.max_requests).unwrap_or(0),
        max_requests_jitter: max_requests_jitter
            .or(file.max_requests_jitter)
            .unwrap_or(0),
        max_lifetime: nonzero(dur("max-lifetime", max_lifetime, &file.max_lifetime)?),
        max_rss: match max_rss {
            Some(b) => Some(b.0),
            None => from_file::<ByteSize>("max-rss", &file.max_rss)?.map(|b| b.0),
        }
        .filter(|b| *b > 0),
    };

    let python = PythonConfig {
        app,
        chdir: chdir.clone().or_else(|| file.chdir.clone()),
        pythonpath: if pythonpath.is_empty() {
            file.pythonpath.clone()
        } else {
            pythonpath.clone()
        },
        venv: venv
            .clone()
            .or_else(|| file.venv.clone())
            .or(virtual_env)
            .filter(|p| !p.as_os_str().is_empty()),
        preload: if *no_preload {
            false
        } else {
            file.preload.unwrap_or(true)
        },
        threads,
    };

    Ok(ServerConfig {
        binds,
        admin_bind,
        python,
        http: HttpConfig {
            max_body,
            max_queue,
            keepalive_timeout,
            body_timeout,
            graceful_timeout,
            access_log: *access_log || file.access_log.unwrap_or(false),
        },
        live: LiveConfig {
            workers: WorkerLimits {
                min: range.min,
                max: range.max,
                initial,
            },
            scaling,
            lifecycle,
        },
        log: LogConfig {
            format: log_format.or(file.log_format).unwrap_or_default(),
            level: log_level
                .clone()
                .or_else(|| file.log_level.clone())
                .unwrap_or_else(|| "info".into()),
        },
        config_file: config.clone(),
        front_threads,
    })
}

/// Renders a [`FileConfig`] key for a duration, in a form [`parse_duration`] reads back.
pub fn duration_scalar(d: Duration) -> Scalar {
    Scalar::Text(format_duration(d))
}

/// A clap parser for exactly `serve`'s flags, used by the operator's round-trip test and by
/// anything else that needs to read a rendered command line back.
#[derive(Debug, clap::Parser)]
#[command(name = "wsgiscale")]
pub struct ServeCommand {
    /// The subcommand.
    #[command(subcommand)]
    pub command: ServeOnly,
}

/// The `serve` subcommand alone.
#[derive(Debug, clap::Subcommand)]
pub enum ServeOnly {
    /// Serve a WSGI application.
    Serve(ServeArgs),
}

/// Parses `argv` (including the program name, then `serve`) into [`ServeArgs`].
pub fn parse_serve_argv<I, T>(argv: I) -> Result<ServeArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::Parser;
    let ServeOnly::Serve(args) = ServeCommand::try_parse_from(argv)?.command;
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> ServeArgs {
        let mut full = vec!["wsgiscale", "serve"];
        full.extend_from_slice(argv);
        parse_serve_argv(full).expect("test argv parses")
    }

    fn resolve_argv(argv: &[&str]) -> Result<ServerConfig, ConfigError> {
        resolve(&args(argv), &FileConfig::default(), None)
    }

    #[test]
    fn defaults_apply() {
        let cfg = resolve_argv(&["app:application"]).expect("valid");
        assert_eq!(
            cfg.binds,
            vec![BindAddr::Tcp("127.0.0.1:8000".parse().unwrap())]
        );
        assert_eq!(
            cfg.admin_bind,
            BindAddr::Tcp("127.0.0.1:9191".parse().unwrap())
        );
        assert_eq!(
            cfg.live.workers,
            WorkerLimits {
                min: 2,
                max: 2,
                initial: 2
            }
        );
        assert_eq!(cfg.live.scaling.algo, Algorithm::Spare);
        assert_eq!(cfg.live.scaling.step, 1);
        assert!(cfg.python.preload);
        assert_eq!(cfg.python.threads, 1);
        assert_eq!(cfg.http.max_body, 64 << 20);
        assert_eq!(cfg.live.lifecycle.timeout, None);
    }

    #[test]
    fn bind_forms() {
        let cases = [
            (
                "127.0.0.1:0",
                Some(BindAddr::Tcp("127.0.0.1:0".parse().unwrap())),
            ),
            ("[::1]:80", Some(BindAddr::Tcp("[::1]:80".parse().unwrap()))),
            (
                ":8000",
                Some(BindAddr::Tcp("0.0.0.0:8000".parse().unwrap())),
            ),
            (
                "localhost:81",
                Some(BindAddr::Tcp("127.0.0.1:81".parse().unwrap())),
            ),
            (
                "unix:/tmp/s.sock",
                Some(BindAddr::Unix("/tmp/s.sock".into())),
            ),
            ("unix:", None),
            ("example.com:80", None),
            ("8000", None),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<BindAddr>().ok(), want, "{text}");
        }
    }

    #[test]
    fn app_spec_forms() {
        assert!("a.b_c.wsgi:application".parse::<AppSpec>().is_ok());
        for bad in ["app", ":app", "app:", "1app:x", "a..b:x", "a-b:x", "a:b:c"] {
            assert!(bad.parse::<AppSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_inputs_are_errors_naming_the_key() {
        let cases: &[(&[&str], &str)] = &[
            (&["app:x", "--workers", "4:2"], "workers"),
            (&["app:x", "--workers", "0"], "workers"),
            (
                &["app:x", "--workers", "2:4", "--workers-initial", "5"],
                "workers-initial",
            ),
            (&["app:x", "--threads", "0"], "threads"),
            (&["app:x", "--cheaper-step", "0"], "cheaper-step"),
            (
                &[
                    "app:x",
                    "--cheaper-busyness-min",
                    "60",
                    "--cheaper-busyness-max",
                    "50",
                ],
                "cheaper-busyness-min",
            ),
            (&["app:x", "--bind", "127.0.0.1:9191"], "admin-bind"),
            (&["nocolon"], "app"),
        ];
        for (argv, key) in cases {
            match resolve_argv(argv) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, *key, "{argv:?}"),
                other => panic!("{argv:?}: expected invalid {key}, got {other:?}"),
            }
        }
        assert_eq!(
            resolve(&ServeArgs::default(), &FileConfig::default(), None),
            Err(ConfigError::MissingApp)
        );
    }

    #[test]
    fn unknown_algorithm_and_bad_flags_are_parse_errors() {
        let mut argv = vec!["wsgiscale", "serve", "app:x", "--cheaper-algo", "sparse"];
        assert!(parse_serve_argv(argv.clone()).is_err());
        argv.truncate(3);
        argv.extend(["--max-body", "lots"]);
        assert!(parse_serve_argv(argv).is_err());
    }

    #[test]
    fn flags_override_file_and_file_overrides_defaults() {
        let file = FileConfig::from_yaml(
            "app: fromfile:app\nworkers: \"2:8\"\ncheaper-algo: busyness\nmax-rss: 512Mi\ntimeout: 30\nthreads: 4\npreload: false\n",
        )
        .expect("valid yaml");
        let cfg = resolve(&args(&["--workers", "3:6"]), &file, None).expect("valid");
        assert_eq!(cfg.python.app.module, "fromfile");
        assert_eq!(
            cfg.live.workers,
            WorkerLimits {
                min: 3,
                max: 6,
                initial: 3
            }
        );
        assert_eq!(cfg.live.scaling.algo, Algorithm::Busyness);
        assert_eq!(cfg.live.lifecycle.max_rss, Some(512 << 20));
        assert_eq!(cfg.live.lifecycle.timeout, Some(Duration::from_secs(30)));
        assert_eq!(cfg.python.threads, 4);
        assert!(!cfg.python.preload);
    }

    #[test]
    fn file_rejects_unknown_keys() {
        let err = FileConfig::from_yaml("workerz: 3\n").unwrap_err();
        assert!(err.to_string().contains("workerz"), "{err}");
    }

    #[test]
    fn venv_falls_back_to_virtual_env() {
        let cfg = resolve(
            &args(&["a:b"]),
            &FileConfig::default(),
            Some("/venv".into()),
        )
        .expect("valid");
        assert_eq!(cfg.python.venv, Some(PathBuf::from("/venv")));
    }

    #[test]
    fn file_round_trips_through_yaml() {
        let file = FileConfig {
            workers: Some(Scalar::Text("2:16".into())),
            cheaper_algo: Some(Algorithm::Spare2),
            max_rss: Some(Scalar::Text("300Mi".into())),
            timeout: Some(duration_scalar(Duration::from_millis(1500))),
            ..FileConfig::default()
        };
        assert_eq!(FileConfig::from_yaml(&file.to_yaml()), Ok(file));
    }
}
