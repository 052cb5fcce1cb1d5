//! Wires the master together: listeners, the fork server, the supervisor, the front and the
//! admin server, and the shutdown order on SIGTERM/SIGINT.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wsgiscale_core::config::{resolve, ServerConfig, Settings};
use wsgiscale_core::shutdown::ShutdownBudget;

use crate::access::AccessLog;
use crate::control::ZygoteInit;
use crate::dispatch::Dispatcher;
use crate::front;
use crate::metrics::ReasonLabel;
use crate::state::Shared;
use crate::static_files::StaticMounts;
use crate::supervisor::{Supervisor, SupervisorCmd, SupervisorError, SupervisorParams, Zygote};
use crate::{admin, proto};

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The supervisor failed (the app cannot be loaded, the fork server cannot start).
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// A static mount's directory cannot be served.
    #[error(transparent)]
    Static(#[from] crate::static_files::StaticError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The supervisor's task panicked: the workers' state is unknown, so the server stops.
    #[error("the supervisor failed: {0}")]
    SupervisorFailed(String),
    /// The TLS certificate, key or client CA cannot be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// No temporary file can be made in `--temp-dir`.
    #[error("--temp-dir {dir}: cannot make a temporary file there: {source}")]
    TempDir {
        /// The directory.
        dir: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Reads and parses a config file.
pub fn load_config_file(path: &Path) -> Result<Settings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    Settings::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What the fork server and the workers are told. Relative paths are made absolute against
/// the directory the server was started in (the fork server changes into `--chdir` first).
pub fn zygote_init(cfg: &ServerConfig) -> ZygoteInit {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let spool = crate::spool::SpoolConfig::from_settings(&cfg.http.buffers);
    ZygoteInit {
        module: cfg.python.app.module.clone(),
        callable: cfg.python.app.callable.clone(),
        chdir: cfg.python.chdir.as_deref().map(abs),
        pythonpath: cfg.python.pythonpath.iter().map(|p| abs(p)).collect(),
        venv: cfg.python.venv.as_deref().map(abs),
        preload: cfg.python.preload,
        threads: cfg.python.threads,
        // Larger bodies reach the worker as files, not in frames.
        max_frame: usize::try_from(cfg.http.max_body.min(cfg.http.buffers.body_buffer))
            .unwrap_or(usize::MAX)
            .saturating_add(proto::HEADER_LEN + 1024 * 1024),
        response_window: spool.window(),
        response_piece: spool.piece(),
        log_format: cfg.log.format,
        log_level: cfg.log.level.clone(),
        hooks: cfg.python.hooks.with_paths(abs),
        reload: false,
    }
}

/// Re-reads the config file and resolves it with the original flags.
fn reread(args: &Settings, path: &Path) -> Result<(Settings, ServerConfig), String> {
    let file = load_config_file(path)?;
    let cfg =
        resolve(&args.over(&file), crate::launch::virtual_env()).map_err(|e| e.to_string())?;
    Ok((file, cfg))
}

/// Names the settings of `new` that differ from `old` but only apply on restart.
fn restart_only_changes(old: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.binds != new.binds {
        v.push("bind");
    }
    if old.admin_bind != new.admin_bind {
        v.push("admin-bind");
    }
    if old.python != new.python {
        v.push("app/python settings");
    }
    if old.http != new.http {
        v.push("http limits");
    }
    if old.front_threads != new.front_threads {
        v.push("front-threads");
    }
    if old.protocols != new.protocols {
        v.push("tls/http2 settings");
    }
    if old.log != new.log {
        v.push("logging");
    }
    v
}

/// Applies a re-read config: live settings go to the supervisor, the rest is reported.
fn apply_reread(
    args: &Settings,
    path: &Path,
    base: &ServerConfig,
    shared: &Shared,
    cmds: &mpsc::UnboundedSender<SupervisorCmd>,
) {
    match reread(args, path) {
        Ok((file, new)) => {
            let pinned = file.overridden_by(args);
            if !pinned.is_empty() {
                tracing::warn!(settings = ?pinned, "config file settings overridden by the command line or environment (WSGISCALE_*): their file values do not apply");
            }
            let later = restart_only_changes(base, &new);
            if !later.is_empty() {
                tracing::warn!(settings = ?later, "config changes that need a restart were not applied");
            }
            shared
                .metrics
                .config_reloads
                .get_or_create(&ReasonLabel { reason: "applied" })
                .inc();
            tracing::info!(file = %path.display(), "config file re-read");
            let _ = cmds.send(SupervisorCmd::Live(new.live));
        }
        Err(e) => {
            shared
                .metrics
                .config_reloads
                .get_or_create(&ReasonLabel { reason: "rejected" })
                .inc();
            tracing::error!(error = %e, "new config rejected; the current settings stay");
        }
    }
}

/// Polls the config file (it may be a ConfigMap volume, updated by a symlink swap that
/// file-change notifications miss) and applies it when its content changes.
async fn watch_config(
    args: Settings,
    path: std::path::PathBuf,
    base: ServerConfig,
    shared: Arc<Shared>,
    cmds: mpsc::UnboundedSender<SupervisorCmd>,
    every: Duration,
) {
    let mut last = std::fs::read(&path).ok();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = std::fs::read(&path).ok();
        if now.is_some() && now != last {
            last = now;
            apply_reread(&args, &path, &base, &shared, &cmds);
        }
    }
}

/// How often the config file is checked for changes.
pub const CONFIG_POLL: Duration = Duration::from_secs(2);

/// Runs the server until SIGTERM/SIGINT (exit status 0) or a fatal error. `args` are the
/// original flags, used again when the config file is re-read.
pub async fn run(args: Settings, cfg: ServerConfig) -> Result<(), ServerError> {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper");
    }
    let sig = |k| signal(k).map_err(ServerError::Signals);
    let mut sigterm = sig(SignalKind::terminate())?;
    let mut sigint = sig(SignalKind::interrupt())?;
    let mut sighup = sig(SignalKind::hangup())?;
    let mut sigttin = sig(SignalKind::from_raw(libc::SIGTTIN))?;
    let mut sigttou = sig(SignalKind::from_raw(libc::SIGTTOU))?;

    // Large bodies and slow clients' responses go there: find out now, not at the first one.
    let temp_dir = cfg.http.buffers.temp_dir();
    if let Err(source) = tempfile::tempfile_in(&temp_dir) {
        return Err(ServerError::TempDir {
            dir: temp_dir.display().to_string(),
            source,
        });
    }

    let mut listeners = Vec::new();
    for addr in &cfg.binds {
        let l = front::bind(addr).map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        listeners.push(l);
    }
    let certs = match &cfg.protocols.tls {
        Some(t) => Some(crate::tls::Certs::load(t, cfg.protocols.alpn())?),
        None => None,
    };
    let mut tls_listeners = Vec::new();
    for addr in cfg.protocols.tls.iter().flat_map(|t| &t.binds) {
        let l = front::bind(addr).map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        tls_listeners.push(l);
    }
    let admin_listener = front::bind(&cfg.admin_bind).map_err(|source| ServerError::Bind {
        addr: cfg.admin_bind.to_string(),
        source,
    })?;

    let statics = StaticMounts::open(&cfg.http.static_files)?;
    let access = cfg.http.access_log.enabled.then(|| AccessLog {
        config: cfg.http.access_log.clone(),
        format: cfg.log.format,
    });

    let dispatcher = Arc::new(Dispatcher::new(cfg.http.max_queue, crate::dispatch::AHEAD));
    let shared = Arc::new(Shared::new(
        dispatcher,
        cfg.http.clone(),
        cfg.python.threads,
        cfg.live,
        access,
        statics,
    ));
    // The admin port answers from now on: /healthz while the app imports (the master runs),
    // /readyz with why it cannot serve yet. A slow import is not a dead server.
    tracing::info!(addr = %admin_listener.describe(), "admin listening");
    let stop_admin = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        shared.clone(),
        stop_admin.clone(),
    ));

    let init = zygote_init(&cfg);
    // A stop asked for during the import ends it (the fork server is killed): the kubelet
    // must not wait out its grace period for an import nobody will use.
    let started = tokio::select! {
        z = Zygote::start(&init) => Some(z),
        _ = sigterm.recv() => { tracing::info!(signal = "SIGTERM", "stopping during the import"); None }
        _ = sigint.recv() => { tracing::info!(signal = "SIGINT", "stopping during the import"); None }
    };
    let zygote = match started {
        Some(Ok(z)) => z,
        other => {
            shared.draining.store(true, Ordering::Relaxed);
            stop_admin.cancel();
            let _ = admin_task.await;
            return match other {
                Some(Err(e)) => Err(e.into()),
                _ => Ok(()),
            };
        }
    };
    shared.importing.store(false, Ordering::Relaxed);

    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let supervisor = Supervisor::new(
        SupervisorParams {
            init,
            live: cfg.live,
            shutdown: ShutdownBudget::new(cfg.http.graceful_timeout),
        },
        shared.clone(),
        zygote,
        cmd_rx,
    );
    let stop_workers = CancellationToken::new();
    let mut supervisor_task = tokio::spawn(supervisor.run(stop_workers.clone()));

    let stop_accepting = CancellationToken::new();
    let mut fronts = Vec::new();
    for l in listeners {
        tracing::info!(addr = %l.describe(), app = %cfg.python.app, h2c = cfg.protocols.h2c, "listening");
        fronts.push(tokio::spawn(front::accept_loop(
            l,
            shared.clone(),
            None,
            cfg.protocols.clone(),
            stop_accepting.clone(),
        )));
    }
    for l in tls_listeners {
        tracing::info!(addr = %l.describe(), app = %cfg.python.app, tls = true, http2 = cfg.protocols.http2, "listening");
        fronts.push(tokio::spawn(front::accept_loop(
            l,
            shared.clone(),
            certs.clone(),
            cfg.protocols.clone(),
            stop_accepting.clone(),
        )));
    }
    if let Some(certs) = &certs {
        tokio::spawn(crate::tls::watch(
            certs.clone(),
            shared.clone(),
            crate::tls::TLS_POLL,
            stop_accepting.clone(),
        ));
    }
    let watcher = cfg.config_file.clone().map(|path| {
        tokio::spawn(watch_config(
            args.clone(),
            path,
            cfg.clone(),
            shared.clone(),
            cmd_tx.clone(),
            CONFIG_POLL,
        ))
    });

    let early = loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!(signal = "SIGTERM", "shutting down"); break None }
            _ = sigint.recv() => { tracing::info!(signal = "SIGINT", "shutting down"); break None }
            _ = sighup.recv() => {
                tracing::info!(signal = "SIGHUP", "reloading");
                if let Some(path) = &cfg.config_file {
                    apply_reread(&args, path, &cfg, &shared, &cmd_tx);
                }
                let _ = cmd_tx.send(SupervisorCmd::Reload);
            }
            _ = sigttin.recv() => { let _ = cmd_tx.send(SupervisorCmd::Manual(1)); }
            _ = sigttou.recv() => { let _ = cmd_tx.send(SupervisorCmd::Manual(-1)); }
            r = &mut supervisor_task => break Some(r),
        }
    };
    if let Some(w) = watcher {
        w.abort();
    }
    shared.draining.store(true, Ordering::Relaxed);
    stop_accepting.cancel();
    for f in fronts {
        let _ = f.await;
    }
    stop_workers.cancel();
    let result = match early {
        Some(r) => r,
        None => supervisor_task.await,
    };
    stop_admin.cancel();
    let _ = admin_task.await;
    supervisor_outcome(result)
}

/// How the supervisor's task ended -> how the server ends: a panic (or a cancelled task) is
/// a failure, never a clean exit (which a process manager would not restart).
fn supervisor_outcome(
    ended: Result<Result<(), SupervisorError>, tokio::task::JoinError>,
) -> Result<(), ServerError> {
    match ended {
        Ok(r) => r.map_err(ServerError::from),
        Err(join) => Err(ServerError::SupervisorFailed(join.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_supervisor_is_a_failure_not_a_clean_exit() {
        let panicked = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("supervisor bug");
            }
            Ok::<(), SupervisorError>(())
        })
        .await;
        let e = supervisor_outcome(panicked).expect_err("a failure");
        assert!(e.to_string().contains("supervisor"), "{e}");
        assert!(supervisor_outcome(Ok(Ok(()))).is_ok());
    }
}
