//! The model of one pod: its server's workers (each with its threads), its FIFO queue, its
//! load tracker, and the server's real worker-count algorithm and driver from
//! `wsgiscale_core::scaling`, run once a second as the server's master does.
//!
//! Requests are exact events: a request waits in the pod's queue until the earliest free
//! thread of a ready worker takes it, so its wait is exact, not rounded to a step. The worker
//! set changes only at the once-a-second checks and when a forked worker becomes ready, and
//! every pod is advanced to a check's time before the check runs.
//!
//! A request the activator forwards ([`Pod::forward`]) reaches the pod one hop later and
//! counts in the activator's in-flight figure for the pod until it ends; the pod keeps that
//! figure, so it follows the pod when the pod leaves the Service and drains.

use std::collections::VecDeque;
use std::time::Duration;

use wsgiscale_core::config::{LifecycleConfig, LiveConfig, ScalingConfig, WorkerLimits};
use wsgiscale_core::load::LoadReport;
use wsgiscale_core::loadtrack::{LoadSample, LoadTracker, Totals};
use wsgiscale_core::pool::{Action, Gone, Pool};
use wsgiscale_core::scaling::{drive, Cheaper, DriveInputs};
use wsgiscale_core::scoreboard::{Scoreboard, SlotState, WorkerSlot};

/// One worker process.
#[derive(Debug, Clone)]
struct Worker {
    id: u64,
    /// When it was forked.
    spawned_at: f64,
    /// When it can take requests.
    ready_at: f64,
    /// Per thread: when its current request ends (in the past when idle).
    busy_until: Vec<f64>,
    /// Service time of every request it was given.
    assigned_busy: f64,
    /// Requests it was given.
    assigned: u64,
}

impl Worker {
    fn in_progress(&self, t: f64) -> (u32, f64) {
        let mut n = 0;
        let mut left = 0.0;
        for &b in &self.busy_until {
            if b > t {
                n += 1;
                left += b - t;
            }
        }
        (n, left)
    }
}

/// How a pod's server is configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerModel {
    /// Worker algorithm and knobs.
    pub scaling: ScalingConfig,
    /// Worker limits.
    pub limits: WorkerLimits,
    /// Threads per worker.
    pub threads: u32,
    /// Seconds from fork to a worker ready to serve.
    pub worker_startup: f64,
    /// The request queue bound; beyond it requests are refused (503).
    pub max_queue: u32,
}

/// A request in a pod's queue.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Queued {
    /// The request's number in the run.
    id: u64,
    /// When the client sent it (its wait counts from here).
    arrival: f64,
    /// When it reaches the pod (later than `arrival` after the activator's hop).
    available: f64,
    /// Seconds of work.
    service: f64,
    /// Forwarded by the activator (counts in its in-flight figure until it ends).
    via_activator: bool,
}

/// A request a worker thread took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Started {
    /// The request's number in the run.
    pub id: u64,
    /// Seconds from its arrival to a thread taking it.
    pub wait: f32,
}

/// One pod.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Creation time, seconds.
    pub created: f64,
    /// When it becomes ready (its initial workers are up), seconds.
    pub ready_at: f64,
    /// Taken out of the Service: finishes its queue and in-flight requests, then goes.
    pub terminating: bool,
    workers: Vec<Worker>,
    queue: VecDeque<Queued>,
    /// Requests the activator forwarded here that no thread has taken yet.
    activator_unstarted: u32,
    /// When the activator's requests that a thread took end (pruned as time passes).
    activator_ends: Vec<f64>,
    cheaper: Cheaper,
    tracker: LoadTracker,
    /// The server's own worker pool policy: it carries out the plans, as in the server.
    pool: Pool,
    /// Busy time and requests of the workers that have exited.
    gone_busy: f64,
    gone_requests: u64,
    /// Requests offered or forwarded here, refused ones included.
    arrived: u64,
    model: ServerModel,
}

