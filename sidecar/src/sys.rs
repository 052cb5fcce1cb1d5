//! The server's `unsafe` code for processes and FFI: starting the embedded CPython, forking
//! the fork server with CPython's fork hooks, owning received descriptors, pidfds. The other
//! module with `unsafe` is [`crate::shm`] (the shared mapping); nothing else has any.
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

/// The version of the CPython this process runs (callable before the interpreter starts).
pub fn python_version() -> Option<(u32, u32)> {
    // SAFETY: Py_GetVersion returns a pointer to a static NUL-terminated string and may be
    // called before Py_Initialize.
    let text = unsafe { std::ffi::CStr::from_ptr(pyo3::ffi::Py_GetVersion()) };
    crate::launch::major_minor(&text.to_string_lossy())
}

/// Starts the embedded interpreter of the standalone binary, unless one runs already (the
/// package's fork server is a Python process). With `venv`, the interpreter starts as that
/// virtualenv's `bin/python` would: CPython's own path calculation reads its `pyvenv.cfg`,
/// and site.py then adds the venv's site-packages, and the base interpreter's only when
/// `include-system-site-packages = true`; `sys.prefix` and `sys.executable` are the venv's.
/// As with `Py_InitializeEx(0)`, Python installs no signal handlers.
pub fn initialize_python(venv: Option<&std::path::Path>) -> Result<(), String> {
    use pyo3::ffi;
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: Py_IsInitialized may be called at any time.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        return Ok(());
    }
    let Some(venv) = venv else {
        Python::initialize();
        return Ok(());
    };
    let exe = crate::launch::venv_python(venv);
    let exe = std::ffi::CString::new(exe.as_os_str().as_bytes())
        .map_err(|_| format!("--venv {}: the path has a NUL byte", venv.display()))?;
    let failed = |status: ffi::PyStatus| -> String {
        if status.err_msg.is_null() {
            "Python failed to start".to_string()
        } else {
            // SAFETY: a PyStatus error message is a static NUL-terminated string.
            let msg = unsafe { std::ffi::CStr::from_ptr(status.err_msg) };
            format!("Python failed to start: {}", msg.to_string_lossy())
        }
    };
    let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::uninit();
    let cfg = config.as_mut_ptr();
    // SAFETY: PyConfig_InitPythonConfig initialises the whole struct before any field is read;
    // the string setters copy their argument; PyConfig_Clear frees what they allocated, after
    // Py_InitializeFromConfig has copied the configuration. This runs once, on the only thread.
    unsafe {
        ffi::PyConfig_InitPythonConfig(cfg);
        (*cfg).install_signal_handlers = 0;
        let status = ffi::PyConfig_SetBytesString(
            cfg,
            std::ptr::addr_of_mut!((*cfg).program_name),
            exe.as_ptr(),
        );
        if ffi::PyStatus_Exception(status) != 0 {
            ffi::PyConfig_Clear(cfg);
            return Err(failed(status));
        }
        let status = ffi::Py_InitializeFromConfig(cfg);
        ffi::PyConfig_Clear(cfg);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(failed(status));
        }
        // Release the GIL as pyo3's own initialisation does; `Python::attach` takes it back.
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

/// Puts the calling process in the `SCHED_BATCH` class (same priority and nice value): a
/// CPU-bound worker that is woken no longer preempts the master that woke it, which then
/// finishes what it was doing (writing more requests, answering clients) first.
pub fn set_batch_scheduling() -> std::io::Result<()> {
    // Priority 0, the only one SCHED_BATCH takes. Not a struct literal: musl's sched_param
    // has more fields than glibc's (its sporadic-server ones), which must be zero too.
    // SAFETY: sched_param holds only integers and timespecs, for which all zero bits are a
    // valid value.
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: sched_setscheduler reads `param` (a valid, initialised struct) and changes only
    // this process's own policy.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd: a handle on one process, which a later process given the same pid is never
/// mistaken for (signals to it fail with `ESRCH` once it has exited).
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl PidFd {
    /// Opens a pidfd for `pid` (`pidfd_open`, Linux 5.3).
    pub fn open(pid: u32) -> std::io::Result<PidFd> {
        let pid = libc::pid_t::try_from(pid)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: pidfd_open takes a pid and flags (none) and returns a new descriptor or -1;
        // it reads and writes no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: the kernel just returned this descriptor (close-on-exec, as pidfds are);
        // nothing else owns it.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends `signal` to the process (`pidfd_send_signal`).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is a pidfd we own; a null siginfo (the kernel fills in a
        // plain kill's) and no flags are valid arguments, and no memory of ours is touched.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pidfd signals its own process, and after that process is gone (reaped, its pid free
    /// for another) it signals nothing: ESRCH, not a stranger.
    #[test]
    fn a_pidfd_signals_only_its_own_process() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep starts");
        let fd = PidFd::open(child.id()).expect("pidfd_open");
        fd.signal(nix::sys::signal::Signal::SIGKILL)
            .expect("signal");
        assert_eq!(child.wait().expect("reaped").signal(), Some(libc::SIGKILL));
        let err = fd
            .signal(nix::sys::signal::Signal::SIGKILL)
            .expect_err("the process is gone");
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
        assert!(PidFd::open(u32::MAX).is_err());
    }
}
