//! The worker pool's policy: which workers to spawn, retire, recycle or kill and when, as pure
//! functions of the pool's history and the time passed in. The server's supervisor feeds it
//! what happened (a worker ready or gone, a tick, a scaling plan, a reload) and carries out
//! the [`Action`]s it returns; it keeps no worker state of its own.
//!
//! One controller sets the worker count: [`Pool::target`]. A scaling [`Plan`] sets it (to the
//! plan's `after`, within [MIN, MAX]); deaths, recycling and start-up only ever bring the count
//! back to it, through [`Pool`]'s one convergence step, which also honours the crash-loop
//! backoff and needs a running fork server. So a plan is carried out in one place, the same
//! way in the server, in [`crate::scaling::sim`] and in tests.
//!
//! Time is a `Duration` since the server started, as on the [`crate::scoreboard::Scoreboard`];
//! the pool never reads a clock. The `--max-requests-jitter` draw comes from a generator seeded
//! at construction, so a run is reproducible from its seed.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{LifecycleConfig, LiveConfig};
use crate::rng::SplitMix64;
use crate::scaling::Plan;

/// A worker's id, unique for the server's life.
pub type WorkerId = u64;

/// Why a worker is spawned (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnReason {
    /// At start-up.
    Initial,
    /// A scaling plan raised the target (its reason's label: algorithm, manual, min, max).
    Scale(&'static str),
    /// Replacing a worker that died.
    Replace,
    /// Replacing a worker being recycled.
    Recycle(RetireReason),
    /// A rolling reload.
    Reload,
}

impl SpawnReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
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
    /// A scaling plan lowered the target (its reason's label).
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
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RetireReason::Scale(r) => r,
            RetireReason::MaxRequests => "max-requests",
            RetireReason::Lifetime => "lifetime",
            RetireReason::Rss => "rss",
            RetireReason::Reload => "reload",
            RetireReason::Shutdown => "shutdown",
        }
    }

    /// Recycling (requests, lifetime, memory), which the quarter cap limits.
    pub fn is_recycle(self) -> bool {
        matches!(
            self,
            RetireReason::MaxRequests | RetireReason::Lifetime | RetireReason::Rss
        )
    }
}

/// What the supervisor is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask the fork server for worker `id` of fork-server generation `generation`.
    Spawn {
        /// The new worker.
        id: WorkerId,
        /// Why (metrics, logs).
        reason: SpawnReason,
        /// The fork server to ask.
        generation: u64,
    },
    /// Take the worker out of dispatch; it exits when its running requests are done.
    Retire {
        /// The worker.
        id: WorkerId,
        /// Why.
        reason: RetireReason,
    },
    /// `--timeout`: dump the worker's Python stack, fail its overdue requests, kill it.
    Kill {
        /// The worker.
        id: WorkerId,
    },
    /// Start a fork server in the background (the loop never waits for an import).
    StartForkServer {
        /// A SIGHUP reload (its workers replace the current ones) rather than a restart
        /// after the fork server was lost.
        reload: bool,
    },
    /// Stop the fork server of an old generation: none of its workers is left.
    StopForkServer {
        /// Its generation.
        generation: u64,
    },
}

/// One worker as the policy knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// When it was spawned.
    pub spawned_at: Duration,
    /// When it reported ready.
    pub ready_at: Option<Duration>,
    /// Why it is leaving, once retired.
    pub retiring: Option<RetireReason>,
    /// Killed after `--timeout`.
    pub killing: bool,
    /// The fork server generation it came from.
    pub generation: u64,
    /// `--max-requests` plus its jitter (0: never).
    pub request_limit: u64,
}

/// How a worker ended, as [`Pool::gone`] classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It was retired and left.
    Retired(RetireReason),
    /// It was killed after `--timeout`.
    TimedOut,
    /// It died on its own; the next spawn waits `respawn_in` (crash-loop backoff).
    Crashed {
        /// The backoff delay now in force.
        respawn_in: Duration,
    },
}

/// What is known about a worker that went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gone {
    /// It had reported ready.
    pub was_ready: bool,
    /// Requests it completed.
    pub served: u64,
}

/// The fork server, as the pool sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkServer {
    /// Running: spawns can be asked for.
    Up,
    /// Being started in the background.
    Starting,
    /// Lost, not started again yet (backoff).
    Down,
}

/// Crash-loop backoff: a worker that dies young delays the next spawn, doubling each time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    not_before: Option<Duration>,
}

