//! The model of the activator in the simulator: one FIFO per app in front of the pods,
//! bounded by [`HoldLimits`] (past `max_requests`: refused at once; a request that waited
//! `max_wait`: refused at its deadline), that hands the oldest held requests to the ready pod
//! with the most free slots (`workers.max x threads` less what the activator has in flight
//! there), never more than a pod can take. Pure: every time is passed in.
//!
//! The activator crate's own queue (`activator/src/queue.rs`) is the same rule; the operator
//! does not depend on the data plane (arrows point down), so the model is written here. Where
//! traffic goes and when the app may go to zero are the operator's real decisions
//! ([`crate::activation::decide_path`], [`crate::activation::may_scale_to_zero`]), called by
//! the simulator's loop ([`super::run`]).

use std::collections::VecDeque;
use std::time::Duration;

use wsgiscale_core::activator::HoldLimits;

use crate::activation::PathState;

/// The activator's own cost per request: the hop from the activator to the pod, seconds. A
/// forwarded request reaches its pod this long after the activator sends it (an extra
/// connection inside the cluster network), so a request through the activator never looks
/// free.
pub const HOP_SECONDS: f64 = 0.001;

/// How the activator is set up for one app.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivatorConfig {
    /// Spare capacity, in requests, the pods must have for the activator to leave the path
    /// (the burst target; [`crate::activation::PathInputs::burst_capacity`]).
    pub burst_capacity: f64,
    /// How long the pods must cover it before the activator leaves the path.
    pub settle: Duration,
    /// With scale to zero: how long without a request before the app may go to zero pods.
    pub scale_to_zero_idle: Option<Duration>,
    /// The hold limits.
    pub hold: HoldLimits,
}

/// A request held at the activator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Held {
    /// Its number in the run.
    pub id: u64,
    /// When it arrived, seconds.
    pub arrival: f64,
    /// Seconds of work it needs.
    pub service: f64,
}

/// Why the activator refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It held `max_requests` already.
    Full,
}

/// The activator of one app: its FIFO, where the app's traffic goes, and its counters.
#[derive(Debug, Clone)]
pub struct Activator {
    /// The set-up.
    pub config: ActivatorConfig,
    /// Where traffic goes, as the operator last decided.
    pub path: PathState,
    /// When the last request arrived (at the activator or at the pods), seconds.
    pub last_request: Option<f64>,
    fifo: VecDeque<Held>,
    /// Most requests held at once.
    pub max_held: u32,
    /// Requests handed to a pod.
    pub forwarded: u64,
    /// Requests refused because the FIFO was full.
    pub refused_full: u64,
    /// Requests refused at their deadline.
    pub refused_deadline: u64,
}

impl Activator {
    /// An empty activator with `config`, out of the path.
    pub fn new(config: ActivatorConfig) -> Self {
        Activator {
            config,
            path: PathState::default(),
            last_request: None,
            fifo: VecDeque::new(),
            max_held: 0,
            forwarded: 0,
            refused_full: 0,
            refused_deadline: 0,
        }
    }

    /// Requests held now.
    pub fn held(&self) -> u32 {
        self.fifo.len() as u32
    }

    /// The oldest held request.
    pub fn oldest(&self) -> Option<&Held> {
        self.fifo.front()
    }

    /// Holds `r`, or refuses it when `max_requests` are held (the real activator's 503).
    pub fn admit(&mut self, r: Held) -> Result<(), Refused> {
        if self.fifo.len() as u64 >= u64::from(self.config.hold.max_requests) {
            self.refused_full += 1;
            return Err(Refused::Full);
        }
        self.fifo.push_back(r);
        self.max_held = self.max_held.max(self.fifo.len() as u32);
        Ok(())
    }

    /// Seconds a request may wait.
    fn max_wait(&self) -> f64 {
        self.config.hold.max_wait_ms as f64 / 1000.0
    }

