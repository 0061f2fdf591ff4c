//! The seam between the chat rules and where their durable effects go.
//!
//! Handlers never encode records themselves: they call `Durability`'s typed methods
//! (`message`, `ack`, `block`, `login`, `logout`, `lock`), which hand a [`Record`] to
//! the [`Store`]. The single-node store is the journal ([`JournalStore`]: records
//! encoded into one batch per loop iteration, which the loop hands to the writer
//! thread); [`InMemory`] stores nothing. A broker-backed store would implement the same
//! trait, so it can be added beside them without touching a handler. A reply that
//! claims durability waits for the sequence number of the batch being built
//! (`Durability::hold_seq`); the loop reports which batches are durable.
//!
//! In cluster mode the same typed methods publish records to the broker instead
//! (`publish`, `take_ops`); a batch is then durable once the broker acknowledged all
//! of its records.
//!
//! Also here: restoring the state a journal describes, and the snapshot a compaction
//! writes.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use log::warn;

use super::cluster::Op;
use super::{AccountId, Core, Stored};
use crate::server::cluster::record::Rec;
use crate::server::store::{self, Record, Recovered};

/// Where durable changes go.
pub trait Store {
    /// Records one change.
    fn record(&mut self, rec: Record<'_>);
    /// Takes the changes recorded since the last call (one batch), if any.
    fn take_batch(&mut self) -> Option<Vec<u8>>;
    /// Whether anything is stored (replies that claim durability wait for it).
    fn is_durable(&self) -> bool;
}

/// Nothing is stored: a restart forgets everything (`--in-memory`, tests, benches).
pub struct InMemory;

impl Store for InMemory {
    fn record(&mut self, _: Record<'_>) {}
    fn take_batch(&mut self) -> Option<Vec<u8>> {
        None
    }
    fn is_durable(&self) -> bool {
        false
    }
}

/// The journal: records are encoded into the batch of the current loop iteration.
#[derive(Default)]
pub struct JournalStore {
    batch: Vec<u8>,
}

impl Store for JournalStore {
    fn record(&mut self, rec: Record<'_>) {
        rec.encode(&mut self.batch);
    }

    fn take_batch(&mut self) -> Option<Vec<u8>> {
        if self.batch.is_empty() {
            return None;
        }
        let cap = self.batch.capacity().min(1 << 20);
        Some(std::mem::replace(&mut self.batch, Vec::with_capacity(cap)))
    }

    fn is_durable(&self) -> bool {
        true
    }
}

pub(super) struct Durability {
    store: Box<dyn Store>,
    /// Cluster mode: what this iteration asks of the broker (the batch's records and
    /// the rest), and whether a reply waits for this batch even if it has no record.
    ops: Vec<Op>,
    clustered: bool,
    wanted: bool,
    /// The number the batch being built gets when taken (the loop's writer numbers
    /// batches 1, 2, 3 ... in the order it receives them).
    next_seq: u64,
    /// False while the store cannot write: new messages are refused.
    healthy: bool,
    origin: Instant,
    /// Wall-clock time at `origin`, in Unix ms (history and lockouts are stored in it).
    origin_wall: u64,
}

impl Durability {
    pub(super) fn new(store: Box<dyn Store>, now: Instant) -> Durability {
        Durability {
            store,
            ops: Vec::new(),
            clustered: false,
            wanted: false,
            next_seq: 1,
            healthy: true,
            origin: now,
            origin_wall: store::unix_ms(SystemTime::now()),
        }
    }

    /// Wall-clock time of `now`, in Unix ms.
    pub(super) fn wall_ms(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_millis();
        self.origin_wall.saturating_add(since as u64)
    }

    /// Cluster mode: durable changes go to the broker (the store keeps nothing).
    pub(super) fn set_clustered(&mut self) {
        self.clustered = true;
    }

    /// The batch a reply claiming the changes recorded so far must wait for.
    pub(super) fn hold_seq(&mut self) -> Option<u64> {
        if self.clustered {
            self.wanted = true;
            return Some(self.next_seq);
        }
        self.store.is_durable().then_some(self.next_seq)
    }

    /// Cluster mode: appends a record to this iteration's batch.
    pub(super) fn publish(&mut self, rec: Rec, expect: Option<u64>) {
        self.ops.push(Op::Publish { rec, expect });
    }

