//! The master's dispatcher: one FIFO queue of complete requests and the free "lanes" (worker
//! threads) that can take them. A request goes straight to a free lane when there is one,
//! otherwise it waits in the queue; a lane that finishes takes the oldest waiting request.
//! Free lanes are used last-in first-out, so under light load the same few workers stay warm
//! and the rest stay truly idle (a clean signal for scaling down).
//!
//! A worker chosen for retirement first stops receiving requests (its lanes are no longer
//! offered), and only exits once its in-flight requests are done, so retiring never fails a
//! request.
//!
//! Look-ahead: when every lane is busy, each worker may also hold [`Dispatcher::new`]'s
//! `ahead` waiting requests of its own, already written into its request ring, so that a
//! worker finishing a request starts the next one at once instead of sleeping until the
//! master hands it one. They stay part of the one FIFO: a look-ahead request is revocable
//! until its worker starts it (a claim word, [`crate::ring::claim`]), and when a lane
//! anywhere falls idle with nothing queued, the dispatcher asks a worker holding one to give
//! it back ([`ToLink::Revoke`]), so no request waits behind a busy worker while another idles.
//! The load report counts look-ahead requests as queued, not as busy lanes.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use wsgiscale_core::loadtrack::Totals;
use wsgiscale_core::scoreboard::{Scoreboard, SlotState, WorkerSlot};

use crate::proto::Head;
use crate::spool::SpoolReader;

/// A worker's id, unique for the server's life.
pub type WorkerId = u64;

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
    /// The head, and the body when it is streamed.
    Response {
        /// Status and headers, and the whole body when `rest` is `None`.
        head: Head,
        /// The streamed body, buffered by the master ([`crate::spool`]), unless the head
        /// holds the whole response.
        rest: Option<SpoolReader>,
    },
    /// No response.
    Failed(Failure),
}

/// What the dispatcher sends a worker's link.
#[derive(Debug)]
pub enum ToLink {
    /// Write this request to the worker.
    Run(Job),
    /// Take back a look-ahead request the worker has not started (all of them with `all`)
    /// and give it back to the queue.
    Revoke {
        /// Every one, not just the newest (the worker retires).
        all: bool,
    },
}

/// A complete request waiting to run.
#[derive(Debug)]
pub struct Job {
    /// The encoded request frame (its stream id set by the link that writes it).
    pub frame: BytesMut,
    /// The body, when it is in a temporary file rather than in the frame (a `RequestFile`):
    /// its descriptor goes to the worker with the frame.
    pub body_file: Option<Arc<File>>,
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
    /// Given to a worker with no free lane, as its look-ahead (revocable until it starts).
    pub ahead: bool,
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
    /// A look-ahead request taken back before it started (it runs elsewhere).
    Revoked,
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
    inbox: mpsc::UnboundedSender<ToLink>,
    threads: u32,
    /// Requests on the worker: running ones and look-ahead ones (at most threads + ahead).
    busy: u32,
    ready: bool,
    retiring: bool,
    spawned_at: Instant,
    requests: u64,
    busy_time: Duration,
    /// One record per request on the worker: its ticket and when it started running (not
    /// yet, for a look-ahead request still waiting behind the worker's lanes).
    in_flight: Vec<(Ticket, Option<Instant>)>,
    memory_bytes: Option<u64>,
}

impl Slot {
    /// Records `job` on this worker (busy, ticket, start time unless it is look-ahead).
    fn take(&mut self, job: &mut Job, next: &mut u64, now: Instant) {
        *next += 1;
        job.ticket = Ticket(*next);
        job.ahead = self.busy >= self.threads;
        self.busy += 1;
        self.in_flight
            .push((job.ticket, (!job.ahead).then_some(now)));
    }

    /// Undoes [`Slot::take`] for a job that could not be sent.
    fn untake(&mut self, ticket: Ticket) {
        self.busy = self.busy.saturating_sub(1);
        self.in_flight.retain(|(t, _)| *t != ticket);
    }

