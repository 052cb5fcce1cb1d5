//! TLS on the `--tls-bind` listeners: rustls with the `ring` provider (the one this workspace
//! already builds for kube; rustls' default, aws-lc-rs, needs cmake and a C toolchain for
//! aws-lc-sys). The certificate, key and client CA files are re-read when their bytes change
//! ([`watch`]), as cert-manager renews a Secret volume by an atomic symlink swap that file
//! notifications can miss; each new handshake takes the newest configuration, while open
//! connections keep the one they were made with, so a renewal drops nothing. A renewal that
//! does not load (a key that does not match the certificate, a half-written file) is logged
//! and the previous certificate stays in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use wsgiscale_core::config::protocols::{ClientVerify, TlsConfig};

/// Why a TLS configuration cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file holds no PEM item of the kind needed, or a malformed one.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refuses the certificate and key (a key that does not match, an unsupported
    /// algorithm).
    #[error("{cert} and {key}: {source}")]
    Certificate {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The client CA bundle cannot verify anything.
    #[error("client CA {path}: {reason}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The bytes of the files a configuration is built from: what a re-read compares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl Material {
    fn read(tls: &TlsConfig) -> Result<Material, TlsError> {
        Ok(Material {
            cert: read(&tls.cert)?,
            key: read(&tls.key)?,
            client_ca: tls.client_ca.as_deref().map(read).transpose()?,
        })
    }
}

