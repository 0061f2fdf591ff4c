//! Private (peer-to-peer) chat introductions: `PRIVATE <user>` gets the target's
//! address and a one-time token, and the target is told to `*EXPECT` the requester
//! with that token. The server only introduces; the conversation never passes here.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;

use log::info;

use super::{AccountId, Core, Cx, blocking};
use crate::protocol::frames::{ErrorCode, Push, Reply};
use crate::server::flood::Rate;

/// Introductions one user may request: each puts a token in the target's client table
/// for 30 s, so one user asking in a loop must not crowd out the others.
pub(super) const RATE: Rate = Rate {
    burst: 8.0,
    per_sec: 8.0 / 30.0,
};

pub(super) struct Introductions {
    keys: std::collections::hash_map::RandomState,
    counter: u64,
}

impl Introductions {
    pub(super) fn new() -> Introductions {
        Introductions {
            keys: std::collections::hash_map::RandomState::new(),
            counter: 0,
        }
    }

    /// 128 bits, unpredictable to peers (SipHash keyed by the process's random keys
    /// over a counter), unique per introduction.
    pub(super) fn token(&mut self) -> String {
        let mut out = String::with_capacity(32);
        for _ in 0..2 {
            self.counter += 1;
            let mut h = self.keys.build_hasher();
            h.write_u64(self.counter);
            out.push_str(&format!("{:016x}", h.finish()));
        }
        out
    }
}

/// `PRIVATE <user>`: checks unknown user, self, blocked (whether or not the target is
/// online), then offline, as the contract orders.
pub(super) fn introduce(core: &mut Core, cx: Cx, user: &str) {
    let Some(target) = blocking::target(core, cx, user) else {
        return;
    };
    if core.blocking.has_blocked(target, cx.account) {
        return core.error(cx.key, ErrorCode::BlockedBy, user);
    }
    let Some(tkey) = core.dir.locate(target) else {
        if core.dir.get(target).remote.is_some() {
            if take_intro_token(core, cx) {
                super::cluster::introduce_remote(core, cx, user, target);
            }
            return;
        }
        return core.error(cx.key, ErrorCode::Offline, user);
    };
    let addr = match peer_address(core, tkey) {
        Ok(addr) => addr,
        Err(code) => return core.error(cx.key, code, user),
    };
    if !take_intro_token(core, cx) {
        return;
    }
    let me: Box<str> = core.dir.name(cx.account).into();
    let my_key = core.dir.get(cx.account).peer_key.clone();
    let (token, their_key) = tell_expect(core, tkey, target, &me, my_key);
    core.reply(
        cx.key,
        Reply::Peer {
            user,
            addr,
            token: &token,
            key: &their_key,
        },
    );
}

/// Where session `tkey`'s client takes private connections: `-OFFLINE` if it is no
/// longer logged in, `-NO_PEER` if its client announced no peer port.
pub(super) fn peer_address(core: &mut Core, tkey: usize) -> Result<SocketAddr, ErrorCode> {
    let (ip, port) = core
        .sessions
        .get_mut(tkey)
        .and_then(|s| Some((s.ip, s.active_mut()?.peer_port)))
        .ok_or(ErrorCode::Offline)?;
    let port = port.ok_or(ErrorCode::NoPeer)?;
    Ok(SocketAddr::new(ip, port))
}

/// The target's side of an introduction: its client (session `tkey`, account
/// `target`) is told to expect `caller` with a fresh token. Returns the token and the
/// certificate fingerprint the caller must pin.
///
/// Each side learns the certificate the other will present, so the private
/// connection is mutual TLS between exactly these two clients. Only when both
/// announced one: an older client neither understands the extra field nor speaks TLS
/// to peers, so with one the pair stays in plain text, as before.
pub(super) fn tell_expect(
    core: &mut Core,
    tkey: usize,
    target: AccountId,
    caller: &str,
    caller_key: Option<Box<str>>,
) -> (Box<str>, Box<str>) {
    let token: Box<str> = core.private.token().into();
    let (caller_key, their_key): (Box<str>, Box<str>) =
        match (caller_key, core.dir.get(target).peer_key.clone()) {
            (Some(m), Some(t)) => (m, t),
            _ => (Box::default(), Box::default()),
        };
    core.push(tkey, |out| {
        Push::Expect {
            user: caller,
            token: &token,
            key: &caller_key,
        }
        .encode(out)
    });
    (token, their_key)
}

/// Takes one of the caller's introduction tokens, or answers `-RATE_LIMITED`.
fn take_intro_token(core: &mut Core, cx: Cx) -> bool {
    let stamp = core.timers.stamp(cx.now);
    if let Some(a) = core.sessions.get_mut(cx.key).and_then(|s| s.active_mut())
        && a.intros.take(RATE, stamp).is_err()
    {
        info!("conn {}: too many private introductions, refused", cx.key);
        core.error(cx.key, ErrorCode::RateLimited, "");
        return false;
    }
    true
}