    /// A lane freed: the oldest look-ahead request starts on it (the worker takes its next
    /// request as soon as a lane is done).
    fn promote(&mut self, now: Instant) {
        let running = self.in_flight.iter().filter(|(_, t)| t.is_some()).count();
        if running < self.threads as usize {
            if let Some(rec) = self.in_flight.iter_mut().find(|(_, t)| t.is_none()) {
                rec.1 = Some(now);
            }
        }
    }

    /// Time the lanes have run their current requests, at `now`.
    fn running(&self, now: Instant) -> Duration {
        self.in_flight
            .iter()
            .filter_map(|(_, t)| *t)
            .map(|t| now.saturating_duration_since(t))
            .sum()
    }

    /// Whether it takes requests at all.
    fn open(&self) -> bool {
        self.ready && !self.retiring
    }

    /// Look-ahead requests it holds.
    fn waiting(&self) -> u32 {
        self.busy.saturating_sub(self.threads)
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
    /// Requests submitted, refused ones included (the load report's arrivals).
    arrived: u64,
}

/// The queue and the lanes. Cheap to share (`Arc`); every method takes the lock briefly.
#[derive(Debug)]
pub struct Dispatcher {
    state: Mutex<State>,
    max_queue: usize,
    ahead: u32,
    epoch: Instant,
}

/// Look-ahead requests per worker by default.
pub const AHEAD: u32 = 1;

impl Dispatcher {
    /// An empty dispatcher holding at most `max_queue` waiting requests, and up to `ahead`
    /// look-ahead requests per worker.
    pub fn new(max_queue: usize, ahead: u32) -> Self {
        Dispatcher {
            state: Mutex::new(State::default()),
            max_queue,
            ahead,
            epoch: Instant::now(),
        }
    }

    /// Look-ahead requests per worker (a link has threads + this many streams).
    pub fn ahead(&self) -> u32 {
        self.ahead
    }

    /// The instant the scoreboard clock counts from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Hands `job` to a free lane, or as look-ahead to a worker with room, or queues it;
    /// gives it back when the queue is full.
    pub fn submit(&self, mut job: Job) -> Result<(), Box<Job>> {
        let mut st = self.state.lock();
        let st = &mut *st;
        st.arrived += 1;
        while let Some(id) = st.idle.pop() {
            let Some(slot) = st.workers.get_mut(&id) else {
                continue;
            };
            if !slot.open() || slot.busy >= slot.threads {
                continue;
            }
            return self.send_locked(st, id, job);
        }
        if st.queue.is_empty() && waiting_locked(st) < self.max_queue {
            // Every lane is busy: the worker with the fewest requests takes it as look-ahead
            // (it counts against --max-queue as a queued request does).
            let ahead = self.ahead;
            let best = st
                .workers
                .iter()
                .filter(|(_, s)| s.open() && s.busy < s.threads + ahead)
                .min_by_key(|(id, s)| (s.busy, **id))
                .map(|(id, _)| *id);
            if let Some(id) = best {
                return self.send_locked(st, id, job);
            }
        }
        job.ahead = false;
        self.queue_locked(st, job)
    }

    /// Records `job` on worker `id` and sends it to its link (or queues it if the link is
    /// gone).
    fn send_locked(&self, st: &mut State, id: WorkerId, mut job: Job) -> Result<(), Box<Job>> {
        let Some(slot) = st.workers.get_mut(&id) else {
            return self.queue_locked(st, job);
        };
        slot.take(&mut job, &mut st.tickets, Instant::now());
        let ticket = job.ticket;
        match slot.inbox.send(ToLink::Run(job)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(msg)) => {
                // The link is gone; it will be removed shortly.
                slot.untake(ticket);
                let ToLink::Run(mut job) = msg else {
                    return Ok(());
                };
                job.ahead = false;
                self.queue_locked(st, job)
            }
        }
    }

    fn queue_locked(&self, st: &mut State, job: Job) -> Result<(), Box<Job>> {
        if waiting_locked(st) >= self.max_queue {
            return Err(Box::new(job));
        }
        st.queue.push_back(job);
        Ok(())
    }

