//! The server's configuration: command-line flags (each with a `WSGISCALE_*` environment twin),
//! the optional YAML config file with the same keys, and the resolved, validated
//! [`ServerConfig`] that the rest of the server reads.
//!
//! Precedence, lowest first: built-in defaults, the config file, environment, flags. Flags and
//! environment are both seen by clap and arrive here as `Some`; the file fills what they left
//! `None`. [`resolve`] is pure: it never touches the file system, so the live-reload path can
//! call it again with a re-read file and the original flags.
//!
//! Two parts of the settings have modules of their own: the server hooks ([`hooks`]) and the
//! front's TLS and HTTP/2 settings ([`protocols`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{format_duration, parse_duration, parse_size};
use hooks::{HookSpec, Hooks};
use protocols::{resolve_protocols, Cidr, ClientVerify, ProtocolConfig, ProtocolSettings};

pub mod hooks;
pub mod protocols;

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

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(ByteSize).map_err(|e| e.to_string())
    }
}

/// A duration as written by the user (`30`, `250ms`, `2m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s).map(Dur).map_err(|e| e.to_string())
    }
}

/// The worker-count algorithm (uWSGI's "cheaper" algorithms, fixed where uWSGI is broken).
/// One type for the flag, the file and the WsgiApp's `workers.algorithm`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
#[schemars(transform = no_description)]
pub enum Algorithm {
    /// Spawn `step` after `overload` checks with every worker busy; retire one idle worker
    /// every `overload` checks while more than one is idle.
    Spare,
    /// Keep `idle` spare workers: spawn the shortfall at once (up to `step`), retire one after
    /// `cheaper-idle` checks of surplus. The default: it measured best on bench/step.py's
    /// step and spike loads (docs/scaling.md).
    #[default]
    Spare2,
    /// Spawn while the request queue is deeper than `cheaper-backlog`; retire below it.
    Backlog,
    /// Average busy fraction over a window against min/max thresholds, with anti-flap penalty.
    Busyness,
    /// Only SIGTTIN/SIGTTOU (or a new config) change the count.
    Manual,
}

/// Drops an enum's own description from its JSON schema: a CRD field that uses it shows the
/// field's text (which lists the values) in `kubectl explain`, and the schema stays a plain
/// `enum` of names.
pub(crate) fn no_description(schema: &mut schemars::Schema) {
    schema.remove("description");
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

/// Log line format: one type for the server's flag and file, the WsgiApp's
/// `logging.format` and the operator's own `--log-format`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
#[schemars(transform = no_description)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// Peers whose forwarding headers are believed (`--forwarded-allow-ips`): addresses and CIDR
/// blocks, or every peer (`*`). Written as a comma-separated list; the empty list trusts no TCP
/// peer (a unix-socket peer is always trusted: the socket's file permissions decide who
/// connects).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyList {
    /// `*`: every peer is trusted.
    pub any: bool,
    /// The trusted blocks (a single address is a /32 or /128).
    pub nets: Vec<ipnet::IpNet>,
}

impl ProxyList {
    /// Whether `ip` is trusted. An IPv4 peer that reaches a dual-stack socket as an
    /// IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.any {
            return true;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        // Compared as integers under the prefix's mask: this runs for the peer and every
        // forwarded hop of every request, and `IpNet::contains` builds the network and
        // broadcast addresses each time (a third of what reading the headers cost).
        self.nets.iter().any(|n| match (n, ip) {
            (ipnet::IpNet::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(n.prefix_len()))
                    .unwrap_or(0);
                (u32::from(a) ^ u32::from(n.addr())) & mask == 0
            }
            (ipnet::IpNet::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(n.prefix_len()))
                    .unwrap_or(0);
                (u128::from(a) ^ u128::from(n.addr())) & mask == 0
            }
            _ => false,
        })
    }
}

impl FromStr for ProxyList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut list = ProxyList::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                list.any = true;
                continue;
            }
            let net = match item.parse::<ipnet::IpNet>() {
                Ok(n) => n.trunc(),
                Err(_) => item
                    .parse::<IpAddr>()
                    .map(ipnet::IpNet::from)
                    .map_err(|_| format!("{item:?} is not an IP address, a CIDR block or *"))?,
            };
            if !list.nets.contains(&net) {
                list.nets.push(net);
            }
        }
        Ok(list)
    }
}

impl std::fmt::Display for ProxyList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut items: Vec<String> = Vec::new();
        if self.any {
            items.push("*".into());
        }
        for n in &self.nets {
            items.push(if n.prefix_len() == n.max_prefix_len() {
                n.addr().to_string()
            } else {
                n.to_string()
            });
        }
        f.write_str(&items.join(","))
    }
}

/// Which headers of a trusted proxy name the client, the scheme and the host
/// (`--forwarded-headers`). One family only: most proxies set one and pass the other through
/// from the client untouched, so reading both would let a client forge the one its proxy
/// does not set. One type for the flag, the file and the WsgiApp's field.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
#[schemars(transform = no_description)]
pub enum ForwardedHeaders {
    /// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Forwarded-Port` (what
    /// ingress-nginx, Envoy, Traefik and the cloud load balancers set).
    #[default]
    XForwarded,
    /// RFC 7239 `Forwarded: for=...;proto=...;host=...` (HAProxy's `option forwarded`).
    Forwarded,
}

impl ForwardedHeaders {
    /// The name used on the command line and in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardedHeaders::XForwarded => "x-forwarded",
            ForwardedHeaders::Forwarded => "forwarded",
        }
    }
}

/// What a request whose path is outside the root path gets (`--outside-root-path`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
#[schemars(transform = no_description)]
pub enum OutsideRootPath {
    /// 404 from the server; the app never sees it.
    #[default]
    NotFound,
    /// The app gets it with an empty `SCRIPT_NAME` and the whole path in `PATH_INFO`.
    Pass,
}

impl OutsideRootPath {
    /// The name used on the command line and in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            OutsideRootPath::NotFound => "not-found",
            OutsideRootPath::Pass => "pass",
        }
    }
}

/// A URL path prefix (`--root-path`, a `--static` mount): `/` then segments of URL-safe
/// characters (no `%`, `,` or `=`), kept without a trailing slash (`/static/` is `/static`); the empty prefix is the
/// root. It holds no `%`, so its raw and percent-decoded forms are the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct UrlPrefix(String);

impl UrlPrefix {
    /// The prefix without a trailing slash; empty for the root.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the root (no prefix).
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The rest of `path` after this prefix when `path` is under it on a segment boundary
    /// (`/app` matches `/app` and `/app/x`, not `/apple`): empty or starting with `/`.
    pub fn strip<'p>(&self, path: &'p [u8]) -> Option<&'p [u8]> {
        let rest = path.strip_prefix(self.0.as_bytes())?;
        (rest.is_empty() || rest[0] == b'/').then_some(rest)
    }
}

impl FromStr for UrlPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Ok(UrlPrefix::default());
        }
        if !s.starts_with('/') {
            return Err(format!("{s:?} must start with /"));
        }
        let trimmed = s.trim_end_matches('/');
        for segment in trimmed.split('/').skip(1) {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(format!("{s:?} has an empty, . or .. segment"));
            }
        }
        // No `%` (raw and decoded forms stay equal), no `,` (the environment's list
        // separator), no `=` (it ends the prefix in `--static PREFIX=DIR`).
        let safe = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+;:@/".contains(c);
        if let Some(c) = trimmed.chars().find(|c| !safe(*c)) {
            return Err(format!(
                "{s:?} holds {c:?}: a prefix is letters, digits and -._~!$&'()*+;:@ between slashes"
            ));
        }
        Ok(UrlPrefix(trimmed.to_string()))
    }
}

impl std::fmt::Display for UrlPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `--static URL_PREFIX=DIR`: files of DIR served by the front under URL_PREFIX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticMount {
    /// The URL prefix, never the root (that would hide the app).
    pub prefix: UrlPrefix,
    /// The directory, as given (a relative one is relative to where the server starts).
    pub dir: PathBuf,
}

impl FromStr for StaticMount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (prefix, dir) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not URL_PREFIX=DIR"))?;
        let prefix: UrlPrefix = prefix.parse()?;
        if prefix.is_root() {
            return Err(format!(
                "{s:?}: a static mount at / would hide the application; mount it under a prefix such as /static"
            ));
        }
        if dir.is_empty() {
            return Err(format!("{s:?} names no directory"));
        }
        Ok(StaticMount {
            prefix,
            dir: PathBuf::from(dir),
        })
    }
}

impl std::fmt::Display for StaticMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.prefix, self.dir.display())
    }
}

/// A header name for the access log (`--access-log-request-header X-Request-ID`): an HTTP
/// token, kept in lowercase (the form HTTP/2 and the log's keys use).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogHeader(String);

impl LogHeader {
    /// The lowercase name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LogHeader {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if s.is_empty() || s.len() > 64 || !s.chars().all(token) {
            return Err(format!(
                "{s:?} is not a header name (1 to 64 letters, digits and !#$%&'*+-.^_`|~)"
            ));
        }
        Ok(LogHeader(s.to_ascii_lowercase()))
    }
}

