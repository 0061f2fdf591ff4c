//! Server faults found by hostile testing (issue 12), each with the test that failed
//! before its fix: a full disk at restart, SIGTERM on a full disk, a reply held by a
//! failing disk starving its session, a damaged copy without a journal, two servers on
//! one data directory.
//!
//! A full disk is simulated with a file-size limit (`prlimit --fsize=N`, RLIMIT_FSIZE):
//! a journal write past the limit is cut short and the next one fails with EFBIG,
//! exactly where a full disk fails with ENOSPC, in the real writer, with no root needed.
//! `prlimit --pid` lifts it again: the disk has been freed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Raw, Server, drain_until_end, send_end_marker, wait_until};

fn disk_full_at(bytes: u64) -> String {
    format!("--fsize={bytes}:unlimited")
}

/// Frees the "disk": lifts the file-size limit of the running server.
fn free_disk(s: &Server) {
    let ok = Command::new("prlimit")
        .arg("--pid")
        .arg(s.pid().to_string())
        .arg("--fsize=unlimited")
        .status()
        .expect("prlimit")
        .success();
    assert!(ok, "prlimit --pid failed");
}

/// A server whose disk fills after about 4 KB of journal.
fn server_with_a_small_disk() -> Server {
    let mut s = Server::start(&["0"]);
    s.kill9();
    s.set_wrapper(&["prlimit", &disk_full_at(4000)]);
    s.start_again();
    s
}

fn journal_len(s: &Server) -> u64 {
    std::fs::metadata(s.journal_path()).map_or(0, |m| m.len())
}

/// Sends `n` pipelined messages of about 300 bytes to offline leia until the journal
/// write fails; returns the numbers of those whose `+STORED` arrived.
fn fill_until_the_disk_fails(s: &Server, c: &mut Raw, n: usize) -> Vec<usize> {
    let pad = "x".repeat(300);
    for i in 0..n {
        c.send(&format!("MSG leia f{i} {pad}"));
    }
    wait_until("the journal write to fail", || {
        s.log().contains("journal write failed")
    });
    let mut stored = Vec::new();
    // Replies released before the failure are on their way; later ones stay held.
    while let Ok(Some(line)) = c.next_line_within(Duration::from_millis(300)) {
        if line == "+STORED leia" {
            stored.push(stored.len());
        }
    }
    stored
}

#[test]
fn a_full_disk_at_restart_keeps_the_journal() {
    let mut s = Server::start(&["0"]);
    let mut hans = s.login("hans", "falcon*solo");
    for i in 0..20 {
        assert_eq!(hans.request(&format!("MSG leia m{i}")), "+STORED leia");
    }
    assert_eq!(hans.request("BLOCK vader"), "+BLOCKED vader");
    s.kill9();

    // The disk fills while running: the last batch is torn off mid-record.
    let room = journal_len(&s) + 2000;
    s.set_wrapper(&["prlimit", &disk_full_at(room)]);
    s.start_again();
    let mut hans = s.login("hans", "falcon*solo");
    let stored = fill_until_the_disk_fails(&s, &mut hans, 40);
    s.kill9();
    let before = std::fs::read(s.journal_path()).expect("journal");

    // Restarted while the disk is still full: refused, and nothing is touched.
    s.set_wrapper(&["prlimit", &disk_full_at(100)]);
    let (code, err) = s.restart_refused();
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("cannot open the store"), "{err}");
    assert_eq!(std::fs::read(s.journal_path()).expect("journal"), before);

    // Space freed: everything acknowledged is back.
    s.set_wrapper(&[]);
    s.start_again();
    assert!(s.log().contains("torn tail"), "{}", s.log());
    assert!(!s.log().contains("recovered 0 records"), "{}", s.log());
    send_end_marker(&s, "leia");
    let got = drain_until_end(&s, "leia", "princess$1", "hans");
    let m: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(got[..20], m[..]);
    for i in stored {
        assert!(got[20 + i].starts_with(&format!("f{i} ")), "f{i} lost");
    }
    let mut vader = s.login("vader", "sithlord**");
    assert_eq!(vader.request("MSG hans hi"), "-BLOCKED_BY hans");
}

