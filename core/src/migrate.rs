//! `wsgiscale migrate`: a gunicorn configuration (its command line, config file and
//! `GUNICORN_CMD_ARGS`, as gunicorn's own parser read them) or a uWSGI one (its ini file and
//! command line) turned into wsgiscale settings, and what happened to each setting. Pure: the
//! server reads the gunicorn configuration with Python (`wsgiscale_sidecar::migrate`), since a
//! gunicorn config file is a Python module, and hands the values here.
//!
//! [`GUNICORN`] is the one list of gunicorn 27's settings: each is mapped onto a wsgiscale
//! setting or hook, or named with why it needs none or has none. The Python reader builds
//! gunicorn's command-line parser from it, the mapping walks it, and docs/migrate.md's table
//! is checked against it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::hooks::{Hook, HookSpec};
use crate::config::protocols::{Cidr, ClientVerify};
use crate::config::{BindAddr, ByteSize, Dur, LogFormat, Settings, WorkerRange};

/// How gunicorn's command line takes a setting (argparse's action).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `--flag VALUE`.
    Store,
    /// `--flag` sets true.
    StoreTrue,
    /// `--flag` sets false (`--no-sendfile`).
    StoreFalse,
    /// `--flag VALUE`, repeatable.
    Append,
    /// `--flag [VALUE]`, `auto` without one (`--proxy-protocol`).
    OptionalAuto,
}

/// What becomes of a gunicorn setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// Mapped: the text names the wsgiscale setting(s).
    Mapped(&'static str),
    /// Mapped onto a server hook.
    Hook(Hook),
    /// Nothing to set: why.
    NotNeeded(&'static str),
    /// No equivalent: why, and what to do instead.
    NoEquivalent(&'static str),
    /// Its equivalent comes with the front's settings of issue 22 (trusted proxies, root
    /// path, header limits, access-log format, static files), not in this build yet.
    Pending,
}

/// One gunicorn setting.
#[derive(Debug, Clone, Copy)]
pub struct GunicornSetting {
    /// Its name (the config file's variable).
    pub name: &'static str,
    /// Its command-line flags, none for config-file-only settings.
    pub cli: &'static [&'static str],
    /// How the command line takes it.
    pub action: Action,
    /// What becomes of it.
    pub treatment: Treatment,
}

const fn s(
    name: &'static str,
    cli: &'static [&'static str],
    action: Action,
    treatment: Treatment,
) -> GunicornSetting {
    GunicornSetting {
        name,
        cli,
        action,
        treatment,
    }
}

use Action::{Append, OptionalAuto, Store, StoreFalse, StoreTrue};
use Treatment::{Hook as H, Mapped, NoEquivalent as No, NotNeeded as Skip, Pending};

/// Said of the settings whose wsgiscale equivalents are being added by the front's trusted
/// proxy, root path and header limit work: until they exist the migration reports them.
const PENDING_FRONT: &str =
    "not mapped in this build: its wsgiscale setting comes with the front's trusted-proxy, root-path, header-limit, access-log and static-file work (issue 22)";

