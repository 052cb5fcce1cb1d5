//! `busyness`: the average busy fraction of the ready workers over a window, with anti-flap.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{Census, Decision, Verdict};
use crate::config::{Algorithm, ScalingConfig, WorkerLimits};
use crate::scoreboard::{Scoreboard, SlotState};

/// Consecutive mid-band windows after which the low-busyness count starts over (uWSGI's
/// tolerance: one or two busier windows only pause the count).
const MID_WINDOWS_RESET: u32 = 3;

/// Measures each ready worker's busy fraction over a window of `overload` checks: its
/// `busy_time` growth divided by its threads and by the time it was actually observed ready
/// in the window, averaged over the ready workers. Above `busyness_max` percent it asks for
/// `step` workers; below `busyness_min` for `overload x multiplier` checks it asks to retire
/// one; in between, three windows in a row restart the low count. A spawn needed within the
/// retirement wait after a retirement raises the multiplier by `busyness_penalty` (once per
/// retirement); a retirement that sticks (the next event is a later retirement, or a spawn
/// after the wait) lowers it by one, down to the configured value. Every check, a queue of
/// `busyness_backlog` or more requests beyond what starting workers will take asks for `step`
/// emergency workers at once (0 disables this).
///
/// Fixed relative to uWSGI, which misreads light load:
/// - workers are tracked by id, not by slot, so a recycled worker's counter reset is a new
///   baseline, not an unsigned wrap-around read as 100% (7 workers, one recycled: "14%");
/// - a single check that catches a worker busy no longer marks it 100% for the window: only
///   a worker seen with every thread busy at every check of the window (a request longer than
///   the window, when busy time is only counted at completion) is floored at that occupancy;
/// - the fraction uses the measured elapsed time and the thread count, and a worker that
///   became ready during the window is measured over the part it was ready for, so starting
///   and new workers do not dilute the average; while any worker is starting, a busy window
///   waits for it instead of spawning more.
#[derive(Debug, Clone, PartialEq)]
pub struct Busyness {
    step: u32,
    overload: u32,
    min_percent: f64,
    max_percent: f64,
    base_multiplier: u32,
    penalty: u32,
    emergency_queue: u32,
    min_workers: u32,
    multiplier: u32,
    checks: u64,
    window_checks: u32,
    tracks: BTreeMap<u64, Track>,
    low_checks: u32,
    mid_windows: u32,
    /// The check of the last retirement, until a spawn follows it.
    last_retirement: Option<u64>,
    last_average: Option<f64>,
}

/// A ready worker's baseline in the current window.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Track {
    base_busy: Duration,
    base_at: Duration,
    /// Checks seen since the baseline.
    samples: u32,
    /// Lowest busy-thread fraction seen at those checks.
    min_occupancy: f64,
}

impl Track {
    fn new(busy: Duration, at: Duration) -> Self {
        Track {
            base_busy: busy,
            base_at: at,
            samples: 0,
            min_occupancy: 1.0,
        }
    }
}

impl Busyness {
    /// Fresh counters with the knobs of `cfg`.
    pub fn new(cfg: &ScalingConfig, limits: &WorkerLimits) -> Self {
        let base = cfg.busyness_multiplier.max(1);
        let mut b = Busyness {
            step: 1,
            overload: 1,
            min_percent: 0.0,
            max_percent: 100.0,
            base_multiplier: base,
            penalty: 0,
            emergency_queue: 0,
            min_workers: 0,
            multiplier: base,
            checks: 0,
            window_checks: 0,
            tracks: BTreeMap::new(),
            low_checks: 0,
            mid_windows: 0,
            last_retirement: None,
            last_average: None,
        };
        b.reconfigure(cfg, limits);
        b
    }

    /// New knobs; the counters and the window stay. Penalty already added to the multiplier
    /// is kept on top of a changed configured multiplier.
    pub fn reconfigure(&mut self, cfg: &ScalingConfig, limits: &WorkerLimits) {
        let base = cfg.busyness_multiplier.max(1);
        let extra = self.multiplier.saturating_sub(self.base_multiplier);
        self.base_multiplier = base;
        self.multiplier = base.saturating_add(extra);
        self.step = cfg.step.max(1);
        self.overload = cfg.overload.max(1);
        self.min_percent = f64::from(cfg.busyness_min);
        self.max_percent = f64::from(cfg.busyness_max);
        self.penalty = cfg.busyness_penalty;
        self.emergency_queue = cfg.busyness_backlog;
        self.min_workers = limits.min;
    }

