//! The master's dispatcher: one FIFO queue of complete requests and the free "lanes" (worker
//! threads) that can take them. A request goes straight to a free lane when there is one,
//! otherwise it waits in the queue; a lane that finishes takes the oldest waiting request.
//! Free lanes are used last-in first-out, so under light load the same few workers stay warm
//! and the rest stay truly idle (a clean signal for scaling down).
//!
//! A worker chosen for retirement first stops receiving requests (its lanes are no longer
//! offered), and only exits once its in-flight requests are done, so retiring never fails a
//! request.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use wsgiscale_core::scoreboard::{Scoreboard, SlotState, WorkerSlot};

use crate::proto::Head;

/// A worker's id, unique for the server's life.
pub type WorkerId = u64;

/// A piece of a streamed response body.
#[derive(Debug)]
pub enum Chunk {
    /// More body bytes.
    Data(Bytes),
    /// The response is complete.
    End,
    /// The response failed part-way; the connection must be closed.
    Abort,
}

/// Why a request got no response from a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The worker died while running it (502).
    WorkerDied,
    /// It ran past `--timeout` and the worker was killed (504).
    Timeout,
}

/// What the front gets back for a request.
#[derive(Debug)]
pub enum Reply {
    /// The head, and the rest of the body when it is streamed.
    Response {
        /// Status, headers and the first body bytes.
        head: Head,
        /// Further chunks, unless the head holds the whole response.
        rest: Option<mpsc::Receiver<Chunk>>,
    },
    /// No response.
    Failed(Failure),
}

/// A complete request waiting to run.
#[derive(Debug)]
pub struct Job {
    /// The encoded request frame (stream id set when a lane is chosen).
    pub frame: BytesMut,
    /// Where the reply goes.
    pub reply: oneshot::Sender<Reply>,
    /// When it entered the server's queue.
    pub enqueued: Instant,
    /// The dispatcher's record of this request on its lane (set when a lane takes it; give
    /// it back to [`Dispatcher::finish`]).
    pub ticket: Ticket,
    /// Method and target, for the log lines about this request (a timeout). Both are
    /// reference-counted: no copy per request.
    pub target: (http::Method, http::Uri),
}

/// Names one request's record on a worker's lane, from hand-out to [`Dispatcher::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ticket(u64);

/// How a lane's request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The worker answered it.
    Served,
    /// Its client went away (before it ran, or while it ran and was cancelled): not counted
    /// as a completed request, nor towards max-requests.
    Abandoned,
}

/// What a lane does after finishing a request.
#[derive(Debug)]
pub enum AfterFinish {
    /// Run this waiting request next.
    Next(Job),
    /// Nothing waits; the lane is free.
    Idle,
    /// The worker is retiring and has nothing in flight: shut it down.
    Drained,
}

#[derive(Debug)]
struct Slot {
    inbox: mpsc::UnboundedSender<Job>,
    threads: u32,
    busy: u32,
    ready: bool,
    retiring: bool,
    spawned_at: Instant,
    requests: u64,
    busy_time: Duration,
    /// One record per request on a lane: its ticket and when the lane took it.
    in_flight: Vec<(Ticket, Instant)>,
    rss_bytes: Option<u64>,
}

impl Slot {
    /// Records `job` on a lane of this worker (busy, ticket, start time).
    fn take(&mut self, job: &mut Job, next: &mut u64, now: Instant) {
        *next += 1;
        job.ticket = Ticket(*next);
        self.busy += 1;
        self.in_flight.push((job.ticket, now));
    }

    /// Undoes [`Slot::take`] for a job that could not be sent.
    fn untake(&mut self, ticket: Ticket) {
        self.busy = self.busy.saturating_sub(1);
        self.in_flight.retain(|(t, _)| *t != ticket);
    }

