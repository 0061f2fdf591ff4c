//! Text from the network is data, never terminal commands. The server refuses message
//! text with terminal controls (`-BAD_TEXT`); the client escapes whatever it receives
//! anyway, on every path (direct, broadcast, presence, lists, error arguments,
//! `*BYE` reasons, private messages from a peer), because a hostile or older server
//! and any peer can send what they like. Asserted on the bytes a pipe gets and on a
//! pseudo-terminal's rendered screen.

mod common;

use std::net::TcpStream;

use common::pty::Pty;
use common::{Cli, FakeServer, PromptCli, Raw, Server, wait_until};

/// (what a hostile sender sends, how the client must show it).
const ATTACKS: &[(&str, &str)] = &[
    ("ok\r\x1b[Kvader: fake", "ok^M^[[Kvader: fake"),
    ("\x1b]0;pwned\x07", "^[]0;pwned^G"),
    ("\x1b]2;pwned\x1b\\", "^[]2;pwned^[\\"),
    ("\x1b]52;c;cHduZWQ=\x07", "^[]52;c;cHduZWQ=^G"),
    ("\x1b[2J\x1b[H", "^[[2J^[[H"),
    ("\x1b[?25l hidden", "^[[?25l hidden"),
    ("\x1b[?1049h alt", "^[[?1049h alt"),
    ("\u{9b}2J c1", "\\u{9b}2J c1"),
    ("abc\u{202e}fed", "abc\\u{202e}fed"),
    ("one\u{2028}vader: two", "one\\u{2028}vader: two"),
    ("tab\there\x7f", "tab^Ihere^?"),
];

#[test]
fn the_server_refuses_control_characters_in_messages() {
    let s = Server::start(&["0"]);
    let (mut hans, mut yoda) = s.hans_and_yoda();
    for (raw, _) in ATTACKS {
        assert_eq!(hans.request(&format!("MSG yoda {raw}")), "-BAD_TEXT");
        assert_eq!(hans.request(&format!("BCAST {raw}")), "-BAD_TEXT");
        // Stored for an offline user: refused the same way.
        assert_eq!(hans.request(&format!("MSG leia {raw}")), "-BAD_TEXT");
    }
    // Right-to-left text and wide characters are text.
    assert_eq!(hans.request("MSG yoda שלום مرحبا 日本語"), "+SENT yoda");
    yoda.expect_msg("hans", "שלום مرحبا 日本語");
    yoda.expect_nothing_pending();

    // The client shows the refusal in the contract's style.
    let mut c = Cli::login(&s, "luke", "jedi*knight");
    c.type_line("message yoda \x1b]0;pwned\x07");
    c.expect("Error. Messages cannot contain control characters");
    c.type_line("broadcast \x1b[2J");
    c.expect("Error. Messages cannot contain control characters");
}

/// Plays a hostile server against a logged-in client: every path, every attack.
/// `client_line` waits for the client to show a line (and returns nothing).
fn hostile_session(fake: &FakeServer, mut client_line: impl FnMut(&str), peer_typed: impl Fn()) {
    let (mut srv, port) = fake.accept_login("hans");
    client_line("Welcome to the greatest messaging application ever!");
    for (i, (raw, shown)) in ATTACKS.iter().enumerate() {
        srv.send(&format!("*MSG {} yoda {raw}", i + 1));
        client_line(&format!("yoda: {shown}"));
        srv.send(&format!("*BCAST yoda {raw}"));
        client_line(&format!("yoda: {shown}"));
    }
    // Names in presence, lists and error arguments.
    srv.send("*LOGIN ev\x1b[2Jil\x1b]0;t\x07");
    client_line("ev^[[2Jil^[]0;t^G logged in");
    srv.send("*LOGOUT r\u{202e}lt");
    client_line("r\\u{202e}lt logged out");

    // A private session with a peer the (fake) server introduced.
    let port = port.expect("the client reports a peer port");
    srv.send("*EXPECT mallory tok1");
    let mut peer = Raw::from_stream(TcpStream::connect(("127.0.0.1", port)).expect("peer"));
    peer.send("PEERHELLO mallory tok1");
    assert_eq!(peer.next_line(), "PEEROK hans");
    for (raw, shown) in ATTACKS {
        peer.send(&format!("PMSG {raw}"));
        client_line(&format!("mallory(private): {shown}"));
    }
    peer_typed();
    // Acknowledgements of the messages above come first.
    let request = |srv: &mut Raw| loop {
        let l = srv.next_line();
        if !l.starts_with("ACK ") {
            return l;
        }
    };
    assert_eq!(request(&mut srv), "WHOELSE");
    srv.send("+USERS a\x1b[2Jb c\u{2028}d");
    client_line("a^[[2Jb");
    client_line("c\\u{2028}d");
    assert_eq!(request(&mut srv), "UNBLOCK x");
    srv.send("-NOT_BLOCKED x\x1b]0;t\x07");
    client_line("Error. x^[]0;t^G was not blocked");
    srv.send("*BYE shut\x1b[2Jdown");
    client_line("Disconnected by the server: shut^[[2Jdown");
}

