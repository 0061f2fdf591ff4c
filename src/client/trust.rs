//! Whom the client trusts, and how it connects to natterd over TLS.
//!
//! A certificate that chains to the system's root certificates for the server's
//! address is trusted. Otherwise trust on first use, like SSH's `accept-new`: the first
//! connection to a `host:port` saves the certificate's SHA-256 fingerprint in
//! `known_servers` (one notice line on stderr), later connections must present the same
//! one, and a changed fingerprint refuses to connect with a loud message. A fingerprint
//! given with `--trust-fingerprint` is the only one accepted (scripts, tests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, Error};

use crate::tls::{fingerprint, provider, same, signature_checks};

/// What the verifier decided, for the client to report after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Chained to a system root, or matched a pin or a known fingerprint.
    Trusted,
    /// First connection: the fingerprint was saved.
    FirstUse { fingerprint: String },
    /// The fingerprint differs from the one known (or pinned): refused.
    Changed { known: String, presented: String },
}

/// Where the verifier leaves its verdict for the client to report.
pub(crate) type VerdictSlot = Arc<Mutex<Option<Verdict>>>;

/// Where known fingerprints are kept: `$XDG_CONFIG_HOME/natter/known_servers`, or
/// `~/.config/natter/known_servers`.
pub(crate) fn known_servers_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("natter").join("known_servers"))
}

/// The fingerprint known for `server` in `known_servers`, if any.
fn known(path: &PathBuf, server: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().rev().find_map(|l| {
        let (who, fp) = l.split_once(' ')?;
        (who == server).then(|| fp.trim().to_string())
    })
}

/// Appends `server fingerprint` to `known_servers`.
fn remember(path: &PathBuf, server: &str, fp: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(format!("{server} {fp}\n").as_bytes())
}

#[derive(Debug)]
struct Verifier {
    roots: Option<Arc<WebPkiServerVerifier>>,
    pinned: Option<String>,
    known_servers: Option<PathBuf>,
    server: String,
    verdict: VerdictSlot,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Verifier {
    fn decide(&self, verdict: Verdict) -> Result<ServerCertVerified, Error> {
        let ok = !matches!(verdict, Verdict::Changed { .. });
        if let Ok(mut v) = self.verdict.lock() {
            *v = Some(verdict);
        }
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::General("the server's certificate changed".into()))
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let presented = fingerprint(end_entity);
        if let Some(pin) = &self.pinned {
            return self.decide(if same(pin, &presented) {
                Verdict::Trusted
            } else {
                Verdict::Changed {
                    known: pin.clone(),
                    presented,
                }
            });
        }
        if let Some(roots) = &self.roots
            && roots
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                .is_ok()
        {
            return self.decide(Verdict::Trusted);
        }
        let Some(path) = &self.known_servers else {
            // Nowhere to remember it: trusted for this connection only.
            return self.decide(Verdict::FirstUse {
                fingerprint: presented,
            });
        };
        match known(path, &self.server) {
            Some(k) if same(&k, &presented) => self.decide(Verdict::Trusted),
            Some(known) => self.decide(Verdict::Changed { known, presented }),
            None => {
                if let Err(e) = remember(path, &self.server, &presented) {
                    log::warn!("cannot save {}: {e}", path.display());
                }
                self.decide(Verdict::FirstUse {
                    fingerprint: presented,
                })
            }
        }
    }

    signature_checks!(provider);
}

/// A TLS session to `server` and the slot where its verifier leaves its verdict.
pub(crate) fn connect(
    server: SocketAddr,
    pinned: Option<String>,
) -> Result<(rustls::ClientConnection, VerdictSlot), String> {
    let provider = provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let roots = (!roots.is_empty())
        .then(|| {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .ok()
        })
        .flatten();
    let verdict = Arc::new(Mutex::new(None));
    let verifier = Verifier {
        roots,
        pinned,
        known_servers: known_servers_path(),
        server: server.to_string(),
        verdict: verdict.clone(),
        provider: provider.clone(),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let name = ServerName::IpAddress(server.ip().into());
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    Ok((conn, verdict))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_compare_whatever_their_spelling() {
        assert!(same("SHA256:ab:CD:01", "abcd01"));
        assert!(!same("SHA256:ab:cd:01", "SHA256:ab:cd:02"));
    }
}
