//! Worker-count scaling: uWSGI's "cheaper" algorithms as plain state machines over
//! [`Scoreboard`] snapshots, and the pure driver that turns their decisions into a [`Plan`].
//!
//! Nothing here does I/O, reads a clock or touches a global: time is `Scoreboard::now`, and a
//! "check" is one call of [`Cheaper::decide`] (the master makes one a second). Each tick the
//! master:
//!
//! 1. builds a [`Scoreboard`] from its own dispatch state,
//! 2. asks the algorithm: `let verdict = cheaper.decide_explained(&sb);`
//! 3. lets the driver apply the limits: `let plan = drive(verdict, &sb, &limits, &inputs);`
//!    where `inputs` carries the SIGTTIN/SIGTTOU delta taken since the last tick and the memory
//!    budget (cgroup `memory.max`/`memory.current`),
//! 4. carries the plan out: spawns `plan.spawn` workers, stops dispatching to every id in
//!    `plan.retire` (before anything else, so that no request reaches a leaving worker) and
//!    signals them, and logs `plan` (its `Display`) with `plan.reason.as_str()` as the metric
//!    label.
//!
//! On a live config reload it calls [`Cheaper::reconfigure`]. The algorithms are described,
//! with what was fixed relative to uWSGI, in `docs/scaling.md`.

mod backlog;
mod busyness;
mod driver;
pub mod sim;
mod spare;
mod spare2;

use std::fmt;

pub use backlog::Backlog;
pub use busyness::Busyness;
pub use driver::{
    drive, is_retirable, median_worker_memory, DriveInputs, MemoryBudget, MemoryRoom, Plan, Reason,
    Refusal,
};
pub use spare::Spare;
pub use spare2::Spare2;

use crate::config::{Algorithm, ScalingConfig, WorkerLimits};
use crate::scoreboard::{Scoreboard, SlotState};

/// What an algorithm wants done this check, before limits and memory are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Change nothing.
    Hold,
    /// Start this many workers (always at least 1).
    Spawn(u32),
    /// Retire this many idle workers (always at least 1).
    Retire(u32),
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Hold => f.write_str("hold"),
            Decision::Spawn(n) => write!(f, "spawn {n}"),
            Decision::Retire(n) => write!(f, "retire {n}"),
        }
    }
}

/// A [`Decision`] with the algorithm that made it and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The algorithm that decided.
    pub algorithm: Algorithm,
    /// What it wants.
    pub decision: Decision,
    /// Why, for humans: e.g. `spare: 3 checks all busy`.
    pub why: String,
}

impl Verdict {
    /// A verdict from its parts.
    pub fn new(algorithm: Algorithm, decision: Decision, why: impl Into<String>) -> Self {
        Verdict {
            algorithm,
            decision,
            why: why.into(),
        }
    }
}

/// The configured algorithm with its counters. Build it once from the live config, call
/// [`Cheaper::decide`] (or [`Cheaper::decide_explained`]) once per check, and
/// [`Cheaper::reconfigure`] when the live config changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Cheaper {
    /// See [`Spare`].
    Spare(Spare),
    /// See [`Spare2`].
    Spare2(Spare2),
    /// See [`Backlog`].
    Backlog(Backlog),
    /// See [`Busyness`].
    Busyness(Busyness),
    /// Never changes the count by itself: only SIGTTIN/SIGTTOU (the driver's manual delta), a
    /// new config, and the driver's MIN top-up do.
    Manual,
}

impl Cheaper {
    /// The algorithm named by `cfg.algo`, with fresh counters.
    pub fn new(cfg: &ScalingConfig, limits: &WorkerLimits) -> Self {
        match cfg.algo {
            Algorithm::Spare => Cheaper::Spare(Spare::new(cfg, limits)),
            Algorithm::Spare2 => Cheaper::Spare2(Spare2::new(cfg, limits)),
            Algorithm::Backlog => Cheaper::Backlog(Backlog::new(cfg, limits)),
            Algorithm::Busyness => Cheaper::Busyness(Busyness::new(cfg, limits)),
            Algorithm::Manual => Cheaper::Manual,
        }
    }

