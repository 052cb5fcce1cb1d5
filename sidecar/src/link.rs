//! The master's end of one worker's link: a task that writes the requests the dispatcher
//! hands it into the worker's request ring, routes the response frames it finds in the
//! response ring to the waiting clients, and notices the worker's death by its socket (every
//! request it held gets a 502; requests it had not started are put back in the queue, so
//! nobody else notices). The rings are shared memory ([`crate::ring`]): the task drains
//! the response ring every time it runs, and the worker is told that the master sleeps only
//! when the front's runtime is about to block ([`crate::park`]), so a worker never makes a
//! system call to hand over a response while the master is busy.

use std::sync::Arc;
use std::time::Instant;

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::dispatch::{
    AfterFinish, Chunk, Dispatcher, Ended, Failure, Job, Reply, Ticket, ToLink, WorkerId,
};
use crate::proto::{self, Frame, Kind};
use crate::ring::{self, Consumer, Dir, Producer, Word};
use crate::shm::{Bell, Region};
use crate::state::Shared;

/// Streamed body chunks buffered per response before the worker is made to wait.
const BODY_CHANNEL: usize = 16;

/// The master's end of a worker's link.
pub struct Channel {
    /// The shared region (the master's mapping).
    pub region: Region,
    /// The worker's socket: no data, its end of file is the worker's death.
    pub sock: UnixStream,
    /// The master's doorbell (registered with tokio).
    pub bell: AsyncFd<OwnedFd>,
    /// Wakes the worker's reader.
    pub worker_read: Bell,
    /// Wakes a worker writer waiting for room.
    pub worker_write: Bell,
}

/// What a link tells the supervisor.
#[derive(Debug)]
pub enum LinkEvent {
    /// The worker is ready to take requests.
    Ready {
        /// Worker.
        id: WorkerId,
        /// Its pid.
        pid: u32,
    },
    /// The worker's socket closed: it exited or was killed.
    Gone {
        /// Worker.
        id: WorkerId,
        /// Requests it failed (502/504).
        failed: u32,
        /// The worker's own last words (e.g. an import error), if any.
        fatal: Option<String>,
        /// Whether it had ever become ready.
        was_ready: bool,
        /// Requests it completed.
        served: u64,
    },
    /// A request on this worker exceeded `--timeout`.
    TimedOut {
        /// Worker.
        id: WorkerId,
    },
}

/// Commands from the supervisor.
#[derive(Debug)]
pub enum LinkCmd {
    /// Send `Shutdown`: the worker exits when its in-flight requests are done.
    Shutdown,
    /// The worker is being killed for a timeout: fail the overdue requests with 504.
    TimedOut,
}

/// One stream of the link: a request the worker runs, or holds as look-ahead.
struct Lane {
    reply: Option<tokio::sync::oneshot::Sender<Reply>>,
    body: Option<mpsc::Sender<Chunk>>,
    /// When it started running (for a look-ahead request: when a lane freed for it).
    started: Instant,
    /// Counts as running (the timeout applies): false for look-ahead waiting behind the
    /// worker's lanes.
    running: bool,
    cancelled: bool,
    /// The dispatcher's record of this request.
    ticket: Ticket,
    /// Method and target, for the timeout's log line.
    target: (http::Method, http::Uri),
    /// The request as written, kept while the worker may not have started it (look-ahead),
    /// so that it can be revoked and run elsewhere.
    frame: Option<BytesMut>,
    /// When it entered the queue (kept for a revoked request's new turn).
    enqueued: Instant,
    /// Taken back: the worker skips it and ends the stream; no response is expected.
    revoked: bool,
    /// Order of assignment (the newest look-ahead is revoked first).
    seq: u64,
}

/// The link's fixed parameters.
pub struct LinkParams {
    /// Worker id.
    pub id: WorkerId,
    /// Threads (lanes).
    pub threads: u32,
    /// Look-ahead requests on top (the link has threads + ahead streams).
    pub ahead: u32,
    /// Largest frame accepted from the worker.
    pub max_frame: usize,
}

struct Link {
    p: LinkParams,
    dispatcher: Arc<Dispatcher>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<LinkEvent>,
    region: Arc<Region>,
    tx: Producer,
    rx: Consumer,
    /// Bytes for the request ring that did not fit yet, in order.
    pending: VecDeque<Bytes>,
    /// Response bytes copied out of the ring, not yet decoded.
    inbuf: BytesMut,
    worker_read: Bell,
    worker_write: Bell,
    lanes: Vec<Option<Lane>>,
    seq: u64,
    ready: bool,
    fatal: Option<String>,
    failed: u32,
    served: u64,
    shutdown_sent: bool,
}

