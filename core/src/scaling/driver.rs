//! The driver: applies memory, the manual delta, the algorithm's verdict and the [MIN, MAX]
//! limits to the scoreboard, and names the workers to retire.

use std::fmt;

use super::{Decision, Verdict};
use crate::config::{Algorithm, WorkerLimits};
use crate::scoreboard::{Scoreboard, SlotState, WorkerSlot};

/// What the master passes to [`drive`] each tick besides the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DriveInputs {
    /// SIGTTIN (+1 each) and SIGTTOU (-1 each) received since the last tick. When not zero it
    /// replaces the algorithm's verdict for this tick.
    pub manual_delta: i32,
    /// What the pod's memory allows.
    pub memory: MemoryBudget,
}

/// The memory the workers may use, from the cgroup. Spawns that would likely push the
/// cgroup's usage (less its inactive file cache) plus one worker's footprint above
/// `memory.max` minus the margin are refused. With the limit or the usage unknown, nothing is
/// refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryBudget {
    /// cgroup `memory.max`, bytes; `None` when unlimited (`max`) or unknown.
    pub limit_bytes: Option<u64>,
    /// The cgroup's usage less its inactive file cache (page cache the kernel reclaims before
    /// it OOM-kills), bytes; `None` when unknown.
    pub current_bytes: Option<u64>,
    /// Expected footprint of one more worker, bytes. `None`: the median memory (USS) of the
    /// ready and retiring workers that report one.
    pub per_worker_bytes: Option<u64>,
    /// Bytes kept free below the limit.
    pub margin_bytes: u64,
}

/// How many more workers fit in memory, and the numbers behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRoom {
    /// More workers that fit ([`u32::MAX`] when the per-worker footprint is unknown and some
    /// memory is free).
    pub fits: u32,
    /// The footprint assumed per worker, bytes (0 when unknown).
    pub per_worker_bytes: u64,
    /// Bytes below the limit minus the margin, after the current usage and what the starting
    /// workers are still expected to grow by.
    pub available_bytes: u64,
}

impl MemoryBudget {
    /// A budget from the cgroup files, keeping 5% of the limit free.
    pub fn cgroup(limit_bytes: Option<u64>, current_bytes: Option<u64>) -> Self {
        MemoryBudget {
            limit_bytes,
            current_bytes,
            per_worker_bytes: None,
            margin_bytes: limit_bytes.map_or(0, |l| l / 20),
        }
    }

    /// How many more workers fit; `None` when the budget is unknown (no refusal).
    pub fn room(&self, sb: &Scoreboard) -> Option<MemoryRoom> {
        let (limit, current) = (self.limit_bytes?, self.current_bytes?);
        let per_worker = self
            .per_worker_bytes
            .or_else(|| median_worker_memory(sb))
            .unwrap_or(0);
        // A starting worker has not grown to its full size yet: reserve the rest.
        let pending: u64 = sb
            .workers
            .iter()
            .filter(|w| w.state == SlotState::Starting)
            .map(|w| per_worker.saturating_sub(w.memory_bytes.unwrap_or(0)))
            .fold(0, u64::saturating_add);
        let available = limit
            .saturating_sub(self.margin_bytes)
            .saturating_sub(current)
            .saturating_sub(pending);
        let fits = match (per_worker, available) {
            (_, 0) => 0,
            (0, _) => u32::MAX,
            (p, a) => u32::try_from(a / p).unwrap_or(u32::MAX),
        };
        Some(MemoryRoom {
            fits,
            per_worker_bytes: per_worker,
            available_bytes: available,
        })
    }
}

/// The median memory (USS) of the workers past their start that report one (the upper
/// median for an even count: the estimate errs on the large side).
pub fn median_worker_memory(sb: &Scoreboard) -> Option<u64> {
    let mut rss: Vec<u64> = sb
        .workers
        .iter()
        .filter(|w| w.state != SlotState::Starting)
        .filter_map(|w| w.memory_bytes)
        .collect();
    rss.sort_unstable();
    rss.get(rss.len() / 2).copied()
}

