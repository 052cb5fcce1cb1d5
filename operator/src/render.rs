//! `render`: a [`ValidatedApp`] -> the objects that run it. Pure: no client, no clock.
//!
//! The contract with the server is split in two, by what a change needs:
//!
//! * [`render_serve_args`] builds `wsgiscale serve`'s command line: the application, the
//!   listeners and everything that needs a new process (threads, paths, HTTP limits, logging).
//!   It is the container's `args`, so a change to it changes the pod template and rolls the
//!   Deployment, like a change of image or environment does.
//! * [`render_config_file`] builds the server's config file with the settings it re-reads live
//!   (worker limits, algorithm and its knobs, lifecycle). It is a ConfigMap mounted as a
//!   directory (not a subPath, so the kubelet updates it in place) and is not part of the pod
//!   template: changing `workers.max` updates the file and the running servers reload it,
//!   without a restart.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, ImageVolumeSource, KeyToPath, Lifecycle as ContainerLifecycle, LifecycleHandler,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Service as KubeService, ServicePort,
    ServiceSpec as KubeServiceSpec, SleepAction, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use wsgiscale_core::config::Settings;

use crate::crd::InjectSource;
use crate::layout::{
    ADMIN_PORT_NAME, APP_LABEL, CLIENT_CA_DIR, CLIENT_CA_VOLUME, CONFIG_DIR, CONFIG_KEY,
    CONFIG_VOLUME, CONTAINER_NAME, HTTPS_PORT_NAME, HTTP_PORT_NAME, INJECT_DIR, INJECT_VOLUME,
    TLS_DIR, TLS_VOLUME, TMP_DIR, TMP_VOLUME,
};
use crate::validate::overrides::merge_pod_template;
use crate::validate::{Inject, ProbeTiming, ValidatedApp};

/// The start command of an injected pod: checks the image's Python, then runs the package.
pub const INJECT_START: &str = "/wsgiscale/bin/wsgiscale-start";
/// The init container that copies the package (inject.source Copy).
pub const INJECT_INIT_NAME: &str = "wsgiscale-inject";
/// Label on the pods of apps with spec.inject: the operator watches these pods for the start
/// command's verdict on the image.
pub const INJECT_LABEL: &str = "wsgiscale.dev/inject";
/// Value of `app.kubernetes.io/managed-by` on every child.
pub const MANAGED_BY: &str = "wsgiscale-operator";

/// Everything one WsgiApp runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// The server's live-reloadable config file.
    pub config_map: ConfigMap,
    /// The pods.
    pub deployment: Deployment,
    /// The Service in front of them.
    pub service: KubeService,
    /// One pod down at a time, when replicas.min is above 1.
    pub pdb: Option<PodDisruptionBudget>,
    /// The pods Service (headless, with the selector) of an app on the activator's path:
    /// the activator reads its EndpointSlices.
    pub pods_service: Option<KubeService>,
}

/// How an app's Service is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routed {
    /// The app takes part in the activator's path (the operator has an activator, the app
    /// is autoscaled and has no TLS): it gets a pods Service.
    pub enabled: bool,
    /// The operator's EndpointSlice of the public Service exists: the public Service drops
    /// its selector (only then, so the Service is never without endpoints).
    pub public_slice: bool,
}

/// The suffix of an app's pods Service (with the selector; the activator reads its
/// EndpointSlices).
pub const PODS_SERVICE_SUFFIX: &str = "-pods";

/// The suffix of the EndpointSlice the operator writes for an app's public Service.
pub const PUBLIC_SLICE_SUFFIX: &str = "-wsgiscale";

/// The name of the pods Service of the app `name`.
pub fn pods_service_name(name: &str) -> String {
    format!("{name}{PODS_SERVICE_SUFFIX}")
}

/// The ConfigMap's name for the app `name`.
pub fn config_map_name(name: &str) -> String {
    format!("{name}-config")
}

/// Labels that select the app's pods (Deployment selector, Service, PDB, /scale).
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    [(APP_LABEL.to_string(), name.to_string())].into()
}

/// The selector as the string the scale subresource reports.
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels on every child object.
pub fn common_labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert("app.kubernetes.io/name".into(), name.to_string());
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    labels
}

