//! The server's event loop: one thread, one `mio::Poll`.
//!
//! The loop owns every socket: a table of connections (`Conn`: the stream, its
//! address, whether write interest is registered) keyed like the core's sessions. The
//! chat core never sees a socket; the loop hands it bytes read, time and completions
//! (`Core::handle_*`) and takes from it bytes to write and connections to close
//! (`Core::poll_*`), in the order documented on [`Core`].
//!
//! Every iteration runs the same phases, in order:
//! 1. poll, with the earliest timer deadline as timeout (no fixed tick);
//! 2. dispatch events: read every readable connection until `WouldBlock` (or its
//!    per-iteration budget, after which it is revisited next iteration without
//!    waiting), feeding the bytes to the core; note write readiness;
//! 3. fire due timers;
//! 4. commit: hand the journal batch the core built this iteration to the writer
//!    thread (one batch per iteration: group commit), rewrite the journal if it has
//!    grown, and release output held for batches the writer reported durable;
//! 5. flush every dirty connection once (one `write` carries all the frames queued
//!    for it this iteration), and keep write interest only while output is pending;
//!    output held for a batch not yet durable waits;
//! 6. sweep connections the core closed: deregister and drop them (those with held
//!    output linger until it is released and flushed);
//! 7. accept new connections (deferred to here, so a new connection can never
//!    receive an event or timer meant for a closed one that held its slab key),
//!    applying the per-address limits.
//!
//! Two more sources wake the loop: the `Waker` (the journal writer reporting durable
//! batches, the verifier threads returning password verdicts) and signals, delivered as
//! events by signal-hook-mio: SIGHUP reloads the credentials, SIGTERM/SIGINT shut down
//! gracefully (everyone told, state flushed), SIGUSR1 logs the counters.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use slab::Slab;

use super::accounts::{self, Credential};
use super::clock::Clock;
use super::cluster::{Broker, ClusterConfig};
use super::core::durability::{InMemory, JournalStore, Store};
use super::core::{CloseReason, Core, CoreConfig};
use super::flood::{Rate, TokenBucket};
use super::store::{DataDir, FsyncPolicy, Journal, StoreError};
use super::tls::{self, CertSource, Identity};
use super::verifier::Verifier;
use crate::net::{
    Step, read_step, read_tls_step, sync_write_interest, write_tls_until_blocked,
    write_until_blocked,
};
use crate::protocol::frames::{ByeReason, Push};

/// One connection as the loop sees it: the socket and its registration.
struct Conn {
    stream: TcpStream,
    /// The client's address (the port is not needed after accepting: 16 bytes less
    /// per connection).
    ip: IpAddr,
    /// Whether write interest is registered (changed only when it must).
    write_interest: bool,
    /// Listed in `Server::deferred_handshakes`.
    deferred: bool,
    transport: Transport,
}

/// What a connection speaks, decided from its first byte before any protocol byte is
/// read (so there is no STARTTLS to downgrade): a TLS handshake record (0x16) makes it
/// TLS, anything else the plain protocol.
enum Transport {
    Unknown,
    Plain,
    Tls(Box<rustls::ServerConnection>),
}

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Plain-text bytes (and TLS records) a TLS session may buffer for writing: the core's
/// output queue, not rustls, is where a slow reader's backlog is bounded.
const TLS_BUFFER: usize = 64 * 1024;

const LISTENER: Token = Token(usize::MAX);
/// Woken by the journal writer (durable batches) and the verifier threads (verdicts).
const WAKER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// The broker connection (cluster mode).
const BROKER: Token = Token(usize::MAX - 3);

/// How long a cluster node waits at start for the broker (and, while catching up, for
/// the next record: a long stream may take longer in all, as long as it flows).
const CLUSTER_START: Duration = Duration::from_secs(10);

/// How long a graceful shutdown waits for clients to take their last bytes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Bytes read from one connection per iteration before others get a turn.
const READ_BUDGET: usize = 256 * 1024;

/// TLS handshake steps (reads of a connection still handshaking: the first costs a key
/// exchange and a signature, about 0.14 ms) run per iteration; more wait, oldest first,
/// for the next ones. A flood of handshakes then adds at most about 18 ms to an
/// iteration instead of stalling established users for as long as the flood lasts.
/// The number trades a login storm's length against everyone else's latency during
/// it (docs/benchmarks.md: 10,000 TLS logins in 5.6 s instead of 2.9 s, established
/// users' p99 0.24 s instead of 0.95 s meanwhile).
const HANDSHAKES_PER_ITERATION: u32 = 128;

