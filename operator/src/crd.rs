//! The `WsgiApp` custom resource (`wsgiscale.dev/v1alpha1`): its spec, its status and the
//! generated CustomResourceDefinition.
//!
//! Every field's `///` comment is what `kubectl explain wsgiapp.spec...` shows, so each one says
//! its unit and its default. Defaults are not written into the schema: [`crate::validate`]
//! resolves them, so the stored object is exactly what the user applied (GitOps tools see no
//! drift) and the defaults live in one place.
//!
//! What the OpenAPI schema cannot say is checked by CEL rules (`x-kubernetes-validations`), so a
//! bad resource is refused at `kubectl apply` with a clear message. The same rules are evaluated
//! locally in the tests against `tests/manifests/`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
pub use wsgiscale_core::config::protocols::ClientVerify;
pub use wsgiscale_core::config::{Algorithm, ForwardedHeaders, LogFormat, OutsideRootPath};

/// API group of the resource.
pub const GROUP: &str = "wsgiscale.dev";
/// API version of the resource.
pub const VERSION: &str = "v1alpha1";

/// CEL: a size the server's parser reads (`512Mi`, `1Gi`, `300M`, `1048576`), no more.
const SIZE_RULE: &str =
    "self.matches('^[0-9]+(\\\\.[0-9]+)?(B|K|k|KB|M|MB|G|GB|Ki|KiB|Mi|MiB|Gi|GiB)?$')";
const SIZE_MESSAGE: &str =
    "must be a size in bytes with an optional K, M, G (powers of 1000) or Ki, Mi, Gi (powers of 1024) suffix, e.g. 512Mi";

/// The WSGI application to run: an image, a `MODULE:CALLABLE`, the worker limits of the server
/// inside each pod (uWSGI "cheaper" style) and the bounds on the number of pods.
///
/// The operator runs it as a Deployment whose container runs `wsgiscale serve`, a ConfigMap with
/// the server's live-reloadable settings (worker limits, algorithm, lifecycle), a Service and,
/// when `replicas.min` is above 1, a PodDisruptionBudget.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
// Each printcolumn(...) repeats the same keys; clippy takes them for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "wsgiscale.dev",
    version = "v1alpha1",
    kind = "WsgiApp",
    plural = "wsgiapps",
    singular = "wsgiapp",
    shortname = "wsgi",
    namespaced,
    status = "WsgiAppStatus",
    derive = "PartialEq",
    doc = "A WSGI application served by `wsgiscale serve`, with adaptive workers inside each pod and bounded pods.",
    scale(
        spec_replicas_path = ".spec.replicas.desired",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Pods ready to serve"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas",
        description = "Pods the operator wants"
    ),
    printcolumn(
        name = "Busy",
        type_ = "integer",
        json_path = ".status.load.busyWorkers",
        description = "Busy workers in the pods last scraped"
    ),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        json_path = ".status.load.totalWorkers",
        description = "Worker processes in the pods last scraped"
    ),
    printcolumn(
        name = "Queue",
        type_ = "integer",
        json_path = ".status.load.queueDepth",
        description = "Requests waiting for a worker in the pods last scraped"
    ),
    printcolumn(
        name = "Util%",
        type_ = "integer",
        json_path = ".status.load.utilizationPercent",
        description = "Busy share of the worker threads over the stable window, in percent"
    ),
    printcolumn(
        name = "Panic",
        type_ = "boolean",
        json_path = ".status.autoscaler.panicMode",
        description = "Autoscaler in panic mode (scale up only)"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Reason of the Ready condition"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        description = "Why the app is or is not ready, e.g. the first reason its pods are not",
        priority = "1"
    ),
    printcolumn(
        name = "Last Scale",
        type_ = "string",
        json_path = ".status.autoscaler.lastScaleReason",
        description = "Why the autoscaler last changed its recommendation",
        priority = "1"
    ),
    // The rule on metadata.name is added by `crd()` on the name itself (NAME_RULE), so that
    // the API server's error names the field.
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.app.matches('^[A-Za-z_][A-Za-z0-9_]*(\\\\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$')")
        .message("app must be MODULE:CALLABLE with dotted Python identifiers, e.g. myproject.wsgi:application")
        .field_path(".app"),
    validation = Rule::new("(has(self.port) ? self.port : 8000) != (has(self.adminPort) ? self.adminPort : 9191)")
        .message("port and adminPort must differ")
        .field_path(".adminPort"),
    validation = Rule::new("!has(self.autoscaling) || !has(self.autoscaling.enabled) || !self.autoscaling.enabled || (has(self.replicas) && has(self.replicas.max))")
        .message("autoscaling.enabled needs replicas.max: the operator never scales beyond it")
        .field_path(".replicas"),
    validation = Rule::new("!has(self.autoscaling) || !has(self.autoscaling.enabled) || !self.autoscaling.enabled || !has(self.replicas) || !has(self.replicas.min) || self.replicas.min >= 1 || (has(self.scaleToZero) && has(self.scaleToZero.enabled) && self.scaleToZero.enabled)")
        .message("autoscaling.enabled needs replicas.min of at least 1 unless scaleToZero.enabled: only then does the activator hold the first request and wake the app")
        .field_path(".replicas.min"),
    validation = Rule::new("!has(self.scaleToZero) || !has(self.scaleToZero.enabled) || !self.scaleToZero.enabled || (has(self.autoscaling) && has(self.autoscaling.enabled) && self.autoscaling.enabled && !has(self.tls))")
        .message("scaleToZero.enabled needs autoscaling.enabled, and an app without tls (the activator forwards plain HTTP)")
        .field_path(".scaleToZero.enabled"),
    validation = Rule::new("!has(self.inject) || !has(self.inject.enabled) || !self.inject.enabled || !has(self.command)")
        .message("command and inject.enabled are exclusive: with inject the operator runs the wsgiscale it brings")
        .field_path(".command"),
    validation = Rule::new("!has(self.tls) || ((has(self.tls.port) ? self.tls.port : 8443) != (has(self.port) ? self.port : 8000) && (has(self.tls.port) ? self.tls.port : 8443) != (has(self.adminPort) ? self.adminPort : 9191))")
        .message("tls.port must differ from port and adminPort")
        .field_path(".tls.port"),
    validation = Rule::new("!has(self.tls) || (has(self.tls.servicePort) ? self.tls.servicePort : 443) != (has(self.service) && has(self.service.port) ? self.service.port : 80)")
        .message("tls.servicePort must differ from service.port")
        .field_path(".tls.servicePort"),
    validation = Rule::new("!has(self.memorySizing) || !has(self.memorySizing.maxWorkers) || (has(self.workers) && has(self.workers.max) ? self.workers.max : (has(self.workers) && has(self.workers.min) ? self.workers.min : 2)) <= self.memorySizing.maxWorkers")
        .message("workers.max must be at most memorySizing.maxWorkers: the pods' memory is sized for that many workers (raising maxWorkers rolls the pods)")
        .field_path(".workers.max"),
)]
pub struct WsgiAppSpec {
    /// Container image of the Python application. Either it has wsgiscale installed (the
    /// `wsgiscale` Python package, `pip install wsgiscale` or a wheel from `make wheel`, as
    /// examples/Dockerfile does), or it has Python and the app only (a gunicorn image, say) and
    /// `inject.enabled` brings wsgiscale into the pod. Required. Changing it rolls the pods.
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,