fn metadata(app: &ValidatedApp, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(app.namespace.clone()),
        labels: Some(common_labels(&app.name)),
        owner_references: Some(vec![app.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// `wsgiscale serve`'s arguments (after the program name): the restart half of the app's
/// [`ValidatedApp::server_settings`], written by the server's own [`Settings::to_args`]. Worker
/// limits and lifecycle are not here: they are in the config file (see
/// [`render_config_file`]), because flags would override the file and defeat its live reload.
/// `--ignore-env` keeps `WSGISCALE_*` variables (an `envFrom` the operator cannot see into)
/// from doing the same.
pub fn render_serve_args(app: &ValidatedApp) -> Vec<String> {
    let (restart, _live) = app.server_settings().split_live();
    std::iter::once("serve".to_string())
        .chain(restart.to_args())
        .collect()
}

/// The server's config file: the live half of the app's settings (its `LiveConfig`), every
/// one written out so the operator's defaults, not the server's, are in force.
pub fn render_config_file(app: &ValidatedApp) -> Settings {
    app.server_settings().split_live().1
}

/// The ConfigMap holding the server's config file.
pub fn render_config_map(app: &ValidatedApp) -> ConfigMap {
    ConfigMap {
        metadata: metadata(app, config_map_name(&app.name)),
        data: Some([(CONFIG_KEY.to_string(), render_config_file(app).to_yaml())].into()),
        ..ConfigMap::default()
    }
}

fn http_get(path: &str) -> Option<HTTPGetAction> {
    Some(HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::String(ADMIN_PORT_NAME.into()),
        ..HTTPGetAction::default()
    })
}

fn render_probe(path: &str, t: ProbeTiming) -> Probe {
    Probe {
        http_get: http_get(path),
        period_seconds: Some(t.period_seconds),
        timeout_seconds: Some(t.timeout_seconds),
        failure_threshold: Some(t.failure_threshold),
        ..Probe::default()
    }
}

fn render_container(app: &ValidatedApp) -> Container {
    let mut mounts = vec![
        VolumeMount {
            name: CONFIG_VOLUME.into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: TMP_VOLUME.into(),
            mount_path: TMP_DIR.into(),
            ..VolumeMount::default()
        },
    ];
    if let Some(inject) = &app.inject {
        mounts.push(VolumeMount {
            name: INJECT_VOLUME.into(),
            mount_path: INJECT_DIR.into(),
            read_only: Some(true),
            // The inject image keeps the package under /wsgiscale; an emptyDir holds only it.
            sub_path: (inject.source == InjectSource::ImageVolume).then(|| "wsgiscale".into()),
            ..VolumeMount::default()
        });
    }
    if let Some(tls) = &app.tls {
        mounts.push(VolumeMount {
            name: TLS_VOLUME.into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        if tls.client_ca_secret_name.is_some() {
            mounts.push(VolumeMount {
                name: CLIENT_CA_VOLUME.into(),
                mount_path: CLIENT_CA_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
    }
    mounts.extend(app.pod.volume_mounts.iter().cloned());
    let mut ports = vec![
        ContainerPort {
            name: Some(HTTP_PORT_NAME.into()),
            container_port: app.port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        },
        ContainerPort {
            name: Some(ADMIN_PORT_NAME.into()),
            container_port: app.admin_port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        },
    ];
    if let Some(tls) = &app.tls {
        ports.push(ContainerPort {
            name: Some(HTTPS_PORT_NAME.into()),
            container_port: tls.port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        });
    }
    let pre_stop = app.lifecycle.pre_stop_delay.as_secs();
    let command = match &app.inject {
        Some(inject) => {
            let mut c = vec![INJECT_START.to_string()];
            if let Some(python) = &inject.python {
                c.extend(["--python".to_string(), python.clone()]);
            }
            c
        }
        None => app.command.clone(),
    };
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(app.image.clone()),
        image_pull_policy: app.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(command),
        args: Some(render_serve_args(app)),
        env: (!app.env.is_empty()).then(|| app.env.clone()),
        env_from: (!app.env_from.is_empty()).then(|| app.env_from.clone()),
        ports: Some(ports),
        resources: app.resources.clone(),
        volume_mounts: Some(mounts),
        // Until the app is imported and a worker is ready (/readyz), only the startup probe
        // runs, within its budget; then /healthz says the master runs and /readyz that a
        // worker can take a request.
        startup_probe: Some(render_probe("/readyz", app.probes.startup)),
        liveness_probe: Some(render_probe("/healthz", app.probes.liveness)),
        readiness_probe: Some(render_probe("/readyz", app.probes.readiness)),
        lifecycle: (pre_stop > 0).then(|| ContainerLifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: pre_stop as i64,
                }),
                ..LifecycleHandler::default()
            }),
            ..ContainerLifecycle::default()
        }),
        security_context: Some(restricted()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// The container security context of every container the operator renders.
fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// The volume that brings the package (and the init container that fills it, for Copy).
fn render_inject(inject: &Inject) -> (Volume, Option<Container>) {
    match inject.source {
        InjectSource::Copy => (
            Volume {
                name: INJECT_VOLUME.into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity("128Mi".into())),
                    ..EmptyDirVolumeSource::default()
                }),
                ..Volume::default()
            },
            Some(Container {
                name: INJECT_INIT_NAME.into(),
                image: Some(inject.image.clone()),
                image_pull_policy: Some("IfNotPresent".into()),
                // The image's entrypoint: cp -a /wsgiscale/. /target/
                volume_mounts: Some(vec![VolumeMount {
                    name: INJECT_VOLUME.into(),
                    mount_path: "/target".into(),
                    ..VolumeMount::default()
                }]),
                resources: Some(ResourceRequirements {
                    requests: Some(
                        [
                            ("cpu".to_string(), Quantity("10m".into())),
                            ("memory".to_string(), Quantity("16Mi".into())),
                        ]
                        .into(),
                    ),
                    limits: Some([("memory".to_string(), Quantity("64Mi".into()))].into()),
                    ..ResourceRequirements::default()
                }),
                security_context: Some(restricted()),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                ..Container::default()
            }),
        ),
        InjectSource::ImageVolume => (
            Volume {
                name: INJECT_VOLUME.into(),
                image: Some(ImageVolumeSource {
                    reference: Some(inject.image.clone()),
                    pull_policy: Some("IfNotPresent".into()),
                }),
                ..Volume::default()
            },
            None,
        ),
    }
}

/// The pod template: what the operator renders, with `spec.podOverrides` merged over it.
fn render_pod_template(app: &ValidatedApp) -> PodTemplateSpec {
    merge_pod_template(render_own_pod_template(app), app.pod_overrides.as_ref())
}

fn render_own_pod_template(app: &ValidatedApp) -> PodTemplateSpec {
    let pod = &app.pod;
    // Our labels, then the user's on top, then the selector label (reserved by validation).
    let mut labels = common_labels(&app.name);
    labels.extend(pod.labels.clone());
    labels.extend(selector_labels(&app.name));
    let mut annotations = pod.annotations.clone();
    annotations.insert(
        "kubectl.kubernetes.io/default-container".into(),
        CONTAINER_NAME.into(),
    );

    let mut volumes = vec![
        Volume {
            name: CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map_name(&app.name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: TMP_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mut init_containers = Vec::new();
    if let Some(inject) = &app.inject {
        let (volume, init) = render_inject(inject);
        volumes.push(volume);
        init_containers.extend(init);
        labels.insert(INJECT_LABEL.into(), "true".into());
    }
    if let Some(tls) = &app.tls {
        volumes.push(secret_volume(
            TLS_VOLUME,
            &tls.secret_name,
            &["tls.crt", "tls.key"],
        ));
        if let Some(ca) = &tls.client_ca_secret_name {
            volumes.push(secret_volume(CLIENT_CA_VOLUME, ca, &["ca.crt"]));
        }
    }
    volumes.extend(pod.volumes.iter().cloned());

    let spread: Vec<_> = pod
        .topology_spread_constraints
        .iter()
        .cloned()
        .map(|mut c| {
            if c.label_selector.is_none() {
                c.label_selector = Some(LabelSelector {
                    match_labels: Some(selector_labels(&app.name)),
                    ..LabelSelector::default()
                });
            }
            c
        })
        .collect();

    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers: vec![render_container(app)],
            volumes: Some(volumes),
            service_account_name: pod.service_account_name.clone(),
            // No API token unless the app asked for an identity of its own.
            automount_service_account_token: Some(pod.service_account_name.is_some()),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: pod.run_as_user,
                run_as_group: pod.run_as_group,
                fs_group: pod.fs_group,
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            termination_grace_period_seconds: Some(
                app.lifecycle.termination_grace_period_seconds(),
            ),
            image_pull_secrets: (!app.image_pull_secrets.is_empty())
                .then(|| app.image_pull_secrets.clone()),
            node_selector: (!pod.node_selector.is_empty()).then(|| pod.node_selector.clone()),
            tolerations: (!pod.tolerations.is_empty()).then(|| pod.tolerations.clone()),
            affinity: pod.affinity.clone(),
            topology_spread_constraints: (!spread.is_empty()).then_some(spread),
            priority_class_name: pod.priority_class_name.clone(),
            ..PodSpec::default()
        }),
    }
}

/// A volume of the Secret `secret` with only `keys` (a missing key keeps the pod from
/// starting, with the kubelet's event saying which). Mounted whole, never by subPath, so
/// that the kubelet's updates after a renewal reach the running server.
fn secret_volume(name: &str, secret: &str, keys: &[&str]) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(
                keys.iter()
                    .map(|k| KeyToPath {
                        key: (*k).into(),
                        path: (*k).into(),
                        ..KeyToPath::default()
                    })
                    .collect(),
            ),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The Deployment running `replicas` pods of the server.
pub fn render_deployment(app: &ValidatedApp, replicas: i32) -> Deployment {
    Deployment {
        metadata: metadata(app, app.name.clone()),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&app.name)),
                ..LabelSelector::default()
            },
            // Start a new pod before stopping an old one: no capacity lost during a rollout.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: render_pod_template(app),
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The Service in front of the pods (HTTP only; the admin port stays pod-local).
pub fn render_service(app: &ValidatedApp) -> KubeService {
    render_public_service(app, Routed::default())
}

