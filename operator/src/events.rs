//! Events, published off the reconcile path: the reconciler and the autoscaler queue an event
//! ([`EventSink::queue`], which never waits) and one task ([`publish_events`]) sends them to
//! the API server, a few at once. A reconcile no longer waits for an Event round trip per
//! child it applied (4 of the 13 serial requests of a first reconcile); Events stay best
//! effort: a full queue drops the event and counts it, a failed publish is counted and logged
//! once per change from working to failing (see [`crate::dependency`]).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api_error::namespace_terminating;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporting {
    /// The reconciler (`wsgiscale-operator`).
    Reconciler,
    /// The pod autoscaler (`wsgiscale-autoscaler`).
    Autoscaler,
}

impl Reporting {
    /// Its name: the Events' `reportingController`, and the field manager of its writes
    /// ([`crate::reconcile::FIELD_MANAGER`], [`crate::scrape::FIELD_MANAGER`]).
    pub const fn name(self) -> &'static str {
        match self {
            Reporting::Reconciler => "wsgiscale-operator",
            Reporting::Autoscaler => "wsgiscale-autoscaler",
        }
    }
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
    /// The child it is about, if any ("Created ConfigMap" and "Created Deployment" are two
    /// events).
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

/// What identifies one event for folding repeats into a series: client-go's key (reporting
/// controller and instance, regarding, related, type, reason, action and note). kube-runtime's
/// `Recorder` leaves the note out of its key, so "ScaledUp 1 -> 5 pods: demand 12" after
/// "ScaledUp 0 -> 1 pods" became a second count of the first note and the numbers that explain
/// the decision were lost; this module keeps its own series for that reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    reporting: Reporting,
    regarding: (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ),
    related: Option<(Option<String>, Option<String>, Option<String>)>,
    warning: bool,
    reason: String,
    action: String,
    note: String,
}

impl SeriesKey {
    fn of(q: &Queued) -> SeriesKey {
        let r = &q.regarding;
        SeriesKey {
            reporting: q.reporting,
            regarding: (
                r.kind.clone(),
                r.namespace.clone(),
                r.name.clone(),
                r.uid.clone(),
            ),
            related: q
                .related
                .as_ref()
                .map(|o| (o.kind.clone(), o.namespace.clone(), o.name.clone())),
            warning: q.warning,
            reason: q.reason.clone(),
            action: q.action.clone(),
            note: q.note.clone(),
        }
    }
}

/// How long an event is remembered for folding repeats (client-go and kube-runtime: 6 min).
pub const SERIES_TTL_MS: i64 = 6 * 60 * 1000;

/// What to send for one distinct event of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Publish {
    /// A new Event object of this name, seen `count` times in its batch (a series when more
    /// than once).
    Create {
        /// The Event's name.
        name: String,
        /// Occurrences so far.
        count: i32,
    },
    /// Another occurrence of the Event of this name: a series with this count.
    Repeat {
        /// The Event's name.
        name: String,
        /// Occurrences so far.
        count: i32,
    },
}

impl Publish {
    /// The Event's name.
    pub fn name(&self) -> &str {
        match self {
            Publish::Create { name, .. } | Publish::Repeat { name, .. } => name,
        }
    }
}

#[derive(Debug, Clone)]
struct Seen {
    name: String,
    count: i32,
    last_ms: i64,
}

/// The events published in the last [`SERIES_TTL_MS`], by [`SeriesKey`]; pure (the caller
/// passes the time).
#[derive(Debug, Default)]
pub struct Series {
    seen: std::collections::HashMap<SeriesKey, Seen>,
    created: u64,
}

impl Series {
    /// Decides a batch: one [`Publish`] per distinct event, in first-seen order, with repeats
    /// inside the batch folded into the count.
    pub fn plan(&mut self, batch: Vec<Queued>, now_ms: i64) -> Vec<(Queued, SeriesKey, Publish)> {
        self.seen.retain(|_, s| s.last_ms + SERIES_TTL_MS > now_ms);
        let mut fresh = std::collections::HashSet::new();
        let mut order: Vec<(Queued, SeriesKey)> = Vec::new();
        for q in batch {
            let key = SeriesKey::of(&q);
            match self.seen.get_mut(&key) {
                Some(s) => {
                    s.count += 1;
                    s.last_ms = now_ms;
                }
                None => {
                    self.created += 1;
                    let base = q
                        .regarding
                        .name
                        .clone()
                        .unwrap_or_else(|| "wsgiscale".into());
                    // Unique within this process even when two are made in the same instant.
                    let name = format!("{base}.{:x}{:04x}", now_ms, self.created & 0xffff);
                    let seen = Seen {
                        name,
                        count: 1,
                        last_ms: now_ms,
                    };
                    self.seen.insert(key.clone(), seen);
                    fresh.insert(key.clone());
                }
            }
            if !order.iter().any(|(_, k)| *k == key) {
                order.push((q, key));
            }
        }
        order
            .into_iter()
            .map(|(q, key)| {
                let s = &self.seen[&key];
                let (name, count) = (s.name.clone(), s.count);
                let publish = if fresh.contains(&key) {
                    Publish::Create { name, count }
                } else {
                    Publish::Repeat { name, count }
                };
                (q, key, publish)
            })
            .collect()
    }

