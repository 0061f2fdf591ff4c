//! The typed frames of the natter wire protocol and their text encoding.
//!
//! Every frame is one line of UTF-8 text. Client requests start with an upper-case verb;
//! server replies start with `+` (success) or `-` (error code), server pushes with `*`.
//! Fields are separated by one space; a free-text field (a message) is always last and
//! runs to the end of the line, spaces included. `docs/protocol.md` is the reference.

use std::net::SocketAddr;
use std::time::Duration;

use crate::units::parse_duration;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default and maximum length of one line, terminator excluded.
pub const MAX_LINE: usize = 8192;

/// A request from a client (or a response to a server push: `PONG`, `ACK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// `HELLO <version>`: the handshake, first on every connection.
    Hello {
        /// The protocol version the client speaks.
        version: u32,
    },
    /// One-shot login (scripts, the load generator).
    Login {
        /// The account name.
        user: &'a str,
        /// The password.
        password: &'a str,
        /// The TCP port the client accepts private connections on, if any.
        peer_port: Option<u16>,
        /// The fingerprint of the certificate the client presents to peers (empty:
        /// none; only with a peer port).
        peer_key: &'a str,
    },
    /// The classic dialogue's first step: is this username one that may log in?
    User {
        /// The account name to log in as.
        user: &'a str,
    },
    /// The dialogue's second step: the password for the username of the last `USER`.
    Pass {
        /// The password for the account of the last accepted `USER`.
        password: &'a str,
        /// The TCP port the client accepts private connections on, if any.
        peer_port: Option<u16>,
        /// The fingerprint of the certificate the client presents to peers (empty:
        /// none; only with a peer port).
        peer_key: &'a str,
    },
    /// `MSG <user> <text>`: a direct message.
    Msg {
        /// The recipient.
        to: &'a str,
        /// The message (one line, clean).
        text: &'a str,
    },
    /// `BCAST <text>`: to everyone online.
    Bcast {
        /// The message (one line, clean).
        text: &'a str,
    },
    /// `WHOELSE`: who else is online.
    WhoElse,
    /// `WHOELSESINCE <duration>`: who else was online recently.
    WhoElseSince {
        /// How far back to look.
        window: Duration,
    },
    /// `BLOCK <user>`.
    Block {
        /// The user to block.
        user: &'a str,
    },
    /// `UNBLOCK <user>`.
    Unblock {
        /// The user to unblock.
        user: &'a str,
    },
    /// `PRIVATE <user>`: ask for a peer introduction.
    Private {
        /// The user to chat with privately.
        user: &'a str,
    },
    /// `ACTIVE`: the user typed a command the server does not see (counts as activity).
    Active,
    /// `PING [<token>]`: answered `+PONG [<token>]`, any time.
    Ping {
        /// Echoed back in the reply (may be empty).
        token: &'a str,
    },
    /// `LOGOUT`.
    Logout,
    /// Answer to `*PING`; gets no reply.
    Pong {
        /// The sequence number of the `*PING` answered.
        seq: u64,
    },
    /// Delivery acknowledgement of every `*MSG` up to and including `id`; gets no reply.
    Ack {
        /// The newest message id shown.
        id: u64,
    },
}

impl Request<'_> {
    /// Whether the request is something a user typed (it resets the inactivity timer).
    pub fn is_user_activity(&self) -> bool {
        !matches!(
            self,
            Request::Hello { .. }
                | Request::Login { .. }
                | Request::User { .. }
                | Request::Pass { .. }
                | Request::Ping { .. }
                | Request::Pong { .. }
                | Request::Ack { .. }
        )
    }

    /// Whether the protocol answers this frame (responses to pushes get no reply).
    pub fn expects_reply(&self) -> bool {
        !matches!(self, Request::Pong { .. } | Request::Ack { .. })
    }

    /// Appends the wire form of the request, newline included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = match self {
            Request::Hello { version } => writeln!(out, "HELLO {version}"),
            Request::Login {
                user,
                password,
                peer_port,
                peer_key,
            } => {
                let _ = write!(out, "LOGIN {user} {password}");
                peer_fields(out, *peer_port, peer_key)
            }
            Request::User { user } => writeln!(out, "USER {user}"),
            Request::Pass {
                password,
                peer_port,
                peer_key,
            } => {
                let _ = write!(out, "PASS {password}");
                peer_fields(out, *peer_port, peer_key)
            }
            Request::Msg { to, text } => writeln!(out, "MSG {to} {text}"),
            Request::Bcast { text } => writeln!(out, "BCAST {text}"),
            Request::WhoElse => writeln!(out, "WHOELSE"),
            Request::WhoElseSince { window } => writeln!(out, "WHOELSESINCE {}", window.as_secs()),
            Request::Block { user } => writeln!(out, "BLOCK {user}"),
            Request::Unblock { user } => writeln!(out, "UNBLOCK {user}"),
            Request::Private { user } => writeln!(out, "PRIVATE {user}"),
            Request::Active => writeln!(out, "ACTIVE"),
            Request::Ping { token: "" } => writeln!(out, "PING"),
            Request::Ping { token } => writeln!(out, "PING {token}"),
            Request::Logout => writeln!(out, "LOGOUT"),
            Request::Pong { seq } => writeln!(out, "PONG {seq}"),
            Request::Ack { id } => writeln!(out, "ACK {id}"),
        };
    }
}

