//! End-to-end tests of natterd over real TCP: every row of the contract's Login and
//! Commands tables as protocol frames, timers, and the limits.

mod common;

use std::time::{Duration, Instant};

use common::{Raw, Server, wait_until};

#[test]
fn handshake_is_required_and_versioned() {
    let s = Server::start(&["0"]);
    let mut c = s.raw();
    assert_eq!(c.request("LOGIN hans falcon*solo"), "-HELLO_FIRST");
    assert_eq!(c.request("HELLO 99"), "-VERSION 1");
    assert!(c.request("HELLO 1").starts_with("+HELLO 1 natterd/"));
    assert_eq!(c.request("WHOELSE"), "-NOT_LOGGED_IN");
    assert_eq!(c.request("LOGIN hans falcon*solo"), "+WELCOME");
    assert_eq!(c.request("LOGIN hans falcon*solo"), "-ALREADY_LOGGED_IN");
    assert_eq!(c.request("PING abc"), "+PONG abc");
}

#[test]
fn login_table() {
    let s = Server::start(&["0"]);
    let mut c = s.raw();
    c.send("HELLO 1");
    c.expect_prefix("+HELLO");
    // Unknown username: try again on the same connection.
    assert_eq!(c.request("LOGIN nobody x"), "-NO_SUCH_USER nobody");
    // Wrong password twice, then right: success resets the count.
    assert_eq!(c.request("LOGIN hans nope"), "-BAD_PASSWORD 2");
    assert_eq!(c.request("LOGIN hans nope"), "-BAD_PASSWORD 1");
    assert_eq!(c.request("LOGIN hans falcon*solo"), "+WELCOME");
    // Already online: refused and closed, the existing session untouched.
    let mut dup = s.raw();
    dup.send("HELLO 1");
    dup.expect_prefix("+HELLO");
    dup.send("LOGIN hans falcon*solo");
    assert_eq!(dup.expect_closed(), ["-ALREADY_ONLINE"]);
    c.expect_nothing_pending();
    assert_eq!(c.request("WHOELSE"), "+USERS");
    // Passwords and names are case-sensitive.
    let mut d = s.raw();
    d.send("HELLO 1");
    d.expect_prefix("+HELLO");
    assert_eq!(d.request("LOGIN Hans falcon*solo"), "-NO_SUCH_USER Hans");
    assert_eq!(d.request("LOGIN yoda WISE@!man"), "-BAD_PASSWORD 2");
}

fn attempt(s: &Server, user: &str, pw: &str) -> Vec<String> {
    let mut c = s.raw();
    c.send("HELLO 1");
    c.expect_prefix("+HELLO");
    c.send(&format!("LOGIN {user} {pw}"));
    let first = c.next_frame();
    if first == "+WELCOME" {
        return vec![first];
    }
    if first.starts_with("-BAD_PASSWORD") || first.starts_with("-NO_SUCH_USER") {
        return vec![first];
    }
    let mut all = vec![first];
    all.extend(c.expect_closed());
    all
}

#[test]
fn three_failures_lock_the_username_from_any_address_until_block_duration() {
    let s = Server::start(&["0", "1"]);
    // Failures accumulate per username across connections.
    assert_eq!(attempt(&s, "yoda", "x"), ["-BAD_PASSWORD 2"]);
    assert_eq!(attempt(&s, "yoda", "y"), ["-BAD_PASSWORD 1"]);
    let locked_at = Instant::now();
    assert_eq!(attempt(&s, "yoda", "z"), ["-LOCKED_NOW"]);
    // Even the right password is refused while locked; other accounts are unaffected.
    assert_eq!(attempt(&s, "yoda", "wise@!man"), ["-LOCKED"]);
    assert_eq!(attempt(&s, "hans", "falcon*solo"), ["+WELCOME"]);
    // The lockout ends after BLOCK_DURATION (1 s here), not before.
    let mut outcome = Vec::new();
    wait_until("the lockout to expire", || {
        outcome = attempt(&s, "yoda", "wise@!man");
        outcome == ["+WELCOME"]
    });
    assert!(
        locked_at.elapsed() >= Duration::from_secs(1),
        "lockout lifted early"
    );
}

