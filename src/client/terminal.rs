//! Terminal mode for the interactive client, restored on every way out.
//!
//! [`RawMode::enable`] turns off canonical input, echo and signal keys (Ctrl-C arrives
//! as a key, so the client can log out cleanly) but keeps output processing, so `\n`
//! still starts a new line. The saved settings are restored when the guard drops and,
//! through a panic hook, before a panic message is printed.

use std::sync::Mutex;

use nix::sys::termios::{self, InputFlags, LocalFlags, SetArg, SpecialCharacterIndices, Termios};

/// The settings to restore (a plain `libc::termios` so the panic hook can reach it).
static SAVED: Mutex<Option<nix::libc::termios>> = Mutex::new(None);

fn restore_saved() {
    let saved = SAVED.lock().ok().and_then(|mut g| g.take());
    if let Some(t) = saved {
        let t: Termios = t.into();
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &t);
    }
}

/// While alive, stdin is in raw-ish mode.
pub struct RawMode {
    _private: (),
}

impl RawMode {
    /// Switches stdin to raw-ish mode until the guard drops.
    pub fn enable() -> nix::Result<RawMode> {
        let original = termios::tcgetattr(std::io::stdin())?;
        let mut raw = original.clone();
        raw.local_flags
            .remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG | LocalFlags::IEXTEN);
        raw.input_flags.remove(InputFlags::IXON | InputFlags::ICRNL);
        raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        if let Ok(mut g) = SAVED.lock() {
            *g = Some(original.into());
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_saved();
            previous(info);
        }));
        termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw)?;
        Ok(RawMode { _private: () })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore_saved();
    }
}

/// Whether both stdin and stdout are terminals.
pub fn interactive() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// While alive, the terminal on stdin does not echo (canonical line input stays on):
/// for reading a password a line at a time. Restored on drop.
pub struct NoEcho {
    original: Termios,
}

impl NoEcho {
    /// Turns echo off; `None` when stdin is not a terminal.
    pub fn new() -> Option<NoEcho> {
        let original = termios::tcgetattr(std::io::stdin()).ok()?;
        let mut quiet = original.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &quiet).ok()?;
        Some(NoEcho { original })
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.original);
    }
}
