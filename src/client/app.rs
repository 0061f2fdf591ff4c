//! The client's event loop: one `mio::Poll` multiplexing stdin, the server link,
//! signals, the peer-to-peer listener and every peer connection, the way
//! `select.select` would.
//!
//! The loop only moves bytes and time: the conversation with the server is the
//! sans-IO [`Conversation`] (typed lines and server lines in, requests and effects
//! out), private sessions are the [`Peers`] table, output is the [`Screen`].
//!
//! Input is consumed one line at a time and only when the client is ready for it: a
//! command that waits for the server's reply (or a private connection being set up)
//! holds the next line back, so a script piping commands sees the same sequence of
//! outputs a person typing would. Output is collected per iteration and written once.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::command::{self, COMMANDS};
use super::conversation::{Conversation, Effect, Stage};
use super::editor::{Action, Editor, Key};
use super::link::Link;
use super::peer_tls::PeerIdentity;
use super::peers::{PEER_BASE, Peers};
use super::render as r;
use super::screen::Screen;
use super::terminal::{self, RawMode};
use super::trust::{self, Verdict};
use crate::protocol::frames;
use crate::protocol::{Flow, Frame, LineDecoder};

const STDIN: Token = Token(0);
const SERVER: Token = Token(1);
const SIGNALS: Token = Token(2);
const LISTENER: Token = Token(3);

/// How long `logout` waits for the server's goodbye.
const LOGOUT_WAIT: Duration = Duration::from_secs(2);
/// Output queued for the server before the client gives up on it: a server that
/// floods us but never reads cannot make us hold more.
const SERVER_MAX_QUEUED: usize = 256 << 10;

/// What the client needs to start.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server's address.
    pub server: SocketAddr,
    /// Log in as this user (skips the username prompt).
    pub user: Option<String>,
    /// The password to answer the password prompt with, once (from `NATTER_PASSWORD`).
    pub password: Option<String>,
    /// Leave every prompt out (scripts that want only output lines).
    pub quiet: bool,
    /// How long connecting and the server's answer to the handshake may take.
    pub connect_timeout: Duration,
    /// Speak plain text to the server instead of TLS (an old server, loopback tests).
    pub plaintext: bool,
    /// Accept only this certificate fingerprint (`SHA256:ab:cd:...`).
    pub trust_fingerprint: Option<String>,
}

/// Why the client could not start.
#[derive(Debug)]
pub enum ClientError {
    /// The server could not be reached.
    Connect(SocketAddr, io::Error),
    /// A local resource (poll, signals, listener) could not be set up.
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

/// One line of input, as read.
enum Typed {
    Line(String),
    /// Longer than the protocol's line limit (its bytes were discarded).
    TooLong,
    /// Not UTF-8.
    Garbled,
}

/// stdin: raw reads, decoded into lines (pipe) or keys for the editor (terminal).
struct Input {
    pollable: bool,
    eof: bool,
    decoder: LineDecoder,
    keys: anes::parser::Parser,
    editor: Editor,
    /// Lines typed or piped, waiting until the client is ready for them.
    queue: VecDeque<Typed>,
}

struct App {
    poll: Poll,
    conv: Conversation,
    screen: Screen,
    input: Input,
    server: Link,
    peers: Peers,
    /// When the server last sent anything.
    server_rx: Instant,
    connect_timeout: Duration,
    /// How long `logout` still waits for `+BYE`.
    logout_deadline: Option<Instant>,
    /// The server link's read budget ran out: read it again without waiting.
    server_again: bool,
    exit: Option<u8>,
    buf: Box<[u8]>,
    /// What the TLS verifier decided, until it is reported.
    trust: Option<trust::VerdictSlot>,
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

