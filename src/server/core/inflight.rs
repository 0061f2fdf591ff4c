//! A session's in-flight window: the direct messages written to it and not yet
//! acknowledged, oldest first.
//!
//! One buffer of records (`id`, sender, length, text) with a read position, instead of
//! a queue of separately allocated messages: sending a message appends its text, an
//! acknowledgement moves the read position, and the buffer is reused from the start
//! whenever the window empties (acks usually keep up), so the hot path allocates
//! nothing. The texts are turned back into stored messages only when the session ends
//! unacknowledged (they go back to the mailbox) or for a snapshot.

use super::{AccountId, Stored};

const HEADER: usize = 8 + 4 + 4;

#[derive(Debug, Default)]
pub(crate) struct Inflight {
    buf: Vec<u8>,
    /// Where the oldest record starts (the window is small: `u32` is plenty, and keeps
    /// this as small as the queue it replaces).
    head: u32,
    count: u32,
}

/// One record, borrowed from the buffer.
pub(crate) struct Entry<'a> {
    pub id: u64,
    pub from: AccountId,
    pub text: &'a [u8],
}

impl Inflight {
    pub(crate) fn len(&self) -> usize {
        self.count as usize
    }

    pub(crate) fn push(&mut self, id: u64, from: AccountId, text: &str) {
        let head = self.head as usize;
        if head == self.buf.len() {
            // Empty: start over at the front (the capacity is kept).
            self.buf.clear();
            self.head = 0;
        } else if head > 4096 && head > self.buf.len() / 2 {
            // Mostly acknowledged: drop the acknowledged prefix.
            self.buf.drain(..head);
            self.head = 0;
        }
        self.buf.extend_from_slice(&id.to_le_bytes());
        self.buf.extend_from_slice(&from.to_le_bytes());
        self.buf
            .extend_from_slice(&(text.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(text.as_bytes());
        self.count += 1;
    }

    fn entry_at(&self, pos: usize) -> Option<(Entry<'_>, usize)> {
        let h = self.buf.get(pos..pos + HEADER)?;
        let id = u64::from_le_bytes(h[..8].try_into().ok()?);
        let from = u32::from_le_bytes(h[8..12].try_into().ok()?);
        let len = u32::from_le_bytes(h[12..16].try_into().ok()?) as usize;
        let start = pos + HEADER;
        let text = self.buf.get(start..start + len)?;
        Some((Entry { id, from, text }, start + len))
    }

    /// Drops every message up to and including `id`; returns the last id dropped.
    pub(crate) fn ack(&mut self, id: u64) -> Option<u64> {
        let mut upto = None;
        while let Some((e, next)) = self.entry_at(self.head as usize) {
            if e.id > id {
                break;
            }
            upto = Some(e.id);
            self.head = next as u32;
            self.count -= 1;
        }
        upto
    }

    /// The messages in flight, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Entry<'_>> {
        let mut pos = self.head as usize;
        std::iter::from_fn(move || {
            let (e, next) = self.entry_at(pos)?;
            pos = next;
            Some(e)
        })
    }

    /// The messages in flight as stored messages, oldest first.
    pub(crate) fn into_stored(self) -> Vec<Stored> {
        self.iter()
            .map(|e| Stored {
                id: e.id,
                from: e.from,
                // The text was a `str` when it was pushed.
                text: String::from_utf8_lossy(e.text).into(),
            })
            .collect()
    }

    /// Gives the buffer back when nothing is in flight.
    pub(crate) fn shrink(&mut self) {
        if self.count == 0 {
            *self = Inflight::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_pop_in_order_and_the_buffer_is_reused() {
        let mut w = Inflight::default();
        w.push(1, 7, "one");
        w.push(2, 8, "two  spaced ✓");
        w.push(5, 7, "");
        assert_eq!(w.len(), 3);
        assert_eq!(w.ack(0), None);
        assert_eq!(w.ack(2), Some(2));
        assert_eq!(w.len(), 1);
        let left: Vec<(u64, AccountId, Vec<u8>)> =
            w.iter().map(|e| (e.id, e.from, e.text.to_vec())).collect();
        assert_eq!(left, [(5, 7, Vec::new())]);
        assert_eq!(w.ack(9), Some(5));
        let cap = w.buf.capacity();
        w.push(6, 1, "again");
        assert_eq!((w.head, w.buf.capacity()), (0, cap));
        let back = w.into_stored();
        assert_eq!((back[0].id, back[0].from, &*back[0].text), (6, 1, "again"));
        // A long unacknowledged run is compacted, not grown forever.
        let mut w = Inflight::default();
        for i in 0..10_000 {
            w.push(i, 1, "0123456789");
            w.ack(i.saturating_sub(2));
        }
        assert!(w.buf.len() < 64 * 1024, "{}", w.buf.len());
        assert_eq!(w.len(), 2);
    }
}
