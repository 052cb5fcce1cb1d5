//! A snapshot of the workers and the queue, as the master sees them from its own dispatch.
//! The scaling algorithms, the driver and the load report are all pure functions of it.

use std::time::Duration;

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotState {
    /// Forked, importing or initialising; cannot take requests yet.
    Starting,
    /// Ready, with at least one free thread.
    Idle,
    /// Every thread is running a request.
    Busy,
    /// Chosen to go: takes no new requests, exits when its last one is done.
    Retiring,
}

/// One worker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSlot {
    /// Stable id, unique for the server's life.
    pub id: u64,
    /// Current state.
    pub state: SlotState,
    /// Threads running a request now.
    pub busy_threads: u32,
    /// Threads the worker has.
    pub threads: u32,
    /// Total time any thread of this worker spent on requests (thread-seconds).
    pub busy_time: Duration,
    /// When it was spawned, on the scoreboard's clock.
    pub spawned_at: Duration,
    /// Requests it has completed.
    pub requests: u64,
    /// The worker's own memory, when known: its unique set size (USS, the pages no other
    /// process maps: what it added to the preloaded fork server's, and what retiring it gives
    /// back), or its resident set size where the kernel has no smaps_rollup.
    pub memory_bytes: Option<u64>,
}

/// The snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scoreboard {
    /// Monotonic time since the server started.
    pub now: Duration,
    /// Requests waiting for a worker.
    pub queue_depth: u32,
    /// Age of the oldest waiting request.
    pub oldest_wait: Duration,
    /// Every live worker.
    pub workers: Vec<WorkerSlot>,
}

impl Scoreboard {
    /// Workers in `state`.
    pub fn count(&self, state: SlotState) -> u32 {
        self.workers.iter().filter(|w| w.state == state).count() as u32
    }

    /// Workers that are not retiring (starting, idle or busy): the count the algorithms steer.
    pub fn active(&self) -> u32 {
        self.workers
            .iter()
            .filter(|w| w.state != SlotState::Retiring)
            .count() as u32
    }
}
