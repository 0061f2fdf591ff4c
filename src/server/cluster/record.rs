//! What nodes tell each other through the stream: one [`Rec`] per durable change, each
//! on its own subject so JetStream can compare-and-set and roll up per user.
//!
//! | record | subject | payload | published with |
//! |---|---|---|---|
//! | `Login` | `natter.s.seen.<user>` | `IN <node> <inc> <serial> <at> <key\|->` | expected last subject sequence (the claim) |
//! | `Logout` | `natter.s.seen.<user>` | `OUT <at> <login seq>` | expected last subject sequence = the login's; roll-up |
//! | `Msg` | `natter.s.mail.<to>` | `<from> <text>` | (the stream sequence becomes the message id) |
//! | `Ack` | `natter.s.ack.<to>` | `<upto>` | roll-up |
//! | `Block` | `natter.s.block.<who>.<whom>` | `1` or `0` | roll-up |
//! | `Fail` | `natter.s.fail.<user>` | `<inc> <serial> <at> <block ms>` | |
//!
//! Usernames become subject tokens through [`escape`]: letters, digits, `-` and `_`
//! stay, every other byte is `~XX` (so `.`, `*`, `>` and spaces cannot change a
//! subject's shape, and two names never share a token).

use std::fmt::Write;

/// Prefix of every subject the stream keeps.
pub const STREAM_SUBJECTS: &str = "natter.s.>";

/// One durable change, as every node applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    /// `who` logged in on node `node` (incarnation `inc`), session `serial` there.
    Login {
        /// The user.
        who: Box<str>,
        /// The node's name.
        node: Box<str>,
        /// The node process's incarnation (random per start).
        inc: u64,
        /// The session's serial on that node.
        serial: u64,
        /// When, in Unix ms.
        at: u64,
        /// The fingerprint of the certificate its client shows peers.
        key: Option<Box<str>>,
    },
    /// `who` logged out (or was logged out for its node) at `at`; `login` is the
    /// sequence of the login it ends.
    Logout {
        /// The user.
        who: Box<str>,
        /// When, in Unix ms.
        at: u64,
        /// The stream sequence of the `Login` this ends.
        login: u64,
    },
    /// A direct message; its stream sequence is its id.
    Msg {
        /// The recipient.
        to: Box<str>,
        /// The sender.
        from: Box<str>,
        /// The text.
        text: Box<str>,
    },
    /// `to`'s client acknowledged every message up to `upto`.
    Ack {
        /// The recipient who acknowledged.
        to: Box<str>,
        /// The last message id acknowledged.
        upto: u64,
    },
    /// `who` blocked (`on`) or unblocked `whom`.
    Block {
        /// The user who blocks.
        who: Box<str>,
        /// The user blocked.
        whom: Box<str>,
        /// Blocked or unblocked.
        on: bool,
    },
    /// A wrong password for `who`, tried on node incarnation `inc`, session `serial`.
    Fail {
        /// The account.
        who: Box<str>,
        /// The incarnation of the node that checked it.
        inc: u64,
        /// The session's serial there.
        serial: u64,
        /// When, in Unix ms.
        at: u64,
        /// The block duration of that node, in ms (the third failure locks for it).
        block_ms: u64,
    },
}

impl Rec {
    /// Whether publishing it replaces every earlier message on its subject.
    pub fn rolls_up(&self) -> bool {
        matches!(
            self,
            Rec::Logout { .. } | Rec::Ack { .. } | Rec::Block { .. }
        )
    }

    /// The subject it is published on.
    pub fn subject(&self) -> String {
        let mut s = String::with_capacity(48);
        match self {
            Rec::Login { who, .. } | Rec::Logout { who, .. } => {
                s.push_str("natter.s.seen.");
                escape_into(&mut s, who);
            }
            Rec::Msg { to, .. } => {
                s.push_str("natter.s.mail.");
                escape_into(&mut s, to);
            }
            Rec::Ack { to, .. } => {
                s.push_str("natter.s.ack.");
                escape_into(&mut s, to);
            }
            Rec::Block { who, whom, .. } => {
                s.push_str("natter.s.block.");
                escape_into(&mut s, who);
                s.push('.');
                escape_into(&mut s, whom);
            }
            Rec::Fail { who, .. } => {
                s.push_str("natter.s.fail.");
                escape_into(&mut s, who);
            }
        }
        s
    }

    /// The payload (the user names are in the subject).
    pub fn payload(&self) -> String {
        match self {
            Rec::Login {
                node,
                inc,
                serial,
                at,
                key,
                ..
            } => {
                let key = key.as_deref().unwrap_or("-");
                format!("IN {node} {inc} {serial} {at} {key}")
            }
            Rec::Logout { at, login, .. } => format!("OUT {at} {login}"),
            Rec::Msg { from, text, .. } => format!("{from} {text}"),
            Rec::Ack { upto, .. } => upto.to_string(),
            Rec::Block { on, .. } => if *on { "1" } else { "0" }.to_string(),
            Rec::Fail {
                inc,
                serial,
                at,
                block_ms,
                ..
            } => format!("{inc} {serial} {at} {block_ms}"),
        }
    }

    /// The record a stream message carries, or `None` for anything else (a message
    /// some other tool put on our subjects is skipped, never trusted): names are single
    /// words, text is what a client could have sent (no control characters), so
    /// nothing read from the broker can add a line to what a client receives.
    pub fn parse(subject: &str, payload: &[u8]) -> Option<Rec> {
        Rec::parse_any(subject, payload).filter(Rec::is_clean)
    }

