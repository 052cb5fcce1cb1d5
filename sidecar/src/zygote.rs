//! The fork server ("zygote"): a single-threaded process, started by re-executing this binary
//! or the Python it was entered from ([`crate::launch`]),
//! that sets up Python, imports the app once (preload) and forks a worker whenever the master
//! asks, so that workers share the imported app copy-on-write and start in milliseconds. The
//! master itself runs tokio and so never forks.

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use pyo3::prelude::*;

use crate::control::{self, FromZygote, ToZygote, ZygoteInit, MAX_MESSAGE};
use crate::{hooks, logging, python, sys, worker};

/// Exit code when Python setup or the app import failed.
pub const EXIT_IMPORT_FAILED: i32 = 2;

/// Runs the fork server on the inherited control socket `control_fd`; returns the exit code.
pub fn main(control_fd: RawFd) -> i32 {
    let control = sys::own_received_fd(control_fd);
    // Own process group: a terminal's Ctrl-C reaches only the master, which then stops the
    // workers in order.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    set_name(c"wsgiscale-fork");
    let mut buf = vec![0u8; MAX_MESSAGE];
    let init = match control::recv::<ToZygote>(control.as_fd(), &mut buf) {
        Ok((ToZygote::Init(init), _)) => *init,
        Ok((other, _)) => {
            eprintln!("wsgiscale fork server: expected Init, got {other:?}");
            return 1;
        }
        Err(e) => {
            eprintln!("wsgiscale fork server: {e}");
            return 1;
        }
    };
    logging::init(init.log_format, &init.log_level);
    if let Err(message) = sys::initialize_python(init.venv.as_deref()) {
        reply(&control, &FromZygote::ImportFailed { message });
        return EXIT_IMPORT_FAILED;
    }
    Python::attach(|py| serve(py, &init, control, &mut buf))
}

fn reply(control: &OwnedFd, msg: &FromZygote) -> bool {
    match control::send(control.as_fd(), msg, &[]) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "fork server lost the master");
            false
        }
    }
}

fn serve(py: Python<'_>, init: &ZygoteInit, control: OwnedFd, buf: &mut [u8]) -> i32 {
    let started = Instant::now();
    if let Some(dir) = &init.chdir {
        if let Err(e) = std::env::set_current_dir(dir) {
            let message = format!("cannot change directory to {}: {e}", dir.display());
            reply(&control, &FromZygote::ImportFailed { message });
            return EXIT_IMPORT_FAILED;
        }
    }
    let app = python::setup(py, init).and_then(|()| {
        if init.preload {
            python::import_app(py, init).map(Some)
        } else {
            Ok(None)
        }
    });
    let app = match app {
        Ok(app) => app,
        Err(message) => {
            reply(&control, &FromZygote::ImportFailed { message });
            return EXIT_IMPORT_FAILED;
        }
    };
    let app_name = format!("{}:{}", init.module, init.callable);
    let hooks = match hooks::load(py, &init.hooks, &app_name, init.reload) {
        Ok(h) => h,
        Err(message) => {
            reply(&control, &FromZygote::ImportFailed { message });
            return EXIT_IMPORT_FAILED;
        }
    };
    if let Some(h) = &hooks {
        h.run_fork_server(py, init.reload);
    }
    python::freeze_for_fork(py);
    let import_ms = started.elapsed().as_millis() as u64;
    if !reply(
        &control,
        &FromZygote::Ready {
            pid: std::process::id(),
            import_ms,
        },
    ) {
        return 1;
    }
    loop {
        let readable = py.detach(|| {
            let mut fds = [PollFd::new(control.as_fd(), PollFlags::POLLIN)];
            matches!(poll(&mut fds, PollTimeout::from(200u16)), Ok(n) if n > 0)
        });
        if !reap(&control) {
            return 1;
        }
        if !readable {
            continue;
        }
        match control::recv::<ToZygote>(control.as_fd(), buf) {
            Ok((ToZygote::Spawn { worker }, link)) => {
                if link.is_empty() {
                    tracing::error!(worker, "spawn request without its link");
                    continue;
                }
                match sys::fork_with_python(py) {
                    Ok(ForkResult::Child) => {
                        drop(control);
                        set_name(c"wsgiscale-work");
                        let span =
                            tracing::info_span!("worker", id = worker, pid = std::process::id());
                        let _enter = span.enter();
                        let preloaded = app.as_ref().map(|a| a.clone_ref(py));
                        let code = worker::run(py, init, link, preloaded, worker, hooks.as_ref());
                        std::process::exit(code);
                    }
                    Ok(ForkResult::Parent { child }) => {
                        drop(link);
                        let pid = child.as_raw() as u32;
                        if !reply(&control, &FromZygote::Spawned { worker, pid }) {
                            return 1;
                        }
                    }
                    Err(e) => {
                        let error = e.to_string();
                        if !reply(&control, &FromZygote::SpawnFailed { worker, error }) {
                            return 1;
                        }
                    }
                }
            }
            Ok((ToZygote::Shutdown, _)) => return 0,
            Ok((ToZygote::Init(_), _)) => tracing::warn!("fork server got a second Init"),
            Err(control::ControlError::Closed) => return 0,
            Err(e) => {
                tracing::error!(error = %e, "fork server control channel failed");
                return 1;
            }
        }
    }
}

/// Reaps exited workers and reports them; false when the master is gone.
fn reap(control: &OwnedFd) -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                let msg = FromZygote::Exited {
                    pid: pid.as_raw() as u32,
                    code: Some(code),
                    signal: None,
                };
                if !reply(control, &msg) {
                    return false;
                }
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                let msg = FromZygote::Exited {
                    pid: pid.as_raw() as u32,
                    code: None,
                    signal: Some(sig as i32),
                };
                if !reply(control, &msg) {
                    return false;
                }
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

/// Names the process (as `ps -o comm` and top show it) so forks are told apart.
fn set_name(name: &std::ffi::CStr) {
    let _ = nix::sys::prctl::set_name(name);
}

/// Marks `fd` inheritable so the re-executed fork server receives it.
pub fn make_inheritable(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map(|_| ())
}