    /// A lane of `free` fell idle with nothing queued: ask one worker holding a look-ahead
    /// request to give it back (it then comes here through [`Dispatcher::requeue_front`]).
    fn steal_locked(st: &State, free: WorkerId) {
        let holder = st
            .workers
            .iter()
            .filter(|(id, s)| **id != free && s.waiting() > 0)
            .max_by_key(|(id, s)| (s.waiting(), **id));
        if let Some((_, slot)) = holder {
            let _ = slot.inbox.send(ToLink::Revoke { all: false });
        }
    }

    /// Registers a starting worker whose link task reads `inbox`.
    pub fn register(&self, id: WorkerId, threads: u32, inbox: mpsc::UnboundedSender<ToLink>) {
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
                memory_bytes: None,
            },
        );
    }

    /// The worker is ready: returns waiting jobs for its lanes (they count as running) and
    /// offers the remaining lanes (taking back look-ahead requests other workers hold).
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
        let mut free = 0;
        for _ in 0..slot.threads {
            match pop_live(&mut st.queue) {
                Some(mut job) => {
                    slot.take(&mut job, &mut st.tickets, now);
                    jobs.push(job);
                }
                None => {
                    st.idle.push(id);
                    free += 1;
                }
            }
        }
        for _ in 0..free {
            Self::steal_locked(st, id);
        }
        jobs
    }

    /// Worker `id` is done with the request of `ticket`, which `ended` as it did. Only
    /// served requests count as completed (the load report's throughput) and towards the
    /// worker's max-requests; the lane's busy time counts either way.
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
            if let Some(started) = started {
                slot.busy_time += now.saturating_duration_since(started);
            }
        }
        slot.busy = slot.busy.saturating_sub(1);
        slot.promote(now);
        if slot.retiring {
            return if slot.busy == 0 {
                AfterFinish::Drained
            } else {
                AfterFinish::Idle
            };
        }
        if let Some(mut job) = pop_live(&mut st.queue) {
            // The next request takes the finished one's place.
            slot.take(&mut job, &mut st.tickets, now);
            return AfterFinish::Next(job);
        }
        if slot.busy < slot.threads {
            st.idle.push(id);
            Self::steal_locked(st, id);
        }
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
                if slot.waiting() > 0 {
                    // Its look-ahead requests go back to the queue, for the others.
                    let _ = slot.inbox.send(ToLink::Revoke { all: true });
                }
                slot.busy == 0
            }
            None => true,
        }
    }

    /// Forgets a worker that exited.
    pub fn remove(&self, id: WorkerId) {
        let mut st = self.state.lock();
        st.idle.retain(|w| *w != id);
        if let Some(slot) = st.workers.remove(&id) {
            st.busy_time_retired += slot.busy_time;
        }
    }

    /// Puts back jobs that were handed to a worker that died before running them (or taken
    /// back from its look-ahead), ahead of everything queued.
    pub fn requeue_front(&self, jobs: Vec<Job>) {
        let mut st = self.state.lock();
        let st = &mut *st;
        for mut job in jobs.into_iter().rev() {
            job.ahead = false;
            st.queue.push_front(job);
        }
        // Offer them to free lanes.
        while let Some(id) = st.idle.last().copied() {
            let open = st
                .workers
                .get(&id)
                .is_some_and(|s| s.open() && s.busy < s.threads);
            if !open {
                st.idle.pop();
                continue;
            }
            let Some(job) = pop_live(&mut st.queue) else {
                break;
            };
            st.idle.pop();
            if let Err(job) = self.send_locked(st, id, job) {
                st.queue.push_front(*job);
            }
        }
    }

    /// Records a worker's memory (its USS, [`crate::procmem`]).
    pub fn set_memory(&self, id: WorkerId, rss: Option<u64>) {
        if let Some(slot) = self.state.lock().workers.get_mut(&id) {
            slot.memory_bytes = rss;
        }
    }

    /// Requests waiting now (queued, or look-ahead on a worker not started).
    pub fn queue_depth(&self) -> usize {
        waiting_locked(&self.state.lock())
    }

    /// Requests completed, busy thread-time including exited workers, and requests
    /// submitted (refused ones included), over the dispatcher's life.
    pub fn totals(&self) -> Totals {
        let st = self.state.lock();
        let now = Instant::now();
        let live: Duration = st
            .workers
            .values()
            .map(|s| s.busy_time + s.running(now))
            .sum();
        Totals {
            completed: st.completed,
            busy: st.busy_time_retired + live,
            arrived: st.arrived,
        }
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
                    busy_threads: s.busy.min(s.threads),
                    threads: s.threads,
                    busy_time: s.busy_time + running,
                    spawned_at: s.spawned_at.saturating_duration_since(self.epoch),
                    requests: s.requests,
                    memory_bytes: s.memory_bytes,
                }
            })
            .collect();
        workers.sort_by_key(|w| w.id);
        let ahead: u32 = st.workers.values().map(Slot::waiting).sum();
        Scoreboard {
            now: now.saturating_duration_since(self.epoch),
            queue_depth: st.queue.len() as u32 + ahead,
            oldest_wait: st
                .queue
                .front()
                .map(|j| now.saturating_duration_since(j.enqueued))
                .unwrap_or_default(),
            workers,
        }
    }
}

