//! One app's hold queue and its dispatch decision (pure: the time is passed in, never read).
//!
//! Requests wait in one FIFO per app, bounded in count and in body bytes, each with a
//! deadline. Whenever something changes (a request arrives, a pod frees a slot, a pod becomes
//! ready), [`Queue::assign`] hands the oldest waiting requests, in order, to the pods with the
//! most free slots, never more than a pod's free slots (its limit, [`crate::app::Pod::limit`],
//! less what it has in flight): a burst waits in this one queue and is
//! served first come first served by whichever pod frees first, instead of in the queue of
//! whichever pod a random choice picked.

use std::collections::VecDeque;

use wsgiscale_core::activator::HoldLimits;

/// A request's id within the activator.
pub type Id = u64;

/// Why a request is not held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The queue holds its maximum of requests.
    Requests,
    /// The queue holds its maximum of body bytes (or this body alone is larger).
    Bytes,
    /// The activator is draining (SIGTERM): it takes nothing new.
    Draining,
}

impl Reject {
    /// The metric label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Requests => "max_requests",
            Reject::Bytes => "max_bytes",
            Reject::Draining => "draining",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiting {
    id: Id,
    bytes: u64,
    /// Milliseconds on the caller's monotonic clock.
    arrived: u64,
}

/// A pod's free slots, for one assignment round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Requests it can take now.
    pub free: u32,
}

/// One app's held requests.
#[derive(Debug, Clone)]
pub struct Queue {
    limits: HoldLimits,
    fifo: VecDeque<Waiting>,
    bytes: u64,
    /// Bytes of bodies still being received, reserved against the byte bound before they are
    /// read (see [`Queue::reserve`]).
    receiving: u64,
}

impl Queue {
    /// An empty queue with these limits.
    pub fn new(limits: HoldLimits) -> Queue {
        Queue {
            limits,
            fifo: VecDeque::new(),
            bytes: 0,
            receiving: 0,
        }
    }

    /// New limits (from a changed route); what is held stays.
    pub fn set_limits(&mut self, limits: HoldLimits) {
        self.limits = limits;
    }

    /// Whether a new request may come in at all (the request bound, checked before its body
    /// is read; [`Queue::admit`] checks it again).
    pub fn has_room(&self) -> Result<(), Reject> {
        if self.fifo.len() as u64 >= u64::from(self.limits.max_requests) {
            return Err(Reject::Requests);
        }
        Ok(())
    }

    /// Reserves `n` more bytes of a body being received, or refuses them when the bodies held
    /// and being received would pass the byte bound: what the activator buffers for an app,
    /// held or still arriving, never exceeds `max_bytes`, however many clients send at once.
    pub fn reserve(&mut self, n: u64) -> Result<(), Reject> {
        let total = self.bytes.saturating_add(self.receiving).saturating_add(n);
        if total > self.limits.max_bytes {
            return Err(Reject::Bytes);
        }
        self.receiving += n;
        Ok(())
    }

    /// Gives back `n` reserved bytes (the body was held, refused, or its client left).
    pub fn unreserve(&mut self, n: u64) {
        self.receiving = self.receiving.saturating_sub(n);
    }

    /// Bytes reserved by bodies being received.
    pub fn receiving(&self) -> u64 {
        self.receiving
    }

    /// Holds request `id` with a body of `bytes`, arrived at `now` (ms), or says why not. A
    /// body received under a reservation is unreserved first ([`Queue::unreserve`]).
    pub fn admit(&mut self, id: Id, bytes: u64, now: u64) -> Result<(), Reject> {
        self.has_room()?;
        let total = self
            .bytes
            .saturating_add(self.receiving)
            .saturating_add(bytes);
        if total > self.limits.max_bytes {
            return Err(Reject::Bytes);
        }
        self.fifo.push_back(Waiting {
            id,
            bytes,
            arrived: now,
        });
        self.bytes += bytes;
        Ok(())
    }

    /// Puts request `id` back at the head (it could not be delivered to the pod it was given:
    /// it keeps its place and its arrival time, so its deadline does not move).
    pub fn readmit_front(&mut self, id: Id, bytes: u64, arrived: u64) {
        self.fifo.push_front(Waiting { id, bytes, arrived });
        self.bytes += bytes;
    }

