//! From what the pods reported in one tick to one [`TickSample`]: the demand (requests in the
//! servers), extrapolated to every ready pod when only a sample was scraped, once counting the
//! pods that did not answer as idle (for scaling up) and once as fully loaded (for scaling
//! down), as the HPA does.

use std::collections::VecDeque;
use std::time::Duration;

use wsgiscale_core::load::LoadReport;

use super::Policy;

/// What one pod's load report says, reduced to the numbers the autoscaler uses.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PodLoad {
    /// Requests in the server, running plus queued, averaged over the last second
    /// (`rates.1s.concurrency`: `in_flight + queue.depth` averaged rather than read at one
    /// instant), and never below what is queued right now.
    pub concurrency: f64,
    /// Requests running: `concurrency` less what is queued now.
    pub running: f64,
    /// Requests waiting for a worker now.
    pub queued: f64,
    /// Requests running now.
    pub in_flight: u32,
    /// Requests waiting for a worker now.
    pub queue_depth: u32,
    /// Workers with every thread busy.
    pub busy_workers: u32,
    /// Live worker processes.
    pub total_workers: u32,
    /// The server's workers.max.
    pub max_workers: u32,
    /// Threads per worker.
    pub threads: u32,
    /// At workers.max, every worker busy, and requests queueing: the pod cannot grow by itself.
    pub saturated: bool,
    /// Requests reaching the server per second over the last second, refused ones included
    /// (`rates.1s.arrivals_per_second`).
    pub arrivals: f64,
    /// Mean thread time per completed request over the last 10 s, seconds (0 when unknown:
    /// nothing completed, or a server that predates the field).
    pub service: f64,
    /// Requests completed per second over the last second.
    pub completions: f64,
}

impl PodLoad {
    /// The numbers of a load report.
    pub fn from_report(report: &LoadReport) -> Self {
        let threads = report.workers.threads.max(1);
        let queued = f64::from(report.queue.depth);
        let averaged = report.rates.s1.concurrency;
        let (concurrency, running) = if averaged.is_finite() && averaged >= 0.0 {
            // The one-second average is far less noisy than one instant (a tick every 2 s
            // would sample in-flight counts with Poisson noise); what is queued now is taken
            // as the queued part of it.
            let c = averaged.max(queued);
            (c, c - queued)
        } else {
            let running = f64::from(report.in_flight);
            (running + queued, running)
        };
        PodLoad {
            concurrency,
            running,
            queued,
            in_flight: report.in_flight,
            queue_depth: report.queue.depth,
            busy_workers: report.workers.busy,
            total_workers: report.workers.total,
            max_workers: report.workers.max,
            threads,
            saturated: report.saturated,
            arrivals: nonneg(report.rates.s1.arrivals_per_second),
            service: nonneg(report.rates.s10.service_seconds),
            completions: nonneg(report.rates.s1.requests_per_second),
        }
    }

    /// The threads what arrives at this pod keeps busy (arrivals x service time, Little's
    /// law), when the service time is known.
    pub fn offered(&self) -> Option<f64> {
        offered(self.arrivals, self.service)
    }
}

/// The threads a load of `arrivals` per second keeps busy at `service` seconds each (Little's
/// law), or `None` while the service time is unknown (0: nothing has completed).
fn offered(arrivals: f64, service: f64) -> Option<f64> {
    (service > 0.0).then_some(arrivals * service)
}

/// `x` when finite and positive, else 0 (a report is not trusted to be sane).
fn nonneg(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

/// How far arrivals and completions may differ for a queue to count as steady: a tenth, or
/// [`QUEUE_STEADY_MIN_RATE`] at low rates (a second's counts are noisy).
pub const QUEUE_STEADY_SHARE: f64 = 0.1;

/// See [`QUEUE_STEADY_SHARE`]: requests per second.
pub const QUEUE_STEADY_MIN_RATE: f64 = 2.0;

/// Where a queue is going, from the rate requests join it and the rate they leave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueTrend {
    /// More arrive than complete: an open-loop burst. Counted as a queue, it would grow with
    /// the wait and ask for ever more pods; what arrives is the demand.
    Growing,
    /// As many arrive as complete: the queue stays, as in a closed loop of clients (a load
    /// test with N connections, a worker pool calling the app), where every waiting request
    /// is a client more capacity would serve at once.
    Steady,
    /// Fewer arrive than complete: the queue clears by itself.
    Draining,
}

