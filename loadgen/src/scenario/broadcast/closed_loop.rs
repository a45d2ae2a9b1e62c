//! Closed-loop publishing (`broadcast --inflight P`): P publishes in flight over the K
//! WebSocket publishers, each publisher sending its next as soon as one of its own completes.
//!
//! A publish is complete when every subscriber still open has received it. Subscribers live on
//! every client thread, so the count is shared: each publisher owns `lanes` slots of
//! [`ClosedLoop`], publish `seq` uses slot `seq % lanes`, and each slot is one atomic word of
//! the sequence number it stands for and the deliveries counted so far. A subscriber that
//! receives a publish for the first time adds one to its slot if the slot still stands for that
//! number (a compare-and-swap, so a late delivery of a publish given up on never counts towards
//! the next one in that slot). The publisher's thread, which alone writes a slot's number,
//! retires its publishes oldest first ([`Window`]): complete when the count reaches the open
//! subscribers, given up when older than the timeout. Every subscriber receives a publisher's
//! messages in the order sent, so the oldest completes first and a publisher's outstanding
//! numbers are consecutive: they never share a slot.
//!
//! A publish given up on only frees its slot: what never arrived is still `missing` in the
//! subscribers' own accounting, which this module does not touch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Five seconds for a publish to reach every subscriber before it is given up.
pub const DEFAULT_PUBLISH_TIMEOUT_SECS: f64 = 5.0;

/// A slot's low bits count deliveries: more than the most connections a run may have.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// The sequence number a slot stands for, in its high bits (it wraps after 2^40 publishes).
const SEQ_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;

/// The state every client thread shares in a closed-loop run.
#[derive(Debug)]
pub struct ClosedLoop {
    /// P.
    inflight: u64,
    timeout_ns: u64,
    /// By publisher id: its first slot and its number of slots (its share of P).
    lanes: Vec<(usize, u64)>,
    /// Per slot: `seq << COUNT_BITS | deliveries`.
    slots: Box<[AtomicU64]>,
    /// Subscribers planned, less those found closed: what "every subscriber" means.
    open_subscribers: AtomicU64,
    /// Publishes sent and not yet retired, over all publishers.
    outstanding: AtomicU64,
    max_outstanding: AtomicU64,
    completed: AtomicU64,
    timed_out: AtomicU64,
}

/// What a closed-loop run counted, for the report.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClosedLoopTally {
    /// P: publishes in flight in all.
    pub inflight: u64,
    /// `--publish-timeout`, seconds.
    pub timeout_s: f64,
    /// Publishes that reached every open subscriber.
    pub completed: u64,
    /// Publishes given up on after the timeout.
    pub timed_out: u64,
    /// The most publishes outstanding at once, over all publishers.
    pub max_outstanding: u64,
}

impl ClosedLoop {
    /// P = `inflight` publishes over `publishers` publishers (at least one each: the CLI
    /// refuses fewer), to `subscribers` subscribers, given up after `timeout`.
    ///
    /// # Panics
    ///
    /// If `inflight < publishers` or `publishers` is 0.
    pub fn new(inflight: u64, publishers: u64, subscribers: u64, timeout: Duration) -> Self {
        assert!(
            publishers > 0 && inflight >= publishers,
            "at least one publish in flight per publisher"
        );
        let (share, extra) = (inflight / publishers, inflight % publishers);
        let mut first = 0;
        let lanes = (0..publishers)
            .map(|id| {
                let count = share + u64::from(id < extra);
                let lane = (first, count);
                first += count as usize;
                lane
            })
            .collect();
        Self {
            inflight,
            timeout_ns: u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
            lanes,
            slots: (0..inflight).map(|_| AtomicU64::new(u64::MAX)).collect(),
            open_subscribers: AtomicU64::new(subscribers),
            outstanding: AtomicU64::new(0),
            max_outstanding: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
        }
    }

    /// A new window for publisher `id`, owned by its thread.
    pub fn window(&self, id: u64) -> Window {
        let lanes = self.lanes.get(id as usize).map_or(0, |l| l.1);
        Window {
            id,
            oldest: 0,
            sent_ns: vec![0; lanes as usize],
        }
    }

