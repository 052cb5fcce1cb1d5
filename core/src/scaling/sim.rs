//! A tiny pure model of the master and its workers, for tests and simulations: carry out a
//! [`Plan`] the way the master would, advance the workers under a demand, and run a scripted
//! demand trace through an algorithm and the driver.
//!
//! The model is deliberately crude: a demand is a number of concurrent requests held for one
//! step; requests go to the least-loaded ready worker (oldest first), the rest queue; busy
//! time grows by busy threads x step; a starting worker becomes ready after a fixed delay; a
//! retiring worker leaves at the next step.

use std::time::Duration;

use super::{drive, Cheaper, DriveInputs, Plan};
use crate::config::{ScalingConfig, WorkerLimits};
use crate::scoreboard::{Scoreboard, SlotState, WorkerSlot};

/// A ready-to-serve worker as the model creates it.
fn new_slot(id: u64, state: SlotState, threads: u32, at: Duration) -> WorkerSlot {
    WorkerSlot {
        id,
        state,
        busy_threads: 0,
        threads: threads.max(1),
        busy_time: Duration::ZERO,
        spawned_at: at,
        requests: 0,
        rss_bytes: None,
    }
}

/// Carries out `plan` on `sb` as the master would: each victim stops taking requests (an
/// idle one leaves at once, one still running a request turns `Retiring`), and `plan.spawn`
/// new workers join as `Starting` at `sb.now`, numbered from `*next_id`.
pub fn apply_plan(sb: &mut Scoreboard, plan: &Plan, next_id: &mut u64, threads: u32) {
    sb.workers.retain_mut(|w| {
        if !plan.retire.contains(&w.id) {
            return true;
        }
        w.state = SlotState::Retiring;
        w.busy_threads > 0
    });
    for _ in 0..plan.spawn {
        sb.workers
            .push(new_slot(*next_id, SlotState::Starting, threads, sb.now));
        *next_id += 1;
    }
}

/// Advances `sb` by `dt` under `demand` concurrent requests: retiring workers leave, starting
/// ones older than `start_delay` become ready, the demand is spread over the ready workers'
/// threads (least loaded first, then oldest), the rest waits in the queue, and busy time and
/// request counts grow.
pub fn advance(sb: &mut Scoreboard, dt: Duration, demand: u32, start_delay: Duration) {
    let now = sb.now + dt;
    sb.workers.retain(|w| w.state != SlotState::Retiring);
    for w in &mut sb.workers {
        if w.state == SlotState::Starting && now >= w.spawned_at + start_delay {
            w.state = SlotState::Idle;
        }
        w.busy_threads = 0;
    }
    let mut order: Vec<usize> = (0..sb.workers.len())
        .filter(|&i| sb.workers[i].state != SlotState::Starting)
        .collect();
    order.sort_by_key(|&i| (sb.workers[i].spawned_at, sb.workers[i].id));
    let mut left = demand;
    while left > 0 {
        let pick = order
            .iter()
            .copied()
            .filter(|&i| sb.workers[i].busy_threads < sb.workers[i].threads)
            .min_by_key(|&i| sb.workers[i].busy_threads);
        let Some(i) = pick else { break };
        sb.workers[i].busy_threads += 1;
        left -= 1;
    }
    for &i in &order {
        let w = &mut sb.workers[i];
        w.state = if w.busy_threads >= w.threads {
            SlotState::Busy
        } else {
            SlotState::Idle
        };
        w.busy_time += dt * w.busy_threads;
        w.requests += u64::from(w.busy_threads);
    }
    sb.queue_depth = left;
    sb.oldest_wait = if left > 0 { dt } else { Duration::ZERO };
    sb.now = now;
}

/// A scripted run: one check per second, `demand[i]` concurrent requests during second `i+1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Algorithm and knobs.
    pub scaling: ScalingConfig,
    /// Worker limits; the run starts with `initial` idle workers.
    pub limits: WorkerLimits,
    /// Threads per worker.
    pub threads: u32,
    /// How long a spawned worker stays `Starting`.
    pub start_delay: Duration,
    /// Concurrent requests per second.
    pub demand: Vec<u32>,
    /// The driver's inputs, the same every tick.
    pub inputs: DriveInputs,
}

impl Trace {
    /// A trace with one thread per worker, workers ready one check after their spawn, no
    /// memory budget and no demand yet.
    pub fn new(scaling: ScalingConfig, limits: WorkerLimits) -> Self {
        Trace {
            scaling,
            limits,
            threads: 1,
            start_delay: Duration::ZERO,
            demand: Vec::new(),
            inputs: DriveInputs::default(),
        }
    }
}