fn pem_error(path: &Path, what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        reason: format!("{what}: {e}"),
    }
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "not a PEM certificate chain", e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no certificate", "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The provider every configuration is built with (never the process-wide default, which
/// another library in the process could set differently).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls configuration of `tls` from the files' bytes, offering `alpn`.
fn build(tls: &TlsConfig, alpn: &[Vec<u8>], m: &Material) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = certificates(&tls.cert, &m.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&m.key)
        .map_err(|e| pem_error(&tls.key, "no PEM private key (PKCS#8, PKCS#1 or SEC1)", e))?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = match (tls.client_verify, &tls.client_ca, &m.client_ca) {
        (ClientVerify::Off, _, _) => builder.with_no_client_auth(),
        (verify, Some(path), Some(pem)) => {
            let ca_error = |reason: String| TlsError::ClientCa {
                path: path.clone(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for cert in certificates(path, pem)? {
                roots
                    .add(cert)
                    .map_err(|e| ca_error(format!("not a usable CA certificate: {e}")))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = match verify {
                ClientVerify::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder
                .with_client_cert_verifier(verifier.build().map_err(|e| ca_error(e.to_string()))?)
        }
        // resolve() refuses verification without a CA; this is the second line.
        (verify, _, _) => {
            return Err(TlsError::ClientCa {
                path: PathBuf::new(),
                reason: format!(
                    "--tls-client-verify {} needs --tls-client-ca",
                    verify.as_str()
                ),
            })
        }
    };
    let mut config =
        builder
            .with_single_cert(certs, key)
            .map_err(|source| TlsError::Certificate {
                cert: tls.cert.clone(),
                key: tls.key.clone(),
                source,
            })?;
    config.alpn_protocols = alpn.to_vec();
    // TLS 1.3 session tickets, so a client reconnecting skips the full handshake.
    if let Ok(ticketer) = rustls::crypto::ring::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok(Arc::new(config))
}

/// The TLS configuration in force, replaced when the files change.
pub struct Certs {
    tls: TlsConfig,
    alpn: Vec<Vec<u8>>,
    current: RwLock<(Material, Arc<ServerConfig>)>,
    /// The last material that failed to load, so that it is logged once, not every poll.
    refused: parking_lot::Mutex<Option<Material>>,
}

impl Certs {
    /// Loads the files of `tls`; an error names the file at fault. The server calls it
    /// before it binds, so a bad certificate stops the start.
    pub fn load(tls: &TlsConfig, alpn: Vec<Vec<u8>>) -> Result<Arc<Certs>, TlsError> {
        let material = Material::read(tls)?;
        let config = build(tls, &alpn, &material)?;
        Ok(Arc::new(Certs {
            tls: tls.clone(),
            alpn,
            current: RwLock::new((material, config)),
            refused: parking_lot::Mutex::new(None),
        }))
    }

    /// The configuration for a new handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().1.clone()
    }

    /// Re-reads the files; when their bytes changed and load, the new configuration is used
    /// from the next handshake on. Ok(true) when it was replaced.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let material = Material::read(&self.tls)?;
        if self.current.read().0 == material {
            return Ok(false);
        }
        let config = build(&self.tls, &self.alpn, &material)?;
        *self.current.write() = (material, config);
        *self.refused.lock() = None;
        Ok(true)
    }

    /// One check of the files: Some(true) when a new certificate is in use, Some(false)
    /// when new files were refused (logged once per content), None when nothing changed.
    fn poll(&self) -> Option<bool> {
        match self.reload() {
            Ok(true) => {
                tracing::info!(cert = %self.tls.cert.display(), "TLS certificate reloaded");
                Some(true)
            }
            Ok(false) => None,
            Err(e) => {
                // A swap seen half-way (the new certificate with the old key) loads on the
                // next poll; a file that stays bad is reported once.
                let seen = Material::read(&self.tls).ok();
                let mut refused = self.refused.lock();
                if seen.is_some() && *refused == seen {
                    return None;
                }
                tracing::error!(error = %e, "new TLS files refused; the previous certificate stays in use");
                *refused = seen;
                Some(false)
            }
        }
    }
}

/// How often the TLS files are checked for changes.
pub const TLS_POLL: Duration = Duration::from_secs(2);

/// Re-reads the TLS files every `every` until `stop`, counting the outcomes in `shared`.
pub async fn watch(
    certs: Arc<Certs>,
    shared: Arc<crate::state::Shared>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let c = certs.clone();
        // File reads and key parsing off the event loop.
        let outcome = tokio::task::spawn_blocking(move || c.poll())
            .await
            .ok()
            .flatten();
        if let Some(applied) = outcome {
            let reason = if applied { "applied" } else { "rejected" };
            shared
                .metrics
                .tls_reloads
                .get_or_create(&crate::metrics::ReasonLabel { reason })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new() -> Pki {
            Pki {
                dir: tempfile::tempdir().expect("tempdir"),
            }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
        /// A self-signed certificate for localhost into cert.pem/key.pem.
        fn self_signed(&self, cert: &str, key: &str) {
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
            std::fs::write(self.path(cert), ck.cert.pem()).expect("write");
            std::fs::write(self.path(key), ck.signing_key.serialize_pem()).expect("write");
        }
        fn config(&self) -> TlsConfig {
            TlsConfig {
                binds: vec!["127.0.0.1:0".parse().expect("bind")],
                cert: self.path("cert.pem"),
                key: self.path("key.pem"),
                client_ca: None,
                client_verify: ClientVerify::Off,
            }
        }
    }

    #[test]
    fn loads_reloads_on_change_and_keeps_the_old_config_on_a_bad_one() {
        let pki = Pki::new();
        pki.self_signed("cert.pem", "key.pem");
        let certs = Certs::load(&pki.config(), vec![b"h2".to_vec()]).expect("loads");
        assert_eq!(certs.config().alpn_protocols, vec![b"h2".to_vec()]);
        assert!(
            !certs.reload().expect("same files"),
            "unchanged: not rebuilt"
        );
        let before = certs.config();
        // A new certificate with the old key: refused, the old configuration stays.
        pki.self_signed("cert.pem", "other-key.pem");
        let e = certs.reload().expect_err("mismatched key");
        assert!(matches!(e, TlsError::Certificate { .. }), "{e}");
        assert!(Arc::ptr_eq(&before, &certs.config()));
        // Its key arrives: the new pair is used.
        std::fs::rename(pki.path("other-key.pem"), pki.path("key.pem")).expect("rename");
        assert!(certs.reload().expect("loads"));
        assert!(!Arc::ptr_eq(&before, &certs.config()));
    }

    #[test]
    fn bad_files_name_the_file_at_fault() {
        let pki = Pki::new();
        let missing = Certs::load(&pki.config(), vec![]).err().expect("no files");
        assert!(missing.to_string().contains("cert.pem"), "{missing}");
        std::fs::write(pki.path("cert.pem"), "not pem").expect("write");
        std::fs::write(pki.path("key.pem"), "not pem").expect("write");
        let e = Certs::load(&pki.config(), vec![]).err().expect("bad cert");
        assert!(e.to_string().contains("no certificate"), "{e}");
        pki.self_signed("cert.pem", "unused.pem");
        let e = Certs::load(&pki.config(), vec![]).err().expect("bad key");
        assert!(e.to_string().contains("key.pem"), "{e}");
    }

    #[test]
    fn client_verification_needs_a_usable_ca() {
        let pki = Pki::new();
        pki.self_signed("cert.pem", "key.pem");
        pki.self_signed("ca.pem", "ca-key.pem");
        for verify in [ClientVerify::Optional, ClientVerify::Require] {
            let with_ca = TlsConfig {
                client_ca: Some(pki.path("ca.pem")),
                client_verify: verify,
                ..pki.config()
            };
            Certs::load(&with_ca, vec![]).expect("loads");
            let without = TlsConfig {
                client_ca: None,
                ..with_ca.clone()
            };
            let e = Certs::load(&without, vec![]).err().expect("refused");
            assert!(matches!(e, TlsError::ClientCa { .. }), "{e}");
        }
        std::fs::write(pki.path("ca.pem"), "").expect("write");
        let empty = TlsConfig {
            client_ca: Some(pki.path("ca.pem")),
            client_verify: ClientVerify::Require,
            ..pki.config()
        };
        assert!(Certs::load(&empty, vec![]).is_err());
    }
}
