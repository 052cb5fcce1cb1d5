//! A worker process: one CPython interpreter with its own GIL, forked from the fork server.
//! It reads request frames from the master (through shared memory, [`conn`]), runs them
//! through the app on one thread or on `--threads` Python threads, and streams the responses
//! back within each stream's credit ([`flow`]).

mod conn;
pub mod flow;
pub mod wsgi;

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use bytes::BytesMut;
use pyo3::prelude::*;

use crate::control::ZygoteInit;
use crate::hooks::Loaded;
use crate::proto::{self, Kind};
use crate::python;
use conn::{FromMaster, Job, Reader, Writer};
use wsgi::{Ctx, Outcome};

/// Exit code of a worker whose app failed to import (no preload).
pub const EXIT_IMPORT_FAILED: i32 = 3;
/// Exit code of a worker that lost its master or broke the protocol.
pub const EXIT_MASTER_LOST: i32 = 4;
/// Exit code of a worker whose `post-fork` or `post-worker-init` hook raised.
pub const EXIT_HOOK_FAILED: i32 = 5;

/// Runs the worker `id` until the master tells it to stop; returns the process exit code.
/// `hooks` are the server hooks the fork server loaded.
pub fn run(
    py: Python<'_>,
    init: &ZygoteInit,
    link: Vec<OwnedFd>,
    preloaded: Option<Py<PyAny>>,
    id: u64,
    hooks: Option<&Loaded>,
) -> i32 {
    let end = match conn::End::open(link) {
        Ok(end) => end,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the link to the master");
            return EXIT_MASTER_LOST;
        }
    };
    let writer = Arc::new(Writer::new(end.clone()));
    if let Err(e) = crate::sys::set_batch_scheduling() {
        tracing::debug!(error = %e, "SCHED_BATCH not available; the worker keeps SCHED_OTHER");
    }
    let mut reader = Reader::new(end, init.max_frame);
    // post-fork, before anything else the worker does; a worker whose hook raised is not
    // used (the master replaces it, backing off if that keeps happening).
    let hook_worker = match hooks {
        Some(h) => match h.start_worker(py, id, preloaded.as_ref()) {
            Some(w) => Some(w),
            None => return EXIT_HOOK_FAILED,
        },
        None => None,
    };
    let app = match preloaded {
        Some(app) => app,
        None => match python::import_app(py, init) {
            Ok(app) => app,
            Err(message) => {
                // The master logs the traceback it receives, once; only when it cannot be
                // told is it logged here.
                let mut frame = BytesMut::new();
                proto::encode_simple(&mut frame, Kind::Fatal, 0, message.as_bytes());
                if writer.send(&frame).is_err() {
                    tracing::error!("{message}");
                }
                return EXIT_IMPORT_FAILED;
            }
        },
    };
    python::enable_stack_dumps(py);
    if let (Some(h), Some(w)) = (hooks, &hook_worker) {
        if !h.worker_ready(py, w, &app) {
            return EXIT_HOOK_FAILED;
        }
    }
    let mut ctx = match Ctx::new(py, app, init, writer.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(traceback = %crate::python::format_traceback(py, &e), "worker setup failed");
            return EXIT_IMPORT_FAILED;
        }
    };
    if let (Some(h), Some(w)) = (hooks, &hook_worker) {
        ctx.hooks = h.request_hooks(py, w);
    }
    let mut ready = BytesMut::new();
    proto::encode_ready(&mut ready, std::process::id());
    if writer.send(&ready).is_err() {
        return EXIT_MASTER_LOST;
    }
    let code = if init.threads <= 1 {
        serve_single(py, ctx, reader)
    } else {
        let ctx = Arc::new(ctx);
        py.detach(|| serve_threaded(&ctx, &mut reader, init.threads))
    };
    if let (Some(h), Some(w)) = (hooks, &hook_worker) {
        h.worker_exit(py, w);
    }
    python::run_exit_hooks(py);
    code
}