    /// When the kubelet pulls the image: Always, IfNotPresent or Never. Default: Kubernetes'
    /// own (Always for a `:latest` tag, IfNotPresent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// Secrets in the WsgiApp's namespace used to pull the image. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// The WSGI application as MODULE:CALLABLE (dotted Python identifiers), e.g.
    /// `myproject.wsgi:application`. Required. Changing it rolls the pods.
    #[schemars(length(min = 3, max = 256))]
    pub app: String,

    /// Directory the server changes into before importing the application. Default: the
    /// image's working directory. Changing it rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub chdir: Option<String>,

    /// Directories prepended to Python's sys.path, in order; a path must not contain ':'.
    /// Default: none. Changing it rolls the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 1024)))]
    #[x_kube(validation = Rule::new("self.all(p, p.size() <= 1024 && p.size() > 0 && !p.contains(':'))").message("pythonpath entries must be non-empty paths of at most 1024 characters without ':'"))]
    pub pythonpath: Vec<String>,

    /// Virtualenv whose site-packages the application uses. Default: the image's
    /// `VIRTUAL_ENV` environment variable, if any. Changing it rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub venv: Option<String>,

    /// Import the application once in the server's fork server so workers share its memory
    /// copy-on-write (true), or in every worker (false: needed by apps that open connections
    /// or threads at import time). Default: true. Changing it rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preload: Option<bool>,

    /// The program that runs the server, for images where `wsgiscale` is not on the PATH, e.g.
    /// `["/opt/venv/bin/wsgiscale"]`. The operator appends `serve` and its flags as the
    /// container's arguments. Not with `inject.enabled`. Default: `["wsgiscale"]`. Changing it
    /// rolls the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 4096)))]
    pub command: Vec<String>,

    /// Environment variables of the server container (the standard Kubernetes EnvVar list).
    /// Names starting with `WSGISCALE_` are refused: they would override the settings of this
    /// resource. Default: none. Changing it rolls the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.all(e, !e.name.startsWith('WSGISCALE_'))").message("env must not set WSGISCALE_* variables: they override the WsgiApp's fields; set the fields instead"))]
    pub env: Vec<EnvVar>,

    /// Sources of environment variables (ConfigMaps, Secrets) for the server container.
    /// Default: none. Changing it rolls the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env_from: Vec<EnvFromSource>,

    /// Container port the server serves HTTP on (bound on all interfaces). Default: 8000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Container port of the server's admin endpoints: /healthz (liveness), /readyz
    /// (readiness), /metrics (Prometheus) and /load (the load report). Not exposed by the
    /// Service. Default: 9191.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: Option<i32>,

    /// The Service in front of the pods. Default: a ClusterIP Service on port 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,

    /// Worker processes inside each pod and how their number adapts to load (uWSGI's
    /// "cheaper" subsystem). Changes reach running servers through the mounted ConfigMap
    /// without restarting the pods, except `threads`. Default: a fixed 2 workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkersSpec>,

    /// Worker recycling, request deadlines and shutdown. Changes reach running servers
    /// without a restart, except `gracefulTimeoutSeconds` and `preStopDelaySeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleSpec>,

    /// Limits and timeouts of the server's HTTP front. Changing them rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,

    /// Log format and level of the server. Changing them rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<LoggingSpec>,

    /// Files the server's HTTP front serves itself, without the app (a Django project's
    /// `collectstatic` folder, say), from directories in the image. Changing them rolls the
    /// pods. Default: none.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_files: Option<StaticSpec>,

    /// Bounds on the number of pods, and the count that `kubectl scale`, an HPA or KEDA set
    /// through the scale subresource when `autoscaling.enabled` is false. Default: 1 pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicasSpec>,

    /// The operator's own pod autoscaling from the servers' load reports. While enabled the
    /// operator alone sets the Deployment's replicas (within replicas.min..replicas.max) and
    /// ignores replicas.desired. Default: disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// Scale to zero pods when idle (needs `autoscaling.enabled` and an operator installed
    /// with the activator): after `idleSeconds` without a request the activator takes the
    /// app's traffic, then the last pod goes; the first request after that is held by the
    /// activator until a pod is ready. Allows `replicas.min: 0`. Default: disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero: Option<ScaleToZeroSpec>,

    /// What the activator may hold for this app while no pod can take a request (at zero
    /// pods, or short of `autoscaling.burstCapacity`); past any bound it answers 503 with
    /// Retry-After. Used when the operator runs with the activator. Default: 10000 requests,
    /// 64Mi of bodies, 60 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activator: Option<ActivatorSpec>,

    /// Compute resources of the server container (the standard requests and limits). Memory
    /// not given here is derived from `memorySizing` when that is set. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Sizes the pod's memory from a worker count: requests.memory and limits.memory become
    /// `overhead + maxWorkers x perWorker` (unless set in `resources`), and workers whose
    /// memory grows beyond `perWorker` are recycled (unless `lifecycle.maxRss` is set). The
    /// memory is part of the pod template, so a change to it rolls the pods; `workers.max`
    /// stays live up to `maxWorkers`. Default: not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_sizing: Option<MemorySizing>,

    /// Settings of the pods beyond the server itself: scheduling, extra volumes, labels,
    /// annotations, identity. For anything else a pod can carry (init containers, sidecars,
    /// their volumes, any other pod field) use `podOverrides`. Changing them rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodOverrides>,

    /// The probes of the server container, all on the admin port: a startup probe (`/readyz`)
    /// that gives a new pod time to import the app, then liveness (`/healthz`: the server's
    /// master runs) and readiness (`/readyz`: a worker can take a request). Changing them
    /// rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<ProbesSpec>,

    /// A PodTemplateSpec (metadata and spec, as in a Deployment's `template`) merged over the
    /// pod template the operator renders, last, as Stackable's `podOverrides`: maps and objects
    /// field by field, lists by their Kubernetes keys (containers, initContainers, volumes and
    /// env by name, ports by containerPort and protocol, volumeMounts by mountPath), other
    /// lists replaced whole. For init containers (a Django `migrate`), sidecars (native ones
    /// are initContainers with `restartPolicy: Always`), their volumes, the security context
    /// of added containers, the probe timing of the server container (`app`) and any pod
    /// field the WsgiApp does not name.
    ///
    /// What the operator renders for the server stays its own and an override of it is
    /// refused (the Ready condition says why): the `app` container's image, command, args, its
    /// http and admin ports, its probe handlers and preStop hook, the volumes and mounts named
    /// `wsgiscale-*` or at /etc/wsgiscale, /tmp and /wsgiscale, `WSGISCALE_*` variables, the
    /// `wsgiscale.dev/*` labels and terminationGracePeriodSeconds (set by
    /// lifecycle.gracefulTimeoutSeconds). A field unknown to the Kubernetes pod API is refused
    /// by name. Default: none. Changing it rolls the pods. See docs/operator.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pod_overrides_schema")]
    pub pod_overrides: Option<serde_json::Value>,

    /// Run an image that has Python and the app but not wsgiscale (a gunicorn image, say)
    /// unchanged: the operator brings wsgiscale into the pod and starts it with the image's
    /// own `python3`. Default: off. Changing it rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject: Option<InjectSpec>,

    /// Server hooks: Python functions the server calls at points of its processes' lives,
    /// with the arguments of the gunicorn hook of the same name (see docs/migrate.md,
    /// "Server hooks"). Default: none. Changing them rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<HooksSpec>,

    /// HTTPS on a container port of its own, with the certificate of a TLS Secret (a
    /// cert-manager Certificate's, say), re-read when it is renewed without dropping
    /// connections. The plain `port` keeps serving HTTP. Default: no TLS. Changing it rolls
    /// the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// HTTP/2: by ALPN on the TLS port, and h2c (HTTP/2 with prior knowledge, without TLS)
    /// on the plain port for trusted peers. Default: HTTP/2 on the TLS port, no h2c.
    /// Changing it rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<Http2Spec>,
}

