//! `spec.podOverrides`: a PodTemplateSpec merged over the pod template the operator renders,
//! last. Pure: [`validate_pod_overrides`] reads it and refuses what it must not touch,
//! [`merge_pod_template`] merges it.
//!
//! The merge is k8s-openapi's [`DeepMerge`], which follows the list types of the Kubernetes
//! API (`x-kubernetes-list-type` and `x-kubernetes-list-map-keys`, the markers server-side
//! apply merges by): objects and maps field by field, `containers`, `initContainers`,
//! `volumes`, `env` and `imagePullSecrets` by name, `ports` by `containerPort` and `protocol`,
//! `volumeMounts` by `mountPath`, atomic lists (`args`, `tolerations`...) and atomic maps
//! (`nodeSelector`) replaced whole. It is what Stackable's operators do with their
//! `podOverrides`, and what the API server itself computes when two managers apply to one pod
//! template (a test checks that against a real API server). A field cannot be removed through
//! it: `null` is refused rather than read as "keep".
//!
//! What stays the operator's, and why (each refused with the field and the reason):
//!
//! | override of | refused because |
//! |---|---|
//! | `app`'s `image`, `command`, `args` | the WsgiApp's `image`, `command` and server settings render them; the server's command line is the operator's contract with the server |
//! | `app`'s ports at `port`/`adminPort` or named `http`/`admin` (any container's, for the numbers) | the Service, the probes and the autoscaler's scrapes reach the server through them |
//! | probe handlers (`httpGet`, `exec`, `tcpSocket`, `grpc`) of `app` | `/healthz` and `/readyz` are what the server answers; the timing is free |
//! | `app`'s `lifecycle.preStop` | `lifecycle.preStopDelaySeconds`, part of the shutdown budget |
//! | mounts at /etc/wsgiscale, /tmp, /wsgiscale in `app`; containers, init containers and volumes named `wsgiscale-*` | the server's config, its writable /tmp and the injected package |
//! | `WSGISCALE_*` variables in `app` | they override the WsgiApp's settings |
//! | `wsgiscale.dev/*` pod labels | `wsgiscale.dev/app` selects the pods |
//! | `terminationGracePeriodSeconds` | derived from `lifecycle.gracefulTimeoutSeconds` so the drain fits in it |
//!
//! Everything else merges: resources, security contexts (of `app` too), env and mounts of
//! `app`, probe timing, any pod field.

use k8s_openapi::api::core::v1::{Container, PodTemplateSpec, Probe};
use k8s_openapi::DeepMerge;
use serde_json::Value;

use super::FieldError;
use crate::layout::{
    ADMIN_PORT_NAME, CONFIG_DIR, CONTAINER_NAME, HTTP_PORT_NAME, INJECT_DIR, RESERVED_LABEL_PREFIX,
    RESERVED_VOLUME_PREFIX, TMP_DIR,
};

/// The field the overrides come from, as errors name it.
pub const FIELD: &str = "spec.podOverrides";

/// What the overrides must leave alone: the server's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owned {
    /// The HTTP container port.
    pub port: i32,
    /// The admin container port.
    pub admin_port: i32,
}

/// Reads `value` as a PodTemplateSpec and checks it: every field known to the pod API, no
/// `null`, nothing the operator owns (see the module's table). All problems at once, each
/// with its field.
pub fn validate_pod_overrides(
    value: &Value,
    owned: Owned,
) -> Result<PodTemplateSpec, Vec<FieldError>> {
    let mut errs = Vec::new();
    if !value.is_object() {
        errs.push(err(FIELD, "must be an object: a PodTemplateSpec"));
        return Err(errs);
    }
    find_nulls(value, FIELD, &mut errs);
    let template: PodTemplateSpec = match serde_json::from_value(value.clone()) {
        Ok(t) => t,
        Err(e) => {
            errs.push(err(FIELD, format!("is not a PodTemplateSpec: {e}")));
            return Err(errs);
        }
    };
    let back = serde_json::to_value(&template).expect("k8s objects serialize to JSON");
    find_unknown(value, &back, FIELD, &mut errs);
    check_owned(&template, owned, &mut errs);
    if errs.is_empty() {
        Ok(template)
    } else {
        Err(errs)
    }
}

