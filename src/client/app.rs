//! The client's event loop: one `mio::Poll` multiplexing stdin, the server link,
//! signals, the peer-to-peer listener and every peer connection, the way
//! `select.select` would.
//!
//! Input is consumed one line at a time and only when the client is ready for it: a
//! command that waits for the server's reply (or a private connection being set up)
//! holds the next line back, so a script piping commands sees the same sequence of
//! outputs a person typing would. Output is collected per iteration and written once.
//!
//! Peer-to-peer: the client listens on an OS-chosen port on the interface it uses to
//! reach the server and reports it at login. `startprivate` gets the target's address
//! and a one-time token from the server; the requester connects and sends
//! `PEERHELLO <me> <token>`; the target, told by the server to `*EXPECT` that user with
//! that token, answers `PEEROK <me>` and the session is open. Anything else on the peer
//! port is dropped without a word to the user.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::command::{self, COMMANDS, Command};
use super::editor::{Action, Editor, Key};
use super::render::{self as r, Pending};
use super::terminal::{self, RawMode};
use crate::net::{Step, read_step, write_until_blocked};
use crate::protocol::frames::{
    self, ErrorCode, PROTOCOL_VERSION, Push, Reply, Request, ServerFrame,
};
use crate::protocol::peer::{PeerFrame, parse_peer_line};
use crate::protocol::{Flow, Frame, LineDecoder, OutBuf};

const STDIN: Token = Token(0);
const SERVER: Token = Token(1);
const SIGNALS: Token = Token(2);
const LISTENER: Token = Token(3);
const PEER_BASE: usize = 16;

/// Bytes read from one connection before the others (and the terminal) get a turn.
const READ_BUDGET: usize = 64 * 1024;
/// How long a private connection may take to open.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an inbound peer connection may stay silent before its hello.
const PEER_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a `PEERHELLO` with a token not (yet) announced by `*EXPECT` is held.
const HELLO_HOLD: Duration = Duration::from_secs(1);
/// How long the server's introduction token stays valid.
const TOKEN_TTL: Duration = Duration::from_secs(30);
/// Output queued for one peer before the session is dropped.
const PEER_MAX_QUEUED: usize = 1 << 20;
/// Unauthenticated inbound peer connections held at once.
const MAX_PENDING_PEERS: usize = 32;
/// How long `logout` waits for the server's goodbye.
const LOGOUT_WAIT: Duration = Duration::from_secs(2);
/// The server's liveness interval when its handshake does not say (natterd's default).
const DEFAULT_PING: Duration = Duration::from_secs(30);
/// Output queued for the server before the client gives up on it: a server that
/// floods us (`*PING`s, say) but never reads cannot make us hold more.
const SERVER_MAX_QUEUED: usize = 256 << 10;
/// Introduction tokens kept per introducing user, and in all.
const TOKENS_PER_USER: usize = 4;
const TOKENS_MAX: usize = 1024;

/// What the client needs to start.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub server: SocketAddr,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Leave every prompt out (scripts that want only output lines).
    pub quiet: bool,
    /// How long connecting and the server's answer to the handshake may take.
    pub connect_timeout: Duration,
}

/// Why the client could not start.
#[derive(Debug)]
pub enum ClientError {
    Connect(SocketAddr, io::Error),
    Setup(io::Error),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(addr, e) => write!(f, "cannot connect to {addr}: {e}"),
            ClientError::Setup(e) => write!(f, "cannot set up: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A line-framed TCP connection: the server link and every peer link use it.
struct Link {
    stream: TcpStream,
    decoder: LineDecoder,
    out: OutBuf,
}

impl Link {
    fn new(stream: TcpStream) -> Link {
        Link {
            stream,
            decoder: LineDecoder::default(),
            out: OutBuf::default(),
        }
    }

    fn send(&mut self, req: &Request<'_>) {
        req.encode(self.out.tail());
    }

    fn send_raw(&mut self, line: &str) {
        let t = self.out.tail();
        t.extend_from_slice(line.as_bytes());
        t.push(b'\n');
    }

    /// Writes what the socket takes now; Err means the link is dead.
    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let n = write_until_blocked(&mut self.stream, self.out.pending())?;
            self.out.consume(n);
        }
        Ok(())
    }

    /// Reads what is available, up to `READ_BUDGET` bytes; returns the complete lines
    /// and whether the stream ended. `more` is set when the budget ran out before the
    /// socket did: the caller must come back (readiness is edge-triggered), and a
    /// peer that sends without pause cannot make us hold more than a budget's lines.
    fn read_lines(&mut self, buf: &mut [u8], more: &mut bool) -> (Vec<String>, bool) {
        let mut lines = Vec::new();
        let mut budget = READ_BUDGET;
        loop {
            if budget == 0 {
                *more = true;
                return (lines, false);
            }
            match read_step(&mut self.stream, buf) {
                Step::Done(n) => {
                    budget = budget.saturating_sub(n);
                    self.decoder.feed(&buf[..n], frames::MAX_LINE, |f| {
                        // An unreadable line becomes one no verb matches, so a handshake
                        // fails at once while an open session just ignores it.
                        lines.push(match f {
                            Frame::Line(l) => l.to_string(),
                            Frame::TooLong | Frame::BadUtf8 => "\u{0}".to_string(),
                        });
                        Flow::Continue
                    })
                }
                Step::WouldBlock => return (lines, false),
                Step::Closed | Step::Failed(_) => return (lines, true),
            }
        }
    }
}