/// Silence after activity before the loop calls its `on_idle` hook.
const QUIET_AFTER: Duration = Duration::from_millis(50);

/// Size of the loop's one read buffer (shared by all connections).
const SCRATCH: usize = 64 * 1024;

/// Everything `run` needs, already validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The chat rules' settings.
    pub core: CoreConfig,
    /// Most simultaneous connections; accepting pauses at the limit.
    pub max_connections: usize,
    /// Where and how durable state is kept.
    pub store: StoreConfig,
    /// Called when the loop goes quiet after activity (a poll that returned no events):
    /// the binary uses it to hand freed memory back to the kernel. It may ask to be
    /// called once more, after a delay, if the loop is still quiet then.
    pub on_idle: Option<fn(Quiet) -> Option<Duration>>,
    /// The credentials file, re-read on SIGHUP (`None`: no signal handling at all).
    pub credentials_path: Option<PathBuf>,
    /// Per-address connection limits.
    pub limits: Limits,
    /// Password-hash verifier threads.
    pub verify_threads: usize,
    /// Log the counters this often (`None`: only on SIGUSR1).
    pub stats_interval: Option<Duration>,
    /// The TLS certificate: given, generated in the data directory, or ephemeral.
    pub tls: CertSource,
    /// Accept plain-text connections from any address (by default only from loopback).
    pub allow_plaintext: bool,
    /// Loopback addresses to treat as remote for the plain-text rule (for tests that
    /// have no second host).
    pub treat_as_remote: Vec<IpAddr>,
    /// Cluster mode: the broker and this node's name (`None`: a single node with its
    /// own journal).
    pub cluster: Option<ClusterConfig>,
}

/// Per-address connection limits (0 disables one).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Open connections from one address.
    pub max_per_ip: u32,
    /// New connections from one address per minute (a token bucket of this size).
    pub new_per_ip_per_min: u32,
    /// Apply them to loopback addresses too.
    pub limit_loopback: bool,
}

/// What the loop remembers about one client address.
#[derive(Debug)]
struct IpEntry {
    conns: u32,
    tokens: TokenBucket,
}

/// What the `on_idle` hook is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quiet {
    /// Connections open.
    pub connections: usize,
    /// This is the later call the hook asked for (nothing happened in between).
    pub recheck: bool,
}

/// Where and how durable state is kept.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The data directory; `None` keeps everything in memory only.
    pub dir: Option<PathBuf>,
    /// When the journal is forced to disk.
    pub fsync: FsyncPolicy,
    /// The journal is not rewritten below this size.
    pub compact_min: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dir: None,
            fsync: FsyncPolicy::Always,
            compact_min: 64 << 20,
        }
    }
}

