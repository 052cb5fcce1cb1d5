//! Whether a child object already is what the operator would apply, so that a steady-state
//! reconcile writes nothing.
//!
//! Two checks, both needed:
//! * the child carries the hash of the desired object the operator last applied
//!   ([`DESIRED_HASH_ANNOTATION`]): when the desired object changes, even by losing a field,
//!   the hash changes and the operator applies (server-side apply then removes what it no
//!   longer sets);
//! * every field the operator sets has that value in the observed object ([`is_subset`]): when
//!   someone else edits a field the operator owns (`kubectl edit`, `kubectl scale` on the
//!   Deployment), the operator applies again and takes it back.
//!
//! The observed object has more than the desired one (defaults, status, fields of other
//! managers) and the API server normalises some values (quantities, omitted zero values); the
//! comparison allows for exactly that.

use json_patch::jsonptr::PointerBuf;
use json_patch::{PatchOperation, ReplaceOperation, TestOperation};
use serde::Serialize;
use serde_json::Value;

use kube::Resource;

/// Annotation carrying the hash of the desired object last applied.
pub const DESIRED_HASH_ANNOTATION: &str = "wsgiscale.dev/desired-hash";

/// FNV-1a, 64 bits: stable across Rust releases and platforms, unlike `DefaultHasher`.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The hash of an object's JSON form, as 16 hex digits.
pub fn compute_hash<K: Serialize>(obj: &K) -> String {
    let text = serde_json::to_string(obj).expect("k8s objects serialize to JSON");
    format!("{:016x}", fnv1a64(text.as_bytes()))
}

/// Stamps `obj` with the hash of itself (computed without the stamp).
pub fn stamp_hash<K: Resource + Serialize>(mut obj: K) -> K {
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove(DESIRED_HASH_ANNOTATION);
    }
    let hash = compute_hash(&obj);
    obj.meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(DESIRED_HASH_ANNOTATION.into(), hash);
    obj
}

/// Whether `observed` carries the hash of the stamped `desired` object: the operator applied
/// this very object last, so a difference in a field is another manager's change.
pub fn hash_matches<K: Resource>(desired: &K, observed: &K) -> bool {
    let hash = |k: &K| {
        k.meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(DESIRED_HASH_ANNOTATION).cloned())
    };
    matches!((hash(desired), hash(observed)), (Some(d), Some(o)) if d == o)
}

/// Whether `observed` already is the stamped `desired` object: same hash, and every field of
/// `desired` present with the same value.
pub fn is_applied<K: Resource + Serialize>(desired: &K, observed: &K) -> bool {
    if !hash_matches(desired, observed) {
        return false;
    }
    let d = serde_json::to_value(desired).expect("k8s objects serialize to JSON");
    let o = serde_json::to_value(observed).expect("k8s objects serialize to JSON");
    is_subset(&d, &o, false)
}

/// A value the API server drops when it serializes (Go's `omitempty`): absent in `observed`
/// means the same.
fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// Keys whose values (or map values) are resource quantities, normalised by the API server
/// (`1024Mi` is stored as `1Gi`, `0.5` as `500m`).
fn holds_quantities(key: &str) -> bool {
    matches!(key, "requests" | "limits" | "sizeLimit")
}

/// Whether every field set in `desired` has the same value in `observed`. Lists must have the
/// same length and match item by item; `quantities` compares strings as quantities.
pub fn is_subset(desired: &Value, observed: &Value, quantities: bool) -> bool {
    match (desired, observed) {
        (Value::Object(d), Value::Object(o)) => d.iter().all(|(k, dv)| match o.get(k) {
            Some(ov) => is_subset(dv, ov, quantities || holds_quantities(k)),
            None => is_empty_value(dv),
        }),
        (Value::Array(d), Value::Array(o)) => {
            d.len() == o.len()
                && d.iter()
                    .zip(o)
                    .all(|(dv, ov)| is_subset(dv, ov, quantities))
        }
        (Value::Number(d), Value::Number(o)) => d.as_f64() == o.as_f64(),
        (Value::String(d), Value::String(o)) if quantities => {
            d == o
                || matches!((parse_quantity(d), parse_quantity(o)), (Some(a), Some(b)) if (a - b).abs() <= f64::EPSILON * a.abs().max(b.abs()) * 4.0)
        }
        (d, Value::Null) => is_empty_value(d),
        (d, o) => d == o,
    }
}

