//! Mutual TLS for private sessions.
//!
//! Each client makes a throwaway self-signed certificate when it starts and tells the
//! server its SHA-256 fingerprint at login (`LOGIN`/`PASS ... <port> <key>`). When the
//! server introduces two users (`+PEER` to the one who asked, `*EXPECT` to the other),
//! each side learns the fingerprint the other will present. The caller connects with
//! TLS 1.3, accepts only a server certificate with the announced fingerprint and
//! presents its own; the callee requires a client certificate and accepts the hello
//! only when that certificate's fingerprint is the one the server announced for the
//! user saying hello. Neither certificate chains to anything: the server, which both
//! sides already trust over their own TLS connections, vouches for them. A peer whose
//! client announced no key (an older client) is spoken to in plain text, as before.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, ClientConnection, DistinguishedName, Error, ServerConfig, ServerConnection,
};

use crate::tls::{fingerprint, provider, same, signature_checks};

/// The name both ends use in the handshake (neither checks it: the fingerprint is the
/// identity).
const PEER_NAME: &str = "natter-peer";

/// This client's certificate for private sessions.
pub(crate) struct PeerIdentity {
    /// What the server passes on to the peers we meet (`SHA256:ab:cd:...`).
    pub fingerprint: String,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    server: Arc<ServerConfig>,
    provider: Arc<CryptoProvider>,
}

impl PeerIdentity {
    /// A fresh key pair and self-signed certificate (lives as long as the process).
    pub(crate) fn generate() -> Result<PeerIdentity, String> {
        let ck = rcgen::generate_simple_self_signed(vec![PEER_NAME.to_string()])
            .map_err(|e| e.to_string())?;
        let certs = vec![ck.cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
        let provider = provider();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(Arc::new(AnyCertificate(provider.clone())))
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| e.to_string())?;
        Ok(PeerIdentity {
            fingerprint: fingerprint(&certs[0]),
            certs,
            key,
            server: Arc::new(server),
            provider,
        })
    }

    /// The TLS session for an outbound private connection to a peer that must present
    /// the certificate `expected`.
    pub(crate) fn connect(&self, expected: &str) -> Result<ClientConnection, String> {
        let verifier = Pinned {
            fingerprint: expected.to_string(),
            provider: self.provider.clone(),
        };
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(PEER_NAME).map_err(|e| e.to_string())?;
        ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())
    }

    /// The TLS session for an inbound private connection (its certificate is checked
    /// against the introduction when the hello arrives).
    pub(crate) fn accept(&self) -> Result<ServerConnection, String> {
        ServerConnection::new(self.server.clone()).map_err(|e| e.to_string())
    }
}

/// The outbound side: the peer's certificate must have the fingerprint the server
/// announced.
#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if same(&self.fingerprint, &fingerprint(end_entity)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::General(
                "not the certificate the server announced".into(),
            ))
        }
    }

    signature_checks!(provider);
}

/// The inbound side: a certificate is required and must prove its key (rustls checks
/// the handshake signature); whose it is gets decided at the hello, by fingerprint.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ClientCertVerifier for AnyCertificate {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Ok(ClientCertVerified::assertion())
    }

    signature_checks!(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a handshake between two in-memory sessions; true if both ends finished.
    fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> bool {
        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                let _ = client.write_tls(&mut buf);
            }
            if !buf.is_empty() {
                let _ = server.read_tls(&mut buf.as_slice());
                if server.process_new_packets().is_err() {
                    return false;
                }
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                let _ = server.write_tls(&mut buf);
            }
            if !buf.is_empty() {
                let _ = client.read_tls(&mut buf.as_slice());
                if client.process_new_packets().is_err() {
                    return false;
                }
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return true;
            }
        }
        false
    }

    #[test]
    fn peers_that_were_introduced_shake_hands_and_see_each_others_key() {
        let (a, b) = (
            PeerIdentity::generate().unwrap(),
            PeerIdentity::generate().unwrap(),
        );
        let mut client = a.connect(&b.fingerprint).unwrap();
        let mut server = b.accept().unwrap();
        assert!(handshake(&mut client, &mut server));
        let presented = server.peer_certificates().unwrap()[0].clone();
        assert_eq!(fingerprint(&presented), a.fingerprint);
    }

    #[test]
    fn a_callee_with_another_certificate_is_refused() {
        let (a, b, c) = (
            PeerIdentity::generate().unwrap(),
            PeerIdentity::generate().unwrap(),
            PeerIdentity::generate().unwrap(),
        );
        let mut client = a.connect(&b.fingerprint).unwrap();
        let mut server = c.accept().unwrap();
        assert!(!handshake(&mut client, &mut server));
    }
}