    /// Forgets request `id` (its client went away); whether it was held.
    pub fn remove(&mut self, id: Id) -> bool {
        match self.fifo.iter().position(|w| w.id == id) {
            Some(i) => {
                let w = self.fifo.remove(i).expect("the index was just found");
                self.bytes -= w.bytes;
                true
            }
            None => false,
        }
    }

    /// Takes out and returns the requests whose deadline (arrival + max wait) is at or before
    /// `now`, oldest first.
    pub fn expire(&mut self, now: u64) -> Vec<Id> {
        let mut out = Vec::new();
        while let Some(w) = self.fifo.front() {
            if now.saturating_sub(w.arrived) < self.limits.max_wait_ms {
                break;
            }
            self.bytes -= w.bytes;
            out.push(w.id);
            self.fifo.pop_front();
        }
        out
    }

    /// Hands waiting requests, oldest first, each to the pod with the most free slots (the
    /// lowest index among equals), taking one slot from it, until none is left or no pod has
    /// a free slot. Returns (request, pod index, its arrival) in order.
    pub fn assign(&mut self, pods: &mut [Slot]) -> Vec<(Id, usize, u64)> {
        let mut out = Vec::new();
        while !self.fifo.is_empty() {
            let Some(best) = pick(pods) else { break };
            let w = self.fifo.pop_front().expect("not empty");
            self.bytes -= w.bytes;
            pods[best].free -= 1;
            out.push((w.id, best, w.arrived));
        }
        out
    }

    /// Requests held.
    pub fn len(&self) -> usize {
        self.fifo.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.fifo.is_empty()
    }

    /// Body bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// How long the oldest held request has waited at `now`, ms.
    pub fn oldest_wait(&self, now: u64) -> u64 {
        self.fifo
            .front()
            .map_or(0, |w| now.saturating_sub(w.arrived))
    }

    /// When the oldest held request's deadline passes (ms), if any.
    pub fn next_deadline(&self) -> Option<u64> {
        self.fifo
            .front()
            .map(|w| w.arrived.saturating_add(self.limits.max_wait_ms))
    }
}