/// Parses a Kubernetes quantity (`500m`, `1.5Gi`, `2e3`, `128M`) into its value.
pub fn parse_quantity(text: &str) -> Option<f64> {
    let t = text.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(end);
    let value: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(value * mult)
}

/// The fields that identify an entry of a keyed list (server-side apply's list-map keys), by
/// the list's field name and, for `ports`, by what its entries hold. `None`: the list is
/// atomic or a set of scalars, which a forced apply replaces whole anyway.
fn list_keys(field: &str, entries: &[Value]) -> Option<&'static [&'static str]> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => &["name"],
        "volumeMounts" => &["mountPath"],
        "ports" if entries.iter().any(|e| e.get("containerPort").is_some()) => {
            &["containerPort", "protocol"]
        }
        "ports" => &["port", "protocol"],
        "topologySpreadConstraints" => &["topologyKey", "whenUnsatisfiable"],
        _ => return None,
    })
}

/// An entry's key; `protocol` defaults to TCP as the API server defaults it.
fn entry_key(entry: &Value, keys: &[&str]) -> Vec<Value> {
    keys.iter()
        .map(|k| match (entry.get(*k), *k) {
            (None, "protocol") => Value::String("TCP".into()),
            (v, _) => v.cloned().unwrap_or(Value::Null),
        })
        .collect()
}

/// JSON Patch operations that take out of `observed` the entries of keyed lists that
/// `desired` does not have: entries another manager added, or whose key it changed (`kubectl
/// patch` of a Service port from 80 to 81). Server-side apply cannot: a forced apply takes
/// back the fields the operator owns, but leaves entries of another manager in place, and
/// then merges its own next to them (two ports named `http`, which the API server refuses).
/// Each changed list is replaced by the desired entries, each laid over its observed twin so
/// that values the API server filled in (a Service's nodePort) stay; a `test` of the list as
/// observed comes first, so a list that changed meanwhile is left for the next reconcile.
/// Pure; empty when nothing foreign is there.
pub fn compute_list_repair(desired: &Value, observed: &Value) -> json_patch::Patch {
    let mut ops = Vec::new();
    repair_into(desired, observed, PointerBuf::root(), &mut ops);
    json_patch::Patch(ops)
}

/// The paths of the lists a repair replaces, for the log and the Event.
pub fn repaired_paths(patch: &json_patch::Patch) -> Vec<String> {
    patch
        .0
        .iter()
        .filter_map(|op| match op {
            PatchOperation::Replace(r) => Some(r.path.to_string()),
            _ => None,
        })
        .collect()
}

fn repair_into(desired: &Value, observed: &Value, path: PointerBuf, ops: &mut Vec<PatchOperation>) {
    let (Value::Object(d), Value::Object(o)) = (desired, observed) else {
        return;
    };
    for (field, dv) in d {
        let Some(ov) = o.get(field) else { continue };
        let here = path.with_trailing_token(field);
        match (dv, ov) {
            (Value::Array(dl), Value::Array(ol)) => {
                let Some(keys) = list_keys(field, dl) else {
                    continue;
                };
                let dkeys: Vec<Vec<Value>> = dl.iter().map(|e| entry_key(e, keys)).collect();
                let twin = |k: &Vec<Value>| ol.iter().position(|e| entry_key(e, keys) == *k);
                let foreign = ol.iter().any(|e| !dkeys.contains(&entry_key(e, keys)));
                if foreign {
                    let merged: Vec<Value> = dl
                        .iter()
                        .zip(&dkeys)
                        .map(|(de, k)| match twin(k) {
                            Some(i) => overlay(&ol[i], de),
                            None => de.clone(),
                        })
                        .collect();
                    ops.push(PatchOperation::Test(TestOperation {
                        path: here.clone(),
                        value: ov.clone(),
                    }));
                    ops.push(PatchOperation::Replace(ReplaceOperation {
                        path: here,
                        value: Value::Array(merged),
                    }));
                } else {
                    for (de, k) in dl.iter().zip(&dkeys) {
                        if let Some(i) = twin(k) {
                            repair_into(de, &ol[i], here.with_trailing_token(i), ops);
                        }
                    }
                }
            }
            _ => repair_into(dv, ov, here, ops),
        }
    }
}

