//! The least any autoscaler could spend on a run (pure): a lower bound on the pod-seconds that
//! serve a run's arrivals at a given 99th percentile latency with a given number of failures,
//! for a policy that knows the future and whose pods start at once.
//!
//! The showdown's target asks wsgiscale for a p99 below the best HPA contender's at no more
//! pod-seconds than the cheapest one's. When the cheapest contender barely scaled, that pair
//! can be out of reach of every policy, not only of wsgiscale's; this bound says on which
//! runs it is, and how far a measured cost is from the least possible at its own latency.
//!
//! The model relaxes everything that makes real autoscaling cost more, so the bound is below
//! what any real policy pays:
//! - a pod is a fluid server of `capacity` requests a second (the harness's per-pod capacity:
//!   the lesser of CPU and worker slots), and pods beyond the minimum are bought by the
//!   request-second, at the very moment they are needed, with no start-up delay, no
//!   readiness, no whole pods and no upper bound;
//! - a request is served in time if its share of the fluid work is done within the latency
//!   plus `slots / capacity` (a pod takes up to `slots` requests at once: the fluid server
//!   finishes a request later than a real pod that starts it in a free slot, by at most that);
//! - the requests the target lets fail, and the 1% the p99 lets be late (plus one), cost
//!   nothing at all.
//!
//! With deadlines that are the arrivals shifted by the same latency, serving in arrival
//! order is optimal, and the least extra work is what a lazy schedule buys: the minimum pods'
//! capacity serves the queue whenever it holds work, and extra capacity finishes a request
//! only when its deadline comes (extra work done earlier could only take work from the
//! minimum pods, which are paid for anyway).

use std::collections::VecDeque;

/// The pods every policy of a run has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodModel {
    /// Pods always running (the replica minimum).
    pub min: u32,
    /// Requests a second one pod serves at most.
    pub capacity: f64,
    /// Requests one pod serves at once (worker processes x threads).
    pub slots: f64,
}

/// The least extra work, in requests, that serves every arrival within `deadline` seconds
/// of its arrival when `base_rate` requests a second of capacity are always there and extra
/// capacity is unlimited (fluid, in arrival order, extra capacity only at deadlines).
/// `arrivals` in seconds, in order.
pub fn extra_work(arrivals: &[f64], base_rate: f64, deadline: f64) -> f64 {
    if base_rate <= 0.0 {
        return arrivals.len() as f64;
    }
    // Requests not finished yet: (deadline, work left), oldest first.
    let mut queue: VecDeque<(f64, f64)> = VecDeque::new();
    let mut now = arrivals.first().copied().unwrap_or(0.0);
    let mut extra = 0.0;
    let mut advance = |queue: &mut VecDeque<(f64, f64)>, now: &mut f64, to: f64| {
        while let Some(&(due, left)) = queue.front() {
            let done_by_base = *now + left / base_rate;
            if done_by_base <= due && done_by_base <= to {
                *now = done_by_base;
                queue.pop_front();
            } else if due < done_by_base && due <= to {
                extra += left - (due - *now).max(0.0) * base_rate;
                *now = due.max(*now);
                queue.pop_front();
            } else {
                if let Some(head) = queue.front_mut() {
                    head.1 -= (to - *now) * base_rate;
                }
                break;
            }
        }
        *now = now.max(to);
    };
    for &a in arrivals {
        advance(&mut queue, &mut now, a);
        queue.push_back((a + deadline.max(0.0), 1.0));
    }
    advance(&mut queue, &mut now, f64::INFINITY);
    extra
}

/// The least pod-seconds over `duration` seconds that any policy could spend on `arrivals`
/// to keep the p99 latency of the requests it serves at or below `p99_s` seconds while
/// failing at most `failures` of them (a lower bound: see the module's opening).
pub fn least_pod_seconds(
    arrivals: &[f64],
    duration: f64,
    pods: PodModel,
    p99_s: f64,
    failures: usize,
) -> f64 {
    let base = f64::from(pods.min) * duration;
    if pods.capacity <= 0.0 {
        return base;
    }
    let deadline = p99_s + pods.slots / pods.capacity;
    let extra = extra_work(arrivals, f64::from(pods.min) * pods.capacity, deadline);
    // The p99 (nearest rank) lets floor(1%) of the served requests be later than it.
    let free = failures + arrivals.len() / 100 + 1;
    base + (extra - free as f64).max(0.0) / pods.capacity
}