    /// The current retirement multiplier (the configured one plus any flap penalty).
    pub fn multiplier(&self) -> u32 {
        self.multiplier
    }

    /// The average busyness (percent) of the last closed window, if any worker was measured.
    pub fn last_busyness(&self) -> Option<f64> {
        self.last_average
    }

    /// Checks of low busyness needed before a retirement, with the current multiplier.
    fn retirement_wait(&self) -> u32 {
        self.overload.saturating_mul(self.multiplier)
    }

    /// One check.
    pub fn decide(&mut self, sb: &Scoreboard) -> Verdict {
        self.checks += 1;
        let c = Census::of(sb);
        let verdict = |d, why: String| Verdict::new(Algorithm::Busyness, d, why);
        self.observe(sb);

        self.window_checks += 1;
        let due = self.window_checks >= self.overload;
        let average = if due {
            self.window_checks = 0;
            let a = self.close_window(sb);
            if a.is_some() {
                self.last_average = a;
            }
            a
        } else {
            None
        };

        let waiting = c.unabsorbed_queue(sb);
        if self.emergency_queue > 0 && waiting >= self.emergency_queue {
            self.low_checks = 0;
            self.mid_windows = 0;
            return verdict(
                Decision::Spawn(self.step),
                format!(
                    "busyness: {} queued >= {}, emergency",
                    sb.queue_depth, self.emergency_queue
                ),
            );
        }
        if !due {
            return verdict(
                Decision::Hold,
                format!(
                    "busyness: {} of {} checks into the window",
                    self.window_checks, self.overload
                ),
            );
        }
        let Some(avg) = average else {
            return verdict(
                Decision::Hold,
                "busyness: no ready worker to measure".to_string(),
            );
        };
        let n = self.overload;

        if avg > self.max_percent {
            self.low_checks = 0;
            self.mid_windows = 0;
            if c.starting > 0 {
                return verdict(
                    Decision::Hold,
                    format!(
                        "busyness: {n}-check average {avg:.0}% > {:.0}%, waiting for {} starting",
                        self.max_percent, c.starting
                    ),
                );
            }
            let mut why = format!(
                "busyness: {n}-check average {avg:.0}% > {:.0}%",
                self.max_percent
            );
            if let Some(at) = self.last_retirement.take() {
                let since = self.checks - at;
                if since <= u64::from(self.retirement_wait()) {
                    self.multiplier = self.multiplier.saturating_add(self.penalty);
                    why.push_str(&format!(
                        ", {since} checks after a retirement: multiplier {}",
                        self.multiplier
                    ));
                } else {
                    self.decay();
                }
            }
            return verdict(Decision::Spawn(self.step), why);
        }

        if avg < self.min_percent {
            self.mid_windows = 0;
            if c.active <= self.min_workers {
                self.low_checks = 0;
                return verdict(
                    Decision::Hold,
                    format!(
                        "busyness: {n}-check average {avg:.0}% < {:.0}%, at MIN",
                        self.min_percent
                    ),
                );
            }
            let wait = self.retirement_wait();
            self.low_checks = self.low_checks.saturating_add(n).min(wait);
            if self.low_checks >= wait && c.free > 0 {
                self.low_checks = 0;
                if self.last_retirement.is_some() {
                    // The previous retirement stuck: no spawn was needed since.
                    self.decay();
                }
                self.last_retirement = Some(self.checks);
                return verdict(
                    Decision::Retire(1),
                    format!(
                        "busyness: average {avg:.0}% < {:.0}% for {wait} checks",
                        self.min_percent
                    ),
                );
            }
            return verdict(
                Decision::Hold,
                format!(
                    "busyness: average {avg:.0}% < {:.0}% for {} of {wait} checks",
                    self.min_percent, self.low_checks
                ),
            );
        }

        self.mid_windows += 1;
        if self.mid_windows >= MID_WINDOWS_RESET {
            self.low_checks = 0;
        }
        verdict(
            Decision::Hold,
            format!(
                "busyness: {n}-check average {avg:.0}% within {:.0}%..{:.0}%",
                self.min_percent, self.max_percent
            ),
        )
    }

    fn decay(&mut self) {
        self.multiplier = self.multiplier.saturating_sub(1).max(self.base_multiplier);
    }

