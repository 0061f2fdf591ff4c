//! TLS pieces natterd, natter and natter-bench share: the crypto provider, certificate
//! fingerprints as users see and pin them, and the handshake-signature checks every
//! certificate verifier needs.

use std::sync::Arc;

/// The SHA-256 fingerprint of a DER certificate, as clients print and pin it.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("SHA256:{}", hex.join(":"))
}

/// The crypto provider: `ring` builds with a C compiler alone (no cmake, no Go), so a
/// fresh machine builds natter with what Rust's own toolchain needs.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether two fingerprints are the same, whatever their case and separators.
pub fn same(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.trim_start_matches("SHA256:")
            .chars()
            .filter(char::is_ascii_hexdigit)
            .map(|c| c.to_ascii_lowercase())
            .collect::<String>()
    };
    norm(a) == norm(b)
}

/// The handshake-signature methods every certificate verifier needs, checked with the
/// crypto provider in field `$field` of the verifier: our verifiers differ only in
/// whose certificate they accept, never in how a signature is checked.
macro_rules! signature_checks {
    ($field:tt) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            let algs = &self.$field.signature_verification_algorithms;
            ::rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            let algs = &self.$field.signature_verification_algorithms;
            ::rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            self.$field
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use signature_checks;
