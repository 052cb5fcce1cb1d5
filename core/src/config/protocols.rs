//! What the front's listeners speak: TLS on the `--tls-bind` addresses (certificate, key and
//! optional client-certificate verification), HTTP/2 by ALPN over TLS, and h2c (HTTP/2 over
//! plain TCP with prior knowledge) from trusted peers only. The settings are declared in
//! [`crate::config::Settings`]; this module holds their types, their resolution and the
//! pure decisions the front makes per connection.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::{BindAddr, ConfigError};

/// An IP network (`10.0.0.0/8`, `::1/128`) or a single address (`10.1.2.3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    /// Whether `ip` is in the network; an IPv4 peer seen on a dual-stack socket as
    /// `::ffff:a.b.c.d` is matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Cidr(net));
        }
        s.parse::<IpAddr>()
            .map(|ip| Cidr(ipnet::IpNet::from(ip)))
            .map_err(|_| format!("{s:?} is not an IP address or a CIDR network such as 10.0.0.0/8"))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

crate::config::text_serde!(Cidr);

/// Whether `peer` is in any of `nets`. A unix-socket peer (`None`) is trusted: only processes
/// of the same machine with access to the socket file can connect, as gunicorn also holds.
pub fn trusted(nets: &[Cidr], peer: Option<IpAddr>) -> bool {
    match peer {
        None => true,
        Some(ip) => nets.iter().any(|n| n.contains(ip)),
    }
}

/// Client-certificate verification on the TLS binds.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
#[schemars(transform = crate::config::no_description)]
pub enum ClientVerify {
    /// No client certificate is asked for.
    #[default]
    Off,
    /// A client certificate is asked for and, when sent, must chain to `--tls-client-ca`;
    /// clients without one are served.
    Optional,
    /// Every client must present a certificate that chains to `--tls-client-ca`.
    Require,
}

impl ClientVerify {
    /// The name on the command line and in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientVerify::Off => "off",
            ClientVerify::Optional => "optional",
            ClientVerify::Require => "require",
        }
    }
}

/// TLS on the `--tls-bind` addresses, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The addresses that serve HTTPS.
    pub binds: Vec<BindAddr>,
    /// PEM certificate chain, leaf first; re-read when it changes.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); re-read when it changes.
    pub key: PathBuf,
    /// PEM bundle of the CAs client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// Whether client certificates are asked for and required.
    pub client_verify: ClientVerify,
}

/// TLS and HTTP/2 settings of the front, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolConfig {
    /// TLS, when some address serves HTTPS.
    pub tls: Option<TlsConfig>,
    /// Offer HTTP/2 by ALPN on the TLS binds.
    pub http2: bool,
    /// Serve HTTP/2 with prior knowledge (h2c) on the plain binds, to trusted peers.
    pub h2c: bool,
    /// The peers h2c is served to.
    pub h2c_allow: Vec<Cidr>,
}

/// What one plain-text connection is served: HTTP/1 only, or HTTP/1 and h2c (told apart by
/// the HTTP/2 connection preface).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainProtocols {
    /// HTTP/1.x only; an HTTP/2 preface gets an HTTP/1 error.
    Http1,
    /// HTTP/1.x or h2c with prior knowledge.
    Http1OrH2c,
}

impl ProtocolConfig {
    /// What a plain-text connection from `peer` (None: a unix socket) is served.
    pub fn plain_for(&self, peer: Option<IpAddr>) -> PlainProtocols {
        if self.h2c && trusted(&self.h2c_allow, peer) {
            PlainProtocols::Http1OrH2c
        } else {
            PlainProtocols::Http1
        }
    }

    /// The ALPN protocols offered on the TLS binds, most preferred first.
    pub fn alpn(&self) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        if self.http2 {
            v.push(b"h2".to_vec());
        }
        v.push(b"http/1.1".to_vec());
        v.push(b"http/1.0".to_vec());
        v
    }
}

