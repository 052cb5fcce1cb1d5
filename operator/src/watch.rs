//! How the operator's watches retry, so that an API server outage of any length ends in a
//! relist as soon as the API server answers.
//!
//! What went wrong with kube-runtime's default (client-go's: 0.8 s doubling to 30 s, reset
//! only after an item arrives): during a long outage every failed attempt grows the backoff to
//! its 30 s cap, so the first attempt after the API server is back comes up to 30 s late;
//! that attempt resumes the watch at the old resource version, which the restarted API server
//! no longer has, so the stream says `410 Gone` ("too old resource version"); that error is
//! one more error for the backoff, still at its cap (no item arrived in between), so the
//! relist it calls for waits up to 30 s more. A change made right after the outage was applied
//! a minute later (bench/RESULTS.md, "Operator at scale": the outage).
//!
//! Here: the backoff is capped at [`BACKOFF_MAX`] (5 s, with jitter) and reset by any item, and
//! a `410 Gone` is not an error for it at all: the watcher has already dropped its resource
//! version, and the next poll relists at once. How each watch fares goes to [`Health`] (for
//! `/readyz`), which logs a failing watch once when it fails and once when it recovers.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use tracing::debug;

use crate::autoscale::SplitMix64;
use crate::http::Health;

/// First retry delay after a watch fails.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);

/// Longest retry delay: how late, at most, a watch notices that the API server answers again.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long a watch must stay quiet, while the API server answers, to count as resumed (it
/// retried within its backoff's cap, twice over, without failing again).
pub const QUIET: Duration = Duration::from_secs(2 * BACKOFF_MAX.as_secs() + 1);

/// Exponential backoff from [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`], each delay jittered
/// by ±20% (so the watches of one operator do not retry in lockstep); [`Backoff::reset`] starts
/// over. Pure but for its seed.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    current: Duration,
    rng: SplitMix64,
}

impl WatchBackoff {
    /// A backoff whose jitter comes from `seed`.
    pub fn new(seed: u64) -> Self {
        WatchBackoff {
            current: BACKOFF_MIN,
            rng: SplitMix64(seed),
        }
    }
}

impl Default for WatchBackoff {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        WatchBackoff::new(seed ^ u64::from(std::process::id()))
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.current;
        self.current = (self.current * 2).min(BACKOFF_MAX);
        let factor = 0.8 + 0.4 * self.rng.next_f64();
        Some(base.mul_f64(factor).min(BACKOFF_MAX))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.current = BACKOFF_MIN;
    }
}

/// Whether a watch error means the watcher lost its place (HTTP 410 Gone: the resource
/// version is too old) and relists on its next poll.
pub fn is_desync(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// What the backoff sees: an event, or a relist that must not wait.
enum Step<K> {
    Event(watcher::Event<K>),
    Relist(String),
}

/// A watch stream that retries with [`WatchBackoff`], relists at once after a `410 Gone`, and
/// reports how it fares to `health` as `source` (unready and logged once while it fails).
/// Errors still come through (after their backoff), for the caller to drop.
pub fn resilient<K, S>(
    events: S,
    health: Arc<Health>,
    source: String,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    events
        .map(|r| match r {
            Ok(event) => Ok(Step::Event(event)),
            Err(e) if is_desync(&e) => Ok(Step::Relist(e.to_string())),
            Err(e) => Err(e),
        })
        .backoff(WatchBackoff::default())
        .filter_map(move |r| {
            let out = match r {
                Ok(Step::Event(event)) => {
                    health.report(&source, None);
                    Some(Ok(event))
                }
                Ok(Step::Relist(why)) => {
                    debug!(watch = %source, error = %why, "lost its place: relisting at once");
                    None
                }
                Err(e) => {
                    health.report(&source, Some(e.to_string()));
                    Some(Err(e))
                }
            };
            std::future::ready(out)
        })
}

/// Only the objects of a watch stream whose errors [`resilient`] has already handled.
pub fn objects<T: Send>(
    stream: impl Stream<Item = Result<T, watcher::Error>> + Send,
) -> impl Stream<Item = Result<T, watcher::Error>> + Send {
    stream.filter_map(|r| std::future::ready(r.ok().map(Ok)))
}

#[cfg(test)]
mod tests {
    use futures::channel::mpsc;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::core::Status;

    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_starts_over_on_reset() {
        let mut b = WatchBackoff::new(7);
        let delays: Vec<Duration> = (&mut b).take(8).collect();
        let bases = [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0];
        for (d, base) in delays.iter().zip(bases) {
            let s = d.as_secs_f64();
            assert!(
                s >= base * 0.8 - 1e-9 && s <= (base * 1.2).min(5.0) + 1e-9,
                "{delays:?}"
            );
        }
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX));
        b.reset();
        assert!(b.next().expect("never gives up") <= BACKOFF_MIN.mul_f64(1.2));
    }

    fn gone() -> watcher::Error {
        watcher::Error::WatchError(Box::new(
            Status::failure("too old resource version: 5 (9)", "Expired").with_code(410),
        ))
    }

    #[test]
    fn only_410_is_a_desync() {
        assert!(is_desync(&gone()));
        assert!(!is_desync(&watcher::Error::WatchError(Box::new(
            Status::failure("boom", "InternalError").with_code(500)
        ))));
        assert!(!is_desync(&watcher::Error::NoResourceVersion));
    }

    /// The outage, replayed on a paused clock: failures grow the backoff; once the API server
    /// answers, the 410 that the old resource version gets costs no wait at all, and the
    /// relist's events come through at once.
    #[tokio::test(start_paused = true)]
    async fn a_410_after_an_outage_relists_without_waiting() {
        let (tx, rx) = mpsc::unbounded::<Result<watcher::Event<ConfigMap>, watcher::Error>>();
        let health = Arc::new(Health::default());
        let mut stream = Box::pin(resilient(rx, health.clone(), "watch ConfigMap".into()));
        let refused = || {
            watcher::Error::WatchStartFailed(kube::Error::Api(Box::new(
                Status::failure("connection refused", "ServiceUnavailable").with_code(503),
            )))
        };
        // The outage: ten refused attempts; each is passed on after its backoff.
        for _ in 0..10 {
            tx.unbounded_send(Err(refused())).expect("send");
            assert!(stream.next().await.expect("item").is_err());
        }
        assert!(health.readiness().is_err() || !health.is_ready());
        // The API server is back: 410, then the relist.
        tx.unbounded_send(Err(gone())).expect("send");
        tx.unbounded_send(Ok(watcher::Event::Init)).expect("send");
        tx.unbounded_send(Ok(watcher::Event::InitDone))
            .expect("send");
        let t = tokio::time::Instant::now();
        // The last refusal's backoff (up to 5 s) is still running; after it, the 410 costs
        // nothing: the relist's first event follows without another backoff.
        let first = stream.next().await.expect("item").expect("an event");
        assert!(matches!(first, watcher::Event::Init));
        assert!(
            t.elapsed() <= BACKOFF_MAX,
            "waited {:?}: the 410 was backed off",
            t.elapsed()
        );
        health.set_ready(true);
        assert!(health.is_ready(), "the watch reported its recovery");
    }
}
