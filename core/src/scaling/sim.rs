//! A tiny pure model of the master and its workers, for tests and simulations: carry out a
//! [`Plan`] the way the master does (through the same [`Pool`]), advance the workers under a
//! demand, and run a scripted demand trace through an algorithm and the driver.
//!
//! The model is deliberately crude: a demand is a number of concurrent requests held for one
//! step; requests go to the least-loaded ready worker (oldest first), the rest queue; busy
//! time grows by busy threads x step; a starting worker becomes ready after a fixed delay; a
//! retiring worker leaves at the next step.

use std::time::Duration;

use super::{drive, Cheaper, DriveInputs, Plan};
use crate::config::{LifecycleConfig, LiveConfig, ScalingConfig, WorkerLimits};
use crate::pool::{Action, Gone, Pool};
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
        memory_bytes: None,
    }
}

/// The master's view in the model: the scoreboard of its workers and the [`Pool`] whose
/// actions change it, as the supervisor carries them out.
#[derive(Debug, Clone)]
pub struct Model {
    /// The workers and the queue.
    pub sb: Scoreboard,
    /// The worker pool's policy.
    pub pool: Pool,
    /// Threads per worker.
    pub threads: u32,
}

impl Model {
    /// A model whose `initial` workers (within `limits`) are ready at time zero.
    pub fn new(scaling: ScalingConfig, limits: WorkerLimits, threads: u32) -> Model {
        let live = LiveConfig {
            workers: limits,
            scaling,
            lifecycle: LifecycleConfig::default(),
        };
        let mut m = Model {
            sb: Scoreboard::default(),
            pool: Pool::new(live, 0),
            threads: threads.max(1),
        };
        let start = m.pool.start(Duration::ZERO);
        m.carry_out(start);
        let ids: Vec<u64> = m.sb.workers.iter().map(|w| w.id).collect();
        for id in ids {
            m.pool.ready(id, Duration::ZERO);
        }
        for w in &mut m.sb.workers {
            w.state = SlotState::Idle;
        }
        m
    }

    /// Carries out `plan` as the master does: through [`Pool::apply`], whose retirements stop
    /// taking requests (an idle worker leaves at once, one still running a request turns
    /// `Retiring`) and whose spawns join as `Starting` now.
    pub fn apply(&mut self, plan: &Plan) {
        let actions = self.pool.apply(plan, self.sb.now);
        self.carry_out(actions);
    }

    /// Worker `id` dies (it had been serving); the pool replaces it as the server would.
    pub fn crash(&mut self, id: u64) {
        self.sb.workers.retain(|w| w.id != id);
        let gone = Gone {
            was_ready: true,
            served: 0,
        };
        let (_, actions) = self.pool.gone(id, self.sb.now, gone);
        self.carry_out(actions);
    }

