//! From bytes to handlers: the line decoder, flood control, parsing, and the one match
//! on (phase, request) that calls each request kind's handler.
//!
//! Redis's command table in Rust's shape: every request kind has one handler function
//! in the module of its concern, and this is the only place that chooses between them.

use std::time::Instant;

use log::info;

use super::session::{Gate, Phase};
use super::{Core, Cx, blocking, login, messaging, presence, private, timers};
use crate::protocol::frames::{self, ErrorCode, Reply, Request, RequestError};
use crate::protocol::{Flow, Frame};

/// Feeds bytes read from a connection through its decoder to the handlers.
pub(super) fn feed(core: &mut Core, key: usize, data: &[u8], now: Instant) {
    let stamp = core.timers.stamp(now);
    let Some(s) = core.sessions.get_mut(key) else {
        return;
    };
    if s.is_closing() {
        return;
    }
    s.live.last_rx = stamp;
    s.live.awaiting = false;
    let mut decoder = std::mem::take(&mut s.decoder);
    let max_line = core.cfg.max_line;
    decoder.feed(data, max_line, |frame| on_frame(core, key, frame, now));
    put_decoder(core, key, decoder);
}

fn put_decoder(core: &mut Core, key: usize, decoder: crate::protocol::LineDecoder) {
    if let Some(s) = core.sessions.get_mut(key)
        && !s.is_closing()
    {
        s.decoder = decoder;
    }
}

/// Hands a paused session's held input to the handlers again; if nothing is left
/// waiting, the loop is told to read its socket again.
pub(super) fn resume_input(core: &mut Core, key: usize, now: Instant) {
    let Some(s) = core.sessions.get_mut(key) else {
        return;
    };
    if s.is_closing() || s.gate != Gate::Open {
        return;
    }
    let serial = s.serial;
    let mut decoder = std::mem::take(&mut s.decoder);
    decoder.resume(core.cfg.max_line, |frame| on_frame(core, key, frame, now));
    let paused = decoder.is_paused();
    put_decoder(core, key, decoder);
    if !paused {
        core.resumed.push((key, serial));
    }
}

/// Takes one flood-control token for a command, or throttles the session (pausing its
/// input until a token is back) and returns false.
fn take_token(core: &mut Core, key: usize, now: Instant) -> bool {
    let rate = core.flood_rate();
    let limit_loopback = core.cfg.limit_loopback;
    let Some(s) = core.sessions.get_mut(key) else {
        return false;
    };
    if core.cfg.flood_burst == 0 || (s.ip.is_loopback() && !limit_loopback) {
        return true;
    }
    let Err(wait) = s.tokens.take(rate, core.timers.stamp(now)) else {
        return true;
    };
    s.gate = Gate::Throttled;
    let serial = s.serial;
    core.stats.flood_throttled += 1;
    info!(
        "conn {key}: flood limit from {}: input paused for {wait:?}",
        s.ip
    );
    core.timers
        .insert_exact(now + wait, super::timers::TimerKind::Resume { key, serial });
    false
}

