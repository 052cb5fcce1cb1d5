//! Leader election over a `coordination.k8s.io/v1` Lease, so that several operator replicas
//! run and exactly one reconciles.
//!
//! The rules are client-go's: the holder renews the lease every `retry_period`; a candidate
//! takes the lease over once its record has not changed for `lease_duration`, measured on the
//! candidate's own monotonic clock (so clock skew between nodes does not matter); the holder
//! steps down when it could not renew for `renew_deadline` (shorter than `lease_duration`, so it
//! stops before anyone else can start); on shutdown the holder releases the lease so a standby
//! takes over at once. Writes use the lease's resourceVersion, so two candidates racing for it
//! cannot both win.
//!
//! [`decide`] is the pure part; [`LeaderElector::run`] does the I/O.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Timing of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// Time between two attempts.
    pub retry_period: Duration,
}

impl LeaseTiming {
    /// client-go's proportions for a given lease duration: renew deadline 2/3, retry 2/15.
    pub fn from_lease_duration(lease_duration: Duration) -> Self {
        LeaseTiming {
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: (lease_duration * 2 / 15).max(Duration::from_millis(500)),
        }
    }
}

/// What a candidate does with the lease it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No lease exists: create it, held by us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// It is free or expired: take it.
    Acquire,
    /// Someone else holds it.
    Follow {
        /// The current holder.
        holder: String,
    },
}

/// Decides from the lease's spec (None: no lease), our identity and how long the lease's record
/// has been unchanged as we observed it.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire;
    }
    let duration = spec
        .lease_duration_seconds
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s as u64))
        .unwrap_or(default_duration);
    if unchanged_for >= duration {
        Decision::Acquire
    } else {
        Decision::Follow {
            holder: holder.to_string(),
        }
    }
}

/// The lease spec to write for `decision` (Create, Renew or Acquire), at `now`.
pub fn build_spec(
    previous: Option<&LeaseSpec>,
    decision: &Decision,
    me: &str,
    now: Timestamp,
    lease_duration: Duration,
) -> LeaseSpec {
    let prev = previous.cloned().unwrap_or_default();
    let transitions = prev.lease_transitions.unwrap_or(0);
    let taking_over = matches!(decision, Decision::Acquire | Decision::Create);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(lease_duration.as_secs().max(1) as i32),
        acquire_time: if taking_over {
            Some(MicroTime(now))
        } else {
            prev.acquire_time.clone()
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(match decision {
            Decision::Acquire => transitions.saturating_add(1),
            _ => transitions,
        }),
        ..prev
    }
}

/// What identifies one version of the lease's record (holder, renew time, transitions), to
/// tell whether it changed.
type RecordKey = Option<(Option<String>, Option<MicroTime>, Option<i32>)>;

fn record_key(spec: Option<&LeaseSpec>) -> RecordKey {
    spec.map(|s| {
        (
            s.holder_identity.clone(),
            s.renew_time.clone(),
            s.lease_transitions,
        )
    })
}

/// Runs the election for one identity.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    observed: Option<(RecordKey, Instant)>,
    last_renewal: Option<Instant>,
    health: Option<std::sync::Arc<crate::http::Health>>,
}

/// The readiness source (and log name) of the lease's rounds.
const SOURCE: &str = "leader lease";

impl LeaderElector {
    /// An elector for the lease `name` of `api`'s namespace.
    pub fn new(api: Api<Lease>, name: String, identity: String, timing: LeaseTiming) -> Self {
        LeaderElector {
            api,
            name,
            identity,
            timing,
            observed: None,
            last_renewal: None,
            health: None,
        }
    }

    /// Reports each round to `health` (unready while the lease cannot be read or written;
    /// a failing lease is logged once when it fails and once when it recovers).
    pub fn with_health(mut self, health: std::sync::Arc<crate::http::Health>) -> Self {
        self.health = Some(health);
        self
    }

    /// One round: read the lease, decide, write. Returns whether we lead.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let lease = self.api.get_opt(&self.name).await?;
        let spec = lease.as_ref().and_then(|l| l.spec.as_ref());
        let key = record_key(spec);
        let now = Instant::now();
        let unchanged_for = match &self.observed {
            Some((k, since)) if *k == key => now.duration_since(*since),
            _ => {
                self.observed = Some((key, now));
                Duration::ZERO
            }
        };
        let decision = decide(
            spec,
            &self.identity,
            unchanged_for,
            self.timing.lease_duration,
        );
        if let Decision::Follow { holder } = &decision {
            tracing::debug!(holder, "following");
            return Ok(false);
        }
        let new_spec = build_spec(
            spec,
            &decision,
            &self.identity,
            Timestamp::now(),
            self.timing.lease_duration,
        );
        let result = match lease {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(new_spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // Keeps metadata.resourceVersion: a concurrent writer makes this a 409.
                lease.spec = Some(new_spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => {
                if decision != Decision::Renew {
                    info!(identity = %self.identity, lease = %self.name, "acquired the leader lease");
                }
                self.last_renewal = Some(Instant::now());
                self.observed = None;
                Ok(true)
            }
            // A conflict: someone else wrote the lease since we read it, so someone else may
            // hold it now. We stop leading at once (two leaders would fight over every child).
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            // Anything else (the API server unreachable, a 5xx) says nothing about the other
            // candidates: see `run`, which keeps leading through it until the renew deadline.
            Err(e) => Err(e),
        }
    }

    /// Campaigns until `shutdown`, publishing whether we lead on `leading`; releases the lease
    /// on the way out if we hold it.
    pub async fn run(mut self, leading: watch::Sender<bool>, shutdown: CancellationToken) {
        loop {
            let round = self.try_acquire_or_renew().await;
            if let Some(health) = &self.health {
                health.report(SOURCE, round.as_ref().err().map(|e| e.to_string()));
            }
            let lead = match round {
                Ok(lead) => lead,
                // A network error or a 5xx: nobody else can have renewed the lease through
                // the same outage, and nobody may take it over before `lease_duration` without
                // a renewal, so the holder keeps leading until `renew_deadline` (shorter) and
                // steps down then. A 409 (someone else wrote the lease) is no error: it ends
                // the term at once, in `try_acquire_or_renew`. Logged once per outage, through
                // `health`.
                Err(e) => {
                    tracing::debug!(error = %e, "leader lease round failed");
                    self.last_renewal
                        .is_some_and(|t| t.elapsed() < self.timing.renew_deadline)
                        && *leading.borrow()
                }
            };
            if *leading.borrow() && !lead {
                warn!(identity = %self.identity, "lost the leader lease");
            }
            leading.send_if_modified(|v| std::mem::replace(v, lead) != lead);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.timing.retry_period) => {}
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            match self.release().await {
                Ok(()) => info!(lease = %self.name, "released the leader lease"),
                Err(e) => warn!(error = %e, "cannot release the leader lease"),
            }
        }
    }