/// Why the driver did less than was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Spawning more would exceed MAX.
    AtMax {
        /// The configured MAX.
        max: u32,
    },
    /// Retiring more would go below MIN.
    AtMin {
        /// The configured MIN.
        min: u32,
    },
    /// More workers would likely not fit in the memory limit.
    Memory {
        /// Estimated bytes for the spawns asked for.
        needed: u64,
        /// Bytes available for them (limit minus margin minus usage and reservations).
        available: u64,
    },
    /// Not enough workers with no busy thread to retire; busy and starting workers are never
    /// retired.
    NoIdleWorker,
}

impl Refusal {
    /// A fixed label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::AtMax { .. } => "at_max",
            Refusal::AtMin { .. } => "at_min",
            Refusal::Memory { .. } => "memory",
            Refusal::NoIdleWorker => "no_idle_worker",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::AtMax { max } => write!(f, "at MAX {max}"),
            Refusal::AtMin { min } => write!(f, "at MIN {min}"),
            Refusal::Memory { needed, available } => write!(
                f,
                "memory: {} MiB needed, {} MiB available",
                needed >> 20,
                available >> 20
            ),
            Refusal::NoIdleWorker => f.write_str("no idle worker to retire"),
        }
    }
}

/// What drove a plan; bounded, for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The algorithm's verdict (also when it held).
    Algorithm(Algorithm),
    /// SIGTTIN/SIGTTOU.
    Manual,
    /// Fewer than MIN workers were active (crashes, a raised MIN): topped up.
    Min,
    /// More than MAX workers were active (a lowered MAX): idle ones shed.
    Max,
}

impl Reason {
    /// A fixed label for metrics: the algorithm's name, `manual`, `min` or `max`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Algorithm(a) => a.as_str(),
            Reason::Manual => "manual",
            Reason::Min => "min",
            Reason::Max => "max",
        }
    }
}

/// What the master does this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Workers to start.
    pub spawn: u32,
    /// Ids of the workers to retire, oldest first. Each was idle with no busy thread in the
    /// scoreboard the plan was made from. The master takes each out of dispatch in the same
    /// step as it checks it is still idle, then signals it; one that took a request since
    /// the snapshot finishes it before exiting (never a 502: uWSGI's open bug).
    pub retire: Vec<u64>,
    /// Why less was done than asked, if so.
    pub refused: Option<Refusal>,
    /// What drove the plan.
    pub reason: Reason,
    /// Why, for humans: e.g. `spare: 3 checks all busy`.
    pub why: String,
    /// Active (non-retiring) workers before the plan.
    pub before: u32,
    /// Active workers once the plan is carried out.
    pub after: u32,
}

impl Plan {
    /// True when the plan changes nothing.
    pub fn is_noop(&self) -> bool {
        self.spawn == 0 && self.retire.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.why)?;
        match (self.spawn, self.retire.len()) {
            (0, 0) => write!(f, ": hold ({})", self.before)?,
            (0, r) => write!(f, ": retire {r} ({} -> {})", self.before, self.after)?,
            (s, _) => write!(f, ": spawn {s} ({} -> {})", self.before, self.after)?,
        }
        if let Some(r) = &self.refused {
            write!(f, "; refused: {r}")?;
        }
        Ok(())
    }
}