    // Our certificate for private sessions: made afresh, announced at login.
    let identity = match PeerIdentity::generate() {
        Ok(id) => Some(id),
        Err(e) => {
            log::warn!("no certificate for private sessions (plain text only): {e}");
            None
        }
    };
    let peer_key = identity
        .as_ref()
        .map(|id| id.fingerprint.clone())
        .unwrap_or_default();
    let mut server = Link::new(stream);
    let mut trust = None;
    if !cfg.plaintext {
        let (tls, verdict) = trust::connect(cfg.server, cfg.trust_fingerprint.clone())
            .map_err(|e| ClientError::Setup(io::Error::other(e)))?;
        server = server.with_tls(tls);
        trust = Some(verdict);
    }
    let mut app = App {
        poll,
        conv: Conversation::new(cfg.user, cfg.password, peer_port, peer_key),
        screen: Screen::new(interactive, cfg.quiet),
        input: Input {
            pollable: stdin_pollable,
            eof: false,
            decoder: LineDecoder::default(),
            keys: anes::parser::Parser::default(),
            editor: Editor::default(),
            queue: VecDeque::new(),
        },
        server,
        peers: Peers::new(listener, identity),
        server_rx: Instant::now(),
        connect_timeout: cfg.connect_timeout,
        logout_deadline: None,
        server_again: false,
        exit: None,
        buf: vec![0u8; 64 * 1024].into_boxed_slice(),
        trust,
    };
    Ok(app.run(&mut signals))
}

impl App {
    fn run(&mut self, signals: &mut signal_hook_mio::v1_0::Signals) -> u8 {
        let mut events = Events::with_capacity(64);
        loop {
            let now = Instant::now();
            self.process_input(now);
            self.flush_all();
            if let Some(code) = self.exit {
                self.screen.finish();
                return code;
            }
            let (prompt, secret) = (self.conv.prompt(), self.conv.secret());
            self.screen.render(&mut self.input.editor, prompt, secret);
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.screen.line(&format!("natter: poll failed: {e}"));
                self.exit = Some(1);
                continue;
            }
            let now = Instant::now();
            if !self.input.pollable && self.wants_input() {
                self.read_stdin();
            }
            if std::mem::take(&mut self.server_again) {
                self.read_server();
            }
            for key in std::mem::take(&mut self.peers.read_again) {
                self.peers
                    .event(self.poll.registry(), key, false, &mut self.buf, now);
            }
            for ev in events.iter() {
                match ev.token() {
                    STDIN => self.read_stdin(),
                    SERVER => self.read_server(),
                    SIGNALS if signals.pending().next().is_some() => self.begin_logout(now),
                    LISTENER => self.peers.accept(self.poll.registry(), now),
                    Token(t) if t >= PEER_BASE => self.peers.event(
                        self.poll.registry(),
                        t - PEER_BASE,
                        ev.is_writable(),
                        &mut self.buf,
                        now,
                    ),
                    _ => {}
                }
            }
            self.check_deadlines(now);
            self.apply_effects(now);
        }
    }

    /// Carries out what the conversation asked for, and shows the peers' notes.
    fn apply_effects(&mut self, now: Instant) {
        let out = self.conv.take_output();
        self.server.send_bytes(&out);
        for effect in self.conv.take_effects() {
            let registry = self.poll.registry();
            match effect {
                Effect::Show(text) => self.screen.line(&text),
                Effect::Exit(code) => {
                    self.exit.get_or_insert(code);
                }
                Effect::ConnectPeer {
                    user,
                    addr,
                    token,
                    key,
                } => self.peers.connect(registry, user, addr, token, &key, now),
                Effect::Expect { user, token, key } => {
                    self.peers.expect(registry, &user, &token, &key, now)
                }
                Effect::Private { to, text } => self.peers.send_private(registry, &to, &text),
                Effect::StopPrivate { user } => self.peers.stop_private(registry, &user),
            }
        }
        if *self.conv.stage() == Stage::LoggingOut && self.logout_deadline.is_none() {
            // `logout` was typed: wait a moment for the server's goodbye.
            self.logout_deadline = Some(now + LOGOUT_WAIT);
        }
        self.peers.set_me(self.conv.me());
        for user in std::mem::take(&mut self.peers.met) {
            self.conv.know(&user);
        }
        for note in std::mem::take(&mut self.peers.notes) {
            self.screen.line(&note);
        }
    }

    // ---- input --------------------------------------------------------------------

    fn wants_input(&self) -> bool {
        !self.input.eof && self.input.queue.is_empty() && self.ready_for_line()
    }