    /// Cluster mode: asks the broker for something that is not stored.
    pub(super) fn emit(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Cluster mode: this iteration's batch, numbered like journal batches.
    pub(super) fn take_ops(&mut self) -> Option<(u64, Vec<Op>)> {
        if self.ops.is_empty() && !self.wanted {
            return None;
        }
        self.wanted = false;
        let seq = self.next_seq;
        self.next_seq += 1;
        Some((seq, std::mem::take(&mut self.ops)))
    }

    pub(super) fn take_batch(&mut self) -> Option<Vec<u8>> {
        let batch = self.store.take_batch()?;
        self.next_seq += 1;
        Some(batch)
    }

    pub(super) fn healthy(&self) -> bool {
        self.healthy
    }

    pub(super) fn set_healthy(&mut self, ok: bool) {
        self.healthy = ok;
    }

    pub(super) fn message(&mut self, id: u64, from: &str, to: &str, text: &str) {
        self.store.record(Record::Msg { id, from, to, text });
    }

    pub(super) fn ack(&mut self, to: &str, upto: u64) {
        self.store.record(Record::Ack { to, upto });
    }

    pub(super) fn block(&mut self, who: &str, whom: &str, on: bool) {
        if self.clustered {
            let (who, whom) = (who.into(), whom.into());
            return self.publish(Rec::Block { who, whom, on }, None);
        }
        self.store.record(if on {
            Record::Block { who, whom }
        } else {
            Record::Unblock { who, whom }
        });
    }

    pub(super) fn login(&mut self, who: &str, at: u64) {
        self.store.record(Record::Login { who, at });
    }

    pub(super) fn logout(&mut self, who: &str, at: u64) {
        self.store.record(Record::Logout { who, at });
    }

    pub(super) fn lock(&mut self, who: &str, ip: Option<IpAddr>, until: u64) {
        match ip {
            None => self.store.record(Record::Lock { who, until }),
            Some(ip) => self.store.record(Record::LockIp {
                who,
                ip: &ip.to_string(),
                until,
            }),
        }
    }
}

/// Loads the state recovered from a journal: mailboxes, blocks, history, lockouts.
/// Users the credentials no longer list become ghosts, so nothing stored is lost.
pub(super) fn restore(core: &mut Core, rec: Recovered, now: Instant) {
    core.messaging.next_id = core.messaging.next_id.max(rec.next_id);
    let now_ms = core.store.wall_ms(now);
    let at = |until: u64| now + Duration::from_millis(until - now_ms);
    let mut ghosts = 0;
    for (name, user) in &rec.users {
        let id = core.dir.id_or_ghost(name);
        for b in &user.blocks {
            let whom = core.dir.id_or_ghost(b);
            core.blocking.set(id, whom, true);
        }
        for m in &user.mailbox {
            let from = core.dir.id_or_ghost(&m.from);
            core.messaging.mailboxes.get_mut(id).push_back(Stored {
                id: m.id,
                from,
                text: m.text.as_str().into(),
            });
        }
        let a = core.dir.get_mut(id);
        ghosts += usize::from(a.ghost);
        // Online when the server stopped: seen until then (the last record's time).
        a.last_seen = if user.online {
            Some(rec.last_time.max(user.last_seen.unwrap_or(0)))
        } else {
            user.last_seen
        };
        if let Some(until) = user.locked_until.filter(|&u| u > now_ms) {
            core.login.restore_lock(id, None, at(until));
            super::login::arm_lock_timer(core, id, None, at(until));
        }
        for (ip, until) in &user.ip_locks {
            let (Ok(ip), true) = (ip.parse::<IpAddr>(), *until > now_ms) else {
                continue;
            };
            core.login.restore_lock(id, Some(ip), at(*until));
            super::login::arm_lock_timer(core, id, Some(ip), at(*until));
        }
    }
    if ghosts > 0 {
        warn!(
            "{ghosts} users in the journal are not in the credentials; their stored messages are kept"
        );
    }
}

/// Encodes the whole durable state as journal records (a compaction snapshot).
pub(super) fn snapshot(core: &Core, now: Instant, out: &mut Vec<u8>) {
    let now_ms = core.store.wall_ms(now);
    let left_ms = |until: Instant| until.saturating_duration_since(now).as_millis() as u64;
    Record::Meta {
        next_id: core.messaging.next_id,
    }
    .encode(out);
    let name = |id: AccountId| core.dir.name(id);
    for (id, a) in core.dir.accounts() {
        let who = &*a.name;
        for &b in core.blocking.blocked_by(id).into_iter().flatten() {
            Record::Block { who, whom: name(b) }.encode(out);
        }
        if a.session.is_some() {
            Record::Login { who, at: now_ms }.encode(out);
        } else if let Some(at) = a.last_seen {
            Record::Logout { who, at }.encode(out);
        }
        if let Some(until) = core.login.by_account.get(id).and_then(|l| l.locked_until)
            && left_ms(until) > 0
        {
            Record::Lock {
                who,
                until: now_ms + left_ms(until),
            }
            .encode(out);
        }
        let inflight = a
            .session
            .and_then(|k| core.sessions.get(k))
            .and_then(|s| match &s.phase {
                super::session::Phase::Active(st) => Some(st.inflight.iter()),
                _ => None,
            })
            .into_iter()
            .flatten();
        for m in inflight {
            let text = String::from_utf8_lossy(m.text);
            Record::Msg {
                id: m.id,
                from: name(m.from),
                to: who,
                text: &text,
            }
            .encode(out);
        }
        let mailbox = core
            .messaging
            .mailboxes
            .get(id)
            .into_iter()
            .flat_map(|m| m.iter());
        for m in mailbox {
            Record::Msg {
                id: m.id,
                from: name(m.from),
                to: who,
                text: &m.text,
            }
            .encode(out);
        }
    }
    for (&(account, ip), st) in &core.login.by_ip {
        if let Some(until) = st.locked_until
            && left_ms(until) > 0
        {
            Record::LockIp {
                who: name(account),
                ip: &ip.to_string(),
                until: now_ms + left_ms(until),
            }
            .encode(out);
        }
    }
}
