//! A token bucket kept as one instant (the generic cell rate algorithm, GCRA): the bucket is
//! full when that instant has passed, and each unit taken pushes it `1 / rate` later. The
//! burst is one second's worth. Sans-IO: the caller passes `now`.

use std::time::{Duration, Instant};

/// Units per second, and a burst of as many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    per_second: u64,
}

impl Rate {
    /// `per_second` units a second (at least 1).
    pub fn per_second(per_second: u64) -> Self {
        Self {
            per_second: per_second.max(1),
        }
    }

    /// The time `units` take to refill.
    fn refill(self, units: u64) -> Duration {
        let nanos = u128::from(units) * 1_000_000_000 / u128::from(self.per_second);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// The burst: one second's worth of units.
const BURST: Duration = Duration::from_secs(1);

/// One bucket's state: 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// When the bucket is full again; `None`: full.
    full_at: Option<Instant>,
}

impl Bucket {
    /// Takes `units` at `now`, if the bucket holds them. A take larger than the whole burst
    /// passes only from a full bucket (then the bucket owes the rest, and later takes wait
    /// for it), so one message larger than a second's worth is not refused forever.
    ///
    /// # Errors
    ///
    /// The time until the take would pass; nothing is taken.
    pub fn take(&mut self, rate: Rate, units: u64, now: Instant) -> Result<(), Duration> {
        let start = self.full_at.filter(|&at| at > now).unwrap_or(now);
        let owed = start - now;
        let after = owed.saturating_add(rate.refill(units));
        if owed > Duration::ZERO && after > BURST {
            return Err(after - BURST);
        }
        self.full_at = Some(start + rate.refill(units));
        Ok(())
    }

    /// Whether the bucket is full at `now` (nothing taken in the last refill time).
    pub fn is_full(&self, now: Instant) -> bool {
        self.full_at.is_none_or(|at| at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_of_one_seconds_worth_then_the_rate() {
        let rate = Rate::per_second(10);
        let t0 = Instant::now();
        let mut bucket = Bucket::default();
        for _ in 0..10 {
            bucket.take(rate, 1, t0).expect("within the burst");
        }
        let wait = bucket.take(rate, 1, t0).expect_err("past the burst");
        assert_eq!(wait, Duration::from_millis(100));
        // One unit refills every 100 ms.
        bucket
            .take(rate, 1, t0 + Duration::from_millis(100))
            .expect("refilled");
        assert!(bucket
            .take(rate, 1, t0 + Duration::from_millis(150))
            .is_err());
        assert!(!bucket.is_full(t0 + Duration::from_millis(1000)));
        assert!(bucket.is_full(t0 + Duration::from_millis(1100)));
    }

    #[test]
    fn a_take_larger_than_the_burst_passes_only_from_full() {
        let rate = Rate::per_second(1000);
        let t0 = Instant::now();
        let mut bucket = Bucket::default();
        bucket
            .take(rate, 3000, t0)
            .expect("a full bucket lets it through");
        // It owes 3 s: the next byte waits until only a second's worth is owed.
        let wait = bucket.take(rate, 1, t0).expect_err("owing");
        assert_eq!(wait, Duration::from_millis(2001));
        assert!(bucket
            .take(rate, 1, t0 + Duration::from_millis(2001))
            .is_ok());
    }

    proptest! {
        /// Over any window, what passes is at most the burst plus the rate times the window
        /// (plus one oversized take from a full bucket).
        #[test]
        fn never_more_than_burst_plus_rate(
            per_second in 1u64..1000,
            steps in proptest::collection::vec((0u64..50, 1u64..20), 1..200),
        ) {
            let rate = Rate::per_second(per_second);
            let t0 = Instant::now();
            let mut bucket = Bucket::default();
            let mut now = t0;
            let mut passed = 0u64;
            let mut largest = 0u64;
            for (advance_ms, units) in steps {
                now += Duration::from_millis(advance_ms);
                if bucket.take(rate, units, now).is_ok() {
                    passed += units;
                    largest = largest.max(units);
                }
            }
            let elapsed = (now - t0).as_secs_f64();
            let bound = per_second as f64 * (1.0 + elapsed) + largest as f64;
            prop_assert!(passed as f64 <= bound + 1e-6, "{passed} > {bound}");
        }
    }
}