/// What a [`run`] produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Active workers after each tick's plan.
    pub active: Vec<u32>,
    /// Each tick's plan.
    pub plans: Vec<Plan>,
    /// The algorithm with its final counters.
    pub cheaper: Cheaper,
    /// The final scoreboard.
    pub scoreboard: Scoreboard,
}

/// Runs `trace` the way the master runs a tick: advance one second, decide, drive, apply.
pub fn run(trace: &Trace) -> Outcome {
    let mut sb = Scoreboard::default();
    let initial = trace
        .limits
        .initial
        .clamp(trace.limits.min, trace.limits.max);
    for id in 1..=u64::from(initial) {
        sb.workers
            .push(new_slot(id, SlotState::Idle, trace.threads, Duration::ZERO));
    }
    let mut next_id = u64::from(initial) + 1;
    let mut cheaper = Cheaper::new(&trace.scaling, &trace.limits);
    let mut out = Outcome {
        active: Vec::with_capacity(trace.demand.len()),
        plans: Vec::with_capacity(trace.demand.len()),
        cheaper: cheaper.clone(),
        scoreboard: Scoreboard::default(),
    };
    for &demand in &trace.demand {
        advance(&mut sb, Duration::from_secs(1), demand, trace.start_delay);
        let verdict = cheaper.decide_explained(&sb);
        let plan = drive(verdict, &sb, &trace.limits, &trace.inputs);
        apply_plan(&mut sb, &plan, &mut next_id, trace.threads);
        out.active.push(sb.active());
        out.plans.push(plan);
    }
    out.cheaper = cheaper;
    out.scoreboard = sb;
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testkit::*;
    use super::super::{Decision, Reason, Verdict};
    use super::*;
    use crate::config::Algorithm;
    use crate::scoreboard::SlotState::*;

    #[test]
    fn advance_spreads_demand_and_queues_the_rest() {
        let mut sb = board(0, 0, &[Idle, Idle, Starting, Retiring]);
        sb.workers[0].threads = 2;
        sb.workers[2].spawned_at = Duration::ZERO;
        advance(&mut sb, Duration::from_secs(1), 5, Duration::from_secs(5));
        // The retiring worker left, the starting one is not ready yet; 3 threads for 5.
        let states: Vec<_> = sb
            .workers
            .iter()
            .map(|w| (w.id, w.state, w.busy_threads))
            .collect();
        assert_eq!(states, vec![(1, Busy, 2), (2, Busy, 1), (3, Starting, 0)]);
        assert_eq!(sb.queue_depth, 2);
        assert_eq!(sb.workers[0].busy_time, Duration::from_secs(2));
        assert_eq!(sb.now, Duration::from_secs(1));
    }

    #[test]
    fn apply_plan_retires_and_spawns() {
        let mut sb = board(7, 0, &[Idle, Busy, Idle]);
        let plan = drive(
            Verdict::new(Algorithm::Spare, Decision::Retire(1), "t"),
            &sb,
            &limits(1, 4),
            &DriveInputs::default(),
        );
        let mut next = 10;
        apply_plan(&mut sb, &plan, &mut next, 2);
        assert_eq!(
            sb.workers.iter().map(|w| w.id).collect::<Vec<_>>(),
            vec![2, 3]
        );
        let spawn = Plan { spawn: 2, ..plan };
        apply_plan(&mut sb, &spawn, &mut next, 2);
        assert_eq!(next, 12);
        assert_eq!(sb.count(Starting), 2);
        assert_eq!(sb.workers[3].spawned_at, Duration::from_secs(7));
    }

    #[test]
    fn slow_starts_do_not_overshoot() {
        // 3 concurrent requests and a 5-second import. Counting a starting worker as idle
        // (uWSGI) or ignoring it would spawn on every check or overload period of the import:
        // 6 or more workers. Each rule instead waits for the workers it already started:
        // backlog stops with one request queued (its threshold), spare adds one more when all
        // three are busy, spare2 keeps one idle on top of the three busy.
        let cases = [
            (Algorithm::Backlog, 2),
            (Algorithm::Spare, 4),
            (Algorithm::Spare2, 4),
        ];
        for (algo, want) in cases {
            let trace = Trace {
                start_delay: Duration::from_secs(5),
                demand: vec![3; 30],
                ..Trace::new(cfg(algo), limits(1, 16))
            };
            let out = run(&trace);
            let peak = out.active.iter().copied().max().unwrap_or(0);
            assert_eq!(peak, want, "{algo:?}: {:?}", out.active);
        }
    }

    #[test]
    fn a_scripted_day_stays_within_limits_with_crashes_and_signals() {
        // Load ramps, a worker crashes, an operator sends SIGTTIN twice, load goes away.
        let l = limits(2, 6);
        let mut sb = board(0, 0, &[Idle, Idle]);
        let mut next = 3;
        let mut cheaper = Cheaper::new(&cfg(Algorithm::Spare), &l);
        let demand = [vec![1; 5], vec![8; 20], vec![2; 10], vec![0; 30]].concat();
        let mut reasons = vec![];
        for (t, d) in demand.into_iter().enumerate() {
            advance(&mut sb, Duration::from_secs(1), d, Duration::ZERO);
            if t == 2 {
                // Worker 1 crashes.
                sb.workers.retain(|w| w.id != 1);
            }
            let manual_delta = if t == 40 { 2 } else { 0 };
            let inputs = DriveInputs {
                manual_delta,
                ..DriveInputs::default()
            };
            let plan = drive(cheaper.decide_explained(&sb), &sb, &l, &inputs);
            apply_plan(&mut sb, &plan, &mut next, 1);
            assert!((2..=6).contains(&sb.active()), "tick {t}: {plan}");
            if !plan.is_noop() {
                reasons.push((t, plan.reason));
            }
        }
        assert!(reasons.contains(&(2, Reason::Min)), "{reasons:?}");
        assert!(reasons.contains(&(40, Reason::Manual)), "{reasons:?}");
        // The load is gone: back to MIN.
        assert_eq!(sb.active(), 2);
    }

    proptest! {
        #[test]
        fn random_traces_stay_within_limits(
            algo in prop_oneof![
                Just(Algorithm::Spare),
                Just(Algorithm::Spare2),
                Just(Algorithm::Backlog),
                Just(Algorithm::Busyness),
                Just(Algorithm::Manual),
            ],
            min in 1u32..4,
            extra in 0u32..5,
            step in 1u32..4,
            overload in 1u32..4,
            threads in 1u32..3,
            start_delay in 0u64..4,
            demand in proptest::collection::vec(0u32..20, 1..120),
            deltas in proptest::collection::vec(prop_oneof![8 => Just(0i32), 1 => -3i32..4], 120),
            crashes in proptest::collection::vec(any::<bool>(), 120),
        ) {
            let l = limits(min, min + extra);
            let scaling = ScalingConfig { step, overload, idle: 2, busyness_multiplier: 1, ..cfg(algo) };
            let mut sb = board(0, 0, &vec![Idle; min as usize]);
            let mut next = u64::from(min) + 1;
            let mut cheaper = Cheaper::new(&scaling, &l);
            for (t, d) in demand.into_iter().enumerate() {
                advance(&mut sb, Duration::from_secs(1), d, Duration::from_secs(start_delay));
                if crashes[t] && t % 7 == 0 && !sb.workers.is_empty() {
                    sb.workers.remove(t % sb.workers.len());
                }
                let inputs = DriveInputs { manual_delta: deltas[t], ..DriveInputs::default() };
                let busy_or_starting: Vec<u64> = sb
                    .workers
                    .iter()
                    .filter(|w| w.state != Idle || w.busy_threads > 0)
                    .map(|w| w.id)
                    .collect();
                let starting: Vec<u64> = sb
                    .workers
                    .iter()
                    .filter(|w| w.state == Starting)
                    .map(|w| w.id)
                    .collect();
                let plan = drive(cheaper.decide_explained(&sb), &sb, &l, &inputs);
                // The algorithms never retire a busy worker; explicit commands may drain one
                // (it finishes its requests first), but never a starting one.
                let explicit = matches!(plan.reason, Reason::Manual | Reason::Max);
                for id in &plan.retire {
                    if explicit {
                        prop_assert!(!starting.contains(id), "tick {}: {}", t, plan);
                    } else {
                        prop_assert!(!busy_or_starting.contains(id), "tick {}: {}", t, plan);
                    }
                }
                if plan.before >= l.max {
                    prop_assert_eq!(plan.spawn, 0);
                }
                apply_plan(&mut sb, &plan, &mut next, threads);
                let active = sb.active();
                prop_assert!(l.min <= active && active <= l.max, "tick {}: {} ({})", t, active, plan);
            }
        }
    }
}