#[test]
fn lockout_counts_reset_after_expiry() {
    let s = Server::start(&["0", "1"]);
    for pw in ["a", "b"] {
        attempt(&s, "luke", pw);
    }
    assert_eq!(attempt(&s, "luke", "c"), ["-LOCKED_NOW"]);
    wait_until("lockout expiry", || {
        attempt(&s, "luke", "wrong") != ["-LOCKED"]
    });
    // That probe was the first failure of a fresh count.
    assert_eq!(attempt(&s, "luke", "wrong"), ["-BAD_PASSWORD 1"]);
}

#[test]
fn messages_online_offline_and_errors() {
    let s = Server::start(&["0"]);
    let (mut hans, mut yoda) = s.hans_and_yoda();
    assert_eq!(hans.request("MSG yoda hello  there "), "+SENT yoda");
    yoda.expect_msg("hans", "hello  there ");
    assert_eq!(hans.request("MSG nobody hi"), "-NO_SUCH_USER nobody");
    assert_eq!(hans.request("MSG hans hi"), "-SELF");
    assert_eq!(hans.request("MSG yoda"), "-BAD_ARGUMENTS");
    assert_eq!(hans.request("NONSENSE"), "-UNKNOWN_COMMAND");
    // Offline: stored, delivered at next login, oldest first, after the welcome.
    for i in 0..5 {
        assert_eq!(
            hans.request(&format!("MSG vader stored {i}")),
            "+STORED vader"
        );
    }
    assert_eq!(yoda.request("MSG vader from yoda"), "+STORED vader");
    let mut vader = s.raw();
    vader.send("HELLO 1");
    vader.expect_prefix("+HELLO");
    vader.send("LOGIN vader sithlord**");
    vader.expect("+WELCOME");
    for i in 0..5 {
        vader.expect_msg("hans", &format!("stored {i}"));
    }
    vader.expect_msg("yoda", "from yoda");
    vader.expect_nothing_pending();
    // Delivered once: a second login gets nothing more.
    vader.send("LOGOUT");
    assert_eq!(vader.expect_closed(), ["+BYE"]);
    let mut again = s.login("vader", "sithlord**");
    again.expect_nothing_pending();
}

#[test]
fn blocking_rules() {
    let s = Server::start(&["0"]);
    let (mut a, mut b) = s.hans_and_yoda();
    assert_eq!(a.request("BLOCK yoda"), "+BLOCKED yoda");
    assert_eq!(a.request("BLOCK hans"), "-SELF");
    assert_eq!(a.request("BLOCK nobody"), "-NO_SUCH_USER nobody");
    // B is never told, cannot message A, and A vanishes from B's lists.
    b.expect_nothing_pending();
    assert_eq!(b.request("MSG hans hi"), "-BLOCKED_BY hans");
    assert_eq!(b.request("WHOELSE"), "+USERS");
    assert_eq!(b.request("WHOELSESINCE 1h"), "+USERS");
    assert_eq!(b.request("PRIVATE hans"), "-BLOCKED_BY hans");
    // B's broadcast skips A and says some were left out; a third user still gets it.
    let mut c = s.login("vader", "sithlord**");
    a.expect("*LOGIN vader");
    b.expect("*LOGIN vader");
    assert_eq!(b.request("BCAST hello all"), "+BCAST 1 1");
    c.expect("*BCAST yoda hello all");
    a.expect_nothing_pending();
    // A still sees B's presence; B does not see A's.
    b.send("LOGOUT");
    b.expect_closed();
    a.expect("*LOGOUT yoda");
    let mut b = s.login("yoda", "wise@!man");
    a.expect("*LOGIN yoda");
    a.send("LOGOUT");
    a.expect_closed();
    c.expect("*LOGOUT yoda");
    c.expect("*LOGIN yoda");
    c.expect("*LOGOUT hans");
    b.expect_nothing_pending();
    // Unblock (from a new session of A; the block list outlives the session).
    let mut a = s.login("hans", "falcon*solo");
    c.expect("*LOGIN hans");
    assert_eq!(a.request("UNBLOCK yoda"), "+UNBLOCKED yoda");
    assert_eq!(a.request("UNBLOCK yoda"), "-NOT_BLOCKED yoda");
    assert_eq!(a.request("UNBLOCK hans"), "-SELF");
    assert_eq!(a.request("UNBLOCK nobody"), "-NO_SUCH_USER nobody");
    assert_eq!(b.request("MSG hans back"), "+SENT hans");
    a.expect_msg("yoda", "back");
}

