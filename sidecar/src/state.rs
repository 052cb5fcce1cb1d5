//! State shared by the front, the links, the supervisor and the admin server.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use wsgiscale_core::config::{HttpConfig, LiveConfig};
use wsgiscale_core::load::LoadReport;
use wsgiscale_core::loadtrack::LoadTracker;

use crate::access::AccessLog;
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::spool::SpoolConfig;
use crate::static_files::StaticMounts;

/// Shared by every task of the master.
pub struct Shared {
    /// The queue and the workers' lanes (their threads).
    pub dispatcher: Arc<Dispatcher>,
    /// Front limits and timeouts (fixed for the server's life).
    pub http: HttpConfig,
    /// How streamed responses are buffered (from `http.buffers`).
    pub spool: Arc<SpoolConfig>,
    /// Python threads per worker.
    pub threads: u32,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Set on SIGTERM: readiness fails and connections close after their current request.
    pub draining: AtomicBool,
    /// True until the fork server has imported the app (or, without preload, started):
    /// the admin port answers from the start, and readiness says why it fails meanwhile.
    pub importing: AtomicBool,
    /// Per-request deadline in milliseconds (0: none); live-reloadable.
    pub timeout_ms: AtomicU64,
    /// The live settings in force.
    pub live: Mutex<LiveConfig>,
    /// One load sample per second, for /load.
    pub load: Mutex<LoadTracker>,
    /// The access log, when it is on.
    pub access: Option<Arc<AccessLog>>,
    /// Static mounts served by the front (never queued, never in the load report).
    pub statics: StaticMounts,
}

impl Shared {
    /// Creates the shared state.
    pub fn new(
        dispatcher: Arc<Dispatcher>,
        http: HttpConfig,
        threads: u32,
        live: LiveConfig,
        access: Option<AccessLog>,
        statics: StaticMounts,
    ) -> Self {
        let spool = Arc::new(SpoolConfig::from_settings(&http.buffers));
        let s = Shared {
            dispatcher,
            spool,
            access: access.map(Arc::new),
            statics,
            http,
            threads,
            metrics: Metrics::new(),
            draining: AtomicBool::new(false),
            importing: AtomicBool::new(true),
            timeout_ms: AtomicU64::new(0),
            live: Mutex::new(live),
            load: Mutex::new(LoadTracker::new()),
        };
        s.set_live(live);
        s
    }

    /// Installs new live settings.
    pub fn set_live(&self, live: LiveConfig) {
        self.metrics
            .observe_limits(live.workers.min, live.workers.max);
        let ms = live
            .lifecycle
            .timeout
            .map_or(0, |t| t.as_millis().max(1) as u64);
        self.timeout_ms.store(ms, Ordering::Relaxed);
        *self.live.lock() = live;
    }

    /// The per-request deadline in force.
    pub fn timeout(&self) -> Option<Duration> {
        match self.timeout_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Whether SIGTERM was received.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether the app is still being imported.
    pub fn is_importing(&self) -> bool {
        self.importing.load(Ordering::Relaxed)
    }

    /// The `/load` document as of now.
    pub fn load_report(&self) -> LoadReport {
        let sb = self.dispatcher.snapshot();
        let live = *self.live.lock();
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.load.lock().report(
            &sb,
            &live.workers,
            self.threads,
            self.http.max_queue as u32,
            self.is_draining(),
            unix_ms,
        )
    }
}
