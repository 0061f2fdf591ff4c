//! The peer-to-peer line protocol between two clients (private messaging).
//!
//! ```text
//! PEERHELLO <user> <token>   the connecting client: who it is, and the one-time token
//!                            the server gave it (`+PEER`) and the target (`*EXPECT`)
//! PEEROK <user>              the target accepts; the session is open both ways
//! PMSG <text>                a private message
//! PSTOP                      the sender ends the session
//! ```
//!
//! Anything else is not a frame: before the handshake it gets the connection dropped
//! silently, after it the line is ignored.

use std::fmt::Write;

/// One parsed peer line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFrame<'a> {
    /// `PEERHELLO <user> <token>`: the connecting side says who it is.
    Hello {
        /// Who is connecting.
        user: &'a str,
        /// The token the server gave them for this introduction.
        token: &'a str,
    },
    /// `PEEROK <user>`: accepted; the session is open.
    Ok {
        /// Who accepted.
        user: &'a str,
    },
    /// `PMSG <text>`: a private message.
    Msg {
        /// The message.
        text: &'a str,
    },
    /// `PSTOP`: the other side ended the session.
    Stop,
}

fn word(s: &str) -> Option<&str> {
    (!s.is_empty() && !s.contains(' ')).then_some(s)
}

/// Parses one line (without its newline); `None` for anything that is not a frame.
pub fn parse_peer_line(line: &str) -> Option<PeerFrame<'_>> {
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    match verb {
        "PEERHELLO" => {
            let (user, token) = rest.split_once(' ')?;
            Some(PeerFrame::Hello {
                user: word(user)?,
                token: word(token)?,
            })
        }
        "PEEROK" => Some(PeerFrame::Ok { user: word(rest)? }),
        "PMSG" => Some(PeerFrame::Msg { text: rest }),
        "PSTOP" if rest.is_empty() => Some(PeerFrame::Stop),
        _ => None,
    }
}

impl PeerFrame<'_> {
    /// The frame as a line, without the newline.
    pub fn to_line(&self) -> String {
        let mut out = String::new();
        let _ = match self {
            PeerFrame::Hello { user, token } => write!(out, "PEERHELLO {user} {token}"),
            PeerFrame::Ok { user } => write!(out, "PEEROK {user}"),
            PeerFrame::Msg { text } => write!(out, "PMSG {text}"),
            PeerFrame::Stop => write!(out, "PSTOP"),
        };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_junk_is_refused() {
        let frames = [
            PeerFrame::Hello {
                user: "hans",
                token: "00ff",
            },
            PeerFrame::Ok { user: "yoda" },
            PeerFrame::Msg {
                text: "two  spaces ✓",
            },
            PeerFrame::Msg { text: "" },
            PeerFrame::Stop,
        ];
        for f in frames {
            assert_eq!(parse_peer_line(&f.to_line()), Some(f.clone()));
        }
        for junk in [
            "",
            "PEERHELLO",
            "PEERHELLO hans",
            "PEERHELLO hans tok extra",
            "PEERHELLO  tok",
            "PEEROK",
            "PEEROK a b",
            "PSTOP now",
            "GET / HTTP/1.1",
        ] {
            assert_eq!(parse_peer_line(junk), None, "{junk:?}");
        }
    }
}
