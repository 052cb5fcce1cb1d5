//! Load tracking: one [`LoadSample`] a tick into a [`LoadTracker`] that keeps a minute of
//! history, and [`LoadTracker::report`] building the [`LoadReport`] served at `/load`.
//!
//! Pure: the caller reads the clock and its counters, this only does arithmetic. Every number
//! in a report is finite (never NaN or infinite): a window with no elapsed time or no
//! capacity reports 0, and a window longer than the history uses the history there is.

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::WorkerLimits;
use crate::load::{LoadReport, QueueStats, Rates, Window, WorkerCounts, LOAD_REPORT_VERSION};
use crate::scoreboard::{Scoreboard, SlotState};

/// The longest window reported.
pub const HISTORY: Duration = Duration::from_secs(60);

/// The most samples kept, whatever the tick rate (61 at one a second cover [`HISTORY`]).
pub const MAX_SAMPLES: usize = 600;

/// What the master measured at one tick. Counters are cumulative over the server's life,
/// including workers that have exited, so that they never go backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadSample {
    /// Monotonic time of the sample (the scoreboard's clock).
    pub now: Duration,
    /// Requests completed so far.
    pub completed_requests: u64,
    /// Thread time spent on requests so far, across all workers.
    pub busy_time: Duration,
    /// Threads able to run requests now: those of ready workers, plus the busy threads of
    /// retiring ones.
    pub capacity_threads: u32,
    /// Requests in the server now: running plus queued.
    pub in_system: u32,
    /// Requests that reached the server so far, refused ones included.
    pub arrived_requests: u64,
}

impl LoadSample {
    /// A sample with the instantaneous parts (`now`, capacity, requests in the server) taken
    /// from `sb`, and the lifetime counters from the caller.
    pub fn observe(sb: &Scoreboard, totals: Totals) -> Self {
        let mut capacity = 0u32;
        let mut running = 0u32;
        for w in &sb.workers {
            running = running.saturating_add(w.busy_threads);
            capacity = capacity.saturating_add(match w.state {
                SlotState::Idle | SlotState::Busy => w.threads,
                SlotState::Retiring => w.busy_threads,
                SlotState::Starting => 0,
            });
        }
        LoadSample {
            now: sb.now,
            completed_requests: totals.completed,
            busy_time: totals.busy,
            capacity_threads: capacity,
            in_system: running.saturating_add(sb.queue_depth),
            arrived_requests: totals.arrived,
        }
    }
}

/// A server's lifetime counters, as its dispatcher keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Requests completed.
    pub completed: u64,
    /// Thread time spent on requests, across all workers (live and exited).
    pub busy: Duration,
    /// Requests that reached the server, refused ones included.
    pub arrived: u64,
}

/// A minute of [`LoadSample`]s.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadTracker {
    samples: VecDeque<LoadSample>,
}

