//! Why an app's pods are not ready, in the words of the scheduler and the kubelet. Pure: the
//! pods (from the operator's pod watch) in, the first reason out.
//!
//! A Deployment only counts unready pods; its `ProgressDeadlineExceeded` comes ten minutes
//! later and names a ReplicaSet. The pods themselves say why: their `PodScheduled` condition
//! (Unschedulable, with the scheduler's message), their containers' waiting reasons
//! (ImagePullBackOff with the image, CrashLoopBackOff with the last termination message, a
//! config error), a container the kubelet restarted before it passed its startup probe.
//! [`compute_pod_issue`] picks the most telling reason among the pods of the current spec and
//! says how many pods share it.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// The first reason the app's pods are not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIssue {
    /// CamelCase, as Kubernetes says it: `Unschedulable`, `ImagePullBackOff`,
    /// `CrashLoopBackOff`, `StartupProbeFailed`, `CreateContainerConfigError`...
    pub reason: String,
    /// How many pods, and why, in the scheduler's or the kubelet's words.
    pub message: String,
    /// A human must act (a wrong image, a crashing app, a missing Secret); not so for pods
    /// that are being scheduled, created or started, nor for Unschedulable, which a cluster
    /// autoscaler may resolve (it becomes the rollout's deadline reason if it does not).
    pub needs_attention: bool,
}

/// One pod's reason, ranked: the lower the rank, the more it tells.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    rank: u8,
    reason: String,
    message: String,
    needs_attention: bool,
}

/// Kubelet waiting reasons that need a human, and their rank.
const STUCK_WAITING: [(&str, u8); 10] = [
    ("ErrImagePull", 0),
    ("ImagePullBackOff", 0),
    ("InvalidImageName", 0),
    ("ErrImageNeverPull", 0),
    ("CreateContainerConfigError", 1),
    ("CreateContainerError", 1),
    ("RunContainerError", 1),
    ("PreCreateHookError", 1),
    ("PostStartHookError", 1),
    ("CrashLoopBackOff", 2),
];

/// The label the Deployment controller puts on the pods of each ReplicaSet.
const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// Longest piece of a termination message quoted.
const QUOTE_MAX: usize = 300;

/// The first reason the pods of the current spec are not ready, or None when every one of
/// them is (or there are none). The current spec's pods are those of the newest pod's
/// ReplicaSet (its `pod-template-hash`); pods being deleted and finished pods are left out.
pub fn compute_pod_issue<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Option<PodIssue> {
    let live: Vec<&Pod> = pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| phase(p) != "Succeeded")
        .collect();
    let newest = live
        .iter()
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
    let hash = template_hash(newest).map(str::to_string);
    let current: Vec<&Pod> = live
        .into_iter()
        .filter(|p| hash.is_none() || template_hash(p) == hash.as_deref())
        .collect();
    let findings: Vec<Finding> = current
        .iter()
        .filter(|p| !is_ready(p))
        .map(|p| pod_finding(p))
        .collect();
    let first = findings.iter().min_by_key(|f| f.rank)?;
    let same = findings.iter().filter(|f| f.reason == first.reason).count();
    Some(PodIssue {
        reason: first.reason.clone(),
        message: format!(
            "{same} of {} pods of the current spec: {}",
            current.len(),
            first.message
        ),
        needs_attention: first.needs_attention,
    })
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn template_hash(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(TEMPLATE_HASH_LABEL))
        .map(String::as_str)
}

fn condition<'a>(p: &'a Pod, type_: &str) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn is_ready(p: &Pod) -> bool {
    condition(p, "Ready").is_some_and(|c| c.status == "True")
}

/// The tail of a termination message (Python puts the exception last), on one line.
fn quote(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let mut out = String::new();
    for line in lines.iter().rev() {
        let next = if out.is_empty() {
            line.trim().to_string()
        } else {
            format!("{} | {out}", line.trim())
        };
        if next.chars().count() > QUOTE_MAX {
            break;
        }
        out = next;
    }
    if out.is_empty() {
        // One line longer than the limit: its end.
        let line = lines.last().map(|l| l.trim()).unwrap_or_default();
        let skip = line.chars().count().saturating_sub(QUOTE_MAX);
        out = format!("...{}", line.chars().skip(skip).collect::<String>());
    }
    out
}

