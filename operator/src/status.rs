//! `status`: what the reconciler observed -> the WsgiApp's status and conditions. Pure: the
//! time is an argument.
//!
//! Conditions follow metav1.Condition: `lastTransitionTime` changes only when a condition's
//! status changes, and messages hold no timestamps or counters that change without the state
//! changing, so an unchanged world computes an identical status and nothing is written.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{WsgiApp, WsgiAppStatus};
use crate::explain::PodIssue;
use crate::layout::CONTAINER_NAME;
use crate::render::selector_string;
use crate::validate::{ValidatedApp, ValidationError};

/// Condition type: the app runs every desired pod, up to date and ready.
pub const READY: &str = "Ready";
/// Condition type: a rollout or a scaling is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: something needs a human: an invalid spec, an object the API server
/// refused, a stuck rollout, pods that cannot be created or cannot start.
pub const DEGRADED: &str = "Degraded";
/// Condition type: another manager (an HPA, KEDA, `kubectl scale`) wrote the scale of an app
/// whose autoscaling is on, and is ignored.
pub const SCALE_CONFLICT: &str = "ScaleConflict";

/// Condition reasons, machine-readable (CamelCase).
pub mod reasons {
    /// Every desired pod is up to date and ready.
    pub const AVAILABLE: &str = "Available";
    /// No pods requested (replicas 0).
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// A new pod template is being rolled out.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// The pod count is changing.
    pub const SCALING: &str = "Scaling";
    /// Pods are up to date but not all ready.
    pub const PODS_NOT_READY: &str = "PodsNotReady";
    /// Nothing is changing.
    pub const COMPLETE: &str = "Complete";
    /// The spec breaks a rule; nothing was changed.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The API server refused an object the operator rendered.
    pub const APPLY_REJECTED: &str = "ApplyRejected";
    /// The Deployment made no progress within its deadline.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// Pods could not be created (quota, admission policy...).
    pub const REPLICA_FAILURE: &str = "ReplicaFailure";
    /// Nothing is wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// The API server keeps failing a request of the operator's (retried with backoff).
    pub const API_ERROR: &str = "ApiError";
    /// Another manager wrote the scale subresource while autoscaling is on.
    pub const SCALE_WRITTEN_BY_OTHER: &str = "ScaleWrittenByOther";
    /// Autoscaling is off: the scale subresource sets the pod count, whoever writes it.
    pub const AUTOSCALING_OFF: &str = "AutoscalingOff";
    // The first reason pods are not ready is the pods' own (see crate::explain):
    // Unschedulable, ImagePullBackOff, CrashLoopBackOff, StartupProbeFailed....
    // With spec.inject, the start command's verdict on the app image is the reason itself:
    // NoPython, UnsupportedPython, MuslLibc or OldGlibc (see wsgiscale-start).
}

/// Why the app image cannot run the injected wsgiscale, as its start command reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unservable {
    /// `NoPython`, `UnsupportedPython`, `MuslLibc`, `OldGlibc`.
    pub reason: String,
    /// What was found, in the start command's words.
    pub message: String,
}

/// The start command's verdict, from the pods of an app with spec.inject: the termination
/// message of the app container (now or at its last exit) of a pod that runs `image`.
pub fn compute_unservable<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    image: &str,
) -> Option<Unservable> {
    pods.into_iter()
        .filter(|p| {
            p.spec.as_ref().is_some_and(|s| {
                s.containers
                    .iter()
                    .any(|c| c.name == CONTAINER_NAME && c.image.as_deref() == Some(image))
            })
        })
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter(|cs| cs.name == CONTAINER_NAME)
        .flat_map(|cs| {
            let now = cs.state.as_ref().and_then(|s| s.terminated.as_ref());
            let last = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
            [now, last]
        })
        .flatten()
        .filter_map(|t| t.message.as_deref())
        .find_map(wsgiscale_start::parse_termination_message)
        .map(|(reason, message)| Unservable { reason, message })
}

/// What the reconciler got to.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The spec is invalid: nothing was rendered or applied.
    Invalid(&'a ValidationError),
    /// The API server refused `kind`'s object with `message`.
    Rejected {
        /// The kind of the refused object.
        kind: &'static str,
        /// The API server's message.
        message: &'a str,
    },
    /// The API server keeps failing (`action` went wrong with `message` past the first
    /// retries); the children are as they were.
    Failing {
        /// What failed, e.g. "apply Service shop".
        action: &'a str,
        /// The API server's message (or the network error).
        message: &'a str,
    },
    /// Every child is applied; the Deployment as last seen, and the pods asked of it.
    Applied {
        /// The app, validated.
        app: &'a ValidatedApp,
        /// The Deployment, as returned by the apply or read before it.
        deployment: Option<&'a Deployment>,
        /// The replicas the Deployment was given.
        desired: i32,
        /// With spec.inject: the app image cannot run wsgiscale, says its start command.
        unservable: Option<&'a Unservable>,
        /// The first reason the pods of the current spec are not ready, if any.
        pod_issue: Option<&'a PodIssue>,
        /// The HorizontalPodAutoscalers that target the app, when its scale was written
        /// while its autoscaling is on ([`needs_scale_writers`]).
        scale_writers: &'a [String],
    },
}

/// The status fields the reconciler owns (the autoscaler owns `load` and `autoscaler`).
pub fn reconciler_fields(status: &WsgiAppStatus) -> WsgiAppStatus {
    WsgiAppStatus {
        load: None,
        autoscaler: None,
        ..status.clone()
    }
}