impl std::fmt::Display for LogHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every setting of `wsgiscale serve`, declared once: the field's name is the flag (`--max-rss`)
/// and the config file's key (`max-rss`), its `env` the environment twin, its doc comment the
/// help text, its type the parser of all three. Every field is optional so that layers can be
/// stacked ([`Settings::over`]): flags and environment (clap) over the config file (serde) over
/// [`Settings::defaults`]; [`resolve`] validates the result.
///
/// Which settings a running server applies from a changed file is [`Settings::live`].
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[command(about = "Serve a WSGI application")]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Settings {
    /// The WSGI application as MODULE:CALLABLE, e.g. `myproject.wsgi:application`.
    #[arg(env = "WSGISCALE_APP", value_name = "MODULE:CALLABLE")]
    pub app: Option<String>,

    /// YAML file with the same keys as these flags (without the dashes prefix); flags and
    /// environment override it. Worker limits, algorithm and lifecycle settings in it are
    /// re-read live when the file changes or on SIGHUP.
    #[arg(long, env = "WSGISCALE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Take no setting from `WSGISCALE_*` environment variables; any that are set are logged
    /// and ignored. The operator passes it: a pod's settings come from its WsgiApp, and a
    /// variable brought in by `envFrom` would otherwise override the live config file.
    #[arg(long)]
    #[serde(skip)]
    pub ignore_env: bool,

    /// Address to serve HTTP on: `host:port` or `unix:/path`. Repeatable; comma-separated in
    /// the environment. [default: 127.0.0.1:8000] (none when --tls-bind is given)
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

    /// Worker-count algorithm. [default: spare2]
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

    /// Import the application in every worker instead of once in the fork server (in the file:
    /// `preload: false`).
    #[arg(
        long = "no-preload",
        env = "WSGISCALE_NO_PRELOAD",
        num_args = 0,
        default_missing_value = "true",
        value_parser = clap::builder::TypedValueParser::map(clap::builder::BoolishValueParser::new(), |no: bool| !no)
    )]
    pub preload: Option<bool>,

    /// Largest request body accepted; larger ones get 413. [default: 64Mi]
    #[arg(long, env = "WSGISCALE_MAX_BODY", value_name = "BYTES")]
    pub max_body: Option<ByteSize>,

    /// Request bodies up to this size are held in memory; a larger one (or a chunked one that
    /// grows past it) goes to a temporary file in --temp-dir, which the worker reads as
    /// `wsgi.input` (nginx's client_body_buffer_size). [default: 1Mi]
    #[arg(long, env = "WSGISCALE_BODY_BUFFER", value_name = "BYTES")]
    pub body_buffer: Option<ByteSize>,

    /// Bytes of one streamed response the master holds in memory while its client reads more
    /// slowly than the app writes; the rest goes to a temporary file in --temp-dir.
    /// [default: 256Ki]
    #[arg(long, env = "WSGISCALE_RESPONSE_BUFFER", value_name = "BYTES")]
    pub response_buffer: Option<ByteSize>,

    /// Bytes of one response its temporary file may hold beyond --response-buffer (0: no
    /// file). A response that fits in both never holds a worker, whatever its client's speed;
    /// past them, the worker thread that produces it waits for the client (that response
    /// only). [default: 1Gi]
    #[arg(long, env = "WSGISCALE_RESPONSE_SPILL", value_name = "BYTES")]
    pub response_spill: Option<ByteSize>,

    /// Directory of the temporary files of large request bodies and slow responses; each is
    /// unlinked as it is created and gone when its request is. [default: $TMPDIR, else /tmp]
    #[arg(long, env = "WSGISCALE_TEMP_DIR", value_name = "DIR")]
    pub temp_dir: Option<PathBuf>,

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
    /// killed and replaced, and the client gets 504. With --threads N, the worker's other
    /// requests in flight die with it and get 502 (as in gunicorn's gthread workers).
    /// [default: off]
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

    /// Recycle a worker after a request when its own memory exceeds this: its unique set size
    /// (USS), the pages it does not share with the fork server and the other workers (RSS on
    /// kernels before 4.14). [default: off]
    #[arg(long, env = "WSGISCALE_MAX_RSS", value_name = "BYTES")]
    pub max_rss: Option<ByteSize>,

    /// Log format. [default: plain]
    #[arg(long, env = "WSGISCALE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `wsgiscale=debug`.
    /// [default: info]
    #[arg(long, env = "WSGISCALE_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Log one line per request when its response has ended, in --log-format: method, path,
    /// status, bytes sent, head_ms (to the response head) and duration_ms (to the last byte),
    /// the client; every value escaped.
    #[arg(
        long,
        env = "WSGISCALE_ACCESS_LOG",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub access_log: Option<bool>,

    // Server hooks ([`hooks`]): each is `MODULE:FUNCTION`, or `PATH:FUNCTION` for a
    // Python file loaded by path (a gunicorn.conf.py); a function may take fewer arguments
    // than it is offered. A hook that raises has its traceback logged.
    /// Hook run in the fork server once it has imported the app (when preloading), before it
    /// forks workers; again in the new fork server of each reload: `f(server)`.
    #[arg(long, env = "WSGISCALE_POST_LOAD", value_name = "MODULE:FUNCTION")]
    pub post_load: Option<HookSpec>,

    /// Hook run in the new fork server of a reload (SIGHUP), after --post-load:
    /// `f(server)`.
    #[arg(long, env = "WSGISCALE_ON_RELOAD", value_name = "MODULE:FUNCTION")]
    pub on_reload: Option<HookSpec>,

    /// Hook run in each new worker right after the fork, before it serves (and, without
    /// preload, before it imports the app): `f(server, worker)`. Start exporter threads and
    /// reset connection pools here. If it raises, the worker is not used.
    #[arg(long, env = "WSGISCALE_POST_FORK", value_name = "MODULE:FUNCTION")]
    pub post_fork: Option<HookSpec>,

    /// Hook run in each new worker once the app is loaded, before its first request:
    /// `f(worker)`. If it raises, the worker is not used.
    #[arg(
        long,
        env = "WSGISCALE_POST_WORKER_INIT",
        value_name = "MODULE:FUNCTION"
    )]
    pub post_worker_init: Option<HookSpec>,

    /// Hook run in a worker that stops normally (retired, recycled, shut down), before its
    /// atexit handlers: `f(server, worker)`. Not run in a killed worker.
    #[arg(long, env = "WSGISCALE_WORKER_EXIT", value_name = "MODULE:FUNCTION")]
    pub worker_exit: Option<HookSpec>,

    /// Hook run in the worker before each request: `f(worker, req)`.
    #[arg(long, env = "WSGISCALE_PRE_REQUEST", value_name = "MODULE:FUNCTION")]
    pub pre_request: Option<HookSpec>,

    /// Hook run in the worker after each response: `f(worker, req, environ, resp)`.
    #[arg(long, env = "WSGISCALE_POST_REQUEST", value_name = "MODULE:FUNCTION")]
    pub post_request: Option<HookSpec>,

    // TLS and HTTP/2 ([`protocols`]).
    /// Address to serve HTTPS on: `host:port` or `unix:/path`. Repeatable; comma-separated in
    /// the environment. Needs --tls-cert and --tls-key.
    #[arg(
        long,
        env = "WSGISCALE_TLS_BIND",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub tls_bind: Vec<BindAddr>,

    /// PEM certificate chain of the TLS binds, leaf first. Re-read when it changes (a
    /// cert-manager Secret volume), without dropping connections.
    #[arg(long, env = "WSGISCALE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1). Re-read when it changes.
    #[arg(long, env = "WSGISCALE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM bundle of the CAs that client certificates must chain to; needs
    /// --tls-client-verify optional or require. Re-read when it changes.
    #[arg(long, env = "WSGISCALE_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Client certificates: off, optional (verified when sent) or require. optional and
    /// require refuse to start without --tls-client-ca. [default: off]
    #[arg(long, env = "WSGISCALE_TLS_CLIENT_VERIFY", value_name = "MODE")]
    pub tls_client_verify: Option<ClientVerify>,

    /// Offer HTTP/2 by ALPN on the TLS binds. [default: true]
    #[arg(
        long,
        env = "WSGISCALE_HTTP2",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub http2: Option<bool>,

    /// Serve HTTP/2 with prior knowledge (h2c) on the plain --bind addresses, to peers in
    /// --h2c-allow-ips only (a proxy or mesh sidecar in front). [default: false]
    #[arg(
        long,
        env = "WSGISCALE_H2C",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub h2c: Option<bool>,

    /// Peers (CIDRs or addresses) that may use h2c; unix-socket peers always may.
    /// Repeatable; comma-separated. [default: 127.0.0.0/8,::1/128]
    #[arg(
        long,
        env = "WSGISCALE_H2C_ALLOW_IPS",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub h2c_allow_ips: Vec<Cidr>,
    /// A request header logged in each access log line, e.g. `X-Request-ID` or `traceparent`.
    /// Repeatable; comma-separated in the environment.
    #[arg(
        long,
        env = "WSGISCALE_ACCESS_LOG_REQUEST_HEADER",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub access_log_request_header: Vec<LogHeader>,

    /// A response header logged in each access log line, e.g. `Content-Type`. Repeatable;
    /// comma-separated in the environment.
    #[arg(
        long,
        env = "WSGISCALE_ACCESS_LOG_RESPONSE_HEADER",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub access_log_response_header: Vec<LogHeader>,

    /// Peers whose forwarding headers are believed: comma-separated addresses and CIDR blocks
    /// (`10.0.0.0/8,127.0.0.1`); `*` trusts every peer (unsafe unless only your proxies can
    /// reach the server); an empty value trusts no TCP peer. A unix-socket peer is always
    /// trusted. [default: 127.0.0.1,::1]
    #[arg(long, env = "WSGISCALE_FORWARDED_ALLOW_IPS", value_name = "CIDRS")]
    pub forwarded_allow_ips: Option<ProxyList>,

    /// Which headers of a trusted peer give the client address, scheme and host:
    /// `x-forwarded` (X-Forwarded-For/-Proto/-Host/-Port) or `forwarded` (RFC 7239). The other
    /// family reaches the app untouched and changes nothing. [default: x-forwarded]
    #[arg(long, env = "WSGISCALE_FORWARDED_HEADERS", value_name = "KIND")]
    pub forwarded_headers: Option<ForwardedHeaders>,

    /// URL prefix the application is mounted under, e.g. `/app`: it becomes SCRIPT_NAME and is
    /// cut from PATH_INFO (`/app/x` -> `/x`; `/apple` is outside). A trusted peer's
    /// `SCRIPT_NAME` header replaces it for its request. [default: none]
    #[arg(long, env = "WSGISCALE_ROOT_PATH", value_name = "PREFIX")]
    pub root_path: Option<UrlPrefix>,

    /// What a request outside the root path gets: `not-found` (a 404 from the server) or
    /// `pass` (the app gets it with an empty SCRIPT_NAME). [default: not-found]
    #[arg(long, env = "WSGISCALE_OUTSIDE_ROOT_PATH", value_name = "ACTION")]
    pub outside_root_path: Option<OutsideRootPath>,

    /// Longest request line (method, target and version), bytes; longer gets 414.
    /// [default: 16Ki]
    #[arg(long, env = "WSGISCALE_LIMIT_REQUEST_LINE", value_name = "BYTES")]
    pub limit_request_line: Option<ByteSize>,

    /// Most header fields in a request; more get 431. [default: 100]
    #[arg(long, env = "WSGISCALE_LIMIT_REQUEST_FIELDS", value_name = "N")]
    pub limit_request_fields: Option<u32>,

    /// Largest header field (`Name: value`), bytes; larger gets 431. [default: 32Ki]
    #[arg(long, env = "WSGISCALE_LIMIT_REQUEST_FIELD_SIZE", value_name = "BYTES")]
    pub limit_request_field_size: Option<ByteSize>,

    /// Largest header section (every `Name: value` line), bytes; larger gets 431.
    /// [default: 64Ki]
    #[arg(
        long,
        env = "WSGISCALE_LIMIT_REQUEST_HEADERS_SIZE",
        value_name = "BYTES"
    )]
    pub limit_request_headers_size: Option<ByteSize>,

    /// Serve the files of DIR under URL_PREFIX from the HTTP front, without the app, e.g.
    /// `/static=/app/staticfiles`. Repeatable; comma-separated in the environment.
    #[arg(
        long = "static",
        env = "WSGISCALE_STATIC",
        value_name = "URL_PREFIX=DIR",
        value_delimiter = ','
    )]
    pub r#static: Vec<StaticMount>,

    /// `Cache-Control: max-age` of static files (0: no Cache-Control). [default: 1h]
    #[arg(long, env = "WSGISCALE_STATIC_MAX_AGE", value_name = "DURATION")]
    pub static_max_age: Option<Dur>,
}