impl QueueTrend {
    /// The trend of a queue joined at `arrivals` and left at `completions` per second.
    pub fn of(arrivals: f64, completions: f64) -> QueueTrend {
        let slack = (completions * QUEUE_STEADY_SHARE).max(QUEUE_STEADY_MIN_RATE);
        if arrivals > completions + slack {
            QueueTrend::Growing
        } else if arrivals < completions - slack {
            QueueTrend::Draining
        } else {
            QueueTrend::Steady
        }
    }
}

/// The demand of `carried` threads' worth of running work with `queued` requests waiting
/// behind it, by the queue's `trend`: steady, the queue in full up to what is carried (at
/// least one), so the count at most doubles a tick; growing, `offered` (arrivals x service
/// time) where it exceeds what is carried, plus the threads that clear the queue within
/// `drain` ([`backlog_demand`]); draining, those threads only. Without an offered load (no
/// service time known), the queue in full.
pub fn queue_demand(
    carried: f64,
    queued: f64,
    trend: QueueTrend,
    offered: Option<f64>,
    service: f64,
    drain: Duration,
) -> f64 {
    let Some(offered) = offered else {
        return carried + queued;
    };
    match trend {
        QueueTrend::Steady => carried + queued.min(carried.max(1.0)),
        QueueTrend::Growing => carried.max(offered) + backlog_demand(queued, service, drain),
        QueueTrend::Draining => carried + backlog_demand(queued, service, drain),
    }
}

/// The shortest wait [`held_arrivals`] divides by: below it a handful of requests held for a
/// moment would read as thousands a second.
pub const MIN_HELD_WAIT: Duration = Duration::from_secs(1);

/// Requests per second joining a FIFO that holds `held` requests, the oldest of which has
/// waited `oldest_wait`: while the queue stays non-empty every arrival joins it, and all the
/// held requests arrived within the oldest one's wait (Little's law on the queue), so
/// `held / oldest_wait` is the arrival rate. The wait is taken as at least [`MIN_HELD_WAIT`].
pub fn held_arrivals(held: u32, oldest_wait: Duration) -> f64 {
    f64::from(held) / oldest_wait.max(MIN_HELD_WAIT).as_secs_f64()
}

/// The threads that would clear a backlog of `requests`, each needing `service` seconds of a
/// thread, within `drain`. A backlog is not a load that stays: counting each queued request
/// as a thread (as for a request that runs) sizes for clearing the whole queue within one
/// service time, and a saturated queue grows with the wait (Little's law), so that count
/// reached replicas.max whenever one pod saturated.
pub fn backlog_demand(requests: f64, service: f64, drain: Duration) -> f64 {
    if drain.is_zero() {
        return requests;
    }
    requests * service / drain.as_secs_f64()
}

/// One ready pod in one tick: its age and its load, or `None` when it did not answer (timeout,
/// refused, bad report).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PodSample {
    /// Time since the pod started (its container's start, or its creation).
    pub age: Duration,
    /// Its load report, if it answered.
    pub load: Option<PodLoad>,
}

