//! Private sessions over mutual TLS, pinned by the server's introduction: a test-made
//! peer (raw protocol login announcing its certificate) against a real `natter`.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::{Cli, Server};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A throwaway certificate, its key and its fingerprint as natter spells it.
struct TestCert {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    fingerprint: String,
}

fn test_cert() -> TestCert {
    let ck = rcgen::generate_simple_self_signed(vec!["natter-peer".to_string()]).unwrap();
    let der = ck.cert.der().clone();
    TestCert {
        fingerprint: natter::tls::fingerprint(&der),
        certs: vec![der],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der())),
    }
}

/// Accepts any certificate (checking only the handshake signature) and records the
/// fingerprint of the one presented.
#[derive(Debug, Default)]
struct Recorder(Mutex<Option<String>>);

impl Recorder {
    fn seen(&self) -> Option<String> {
        self.0.lock().unwrap().clone()
    }
    fn record(&self, cert: &CertificateDer<'_>) {
        *self.0.lock().unwrap() = Some(natter::tls::fingerprint(cert));
    }
}

/// The handshake-signature checks both verifier traits need (the same in each).
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            let algs = &provider().signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(m, c, d, algs)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            let algs = &provider().signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(m, c, d, algs)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.record(end_entity);
        Ok(ServerCertVerified::assertion())
    }
    signature_checks!();
}

impl ClientCertVerifier for Recorder {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.record(end_entity);
        Ok(ClientCertVerified::assertion())
    }
    signature_checks!();
}

/// Dials a natter peer port with TLS, presenting `cert`; records what it presented.
fn dial(
    addr: SocketAddr,
    cert: &TestCert,
    seen: &Arc<Recorder>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(seen.clone())
        .with_client_auth_cert(cert.certs.clone(), cert.key.clone_key())
        .unwrap();
    let name = ServerName::try_from("natter-peer").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(common::WAIT)).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// hans, logged in over the raw protocol with a peer port and `cert`'s fingerprint.
fn hans_with_key(s: &Server, port: u16, cert: &TestCert) -> common::Raw {
    s.login_with(&format!(
        "LOGIN hans falcon*solo {port} {}",
        cert.fingerprint
    ))
}

/// `+PEER yoda <ip> <port> <token> <key>`, split.
fn introduction(hans: &mut common::Raw) -> (SocketAddr, String, String) {
    let reply = hans.request("PRIVATE yoda");
    let f: Vec<&str> = reply.split(' ').collect();
    assert_eq!(f.len(), 6, "{reply}");
    assert_eq!(&f[..2], ["+PEER", "yoda"], "{reply}");
    let addr = SocketAddr::new(f[2].parse().unwrap(), f[3].parse().unwrap());
    (addr, f[4].to_string(), f[5].to_string())
}

#[test]
fn an_introduced_peer_gets_in_only_with_its_announced_certificate() {
    let s = Server::start(&["0"]);
    let mine = test_cert();
    let mut hans = hans_with_key(&s, 1, &mine);
    let mut yoda = Cli::login(&s, "yoda", "wise@!man");
    hans.expect("*LOGIN yoda");
    let (addr, token, yoda_key) = introduction(&mut hans);
    assert!(yoda_key.starts_with("SHA256:"), "{yoda_key}");

    // Plain text for a user whose key was announced: refused (no downgrade).
    let mut plain = TcpStream::connect(addr).unwrap();
    plain.set_read_timeout(Some(common::WAIT)).unwrap();
    plain
        .write_all(format!("PEERHELLO hans {token}\n").as_bytes())
        .unwrap();
    assert_eq!(common::read_peer_line(&mut plain), None);

    // TLS with someone else's certificate: refused at the hello.
    let seen = Arc::new(Recorder::default());
    let mut impostor = dial(addr, &test_cert(), &seen);
    impostor
        .write_all(format!("PEERHELLO hans {token}\n").as_bytes())
        .unwrap();
    assert_eq!(common::read_peer_line(&mut impostor), None);

    // The announced certificate: in, and yoda presented the key the server announced.
    let seen = Arc::new(Recorder::default());
    let mut link = dial(addr, &mine, &seen);
    link.write_all(format!("PEERHELLO hans {token}\n").as_bytes())
        .unwrap();
    assert_eq!(
        common::read_peer_line(&mut link).as_deref(),
        Some("PEEROK yoda")
    );
    assert_eq!(seen.seen().as_deref(), Some(yoda_key.as_str()));
    // The session is between the clients: it carries messages both ways with the
    // server stopped.
    let server = Pid::from_raw(s.pid() as i32);
    kill(server, Signal::SIGSTOP).unwrap();
    link.write_all(b"PMSG over tls\n").unwrap();
    yoda.expect("hans(private): over tls");
    yoda.type_line("private hans and back");
    assert_eq!(
        common::read_peer_line(&mut link).as_deref(),
        Some("PMSG and back")
    );
    kill(server, Signal::SIGCONT).unwrap();
}

