//! One connection as the core sees it: the per-connection state machine.
//!
//! `Hello` (waiting for the handshake) → `Login` (waiting for a successful login;
//! remembers the account a `USER` named) → `Active` (logged in) → `Closing` (closed by
//! the core; the loop flushes what is left and sweeps it). State that exists in one
//! phase lives in that phase's variant: the login deadline only before login, the
//! in-flight window and the inactivity timer only while active. Whether input is
//! handled now is the [`Gate`], orthogonal to the phase: a verification in progress
//! (with the login it will finish) or flood control.

use std::net::IpAddr;

use super::AccountId;
use super::flood::TokenBucket;
use super::inflight::Inflight;
use super::outbox::Output;
use crate::protocol::LineDecoder;
use crate::server::clock::Stamp;
use crate::server::timer::TimerHandle;

pub(crate) struct Session {
    /// The client's address (the loop keeps the port).
    pub ip: IpAddr,
    /// Unique for the life of the process: stale timers and verdicts carry it.
    pub serial: u64,
    pub output: Output,
    pub decoder: LineDecoder,
    pub phase: Phase,
    pub gate: Gate,
    pub live: Liveness,
    /// The session's one timer, at the earliest of its deadlines (login, liveness,
    /// inactivity); each check is made when it fires, and it is re-armed.
    pub timer: Option<TimerHandle>,
    /// Flood-control tokens (commands), refilled at `flood_rate` up to `flood_burst`.
    pub tokens: TokenBucket,
}

pub(crate) enum Phase {
    /// Waiting for `HELLO`; must log in by `deadline`.
    Hello {
        deadline: Stamp,
    },
    /// Handshake done, waiting for a successful login by `deadline`; `user` is the
    /// account a `USER` named, whose password a `PASS` gives.
    Login {
        deadline: Stamp,
        user: Option<AccountId>,
    },
    Active(Active),
    /// Closed by the core; waiting for the loop to flush and sweep it.
    Closing,
}

/// A logged-in session.
pub(crate) struct Active {
    pub account: AccountId,
    pub last_activity: Stamp,
    pub peer_port: Option<u16>,
    /// Direct messages sent and not yet acknowledged, oldest first.
    pub inflight: Inflight,
    /// Private introductions this user may still ask for (see `private::RATE`).
    pub intros: TokenBucket,
}

/// Whether a session's requests are handled now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    Open,
    /// Its password hash is being verified; the verdict finishes this login.
    Verifying {
        account: AccountId,
        peer_port: Option<u16>,
    },
    /// Over the flood limit: resumes when a token is back.
    Throttled,
    /// Cluster mode: waiting for the cluster's answer (a login claim, the count of a
    /// wrong password, an introduction by another node).
    Cluster,
}

/// The liveness check: a silent connection is pinged, and dropped if nothing answers.
pub(crate) struct Liveness {
    pub last_rx: Stamp,
    /// When to check next: `last_rx + interval` (ping if still silent), or, with a
    /// ping out, the ping's time plus the grace (drop if still silent). Data arriving
    /// does not move it: the check re-arms itself lazily.
    pub due: Stamp,
    /// The latest ping's number (one every ping interval: `u32` lasts millennia).
    pub ping_seq: u32,
    /// A `*PING` is out and nothing has arrived since.
    pub awaiting: bool,
}

impl Session {
    pub(crate) fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing)
    }

    /// Whether the session's input waits (verification, flood control, too many
    /// replies held for the disk): the loop stops reading its socket until the core
    /// lists it as resumed.
    pub(crate) fn input_paused(&self) -> bool {
        self.gate != Gate::Open || self.decoder.is_paused() || self.output.held_too_much()
    }

    pub(crate) fn active_mut(&mut self) -> Option<&mut Active> {
        match &mut self.phase {
            Phase::Active(a) => Some(a),
            _ => None,
        }
    }

    /// Releases idle buffers (called when the connection has been quiet).
    pub(crate) fn shrink(&mut self) {
        self.decoder.shrink();
        self.output.shrink();
        if let Phase::Active(a) = &mut self.phase {
            a.inflight.shrink();
        }
    }
}

/// The session `key` if it is still the one with `serial` and not closing (a free
/// function over the table, so callers can borrow other parts of the core meanwhile).
pub(crate) fn current(
    sessions: &mut slab::Slab<Session>,
    key: usize,
    serial: u64,
) -> Option<&mut Session> {
    sessions
        .get_mut(key)
        .filter(|s| s.serial == serial && !s.is_closing())
}