/// The demand and the workers of every ready pod in one tick.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TickSample {
    /// When the pods were scraped (monotonic).
    pub at: Duration,
    /// Ready pods at the time.
    pub ready_pods: u32,
    /// Pods asked for their load (all the ready ones, or a random sample of them).
    pub scraped: u32,
    /// Pods that answered.
    pub answered: u32,
    /// Requests in all the ready pods, pods that did not answer counted as idle.
    pub demand_up: f64,
    /// Requests in all the ready pods, pods that did not answer counted as fully loaded
    /// (every thread of workers.max busy).
    pub demand_down: f64,
    /// Requests running, in the pods that answered.
    pub in_flight: u32,
    /// Threads of the live workers, in the pods that answered.
    pub threads: u32,
    /// Busy workers, in the pods that answered.
    pub busy_workers: u32,
    /// Live workers, in the pods that answered.
    pub total_workers: u32,
    /// Queued requests, in the pods that answered.
    pub queue_depth: u32,
    /// Pods that answered saturated (at workers.max, all busy, queueing).
    pub saturated_pods: u32,
    /// Requests the activator holds for the app (waiting for a pod), included in both
    /// demands ([`TickSample::add_held`]): demand the pods have not seen yet.
    pub held: u32,
    /// Requests per second joining the activator's queue, while it holds any.
    pub held_arrivals: f64,
    /// Mean thread time per request over the pods that know it, seconds (0 when none does).
    pub service: f64,
    /// Requests completed per second by the ready pods (extrapolated from those that
    /// answered, as the demand is).
    pub completions: f64,
}

impl TickSample {
    /// Adds what the activators hold: `held` requests waiting, joining their queue at
    /// `arrivals` per second and leaving it as the pods complete requests. By that queue's
    /// [`QueueTrend`]: steady, each held request counts as one in flight (a closed loop of
    /// clients waiting for capacity), at most as many as the pods' own demand (the count at
    /// most doubles a tick); growing, every request of the app passes through the
    /// queue, so the app's whole offered load is `arrivals x service` threads, of which the
    /// pods' own demand is the part they already carry, and the backlog counts as the
    /// threads that clear it within `drain` ([`backlog_demand`]); draining, the backlog
    /// only. Without a service time (no pod has completed a request yet) each held request
    /// counts as one in flight.
    pub fn add_held(&mut self, held: u32, arrivals: f64, drain: Duration) {
        self.held = held;
        if held == 0 {
            return;
        }
        let arrivals = nonneg(arrivals);
        self.held_arrivals = arrivals;
        let trend = QueueTrend::of(arrivals, self.completions);
        let (service, held) = (self.service, f64::from(held));
        let offered = offered(arrivals, service);
        let total = |pods| queue_demand(pods, held, trend, offered, service, drain);
        self.demand_up = total(self.demand_up);
        self.demand_down = total(self.demand_down);
    }
}

/// How much a pod of age `age` counts in the averages that extrapolate a sample: its age over
/// the start-up period, at least 0.1, at most 1. A pod that just became ready still has its
/// initial workers and a share of the traffic that is growing; what it reports says little
/// about the others.
pub fn compute_weight(age: Duration, startup: Duration) -> f64 {
    if startup.is_zero() {
        return 1.0;
    }
    (age.as_secs_f64() / startup.as_secs_f64()).clamp(0.1, 1.0)
}

/// The requests a pod of weight `weight` ([`compute_weight`]) counts for, `full` being the
/// threads it runs at workers.max. This is where the two levels meet:
///
/// * Requests running count in full: on average they are arrivals x service time whatever
///   the number of pods, so removing a pod does not raise them (queues would: counting every
///   queued request makes concurrency grow when capacity shrinks, and a load near a pod
///   boundary flaps).
/// * Requests queued in a pod that can still add threads (below workers.max) are the worker
///   level's business up to that headroom: its own algorithm spawns workers for them within
///   seconds. Only what queues beyond the headroom counts.
/// * A saturated pod (at workers.max and queueing) counts its queue by the queue's
///   [`QueueTrend`]: a steady queue in full up to what the pod runs (a closed loop of
///   clients, each sending its next request when the last one returns: the waiting requests
///   are clients more capacity would serve at once; bounded so, the count at most doubles a
///   tick, and a backlog that merely stays under a critical load does not ask for a pod per
///   request); a growing one by what arrives, arrivals x service time (Little's
///   law: the threads that load keeps busy, which its running requests stop showing once
///   every thread is taken), plus the threads that clear the queue within `drain`
///   ([`backlog_demand`]); a draining one by those threads only. A server that does not
///   report arrivals and service time counts running plus queued.
/// * A young pod (weight below 1) that is not saturated is still growing from workers.initial
///   while it takes its full share of the traffic: its excess counts only by its weight.
pub fn compute_pod_demand(load: &PodLoad, weight: f64, full: f64, drain: Duration) -> f64 {
    if load.saturated {
        return queue_demand(
            load.running,
            load.queued,
            QueueTrend::of(load.arrivals, load.completions),
            load.offered(),
            load.service,
            drain,
        );
    }
    let headroom = (full - load.running).max(0.0);
    let excess = (load.queued - headroom).max(0.0);
    load.running + weight.clamp(0.0, 1.0) * excess
}

