//! Keeping the stream small: acknowledged mail is purged from it.
//!
//! Once a second, everything below the lowest message any user still waits for goes
//! in one request (the watermark: cheap, whole blocks at a time, and enough while
//! nobody has old mail waiting). Recipients whose acknowledgements are above that mark
//! (old mail waiting for someone else holds it back) are purged one request each, a
//! few a second: a purge filtered by recipient touches every block that recipient's
//! messages are in, which is costly for the broker on a busy stream.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use super::record;

/// Per-recipient purge requests per second.
const PER_SECOND: usize = 4;

pub(super) struct Purges {
    /// Recipients with acknowledgements since their last purge: below this sequence.
    pending: HashMap<Box<str>, u64>,
    /// The watermark last purged below.
    below: u64,
    next: Instant,
}

impl Purges {
    pub(super) fn new(now: Instant) -> Purges {
        Purges {
            pending: HashMap::new(),
            below: 0,
            next: now,
        }
    }

    /// `to` acknowledged everything up to `upto`.
    pub(super) fn acked(&mut self, to: &str, upto: u64) {
        let e = self.pending.entry(to.into()).or_default();
        *e = (*e).max(upto + 1);
    }

    /// The purge requests due now (request bodies for `STREAM.PURGE`), given the
    /// watermark: the lowest message id anyone still waits for.
    pub(super) fn due(&mut self, mark: u64, now: Instant) -> Vec<String> {
        if self.next > now {
            return Vec::new();
        }
        self.next = now + Duration::from_secs(1);
        let mut bodies = Vec::new();
        if mark > self.below {
            self.below = mark;
            bodies.push(json!({"filter": "natter.s.mail.>", "seq": mark}).to_string());
        }
        self.pending.retain(|_, below| *below > mark);
        let batch: Vec<Box<str>> = self.pending.keys().take(PER_SECOND).cloned().collect();
        for to in batch {
            if let Some(below) = self.pending.remove(&to) {
                let filter = format!("natter.s.mail.{}", record::escape(&to));
                bodies.push(json!({"filter": filter, "seq": below}).to_string());
            }
        }
        bodies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_goes_first_and_recipients_above_it_a_few_a_second() {
        let t0 = Instant::now();
        let mut p = Purges::new(t0);
        for i in 0..10 {
            p.acked(&format!("u{i}"), 100 + i);
        }
        p.acked("low", 5);
        // Mark 50: one watermark purge, "low" is covered by it, 4 of the 10 others.
        let first = p.due(50, t0);
        assert_eq!(first[0], r#"{"filter":"natter.s.mail.>","seq":50}"#);
        assert_eq!(first.len(), 1 + PER_SECOND);
        assert!(first.iter().all(|b| !b.contains("low")));
        // Not again within the second; the mark does not move back.
        assert!(p.due(60, t0).is_empty());
        let second = p.due(40, t0 + Duration::from_secs(1));
        assert_eq!(second.len(), PER_SECOND);
        let third = p.due(40, t0 + Duration::from_secs(2));
        assert_eq!(third.len(), 10 - 2 * PER_SECOND);
    }
}