/// Requests waiting: queued, or held as look-ahead by a worker.
fn waiting_locked(st: &State) -> usize {
    st.queue.len()
        + st.workers
            .values()
            .map(|s| s.waiting() as usize)
            .sum::<usize>()
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
                body_file: None,
                reply: tx,
                enqueued: Instant::now(),
                ticket: Ticket::default(),
                target: (http::Method::GET, http::Uri::from_static("/")),
                ahead: false,
            },
            rx,
        )
    }

    /// A registered worker's inbox, seen as the link sees it.
    struct Inbox(mpsc::UnboundedReceiver<ToLink>);

    impl Inbox {
        /// The next request sent, if any.
        fn try_recv(&mut self) -> Result<Job, String> {
            match self.0.try_recv() {
                Ok(ToLink::Run(job)) => Ok(job),
                Ok(other) => Err(format!("expected a request, got {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        }

        /// The next message, if any.
        fn next(&mut self) -> Option<ToLink> {
            self.0.try_recv().ok()
        }
    }

    fn worker(d: &Dispatcher, id: WorkerId, threads: u32) -> Inbox {
        let (tx, rx) = mpsc::unbounded_channel();
        d.register(id, threads, tx);
        Inbox(rx)
    }

    #[test]
    fn queues_until_a_worker_is_ready_then_fifo() {
        let d = Dispatcher::new(10, 0);
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
        let d = Dispatcher::new(10, 0);
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
        let d = Dispatcher::new(10, 0);
        let mut inbox = worker(&d, 1, 1);
        d.ready(1);
        let (a, _ra) = job();
        d.submit(a).expect("dispatched");
        let a = inbox.try_recv().expect("sent");
        d.finish(1, a.ticket, Ended::Abandoned);
        assert_eq!(d.totals().completed, 0);
        assert_eq!(d.snapshot().workers[0].requests, 0);
        let (b, _rb) = job();
        d.submit(b).expect("dispatched");
        let b = inbox.try_recv().expect("sent");
        d.finish(1, b.ticket, Ended::Served);
        assert_eq!(d.totals().completed, 1);
        assert_eq!(d.snapshot().workers[0].requests, 1);
    }

    #[test]
    fn full_queue_rejects() {
        let d = Dispatcher::new(1, 0);
        let (a, _ra) = job();
        let (b, _rb) = job();
        d.submit(a).expect("queued");
        assert!(d.submit(b).is_err());
        // Both count as arrivals: a refused request is demand the server could not take.
        assert_eq!(d.totals().arrived, 2);
    }

    #[test]
    fn abandoned_requests_are_skipped() {
        let d = Dispatcher::new(10, 0);
        let _inbox = worker(&d, 1, 1);
        let (a, ra) = job();
        d.submit(a).expect("queued");
        drop(ra);
        assert!(d.ready(1).is_empty());
    }

    #[test]
    fn retiring_worker_gets_nothing_new_and_drains() {
        let d = Dispatcher::new(10, 0);
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
        let d = Dispatcher::new(10, 0);
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
        let d = Dispatcher::new(10, 0);
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
        let d = Dispatcher::new(10, 0);
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

    /// Two ready one-thread workers with look-ahead, and `n` requests submitted (their
    /// reply receivers kept open, so none counts as abandoned).
    fn two_workers_with_look_ahead(
        n: usize,
    ) -> (Dispatcher, Inbox, Inbox, Vec<oneshot::Receiver<Reply>>) {
        let d = Dispatcher::new(10, 1);
        let w1 = worker(&d, 1, 1);
        let w2 = worker(&d, 2, 1);
        d.ready(1);
        d.ready(2);
        let replies = (0..n)
            .map(|_| {
                let (j, r) = job();
                d.submit(j).expect("accepted");
                r
            })
            .collect();
        (d, w1, w2, replies)
    }

    /// Two one-thread workers with look-ahead: the first two requests run, the next two wait
    /// on the workers (one each, the least loaded first), the fifth is queued; the load
    /// report counts the three as waiting and never more busy threads than there are.
    #[test]
    fn look_ahead_fills_each_worker_once_then_queues() {
        let (d, mut w1, mut w2, _held) = two_workers_with_look_ahead(5);
        let a = w1.try_recv().or_else(|_| w2.try_recv()).expect("a");
        assert!(!a.ahead);
        let (mut ahead, mut running) = (0, 1);
        for inbox in [&mut w1, &mut w2] {
            while let Ok(j) = inbox.try_recv() {
                if j.ahead {
                    ahead += 1
                } else {
                    running += 1
                }
            }
        }
        assert_eq!((running, ahead), (2, 2));
        assert_eq!(d.queue_depth(), 3);
        let sb = d.snapshot();
        assert_eq!(sb.queue_depth, 3);
        assert!(sb
            .workers
            .iter()
            .all(|w| w.busy_threads == 1 && w.state == SlotState::Busy));
    }

    /// A worker finishing with nothing queued takes back the other's look-ahead request:
    /// the holder is told to revoke it, and the request it gives back goes to the free lane.
    #[test]
    fn an_idle_lane_takes_back_look_ahead_from_a_busy_worker() {
        let (d, mut w1, mut w2, _rs) = two_workers_with_look_ahead(3);
        // Free lanes are used last-in first-out: worker 2 runs the first, worker 1 the
        // second, and worker 1 (the lower id of two equally loaded) holds the third.
        let first = w2.try_recv().expect("w2 runs one");
        let second = w1.try_recv().expect("w1 runs one");
        let third = w1.try_recv().expect("w1 holds one ahead");
        assert!(!first.ahead && !second.ahead && third.ahead);
        assert!(matches!(
            d.finish(2, first.ticket, Ended::Served),
            AfterFinish::Idle
        ));
        assert!(matches!(w1.next(), Some(ToLink::Revoke { all: false })));
        // Worker 1's link revokes it and gives it back; worker 2's free lane gets it.
        let mut back = third;
        back.ticket = Ticket::default();
        d.requeue_front(vec![back]);
        let moved = w2.try_recv().expect("the free lane runs it");
        assert!(!moved.ahead);
        assert_eq!(
            d.queue_depth(),
            1,
            "worker 1's revoked stream counts until it ends"
        );
        assert!(matches!(
            d.finish(1, third_ticket(&d, 1), Ended::Revoked),
            AfterFinish::Idle
        ));
        assert_eq!(d.queue_depth(), 0);
        assert_eq!(
            d.totals().completed,
            1,
            "a revoked request is not a completed one"
        );
        drop(second);
    }

    /// The ticket of worker `id`'s look-ahead record (the one not started).
    fn third_ticket(d: &Dispatcher, id: WorkerId) -> Ticket {
        let st = d.state.lock();
        st.workers[&id]
            .in_flight
            .iter()
            .find(|(_, started)| started.is_none())
            .map(|(t, _)| *t)
            .expect("a look-ahead record")
    }

    /// A retiring worker gives back all its look-ahead requests.
    #[test]
    fn retiring_revokes_look_ahead() {
        let d = Dispatcher::new(10, 1);
        let mut w1 = worker(&d, 1, 1);
        d.ready(1);
        let (a, _ra) = job();
        let (b, _rb) = job();
        d.submit(a).expect("runs");
        d.submit(b).expect("ahead");
        assert!(w1.try_recv().is_ok() && w1.try_recv().expect("b").ahead);
        assert!(!d.retire(1));
        assert!(matches!(w1.next(), Some(ToLink::Revoke { all: true })));
    }

    /// When the running request ends, the look-ahead one starts: its busy time counts from
    /// then, not from when it was handed over.
    #[test]
    fn look_ahead_busy_time_starts_when_it_runs() {
        let d = Dispatcher::new(10, 1);
        let mut w1 = worker(&d, 1, 1);
        d.ready(1);
        let (a, _ra) = job();
        let (b, _rb) = job();
        d.submit(a).expect("runs");
        d.submit(b).expect("ahead");
        let a = w1.try_recv().expect("a");
        let b = w1.try_recv().expect("b");
        {
            let st = d.state.lock();
            let recs = &st.workers[&1].in_flight;
            assert!(recs.iter().any(|(t, s)| *t == b.ticket && s.is_none()));
        }
        d.finish(1, a.ticket, Ended::Served);
        let st = d.state.lock();
        let recs = &st.workers[&1].in_flight;
        assert!(recs.iter().any(|(t, s)| *t == b.ticket && s.is_some()));
    }

    mod model {
        //! The dispatcher against a model of its links, under random operations: every
        //! request is in exactly one place, no worker holds more than its lanes plus its
        //! look-ahead, and no request waits in the queue while a lane is free.
        use super::*;
        use proptest::prelude::*;

        const THREADS: [u32; 3] = [1, 2, 1];

        #[derive(Debug, Clone)]
        enum Op {
            Submit,
            /// The worker finishes its oldest running request.
            Finish(usize),
            /// The worker skips a revoked request (ends its stream).
            Skip(usize),
            Retire(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => Just(Op::Submit),
                4 => (0usize..3).prop_map(Op::Finish),
                1 => (0usize..3).prop_map(Op::Skip),
                1 => (0usize..3).prop_map(Op::Retire),
            ]
        }

        /// What a link holds: requests in arrival order, running or waiting, and revoked
        /// ones whose stream the worker has not ended yet.
        #[derive(Default)]
        struct Link {
            held: Vec<Job>,
            revoked: Vec<Ticket>,
            retiring: bool,
        }

        struct World {
            d: Dispatcher,
            inboxes: Vec<mpsc::UnboundedReceiver<ToLink>>,
            links: Vec<Link>,
            replies: Vec<oneshot::Receiver<Reply>>,
            submitted: usize,
            rejected: usize,
            finished: usize,
        }

        impl World {
            fn new() -> World {
                let d = Dispatcher::new(1000, 1);
                let mut inboxes = Vec::new();
                for (i, t) in THREADS.iter().enumerate() {
                    let (tx, rx) = mpsc::unbounded_channel();
                    d.register(i as WorkerId, *t, tx);
                    inboxes.push(rx);
                }
                let mut w = World {
                    d,
                    inboxes,
                    links: (0..THREADS.len()).map(|_| Link::default()).collect(),
                    replies: Vec::new(),
                    submitted: 0,
                    rejected: 0,
                    finished: 0,
                };
                for i in 0..THREADS.len() {
                    let jobs = w.d.ready(i as WorkerId);
                    w.links[i].held.extend(jobs);
                }
                w.settle();
                w
            }

            /// Lets every link handle its messages, as the link tasks do.
            fn settle(&mut self) {
                loop {
                    let mut any = false;
                    for i in 0..self.links.len() {
                        while let Ok(msg) = self.inboxes[i].try_recv() {
                            any = true;
                            match msg {
                                ToLink::Run(job) => self.links[i].held.push(job),
                                ToLink::Revoke { all } => self.revoke(i, all),
                            }
                        }
                    }
                    if !any {
                        return;
                    }
                }
            }

            /// Revokes the newest waiting (not running) request(s) of link `i`.
            fn revoke(&mut self, i: usize, all: bool) {
                let threads = THREADS[i] as usize;
                let mut back = Vec::new();
                while self.links[i].held.len() > threads {
                    let mut job = self.links[i].held.pop().expect("held");
                    self.links[i].revoked.push(job.ticket);
                    job.ticket = Ticket::default();
                    back.push(job);
                    if !all {
                        break;
                    }
                }
                back.reverse();
                if !back.is_empty() {
                    self.d.requeue_front(back);
                }
            }

            fn after(&mut self, i: usize, next: AfterFinish) {
                match next {
                    AfterFinish::Next(job) => self.links[i].held.push(job),
                    AfterFinish::Idle => {}
                    AfterFinish::Drained => self.links[i].retiring = true,
                }
            }

            fn apply(&mut self, op: &Op) {
                match *op {
                    Op::Submit => {
                        let (tx, rx) = oneshot::channel();
                        let job = Job {
                            frame: BytesMut::new(),
                            body_file: None,
                            reply: tx,
                            enqueued: Instant::now(),
                            ticket: Ticket::default(),
                            target: (http::Method::GET, http::Uri::from_static("/")),
                            ahead: false,
                        };
                        self.submitted += 1;
                        self.replies.push(rx);
                        if self.d.submit(job).is_err() {
                            self.rejected += 1;
                        }
                    }
                    Op::Finish(i) => {
                        if self.links[i].held.is_empty() {
                            return;
                        }
                        let job = self.links[i].held.remove(0);
                        self.finished += 1;
                        let next = self.d.finish(i as WorkerId, job.ticket, Ended::Served);
                        self.after(i, next);
                    }
                    Op::Skip(i) => {
                        let Some(t) = self.links[i].revoked.pop() else {
                            return;
                        };
                        let next = self.d.finish(i as WorkerId, t, Ended::Revoked);
                        self.after(i, next);
                    }
                    Op::Retire(i) => {
                        // Keep one worker open so requests can always run.
                        if i == 0 {
                            return;
                        }
                        self.d.retire(i as WorkerId);
                    }
                }
                self.settle();
            }

            fn check(&self) -> Result<(), TestCaseError> {
                let st = self.d.state.lock();
                let held: usize = self.links.iter().map(|l| l.held.len()).sum();
                prop_assert_eq!(
                    self.submitted,
                    self.rejected + self.finished + held + st.queue.len(),
                    "every request is in exactly one place"
                );
                for (i, l) in self.links.iter().enumerate() {
                    let slot = &st.workers[&(i as WorkerId)];
                    prop_assert_eq!(slot.busy as usize, l.held.len() + l.revoked.len());
                    prop_assert!(slot.busy <= slot.threads + 1, "lanes plus one look-ahead");
                    prop_assert!(
                        slot.in_flight.iter().filter(|(_, t)| t.is_some()).count()
                            <= slot.threads as usize
                    );
                }
                if !st.queue.is_empty() {
                    for (id, slot) in &st.workers {
                        prop_assert!(
                            !slot.open() || slot.busy >= slot.threads,
                            "worker {} has a free lane while {} requests wait",
                            id,
                            st.queue.len()
                        );
                    }
                }
                Ok(())
            }
        }

        proptest! {
            #[test]
            fn requests_are_conserved_and_never_wait_beside_a_free_lane(
                ops in proptest::collection::vec(op(), 1..200)
            ) {
                let mut w = World::new();
                w.check()?;
                for op in &ops {
                    w.apply(op);
                    w.check()?;
                }
            }
        }
    }
}