    /// After a failed create, or a repeat whose Event is gone: the next occurrence creates.
    pub fn forget(&mut self, key: &SeriesKey) {
        self.seen.remove(key);
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
    let health = std::sync::Mutex::new(Dependency::new("publish events"));
    let series = std::sync::Mutex::new(Series::default());
    let out = Out {
        client,
        instance,
        metrics: &metrics,
        health: &health,
        series: &series,
    };
    loop {
        // Whatever is queued now, a few at once.
        let mut batch = Vec::new();
        tokio::select! {
            _ = stop.cancelled() => {
                rx.close();
                while let Ok(e) = rx.try_recv() { batch.push(e); }
                out.batch(batch).await;
                return rx;
            }
            n = rx.recv_many(&mut batch, 256) => if n == 0 { return rx },
        }
        out.batch(batch).await;
    }
}

struct Out<'a> {
    client: Client,
    instance: Option<String>,
    metrics: &'a Metrics,
    health: &'a std::sync::Mutex<Dependency>,
    series: &'a std::sync::Mutex<Series>,
}

impl Out<'_> {
    async fn batch(&self, batch: Vec<Queued>) {
        if batch.is_empty() {
            return;
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        let plan = self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .plan(batch, now.as_millisecond());
        futures::stream::iter(plan)
            .for_each_concurrent(PUBLISH_CONCURRENCY, |(q, key, publish)| async move {
                let result = match self.one(&q, &publish, now).await {
                    // The namespace is going and its Events with it: not a failure of the
                    // Events API.
                    Err(e) if namespace_terminating(&e) => {
                        tracing::debug!(error = %e, "event dropped: its namespace is being deleted");
                        Ok(())
                    }
                    other => other,
                };
                if result.is_err() {
                    // The next occurrence creates the Event again.
                    self.series
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .forget(&key);
                    self.metrics.count_error("publish_event");
                }
                self.health
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .observe(result.err().map(|e| e.to_string()));
            })
            .await;
    }

    async fn one(
        &self,
        q: &Queued,
        publish: &Publish,
        now: k8s_openapi::jiff::Timestamp,
    ) -> Result<(), kube::Error> {
        let namespace = q.regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        match publish {
            Publish::Create { name, count } => {
                let event = self.event(q, name, *count, now);
                api.create(&PostParams::default(), &event).await.map(|_| ())
            }
            Publish::Repeat { name, count } => {
                let patch = serde_json::json!({
                    "series": {"count": count, "lastObservedTime": MicroTime(now)},
                });
                match api
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    // Gone (expired by the API server's TTL, or deleted): a new one.
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        let event = self.event(q, name, *count, now);
                        api.create(&PostParams::default(), &event).await.map(|_| ())
                    }
                    other => other.map(|_| ()),
                }
            }
        }
    }

    fn event(
        &self,
        q: &Queued,
        name: &str,
        count: i32,
        now: k8s_openapi::jiff::Timestamp,
    ) -> K8sEvent {
        let controller = q.reporting.name();
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: q.regarding.namespace.clone(),
                ..Default::default()
            },
            action: Some(q.action.clone()),
            reason: Some(q.reason.clone()),
            note: Some(q.note.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(q.regarding.clone()),
            related: q.related.clone(),
            reporting_controller: Some(controller.to_string()),
            reporting_instance: Some(
                self.instance
                    .clone()
                    .unwrap_or_else(|| controller.to_string()),
            ),
            type_: Some(if q.warning { "Warning" } else { "Normal" }.to_string()),
            series: (count > 1).then_some(EventSeries {
                count,
                last_observed_time: MicroTime(now),
            }),
            ..Default::default()
        }
    }
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

    fn scaled(note: &str) -> Queued {
        Queued {
            reporting: Reporting::Autoscaler,
            regarding: ObjectReference {
                kind: Some("WsgiApp".into()),
                namespace: Some("shop".into()),
                name: Some("shop".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            warning: false,
            reason: "ScaledUp".into(),
            action: "Scale".into(),
            note: note.into(),
            related: None,
        }
    }

    #[test]
    fn events_with_different_notes_are_different_events() {
        let mut series = Series::default();
        let first = series.plan(vec![scaled("0 -> 1 pods")], 1_000);
        // Same reason, new numbers: a new Event, not a count on the first one's note.
        let second = series.plan(vec![scaled("1 -> 5 pods: demand 12")], 5_000);
        let (Publish::Create { name: a, .. }, Publish::Create { name: b, .. }) =
            (&first[0].2, &second[0].2)
        else {
            panic!("{first:?} {second:?}");
        };
        assert_ne!(a, b);
    }

    #[test]
    fn repeats_fold_into_a_series_within_the_ttl_and_within_a_batch() {
        let mut series = Series::default();
        let plan = series.plan(vec![scaled("x"), scaled("x"), scaled("y"), scaled("x")], 0);
        assert_eq!(plan.len(), 2, "{plan:?}");
        let Publish::Create { name, count: 3 } = plan[0].2.clone() else {
            panic!("{plan:?}")
        };
        // Three in one batch: one Event with a series of 3; the next one is its fourth.
        let again = series.plan(vec![scaled("x")], 60_000);
        assert_eq!(
            again[0].2,
            Publish::Repeat {
                name: name.clone(),
                count: 4
            }
        );
        // After the TTL without a repeat: a new Event.
        let later = series.plan(vec![scaled("x")], 60_000 + SERIES_TTL_MS);
        assert!(
            matches!(later[0].2, Publish::Create { ref name, count: 1 } if *name != plan[0].2.name())
        );
    }

    #[test]
    fn a_failed_publish_is_forgotten_so_the_next_one_creates() {
        let mut series = Series::default();
        let plan = series.plan(vec![scaled("x")], 0);
        series.forget(&plan[0].1);
        let next = series.plan(vec![scaled("x")], 1);
        assert!(matches!(next[0].2, Publish::Create { .. }));
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
