//! The peer table: private (peer-to-peer) sessions and the connections setting them up.
//!
//! Outbound: `startprivate` got the target's address and a one-time token from the
//! server; we connect (non-blocking: done when writable, no pending error, a known peer
//! address), send `PEERHELLO <me> <token>` and wait for `PEEROK`. Inbound: a stranger's
//! connection on our peer port must say `PEERHELLO <user> <token>` with a token the
//! server told us to `*EXPECT` for that user; a hello that arrives before its
//! `*EXPECT` (they come on different sockets) is held for up to a second. Anything else
//! is dropped without a word to the user. Bounded against strangers: at most
//! `MAX_PENDING_PEERS` unauthenticated connections (the oldest goes), at most
//! `TOKENS_PER_USER` tokens per introducing user, at most `PEER_MAX_QUEUED` bytes queued
//! for a peer.
//!
//! Private sessions are mutually authenticated TLS when both clients announced a
//! certificate at login (see `peer_tls`): the caller pins the callee's announced
//! fingerprint, the callee checks the caller's certificate against its `*EXPECT` before
//! it accepts the hello, and a plain-text hello for a user whose key was announced is
//! refused (no downgrade). An inbound connection is TLS when its first byte opens a
//! handshake record (0x16), as on natterd's port.
//!
//! Lines for the user are collected in `notes`; the app shows them.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::link::Link;
use super::peer_tls::PeerIdentity;
use super::render as r;
use crate::protocol::peer::{PeerFrame, parse_peer_line};
use crate::tls::same;

/// Tokens of peer connections start here.
pub(crate) const PEER_BASE: usize = 16;
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
/// Introduction tokens kept per introducing user, and in all.
const TOKENS_PER_USER: usize = 4;
const TOKENS_MAX: usize = 1024;

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
    /// from the server has not been read yet.
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

struct Peer {
    link: Link,
    state: PeerState,
    /// Whether we know if the link is TLS (outbound: from the start; inbound: once its
    /// first byte has arrived).
    sniffed: bool,
}

/// A peer the server told us to expect (`*EXPECT`), by token.
struct Intro {
    user: String,
    /// The fingerprint their certificate must have (empty: plain text allowed).
    key: String,
    expires: Instant,
    seq: u64,
}

pub(crate) struct Peers {
    listener: Option<TcpListener>,
    peers: Slab<Peer>,
    /// Established sessions by user.
    sessions: HashMap<String, usize>,
    /// Users whose session ended without `stopprivate`.
    gone: HashSet<String>,
    /// Tokens the server introduced.
    expected: HashMap<String, Intro>,
    /// Numbers introductions in arrival order (many arrive in the same instant).
    intro_seq: u64,
    /// The outbound private connection being set up (input waits for it).
    connecting: Option<usize>,
    /// Peer connections whose read budget ran out: read again without waiting.
    pub read_again: Vec<usize>,
    /// Lines for the user.
    pub notes: Vec<String>,
    /// Users a session was opened with (known names, for completion).
    pub met: Vec<String>,
    me: String,
    /// Our certificate for private sessions (None: plain text only).
    identity: Option<PeerIdentity>,
}

impl Peers {
    pub(super) fn new(listener: Option<TcpListener>, identity: Option<PeerIdentity>) -> Peers {
        Peers {
            listener,
            peers: Slab::new(),
            sessions: HashMap::new(),
            gone: HashSet::new(),
            expected: HashMap::new(),
            intro_seq: 0,
            connecting: None,
            read_again: Vec::new(),
            notes: Vec::new(),
            met: Vec::new(),
            me: String::new(),
            identity,
        }
    }

    /// Who we are (known once logged in): the name we say hello with.
    pub(super) fn set_me(&mut self, me: &str) {
        if self.me != me {
            self.me = me.to_string();
        }
    }

    /// Whether an outbound private connection is being set up (input waits for it).
    pub(super) fn connecting(&self) -> bool {
        self.connecting.is_some()
    }

