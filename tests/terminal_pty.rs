//! The client on a real pseudo-terminal: no password echo, a half-typed line survives an
//! incoming message, history, Ctrl-C logs out, and the terminal is restored.
//! The screen is reconstructed with the `vt100` terminal emulator and asserted on.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::{Server, wait_until};
use nix::pty::{Winsize, openpty};
use nix::sys::termios::{LocalFlags, tcgetattr};

struct Pty {
    child: std::process::Child,
    writer: File,
    output: Arc<Mutex<Vec<u8>>>,
    slave: std::os::fd::OwnedFd,
}

impl Pty {
    fn spawn(server: &Server) -> Pty {
        let ws = Winsize {
            ws_row: 24,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&ws), None).expect("openpty");
        let child = Command::new(env!("CARGO_BIN_EXE_natter"))
            .arg("127.0.0.1")
            .arg(server.port())
            .env_remove("NATTER_PASSWORD")
            .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::from(pty.slave.try_clone().unwrap()))
            .spawn()
            .expect("spawn natter");
        let master = File::from(pty.master);
        let writer = master.try_clone().unwrap();
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut master = master;
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            child,
            writer,
            output,
            slave: pty.slave,
        }
    }

    fn keys(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn screen(&self) -> vt100::Parser {
        let n = |v: u16| std::num::NonZero::new(v).expect("non-zero");
        let mut p = vt100::Parser::new(n(24), n(100), 0);
        p.process(&self.output.lock().unwrap());
        p
    }

    fn raw_output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn rows(&self) -> Vec<String> {
        let p = self.screen();
        p.screen()
            .rows(0, 100)
            .map(|r| r.trim_end().to_string())
            .collect()
    }

    /// The row the cursor is on.
    fn cursor_row(&self) -> String {
        let p = self.screen();
        let (row, _) = p.screen().cursor_position();
        self.rows()[row as usize].clone()
    }

    fn wait_for(&self, text: &str) {
        wait_until(&format!("screen to show {text:?}"), || {
            self.rows().iter().any(|r| r.contains(text))
        });
    }
}

#[test]
fn interactive_session_on_a_pty() {
    let s = Server::start(&["0"]);
    let mut yoda = s.login("yoda", "wise@!man");
    let mut t = Pty::spawn(&s);
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
