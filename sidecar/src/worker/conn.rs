//! The worker's end of its link: frames through the shared-memory rings ([`crate::ring`]),
//! sleeping on a doorbell only when there is nothing to do, and the socket to the master,
//! which tells the worker that the master is gone (its end of file) and carries the
//! descriptors of request bodies that are in temporary files.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::proto::{self, Frame};
use crate::ring::{self, Consumer, Dir, Producer, Word};
use crate::shm::{Bell, Region};

/// What both halves share: the mapping, the bells and the master's socket.
pub struct End {
    region: Region,
    sock: OwnedFd,
    master: Bell,
    read_bell: Bell,
    write_bell: Bell,
}

impl End {
    /// Maps the region and takes the descriptors the fork server passed on, in the order
    /// the master sent them: socket, region, master bell, read bell, write bell.
    pub fn open(mut fds: Vec<OwnedFd>) -> io::Result<Arc<End>> {
        if fds.len() != 5 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("expected 5 link descriptors, got {}", fds.len()),
            ));
        }
        let write_bell = Bell::from_fd(fds.pop().ok_or(io::ErrorKind::InvalidInput)?);
        let read_bell = Bell::from_fd(fds.pop().ok_or(io::ErrorKind::InvalidInput)?);
        let master = Bell::from_fd(fds.pop().ok_or(io::ErrorKind::InvalidInput)?);
        let region_fd = fds.pop().ok_or(io::ErrorKind::InvalidInput)?;
        let sock = fds.pop().ok_or(io::ErrorKind::InvalidInput)?;
        let region = Region::open(&region_fd)?;
        Ok(Arc::new(End {
            region,
            sock,
            master,
            read_bell,
            write_bell,
        }))
    }

    /// Rings the master if it said it sleeps (after this side made progress).
    fn wake_master(&self) {
        if ring::must_ring(&self.region, Word::MasterWaits) {
            self.master.ring();
        }
    }

    /// Sleeps on `bell` until it rings or the master's socket closes (then `BrokenPipe`).
    /// `ready` is checked after announcing the sleep, as the need-wakeup protocol requires.
    fn sleep(
        &self,
        flag: Word,
        bell: &Bell,
        ready: impl Fn() -> io::Result<bool>,
    ) -> io::Result<()> {
        ring::announce(&self.region, flag);
        if ready()? {
            ring::retract(&self.region, flag);
            return Ok(());
        }
        // The socket is watched for the master's end only: no event is asked for, and
        // POLLHUP (the master closed it) and POLLERR come regardless. A body file's
        // descriptor waiting in it (POLLIN) is not a wake-up. Any event there, or one nix
        // does not know, means the master is gone.
        let mut fds = [
            PollFd::new(bell.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.sock.as_fd(), PollFlags::empty()),
        ];
        let polled = poll(&mut fds, PollTimeout::NONE);
        let master_gone = fds[1].revents().is_none_or(|r| !r.is_empty());
        bell.clear();
        ring::retract(&self.region, flag);
        match polled {
            Err(nix::Error::EINTR) | Ok(_) if !master_gone => Ok(()),
            Err(e) if !master_gone => Err(io::Error::from_raw_os_error(e as i32)),
            _ => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
}

fn corrupt(e: ring::Corrupt) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Writes whole frames; shared by the worker's threads (one frame at a time).
pub struct Writer {
    end: Arc<End>,
    tx: Mutex<Producer>,
}

impl Writer {
    /// The response ring's producer.
    pub fn new(end: Arc<End>) -> Self {
        Writer {
            end,
            tx: Mutex::new(Producer::new(Dir::ToMaster)),
        }
    }

    /// Starts the request on `stream`: true to run it; false when the master took it back
    /// (it runs on another worker), in which case the stream is ended here.
    pub fn claim(&self, stream: u32) -> io::Result<bool> {
        match ring::take(&self.end.region, stream) {
            ring::Take::Run => Ok(true),
            ring::Take::Skip => {
                let mut f = BytesMut::new();
                proto::encode_simple(&mut f, proto::Kind::End, stream, b"");
                self.send(&f)?;
                Ok(false)
            }
        }
    }

    /// Writes one or more complete frames, waiting for room when the ring is full (the
    /// master applies a slow client's backpressure that way).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let end = &*self.end;
        let mut at = 0;
        while at < frame.len() {
            let n = tx.push(&end.region, &frame[at..]).map_err(corrupt)?;
            at += n;
            if n > 0 {
                end.wake_master();
                continue;
            }
            end.sleep(Word::WorkerWriteWaits, &end.write_bell, || {
                Ok(tx.free(&end.region).map_err(corrupt)? > 0)
            })?;
        }
        Ok(())
    }
}

