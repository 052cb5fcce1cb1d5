//! `backlog`: follow the request queue.

use super::{Census, Decision, Verdict};
use crate::config::{Algorithm, ScalingConfig, WorkerLimits};
use crate::scoreboard::Scoreboard;

/// Asks for `step` workers on every check where more than `backlog` requests wait beyond
/// what the starting workers will take. Asks to retire one worker on every check where the
/// queue is empty and more than one worker is idle, never at MIN. uWSGI retires one worker a
/// second whenever the queue is below the threshold, busy or not; the per-check pace is kept
/// (it is the point of this algorithm: it follows the queue closely), but only idle workers
/// go, only with an empty queue, and one idle worker always stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    step: u32,
    threshold: u32,
    min: u32,
}

impl Backlog {
    /// The algorithm with the knobs of `cfg`.
    pub fn new(cfg: &ScalingConfig, limits: &WorkerLimits) -> Self {
        let mut b = Backlog {
            step: 1,
            threshold: 0,
            min: 0,
        };
        b.reconfigure(cfg, limits);
        b
    }

    /// New knobs.
    pub fn reconfigure(&mut self, cfg: &ScalingConfig, limits: &WorkerLimits) {
        self.step = cfg.step.max(1);
        self.threshold = cfg.backlog;
        self.min = limits.min;
    }

    /// One check.
    pub fn decide(&mut self, sb: &Scoreboard) -> Verdict {
        let c = Census::of(sb);
        let verdict = |d, why: String| Verdict::new(Algorithm::Backlog, d, why);
        let waiting = c.unabsorbed_queue(sb);
        if waiting > self.threshold {
            return verdict(
                Decision::Spawn(self.step),
                format!(
                    "backlog: {} queued ({waiting} beyond starting workers) > {}",
                    sb.queue_depth, self.threshold
                ),
            );
        }
        if sb.queue_depth == 0 && c.idle > 1 && c.free > 0 && c.active > self.min {
            return verdict(
                Decision::Retire(1),
                format!("backlog: queue empty, {} idle", c.idle),
            );
        }
        verdict(
            Decision::Hold,
            format!(
                "backlog: {} queued, threshold {}, {} idle",
                sb.queue_depth, self.threshold, c.idle
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::sim::{run, Trace};
    use super::super::testkit::*;
    use super::super::Cheaper;
    use super::*;
    use crate::scoreboard::SlotState::*;

    #[test]
    fn table_of_checks() {
        let cases: &[(&[crate::scoreboard::SlotState], u32, Decision)] = &[
            (&[Busy, Busy], 2, Decision::Spawn(1)),
            // At the threshold (1): hold.
            (&[Busy, Busy], 1, Decision::Hold),
            // Two starting workers will take two of the three queued requests.
            (&[Busy, Starting, Starting], 3, Decision::Hold),
            (&[Busy, Starting], 3, Decision::Spawn(1)),
            (&[Idle, Idle, Busy], 0, Decision::Retire(1)),
            // Below the threshold but not empty: uWSGI would retire, we do not.
            (&[Idle, Idle, Busy], 1, Decision::Hold),
            // One idle worker always stays.
            (&[Idle, Busy, Busy], 0, Decision::Hold),
            // Never below MIN (2).
            (&[Idle, Idle], 0, Decision::Hold),
        ];
        for (states, queue, want) in cases {
            let mut a = Cheaper::new(&cfg(Algorithm::Backlog), &limits(2, 8));
            assert_eq!(
                a.decide(&board(1, *queue, states)),
                *want,
                "{states:?} q={queue}"
            );
        }
    }

    #[test]
    fn partially_busy_threads_are_not_free() {
        let mut sb = board(1, 0, &[Idle, Idle, Busy]);
        for w in &mut sb.workers[..2] {
            w.threads = 4;
            w.busy_threads = 1;
        }
        let mut a = Cheaper::new(&cfg(Algorithm::Backlog), &limits(1, 8));
        assert_eq!(a.decide(&sb), Decision::Hold);
    }

    #[test]
    fn step_load_reaches_max_then_returns_to_min() {
        // 10 concurrent requests, threshold 1: a spawn a check while more than 1 waits beyond
        // the starting workers: 1 -> 4 in 3 checks. Without load, one retirement a check while
        // more than one is idle: 4 -> 1 (MIN) in 3 checks.
        let trace = Trace {
            demand: [vec![10; 5], vec![0; 5]].concat(),
            ..Trace::new(cfg(Algorithm::Backlog), limits(1, 4))
        };
        assert_eq!(run(&trace).active, vec![2, 3, 4, 4, 4, 3, 2, 1, 1, 1]);
    }
}