/// One tick's [`TickSample`] from the pods scraped (`pods`) out of `ready_pods`.
///
/// With every ready pod scraped, the demand is the sum of what they count for
/// ([`compute_pod_demand`]). With a sample, the demand is `ready_pods` times the sample's
/// mean, weighted by [`compute_weight`]. A pod that did not answer adds nothing to
/// `demand_up` and a full pod (`policy.pod_capacity`) to `demand_down`.
pub fn compute_tick(
    at: Duration,
    ready_pods: u32,
    pods: &[PodSample],
    policy: &Policy,
) -> TickSample {
    let mut t = TickSample {
        at,
        ready_pods,
        scraped: pods.len() as u32,
        ..TickSample::default()
    };
    let full = policy.pod_capacity;
    let (mut sum_up, mut sum_down) = (0.0, 0.0);
    let (mut wsum, mut wup, mut wdown) = (0.0, 0.0, 0.0);
    let (mut service_sum, mut service_n) = (0.0, 0u32);
    let mut completions = 0.0;
    for p in pods {
        let w = compute_weight(p.age, policy.startup_period);
        wsum += w;
        match &p.load {
            Some(l) => {
                t.answered += 1;
                let c = compute_pod_demand(l, w, full, policy.panic_window);
                if l.service > 0.0 {
                    service_sum += l.service;
                    service_n += 1;
                }
                completions += l.completions;
                t.in_flight = t.in_flight.saturating_add(l.in_flight);
                t.threads = t
                    .threads
                    .saturating_add(l.total_workers.saturating_mul(l.threads));
                t.busy_workers = t.busy_workers.saturating_add(l.busy_workers);
                t.total_workers = t.total_workers.saturating_add(l.total_workers);
                t.queue_depth = t.queue_depth.saturating_add(l.queue_depth);
                t.saturated_pods += u32::from(l.saturated);
                sum_up += c;
                sum_down += c;
                wup += w * c;
                wdown += w * c;
            }
            None => {
                sum_down += full;
                wdown += w * full;
            }
        }
    }
    if service_n > 0 {
        t.service = service_sum / f64::from(service_n);
    }
    if t.answered > 0 {
        t.completions = completions * f64::from(ready_pods) / f64::from(t.answered);
    }
    if pods.is_empty() {
        return t;
    }
    if pods.len() as u32 >= ready_pods {
        t.demand_up = sum_up;
        t.demand_down = sum_down;
    } else {
        let n = f64::from(ready_pods);
        t.demand_up = n * wup / wsum;
        t.demand_down = n * wdown / wsum;
    }
    t
}

/// The ticks of the last stable window, oldest first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Samples {
    ticks: VecDeque<TickSample>,
}

/// Averages of the ticks within one window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowAverage {
    /// Ticks averaged.
    pub ticks: u32,
    /// Mean [`TickSample::demand_up`].
    pub demand_up: f64,
    /// Mean [`TickSample::demand_down`].
    pub demand_down: f64,
    /// Running requests over live threads, in the pods that answered (0 to 1).
    pub utilization: f64,
    /// `demand_up` where the window's least-squares line is at its end (the mean with fewer
    /// than 3 ticks): the trend of a ramp, which the mean lags by half a window.
    pub trend_up: f64,
    /// The same for `demand_down`.
    pub trend_down: f64,
}

impl Samples {
    /// No ticks yet.
    pub fn new() -> Self {
        Samples::default()
    }