#[test]
fn a_damaged_copy_without_a_journal_refuses_to_start() {
    let mut s = Server::start(&["0"]);
    let mut hans = s.login("hans", "falcon*solo");
    assert_eq!(hans.request("MSG leia kept"), "+STORED leia");
    s.kill9();
    // What the old start-up left behind when its rewrite failed.
    let data = s.dir.join("natter-data");
    let copy = data.join("journal.damaged-1700000000");
    std::fs::rename(s.journal_path(), &copy).expect("rename");
    let (code, err) = s.restart_refused();
    assert_ne!(code, 0);
    assert!(
        err.contains("journal.damaged-1700000000") && err.contains("mv "),
        "{err}"
    );
    // Doing what it says brings everything back.
    std::fs::rename(&copy, s.journal_path()).expect("rename back");
    s.start_again();
    let mut leia = s.login("leia", "princess$1");
    leia.expect_msg("hans", "kept");
}

#[test]
fn sigterm_on_a_full_disk_exits_within_its_bound_and_says_what_was_not_stored() {
    let mut s = server_with_a_small_disk();
    let mut hans = s.login("hans", "falcon*solo");
    fill_until_the_disk_fails(&s, &mut hans, 40);
    let start = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    wait_until_exit(&mut s, Duration::from_secs(10));
    let took = start.elapsed();
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    let log = s.log();
    assert!(
        log.contains("were not made durable") && log.contains("messages"),
        "{log}"
    );
}

fn wait_until_exit(s: &mut Server, bound: Duration) {
    let deadline = Instant::now() + bound;
    loop {
        if s.child.try_wait().expect("wait").is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "natterd still running after {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pushes_flow_while_a_reply_waits_on_a_failing_disk_and_the_reply_is_never_lost() {
    let s = server_with_a_small_disk();
    let mut yoda = s.login("yoda", "wise@!man");
    let mut luke = s.login("luke", "jedi*knight");
    yoda.expect("*LOGIN luke");
    let mut hans = s.login("hans", "falcon*solo");
    yoda.expect("*LOGIN hans");
    luke.expect("*LOGIN hans");
    fill_until_the_disk_fails(&s, &mut hans, 40);

    // yoda's block cannot be stored: its reply waits...
    yoda.send("BLOCK vader");
    // ...while 100 KB of broadcasts (the output limit is 64K) reach yoda anyway.
    let text = "b".repeat(1000);
    for i in 0..100 {
        luke.send(&format!("BCAST {i} {text}"));
    }
    for i in 0..100 {
        assert_eq!(yoda.next_frame(), format!("*BCAST luke {i} {text}"));
    }
    // Pings and presence flow too; replies keep their order behind the held one.
    yoda.send("PING after");
    free_disk(&s);
    assert_eq!(yoda.next_frame(), "+BLOCKED vader");
    assert_eq!(yoda.next_frame(), "+PONG after");
    // Nothing was cut off: the broadcaster got every reply.
    for _ in 0..100 {
        assert!(luke.next_frame().starts_with("+BCAST "));
    }
}

#[test]
fn two_servers_cannot_share_a_data_directory() {
    let s = Server::start(&["0"]);
    let data = s.dir.join("natter-data");
    // Remove every file but the journal: nothing a running server relies on for its
    // lock may be deleted out from under it.
    for e in std::fs::read_dir(&data).expect("data dir").flatten() {
        if e.file_name() != "journal" {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let out = s.natterd_in_dir(
        &[
            "0".into(),
            "--data-dir".into(),
            data.to_string_lossy().into_owned(),
        ],
        &[],
    );
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("in use by another natterd"),
        "{}",
        out.stderr
    );
    // The first server is unharmed.
    let mut hans = s.login("hans", "falcon*solo");
    assert_eq!(hans.request("MSG leia hi"), "+STORED leia");
}