#[test]
fn every_path_is_escaped_on_a_pipe() {
    let fake = FakeServer::bind();
    let mut c = PromptCli::start(
        fake.addr(),
        &["--quiet", "--plaintext", "--user", "hans"],
        Some("pw"),
    );
    let cell = std::cell::RefCell::new(&mut c);
    hostile_session(
        &fake,
        |line| cell.borrow_mut().expect_output(&format!("{line}\n")),
        || {
            let mut c = cell.borrow_mut();
            c.type_line("whoelse");
            c.type_line("unblock x");
        },
    );
    let (code, rest) = c.expect_exit();
    assert_eq!((code, rest.as_str()), (1, ""));
    let all = c.all_output();
    for bad in [
        '\x1b', '\x07', '\r', '\u{9b}', '\u{202e}', '\u{2028}', '\t', '\x7f',
    ] {
        assert!(!all.contains(bad), "{bad:?} reached the pipe");
    }
}

/// Records what the terminal was asked to do besides drawing characters.
#[derive(Default)]
struct Effects {
    titles: Vec<Vec<u8>>,
    clipboard: Vec<Vec<u8>>,
}

impl vt100::Callbacks for Effects {
    fn set_window_title(&mut self, _: &mut vt100::Screen, title: &[u8]) {
        self.titles.push(title.to_vec());
    }
    fn set_window_icon_name(&mut self, _: &mut vt100::Screen, name: &[u8]) {
        self.titles.push(name.to_vec());
    }
    fn copy_to_clipboard(&mut self, _: &mut vt100::Screen, _: &[u8], data: &[u8]) {
        self.clipboard.push(data.to_vec());
    }
}

#[test]
fn every_path_is_escaped_on_a_terminal() {
    let fake = FakeServer::bind();
    let mut t =
        Pty::spawn_with_password(fake.addr(), &["--plaintext", "--user", "hans"], Some("pw"));
    let pty = std::cell::RefCell::new(&mut t);
    hostile_session(
        &fake,
        |line| {
            let t = pty.borrow();
            // Each message is exactly one row, starting with its real sender.
            wait_until(&format!("a row {line:?}"), || {
                t.rows().iter().any(|r| r == line.trim_end())
            });
        },
        || pty.borrow_mut().keys(b"whoelse\runblock x\r"),
    );
    assert_eq!(t.wait_exit(), 1);
    let raw = t.raw_output();
    let n = |v: u16| std::num::NonZero::new(v).expect("non-zero");
    let mut p = vt100::Parser::new_with_callbacks(n(24), n(100), 0, Effects::default());
    p.process(raw.as_bytes());
    let screen = p.screen();
    assert!(!screen.hide_cursor(), "cursor hidden");
    assert!(
        !screen.alternate_screen(),
        "switched to the alternate screen"
    );
    assert!(p.callbacks().titles.is_empty(), "title set");
    assert!(p.callbacks().clipboard.is_empty(), "clipboard written");
    // The only escape sequences are the client's own: erase line, cursor left.
    let own = regex_free_strip(&raw);
    for bad in ['\x1b', '\x07', '\u{9b}', '\u{202e}', '\u{2028}'] {
        assert!(!own.contains(bad), "{bad:?} reached the terminal raw");
    }
}

/// `raw` without the client's own sequences (`ESC [ K` and `ESC [ <n> D`).
fn regex_free_strip(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(i) = rest.find("\x1b[") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after.as_bytes().get(digits) {
            Some(b'K') if digits == 0 => rest = &after[1..],
            Some(b'D') if digits > 0 => rest = &after[digits + 1..],
            _ => {
                out.push('\x1b');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}