/// `rendered` with `overrides` merged over it.
pub fn merge_pod_template(
    mut rendered: PodTemplateSpec,
    overrides: Option<&PodTemplateSpec>,
) -> PodTemplateSpec {
    if let Some(o) = overrides {
        rendered.merge_from(o.clone());
    }
    rendered
}

fn err(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn find_nulls(value: &Value, path: &str, errs: &mut Vec<FieldError>) {
    match value {
        Value::Null => errs.push(err(
            path,
            "null removes nothing here: the overrides merge over the rendered pod; leave the field out",
        )),
        Value::Object(map) => {
            for (k, v) in map {
                find_nulls(v, &format!("{path}.{k}"), errs);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                find_nulls(v, &format!("{path}[{i}]"), errs);
            }
        }
        _ => {}
    }
}

/// Fields of `input` that reading it as a PodTemplateSpec dropped (`back` is that read,
/// written out again): not fields of the Kubernetes pod API this operator knows.
fn find_unknown(input: &Value, back: &Value, path: &str, errs: &mut Vec<FieldError>) {
    match (input, back) {
        (Value::Object(i), Value::Object(b)) => {
            for (k, v) in i {
                let here = format!("{path}.{k}");
                match b.get(k) {
                    Some(bv) => find_unknown(v, bv, &here, errs),
                    // Nulls are reported on their own.
                    None if v.is_null() => {}
                    None => errs.push(err(
                        &here,
                        "is not a field of the Kubernetes pod template (misspelt, or newer than Kubernetes 1.37)",
                    )),
                }
            }
        }
        (Value::Array(i), Value::Array(b)) => {
            for (n, (iv, bv)) in i.iter().zip(b).enumerate() {
                find_unknown(iv, bv, &format!("{path}[{n}]"), errs);
            }
        }
        _ => {}
    }
}

fn check_owned(t: &PodTemplateSpec, owned: Owned, errs: &mut Vec<FieldError>) {
    let labels = t.metadata.as_ref().and_then(|m| m.labels.as_ref());
    for key in labels.into_iter().flat_map(|l| l.keys()) {
        if key.starts_with(RESERVED_LABEL_PREFIX) {
            errs.push(err(
                &format!("{FIELD}.metadata.labels.{key}"),
                "wsgiscale.dev/ labels are the operator's: wsgiscale.dev/app selects the pods",
            ));
        }
    }
    let Some(spec) = &t.spec else {
        return;
    };
    let at = |rest: &str| format!("{FIELD}.spec.{rest}");
    if spec.termination_grace_period_seconds.is_some() {
        errs.push(err(
            &at("terminationGracePeriodSeconds"),
            "is derived from lifecycle.gracefulTimeoutSeconds (and preStopDelaySeconds) so the drain fits in it: set those",
        ));
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if v.name.starts_with(RESERVED_VOLUME_PREFIX) {
            errs.push(err(
                &at(&format!("volumes[{i}].name")),
                format!("volume names starting with {RESERVED_VOLUME_PREFIX} are the operator's"),
            ));
        }
    }
    for (i, c) in spec.containers.iter().enumerate() {
        let here = at(&format!("containers[{i}]"));
        if c.name == CONTAINER_NAME {
            check_app_container(c, owned, &here, errs);
        } else {
            check_added_container(c, owned, &here, errs);
        }
    }
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        check_added_container(c, owned, &at(&format!("initContainers[{i}]")), errs);
    }
}

