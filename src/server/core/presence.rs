//! Who sees whom: `*LOGIN`/`*LOGOUT` fan-out, `WHOELSE` and `WHOELSESINCE`, and the
//! fan-out loop that broadcasts share.

use std::time::Duration;

use super::{AccountId, Core, Cx};
use crate::protocol::OutBuf;
use crate::protocol::frames;

/// Appends to every online user but `from` (and, when `skip_blockers`, those who
/// blocked `from`; presence instead skips those `from` blocked); returns (delivered,
/// skipped because they blocked `from`). One loop for presence and broadcasts.
pub(super) fn fan_out(
    core: &mut Core,
    from: AccountId,
    skip_blockers: bool,
    mut write: impl FnMut(&mut OutBuf),
) -> (u32, u32) {
    let (mut delivered, mut blocked) = (0u32, 0u32);
    let blocks_of_from = core.blocking.blocked_by(from).filter(|b| !b.is_empty());
    let blockers = skip_blockers && core.blocking.is_blocked_by_anyone(from);
    for &other in core.dir.online() {
        if other == from {
            continue;
        }
        let skip = if skip_blockers {
            blockers && core.blocking.has_blocked(other, from)
        } else {
            blocks_of_from.is_some_and(|b| b.contains(&other))
        };
        if skip {
            blocked += 1;
            continue;
        }
        let Some(key) = core.dir.locate(other) else {
            continue;
        };
        let Some(s) = core.sessions.get_mut(key) else {
            continue;
        };
        if s.is_closing() {
            continue;
        }
        write(&mut s.output.out);
        core.outbox.after_append(key, &mut s.output);
        delivered += 1;
    }
    (delivered, blocked)
}

/// Tells every online user not blocked by `who` that `who` logged in or out (names are
/// coalesced into one `*LOGIN a b c` frame at a queue's unwritten tail).
pub(super) fn announce(core: &mut Core, who: AccountId, login: bool) {
    let name: Box<str> = core.dir.name(who).into();
    let prefix: &'static [u8] = if login { b"*LOGIN" } else { b"*LOGOUT" };
    fan_out(core, who, false, |out| {
        out.push_list(prefix, name.as_bytes())
    });
}

/// `WHOELSE` (`window: None`) and `WHOELSESINCE <window>`: every other user online now,
/// plus those seen within the window, leaving out those who blocked the asker.
pub(super) fn who_else(core: &mut Core, cx: Cx, window: Option<Duration>) {
    let since = window.map(|w| {
        let w = w.as_millis().min(u128::from(u64::MAX)) as u64;
        core.store.wall_ms(cx.now).saturating_sub(w)
    });
    let mut names: Vec<&str> = core
        .dir
        .accounts()
        .filter(|&(id, a)| {
            if id == cx.account || a.ghost || core.blocking.has_blocked(id, cx.account) {
                return false;
            }
            if a.session.is_some() || a.remote.is_some() {
                return true;
            }
            matches!((since, a.last_seen), (Some(start), Some(seen)) if seen >= start)
        })
        .map(|(_, a)| &*a.name)
        .collect();
    names.sort_unstable();
    let mut line = Vec::new();
    frames::encode_list(&mut line, "+USERS", names);
    core.emit_reply(cx.key, false, |out| out.extend_from_slice(&line));
}
