//! The handshake and the login: `HELLO`, `USER` then `PASS` (the classic dialogue's
//! order) or `LOGIN` in one go, the lockout after three wrong passwords, hash
//! verification off the loop, and `LOGOUT`.
//!
//! Lockouts are counted per username (scope `account`, the contract's rule) or per
//! (username, address) (scope `account+ip`); per-address states expire so they cannot
//! pile up. Hashed passwords go through the bounded, fair [`VerifyQueue`]; the lock is
//! checked again when a job leaves it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::directory::PerAccount;
use super::session::{Active, Gate, Phase};
use super::timers::TimerKind;
use super::{AccountId, CloseReason, Core, CoreConfig, Cx, LockoutScope, messaging, presence};
use crate::protocol::frames::{self, ErrorCode, PROTOCOL_VERSION, Reply};
use crate::server::accounts;
use crate::server::flood::TokenBucket;
use crate::server::verify_queue::{VerifyJob, VerifyQueue};

/// Wrong passwords and the lockout they lead to, for a username or a (username,
/// address) pair depending on the scope.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct LockState {
    /// Consecutive wrong passwords since the last success or lockout.
    failures: u8,
    pub locked_until: Option<Instant>,
    last_failure: Option<Instant>,
}

pub(super) struct Login {
    scope: LockoutScope,
    block_duration: Duration,
    /// Scope `account`: per username.
    pub by_account: PerAccount<LockState>,
    /// Scope `account+ip`: per (username, address).
    pub by_ip: HashMap<(AccountId, IpAddr), LockState>,
    queue: VerifyQueue,
    /// Peer certificate fingerprints of logins waiting for a verdict, by (key, serial):
    /// kept here rather than in `Gate::Verifying` so that every session does not grow
    /// by a pointer for what only a login in progress needs.
    pending_keys: HashMap<(usize, u64), Box<str>>,
}

impl Login {
    pub(super) fn new(cfg: &CoreConfig) -> Login {
        Login {
            scope: cfg.lockout_scope,
            block_duration: cfg.block_duration,
            by_account: PerAccount::default(),
            by_ip: HashMap::new(),
            queue: VerifyQueue::default(),
            pending_keys: HashMap::new(),
        }
    }

    /// Whether `id` is locked out for logins from `ip`.
    fn locked(&self, id: AccountId, ip: IpAddr, now: Instant) -> bool {
        match self.scope {
            LockoutScope::Account => self.by_account.get(id).and_then(|l| l.locked_until),
            LockoutScope::AccountIp => self.by_ip.get(&(id, ip)).and_then(|l| l.locked_until),
        }
        .is_some_and(|t| t > now)
    }

    /// The lock state that applies to `id` logging in from `ip` (created if missing).
    fn state(&mut self, id: AccountId, ip: IpAddr) -> &mut LockState {
        match self.scope {
            LockoutScope::Account => self.by_account.get_mut(id),
            LockoutScope::AccountIp => self.by_ip.entry((id, ip)).or_default(),
        }
    }

    /// The address a lockout record carries under the current scope.
    fn scope_ip(&self, ip: IpAddr) -> Option<IpAddr> {
        (self.scope == LockoutScope::AccountIp).then_some(ip)
    }

    /// Drops the verification of a connection that closed.
    pub(super) fn cancel(&mut self, key: usize, serial: u64, account: AccountId) {
        self.queue.cancel(key, serial, account);
        self.pending_keys.remove(&(key, serial));
    }

    pub(super) fn verify_queued(&self) -> usize {
        self.queue.len()
    }

    /// A lockout recovered from the journal.
    pub(super) fn restore_lock(&mut self, id: AccountId, ip: Option<IpAddr>, until: Instant) {
        let st = match ip {
            None => self.by_account.get_mut(id),
            Some(ip) => self.by_ip.entry((id, ip)).or_default(),
        };
        st.locked_until = Some(until);
    }
}

/// Arms the timer that ends a lockout (or forgets an expired per-address failure count).
pub(super) fn arm_lock_timer(core: &mut Core, account: AccountId, ip: Option<IpAddr>, at: Instant) {
    core.timers.insert(at, TimerKind::Lockout { account, ip });
}