impl Backoff {
    /// The second young death in a row waits this long; each further one doubles it.
    pub const BASE: Duration = Duration::from_millis(100);
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(10);
    /// A worker that lived this long after becoming ready was not a crash loop.
    pub const STABLE: Duration = Duration::from_secs(5);

    /// Records a failure (a young death, a failed fork or fork-server start) and returns how
    /// long to wait before the next spawn. A worker that was healthy (`lived_ready` at least
    /// [`Backoff::STABLE`]) resets the count; the first young death respawns at once (a single
    /// kill or OOM is not a loop), and each further one doubles the wait.
    pub fn record_exit(&mut self, now: Duration, lived_ready: Option<Duration>) -> Duration {
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

    /// Whether a spawn may happen at `now`.
    pub fn allows(&self, now: Duration) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }
}

/// The pool: every worker's record, the target count, the reload in progress, the backoff.
#[derive(Debug, Clone)]
pub struct Pool {
    live: LiveConfig,
    members: BTreeMap<WorkerId, Member>,
    target: u32,
    generation: u64,
    fork_server: ForkServer,
    reload_pending: bool,
    /// Reload: new worker -> the old worker it replaces once ready.
    replacing: BTreeMap<WorkerId, WorkerId>,
    /// Generations whose fork server still runs (the current one included).
    fork_servers: Vec<u64>,
    backoff: Backoff,
    ever_ready: bool,
    next_id: WorkerId,
    rng: SplitMix64,
}

impl Pool {
    /// A pool around a running fork server, aiming at `live.workers.initial` workers.
    /// `seed` seeds the `--max-requests-jitter` draws.
    pub fn new(live: LiveConfig, seed: u64) -> Pool {
        Pool {
            live,
            members: BTreeMap::new(),
            target: live
                .workers
                .initial
                .clamp(live.workers.min, live.workers.max),
            generation: 0,
            fork_server: ForkServer::Up,
            reload_pending: false,
            replacing: BTreeMap::new(),
            fork_servers: vec![0],
            backoff: Backoff::default(),
            ever_ready: false,
            next_id: 1,
            rng: SplitMix64(seed),
        }
    }

    /// The count the pool steers towards.
    pub fn target(&self) -> u32 {
        self.target
    }

    /// The live settings in force.
    pub fn live(&self) -> &LiveConfig {
        &self.live
    }