/// Every setting of gunicorn 27.0.1 (`gunicorn.config.KNOWN_SETTINGS`), in its order.
pub const GUNICORN: &[GunicornSetting] = &[
    s("config", &["-c", "--config"], Store, Skip("the config file is read by the migration itself; wsgiscale's own config file is YAML (`--config`)")),
    s("wsgi_app", &[], Store, Mapped("the app, MODULE:CALLABLE")),
    s("bind", &["-b", "--bind"], Append, Mapped("bind (tls-bind with certfile); fd:// has no equivalent")),
    s("backlog", &["--backlog"], Store, Skip("wsgiscale listens with a backlog of 2048, gunicorn's default; requests wait in its own queue (max-queue) instead")),
    s("workers", &["-w", "--workers"], Store, Mapped("workers (N, or MIN:MAX to let wsgiscale scale)")),
    s("worker_class", &["-k", "--worker-class"], Store, Mapped("sync and gthread: threads; gevent, eventlet, tornado and ASGI workers have no equivalent")),
    s("threads", &["--threads"], Store, Mapped("threads")),
    s("worker_connections", &["--worker-connections"], Store, Skip("the front holds any number of connections; a worker runs `threads` requests at once")),
    s("max_requests", &["--max-requests"], Store, Mapped("max-requests")),
    s("max_requests_jitter", &["--max-requests-jitter"], Store, Mapped("max-requests-jitter")),
    s("timeout", &["-t", "--timeout"], Store, Mapped("timeout (a per-request deadline; gunicorn's is a worker heartbeat, which bounds a request only with the sync worker)")),
    s("graceful_timeout", &["--graceful-timeout"], Store, Mapped("graceful-timeout")),
    s("keepalive", &["--keep-alive"], Store, Mapped("keepalive-timeout")),
    s("limit_request_line", &["--limit-request-line"], Store, Pending),
    s("limit_request_fields", &["--limit-request-fields"], Store, Pending),
    s("limit_request_field_size", &["--limit-request-field_size"], Store, Pending),
    s("reload", &["--reload"], StoreTrue, No("no file watcher: SIGHUP re-imports the app in a new fork server and rolls the workers (a rollout on Kubernetes)")),
    s("reload_engine", &["--reload-engine"], Store, No("no file watcher (see reload)")),
    s("reload_extra_files", &["--reload-extra-file"], Append, No("no file watcher (see reload)")),
    s("spew", &["--spew"], StoreTrue, No("no line tracing; use a debugger or py-spy")),
    s("check_config", &["--check-config"], StoreTrue, Skip("a one-shot mode; `wsgiscale serve` refuses a bad configuration before it starts")),
    s("print_config", &["--print-config"], StoreTrue, Skip("a one-shot mode; this migration prints the configuration")),
    s("preload_app", &["--preload"], StoreTrue, Mapped("preload (wsgiscale preloads by default; gunicorn does not)")),
    s("sendfile", &["--no-sendfile"], StoreFalse, Skip("a worker sends wsgi.file_wrapper files itself, without the GIL")),
    s("reuse_port", &["--reuse-port"], StoreTrue, Skip("one listener in the master serves every worker")),
    s("chdir", &["--chdir"], Store, Mapped("chdir")),
    s("daemon", &["-D", "--daemon"], StoreTrue, No("wsgiscale runs in the foreground, under a process manager or Kubernetes")),
    s("raw_env", &["-e", "--env"], Append, Mapped("the server's environment (env of the WsgiApp)")),
    s("pidfile", &["-p", "--pid"], Store, No("no pidfile; the process manager knows the pid")),
    s("worker_tmp_dir", &["--worker-tmp-dir"], Store, Skip("workers report to the master through shared memory, not heartbeat files")),
    s("user", &["-u", "--user"], Store, No("start the server as that user (the WsgiApp's pod.runAsUser)")),
    s("group", &["-g", "--group"], Store, No("start the server as that group (the WsgiApp's pod.runAsGroup)")),
    s("umask", &["-m", "--umask"], Store, No("set the umask in the environment that starts the server")),
    s("initgroups", &["--initgroups"], StoreTrue, No("the server does not change user (see user)")),
    s("tmp_upload_dir", &[], Store, Skip("request bodies are read by the master; wsgi.input is not a temporary file")),
    s("secure_scheme_headers", &[], Store, Pending),
    s("forwarded_allow_ips", &["--forwarded-allow-ips"], Store, Mapped("h2c-allow-ips when h2c is on; the trusted-proxy setting of issue 22 otherwise (pending)")),
    s("accesslog", &["--access-logfile"], Store, Mapped("access-log (to stderr, with the rest of the log)")),
    s("disable_redirect_access_to_syslog", &["--disable-redirect-access-to-syslog"], StoreTrue, Skip("no syslog")),
    s("access_log_format", &["--access-logformat"], Store, Pending),
    s("errorlog", &["--error-logfile", "--log-file"], Store, Skip("the log goes to stderr, gunicorn's default `-`")),
    s("loglevel", &["--log-level"], Store, Mapped("log-level")),
    s("capture_output", &["--capture-output"], StoreTrue, Skip("the workers' stdout and stderr reach the server's stderr already")),
    s("logger_class", &["--logger-class"], Store, No("log-format plain or json, filtered with log-level")),
    s("logconfig", &["--log-config"], Store, No("log-format plain or json, filtered with log-level")),
    s("logconfig_dict", &[], Store, No("log-format plain or json, filtered with log-level")),
    s("logconfig_json", &["--log-config-json"], Store, No("log-format plain or json, filtered with log-level")),
    s("syslog_addr", &["--log-syslog-to"], Store, No("logs go to stderr, for the platform to collect")),
    s("syslog", &["--log-syslog"], StoreTrue, No("logs go to stderr, for the platform to collect")),
    s("syslog_prefix", &["--log-syslog-prefix"], Store, No("logs go to stderr, for the platform to collect")),
    s("syslog_facility", &["--log-syslog-facility"], Store, No("logs go to stderr, for the platform to collect")),
    s("enable_stdio_inheritance", &["-R", "--enable-stdio-inheritance"], StoreTrue, Skip("the workers' stdio is the server's")),
    s("statsd_host", &["--statsd-host"], Store, No("metrics are Prometheus text on the admin port's /metrics")),
    s("dogstatsd_tags", &["--dogstatsd-tags"], Store, No("metrics are Prometheus text on the admin port's /metrics")),
    s("statsd_prefix", &["--statsd-prefix"], Store, No("metrics are Prometheus text on the admin port's /metrics")),
    s("enable_backlog_metric", &["--enable-backlog-metric"], StoreTrue, Skip("wsgiscale_queue_depth and /load report the queue always")),
    s("proc_name", &["-n", "--name"], Store, No("the processes are named wsgiscale-fork and wsgiscale-work")),
    s("default_proc_name", &[], Store, No("the processes are named wsgiscale-fork and wsgiscale-work")),
    s("pythonpath", &["--pythonpath"], Store, Mapped("pythonpath")),
    s("paste", &["--paste", "--paster"], Store, No("write a module whose callable is paste.deploy.loadapp('config:...') and serve that")),
    s("on_starting", &[], Store, H(Hook::PostLoad)),
    s("on_reload", &[], Store, H(Hook::OnReload)),
    s("when_ready", &[], Store, H(Hook::PostLoad)),
    s("pre_fork", &[], Store, No("runs in gunicorn's master before each fork; wsgiscale's master runs no Python: use post-fork")),
    s("post_fork", &[], Store, H(Hook::PostFork)),
    s("post_worker_init", &[], Store, H(Hook::PostWorkerInit)),
    s("worker_int", &[], Store, No("workers are stopped by their master, not by SIGINT: use worker-exit")),
    s("worker_abort", &[], Store, No("a worker past --timeout has its Python stack logged, then is killed")),
    s("pre_exec", &[], Store, No("no re-exec of the master; SIGHUP starts a new fork server")),
    s("pre_request", &[], Store, H(Hook::PreRequest)),
    s("post_request", &[], Store, H(Hook::PostRequest)),
    s("child_exit", &[], Store, No("runs in gunicorn's master; wsgiscale's runs no Python: use worker-exit in the worker")),
    s("worker_exit", &[], Store, H(Hook::WorkerExit)),
    s("nworkers_changed", &[], Store, No("runs in gunicorn's master; the worker count is in /load and wsgiscale_workers")),
    s("on_exit", &[], Store, No("runs in gunicorn's master, which in wsgiscale runs no Python")),
    s("ssl_context", &[], Store, No("TLS is rustls, set by tls-cert, tls-key, tls-client-ca and tls-client-verify")),
    s("proxy_protocol", &["--proxy-protocol"], OptionalAuto, No("the PROXY protocol is not read; use X-Forwarded-For from a trusted proxy")),
    s("proxy_allow_ips", &["--proxy-allow-from"], Store, No("the PROXY protocol is not read (see proxy_protocol)")),
    s("protocol", &["--protocol"], Store, Mapped("http only; the uwsgi protocol has no equivalent")),
    s("uwsgi_allow_ips", &["--uwsgi-allow-from"], Store, No("the uwsgi protocol is not served (see protocol)")),
    s("keyfile", &["--keyfile"], Store, Mapped("tls-key")),
    s("certfile", &["--certfile"], Store, Mapped("tls-cert, and the binds become tls-bind")),
    s("ssl_version", &["--ssl-version"], Store, Skip("rustls speaks TLS 1.2 and 1.3 only")),
    s("cert_reqs", &["--cert-reqs"], Store, Mapped("tls-client-verify (0 off, 1 optional, 2 require)")),
    s("ca_certs", &["--ca-certs"], Store, Mapped("tls-client-ca")),
    s("suppress_ragged_eofs", &["--suppress-ragged-eofs"], StoreTrue, Skip("rustls handles a close without close_notify")),
    s("do_handshake_on_connect", &["--do-handshake-on-connect"], StoreTrue, Skip("the handshake runs in the connection's own task")),
    s("ciphers", &["--ciphers"], Store, No("rustls' safe default cipher suites are used")),
    s("http_protocols", &["--http-protocols"], Store, Mapped("http2 (ALPN h2 on the TLS binds)")),
    s("http2_cleartext", &["--http2-cleartext"], Store, Mapped("h2c (prior knowledge; upgrade has no equivalent)")),
    s("http2_max_concurrent_streams", &["--http2-max-concurrent-streams"], Store, No("fixed at 100 streams per connection, gunicorn's default")),
    s("http2_initial_window_size", &["--http2-initial-window-size"], Store, No("fixed at 1 MiB per stream and per connection")),
    s("http2_max_frame_size", &["--http2-max-frame-size"], Store, No("fixed at 16 KiB, the protocol's default")),
    s("http2_max_header_list_size", &["--http2-max-header-list-size"], Store, No("follows the front's header limit")),
    s("raw_paste_global_conf", &["--paste-global"], Append, No("see paste")),
    s("permit_obsolete_folding", &["--permit-obsolete-folding"], StoreTrue, No("the HTTP parser refuses obsolete line folding (a request-smuggling shape)")),
    s("strip_header_spaces", &["--strip-header-spaces"], StoreTrue, No("the HTTP parser refuses spaces before a header's colon (a request-smuggling shape)")),
    s("permit_unconventional_http_method", &["--permit-unconventional-http-method"], StoreTrue, Skip("any token is a valid method")),
    s("permit_unconventional_http_version", &["--permit-unconventional-http-version"], StoreTrue, No("HTTP/1.0, HTTP/1.1 and HTTP/2 only")),
    s("casefold_http_method", &["--casefold-http-method"], StoreTrue, No("methods are case-sensitive, as RFC 9110 says")),
    s("forwarder_headers", &["--forwarder-headers"], Store, Pending),
    s("header_map", &["--header-map"], Store, Skip("headers whose names contain `_` are dropped, gunicorn's default `drop`")),
    s("asgi_loop", &["--asgi-loop"], Store, No("wsgiscale serves WSGI, not ASGI")),
    s("asgi_lifespan", &["--asgi-lifespan"], Store, No("wsgiscale serves WSGI, not ASGI")),
    s("asgi_disconnect_grace_period", &["--asgi-disconnect-grace-period"], Store, No("wsgiscale serves WSGI, not ASGI")),
    s("websocket_max_message_size", &["--websocket-max-message-size"], Store, No("WebSockets are not served")),
    s("http_parser", &["--http-parser"], Store, Skip("hyper parses HTTP")),
    s("root_path", &["--root-path"], Store, Pending),
    s("dirty_apps", &["--dirty-app"], Append, No("no dirty arbiters: run long blocking work in a task queue, or in a second WsgiApp")),
    s("dirty_workers", &["--dirty-workers"], Store, No("no dirty arbiters (see dirty_apps)")),
    s("dirty_timeout", &["--dirty-timeout"], Store, No("no dirty arbiters (see dirty_apps)")),
    s("dirty_threads", &["--dirty-threads"], Store, No("no dirty arbiters (see dirty_apps)")),
    s("dirty_graceful_timeout", &["--dirty-graceful-timeout"], Store, No("no dirty arbiters (see dirty_apps)")),
    s("on_dirty_starting", &[], Store, No("no dirty arbiters (see dirty_apps)")),
    s("dirty_post_fork", &[], Store, No("no dirty arbiters (see dirty_apps)")),
    s("dirty_worker_init", &[], Store, No("no dirty arbiters (see dirty_apps)")),
    s("dirty_worker_exit", &[], Store, No("no dirty arbiters (see dirty_apps)")),
    s("control_socket", &["--control-socket"], Store, Skip("the admin port (/load, /metrics) and SIGTTIN/SIGTTOU/SIGHUP do its work")),
    s("control_socket_mode", &["--control-socket-mode"], Store, Skip("no control socket (see control_socket)")),
    s("control_socket_disable", &["--no-control-socket"], StoreTrue, Skip("no control socket (see control_socket)")),
];

/// The table of docs/migrate.md: every setting of [`GUNICORN`] and what becomes of it.
pub fn gunicorn_markdown_table() -> String {
    let mut out = String::from("| gunicorn setting | flag | under wsgiscale |\n|---|---|---|\n");
    for s in GUNICORN {
        let flags = s
            .cli
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            s.name,
            if flags.is_empty() {
                "(file)".into()
            } else {
                flags
            },
            treatment_text(&s.treatment)
        ));
    }
    out
}

/// The table of uWSGI options in docs/migrate.md.
pub fn uwsgi_markdown_table() -> String {
    let mut out = String::from("| uWSGI option | under wsgiscale |\n|---|---|\n");
    for (name, t) in UWSGI {
        out.push_str(&format!("| `{name}` | {} |\n", treatment_text(t)));
    }
    out
}

fn treatment_text(t: &Treatment) -> String {
    let escape = |s: &str| s.replace('|', "\\|");
    match t {
        Treatment::Mapped(what) => format!("**mapped**: {}", escape(what)),
        Treatment::Hook(h) => format!("**mapped**: the `{}` hook", h.setting()),
        Treatment::NotNeeded(why) => format!("not needed: {}", escape(why)),
        Treatment::NoEquivalent(why) => format!("no equivalent: {}", escape(why)),
        Treatment::Pending => {
            "**pending**: its setting comes with the front's work of issue 22".into()
        }
    }
}

/// gunicorn's hook settings (its "Server Hooks" and "Dirty Arbiter Hooks"): functions in a
/// config file, which the reader names by where they can be loaded from.
pub const GUNICORN_HOOKS: &[&str] = &[
    "on_starting",
    "on_reload",
    "when_ready",
    "pre_fork",
    "post_fork",
    "post_worker_init",
    "worker_int",
    "worker_abort",
    "pre_exec",
    "pre_request",
    "post_request",
    "child_exit",
    "worker_exit",
    "nworkers_changed",
    "on_exit",
    "ssl_context",
    "on_dirty_starting",
    "dirty_post_fork",
    "dirty_worker_init",
    "dirty_worker_exit",
];

/// The settings list as the reader takes it: `[{name, cli, action, hook}]` in JSON.
pub fn gunicorn_table_json() -> String {
    let rows: Vec<Value> = GUNICORN
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "cli": s.cli,
                "action": s.action,
                "hook": GUNICORN_HOOKS.contains(&s.name),
            })
        })
        .collect();
    Value::Array(rows).to_string()
}