    /// Which algorithm this is.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Cheaper::Spare(_) => Algorithm::Spare,
            Cheaper::Spare2(_) => Algorithm::Spare2,
            Cheaper::Backlog(_) => Algorithm::Backlog,
            Cheaper::Busyness(_) => Algorithm::Busyness,
            Cheaper::Manual => Algorithm::Manual,
        }
    }

    /// One check: what the algorithm wants given the snapshot `sb`. Call exactly once per
    /// check; the counters advance on every call.
    pub fn decide(&mut self, sb: &Scoreboard) -> Decision {
        self.decide_explained(sb).decision
    }

    /// Like [`Cheaper::decide`], with the reason for the log; pass the result to [`drive`].
    pub fn decide_explained(&mut self, sb: &Scoreboard) -> Verdict {
        match self {
            Cheaper::Spare(a) => a.decide(sb),
            Cheaper::Spare2(a) => a.decide(sb),
            Cheaper::Backlog(a) => a.decide(sb),
            Cheaper::Busyness(a) => a.decide(sb),
            Cheaper::Manual => Verdict::new(
                Algorithm::Manual,
                Decision::Hold,
                "manual: changed only by SIGTTIN/SIGTTOU",
            ),
        }
    }

    /// Applies a reloaded live config. The same algorithm keeps its counters and takes the new
    /// knobs and limits; a different one starts fresh.
    pub fn reconfigure(&mut self, cfg: &ScalingConfig, limits: &WorkerLimits) {
        match (self, cfg.algo) {
            (Cheaper::Spare(a), Algorithm::Spare) => a.reconfigure(cfg, limits),
            (Cheaper::Spare2(a), Algorithm::Spare2) => a.reconfigure(cfg, limits),
            (Cheaper::Backlog(a), Algorithm::Backlog) => a.reconfigure(cfg, limits),
            (Cheaper::Busyness(a), Algorithm::Busyness) => a.reconfigure(cfg, limits),
            (Cheaper::Manual, Algorithm::Manual) => {}
            (this, _) => *this = Cheaper::new(cfg, limits),
        }
    }
}

/// The worker counts every algorithm looks at, from one pass over the scoreboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Census {
    /// Workers forked but not ready yet.
    pub starting: u32,
    /// Ready workers with at least one free thread.
    pub idle: u32,
    /// Ready workers with every thread busy.
    pub busy: u32,
    /// Idle workers with no busy thread at all: the only retirement candidates.
    pub free: u32,
    /// Non-retiring workers (starting + idle + busy): the count the algorithms steer.
    pub active: u32,
    /// Threads of the starting workers: requests they will absorb once ready.
    pub starting_threads: u32,
}

impl Census {
    pub(crate) fn of(sb: &Scoreboard) -> Self {
        let mut c = Census::default();
        for w in &sb.workers {
            match w.state {
                SlotState::Starting => {
                    c.starting += 1;
                    c.starting_threads = c.starting_threads.saturating_add(w.threads.max(1));
                }
                SlotState::Idle => {
                    c.idle += 1;
                    if w.busy_threads == 0 {
                        c.free += 1;
                    }
                }
                SlotState::Busy => c.busy += 1,
                SlotState::Retiring => continue,
            }
            c.active += 1;
        }
        c
    }

    /// Queued requests the starting workers will not absorb once they are ready. Counting
    /// them as already served stops the queue-driven rules from spawning again every check
    /// while a slow application imports.
    pub(crate) fn unabsorbed_queue(&self, sb: &Scoreboard) -> u32 {
        sb.queue_depth.saturating_sub(self.starting_threads)
    }
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Fixture builders shared by the algorithm and driver tests.

    use std::time::Duration;

    use crate::config::{Algorithm, ScalingConfig, WorkerLimits};
    use crate::scoreboard::{Scoreboard, SlotState, WorkerSlot};