/// Appends ` <port> [<key>]` (if there is a port) and the newline.
fn peer_fields(out: &mut Vec<u8>, port: Option<u16>, key: &str) -> std::io::Result<()> {
    use std::io::Write;
    match (port, key) {
        (Some(p), "") => writeln!(out, " {p}"),
        (Some(p), k) => writeln!(out, " {p} {k}"),
        (None, _) => writeln!(out),
    }
}

/// Why a line is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The verb is not one of the protocol's.
    UnknownVerb,
    /// A known verb with missing, extra or malformed arguments.
    BadArguments,
    /// Message text with a character that could act on a terminal (see [`clean_text`]).
    BadText,
}

/// Splits off the first space-separated field.
fn field(s: &str) -> (&str, &str) {
    match s.find(' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

/// A user name on the wire: non-empty, no white space.
fn name(s: &str) -> Result<&str, RequestError> {
    if s.is_empty() || s.contains(char::is_whitespace) {
        Err(RequestError::BadArguments)
    } else {
        Ok(s)
    }
}

/// Free text: non-empty, not only white space, and clean (see [`clean_text`]).
fn text(s: &str) -> Result<&str, RequestError> {
    if s.trim().is_empty() {
        Err(RequestError::BadArguments)
    } else if !clean_text(s) {
        Err(RequestError::BadText)
    } else {
        Ok(s)
    }
}

/// Whether message text is free of characters that act on a terminal or on the layout
/// of a line instead of being shown: C0 controls (tab included), DEL, C1 controls, the
/// line and paragraph separators U+2028/U+2029, and the bidirectional embeddings,
/// overrides and isolates U+202A-U+202E and U+2066-U+2069 (which could make a line
/// read as if it came from someone else). Right-to-left letters need none of them and
/// pass, as do the harmless marks U+200E, U+200F and U+061C.
///
/// A byte scan of the UTF-8 (every rejected character has a fixed encoding), since it
/// runs on every message.
pub fn clean_text(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            0x00..=0x1f | 0x7f => return false,
            // U+0080-U+009F: C2 80-9F.
            0xc2 if matches!(b.get(i + 1), Some(0x80..=0x9f)) => return false,
            // U+2028-U+202E: E2 80 A8-AE; U+2066-U+2069: E2 81 A6-A9.
            0xe2 => match (b.get(i + 1), b.get(i + 2)) {
                (Some(0x80), Some(0xa8..=0xae)) | (Some(0x81), Some(0xa6..=0xa9)) => {
                    return false;
                }
                _ => {}
            },
            _ => {}
        }
        i += 1;
    }
    true
}

/// An optional certificate fingerprint as the last field: nothing, or up to 128
/// characters of letters, digits and colons (`SHA256:ab:cd:...`; the server keeps it
/// while the user is online, so it is bounded).
fn opt_key(s: &str) -> Result<&str, RequestError> {
    let ok = s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == ':');
    if ok {
        Ok(s)
    } else {
        Err(RequestError::BadArguments)
    }
}

/// An optional peer port as the last field.
fn opt_port(s: &str) -> Result<Option<u16>, RequestError> {
    if s.is_empty() {
        Ok(None)
    } else {
        number(s).map(Some)
    }
}

fn none(rest: &str) -> Result<(), RequestError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(RequestError::BadArguments)
    }
}

fn number<T: std::str::FromStr>(s: &str) -> Result<T, RequestError> {
    s.parse().map_err(|_| RequestError::BadArguments)
}

