//! The API server's audit log, which tells clients apart where `apiserver_request_total`
//! cannot: every write (and the operator's reads of single objects and pod lists) at level
//! Metadata, one JSON line per request.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

/// The user the operator impersonates (its kubeconfig has `as:`), so that the audit log names
/// it: the harness and the operator hold the same admin certificate.
pub const OPERATOR_USER: &str = "wsgiscale-operator";

/// Writes by everyone; single-object reads and pod lists by everyone except the control
/// plane's own components (they read through informers, and their reads are not the question).
pub const POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    nonResourceURLs: ["*"]
  - level: None
    verbs: ["get", "list", "watch"]
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: None
    verbs: ["get", "list", "watch"]
    users: ["system:kube-controller-manager", "system:apiserver"]
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection", "get"]
  - level: Metadata
    verbs: ["list"]
    resources: [{group: "", resources: ["pods"]}]
  - level: None
"#;

/// One audited request.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `create`, `update`, `patch`, `delete`, `get`, `list`...
    pub verb: String,
    /// `wsgiscale-operator`, `kube-controller-manager`, `kube-apiserver`, `bench harness`.
    pub client: String,
    /// The controller (service account) of the controller manager; empty otherwise.
    pub detail: String,
    /// `resource[.group][/subresource]`.
    pub resource: String,
    /// `?fieldManager=` of the request, if any.
    pub manager: String,
    /// The HTTP status.
    pub code: i64,
    /// Received to response completed, milliseconds.
    pub latency_ms: f64,
    /// Namespace/name of the object.
    pub object: String,
}

impl Entry {
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    pub fn is_lease(&self) -> bool {
        self.resource.starts_with("leases.")
    }
}

fn classify(v: &Value) -> (String, String) {
    let user = v["user"]["username"].as_str().unwrap_or("");
    if v["impersonatedUser"]["username"].as_str() == Some(OPERATOR_USER) {
        return ("wsgiscale-operator".into(), String::new());
    }
    if let Some(sa) = user.strip_prefix("system:serviceaccount:kube-system:") {
        return ("kube-controller-manager".into(), sa.to_string());
    }
    let who = match user {
        "envtest-admin" => "bench harness",
        "system:kube-controller-manager" => "kube-controller-manager",
        "system:apiserver" => "kube-apiserver",
        other => other,
    };
    (who.to_string(), String::new())
}

fn query_param<'a>(uri: &'a str, key: &str) -> &'a str {
    uri.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or("")
}

/// One line of the log; None for anything else than a completed request.
pub fn parse_line(line: &str) -> Option<Entry> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v["stage"].as_str()? != "ResponseComplete" {
        return None;
    }
    let (client, detail) = classify(&v);
    let r = &v["objectRef"];
    let mut resource = r["resource"].as_str().unwrap_or("").to_string();
    if let Some(g) = r["apiGroup"].as_str().filter(|g| !g.is_empty()) {
        resource = format!("{resource}.{g}");
    }
    if let Some(s) = r["subresource"].as_str().filter(|s| !s.is_empty()) {
        resource = format!("{resource}/{s}");
    }
    let ts = |k: &str| v[k].as_str()?.parse::<Timestamp>().ok();
    let latency_ms = match (ts("requestReceivedTimestamp"), ts("stageTimestamp")) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64() * 1000.0,
        _ => 0.0,
    };
    let uri = v["requestURI"].as_str().unwrap_or("");
    Some(Entry {
        verb: v["verb"].as_str()?.to_string(),
        client,
        detail,
        resource,
        manager: query_param(uri, "fieldManager").to_string(),
        code: v["responseStatus"]["code"].as_i64().unwrap_or(0),
        latency_ms,
        object: format!(
            "{}/{}",
            r["namespace"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or("")
        ),
    })
}

/// The log's size now: a phase boundary.
pub fn offset(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The requests logged between two offsets.
pub fn between(path: &Path, from: u64, to: u64) -> Vec<Entry> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err()
        || f.take(to.saturating_sub(from))
            .read_to_end(&mut buf)
            .is_err()
    {
        return Vec::new();
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .filter_map(parse_line)
        .collect()
}

/// Follows the log: each call returns what was appended since the last one.
pub struct Tail {
    path: PathBuf,
    offset: u64,
}

impl Tail {
    pub fn new(path: &Path) -> Tail {
        Tail {
            path: path.to_path_buf(),
            offset: offset(path),
        }
    }

    pub fn read_new(&mut self) -> Vec<Entry> {
        let end = offset(&self.path);
        let out = between(&self.path, self.offset, end);
        self.offset = end;
        out
    }
}

/// Counts by (client, resource, verb, field manager or controller), writes only.
pub fn writes_by_client(entries: &[Entry]) -> BTreeMap<(String, String, String, String), u64> {
    let mut out = BTreeMap::new();
    for e in entries.iter().filter(|e| e.is_write()) {
        let who = if e.detail.is_empty() {
            e.manager.clone()
        } else {
            e.detail.clone()
        };
        let verb = if (200..300).contains(&e.code) {
            e.verb.clone()
        } else {
            format!("{} ({})", e.verb, e.code)
        };
        let key = (e.client.clone(), e.resource.clone(), verb, who);
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// The first `n` non-Lease writes of `client`: `verb resource namespace/name`.
pub fn sample_writes(entries: &[Entry], client: &str, n: usize) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.is_write() && !e.is_lease() && e.client == client)
        .take(n)
        .map(|e| format!("{} {} {} ({})", e.verb, e.resource, e.object, e.code))
        .collect()
}

/// The `q` quantile of `values` (nearest rank), or 0 when empty.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let i = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
    values[i]
}

/// The operator's requests by (verb, resource): count, p50 and p99 server-side latency.
pub fn operator_latency(entries: &[Entry]) -> Vec<(String, String, usize, f64, f64)> {
    let mut by: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.client == "wsgiscale-operator") {
        by.entry((e.verb.clone(), e.resource.clone()))
            .or_default()
            .push(e.latency_ms);
    }
    by.into_iter()
        .map(|((verb, res), mut v)| {
            let n = v.len();
            let p50 = percentile(&mut v, 0.5);
            let p99 = percentile(&mut v, 0.99);
            (verb, res, n, p50, p99)
        })
        .collect()
}
