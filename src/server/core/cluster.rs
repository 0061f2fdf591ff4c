//! Cluster mode: the chat rules when several nodes serve one user base through a
//! broker (NATS JetStream; the broker connection itself is `server::cluster`).
//!
//! Every node keeps a replica of the whole chat state (who is online where, mailboxes,
//! blocks, history, failure counts), built by applying the stream's records ([`Rec`])
//! in stream order, its own included. A node never changes shared state on its own: it
//! publishes a record and applies it when the stream hands it back, so every node
//! applies the same changes in the same order. What the core does here:
//!
//! - **Login** is a claim: a `Login` record published with "the user's last record is
//!   still the one I saw" (JetStream's expected last subject sequence). Two nodes
//!   racing for one user: the broker accepts one, the other gets a conflict and is
//!   told what is there now (`handle_claim_conflict`): a login (refused: already
//!   online) or a logout its replica had not applied yet (the claim is retried). The
//!   session waits (`Gate::Cluster`) until its own login comes back from the stream;
//!   only then is it welcomed, so its mailbox is complete.
//! - **Logout** is published with "the user's last record is this login", so a stale
//!   logout (the node was presumed dead and the user logged in elsewhere since) cannot
//!   end a newer session.
//! - **Wrong passwords** are `Fail` records; every node counts them in stream order, and
//!   the node that checked the password answers once its own record comes back, with
//!   the count the stream decided (the third locks, on every node).
//! - **Messages**: the sender's node publishes; `+SENT` is held until the broker
//!   acknowledged (the journal's hold, with the broker as the disk); the stream
//!   sequence is the message id; the recipient's node delivers when it applies the
//!   record, every other node keeps it in its replica of the mailbox until an `Ack`
//!   record says it was received.
//! - **Broadcasts** and **introductions** for private chat are not stored: they go over
//!   plain broker subjects (a broadcast to every node; an introduction request to the
//!   target's node, which tells its client to expect the caller and answers with the
//!   address, token and certificate fingerprint).
//! - **A node that disappears** (its heartbeats stop, noticed by the broker connection)
//!   is reported with [`super::Core::handle_node_gone`]: this node publishes a
//!   logout for each of its users; the compare-and-set makes several nodes doing it at
//!   once harmless.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::directory::{PerAccount, Remote};
use super::session::Gate;
use super::{AccountId, CloseReason, Core, Cx, Stored, messaging, presence};
use crate::protocol::frames::{ByeReason, ErrorCode, Push, Reply};
use crate::server::cluster::record::Rec;

/// What the core asks of the cluster (taken with [`super::Core::poll_cluster`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Append a record to the stream; `expect`: only if the last record on its subject
    /// has this sequence (0: none). Part of the batch it was taken with.
    Publish {
        /// The record.
        rec: Rec,
        /// The compare-and-set condition.
        expect: Option<u64>,
    },
    /// Show a broadcast to every node's users (not stored).
    Broadcast {
        /// The sender.
        from: Box<str>,
        /// The text.
        text: Box<str>,
    },
    /// Is node incarnation `inc` still connected? Answered with
    /// [`super::Core::handle_probe_answer`] and this `id` (no responders: it is gone).
    Probe {
        /// Matches the answer to the question.
        id: u64,
        /// The incarnation asked about.
        inc: u64,
    },
    /// Ask node incarnation `inc` to introduce `from` to its user `to`; the answer
    /// comes back with [`super::Core::handle_intro_answer`] and this `id`.
    Intro {
        /// Matches the answer to the question.
        id: u64,
        /// The target's node incarnation.
        inc: u64,
        /// The caller.
        from: Box<str>,
        /// The target.
        to: Box<str>,
        /// The caller's certificate fingerprint (empty: none).
        key: Box<str>,
    },
}

/// A node's answer to an introduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntroAnswer {
    /// Connect to `addr` and present `token`; the target shows the certificate `key`.
    Peer {
        /// The target's peer-to-peer address.
        addr: SocketAddr,
        /// The one-time token.
        token: Box<str>,
        /// The target's certificate fingerprint (empty: plain text).
        key: Box<str>,
    },
    /// The target is not (or no longer) online there.
    Offline,
    /// The target's client takes no private sessions.
    NoPeer,
}

/// The latest record of a user's `seen` subject, as this replica knows it.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Seen {
    /// The sequence of the last `Login`/`Logout` (what a claim expects).
    last: u64,
    /// The sequence of the login that is current (0: offline).
    login: u64,
}

