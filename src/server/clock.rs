//! Compact points in time for state kept per connection.
//!
//! An `Instant` takes 16 bytes; a [`Stamp`] (milliseconds since a [`Clock`]'s origin)
//! takes 8, and a connection keeps several (its last input, its next liveness check,
//! its last command, its token buckets). Whoever owns the state owns its clock: the
//! core one, the event loop one for its per-address table. Callers still pass
//! `Instant`s around; they become stamps where they are stored.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// A point in time: whole milliseconds since the origin of the [`Clock`] that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Stamp(u64);

impl Stamp {
    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub(crate) fn since(self, earlier: Stamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// `self` plus `d`, rounded up to a whole millisecond (a deadline never comes early).
    pub(crate) fn after(self, d: Duration) -> Stamp {
        let ms = d.as_nanos().div_ceil(1_000_000).min(u128::from(u64::MAX)) as u64;
        Stamp(self.0.saturating_add(ms))
    }
}

/// Turns `Instant`s into [`Stamp`]s and back.
#[derive(Debug)]
pub(crate) struct Clock {
    origin: Instant,
    /// The last conversion: the loop passes the same `now` to every handler of an
    /// iteration, so most conversions (one per read, one per command) are this.
    last: Cell<(Instant, Stamp)>,
}

impl Clock {
    /// A clock whose stamps count from `origin` (times before it become the origin).
    pub(crate) fn new(origin: Instant) -> Clock {
        Clock {
            origin,
            last: Cell::new((origin, Stamp(0))),
        }
    }

    /// Where its stamps count from.
    pub(crate) fn origin(&self) -> Instant {
        self.origin
    }

    /// `t` as a stamp, rounded down to the millisecond.
    pub(crate) fn stamp(&self, t: Instant) -> Stamp {
        let (at, stamp) = self.last.get();
        if at == t {
            return stamp;
        }
        let d = t.saturating_duration_since(self.origin);
        let stamp = Stamp(
            d.as_secs()
                .saturating_mul(1000)
                .saturating_add(u64::from(d.subsec_millis())),
        );
        self.last.set((t, stamp));
        stamp
    }

    /// The instant of `s`.
    pub(crate) fn instant(&self, s: Stamp) -> Instant {
        self.origin + Duration::from_millis(s.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_to_the_millisecond_and_deadlines_round_up() {
        let t0 = Instant::now();
        let c = Clock::new(t0);
        assert_eq!(c.stamp(t0 - Duration::from_secs(1)), Stamp(0));
        let s = c.stamp(t0 + Duration::from_micros(2_500));
        assert_eq!(s, Stamp(2));
        assert_eq!(c.instant(s), t0 + Duration::from_millis(2));
        assert_eq!(s.after(Duration::from_micros(1)), Stamp(3));
        assert_eq!(s.after(Duration::from_secs(30)), Stamp(30_002));
        assert_eq!(Stamp(30_002).since(s), Duration::from_secs(30));
        assert_eq!(s.since(Stamp(30_002)), Duration::ZERO);
        assert_eq!(s.after(Duration::MAX), Stamp(u64::MAX));
    }
}