/// Runs the link until the worker's socket closes.
pub async fn run(
    p: LinkParams,
    chan: Channel,
    mut inbox: mpsc::UnboundedReceiver<ToLink>,
    mut cmds: mpsc::UnboundedReceiver<LinkCmd>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    let dispatcher = shared.dispatcher.clone();
    let Channel {
        region,
        sock,
        bell,
        worker_read,
        worker_write,
    } = chan;
    let region = Arc::new(region);
    // With the runtime's park hook, the master's sleep is announced for all links at once
    // ([`crate::park`]); without it, this task announces its own.
    let watching = crate::park::watch(region.clone());
    let streams = (p.threads + p.ahead).min(ring::MAX_STREAMS as u32);
    let lanes = (0..streams).map(|_| None).collect();
    let mut link = Link {
        p,
        dispatcher,
        shared,
        events,
        region: region.clone(),
        tx: Producer::new(Dir::ToWorker),
        rx: Consumer::new(Dir::ToMaster),
        pending: VecDeque::new(),
        inbuf: BytesMut::with_capacity(64 * 1024),
        worker_read,
        worker_write,
        lanes,
        seq: 0,
        ready: false,
        fatal: None,
        failed: 0,
        served: 0,
        shutdown_sent: false,
    };
    let mut timed_out_reported = false;
    loop {
        if let Err(e) = link.pump().await {
            tracing::error!(worker = link.p.id, error = %e, "worker link failed");
            break;
        }
        let announced = match &watching {
            Some(w) => {
                // Bytes still pending mean the last push found the request ring full.
                let full_at = (!link.pending.is_empty()).then(|| link.tx.full_at(&*link.region));
                w.note(link.rx.head(), full_at);
                false
            }
            None => {
                // About to wait: say so, then look once more (the need-wakeup protocol), so
                // the worker rings only when this task really sleeps.
                ring::announce(&*link.region, Word::MasterWaits);
                match link.has_work() {
                    Ok(true) => {
                        ring::retract(&*link.region, Word::MasterWaits);
                        continue;
                    }
                    Ok(false) => true,
                    Err(e) => {
                        tracing::error!(worker = link.p.id, error = %e, "worker link failed");
                        break;
                    }
                }
            }
        };
        let deadline = link.next_deadline();
        let gone = tokio::select! {
            biased;
            () = stirred(watching.as_deref()) => false,
            ready = bell.readable() => match ready {
                Ok(mut guard) => {
                    guard.clear_ready();
                    false
                }
                Err(_) => true,
            },
            ready = sock.readable() => match ready {
                // The worker never writes to its socket: readable means its end of file
                // (or a worker breaking the protocol, the same to us).
                Ok(()) => !matches!(
                    sock.try_read(&mut [0u8; 64]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                ),
                Err(_) => true,
            },
            Some(cmd) = cmds.recv() => match cmd {
                LinkCmd::Shutdown => link.send_shutdown().is_err(),
                LinkCmd::TimedOut => {
                    link.fail_overdue();
                    false
                }
            },
            Some(msg) = inbox.recv() => match msg {
                ToLink::Run(job) => link.assign(job).is_err(),
                ToLink::Revoke { all } => {
                    link.revoke(all);
                    false
                }
            },
            _ = sleep_until(deadline), if deadline.is_some() && !timed_out_reported => {
                timed_out_reported = true;
                let _ = link.events.send(LinkEvent::TimedOut { id: link.p.id });
                false
            }
        };
        if announced {
            ring::retract(&*link.region, Word::MasterWaits);
        }
        if gone {
            break;
        }
    }
    // What the worker published before it went (its last response, an import error's
    // traceback) still counts.
    if let Err(e) = link.pump().await {
        tracing::debug!(worker = link.p.id, error = %e, "worker link ended mid-frame");
    }
    // The worker is gone. Requests it held fail; jobs not yet written go back to the queue.
    link.fail_all(Failure::WorkerDied);
    inbox.close();
    let mut unstarted = Vec::new();
    while let Ok(msg) = inbox.try_recv() {
        if let ToLink::Run(job) = msg {
            unstarted.push(job);
        }
    }
    link.dispatcher.remove(link.p.id);
    if !unstarted.is_empty() {
        link.dispatcher.requeue_front(unstarted);
    }
    let _ = link.events.send(LinkEvent::Gone {
        id: link.p.id,
        failed: link.failed,
        fatal: link.fatal.take(),
        was_ready: link.ready,
        served: link.served,
    });
}

/// Resolves when the park hook saw the worker stir; never without the hook.
async fn stirred(watch: Option<&crate::park::Watch>) {
    match watch {
        Some(w) => w.stirred_wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl Link {
    fn next_deadline(&self) -> Option<Instant> {
        let timeout = self.shared.timeout()?;
        self.lanes
            .iter()
            .flatten()
            .filter(|l| l.running && !l.revoked)
            .map(|l| l.started + timeout)
            .min()
    }

    /// Takes back look-ahead requests the worker has not started (the newest, or all) and
    /// gives them to the dispatcher's queue front.
    fn revoke(&mut self, all: bool) {
        let mut order: Vec<(u64, usize)> = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.as_ref().map(|l| (l, i)))
            .filter(|(l, _)| l.frame.is_some() && !l.revoked)
            .map(|(l, i)| (l.seq, i))
            .collect();
        order.sort_unstable_by(|a, b| b.cmp(a));
        let mut back = Vec::new();
        for (_, idx) in order {
            let won = ring::revoke(&*self.region, idx as u32);
            let Some(Some(lane)) = self.lanes.get_mut(idx) else {
                continue;
            };
            if !won {
                // The worker started it: it runs here.
                lane.frame = None;
                continue;
            }
            if let Some(job) = Self::take_back(lane) {
                back.push(job);
            }
            if !all {
                break;
            }
        }
        if !back.is_empty() {
            self.dispatcher.requeue_front(back);
        }
    }

    /// The request of a lane just revoked, as a job for another worker; the lane stays,
    /// revoked, until the worker ends the stream.
    fn take_back(lane: &mut Lane) -> Option<Job> {
        lane.revoked = true;
        lane.body = None;
        let frame = lane.frame.take()?;
        let reply = lane.reply.take()?;
        Some(Job {
            frame,
            reply,
            enqueued: lane.enqueued,
            ticket: Ticket::default(),
            target: lane.target.clone(),
            ahead: false,
        })
    }

    /// Rings the worker's reader if it said it sleeps (after publishing requests).
    fn wake_reader(&self) {
        if ring::must_ring(&*self.region, Word::WorkerReadWaits) {
            self.worker_read.ring();
        }
    }

    /// Queues `bytes` for the worker and publishes as much as fits now (straight from
    /// `bytes` when nothing waits before them, so a request is copied once).
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut at = 0;
        if self.pending.is_empty() {
            at = self.tx.push(&*self.region, bytes).map_err(corrupt)?;
            if at > 0 {
                self.wake_reader();
            }
        }
        if at < bytes.len() {
            self.pending.push_back(Bytes::copy_from_slice(&bytes[at..]));
        }
        Ok(())
    }

    /// Publishes queued bytes while the request ring has room.
    fn flush(&mut self) -> std::io::Result<()> {
        let mut moved = false;
        while let Some(front) = self.pending.front_mut() {
            let n = self.tx.push(&*self.region, front).map_err(corrupt)?;
            if n == 0 {
                break;
            }
            moved = true;
            front.advance(n);
            if front.is_empty() {
                self.pending.pop_front();
            }
        }
        if moved {
            self.wake_reader();
        }
        Ok(())
    }

    /// Whether there is something to do without waiting: responses in the ring, or room for
    /// queued request bytes.
    fn has_work(&self) -> std::io::Result<bool> {
        if self.rx.available(&*self.region).map_err(corrupt)? > 0 {
            return Ok(true);
        }
        Ok(!self.pending.is_empty() && self.tx.free(&*self.region).map_err(corrupt)? > 0)
    }

    /// Handles every response frame the worker has published, and flushes queued requests.
    async fn pump(&mut self) -> std::io::Result<()> {
        loop {
            self.flush()?;
            let n = self
                .rx
                .pull(&*self.region, &mut self.inbuf, usize::MAX)
                .map_err(corrupt)?;
            if n > 0 && ring::must_ring(&*self.region, Word::WorkerWriteWaits) {
                self.worker_write.ring();
            }
            let mut decoded = false;
            loop {
                let frame = proto::decode(&mut self.inbuf, self.p.max_frame)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let Some(frame) = frame else { break };
                decoded = true;
                self.on_frame(frame).await?;
            }
            if n == 0 && !decoded {
                return Ok(());
            }
        }
    }

    fn send_shutdown(&mut self) -> std::io::Result<()> {
        if self.shutdown_sent {
            return Ok(());
        }
        self.shutdown_sent = true;
        let mut f = BytesMut::new();
        proto::encode_simple(&mut f, Kind::Shutdown, 0, b"");
        self.write(&f)
    }

    fn assign(&mut self, mut job: Job) -> std::io::Result<()> {
        loop {
            let Some(idx) = self.lanes.iter().position(Option::is_none) else {
                // The dispatcher never over-assigns; if it did, put the job back.
                tracing::error!(worker = self.p.id, "job for a worker with no free lane");
                self.dispatcher.requeue_front(vec![job]);
                return Ok(());
            };
            let now = Instant::now();
            if job.reply.is_closed() {
                // The client left while the request waited: do not run it.
                match self
                    .dispatcher
                    .finish(self.p.id, job.ticket, Ended::Abandoned)
                {
                    AfterFinish::Next(next) => {
                        job = next;
                        continue;
                    }
                    AfterFinish::Idle => return Ok(()),
                    AfterFinish::Drained => return self.send_shutdown(),
                }
            }
            self.shared
                .metrics
                .queue_wait
                .observe(now.saturating_duration_since(job.enqueued).as_secs_f64());
            proto::set_stream(&mut job.frame, idx as u32);
            ring::offer(&*self.region, idx as u32);
            self.write(&job.frame)?;
            self.seq += 1;
            self.lanes[idx] = Some(Lane {
                reply: Some(job.reply),
                body: None,
                started: now,
                running: !job.ahead,
                cancelled: false,
                ticket: job.ticket,
                target: job.target,
                frame: job.ahead.then_some(job.frame),
                enqueued: job.enqueued,
                revoked: false,
                seq: self.seq,
            });
            return Ok(());
        }
    }

    fn finish_lane(&mut self, idx: usize) -> std::io::Result<()> {
        let Some(lane) = self.lanes.get_mut(idx).and_then(Option::take) else {
            return Ok(());
        };
        ring::release(&*self.region, idx as u32);
        // A request cancelled because its client left is not a served one, nor is one
        // taken back to run elsewhere.
        let ended = if lane.revoked {
            Ended::Revoked
        } else if lane.cancelled {
            Ended::Abandoned
        } else {
            self.served += 1;
            Ended::Served
        };
        self.promote();
        match self.dispatcher.finish(self.p.id, lane.ticket, ended) {
            AfterFinish::Next(job) => self.assign(job),
            AfterFinish::Idle => Ok(()),
            AfterFinish::Drained => self.send_shutdown(),
        }
    }

    /// A lane freed: the oldest look-ahead request now runs on it (the worker starts its
    /// next request as soon as it is done with one), so its timeout counts from now.
    fn promote(&mut self) {
        let running = self
            .lanes
            .iter()
            .flatten()
            .filter(|l| l.running && !l.revoked)
            .count();
        if running >= self.p.threads as usize {
            return;
        }
        let oldest = self
            .lanes
            .iter_mut()
            .flatten()
            .filter(|l| !l.running && !l.revoked)
            .min_by_key(|l| l.seq);
        if let Some(lane) = oldest {
            lane.running = true;
            lane.started = Instant::now();
        }
    }

    fn cancel(&mut self, idx: usize) -> std::io::Result<()> {
        let Some(Some(lane)) = self.lanes.get_mut(idx) else {
            return Ok(());
        };
        if lane.cancelled {
            return Ok(());
        }
        lane.cancelled = true;
        lane.body = None;
        let mut f = BytesMut::new();
        proto::encode_simple(&mut f, Kind::Cancel, idx as u32, b"");
        self.write(&f)
    }

    async fn on_frame(&mut self, frame: Frame) -> std::io::Result<()> {
        match frame {
            Frame::Ready { pid } => {
                self.ready = true;
                let _ = self.events.send(LinkEvent::Ready { id: self.p.id, pid });
                for job in self.dispatcher.ready(self.p.id) {
                    self.assign(job)?;
                }
            }
            Frame::Head(head) => {
                let idx = head.stream as usize;
                let end = head.end;
                let Some(Some(lane)) = self.lanes.get_mut(idx) else {
                    return Err(protocol("head for an idle stream"));
                };
                if lane.revoked {
                    return Err(protocol("response to a revoked request"));
                }
                // It started, so it can no longer be revoked.
                lane.frame = None;
                if !lane.running {
                    lane.running = true;
                    lane.started = Instant::now();
                }
                let (rest, tx) = if end {
                    (None, None)
                } else {
                    let (tx, rx) = mpsc::channel(BODY_CHANNEL);
                    (Some(rx), Some(tx))
                };
                let delivered = lane
                    .reply
                    .take()
                    .map(|r| r.send(Reply::Response { head, rest }).is_ok())
                    .unwrap_or(false);
                if end {
                    return self.finish_lane(idx);
                }
                lane.body = tx;
                if !delivered {
                    self.cancel(idx)?;
                }
            }
            Frame::Body { stream, data } => {
                let idx = stream as usize;
                let Some(Some(lane)) = self
                    .lanes
                    .get_mut(idx)
                    .filter(|l| l.as_ref().is_some_and(|l| !l.revoked))
                else {
                    return Err(protocol("body for an idle stream"));
                };
                if let Some(tx) = &lane.body {
                    if tx.send(Chunk::Data(data)).await.is_err() {
                        self.cancel(idx)?;
                    }
                }
            }
            Frame::End { stream } => {
                let idx = stream as usize;
                if let Some(Some(lane)) = self.lanes.get_mut(idx) {
                    if let Some(tx) = lane.body.take() {
                        let _ = tx.send(Chunk::End).await;
                    }
                }
                return self.finish_lane(idx);
            }
            Frame::Abort { stream, reason } => {
                let idx = stream as usize;
                tracing::warn!(
                    worker = self.p.id,
                    reason = %String::from_utf8_lossy(&reason),
                    "response aborted by the app"
                );
                if let Some(Some(lane)) = self.lanes.get_mut(idx) {
                    if let Some(tx) = lane.body.take() {
                        let _ = tx.send(Chunk::Abort).await;
                    }
                    if let Some(r) = lane.reply.take() {
                        let _ = r.send(Reply::Failed(Failure::WorkerDied));
                    }
                }
                return self.finish_lane(idx);
            }
            Frame::Fatal { message } => {
                self.fatal = Some(String::from_utf8_lossy(&message).into_owned());
            }
            Frame::Request { .. } | Frame::Cancel { .. } | Frame::Shutdown => {
                return Err(protocol("worker sent a master-only frame"));
            }
        }
        Ok(())
    }

    fn fail_lane(lane: Lane, why: Failure) {
        if let Some(r) = lane.reply {
            let _ = r.send(Reply::Failed(why));
        }
        if let Some(tx) = lane.body {
            let _ = tx.try_send(Chunk::Abort);
        }
    }

    /// The worker is gone: requests it never started go back to the queue, the rest fail.
    fn fail_all(&mut self, why: Failure) {
        let mut back = Vec::new();
        for idx in 0..self.lanes.len() {
            let Some(mut lane) = self.lanes[idx].take() else {
                continue;
            };
            if lane.revoked {
                continue;
            }
            if lane.frame.is_some() && ring::revoke(&*self.region, idx as u32) {
                if let Some(job) = Self::take_back(&mut lane) {
                    back.push(job);
                }
                continue;
            }
            self.failed += 1;
            Self::fail_lane(lane, why);
        }
        if !back.is_empty() {
            self.dispatcher.requeue_front(back);
        }
    }

    /// Fails the lanes past their deadline with 504 (the supervisor is killing the worker);
    /// one that the worker had not started after all is run elsewhere instead.
    fn fail_overdue(&mut self) {
        let Some(timeout) = self.shared.timeout() else {
            return;
        };
        let now = Instant::now();
        let mut back = Vec::new();
        for idx in 0..self.lanes.len() {
            let overdue = self.lanes[idx]
                .as_ref()
                .is_some_and(|l| l.running && !l.revoked && now >= l.started + timeout);
            if !overdue {
                continue;
            }
            let Some(mut lane) = self.lanes[idx].take() else {
                continue;
            };
            if lane.frame.is_some() && ring::revoke(&*self.region, idx as u32) {
                if let Some(job) = Self::take_back(&mut lane) {
                    back.push(job);
                }
                // Keep the revoked stream until the worker (if it lives) ends it.
                self.lanes[idx] = Some(lane);
                continue;
            }
            self.failed += 1;
            tracing::warn!(
                worker = self.p.id,
                method = %lane.target.0,
                path = %lane.target.1,
                timeout_s = timeout.as_secs_f64(),
                "request timed out: 504, the worker is killed"
            );
            Self::fail_lane(lane, Failure::Timeout);
        }
        if !back.is_empty() {
            self.dispatcher.requeue_front(back);
        }
    }
}

fn corrupt(e: ring::Corrupt) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

fn protocol(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}