    /// Takes out the requests whose deadline (arrival + max wait) is at or before `now`,
    /// oldest first: the activator answers them 503.
    pub fn expire(&mut self, now: f64) -> Vec<Held> {
        let max_wait = self.max_wait();
        let mut out = Vec::new();
        while let Some(h) = self.fifo.front() {
            if now - h.arrival < max_wait {
                break;
            }
            out.extend(self.fifo.pop_front());
        }
        self.refused_deadline += out.len() as u64;
        out
    }

    /// When the oldest held request's deadline passes, if any.
    pub fn next_deadline(&self) -> Option<f64> {
        self.fifo.front().map(|h| h.arrival + self.max_wait())
    }

    /// Hands held requests, oldest first, each to the pod with the most free slots (the
    /// lowest index among equals), taking one slot from it, until nothing is held or no pod
    /// has a free slot. Returns (request, pod index) in order.
    pub fn assign(&mut self, free: &mut [u32]) -> Vec<(Held, usize)> {
        let mut out = Vec::new();
        while !self.fifo.is_empty() {
            let Some(best) = pick(free) else { break };
            let Some(h) = self.fifo.pop_front() else {
                break;
            };
            free[best] -= 1;
            out.push((h, best));
        }
        self.forwarded += out.len() as u64;
        out
    }
}

/// The pod with the most free slots (the lowest index among equals), if any has one.
pub fn pick(free: &[u32]) -> Option<usize> {
    free.iter()
        .enumerate()
        .filter(|(_, &f)| f > 0)
        .fold(None, |best: Option<(usize, u32)>, (i, &f)| match best {
            Some((_, bf)) if bf >= f => best,
            _ => Some((i, f)),
        })
        .map(|(i, _)| i)
}

