//! Hostile input and operations: per-address limits, flood control, lockout scope,
//! hashed passwords verified off the loop, SIGHUP reloads, graceful SIGTERM, counters.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{CREDENTIALS, Raw, Server, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn signal(s: &Server, sig: Signal) {
    kill(Pid::from_raw(s.pid() as i32), sig).expect("signal natterd");
}

fn counter(s: &Server, name: &str) -> u64 {
    common::counter(s, name)
}

#[test]
fn connections_per_address_are_capped_and_others_keep_being_served() {
    let s = Server::start(&[
        "0",
        "--limit-loopback",
        "--max-per-ip",
        "2",
        "--max-new-per-ip",
        "0",
    ]);
    let mut a = s.login("hans", "falcon*solo");
    let _b = s.raw();
    let mut refused = s.raw();
    assert_eq!(refused.expect_closed(), ["*BYE too-many-connections"]);
    // Another address is not affected, and the first connection still works.
    let mut other = Raw::connect_from("127.0.0.2", s.addr);
    other.send("HELLO 1");
    other.expect_prefix("+HELLO 1 ");
    a.expect_nothing_pending();
    assert_eq!(counter(&s, "per_ip_refused"), 1);
    // A slot frees up when a connection closes.
    drop(_b);
    wait_until("the closed connection to be swept", || {
        let mut c = s.raw();
        c.send("HELLO 1");
        matches!(c.next_line_within(common::WAIT), Ok(Some(l)) if l.starts_with("+HELLO"))
    });
}

#[test]
fn new_connections_per_address_per_minute_are_capped() {
    let s = Server::start(&[
        "0",
        "--limit-loopback",
        "--max-per-ip",
        "0",
        "--max-new-per-ip",
        "3",
    ]);
    let _kept: Vec<Raw> = (0..3).map(|_| s.raw()).collect();
    let mut refused = s.raw();
    assert_eq!(refused.expect_closed(), ["*BYE connecting-too-fast"]);
    let mut other = Raw::connect_from("127.0.0.3", s.addr);
    other.send("HELLO 1");
    other.expect_prefix("+HELLO 1 ");
    assert_eq!(counter(&s, "rate_refused"), 1);
}

/// A server whose flood control applies to loopback: a burst of 5, then `rate` per second.
fn flood_limited_server(rate: &str) -> Server {
    Server::start(&[
        "0",
        "--limit-loopback",
        "--flood-burst",
        "5",
        "--flood-rate",
        rate,
    ])
}

#[test]
fn a_flood_is_throttled_not_dropped_and_does_not_delay_others() {
    let s = flood_limited_server("40");
    let mut flooder = s.login("hans", "falcon*solo");
    let mut calm = s.login("yoda", "wise@!man");
    flooder.expect("*LOGIN yoda");
    // 85 commands at once: 5 go through, the other 80 trickle at 40/s (about 2 s).
    let mut burst = String::new();
    for i in 0..85 {
        burst.push_str(&format!("PING f{i}\n"));
    }
    flooder.send_bytes(burst.as_bytes());
    flooder.expect("+PONG f0");
    wait_until("the flooder to be throttled", || {
        counter(&s, "flood_throttled") > 0
    });
    // Meanwhile another user is served at once, not after the flood.
    let t = Instant::now();
    assert_eq!(calm.request("MSG hans still there?"), "+SENT hans");
    let waited = t.elapsed();
    assert!(
        waited < Duration::from_millis(250),
        "calm client waited {waited:?}"
    );
    // Every flooded command is answered, in order: throttled, never dropped.
    let mut pongs = 1;
    let mut got_msg = false;
    while pongs < 85 {
        let line = flooder.next_frame();
        if line.starts_with("*MSG ") {
            got_msg = true;
            continue;
        }
        assert_eq!(line, format!("+PONG f{pongs}"));
        pongs += 1;
    }
    let rest = if got_msg {
        String::new()
    } else {
        flooder.next_frame()
    };
    assert!(
        got_msg || rest.starts_with("*MSG "),
        "the message was lost: {rest:?}"
    );
}

