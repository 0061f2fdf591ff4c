//! What the user typed at the `> ` prompt, parsed (pure, no I/O).

use std::time::Duration;

use crate::units::parse_duration;

/// Names of the commands, for Tab completion.
pub(super) const COMMANDS: [&str; 10] = [
    "message",
    "broadcast",
    "whoelse",
    "whoelsesince",
    "block",
    "unblock",
    "logout",
    "startprivate",
    "private",
    "stopprivate",
];

/// Commands whose first argument is a user name (Tab completes names there).
pub(super) fn takes_user(command: &str) -> bool {
    matches!(
        command,
        "message" | "block" | "unblock" | "startprivate" | "private" | "stopprivate"
    )
}

/// One command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Command<'a> {
    /// Blank line: does nothing.
    Empty,
    Message {
        to: &'a str,
        text: &'a str,
    },
    Broadcast {
        text: &'a str,
    },
    WhoElse,
    WhoElseSince {
        window: Duration,
    },
    Block {
        user: &'a str,
    },
    Unblock {
        user: &'a str,
    },
    Logout,
    StartPrivate {
        user: &'a str,
    },
    Private {
        to: &'a str,
        text: &'a str,
    },
    StopPrivate {
        user: &'a str,
    },
    /// Anything else, including a known command with missing arguments.
    Invalid,
}

/// Splits off the first whitespace-separated word; the rest keeps its inner spacing.
fn word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

fn one_user(rest: &str) -> Option<&str> {
    let (user, extra) = word(rest);
    (!user.is_empty() && extra.is_empty()).then_some(user)
}

fn user_and_text(rest: &str) -> Option<(&str, &str)> {
    let (user, text) = word(rest);
    (!user.is_empty() && !text.trim().is_empty()).then_some((user, text))
}

/// Parses one line (without its newline).
pub(super) fn parse(line: &str) -> Command<'_> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (cmd, rest) = word(line);
    let parsed = match cmd {
        "" => Some(Command::Empty),
        "message" => user_and_text(rest).map(|(to, text)| Command::Message { to, text }),
        "broadcast" => (!rest.trim().is_empty()).then_some(Command::Broadcast { text: rest }),
        "whoelse" => rest.trim().is_empty().then_some(Command::WhoElse),
        "whoelsesince" => parse_duration(rest)
            .ok()
            .map(|window| Command::WhoElseSince { window }),
        "block" => one_user(rest).map(|user| Command::Block { user }),
        "unblock" => one_user(rest).map(|user| Command::Unblock { user }),
        "logout" => rest.trim().is_empty().then_some(Command::Logout),
        "startprivate" => one_user(rest).map(|user| Command::StartPrivate { user }),
        "private" => user_and_text(rest).map(|(to, text)| Command::Private { to, text }),
        "stopprivate" => one_user(rest).map(|user| Command::StopPrivate { user }),
        _ => None,
    };
    parsed.unwrap_or(Command::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse(""), Command::Empty);
        assert_eq!(parse("   "), Command::Empty);
        assert_eq!(
            parse("message bob hi  there "),
            Command::Message {
                to: "bob",
                text: "hi  there "
            }
        );
        assert_eq!(
            parse("message   bob   spaced"),
            Command::Message {
                to: "bob",
                text: "spaced"
            }
        );
        assert_eq!(parse("broadcast a  b"), Command::Broadcast { text: "a  b" });
        assert_eq!(parse("whoelse"), Command::WhoElse);
        assert_eq!(
            parse("whoelsesince 90"),
            Command::WhoElseSince {
                window: Duration::from_secs(90)
            }
        );
        assert_eq!(
            parse("whoelsesince 1h 30m"),
            Command::WhoElseSince {
                window: Duration::from_secs(5400)
            }
        );
        assert_eq!(parse("block bob"), Command::Block { user: "bob" });
        assert_eq!(parse("unblock bob"), Command::Unblock { user: "bob" });
        assert_eq!(parse("logout"), Command::Logout);
        assert_eq!(
            parse("startprivate bob"),
            Command::StartPrivate { user: "bob" }
        );
        assert_eq!(
            parse("private bob psst"),
            Command::Private {
                to: "bob",
                text: "psst"
            }
        );
        assert_eq!(
            parse("stopprivate bob"),
            Command::StopPrivate { user: "bob" }
        );
    }

    #[test]
    fn missing_or_extra_arguments_are_invalid() {
        for bad in [
            "message",
            "message bob",
            "message bob   ",
            "broadcast",
            "broadcast  ",
            "whoelse x",
            "whoelsesince",
            "whoelsesince soon",
            "block",
            "block a b",
            "unblock",
            "logout now",
            "startprivate",
            "private bob",
            "stopprivate",
            "hello",
            "Message bob hi",
        ] {
            assert_eq!(parse(bad), Command::Invalid, "{bad:?}");
        }
    }
}