impl Settings {
    /// The built-in defaults, as settings: the bottom layer of every resolution, and what the
    /// operator's defaults and the help texts' `[default: ...]` are checked against. Settings
    /// that are off by default (`--timeout`, `--max-rss`, ...) or derived (`--workers-initial`
    /// is MIN, `--venv` is `$VIRTUAL_ENV`) are `None`.
    pub fn defaults() -> Settings {
        let scaling = ScalingConfig::default();
        Settings {
            bind: vec![defaults::BIND.parse().expect("the default bind parses")],
            admin_bind: Some(
                defaults::ADMIN_BIND
                    .parse()
                    .expect("the default admin bind parses"),
            ),
            workers: Some(WorkerRange {
                min: defaults::WORKERS,
                max: defaults::WORKERS,
            }),
            cheaper_algo: Some(scaling.algo),
            cheaper_step: Some(scaling.step),
            cheaper_overload: Some(scaling.overload),
            cheaper_idle: Some(scaling.idle),
            cheaper_backlog: Some(scaling.backlog),
            cheaper_busyness_min: Some(scaling.busyness_min),
            cheaper_busyness_max: Some(scaling.busyness_max),
            cheaper_busyness_multiplier: Some(scaling.busyness_multiplier),
            cheaper_busyness_penalty: Some(scaling.busyness_penalty),
            cheaper_busyness_backlog: Some(scaling.busyness_backlog),
            threads: Some(defaults::THREADS),
            front_threads: Some(defaults::FRONT_THREADS),
            preload: Some(true),
            max_body: Some(ByteSize(defaults::MAX_BODY)),
            body_buffer: Some(ByteSize(defaults::BODY_BUFFER)),
            response_buffer: Some(ByteSize(defaults::RESPONSE_BUFFER)),
            response_spill: Some(ByteSize(defaults::RESPONSE_SPILL)),
            max_queue: Some(defaults::MAX_QUEUE),
            keepalive_timeout: Some(Dur(defaults::KEEPALIVE_TIMEOUT)),
            body_timeout: Some(Dur(defaults::BODY_TIMEOUT)),
            graceful_timeout: Some(Dur(defaults::GRACEFUL_TIMEOUT)),
            max_requests: Some(0),
            max_requests_jitter: Some(0),
            log_format: Some(LogFormat::default()),
            log_level: Some(defaults::LOG_LEVEL.to_string()),
            access_log: Some(false),
            tls_client_verify: Some(ClientVerify::Off),
            http2: Some(true),
            h2c: Some(false),
            h2c_allow_ips: protocols::H2C_ALLOW_IPS
                .iter()
                .map(|c| c.parse().expect("the default h2c networks parse"))
                .collect(),
            forwarded_allow_ips: Some(
                defaults::FORWARDED_ALLOW_IPS
                    .parse()
                    .expect("the default trusted proxies parse"),
            ),
            forwarded_headers: Some(ForwardedHeaders::default()),
            outside_root_path: Some(OutsideRootPath::default()),
            limit_request_line: Some(ByteSize(defaults::LIMIT_REQUEST_LINE)),
            limit_request_fields: Some(defaults::LIMIT_REQUEST_FIELDS),
            limit_request_field_size: Some(ByteSize(defaults::LIMIT_REQUEST_FIELD_SIZE)),
            limit_request_headers_size: Some(ByteSize(defaults::LIMIT_REQUEST_HEADERS_SIZE)),
            static_max_age: Some(Dur(defaults::STATIC_MAX_AGE)),
            ..Settings::default()
        }
    }

    /// `self` layered over `under`: every setting `self` has (a `Some`, a non-empty list)
    /// wins, the rest come from `under`. Generic over the fields (through their serde form),
    /// so a setting added to [`Settings`] needs no code here.
    pub fn over(&self, under: &Settings) -> Settings {
        let mut merged = json_object(under);
        for (key, value) in json_object(self) {
            if !is_unset(&value) {
                merged.insert(key, value);
            }
        }
        let mut out: Settings = serde_json::from_value(serde_json::Value::Object(merged))
            .expect("a merge of two valid settings is valid settings");
        out.config = self.config.clone().or_else(|| under.config.clone());
        out.ignore_env = self.ignore_env || under.ignore_env;
        out
    }

    /// Splits the settings into those a running server applies from a changed config file
    /// (the second: worker limits, scaling, lifecycle, its [`LiveConfig`]) and those that need
    /// a restart (the first). The one place that says which is which; the exhaustive
    /// destructuring makes a new setting choose.
    pub fn split_live(self) -> (Settings, Settings) {
        let Settings {
            app,
            config,
            ignore_env,
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
            preload,
            max_body,
            body_buffer,
            response_buffer,
            response_spill,
            temp_dir,
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
            post_load,
            on_reload,
            post_fork,
            post_worker_init,
            worker_exit,
            pre_request,
            post_request,
            tls_bind,
            tls_cert,
            tls_key,
            tls_client_ca,
            tls_client_verify,
            http2,
            h2c,
            h2c_allow_ips,
            access_log_request_header,
            access_log_response_header,
            forwarded_allow_ips,
            forwarded_headers,
            root_path,
            outside_root_path,
            limit_request_line,
            limit_request_fields,
            limit_request_field_size,
            limit_request_headers_size,
            r#static,
            static_max_age,
        } = self;
        let restart = Settings {
            app,
            config,
            ignore_env,
            bind,
            admin_bind,
            threads,
            front_threads,
            chdir,
            pythonpath,
            venv,
            preload,
            max_body,
            body_buffer,
            response_buffer,
            response_spill,
            temp_dir,
            max_queue,
            keepalive_timeout,
            body_timeout,
            graceful_timeout,
            log_format,
            log_level,
            access_log,
            post_load,
            on_reload,
            post_fork,
            post_worker_init,
            worker_exit,
            pre_request,
            post_request,
            tls_bind,
            tls_cert,
            tls_key,
            tls_client_ca,
            tls_client_verify,
            http2,
            h2c,
            h2c_allow_ips,
            access_log_request_header,
            access_log_response_header,
            forwarded_allow_ips,
            forwarded_headers,
            root_path,
            outside_root_path,
            limit_request_line,
            limit_request_fields,
            limit_request_field_size,
            limit_request_headers_size,
            r#static,
            static_max_age,
            ..Settings::default()
        };
        let live = Settings {
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
            timeout,
            max_requests,
            max_requests_jitter,
            max_lifetime,
            max_rss,
            ..Settings::default()
        };
        (restart, live)
    }