/// A login waiting for its claim to come back from the stream.
struct Claim {
    key: usize,
    account: AccountId,
    port: Option<u16>,
    peer_key: Option<Box<str>>,
    /// Conflicts answered by a retry so far.
    retries: u8,
}

/// What a login does once the node its user is online on turned out to be gone.
pub(super) enum AfterProbe {
    /// Answer the username step (`+USER`).
    User,
    /// The password was right: claim the user.
    Claim {
        port: Option<u16>,
        peer_key: Option<Box<str>>,
    },
}

/// A login waiting to learn whether its user's node is still there.
struct Probe {
    key: usize,
    serial: u64,
    account: AccountId,
    then: AfterProbe,
}

/// Conflicts a claim retries before it gives up as "already online".
const MAX_RETRIES: u8 = 3;

pub(super) struct Cluster {
    node: Box<str>,
    inc: u64,
    seen: PerAccount<Seen>,
    /// Logins in flight, by session serial.
    claims: HashMap<u64, Claim>,
    /// Wrong passwords in flight, by session serial: the session's key.
    failing: HashMap<u64, usize>,
    /// Introductions asked of other nodes: id -> (key, serial, target).
    intros: HashMap<u64, (usize, u64, Box<str>)>,
    /// Logins asking whether their user's node is still there, by probe id.
    probes: HashMap<u64, Probe>,
    next_intro: u64,
    /// Users online elsewhere, per node incarnation (with the node's name).
    by_inc: HashMap<u64, (u32, Box<str>)>,
    /// Acknowledgements not yet published, per account (coalesced: see `ACK_DELAY`).
    acks: HashMap<AccountId, u64>,
    acks_due: Option<Instant>,
}

/// How long this node's users' acknowledgements are gathered before one `Ack` record
/// per user is published: a client acknowledges every few messages, and an `Ack` is a
/// stored record for the broker. A node that dies within this delay has its users'
/// last messages delivered again at their next login (at least once, never lost).
pub(super) const ACK_DELAY: Duration = Duration::from_millis(100);

impl Cluster {
    pub(super) fn new(node: &str, inc: u64) -> Cluster {
        Cluster {
            node: node.into(),
            inc,
            seen: PerAccount::default(),
            claims: HashMap::new(),
            failing: HashMap::new(),
            intros: HashMap::new(),
            probes: HashMap::new(),
            next_intro: 1,
            by_inc: HashMap::new(),
            acks: HashMap::new(),
            acks_due: None,
        }
    }

    /// When gathered acknowledgements are due to be published.
    pub(super) fn acks_due(&self) -> Option<Instant> {
        self.acks_due
    }

    /// Incarnations that have users online here, with their node names.
    pub(super) fn incarnations(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        self.by_inc.iter().map(|(&inc, (_, name))| (inc, &**name))
    }

    /// Forgets what a closed session was waiting for.
    pub(super) fn cancel(&mut self, serial: u64) {
        self.claims.remove(&serial);
        self.failing.remove(&serial);
        self.probes.retain(|_, p| p.serial != serial);
    }
}

fn cluster(core: &mut Core) -> &mut Cluster {
    core.cluster
        .as_deref_mut()
        .expect("cluster handlers run in cluster mode only")
}

/// Refuses with `-STORE_UNAVAILABLE` while the broker is unreachable; true if refused.
pub(super) fn refuse_unless_healthy(core: &mut Core, key: usize) -> bool {
    if core.store.healthy() {
        return false;
    }
    core.stats.store_refused += 1;
    core.error(key, ErrorCode::StoreUnavailable, "");
    true
}

/// A password was right: claims the user for this session.
pub(super) fn claim(
    core: &mut Core,
    key: usize,
    account: AccountId,
    port: Option<u16>,
    peer_key: Option<Box<str>>,
    now: Instant,
) {
    if refuse_unless_healthy(core, key) {
        return core.close(key, CloseReason::LoginFailed, now);
    }
    let s = &mut core.sessions[key];
    s.gate = Gate::Cluster;
    let serial = s.serial;
    cluster(core).claims.insert(
        serial,
        Claim {
            key,
            account,
            port,
            peer_key,
            retries: 0,
        },
    );
    publish_claim(core, serial, now);
}

