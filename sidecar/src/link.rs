//! The master's end of one worker's link: a task that writes the requests the dispatcher
//! hands it into the worker's request ring, routes the response frames it finds in the
//! response ring to the waiting clients, and notices the worker's death by its socket (every
//! request it held gets a 502; requests it had not started are put back in the queue, so
//! nobody else notices). The rings are shared memory ([`crate::ring`]): the task drains
//! the response ring every time it runs, and the worker is told that the master sleeps only
//! when the front's runtime is about to block ([`crate::park`]), so a worker never makes a
//! system call to hand over a response while the master is busy.
//!
//! A *stream* is one of the link's request slots (one per worker thread, plus the
//! look-ahead ones); a *lane*, as in [`crate::dispatch`], is a worker thread.
//!
//! Draining never waits for a client: a streamed response's bytes go to its [`Spool`]
//! (memory, then a temporary file), and the worker can only send what the stream's credit
//! allows, which grows as the client reads. So a slow client slows only its own stream, and
//! a worker is free as soon as its response is produced, if the response fits the window.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify};

use crate::dispatch::{
    AfterFinish, Dispatcher, Ended, Failure, Job, Reply, Ticket, ToLink, WorkerId,
};
use crate::proto::{self, Frame, Kind};
use crate::ring::{self, Consumer, Dir, Producer, Word};
use crate::shm::{Bell, Region};
use crate::spool::{SpillStats, Spool, SpoolConfig};
use crate::state::Shared;

/// Response bytes the link drains from the ring before it lets the runtime's other tasks
/// run (it comes back at once): a worker streaming a large response cannot monopolise the
/// front's thread.
const DRAIN_BUDGET: usize = 1 << 20;

