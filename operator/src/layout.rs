//! The pod's fixed layout: the label, container, port and volume names and the mount paths
//! that [`crate::render`] writes, [`crate::validate`] keeps out of the user's hands (labels,
//! `spec.podOverrides`) and the autoscaler, the caches and the activator's routing look for.
//! Constants only, so that every module that names a part of the pod takes the name from here.

// Labels.
/// The pod label that selects an app's pods; reserved in `spec.pod.labels`.
pub const APP_LABEL: &str = "wsgiscale.dev/app";
/// Label keys under this prefix are the operator's.
pub const RESERVED_LABEL_PREFIX: &str = "wsgiscale.dev/";

// The server container and its ports.
/// The name of the server container.
pub const CONTAINER_NAME: &str = "app";
/// Name of the HTTP container port (the Service targets it by name).
pub const HTTP_PORT_NAME: &str = "http";
/// Name of the HTTPS container and Service port.
pub const HTTPS_PORT_NAME: &str = "https";
/// Name of the admin container port (probes and scraping use it by name).
pub const ADMIN_PORT_NAME: &str = "admin";

// Volumes and where they are mounted.
/// Prefix of volume names the operator reserves.
pub const RESERVED_VOLUME_PREFIX: &str = "wsgiscale-";
/// Volume holding the ConfigMap.
pub const CONFIG_VOLUME: &str = "wsgiscale-config";
/// Volume backing /tmp.
pub const TMP_VOLUME: &str = "wsgiscale-tmp";
/// Volume holding the injected package (spec.inject).
pub const INJECT_VOLUME: &str = "wsgiscale-inject";
/// Volume holding spec.tls's Secret.
pub const TLS_VOLUME: &str = "wsgiscale-tls";
/// Volume holding spec.tls's client CA Secret.
pub const CLIENT_CA_VOLUME: &str = "wsgiscale-client-ca";
/// Where the server's config file is mounted.
pub const CONFIG_DIR: &str = "/etc/wsgiscale";
/// The writable emptyDir for the read-only root filesystem.
pub const TMP_DIR: &str = "/tmp";
/// Where spec.inject mounts the package in the app container.
pub const INJECT_DIR: &str = "/wsgiscale";
/// The config file's key in the ConfigMap (and so its file name in [`CONFIG_DIR`]).
pub const CONFIG_KEY: &str = "config.yaml";
/// Where the TLS Secret is mounted.
pub const TLS_DIR: &str = "/etc/wsgiscale-tls";
/// Where the client CA Secret is mounted.
pub const CLIENT_CA_DIR: &str = "/etc/wsgiscale-client-ca";