    /// Time the lanes have run their current requests, at `now`.
    fn running(&self, now: Instant) -> Duration {
        self.in_flight
            .iter()
            .map(|(_, t)| now.saturating_duration_since(*t))
            .sum()
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Job>,
    idle: Vec<WorkerId>,
    workers: HashMap<WorkerId, Slot>,
    completed: u64,
    busy_time_retired: Duration,
    tickets: u64,
}

/// The queue and the lanes. Cheap to share (`Arc`); every method takes the lock briefly.
#[derive(Debug)]
pub struct Dispatcher {
    state: Mutex<State>,
    max_queue: usize,
    epoch: Instant,
}

impl Dispatcher {
    /// An empty dispatcher holding at most `max_queue` waiting requests.
    pub fn new(max_queue: usize) -> Self {
        Dispatcher {
            state: Mutex::new(State::default()),
            max_queue,
            epoch: Instant::now(),
        }
    }

    /// The instant the scoreboard clock counts from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Hands `job` to a free lane or queues it; gives it back when the queue is full.
    pub fn submit(&self, mut job: Job) -> Result<(), Box<Job>> {
        let mut st = self.state.lock();
        let st = &mut *st;
        while let Some(id) = st.idle.pop() {
            let Some(slot) = st.workers.get_mut(&id) else {
                continue;
            };
            if slot.retiring || !slot.ready || slot.busy >= slot.threads {
                continue;
            }
            slot.take(&mut job, &mut st.tickets, Instant::now());
            let ticket = job.ticket;
            match slot.inbox.send(job) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(j)) => {
                    // The link is gone; it will be removed shortly. Try another lane.
                    slot.untake(ticket);
                    return self.queue_locked(st, j);
                }
            }
        }
        self.queue_locked(st, job)
    }

    fn queue_locked(&self, st: &mut State, job: Job) -> Result<(), Box<Job>> {
        if st.queue.len() >= self.max_queue {
            return Err(Box::new(job));
        }
        st.queue.push_back(job);
        Ok(())
    }

    /// Registers a starting worker whose link task reads `inbox`.
    pub fn register(&self, id: WorkerId, threads: u32, inbox: mpsc::UnboundedSender<Job>) {
        let mut st = self.state.lock();
        st.workers.insert(
            id,
            Slot {
                inbox,
                threads,
                busy: 0,
                ready: false,
                retiring: false,
                spawned_at: Instant::now(),
                requests: 0,
                busy_time: Duration::ZERO,
                in_flight: Vec::new(),
                rss_bytes: None,
            },
        );
    }

    /// The worker is ready: returns waiting jobs for its lanes (they count as running) and
    /// offers the remaining lanes.
    pub fn ready(&self, id: WorkerId) -> Vec<Job> {
        let mut st = self.state.lock();
        let st = &mut *st;
        let Some(slot) = st.workers.get_mut(&id) else {
            return Vec::new();
        };
        slot.ready = true;
        let mut jobs = Vec::new();
        if slot.retiring {
            return jobs;
        }
        let now = Instant::now();
        for _ in 0..slot.threads {
            match pop_live(&mut st.queue) {
                Some(mut job) => {
                    slot.take(&mut job, &mut st.tickets, now);
                    jobs.push(job);
                }
                None => st.idle.push(id),
            }
        }
        jobs
    }

    /// A lane of worker `id` is done with the request of `ticket`, which `ended` as it did.
    /// Only served requests count as completed (the load report's throughput) and towards
    /// the worker's max-requests; the lane's busy time counts either way.
    pub fn finish(&self, id: WorkerId, ticket: Ticket, ended: Ended) -> AfterFinish {
        let now = Instant::now();
        let mut st = self.state.lock();
        let st = &mut *st;
        if ended == Ended::Served {
            st.completed += 1;
        }
        let Some(slot) = st.workers.get_mut(&id) else {
            return AfterFinish::Drained;
        };
        if ended == Ended::Served {
            slot.requests += 1;
        }
        if let Some(i) = slot.in_flight.iter().position(|(t, _)| *t == ticket) {
            let (_, started) = slot.in_flight.swap_remove(i);
            slot.busy_time += now.saturating_duration_since(started);
        }
        if slot.retiring {
            slot.busy = slot.busy.saturating_sub(1);
            return if slot.busy == 0 {
                AfterFinish::Drained
            } else {
                AfterFinish::Idle
            };
        }
        if let Some(mut job) = pop_live(&mut st.queue) {
            // The lane stays busy: the next request takes the finished one's place.
            slot.busy = slot.busy.saturating_sub(1);
            slot.take(&mut job, &mut st.tickets, now);
            return AfterFinish::Next(job);
        }
        slot.busy = slot.busy.saturating_sub(1);
        st.idle.push(id);
        AfterFinish::Idle
    }

    /// Marks a worker as retiring: it gets no new requests. True when it has none in flight
    /// (shut it down now); otherwise its last `finish` returns `Drained`.
    pub fn retire(&self, id: WorkerId) -> bool {
        let mut st = self.state.lock();
        st.idle.retain(|w| *w != id);
        match st.workers.get_mut(&id) {
            Some(slot) => {
                slot.retiring = true;
                slot.busy == 0
            }
            None => true,
        }
    }

    /// Whether the worker is busy on every lane (or not known).
    pub fn is_busy(&self, id: WorkerId) -> bool {
        let st = self.state.lock();
        st.workers.get(&id).is_none_or(|s| s.busy > 0)
    }

    /// Forgets a worker that exited.
    pub fn remove(&self, id: WorkerId) {
        let mut st = self.state.lock();
        st.idle.retain(|w| *w != id);
        if let Some(slot) = st.workers.remove(&id) {
            st.busy_time_retired += slot.busy_time;
        }
    }

    /// Puts back jobs that were handed to a worker that died before running them.
    pub fn requeue_front(&self, jobs: Vec<Job>) {
        let mut st = self.state.lock();
        for job in jobs.into_iter().rev() {
            st.queue.push_front(job);
        }
        // Offer them to free lanes.
        let mut pending = Vec::new();
        while let Some(id) = st.idle.last().copied() {
            let Some(job) = st.queue.pop_front() else {
                break;
            };
            st.idle.pop();
            pending.push((id, job));
        }
        let st = &mut *st;
        for (id, job) in pending {
            match st.workers.get_mut(&id) {
                Some(slot) if slot.ready && !slot.retiring && slot.busy < slot.threads => {
                    let mut job = job;
                    slot.take(&mut job, &mut st.tickets, Instant::now());
                    let ticket = job.ticket;
                    if let Err(mpsc::error::SendError(j)) = slot.inbox.send(job) {
                        slot.untake(ticket);
                        st.queue.push_front(j);
                    }
                }
                _ => st.queue.push_front(job),
            }
        }
    }

    /// Records a worker's resident memory.
    pub fn set_rss(&self, id: WorkerId, rss: Option<u64>) {
        if let Some(slot) = self.state.lock().workers.get_mut(&id) {
            slot.rss_bytes = rss;
        }
    }

    /// Requests waiting now.
    pub fn queue_depth(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Total requests completed, and total busy thread-time including exited workers.
    pub fn totals(&self) -> (u64, Duration) {
        let st = self.state.lock();
        let now = Instant::now();
        let live: Duration = st
            .workers
            .values()
            .map(|s| s.busy_time + s.running(now))
            .sum();
        (st.completed, st.busy_time_retired + live)
    }

    /// Whether any worker can take requests.
    pub fn any_ready(&self) -> bool {
        self.state
            .lock()
            .workers
            .values()
            .any(|s| s.ready && !s.retiring)
    }

    /// A snapshot for the scaling algorithms and the load report.
    pub fn snapshot(&self) -> Scoreboard {
        let now = Instant::now();
        let st = self.state.lock();
        let mut workers: Vec<WorkerSlot> = st
            .workers
            .iter()
            .map(|(id, s)| {
                let state = if s.retiring {
                    SlotState::Retiring
                } else if !s.ready {
                    SlotState::Starting
                } else if s.busy >= s.threads {
                    SlotState::Busy
                } else {
                    SlotState::Idle
                };
                let running = s.running(now);
                WorkerSlot {
                    id: *id,
                    state,
                    busy_threads: s.busy,
                    threads: s.threads,
                    busy_time: s.busy_time + running,
                    spawned_at: s.spawned_at.saturating_duration_since(self.epoch),
                    requests: s.requests,
                    rss_bytes: s.rss_bytes,
                }
            })
            .collect();
        workers.sort_by_key(|w| w.id);
        Scoreboard {
            now: now.saturating_duration_since(self.epoch),
            queue_depth: st.queue.len() as u32,
            oldest_wait: st
                .queue
                .front()
                .map(|j| now.saturating_duration_since(j.enqueued))
                .unwrap_or_default(),
            workers,
        }
    }
}

