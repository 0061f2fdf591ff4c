//! The chat state and every server-side rule of the contract, without sockets.
//!
//! The [`Hub`] owns the sessions (a `slab`, keyed by the connection's token), the
//! accounts, the offline mailboxes and the timer wheel. The event loop feeds it bytes
//! and the current time; the hub answers by appending frames to sessions' output
//! queues and listing which sessions are dirty (have output to flush) or closing.
//! Being generic over the socket type `S` is what lets the benches route messages
//! through the real state with no sockets at all.
//!
//! Invariants:
//! - every request line gets exactly one reply (responses `PONG`/`ACK` get none);
//! - a session is closed through [`Hub::close`] only, which is idempotent: it cancels
//!   the session's timers, logs its user out (presence, history, unacknowledged
//!   messages back to the mailbox) and lists the key for the loop to sweep;
//! - a direct message is either in its recipient's mailbox or in the recipient
//!   session's in-flight window until acknowledged: closing never loses one;
//! - a session's queued output never passes `max_queued`: the session is closed first;
//! - with a journal, every state change is encoded into the current batch as it
//!   happens, and a reply that claims durability (`+SENT`, `+STORED`, `+BLOCKED`, ...)
//!   holds its session's output until the loop reports that batch durable.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::{info, warn};
use slab::Slab;

use super::accounts::{self, Credential};
use super::flood::{Rate, TokenBucket};
use super::mailbox::{Caps, Mailbox, Stored};
use super::store::{self, Record, Recovered};
use super::timer::{TimerHandle, TimerWheel};
pub use super::verify_queue::VerifyJob;
use super::verify_queue::VerifyQueue;
use crate::protocol::frames::{
    self, ByeReason, ErrorCode, PROTOCOL_VERSION, Push, Reply, Request, RequestError,
};
use crate::protocol::{Flow, Frame, LineDecoder, OutBuf};

/// Index of an account in the credentials.
pub type AccountId = u32;

/// Tunables of the chat logic (the event loop has its own).
#[derive(Debug, Clone)]
pub struct HubConfig {
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

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
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

/// Counters for operators and benchmarks.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub accepted: u64,
    pub closed: u64,
    pub logins: u64,
    pub failed_logins: u64,
    pub lockouts: u64,
    pub direct_delivered: u64,
    pub stored: u64,
    pub broadcast_deliveries: u64,
    pub mailbox_full: u64,
    pub too_long: u64,
    pub slow_reader_kills: u64,
    pub dead_peer_kills: u64,
    pub login_timeouts: u64,
    pub idle_logouts: u64,
    pub store_refused: u64,
    pub flood_throttled: u64,
    pub per_ip_refused: u64,
    pub rate_refused: u64,
    pub hash_verifications: u64,
    /// Logins refused because the verification queue was full.
    pub verify_refused: u64,
    pub reloads: u64,
}

#[derive(Debug)]
struct Account {
    name: Box<str>,
    /// Plain text or a hash (see `accounts`); shared with verifier jobs.
    password: Arc<str>,
    /// Failures and lockout of the username (scope `Account`).
    lock: LockState,
    /// The logged-in session, if any.
    session: Option<usize>,
    /// Position in `Hub::online` while logged in.
    online_pos: usize,
    /// Accounts this user has blocked.
    blocks: HashSet<AccountId>,
    mailbox: Mailbox,
    /// Last time seen online (a logout; or a login when the server stopped), in Unix ms.
    last_seen: Option<u64>,
    /// Known only from the journal, not in the credentials: it cannot log in and is
    /// invisible, but its stored messages and the messages it sent are kept.
    ghost: bool,
}

/// Wrong passwords and the lockout they lead to, for a username or a (username,
/// address) pair depending on the scope.
#[derive(Debug, Default, Clone, Copy)]
struct LockState {
    /// Consecutive wrong passwords since the last success or lockout.
    failures: u8,
    locked_until: Option<Instant>,
    last_failure: Option<Instant>,
}

impl Account {
    fn new(name: Box<str>, password: Arc<str>) -> Account {
        Account {
            name,
            password,
            lock: LockState::default(),
            session: None,
            online_pos: 0,
            blocks: HashSet::new(),
            mailbox: Mailbox::default(),
            last_seen: None,
            ghost: false,
        }
    }
}

/// Why a session ends (for logs and counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Logout,
    Eof,
    IoError,
    LoginFailed,
    LoginTimeout,
    Idle,
    SlowReader,
    NoPong,
    Shutdown,
    Removed,
}

#[derive(Debug)]
struct ActiveState {
    account: AccountId,
    last_activity: Instant,
    peer_port: Option<u16>,
    inflight: VecDeque<Stored>,
    idle_timer: Option<TimerHandle>,
    /// Private introductions this user may still ask for (see [`INTRO_RATE`]).
    intros: TokenBucket,
}

/// Private introductions one user may request: each puts a token in the target's
/// client table for 30 s, so one user asking in a loop must not crowd out the others.
const INTRO_RATE: Rate = Rate {
    burst: 8.0,
    per_sec: 8.0 / 30.0,
};

#[derive(Debug)]
enum Phase {
    /// Waiting for `HELLO`.
    Hello,
    /// Handshake done, waiting for a successful `LOGIN` (or `USER` then `PASS`);
    /// `user` is the account a `USER` named, whose password a `PASS` gives.
    Login {
        user: Option<AccountId>,
    },
    Active(ActiveState),
    /// Closed by the hub; waiting for the loop to flush and sweep it.
    Closing,
}

/// One connection as the hub sees it.
#[derive(Debug)]
pub struct Session<S> {
    /// The socket (or `()` in benches).
    pub io: S,
    pub peer: SocketAddr,
    /// Unique for the life of the process: stale timers and backlog entries carry it.
    pub serial: u64,
    /// Whether the loop registered write interest (maintained by the loop).
    pub write_interest: bool,
    pub out: OutBuf,
    decoder: LineDecoder,
    phase: Phase,
    dirty: bool,
    last_rx: Instant,
    ping_seq: u64,
    ping_sent: Option<Instant>,
    live_timer: Option<TimerHandle>,
    login_timer: Option<TimerHandle>,
    /// Replies waiting for their journal batch to be durable (pushes never wait).
    held: Held,
    /// Whether requests are handled now, or wait (input stays in the decoder).
    gate: Gate,
    /// Flood-control tokens (commands), refilled at `flood_rate` up to `flood_burst`.
    tokens: TokenBucket,
    /// A `LOGIN` whose password hash is being verified off the loop.
    pending_login: Option<(AccountId, Option<u16>)>,
}

/// Replies held until the journal batch they depend on is durable. A reply that
/// claims durability (`+SENT`, `+BLOCKED`, ...) waits for its batch; every reply after
/// it waits too, since replies keep request order; pushes go out meanwhile (the
/// protocol lets them come between a request and its reply), so a session whose reply
/// waits on a failing disk still gets its messages, presence and pings.
#[derive(Debug, Default)]
struct Held {
    buf: Vec<u8>,
    /// (batch sequence number, end of the replies in `buf` that wait for it), in order.
    marks: VecDeque<(u64, usize)>,
}

/// Bytes of held replies past which a session's input is paused: a client that keeps
/// sending while the disk fails cannot make the server hold more.
const HELD_MAX: usize = 64 << 10;

impl Held {
    /// Appends a reply; `seq` is the batch it waits for, or `None` if it only waits
    /// for the replies before it.
    fn push(&mut self, seq: Option<u64>, f: impl FnOnce(&mut Vec<u8>)) {
        f(&mut self.buf);
        let end = self.buf.len();
        match (seq, self.marks.back_mut()) {
            (Some(seq), Some(last)) if last.0 == seq => last.1 = end,
            (Some(seq), _) => self.marks.push_back((seq, end)),
            (None, Some(last)) => last.1 = end,
            (None, None) => unreachable!("a reply is held only behind a held one"),
        }
    }

