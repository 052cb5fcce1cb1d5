//! The supervisor: owns the fork server and the worker processes. It spawns workers through
//! the fork server, notices their deaths through their links, replaces them (backing off when
//! they keep dying), kills workers stuck past `--timeout`, and stops everything in order.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use wsgiscale_core::config::LiveConfig;
use wsgiscale_core::loadtrack::LoadSample;
use wsgiscale_core::scaling::{drive, Cheaper, DriveInputs, MemoryBudget, Refusal};
use wsgiscale_core::scoreboard::Scoreboard;

use crate::cgroup;
use crate::control::{self, ControlError, FromZygote, ToZygote, ZygoteInit, MAX_MESSAGE};
use crate::dispatch::{Dispatcher, WorkerId};
use crate::link::{self, LinkCmd, LinkEvent, LinkParams};
use crate::metrics::{DecisionLabel, ReasonLabel};
use crate::state::Shared;

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The fork server could not be started.
    #[error("cannot start the fork server: {0}")]
    StartZygote(#[source] std::io::Error),
    /// The control channel failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The application cannot be loaded.
    #[error("the application failed to load:\n{0}")]
    Import(String),
}

/// The master's handle on the fork server.
pub struct Zygote {
    fd: AsyncFd<OwnedFd>,
    pid: u32,
    buf: Vec<u8>,
}

impl Zygote {
    /// Starts a fork server ([`crate::launch`]), sends it `init` and waits until it is ready.
    pub async fn start(init: &ZygoteInit) -> Result<Zygote, SupervisorError> {
        let (ours, theirs) = control::pair()?;
        crate::zygote::make_inheritable(&theirs)
            .map_err(|e| SupervisorError::StartZygote(e.into()))?;
        let (program, args) = crate::launch::zygote_command(
            crate::launch::get(),
            init.venv.as_deref(),
            theirs.as_raw_fd(),
        )
        .map_err(SupervisorError::StartZygote)?;
        let mut command = std::process::Command::new(&program);
        command.args(&args).stdin(std::process::Stdio::null());
        // Workers' print() reaches the log at once (set before the interpreter starts).
        if std::env::var_os("PYTHONUNBUFFERED").is_none() {
            command.env("PYTHONUNBUFFERED", "1");
        }
        let child = command.spawn().map_err(|e| {
            SupervisorError::StartZygote(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", program.display()),
            ))
        })?;
        drop(theirs);
        nix::fcntl::fcntl(
            &ours,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| SupervisorError::StartZygote(e.into()))?;
        control::send(ours.as_fd(), &ToZygote::Init(init.clone()), &[])?;
        let mut z = Zygote {
            fd: crate::sys::async_fd(ours).map_err(SupervisorError::StartZygote)?,
            pid: child.id(),
            buf: vec![0u8; MAX_MESSAGE],
        };
        loop {
            match z.recv().await? {
                FromZygote::Ready { import_ms, .. } => {
                    tracing::info!(
                        pid = z.pid,
                        import_ms,
                        preload = init.preload,
                        "fork server ready"
                    );
                    return Ok(z);
                }
                FromZygote::ImportFailed { message } => {
                    let _ = reap_pid(z.pid, Duration::from_secs(2)).await;
                    return Err(SupervisorError::Import(message));
                }
                other => {
                    tracing::warn!(message = ?other, "unexpected message from a starting fork server")
                }
            }
        }
    }

    /// The fork server's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Receives the next message.
    pub async fn recv(&mut self) -> Result<FromZygote, ControlError> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| ControlError::Io(io_errno(&e)))?;
            let buf = &mut self.buf;
            match guard.try_io(|fd| {
                control::recv::<FromZygote>(fd.get_ref().as_fd(), buf).map_err(|e| match e {
                    ControlError::Io(nix::errno::Errno::EAGAIN) => {
                        std::io::Error::from(std::io::ErrorKind::WouldBlock)
                    }
                    other => std::io::Error::other(other),
                })
            }) {
                Ok(Ok((msg, _fds))) => return Ok(msg),
                Ok(Err(e)) => {
                    return Err(match e.into_inner().map(|b| b.downcast::<ControlError>()) {
                        Some(Ok(ce)) => *ce,
                        _ => ControlError::Closed,
                    })
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Asks for a worker serving on `sock`.
    pub fn spawn(
        &self,
        worker: WorkerId,
        sock: &std::os::unix::net::UnixStream,
    ) -> Result<(), ControlError> {
        control::send(
            self.fd.get_ref().as_fd(),
            &ToZygote::Spawn { worker },
            &[sock.as_raw_fd()],
        )
    }

    /// Tells the fork server to exit, then makes sure it does.
    pub async fn stop(self) {
        let _ = control::send(self.fd.get_ref().as_fd(), &ToZygote::Shutdown, &[]);
        if !reap_pid(self.pid, Duration::from_secs(2)).await {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            let _ = reap_pid(self.pid, Duration::from_secs(2)).await;
        }
    }
}

fn io_errno(e: &std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Waits (polling) for a child of this process to exit; true when it did.
async fn reap_pid(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) | Err(_) => return true,
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reaps any exited children (orphaned workers are re-parented to the master, which is a
/// child subreaper) without blocking.
fn reap_orphans(zygote_pid: u32) -> bool {
    let mut zygote_gone = false;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return zygote_gone,
            Ok(status) => {
                if status.pid().map(|p| p.as_raw() as u32) == Some(zygote_pid) {
                    zygote_gone = true;
                }
            }
        }
    }
}

/// Why a worker is spawned (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnReason {
    /// At start-up.
    Initial,
    /// The scaling driver asked for it (algorithm, manual, min).
    Scale(&'static str),
    /// Replacing a worker that died.
    Replace,
    /// Replacing a worker being recycled.
    Recycle(RetireReason),
    /// A rolling reload.
    Reload,
}

impl SpawnReason {
    fn label(self) -> &'static str {
        match self {
            SpawnReason::Initial => "initial",
            SpawnReason::Scale(r) => r,
            SpawnReason::Replace => "replace",
            SpawnReason::Recycle(r) => r.label(),
            SpawnReason::Reload => "reload",
        }
    }
}