fn publish_claim(core: &mut Core, serial: u64, now: Instant) {
    let at = core.store.wall_ms(now);
    let Some(c) = core.cluster.as_deref() else {
        return;
    };
    let Some(claim) = c.claims.get(&serial) else {
        return;
    };
    if !core.sessions.contains(claim.key) {
        return;
    }
    let expect = c.seen.get(claim.account).map_or(0, |s| s.last);
    let rec = Rec::Login {
        who: core.dir.name(claim.account).into(),
        node: c.node.clone(),
        inc: c.inc,
        serial,
        at,
        key: claim.peer_key.clone(),
    };
    core.store.publish(rec, Some(expect));
}

/// The broker refused a claim: `current` is the user's last `seen` record now.
pub(super) fn claim_conflict(
    core: &mut Core,
    serial: u64,
    current: Option<(u64, Rec)>,
    now: Instant,
) {
    let Some(c) = core.cluster.as_deref_mut() else {
        return;
    };
    let Some(claim) = c.claims.get_mut(&serial) else {
        return;
    };
    let (key, account) = (claim.key, claim.account);
    if let Some((_, Rec::Login { inc, serial: s, .. })) = &current
        && *inc == c.inc
        && *s == serial
    {
        // Our own claim, sent again after its acknowledgement was lost: it is in the
        // stream, and the welcome comes when it is applied.
        return;
    }
    let online_elsewhere = matches!(current, Some((_, Rec::Login { .. })));
    if !online_elsewhere && claim.retries < MAX_RETRIES {
        // A logout this replica had not applied yet: claim again after it.
        claim.retries += 1;
        let last = current.as_ref().map_or(0, |(seq, _)| *seq);
        let seen = c.seen.get_mut(account);
        seen.last = seen.last.max(last);
        return publish_claim(core, serial, now);
    }
    c.claims.remove(&serial);
    if core.session_if(key, serial).is_none() {
        return;
    }
    info!(
        "conn {key}: login refused for user {} (online on another node)",
        core.dir.name(account)
    );
    core.sessions[key].gate = Gate::Open;
    core.error(key, ErrorCode::AlreadyOnline, "");
    core.close(key, CloseReason::LoginFailed, now);
}

/// Whether `id` is online on another node (cluster mode).
pub(super) fn online_elsewhere(core: &Core, id: AccountId) -> bool {
    core.cluster.is_some() && core.dir.get(id).remote.is_some()
}

/// A login for a user online on another node: before "already online", that node is
/// asked whether it is still there (a node killed a moment ago has no heartbeat gap
/// yet, but the broker knows its connection is gone), so the user can log in again at
/// once after their node died. The session waits for the answer.
pub(super) fn probe_owner(core: &mut Core, key: usize, account: AccountId, then: AfterProbe) {
    let Some(inc) = core.dir.get(account).remote.as_deref().map(|r| r.inc) else {
        return;
    };
    let s = &mut core.sessions[key];
    s.gate = Gate::Cluster;
    let serial = s.serial;
    let c = cluster(core);
    let id = c.next_intro;
    c.next_intro += 1;
    c.probes.insert(
        id,
        Probe {
            key,
            serial,
            account,
            then,
        },
    );
    core.store.emit(Op::Probe { id, inc });
}

/// The answer to a probe: still there (the login is refused as already online), or gone
/// (its users are logged out and the login goes on).
pub(super) fn probe_answer(core: &mut Core, id: u64, alive: bool, now: Instant) {
    let Some(p) = cluster(core).probes.remove(&id) else {
        return;
    };
    let Some(s) = core.session_if(p.key, p.serial) else {
        return;
    };
    s.gate = Gate::Open;
    let remote = core.dir.get(p.account).remote.as_deref().map(|r| r.inc);
    if alive || core.dir.locate(p.account).is_some() {
        info!(
            "conn {}: login refused for user {} (online on another node)",
            p.key,
            core.dir.name(p.account)
        );
        core.error(p.key, ErrorCode::AlreadyOnline, "");
        return core.close(p.key, CloseReason::LoginFailed, now);
    }
    if let Some(inc) = remote {
        node_gone(core, inc, now);
    }
    match p.then {
        AfterProbe::User => super::login::user_accepted(core, p.key, p.account),
        // Published after the logouts, so the claim finds them (or retries after them).
        AfterProbe::Claim { port, peer_key } => claim(core, p.key, p.account, port, peer_key, now),
    }
    core.reap_overflowed(now);
    super::dispatch::resume_input(core, p.key, now);
}