impl Pod {
    /// A pod created at `now` that is ready `startup` seconds later with its initial workers.
    pub fn new(now: f64, startup: f64, model: ServerModel) -> Self {
        let ready_at = now + startup;
        let live = LiveConfig {
            workers: model.limits,
            scaling: model.scaling,
            lifecycle: LifecycleConfig::default(),
        };
        let mut pool = Pool::new(live, 0);
        let at = Duration::from_secs_f64(ready_at.max(0.0));
        let workers = pool
            .start(at)
            .into_iter()
            .filter_map(|a| match a {
                Action::Spawn { id, .. } => Some(id),
                _ => None,
            })
            .map(|id| {
                pool.ready(id, at);
                Worker {
                    id,
                    spawned_at: ready_at,
                    ready_at,
                    busy_until: vec![0.0; model.threads.max(1) as usize],
                    assigned_busy: 0.0,
                    assigned: 0,
                }
            })
            .collect();
        Pod {
            created: now,
            ready_at,
            terminating: false,
            workers,
            queue: VecDeque::new(),
            activator_unstarted: 0,
            activator_ends: Vec::new(),
            cheaper: Cheaper::new(&model.scaling, &model.limits),
            tracker: LoadTracker::new(),
            pool,
            gone_busy: 0.0,
            gone_requests: 0,
            arrived: 0,
            model,
        }
    }

    /// True when it is in the Service at `t`.
    pub fn is_ready(&self, t: f64) -> bool {
        !self.terminating && self.ready_at <= t
    }

    /// Requests waiting.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Queues request `id` that arrived at `at` needing `service` seconds; false when the
    /// queue is full (the server answers 503).
    pub fn offer(&mut self, id: u64, at: f64, service: f64) -> bool {
        self.enqueue(Queued {
            id,
            arrival: at,
            available: at,
            service,
            via_activator: false,
        })
    }

    /// Queues request `id` (arrived at the activator at `arrival`) that the activator
    /// forwards so that it reaches the pod at `available`; it counts in
    /// [`Pod::activator_in_flight`] until it ends. False when the queue is full.
    pub fn forward(&mut self, id: u64, arrival: f64, available: f64, service: f64) -> bool {
        let ok = self.enqueue(Queued {
            id,
            arrival,
            available,
            service,
            via_activator: true,
        });
        if ok {
            self.activator_unstarted += 1;
        }
        ok
    }

    fn enqueue(&mut self, q: Queued) -> bool {
        self.arrived += 1;
        if self.queue.len() >= self.model.max_queue as usize {
            return false;
        }
        self.queue.push_back(q);
        true
    }

    /// The earliest free thread of a (starting or ready) worker and the thread itself.
    fn earliest_free(&self) -> Option<(usize, usize, f64)> {
        let mut best: Option<(usize, usize, f64)> = None;
        for (wi, w) in self.workers.iter().enumerate() {
            for (ti, &b) in w.busy_until.iter().enumerate() {
                let free = b.max(w.ready_at);
                if best.is_none_or(|(_, _, f)| free < f) {
                    best = Some((wi, ti, free));
                }
            }
        }
        best
    }

    /// Starts every queued request that a thread can take by `t`, oldest first, on the
    /// earliest free thread; pushes each one's number and wait (seconds) into `started`.
    pub fn advance(&mut self, t: f64, started: &mut Vec<Started>) {
        while let Some(&q) = self.queue.front() {
            let Some((wi, ti, free)) = self.earliest_free() else {
                break;
            };
            let start = free.max(q.available);
            if start > t {
                break;
            }
            self.queue.pop_front();
            started.push(Started {
                id: q.id,
                wait: (start - q.arrival) as f32,
            });
            let w = &mut self.workers[wi];
            w.busy_until[ti] = start + q.service;
            w.assigned_busy += q.service;
            w.assigned += 1;
            if q.via_activator {
                self.activator_unstarted -= 1;
                self.activator_ends.push(start + q.service);
            }
        }
        self.activator_ends.retain(|&end| end > t);
    }

    /// Requests the activator forwarded here that have not ended at `t` (queued, on the way,
    /// or running), as the activator counts them. Exact for `t` at or after the last
    /// [`Pod::advance`].
    pub fn activator_in_flight(&self, t: f64) -> u32 {
        self.activator_unstarted + self.activator_ends.iter().filter(|&&e| e > t).count() as u32
    }

    /// After [`Pod::advance`] to `t`: the next time after `t` at which the activator's count
    /// here can change (one of its requests ends, or the queue's head starts, which may be
    /// one of its requests or lets one move up), if any.
    pub fn next_activator_change(&self, t: f64) -> Option<f64> {
        let ends = self.activator_ends.iter().copied().filter(|&e| e > t);
        let start = if self.activator_unstarted > 0 {
            let head = self.queue.front().map(|q| q.available);
            self.earliest_free()
                .zip(head)
                .map(|((_, _, free), available)| free.max(available))
                .filter(|&s| s > t)
        } else {
            None
        };
        ends.chain(start).min_by(f64::total_cmp)
    }