    /// A subscriber received publish `seq` of publisher `id` for the first time.
    pub fn delivered(&self, id: u64, seq: u64) {
        let Some(slot) = self.slot(id, seq) else {
            return;
        };
        let tag = (seq & SEQ_MASK) << COUNT_BITS;
        let mut current = slot.load(Ordering::Acquire);
        // Not this publish's slot any more (given up on and reused), or the count is full.
        while current & !COUNT_MASK == tag && current & COUNT_MASK < COUNT_MASK {
            match slot.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }

    /// `closed` more subscribers were found closed: publishes no longer wait for them.
    pub fn subscribers_closed(&self, closed: u64) {
        let _ = self
            .open_subscribers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                Some(open.saturating_sub(closed))
            });
    }

    /// The counts so far (final once every thread has finished).
    pub fn tally(&self) -> ClosedLoopTally {
        ClosedLoopTally {
            inflight: self.inflight,
            timeout_s: self.timeout_ns as f64 / 1e9,
            completed: self.completed.load(Ordering::Acquire),
            timed_out: self.timed_out.load(Ordering::Acquire),
            max_outstanding: self.max_outstanding.load(Ordering::Acquire),
        }
    }

    fn slot(&self, id: u64, seq: u64) -> Option<&AtomicU64> {
        let &(first, count) = self.lanes.get(usize::try_from(id).ok()?)?;
        self.slots.get(first + (seq % count.max(1)) as usize)
    }

    fn complete(&self, id: u64, seq: u64) -> bool {
        let Some(slot) = self.slot(id, seq) else {
            return false;
        };
        let word = slot.load(Ordering::Acquire);
        word >> COUNT_BITS == seq & SEQ_MASK
            && word & COUNT_MASK >= self.open_subscribers.load(Ordering::Acquire)
    }
}

/// One publisher's publishes in flight: numbers `oldest..next`, where `next` is the
/// publisher's own count of sends.
#[derive(Debug)]
pub struct Window {
    id: u64,
    oldest: u64,
    /// By slot: when the publish it stands for was sent, `CLOCK_MONOTONIC` ns.
    sent_ns: Vec<u64>,
}

impl Window {
    /// Retires, oldest first, the publishes below `next` that completed or timed out by
    /// `now_ns`; returns how many retired.
    pub fn retire(&mut self, shared: &ClosedLoop, next: u64, now_ns: u64) -> u64 {
        let mut retired = 0;
        while self.oldest < next {
            let sent_ns = self.sent_ns[self.lane(self.oldest)];
            if shared.complete(self.id, self.oldest) {
                shared.completed.fetch_add(1, Ordering::AcqRel);
            } else if now_ns.saturating_sub(sent_ns) >= shared.timeout_ns {
                shared.timed_out.fetch_add(1, Ordering::AcqRel);
            } else {
                break;
            }
            shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            self.oldest += 1;
            retired += 1;
        }
        retired
    }

    /// Takes a slot for publish `next`, sent at `now_ns`: false if every slot is taken (the
    /// caller must not send it yet).
    #[must_use]
    pub fn admit(&mut self, shared: &ClosedLoop, next: u64, now_ns: u64) -> bool {
        if next - self.oldest >= self.sent_ns.len() as u64 {
            return false;
        }
        let Some(slot) = shared.slot(self.id, next) else {
            return false;
        };
        slot.store((next & SEQ_MASK) << COUNT_BITS, Ordering::Release);
        let lane = self.lane(next);
        self.sent_ns[lane] = now_ns;
        let outstanding = shared.outstanding.fetch_add(1, Ordering::AcqRel) + 1;
        shared
            .max_outstanding
            .fetch_max(outstanding, Ordering::AcqRel);
        true
    }

    /// When the oldest publish below `next` times out, if any is in flight.
    pub fn deadline(&self, shared: &ClosedLoop, next: u64) -> Option<u64> {
        (self.oldest < next)
            .then(|| self.sent_ns[self.lane(self.oldest)].saturating_add(shared.timeout_ns))
    }

