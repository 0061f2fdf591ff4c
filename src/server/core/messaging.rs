//! Direct messages and broadcasts: the offline mailboxes, the in-flight window, and
//! acknowledgements.
//!
//! A direct message gets an id (increasing, kept across restarts) and is either in its
//! recipient's [`Mailbox`] or in the recipient session's in-flight window until the
//! client acknowledges it (`ACK <id>`, cumulative). At most `ack_window` messages are in
//! flight per session; the rest wait in the mailbox and are pumped out as acks come in,
//! which paces a login backlog of thousands. When a session ends, its unacknowledged
//! messages go back to the front of the mailbox, in order.

use std::time::Instant;

use super::directory::PerAccount;
use super::inflight::Inflight;
use super::session::Phase;
use super::{AccountId, Core, CoreConfig, Cx, Stored, blocking, cluster, presence};
use crate::protocol::frames::{self, ErrorCode, Push, Reply};
use crate::server::mailbox::{Caps, Mailbox};

pub(super) struct Messaging {
    pub mailboxes: PerAccount<Mailbox>,
    /// The next message id to hand out.
    pub next_id: u64,
    caps: Caps,
    ack_window: usize,
}

impl Messaging {
    pub(super) fn new(cfg: &CoreConfig) -> Messaging {
        Messaging {
            mailboxes: PerAccount::default(),
            next_id: 1,
            caps: Caps {
                max_messages: cfg.mailbox_max_messages,
                max_bytes: cfg.mailbox_max_bytes,
                sender_share: cfg.mailbox_sender_share,
            },
            ack_window: cfg.ack_window,
        }
    }

    /// A closed session's unacknowledged messages go back to the front of the mailbox.
    pub(super) fn give_back(&mut self, id: AccountId, inflight: Inflight) {
        if inflight.len() == 0 {
            return;
        }
        let mailbox = self.mailboxes.get_mut(id);
        for m in inflight.into_stored().into_iter().rev() {
            mailbox.push_front(m);
        }
    }
}

/// `MSG <user> <text>`: checks (unknown user, self, blocked, store) in the contract's
/// order, then delivers at once if the recipient is online with room in its window
/// and nothing older waiting, else stores.
pub(super) fn direct(core: &mut Core, cx: Cx, to: &str, text: &str) {
    let Some(target) = blocking::target(core, cx, to) else {
        return;
    };
    if core.blocking.has_blocked(target, cx.account) {
        return core.error(cx.key, ErrorCode::BlockedBy, to);
    }
    if !core.store.healthy() {
        core.stats.store_refused += 1;
        return core.error(cx.key, ErrorCode::StoreUnavailable, "");
    }
    let id = core.messaging.next_id;
    if core.cluster.is_none() && hand_over(core, target, id, cx.account, text) {
        core.messaging.next_id += 1;
        core.store
            .message(id, core.dir.name(cx.account), core.dir.name(target), text);
        return core.reply_durable(cx.key, Reply::Sent { to, stored: false });
    }
    let mailbox = core.messaging.mailboxes.get_mut(target);
    if !mailbox.admits(cx.account, text.len(), core.messaging.caps) {
        core.stats.mailbox_full += 1;
        return core.error(cx.key, ErrorCode::MailboxFull, to);
    }
    if core.cluster.is_some() {
        // Published; delivered by the recipient's node when the stream hands it back.
        return cluster::direct(core, cx, to, target, text);
    }
    core.messaging.next_id += 1;
    mailbox.push_back(Stored {
        id,
        from: cx.account,
        text: text.into(),
    });
    core.store
        .message(id, core.dir.name(cx.account), core.dir.name(target), text);
    core.stats.stored += 1;
    let online = core.dir.locate(target).is_some();
    core.reply_durable(
        cx.key,
        Reply::Sent {
            to,
            stored: !online,
        },
    );
    if online {
        pump(core, target);
    }
}

/// Writes message `id` straight into `to`'s output and in-flight window if `to` is
/// logged in here with room in the window and nothing older waiting in the mailbox;
/// returns whether it did (else the caller stores it).
pub(super) fn hand_over(
    core: &mut Core,
    to: AccountId,
    id: u64,
    from: AccountId,
    text: &str,
) -> bool {
    let Some(k) = core.dir.locate(to) else {
        return false;
    };
    let window = core.messaging.ack_window;
    if core
        .messaging
        .mailboxes
        .get(to)
        .is_some_and(|m| !m.is_empty())
    {
        return false;
    }
    let Some(s) = core.sessions.get_mut(k) else {
        return false;
    };
    let Phase::Active(a) = &mut s.phase else {
        return false;
    };
    if a.inflight.len() >= window {
        return false;
    }
    frames::encode_msg(s.output.out.tail(), id, core.dir.name(from), text);
    a.inflight.push(id, from, text);
    core.outbox.after_append(k, &mut s.output);
    core.stats.direct_delivered += 1;
    true
}

/// `BCAST <text>`: to every online user but the sender and those who blocked them
/// (counted, for the "some recipients" notice). Never stored.
pub(super) fn broadcast(core: &mut Core, cx: Cx, text: &str) {
    if core.cluster.is_some() {
        return cluster::broadcast(core, cx, text);
    }
    // Encode once, copy to every recipient.
    let mut line = Vec::with_capacity(text.len() + 32);
    Push::Bcast {
        from: core.dir.name(cx.account),
        text,
    }
    .encode(&mut line);
    let (delivered, blocked) = presence::fan_out(core, cx.account, true, |out| {
        out.tail().extend_from_slice(&line)
    });
    core.stats.broadcast_deliveries += u64::from(delivered);
    core.reply(cx.key, Reply::Bcast { delivered, blocked });
}

/// `ACK <id>`: everything in flight up to `id` is delivered; the window refills.
pub(super) fn ack(core: &mut Core, key: usize, id: u64, now: Instant) {
    let Some(a) = core.sessions.get_mut(key).and_then(|s| s.active_mut()) else {
        return;
    };
    let upto = a.inflight.ack(id);
    let account = a.account;
    match upto {
        Some(upto) if core.cluster.is_some() => cluster::note_ack(core, account, upto, now),
        Some(upto) => core.store.ack(core.dir.name(account), upto),
        None => {}
    }
    pump(core, account);
}

/// Sends queued mailbox messages to an online account while its window has room.
pub(super) fn pump(core: &mut Core, id: AccountId) {
    let Some(key) = core.dir.locate(id) else {
        return;
    };
    let Some(s) = core.sessions.get_mut(key) else {
        return;
    };
    let Phase::Active(a) = &mut s.phase else {
        return;
    };
    // Only users with mail have a mailbox entry (the table is not grown at login).
    let Some(mailbox) = core.messaging.mailboxes.get_mut_if_any(id) else {
        return;
    };
    let mut sent = false;
    while a.inflight.len() < core.messaging.ack_window {
        let Some(m) = mailbox.pop_front() else {
            break;
        };
        frames::encode_msg(s.output.out.tail(), m.id, core.dir.name(m.from), &m.text);
        a.inflight.push(m.id, m.from, &m.text);
        sent = true;
    }
    if sent {
        core.outbox.mark_dirty(key, &mut s.output);
    }
}
