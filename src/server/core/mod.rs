//! The chat core: every server-side rule of the contract, with no sockets and no clock
//! of its own.
//!
//! [`Core`] is a coordinator. Each concern keeps its state in its own module, and the
//! core only routes between them:
//!
//! | module | owns |
//! |---|---|
//! | `session` | the per-connection state machine (phase, gate, liveness) |
//! | `dispatch` | parsing a frame, flood control, and the one match on (phase, request) |
//! | `outbox` | output queues, the dirty list, replies held for the journal, the slow-reader limit |
//! | `directory` | who exists, who is online and where (ghosts too) |
//! | `login` | the handshake, `USER`/`PASS`/`LOGIN`, lockouts, hash verification |
//! | `messaging` | direct messages, mailboxes, the in-flight window and acks, broadcast |
//! | `presence` | `*LOGIN`/`*LOGOUT` fan-out, `WHOELSE`/`WHOELSESINCE` |
//! | `blocking` | block lists |
//! | `private` | peer introductions and their tokens |
//! | `timers` | the timer wheel and what each timer means |
//! | `durability` | the [`Store`] seam: journal batches, restore, snapshot; the broker's batches in cluster mode |
//! | `cluster` | cluster mode: claims, the replica applied from the stream, remote introductions |
//! | `stats` | counters |
//!
//! The boundary between the loop and the core, and the order of calls, is documented
//! on [`Core`].
//!
//! Invariants:
//! - every request line gets exactly one reply (responses `PONG`/`ACK` get none);
//! - a session is closed through `Core::close` only, which is idempotent: it cancels
//!   the session's timers, logs its user out (presence, history, unacknowledged
//!   messages back to the mailbox) and lists it for the loop to sweep;
//! - a direct message is either in its recipient's mailbox or in the recipient
//!   session's in-flight window until acknowledged: closing never loses one;
//! - a session's queued output never passes `max_queued`: the session is closed first;
//! - a reply that claims durability goes out only once its journal batch is durable.

mod blocking;
mod cluster;
mod directory;
mod dispatch;
pub mod durability;
mod inflight;
mod login;
mod messaging;
pub(crate) mod outbox;
mod presence;
mod private;
pub(crate) mod session;
mod stats;
mod timers;

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{info, warn};
use slab::Slab;

use super::accounts::Credential;
use super::flood::{self, TokenBucket};
use super::mailbox::Stored;
use super::store::Recovered;
use super::verify_queue::VerifyJob;
use crate::protocol::LineDecoder;
use crate::protocol::frames::{self, ByeReason, ErrorCode, Push, Reply};
pub use cluster::{IntroAnswer, Op};
use directory::Directory;
pub use durability::Store;
use outbox::{Outbox, Output};
use session::{Gate, Liveness, Phase, Session};
pub(crate) use stats::Stats;
use timers::{TimerKind, Timers};

/// Index of an account in the directory.
pub type AccountId = u32;

/// Tunables of the chat logic (the event loop has its own).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// How long an account stays locked after the third wrong password.
    pub block_duration: Duration,
    /// Inactivity logout.
    pub timeout: Duration,
    /// Deadline for a connection to log in.
    pub login_timeout: Duration,
    /// Silence after which a `*PING` is sent.
    pub ping_interval: Duration,
    /// How long a `*PING` may go unanswered before the connection is dropped.
    pub ping_timeout: Duration,
    /// Longest request line, terminator excluded.
    pub max_line: usize,
    /// Most bytes queued for one connection before it is disconnected as a slow reader.
    pub max_queued: usize,
    /// Direct messages sent to a session and not yet acknowledged, at most.
    pub ack_window: usize,
    /// Per-recipient mailbox caps.
    pub mailbox_max_messages: usize,
    /// Bytes of message text a recipient's mailbox holds at most.
    pub mailbox_max_bytes: usize,
    /// Percent of those caps one sender may fill (100: no per-sender limit).
    pub mailbox_sender_share: u32,
    /// What a lockout applies to.
    pub lockout_scope: LockoutScope,
    /// Commands a client may send in a burst before being throttled (0: no limit).
    pub flood_burst: u32,
    /// Commands per second a client may sustain once its burst is spent.
    pub flood_rate: f64,
    /// Apply per-address limits (flood control here, per-IP in the loop) to loopback
    /// clients too; by default local clients (load tests, bots) are exempt.
    pub limit_loopback: bool,
}