    /// Remembers an introduction. Each introducing user keeps at most
    /// `TOKENS_PER_USER` tokens (its oldest goes first), so a user who asks for
    /// introductions in a loop only ever displaces its own.
    pub(super) fn expect(
        &mut self,
        registry: &Registry,
        user: &str,
        token: &str,
        key: &str,
        now: Instant,
    ) {
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
            key: key.to_string(),
            expires: now + TOKEN_TTL,
            seq: self.intro_seq,
        };
        self.expected.insert(token.to_string(), intro);
        // A peer may have said hello before this reached us.
        let waiting: Vec<usize> = self
            .peers
            .iter()
            .filter(|(_, p)| matches!(p.state, PeerState::AwaitHello { hello: Some(_), .. }))
            .map(|(k, _)| k)
            .collect();
        for key in waiting {
            self.check_hello(registry, key);
        }
    }

    /// `private <to> <text>`.
    pub(super) fn send_private(&mut self, registry: &Registry, to: &str, text: &str) {
        match self.sessions.get(to).copied() {
            // The peer escapes what it shows, but we send nothing a server would refuse.
            Some(_) if !crate::protocol::frames::clean_text(text) => {
                self.notes.push(r::BAD_TEXT.to_string())
            }
            Some(key) => {
                let line = PeerFrame::Msg { text }.to_line();
                self.send(registry, key, &line);
            }
            None if self.gone.contains(to) => self.notes.push(r::no_longer_online(to)),
            None => self.notes.push(r::private_not_enabled(to)),
        }
    }

    /// `stopprivate <user>`.
    pub(super) fn stop_private(&mut self, registry: &Registry, user: &str) {
        match self.sessions.remove(user) {
            Some(key) => {
                self.send(registry, key, &PeerFrame::Stop.to_line());
                if let Some(p) = self.peers.get_mut(key) {
                    let _ = p.link.flush();
                }
                self.drop_peer(registry, key);
                self.notes.push(r::private_stopped(user));
            }
            None => self.notes.push(r::private_not_enabled(user)),
        }
    }

    /// Registers a peer connection in the slab and the poll; None if registration failed.
    fn add(
        &mut self,
        registry: &Registry,
        mut stream: TcpStream,
        state: PeerState,
        tls: Option<rustls::Connection>,
    ) -> Option<usize> {
        let _ = stream.set_nodelay(true);
        let key = self.peers.vacant_key();
        registry
            .register(
                &mut stream,
                Token(PEER_BASE + key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .ok()?;
        let sniffed = !matches!(state, PeerState::AwaitHello { .. });
        let mut link = Link::new(stream);
        if let Some(tls) = tls {
            link.start_tls(tls);
        }
        Some(self.peers.insert(Peer {
            link,
            state,
            sniffed,
        }))
    }

    /// Opens the private connection `startprivate` asked for.
    pub(super) fn connect(
        &mut self,
        registry: &Registry,
        user: String,
        addr: SocketAddr,
        token: String,
        key: &str,
        now: Instant,
    ) {
        // A peer that announced a certificate is spoken to over TLS, pinned to it.
        let tls = match (&self.identity, key) {
            (Some(id), k) if !k.is_empty() => match id.connect(k) {
                Ok(c) => Some(c.into()),
                Err(_) => return self.notes.push(r::private_unreachable(&user)),
            },
            _ => None,
        };
        let Ok(stream) = TcpStream::connect(addr) else {
            return self.notes.push(r::private_unreachable(&user));
        };
        let deadline = now + PEER_CONNECT_TIMEOUT;
        let state = PeerState::Connecting {
            user: user.clone(),
            token,
            deadline,
        };
        match self.add(registry, stream, state, tls) {
            Some(key) => self.connecting = Some(key),
            None => self.notes.push(r::private_unreachable(&user)),
        }
    }

    /// Accepts connections on the peer port.
    pub(super) fn accept(&mut self, registry: &Registry, now: Instant) {
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
                        self.drop_peer(registry, k);
                    }
                    let deadline = now + PEER_HELLO_TIMEOUT;
                    let hello = None;
                    let state = PeerState::AwaitHello { deadline, hello };
                    let _ = self.add(registry, stream, state, None);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    fn send(&mut self, registry: &Registry, key: usize, line: &str) {
        if let Some(p) = self.peers.get_mut(key) {
            p.link.send_raw(line);
            if p.link.out.len() > PEER_MAX_QUEUED {
                self.lost(registry, key);
            }
        }
    }

    /// Closes a peer connection without telling the user anything.
    fn drop_peer(&mut self, registry: &Registry, key: usize) {
        if let Some(mut p) = self.peers.try_remove(key) {
            let _ = registry.deregister(&mut p.link.stream);
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
    fn lost(&mut self, registry: &Registry, key: usize) {
        let Some(p) = self.peers.get(key) else { return };
        match &p.state {
            PeerState::Connecting { user, .. } | PeerState::AwaitOk { user, .. } => {
                self.notes.push(r::private_unreachable(user));
            }
            PeerState::Established { user } => {
                if self.sessions.get(user) == Some(&key) {
                    self.gone.insert(user.clone());
                }
            }
            PeerState::AwaitHello { .. } => {}
        }
        self.drop_peer(registry, key);
    }

    /// An event on peer connection `key` (or a read the budget left over).
    pub(super) fn event(
        &mut self,
        registry: &Registry,
        key: usize,
        writable: bool,
        buf: &mut [u8],
        now: Instant,
    ) {
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
                _ => return self.lost(registry, key),
            }
        }
        if !self.sniff(registry, key) {
            return;
        }
        let mut more = false;
        let (lines, closed) = match self.peers.get_mut(key) {
            Some(p) => p.link.read_lines(buf, &mut more),
            None => return,
        };
        if more {
            self.read_again.push(key);
        }
        for l in lines {
            self.line(registry, key, &l, now);
            if !self.peers.contains(key) {
                return;
            }
        }
        if closed {
            self.lost(registry, key);
        }
    }

    /// An inbound connection's first byte decides whether it speaks TLS; false while
    /// that is not known yet (or the connection went).
    fn sniff(&mut self, registry: &Registry, key: usize) -> bool {
        let Some(p) = self.peers.get_mut(key) else {
            return false;
        };
        if p.sniffed {
            return true;
        }
        match p.link.peek_first() {
            Ok(Some(0x16)) => match self.identity.as_ref().map(PeerIdentity::accept) {
                Some(Ok(tls)) => p.link.start_tls(tls.into()),
                _ => {
                    self.drop_peer(registry, key);
                    return false;
                }
            },
            Ok(Some(_)) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return false,
            Ok(None) | Err(_) => {
                self.drop_peer(registry, key);
                return false;
            }
        }
        p.sniffed = true;
        true
    }

    fn line(&mut self, registry: &Registry, key: usize, line: &str, now: Instant) {
        let Some(p) = self.peers.get_mut(key) else {
            return;
        };
        let frame = parse_peer_line(line);
        match &mut p.state {
            PeerState::AwaitHello { hello, deadline } => {
                // One hello, and nothing more before we answer it.
                let (Some(PeerFrame::Hello { user, token }), None) = (frame, &hello) else {
                    return self.drop_peer(registry, key);
                };
                *hello = Some((user.to_string(), token.to_string()));
                // The server's `*EXPECT` is at most a moment behind: a hello with a
                // token we were never given is dropped soon, not at the full deadline.
                *deadline = (*deadline).min(now + HELLO_HOLD);
                self.check_hello(registry, key);
            }
            PeerState::AwaitOk { user, .. } => {
                if frame == Some(PeerFrame::Ok { user }) {
                    let user = user.clone();
                    p.state = PeerState::Established { user: user.clone() };
                    self.connecting = None;
                    self.open_session(registry, user.clone(), key);
                    self.notes.push(r::private_started(&user));
                } else {
                    self.lost(registry, key);
                }
            }
            PeerState::Established { user } => match frame {
                Some(PeerFrame::Msg { text }) => self.notes.push(r::private_line(user, text)),
                Some(PeerFrame::Stop) => {
                    self.notes.push(r::peer_stopped(user));
                    self.drop_peer(registry, key);
                }
                _ => {}
            },
            PeerState::Connecting { .. } => {}
        }
    }

    /// Accepts an inbound peer's held `PEERHELLO` if the server told us to expect that
    /// user with that token; a known token with another name is a forgery (dropped);
    /// an unknown token waits for an `*EXPECT` until the hello deadline.
    fn check_hello(&mut self, registry: &Registry, key: usize) {
        let Some(peer) = self.peers.get(key) else {
            return;
        };
        let PeerState::AwaitHello {
            hello: Some((name, token)),
            ..
        } = &peer.state
        else {
            return;
        };
        // The right name, and the certificate the server announced for it (a user
        // with an announced key never gets in over plain text).
        let presented = peer.link.peer_fingerprint();
        let verdict = self
            .expected
            .get(token)
            .filter(|i| i.expires > Instant::now())
            .map(|i| {
                i.user == *name
                    && (i.key.is_empty() || presented.as_deref().is_some_and(|p| same(p, &i.key)))
            });
        match verdict {
            None => {}
            Some(false) => self.drop_peer(registry, key),
            Some(true) => {
                let (name, token) = (name.clone(), token.clone());
                self.expected.remove(&token);
                let ok = PeerFrame::Ok { user: &self.me }.to_line();
                if let Some(p) = self.peers.get_mut(key) {
                    p.state = PeerState::Established { user: name.clone() };
                    p.link.send_raw(&ok);
                }
                self.open_session(registry, name, key);
            }
        }
    }

    fn open_session(&mut self, registry: &Registry, user: String, key: usize) {
        self.gone.remove(&user);
        self.met.push(user.clone());
        if let Some(old) = self.sessions.insert(user, key)
            && old != key
        {
            self.drop_peer(registry, old);
        }
    }

    /// Writes what every peer link has queued; a dead link is lost.
    pub(super) fn flush(&mut self, registry: &Registry) {
        let dead: Vec<usize> = self
            .peers
            .iter_mut()
            .filter_map(|(k, p)| {
                let connecting = matches!(p.state, PeerState::Connecting { .. });
                (!connecting && p.link.flush().is_err()).then_some(k)
            })
            .collect();
        for k in dead {
            self.lost(registry, k);
        }
    }

    /// The earliest deadline of a connection being set up.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.peers
            .iter()
            .filter_map(|(_, p)| p.state.deadline())
            .min()
    }

    /// Gives up on connections past their deadline.
    pub(super) fn expire(&mut self, registry: &Registry, now: Instant) {
        let late: Vec<usize> = self
            .peers
            .iter()
            .filter(|(_, p)| p.state.deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| k)
            .collect();
        for k in late {
            self.lost(registry, k);
        }
    }
}