/// Parses one request line (terminator already removed).
pub fn parse_request(line: &str) -> Result<Request<'_>, RequestError> {
    use RequestError::BadArguments;
    let (verb, rest) = field(line);
    Ok(match verb {
        "MSG" => {
            let (to, msg) = field(rest);
            Request::Msg {
                to: name(to)?,
                text: text(msg)?,
            }
        }
        "BCAST" => Request::Bcast { text: text(rest)? },
        "ACK" => Request::Ack { id: number(rest)? },
        "PONG" => Request::Pong { seq: number(rest)? },
        "WHOELSE" => none(rest).map(|_| Request::WhoElse)?,
        "WHOELSESINCE" => Request::WhoElseSince {
            window: parse_duration(rest).map_err(|_| BadArguments)?,
        },
        "BLOCK" => Request::Block { user: name(rest)? },
        "UNBLOCK" => Request::Unblock { user: name(rest)? },
        "PRIVATE" => Request::Private { user: name(rest)? },
        "ACTIVE" => none(rest).map(|_| Request::Active)?,
        "PING" => Request::Ping {
            token: if rest.is_empty() { rest } else { name(rest)? },
        },
        "LOGOUT" => none(rest).map(|_| Request::Logout)?,
        "HELLO" => Request::Hello {
            version: number(rest)?,
        },
        "LOGIN" => {
            let (user, rest) = field(rest);
            let (password, rest) = field(rest);
            let (port, key) = field(rest);
            Request::Login {
                user: name(user)?,
                password: name(password)?,
                peer_port: opt_port(port)?,
                peer_key: opt_key(key)?,
            }
        }
        "USER" => Request::User { user: name(rest)? },
        "PASS" => {
            let (password, rest) = field(rest);
            let (port, key) = field(rest);
            Request::Pass {
                password: name(password)?,
                peer_port: opt_port(port)?,
                peer_key: opt_key(key)?,
            }
        }
        _ => return Err(RequestError::UnknownVerb),
    })
}

/// Machine-readable error codes carried by `-CODE` replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// `HELLO` with a version the server does not speak; the argument is the one it does.
    Version,
    /// A request other than `HELLO` before the handshake.
    HelloFirst,
    /// A chat request before `LOGIN` succeeded.
    NotLoggedIn,
    /// `LOGIN` on a connection that is already logged in.
    AlreadyLoggedIn,
    /// Unknown verb.
    UnknownCommand,
    /// Known verb, bad arguments.
    BadArguments,
    /// Message text with control characters (see [`clean_text`]).
    BadText,
    /// The line exceeded the maximum length (argument: the limit).
    TooLong,
    /// The line was not valid UTF-8.
    BadUtf8,
    /// No such user in the credentials (argument: the name).
    NoSuchUser,
    /// Wrong password; the argument is how many tries are left before the lockout.
    BadPassword,
    /// Wrong password for the last time: the account is now locked (connection closes).
    LockedNow,
    /// The account is locked (connection closes).
    Locked,
    /// The account is already logged in elsewhere (connection closes).
    AlreadyOnline,
    /// The target is the requester.
    SelfTarget,
    /// The target has blocked the requester (argument: the target).
    BlockedBy,
    /// `UNBLOCK` of someone who was not blocked (argument: the name).
    NotBlocked,
    /// The target is offline (argument: the name).
    Offline,
    /// The target's client accepts no private sessions (argument: the name).
    NoPeer,
    /// The recipient's offline mailbox is full (argument: the name).
    MailboxFull,
    /// The client is sending faster than the server's flood limit allows.
    RateLimited,
    /// The server cannot store messages right now (its disk is failing).
    StoreUnavailable,
}