/// What three wrong passwords lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockoutScope {
    /// The username, from every address (the contract's rule).
    Account,
    /// The username from that address only: an attacker elsewhere cannot lock the real
    /// user out, but one with many addresses gets three guesses per address.
    AccountIp,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            block_duration: Duration::from_secs(60),
            timeout: Duration::from_secs(600),
            login_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(30),
            max_line: frames::MAX_LINE,
            max_queued: 1 << 20,
            ack_window: 64,
            mailbox_max_messages: 10_000,
            mailbox_max_bytes: 4 << 20,
            mailbox_sender_share: 75,
            lockout_scope: LockoutScope::Account,
            flood_burst: 40,
            flood_rate: 10.0,
            limit_loopback: false,
        }
    }
}

/// Why a session ends (for logs and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The user logged out.
    Logout,
    /// The client closed the connection.
    Eof,
    /// Reading or writing the socket failed.
    IoError,
    /// Refused at login (locked, already online, a third wrong password).
    LoginFailed,
    /// No login within the deadline.
    LoginTimeout,
    /// No command within `TIMEOUT`.
    Idle,
    /// Too much output queued for a client that does not read.
    SlowReader,
    /// A ping went unanswered.
    NoPong,
    /// The server is shutting down.
    Shutdown,
    /// The account was removed from the credentials.
    Removed,
}

/// The chat core: a coordinator over the concerns' state (see the module
/// documentation for the map).
///
/// # The boundary
///
/// What comes in is a `handle_*` call, what goes out is a `poll_*` call (quinn-proto's
/// shape). The event loop calls them in this order every iteration:
///
/// 1. [`Core::handle_accept`] for each new connection, [`Core::handle_read`] with the
///    bytes read from a connection (only while [`Core::wants_read`]), and
///    [`Core::handle_closed`] when a socket reports end of stream or an error;
///    [`Core::handle_writable`] when a socket can take more output;
///    [`Core::handle_verdict`] for each password verdict, [`Core::handle_reload`] and
///    [`Core::handle_shutdown`] for signals;
/// 2. [`Core::handle_timeout`] with the current time (due timers fire);
/// 3. [`Core::poll_verify`] (jobs for the idle verifier threads) and
///    [`Core::poll_resumed`] (connections to read again);
/// 4. [`Core::poll_batch`] (the journal batch of this iteration; hand it to the writer,
///    which numbers batches 1, 2, 3 ...) and [`Core::handle_durable`] (batches up to
///    a number are stored; releases held replies), [`Core::handle_store_health`];
///    in cluster mode [`Core::poll_cluster`] instead of `poll_batch` (the broker
///    connection reports durability the same way), and whatever the broker delivered:
///    [`Core::handle_cluster_record`], [`Core::handle_claim_conflict`],
///    [`Core::handle_cluster_broadcast`], [`Core::handle_intro_request`] /
///    [`Core::handle_intro_answer`], [`Core::handle_node_gone`];
/// 5. [`Core::poll_transmit`]: every connection with output, once;
/// 6. [`Core::poll_closed`]: connections to deregister and drop;
/// 7. [`Core::poll_timeout`]: when to call [`Core::handle_timeout`] next.
///
/// Time is always passed in, so tests drive the core with a fake clock and no sockets
/// ([`Core::settle_without_io`] does steps 2-6 for a driver that has no sockets).
///
pub struct Core {
    cfg: CoreConfig,
    sessions: Slab<Session>,
    dir: Directory,
    outbox: Outbox,
    login: login::Login,
    messaging: messaging::Messaging,
    blocking: blocking::Blocking,
    private: private::Introductions,
    timers: Timers,
    store: durability::Durability,
    /// Cluster mode (`None`: a single node).
    cluster: Option<Box<cluster::Cluster>>,
    stats: Stats,
    /// Sessions closed since the last sweep.
    closing: Vec<usize>,
    /// Sessions whose input resumed: the loop reads their sockets again.
    resumed: Vec<(usize, u64)>,
    next_serial: u64,
    software: String,
}

