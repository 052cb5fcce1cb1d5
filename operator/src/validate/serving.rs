//! `validate` for the spec's hooks, TLS and HTTP/2: each field parsed with the server's own
//! parser (`wsgiscale_core::config::hooks`, `wsgiscale_core::config::protocols`), so that
//! what the operator accepts the server accepts.

use wsgiscale_core::config::hooks::{HookSpec, Hooks};
use wsgiscale_core::config::protocols::{Cidr, ClientVerify, H2C_ALLOW_IPS};

use super::Errors;
use crate::crd::{HooksSpec, Http2Spec, TlsSpec};

/// Default HTTPS container port.
pub const TLS_PORT: i32 = 8443;
/// Default HTTPS Service port.
pub const TLS_SERVICE_PORT: i32 = 443;

/// `spec.tls`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The Secret with tls.crt and tls.key.
    pub secret_name: String,
    /// HTTPS container port.
    pub port: i32,
    /// HTTPS Service port.
    pub service_port: i32,
    /// Client-certificate verification.
    pub client_verify: ClientVerify,
    /// The Secret with the client CA bundle (ca.crt), when verifying.
    pub client_ca_secret_name: Option<String>,
}

/// `spec.http2`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2 {
    /// HTTP/2 by ALPN on the TLS port.
    pub enabled: bool,
    /// h2c on the plain port for trusted peers.
    pub h2c: bool,
    /// The peers allowed h2c; empty means the server's default.
    pub h2c_allow_ips: Vec<Cidr>,
}

pub(super) fn resolve_hooks(spec: Option<&HooksSpec>, errs: &mut Errors) -> Hooks {
    let spec = spec.cloned().unwrap_or_default();
    let mut parse = |field: &str, value: Option<String>| -> Option<HookSpec> {
        let value = value?;
        match value.parse::<HookSpec>() {
            Ok(h) => Some(h),
            Err(e) => {
                errs.push(&format!("spec.hooks.{field}"), e);
                None
            }
        }
    };
    let HooksSpec {
        post_load,
        on_reload,
        post_fork,
        post_worker_init,
        worker_exit,
        pre_request,
        post_request,
    } = spec;
    Hooks {
        post_load: parse("postLoad", post_load),
        on_reload: parse("onReload", on_reload),
        post_fork: parse("postFork", post_fork),
        post_worker_init: parse("postWorkerInit", post_worker_init),
        worker_exit: parse("workerExit", worker_exit),
        pre_request: parse("preRequest", pre_request),
        post_request: parse("postRequest", post_request),
    }
}

/// Whether `name` is a DNS subdomain (what a Secret's name must be).
fn is_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

pub(super) fn resolve_tls(
    spec: Option<&TlsSpec>,
    port: i32,
    admin_port: i32,
    service_port: i32,
    errs: &mut Errors,
) -> Option<Tls> {
    let spec = spec?;
    let secret = |errs: &mut Errors, field: &str, name: &str| {
        if !is_dns1123_subdomain(name) {
            errs.push(field, format!("{name:?} is not a valid Secret name"));
        }
    };
    secret(errs, "spec.tls.secretName", &spec.secret_name);
    let tls_port = errs.int("spec.tls.port", spec.port, TLS_PORT, 1, 65535);
    if tls_port == port || tls_port == admin_port {
        errs.push(
            "spec.tls.port",
            "must differ from spec.port and spec.adminPort",
        );
    }
    let tls_service_port = errs.int(
        "spec.tls.servicePort",
        spec.service_port,
        TLS_SERVICE_PORT,
        1,
        65535,
    );
    if tls_service_port == service_port {
        errs.push("spec.tls.servicePort", "must differ from spec.service.port");
    }
    let verify = spec.client_verify.unwrap_or_default();
    match (verify, &spec.client_ca_secret_name) {
        (ClientVerify::Off, Some(_)) => errs.push(
            "spec.tls.clientCaSecretName",
            "is set but clientVerify is off: say optional or require",
        ),
        (ClientVerify::Optional | ClientVerify::Require, None) => errs.push(
            "spec.tls.clientVerify",
            format!(
                "{} needs clientCaSecretName: without a CA no client certificate could be verified",
                verify.as_str()
            ),
        ),
        (_, Some(name)) => secret(errs, "spec.tls.clientCaSecretName", name),
        _ => {}
    }
    Some(Tls {
        secret_name: spec.secret_name.clone(),
        port: tls_port,
        service_port: tls_service_port,
        client_verify: verify,
        client_ca_secret_name: spec.client_ca_secret_name.clone(),
    })
}

pub(super) fn resolve_http2(spec: Option<&Http2Spec>, errs: &mut Errors) -> Http2 {
    let spec = spec.cloned().unwrap_or_default();
    let mut allow = Vec::new();
    for (i, text) in spec.h2c_allow_ips.iter().enumerate() {
        match text.parse::<Cidr>() {
            Ok(c) => allow.push(c),
            Err(e) => errs.push(&format!("spec.http2.h2cAllowIps[{i}]"), e),
        }
    }
    let default: Vec<Cidr> = H2C_ALLOW_IPS
        .iter()
        .map(|c| c.parse().expect("the default h2c networks parse"))
        .collect();
    if allow == default {
        allow.clear();
    }
    Http2 {
        enabled: spec.enabled.unwrap_or(true),
        h2c: spec.h2c.unwrap_or(false),
        h2c_allow_ips: allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names() {
        for good in ["blog-tls", "a", "tls.example.com", "x1"] {
            assert!(is_dns1123_subdomain(good), "{good}");
        }
        for bad in ["", "Blog", "-a", "a-", "a..b", "a_b"] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
    }
}
