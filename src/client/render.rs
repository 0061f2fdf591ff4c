//! Every string the client shows, in one place: the contract of
//! `../shared/spec/behaviour.md` plus the few additions documented in
//! `docs/protocol.md` ("Client strings").

use crate::protocol::frames::ErrorCode;

pub(super) const WELCOME: &str = "Welcome to the greatest messaging application ever!";
pub(super) const INVALID_USERNAME: &str = "Invalid Username. Please try again";
pub(super) const INVALID_PASSWORD: &str = "Invalid Password. Please try again";
pub(super) const LOCKED_NOW: &str =
    "Invalid Password. Your account has been blocked. Please try again later";
pub(super) const LOCKED: &str =
    "Your account is blocked due to multiple login failures. Please try again later";
pub(super) const ALREADY_ONLINE: &str = "This account is already logged in";
pub(super) const INVALID_COMMAND: &str = "Error. Invalid command";
pub(super) const INVALID_USER: &str = "Error. Invalid user";
pub(super) const MESSAGE_SELF: &str = "Error. Cannot message self";
pub(super) const MESSAGE_BLOCKED: &str =
    "Your message could not be delivered as the recipient has blocked you";
pub(super) const BROADCAST_BLOCKED: &str = "Your message could not be delivered to some recipients";
pub(super) const BLOCK_SELF: &str = "Error. Cannot block self";
pub(super) const UNBLOCK_SELF: &str = "Error. Cannot unblock self";
pub(super) const PRIVATE_SELF: &str = "Error. Cannot start private messaging with self";
pub(super) const TIMED_OUT: &str = "You have been logged out due to inactivity";
pub(super) const USERNAME_PROMPT: &str = "Username: ";
pub(super) const PASSWORD_PROMPT: &str = "Password: ";
pub(super) const PROMPT: &str = "> ";

pub(super) fn chat_line(from: &str, text: &str) -> String {
    format!("{from}: {text}")
}
pub(super) fn private_line(from: &str, text: &str) -> String {
    format!("{from}(private): {text}")
}
pub(super) fn logged_in(user: &str) -> String {
    format!("{user} logged in")
}
pub(super) fn logged_out(user: &str) -> String {
    format!("{user} logged out")
}
pub(super) fn blocked(user: &str) -> String {
    format!("{user} is blocked")
}
pub(super) fn unblocked(user: &str) -> String {
    format!("{user} is unblocked")
}
pub(super) fn not_blocked(user: &str) -> String {
    format!("Error. {user} was not blocked")
}
pub(super) fn has_blocked_you(user: &str) -> String {
    format!("Error. {user} has blocked you")
}
pub(super) fn offline(user: &str) -> String {
    format!("Error. {user} is offline")
}
pub(super) fn private_started(user: &str) -> String {
    format!("Start private messaging with {user}")
}
pub(super) fn private_stopped(user: &str) -> String {
    format!("Stop private messaging with {user}")
}
pub(super) fn peer_stopped(user: &str) -> String {
    format!("{user} stopped private messaging")
}
pub(super) fn private_not_enabled(user: &str) -> String {
    format!("Error. Private messaging to {user} not enabled")
}
pub(super) fn no_longer_online(user: &str) -> String {
    format!("Error. {user} is no longer online")
}
/// Not in the classic contract: documented in docs/protocol.md.
pub(super) fn mailbox_full(user: &str) -> String {
    format!("Error. {user}'s mailbox is full, message not delivered")
}
pub(super) fn private_unreachable(user: &str) -> String {
    format!("Error. Cannot connect to {user} for private messaging")
}
pub(super) fn too_long(limit: &str) -> String {
    format!("Error. Line too long (limit {limit} bytes)")
}
pub(super) const RATE_LIMITED: &str = "Error. You are sending too fast; slow down";
pub(super) const LOGIN_UNAVAILABLE: &str =
    "Error. The server cannot log you in right now. Please try again later";
pub(super) const STORE_UNAVAILABLE: &str =
    "Error. The server cannot store messages right now. Please try again later";
pub(super) const SERVER_LOST: &str = "Connection to the server lost";
pub(super) const SERVER_TIMEOUT: &str = "Connection to the server timed out";
pub(super) const SERVER_NOT_READING: &str = "Disconnected: the server stopped reading";
pub(super) const BAD_REPLY: &str = "Error. The server sent a reply this client cannot read";
pub(super) const BAD_TEXT: &str = "Error. Messages cannot contain control characters";

/// Text from the network made safe to print: every character that would act on a
/// terminal or on the layout of the line instead of being shown (the characters
/// [`crate::protocol::frames::clean_text`] refuses) is written visibly: C0 controls in
/// caret notation (`^[` for ESC, `^M` for CR), DEL as `^?`, and C1 controls, line and
/// paragraph separators and bidirectional embeddings/overrides/isolates as `\u{202e}`.
/// Printed this way, one message is always one line that starts with its real sender.
pub(super) fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    if crate::protocol::frames::clean_text(text) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\u{0}'..='\u{1f}' => {
                out.push('^');
                out.push(char::from(c as u8 + 0x40));
            }
            '\u{7f}' => out.push_str("^?"),
            '\u{80}'..='\u{9f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// What `*BYE <reason>` shows.
