//! A worker process: one CPython interpreter with its own GIL, forked from the fork server.
//! It reads request frames from the master (through shared memory, [`conn`]), runs them through the app on one thread or on
//! `--threads` Python threads, and streams the responses back.

mod conn;
pub mod wsgi;

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};

use bytes::{Bytes, BytesMut};
use pyo3::prelude::*;

use crate::control::ZygoteInit;
use crate::hooks::Loaded;
use crate::proto::{self, Frame, Kind};
use crate::python;
use conn::{Reader, Writer};
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
    let mut ctx = match Ctx::new(py, app, init.threads, writer.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(traceback = %wsgi::format_traceback(py, &e), "worker setup failed");
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

fn set_cancel(ctx: &Ctx, stream: u32, value: bool) {
    if let Some(c) = ctx.cancel.get(stream as usize) {
        c.store(value, Ordering::Relaxed);
    }
}

/// One thread: read a frame, run it, repeat. Between chunks of a streamed response the
/// socket is polled for `Cancel` frames.
fn serve_single(py: Python<'_>, mut ctx: Ctx, reader: Reader) -> i32 {
    struct Inbox {
        reader: Reader,
        pending: VecDeque<Frame>,
        scratch: Vec<Frame>,
    }
    let inbox = Arc::new(Mutex::new(Inbox {
        reader,
        pending: VecDeque::new(),
        scratch: Vec::new(),
    }));
    let cancel_flags = ctx.cancel_flags();
    let poll_inbox = inbox.clone();
    ctx.poll_cancel = Some(Box::new(move || {
        let mut ib = poll_inbox.lock().unwrap_or_else(|p| p.into_inner());
        let ib = &mut *ib;
        if ib.reader.try_drain(&mut ib.scratch).is_err() {
            return;
        }
        for f in ib.scratch.drain(..) {
            match f {
                Frame::Cancel { stream } => {
                    if let Some(c) = cancel_flags.get(stream as usize) {
                        c.store(true, Ordering::Relaxed);
                    }
                }
                other => ib.pending.push_back(other),
            }
        }
    }));
    let ctx = Arc::new(ctx);
    loop {
        let next = {
            let mut ib = inbox.lock().unwrap_or_else(|p| p.into_inner());
            match ib.pending.pop_front() {
                Some(f) => Ok(Some(f)),
                None => {
                    let reader = &mut ib.reader;
                    py.detach(|| reader.next())
                }
            }
        };
        match next {
            Ok(Some(Frame::Request { stream, env, body })) => {
                match ctx.out.claim(stream) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(_) => return EXIT_MASTER_LOST,
                }
                set_cancel(&ctx, stream, false);
                if let Outcome::Broken = wsgi::handle(py, &ctx, stream, &env, body) {
                    return EXIT_MASTER_LOST;
                }
            }
            Ok(Some(Frame::Cancel { stream })) => set_cancel(&ctx, stream, true),
            Ok(Some(Frame::Shutdown)) | Ok(None) => return 0,
            Ok(Some(other)) => {
                tracing::error!(frame = ?other, "unexpected frame from the master");
                return EXIT_MASTER_LOST;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading from the master failed");
                return EXIT_MASTER_LOST;
            }
        }
    }
}

type Job = (u32, Vec<(Bytes, Bytes)>, Bytes);

/// `threads` Python threads take requests from a queue fed by this (GIL-free) reader thread.
fn serve_threaded(ctx: &Arc<Ctx>, reader: &mut Reader, threads: u32) -> i32 {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut handles = Vec::new();
    for i in 0..threads {
        let rx = rx.clone();
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("wsgi-{i}"))
            .spawn(move || loop {
                let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok((stream, env, body)) = job else { return };
                match ctx.out.claim(stream) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(_) => return,
                }
                set_cancel(&ctx, stream, false);
                let outcome = Python::attach(|py| wsgi::handle(py, &ctx, stream, &env, body));
                if let Outcome::Broken = outcome {
                    return;
                }
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                tracing::error!(error = %e, "cannot start a worker thread");
                return EXIT_MASTER_LOST;
            }
        }
    }
    let mut code = 0;
    loop {
        if ctx.broken.load(Ordering::Relaxed) {
            code = EXIT_MASTER_LOST;
            break;
        }
        match reader.next() {
            Ok(Some(Frame::Request { stream, env, body })) => {
                if tx.send((stream, env, body)).is_err() {
                    code = EXIT_MASTER_LOST;
                    break;
                }
            }
            Ok(Some(Frame::Cancel { stream })) => set_cancel(ctx, stream, true),
            Ok(Some(Frame::Shutdown)) | Ok(None) => break,
            Ok(Some(other)) => {
                tracing::error!(frame = ?other, "unexpected frame from the master");
                code = EXIT_MASTER_LOST;
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading from the master failed");
                code = EXIT_MASTER_LOST;
                break;
            }
        }
    }
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
    code
}