/// Pops the oldest job whose client is still waiting (abandoned ones are dropped unrun).
fn pop_live(queue: &mut VecDeque<Job>) -> Option<Job> {
    while let Some(job) = queue.pop_front() {
        if !job.reply.is_closed() {
            return Some(job);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> (Job, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        (
            Job {
                frame: BytesMut::new(),
                reply: tx,
                enqueued: Instant::now(),
                ticket: Ticket::default(),
                target: (http::Method::GET, http::Uri::from_static("/")),
            },
            rx,
        )
    }

    fn worker(d: &Dispatcher, id: WorkerId, threads: u32) -> mpsc::UnboundedReceiver<Job> {
        let (tx, rx) = mpsc::unbounded_channel();
        d.register(id, threads, tx);
        rx
    }

    #[test]
    fn queues_until_a_worker_is_ready_then_fifo() {
        let d = Dispatcher::new(10);
        let mut inbox = worker(&d, 1, 1);
        let (a, _ra) = job();
        let (b, _rb) = job();
        d.submit(a).expect("queued");
        d.submit(b).expect("queued");
        assert_eq!(d.queue_depth(), 2);
        let first = d.ready(1);
        assert_eq!(first.len(), 1, "one lane takes one job");
        assert_eq!(d.queue_depth(), 1);
        assert!(
            inbox.try_recv().is_err(),
            "ready() returns jobs, it does not send them"
        );
        let next = match d.finish(1, first[0].ticket, Ended::Served) {
            AfterFinish::Next(j) => j,
            other => panic!("expected the queued job, got {other:?}"),
        };
        assert!(matches!(
            d.finish(1, next.ticket, Ended::Served),
            AfterFinish::Idle
        ));
        let (c, _rc) = job();
        d.submit(c).expect("dispatched");
        assert!(
            inbox.try_recv().is_ok(),
            "a free lane gets the job directly"
        );
    }

    /// Two lanes of one worker: finishing the older request leaves the newer one's record
    /// (its start time, so the busy time and the oldest in flight stay right). Before, the
    /// record was found by an Instant from another clock reading, missed, and the last one
    /// pushed (the newer request's) was removed instead.
    #[test]
    fn each_lane_keeps_its_own_record() {
        let d = Dispatcher::new(10);
        let mut inbox = worker(&d, 1, 2);
        d.ready(1);
        let (a, _ra) = job();
        d.submit(a).expect("dispatched");
        let a = inbox.try_recv().expect("a sent");
        std::thread::sleep(Duration::from_millis(30));
        let (b, _rb) = job();
        d.submit(b).expect("dispatched");
        let b = inbox.try_recv().expect("b sent");
        assert_ne!(a.ticket, b.ticket);
        d.finish(1, a.ticket, Ended::Served);
        let st = d.state.lock();
        let slot = &st.workers[&1];
        assert_eq!(slot.in_flight.len(), 1);
        assert_eq!(
            slot.in_flight[0].0, b.ticket,
            "b is still in flight, a is done"
        );
        assert!(slot.busy_time >= Duration::from_millis(30), "a ran 30 ms");
        let b_running = slot.running(Instant::now());
        assert!(
            b_running < Duration::from_millis(30),
            "b runs since it started, not since a did: {b_running:?}"
        );
    }

    /// A request whose client went away is neither a completed request nor one towards
    /// max-requests.
    #[test]
    fn abandoned_requests_are_not_completed() {
        let d = Dispatcher::new(10);
        let mut inbox = worker(&d, 1, 1);
        d.ready(1);
        let (a, _ra) = job();
        d.submit(a).expect("dispatched");
        let a = inbox.try_recv().expect("sent");
        d.finish(1, a.ticket, Ended::Abandoned);
        assert_eq!(d.totals().0, 0);
        assert_eq!(d.snapshot().workers[0].requests, 0);
        let (b, _rb) = job();
        d.submit(b).expect("dispatched");
        let b = inbox.try_recv().expect("sent");
        d.finish(1, b.ticket, Ended::Served);
        assert_eq!(d.totals().0, 1);
        assert_eq!(d.snapshot().workers[0].requests, 1);
    }

    #[test]
    fn full_queue_rejects() {
        let d = Dispatcher::new(1);
        let (a, _ra) = job();
        let (b, _rb) = job();
        d.submit(a).expect("queued");
        assert!(d.submit(b).is_err());
    }

    #[test]
    fn abandoned_requests_are_skipped() {
        let d = Dispatcher::new(10);
        let _inbox = worker(&d, 1, 1);
        let (a, ra) = job();
        d.submit(a).expect("queued");
        drop(ra);
        assert!(d.ready(1).is_empty());
    }

    #[test]
    fn retiring_worker_gets_nothing_new_and_drains() {
        let d = Dispatcher::new(10);
        let mut inbox = worker(&d, 1, 2);
        assert!(d.ready(1).is_empty());
        let (a, _ra) = job();
        d.submit(a).expect("dispatched");
        let a = inbox.try_recv().expect("sent");
        assert!(!d.retire(1), "one request in flight");
        let (b, _rb) = job();
        d.submit(b).expect("queued, not dispatched");
        assert!(inbox.try_recv().is_err());
        assert_eq!(d.queue_depth(), 1);
        assert!(matches!(
            d.finish(1, a.ticket, Ended::Served),
            AfterFinish::Drained
        ));
        let sb = d.snapshot();
        assert_eq!(sb.workers[0].state, SlotState::Retiring);
    }

    #[test]
    fn threads_make_lanes_and_busy_means_all_lanes() {
        let d = Dispatcher::new(10);
        let mut inbox = worker(&d, 7, 2);
        d.ready(7);
        let (a, _ra) = job();
        d.submit(a).expect("dispatched");
        assert_eq!(d.snapshot().workers[0].state, SlotState::Idle);
        let (b, _rb) = job();
        d.submit(b).expect("dispatched");
        assert_eq!(d.snapshot().workers[0].state, SlotState::Busy);
        assert!(inbox.try_recv().is_ok() && inbox.try_recv().is_ok());
        let (c, _rc) = job();
        d.submit(c).expect("queued");
        assert_eq!(d.snapshot().queue_depth, 1);
    }

    #[test]
    fn retired_and_removed_workers_leave_no_idle_entries() {
        let d = Dispatcher::new(10);
        let _a = worker(&d, 1, 4);
        let _b = worker(&d, 2, 4);
        d.ready(1);
        d.ready(2);
        assert_eq!(d.state.lock().idle.len(), 8);
        assert!(d.retire(1));
        d.remove(1);
        d.remove(2);
        assert!(d.state.lock().idle.is_empty());
    }

    #[test]
    fn requeued_jobs_go_first() {
        let d = Dispatcher::new(10);
        let (a, _ra) = job();
        let (b, _rb) = job();
        let a_time = a.enqueued;
        d.submit(b).expect("queued");
        d.requeue_front(vec![a]);
        let mut inbox = worker(&d, 1, 1);
        let got = d.ready(1);
        assert_eq!(got[0].enqueued, a_time);
        assert!(inbox.try_recv().is_err());
    }
}
