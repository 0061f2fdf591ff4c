//! One user's offline mailbox: the direct messages accepted for them and not yet
//! handed to a session, oldest first, with the caps that keep it bounded.
//!
//! Caps: the whole mailbox holds at most `max_messages` messages and `max_bytes` of
//! text; one sender may fill only its share of that (a percentage, three quarters by default, but
//! never less than [`SENDER_FLOOR_MESSAGES`] messages and [`SENDER_FLOOR_BYTES`] bytes
//! where the cap allows), so a single sender cannot make every other sender get
//! `-MAILBOX_FULL`. A message that does not fit is refused; nothing already stored is
//! touched.

use std::collections::VecDeque;

use super::core::AccountId;

/// A direct message waiting in a mailbox or in a session's in-flight window.
#[derive(Debug)]
pub(crate) struct Stored {
    pub id: u64,
    pub from: AccountId,
    pub text: Box<str>,
}

/// The caps, from the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub max_messages: usize,
    pub max_bytes: usize,
    /// Percent of each cap one sender may use (100: no per-sender limit).
    pub sender_share: u32,
}

/// A sender may always keep this much waiting (if the mailbox cap is that large): a
/// small mailbox (an operator's choice) is not split further.
pub(crate) const SENDER_FLOOR_MESSAGES: usize = 64;
pub(crate) const SENDER_FLOOR_BYTES: usize = 64 << 10;

impl Caps {
    fn share(&self, total: usize, floor: usize) -> usize {
        let share = total.saturating_mul(self.sender_share.min(100) as usize) / 100;
        share.max(total.min(floor))
    }
}

#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    queue: VecDeque<Stored>,
    bytes: usize,
    /// Messages and bytes queued per sender (empty, unallocated, for most users).
    /// foldhash: senders are account ids the server assigns, not chosen by peers.
    by_sender: foldhash::HashMap<AccountId, (usize, usize)>,
}

impl Mailbox {
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Stored> {
        self.queue.iter()
    }

    /// Whether a message of `len` bytes from `from` fits under the caps.
    pub(super) fn admits(&self, from: AccountId, len: usize, caps: Caps) -> bool {
        let (n, b) = self.by_sender.get(&from).copied().unwrap_or_default();
        self.queue.len() < caps.max_messages
            && self.bytes + len <= caps.max_bytes
            && n < caps.share(caps.max_messages, SENDER_FLOOR_MESSAGES)
            && b + len <= caps.share(caps.max_bytes, SENDER_FLOOR_BYTES)
    }

    fn count(&mut self, m: &Stored, add: bool) {
        let len = m.text.len();
        if add {
            self.bytes += len;
            let e = self.by_sender.entry(m.from).or_default();
            e.0 += 1;
            e.1 += len;
        } else {
            self.bytes -= len;
            if let Some(e) = self.by_sender.get_mut(&m.from) {
                e.0 -= 1;
                e.1 -= len;
                if e.0 == 0 {
                    self.by_sender.remove(&m.from);
                }
            }
            if self.queue.is_empty() && self.queue.capacity() > 8 {
                // Give the tables back once a backlog is delivered (a mailbox that
                // keeps going from empty to one or two, as a cluster's replicas do,
                // keeps its small ones rather than allocating each time).
                self.by_sender = foldhash::HashMap::default();
                self.queue = VecDeque::new();
            }
        }
    }

    /// A newly accepted message (or one recovered from the journal), at the end.
    pub(super) fn push_back(&mut self, m: Stored) {
        self.count(&m, true);
        self.queue.push_back(m);
    }

    /// An unacknowledged message returned by a closed session, at the front.
    pub(super) fn push_front(&mut self, m: Stored) {
        self.count(&m, true);
        self.queue.push_front(m);
    }

    /// The id of the oldest message.
    pub(super) fn front_id(&self) -> Option<u64> {
        self.queue.front().map(|m| m.id)
    }

    /// The oldest message, to send.
    pub(super) fn pop_front(&mut self) -> Option<Stored> {
        let m = self.queue.pop_front()?;
        self.count(&m, false);
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: AccountId, text: &str) -> Stored {
        Stored {
            id: 0,
            from,
            text: text.into(),
        }
    }

    #[test]
    fn one_sender_fills_only_its_share() {
        let caps = Caps {
            max_messages: 512,
            max_bytes: 1 << 20,
            sender_share: 25,
        };
        let mut m = Mailbox::default();
        for _ in 0..128 {
            assert!(m.admits(1, 3, caps));
            m.push_back(msg(1, "abc"));
        }
        // Sender 1 has its quarter (128 of 512); the others still get in.
        assert!(!m.admits(1, 3, caps));
        for s in 2..5 {
            for _ in 0..128 {
                assert!(m.admits(s, 3, caps));
                m.push_back(msg(s, "abc"));
            }
        }
        // The mailbox itself is full now.
        assert_eq!(m.len(), 512);
        assert!(!m.admits(9, 1, caps));
        // Delivery frees both the mailbox and the sender's share.
        let first = m.pop_front().expect("a message");
        assert_eq!(first.from, 1);
        assert!(m.admits(1, 3, caps));
        // Bytes count too.
        let big = Caps {
            max_messages: 1000,
            max_bytes: 1 << 20,
            sender_share: 50,
        };
        let mut m = Mailbox::default();
        m.push_back(msg(1, &"x".repeat(512 << 10)));
        assert!(!m.admits(1, 1, big));
        assert!(m.admits(2, 512 << 10, big));
        // A small mailbox is not split: one sender may fill it.
        let small = Caps {
            max_messages: 3,
            max_bytes: 1000,
            sender_share: 25,
        };
        let mut s = Mailbox::default();
        for _ in 0..3 {
            assert!(s.admits(1, 1, small));
            s.push_back(msg(1, "a"));
        }
        assert!(!s.admits(2, 1, small));
        while m.pop_front().is_some() {}
        assert!(m.is_empty() && m.by_sender.is_empty() && m.bytes == 0);
    }
}