/// A gunicorn configuration as gunicorn's parser read it: the settings that were set (in a
/// config file, `GUNICORN_CMD_ARGS` or on the command line, the last winning), by name.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct GunicornConfig {
    /// The config file that was read, if any.
    pub config_file: Option<String>,
    /// The positional APP_MODULE, if given.
    pub app: Option<String>,
    /// Values as Python gave them (numbers, strings, lists, booleans; `{"repr": ...}` for
    /// objects such as classes).
    pub settings: BTreeMap<String, Value>,
    /// Hook settings: a `MODULE:FUNCTION` or `PATH:FUNCTION` that loads the same function,
    /// or `{"error": why}` when none can (a lambda).
    pub hooks: BTreeMap<String, Value>,
    /// Arguments gunicorn's parser did not know.
    pub unknown: Vec<String>,
}

/// What the migration did with one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The peer's setting.
    pub setting: String,
    /// Its value, as text.
    pub value: String,
    /// What became of it.
    pub outcome: Outcome,
}

/// What became of one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Set as the wsgiscale settings named; with a remark when the meaning shifts.
    Mapped(String),
    /// Nothing to set, why.
    NotNeeded(String),
    /// No equivalent: why, and what to do.
    NoEquivalent(String),
}

impl Outcome {
    /// The text, when the outcome is of group `group` (0 mapped, 1 not needed, 2 none).
    fn in_group(&self, group: usize) -> Option<&str> {
        match (self, group) {
            (Outcome::Mapped(s), 0)
            | (Outcome::NotNeeded(s), 1)
            | (Outcome::NoEquivalent(s), 2) => Some(s),
            _ => None,
        }
    }
}

/// The result of a migration: the settings, what the WsgiApp needs beyond them, and a note
/// per setting of the peer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Migration {
    /// The wsgiscale settings (a config file for `wsgiscale serve --config`).
    pub settings: Settings,
    /// Environment variables the app was given (`-e KEY=VALUE`).
    pub env: Vec<(String, String)>,
    /// The numeric user and group the peer switched to.
    pub user: Option<i64>,
    /// See `user`.
    pub group: Option<i64>,
    /// One note per setting read.
    pub notes: Vec<Note>,
}

impl Migration {
    fn note(&mut self, setting: &str, value: &Value, outcome: Outcome) {
        self.notes.push(Note {
            setting: setting.to_string(),
            value: text(value),
            outcome,
        });
    }
}

/// A value as the user wrote it: strings bare, the rest as JSON, objects by their repr.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(m) if m.contains_key("repr") => json_str(&m["repr"]),
        other => other.to_string(),
    }
}

fn json_str(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|i| i != 0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        },
        Value::Null => Some(false),
        _ => None,
    }
}

/// A list setting: a list, or a comma-separated string (gunicorn takes both).
fn as_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().flat_map(as_list).collect(),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        Value::Null => Vec::new(),
        other => vec![text(other)],
    }
}

fn secs(n: i64) -> Dur {
    Dur(Duration::from_secs(n.max(0) as u64))
}

/// A gunicorn bind address as wsgiscale's: `HOST:PORT` (a bare host gets gunicorn's port
/// 8000), `unix:PATH`; None for what has no equivalent (`fd://N`, a host name).
fn bind_addr(text: &str) -> Option<BindAddr> {
    if text.starts_with("fd://") {
        return None;
    }
    if let Ok(b) = text.parse::<BindAddr>() {
        return Some(b);
    }
    let with_port = if text.starts_with('[') && text.ends_with(']') || !text.contains(':') {
        format!("{text}:8000")
    } else {
        text.to_string()
    };
    with_port.parse().ok()
}

/// The worker classes that mean threads in a process, as wsgiscale's workers.
fn threaded_class(class: &str) -> Option<bool> {
    match class
        .rsplit('.')
        .next()
        .unwrap_or(class)
        .to_ascii_lowercase()
        .as_str()
    {
        "sync" | "syncworker" => Some(false),
        "gthread" | "threadworker" => Some(true),
        _ => None,
    }
}

/// Maps a gunicorn configuration onto wsgiscale's. Every setting that was set gets a note;
/// gunicorn defaults that would change the app's behaviour under wsgiscale's defaults (one
/// worker, no preload, the sync worker's 30 s timeout, a 30 s graceful timeout) are carried
/// over and say so.
pub fn from_gunicorn(g: &GunicornConfig) -> Migration {
    let mut m = Migration::default();
    let set = |k: &str| g.settings.get(k);
    let class = set("worker_class")
        .map(text)
        .unwrap_or_else(|| "sync".into());
    let threads = set("threads").and_then(as_int).unwrap_or(1);
    // gunicorn runs gthread when threads > 1 with the sync class.
    let threaded = threaded_class(&class).map(|t| t || threads > 1);
    let tls = set("certfile").is_some_and(|v| !v.is_null());
    let h2c = set("http2_cleartext")
        .map(|v| match v {
            Value::Bool(b) => *b,
            other => matches!(
                text(other).trim().to_ascii_lowercase().as_str(),
                "prior-knowledge" | "both"
            ),
        })
        .unwrap_or(false);

    let app = g.app.clone().or_else(|| set("wsgi_app").map(text));
    match app {
        Some(a) => {
            let (module, callable) = a.split_once(':').unwrap_or((&a, "application"));
            let spec = format!("{module}:{callable}");
            let v = Value::String(a.clone());
            if spec.parse::<crate::config::AppSpec>().is_ok() {
                m.settings.app = Some(spec.clone());
                m.note("APP_MODULE", &v, Outcome::Mapped(format!("app: {spec}")));
            } else {
                m.note(
                    "APP_MODULE",
                    &v,
                    Outcome::NoEquivalent(
                        "not MODULE:CALLABLE (an app factory call?): add a module with `application = create_app()` and serve MODULE:application".into(),
                    ),
                );
            }
        }
        None => m.note(
            "APP_MODULE",
            &Value::Null,
            Outcome::NoEquivalent("none given: pass MODULE:CALLABLE to `wsgiscale serve`".into()),
        ),
    }

    for setting in GUNICORN {
        let name = setting.name;
        if name == "wsgi_app" {
            continue;
        }
        if let Treatment::Hook(hook) = setting.treatment {
            if let Some(v) = g.hooks.get(name) {
                map_hook(&mut m, g, name, hook, v);
            }
            continue;
        }
        // A hook with no wsgiscale equivalent (pre_fork, ...) arrives with the hooks.
        let Some(v) = set(name).or_else(|| g.hooks.get(name)) else {
            carry_default(&mut m, name, threaded);
            continue;
        };
        let outcome = match setting.treatment {
            Treatment::Mapped(_) => map_one(&mut m, name, v, threaded, tls, h2c),
            Treatment::NotNeeded(why) => Outcome::NotNeeded(why.into()),
            Treatment::NoEquivalent(why) => Outcome::NoEquivalent(why.into()),
            Treatment::Pending => Outcome::NoEquivalent(PENDING_FRONT.into()),
            Treatment::Hook(_) => unreachable!("hooks are handled above"),
        };
        m.note(name, v, outcome);
    }
    // Numeric ids carry over to the WsgiApp's pod (a name needs the image's /etc/passwd).
    m.user = set("user").and_then(as_int);
    m.group = set("group").and_then(as_int);
    for arg in &g.unknown {
        m.note(
            arg,
            &Value::Null,
            Outcome::NoEquivalent("not a gunicorn 27 option".into()),
        );
    }
    m
}

/// gunicorn's defaults that differ from wsgiscale's in a way the app would notice.
fn carry_default(m: &mut Migration, name: &str, threaded: Option<bool>) {
    let default = |m: &mut Migration, v: Value, what: String| {
        m.note(
            name,
            &v,
            Outcome::Mapped(format!("{what} (gunicorn's default)")),
        );
    };
    match name {
        "workers" => {
            m.settings.workers = Some(WorkerRange { min: 1, max: 1 });
            default(m, Value::from(1), "workers: 1".into());
        }
        "timeout" if threaded == Some(false) => {
            m.settings.timeout = Some(secs(30));
            default(m, Value::from(30), "timeout: 30s".into());
        }
        "graceful_timeout" => {
            m.settings.graceful_timeout = Some(secs(30));
            default(m, Value::from(30), "graceful-timeout: 30s".into());
        }
        "preload_app" => {
            m.settings.preload = Some(false);
            default(
                m,
                Value::Bool(false),
                "preload: false; wsgiscale preloads by default (workers share the app's memory and start in milliseconds): drop this line once the app opens no connections or threads at import, or opens them in a post-fork hook".into(),
            );
        }
        _ => {}
    }
}

