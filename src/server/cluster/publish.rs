//! Records on their way to the stream: every publish until the broker acknowledges
//! it, and which of the core's batches are durable.
//!
//! A publish keeps its subject, payload and conditions so that it can be sent again
//! (after a reconnect, a refusal the broker may get over, or an acknowledgement lost in
//! a fail-over); its id is also its `Nats-Msg-Id`, so a copy that did land counts once.
//! A batch is durable once every publish in it, and in every batch before it, is
//! acknowledged.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::record::Rec;

/// A publish unacknowledged this long is sent again (same id: counted once).
pub(super) const PUB_TIMEOUT: Duration = Duration::from_secs(4);

/// A publish not yet acknowledged.
pub(super) struct Pub {
    batch: u64,
    pub subject: String,
    pub payload: Vec<u8>,
    pub expect: Option<u64>,
    pub rollup: bool,
    /// The login claim it carries (a lost compare-and-set is reported for it).
    pub claim: Option<u64>,
    pub sent: bool,
    pub sent_at: Instant,
}

#[derive(Default)]
pub(super) struct Publishes {
    /// Not yet acknowledged, by id (oldest first).
    pubs: BTreeMap<u64, Pub>,
    /// Batches taken from the core and how many of their publishes are unacknowledged.
    outstanding: BTreeMap<u64, u32>,
    durable: u64,
    /// Refused with an error the broker may get over: all sent again then.
    pub retry_at: Option<Instant>,
    /// The last answer was such a refusal (the store is reported unhealthy).
    pub failing: bool,
}

impl Publishes {
    pub(super) fn len(&self) -> usize {
        self.pubs.len()
    }

    /// A record of batch `batch`, as publish `id`.
    pub(super) fn add(&mut self, id: u64, batch: u64, rec: &Rec, expect: Option<u64>) {
        let claim = match rec {
            Rec::Login { serial, .. } => Some(*serial),
            _ => None,
        };
        self.pubs.insert(
            id,
            Pub {
                batch,
                subject: rec.subject(),
                payload: rec.payload().into_bytes(),
                expect,
                rollup: rec.rolls_up(),
                claim,
                sent: false,
                sent_at: Instant::now(),
            },
        );
    }

    /// Batch `batch` is complete with `n` publishes.
    pub(super) fn batch(&mut self, batch: u64, n: u32) {
        self.outstanding.insert(batch, n);
    }

    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut Pub> {
        self.pubs.get_mut(&id)
    }

    /// Publish `id` is answered for good (stored, or a compare-and-set that lost).
    pub(super) fn done(&mut self, id: u64) {
        if let Some(p) = self.pubs.remove(&id)
            && let Some(n) = self.outstanding.get_mut(&p.batch)
        {
            *n = n.saturating_sub(1);
        }
    }

    /// The last batch now durable, if that moved.
    pub(super) fn newly_durable(&mut self) -> Option<u64> {
        let before = self.durable;
        while let Some((&b, &n)) = self.outstanding.first_key_value() {
            if n > 0 {
                break;
            }
            self.outstanding.pop_first();
            self.durable = b;
        }
        (self.durable > before).then_some(self.durable)
    }

    /// The connection is gone: everything is to be sent again.
    pub(super) fn all_unsent(&mut self) {
        for p in self.pubs.values_mut() {
            p.sent = false;
        }
    }

    /// Whether the oldest publish has waited for its acknowledgement too long.
    pub(super) fn stale(&self, now: Instant) -> bool {
        self.pubs
            .values()
            .next()
            .is_some_and(|p| p.sent && now.saturating_duration_since(p.sent_at) > PUB_TIMEOUT)
    }

    /// Marks those waiting too long as to be sent again.
    pub(super) fn expire(&mut self, now: Instant) {
        for p in self.pubs.values_mut() {
            if now.saturating_duration_since(p.sent_at) > PUB_TIMEOUT {
                p.sent = false;
            }
        }
    }

    /// The ids to send (again).
    pub(super) fn unsent(&self) -> Vec<u64> {
        self.pubs
            .iter()
            .filter(|(_, p)| !p.sent)
            .map(|(&id, _)| id)
            .collect()
    }

    /// When the oldest publish times out.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.pubs
            .values()
            .next()
            .filter(|p| p.sent)
            .map(|p| p.sent_at + PUB_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(to: &str) -> Rec {
        Rec::Ack {
            to: to.into(),
            upto: 1,
        }
    }

    #[test]
    fn batches_become_durable_in_order() {
        let mut p = Publishes::default();
        p.add(1, 1, &ack("a"), None);
        p.batch(1, 1);
        p.batch(2, 0);
        p.add(2, 3, &ack("b"), None);
        p.batch(3, 1);
        // Batch 2 has nothing to wait for, but batch 1 comes first.
        assert_eq!(p.newly_durable(), None);
        p.done(2);
        assert_eq!(p.newly_durable(), None);
        p.done(1);
        assert_eq!(p.newly_durable(), Some(3));
        assert_eq!(p.len(), 0);
        assert_eq!(p.newly_durable(), None);
    }

    #[test]
    fn unacknowledged_publishes_are_sent_again() {
        let mut p = Publishes::default();
        p.add(1, 1, &ack("a"), None);
        p.add(2, 1, &ack("b"), Some(7));
        assert_eq!(p.unsent(), [1, 2]);
        let t0 = Instant::now();
        for id in [1, 2] {
            let q = p.get_mut(id).expect("pub");
            q.sent = true;
            q.sent_at = t0;
        }
        assert!(p.unsent().is_empty());
        assert!(!p.stale(t0));
        let later = t0 + PUB_TIMEOUT + Duration::from_millis(1);
        assert!(p.stale(later));
        p.expire(later);
        assert_eq!(p.unsent(), [1, 2]);
        p.all_unsent();
        assert_eq!(p.get_mut(2).map(|q| q.expect), Some(Some(7)));
    }
}
