//! Output: each session's queue, the list of sessions to flush, replies held for the
//! journal, and the slow-reader limit.
//!
//! Frames are appended to a session's [`Output`] and the session is listed dirty once;
//! the loop flushes every dirty session once per iteration (one `write` carries
//! everything queued for it). A reply that claims durability (`+SENT`, `+BLOCKED`,
//! ...) waits in [`Held`] for its journal batch; every later reply waits behind it
//! (replies keep request order) while pushes go out without it (the protocol lets them
//! come between a request and its reply): after at most `PUSH_WAIT` or once
//! `PUSH_BATCH` bytes wait, and otherwise together with the reply, in one write. A
//! session whose queue passes `max_queued` is listed as overflowed and closed as a slow
//! reader once the current request is done.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use slab::Slab;

use super::session::Session;
use crate::protocol::OutBuf;

/// Bytes of held replies past which a session's input is paused: a client that keeps
/// sending while the disk fails cannot make the server hold more.
pub(crate) const HELD_MAX: usize = 64 << 10;

/// One session's output.
#[derive(Debug, Default)]
pub(crate) struct Output {
    pub out: OutBuf,
    /// Boxed (most sessions never hold a reply: the session table stays compact) and
    /// kept between holds (under `--fsync always` nearly every sender holds one per
    /// batch); given back when the connection goes quiet.
    held: Option<Box<Held>>,
    /// Listed in [`Outbox::dirty`].
    dirty: bool,
}

impl Output {
    /// Whether replies wait for a journal batch.
    pub(crate) fn is_held(&self) -> bool {
        self.held.as_ref().is_some_and(|h| !h.marks.is_empty())
    }

    pub(crate) fn held_too_much(&self) -> bool {
        self.held.as_ref().is_some_and(|h| h.buf.len() > HELD_MAX)
    }

    /// Gives idle buffers back.
    pub(crate) fn shrink(&mut self) {
        self.out.shrink(0);
        if !self.is_held() {
            self.held = None;
        }
    }

    /// Moves the replies whose batches are durable up to `seq` into the output.
    fn release(&mut self, seq: u64) -> bool {
        match &mut self.held {
            Some(h) => {
                let moved = h.release(seq, &mut self.out);
                if h.marks.is_empty() {
                    h.pushes_waiting_since = None;
                }
                moved
            }
            None => false,
        }
    }

    /// Whether to keep this session's pushes back for now, and until when. While a
    /// reply waits for the journal (about a millisecond under `--fsync always`), the
    /// pushes queued behind it go out together with it in one write rather than in one
    /// write each; but never for long: after [`PUSH_WAIT`], or once [`PUSH_BATCH`]
    /// bytes are waiting, pushes go out on their own, so a failing disk never holds up
    /// a session's messages, presence or pings.
    pub(crate) fn defer_pushes(&mut self, now: Instant) -> Option<Instant> {
        let pending = self.out.len();
        let h = self.held.as_mut().filter(|h| !h.marks.is_empty())?;
        if pending == 0 || pending >= PUSH_BATCH {
            return None;
        }
        let since = *h.pushes_waiting_since.get_or_insert(now);
        let until = since + PUSH_WAIT;
        (now < until).then_some(until)
    }
}

/// How long pushes may wait behind a held reply before they go out on their own.
pub(crate) const PUSH_WAIT: Duration = Duration::from_millis(20);
/// Bytes of pushes that go out at once even behind a held reply.
pub(crate) const PUSH_BATCH: usize = 16 << 10;

/// Replies held until the journal batch they depend on is durable.
#[derive(Debug, Default)]
struct Held {
    buf: Vec<u8>,
    /// (batch sequence number, end of the replies in `buf` that wait for it), in order.
    marks: VecDeque<(u64, usize)>,
    /// Since when pushes for this session have waited for the held replies (see
    /// [`Output::defer_pushes`]).
    pushes_waiting_since: Option<Instant>,
}

impl Held {
    /// Appends a reply; `seq` is the batch it waits for, or `None` if it only waits
    /// for the replies before it.
    fn push(&mut self, seq: Option<u64>, f: impl FnOnce(&mut Vec<u8>)) {
        f(&mut self.buf);
        let end = self.buf.len();
        match (seq, self.marks.back_mut()) {
            (Some(seq), Some(last)) if last.0 == seq => last.1 = end,
            (Some(seq), _) => self.marks.push_back((seq, end)),
            (None, Some(last)) => last.1 = end,
            // Only reached for a reply behind a held one (`Outbox::reply`).
            (None, None) => self.marks.push_back((0, end)),
        }
    }

    /// Moves the replies whose batches are durable up to `seq` into `out`; returns
    /// whether any moved.
    fn release(&mut self, seq: u64, out: &mut OutBuf) -> bool {
        let mut end = 0;
        while let Some(&(s, e)) = self.marks.front() {
            if s > seq {
                break;
            }
            end = e;
            self.marks.pop_front();
        }
        if end == 0 {
            return false;
        }
        out.tail().extend_from_slice(&self.buf[..end]);
        self.buf.drain(..end);
        for m in &mut self.marks {
            m.1 -= end;
        }
        if self.marks.is_empty() {
            // Kept for the next reply to hold (under `--fsync always` nearly every
            // sender's); given back when the connection goes quiet (`shrink`).
            self.buf.clear();
        }
        true
    }
}

