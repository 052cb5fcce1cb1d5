//! The only `unsafe` code of the server: forking the fork server with CPython's fork hooks.
#![allow(unsafe_code)]

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::unistd::ForkResult;
use pyo3::Python;

/// Forks the calling process, running CPython's before/after-fork hooks (locks, thread
/// states, `os.register_at_fork` callbacks) so that the child's interpreter is usable.
///
/// The caller must be single-threaded: it is the fork server, which never starts threads
/// (the `Python<'_>` token proves it holds the GIL, as the hooks require).
pub fn fork_with_python(_py: Python<'_>) -> nix::Result<ForkResult> {
    // SAFETY: PyOS_BeforeFork must be called with the GIL held, which `_py` proves. The fork
    // server is single-threaded (it only ever runs its own blocking loop), so fork() cannot
    // copy a lock held by another thread; the child calls only async-signal-safe code until
    // PyOS_AfterFork_Child restores the interpreter, and then runs as a normal process.
    unsafe {
        pyo3::ffi::PyOS_BeforeFork();
        let result = nix::unistd::fork();
        match result {
            Ok(ForkResult::Child) => pyo3::ffi::PyOS_AfterFork_Child(),
            _ => pyo3::ffi::PyOS_AfterFork_Parent(),
        }
        result
    }
}

/// Takes ownership of a descriptor the kernel just installed through `SCM_RIGHTS`.
pub fn own_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was received via SCM_RIGHTS by the caller's recvmsg and nothing else owns
    // or closes it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Duplicates a descriptor owned by a live Python file object (from its `fileno()`).
pub fn dup_python_fd(fd: RawFd) -> std::io::Result<OwnedFd> {
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the descriptor belongs to a Python file object that the caller keeps alive (it
    // holds a reference and the GIL) for the duration of this call; it is only duplicated.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

/// Receives from a socket straight into the spare capacity of `buf` (at least 16 KiB is made
/// available), without zero-filling it first. With `nonblocking`, returns `WouldBlock` instead
/// of waiting.
pub fn recv_into(
    fd: RawFd,
    buf: &mut bytes::BytesMut,
    nonblocking: bool,
) -> std::io::Result<usize> {
    use bytes::BufMut;
    if buf.capacity() - buf.len() < 16 * 1024 {
        buf.reserve(64 * 1024);
    }
    let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    loop {
        let spare = buf.chunk_mut();
        // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `buf`; recv writes
        // at most that many bytes and reports how many it wrote.
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), flags) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let n = n as usize;
        // SAFETY: the kernel initialised exactly `n` bytes of the spare capacity.
        unsafe { buf.advance_mut(n) };
        return Ok(n);
    }
}

/// Registers an owned descriptor with tokio's reactor.
pub fn async_fd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of `fd`; nothing else can close it (or reuse its
    // number) while it is registered, and it is deregistered before being closed on drop.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
