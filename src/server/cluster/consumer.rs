//! The stream consumer's bookkeeping: which consumer is current (a new one gets a new
//! generation, name, deliver subject and subscription), the last record applied, and
//! whether deliveries arrive without gaps.
//!
//! The consumer is an ephemeral push consumer with no acks: deliveries carry their
//! stream and consumer sequences in the reply subject; a consumer sequence that skips
//! means deliveries were lost (a slow connection, a broker fail-over) and a new
//! consumer is made from the record after the last one applied. Idle heartbeats prove
//! it alive when there is nothing to deliver.

use std::time::Instant;

use serde_json::{Value, json};

/// What a delivery means for the replica.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Delivery {
    /// Apply the record with this stream sequence.
    Apply(u64),
    /// Already applied (a new consumer starts where an old one may have got to).
    Duplicate,
    /// Deliveries were lost: make a new consumer.
    Gap {
        /// The last consumer sequence seen.
        after: u64,
    },
    /// Not a delivery (no sequence numbers in its reply subject).
    Unknown,
}

pub(super) struct Consumer {
    /// The current consumer's generation (0: none yet).
    pub generation: u64,
    /// The last stream sequence applied.
    pub applied: u64,
    /// The last consumer sequence seen.
    seq: u64,
    /// The replica has applied what the stream held when the consumer was made.
    pub caught_up: bool,
    /// The last delivery or idle heartbeat.
    pub rx: Instant,
    /// When the current consumer was asked for.
    pub made: Instant,
}

impl Consumer {
    pub(super) fn new(now: Instant) -> Consumer {
        Consumer {
            generation: 0,
            applied: 0,
            seq: 0,
            caught_up: false,
            rx: now,
            made: now,
        }
    }

    /// The name of generation `generation` of node incarnation `inc`'s consumer.
    pub(super) fn name(inc: u64, generation: u64) -> String {
        format!("natter-{inc:016x}-{generation}")
    }

    /// Starts a new generation; returns it.
    pub(super) fn renew(&mut self, now: Instant) -> u64 {
        self.generation += 1;
        self.seq = 0;
        self.rx = now;
        self.made = now;
        self.generation
    }

    /// The configuration of a consumer delivering to `deliver` from the record after
    /// the last one applied.
    pub(super) fn config(&self, name: &str, deliver: &str) -> Value {
        let mut config = json!({
            "name": name,
            "deliver_subject": deliver,
            "ack_policy": "none",
            "replay_policy": "instant",
            "inactive_threshold": 10_000_000_000u64,
            // Proof of life when there is nothing to deliver: a consumer that died
            // with a broker server is noticed and made again.
            "idle_heartbeat": 1_000_000_000u64,
            "mem_storage": true,
            "num_replicas": 1,
        });
        if self.applied == 0 {
            config["deliver_policy"] = json!("all");
        } else {
            config["deliver_policy"] = json!("by_start_sequence");
            config["opt_start_seq"] = json!(self.applied + 1);
        }
        config
    }

    /// An idle heartbeat saying the last consumer sequence delivered: whether
    /// deliveries were lost.
    pub(super) fn heartbeat(&mut self, last_delivered: Option<u64>, now: Instant) -> bool {
        self.rx = now;
        last_delivered.is_some_and(|last| last > self.seq)
    }

    /// A delivery with this reply subject; the second value says whether the replica
    /// has now applied everything the stream held.
    pub(super) fn delivery(&mut self, reply: Option<&str>, now: Instant) -> (Delivery, bool) {
        self.rx = now;
        let Some((sseq, cseq, pending)) = reply.and_then(ack_numbers) else {
            return (Delivery::Unknown, false);
        };
        if cseq != self.seq + 1 {
            return (Delivery::Gap { after: self.seq }, false);
        }
        self.seq = cseq;
        if sseq <= self.applied {
            return (Delivery::Duplicate, pending == 0);
        }
        self.applied = sseq;
        (Delivery::Apply(sseq), pending == 0)
    }
}

/// The stream and consumer sequences and the pending count from a delivery's reply
/// subject (`$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>`,
/// or the longer form with a domain and account hash).
fn ack_numbers(reply: &str) -> Option<(u64, u64, u64)> {
    // At most twelve tokens: no allocation per record.
    let mut t = [""; 12];
    let mut len = 0;
    for tok in reply.split('.') {
        *t.get_mut(len)? = tok;
        len += 1;
    }
    if len < 9 || t[0] != "$JS" || t[1] != "ACK" {
        return None;
    }
    let off = if len == 9 { 2 } else { 4 };
    let n = |i: usize| t.get(off + i)?.parse::<u64>().ok();
    Some((n(3)?, n(4)?, n(6)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_numbers_come_from_either_reply_form() {
        assert_eq!(
            ack_numbers("$JS.ACK.NATTER.c1.1.42.7.1700000000.3"),
            Some((42, 7, 3))
        );
        assert_eq!(
            ack_numbers("$JS.ACK.dom.hash.NATTER.c1.1.42.7.1700000000.0.tok"),
            Some((42, 7, 0))
        );
        assert_eq!(ack_numbers("_INBOX.x"), None);
    }

    #[test]
    fn deliveries_apply_once_in_order_and_gaps_are_noticed() {
        let now = Instant::now();
        let mut c = Consumer::new(now);
        c.renew(now);
        let r =
            |sseq: u64, cseq: u64, pending: u64| format!("$JS.ACK.S.c.1.{sseq}.{cseq}.0.{pending}");
        assert_eq!(
            c.delivery(Some(&r(5, 1, 1)), now),
            (Delivery::Apply(5), false)
        );
        assert_eq!(
            c.delivery(Some(&r(9, 2, 0)), now),
            (Delivery::Apply(9), true)
        );
        assert_eq!(
            c.delivery(Some(&r(11, 4, 0)), now),
            (Delivery::Gap { after: 2 }, false)
        );
        assert!(c.heartbeat(Some(3), now));
        // A new consumer from the record after 9 may deliver 9 again.
        c.renew(now);
        assert_eq!(c.config("n", "d")["opt_start_seq"], json!(10));
        assert_eq!(
            c.delivery(Some(&r(9, 1, 1)), now),
            (Delivery::Duplicate, false)
        );
        assert_eq!(
            c.delivery(Some(&r(10, 2, 0)), now),
            (Delivery::Apply(10), true)
        );
        assert!(!c.heartbeat(Some(2), now));
        assert_eq!(c.delivery(None, now), (Delivery::Unknown, false));
    }
}
