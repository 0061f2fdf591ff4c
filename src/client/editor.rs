//! The line editor behind the `> ` prompt on a terminal (pure: keys in, text out).
//!
//! Emacs-style keys as in readline: Left/Right (Ctrl-B/F), Home/End (Ctrl-A/E),
//! Backspace, Delete, Ctrl-U (kill to start), Ctrl-K (kill to end), Ctrl-W (kill word),
//! Up/Down (history), Tab (complete command names and known user names), Ctrl-L
//! (redraw), Ctrl-C (interrupt), Ctrl-D (end of input on an empty line, else delete).
//! [`Editor::render`] produces the escape sequences that redraw the input line, which is
//! how a message arriving mid-typing is printed above a line that stays intact.

/// A decoded key press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    Char(char),
    /// Ctrl plus a letter, lower-case.
    Ctrl(char),
    Enter,
    Backspace,
    Delete,
    Left,
    Right,
    Home,
    End,
    Up,
    Down,
    Tab,
    Other,
}

impl Key {
    /// Maps the terminal-sequence parser's output to our keys.
    pub(super) fn from_anes(seq: anes::parser::Sequence) -> Key {
        use anes::parser::{KeyCode, KeyModifiers, Sequence};
        match seq {
            Sequence::Key(code, mods) => match code {
                KeyCode::Enter => Key::Enter,
                KeyCode::Backspace => Key::Backspace,
                KeyCode::Delete => Key::Delete,
                KeyCode::Left => Key::Left,
                KeyCode::Right => Key::Right,
                KeyCode::Home => Key::Home,
                KeyCode::End => Key::End,
                KeyCode::Up => Key::Up,
                KeyCode::Down => Key::Down,
                KeyCode::Tab => Key::Tab,
                KeyCode::Char('\x08') => Key::Backspace,
                KeyCode::Char(c) if (c as u32) < 0x20 => Key::Ctrl((c as u8 + b'a' - 1) as char),
                KeyCode::Char(c) if mods.contains(KeyModifiers::CONTROL) => {
                    Key::Ctrl(c.to_ascii_lowercase())
                }
                KeyCode::Char(c) if mods.is_empty() || mods == KeyModifiers::SHIFT => Key::Char(c),
                _ => Key::Other,
            },
            _ => Key::Other,
        }
    }
}

/// What a key press asks the client to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// Nothing visible changed.
    None,
    /// The input line changed: redraw it.
    Redraw,
    /// Enter: the finished line (already recorded in history unless secret).
    Submit(String),
    /// Ctrl-D on an empty line.
    Eof,
    /// Ctrl-C.
    Interrupt,
    /// Ambiguous completion: show these candidates above the line.
    Candidates(Vec<String>),
}

const HISTORY_MAX: usize = 500;

#[derive(Debug, Default)]
pub(super) struct Editor {
    buf: Vec<char>,
    cursor: usize,
    history: Vec<String>,
    /// Index into `history` while browsing it.
    browsing: Option<usize>,
    /// The line being typed before browsing started.
    draft: Vec<char>,
    /// Secret input (passwords): nothing is echoed and nothing is kept in history.
    pub secret: bool,
}

fn set(buf: &mut Vec<char>, s: &str) {
    buf.clear();
    buf.extend(s.chars());
}

impl Editor {
    pub(super) fn line(&self) -> String {
        self.buf.iter().collect()
    }

