//! What the client writes to stdout: lines above the input line, the prompts, and (on
//! a terminal) the redrawn input line. Collected per loop iteration, written once.
//!
//! Every line goes through [`Screen::line`], which shows every character that could
//! act on the terminal escaped ([`render::visible`]): text from the server or a peer
//! never reaches the terminal or a pipe raw. On a pipe the prompts are printed once
//! before each line is read, like the classic client's `input()`; `--quiet` leaves them
//! out; on a terminal the editor draws them.

use std::io::{self, Write};

use super::editor::Editor;
use super::render;

pub(crate) struct Screen {
    interactive: bool,
    quiet: bool,
    buf: String,
    /// The prompt line must be redrawn at the end of the iteration (terminal).
    redraw: bool,
    /// The prompt for the next line of input has been printed (pipe).
    prompt_shown: bool,
    /// The prompt the input line was last drawn with (terminal).
    drawn: (&'static str, bool),
}

impl Screen {
    pub(super) fn new(interactive: bool, quiet: bool) -> Screen {
        Screen {
            interactive,
            quiet,
            buf: String::new(),
            redraw: true,
            prompt_shown: false,
            drawn: ("", false),
        }
    }

    pub(super) fn interactive(&self) -> bool {
        self.interactive
    }

    /// The prompt to show, or nothing with `--quiet`.
    pub(super) fn prompt<'a>(&self, prompt: &'a str) -> &'a str {
        if self.quiet { "" } else { prompt }
    }

    /// Prints one line of output above the input line.
    pub(super) fn line(&mut self, text: &str) {
        if self.interactive {
            self.buf.push_str("\r\x1b[K");
            self.redraw = true;
        }
        self.buf.push_str(&render::visible(text));
        self.buf.push('\n');
    }

    /// On a pipe, prints the prompt for the next line of input, once.
    pub(super) fn show_prompt(&mut self, prompt: &str) {
        if !self.interactive && !self.prompt_shown {
            self.prompt_shown = true;
            let p = self.prompt(prompt);
            self.buf.push_str(p);
        }
    }

    /// A line of input was taken: the next one gets its prompt.
    pub(super) fn line_taken(&mut self) {
        self.prompt_shown = false;
        self.redraw = true;
    }

    /// Something changed that the input line shows.
    pub(super) fn redraw(&mut self) {
        self.redraw = true;
    }

    /// Leaves a submitted line on screen (without a password) after its prompt.
    pub(super) fn submitted(&mut self, prompt: &str, shown: &str) {
        let p = self.prompt(prompt);
        self.buf.push_str(&format!("\r\x1b[K{p}{shown}\n"));
        self.redraw = true;
    }

    /// Raw bytes for the terminal (a newline after Ctrl-C).
    pub(super) fn raw(&mut self, s: &str) {
        self.buf.push_str(s);
    }

    /// Redraws the input line if needed (terminal), then writes everything.
    pub(super) fn render(&mut self, editor: &mut Editor, prompt: &'static str, secret: bool) {
        if self.interactive && (self.redraw || self.drawn != (prompt, secret)) {
            self.drawn = (prompt, secret);
            editor.secret = secret;
            let p = self.prompt(prompt);
            let mut s = std::mem::take(&mut self.buf);
            editor.render(p, &mut s);
            self.buf = s;
            self.redraw = false;
        }
        self.write();
    }

    /// Writes what was collected.
    pub(super) fn write(&mut self) {
        if !self.buf.is_empty() {
            let mut out = io::stdout().lock();
            let _ = out.write_all(self.buf.as_bytes());
            let _ = out.flush();
            self.buf.clear();
        }
    }

    /// The client is exiting: clear the input line on a terminal.
    pub(super) fn finish(&mut self) {
        if self.interactive {
            self.buf.push_str("\r\x1b[K");
        }
        self.write();
    }
}
