//! The load report: what a server tells the operator about its workers and queue, served as
//! JSON at `/load` on the admin port. Versioned; fields are only ever added.

use serde::{Deserialize, Serialize};

/// The current schema version of [`LoadReport`].
pub const LOAD_REPORT_VERSION: u32 = 1;

/// One server's load, as of `time_unix_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Schema version; [`LOAD_REPORT_VERSION`].
    pub version: u32,
    /// When the report was made, milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// Worker processes by state, and the configured limits.
    pub workers: WorkerCounts,
    /// Requests waiting for a worker.
    pub queue: QueueStats,
    /// Requests being run by workers right now.
    pub in_flight: u32,
    /// Averages over the last 1, 10 and 60 seconds.
    pub rates: Rates,
    /// True when the server runs MAX workers, all busy, and requests are queueing: it cannot
    /// grow any more by itself.
    pub saturated: bool,
    /// True after SIGTERM: the server finishes what it has and takes nothing new.
    pub draining: bool,
}

/// Worker processes by state. `total = starting + idle + busy + retiring`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WorkerCounts {
    /// The configured MIN.
    pub min: u32,
    /// The configured MAX.
    pub max: u32,
    /// All live worker processes.
    pub total: u32,
    /// Workers with every thread running a request.
    pub busy: u32,
    /// Ready workers with at least one free thread.
    pub idle: u32,
    /// Forked, not yet ready.
    pub starting: u32,
    /// Finishing their last request before they exit; they take no new ones.
    pub retiring: u32,
    /// Python threads per worker (requests one worker runs at once).
    pub threads: u32,
}

/// The request queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueStats {
    /// Requests waiting now.
    pub depth: u32,
    /// How long the oldest waiting request has waited, milliseconds (0 when empty).
    pub oldest_wait_ms: u64,
    /// The configured bound (`--max-queue`); beyond it requests get 503.
    pub max: u32,
}

/// Averages over three windows.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Rates {
    /// The last second.
    #[serde(rename = "1s")]
    pub s1: Window,
    /// The last 10 seconds.
    #[serde(rename = "10s")]
    pub s10: Window,
    /// The last 60 seconds (or since start, if shorter).
    #[serde(rename = "60s")]
    pub s60: Window,
}

/// Averages over one window.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Window {
    /// Completed requests per second.
    pub requests_per_second: f64,
    /// Busy fraction of the worker threads that were running, 0.0 to 1.0.
    pub utilization: f64,
    /// Average requests in the server (running plus queued): the demand.
    pub concurrency: f64,
    /// Requests that reached the server per second: queued, run, or refused because the
    /// queue was full. Unlike completions it is not capped by the workers: with
    /// `service_seconds`, the offered load (Little's law). 0 from servers that predate it.
    #[serde(default)]
    pub arrivals_per_second: f64,
    /// Mean thread time per completed request, seconds (busy thread time over completions;
    /// 0 when none completed). Time a request waits for the CPU or the GIL counts: it is
    /// what a request costs this pod's threads. 0 from servers that predate it.
    #[serde(default)]
    pub service_seconds: f64,
}
