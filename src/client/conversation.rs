//! The conversation with the server, as a state machine with no I/O: lines the user
//! typed and lines the server sent come in; requests to send and [`Effect`]s (lines to
//! show, peers to connect or expect, the exit) come out. Unit tests drive it without a
//! terminal or a socket.
//!
//! The login is the classic dialogue: `USER` (the name is checked before any password
//! is asked), then `PASS`; an older server that does not know `USER` gets a one-shot
//! `LOGIN`. Each request expects one reply, in order; the queue of [`Pending`] requests
//! says what each reply answers, and a line is taken from the user only when no reply
//! that decides what happens next is outstanding.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use super::command::{self, Command};
use super::render::{self as r, Pending};
use crate::protocol::frames::{
    self, ErrorCode, PROTOCOL_VERSION, Push, Reply, Request, ServerFrame,
};

/// The server's liveness interval when its handshake does not say (natterd's default).
const DEFAULT_PING: Duration = Duration::from_secs(30);

/// What the conversation asks of the client around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// A line to show the user (escaped by the screen).
    Show(String),
    /// The session is over: exit with this status.
    Exit(u8),
    /// `startprivate` was answered: connect to `user` at `addr` and present `token`.
    ConnectPeer {
        user: String,
        addr: SocketAddr,
        token: String,
        /// The fingerprint of the certificate `user`'s client must present (empty: an
        /// older client: plain text).
        key: String,
    },
    /// The server introduced `user`: accept their hello with `token`, from a client
    /// presenting the certificate `key` (empty: an older client, plain text).
    Expect {
        user: String,
        token: String,
        key: String,
    },
    /// `private <to> <text>`: send over the private session.
    Private { to: String, text: String },
    /// `stopprivate <user>`: end the private session.
    StopPrivate { user: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stage {
    AskUser,
    /// `USER` sent: waiting to hear whether this account may log in.
    CheckingUser(String),
    AskPassword(String),
    LoggingIn(String),
    Active,
    LoggingOut,
}

pub(crate) struct Conversation {
    stage: Stage,
    pending: VecDeque<Pending>,
    /// How many of `pending` hold input back (all but `ACTIVE` notes): counted, not
    /// scanned, since thousands of notes may wait on a slow server.
    blocking: usize,
    /// The server does not know `USER`/`PASS` (an older natterd): log in with `LOGIN`.
    legacy_login: bool,
    env_password: Option<String>,
    peer_port: Option<u16>,
    /// The fingerprint of the certificate we present to peers (told at login).
    peer_key: String,
    me: String,
    last_msg_id: u64,
    ack_due: Option<u64>,
    /// The newest `*PING` not answered yet (a flood of pings gets one `PONG`).
    pong_due: Option<u64>,
    /// Names seen, for Tab completion.
    known_users: BTreeSet<String>,
    /// How long the server may stay silent (set from its `+HELLO`).
    silence: Option<Duration>,
    /// Requests to send.
    out: Vec<u8>,
    effects: Vec<Effect>,
    /// An exit was decided: nothing more is shown.
    done: bool,
}

impl Conversation {
    /// Starts the handshake (and, with `--user`, the username step at once).
    pub(super) fn new(
        user: Option<String>,
        password: Option<String>,
        peer_port: Option<u16>,
        peer_key: String,
    ) -> Self {
        let mut c = Conversation {
            stage: Stage::AskUser,
            pending: VecDeque::new(),
            blocking: 0,
            legacy_login: false,
            env_password: password,
            peer_port,
            peer_key,
            me: String::new(),
            last_msg_id: 0,
            ack_due: None,
            pong_due: None,
            known_users: BTreeSet::new(),
            silence: None,
            out: Vec::new(),
            effects: Vec::new(),
            done: false,
        };
        c.request(
            Request::Hello {
                version: PROTOCOL_VERSION,
            },
            Pending::Hello,
        );
        if let Some(u) = user {
            c.send_user(&u);
        }
        c
    }

    pub(super) fn stage(&self) -> &Stage {
        &self.stage
    }

    /// Who we are logged in as (empty before).
    pub(super) fn me(&self) -> &str {
        &self.me
    }

    /// Names seen so far (for completion).
    pub(super) fn known_users(&self) -> &BTreeSet<String> {
        &self.known_users
    }

    /// A peer we chat with privately is a known name too.
    pub(super) fn know(&mut self, user: &str) {
        self.known_users.insert(user.to_string());
    }

    /// How long the server may stay silent before it counts as gone; `None` until the
    /// handshake is answered.
    pub(super) fn silence_limit(&self) -> Option<Duration> {
        self.silence
    }

    /// Whether the next typed line can be taken now.
    pub(super) fn ready_for_line(&self) -> bool {
        match self.stage {
            Stage::AskUser | Stage::AskPassword(_) => {
                self.pending.iter().all(|p| *p == Pending::Hello)
            }
            // `ACTIVE` notes (for private commands and invalid ones) print nothing, so
            // they never hold input back: private chat keeps flowing even when the
            // server is slow or unreachable.
            Stage::Active => self.blocking == 0,
            Stage::CheckingUser(_) | Stage::LoggingIn(_) | Stage::LoggingOut => false,
        }
    }

    /// The prompt for the next line.
    pub(super) fn prompt(&self) -> &'static str {
        match self.stage {
            Stage::AskUser => r::USERNAME_PROMPT,
            Stage::AskPassword(_) => r::PASSWORD_PROMPT,
            Stage::Active => r::PROMPT,
            Stage::CheckingUser(_) | Stage::LoggingIn(_) | Stage::LoggingOut => "",
        }
    }

    /// Whether the line being typed is a password (not echoed, not kept).
    pub(super) fn secret(&self) -> bool {
        matches!(self.stage, Stage::AskPassword(_))
    }

    /// Requests to send to the server.
    pub(super) fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub(super) fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    fn show(&mut self, text: impl Into<String>) {
        self.effects.push(Effect::Show(text.into()));
    }

    fn exit(&mut self, code: u8) {
        self.effects.push(Effect::Exit(code));
        self.done = true;
    }

    fn request(&mut self, req: Request<'_>, pending: Pending) {
        req.encode(&mut self.out);
        self.blocking += usize::from(pending != Pending::Active);
        self.pending.push_back(pending);
    }

    /// The request the next reply answers.
    fn pop_pending(&mut self) -> Option<Pending> {
        let p = self.pending.pop_front()?;
        self.blocking -= usize::from(p != Pending::Active);
        Some(p)
    }

    // ---- what the user typed ------------------------------------------------------

    /// One line the user typed (taken only when [`Conversation::ready_for_line`]).
    pub(super) fn typed(&mut self, line: &str) {
        if self.done {
            return;
        }
        match self.stage.clone() {
            Stage::AskUser => self.send_user(line.trim()),
            Stage::AskPassword(user) => self.send_login(user, line.trim_end_matches('\r')),
            Stage::Active => self.command(line),
            Stage::CheckingUser(_) | Stage::LoggingIn(_) | Stage::LoggingOut => {}
        }
    }

    /// The password from the environment, once, when it is asked for.
    fn try_auto_login(&mut self) {
        if let Stage::AskPassword(user) = &self.stage
            && let Some(pw) = self.env_password.take()
        {
            let user = user.clone();
            self.send_login(user, &pw);
        }
    }

    /// The username step: the server says at once whether the account may log in.
    fn send_user(&mut self, name: &str) {
        if name.is_empty() || name.contains(char::is_whitespace) {
            // No account has such a name (the file separates fields by white space).
            return self.show(r::INVALID_USERNAME);
        }
        if self.legacy_login {
            self.stage = Stage::AskPassword(name.to_string());
            return self.try_auto_login();
        }
        self.request(Request::User { user: name }, Pending::User);
        self.stage = Stage::CheckingUser(name.to_string());
    }

    fn send_login(&mut self, user: String, password: &str) {
        if password.is_empty() || password.contains(char::is_whitespace) {
            // No account has such a password (the file separates fields by white space).
            return self.show(r::INVALID_PASSWORD);
        }
        let peer_port = self.peer_port;
        // A key only goes with a port (no port: no private sessions to secure).
        let key = if peer_port.is_some() {
            self.peer_key.clone()
        } else {
            String::new()
        };
        let peer_key = key.as_str();
        let req = if self.legacy_login {
            Request::Login {
                user: &user,
                password,
                peer_port,
                peer_key,
            }
        } else {
            Request::Pass {
                password,
                peer_port,
                peer_key,
            }
        };
        self.request(req, Pending::Login);
        self.stage = Stage::LoggingIn(user);
    }

    fn command(&mut self, line: &str) {
        match command::parse(line) {
            Command::Empty => {}
            Command::Invalid => {
                self.show(r::INVALID_COMMAND);
                self.request(Request::Active, Pending::Active);
            }
            Command::Message { to, text } => {
                self.request(Request::Msg { to, text }, Pending::Message)
            }
            Command::Broadcast { text } => {
                self.request(Request::Bcast { text }, Pending::Broadcast)
            }
            Command::WhoElse => self.request(Request::WhoElse, Pending::Who),
            Command::WhoElseSince { window } => {
                self.request(Request::WhoElseSince { window }, Pending::Who)
            }
            Command::Block { user } => self.request(Request::Block { user }, Pending::Block),
            Command::Unblock { user } => self.request(Request::Unblock { user }, Pending::Unblock),
            Command::Logout => {
                // The client waits a moment for `+BYE` (see `begin_logout`).
                self.begin_logout();
            }
            Command::StartPrivate { user } => self.request(
                Request::Private { user },
                Pending::Private(user.to_string()),
            ),
            Command::Private { to, text } => {
                self.effects.push(Effect::Private {
                    to: to.to_string(),
                    text: text.to_string(),
                });
                // The server is told a command was typed, never what was said.
                self.request(Request::Active, Pending::Active);
            }
            Command::StopPrivate { user } => {
                self.effects.push(Effect::StopPrivate {
                    user: user.to_string(),
                });
                self.request(Request::Active, Pending::Active);
            }
        }
    }

    /// `logout`, end of input, Ctrl-C or a signal: log out cleanly if logged in.
    /// Returns whether a `LOGOUT` is on its way (the caller waits a moment for `+BYE`).
    pub(super) fn begin_logout(&mut self) -> bool {
        match self.stage {
            Stage::Active => {
                self.request(Request::Logout, Pending::Logout);
                self.stage = Stage::LoggingOut;
                true
            }
            Stage::LoggingOut => true,
            _ => {
                self.exit(1);
                false
            }
        }
    }

    // ---- what the server sent -----------------------------------------------------

    /// One line from the server.
    pub(super) fn server_line(&mut self, line: &str) {
        if self.done {
            return;
        }
        match frames::parse_server_frame(line) {
            Ok(ServerFrame::Reply(reply)) => self.on_reply(reply),
            Ok(ServerFrame::Push(push)) => self.on_push(push),
            // A reply we cannot read still answers the oldest request: report it and
            // move on, so input never waits for a reply that will not come.
            Err(_) if line.starts_with(['+', '-']) => {
                log::debug!("unreadable reply from the server: {line:?}");
                if self.pop_pending().is_some() {
                    self.bad_reply();
                }
            }
            Err(_) => log::debug!("ignoring unreadable line from the server: {line:?}"),
        }
    }

    /// After a batch of server lines: one `ACK` for every message shown, one `PONG` for
    /// however many `*PING`s came.
    pub(super) fn end_of_batch(&mut self) {
        if let Some(id) = self.ack_due.take() {
            Request::Ack { id }.encode(&mut self.out);
        }
        if let Some(seq) = self.pong_due.take() {
            Request::Pong { seq }.encode(&mut self.out);
        }
    }

    /// The server closed the connection.
    pub(super) fn server_closed(&mut self) {
        if self.done {
            return;
        }
        if self.stage == Stage::LoggingOut {
            self.exit(0);
        } else {
            self.show(r::SERVER_LOST);
            self.exit(1);
        }
    }

    fn on_reply(&mut self, reply: Reply<'_>) {
        let Some(pending) = self.pop_pending() else {
            return;
        };
        match (pending, reply) {
            (Pending::Hello, Reply::Hello { ping, .. }) => {
                // The server pings a silent client every `ping` seconds, so two missed
                // intervals (and a little slack) mean it is gone.
                let ping = match ping {
                    0 => DEFAULT_PING,
                    s => Duration::from_secs(s.min(86_400)),
                };
                self.silence = Some(ping * 2 + ping.min(Duration::from_secs(5)));
            }
            (Pending::Hello, Reply::Error { code, arg }) => {
                self.show(format!(
                    "natter: the server speaks protocol {arg}, not {PROTOCOL_VERSION} ({})",
                    code.as_str()
                ));
                self.exit(1);
            }
            (Pending::User, Reply::User { .. }) => {
                if let Stage::CheckingUser(user) = &self.stage {
                    self.stage = Stage::AskPassword(user.clone());
                }
                self.try_auto_login();
            }
            (Pending::User | Pending::Login, Reply::Error { code, .. }) => self.login_failed(code),
            (Pending::Login, Reply::Welcome) => {
                if let Stage::LoggingIn(user) = &self.stage {
                    self.me = user.clone();
                }
                self.stage = Stage::Active;
                self.show(r::WELCOME);
            }
            (Pending::Broadcast, Reply::Bcast { blocked, .. }) => {
                if blocked > 0 {
                    self.show(r::BROADCAST_BLOCKED)
                }
            }
            (Pending::Who, Reply::Users(names)) => {
                for n in names {
                    self.known_users.insert(n.to_string());
                    self.show(n);
                }
            }
            (Pending::Block, Reply::Blocked { user }) => self.show(r::blocked(user)),
            (Pending::Unblock, Reply::Unblocked { user }) => self.show(r::unblocked(user)),
            (
                Pending::Private(user),
                Reply::Peer {
                    addr, token, key, ..
                },
            ) => self.effects.push(Effect::ConnectPeer {
                user,
                addr,
                token: token.to_string(),
                key: key.to_string(),
            }),
            (Pending::Logout, Reply::Bye) => self.exit(0),
            (Pending::Message, Reply::Sent { .. }) | (Pending::Active, Reply::Ok) => {}
            (p, Reply::Error { code, arg }) => self.show(r::error_line(&p, code, arg)),
            (p, other) => {
                log::debug!("reply {other:?} does not answer {p:?}");
                self.bad_reply();
            }
        }
    }

    /// A reply that does not answer the request it should: reported, never fatal once
    /// logged in; during the login dialogue there is no sensible way on.
    fn bad_reply(&mut self) {
        self.show(r::BAD_REPLY);
        if !matches!(self.stage, Stage::Active | Stage::LoggingOut) {
            self.exit(1);
        }
    }

    fn login_failed(&mut self, code: ErrorCode) {
        let user = match &self.stage {
            Stage::LoggingIn(u) | Stage::CheckingUser(u) => u.clone(),
            _ => String::new(),
        };
        match code {
            ErrorCode::NoSuchUser => {
                self.show(r::INVALID_USERNAME);
                self.stage = Stage::AskUser;
            }
            // An older server without the username step: ask the password, then `LOGIN`.
            ErrorCode::UnknownCommand if matches!(self.stage, Stage::CheckingUser(_)) => {
                self.legacy_login = true;
                self.stage = Stage::AskPassword(user);
                self.try_auto_login();
            }
            ErrorCode::BadPassword => {
                self.show(r::INVALID_PASSWORD);
                self.stage = Stage::AskPassword(user);
            }
            ErrorCode::LockedNow => {
                self.show(r::LOCKED_NOW);
                self.exit(1);
            }
            ErrorCode::Locked => {
                self.show(r::LOCKED);
                self.exit(1);
            }
            ErrorCode::AlreadyOnline => {
                self.show(r::ALREADY_ONLINE);
                self.exit(1);
            }
            // A cluster node that cannot reach its broker: the server hangs up.
            ErrorCode::StoreUnavailable => {
                self.show(r::LOGIN_UNAVAILABLE);
                self.exit(1);
            }
            // Too many logins waiting for the server's password check: try again.
            ErrorCode::RateLimited => {
                self.show(r::RATE_LIMITED);
                self.stage = Stage::AskPassword(user);
            }
            other => {
                self.show(format!("Error. Login failed ({})", other.as_str()));
                self.stage = Stage::AskUser;
            }
        }
    }

    fn on_push(&mut self, push: Push<'_>) {
        match push {
            Push::Msg { id, from, text } => {
                if id > self.last_msg_id {
                    self.last_msg_id = id;
                    self.known_users.insert(from.to_string());
                    self.show(r::chat_line(from, text));
                }
                self.ack_due = Some(self.last_msg_id);
            }
            Push::Bcast { from, text } => {
                self.known_users.insert(from.to_string());
                self.show(r::chat_line(from, text));
            }
            Push::Login(names) => {
                for n in names {
                    self.known_users.insert(n.to_string());
                    self.show(r::logged_in(n));
                }
            }
            Push::Logout(names) => {
                for n in names {
                    self.show(r::logged_out(n));
                }
            }
            Push::Ping { seq } => self.pong_due = Some(seq),
            Push::Expect { user, token, key } => self.effects.push(Effect::Expect {
                user: user.to_string(),
                token: token.to_string(),
                key: key.to_string(),
            }),
            Push::Timeout => {
                self.show(r::TIMED_OUT);
                self.exit(0);
            }
            Push::Bye { reason } => {
                self.show(r::bye(reason));
                self.exit(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A conversation past the handshake, and what it said so far.
    fn started(user: Option<&str>, pw: Option<&str>) -> Conversation {
        let mut c = Conversation::new(
            user.map(String::from),
            pw.map(String::from),
            Some(7777),
            String::new(),
        );
        c.server_line("+HELLO 1 natterd/0.2.0 30");
        c
    }

    fn sent(c: &mut Conversation) -> String {
        String::from_utf8(c.take_output()).expect("utf-8")
    }

    fn shown(c: &mut Conversation) -> Vec<Effect> {
        c.take_effects()
    }

    fn show(s: &str) -> Effect {
        Effect::Show(s.to_string())
    }

    #[test]
    fn the_login_table_in_the_classic_order() {
        let mut c = started(None, None);
        assert_eq!(sent(&mut c), "HELLO 1\n");
        assert_eq!(c.silence_limit(), Some(Duration::from_secs(65)));
        assert!(c.ready_for_line());
        assert_eq!(c.prompt(), "Username: ");
        // Unknown name: its error at once and the username again.
        c.typed("bob");
        assert_eq!(sent(&mut c), "USER bob\n");
        assert!(!c.ready_for_line());
        c.server_line("-NO_SUCH_USER bob");
        assert_eq!(shown(&mut c), [show(r::INVALID_USERNAME)]);
        assert_eq!(c.prompt(), "Username: ");
        c.typed("hans");
        c.server_line("+USER hans");
        assert_eq!((c.prompt(), c.secret()), ("Password: ", true));
        assert_eq!(sent(&mut c), "USER hans\n");
        // Two wrong passwords, then the right one.
        for _ in 0..2 {
            c.typed("nope");
            assert_eq!(sent(&mut c), "PASS nope 7777\n");
            c.server_line("-BAD_PASSWORD 2");
            assert_eq!(shown(&mut c), [show(r::INVALID_PASSWORD)]);
            assert_eq!(c.prompt(), "Password: ");
        }
        c.typed("falcon*solo");
        c.server_line("+WELCOME");
        c.server_line("*MSG 4 yoda while you were out");
        assert_eq!(
            shown(&mut c),
            [show(r::WELCOME), show("yoda: while you were out")]
        );
        assert_eq!((c.me(), c.prompt()), ("hans", "> "));
        c.end_of_batch();
        assert_eq!(sent(&mut c), "PASS falcon*solo 7777\nACK 4\n");
    }

    #[test]
    fn lockouts_and_duplicates_end_the_session() {
        for (reply, text) in [
            ("-LOCKED_NOW", r::LOCKED_NOW),
            ("-LOCKED", r::LOCKED),
            ("-ALREADY_ONLINE", r::ALREADY_ONLINE),
            ("-STORE_UNAVAILABLE", r::LOGIN_UNAVAILABLE),
        ] {
            let mut c = started(Some("vader"), None);
            c.server_line(reply);
            assert_eq!(shown(&mut c), [show(text), Effect::Exit(1)], "{reply}");
        }
    }

    #[test]
    fn user_and_password_from_the_command_line_skip_their_prompts() {
        let mut c = started(Some("yoda"), Some("wise@!man"));
        c.server_line("+USER yoda");
        assert_eq!(sent(&mut c), "HELLO 1\nUSER yoda\nPASS wise@!man 7777\n");
        // A wrong one asks on stdin.
        c.server_line("-BAD_PASSWORD 2");
        assert_eq!(c.prompt(), "Password: ");
    }

    #[test]
    fn an_older_server_without_the_username_step_gets_login() {
        let mut c = started(Some("hans"), Some("falcon*solo"));
        c.server_line("-UNKNOWN_COMMAND");
        assert_eq!(
            sent(&mut c),
            "HELLO 1\nUSER hans\nLOGIN hans falcon*solo 7777\n"
        );
    }

    fn active() -> Conversation {
        let mut c = started(Some("hans"), Some("pw"));
        c.server_line("+USER hans");
        c.server_line("+WELCOME");
        c.take_output();
        c.take_effects();
        c
    }

    #[test]
    fn commands_and_their_replies() {
        let mut c = active();
        c.typed("message yoda hi  there");
        assert_eq!(sent(&mut c), "MSG yoda hi  there\n");
        assert!(!c.ready_for_line(), "waits for the reply");
        c.server_line("-BLOCKED_BY yoda");
        assert_eq!(shown(&mut c), [show(r::MESSAGE_BLOCKED)]);
        c.typed("broadcast all");
        c.server_line("+BCAST 2 1");
        assert_eq!(shown(&mut c), [show(r::BROADCAST_BLOCKED)]);
        c.typed("whoelse");
        c.server_line("+USERS luke yoda");
        assert_eq!(shown(&mut c), [show("luke"), show("yoda")]);
        c.typed("dance");
        assert_eq!(shown(&mut c), [show(r::INVALID_COMMAND)]);
        assert!(c.ready_for_line(), "an ACTIVE note never holds input");
        c.typed("private yoda psst");
        assert_eq!(
            shown(&mut c),
            [Effect::Private {
                to: "yoda".into(),
                text: "psst".into()
            }]
        );
        assert_eq!(sent(&mut c), "BCAST all\nWHOELSE\nACTIVE\nACTIVE\n");
        c.typed("startprivate yoda");
        c.server_line("+OK");
        c.server_line("+OK");
        c.server_line("+PEER yoda 127.0.0.1 5555 tok");
        assert_eq!(
            shown(&mut c),
            [Effect::ConnectPeer {
                user: "yoda".into(),
                addr: "127.0.0.1:5555".parse().unwrap(),
                token: "tok".into(),
                key: String::new()
            }]
        );
        assert!(c.begin_logout());
        c.server_line("+BYE");
        assert_eq!(shown(&mut c), [Effect::Exit(0)]);
    }

    #[test]
    fn unreadable_or_mismatched_replies_are_reported_and_input_goes_on() {
        let mut c = active();
        c.typed("startprivate leia");
        c.server_line("+PEER leia 1.2.3.4 notaport tok");
        assert_eq!(shown(&mut c), [show(r::BAD_REPLY)]);
        assert!(c.ready_for_line());
        c.typed("whoelse");
        c.server_line("+OK");
        assert_eq!(shown(&mut c), [show(r::BAD_REPLY)]);
        assert!(c.ready_for_line());
    }

    #[test]
    fn pings_and_acks_are_coalesced_per_batch() {
        let mut c = active();
        for seq in 1..=1000 {
            c.server_line(&format!("*PING {seq}"));
        }
        c.server_line("*MSG 5 yoda a");
        c.server_line("*MSG 6 yoda b");
        c.server_line("*MSG 6 yoda b");
        c.end_of_batch();
        assert_eq!(sent(&mut c), "ACK 6\nPONG 1000\n");
        assert_eq!(shown(&mut c), [show("yoda: a"), show("yoda: b")]);
    }

    #[test]
    fn pushes_end_the_session_or_introduce_peers() {
        let mut c = active();
        c.server_line("*EXPECT leia t1");
        c.server_line("*TIMEOUT");
        assert_eq!(
            shown(&mut c),
            [
                Effect::Expect {
                    user: "leia".into(),
                    token: "t1".into(),
                    key: String::new()
                },
                show(r::TIMED_OUT),
                Effect::Exit(0)
            ]
        );
        let mut c = active();
        c.server_line("*BYE shutdown");
        assert_eq!(
            shown(&mut c),
            [show("The server is shutting down"), Effect::Exit(1)]
        );
        let mut c = active();
        c.server_closed();
        assert_eq!(shown(&mut c), [show(r::SERVER_LOST), Effect::Exit(1)]);
    }
}