/// A request body as the worker gets it.
#[derive(Debug)]
pub enum Body {
    /// In the request frame.
    Memory(Bytes),
    /// In a temporary file of the master's (unlinked; read with positional reads), and its
    /// length.
    File(File, u64),
}

/// A request to run.
#[derive(Debug)]
pub struct Job {
    /// The stream it runs on.
    pub stream: u32,
    /// CGI environ pairs.
    pub env: Vec<(Bytes, Bytes)>,
    /// The body.
    pub body: Body,
}

/// What the master tells a worker.
#[derive(Debug)]
pub enum FromMaster {
    /// Run a request.
    Run(Job),
    /// The client of a stream is gone.
    Cancel(u32),
    /// A stream's response may carry `allowed` body bytes in all.
    Credit {
        /// The stream.
        stream: u32,
        /// Body bytes in all.
        allowed: u64,
    },
    /// Finish and exit.
    Shutdown,
}

/// Reads what the master sends.
pub struct Reader {
    end: Arc<End>,
    rx: Consumer,
    buf: BytesMut,
    max_frame: usize,
}

impl Reader {
    /// The request ring's consumer; frames above `max_frame` bytes are a protocol error.
    pub fn new(end: Arc<End>, max_frame: usize) -> Self {
        Reader {
            end,
            rx: Consumer::new(Dir::ToWorker),
            buf: BytesMut::with_capacity(64 * 1024),
            max_frame,
        }
    }

    /// The next whole message in the buffer. A request whose body is a file takes the
    /// file's descriptor off the socket here, in frame order: the master sent it just before
    /// it wrote the frame, so it is there.
    fn decode(&mut self) -> io::Result<Option<FromMaster>> {
        let frame = proto::decode(&mut self.buf, self.max_frame)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let Some(frame) = frame else {
            return Ok(None);
        };
        Ok(Some(match frame {
            Frame::Request { stream, env, body } => FromMaster::Run(Job {
                stream,
                env,
                body: Body::Memory(body),
            }),
            Frame::RequestFile { stream, env, len } => {
                let (tag, fd) = crate::control::recv_fd(self.end.sock.as_fd())
                    .map_err(|e| io::Error::other(format!("receiving a body file: {e}")))?;
                if tag != stream {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("body file for stream {tag} with the request of stream {stream}"),
                    ));
                }
                FromMaster::Run(Job {
                    stream,
                    env,
                    body: Body::File(File::from(fd), len),
                })
            }
            Frame::Cancel { stream } => FromMaster::Cancel(stream),
            Frame::Credit { stream, allowed } => FromMaster::Credit { stream, allowed },
            Frame::Shutdown => FromMaster::Shutdown,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected frame from the master: {other:?}"),
                ))
            }
        }))
    }

    /// Moves what the master published into the private buffer; true if anything came.
    fn pull(&mut self) -> io::Result<bool> {
        let n = self
            .rx
            .pull(&self.end.region, &mut self.buf, usize::MAX)
            .map_err(corrupt)?;
        if n > 0 {
            self.end.wake_master();
        }
        Ok(n > 0)
    }

    /// Blocks for the next message; `None` when the master is gone.
    pub fn next(&mut self) -> io::Result<Option<FromMaster>> {
        self.next_until(|| false)
    }

    /// Blocks for the next message, or until `stop` holds after a wake-up (the worker rings
    /// its own reader with [`Reader::waker`]); `None` when the master is gone or `stop`.
    pub fn next_until(&mut self, stop: impl Fn() -> bool) -> io::Result<Option<FromMaster>> {
        loop {
            if stop() {
                return Ok(None);
            }
            if let Some(f) = self.decode()? {
                return Ok(Some(f));
            }
            if self.pull()? {
                continue;
            }
            let end = self.end.clone();
            let rx = &self.rx;
            match end.sleep(Word::WorkerReadWaits, &end.read_bell, || {
                Ok(rx.available(&end.region).map_err(corrupt)? > 0)
            }) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Something that wakes this reader from another thread of the worker.
    pub fn waker(&self) -> ReaderWaker {
        ReaderWaker(self.end.clone())
    }

    /// Reads whatever messages have already arrived, without blocking.
    pub fn try_drain(&mut self, out: &mut Vec<FromMaster>) -> io::Result<()> {
        self.pull()?;
        while let Some(f) = self.decode()? {
            out.push(f);
        }
        Ok(())
    }
}

/// Wakes a [`Reader`] blocked in [`Reader::next_until`] (which then checks its `stop`).
#[derive(Clone)]
pub struct ReaderWaker(Arc<End>);

impl ReaderWaker {
    /// Rings the reader's bell.
    pub fn wake(&self) {
        self.0.read_bell.ring();
    }
}