    /// Handles one key; `complete` lists candidates for the word being completed
    /// given (is_first_word, command, prefix).
    pub(super) fn key(
        &mut self,
        key: Key,
        complete: &dyn Fn(bool, &str, &str) -> Vec<String>,
    ) -> Action {
        match key {
            Key::Char(c) if !c.is_control() => {
                self.buf.insert(self.cursor, c);
                self.cursor += 1;
            }
            Key::Enter => {
                let line = self.line();
                self.buf.clear();
                self.cursor = 0;
                self.browsing = None;
                if !self.secret && !line.trim().is_empty() && self.history.last() != Some(&line) {
                    if self.history.len() == HISTORY_MAX {
                        self.history.remove(0);
                    }
                    self.history.push(line.clone());
                }
                return Action::Submit(line);
            }
            Key::Ctrl('c') => return Action::Interrupt,
            Key::Ctrl('d') if self.buf.is_empty() => return Action::Eof,
            Key::Ctrl('d') | Key::Delete => {
                if self.cursor >= self.buf.len() {
                    return Action::None;
                }
                self.buf.remove(self.cursor);
            }
            Key::Backspace => {
                if self.cursor == 0 {
                    return Action::None;
                }
                self.cursor -= 1;
                self.buf.remove(self.cursor);
            }
            Key::Left | Key::Ctrl('b') => self.cursor = self.cursor.saturating_sub(1),
            Key::Right | Key::Ctrl('f') => self.cursor = (self.cursor + 1).min(self.buf.len()),
            Key::Home | Key::Ctrl('a') => self.cursor = 0,
            Key::End | Key::Ctrl('e') => self.cursor = self.buf.len(),
            Key::Ctrl('u') => {
                self.buf.drain(..self.cursor);
                self.cursor = 0;
            }
            Key::Ctrl('k') => self.buf.truncate(self.cursor),
            Key::Ctrl('w') => {
                let mut start = self.cursor;
                while start > 0 && self.buf[start - 1] == ' ' {
                    start -= 1;
                }
                while start > 0 && self.buf[start - 1] != ' ' {
                    start -= 1;
                }
                self.buf.drain(start..self.cursor);
                self.cursor = start;
            }
            Key::Ctrl('l') => {}
            Key::Up if !self.secret => {
                let next = match self.browsing {
                    None if self.history.is_empty() => return Action::None,
                    None => {
                        self.draft = std::mem::take(&mut self.buf);
                        self.history.len() - 1
                    }
                    Some(0) => return Action::None,
                    Some(i) => i - 1,
                };
                self.browsing = Some(next);
                set(&mut self.buf, &self.history[next]);
                self.cursor = self.buf.len();
            }
            Key::Down if !self.secret => {
                let Some(i) = self.browsing else {
                    return Action::None;
                };
                if i + 1 < self.history.len() {
                    self.browsing = Some(i + 1);
                    set(&mut self.buf, &self.history[i + 1]);
                } else {
                    self.browsing = None;
                    self.buf = std::mem::take(&mut self.draft);
                }
                self.cursor = self.buf.len();
            }
            Key::Tab if !self.secret => return self.complete(complete),
            _ => return Action::None,
        }
        Action::Redraw
    }

    fn complete(&mut self, complete: &dyn Fn(bool, &str, &str) -> Vec<String>) -> Action {
        let before: String = self.buf[..self.cursor].iter().collect();
        let word_start = before.rfind(' ').map_or(0, |i| i + 1);
        let prefix = &before[word_start..];
        let first = before[..word_start].trim().is_empty();
        let command = before.split_whitespace().next().unwrap_or("");
        // Only the first argument of a command is a user name.
        if !first && before[..word_start].split_whitespace().count() != 1 {
            return Action::None;
        }
        let mut cands = complete(first, command, prefix);
        cands.retain(|c| c.starts_with(prefix));
        cands.sort();
        cands.dedup();
        let insert = match cands.as_slice() {
            [] => return Action::None,
            [only] => format!("{} ", &only[prefix.len()..]),
            many => {
                let common = many.iter().skip(1).fold(many[0].clone(), |acc, c| {
                    acc.chars()
                        .zip(c.chars())
                        .take_while(|(a, b)| a == b)
                        .map(|(a, _)| a)
                        .collect()
                });
                if common.len() > prefix.len() {
                    common[prefix.len()..].to_string()
                } else {
                    return Action::Candidates(cands);
                }
            }
        };
        for c in insert.chars() {
            self.buf.insert(self.cursor, c);
            self.cursor += 1;
        }
        Action::Redraw
    }