fn map_hook(m: &mut Migration, g: &GunicornConfig, name: &str, hook: Hook, v: &Value) {
    // on_starting and when_ready both land on post-load; when_ready wins when both are set.
    if name == "on_starting" && g.hooks.contains_key("when_ready") {
        m.note(
            name,
            v,
            Outcome::NoEquivalent(
                "runs before gunicorn loads the app; wsgiscale's closest hook, post-load, takes when_ready: call one from the other".into(),
            ),
        );
        return;
    }
    let reference = match v {
        Value::String(s) => s.parse::<HookSpec>().map_err(|e| e.to_string()),
        Value::Object(o) => Err(o.get("error").map(json_str).unwrap_or_default()),
        other => Err(format!("not a function: {other}")),
    };
    match reference {
        Ok(spec) => {
            let remark = if name == "on_starting" {
                " (runs after the app is imported, unlike on_starting)"
            } else {
                ""
            };
            let what = format!("{}: {spec}{remark}", hook.setting());
            match hook {
                Hook::PostLoad => m.settings.post_load = Some(spec),
                Hook::OnReload => m.settings.on_reload = Some(spec),
                Hook::PostFork => m.settings.post_fork = Some(spec),
                Hook::PostWorkerInit => m.settings.post_worker_init = Some(spec),
                Hook::WorkerExit => m.settings.worker_exit = Some(spec),
                Hook::PreRequest => m.settings.pre_request = Some(spec),
                Hook::PostRequest => m.settings.post_request = Some(spec),
            }
            m.note(name, v, Outcome::Mapped(what));
        }
        Err(why) => m.note(
            name,
            v,
            Outcome::NoEquivalent(format!(
                "cannot be named as MODULE:FUNCTION ({why}): define it with `def` at the top level of a module"
            )),
        ),
    }
}

fn mapped(what: impl Into<String>) -> Outcome {
    Outcome::Mapped(what.into())
}

fn bad(v: &Value) -> Outcome {
    Outcome::NoEquivalent(format!("{} is not a valid value", text(v)))
}

fn map_one(
    m: &mut Migration,
    name: &str,
    v: &Value,
    threaded: Option<bool>,
    tls: bool,
    h2c: bool,
) -> Outcome {
    let st = &mut m.settings;
    match name {
        "bind" => {
            let mut kept = Vec::new();
            let mut dropped = Vec::new();
            for b in as_list(v) {
                match bind_addr(&b) {
                    Some(a) => kept.push(a),
                    None => dropped.push(b),
                }
            }
            let key = if tls { "tls-bind" } else { "bind" };
            let list = kept.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
            if tls {
                st.tls_bind = kept;
            } else {
                st.bind = kept;
            }
            if dropped.is_empty() {
                mapped(format!("{key}: {list}"))
            } else {
                Outcome::NoEquivalent(format!(
                    "{key}: {list}; no equivalent for {} (wsgiscale binds IP addresses and unix sockets, not inherited descriptors or host names)",
                    dropped.join(", ")
                ))
            }
        }
        "workers" => match as_int(v).and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0) {
            Some(n) => {
                st.workers = Some(WorkerRange { min: n, max: n });
                mapped(format!(
                    "workers: {n} (fixed; `workers: MIN:MAX` lets wsgiscale add and retire workers with the load)"
                ))
            }
            None => bad(v),
        },
        "worker_class" => match threaded {
            Some(_) => Outcome::NotNeeded(
                "wsgiscale's workers are processes running `threads` requests each, as sync (threads 1) and gthread".into(),
            ),
            None => Outcome::NoEquivalent(
                "wsgiscale runs WSGI apps on threads in processes; greenlet (gevent, eventlet), tornado and ASGI workers have no equivalent: use threads, and more workers".into(),
            ),
        },
        "threads" => match as_int(v).and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0) {
            Some(n) => {
                st.threads = Some(n);
                mapped(format!("threads: {n}"))
            }
            None => bad(v),
        },
        "max_requests" => match as_int(v).filter(|n| *n >= 0) {
            Some(n) => {
                st.max_requests = Some(n as u64);
                mapped(format!("max-requests: {n}"))
            }
            None => bad(v),
        },
        "max_requests_jitter" => match as_int(v).filter(|n| *n >= 0) {
            Some(n) => {
                st.max_requests_jitter = Some(n as u64);
                mapped(format!("max-requests-jitter: {n}"))
            }
            None => bad(v),
        },
        "timeout" => match (as_int(v).filter(|n| *n >= 0), threaded) {
            (None, _) => bad(v),
            (Some(0), _) => mapped("nothing: 0 turns the timeout off, wsgiscale's default"),
            (Some(n), Some(true)) => Outcome::NoEquivalent(format!(
                "gunicorn's gthread timeout is a heartbeat that does not bound a request; wsgiscale's timeout ({n}s if set) would kill a request that runs longer: set it to the longest a request may take"
            )),
            (Some(n), _) => {
                st.timeout = Some(secs(n));
                mapped(format!(
                    "timeout: {n}s (a per-request deadline: the stuck worker's Python stack is logged, it is replaced, and the client gets 504)"
                ))
            }
        },
        "graceful_timeout" => match as_int(v).filter(|n| *n >= 0) {
            Some(n) => {
                st.graceful_timeout = Some(secs(n));
                mapped(format!("graceful-timeout: {n}s"))
            }
            None => bad(v),
        },
        "keepalive" => match as_int(v).filter(|n| *n > 0) {
            Some(n) => {
                st.keepalive_timeout = Some(secs(n));
                mapped(format!(
                    "keepalive-timeout: {n}s (keep it above your load balancer's idle timeout; wsgiscale's default is 75s)"
                ))
            }
            None => bad(v),
        },
        "preload_app" => match as_bool(v) {
            Some(p) => {
                st.preload = Some(p);
                mapped(format!("preload: {p}"))
            }
            None => bad(v),
        },
        "chdir" => {
            st.chdir = Some(text(v).into());
            mapped(format!("chdir: {}", text(v)))
        }
        "raw_env" => {
            let mut bad_items = Vec::new();
            for item in as_list_keep_commas(v) {
                match item.split_once('=') {
                    Some((k, val)) if !k.is_empty() => m.env.push((k.to_string(), val.to_string())),
                    _ => bad_items.push(item),
                }
            }
            if bad_items.is_empty() {
                mapped(
                    "the WsgiApp's env (--wsgiapp); for `wsgiscale serve`, set them in its environment",
                )
            } else {
                Outcome::NoEquivalent(format!("not KEY=VALUE: {}", bad_items.join(", ")))
            }
        }
        "pythonpath" => {
            let dirs = as_list(v);
            st.pythonpath = dirs.iter().map(Into::into).collect();
            mapped(format!("pythonpath: {}", dirs.join(", ")))
        }
        "forwarded_allow_ips" => {
            let items = as_list(v);
            if !h2c {
                return Outcome::NoEquivalent(PENDING_FRONT.into());
            }
            if items.iter().any(|i| i == "*") {
                st.h2c_allow_ips = vec![
                    "0.0.0.0/0".parse().expect("a network"),
                    "::/0".parse().expect("a network"),
                ];
                return mapped("h2c-allow-ips: 0.0.0.0/0,::/0 (every peer, as `*`)");
            }
            let nets: Result<Vec<Cidr>, _> = items.iter().map(|i| i.parse::<Cidr>()).collect();
            match nets {
                Ok(n) => {
                    st.h2c_allow_ips = n;
                    mapped(format!(
                        "h2c-allow-ips: {} (gunicorn trusts these for h2c too)",
                        items.join(",")
                    ))
                }
                Err(e) => Outcome::NoEquivalent(e),
            }
        }
        "accesslog" => {
            let target = text(v);
            if v.is_null() || target.is_empty() {
                return Outcome::NotNeeded("no access log, wsgiscale's default".into());
            }
            st.access_log = Some(true);
            if target == "-" {
                mapped("access-log: true")
            } else {
                mapped(format!(
                    "access-log: true (to stderr with the rest of the log, not to {target})"
                ))
            }
        }
        "loglevel" => {
            let level = match text(v).trim().to_ascii_lowercase().as_str() {
                "critical" | "error" => "error",
                "warning" | "warn" => "warn",
                "debug" => "debug",
                _ => "info",
            };
            st.log_level = Some(level.into());
            mapped(format!("log-level: {level}"))
        }
        "protocol" => match text(v).as_str() {
            "http" => Outcome::NotNeeded("HTTP is what wsgiscale serves".into()),
            other => Outcome::NoEquivalent(format!(
                "the {other} protocol is not served; put an HTTP proxy in front or let it speak HTTP"
            )),
        },
        "keyfile" if !v.is_null() => {
            st.tls_key = Some(text(v).into());
            mapped(format!("tls-key: {}", text(v)))
        }
        "certfile" if !v.is_null() => {
            st.tls_cert = Some(text(v).into());
            mapped(format!("tls-cert: {} (and the binds become tls-bind)", text(v)))
        }
        "ca_certs" if !v.is_null() => {
            st.tls_client_ca = Some(text(v).into());
            mapped(format!("tls-client-ca: {}", text(v)))
        }
        "cert_reqs" => {
            let verify = match as_int(v) {
                Some(0) => ClientVerify::Off,
                Some(1) => ClientVerify::Optional,
                Some(2) => ClientVerify::Require,
                _ => return bad(v),
            };
            if verify != ClientVerify::Off {
                st.tls_client_verify = Some(verify);
            }
            mapped(format!("tls-client-verify: {}", verify.as_str()))
        }
        "http_protocols" => {
            let h2 = as_list(v).iter().any(|p| p.eq_ignore_ascii_case("h2"));
            st.http2 = Some(h2);
            mapped(format!("http2: {h2}"))
        }
        "http2_cleartext" => {
            let mode = match v {
                Value::Bool(b) => if *b { "prior-knowledge" } else { "off" }.to_string(),
                other => text(other).trim().to_ascii_lowercase(),
            };
            match mode.as_str() {
                "off" => mapped("h2c: false"),
                "prior-knowledge" | "both" => {
                    st.h2c = Some(true);
                    mapped(if mode == "both" {
                        "h2c: true (prior knowledge; the Upgrade: h2c dance has no equivalent)"
                    } else {
                        "h2c: true (to peers in h2c-allow-ips)"
                    })
                }
                _ => Outcome::NoEquivalent(
                    "only prior-knowledge h2c is served, not the Upgrade: h2c dance".into(),
                ),
            }
        }
        "keyfile" | "certfile" | "ca_certs" => Outcome::NotNeeded("not set".into()),
        other => Outcome::NoEquivalent(format!("{other} is not mapped")),
    }
}