#[test]
fn whoelse_and_whoelsesince() {
    let s = Server::start(&["0"]);
    let mut hans = s.login("hans", "falcon*solo");
    let mut luke = s.login("luke", "jedi*knight");
    hans.expect("*LOGIN luke");
    let mut leia = s.login("leia", "princess$1");
    assert_eq!(hans.request("WHOELSE"), "*LOGIN leia");
    hans.expect("+USERS leia luke");
    leia.send("LOGOUT");
    leia.expect_closed();
    hans.expect("*LOGOUT leia");
    luke.expect("*LOGIN leia");
    luke.expect("*LOGOUT leia");
    assert_eq!(hans.request("WHOELSE"), "+USERS luke");
    assert_eq!(hans.request("WHOELSESINCE 60"), "+USERS leia luke");
    assert_eq!(hans.request("WHOELSESINCE 1h 30m"), "+USERS leia luke");
    // A window longer than the server's life covers everyone it has seen.
    assert_eq!(hans.request("WHOELSESINCE 100000h"), "+USERS leia luke");
    // Outside the window: leia drops out once the window is shorter than her absence.
    wait_until("leia's logout to age past 1s", || {
        hans.request("WHOELSESINCE 1") == "+USERS luke"
    });
    assert_eq!(hans.request("WHOELSESINCE soon"), "-BAD_ARGUMENTS");
}

#[test]
fn broadcast_and_presence() {
    let s = Server::start(&["0"]);
    let (mut a, mut b) = s.hans_and_yoda();
    assert_eq!(a.request("BCAST hi   all"), "+BCAST 1 0");
    b.expect("*BCAST hans hi   all");
    // The newcomer is not told about themself.
    b.expect_nothing_pending();
    // Broadcasts are not stored for offline users.
    b.send("LOGOUT");
    b.expect_closed();
    a.expect("*LOGOUT yoda");
    assert_eq!(a.request("BCAST nobody hears"), "+BCAST 0 0");
    let mut b = s.login("yoda", "wise@!man");
    b.expect_nothing_pending();
    a.expect("*LOGIN yoda");
}

#[test]
fn line_limits_and_bad_input_get_error_replies_not_disconnects() {
    let s = Server::start(&["0"]);
    let mut a = s.login("hans", "falcon*solo");
    let long = format!("MSG yoda {}", "x".repeat(9000));
    assert_eq!(a.request(&long), "-TOO_LONG 8192");
    a.send_bytes(b"MSG yoda \xff\xfe\n");
    a.expect("-BAD_UTF8");
    a.send_bytes(b"\r\n");
    a.expect("-UNKNOWN_COMMAND");
    assert_eq!(a.request("MSG yoda still fine"), "+STORED yoda");
}

#[test]
fn regression_megabytes_without_newline_hold_no_memory() {
    let s = Server::start(&["0"]);
    let (mut a, mut b) = s.hans_and_yoda();
    let rss_before = s.rss_kib();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..32 {
        a.send_bytes(&chunk);
    }
    // The server keeps serving others meanwhile.
    assert_eq!(b.request("MSG hans during the flood"), "+SENT hans");
    a.expect_msg("yoda", "during the flood");
    a.send_bytes(b"\n");
    a.expect("-TOO_LONG 8192");
    let grown = s.rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 4 * 1024,
        "RSS grew by {grown} KiB for 32 MiB of unterminated input"
    );
}