    /// Adds a tick and forgets the ticks older than `keep` before it. A tick not newer than the
    /// last one replaces it.
    pub fn push(&mut self, tick: TickSample, keep: Duration) {
        while self.ticks.back().is_some_and(|b| b.at >= tick.at) {
            self.ticks.pop_back();
        }
        self.ticks.push_back(tick);
        while self.ticks.len() > 1 && self.ticks.front().is_some_and(|f| f.at + keep <= tick.at) {
            self.ticks.pop_front();
        }
    }

    /// The newest tick.
    pub fn latest(&self) -> Option<&TickSample> {
        self.ticks.back()
    }

    /// Ticks held.
    pub fn len(&self) -> usize {
        self.ticks.len()
    }

    /// True before the first tick.
    pub fn is_empty(&self) -> bool {
        self.ticks.is_empty()
    }

    /// The ticks, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &TickSample> {
        self.ticks.iter()
    }

    /// Averages over the ticks newer than `now - span` (the newest always counts).
    pub fn average(&self, now: Duration, span: Duration) -> WindowAverage {
        let mut a = WindowAverage::default();
        let (mut busy, mut threads) = (0u64, 0u64);
        let mut points: Vec<(f64, f64, f64)> = Vec::new();
        for (i, t) in self.ticks.iter().enumerate().rev() {
            let newest = i + 1 == self.ticks.len();
            if !newest && t.at + span <= now {
                break;
            }
            points.push((t.at.as_secs_f64(), t.demand_up, t.demand_down));
            a.ticks += 1;
            a.demand_up += t.demand_up;
            a.demand_down += t.demand_down;
            busy += u64::from(t.in_flight);
            threads += u64::from(t.threads);
        }
        if a.ticks > 0 {
            a.demand_up /= f64::from(a.ticks);
            a.demand_down /= f64::from(a.ticks);
        }
        if threads > 0 {
            a.utilization = (busy as f64 / threads as f64).min(1.0);
        }
        a.trend_up = a.demand_up;
        a.trend_down = a.demand_down;
        if points.len() >= 3 {
            let n = points.len() as f64;
            let xm = points.iter().map(|p| p.0).sum::<f64>() / n;
            let sxx: f64 = points.iter().map(|p| (p.0 - xm).powi(2)).sum();
            if sxx > 0.0 {
                let end = now.as_secs_f64() - xm;
                let sup: f64 = points
                    .iter()
                    .map(|p| (p.0 - xm) * (p.1 - a.demand_up))
                    .sum();
                let sdown: f64 = points
                    .iter()
                    .map(|p| (p.0 - xm) * (p.2 - a.demand_down))
                    .sum();
                a.trend_up = (a.demand_up + sup / sxx * end).max(0.0);
                a.trend_down = (a.demand_down + sdown / sxx * end).max(0.0);
            }
        }
        a
    }
}