/// `-e` values: each item whole (a value may hold commas).
fn as_list_keep_commas(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().map(text).collect(),
        Value::Null => Vec::new(),
        other => vec![text(other)],
    }
}

/// The notes as YAML comments, grouped by outcome.
pub fn render_notes(source: &str, notes: &[Note]) -> String {
    let mut out = format!(
        "# wsgiscale settings migrated from {source} by `wsgiscale migrate`.\n\
         # Values a config file computes (cpu_count(), environment variables) are as they were here.\n"
    );
    let groups = [
        ("Mapped", " ->"),
        ("Not needed under wsgiscale", ":"),
        ("No equivalent: check these", ":"),
    ];
    for (group, (title, sep)) in groups.into_iter().enumerate() {
        let lines: Vec<String> = notes
            .iter()
            .filter_map(|n| {
                n.outcome.in_group(group).map(|why| {
                    let value = n.value.replace('\n', " ");
                    let value = if value.len() > 60 {
                        format!("{}...", value.chars().take(57).collect::<String>())
                    } else {
                        value
                    };
                    format!("#   {} = {value}{sep} {why}\n", n.setting)
                })
            })
            .collect();
        if !lines.is_empty() {
            out.push_str(&format!("# {title}:\n"));
            out.extend(lines);
        }
    }
    out
}

/// The migration as a WsgiApp (`wsgiscale.dev/v1alpha1`) manifest with `name`: the spec
/// fields the settings have, every duration in whole seconds (rounded up), env, the user and
/// group as the pod's. The image is left for the user to fill in.
pub fn to_wsgiapp(m: &Migration, name: &str, image: &str) -> Value {
    use serde_json::{json, Map};
    let st = &m.settings;
    let ceil_secs = |d: Dur| -> i64 {
        let s = d.0.as_secs() as i64;
        if d.0.subsec_nanos() > 0 {
            s + 1
        } else {
            s
        }
    };
    let mut spec = Map::new();
    spec.insert("image".into(), json!(image));
    spec.insert(
        "app".into(),
        json!(st.app.clone().unwrap_or_else(|| "MODULE:CALLABLE".into())),
    );
    if let Some(d) = &st.chdir {
        spec.insert("chdir".into(), json!(d.display().to_string()));
    }
    if !st.pythonpath.is_empty() {
        spec.insert(
            "pythonpath".into(),
            json!(st
                .pythonpath
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()),
        );
    }
    if let Some(p) = st.preload {
        spec.insert("preload".into(), json!(p));
    }
    if let Some(BindAddr::Tcp(a)) = st.bind.first() {
        spec.insert("port".into(), json!(a.port()));
    }
    if !m.env.is_empty() {
        spec.insert(
            "env".into(),
            json!(m
                .env
                .iter()
                .map(|(k, v)| json!({"name": k, "value": v}))
                .collect::<Vec<_>>()),
        );
    }
    let mut workers = Map::new();
    if let Some(r) = st.workers {
        workers.insert("min".into(), json!(r.min));
        workers.insert("max".into(), json!(r.max));
    }
    if let Some(t) = st.threads {
        workers.insert("threads".into(), json!(t));
    }
    if !workers.is_empty() {
        spec.insert("workers".into(), Value::Object(workers));
    }
    let mut lifecycle = Map::new();
    if let Some(t) = st.timeout {
        lifecycle.insert("timeoutSeconds".into(), json!(ceil_secs(t)));
    }
    if let Some(n) = st.max_requests {
        lifecycle.insert("maxRequests".into(), json!(n));
    }
    if let Some(n) = st.max_requests_jitter {
        lifecycle.insert("maxRequestsJitter".into(), json!(n));
    }
    if let Some(t) = st.max_lifetime {
        lifecycle.insert("maxLifetimeSeconds".into(), json!(ceil_secs(t)));
    }
    if let Some(ByteSize(b)) = st.max_rss {
        lifecycle.insert("maxRss".into(), json!(b.to_string()));
    }
    if let Some(t) = st.graceful_timeout {
        lifecycle.insert("gracefulTimeoutSeconds".into(), json!(ceil_secs(t)));
    }
    if !lifecycle.is_empty() {
        spec.insert("lifecycle".into(), Value::Object(lifecycle));
    }
    let mut http = Map::new();
    if let Some(ByteSize(b)) = st.max_body {
        http.insert("maxBodySize".into(), json!(b.to_string()));
    }
    if let Some(t) = st.keepalive_timeout {
        http.insert("keepaliveTimeoutSeconds".into(), json!(ceil_secs(t).max(1)));
    }
    if let Some(t) = st.body_timeout {
        http.insert("bodyTimeoutSeconds".into(), json!(ceil_secs(t).max(1)));
    }
    if let Some(a) = st.access_log {
        http.insert("accessLog".into(), json!(a));
    }
    if !http.is_empty() {
        spec.insert("http".into(), Value::Object(http));
    }
    let mut logging = Map::new();
    if let Some(l) = &st.log_level {
        logging.insert("level".into(), json!(l));
    }
    if let Some(f) = st.log_format {
        logging.insert(
            "format".into(),
            json!(match f {
                LogFormat::Plain => "plain",
                LogFormat::Json => "json",
            }),
        );
    }
    if !logging.is_empty() {
        spec.insert("logging".into(), Value::Object(logging));
    }
    let hooks: Map<String, Value> = [
        ("postLoad", &st.post_load),
        ("onReload", &st.on_reload),
        ("postFork", &st.post_fork),
        ("postWorkerInit", &st.post_worker_init),
        ("workerExit", &st.worker_exit),
        ("preRequest", &st.pre_request),
        ("postRequest", &st.post_request),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|h| (k.to_string(), json!(h.to_string()))))
    .collect();
    if !hooks.is_empty() {
        spec.insert("hooks".into(), Value::Object(hooks));
    }
    if !st.tls_bind.is_empty() || st.tls_cert.is_some() {
        let mut tls = Map::new();
        tls.insert("secretName".into(), json!(format!("{name}-tls")));
        if let Some(BindAddr::Tcp(a)) = st.tls_bind.first() {
            tls.insert("port".into(), json!(a.port()));
        }
        if let Some(v) = st.tls_client_verify.filter(|v| *v != ClientVerify::Off) {
            tls.insert("clientVerify".into(), json!(v.as_str()));
            tls.insert(
                "clientCaSecretName".into(),
                json!(format!("{name}-client-ca")),
            );
        }
        spec.insert("tls".into(), Value::Object(tls));
        // The pod's plain port stays; with only TLS binds it is wsgiscale's default.
        spec.remove("port");
    }
    let mut h2 = Map::new();
    if let Some(e) = st.http2 {
        h2.insert("enabled".into(), json!(e));
    }
    if let Some(c) = st.h2c {
        h2.insert("h2c".into(), json!(c));
    }
    if !st.h2c_allow_ips.is_empty() {
        h2.insert(
            "h2cAllowIps".into(),
            json!(st
                .h2c_allow_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()),
        );
    }
    if !h2.is_empty() {
        spec.insert("http2".into(), Value::Object(h2));
    }
    let mut pod = Map::new();
    if let Some(u) = m.user.filter(|u| *u > 0) {
        pod.insert("runAsUser".into(), json!(u));
    }
    if let Some(g) = m.group {
        pod.insert("runAsGroup".into(), json!(g));
    }
    if !pod.is_empty() {
        spec.insert("pod".into(), Value::Object(pod));
    }
    json!({
        "apiVersion": "wsgiscale.dev/v1alpha1",
        "kind": "WsgiApp",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// A uWSGI configuration: its options in the order given (ini files first, where the
/// command line loaded them), keys with `-` for `_`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UwsgiConfig {
    /// `(option, value)`; a flag without a value has `true`.
    pub options: Vec<(String, String)>,
    /// The ini files read.
    pub files: Vec<String>,
}

/// uWSGI's one-letter options that the common configurations use.
const UWSGI_SHORT: &[(&str, &str)] = &[
    ("-w", "module"),
    ("-p", "processes"),
    ("-M", "master"),
    ("-s", "socket"),
    ("-H", "home"),
    ("-L", "disable-logging"),
    ("-b", "buffer-size"),
];

/// The `[section]` (default `uwsgi`) of an ini text: `key = value` lines, `;` and `#`
/// comments, repeated keys kept.
pub fn parse_uwsgi_ini(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_string();
            continue;
        }
        if current != section {
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or((line, "true"));
        out.push((k.trim().replace('_', "-"), v.trim().to_string()));
    }
    out
}

