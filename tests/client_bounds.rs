//! A client that stays bounded and responsive whatever the other side does: a server
//! that floods and never reads, one that never answers or goes silent, replies it
//! cannot read, strangers on its peer port, a user asking for introductions in a
//! loop, and over-long input. Scripted servers and peers stand in where the real
//! natterd cannot misbehave.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{FakeServer, PromptCli, Raw, Server, wait_until};

fn client(fake: &FakeServer, extra: &[&str]) -> PromptCli {
    // The scripted server speaks plain text.
    let mut args = vec!["--quiet", "--plaintext", "--user", "hans"];
    args.extend_from_slice(extra);
    PromptCli::start(fake.addr(), &args, Some("pw"))
}

const WELCOME: &str = "Welcome to the greatest messaging application ever!\n";

#[test]
fn a_server_that_floods_pings_and_never_reads_cannot_grow_the_client() {
    let fake = FakeServer::bind();
    let mut c = client(&fake, &[]);
    let (srv, _) = fake.accept_login("hans");
    c.expect_output(WELCOME);
    // 24 MB of pings, never reading a byte of the answers.
    let mut w = srv.stream.try_clone().expect("clone");
    w.set_write_timeout(Some(Duration::from_secs(5))).ok();
    let chunk: Vec<u8> = (0..4096)
        .flat_map(|i| format!("*PING {i}\n").into_bytes())
        .collect();
    let mut sent = 0;
    let start = Instant::now();
    while sent < 24 << 20 && start.elapsed() < Duration::from_secs(20) {
        match w.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        sent >= 16 << 20,
        "the client stopped reading after {sent} bytes"
    );
    // One PONG per batch read, never one per ping: the client holds next to nothing.
    let rss = natter::loadgen::ProcSample::read(c.pid()).map_or(0, |p| p.rss_kib);
    assert!(
        rss < 32 * 1024,
        "client RSS {rss} KiB after {sent} bytes of pings"
    );
    drop(srv);
}

#[test]
fn a_server_that_stops_reading_is_dropped_with_a_clear_message() {
    let fake = FakeServer::bind();
    fake.small_receive_buffer();
    let mut c = client(&fake, &[]);
    let (_srv, _) = fake.accept_login("hans");
    c.expect_output(WELCOME);
    // `private` notes go out without waiting for replies: a server that reads none of
    // them would make the client queue them forever (256 KiB is about 37,000 notes).
    let lines: Vec<u8> = "private nobody hi\n".repeat(60_000).into_bytes();
    c.feed_stdin(lines);
    let (code, out) = c.expect_exit_within(Duration::from_secs(30));
    assert_eq!(code, 1);
    assert!(
        out.ends_with("Disconnected: the server stopped reading\n"),
        "{}",
        &out[out.len().saturating_sub(200)..]
    );
}

#[test]
fn a_server_that_never_answers_the_handshake_times_out() {
    let fake = FakeServer::bind();
    let mut c = client(&fake, &["--connect-timeout", "1s"]);
    let mut srv = fake.accept();
    assert_eq!(srv.next_line(), "HELLO 1");
    let (code, out) = c.expect_exit();
    assert_eq!(
        (code, out.as_str()),
        (1, "Connection to the server timed out\n")
    );
}

#[test]
fn a_server_that_goes_silent_after_login_times_out() {
    let fake = FakeServer::bind();
    let mut c = client(&fake, &[]);
    let mut srv = fake.accept();
    assert_eq!(srv.next_line(), "HELLO 1");
    // This server says it pings silent clients every second, then never does.
    srv.send("+HELLO 1 fake/1 1");
    srv.send("+USER hans");
    srv.next_line();
    srv.send("+WELCOME");
    c.expect_output(WELCOME);
    let (code, out) = c.expect_exit();
    assert_eq!(
        (code, out.as_str()),
        (1, "Connection to the server timed out\n")
    );
}