/// The core's lists of sessions with output to flush, held, or over the limit.
#[derive(Debug)]
pub(crate) struct Outbox {
    dirty: Vec<usize>,
    /// Sessions whose pushes wait behind a held reply (see `Output::defer_pushes`),
    /// flushed again at `deferred_until` at the latest.
    deferred: Vec<usize>,
    deferred_until: Option<Instant>,
    /// Sessions that passed `max_queued`, closed once the request is done.
    overflowed: Vec<usize>,
    /// Sessions with held replies: (key, serial).
    held: Vec<(usize, u64)>,
    max_queued: usize,
}

impl Outbox {
    pub(crate) fn new(max_queued: usize) -> Outbox {
        Outbox {
            dirty: Vec::new(),
            deferred: Vec::new(),
            deferred_until: None,
            overflowed: Vec::new(),
            held: Vec::new(),
            max_queued,
        }
    }

    /// Lists `key` for the next flush (once).
    pub(crate) fn mark_dirty(&mut self, key: usize, o: &mut Output) {
        if !o.dirty {
            o.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Appends a push (or a reply that need not wait) to session `key`.
    pub(crate) fn push(&mut self, key: usize, o: &mut Output, f: impl FnOnce(&mut Vec<u8>)) {
        f(o.out.tail());
        self.after_append(key, o);
    }

    /// Bookkeeping after `o.out` grew: listed for the flush, and for closing if over the limit.
    pub(crate) fn after_append(&mut self, key: usize, o: &mut Output) {
        self.mark_dirty(key, o);
        if o.out.len() > self.max_queued {
            self.overflowed.push(key);
        }
    }

    /// Appends a reply: straight out, unless it waits for batch `seq` or earlier
    /// replies wait.
    pub(crate) fn reply(
        &mut self,
        key: usize,
        serial: u64,
        o: &mut Output,
        seq: Option<u64>,
        f: impl FnOnce(&mut Vec<u8>),
    ) {
        if seq.is_none() && !o.is_held() {
            return self.push(key, o, f);
        }
        if !o.is_held() {
            self.held.push((key, serial));
        }
        o.held.get_or_insert_default().push(seq, f);
    }

    /// Journal batches up to `seq` are durable: moves the replies held for them into
    /// their sessions' output. A session whose input was paused for holding too much
    /// and no longer does is listed in `resumed` (the loop reads it again).
    pub(crate) fn release(
        &mut self,
        seq: u64,
        sessions: &mut Slab<Session>,
        resumed: &mut Vec<(usize, u64)>,
    ) {
        let mut held = std::mem::take(&mut self.held);
        held.retain(|&(key, serial)| {
            let Some(s) = sessions.get_mut(key).filter(|s| s.serial == serial) else {
                return false;
            };
            let was_paused = s.input_paused();
            let o = &mut s.output;
            if o.release(seq) {
                self.mark_dirty(key, o);
                if was_paused && !s.input_paused() && !s.is_closing() {
                    resumed.push((key, serial));
                }
            }
            s.output.is_held()
        });
        self.held = held;
    }

    /// Takes the dirty list; give it back with [`Outbox::flushed`].
    pub(crate) fn take_dirty(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.dirty)
    }

    /// Clears the flag of a session that was flushed.
    pub(crate) fn clear_dirty(o: &mut Output) {
        o.dirty = false;
    }

    /// Returns the (emptied) dirty list's allocation.
    pub(crate) fn flushed(&mut self, mut keys: Vec<usize>) {
        keys.clear();
        if self.dirty.is_empty() {
            self.dirty = keys;
        }
    }

    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Keeps session `key` (dirty, not written) for a later flush, by `until`.
    pub(crate) fn defer(&mut self, key: usize, until: Instant) {
        self.deferred.push(key);
        self.deferred_until = Some(self.deferred_until.map_or(until, |t| t.min(until)));
    }

    /// The sessions deferred by the last flush, to offer again (their dirty flags are
    /// still set).
    pub(crate) fn take_deferred(&mut self) -> Vec<usize> {
        self.deferred_until = None;
        std::mem::take(&mut self.deferred)
    }

    /// When a deferred flush is due.
    pub(crate) fn deferred_until(&self) -> Option<Instant> {
        self.deferred_until
    }

    /// The next session that overflowed, to close as a slow reader.
    pub(crate) fn pop_overflowed(&mut self) -> Option<usize> {
        self.overflowed.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_replies_keep_their_order_and_pushes_pass_them() {
        let mut ob = Outbox::new(1 << 20);
        let mut o = Output::default();
        ob.reply(1, 7, &mut o, Some(3), |b| b.extend_from_slice(b"+SENT a\n"));
        ob.reply(1, 7, &mut o, None, |b| b.extend_from_slice(b"+PONG\n"));
        ob.push(1, &mut o, |b| b.extend_from_slice(b"*MSG 1 b hi\n"));
        ob.reply(1, 7, &mut o, Some(4), |b| {
            b.extend_from_slice(b"+BLOCKED c\n")
        });
        assert_eq!(o.out.pending(), b"*MSG 1 b hi\n");
        assert!(o.release(3));
        assert_eq!(o.out.pending(), b"*MSG 1 b hi\n+SENT a\n+PONG\n");
        assert!(o.is_held());
        assert!(!o.release(3));
        assert!(o.release(4));
        assert_eq!(
            o.out.pending(),
            b"*MSG 1 b hi\n+SENT a\n+PONG\n+BLOCKED c\n"
        );
        assert!(!o.is_held());
    }
}