#[test]
fn inactivity_timeout_ignores_incoming_messages_and_pings() {
    let s = Server::start(&[
        "0",
        "60",
        "2",
        "--ping-interval",
        "1",
        "--ping-timeout",
        "5",
    ]);
    let mut idle = s.login("hans", "falcon*solo");
    let mut busy = s.login("yoda", "wise@!man");
    idle.expect("*LOGIN yoda");
    let last_command = Instant::now();
    // `busy` keeps typing (so it stays) and keeps messaging `idle`, which only reads,
    // acks and answers pings: none of that is activity, so `idle` times out.
    let (mut pings, mut received, mut sent) = (0, 0, 0);
    let mut timed_out = false;
    while !timed_out {
        assert!(
            last_command.elapsed() < Duration::from_secs(6),
            "no timeout"
        );
        let reply = busy.request(&format!("MSG hans tick {sent}"));
        if reply == "+SENT hans" {
            sent += 1;
        }
        // Read whatever `idle` gets for a while (this paces the loop too).
        while let Ok(Some(l)) = idle.next_line_within(Duration::from_millis(250)) {
            if let Some(seq) = l.strip_prefix("*PING ") {
                pings += 1;
                idle.send(&format!("PONG {seq}"));
            } else if let Some(rest) = l.strip_prefix("*MSG ") {
                received += 1;
                let id = rest.split(' ').next().unwrap_or("0").to_string();
                idle.send(&format!("ACK {id}"));
            } else {
                assert_eq!(l, "*TIMEOUT");
                timed_out = true;
                break;
            }
        }
    }
    assert!(
        last_command.elapsed() >= Duration::from_secs(2),
        "timed out early"
    );
    assert!(
        received >= 3 && received <= sent,
        "received {received} of {sent}"
    );
    let _ = pings;
    assert!(idle.expect_closed().is_empty());
    // The busy user, who kept issuing commands, is still logged in and sees the logout.
    loop {
        let l = busy.next_frame();
        if l == "*LOGOUT hans" {
            break;
        }
        assert!(l.starts_with("+SENT") || l.starts_with("+STORED"), "{l}");
    }
    assert_eq!(busy.request("WHOELSE"), "+USERS");
}

#[test]
fn answering_liveness_pings_is_not_activity() {
    let s = Server::start(&[
        "0",
        "60",
        "2",
        "--ping-interval",
        "1",
        "--ping-timeout",
        "5",
    ]);
    let mut c = s.login("hans", "falcon*solo");
    let start = Instant::now();
    let mut pings = 0;
    loop {
        let l = c.next_line();
        if let Some(seq) = l.strip_prefix("*PING ") {
            pings += 1;
            c.send(&format!("PONG {seq}"));
            continue;
        }
        assert_eq!(l, "*TIMEOUT");
        break;
    }
    assert!(pings >= 1, "the server never pinged a silent connection");
    assert!(start.elapsed() >= Duration::from_secs(2));
}

#[test]
fn dead_connections_are_dropped_by_the_liveness_check_and_messages_kept() {
    let s = Server::start(&[
        "0",
        "60",
        "600",
        "--ping-interval",
        "1",
        "--ping-timeout",
        "1",
    ]);
    let mut mute = s.login("hans", "falcon*solo");
    let mut other = s.login("yoda", "wise@!man");
    // `mute` never answers pings (nor reads): it is dropped and its user logged out.
    assert_eq!(other.request("MSG hans are you there"), "+SENT hans");
    other.expect("*LOGOUT hans");
    let _ = &mut mute;
    // The unacknowledged message went back to the mailbox.
    let mut back = s.login("hans", "falcon*solo");
    back.expect_msg("yoda", "are you there");
}

#[test]
fn unauthenticated_connections_have_a_deadline() {
    let s = Server::start(&["0", "--login-timeout", "1"]);
    let mut c = s.raw();
    c.send("HELLO 1");
    c.expect_prefix("+HELLO");
    assert_eq!(c.expect_closed(), ["*BYE login-timeout"]);
}

#[test]
fn connection_limit_pauses_accepting_and_resumes() {
    let s = Server::start(&["0", "--max-connections", "2"]);
    let mut a = s.raw();
    assert!(a.request("HELLO 1").starts_with("+HELLO"));
    let mut b = s.raw();
    assert!(b.request("HELLO 1").starts_with("+HELLO"));
    // The third waits in the kernel's backlog, unanswered.
    let mut c = s.raw();
    c.send("HELLO 1");
    assert!(
        c.next_line_within(Duration::from_millis(300)).is_err(),
        "accepted past the limit"
    );
    drop(a);
    assert!(c.next_frame().starts_with("+HELLO"));
    b.expect_nothing_pending();
}