/// Turns the algorithm's verdict into what the master does this tick.
///
/// In order: above MAX (a lowered MAX), idle workers are shed and nothing else happens. Then,
/// as in uWSGI, memory limits the spawns, a manual delta (when not zero) replaces the verdict,
/// and otherwise the verdict stands. Spawns stop at MAX and at what fits in memory; below MIN
/// the count is always topped up to MIN, memory or not (the floor is the user's promise; a pod
/// that cannot hold MIN workers is misconfigured and the OOM killer says so). Retirements stop
/// at MIN. The algorithms' retirements take the oldest idle workers (smallest `spawned_at`)
/// with no busy thread: never a busy, partly busy, starting or already retiring one. Explicit
/// commands (SIGTTOU, a lowered MAX) must take effect under full load too, so when no worker
/// is idle they drain the least busy ready worker: it receives nothing new and exits after its
/// in-flight requests, so no request fails either way.
pub fn drive(
    verdict: Verdict,
    sb: &Scoreboard,
    limits: &WorkerLimits,
    inputs: &DriveInputs,
) -> Plan {
    let before = sb.active();
    let min = limits.min;
    let max = limits.max.max(min);
    let mut plan = Plan {
        spawn: 0,
        retire: Vec::new(),
        refused: None,
        reason: Reason::Algorithm(verdict.algorithm),
        why: verdict.why,
        before,
        after: before,
    };

    if before > max {
        let excess = before - max;
        plan.retire = pick_drain_victims(sb, excess);
        plan.reason = Reason::Max;
        plan.why = format!("max: {before} active > {max}");
        if (plan.retire.len() as u32) < excess {
            plan.refused = Some(Refusal::NoIdleWorker);
        }
        return finish(plan);
    }

    let room = inputs.memory.room(sb);
    let wanted = match inputs.manual_delta {
        0 => verdict.decision,
        d => {
            plan.reason = Reason::Manual;
            plan.why = format!("manual: {d:+} (SIGTTIN/SIGTTOU)");
            if d > 0 {
                Decision::Spawn(d.unsigned_abs())
            } else {
                Decision::Retire(d.unsigned_abs())
            }
        }
    };
    let floor = min.saturating_sub(before);
    let top_up = |plan: &mut Plan| {
        plan.reason = Reason::Min;
        plan.why = format!("min: {before} active < {min}");
        plan.spawn = floor;
    };

    match wanted {
        Decision::Spawn(n) => {
            let headroom = max - before;
            let by_memory = room.map_or(u32::MAX, |r| r.fits).max(floor);
            let granted = n.min(headroom).min(by_memory).max(floor);
            if granted < n {
                plan.refused = Some(match room {
                    Some(r) if by_memory < headroom => Refusal::Memory {
                        needed: r.per_worker_bytes.saturating_mul(u64::from(n)),
                        available: r.available_bytes,
                    },
                    _ => Refusal::AtMax { max },
                });
            }
            if floor > 0 && granted == floor {
                top_up(&mut plan);
            } else {
                plan.spawn = granted;
            }
        }
        Decision::Retire(_) if floor > 0 => {
            top_up(&mut plan);
            plan.refused = Some(Refusal::AtMin { min });
        }
        Decision::Retire(n) => {
            let allowed = n.min(before - min);
            plan.retire = if plan.reason == Reason::Manual {
                pick_drain_victims(sb, allowed)
            } else {
                pick_victims(sb, allowed)
            };
            if (plan.retire.len() as u32) < allowed {
                plan.refused = Some(Refusal::NoIdleWorker);
            } else if allowed < n {
                plan.refused = Some(Refusal::AtMin { min });
            }
        }
        Decision::Hold if floor > 0 => top_up(&mut plan),
        Decision::Hold => {}
    }
    finish(plan)
}

fn finish(mut plan: Plan) -> Plan {
    plan.after = (plan.before + plan.spawn).saturating_sub(plan.retire.len() as u32);
    plan
}

/// Whether the driver may retire `w`: ready, with no request running.
pub fn is_retirable(w: &WorkerSlot) -> bool {
    w.state == SlotState::Idle && w.busy_threads == 0
}

/// Up to `n` retirement victims: the oldest (smallest `spawned_at`, then id) workers that
/// [`is_retirable`] allows.
fn pick_victims(sb: &Scoreboard, n: u32) -> Vec<u64> {
    let mut idle: Vec<&WorkerSlot> = sb.workers.iter().filter(|w| is_retirable(w)).collect();
    idle.sort_by_key(|w| (w.spawned_at, w.id));
    idle.iter().take(n as usize).map(|w| w.id).collect()
}

