//! Every deadline of the core on one hashed timer wheel, and what each timer means
//! when it fires: the login deadline, inactivity, liveness pings, lockout expiry, and
//! the end of a flood-control pause.
//!
//! Deadlines of whole-connection timers are rounded up to the next whole second since
//! start, so the timers of many connections share wheel ticks and an idle server wakes
//! at most once a second. Timers carry the session's serial: a timer of a closed
//! connection whose key was reused does nothing.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use log::info;

use super::session::{self, Gate, Phase};
use super::{AccountId, CloseReason, Core, dispatch, login};
use crate::protocol::frames::{ByeReason, Push};
use crate::server::timer::{TimerHandle, TimerWheel};

#[derive(Debug, Clone, Copy)]
pub(super) enum TimerKind {
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

pub(super) struct Timers {
    wheel: TimerWheel<TimerKind>,
    origin: Instant,
}

impl Timers {
    pub(super) fn new(now: Instant) -> Timers {
        Timers {
            wheel: TimerWheel::new(now, Duration::from_millis(100), 1024),
            origin: now,
        }
    }

    /// Rounds a deadline up to the next whole second since start.
    fn coarse(&self, t: Instant) -> Instant {
        let since = t.saturating_duration_since(self.origin);
        let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
        self.origin + Duration::from_secs(secs)
    }

    /// Arms a timer at `at`, rounded up to a whole second.
    pub(super) fn insert(&mut self, at: Instant, kind: TimerKind) -> TimerHandle {
        let at = self.coarse(at);
        self.wheel.insert(at, kind)
    }

    /// Arms a timer at exactly `at` (short pauses).
    pub(super) fn insert_exact(&mut self, at: Instant, kind: TimerKind) -> TimerHandle {
        self.wheel.insert(at, kind)
    }

    pub(super) fn cancel(&mut self, h: TimerHandle) {
        self.wheel.cancel(h);
    }

    pub(super) fn expire(&mut self, now: Instant, fire: impl FnMut(TimerKind)) {
        self.wheel.expire(now, fire);
    }

    pub(super) fn next_deadline(&mut self) -> Option<Instant> {
        self.wheel.next_deadline()
    }
}

/// What a due timer does.
pub(super) fn fire(core: &mut Core, t: TimerKind, now: Instant) {
    match t {
        TimerKind::Lockout { account, ip } => login::lock_expired(core, account, ip, now),
        TimerKind::Resume { key, serial } => {
            if let Some(s) = session::current(&mut core.sessions, key, serial)
                && s.gate == Gate::Throttled
            {
                s.gate = Gate::Open;
                dispatch::resume_input(core, key, now);
            }
        }
        TimerKind::Login { key, serial } => login_deadline(core, key, serial, now),
        TimerKind::Idle { key, serial } => inactivity(core, key, serial, now),
        TimerKind::Live { key, serial } => liveness(core, key, serial, now),
    }
}

/// No login within `--login-timeout`.
fn login_deadline(core: &mut Core, key: usize, serial: u64, now: Instant) {
    let Some(s) = session::current(&mut core.sessions, key, serial) else {
        return;
    };
    if let Phase::Hello { login_timer } | Phase::Login { login_timer, .. } = &mut s.phase {
        *login_timer = None;
        core.stats.login_timeouts += 1;
        info!(
            "conn {key}: no login within {:?}, closing",
            core.cfg.login_timeout
        );
        core.bye(key, ByeReason::LoginTimeout, CloseReason::LoginTimeout, now);
    }
}

/// The inactivity timer: logs out a user who typed nothing for `TIMEOUT`, or re-arms
/// for the rest of the interval (activity does not touch the timer: checked lazily).
fn inactivity(core: &mut Core, key: usize, serial: u64, now: Instant) {
    let timeout = core.cfg.timeout;
    let Some(a) = session::current(&mut core.sessions, key, serial).and_then(|s| s.active_mut())
    else {
        return;
    };
    a.idle_timer = None;
    let deadline = a.last_activity + timeout;
    if deadline <= now {
        core.stats.idle_logouts += 1;
        core.push(key, |out| Push::Timeout.encode(out));
        return core.close(key, CloseReason::Idle, now);
    }
    let h = core
        .timers
        .insert(deadline, TimerKind::Idle { key, serial });
    if let Some(a) = core.sessions.get_mut(key).and_then(|s| s.active_mut()) {
        a.idle_timer = Some(h);
    }
}

/// The liveness check: ping a connection silent for `ping_interval`; drop it if the
/// ping goes unanswered for `ping_timeout`.
fn liveness(core: &mut Core, key: usize, serial: u64, now: Instant) {
    let (interval, grace) = (core.cfg.ping_interval, core.cfg.ping_timeout);
    let Some(s) = session::current(&mut core.sessions, key, serial) else {
        return;
    };
    s.live.timer = None;
    s.shrink();
    if s.input_paused() {
        // Not reading it on purpose: its silence proves nothing.
        s.live.last_rx = now;
        s.live.ping_sent = None;
    }
    if let Some(sent) = s.live.ping_sent {
        if s.live.last_rx <= sent {
            core.stats.dead_peer_kills += 1;
            info!("conn {key}: no answer to ping within {grace:?}, closing");
            return core.close(key, CloseReason::NoPong, now);
        }
        s.live.ping_sent = None;
    }
    let next = if now.saturating_duration_since(s.live.last_rx) >= interval {
        s.live.ping_seq += 1;
        s.live.ping_sent = Some(now);
        let seq = s.live.ping_seq;
        core.outbox
            .push(key, &mut s.output, |out| Push::Ping { seq }.encode(out));
        now + grace
    } else {
        s.live.last_rx + interval
    };
    let h = core.timers.insert(next, TimerKind::Live { key, serial });
    if let Some(s) = core.sessions.get_mut(key) {
        s.live.timer = Some(h);
    }
}

/// `PONG <seq>`: answers our latest ping.
pub(super) fn pong(core: &mut Core, key: usize, seq: u64) {
    if let Some(s) = core.sessions.get_mut(key)
        && seq == s.live.ping_seq
    {
        s.live.ping_sent = None;
    }
}