/// The master's end of a worker's link.
pub struct Channel {
    /// The shared region (the master's mapping).
    pub region: Region,
    /// The worker's socket: its end of file is the worker's death; the master sends the
    /// descriptors of request bodies in temporary files on it.
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
struct Stream {
    reply: Option<tokio::sync::oneshot::Sender<Reply>>,
    /// The response's buffer, once its head said that more than the head follows.
    spool: Option<Arc<Spool>>,
    /// The head arrived.
    head_seen: bool,
    /// Body bytes received, the head's included (checked against the stream's credit).
    received: u64,
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
    /// The request's body file, if it has one (kept with `frame`, for a revoked request).
    body_file: Option<Arc<File>>,
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
    /// How responses are buffered (the worker was started with its window as credit).
    pub spool: Arc<SpoolConfig>,
    /// Counters of spilled responses.
    pub spill_stats: SpillStats,
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
    /// The worker's socket (a duplicate), for request body descriptors.
    sock: OwnedFd,
    /// Woken by the spools: a credit grant is due, or a client went away.
    spools: Arc<Notify>,
    streams: Vec<Option<Stream>>,
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
    let sock_dup = match sock.as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(worker = p.id, error = %e, "cannot duplicate the worker's socket");
            let _ = events.send(LinkEvent::Gone {
                id: p.id,
                failed: 0,
                fatal: None,
                was_ready: false,
                served: 0,
            });
            dispatcher.remove(p.id);
            return;
        }
    };
    let region = Arc::new(region);
    // With the runtime's park hook, the master's sleep is announced for all links at once
    // ([`crate::park`]); without it, this task announces its own.
    let watching = crate::park::watch(region.clone());
    let streams = (p.threads + p.ahead).min(ring::MAX_STREAMS as u32);
    let streams = (0..streams).map(|_| None).collect();
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
        sock: sock_dup,
        spools: Arc::new(Notify::new()),
        streams,
        seq: 0,
        ready: false,
        fatal: None,
        failed: 0,
        served: 0,
        shutdown_sent: false,
    };
    let spools = link.spools.clone();
    let mut timed_out_reported = false;
    loop {
        match link.pump() {
            Ok(true) => {
                // More in the ring: let the other tasks run first, then come back.
                tokio::task::yield_now().await;
                continue;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(worker = link.p.id, error = %e, "worker link failed");
                break;
            }
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
            () = spools.notified() => link.on_spools().is_err(),
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
    loop {
        match link.pump() {
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => {
                tracing::debug!(worker = link.p.id, error = %e, "worker link ended mid-frame");
                break;
            }
        }
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
        self.streams
            .iter()
            .flatten()
            .filter(|s| s.running && !s.revoked)
            .map(|s| s.started + timeout)
            .min()
    }

    /// Takes back look-ahead requests the worker has not started (the newest, or all) and
    /// gives them to the dispatcher's queue front.
    fn revoke(&mut self, all: bool) {
        let mut order: Vec<(u64, usize)> = self
            .streams
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (s, i)))
            .filter(|(s, _)| s.frame.is_some() && !s.revoked)
            .map(|(s, i)| (s.seq, i))
            .collect();
        order.sort_unstable_by(|a, b| b.cmp(a));
        let mut back = Vec::new();
        for (_, idx) in order {
            let won = ring::revoke(&*self.region, idx as u32);
            let Some(Some(stream)) = self.streams.get_mut(idx) else {
                continue;
            };
            if !won {
                // The worker started it: it runs here.
                stream.frame = None;
                stream.body_file = None;
                continue;
            }
            if let Some(job) = Self::take_back(stream) {
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

    /// The request of a stream just revoked, as a job for another worker; the stream stays,
    /// revoked, until the worker ends it.
    fn take_back(stream: &mut Stream) -> Option<Job> {
        stream.revoked = true;
        stream.spool = None;
        let frame = stream.frame.take()?;
        let reply = stream.reply.take()?;
        Some(Job {
            frame,
            body_file: stream.body_file.take(),
            reply,
            enqueued: stream.enqueued,
            ticket: Ticket::default(),
            target: stream.target.clone(),
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

    /// Handles the response frames the worker has published, and flushes queued requests.
    /// Never waits. True when it stopped at [`DRAIN_BUDGET`] with more to read.
    fn pump(&mut self) -> std::io::Result<bool> {
        let mut drained = 0;
        loop {
            self.flush()?;
            if drained >= DRAIN_BUDGET {
                return Ok(true);
            }
            let n = self
                .rx
                .pull(&*self.region, &mut self.inbuf, usize::MAX)
                .map_err(corrupt)?;
            drained += n;
            if n > 0 && ring::must_ring(&*self.region, Word::WorkerWriteWaits) {
                self.worker_write.ring();
            }
            let mut decoded = false;
            loop {
                let frame = proto::decode(&mut self.inbuf, self.p.max_frame)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let Some(frame) = frame else { break };
                decoded = true;
                self.on_frame(frame)?;
            }
            if n == 0 && !decoded {
                return Ok(false);
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
            let Some(idx) = self.streams.iter().position(Option::is_none) else {
                // The dispatcher never over-assigns; if it did, put the job back.
                tracing::error!(worker = self.p.id, "job for a worker with no free stream");
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
            if let Some(file) = &job.body_file {
                // Before the frame: the worker takes the descriptor off its socket when it
                // reads the frame, so it is always there by then.
                crate::control::send_fd(self.sock.as_fd(), idx as u32, file.as_raw_fd())
                    .map_err(|e| std::io::Error::other(format!("passing a body file: {e}")))?;
            }
            ring::offer(&*self.region, idx as u32);
            self.write(&job.frame)?;
            self.seq += 1;
            let ahead = job.ahead;
            self.streams[idx] = Some(Stream {
                reply: Some(job.reply),
                spool: None,
                head_seen: false,
                received: 0,
                started: now,
                running: !ahead,
                cancelled: false,
                ticket: job.ticket,
                target: job.target,
                frame: ahead.then_some(job.frame),
                body_file: if ahead { job.body_file } else { None },
                enqueued: job.enqueued,
                revoked: false,
                seq: self.seq,
            });
            return Ok(());
        }
    }

    fn finish_stream(&mut self, idx: usize) -> std::io::Result<()> {
        let Some(stream) = self.streams.get_mut(idx).and_then(Option::take) else {
            return Ok(());
        };
        ring::release(&*self.region, idx as u32);
        // A request cancelled because its client left is not a served one, nor is one
        // taken back to run elsewhere.
        let ended = if stream.revoked {
            Ended::Revoked
        } else if stream.cancelled {
            Ended::Abandoned
        } else {
            self.served += 1;
            Ended::Served
        };
        self.promote();
        match self.dispatcher.finish(self.p.id, stream.ticket, ended) {
            AfterFinish::Next(job) => self.assign(job),
            AfterFinish::Idle => Ok(()),
            AfterFinish::Drained => self.send_shutdown(),
        }
    }

    /// A lane freed: the oldest look-ahead request now runs on it (the worker starts its
    /// next request as soon as it is done with one), so its timeout counts from now.
    fn promote(&mut self) {
        let running = self
            .streams
            .iter()
            .flatten()
            .filter(|s| s.running && !s.revoked)
            .count();
        if running >= self.p.threads as usize {
            return;
        }
        let oldest = self
            .streams
            .iter_mut()
            .flatten()
            .filter(|s| !s.running && !s.revoked)
            .min_by_key(|s| s.seq);
        if let Some(stream) = oldest {
            stream.running = true;
            stream.started = Instant::now();
        }
    }

    /// The client of stream `idx` is gone: the worker is told, so it stops the response
    /// (what it still sends within its credit is dropped).
    fn cancel(&mut self, idx: usize) -> std::io::Result<()> {
        let Some(Some(stream)) = self.streams.get_mut(idx) else {
            return Ok(());
        };
        if stream.cancelled {
            return Ok(());
        }
        stream.cancelled = true;
        let mut f = BytesMut::new();
        proto::encode_simple(&mut f, Kind::Cancel, idx as u32, b"");
        self.write(&f)
    }

    /// A spool woke the link: grant the credit that is due, and cancel the streams whose
    /// client went away.
    fn on_spools(&mut self) -> std::io::Result<()> {
        let mut credits = BytesMut::new();
        let mut gone = Vec::new();
        for (idx, stream) in self.streams.iter().enumerate() {
            let Some(stream) = stream else { continue };
            let Some(spool) = &stream.spool else { continue };
            if spool.is_gone() {
                if !stream.cancelled {
                    gone.push(idx);
                }
            } else if let Some(allowed) = spool.grant() {
                proto::encode_credit(&mut credits, idx as u32, allowed);
            }
        }
        if !credits.is_empty() {
            self.write(&credits)?;
        }
        for idx in gone {
            self.cancel(idx)?;
        }
        Ok(())
    }

    fn on_frame(&mut self, frame: Frame) -> std::io::Result<()> {
        match frame {
            Frame::Ready { pid } => {
                self.ready = true;
                let _ = self.events.send(LinkEvent::Ready { id: self.p.id, pid });
                for job in self.dispatcher.ready(self.p.id) {
                    self.assign(job)?;
                }
            }
            Frame::Head(mut head) => {
                let idx = head.stream as usize;
                let end = head.end;
                let window = self.p.spool.window();
                let Some(Some(stream)) = self.streams.get_mut(idx) else {
                    return Err(protocol("head for an idle stream"));
                };
                if stream.revoked {
                    return Err(protocol("response to a revoked request"));
                }
                if stream.head_seen {
                    return Err(protocol("a second head on a stream"));
                }
                stream.head_seen = true;
                stream.received = head.body.len() as u64;
                if stream.received > window {
                    return Err(protocol("a head with more body than the stream's credit"));
                }
                // It started, so it can no longer be revoked.
                stream.frame = None;
                stream.body_file = None;
                if !stream.running {
                    stream.running = true;
                    stream.started = Instant::now();
                }
                let mut cut = false;
                let rest = if end {
                    None
                } else {
                    let spool = Spool::new(
                        self.p.spool.clone(),
                        self.spools.clone(),
                        self.p.spill_stats.clone(),
                    );
                    let reader = spool.reader();
                    // The first body bytes go through the spool like the rest, so that the
                    // credit counts them as taken only when the client has them.
                    if let Err(e) = spool.push(std::mem::take(&mut head.body)) {
                        tracing::error!(worker = self.p.id, error = %e, "cannot buffer a response: it is cut short");
                        cut = true;
                    }
                    stream.spool = Some(spool);
                    Some(reader)
                };
                let delivered = stream
                    .reply
                    .take()
                    .map(|r| r.send(Reply::Response { head, rest }).is_ok())
                    .unwrap_or(false);
                if end {
                    return self.finish_stream(idx);
                }
                if !delivered || cut {
                    self.cancel(idx)?;
                }
            }
            Frame::Body { stream: id, data } => {
                let idx = id as usize;
                let Some(Some(stream)) = self.streams.get_mut(idx) else {
                    return Err(protocol("body for an idle stream"));
                };
                if stream.revoked || !stream.head_seen {
                    return Err(protocol("body for a stream without a head"));
                }
                let Some(spool) = &stream.spool else {
                    return Err(protocol("body after a whole response"));
                };
                stream.received += data.len() as u64;
                if stream.received > spool.granted() {
                    return Err(protocol("body past the stream's credit"));
                }
                if stream.cancelled {
                    return Ok(());
                }
                if let Err(e) = spool.push(data) {
                    tracing::error!(worker = self.p.id, error = %e, "cannot buffer a response: it is cut short");
                    self.cancel(idx)?;
                }
            }
            Frame::End { stream } => {
                let idx = stream as usize;
                if let Some(Some(stream)) = self.streams.get_mut(idx) {
                    if let Some(spool) = stream.spool.take() {
                        spool.finish();
                    }
                }
                return self.finish_stream(idx);
            }
            Frame::Abort { stream, reason } => {
                let idx = stream as usize;
                tracing::warn!(
                    worker = self.p.id,
                    reason = %String::from_utf8_lossy(&reason),
                    "response aborted by the app"
                );
                if let Some(Some(stream)) = self.streams.get_mut(idx) {
                    if let Some(spool) = stream.spool.take() {
                        spool.abort();
                    }
                    if let Some(r) = stream.reply.take() {
                        let _ = r.send(Reply::Failed(Failure::WorkerDied));
                    }
                }
                return self.finish_stream(idx);
            }
            Frame::Fatal { message } => {
                self.fatal = Some(String::from_utf8_lossy(&message).into_owned());
            }
            Frame::Request { .. }
            | Frame::RequestFile { .. }
            | Frame::Cancel { .. }
            | Frame::Credit { .. }
            | Frame::Shutdown => {
                return Err(protocol("worker sent a master-only frame"));
            }
        }
        Ok(())
    }

    fn fail_stream(stream: Stream, why: Failure) {
        if let Some(r) = stream.reply {
            let _ = r.send(Reply::Failed(why));
        }
        if let Some(spool) = stream.spool {
            spool.abort();
        }
    }

    /// The worker is gone: requests it never started go back to the queue, the rest fail.
    fn fail_all(&mut self, why: Failure) {
        let mut back = Vec::new();
        for idx in 0..self.streams.len() {
            let Some(mut stream) = self.streams[idx].take() else {
                continue;
            };
            if stream.revoked {
                continue;
            }
            if stream.frame.is_some() && ring::revoke(&*self.region, idx as u32) {
                if let Some(job) = Self::take_back(&mut stream) {
                    back.push(job);
                }
                continue;
            }
            self.failed += 1;
            Self::fail_stream(stream, why);
        }
        if !back.is_empty() {
            self.dispatcher.requeue_front(back);
        }
    }

    /// Fails the streams past their deadline with 504 (the supervisor is killing the worker);
    /// one that the worker had not started after all is run elsewhere instead.
    fn fail_overdue(&mut self) {
        let Some(timeout) = self.shared.timeout() else {
            return;
        };
        let now = Instant::now();
        let mut back = Vec::new();
        for idx in 0..self.streams.len() {
            let overdue = self.streams[idx]
                .as_ref()
                .is_some_and(|s| s.running && !s.revoked && now >= s.started + timeout);
            if !overdue {
                continue;
            }
            let Some(mut stream) = self.streams[idx].take() else {
                continue;
            };
            if stream.frame.is_some() && ring::revoke(&*self.region, idx as u32) {
                if let Some(job) = Self::take_back(&mut stream) {
                    back.push(job);
                }
                // Keep the revoked stream until the worker (if it lives) ends it.
                self.streams[idx] = Some(stream);
                continue;
            }
            self.failed += 1;
            tracing::warn!(
                worker = self.p.id,
                method = %stream.target.0,
                path = %stream.target.1,
                timeout_s = timeout.as_secs_f64(),
                "request timed out: 504, the worker is killed"
            );
            Self::fail_stream(stream, Failure::Timeout);
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