    /// True when nothing is queued or running at `t` (a terminating pod can go).
    pub fn is_drained(&self, t: f64) -> bool {
        self.queue.is_empty() && self.workers.iter().all(|w| w.in_progress(t).0 == 0)
    }

    /// Live worker processes.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Requests running at `t`.
    pub fn in_flight(&self, t: f64) -> u32 {
        self.workers.iter().map(|w| w.in_progress(t).0).sum()
    }

    /// The master's view at `t`, with the lifetime counters (completed requests, busy time).
    fn scoreboard(&self, t: f64) -> (Scoreboard, u64, f64) {
        let mut completed = self.gone_requests;
        let mut busy = self.gone_busy;
        let workers = self
            .workers
            .iter()
            .map(|w| {
                let (n, left) = w.in_progress(t);
                let threads = w.busy_until.len() as u32;
                let done = w.assigned.saturating_sub(u64::from(n));
                let busy_time = (w.assigned_busy - left).max(0.0);
                completed += done;
                busy += busy_time;
                let state = if w.ready_at > t {
                    SlotState::Starting
                } else if n >= threads {
                    SlotState::Busy
                } else {
                    SlotState::Idle
                };
                WorkerSlot {
                    id: w.id,
                    state,
                    busy_threads: n,
                    threads,
                    busy_time: Duration::from_secs_f64(busy_time),
                    spawned_at: Duration::from_secs_f64(w.spawned_at.max(0.0)),
                    requests: done,
                    memory_bytes: None,
                }
            })
            .collect();
        let oldest = self.queue.front().map_or(0.0, |q| (t - q.arrival).max(0.0));
        let sb = Scoreboard {
            now: Duration::from_secs_f64(t.max(0.0)),
            queue_depth: self.queue.len() as u32,
            oldest_wait: Duration::from_secs_f64(oldest),
            workers,
        };
        (sb, completed, busy)
    }

    /// The master's once-a-second check at `t` (after [`Pod::advance`] to `t`): records the
    /// load sample, asks the algorithm, lets the driver apply the limits, and carries out the
    /// plan (victims are free workers: they leave at once; new workers are ready after the
    /// fork delay). Returns workers spawned minus retired.
    pub fn check(&mut self, t: f64) -> i64 {
        let (sb, completed, busy) = self.scoreboard(t);
        self.tracker.record(LoadSample::observe(
            &sb,
            Totals {
                completed,
                busy: Duration::from_secs_f64(busy),
                arrived: self.arrived,
            },
        ));
        if self.terminating || self.ready_at > t {
            return 0;
        }
        let verdict = self.cheaper.decide_explained(&sb);
        let plan = drive(verdict, &sb, &self.model.limits, &DriveInputs::default());
        let now = Duration::from_secs_f64(t.max(0.0));
        let mut delta = 0i64;
        let mut actions: VecDeque<Action> = self.pool.apply(&plan, now).into();
        while let Some(action) = actions.pop_front() {
            match action {
                Action::Retire { id, .. } => {
                    // Victims had no busy thread at the snapshot, which is now: they leave.
                    let Some(i) = self.workers.iter().position(|w| w.id == id) else {
                        continue;
                    };
                    let w = self.workers.remove(i);
                    self.gone_busy += w.assigned_busy;
                    self.gone_requests += w.assigned;
                    delta -= 1;
                    let gone = Gone {
                        was_ready: true,
                        served: w.assigned,
                    };
                    actions.extend(self.pool.gone(id, now, gone).1);
                }
                Action::Spawn { id, .. } => {
                    let ready_at = t + self.model.worker_startup;
                    // The model knows when the worker will be ready.
                    self.pool
                        .ready(id, Duration::from_secs_f64(ready_at.max(0.0)));
                    self.workers.push(Worker {
                        id,
                        spawned_at: t,
                        ready_at,
                        busy_until: vec![0.0; self.model.threads.max(1) as usize],
                        assigned_busy: 0.0,
                        assigned: 0,
                    });
                    delta += 1;
                }
                // No timeouts or fork-server changes in the model.
                Action::Kill { .. }
                | Action::StartForkServer { .. }
                | Action::StopForkServer { .. } => {}
            }
        }
        delta
    }