/// A password was wrong: recorded for the cluster to count.
pub(super) fn fail(core: &mut Core, key: usize, account: AccountId, now: Instant) {
    if refuse_unless_healthy(core, key) {
        return core.close(key, CloseReason::LoginFailed, now);
    }
    let at = core.store.wall_ms(now);
    let block_ms = core.cfg.block_duration.as_millis() as u64;
    let s = &mut core.sessions[key];
    s.gate = Gate::Cluster;
    let serial = s.serial;
    let who = core.dir.name(account).into();
    let c = cluster(core);
    c.failing.insert(serial, key);
    let rec = Rec::Fail {
        who,
        inc: c.inc,
        serial,
        at,
        block_ms,
    };
    core.store.publish(rec, None);
}

/// This node's user acknowledged messages up to `upto`: published with the others
/// gathered within `ACK_DELAY`.
pub(super) fn note_ack(core: &mut Core, account: AccountId, upto: u64, now: Instant) {
    let c = cluster(core);
    let e = c.acks.entry(account).or_default();
    *e = (*e).max(upto);
    c.acks_due.get_or_insert(now + ACK_DELAY);
}

/// Publishes gathered acknowledgements: all of them, or `only` one account's (at its
/// logout, so its next login elsewhere does not see them again).
pub(super) fn flush_acks(core: &mut Core, only: Option<AccountId>) {
    let Some(c) = core.cluster.as_deref_mut() else {
        return;
    };
    let acks: Vec<(AccountId, u64)> = match only {
        Some(id) => c.acks.remove(&id).map(|u| (id, u)).into_iter().collect(),
        None => {
            c.acks_due = None;
            c.acks.drain().collect()
        }
    };
    for (id, upto) in acks {
        let to = core.dir.name(id).into();
        core.store.publish(Rec::Ack { to, upto }, None);
    }
}

/// A session of this node ends: its logout is published (and announced to everyone,
/// this node's users included, when it comes back from the stream).
pub(super) fn logged_out(core: &mut Core, account: AccountId, at: u64) {
    let Some(c) = core.cluster.as_deref() else {
        return;
    };
    let login = c.seen.get(account).map_or(0, |s| s.login);
    if login == 0 {
        // The cluster already logged this user out (its node was presumed gone).
        return;
    }
    let rec = Rec::Logout {
        who: core.dir.name(account).into(),
        at,
        login,
    };
    core.store.publish(rec, Some(login));
}

/// The logins of a node incarnation that went silent end: a logout for each of its
/// users (conditional on that login still being current, so several nodes noticing
/// at once publish one logout between them).
pub(super) fn node_gone(core: &mut Core, inc: u64, now: Instant) {
    let at = core.store.wall_ms(now);
    let gone: Vec<(AccountId, u64)> = core
        .dir
        .remote_online()
        .iter()
        .filter_map(|&id| {
            let r = core.dir.get(id).remote.as_deref()?;
            (r.inc == inc).then_some((id, r.login))
        })
        .collect();
    if !gone.is_empty() {
        warn!(
            "node incarnation {inc:016x} is gone: logging out its {} users",
            gone.len()
        );
    }
    for (id, login) in gone {
        let rec = Rec::Logout {
            who: core.dir.name(id).into(),
            at,
            login,
        };
        core.store.publish(rec, Some(login));
    }
}

