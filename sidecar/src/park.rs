//! The master sleeps once for all its links. A link task that has nothing to do is not
//! asleep: the front's runtime goes on serving connections, and a response a worker
//! publishes then is picked up before the runtime next blocks. So the master tells its
//! workers that it sleeps (their need-wakeup flag, [`Word::MasterWaits`]) only when its
//! runtime is about to block in the kernel, from tokio's park hook, and takes it back as soon
//! as the runtime wakes. Before blocking, the hook looks at every link's response ring once
//! more and wakes the link tasks with something to do, which keeps the runtime from blocking
//! (tokio checks for work scheduled by the hook). While the master is busy, a worker hands
//! over a response without a system call, and the master reads it without an event.
//!
//! The hook only reads indices that the workers publish and compares them with copies the
//! link tasks keep in the master's own memory: a worker that scribbles over its indices can
//! at worst make its own link task run (and fail on the corrupt ring) or not run (and time
//! out its own requests).
//!
//! Without the hook (a runtime built without [`install`]), each link falls back to
//! announcing its own sleep, which is correct but wakes the master once per response.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::ring::{self, Dir, Mem, Word};
use crate::shm::Region;

/// `room_at` when the link is not waiting for room in the request ring.
const NOT_WAITING: u64 = u64::MAX;

/// Whether the park hooks are installed on the runtime the links run on.
static HOOKED: AtomicBool = AtomicBool::new(false);

/// The links the hook looks at.
static WATCHES: Mutex<Vec<Arc<Watch>>> = Mutex::new(Vec::new());

/// What the park hook knows of one link.
pub struct Watch {
    region: Arc<Region>,
    /// The response ring's index up to which the link task consumed (its private copy).
    drained: AtomicU64,
    /// The worker's consumer index at which the request ring was full when the link last
    /// tried to write its queued bytes, or [`NOT_WAITING`].
    room_at: AtomicU64,
    /// Wakes the link task.
    wake: Notify,
}

impl Watch {
    /// Whether the worker did something the link has not seen: published response bytes,
    /// or made room the link waits for.
    fn stirred(&self) -> bool {
        let tail = self.region.word(Word::Tail(Dir::ToMaster));
        if tail.load(Ordering::Acquire) != self.drained.load(Ordering::Relaxed) {
            return true;
        }
        let room_at = self.room_at.load(Ordering::Relaxed);
        room_at != NOT_WAITING
            && self
                .region
                .word(Word::Head(Dir::ToWorker))
                .load(Ordering::Acquire)
                != room_at
    }

    /// Records what the link task has handled: responses up to `drained`, and, when it
    /// still has request bytes that did not fit, `full_at`: the worker's consumer index at
    /// which the request ring was full when the link last tried (any other index means the
    /// worker has made room since, even before this note).
    pub fn note(&self, drained: u64, full_at: Option<u64>) {
        self.drained.store(drained, Ordering::Relaxed);
        self.room_at
            .store(full_at.unwrap_or(NOT_WAITING), Ordering::Relaxed);
    }

    /// Resolves when the hook saw the worker stir (or at once, if it did since the last
    /// wait).
    pub async fn stirred_wait(&self) {
        self.wake.notified().await
    }
}

/// Watches `region` for as long as the returned guard lives; `None` when the hooks are not
/// installed (the link then announces its own sleeps).
pub fn watch(region: Arc<Region>) -> Option<Watching> {
    if !HOOKED.load(Ordering::Relaxed) {
        return None;
    }
    let w = Arc::new(Watch {
        region,
        drained: AtomicU64::new(0),
        room_at: AtomicU64::new(NOT_WAITING),
        wake: Notify::new(),
    });
    WATCHES.lock().push(w.clone());
    Some(Watching(w))
}

/// A registered [`Watch`]; dropping it stops the watching.
pub struct Watching(Arc<Watch>);

impl std::ops::Deref for Watching {
    type Target = Watch;
    fn deref(&self) -> &Watch {
        &self.0
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        WATCHES.lock().retain(|w| !Arc::ptr_eq(w, &self.0));
    }
}

/// Installs the hooks on the front's runtime (before it is built).
pub fn install(builder: &mut tokio::runtime::Builder) {
    builder
        .on_thread_park(before_park)
        .on_thread_unpark(after_unpark);
    HOOKED.store(true, Ordering::Relaxed);
}

