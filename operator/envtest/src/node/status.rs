//! The Pod status a kubelet would report, rendered from what the stand-in knows of the pod
//! (pure): phase, conditions with their transition times, the pod's address and each
//! container's state, restarts and last termination.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// A container's state.
#[derive(Debug, Clone, PartialEq)]
pub enum CState {
    /// Not running: `ContainerCreating`, `ErrImagePull`, `CrashLoopBackOff`, `PodInitializing`.
    Waiting {
        /// Reason.
        reason: String,
        /// Message (may be empty).
        message: String,
    },
    /// Running since (RFC 3339).
    Running {
        /// Start time.
        started_at: String,
    },
    /// Exited.
    Terminated(Terminated),
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    /// Exit code (128 + signal for a signal).
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`.
    pub reason: String,
    /// The termination message.
    pub message: String,
    /// Start (RFC 3339).
    pub started_at: String,
    /// End (RFC 3339).
    pub finished_at: String,
}

/// One container as the stand-in knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerStatus {
    /// Name.
    pub name: String,
    /// Image.
    pub image: String,
    /// State now.
    pub state: CState,
    /// The previous run's end.
    pub last: Option<Terminated>,
    /// Restarts.
    pub restarts: i32,
    /// Readiness (its readiness probe passes, or it has none and runs).
    pub ready: bool,
    /// Its startup probe passed (or it has none) and it runs.
    pub started: bool,
}

/// The pod as the stand-in knows it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodState {
    /// The pod's address, once its network exists.
    pub pod_ip: Option<String>,
    /// The node's address.
    pub host_ip: String,
    /// When the kubelet took the pod (RFC 3339).
    pub start_time: String,
    /// Init containers, in order.
    pub init: Vec<ContainerStatus>,
    /// App containers.
    pub containers: Vec<ContainerStatus>,
    /// Every init container (but sidecars) completed, sidecars started.
    pub initialized: bool,
}

/// The last transition time of each condition, kept between renders so that it moves only
/// when the condition's status does.
#[derive(Debug, Clone, Default)]
pub struct Transitions(BTreeMap<&'static str, (bool, String)>);

impl Transitions {
    fn at(&mut self, kind: &'static str, status: bool, now: &str) -> String {
        let e = self.0.entry(kind).or_insert((status, now.to_string()));
        if e.0 != status {
            *e = (status, now.to_string());
        }
        e.1.clone()
    }

    /// When `kind` last changed to its current status.
    pub fn get(&self, kind: &str) -> Option<&(bool, String)> {
        self.0.get(kind)
    }
}

fn container_json(c: &ContainerStatus) -> Value {
    let state = |s: &CState| match s {
        CState::Waiting { reason, message } if message.is_empty() => {
            json!({"waiting": {"reason": reason}})
        }
        CState::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": message}})
        }
        CState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        CState::Terminated(t) => terminated_json(t),
    };
    let mut v = json!({
        "name": c.name,
        "image": c.image,
        "imageID": format!("stand-in://{}", c.image),
        "ready": c.ready,
        "started": c.started,
        "restartCount": c.restarts,
        "state": state(&c.state),
    });
    if let Some(t) = &c.last {
        v["lastState"] = terminated_json(t);
    }
    v
}

fn terminated_json(t: &Terminated) -> Value {
    let mut inner = json!({
        "exitCode": t.exit_code,
        "reason": t.reason,
        "startedAt": t.started_at,
        "finishedAt": t.finished_at,
    });
    if !t.message.is_empty() {
        inner["message"] = json!(t.message);
    }
    json!({"terminated": inner})
}

/// The pod's phase: Running once a container runs (or a sidecar), Pending before.
pub fn phase(p: &PodState) -> &'static str {
    let running = |c: &ContainerStatus| matches!(c.state, CState::Running { .. });
    let restarted = |c: &ContainerStatus| c.restarts > 0 || c.last.is_some();
    if p.initialized && p.containers.iter().any(|c| running(c) || restarted(c)) {
        "Running"
    } else {
        "Pending"
    }
}

/// Whether every app container is ready.
pub fn ready(p: &PodState) -> bool {
    p.initialized && !p.containers.is_empty() && p.containers.iter().all(|c| c.ready)
}

/// The `status` object (for a merge patch: lists are replaced whole).
pub fn render(p: &PodState, transitions: &mut Transitions, now: &str) -> Value {
    let is_ready = ready(p);
    let cond = |t: &mut Transitions, kind: &'static str, status: bool| {
        json!({
            "type": kind,
            "status": if status { "True" } else { "False" },
            "lastTransitionTime": t.at(kind, status, now),
        })
    };
    let mut status = json!({
        "phase": phase(p),
        "hostIP": p.host_ip,
        "hostIPs": [{"ip": p.host_ip}],
        "startTime": p.start_time,
        "conditions": [
            cond(transitions, "PodScheduled", true),
            cond(transitions, "Initialized", p.initialized),
            cond(transitions, "ContainersReady", is_ready),
            cond(transitions, "Ready", is_ready),
        ],
        "containerStatuses": p.containers.iter().map(container_json).collect::<Vec<_>>(),
    });
    if !p.init.is_empty() {
        status["initContainerStatuses"] = p.init.iter().map(container_json).collect();
    }
    if let Some(ip) = &p.pod_ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    status
}

/// Whether the API server's copy of a pod's status (`theirs`) has every condition of a
/// rendered status (`ours`) with the same status: what the kubelet's status manager checks
/// before it puts its own view back.
pub fn conditions_agree(
    ours: &Value,
    theirs: Option<&k8s_openapi::api::core::v1::PodStatus>,
) -> bool {
    let theirs: std::collections::BTreeMap<&str, &str> = theirs
        .and_then(|s| s.conditions.as_ref())
        .map(|c| {
            c.iter()
                .map(|c| (c.type_.as_str(), c.status.as_str()))
                .collect()
        })
        .unwrap_or_default();
    ours["conditions"].as_array().is_none_or(|c| {
        c.iter()
            .all(|c| match (c["type"].as_str(), c["status"].as_str()) {
                (Some(t), Some(s)) => theirs.get(t) == Some(&s),
                _ => true,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(state: CState, ready: bool) -> ContainerStatus {
        ContainerStatus {
            name: "app".into(),
            image: "img".into(),
            state,
            last: None,
            restarts: 0,
            ready,
            started: ready,
        }
    }

    #[test]
    fn ready_pods_say_so_and_transitions_move_only_on_change() {
        let mut t = Transitions::default();
        let mut p = PodState {
            pod_ip: Some("198.18.1.2".into()),
            host_ip: "198.18.1.1".into(),
            start_time: "T0".into(),
            init: vec![],
            containers: vec![c(
                CState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                },
                false,
            )],
            initialized: true,
        };
        let s = render(&p, &mut t, "T1");
        assert_eq!(s["phase"], "Pending");
        assert_eq!(s["conditions"][3]["status"], "False");
        assert_eq!(s["podIP"], "198.18.1.2");
        p.containers[0] = c(
            CState::Running {
                started_at: "T2".into(),
            },
            false,
        );
        let s = render(&p, &mut t, "T2");
        assert_eq!(s["phase"], "Running");
        assert_eq!(
            s["conditions"][3]["lastTransitionTime"], "T1",
            "still not ready"
        );
        p.containers[0].ready = true;
        let s = render(&p, &mut t, "T3");
        assert_eq!(s["conditions"][3]["status"], "True");
        assert_eq!(s["conditions"][3]["lastTransitionTime"], "T3");
        assert_eq!(
            s["containerStatuses"][0]["state"]["running"]["startedAt"],
            "T2"
        );
    }

    #[test]
    fn a_crash_loop_shows_the_last_termination() {
        let mut t = Transitions::default();
        let mut cs = c(
            CState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: "back-off 10s restarting failed container".into(),
            },
            false,
        );
        cs.restarts = 1;
        cs.last = Some(Terminated {
            exit_code: 1,
            reason: "Error".into(),
            message: "ImportError: no module named app".into(),
            started_at: "T0".into(),
            finished_at: "T1".into(),
        });
        let p = PodState {
            containers: vec![cs],
            initialized: true,
            ..PodState::default()
        };
        let s = render(&p, &mut t, "T2");
        assert_eq!(
            s["phase"], "Running",
            "a restarted container makes the pod Running"
        );
        assert_eq!(
            s["containerStatuses"][0]["lastState"]["terminated"]["message"],
            "ImportError: no module named app"
        );
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"]["reason"],
            "CrashLoopBackOff"
        );
    }

    #[test]
    fn a_pod_marked_not_ready_by_someone_else_disagrees() {
        let ours = serde_json::json!({"conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
        ]});
        let theirs = |ready: &str| -> k8s_openapi::api::core::v1::PodStatus {
            serde_json::from_value(serde_json::json!({"conditions": [
                {"type": "Ready", "status": ready},
                {"type": "ContainersReady", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
            ]}))
            .expect("a status")
        };
        assert!(conditions_agree(&ours, Some(&theirs("True"))));
        assert!(!conditions_agree(&ours, Some(&theirs("False"))));
        assert!(!conditions_agree(&ours, None));
        assert!(conditions_agree(&serde_json::json!({}), None));
    }
}