/// A TCP Service port `port` named `name`, to the container port of the same name.
fn service_port((name, port): (&str, i32)) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// The headless pods Service of an app on the activator's path: the pods' HTTP and admin
/// ports, selected by the app's labels; the endpointslice controller lists its pods.
pub fn render_pods_service(app: &ValidatedApp) -> KubeService {
    let meta = metadata(app, pods_service_name(&app.name));
    KubeService {
        metadata: meta,
        spec: Some(KubeServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(&app.name)),
            // The activator probes pods that are not ready yet.
            publish_not_ready_addresses: Some(false),
            ports: Some(
                [
                    (HTTP_PORT_NAME, app.port),
                    (ADMIN_PORT_NAME, app.admin_port),
                ]
                .into_iter()
                .map(service_port)
                .collect(),
            ),
            ..KubeServiceSpec::default()
        }),
        ..KubeService::default()
    }
}

/// The app's public Service: with a selector, unless the operator writes its EndpointSlice
/// (`routed.public_slice`).
pub fn render_public_service(app: &ValidatedApp, routed: Routed) -> KubeService {
    let mut meta = metadata(app, app.name.clone());
    if let Some(labels) = meta.labels.as_mut() {
        let mut merged = app.service.labels.clone();
        merged.extend(std::mem::take(labels));
        *labels = merged;
    }
    if !app.service.annotations.is_empty() {
        meta.annotations = Some(app.service.annotations.clone());
    }
    KubeService {
        metadata: meta,
        spec: Some(KubeServiceSpec {
            type_: Some(app.service.type_.as_str().into()),
            selector: (!(routed.enabled && routed.public_slice))
                .then(|| selector_labels(&app.name)),
            ports: Some(
                std::iter::once((HTTP_PORT_NAME, app.service.port))
                    .chain(app.tls.as_ref().map(|t| (HTTPS_PORT_NAME, t.service_port)))
                    .map(service_port)
                    .collect(),
            ),
            ..KubeServiceSpec::default()
        }),
        ..KubeService::default()
    }
}

/// A PodDisruptionBudget allowing one pod down at a time, when `replicas.min` is above 1.
pub fn render_pdb(app: &ValidatedApp) -> Option<PodDisruptionBudget> {
    (app.replicas.min > 1).then(|| PodDisruptionBudget {
        metadata: metadata(app, app.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&app.name)),
                ..LabelSelector::default()
            }),
            // A crash-looping pod must not block node drains.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// Every child of the app, the Deployment sized to `replicas`.
pub fn render_children(app: &ValidatedApp, replicas: i32) -> Children {
    render_routed_children(app, replicas, Routed::default())
}