/// Up to `n` workers to drain for an explicit command: idle ones first (oldest first), then
/// ready workers with the fewest busy threads (oldest first). Never a starting or retiring one.
fn pick_drain_victims(sb: &Scoreboard, n: u32) -> Vec<u64> {
    let mut ready: Vec<&WorkerSlot> = sb
        .workers
        .iter()
        .filter(|w| matches!(w.state, SlotState::Idle | SlotState::Busy))
        .collect();
    ready.sort_by_key(|w| (w.busy_threads, w.spawned_at, w.id));
    ready.iter().take(n as usize).map(|w| w.id).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::super::testkit::*;
    use super::*;
    use crate::scoreboard::SlotState::*;

    const MI: u64 = 1 << 20;

    fn v(d: Decision) -> Verdict {
        Verdict::new(Algorithm::Spare, d, "test")
    }

    fn plan(d: Decision, sb: &Scoreboard, min: u32, max: u32) -> Plan {
        drive(v(d), sb, &limits(min, max), &DriveInputs::default())
    }

    #[test]
    fn victims_are_the_oldest_fully_idle_workers() {
        let mut sb = board(10, 0, &[Idle, Busy, Idle, Idle, Starting, Retiring, Idle]);
        // Spawn times (by index): 7, 1, 5, 3, 0, 0, 5.
        for (w, at) in sb.workers.iter_mut().zip([7, 1, 5, 3, 0, 0, 5]) {
            w.spawned_at = Duration::from_secs(at);
        }
        // Worker 4 (index 3) is idle but runs a request on one of its threads.
        sb.workers[3].threads = 2;
        sb.workers[3].busy_threads = 1;
        let p = plan(Decision::Retire(2), &sb, 1, 10);
        // Ids 3 and 7 were both spawned at 5: the smaller id first.
        assert_eq!(p.retire, vec![3, 7]);
        assert_eq!(p.refused, None);
        let p = plan(Decision::Retire(5), &sb, 1, 10);
        assert_eq!(p.retire, vec![3, 7, 1]);
        assert_eq!(p.refused, Some(Refusal::NoIdleWorker));
        assert_eq!((p.before, p.after), (6, 3));
    }

    #[test]
    fn retirement_stops_at_min() {
        let sb = board(1, 0, &[Idle, Idle, Idle, Idle]);
        let p = plan(Decision::Retire(3), &sb, 2, 8);
        assert_eq!(p.retire, vec![1, 2]);
        assert_eq!(p.refused, Some(Refusal::AtMin { min: 2 }));
        assert_eq!(p.to_string(), "test: retire 2 (4 -> 2); refused: at MIN 2");
    }

    #[test]
    fn spawns_stop_at_max() {
        let sb = board(1, 3, &[Busy, Busy, Busy]);
        let p = plan(Decision::Spawn(4), &sb, 1, 5);
        assert_eq!((p.spawn, p.refused), (2, Some(Refusal::AtMax { max: 5 })));
        let p = plan(Decision::Spawn(1), &sb, 1, 3);
        assert_eq!((p.spawn, p.refused), (0, Some(Refusal::AtMax { max: 3 })));
        assert!(p.is_noop());
        assert_eq!(p.reason.as_str(), "spare");
    }

    #[test]
    fn below_min_is_topped_up_whatever_the_verdict() {
        // Two of four workers crashed.
        let sb = board(1, 0, &[Idle, Busy]);
        for d in [Decision::Hold, Decision::Retire(1), Decision::Spawn(1)] {
            let p = plan(d, &sb, 4, 8);
            assert_eq!(p.spawn, 2, "{d}");
            assert_eq!(p.reason, Reason::Min, "{d}");
            assert_eq!(p.to_string().split(':').next(), Some("min"));
        }
        // A verdict asking for more than the shortfall is the reason.
        let p = plan(Decision::Spawn(3), &sb, 4, 8);
        assert_eq!(
            (p.spawn, p.reason),
            (3, Reason::Algorithm(Algorithm::Spare))
        );
        // Nothing at all running.
        let p = plan(Decision::Hold, &board(1, 9, &[]), 2, 8);
        assert_eq!((p.spawn, p.after), (2, 2));
    }

    #[test]
    fn above_max_drains_idle_then_least_busy_ready_workers() {
        // MAX lowered from 5 to 2 by a reload: idle workers first, then the oldest busy one;
        // never the starting one.
        let sb = board(1, 0, &[Busy, Idle, Busy, Idle, Starting]);
        let p = plan(Decision::Spawn(1), &sb, 1, 2);
        assert_eq!(p.retire, vec![2, 4, 1]);
        assert_eq!(p.spawn, 0);
        assert_eq!(p.reason, Reason::Max);
        assert_eq!(p.refused, None);
        assert_eq!(p.after, 2);
        // Only starting workers left over MAX: nothing to drain yet.
        let sb = board(1, 0, &[Starting, Starting, Starting]);
        let p = plan(Decision::Hold, &sb, 1, 2);
        assert_eq!(
            (p.retire.len(), p.refused),
            (0, Some(Refusal::NoIdleWorker))
        );
    }

    #[test]
    fn manual_retire_drains_a_busy_worker_when_none_is_idle() {
        let sb = board(1, 4, &[Busy, Busy, Busy]);
        let inputs = DriveInputs {
            manual_delta: -1,
            ..DriveInputs::default()
        };
        let p = drive(v(Decision::Hold), &sb, &limits(1, 4), &inputs);
        assert_eq!((p.retire, p.reason), (vec![1], Reason::Manual));
        // The algorithms never do.
        let p = plan(Decision::Retire(1), &sb, 1, 4);
        assert!(p.retire.is_empty());
    }

    #[test]
    fn manual_delta_replaces_the_verdict_within_bounds() {
        let sb = board(1, 0, &[Idle, Idle, Busy]);
        let l = limits(2, 5);
        let with = |delta| {
            let inputs = DriveInputs {
                manual_delta: delta,
                ..DriveInputs::default()
            };
            drive(v(Decision::Retire(1)), &sb, &l, &inputs)
        };
        let p = with(1);
        assert_eq!((p.spawn, p.reason, p.refused), (1, Reason::Manual, None));
        assert_eq!(p.why, "manual: +1 (SIGTTIN/SIGTTOU)");
        let p = with(4);
        assert_eq!((p.spawn, p.refused), (2, Some(Refusal::AtMax { max: 5 })));
        let p = with(-1);
        assert_eq!(p.retire, vec![1]);
        let p = with(-3);
        assert_eq!(
            (p.retire.clone(), p.refused),
            (vec![1], Some(Refusal::AtMin { min: 2 }))
        );
        // No delta: the verdict.
        let p = with(0);
        assert_eq!(
            (p.retire.clone(), p.reason),
            (vec![1], Reason::Algorithm(Algorithm::Spare))
        );
    }

    fn with_rss(states: &[SlotState], rss: u64) -> Scoreboard {
        let mut sb = board(1, 5, states);
        for w in &mut sb.workers {
            w.memory_bytes = Some(rss);
        }
        sb
    }

    #[test]
    fn memory_refuses_spawns_that_would_not_fit() {
        let sb = with_rss(&[Busy, Busy], 100 * MI);
        let l = limits(1, 8);
        let budget = |current: u64| DriveInputs {
            manual_delta: 0,
            memory: MemoryBudget {
                limit_bytes: Some(1000 * MI),
                current_bytes: Some(current * MI),
                per_worker_bytes: None,
                margin_bytes: 50 * MI,
            },
        };
        // 1000 - 50 - 700 = 250 MiB: two workers of 100 MiB fit.
        let p = drive(v(Decision::Spawn(3)), &sb, &l, &budget(700));
        assert_eq!(p.spawn, 2);
        assert_eq!(
            p.refused,
            Some(Refusal::Memory {
                needed: 300 * MI,
                available: 250 * MI
            })
        );
        // 1000 - 50 - 860 = 90 MiB: none fits.
        let p = drive(v(Decision::Spawn(1)), &sb, &l, &budget(860));
        assert_eq!(p.spawn, 0);
        assert_eq!(p.refused.map(|r| r.as_str()), Some("memory"));
        assert!(p
            .to_string()
            .ends_with("refused: memory: 100 MiB needed, 90 MiB available"));
        // Manual spawns are refused the same way.
        let inputs = DriveInputs {
            manual_delta: 2,
            ..budget(860)
        };
        assert_eq!(drive(v(Decision::Hold), &sb, &l, &inputs).spawn, 0);
        // Unknown usage: nothing refused.
        let mut unknown = budget(860);
        unknown.memory.current_bytes = None;
        assert_eq!(drive(v(Decision::Spawn(1)), &sb, &l, &unknown).spawn, 1);
    }

    #[test]
    fn memory_reserves_for_starting_workers_and_uses_the_median() {
        let mut sb = with_rss(&[Busy, Busy, Busy, Starting], 0);
        for (w, rss) in sb.workers.iter_mut().zip([90, 300, 100, 20]) {
            w.memory_bytes = Some(rss * MI);
        }
        let budget = MemoryBudget {
            limit_bytes: Some(1000 * MI),
            current_bytes: Some(600 * MI),
            per_worker_bytes: None,
            margin_bytes: 0,
        };
        // Median of 90, 100, 300 (the starting worker is not representative): 100 MiB. The
        // starting worker will grow by 80 MiB more: 1000 - 600 - 80 = 320, 3 fit.
        assert_eq!(
            budget.room(&sb),
            Some(MemoryRoom {
                fits: 3,
                per_worker_bytes: 100 * MI,
                available_bytes: 320 * MI
            })
        );
        // A configured estimate wins over the median: 250 MiB, of which the starting worker
        // still needs 230: 1000 - 600 - 230 = 170, none fits.
        let fixed = MemoryBudget {
            per_worker_bytes: Some(250 * MI),
            ..budget
        };
        assert_eq!(fixed.room(&sb).map(|r| r.fits), Some(0));
        assert_eq!(MemoryBudget::cgroup(None, Some(1)).room(&sb), None);
        assert_eq!(MemoryBudget::cgroup(Some(1000), Some(1)).margin_bytes, 50);
    }

    #[test]
    fn top_up_to_min_ignores_memory_but_growth_beyond_does_not() {
        let sb = with_rss(&[Busy], 100 * MI);
        let inputs = DriveInputs {
            manual_delta: 0,
            memory: MemoryBudget {
                limit_bytes: Some(1000 * MI),
                current_bytes: Some(990 * MI),
                per_worker_bytes: None,
                margin_bytes: 0,
            },
        };
        let p = drive(v(Decision::Spawn(4)), &sb, &limits(3, 8), &inputs);
        assert_eq!(p.spawn, 2);
        assert_eq!(p.reason, Reason::Min);
        assert_eq!(p.refused.map(|r| r.as_str()), Some("memory"));
    }

    // --- properties ---

    fn arb_slot() -> impl Strategy<Value = WorkerSlot> {
        (
            0u8..4,
            1u32..4,
            0u32..4,
            0u64..100,
            proptest::option::of(0u64..500),
        )
            .prop_map(|(state, threads, busy, spawned, rss)| {
                let state = [Starting, Idle, Busy, Retiring][state as usize];
                let busy_threads = match state {
                    Starting => 0,
                    Idle => busy.min(threads - 1),
                    Busy => threads,
                    Retiring => busy.min(threads),
                };
                WorkerSlot {
                    id: 0,
                    state,
                    busy_threads,
                    threads,
                    busy_time: Duration::ZERO,
                    spawned_at: Duration::from_secs(spawned),
                    requests: 0,
                    memory_bytes: rss.map(|r| r * MI),
                }
            })
    }

    fn arb_board() -> impl Strategy<Value = Scoreboard> {
        (proptest::collection::vec(arb_slot(), 0..12), 0u32..50).prop_map(|(mut ws, q)| {
            for (i, w) in ws.iter_mut().enumerate() {
                w.id = i as u64 + 1;
            }
            Scoreboard {
                now: Duration::from_secs(100),
                queue_depth: q,
                oldest_wait: Duration::ZERO,
                workers: ws,
            }
        })
    }

    fn arb_decision() -> impl Strategy<Value = Decision> {
        prop_oneof![
            Just(Decision::Hold),
            (1u32..10).prop_map(Decision::Spawn),
            (1u32..10).prop_map(Decision::Retire),
        ]
    }

    fn arb_inputs() -> impl Strategy<Value = DriveInputs> {
        (
            prop_oneof![3 => Just(0i32), 1 => -5i32..6],
            proptest::option::of((0u64..3000, 0u64..3000, proptest::option::of(1u64..300))),
        )
            .prop_map(|(manual_delta, mem)| DriveInputs {
                manual_delta,
                memory: match mem {
                    None => MemoryBudget::default(),
                    Some((limit, current, per)) => MemoryBudget {
                        limit_bytes: Some(limit * MI),
                        current_bytes: Some(current * MI),
                        per_worker_bytes: per.map(|p| p * MI),
                        margin_bytes: 10 * MI,
                    },
                },
            })
    }

    proptest! {
        #[test]
        fn plans_respect_limits_and_never_pick_busy_or_starting_workers(
            sb in arb_board(),
            d in arb_decision(),
            inputs in arb_inputs(),
            min in 1u32..6,
            extra in 0u32..6,
        ) {
            let l = limits(min, min + extra);
            let p = drive(v(d), &sb, &l, &inputs);
            let before = sb.active();
            prop_assert_eq!(p.before, before);
            prop_assert_eq!(p.after, before + p.spawn - p.retire.len() as u32);
            prop_assert!(p.spawn == 0 || p.retire.is_empty());

            // Victims: distinct, present; the algorithms' are idle with no busy thread, and
            // explicit commands (manual, a lowered MAX) drain ready workers only, never a
            // starting or retiring one.
            let mut ids = p.retire.clone();
            ids.sort_unstable();
            ids.dedup();
            prop_assert_eq!(ids.len(), p.retire.len());
            let explicit = matches!(p.reason, Reason::Manual | Reason::Max);
            for id in &p.retire {
                let w = sb.workers.iter().find(|w| w.id == *id);
                if explicit {
                    prop_assert!(w.is_some_and(|w| w.state == Idle || w.state == Busy), "{:?}", w);
                } else {
                    prop_assert!(w.is_some_and(|w| w.state == Idle && w.busy_threads == 0), "{:?}", w);
                }
            }

            // The count stays within [MIN, MAX], or moves towards it.
            if before < l.min {
                // Topped up, and possibly more when the verdict or the operator asked for it.
                prop_assert!(l.min <= p.after && p.after <= l.max, "{} -> {}", before, p.after);
                prop_assert!(p.after == l.min || p.reason != Reason::Min);
            } else if before > l.max {
                // Ready workers drain; starting ones leave on later ticks.
                let ready = sb.workers.iter().filter(|w| matches!(w.state, Idle | Busy)).count() as u32;
                prop_assert_eq!(p.after, l.max.max(before - ready));
                prop_assert_eq!(p.spawn, 0);
            } else {
                prop_assert!(l.min <= p.after && p.after <= l.max, "{} -> {}", before, p.after);
            }

            // Nothing spawns when not allowed: never past MAX, and beyond the MIN top-up
            // never more than fits in memory.
            if before >= l.max {
                prop_assert_eq!(p.spawn, 0);
            }
            if let Some(room) = inputs.memory.room(&sb) {
                let floor = l.min.saturating_sub(before);
                prop_assert!(p.spawn <= room.fits.max(floor), "{} > {:?}", p.spawn, room);
            }
            if let Some(Refusal::Memory { .. } | Refusal::AtMax { .. }) = p.refused {
                let asked_spawn = match inputs.manual_delta {
                    0 => matches!(d, Decision::Spawn(_)),
                    m => m > 0,
                };
                prop_assert!(asked_spawn);
            }
        }
    }
}
