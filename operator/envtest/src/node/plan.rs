//! What the stand-in kubelet will do for one Pod, decided from the Pod alone (pure): the
//! processes to run (each container's command and arguments, environment, working directory,
//! with the paths of its volume mounts and of its image's files mapped to host directories),
//! its probes, its limits and its termination budget.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// What an image holds, as far as the stand-in needs: no image is pulled; a process runs on
/// this machine with these directories on its PATH and these paths mapped.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// Directories put first on the PATH (a virtualenv's `bin`, a Python's, the server's).
    pub path: Vec<PathBuf>,
    /// Paths inside the image and the host directories or files that hold them
    /// (`/wsgiscale` -> the package folder).
    pub files: Vec<(String, PathBuf)>,
    /// The image's entrypoint, used when the container gives no `command`.
    pub entrypoint: Vec<String>,
    /// The image's environment (before the container's).
    pub env: Vec<(String, String)>,
    /// The image's working directory, when the container gives none.
    pub workdir: Option<String>,
}

/// Why a pod cannot be run (reported in its status, as a kubelet reports a bad pod).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The image is not one the node knows: the kubelet's ErrImagePull.
    #[error("image {0:?} is not known to the stand-in node")]
    UnknownImage(String),
    /// The spec names something the stand-in cannot do.
    #[error("{0}")]
    Unsupported(String),
}

/// How a probe checks.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeAction {
    /// An HTTP GET; success is a status in 200..400.
    HttpGet {
        /// Port number (names resolved).
        port: u16,
        /// Path and query.
        path: String,
    },
    /// A TCP connect.
    Tcp {
        /// Port number.
        port: u16,
    },
    /// A command run in the pod; success is exit 0.
    Exec {
        /// The command (paths mapped).
        argv: Vec<String>,
    },
}

/// A probe with Kubernetes' defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSpec {
    /// What it does.
    pub action: ProbeAction,
    /// Wait before the first check.
    pub initial_delay: Duration,
    /// Between checks.
    pub period: Duration,
    /// A check that takes longer fails.
    pub timeout: Duration,
    /// Consecutive successes to pass.
    pub success_threshold: u32,
    /// Consecutive failures to fail.
    pub failure_threshold: u32,
}

/// A preStop hook.
#[derive(Debug, Clone, PartialEq)]
pub enum PreStop {
    /// `sleep: {seconds}`.
    Sleep(Duration),
    /// `exec: {command}` (paths mapped).
    Exec(Vec<String>),
    /// `httpGet`.
    HttpGet {
        /// Port number.
        port: u16,
        /// Path.
        path: String,
    },
}

/// One container to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerPlan {
    /// Its name.
    pub name: String,
    /// Its image reference.
    pub image: String,
    /// Program and arguments, paths mapped, `$(VAR)` not yet expanded.
    pub argv: Vec<String>,
    /// Working directory (mapped), or None for the pod's directory.
    pub workdir: Option<PathBuf>,
    /// The image's PATH entries.
    pub path: Vec<PathBuf>,
    /// Literal environment (image's, then the container's `value`s, paths mapped).
    pub env: Vec<(String, String)>,
    /// Environment entries that need the API server or the pod's runtime (`valueFrom`,
    /// `envFrom`), resolved when the container starts.
    pub env_refs: Vec<EnvRef>,
    /// Startup probe.
    pub startup: Option<ProbeSpec>,
    /// Liveness probe.
    pub liveness: Option<ProbeSpec>,
    /// Readiness probe.
    pub readiness: Option<ProbeSpec>,
    /// preStop hook.
    pub pre_stop: Option<PreStop>,
    /// An init container with `restartPolicy: Always` (a native sidecar).
    pub sidecar: bool,
    /// `terminationMessagePolicy: FallbackToLogsOnError`.
    pub fallback_to_logs: bool,
}

