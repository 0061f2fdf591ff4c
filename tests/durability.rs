//! Nothing acknowledged is lost: the journal across SIGKILL and restarts, damaged
//! journals, connections that die silently, compaction.

mod common;

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Cli, Raw, Server, drain_until_end, send_end_marker};

fn random_below(n: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // A multiplicative hash spreads nearby clock readings.
    (u64::from(nanos).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 33) % n
}

#[test]
fn sigkill_at_a_random_moment_loses_no_acknowledged_message() {
    const TOTAL: usize = 3000;
    let mut s = Server::start(&["0"]);
    let mut hans = s.login("hans", "falcon*solo");
    // A writer thread keeps WINDOW messages in flight: one more per acknowledgement,
    // so the kill always lands mid-stream.
    const WINDOW: usize = 100;
    let mut writer = hans.stream.try_clone().expect("clone");
    let (credit, credits) = std::sync::mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        for i in 0..TOTAL {
            if i >= WINDOW && credits.recv().is_err() {
                return;
            }
            // The server dies mid-way: write errors are expected then.
            if writer
                .write_all(format!("MSG yoda m{i}\n").as_bytes())
                .is_err()
            {
                return;
            }
        }
    });
    let kill_after = 200 + random_below(2600) as usize;
    let mut acked = 0;
    while acked < kill_after {
        assert_eq!(hans.next_frame(), "+STORED yoda");
        acked += 1;
        let _ = credit.send(());
    }
    s.kill9();
    drop(credit);
    // Replies already on their way were acknowledged too.
    while let Ok(Some(line)) = hans.next_line_within(common::WAIT) {
        assert_eq!(line, "+STORED yoda");
        acked += 1;
    }
    let _ = sender.join();
    s.restart();
    send_end_marker(&s, "yoda");
    let got = drain_until_end(&s, "yoda", "wise@!man", "hans");
    assert!(
        got.len() >= acked,
        "killed after {kill_after}: {acked} acknowledged, only {} recovered",
        got.len()
    );
    assert!(got.len() < TOTAL, "the kill did not land mid-stream");
    // In order, no duplicates, no gaps: exactly the first N messages sent.
    let want: Vec<String> = (0..got.len()).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn restart_keeps_blocks_history_and_a_running_lockout() {
    let mut s = Server::start(&["0", "60"]);
    let mut hans = s.login("hans", "falcon*solo");
    assert_eq!(hans.request("BLOCK r2d2"), "+BLOCKED r2d2");
    let mut luke = s.login("luke", "jedi*knight");
    hans.expect("*LOGIN luke");
    luke.send("LOGOUT");
    luke.expect_closed();
    hans.expect("*LOGOUT luke");
    for _ in 0..2 {
        let mut v = s.login_attempt("vader", "wrong");
        v.expect_prefix("-BAD_PASSWORD");
    }
    let mut v = s.login_attempt("vader", "wrong");
    v.expect_prefix("-LOCKED_NOW");
    s.restart();

    // The lockout still runs, even with the right password.
    let mut v = s.login_attempt("vader", "sithlord**");
    v.expect("-LOCKED");
    v.expect_closed();
    // r2d2 is still blocked by hans.
    let mut r2 = s.login("r2d2", "do*!bips");
    assert_eq!(r2.request("MSG hans hello?"), "-BLOCKED_BY hans");
    // History: luke logged out and hans was online when the server died.
    let mut yoda = s.login("yoda", "wise@!man");
    r2.expect("*LOGIN yoda");
    assert_eq!(yoda.request("WHOELSE"), "+USERS r2d2");
    assert_eq!(yoda.request("WHOELSESINCE 1h"), "+USERS hans luke r2d2");
    let mut hans = s.login("hans", "falcon*solo");
    assert_eq!(hans.request("UNBLOCK r2d2"), "+UNBLOCKED r2d2");
}

/// Stores `n` messages `m0..` from hans to leia and kills the server.
fn store_and_kill(s: &mut Server, n: usize) {
    let mut hans = s.login("hans", "falcon*solo");
    for i in 0..n {
        assert_eq!(hans.request(&format!("MSG leia m{i}")), "+STORED leia");
    }
    s.kill9();
}

#[test]
fn a_truncated_journal_keeps_its_valid_prefix_with_a_warning() {
    let mut s = Server::start(&["0"]);
    store_and_kill(&mut s, 10);
    let path = s.journal_path();
    let len = std::fs::metadata(&path).expect("journal").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(len - 3).expect("truncate");
    drop(f);
    s.restart();
    let log = s.log();
    assert!(
        log.contains("record cut short") && log.contains("keeping the"),
        "no warning in {log}"
    );
    let damaged = std::fs::read_dir(path.parent().expect("dir"))
        .expect("list")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("journal.damaged-")
        });
    assert!(damaged, "the damaged journal was not kept aside");
    send_end_marker(&s, "leia");
    let got = drain_until_end(&s, "leia", "princess$1", "hans");
    let want: Vec<String> = (0..9).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    // The rewritten journal is clean: another restart recovers the same, silently.
    let warnings = s.log().matches("keeping the").count();
    s.restart();
    assert_eq!(s.log().matches("keeping the").count(), warnings);
}