/// Who is asking, for handlers of a logged-in user's requests.
#[derive(Debug, Clone, Copy)]
struct Cx {
    key: usize,
    account: AccountId,
    now: Instant,
}

impl Core {
    /// A core for these accounts; `store` is where durable changes go.
    pub fn new(
        credentials: Vec<Credential>,
        cfg: CoreConfig,
        store: Box<dyn Store>,
        now: Instant,
    ) -> Core {
        Core {
            outbox: Outbox::new(cfg.max_queued),
            login: login::Login::new(&cfg),
            messaging: messaging::Messaging::new(&cfg),
            blocking: blocking::Blocking::default(),
            private: private::Introductions::new(),
            timers: Timers::new(now),
            store: durability::Durability::new(store, now),
            dir: Directory::new(credentials),
            cluster: None,
            sessions: Slab::new(),
            stats: Stats::default(),
            closing: Vec::new(),
            resumed: Vec::new(),
            next_serial: 1,
            software: format!("natterd/{}", env!("CARGO_PKG_VERSION")),
            cfg,
        }
    }

    /// A core that keeps everything in memory (benches, tests).
    pub fn in_memory(credentials: Vec<Credential>, cfg: CoreConfig, now: Instant) -> Core {
        Core::new(credentials, cfg, Box::new(durability::InMemory), now)
    }

    /// Makes this core one node of a cluster: node `name`, this process's incarnation
    /// `inc` (random per start). Shared state then comes from the stream
    /// ([`Core::handle_cluster_record`]) and durable changes go to it
    /// ([`Core::poll_cluster`]); lockouts are per account.
    pub fn join_cluster(&mut self, name: &str, inc: u64) {
        self.cluster = Some(Box::new(cluster::Cluster::new(name, inc)));
        self.store.set_clustered();
        self.cfg.lockout_scope = LockoutScope::Account;
        self.login = login::Login::new(&self.cfg);
    }

    /// The configuration the core runs with.
    #[cfg(test)]
    pub(crate) fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    #[cfg(test)]
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Users logged in now.
    pub fn online_count(&self) -> usize {
        self.dir.online().len()
    }

    // ---- what comes in ----------------------------------------------------------

    /// A new connection from `peer`: arms its login deadline and liveness check and
    /// returns its key (the loop's table uses the same key).
    pub fn handle_accept(&mut self, peer: SocketAddr, now: Instant) -> usize {
        let serial = self.next_serial;
        self.next_serial += 1;
        let key = self.sessions.vacant_key();
        let stamp = self.timers.stamp(now);
        let deadline = stamp.after(self.cfg.login_timeout);
        let live_due = stamp.after(self.cfg.ping_interval);
        let timer = self
            .timers
            .insert_stamp(deadline.min(live_due), TimerKind::Session { key, serial });
        let got = self.sessions.insert(Session {
            ip: peer.ip(),
            serial,
            output: Output::default(),
            decoder: LineDecoder::default(),
            phase: Phase::Hello { deadline },
            gate: Gate::Open,
            live: Liveness {
                last_rx: stamp,
                due: live_due,
                ping_seq: 0,
                awaiting: false,
            },
            timer: Some(timer),
            tokens: TokenBucket::full(self.flood_rate(), stamp),
        });
        debug_assert_eq!(got, key);
        self.stats.accepted += 1;
        key
    }

    /// Bytes read from connection `key`.
    pub fn handle_read(&mut self, key: usize, data: &[u8], now: Instant) {
        dispatch::feed(self, key, data, now);
    }