/// Builds the conditions, keeping each one's lastTransitionTime when its status is unchanged.
struct Conditions<'a> {
    previous: &'a [Condition],
    generation: Option<i64>,
    now: Time,
    out: Vec<Condition>,
}

impl Conditions<'_> {
    fn set(&mut self, type_: &str, status: bool, reason: &str, message: String) {
        let status = if status { "True" } else { "False" };
        let last_transition_time = self
            .previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| self.now.clone());
        self.out.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: self.generation,
            last_transition_time,
        });
    }
}

/// The Deployment's progress, from its status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Rollout {
    replicas: i32,
    updated: i32,
    ready: i32,
    /// The Deployment controller has seen the latest spec.
    seen: bool,
    deadline_exceeded: Option<String>,
    replica_failure: Option<String>,
    /// The Deployment's own Progressing reason (`NewReplicaSetAvailable` once a rollout
    /// completed).
    progress_reason: Option<String>,
}

fn rollout(dep: Option<&Deployment>) -> Rollout {
    let Some(dep) = dep else {
        return Rollout::default();
    };
    let st = dep.status.clone().unwrap_or_default();
    let seen = match (st.observed_generation, dep.metadata.generation) {
        (Some(o), Some(g)) => o >= g,
        _ => false,
    };
    let conds = st.conditions.unwrap_or_default();
    let find = |t: &str, s: &str| {
        conds
            .iter()
            .find(|c| c.type_.as_deref() == Some(t) && c.status.as_deref() == Some(s))
    };
    Rollout {
        replicas: st.replicas.unwrap_or(0),
        updated: st.updated_replicas.unwrap_or(0),
        ready: st.ready_replicas.unwrap_or(0),
        seen,
        deadline_exceeded: find("Progressing", "False")
            .filter(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            .map(|c| c.message.clone().unwrap_or_default()),
        replica_failure: find("ReplicaFailure", "True").map(|c| {
            c.message
                .clone()
                .unwrap_or_else(|| "pods cannot be created".into())
        }),
        progress_reason: conds
            .iter()
            .find(|c| c.type_.as_deref() == Some("Progressing"))
            .and_then(|c| c.reason.clone()),
    }
}

/// The status for `app` after the reconcile reached `outcome`, at `now`. Fields the reconciler
/// does not own are left out (see [`reconciler_fields`]).
pub fn compute_status(app: &WsgiApp, outcome: Outcome<'_>, now: Time) -> WsgiAppStatus {
    let previous = app.status.clone().unwrap_or_default();
    let generation = app.metadata.generation;
    let mut c = Conditions {
        previous: &previous.conditions,
        generation,
        now,
        out: Vec::with_capacity(3),
    };
    let mut status = WsgiAppStatus {
        observed_generation: generation,
        ..reconciler_fields(&previous)
    };
    match outcome {
        Outcome::Invalid(err) => {
            let msg = err.to_string();
            c.set(READY, false, reasons::INVALID_SPEC, msg.clone());
            c.set(
                PROGRESSING,
                false,
                reasons::INVALID_SPEC,
                "waiting for a valid spec".into(),
            );
            c.set(DEGRADED, true, reasons::INVALID_SPEC, msg);
        }
        Outcome::Rejected { kind, message } => {
            let msg = format!("the API server refused the {kind}: {message}");
            c.set(READY, false, reasons::APPLY_REJECTED, msg.clone());
            c.set(
                PROGRESSING,
                false,
                reasons::APPLY_REJECTED,
                format!("waiting for a {kind} the API server accepts (the spec, or another manager's change to the existing {kind})"),
            );
            c.set(DEGRADED, true, reasons::APPLY_REJECTED, msg);
        }
        Outcome::Failing { action, message } => {
            // No counters or times in the message: a failure that goes on writes it once.
            let msg = format!(
                "the API server keeps failing to {action}: {message}; retrying with backoff"
            );
            c.set(READY, false, reasons::API_ERROR, msg.clone());
            c.set(
                PROGRESSING,
                false,
                reasons::API_ERROR,
                format!("waiting for the API server to {action}"),
            );
            c.set(DEGRADED, true, reasons::API_ERROR, msg);
        }
        Outcome::Applied {
            app: v,
            deployment,
            desired,
            unservable,
            pod_issue,
            scale_writers: _,
        } => {
            let r = rollout(deployment);
            status.replicas = Some(r.replicas);
            status.ready_replicas = Some(r.ready);
            status.updated_replicas = Some(r.updated);
            status.desired_replicas = Some(desired);
            status.selector = Some(selector_string(&v.name));

            // Old pods still running, or the Deployment controller has not caught up.
            let rolling = !r.seen || r.updated < r.replicas;
            let scaling = !rolling && r.replicas != desired;
            let complete = r.seen && r.updated == desired && r.replicas == desired;

            let (ready, reason, msg) = if complete && r.ready >= desired {
                if desired == 0 {
                    let msg = match v.autoscaling.scale_to_zero {
                        Some(idle) if v.autoscaling.enabled => format!(
                            "no pods: idle for {} s, the activator holds the next request and wakes the app",
                            idle.as_secs()
                        ),
                        _ => "no pods requested".to_string(),
                    };
                    (true, reasons::SCALED_TO_ZERO, msg)
                } else {
                    let msg = format!("{} of {desired} pods ready", r.ready);
                    (true, reasons::AVAILABLE, msg)
                }
            } else if let Some(u) = unservable {
                (false, u.reason.as_str(), u.message.clone())
            } else if let Some(i) = pod_issue {
                (false, i.reason.as_str(), i.message.clone())
            } else if let Some(m) = &r.deadline_exceeded {
                (false, reasons::PROGRESS_DEADLINE_EXCEEDED, m.clone())
            } else if !r.seen {
                let msg = "waiting for the Deployment controller".to_string();
                (false, reasons::ROLLING_OUT, msg)
            } else if rolling {
                let msg = format!(
                    "{} of {} pods updated, {} ready",
                    r.updated, r.replicas, r.ready
                );
                (false, reasons::ROLLING_OUT, msg)
            } else if scaling {
                let msg = format!("{} of {desired} pods, {} ready", r.replicas, r.ready);
                (false, reasons::SCALING, msg)
            } else {
                let msg = format!("{} of {desired} pods ready", r.ready);
                (false, reasons::PODS_NOT_READY, msg)
            };
            c.set(READY, ready, reason, msg);

            // Why the pods are not ready, after what the Deployment says.
            let why = |msg: String| match pod_issue {
                Some(i) => format!("{msg}; {}: {}", i.reason, i.message),
                None => msg,
            };
            let healthy = complete && r.ready >= desired;
            let (progressing, reason, msg) = if let Some(m) = &r.deadline_exceeded {
                (false, reasons::PROGRESS_DEADLINE_EXCEEDED, why(m.clone()))
            } else if rolling {
                let msg = format!("rolling out generation {}", generation.unwrap_or(0));
                (true, reasons::ROLLING_OUT, why(msg))
            } else if scaling {
                let msg = format!("scaling from {} to {desired} pods", r.replicas);
                (true, reasons::SCALING, why(msg))
            } else if !healthy {
                // Every pod runs the current spec but not all are ready: still coming up
                // while the Deployment's rollout is under way, else (it had completed) no
                // longer progressing. Never "Complete".
                let msg = format!(
                    "every pod runs the current spec, {} of {desired} ready",
                    r.ready
                );
                let progressing = r.progress_reason.as_deref() != Some("NewReplicaSetAvailable");
                (progressing, reasons::PODS_NOT_READY, why(msg))
            } else {
                let msg = "every pod runs the current spec".to_string();
                (false, reasons::COMPLETE, msg)
            };
            c.set(PROGRESSING, progressing, reason, msg);

            let (degraded, reason, msg) = if let Some(u) = unservable.filter(|_| !healthy) {
                (true, u.reason.as_str(), u.message.clone())
            } else if let Some(i) = pod_issue.filter(|i| i.needs_attention) {
                (true, i.reason.as_str(), i.message.clone())
            } else if let Some(m) = &r.deadline_exceeded {
                (true, reasons::PROGRESS_DEADLINE_EXCEEDED, why(m.clone()))
            } else if let Some(m) = &r.replica_failure {
                (true, reasons::REPLICA_FAILURE, m.clone())
            } else {
                let msg = "nothing needs attention".to_string();
                (false, reasons::AS_EXPECTED, msg)
            };
            c.set(DEGRADED, degraded, reason, msg);
        }
    }
    let hpas = match outcome {
        Outcome::Applied { scale_writers, .. } => scale_writers,
        _ => &[],
    };
    let (conflict, reason, msg) = compute_scale_conflict(app, hpas);
    c.set(SCALE_CONFLICT, conflict, reason, msg);
    status.conditions = c.out;
    status
}

/// Who writes `spec.replicas.desired` of an app whose autoscaling is on, as far as can be
/// known. The API server records an update of a field in managedFields, but not one through
/// the scale subresource of a custom resource (kubernetes/kubernetes#131892, open): such a
/// write leaves `desired` set with no manager. Then the HorizontalPodAutoscalers that target
/// the app name the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScaleWriter {
    /// A managedFields entry of the scale subresource owns it (API servers that record it).
    Recorded {
        /// The entry's manager.
        manager: String,
    },
    /// `desired` is set and no manager owns it: written through the scale subresource.
    Unrecorded,
}