#[test]
fn slow_reader_is_disconnected_and_its_direct_messages_kept() {
    let s = Server::start(&["0", "--max-queued", "64K"]);
    let mut sender = s.login("hans", "falcon*solo");
    let reader = s.login("yoda", "wise@!man");
    sender.expect("*LOGIN yoda");
    for i in 0..100 {
        assert_eq!(
            sender.request(&format!("MSG yoda direct {i}")),
            "+SENT yoda"
        );
    }
    // Flood broadcasts at the reader, which never reads, until the server gives up on it.
    let big = format!("BCAST {}", "b".repeat(8000));
    let mut kicked = false;
    for _ in 0..20_000 {
        sender.send(&big);
        let l = sender.next_frame();
        if l == "*LOGOUT yoda" {
            kicked = true;
            break;
        }
        assert!(l.starts_with("+BCAST"), "{l}");
    }
    assert!(kicked, "the slow reader was never disconnected");
    drop(reader);
    // Every direct message survives, in order, at the next login.
    let mut again = s.login("yoda", "wise@!man");
    for i in 0..100 {
        again.expect_msg("hans", &format!("direct {i}"));
    }
    again.expect_nothing_pending();
}

#[test]
fn regression_login_backlog_does_not_trip_the_slow_reader_limit() {
    let s = Server::start(&["0", "--max-queued", "64K"]);
    let mut sender = s.login("hans", "falcon*solo");
    let text = "m".repeat(1000);
    for i in 0..3000 {
        sender.send(&format!("MSG yoda {i} {text}"));
    }
    for _ in 0..3000 {
        sender.expect("+STORED yoda");
    }
    // 3 MB of backlog against a 64 KiB queue limit: paced by acks, all arrive in order.
    let mut yoda = s.login("yoda", "wise@!man");
    for i in 0..3000 {
        yoda.expect_msg("hans", &format!("{i} {text}"));
    }
    yoda.expect_nothing_pending();
    sender.expect("*LOGIN yoda");
}

#[test]
fn mailbox_cap_refuses_with_an_error_and_keeps_what_was_stored() {
    let s = Server::start(&["0", "--mailbox-max-messages", "3"]);
    let mut a = s.login("hans", "falcon*solo");
    for i in 0..3 {
        assert_eq!(a.request(&format!("MSG leia {i}")), "+STORED leia");
    }
    assert_eq!(a.request("MSG leia overflow"), "-MAILBOX_FULL leia");
    let mut leia = s.login("leia", "princess$1");
    for i in 0..3 {
        leia.expect_msg("hans", &i.to_string());
    }
    leia.expect_nothing_pending();
}

#[test]
fn regression_clients_closing_during_broadcast_fanout() {
    let s = Server::start(&["0"]);
    let users = [
        ("yoda", "wise@!man"),
        ("vader", "sithlord**"),
        ("r2d2", "do*!bips"),
        ("c3po", "droid#gold"),
        ("luke", "jedi*knight"),
        ("leia", "princess$1"),
    ];
    let mut sender = s.login("hans", "falcon*solo");
    let mut conns: Vec<Raw> = users.iter().map(|(u, p)| s.login(u, p)).collect();
    // Half of them vanish abruptly (with unread presence lines pending, the kernel
    // answers with RST) right as broadcasts go out.
    let survivors = conns.split_off(3);
    for i in 0..50 {
        sender.send(&format!("BCAST wave {i}"));
    }
    drop(conns);
    for _ in 0..50 {
        sender.expect_prefix_any(&["+BCAST", "*LOGIN", "*LOGOUT"]);
    }
    let mut survivors = survivors;
    for c in &mut survivors {
        let mut waves = 0;
        while waves < 50 {
            let l = c.next_frame();
            if l.starts_with("*BCAST hans wave") {
                waves += 1;
            }
        }
    }
    // The server is intact: a direct message still flows to a survivor.
    sender.send("MSG leia after the storm");
    let leia = &mut survivors[2];
    let got = loop {
        let l = leia.next_frame();
        if !l.starts_with("*LOGOUT ") {
            break l;
        }
    };
    assert!(
        got.starts_with("*MSG ") && got.ends_with(" hans after the storm"),
        "{got}"
    );
}