impl ErrorCode {
    /// Every code, for parsing and tests.
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::Version,
        ErrorCode::HelloFirst,
        ErrorCode::NotLoggedIn,
        ErrorCode::AlreadyLoggedIn,
        ErrorCode::UnknownCommand,
        ErrorCode::BadArguments,
        ErrorCode::BadText,
        ErrorCode::TooLong,
        ErrorCode::BadUtf8,
        ErrorCode::NoSuchUser,
        ErrorCode::BadPassword,
        ErrorCode::LockedNow,
        ErrorCode::Locked,
        ErrorCode::AlreadyOnline,
        ErrorCode::SelfTarget,
        ErrorCode::BlockedBy,
        ErrorCode::NotBlocked,
        ErrorCode::Offline,
        ErrorCode::NoPeer,
        ErrorCode::MailboxFull,
        ErrorCode::RateLimited,
        ErrorCode::StoreUnavailable,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Version => "VERSION",
            ErrorCode::HelloFirst => "HELLO_FIRST",
            ErrorCode::NotLoggedIn => "NOT_LOGGED_IN",
            ErrorCode::AlreadyLoggedIn => "ALREADY_LOGGED_IN",
            ErrorCode::UnknownCommand => "UNKNOWN_COMMAND",
            ErrorCode::BadArguments => "BAD_ARGUMENTS",
            ErrorCode::BadText => "BAD_TEXT",
            ErrorCode::TooLong => "TOO_LONG",
            ErrorCode::BadUtf8 => "BAD_UTF8",
            ErrorCode::NoSuchUser => "NO_SUCH_USER",
            ErrorCode::BadPassword => "BAD_PASSWORD",
            ErrorCode::LockedNow => "LOCKED_NOW",
            ErrorCode::Locked => "LOCKED",
            ErrorCode::AlreadyOnline => "ALREADY_ONLINE",
            ErrorCode::SelfTarget => "SELF",
            ErrorCode::BlockedBy => "BLOCKED_BY",
            ErrorCode::NotBlocked => "NOT_BLOCKED",
            ErrorCode::Offline => "OFFLINE",
            ErrorCode::NoPeer => "NO_PEER",
            ErrorCode::MailboxFull => "MAILBOX_FULL",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::StoreUnavailable => "STORE_UNAVAILABLE",
        }
    }

    /// The code with this wire name, if any.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A server reply: exactly one per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    /// The handshake's answer; `ping` is the server's liveness interval in seconds
    /// (0: not told), so a client knows how long the server may stay silent.
    Hello {
        /// The protocol version the server speaks.
        version: u32,
        /// The server software and version (`natterd/0.1.0`).
        software: &'a str,
        /// How often (seconds) the server pings a silent connection; 0 if not told.
        ping: u64,
    },
    /// The username of a `USER` may log in: ask for its password.
    User {
        /// The account name that may log in.
        user: &'a str,
    },
    /// `+WELCOME`: logged in; stored messages follow as pushes.
    Welcome,
    /// The message reached an online recipient's queue (`stored: false`) or its mailbox.
    Sent {
        /// The recipient.
        to: &'a str,
        /// Whether the recipient was offline, so the message waits in their mailbox.
        stored: bool,
    },
    /// A broadcast reached `delivered` users; `blocked` online users had blocked the sender.
    Bcast {
        /// Users who got the broadcast.
        delivered: u32,
        /// Online users skipped because they blocked the sender.
        blocked: u32,
    },
    /// `+USERS [<user> ...]`: the answer to `WHOELSE`/`WHOELSESINCE`, sorted.
    Users(Vec<&'a str>),
    /// `+BLOCKED <user>`.
    Blocked {
        /// The user now blocked.
        user: &'a str,
    },
    /// `+UNBLOCKED <user>`.
    Unblocked {
        /// The user no longer blocked.
        user: &'a str,
    },
    /// Peer introduction: connect to `addr` and present `token`.
    Peer {
        /// The user introduced.
        user: &'a str,
        /// Where that user's client accepts private connections.
        addr: SocketAddr,
        /// The one-time token to present in `PEERHELLO`.
        token: &'a str,
        /// The fingerprint of the certificate that user's client will present (empty:
        /// an older client without one: the private connection is plain text).
        key: &'a str,
    },
    /// `+OK`: the answer to `ACTIVE`.
    Ok,
    /// `+PONG [<token>]`: the answer to `PING`.
    Pong {
        /// The token of the `PING`.
        token: &'a str,
    },
    /// `+BYE`: the answer to `LOGOUT`; the server closes next.
    Bye,
    /// `-CODE [arg]`: the request failed.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Its argument (a name, a limit), possibly empty.
        arg: &'a str,
    },
}

/// Why the server is closing a connection (`*BYE <reason>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByeReason {
    /// No successful `LOGIN` within the unauthenticated deadline.
    LoginTimeout,
    /// The output queued for the client passed the server's limit.
    SlowReader,
    /// No answer to a liveness `*PING`.
    NoPong,
    /// The server is shutting down.
    Shutdown,
    /// The account was removed from the credentials.
    Removed,
    /// Too many connections from the client's address.
    TooManyConnections,
    /// Too many new connections from the client's address in the last minute.
    ConnectingTooFast,
    /// Plain text from a non-local address: this server requires TLS.
    TlsRequired,
    /// Cluster mode: the other nodes logged this session out while its node was cut
    /// off from them.
    ClusterLost,
}

impl ByeReason {
    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ByeReason::LoginTimeout => "login-timeout",
            ByeReason::SlowReader => "slow-reader",
            ByeReason::NoPong => "no-pong",
            ByeReason::Shutdown => "shutdown",
            ByeReason::Removed => "removed",
            ByeReason::TooManyConnections => "too-many-connections",
            ByeReason::ConnectingTooFast => "connecting-too-fast",
            ByeReason::TlsRequired => "tls-required",
            ByeReason::ClusterLost => "cluster-lost",
        }
    }
}