/// How a container last ended: `exit code 1 (Error): <message>`.
fn last_exit(cs: &ContainerStatus) -> Option<String> {
    let t = cs.last_state.as_ref()?.terminated.as_ref()?;
    let mut s = format!("exit code {}", t.exit_code);
    if let Some(r) = &t.reason {
        s.push_str(&format!(" ({r})"));
    }
    if let Some(m) = t.message.as_deref().filter(|m| !m.trim().is_empty()) {
        s.push_str(&format!(": {}", quote(m)));
    }
    Some(s)
}

fn container_finding(cs: &ContainerStatus, init: bool) -> Option<Finding> {
    let what = if init {
        format!("init container {}", cs.name)
    } else {
        format!("container {}", cs.name)
    };
    let state = cs.state.as_ref();
    if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
        let reason = w.reason.clone().unwrap_or_default();
        if let Some((_, rank)) = STUCK_WAITING.iter().find(|(r, _)| *r == reason) {
            let detail = w.message.clone().unwrap_or_default();
            let message = match reason.as_str() {
                "CrashLoopBackOff" => match last_exit(cs) {
                    Some(exit) => format!("{what} keeps exiting, last with {exit}"),
                    None => format!("{what} keeps exiting"),
                },
                r if r.contains("Image") => {
                    format!("{what} cannot pull image {}: {}", cs.image, detail)
                }
                _ => format!("{what}: {detail}"),
            };
            return Some(Finding {
                rank: *rank,
                reason,
                message: message.trim_end_matches([':', ' ']).to_string(),
                needs_attention: true,
            });
        }
        return Some(Finding {
            rank: 7,
            reason: if reason.is_empty() {
                "ContainerCreating".into()
            } else {
                reason
            },
            message: format!("{what} is waiting to start"),
            needs_attention: false,
        });
    }
    if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        if t.exit_code != 0 {
            let mut message = format!("{what} ended with exit code {}", t.exit_code);
            if let Some(m) = t.message.as_deref().filter(|m| !m.trim().is_empty()) {
                message.push_str(&format!(": {}", quote(m)));
            }
            return Some(Finding {
                rank: 4,
                reason: t.reason.clone().unwrap_or_else(|| "Error".into()),
                message,
                needs_attention: true,
            });
        }
        return None;
    }
    if state.and_then(|s| s.running.as_ref()).is_some() {
        if cs.started == Some(false) {
            if cs.restart_count > 0 {
                let mut message = format!(
                    "{what} was restarted before it passed its startup probe (raise spec.probes.startupTimeoutSeconds if the app imports that slowly)"
                );
                if let Some(exit) = last_exit(cs) {
                    message.push_str(&format!("; it ended with {exit}"));
                }
                return Some(Finding {
                    rank: 3,
                    reason: "StartupProbeFailed".into(),
                    message,
                    needs_attention: true,
                });
            }
            return Some(Finding {
                rank: 6,
                reason: "Starting".into(),
                message: format!(
                    "{what} is starting: its startup probe has not passed yet (the app imports)"
                ),
                needs_attention: false,
            });
        }
        if !cs.ready && !init {
            return Some(Finding {
                rank: 5,
                reason: "NotReady".into(),
                message: format!("{what} runs but fails its readiness probe"),
                needs_attention: false,
            });
        }
    }
    None
}