/// Why the server stopped.
#[derive(Debug)]
pub enum RunError {
    /// The listening socket could not be bound.
    Bind(SocketAddr, io::Error),
    /// The poll (or a registration) failed.
    Poll(io::Error),
    /// The store could not be opened.
    Store(StoreError),
    /// The TLS certificate could not be loaded or made.
    Tls(String),
    /// Cluster mode: the broker could not be reached or set up at start.
    Broker(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            RunError::Poll(e) => write!(f, "event loop failed: {e}"),
            RunError::Store(e) => write!(f, "cannot open the store: {e}"),
            RunError::Tls(e) => write!(f, "cannot set up TLS: {e}"),
            RunError::Broker(e) => write!(f, "cannot join the cluster: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// The bound server, before it runs (tests and the binary print its address).
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    core: Core,
    /// Every connection's socket, keyed like the core's sessions.
    conns: Slab<Conn>,
    journal: Option<Journal>,
    /// Cluster mode: the broker connection (instead of the journal).
    broker: Option<Broker>,
    /// The last durable batch the core was told about.
    durable: u64,
    max_connections: usize,
    scratch: Box<[u8]>,
    /// Connections whose read budget ran out: (key, serial), revisited next iteration.
    read_backlog: Vec<(usize, u64)>,
    /// TLS handshake steps run this iteration (see [`HANDSHAKES_PER_ITERATION`]).
    handshakes: u32,
    /// Handshaking connections with input waiting for a later iteration, oldest first
    /// (each at most once: `Conn::deferred`).
    deferred_handshakes: VecDeque<(usize, u64)>,
    /// How many times a handshake waited for a later iteration (a counter).
    handshakes_waited: u64,
    accept_ready: bool,
    on_idle: Option<fn(Quiet) -> Option<Duration>>,
    /// Events were handled since `on_idle` last ran.
    busy: bool,
    /// When to call `on_idle` again, as it asked (cancelled by activity).
    idle_recheck: Option<Instant>,
    /// Set when accepting failed for lack of file descriptors.
    accept_retry_at: Option<Instant>,
    verifier: Verifier,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    credentials_path: Option<PathBuf>,
    limits: Limits,
    per_ip: HashMap<IpAddr, IpEntry>,
    /// The time base of `per_ip`'s token buckets.
    clock: Clock,
    /// `per_ip` is pruned when it grows past this.
    per_ip_prune_at: usize,
    stats_interval: Option<Duration>,
    next_stats: Option<Instant>,
    stopping: bool,
    /// Connections refused by `--max-per-ip` and `--max-new-per-ip`.
    per_ip_refused: u64,
    rate_refused: u64,
    tls: Identity,
    tls_source: CertSource,
    allow_plaintext: bool,
    treat_as_remote: Vec<IpAddr>,
}

impl Server {
    /// Binds the listener and opens the store (replaying the journal); does not serve yet.
    pub fn bind(cfg: Config, credentials: Vec<Credential>) -> Result<Server, RunError> {
        let mut poll = Poll::new().map_err(RunError::Poll)?;
        let mut listener = TcpListener::bind(cfg.addr).map_err(|e| RunError::Bind(cfg.addr, e))?;
        // mio listens with a backlog of 1024; a reconnect storm after a restart wants
        // the kernel's maximum (`net.core.somaxconn`), or SYNs are dropped and clients
        // wait a second per retry. Calling listen(2) again only changes the backlog.
        if let Err(e) = nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXALLOWABLE)
        {
            warn!("cannot raise the listen backlog: {e}");
        }
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(RunError::Poll)?;
        let now = Instant::now();
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(RunError::Poll)?);
        let verifier =
            Verifier::start(cfg.verify_threads, waker.clone()).map_err(RunError::Poll)?;
        let signals = match &cfg.credentials_path {
            None => None,
            Some(_) => {
                use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
                let mut sig =
                    signal_hook_mio::v1_0::Signals::new([SIGHUP, SIGINT, SIGTERM, SIGUSR1])
                        .map_err(RunError::Poll)?;
                poll.registry()
                    .register(&mut sig, SIGNALS, Interest::READABLE)
                    .map_err(RunError::Poll)?;
                Some(sig)
            }
        };
        let tls = tls::load(&cfg.tls).map_err(RunError::Tls)?;
        let store: Box<dyn Store> = match (&cfg.store.dir, &cfg.cluster) {
            (Some(_), None) => Box::new(JournalStore::default()),
            _ => Box::new(InMemory),
        };
        let mut core = Core::new(credentials, cfg.core, store, now);
        let broker = match cfg.cluster {
            None => None,
            Some(cc) => Some(join_cluster(&mut poll, &mut core, cc, now)?),
        };
        let journal = match &cfg.store.dir {
            _ if broker.is_some() => None,
            None => None,
            Some(dir) => {
                let (data, recovered) = DataDir::open(dir).map_err(RunError::Store)?;
                info!("{}: recovered {} records", dir.display(), recovered.records);
                core.restore(recovered, now);
                let mut snapshot = Vec::new();
                core.snapshot(now, &mut snapshot);
                let waker = waker.clone();
                let s = &cfg.store;
                Some(
                    Journal::start(data, &snapshot, s.fsync, s.compact_min, waker)
                        .map_err(RunError::Store)?,
                )
            }
        };
        Ok(Server {
            poll,
            listener,
            core,
            conns: Slab::new(),
            journal,
            broker,
            durable: 0,
            max_connections: cfg.max_connections.max(1),
            scratch: vec![0u8; SCRATCH].into_boxed_slice(),
            read_backlog: Vec::new(),
            handshakes: 0,
            deferred_handshakes: VecDeque::new(),
            handshakes_waited: 0,
            accept_ready: true,
            on_idle: cfg.on_idle,
            idle_recheck: None,
            // Start as if busy: the first quiet poll then gives back what start-up used
            // (credentials parsing, journal replay), instead of only after a first client.
            busy: true,
            accept_retry_at: None,
            verifier,
            signals,
            credentials_path: cfg.credentials_path,
            limits: cfg.limits,
            per_ip: HashMap::new(),
            clock: Clock::new(now),
            per_ip_prune_at: 1024,
            stats_interval: cfg.stats_interval,
            next_stats: cfg.stats_interval.map(|d| now + d),
            stopping: false,
            per_ip_refused: 0,
            rate_refused: 0,
            tls,
            tls_source: cfg.tls,
            allow_plaintext: cfg.allow_plaintext,
            treat_as_remote: cfg.treat_as_remote,
        })
    }

