//! Watches the WsgiApps and their children and keeps every object's last version, so the
//! benchmark can tell when everything converged without listing, and records which fields
//! changed between two successive versions of an object, and by which field manager.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::Value;

/// (phase, kind, manager, field path).
pub type ChangeKey = (usize, String, String, String);

/// What changed, how often, with the first example of each.
#[derive(Default)]
pub struct Changes {
    pub counts: BTreeMap<ChangeKey, u64>,
    /// (object, before, after) of the first change of each key.
    pub examples: BTreeMap<ChangeKey, (String, String, String)>,
    /// Object versions seen per (phase, kind, manager).
    pub versions: BTreeMap<(usize, String, String), u64>,
}

/// The last version of every watched object, by kind then `namespace/name`.
pub struct Watched {
    pub phase: Arc<AtomicUsize>,
    pub stores: BTreeMap<&'static str, Mutex<HashMap<String, Value>>>,
    pub changes: Mutex<Changes>,
}

impl Watched {
    pub fn new(kinds: &[&'static str], phase: Arc<AtomicUsize>) -> Arc<Watched> {
        Arc::new(Watched {
            phase,
            stores: kinds
                .iter()
                .map(|k| (*k, Mutex::new(HashMap::new())))
                .collect(),
            changes: Mutex::new(Changes::default()),
        })
    }

    /// Whether the last version of `kind` `key` exists and passes `f`.
    pub fn check(&self, kind: &str, key: &str, f: impl Fn(&Value) -> bool) -> bool {
        self.stores.get(kind).is_some_and(|s| {
            s.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(key)
                .is_some_and(f)
        })
    }

    /// Whether `kind` `key` exists.
    pub fn has(&self, kind: &str, key: &str) -> bool {
        self.stores.get(kind).is_some_and(|s| {
            s.lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(key)
        })
    }

    fn record(&self, kind: &str, obj: Value) {
        let key = format!(
            "{}/{}",
            obj["metadata"]["namespace"].as_str().unwrap_or(""),
            obj["metadata"]["name"].as_str().unwrap_or("")
        );
        let Some(store) = self.stores.get(kind) else {
            return;
        };
        let previous = store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), obj.clone());
        let Some(previous) = previous else { return };
        if previous["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"] {
            return;
        }
        let phase = self.phase.load(Ordering::Relaxed);
        let manager = last_manager(&obj);
        let mut paths = Vec::new();
        diff(&previous, &obj, "", &mut paths);
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        *changes
            .versions
            .entry((phase, kind.to_string(), manager.clone()))
            .or_insert(0) += 1;
        for (path, before, after) in paths {
            let k = (phase, kind.to_string(), manager.clone(), path);
            *changes.counts.entry(k.clone()).or_insert(0) += 1;
            changes
                .examples
                .entry(k)
                .or_insert_with(|| (key.clone(), before, after));
        }
    }
}

/// The field manager (and subresource) of the newest managedFields entry: who wrote last.
fn last_manager(obj: &Value) -> String {
    let Some(entries) = obj["metadata"]["managedFields"].as_array() else {
        return "?".into();
    };
    entries
        .iter()
        .max_by(|a, b| {
            a["time"]
                .as_str()
                .unwrap_or("")
                .cmp(b["time"].as_str().unwrap_or(""))
        })
        .map(|e| {
            let m = e["manager"].as_str().unwrap_or("?");
            match e["subresource"].as_str() {
                Some(s) if !s.is_empty() => format!("{m} ({s})"),
                _ => m.to_string(),
            }
        })
        .unwrap_or_else(|| "?".into())
}

fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => "(absent)".into(),
        other => other.to_string(),
    };
    if s.chars().count() > 120 {
        format!("{}...", s.chars().take(117).collect::<String>())
    } else {
        s
    }
}

/// The paths (`status.conditions[Ready].message`) whose values differ, with both values.
/// Lists of objects with a `type` (conditions) are matched by type; `metadata.resourceVersion`
/// and `metadata.managedFields` are left out (they change with every write).
pub fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<(String, String, String)>) {
    if out.len() >= 40 || a == b {
        return;
    }
    if matches!(path, "metadata.resourceVersion" | "metadata.managedFields") {
        return;
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let null = Value::Null;
                diff(
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    &join(k),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y))
            if x.iter().chain(y).all(|e| e.get("type").is_some()) =>
        {
            let ty = |e: &Value| e["type"].as_str().unwrap_or("").to_string();
            let mut types: Vec<String> = x.iter().chain(y).map(ty).collect();
            types.sort();
            types.dedup();
            for t in types {
                let null = Value::Null;
                let find = |l: &Vec<Value>| l.iter().find(|e| ty(e) == t).cloned();
                diff(
                    &find(x).unwrap_or(null.clone()),
                    &find(y).unwrap_or(null),
                    &format!("{path}[{t}]"),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(p, q, &format!("{path}[{i}]"), out);
            }
        }
        _ => out.push((path.to_string(), short(a), short(b))),
    }
}

/// Watches `ar` objects (with `labels`, if any) into `watched` under `kind`, until the task is
/// aborted.
pub async fn run(
    client: Client,
    ar: ApiResource,
    kind: &'static str,
    labels: Option<&'static str>,
    watched: Arc<Watched>,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut config = watcher::Config::default();
    if let Some(l) = labels {
        config = config.labels(l);
    }
    let mut stream = watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                if let Ok(v) = serde_json::to_value(&o) {
                    watched.record(kind, v);
                }
            }
            Ok(watcher::Event::Delete(o)) => {
                let key = format!(
                    "{}/{}",
                    o.metadata.namespace.as_deref().unwrap_or(""),
                    o.metadata.name.as_deref().unwrap_or("")
                );
                if let Some(s) = watched.stores.get(kind) {
                    s.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("watch {kind}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_are_matched_by_type() {
        let a = json!({"status": {"conditions": [{"type": "Ready", "message": "0 of 2"}, {"type": "X", "message": "a"}]}, "metadata": {"resourceVersion": "1"}});
        let b = json!({"status": {"conditions": [{"type": "X", "message": "a"}, {"type": "Ready", "message": "1 of 2"}]}, "metadata": {"resourceVersion": "2"}});
        let mut out = Vec::new();
        diff(&a, &b, "", &mut out);
        assert_eq!(
            out,
            vec![(
                "status.conditions[Ready].message".to_string(),
                "0 of 2".to_string(),
                "1 of 2".to_string()
            )]
        );
    }
}
