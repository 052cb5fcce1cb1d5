//! `spare2`: keep MIN workers idle, growing at once when fewer are.

use super::{Census, Decision, Verdict};
use crate::config::{Algorithm, ScalingConfig, WorkerLimits};
use crate::scoreboard::Scoreboard;

/// Keeps MIN idle workers (uWSGI's `cheaper` count). When fewer than MIN are idle it asks at
/// once for the shortfall, at most `step` per check; workers still starting count as idle,
/// so a slow import is not answered with a second round of spawns. When more than MIN are
/// idle for `idle` consecutive checks it asks to retire one. uWSGI's version has no default
/// step and never spawns unless one is set; here `step` is always at least 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spare2 {
    step: u32,
    idle_checks: u32,
    keep_idle: u32,
    surplus_checks: u32,
}

impl Spare2 {
    /// Fresh counters with the knobs of `cfg`.
    pub fn new(cfg: &ScalingConfig, limits: &WorkerLimits) -> Self {
        let mut s = Spare2 {
            step: 1,
            idle_checks: 1,
            keep_idle: 0,
            surplus_checks: 0,
        };
        s.reconfigure(cfg, limits);
        s
    }

    /// New knobs; the counter stays.
    pub fn reconfigure(&mut self, cfg: &ScalingConfig, limits: &WorkerLimits) {
        self.step = cfg.step.max(1);
        self.idle_checks = cfg.idle.max(1);
        self.keep_idle = limits.min;
    }

    /// One check.
    pub fn decide(&mut self, sb: &Scoreboard) -> Verdict {
        let c = Census::of(sb);
        let verdict = |d, why: String| Verdict::new(Algorithm::Spare2, d, why);
        let keep = self.keep_idle;
        let ready_soon = c.idle + c.starting;

        if ready_soon < keep {
            self.surplus_checks = 0;
            let n = (keep - ready_soon).min(self.step);
            return verdict(
                Decision::Spawn(n),
                format!(
                    "spare2: {} idle + {} starting, keeping {keep} idle",
                    c.idle, c.starting
                ),
            );
        }
        if c.idle > keep && c.free > 0 {
            self.surplus_checks += 1;
            if self.surplus_checks >= self.idle_checks {
                self.surplus_checks = 0;
                return verdict(
                    Decision::Retire(1),
                    format!(
                        "spare2: {} idle above {keep} for {} checks",
                        c.idle, self.idle_checks
                    ),
                );
            }
            return verdict(
                Decision::Hold,
                format!(
                    "spare2: {} idle above {keep} for {} of {} checks",
                    c.idle, self.surplus_checks, self.idle_checks
                ),
            );
        }
        self.surplus_checks = 0;
        verdict(
            Decision::Hold,
            format!("spare2: {} idle, keeping {keep}", c.idle),
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
    fn table_of_first_checks() {
        let cases: &[(ScalingConfig, &[crate::scoreboard::SlotState], Decision)] = &[
            // The defaults resolve() applies (step 1): spawns, unlike uWSGI without a step.
            (
                cfg(Algorithm::Spare2),
                &[Busy, Busy, Busy],
                Decision::Spawn(1),
            ),
            (
                ScalingConfig {
                    step: 4,
                    ..cfg(Algorithm::Spare2)
                },
                &[Busy, Busy, Busy],
                Decision::Spawn(2),
            ),
            (
                ScalingConfig {
                    step: 4,
                    ..cfg(Algorithm::Spare2)
                },
                &[Busy, Busy, Idle],
                Decision::Spawn(1),
            ),
            // A starting worker is an idle one soon.
            (
                cfg(Algorithm::Spare2),
                &[Busy, Starting, Idle],
                Decision::Hold,
            ),
            (cfg(Algorithm::Spare2), &[Busy, Idle, Idle], Decision::Hold),
            // Surplus: retirement waits for `idle` checks.
            (cfg(Algorithm::Spare2), &[Idle, Idle, Idle], Decision::Hold),
        ];
        for (c, states, want) in cases {
            let mut a = Cheaper::new(c, &limits(2, 8));
            assert_eq!(a.decide(&board(1, 0, states)), *want, "{c:?} {states:?}");
        }
    }

    #[test]
    fn surplus_retires_one_after_idle_checks() {
        let mut a = Cheaper::new(
            &ScalingConfig {
                idle: 4,
                ..cfg(Algorithm::Spare2)
            },
            &limits(2, 8),
        );
        let surplus = board(1, 0, &[Idle, Idle, Idle, Busy]);
        let balanced = board(1, 0, &[Idle, Idle, Busy, Busy]);
        let got: Vec<_> = [
            &surplus, &surplus, &balanced, &surplus, &surplus, &surplus, &surplus,
        ]
        .into_iter()
        .map(|sb| a.decide(sb))
        .collect();
        let hold = Decision::Hold;
        assert_eq!(
            got,
            vec![hold, hold, hold, hold, hold, hold, Decision::Retire(1)]
        );
    }

    #[test]
    fn step_load_reaches_max_then_returns_to_min() {
        // Keep 2 idle; 4 concurrent requests need 6 workers (= MAX), one spawn per check with
        // the default step. Without load, 6 idle > 2: one retirement every `idle` (10) checks.
        let trace = Trace {
            demand: [vec![4; 6], vec![0; 41]].concat(),
            ..Trace::new(cfg(Algorithm::Spare2), limits(2, 6))
        };
        let active = run(&trace).active;
        assert_eq!(active[..6], [3, 4, 5, 6, 6, 6]);
        // The tick at which the count first drops to `n` once the load is gone.
        let first_at = |n: u32| active[6..].iter().position(|a| *a == n).map(|i| i + 7);
        assert_eq!(first_at(5), Some(6 + 10));
        assert_eq!(first_at(4), Some(6 + 20));
        assert_eq!(first_at(3), Some(6 + 30));
        assert_eq!(first_at(2), Some(6 + 40));
        assert_eq!(active.last(), Some(&2));
    }
}
