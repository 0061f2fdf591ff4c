//! A hashed timer wheel with time passed in.
//!
//! Deadlines are rounded *up* to whole ticks, so a timer never fires early. Each slot
//! holds the timers whose due tick maps to it; a timer more than one rotation away
//! simply stays in its slot until its round comes. Insert, cancel and reset are O(1)
//! (a timer knows its position in its slot); expiring costs the slots passed plus the
//! timers in them. The wheel never reads the clock: callers pass `now`, which is what
//! lets the unit tests below run without sleeping.
//!
//! Handles carry a generation, so a stale handle (its timer fired or was cancelled and
//! the entry reused) can never cancel or reset somebody else's timer.

use std::time::{Duration, Instant};

use slab::Slab;

/// Names one armed timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerHandle {
    key: u32,
    generation: u32,
}

#[derive(Debug)]
struct Entry<T> {
    due: u64,
    pos: u32,
    generation: u32,
    value: T,
}

/// The wheel. `T` is what a timer carries back when it fires.
#[derive(Debug)]
pub struct TimerWheel<T> {
    origin: Instant,
    tick_nanos: u64,
    /// The next tick that `expire` has not processed yet.
    current: u64,
    slots: Vec<Vec<u32>>,
    entries: Slab<Entry<T>>,
    generation: u32,
    /// A lower bound on the earliest due tick (`None`: unknown, recompute).
    earliest_hint: Option<u64>,
}

impl<T> TimerWheel<T> {
    /// A wheel of `slots` slots (rounded up to a power of two) of `tick` each.
    pub fn new(origin: Instant, tick: Duration, slots: usize) -> Self {
        let slots = slots.max(1).next_power_of_two();
        TimerWheel {
            origin,
            tick_nanos: tick.as_nanos().clamp(1, u64::MAX as u128) as u64,
            current: 0,
            slots: (0..slots).map(|_| Vec::new()).collect(),
            entries: Slab::new(),
            generation: 0,
            earliest_hint: None,
        }
    }

