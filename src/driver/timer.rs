//! One timer wheel per worker: every per-connection deadline (handshake, ping, close drain,
//! linger) lives here, and the ring's wait timeout is the wheel's next tick, so no timeout
//! operation is ever submitted per connection.
//!
//! Deadlines are rounded up to ticks of [`TICK`]. An entry names a connection and the tick it
//! was set for; the connection holds its one authoritative deadline, so moving a deadline
//! leaves the old entry stale, and a stale entry is skipped when its bucket fires. Deadlines
//! move only on rare events (upgrade, ping sent, close sent), so stale entries stay few.

use std::time::{Duration, Instant};

/// A deadline that never comes: 2^32 ticks of 100 ms is 13 years.
pub(crate) const NEVER: u32 = u32::MAX;

/// The wheel's resolution.
pub(crate) const TICK: Duration = Duration::from_millis(100);
const BUCKETS: usize = 512;
/// Capacity a bucket may keep whatever it holds: below it, shrinking is not worth a
/// reallocation.
const MIN_BUCKET_CAPACITY: usize = 64;

/// A deadline set for a connection: its slab key and the tick it fires at.
///
/// No slot generation: an entry fires only for a connection whose own deadline is that very
/// tick, so an entry left by an earlier occupant of the key can only fire a deadline that is
/// due anyway (and firing moves the deadline, so the occupant's own entry is then stale).
/// 8 bytes per idle connection, not 12.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerEntry {
    pub key: u32,
    pub tick: u32,
}

/// A hashed timer wheel of [`BUCKETS`] buckets, one [`TICK`] each.
pub(crate) struct TimerWheel {
    start: Instant,
    buckets: Vec<Vec<TimerEntry>>,
    /// The next tick not yet processed.
    next_tick: u32,
    len: usize,
}

impl TimerWheel {
    pub(crate) fn new(start: Instant) -> Self {
        Self {
            start,
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            next_tick: 0,
            len: 0,
        }
    }

    /// The tick that `now` falls in.
    pub(crate) fn tick_at(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.start).as_millis() / TICK.as_millis())
            .min(NEVER as u128 - 1) as u32
    }

    /// The first tick at or after `now + delay`.
    pub(crate) fn deadline(&self, now: Instant, delay: Duration) -> u32 {
        let ms = (now + delay)
            .saturating_duration_since(self.start)
            .as_millis();
        ms.div_ceil(TICK.as_millis()).min(NEVER as u128 - 1) as u32
    }

    /// Schedules an entry; a tick already past fires on the next advance.
    pub(crate) fn insert(&mut self, entry: TimerEntry) {
        let tick = entry.tick.max(self.next_tick);
        self.buckets[(tick as usize) % BUCKETS].push(entry);
        self.len += 1;
    }

    /// Entries pending, stale ones included.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether any entry is pending.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How long until the next tick boundary, or `None` when nothing is pending.
    pub(crate) fn timeout(&self, now: Instant) -> Option<Duration> {
        if self.is_empty() {
            return None;
        }
        let next = self.start + TICK * self.next_tick;
        Some(next.saturating_duration_since(now))
    }

    /// Moves every entry due at or before `now` into `due`.
    pub(crate) fn advance(&mut self, now: Instant, due: &mut Vec<TimerEntry>) {
        let current = self.tick_at(now);
        while self.next_tick <= current {
            let tick = self.next_tick;
            let bucket = &mut self.buckets[(tick as usize) % BUCKETS];
            let before = due.len();
            bucket.retain(|entry| {
                if entry.tick <= tick {
                    due.push(*entry);
                    false
                } else {
                    true
                }
            });
            self.len -= due.len() - before;
            // A burst (thousands connecting in one tick) leaves a bucket with a large
            // capacity; idle connections that move together through the wheel would leave
            // it in every bucket in turn. Give back what is far above what stays.
            if bucket.capacity() > 4 * bucket.len() + MIN_BUCKET_CAPACITY {
                bucket.shrink_to(2 * bucket.len());
            }
            self.next_tick += 1;
            if self.len == 0 {
                // Nothing left: jump ahead instead of walking empty buckets.
                self.next_tick = self.next_tick.max(current + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: u32, tick: u32) -> TimerEntry {
        TimerEntry { key, tick }
    }

    #[test]
    fn entries_fire_at_their_tick_and_not_before() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(start);
        wheel.insert(entry(1, 5));
        wheel.insert(entry(2, 5 + BUCKETS as u32)); // same bucket, next round
        wheel.insert(entry(3, 0));
        let mut due = Vec::new();
        wheel.advance(start + TICK * 4, &mut due);
        assert_eq!(due, [entry(3, 0)]);
        due.clear();
        wheel.advance(start + TICK * 5, &mut due);
        assert_eq!(due, [entry(1, 5)]);
        due.clear();
        wheel.advance(start + TICK * (BUCKETS as u32 + 4), &mut due);
        assert!(due.is_empty());
        wheel.advance(start + TICK * (BUCKETS as u32 + 5), &mut due);
        assert_eq!(due, [entry(2, 5 + BUCKETS as u32)]);
        assert!(wheel.is_empty());
        assert_eq!(wheel.timeout(start), None);
    }

    /// A burst that filled one bucket does not leave its capacity behind once it fired.
    #[test]
    fn a_bucket_gives_back_a_burst_once_it_fired() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(start);
        for key in 0..10_000 {
            wheel.insert(entry(key, 3));
        }
        wheel.insert(entry(10_000, 3 + BUCKETS as u32)); // stays: next round
        let mut due = Vec::new();
        wheel.advance(start + TICK * 3, &mut due);
        assert_eq!(due.len(), 10_000);
        assert_eq!(wheel.len(), 1);
        let bucket = &wheel.buckets[3];
        assert_eq!(bucket.len(), 1);
        assert!(
            bucket.capacity() <= MIN_BUCKET_CAPACITY,
            "{} entries of capacity kept for one entry",
            bucket.capacity()
        );
    }

    #[test]
    fn deadlines_round_up_and_past_ticks_fire_next() {
        let start = Instant::now();
        let mut wheel = TimerWheel::new(start);
        assert_eq!(wheel.deadline(start, Duration::from_millis(250)), 3);
        assert_eq!(wheel.deadline(start, Duration::from_millis(300)), 3);
        let mut due = Vec::new();
        wheel.advance(start + TICK * 10, &mut due);
        wheel.insert(entry(9, 2));
        assert!(wheel.timeout(start + TICK * 10).is_some());
        wheel.advance(start + TICK * 11, &mut due);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].key, 9);
    }
}
