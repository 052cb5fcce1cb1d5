//! Blocking I/O on the worker's end of its socket to the master.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

use bytes::BytesMut;

use crate::proto::{self, Frame};

/// Writes whole frames; shared by the worker's threads (one frame at a time).
pub struct Writer {
    sock: Mutex<UnixStream>,
}

impl Writer {
    /// Wraps the socket.
    pub fn new(sock: UnixStream) -> Self {
        Writer {
            sock: Mutex::new(sock),
        }
    }

    /// Writes one or more complete frames.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut s = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        s.write_all(frame)
    }
}

/// Reads frames.
pub struct Reader {
    sock: UnixStream,
    buf: BytesMut,
    max_frame: usize,
}

impl Reader {
    /// Wraps the socket; frames above `max_frame` bytes are a protocol error.
    pub fn new(sock: UnixStream, max_frame: usize) -> Self {
        Reader {
            sock,
            buf: BytesMut::with_capacity(64 * 1024),
            max_frame,
        }
    }

    fn decode(&mut self) -> io::Result<Option<Frame>> {
        proto::decode(&mut self.buf, self.max_frame)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Blocks for the next frame; `None` when the master closed the socket.
    pub fn next(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(f) = self.decode()? {
                return Ok(Some(f));
            }
            let n = crate::sys::recv_into(self.sock.as_raw_fd(), &mut self.buf, false)?;
            if n == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads whatever frames have already arrived, without blocking.
    pub fn try_drain(&mut self, out: &mut Vec<Frame>) -> io::Result<()> {
        loop {
            match crate::sys::recv_into(self.sock.as_raw_fd(), &mut self.buf, true) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        while let Some(f) = self.decode()? {
            out.push(f);
        }
        Ok(())
    }
}
