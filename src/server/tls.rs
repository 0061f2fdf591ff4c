//! natterd's TLS identity: the certificate and key it presents, and the rustls server
//! configuration built from them.
//!
//! With `--tls-cert`/`--tls-key` the PEM files are read (as Let's Encrypt issues them;
//! re-read on SIGHUP for renewals). Without them natterd generates a self-signed
//! certificate on first start and keeps it in the data directory (`tls-cert.pem`,
//! `tls-key.pem`, the key readable by the owner only), so its fingerprint stays the same
//! across restarts and clients that pinned it on first use keep trusting it; with
//! `--in-memory` it is generated afresh on every start. TLS 1.3 only, with the `ring`
//! provider (see docs/architecture.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;

use crate::tls::{fingerprint, provider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files given on the command line (re-read on SIGHUP).
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// Self-signed, kept in this directory (created on first start).
    Generated {
        /// Where `tls-cert.pem` and `tls-key.pem` are kept (the data directory).
        dir: PathBuf,
    },
    /// Self-signed, in memory only (`--in-memory`).
    Ephemeral,
}

/// The configuration to accept TLS connections with, and the certificate's fingerprint.
pub struct Identity {
    /// The rustls server configuration.
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the leaf certificate, as `SHA256:ab:cd:...` (what clients pin).
    pub fingerprint: String,
}

/// Loads (or generates) the identity.
pub fn load(source: &CertSource) -> Result<Identity, String> {
    let (certs, key) = match source {
        CertSource::Files { cert, key } => read_pair(cert, key)?,
        CertSource::Generated { dir } => {
            let (cert, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
            // Several natterd started at once in one directory (cluster nodes on one
            // machine) must not each write half a pair: one generates, the others
            // wait and read it.
            let lock_path = dir.join("tls.lock");
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| format!("{}: {e}", lock_path.display()))?;
            let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| format!("{}: {e}", lock_path.display()))?;
            if !cert.exists() || !key.exists() {
                let (cert_pem, key_pem) = generate()?;
                write_private(&key, key_pem.as_bytes())?;
                std::fs::write(&cert, cert_pem).map_err(|e| format!("{}: {e}", cert.display()))?;
            }
            read_pair(&cert, &key)?
        }
        CertSource::Ephemeral => {
            let (cert_pem, key_pem) = generate()?;
            let certs = vec![
                CertificateDer::from_pem_slice(cert_pem.as_bytes())
                    .map_err(|e| format!("generated certificate: {e}"))?,
            ];
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| format!("generated key: {e}"))?;
            (certs, key)
        }
    };
    let fingerprint = fingerprint(&certs[0]);
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not go together: {e}"))?;
    Ok(Identity {
        config: Arc::new(config),
        fingerprint,
    })
}

fn read_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    Ok((certs, key))
}

/// A self-signed certificate for `localhost` and the loopback addresses (clients pin
/// its fingerprint; the names only matter to clients that check them).
fn generate() -> Result<(String, String), String> {
    let names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    Ok((ck.cert.pem(), ck.key_pair.serialize_pem()))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_identity_is_kept_and_its_fingerprint_stable() {
        let dir = std::env::temp_dir().join(format!("natter-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = CertSource::Generated { dir: dir.clone() };
        let a = load(&source).expect("generated");
        let b = load(&source).expect("read back");
        assert_eq!(a.fingerprint, b.fingerprint);
        assert!(a.fingerprint.starts_with("SHA256:") && a.fingerprint.len() == 7 + 95);
        let e1 = load(&CertSource::Ephemeral).unwrap();
        assert_ne!(e1.fingerprint, a.fingerprint);
        let broken = CertSource::Files {
            cert: dir.join("tls-key.pem"),
            key: dir.join("tls-key.pem"),
        };
        assert!(load(&broken).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