/// CEL: a hook is `MODULE:FUNCTION` or `PATH:FUNCTION`.
const HOOK_RULE: &str = "self.matches('^[^:]+(:[^:]+)*:[A-Za-z_][A-Za-z0-9_]*$')";
const HOOK_MESSAGE: &str =
    "must be MODULE:FUNCTION (e.g. myapp.hooks:post_fork) or PATH:FUNCTION for a Python file (e.g. /app/gunicorn.conf.py:post_fork)";

/// Server hooks, each `MODULE:FUNCTION` (a module on the app's sys.path) or `PATH:FUNCTION`
/// (a Python file in the image, such as a gunicorn.conf.py, loaded by path). A function may
/// take fewer arguments than it is offered. A hook that raises has its traceback logged.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HooksSpec {
    /// Run in the fork server once it has imported the app (when preloading), before it forks
    /// workers, and again in the new fork server of each reload: `f(server)` (gunicorn's
    /// `when_ready`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 1024))]
    #[x_kube(validation = Rule::new(HOOK_RULE).message(HOOK_MESSAGE))]
    pub post_load: Option<String>,

    /// Run in the new fork server of a reload: `f(server)`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 1024))]
    #[x_kube(validation = Rule::new(HOOK_RULE).message(HOOK_MESSAGE))]
    pub on_reload: Option<String>,

    /// Run in each new worker right after the fork, before it serves: `f(server, worker)`.
    /// Start exporter threads (OpenTelemetry's BatchSpanProcessor) and reset connection pools
    /// here. If it raises, the worker is replaced (with the crash-loop backoff). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 1024))]
    #[x_kube(validation = Rule::new(HOOK_RULE).message(HOOK_MESSAGE))]
    pub post_fork: Option<String>,

    /// Run in each new worker once the app is loaded, before its first request: `f(worker)`.
    /// If it raises, the worker is replaced. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 1024))]
    #[x_kube(validation = Rule::new(HOOK_RULE).message(HOOK_MESSAGE))]
    pub post_worker_init: Option<String>,

    /// Run in a worker that stops normally (retired, recycled, shut down), before its atexit
    /// handlers: `f(server, worker)`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 1024))]
    #[x_kube(validation = Rule::new(HOOK_RULE).message(HOOK_MESSAGE))]
    pub worker_exit: Option<String>,

    /// Run in the worker before each request: `f(worker, req)`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 1024))]
    #[x_kube(validation = Rule::new(HOOK_RULE).message(HOOK_MESSAGE))]
    pub pre_request: Option<String>,

    /// Run in the worker after each response: `f(worker, req, environ, resp)`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 1024))]
    #[x_kube(validation = Rule::new(HOOK_RULE).message(HOOK_MESSAGE))]
    pub post_request: Option<String>,
}

/// HTTPS from a TLS Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.clientVerify) && self.clientVerify != 'off') == has(self.clientCaSecretName)")
        .message("clientVerify optional or require needs clientCaSecretName, and clientCaSecretName needs clientVerify optional or require: client verification is never silently off")
        .field_path(".clientCaSecretName"),
)]
pub struct TlsSpec {
    /// A Secret in the WsgiApp's namespace with the PEM certificate chain under `tls.crt` and
    /// its key under `tls.key` (type kubernetes.io/tls, as cert-manager writes), mounted
    /// read-only at /etc/wsgiscale-tls. The server re-reads it when the kubelet updates the
    /// volume after a renewal. Required.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,

    /// Container port the server serves HTTPS on; the Service exposes it as `https`.
    /// Default: 8443.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Port of the Service's `https` port. Default: 443.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub service_port: Option<i32>,

    /// Client certificates: off, optional (verified when sent) or require. optional and
    /// require need `clientCaSecretName`. Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_verify: Option<ClientVerify>,

    /// A Secret holding, under `ca.crt`, the PEM bundle of the CAs client certificates must
    /// chain to; mounted at /etc/wsgiscale-client-ca. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_ca_secret_name: Option<String>,
}

/// HTTP/2 settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Http2Spec {
    /// Offer HTTP/2 by ALPN on the TLS port. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// Serve h2c (HTTP/2 with prior knowledge, no TLS) on the plain port to the peers in
    /// `h2cAllowIps`: a mesh sidecar or an ingress controller that speaks h2c to its
    /// upstreams (Cloud Run's way past its 32 MiB HTTP/1 request limit). Others get HTTP/1.1
    /// only. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2c: Option<bool>,

    /// Peers allowed h2c, as CIDRs or addresses. The default covers a mesh sidecar in the
    /// pod; an ingress controller elsewhere in the cluster connects from the pod network, so
    /// add that CIDR (e.g. 10.0.0.0/8). Default: 127.0.0.0/8,::1/128.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 2, max = 64)))]
    pub h2c_allow_ips: Vec<String>,
}

/// How wsgiscale is brought into an app image that lacks it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InjectSpec {
    /// Bring wsgiscale into the pod. The container's command becomes
    /// `/wsgiscale/bin/wsgiscale-start`, which checks that the image's Python can run the
    /// package (CPython 3.9 to 3.13 on glibc 2.28 or newer, x86_64) and then runs
    /// `python3 -m wsgiscale serve` with the same arguments as always; an image it cannot
    /// serve is reported in the Ready condition. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How the package reaches the pod: `Copy` (an init container copies it from the
    /// inject image into an emptyDir; works on every cluster) or `ImageVolume` (the inject
    /// image is mounted as a read-only image volume, without the copy; needs Kubernetes 1.35
    /// or the ImageVolume feature gate, and a container runtime that supports it).
    /// Default: Copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<InjectSource>,
    /// The inject image. Default: ghcr.io/wsgiscale/wsgiscale-inject at the operator's
    /// version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub image: Option<String>,
    /// The image's Python: a name looked up on its PATH or an absolute path.
    /// Default: python3, then python.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub python: Option<String>,
}

/// `inject.source` values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[schemars(transform = no_description)]
pub enum InjectSource {
    /// An init container copies the package into an emptyDir.
    #[default]
    Copy,
    /// The inject image is mounted as an image volume.
    ImageVolume,
}

/// `imagePullPolicy` values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(transform = no_description)]
pub enum PullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull when the image is not on the node.
    IfNotPresent,
    /// Never pull; the image must be on the node.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// The Service in front of the pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type: ClusterIP, NodePort or LoadBalancer. Default: ClusterIP.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,

    /// Port the Service listens on; it forwards to the container's `port`. Default: 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Annotations of the Service, e.g. for a cloud load balancer. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// Extra labels of the Service. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Service types the operator renders.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(transform = no_description)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Worker processes inside each pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.max) || (has(self.min) ? self.min : 2) <= self.max")
        .message("workers.min must be at most workers.max (min defaults to 2)")
        .field_path(".min"),
    validation = Rule::new("!has(self.initial) || ((has(self.min) ? self.min : 2) <= self.initial && self.initial <= (has(self.max) ? self.max : (has(self.min) ? self.min : 2)))")
        .message("workers.initial must be within workers.min..workers.max")
        .field_path(".initial"),
)]
pub struct WorkersSpec {
    /// Fewest worker processes kept running in each pod (uWSGI `cheaper`). Default: 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub min: Option<i32>,