/// Regression (issue 12): one flipped bit early in the journal dropped every record
/// after it and the server started anyway. Damage followed by intact records now
/// refuses to start; `journal check` says what is damaged and `journal repair` keeps
/// every intact record.
#[test]
fn damage_in_the_middle_refuses_to_start_and_repair_keeps_every_intact_record() {
    let mut s = Server::start(&["0"]);
    store_and_kill(&mut s, 10);
    let path = s.journal_path();
    let mut bytes = std::fs::read(&path).expect("journal");
    // Flip a bit inside the text of the 6th message ("m5").
    let at = bytes
        .windows(2)
        .rposition(|w| w == b"m5")
        .expect("m5 in the journal");
    bytes[at + 1] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");

    let (code, err) = s.restart_refused();
    assert_ne!(code, 0);
    assert!(
        err.contains("checksum mismatch at byte") && err.contains("journal repair"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).expect("journal"),
        bytes,
        "journal touched"
    );

    let journal = |action: &str| -> common::Output {
        s.natterd_in_dir(&["journal".into(), action.into()], &[])
    };
    let check = journal("check");
    assert_eq!(check.code, 1, "{}", check.stdout);
    assert!(
        check.stdout.contains("checksum mismatch"),
        "{}",
        check.stdout
    );
    assert!(
        check.stdout.contains("after it (4 of them messages)"),
        "{}",
        check.stdout
    );
    let repair = journal("repair");
    assert_eq!(repair.code, 0, "{}{}", repair.stdout, repair.stderr);
    assert!(
        repair.stdout.contains("the original is kept as"),
        "{}",
        repair.stdout
    );
    let kept = std::fs::read_dir(s.dir.join("natter-data"))
        .expect("data dir")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("journal.damaged-")
        })
        .map(|e| std::fs::read(e.path()).expect("copy"))
        .collect::<Vec<_>>();
    assert_eq!(kept, vec![bytes], "the original is kept as it was");
    assert_eq!(journal("check").code, 0);

    s.start_again();
    send_end_marker(&s, "leia");
    let got = drain_until_end(&s, "leia", "princess$1", "hans");
    let want: Vec<String> = (0..10)
        .filter(|&i| i != 5)
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_silently_dead_recipient_gets_its_messages_at_the_next_login() {
    let s = Server::start(&[
        "0",
        "60",
        "600",
        "--ping-interval",
        "1",
        "--ping-timeout",
        "1",
    ]);
    let mut hans = s.login("hans", "falcon*solo");
    let yoda = Cli::login(&s, "yoda", "wise@!man");
    hans.expect("*LOGIN yoda");
    // Frozen: its socket stays open, nothing is read, no FIN or RST is ever sent.
    yoda.signal(nix::sys::signal::Signal::SIGSTOP);
    for i in 0..3 {
        assert_eq!(hans.request(&format!("MSG yoda lost? {i}")), "+SENT yoda");
    }
    // The liveness check notices within a ping interval plus the ping timeout.
    hans.expect("*LOGOUT yoda");
    drop(yoda); // SIGKILL: the frozen client never sees anything.
    let mut back = s.login("yoda", "wise@!man");
    for i in 0..3 {
        back.expect_msg("hans", &format!("lost? {i}"));
    }
    back.expect_nothing_pending();
}

#[test]
fn compaction_keeps_the_journal_near_the_live_data() {
    let mut s = Server::start(&["0", "--compact-min", "64K"]);
    let mut hans = s.login("hans", "falcon*solo");
    let mut luke = s.login("luke", "jedi*knight");
    hans.expect("*LOGIN luke");
    let text = "x".repeat(200);
    // About 1.2 MB of journal traffic; never more than 100 messages live at once.
    for _ in 0..50 {
        for _ in 0..100 {
            hans.send(&format!("MSG luke {text}"));
        }
        for _ in 0..100 {
            assert_eq!(hans.next_frame(), "+SENT luke");
            luke.expect_msg("hans", &text);
        }
    }
    // One message left unacknowledged: the only live message.
    assert_eq!(hans.request("MSG luke keep me"), "+SENT luke");
    let got = luke.next_frame();
    assert!(got.ends_with(" hans keep me"), "got {got:?}");
    let len = std::fs::metadata(s.journal_path()).expect("journal").len();
    assert!(len < 256 * 1024, "journal is {len} bytes");
    s.restart();
    let mut luke = s.login("luke", "jedi*knight");
    luke.expect_msg("hans", "keep me");
    luke.expect_nothing_pending();
}

trait RawExt {
    fn login_attempt(&self, user: &str, password: &str) -> Raw;
}

impl RawExt for Server {
    fn login_attempt(&self, user: &str, password: &str) -> Raw {
        let mut c = self.raw();
        c.send("HELLO 1");
        c.expect_prefix("+HELLO 1 ");
        c.send(&format!("LOGIN {user} {password}"));
        c
    }
}
