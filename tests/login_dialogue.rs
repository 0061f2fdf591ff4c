//! The contract's Login table, row by row, the way the classic client is driven: over
//! pipes with the prompts asserted byte for byte (a script waits for `Username: `
//! before typing), and on a pseudo-terminal with the rendered screen asserted.
//! Also `--quiet`, and `--user` / `NATTER_PASSWORD` skipping their prompts.

mod common;

use common::pty::Pty;
use common::{PromptCli, Server, wait_until};

const WELCOME: &str = "Welcome to the greatest messaging application ever!";
const INVALID_USERNAME: &str = "Invalid Username. Please try again";
const INVALID_PASSWORD: &str = "Invalid Password. Please try again";
const LOCKED_NOW: &str = "Invalid Password. Your account has been blocked. Please try again later";
const LOCKED: &str =
    "Your account is blocked due to multiple login failures. Please try again later";
const ALREADY_ONLINE: &str = "This account is already logged in";

fn cli(s: &Server) -> PromptCli {
    PromptCli::start(s.addr, &[], None)
}

#[test]
fn pipe_success_and_unknown_username_asks_again_at_once() {
    let s = Server::start(&["0"]);
    let mut c = cli(&s);
    c.expect_output("Username: ");
    c.type_line("bob");
    // No password is asked for an unknown name.
    c.expect_output(&format!("{INVALID_USERNAME}\nUsername: "));
    c.type_line("hans");
    c.expect_output("Password: ");
    c.type_line("falcon*solo");
    c.expect_output(&format!("{WELCOME}\n> "));
    c.type_line("logout");
    let (code, rest) = c.expect_exit();
    assert_eq!((code, rest.as_str()), (0, ""));
}

#[test]
fn pipe_all_lines_at_once_follow_the_classic_order() {
    // The issue's report: `bob`, `hans`, `falcon*solo` piped in one go used to end in
    // two `Invalid Username` lines, the second line taken as bob's password.
    let s = Server::start(&["0"]);
    let mut c = cli(&s);
    c.type_line("bob");
    c.type_line("hans");
    c.type_line("falcon*solo");
    c.type_line("whoelse");
    c.close_stdin();
    c.expect_output(&format!(
        "Username: {INVALID_USERNAME}\nUsername: Password: {WELCOME}\n> > "
    ));
    let (code, rest) = c.expect_exit();
    assert_eq!((code, rest.as_str()), (0, ""));
}

#[test]
fn pipe_wrong_passwords_then_lockout_then_locked_at_the_username() {
    let s = Server::start(&["0", "60"]);
    let mut c = cli(&s);
    c.expect_output("Username: ");
    c.type_line("vader");
    c.expect_output("Password: ");
    for _ in 0..2 {
        c.type_line("bad");
        c.expect_output(&format!("{INVALID_PASSWORD}\nPassword: "));
    }
    c.type_line("bad");
    c.expect_output(&format!("{LOCKED_NOW}\n"));
    assert_eq!(c.expect_exit(), (1, String::new()));

    // Locked out: refused right after the username, even if the password would be right.
    let mut again = cli(&s);
    again.expect_output("Username: ");
    again.type_line("vader");
    again.expect_output(&format!("{LOCKED}\n"));
    assert_eq!(again.expect_exit(), (1, String::new()));

    // Another address would be refused too: the lockout belongs to the username.
    let mut raw = s.raw();
    raw.send("HELLO 1");
    raw.expect_prefix("+HELLO 1 ");
    raw.send("USER vader");
    raw.expect("-LOCKED");
}

#[test]
fn pipe_already_online_is_refused_after_the_username_and_the_session_survives() {
    let s = Server::start(&["0"]);
    let mut hans = s.login("hans", "falcon*solo");
    let mut c = cli(&s);
    c.expect_output("Username: ");
    c.type_line("hans");
    c.expect_output(&format!("{ALREADY_ONLINE}\n"));
    assert_eq!(c.expect_exit(), (1, String::new()));
    assert_eq!(hans.request("WHOELSE"), "+USERS");
}

#[test]
fn the_username_step_never_counts_as_a_failure() {
    let s = Server::start(&["0", "60"]);
    let mut raw = s.raw();
    raw.send("HELLO 1");
    raw.expect_prefix("+HELLO 1 ");
    for _ in 0..5 {
        raw.send("USER nobody");
        raw.expect("-NO_SUCH_USER nobody");
        raw.send("USER yoda");
        raw.expect("+USER yoda");
    }
    raw.send("PASS nope");
    raw.expect("-BAD_PASSWORD 2");
    raw.send("PASS wise@!man");
    raw.expect("+WELCOME");
}