    /// Most worker processes in each pod (uWSGI `workers`). Default: `min` (a fixed count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max: Option<i32>,

    /// Workers started when a server boots, within min..max (uWSGI `cheaper-initial`).
    /// Default: `min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub initial: Option<i32>,

    /// Python threads per worker, so requests one worker runs at once. Default: 1.
    /// Changing it rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub threads: Option<i32>,

    /// Workers spawned at most per scaling decision (uWSGI `cheaper-step`). Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub step: Option<i32>,

    /// How the worker count follows load: spare, spare2, backlog, busyness or manual (see
    /// docs/scaling.md). Default: spare2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,

    /// Checks (one per second) of sustained overload or idleness before the spare algorithm
    /// acts; the busyness algorithm's window (uWSGI `cheaper-overload`). Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub overload_checks: Option<i32>,

    /// spare2: checks with surplus idle workers before one is retired (uWSGI `cheaper-idle`).
    /// Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub idle_checks: Option<i32>,

    /// backlog: queued requests above which workers are spawned. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub backlog: Option<i32>,

    /// Knobs of the busyness algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busyness: Option<BusynessSpec>,
}

/// Knobs of the busyness algorithm.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.minPercent) ? self.minPercent : 25) < (has(self.maxPercent) ? self.maxPercent : 50)")
        .message("busyness.minPercent must be below busyness.maxPercent (defaults 25 and 50)")
        .field_path(".minPercent"),
)]
pub struct BusynessSpec {
    /// Average busy percentage below which a worker is retired. Default: 25.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 99))]
    pub min_percent: Option<i32>,

    /// Average busy percentage above which workers are spawned. Default: 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_percent: Option<i32>,

    /// Retirement waits `overloadChecks x multiplier` checks of low busyness. Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub multiplier: Option<i32>,

    /// Added to the multiplier each time a retired worker is needed again soon after
    /// (anti-flap). Default: 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub penalty: Option<i32>,

    /// Queued requests that trigger emergency spawns regardless of the window. Default: 33.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub backlog: Option<i32>,
}

/// Worker recycling, request deadlines and shutdown.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.maxRequestsJitter) || self.maxRequestsJitter == 0 || (has(self.maxRequests) && self.maxRequests > 0)")
        .message("maxRequestsJitter needs maxRequests above 0")
        .field_path(".maxRequestsJitter"),
)]
pub struct LifecycleSpec {
    /// Per-request deadline in seconds: a worker still busy after it has its Python stack
    /// logged, is killed and replaced, and the client gets 504. With `workers.threads` above
    /// 1, the worker's other requests in flight die with it and get 502. 0 or unset: no
    /// deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub timeout_seconds: Option<i32>,

    /// Recycle a worker after this many requests. 0 or unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_requests: Option<i64>,

    /// Up to this many extra requests per worker (random) before recycling, so workers do
    /// not recycle together. Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_requests_jitter: Option<i64>,

    /// Recycle a worker after it has lived this many seconds. 0 or unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_lifetime_seconds: Option<i64>,

    /// Recycle a worker after a request when its own memory is above this size, e.g.
    /// `512Mi`: its unique set size (USS), the pages it does not share with the fork server
    /// and the other workers (RSS on kernels before 4.14). Default: `memorySizing.perWorker`
    /// when set, else never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new(SIZE_RULE).message(SIZE_MESSAGE))]
    pub max_rss: Option<String>,

    /// On shutdown, seconds in-flight requests get to finish before the workers are
    /// stopped. The pod's terminationGracePeriodSeconds is derived from it
    /// (preStopDelaySeconds + this + 5). Default: 25. Changing it rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub graceful_timeout_seconds: Option<i32>,

    /// Seconds the pod keeps serving after it is told to stop, before the server gets
    /// SIGTERM, so that load balancers and kube-proxy stop sending it traffic first (a preStop
    /// sleep; needs Kubernetes 1.30 or later when above 0). Default: 5. Changing it rolls the
    /// pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 120))]
    pub pre_stop_delay_seconds: Option<i32>,
}

/// Limits and timeouts of the server's HTTP front.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpSpec {
    /// Largest request body accepted, e.g. `64Mi`; larger ones get 413. Default: 64Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new(SIZE_RULE).message(SIZE_MESSAGE))]
    pub max_body_size: Option<String>,

    /// Requests waiting for a worker beyond this get 503 with Retry-After. Default: 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub max_queue: Option<i32>,

    /// Seconds an idle keep-alive connection may stay open. Keep it above your load
    /// balancer's idle timeout. Default: 75.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub keepalive_timeout_seconds: Option<i32>,

    /// Seconds a client may take to send a request body; then 408. Default: 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub body_timeout_seconds: Option<i32>,

    /// Log one line per request (method, path, status, bytes sent, time to the response
    /// head and to the last byte), JSON or plain as `logging.format`. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<bool>,

    /// Request headers added to each access log line, e.g. `X-Request-ID`, `traceparent`.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64)))]
    pub access_log_request_headers: Vec<String>,

    /// Response headers added to each access log line, e.g. `Content-Type`. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 64)))]
    pub access_log_response_headers: Vec<String>,

    /// Which proxies are believed about the client's address, scheme and host, and the URL
    /// prefix the app is mounted under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,

    /// Limits of a request's head (request line and headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
}

/// Trusted proxies and the root path.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// Peers whose forwarding headers (`X-Forwarded-For`/`-Proto`/`-Host`/`-Port`/`-Prefix`,
    /// or `Forwarded`) are believed: addresses and CIDR blocks, or `*` for every peer (unsafe
    /// unless only your proxies can reach the pods). From other peers the headers reach the
    /// app untouched and change nothing. The default trusts the private and shared ranges
    /// that pod and node addresses come from, which fits a pod behind a Service reached
    /// through an ingress controller; narrow it to your cluster's pod CIDR (or the ingress
    /// controller's) when other pods, or a LoadBalancer Service with
    /// externalTrafficPolicy: Cluster that exposes the pods directly, could reach them; an
    /// empty list trusts nobody. Default: 10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7,127.0.0.1,::1
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    pub forwarded_allow_ips: Option<Vec<String>>,

    /// Which header family of a trusted proxy is read: x-forwarded (`X-Forwarded-For`,
    /// `-Proto`, `-Host`, `-Port`: ingress-nginx, Envoy, Traefik, cloud load balancers) or
    /// forwarded (RFC 7239). The other family changes nothing. Default: x-forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_headers: Option<ForwardedHeaders>,

    /// URL prefix the app is mounted under, e.g. `/shop`, when the Ingress passes the prefix
    /// on: it becomes SCRIPT_NAME and is cut from PATH_INFO (`/shop/cart` -> `/cart`;
    /// `/shopping` is outside it). When the Ingress cuts the prefix itself, leave this unset
    /// and have it send `X-Forwarded-Prefix`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub root_path: Option<String>,

    /// What a request outside `rootPath` gets: not-found (a 404 from the server) or pass
    /// (the app gets it with an empty SCRIPT_NAME). Default: not-found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_root_path: Option<OutsideRootPath>,
}

/// Limits of a request's head.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.headerFieldBytes) ? self.headerFieldBytes : 32768) <= (has(self.headersBytes) ? self.headersBytes : 65536)")
        .message("limits.headerFieldBytes must be at most limits.headersBytes (defaults 32768 and 65536)")
        .field_path(".headerFieldBytes"),
)]
pub struct LimitsSpec {
    /// Longest request line (method, target and version) in bytes; longer gets 414.
    /// Default: 16384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256, max = 65536))]
    pub request_line_bytes: Option<i32>,

