//! `natter-bench --tls`: the client side of TLS for load generation.
//!
//! Every certificate is accepted (the handshake signature is still checked, so the
//! server does all its usual work): a benchmark measures, it does not trust, and it
//! only ever talks to loopback. Session resumption is off, so each connection pays a
//! full handshake, as ten thousand distinct clients would.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, Error};

use crate::tls::signature_checks;

#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!(0);
}

/// The configuration every benchmark connection uses.
pub(super) fn config() -> Result<Arc<ClientConfig>, String> {
    let provider = crate::tls::provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}