/// Every child of the app, routed as `routed` says.
pub fn render_routed_children(app: &ValidatedApp, replicas: i32, routed: Routed) -> Children {
    Children {
        config_map: render_config_map(app),
        deployment: render_deployment(app, replicas),
        service: render_public_service(app, routed),
        pdb: render_pdb(app),
        pods_service: routed.enabled.then(|| render_pods_service(app)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::EnvVar;
    use proptest::prelude::*;
    use wsgiscale_core::config::{
        parse_serve_argv, resolve, Algorithm, BindAddr, ForwardedHeaders, HeaderLimits, LogFormat,
        OutsideRootPath, ServerConfig, WorkerLimits,
    };

    use super::*;
    use crate::crd::{
        BusynessSpec, ClientVerify, HooksSpec, Http2Spec, HttpSpec, LifecycleSpec, LimitsSpec,
        LoggingSpec, PodOverrides, ProxySpec, StaticMountSpec, StaticSpec, TlsSpec, WorkersSpec,
        WsgiApp,
    };
    use crate::fixtures::mk_app;
    use crate::validate::validate_app;

    fn valid(app: &WsgiApp) -> ValidatedApp {
        validate_app(app).expect("fixture is valid")
    }

    /// Parses the rendered container back with the server's parser, as the server will (with
    /// `--ignore-env`, blind to the environment), and checks it is what was validated.
    fn parse_back(app: &ValidatedApp) -> ServerConfig {
        let dep = render_deployment(app, 1);
        let c = &dep.spec.template.spec.expect("pod").containers[0];
        let mut argv = vec!["wsgiscale".to_string()];
        argv.extend(c.args.clone().expect("args"));
        let args = parse_serve_argv(argv).expect("the server parses the args");
        assert!(args.ignore_env, "the pods take no WSGISCALE_* variable");
        let cm = render_config_map(app);
        let text = &cm.data.expect("data")[CONFIG_KEY];
        let file = Settings::from_yaml(text).expect("the server parses the rendered file");
        assert_eq!(
            args.config.as_deref(),
            Some(std::path::Path::new("/etc/wsgiscale/config.yaml"))
        );
        assert!(
            file.overridden_by(&args).is_empty(),
            "no flag pins a live setting"
        );
        let cfg = resolve(&args.over(&file), None).expect("the server accepts the config");
        assert_eq!(Ok(&cfg), resolve(&app.server_settings(), None).as_ref());
        cfg
    }

    #[test]
    fn rendered_command_line_and_file_round_trip_through_the_server_parser() {
        let app = mk_app("shop").map(|a| {
            a.spec.app = "shop.wsgi:application".into();
            a.spec.port = Some(8080);
            a.spec.admin_port = Some(9000);
            a.spec.chdir = Some("/srv/app".into());
            a.spec.pythonpath = vec!["/srv/lib".into(), "/srv/vendor".into()];
            a.spec.venv = Some("/opt/venv".into());
            a.spec.preload = Some(false);
            a.spec.workers = Some(WorkersSpec {
                min: Some(2),
                max: Some(12),
                initial: Some(4),
                threads: Some(3),
                step: Some(2),
                algorithm: Some(Algorithm::Busyness),
                overload_checks: Some(5),
                idle_checks: Some(7),
                backlog: Some(9),
                busyness: Some(BusynessSpec {
                    min_percent: Some(20),
                    max_percent: Some(60),
                    multiplier: Some(8),
                    penalty: Some(3),
                    backlog: Some(40),
                }),
            });
            a.spec.lifecycle = Some(LifecycleSpec {
                timeout_seconds: Some(30),
                max_requests: Some(5000),
                max_requests_jitter: Some(500),
                max_lifetime_seconds: Some(3600),
                max_rss: Some("300Mi".into()),
                graceful_timeout_seconds: Some(40),
                pre_stop_delay_seconds: Some(3),
            });
            a.spec.http = Some(HttpSpec {
                max_body_size: Some("10Mi".into()),
                max_queue: Some(256),
                keepalive_timeout_seconds: Some(120),
                body_timeout_seconds: Some(30),
                access_log: Some(true),
                access_log_request_headers: vec!["X-Request-ID".into(), "traceparent".into()],
                access_log_response_headers: vec!["Content-Type".into()],
                proxy: Some(ProxySpec {
                    forwarded_allow_ips: Some(vec!["10.244.0.0/16".into(), "fd00::/8".into()]),
                    forwarded_headers: Some(ForwardedHeaders::Forwarded),
                    root_path: Some("/shop/".into()),
                    outside_root_path: Some(OutsideRootPath::Pass),
                }),
                limits: Some(LimitsSpec {
                    request_line_bytes: Some(8192),
                    header_fields: Some(150),
                    header_field_bytes: Some(65536),
                    headers_bytes: Some(131072),
                }),
            });
            a.spec.static_files = Some(StaticSpec {
                mounts: vec![
                    StaticMountSpec {
                        url_prefix: "/static/".into(),
                        directory: "/srv/app/staticfiles".into(),
                    },
                    StaticMountSpec {
                        url_prefix: "/media".into(),
                        directory: "/srv/media".into(),
                    },
                ],
                max_age_seconds: Some(86400),
            });
            a.spec.logging = Some(LoggingSpec {
                format: Some(LogFormat::Json),
                level: Some("wsgiscale=debug".into()),
            });
            a.spec.hooks = Some(HooksSpec {
                post_fork: Some("shop.hooks:post_fork".into()),
                worker_exit: Some("/srv/app/gunicorn.conf.py:worker_exit".into()),
                ..HooksSpec::default()
            });
            a.spec.tls = Some(TlsSpec {
                secret_name: "shop-tls".into(),
                port: Some(9443),
                service_port: None,
                client_verify: Some(ClientVerify::Require),
                client_ca_secret_name: Some("shop-clients".into()),
            });
            a.spec.http2 = Some(Http2Spec {
                enabled: Some(false),
                h2c: Some(true),
                h2c_allow_ips: vec!["10.0.0.0/8".into()],
            });
        });
        let cfg = parse_back(&valid(&app));
        assert_eq!(
            cfg.python
                .hooks
                .post_fork
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("shop.hooks:post_fork")
        );
        assert_eq!(
            cfg.python
                .hooks
                .worker_exit
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("/srv/app/gunicorn.conf.py:worker_exit")
        );
        let tls = cfg.protocols.tls.clone().expect("tls");
        assert_eq!(
            tls.binds,
            vec![BindAddr::Tcp("0.0.0.0:9443".parse().expect("addr"))]
        );
        assert_eq!(tls.cert, std::path::Path::new("/etc/wsgiscale-tls/tls.crt"));
        assert_eq!(tls.key, std::path::Path::new("/etc/wsgiscale-tls/tls.key"));
        assert_eq!(
            tls.client_ca.as_deref(),
            Some(std::path::Path::new("/etc/wsgiscale-client-ca/ca.crt"))
        );
        assert_eq!(tls.client_verify, ClientVerify::Require);
        assert!(!cfg.protocols.http2 && cfg.protocols.h2c);
        assert_eq!(cfg.protocols.h2c_allow.len(), 1);

        assert_eq!(
            cfg.binds,
            vec![BindAddr::Tcp("0.0.0.0:8080".parse().expect("addr"))]
        );
        assert_eq!(
            cfg.admin_bind,
            BindAddr::Tcp("0.0.0.0:9000".parse().expect("addr"))
        );
        assert_eq!(cfg.python.app.to_string(), "shop.wsgi:application");
        assert_eq!(
            cfg.python.chdir.as_deref(),
            Some(std::path::Path::new("/srv/app"))
        );
        assert_eq!(
            cfg.python.pythonpath,
            vec![std::path::PathBuf::from("/srv/lib"), "/srv/vendor".into()]
        );
        assert_eq!(
            cfg.python.venv.as_deref(),
            Some(std::path::Path::new("/opt/venv"))
        );
        assert!(!cfg.python.preload);
        assert_eq!(cfg.python.threads, 3);
        assert_eq!(
            cfg.live.workers,
            WorkerLimits {
                min: 2,
                max: 12,
                initial: 4
            }
        );
        let s = cfg.live.scaling;
        assert_eq!(s.algo, Algorithm::Busyness);
        assert_eq!((s.step, s.overload, s.idle, s.backlog), (2, 5, 7, 9));
        assert_eq!(
            (
                s.busyness_min,
                s.busyness_max,
                s.busyness_multiplier,
                s.busyness_penalty,
                s.busyness_backlog
            ),
            (20, 60, 8, 3, 40)
        );
        let l = cfg.live.lifecycle;
        assert_eq!(l.timeout, Some(Duration::from_secs(30)));
        assert_eq!((l.max_requests, l.max_requests_jitter), (5000, 500));
        assert_eq!(l.max_lifetime, Some(Duration::from_secs(3600)));
        assert_eq!(l.max_rss, Some(300 << 20));
        assert_eq!(cfg.http.max_body, 10 << 20);
        assert_eq!(cfg.http.max_queue, 256);
        assert_eq!(cfg.http.keepalive_timeout, Duration::from_secs(120));
        assert_eq!(cfg.http.body_timeout, Duration::from_secs(30));
        assert_eq!(cfg.http.graceful_timeout, Duration::from_secs(40));
        assert!(cfg.http.access_log.enabled);
        assert_eq!(
            cfg.http
                .access_log
                .request_headers
                .iter()
                .map(|h| h.as_str())
                .collect::<Vec<_>>(),
            ["x-request-id", "traceparent"]
        );
        assert_eq!(cfg.http.access_log.response_headers.len(), 1);
        let p = &cfg.http.proxy;
        assert_eq!(p.trusted.to_string(), "10.244.0.0/16,fd00::/8");
        assert_eq!(p.headers, ForwardedHeaders::Forwarded);
        assert_eq!(p.root_path.as_str(), "/shop");
        assert_eq!(p.outside_root_path, OutsideRootPath::Pass);
        assert_eq!(
            cfg.http.limits,
            HeaderLimits {
                request_line: 8192,
                fields: 150,
                field_size: 65536,
                headers_size: 131072
            }
        );
        assert_eq!(
            cfg.http
                .static_files
                .mounts
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>(),
            ["/static=/srv/app/staticfiles", "/media=/srv/media"]
        );
        assert_eq!(
            cfg.http.static_files.max_age,
            Some(Duration::from_secs(86400))
        );
        assert_eq!(cfg.log.format, LogFormat::Json);
        assert_eq!(cfg.log.level, "wsgiscale=debug");
    }

    #[test]
    fn tls_mounts_its_secrets_whole_and_opens_an_https_port() {
        let app = mk_app("shop").map(|a| {
            a.spec.tls = Some(TlsSpec {
                secret_name: "shop-tls".into(),
                client_verify: Some(ClientVerify::Optional),
                client_ca_secret_name: Some("shop-clients".into()),
                ..TlsSpec::default()
            });
        });
        let app = valid(&app);
        let pod = render_deployment(&app, 1).spec.template.spec.expect("pod");
        let volume = |name: &str| {
            pod.volumes
                .iter()
                .flatten()
                .find(|v| v.name == name)
                .and_then(|v| v.secret.clone())
                .unwrap_or_else(|| panic!("no secret volume {name}"))
        };
        assert_eq!(volume(TLS_VOLUME).secret_name.as_deref(), Some("shop-tls"));
        assert_eq!(
            volume(CLIENT_CA_VOLUME).secret_name.as_deref(),
            Some("shop-clients")
        );
        let c = &pod.containers[0];
        let mounts = c.volume_mounts.clone().expect("mounts");
        for (name, path) in [(TLS_VOLUME, TLS_DIR), (CLIENT_CA_VOLUME, CLIENT_CA_DIR)] {
            let m = mounts.iter().find(|m| m.name == name).expect("mounted");
            assert_eq!(m.mount_path, path);
            // A subPath mount would never see the kubelet's update after a renewal.
            assert_eq!(m.sub_path, None);
            assert_eq!(m.read_only, Some(true));
        }
        let https = c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(HTTPS_PORT_NAME))
            .expect("https port");
        assert_eq!(https.container_port, 8443);
        let svc = render_service(&app).spec.expect("spec");
        let ports = svc.ports.expect("ports");
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[1].port, 443);
        assert_eq!(
            ports[1].target_port,
            Some(IntOrString::String(HTTPS_PORT_NAME.into()))
        );
        let cfg = parse_back(&app);
        assert_eq!(cfg.binds.len(), 1, "the plain port keeps serving");
        assert!(cfg.protocols.http2 && !cfg.protocols.h2c);
        // Without TLS: no Secret, no https port.
        let plain = valid(&mk_app("shop"));
        assert_eq!(
            render_service(&plain)
                .spec
                .expect("spec")
                .ports
                .expect("ports")
                .len(),
            1
        );
        assert!(parse_back(&plain).protocols.tls.is_none());
    }

    #[test]
    fn defaults_round_trip_and_lifecycle_off_stays_off() {
        let cfg = parse_back(&valid(&mk_app("shop")));
        assert_eq!(
            cfg.live.workers,
            WorkerLimits {
                min: 2,
                max: 2,
                initial: 2
            }
        );
        assert_eq!(cfg.live.lifecycle.timeout, None);
        assert_eq!(cfg.live.lifecycle.max_lifetime, None);
        assert_eq!(cfg.live.lifecycle.max_rss, None);
        assert_eq!(cfg.live.lifecycle.max_requests, 0);
        assert!(cfg.python.preload);
        assert_eq!(cfg.http.graceful_timeout, Duration::from_secs(25));
        assert_eq!(
            cfg.admin_bind,
            BindAddr::Tcp("0.0.0.0:9191".parse().expect("addr"))
        );
    }

    #[test]
    fn config_file_holds_only_live_settings() {
        // Resolving with and without the file must agree on everything the server does not
        // reload live: otherwise a ConfigMap change would need a restart to take effect.
        let app = valid(&mk_app("shop").with_workers(2, Some(9)));
        let argv = std::iter::once("wsgiscale".to_string()).chain(render_serve_args(&app));
        let args = parse_serve_argv(argv).expect("parses");
        let with_file = resolve(&args.over(&render_config_file(&app)), None).expect("valid");
        let without = resolve(&args, None).expect("valid");
        assert_ne!(with_file.live, without.live);
        assert_eq!(
            ServerConfig {
                live: without.live,
                ..with_file.clone()
            },
            without
        );
        let file = render_config_file(&app);
        assert_eq!(file.app, None);
        assert!(file.bind.is_empty());
        assert_eq!(file.threads, None);
    }

    #[test]
    fn live_changes_touch_only_the_config_map_and_others_roll_the_pods() {
        let base = mk_app("shop").with_workers(2, Some(4));
        let before = render_children(&valid(&base), 2);

        let more_workers = base.clone().with_workers(2, Some(16));
        let after = render_children(&valid(&more_workers), 2);
        assert_eq!(
            before.deployment, after.deployment,
            "pod template must not change"
        );
        assert_ne!(before.config_map, after.config_map);

        let lifecycle = base.clone().map(|a| {
            a.spec.lifecycle = Some(LifecycleSpec {
                max_requests: Some(1000),
                ..LifecycleSpec::default()
            })
        });
        let after = render_children(&valid(&lifecycle), 2);
        assert_eq!(before.deployment, after.deployment);
        assert_ne!(before.config_map, after.config_map);

        let template = |c: &Children| c.deployment.spec.template.clone();
        for changed in [
            base.clone()
                .map(|a| a.spec.image = "registry.example.com/shop:2.0".into()),
            base.clone().with_app("shop.other:app"),
            base.clone().map(|a| {
                a.spec.env = vec![EnvVar {
                    name: "DJANGO_SETTINGS_MODULE".into(),
                    value: Some("shop.settings".into()),
                    ..EnvVar::default()
                }]
            }),
            base.clone()
                .map(|a| a.spec.workers.get_or_insert_with(Default::default).threads = Some(4)),
        ] {
            let after = render_children(&valid(&changed), 2);
            assert_ne!(template(&before), template(&after), "{:?}", changed.spec);
            assert_eq!(before.config_map, after.config_map);
        }
    }

    #[test]
    fn pods_are_hardened_and_probed_on_the_admin_port() {
        let app = valid(&mk_app("shop"));
        let dep = render_deployment(&app, 3);
        let spec = dep.spec;
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.expect("pod");
        let psc = pod.security_context.expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.expect("seccomp").type_,
            "RuntimeDefault"
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.termination_grace_period_seconds, Some(39));
        let c = &pod.containers[0];
        let sc = c
            .security_context
            .clone()
            .expect("container security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.expect("caps").drop,
            Some(vec!["ALL".to_string()])
        );
        let live = c
            .liveness_probe
            .clone()
            .expect("liveness")
            .http_get
            .expect("http");
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        assert_eq!(live.port, IntOrString::String("admin".into()));
        let ready = c
            .readiness_probe
            .clone()
            .expect("readiness")
            .http_get
            .expect("http");
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        // Five minutes to import the app and start a worker, /readyz every 2 s.
        let startup = c.startup_probe.clone().expect("startup");
        assert_eq!(
            startup.http_get.and_then(|h| h.path).as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            (startup.period_seconds, startup.failure_threshold),
            (Some(2), Some(150))
        );
        let sleep = c
            .lifecycle
            .clone()
            .and_then(|l| l.pre_stop)
            .and_then(|h| h.sleep)
            .expect("preStop sleep");
        assert_eq!(sleep.seconds, 5);
        let mounts = c.volume_mounts.clone().expect("mounts");
        assert!(mounts
            .iter()
            .any(|m| m.mount_path == "/tmp" && m.read_only.is_none()));
        assert!(mounts.iter().any(|m| m.mount_path == "/etc/wsgiscale"
            && m.read_only == Some(true)
            && m.sub_path.is_none()));
        let ports = c.ports.clone().expect("ports");
        assert_eq!(ports[0].container_port, 8000);
        assert_eq!(ports[1].container_port, 9191);
        assert_eq!(c.command, Some(vec!["wsgiscale".to_string()]));
    }

    #[test]
    fn grace_period_follows_the_graceful_timeout() {
        let app = mk_app("shop").map(|a| {
            a.spec.lifecycle = Some(LifecycleSpec {
                graceful_timeout_seconds: Some(60),
                pre_stop_delay_seconds: Some(0),
                ..LifecycleSpec::default()
            })
        });
        let v = valid(&app);
        let pod = render_deployment(&v, 1).spec.template.spec.expect("pod");
        // 60 s of drain, 5 s for the workers to exit, 2 + 2 s for the fork server. The old
        // 5 s margin (65) let the kubelet's SIGKILL cut the fork server's stop.
        assert_eq!(pod.termination_grace_period_seconds, Some(69));
        assert_eq!(
            pod.containers[0].lifecycle, None,
            "no preStop when the delay is 0"
        );
        // The server's own budget, from what it is given, fits in the grace period.
        let cfg = resolve(&v.server_settings(), None).expect("valid");
        let grace = Duration::from_secs(pod.termination_grace_period_seconds.expect("set") as u64);
        let budget = wsgiscale_core::shutdown::ShutdownBudget::new(cfg.http.graceful_timeout);
        assert!(budget.total() <= grace, "{budget:?} in {grace:?}");
    }

    #[test]
    fn every_child_is_owned_labelled_and_selects_the_pods() {
        let app = valid(&mk_app("shop").with_replicas(2, Some(6)));
        let c = render_children(&app, 2);
        let pdb = c.pdb.clone().expect("min > 1 renders a PDB");
        let metas = [
            &c.config_map.metadata,
            &c.deployment.metadata,
            &c.service.metadata,
            &pdb.metadata,
        ];
        for meta in metas {
            let owners = meta.owner_references.clone().expect("owner");
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].uid, "5f1a2b3c-0000-4000-8000-000000000001");
            assert_eq!(owners[0].controller, Some(true));
            assert_eq!(owners[0].block_owner_deletion, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("default"));
            assert_eq!(meta.labels.clone().expect("labels")[APP_LABEL], "shop");
        }
        let selector = selector_labels("shop");
        let dep = c.deployment.spec;
        assert_eq!(dep.selector.match_labels.as_ref(), Some(&selector));
        let pod_labels = dep.template.metadata.expect("meta").labels.expect("labels");
        assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        assert_eq!(
            c.service.spec.expect("spec").selector,
            Some(selector.clone())
        );
        assert_eq!(
            pdb.spec
                .expect("spec")
                .selector
                .expect("selector")
                .match_labels,
            Some(selector)
        );
        assert!(render_children(&valid(&mk_app("shop")), 1).pdb.is_none());
        assert_eq!(selector_string("shop"), "wsgiscale.dev/app=shop");
    }

    #[test]
    fn user_pod_settings_are_carried_and_spread_gets_our_selector() {
        use k8s_openapi::api::core::v1::TopologySpreadConstraint;
        let app = mk_app("shop").map(|a| {
            a.spec.pod = Some(PodOverrides {
                labels: [("team".to_string(), "web".to_string())].into(),
                annotations: [("a".to_string(), "b".to_string())].into(),
                topology_spread_constraints: vec![TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: "topology.kubernetes.io/zone".into(),
                    when_unsatisfiable: "ScheduleAnyway".into(),
                    ..TopologySpreadConstraint::default()
                }],
                service_account_name: Some("shop".into()),
                ..PodOverrides::default()
            })
        });
        let tpl = render_deployment(&valid(&app), 1).spec.template;
        let meta = tpl.metadata.expect("meta");
        assert_eq!(meta.labels.expect("labels")["team"], "web");
        assert_eq!(meta.annotations.expect("annotations")["a"], "b");
        let pod = tpl.spec.expect("pod");
        let spread = pod.topology_spread_constraints.expect("spread");
        assert_eq!(
            spread[0]
                .label_selector
                .clone()
                .and_then(|s| s.match_labels),
            Some(selector_labels("shop"))
        );
        assert_eq!(pod.service_account_name.as_deref(), Some("shop"));
        assert_eq!(pod.automount_service_account_token, Some(true));
    }

    #[test]
    fn probe_settings_and_pod_overrides_reach_the_pod() {
        use crate::crd::{ProbeTiming, ProbesSpec};
        let app = mk_app("shop").map(|a| {
            a.spec.probes = Some(ProbesSpec {
                startup_timeout_seconds: Some(601),
                liveness: Some(ProbeTiming {
                    period_seconds: Some(30),
                    ..ProbeTiming::default()
                }),
                readiness: None,
            });
            a.spec.pod_overrides = Some(serde_json::json!({
                "metadata": {"annotations": {"a": "b"}},
                "spec": {
                    "initContainers": [{"name": "migrate", "image": "shop:1", "command": ["migrate"]},
                                       {"name": "proxy", "image": "proxy:2", "restartPolicy": "Always"}],
                    "containers": [{"name": "app", "readinessProbe": {"periodSeconds": 1},
                                    "securityContext": {"readOnlyRootFilesystem": false}}],
                    "volumes": [{"name": "media", "emptyDir": {}}],
                    "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["db"]}],
                },
            }));
        });
        let tpl = render_deployment(&valid(&app), 1).spec.template;
        assert_eq!(
            tpl.metadata.expect("meta").annotations.expect("a")["a"],
            "b"
        );
        let pod = tpl.spec.expect("pod");
        let c = &pod.containers[0];
        let startup = c.startup_probe.clone().expect("startup");
        assert_eq!(startup.failure_threshold, Some(301), "601 s in 2 s probes");
        let live = c.liveness_probe.clone().expect("liveness");
        assert_eq!(
            (live.period_seconds, live.failure_threshold),
            (Some(30), Some(3))
        );
        let ready = c.readiness_probe.clone().expect("readiness");
        assert_eq!(ready.period_seconds, Some(1));
        assert_eq!(
            ready.http_get.and_then(|h| h.path).as_deref(),
            Some("/readyz"),
            "the handler stays"
        );
        let sc = c.security_context.clone().expect("sc");
        assert_eq!(sc.read_only_root_filesystem, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true), "the rest stays");
        let init: Vec<&str> = pod
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(init, ["migrate", "proxy"]);
        let volumes: Vec<&str> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, [CONFIG_VOLUME, TMP_VOLUME, "media"]);
        assert_eq!(pod.host_aliases.expect("aliases")[0].ip, "10.0.0.1");
        assert_eq!(c.image.as_deref(), Some("registry.example.com/shop:1.0"));
    }

    proptest! {
        /// Any worker range and lifecycle the CRD admits renders to something the server
        /// accepts with the same values.
        #[test]
        fn any_valid_worker_range_round_trips(
            min in 1i32..64, extra in 0i32..64, initial_off in 0i32..64,
            timeout in 0i32..600, max_requests in 0i64..100_000,
        ) {
            let max = min + extra;
            let initial = min + initial_off % (extra + 1);
            let app = mk_app("shop").map(|a| {
                a.spec.workers = Some(WorkersSpec {
                    min: Some(min), max: Some(max), initial: Some(initial),
                    ..WorkersSpec::default()
                });
                a.spec.lifecycle = Some(LifecycleSpec {
                    timeout_seconds: Some(timeout),
                    max_requests: Some(max_requests),
                    ..LifecycleSpec::default()
                });
            });
            let cfg = parse_back(&valid(&app));
            prop_assert_eq!(cfg.live.workers, WorkerLimits {
                min: min as u32, max: max as u32, initial: initial as u32,
            });
            prop_assert_eq!(cfg.live.lifecycle.timeout, (timeout > 0).then(|| Duration::from_secs(timeout as u64)));
            prop_assert_eq!(cfg.live.lifecycle.max_requests, max_requests as u64);
        }
    }

    fn inject_volume(pod: &PodSpec) -> &Volume {
        pod.volumes
            .iter()
            .flatten()
            .find(|v| v.name == INJECT_VOLUME)
            .expect("the inject volume")
    }

    fn inject_mount(c: &Container) -> &VolumeMount {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == INJECT_VOLUME)
            .expect("the package is mounted")
    }

    #[test]
    fn injected_pod_copies_the_package_and_starts_through_the_check() {
        use crate::crd::InjectSpec;
        let plain = valid(&mk_app("shop"));
        let app = valid(&mk_app("shop").map(|a| {
            a.spec.inject = Some(InjectSpec {
                enabled: Some(true),
                ..InjectSpec::default()
            })
        }));
        let dep = render_deployment(&app, 2);
        let template = dep.spec.template;
        let pod = template.spec.expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.command.as_deref(), Some(&[INJECT_START.to_string()][..]));
        // The same server arguments as without inject: live limits, probes, ports unchanged.
        assert_eq!(c.args, Some(render_serve_args(&plain)));
        let plain_dep = render_deployment(&plain, 2);
        let plain_c = &plain_dep
            .spec
            .template
            .spec
            .as_ref()
            .expect("pod")
            .containers[0];
        assert_eq!(c.liveness_probe, plain_c.liveness_probe);
        assert_eq!(c.readiness_probe, plain_c.readiness_probe);
        assert_eq!(c.ports, plain_c.ports);
        let mount = inject_mount(c);
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            (INJECT_DIR, Some(true))
        );
        let init = pod.init_containers.as_ref().expect("an init container");
        assert_eq!(init.len(), 1);
        assert_eq!(init[0].name, INJECT_INIT_NAME);
        assert_eq!(
            init[0].image.as_deref(),
            Some(
                format!(
                    "ghcr.io/wsgiscale/wsgiscale-inject:{}",
                    env!("CARGO_PKG_VERSION")
                )
                .as_str()
            )
        );
        assert_eq!(init[0].security_context, Some(restricted()));
        assert_eq!(
            init[0].volume_mounts.as_ref().expect("mount")[0].mount_path,
            "/target"
        );
        let volume = inject_volume(&pod);
        assert!(volume.empty_dir.is_some());
        let labels = template.metadata.expect("meta").labels.expect("labels");
        assert_eq!(labels.get(INJECT_LABEL).map(String::as_str), Some("true"));
        // Without inject nothing of it is rendered.
        let plain_pod = plain_dep.spec.template.spec.expect("pod");
        assert!(plain_pod.init_containers.is_none());
        assert!(!plain_pod
            .volumes
            .expect("volumes")
            .iter()
            .any(|v| v.name == INJECT_VOLUME));
    }

    #[test]
    fn injected_pod_with_an_image_volume_and_a_named_python() {
        use crate::crd::{InjectSource, InjectSpec};
        let app = valid(&mk_app("shop").map(|a| {
            a.spec.inject = Some(InjectSpec {
                enabled: Some(true),
                source: Some(InjectSource::ImageVolume),
                image: Some("registry.local/wsgiscale-inject:0.1.0".into()),
                python: Some("/usr/local/bin/python3.12".into()),
            })
        }));
        let pod = render_deployment(&app, 1).spec.template.spec.expect("pod");
        assert!(
            pod.init_containers.is_none(),
            "no copy with an image volume"
        );
        let volume = inject_volume(&pod);
        let image = volume.image.as_ref().expect("an image volume");
        assert_eq!(
            image.reference.as_deref(),
            Some("registry.local/wsgiscale-inject:0.1.0")
        );
        let c = &pod.containers[0];
        assert_eq!(
            c.command.clone().expect("command"),
            vec![
                INJECT_START.to_string(),
                "--python".into(),
                "/usr/local/bin/python3.12".into()
            ]
        );
        let mount = inject_mount(c);
        assert_eq!(mount.sub_path.as_deref(), Some("wsgiscale"));
    }
}