    fn carry_out(&mut self, actions: Vec<Action>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Spawn { id, .. } => {
                    let slot = new_slot(id, SlotState::Starting, self.threads, self.sb.now);
                    self.sb.workers.push(slot);
                }
                Action::Retire { id, .. } => {
                    let Some(i) = self.sb.workers.iter().position(|w| w.id == id) else {
                        continue;
                    };
                    self.sb.workers[i].state = SlotState::Retiring;
                    if self.sb.workers[i].busy_threads == 0 {
                        let w = self.sb.workers.remove(i);
                        let gone = Gone {
                            was_ready: true,
                            served: w.requests,
                        };
                        queue.extend(self.pool.gone(id, self.sb.now, gone).1);
                    }
                }
                // No timeouts or fork-server changes in the model.
                Action::Kill { .. }
                | Action::StartForkServer { .. }
                | Action::StopForkServer { .. } => {}
            }
        }
    }

    /// Advances by `dt` under `demand` concurrent requests (see [`advance`]), telling the pool
    /// which workers left and which became ready.
    pub fn advance(&mut self, dt: Duration, demand: u32, start_delay: Duration) {
        let now = self.sb.now + dt;
        let leaving: Vec<(u64, u64)> = self
            .sb
            .workers
            .iter()
            .filter(|w| w.state == SlotState::Retiring)
            .map(|w| (w.id, w.requests))
            .collect();
        let ready: Vec<u64> = self
            .sb
            .workers
            .iter()
            .filter(|w| w.state == SlotState::Starting && now >= w.spawned_at + start_delay)
            .map(|w| w.id)
            .collect();
        advance(&mut self.sb, dt, demand, start_delay);
        for (id, served) in leaving {
            let gone = Gone {
                was_ready: true,
                served,
            };
            let (_, actions) = self.pool.gone(id, now, gone);
            self.carry_out(actions);
        }
        for id in ready {
            let actions = self.pool.ready(id, now);
            self.carry_out(actions);
        }
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
    let mut m = Model::new(trace.scaling, trace.limits, trace.threads);
    let mut cheaper = Cheaper::new(&trace.scaling, &trace.limits);
    let mut out = Outcome {
        active: Vec::with_capacity(trace.demand.len()),
        plans: Vec::with_capacity(trace.demand.len()),
        cheaper: cheaper.clone(),
        scoreboard: Scoreboard::default(),
    };
    for &demand in &trace.demand {
        m.advance(Duration::from_secs(1), demand, trace.start_delay);
        let verdict = cheaper.decide_explained(&m.sb);
        let plan = drive(verdict, &m.sb, &trace.limits, &trace.inputs);
        m.apply(&plan);
        out.active.push(m.sb.active());
        out.plans.push(plan);
    }
    out.cheaper = cheaper;
    out.scoreboard = m.sb;
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
    fn apply_retires_and_spawns_through_the_pool() {
        let l = WorkerLimits {
            initial: 3,
            ..limits(1, 5)
        };
        let mut m = Model::new(cfg(Algorithm::Spare), l, 1);
        m.advance(Duration::from_secs(7), 2, Duration::ZERO);
        assert_eq!(m.sb.count(Busy), 2, "{:?}", m.sb.workers);
        let plan = drive(
            Verdict::new(Algorithm::Spare, Decision::Retire(1), "t"),
            &m.sb,
            &l,
            &DriveInputs::default(),
        );
        m.apply(&plan);
        assert_eq!(
            m.sb.workers.iter().map(|w| w.id).collect::<Vec<_>>(),
            vec![1, 2],
            "the idle worker left at once"
        );
        assert_eq!(m.pool.target(), 2);
        let spawn = Plan {
            spawn: 2,
            retire: vec![],
            before: 2,
            after: 4,
            ..plan
        };
        m.apply(&spawn);
        assert_eq!(m.sb.count(Starting), 2);
        assert_eq!(
            m.sb.workers.iter().map(|w| w.id).collect::<Vec<_>>(),
            vec![1, 2, 4, 5]
        );
        assert_eq!(m.sb.workers[3].spawned_at, Duration::from_secs(7));
        // A crash is replaced at once, as the server does.
        m.crash(1);
        assert_eq!(m.sb.active(), 4);
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
        let mut m = Model::new(cfg(Algorithm::Spare), l, 1);
        let mut cheaper = Cheaper::new(&cfg(Algorithm::Spare), &l);
        let demand = [vec![1; 5], vec![8; 20], vec![2; 10], vec![0; 30]].concat();
        let mut reasons = vec![];
        for (t, d) in demand.into_iter().enumerate() {
            m.advance(Duration::from_secs(1), d, Duration::ZERO);
            if t == 2 {
                // Worker 1 crashes: the pool replaces it before the next plan.
                m.crash(1);
                assert_eq!(m.sb.active(), 2);
            }
            let sb = &m.sb;
            let manual_delta = if t == 40 { 2 } else { 0 };
            let inputs = DriveInputs {
                manual_delta,
                ..DriveInputs::default()
            };
            let plan = drive(cheaper.decide_explained(sb), sb, &l, &inputs);
            m.apply(&plan);
            assert!((2..=6).contains(&m.sb.active()), "tick {t}: {plan}");
            if !plan.is_noop() {
                reasons.push((t, plan.reason));
            }
        }
        assert!(
            !reasons.iter().any(|(_, r)| *r == Reason::Min),
            "{reasons:?}"
        );
        assert!(reasons.contains(&(40, Reason::Manual)), "{reasons:?}");
        // The load is gone: back to MIN.
        assert_eq!(m.sb.active(), 2);
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
            let mut m = Model::new(scaling, l, threads);
            let mut cheaper = Cheaper::new(&scaling, &l);
            for (t, d) in demand.into_iter().enumerate() {
                m.advance(Duration::from_secs(1), d, Duration::from_secs(start_delay));
                if crashes[t] && t % 7 == 0 && !m.sb.workers.is_empty() {
                    let victim = m.sb.workers[t % m.sb.workers.len()].id;
                    m.crash(victim);
                }
                let sb = &m.sb;
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
                let plan = drive(cheaper.decide_explained(sb), sb, &l, &inputs);
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
                m.apply(&plan);
                let active = m.sb.active();
                prop_assert!(active <= l.max, "tick {}: {} ({})", t, active, plan);
                // Below MIN only while crashes hold respawns back (the crash-loop backoff).
                prop_assert!(
                    l.min <= active || m.pool.backing_off(m.sb.now),
                    "tick {}: {} ({})", t, active, plan
                );
                prop_assert_eq!(active, m.pool.active(), "one count");
            }
        }
    }
}