    /// Most header fields in a request; more get 431. Default: 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub header_fields: Option<i32>,

    /// Largest header field (`Name: value`) in bytes; larger gets 431. Room for OIDC session
    /// cookies and Kerberos tokens. Default: 32768.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256, max = 1048576))]
    pub header_field_bytes: Option<i32>,

    /// Largest header section (all fields) in bytes; larger gets 431. Default: 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 256, max = 1048576))]
    pub headers_bytes: Option<i32>,
}

/// Files served by the server's front.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StaticSpec {
    /// URL prefixes and the image's directories they serve, e.g. `/static/` from
    /// `/app/staticfiles` (Django's STATIC_URL and STATIC_ROOT). Files get ETag and
    /// Last-Modified (304s), ranges, and a `.br` or `.gz` file next to them when the client
    /// accepts it; dotfiles and symlinks that lead out of the directory are not served.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub mounts: Vec<StaticMountSpec>,

    /// `Cache-Control: max-age` of the files, in seconds; 0: no Cache-Control. Raise it for
    /// hashed file names (ManifestStaticFilesStorage). Default: 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31536000))]
    pub max_age_seconds: Option<i32>,
}

/// One static mount.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StaticMountSpec {
    /// The URL prefix, e.g. `/static/`: letters, digits and `-._~!$&'()*+;:@` between
    /// slashes. Required.
    #[schemars(length(min = 2, max = 256))]
    pub url_prefix: String,

    /// The directory in the container, an absolute path; the server does not start without
    /// it (a missing `collectstatic` step shows in the pod's log). Required.
    #[schemars(length(min = 2, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains(',')").message("directory must be an absolute path without ','"))]
    pub directory: String,
}

/// Log format and level of the server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoggingSpec {
    /// plain (human-readable lines) or json (one object per line). Default: plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `wsgiscale=debug`.
    /// Default: info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub level: Option<String>,
}

/// Bounds on the number of pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.max) || (has(self.min) ? self.min : 1) <= self.max")
        .message("replicas.min must be at most replicas.max (min defaults to 1)")
        .field_path(".min"),
    validation = Rule::new("!has(self.desired) || ((has(self.min) ? self.min : 1) <= self.desired && (!has(self.max) || self.desired <= self.max))")
        .message("replicas.desired (what kubectl scale, an HPA or KEDA set) must be within replicas.min..replicas.max (min defaults to 1); change the bounds first")
        .field_path(".desired"),
)]
pub struct ReplicasSpec {
    /// Fewest pods, whoever sets the count. Above 1 the operator also keeps a
    /// PodDisruptionBudget allowing one pod down at a time. 0 lets `kubectl scale
    /// --replicas=0` park the app; with autoscaling enabled it must be at least 1 unless
    /// `scaleToZero.enabled` (then the activator holds the first request and wakes the app).
    /// Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub min: Option<i32>,

    /// Most pods, whoever sets the count. Required when autoscaling is enabled. Default:
    /// unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub max: Option<i32>,

    /// The pod count while `autoscaling.enabled` is false; this is the field `kubectl scale`,
    /// an HPA or KEDA write through the scale subresource. A count outside min..max is
    /// refused by the API server (`kubectl scale` reports why). Ignored
    /// while autoscaling is enabled. Leave it out of GitOps manifests when something else
    /// scales the app. Default: min.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub desired: Option<i32>,
}

/// The operator's pod autoscaling (Knative-style: a stable and a panic window over the pods'
/// load reports). Validated now; applied by the operator's autoscaler.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.panicWindowSeconds) ? self.panicWindowSeconds : 6) <= (has(self.stableWindowSeconds) ? self.stableWindowSeconds : 60)")
        .message("panicWindowSeconds must be at most stableWindowSeconds (defaults 6 and 60)")
        .field_path(".panicWindowSeconds"),
    validation = Rule::new("(has(self.tickSeconds) ? self.tickSeconds : 2) <= (has(self.panicWindowSeconds) ? self.panicWindowSeconds : 6)")
        .message("tickSeconds must be at most panicWindowSeconds (defaults 2 and 6)")
        .field_path(".tickSeconds"),
)]
pub struct AutoscalingSpec {
    /// Let the operator set the pod count from load. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// Busy share of all worker threads (at workers.max) the autoscaler aims for, in percent.
    /// Default: 70.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_utilization_percent: Option<i32>,

    /// Seconds of load averaged for normal decisions. Default: 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub stable_window_seconds: Option<i32>,

    /// Seconds of load averaged to detect a burst. Default: 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub panic_window_seconds: Option<i32>,

    /// Panic mode starts when the panic window's estimate needs this percentage of the ready
    /// pods; in panic mode the autoscaler only scales up. Default: 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 110, max = 1000))]
    pub panic_threshold_percent: Option<i32>,

    /// Most the pod count may grow in one decision, as a multiple of the ready pods.
    /// Default: 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 10000))]
    pub max_scale_up_rate: Option<i32>,

    /// Most the pod count may shrink in one decision, as a divisor of the ready pods (2: to
    /// half). Default: 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 10000))]
    pub max_scale_down_rate: Option<i32>,

    /// Seconds a lower pod count must stay recommended before the operator scales down.
    /// Default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_delay_seconds: Option<i32>,

    /// Changes within this percentage of the current pod count are ignored. Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 50))]
    pub tolerance_percent: Option<i32>,

    /// Seconds between two decisions (and load scrapes). Default: 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60))]
    pub tick_seconds: Option<i32>,

    /// Most pods scraped per decision; with more ready pods a random sample of this size is
    /// scraped and extrapolated. Default: 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_pods_scraped: Option<i32>,

    /// Spare capacity, in requests, the ready pods must have beyond the current demand for
    /// traffic to go straight to them (Knative's target burst capacity); below it, and at
    /// zero pods, the activator (when the operator has one) holds requests in one queue and
    /// hands them to whichever pod frees first. 0: the activator is in the path only at zero
    /// pods; -1: always. Default: one pod's worth (workers.max x threads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1, max = 100000))]
    pub burst_capacity: Option<i32>,
}

/// The activator's hold limits for one app.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ActivatorSpec {
    /// Requests held at once. Default: 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_held_requests: Option<i32>,

    /// Bytes of request bodies held at once, e.g. `64Mi`. Default: 64Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new(SIZE_RULE).message(SIZE_MESSAGE))]
    pub max_held_bytes: Option<String>,

    /// Seconds a request may wait for a pod. Default: 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub max_wait_seconds: Option<i32>,
}

/// Scale to zero when idle.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScaleToZeroSpec {
    /// Let the app go to zero pods when idle. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// Seconds without a request before the last pod goes. Default: 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30, max = 86400))]
    pub idle_seconds: Option<i32>,
}

/// Memory sizing from the worker count.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemorySizing {
    /// Memory one worker needs at its largest, e.g. `200Mi`. Required.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new(SIZE_RULE).message(SIZE_MESSAGE))]
    pub per_worker: String,

    /// Memory of the server itself (master, fork server, preloaded app) beyond the workers.
    /// Default: 128Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new(SIZE_RULE).message(SIZE_MESSAGE))]
    pub overhead: Option<String>,

    /// The worker count the pods' memory is sized for: `workers.max` can move up to it live,
    /// without restarting the pods, and is refused above it. Changing maxWorkers changes the
    /// pods' memory and so rolls them. Default: `workers.max`, so that then every change of
    /// workers.max rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_workers: Option<i32>,
}