/// Whether `app` has autoscaling on.
fn autoscaling_on(app: &WsgiApp) -> bool {
    app.spec
        .autoscaling
        .as_ref()
        .and_then(|a| a.enabled)
        .unwrap_or(false)
}

/// Who wrote `spec.replicas.desired` through the scale subresource, from managedFields; None
/// when it is unset, or set by an ordinary update or apply (the user's own manifest).
pub fn compute_scale_writer(app: &WsgiApp) -> Option<ScaleWriter> {
    app.spec.replicas.as_ref()?.desired?;
    let owners: Vec<_> = app
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| {
            e.fields_v1
                .as_ref()
                .is_some_and(|f| !f.0["f:spec"]["f:replicas"]["f:desired"].is_null())
        })
        .collect();
    if let Some(e) = owners
        .iter()
        .find(|e| e.subresource.as_deref() == Some("scale"))
    {
        return Some(ScaleWriter::Recorded {
            manager: e
                .manager
                .clone()
                .unwrap_or_else(|| "an unnamed manager".into()),
        });
    }
    owners.is_empty().then_some(ScaleWriter::Unrecorded)
}

/// Whether the reconcile should look for the HorizontalPodAutoscalers that target the app:
/// autoscaling is on and something wrote its scale.
pub fn needs_scale_writers(app: &WsgiApp) -> bool {
    autoscaling_on(app) && compute_scale_writer(app).is_some()
}