/// A container the overrides add (a sidecar, an init container): named, not reserved, with
/// an image, and off the server's ports.
fn check_added_container(c: &Container, owned: Owned, here: &str, errs: &mut Vec<FieldError>) {
    if c.name.is_empty() {
        errs.push(err(
            &format!("{here}.name"),
            "is required: containers merge by name",
        ));
    } else if c.name.starts_with(RESERVED_VOLUME_PREFIX) {
        errs.push(err(
            &format!("{here}.name"),
            format!("container names starting with {RESERVED_VOLUME_PREFIX} are the operator's"),
        ));
    }
    if c.image.as_deref().is_none_or(str::is_empty) {
        errs.push(err(
            &format!("{here}.image"),
            "is required: the container is added to the pod (only the server's container, app, is rendered)",
        ));
    }
    for (i, p) in c.ports.iter().flatten().enumerate() {
        if p.container_port == owned.port || p.container_port == owned.admin_port {
            errs.push(err(
                &format!("{here}.ports[{i}].containerPort"),
                format!(
                    "{} is the server's (spec.port {}, spec.adminPort {}): the pod's containers share one network",
                    p.container_port, owned.port, owned.admin_port
                ),
            ));
        }
    }
}

/// The server's own container: only what the module's table leaves free.
fn check_app_container(c: &Container, owned: Owned, here: &str, errs: &mut Vec<FieldError>) {
    let mut refuse = |field: &str, why: &str| errs.push(err(&format!("{here}.{field}"), why));
    if c.image.is_some() {
        refuse("image", "is spec.image: set it there");
    }
    if c.command.is_some() {
        refuse(
            "command",
            "is spec.command (or spec.inject): the operator runs the server",
        );
    }
    if c.args.is_some() {
        refuse(
            "args",
            "is the server's command line, rendered from the WsgiApp's fields (app, workers, http, logging...): set those",
        );
    }
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let ours = p.container_port == owned.port
            || p.container_port == owned.admin_port
            || matches!(p.name.as_deref(), Some(HTTP_PORT_NAME | ADMIN_PORT_NAME));
        if ours {
            refuse(
                &format!("ports[{i}]"),
                "the http and admin ports are spec.port and spec.adminPort: the Service, the probes and the autoscaler use them",
            );
        }
    }
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        if [CONFIG_DIR, TMP_DIR, INJECT_DIR].contains(&m.mount_path.as_str())
            || m.name.starts_with(RESERVED_VOLUME_PREFIX)
        {
            refuse(
                &format!("volumeMounts[{i}]"),
                "/etc/wsgiscale, /tmp, /wsgiscale and the wsgiscale-* volumes are mounted by the operator",
            );
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        if e.name.starts_with("WSGISCALE_") {
            refuse(
                &format!("env[{i}].name"),
                "WSGISCALE_* variables would override the WsgiApp's fields: set the fields",
            );
        }
    }
    for (name, probe) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        if probe.as_ref().is_some_and(has_handler) {
            refuse(
                name,
                "the server answers /healthz and /readyz on the admin port: override the timing (periodSeconds, timeoutSeconds, failureThreshold...) only, or use spec.probes",
            );
        }
    }
    if c.lifecycle.as_ref().is_some_and(|l| l.pre_stop.is_some()) {
        refuse(
            "lifecycle.preStop",
            "is lifecycle.preStopDelaySeconds, part of the shutdown budget: set that",
        );
    }
}