/// A server push: sent whenever something happens, never as a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push<'a> {
    /// `*MSG <id> <from> <text>`: a direct message (live or stored).
    Msg {
        /// Its id, increasing per recipient: acknowledge it with `ACK`.
        id: u64,
        /// The sender.
        from: &'a str,
        /// The message.
        text: &'a str,
    },
    /// `*BCAST <from> <text>`: a broadcast.
    Bcast {
        /// The sender.
        from: &'a str,
        /// The message.
        text: &'a str,
    },
    /// `*LOGIN <user> ...`: users logged in.
    Login(Vec<&'a str>),
    /// `*LOGOUT <user> ...`: users logged out.
    Logout(Vec<&'a str>),
    /// `*PING <seq>`: liveness check; answer `PONG <seq>`.
    Ping {
        /// The sequence number to answer with.
        seq: u64,
    },
    /// `*EXPECT <user> <token>`: the server introduced `user` for a private session.
    Expect {
        /// The user who will connect.
        user: &'a str,
        /// The token they will present.
        token: &'a str,
        /// The fingerprint of the certificate they will present (empty: none).
        key: &'a str,
    },
    /// `*TIMEOUT`: logged out for inactivity; the server closes next.
    Timeout,
    /// `*BYE <reason>`: the server is closing the connection.
    Bye {
        /// Why (see `ByeReason`).
        reason: &'a str,
    },
}

/// Anything the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame<'a> {
    /// A reply (`+...` or `-...`): one per request.
    Reply(Reply<'a>),
    /// A push (`*...`).
    Push(Push<'a>),
}

/// Appends `-CODE [arg]\n`.
pub fn encode_error(out: &mut Vec<u8>, code: ErrorCode, arg: &str) {
    out.push(b'-');
    out.extend_from_slice(code.as_str().as_bytes());
    if !arg.is_empty() {
        out.push(b' ');
        out.extend_from_slice(arg.as_bytes());
    }
    out.push(b'\n');
}

/// Appends `*MSG <id> <from> <text>\n` without formatting machinery (hot path).
pub fn encode_msg(out: &mut Vec<u8>, id: u64, from: &str, text: &str) {
    out.extend_from_slice(b"*MSG ");
    push_u64(out, id);
    out.push(b' ');
    out.extend_from_slice(from.as_bytes());
    out.push(b' ');
    out.extend_from_slice(text.as_bytes());
    out.push(b'\n');
}

/// Appends the decimal digits of `n`.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `<prefix> <a> <b> ...\n`.
pub fn encode_list<'a>(out: &mut Vec<u8>, prefix: &str, names: impl IntoIterator<Item = &'a str>) {
    out.extend_from_slice(prefix.as_bytes());
    for n in names {
        out.push(b' ');
        out.extend_from_slice(n.as_bytes());
    }
    out.push(b'\n');
}

/// Appends `<head><arg>\n` without the formatting machinery (the hot replies).
fn push_line(out: &mut Vec<u8>, head: &[u8], arg: &str) {
    out.extend_from_slice(head);
    out.extend_from_slice(arg.as_bytes());
    out.push(b'\n');
}

impl Reply<'_> {
    /// Appends the wire form of the reply, newline included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // One reply per message sent: the two hottest frames skip `fmt`.
        match self {
            Reply::Sent { to, stored: false } => return push_line(out, b"+SENT ", to),
            Reply::Sent { to, stored: true } => return push_line(out, b"+STORED ", to),
            _ => {}
        }
        let _ = match self {
            Reply::Hello {
                version,
                software,
                ping: 0,
            } => writeln!(out, "+HELLO {version} {software}"),
            Reply::Hello {
                version,
                software,
                ping,
            } => writeln!(out, "+HELLO {version} {software} {ping}"),
            Reply::User { user } => writeln!(out, "+USER {user}"),
            Reply::Welcome => writeln!(out, "+WELCOME"),
            Reply::Sent { to, stored: false } => writeln!(out, "+SENT {to}"),
            Reply::Sent { to, stored: true } => writeln!(out, "+STORED {to}"),
            Reply::Bcast { delivered, blocked } => writeln!(out, "+BCAST {delivered} {blocked}"),
            Reply::Users(names) => {
                encode_list(out, "+USERS", names.iter().copied());
                Ok(())
            }
            Reply::Blocked { user } => writeln!(out, "+BLOCKED {user}"),
            Reply::Unblocked { user } => writeln!(out, "+UNBLOCKED {user}"),
            Reply::Peer {
                user,
                addr,
                token,
                key: "",
            } => writeln!(out, "+PEER {user} {} {} {token}", addr.ip(), addr.port()),
            Reply::Peer {
                user,
                addr,
                token,
                key,
            } => writeln!(
                out,
                "+PEER {user} {} {} {token} {key}",
                addr.ip(),
                addr.port()
            ),
            Reply::Ok => writeln!(out, "+OK"),
            Reply::Pong { token: "" } => writeln!(out, "+PONG"),
            Reply::Pong { token } => writeln!(out, "+PONG {token}"),
            Reply::Bye => writeln!(out, "+BYE"),
            Reply::Error { code, arg } => {
                encode_error(out, *code, arg);
                Ok(())
            }
        };
    }
}