/// Reads a uWSGI command line (after `uwsgi`): `--ini FILE[:SECTION]` (or a lone `FILE.ini`)
/// loads an ini file with `read`; `--opt value`, `--opt=value`, `--flag` and the common
/// one-letter options are options.
pub fn read_uwsgi(
    args: &[String],
    read: impl Fn(&str) -> std::io::Result<String>,
) -> Result<UwsgiConfig, String> {
    let mut cfg = UwsgiConfig::default();
    let mut i = 0;
    let load = |cfg: &mut UwsgiConfig, spec: &str| -> Result<(), String> {
        let (path, section) = match spec.rsplit_once(':') {
            Some((p, s)) if !s.contains('/') && !s.is_empty() => (p, s),
            _ => (spec, "uwsgi"),
        };
        let text = read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        cfg.options.extend(parse_uwsgi_ini(&text, section));
        cfg.files.push(path.to_string());
        Ok(())
    };
    while i < args.len() {
        let arg = &args[i];
        let next_is_value = args
            .get(i + 1)
            .is_some_and(|n| !n.starts_with('-') || n.parse::<f64>().is_ok());
        let (key, value) = if let Some(long) = arg.strip_prefix("--") {
            match long.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None if next_is_value => {
                    i += 1;
                    (long.to_string(), Some(args[i].clone()))
                }
                None => (long.to_string(), None),
            }
        } else if let Some((_, long)) = UWSGI_SHORT.iter().find(|(s, _)| s == arg) {
            if next_is_value && *long != "master" && *long != "disable-logging" {
                i += 1;
                (long.to_string(), Some(args[i].clone()))
            } else {
                (long.to_string(), None)
            }
        } else if arg.ends_with(".ini") {
            ("ini".to_string(), Some(arg.clone()))
        } else {
            return Err(format!("{arg:?} is not an option this migration reads"));
        };
        let key = key.replace('_', "-");
        if key == "ini" {
            load(&mut cfg, value.as_deref().unwrap_or_default())?;
        } else {
            cfg.options
                .push((key, value.unwrap_or_else(|| "true".into())));
        }
        i += 1;
    }
    Ok(cfg)
}

/// What becomes of the uWSGI options this migration knows (the common ones); others are
/// reported as unknown.
pub const UWSGI: &[(&str, Treatment)] = &[
    ("module", Mapped("the app (MODULE:CALLABLE, callable `application` unless `callable`)")),
    ("wsgi", Mapped("the app (as module)")),
    ("callable", Mapped("the app's callable")),
    ("wsgi-file", Mapped("the app: the file's module, its folder on pythonpath")),
    ("http", Mapped("bind (wsgiscale serves HTTP itself; no router process)")),
    ("http-socket", Mapped("bind")),
    ("https", Mapped("tls-bind, tls-cert, tls-key")),
    ("socket", No("the uwsgi protocol is not served: point the proxy at an HTTP bind (proxy_pass instead of uwsgi_pass)")),
    ("processes", Mapped("workers (MAX with cheaper)")),
    ("workers", Mapped("workers (MAX with cheaper)")),
    ("cheaper", Mapped("workers MIN")),
    ("cheaper-initial", Mapped("workers-initial")),
    ("cheaper-algo", Mapped("cheaper-algo")),
    ("cheaper-step", Mapped("cheaper-step")),
    ("cheaper-overload", Mapped("cheaper-overload")),
    ("cheaper-idle", Mapped("cheaper-idle")),
    ("cheaper-busyness-min", Mapped("cheaper-busyness-min")),
    ("cheaper-busyness-max", Mapped("cheaper-busyness-max")),
    ("cheaper-busyness-multiplier", Mapped("cheaper-busyness-multiplier")),
    ("cheaper-busyness-penalty", Mapped("cheaper-busyness-penalty")),
    ("cheaper-busyness-backlog-alert", Mapped("cheaper-busyness-backlog")),
    ("cheaper-rss-limit-soft", No("spawns are refused near the container's memory limit (its cgroup), not at a fixed size")),
    ("cheaper-rss-limit-hard", No("workers are recycled above max-rss; the container's limit bounds the rest")),
    ("threads", Mapped("threads")),
    ("enable-threads", Skip("Python threads always work")),
    ("harakiri", Mapped("timeout")),
    ("harakiri-verbose", Skip("a stuck worker's Python stack is always logged")),
    ("max-requests", Mapped("max-requests")),
    ("max-requests-delta", Mapped("max-requests-jitter (random, not by worker id)")),
    ("max-worker-lifetime", Mapped("max-lifetime")),
    ("reload-on-rss", Mapped("max-rss")),
    ("evil-reload-on-rss", Mapped("max-rss (checked after each request)")),
    ("chdir", Mapped("chdir")),
    ("pythonpath", Mapped("pythonpath")),
    ("home", Mapped("venv")),
    ("virtualenv", Mapped("venv")),
    ("venv", Mapped("venv")),
    ("pyhome", Mapped("venv")),
    ("lazy-apps", Mapped("preload: false")),
    ("lazy", Mapped("preload: false")),
    ("master", Skip("wsgiscale always runs a master")),
    ("die-on-term", Skip("SIGTERM always drains and stops")),
    ("vacuum", Skip("unix sockets are removed on exit")),
    ("need-app", Skip("an app that fails to import stops the start")),
    ("single-interpreter", Skip("one interpreter per worker")),
    ("strict", Skip("unknown settings are always errors")),
    ("no-orphans", Skip("workers die with their fork server and master")),
    ("thunder-lock", Skip("one listener in the master")),
    ("listen", Skip("a backlog of 2048; requests wait in the master's queue (max-queue)")),
    ("post-buffering", Skip("the master always reads the whole body before a worker sees it")),
    ("limit-post", Mapped("max-body")),
    ("buffer-size", Pending),
    ("disable-logging", Mapped("access-log: false")),
    ("log-format", Pending),
    ("logformat", Pending),
    ("log-x-forwarded-for", Pending),
    ("logto", No("the log goes to stderr")),
    ("daemonize", No("wsgiscale runs in the foreground")),
    ("pidfile", No("no pidfile")),
    ("uid", No("start the server as that user (the WsgiApp's pod.runAsUser)")),
    ("gid", No("start the server as that group (the WsgiApp's pod.runAsGroup)")),
    ("env", Mapped("the server's environment (env of the WsgiApp)")),
    ("static-map", Pending),
    ("static-map2", Pending),
    ("check-static", Pending),
    ("mount", Pending),
    ("manage-script-name", Pending),
    ("stats", Skip("the admin port's /load and /metrics")),
    ("stats-http", Skip("the admin port's /load and /metrics")),
    ("memory-report", Skip("worker memory is in /load and wsgiscale_workers_memory_bytes")),
    ("offload-threads", Skip("the master sends responses; workers never wait on clients")),
    ("plugins", Skip("Python is built in")),
    ("plugin", Skip("Python is built in")),
    ("touch-reload", No("no file watcher: SIGHUP reloads")),
    ("py-autoreload", No("no file watcher: SIGHUP reloads")),
    ("import", No("use a post-load hook that imports it")),
    ("http-timeout", No("the front's timeouts are body-timeout and keepalive-timeout")),
    ("socket-timeout", No("the front's timeouts are body-timeout and keepalive-timeout")),
];

/// Maps a uWSGI configuration onto wsgiscale's; see [`UWSGI`] for what each option becomes.
pub fn from_uwsgi(u: &UwsgiConfig) -> Migration {
    let mut m = Migration::default();
    let last = |k: &str| {
        u.options
            .iter()
            .rev()
            .find(|(o, _)| o == k)
            .map(|(_, v)| v.clone())
    };
    let num = |k: &str| last(k).and_then(|v| v.trim().parse::<u64>().ok());
    let module = last("module").or_else(|| last("wsgi"));
    let callable = last("callable").unwrap_or_else(|| "application".into());
    let mut app = module.map(|m| {
        if m.contains(':') {
            m
        } else {
            format!("{m}:{callable}")
        }
    });
    if app.is_none() {
        if let Some(file) = last("wsgi-file") {
            let path = std::path::Path::new(&file);
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("wsgi");
            app = Some(format!("{stem}:{callable}"));
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                m.settings.pythonpath.push(dir.to_path_buf());
            }
        }
    }
    m.settings.app = app.filter(|a| a.parse::<crate::config::AppSpec>().is_ok());
    let processes = num("processes").or_else(|| num("workers"));
    let cheaper = num("cheaper");
    let max = processes.unwrap_or(1) as u32;
    let min = cheaper
        .map(|c| c as u32)
        .filter(|c| *c > 0 && *c < max)
        .unwrap_or(max);
    m.settings.workers = Some(WorkerRange { min, max });
    if processes.is_none() {
        m.note(
            "processes",
            &Value::from(1),
            Outcome::Mapped("workers: 1 (uWSGI's default)".into()),
        );
    }
    if last("disable-logging").is_none() {
        m.settings.access_log = Some(true);
        m.note(
            "disable-logging",
            &Value::Bool(false),
            Outcome::Mapped("access-log: true (uWSGI logs every request by default)".into()),
        );
    }
    for (key, value) in &u.options {
        let v = Value::String(value.clone());
        let Some((_, treatment)) = UWSGI.iter().find(|(k, _)| k == key) else {
            m.note(
                key,
                &v,
                Outcome::NoEquivalent(
                    "not among the options this migration maps: check what it does".into(),
                ),
            );
            continue;
        };
        let outcome = match treatment {
            Treatment::NotNeeded(why) => Outcome::NotNeeded((*why).into()),
            Treatment::NoEquivalent(why) => Outcome::NoEquivalent((*why).into()),
            Treatment::Pending => Outcome::NoEquivalent(PENDING_FRONT.into()),
            Treatment::Hook(_) => unreachable!("uWSGI options are not hooks"),
            Treatment::Mapped(_) => map_uwsgi(&mut m, key, value),
        };
        m.note(key, &v, outcome);
    }
    m.user = last("uid").and_then(|v| v.parse().ok());
    m.group = last("gid").and_then(|v| v.parse().ok());
    m
}