    /// Moves the replies whose batches are durable up to `seq` into `out`; returns
    /// whether any moved.
    fn release(&mut self, seq: u64, out: &mut OutBuf) -> bool {
        let mut end = 0;
        while let Some(&(s, e)) = self.marks.front() {
            if s > seq {
                break;
            }
            end = e;
            self.marks.pop_front();
        }
        if end == 0 {
            return false;
        }
        out.tail().extend_from_slice(&self.buf[..end]);
        self.buf.drain(..end);
        for m in &mut self.marks {
            m.1 -= end;
        }
        if self.marks.is_empty() {
            self.buf = Vec::new();
        }
        true
    }
}

/// Whether a session's requests are handled now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    /// Waiting for the password hash verification of its `LOGIN`.
    Verifying,
    /// Over the flood limit: resumes when a token is back.
    Throttled,
}

impl<S> Session<S> {
    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing)
    }

    /// Whether replies wait for a journal batch to be durable.
    pub fn is_held(&self) -> bool {
        !self.held.marks.is_empty()
    }

    /// Whether the session's input waits (verification, flood control, too many
    /// replies held for the disk): the loop stops reading its socket until the hub
    /// lists it in [`Hub::take_resumed`].
    pub fn input_paused(&self) -> bool {
        self.gate != Gate::Open || self.decoder.is_paused() || self.held.buf.len() > HELD_MAX
    }

    /// The logged-in account, if any.
    pub fn account(&self) -> Option<AccountId> {
        match &self.phase {
            Phase::Active(a) => Some(a.account),
            _ => None,
        }
    }

    /// Releases idle buffers (called when the connection has been quiet).
    fn shrink(&mut self) {
        self.decoder.shrink();
        self.out.shrink(0);
    }
}

#[derive(Debug, Clone, Copy)]
enum TimerKind {
    Login {
        key: usize,
        serial: u64,
    },
    Idle {
        key: usize,
        serial: u64,
    },
    Live {
        key: usize,
        serial: u64,
    },
    Lockout {
        account: AccountId,
        ip: Option<IpAddr>,
    },
    /// A throttled session gets a token back.
    Resume {
        key: usize,
        serial: u64,
    },
}

/// The chat state.
pub struct Hub<S> {
    pub sessions: Slab<Session<S>>,
    accounts: Vec<Account>,
    /// Name lookups happen on every request: foldhash (randomly seeded per process) is
    /// several times faster than SipHash, and peers cannot insert keys, only look up.
    by_name: foldhash::HashMap<Box<str>, AccountId>,
    /// Ghost accounts by name (never looked up by peers: restore and reload only).
    ghosts: HashMap<Box<str>, AccountId>,
    /// Logged-in accounts, unordered (swap-remove; `Account::online_pos` indexes it).
    online: Vec<AccountId>,
    cfg: HubConfig,
    mailbox_caps: Caps,
    origin: Instant,
    /// Wall-clock time at `origin`, in Unix ms (history and lockouts are stored in it).
    origin_wall: u64,
    timers: TimerWheel<TimerKind>,
    dirty: Vec<usize>,
    closing: Vec<usize>,
    /// Sessions that passed `max_queued` during fan-out, closed once the request is done.
    overflowed: Vec<usize>,
    next_msg_id: u64,
    next_serial: u64,
    token_keys: std::collections::hash_map::RandomState,
    token_counter: u64,
    software: String,
    /// The journal batch being built (`None`: in-memory, nothing is journaled).
    journal: Option<Vec<u8>>,
    /// Sequence number the current batch gets when the loop submits it.
    batch_seq: u64,
    /// Sessions whose output is held for a batch: (key, serial).
    held: Vec<(usize, u64)>,
    /// False while the journal cannot write: new messages are refused.
    store_ok: bool,
    /// Lock states per (account, address) under `LockoutScope::AccountIp`.
    ip_locks: HashMap<(AccountId, IpAddr), LockState>,
    /// Hash verifications for the loop to hand to the verifier threads.
    verify_queue: VerifyQueue,
    /// Sessions whose input resumed: the loop reads their sockets again.
    resumed: Vec<(usize, u64)>,
    pub stats: Stats,
}

/// Appends a record to the journal batch, if journaling. A free function so callers
/// can borrow names from the accounts while the batch is borrowed mutably.
fn log_rec(journal: &mut Option<Vec<u8>>, rec: Record<'_>) {
    if let Some(buf) = journal {
        rec.encode(buf);
    }
}

/// Bookkeeping after output was appended to session `key`: list it for the flush once,
/// and for closing as a slow reader if its queue passed `max_queued`. A free function so
/// fan-out loops can call it while borrowing the accounts.
fn after_append<S>(
    s: &mut Session<S>,
    key: usize,
    dirty: &mut Vec<usize>,
    overflowed: &mut Vec<usize>,
    max_queued: usize,
) {
    if !s.dirty {
        s.dirty = true;
        dirty.push(key);
    }
    if s.out.len() > max_queued {
        overflowed.push(key);
    }
}