    /// The connection's socket ended (`Eof`) or failed (`IoError`).
    pub fn handle_closed(&mut self, key: usize, reason: CloseReason, now: Instant) {
        self.close(key, reason, now);
    }

    /// The connection's socket can take more output.
    pub fn handle_writable(&mut self, key: usize) {
        if let Some(s) = self.sessions.get_mut(key) {
            self.outbox.mark_dirty(key, &mut s.output);
        }
    }

    /// Fires due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        self.timers.expire(now, |t| due.push(t));
        for t in due {
            timers::fire(self, t, now);
        }
        self.reap_overflowed(now);
    }

    /// The verdict on a hashed password (from the verifier threads, via the loop).
    pub fn handle_verdict(&mut self, key: usize, serial: u64, ok: bool, now: Instant) {
        login::verdict(self, key, serial, ok, now);
    }

    /// Journal batches up to `seq` are durable: releases the replies held for them.
    pub fn handle_durable(&mut self, seq: u64) {
        self.outbox
            .release(seq, &mut self.sessions, &mut self.resumed);
    }

    /// Whether the store can take writes: while it cannot, new messages are refused.
    pub fn handle_store_health(&mut self, ok: bool) {
        self.store.set_healthy(ok);
    }

    /// A new credentials list (SIGHUP): new users can log in, changed passwords apply
    /// to the next login, removed users are logged out (`*BYE removed`) and become
    /// ghosts, so their stored messages are kept. Returns (added, removed).
    pub fn handle_reload(&mut self, credentials: Vec<Credential>, now: Instant) -> (usize, usize) {
        let (added, removed) = self.dir.reload(&credentials);
        for &id in &removed {
            if let Some(key) = self.dir.locate(id) {
                info!(
                    "conn {key}: user {} removed from the credentials, logging out",
                    self.dir.name(id)
                );
                self.bye(key, ByeReason::Removed, CloseReason::Removed, now);
            }
        }
        self.stats.reloads += 1;
        (added, removed.len())
    }

    /// Tells every connection the server is going away and closes them all.
    pub fn handle_shutdown(&mut self, now: Instant) {
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.bye(key, ByeReason::Shutdown, CloseReason::Shutdown, now);
        }
    }

    /// Cluster mode: a record from the stream, with its stream sequence, in order.
    pub fn handle_cluster_record(
        &mut self,
        seq: u64,
        rec: crate::server::cluster::record::Rec,
        now: Instant,
    ) {
        if self.cluster.is_some() {
            cluster::apply(self, seq, rec, now);
            self.reap_overflowed(now);
        }
    }

    /// Cluster mode: the broker refused login claim `serial` because the user's last
    /// record is no longer the one the claim expected; `current` is what is there now.
    pub fn handle_claim_conflict(
        &mut self,
        serial: u64,
        current: Option<(u64, crate::server::cluster::record::Rec)>,
        now: Instant,
    ) {
        if self.cluster.is_some() {
            cluster::claim_conflict(self, serial, current, now);
        }
    }

    /// Cluster mode: a broadcast from some node (this one included).
    pub fn handle_cluster_broadcast(&mut self, from: &str, text: &str, now: Instant) {
        if self.cluster.is_some() {
            cluster::broadcast_in(self, from, text);
            self.reap_overflowed(now);
        }
    }

    /// Cluster mode: another node asks to introduce `from` to this node's user `to`.
    pub fn handle_intro_request(&mut self, from: &str, to: &str, key: &str) -> IntroAnswer {
        if self.cluster.is_none() {
            return IntroAnswer::Offline;
        }
        cluster::intro_request(self, from, to, key)
    }

    /// Cluster mode: the answer to introduction `id` ([`Op::Intro`]).
    pub fn handle_intro_answer(&mut self, id: u64, answer: IntroAnswer, now: Instant) {
        if self.cluster.is_some() {
            cluster::intro_answer(self, id, answer, now);
        }
    }

    /// Cluster mode: the answer to probe `id` ([`Op::Probe`]): whether that node is
    /// still connected to the broker.
    pub fn handle_probe_answer(&mut self, id: u64, alive: bool, now: Instant) {
        if self.cluster.is_some() {
            cluster::probe_answer(self, id, alive, now);
        }
    }

    /// Cluster mode: node incarnation `inc` stopped (no heartbeat): its users are
    /// logged out.
    pub fn handle_node_gone(&mut self, inc: u64, now: Instant) {
        if self.cluster.is_some() {
            cluster::node_gone(self, inc, now);
        }
    }

    /// Cluster mode: the node incarnations that have users online, as this replica
    /// knows (the broker connection watches their heartbeats).
    pub fn cluster_incarnations(&self) -> Vec<(u64, Box<str>)> {
        self.cluster
            .as_deref()
            .map(|c| c.incarnations().map(|(i, n)| (i, n.into())).collect())
            .unwrap_or_default()
    }

    /// Cluster mode: the lowest message id not yet acknowledged, as far as this replica
    /// knows (every undelivered message is in some mailbox of the replica or in one of
    /// this node's in-flight windows): every message below it has been received, so the
    /// stream may drop it. `u64::MAX` if nothing is waiting.
    pub fn mail_watermark(&self) -> u64 {
        let mailboxes = self
            .messaging
            .mailboxes
            .values()
            .filter_map(|m| m.front_id());
        let inflight = self.sessions.iter().filter_map(|(_, s)| match &s.phase {
            session::Phase::Active(a) => a.inflight.iter().next().map(|e| e.id),
            _ => None,
        });
        mailboxes.chain(inflight).min().unwrap_or(u64::MAX)
    }

    /// Cluster mode: this iteration's batch for the broker, numbered like journal
    /// batches (report it with [`Core::handle_durable`] once every record in it is
    /// acknowledged).
    pub fn poll_cluster(&mut self, now: Instant) -> Option<(u64, Vec<Op>)> {
        if let Some(c) = self.cluster.as_deref()
            && c.acks_due().is_some_and(|t| t <= now)
        {
            cluster::flush_acks(self, None);
        }
        self.store.take_ops()
    }

    /// Loads the state recovered from a journal: mailboxes, blocks, history, lockouts.
    pub fn restore(&mut self, rec: Recovered, now: Instant) {
        durability::restore(self, rec, now);
    }

    /// Encodes the whole durable state as journal records (a compaction snapshot).
    pub fn snapshot(&self, now: Instant, out: &mut Vec<u8>) {
        durability::snapshot(self, now, out);
    }

    // ---- what goes out ----------------------------------------------------------

    /// Whether the loop should read connection `key` (false while its input is paused
    /// or it is closing; the loop reads it again once [`Core::poll_resumed`] lists it).
    pub fn wants_read(&self, key: usize) -> bool {
        self.sessions
            .get(key)
            .is_some_and(|s| !s.is_closing() && !s.input_paused())
    }

    /// A connection whose input resumed (read it again), with its serial.
    pub fn poll_resumed(&mut self) -> Option<(usize, u64)> {
        self.resumed.pop()
    }

    /// Whether `key` is still the connection with this serial.
    pub fn is_current(&self, key: usize, serial: u64) -> bool {
        self.sessions.get(key).is_some_and(|s| s.serial == serial)
    }

    /// The serial of connection `key`.
    pub fn serial(&self, key: usize) -> Option<u64> {
        self.sessions.get(key).map(|s| s.serial)
    }

    /// Password hashes to verify, at most `free` (the idle verifier threads).
    pub fn poll_verify(&mut self, free: usize, now: Instant) -> Vec<VerifyJob> {
        login::take_jobs(self, free, now)
    }

    /// The records of this iteration, to submit to the journal (numbered 1, 2, 3 ...
    /// in the order taken).
    pub fn poll_batch(&mut self) -> Option<Vec<u8>> {
        self.store.take_batch()
    }

    /// Hands every connection with output to `write` once: it gets the bytes pending
    /// and returns how many the socket took (or an error, which closes the
    /// connection). Repeats while closing a connection queued output for others.
    pub fn poll_transmit(
        &mut self,
        mut write: impl FnMut(usize, &[u8]) -> io::Result<usize>,
        now: Instant,
    ) {
        // Sessions deferred last time are offered again (still flagged dirty).
        let mut deferred = self.outbox.take_deferred();
        while self.outbox.has_dirty() || !deferred.is_empty() {
            let mut dirty = self.outbox.take_dirty();
            dirty.append(&mut deferred);
            let mut failed = Vec::new();
            for &key in &dirty {
                let Some(s) = self.sessions.get_mut(key) else {
                    continue;
                };
                if !s.is_closing()
                    && let Some(until) = s.output.defer_pushes(now)
                {
                    self.outbox.defer(key, until);
                    continue;
                }
                Outbox::clear_dirty(&mut s.output);
                match write(key, s.output.out.pending()) {
                    Ok(n) => s.output.out.consume(n),
                    Err(e) => {
                        log::debug!("conn {key}: write error: {e}");
                        s.output.out.clear();
                        failed.push(key);
                    }
                }
            }
            self.outbox.flushed(dirty);
            for key in failed {
                self.close(key, CloseReason::IoError, now);
            }
        }
    }

    /// A closed connection whose output is done (or abandoned): the loop deregisters
    /// and drops its socket; the core has forgotten it. Returns its key.
    pub fn poll_closed(&mut self) -> Option<usize> {
        while let Some(key) = self.closing.pop() {
            match self.sessions.get(key) {
                Some(s) if s.output.is_held() => {
                    // Its last replies wait for the journal: swept once released.
                    self.closing.insert(0, key);
                    return None;
                }
                Some(_) => {
                    self.sessions.remove(key);
                    return Some(key);
                }
                None => {}
            }
        }
        None
    }

    /// When [`Core::handle_timeout`] is next due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let acks = self.cluster.as_deref().and_then(cluster::Cluster::acks_due);
        let timers = [self.timers.next_deadline(), acks]
            .into_iter()
            .flatten()
            .min();
        match (timers, self.outbox.deferred_until()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Drives the core with no sockets (benches, fuzzing): fires timers, makes every
    /// journal batch durable at once, fails every password verification, pretends every
    /// byte was written, and forgets closed connections.
    pub fn settle_without_io(&mut self, now: Instant) {
        self.handle_timeout(now);
        for job in self.poll_verify(usize::MAX, now) {
            self.handle_verdict(job.key, job.serial, false, now);
        }
        while self.poll_batch().is_some() {}
        self.handle_durable(u64::MAX);
        self.poll_transmit(|_, b| Ok(b.len()), now);
        while self.poll_resumed().is_some() {}
        while self.poll_closed().is_some() {}
    }

    /// Gives back the buffers of connections with nothing pending (the loop calls this
    /// when it goes quiet): an idle connection then holds no buffer at all.
    pub fn release_buffers(&mut self) {
        for (_, s) in self.sessions.iter_mut() {
            s.shrink();
        }
    }

    /// One line for operators: connections, users, traffic, queues and limit hits.
    pub fn stats_line(&self) -> String {
        let queued: usize = self.sessions.iter().map(|(_, s)| s.output.out.len()).sum();
        stats::line(
            &self.stats,
            self.sessions.len(),
            self.dir.online().len(),
            queued,
            self.login.verify_queued(),
        )
    }

    // ---- shared by the concerns -------------------------------------------------

    fn flood_rate(&self) -> flood::Rate {
        flood::Rate {
            burst: f64::from(self.cfg.flood_burst),
            per_sec: self.cfg.flood_rate,
        }
    }

    /// The session `key` if it is still the one with `serial` and not closing.
    fn session_if(&mut self, key: usize, serial: u64) -> Option<&mut Session> {
        session::current(&mut self.sessions, key, serial)
    }

    /// Appends a push to session `key` (nothing for a closing one).
    fn push(&mut self, key: usize, f: impl FnOnce(&mut Vec<u8>)) {
        if let Some(s) = self.sessions.get_mut(key)
            && !s.is_closing()
        {
            self.outbox.push(key, &mut s.output, f);
        }
    }

    /// Queues a reply; `durable`: it claims a change the current batch stores, and
    /// waits until that batch is durable.
    fn emit_reply(&mut self, key: usize, durable: bool, f: impl FnOnce(&mut Vec<u8>)) {
        let seq = if durable { self.store.hold_seq() } else { None };
        if let Some(s) = self.sessions.get_mut(key)
            && !s.is_closing()
        {
            self.outbox.reply(key, s.serial, &mut s.output, seq, f);
        }
    }

    fn reply(&mut self, key: usize, r: Reply<'_>) {
        self.emit_reply(key, false, |out| r.encode(out));
    }

    /// A reply that claims a change is stored: sent once the current batch is durable.
    fn reply_durable(&mut self, key: usize, r: Reply<'_>) {
        self.emit_reply(key, true, |out| r.encode(out));
    }

    fn error(&mut self, key: usize, code: ErrorCode, arg: &str) {
        self.emit_reply(key, false, |out| frames::encode_error(out, code, arg));
    }

    /// `*BYE <reason>`, then closes: the one way the server hangs up on a client.
    fn bye(&mut self, key: usize, reason: ByeReason, close: CloseReason, now: Instant) {
        self.push(key, |out| {
            Push::Bye {
                reason: reason.as_str(),
            }
            .encode(out)
        });
        self.close(key, close, now);
    }

    /// Closes sessions that overflowed their output queue.
    fn reap_overflowed(&mut self, now: Instant) {
        while let Some(key) = self.outbox.pop_overflowed() {
            if self.sessions.get(key).is_some_and(|s| !s.is_closing()) {
                self.stats.slow_reader_kills += 1;
                warn!(
                    "conn {key}: output queue over {} bytes, disconnecting slow reader",
                    self.cfg.max_queued
                );
                self.close(key, CloseReason::SlowReader, now);
            }
        }
    }

    /// Ends a session: the one close path. Safe to call twice.
    fn close(&mut self, key: usize, reason: CloseReason, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.is_closing() {
            return;
        }
        if let Some(t) = s.timer.take() {
            self.timers.cancel(t);
        }
        if reason == CloseReason::SlowReader {
            // Nothing more will be read by it; what was queued as direct messages is
            // still in the in-flight window and goes back to the mailbox below.
            s.output.out.clear();
        }
        if let Gate::Verifying { account, .. } = s.gate {
            // Never hashed for a connection that is gone.
            self.login.cancel(key, s.serial, account);
        }
        if let (Gate::Cluster, Some(c)) = (s.gate, self.cluster.as_deref_mut()) {
            c.cancel(s.serial);
        }
        let phase = std::mem::replace(&mut s.phase, Phase::Closing);
        s.decoder = LineDecoder::default();
        self.outbox.mark_dirty(key, &mut s.output);
        self.closing.push(key);
        self.stats.closed += 1;
        match phase {
            Phase::Hello { .. } | Phase::Login { .. } | Phase::Closing => {}
            Phase::Active(a) => {
                let at = self.store.wall_ms(now);
                info!(
                    "conn {key}: user {} logged out ({reason:?})",
                    self.dir.name(a.account)
                );
                self.dir.set_offline(a.account, at);
                self.store.logout(self.dir.name(a.account), at);
                self.messaging.give_back(a.account, a.inflight);
                if self.cluster.is_some() {
                    // Announced everywhere when the logout comes back from the stream.
                    cluster::flush_acks(self, Some(a.account));
                    return cluster::logged_out(self, a.account, at);
                }
                presence::announce(self, a.account, false);
            }
        }
    }
}
