//! Events, published off the reconcile path: the reconciler and the autoscaler queue an event
//! ([`EventSink::queue`], which never waits) and one task ([`publish_events`]) sends them to
//! the API server, a few at once. A reconcile no longer waits for an Event round trip per
//! child it applied (4 of the 13 serial requests of a first reconcile); Events stay best
//! effort: a full queue drops the event and counts it, a failed publish is counted and logged
//! once per change from working to failing (see [`crate::dependency`]).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::dependency::Dependency;
use crate::metrics::Metrics;

/// The Events API's limit on a note: 1 KiB, counted in bytes.
pub const MAX_NOTE_BYTES: usize = 1024;

/// Events waiting to be published; beyond this the newest are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 4096;

/// Events published at once.
const PUBLISH_CONCURRENCY: usize = 8;

/// `note` cut to at most `max` bytes, at a character boundary (a note of non-ASCII text cut
/// at `max` characters could be several times the limit, and the API server refuses it).
pub fn truncate_note(note: &str, max: usize) -> &str {
    if note.len() <= max {
        return note;
    }
    let mut end = max;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    &note[..end]
}

/// Which controller reports an event (its `reportingController`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporting {
    /// The reconciler (`wsgiscale-operator`).
    Reconciler,
    /// The pod autoscaler (`wsgiscale-autoscaler`).
    Autoscaler,
}

/// One event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// Who reports it.
    pub reporting: Reporting,
    /// The object it is about (a WsgiApp).
    pub regarding: ObjectReference,
    /// Normal or Warning.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// CamelCase action.
    pub action: String,
    /// The note, at most [`MAX_NOTE_BYTES`].
    pub note: String,
    /// The child it is about, if any: the recorder folds repeats of the same event into a
    /// series, and the child tells "Created ConfigMap" from "Created Deployment".
    pub related: Option<ObjectReference>,
}

/// Where events are queued; cheap to clone.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Queued>,
    metrics: Arc<Metrics>,
}

impl EventSink {
    /// A sink and the receiver [`publish_events`] reads.
    pub fn new(metrics: Arc<Metrics>) -> (EventSink, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        (EventSink { tx, metrics }, rx)
    }

    /// Queues `event` without waiting; a full or closed queue drops it and counts
    /// `events_dropped`.
    pub fn queue(&self, mut event: Queued) {
        let cut = truncate_note(&event.note, MAX_NOTE_BYTES).len();
        event.note.truncate(cut);
        if self.tx.try_send(event).is_err() {
            self.metrics.count_error("events_dropped");
        }
    }
}

/// Publishes queued events until `stop`, then what is still queued, and returns the receiver
/// (so a later leadership term publishes through it again).
pub async fn publish_events(
    client: Client,
    instance: Option<String>,
    mut rx: mpsc::Receiver<Queued>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> mpsc::Receiver<Queued> {
    let recorder = |controller: &str| {
        Recorder::new(
            client.clone(),
            Reporter {
                controller: controller.into(),
                instance: instance.clone(),
            },
        )
    };
    let reconciler = recorder(crate::reconcile::FIELD_MANAGER);
    let autoscaler = recorder(crate::scrape::FIELD_MANAGER);
    let health = std::sync::Mutex::new(Dependency::new("publish events"));
    loop {
        // Whatever is queued now, a few at once.
        let mut batch = Vec::new();
        tokio::select! {
            _ = stop.cancelled() => {
                rx.close();
                while let Ok(e) = rx.try_recv() { batch.push(e); }
                publish_batch(&reconciler, &autoscaler, batch, &metrics, &health).await;
                return rx;
            }
            n = rx.recv_many(&mut batch, 256) => if n == 0 { return rx },
        }
        publish_batch(&reconciler, &autoscaler, batch, &metrics, &health).await;
    }
}

async fn publish_batch(
    reconciler: &Recorder,
    autoscaler: &Recorder,
    batch: Vec<Queued>,
    metrics: &Metrics,
    health: &std::sync::Mutex<Dependency>,
) {
    futures::stream::iter(batch)
        .for_each_concurrent(PUBLISH_CONCURRENCY, |q| async move {
            let recorder = match q.reporting {
                Reporting::Reconciler => reconciler,
                Reporting::Autoscaler => autoscaler,
            };
            let event = Event {
                type_: if q.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: q.reason,
                note: Some(q.note),
                action: q.action,
                secondary: q.related,
            };
            let result = recorder.publish(&event, &q.regarding).await;
            if result.is_err() {
                metrics.count_error("publish_event");
            }
            health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe(result.err().map(|e| e.to_string()));
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_in_bytes_at_a_character_boundary() {
        assert_eq!(truncate_note("short", 1024), "short");
        let ascii = "a".repeat(2000);
        assert_eq!(truncate_note(&ascii, 1024).len(), 1024);
        // 600 three-byte characters: 1800 bytes; 1000 characters would still be over 1 KiB.
        let wide = "€".repeat(600);
        let cut = truncate_note(&wide, 1024);
        assert!(cut.len() <= 1024 && cut.len() > 1020, "{}", cut.len());
        assert_eq!(cut.chars().count(), 341);
        assert!(cut.chars().all(|c| c == '€'));
        // Exactly at the limit: unchanged.
        let exact = "é".repeat(512);
        assert_eq!(truncate_note(&exact, 1024), exact);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = Arc::new(Metrics::default());
        let (sink, mut rx) = EventSink::new(metrics.clone());
        let event = Queued {
            reporting: Reporting::Reconciler,
            regarding: ObjectReference::default(),
            warning: false,
            reason: "Created".into(),
            action: "Apply".into(),
            note: "€".repeat(1000),
            related: None,
        };
        for _ in 0..QUEUE_CAPACITY + 3 {
            sink.queue(event.clone());
        }
        assert!(metrics
            .encode()
            .contains("wsgiscale_operator_errors_total{reason=\"events_dropped\"} 3"));
        let first = rx.recv().await.expect("queued");
        assert!(first.note.len() <= MAX_NOTE_BYTES);
    }
}