#[test]
fn lockout_scope_account_ip_only_locks_the_attacking_address() {
    let s = Server::start(&["0", "60", "--lockout-scope", "account+ip"]);
    for attempt in 0..3 {
        let mut c = Raw::connect_from("127.0.0.2", s.addr);
        c.send("HELLO 1");
        c.expect_prefix("+HELLO");
        c.send("LOGIN vader wrong");
        let reply = c.next_frame();
        if attempt < 2 {
            assert!(reply.starts_with("-BAD_PASSWORD"), "{reply}");
        } else {
            assert_eq!(reply, "-LOCKED_NOW");
        }
    }
    // The attacker's address stays locked, even with the right password...
    let mut c = Raw::connect_from("127.0.0.2", s.addr);
    c.send("HELLO 1");
    c.expect_prefix("+HELLO");
    c.send("LOGIN vader sithlord**");
    c.expect("-LOCKED");
    // ...while the real user, elsewhere, logs in.
    let mut real = s.raw();
    real.send("HELLO 1");
    real.expect_prefix("+HELLO");
    real.send("LOGIN vader sithlord**");
    real.expect("+WELCOME");
}

fn with_hashes() -> (String, String) {
    // A deliberately slow bcrypt hash for hans (about a second of verification) and a
    // default argon2id hash for yoda, next to plain passwords for everyone else.
    let slow = bcrypt::hash("falcon*solo", 13).expect("bcrypt");
    let argon = natter::server::accounts::hash_password("wise@!man").expect("argon2");
    let creds = CREDENTIALS
        .replace("hans falcon*solo", &format!("hans {slow}"))
        .replace("yoda wise@!man", &format!("yoda {argon}"));
    (creds, argon)
}

#[test]
fn hashed_and_plain_passwords_and_others_served_while_verifying() {
    let (creds, _) = with_hashes();
    let s = Server::start_with(&creds, &["0"]);
    let mut luke = s.login("luke", "jedi*knight");
    // Argon2: right and wrong.
    let mut yoda = s.raw();
    yoda.send("HELLO 1");
    yoda.expect_prefix("+HELLO");
    yoda.send("LOGIN yoda wrong");
    yoda.expect("-BAD_PASSWORD 2");
    yoda.send("LOGIN yoda wise@!man");
    yoda.expect("+WELCOME");
    luke.expect("*LOGIN yoda");
    // The slow bcrypt login, with a request pipelined behind it: the request waits for
    // the verdict, and meanwhile everyone else is served.
    let mut hans = s.raw();
    hans.send("HELLO 1");
    hans.expect_prefix("+HELLO");
    hans.send_bytes(b"LOGIN hans falcon*solo\nWHOELSE\n");
    // The loop has taken the job (a loop busy hashing could not answer SIGUSR1 until
    // it was done, and hans would be welcomed by then)...
    wait_until("hans's verification to start", || {
        counter(&s, "hash_verifications") >= 3
    });
    // ...and keeps serving others while hans waits for the verdict.
    assert_eq!(luke.request("PING during"), "+PONG during");
    assert_eq!(yoda.request("MSG luke hi"), "+SENT luke");
    luke.expect_msg("yoda", "hi");
    assert!(
        hans.next_line_within(Duration::from_millis(5)).is_err(),
        "hans was answered before the others: the verification ran on the loop"
    );
    hans.expect("+WELCOME");
    hans.expect("+USERS luke yoda");
    // The login that was verifying finished after the others were served.
    luke.expect("*LOGIN hans");
    assert!(counter(&s, "hash_verifications") >= 3);
}

#[test]
fn hash_password_prints_a_hash_that_logs_in() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_natterd"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"princess$1\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    let creds = CREDENTIALS.replace("leia princess$1", &format!("leia {hash}"));
    let s = Server::start_with(&creds, &["0"]);
    s.login("leia", "princess$1");
}