/// The HorizontalPodAutoscalers of `hpas` whose target is the WsgiApp `name`, as names for a
/// message (`shop`, or `keda-hpa-shop (KEDA ScaledObject shop)`).
pub fn compute_hpas_targeting(
    hpas: &[k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler],
    name: &str,
) -> Vec<String> {
    hpas.iter()
        .filter(|h| {
            let t = &h.spec.scale_target_ref;
            t.kind == "WsgiApp"
                && t.name == name
                && t.api_version
                    .as_deref()
                    .unwrap_or_default()
                    .starts_with("wsgiscale.dev/")
        })
        .map(|h| {
            let hpa = h.metadata.name.clone().unwrap_or_default();
            let keda = h
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("scaledobject.keda.sh/name"));
            match keda {
                Some(so) => format!("{hpa} (KEDA ScaledObject {so})"),
                None => hpa,
            }
        })
        .collect()
}

/// The ScaleConflict condition: True while autoscaling is on and another writer's value sits
/// in `replicas.desired`, written through the scale subresource (an HPA, KEDA's HPA, `kubectl
/// scale`): the operator ignores it. The message names the writer (the managedFields entry,
/// else the HPAs in `hpas` that target the app) and how to end the conflict; it holds no value
/// or time, so an HPA that keeps writing does not rewrite the status each time.
fn compute_scale_conflict(app: &WsgiApp, hpas: &[String]) -> (bool, &'static str, String) {
    if !autoscaling_on(app) {
        let msg = "autoscaling is off: the scale subresource (kubectl scale, an HPA, KEDA) sets the pod count".to_string();
        return (false, reasons::AUTOSCALING_OFF, msg);
    }
    let Some(writer) = compute_scale_writer(app) else {
        let msg = "only the operator's autoscaler sets the pod count".to_string();
        return (false, reasons::AS_EXPECTED, msg);
    };
    let who = match (&writer, hpas) {
        (ScaleWriter::Recorded { manager }, _) => {
            let hint = match manager.as_str() {
                "kube-controller-manager" => " (a HorizontalPodAutoscaler, or KEDA's)",
                m if m.starts_with("kubectl") => " (kubectl scale)",
                _ => "",
            };
            format!("{manager}{hint}")
        }
        (ScaleWriter::Unrecorded, []) => "a client (kubectl scale, or an autoscaler outside this namespace; the API server does not record who writes the scale of a custom resource)".to_string(),
        (ScaleWriter::Unrecorded, [one]) => format!("HorizontalPodAutoscaler {one}"),
        (ScaleWriter::Unrecorded, many) => {
            format!("the HorizontalPodAutoscalers {}", many.join(", "))
        }
    };
    let name = app.metadata.name.as_deref().unwrap_or_default();
    let msg = format!(
        "{who} writes the pod count through the scale subresource (spec.replicas.desired), \
         but autoscaling.enabled is true: the operator's autoscaler alone sets the pod count and ignores it. \
         Remove the other autoscaler (or set autoscaling.enabled: false to let it scale the app), then take \
         its value out: kubectl patch wsgiapp {name} --type=json -p '[{{\"op\":\"remove\",\"path\":\"/spec/replicas/desired\"}}]'"
    );
    (true, reasons::SCALE_WRITTEN_BY_OTHER, msg)
}

/// The Deployment's replica count: the scale subresource's `replicas.desired` while the
/// operator's autoscaling is off, the autoscaler's recommendation while it is on; before the
/// autoscaler has recommended anything the current count is kept. Always within
/// replicas.min..replicas.max.
pub fn compute_replicas(app: &ValidatedApp, recommended: Option<i32>, current: Option<i32>) -> i32 {
    let r = &app.replicas;
    let wanted = if app.autoscaling.enabled {
        recommended.or(current).unwrap_or(r.min)
    } else {
        r.desired.unwrap_or(r.min)
    };
    r.clamp(wanted)
}

/// The autoscaler's recommendation as `app`'s status publishes it, if any.
pub fn published_recommendation(app: &WsgiApp) -> Option<i32> {
    app.status
        .as_ref()
        .and_then(|s| s.autoscaler.as_ref())
        .and_then(|a| a.recommended_replicas)
}

/// The condition of `type_`, if set.
pub fn condition<'a>(status: &'a WsgiAppStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// A Warning event worth publishing when `new` turned Degraded (or changed why) compared to
/// `old`: (reason, message).
pub fn degraded_transition(
    old: Option<&WsgiAppStatus>,
    new: &WsgiAppStatus,
) -> Option<(String, String)> {
    warning_transition(old, new, DEGRADED)
}

/// A Warning event worth publishing when the condition `type_` turned True (or changed why)
/// from `old` to `new`: (reason, message).
pub fn warning_transition(
    old: Option<&WsgiAppStatus>,
    new: &WsgiAppStatus,
    type_: &str,
) -> Option<(String, String)> {
    let now = condition(new, type_).filter(|c| c.status == "True")?;
    let before = old.and_then(|o| condition(o, type_));
    let same = before.is_some_and(|b| {
        b.status == now.status && b.reason == now.reason && b.message == now.message
    });
    (!same).then(|| (now.reason.clone(), now.message.clone()))
}