/// One step of a path into an object: a field, or the entry of a keyed list named by its key
/// fields (`containers[name=app]`).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// An object's field.
    Field(String),
    /// A keyed list's entry, by its key fields and their values.
    Entry(Vec<(String, Value)>),
}

/// A path as people read it: `spec.template.spec.containers[name=app].image`.
pub fn display_path(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Field(f) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(f);
            }
            Step::Entry(keys) => {
                let keys: Vec<String> = keys
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => format!("{k}={s}"),
                        other => format!("{k}={other}"),
                    })
                    .collect();
                out.push_str(&format!("[{}]", keys.join(",")));
            }
        }
    }
    out
}

/// The fields the operator sets (in `desired`) whose value `observed` does not have: what
/// another manager changed. The same allowances as [`is_subset`] (defaults, normalised
/// quantities); entries another manager added to a keyed list are [`compute_list_repair`]'s.
/// Pure.
pub fn compute_drift(desired: &Value, observed: &Value) -> Vec<Vec<Step>> {
    let mut out = Vec::new();
    drift_into(desired, observed, &mut Vec::new(), false, &mut out);
    out
}

fn drift_into(
    desired: &Value,
    observed: &Value,
    path: &mut Vec<Step>,
    quantities: bool,
    out: &mut Vec<Vec<Step>>,
) {
    match (desired, observed) {
        (Value::Object(d), Value::Object(o)) => {
            for (k, dv) in d {
                path.push(Step::Field(k.clone()));
                let q = quantities || holds_quantities(k);
                match o.get(k) {
                    Some(Value::Array(ol))
                        if list_keys(k, dv.as_array().map_or(&[], |v| v)).is_some() =>
                    {
                        if let Value::Array(dl) = dv {
                            let keys = list_keys(k, dl).unwrap_or(&[]);
                            for de in dl {
                                let key = entry_key(de, keys);
                                path.push(Step::Entry(
                                    keys.iter()
                                        .map(|k| k.to_string())
                                        .zip(key.clone())
                                        .collect(),
                                ));
                                match ol.iter().find(|e| entry_key(e, keys) == key) {
                                    Some(oe) => drift_into(de, oe, path, q, out),
                                    None => out.push(path.clone()),
                                }
                                path.pop();
                            }
                        } else {
                            out.push(path.clone());
                        }
                    }
                    Some(ov) => drift_into(dv, ov, path, q, out),
                    None if is_empty_value(dv) => {}
                    None => out.push(path.clone()),
                }
                path.pop();
            }
        }
        (d, o) => {
            if !is_subset(d, o, quantities) {
                out.push(path.clone());
            }
        }
    }
}

/// The managers (other than `ours`) that own `path` in an object's managedFields: after
/// another manager's update of a field the operator applied, that manager owns it.
pub fn compute_field_managers(
    managed: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry],
    path: &[Step],
    ours: &str,
) -> Vec<String> {
    let mut out: Vec<String> = managed
        .iter()
        .filter(|e| e.manager.as_deref() != Some(ours))
        .filter(|e| e.fields_v1.as_ref().is_some_and(|f| owns(&f.0, path)))
        .filter_map(|e| e.manager.clone())
        .collect();
    out.dedup();
    out
}

/// Whether a fieldsV1 set holds `path`, or a leaf above it (an atomic field owned whole).
fn owns(set: &Value, path: &[Step]) -> bool {
    let Some((step, rest)) = path.split_first() else {
        return true;
    };
    let Value::Object(map) = set else {
        return false;
    };
    if map.is_empty() {
        // A leaf: the whole value below it is owned.
        return true;
    }
    let next = match step {
        Step::Field(f) => map.get(&format!("f:{f}")),
        Step::Entry(keys) => map.iter().find_map(|(k, v)| {
            let key: Value = serde_json::from_str(k.strip_prefix("k:")?).ok()?;
            keys.iter()
                .all(|(name, want)| match key.get(name) {
                    Some(got) => got == want,
                    None => name == "protocol" && want == "TCP",
                })
                .then_some(v)
        }),
    };
    next.is_some_and(|n| owns(n, rest))
}