#[test]
fn sighup_reloads_adds_removes_and_keeps_the_old_file_when_broken() {
    let s = Server::start(&["0"]);
    let mut hans = s.login("hans", "falcon*solo");
    let mut leia = s.login("leia", "princess$1");
    hans.expect("*LOGIN leia");
    assert_eq!(hans.request("MSG leia kept"), "+SENT leia");
    // A broken file: reported, nothing changes.
    let path = s.dir.join("credentials.txt");
    std::fs::write(&path, "hans falcon*solo\nbroken line here\n").expect("write");
    signal(&s, Signal::SIGHUP);
    wait_until("the reload error", || s.log().contains("reload failed"));
    assert!(s.log().contains("credentials.txt:2:"), "{}", s.log());
    let _vader = s.login("vader", "sithlord**");
    hans.expect("*LOGIN vader");
    // A good file: leia removed, ben added, hans's password changed.
    let good = CREDENTIALS
        .replace("leia princess$1\n", "ben kenobi\n")
        .replace("hans falcon*solo", "hans millennium");
    std::fs::write(&path, good).expect("write");
    signal(&s, Signal::SIGHUP);
    let lines = leia.expect_closed();
    assert!(
        lines.iter().any(|l| l == "*BYE removed"),
        "leia was not told: {lines:?}"
    );
    hans.expect("*LOGOUT leia");
    assert_eq!(hans.request("MSG leia gone?"), "-NO_SUCH_USER leia");
    s.login("ben", "kenobi");
    let mut again = s.raw();
    again.send("HELLO 1");
    again.expect_prefix("+HELLO");
    // The old password no longer works; the new one does (hans is online already).
    again.send("LOGIN hans falcon*solo");
    again.expect_prefix("-BAD_PASSWORD");
    again.send("LOGIN hans millennium");
    again.expect("-ALREADY_ONLINE");
    assert_eq!(counter(&s, "reloads"), 1);
}

#[test]
fn sigterm_tells_everyone_saves_state_and_exits_zero() {
    let mut s = Server::start(&["0"]);
    let mut hans = s.login("hans", "falcon*solo");
    let mut luke = s.login("luke", "jedi*knight");
    hans.expect("*LOGIN luke");
    assert_eq!(
        hans.request("MSG leia see you after the restart"),
        "+STORED leia"
    );
    signal(&s, Signal::SIGTERM);
    for c in [&mut hans, &mut luke] {
        let lines = c.expect_closed();
        assert!(
            lines.iter().any(|l| l == "*BYE shutdown"),
            "not told: {lines:?}"
        );
    }
    let status = s.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    s.restart();
    let mut leia = s.login("leia", "princess$1");
    leia.expect_msg("hans", "see you after the restart");
    // The history saw both users leave at the shutdown.
    assert_eq!(leia.request("WHOELSESINCE 1h"), "+USERS hans luke");
}

#[test]
fn line_output_and_login_limits_move_their_counters() {
    let s = Server::start(&["0", "--max-queued", "64K", "--login-timeout", "1"]);
    let mut hans = s.login("hans", "falcon*solo");
    hans.send(&"x".repeat(9000));
    hans.expect("-TOO_LONG 8192");
    // A reader that never reads is cut off once 64 KiB wait for it (after the kernel's
    // socket buffers, several MiB on loopback, are full).
    let _stuck = s.login("yoda", "wise@!man");
    hans.expect("*LOGIN yoda");
    let text = "y".repeat(4000);
    let mut sent = 0;
    while counter(&s, "slow_reader_kills") == 0 {
        for _ in 0..200 {
            hans.send(&format!("BCAST {text}"));
        }
        sent += 200;
        assert!(sent < 20_000, "the slow reader was never cut off");
    }
    // An unauthenticated connection is dropped at its deadline.
    let mut idle = s.raw();
    assert_eq!(idle.expect_closed(), ["*BYE login-timeout"]);
    assert_eq!(counter(&s, "too_long"), 1);
    assert_eq!(counter(&s, "login_timeouts"), 1);
    // And everyone else is still served.
    hans.send("PING still");
    loop {
        let l = hans.next_frame();
        if l == "+PONG still" {
            break;
        }
        assert!(l.starts_with("+BCAST") || l == "*LOGOUT yoda", "{l}");
    }
}