/// Why a worker is being retired (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireReason {
    /// The scaling driver asked for it.
    Scale(&'static str),
    /// `--max-requests` reached.
    MaxRequests,
    /// `--max-lifetime` reached.
    Lifetime,
    /// `--max-rss` exceeded.
    Rss,
    /// Replaced by a worker of a reloaded app.
    Reload,
    /// Shutting down.
    Shutdown,
}

impl RetireReason {
    fn label(self) -> &'static str {
        match self {
            RetireReason::Scale(r) => r,
            RetireReason::MaxRequests => "max-requests",
            RetireReason::Lifetime => "lifetime",
            RetireReason::Rss => "rss",
            RetireReason::Reload => "reload",
            RetireReason::Shutdown => "shutdown",
        }
    }

    fn is_recycle(self) -> bool {
        matches!(
            self,
            RetireReason::MaxRequests | RetireReason::Lifetime | RetireReason::Rss
        )
    }
}

struct WorkerInfo {
    pid: Option<u32>,
    cmds: mpsc::UnboundedSender<LinkCmd>,
    spawned_at: Instant,
    ready_at: Option<Instant>,
    retiring: Option<RetireReason>,
    killing: bool,
    generation: u64,
    /// `--max-requests` plus this worker's jitter (0: never).
    request_limit: u64,
}

/// Crash-loop backoff: a worker that dies young delays the next spawn, doubling each time.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);
    /// A worker that lived this long after becoming ready was not a crash loop.
    const STABLE: Duration = Duration::from_secs(5);

    /// Records a worker exit and returns how long to wait before the next spawn. A worker that
    /// was healthy (it served requests, or lived `STABLE` after becoming ready) resets the count;
    /// the first young death respawns at once (a single kill or OOM is not a loop), and each
    /// further one doubles the wait.
    fn record_exit(&mut self, now: Instant, lived_ready: Option<Duration>) -> Duration {
        if lived_ready.is_some_and(|d| d >= Self::STABLE) {
            self.failures = 0;
            self.not_before = None;
            return Duration::ZERO;
        }
        self.failures += 1;
        if self.failures == 1 {
            self.not_before = None;
            return Duration::ZERO;
        }
        let delay = Self::BASE
            .saturating_mul(1 << (self.failures - 2).min(16))
            .min(Self::MAX);
        self.not_before = Some(now + delay);
        delay
    }

    fn allows(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }
}