/// A Normal event worth publishing when `new` became Ready compared to `old`.
pub fn ready_transition(
    old: Option<&WsgiAppStatus>,
    new: &WsgiAppStatus,
) -> Option<(String, String)> {
    let now = condition(new, READY).filter(|c| c.status == "True")?;
    let was = old
        .and_then(|o| condition(o, READY))
        .is_some_and(|b| b.status == "True");
    (!was).then(|| (now.reason.clone(), now.message.clone()))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::crd::AutoscalingSpec;
    use crate::fixtures::mk_app;
    use crate::validate::{validate_app, FieldError};

    fn t(s: &str) -> Time {
        Time(s.parse::<Timestamp>().expect("test timestamp"))
    }

    fn dep(generation: i64, observed: i64, replicas: i32, updated: i32, ready: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(observed),
                replicas: Some(replicas),
                updated_replicas: Some(updated),
                ready_replicas: Some(ready),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    fn cond(s: &WsgiAppStatus, type_: &str) -> (String, String) {
        let c = condition(s, type_).expect("condition set");
        (c.status.clone(), c.reason.clone())
    }

    fn applied(app: &WsgiApp, d: &Deployment, desired: i32) -> WsgiAppStatus {
        let v = validate_app(app).expect("valid");
        compute_status(
            app,
            Outcome::Applied {
                app: &v,
                deployment: Some(d),
                desired,
                unservable: None,
                pod_issue: None,
                scale_writers: &[],
            },
            t("2026-01-01T00:00:00Z"),
        )
    }

    #[test]
    fn conditions_follow_the_deployment() {
        let app = mk_app("shop");
        let yes = |r: &str| ("True".to_string(), r.to_string());
        let no = |r: &str| ("False".to_string(), r.to_string());
        let cases = [
            // generation, observed, replicas, updated, ready, desired -> Ready, Progressing
            (
                (2, 1, 2, 2, 2, 2),
                no(reasons::ROLLING_OUT),
                yes(reasons::ROLLING_OUT),
            ),
            (
                (2, 2, 3, 1, 2, 2),
                no(reasons::ROLLING_OUT),
                yes(reasons::ROLLING_OUT),
            ),
            (
                (2, 2, 2, 2, 2, 2),
                yes(reasons::AVAILABLE),
                no(reasons::COMPLETE),
            ),
            (
                (2, 2, 2, 2, 1, 2),
                no(reasons::PODS_NOT_READY),
                yes(reasons::PODS_NOT_READY),
            ),
            (
                (2, 2, 2, 2, 2, 4),
                no(reasons::SCALING),
                yes(reasons::SCALING),
            ),
            (
                (2, 2, 4, 4, 4, 2),
                no(reasons::SCALING),
                yes(reasons::SCALING),
            ),
            (
                (2, 2, 0, 0, 0, 0),
                yes(reasons::SCALED_TO_ZERO),
                no(reasons::COMPLETE),
            ),
        ];
        for ((g, o, rep, upd, rdy, desired), ready, progressing) in cases {
            let s = applied(&app, &dep(g, o, rep, upd, rdy), desired);
            assert_eq!(
                cond(&s, READY),
                ready,
                "{g} {o} {rep} {upd} {rdy} {desired}"
            );
            assert_eq!(
                cond(&s, PROGRESSING),
                progressing,
                "{g} {o} {rep} {upd} {rdy} {desired}"
            );
            assert_eq!(cond(&s, DEGRADED), no(reasons::AS_EXPECTED));
            assert_eq!(s.desired_replicas, Some(desired));
            assert_eq!(s.selector.as_deref(), Some("wsgiscale.dev/app=shop"));
            assert_eq!(s.observed_generation, Some(1));
        }
    }

    #[test]
    fn stuck_rollouts_and_failed_pods_are_degraded() {
        let app = mk_app("shop");
        let mut d = dep(2, 2, 2, 1, 1);
        d.status.as_mut().expect("status").conditions = Some(vec![
            DeploymentCondition {
                type_: Some("Progressing".into()),
                status: Some("False".into()),
                reason: Some("ProgressDeadlineExceeded".into()),
                message: Some("ReplicaSet \"shop-1\" has timed out progressing.".into()),
                ..DeploymentCondition::default()
            },
            DeploymentCondition {
                type_: Some("ReplicaFailure".into()),
                status: Some("True".into()),
                reason: Some("FailedCreate".into()),
                message: Some("exceeded quota".into()),
                ..DeploymentCondition::default()
            },
        ]);
        let s = applied(&app, &d, 2);
        assert_eq!(
            cond(&s, READY),
            ("False".into(), reasons::PROGRESS_DEADLINE_EXCEEDED.into())
        );
        assert_eq!(
            cond(&s, DEGRADED),
            ("True".into(), reasons::PROGRESS_DEADLINE_EXCEEDED.into())
        );
        d.status
            .as_mut()
            .expect("status")
            .conditions
            .as_mut()
            .expect("conds")
            .remove(0);
        let s = applied(&app, &d, 2);
        assert_eq!(
            cond(&s, DEGRADED),
            ("True".into(), reasons::REPLICA_FAILURE.into())
        );
        assert_eq!(
            condition(&s, DEGRADED).expect("set").message,
            "exceeded quota"
        );
    }

    #[test]
    fn invalid_spec_is_ready_false_and_keeps_the_last_counts() {
        let err = ValidationError::InvalidSpec(vec![FieldError {
            field: "spec.workers.min".into(),
            reason: "4 is greater than workers.max 2".into(),
        }]);
        let app = mk_app("shop")
            .with_generation(3)
            .with_status(WsgiAppStatus {
                ready_replicas: Some(2),
                ..WsgiAppStatus::default()
            });
        let s = compute_status(&app, Outcome::Invalid(&err), t("2026-01-01T00:00:00Z"));
        assert_eq!(
            cond(&s, READY),
            ("False".into(), reasons::INVALID_SPEC.into())
        );
        assert_eq!(
            cond(&s, DEGRADED),
            ("True".into(), reasons::INVALID_SPEC.into())
        );
        assert!(condition(&s, READY)
            .expect("set")
            .message
            .contains("spec.workers.min"));
        assert_eq!(s.ready_replicas, Some(2));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(
            condition(&s, READY).expect("set").observed_generation,
            Some(3)
        );
    }

    #[test]
    fn transition_times_move_only_when_a_status_changes() {
        let app = mk_app("shop");
        let d = dep(1, 1, 1, 1, 1);
        let v = validate_app(&app).expect("valid");
        let first = compute_status(
            &app,
            Outcome::Applied {
                app: &v,
                deployment: Some(&d),
                desired: 1,
                unservable: None,
                pod_issue: None,
                scale_writers: &[],
            },
            t("2026-01-01T00:00:00Z"),
        );
        let again = compute_status(
            &app.clone().with_status(first.clone()),
            Outcome::Applied {
                app: &v,
                deployment: Some(&d),
                desired: 1,
                unservable: None,
                pod_issue: None,
                scale_writers: &[],
            },
            t("2026-01-01T01:00:00Z"),
        );
        assert_eq!(first, again, "same world, same status: nothing to write");

        let not_ready = dep(1, 1, 1, 1, 0);
        let later = compute_status(
            &app.clone().with_status(first.clone()),
            Outcome::Applied {
                app: &v,
                deployment: Some(&not_ready),
                desired: 1,
                unservable: None,
                pod_issue: None,
                scale_writers: &[],
            },
            t("2026-01-01T02:00:00Z"),
        );
        let time = |s: &WsgiAppStatus, ty: &str| {
            condition(s, ty).expect("set").last_transition_time.clone()
        };
        assert_eq!(time(&later, READY), t("2026-01-01T02:00:00Z"));
        assert_eq!(time(&later, DEGRADED), t("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn the_autoscalers_fields_are_not_the_reconcilers() {
        let app = mk_app("shop").with_status(WsgiAppStatus {
            load: Some(crate::crd::LoadSummary {
                busy_workers: Some(3),
                ..Default::default()
            }),
            ..WsgiAppStatus::default()
        });
        let v = validate_app(&app).expect("valid");
        let s = compute_status(
            &app,
            Outcome::Applied {
                app: &v,
                deployment: None,
                desired: 1,
                unservable: None,
                pod_issue: None,
                scale_writers: &[],
            },
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(s.load, None);
        assert_eq!(s.autoscaler, None);
    }

    #[test]
    fn replicas_follow_scale_or_autoscaler_within_bounds() {
        let manual = validate_app(
            &mk_app("shop")
                .with_replicas(2, Some(5))
                .map(|a| a.spec.replicas.as_mut().expect("set").desired = Some(5)),
        )
        .expect("valid");
        assert_eq!(
            compute_replicas(&manual, Some(4), Some(3)),
            5,
            "desired; recommendation ignored (a desired outside min..max is refused by validate)"
        );
        let unset = validate_app(&mk_app("shop").with_replicas(2, None)).expect("valid");
        assert_eq!(
            compute_replicas(&unset, None, Some(7)),
            2,
            "no desired: min"
        );

        let auto = validate_app(&mk_app("shop").with_replicas(2, Some(10)).map(|a| {
            a.spec.autoscaling = Some(AutoscalingSpec {
                enabled: Some(true),
                ..AutoscalingSpec::default()
            });
            a.spec.replicas.as_mut().expect("set").desired = Some(2);
        }))
        .expect("valid");
        assert_eq!(
            compute_replicas(&auto, Some(4), Some(3)),
            4,
            "the autoscaler decides"
        );
        assert_eq!(compute_replicas(&auto, Some(40), None), 10);
        assert_eq!(
            compute_replicas(&auto, None, Some(3)),
            3,
            "kept until a recommendation"
        );
        assert_eq!(compute_replicas(&auto, None, None), 2);
    }

    #[test]
    fn events_fire_on_transitions_only() {
        let app = mk_app("shop");
        let err = ValidationError::InvalidSpec(vec![]);
        let bad = compute_status(&app, Outcome::Invalid(&err), t("2026-01-01T00:00:00Z"));
        assert!(degraded_transition(None, &bad).is_some());
        assert!(degraded_transition(Some(&bad), &bad).is_none());
        let v = validate_app(&app).expect("valid");
        let d = dep(1, 1, 1, 1, 1);
        let good = compute_status(
            &app,
            Outcome::Applied {
                app: &v,
                deployment: Some(&d),
                desired: 1,
                unservable: None,
                pod_issue: None,
                scale_writers: &[],
            },
            t("2026-01-01T00:00:00Z"),
        );
        assert!(degraded_transition(Some(&bad), &good).is_none());
        assert_eq!(
            ready_transition(Some(&bad), &good).map(|r| r.0),
            Some(reasons::AVAILABLE.to_string())
        );
        assert!(ready_transition(Some(&good), &good).is_none());
    }

    fn injected_pod(image: &str, message: Option<&str>) -> Pod {
        use k8s_openapi::api::core::v1::{
            Container, ContainerState, ContainerStateTerminated, ContainerStatus, PodSpec,
            PodStatus,
        };
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: CONTAINER_NAME.into(),
                    image: Some(image.into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: CONTAINER_NAME.into(),
                    last_state: message.map(|m| ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 3,
                            message: Some(m.into()),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn an_unservable_image_is_the_ready_reason_and_degrades() {
        let musl = "wsgiscale-start: MuslLibc: python3 at /usr/local/bin/python3 is CPython 3.12.7 built for musl libc";
        let pods = [
            injected_pod("shop:1", None),
            injected_pod(
                "shop:0",
                Some("wsgiscale-start: NoPython: from an older image"),
            ),
            injected_pod("shop:1", Some("Traceback (most recent call last): ...")),
            injected_pod("shop:1", Some(musl)),
        ];
        let u = compute_unservable(&pods, "shop:1").expect("found");
        assert_eq!(u.reason, "MuslLibc");
        assert!(u.message.contains("CPython 3.12.7"), "{u:?}");
        assert_eq!(compute_unservable(&pods[..3], "shop:1"), None);

        let app = mk_app("shop");
        let v = validate_app(&app).expect("valid");
        let d = dep(1, 1, 2, 2, 0);
        let s = compute_status(
            &app,
            Outcome::Applied {
                app: &v,
                deployment: Some(&d),
                desired: 2,
                unservable: Some(&u),
                pod_issue: None,
                scale_writers: &[],
            },
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(cond(&s, READY), ("False".into(), "MuslLibc".into()));
        assert_eq!(cond(&s, DEGRADED), ("True".into(), "MuslLibc".into()));
        assert!(condition(&s, READY).expect("set").message.contains("musl"));
        let (reason, _) = degraded_transition(None, &s).expect("a Warning event");
        assert_eq!(reason, "MuslLibc");
    }

    fn issue(reason: &str, attention: bool) -> PodIssue {
        PodIssue {
            reason: reason.into(),
            message: format!("4 of 4 pods of the current spec: {reason} because"),
            needs_attention: attention,
        }
    }

    fn with_issue(d: &Deployment, desired: i32, i: Option<&PodIssue>) -> WsgiAppStatus {
        let app = mk_app("shop");
        let v = validate_app(&app).expect("valid");
        compute_status(
            &app,
            Outcome::Applied {
                app: &v,
                deployment: Some(d),
                desired,
                unservable: None,
                pod_issue: i,
                scale_writers: &[],
            },
            t("2026-01-01T00:00:00Z"),
        )
    }

    fn dep_progress(reason: &str, status: &str, message: &str) -> Deployment {
        let mut d = dep(1, 1, 4, 4, 0);
        d.status.as_mut().expect("status").conditions = Some(vec![DeploymentCondition {
            type_: Some("Progressing".into()),
            status: Some(status.into()),
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..DeploymentCondition::default()
        }]);
        d
    }

    #[test]
    fn the_status_says_why_pods_are_not_ready_and_is_never_complete_meanwhile() {
        // 0 of 4 pods ready, the rollout under way: the pods' reason everywhere it belongs.
        let starting = dep_progress(
            "ReplicaSetUpdated",
            "True",
            "ReplicaSet \"shop-1\" is progressing.",
        );
        let unsched = issue("Unschedulable", false);
        let s = with_issue(&starting, 4, Some(&unsched));
        assert_eq!(cond(&s, READY), ("False".into(), "Unschedulable".into()));
        assert_eq!(condition(&s, READY).expect("set").message, unsched.message);
        assert_eq!(
            cond(&s, PROGRESSING),
            ("True".into(), reasons::PODS_NOT_READY.into())
        );
        let p = &condition(&s, PROGRESSING).expect("set").message;
        assert!(
            p.contains("0 of 4 ready") && p.contains("Unschedulable: 4 of 4 pods"),
            "{p}"
        );
        // A cluster autoscaler may still add nodes: not (yet) Degraded.
        assert_eq!(
            cond(&s, DEGRADED),
            ("False".into(), reasons::AS_EXPECTED.into())
        );

        // A wrong image needs a human at once.
        let pull = issue("ImagePullBackOff", true);
        let s = with_issue(&starting, 4, Some(&pull));
        assert_eq!(
            cond(&s, DEGRADED),
            ("True".into(), "ImagePullBackOff".into())
        );
        assert!(degraded_transition(None, &s).is_some());

        // At the deadline, the Deployment's words and the pods' reason.
        let stuck = dep_progress(
            "ProgressDeadlineExceeded",
            "False",
            "ReplicaSet \"shop-1\" has timed out progressing.",
        );
        let s = with_issue(&stuck, 4, Some(&unsched));
        assert_eq!(cond(&s, READY), ("False".into(), "Unschedulable".into()));
        for ty in [PROGRESSING, DEGRADED] {
            let c = condition(&s, ty).expect("set");
            assert_eq!(c.reason, reasons::PROGRESS_DEADLINE_EXCEEDED);
            assert!(
                c.message.contains("timed out progressing")
                    && c.message.contains("Unschedulable: 4 of 4"),
                "{}",
                c.message
            );
        }

        // After a completed rollout, pods that turn unready: not progressing, not complete.
        let done = dep_progress(
            "NewReplicaSetAvailable",
            "True",
            "ReplicaSet \"shop-1\" has successfully progressed.",
        );
        let crash = issue("CrashLoopBackOff", true);
        let s = with_issue(&done, 4, Some(&crash));
        assert_eq!(
            cond(&s, PROGRESSING),
            ("False".into(), reasons::PODS_NOT_READY.into())
        );
        assert_eq!(
            cond(&s, DEGRADED),
            ("True".into(), "CrashLoopBackOff".into())
        );

        // All ready: Complete, and no pod reason.
        let mut fine = dep_progress("NewReplicaSetAvailable", "True", "ok");
        fine.status.as_mut().expect("status").ready_replicas = Some(4);
        let s = with_issue(&fine, 4, None);
        assert_eq!(cond(&s, READY), ("True".into(), reasons::AVAILABLE.into()));
        assert_eq!(
            cond(&s, PROGRESSING),
            ("False".into(), reasons::COMPLETE.into())
        );
    }

    fn scaled_by(manager: &str, subresource: Option<&str>, autoscaling: bool) -> WsgiApp {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
        mk_app("shop").with_replicas(1, Some(10)).map(|a| {
            a.spec.autoscaling = Some(AutoscalingSpec {
                enabled: Some(autoscaling),
                ..AutoscalingSpec::default()
            });
            a.spec.replicas.as_mut().expect("set").desired = Some(3);
            let mut entries = vec![ManagedFieldsEntry {
                manager: Some("kubectl".into()),
                operation: Some("Apply".into()),
                fields_v1: Some(FieldsV1(serde_json::json!({"f:spec": {"f:image": {}}}))),
                ..ManagedFieldsEntry::default()
            }];
            if !manager.is_empty() {
                entries.push(ManagedFieldsEntry {
                    manager: Some(manager.into()),
                    operation: Some("Update".into()),
                    subresource: subresource.map(Into::into),
                    fields_v1: Some(FieldsV1(
                        serde_json::json!({"f:spec": {"f:replicas": {"f:desired": {}}}}),
                    )),
                    ..ManagedFieldsEntry::default()
                });
            }
            a.metadata.managed_fields = Some(entries);
        })
    }

    fn conflict_of(app: &WsgiApp, hpas: &[String]) -> WsgiAppStatus {
        let v = validate_app(app).expect("valid");
        compute_status(
            app,
            Outcome::Applied {
                app: &v,
                deployment: None,
                desired: 1,
                unservable: None,
                pod_issue: None,
                scale_writers: hpas,
            },
            t("2026-01-01T00:00:00Z"),
        )
    }

    #[test]
    fn another_scale_writer_of_an_autoscaled_app_is_named() {
        // Recorded in managedFields (API servers that do for custom resources).
        let hpa = conflict_of(
            &scaled_by("kube-controller-manager", Some("scale"), true),
            &[],
        );
        let c = condition(&hpa, SCALE_CONFLICT).expect("set");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", reasons::SCALE_WRITTEN_BY_OTHER)
        );
        assert!(
            c.message.starts_with(
                "kube-controller-manager (a HorizontalPodAutoscaler, or KEDA's) writes"
            ),
            "{}",
            c.message
        );
        assert!(
            c.message.contains("kubectl patch wsgiapp shop --type=json"),
            "{}",
            c.message
        );
        let (reason, _) = warning_transition(None, &hpa, SCALE_CONFLICT).expect("a Warning event");
        assert_eq!(reason, reasons::SCALE_WRITTEN_BY_OTHER);
        assert!(
            warning_transition(Some(&hpa), &hpa, SCALE_CONFLICT).is_none(),
            "once"
        );

        // Not recorded (this API server, kubernetes#131892): desired set, no owner. The HPAs
        // that target the app name the writer.
        let unrecorded = scaled_by("", None, true);
        assert!(needs_scale_writers(&unrecorded));
        let named = conflict_of(&unrecorded, &["shop-cpu".to_string()]);
        assert!(condition(&named, SCALE_CONFLICT)
            .expect("set")
            .message
            .starts_with("HorizontalPodAutoscaler shop-cpu writes"));
        let anonymous = conflict_of(&unrecorded, &[]);
        let c = condition(&anonymous, SCALE_CONFLICT).expect("set");
        assert_eq!(c.status, "True");
        assert!(
            c.message.starts_with("a client (kubectl scale"),
            "{}",
            c.message
        );

        // The same writer while autoscaling is off is the way it should be.
        let off = conflict_of(
            &scaled_by("kube-controller-manager", Some("scale"), false),
            &[],
        );
        assert_eq!(
            cond(&off, SCALE_CONFLICT),
            ("False".into(), reasons::AUTOSCALING_OFF.into())
        );
        assert!(!needs_scale_writers(&scaled_by("", None, false)));
        // A user's own edit of the spec (not the scale subresource) is no other autoscaler.
        let own = conflict_of(&scaled_by("kubectl-edit", None, true), &[]);
        assert_eq!(
            cond(&own, SCALE_CONFLICT),
            ("False".into(), reasons::AS_EXPECTED.into())
        );
    }

    #[test]
    fn hpas_are_matched_by_their_target() {
        use k8s_openapi::api::autoscaling::v2::{
            CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
        };
        let hpa = |name: &str, kind: &str, target: &str, keda: bool| HorizontalPodAutoscaler {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: keda.then(|| {
                    [("scaledobject.keda.sh/name".to_string(), target.to_string())].into()
                }),
                ..ObjectMeta::default()
            },
            spec: HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("wsgiscale.dev/v1alpha1".into()),
                    kind: kind.into(),
                    name: target.into(),
                },
                max_replicas: 10,
                ..HorizontalPodAutoscalerSpec::default()
            },
            ..HorizontalPodAutoscaler::default()
        };
        let all = [
            hpa("shop-cpu", "WsgiApp", "shop", false),
            hpa("keda-hpa-shop", "WsgiApp", "shop", true),
            hpa("cart", "WsgiApp", "cart", false),
            hpa("shop-dep", "Deployment", "shop", false),
        ];
        assert_eq!(
            compute_hpas_targeting(&all, "shop"),
            ["shop-cpu", "keda-hpa-shop (KEDA ScaledObject shop)"]
        );
    }
}