/// A lockout timer fired: the lock ends; a per-address state with nothing left to
/// remember is dropped.
pub(super) fn lock_expired(core: &mut Core, account: AccountId, ip: Option<IpAddr>, now: Instant) {
    let grace = core.login.block_duration;
    let st = match ip {
        None => core.login.by_account.get_mut(account),
        Some(ip) => match core.login.by_ip.get_mut(&(account, ip)) {
            Some(st) => st,
            None => return,
        },
    };
    if st.locked_until.is_some_and(|u| u <= now) {
        st.locked_until = None;
        st.failures = 0;
    }
    let stale = st.locked_until.is_none() && st.last_failure.is_none_or(|t| t + grace <= now);
    if let (Some(ip), true) = (ip, stale) {
        core.login.by_ip.remove(&(account, ip));
    }
}

/// `HELLO <version>`.
pub(super) fn hello(core: &mut Core, key: usize, version: u32) {
    if version != PROTOCOL_VERSION {
        return core.error(key, ErrorCode::Version, &PROTOCOL_VERSION.to_string());
    }
    let s = &mut core.sessions[key];
    if let Phase::Hello { deadline } = s.phase {
        s.phase = Phase::Login {
            deadline,
            user: None,
        };
    }
    let software = std::mem::take(&mut core.software);
    let ping = core.cfg.ping_interval.as_secs().max(1);
    core.reply(
        key,
        Reply::Hello {
            version: PROTOCOL_VERSION,
            software: &software,
            ping,
        },
    );
    core.software = software;
}

/// `USER <name>`: the classic dialogue checks the username before asking the password.
/// An unknown name may be retried; a locked-out or online account is refused and the
/// connection closed, as a full login would be. Never counts as a failure.
pub(super) fn user(core: &mut Core, key: usize, name: &str, now: Instant) {
    let ip = core.sessions[key].ip;
    let Some(id) = core.dir.lookup(name) else {
        info!("conn {key}: unknown user {name:?} from {ip} at the username step");
        return core.error(key, ErrorCode::NoSuchUser, name);
    };
    if refuse_if_locked(core, key, id, ip, now) {
        return;
    }
    if core.dir.is_online(id) {
        // Online on another node that may have died a moment ago: ask it first.
        if super::cluster::online_elsewhere(core, id) {
            let then = super::cluster::AfterProbe::User;
            return super::cluster::probe_owner(core, key, id, then);
        }
        info!("conn {key}: login refused from {ip} for user {name} (already online)");
        core.error(key, ErrorCode::AlreadyOnline, "");
        return core.close(key, CloseReason::LoginFailed, now);
    }
    user_accepted(core, key, id);
}

/// The username step passed: the password is asked next.
pub(super) fn user_accepted(core: &mut Core, key: usize, id: AccountId) {
    if let Phase::Login { user, .. } = &mut core.sessions[key].phase {
        *user = Some(id);
    }
    let name: Box<str> = core.dir.name(id).into();
    core.reply(key, Reply::User { user: &name });
}

/// `LOGIN <user> <password> [<port>]`: both steps at once.
pub(super) fn login(
    core: &mut Core,
    key: usize,
    name: &str,
    pw: &str,
    port: Option<u16>,
    peer_key: &str,
    now: Instant,
) {
    let Some(id) = core.dir.lookup(name) else {
        core.stats.failed_logins += 1;
        let ip = core.sessions[key].ip;
        info!("conn {key}: login failed from {ip} for unknown user {name:?}");
        return core.error(key, ErrorCode::NoSuchUser, name);
    };
    password(core, key, id, pw, port, peer_key, now);
}

/// `PASS <password> [<port>]` (or the second half of `LOGIN`): checks the password at
/// once if it is plain, on the verifier threads if it is a hash.
pub(super) fn password(
    core: &mut Core,
    key: usize,
    id: AccountId,
    pw: &str,
    port: Option<u16>,
    peer_key: &str,
    now: Instant,
) {
    let ip = core.sessions[key].ip;
    let peer_key = (!peer_key.is_empty()).then(|| Box::<str>::from(peer_key));
    if refuse_if_locked(core, key, id, ip, now) {
        return;
    }
    let secret = core.dir.get(id).password.clone();
    if !accounts::is_hashed(&secret) {
        let ok = accounts::plain_eq(&secret, pw);
        return finish(core, key, id, ok, port, peer_key, now);
    }
    // Tens of milliseconds of hashing: off the loop. This session's further input
    // waits; everyone else is served meanwhile.
    let s = &mut core.sessions[key];
    let job = VerifyJob {
        key,
        serial: s.serial,
        password: pw.to_owned(),
        hash: secret,
        account: id,
        ip,
    };
    if core.login.queue.push(job).is_err() {
        // Too many logins waiting (from this address, or in all): refused at once,
        // and not counted as a failure.
        core.stats.verify_refused += 1;
        info!("conn {key}: login from {ip} refused: verification queue full");
        return core.error(key, ErrorCode::RateLimited, "");
    }
    s.gate = Gate::Verifying {
        account: id,
        peer_port: port,
    };
    if let Some(k) = peer_key {
        core.login.pending_keys.insert((key, s.serial), k);
    }
}