    /// The address the server listens on (with the port it got, for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The SHA-256 fingerprint of the certificate TLS clients are shown.
    pub fn tls_fingerprint(&self) -> &str {
        &self.tls.fingerprint
    }

    /// Runs until SIGTERM/SIGINT (then shuts down gracefully and returns `Ok`) or until
    /// the poll itself fails.
    pub fn run(mut self) -> Result<(), RunError> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(RunError::Poll(e));
            }
            let now = Instant::now();
            self.note_activity(events.is_empty(), now);
            self.handshakes = 0;
            self.read_backlog(now);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_ready = true,
                    WAKER => self.take_verdicts(now),
                    SIGNALS => self.on_signals(now),
                    BROKER => self.broker_ready(now),
                    Token(key) => {
                        let hup = event.is_read_closed() || event.is_error();
                        if event.is_readable() || hup {
                            self.read(key, now, hup);
                        }
                        if event.is_writable() {
                            self.core.handle_writable(key);
                        }
                    }
                }
            }
            self.core.handle_timeout(now);
            self.dispatch_verifications(now);
            while let Some(r) = self.core.poll_resumed() {
                self.read_backlog.push(r);
            }
            self.commit(now);
            self.flush(now);
            self.sweep();
            if self.stopping {
                return self.shutdown();
            }
            if self.next_stats.is_some_and(|t| t <= now) {
                info!("{}", self.stats_line());
                self.next_stats = self.stats_interval.map(|d| now + d);
            }
            if self.accept_retry_at.is_some_and(|t| t <= now) {
                self.accept_retry_at = None;
                self.accept_ready = true;
            }
            if self.accept_ready && self.accept_retry_at.is_none() {
                self.accept(now);
            }
        }
    }

    /// Tracks whether the loop is busy; when it goes quiet after activity, idle
    /// connections give their buffers back (kept while busy, so a loaded server does
    /// not reallocate them on every flush), then the allocator returns memory to the
    /// kernel.
    fn note_activity(&mut self, no_events: bool, now: Instant) {
        if no_events && !self.reads_waiting() {
            let recheck = !self.busy && self.idle_recheck.is_some_and(|t| t <= now);
            if self.busy {
                self.core.release_buffers();
            }
            if let Some(f) = self.on_idle
                && (self.busy || recheck)
            {
                self.idle_recheck = f(Quiet {
                    connections: self.conns.len(),
                    recheck,
                })
                .filter(|_| !recheck)
                .map(|d| now + d);
            }
            self.busy = false;
        } else {
            self.busy = true;
            self.idle_recheck = None;
        }
    }

    /// Whether reads are owed without waiting for events: connections whose read budget
    /// ran out (or that resumed), and handshakes over last iteration's share.
    fn reads_waiting(&self) -> bool {
        !self.read_backlog.is_empty() || !self.deferred_handshakes.is_empty()
    }

    /// Reads the connections whose read budget ran out last time (or that resumed),
    /// then the handshakes that waited.
    fn read_backlog(&mut self, now: Instant) {
        for (key, serial) in std::mem::take(&mut self.read_backlog) {
            if self.core.is_current(key, serial) {
                self.read(key, now, true);
            }
        }
        // Then the handshakes that waited, oldest first, as many as one iteration runs.
        while self.handshakes < HANDSHAKES_PER_ITERATION
            && let Some((key, serial)) = self.deferred_handshakes.pop_front()
        {
            if self.core.is_current(key, serial) {
                if let Some(c) = self.conns.get_mut(key) {
                    c.deferred = false;
                }
                self.read(key, now, true);
            }
        }
    }

    /// The counters line: the core's, and the loop's admission refusals.
    fn stats_line(&self) -> String {
        let broker = self
            .broker
            .as_ref()
            .map(|b| format!(" {}", b.stats()))
            .unwrap_or_default();
        format!(
            "{} per_ip_refused={} rate_refused={} handshakes_waited={}{broker}",
            self.core.stats_line(),
            self.per_ip_refused,
            self.rate_refused,
            self.handshakes_waited
        )
    }

    fn poll_timeout(&mut self, now: Instant) -> Option<Duration> {
        let can_accept = self.accept_ready
            && self.accept_retry_at.is_none()
            && self.conns.len() < self.max_connections;
        if self.reads_waiting() || can_accept {
            return Some(Duration::ZERO);
        }
        // After activity, wake once when things go quiet so `on_idle` runs then, not at
        // the next timer (which may be many seconds away).
        let quiet = if self.busy {
            Some(now + QUIET_AFTER)
        } else {
            self.idle_recheck
        };
        [
            self.core.poll_timeout(),
            self.accept_retry_at,
            quiet,
            self.next_stats,
            self.broker.as_ref().and_then(Broker::next_deadline),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.saturating_duration_since(now))
    }

    /// Submits this iteration's journal batch and releases output held for batches
    /// that became durable.
    fn commit(&mut self, now: Instant) {
        if let Some(b) = &mut self.broker {
            return b.commit(self.poll.registry(), &mut self.core, now);
        }
        let Some(journal) = &mut self.journal else {
            return;
        };
        if let Some(batch) = self.core.poll_batch() {
            journal.submit(batch);
            if journal.wants_rewrite() {
                let mut snapshot = Vec::with_capacity(journal.file_len() as usize / 2);
                self.core.snapshot(now, &mut snapshot);
                journal.rewrite(snapshot);
            }
        }
        let durable = journal.durable();
        if durable > self.durable {
            self.durable = durable;
            self.core.handle_durable(durable);
        }
        self.core.handle_store_health(journal.healthy());
    }

    /// The broker's socket is ready (cluster mode).
    fn broker_ready(&mut self, now: Instant) {
        if let Some(b) = &mut self.broker {
            b.on_event(self.poll.registry(), &mut self.core, now);
        }
    }

    /// Reads connection `key`. `hup`: the peer may have closed, so read until the kernel
    /// says there is nothing more (otherwise a short read is taken to mean the socket
    /// is drained: see `read_plain`).
    fn read(&mut self, key: usize, now: Instant, hup: bool) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        if matches!(c.transport, Transport::Unknown) && !self.sniff(key, now) {
            return;
        }
        match self
            .conns
            .get(key)
            .map(|c| matches!(c.transport, Transport::Tls(_)))
        {
            Some(true) => self.read_tls(key, now),
            Some(false) => self.read_plain(key, now, hup),
            None => {}
        }
    }

    /// Decides from the first byte whether connection `key` is TLS; false if that is not
    /// known yet or the connection is refused (plain text from a remote address).
    fn sniff(&mut self, key: usize, now: Instant) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        let mut first = [0u8; 1];
        match c.stream.peek(&mut first) {
            Ok(0) => {
                self.core.handle_closed(key, CloseReason::Eof, now);
                false
            }
            Ok(_) if first[0] == TLS_HANDSHAKE => {
                match rustls::ServerConnection::new(self.tls.config.clone()) {
                    Ok(mut tls) => {
                        tls.set_buffer_limit(Some(TLS_BUFFER));
                        c.transport = Transport::Tls(Box::new(tls));
                        true
                    }
                    Err(e) => {
                        warn!("conn {key}: TLS set-up failed: {e}");
                        self.core.handle_closed(key, CloseReason::IoError, now);
                        false
                    }
                }
            }
            Ok(_) => {
                let ip = c.ip;
                let local = ip.is_loopback() && !self.treat_as_remote.contains(&ip);
                if local || self.allow_plaintext {
                    c.transport = Transport::Plain;
                    return true;
                }
                // Secure by default: passwords do not cross a network in clear text.
                info!("conn {key}: plain text from {ip} refused (TLS required)");
                let mut line = Vec::new();
                Push::Bye {
                    reason: ByeReason::TlsRequired.as_str(),
                }
                .encode(&mut line);
                let _ = c.stream.write(&line);
                self.core.handle_closed(key, CloseReason::LoginFailed, now);
                false
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => {
                debug!("conn {key}: read error: {e}");
                self.core.handle_closed(key, CloseReason::IoError, now);
                false
            }
        }
    }

    /// Reads a plain-text connection until it is drained, paused or out of budget.
    /// A read that returns less than the buffer holds has emptied the socket's receive
    /// queue, so the loop stops there instead of asking again only to hear "would
    /// block" (one `recv` in three under load): with edge-triggered readiness, anything
    /// that arrives after this iteration's events were taken, data or the peer's close,
    /// raises a new event. Only a close the event already announced (`hup`) is read
    /// to the end now.
    fn read_plain(&mut self, key: usize, now: Instant, hup: bool) {
        let mut budget = READ_BUDGET;
        // A paused session is not read: its input waits in the kernel (flow control
        // by TCP) until the core resumes it.
        while self.core.wants_read(key) {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            match read_step(&mut c.stream, &mut self.scratch) {
                Step::Done(n) => {
                    self.core.handle_read(key, &self.scratch[..n], now);
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        return self.read_later(key);
                    }
                    if n < self.scratch.len() && !hup {
                        return;
                    }
                }
                Step::WouldBlock => return,
                Step::Closed => return self.core.handle_closed(key, CloseReason::Eof, now),
                Step::Failed(e) => {
                    debug!("conn {key}: read error: {e}");
                    return self.core.handle_closed(key, CloseReason::IoError, now);
                }
            }
        }
    }

    /// The read budget ran out: read `key` again next iteration without waiting.
    fn read_later(&mut self, key: usize) {
        if let Some(serial) = self.core.serial(key) {
            self.read_backlog.push((key, serial));
        }
    }

    /// Reads TLS records and hands the plain text to the core. Plain text rustls
    /// already decrypted is handed over first (a paused connection resumes with it).
    fn read_tls(&mut self, key: usize, now: Instant) {
        let mut budget = READ_BUDGET;
        let Server {
            conns,
            core,
            scratch,
            ..
        } = self;
        let Some(Conn {
            stream,
            transport: Transport::Tls(tls),
            deferred,
            ..
        }) = conns.get_mut(key)
        else {
            return;
        };
        while core.wants_read(key) {
            let handshaking = tls.is_handshaking();
            if handshaking && self.handshakes >= HANDSHAKES_PER_ITERATION {
                if !*deferred && let Some(serial) = core.serial(key) {
                    *deferred = true;
                    self.deferred_handshakes.push_back((key, serial));
                    self.handshakes_waited += 1;
                }
                break;
            }
            if budget == 0 {
                if let Some(serial) = core.serial(key) {
                    self.read_backlog.push((key, serial));
                }
                break;
            }
            self.handshakes += u32::from(handshaking);
            match read_tls_step(tls, stream, scratch) {
                Step::Done(n) => {
                    core.handle_read(key, &scratch[..n], now);
                    budget = budget.saturating_sub(n);
                }
                Step::WouldBlock => break,
                Step::Closed => return core.handle_closed(key, CloseReason::Eof, now),
                Step::Failed(e) => {
                    debug!("conn {key}: TLS read failed: {e}");
                    return core.handle_closed(key, CloseReason::IoError, now);
                }
            }
        }
        if tls.wants_write() {
            // A handshake message (or an alert) to send: the flush does it.
            core.handle_writable(key);
        }
    }

    /// Writes every connection with output once; write interest stays registered only
    /// while output is pending.
    fn flush(&mut self, now: Instant) {
        let conns = &mut self.conns;
        let registry = self.poll.registry();
        self.core.poll_transmit(
            |key, bytes| {
                let Some(c) = conns.get_mut(key) else {
                    return Ok(bytes.len());
                };
                let (n, want) = match &mut c.transport {
                    Transport::Tls(tls) => {
                        // Encrypted into rustls's buffer (bounded), then written.
                        let n = if bytes.is_empty() {
                            0
                        } else {
                            tls.writer().write(bytes)?
                        };
                        write_tls_until_blocked(tls, &mut c.stream)?;
                        (n, tls.wants_write() || n < bytes.len())
                    }
                    _ => {
                        let n = if bytes.is_empty() {
                            0
                        } else {
                            write_until_blocked(&mut c.stream, bytes)?
                        };
                        (n, n < bytes.len())
                    }
                };
                sync_write_interest(
                    registry,
                    &mut c.stream,
                    Token(key),
                    want,
                    &mut c.write_interest,
                )
                .inspect_err(|e| warn!("conn {key}: reregister failed: {e}"))?;
                Ok(n)
            },
            now,
        );
    }

    /// Deregisters and drops the connections the core is done with.
    fn sweep(&mut self) {
        while let Some(key) = self.core.poll_closed() {
            if let Some(mut c) = self.conns.try_remove(key) {
                if let Transport::Tls(tls) = &mut c.transport {
                    // A clean TLS close, best effort (the socket may be full or gone).
                    tls.send_close_notify();
                    let _ = write_tls_until_blocked(tls, &mut c.stream);
                }
                if let Some(e) = self.per_ip.get_mut(&c.ip) {
                    e.conns = e.conns.saturating_sub(1);
                }
                let _ = self.poll.registry().deregister(&mut c.stream);
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
                // Dropping `c` closes the socket.
            }
            self.accept_ready = true;
        }
    }

    /// Applies the per-address limits to a new connection from `ip`; returns why it is
    /// refused, if it is.
    fn refuse(&mut self, ip: IpAddr, now: Instant) -> Option<ByeReason> {
        let l = &self.limits;
        if (l.max_per_ip == 0 && l.new_per_ip_per_min == 0)
            || (ip.is_loopback() && !l.limit_loopback)
        {
            return None;
        }
        if self.per_ip.len() >= self.per_ip_prune_at {
            self.prune_per_ip(now);
        }
        let rate = self.new_conn_rate();
        let l = &self.limits;
        let now = self.clock.stamp(now);
        let e = self.per_ip.entry(ip).or_insert(IpEntry {
            conns: 0,
            tokens: TokenBucket::full(rate, now),
        });
        if l.max_per_ip > 0 && e.conns >= l.max_per_ip {
            self.per_ip_refused += 1;
            warn!(
                "refused connection from {ip}: {} connections open (--max-per-ip)",
                e.conns
            );
            return Some(ByeReason::TooManyConnections);
        }
        if l.new_per_ip_per_min > 0 && e.tokens.take(rate, now).is_err() {
            self.rate_refused += 1;
            warn!(
                "refused connection from {ip}: over {} new connections a minute (--max-new-per-ip)",
                l.new_per_ip_per_min
            );
            return Some(ByeReason::ConnectingTooFast);
        }
        None
    }

    /// New connections per address: `--max-new-per-ip` a minute, as a burst.
    fn new_conn_rate(&self) -> Rate {
        let burst = f64::from(self.limits.new_per_ip_per_min);
        Rate {
            burst,
            per_sec: burst / 60.0,
        }
    }

    /// Forgets addresses with no connection and a full bucket.
    fn prune_per_ip(&mut self, now: Instant) {
        let rate = self.new_conn_rate();
        let now = self.clock.stamp(now);
        self.per_ip
            .retain(|_, e| e.conns > 0 || !e.tokens.is_full(rate, now));
        self.per_ip_prune_at = (self.per_ip.len() * 2).max(1024);
    }

    fn dispatch_verifications(&mut self, now: Instant) {
        for job in self.core.poll_verify(self.verifier.idle(), now) {
            self.verifier.submit(job);
        }
    }

    fn take_verdicts(&mut self, now: Instant) {
        for v in self.verifier.verdicts() {
            self.core.handle_verdict(v.key, v.serial, v.ok, now);
        }
    }

    fn on_signals(&mut self, now: Instant) {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        let Some(signals) = &mut self.signals else {
            return;
        };
        let pending: Vec<i32> = signals.pending().collect();
        for sig in pending {
            match sig {
                SIGHUP => self.reload(now),
                SIGTERM | SIGINT => {
                    info!("signal {sig}: shutting down");
                    self.stopping = true;
                }
                SIGUSR1 => eprintln!("natterd: {}", self.stats_line()),
                _ => {}
            }
        }
    }

    /// Re-reads the credentials file; a broken file changes nothing.
    fn reload(&mut self, now: Instant) {
        // Renewed certificate files take effect for new connections; a broken pair
        // keeps the old one.
        if let CertSource::Files { .. } = &self.tls_source {
            match tls::load(&self.tls_source) {
                Ok(identity) => {
                    warn!("reloaded the TLS certificate: {}", identity.fingerprint);
                    self.tls = identity;
                }
                Err(e) => error!("TLS certificate reload failed, keeping the current one: {e}"),
            }
        }
        let Some(path) = &self.credentials_path else {
            return;
        };
        match accounts::load(path) {
            Ok(creds) => {
                let n = creds.len();
                let (added, removed) = self.core.handle_reload(creds, now);
                warn!(
                    "reloaded {}: {n} accounts ({added} added, {removed} removed)",
                    path.display()
                );
            }
            Err(e) => error!("reload failed, keeping the current accounts: {e}"),
        }
    }

    /// Graceful shutdown: everyone gets `*BYE shutdown`, their logouts are journaled,
    /// output is flushed for up to `SHUTDOWN_GRACE`, and the journal is synced.
    fn shutdown(mut self) -> Result<(), RunError> {
        let start = Instant::now();
        let online = self.core.online_count();
        self.core.handle_shutdown(start);
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            self.take_verdicts(now);
            self.commit(now);
            self.flush(now);
            self.sweep();
            // A cluster node waits for the broker to take the logouts it published.
            let unacked = self.broker.as_ref().map_or(0, Broker::unacknowledged);
            if (self.conns.is_empty() && unacked == 0) || now >= start + SHUTDOWN_GRACE {
                break;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_millis(20)))
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(RunError::Poll(e));
            }
            if events.iter().any(|e| e.token() == BROKER) {
                self.broker_ready(Instant::now());
            }
        }
        if let Some(journal) = self.journal.take() {
            journal.close();
        }
        warn!(
            "shut down: {online} users told, state saved, {} connections still had unsent output",
            self.conns.len()
        );
        Ok(())
    }

    fn accept(&mut self, now: Instant) {
        while self.conns.len() < self.max_connections {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if let Some(reason) = self.refuse(peer.ip(), now) {
                        // Best effort: a fresh socket takes a short line; then close.
                        let mut line = Vec::new();
                        Push::Bye {
                            reason: reason.as_str(),
                        }
                        .encode(&mut line);
                        let _ = stream.write(&line);
                        continue;
                    }
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!("accept {peer}: TCP_NODELAY failed: {e}");
                    }
                    let key = self.conns.vacant_key();
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, Token(key), Interest::READABLE)
                    {
                        warn!("accept {peer}: register failed: {e}");
                        continue;
                    }
                    // The core's sessions and the loop's connections are inserted and
                    // removed together, so they share keys.
                    let got = self.core.handle_accept(peer, now);
                    debug_assert_eq!(got, key);
                    self.conns.insert(Conn {
                        stream,
                        ip: peer.ip(),
                        write_interest: false,
                        deferred: false,
                        transport: Transport::Unknown,
                    });
                    if let Some(e) = self.per_ip.get_mut(&peer.ip()) {
                        e.conns += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_ready = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE/ENFILE and friends: leave the backlog in the kernel and retry
                    // shortly (or as soon as a connection closes) instead of spinning.
                    warn!("accept failed: {e}; pausing accepts for 1s");
                    self.accept_retry_at = Some(now + Duration::from_secs(1));
                    return;
                }
            }
        }
        // At the connection limit: stay ready, and resume when a connection closes.
    }
}