/// Settings of the pods beyond the server itself.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// ServiceAccount the pods run as. Default: the namespace's `default` account, with no
    /// API token mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,

    /// Node labels a node must have to run the pods. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the pods tolerate. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,

    /// Node and pod (anti-)affinity rules. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// How the pods spread over zones or nodes. A constraint without a labelSelector gets
    /// the app's own pod selector. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,

    /// Extra volumes of the pods. Names starting with `wsgiscale-` are reserved. Default:
    /// none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(v, !v.name.startsWith('wsgiscale-'))").message("volume names starting with wsgiscale- are reserved for the operator"))]
    pub volumes: Vec<Volume>,

    /// Extra mounts in the server container (of `volumes`). /etc/wsgiscale (the server's
    /// config) and /tmp (a writable emptyDir) are taken. Default: none.
    //
    // The rule compares with size() and startsWith() rather than ==: mountPath has no
    // maxLength, and the API server prices `==` on an unbounded string by its possible length.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(m, !(m.mountPath.size() == 14 && m.mountPath.startsWith('/etc/wsgiscale')) && !(m.mountPath.size() == 4 && m.mountPath.startsWith('/tmp')))").message("/etc/wsgiscale and /tmp are mounted by the operator"))]
    pub volume_mounts: Vec<VolumeMount>,

    /// Extra labels of the pods. `wsgiscale.dev/app` is reserved: it selects the pods.
    /// Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = Rule::new("!('wsgiscale.dev/app' in self)").message("the pod label wsgiscale.dev/app is reserved: the operator selects the pods with it"))]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations of the pods. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// PriorityClass of the pods. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,

    /// User ID the server runs as. The pods always run as non-root; set this when the image's
    /// USER is a name or root. Default: the image's USER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub run_as_user: Option<i64>,

    /// Group ID the server runs as. Default: the image's group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub run_as_group: Option<i64>,

    /// Group that owns the pods' volumes. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub fs_group: Option<i64>,
}

/// The probes of the server container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProbesSpec {
    /// Seconds a new pod gets to import the app and start its first worker (the startup
    /// probe: `/readyz` every 2 s); past them the kubelet restarts the container. Liveness
    /// and readiness start once it passed. Raise it for an app whose import is slower.
    /// Default: 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 86400))]
    pub startup_timeout_seconds: Option<i32>,

    /// The liveness probe (`/healthz`, 200 while the server's master runs, also while the app
    /// imports): the kubelet restarts a container that fails it. Default: every 10 s, 2 s
    /// timeout, restart after 3 failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<ProbeTiming>,

    /// The readiness probe (`/readyz`, 503 with the reason while importing the app, with no
    /// worker ready, or draining): an unready pod gets no traffic from the Service. Default:
    /// every 5 s, 2 s timeout, unready after 2 failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<ProbeTiming>,
}

/// How often a probe runs and how many failures count.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProbeTiming {
    /// Seconds between two probes. Default: the probe's own (see above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,

    /// Seconds one probe may take. Default: the probe's own (see above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,

    /// Failures in a row that count. Default: the probe's own (see above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: Option<i32>,
}

/// `podOverrides`' schema: an object kept as written. The full PodTemplateSpec schema would
/// multiply the CRD's size (see `pod_template_schema_is_too_big_to_embed`), and with it the
/// API server would prune a misspelt field silently; kept whole, `validate` reads it as a
/// PodTemplateSpec and refuses an unknown field by name, and GitOps tools find exactly what
/// they applied.
fn pod_overrides_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// What the operator last observed and did. Fields under `load` and `autoscaler` are written by
/// the operator's autoscaler with its own field manager; the rest by the reconciler.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WsgiAppStatus {
    /// The metadata.generation of the WsgiApp the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready (the app runs all desired pods, up to date and ready; else the first reason its
    /// pods are not: Unschedulable, ImagePullBackOff, CrashLoopBackOff... with the scheduler's
    /// or the kubelet's words), Progressing (a rollout or scaling is under way), Degraded (the
    /// spec is invalid, the API server refused an object, pods cannot start, or the rollout is
    /// stuck) and ScaleConflict (another manager, an HPA say, writes the scale of an app
    /// whose autoscaling is on), each with a reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Pods of the Deployment (all revisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Pods passing their readiness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Pods running the current pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,

    /// Pods the operator asked the Deployment for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,

    /// The pods' label selector, for the scale subresource (HPA, KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// The servers' load as last scraped by the autoscaler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadSummary>,

    /// The autoscaler's state and last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,
}

/// The servers' load, summed over the pods scraped. The autoscaler writes it when its
/// recommendation or panic mode changes, the ready pods change, utilization moves 10 points or
/// more, or requests start or stop queueing; otherwise at least every 60 s.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadSummary {
    /// When the pods were scraped for this summary (at most 60 s ago while the autoscaler
    /// runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,

    /// Pods whose load report was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_scraped: Option<i32>,

    /// Ready pods at the time (more than scraped when sampling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_ready: Option<i32>,

    /// Workers running a request, in the pods scraped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_workers: Option<i32>,

    /// Worker processes, in the pods scraped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_workers: Option<i32>,

    /// Requests waiting for a worker, in the pods scraped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<i32>,

    /// Busy share of the worker threads over the stable window, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_percent: Option<i32>,
}

/// The autoscaler's state and last decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// The pod count the autoscaler recommends; the reconciler applies it within
    /// replicas.min..replicas.max.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_replicas: Option<i32>,

    /// True while the panic window's load is above the panic threshold (scale up only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_mode: Option<bool>,

    /// When the autoscaler last changed its recommendation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,

    /// Why, in a short sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
}

/// Drops an enum type's own description from its schema: kube hoists the enum's schema into
/// the field's, and the field's `///` text (which lists the values) is what `kubectl explain`
/// should show.
fn no_description(schema: &mut schemars::Schema) {
    schema.remove("description");
}

/// CEL on `metadata.name`: the name names the Service and labels the pods, so it must be a
/// DNS-1035 label, stricter than the DNS subdomain Kubernetes allows for a WsgiApp.
const NAME_RULE: &str = "self.size() <= 63 && self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
const NAME_MESSAGE: &str = "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, at most 63 characters): it names the Service and labels the pods";

/// The CustomResourceDefinition of [`WsgiApp`], with every description flowed by
/// [`flow_description`] and [`NAME_RULE`] on `metadata.name`.
pub fn crd(
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut crd = WsgiApp::crd();
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let mut value = serde_json::to_value(&*schema)
            .expect("a JSON schema serializes: it is built from plain Rust values");
        flow_descriptions(&mut value);
        *schema = serde_json::from_value(value)
            .expect("only description strings changed, so the schema still deserializes");
        // On the name itself: a rule on the root object reports its error at `<nil>`, and
        // the root's fieldPath may only name a field the schema declares. The root schema of
        // a CRD may say this much about metadata (name and generateName), no more.
        schema
            .properties
            .get_or_insert_with(BTreeMap::new)
            .insert("metadata".into(), metadata_schema());
    }
    crd
}

/// `metadata: {type: object, properties: {name: {type: string, x-kubernetes-validations}}}`.
fn metadata_schema(
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaProps, ValidationRule,
    };
    let name = JSONSchemaProps {
        type_: Some("string".into()),
        x_kubernetes_validations: Some(vec![ValidationRule {
            rule: NAME_RULE.into(),
            message: Some(NAME_MESSAGE.into()),
            ..ValidationRule::default()
        }]),
        ..JSONSchemaProps::default()
    };
    JSONSchemaProps {
        type_: Some("object".into()),
        properties: Some(BTreeMap::from([("name".to_string(), name)])),
        ..JSONSchemaProps::default()
    }
}

