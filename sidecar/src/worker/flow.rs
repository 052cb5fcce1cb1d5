//! What the master tells a worker's running requests, shared by its threads: per stream,
//! whether the client left (`Cancel`) and how many body bytes the response may have sent in
//! all (its credit: the window it starts with, then `Credit` frames); and whether the master
//! is gone. A thread out of credit waits here, without the GIL and without any lock the
//! worker's other threads need, so one slow client stops only its own stream.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// A thread's answer when its stream has no credit left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// This many more body bytes may be sent.
    Go(u64),
    /// The client left: stop the response.
    Cancelled,
    /// The master is gone: stop everything.
    Broken,
}

/// The shared state (one per worker).
#[derive(Debug)]
pub struct Flow {
    cancelled: Box<[AtomicBool]>,
    allowed: Box<[AtomicU64]>,
    window: u64,
    broken: AtomicBool,
    lock: Mutex<()>,
    changed: Condvar,
}

impl Flow {
    /// State for `streams` streams whose responses start with `window` bytes of credit.
    pub fn new(streams: usize, window: u64) -> Flow {
        Flow {
            cancelled: (0..streams).map(|_| AtomicBool::new(false)).collect(),
            allowed: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            window,
            broken: AtomicBool::new(false),
            lock: Mutex::new(()),
            changed: Condvar::new(),
        }
    }

    fn guard(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the threads waiting for a change (after the change is stored).
    fn notify(&self) {
        let _g = self.guard();
        self.changed.notify_all();
    }

    /// A request starts on `stream`: its client is there and it has the whole window. (The
    /// master only sends a stream's `Credit` after the response's first bytes, and every
    /// earlier message for the stream came before this request in the ring.)
    pub fn start(&self, stream: u32) {
        if let Some(c) = self.cancelled.get(stream as usize) {
            c.store(false, Ordering::Relaxed);
        }
        if let Some(a) = self.allowed.get(stream as usize) {
            a.store(self.window, Ordering::Release);
        }
    }

    /// `Cancel`: the client of `stream` is gone.
    pub fn cancel(&self, stream: u32) {
        if let Some(c) = self.cancelled.get(stream as usize) {
            c.store(true, Ordering::Relaxed);
            self.notify();
        }
    }

    /// `Credit`: `stream` may have sent `allowed` body bytes in all.
    pub fn credit(&self, stream: u32, allowed: u64) {
        if let Some(a) = self.allowed.get(stream as usize) {
            a.fetch_max(allowed, Ordering::AcqRel);
            self.notify();
        }
    }

    /// The master is gone (or the link broke): every wait ends.
    pub fn set_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
        self.notify();
    }

    /// Whether the master is gone.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Whether the client of `stream` left.
    pub fn is_cancelled(&self, stream: u32) -> bool {
        self.cancelled
            .get(stream as usize)
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// What a thread that has sent `sent` body bytes on `stream` may do now.
    pub fn check(&self, stream: u32, sent: u64) -> Option<Wait> {
        if self.is_broken() {
            return Some(Wait::Broken);
        }
        if self.is_cancelled(stream) {
            return Some(Wait::Cancelled);
        }
        let allowed = self
            .allowed
            .get(stream as usize)
            .map_or(0, |a| a.load(Ordering::Acquire));
        (allowed > sent).then(|| Wait::Go(allowed - sent))
    }

    /// Blocks until `stream` may send more than `sent` bytes, its client left or the master
    /// is gone. For workers whose messages another thread reads (`--threads` above 1).
    pub fn wait(&self, stream: u32, sent: u64) -> Wait {
        let mut g = self.guard();
        loop {
            if let Some(w) = self.check(stream, sent) {
                return w;
            }
            g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_stream_starts_with_the_window_and_grows_with_credit() {
        let f = Flow::new(4, 100);
        f.start(1);
        assert_eq!(f.check(1, 0), Some(Wait::Go(100)));
        assert_eq!(f.check(1, 100), None, "out of credit");
        f.credit(1, 250);
        assert_eq!(f.check(1, 100), Some(Wait::Go(150)));
        f.credit(1, 200);
        assert_eq!(f.check(1, 100), Some(Wait::Go(150)), "credit never shrinks");
        f.start(1);
        assert_eq!(
            f.check(1, 0),
            Some(Wait::Go(100)),
            "a new request starts afresh"
        );
        f.cancel(1);
        assert_eq!(f.check(1, 0), Some(Wait::Cancelled));
        f.start(1);
        assert_eq!(f.check(1, 0), Some(Wait::Go(100)));
        assert_eq!(f.check(9, 0), None, "no such stream: no credit");
        f.set_broken();
        assert_eq!(f.check(1, 0), Some(Wait::Broken));
    }

    /// A thread waiting for credit is woken by the credit, another by a cancel, and a third
    /// by the master's end; none of them is woken by another stream's news.
    #[test]
    fn waiting_threads_wake_on_their_own_news() {
        let f = Arc::new(Flow::new(4, 10));
        for s in 0..3 {
            f.start(s);
        }
        let spawn = |s: u32| {
            let f = f.clone();
            std::thread::spawn(move || f.wait(s, 10))
        };
        let (a, b, c) = (spawn(0), spawn(1), spawn(2));
        f.credit(0, 30);
        assert_eq!(a.join().expect("a"), Wait::Go(20));
        f.cancel(1);
        assert_eq!(b.join().expect("b"), Wait::Cancelled);
        assert!(!c.is_finished());
        f.set_broken();
        assert_eq!(c.join().expect("c"), Wait::Broken);
    }
}