/// Handles one frame, or refuses it for now ([`Flow::Pause`]) while the session waits
/// for a verification or a flood-control token.
fn on_frame(core: &mut Core, key: usize, frame: Frame<'_>, now: Instant) -> Flow {
    match core.sessions.get(key) {
        Some(s) if s.is_closing() => return Flow::Stop,
        Some(s) if s.gate != Gate::Open => return Flow::Pause,
        Some(_) => {}
        None => return Flow::Stop,
    }
    let parsed = match frame {
        Frame::Line(line) => Some(frames::parse_request(line)),
        Frame::TooLong | Frame::BadUtf8 => None,
    };
    // Answers to the server (`PONG`, `ACK`) are never throttled; only frames that
    // parsed as one count as one (a line merely starting with `PONG` is a command).
    let answer = matches!(parsed, Some(Ok(Request::Pong { .. } | Request::Ack { .. })));
    if !answer && !take_token(core, key, now) {
        return Flow::Pause;
    }
    match parsed {
        Some(Ok(req)) => on_request(core, key, req, now),
        Some(Err(e)) => {
            let code = match e {
                RequestError::UnknownVerb => ErrorCode::UnknownCommand,
                RequestError::BadArguments => ErrorCode::BadArguments,
                RequestError::BadText => ErrorCode::BadText,
            };
            core.error(key, code, "");
        }
        None if matches!(frame, Frame::TooLong) => {
            core.stats.too_long += 1;
            let max = core.cfg.max_line.to_string();
            core.error(key, ErrorCode::TooLong, &max);
        }
        None => core.error(key, ErrorCode::BadUtf8, ""),
    }
    core.reap_overflowed(now);
    match core.sessions.get(key) {
        Some(s) if !s.is_closing() => Flow::Continue,
        _ => Flow::Stop,
    }
}

/// Where a session is, as the dispatch needs it (a copy, so handlers get `&mut Core`).
#[derive(Clone, Copy)]
enum Stage {
    Hello,
    Login(Option<super::AccountId>),
    Active(super::AccountId),
    Closing,
}

/// The one match on (phase, request).
fn on_request(core: &mut Core, key: usize, req: Request<'_>, now: Instant) {
    let s = &mut core.sessions[key];
    let stage = match &mut s.phase {
        Phase::Hello { .. } => Stage::Hello,
        Phase::Login { user, .. } => Stage::Login(*user),
        Phase::Active(a) => {
            // Only what the user typed counts as activity.
            if req.is_user_activity() {
                a.last_activity = core.timers.stamp(now);
            }
            Stage::Active(a.account)
        }
        Phase::Closing => Stage::Closing,
    };
    let cx = |account| Cx { key, account, now };
    use Stage::*;
    match (stage, req) {
        // Responses and pings: valid in any phase, never activity.
        (_, Request::Pong { seq }) => timers::pong(core, key, seq),
        (_, Request::Ack { id }) => messaging::ack(core, key, id, now),
        (_, Request::Ping { token }) => core.reply(key, Reply::Pong { token }),
        (Closing, _) => {}
        (Hello | Login(_), Request::Hello { version }) => login::hello(core, key, version),
        (Hello, _) => core.error(key, ErrorCode::HelloFirst, ""),
        (Login(_), Request::User { user }) => login::user(core, key, user, now),
        (
            Login(Some(id)),
            Request::Pass {
                password,
                peer_port,
                peer_key,
            },
        ) => login::password(core, key, id, password, peer_port, peer_key, now),
        (
            Login(_),
            Request::Login {
                user,
                password,
                peer_port,
                peer_key,
            },
        ) => login::login(core, key, user, password, peer_port, peer_key, now),
        (Login(_), _) => core.error(key, ErrorCode::NotLoggedIn, ""),
        (
            Active(_),
            Request::Hello { .. }
            | Request::Login { .. }
            | Request::User { .. }
            | Request::Pass { .. },
        ) => core.error(key, ErrorCode::AlreadyLoggedIn, ""),
        (Active(me), Request::Msg { to, text }) => messaging::direct(core, cx(me), to, text),
        (Active(me), Request::Bcast { text }) => messaging::broadcast(core, cx(me), text),
        (Active(me), Request::WhoElse) => presence::who_else(core, cx(me), None),
        (Active(me), Request::WhoElseSince { window }) => {
            presence::who_else(core, cx(me), Some(window))
        }
        (Active(me), Request::Block { user }) => blocking::block(core, cx(me), user),
        (Active(me), Request::Unblock { user }) => blocking::unblock(core, cx(me), user),
        (Active(me), Request::Private { user }) => private::introduce(core, cx(me), user),
        (Active(_), Request::Active) => core.reply(key, Reply::Ok),
        (Active(me), Request::Logout) => login::logout(core, cx(me)),
    }
}