/// Rewrites every `description` string in a JSON schema with [`flow_description`]. A property
/// that happens to be named `description` is a schema object, not a string, and is walked.
fn flow_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = flow_description(text);
                    }
                    _ => flow_descriptions(child),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(flow_descriptions),
        _ => {}
    }
}

/// A doc comment as `kubectl explain` should show it: schemars keeps each `///` line's break,
/// so the lines of a paragraph are joined with a space and the text flows at any width. Kept
/// as they are: blank-line paragraph breaks, list items (`- `, `* `, `+ `, `1. `, `a) `, whose
/// wrapped lines join them), indented lines (code, or a continuation) and the line after
/// them, table rows, and every line inside a ``` fence.
pub fn flow_description(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut prev: Option<&str> = None;
    let mut in_fence = false;
    for line in text.lines() {
        let fence = line.trim_start().starts_with("```");
        let joins = match prev {
            Some(p) => {
                !in_fence
                    && !fence
                    && !p.trim().is_empty()
                    && !line.trim().is_empty()
                    && !starts_block(line)
                    && !holds_its_line(p)
            }
            None => false,
        };
        if joins {
            out.truncate(out.trim_end().len());
            out.push(' ');
        } else if prev.is_some() {
            out.push('\n');
        }
        out.push_str(line);
        if fence {
            in_fence = !in_fence;
        }
        prev = Some(line);
    }
    out
}

/// A line the next one is not joined to: indented (code, a continuation), a fence, a table row.
fn holds_its_line(line: &str) -> bool {
    line.starts_with([' ', '\t']) || line.starts_with("```") || line.starts_with('|')
}

/// A line that is not joined to the one before: one that [holds its line](holds_its_line) or
/// a list item.
fn starts_block(line: &str) -> bool {
    if holds_its_line(line) {
        return true;
    }
    if ["- ", "* ", "+ "].iter().any(|m| line.starts_with(m)) {
        return true;
    }
    // `1. `, `12) `, `a) `: an ordinal, then `.` or `)`, then a space.
    let marker_len = line
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(line.len());
    let (ordinal, rest) = line.split_at(marker_len);
    let numbered = !ordinal.is_empty() && ordinal.chars().all(|c| c.is_ascii_digit());
    let lettered = ordinal.len() == 1 && ordinal.chars().all(|c| c.is_ascii_lowercase());
    (numbered && (rest.starts_with(". ") || rest.starts_with(") ")))
        || (lettered && rest.starts_with(") "))
}

/// The CRD as the YAML in `crds/wsgiapp.yaml` (what `wsgiscale-operator crd` prints).
pub fn crd_yaml() -> String {
    let header = "# GENERATED from operator/src/crd.rs by `wsgiscale-operator crd`: do not edit.\n";
    let body = serde_saphyr::to_string(&crd())
        .expect("the CRD serializes: it is built from plain Rust values");
    format!("{header}{body}")
}