#[test]
fn credentials_errors_stop_the_server_with_file_and_line() {
    let dir = common::scratch_dir();
    let path = dir.join("bad.txt");
    std::fs::write(&path, "alice pw\nbob\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natterd"))
        .args(["0", "--credentials"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        format!(
            "natterd: {}:2: expected `username password`, found 1 field",
            path.display()
        )
    );
    std::fs::write(&path, "alice pw\nalice pw2\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natterd"))
        .args(["0", "--credentials"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(":2: duplicate username `alice` (first defined on line 1)")
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natterd"))
        .args(["70000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

/// Issue 12: one sender used to be able to fill a recipient's whole mailbox, so every
/// other sender got `-MAILBOX_FULL`. A sender may fill only its share (three quarters by default).
#[test]
fn one_sender_cannot_fill_a_mailbox_for_everyone() {
    let s = Server::start(&["0", "--mailbox-max-messages", "200"]);
    let mut spammer = s.login("vader", "sithlord**");
    let mut friend = s.login("hans", "falcon*solo");
    spammer.expect("*LOGIN hans");
    for i in 0..150 {
        assert_eq!(
            spammer.request(&format!("MSG leia spam {i}")),
            "+STORED leia"
        );
    }
    assert_eq!(spammer.request("MSG leia more"), "-MAILBOX_FULL leia");
    for i in 0..50 {
        assert_eq!(friend.request(&format!("MSG leia hi {i}")), "+STORED leia");
    }
    // Now the mailbox itself is full, for everyone.
    assert_eq!(friend.request("MSG leia one more"), "-MAILBOX_FULL leia");
    let mut leia = s.login("leia", "princess$1");
    leia.expect_msg("vader", "spam 0");
}

/// The loop stops reading a socket at a short read (the receive queue is drained) and
/// relies on edge-triggered readiness for what comes next: input followed at once by
/// the client's close must still be handled in full, and the close noticed at once;
/// input larger than one read, arriving in pieces, must all be read.
#[test]
fn input_then_close_and_input_in_pieces_are_all_read() {
    use nix::sys::signal::{Signal, kill};
    let s = Server::start(&["0"]);
    let server = nix::unistd::Pid::from_raw(s.pid() as i32);
    let mut yoda = s.login("yoda", "wise@!man");
    // Input and the close arrive while natterd is stopped, so it sees both in one
    // readiness event: the short read of the input must not end its reading.
    let send_and_close_while_stopped = |yoda: &mut Raw, input: &[u8]| {
        let mut hans = s.login("hans", "falcon*solo");
        yoda.expect("*LOGIN hans");
        kill(server, Signal::SIGSTOP).expect("stop");
        hans.send_bytes(input);
        hans.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        kill(server, Signal::SIGCONT).expect("continue");
        hans
    };
    let mut hans = send_and_close_while_stopped(&mut yoda, b"MSG yoda one\nMSG yoda two\n");
    yoda.expect_msg("hans", "one");
    yoda.expect_msg("hans", "two");
    yoda.expect("*LOGOUT hans");
    assert_eq!(hans.expect_closed(), ["+SENT yoda", "+SENT yoda"]);
    // The same with input that gets no answer (an unfinished line, dropped at the
    // close): no write to the socket raises another event, so only the first one's
    // report of the close can end the session.
    let mut hans = send_and_close_while_stopped(&mut yoda, b"MSG yoda unfinished");
    yoda.expect("*LOGOUT hans");
    assert!(hans.expect_closed().is_empty());
    // 300 messages (over 64 KiB, more than one read) in 7 pieces cut mid-line.
    let mut hans = s.login("hans", "falcon*solo");
    yoda.expect("*LOGIN hans");
    let text = "x".repeat(250);
    let burst: Vec<u8> = (0..300)
        .flat_map(|i| format!("MSG yoda {i} {text}\n").into_bytes())
        .collect();
    for piece in burst.chunks(burst.len() / 7 + 1) {
        hans.send_bytes(piece);
    }
    for i in 0..300 {
        assert_eq!(hans.next_frame(), "+SENT yoda");
        yoda.expect_msg("hans", &format!("{i} {text}"));
    }
}