#[test]
fn quiet_leaves_every_prompt_out() {
    let s = Server::start(&["0"]);
    let mut c = PromptCli::start(s.addr, &["--quiet"], None);
    c.type_line("bob");
    c.expect_output(&format!("{INVALID_USERNAME}\n"));
    c.type_line("hans");
    c.type_line("nope");
    c.expect_output(&format!("{INVALID_PASSWORD}\n"));
    c.type_line("falcon*solo");
    c.expect_output(&format!("{WELCOME}\n"));
    c.type_line("whoelse");
    c.type_line("logout");
    assert_eq!(c.expect_exit(), (0, String::new()));
}

#[test]
fn user_flag_and_password_variable_skip_their_prompts() {
    let s = Server::start(&["0"]);
    // Both given: no login prompt at all.
    let mut both = PromptCli::start(s.addr, &["--user", "yoda"], Some("wise@!man"));
    both.expect_output(&format!("{WELCOME}\n> "));
    // Only the name: just the password prompt.
    let mut name = PromptCli::start(s.addr, &["--user", "hans"], None);
    name.expect_output("Password: ");
    name.type_line("falcon*solo");
    name.expect_output(&format!("{WELCOME}\n> "));
    both.expect_output("hans logged in\n");
    // A wrong password from the environment asks again on stdin.
    let mut wrong = PromptCli::start(s.addr, &["--user", "luke"], Some("nope"));
    wrong.expect_output(&format!("{INVALID_PASSWORD}\nPassword: "));
    wrong.type_line("jedi*knight");
    wrong.expect_output(&format!("{WELCOME}\n> "));
    // An unknown --user name gets its error and the username prompt.
    let mut unknown = PromptCli::start(s.addr, &["--user", "bob"], Some("x"));
    unknown.expect_output(&format!("{INVALID_USERNAME}\nUsername: "));
}

#[test]
fn pty_login_table() {
    let s = Server::start(&["0", "60"]);
    let _online = s.login("leia", "princess$1");

    // Unknown username, then two wrong passwords, then success.
    let mut t = Pty::spawn(s.addr, &[]);
    t.wait_for("Username:");
    t.keys(b"bob\r");
    t.wait_for(INVALID_USERNAME);
    wait_until("the username prompt again", || {
        t.cursor_row() == "Username:"
    });
    assert!(!t.rows().iter().any(|r| r.starts_with("Password:")));
    t.keys(b"hans\r");
    wait_until("the password prompt", || t.cursor_row() == "Password:");
    t.keys(b"wrong\r");
    t.wait_for(INVALID_PASSWORD);
    wait_until("the password prompt again", || {
        t.cursor_row() == "Password:"
    });
    t.keys(b"falcon*solo\r");
    t.wait_for(WELCOME);
    wait_until("the command prompt", || t.cursor_row() == ">");
    assert!(!t.raw_output().contains("falcon*solo"), "password echoed");
    assert!(!t.raw_output().contains("wrong"), "password echoed");

    // Already online: refused right after the username.
    let mut dup = Pty::spawn(s.addr, &[]);
    dup.wait_for("Username:");
    dup.keys(b"leia\r");
    dup.wait_for(ALREADY_ONLINE);
    assert_eq!(dup.wait_exit(), 1);
    assert!(!dup.rows().iter().any(|r| r.starts_with("Password:")));

    // Third wrong password locks; then the locked account is refused at its name.
    let mut v = Pty::spawn(s.addr, &[]);
    v.wait_for("Username:");
    v.keys(b"vader\r");
    wait_until("the password prompt", || v.cursor_row() == "Password:");
    for _ in 0..3 {
        v.keys(b"bad\r");
    }
    v.wait_for(LOCKED_NOW);
    assert_eq!(v.wait_exit(), 1);
    let mut locked = Pty::spawn(s.addr, &[]);
    locked.wait_for("Username:");
    locked.keys(b"vader\r");
    locked.wait_for(LOCKED);
    assert_eq!(locked.wait_exit(), 1);
    assert!(!locked.rows().iter().any(|r| r.starts_with("Password:")));
    assert!(t.has_row(WELCOME));
}