/// The CRD as the Helm template `charts/wsgiscale/templates/crds.yaml`: the same generated
/// spec, installed when `crds.install` is true and kept on uninstall when `crds.keep` is true
/// (so that removing the chart does not delete every WsgiApp).
pub fn crd_helm_template() -> String {
    let crd = crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    let spec = serde_saphyr::to_string(&crd.spec)
        .expect("the CRD spec serializes: it is built from plain Rust values");
    let mut out = String::new();
    out.push_str("{{- /* GENERATED from operator/src/crd.rs by `wsgiscale-operator crd --helm-template`: do not edit. */}}\n");
    out.push_str("{{- if .Values.crds.install }}\n");
    out.push_str("apiVersion: apiextensions.k8s.io/v1\n");
    out.push_str("kind: CustomResourceDefinition\n");
    out.push_str("metadata:\n");
    out.push_str(&format!("  name: {name}\n"));
    out.push_str("  labels:\n");
    out.push_str("    {{- include \"wsgiscale.labels\" . | nindent 4 }}\n");
    out.push_str("  {{- if .Values.crds.keep }}\n");
    out.push_str("  annotations:\n");
    out.push_str("    helm.sh/resource-policy: keep\n");
    out.push_str("  {{- end }}\n");
    out.push_str("spec:\n");
    for line in spec.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("{{- end }}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::flow_description;

    #[test]
    fn descriptions_flow_and_keep_their_blocks() {
        let cases = [
            ("one line", "one line"),
            (
                "Worker processes inside each pod (uWSGI's\n\"cheaper\" subsystem). Default: 2.",
                "Worker processes inside each pod (uWSGI's \"cheaper\" subsystem). Default: 2.",
            ),
            (
                "first\nparagraph\n\nsecond\nparagraph",
                "first paragraph\n\nsecond paragraph",
            ),
            (
                "Values:\n- spare: counts\nbusy seconds\n- manual: fixed\n1. one\na) two",
                "Values:\n- spare: counts busy seconds\n- manual: fixed\n1. one\na) two",
            ),
            (
                "Run:\n    make test\n    make lint\nthen",
                "Run:\n    make test\n    make lint\nthen",
            ),
            ("```\na\nb\n```\nafter\nthis", "```\na\nb\n```\nafter this"),
            ("trailing space \njoined", "trailing space joined"),
            (
                "a sentence ending in 2.\nNext",
                "a sentence ending in 2. Next",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(flow_description(text), want, "{text:?}");
        }
    }
}

#[cfg(test)]
mod probe_default_tests {
    use crate::validate::defaults as d;

    /// The probes' `Default:` texts are `validate::defaults`.
    #[test]
    fn the_crd_states_the_probe_defaults() {
        let crd = serde_json::to_value(super::crd()).expect("serializes");
        let probes = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["probes"]["properties"];
        let desc = |k: &str| {
            probes[k]["description"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        assert!(desc("startupTimeoutSeconds")
            .contains(&format!("every {} s", d::STARTUP_PERIOD_SECONDS)));
        assert!(desc("startupTimeoutSeconds")
            .contains(&format!("Default: {}.", d::STARTUP_TIMEOUT_SECONDS)));
        assert!(desc("liveness").contains(&format!(
            "Default: every {} s, {} s timeout, restart after {} failures.",
            d::LIVENESS_PERIOD_SECONDS,
            d::LIVENESS_TIMEOUT_SECONDS,
            d::LIVENESS_FAILURE_THRESHOLD
        )));
        assert!(desc("readiness").contains(&format!(
            "Default: every {} s, {} s timeout, unready after {} failures.",
            d::READINESS_PERIOD_SECONDS,
            d::READINESS_TIMEOUT_SECONDS,
            d::READINESS_FAILURE_THRESHOLD
        )));
    }
}

#[cfg(test)]
mod size_tests {
    /// Why `podOverrides` is kept as written (`x-kubernetes-preserve-unknown-fields`) rather
    /// than typed: the PodTemplateSpec schema, inlined as a CRD needs it, alone is larger than
    /// the whole CRD, which is already past the 256 KiB that client-side `kubectl apply` can
    /// store in its annotation (`kubectl apply --server-side` is what the docs say).
    #[test]
    fn pod_template_schema_is_too_big_to_embed() {
        use schemars::generate::SchemaSettings;
        let settings = SchemaSettings::openapi3().with(|s| s.inline_subschemas = true);
        let schema = settings
            .into_generator()
            .into_root_schema_for::<k8s_openapi::api::core::v1::PodTemplateSpec>();
        let template = serde_json::to_string(&schema).expect("serializes").len();
        let crd = serde_json::to_string(&super::crd())
            .expect("serializes")
            .len();
        assert!(
            template > crd,
            "PodTemplateSpec {template} bytes, CRD {crd} bytes"
        );
    }
}

#[cfg(test)]
mod default_tests {
    use std::collections::BTreeMap;

    use serde_json::Value;
    use wsgiscale_core::config::{defaults as server, Settings};
    use wsgiscale_core::units::parse_size;

    use crate::validate::defaults as op;

    fn walk(node: &Value, path: &str, out: &mut BTreeMap<String, (String, Vec<String>)>) {
        let Some(props) = node.get("properties").and_then(Value::as_object) else {
            return;
        };
        for (key, child) in props {
            let p = format!("{path}.{key}");
            let desc = child["description"].as_str().unwrap_or_default();
            let rules = child["x-kubernetes-validations"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .map(|r| r["rule"].as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default();
            if let Some((_, rest)) = desc.split_once("Default: ") {
                let word = rest.split_whitespace().next().unwrap_or_default();
                let word = word.trim_end_matches(['.', ',', ';']).to_string();
                out.insert(p.clone(), (word, rules));
            }
            walk(child, &p, out);
        }
    }

    /// Every `Default:` the CRD states for a server setting is the server's own default (one
    /// declaration: `wsgiscale_core::config::defaults`), and so are the CEL rules' literals.
    #[test]
    fn the_crd_states_the_servers_defaults() {
        let crd = serde_json::to_value(super::crd()).expect("serializes");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut stated = BTreeMap::new();
        walk(spec, "spec", &mut stated);
        let d = Settings::defaults();
        let n = |v: u32| v.to_string();
        let secs = |v: std::time::Duration| v.as_secs().to_string();
        let expected: BTreeMap<&str, String> = [
            ("spec.workers.min", n(server::WORKERS)),
            ("spec.workers.threads", n(server::THREADS)),
            ("spec.workers.step", n(server::CHEAPER_STEP)),
            ("spec.workers.overloadChecks", n(server::CHEAPER_OVERLOAD)),
            ("spec.workers.idleChecks", n(server::CHEAPER_IDLE)),
            ("spec.workers.backlog", n(server::CHEAPER_BACKLOG)),
            (
                "spec.workers.busyness.minPercent",
                n(server::CHEAPER_BUSYNESS_MIN),
            ),
            (
                "spec.workers.busyness.maxPercent",
                n(server::CHEAPER_BUSYNESS_MAX),
            ),
            (
                "spec.workers.busyness.multiplier",
                n(server::CHEAPER_BUSYNESS_MULTIPLIER),
            ),
            (
                "spec.workers.busyness.penalty",
                n(server::CHEAPER_BUSYNESS_PENALTY),
            ),
            (
                "spec.workers.busyness.backlog",
                n(server::CHEAPER_BUSYNESS_BACKLOG),
            ),
            (
                "spec.workers.algorithm",
                d.cheaper_algo.expect("set").as_str().to_string(),
            ),
            ("spec.http.maxQueue", n(server::MAX_QUEUE)),
            (
                "spec.http.keepaliveTimeoutSeconds",
                secs(server::KEEPALIVE_TIMEOUT),
            ),
            ("spec.http.bodyTimeoutSeconds", secs(server::BODY_TIMEOUT)),
            ("spec.http.accessLog", "false".into()),
            (
                "spec.lifecycle.gracefulTimeoutSeconds",
                secs(server::GRACEFUL_TIMEOUT),
            ),
            ("spec.lifecycle.maxRequestsJitter", "0".into()),
            ("spec.logging.level", server::LOG_LEVEL.into()),
            ("spec.logging.format", "plain".into()),
            ("spec.preload", "true".into()),
            (
                "spec.tls.clientVerify",
                d.tls_client_verify.expect("set").as_str().into(),
            ),
            ("spec.http2.enabled", d.http2.expect("set").to_string()),
            ("spec.http2.h2c", d.h2c.expect("set").to_string()),
            (
                "spec.http2.h2cAllowIps",
                d.h2c_allow_ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "spec.http.proxy.forwardedAllowIps",
                server::FORWARDED_ALLOW_IPS_IN_CLUSTER.into(),
            ),
            (
                "spec.http.proxy.forwardedHeaders",
                d.forwarded_headers.expect("set").as_str().into(),
            ),
            (
                "spec.http.proxy.outsideRootPath",
                d.outside_root_path.expect("set").as_str().into(),
            ),
            (
                "spec.http.limits.requestLineBytes",
                server::LIMIT_REQUEST_LINE.to_string(),
            ),
            (
                "spec.http.limits.headerFields",
                n(server::LIMIT_REQUEST_FIELDS),
            ),
            (
                "spec.http.limits.headerFieldBytes",
                server::LIMIT_REQUEST_FIELD_SIZE.to_string(),
            ),
            (
                "spec.http.limits.headersBytes",
                server::LIMIT_REQUEST_HEADERS_SIZE.to_string(),
            ),
            ("spec.static.maxAgeSeconds", secs(server::STATIC_MAX_AGE)),
        ]
        .into();
        for (path, want) in &expected {
            let (got, _) = stated
                .get(*path)
                .unwrap_or_else(|| panic!("{path} states no default"));
            assert_eq!(got, want, "{path}");
        }
        let (body, _) = &stated["spec.http.maxBodySize"];
        assert_eq!(parse_size(body).ok(), Some(server::MAX_BODY));
        assert_eq!(parse_size(op::MAX_BODY).ok(), Some(server::MAX_BODY));
        // The CEL rules that fill in an absent workers.min use the same default.
        let (_, rules) = &stated["spec.workers"];
        for rule in rules.iter().filter(|r| r.contains("self.min")) {
            assert!(
                rule.contains(&format!("self.min : {})", server::WORKERS)),
                "{rule}"
            );
        }
        assert!(!rules.is_empty());
        // The CRD's ranges end where the server's do.
        let props = |path: &str| {
            let mut node = spec;
            for key in path.split('.').skip(1) {
                node = &node["properties"][key];
            }
            (node["minimum"].as_f64(), node["maximum"].as_f64())
        };
        let limit = f64::from(server::WORKERS_LIMIT);
        for path in [
            "spec.workers.min",
            "spec.workers.max",
            "spec.workers.initial",
        ] {
            assert_eq!(props(path), (Some(1.0), Some(limit)), "{path}");
        }
        let threads = f64::from(server::THREADS_LIMIT);
        assert_eq!(props("spec.workers.threads"), (Some(1.0), Some(threads)));
        // Every stated default of workers, http and lifecycle is in the table above (or is
        // a derived one), so a new field cannot state a default nobody checks.
        for (path, (word, _)) in &stated {
            let server_field = [
                "spec.workers.",
                "spec.http.",
                "spec.lifecycle.",
                "spec.logging.",
                "spec.tls.",
                "spec.http2.",
                "spec.static.",
            ]
            .iter()
            .any(|p| path.starts_with(p));
            let derived = word.starts_with('`') || word == "min" || word == "none";
            let operator_only = [
                "spec.lifecycle.preStopDelaySeconds",
                "spec.http.maxBodySize",
                "spec.tls.port",
                "spec.tls.servicePort",
            ]
            .contains(&path.as_str());
            if server_field && !derived && !operator_only {
                assert!(
                    expected.contains_key(path.as_str()),
                    "{path} (Default: {word}) is not checked"
                );
            }
        }
    }
}
