//! Models of the peers' pod autoscalers, for comparison on the same traces. Both run pods
//! with a fixed worker count (workers.max): neither knows about a worker level inside the pod.
//!
//! * [`HpaLike`]: the Kubernetes HPA v2 on a CPU-like metric (busy share of the worker threads
//!   over the loop period): every 15 s, `desired = ceil(ready x utilization / target)` unless
//!   within the 10% tolerance; scale up by at most max(4 pods, 100%) per period; scale down
//!   to the highest recommendation of the last 300 s (the default stabilization window).
//! * [`KnativeLike`]: the Knative Pod Autoscaler on concurrency: every 2 s, stable (60 s) and
//!   panic (6 s) window averages of the requests in the pods, a target of 70% of a pod's
//!   concurrency, panic at 200% of the ready pods, no scale-down in panic, scale-up at most
//!   1000x and scale-down at most 2x of the ready pods per decision.

use std::collections::VecDeque;

/// The HPA model's state.
#[derive(Debug, Clone, PartialEq)]
pub struct HpaLike {
    /// Target utilization, 0 to 1.
    pub target: f64,
    /// Ignored relative deviation (0.1).
    pub tolerance: f64,
    /// Scale-down stabilization window, seconds (300).
    pub stabilization: f64,
    /// Fewest and most pods.
    pub min: u32,
    /// Most pods.
    pub max: u32,
    recommendations: VecDeque<(f64, u32)>,
}

impl HpaLike {
    /// The defaults of `autoscaling/v2` with `target` utilization.
    pub fn new(target: f64, min: u32, max: u32) -> Self {
        HpaLike {
            target,
            tolerance: 0.1,
            stabilization: 300.0,
            min,
            max: max.max(min),
            recommendations: VecDeque::new(),
        }
    }

    /// One loop at `now`: `utilization` of the ready pods over the period, `ready` pods,
    /// `current` replicas. Returns the new replica count.
    pub fn decide(&mut self, now: f64, utilization: f64, ready: u32, current: u32) -> u32 {
        let ratio = utilization / self.target;
        let raw = if ready == 0 || (ratio - 1.0).abs() <= self.tolerance {
            current
        } else {
            (ratio * f64::from(ready) - 1e-9).ceil().max(0.0) as u32
        };
        let raw = raw.clamp(self.min, self.max);
        self.recommendations.push_back((now, raw));
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| t + self.stabilization < now)
        {
            self.recommendations.pop_front();
        }
        let desired = if raw < current {
            // Scale down only to the highest recommendation of the window.
            self.recommendations
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(raw)
                .min(current)
        } else {
            // Scale up by max(4 pods, 100%) per period.
            raw.min(current.saturating_add(4).max(current.saturating_mul(2)))
        };
        desired.clamp(self.min, self.max)
    }
}

/// The Knative model's state.
#[derive(Debug, Clone, PartialEq)]
pub struct KnativeLike {
    /// Requests a pod should carry (70% of its concurrency).
    pub target: f64,
    /// Stable window, seconds.
    pub stable: f64,
    /// Panic window, seconds.
    pub panic: f64,
    /// Panic threshold, multiple of the ready pods.
    pub threshold: f64,
    /// Fewest pods.
    pub min: u32,
    /// Most pods.
    pub max: u32,
    samples: VecDeque<(f64, f64)>,
    panic_time: Option<f64>,
    max_panic_pods: u32,
}

impl KnativeLike {
    /// Knative's defaults with `target` requests per pod.
    pub fn new(target: f64, min: u32, max: u32) -> Self {
        KnativeLike {
            target: target.max(f64::MIN_POSITIVE),
            stable: 60.0,
            panic: 6.0,
            threshold: 2.0,
            min,
            max: max.max(min),
            samples: VecDeque::new(),
            panic_time: None,
            max_panic_pods: 0,
        }
    }

    /// True in panic mode.
    pub fn in_panic(&self) -> bool {
        self.panic_time.is_some()
    }

    /// One decision at `now`: `concurrency` is the requests in the ready pods, `ready` pods,
    /// `current` replicas. Returns the new replica count.
    pub fn decide(&mut self, now: f64, concurrency: f64, ready: u32, current: u32) -> u32 {
        self.samples.push_back((now, concurrency));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| t + self.stable <= now)
        {
            self.samples.pop_front();
        }
        let avg = |span: f64| {
            let v: Vec<f64> = self
                .samples
                .iter()
                .filter(|(t, _)| t + span > now)
                .map(|(_, c)| *c)
                .collect();
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        if ready == 0 {
            return current.clamp(self.min, self.max);
        }
        let dspc = (avg(self.stable) / self.target).ceil() as u32;
        let dppc = (avg(self.panic) / self.target).ceil() as u32;
        let r = f64::from(ready);
        let max_up = (r * 1000.0).ceil() as u32;
        let max_down = (r / 2.0).floor() as u32;
        let over = f64::from(dppc) / r >= self.threshold;
        if over {
            if self.panic_time.is_none() {
                self.max_panic_pods = ready;
            }
            self.panic_time = Some(now);
        } else if self.panic_time.is_some_and(|t| now - t >= self.stable) {
            self.panic_time = None;
            self.max_panic_pods = 0;
        }
        let mut desired = if self.panic_time.is_some() {
            let d = dppc.max(self.max_panic_pods);
            self.max_panic_pods = d;
            d
        } else {
            dspc
        };
        desired = desired.clamp(max_down, max_up.max(max_down));
        if self.panic_time.is_some() {
            desired = desired.max(current);
        }
        desired.clamp(self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpa_scales_by_ratio_limits_growth_and_stabilizes_down() {
        let mut h = HpaLike::new(0.7, 1, 100);
        // 100% busy on 2 pods: ceil(2 / 0.7) = 3.
        assert_eq!(h.decide(15.0, 1.0, 2, 2), 3);
        // 100% on 10 pods wants 15, allowed (max(4, 100%)).
        assert_eq!(h.decide(30.0, 1.0, 10, 10), 15);
        // Within tolerance: no change.
        assert_eq!(h.decide(45.0, 0.75, 15, 15), 15);
        // The load goes away: held for 300 s by the recommendations of the window.
        let mut n = 15;
        let mut t = 60.0;
        while n == 15 {
            n = h.decide(t, 0.05, 15, 15);
            t += 15.0;
        }
        assert!(t - 15.0 >= 45.0 + 300.0, "went down at {t}");
    }

    #[test]
    fn knative_panics_and_holds() {
        let mut k = KnativeLike::new(2.8, 1, 100);
        assert_eq!(k.decide(0.0, 2.0, 1, 1), 1);
        // A burst of 56: 20 pods in the panic window.
        let n = k.decide(2.0, 56.0, 1, 1);
        assert!(k.in_panic());
        assert!(n >= 10, "{n}");
        // Load gone: no scale-down while in panic.
        for i in 2..30 {
            let m = k.decide(2.0 * f64::from(i), 0.0, n, n);
            assert_eq!(m, n);
        }
    }
}
