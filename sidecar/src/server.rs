//! Wires the master together: listeners, the fork server, the supervisor, the front and the
//! admin server, and the shutdown order on SIGTERM/SIGINT.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use wsgiscale_core::config::{FileConfig, ServerConfig};

use crate::control::ZygoteInit;
use crate::dispatch::Dispatcher;
use crate::front::{self, FrontCtx};
use crate::supervisor::{Supervisor, SupervisorError, SupervisorParams, Zygote};
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
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Reads and parses a config file.
pub fn load_config_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    FileConfig::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What the fork server and the workers are told. Relative paths are made absolute against
/// the directory the server was started in (the fork server changes into `--chdir` first).
pub fn zygote_init(cfg: &ServerConfig) -> ZygoteInit {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    ZygoteInit {
        module: cfg.python.app.module.clone(),
        callable: cfg.python.app.callable.clone(),
        chdir: cfg.python.chdir.as_deref().map(abs),
        pythonpath: cfg.python.pythonpath.iter().map(|p| abs(p)).collect(),
        venv: cfg.python.venv.as_deref().map(abs),
        preload: cfg.python.preload,
        threads: cfg.python.threads,
        max_frame: usize::try_from(cfg.http.max_body)
            .unwrap_or(usize::MAX)
            .saturating_add(proto::HEADER_LEN + 1024 * 1024),
        log_format: cfg.log.format,
        log_level: cfg.log.level.clone(),
    }
}

/// Runs the server until SIGTERM/SIGINT (exit status 0) or a fatal error.
pub async fn run(cfg: ServerConfig) -> Result<(), ServerError> {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper");
    }
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServerError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServerError::Signals)?;

    let mut listeners = Vec::new();
    for addr in &cfg.binds {
        let l = front::bind(addr).map_err(|source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        listeners.push(l);
    }
    let admin_listener = front::bind(&cfg.admin_bind).map_err(|source| ServerError::Bind {
        addr: cfg.admin_bind.to_string(),
        source,
    })?;

    let init = zygote_init(&cfg);
    let zygote = Zygote::start(&init).await?;
    let dispatcher = Arc::new(Dispatcher::new(cfg.http.max_queue));
    let ctx = Arc::new(FrontCtx {
        dispatcher: dispatcher.clone(),
        http: cfg.http.clone(),
        draining: AtomicBool::new(false),
    });

    let supervisor = Supervisor::new(
        SupervisorParams {
            init,
            workers: cfg.live.workers.initial,
            timeout: cfg.live.lifecycle.timeout,
        },
        dispatcher.clone(),
        zygote,
    );
    let stop_workers = CancellationToken::new();
    let mut supervisor_task = tokio::spawn(supervisor.run(stop_workers.clone()));

    let stop_accepting = CancellationToken::new();
    let mut fronts = Vec::new();
    for l in listeners {
        tracing::info!(addr = %l.describe(), app = %cfg.python.app, "listening");
        fronts.push(tokio::spawn(front::accept_loop(
            l,
            ctx.clone(),
            stop_accepting.clone(),
        )));
    }
    tracing::info!(addr = %admin_listener.describe(), "admin listening");
    let stop_admin = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        ctx.clone(),
        stop_admin.clone(),
    ));

    let early = tokio::select! {
        _ = sigterm.recv() => { tracing::info!(signal = "SIGTERM", "shutting down"); None }
        _ = sigint.recv() => { tracing::info!(signal = "SIGINT", "shutting down"); None }
        r = &mut supervisor_task => Some(r),
    };
    ctx.draining.store(true, Ordering::Relaxed);
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
    match result {
        Ok(r) => r.map_err(ServerError::from),
        Err(join) => {
            tracing::error!(error = %join, "supervisor task failed");
            Ok(())
        }
    }
}