/// The lowest p99 latency, seconds (to a millisecond), that any policy could keep on
/// `arrivals` within `budget` pod-seconds while failing at most `failures` requests: the
/// inverse of [`least_pod_seconds`], which never grows as the latency does. `None` when even
/// the longest latency considered (the run's length) needs more than the budget.
pub fn lowest_p99(
    arrivals: &[f64],
    duration: f64,
    pods: PodModel,
    budget: f64,
    failures: usize,
) -> Option<f64> {
    let fits = |p99: f64| least_pod_seconds(arrivals, duration, pods, p99, failures) <= budget;
    let (mut lo, mut hi) = (0.0, duration.max(0.001));
    if fits(lo) {
        return Some(0.0);
    }
    if !fits(hi) {
        return None;
    }
    while hi - lo > 0.001 {
        let mid = (lo + hi) / 2.0;
        if fits(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_load_the_base_carries_needs_nothing_extra() {
        // 10 req/s against 100 req/s of base capacity.
        let arrivals: Vec<f64> = (0..100).map(|i| f64::from(i) * 0.1).collect();
        assert_eq!(extra_work(&arrivals, 100.0, 0.5), 0.0);
    }

    #[test]
    fn a_burst_beyond_the_deadline_is_bought() {
        // 100 requests at once, 10 req/s of base, 1 s to serve each: the base serves 10 in
        // time, the other 90 are extra.
        let arrivals = vec![0.0; 100];
        let e = extra_work(&arrivals, 10.0, 1.0);
        assert!((e - 90.0).abs() < 1e-9, "{e}");
    }

    #[test]
    fn a_longer_deadline_lets_the_base_catch_up() {
        let arrivals = vec![0.0; 100];
        assert!(extra_work(&arrivals, 10.0, 10.0).abs() < 1e-9);
        assert!((extra_work(&arrivals, 10.0, 5.0) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn no_base_buys_every_request() {
        assert_eq!(extra_work(&[0.0, 1.0, 2.0], 0.0, 1.0), 3.0);
    }

    #[test]
    fn least_pod_seconds_counts_the_minimum_and_the_allowances() {
        let pods = PodModel {
            min: 1,
            capacity: 10.0,
            slots: 0.0,
        };
        // 1000 at once: base serves 10 within 1 s; 990 extra; 1% + 1 = 11 may be late,
        // 79 may fail: 900 extra requests = 90 pod-seconds over the base's 100.
        let arrivals = vec![0.0; 1000];
        let least = least_pod_seconds(&arrivals, 100.0, pods, 1.0, 79);
        assert!((least - 190.0).abs() < 1e-9, "{least}");
        // Letting all fail leaves the minimum.
        assert_eq!(least_pod_seconds(&arrivals, 100.0, pods, 1.0, 1000), 100.0);
    }

    #[test]
    fn the_lowest_p99_is_where_the_budget_is_just_enough() {
        let pods = PodModel {
            min: 1,
            capacity: 10.0,
            slots: 0.0,
        };
        let arrivals = vec![0.0; 1000];
        // The base alone serves the 1000 - 11 that must be in time within 98.9 s.
        let at_base = lowest_p99(&arrivals, 100.0, pods, 100.0, 0).unwrap();
        assert!((at_base - 98.9).abs() < 0.002, "{at_base}");
        let p = lowest_p99(&arrivals, 100.0, pods, 150.0, 0).unwrap();
        assert!(least_pod_seconds(&arrivals, 100.0, pods, p, 0) <= 150.0);
        assert!(least_pod_seconds(&arrivals, 100.0, pods, p - 0.002, 0) > 150.0);
        assert_eq!(lowest_p99(&arrivals, 100.0, pods, 99.0, 0), None);
        assert_eq!(lowest_p99(&arrivals, 100.0, pods, 200.0, 1000), Some(0.0));
    }

    /// The lazy schedule against a brute force over a time grid: a schedule that serves the
    /// queue in order at the base rate plus a chosen extra rate, checked for deadlines.
    fn feasible_with(arrivals: &[f64], base: f64, deadline: f64, extra_rate: f64) -> bool {
        // Fluid, in order, at base + extra_rate whenever there is work.
        let rate = base + extra_rate;
        let mut free_at: f64 = 0.0;
        for &a in arrivals {
            free_at = free_at.max(a) + 1.0 / rate;
            if free_at > a + deadline + 1e-9 {
                return false;
            }
        }
        true
    }

    proptest! {
        /// The extra work is never more than a constant extra capacity that meets every
        /// deadline would buy over the run (so the bound is never above a real schedule),
        /// never negative, and never more than the requests.
        #[test]
        fn the_lazy_extra_is_at_most_any_feasible_schedules(
            gaps in prop::collection::vec(0.0f64..0.2, 1..200),
            base in 1.0f64..50.0,
            deadline in 0.01f64..2.0,
        ) {
            let mut t = 0.0;
            let arrivals: Vec<f64> = gaps.iter().map(|g| { t += g; t }).collect();
            let lazy = extra_work(&arrivals, base, deadline);
            prop_assert!(lazy >= -1e-9);
            prop_assert!(lazy <= arrivals.len() as f64 + 1e-9);
            // Nor less than what the base cannot do in the whole span, whatever the order.
            let span = arrivals.last().unwrap() - arrivals[0] + deadline;
            prop_assert!(lazy >= arrivals.len() as f64 - base * span - 1e-6);
            // The smallest constant extra rate (to a grid) that meets every deadline,
            // spent for the whole busy span of the run.
            let mut extra_rate = 0.0;
            while !feasible_with(&arrivals, base, deadline, extra_rate) {
                extra_rate += base / 8.0;
            }
            prop_assert!(lazy <= extra_rate * span + 1e-6,
                "lazy {lazy} > constant {extra_rate}/s over {span} s");
            // And it is monotone: a longer deadline or more base never needs more.
            prop_assert!(extra_work(&arrivals, base, deadline * 2.0) <= lazy + 1e-9);
            prop_assert!(extra_work(&arrivals, base * 2.0, deadline) <= lazy + 1e-9);
            // With no extra needed by a constant schedule, none is bought.
            if feasible_with(&arrivals, base, deadline, 0.0) {
                prop_assert!(lazy.abs() < 1e-9);
            }
        }
    }
}