/// The pods the operator starts at once when the activator pushes `held` requests for an app
/// with no ready pod (at zero, the first request must not wait for a tick): enough for them
/// at the target, at least one, within the bounds.
pub fn compute_push_replicas(held: u32, target_per_pod: f64, min: u32, max: u32) -> u32 {
    let per_pod = target_per_pod.max(f64::MIN_POSITIVE);
    let n = (f64::from(held) / per_pod - 1e-9).ceil().max(1.0);
    let n = if n.is_finite() {
        n.min(f64::from(u32::MAX)) as u32
    } else {
        1
    };
    n.clamp(min.max(1), max.max(min).max(1))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cfg(max_requests: u32, max_wait_ms: u64) -> ActivatorConfig {
        ActivatorConfig {
            burst_capacity: 8.0,
            settle: Duration::from_secs(30),
            scale_to_zero_idle: None,
            hold: HoldLimits {
                max_requests,
                max_wait_ms,
                ..HoldLimits::default()
            },
        }
    }

    fn held(id: u64, arrival: f64) -> Held {
        Held {
            id,
            arrival,
            service: 0.1,
        }
    }

    #[test]
    fn the_fifo_goes_to_the_freest_pod_in_arrival_order() {
        let mut a = Activator::new(cfg(3, 1000));
        for i in 0..3 {
            a.admit(held(i, i as f64 * 0.1)).expect("room");
        }
        assert_eq!(a.admit(held(3, 0.3)), Err(Refused::Full));
        // Pod 1 has the most free slots, then pods 0 and 1 tie at 1 (lowest index wins).
        let mut free = [1, 2, 0];
        let out: Vec<(u64, usize)> = a
            .assign(&mut free)
            .iter()
            .map(|(h, p)| (h.id, *p))
            .collect();
        assert_eq!(out, vec![(0, 1), (1, 0), (2, 1)]);
        assert_eq!(free, [0, 0, 0]);
        assert_eq!((a.forwarded, a.refused_full, a.max_held), (3, 1, 3));
    }

    #[test]
    fn a_request_is_refused_at_its_deadline() {
        let mut a = Activator::new(cfg(10, 60_000));
        a.admit(held(0, 1.0)).expect("room");
        a.admit(held(1, 2.0)).expect("room");
        assert_eq!(a.next_deadline(), Some(61.0));
        assert!(a.expire(60.9).is_empty());
        assert_eq!(a.expire(61.0).iter().map(|h| h.id).collect::<Vec<_>>(), [0]);
        assert_eq!(a.held(), 1);
        assert_eq!(a.refused_deadline, 1);
    }

    #[test]
    fn a_push_starts_enough_pods_for_what_is_held() {
        assert_eq!(compute_push_replicas(1, 5.6, 1, 20), 1);
        assert_eq!(compute_push_replicas(0, 5.6, 0, 20), 1);
        assert_eq!(compute_push_replicas(12, 5.6, 1, 20), 3);
        assert_eq!(compute_push_replicas(1000, 5.6, 1, 20), 20);
        assert_eq!(compute_push_replicas(1, 5.6, 2, 20), 2);
    }

    /// One step of a random history: a request arrives, time passes (deadlines), or pods
    /// free some slots.
    #[derive(Debug, Clone)]
    enum Op {
        Arrive(f64),
        Wait(f64),
        Free(Vec<u32>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0.0f64..2.0).prop_map(Op::Arrive),
            1 => (0.0f64..5.0).prop_map(Op::Wait),
            2 => prop::collection::vec(0u32..4, 0..4).prop_map(Op::Free),
        ]
    }

    proptest! {
        /// Whatever arrives and however pods free up: the FIFO never holds more than
        /// `max_requests`, nothing waits past its deadline once time has passed it, requests
        /// leave (to a pod or refused at the deadline) in arrival order, a pod never gets more
        /// than its free slots, and every request is held then forwarded or refused exactly
        /// once.
        #[test]
        fn the_fifo_keeps_its_limits_its_order_and_every_request(
            max_requests in 1u32..20,
            max_wait_ms in 100u64..5000,
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let mut a = Activator::new(cfg(max_requests, max_wait_ms));
            let mut now = 0.0f64;
            let mut next_id = 0u64;
            let mut fate = Vec::<u8>::new();
            let mut left = Vec::<(u64, f64)>::new();
            for op in ops {
                match op {
                    Op::Arrive(dt) => {
                        now += dt;
                        let id = next_id;
                        next_id += 1;
                        fate.push(0);
                        for h in a.expire(now) {
                            fate[h.id as usize] += 1;
                            left.push((h.id, h.arrival));
                        }
                        if a.admit(held(id, now)).is_err() {
                            fate[id as usize] += 1;
                        }
                    }
                    Op::Wait(dt) => {
                        now += dt;
                        for h in a.expire(now) {
                            prop_assert!(now - h.arrival >= max_wait_ms as f64 / 1000.0);
                            fate[h.id as usize] += 1;
                            left.push((h.id, h.arrival));
                        }
                    }
                    Op::Free(slots) => {
                        for h in a.expire(now) {
                            fate[h.id as usize] += 1;
                            left.push((h.id, h.arrival));
                        }
                        let mut free = slots.clone();
                        let out = a.assign(&mut free);
                        let mut given = vec![0u32; slots.len()];
                        for (h, p) in out {
                            given[p] += 1;
                            fate[h.id as usize] += 1;
                            left.push((h.id, h.arrival));
                        }
                        for (g, s) in given.iter().zip(&slots) {
                            prop_assert!(g <= s, "a pod got {g} of {s} free slots");
                        }
                        // Stopped only when nothing is held or no slot is left.
                        prop_assert!(a.held() == 0 || free.iter().all(|&f| f == 0));
                    }
                }
                prop_assert!(a.held() <= max_requests);
                prop_assert!(a.next_deadline().is_none_or(|d| d > now));
            }
            // Leaving in arrival order (ids are in arrival order too).
            prop_assert!(left.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
            // Each request once: held ones not yet, the others exactly once.
            let held_now = a.held() as usize;
            prop_assert_eq!(fate.iter().filter(|&&f| f == 0).count(), held_now);
            prop_assert!(fate.iter().all(|&f| f <= 1));
            prop_assert_eq!(a.forwarded + a.refused_deadline + a.refused_full + held_now as u64, next_id);
        }
    }
}