impl LoadTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        LoadTracker::default()
    }

    /// Adds the sample of this tick. A sample at the same time as the last one replaces it; one
    /// older than the last is ignored (the clock is monotonic, so that is a caller bug).
    /// Samples older than needed for the 60-second window are dropped.
    pub fn record(&mut self, sample: LoadSample) {
        match self.samples.back_mut() {
            Some(last) if sample.now < last.now => return,
            Some(last) if sample.now == last.now => *last = sample,
            _ => self.samples.push_back(sample),
        }
        // Keep the newest sample at or before `now - HISTORY` as the window's base.
        while self.samples.len() > 2 && self.samples[1].now + HISTORY <= sample.now {
            self.samples.pop_front();
        }
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True before the first sample.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Averages over the last `span` (or the whole history, if shorter). The window starts at
    /// the sample closest to `now - span`. With a single sample there is no interval: the
    /// rate is 0, concurrency is the sample's, and utilization is the share of the capacity
    /// those requests occupy.
    pub fn window(&self, span: Duration) -> Window {
        let Some(last) = self.samples.back() else {
            return Window::default();
        };
        let target = last.now.saturating_sub(span);
        let start = self
            .samples
            .iter()
            .position(|s| s.now >= target)
            .map(|i| {
                // The closest of the samples either side of the target; the older on a tie.
                if i > 0 && target - self.samples[i - 1].now <= self.samples[i].now - target {
                    i - 1
                } else {
                    i
                }
            })
            .unwrap_or(0);
        let base = self.samples[start];
        let elapsed = last.now.saturating_sub(base.now).as_secs_f64();
        if elapsed <= 0.0 {
            let cap = f64::from(last.capacity_threads);
            let running = f64::from(last.in_system.min(last.capacity_threads));
            return Window {
                requests_per_second: 0.0,
                utilization: finite(ratio(running, cap)),
                concurrency: f64::from(last.in_system),
                arrivals_per_second: 0.0,
                service_seconds: 0.0,
            };
        }

        let completed = last
            .completed_requests
            .saturating_sub(base.completed_requests);
        let busy = last.busy_time.saturating_sub(base.busy_time).as_secs_f64();
        let mut capacity = 0.0;
        let mut demand = 0.0;
        for pair in self.samples.range(start..).collect::<Vec<_>>().windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let dt = b.now.saturating_sub(a.now).as_secs_f64();
            capacity += dt * f64::from(a.capacity_threads + b.capacity_threads) / 2.0;
            demand += dt * f64::from(a.in_system + b.in_system) / 2.0;
        }
        let arrived = last.arrived_requests.saturating_sub(base.arrived_requests);
        Window {
            requests_per_second: finite(completed as f64 / elapsed),
            utilization: finite(ratio(busy, capacity).min(1.0)),
            concurrency: finite(demand / elapsed),
            arrivals_per_second: finite(arrived as f64 / elapsed),
            service_seconds: finite(ratio(busy, completed as f64)),
        }
    }

    /// The load report: worker counts and queue from `sb`, averages from the history.
    /// `threads` is the configured threads per worker, `max_queue` the `--max-queue` bound,
    /// `draining` true after SIGTERM, `unix_ms` the wall-clock time of the report.
    pub fn report(
        &self,
        sb: &Scoreboard,
        limits: &WorkerLimits,
        threads: u32,
        max_queue: u32,
        draining: bool,
        unix_ms: u64,
    ) -> LoadReport {
        let workers = WorkerCounts {
            min: limits.min,
            max: limits.max,
            total: sb.workers.len() as u32,
            busy: sb.count(SlotState::Busy),
            idle: sb.count(SlotState::Idle),
            starting: sb.count(SlotState::Starting),
            retiring: sb.count(SlotState::Retiring),
            threads,
        };
        let active = sb.active();
        let in_flight = sb
            .workers
            .iter()
            .map(|w| w.busy_threads)
            .fold(0u32, u32::saturating_add);
        LoadReport {
            version: LOAD_REPORT_VERSION,
            time_unix_ms: unix_ms,
            workers,
            queue: QueueStats {
                depth: sb.queue_depth,
                oldest_wait_ms: if sb.queue_depth == 0 {
                    0
                } else {
                    u64::try_from(sb.oldest_wait.as_millis()).unwrap_or(u64::MAX)
                },
                max: max_queue,
            },
            in_flight,
            rates: Rates {
                s1: self.window(Duration::from_secs(1)),
                s10: self.window(Duration::from_secs(10)),
                s60: self.window(HISTORY),
            },
            saturated: active > 0
                && active >= limits.max
                && workers.busy == active
                && sb.queue_depth > 0,
            draining,
        }
    }
}