#[test]
fn a_callee_without_its_announced_certificate_is_unreachable() {
    let s = Server::start(&["0"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mine = test_cert();
    let mut hans = hans_with_key(&s, port, &mine);
    let mut yoda = Cli::login(&s, "yoda", "wise@!man");
    hans.expect("*LOGIN yoda");

    // hans answers yoda's call with a certificate the server never announced.
    let accept = |cert: &TestCert, seen: &Arc<Recorder>| {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(seen.clone())
            .with_single_cert(cert.certs.clone(), cert.key.clone_key())
            .unwrap();
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(common::WAIT)).unwrap();
        let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        rustls::StreamOwned::new(conn, tcp)
    };
    yoda.type_line("startprivate hans");
    let expect = hans.expect_prefix("*EXPECT yoda ");
    let f: Vec<&str> = expect.split(' ').collect();
    assert_eq!(f.len(), 4, "{expect}");
    let (token, yoda_key) = (f[2].to_string(), f[3].to_string());
    let seen = Arc::new(Recorder::default());
    let mut wrong = accept(&test_cert(), &seen);
    assert_eq!(common::read_peer_line(&mut wrong), None);
    yoda.expect("Error. Cannot connect to hans for private messaging");

    // The announced one: the session opens, and yoda presented its announced key.
    yoda.type_line("startprivate hans");
    let expect = hans.expect_prefix("*EXPECT yoda ");
    let token2 = expect.split(' ').nth(2).unwrap().to_string();
    assert_ne!(token2, token);
    let seen = Arc::new(Recorder::default());
    let mut right = accept(&mine, &seen);
    assert_eq!(
        common::read_peer_line(&mut right),
        Some(format!("PEERHELLO yoda {token2}"))
    );
    assert_eq!(seen.seen().as_deref(), Some(yoda_key.as_str()));
    right.write_all(b"PEEROK hans\n").unwrap();
    yoda.expect("Start private messaging with hans");
    right.write_all(b"PMSG hi yoda\n").unwrap();
    yoda.expect("hans(private): hi yoda");
}

#[test]
fn with_an_older_client_the_introduction_carries_no_keys() {
    let s = Server::start(&["0"]);
    // hans announces a key; yoda, an older client, only a port.
    let mut hans = hans_with_key(&s, 1, &test_cert());
    let mut yoda = s.login_with("LOGIN yoda wise@!man 2");
    hans.expect("*LOGIN yoda");
    let reply = hans.request("PRIVATE yoda");
    let f: Vec<&str> = reply.split(' ').collect();
    assert_eq!(f.len(), 5, "{reply}");
    assert_eq!(&f[..4], ["+PEER", "yoda", "127.0.0.1", "2"], "{reply}");
    // The older client gets the push it knows, without the field it would not parse.
    assert_eq!(yoda.next_frame(), format!("*EXPECT hans {}", f[4]));
}
