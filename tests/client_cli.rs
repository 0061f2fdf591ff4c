//! End-to-end tests of the real `natter` client (piped stdin/stdout with `--quiet`:
//! plain lines, no prompts) against the real `natterd`: the whole user-visible contract.
//! The prompts themselves are asserted in `login_dialogue.rs`.

mod common;

use common::{Cli, Server};
use nix::sys::signal::Signal;

const WELCOME: &str = "Welcome to the greatest messaging application ever!";

#[test]
fn login_outcomes_and_retries() {
    let s = Server::start(&["0"]);
    let mut c = Cli::start(&s, &[], None);
    // The username is checked before any password is asked.
    c.type_line("nobody");
    c.expect("Invalid Username. Please try again");
    c.type_line("hans");
    c.type_line("wrong");
    c.expect("Invalid Password. Please try again");
    c.type_line("wrong again");
    c.expect("Invalid Password. Please try again");
    c.type_line("falcon*solo");
    c.expect(WELCOME);
    // The account is already logged in: refused, the client exits, the session survives.
    let mut dup = Cli::start(&s, &["--user", "hans"], Some("falcon*solo"));
    dup.expect("This account is already logged in");
    assert_eq!(dup.expect_exit().0, 1);
    c.type_line("whoelse");
    let mut y = Cli::login(&s, "yoda", "wise@!man");
    c.expect("yoda logged in");
    y.type_line("whoelse");
    y.expect("hans");
}

#[test]
fn lockout_after_three_failures_and_while_locked() {
    let s = Server::start(&["0", "60"]);
    let mut c = Cli::start(&s, &["--user", "vader"], None);
    for _ in 0..2 {
        c.type_line("bad");
        c.expect("Invalid Password. Please try again");
    }
    c.type_line("bad");
    c.expect("Invalid Password. Your account has been blocked. Please try again later");
    assert_eq!(c.expect_exit().0, 1);
    let mut again = Cli::start(&s, &["--user", "vader"], Some("sithlord**"));
    again.expect("Your account is blocked due to multiple login failures. Please try again later");
    assert_eq!(again.expect_exit().0, 1);
}

#[test]
fn messaging_blocking_and_every_error_string() {
    let s = Server::start(&["0"]);
    let mut a = Cli::login(&s, "hans", "falcon*solo");
    let mut b = Cli::login(&s, "yoda", "wise@!man");
    a.expect("yoda logged in");
    a.type_line("message yoda hello   there");
    b.expect("hans: hello   there");
    a.type_line("message nobody hi");
    a.expect("Error. Invalid user");
    a.type_line("message hans hi");
    a.expect("Error. Cannot message self");
    a.type_line("message yoda");
    a.expect("Error. Invalid command");
    a.type_line("dance");
    a.expect("Error. Invalid command");
    a.type_line("");
    a.type_line("whoelse");
    a.expect("yoda");
    b.type_line("block hans");
    b.expect("hans is blocked");
    b.type_line("block yoda");
    b.expect("Error. Cannot block self");
    b.type_line("block nobody");
    b.expect("Error. Invalid user");
    a.type_line("message yoda are you there");
    a.expect("Your message could not be delivered as the recipient has blocked you");
    a.type_line("whoelse");
    a.type_line("broadcast anyone?");
    a.expect("Your message could not be delivered to some recipients");
    a.type_line("startprivate yoda");
    a.expect("Error. yoda has blocked you");
    b.type_line("unblock hans");
    b.expect("hans is unblocked");
    b.type_line("unblock hans");
    b.expect("Error. hans was not blocked");
    b.type_line("unblock yoda");
    b.expect("Error. Cannot unblock self");
    b.type_line("unblock nobody");
    b.expect("Error. Invalid user");
    a.type_line("broadcast all  of  you");
    b.expect("hans: all  of  you");
    b.type_line("logout");
    assert_eq!(b.expect_exit(), (0, vec![]));
    a.expect("yoda logged out");
    a.type_line("startprivate yoda");
    a.expect("Error. yoda is offline");
    a.type_line("startprivate hans");
    a.expect("Error. Cannot start private messaging with self");
    a.type_line("startprivate nobody");
    a.expect("Error. Invalid user");
}