/// Jobs for the idle verifier threads, fairly across accounts; a job whose account got
/// locked (or logged in) meanwhile is answered at once, without hashing.
pub(super) fn take_jobs(core: &mut Core, free: usize, now: Instant) -> Vec<VerifyJob> {
    let mut jobs = Vec::new();
    while jobs.len() < free {
        let Some(job) = core.login.queue.pop() else {
            break;
        };
        let Some(s) = core.session_if(job.key, job.serial) else {
            continue;
        };
        if !matches!(s.gate, Gate::Verifying { .. }) {
            continue;
        }
        if refuse_if_locked(core, job.key, job.account, job.ip, now) {
            continue;
        }
        // Online here: no hashing. (Online on another node is asked about once the
        // password is known to be right.)
        if core.dir.locate(job.account).is_some() {
            core.error(job.key, ErrorCode::AlreadyOnline, "");
            core.close(job.key, CloseReason::LoginFailed, now);
            continue;
        }
        core.stats.hash_verifications += 1;
        jobs.push(job);
    }
    jobs
}

/// The verdict on a hashed password.
pub(super) fn verdict(core: &mut Core, key: usize, serial: u64, ok: bool, now: Instant) {
    let Some(s) = core.session_if(key, serial) else {
        return;
    };
    let Gate::Verifying { account, peer_port } = s.gate else {
        return;
    };
    s.gate = Gate::Open;
    let peer_key = core.login.pending_keys.remove(&(key, serial));
    finish(core, key, account, ok, peer_port, peer_key, now);
    core.reap_overflowed(now);
    super::dispatch::resume_input(core, key, now);
}

/// Answers `-LOCKED` and closes if `id` is locked out for `ip`.
fn refuse_if_locked(core: &mut Core, key: usize, id: AccountId, ip: IpAddr, now: Instant) -> bool {
    if !core.login.locked(id, ip, now) {
        return false;
    }
    info!(
        "conn {key}: login refused from {ip} for locked user {}",
        core.dir.name(id)
    );
    core.error(key, ErrorCode::Locked, "");
    core.close(key, CloseReason::LoginFailed, now);
    true
}

/// The rest of a login once the password is checked.
fn finish(
    core: &mut Core,
    key: usize,
    id: AccountId,
    ok: bool,
    port: Option<u16>,
    peer_key: Option<Box<str>>,
    now: Instant,
) {
    let ip = core.sessions[key].ip;
    // While a hash was being verified, a reload may have removed the account...
    if core.dir.get(id).ghost {
        let name = core.dir.name(id).to_owned();
        return core.error(key, ErrorCode::NoSuchUser, &name);
    }
    // ...or a lockout may have started.
    if refuse_if_locked(core, key, id, ip, now) {
        return;
    }
    if !ok {
        return failed(core, key, id, ip, now);
    }
    let scope_ip = core.login.scope_ip(ip);
    match scope_ip {
        None => {
            if let Some(st) = core.login.by_account.get_mut_if_any(id) {
                st.failures = 0;
            }
        }
        Some(ip) => {
            core.login.by_ip.remove(&(id, ip));
        }
    }
    let name = core.dir.name(id).to_owned();
    if core.dir.is_online(id) {
        if super::cluster::online_elsewhere(core, id) {
            let then = super::cluster::AfterProbe::Claim { port, peer_key };
            return super::cluster::probe_owner(core, key, id, then);
        }
        info!("conn {key}: login refused from {ip} for user {name} (already online)");
        core.error(key, ErrorCode::AlreadyOnline, "");
        return core.close(key, CloseReason::LoginFailed, now);
    }
    if core.cluster.is_some() {
        // The cluster decides: welcomed when the claim comes back from the stream.
        return super::cluster::claim(core, key, id, port, peer_key, now);
    }
    // Success.
    let at = core.store.wall_ms(now);
    core.store.login(&name, at);
    enter(core, key, id, port, peer_key, now);
}