    /// Updates the per-worker baselines and occupancy samples from this check.
    fn observe(&mut self, sb: &Scoreboard) {
        let mut ready = BTreeSet::new();
        for w in &sb.workers {
            if !matches!(w.state, SlotState::Idle | SlotState::Busy) {
                continue;
            }
            ready.insert(w.id);
            let occupancy = (f64::from(w.busy_threads) / f64::from(w.threads.max(1))).min(1.0);
            match self.tracks.get_mut(&w.id) {
                None => {
                    self.tracks.insert(w.id, Track::new(w.busy_time, sb.now));
                }
                Some(t) if w.busy_time < t.base_busy || sb.now < t.base_at => {
                    // A counter that went backwards is a new baseline, never a wrap.
                    *t = Track::new(w.busy_time, sb.now);
                }
                Some(t) => {
                    t.samples += 1;
                    t.min_occupancy = t.min_occupancy.min(occupancy);
                }
            }
        }
        self.tracks.retain(|id, _| ready.contains(id));
    }

    /// The window's average busyness in percent over the measurable workers, and new
    /// baselines for the next window.
    fn close_window(&mut self, sb: &Scoreboard) -> Option<f64> {
        let mut sum = 0.0;
        let mut measured = 0u32;
        for w in &sb.workers {
            let Some(t) = self.tracks.get_mut(&w.id) else {
                continue;
            };
            let elapsed = sb.now.saturating_sub(t.base_at).as_secs_f64();
            if elapsed > 0.0 {
                let busy = w.busy_time.saturating_sub(t.base_busy).as_secs_f64();
                let mut fraction = (busy / (elapsed * f64::from(w.threads.max(1)))).min(1.0);
                if t.samples > 0 {
                    fraction = fraction.max(t.min_occupancy);
                }
                if fraction.is_finite() {
                    sum += fraction;
                    measured += 1;
                }
            }
            *t = Track::new(w.busy_time, sb.now);
        }
        (measured > 0).then(|| 100.0 * sum / f64::from(measured))
    }
}

#[cfg(test)]
mod tests {
    use super::super::sim::{run, Trace};
    use super::super::testkit::*;
    use super::super::{Cheaper, Plan};
    use super::*;
    use crate::scoreboard::SlotState::*;