    /// Gives the lease up so a standby replica takes over without waiting for it to expire.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(seconds),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn decisions() {
        let s = Duration::from_secs;
        let follow = |h: &str| Decision::Follow { holder: h.into() };
        let cases = [
            (None, s(0), Decision::Create),
            (Some(spec(Some("me"), 15)), s(0), Decision::Renew),
            (Some(spec(Some("me"), 15)), s(100), Decision::Renew),
            (Some(spec(None, 15)), s(0), Decision::Acquire),
            (Some(spec(Some(""), 15)), s(0), Decision::Acquire),
            (Some(spec(Some("other"), 15)), s(14), follow("other")),
            (Some(spec(Some("other"), 15)), s(15), Decision::Acquire),
            (Some(spec(Some("other"), 60)), s(30), follow("other")),
            (Some(spec(Some("other"), 0)), s(15), Decision::Acquire),
        ];
        for (lease, unchanged, want) in cases {
            assert_eq!(
                decide(lease.as_ref(), "me", unchanged, D),
                want,
                "{lease:?} {unchanged:?}"
            );
        }
    }

    #[test]
    fn acquiring_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let t1: Timestamp = "2026-01-01T00:00:10Z".parse().expect("time");
        let taken = build_spec(
            Some(&spec(Some("other"), 15)),
            &Decision::Acquire,
            "me",
            t0,
            D,
        );
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(t0)));
        let renewed = build_spec(Some(&taken), &Decision::Renew, "me", t1, D);
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(t0)));
        assert_eq!(renewed.renew_time, Some(MicroTime(t1)));
        assert_eq!(renewed.lease_duration_seconds, Some(15));
        let created = build_spec(None, &Decision::Create, "me", t0, D);
        assert_eq!(created.lease_transitions, Some(0));
    }

    #[test]
    fn timing_steps_down_before_others_take_over() {
        let t = LeaseTiming::from_lease_duration(D);
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.retry_period, Duration::from_secs(2));
        assert!(t.renew_deadline < t.lease_duration);
    }

    mod io {
        use http::{Method, Request, Response, StatusCode};
        use kube::client::Body;
        use kube::Client;
        use serde_json::json;

        use super::*;

        type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

        const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/op";

        fn elector() -> (LeaderElector, Handle) {
            let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let api = Api::namespaced(Client::new(service, "ops"), "ops");
            let timing = LeaseTiming::from_lease_duration(D);
            (
                LeaderElector::new(api, "op".into(), "me".into(), timing),
                handle,
            )
        }

        fn lease(holder: &str) -> serde_json::Value {
            json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "op", "namespace": "ops", "resourceVersion": "7"},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": 2},
            })
        }

        fn respond(code: StatusCode, body: &serde_json::Value) -> Response<Body> {
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(body).expect("json")))
                .expect("response")
        }

        #[tokio::test]
        async fn a_fresh_lease_of_another_holder_is_left_alone() {
            let (mut e, mut handle) = elector();
            let server = tokio::spawn(async move {
                let (req, send) = handle.next_request().await.expect("request");
                assert_eq!((req.method(), req.uri().path()), (&Method::GET, PATH));
                send.send_response(respond(StatusCode::OK, &lease("other")));
                handle
            });
            assert!(!e.try_acquire_or_renew().await.expect("round"));
            let mut handle = server.await.expect("server");
            assert!(
                matches!(handle.poll_request(), std::task::Poll::Pending),
                "no write"
            );
        }

        #[tokio::test]
        async fn renewal_keeps_the_resource_version_and_a_conflict_loses() {
            let (mut e, mut handle) = elector();
            let server = tokio::spawn(async move {
                let (_, send) = handle.next_request().await.expect("get");
                send.send_response(respond(StatusCode::OK, &lease("me")));
                let (req, send) = handle.next_request().await.expect("put");
                assert_eq!((req.method(), req.uri().path()), (&Method::PUT, PATH));
                let body: serde_json::Value =
                    serde_json::from_slice(&req.into_body().collect_bytes().await.expect("body"))
                        .expect("json");
                assert_eq!(
                    body["metadata"]["resourceVersion"], "7",
                    "optimistic concurrency"
                );
                assert_eq!(body["spec"]["holderIdentity"], "me");
                assert_eq!(body["spec"]["leaseTransitions"], 2);
                assert!(body["spec"]["renewTime"].is_string());
                // Someone else wrote the lease in between.
                send.send_response(respond(
                    StatusCode::CONFLICT,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409}),
                ));
            });
            assert!(!e
                .try_acquire_or_renew()
                .await
                .expect("a conflict is not an error"));
            server.await.expect("server");
        }
    }
}