/// `num / den`, or 0 when `den` is not positive.
fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// `x`, or 0 when it is NaN or infinite.
fn finite(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::scoreboard::WorkerSlot;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn sample(now: u64, completed: u64, busy: u64, capacity: u32, in_system: u32) -> LoadSample {
        LoadSample {
            now: secs(now),
            completed_requests: completed,
            busy_time: secs(busy),
            capacity_threads: capacity,
            in_system,
            arrived_requests: completed,
        }
    }

    fn slot(id: u64, state: SlotState, threads: u32, busy_threads: u32) -> WorkerSlot {
        WorkerSlot {
            id,
            state,
            busy_threads,
            threads,
            busy_time: Duration::ZERO,
            spawned_at: Duration::ZERO,
            requests: 0,
            memory_bytes: None,
        }
    }

    fn limits(min: u32, max: u32) -> WorkerLimits {
        WorkerLimits {
            min,
            max,
            initial: min,
        }
    }

    #[test]
    fn empty_and_single_sample_windows_are_finite() {
        let mut t = LoadTracker::new();
        assert_eq!(t.window(secs(10)), Window::default());
        t.record(sample(5, 100, 7, 4, 6));
        let w = t.window(secs(10));
        assert_eq!(
            w,
            Window {
                requests_per_second: 0.0,
                utilization: 1.0,
                concurrency: 6.0,
                arrivals_per_second: 0.0,
                service_seconds: 0.0,
            }
        );
        // No capacity at all (every worker starting).
        let mut t = LoadTracker::new();
        t.record(sample(5, 0, 0, 0, 3));
        assert_eq!(t.window(secs(1)).utilization, 0.0);
    }

    #[test]
    fn steady_load_gives_exact_rates_for_every_window() {
        // 4 threads, 3 of them busy all the time, 50 requests a second, 5 in the server.
        let mut t = LoadTracker::new();
        for s in 0..=120 {
            t.record(sample(s, 50 * s, 3 * s, 4, 5));
        }
        for span in [1, 10, 60] {
            let w = t.window(secs(span));
            assert_eq!(w.requests_per_second, 50.0, "{span}");
            assert_eq!(w.utilization, 0.75, "{span}");
            assert_eq!(w.concurrency, 5.0, "{span}");
            assert_eq!(w.arrivals_per_second, 50.0, "{span}");
            assert_eq!(w.service_seconds, 0.06, "{span}");
        }
        // A minute and one sample of base.
        assert_eq!(t.len(), 61);
    }

    #[test]
    fn windows_see_only_their_span() {
        // 50 s idle, then 10 s with 20 requests a second and 2 of 2 threads busy.
        let mut t = LoadTracker::new();
        for s in 0..=50 {
            t.record(sample(s, 0, 0, 2, 0));
        }
        for s in 51..=60 {
            let d = s - 50;
            t.record(sample(s, 20 * d, 2 * d, 2, 2));
        }
        let (s1, s10, s60) = (t.window(secs(1)), t.window(secs(10)), t.window(secs(60)));
        assert_eq!((s1.requests_per_second, s1.utilization), (20.0, 1.0));
        assert_eq!((s10.requests_per_second, s10.utilization), (20.0, 1.0));
        // Trapezoids: the step from 0 to 2 in the server is averaged over its second.
        assert_eq!(s10.concurrency, 1.9);
        assert!((s60.requests_per_second - 200.0 / 60.0).abs() < 1e-9);
        assert!((s60.utilization - 20.0 / 120.0).abs() < 1e-9);
    }

    #[test]
    fn arrivals_are_counted_beyond_what_the_threads_complete() {
        // 2 threads busy all the time, 40 completions a second (50 ms each), while 100 a
        // second arrive: the offered load is 100 x 0.05 = 5 threads, not the 2 running.
        let mut t = LoadTracker::new();
        for s in 0..=10 {
            t.record(LoadSample {
                arrived_requests: 100 * s,
                ..sample(s, 40 * s, 2 * s, 2, 2)
            });
        }
        let w = t.window(secs(10));
        assert_eq!(w.arrivals_per_second, 100.0);
        assert_eq!(w.requests_per_second, 40.0);
        assert!((w.service_seconds - 0.05).abs() < 1e-12, "{w:?}");
        assert!((w.arrivals_per_second * w.service_seconds - 5.0).abs() < 1e-9);
        // Nothing completed: no service time, never NaN.
        let mut idle = LoadTracker::new();
        idle.record(sample(0, 0, 0, 2, 0));
        idle.record(sample(1, 0, 1, 2, 1));
        assert_eq!(idle.window(secs(1)).service_seconds, 0.0);
    }

    #[test]
    fn short_history_uses_what_exists() {
        let mut t = LoadTracker::new();
        for s in 10..=13 {
            t.record(sample(s, 10 * (s - 10), 0, 1, 1));
        }
        // Only 3 s of history: the 60 s window is those 3 s.
        assert_eq!(t.window(secs(60)).requests_per_second, 10.0);
        assert_eq!(t.window(secs(60)), t.window(secs(10)));
    }

    #[test]
    fn jittered_ticks_pick_the_closest_base() {
        let mut t = LoadTracker::new();
        for (now_ms, done) in [(0, 0), (980, 10), (1960, 30)] {
            t.record(LoadSample {
                now: Duration::from_millis(now_ms),
                completed_requests: done,
                ..LoadSample::default()
            });
        }
        // 1 s back from 1.96 s is 0.96 s: the sample at 0.98 s, not the one at 0.
        let w = t.window(secs(1));
        assert!((w.requests_per_second - 20.0 / 0.98).abs() < 1e-9);
    }

    #[test]
    fn same_time_replaces_and_older_is_ignored() {
        let mut t = LoadTracker::new();
        t.record(sample(1, 0, 0, 1, 0));
        t.record(sample(2, 5, 0, 1, 0));
        t.record(sample(2, 8, 0, 1, 0));
        t.record(sample(1, 100, 0, 1, 0));
        assert_eq!(t.len(), 2);
        assert_eq!(t.window(secs(1)).requests_per_second, 8.0);
    }

    #[test]
    fn counters_going_backwards_do_not_go_negative() {
        let mut t = LoadTracker::new();
        t.record(sample(1, 100, 50, 1, 0));
        t.record(sample(2, 10, 5, 1, 0));
        let w = t.window(secs(1));
        assert_eq!((w.requests_per_second, w.utilization), (0.0, 0.0));
    }

    #[test]
    fn observe_counts_capacity_and_demand() {
        let sb = Scoreboard {
            now: secs(9),
            queue_depth: 4,
            oldest_wait: Duration::from_millis(1500),
            workers: vec![
                slot(1, SlotState::Busy, 2, 2),
                slot(2, SlotState::Idle, 2, 1),
                slot(3, SlotState::Starting, 2, 0),
                slot(4, SlotState::Retiring, 2, 1),
            ],
        };
        let s = LoadSample::observe(
            &sb,
            Totals {
                completed: 7,
                busy: secs(3),
                arrived: 7,
            },
        );
        assert_eq!(s, sample(9, 7, 3, 5, 8));
    }

    #[test]
    fn report_counts_workers_and_flags_saturation() {
        let mut t = LoadTracker::new();
        t.record(sample(0, 0, 0, 2, 2));
        t.record(sample(1, 10, 2, 2, 5));
        let sb = Scoreboard {
            now: secs(1),
            queue_depth: 3,
            oldest_wait: Duration::from_millis(1500),
            workers: vec![
                slot(1, SlotState::Busy, 1, 1),
                slot(2, SlotState::Busy, 1, 1),
            ],
        };
        let r = t.report(&sb, &limits(1, 2), 1, 100, false, 1234);
        assert_eq!(r.version, LOAD_REPORT_VERSION);
        assert_eq!(r.time_unix_ms, 1234);
        assert_eq!(
            r.workers,
            WorkerCounts {
                min: 1,
                max: 2,
                total: 2,
                busy: 2,
                idle: 0,
                starting: 0,
                retiring: 0,
                threads: 1
            }
        );
        assert_eq!(
            r.queue,
            QueueStats {
                depth: 3,
                oldest_wait_ms: 1500,
                max: 100
            }
        );
        assert_eq!(r.in_flight, 2);
        assert_eq!(r.rates.s1.requests_per_second, 10.0);
        assert!(r.saturated);

        // Not saturated: below MAX, or an idle/starting worker, or nothing queued.
        let not =
            |sb: &Scoreboard, max: u32| !t.report(sb, &limits(1, max), 1, 100, true, 0).saturated;
        assert!(not(&sb, 3));
        let mut one_starting = sb.clone();
        one_starting.workers[1].state = SlotState::Starting;
        assert!(not(&one_starting, 2));
        let mut empty_queue = sb.clone();
        empty_queue.queue_depth = 0;
        assert!(not(&empty_queue, 2));
        // A retiring worker does not count towards MAX.
        let mut retiring = sb.clone();
        retiring.workers.push(slot(3, SlotState::Retiring, 1, 1));
        assert!(
            t.report(&retiring, &limits(1, 2), 1, 100, false, 0)
                .saturated
        );
        // A stale oldest-wait with an empty queue reads 0.
        empty_queue.oldest_wait = secs(3);
        let r = t.report(&empty_queue, &limits(1, 2), 1, 100, false, 0);
        assert_eq!(r.queue.oldest_wait_ms, 0);
    }

    proptest! {
        #[test]
        fn reports_are_always_finite_and_bounded(
            steps in proptest::collection::vec(
                (0u64..3000, 0u64..1000, 0u64..5000, 0u32..64, 0u32..200, 0u64..2000),
                0..150,
            ),
        ) {
            let mut t = LoadTracker::new();
            let (mut now, mut done, mut busy, mut arrived) = (0u64, 0u64, 0u64, 0u64);
            for (dt_ms, dn, db_ms, cap, in_sys, da) in steps {
                now += dt_ms;
                done += dn;
                busy += db_ms;
                arrived += da;
                t.record(LoadSample {
                    now: Duration::from_millis(now),
                    completed_requests: done,
                    busy_time: Duration::from_millis(busy),
                    capacity_threads: cap,
                    in_system: in_sys,
                    arrived_requests: arrived,
                });
                prop_assert!(t.len() <= MAX_SAMPLES);
            }
            let r = t.report(&Scoreboard::default(), &limits(1, 1), 1, 10, false, 0);
            let json = serde_json::to_string(&r).expect("a report serializes");
            prop_assert!(!json.contains("null"), "{}", json);
            for w in [r.rates.s1, r.rates.s10, r.rates.s60] {
                prop_assert!(w.requests_per_second >= 0.0 && w.requests_per_second.is_finite());
                prop_assert!((0.0..=1.0).contains(&w.utilization));
                prop_assert!(w.concurrency >= 0.0 && w.concurrency <= 200.0);
                prop_assert!(w.arrivals_per_second >= 0.0 && w.arrivals_per_second.is_finite());
                prop_assert!(w.service_seconds >= 0.0 && w.service_seconds.is_finite());
            }
        }
    }
}