    fn lane(&self, seq: u64) -> usize {
        (seq % self.sent_ns.len().max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn shared(inflight: u64, publishers: u64, subscribers: u64) -> ClosedLoop {
        ClosedLoop::new(inflight, publishers, subscribers, Duration::from_secs(5))
    }

    #[test]
    fn inflight_spreads_over_the_publishers() {
        let s = shared(8, 3, 1);
        let lanes: Vec<usize> = (0..3).map(|id| s.window(id).sent_ns.len()).collect();
        assert_eq!(lanes, [3, 3, 2]);
        assert_eq!(s.slots.len(), 8);
        // The slots of different publishers do not overlap.
        assert_eq!(s.lanes, [(0, 3), (3, 3), (6, 2)]);
    }

    #[test]
    fn a_publish_completes_after_the_last_subscribers_delivery() {
        let s = shared(2, 1, 3);
        let mut w = s.window(0);
        assert!(w.admit(&s, 0, 0));
        assert!(w.admit(&s, 1, 0));
        assert!(!w.admit(&s, 2, 0), "both slots are taken");
        s.delivered(0, 0);
        s.delivered(0, 0);
        s.delivered(0, 1);
        assert_eq!(w.retire(&s, 2, 1), 0, "two of three subscribers have it");
        assert!(!w.admit(&s, 2, 1));
        s.delivered(0, 0);
        assert_eq!(w.retire(&s, 2, 1), 1);
        assert!(w.admit(&s, 2, 1));
        assert!(!w.admit(&s, 3, 1));
        let t = s.tally();
        assert_eq!((t.completed, t.timed_out, t.max_outstanding), (1, 0, 2));
    }

    #[test]
    fn a_closed_subscriber_is_not_waited_for() {
        let s = shared(1, 1, 3);
        let mut w = s.window(0);
        assert!(w.admit(&s, 0, 0));
        s.delivered(0, 0);
        s.delivered(0, 0);
        assert_eq!(w.retire(&s, 1, 1), 0);
        s.subscribers_closed(1);
        assert_eq!(w.retire(&s, 1, 1), 1);
    }

    #[test]
    fn a_timeout_frees_the_slot_and_a_late_delivery_counts_for_nothing() {
        let s = shared(1, 1, 2);
        let mut w = s.window(0);
        assert!(w.admit(&s, 0, 10));
        s.delivered(0, 0);
        assert_eq!(w.deadline(&s, 1), Some(10 + 5 * SECOND));
        assert_eq!(w.retire(&s, 1, 10 + 5 * SECOND - 1), 0);
        assert_eq!(w.retire(&s, 1, 10 + 5 * SECOND), 1);
        assert_eq!(w.deadline(&s, 1), None);
        assert_eq!(s.tally().timed_out, 1);
        // Publish 1 takes the same slot; publish 0's straggler does not count towards it.
        assert!(w.admit(&s, 1, 6 * SECOND));
        s.delivered(0, 0);
        s.delivered(0, 1);
        assert_eq!(w.retire(&s, 2, 6 * SECOND), 0);
        s.delivered(0, 1);
        assert_eq!(w.retire(&s, 2, 6 * SECOND), 1);
        let t = s.tally();
        assert_eq!((t.completed, t.timed_out, t.max_outstanding), (1, 1, 1));
    }

    #[test]
    fn never_more_than_p_outstanding() {
        // 3 publishers share 7; they send whenever a slot is free, subscribers deliver in a
        // scrambled order, and some publishes are never delivered in full (they time out).
        let (publishers, subscribers) = (3, 4);
        let s = shared(7, publishers, subscribers);
        let mut windows: Vec<Window> = (0..publishers).map(|id| s.window(id)).collect();
        let mut next = vec![0u64; publishers as usize];
        let mut now = 0;
        let mut in_flight: Vec<(u64, u64, u64)> = Vec::new(); // (id, seq, deliveries left)
        for step in 0..10_000u64 {
            now += SECOND / 10;
            for (id, w) in windows.iter_mut().enumerate() {
                w.retire(&s, next[id], now);
                while w.admit(&s, next[id], now) {
                    let deliveries = if (step + next[id]).is_multiple_of(13) {
                        2
                    } else {
                        4
                    };
                    in_flight.push((id as u64, next[id], deliveries));
                    next[id] += 1;
                }
                assert!(next[id] - w.oldest <= w.sent_ns.len() as u64);
            }
            let outstanding: u64 = windows
                .iter()
                .zip(&next)
                .map(|(w, next)| next - w.oldest)
                .sum();
            assert!(outstanding <= 7, "{outstanding} outstanding");
            // Deliver one copy of a pseudo-random publish still in flight.
            if !in_flight.is_empty() {
                let i = (step * 7919) as usize % in_flight.len();
                let (id, seq, left) = &mut in_flight[i];
                s.delivered(*id, *seq);
                *left -= 1;
                if *left == 0 {
                    in_flight.swap_remove(i);
                }
            }
        }
        let t = s.tally();
        assert!(t.max_outstanding <= 7 && t.max_outstanding > 0);
        assert!(t.completed > 0 && t.timed_out > 0, "{t:?}");
    }
}
