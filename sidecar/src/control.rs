//! The control channel between the master and its fork server ("zygote"): JSON messages over a
//! `SOCK_SEQPACKET` socketpair (one datagram per message, so a passed file descriptor always
//! arrives with the message it belongs to).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use wsgiscale_core::config::hooks::Hooks;
use wsgiscale_core::config::LogFormat;

/// The largest control message.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// What the fork server needs to set up Python and run workers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ZygoteInit {
    /// `module` part of MODULE:CALLABLE.
    pub module: String,
    /// `callable` part of MODULE:CALLABLE.
    pub callable: String,
    /// Directory to change into first.
    pub chdir: Option<PathBuf>,
    /// Directories to prepend to sys.path.
    pub pythonpath: Vec<PathBuf>,
    /// Virtualenv to use.
    pub venv: Option<PathBuf>,
    /// Import the app in the fork server (true) or in each worker.
    pub preload: bool,
    /// Python threads per worker.
    pub threads: u32,
    /// Largest frame a worker accepts (the in-memory request body limit plus headers).
    pub max_frame: usize,
    /// Body bytes a response may send before the master grants more: the credit every
    /// stream starts with ([`crate::spool`]).
    pub response_window: u64,
    /// Most body bytes a worker puts in one frame.
    pub response_piece: usize,
    /// Log format for the fork server and workers.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Server hooks (file paths absolute).
    pub hooks: Hooks,
    /// This fork server replaces another one (a reload): runs the `on-reload` hook.
    pub reload: bool,
}

/// Master -> fork server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ToZygote {
    /// First message: set up Python.
    Init(Box<ZygoteInit>),
    /// Fork a worker that serves on the socket passed with this message.
    Spawn {
        /// The master's id for the worker.
        worker: u64,
    },
    /// Exit.
    Shutdown,
}

/// Fork server -> master.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum FromZygote {
    /// Python is set up (and the app imported, when preloading).
    Ready {
        /// The fork server's pid.
        pid: u32,
        /// How long the setup and import took, milliseconds.
        import_ms: u64,
    },
    /// The app could not be imported; the fork server exits.
    ImportFailed {
        /// The Python traceback.
        message: String,
    },
    /// A worker was forked.
    Spawned {
        /// The master's id.
        worker: u64,
        /// Its pid.
        pid: u32,
    },
    /// fork() failed.
    SpawnFailed {
        /// The master's id.
        worker: u64,
        /// The OS error.
        error: String,
    },
    /// A worker process exited and was reaped.
    Exited {
        /// Its pid.
        pid: u32,
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal number, if it was killed.
        signal: Option<i32>,
    },
}

/// A control-channel failure.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket failed.
    #[error("control socket: {0}")]
    Io(#[from] nix::Error),
    /// The peer closed the channel.
    #[error("control channel closed")]
    Closed,
    /// A message could not be (de)serialized.
    #[error("control message: {0}")]
    Json(#[from] serde_json::Error),
    /// A message arrived cut short.
    #[error("control message truncated")]
    Truncated,
}

/// Sends one message, with `fds` attached.
pub fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fds: &[RawFd],
) -> Result<(), ControlError> {
    let bytes = serde_json::to_vec(msg)?;
    let iov = [IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one message and any file descriptors sent with it (close-on-exec).
pub fn recv<T: for<'de> Deserialize<'de>>(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> Result<(T, Vec<OwnedFd>), ControlError> {
    let mut cmsg_buf = nix::cmsg_space!([RawFd; 8]);
    let (len, truncated, fds) = {
        let mut iov = [IoSliceMut::new(buf)];
        let msg = socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    fds.push(crate::sys::own_received_fd(fd));
                }
            }
        }
        (msg.bytes, msg.flags.contains(MsgFlags::MSG_TRUNC), fds)
    };
    if len == 0 {
        return Err(ControlError::Closed);
    }
    if truncated {
        return Err(ControlError::Truncated);
    }
    Ok((serde_json::from_slice(&buf[..len])?, fds))
}