/// The runtime is about to block: tell every worker, then look once more (one fence for all
/// of them) and wake the links that have work, so that the runtime does not block after all.
fn before_park() {
    let watches = WATCHES.lock();
    for w in watches.iter() {
        ring::raise(&*w.region, Word::MasterWaits);
    }
    fence(Ordering::SeqCst);
    for w in watches.iter() {
        if w.stirred() {
            ring::retract(&*w.region, Word::MasterWaits);
            w.wake.notify_one();
        }
    }
}

/// The runtime woke: the workers need not ring it.
fn after_unpark() {
    for w in WATCHES.lock().iter() {
        ring::retract(&*w.region, Word::MasterWaits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Producer;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        let mut b = tokio::runtime::Builder::new_current_thread();
        install(&mut b);
        b.enable_all().build().expect("runtime")
    }

    /// The whole protocol on a real runtime, with a thread as the worker: with nothing
    /// published the link is not woken; while the runtime blocks, the worker finds the
    /// master's flag raised (so it would ring); a response published while the link waits
    /// wakes the link through the hook, without any bell; and the flag is down again once
    /// the runtime runs.
    #[test]
    fn the_hook_wakes_the_link_for_what_the_worker_published() {
        let rt = runtime();
        let (region, _fd) = Region::create(4096).expect("region");
        let region = Arc::new(region);
        let watching = watch(region.clone()).expect("hooks installed");
        rt.block_on(async {
            let quiet = tokio::time::timeout(Duration::from_millis(100), watching.stirred_wait());
            assert!(quiet.await.is_err(), "woken with nothing published");
        });
        let worker_region = region.clone();
        let worker = std::thread::spawn(move || {
            // Wait until the master says it sleeps, then publish a response as the worker's
            // writer does (it would ring the bell now; this test rings nothing).
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !ring::must_ring(&*worker_region, Word::MasterWaits) {
                assert!(std::time::Instant::now() < deadline, "the flag never rose");
                std::thread::yield_now();
            }
            let mut p = Producer::new(Dir::ToMaster);
            p.push(&*worker_region, b"response").expect("push");
        });
        rt.block_on(async {
            // The runtime parks (raising the flag) and wakes at least every 5 ms for the
            // timer; the hook of the park after the push wakes the link.
            let ticker = tokio::spawn(async {
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            tokio::time::timeout(Duration::from_secs(10), async {
                while region
                    .word(Word::Tail(Dir::ToMaster))
                    .load(Ordering::Acquire)
                    != 8
                {
                    watching.stirred_wait().await;
                }
            })
            .await
            .expect("the hook woke the link for the published response");
            ticker.abort();
            // The link consumed it: nothing stirs any more.
            watching.note(8, None);
            assert!(!watching.stirred());
        });
        worker.join().expect("worker thread");
        assert_eq!(
            region.word(Word::MasterWaits).load(Ordering::Relaxed),
            0,
            "the runtime ran after its last park: the flag is down"
        );
    }

    /// A link waiting for room in the request ring is woken when the worker has consumed
    /// since the ring was full (also before the link noted it), not otherwise; one that
    /// waits for nothing is not woken by the worker's reads.
    #[test]
    fn room_in_the_request_ring_stirs_only_a_link_that_waits_for_it() {
        let (region, _fd) = Region::create(4096).expect("region");
        let region = Arc::new(region);
        let w = Watch {
            region: region.clone(),
            drained: AtomicU64::new(0),
            room_at: AtomicU64::new(NOT_WAITING),
            wake: Notify::new(),
        };
        let head = region.word(Word::Head(Dir::ToWorker));
        head.store(100, Ordering::Release);
        assert!(!w.stirred(), "not waiting for room");
        w.note(0, Some(100));
        assert!(!w.stirred(), "no room made since");
        head.store(164, Ordering::Release);
        assert!(w.stirred(), "the worker consumed");
        w.note(0, None);
        assert!(!w.stirred());
        // Room the worker made between the link's last try and its note still counts.
        w.note(0, Some(100));
        assert!(w.stirred(), "room made before the note");
        // A scribbled tail stirs the link (which then finds the ring corrupt and fails).
        region
            .word(Word::Tail(Dir::ToMaster))
            .store(u64::MAX - 3, Ordering::Release);
        assert!(w.stirred());
    }

    #[test]
    fn a_dropped_watch_is_no_longer_looked_at() {
        let _rt = runtime();
        let (region, _fd) = Region::create(4096).expect("region");
        let region = Arc::new(region);
        let watching = watch(region).expect("hooks installed");
        let listed = |w: &Arc<Watch>| WATCHES.lock().iter().any(|x| Arc::ptr_eq(x, w));
        let w = watching.0.clone();
        assert!(listed(&w));
        drop(watching);
        assert!(!listed(&w));
    }
}