    /// A worker's record.
    pub fn member(&self, id: WorkerId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Every worker, by id.
    pub fn members(&self) -> impl Iterator<Item = (WorkerId, &Member)> {
        self.members.iter().map(|(id, m)| (*id, m))
    }

    /// Workers not retiring (starting, idle or busy): the count the target is about.
    pub fn active(&self) -> u32 {
        self.members
            .values()
            .filter(|m| m.retiring.is_none())
            .count() as u32
    }

    /// Whether a rolling reload owns the worker count (scaling waits for it).
    pub fn reloading(&self) -> bool {
        self.reload_pending || !self.replacing.is_empty()
    }

    /// Whether any worker has ever become ready.
    pub fn ever_ready(&self) -> bool {
        self.ever_ready
    }

    /// The current fork server generation (a reload adds one).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the crash-loop backoff holds spawns back at `now`.
    pub fn backing_off(&self, now: Duration) -> bool {
        !self.backoff.allows(now)
    }

    /// The fork server's state.
    pub fn fork_server(&self) -> ForkServer {
        self.fork_server
    }

    /// Brings the number of active workers up to the target: the one place that spawns,
    /// unless backing off or without a running fork server.
    fn converge(&mut self, now: Duration, reason: SpawnReason, out: &mut Vec<Action>) {
        while self.active() < self.target
            && self.backoff.allows(now)
            && self.fork_server == ForkServer::Up
        {
            out.push(self.spawn(now, reason).1);
        }
    }

    fn spawn(&mut self, now: Duration, reason: SpawnReason) -> (WorkerId, Action) {
        let id = self.next_id;
        self.next_id += 1;
        let lc = self.live.lifecycle;
        let request_limit = if lc.max_requests == 0 {
            0
        } else {
            lc.max_requests + self.draw(lc.max_requests_jitter)
        };
        self.members.insert(
            id,
            Member {
                spawned_at: now,
                ready_at: None,
                retiring: None,
                killing: false,
                generation: self.generation,
                request_limit,
            },
        );
        let spawn = Action::Spawn {
            id,
            reason,
            generation: self.generation,
        };
        (id, spawn)
    }

    /// A uniform draw in 0..=max.
    fn draw(&mut self, max: u64) -> u64 {
        self.rng.up_to(max)
    }

    fn retire(&mut self, id: WorkerId, reason: RetireReason, out: &mut Vec<Action>) -> bool {
        match self.members.get_mut(&id) {
            Some(m) if m.retiring.is_none() => {
                m.retiring = Some(reason);
                out.push(Action::Retire { id, reason });
                true
            }
            _ => false,
        }
    }

    /// At start: the initial workers.
    pub fn start(&mut self, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        self.converge(now, SpawnReason::Initial, &mut out);
        out
    }

    /// The fork server could not fork worker `id`, or the request could not be sent. Its
    /// record stays until its link reports it gone; the failure counts towards the backoff.
    pub fn spawn_failed(&mut self, now: Duration) {
        self.backoff.record_exit(now, None);
    }

    /// Worker `id` reported ready. In a reload, the old worker it replaces retires now.
    pub fn ready(&mut self, id: WorkerId, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(m) = self.members.get_mut(&id) {
            m.ready_at = Some(now);
            self.ever_ready = true;
        }
        if let Some(old) = self.replacing.remove(&id) {
            self.retire(old, RetireReason::Reload, &mut out);
        }
        out
    }

    /// Worker `id` went away. Returns how it ended (`None` for an unknown id) and what to
    /// do: a replacement if the count is now short, the stop of a fork server whose last
    /// worker this was.
    pub fn gone(
        &mut self,
        id: WorkerId,
        now: Duration,
        info: Gone,
    ) -> (Option<Ending>, Vec<Action>) {
        let mut out = Vec::new();
        let Some(m) = self.members.remove(&id) else {
            return (None, out);
        };
        // A reload replacement that died: its old worker stays until another replaces it.
        self.replacing.remove(&id);
        if let Some(new) = self
            .replacing
            .iter()
            .find(|(_, old)| **old == id)
            .map(|(new, _)| *new)
        {
            self.replacing.remove(&new);
        }
        let ending = if let Some(reason) = m.retiring {
            Ending::Retired(reason)
        } else if m.killing {
            Ending::TimedOut
        } else {
            // A worker that completed requests was healthy: its death is not a loop.
            let lived = if info.served > 0 {
                Some(Backoff::STABLE)
            } else {
                m.ready_at
                    .map(|r| now.saturating_sub(r))
                    .filter(|_| info.was_ready)
            };
            Ending::Crashed {
                respawn_in: self.backoff.record_exit(now, lived),
            }
        };
        self.stop_idle_fork_servers(&mut out);
        self.converge(now, self.replace_reason(), &mut out);
        (Some(ending), out)
    }

    fn replace_reason(&self) -> SpawnReason {
        if self.ever_ready {
            SpawnReason::Replace
        } else {
            SpawnReason::Initial
        }
    }

    fn stop_idle_fork_servers(&mut self, out: &mut Vec<Action>) {
        let current = self.generation;
        let members = &self.members;
        self.fork_servers.retain(|&g| {
            let keep = g == current || members.values().any(|m| m.generation == g);
            if !keep {
                out.push(Action::StopForkServer { generation: g });
            }
            keep
        });
    }

    /// A request of worker `id` passed `--timeout`: kill it, once.
    pub fn timed_out(&mut self, id: WorkerId) -> Vec<Action> {
        match self.members.get_mut(&id) {
            Some(m) if !m.killing => {
                m.killing = true;
                vec![Action::Kill { id }]
            }
            _ => Vec::new(),
        }
    }

    /// The fork server was lost: no spawns until it is back; workers keep serving.
    pub fn fork_server_lost(&mut self) {
        self.fork_server = ForkServer::Down;
        self.fork_servers.retain(|&g| g != self.generation);
    }

    /// A background start of a fork server finished. A restart brings spawning back; a
    /// reload makes it the current generation and replaces every current worker one for
    /// one (each old worker retires when its replacement is ready).
    pub fn fork_server_started(
        &mut self,
        reload: bool,
        result: Result<(), ()>,
        now: Duration,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if reload {
            self.reload_pending = false;
            if result.is_err() {
                return out; // the current workers keep serving
            }
            self.generation += 1;
            self.fork_servers.push(self.generation);
            self.fork_server = ForkServer::Up;
            let old: Vec<WorkerId> = self
                .members
                .iter()
                .filter(|(_, m)| m.retiring.is_none() && m.generation < self.generation)
                .map(|(id, _)| *id)
                .collect();
            for old_id in old {
                let (id, spawn) = self.spawn(now, SpawnReason::Reload);
                out.push(spawn);
                self.replacing.insert(id, old_id);
            }
            self.stop_idle_fork_servers(&mut out);
        } else {
            match result {
                Ok(()) => {
                    self.fork_server = ForkServer::Up;
                    if !self.fork_servers.contains(&self.generation) {
                        self.fork_servers.push(self.generation);
                    }
                }
                Err(()) => {
                    self.fork_server = ForkServer::Down;
                    self.backoff.record_exit(now, None);
                }
            }
        }
        self.converge(now, self.replace_reason(), &mut out);
        out
    }

    /// SIGHUP: start a new fork server for a reload, unless one is already under way (a
    /// reload, or the restart of a lost fork server). Returns `None` when refused.
    pub fn reload(&mut self) -> Option<Vec<Action>> {
        if self.reloading() || self.fork_server == ForkServer::Starting {
            return None;
        }
        self.reload_pending = true;
        Some(vec![Action::StartForkServer { reload: true }])
    }

    /// New live settings: the target is kept within the new [MIN, MAX].
    pub fn set_live(&mut self, live: LiveConfig, now: Duration) -> Vec<Action> {
        self.live = live;
        self.target = self.target.clamp(live.workers.min, live.workers.max);
        let mut out = Vec::new();
        self.converge(now, SpawnReason::Scale("config"), &mut out);
        out
    }

    /// The periodic step: restart a lost fork server (after the backoff) and bring the count
    /// back to the target.
    pub fn tick(&mut self, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        // A lost fork server is started again, unless a reload's is on its way (it replaces it).
        if self.fork_server == ForkServer::Down && !self.reload_pending && self.backoff.allows(now)
        {
            self.fork_server = ForkServer::Starting;
            out.push(Action::StartForkServer { reload: false });
        }
        self.converge(now, self.replace_reason(), &mut out);
        out
    }

    /// Recycles workers past max-requests, max-lifetime or max-rss: each retires (finishing
    /// its current request) and the convergence spawns its replacement. At most a quarter of
    /// the workers (at least one) recycle at a time. `workers` gives each worker's completed
    /// requests and memory (its USS, from the scoreboard; `--max-rss` compares that).
    pub fn recycle(
        &mut self,
        now: Duration,
        workers: &[(WorkerId, u64, Option<u64>)],
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let out = &mut out;
        let lc: LifecycleConfig = self.live.lifecycle;
        let in_progress = self
            .members
            .values()
            .filter(|m| m.retiring.is_some_and(RetireReason::is_recycle))
            .count() as u32;
        let mut allowed = (self.active() / 4).max(1).saturating_sub(in_progress);
        for &(id, requests, rss) in workers {
            if allowed == 0 {
                break;
            }
            let Some(m) = self.members.get(&id) else {
                continue;
            };
            if m.retiring.is_some() || m.ready_at.is_none() || m.killing {
                continue;
            }
            let reason = if m.request_limit > 0 && requests >= m.request_limit {
                Some(RetireReason::MaxRequests)
            } else if lc
                .max_lifetime
                .is_some_and(|l| now.saturating_sub(m.spawned_at) >= l)
            {
                Some(RetireReason::Lifetime)
            } else if lc.max_rss.is_some_and(|max| rss.is_some_and(|r| r > max)) {
                Some(RetireReason::Rss)
            } else {
                None
            };
            if let Some(reason) = reason {
                self.retire(id, reason, out);
                self.converge(now, SpawnReason::Recycle(reason), out);
                allowed -= 1;
            }
        }
        std::mem::take(out)
    }

    /// Carries out a scaling plan: the target becomes the plan's count (within [MIN, MAX]),
    /// its chosen workers retire, and the convergence spawns what is missing. The one place a
    /// plan is applied.
    pub fn apply(&mut self, plan: &Plan, now: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        if plan.spawn == 0 && plan.retire.is_empty() {
            return out;
        }
        let label = plan.reason.as_str();
        for &id in &plan.retire {
            self.retire(id, RetireReason::Scale(label), &mut out);
        }
        let limits = self.live.workers;
        self.target = plan.after.clamp(limits.min, limits.max.max(limits.min));
        self.converge(now, SpawnReason::Scale(label), &mut out);
        out
    }

    /// Shutting down: every worker retires.
    pub fn stop(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        let ids: Vec<WorkerId> = self.members.keys().copied().collect();
        for id in ids {
            self.retire(id, RetireReason::Shutdown, &mut out);
        }
        self.target = 0;
        out
    }
}

#[cfg(test)]
mod tests;