/// An environment entry resolved at start.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvRef {
    /// `valueFrom.fieldRef`.
    Field {
        /// Variable.
        name: String,
        /// The field path (`metadata.name`, `status.podIP`, ...).
        path: String,
    },
    /// `valueFrom.resourceFieldRef`.
    Resource {
        /// Variable.
        name: String,
        /// `limits.cpu`, `requests.memory`, ...
        resource: String,
        /// The divisor's quantity (default 1).
        divisor: Option<String>,
    },
    /// `valueFrom.configMapKeyRef` / `secretKeyRef`.
    Key {
        /// Variable.
        name: String,
        /// A Secret (else a ConfigMap).
        secret: bool,
        /// The object.
        object: String,
        /// The key.
        key: String,
        /// `optional: true`.
        optional: bool,
    },
    /// `envFrom` of a whole ConfigMap or Secret.
    All {
        /// A Secret (else a ConfigMap).
        secret: bool,
        /// The object.
        object: String,
        /// Prefix of every variable.
        prefix: String,
        /// `optional: true`.
        optional: bool,
    },
}

/// A volume's source, for the stand-in to fill.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeSource {
    /// An empty directory.
    EmptyDir,
    /// A ConfigMap's keys as files.
    ConfigMap {
        /// Its name.
        name: String,
        /// `optional: true`.
        optional: bool,
    },
    /// A Secret's keys as files.
    Secret {
        /// Its name.
        name: String,
        /// `optional: true`.
        optional: bool,
    },
    /// An image volume: the image's files, read-only.
    Image {
        /// The image reference.
        reference: String,
    },
    /// Downward API files (labels, annotations, name, namespace).
    DownwardApi {
        /// (file path, field path).
        items: Vec<(String, String)>,
    },
    /// A projected volume (what the ServiceAccount admission adds as `kube-api-access-*`).
    Projected(Vec<Projection>),
}

/// One source of a projected volume.
#[derive(Debug, Clone, PartialEq)]
pub enum Projection {
    /// A service account token at `path` (from the TokenRequest API).
    Token {
        /// The file.
        path: String,
        /// Seconds it is valid.
        expiration: i64,
    },
    /// A ConfigMap's keys (`items`: key -> path; empty: every key under its own name).
    ConfigMap {
        /// Its name.
        name: String,
        /// Key -> path.
        items: Vec<(String, String)>,
        /// `optional: true`.
        optional: bool,
    },
    /// Downward API files.
    DownwardApi(Vec<(String, String)>),
}

/// Everything about one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodPlan {
    /// Init containers in order (sidecars among them keep running).
    pub init: Vec<ContainerPlan>,
    /// The app containers.
    pub containers: Vec<ContainerPlan>,
    /// Volumes by name.
    pub volumes: BTreeMap<String, VolumeSource>,
    /// CPU limit, millicores (the sum of the containers'; None if any is unlimited).
    pub cpu_millis: Option<u64>,
    /// Memory limit, bytes (likewise).
    pub memory_bytes: Option<u64>,
    /// terminationGracePeriodSeconds (default 30).
    pub grace: Duration,
}

/// The directory a volume is materialised in, under the pod's directory.
pub fn volume_dir(pod_dir: &Path, volume: &str) -> PathBuf {
    pod_dir.join("volumes").join(volume)
}

/// Parses a CPU quantity into millicores (`250m`, `0.5`, `2`).
pub fn parse_cpu_millis(q: &str) -> Option<u64> {
    let q = q.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<u64>().ok();
    }
    q.parse::<f64>()
        .ok()
        .filter(|v| *v >= 0.0)
        .map(|v| (v * 1000.0).round() as u64)
}

/// Parses a memory quantity into bytes (`512Mi`, `1G`, `1000`, `1e6`).
pub fn parse_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let units: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, mult) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|v| (v * mult) as u64);
        }
    }
    q.parse::<f64>().ok().map(|v| v as u64)
}