    /// Number of armed timers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn due_tick(&self, deadline: Instant) -> u64 {
        let nanos = deadline.saturating_duration_since(self.origin).as_nanos();
        let tick = nanos.div_ceil(self.tick_nanos as u128);
        (tick.min(u64::MAX as u128) as u64).max(self.current)
    }

    fn tick_instant(&self, tick: u64) -> Instant {
        self.origin + Duration::from_nanos(tick.saturating_mul(self.tick_nanos))
    }

    fn slot_of(&self, tick: u64) -> usize {
        (tick as usize) & (self.slots.len() - 1)
    }

    fn place(&mut self, key: u32, due: u64) {
        let slot = self.slot_of(due);
        let pos = self.slots[slot].len() as u32;
        self.slots[slot].push(key);
        let e = &mut self.entries[key as usize];
        e.due = due;
        e.pos = pos;
        // A known lower bound stays one; an unknown one stays unknown (unless this is
        // the only timer), or a later insert could hide an earlier armed timer.
        self.earliest_hint = match self.earliest_hint {
            Some(h) => Some(h.min(due)),
            None if self.entries.len() == 1 => Some(due),
            None => None,
        };
    }

    fn unplace(&mut self, key: u32) {
        let (due, pos) = {
            let e = &self.entries[key as usize];
            (e.due, e.pos as usize)
        };
        let slot = self.slot_of(due);
        let list = &mut self.slots[slot];
        list.swap_remove(pos);
        if let Some(&moved) = list.get(pos) {
            self.entries[moved as usize].pos = pos as u32;
        }
    }

    /// Arms a timer that fires at the first tick at or after `deadline`.
    pub fn insert(&mut self, deadline: Instant, value: T) -> TimerHandle {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let key = self.entries.insert(Entry {
            due: 0,
            pos: 0,
            generation,
            value,
        }) as u32;
        let due = self.due_tick(deadline);
        self.place(key, due);
        TimerHandle { key, generation }
    }

    fn live(&self, h: TimerHandle) -> bool {
        self.entries
            .get(h.key as usize)
            .is_some_and(|e| e.generation == h.generation)
    }

    /// Disarms a timer; returns its value if it was still armed.
    pub fn cancel(&mut self, h: TimerHandle) -> Option<T> {
        if !self.live(h) {
            return None;
        }
        self.unplace(h.key);
        Some(self.entries.remove(h.key as usize).value)
    }

    /// Moves an armed timer to a new deadline; false if the handle is stale.
    pub fn reset(&mut self, h: TimerHandle, deadline: Instant) -> bool {
        if !self.live(h) {
            return false;
        }
        self.unplace(h.key);
        let due = self.due_tick(deadline);
        self.place(h.key, due);
        true
    }

    /// Fires every timer due at or before `now`, in no particular order within a tick.
    pub fn expire(&mut self, now: Instant, mut fire: impl FnMut(T)) {
        let now_tick = {
            let nanos = now.saturating_duration_since(self.origin).as_nanos();
            (nanos / self.tick_nanos as u128).min(u64::MAX as u128) as u64
        };
        if now_tick < self.current {
            return;
        }
        // Past one full rotation every slot has been visited once: that is enough,
        // since every timer due by `now_tick` sits in some slot.
        let span = (now_tick - self.current + 1).min(self.slots.len() as u64);
        for t in self.current..self.current + span {
            let slot = self.slot_of(t);
            let mut i = 0;
            while i < self.slots[slot].len() {
                let key = self.slots[slot][i];
                if self.entries[key as usize].due <= now_tick {
                    self.unplace(key);
                    fire(self.entries.remove(key as usize).value);
                    // `unplace` swapped another timer into position `i`: look at it next.
                } else {
                    i += 1;
                }
            }
        }
        self.current = now_tick + 1;
        if self.earliest_hint.is_some_and(|h| h <= now_tick) {
            self.earliest_hint = None;
        }
    }

    /// The instant of the earliest armed timer's tick (possibly a little early, never
    /// late): the event loop's poll timeout.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        if self.entries.is_empty() {
            return None;
        }
        if let Some(h) = self.earliest_hint {
            return Some(self.tick_instant(h.max(self.current)));
        }
        let mut best = u64::MAX;
        for i in 0..self.slots.len() as u64 {
            let t = self.current + i;
            for &key in &self.slots[self.slot_of(t)] {
                let due = self.entries[key as usize].due;
                if due == t {
                    self.earliest_hint = Some(t);
                    return Some(self.tick_instant(t));
                }
                best = best.min(due);
            }
        }
        self.earliest_hint = Some(best);
        Some(self.tick_instant(best))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn wheel(t0: Instant) -> TimerWheel<u32> {
        TimerWheel::new(t0, 10 * MS, 8)
    }

    fn fired(w: &mut TimerWheel<u32>, now: Instant) -> Vec<u32> {
        let mut v = Vec::new();
        w.expire(now, |x| v.push(x));
        v.sort();
        v
    }

    #[test]
    fn fires_at_or_after_deadline_never_before() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        w.insert(t0 + 25 * MS, 1);
        assert!(fired(&mut w, t0 + 20 * MS).is_empty());
        assert!(fired(&mut w, t0 + 29 * MS).is_empty());
        assert_eq!(fired(&mut w, t0 + 30 * MS), [1]);
        assert!(w.is_empty());
    }

    #[test]
    fn timers_beyond_one_rotation_wait_for_their_round() {
        let t0 = Instant::now();
        let mut w = wheel(t0); // 8 slots x 10 ms = 80 ms per rotation
        w.insert(t0 + 250 * MS, 7);
        w.insert(t0 + 10 * MS, 1);
        assert_eq!(fired(&mut w, t0 + 10 * MS), [1]);
        for ms in (20u32..250).step_by(10) {
            assert!(fired(&mut w, t0 + MS * ms).is_empty(), "early at {ms}");
        }
        assert_eq!(fired(&mut w, t0 + 250 * MS), [7]);
    }

    #[test]
    fn a_long_sleep_fires_everything_due_once() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        for i in 0..100u32 {
            w.insert(t0 + MS * (i * 7), i);
        }
        w.insert(t0 + MS * 10_000, 999);
        let got = fired(&mut w, t0 + MS * 5_000);
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert_eq!(w.len(), 1);
        assert_eq!(fired(&mut w, t0 + MS * 10_000), [999]);
    }

    #[test]
    fn cancel_and_stale_handles() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        let a = w.insert(t0 + 10 * MS, 1);
        let b = w.insert(t0 + 10 * MS, 2);
        let c = w.insert(t0 + 10 * MS, 3);
        assert_eq!(w.cancel(a), Some(1));
        assert_eq!(w.cancel(a), None, "cancel twice is harmless");
        assert_eq!(fired(&mut w, t0 + 10 * MS), [2, 3]);
        // b's entry slot is reused by d; the stale handle must not touch d.
        let d = w.insert(t0 + 20 * MS, 4);
        assert_eq!(w.cancel(b), None);
        assert!(!w.reset(c, t0 + 90 * MS));
        assert_eq!(fired(&mut w, t0 + 20 * MS), [4]);
        assert_eq!(w.cancel(d), None);
    }

    #[test]
    fn reset_moves_a_timer_both_ways() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        let h = w.insert(t0 + 50 * MS, 1);
        assert!(w.reset(h, t0 + 200 * MS));
        assert!(fired(&mut w, t0 + 100 * MS).is_empty());
        assert!(w.reset(h, t0 + 120 * MS));
        assert_eq!(fired(&mut w, t0 + 120 * MS), [1]);
    }

    #[test]
    fn next_deadline_is_the_earliest_tick() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        assert_eq!(w.next_deadline(), None);
        let far = w.insert(t0 + 500 * MS, 1);
        assert_eq!(w.next_deadline(), Some(t0 + 500 * MS));
        w.insert(t0 + 35 * MS, 2);
        assert_eq!(w.next_deadline(), Some(t0 + 40 * MS));
        assert_eq!(fired(&mut w, t0 + 40 * MS), [2]);
        assert_eq!(w.next_deadline(), Some(t0 + 500 * MS));
        w.cancel(far);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn regression_insert_after_expiry_does_not_hide_an_earlier_timer() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        w.insert(t0 + 10 * MS, 1);
        w.insert(t0 + 30 * MS, 2);
        assert_eq!(fired(&mut w, t0 + 10 * MS), [1]);
        // The earliest is now unknown; a later timer must not become the answer.
        w.insert(t0 + 70 * MS, 3);
        assert_eq!(w.next_deadline(), Some(t0 + 30 * MS));
    }

    #[test]
    fn many_timers_swap_remove_keeps_positions_consistent() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        let hs: Vec<_> = (0..1000u32).map(|i| w.insert(t0 + 10 * MS, i)).collect();
        for h in hs.iter().step_by(3) {
            assert!(w.cancel(*h).is_some());
        }
        let got = fired(&mut w, t0 + 10 * MS);
        let want: Vec<u32> = (0..1000).filter(|i| i % 3 != 0).collect();
        assert_eq!(got, want);
    }
}