    fn ready_for_line(&self) -> bool {
        self.conv.ready_for_line() && !self.peers.connecting()
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
                self.input.eof = true;
                if self.input.pollable {
                    let fd = io::stdin().as_raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                }
                return;
            }
            let data = self.buf[..n].to_vec();
            if self.screen.interactive() {
                self.input.keys.advance(&data, false);
                while let Some(seq) = self.input.keys.next() {
                    self.on_key(Key::from_anes(seq));
                }
            } else {
                let queue = &mut self.input.queue;
                self.input.decoder.feed(&data, frames::MAX_LINE, |f| {
                    queue.push_back(match f {
                        Frame::Line(l) => Typed::Line(l.to_string()),
                        Frame::TooLong => Typed::TooLong,
                        Frame::BadUtf8 => Typed::Garbled,
                    });
                    Flow::Continue
                });
            }
            budget -= 1;
            if budget == 0 || !self.input.pollable || !self.stdin_has_more() {
                return;
            }
        }
    }

    fn on_key(&mut self, key: Key) {
        let known = self.conv.known_users();
        let me = self.conv.me();
        let complete = |first: bool, cmd: &str, _prefix: &str| -> Vec<String> {
            if first {
                COMMANDS.iter().map(|c| c.to_string()).collect()
            } else if command::takes_user(cmd) {
                known.iter().filter(|u| *u != me).cloned().collect()
            } else {
                Vec::new()
            }
        };
        match self.input.editor.key(key, &complete) {
            Action::None => {}
            Action::Redraw => self.screen.redraw(),
            Action::Submit(line) => {
                // Leave the finished line on screen (without the password) and move on.
                let shown = if self.input.editor.secret {
                    String::new()
                } else {
                    r::visible(&line).into_owned()
                };
                self.screen.submitted(self.conv.prompt(), &shown);
                self.input
                    .queue
                    .push_back(if line.len() > frames::MAX_LINE {
                        Typed::TooLong
                    } else {
                        Typed::Line(line)
                    });
            }
            Action::Eof => self.input.eof = true,
            Action::Interrupt => {
                self.screen.raw("\r\n");
                self.begin_logout(Instant::now());
            }
            Action::Candidates(c) => self.screen.line(&c.join("  ")),
        }
    }

    /// Hands typed lines to the conversation while it is ready for them.
    fn process_input(&mut self, now: Instant) {
        while self.ready_for_line() && self.exit.is_none() {
            // The classic client prints the prompt before reading each line (and so
            // before it finds the end of the input).
            self.screen.show_prompt(self.conv.prompt());
            let Some(typed) = self.input.queue.pop_front() else {
                if self.input.eof {
                    self.begin_logout(now);
                }
                break;
            };
            self.screen.line_taken();
            match typed {
                Typed::Line(l) => self.conv.typed(&l),
                Typed::TooLong => self
                    .screen
                    .line(&r::too_long(&frames::MAX_LINE.to_string())),
                Typed::Garbled => self.screen.line(r::INVALID_COMMAND),
            }
            self.apply_effects(now);
        }
        self.apply_effects(now);
    }

    fn begin_logout(&mut self, now: Instant) {
        self.conv.begin_logout();
        self.apply_effects(now);
    }

    // ---- server -------------------------------------------------------------------

    /// Reports the TLS verifier's verdict once: a notice for a certificate trusted on
    /// first use; for a changed one, a loud refusal (the handshake already failed).
    /// Returns false if the connection must not go on.
    fn check_trust(&mut self) -> bool {
        let Some(slot) = &self.trust else {
            return true;
        };
        let verdict = slot.lock().ok().and_then(|mut v| v.take());
        let Some(verdict) = verdict else {
            return true;
        };
        self.trust = None;
        let server = self
            .server
            .stream
            .peer_addr()
            .map_or_else(|_| "the server".to_string(), |a| a.to_string());
        let file = trust::known_servers_path()
            .map_or_else(|| "known_servers".into(), |p| p.display().to_string());
        match verdict {
            Verdict::Trusted => true,
            Verdict::FirstUse { fingerprint } => {
                eprintln!(
                    "natter: first connection to {server}: trusting its certificate {fingerprint} from now on (saved in {file})"
                );
                true
            }
            Verdict::Changed { known, presented } => {
                eprintln!(
                    "natter: WARNING: THE CERTIFICATE OF {server} HAS CHANGED\n\
                     natter:   expected  {known}\n\
                     natter:   presented {presented}\n\
                     natter: Someone may be intercepting the connection, or the server's certificate was replaced.\n\
                     natter: Refusing to connect. If the change is expected, remove the line for {server} from {file}\n\
                     natter: (or pass --trust-fingerprint with the new fingerprint)."
                );
                self.exit = Some(2);
                false
            }
        }
    }

    fn read_server(&mut self) {
        let mut more = false;
        let (lines, closed) = self.server.read_lines(&mut self.buf, &mut more);
        if !self.check_trust() {
            return;
        }
        self.server_again |= more;
        if !lines.is_empty() {
            self.server_rx = Instant::now();
        }
        for l in &lines {
            self.conv.server_line(l);
        }
        self.conv.end_of_batch();
        if closed {
            self.conv.server_closed();
        }
    }

    // ---- loop plumbing -----------------------------------------------------------

    fn flush_all(&mut self) {
        if self.server.out.len() > SERVER_MAX_QUEUED && self.exit.is_none() {
            self.screen.line(r::SERVER_NOT_READING);
            self.exit = Some(1);
            return;
        }
        if self.server.flush().is_err() && self.exit.is_none() {
            self.conv.server_closed();
            self.apply_effects(Instant::now());
        }
        self.peers.flush(self.poll.registry());
        self.apply_effects(Instant::now());
    }

    /// Until the handshake is answered the server gets the connect timeout; then the
    /// silence limit its `+HELLO` implies.
    fn server_deadline(&self) -> Instant {
        self.server_rx + self.conv.silence_limit().unwrap_or(self.connect_timeout)
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.server_again
            || !self.peers.read_again.is_empty()
            || (!self.input.pollable && self.wants_input())
        {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        [
            self.peers.next_deadline(),
            self.logout_deadline,
            Some(self.server_deadline()),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.saturating_duration_since(now))
    }

    fn check_deadlines(&mut self, now: Instant) {
        if self.logout_deadline.is_some_and(|t| t <= now) && self.exit.is_none() {
            self.exit = Some(0);
        }
        if self.server_deadline() <= now && self.exit.is_none() {
            let code = if *self.conv.stage() == Stage::LoggingOut {
                0
            } else {
                self.screen.line(r::SERVER_TIMEOUT);
                1
            };
            self.exit = Some(code);
        }
        self.peers.expire(self.poll.registry(), now);
    }
}