/// A login succeeded (here, or in cluster mode once the stream confirmed it): the
/// session becomes active, is welcomed, gets its stored messages, and everyone is told.
pub(super) fn enter(
    core: &mut Core,
    key: usize,
    id: AccountId,
    port: Option<u16>,
    peer_key: Option<Box<str>>,
    now: Instant,
) {
    core.dir.set_online(id, key);
    core.dir.get_mut(id).peer_key = peer_key;
    core.stats.logins += 1;
    let s = &mut core.sessions[key];
    info!(
        "conn {key}: user {} logged in from {}",
        core.dir.name(id),
        s.ip
    );
    s.gate = Gate::Open;
    let serial = s.serial;
    let stamp = core.timers.stamp(now);
    s.phase = Phase::Active(Active {
        account: id,
        last_activity: stamp,
        peer_port: port,
        inflight: Default::default(),
        intros: TokenBucket::full(super::private::RATE, stamp),
    });
    // No login deadline any more; inactivity instead.
    super::timers::rearm(core, key, serial);
    core.reply(key, Reply::Welcome);
    messaging::pump(core, id);
    presence::announce(core, id, true);
}

/// A wrong password: counted, and the third in a row locks.
fn failed(core: &mut Core, key: usize, id: AccountId, ip: IpAddr, now: Instant) {
    let block = core.login.block_duration;
    let scope_ip = core.login.scope_ip(ip);
    let name = core.dir.name(id).to_owned();
    core.stats.failed_logins += 1;
    info!("conn {key}: login failed from {ip} for user {name} (wrong password)");
    if core.cluster.is_some() {
        // Counted by every node in stream order; answered when it comes back.
        return super::cluster::fail(core, key, id, now);
    }
    let st = core.login.state(id, ip);
    st.failures += 1;
    st.last_failure = Some(now);
    let failures = st.failures;
    if failures < 3 {
        if scope_ip.is_some() {
            // Per-address failure counts expire, so they cannot pile up forever.
            arm_lock_timer(core, id, scope_ip, now + block);
        }
        let left = (3 - failures).to_string();
        return core.error(key, ErrorCode::BadPassword, &left);
    }
    st.failures = 0;
    let until = now + block;
    st.locked_until = Some(until);
    let until_ms = core.store.wall_ms(until);
    core.store.lock(&name, scope_ip, until_ms);
    core.stats.lockouts += 1;
    warn!("user {name}: locked for {block:?} after 3 failed logins (last from {ip})");
    arm_lock_timer(core, id, scope_ip, until);
    // Told only once the lockout is stored: it must survive a restart.
    core.emit_reply(key, true, |out| {
        frames::encode_error(out, ErrorCode::LockedNow, "")
    });
    core.close(key, CloseReason::LoginFailed, now);
}

/// Cluster mode: a wrong password from the stream, counted (per account, in stream
/// order, on every node); returns whether it locked the account until `until`.
pub(super) fn count_failure(core: &mut Core, id: AccountId, until: Instant, now: Instant) -> bool {
    let st = core.login.by_account.get_mut(id);
    st.failures += 1;
    st.last_failure = Some(now);
    if st.failures < 3 {
        return false;
    }
    st.failures = 0;
    st.locked_until = Some(until);
    core.stats.lockouts += 1;
    arm_lock_timer(core, id, None, until);
    true
}

/// Cluster mode: the answer to a wrong password once the stream has counted it.
pub(super) fn tell_failure(core: &mut Core, key: usize, id: AccountId, locked: bool, now: Instant) {
    if locked {
        warn!(
            "user {}: locked for {:?} after 3 failed logins",
            core.dir.name(id),
            core.login.block_duration
        );
        core.error(key, ErrorCode::LockedNow, "");
        return core.close(key, CloseReason::LoginFailed, now);
    }
    let failures = core.login.by_account.get(id).map_or(1, |st| st.failures);
    let left = 3u8.saturating_sub(failures).to_string();
    core.error(key, ErrorCode::BadPassword, &left);
}

/// Cluster mode: a login or logout ends a series of wrong passwords.
pub(super) fn reset_failures(core: &mut Core, id: AccountId) {
    if let Some(st) = core.login.by_account.get_mut_if_any(id) {
        st.failures = 0;
    }
}

/// `LOGOUT`: `+BYE` goes out once the logout (login history, journaled by the close
/// into this same batch) is stored.
pub(super) fn logout(core: &mut Core, cx: Cx) {
    core.reply_durable(cx.key, Reply::Bye);
    core.close(cx.key, CloseReason::Logout, cx.now);
}