pub(super) fn bye(reason: &str) -> String {
    match reason {
        "shutdown" => "The server is shutting down".to_string(),
        "slow-reader" => "Disconnected by the server: not reading fast enough".to_string(),
        "login-timeout" => "Disconnected by the server: login took too long".to_string(),
        "removed" => "Your account has been removed".to_string(),
        "too-many-connections" => {
            "Disconnected by the server: too many connections from your address".to_string()
        }
        "connecting-too-fast" => {
            "Disconnected by the server: connecting too often, try again in a minute".to_string()
        }
        "cluster-lost" => {
            "Disconnected by the server: it lost contact with the other servers; log in again"
                .to_string()
        }
        "tls-required" => {
            "Disconnected by the server: it only accepts encrypted connections (leave out --plaintext)"
                .to_string()
        }
        other => format!("Disconnected by the server: {other}"),
    }
}

/// The request a reply answers, which decides how an error code reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Pending {
    Hello,
    /// The username step of the login dialogue.
    User,
    Login,
    Message,
    Broadcast,
    Who,
    Block,
    Unblock,
    Private(String),
    Active,
    Logout,
}

/// The line for an error reply to `pending` (None: not shown).
pub(super) fn error_line(pending: &Pending, code: ErrorCode, arg: &str) -> String {
    use ErrorCode::*;
    match (pending, code) {
        (_, UnknownCommand | BadArguments) => INVALID_COMMAND.to_string(),
        (_, BadText) => BAD_TEXT.to_string(),
        (_, TooLong) => too_long(arg),
        (_, RateLimited) => RATE_LIMITED.to_string(),
        (_, StoreUnavailable) => STORE_UNAVAILABLE.to_string(),
        (_, NoSuchUser) => INVALID_USER.to_string(),
        (Pending::Message, SelfTarget) => MESSAGE_SELF.to_string(),
        (Pending::Block, SelfTarget) => BLOCK_SELF.to_string(),
        (Pending::Unblock, SelfTarget) => UNBLOCK_SELF.to_string(),
        (Pending::Private(_), SelfTarget) => PRIVATE_SELF.to_string(),
        (Pending::Message, BlockedBy) => MESSAGE_BLOCKED.to_string(),
        (_, BlockedBy) => has_blocked_you(arg),
        (_, NotBlocked) => not_blocked(arg),
        (_, Offline) => offline(arg),
        (Pending::Private(user), NoPeer) => private_unreachable(user),
        (_, MailboxFull) => mailbox_full(arg),
        (_, other) => format!("Error. {}", other.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_text_is_shown_not_obeyed() {
        assert_eq!(visible("plain héllo 日本"), "plain héllo 日本");
        assert_eq!(visible("ok\r\x1b[Kyoda: hi"), "ok^M^[[Kyoda: hi");
        assert_eq!(visible("\x1b]0;pwned\x07"), "^[]0;pwned^G");
        assert_eq!(visible("a\tb\x7f\0"), "a^Ib^?^@");
        assert_eq!(visible("c1\u{9b}2J"), "c1\\u{9b}2J");
        assert_eq!(visible("x\u{202e}y\u{2028}z"), "x\\u{202e}y\\u{2028}z");
        assert_eq!(visible("\u{2067}i\u{2069}"), "\\u{2067}i\\u{2069}");
        // Right-to-left letters and harmless marks are text.
        assert_eq!(visible("שלום \u{200f}"), "שלום \u{200f}");
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            let shown = visible(&c.to_string()).into_owned();
            assert!(
                crate::protocol::frames::clean_text(&shown),
                "{c:?} shown as {shown:?}"
            );
        }
    }

    #[test]
    fn error_strings_depend_on_the_request() {
        assert_eq!(
            error_line(&Pending::Message, ErrorCode::SelfTarget, ""),
            "Error. Cannot message self"
        );
        assert_eq!(
            error_line(&Pending::Block, ErrorCode::SelfTarget, ""),
            "Error. Cannot block self"
        );
        assert_eq!(
            error_line(&Pending::Unblock, ErrorCode::SelfTarget, ""),
            "Error. Cannot unblock self"
        );
        assert_eq!(
            error_line(&Pending::Private("x".into()), ErrorCode::SelfTarget, ""),
            "Error. Cannot start private messaging with self"
        );
        assert_eq!(
            error_line(&Pending::Message, ErrorCode::BlockedBy, "bob"),
            "Your message could not be delivered as the recipient has blocked you"
        );
        assert_eq!(
            error_line(&Pending::Private("bob".into()), ErrorCode::BlockedBy, "bob"),
            "Error. bob has blocked you"
        );
        assert_eq!(
            error_line(&Pending::Unblock, ErrorCode::NotBlocked, "bob"),
            "Error. bob was not blocked"
        );
        assert_eq!(
            error_line(&Pending::Message, ErrorCode::NoSuchUser, "zed"),
            "Error. Invalid user"
        );
        assert_eq!(
            error_line(&Pending::Who, ErrorCode::BadArguments, ""),
            "Error. Invalid command"
        );
    }
}
