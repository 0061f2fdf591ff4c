//! Peer-to-peer private messaging end to end: real server, real clients, direct TCP.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{Cli, Server};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The peer port a client listens on, found from its open sockets via /proc.
fn peer_port(cli: &Cli) -> u16 {
    let pid = cli.child.id();
    let mut inodes = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy().to_string();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
    }
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    for line in tcp.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // state 0A = LISTEN
        if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
            let port = f[1].split(':').nth(1).unwrap();
            return u16::from_str_radix(port, 16).unwrap();
        }
    }
    panic!("no listening socket for pid {pid}");
}

#[test]
fn private_lifecycle_with_every_error() {
    let s = Server::start(&["0"]);
    let mut a = Cli::login(&s, "hans", "falcon*solo");
    let mut b = Cli::login(&s, "yoda", "wise@!man");
    a.expect("yoda logged in");
    a.type_line("private yoda too early");
    a.expect("Error. Private messaging to yoda not enabled");
    a.type_line("stopprivate yoda");
    a.expect("Error. Private messaging to yoda not enabled");
    a.type_line("startprivate yoda");
    a.expect("Start private messaging with yoda");
    a.type_line("private yoda hi  there");
    b.expect("hans(private): hi  there");
    // Two-way: the target replies without its own startprivate.
    b.type_line("private hans hello back");
    a.expect("yoda(private): hello back");
    // A block placed after the session started does not cut it.
    b.type_line("block hans");
    b.expect("hans is blocked");
    a.type_line("private yoda still here");
    b.expect("hans(private): still here");
    b.type_line("unblock hans");
    b.expect("hans is unblocked");
    // stopprivate from one end shows on the other.
    a.type_line("stopprivate yoda");
    a.expect("Stop private messaging with yoda");
    b.expect("hans stopped private messaging");
    b.type_line("private hans gone?");
    b.expect("Error. Private messaging to hans not enabled");
    // Logout ends sessions: the other end's next private says so.
    b.type_line("startprivate hans");
    b.expect("Start private messaging with hans");
    b.type_line("logout");
    assert_eq!(b.expect_exit().0, 0);
    a.expect("yoda logged out");
    a.type_line("private yoda are you there");
    a.expect("Error. yoda is no longer online");
}

#[test]
fn private_messages_bypass_the_server() {
    let s = Server::start(&["0"]);
    let mut a = Cli::login(&s, "hans", "falcon*solo");
    let mut b = Cli::login(&s, "yoda", "wise@!man");
    a.expect("yoda logged in");
    a.type_line("startprivate yoda");
    a.expect("Start private messaging with yoda");
    let server = Pid::from_raw(s.pid() as i32);
    kill(server, Signal::SIGSTOP).unwrap();
    // The server is frozen; the private link still carries messages both ways.
    for i in 0..3 {
        a.type_line(&format!("private yoda while frozen {i}"));
        b.expect(&format!("hans(private): while frozen {i}"));
    }
    b.type_line("private hans reply while frozen");
    a.expect("yoda(private): reply while frozen");
    kill(server, Signal::SIGCONT).unwrap();
    a.type_line("whoelse");
    a.expect("yoda");
}

/// Reads one line from a raw peer socket (with the tests' read timeout), or None at EOF.
fn peer_read_line(stream: &mut TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(common::WAIT)).unwrap();
    common::read_peer_line(stream)
}

#[test]
fn strangers_on_the_peer_port_are_refused_silently() {
    let s = Server::start(&["0"]);
    // hans is a raw protocol client here, so the test sees the token itself.
    let mut hans = s.login_with("LOGIN hans falcon*solo 1");
    let mut b = Cli::login(&s, "yoda", "wise@!man");
    hans.expect("*LOGIN yoda");
    let port = peer_port(&b);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // Junk, a forged hello without an introduction, a silent socket: all dropped.
    let mut junk = TcpStream::connect(addr).unwrap();
    junk.write_all(b"\x00\xff garbage\n").unwrap();
    assert_eq!(peer_read_line(&mut junk), None);
    let mut forged = TcpStream::connect(addr).unwrap();
    forged
        .write_all(b"PEERHELLO hans 0123456789abcdef0123456789abcdef\n")
        .unwrap();
    assert_eq!(peer_read_line(&mut forged), None);
    let _silent = TcpStream::connect(addr).unwrap();
    // A real introduction.
    let reply = hans.request("PRIVATE yoda");
    let f: Vec<&str> = reply.split(' ').collect();
    assert_eq!(&f[..3], ["+PEER", "yoda", "127.0.0.1"], "{reply}");
    assert_eq!(f[3], port.to_string());
    let token = f[4].to_string();
    // Right token, forged name: dropped (and the token is not burnt by it? it is single-use
    // only on success, so the genuine hello below still works).
    let mut wrong_name = TcpStream::connect(addr).unwrap();
    wrong_name
        .write_all(format!("PEERHELLO vader {token}\n").as_bytes())
        .unwrap();
    assert_eq!(peer_read_line(&mut wrong_name), None);
    let mut link = TcpStream::connect(addr).unwrap();
    link.write_all(format!("PEERHELLO hans {token}\n").as_bytes())
        .unwrap();
    assert_eq!(peer_read_line(&mut link).as_deref(), Some("PEEROK yoda"));
    link.write_all(b"PMSG legit\n").unwrap();
    b.expect("hans(private): legit");
    // Replaying the used token is refused.
    let mut replay = TcpStream::connect(addr).unwrap();
    replay
        .write_all(format!("PEERHELLO hans {token}\nPMSG injected\n").as_bytes())
        .unwrap();
    assert_eq!(peer_read_line(&mut replay), None);
    // The client showed nothing from the strangers and keeps working both ways.
    b.type_line("whoelse");
    b.expect("hans");
    b.type_line("private hans reply");
    assert_eq!(peer_read_line(&mut link).as_deref(), Some("PMSG reply"));
}

#[test]
fn three_concurrent_private_sessions() {
    let s = Server::start(&["0"]);
    let mut a = Cli::login(&s, "hans", "falcon*solo");
    let users = [
        ("yoda", "wise@!man"),
        ("luke", "jedi*knight"),
        ("leia", "princess$1"),
    ];
    let mut others: Vec<Cli> = users.iter().map(|(u, p)| Cli::login(&s, u, p)).collect();
    a.expect_set(&["yoda logged in", "luke logged in", "leia logged in"]);
    for (u, _) in &users {
        a.type_line(&format!("startprivate {u}"));
        a.expect(&format!("Start private messaging with {u}"));
    }
    for round in 0..2 {
        for (i, (u, _)) in users.iter().enumerate() {
            a.type_line(&format!("private {u} round {round}"));
            // Skip presence lines the others may still be printing.
            loop {
                let l = others[i].next_line().unwrap();
                if l.ends_with("logged in") {
                    continue;
                }
                assert_eq!(l, format!("hans(private): round {round}"));
                break;
            }
        }
    }
    for (i, (u, _)) in users.iter().enumerate() {
        others[i].type_line(&format!("private hans from {u}"));
        a.expect_set(&[&format!("{u}(private): from {u}")]);
    }
}