fn map_uwsgi(m: &mut Migration, key: &str, value: &str) -> Outcome {
    let st = &mut m.settings;
    let int = || value.trim().parse::<u32>().ok();
    let bind = |v: &str| {
        let addr = v.split(',').next().unwrap_or(v).trim();
        let addr = if addr.starts_with(':') {
            format!("0.0.0.0{addr}")
        } else {
            addr.to_string()
        };
        addr.parse::<BindAddr>().ok()
    };
    match key {
        "module" | "wsgi" | "callable" | "wsgi-file" => match &st.app {
            Some(a) => mapped(format!("app: {a}")),
            None => Outcome::NoEquivalent(format!("{value} is not MODULE:CALLABLE")),
        },
        "http" | "http-socket" => match bind(value) {
            Some(b) => {
                let text = b.to_string();
                st.bind.push(b);
                mapped(format!("bind: {text}"))
            }
            None => bad(&Value::String(value.into())),
        },
        "https" => {
            let parts: Vec<&str> = value.split(',').map(str::trim).collect();
            match (bind(value), parts.get(1), parts.get(2)) {
                (Some(b), Some(cert), Some(key)) => {
                    let text = b.to_string();
                    st.tls_bind.push(b);
                    st.tls_cert = Some(cert.into());
                    st.tls_key = Some(key.into());
                    mapped(format!(
                        "tls-bind: {text}, tls-cert: {cert}, tls-key: {key}"
                    ))
                }
                _ => bad(&Value::String(value.into())),
            }
        }
        "processes" | "workers" | "cheaper" => {
            let r = st.workers.unwrap_or(WorkerRange { min: 1, max: 1 });
            mapped(format!("workers: {r}"))
        }
        "cheaper-initial" => int().map_or_else(
            || bad(&Value::String(value.into())),
            |n| {
                st.workers_initial = Some(n);
                mapped(format!("workers-initial: {n}"))
            },
        ),
        "cheaper-algo" => {
            match <crate::config::Algorithm as clap::ValueEnum>::from_str(value.trim(), true) {
                Ok(a) => {
                    st.cheaper_algo = Some(a);
                    mapped(format!("cheaper-algo: {}", a.as_str()))
                }
                Err(_) => bad(&Value::String(value.into())),
            }
        }
        "cheaper-step"
        | "cheaper-overload"
        | "cheaper-idle"
        | "cheaper-busyness-min"
        | "cheaper-busyness-max"
        | "cheaper-busyness-multiplier"
        | "cheaper-busyness-penalty"
        | "cheaper-busyness-backlog-alert"
        | "threads" => {
            let Some(n) = int() else {
                return bad(&Value::String(value.into()));
            };
            let slot = match key {
                "cheaper-step" => &mut st.cheaper_step,
                "cheaper-overload" => &mut st.cheaper_overload,
                "cheaper-idle" => &mut st.cheaper_idle,
                "cheaper-busyness-min" => &mut st.cheaper_busyness_min,
                "cheaper-busyness-max" => &mut st.cheaper_busyness_max,
                "cheaper-busyness-multiplier" => &mut st.cheaper_busyness_multiplier,
                "cheaper-busyness-penalty" => &mut st.cheaper_busyness_penalty,
                "cheaper-busyness-backlog-alert" => &mut st.cheaper_busyness_backlog,
                _ => &mut st.threads,
            };
            *slot = Some(n);
            let ours = match key {
                "cheaper-busyness-backlog-alert" => "cheaper-busyness-backlog",
                other => other,
            };
            mapped(format!("{ours}: {n}"))
        }
        "harakiri" => int().map_or_else(
            || bad(&Value::String(value.into())),
            |n| {
                st.timeout = (n > 0).then(|| secs(n.into()));
                mapped(format!("timeout: {n}s"))
            },
        ),
        "max-requests" | "max-requests-delta" => {
            let Ok(n) = value.trim().parse::<u64>() else {
                return bad(&Value::String(value.into()));
            };
            if key == "max-requests" {
                st.max_requests = Some(n);
                mapped(format!("max-requests: {n}"))
            } else {
                st.max_requests_jitter = Some(n);
                mapped(format!(
                    "max-requests-jitter: {n} (random 0..={n}, not worker id x {n})"
                ))
            }
        }
        "max-worker-lifetime" => int().map_or_else(
            || bad(&Value::String(value.into())),
            |n| {
                st.max_lifetime = (n > 0).then(|| secs(n.into()));
                mapped(format!("max-lifetime: {n}s"))
            },
        ),
        "reload-on-rss" | "evil-reload-on-rss" => int().map_or_else(
            || bad(&Value::String(value.into())),
            |mb| {
                st.max_rss = Some(ByteSize(u64::from(mb) << 20));
                mapped(format!("max-rss: {mb}Mi"))
            },
        ),
        "limit-post" => match value.trim().parse::<u64>() {
            Ok(0) => {
                mapped("nothing: 0 is no limit in uWSGI; wsgiscale's max-body is 64Mi by default")
            }
            Ok(b) => {
                st.max_body = Some(ByteSize(b));
                mapped(format!("max-body: {b}"))
            }
            Err(_) => bad(&Value::String(value.into())),
        },
        "chdir" => {
            st.chdir = Some(value.into());
            mapped(format!("chdir: {value}"))
        }
        "pythonpath" => {
            st.pythonpath.push(value.into());
            mapped(format!("pythonpath: {value}"))
        }
        "home" | "virtualenv" | "venv" | "pyhome" => {
            st.venv = Some(value.into());
            mapped(format!("venv: {value}"))
        }
        "lazy-apps" | "lazy" => match as_bool(&Value::String(value.into())) {
            Some(true) => {
                st.preload = Some(false);
                mapped("preload: false")
            }
            _ => Outcome::NotNeeded("preload, wsgiscale's default".into()),
        },
        "disable-logging" => match as_bool(&Value::String(value.into())) {
            Some(false) => {
                st.access_log = Some(true);
                mapped("access-log: true")
            }
            _ => {
                st.access_log = None;
                mapped("access-log: false, wsgiscale's default")
            }
        },
        "env" => match value.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                m.env.push((k.to_string(), v.to_string()));
                mapped("the WsgiApp's env (--wsgiapp); for `wsgiscale serve`, set it in its environment")
            }
            _ => bad(&Value::String(value.into())),
        },
        other => Outcome::NoEquivalent(format!("{other} is not mapped")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(settings: Value, hooks: Value) -> GunicornConfig {
        GunicornConfig {
            config_file: Some("gunicorn.conf.py".into()),
            app: Some("mysite.wsgi:application".into()),
            settings: serde_json::from_value(settings).expect("object"),
            hooks: serde_json::from_value(hooks).expect("object"),
            unknown: vec![],
        }
    }

    fn outcome<'a>(m: &'a Migration, setting: &str) -> &'a Outcome {
        &m.notes
            .iter()
            .find(|n| n.setting == setting)
            .unwrap_or_else(|| panic!("no note for {setting}: {:?}", m.notes))
            .outcome
    }

    #[test]
    fn the_list_is_gunicorn_27s_every_setting_once() {
        let mut names: Vec<_> = GUNICORN.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), 120);
        names.sort();
        names.dedup();
        assert_eq!(names.len(), GUNICORN.len(), "a setting is listed twice");
        for hook in GUNICORN_HOOKS {
            let s = GUNICORN.iter().find(|s| s.name == *hook).expect("listed");
            assert!(s.cli.is_empty(), "{hook} is a config-file function");
        }
        let hooks = GUNICORN
            .iter()
            .filter(|s| matches!(s.treatment, Treatment::Hook(_)));
        assert!(hooks.clone().count() >= 7);
        assert!(hooks.into_iter().all(|s| GUNICORN_HOOKS.contains(&s.name)));
        let flags: Vec<_> = GUNICORN.iter().flat_map(|s| s.cli.iter()).collect();
        let mut unique = flags.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), flags.len(), "a flag is listed twice");
    }

    #[test]
    fn a_typical_django_config_maps_and_its_hooks_become_hooks() {
        let g = config(
            json!({
                "bind": ["0.0.0.0:8000"],
                "workers": 4,
                "worker_class": "gthread",
                "threads": 2,
                "timeout": 120,
                "graceful_timeout": 20,
                "keepalive": 5,
                "max_requests": 1000,
                "max_requests_jitter": 100,
                "preload_app": true,
                "accesslog": "-",
                "loglevel": "warning",
                "raw_env": ["DJANGO_SETTINGS_MODULE=mysite.settings", "A=b,c"],
                "statsd_host": "localhost:8125",
                "sendfile": false,
            }),
            json!({
                "post_fork": "gunicorn.conf.py:post_fork",
                "worker_exit": "mysite.hooks:worker_exit",
                "pre_fork": "gunicorn.conf.py:pre_fork",
                "when_ready": {"error": "a lambda"},
            }),
        );
        let m = from_gunicorn(&g);
        let s = &m.settings;
        assert_eq!(s.app.as_deref(), Some("mysite.wsgi:application"));
        assert_eq!(
            s.bind,
            vec!["0.0.0.0:8000".parse::<BindAddr>().expect("bind")]
        );
        assert_eq!(s.workers, Some(WorkerRange { min: 4, max: 4 }));
        assert_eq!(s.threads, Some(2));
        // gthread's timeout is a heartbeat: not carried over as a request deadline.
        assert_eq!(s.timeout, None);
        assert!(matches!(outcome(&m, "timeout"), Outcome::NoEquivalent(_)));
        assert_eq!(s.graceful_timeout, Some(secs(20)));
        assert_eq!(s.keepalive_timeout, Some(secs(5)));
        assert_eq!(
            (s.max_requests, s.max_requests_jitter),
            (Some(1000), Some(100))
        );
        assert_eq!(s.preload, Some(true));
        assert_eq!(s.access_log, Some(true));
        assert_eq!(s.log_level.as_deref(), Some("warn"));
        assert_eq!(
            m.env,
            vec![
                ("DJANGO_SETTINGS_MODULE".into(), "mysite.settings".into()),
                ("A".into(), "b,c".into())
            ]
        );
        assert_eq!(
            s.post_fork.as_ref().map(ToString::to_string).as_deref(),
            Some("gunicorn.conf.py:post_fork")
        );
        assert!(s.worker_exit.is_some());
        assert!(matches!(outcome(&m, "pre_fork"), Outcome::NoEquivalent(_)));
        assert!(matches!(
            outcome(&m, "when_ready"),
            Outcome::NoEquivalent(_)
        ));
        assert!(matches!(
            outcome(&m, "statsd_host"),
            Outcome::NoEquivalent(_)
        ));
        assert!(matches!(outcome(&m, "sendfile"), Outcome::NotNeeded(_)));
        // The resulting file is one the server reads back.
        let yaml = s.to_yaml();
        assert_eq!(Settings::from_yaml(&yaml).expect("parses"), *s);
        crate::config::resolve(s, None).expect("the server accepts it");
    }

    #[test]
    fn gunicorns_defaults_that_matter_are_carried_over() {
        let m = from_gunicorn(&config(json!({}), json!({})));
        let s = &m.settings;
        assert_eq!(s.workers, Some(WorkerRange { min: 1, max: 1 }));
        assert_eq!(
            s.timeout,
            Some(secs(30)),
            "the sync worker's heartbeat bounds a request"
        );
        assert_eq!(s.graceful_timeout, Some(secs(30)));
        assert_eq!(s.preload, Some(false));
        assert!(s.bind.is_empty(), "127.0.0.1:8000 is the default of both");
    }

    #[test]
    fn tls_binds_and_client_certificates() {
        let m = from_gunicorn(&config(
            json!({
                "bind": "0.0.0.0:8443",
                "certfile": "/tls/tls.crt",
                "keyfile": "/tls/tls.key",
                "ca_certs": "/tls/ca.crt",
                "cert_reqs": 2,
                "http_protocols": "h2,h1",
            }),
            json!({}),
        ));
        let s = &m.settings;
        assert!(s.bind.is_empty());
        assert_eq!(
            s.tls_bind,
            vec!["0.0.0.0:8443".parse::<BindAddr>().expect("bind")]
        );
        assert_eq!(s.tls_client_verify, Some(ClientVerify::Require));
        assert_eq!(s.http2, Some(true));
        let cfg = crate::config::resolve(s, None).expect("valid");
        assert!(cfg.binds.is_empty());
        assert!(cfg.protocols.tls.is_some());
        let app = to_wsgiapp(&m, "shop", "registry.example.com/shop:1");
        assert_eq!(app["spec"]["tls"]["port"], 8443);
        assert_eq!(app["spec"]["tls"]["clientVerify"], "require");
        assert_eq!(app["spec"]["tls"]["clientCaSecretName"], "shop-client-ca");
    }

    #[test]
    fn h2c_takes_the_trusted_peers_and_odd_values_are_reported() {
        let m = from_gunicorn(&config(
            json!({
                "http2_cleartext": "prior-knowledge",
                "forwarded_allow_ips": "10.0.0.0/8,127.0.0.1",
                "bind": ["fd://3", "unix:/run/app.sock", "localhost"],
                "worker_class": "gevent",
                "workers": "many",
            }),
            json!({}),
        ));
        let s = &m.settings;
        assert_eq!(s.h2c, Some(true));
        assert_eq!(s.h2c_allow_ips.len(), 2);
        assert_eq!(s.bind.len(), 2, "{:?}", s.bind);
        assert!(matches!(outcome(&m, "bind"), Outcome::NoEquivalent(t) if t.contains("fd://3")));
        assert!(matches!(
            outcome(&m, "worker_class"),
            Outcome::NoEquivalent(_)
        ));
        assert!(matches!(outcome(&m, "workers"), Outcome::NoEquivalent(_)));
    }

    #[test]
    fn an_app_factory_is_reported_and_a_bare_module_gets_application() {
        let mut g = config(json!({}), json!({}));
        g.app = Some("app:create_app()".into());
        let m = from_gunicorn(&g);
        assert_eq!(m.settings.app, None);
        assert!(matches!(
            outcome(&m, "APP_MODULE"),
            Outcome::NoEquivalent(_)
        ));
        g.app = Some("mysite.wsgi".into());
        assert_eq!(
            from_gunicorn(&g).settings.app.as_deref(),
            Some("mysite.wsgi:application")
        );
    }

    #[test]
    fn notes_render_as_comments_the_yaml_parser_skips() {
        let m = from_gunicorn(&config(json!({"workers": 3, "daemon": true}), json!({})));
        let text = format!(
            "{}{}",
            render_notes("gunicorn.conf.py", &m.notes),
            m.settings.to_yaml()
        );
        assert!(
            text.contains("#   daemon = true: wsgiscale runs in the foreground"),
            "{text}"
        );
        assert_eq!(Settings::from_yaml(&text).expect("parses"), m.settings);
    }

    #[test]
    fn a_uwsgi_ini_with_cheaper_maps_onto_workers_and_the_algorithm() {
        let ini = "[uwsgi]\nmodule = mysite.wsgi:application\nhttp = :8000\nmaster = true\nprocesses = 8\ncheaper = 2\ncheaper-initial = 4\ncheaper-algo = busyness\ncheaper_overload = 5\nharakiri = 30\nreload-on-rss = 512\nmax-requests = 5000\nlazy-apps = true\nbuffer-size = 32768\nenv = DJANGO_SETTINGS_MODULE=mysite.settings\nstatic-map = /static=/srv/static\nuid = 1000\nsome-odd-option = 1\n[other]\nprocesses = 99\n";
        let u = read_uwsgi(
            &[
                "--ini".into(),
                "app.ini".into(),
                "--threads".into(),
                "2".into(),
            ],
            |p| {
                assert_eq!(p, "app.ini");
                Ok(ini.to_string())
            },
        )
        .expect("reads");
        assert_eq!(u.files, vec!["app.ini".to_string()]);
        let m = from_uwsgi(&u);
        let s = &m.settings;
        assert_eq!(s.app.as_deref(), Some("mysite.wsgi:application"));
        assert_eq!(
            s.bind,
            vec!["0.0.0.0:8000".parse::<BindAddr>().expect("bind")]
        );
        assert_eq!(s.workers, Some(WorkerRange { min: 2, max: 8 }));
        assert_eq!(s.workers_initial, Some(4));
        assert_eq!(s.cheaper_algo, Some(crate::config::Algorithm::Busyness));
        assert_eq!(s.cheaper_overload, Some(5));
        assert_eq!(s.threads, Some(2));
        assert_eq!(s.timeout, Some(secs(30)));
        assert_eq!(s.max_rss, Some(ByteSize(512 << 20)));
        assert_eq!(s.max_requests, Some(5000));
        assert_eq!(s.preload, Some(false));
        assert_eq!(s.access_log, Some(true), "uWSGI logs requests by default");
        assert_eq!(
            m.env,
            vec![("DJANGO_SETTINGS_MODULE".into(), "mysite.settings".into())]
        );
        assert_eq!(m.user, Some(1000));
        assert!(matches!(
            outcome(&m, "buffer-size"),
            Outcome::NoEquivalent(_)
        ));
        assert!(matches!(
            outcome(&m, "some-odd-option"),
            Outcome::NoEquivalent(_)
        ));
        assert!(matches!(outcome(&m, "master"), Outcome::NotNeeded(_)));
        let yaml = s.to_yaml();
        assert_eq!(Settings::from_yaml(&yaml).expect("parses"), *s);
        crate::config::resolve(s, None).expect("the server accepts it");
    }

    #[test]
    fn uwsgi_command_lines_and_wsgi_files() {
        let args: Vec<String> = [
            "--http-socket",
            "127.0.0.1:9000",
            "-p",
            "3",
            "--wsgi-file",
            "/srv/app/wsgi.py",
            "--callable",
            "app",
            "-M",
            "--disable-logging",
            "--enable-threads",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let u = read_uwsgi(&args, |_| unreachable!("no ini")).expect("reads");
        let m = from_uwsgi(&u);
        assert_eq!(m.settings.app.as_deref(), Some("wsgi:app"));
        assert_eq!(
            m.settings.pythonpath,
            vec![std::path::PathBuf::from("/srv/app")]
        );
        assert_eq!(m.settings.workers, Some(WorkerRange { min: 3, max: 3 }));
        assert_eq!(m.settings.access_log, None);
        assert!(read_uwsgi(&["stray".into()], |_| unreachable!()).is_err());
        let err = read_uwsgi(&["--ini".into(), "missing.ini".into()], |_| {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        });
        assert!(err.expect_err("missing").contains("missing.ini"));
    }

    /// docs/migrate.md holds the generated tables; `WSGISCALE_BLESS=1 cargo test` rewrites
    /// them after a change to the lists.
    #[test]
    fn the_docs_tables_are_the_lists() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/migrate.md");
        let mut doc = std::fs::read_to_string(&path).expect("docs/migrate.md");
        let bless = std::env::var_os("WSGISCALE_BLESS").is_some();
        for (marker, table) in [
            ("gunicorn-settings", gunicorn_markdown_table()),
            ("uwsgi-options", uwsgi_markdown_table()),
        ] {
            let begin = format!("<!-- {marker}:begin -->\n");
            let end = format!("<!-- {marker}:end -->");
            let start = doc.find(&begin).expect("begin marker") + begin.len();
            let stop = doc.find(&end).expect("end marker");
            if bless {
                doc.replace_range(start..stop, &table);
            } else {
                assert_eq!(
                    doc[start..stop],
                    table,
                    "run WSGISCALE_BLESS=1 cargo test -p wsgiscale-core"
                );
            }
        }
        if bless {
            std::fs::write(&path, doc).expect("write docs/migrate.md");
        }
    }
}