    /// Parses the YAML text of a config file. An empty file is empty settings.
    pub fn from_yaml(text: &str) -> Result<Settings, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Settings::default());
        }
        // No source snippet: the message goes on one log line (a live reload that fails).
        let options = serde_saphyr::options! { with_snippet: false };
        serde_saphyr::from_str_with_options(text, options)
            .map_err(|e| ConfigError::File(e.to_string()))
    }

    /// The settings as a config file: only those that are set.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(&serde_json::Value::Object(set_only(self)))
            .expect("settings serialize: they hold only plain values")
    }

    /// The settings as `wsgiscale serve` arguments (after `serve`), derived from the flags'
    /// own declaration: [`parse_serve_argv`] of the result gives `self` back, except that
    /// `preload: true` is the default and has no flag (`--no-preload` only says false).
    pub fn to_args(&self) -> Vec<String> {
        use clap::Args;
        let values = set_only(self);
        let mut out = Vec::new();
        let mut flags = Vec::new();
        let command = Settings::augment_args(clap::Command::new("serve"));
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            let Some(long) = arg.get_long() else {
                if let Some(value) = values.get(&id.replace('_', "-")) {
                    out.push(json_text(value));
                }
                continue;
            };
            match id {
                "config" => {
                    if let Some(path) = &self.config {
                        flags.extend([format!("--{long}"), path.display().to_string()]);
                    }
                    continue;
                }
                "ignore_env" => {
                    if self.ignore_env {
                        flags.push(format!("--{long}"));
                    }
                    continue;
                }
                "preload" => {
                    if self.preload == Some(false) {
                        flags.push(format!("--{long}"));
                    }
                    continue;
                }
                _ => {}
            }
            let values = match values.get(&id.replace('_', "-")) {
                None => continue,
                Some(serde_json::Value::Array(items)) => items.iter().map(json_text).collect(),
                Some(value) => vec![json_text(value)],
            };
            for value in values {
                if arg.is_require_equals_set() {
                    flags.push(format!("--{long}={value}"));
                } else {
                    flags.extend([format!("--{long}"), value]);
                }
            }
        }
        out.extend(flags);
        out
    }

    /// The keys (`workers`, `max-rss`) that `self` sets and `top` sets too: in `top.over(self)`
    /// those of `self` have no effect. The server reports them for a config file under flags
    /// or environment, whose changes would otherwise be ignored without a word.
    pub fn overridden_by(&self, top: &Settings) -> Vec<String> {
        let top = set_only(top);
        set_only(self)
            .into_iter()
            .filter(|(k, _)| top.contains_key(k))
            .map(|(k, _)| k)
            .collect()
    }

    /// The environment variables of the settings (`WSGISCALE_*`) that are set in `env`.
    pub fn env_vars_in<'a>(env: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        use clap::Args;
        let command = Settings::augment_args(clap::Command::new("serve"));
        let ours: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        let mut found: Vec<String> = env
            .into_iter()
            .filter(|name| ours.iter().any(|o| o == name))
            .map(str::to_string)
            .collect();
        found.sort();
        found
    }
}

fn json_object(s: &Settings) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(s).expect("settings serialize: they hold only plain values") {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("a struct serializes to an object"),
    }
}

fn is_unset(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

fn set_only(s: &Settings) -> serde_json::Map<String, serde_json::Value> {
    json_object(s)
        .into_iter()
        .filter(|(_, v)| !is_unset(v))
        .collect()
}

fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Serde for a type written as text (`Display` out, `FromStr` in); a YAML number is read as
/// its text, so `workers: 4`, `timeout: 30` and `max-rss: 512Mi` all work.
macro_rules! text_serde {
    ($($t:ty),* $(,)?) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any($crate::config::TextVisitor::<$t>(std::marker::PhantomData))
            }
        }
    )*};
}
text_serde!(
    BindAddr,
    WorkerRange,
    ByteSize,
    Dur,
    ProxyList,
    UrlPrefix,
    StaticMount,
    LogHeader
);
pub(crate) use text_serde;

pub(crate) struct TextVisitor<T>(pub(crate) std::marker::PhantomData<T>);

impl<T: FromStr<Err = String>> serde::de::Visitor<'_> for TextVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number or a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
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
    /// Server hooks.
    pub hooks: Hooks,
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
    /// The access log.
    pub access_log: AccessLogConfig,
    /// Limits of a request's head.
    pub limits: HeaderLimits,
    /// Trusted proxies and the root path.
    pub proxy: ProxyConfig,
    /// Files served by the front.
    pub static_files: StaticConfig,
    /// Request and response buffering.
    pub buffers: BufferConfig,
}

/// How the master buffers request and response bodies (in memory, then in temporary files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferConfig {
    /// Request bodies above this many bytes go to a temporary file.
    pub body_buffer: u64,
    /// Bytes of a response held in memory.
    pub response_buffer: u64,
    /// Bytes of a response held in its temporary file beyond `response_buffer`.
    pub response_spill: u64,
    /// Where temporary files go; `None`: the system's temporary directory.
    pub temp_dir: Option<PathBuf>,
}

impl BufferConfig {
    /// The temporary directory in force (`$TMPDIR`, else `/tmp`, when none was set).
    pub fn temp_dir(&self) -> PathBuf {
        self.temp_dir.clone().unwrap_or_else(std::env::temp_dir)
    }
}

/// The access log: whether it is written and which headers each line carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessLogConfig {
    /// One line per request.
    pub enabled: bool,
    /// Request headers added to each line.
    pub request_headers: Vec<LogHeader>,
    /// Response headers added to each line.
    pub response_headers: Vec<LogHeader>,
}

/// Limits of a request's head, in bytes except `fields`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Request line: method, target and version with their two spaces.
    pub request_line: usize,
    /// Header fields (a repeated name counts each time).
    pub fields: usize,
    /// One field: name, `: ` and value.
    pub field_size: usize,
    /// Every field: name, `: `, value and CRLF each.
    pub headers_size: usize,
}

/// Which peers' forwarding headers are believed, and where the app is mounted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyConfig {
    /// Trusted peers.
    pub trusted: ProxyList,
    /// The header family read from them.
    pub headers: ForwardedHeaders,
    /// The app's URL prefix (root: none).
    pub root_path: UrlPrefix,
    /// What a path outside it gets.
    pub outside_root_path: OutsideRootPath,
}

/// Static files served by the front.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StaticConfig {
    /// The mounts, as given.
    pub mounts: Vec<StaticMount>,
    /// `Cache-Control: max-age`, if any.
    pub max_age: Option<Duration>,
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
            step: defaults::CHEAPER_STEP,
            overload: defaults::CHEAPER_OVERLOAD,
            idle: defaults::CHEAPER_IDLE,
            backlog: defaults::CHEAPER_BACKLOG,
            busyness_min: defaults::CHEAPER_BUSYNESS_MIN,
            busyness_max: defaults::CHEAPER_BUSYNESS_MAX,
            busyness_multiplier: defaults::CHEAPER_BUSYNESS_MULTIPLIER,
            busyness_penalty: defaults::CHEAPER_BUSYNESS_PENALTY,
            busyness_backlog: defaults::CHEAPER_BUSYNESS_BACKLOG,
        }
    }
}

/// Worker lifecycle rules. The default is no rule (nothing recycles, no timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    /// TLS and HTTP/2.
    pub protocols: ProtocolConfig,
}

/// Defaults, in one place: [`Settings::defaults`] is built from them, the operator's defaults
/// for the same settings are these, and tests check the flags' `[default: ...]` texts and the
/// CRD's `Default:` texts against them.
pub mod defaults {
    use std::time::Duration;
    /// Default HTTP bind address.
    pub const BIND: &str = "127.0.0.1:8000";
    /// Default admin bind address.
    pub const ADMIN_BIND: &str = "127.0.0.1:9191";
    /// Default worker count.
    pub const WORKERS: u32 = 2;
    /// Default Python threads per worker.
    pub const THREADS: u32 = 1;
    /// Default threads of the HTTP front.
    pub const FRONT_THREADS: u32 = 1;
    /// Default log filter.
    pub const LOG_LEVEL: &str = "info";
    /// Default `--cheaper-step`.
    pub const CHEAPER_STEP: u32 = 1;
    /// Default `--cheaper-overload`.
    pub const CHEAPER_OVERLOAD: u32 = 3;
    /// Default `--cheaper-idle`.
    pub const CHEAPER_IDLE: u32 = 10;
    /// Default `--cheaper-backlog`.
    pub const CHEAPER_BACKLOG: u32 = 1;
    /// Default `--cheaper-busyness-min`.
    pub const CHEAPER_BUSYNESS_MIN: u32 = 25;
    /// Default `--cheaper-busyness-max`.
    pub const CHEAPER_BUSYNESS_MAX: u32 = 50;
    /// Default `--cheaper-busyness-multiplier`.
    pub const CHEAPER_BUSYNESS_MULTIPLIER: u32 = 10;
    /// Default `--cheaper-busyness-penalty`.
    pub const CHEAPER_BUSYNESS_PENALTY: u32 = 2;
    /// Default `--cheaper-busyness-backlog`.
    pub const CHEAPER_BUSYNESS_BACKLOG: u32 = 33;
    /// Default largest body.
    pub const MAX_BODY: u64 = 64 << 20;
    /// Default request body size above which it goes to a temporary file.
    pub const BODY_BUFFER: u64 = 1 << 20;
    /// Default bytes of a response held in memory.
    pub const RESPONSE_BUFFER: u64 = 256 << 10;
    /// Smallest `--response-buffer` accepted (a worker's error page must fit).
    pub const RESPONSE_BUFFER_MIN: u64 = 4 << 10;
    /// Default bytes of a response held in its temporary file (nginx's
    /// proxy_max_temp_file_size).
    pub const RESPONSE_SPILL: u64 = 1 << 30;
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
    /// Default `--forwarded-allow-ips`: loopback only, as gunicorn (a proxy on the same host).
    pub const FORWARDED_ALLOW_IPS: &str = "127.0.0.1,::1";
    /// The trusted peers of a pod behind a Service (the WsgiApp's default): the private and
    /// shared ranges pods and nodes get their addresses from (RFC 1918, RFC 6598, IPv6 unique
    /// local) and loopback. Narrow it to the cluster's pod CIDR, or to the ingress
    /// controller's, when other pods or a node-level load balancer could reach the app.
    pub const FORWARDED_ALLOW_IPS_IN_CLUSTER: &str =
        "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7,127.0.0.1,::1";
    /// Default `--limit-request-line`: 16 KiB, 4x gunicorn's 4094 and AWS ALB's own limit,
    /// room for an OIDC or SAML redirect's query string.
    pub const LIMIT_REQUEST_LINE: u64 = 16 << 10;
    /// Default `--limit-request-fields`: gunicorn's and Envoy's 100.
    pub const LIMIT_REQUEST_FIELDS: u32 = 100;
    /// Default `--limit-request-field-size`: 32 KiB, 4x gunicorn's 8190, so one OIDC session
    /// cookie header (split tokens of 4 KiB each) or a Kerberos `Authorization` fits.
    pub const LIMIT_REQUEST_FIELD_SIZE: u64 = 32 << 10;
    /// Default `--limit-request-headers-size`: 64 KiB, what AWS ALB and Envoy (60 KiB) pass.
    pub const LIMIT_REQUEST_HEADERS_SIZE: u64 = 64 << 10;
    /// Largest `--limit-request-line`: the longest target hyper (and the `http` crate) parse.
    pub const LIMIT_REQUEST_LINE_MAX: u64 = 64 << 10;
    /// Largest `--limit-request-fields`.
    pub const LIMIT_REQUEST_FIELDS_MAX: u32 = 1000;
    /// Largest `--limit-request-headers-size` (and so field size).
    pub const LIMIT_REQUEST_HEADERS_SIZE_MAX: u64 = 1 << 20;
    /// Smallest byte limit of a request's head.
    pub const LIMIT_BYTES_MIN: u64 = 256;
    /// Default `--static-max-age`.
    pub const STATIC_MAX_AGE: Duration = Duration::from_secs(3600);
}