enum PeerState {
    /// Outbound, TCP connect in progress.
    Connecting {
        user: String,
        token: String,
        deadline: Instant,
    },
    /// Outbound, hello sent, waiting for `PEEROK`.
    AwaitOk {
        user: String,
        deadline: Instant,
    },
    /// Inbound, waiting for `PEERHELLO`, or holding one (user, token) whose `*EXPECT`
    /// from the server has not been read yet: the server writes `+PEER` to the
    /// requester and `*EXPECT` to us at once, but we may see the peer's hello first.
    AwaitHello {
        deadline: Instant,
        hello: Option<(String, String)>,
    },
    Established {
        user: String,
    },
}

impl PeerState {
    /// When a connection still being set up gives up (an open session has no deadline).
    fn deadline(&self) -> Option<Instant> {
        match self {
            PeerState::Connecting { deadline, .. }
            | PeerState::AwaitOk { deadline, .. }
            | PeerState::AwaitHello { deadline, .. } => Some(*deadline),
            PeerState::Established { .. } => None,
        }
    }
}

/// A peer the server told us to expect (`*EXPECT`), by token.
struct Intro {
    user: String,
    expires: Instant,
    seq: u64,
}

struct Peer {
    link: Link,
    state: PeerState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    AskUser,
    /// `USER` sent: waiting to hear whether this account may log in.
    CheckingUser(String),
    AskPassword(String),
    LoggingIn(String),
    Active,
    LoggingOut,
}

/// One line of input, as read.
enum Typed {
    Line(String),
    /// Longer than the protocol's line limit (its bytes were discarded).
    TooLong,
    /// Not UTF-8.
    Garbled,
}

struct App {
    poll: Poll,
    interactive: bool,
    quiet: bool,
    /// The prompt for the next line of input has been printed (pipe mode).
    prompt_shown: bool,
    /// The server does not know `USER`/`PASS` (an older natterd): log in with `LOGIN`.
    legacy_login: bool,
    stdin_pollable: bool,
    stdin_eof: bool,
    stdin_decoder: LineDecoder,
    keys: anes::parser::Parser,
    editor: Editor,
    /// Lines typed or piped, waiting until the client is ready for them.
    input: VecDeque<Typed>,
    /// Text for stdout, written once per iteration.
    screen: String,
    /// Whether the prompt line must be redrawn at the end of the iteration.
    redraw: bool,
    server: Link,
    stage: Stage,
    pending: VecDeque<Pending>,
    /// How many of `pending` hold input back (all but `ACTIVE` notes): counted, not
    /// scanned, since thousands of notes may wait on a slow server.
    blocking: usize,
    env_password: Option<String>,
    me: String,
    last_msg_id: u64,
    ack_due: Option<u64>,
    /// The newest `*PING` not answered yet (a flood of pings gets one `PONG`).
    pong_due: Option<u64>,
    /// When the server last sent anything, and how long it may stay silent.
    server_rx: Instant,
    server_silence: Duration,
    known_users: BTreeSet<String>,
    listener: Option<TcpListener>,
    peers: Slab<Peer>,
    /// Established sessions by user.
    sessions: HashMap<String, usize>,
    /// Users whose session ended without `stopprivate`.
    gone: HashSet<String>,
    /// Tokens the server introduced: token -> (user, expiry). At most
    /// `TOKENS_PER_USER` per introduced user, so one user cannot crowd out the others.
    expected: HashMap<String, Intro>,
    /// Numbers introductions in arrival order (many arrive in the same instant).
    intro_seq: u64,
    /// The outbound private connection being set up (input waits for it).
    connecting: Option<usize>,
    logout_deadline: Option<Instant>,
    /// Connections whose read budget ran out: read again without waiting.
    read_again: Vec<Token>,
    exit: Option<u8>,
    buf: Box<[u8]>,
    /// Our peer-to-peer port, reported at login.
    peer_port: Option<u16>,
}