/// A record from the stream, with its sequence: applied to the replica.
pub(super) fn apply(core: &mut Core, seq: u64, rec: Rec, now: Instant) {
    match rec {
        Rec::Login {
            who,
            node,
            inc,
            serial,
            key,
            ..
        } => {
            let id = core.dir.id_or_ghost(&who);
            super::login::reset_failures(core, id);
            let c = cluster(core);
            let seen = c.seen.get_mut(id);
            let previous = seen.login;
            seen.last = seq;
            seen.login = seq;
            let mine = inc == c.inc;
            if previous != 0 {
                // Only a replay can show two logins in a row (the claims are
                // conditional): the later one is current.
                forget_remote(core, id);
            }
            if mine {
                let claim = cluster(core).claims.remove(&serial);
                match claim {
                    Some(cl) if core.session_if(cl.key, serial).is_some() => {
                        welcome(core, cl, now);
                    }
                    _ => {
                        // The session went away while its claim was on the way.
                        let at = core.store.wall_ms(now);
                        logged_out(core, id, at);
                    }
                }
                return;
            }
            let remote = Remote {
                inc,
                login: seq,
                pos: 0,
            };
            core.dir.set_remote(id, remote);
            core.dir.get_mut(id).peer_key = key;
            cluster(core).by_inc.entry(inc).or_insert((0, node)).0 += 1;
            presence::announce(core, id, true);
        }
        Rec::Logout { who, at, login } => {
            let id = core.dir.id_or_ghost(&who);
            super::login::reset_failures(core, id);
            let seen = cluster(core).seen.get_mut(id);
            seen.last = seq;
            let current = seen.login;
            if current != login {
                // Replayed after a roll-up removed its login: history only.
                let a = core.dir.get_mut(id);
                a.last_seen = a.last_seen.max(Some(at));
                return;
            }
            seen.login = 0;
            if core.dir.get(id).remote.is_some() {
                forget_remote(core, id);
            } else if let Some(key) = core.dir.locate(id) {
                // This node's user, logged out by the cluster while this node was
                // cut off (presumed gone): the session ends here too.
                info!(
                    "conn {key}: user {} was logged out by the cluster",
                    core.dir.name(id)
                );
                core.bye(key, ByeReason::ClusterLost, CloseReason::Removed, now);
            }
            let a = core.dir.get_mut(id);
            a.last_seen = a.last_seen.max(Some(at));
            presence::announce(core, id, false);
        }
        Rec::Msg { to, from, text } => {
            let to = core.dir.id_or_ghost(&to);
            let from = core.dir.id_or_ghost(&from);
            deliver(core, seq, to, from, &text);
        }
        Rec::Ack { to, upto } => {
            let to = core.dir.id_or_ghost(&to);
            if let Some(m) = core.messaging.mailboxes.get_mut_if_any(to) {
                while m.front_id().is_some_and(|id| id <= upto) {
                    m.pop_front();
                }
            }
        }
        Rec::Block { who, whom, on } => {
            let who = core.dir.id_or_ghost(&who);
            let whom = core.dir.id_or_ghost(&whom);
            core.blocking.set(who, whom, on);
        }
        Rec::Fail {
            who,
            inc,
            serial,
            at,
            block_ms,
        } => {
            let id = core.dir.id_or_ghost(&who);
            let now_ms = core.store.wall_ms(now);
            let until = now + Duration::from_millis((at + block_ms).saturating_sub(now_ms));
            let locked = super::login::count_failure(core, id, until, now);
            let c = cluster(core);
            if inc != c.inc {
                return;
            }
            let Some(key) = c.failing.remove(&serial) else {
                return;
            };
            let Some(s) = core.session_if(key, serial) else {
                return;
            };
            s.gate = Gate::Open;
            super::login::tell_failure(core, key, id, locked, now);
            core.reap_overflowed(now);
            super::dispatch::resume_input(core, key, now);
        }
    }
}

fn forget_remote(core: &mut Core, id: AccountId) {
    if let Some(r) = core.dir.clear_remote(id) {
        let c = cluster(core);
        if let Some((n, _)) = c.by_inc.get_mut(&r.inc) {
            *n -= 1;
            if *n == 0 {
                c.by_inc.remove(&r.inc);
            }
        }
    }
}

/// This node's claim came back: the session is logged in.
fn welcome(core: &mut Core, cl: Claim, now: Instant) {
    let Claim {
        key,
        account: id,
        port,
        peer_key,
        ..
    } = cl;
    super::login::enter(core, key, id, port, peer_key, now);
    core.reap_overflowed(now);
    super::dispatch::resume_input(core, key, now);
}

/// A message applied: into the recipient's window if it is this node's user with
/// room and nothing older waiting, else into (this replica of) its mailbox.
fn deliver(core: &mut Core, id: u64, to: AccountId, from: AccountId, text: &str) {
    if messaging::hand_over(core, to, id, from, text) {
        return;
    }
    core.messaging.mailboxes.get_mut(to).push_back(Stored {
        id,
        from,
        text: text.into(),
    });
    core.stats.stored += 1;
    messaging::pump(core, to);
}