fn has_handler(p: &Probe) -> bool {
    p.http_get.is_some() || p.exec.is_some() || p.tcp_socket.is_some() || p.grpc.is_some()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerPort, EnvVar, PodSpec, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const OWNED: Owned = Owned {
        port: 8000,
        admin_port: 9191,
    };

    fn fields(v: Value) -> Vec<String> {
        match validate_pod_overrides(&v, OWNED) {
            Err(errs) => errs.into_iter().map(|e| e.field).collect(),
            Ok(t) => panic!("accepted: {t:?}"),
        }
    }

    #[test]
    fn what_real_pods_carry_is_accepted() {
        let v = json!({
            "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}, "labels": {"team": "web"}},
            "spec": {
                "initContainers": [
                    {"name": "migrate", "image": "shop:1", "command": ["python", "manage.py", "migrate"],
                     "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false}},
                    {"name": "cloud-sql-proxy", "image": "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2",
                     "restartPolicy": "Always", "args": ["--port=5432", "project:region:db"],
                     "ports": [{"containerPort": 5432}]},
                ],
                "containers": [
                    {"name": "app",
                     "livenessProbe": {"periodSeconds": 20, "failureThreshold": 6},
                     "startupProbe": {"failureThreshold": 300},
                     "env": [{"name": "DJANGO_SETTINGS_MODULE", "value": "shop.settings"}],
                     "volumeMounts": [{"name": "media", "mountPath": "/srv/media"}],
                     "resources": {"limits": {"cpu": "2"}},
                     "securityContext": {"readOnlyRootFilesystem": false}},
                    {"name": "log-shipper", "image": "fluent/fluent-bit:3", "volumeMounts": [{"name": "media", "mountPath": "/logs"}]},
                ],
                "volumes": [{"name": "media", "emptyDir": {}}],
                "dnsPolicy": "ClusterFirst",
                "shareProcessNamespace": true,
            },
        });
        let t = validate_pod_overrides(&v, OWNED).expect("valid");
        let spec = t.spec.expect("spec");
        assert_eq!(spec.init_containers.expect("init").len(), 2);
        assert_eq!(spec.share_process_namespace, Some(true));
    }

    #[test]
    fn what_the_operator_owns_is_refused_by_field() {
        let cases = [
            (
                json!({"spec": {"containers": [{"name": "app", "image": "x"}]}}),
                "spec.podOverrides.spec.containers[0].image",
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "args": ["serve"]}]}}),
                "spec.podOverrides.spec.containers[0].args",
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "command": ["sh"]}]}}),
                "spec.podOverrides.spec.containers[0].command",
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8000, "name": "web"}]}]}}),
                "spec.podOverrides.spec.containers[0].ports[0]",
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "volumeMounts": [{"name": "x", "mountPath": "/tmp"}]}]}}),
                "spec.podOverrides.spec.containers[0].volumeMounts[0]",
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "env": [{"name": "WSGISCALE_WORKERS", "value": "9"}]}]}}),
                "spec.podOverrides.spec.containers[0].env[0].name",
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "readinessProbe": {"exec": {"command": ["true"]}}}]}}),
                "spec.podOverrides.spec.containers[0].readinessProbe",
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "lifecycle": {"preStop": {"sleep": {"seconds": 1}}}}]}}),
                "spec.podOverrides.spec.containers[0].lifecycle.preStop",
            ),
            (
                json!({"spec": {"containers": [{"name": "proxy"}]}}),
                "spec.podOverrides.spec.containers[0].image",
            ),
            (
                json!({"spec": {"containers": [{"name": "proxy", "image": "p", "ports": [{"containerPort": 9191}]}]}}),
                "spec.podOverrides.spec.containers[0].ports[0].containerPort",
            ),
            (
                json!({"spec": {"initContainers": [{"name": "wsgiscale-inject", "image": "x"}]}}),
                "spec.podOverrides.spec.initContainers[0].name",
            ),
            (
                json!({"spec": {"initContainers": [{"image": "x"}]}}),
                "spec.podOverrides.spec.initContainers[0].name",
            ),
            (
                json!({"spec": {"volumes": [{"name": "wsgiscale-config", "emptyDir": {}}]}}),
                "spec.podOverrides.spec.volumes[0].name",
            ),
            (
                json!({"spec": {"terminationGracePeriodSeconds": 5}}),
                "spec.podOverrides.spec.terminationGracePeriodSeconds",
            ),
            (
                json!({"metadata": {"labels": {"wsgiscale.dev/app": "other"}}}),
                "spec.podOverrides.metadata.labels.wsgiscale.dev/app",
            ),
            (
                json!({"spec": {"initContainer": [{"name": "m", "image": "x"}]}}),
                "spec.podOverrides.spec.initContainer",
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "resource": {}}]}}),
                "spec.podOverrides.spec.containers[0].resource",
            ),
            (
                json!({"spec": {"nodeSelector": null}}),
                "spec.podOverrides.spec.nodeSelector",
            ),
            (json!([]), "spec.podOverrides"),
            (json!({"spec": {"containers": "app"}}), "spec.podOverrides"),
        ];
        for (v, field) in cases {
            let got = fields(v.clone());
            assert!(
                got.iter().any(|f| f == field),
                "{v}: {field} not in {got:?}"
            );
        }
    }

    #[test]
    fn overrides_win_and_lists_merge_by_their_keys() {
        let rendered = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("wsgiscale.dev/app".to_string(), "shop".to_string())].into()),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("shop:1".into()),
                    env: Some(vec![EnvVar {
                        name: "A".into(),
                        value: Some("1".into()),
                        ..EnvVar::default()
                    }]),
                    liveness_probe: Some(Probe {
                        period_seconds: Some(10),
                        failure_threshold: Some(3),
                        ..Probe::default()
                    }),
                    ..Container::default()
                }],
                volumes: Some(vec![Volume {
                    name: "wsgiscale-tmp".into(),
                    ..Volume::default()
                }]),
                tolerations: Some(vec![Default::default()]),
                ..PodSpec::default()
            }),
        };
        let o = validate_pod_overrides(
            &json!({"metadata": {"labels": {"team": "web"}}, "spec": {
                "containers": [
                    {"name": "app", "env": [{"name": "A", "value": "2"}, {"name": "B", "value": "3"}],
                     "livenessProbe": {"periodSeconds": 30}},
                    {"name": "sidecar", "image": "s:1"},
                ],
                "volumes": [{"name": "data", "emptyDir": {}}],
                "tolerations": [{"key": "k", "operator": "Exists"}],
            }}),
            OWNED,
        )
        .expect("valid");
        let merged = merge_pod_template(rendered, Some(&o));
        let labels = merged.metadata.expect("meta").labels.expect("labels");
        assert_eq!(labels.len(), 2, "{labels:?}");
        let spec = merged.spec.expect("spec");
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["app", "sidecar"]);
        let app = &spec.containers[0];
        assert_eq!(app.image.as_deref(), Some("shop:1"));
        let env: Vec<(&str, Option<&str>)> = app
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(env, [("A", Some("2")), ("B", Some("3"))]);
        let live = app.liveness_probe.as_ref().expect("probe");
        assert_eq!(
            (live.period_seconds, live.failure_threshold),
            (Some(30), Some(3))
        );
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["wsgiscale-tmp", "data"]);
        let tolerations = spec.tolerations.expect("tolerations");
        assert_eq!(tolerations.len(), 1, "atomic: replaced whole");
        assert_eq!(tolerations[0].key.as_deref(), Some("k"));
    }

    fn arb_container(names: &'static [&'static str]) -> impl Strategy<Value = Container> {
        (
            prop::sample::select(names),
            prop::option::of("[a-z]{1,4}:[0-9]"),
            prop::collection::vec(("[A-C]", "[0-9]"), 0..3),
            prop::collection::vec(1i32..5, 0..3),
            prop::option::of(1i32..60),
        )
            .prop_map(|(name, image, mut env, mut ports, period)| {
                env.sort();
                env.dedup_by(|a, b| a.0 == b.0);
                ports.sort_unstable();
                ports.dedup();
                (name, image, env, ports, period)
            })
            .prop_map(|(name, image, env, ports, period)| Container {
                name: name.to_string(),
                image,
                env: (!env.is_empty()).then(|| {
                    env.into_iter()
                        .map(|(n, v)| EnvVar {
                            name: n,
                            value: Some(v),
                            ..EnvVar::default()
                        })
                        .collect()
                }),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .into_iter()
                        .map(|p| ContainerPort {
                            container_port: 10_000 + p,
                            ..ContainerPort::default()
                        })
                        .collect()
                }),
                liveness_probe: period.map(|p| Probe {
                    period_seconds: Some(p),
                    ..Probe::default()
                }),
                ..Container::default()
            })
    }

    fn arb_template() -> impl Strategy<Value = PodTemplateSpec> {
        (
            prop::collection::vec(arb_container(&["app", "a", "b"]), 0..4),
            prop::collection::vec(arb_container(&["i", "j"]), 0..3),
            prop::collection::vec(prop::sample::select(&["v1", "v2", "v3"][..]), 0..3),
        )
            .prop_map(|(containers, init, volumes)| {
                let mut seen = std::collections::BTreeSet::new();
                let containers = containers
                    .into_iter()
                    .filter(|c| seen.insert(c.name.clone()))
                    .collect();
                let mut seen = std::collections::BTreeSet::new();
                let init: Vec<Container> = init
                    .into_iter()
                    .filter(|c| seen.insert(c.name.clone()))
                    .collect();
                let mut seen = std::collections::BTreeSet::new();
                let volumes: Vec<Volume> = volumes
                    .into_iter()
                    .filter(|v| seen.insert(*v))
                    .map(|n| Volume {
                        name: n.to_string(),
                        ..Volume::default()
                    })
                    .collect();
                PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        containers,
                        init_containers: (!init.is_empty()).then_some(init),
                        volumes: (!volumes.is_empty()).then_some(volumes),
                        ..PodSpec::default()
                    }),
                }
            })
    }

    fn keys(t: &PodTemplateSpec) -> (Vec<String>, Vec<String>, Vec<String>) {
        let spec = t.spec.clone().unwrap_or_default();
        (
            spec.containers.iter().map(|c| c.name.clone()).collect(),
            spec.init_containers
                .iter()
                .flatten()
                .map(|c| c.name.clone())
                .collect(),
            spec.volumes
                .iter()
                .flatten()
                .map(|v| v.name.clone())
                .collect(),
        )
    }

    proptest! {
        /// Merging keeps every rendered entry in its place, adds the overrides' new entries
        /// after them, lets every value the overrides set win, and merging the same overrides
        /// again changes nothing.
        #[test]
        fn merge_keeps_ours_adds_theirs_and_is_idempotent(base in arb_template(), over in arb_template()) {
            let merged = merge_pod_template(base.clone(), Some(&over));
            let (bc, bi, bv) = keys(&base);
            let (oc, oi, ov) = keys(&over);
            let (mc, mi, mv) = keys(&merged);
            let union = |b: &[String], o: &[String]| {
                let mut u = b.to_vec();
                u.extend(o.iter().filter(|n| !b.contains(n)).cloned());
                u
            };
            prop_assert_eq!(&mc, &union(&bc, &oc));
            prop_assert_eq!(&mi, &union(&bi, &oi));
            prop_assert_eq!(&mv, &union(&bv, &ov));
            let spec = merged.spec.clone().unwrap_or_default();
            for c in over.spec.iter().flat_map(|s| s.containers.iter()) {
                let m = spec.containers.iter().find(|m| m.name == c.name).expect("merged in");
                if c.image.is_some() { prop_assert_eq!(&m.image, &c.image); }
                for e in c.env.iter().flatten() {
                    let got = m.env.iter().flatten().find(|x| x.name == e.name).expect("env merged in");
                    prop_assert_eq!(&got.value, &e.value);
                }
                for p in c.ports.iter().flatten() {
                    prop_assert!(m.ports.iter().flatten().any(|x| x.container_port == p.container_port));
                }
                if let Some(period) = c.liveness_probe.as_ref().and_then(|p| p.period_seconds) {
                    prop_assert_eq!(m.liveness_probe.as_ref().and_then(|p| p.period_seconds), Some(period));
                }
            }
            // Entries only the rendered template has are untouched.
            for c in base.spec.iter().flat_map(|s| s.containers.iter()) {
                if !oc.contains(&c.name) {
                    prop_assert_eq!(spec.containers.iter().find(|m| m.name == c.name), Some(c));
                }
            }
            prop_assert_eq!(merge_pod_template(merged.clone(), Some(&over)), merged);
            prop_assert_eq!(merge_pod_template(base.clone(), None), base);
        }
    }
}