/// Requests to the supervisor from signal handlers and the config watcher.
#[derive(Debug)]
pub enum SupervisorCmd {
    /// SIGTTIN (+1) / SIGTTOU (-1).
    Manual(i32),
    /// New live settings (config file changed or SIGHUP).
    Live(LiveConfig),
    /// SIGHUP: re-import the app in a new fork server and replace every worker.
    Reload,
}

/// Supervisor settings.
pub struct SupervisorParams {
    /// What the fork server needs.
    pub init: ZygoteInit,
    /// The live settings at start.
    pub live: LiveConfig,
}

/// How often the scaling algorithm runs (uWSGI's master cycle).
const SCALE_EVERY: Duration = Duration::from_secs(1);

/// The supervisor.
pub struct Supervisor {
    p: SupervisorParams,
    shared: Arc<Shared>,
    zygote: Option<Zygote>,
    old_zygotes: Vec<(u64, Zygote)>,
    pending_zygote: Option<tokio::task::JoinHandle<Result<Zygote, SupervisorError>>>,
    generation: u64,
    workers: HashMap<WorkerId, WorkerInfo>,
    /// Reload: new worker -> the old worker it replaces once ready.
    replacing: HashMap<WorkerId, WorkerId>,
    next_id: WorkerId,
    events_tx: mpsc::UnboundedSender<LinkEvent>,
    events_rx: mpsc::UnboundedReceiver<LinkEvent>,
    cmds: mpsc::UnboundedReceiver<SupervisorCmd>,
    backoff: Backoff,
    ever_ready: bool,
    cheaper: Cheaper,
    target: u32,
    manual_delta: i32,
    last_scale: Instant,
    /// Exit statuses the fork server reaped before the worker's link reported it gone.
    exit_status: HashMap<u32, String>,
    /// Crashed workers whose exit status the fork server has not reported yet: pid -> id.
    died: HashMap<u32, WorkerId>,
}

/// A reaped worker's status, for the log: `exit code 3`, `killed by signal 9 (SIGKILL)`.
pub fn describe_exit(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (_, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {sig} ({})", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        (Some(code), None) => format!("exit code {code}"),
        (None, None) => "exit status unknown".to_string(),
    }
}

impl Supervisor {
    /// Creates a supervisor around a started fork server; `cmds` carries signals and config.
    pub fn new(
        p: SupervisorParams,
        shared: Arc<Shared>,
        zygote: Zygote,
        cmds: mpsc::UnboundedReceiver<SupervisorCmd>,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let cheaper = Cheaper::new(&p.live.scaling, &p.live.workers);
        let target = p.live.workers.initial;
        Supervisor {
            p,
            shared,
            zygote: Some(zygote),
            old_zygotes: Vec::new(),
            pending_zygote: None,
            generation: 0,
            workers: HashMap::new(),
            replacing: HashMap::new(),
            next_id: 1,
            events_tx,
            events_rx,
            cmds,
            backoff: Backoff::default(),
            ever_ready: false,
            cheaper,
            target,
            manual_delta: 0,
            last_scale: Instant::now(),
            exit_status: HashMap::new(),
            died: HashMap::new(),
        }
    }

    fn dispatcher(&self) -> &Dispatcher {
        &self.shared.dispatcher
    }

    fn active(&self) -> u32 {
        self.workers
            .values()
            .filter(|w| w.retiring.is_none())
            .count() as u32
    }