/// `MSG` in cluster mode, after the checks: published; `+SENT` once the broker has it.
pub(super) fn direct(core: &mut Core, cx: Cx, to: &str, target: AccountId, text: &str) {
    let stored = !core.dir.is_online(target);
    let rec = Rec::Msg {
        to: to.into(),
        from: core.dir.name(cx.account).into(),
        text: text.into(),
    };
    core.store.publish(rec, None);
    core.reply_durable(cx.key, Reply::Sent { to, stored });
}

/// `BCAST` in cluster mode: sent to every node (this one included) and counted here
/// from the replica's view of who is online.
pub(super) fn broadcast(core: &mut Core, cx: Cx, text: &str) {
    if refuse_unless_healthy(core, cx.key) {
        return;
    }
    let from = cx.account;
    let blockers = core.blocking.is_blocked_by_anyone(from);
    let (mut delivered, mut blocked) = (0u32, 0u32);
    for &o in core.dir.online().iter().chain(core.dir.remote_online()) {
        if o == from {
            continue;
        }
        if blockers && core.blocking.has_blocked(o, from) {
            blocked += 1;
        } else {
            delivered += 1;
        }
    }
    core.store.emit(Op::Broadcast {
        from: core.dir.name(from).into(),
        text: text.into(),
    });
    core.reply(cx.key, Reply::Bcast { delivered, blocked });
}

/// A broadcast from any node: shown to this node's users.
pub(super) fn broadcast_in(core: &mut Core, from: &str, text: &str) {
    let from_id = core.dir.id_or_ghost(from);
    let mut line = Vec::with_capacity(text.len() + 32);
    Push::Bcast { from, text }.encode(&mut line);
    let (delivered, _) = presence::fan_out(core, from_id, true, |out| {
        out.tail().extend_from_slice(&line)
    });
    core.stats.broadcast_deliveries += u64::from(delivered);
}

/// `PRIVATE` to a user on another node: asks that node (the session waits).
pub(super) fn introduce_remote(core: &mut Core, cx: Cx, user: &str, target: AccountId) {
    if refuse_unless_healthy(core, cx.key) {
        return;
    }
    let Some(inc) = core.dir.get(target).remote.as_deref().map(|r| r.inc) else {
        return core.error(cx.key, ErrorCode::Offline, user);
    };
    let key: Box<str> = core
        .dir
        .get(cx.account)
        .peer_key
        .clone()
        .unwrap_or_default();
    let from: Box<str> = core.dir.name(cx.account).into();
    let s = &mut core.sessions[cx.key];
    s.gate = Gate::Cluster;
    let serial = s.serial;
    let c = cluster(core);
    let id = c.next_intro;
    c.next_intro += 1;
    c.intros.insert(id, (cx.key, serial, user.into()));
    core.store.emit(Op::Intro {
        id,
        inc,
        from,
        to: user.into(),
        key,
    });
}

/// Another node asks this one to introduce `from` to its user `to`.
pub(super) fn intro_request(core: &mut Core, from: &str, to: &str, from_key: &str) -> IntroAnswer {
    let Some(target) = core.dir.lookup(to) else {
        return IntroAnswer::Offline;
    };
    let Some(tkey) = core.dir.locate(target) else {
        return IntroAnswer::Offline;
    };
    let addr = match super::private::peer_address(core, tkey) {
        Ok(addr) => addr,
        Err(ErrorCode::NoPeer) => return IntroAnswer::NoPeer,
        Err(_) => return IntroAnswer::Offline,
    };
    let from_key = (!from_key.is_empty()).then(|| Box::<str>::from(from_key));
    let (token, key) = super::private::tell_expect(core, tkey, target, from, from_key);
    IntroAnswer::Peer { addr, token, key }
}

/// The answer to an introduction this node asked for.
pub(super) fn intro_answer(core: &mut Core, id: u64, answer: IntroAnswer, now: Instant) {
    let Some((key, serial, user)) = cluster(core).intros.remove(&id) else {
        return;
    };
    let Some(s) = core.session_if(key, serial) else {
        return;
    };
    s.gate = Gate::Open;
    match answer {
        IntroAnswer::Peer {
            addr,
            token,
            key: k,
        } => core.reply(
            key,
            Reply::Peer {
                user: &user,
                addr,
                token: &token,
                key: &k,
            },
        ),
        IntroAnswer::Offline => core.error(key, ErrorCode::Offline, &user),
        IntroAnswer::NoPeer => core.error(key, ErrorCode::NoPeer, &user),
    }
    core.reap_overflowed(now);
    super::dispatch::resume_input(core, key, now);
}
