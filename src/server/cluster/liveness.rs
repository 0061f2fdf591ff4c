//! Which other node incarnations are alive: the heartbeats heard, the probes asked, and
//! which incarnations were already reported gone.
//!
//! Every node says `natter.c.hb <node> <incarnation>` every second and hears everyone's,
//! its own included. Silence is measured against its own heartbeats coming back, not
//! against the clock, so a broker that stalls delays everyone's alike and makes nobody
//! look gone. An incarnation with users online that is [`PROBE_AFTER`] late is asked
//! for on `natter.c.probe.<incarnation>` (the broker's "no responders" says its
//! connection is gone, as it knows at once for a killed process); one not heard for
//! [`DEAD_AFTER`] is gone anyway; an earlier run of this very node is gone at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence after which a node incarnation is presumed gone and its users logged out.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
/// Heartbeats this late make a node be asked whether it is still connected (no
/// responders: gone at once, not after `DEAD_AFTER`).
pub const PROBE_AFTER: Duration = Duration::from_millis(1500);
/// How long a probe of another node may take (no answer: presumed still there).
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Who asked whether a node is still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Asker {
    /// A login (the core's probe id).
    Login(u64),
    /// This connection, for an incarnation whose heartbeats are late.
    Silence(u64),
}

/// What to do about one incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Report it gone (its users are logged out).
    Gone,
    /// Ask whether its connection is still there.
    Probe,
}

pub(super) struct Liveness {
    /// When each incarnation (this one too) was last heard.
    heard: HashMap<u64, Instant>,
    /// Incarnations reported gone, and when (reported again only after `DEAD_AFTER`).
    reported: HashMap<u64, Instant>,
    /// Probes asked: request id -> (who asked, deadline).
    probes: HashMap<u64, (Asker, Instant)>,
    /// When this node says it is alive next.
    pub next_beat: Instant,
    /// When a second node with this node's name was last complained about.
    clash_said: Option<Instant>,
}

impl Liveness {
    pub(super) fn new(now: Instant) -> Liveness {
        Liveness {
            heard: HashMap::new(),
            reported: HashMap::new(),
            probes: HashMap::new(),
            next_beat: now,
            clash_said: None,
        }
    }

    /// Another node runs under this node's name: whether to say so now (once a minute).
    pub(super) fn clash(&mut self, now: Instant) -> bool {
        let due = self
            .clash_said
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60));
        if due {
            self.clash_said = Some(now);
        }
        due
    }

    pub(super) fn heard(&mut self, inc: u64, now: Instant) {
        self.heard.insert(inc, now);
    }

    /// A new connection: who was heard before it says nothing about now.
    pub(super) fn forget_heard(&mut self) {
        self.heard.clear();
    }

    /// Reported gone by a probe's answer.
    pub(super) fn gone(&mut self, inc: u64, now: Instant) {
        self.reported.insert(inc, now);
    }

    /// What to do about each of `nodes` (incarnations with users online here, with
    /// their node names); `me` and `my_name` are this node's; `since_ready` is when
    /// this connection became ready (the start of silence for one never heard).
    pub(super) fn judge(
        &mut self,
        me: u64,
        my_name: &str,
        nodes: &[(u64, Box<str>)],
        since_ready: Option<Instant>,
        now: Instant,
    ) -> Vec<(u64, Verdict)> {
        let own = self.heard.get(&me).copied();
        let mut out = Vec::new();
        for (inc, name) in nodes {
            let inc = *inc;
            let silence = match (own, self.heard.get(&inc).copied().or(since_ready)) {
                (Some(own), Some(last)) => own.saturating_duration_since(last),
                _ => Duration::ZERO,
            };
            let gone = **name == *my_name || silence > DEAD_AFTER;
            let again = self
                .reported
                .get(&inc)
                .is_none_or(|&t| now.saturating_duration_since(t) > DEAD_AFTER);
            if !again {
                continue;
            }
            if gone {
                self.reported.insert(inc, now);
                out.push((inc, Verdict::Gone));
            } else if silence > PROBE_AFTER && !self.probing(inc) {
                out.push((inc, Verdict::Probe));
            }
        }
        self.heard
            .retain(|_, t| now.saturating_duration_since(*t) < DEAD_AFTER * 4);
        self.reported
            .retain(|_, t| now.saturating_duration_since(*t) < DEAD_AFTER * 4);
        out
    }

    fn probing(&self, inc: u64) -> bool {
        self.probes.values().any(|(a, _)| *a == Asker::Silence(inc))
    }

    pub(super) fn asked(&mut self, rid: u64, asker: Asker, now: Instant) {
        self.probes.insert(rid, (asker, now + PROBE_TIMEOUT));
    }

    /// The asker of probe `rid`, answered.
    pub(super) fn answered(&mut self, rid: u64) -> Option<Asker> {
        self.probes.remove(&rid).map(|(a, _)| a)
    }

    /// Probes unanswered in time (their nodes are presumed still there).
    pub(super) fn expired(&mut self, now: Instant) -> Vec<Asker> {
        super::take_expired(&mut self.probes, now)
    }

    /// The earliest probe deadline.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.probes.values().map(|(_, t)| *t).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 1;
    const OTHER: u64 = 2;

    fn nodes() -> Vec<(u64, Box<str>)> {
        vec![(OTHER, "b".into())]
    }

    #[test]
    fn silence_is_measured_against_our_own_heartbeats() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        let s = |x: u64| t0 + Duration::from_millis(x);
        l.heard(ME, s(0));
        l.heard(OTHER, s(0));
        // The broker stalls: nobody is heard, ourselves included. Nobody is gone.
        assert!(l.judge(ME, "a", &nodes(), Some(t0), s(9000)).is_empty());
        // We are heard again and the other is not: late, then gone.
        l.heard(ME, s(2000));
        assert_eq!(
            l.judge(ME, "a", &nodes(), Some(t0), s(2000)),
            [(OTHER, Verdict::Probe)]
        );
        l.asked(7, Asker::Silence(OTHER), s(2000));
        assert!(l.judge(ME, "a", &nodes(), Some(t0), s(3000)).is_empty());
        l.heard(ME, s(5100));
        assert_eq!(
            l.judge(ME, "a", &nodes(), Some(t0), s(5100)),
            [(OTHER, Verdict::Gone)]
        );
        // Reported once, not again at once.
        assert!(l.judge(ME, "a", &nodes(), Some(t0), s(5200)).is_empty());
    }

    #[test]
    fn an_earlier_run_of_this_node_is_gone_at_once_and_probes_expire() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        l.heard(ME, t0);
        let mine: Vec<(u64, Box<str>)> = vec![(OTHER, "a".into())];
        assert_eq!(
            l.judge(ME, "a", &mine, Some(t0), t0),
            [(OTHER, Verdict::Gone)]
        );
        l.asked(3, Asker::Login(9), t0);
        assert_eq!(l.deadline(), Some(t0 + PROBE_TIMEOUT));
        assert!(l.expired(t0).is_empty());
        assert_eq!(l.expired(t0 + PROBE_TIMEOUT), [Asker::Login(9)]);
        assert_eq!(l.answered(3), None);
    }
}