/// The pod with the most free slots (lowest index among equals), if any has one.
pub fn pick(pods: &[Slot]) -> Option<usize> {
    pods.iter()
        .enumerate()
        .filter(|(_, s)| s.free > 0)
        .max_by(|(ia, a), (ib, b)| a.free.cmp(&b.free).then(ib.cmp(ia)))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn limits(requests: u32, bytes: u64, wait: u64) -> HoldLimits {
        HoldLimits {
            max_requests: requests,
            max_bytes: bytes,
            max_wait_ms: wait,
        }
    }

    #[test]
    fn bounds_are_counted_and_bytes_freed() {
        let mut q = Queue::new(limits(2, 100, 1000));
        assert_eq!(q.admit(1, 60, 0), Ok(()));
        assert_eq!(q.admit(2, 50, 0), Err(Reject::Bytes));
        assert_eq!(q.admit(3, 40, 0), Ok(()));
        assert_eq!(q.admit(4, 0, 0), Err(Reject::Requests));
        assert!(q.remove(1));
        assert!(!q.remove(1));
        assert_eq!((q.len(), q.bytes()), (1, 40));
    }

    #[test]
    fn deadlines_expire_oldest_first() {
        let mut q = Queue::new(limits(10, 1000, 100));
        q.admit(1, 0, 0).expect("held");
        q.admit(2, 0, 50).expect("held");
        assert!(q.expire(99).is_empty());
        assert_eq!(q.oldest_wait(99), 99);
        assert_eq!(q.next_deadline(), Some(100));
        assert_eq!(q.expire(100), vec![1]);
        assert_eq!(q.expire(200), vec![2]);
        assert!(q.is_empty());
    }

    #[test]
    fn the_pod_with_most_room_gets_the_oldest_request() {
        let mut q = Queue::new(limits(10, 1000, 1000));
        for id in 1..=5 {
            q.admit(id, 0, id).expect("held");
        }
        let mut pods = [Slot { free: 1 }, Slot { free: 3 }, Slot { free: 0 }];
        let a = q.assign(&mut pods);
        assert_eq!(
            a.iter().map(|(id, pod, _)| (*id, *pod)).collect::<Vec<_>>(),
            vec![(1, 1), (2, 1), (3, 0), (4, 1)]
        );
        assert_eq!(q.len(), 1, "request 5 waits: no pod has room");
        assert_eq!(pick(&pods), None);
        // A request that could not be delivered keeps its place at the head.
        q.readmit_front(4, 0, 4);
        let mut pods = [Slot { free: 1 }];
        assert_eq!(q.assign(&mut pods)[0].0, 4);
    }

    #[test]
    fn bodies_being_received_count_against_the_byte_bound() {
        let mut q = Queue::new(limits(10, 100, 1000));
        assert_eq!(q.reserve(60), Ok(()));
        assert_eq!(
            q.reserve(50),
            Err(Reject::Bytes),
            "two clients cannot both send 50+60"
        );
        assert_eq!(
            q.admit(1, 50, 0),
            Err(Reject::Bytes),
            "nor hold past the reservation"
        );
        // The first body arrives whole: its reservation becomes held bytes.
        q.unreserve(60);
        assert_eq!(q.admit(2, 60, 0), Ok(()));
        assert_eq!((q.bytes(), q.receiving()), (60, 0));
        assert_eq!(q.reserve(41), Err(Reject::Bytes));
        assert_eq!(q.reserve(40), Ok(()));
        // Its client leaves: the reservation is given back.
        q.unreserve(40);
        assert_eq!(q.receiving(), 0);
    }

    proptest! {
        /// However many bodies are received at once, in whatever chunks, and whichever are
        /// held, refused or abandoned: held plus reserved bytes never pass the bound, and every
        /// reservation is given back.
        #[test]
        fn held_and_arriving_bytes_stay_bounded(
            ops in proptest::collection::vec((0u8..4, 0usize..8, 0u64..60), 1..300),
            max_bytes in 1u64..400,
        ) {
            let mut q = Queue::new(limits(1000, max_bytes, 1_000_000));
            // Reserved bytes of each body being received.
            let mut arriving = [0u64; 8];
            let mut next = 0u64;
            for (op, body, n) in ops {
                match op {
                    // A chunk of body `body` arrives.
                    0 | 1 => {
                        if q.reserve(n).is_ok() {
                            arriving[body] += n;
                        } else {
                            // Refused: the client gets its 503 and its reservation goes.
                            q.unreserve(arriving[body]);
                            arriving[body] = 0;
                        }
                    }
                    // Body `body` is complete: held (or refused).
                    2 => {
                        let got = std::mem::take(&mut arriving[body]);
                        q.unreserve(got);
                        next += 1;
                        let _ = q.admit(next, got, 0);
                    }
                    // Its client leaves mid-body.
                    _ => {
                        q.unreserve(arriving[body]);
                        arriving[body] = 0;
                    }
                }
                prop_assert!(q.bytes() + q.receiving() <= max_bytes);
                prop_assert_eq!(q.receiving(), arriving.iter().sum::<u64>());
            }
        }

        /// Whatever arrives, frees and expires: requests leave in arrival order, no pod gets
        /// more than its free slots, the bounds hold, and every request is accounted for once.
        #[test]
        fn fifo_bounded_and_never_over_a_pod(
            ops in proptest::collection::vec((0u8..4, 0u64..50, 0u32..4), 1..200),
            max_requests in 1u32..20,
            max_bytes in 1u64..500,
        ) {
            let mut q = Queue::new(limits(max_requests, max_bytes, 30));
            let mut now = 0u64;
            let mut next = 0u64;
            let mut admitted = Vec::new();
            let mut left = Vec::new();
            for (op, n, free) in ops {
                now += n % 7;
                match op {
                    0 | 1 => {
                        next += 1;
                        if q.admit(next, n, now).is_ok() {
                            admitted.push(next);
                        }
                    }
                    2 => {
                        let mut pods = vec![Slot { free }, Slot { free: free / 2 }];
                        let before: Vec<u32> = pods.iter().map(|p| p.free).collect();
                        let got = q.assign(&mut pods);
                        for (i, p) in pods.iter().enumerate() {
                            let given = got.iter().filter(|(_, pod, _)| *pod == i).count() as u32;
                            prop_assert_eq!(before[i] - p.free, given);
                        }
                        left.extend(got.into_iter().map(|(id, _, _)| id));
                    }
                    _ => left.extend(q.expire(now)),
                }
                prop_assert!(q.len() as u32 <= max_requests);
                prop_assert!(q.bytes() <= max_bytes);
            }
            left.extend(q.expire(u64::MAX));
            prop_assert_eq!(left, admitted, "every request leaves once, in arrival order");
        }
    }
}