/// One thread: read a message, run it, repeat. Between chunks of a streamed response, and
/// while a response waits for credit, the same thread reads the master's messages itself
/// (`Cancel` and `Credit` apply at once, the rest waits its turn).
fn serve_single(py: Python<'_>, mut ctx: Ctx, reader: Reader) -> i32 {
    struct Inbox {
        reader: Reader,
        pending: VecDeque<FromMaster>,
        scratch: Vec<FromMaster>,
    }
    let inbox = Arc::new(Mutex::new(Inbox {
        reader,
        pending: VecDeque::new(),
        scratch: Vec::new(),
    }));
    let flow = ctx.flow.clone();
    let poll_inbox = inbox.clone();
    ctx.inbox = Some(Box::new(move |block: bool| {
        let mut ib = poll_inbox.lock().unwrap_or_else(|p| p.into_inner());
        let ib = &mut *ib;
        let read = if block {
            match ib.reader.next() {
                Ok(Some(m)) => {
                    ib.scratch.push(m);
                    ib.reader.try_drain(&mut ib.scratch)
                }
                Ok(None) => Err(std::io::ErrorKind::BrokenPipe.into()),
                Err(e) => Err(e),
            }
        } else {
            ib.reader.try_drain(&mut ib.scratch)
        };
        for m in ib.scratch.drain(..) {
            match m {
                FromMaster::Cancel(stream) => flow.cancel(stream),
                FromMaster::Credit { stream, allowed } => flow.credit(stream, allowed),
                other => ib.pending.push_back(other),
            }
        }
        if read.is_err() {
            flow.set_broken();
        }
    }));
    let ctx = Arc::new(ctx);
    loop {
        let next = {
            let mut ib = inbox.lock().unwrap_or_else(|p| p.into_inner());
            match ib.pending.pop_front() {
                Some(m) => Ok(Some(m)),
                None if ctx.flow.is_broken() => Ok(None),
                None => {
                    let reader = &mut ib.reader;
                    py.detach(|| reader.next())
                }
            }
        };
        match next {
            Ok(Some(FromMaster::Run(job))) => {
                match ctx.out.claim(job.stream) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(_) => return EXIT_MASTER_LOST,
                }
                ctx.flow.start(job.stream);
                if let Outcome::Broken = wsgi::handle(py, &ctx, job) {
                    return EXIT_MASTER_LOST;
                }
            }
            Ok(Some(FromMaster::Cancel(stream))) => ctx.flow.cancel(stream),
            Ok(Some(FromMaster::Credit { stream, allowed })) => ctx.flow.credit(stream, allowed),
            Ok(Some(FromMaster::Shutdown)) | Ok(None) => return 0,
            Err(e) => {
                tracing::error!(error = %e, "reading from the master failed");
                return EXIT_MASTER_LOST;
            }
        }
    }
}

/// `threads` Python threads take requests from a queue fed by this (GIL-free) reader thread,
/// which also applies `Cancel` and `Credit` as they come. After `Shutdown` it goes on reading
/// them until the last request is done (a response waiting for credit needs them).
fn serve_threaded(ctx: &Arc<Ctx>, reader: &mut Reader, threads: u32) -> i32 {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let alive = Arc::new(AtomicU32::new(0));
    let mut handles = Vec::new();
    for i in 0..threads {
        let rx = rx.clone();
        let thread_ctx = ctx.clone();
        let thread_alive = alive.clone();
        let waker = reader.waker();
        alive.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name(format!("wsgi-{i}"))
            .spawn(move || {
                run_jobs(&thread_ctx, &rx);
                // The last one out wakes the reader, which stops once nothing runs.
                if thread_alive.fetch_sub(1, Ordering::AcqRel) == 1 {
                    waker.wake();
                }
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                alive.fetch_sub(1, Ordering::AcqRel);
                tracing::error!(error = %e, "cannot start a worker thread");
                ctx.flow.set_broken();
                return EXIT_MASTER_LOST;
            }
        }
    }
    let mut code = 0;
    let mut jobs = Some(tx);
    loop {
        if ctx.flow.is_broken() {
            code = EXIT_MASTER_LOST;
            break;
        }
        let stopping = jobs.is_none();
        let next = reader.next_until(|| stopping && alive.load(Ordering::Acquire) == 0);
        match next {
            Ok(Some(FromMaster::Run(job))) => {
                let sent = jobs.as_ref().map(|tx| tx.send(job));
                if !matches!(sent, Some(Ok(()))) {
                    code = EXIT_MASTER_LOST;
                    break;
                }
            }
            Ok(Some(FromMaster::Cancel(stream))) => ctx.flow.cancel(stream),
            Ok(Some(FromMaster::Credit { stream, allowed })) => ctx.flow.credit(stream, allowed),
            // No more requests: the threads finish theirs, this loop ends when they have.
            Ok(Some(FromMaster::Shutdown)) => jobs = None,
            Ok(None) => break,
            Err(e) => {
                tracing::error!(error = %e, "reading from the master failed");
                code = EXIT_MASTER_LOST;
                break;
            }
        }
    }
    drop(jobs);
    if code != 0 || alive.load(Ordering::Acquire) > 0 {
        // The master is gone (or broke the protocol): waits for credit end now.
        ctx.flow.set_broken();
    }
    for h in handles {
        let _ = h.join();
    }
    code
}

/// A worker thread's loop: run requests from the queue until it closes or the master is gone.
fn run_jobs(ctx: &Arc<Ctx>, rx: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(job) = job else { return };
        match ctx.out.claim(job.stream) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => {
                ctx.flow.set_broken();
                return;
            }
        }
        ctx.flow.start(job.stream);
        if let Outcome::Broken = Python::attach(|py| wsgi::handle(py, ctx, job)) {
            return;
        }
    }
}