    fn spawn_worker(&mut self, reason: SpawnReason) -> Result<WorkerId, ControlError> {
        let Some(zygote) = &self.zygote else {
            return Err(ControlError::Closed);
        };
        let id = self.next_id;
        self.next_id += 1;
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| ControlError::Io(io_errno(&e)))?;
        zygote.spawn(id, &theirs)?;
        drop(theirs);
        ours.set_nonblocking(true)
            .map_err(|e| ControlError::Io(io_errno(&e)))?;
        let sock =
            tokio::net::UnixStream::from_std(ours).map_err(|e| ControlError::Io(io_errno(&e)))?;
        let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        self.dispatcher()
            .register(id, self.p.init.threads, inbox_tx);
        let params = LinkParams {
            id,
            threads: self.p.init.threads,
            max_frame: crate::proto::MAX_RESPONSE_FRAME,
        };
        tokio::spawn(link::run(
            params,
            sock,
            inbox_rx,
            cmd_rx,
            self.shared.clone(),
            self.events_tx.clone(),
        ));
        let lifecycle = self.p.live.lifecycle;
        let request_limit = if lifecycle.max_requests == 0 {
            0
        } else {
            lifecycle.max_requests + rand::random_range(0..=lifecycle.max_requests_jitter)
        };
        self.workers.insert(
            id,
            WorkerInfo {
                pid: None,
                cmds: cmd_tx,
                spawned_at: Instant::now(),
                ready_at: None,
                retiring: None,
                killing: false,
                generation: self.generation,
                request_limit,
            },
        );
        self.shared
            .metrics
            .spawns
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
        tracing::debug!(worker = id, reason = reason.label(), "spawn requested");
        Ok(id)
    }

    /// Takes a worker out of dispatch; it exits once its in-flight requests are done.
    fn retire(&mut self, id: WorkerId, reason: RetireReason) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.retiring.is_some() {
            return;
        }
        w.retiring = Some(reason);
        if self.shared.dispatcher.retire(id) {
            let _ = w.cmds.send(LinkCmd::Shutdown);
        }
        self.shared
            .metrics
            .retirements
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// Spawns until the target count is running, unless backing off.
    fn top_up(&mut self) {
        let now = Instant::now();
        while self.active() < self.target && self.backoff.allows(now) && self.zygote.is_some() {
            let reason = if self.ever_ready {
                SpawnReason::Replace
            } else {
                SpawnReason::Initial
            };
            if let Err(e) = self.spawn_worker(reason) {
                tracing::error!(error = %e, "cannot spawn a worker");
                self.backoff.record_exit(now, None);
                break;
            }
        }
    }

    /// Runs until `shutdown` is cancelled, then stops the workers and the fork server.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), SupervisorError> {
        self.top_up();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                msg = recv_zygote(&mut self.zygote) => self.on_zygote(msg),
                Some(ev) = self.events_rx.recv() => {
                    if let Err(e) = self.on_event(ev) {
                        break Err(e);
                    }
                }
                Some(cmd) = self.cmds.recv() => self.on_cmd(cmd),
                started = wait_pending(&mut self.pending_zygote) => self.on_new_zygote(started),
                _ = tick.tick() => self.on_tick().await,
            }
        };
        self.stop_all().await;
        result
    }

    fn on_cmd(&mut self, cmd: SupervisorCmd) {
        match cmd {
            SupervisorCmd::Manual(delta) => {
                self.manual_delta += delta;
                tracing::info!(delta, "manual worker adjustment");
            }
            SupervisorCmd::Live(live) => self.apply_live(live),
            SupervisorCmd::Reload => {
                if self.pending_zygote.is_some() || !self.replacing.is_empty() {
                    tracing::warn!("reload already in progress; ignoring SIGHUP");
                    return;
                }
                tracing::info!("reloading: importing the app in a new fork server");
                let init = self.p.init.clone();
                self.pending_zygote = Some(tokio::spawn(async move { Zygote::start(&init).await }));
            }
        }
    }

    fn apply_live(&mut self, live: LiveConfig) {
        if live == self.p.live {
            return;
        }
        tracing::info!(
            workers = format!("{}:{}", live.workers.min, live.workers.max),
            algorithm = live.scaling.algo.as_str(),
            "applying new live settings"
        );
        self.cheaper.reconfigure(&live.scaling, &live.workers);
        self.target = self.target.clamp(live.workers.min, live.workers.max);
        self.p.live = live;
        self.shared.set_live(live);
    }

    fn on_new_zygote(&mut self, started: Result<Zygote, SupervisorError>) {
        let z = match started {
            Ok(z) => z,
            Err(e) => {
                tracing::error!(error = %e, "reload failed; the current workers keep serving");
                return;
            }
        };
        if let Some(old) = self.zygote.replace(z) {
            self.old_zygotes.push((self.generation, old));
        }
        self.generation += 1;
        let old: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.retiring.is_none() && w.generation < self.generation)
            .map(|(id, _)| *id)
            .collect();
        tracing::info!(
            replacing = old.len(),
            generation = self.generation,
            "new fork server ready; rolling the workers"
        );
        for old_id in old {
            match self.spawn_worker(SpawnReason::Reload) {
                Ok(new_id) => {
                    self.replacing.insert(new_id, old_id);
                }
                Err(e) => tracing::error!(error = %e, "cannot spawn a reloaded worker"),
            }
        }
    }

    fn on_zygote(&mut self, msg: Result<FromZygote, ControlError>) {
        match msg {
            Ok(FromZygote::Spawned { worker, pid }) => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.pid = Some(pid);
                    tracing::debug!(worker, pid, "worker forked");
                } else {
                    tracing::warn!(
                        worker,
                        pid,
                        "fork server spawned an unknown worker; killing it"
                    );
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
            Ok(FromZygote::SpawnFailed { worker, error }) => {
                tracing::error!(worker, error, "fork failed");
                self.backoff.record_exit(Instant::now(), None);
            }
            Ok(FromZygote::Exited { pid, code, signal }) => {
                let status = describe_exit(code, signal);
                if let Some(id) = self.died.remove(&pid) {
                    tracing::warn!(worker = id, pid, status, "worker exit status");
                } else if self.workers.values().any(|w| w.pid == Some(pid)) {
                    // Reaped before its link noticed: the "worker died" line will say it.
                    if self.exit_status.len() < 4096 {
                        self.exit_status.insert(pid, status);
                    }
                } else {
                    tracing::debug!(pid, status, "worker process reaped");
                }
            }
            Ok(other) => {
                tracing::warn!(message = ?other, "unexpected message from the fork server")
            }
            Err(e) => {
                tracing::error!(error = %e, "fork server lost; workers keep serving, restarting it");
                if let Some(z) = self.zygote.take() {
                    tokio::spawn(async move {
                        let _ = reap_pid(z.pid, Duration::from_secs(1)).await;
                    });
                }
            }
        }
    }

    fn on_event(&mut self, ev: LinkEvent) -> Result<(), SupervisorError> {
        match ev {
            LinkEvent::Ready { id, pid } => {
                if let Some(w) = self.workers.get_mut(&id) {
                    let now = Instant::now();
                    w.ready_at = Some(now);
                    w.pid = Some(pid);
                    let fork_to_ready_ms = now.duration_since(w.spawned_at).as_secs_f64() * 1000.0;
                    tracing::info!(
                        worker = id,
                        pid,
                        fork_to_ready_ms = format!("{fork_to_ready_ms:.1}"),
                        "worker ready"
                    );
                    self.ever_ready = true;
                }
                if let Some(old) = self.replacing.remove(&id) {
                    self.retire(old, RetireReason::Reload);
                    if self.replacing.is_empty() {
                        tracing::info!(generation = self.generation, "reload complete");
                    }
                }
            }
            LinkEvent::Gone {
                id,
                failed,
                fatal,
                was_ready,
                served,
            } => {
                let Some(w) = self.workers.remove(&id) else {
                    return Ok(());
                };
                self.replacing.remove(&id);
                if w.retiring.is_some() || w.killing {
                    if let Some(pid) = w.pid {
                        self.exit_status.remove(&pid);
                    }
                }
                let now = Instant::now();
                if let Some(msg) = &fatal {
                    if !self.ever_ready && !self.p.init.preload {
                        return Err(SupervisorError::Import(msg.clone()));
                    }
                    tracing::error!(worker = id, "worker cannot serve:\n{msg}");
                }
                if let Some(reason) = w.retiring {
                    tracing::info!(
                        worker = id,
                        pid = w.pid,
                        reason = reason.label(),
                        "worker retired"
                    );
                } else {
                    // A worker that completed requests was healthy: its death is not a loop.
                    let lived = if served > 0 {
                        Some(Backoff::STABLE)
                    } else {
                        w.ready_at
                            .map(|r| now.duration_since(r))
                            .filter(|_| was_ready)
                    };
                    let delay = self.backoff.record_exit(now, lived);
                    let reason = if w.killing { "timeout" } else { "crash" };
                    self.shared
                        .metrics
                        .deaths
                        .get_or_create(&ReasonLabel { reason })
                        .inc();
                    if w.killing {
                        tracing::warn!(
                            worker = id,
                            pid = w.pid,
                            failed,
                            "worker killed after --timeout"
                        );
                    } else {
                        let status = w.pid.and_then(|p| self.exit_status.remove(&p));
                        if status.is_none() {
                            if let Some(pid) = w.pid.filter(|_| self.died.len() < 4096) {
                                self.died.insert(pid, id);
                            }
                        }
                        tracing::warn!(
                            worker = id,
                            pid = w.pid,
                            failed,
                            status = status.as_deref().unwrap_or("not reaped yet"),
                            respawn_in_ms = delay.as_millis() as u64,
                            "worker died"
                        );
                    }
                }
                self.stop_idle_zygotes();
                self.top_up();
            }
            LinkEvent::TimedOut { id } => self.kill_stuck(id),
        }
        Ok(())
    }

    /// Stops fork servers of past generations once none of their workers is left.
    fn stop_idle_zygotes(&mut self) {
        let live_gens: std::collections::HashSet<u64> =
            self.workers.values().map(|w| w.generation).collect();
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.old_zygotes)
            .into_iter()
            .partition(|(g, _)| !live_gens.contains(g));
        self.old_zygotes = keep;
        for (g, z) in done {
            tracing::debug!(generation = g, "stopping an old fork server");
            tokio::spawn(z.stop());
        }
    }

    /// Logs the stuck worker's Python stack (SIGUSR1 -> faulthandler), fails its overdue
    /// requests with 504 and kills it.
    fn kill_stuck(&mut self, id: WorkerId) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.killing {
            return;
        }
        w.killing = true;
        let Some(pid) = w.pid else { return };
        tracing::error!(
            worker = id,
            pid,
            "request exceeded --timeout; dumping its Python stack and killing the worker"
        );
        let pid = Pid::from_raw(pid as i32);
        let _ = kill(pid, Signal::SIGUSR1);
        let cmds = w.cmds.clone();
        tokio::spawn(async move {
            // Give faulthandler a moment to write the stack.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = cmds.send(LinkCmd::TimedOut);
            let _ = kill(pid, Signal::SIGKILL);
        });
    }

    async fn on_tick(&mut self) {
        if let Some(z) = &self.zygote {
            if reap_orphans(z.pid()) {
                tracing::error!("fork server exited; restarting it");
                self.zygote = None;
            }
        } else {
            let _ = reap_orphans(0);
            if self.backoff.allows(Instant::now()) {
                match Zygote::start(&self.p.init).await {
                    Ok(z) => self.zygote = Some(z),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot restart the fork server");
                        self.backoff.record_exit(Instant::now(), None);
                    }
                }
            }
        }
        self.top_up();
        let now = Instant::now();
        if now.duration_since(self.last_scale) >= SCALE_EVERY {
            self.last_scale = now;
            self.scale_tick();
        }
    }

    /// Once a second: memory, recycling, the scaling algorithm and the load sample.
    fn scale_tick(&mut self) {
        for (id, w) in &self.workers {
            if let Some(pid) = w.pid {
                self.shared.dispatcher.set_rss(*id, read_rss(pid));
            }
        }
        let sb = self.shared.dispatcher.snapshot();
        self.shared.metrics.observe_scoreboard(&sb);
        let (completed, busy) = self.shared.dispatcher.totals();
        self.shared
            .load
            .lock()
            .record(LoadSample::observe(&sb, completed, busy));
        self.recycle(&sb);
        if !self.replacing.is_empty() {
            // A rolling reload owns the worker count until it completes.
            return;
        }
        let verdict = self.cheaper.decide_explained(&sb);
        let algorithm = verdict.algorithm.as_str();
        let mem = cgroup::read_memory();
        let inputs = DriveInputs {
            manual_delta: std::mem::take(&mut self.manual_delta),
            memory: MemoryBudget::cgroup(mem.limit, mem.current),
        };
        let plan = drive(verdict, &sb, &self.p.live.workers, &inputs);
        if inputs.manual_delta != 0 && plan.spawn == 0 && plan.retire.is_empty() {
            // SIGTTIN at MAX, SIGTTOU at MIN: say what happened to the request.
            tracing::info!(
                delta = inputs.manual_delta,
                workers = plan.before,
                min = self.p.live.workers.min,
                max = self.p.live.workers.max,
                refused = %plan
                    .refused
                    .as_ref()
                    .map_or_else(|| "nothing to do".to_string(), |r| r.to_string()),
                "manual worker adjustment not applied"
            );
        }
        if let Some(refusal) = &plan.refused {
            self.shared
                .metrics
                .refusals
                .get_or_create(&ReasonLabel {
                    reason: refusal.as_str(),
                })
                .inc();
            if matches!(refusal, Refusal::Memory { .. }) {
                tracing::warn!(plan = %plan, "spawn refused: the container is near its memory limit");
            }
        }
        if plan.spawn == 0 && plan.retire.is_empty() {
            return;
        }
        tracing::info!(
            algorithm,
            before = plan.before,
            after = plan.after,
            reason = plan.reason.as_str(),
            "scaling: {plan}"
        );
        let label = plan.reason.as_str();
        let direction = if plan.spawn > 0 { "up" } else { "down" };
        self.shared
            .metrics
            .decisions
            .get_or_create(&DecisionLabel {
                algorithm,
                direction,
            })
            .inc();
        for _ in 0..plan.spawn {
            match self.spawn_worker(SpawnReason::Scale(label)) {
                Ok(_) => self.target += 1,
                Err(e) => {
                    tracing::error!(error = %e, "cannot spawn a worker");
                    break;
                }
            }
        }
        for id in plan.retire {
            if self.workers.get(&id).is_some_and(|w| w.retiring.is_none()) {
                self.retire(id, RetireReason::Scale(label));
                self.target = self.target.saturating_sub(1);
            }
        }
        self.target = self
            .target
            .clamp(self.p.live.workers.min, self.p.live.workers.max);
    }

    /// Recycles workers past max-requests, max-lifetime or max-rss: the replacement is spawned
    /// at once and the old worker finishes its current request. At most a quarter of the
    /// workers (at least one) recycle at a time.
    fn recycle(&mut self, sb: &Scoreboard) {
        let lc = self.p.live.lifecycle;
        let now = Instant::now();
        let in_progress = self
            .workers
            .values()
            .filter(|w| w.retiring.is_some_and(RetireReason::is_recycle))
            .count() as u32;
        let allowed = (self.active() / 4).max(1).saturating_sub(in_progress);
        let mut due = Vec::new();
        for slot in &sb.workers {
            let Some(w) = self.workers.get(&slot.id) else {
                continue;
            };
            if w.retiring.is_some() || w.ready_at.is_none() {
                continue;
            }
            let reason = if w.request_limit > 0 && slot.requests >= w.request_limit {
                Some(RetireReason::MaxRequests)
            } else if lc
                .max_lifetime
                .is_some_and(|l| now.duration_since(w.spawned_at) >= l)
            {
                Some(RetireReason::Lifetime)
            } else if lc
                .max_rss
                .is_some_and(|m| slot.rss_bytes.is_some_and(|r| r > m))
            {
                Some(RetireReason::Rss)
            } else {
                None
            };
            if let Some(r) = reason {
                due.push((slot.id, r, slot.requests, slot.rss_bytes));
            }
        }
        for (id, reason, requests, rss) in due.into_iter().take(allowed as usize) {
            tracing::info!(
                worker = id,
                reason = reason.label(),
                requests,
                rss_bytes = rss,
                "recycling worker"
            );
            self.retire(id, reason);
            if let Err(e) = self.spawn_worker(SpawnReason::Recycle(reason)) {
                tracing::error!(error = %e, "cannot spawn a replacement worker");
            }
        }
    }

    /// Retires every worker (they finish what they run), kills what is left after a grace
    /// period, and stops the fork servers.
    async fn stop_all(&mut self) {
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            self.retire(id, RetireReason::Shutdown);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.workers.is_empty() && Instant::now() < deadline {
            match tokio::time::timeout_at(deadline.into(), self.events_rx.recv()).await {
                Ok(Some(LinkEvent::Gone { id, .. })) => {
                    self.workers.remove(&id);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        for w in self.workers.values() {
            if let Some(pid) = w.pid {
                tracing::warn!(pid, "worker did not exit in time; killing it");
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        if let Some(z) = self.zygote.take() {
            z.stop().await;
        }
        for (_, z) in std::mem::take(&mut self.old_zygotes) {
            z.stop().await;
        }
        if let Some(pending) = self.pending_zygote.take() {
            if let Ok(Ok(z)) = pending.await {
                z.stop().await;
            }
        }
        let _ = reap_orphans(0);
    }
}

async fn wait_pending(
    p: &mut Option<tokio::task::JoinHandle<Result<Zygote, SupervisorError>>>,
) -> Result<Zygote, SupervisorError> {
    let Some(handle) = p else {
        return std::future::pending().await;
    };
    let r = match handle.await {
        Ok(r) => r,
        Err(e) => Err(SupervisorError::StartZygote(std::io::Error::other(
            e.to_string(),
        ))),
    };
    *p = None;
    r
}

async fn recv_zygote(z: &mut Option<Zygote>) -> Result<FromZygote, ControlError> {
    match z {
        Some(z) => z.recv().await,
        None => std::future::pending().await,
    }
}

/// Resident set size of a process from /proc/PID/statm.
pub fn read_rss(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    Some(pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_as_words() {
        assert_eq!(describe_exit(None, Some(9)), "killed by signal 9 (SIGKILL)");
        assert_eq!(describe_exit(Some(3), None), "exit code 3");
        assert_eq!(describe_exit(None, Some(99)), "killed by signal 99");
        assert_eq!(describe_exit(None, None), "exit status unknown");
    }

    #[test]
    fn backoff_doubles_and_resets_after_a_stable_worker() {
        let mut b = Backoff::default();
        let t = Instant::now();
        assert!(b.allows(t));
        assert_eq!(
            b.record_exit(t, None),
            Duration::ZERO,
            "one death is not a loop"
        );
        assert!(b.allows(t));
        assert_eq!(b.record_exit(t, None), Duration::from_millis(100));
        assert_eq!(
            b.record_exit(t, Some(Duration::from_secs(1))),
            Duration::from_millis(200)
        );
        assert_eq!(b.record_exit(t, None), Duration::from_millis(400));
        assert!(!b.allows(t));
        assert!(b.allows(t + Duration::from_millis(400)));
        for _ in 0..20 {
            b.record_exit(t, None);
        }
        assert_eq!(b.record_exit(t, None), Backoff::MAX);
        assert_eq!(
            b.record_exit(t, Some(Duration::from_secs(60))),
            Duration::ZERO
        );
        assert!(b.allows(t));
        assert_eq!(
            b.record_exit(t, None),
            Duration::ZERO,
            "the count was reset"
        );
    }
}