/// Resolves `settings` (the layers stacked with [`Settings::over`]: flags and environment
/// over the config file) over the defaults, and validates the result. `virtual_env` is
/// `$VIRTUAL_ENV`, the fallback for `--venv`. The server calls it at start and on every
/// re-read of the file; the operator calls it on what it renders, typed, before rendering.
pub fn resolve(
    settings: &Settings,
    virtual_env: Option<PathBuf>,
) -> Result<ServerConfig, ConfigError> {
    // Destructured so that a setting added to Settings and forgotten here fails to compile.
    let Settings {
        app,
        config,
        ignore_env: _,
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
        preload,
        max_body,
        body_buffer,
        response_buffer,
        response_spill,
        temp_dir,
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
        post_load,
        on_reload,
        post_fork,
        post_worker_init,
        worker_exit,
        pre_request,
        post_request,
        tls_bind,
        tls_cert,
        tls_key,
        tls_client_ca,
        tls_client_verify,
        http2,
        h2c,
        h2c_allow_ips,
        access_log_request_header,
        access_log_response_header,
        forwarded_allow_ips,
        forwarded_headers,
        root_path,
        outside_root_path,
        limit_request_line,
        limit_request_fields,
        limit_request_field_size,
        limit_request_headers_size,
        r#static,
        static_max_age,
    } = settings.over(&Settings::defaults());
    // Every setting with a default is Some after the merge; `need` says so once.
    fn need<T>(value: Option<T>) -> T {
        value.expect("Settings::defaults sets every setting that has a default")
    }

    let app: AppSpec = app
        .ok_or(ConfigError::MissingApp)?
        .parse()
        .map_err(|e| invalid("app", e))?;

    // Only HTTPS when only --tls-bind is given: the plain default address is not added.
    let binds = if settings.bind.is_empty() && !settings.tls_bind.is_empty() {
        Vec::new()
    } else {
        bind
    };
    let admin_bind = need(admin_bind);
    let ephemeral = matches!(&admin_bind, BindAddr::Tcp(a) if a.port() == 0);
    for b in &binds {
        if *b == admin_bind && !ephemeral {
            return Err(invalid(
                "admin-bind",
                format!("{b} is also a --bind address"),
            ));
        }
    }

    let range = need(workers);
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
    let initial = workers_initial.unwrap_or(range.min);
    if initial < range.min || initial > range.max {
        return Err(invalid(
            "workers-initial",
            format!("{initial} is outside {}..={}", range.min, range.max),
        ));
    }

    let scaling = ScalingConfig {
        algo: need(cheaper_algo),
        step: need(cheaper_step),
        overload: need(cheaper_overload),
        idle: need(cheaper_idle),
        backlog: need(cheaper_backlog),
        busyness_min: need(cheaper_busyness_min),
        busyness_max: need(cheaper_busyness_max),
        busyness_multiplier: need(cheaper_busyness_multiplier),
        busyness_penalty: need(cheaper_busyness_penalty),
        busyness_backlog: need(cheaper_busyness_backlog),
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

    let front_threads = need(front_threads);
    if front_threads == 0 || front_threads > defaults::THREADS_LIMIT {
        return Err(invalid(
            "front-threads",
            format!("{front_threads} is outside 1..={}", defaults::THREADS_LIMIT),
        ));
    }
    let threads = need(threads);
    if threads == 0 || threads > defaults::THREADS_LIMIT {
        return Err(invalid(
            "threads",
            format!("{threads} is outside 1..={}", defaults::THREADS_LIMIT),
        ));
    }

    let nonzero = |d: Option<Dur>| d.map(|d| d.0).filter(|d| !d.is_zero());
    let keepalive_timeout = need(keepalive_timeout).0;
    if keepalive_timeout.is_zero() {
        return Err(invalid("keepalive-timeout", "must be above zero"));
    }
    let body_timeout = need(body_timeout).0;
    if body_timeout.is_zero() {
        return Err(invalid("body-timeout", "must be above zero"));
    }

    let response_buffer = need(response_buffer).0;
    if response_buffer < defaults::RESPONSE_BUFFER_MIN {
        return Err(invalid(
            "response-buffer",
            format!(
                "{response_buffer} bytes is below the minimum of {}",
                defaults::RESPONSE_BUFFER_MIN
            ),
        ));
    }
    let buffers = BufferConfig {
        body_buffer: need(body_buffer).0,
        response_buffer,
        response_spill: need(response_spill).0,
        temp_dir: temp_dir.filter(|p| !p.as_os_str().is_empty()),
    };
    let limits = resolve_limits(
        need(limit_request_line).0,
        need(limit_request_fields),
        need(limit_request_field_size).0,
        need(limit_request_headers_size).0,
    )?;
    let mut prefixes = std::collections::BTreeSet::new();
    for m in &r#static {
        if !prefixes.insert(&m.prefix) {
            return Err(invalid("static", format!("{} is mounted twice", m.prefix)));
        }
    }

    let lifecycle = LifecycleConfig {
        timeout: nonzero(timeout),
        max_requests: need(max_requests),
        max_requests_jitter: need(max_requests_jitter),
        max_lifetime: nonzero(max_lifetime),
        max_rss: max_rss.map(|b| b.0).filter(|b| *b > 0),
    };

    let python = PythonConfig {
        app,
        chdir,
        pythonpath,
        venv: venv.or(virtual_env).filter(|p| !p.as_os_str().is_empty()),
        preload: need(preload),
        threads,
        hooks: Hooks {
            post_load,
            on_reload,
            post_fork,
            post_worker_init,
            worker_exit,
            pre_request,
            post_request,
        },
    };
    let protocols = resolve_protocols(
        ProtocolSettings {
            tls_bind,
            tls_cert,
            tls_key,
            tls_client_ca,
            tls_client_verify: need(tls_client_verify),
            http2: need(http2),
            h2c: need(h2c),
            h2c_allow_ips,
        },
        &binds,
        &admin_bind,
    )?;

    Ok(ServerConfig {
        binds,
        admin_bind,
        python,
        http: HttpConfig {
            max_body: need(max_body).0,
            max_queue: need(max_queue) as usize,
            keepalive_timeout,
            body_timeout,
            graceful_timeout: need(graceful_timeout).0,
            access_log: AccessLogConfig {
                enabled: need(access_log),
                request_headers: access_log_request_header,
                response_headers: access_log_response_header,
            },
            limits,
            proxy: ProxyConfig {
                trusted: need(forwarded_allow_ips),
                headers: need(forwarded_headers),
                root_path: root_path.unwrap_or_default(),
                outside_root_path: need(outside_root_path),
            },
            static_files: StaticConfig {
                mounts: r#static,
                max_age: nonzero(static_max_age),
            },
            buffers,
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
            format: need(log_format),
            level: need(log_level),
        },
        config_file: config,
        front_threads,
        protocols,
    })
}

/// The head limits, checked against each other and their bounds.
fn resolve_limits(
    line: u64,
    fields: u32,
    field_size: u64,
    headers_size: u64,
) -> Result<HeaderLimits, ConfigError> {
    use defaults::{
        LIMIT_BYTES_MIN, LIMIT_REQUEST_FIELDS_MAX, LIMIT_REQUEST_HEADERS_SIZE_MAX,
        LIMIT_REQUEST_LINE_MAX,
    };
    let within = |key, v: u64, max: u64| {
        if (LIMIT_BYTES_MIN..=max).contains(&v) {
            Ok(v as usize)
        } else {
            Err(invalid(
                key,
                format!("{v} is outside {LIMIT_BYTES_MIN}..={max} bytes"),
            ))
        }
    };
    let request_line = within("limit-request-line", line, LIMIT_REQUEST_LINE_MAX)?;
    let headers_size = within(
        "limit-request-headers-size",
        headers_size,
        LIMIT_REQUEST_HEADERS_SIZE_MAX,
    )?;
    let field_size = within("limit-request-field-size", field_size, headers_size as u64)
        .map_err(|_| {
            invalid(
                "limit-request-field-size",
                format!(
                    "{field_size} is outside {LIMIT_BYTES_MIN}..={headers_size} (the headers' size limit)"
                ),
            )
        })?;
    if fields == 0 || fields > LIMIT_REQUEST_FIELDS_MAX {
        return Err(invalid(
            "limit-request-fields",
            format!("{fields} is outside 1..={LIMIT_REQUEST_FIELDS_MAX}"),
        ));
    }
    Ok(HeaderLimits {
        request_line,
        fields: fields as usize,
        field_size,
        headers_size,
    })
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
    Serve(Settings),
}

