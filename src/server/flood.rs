//! One token bucket type for every rate limit of the server: commands per connection
//! (flood control), private introductions per user, and new connections per address.
//!
//! A bucket holds up to `burst` tokens and gains `rate` tokens a second; an action
//! takes one. Time is passed in, so tests drive it without sleeping; it is kept as a
//! [`Stamp`] (every connection has a bucket or two: 16 bytes each, not 24).

use std::time::Duration;

use super::clock::Stamp;

/// A bucket's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    /// Most tokens held (the burst allowed after a quiet spell).
    pub burst: f64,
    /// Tokens gained per second.
    pub per_sec: f64,
}

/// Tokens left and when they were last counted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f64,
    at: Stamp,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn full(rate: Rate, now: Stamp) -> TokenBucket {
        TokenBucket {
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Stamp) {
        let elapsed = now.since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.at = now;
    }

    /// Takes a token, or says how long until one is back.
    pub(crate) fn take(&mut self, rate: Rate, now: Stamp) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / rate.per_sec.max(0.001);
        Err(Duration::from_secs_f64(wait.min(3600.0)))
    }

    /// Whether the bucket would be full at `now` (nothing to remember about it).
    pub(crate) fn is_full(&self, rate: Rate, now: Stamp) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.tokens >= rate.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Stamp::default();
        let rate = Rate {
            burst: 3.0,
            per_sec: 2.0,
        };
        let mut b = TokenBucket::full(rate, t0);
        for _ in 0..3 {
            assert_eq!(b.take(rate, t0), Ok(()));
        }
        assert_eq!(b.take(rate, t0), Err(Duration::from_millis(500)));
        assert!(!b.is_full(rate, t0));
        assert_eq!(b.take(rate, t0.after(Duration::from_millis(500))), Ok(()));
        assert!(b.is_full(rate, t0.after(Duration::from_secs(10))));
    }
}
