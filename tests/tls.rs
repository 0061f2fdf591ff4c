//! TLS on natterd's one port and in the client: the self-signed default and its
//! fingerprint, trust on first use and a changed certificate refused, pinning, a
//! certificate from a CA, plain text refused from a remote address, certificate reload
//! on SIGHUP, and a handshake that stalls cut off by the login deadline.
//!
//! "Remote" is simulated with a second loopback address the server is told to treat as
//! remote (`--treat-as-remote 127.0.0.2`): this machine has no other network.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::{Raw, Server, scratch_dir, wait_until};

const WELCOME: &str = "Welcome to the greatest messaging application ever!\n";

/// The fingerprint natterd printed next to its listening line.
fn fingerprint(s: &Server) -> String {
    wait_until("the fingerprint line", || {
        s.log().contains("TLS certificate fingerprint")
    });
    s.log()
        .lines()
        .rev()
        .find_map(|l| l.split("TLS certificate fingerprint ").nth(1))
        .expect("fingerprint")
        .trim()
        .to_string()
}

/// A client run to its end with its own config directory; returns (exit, stdout, stderr).
fn run_client(
    s: &Server,
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut cmd = common::natter_command(s.addr, args, Some("falcon*solo"));
    cmd.env("XDG_CONFIG_HOME", config)
        .args(["--quiet", "--user", "hans"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn natter");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"whoelse\nlogout\n")
        .expect("stdin");
    let out = common::wait_with_timeout(child);
    (out.code, out.stdout, out.stderr)
}

#[test]
fn self_signed_by_default_trusted_on_first_use_and_a_change_refused() {
    let s = Server::start(&["0"]);
    let fp = fingerprint(&s);
    assert!(fp.starts_with("SHA256:"), "{fp}");
    assert!(s.dir.join("natter-data/tls-cert.pem").exists());
    let config = scratch_dir();

    // First use: a notice on stderr, the fingerprint saved.
    let (code, out, err) = run_client(&s, &config, &[], &[]);
    assert_eq!((code, out.as_str()), (0, WELCOME), "{err}");
    assert_eq!(err.matches("natter: first connection").count(), 1, "{err}");
    assert!(err.contains(&fp), "{err}");
    let known = std::fs::read_to_string(config.join("natter/known_servers")).expect("saved");
    assert_eq!(known, format!("{} {fp}\n", s.addr));

    // Later: silent.
    let (code, out, err) = run_client(&s, &config, &[], &[]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, WELCOME, ""));

    // A different certificate for the same address: refused, loudly, non-zero.
    std::fs::write(
        config.join("natter/known_servers"),
        format!("{} SHA256:{}\n", s.addr, ["00"; 32].join(":")),
    )
    .expect("write");
    let (code, out, err) = run_client(&s, &config, &[], &[]);
    assert_ne!(code, 0);
    assert!(!out.contains("Welcome"), "{out}");
    assert!(err.contains("HAS CHANGED") && err.contains(&fp), "{err}");
}

#[test]
fn a_pinned_fingerprint_is_the_only_one_accepted() {
    let s = Server::start(&["0"]);
    let fp = fingerprint(&s);
    let config = scratch_dir();
    let (code, out, err) = run_client(&s, &config, &["--trust-fingerprint", &fp], &[]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, WELCOME, ""));
    assert!(
        !config.join("natter/known_servers").exists(),
        "a pin is not saved"
    );
    let wrong = format!("SHA256:{}", ["ab"; 32].join(":"));
    let (code, out, err) = run_client(&s, &config, &["--trust-fingerprint", &wrong], &[]);
    assert_ne!(code, 0);
    assert!(
        !out.contains("Welcome") && err.contains("HAS CHANGED"),
        "{out}{err}"
    );
}

