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
use crate::server::clock::{Clock, Stamp};
use crate::server::timer::{TimerHandle, TimerWheel};

#[derive(Debug, Clone, Copy)]
pub(super) enum TimerKind {
    /// A session's one timer: its login deadline, liveness check and inactivity.
    Session { key: usize, serial: u64 },
    Lockout {
        account: AccountId,
        ip: Option<IpAddr>,
    },
    /// A throttled session gets a token back.
    Resume { key: usize, serial: u64 },
}

pub(super) struct Timers {
    wheel: TimerWheel<TimerKind>,
    /// Start, and the time base of the sessions' stamps.
    clock: Clock,
}

impl Timers {
    pub(super) fn new(now: Instant) -> Timers {
        Timers {
            wheel: TimerWheel::new(now, Duration::from_millis(100), 1024),
            clock: Clock::new(now),
        }
    }

    /// `now` as sessions keep it.
    pub(super) fn stamp(&self, now: Instant) -> Stamp {
        self.clock.stamp(now)
    }

    /// Rounds a deadline up to the next whole second since start.
    fn coarse(&self, t: Instant) -> Instant {
        let origin = self.clock.origin();
        let since = t.saturating_duration_since(origin);
        let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
        origin + Duration::from_secs(secs)
    }

    /// Whether a session's deadline `at` counts as reached at `now`: at its whole
    /// second, as its timer fires (checking the exact instant on a wake-up for another
    /// deadline would act early).
    fn reached(&self, at: Stamp, now: Instant) -> bool {
        self.coarse(self.clock.instant(at)) <= now
    }

    /// Arms a timer at `at`, rounded up to a whole second.
    pub(super) fn insert(&mut self, at: Instant, kind: TimerKind) -> TimerHandle {
        let at = self.coarse(at);
        self.wheel.insert(at, kind)
    }

    /// Arms a session's timer at `at`, rounded up to a whole second.
    pub(super) fn insert_stamp(&mut self, at: Stamp, kind: TimerKind) -> TimerHandle {
        self.insert(self.clock.instant(at), kind)
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
        TimerKind::Session { key, serial } => session_checks(core, key, serial, now),
    }
}

/// A session's timer fired: checks every deadline that may be due, acts on the first
/// one that is, and re-arms for the earliest one left. One timer per connection keeps
/// an idle connection's cost (and the wheel's work) down; activity never touches it.
fn session_checks(core: &mut Core, key: usize, serial: u64, now: Instant) {
    let Some(s) = session::current(&mut core.sessions, key, serial) else {
        return;
    };
    s.timer = None;
    // No login within `--login-timeout`.
    if let Phase::Hello { deadline } | Phase::Login { deadline, .. } = s.phase
        && core.timers.reached(deadline, now)
    {
        core.stats.login_timeouts += 1;
        info!(
            "conn {key}: no login within {:?}, closing",
            core.cfg.login_timeout
        );
        return core.bye(key, ByeReason::LoginTimeout, CloseReason::LoginTimeout, now);
    }
    if core.timers.reached(s.live.due, now) && !liveness(core, key, now) {
        return;
    }
    // Inactivity: no command for `TIMEOUT` (checked lazily: commands only store the
    // time of the last one).
    if let Some(Phase::Active(a)) = core.sessions.get(key).map(|s| &s.phase)
        && core
            .timers
            .reached(a.last_activity.after(core.cfg.timeout), now)
    {
        core.stats.idle_logouts += 1;
        core.push(key, |out| Push::Timeout.encode(out));
        return core.close(key, CloseReason::Idle, now);
    }
    rearm(core, key, serial);
}

/// The liveness check: ping a connection silent for `ping_interval`; drop it if the
/// ping goes unanswered for `ping_timeout`. Returns false if it dropped it.
fn liveness(core: &mut Core, key: usize, now: Instant) -> bool {
    let (interval, grace) = (core.cfg.ping_interval, core.cfg.ping_timeout);
    let t = core.timers.stamp(now);
    let Some(s) = core.sessions.get_mut(key) else {
        return false;
    };
    s.shrink();
    if s.input_paused() {
        // Not reading it on purpose: its silence proves nothing.
        s.live.last_rx = t;
        s.live.awaiting = false;
    }
    if s.live.awaiting {
        core.stats.dead_peer_kills += 1;
        info!("conn {key}: no answer to ping within {grace:?}, closing");
        core.close(key, CloseReason::NoPong, now);
        return false;
    }
    s.live.due = if t.since(s.live.last_rx) >= interval {
        s.live.ping_seq = s.live.ping_seq.wrapping_add(1);
        s.live.awaiting = true;
        let seq = u64::from(s.live.ping_seq);
        core.outbox
            .push(key, &mut s.output, |out| Push::Ping { seq }.encode(out));
        t.after(grace)
    } else {
        s.live.last_rx.after(interval)
    };
    true
}

/// Arms the session's timer at the earliest of its deadlines (replacing one armed
/// already: a login changes the deadlines).
pub(super) fn rearm(core: &mut Core, key: usize, serial: u64) {
    let timeout = core.cfg.timeout;
    let Some(s) = core.sessions.get_mut(key) else {
        return;
    };
    if let Some(t) = s.timer.take() {
        core.timers.cancel(t);
    }
    let phase_due = match &s.phase {
        Phase::Hello { deadline } | Phase::Login { deadline, .. } => Some(*deadline),
        Phase::Active(a) => Some(a.last_activity.after(timeout)),
        Phase::Closing => None,
    };
    let at = phase_due.map_or(s.live.due, |d| d.min(s.live.due));
    s.timer = Some(
        core.timers
            .insert_stamp(at, TimerKind::Session { key, serial }),
    );
}

/// `PONG <seq>`: answers our latest ping.
pub(super) fn pong(core: &mut Core, key: usize, seq: u64) {
    if let Some(s) = core.sessions.get_mut(key)
        && seq == u64::from(s.live.ping_seq)
    {
        s.live.awaiting = false;
    }
}
