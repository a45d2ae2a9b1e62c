//! The client-event rate limit: a token bucket per connection, refilled continuously, with
//! the clock passed in.

use std::time::{Duration, Instant};

/// Up to `per_second` events in any second, with bursts up to the same number.
#[derive(Clone, Debug)]
pub struct RateLimit {
    per_second: u32,
    /// Tokens, in millionths of an event.
    tokens: u64,
    last: Option<Instant>,
}

const SCALE: u64 = 1_000_000;

impl RateLimit {
    /// A full bucket of `per_second` events.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            tokens: u64::from(per_second) * SCALE,
            last: None,
        }
    }

    /// Takes one event's token at `now`; false when the bucket is empty (the event is over
    /// the limit).
    #[must_use]
    pub fn allow(&mut self, now: Instant) -> bool {
        let full = u64::from(self.per_second) * SCALE;
        if let Some(last) = self.last {
            let elapsed = now
                .saturating_duration_since(last)
                .min(Duration::from_secs(1));
            let refill = elapsed.as_micros() as u64 * u64::from(self.per_second);
            self.tokens = (self.tokens + refill).min(full);
        }
        self.last = Some(now);
        if self.tokens >= SCALE {
            self.tokens -= SCALE;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let start = Instant::now();
        let mut limit = RateLimit::new(10);
        for _ in 0..10 {
            assert!(limit.allow(start));
        }
        assert!(!limit.allow(start), "the 11th in the same instant");
        assert!(!limit.allow(start + Duration::from_millis(99)));
        // 200 ms in: two tokens refilled (the failed try at 99 ms took none).
        assert!(limit.allow(start + Duration::from_millis(200)));
        assert!(limit.allow(start + Duration::from_millis(200)));
        assert!(!limit.allow(start + Duration::from_millis(200)));
        let later = start + Duration::from_secs(5);
        for _ in 0..10 {
            assert!(limit.allow(later), "refilled to the burst, no more");
        }
        assert!(!limit.allow(later));
    }

    #[test]
    fn zero_allows_nothing() {
        let mut limit = RateLimit::new(0);
        assert!(!limit.allow(Instant::now()));
    }

    proptest! {
        /// In any window of one second, at most 2 x rate pass (a full burst plus a second's
        /// refill), however the events are spaced.
        #[test]
        fn never_more_than_the_bound(rate in 1u32..50, gaps in proptest::collection::vec(0u64..300, 1..300)) {
            let start = Instant::now();
            let mut limit = RateLimit::new(rate);
            let mut passed = Vec::new();
            let mut t = start;
            for gap in gaps {
                t += Duration::from_millis(gap);
                if limit.allow(t) {
                    passed.push(t);
                }
            }
            for (i, &at) in passed.iter().enumerate() {
                let within = passed[i..].iter().take_while(|&&x| x - at < Duration::from_secs(1)).count();
                prop_assert!(within <= 2 * rate as usize);
            }
        }
    }
}