#[test]
fn a_certificate_from_a_trusted_ca_needs_no_pinning() {
    // A test CA, and a certificate for 127.0.0.1 it signed.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "natter test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("signed");
    let dir = scratch_dir();
    let (cert_path, key_path, ca_path) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("ca.pem"),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&ca_path, ca.pem()).unwrap();

    let s = Server::start(&[
        "0",
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let config = scratch_dir();
    // The system's roots are read from SSL_CERT_FILE when it is set.
    let ca_env = [("SSL_CERT_FILE", ca_path.to_str().unwrap())];
    let (code, out, err) = run_client(&s, &config, &[], &ca_env);
    assert_eq!((code, out.as_str(), err.as_str()), (0, WELCOME, ""));
    assert!(
        !config.join("natter/known_servers").exists(),
        "nothing to pin"
    );
}

#[test]
fn plain_text_is_refused_from_remote_addresses_unless_allowed() {
    let s = Server::start(&["0", "--treat-as-remote", "127.0.0.2"]);
    let mut remote = Raw::connect_from("127.0.0.2", s.addr);
    remote.send("HELLO 1");
    assert_eq!(remote.expect_closed(), ["*BYE tls-required"]);
    // Loopback proper is local: plain text is fine.
    let mut local = s.login("hans", "falcon*solo");
    assert_eq!(local.request("WHOELSE"), "+USERS");

    let open = Server::start(&["0", "--treat-as-remote", "127.0.0.2", "--allow-plaintext"]);
    let mut remote = Raw::connect_from("127.0.0.2", open.addr);
    remote.send("HELLO 1");
    remote.expect_prefix("+HELLO 1 ");
}

#[test]
fn a_renewed_certificate_is_picked_up_on_sighup_and_a_broken_one_ignored() {
    let dir = scratch_dir();
    let write_pair = |name: &str| {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), ck.cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), ck.key_pair.serialize_pem()).unwrap();
        natter::tls::fingerprint(ck.cert.der())
    };
    let first = write_pair("live");
    let (cert, key) = (dir.join("live.crt"), dir.join("live.key"));
    let s = Server::start(&[
        "0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(fingerprint(&s), first);
    let signal = |s: &Server| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(s.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP")
    };
    // Renewed: new connections get the new certificate.
    let second = write_pair("next");
    std::fs::rename(dir.join("next.crt"), &cert).unwrap();
    std::fs::rename(dir.join("next.key"), &key).unwrap();
    signal(&s);
    wait_until("the reload", || {
        s.log().contains("reloaded the TLS certificate")
    });
    let config = scratch_dir();
    let (code, out, err) = run_client(&s, &config, &["--trust-fingerprint", &second], &[]);
    assert_eq!((code, out.as_str()), (0, WELCOME), "{err}");
    // Broken: an error naming the file, and the working certificate kept.
    std::fs::write(&cert, "not a certificate").unwrap();
    signal(&s);
    wait_until("the failed reload", || {
        s.log().contains("TLS certificate reload failed")
    });
    assert!(s.log().contains(cert.to_str().unwrap()), "{}", s.log());
    let (code, out, err) = run_client(&s, &config, &["--trust-fingerprint", &second], &[]);
    assert_eq!((code, out.as_str()), (0, WELCOME), "{err}");
}

#[test]
fn a_stalled_handshake_is_cut_off_by_the_login_deadline() {
    let s = Server::start(&["0", "--login-timeout", "1"]);
    let mut stalled = TcpStream::connect(s.addr).expect("connect");
    // The first bytes of a TLS record, and then nothing.
    stalled.write_all(&[0x16, 0x03, 0x01]).expect("write");
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    let mut closed = false;
    for _ in 0..100 {
        match std::io::Read::read(&mut stalled, &mut buf) {
            Ok(0) | Err(_) => {
                closed = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(closed, "the stalled handshake was not cut off");
    // Others are served meanwhile and after.
    let mut hans = s.login("hans", "falcon*solo");
    assert_eq!(hans.request("WHOELSE"), "+USERS");
}