impl Push<'_> {
    /// Appends the wire form of the push, newline included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = match self {
            Push::Msg { id, from, text } => {
                encode_msg(out, *id, from, text);
                Ok(())
            }
            Push::Bcast { from, text } => writeln!(out, "*BCAST {from} {text}"),
            Push::Login(names) => {
                encode_list(out, "*LOGIN", names.iter().copied());
                Ok(())
            }
            Push::Logout(names) => {
                encode_list(out, "*LOGOUT", names.iter().copied());
                Ok(())
            }
            Push::Ping { seq } => writeln!(out, "*PING {seq}"),
            Push::Expect {
                user,
                token,
                key: "",
            } => writeln!(out, "*EXPECT {user} {token}"),
            Push::Expect { user, token, key } => writeln!(out, "*EXPECT {user} {token} {key}"),
            Push::Timeout => writeln!(out, "*TIMEOUT"),
            Push::Bye { reason } => writeln!(out, "*BYE {reason}"),
        };
    }
}

/// Why a server line could not be understood (a client-side error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame;

fn names(rest: &str) -> Vec<&str> {
    rest.split(' ').filter(|s| !s.is_empty()).collect()
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, BadFrame> {
    s.parse().map_err(|_| BadFrame)
}

/// A word or nothing.
fn opt_word(s: &str) -> Result<&str, BadFrame> {
    if s.is_empty() { Ok(s) } else { word(s) }
}

fn word(s: &str) -> Result<&str, BadFrame> {
    if s.is_empty() || s.contains(' ') {
        Err(BadFrame)
    } else {
        Ok(s)
    }
}

/// Parses one line from the server.
pub fn parse_server_frame(line: &str) -> Result<ServerFrame<'_>, BadFrame> {
    let (head, rest) = field(line);
    let Some(kind) = head.chars().next() else {
        return Err(BadFrame);
    };
    // `kind` may be any character a (hostile) server sends, not only `+`/`*`/`-`.
    let verb = &head[kind.len_utf8()..];
    match kind {
        '+' => Ok(ServerFrame::Reply(match verb {
            "HELLO" => {
                let (v, rest) = field(rest);
                let (software, ping) = field(rest);
                Reply::Hello {
                    version: num(v)?,
                    software,
                    // Older servers send no interval; anything unreadable counts as none.
                    ping: ping.parse().unwrap_or(0),
                }
            }
            "USER" => Reply::User { user: word(rest)? },
            "WELCOME" => Reply::Welcome,
            "SENT" => Reply::Sent {
                to: word(rest)?,
                stored: false,
            },
            "STORED" => Reply::Sent {
                to: word(rest)?,
                stored: true,
            },
            "BCAST" => {
                let (d, b) = field(rest);
                Reply::Bcast {
                    delivered: num(d)?,
                    blocked: num(b)?,
                }
            }
            "USERS" => Reply::Users(names(rest)),
            "BLOCKED" => Reply::Blocked { user: word(rest)? },
            "UNBLOCKED" => Reply::Unblocked { user: word(rest)? },
            "PEER" => {
                let (user, rest) = field(rest);
                let (ip, rest) = field(rest);
                let (port, rest) = field(rest);
                let (token, key) = field(rest);
                let ip: std::net::IpAddr = num(ip)?;
                Reply::Peer {
                    user: word(user)?,
                    addr: SocketAddr::new(ip, num(port)?),
                    token: word(token)?,
                    key: opt_word(key)?,
                }
            }
            "OK" => Reply::Ok,
            "PONG" => Reply::Pong { token: rest },
            "BYE" => Reply::Bye,
            _ => return Err(BadFrame),
        })),
        '-' => {
            let code = ErrorCode::parse(verb).ok_or(BadFrame)?;
            Ok(ServerFrame::Reply(Reply::Error { code, arg: rest }))
        }
        '*' => Ok(ServerFrame::Push(match verb {
            "MSG" => {
                let (id, rest) = field(rest);
                let (from, text) = field(rest);
                Push::Msg {
                    id: num(id)?,
                    from: word(from)?,
                    text,
                }
            }
            "BCAST" => {
                let (from, text) = field(rest);
                Push::Bcast {
                    from: word(from)?,
                    text,
                }
            }
            "LOGIN" => Push::Login(names(rest)),
            "LOGOUT" => Push::Logout(names(rest)),
            "PING" => Push::Ping { seq: num(rest)? },
            "EXPECT" => {
                let (user, rest) = field(rest);
                let (token, key) = field(rest);
                Push::Expect {
                    user: word(user)?,
                    token: word(token)?,
                    key: opt_word(key)?,
                }
            }
            "TIMEOUT" => Push::Timeout,
            "BYE" => Push::Bye { reason: rest },
            _ => return Err(BadFrame),
        })),
        _ => Err(BadFrame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_request(r: Request<'_>) {
        let mut out = Vec::new();
        r.encode(&mut out);
        let line = std::str::from_utf8(&out).unwrap();
        let line = line.strip_suffix('\n').unwrap();
        assert_eq!(parse_request(line), Ok(r), "line {line:?}");
    }

    #[test]
    fn every_request_roundtrips() {
        for r in [
            Request::Hello { version: 1 },
            Request::Login {
                user: "alice",
                password: "s3cret",
                peer_port: None,
                peer_key: "",
            },
            Request::Login {
                user: "alice",
                password: "s3cret",
                peer_port: Some(5555),
                peer_key: "",
            },
            Request::Login {
                user: "alice",
                password: "s3cret",
                peer_port: Some(5555),
                peer_key: "SHA256:ab:cd",
            },
            Request::User { user: "alice" },
            Request::Pass {
                password: "s3cret",
                peer_port: None,
                peer_key: "",
            },
            Request::Pass {
                password: "s3cret",
                peer_port: Some(5555),
                peer_key: "",
            },
            Request::Pass {
                password: "s3cret",
                peer_port: Some(5555),
                peer_key: "SHA256:ab:cd",
            },
            Request::Msg {
                to: "bob",
                text: "hi  there, spaced  ",
            },
            Request::Bcast { text: "héllo" },
            Request::WhoElse,
            Request::WhoElseSince {
                window: Duration::from_secs(90),
            },
            Request::Block { user: "bob" },
            Request::Unblock { user: "bob" },
            Request::Private { user: "bob" },
            Request::Active,
            Request::Ping { token: "" },
            Request::Ping { token: "t1" },
            Request::Logout,
            Request::Pong { seq: 7 },
            Request::Ack { id: u64::MAX },
        ] {
            roundtrip_request(r);
        }
    }

    #[test]
    fn text_with_terminal_controls_is_refused() {
        for bad in [
            "ok\r\x1b[Kyoda: fake",
            "a\tb",
            "bell\x07",
            "del\x7f",
            "c1 \u{9b}2J",
            "nel\u{85}",
            "split\u{2028}line",
            "para\u{2029}",
            "rlo \u{202e}olleh",
            "lre\u{202a}",
            "rli\u{2067}x\u{2069}",
        ] {
            assert!(!clean_text(bad), "{bad:?}");
            assert_eq!(
                parse_request(&format!("MSG bob {bad}")),
                Err(RequestError::BadText)
            );
            assert_eq!(
                parse_request(&format!("BCAST {bad}")),
                Err(RequestError::BadText)
            );
        }
        for good in [
            "plain",
            "héllo wörld",
            "שלום עולם",
            "مرحبا",
            "日本語 ok",
            "mark\u{200f}x",
            "emoji 🎉",
            "\u{2027}\u{202f}\u{2065}\u{206a}",
        ] {
            assert!(clean_text(good), "{good:?}");
        }
    }

    #[test]
    fn request_errors() {
        assert_eq!(parse_request("FOO"), Err(RequestError::UnknownVerb));
        assert_eq!(parse_request("msg bob hi"), Err(RequestError::UnknownVerb));
        assert_eq!(parse_request(""), Err(RequestError::UnknownVerb));
        for bad in [
            "MSG",
            "MSG bob",
            "MSG bob ",
            "MSG bob    ",
            "BCAST",
            "BLOCK",
            "BLOCK a b",
            "WHOELSE x",
            "WHOELSESINCE",
            "WHOELSESINCE soon",
            "ACK x",
            "LOGIN a",
            "LOGIN a b c",
            "HELLO",
            "LOGOUT now",
        ] {
            assert_eq!(
                parse_request(bad),
                Err(RequestError::BadArguments),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_request("WHOELSESINCE 1h 30m"),
            Ok(Request::WhoElseSince {
                window: Duration::from_secs(5400)
            })
        );
    }

    fn roundtrip_server(f: ServerFrame<'_>) {
        let mut out = Vec::new();
        match &f {
            ServerFrame::Reply(r) => r.encode(&mut out),
            ServerFrame::Push(p) => p.encode(&mut out),
        }
        let line = std::str::from_utf8(&out).unwrap();
        let line = line.strip_suffix('\n').unwrap();
        assert_eq!(parse_server_frame(line), Ok(f), "line {line:?}");
    }

    #[test]
    fn every_reply_and_push_roundtrips() {
        let addr: SocketAddr = "10.1.2.3:4567".parse().unwrap();
        let mut frames = vec![
            ServerFrame::Reply(Reply::Hello {
                version: 1,
                software: "natterd/0.1.0",
                ping: 0,
            }),
            ServerFrame::Reply(Reply::Hello {
                version: 1,
                software: "natterd/0.1.0",
                ping: 30,
            }),
            ServerFrame::Reply(Reply::User { user: "bob" }),
            ServerFrame::Reply(Reply::Welcome),
            ServerFrame::Reply(Reply::Sent {
                to: "bob",
                stored: false,
            }),
            ServerFrame::Reply(Reply::Sent {
                to: "bob",
                stored: true,
            }),
            ServerFrame::Reply(Reply::Bcast {
                delivered: 3,
                blocked: 1,
            }),
            ServerFrame::Reply(Reply::Users(vec![])),
            ServerFrame::Reply(Reply::Users(vec!["a", "b"])),
            ServerFrame::Reply(Reply::Blocked { user: "bob" }),
            ServerFrame::Reply(Reply::Unblocked { user: "bob" }),
            ServerFrame::Reply(Reply::Peer {
                user: "bob",
                addr,
                token: "abc123",
                key: "",
            }),
            ServerFrame::Reply(Reply::Peer {
                user: "bob",
                addr,
                token: "abc123",
                key: "SHA256:01:ff",
            }),
            ServerFrame::Reply(Reply::Ok),
            ServerFrame::Reply(Reply::Pong { token: "" }),
            ServerFrame::Reply(Reply::Pong { token: "x" }),
            ServerFrame::Reply(Reply::Bye),
            ServerFrame::Push(Push::Msg {
                id: 9,
                from: "bob",
                text: " two  spaces ",
            }),
            ServerFrame::Push(Push::Bcast {
                from: "bob",
                text: "all",
            }),
            ServerFrame::Push(Push::Login(vec!["a"])),
            ServerFrame::Push(Push::Login(vec!["a", "b", "c"])),
            ServerFrame::Push(Push::Logout(vec!["a"])),
            ServerFrame::Push(Push::Ping { seq: 3 }),
            ServerFrame::Push(Push::Expect {
                user: "bob",
                token: "t",
                key: "",
            }),
            ServerFrame::Push(Push::Expect {
                user: "bob",
                token: "t",
                key: "SHA256:01:ff",
            }),
            ServerFrame::Push(Push::Timeout),
            ServerFrame::Push(Push::Bye { reason: "shutdown" }),
        ];
        for code in ErrorCode::ALL {
            frames.push(ServerFrame::Reply(Reply::Error { code, arg: "" }));
            frames.push(ServerFrame::Reply(Reply::Error { code, arg: "bob" }));
        }
        for f in frames {
            roundtrip_server(f);
        }
    }

    #[test]
    fn garbage_from_the_server_is_an_error_not_a_panic() {
        for bad in [
            "",
            "+",
            "-",
            "*",
            "?x",
            "+NOPE",
            "-NOPE",
            "*MSG x bob hi",
            "*MSG",
            "+PEER bob 1.2.3.4",
            "+PEER bob nope 1 t",
            // Regression (found by fuzzing): a multi-byte first character panicked.
            "\u{577}Dcd",
            "é",
            "*PING",
        ] {
            assert_eq!(parse_server_frame(bad), Err(BadFrame), "{bad:?}");
        }
    }

    #[test]
    fn push_u64_digits() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            let mut v = Vec::new();
            push_u64(&mut v, n);
            assert_eq!(String::from_utf8(v).unwrap(), n.to_string());
        }
    }
}
