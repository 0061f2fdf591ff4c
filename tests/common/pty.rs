//! A `natter` client on a real pseudo-terminal, its screen rebuilt by the `vt100`
//! terminal emulator for assertions.

use std::fs::File;
use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use nix::pty::{Winsize, openpty};

use super::wait_until;

pub struct Pty {
    pub child: std::process::Child,
    writer: File,
    output: Arc<Mutex<Vec<u8>>>,
    pub slave: std::os::fd::OwnedFd,
}

impl Pty {
    /// Starts `natter` on a new 24x100 pseudo-terminal against `addr`.
    pub fn spawn(addr: std::net::SocketAddr, args: &[&str]) -> Pty {
        Pty::spawn_with_password(addr, args, None)
    }

    /// As [`Pty::spawn`], with `NATTER_PASSWORD` set to `password` if given.
    pub fn spawn_with_password(
        addr: std::net::SocketAddr,
        args: &[&str],
        password: Option<&str>,
    ) -> Pty {
        let ws = Winsize {
            ws_row: 24,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&ws), None).expect("openpty");
        let child = super::natter_command(addr, args, password)
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

    pub fn keys(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    pub fn screen(&self) -> vt100::Parser {
        let n = |v: u16| std::num::NonZero::new(v).expect("non-zero");
        let mut p = vt100::Parser::new(n(24), n(100), 0);
        p.process(&self.output.lock().unwrap());
        p
    }

    pub fn raw_output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    pub fn rows(&self) -> Vec<String> {
        let p = self.screen();
        p.screen()
            .rows(0, 100)
            .map(|r| r.trim_end().to_string())
            .collect()
    }

    /// The row the cursor is on.
    pub fn cursor_row(&self) -> String {
        let p = self.screen();
        let (row, _) = p.screen().cursor_position();
        self.rows()[row as usize].clone()
    }

    pub fn wait_for(&self, text: &str) {
        wait_until(&format!("screen to show {text:?}"), || {
            self.rows().iter().any(|r| r.contains(text))
        });
    }
}

impl Pty {
    /// Waits for natter to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> i32 {
        wait_until("natter to exit", || {
            self.child.try_wait().ok().flatten().is_some()
        });
        self.child.wait().map_or(-1, |s| s.code().unwrap_or(-1))
    }

    /// Whether some row of the screen is exactly `text`.
    pub fn has_row(&self, text: &str) -> bool {
        self.rows().iter().any(|r| r == text)
    }
}