    fn busyness(min: u32, max: u32) -> Busyness {
        Busyness::new(&cfg(Algorithm::Busyness), &limits(min, max))
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Ticks at which a plan spawned or retired.
    fn events(plans: &[Plan]) -> (Vec<usize>, Vec<usize>) {
        let at = |f: &dyn Fn(&Plan) -> bool| {
            plans
                .iter()
                .enumerate()
                .filter(|(_, p)| f(p))
                .map(|(i, _)| i + 1)
                .collect()
        };
        (at(&|p| p.spawn > 0), at(&|p| !p.retire.is_empty()))
    }

    #[test]
    fn step_load_reaches_max_then_returns_to_min() {
        // A window closes every 3 checks: MIN 1 -> MAX 4 in 9 checks. Without load, each
        // retirement waits 3 x 10 = 30 checks of low busyness.
        let trace = Trace {
            demand: [vec![10; 12], vec![0; 95]].concat(),
            ..Trace::new(cfg(Algorithm::Busyness), limits(1, 4))
        };
        let out = run(&trace);
        assert_eq!(out.active[..12], [1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4]);
        let (_, retired) = events(&out.plans);
        assert_eq!(retired, vec![42, 72, 102]);
        assert_eq!(out.active.last(), Some(&1));
    }

    #[test]
    fn penalty_slows_retirement_after_a_flap_and_decays_when_retirements_stick() {
        // MAX 3. Load until 3 workers run, then idle: a retirement after 30 checks. The load
        // comes back 3 checks later (a flap): multiplier 10 -> 12, so the next retirement
        // waits 36 checks. That one sticks, so the one after it lowers the multiplier to 11.
        let demand = [vec![3; 12], vec![0; 30], vec![3; 6], vec![0; 80]].concat();
        let trace = Trace {
            demand,
            ..Trace::new(cfg(Algorithm::Busyness), limits(1, 3))
        };
        let out = run(&trace);
        let (spawned, retired) = events(&out.plans);
        assert_eq!(spawned, vec![3, 6, 45]);
        // Windows close at multiples of 3; the load ends after check 48 (last busy window).
        assert_eq!(retired, vec![42, 48 + 36, 48 + 36 + 36]);
        let Cheaper::Busyness(b) = out.cheaper else {
            panic!("busyness expected");
        };
        assert_eq!(b.multiplier(), 11);
    }

    #[test]
    fn a_spawn_long_after_a_retirement_is_no_flap() {
        // Retirement at 42; then a steady 50% load (no low windows) for 40 checks; then a
        // spawn 42 checks after the retirement, beyond its 30-check wait: no penalty, so the
        // next retirement after the load ends waits 30 checks, not 36.
        let demand = [
            vec![3; 12],
            vec![0; 30],
            vec![1; 40],
            vec![3; 6],
            vec![0; 40],
        ]
        .concat();
        let trace = Trace {
            demand,
            ..Trace::new(cfg(Algorithm::Busyness), limits(1, 3))
        };
        let out = run(&trace);
        let (spawned, retired) = events(&out.plans);
        assert_eq!(spawned, vec![3, 6, 84]);
        // The window closing at 90 is mid-band (one busy check in three), then low ones.
        assert_eq!(retired, vec![42, 90 + 30]);
        let Cheaper::Busyness(b) = out.cheaper else {
            panic!("busyness expected");
        };
        assert_eq!(b.multiplier(), 10);
    }

    #[test]
    fn a_busy_check_at_the_window_edge_is_not_full_busyness() {
        // Light load, busy time counted only at completion: a request in flight exactly when
        // the window closes, nothing completed in the window. uWSGI reads 100% and spawns.
        let mut b = busyness(1, 4);
        let mut sb = board(1, 0, &[Idle]);
        for (now, state) in [(1, Idle), (2, Idle), (3, Busy)] {
            sb.now = Duration::from_secs(now);
            sb.workers[0].state = state;
            sb.workers[0].busy_threads = u32::from(state == Busy);
            let v = b.decide(&sb);
            assert_eq!(v.decision, Decision::Hold, "{}", v.why);
        }
        assert_eq!(b.last_busyness(), Some(0.0));
    }

    #[test]
    fn a_recycled_worker_is_a_new_baseline_not_a_wrap() {
        // uWSGI issue 1463: 7 workers, a handful of fast requests, one worker recycled:
        // the slot's counter restarts, the unsigned delta wraps, "14%" (100% / 7).
        let mut b = busyness(1, 8);
        let mut sb = board(1, 0, &[Idle; 7]);
        for w in &mut sb.workers {
            w.busy_time = secs(500.0);
        }
        b.decide(&sb);
        sb.now = secs(2.0);
        // Worker 3 is recycled: same place in the list, a new id, counter from zero.
        sb.workers[2].id = 100;
        sb.workers[2].busy_time = secs(0.01);
        // Worker 5's counter goes backwards (a bug upstream): rebased too.
        sb.workers[4].busy_time = secs(1.0);
        b.decide(&sb);
        sb.now = secs(3.0);
        sb.workers[0].busy_time = secs(500.02);
        let v = b.decide(&sb);
        assert_eq!(v.decision, Decision::Hold, "{}", v.why);
        let avg = b.last_busyness().expect("a window closed");
        assert!(avg < 1.0, "{avg}");
    }

    #[test]
    fn a_request_longer_than_the_window_counts_as_busy() {
        // Busy time frozen (counted at completion), the worker busy at every check.
        let mut b = busyness(1, 4);
        let sb0 = board(1, 0, &[Busy]);
        let got: Vec<_> = (1..=3)
            .map(|now| {
                let mut sb = sb0.clone();
                sb.now = Duration::from_secs(now);
                b.decide(&sb)
            })
            .map(|v| v.decision)
            .collect();
        assert_eq!(
            got,
            vec![Decision::Hold, Decision::Hold, Decision::Spawn(1)]
        );
        assert_eq!(b.last_busyness(), Some(100.0));
    }

    #[test]
    fn workers_are_measured_over_the_time_they_were_ready() {
        // Two workers 30% busy for the whole window, a third ready only at its last check:
        // it is not measured yet, so the average stays 30% (uWSGI counts it as 0%: 20%, and
        // a low-busyness window towards retiring the worker it just spawned).
        let mut b = busyness(1, 8);
        let mut sb = board(1, 0, &[Idle, Idle, Starting]);
        b.decide(&sb);
        sb.now = secs(2.0);
        b.decide(&sb);
        sb.now = secs(3.0);
        sb.workers[0].busy_time = secs(0.6);
        sb.workers[1].busy_time = secs(0.6);
        sb.workers[2].state = Idle;
        let v = b.decide(&sb);
        assert_eq!(v.decision, Decision::Hold);
        let avg = b.last_busyness().expect("a window closed");
        assert!((avg - 30.0).abs() < 1e-6, "{avg}");
    }

    #[test]
    fn retiring_and_exited_workers_leave_the_average() {
        // Worker 1 fully busy; worker 2 idle until it is chosen to retire mid-window, worker
        // 3 exits: only worker 1 is measured, 100% > 50%, spawn. Counting worker 2 at 0%
        // would read 50% and hold.
        let mut b = busyness(1, 8);
        let mut sb = board(0, 0, &[Busy, Idle, Idle]);
        for now in 1..=3u64 {
            sb.now = Duration::from_secs(now);
            sb.workers[0].busy_time = Duration::from_secs(now);
            if now == 2 {
                sb.workers[1].state = Retiring;
                sb.workers.truncate(2);
            }
            let d = b.decide(&sb).decision;
            if now == 3 {
                assert_eq!(d, Decision::Spawn(1));
            }
        }
        assert_eq!(b.tracks.keys().copied().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn threads_divide_the_busy_time() {
        // 4 threads, 2 thread-seconds a second: 50%, not above the 50% threshold.
        let mut b = busyness(1, 8);
        let mut sb = board(0, 0, &[Idle]);
        sb.workers[0].threads = 4;
        for now in 1..=4u64 {
            sb.now = Duration::from_secs(now);
            sb.workers[0].busy_time = Duration::from_secs(2 * now);
            assert_eq!(b.decide(&sb).decision, Decision::Hold);
        }
        assert_eq!(b.last_busyness(), Some(50.0));
    }

    #[test]
    fn emergency_queue_spawns_at_once_minus_starting_capacity() {
        let mut b = busyness(1, 8);
        assert_eq!(
            b.decide(&board(1, 40, &[Busy])).decision,
            Decision::Spawn(1)
        );
        let mut b = busyness(1, 8);
        let v = b.decide(&board(1, 34, &[Busy, Starting, Starting]));
        assert_eq!(v.decision, Decision::Hold, "{}", v.why);
        let mut disabled = Busyness::new(
            &ScalingConfig {
                busyness_backlog: 0,
                ..cfg(Algorithm::Busyness)
            },
            &limits(1, 8),
        );
        assert_eq!(
            disabled.decide(&board(1, 0, &[Idle])).decision,
            Decision::Hold
        );
    }

    #[test]
    fn a_busy_window_waits_for_starting_workers() {
        let mut b = busyness(1, 8);
        let mut sb = board(0, 0, &[Busy, Starting]);
        let mut last = Decision::Hold;
        for now in 1..=3u64 {
            sb.now = Duration::from_secs(now);
            sb.workers[0].busy_time = Duration::from_secs(now);
            last = b.decide(&sb).decision;
        }
        assert_eq!(last, Decision::Hold);
        assert_eq!(b.last_busyness(), Some(100.0));
    }

    #[test]
    fn mid_band_windows_pause_then_reset_the_low_count() {
        // Retirement needs 3 x 2 = 6 low checks (two low windows).
        let c = ScalingConfig {
            busyness_multiplier: 2,
            ..cfg(Algorithm::Busyness)
        };
        // Per-window busy seconds of each of the two workers: low = 0.3 s (10%), mid = 1.2 s
        // (40%).
        let run_windows = |pattern: &[f64]| {
            let mut b = Busyness::new(&c, &limits(1, 8));
            let mut sb = board(0, 0, &[Idle, Idle]);
            let mut t = 0u64;
            let mut out = vec![];
            for busy in pattern {
                // Windows close on every third check: record the decision of each.
                for check in 1..=3 {
                    t += 1;
                    sb.now = Duration::from_secs(t);
                    for w in &mut sb.workers {
                        w.busy_time += Duration::from_secs_f64(busy / 3.0);
                    }
                    let d = b.decide(&sb).decision;
                    if check == 3 {
                        out.push(d);
                    }
                }
            }
            out
        };
        let (hold, retire) = (Decision::Hold, Decision::Retire(1));
        assert_eq!(run_windows(&[0.3, 0.3]), vec![hold, retire]);
        assert_eq!(run_windows(&[0.3, 1.2, 0.3]), vec![hold, hold, retire]);
        assert_eq!(
            run_windows(&[0.3, 1.2, 1.2, 1.2, 0.3, 0.3]),
            vec![hold, hold, hold, hold, hold, retire]
        );
    }
}