    /// The load report the server would serve at `t`.
    pub fn report(&self, t: f64) -> LoadReport {
        let (sb, _, _) = self.scoreboard(t);
        self.tracker.report(
            &sb,
            &self.model.limits,
            self.model.threads,
            self.model.max_queue,
            self.terminating,
            (t.max(0.0) * 1000.0) as u64,
        )
    }

    /// Busy share of the threads over the last `span` (the CPU-like metric of the HPA model).
    pub fn utilization(&self, span: Duration) -> f64 {
        self.tracker.window(span).utilization
    }
}

#[cfg(test)]
mod tests {
    use wsgiscale_core::config::Algorithm;

    use super::*;

    fn model(min: u32, max: u32, algo: Algorithm) -> ServerModel {
        ServerModel {
            scaling: ScalingConfig {
                algo,
                ..ScalingConfig::default()
            },
            limits: WorkerLimits {
                min,
                max,
                initial: min,
            },
            threads: 1,
            worker_startup: 1.0,
            max_queue: 3,
        }
    }

    #[test]
    fn fifo_waits_are_exact() {
        let mut pod = Pod::new(0.0, 0.0, model(1, 1, Algorithm::Manual));
        let mut waits = vec![];
        // Three requests of 1 s at 0, 0.5, 0.6 on one thread: waits 0, 0.5, 1.4.
        assert!(pod.offer(0, 0.0, 1.0));
        assert!(pod.offer(1, 0.5, 1.0));
        assert!(pod.offer(2, 0.6, 1.0));
        assert!(
            !pod.offer(3, 0.7, 1.0),
            "the queue bound refuses the fourth"
        );
        pod.advance(10.0, &mut waits);
        let w: Vec<f32> = waits
            .iter()
            .map(|s| (s.wait * 10.0).round() / 10.0)
            .collect();
        assert_eq!(w, vec![0.0, 0.5, 1.4]);
        assert_eq!(pod.in_flight(2.5), 1);
        assert!(pod.is_drained(3.0));
    }

    #[test]
    fn a_forwarded_request_arrives_one_hop_later_and_counts_until_it_ends() {
        let mut pod = Pod::new(0.0, 0.0, model(1, 1, Algorithm::Manual));
        let mut started = vec![];
        // Held from 1.0, forwarded at 2.0, reaches the pod at 2.001; 1 s of work.
        assert!(pod.forward(7, 1.0, 2.001, 1.0));
        assert!(pod.offer(8, 2.0, 1.0));
        assert_eq!(pod.activator_in_flight(2.0), 1);
        pod.advance(2.0, &mut started);
        assert!(started.is_empty(), "not there yet");
        assert_eq!(pod.next_activator_change(2.0), Some(2.001));
        pod.advance(2.5, &mut started);
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].id, 7);
        assert!((started[0].wait - 1.001).abs() < 1e-6);
        assert_eq!(pod.activator_in_flight(2.5), 1);
        assert_eq!(pod.next_activator_change(2.5), Some(3.001));
        pod.advance(3.5, &mut started);
        assert_eq!(pod.activator_in_flight(3.5), 0);
        assert_eq!(started.iter().map(|s| s.id).collect::<Vec<_>>(), [7, 8]);
    }

    #[test]
    fn the_real_algorithm_grows_and_shrinks_the_workers() {
        let mut pod = Pod::new(0.0, 0.0, model(1, 4, Algorithm::Spare));
        let mut waits = vec![];
        let mut peak = 0;
        for s in 1..=60u32 {
            let t = f64::from(s);
            if s <= 30 {
                // Ten 1-second requests a second: everything busy.
                for k in 0..10 {
                    pod.offer(u64::from(s * 10 + k), t - 1.0 + f64::from(k) * 0.1, 1.0);
                }
            }
            pod.advance(t, &mut waits);
            pod.check(t);
            peak = peak.max(pod.workers());
        }
        assert_eq!(peak, 4);
        assert!(pod.workers() < 4, "idle workers were retired");
        let r = pod.report(60.0);
        assert_eq!(r.workers.max, 4);
    }
}