/// Parses `argv` (including the program name, then `serve`) into [`Settings`]: the command
/// line alone, blind to the environment (the server itself parses through its own `Cli`, with
/// the environment unless `--ignore-env`). Used to read rendered command lines back.
pub fn parse_serve_argv<I, T>(argv: I) -> Result<Settings, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let command = ServeCommand::command().mut_subcommand("serve", without_env);
    let matches = command.try_get_matches_from(argv)?;
    let ServeOnly::Serve(args) = ServeCommand::from_arg_matches(&matches)?.command;
    Ok(args)
}

/// `command` with the environment twins of its arguments removed (`--ignore-env`).
pub fn without_env(command: clap::Command) -> clap::Command {
    command.mut_args(|a| a.env(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    fn args(argv: &[&str]) -> Settings {
        let mut full = vec!["wsgiscale", "serve"];
        full.extend_from_slice(argv);
        parse_serve_argv(full).expect("test argv parses")
    }

    fn resolve_argv(argv: &[&str]) -> Result<ServerConfig, ConfigError> {
        resolve(&args(argv), None)
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
        assert_eq!(cfg.live.scaling.algo, Algorithm::Spare2);
        assert_eq!(cfg.live.scaling.step, 1);
        assert!(cfg.python.preload);
        assert_eq!(cfg.python.threads, 1);
        assert_eq!(cfg.http.max_body, 64 << 20);
        assert_eq!(
            cfg.http.buffers,
            BufferConfig {
                body_buffer: 1 << 20,
                response_buffer: 256 << 10,
                response_spill: 1 << 30,
                temp_dir: None,
            }
        );
        assert_eq!(cfg.http.buffers.temp_dir(), std::env::temp_dir());
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
            (&["app:x", "--tls-bind", "127.0.0.1:8443"], "tls-cert"),
            (&["app:x", "--tls-key", "k.pem"], "tls-key"),
            (&["app:x", "--response-buffer", "4095"], "response-buffer"),
            (&["nocolon"], "app"),
        ];
        for (argv, key) in cases {
            match resolve_argv(argv) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, *key, "{argv:?}"),
                other => panic!("{argv:?}: expected invalid {key}, got {other:?}"),
            }
        }
        assert_eq!(
            resolve(&Settings::default(), None),
            Err(ConfigError::MissingApp)
        );
    }

    #[test]
    fn tls_bind_alone_serves_only_https_and_hooks_resolve() {
        let tls = [
            "app:x",
            "--tls-bind",
            "0.0.0.0:8443",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--post-fork",
            "otel_setup:post_fork",
            "--worker-exit",
            "gunicorn.conf.py:worker_exit",
        ];
        let cfg = resolve_argv(&tls).expect("valid");
        assert!(cfg.binds.is_empty(), "no plain default beside --tls-bind");
        let t = cfg.protocols.tls.expect("tls");
        assert_eq!(
            t.binds,
            vec![BindAddr::Tcp("0.0.0.0:8443".parse().unwrap())]
        );
        assert!(cfg.protocols.http2 && !cfg.protocols.h2c);
        assert_eq!(
            cfg.python.hooks.post_fork.map(|h| h.to_string()).as_deref(),
            Some("otel_setup:post_fork")
        );
        assert!(cfg.python.hooks.worker_exit.is_some() && cfg.python.hooks.pre_request.is_none());
        let both = [&tls[..], &["--bind", "0.0.0.0:8000"]].concat();
        assert_eq!(resolve_argv(&both).expect("valid").binds.len(), 1);
        assert_eq!(
            cfg.protocols
                .h2c_allow
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec!["127.0.0.0/8", "::1/128"]
        );
        let file = Settings::from_yaml(
            "app: a:b\npost-fork: hooks:post_fork\nh2c: true\nh2c-allow-ips: [10.0.0.0/8]\n",
        )
        .expect("valid");
        let cfg = resolve(&file, None).expect("valid");
        assert!(cfg.protocols.h2c);
        assert_eq!(cfg.protocols.h2c_allow.len(), 1);
        assert!(cfg.python.hooks.post_fork.is_some());
        for bad in [
            &["app:x", "--post-fork", "nocolon"][..],
            &["app:x", "--h2c-allow-ips", "example.com"][..],
            &["app:x", "--tls-client-verify", "maybe"][..],
        ] {
            let mut argv = vec!["wsgiscale", "serve"];
            argv.extend_from_slice(bad);
            assert!(parse_serve_argv(argv).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn proxy_lists_parse_match_and_print() {
        let list: ProxyList = "10.0.0.0/8, 192.168.1.7,::1,fd00::/8"
            .parse()
            .expect("valid");
        assert!(!list.any);
        for (ip, trusted) in [
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("192.168.1.7", true),
            ("192.168.1.8", false),
            ("::1", true),
            ("fd12::5", true),
            ("fe80::1", false),
            // An IPv4 peer on a dual-stack socket.
            ("::ffff:10.9.9.9", true),
            ("::ffff:11.9.9.9", false),
        ] {
            assert_eq!(list.contains(ip.parse().expect("ip")), trusted, "{ip}");
        }
        assert_eq!(list.to_string(), "10.0.0.0/8,192.168.1.7,::1,fd00::/8");
        // Host bits are dropped: the block is what is trusted.
        assert_eq!(
            "10.1.2.3/8"
                .parse::<ProxyList>()
                .expect("valid")
                .to_string(),
            "10.0.0.0/8"
        );
        let all: ProxyList = "*".parse().expect("valid");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
        let none: ProxyList = "".parse().expect("valid");
        assert!(!none.contains("127.0.0.1".parse().expect("ip")));
        assert_eq!(none.to_string(), "");
        for bad in ["10.0.0.0/33", "example.com", "10.0.0.1/x", "1.2.3"] {
            assert!(bad.parse::<ProxyList>().is_err(), "{bad}");
        }
        let cfg = resolve_argv(&["a:b"]).expect("valid");
        assert!(cfg
            .http
            .proxy
            .trusted
            .contains("127.0.0.1".parse().expect("ip")));
        assert!(cfg.http.proxy.trusted.contains("::1".parse().expect("ip")));
        assert!(!cfg
            .http
            .proxy
            .trusted
            .contains("10.0.0.1".parse().expect("ip")));
        let cluster: ProxyList = defaults::FORWARDED_ALLOW_IPS_IN_CLUSTER
            .parse()
            .expect("valid");
        for ip in [
            "10.244.1.5",
            "172.20.0.3",
            "192.168.49.2",
            "100.64.3.2",
            "fd00::12",
        ] {
            assert!(cluster.contains(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "2001:db8::1"] {
            assert!(!cluster.contains(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn url_prefixes_match_on_a_segment_boundary() {
        let app: UrlPrefix = "/app/".parse().expect("valid");
        assert_eq!(app.as_str(), "/app");
        assert_eq!(app.strip(b"/app"), Some(&b""[..]));
        assert_eq!(app.strip(b"/app/"), Some(&b"/"[..]));
        assert_eq!(app.strip(b"/app/x/y"), Some(&b"/x/y"[..]));
        assert_eq!(app.strip(b"/apple"), None);
        assert_eq!(app.strip(b"/ap"), None);
        assert_eq!(app.strip(b"/"), None);
        let root: UrlPrefix = "/".parse().expect("valid");
        assert!(root.is_root());
        assert_eq!(root.strip(b"/x"), Some(&b"/x"[..]));
        assert_eq!("".parse::<UrlPrefix>(), Ok(UrlPrefix::default()));
        assert_eq!(
            "/a/b~c".parse::<UrlPrefix>().expect("valid").as_str(),
            "/a/b~c"
        );
        for bad in [
            "app", "/a//b", "/a/../b", "/a/./b", "/a%2Fb", "/a b", "/a,b", "/a?b",
        ] {
            assert!(bad.parse::<UrlPrefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn static_mounts_and_log_headers_parse() {
        let m: StaticMount = "/static/=/srv/static".parse().expect("valid");
        assert_eq!(m.prefix.as_str(), "/static");
        assert_eq!(m.dir, PathBuf::from("/srv/static"));
        assert_eq!(m.to_string(), "/static=/srv/static");
        for bad in ["/static", "/=/srv", "=/srv", "/static=", "static=/srv"] {
            assert!(bad.parse::<StaticMount>().is_err(), "{bad}");
        }
        assert_eq!(
            "X-Request-ID".parse::<LogHeader>().expect("valid").as_str(),
            "x-request-id"
        );
        for bad in ["", "X Request", "a:b", "é"] {
            assert!(bad.parse::<LogHeader>().is_err(), "{bad}");
        }
        let cfg = resolve_argv(&[
            "a:b",
            "--static",
            "/static=/s",
            "--static",
            "/media=/m",
            "--access-log-request-header",
            "X-Request-ID,traceparent",
        ])
        .expect("valid");
        assert_eq!(cfg.http.static_files.mounts.len(), 2);
        assert_eq!(
            cfg.http.static_files.max_age,
            Some(defaults::STATIC_MAX_AGE)
        );
        assert_eq!(
            cfg.http
                .access_log
                .request_headers
                .iter()
                .map(LogHeader::as_str)
                .collect::<Vec<_>>(),
            ["x-request-id", "traceparent"]
        );
        assert_eq!(
            resolve_argv(&["a:b", "--static", "/s=/a", "--static", "/s/=/b"]).map(|_| ()),
            Err(invalid("static", "/s is mounted twice"))
        );
    }

    #[test]
    fn head_limits_default_above_gunicorn_and_are_checked() {
        let limits = resolve_argv(&["a:b"]).expect("valid").http.limits;
        // gunicorn: --limit-request-line 4094, --limit-request-fields 100,
        // --limit-request-field_size 8190.
        assert!(limits.request_line >= 4094);
        assert!(limits.fields >= 100);
        assert!(limits.field_size >= 8190);
        assert!(limits.headers_size >= limits.field_size);
        let cases: &[(&[&str], &str)] = &[
            (&["--limit-request-line", "100"], "limit-request-line"),
            (&["--limit-request-line", "1Mi"], "limit-request-line"),
            (&["--limit-request-fields", "0"], "limit-request-fields"),
            (
                &[
                    "--limit-request-field-size",
                    "8Ki",
                    "--limit-request-headers-size",
                    "4Ki",
                ],
                "limit-request-field-size",
            ),
            (
                &["--limit-request-headers-size", "2Mi"],
                "limit-request-headers-size",
            ),
        ];
        for (argv, key) in cases {
            let mut full = vec!["a:b"];
            full.extend_from_slice(argv);
            match resolve_argv(&full) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, *key, "{argv:?}"),
                other => panic!("{argv:?}: expected invalid {key}, got {other:?}"),
            }
        }
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
        let file = Settings::from_yaml(
            "app: fromfile:app\nworkers: \"2:8\"\ncheaper-algo: busyness\nmax-rss: 512Mi\ntimeout: 30\nthreads: 4\npreload: false\n",
        )
        .expect("valid yaml");
        let cfg = resolve(&args(&["--workers", "3:6"]).over(&file), None).expect("valid");
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
        let err = Settings::from_yaml("workerz: 3\n").unwrap_err();
        assert!(err.to_string().contains("workerz"), "{err}");
    }

    #[test]
    fn venv_falls_back_to_virtual_env() {
        let cfg = resolve(&args(&["a:b"]), Some("/venv".into())).expect("valid");
        assert_eq!(cfg.python.venv, Some(PathBuf::from("/venv")));
    }

    #[test]
    fn a_file_setting_under_a_flag_is_reported() {
        let file = Settings::from_yaml("workers: 2:8\nmax-rss: 1Gi\n").expect("valid");
        let flags = args(&["a:b", "--workers", "3", "--threads", "2"]);
        assert_eq!(file.overridden_by(&flags), vec!["workers".to_string()]);
        assert!(file.overridden_by(&args(&["a:b"])).is_empty());
    }

    #[test]
    fn file_round_trips_through_yaml() {
        let file = Settings {
            workers: Some(WorkerRange { min: 2, max: 16 }),
            cheaper_algo: Some(Algorithm::Spare2),
            max_rss: Some(ByteSize(300 << 20)),
            timeout: Some(Dur(Duration::from_millis(1500))),
            ..Settings::default()
        };
        assert_eq!(Settings::from_yaml(&file.to_yaml()), Ok(file));
    }

    #[test]
    fn the_file_reads_numbers_and_texts_alike() {
        let a = Settings::from_yaml("workers: 4\ntimeout: 30\nmax-rss: 1048576\n").expect("valid");
        let b = Settings::from_yaml("workers: \"4\"\ntimeout: 30s\nmax-rss: 1Mi\n").expect("valid");
        assert_eq!(a, b);
        assert_eq!(a.workers, Some(WorkerRange { min: 4, max: 4 }));
        // YAML 1.2: an unquoted 2:8 is the text "2:8", not a base-60 number.
        let c = Settings::from_yaml("workers: 2:8\n").expect("valid");
        assert_eq!(c.workers, Some(WorkerRange { min: 2, max: 8 }));
        let bad = Settings::from_yaml("workers: lots\n")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("not N or MIN:MAX"), "{bad}");
        assert!(!bad.contains('\n'), "one line: {bad}");
        // The command line's own keys are not file keys.
        assert!(Settings::from_yaml("config: /x.yaml\n").is_err());
        assert!(Settings::from_yaml("ignore-env: true\n").is_err());
    }

    #[test]
    fn boolean_flags_and_their_environment_twins() {
        assert_eq!(args(&["a:b"]).preload, None);
        assert_eq!(args(&["a:b", "--no-preload"]).preload, Some(false));
        assert_eq!(args(&["a:b"]).access_log, None);
        assert_eq!(args(&["a:b", "--access-log"]).access_log, Some(true));
        assert_eq!(args(&["a:b", "--access-log=false"]).access_log, Some(false));
        // `--access-log` takes no separate value, so the positional after it is the app.
        assert_eq!(args(&["--access-log", "a:b"]).app.as_deref(), Some("a:b"));
        let with_env = |var: &str, value: &str| {
            use clap::{CommandFactory, FromArgMatches};
            // A unique variable per case, so parallel tests do not see each other's; clap
            // reads it when the argument is built.
            let name = format!("WSGISCALE_TEST_{var}");
            std::env::set_var(&name, value);
            let command = ServeCommand::command().mut_subcommand("serve", |c| {
                c.mut_args(|a| {
                    let ours = a.get_env().is_some_and(|e| e == var);
                    let a = a.env(None);
                    if ours {
                        a.env(&*Box::leak(
                            format!("WSGISCALE_TEST_{var}").into_boxed_str(),
                        ))
                    } else {
                        a
                    }
                })
            });
            let m = command.try_get_matches_from(["wsgiscale", "serve", "a:b"]);
            std::env::remove_var(&name);
            let ServeOnly::Serve(s) = ServeCommand::from_arg_matches(&m.expect("parses"))
                .expect("matches")
                .command;
            s
        };
        assert_eq!(with_env("WSGISCALE_NO_PRELOAD", "1").preload, Some(false));
        assert_eq!(
            with_env("WSGISCALE_NO_PRELOAD", "false").preload,
            Some(true)
        );
        assert_eq!(
            with_env("WSGISCALE_ACCESS_LOG", "yes").access_log,
            Some(true)
        );
        assert_eq!(
            with_env("WSGISCALE_WORKERS", "2:5").workers,
            Some(WorkerRange { min: 2, max: 5 })
        );
    }

    #[test]
    fn help_texts_state_the_defaults_that_apply() {
        use clap::Args;
        let defaults = set_only(&Settings::defaults());
        let command = Settings::augment_args(clap::Command::new("serve"));
        let mut checked = 0;
        for arg in command.get_arguments() {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let Some((_, rest)) = help.split_once("[default: ") else {
                continue;
            };
            let stated = rest.split(']').next().expect("closed");
            let key = arg.get_id().as_str().replace('_', "-");
            let actual = match defaults.get(&key) {
                Some(serde_json::Value::Array(items)) => {
                    items.iter().map(json_text).collect::<Vec<_>>().join(",")
                }
                Some(v) => json_text(v),
                None => continue, // derived defaults: "MIN", "$VIRTUAL_ENV", "off"
            };
            let same = stated == actual
                || stated.parse::<ByteSize>().ok().map(|b| b.0) == actual.parse().ok()
                || stated.parse::<Dur>().ok() == actual.parse::<Dur>().ok();
            assert!(
                same,
                "--{key}: help says [default: {stated}], the default is {actual}"
            );
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} defaults checked");
        for derived in [
            "workers-initial",
            "venv",
            "timeout",
            "max-lifetime",
            "max-rss",
        ] {
            assert!(!defaults.contains_key(derived), "{derived}");
        }
    }

    fn any_settings() -> impl Strategy<Value = Settings> {
        let dur =
            || proptest::option::of((0u64..100_000).prop_map(|ms| Dur(Duration::from_millis(ms))));
        let small = || proptest::option::of(0u32..2000);
        let algo = proptest::option::of(prop_oneof![
            Just(Algorithm::Spare),
            Just(Algorithm::Spare2),
            Just(Algorithm::Backlog),
            Just(Algorithm::Busyness),
            Just(Algorithm::Manual),
        ]);
        let binds = proptest::collection::vec(
            prop_oneof![
                (1u16..65535).prop_map(|p| BindAddr::Tcp(([0, 0, 0, 0], p).into())),
                "[a-z]{1,8}".prop_map(|n| BindAddr::Unix(format!("/run/{n}.sock").into())),
            ],
            0..3,
        );
        (
            (
                proptest::option::of("[a-z]{1,6}(\\.[a-z]{1,6})?:[a-z_]{1,8}"),
                proptest::option::of("/[a-z]{1,8}\\.yaml".prop_map(PathBuf::from)),
                any::<bool>(),
                binds,
                proptest::option::of(
                    (1u32..64, 0u32..64).prop_map(|(a, b)| WorkerRange { min: a, max: a + b }),
                ),
                small(),
                algo,
                small(),
                small(),
                small(),
            ),
            (
                small(),
                small(),
                small(),
                small(),
                small(),
                small(),
                small(),
                proptest::option::of("/[a-z]{1,8}".prop_map(PathBuf::from)),
                proptest::collection::vec("/[a-z]{1,8}".prop_map(PathBuf::from), 0..3),
                proptest::option::of(Just(false)),
            ),
            (
                proptest::option::of(any::<u32>().prop_map(|b| ByteSize(b as u64))),
                small(),
                dur(),
                dur(),
                dur(),
                dur(),
                proptest::option::of(0u64..1_000_000),
                proptest::option::of(0u64..1_000),
                dur(),
                proptest::option::of((1u64..1 << 40).prop_map(ByteSize)),
            ),
            (
                proptest::option::of(prop_oneof![Just(LogFormat::Plain), Just(LogFormat::Json)]),
                proptest::option::of("[a-z]{1,8}(=debug)?"),
                proptest::option::of(any::<bool>()),
                proptest::option::of((1u32..256).prop_map(|n| n.to_string())),
                proptest::option::of("/[a-z]{1,8}".prop_map(PathBuf::from)),
            ),
            (
                proptest::collection::vec(hook(), 7),
                proptest::collection::vec(
                    (1u16..65535).prop_map(|p| BindAddr::Tcp(([0, 0, 0, 0], p).into())),
                    0..2,
                ),
                proptest::collection::vec(
                    proptest::option::of("/[a-z]{1,8}\\.pem".prop_map(PathBuf::from)),
                    3,
                ),
                proptest::option::of(prop_oneof![
                    Just(ClientVerify::Off),
                    Just(ClientVerify::Optional),
                    Just(ClientVerify::Require),
                ]),
                proptest::option::of(any::<bool>()),
                proptest::option::of(any::<bool>()),
                proptest::collection::vec(
                    prop_oneof![
                        (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, n)| {
                            format!("{}/{n}", std::net::Ipv4Addr::from(a))
                                .parse::<Cidr>()
                                .expect("valid")
                        }),
                        any::<[u8; 16]>()
                            .prop_map(|a| { Cidr(ipnet::IpNet::from(std::net::IpAddr::from(a))) }),
                    ],
                    0..3,
                ),
            ),
            (
                proptest::option::of((0u64..1 << 40).prop_map(ByteSize)),
                proptest::option::of((0u64..1 << 40).prop_map(ByteSize)),
                proptest::option::of((0u64..1 << 40).prop_map(ByteSize)),
                proptest::option::of("/[a-z]{1,8}".prop_map(PathBuf::from)),
            ),
            (
                proptest::collection::vec(header(), 0..3),
                proptest::collection::vec(header(), 0..3),
                proptest::option::of(proxies()),
                proptest::option::of(prop_oneof![
                    Just(ForwardedHeaders::XForwarded),
                    Just(ForwardedHeaders::Forwarded)
                ]),
                proptest::option::of(prefix()),
                proptest::option::of(prop_oneof![
                    Just(OutsideRootPath::NotFound),
                    Just(OutsideRootPath::Pass)
                ]),
                proptest::option::of((0u64..1 << 21).prop_map(ByteSize)),
                small(),
                proptest::option::of((0u64..1 << 21).prop_map(ByteSize)),
                proptest::option::of((0u64..1 << 21).prop_map(ByteSize)),
                proptest::collection::vec(
                    (
                        prefix().prop_filter("not the root", |p| !p.is_root()),
                        "/[a-z]{1,8}",
                    )
                        .prop_map(|(prefix, dir)| StaticMount {
                            prefix,
                            dir: dir.into(),
                        }),
                    0..3,
                ),
                dur(),
            ),
        )
            .prop_map(|(a, b, c, d, e, f, g)| Settings {
                app: a.0,
                config: a.1,
                ignore_env: a.2,
                bind: a.3,
                workers: a.4,
                workers_initial: a.5,
                cheaper_algo: a.6,
                cheaper_step: a.7,
                cheaper_overload: a.8,
                cheaper_idle: a.9,
                cheaper_backlog: b.0,
                cheaper_busyness_min: b.1,
                cheaper_busyness_max: b.2,
                cheaper_busyness_multiplier: b.3,
                cheaper_busyness_penalty: b.4,
                cheaper_busyness_backlog: b.5,
                threads: b.6,
                chdir: b.7,
                pythonpath: b.8,
                preload: b.9,
                max_body: c.0,
                body_buffer: f.0,
                response_buffer: f.1,
                response_spill: f.2,
                temp_dir: f.3,
                max_queue: c.1,
                keepalive_timeout: c.2,
                body_timeout: c.3,
                graceful_timeout: c.4,
                timeout: c.5,
                max_requests: c.6,
                max_requests_jitter: c.7,
                max_lifetime: c.8,
                max_rss: c.9,
                log_format: d.0,
                log_level: d.1,
                access_log: d.2,
                front_threads: d.3.clone().map(|t| t.parse().expect("digits")),
                admin_bind: d
                    .3
                    .map(|p| BindAddr::Tcp(([127, 0, 0, 1], p.parse().expect("digits")).into())),
                venv: d.4,
                post_load: e.0[0].clone(),
                on_reload: e.0[1].clone(),
                post_fork: e.0[2].clone(),
                post_worker_init: e.0[3].clone(),
                worker_exit: e.0[4].clone(),
                pre_request: e.0[5].clone(),
                post_request: e.0[6].clone(),
                tls_bind: e.1,
                tls_cert: e.2[0].clone(),
                tls_key: e.2[1].clone(),
                tls_client_ca: e.2[2].clone(),
                tls_client_verify: e.3,
                http2: e.4,
                h2c: e.5,
                h2c_allow_ips: e.6,
                access_log_request_header: g.0,
                access_log_response_header: g.1,
                forwarded_allow_ips: g.2,
                forwarded_headers: g.3,
                root_path: g.4,
                outside_root_path: g.5,
                limit_request_line: g.6,
                limit_request_fields: g.7,
                limit_request_field_size: g.8,
                limit_request_headers_size: g.9,
                r#static: g.10,
                static_max_age: g.11,
            })
    }

    fn hook() -> impl Strategy<Value = Option<HookSpec>> {
        proptest::option::of(
            prop_oneof![
                "[a-z]{1,6}(\\.[a-z_]{1,6})?:[a-z_]{1,8}",
                "(/[a-z]{1,6}){1,2}\\.py:[a-z_]{1,8}",
            ]
            .prop_map(|s| s.parse::<HookSpec>().expect("valid")),
        )
    }

    fn header() -> impl Strategy<Value = LogHeader> {
        "[A-Za-z][A-Za-z0-9-]{0,15}".prop_map(|h| h.parse().expect("a token"))
    }

    fn prefix() -> impl Strategy<Value = UrlPrefix> {
        proptest::collection::vec("[a-z0-9_.~-]{1,6}", 0..3).prop_filter_map(
            "no . or .. segment",
            |segs| {
                if segs.iter().any(|s| s == "." || s == "..") {
                    return None;
                }
                let text: String = segs.iter().map(|s| format!("/{s}")).collect();
                Some(text.parse().expect("a valid prefix"))
            },
        )
    }

    fn proxies() -> impl Strategy<Value = ProxyList> {
        let net = prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, p)| ipnet::IpNet::V4(
                ipnet::Ipv4Net::new(a.into(), p)
                    .expect("prefix <= 32")
                    .trunc()
            )),
            (any::<u128>(), 0u8..=128).prop_map(|(a, p)| ipnet::IpNet::V6(
                ipnet::Ipv6Net::new(a.into(), p)
                    .expect("prefix <= 128")
                    .trunc()
            )),
        ];
        (any::<bool>(), proptest::collection::btree_set(net, 0..4)).prop_map(|(any, nets)| {
            ProxyList {
                any,
                nets: nets.into_iter().collect(),
            }
        })
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
            any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
            // IPv4-mapped IPv6 addresses (a dual-stack socket's IPv4 peers).
            any::<u32>().prop_map(|a| IpAddr::V6(std::net::Ipv4Addr::from(a).to_ipv6_mapped())),
        ]
    }

    proptest! {
        /// The integer comparison under the prefix's mask says what `ipnet` says, for the
        /// blocks themselves, addresses near them and any address.
        #[test]
        fn proxy_lists_match_as_ipnet_does(list in proxies(), ip in any_ip(), pick in any::<usize>(), flip in 0u32..128) {
            let expected = |ip: IpAddr| {
                let ip = match ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                    v4 => v4,
                };
                list.any || list.nets.iter().any(|n| n.contains(&ip))
            };
            prop_assert_eq!(list.contains(ip), expected(ip));
            if !list.nets.is_empty() {
                // An address of one of the blocks, and the same with one bit flipped.
                let n = list.nets[pick % list.nets.len()];
                let (inside, near) = match n.addr() {
                    IpAddr::V4(a) => {
                        let a = u32::from(a);
                        (IpAddr::V4(a.into()), IpAddr::V4((a ^ (1 << (flip % 32))).into()))
                    }
                    IpAddr::V6(a) => {
                        let a = u128::from(a);
                        (IpAddr::V6(a.into()), IpAddr::V6((a ^ (1 << flip)).into()))
                    }
                };
                prop_assert!(list.contains(inside));
                prop_assert_eq!(list.contains(near), expected(near));
            }
        }

        /// What `to_args` writes, the server's parser reads back unchanged.
        #[test]
        fn settings_round_trip_through_the_command_line(s in any_settings()) {
            let argv = ["wsgiscale".to_string(), "serve".to_string()].into_iter().chain(s.to_args());
            let back = parse_serve_argv(argv).expect("the rendered args parse");
            prop_assert_eq!(back, s);
        }

        /// What `to_yaml` writes, the file parser reads back unchanged.
        #[test]
        fn settings_round_trip_through_the_file(s in any_settings()) {
            let s = Settings { config: None, ignore_env: false, ..s };
            let back = Settings::from_yaml(&s.to_yaml()).expect("the rendered file parses");
            prop_assert_eq!(back, s);
        }

        /// Layering: each setting comes from the top layer that has it.
        #[test]
        fn over_takes_each_setting_from_the_top_layer_that_has_it(
            top in any_settings(),
            bottom in any_settings(),
        ) {
            let merged = top.over(&bottom);
            let (t, b, m) = (json_object(&top), json_object(&bottom), json_object(&merged));
            for (key, value) in &m {
                let want = if is_unset(&t[key]) { &b[key] } else { &t[key] };
                prop_assert_eq!(value, want, "{}", key);
            }
            prop_assert_eq!(merged.config, top.config.or(bottom.config));
        }

        /// The live half and the restart half together are the whole, and never overlap.
        #[test]
        fn split_live_partitions_the_settings(s in any_settings()) {
            let (restart, live) = s.clone().split_live();
            prop_assert_eq!(restart.over(&live), s.clone());
            let (r, l) = (set_only(&restart), set_only(&live));
            prop_assert!(r.keys().all(|k| !l.contains_key(k)));
            // Exactly the LiveConfig's settings are live.
            let cfg = |s: &Settings| resolve(&Settings { app: Some("a:b".into()), ..s.clone() }, None);
            if let (Ok(all), Ok(only_restart)) = (cfg(&s), cfg(&restart)) {
                let defaults = cfg(&Settings::default()).expect("defaults resolve");
                prop_assert_eq!(only_restart.live.scaling, defaults.live.scaling);
                prop_assert_eq!(only_restart.live.lifecycle, defaults.live.lifecycle);
                prop_assert_eq!(only_restart.http, all.http);
                prop_assert_eq!(only_restart.python, all.python);
            }
        }
    }
}