/// The WsgiApp field that sets `path` of a child of `kind`, and how to change it: what a
/// drift Event tells the manager who changed the child.
pub fn owning_field(kind: &str, path: &str, app: &str, autoscaling: bool) -> String {
    let container = "spec.template.spec.containers[name=app].";
    let pod = "spec.template.spec.";
    let field = match kind {
        "Deployment" if path == "spec.replicas" => {
            return if autoscaling {
                "spec.autoscaling: the operator's autoscaler sets the pod count (to set it by hand, turn autoscaling off)".into()
            } else {
                format!("spec.replicas.desired: change it with kubectl scale wsgiapp/{app} --replicas=N")
            };
        }
        "Deployment" => match path.strip_prefix(container) {
            Some(rest) => match rest.split(['.', '[']).next().unwrap_or_default() {
                "image" => "spec.image",
                "args" => "the server settings (spec.app, spec.workers.threads, spec.http, spec.logging, spec.chdir...)",
                "command" => "spec.command (or spec.inject)",
                "env" => "spec.env",
                "envFrom" => "spec.envFrom",
                "resources" => "spec.resources (and spec.memorySizing)",
                "volumeMounts" => "spec.pod.volumeMounts",
                "ports" => "spec.port and spec.adminPort",
                "livenessProbe" | "readinessProbe" | "startupProbe" => "spec.probes",
                "imagePullPolicy" => "spec.imagePullPolicy",
                "lifecycle" => "spec.lifecycle.preStopDelaySeconds",
                _ => "spec.podOverrides",
            },
            None => match path.strip_prefix(pod) {
                Some(rest) => match rest.split(['.', '[']).next().unwrap_or_default() {
                    "terminationGracePeriodSeconds" => "spec.lifecycle.gracefulTimeoutSeconds",
                    "imagePullSecrets" => "spec.imagePullSecrets",
                    "volumes" => "spec.pod.volumes",
                    "nodeSelector" | "tolerations" | "affinity" | "topologySpreadConstraints"
                    | "serviceAccountName" | "priorityClassName" | "securityContext" => "spec.pod",
                    _ => "spec.podOverrides",
                },
                None if path.starts_with("spec.template.metadata") => {
                    "spec.pod.labels and spec.pod.annotations (or spec.podOverrides)"
                }
                None => "the WsgiApp (the operator renders the Deployment from it)",
            },
        },
        "ConfigMap" => "spec.workers and spec.lifecycle (the servers reload them live)",
        "Service" if path.starts_with("spec.ports") => "spec.service.port (and spec.port)",
        "Service" if path.starts_with("spec.type") => "spec.service.type",
        "Service" if path.starts_with("metadata.annotations") => "spec.service.annotations",
        "Service" if path.starts_with("metadata.labels") => "spec.service.labels",
        "PodDisruptionBudget" => "spec.replicas.min",
        _ => "the WsgiApp (the operator renders this object from it)",
    };
    format!("{field}: change it there")
}