/// Cluster mode: connects to the broker and applies the whole stream before the node
/// serves anyone (bounded by [`CLUSTER_START`]).
fn join_cluster(
    poll: &mut Poll,
    core: &mut Core,
    cc: ClusterConfig,
    now: Instant,
) -> Result<Broker, RunError> {
    let inc = incarnation();
    core.join_cluster(&cc.node, inc);
    info!(
        "joining the cluster as node {} (incarnation {inc:016x})",
        cc.node
    );
    let urls: Vec<String> = cc.urls.iter().map(|u| u.addr.clone()).collect();
    let mut broker = Broker::new(cc, inc, BROKER, now);
    let mut deadline = now + CLUSTER_START;
    let mut applied = 0;
    let mut events = Events::with_capacity(64);
    loop {
        let now = Instant::now();
        broker.commit(poll.registry(), core, now);
        if broker.applied() > applied {
            applied = broker.applied();
            deadline = now + CLUSTER_START;
        }
        if broker.caught_up() {
            info!("replica caught up at stream sequence {}", broker.applied());
            return Ok(broker);
        }
        if now >= deadline {
            return Err(RunError::Broker(format!(
                "no JetStream broker ready at {} within {CLUSTER_START:?}",
                urls.join(", ")
            )));
        }
        let wait = broker
            .next_deadline()
            .map_or(Duration::from_millis(50), |t| {
                t.saturating_duration_since(now)
            })
            .min(Duration::from_millis(50));
        if let Err(e) = poll.poll(&mut events, Some(wait))
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(RunError::Poll(e));
        }
        if events.iter().any(|e| e.token() == BROKER) {
            broker.on_event(poll.registry(), core, Instant::now());
        }
    }
}

/// A random number for this process's run of a node: records and heartbeats carry it,
/// so a restarted node is told apart from its previous run.
fn incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

/// Binds and runs; `on_listening` gets the bound address and the TLS certificate's
/// fingerprint (the binary prints them).
pub fn run(
    cfg: Config,
    credentials: Vec<Credential>,
    on_listening: impl FnOnce(SocketAddr, &str),
) -> Result<(), RunError> {
    let server = Server::bind(cfg, credentials)?;
    let addr = server.local_addr().map_err(RunError::Poll)?;
    on_listening(addr, server.tls_fingerprint());
    server.run()
}