/// Connects, runs the session to its end, and returns the exit code.
pub fn run(cfg: ClientConfig) -> Result<u8, ClientError> {
    let std_stream = std::net::TcpStream::connect_timeout(&cfg.server, cfg.connect_timeout)
        .map_err(|e| ClientError::Connect(cfg.server, e))?;
    std_stream.set_nodelay(true).map_err(ClientError::Setup)?;
    std_stream
        .set_nonblocking(true)
        .map_err(ClientError::Setup)?;
    let local_ip = std_stream.local_addr().map_err(ClientError::Setup)?.ip();
    let mut stream = TcpStream::from_std(std_stream);

    let poll = Poll::new().map_err(ClientError::Setup)?;
    poll.registry()
        .register(&mut stream, SERVER, Interest::READABLE | Interest::WRITABLE)
        .map_err(ClientError::Setup)?;
    let stdin_fd = io::stdin().as_raw_fd();
    // A regular file (or /dev/null) cannot be polled: epoll refuses it, and it never blocks.
    let stdin_pollable = poll
        .registry()
        .register(&mut SourceFd(&stdin_fd), STDIN, Interest::READABLE)
        .is_ok();
    let mut signals = signal_hook_mio::v1_0::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(ClientError::Setup)?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(ClientError::Setup)?;
    // The peer port, on the interface that reaches the server.
    let mut listener = TcpListener::bind(SocketAddr::new(local_ip, 0)).ok();
    if let Some(l) = listener.as_mut()
        && poll
            .registry()
            .register(l, LISTENER, Interest::READABLE)
            .is_err()
    {
        listener = None;
    }
    let peer_port = listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());

    let interactive = terminal::interactive();
    let _raw = if interactive {
        RawMode::enable().ok()
    } else {
        None
    };
    let interactive = interactive && _raw.is_some();

    let mut server = Link::new(stream);
    server.send(&Request::Hello {
        version: PROTOCOL_VERSION,
    });
    let mut pending = VecDeque::from([Pending::Hello]);
    let stage = match &cfg.user {
        Some(u) => {
            server.send(&Request::User { user: u });
            pending.push_back(Pending::User);
            Stage::CheckingUser(u.clone())
        }
        None => Stage::AskUser,
    };
    let now = Instant::now();
    let mut app = App {
        poll,
        interactive,
        quiet: cfg.quiet,
        prompt_shown: false,
        legacy_login: false,
        stdin_pollable,
        stdin_eof: false,
        stdin_decoder: LineDecoder::default(),
        keys: anes::parser::Parser::default(),
        editor: Editor::default(),
        input: VecDeque::new(),
        screen: String::new(),
        redraw: true,
        server,
        stage,
        blocking: pending.len(),
        pending,
        env_password: cfg.password,
        me: String::new(),
        last_msg_id: 0,
        ack_due: None,
        pong_due: None,
        // Until the handshake is answered, the server gets the connect timeout.
        server_rx: now,
        server_silence: cfg.connect_timeout,
        known_users: BTreeSet::new(),
        listener,
        peers: Slab::new(),
        sessions: HashMap::new(),
        gone: HashSet::new(),
        expected: HashMap::new(),
        intro_seq: 0,
        connecting: None,
        logout_deadline: None,
        read_again: Vec::new(),
        exit: None,
        buf: vec![0u8; 64 * 1024].into_boxed_slice(),
        peer_port,
    };
    Ok(app.run(&mut signals))
}