fn pod_finding(p: &Pod) -> Finding {
    let status = p.status.clone().unwrap_or_default();
    if status.phase.as_deref() == Some("Failed") {
        return Finding {
            rank: 1,
            reason: status.reason.unwrap_or_else(|| "Failed".into()),
            message: format!(
                "pod {} failed: {}",
                p.metadata.name.as_deref().unwrap_or_default(),
                status.message.unwrap_or_default()
            ),
            needs_attention: true,
        };
    }
    if let Some(c) = condition(p, "PodScheduled").filter(|c| c.status == "False") {
        let reason = c.reason.clone().unwrap_or_else(|| "Unschedulable".into());
        return Finding {
            rank: 3,
            message: match &c.message {
                Some(m) => format!("the scheduler cannot place them: {m}"),
                None => "the scheduler cannot place them".into(),
            },
            reason,
            needs_attention: false,
        };
    }
    let unscheduled = p.spec.as_ref().is_none_or(|s| s.node_name.is_none());
    let init = status.init_container_statuses.iter().flatten();
    let main = status.container_statuses.iter().flatten();
    let found = init
        .filter_map(|cs| container_finding(cs, true))
        .chain(main.filter_map(|cs| container_finding(cs, false)))
        .min_by_key(|f| f.rank);
    match found {
        Some(f) => f,
        None if unscheduled => Finding {
            rank: 8,
            reason: "Pending".into(),
            message: "waiting for the scheduler".into(),
            needs_attention: false,
        },
        None => Finding {
            rank: 8,
            reason: "NotReady".into(),
            message: "not ready yet".into(),
            needs_attention: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        PodCondition, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn pod(name: &str, hash: &str, second: i64, status: PodStatus, node: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(TEMPLATE_HASH_LABEL.to_string(), hash.to_string())].into()),
                creation_timestamp: Some(Time(
                    Timestamp::from_second(1_700_000_000 + second).expect("a time"),
                )),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: node.then(|| "node-1".into()),
                ..PodSpec::default()
            }),
            status: Some(status),
        }
    }

    fn cond(
        type_: &str,
        status: &str,
        reason: Option<&str>,
        message: Option<&str>,
    ) -> PodCondition {
        PodCondition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.map(Into::into),
            message: message.map(Into::into),
            ..PodCondition::default()
        }
    }

    fn ready() -> PodStatus {
        PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![cond("Ready", "True", None, None)]),
            ..PodStatus::default()
        }
    }

    fn unschedulable() -> PodStatus {
        PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![cond(
                "PodScheduled",
                "False",
                Some("Unschedulable"),
                Some("0/3 nodes are available: 3 Insufficient cpu."),
            )]),
            ..PodStatus::default()
        }
    }

    fn with_container(
        state: ContainerState,
        last: Option<ContainerState>,
        started: Option<bool>,
        restarts: i32,
    ) -> PodStatus {
        PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![cond(
                "Ready",
                "False",
                Some("ContainersNotReady"),
                None,
            )]),
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                image: "registry.example.com/shop:2".into(),
                state: Some(state),
                last_state: last,
                started,
                restart_count: restarts,
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }
    }

    fn waiting(reason: &str, message: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some(message.into()),
            }),
            ..ContainerState::default()
        }
    }

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..ContainerState::default()
        }
    }

    fn exited(code: i32, reason: &str, message: &str) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: Some(reason.into()),
                message: Some(message.into()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }
    }

    #[test]
    fn the_first_reason_and_how_many_pods_share_it() {
        let traceback = "Traceback (most recent call last):\n  File \"shop/wsgi.py\", line 3\nModuleNotFoundError: No module named 'shop.settings'\n";
        // (pods, the issue: reason, message, needs attention)
        type Case<'a> = (Vec<Pod>, Option<(&'a str, &'a str, bool)>);
        let cases: Vec<Case> = vec![
            (vec![], None),
            (vec![pod("a", "h1", 1, ready(), true)], None),
            (
                vec![pod("a", "h1", 1, unschedulable(), false), pod("b", "h1", 2, unschedulable(), false)],
                Some(("Unschedulable", "2 of 2 pods of the current spec: the scheduler cannot place them: 0/3 nodes are available: 3 Insufficient cpu.", false)),
            ),
            (
                vec![pod("a", "h1", 1, with_container(waiting("ImagePullBackOff", "Back-off pulling image \"registry.example.com/shop:2\""), None, Some(false), 0), true)],
                Some(("ImagePullBackOff", "1 of 1 pods of the current spec: container app cannot pull image registry.example.com/shop:2: Back-off pulling image \"registry.example.com/shop:2\"", true)),
            ),
            (
                vec![pod("a", "h1", 1, with_container(waiting("CrashLoopBackOff", "back-off 40s"), Some(exited(1, "Error", traceback)), Some(false), 3), true)],
                Some(("CrashLoopBackOff", "1 of 1 pods of the current spec: container app keeps exiting, last with exit code 1 (Error): Traceback (most recent call last): | File \"shop/wsgi.py\", line 3 | ModuleNotFoundError: No module named 'shop.settings'", true)),
            ),
            (
                vec![pod("a", "h1", 1, with_container(running(), Some(exited(0, "Completed", "")), Some(false), 1), true)],
                Some(("StartupProbeFailed", "1 of 1 pods of the current spec: container app was restarted before it passed its startup probe (raise spec.probes.startupTimeoutSeconds if the app imports that slowly); it ended with exit code 0 (Completed)", true)),
            ),
            (
                vec![pod("a", "h1", 1, with_container(running(), None, Some(false), 0), true)],
                Some(("Starting", "1 of 1 pods of the current spec: container app is starting: its startup probe has not passed yet (the app imports)", false)),
            ),
            (
                vec![pod("a", "h1", 1, with_container(waiting("CreateContainerConfigError", "secret \"db\" not found"), None, None, 0), true)],
                Some(("CreateContainerConfigError", "1 of 1 pods of the current spec: container app: secret \"db\" not found", true)),
            ),
            // The most telling reason wins over the more frequent one.
            (
                vec![
                    pod("a", "h1", 1, unschedulable(), false),
                    pod("b", "h1", 2, unschedulable(), false),
                    pod("c", "h1", 3, with_container(waiting("ErrImagePull", "not found"), None, None, 0), true),
                ],
                Some(("ErrImagePull", "1 of 3 pods of the current spec: container app cannot pull image registry.example.com/shop:2: not found", true)),
            ),
            // Only the newest ReplicaSet's pods: an old pod's crash is history.
            (
                vec![
                    pod("old", "h0", 1, with_container(waiting("CrashLoopBackOff", ""), None, None, 9), true),
                    pod("new", "h1", 5, PodStatus { phase: Some("Pending".into()), ..PodStatus::default() }, false),
                ],
                Some(("Pending", "1 of 1 pods of the current spec: waiting for the scheduler", false)),
            ),
            (
                vec![pod("a", "h1", 1, PodStatus { phase: Some("Failed".into()), reason: Some("Evicted".into()), message: Some("The node was low on resource: memory.".into()), ..PodStatus::default() }, true)],
                Some(("Evicted", "1 of 1 pods of the current spec: pod a failed: The node was low on resource: memory.", true)),
            ),
        ];
        for (pods, want) in cases {
            let got = compute_pod_issue(&pods);
            let got = got
                .as_ref()
                .map(|i| (i.reason.as_str(), i.message.as_str(), i.needs_attention));
            assert_eq!(
                got,
                want,
                "{:?}",
                pods.iter().map(|p| &p.metadata.name).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn an_init_container_is_named_and_pods_being_deleted_are_not_counted() {
        let mut status = with_container(waiting("PodInitializing", ""), None, None, 0);
        status.init_container_statuses = Some(vec![ContainerStatus {
            name: "migrate".into(),
            image: "shop:2".into(),
            state: Some(waiting("CrashLoopBackOff", "")),
            last_state: Some(exited(
                2,
                "Error",
                "django.db.utils.OperationalError: could not connect",
            )),
            ..ContainerStatus::default()
        }]);
        let mut leaving = pod("b", "h1", 2, unschedulable(), false);
        leaving.metadata.deletion_timestamp = leaving.metadata.creation_timestamp.clone();
        let issue =
            compute_pod_issue(&[pod("a", "h1", 1, status, true), leaving]).expect("an issue");
        assert_eq!(issue.reason, "CrashLoopBackOff");
        assert_eq!(
            issue.message,
            "1 of 1 pods of the current spec: init container migrate keeps exiting, last with exit code 2 (Error): django.db.utils.OperationalError: could not connect"
        );
    }

    #[test]
    fn long_termination_messages_keep_their_end() {
        let long = format!("{}\nValueError: bad", "x".repeat(1000));
        assert_eq!(quote(&long), "ValueError: bad");
        let one = "y".repeat(1000);
        let q = quote(&one);
        assert!(
            q.starts_with("...") && q.chars().count() == QUOTE_MAX + 3,
            "{q}"
        );
        assert_eq!(quote("a\n\nb\n"), "a | b");
    }
}