#[test]
fn a_reply_the_client_cannot_read_is_reported_and_input_keeps_working() {
    let fake = FakeServer::bind();
    let mut c = client(&fake, &[]);
    let (mut srv, _) = fake.accept_login("hans");
    c.expect_output(WELCOME);
    c.type_line("startprivate leia");
    assert_eq!(srv.next_line(), "PRIVATE leia");
    srv.send("+PEER leia 1.2.3.4 notaport tok");
    c.expect_output("Error. The server sent a reply this client cannot read\n");
    c.type_line("whoelse");
    assert_eq!(srv.next_line(), "WHOELSE");
    // A reply of the wrong kind is just as unreadable.
    srv.send("+OK");
    c.expect_output("Error. The server sent a reply this client cannot read\n");
    c.type_line("whoelse");
    assert_eq!(srv.next_line(), "WHOELSE");
    srv.send("+USERS yoda");
    c.expect_output("yoda\n");
}

/// Connects to the client's peer port as `user` with `token`; returns the answer.
fn peer_hello(port: u16, user: &str, token: &str) -> Option<String> {
    let mut p = Raw::from_stream(TcpStream::connect(("127.0.0.1", port)).expect("peer"));
    p.send(&format!("PEERHELLO {user} {token}"));
    p.next_line_within(Duration::from_secs(3)).ok().flatten()
}

#[test]
fn idle_strangers_on_the_peer_port_cannot_deny_private_chat() {
    let fake = FakeServer::bind();
    let mut c = client(&fake, &[]);
    let (mut srv, port) = fake.accept_login("hans");
    let port = port.expect("peer port");
    c.expect_output(WELCOME);
    let strangers: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("stranger"))
        .collect();
    srv.send("*EXPECT luke tok1");
    assert_eq!(
        peer_hello(port, "luke", "tok1").as_deref(),
        Some("PEEROK hans")
    );
    // And again, with the strangers reconnecting meanwhile.
    drop(strangers);
    let _more: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("stranger"))
        .collect();
    srv.send("*EXPECT leia tok2");
    assert_eq!(
        peer_hello(port, "leia", "tok2").as_deref(),
        Some("PEEROK hans")
    );
}

#[test]
fn one_user_asking_for_introductions_in_a_loop_cannot_crowd_out_others() {
    // The client keeps a few tokens per introducing user.
    let fake = FakeServer::bind();
    let mut c = client(&fake, &[]);
    let (mut srv, port) = fake.accept_login("hans");
    let port = port.expect("peer port");
    c.expect_output(WELCOME);
    for i in 0..1100 {
        srv.send(&format!("*EXPECT vader v{i}"));
    }
    srv.send("*EXPECT luke l1");
    assert_eq!(
        peer_hello(port, "luke", "l1").as_deref(),
        Some("PEEROK hans")
    );
    assert_eq!(
        peer_hello(port, "vader", "v1099").as_deref(),
        Some("PEEROK hans")
    );
    assert_eq!(
        peer_hello(port, "vader", "v0"),
        None,
        "an evicted token was accepted"
    );

    // The server refuses a requester past its share of introductions.
    let s = Server::start(&["0"]);
    let _leia = s.login_with("LOGIN leia princess$1 4444");
    let mut luke = s.login("luke", "jedi*knight");
    let (mut peers, mut limited) = (0, 0);
    for _ in 0..1100 {
        luke.send("PRIVATE leia");
    }
    for _ in 0..1100 {
        let r = luke.next_frame();
        if r.starts_with("+PEER leia ") {
            peers += 1;
        } else if r == "-RATE_LIMITED" {
            limited += 1;
        } else {
            panic!("unexpected {r:?}");
        }
    }
    assert!(peers <= 10 && limited >= 1090, "{peers} introductions");
    // Someone else still gets theirs.
    let mut yoda = s.login("yoda", "wise@!man");
    assert!(
        yoda.request("PRIVATE leia")
            .starts_with("+PEER leia 127.0.0.1 4444 ")
    );
}

#[test]
fn an_over_long_typed_line_gets_the_line_limit_error() {
    let s = Server::start(&["0"]);
    let mut c = PromptCli::start(s.addr, &["--quiet", "--user", "hans"], Some("falcon*solo"));
    c.expect_output(WELCOME);
    c.type_line(&format!("message yoda {}", "x".repeat(9000)));
    c.expect_output("Error. Line too long (limit 8192 bytes)\n");
    c.type_line("whoelse");
    c.type_line("message nobody hi");
    c.expect_output("Error. Invalid user\n");
    wait_until("the client to be alive", || {
        c.child.try_wait().ok().flatten().is_none()
    });
}