/// Which of `count` pods to scrape when at most `max` may be: all of them in order when
/// `count <= max`, else `max` distinct indices chosen at random from `seed` (a partial
/// Fisher-Yates shuffle on SplitMix64), sorted.
pub fn pick_sample(count: usize, max: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..count).collect();
    if count <= max {
        return idx;
    }
    let mut rng = SplitMix64(seed);
    for i in 0..max {
        let j = i + (rng.next_u64() % (count - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(max);
    idx.sort_unstable();
    idx
}

pub use wsgiscale_core::rng::SplitMix64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::testkit::policy;

    fn load(concurrency: f64) -> Option<PodLoad> {
        Some(PodLoad {
            concurrency,
            running: concurrency,
            in_flight: concurrency as u32,
            total_workers: 4,
            max_workers: 4,
            threads: 1,
            ..PodLoad::default()
        })
    }

    fn pod(age: u64, l: Option<PodLoad>) -> PodSample {
        PodSample {
            age: Duration::from_secs(age),
            load: l,
        }
    }

    #[test]
    fn every_pod_scraped_sums_and_missing_pods_count_both_ways() {
        let p = policy();
        let pods = [pod(100, load(3.0)), pod(1, load(1.0)), pod(100, None)];
        let t = compute_tick(Duration::from_secs(10), 3, &pods, &p);
        assert_eq!((t.scraped, t.answered), (3, 2));
        // The young pod's requests count in full; the silent pod is idle going up...
        assert_eq!(t.demand_up, 4.0);
        // ...and fully loaded (4 workers x 1 thread) going down.
        assert_eq!(t.demand_down, 8.0);
        assert_eq!(t.total_workers, 8);
    }

    #[test]
    fn a_sample_is_extrapolated_with_young_pods_weighing_less() {
        let p = policy();
        // 10 ready pods, 2 scraped: an old one with 4 in flight, a brand-new one with 0.
        let pods = [pod(300, load(4.0)), pod(0, load(0.0))];
        let t = compute_tick(Duration::from_secs(10), 10, &pods, &p);
        // Weighted mean (1 x 4 + 0.1 x 0) / 1.1, times 10 pods.
        assert!((t.demand_up - 40.0 / 1.1).abs() < 1e-9, "{}", t.demand_up);
        // Equal weights would have said 20.
        assert!(t.demand_up > 36.0);
    }

    #[test]
    fn report_numbers_split_running_and_queued_from_the_one_second_averages() {
        let mut r = LoadReport {
            version: 1,
            time_unix_ms: 0,
            workers: wsgiscale_core::load::WorkerCounts {
                max: 4,
                total: 4,
                busy: 4,
                threads: 2,
                ..Default::default()
            },
            queue: wsgiscale_core::load::QueueStats {
                depth: 7,
                ..Default::default()
            },
            in_flight: 8,
            rates: Default::default(),
            saturated: true,
            draining: false,
        };
        r.rates.s1.concurrency = 12.5;
        let l = PodLoad::from_report(&r);
        assert_eq!((l.running, l.queued, l.concurrency), (5.5, 7.0, 12.5));
        assert!(l.saturated);
        // The average is never below what is queued now.
        r.rates.s1.concurrency = 3.0;
        assert_eq!(PodLoad::from_report(&r).concurrency, 7.0);
        r.rates.s1.concurrency = f64::NAN;
        assert_eq!(PodLoad::from_report(&r).concurrency, 15.0);
        // Arrivals from the last second, service time from the last 10 s; nonsense is 0.
        r.rates.s1.arrivals_per_second = 30.0;
        r.rates.s10.service_seconds = 0.25;
        let l = PodLoad::from_report(&r);
        assert_eq!(
            (l.arrivals, l.service, l.offered()),
            (30.0, 0.25, Some(7.5))
        );
        r.rates.s10.service_seconds = f64::INFINITY;
        assert_eq!(PodLoad::from_report(&r).offered(), None);
    }

    #[test]
    fn samples_keep_a_window_and_average_the_span() {
        let mut s = Samples::new();
        for i in 0..40u64 {
            let t = TickSample {
                at: Duration::from_secs(2 * i),
                demand_up: i as f64,
                demand_down: i as f64,
                ..TickSample::default()
            };
            s.push(t, Duration::from_secs(60));
        }
        // 60 s at one tick per 2 s: 30 ticks (at 20..78 s).
        assert_eq!(s.len(), 30);
        let now = Duration::from_secs(78);
        let panic = s.average(now, Duration::from_secs(6));
        assert_eq!(panic.ticks, 3);
        assert_eq!(panic.demand_up, 38.0);
        assert_eq!(s.average(now, Duration::from_secs(60)).ticks, 30);
        // A zero span still sees the newest tick.
        assert_eq!(s.average(now, Duration::ZERO).ticks, 1);
    }

    #[test]
    fn the_trend_is_the_least_squares_line_at_the_end() {
        let mut s = Samples::new();
        for i in 0..30u64 {
            let t = TickSample {
                at: Duration::from_secs(2 * i),
                demand_up: i as f64,
                demand_down: 100.0 - i as f64,
                ..TickSample::default()
            };
            s.push(t, Duration::from_secs(60));
        }
        let a = s.average(Duration::from_secs(58), Duration::from_secs(60));
        assert!((a.demand_up - 14.5).abs() < 1e-9);
        assert!((a.trend_up - 29.0).abs() < 1e-9, "{a:?}");
        assert!((a.trend_down - 71.0).abs() < 1e-9, "{a:?}");
        // Two ticks: no line, the mean.
        let b = s.average(Duration::from_secs(58), Duration::from_secs(3));
        assert_eq!((b.ticks, b.trend_up), (2, b.demand_up));
    }

    #[test]
    fn pick_sample_is_all_or_a_distinct_random_subset() {
        assert_eq!(pick_sample(3, 16, 1), vec![0, 1, 2]);
        let s = pick_sample(100, 16, 42);
        assert_eq!(s.len(), 16);
        let mut d = s.clone();
        d.dedup();
        assert_eq!(d.len(), 16);
        assert!(s.iter().all(|&i| i < 100));
        assert_eq!(s, pick_sample(100, 16, 42), "deterministic for a seed");
        assert_ne!(s, pick_sample(100, 16, 43));
    }

    #[test]
    fn queues_count_beyond_the_worker_levels_headroom() {
        let l = |running: f64, queued: f64, saturated: bool| PodLoad {
            concurrency: running + queued,
            running,
            queued,
            saturated,
            ..PodLoad::default()
        };
        // 2 running of 4 at max, 1 queued: the worker level takes it, 2 count.
        assert_eq!(
            compute_pod_demand(&l(2.0, 1.0, false), 1.0, 4.0, DRAIN),
            2.0
        );
        // 40 queued: 2 of them fit the headroom, 38 count.
        assert_eq!(
            compute_pod_demand(&l(2.0, 40.0, false), 1.0, 4.0, DRAIN),
            40.0
        );
        // A brand-new pod: a tenth of the excess.
        assert!((compute_pod_demand(&l(2.0, 40.0, false), 0.1, 4.0, DRAIN) - 5.8).abs() < 1e-9);
        // Saturated, from a server that does not report its service time: everything,
        // young or not.
        assert_eq!(compute_pod_demand(&l(4.0, 3.0, true), 0.1, 4.0, DRAIN), 7.0);
    }

    const DRAIN: Duration = Duration::from_secs(6);

    #[test]
    fn a_saturated_pod_counts_its_arrivals_and_the_threads_that_clear_its_queue() {
        // 8 threads, 50 ms a request (160 a second at most), 300 arriving a second, 600
        // queued: the load keeps 15 threads busy, and the queue needs 5 more to clear in 6 s.
        let l = PodLoad {
            running: 8.0,
            queued: 600.0,
            concurrency: 608.0,
            saturated: true,
            arrivals: 300.0,
            completions: 160.0,
            service: 0.05,
            ..PodLoad::default()
        };
        assert_eq!(
            QueueTrend::of(l.arrivals, l.completions),
            QueueTrend::Growing
        );
        let d = compute_pod_demand(&l, 1.0, 8.0, DRAIN);
        assert!((d - 20.0).abs() < 1e-9, "{d}");
        // Counting the queue as requests in flight would have said 608.
        assert!(d < l.concurrency / 30.0);
        // The burst ended: the queue drains by itself, only the threads that clear it count.
        let draining = PodLoad {
            arrivals: 10.0,
            ..l
        };
        assert!((compute_pod_demand(&draining, 1.0, 8.0, DRAIN) - 13.0).abs() < 1e-9);
        // A closed loop: 14 clients on 8 threads, as many arrive as complete; the 6 waiting
        // are clients that more capacity would serve at once: they count in full...
        let closed = PodLoad {
            queued: 6.0,
            arrivals: 158.0,
            ..l
        };
        assert_eq!(QueueTrend::of(158.0, 160.0), QueueTrend::Steady);
        assert_eq!(compute_pod_demand(&closed, 1.0, 8.0, DRAIN), 14.0);
        // ...up to what the pod runs: the count at most doubles a tick.
        let more = PodLoad {
            queued: 600.0,
            ..closed
        };
        assert_eq!(compute_pod_demand(&more, 1.0, 8.0, DRAIN), 16.0);
        // A zero drain counts the queue in full.
        assert_eq!(backlog_demand(600.0, 0.05, Duration::ZERO), 600.0);
    }

    #[test]
    fn held_requests_add_the_offered_load_beyond_the_pods_and_their_backlog() {
        // One saturated pod carrying 8 threads' worth; 314 requests held, the oldest for 1 s:
        // 314 a second join the queue, which at 50 ms each is 15.7 threads in all, 7.7 beyond
        // what the pod carries; the backlog adds 314 x 0.05 / 6 = 2.6.
        let mut t = TickSample {
            demand_up: 8.0,
            demand_down: 8.0,
            service: 0.05,
            completions: 160.0,
            ..TickSample::default()
        };
        let rate = held_arrivals(314, Duration::from_secs(1));
        assert_eq!(rate, 314.0);
        t.add_held(314, rate, DRAIN);
        assert_eq!(t.held, 314);
        let want = 8.0 + (15.7 - 8.0) + 314.0 * 0.05 / 6.0;
        assert!((t.demand_up - want).abs() < 1e-9, "{t:?}");
        assert_eq!(t.demand_up, t.demand_down);
        // A closed loop through the activator: requests join the queue as fast as the pods
        // complete them; the held ones are clients waiting for capacity, one each.
        let pods = TickSample {
            demand_up: 8.0,
            demand_down: 8.0,
            service: 0.05,
            completions: 160.0,
            ..TickSample::default()
        };
        let mut closed = pods;
        closed.add_held(6, 155.0, DRAIN);
        assert_eq!(closed.demand_up, 14.0);
        // At most doubling what the pods count for.
        let mut many = pods;
        many.add_held(90, 155.0, DRAIN);
        assert_eq!(many.demand_up, 16.0);
        // No service time known yet (no pod completed a request): one each.
        let mut cold = TickSample::default();
        cold.add_held(5, 100.0, DRAIN);
        assert_eq!((cold.demand_up, cold.demand_down), (5.0, 5.0));
        // A handful held for a moment is not thousands a second.
        assert_eq!(held_arrivals(3, Duration::from_millis(2)), 3.0);
        assert_eq!(held_arrivals(0, Duration::ZERO), 0.0);
    }

    #[test]
    fn queue_trends_allow_a_tenth_or_two_a_second_of_noise() {
        assert_eq!(QueueTrend::of(100.0, 100.0), QueueTrend::Steady);
        assert_eq!(QueueTrend::of(109.0, 100.0), QueueTrend::Steady);
        assert_eq!(QueueTrend::of(111.0, 100.0), QueueTrend::Growing);
        assert_eq!(QueueTrend::of(89.0, 100.0), QueueTrend::Draining);
        assert_eq!(QueueTrend::of(3.0, 1.0), QueueTrend::Steady);
        assert_eq!(QueueTrend::of(4.0, 1.0), QueueTrend::Growing);
    }

    #[test]
    fn the_tick_averages_the_service_time_of_the_pods_that_know_it() {
        let p = policy();
        let with = |service: f64| {
            Some(PodLoad {
                service,
                ..load(1.0).expect("load")
            })
        };
        let pods = [
            pod(100, with(0.02)),
            pod(100, with(0.04)),
            pod(100, with(0.0)),
        ];
        let t = compute_tick(Duration::from_secs(10), 3, &pods, &p);
        assert!((t.service - 0.03).abs() < 1e-12, "{t:?}");
    }

    #[test]
    fn weights_grow_with_age() {
        let s = Duration::from_secs(30);
        assert_eq!(compute_weight(Duration::ZERO, s), 0.1);
        assert_eq!(compute_weight(Duration::from_secs(15), s), 0.5);
        assert_eq!(compute_weight(Duration::from_secs(90), s), 1.0);
        assert_eq!(compute_weight(Duration::ZERO, Duration::ZERO), 1.0);
    }
}