impl App {
    fn run(&mut self, signals: &mut signal_hook_mio::v1_0::Signals) -> u8 {
        let mut events = Events::with_capacity(64);
        loop {
            self.process_input();
            self.flush_all();
            self.render();
            if let Some(code) = self.exit {
                if self.interactive {
                    self.screen.push_str("\r\x1b[K");
                    self.write_screen();
                }
                return code;
            }
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.line(&format!("natter: poll failed: {e}"));
                self.exit = Some(1);
                continue;
            }
            let now = Instant::now();
            if !self.stdin_pollable && self.wants_input() {
                self.read_stdin();
            }
            for token in std::mem::take(&mut self.read_again) {
                match token {
                    SERVER => self.read_server(now),
                    Token(t) if t >= PEER_BASE => self.peer_event(t - PEER_BASE, false, now),
                    _ => {}
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    STDIN => self.read_stdin(),
                    SERVER => self.read_server(now),
                    SIGNALS if signals.pending().next().is_some() => self.begin_logout(now),
                    LISTENER => self.accept_peers(now),
                    Token(t) if t >= PEER_BASE => {
                        self.peer_event(t - PEER_BASE, ev.is_writable(), now)
                    }
                    _ => {}
                }
            }
            self.check_deadlines(now);
        }
    }

    // ---- output -------------------------------------------------------------------

    /// Prints one line of output above the input line. Every line goes through here,
    /// and every character that could act on the terminal is shown escaped
    /// ([`r::visible`]): text from the server or a peer never reaches it raw.
    fn line(&mut self, text: &str) {
        if self.interactive {
            self.screen.push_str("\r\x1b[K");
            self.redraw = true;
        }
        self.screen.push_str(&r::visible(text));
        self.screen.push('\n');
    }

    fn prompt(&self) -> &'static str {
        if self.quiet {
            return "";
        }
        match self.stage {
            Stage::AskUser => r::USERNAME_PROMPT,
            Stage::AskPassword(_) => r::PASSWORD_PROMPT,
            Stage::Active => r::PROMPT,
            Stage::CheckingUser(_) | Stage::LoggingIn(_) | Stage::LoggingOut => "",
        }
    }

    /// On a pipe, prints the prompt for the next line of input once, as the classic
    /// client's `input()` does (on a terminal the editor draws it).
    fn show_prompt(&mut self) {
        if !self.interactive && !self.prompt_shown {
            self.prompt_shown = true;
            self.screen.push_str(self.prompt());
        }
    }

    fn render(&mut self) {
        if self.interactive && self.redraw && self.exit.is_none() {
            self.editor.secret = matches!(self.stage, Stage::AskPassword(_));
            let mut s = std::mem::take(&mut self.screen);
            self.editor.render(self.prompt(), &mut s);
            self.screen = s;
            self.redraw = false;
        }
        self.write_screen();
    }

    fn write_screen(&mut self) {
        if !self.screen.is_empty() {
            let mut out = io::stdout().lock();
            let _ = out.write_all(self.screen.as_bytes());
            let _ = out.flush();
            self.screen.clear();
        }
    }

    // ---- input --------------------------------------------------------------------

    fn wants_input(&self) -> bool {
        !self.stdin_eof && self.input.is_empty() && self.ready_for_line()
    }

    fn ready_for_line(&self) -> bool {
        match self.stage {
            Stage::AskUser | Stage::AskPassword(_) => {
                self.pending.iter().all(|p| *p == Pending::Hello)
            }
            Stage::CheckingUser(_) => false,
            // `ACTIVE` notes (for private commands and invalid ones) print nothing, so
            // they never hold input back: private chat keeps flowing even when the
            // server is slow or unreachable.
            Stage::Active => self.blocking == 0 && self.connecting.is_none(),
            Stage::LoggingIn(_) | Stage::LoggingOut => false,
        }
    }

    fn stdin_has_more(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let stdin = io::stdin();
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&stdin),
            PollFlags::POLLIN,
        )];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// Reads what stdin has without ever blocking on a pollable stdin (stdin is left in
    /// blocking mode so the shell gets it back unchanged; readiness is checked instead).
    fn read_stdin(&mut self) {
        let mut budget = 16;
        loop {
            let n = match nix::unistd::read(io::stdin(), &mut self.buf) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => 0,
            };
            if n == 0 {
                self.stdin_eof = true;
                if self.stdin_pollable {
                    let fd = io::stdin().as_raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                }
                return;
            }
            let data = self.buf[..n].to_vec();
            if self.interactive {
                self.keys.advance(&data, false);
                while let Some(seq) = self.keys.next() {
                    self.on_key(Key::from_anes(seq));
                }
            } else {
                let input = &mut self.input;
                self.stdin_decoder.feed(&data, frames::MAX_LINE, |f| {
                    input.push_back(match f {
                        Frame::Line(l) => Typed::Line(l.to_string()),
                        Frame::TooLong => Typed::TooLong,
                        Frame::BadUtf8 => Typed::Garbled,
                    });
                    Flow::Continue
                });
            }
            budget -= 1;
            if budget == 0 || !self.stdin_pollable || !self.stdin_has_more() {
                return;
            }
        }
    }

    fn on_key(&mut self, key: Key) {
        let known = &self.known_users;
        let me = &self.me;
        let complete = |first: bool, cmd: &str, _prefix: &str| -> Vec<String> {
            if first {
                COMMANDS.iter().map(|c| c.to_string()).collect()
            } else if command::takes_user(cmd) {
                known.iter().filter(|u| *u != me).cloned().collect()
            } else {
                Vec::new()
            }
        };
        match self.editor.key(key, &complete) {
            Action::None => {}
            Action::Redraw => self.redraw = true,
            Action::Submit(line) => {
                // Leave the finished line on screen (without the password) and move on.
                let shown = if self.editor.secret {
                    String::new()
                } else {
                    r::visible(&line).into_owned()
                };
                self.screen
                    .push_str(&format!("\r\x1b[K{}{}\n", self.prompt(), shown));
                self.redraw = true;
                self.input.push_back(if line.len() > frames::MAX_LINE {
                    Typed::TooLong
                } else {
                    Typed::Line(line)
                });
            }
            Action::Eof => self.stdin_eof = true,
            Action::Interrupt => {
                self.screen.push_str("\r\n");
                self.begin_logout(Instant::now());
            }
            Action::Candidates(c) => self.line(&c.join("  ")),
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
            self.line(r::INVALID_USERNAME);
            return;
        }
        if self.legacy_login {
            self.stage = Stage::AskPassword(name.to_string());
            self.try_auto_login();
            return;
        }
        self.request(Request::User { user: name }, Pending::User);
        self.stage = Stage::CheckingUser(name.to_string());
    }

    fn send_login(&mut self, user: String, password: &str) {
        if password.is_empty() || password.contains(char::is_whitespace) {
            // No account has such a password (the file separates fields by white space).
            self.line(r::INVALID_PASSWORD);
            return;
        }
        let peer_port = self.peer_port;
        let req = if self.legacy_login {
            Request::Login {
                user: &user,
                password,
                peer_port,
            }
        } else {
            Request::Pass {
                password,
                peer_port,
            }
        };
        self.request(req, Pending::Login);
        self.stage = Stage::LoggingIn(user);
        self.redraw = true;
    }

    fn process_input(&mut self) {
        while self.ready_for_line() && self.exit.is_none() {
            // The classic client prints the prompt before reading each line (and so
            // before it finds the end of the input).
            self.show_prompt();
            if self.input.is_empty() {
                if self.stdin_eof {
                    self.begin_logout(Instant::now());
                }
                return;
            }
            let Some(typed) = self.input.pop_front() else {
                return;
            };
            self.prompt_shown = false;
            self.redraw = true;
            let line = match typed {
                Typed::Line(l) => l,
                Typed::TooLong => {
                    self.line(&r::too_long(&frames::MAX_LINE.to_string()));
                    continue;
                }
                Typed::Garbled => {
                    self.line(r::INVALID_COMMAND);
                    continue;
                }
            };
            match self.stage.clone() {
                Stage::AskUser => self.send_user(line.trim()),
                Stage::AskPassword(user) => self.send_login(user, line.trim_end_matches('\r')),
                Stage::Active => self.command(&line),
                Stage::CheckingUser(_) | Stage::LoggingIn(_) | Stage::LoggingOut => {}
            }
        }
    }

    /// The request the next reply answers.
    fn pop_pending(&mut self) -> Option<Pending> {
        let p = self.pending.pop_front()?;
        self.blocking -= usize::from(p != Pending::Active);
        Some(p)
    }

    fn request(&mut self, req: Request<'_>, pending: Pending) {
        self.server.send(&req);
        self.blocking += usize::from(pending != Pending::Active);
        self.pending.push_back(pending);
    }

    fn command(&mut self, line: &str) {
        let now = Instant::now();
        match command::parse(line) {
            Command::Empty => {}
            Command::Invalid => {
                self.line(r::INVALID_COMMAND);
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
            Command::Logout => self.begin_logout(now),
            Command::StartPrivate { user } => {
                self.request(
                    Request::Private { user },
                    Pending::Private(user.to_string()),
                );
            }
            Command::Private { to, text } => {
                match self.sessions.get(to).copied() {
                    // The peer escapes what it shows, but we send nothing a server would refuse.
                    Some(_) if !frames::clean_text(text) => self.line(r::BAD_TEXT),
                    Some(key) => {
                        let line = PeerFrame::Msg { text }.to_line();
                        self.peer_send(key, &line);
                    }
                    None if self.gone.contains(to) => self.line(&r::no_longer_online(to)),
                    None => self.line(&r::private_not_enabled(to)),
                }
                self.request(Request::Active, Pending::Active);
            }
            Command::StopPrivate { user } => {
                match self.sessions.remove(user) {
                    Some(key) => {
                        self.peer_send(key, &PeerFrame::Stop.to_line());
                        if let Some(p) = self.peers.get_mut(key) {
                            let _ = p.link.flush();
                        }
                        self.drop_peer(key);
                        self.line(&r::private_stopped(user));
                    }
                    None => self.line(&r::private_not_enabled(user)),
                }
                self.request(Request::Active, Pending::Active);
            }
        }
    }

    fn begin_logout(&mut self, now: Instant) {
        match self.stage {
            Stage::Active => {
                self.request(Request::Logout, Pending::Logout);
                self.stage = Stage::LoggingOut;
                self.logout_deadline = Some(now + LOGOUT_WAIT);
                self.redraw = true;
            }
            Stage::LoggingOut => {}
            _ => self.exit = Some(1),
        }
    }

    // ---- server -------------------------------------------------------------------

    fn read_server(&mut self, now: Instant) {
        let mut more = false;
        let (lines, closed) = self.server.read_lines(&mut self.buf, &mut more);
        if more {
            self.read_again.push(SERVER);
        }
        if !lines.is_empty() {
            self.server_rx = now;
        }
        for l in &lines {
            match frames::parse_server_frame(l) {
                Ok(ServerFrame::Reply(reply)) => self.on_reply(reply, now),
                Ok(ServerFrame::Push(push)) => self.on_push(push, now),
                // A reply we cannot read still answers the oldest request: report it
                // and move on, so input never waits for a reply that will not come.
                Err(_) if l.starts_with(['+', '-']) => {
                    log::debug!("unreadable reply from the server: {l:?}");
                    if self.pop_pending().is_some() {
                        self.bad_reply();
                    }
                }
                Err(_) => log::debug!("ignoring unreadable line from the server: {l:?}"),
            }
            if self.exit.is_some() {
                return;
            }
        }
        if let Some(id) = self.ack_due.take() {
            self.server.send(&Request::Ack { id });
        }
        if let Some(seq) = self.pong_due.take() {
            self.server.send(&Request::Pong { seq });
        }
        if closed && self.exit.is_none() {
            if self.stage == Stage::LoggingOut {
                self.exit = Some(0);
            } else {
                self.line(r::SERVER_LOST);
                self.exit = Some(1);
            }
        }
    }

    fn on_reply(&mut self, reply: Reply<'_>, now: Instant) {
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
                self.server_silence = ping * 2 + ping.min(Duration::from_secs(5));
            }
            (Pending::User, Reply::User { .. }) => {
                if let Stage::CheckingUser(user) = &self.stage {
                    self.stage = Stage::AskPassword(user.clone());
                }
                self.redraw = true;
                self.try_auto_login();
            }
            (Pending::User, Reply::Error { code, .. }) => self.login_failed(code),
            (Pending::Hello, Reply::Error { code, arg }) => {
                self.line(&format!(
                    "natter: the server speaks protocol {arg}, not {PROTOCOL_VERSION} ({})",
                    code.as_str()
                ));
                self.exit = Some(1);
            }
            (Pending::Login, Reply::Welcome) => {
                if let Stage::LoggingIn(user) = &self.stage {
                    self.me = user.clone();
                }
                self.stage = Stage::Active;
                self.redraw = true;
                self.line(r::WELCOME);
            }
            (Pending::Login, Reply::Error { code, .. }) => self.login_failed(code),
            (Pending::Broadcast, Reply::Bcast { blocked, .. }) => {
                if blocked > 0 {
                    self.line(r::BROADCAST_BLOCKED)
                }
            }
            (Pending::Who, Reply::Users(names)) => {
                for n in names {
                    self.known_users.insert(n.to_string());
                    self.line(n);
                }
            }
            (Pending::Block, Reply::Blocked { user }) => self.line(&r::blocked(user)),
            (Pending::Unblock, Reply::Unblocked { user }) => self.line(&r::unblocked(user)),
            (Pending::Private(user), Reply::Peer { addr, token, .. }) => {
                self.connect_peer(user, addr, token, now)
            }
            (Pending::Logout, Reply::Bye) => self.exit = Some(0),
            (Pending::Message, Reply::Sent { .. }) | (Pending::Active, Reply::Ok) => {}
            (p, Reply::Error { code, arg }) => {
                let text = r::error_line(&p, code, arg);
                self.line(&text);
            }
            (p, other) => {
                log::debug!("reply {other:?} does not answer {p:?}");
                self.bad_reply();
            }
        }
    }

    /// A reply that does not answer the request it should: reported, never fatal
    /// once logged in; during the login dialogue there is no sensible way on.
    fn bad_reply(&mut self) {
        self.line(r::BAD_REPLY);
        match self.stage {
            Stage::Active | Stage::LoggingOut => {}
            _ => self.exit = Some(1),
        }
    }

    fn login_failed(&mut self, code: ErrorCode) {
        let user = match &self.stage {
            Stage::LoggingIn(u) | Stage::CheckingUser(u) => u.clone(),
            _ => String::new(),
        };
        match code {
            ErrorCode::NoSuchUser => {
                self.line(r::INVALID_USERNAME);
                self.stage = Stage::AskUser;
            }
            // An older server without the username step: ask the password, then `LOGIN`.
            ErrorCode::UnknownCommand if matches!(self.stage, Stage::CheckingUser(_)) => {
                self.legacy_login = true;
                self.stage = Stage::AskPassword(user);
                self.try_auto_login();
            }
            ErrorCode::BadPassword => {
                self.line(r::INVALID_PASSWORD);
                self.stage = Stage::AskPassword(user);
            }
            ErrorCode::LockedNow => {
                self.line(r::LOCKED_NOW);
                self.exit = Some(1);
            }
            ErrorCode::Locked => {
                self.line(r::LOCKED);
                self.exit = Some(1);
            }
            ErrorCode::AlreadyOnline => {
                self.line(r::ALREADY_ONLINE);
                self.exit = Some(1);
            }
            // Too many logins waiting for the server's password check: try again.
            ErrorCode::RateLimited => {
                self.line(r::RATE_LIMITED);
                self.stage = Stage::AskPassword(user);
            }
            other => {
                self.line(&format!("Error. Login failed ({})", other.as_str()));
                self.stage = Stage::AskUser;
            }
        }
        self.redraw = true;
    }

    fn on_push(&mut self, push: Push<'_>, now: Instant) {
        match push {
            Push::Msg { id, from, text } => {
                if id > self.last_msg_id {
                    self.last_msg_id = id;
                    self.known_users.insert(from.to_string());
                    self.line(&r::chat_line(from, text));
                }
                self.ack_due = Some(self.last_msg_id);
            }
            Push::Bcast { from, text } => {
                self.known_users.insert(from.to_string());
                self.line(&r::chat_line(from, text));
            }
            Push::Login(names) => {
                for n in names {
                    self.known_users.insert(n.to_string());
                    self.line(&r::logged_in(n));
                }
            }
            Push::Logout(names) => {
                for n in names {
                    self.line(&r::logged_out(n));
                }
            }
            Push::Ping { seq } => self.pong_due = Some(seq),
            Push::Expect { user, token } => {
                self.expect_token(user, token, now);
                // A peer may have said hello before this reached us.
                let waiting: Vec<usize> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| {
                        matches!(p.state, PeerState::AwaitHello { hello: Some(_), .. })
                    })
                    .map(|(k, _)| k)
                    .collect();
                for key in waiting {
                    self.check_hello(key);
                }
            }
            Push::Timeout => {
                self.line(r::TIMED_OUT);
                self.exit = Some(0);
            }
            Push::Bye { reason } => {
                self.line(&r::bye(reason));
                self.exit = Some(1);
            }
        }
    }

    // ---- peers --------------------------------------------------------------------

    /// Remembers an introduction. Each introducing user keeps at most
    /// `TOKENS_PER_USER` tokens (its oldest goes first), so a user who asks for
    /// introductions in a loop only ever displaces its own.
    fn expect_token(&mut self, user: &str, token: &str, now: Instant) {
        self.expected.retain(|_, i| i.expires > now);
        let oldest = |e: &HashMap<String, Intro>, only: Option<&str>| {
            e.iter()
                .filter(|(_, i)| only.is_none_or(|o| o == i.user))
                .min_by_key(|(_, i)| i.seq)
                .map(|(t, _)| t.clone())
        };
        let mine = self.expected.values().filter(|i| i.user == user).count();
        let evict = if mine >= TOKENS_PER_USER {
            oldest(&self.expected, Some(user))
        } else if self.expected.len() >= TOKENS_MAX {
            oldest(&self.expected, None)
        } else {
            None
        };
        if let Some(t) = evict {
            self.expected.remove(&t);
        }
        self.intro_seq += 1;
        let intro = Intro {
            user: user.to_string(),
            expires: now + TOKEN_TTL,
            seq: self.intro_seq,
        };
        self.expected.insert(token.to_string(), intro);
    }

    /// Registers a peer connection in the slab and the poll; None if registration failed.
    fn add_peer(&mut self, mut stream: TcpStream, state: PeerState) -> Option<usize> {
        let _ = stream.set_nodelay(true);
        let key = self.peers.vacant_key();
        self.poll
            .registry()
            .register(
                &mut stream,
                Token(PEER_BASE + key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .ok()?;
        Some(self.peers.insert(Peer {
            link: Link::new(stream),
            state,
        }))
    }

    fn connect_peer(&mut self, user: String, addr: SocketAddr, token: &str, now: Instant) {
        let Ok(stream) = TcpStream::connect(addr) else {
            return self.line(&r::private_unreachable(&user));
        };
        let deadline = now + PEER_CONNECT_TIMEOUT;
        let state = PeerState::Connecting {
            user: user.clone(),
            token: token.to_string(),
            deadline,
        };
        match self.add_peer(stream, state) {
            Some(key) => self.connecting = Some(key),
            None => self.line(&r::private_unreachable(&user)),
        }
    }

    fn accept_peers(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, _)) => {
                    // Full of connections that have not said hello: the oldest goes
                    // (idle ones before ones holding a hello), so strangers who connect
                    // and say nothing cannot lock out the peer the server introduces.
                    let waiting: Vec<(bool, Instant, usize)> = self
                        .peers
                        .iter()
                        .filter_map(|(k, p)| match &p.state {
                            PeerState::AwaitHello { deadline, hello } => {
                                Some((hello.is_some(), *deadline, k))
                            }
                            _ => None,
                        })
                        .collect();
                    if waiting.len() >= MAX_PENDING_PEERS
                        && let Some(&(_, _, k)) = waiting.iter().min()
                    {
                        self.drop_peer(k);
                    }
                    let deadline = now + PEER_HELLO_TIMEOUT;
                    let hello = None;
                    let _ = self.add_peer(stream, PeerState::AwaitHello { deadline, hello });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    fn peer_send(&mut self, key: usize, line: &str) {
        if let Some(p) = self.peers.get_mut(key) {
            p.link.send_raw(line);
            if p.link.out.len() > PEER_MAX_QUEUED {
                self.peer_lost(key);
            }
        }
    }

    /// Closes a peer connection without telling the user anything.
    fn drop_peer(&mut self, key: usize) {
        if let Some(mut p) = self.peers.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut p.link.stream);
            if let PeerState::Established { user } = &p.state
                && self.sessions.get(user) == Some(&key)
            {
                self.sessions.remove(user);
            }
        }
        if self.connecting == Some(key) {
            self.connecting = None;
        }
    }

    /// A peer connection failed or ended without `stopprivate`.
    fn peer_lost(&mut self, key: usize) {
        let Some(p) = self.peers.get(key) else { return };
        match &p.state {
            PeerState::Connecting { user, .. } | PeerState::AwaitOk { user, .. } => {
                let user = user.clone();
                self.line(&r::private_unreachable(&user));
            }
            PeerState::Established { user } => {
                if self.sessions.get(user) == Some(&key) {
                    self.gone.insert(user.clone());
                }
            }
            PeerState::AwaitHello { .. } => {}
        }
        self.drop_peer(key);
    }

    fn peer_event(&mut self, key: usize, writable: bool, now: Instant) {
        let Some(p) = self.peers.get_mut(key) else {
            return;
        };
        if let PeerState::Connecting { user, token, .. } = &p.state {
            if !writable {
                return;
            }
            // A non-blocking connect is done only when writable, with no pending error
            // and a known peer address.
            match (p.link.stream.take_error(), p.link.stream.peer_addr()) {
                (Ok(None), Ok(_)) => {
                    let hello = PeerFrame::Hello {
                        user: &self.me,
                        token,
                    }
                    .to_line();
                    p.state = PeerState::AwaitOk {
                        user: user.clone(),
                        deadline: now + PEER_CONNECT_TIMEOUT,
                    };
                    p.link.send_raw(&hello);
                }
                (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => return,
                _ => return self.peer_lost(key),
            }
        }
        let mut more = false;
        let (lines, closed) = match self.peers.get_mut(key) {
            Some(p) => p.link.read_lines(&mut self.buf, &mut more),
            None => return,
        };
        if more {
            self.read_again.push(Token(PEER_BASE + key));
        }
        for l in lines {
            self.peer_line(key, &l);
            if !self.peers.contains(key) {
                return;
            }
        }
        if closed {
            self.peer_lost(key);
        }
    }

    fn peer_line(&mut self, key: usize, line: &str) {
        let Some(p) = self.peers.get_mut(key) else {
            return;
        };
        let frame = parse_peer_line(line);
        match &mut p.state {
            PeerState::AwaitHello { hello, deadline } => {
                // One hello, and nothing more before we answer it.
                let (Some(PeerFrame::Hello { user, token }), None) = (frame, &hello) else {
                    return self.drop_peer(key);
                };
                *hello = Some((user.to_string(), token.to_string()));
                // The server's `*EXPECT` is at most a moment behind: a hello with a
                // token we were never given is dropped soon, not at the full deadline.
                *deadline = (*deadline).min(Instant::now() + HELLO_HOLD);
                self.check_hello(key);
            }
            PeerState::AwaitOk { user, .. } => {
                if frame == Some(PeerFrame::Ok { user }) {
                    let user = user.clone();
                    p.state = PeerState::Established { user: user.clone() };
                    self.connecting = None;
                    self.open_session(user.clone(), key);
                    self.line(&r::private_started(&user));
                } else {
                    self.peer_lost(key);
                }
            }
            PeerState::Established { user } => match frame {
                Some(PeerFrame::Msg { text }) => {
                    let text = r::private_line(user, text);
                    self.line(&text);
                }
                Some(PeerFrame::Stop) => {
                    let user = user.clone();
                    self.line(&r::peer_stopped(&user));
                    self.drop_peer(key);
                }
                _ => {}
            },
            PeerState::Connecting { .. } => {}
        }
    }

    /// Accepts an inbound peer's held `PEERHELLO` if the server told us to expect that
    /// user with that token; a known token with another name is a forgery (dropped);
    /// an unknown token waits for an `*EXPECT` until the hello deadline.
    fn check_hello(&mut self, key: usize) {
        let Some(PeerState::AwaitHello {
            hello: Some((name, token)),
            ..
        }) = self.peers.get(key).map(|p| &p.state)
        else {
            return;
        };
        let verdict = self
            .expected
            .get(token)
            .filter(|i| i.expires > Instant::now())
            .map(|i| i.user == *name);
        match verdict {
            None => {}
            Some(false) => self.drop_peer(key),
            Some(true) => {
                let (name, token) = (name.clone(), token.clone());
                self.expected.remove(&token);
                let ok = PeerFrame::Ok { user: &self.me }.to_line();
                if let Some(p) = self.peers.get_mut(key) {
                    p.state = PeerState::Established { user: name.clone() };
                    p.link.send_raw(&ok);
                }
                self.open_session(name, key);
            }
        }
    }

    fn open_session(&mut self, user: String, key: usize) {
        self.gone.remove(&user);
        self.known_users.insert(user.clone());
        if let Some(old) = self.sessions.insert(user, key)
            && old != key
        {
            self.drop_peer(old);
        }
    }

    // ---- loop plumbing -----------------------------------------------------------

    fn flush_all(&mut self) {
        if self.server.out.len() > SERVER_MAX_QUEUED && self.exit.is_none() {
            self.line(r::SERVER_NOT_READING);
            self.exit = Some(1);
            return;
        }
        if self.server.flush().is_err() && self.exit.is_none() {
            if self.stage == Stage::LoggingOut {
                self.exit = Some(0);
            } else {
                self.line(r::SERVER_LOST);
                self.exit = Some(1);
            }
        }
        let dead: Vec<usize> = self
            .peers
            .iter_mut()
            .filter_map(|(k, p)| {
                let connecting = matches!(p.state, PeerState::Connecting { .. });
                (!connecting && p.link.flush().is_err()).then_some(k)
            })
            .collect();
        for k in dead {
            self.peer_lost(k);
        }
    }

    fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.peers
            .iter()
            .filter_map(|(_, p)| p.state.deadline())
            .chain(self.logout_deadline)
            .chain(Some(self.server_rx + self.server_silence))
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.read_again.is_empty() || (!self.stdin_pollable && self.wants_input()) {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        self.deadlines()
            .min()
            .map(|t| t.saturating_duration_since(now))
    }

    fn check_deadlines(&mut self, now: Instant) {
        if self.logout_deadline.is_some_and(|t| t <= now) && self.exit.is_none() {
            self.exit = Some(0);
        }
        if self.server_rx + self.server_silence <= now && self.exit.is_none() {
            self.line(r::SERVER_TIMEOUT);
            self.exit = Some(1);
        }
        let late: Vec<usize> = self
            .peers
            .iter()
            .filter(|(_, p)| p.state.deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| k)
            .collect();
        for k in late {
            self.peer_lost(k);
        }
    }
}