impl<S> Hub<S> {
    pub fn new(credentials: Vec<Credential>, cfg: HubConfig, now: Instant) -> Self {
        let mut by_name = foldhash::HashMap::with_capacity_and_hasher(
            credentials.len(),
            foldhash::fast::RandomState::default(),
        );
        let accounts = credentials
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                by_name.insert(c.name.clone().into_boxed_str(), i as AccountId);
                Account::new(c.name.into_boxed_str(), c.password.into())
            })
            .collect();
        Hub {
            sessions: Slab::new(),
            accounts,
            by_name,
            ghosts: HashMap::new(),
            online: Vec::new(),
            mailbox_caps: Caps {
                max_messages: cfg.mailbox_max_messages,
                max_bytes: cfg.mailbox_max_bytes,
                sender_share: cfg.mailbox_sender_share,
            },
            cfg,
            origin: now,
            origin_wall: store::unix_ms(SystemTime::now()),
            timers: TimerWheel::new(now, Duration::from_millis(100), 1024),
            dirty: Vec::new(),
            closing: Vec::new(),
            overflowed: Vec::new(),
            next_msg_id: 1,
            next_serial: 1,
            token_keys: std::collections::hash_map::RandomState::new(),
            token_counter: 0,
            software: format!("natterd/{}", env!("CARGO_PKG_VERSION")),
            journal: None,
            batch_seq: 1,
            held: Vec::new(),
            store_ok: true,
            ip_locks: HashMap::new(),
            verify_queue: VerifyQueue::default(),
            resumed: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Gives back the buffers of connections with nothing pending (the loop calls this
    /// when it goes quiet): an idle connection then holds no buffer at all.
    pub fn release_buffers(&mut self) {
        for (_, s) in self.sessions.iter_mut() {
            s.shrink();
        }
    }

    /// Wall-clock time of `now`, in Unix ms.
    fn wall_ms(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_millis();
        self.origin_wall.saturating_add(since as u64)
    }

    /// Starts encoding every state change into journal batches (see [`Hub::take_batch`]).
    pub fn enable_journal(&mut self) {
        self.journal.get_or_insert_with(Vec::new);
    }

    /// Takes the records encoded since the last call, if any; the loop must submit
    /// them to the journal, which numbers them with the next sequence number.
    pub fn take_batch(&mut self) -> Option<Vec<u8>> {
        let buf = self.journal.as_mut().filter(|b| !b.is_empty())?;
        let cap = buf.capacity().min(1 << 20);
        self.batch_seq += 1;
        Some(std::mem::replace(buf, Vec::with_capacity(cap)))
    }

    /// Journal batches up to `seq` are durable: release the replies held for them.
    pub fn set_durable(&mut self, seq: u64) {
        let mut held = std::mem::take(&mut self.held);
        held.retain(|&(key, serial)| match self.sessions.get_mut(key) {
            Some(s) if s.serial == serial && s.is_held() => {
                let was_paused = s.input_paused();
                if s.held.release(seq, &mut s.out) {
                    if !s.dirty {
                        s.dirty = true;
                        self.dirty.push(key);
                    }
                    if was_paused && !s.input_paused() && !s.is_closing() {
                        self.resumed.push((key, serial));
                    }
                }
                s.is_held()
            }
            _ => false,
        });
        self.held = held;
    }

    /// Whether the journal can store: while it cannot, new messages are refused.
    pub fn set_store_ok(&mut self, ok: bool) {
        self.store_ok = ok;
    }

    /// Queues a reply: straight to the output, unless it must wait for the journal
    /// (`durable`: it claims a change the current batch stores) or earlier replies
    /// wait (replies keep request order).
    fn emit_reply(&mut self, key: usize, durable: bool, f: impl FnOnce(&mut Vec<u8>)) {
        let seq = (durable && self.journal.is_some()).then_some(self.batch_seq);
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.is_closing() {
            return;
        }
        if seq.is_none() && !s.is_held() {
            return self.emit(key, f);
        }
        if !s.is_held() {
            self.held.push((key, s.serial));
        }
        s.held.push(seq, f);
    }

    /// Puts a closed session back on the closing list (its output is still held).
    pub fn defer_sweep(&mut self, key: usize) {
        self.closing.push(key);
    }

    /// Loads the state recovered from a journal: mailboxes, blocks, history, lockouts.
    /// Users the credentials no longer list become ghosts, so nothing stored is lost.
    pub fn restore(&mut self, rec: Recovered, now: Instant) {
        self.next_msg_id = self.next_msg_id.max(rec.next_id);
        let now_ms = self.wall_ms(now);
        let mut ghosts = 0;
        for (name, user) in &rec.users {
            let id = self.id_or_ghost(name);
            let blocks: Vec<AccountId> = user.blocks.iter().map(|b| self.id_or_ghost(b)).collect();
            let mailbox: Vec<Stored> = user
                .mailbox
                .iter()
                .map(|m| Stored {
                    id: m.id,
                    from: self.id_or_ghost(&m.from),
                    text: m.text.as_str().into(),
                })
                .collect();
            let a = &mut self.accounts[id as usize];
            ghosts += usize::from(a.ghost);
            a.blocks.extend(blocks);
            for m in mailbox {
                a.mailbox.push_back(m);
            }
            // Online when the server stopped: seen until then (the last record's time).
            a.last_seen = if user.online {
                Some(rec.last_time.max(user.last_seen.unwrap_or(0)))
            } else {
                user.last_seen
            };
            if let Some(until) = user.locked_until.filter(|&u| u > now_ms) {
                let at = now + Duration::from_millis(until - now_ms);
                a.lock.locked_until = Some(at);
                let at = self.coarse(at);
                let ip = None;
                self.timers
                    .insert(at, TimerKind::Lockout { account: id, ip });
            }
            for (ip, until) in &user.ip_locks {
                let (Ok(ip), true) = (ip.parse::<IpAddr>(), *until > now_ms) else {
                    continue;
                };
                let at = now + Duration::from_millis(until - now_ms);
                let st = self.ip_locks.entry((id, ip)).or_default();
                st.locked_until = Some(at);
                let at = self.coarse(at);
                let ip = Some(ip);
                self.timers
                    .insert(at, TimerKind::Lockout { account: id, ip });
            }
        }
        if ghosts > 0 {
            warn!(
                "{ghosts} users in the journal are not in the credentials; their stored messages are kept"
            );
        }
    }

    /// The account called `name`, made a ghost if the credentials do not list it.
    fn id_or_ghost(&mut self, name: &str) -> AccountId {
        if let Some(&id) = self.by_name.get(name).or_else(|| self.ghosts.get(name)) {
            return id;
        }
        let id = self.accounts.len() as AccountId;
        let mut a = Account::new(name.into(), Arc::from(""));
        a.ghost = true;
        self.accounts.push(a);
        self.ghosts.insert(name.into(), id);
        id
    }

    /// Encodes the whole durable state as journal records (a compaction snapshot).
    pub fn snapshot(&self, now: Instant, out: &mut Vec<u8>) {
        let now_ms = self.wall_ms(now);
        Record::Meta {
            next_id: self.next_msg_id,
        }
        .encode(out);
        for a in &self.accounts {
            let who = &*a.name;
            for &b in &a.blocks {
                let whom = &self.accounts[b as usize].name;
                Record::Block { who, whom }.encode(out);
            }
            if a.session.is_some() {
                Record::Login { who, at: now_ms }.encode(out);
            } else if let Some(at) = a.last_seen {
                Record::Logout { who, at }.encode(out);
            }
            if let Some(until) = a.lock.locked_until {
                let left = until.saturating_duration_since(now).as_millis() as u64;
                if left > 0 {
                    Record::Lock {
                        who,
                        until: now_ms + left,
                    }
                    .encode(out);
                }
            }
            let inflight = a
                .session
                .and_then(|k| self.sessions.get(k))
                .and_then(|s| match &s.phase {
                    Phase::Active(st) => Some(st.inflight.iter()),
                    _ => None,
                })
                .into_iter()
                .flatten();
            for m in inflight.chain(a.mailbox.iter()) {
                Record::Msg {
                    id: m.id,
                    from: &self.accounts[m.from as usize].name,
                    to: who,
                    text: &m.text,
                }
                .encode(out);
            }
        }
        for (&(account, ip), st) in &self.ip_locks {
            let Some(until) = st.locked_until else {
                continue;
            };
            let left = until.saturating_duration_since(now).as_millis() as u64;
            if left > 0 {
                Record::LockIp {
                    who: &self.accounts[account as usize].name,
                    ip: &ip.to_string(),
                    until: now_ms + left,
                }
                .encode(out);
            }
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// Users logged in now.
    pub fn online_count(&self) -> usize {
        self.online.len()
    }

    /// Rounds a deadline up to the next whole second since start, so that timers of
    /// many connections share wheel ticks and an idle server wakes at most once a second.
    fn coarse(&self, t: Instant) -> Instant {
        let since = t.saturating_duration_since(self.origin);
        let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
        self.origin + Duration::from_secs(secs)
    }

    /// The earliest timer deadline: the loop's poll timeout.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Takes the list of sessions with output to flush; give it back with [`Hub::flushed`].
    pub fn take_dirty(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.dirty)
    }

    /// Returns the (emptied) dirty list and clears the flags of the sessions in it.
    pub fn flushed(&mut self, mut keys: Vec<usize>) {
        for &k in &keys {
            if let Some(s) = self.sessions.get_mut(k) {
                s.dirty = false;
            }
        }
        keys.clear();
        if self.dirty.is_empty() {
            self.dirty = keys;
        }
    }

    /// Pretends every queued byte was written: how benches and fuzzing drive the hub
    /// without sockets.
    pub fn discard_output(&mut self) {
        let dirty = self.take_dirty();
        for &k in &dirty {
            if let Some(s) = self.sessions.get_mut(k) {
                let n = s.out.len();
                s.out.consume(n);
            }
        }
        self.flushed(dirty);
    }

    /// Marks a session as having output to flush (also used for write readiness).
    pub fn mark_dirty(&mut self, key: usize) {
        if let Some(s) = self.sessions.get_mut(key)
            && !s.dirty
        {
            s.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Takes the list of sessions closed since the last sweep.
    pub fn take_closing(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.closing)
    }

    /// Registers a new connection and arms its login deadline and liveness check.
    pub fn accept(&mut self, io: S, peer: SocketAddr, now: Instant) -> usize {
        let serial = self.next_serial;
        self.next_serial += 1;
        let key = self.sessions.insert(Session {
            io,
            peer,
            serial,
            write_interest: false,
            out: OutBuf::default(),
            decoder: LineDecoder::default(),
            phase: Phase::Hello,
            dirty: false,
            last_rx: now,
            ping_seq: 0,
            ping_sent: None,
            live_timer: None,
            login_timer: None,
            held: Held::default(),
            gate: Gate::Open,
            tokens: TokenBucket::full(self.flood_rate(), now),
            pending_login: None,
        });
        let login = self.coarse(now + self.cfg.login_timeout);
        let live = self.coarse(now + self.cfg.ping_interval);
        let lt = self.timers.insert(login, TimerKind::Login { key, serial });
        let pt = self.timers.insert(live, TimerKind::Live { key, serial });
        let s = &mut self.sessions[key];
        s.login_timer = Some(lt);
        s.live_timer = Some(pt);
        self.stats.accepted += 1;
        key
    }

    /// Feeds bytes read from a connection.
    pub fn feed(&mut self, key: usize, data: &[u8], now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.is_closing() {
            return;
        }
        s.last_rx = now;
        let mut decoder = std::mem::take(&mut s.decoder);
        let max_line = self.cfg.max_line;
        decoder.feed(data, max_line, |frame| self.on_frame(key, frame, now));
        self.put_decoder(key, decoder);
    }

    fn put_decoder(&mut self, key: usize, decoder: LineDecoder) {
        if let Some(s) = self.sessions.get_mut(key)
            && !s.is_closing()
        {
            s.decoder = decoder;
        }
    }

    /// Hands a paused session's held input to the handlers again; if nothing is left
    /// waiting, the loop is told to read its socket again.
    fn resume_input(&mut self, key: usize, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.is_closing() || s.gate != Gate::Open {
            return;
        }
        let serial = s.serial;
        let mut decoder = std::mem::take(&mut s.decoder);
        decoder.resume(self.cfg.max_line, |frame| self.on_frame(key, frame, now));
        let paused = decoder.is_paused();
        self.put_decoder(key, decoder);
        if !paused {
            self.resumed.push((key, serial));
        }
    }

    /// Sessions whose input resumed since the last call (the loop reads them again).
    pub fn take_resumed(&mut self) -> Vec<(usize, u64)> {
        std::mem::take(&mut self.resumed)
    }

    /// Password hashes to verify, for the loop to hand to the verifier threads.
    ///
    /// Takes at most `free` (the verifier threads that are idle), fairly across
    /// accounts. Each job's account is checked again first: a job for an account that
    /// got locked (or logged in) meanwhile is answered at once, without hashing.
    pub fn take_verify_jobs(&mut self, free: usize, now: Instant) -> Vec<VerifyJob> {
        let mut jobs = Vec::new();
        while jobs.len() < free {
            let Some(job) = self.verify_queue.pop() else {
                break;
            };
            let Some(s) = self.session_if(job.key, job.serial) else {
                continue;
            };
            if s.gate != Gate::Verifying {
                continue;
            }
            if self.refuse_if_locked(job.key, job.account, job.ip, now) {
                continue;
            }
            if self.accounts[job.account as usize].session.is_some() {
                self.error(job.key, ErrorCode::AlreadyOnline, "");
                self.close(job.key, CloseReason::LoginFailed, now);
                continue;
            }
            self.stats.hash_verifications += 1;
            jobs.push(job);
        }
        jobs
    }

    fn flood_rate(&self) -> Rate {
        Rate {
            burst: f64::from(self.cfg.flood_burst),
            per_sec: self.cfg.flood_rate,
        }
    }

    /// Whether flood control applies to this session.
    fn flood_limited(&self, peer: &SocketAddr) -> bool {
        self.cfg.flood_burst > 0 && (self.cfg.limit_loopback || !peer.ip().is_loopback())
    }

    /// Takes one flood-control token for a command, or throttles the session (pausing
    /// its input until a token is back) and returns false.
    fn take_token(&mut self, key: usize, now: Instant) -> bool {
        let rate = self.flood_rate();
        let Some(peer) = self.sessions.get(key).map(|s| s.peer) else {
            return false;
        };
        if !self.flood_limited(&peer) {
            return true;
        }
        let s = &mut self.sessions[key];
        let Err(wait) = s.tokens.take(rate, now) else {
            return true;
        };
        s.gate = Gate::Throttled;
        let serial = s.serial;
        self.stats.flood_throttled += 1;
        info!(
            "conn {key}: flood limit from {}: input paused for {wait:?}",
            s.peer.ip()
        );
        self.timers
            .insert(now + wait, TimerKind::Resume { key, serial });
        false
    }

    /// Appends to a session's output, marking it dirty; a session pushed past
    /// `max_queued` is listed for closing as a slow reader.
    fn emit(&mut self, key: usize, f: impl FnOnce(&mut Vec<u8>)) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.is_closing() {
            return;
        }
        f(s.out.tail());
        after_append(
            s,
            key,
            &mut self.dirty,
            &mut self.overflowed,
            self.cfg.max_queued,
        );
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

    /// Closes sessions that overflowed their output queue.
    fn reap_overflowed(&mut self, now: Instant) {
        while let Some(key) = self.overflowed.pop() {
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

    /// Handles one frame, or refuses it for now ([`Flow::Pause`]) while the session
    /// waits for a verification or a flood-control token.
    fn on_frame(&mut self, key: usize, frame: Frame<'_>, now: Instant) -> Flow {
        let Some(s) = self.sessions.get(key) else {
            return Flow::Stop;
        };
        if s.is_closing() {
            return Flow::Stop;
        }
        if s.gate != Gate::Open {
            return Flow::Pause;
        }
        let parsed = match frame {
            Frame::Line(line) => Some(frames::parse_request(line)),
            Frame::TooLong | Frame::BadUtf8 => None,
        };
        // Answers to the server (`PONG`, `ACK`) are never throttled; only frames that
        // parsed as one count as one (a line merely starting with `PONG` is a command).
        let answer = matches!(parsed, Some(Ok(Request::Pong { .. } | Request::Ack { .. })));
        if !answer && !self.take_token(key, now) {
            return Flow::Pause;
        }
        match parsed {
            Some(Ok(req)) => self.on_request(key, req, now),
            Some(Err(RequestError::UnknownVerb)) => self.error(key, ErrorCode::UnknownCommand, ""),
            Some(Err(RequestError::BadArguments)) => self.error(key, ErrorCode::BadArguments, ""),
            Some(Err(RequestError::BadText)) => self.error(key, ErrorCode::BadText, ""),
            None if matches!(frame, Frame::TooLong) => {
                self.stats.too_long += 1;
                let max = self.cfg.max_line.to_string();
                self.error(key, ErrorCode::TooLong, &max);
            }
            None => self.error(key, ErrorCode::BadUtf8, ""),
        }
        self.reap_overflowed(now);
        match self.sessions.get(key) {
            Some(s) if !s.is_closing() => Flow::Continue,
            _ => Flow::Stop,
        }
    }

    fn on_request(&mut self, key: usize, req: Request<'_>, now: Instant) {
        let s = &mut self.sessions[key];
        // Responses first: valid in any phase, never answered.
        match req {
            Request::Pong { seq } => {
                if seq == s.ping_seq {
                    s.ping_sent = None;
                }
                return;
            }
            Request::Ack { id } => return self.on_ack(key, id),
            Request::Ping { token } => return self.reply(key, Reply::Pong { token }),
            _ => {}
        }
        let account = match (&mut s.phase, &req) {
            (Phase::Hello, Request::Hello { version })
            | (Phase::Login { .. }, Request::Hello { version }) => {
                if *version == PROTOCOL_VERSION {
                    s.phase = Phase::Login { user: None };
                    let software = self.software.clone();
                    self.reply(
                        key,
                        Reply::Hello {
                            version: PROTOCOL_VERSION,
                            software: &software,
                            ping: self.cfg.ping_interval.as_secs().max(1),
                        },
                    );
                } else {
                    self.error(key, ErrorCode::Version, &PROTOCOL_VERSION.to_string());
                }
                return;
            }
            (Phase::Hello, _) => return self.error(key, ErrorCode::HelloFirst, ""),
            (
                Phase::Login { .. },
                Request::Login {
                    user,
                    password,
                    peer_port,
                },
            ) => {
                return self.on_login(key, user, password, *peer_port, now);
            }
            (Phase::Login { .. }, Request::User { user }) => return self.on_user(key, user, now),
            (
                Phase::Login { user: Some(id) },
                Request::Pass {
                    password,
                    peer_port,
                },
            ) => {
                let id = *id;
                return self.on_password(key, id, password, *peer_port, now);
            }
            (Phase::Login { .. }, _) => return self.error(key, ErrorCode::NotLoggedIn, ""),
            (
                Phase::Active(_),
                Request::Hello { .. }
                | Request::Login { .. }
                | Request::User { .. }
                | Request::Pass { .. },
            ) => {
                return self.error(key, ErrorCode::AlreadyLoggedIn, "");
            }
            (Phase::Active(a), _) => {
                a.last_activity = now;
                a.account
            }
            (Phase::Closing, _) => return,
        };
        match req {
            Request::Msg { to, text } => self.on_msg(key, account, to, text),
            Request::Bcast { text } => self.on_bcast(key, account, text),
            Request::WhoElse => self.on_whoelse(key, account, None, now),
            Request::WhoElseSince { window } => self.on_whoelse(key, account, Some(window), now),
            Request::Block { user } => self.on_block(key, account, user, true),
            Request::Unblock { user } => self.on_block(key, account, user, false),
            Request::Private { user } => self.on_private(key, account, user, now),
            Request::Active => self.reply(key, Reply::Ok),
            Request::Logout => {
                // `+BYE` goes out once the logout (login history, journaled by the
                // close into this same batch) is stored.
                self.reply_durable(key, Reply::Bye);
                self.close(key, CloseReason::Logout, now);
            }
            Request::Hello { .. }
            | Request::Login { .. }
            | Request::User { .. }
            | Request::Pass { .. }
            | Request::Ping { .. }
            | Request::Pong { .. }
            | Request::Ack { .. } => {}
        }
    }

    fn on_login(
        &mut self,
        key: usize,
        user: &str,
        password: &str,
        peer_port: Option<u16>,
        now: Instant,
    ) {
        let peer = self.sessions[key].peer;
        let Some(&id) = self.by_name.get(user) else {
            self.stats.failed_logins += 1;
            info!(
                "conn {key}: login failed from {} for unknown user {user:?}",
                peer.ip()
            );
            return self.error(key, ErrorCode::NoSuchUser, user);
        };
        self.on_password(key, id, password, peer_port, now);
    }

    /// `USER`: the classic dialogue checks the username before asking the password. An
    /// unknown name may be retried; a locked-out or online account is refused and the
    /// connection closed, as a full login would be. Never counts as a failure.
    fn on_user(&mut self, key: usize, user: &str, now: Instant) {
        let peer = self.sessions[key].peer;
        let Some(&id) = self.by_name.get(user) else {
            info!(
                "conn {key}: unknown user {user:?} from {} at the username step",
                peer.ip()
            );
            return self.error(key, ErrorCode::NoSuchUser, user);
        };
        if self.refuse_if_locked(key, id, peer.ip(), now) {
            return;
        }
        if self.accounts[id as usize].session.is_some() {
            info!(
                "conn {key}: login refused from {} for user {user} (already online)",
                peer.ip()
            );
            self.error(key, ErrorCode::AlreadyOnline, "");
            return self.close(key, CloseReason::LoginFailed, now);
        }
        if let Some(s) = self.sessions.get_mut(key) {
            s.phase = Phase::Login { user: Some(id) };
        }
        self.reply(key, Reply::User { user });
    }

    /// Checks `password` for account `id`: at once for a plain password, on the
    /// verifier threads for a hash.
    fn on_password(
        &mut self,
        key: usize,
        id: AccountId,
        password: &str,
        peer_port: Option<u16>,
        now: Instant,
    ) {
        let peer = self.sessions[key].peer;
        if self.refuse_if_locked(key, id, peer.ip(), now) {
            return;
        }
        let secret = self.accounts[id as usize].password.clone();
        if accounts::is_hashed(&secret) {
            // Tens of milliseconds of hashing: off the loop. This session's further
            // input waits; everyone else is served meanwhile.
            let s = &mut self.sessions[key];
            let job = VerifyJob {
                key,
                serial: s.serial,
                password: password.to_owned(),
                hash: secret,
                account: id,
                ip: peer.ip(),
            };
            if self.verify_queue.push(job).is_err() {
                // Too many logins waiting (from this address, or in all): refused
                // at once, and not counted as a failure.
                self.stats.verify_refused += 1;
                info!(
                    "conn {key}: login from {} refused: verification queue full",
                    peer.ip()
                );
                return self.error(key, ErrorCode::RateLimited, "");
            }
            s.gate = Gate::Verifying;
            s.pending_login = Some((id, peer_port));
            return;
        }
        let ok = accounts::plain_eq(&secret, password);
        self.finish_login(key, id, ok, peer_port, now);
    }

    /// The verdict on a hashed password (from the verifier threads, via the loop).
    pub fn verified(&mut self, key: usize, serial: u64, ok: bool, now: Instant) {
        let Some(s) = self.session_if(key, serial) else {
            return;
        };
        if s.gate != Gate::Verifying {
            return;
        }
        s.gate = Gate::Open;
        if let Some((id, peer_port)) = s.pending_login.take() {
            self.finish_login(key, id, ok, peer_port, now);
        }
        self.reap_overflowed(now);
        self.resume_input(key, now);
    }

    /// The lock state that applies to `id` logging in from `ip` (created if missing).
    fn lock_state(&mut self, id: AccountId, ip: IpAddr) -> &mut LockState {
        match self.cfg.lockout_scope {
            LockoutScope::Account => &mut self.accounts[id as usize].lock,
            LockoutScope::AccountIp => self.ip_locks.entry((id, ip)).or_default(),
        }
    }

    /// Answers `-LOCKED` and closes if `id` is locked out for `ip`.
    fn refuse_if_locked(&mut self, key: usize, id: AccountId, ip: IpAddr, now: Instant) -> bool {
        let locked = match self.cfg.lockout_scope {
            LockoutScope::Account => self.accounts[id as usize].lock.locked_until,
            LockoutScope::AccountIp => self.ip_locks.get(&(id, ip)).and_then(|l| l.locked_until),
        }
        .is_some_and(|t| t > now);
        if locked {
            info!(
                "conn {key}: login refused from {ip} for locked user {}",
                self.accounts[id as usize].name
            );
            self.error(key, ErrorCode::Locked, "");
            self.close(key, CloseReason::LoginFailed, now);
        }
        locked
    }

    /// The rest of a login once the password is checked.
    fn finish_login(
        &mut self,
        key: usize,
        id: AccountId,
        ok: bool,
        peer_port: Option<u16>,
        now: Instant,
    ) {
        let ip = self.sessions[key].peer.ip();
        // While a hash was being verified, a reload may have removed the account...
        if self.accounts[id as usize].ghost {
            let name = self.accounts[id as usize].name.clone();
            return self.error(key, ErrorCode::NoSuchUser, &name);
        }
        // ...or a lockout may have started.
        if self.refuse_if_locked(key, id, ip, now) {
            return;
        }
        let block_duration = self.cfg.block_duration;
        let now_ms = self.wall_ms(now);
        let scope_ip = (self.cfg.lockout_scope == LockoutScope::AccountIp).then_some(ip);
        let user = self.accounts[id as usize].name.clone();
        if !ok {
            self.stats.failed_logins += 1;
            info!("conn {key}: login failed from {ip} for user {user} (wrong password)");
            let st = self.lock_state(id, ip);
            st.failures += 1;
            st.last_failure = Some(now);
            let failures = st.failures;
            if failures >= 3 {
                st.failures = 0;
                let until = now + block_duration;
                st.locked_until = Some(until);
                let until_ms = now_ms + block_duration.as_millis() as u64;
                let rec = match scope_ip {
                    None => Record::Lock {
                        who: &user,
                        until: until_ms,
                    },
                    Some(ip) => Record::LockIp {
                        who: &user,
                        ip: &ip.to_string(),
                        until: until_ms,
                    },
                };
                log_rec(&mut self.journal, rec);
                self.stats.lockouts += 1;
                warn!(
                    "user {user}: locked for {block_duration:?} after 3 failed logins (last from {ip})"
                );
                let at = self.coarse(until);
                self.timers.insert(
                    at,
                    TimerKind::Lockout {
                        account: id,
                        ip: scope_ip,
                    },
                );
                // Told only once the lockout is stored: it must survive a restart.
                self.emit_reply(key, true, |out| {
                    frames::encode_error(out, ErrorCode::LockedNow, "")
                });
                return self.close(key, CloseReason::LoginFailed, now);
            }
            if scope_ip.is_some() {
                // Per-address failure counts expire, so they cannot pile up forever.
                let at = self.coarse(now + block_duration);
                self.timers.insert(
                    at,
                    TimerKind::Lockout {
                        account: id,
                        ip: scope_ip,
                    },
                );
            }
            let left = (3 - failures).to_string();
            return self.error(key, ErrorCode::BadPassword, &left);
        }
        match scope_ip {
            None => self.accounts[id as usize].lock.failures = 0,
            Some(ip) => {
                self.ip_locks.remove(&(id, ip));
            }
        }
        let acct = &mut self.accounts[id as usize];
        if acct.session.is_some() {
            info!("conn {key}: login refused from {ip} for user {user} (already online)");
            self.error(key, ErrorCode::AlreadyOnline, "");
            return self.close(key, CloseReason::LoginFailed, now);
        }
        // Success.
        log_rec(
            &mut self.journal,
            Record::Login {
                who: &acct.name,
                at: now_ms,
            },
        );
        acct.session = Some(key);
        acct.online_pos = self.online.len();
        self.online.push(id);
        self.stats.logins += 1;
        info!("conn {key}: user {user} logged in from {ip}");
        let idle_at = self.coarse(now + self.cfg.timeout);
        let serial = self.sessions[key].serial;
        let idle_timer = self.timers.insert(idle_at, TimerKind::Idle { key, serial });
        let s = &mut self.sessions[key];
        if let Some(t) = s.login_timer.take() {
            self.timers.cancel(t);
        }
        s.phase = Phase::Active(ActiveState {
            account: id,
            last_activity: now,
            peer_port,
            inflight: VecDeque::new(),
            idle_timer: Some(idle_timer),
            intros: TokenBucket::full(INTRO_RATE, now),
        });
        self.reply(key, Reply::Welcome);
        self.pump(id);
        self.presence(id, true);
    }

    /// Tells every online user not blocked by `who` that `who` logged in or out.
    fn presence(&mut self, who: AccountId, login: bool) {
        let name = &self.accounts[who as usize].name;
        let blocks = &self.accounts[who as usize].blocks;
        let prefix: &'static [u8] = if login { b"*LOGIN" } else { b"*LOGOUT" };
        for &other in &self.online {
            if other == who || blocks.contains(&other) {
                continue;
            }
            let Some(key) = self.accounts[other as usize].session else {
                continue;
            };
            let Some(s) = self.sessions.get_mut(key) else {
                continue;
            };
            if s.is_closing() {
                continue;
            }
            s.out.push_list(prefix, name.as_bytes());
            after_append(
                s,
                key,
                &mut self.dirty,
                &mut self.overflowed,
                self.cfg.max_queued,
            );
        }
    }

    /// Sends queued mailbox messages to an online account while its window has room.
    fn pump(&mut self, id: AccountId) {
        let Some(key) = self.accounts[id as usize].session else {
            return;
        };
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let Phase::Active(a) = &mut s.phase else {
            return;
        };
        let mut sent = false;
        while a.inflight.len() < self.cfg.ack_window {
            let Some(m) = self.accounts[id as usize].mailbox.pop_front() else {
                break;
            };
            frames::encode_msg(
                s.out.tail(),
                m.id,
                &self.accounts[m.from as usize].name,
                &m.text,
            );
            a.inflight.push_back(m);
            sent = true;
        }
        if sent && !s.dirty {
            s.dirty = true;
            self.dirty.push(key);
        }
    }

    fn on_ack(&mut self, key: usize, id: u64) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let Phase::Active(a) = &mut s.phase else {
            return;
        };
        let mut upto = None;
        while a.inflight.front().is_some_and(|m| m.id <= id) {
            upto = a.inflight.pop_front().map(|m| m.id);
        }
        let account = a.account;
        if let Some(upto) = upto {
            let to = &self.accounts[account as usize].name;
            log_rec(&mut self.journal, Record::Ack { to, upto });
        }
        self.pump(account);
    }

    fn lookup(&mut self, key: usize, me: AccountId, user: &str) -> Option<AccountId> {
        match self.by_name.get(user) {
            None => {
                self.error(key, ErrorCode::NoSuchUser, user);
                None
            }
            Some(&id) if id == me => {
                self.error(key, ErrorCode::SelfTarget, "");
                None
            }
            Some(&id) => Some(id),
        }
    }

    fn has_blocked(&self, who: AccountId, whom: AccountId) -> bool {
        self.accounts[who as usize].blocks.contains(&whom)
    }

    fn on_msg(&mut self, key: usize, me: AccountId, to: &str, text: &str) {
        let Some(target) = self.lookup(key, me, to) else {
            return;
        };
        if self.has_blocked(target, me) {
            return self.error(key, ErrorCode::BlockedBy, to);
        }
        if !self.store_ok {
            self.stats.store_refused += 1;
            return self.error(key, ErrorCode::StoreUnavailable, "");
        }
        let t = &mut self.accounts[target as usize];
        let online = t.session.is_some();
        let window_open = match t.session.and_then(|k| self.sessions.get(k)) {
            Some(Session {
                phase: Phase::Active(a),
                ..
            }) => a.inflight.len() < self.cfg.ack_window,
            _ => false,
        };
        let id = self.next_msg_id;
        if window_open && t.mailbox.is_empty() {
            self.next_msg_id += 1;
            let tkey = t.session.unwrap_or(usize::MAX);
            let from = &self.accounts[me as usize].name;
            let rec = Record::Msg {
                id,
                from,
                to: &self.accounts[target as usize].name,
                text,
            };
            log_rec(&mut self.journal, rec);
            if let Some(s) = self.sessions.get_mut(tkey)
                && let Phase::Active(a) = &mut s.phase
            {
                frames::encode_msg(s.out.tail(), id, from, text);
                a.inflight.push_back(Stored {
                    id,
                    from: me,
                    text: text.into(),
                });
                after_append(
                    s,
                    tkey,
                    &mut self.dirty,
                    &mut self.overflowed,
                    self.cfg.max_queued,
                );
            }
            self.stats.direct_delivered += 1;
            return self.reply_durable(key, Reply::Sent { to, stored: false });
        }
        if !t.mailbox.admits(me, text.len(), self.mailbox_caps) {
            self.stats.mailbox_full += 1;
            return self.error(key, ErrorCode::MailboxFull, to);
        }
        self.next_msg_id += 1;
        t.mailbox.push_back(Stored {
            id,
            from: me,
            text: text.into(),
        });
        let rec = Record::Msg {
            id,
            from: &self.accounts[me as usize].name,
            to: &self.accounts[target as usize].name,
            text,
        };
        log_rec(&mut self.journal, rec);
        self.stats.stored += 1;
        self.reply_durable(
            key,
            Reply::Sent {
                to,
                stored: !online,
            },
        );
        if online {
            self.pump(target);
        }
    }

    fn on_bcast(&mut self, key: usize, me: AccountId, text: &str) {
        // Encode once, copy to every recipient.
        let mut line = Vec::with_capacity(text.len() + 32);
        Push::Bcast {
            from: &self.accounts[me as usize].name,
            text,
        }
        .encode(&mut line);
        let (mut delivered, mut blocked) = (0u32, 0u32);
        for &other in &self.online {
            if other == me {
                continue;
            }
            if self.accounts[other as usize].blocks.contains(&me) {
                blocked += 1;
                continue;
            }
            let Some(k) = self.accounts[other as usize].session else {
                continue;
            };
            let Some(s) = self.sessions.get_mut(k) else {
                continue;
            };
            if s.is_closing() {
                continue;
            }
            s.out.tail().extend_from_slice(&line);
            after_append(
                s,
                k,
                &mut self.dirty,
                &mut self.overflowed,
                self.cfg.max_queued,
            );
            delivered += 1;
        }
        self.stats.broadcast_deliveries += u64::from(delivered);
        self.reply(key, Reply::Bcast { delivered, blocked });
    }

    fn on_whoelse(&mut self, key: usize, me: AccountId, window: Option<Duration>, now: Instant) {
        // A window reaching back before the history covers everyone ever seen.
        let since = window.map(|w| {
            let w = w.as_millis().min(u128::from(u64::MAX)) as u64;
            self.wall_ms(now).saturating_sub(w)
        });
        let mut names: Vec<&str> = self
            .accounts
            .iter()
            .enumerate()
            .filter(|&(i, a)| {
                let i = i as AccountId;
                if i == me || a.ghost || a.blocks.contains(&me) {
                    return false;
                }
                if a.session.is_some() {
                    return true;
                }
                matches!((since, a.last_seen), (Some(start), Some(seen)) if seen >= start)
            })
            .map(|(_, a)| &*a.name)
            .collect();
        names.sort_unstable();
        let mut line = Vec::new();
        frames::encode_list(&mut line, "+USERS", names);
        self.emit_reply(key, false, |out| out.extend_from_slice(&line));
    }

    fn on_block(&mut self, key: usize, me: AccountId, user: &str, block: bool) {
        let Some(target) = self.lookup(key, me, user) else {
            return;
        };
        let Account { blocks, name, .. } = &mut self.accounts[me as usize];
        let (who, whom) = (&**name, user);
        if block {
            let changed = blocks.insert(target);
            if changed {
                log_rec(&mut self.journal, Record::Block { who, whom });
            }
            self.emit_reply(key, changed, |out| Reply::Blocked { user }.encode(out));
        } else if blocks.remove(&target) {
            log_rec(&mut self.journal, Record::Unblock { who, whom });
            self.reply_durable(key, Reply::Unblocked { user });
        } else {
            self.error(key, ErrorCode::NotBlocked, user);
        }
    }

    fn new_token(&mut self) -> String {
        // SipHash keyed by the process's random `RandomState` keys over a counter:
        // unpredictable to peers, unique per introduction.
        let mut out = String::with_capacity(32);
        for _ in 0..2 {
            self.token_counter += 1;
            let mut h = self.token_keys.build_hasher();
            h.write_u64(self.token_counter);
            out.push_str(&format!("{:016x}", h.finish()));
        }
        out
    }

    fn on_private(&mut self, key: usize, me: AccountId, user: &str, now: Instant) {
        let Some(target) = self.lookup(key, me, user) else {
            return;
        };
        if self.has_blocked(target, me) {
            return self.error(key, ErrorCode::BlockedBy, user);
        }
        let Some(tkey) = self.accounts[target as usize].session else {
            return self.error(key, ErrorCode::Offline, user);
        };
        let (ip, port) = match self.sessions.get(tkey) {
            Some(Session {
                phase: Phase::Active(a),
                peer,
                ..
            }) => (peer.ip(), a.peer_port),
            _ => return self.error(key, ErrorCode::Offline, user),
        };
        let Some(port) = port else {
            return self.error(key, ErrorCode::NoPeer, user);
        };
        if let Some(Session {
            phase: Phase::Active(a),
            ..
        }) = self.sessions.get_mut(key)
            && a.intros.take(INTRO_RATE, now).is_err()
        {
            info!("conn {key}: too many private introductions, refused");
            return self.error(key, ErrorCode::RateLimited, "");
        }
        let token = self.new_token();
        let me_name = self.accounts[me as usize].name.clone();
        self.emit(tkey, |out| {
            Push::Expect {
                user: &me_name,
                token: &token,
            }
            .encode(out)
        });
        self.reply(
            key,
            Reply::Peer {
                user,
                addr: SocketAddr::new(ip, port),
                token: &token,
            },
        );
    }

    /// Ends a session: the one close path. Safe to call twice.
    pub fn close(&mut self, key: usize, reason: CloseReason, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.is_closing() {
            return;
        }
        for t in [s.login_timer.take(), s.live_timer.take()]
            .into_iter()
            .flatten()
        {
            self.timers.cancel(t);
        }
        if reason == CloseReason::SlowReader {
            // Nothing more will be read by it; what was queued as direct messages is
            // still in the in-flight window and goes back to the mailbox below.
            s.out.clear();
        }
        if s.gate == Gate::Verifying
            && let Some((account, _)) = s.pending_login
        {
            // Never hashed for a connection that is gone.
            self.verify_queue.cancel(key, s.serial, account);
        }
        let phase = std::mem::replace(&mut s.phase, Phase::Closing);
        s.decoder = LineDecoder::default();
        self.closing.push(key);
        self.mark_dirty(key);
        self.stats.closed += 1;
        if let Phase::Active(a) = phase {
            if let Some(t) = a.idle_timer {
                self.timers.cancel(t);
            }
            let at = self.wall_ms(now);
            let acct = &mut self.accounts[a.account as usize];
            info!("conn {key}: user {} logged out ({reason:?})", acct.name);
            acct.session = None;
            acct.last_seen = Some(at);
            log_rec(
                &mut self.journal,
                Record::Logout {
                    who: &acct.name,
                    at,
                },
            );
            for m in a.inflight.into_iter().rev() {
                acct.mailbox.push_front(m);
            }
            let pos = acct.online_pos;
            self.online.swap_remove(pos);
            if let Some(&moved) = self.online.get(pos) {
                self.accounts[moved as usize].online_pos = pos;
            }
            self.presence(a.account, false);
        }
    }

    /// Fires due timers.
    pub fn expire(&mut self, now: Instant) {
        let mut due = Vec::new();
        self.timers.expire(now, |t| due.push(t));
        for t in due {
            self.on_timer(t, now);
        }
        self.reap_overflowed(now);
    }

    fn session_if(&mut self, key: usize, serial: u64) -> Option<&mut Session<S>> {
        self.sessions
            .get_mut(key)
            .filter(|s| s.serial == serial && !s.is_closing())
    }

    fn on_timer(&mut self, t: TimerKind, now: Instant) {
        match t {
            TimerKind::Lockout { account, ip } => {
                let grace = self.cfg.block_duration;
                let st = match ip {
                    None => &mut self.accounts[account as usize].lock,
                    Some(ip) => match self.ip_locks.get_mut(&(account, ip)) {
                        Some(st) => st,
                        None => return,
                    },
                };
                if st.locked_until.is_some_and(|u| u <= now) {
                    st.locked_until = None;
                    st.failures = 0;
                }
                let stale =
                    st.locked_until.is_none() && st.last_failure.is_none_or(|t| t + grace <= now);
                if let (Some(ip), true) = (ip, stale) {
                    self.ip_locks.remove(&(account, ip));
                }
            }
            TimerKind::Resume { key, serial } => {
                let Some(s) = self.session_if(key, serial) else {
                    return;
                };
                if s.gate == Gate::Throttled {
                    s.gate = Gate::Open;
                    self.resume_input(key, now);
                }
            }
            TimerKind::Login { key, serial } => {
                let Some(s) = self.session_if(key, serial) else {
                    return;
                };
                s.login_timer = None;
                if matches!(s.phase, Phase::Hello | Phase::Login { .. }) {
                    self.stats.login_timeouts += 1;
                    info!(
                        "conn {key}: no login within {:?}, closing",
                        self.cfg.login_timeout
                    );
                    self.emit(key, |out| {
                        Push::Bye {
                            reason: ByeReason::LoginTimeout.as_str(),
                        }
                        .encode(out)
                    });
                    self.close(key, CloseReason::LoginTimeout, now);
                }
            }
            TimerKind::Idle { key, serial } => {
                let timeout = self.cfg.timeout;
                let Some(s) = self.session_if(key, serial) else {
                    return;
                };
                let Phase::Active(a) = &mut s.phase else {
                    return;
                };
                a.idle_timer = None;
                let deadline = a.last_activity + timeout;
                if deadline <= now {
                    self.stats.idle_logouts += 1;
                    self.emit(key, |out| Push::Timeout.encode(out));
                    self.close(key, CloseReason::Idle, now);
                } else {
                    let at = self.coarse(deadline);
                    let h = self.timers.insert(at, TimerKind::Idle { key, serial });
                    if let Some(Session {
                        phase: Phase::Active(a),
                        ..
                    }) = self.sessions.get_mut(key)
                    {
                        a.idle_timer = Some(h);
                    }
                }
            }
            TimerKind::Live { key, serial } => {
                let (interval, grace) = (self.cfg.ping_interval, self.cfg.ping_timeout);
                let Some(s) = self.session_if(key, serial) else {
                    return;
                };
                s.live_timer = None;
                s.shrink();
                if s.input_paused() {
                    // Not reading it on purpose: its silence proves nothing.
                    s.last_rx = now;
                    s.ping_sent = None;
                }
                if let Some(sent) = s.ping_sent {
                    if s.last_rx <= sent {
                        self.stats.dead_peer_kills += 1;
                        info!("conn {key}: no answer to ping within {grace:?}, closing");
                        return self.close(key, CloseReason::NoPong, now);
                    }
                    s.ping_sent = None;
                }
                let next = if now.saturating_duration_since(s.last_rx) >= interval {
                    s.ping_seq += 1;
                    s.ping_sent = Some(now);
                    let seq = s.ping_seq;
                    self.emit(key, |out| Push::Ping { seq }.encode(out));
                    now + grace
                } else {
                    s.last_rx + interval
                };
                let at = self.coarse(next);
                let h = self.timers.insert(at, TimerKind::Live { key, serial });
                if let Some(s) = self.sessions.get_mut(key) {
                    s.live_timer = Some(h);
                }
            }
        }
    }

    /// Swaps in a new credentials list (SIGHUP): new users can log in, changed
    /// passwords apply to the next login, removed users are logged out (`*BYE removed`)
    /// and become ghosts, so their stored messages are kept. Returns (added, removed).
    pub fn reload(&mut self, credentials: Vec<Credential>, now: Instant) -> (usize, usize) {
        let fresh: HashMap<&str, &str> = credentials
            .iter()
            .map(|c| (c.name.as_str(), c.password.as_str()))
            .collect();
        let mut removed = Vec::new();
        for (i, a) in self.accounts.iter_mut().enumerate() {
            if a.ghost {
                continue;
            }
            match fresh.get(&*a.name) {
                Some(&pw) if *a.password != *pw => a.password = pw.into(),
                Some(_) => {}
                None => {
                    a.ghost = true;
                    self.by_name.remove(&*a.name);
                    self.ghosts.insert(a.name.clone(), i as AccountId);
                    removed.push(i as AccountId);
                }
            }
        }
        let mut added = 0;
        for c in &credentials {
            if self.by_name.contains_key(c.name.as_str()) {
                continue;
            }
            let id = match self.ghosts.remove(c.name.as_str()) {
                Some(id) => {
                    let a = &mut self.accounts[id as usize];
                    a.ghost = false;
                    a.password = c.password.as_str().into();
                    id
                }
                None => {
                    let name: Box<str> = c.name.as_str().into();
                    self.accounts
                        .push(Account::new(name, c.password.as_str().into()));
                    (self.accounts.len() - 1) as AccountId
                }
            };
            self.by_name.insert(c.name.as_str().into(), id);
            added += 1;
        }
        for &id in &removed {
            if let Some(key) = self.accounts[id as usize].session {
                info!(
                    "conn {key}: user {} removed from the credentials, logging out",
                    self.accounts[id as usize].name
                );
                self.emit(key, |out| {
                    Push::Bye {
                        reason: ByeReason::Removed.as_str(),
                    }
                    .encode(out)
                });
                self.close(key, CloseReason::Removed, now);
            }
        }
        self.stats.reloads += 1;
        (added, removed.len())
    }

    /// One line for operators: connections, users, traffic, queues and limit hits.
    pub fn stats_line(&self) -> String {
        let queued: usize = self.sessions.iter().map(|(_, s)| s.out.len()).sum();
        let st = &self.stats;
        format!(
            "stats: connections={} online={} accepted={} logins={} failed_logins={} lockouts={} \
             direct={} stored={} broadcast_deliveries={} queued_bytes={} mailbox_full={} \
             too_long={} slow_reader_kills={} dead_peer_kills={} login_timeouts={} \
             idle_logouts={} flood_throttled={} per_ip_refused={} rate_refused={} \
             store_refused={} hash_verifications={} verify_refused={} verify_queued={} reloads={}",
            self.sessions.len(),
            self.online.len(),
            st.accepted,
            st.logins,
            st.failed_logins,
            st.lockouts,
            st.direct_delivered,
            st.stored,
            st.broadcast_deliveries,
            queued,
            st.mailbox_full,
            st.too_long,
            st.slow_reader_kills,
            st.dead_peer_kills,
            st.login_timeouts,
            st.idle_logouts,
            st.flood_throttled,
            st.per_ip_refused,
            st.rate_refused,
            st.store_refused,
            st.hash_verifications,
            st.verify_refused,
            self.verify_queue.len(),
            st.reloads,
        )
    }

    /// Tells every connection the server is going away and closes them all.
    pub fn shutdown(&mut self, now: Instant) {
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.emit(key, |out| {
                Push::Bye {
                    reason: ByeReason::Shutdown.as_str(),
                }
                .encode(out)
            });
            self.close(key, CloseReason::Shutdown, now);
        }
    }
}
