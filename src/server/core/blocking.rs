//! Block lists: who has blocked whom (A blocks B: B cannot message A, B's broadcasts
//! skip A, B never sees A's presence, A is left out of B's `whoelse`, and B cannot
//! start a private session with A).

use std::collections::HashSet;

use super::directory::PerAccount;
use super::{AccountId, Core, Cx};
use crate::protocol::frames::{ErrorCode, Reply};

#[derive(Default)]
pub(super) struct Blocking {
    /// Accounts each account has blocked.
    blocks: PerAccount<HashSet<AccountId>>,
    /// How many accounts have blocked each account: a broadcast from someone nobody
    /// blocked (the usual case) skips every per-recipient check.
    blockers: PerAccount<u32>,
}

impl Blocking {
    /// Records that `who` blocks (`on`) or unblocks `whom`; returns whether it changed.
    pub(super) fn set(&mut self, who: AccountId, whom: AccountId, on: bool) -> bool {
        let set = self.blocks.get_mut(who);
        let changed = if on {
            set.insert(whom)
        } else {
            set.remove(&whom)
        };
        if changed {
            let n = self.blockers.get_mut(whom);
            *n = if on { *n + 1 } else { n.saturating_sub(1) };
        }
        changed
    }

    /// Whether anyone has blocked `whom`.
    pub(super) fn is_blocked_by_anyone(&self, whom: AccountId) -> bool {
        self.blockers.get(whom).is_some_and(|&n| n > 0)
    }

    pub(super) fn has_blocked(&self, who: AccountId, whom: AccountId) -> bool {
        self.blocks.get(who).is_some_and(|b| b.contains(&whom))
    }

    pub(super) fn blocked_by(&self, who: AccountId) -> Option<&HashSet<AccountId>> {
        self.blocks.get(who)
    }
}

/// The account a request names, checked as the contract orders: `-NO_SUCH_USER`, then
/// `-SELF` (both answered here).
pub(super) fn target(core: &mut Core, cx: Cx, user: &str) -> Option<AccountId> {
    match core.dir.lookup(user) {
        None => {
            core.error(cx.key, ErrorCode::NoSuchUser, user);
            None
        }
        Some(id) if id == cx.account => {
            core.error(cx.key, ErrorCode::SelfTarget, "");
            None
        }
        Some(id) => Some(id),
    }
}

/// `BLOCK <user>` (idempotent; stored, so its reply waits for the journal when it
/// changed something).
pub(super) fn block(core: &mut Core, cx: Cx, user: &str) {
    let Some(whom) = target(core, cx, user) else {
        return;
    };
    if core.cluster.is_some() && super::cluster::refuse_unless_healthy(core, cx.key) {
        return;
    }
    let changed = core.blocking.set(cx.account, whom, true);
    if changed {
        core.store.block(core.dir.name(cx.account), user, true);
    }
    core.emit_reply(cx.key, changed, |out| Reply::Blocked { user }.encode(out));
}

/// `UNBLOCK <user>`.
pub(super) fn unblock(core: &mut Core, cx: Cx, user: &str) {
    let Some(whom) = target(core, cx, user) else {
        return;
    };
    if core.blocking.has_blocked(cx.account, whom)
        && core.cluster.is_some()
        && super::cluster::refuse_unless_healthy(core, cx.key)
    {
        return;
    }
    if !core.blocking.set(cx.account, whom, false) {
        return core.error(cx.key, ErrorCode::NotBlocked, user);
    }
    core.store.block(core.dir.name(cx.account), user, false);
    core.reply_durable(cx.key, Reply::Unblocked { user });
}