/// `top` laid over `base`: objects merged key by key, anything else taken from `top`.
fn overlay(base: &Value, top: &Value) -> Value {
    match (base, top) {
        (Value::Object(b), Value::Object(t)) => {
            let mut out = b.clone();
            for (k, tv) in t {
                let merged = match b.get(k) {
                    Some(bv) => overlay(bv, tv),
                    None => tv.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        _ => top.clone(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    use super::*;

    fn cm(data: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("shop-config".into()),
                ..ObjectMeta::default()
            },
            data: Some([("config.yaml".to_string(), data.to_string())].into()),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn stamped_object_is_applied_to_its_server_copy() {
        let desired = stamp_hash(cm("workers: 2:8\n"));
        let mut observed = desired.clone();
        observed.metadata.uid = Some("u".into());
        observed.metadata.resource_version = Some("7".into());
        observed
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("other/annotation".into(), "x".into());
        assert!(is_applied(&desired, &observed));
    }

    #[test]
    fn a_changed_desired_object_or_an_edited_child_is_not_applied() {
        let old = stamp_hash(cm("workers: 2:8\n"));
        let new = stamp_hash(cm("workers: 2:16\n"));
        assert_ne!(
            old.metadata
                .annotations
                .as_ref()
                .map(|a| &a[DESIRED_HASH_ANNOTATION]),
            new.metadata
                .annotations
                .as_ref()
                .map(|a| &a[DESIRED_HASH_ANNOTATION])
        );
        assert!(!is_applied(&new, &old));

        let mut edited = old.clone();
        edited.data = Some([("config.yaml".to_string(), "workers: 1\n".to_string())].into());
        assert!(!is_applied(&old, &edited), "someone else's edit is drift");

        let mut unstamped = old.clone();
        unstamped.metadata.annotations = None;
        assert!(!is_applied(&old, &unstamped));
    }

    #[test]
    fn hashes_are_stable() {
        // A fixed value: changing the hash function rolls out an apply on every child.
        assert_eq!(
            compute_hash(&json!({"a": 1})),
            format!("{:016x}", fnv1a64(b"{\"a\":1}"))
        );
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn subset_allows_server_defaults_and_normalisation() {
        let cases = [
            (json!({"a": 1}), json!({"a": 1, "b": 2}), true),
            (json!({"a": 1}), json!({"a": 2}), false),
            (json!({"a": [1, 2]}), json!({"a": [1, 2, 3]}), false),
            (
                json!({"a": [{"x": 1}]}),
                json!({"a": [{"x": 1, "y": 0}]}),
                true,
            ),
            (json!({"readOnly": false}), json!({}), true),
            (json!({"readOnly": true}), json!({}), false),
            (json!({"list": []}), json!({}), true),
            (json!({"n": 0}), json!({}), true),
            (
                json!({"limits": {"memory": "1024Mi"}}),
                json!({"limits": {"memory": "1Gi"}}),
                true,
            ),
            (
                json!({"requests": {"cpu": "0.5"}}),
                json!({"requests": {"cpu": "500m"}}),
                true,
            ),
            (
                json!({"requests": {"cpu": "1"}}),
                json!({"requests": {"cpu": "500m"}}),
                false,
            ),
            (json!({"image": "1024Mi"}), json!({"image": "1Gi"}), false),
            (json!({"n": 1}), json!({"n": 1.0}), true),
        ];
        for (d, o, want) in cases {
            assert_eq!(is_subset(&d, &o, false), want, "{d} <= {o}");
        }
    }

    #[test]
    fn quantities_parse() {
        let cases = [
            ("128Mi", Some(134_217_728.0)),
            ("1.5Gi", Some(1_610_612_736.0)),
            ("500m", Some(0.5)),
            ("2", Some(2.0)),
            ("1e3", Some(1000.0)),
            ("300M", Some(3e8)),
            ("12X", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_quantity(text), want, "{text}");
        }
    }

    #[test]
    fn foreign_list_entries_are_taken_out_and_server_values_kept() {
        use serde_json::json;
        let desired =
            json!({"spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
        // kubectl patch changed the port's key from 80 to 81: one foreign entry.
        let observed = json!({"spec": {"ports": [
            {"name": "http", "port": 81, "protocol": "TCP", "targetPort": "http"}
        ]}});
        let ops = as_json(&compute_list_repair(&desired, &observed));
        assert_eq!(ops.as_array().map(Vec::len), Some(2));
        assert_eq!(ops[0]["op"], "test");
        assert_eq!(
            ops[1],
            json!({"op": "replace", "path": "/spec/ports", "value": desired["spec"]["ports"]})
        );

        // An entry another manager added next to ours; our entry keeps its nodePort.
        let observed = json!({"spec": {"ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
            {"name": "extra", "port": 9000, "protocol": "TCP"}
        ]}});
        let ops = as_json(&compute_list_repair(&desired, &observed));
        assert_eq!(
            ops[1]["value"],
            json!([{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080, "targetPort": "http"}])
        );

        // Nested: an env entry added to our container; the containers list itself is ours.
        let desired = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 8000}]}
        ]}}}});
        let observed = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "x", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
             "ports": [{"containerPort": 8000, "protocol": "TCP"}]}
        ]}}}});
        let ops = as_json(&compute_list_repair(&desired, &observed));
        assert_eq!(ops.as_array().map(Vec::len), Some(2), "{ops}");
        assert_eq!(ops[1]["path"], "/spec/template/spec/containers/0/env");
        assert_eq!(ops[1]["value"], json!([{"name": "A", "value": "1"}]));

        // Nothing foreign: nothing to do (defaults and other fields are no reason).
        let observed = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "x", "env": [{"name": "A", "value": "1"}],
             "ports": [{"containerPort": 8000, "protocol": "TCP"}]}
        ]}}}});
        assert!(compute_list_repair(&desired, &observed).0.is_empty());

        // Keys are escaped in the paths (RFC 6901), and the replaced paths are reported.
        let desired = json!({"a/b~c": {"env": [{"name": "A"}]}});
        let observed = json!({"a/b~c": {"env": [{"name": "A"}, {"name": "B"}]}});
        let patch = compute_list_repair(&desired, &observed);
        assert_eq!(as_json(&patch)[1]["path"], "/a~1b~0c/env");
        assert_eq!(repaired_paths(&patch), ["/a~1b~0c/env"]);
    }

    /// The patch as it goes over the wire.
    fn as_json(patch: &json_patch::Patch) -> Value {
        serde_json::to_value(patch).expect("a patch serializes")
    }

    #[test]
    fn drift_names_the_field_its_manager_and_the_wsgiapp_field() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
        let desired = json!({"spec": {"replicas": 4, "template": {"spec": {"containers": [
            {"name": "app", "image": "shop:1", "resources": {"limits": {"memory": "1024Mi"}},
             "ports": [{"containerPort": 8000, "name": "http"}]}
        ]}}}});
        // kubectl scale to 1, kubectl set image; the memory only normalised by the server.
        let observed = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "app", "image": "shop:2", "resources": {"limits": {"memory": "1Gi"}},
             "ports": [{"containerPort": 8000, "name": "http", "protocol": "TCP"}]}
        ]}}}});
        let drift = compute_drift(&desired, &observed);
        let shown: Vec<String> = drift.iter().map(|p| display_path(p)).collect();
        assert_eq!(
            shown,
            [
                "spec.replicas",
                "spec.template.spec.containers[name=app].image"
            ]
        );
        assert!(compute_drift(&desired, &desired).is_empty());

        let entry = |manager: &str, subresource: Option<&str>, fields: serde_json::Value| {
            ManagedFieldsEntry {
                manager: Some(manager.into()),
                operation: Some("Update".into()),
                subresource: subresource.map(Into::into),
                fields_v1: Some(FieldsV1(fields)),
                ..ManagedFieldsEntry::default()
            }
        };
        let managed = vec![
            entry(
                "wsgiscale-operator",
                None,
                json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"app\"}": {".": {}, "f:resources": {}}}}}}}),
            ),
            entry(
                "kubectl",
                Some("scale"),
                json!({"f:spec": {"f:replicas": {}}}),
            ),
            entry(
                "kubectl-set",
                None,
                json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"app\"}": {"f:image": {}}}}}}}),
            ),
        ];
        assert_eq!(
            compute_field_managers(&managed, &drift[0], "wsgiscale-operator"),
            ["kubectl"]
        );
        assert_eq!(
            compute_field_managers(&managed, &drift[1], "wsgiscale-operator"),
            ["kubectl-set"]
        );

        assert_eq!(
            owning_field("Deployment", "spec.replicas", "shop", false),
            "spec.replicas.desired: change it with kubectl scale wsgiapp/shop --replicas=N"
        );
        assert!(owning_field("Deployment", "spec.replicas", "shop", true)
            .starts_with("spec.autoscaling"));
        let cases = [
            (
                "Deployment",
                "spec.template.spec.containers[name=app].image",
                "spec.image",
            ),
            (
                "Deployment",
                "spec.template.spec.containers[name=app].env[name=A].value",
                "spec.env",
            ),
            (
                "Deployment",
                "spec.template.spec.containers[name=app].startupProbe.failureThreshold",
                "spec.probes",
            ),
            (
                "Deployment",
                "spec.template.spec.terminationGracePeriodSeconds",
                "spec.lifecycle.gracefulTimeoutSeconds",
            ),
            (
                "Deployment",
                "spec.template.spec.initContainers[name=migrate].image",
                "spec.podOverrides",
            ),
            ("Deployment", "spec.template.spec.nodeSelector", "spec.pod"),
            (
                "ConfigMap",
                "data.config.yaml",
                "spec.workers and spec.lifecycle",
            ),
            (
                "Service",
                "spec.ports[port=80,protocol=TCP].targetPort",
                "spec.service.port",
            ),
            (
                "PodDisruptionBudget",
                "spec.maxUnavailable",
                "spec.replicas.min",
            ),
        ];
        for (kind, path, want) in cases {
            let got = owning_field(kind, path, "shop", false);
            assert!(got.starts_with(want), "{kind} {path}: {got}");
        }
    }
}