    /// The defaults `resolve` applies, with `algo`.
    pub fn cfg(algo: Algorithm) -> ScalingConfig {
        ScalingConfig {
            algo,
            ..ScalingConfig::default()
        }
    }

    pub fn limits(min: u32, max: u32) -> WorkerLimits {
        WorkerLimits {
            min,
            max,
            initial: min,
        }
    }

    /// A single-threaded worker in `state`, spawned at `id` seconds.
    pub fn slot(id: u64, state: SlotState) -> WorkerSlot {
        WorkerSlot {
            id,
            state,
            busy_threads: u32::from(state == SlotState::Busy),
            threads: 1,
            busy_time: Duration::ZERO,
            spawned_at: Duration::from_secs(id),
            requests: 0,
            memory_bytes: None,
        }
    }

    /// A scoreboard at `now` seconds with workers in the given states (ids 1, 2, ...).
    pub fn board(now: u64, queue: u32, states: &[SlotState]) -> Scoreboard {
        Scoreboard {
            now: Duration::from_secs(now),
            queue_depth: queue,
            oldest_wait: Duration::ZERO,
            workers: states
                .iter()
                .enumerate()
                .map(|(i, s)| slot(i as u64 + 1, *s))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use SlotState::*;

    #[test]
    fn census_counts_states_and_free_workers() {
        let mut sb = board(0, 5, &[Starting, Idle, Idle, Busy, Retiring]);
        sb.workers[2].threads = 4;
        sb.workers[2].busy_threads = 2;
        sb.workers[0].threads = 2;
        let c = Census::of(&sb);
        assert_eq!(
            c,
            Census {
                starting: 1,
                idle: 2,
                busy: 1,
                free: 1,
                active: 4,
                starting_threads: 2
            }
        );
        assert_eq!(c.unabsorbed_queue(&sb), 3);
    }

    #[test]
    fn new_builds_the_configured_algorithm() {
        for algo in [
            Algorithm::Spare,
            Algorithm::Spare2,
            Algorithm::Backlog,
            Algorithm::Busyness,
            Algorithm::Manual,
        ] {
            assert_eq!(Cheaper::new(&cfg(algo), &limits(1, 4)).algorithm(), algo);
        }
    }

    #[test]
    fn manual_always_holds() {
        let mut c = Cheaper::new(&cfg(Algorithm::Manual), &limits(1, 4));
        for sb in [
            board(1, 50, &[Busy]),
            board(2, 0, &[Idle, Idle, Idle, Idle]),
            board(3, 0, &[]),
        ] {
            assert_eq!(c.decide(&sb), Decision::Hold);
        }
    }

    #[test]
    fn reconfigure_keeps_counters_for_the_same_algorithm_and_resets_otherwise() {
        let l = limits(1, 4);
        let busy = board(1, 1, &[Busy]);
        let mut c = Cheaper::new(&cfg(Algorithm::Spare), &l);
        assert_eq!(c.decide(&busy), Decision::Hold);
        assert_eq!(c.decide(&busy), Decision::Hold);
        // Same algorithm, new step: the two overloaded checks are kept.
        c.reconfigure(
            &ScalingConfig {
                step: 2,
                ..cfg(Algorithm::Spare)
            },
            &l,
        );
        assert_eq!(c.decide(&busy), Decision::Spawn(2));

        assert_eq!(c.decide(&busy), Decision::Hold);
        assert_eq!(c.decide(&busy), Decision::Hold);
        // Switching away and back starts from zero again.
        c.reconfigure(&cfg(Algorithm::Manual), &l);
        assert_eq!(c.algorithm(), Algorithm::Manual);
        c.reconfigure(&cfg(Algorithm::Spare), &l);
        assert_eq!(c.decide(&busy), Decision::Hold);
        assert_eq!(c.decide(&busy), Decision::Hold);
        assert_eq!(c.decide(&busy), Decision::Spawn(1));
    }
}