/// Sends the descriptor of a request's body file to a worker on its link socket (a stream
/// socket), with the stream it belongs to as 4 bytes of data; never blocks.
pub fn send_fd(sock: BorrowedFd<'_>, stream: u32, fd: RawFd) -> Result<(), ControlError> {
    let tag = stream.to_le_bytes();
    let iov = [IoSlice::new(&tag)];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    let sent = socket::sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, flags, None)?;
    if sent != tag.len() {
        // A stream socket took part of the tag: the descriptor went with it, but the next
        // tag would be misread. Never seen with 4 bytes on an empty socket.
        return Err(ControlError::Truncated);
    }
    Ok(())
}

/// Receives a descriptor sent with [`send_fd`] (waiting for it); returns its stream and the
/// descriptor (close-on-exec).
pub fn recv_fd(sock: BorrowedFd<'_>) -> Result<(u32, OwnedFd), ControlError> {
    let mut tag = [0u8; 4];
    let mut cmsg_buf = nix::cmsg_space!([RawFd; 1]);
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut tag)];
        let msg = match socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_WAITALL,
        ) {
            Err(nix::Error::EINTR) => continue,
            other => other?,
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                fds.extend(raw.into_iter().map(crate::sys::own_received_fd));
            }
        }
        break (msg.bytes, fds);
    };
    if len == 0 {
        return Err(ControlError::Closed);
    }
    let mut fds = fds.into_iter();
    match (len, fds.next(), fds.next()) {
        (4, Some(fd), None) => Ok((u32::from_le_bytes(tag), fd)),
        _ => Err(ControlError::Truncated),
    }
}

/// Creates the control socketpair (both ends close-on-exec).
pub fn pair() -> Result<(OwnedFd, OwnedFd), ControlError> {
    Ok(socket::socketpair(
        socket::AddressFamily::Unix,
        socket::SockType::SeqPacket,
        None,
        socket::SockFlag::SOCK_CLOEXEC,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn messages_and_fds_cross_the_pair() {
        let (a, b) = pair().expect("socketpair");
        let (x, _y) = std::os::unix::net::UnixStream::pair().expect("pair");
        send(a.as_fd(), &ToZygote::Spawn { worker: 9 }, &[x.as_raw_fd()]).expect("send");
        send(a.as_fd(), &ToZygote::Shutdown, &[]).expect("send");
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (m, fds): (ToZygote, _) = recv(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(m, ToZygote::Spawn { worker: 9 });
        assert_eq!(fds.len(), 1);
        let (m, fds): (ToZygote, _) = recv(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(m, ToZygote::Shutdown);
        assert!(fds.is_empty());
        drop(a);
        assert!(matches!(
            recv::<ToZygote>(b.as_fd(), &mut buf),
            Err(ControlError::Closed)
        ));
    }

    /// Body files cross a link's stream socket one per tag, in order, and the file received
    /// is the file sent (same content, shared offset-free reads).
    #[test]
    fn body_files_cross_a_stream_socket_in_order() {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let mut files = Vec::new();
        for i in 0..3u32 {
            let mut f = tempfile::tempfile().expect("temp file");
            write!(f, "body {i}").expect("write");
            send_fd(a.as_fd(), 10 + i, f.as_raw_fd()).expect("send");
            files.push(f);
        }
        for i in 0..3u32 {
            let (stream, fd) = recv_fd(b.as_fd()).expect("recv");
            assert_eq!(stream, 10 + i);
            let mut got = [0u8; 6];
            std::fs::File::from(fd)
                .read_exact_at(&mut got, 0)
                .expect("read");
            assert_eq!(&got, format!("body {i}").as_bytes());
        }
        drop(a);
        assert!(matches!(recv_fd(b.as_fd()), Err(ControlError::Closed)));
    }
}