    fn is_clean(&self) -> bool {
        match self {
            Rec::Login { who, node, key, .. } => {
                word(who) && word(node) && key.as_deref().is_none_or(word)
            }
            Rec::Logout { who, .. } | Rec::Fail { who, .. } => word(who),
            Rec::Msg { to, from, text } => {
                word(to) && word(from) && crate::protocol::frames::clean_text(text)
            }
            Rec::Ack { to, .. } => word(to),
            Rec::Block { who, whom, .. } => word(who) && word(whom),
        }
    }

    fn parse_any(subject: &str, payload: &[u8]) -> Option<Rec> {
        let payload = std::str::from_utf8(payload).ok()?;
        let rest = subject.strip_prefix("natter.s.")?;
        let (kind, names) = rest.split_once('.')?;
        let mut f = payload.split(' ');
        let mut num = || f.next()?.parse::<u64>().ok();
        match kind {
            "seen" => {
                let who = unescape(names)?;
                let mut f = payload.split(' ');
                match f.next()? {
                    "IN" => {
                        let node = f.next()?.into();
                        let inc = f.next()?.parse().ok()?;
                        let serial = f.next()?.parse().ok()?;
                        let at = f.next()?.parse().ok()?;
                        let key = match f.next()? {
                            "-" => None,
                            k => Some(k.into()),
                        };
                        Some(Rec::Login {
                            who,
                            node,
                            inc,
                            serial,
                            at,
                            key,
                        })
                    }
                    "OUT" => Some(Rec::Logout {
                        who,
                        at: f.next()?.parse().ok()?,
                        login: f.next()?.parse().ok()?,
                    }),
                    _ => None,
                }
            }
            "mail" => {
                let (from, text) = payload.split_once(' ')?;
                Some(Rec::Msg {
                    to: unescape(names)?,
                    from: from.into(),
                    text: text.into(),
                })
            }
            "ack" => Some(Rec::Ack {
                to: unescape(names)?,
                upto: num()?,
            }),
            "block" => {
                let (who, whom) = names.split_once('.')?;
                Some(Rec::Block {
                    who: unescape(who)?,
                    whom: unescape(whom)?,
                    on: match payload {
                        "1" => true,
                        "0" => false,
                        _ => return None,
                    },
                })
            }
            "fail" => Some(Rec::Fail {
                who: unescape(names)?,
                inc: num()?,
                serial: num()?,
                at: num()?,
                block_ms: num()?,
            }),
            _ => None,
        }
    }
}

/// A name, a fingerprint, a token: one non-empty word with nothing a terminal or the
/// line protocol would act on.
pub fn word(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `name` as one subject token (see the module documentation).
pub fn escape(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    escape_into(&mut s, name);
    s
}

fn escape_into(out: &mut String, name: &str) {
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            let _ = write!(out, "~{b:02X}");
        }
    }
}

/// The name a subject token stands for.
pub fn unescape(token: &str) -> Option<Box<str>> {
    let mut bytes = Vec::with_capacity(token.len());
    let mut it = token.bytes();
    while let Some(b) = it.next() {
        if b == b'~' {
            // Exactly what `escape` writes (upper-case hex, only for bytes it
            // escapes), so every name has one token and every token one name.
            let hex = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            };
            let byte = hex(it.next()?)? * 16 + hex(it.next()?)?;
            if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
                return None;
            }
            bytes.push(byte);
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            bytes.push(b);
        } else {
            return None;
        }
    }
    String::from_utf8(bytes).ok().map(String::into_boxed_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_safe_tokens_and_back() {
        for name in ["hans", "a.b", "x*y>z", "ü~ber", "a b", "~41", "-_-"] {
            let t = escape(name);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_~".contains(&b)),
                "{t}"
            );
            assert_eq!(unescape(&t).as_deref(), Some(name));
        }
        assert_ne!(escape("~41"), escape("A"));
        assert_eq!(unescape("a.b"), None);
        // One token per name: no lower-case hex, no escaping what needs none.
        assert_eq!(unescape("~2e"), None);
        assert_eq!(unescape("~41"), None);
        assert_eq!(unescape("~2E").as_deref(), Some("."));
    }

    #[test]
    fn every_record_survives_the_wire() {
        let recs = [
            Rec::Login {
                who: "a.b".into(),
                node: "n1".into(),
                inc: 7,
                serial: 9,
                at: 1_700_000_000_000,
                key: Some("ab:cd".into()),
            },
            Rec::Login {
                who: "yoda".into(),
                node: "n2".into(),
                inc: 1,
                serial: 2,
                at: 3,
                key: None,
            },
            Rec::Logout {
                who: "yoda".into(),
                at: 5,
                login: 4,
            },
            Rec::Msg {
                to: "hans".into(),
                from: "yoda".into(),
                text: "hello  there ".into(),
            },
            Rec::Ack {
                to: "hans".into(),
                upto: 12,
            },
            Rec::Block {
                who: "hans".into(),
                whom: "x.y".into(),
                on: true,
            },
            Rec::Fail {
                who: "hans".into(),
                inc: 1,
                serial: 2,
                at: 3,
                block_ms: 60_000,
            },
        ];
        for r in recs {
            let back = Rec::parse(&r.subject(), r.payload().as_bytes());
            assert_eq!(back.as_ref(), Some(&r));
        }
        assert_eq!(Rec::parse("natter.s.mail.hans", b"nospace"), None);
        assert_eq!(Rec::parse("natter.s.what.hans", b"1"), None);
        assert_eq!(Rec::parse("natter.s.seen.hans", b"IN x"), None);
        // Nothing from the broker can become a second line for a client.
        assert_eq!(
            Rec::parse("natter.s.mail.hans", b"yoda hi\n*BYE removed"),
            None
        );
        assert_eq!(Rec::parse("natter.s.mail.hans", b"yoda \x1b[2J"), None);
        assert_eq!(Rec::parse("natter.s.mail.~0A", b"yoda hi"), None);
    }
}