#[test]
fn offline_messages_arrive_in_order_after_the_welcome() {
    let s = Server::start(&["0"]);
    let mut a = Cli::login(&s, "hans", "falcon*solo");
    for i in 1..=5 {
        a.type_line(&format!("message leia note {i}"));
    }
    let mut c = Cli::login(&s, "luke", "jedi*knight");
    a.expect("luke logged in");
    // The client runs one command at a time: this answer means all five are stored.
    a.type_line("whoelse");
    a.expect("luke");
    c.type_line("message leia from luke");
    c.type_line("whoelse");
    c.expect("hans");
    let mut l = Cli::login(&s, "leia", "princess$1");
    for i in 1..=5 {
        l.expect(&format!("hans: note {i}"));
    }
    l.expect("luke: from luke");
    a.expect("leia logged in");
}

#[test]
fn presence_respects_blocks_and_whoelsesince_sees_recent_users() {
    let s = Server::start(&["0"]);
    let mut a = Cli::login(&s, "hans", "falcon*solo");
    a.type_line("block yoda");
    a.expect("yoda is blocked");
    let mut watcher = Cli::login(&s, "luke", "jedi*knight");
    a.expect("luke logged in");
    let mut y = Cli::login(&s, "yoda", "wise@!man");
    watcher.expect("yoda logged in");
    a.expect("yoda logged in");
    // hans blocked yoda: yoda does not see hans, in whoelse or in presence.
    y.type_line("whoelse");
    y.expect("luke");
    a.type_line("logout");
    assert_eq!(a.expect_exit().0, 0);
    watcher.expect("hans logged out");
    y.type_line("whoelsesince 60");
    y.expect("luke");
    watcher.type_line("whoelsesince 60");
    watcher.expect_set(&["hans", "yoda"]);
    watcher.type_line("whoelsesince 1h 30m");
    watcher.expect_set(&["hans", "yoda"]);
    watcher.type_line("whoelsesince soon");
    watcher.expect("Error. Invalid command");
}

#[test]
fn inactivity_timeout_message_and_exit() {
    let s = Server::start(&["0", "60", "1"]);
    let mut a = Cli::login(&s, "hans", "falcon*solo");
    a.expect("You have been logged out due to inactivity");
    assert_eq!(a.expect_exit(), (0, vec![]));
}

#[test]
fn end_of_input_and_sigterm_log_out() {
    let s = Server::start(&["0"]);
    let mut watcher = Cli::login(&s, "luke", "jedi*knight");
    let mut a = Cli::login(&s, "hans", "falcon*solo");
    watcher.expect("hans logged in");
    a.close_stdin();
    assert_eq!(a.expect_exit(), (0, vec![]));
    watcher.expect("hans logged out");
    let b = Cli::login(&s, "yoda", "wise@!man");
    watcher.expect("yoda logged in");
    b.signal(Signal::SIGTERM);
    watcher.expect("yoda logged out");
    let c = Cli::login(&s, "leia", "princess$1");
    watcher.expect("leia logged in");
    c.signal(Signal::SIGINT);
    watcher.expect("leia logged out");
}

#[test]
fn unreachable_server_and_bad_arguments() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    drop(listener);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natter"))
        .args(["127.0.0.1", &port])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("natter: cannot connect to 127.0.0.1:{port}: ")),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natter"))
        .args(["not-an-ip"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natter"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn server_loss_is_reported_with_a_nonzero_exit() {
    let mut s = Server::start(&["0"]);
    let mut a = Cli::login(&s, "hans", "falcon*solo");
    let _ = s.child.kill();
    let _ = s.child.wait();
    a.expect("Connection to the server lost");
    assert_eq!(a.expect_exit().0, 1);
}