/// Rewrites every occurrence of a mapped path in `s` (at a path boundary: the start, or after
/// `=`, `:`, `,` or a space; followed by the end, `/`, `:`, `,` or a space) to its host path;
/// the longest mapped path wins.
pub fn map_paths(s: &str, mounts: &[(String, PathBuf)]) -> String {
    let mut sorted: Vec<&(String, PathBuf)> = mounts.iter().collect();
    sorted.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    'outer: while i < s.len() {
        let at_boundary = i == 0 || matches!(bytes[i - 1], b'=' | b':' | b',' | b' ');
        if at_boundary && bytes[i] == b'/' {
            for (container, host) in &sorted {
                let c = container.trim_end_matches('/');
                if c.is_empty() || !s[i..].starts_with(c) {
                    continue;
                }
                let end = i + c.len();
                let ok_end = end == s.len() || matches!(bytes[end], b'/' | b':' | b',' | b' ');
                if ok_end {
                    out.push_str(&host.display().to_string());
                    i = end;
                    continue 'outer;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Expands Kubernetes' `$(VAR)` references from `env` (`$$(VAR)` escapes; an unknown
/// variable stays as written, as in Kubernetes).
pub fn expand_vars(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix("$(") {
            out.push_str("$(");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(close) => {
                    let name = &tail[..close];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn port_of(p: &IntOrString, c: &Container) -> Result<u16, PlanError> {
    match p {
        IntOrString::Int(n) => {
            u16::try_from(*n).map_err(|_| PlanError::Unsupported(format!("port {n} out of range")))
        }
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| {
                PlanError::Unsupported(format!("container {} has no port named {name:?}", c.name))
            }),
    }
}

fn probe(
    p: &Option<Probe>,
    c: &Container,
    mounts: &[(String, PathBuf)],
) -> Result<Option<ProbeSpec>, PlanError> {
    let Some(p) = p else { return Ok(None) };
    let action = if let Some(h) = &p.http_get {
        ProbeAction::HttpGet {
            port: port_of(&h.port, c)?,
            path: h.path.clone().unwrap_or_else(|| "/".into()),
        }
    } else if let Some(t) = &p.tcp_socket {
        ProbeAction::Tcp {
            port: port_of(&t.port, c)?,
        }
    } else if let Some(e) = &p.exec {
        ProbeAction::Exec {
            argv: e
                .command
                .iter()
                .flatten()
                .map(|a| map_paths(a, mounts))
                .collect(),
        }
    } else {
        return Err(PlanError::Unsupported(format!(
            "container {}: only httpGet, tcpSocket and exec probes are run",
            c.name
        )));
    };
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    Ok(Some(ProbeSpec {
        action,
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    }))
}

fn container_plan(
    c: &Container,
    images: &BTreeMap<String, Image>,
    pod_dir: &Path,
    sidecar: bool,
) -> Result<ContainerPlan, PlanError> {
    let image_ref = c.image.clone().unwrap_or_default();
    let image = images
        .get(&image_ref)
        .ok_or_else(|| PlanError::UnknownImage(image_ref.clone()))?;
    // What the process sees at which host path: the image's files, then the volume mounts
    // (a mount hides the image's files below it).
    let mut mounts: Vec<(String, PathBuf)> = image.files.clone();
    for m in c.volume_mounts.iter().flatten() {
        let mut host = volume_dir(pod_dir, &m.name);
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            host = host.join(sub);
        }
        mounts.retain(|(p, _)| p != &m.mount_path);
        mounts.push((m.mount_path.clone(), host));
    }
    let map = |s: &String| map_paths(s, &mounts);
    let mut argv: Vec<String> = match &c.command {
        Some(cmd) if !cmd.is_empty() => cmd.iter().map(map).collect(),
        _ => image.entrypoint.iter().map(map).collect(),
    };
    argv.extend(c.args.iter().flatten().map(map));
    if argv.is_empty() {
        return Err(PlanError::Unsupported(format!(
            "container {} has no command and its image no entrypoint",
            c.name
        )));
    }
    let mut env: Vec<(String, String)> = image.env.clone();
    let mut env_refs = Vec::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(cm) = &from.config_map_ref {
            env_refs.push(EnvRef::All {
                secret: false,
                object: cm.name.clone(),
                prefix: prefix.clone(),
                optional: cm.optional.unwrap_or(false),
            });
        }
        if let Some(s) = &from.secret_ref {
            env_refs.push(EnvRef::All {
                secret: true,
                object: s.name.clone(),
                prefix,
                optional: s.optional.unwrap_or(false),
            });
        }
    }
    for e in c.env.iter().flatten() {
        match &e.value_from {
            None => env.push((e.name.clone(), map(&e.value.clone().unwrap_or_default()))),
            Some(v) => {
                if let Some(f) = &v.field_ref {
                    env_refs.push(EnvRef::Field {
                        name: e.name.clone(),
                        path: f.field_path.clone(),
                    });
                } else if let Some(r) = &v.resource_field_ref {
                    env_refs.push(EnvRef::Resource {
                        name: e.name.clone(),
                        resource: r.resource.clone(),
                        divisor: r.divisor.as_ref().map(|q| q.0.clone()),
                    });
                } else if let Some(k) = &v.config_map_key_ref {
                    env_refs.push(EnvRef::Key {
                        name: e.name.clone(),
                        secret: false,
                        object: k.name.clone(),
                        key: k.key.clone(),
                        optional: k.optional.unwrap_or(false),
                    });
                } else if let Some(k) = &v.secret_key_ref {
                    env_refs.push(EnvRef::Key {
                        name: e.name.clone(),
                        secret: true,
                        object: k.name.clone(),
                        key: k.key.clone(),
                        optional: k.optional.unwrap_or(false),
                    });
                }
            }
        }
    }
    let workdir = c
        .working_dir
        .clone()
        .or_else(|| image.workdir.clone())
        .map(|w| PathBuf::from(map(&w)));
    let pre_stop = match c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
        None => None,
        Some(h) => {
            if let Some(s) = &h.sleep {
                Some(PreStop::Sleep(Duration::from_secs(s.seconds.max(0) as u64)))
            } else if let Some(e) = &h.exec {
                Some(PreStop::Exec(e.command.iter().flatten().map(map).collect()))
            } else {
                h.http_get
                    .as_ref()
                    .map(|g| -> Result<PreStop, PlanError> {
                        Ok(PreStop::HttpGet {
                            port: port_of(&g.port, c)?,
                            path: g.path.clone().unwrap_or_else(|| "/".into()),
                        })
                    })
                    .transpose()?
            }
        }
    };
    Ok(ContainerPlan {
        name: c.name.clone(),
        image: image_ref,
        argv,
        workdir,
        path: image.path.clone(),
        env,
        env_refs,
        startup: probe(&c.startup_probe, c, &mounts)?,
        liveness: probe(&c.liveness_probe, c, &mounts)?,
        readiness: probe(&c.readiness_probe, c, &mounts)?,
        pre_stop,
        sidecar,
        fallback_to_logs: c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"),
    })
}

fn limit(containers: &[&Container], resource: &str, parse: fn(&str) -> Option<u64>) -> Option<u64> {
    let mut total = 0u64;
    for c in containers {
        let q = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(resource))?;
        total += parse(&q.0)?;
    }
    Some(total)
}

impl PodPlan {
    /// The plan for `pod`, whose volumes live under `pod_dir`, on a node that knows `images`.
    pub fn from_pod(
        pod: &Pod,
        images: &BTreeMap<String, Image>,
        pod_dir: &Path,
    ) -> Result<PodPlan, PlanError> {
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| PlanError::Unsupported("a pod without a spec".into()))?;
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| {
                let sidecar = c.restart_policy.as_deref() == Some("Always");
                container_plan(c, images, pod_dir, sidecar)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let containers = spec
            .containers
            .iter()
            .map(|c| container_plan(c, images, pod_dir, false))
            .collect::<Result<Vec<_>, _>>()?;
        let mut volumes = BTreeMap::new();
        for v in spec.volumes.iter().flatten() {
            let source = if v.empty_dir.is_some() {
                VolumeSource::EmptyDir
            } else if let Some(cm) = &v.config_map {
                VolumeSource::ConfigMap {
                    name: cm.name.clone(),
                    optional: cm.optional.unwrap_or(false),
                }
            } else if let Some(s) = &v.secret {
                VolumeSource::Secret {
                    name: s.secret_name.clone().unwrap_or_default(),
                    optional: s.optional.unwrap_or(false),
                }
            } else if let Some(i) = &v.image {
                let reference = i.reference.clone().unwrap_or_default();
                if !images.contains_key(&reference) {
                    return Err(PlanError::UnknownImage(reference));
                }
                VolumeSource::Image { reference }
            } else if let Some(d) = &v.downward_api {
                VolumeSource::DownwardApi {
                    items: d
                        .items
                        .iter()
                        .flatten()
                        .filter_map(|i| {
                            Some((i.path.clone(), i.field_ref.as_ref()?.field_path.clone()))
                        })
                        .collect(),
                }
            } else if let Some(p) = &v.projected {
                let mut items = Vec::new();
                for src in p.sources.iter().flatten() {
                    if let Some(t) = &src.service_account_token {
                        items.push(Projection::Token {
                            path: t.path.clone(),
                            expiration: t.expiration_seconds.unwrap_or(3600),
                        });
                    }
                    if let Some(cm) = &src.config_map {
                        items.push(Projection::ConfigMap {
                            name: cm.name.clone(),
                            items: cm
                                .items
                                .iter()
                                .flatten()
                                .map(|i| (i.key.clone(), i.path.clone()))
                                .collect(),
                            optional: cm.optional.unwrap_or(false),
                        });
                    }
                    if let Some(d) = &src.downward_api {
                        items.push(Projection::DownwardApi(
                            d.items
                                .iter()
                                .flatten()
                                .filter_map(|i| {
                                    Some((i.path.clone(), i.field_ref.as_ref()?.field_path.clone()))
                                })
                                .collect(),
                        ));
                    }
                }
                VolumeSource::Projected(items)
            } else {
                return Err(PlanError::Unsupported(format!(
                    "volume {}: only emptyDir, configMap, secret, image, downwardAPI and projected volumes are made",
                    v.name
                )));
            };
            volumes.insert(v.name.clone(), source);
        }
        let all: Vec<&Container> = spec.containers.iter().collect();
        Ok(PodPlan {
            init,
            containers,
            volumes,
            cpu_millis: limit(&all, "cpu", parse_cpu_millis),
            memory_bytes: limit(&all, "memory", parse_bytes),
            grace: Duration::from_secs(
                spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64
            ),
        })
    }

    /// Every container, init containers first.
    pub fn all(&self) -> impl Iterator<Item = &ContainerPlan> {
        self.init.iter().chain(self.containers.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_json::from_value(serde_saphyr::from_str::<serde_json::Value>(yaml).expect("yaml"))
            .expect("a pod")
    }

    fn images() -> BTreeMap<String, Image> {
        BTreeMap::from([
            (
                "app:1".to_string(),
                Image {
                    path: vec!["/venv/bin".into()],
                    files: vec![("/app".into(), "/host/app".into())],
                    entrypoint: vec!["/app/start".into()],
                    env: vec![("LANG".into(), "C.UTF-8".into())],
                    workdir: Some("/app".into()),
                },
            ),
            ("busybox".to_string(), Image::default()),
        ])
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_cpu_millis("250m"), Some(250));
        assert_eq!(parse_cpu_millis("0.5"), Some(500));
        assert_eq!(parse_cpu_millis("2"), Some(2000));
        assert_eq!(parse_bytes("512Mi"), Some(512 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("x"), None);
    }

    #[test]
    fn paths_map_at_boundaries_only() {
        let m = vec![
            ("/etc/app".to_string(), PathBuf::from("/h/cfg")),
            ("/etc/app/deep".to_string(), PathBuf::from("/h/deep")),
            ("/tmp".to_string(), PathBuf::from("/h/tmp")),
        ];
        assert_eq!(map_paths("/etc/app/config.yaml", &m), "/h/cfg/config.yaml");
        assert_eq!(map_paths("--config=/etc/app/x", &m), "--config=/h/cfg/x");
        assert_eq!(
            map_paths("/etc/app/deep/y", &m),
            "/h/deep/y",
            "the longest wins"
        );
        assert_eq!(map_paths("/etc/apple", &m), "/etc/apple", "not a boundary");
        assert_eq!(map_paths("a/tmp", &m), "a/tmp", "not at a start");
        assert_eq!(map_paths("/tmp:/etc/app", &m), "/h/tmp:/h/cfg");
        assert_eq!(map_paths("héllo /tmp", &m), "héllo /h/tmp");
    }

    #[test]
    fn vars_expand_like_kubernetes() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".to_string(), "x".to_string()),
        ];
        assert_eq!(expand_vars("$(A)-$(B)", &env), "1-x");
        assert_eq!(expand_vars("$$(A)", &env), "$(A)");
        assert_eq!(expand_vars("$(C) $A $(", &env), "$(C) $A $(");
    }

    #[test]
    fn a_pod_becomes_a_plan() {
        let p = pod(r#"
metadata: {name: web}
spec:
  terminationGracePeriodSeconds: 39
  volumes:
  - {name: config, configMap: {name: web-config}}
  - {name: tmp, emptyDir: {}}
  initContainers:
  - {name: migrate, image: "app:1", command: [python, manage.py, migrate]}
  - {name: proxy, image: busybox, restartPolicy: Always, command: [sleep, "1000"]}
  containers:
  - name: app
    image: "app:1"
    args: [serve, --config, /etc/app/config.yaml]
    env:
    - {name: MODE, value: /tmp/x}
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    ports: [{name: admin, containerPort: 9191}]
    volumeMounts:
    - {name: config, mountPath: /etc/app}
    - {name: tmp, mountPath: /tmp}
    resources: {limits: {cpu: 250m, memory: 512Mi}}
    readinessProbe: {httpGet: {path: /readyz, port: admin}, periodSeconds: 5}
    lifecycle: {preStop: {sleep: {seconds: 3}}}
"#);
        let plan = PodPlan::from_pod(&p, &images(), Path::new("/pods/web")).expect("plans");
        assert_eq!(plan.init.len(), 2);
        assert!(!plan.init[0].sidecar && plan.init[1].sidecar);
        let app = &plan.containers[0];
        assert_eq!(
            app.argv,
            [
                "/host/app/start",
                "serve",
                "--config",
                "/pods/web/volumes/config/config.yaml"
            ],
            "the image's entrypoint, then the args, paths mapped"
        );
        assert_eq!(app.workdir, Some(PathBuf::from("/host/app")));
        assert!(app
            .env
            .contains(&("MODE".into(), "/pods/web/volumes/tmp/x".into())));
        assert!(app.env.contains(&("LANG".into(), "C.UTF-8".into())));
        assert_eq!(
            app.env_refs,
            [EnvRef::Field {
                name: "POD_IP".into(),
                path: "status.podIP".into()
            }]
        );
        let r = app.readiness.as_ref().expect("readiness");
        assert_eq!(
            r.action,
            ProbeAction::HttpGet {
                port: 9191,
                path: "/readyz".into()
            }
        );
        assert_eq!((r.period, r.failure_threshold), (Duration::from_secs(5), 3));
        assert_eq!(app.pre_stop, Some(PreStop::Sleep(Duration::from_secs(3))));
        assert_eq!(
            (plan.cpu_millis, plan.memory_bytes),
            (Some(250), Some(512 << 20))
        );
        assert_eq!(plan.grace, Duration::from_secs(39));
        assert_eq!(plan.volumes.len(), 2);
    }

    #[test]
    fn an_unknown_image_is_an_image_pull_error() {
        let p = pod("metadata: {name: x}\nspec:\n  containers:\n  - {name: a, image: nope}\n");
        assert_eq!(
            PodPlan::from_pod(&p, &images(), Path::new("/p")),
            Err(PlanError::UnknownImage("nope".into()))
        );
    }
}
