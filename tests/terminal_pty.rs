//! The client on a real pseudo-terminal: no password echo, a half-typed line survives an
//! incoming message, history, Ctrl-C logs out, and the terminal is restored.
//! The screen is reconstructed with the `vt100` terminal emulator and asserted on.

mod common;

use common::pty::Pty;
use common::{Server, wait_until};
use nix::sys::termios::{LocalFlags, tcgetattr};

#[test]
fn interactive_session_on_a_pty() {
    let s = Server::start(&["0"]);
    let mut yoda = s.login("yoda", "wise@!man");
    let mut t = Pty::spawn(s.addr, &[]);
    t.wait_for("Username:");
    t.keys(b"hans\r");
    t.wait_for("Password:");
    t.keys(b"falcon*solo\r");
    t.wait_for("Welcome to the greatest messaging application ever!");
    assert!(
        !t.raw_output().contains("falcon*solo"),
        "password was echoed"
    );
    yoda.expect("*LOGIN hans");
    wait_until("the prompt", || t.cursor_row() == ">");

    // A half-typed line survives an incoming message printed above it.
    t.keys(b"message yoda hel");
    wait_until("typed text", || t.cursor_row() == "> message yoda hel");
    assert_eq!(yoda.request("MSG hans incoming!"), "+SENT hans");
    t.wait_for("yoda: incoming!");
    wait_until("the redrawn line", || {
        t.cursor_row() == "> message yoda hel"
    });
    let rows = t.rows();
    let msg_row = rows.iter().position(|r| r == "yoda: incoming!").unwrap();
    assert_eq!(rows[msg_row + 1], "> message yoda hel");
    let (_, col) = t.screen().screen().cursor_position();
    assert_eq!(
        col as usize,
        "> message yoda hel".len(),
        "cursor at the end of the input"
    );
    t.keys(b"lo\r");
    yoda.expect_msg("hans", "hello");

    // Editing keys: Ctrl-U clears, Ctrl-A/E move, history recalls.
    t.keys(b"junk\x15");
    wait_until("cleared line", || t.cursor_row() == ">");
    t.keys(b"\x1b[A");
    wait_until("history recall", || {
        t.cursor_row() == "> message yoda hello"
    });
    t.keys(b"\x01\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x1b[C\x05 again\r");
    yoda.expect_msg("hans", "hello again");
    // Tab completes commands and known names.
    t.keys(b"whoel\t");
    wait_until("completion", || t.cursor_row().starts_with("> whoelse"));
    t.keys(b"\x15mess\tyo\tok\r");
    yoda.expect_msg("hans", "ok");

    // Ctrl-C logs out cleanly and the terminal is restored.
    t.keys(b"\x03");
    yoda.expect("*LOGOUT hans");
    wait_until("natter to exit", || t.child.try_wait().unwrap().is_some());
    assert_eq!(t.child.wait().unwrap().code(), Some(0));
    let attrs = tcgetattr(&t.slave).unwrap();
    assert!(
        attrs
            .local_flags
            .contains(LocalFlags::ECHO | LocalFlags::ICANON | LocalFlags::ISIG),
        "terminal not restored"
    );
}