/// Regression (issue 12): flood control exempted lines by their raw prefix, so 100
/// `PONGx` lines got error replies and never paused the input. Only frames that parse
/// as `PONG <seq>` or `ACK <id>` are exempt now.
#[test]
fn only_real_pongs_and_acks_escape_flood_control() {
    let s = flood_limited_server("200");
    let mut c = s.login("hans", "falcon*solo");
    // Real answers never count: 100 of them leave the counter at zero.
    let answers: String = (0..100).map(|i| format!("PONG {i}\nACK {i}\n")).collect();
    c.send_bytes(answers.as_bytes());
    c.expect_nothing_pending();
    assert_eq!(counter(&s, "flood_throttled"), 0);
    // Lines that only look like them are commands: throttled, and every one answered.
    let fakes: String = (0..100)
        .map(|i| format!("PONGx{i}\nACKnowledge\n"))
        .collect();
    c.send_bytes(fakes.as_bytes());
    for _ in 0..200 {
        assert_eq!(c.next_frame(), "-UNKNOWN_COMMAND");
    }
    assert!(counter(&s, "flood_throttled") > 0);
}

/// Regression (issue 12): the hash verifier had no bound. 512 guesses from 16
/// addresses, sent and closed at once, made a genuine login time out. Now a closed
/// connection's job is dropped before hashing, a locked account's jobs are answered
/// without hashing, the queue is capped per address and in all, and accounts take
/// turns.
#[test]
fn password_guess_floods_cannot_starve_a_genuine_login() {
    let argon = |pw: &str| natter::server::accounts::hash_password(pw).expect("argon2");
    let creds = CREDENTIALS
        .replace(
            "vader sithlord**",
            &format!("vader {}", argon("sithlord**")),
        )
        .replace("yoda wise@!man", &format!("yoda {}", argon("wise@!man")));
    let s = Server::start_with(&creds, &["0"]);
    for a in 2..18 {
        for _ in 0..32 {
            let mut c = Raw::connect_from(&format!("127.0.0.{a}"), s.addr);
            c.send_bytes(b"HELLO 1\nLOGIN vader guess\n");
        }
    }
    // Guesses from connections that stay open: a few are queued per address, the rest
    // refused at once (not counted as failures).
    let mut open: Vec<Raw> = (0..20)
        .map(|_| {
            let mut c = Raw::connect_from("127.0.0.30", s.addr);
            c.send_bytes(b"HELLO 1\nLOGIN vader guess\n");
            c
        })
        .collect();
    let mut refused = 0;
    for c in &mut open {
        c.expect_prefix("+HELLO");
        match c.next_frame().as_str() {
            "-RATE_LIMITED" => refused += 1,
            "-BAD_PASSWORD 2" | "-BAD_PASSWORD 1" | "-LOCKED_NOW" | "-LOCKED" => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused >= 20 - 4, "only {refused} of 20 refused");
    // A genuine login to another account is verified and welcomed (within `WAIT`).
    let mut yoda = s.raw();
    yoda.send("HELLO 1");
    yoda.expect_prefix("+HELLO");
    yoda.send("LOGIN yoda wise@!man");
    yoda.expect("+WELCOME");
    // Far fewer hashes than the 532 guesses: vader is locked after three failures, and
    // the rest are dropped (closed) or answered without hashing (locked).
    let hashed = counter(&s, "hash_verifications");
    assert!(hashed <= 16, "{hashed} hashes computed");
    assert_eq!(counter(&s, "verify_queued"), 0);
}

#[test]
fn cluster_flags_are_checked_and_an_unreachable_broker_is_a_clear_error() {
    let dir = common::scratch_dir();
    std::fs::write(dir.join("credentials.txt"), CREDENTIALS).unwrap();
    let run = |args: &[&str]| {
        let child = Command::new(env!("CARGO_BIN_EXE_natterd"))
            .args(["0", "--bind", "127.0.0.1", "--in-memory"])
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The broker is waited for 10 s at start; give it a little more.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut child = child;
        let code = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "natterd did not give up");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        (code, err)
    };
    let (code, err) = run(&["--cluster", "nats://127.0.0.1:4222"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--node"), "{err}");
    let (code, err) = run(&["--cluster", "http://x", "--node", "a"]);
    assert_eq!(code, 2, "{err}");
    let (code, err) = run(&["--cluster", "nats://127.0.0.1:4222", "--node", "a.b"]);
    assert_eq!(code, 2, "{err}");
    // Port 1 on loopback: nothing listens there.
    let (code, err) = run(&["--cluster", "nats://127.0.0.1:1", "--node", "a"]);
    assert_ne!(code, 0);
    assert!(
        err.lines().any(|l| l == "natterd: cannot join the cluster: no JetStream broker ready at 127.0.0.1:1 within 10s"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
