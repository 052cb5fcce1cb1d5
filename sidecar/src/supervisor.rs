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
use wsgiscale_core::pool::{Action, Ending, Gone, Pool, RetireReason, SpawnReason};
use wsgiscale_core::scaling::{drive, Cheaper, DriveInputs, MemoryBudget, Refusal};
use wsgiscale_core::shutdown::ShutdownBudget;

use crate::cgroup;
use crate::control::{self, ControlError, FromZygote, ToZygote, ZygoteInit, MAX_MESSAGE};
use crate::dispatch::WorkerId;
use crate::link::{self, LinkCmd, LinkEvent, LinkParams};
use crate::metrics::{DecisionLabel, ReasonLabel};
use crate::shm::{Bell, Region};
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
        // Until it reports ready, a fork server whose start is abandoned (the master told to
        // stop during the import, or an error below) is killed and reaped, not left importing.
        let mut starting = Starting(Some(child.id()));
        nix::fcntl::fcntl(
            &ours,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| SupervisorError::StartZygote(e.into()))?;
        control::send(ours.as_fd(), &ToZygote::Init(Box::new(init.clone())), &[])?;
        let mut z = Zygote {
            fd: crate::sys::async_fd(ours).map_err(SupervisorError::StartZygote)?,
            pid: child.id(),
            buf: vec![0u8; MAX_MESSAGE],
        };
        loop {
            match z.recv().await? {
                FromZygote::Ready { import_ms, .. } => {
                    starting.0 = None;
                    tracing::info!(
                        pid = z.pid,
                        import_ms,
                        preload = init.preload,
                        "fork server ready"
                    );
                    return Ok(z);
                }
                FromZygote::ImportFailed { message } => {
                    starting.0 = None;
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

    /// Asks for a worker serving on `link` (its descriptors, in the order the worker
    /// expects them: socket, region, master bell, read bell, write bell).
    pub fn spawn(&self, worker: WorkerId, link: &[OwnedFd]) -> Result<(), ControlError> {
        let fds: Vec<_> = link.iter().map(|fd| fd.as_raw_fd()).collect();
        control::send(self.fd.get_ref().as_fd(), &ToZygote::Spawn { worker }, &fds)
    }

    /// Tells the fork server to exit, then makes sure it does: SIGKILL if it has not after
    /// `within`, and as long again to reap it.
    pub async fn stop(self, within: Duration) {
        let _ = control::send(self.fd.get_ref().as_fd(), &ToZygote::Shutdown, &[]);
        if !reap_pid(self.pid, within).await {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            let _ = reap_pid(self.pid, within).await;
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

/// A fork server that has not reported ready yet: killed and reaped if dropped so.
struct Starting(Option<u32>);

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let pid = Pid::from_raw(pid as i32);
            let _ = kill(pid, Signal::SIGKILL);
            // SIGKILL cannot be caught: the wait is short.
            let _ = waitpid(pid, None);
        }
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

/// The supervisor's handle on one worker: how to reach its link, and its pid once known.
/// The worker's state (spawned, ready, retiring, ...) is the [`Pool`]'s.
struct Handle {
    pid: Option<u32>,
    /// A pidfd opened as soon as the pid is known (the fork server reports it right after
    /// the fork): signals go through it, so a later process given the same pid is never hit.
    pidfd: Option<Arc<crate::sys::PidFd>>,
    cmds: mpsc::UnboundedSender<LinkCmd>,
}

impl Handle {
    /// Records the worker's pid and opens its pidfd (once).
    fn learn_pid(&mut self, pid: u32) {
        self.pid = Some(pid);
        if self.pidfd.is_none() {
            match crate::sys::PidFd::open(pid) {
                Ok(fd) => self.pidfd = Some(Arc::new(fd)),
                // Before Linux 5.3, or the worker already exited: raw pids it is.
                Err(e) => tracing::debug!(pid, error = %e, "no pidfd for the worker"),
            }
        }
    }

    /// Sends `sig` to the worker: through its pidfd, or by pid when there is none.
    fn signal(&self, sig: Signal) {
        signal_worker(self.pidfd.as_deref(), self.pid, sig);
    }
}

/// Sends `sig` through `pidfd` when there is one (an exited worker is then simply gone), else
/// to `pid`.
fn signal_worker(pidfd: Option<&crate::sys::PidFd>, pid: Option<u32>, sig: Signal) {
    match (pidfd, pid) {
        (Some(fd), _) => {
            let _ = fd.signal(sig);
        }
        (None, Some(pid)) => {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
        (None, None) => {}
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
    /// How long the shutdown's worker and fork-server steps may take.
    pub shutdown: ShutdownBudget,
}

/// How often the scaling algorithm runs (uWSGI's master cycle).
const SCALE_EVERY: Duration = Duration::from_secs(1);

/// The supervisor: carries out the [`Pool`]'s actions (spawn, retire, kill, fork servers)
/// and feeds it what happened. Its own state is only handles: the fork servers, each worker's
/// link and pid, and the exit statuses waiting to be logged.
pub struct Supervisor {
    p: SupervisorParams,
    shared: Arc<Shared>,
    pool: Pool,
    /// The clock's origin: the pool gets times as durations since it.
    origin: Instant,
    zygote: Option<Zygote>,
    old_zygotes: Vec<(u64, Zygote)>,
    /// A fork server starting in the background, and whether for a reload.
    starting: Option<(
        bool,
        tokio::task::JoinHandle<Result<Zygote, SupervisorError>>,
    )>,
    handles: HashMap<WorkerId, Handle>,
    events_tx: mpsc::UnboundedSender<LinkEvent>,
    events_rx: mpsc::UnboundedReceiver<LinkEvent>,
    cmds: mpsc::UnboundedReceiver<SupervisorCmd>,
    cheaper: Cheaper,
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
        (Some(code), None) => match code {
            crate::worker::EXIT_IMPORT_FAILED => {
                format!("exit code {code} (the app failed to import)")
            }
            crate::worker::EXIT_MASTER_LOST => format!("exit code {code} (lost the master)"),
            crate::worker::EXIT_HOOK_FAILED => {
                format!("exit code {code} (a post-fork or post-worker-init hook raised)")
            }
            _ => format!("exit code {code}"),
        },
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
        let pool = Pool::new(p.live, rand::random());
        Supervisor {
            p,
            shared,
            pool,
            origin: Instant::now(),
            zygote: Some(zygote),
            old_zygotes: Vec::new(),
            starting: None,
            handles: HashMap::new(),
            events_tx,
            events_rx,
            cmds,
            cheaper,
            manual_delta: 0,
            last_scale: Instant::now(),
            exit_status: HashMap::new(),
            died: HashMap::new(),
        }
    }

    /// Now, on the pool's clock.
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Carries out the pool's actions, feeding back a spawn that could not even be asked
    /// for (no fork server, a socket error) as that worker gone.
    fn carry_out(&mut self, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Spawn {
                    id,
                    reason,
                    generation,
                } => {
                    if let Err(e) = self.spawn_worker(id, generation, reason) {
                        tracing::error!(worker = id, error = %e, "cannot spawn a worker");
                        // Gone without ever running: a young death for the backoff.
                        let (_, more) = self.pool.gone(id, self.now(), Gone::default());
                        queue.extend(more);
                    }
                }
                Action::Retire { id, reason } => self.retire(id, reason),
                Action::Kill { id } => self.kill_stuck(id),
                Action::StartForkServer { reload } => {
                    let init = ZygoteInit {
                        reload,
                        ..self.p.init.clone()
                    };
                    let start = tokio::spawn(async move { Zygote::start(&init).await });
                    self.starting = Some((reload, start));
                }
                Action::StopForkServer { generation } => {
                    let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.old_zygotes)
                        .into_iter()
                        .partition(|(g, _)| *g == generation);
                    self.old_zygotes = keep;
                    for (g, z) in done {
                        tracing::debug!(generation = g, "stopping an old fork server");
                        tokio::spawn(z.stop(ShutdownBudget::FORK_SERVER));
                    }
                }
            }
        }
    }

    fn spawn_worker(
        &mut self,
        id: WorkerId,
        generation: u64,
        reason: SpawnReason,
    ) -> Result<(), ControlError> {
        let Some(zygote) = self
            .zygote
            .as_ref()
            .filter(|_| generation == self.pool.generation())
        else {
            return Err(ControlError::Closed);
        };
        let chan = new_channel(|theirs| zygote.spawn(id, theirs))?;
        let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        self.shared
            .dispatcher
            .register(id, self.p.init.threads, inbox_tx);
        let params = LinkParams {
            id,
            threads: self.p.init.threads,
            ahead: self.shared.dispatcher.ahead(),
            max_frame: crate::proto::MAX_RESPONSE_FRAME,
            spool: self.shared.spool.clone(),
            spill_stats: self.shared.metrics.response_spill_stats(),
        };
        tokio::spawn(link::run(
            params,
            chan,
            inbox_rx,
            cmd_rx,
            self.shared.clone(),
            self.events_tx.clone(),
        ));
        self.handles.insert(
            id,
            Handle {
                pid: None,
                pidfd: None,
                cmds: cmd_tx,
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
        Ok(())
    }

    /// Takes a worker out of dispatch; it exits once its in-flight requests are done.
    fn retire(&mut self, id: WorkerId, reason: RetireReason) {
        if self.shared.dispatcher.retire(id) {
            if let Some(h) = self.handles.get(&id) {
                let _ = h.cmds.send(LinkCmd::Shutdown);
            }
        }
        if reason.is_recycle() {
            tracing::info!(worker = id, reason = reason.label(), "recycling worker");
        }
        self.shared
            .metrics
            .retirements
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    /// Runs until `shutdown` is cancelled, then stops the workers and the fork server.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), SupervisorError> {
        let start = self.pool.start(self.now());
        self.carry_out(start);
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
                started = wait_pending(&mut self.starting) => self.on_started(started),
                _ = tick.tick() => self.on_tick(),
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
            SupervisorCmd::Reload => match self.pool.reload() {
                None => tracing::warn!("reload already in progress; ignoring SIGHUP"),
                Some(actions) => {
                    tracing::info!("reloading: importing the app in a new fork server");
                    self.carry_out(actions);
                }
            },
        }
    }

    fn apply_live(&mut self, live: LiveConfig) {
        if live == *self.pool.live() {
            return;
        }
        tracing::info!(
            workers = format!("{}:{}", live.workers.min, live.workers.max),
            algorithm = live.scaling.algo.as_str(),
            "applying new live settings"
        );
        self.cheaper.reconfigure(&live.scaling, &live.workers);
        self.shared.set_live(live);
        let actions = self.pool.set_live(live, self.now());
        self.carry_out(actions);
    }

    /// A fork server started in the background is up (or failed).
    fn on_started(&mut self, (reload, started): (bool, Result<Zygote, SupervisorError>)) {
        let now = self.now();
        let actions = match (reload, started) {
            (true, Ok(z)) => {
                let old_generation = self.pool.generation();
                if let Some(old) = self.zygote.replace(z) {
                    self.old_zygotes.push((old_generation, old));
                }
                let actions = self.pool.fork_server_started(true, Ok(()), now);
                tracing::info!(
                    replacing = actions
                        .iter()
                        .filter(|a| matches!(a, Action::Spawn { .. }))
                        .count(),
                    generation = self.pool.generation(),
                    "new fork server ready; rolling the workers"
                );
                actions
            }
            (true, Err(e)) => {
                tracing::error!(error = %e, "reload failed; the current workers keep serving");
                self.pool.fork_server_started(true, Err(()), now)
            }
            (false, Ok(z)) => {
                tracing::info!(pid = z.pid(), "fork server restarted");
                self.zygote = Some(z);
                self.pool.fork_server_started(false, Ok(()), now)
            }
            (false, Err(e)) => {
                tracing::error!(error = %e, "cannot restart the fork server");
                self.pool.fork_server_started(false, Err(()), now)
            }
        };
        self.carry_out(actions);
    }

    fn fork_server_lost(&mut self) {
        self.pool.fork_server_lost();
        if let Some(z) = self.zygote.take() {
            tokio::spawn(async move {
                let _ = reap_pid(z.pid, Duration::from_secs(1)).await;
            });
        }
    }

    fn on_zygote(&mut self, msg: Result<FromZygote, ControlError>) {
        match msg {
            Ok(FromZygote::Spawned { worker, pid }) => {
                if let Some(h) = self.handles.get_mut(&worker) {
                    h.learn_pid(pid);
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
                self.pool.spawn_failed(self.now());
            }
            Ok(FromZygote::Exited { pid, code, signal }) => {
                let status = describe_exit(code, signal);
                if let Some(id) = self.died.remove(&pid) {
                    tracing::warn!(worker = id, pid, status, "worker exit status");
                } else if self.handles.values().any(|h| h.pid == Some(pid)) {
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
                self.fork_server_lost();
            }
        }
    }

    fn on_event(&mut self, ev: LinkEvent) -> Result<(), SupervisorError> {
        let now = self.now();
        match ev {
            LinkEvent::Ready { id, pid } => {
                if let Some(h) = self.handles.get_mut(&id) {
                    if h.pid != Some(pid) {
                        h.pidfd = None;
                    }
                    h.learn_pid(pid);
                }
                if let Some(m) = self.pool.member(id) {
                    let fork_to_ready_ms = now.saturating_sub(m.spawned_at).as_secs_f64() * 1000.0;
                    tracing::info!(
                        worker = id,
                        pid,
                        fork_to_ready_ms = format!("{fork_to_ready_ms:.1}"),
                        "worker ready"
                    );
                }
                let was_reloading = self.pool.reloading();
                let actions = self.pool.ready(id, now);
                self.carry_out(actions);
                if was_reloading && !self.pool.reloading() {
                    tracing::info!(generation = self.pool.generation(), "reload complete");
                }
            }
            LinkEvent::Gone {
                id,
                failed,
                fatal,
                was_ready,
                served,
            } => {
                let handle = self.handles.remove(&id);
                let pid = handle.as_ref().and_then(|h| h.pid);
                if let Some(msg) = &fatal {
                    if !self.pool.ever_ready() && !self.p.init.preload {
                        return Err(SupervisorError::Import(msg.clone()));
                    }
                    tracing::error!(worker = id, "worker cannot serve:\n{msg}");
                }
                let (ending, actions) = self.pool.gone(id, now, Gone { was_ready, served });
                match ending {
                    None => {}
                    Some(Ending::Retired(reason)) => {
                        if let Some(pid) = pid {
                            self.exit_status.remove(&pid);
                        }
                        tracing::info!(worker = id, pid, reason = reason.label(), "worker retired");
                    }
                    Some(Ending::TimedOut) => {
                        if let Some(pid) = pid {
                            self.exit_status.remove(&pid);
                        }
                        self.count_death("timeout");
                        tracing::warn!(worker = id, pid, failed, "worker killed after --timeout");
                    }
                    Some(Ending::Crashed { respawn_in }) => {
                        self.count_death("crash");
                        let status = pid.and_then(|p| self.exit_status.remove(&p));
                        if status.is_none() {
                            if let Some(pid) = pid.filter(|_| self.died.len() < 4096) {
                                self.died.insert(pid, id);
                            }
                        }
                        tracing::warn!(
                            worker = id,
                            pid,
                            failed,
                            status = status.as_deref().unwrap_or("not reaped yet"),
                            respawn_in_ms = respawn_in.as_millis() as u64,
                            "worker died"
                        );
                    }
                }
                self.carry_out(actions);
            }
            LinkEvent::TimedOut { id } => {
                let actions = self.pool.timed_out(id);
                self.carry_out(actions);
            }
        }
        Ok(())
    }

    fn count_death(&self, reason: &'static str) {
        self.shared
            .metrics
            .deaths
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Logs the stuck worker's Python stack (SIGUSR1 -> faulthandler), fails its overdue
    /// requests with 504 and kills it.
    fn kill_stuck(&mut self, id: WorkerId) {
        let Some(h) = self.handles.get(&id) else {
            return;
        };
        let Some(pid) = h.pid else { return };
        tracing::error!(
            worker = id,
            pid,
            "request exceeded --timeout; dumping its Python stack and killing the worker"
        );
        h.signal(Signal::SIGUSR1);
        let cmds = h.cmds.clone();
        let pidfd = h.pidfd.clone();
        tokio::spawn(async move {
            // Give faulthandler a moment to write the stack. The worker may exit meanwhile;
            // through its pidfd the kill cannot reach a process that took its pid.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = cmds.send(LinkCmd::TimedOut);
            signal_worker(pidfd.as_deref(), Some(pid), Signal::SIGKILL);
        });
    }

    fn on_tick(&mut self) {
        if let Some(z) = &self.zygote {
            if reap_orphans(z.pid()) {
                tracing::error!("fork server exited; restarting it");
                self.fork_server_lost();
            }
        } else {
            let _ = reap_orphans(0);
        }
        let actions = self.pool.tick(self.now());
        self.carry_out(actions);
        let now = Instant::now();
        if now.duration_since(self.last_scale) >= SCALE_EVERY {
            self.last_scale = now;
            self.scale_tick();
        }
    }

    /// Once a second: memory, recycling, the scaling algorithm and the load sample.
    fn scale_tick(&mut self) {
        for (id, h) in &self.handles {
            if let Some(pid) = h.pid {
                self.shared
                    .dispatcher
                    .set_memory(*id, crate::procmem::read(pid));
            }
        }
        let sb = self.shared.dispatcher.snapshot();
        self.shared.metrics.observe_scoreboard(&sb);
        let totals = self.shared.dispatcher.totals();
        self.shared
            .load
            .lock()
            .record(LoadSample::observe(&sb, totals));
        let usage: Vec<_> = sb
            .workers
            .iter()
            .map(|w| (w.id, w.requests, w.memory_bytes))
            .collect();
        let actions = self.pool.recycle(self.now(), &usage);
        self.carry_out(actions);
        if self.pool.reloading() {
            // A rolling reload owns the worker count until it completes.
            return;
        }
        let verdict = self.cheaper.decide_explained(&sb);
        let algorithm = verdict.algorithm.as_str();
        let mem = cgroup::read_memory();
        let inputs = DriveInputs {
            manual_delta: std::mem::take(&mut self.manual_delta),
            memory: MemoryBudget::cgroup(mem.limit, mem.usage()),
        };
        let limits = self.pool.live().workers;
        let plan = drive(verdict, &sb, &limits, &inputs);
        if inputs.manual_delta != 0 && plan.spawn == 0 && plan.retire.is_empty() {
            // SIGTTIN at MAX, SIGTTOU at MIN: say what happened to the request.
            tracing::info!(
                delta = inputs.manual_delta,
                workers = plan.before,
                min = limits.min,
                max = limits.max,
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
        let direction = if plan.spawn > 0 { "up" } else { "down" };
        self.shared
            .metrics
            .decisions
            .get_or_create(&DecisionLabel {
                algorithm,
                direction,
            })
            .inc();
        let actions = self.pool.apply(&plan, self.now());
        self.carry_out(actions);
    }

    /// Retires every worker (they finish what they run), kills what is left after the
    /// budget's `workers`, and stops every fork server at once (steps 2 and 3 of
    /// [`ShutdownBudget`]).
    async fn stop_all(&mut self) {
        let budget = self.p.shutdown;
        let actions = self.pool.stop();
        self.carry_out(actions);
        let deadline = Instant::now() + budget.workers;
        while !self.handles.is_empty() && Instant::now() < deadline {
            match tokio::time::timeout_at(deadline.into(), self.events_rx.recv()).await {
                Ok(Some(LinkEvent::Gone { id, .. })) => {
                    self.handles.remove(&id);
                    let _ = self.pool.gone(id, self.now(), Gone::default());
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        for h in self.handles.values() {
            if let Some(pid) = h.pid {
                tracing::warn!(pid, "worker did not exit in time; killing it");
                h.signal(Signal::SIGKILL);
            }
        }
        let mut stops = tokio::task::JoinSet::new();
        let zygotes = self.zygote.take().into_iter().chain(
            std::mem::take(&mut self.old_zygotes)
                .into_iter()
                .map(|(_, z)| z),
        );
        for z in zygotes {
            stops.spawn(z.stop(budget.fork_server));
        }
        if let Some((_, pending)) = self.starting.take() {
            stops.spawn(async move {
                if let Ok(Ok(z)) = pending.await {
                    z.stop(budget.fork_server).await;
                }
            });
        }
        while stops.join_next().await.is_some() {}
        let _ = reap_orphans(0);
    }
}

async fn wait_pending(
    p: &mut Option<(
        bool,
        tokio::task::JoinHandle<Result<Zygote, SupervisorError>>,
    )>,
) -> (bool, Result<Zygote, SupervisorError>) {
    let Some((reload, handle)) = p else {
        return std::future::pending().await;
    };
    let r = match handle.await {
        Ok(r) => r,
        Err(e) => Err(SupervisorError::StartZygote(std::io::Error::other(
            e.to_string(),
        ))),
    };
    let reload = *reload;
    *p = None;
    (reload, r)
}

async fn recv_zygote(z: &mut Option<Zygote>) -> Result<FromZygote, ControlError> {
    match z {
        Some(z) => z.recv().await,
        None => std::future::pending().await,
    }
}

/// Makes a worker's link (socket pair, shared region, three bells), hands the worker's
/// descriptors to `send` (the fork server) and returns the master's end.
fn new_channel(
    send: impl FnOnce(&[OwnedFd]) -> Result<(), ControlError>,
) -> Result<link::Channel, ControlError> {
    let io = |e: std::io::Error| ControlError::Io(io_errno(&e));
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(io)?;
    let (region, region_fd) = Region::create(crate::shm::DEFAULT_CAPACITY).map_err(io)?;
    let bell = Bell::new().map_err(io)?;
    let worker_read = Bell::new().map_err(io)?;
    let worker_write = Bell::new().map_err(io)?;
    let theirs: Vec<OwnedFd> = vec![
        theirs.into(),
        region_fd,
        bell.to_owned_fd().map_err(io)?,
        worker_read.to_owned_fd().map_err(io)?,
        worker_write.to_owned_fd().map_err(io)?,
    ];
    send(&theirs)?;
    drop(theirs);
    ours.set_nonblocking(true).map_err(io)?;
    let sock = tokio::net::UnixStream::from_std(ours).map_err(io)?;
    let bell = crate::sys::async_fd(bell.into()).map_err(io)?;
    Ok(link::Channel {
        region,
        sock,
        bell,
        worker_read,
        worker_write,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_as_words() {
        assert_eq!(describe_exit(None, Some(9)), "killed by signal 9 (SIGKILL)");
        assert_eq!(
            describe_exit(Some(3), None),
            "exit code 3 (the app failed to import)"
        );
        assert_eq!(describe_exit(Some(1), None), "exit code 1");
        assert_eq!(describe_exit(None, Some(99)), "killed by signal 99");
        assert_eq!(describe_exit(None, None), "exit status unknown");
    }
}