/// The default `--h2c-allow-ips`: loopback only.
pub const H2C_ALLOW_IPS: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// The TLS and HTTP/2 settings as given (after the layers are merged), to resolve.
#[derive(Debug, Clone, Default)]
pub struct ProtocolSettings {
    /// `--tls-bind`.
    pub tls_bind: Vec<BindAddr>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-client-ca`.
    pub tls_client_ca: Option<PathBuf>,
    /// `--tls-client-verify`.
    pub tls_client_verify: ClientVerify,
    /// `--http2`.
    pub http2: bool,
    /// `--h2c`.
    pub h2c: bool,
    /// `--h2c-allow-ips`.
    pub h2c_allow_ips: Vec<Cidr>,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// Checks the TLS and HTTP/2 settings against each other and against the plain `binds` and
/// the `admin` bind. Pure: whether the files exist and hold a usable certificate is checked
/// when the server loads them.
pub fn resolve_protocols(
    s: ProtocolSettings,
    binds: &[BindAddr],
    admin: &BindAddr,
) -> Result<ProtocolConfig, ConfigError> {
    let ProtocolSettings {
        tls_bind,
        tls_cert,
        tls_key,
        tls_client_ca,
        tls_client_verify,
        http2,
        h2c,
        h2c_allow_ips,
    } = s;
    let tls = if tls_bind.is_empty() {
        for (key, set) in [
            ("tls-cert", tls_cert.is_some()),
            ("tls-key", tls_key.is_some()),
            ("tls-client-ca", tls_client_ca.is_some()),
            ("tls-client-verify", tls_client_verify != ClientVerify::Off),
        ] {
            if set {
                return Err(invalid(key, "is set but no --tls-bind address serves TLS"));
            }
        }
        None
    } else {
        let cert = tls_cert.ok_or_else(|| invalid("tls-cert", "--tls-bind needs a certificate"))?;
        let key = tls_key.ok_or_else(|| invalid("tls-key", "--tls-bind needs a private key"))?;
        match (tls_client_verify, &tls_client_ca) {
            (ClientVerify::Off, Some(_)) => {
                return Err(invalid(
                    "tls-client-ca",
                    "is set but --tls-client-verify is off: say optional or require",
                ))
            }
            (ClientVerify::Optional | ClientVerify::Require, None) => {
                return Err(invalid(
                    "tls-client-verify",
                    format!(
                        "{} needs --tls-client-ca: without a CA no client certificate could be verified",
                        tls_client_verify.as_str()
                    ),
                ))
            }
            _ => {}
        }
        let ephemeral = |b: &BindAddr| matches!(b, BindAddr::Tcp(a) if a.port() == 0);
        for (i, b) in tls_bind.iter().enumerate() {
            if ephemeral(b) {
                continue;
            }
            if b == admin {
                return Err(invalid(
                    "tls-bind",
                    format!("{b} is also the --admin-bind address"),
                ));
            }
            if binds.contains(b) || tls_bind[..i].contains(b) {
                return Err(invalid("tls-bind", format!("{b} is bound twice")));
            }
        }
        Some(TlsConfig {
            binds: tls_bind,
            cert,
            key,
            client_ca: tls_client_ca,
            client_verify: tls_client_verify,
        })
    };
    Ok(ProtocolConfig {
        tls,
        http2,
        h2c,
        h2c_allow: h2c_allow_ips,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().expect("valid")).collect()
    }

    #[test]
    fn cidrs_and_addresses_parse_and_match() {
        let loopback = nets(&H2C_ALLOW_IPS);
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        assert!(trusted(&loopback, ip("127.0.0.1")));
        assert!(trusted(&loopback, ip("127.9.9.9")));
        assert!(trusted(&loopback, ip("::1")));
        assert!(trusted(&loopback, ip("::ffff:127.0.0.1")), "v4-mapped");
        assert!(!trusted(&loopback, ip("10.0.0.1")));
        assert!(!trusted(&loopback, ip("::ffff:10.0.0.1")));
        assert!(trusted(&loopback, None), "unix sockets are trusted");
        assert!(!trusted(&[], ip("127.0.0.1")));
        let one = nets(&["10.1.2.3"]);
        assert!(trusted(&one, ip("10.1.2.3")) && !trusted(&one, ip("10.1.2.4")));
        for bad in ["10.0.0.0/33", "example.com", "", "10.0.0/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        for text in ["10.0.0.0/8", "::1/128", "192.168.1.7/32"] {
            assert_eq!(text.parse::<Cidr>().expect("valid").to_string(), text);
        }
    }

    fn settings() -> ProtocolSettings {
        ProtocolSettings {
            tls_bind: vec!["0.0.0.0:8443".parse().expect("bind")],
            tls_cert: Some("/tls/tls.crt".into()),
            tls_key: Some("/tls/tls.key".into()),
            http2: true,
            ..ProtocolSettings::default()
        }
    }

    fn resolve(s: ProtocolSettings) -> Result<ProtocolConfig, ConfigError> {
        let binds = ["0.0.0.0:8000".parse().expect("bind")];
        resolve_protocols(s, &binds, &"127.0.0.1:9191".parse().expect("bind"))
    }

    fn key_of(r: Result<ProtocolConfig, ConfigError>) -> &'static str {
        match r {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn tls_needs_its_files_and_client_verification_needs_a_ca() {
        let ok = resolve(settings()).expect("valid");
        let tls = ok.tls.expect("tls on");
        assert_eq!(tls.client_verify, ClientVerify::Off);
        assert_eq!(
            key_of(resolve(ProtocolSettings {
                tls_cert: None,
                ..settings()
            })),
            "tls-cert"
        );
        assert_eq!(
            key_of(resolve(ProtocolSettings {
                tls_key: None,
                ..settings()
            })),
            "tls-key"
        );
        // granian #853: verification asked for without a CA is an error, never silently off.
        for verify in [ClientVerify::Optional, ClientVerify::Require] {
            let s = ProtocolSettings {
                tls_client_verify: verify,
                ..settings()
            };
            assert_eq!(key_of(resolve(s)), "tls-client-verify");
        }
        let ca_unused = ProtocolSettings {
            tls_client_ca: Some("/ca.pem".into()),
            ..settings()
        };
        assert_eq!(key_of(resolve(ca_unused)), "tls-client-ca");
        let mtls = ProtocolSettings {
            tls_client_ca: Some("/ca.pem".into()),
            tls_client_verify: ClientVerify::Require,
            ..settings()
        };
        assert_eq!(
            resolve(mtls).expect("valid").tls.expect("on").client_verify,
            ClientVerify::Require
        );
        // TLS files without a TLS address are a mistake, not ignored.
        let orphan = ProtocolSettings {
            tls_bind: vec![],
            ..settings()
        };
        assert_eq!(key_of(resolve(orphan)), "tls-cert");
        let twice = ProtocolSettings {
            tls_bind: vec!["0.0.0.0:8000".parse().expect("bind")],
            ..settings()
        };
        assert_eq!(key_of(resolve(twice)), "tls-bind");
        let admin = ProtocolSettings {
            tls_bind: vec!["127.0.0.1:9191".parse().expect("bind")],
            ..settings()
        };
        assert_eq!(key_of(resolve(admin)), "tls-bind");
    }

    #[test]
    fn h2c_is_for_trusted_peers_only_and_off_by_default() {
        let off = resolve(ProtocolSettings {
            h2c_allow_ips: nets(&H2C_ALLOW_IPS),
            ..ProtocolSettings::default()
        })
        .expect("valid");
        let local = Some("127.0.0.1".parse().expect("ip"));
        let remote = Some("203.0.113.9".parse().expect("ip"));
        assert_eq!(off.plain_for(local), PlainProtocols::Http1);
        let on = ProtocolConfig { h2c: true, ..off };
        assert_eq!(on.plain_for(local), PlainProtocols::Http1OrH2c);
        assert_eq!(on.plain_for(None), PlainProtocols::Http1OrH2c);
        assert_eq!(on.plain_for(remote), PlainProtocols::Http1);
    }

    #[test]
    fn alpn_offers_h2_first_unless_http2_is_off() {
        let on = resolve(settings()).expect("valid");
        assert_eq!(on.alpn()[0], b"h2");
        let off = ProtocolConfig { http2: false, ..on };
        assert!(!off.alpn().iter().any(|p| p == b"h2"));
        assert_eq!(off.alpn()[0], b"http/1.1");
    }
}