    /// Escape sequences that redraw `prompt` and the input line with the cursor in place.
    pub(super) fn render(&self, prompt: &str, out: &mut String) {
        out.push_str("\r\x1b[K");
        out.push_str(prompt);
        if self.secret {
            return;
        }
        // What is typed (or pasted) is shown like network text: nothing in it may act
        // on the terminal. The cursor moves back by display columns, not characters,
        // so wide (CJK, emoji) characters keep it in place.
        let before: String = self.buf[..self.cursor].iter().collect();
        let after: String = self.buf[self.cursor..].iter().collect();
        let after = super::render::visible(&after);
        out.push_str(&super::render::visible(&before));
        out.push_str(&after);
        let back = unicode_width::UnicodeWidthStr::width(&*after);
        if back > 0 {
            out.push_str(&format!("\x1b[{back}D"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: bool, _: &str, _: &str) -> Vec<String> {
        Vec::new()
    }

    fn typed(e: &mut Editor, s: &str) {
        for c in s.chars() {
            e.key(Key::Char(c), &none);
        }
    }

    #[test]
    fn editing_keys() {
        let mut e = Editor::default();
        typed(&mut e, "helo world");
        for _ in 0..7 {
            e.key(Key::Left, &none);
        }
        e.key(Key::Char('l'), &none);
        assert_eq!(e.line(), "hello world");
        e.key(Key::Ctrl('e'), &none);
        e.key(Key::Ctrl('w'), &none);
        assert_eq!(e.line(), "hello ");
        e.key(Key::Ctrl('a'), &none);
        e.key(Key::Delete, &none);
        assert_eq!(e.line(), "ello ");
        e.key(Key::End, &none);
        e.key(Key::Backspace, &none);
        assert_eq!(e.line(), "ello");
        e.key(Key::Left, &none);
        e.key(Key::Ctrl('u'), &none);
        assert_eq!(e.line(), "o");
        assert_eq!(e.key(Key::Enter, &none), Action::Submit("o".into()));
        assert_eq!(e.key(Key::Ctrl('d'), &none), Action::Eof);
        assert_eq!(e.key(Key::Ctrl('c'), &none), Action::Interrupt);
    }

    #[test]
    fn history_browse_and_restore_draft() {
        let mut e = Editor::default();
        typed(&mut e, "first");
        e.key(Key::Enter, &none);
        typed(&mut e, "second");
        e.key(Key::Enter, &none);
        typed(&mut e, "draft");
        e.key(Key::Up, &none);
        assert_eq!(e.line(), "second");
        e.key(Key::Up, &none);
        e.key(Key::Up, &none);
        assert_eq!(e.line(), "first");
        e.key(Key::Down, &none);
        e.key(Key::Down, &none);
        assert_eq!(e.line(), "draft");
    }

    #[test]
    fn secret_lines_are_not_echoed_or_remembered() {
        let mut e = Editor {
            secret: true,
            ..Default::default()
        };
        typed(&mut e, "pw");
        let mut out = String::new();
        e.render("Password: ", &mut out);
        assert_eq!(out, "\r\x1b[KPassword: ");
        assert_eq!(e.key(Key::Enter, &none), Action::Submit("pw".into()));
        e.secret = false;
        e.key(Key::Up, &none);
        assert_eq!(e.line(), "");
    }

    #[test]
    fn completion_of_commands_and_users() {
        let names = |first: bool, cmd: &str, _: &str| -> Vec<String> {
            if first {
                vec!["message".into(), "broadcast".into(), "block".into()]
            } else if cmd == "message" {
                vec!["yoda".into(), "yolanda".into(), "hans".into()]
            } else {
                vec![]
            }
        };
        let mut e = Editor::default();
        typed(&mut e, "me");
        e.key(Key::Tab, &names);
        assert_eq!(e.line(), "message ");
        typed(&mut e, "h");
        e.key(Key::Tab, &names);
        assert_eq!(e.line(), "message hans ");
        let mut e = Editor::default();
        typed(&mut e, "message y");
        e.key(Key::Tab, &names);
        assert_eq!(e.line(), "message yo");
        assert_eq!(
            e.key(Key::Tab, &names),
            Action::Candidates(vec!["yoda".into(), "yolanda".into()])
        );
        let mut e = Editor::default();
        typed(&mut e, "b");
        e.key(Key::Tab, &names);
        assert_eq!(e.line(), "b");
        typed(&mut e, "r");
        e.key(Key::Tab, &names);
        assert_eq!(e.line(), "broadcast ");
    }

    #[test]
    fn render_places_the_cursor() {
        let mut e = Editor::default();
        typed(&mut e, "abc");
        e.key(Key::Left, &none);
        let mut out = String::new();
        e.render("> ", &mut out);
        assert_eq!(out, "\r\x1b[K> abc\x1b[1D");
    }

    #[test]
    fn cursor_moves_by_display_width() {
        let mut e = Editor::default();
        typed(&mut e, "日本語x");
        e.key(Key::Home, &none);
        e.key(Key::Right, &none);
        let mut out = String::new();
        e.render("> ", &mut out);
        // Two wide characters and one narrow one after the cursor: 5 columns.
        assert_eq!(out, "\r\x1b[K> 日本語x\x1b[5D");
    }

    #[test]
    fn keys_from_terminal_bytes() {
        let mut p = anes::parser::Parser::default();
        p.advance(b"a\x01\x1b[A\x7f\r\t\x17", false);
        let keys: Vec<Key> = p.map(Key::from_anes).collect();
        assert_eq!(
            keys,
            [
                Key::Char('a'),
                Key::Ctrl('a'),
                Key::Up,
                Key::Backspace,
                Key::Enter,
                Key::Tab,
                Key::Ctrl('w')
            ]
        );
    }
}
