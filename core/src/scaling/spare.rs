//! `spare`, the default: grow after sustained overload, shrink while capacity sits idle.

use super::{Census, Decision, Verdict};
use crate::config::{Algorithm, ScalingConfig, WorkerLimits};
use crate::scoreboard::Scoreboard;

/// Counts consecutive checks in which no worker is idle while work exists (every active
/// worker busy, or requests queued); after `overload` of them asks for `step` workers.
/// Counts consecutive checks with more than one idle worker and an empty queue; after
/// `overload` of them asks to retire one, which repeats until one worker is spare or MIN is
/// reached. While a worker is starting and none is idle, both counters pause: the capacity
/// on its way is not counted as overload (uWSGI counts a starting worker as idle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spare {
    step: u32,
    overload: u32,
    min: u32,
    overloaded_checks: u32,
    spare_checks: u32,
}

impl Spare {
    /// Fresh counters with the knobs of `cfg`.
    pub fn new(cfg: &ScalingConfig, limits: &WorkerLimits) -> Self {
        let mut s = Spare {
            step: 1,
            overload: 1,
            min: 0,
            overloaded_checks: 0,
            spare_checks: 0,
        };
        s.reconfigure(cfg, limits);
        s
    }

    /// New knobs; the counters stay.
    pub fn reconfigure(&mut self, cfg: &ScalingConfig, limits: &WorkerLimits) {
        self.step = cfg.step.max(1);
        self.overload = cfg.overload.max(1);
        self.min = limits.min;
    }

    /// One check.
    pub fn decide(&mut self, sb: &Scoreboard) -> Verdict {
        let c = Census::of(sb);
        let verdict = |d, why: String| Verdict::new(Algorithm::Spare, d, why);
        let n = self.overload;

        if c.idle == 0 && (c.busy > 0 || sb.queue_depth > 0) {
            if c.starting > 0 {
                return verdict(
                    Decision::Hold,
                    format!(
                        "spare: {} of {n} checks all busy, waiting for {} starting",
                        self.overloaded_checks, c.starting
                    ),
                );
            }
            self.spare_checks = 0;
            self.overloaded_checks += 1;
            if self.overloaded_checks >= n {
                self.overloaded_checks = 0;
                return verdict(
                    Decision::Spawn(self.step),
                    format!("spare: {n} checks all busy"),
                );
            }
            return verdict(
                Decision::Hold,
                format!("spare: {} of {n} checks all busy", self.overloaded_checks),
            );
        }

        self.overloaded_checks = 0;
        if c.idle > 1 && c.free > 0 && sb.queue_depth == 0 && c.active > self.min {
            self.spare_checks += 1;
            if self.spare_checks >= n {
                self.spare_checks = 0;
                return verdict(
                    Decision::Retire(1),
                    format!("spare: {} idle for {n} checks", c.idle),
                );
            }
            return verdict(
                Decision::Hold,
                format!(
                    "spare: {} idle for {} of {n} checks",
                    c.idle, self.spare_checks
                ),
            );
        }
        self.spare_checks = 0;
        verdict(
            Decision::Hold,
            format!("spare: {} idle, {} busy", c.idle, c.busy),
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

    fn spare(min: u32, max: u32) -> Cheaper {
        Cheaper::new(&cfg(Algorithm::Spare), &limits(min, max))
    }

    #[test]
    fn table_of_single_checks() {
        // (states, queue, decision after `overload` (3) identical checks)
        let cases: &[(&[crate::scoreboard::SlotState], u32, Decision)] = &[
            (&[Busy, Busy], 0, Decision::Spawn(1)),
            (&[Busy, Busy], 7, Decision::Spawn(1)),
            // Nothing running and nothing queued: not overload.
            (&[Idle], 0, Decision::Hold),
            // Exactly one spare worker: balanced.
            (&[Busy, Idle], 0, Decision::Hold),
            (&[Idle, Idle, Busy], 0, Decision::Retire(1)),
            // A queue with idle workers is a transient, never a reason to retire.
            (&[Idle, Idle, Busy], 2, Decision::Hold),
            // A starting worker is capacity on its way.
            (&[Busy, Starting], 4, Decision::Hold),
            // At MIN (2) there is nothing to retire.
            (&[Idle, Idle], 0, Decision::Hold),
            // Retiring workers do not count.
            (&[Busy, Retiring], 0, Decision::Spawn(1)),
        ];
        for (states, queue, want) in cases {
            let mut a = spare(2, 8);
            let sb = board(1, *queue, states);
            let got: Vec<_> = (0..3).map(|_| a.decide(&sb)).collect();
            assert_eq!(
                got[..2],
                [Decision::Hold, Decision::Hold],
                "{states:?} q={queue}"
            );
            assert_eq!(got[2], *want, "{states:?} q={queue}");
        }
    }

    #[test]
    fn a_non_overloaded_check_resets_the_count() {
        let mut a = spare(1, 4);
        let busy = board(1, 0, &[Busy, Busy]);
        let calm = board(2, 0, &[Busy, Idle]);
        assert_eq!(a.decide(&busy), Decision::Hold);
        assert_eq!(a.decide(&busy), Decision::Hold);
        assert_eq!(a.decide(&calm), Decision::Hold);
        assert_eq!(a.decide(&busy), Decision::Hold);
        assert_eq!(a.decide(&busy), Decision::Hold);
        assert_eq!(a.decide(&busy), Decision::Spawn(1));
    }

    #[test]
    fn step_load_reaches_max_then_returns_to_min() {
        // 10 concurrent requests against MIN 1 / MAX 4, one thread each: a spawn every
        // `overload` (3) checks, so MAX after 3 x 3 = 9 checks. Then no load: one retirement
        // every 3 checks down to MIN.
        let trace = Trace {
            demand: [vec![10; 12], vec![0; 12]].concat(),
            ..Trace::new(cfg(Algorithm::Spare), limits(1, 4))
        };
        let counts = run(&trace).active;
        assert_eq!(
            counts,
            vec![1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4, 3, 3, 3, 2, 2, 2, 1, 1, 1, 1]
        );
    }

    #[test]
    fn step_is_honoured() {
        let trace = Trace {
            demand: vec![10; 6],
            ..Trace::new(
                ScalingConfig {
                    step: 3,
                    ..cfg(Algorithm::Spare)
                },
                limits(1, 8),
            )
        };
        assert_eq!(run(&trace).active, vec![1, 1, 4, 4, 4, 7]);
    }
}
