//! Reconnecting: a connection lost (closed by the server, reset, refused, timed out) opens
//! again in its slot after an exponential backoff with jitter (`--reconnect`), bounded in
//! attempts and in time since the loss; and a workload may ask for a connection to be closed
//! and opened again, at once or at a time it names (`sse --reconnect-after`, and
//! `--reconnect-window`'s storm).
//!
//! A slot that opens again is a reconnect, not another connection: `established` counts each
//! slot once. A lost connection that is being reconnected is not counted as dropped or failed;
//! one given up on is, as without `--reconnect`.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use super::conn::Conn;
use super::net::Net;
use super::Workload;
use crate::uring::Ops;

/// The first backoff: 100 ms, doubled on each failed attempt.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The longest backoff.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Attempts per loss before giving up.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// Seconds from a loss after which no new attempt starts.
pub const DEFAULT_GIVE_UP_SECS: f64 = 60.0;

/// A slot that waits for a busy slot to free, looks again this much later.
const BUSY_RETRY: Duration = Duration::from_millis(5);

/// `--reconnect`'s bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The first backoff, doubled on each failed attempt.
    pub base: Duration,
    /// The longest backoff.
    pub cap: Duration,
    /// Attempts per loss.
    pub max_attempts: u32,
    /// No attempt starts later than this after the loss.
    pub give_up_after: Duration,
}

impl Policy {
    /// The wait before attempt `attempt` (0 for the first after a loss): `base * 2^attempt`
    /// capped, of which a random half ("equal jitter"), so that connections lost together do
    /// not come back together.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.cap);
        full / 2 + full.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }
}

/// A slot's pending reopen.
#[derive(Clone, Copy, Debug)]
pub(super) struct Reopen {
    /// The workload asked for it: not a loss.
    pub(super) asked: bool,
}

/// What reconnecting did, summed over threads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReconnectTally {
    /// Whether `--reconnect` was on.
    pub enabled: bool,
    /// Losses after which a reconnect was tried.
    pub lost: u64,
    /// Connections closed on the workload's request and opened again.
    pub asked: u64,
    /// Slots that came back up (after a loss or a request).
    pub reconnected: u64,
    /// Attempts started.
    pub attempts: u64,
    /// Attempts that failed (and were tried again, or given up).
    pub failed_attempts: u64,
    /// Slots given up on: out of attempts or time.
    pub gave_up: u64,
    /// Handshakes completed in each second since the first connection (first and reconnects).
    pub per_second: Vec<u64>,
    /// The first loss, seconds since the threads started.
    pub first_loss_s: Option<f64>,
    /// The last connection back after a loss, seconds since the threads started.
    pub last_back_s: Option<f64>,
}

impl ReconnectTally {
    /// Adds another thread's.
    pub fn merge(&mut self, other: &Self) {
        self.enabled |= other.enabled;
        self.lost += other.lost;
        self.asked += other.asked;
        self.reconnected += other.reconnected;
        self.attempts += other.attempts;
        self.failed_attempts += other.failed_attempts;
        self.gave_up += other.gave_up;
        if self.per_second.len() < other.per_second.len() {
            self.per_second.resize(other.per_second.len(), 0);
        }
        for (mine, theirs) in self.per_second.iter_mut().zip(&other.per_second) {
            *mine += theirs;
        }
        self.first_loss_s = match (self.first_loss_s, other.first_loss_s) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_back_s = match (self.last_back_s, other.last_back_s) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Seconds from the first loss to the last connection back (`None` without both).
    pub fn back_after_s(&self) -> Option<f64> {
        let (first, last) = (self.first_loss_s?, self.last_back_s?);
        Some((last - first).max(0.0))
    }

    /// The most handshakes completed in one second.
    pub fn peak_per_second(&self) -> u64 {
        self.per_second.iter().copied().max().unwrap_or(0)
    }

    /// The most handshakes completed in one second from the first loss on: the reconnect's
    /// own peak, without the first connections' ramp before it (`None` before any loss).
    pub fn peak_per_second_since_loss(&self) -> Option<u64> {
        let from = self.first_loss_s? as usize;
        Some(
            self.per_second
                .get(from..)
                .and_then(|after| after.iter().copied().max())
                .unwrap_or(0),
        )
    }
}

impl Net {
    /// A connection came up (its upgrade verified, or its stream's head): counted once per
    /// slot as established, again as a reconnect.
    pub(super) fn opened<W: Workload>(&mut self, work: &mut W, index: usize) {
        self.open += 1;
        let second = self.epoch.elapsed().as_secs() as usize;
        let per_second = &mut self.reconnect_tally.per_second;
        if per_second.len() <= second {
            per_second.resize(second + 1, 0);
        }
        per_second[second] += 1;
        let slot = &mut self.slots[index];
        slot.attempt = 0;
        slot.lost_at = None;
        let lost = slot.reopen_after_loss;
        slot.reopen_after_loss = false;
        if std::mem::replace(&mut slot.was_open, true) {
            self.reconnect_tally.reconnected += 1;
            if lost {
                let at = self.epoch.elapsed().as_secs_f64();
                let last = self.reconnect_tally.last_back_s.get_or_insert(at);
                *last = last.max(at);
            }
            work.reopened(index);
        } else {
            self.established += 1;
        }
    }

    /// Whether the slot's connection, being torn down, should open again; if so, schedules it
    /// and returns true (the loss is then not counted as a drop or a failure).
    pub(super) fn reconnect_after_loss(&mut self, index: usize) -> bool {
        if self.stopping {
            return false;
        }
        let Some(policy) = self.reconnect else {
            return false;
        };
        let now = Instant::now();
        let slot = &mut self.slots[index];
        if slot.reopen.is_some() {
            return true;
        }
        let lost = match &slot.conn {
            Conn::Connecting(_) => true,
            Conn::Open(o) => o.closing.is_none() || o.server_closed,
            Conn::Free | Conn::Closing => false,
        };
        if !lost {
            return false;
        }
        let since = slot.lost_at.unwrap_or(now);
        if slot.attempt >= policy.max_attempts || now >= since + policy.give_up_after {
            if slot.attempt > 0 {
                self.reconnect_tally.failed_attempts += 1;
            }
            self.reconnect_tally.gave_up += 1;
            slot.lost_at = None;
            slot.attempt = 0;
            return false;
        }
        if slot.attempt == 0 {
            self.reconnect_tally.lost += 1;
            let at = now.saturating_duration_since(self.epoch).as_secs_f64();
            let first = self.reconnect_tally.first_loss_s.get_or_insert(at);
            *first = first.min(at);
        } else {
            self.reconnect_tally.failed_attempts += 1;
        }
        slot.lost_at = Some(since);
        slot.reopen_after_loss = true;
        let at = now + policy.backoff(slot.attempt, rand::random());
        slot.attempt += 1;
        slot.reopen = Some(Reopen { asked: false });
        self.waiting_reopen += 1;
        self.reopens.push(Reverse((at, index as u32)));
        true
    }

    /// The workload asked for `index` to close now and open again at `at`.
    pub(super) fn reconnect_asked(&mut self, ops: &mut Ops, index: usize, at: Instant) {
        let slot = &mut self.slots[index];
        if self.stopping || slot.reopen.is_some() {
            return;
        }
        if !matches!(&slot.conn, Conn::Open(o) if o.closing.is_none()) {
            return;
        }
        let now = Instant::now();
        // Until it is back: an attempt that fails is the loss of an open connection.
        slot.lost_at = Some(now);
        slot.reopen = Some(Reopen { asked: true });
        self.waiting_reopen += 1;
        self.reconnect_tally.asked += 1;
        self.reopens.push(Reverse((at.max(now), index as u32)));
        self.teardown(ops, index);
    }

    /// Opens the slots whose time has come and that are free.
    pub(super) fn reopen_due(&mut self, ops: &mut Ops, now: Instant) {
        let asked = std::mem::take(&mut self.reconnect_requests);
        let now_ns = crate::scenario::stamp::now_ns();
        for &(index, at_ns) in &asked {
            let at = at_ns.map_or(now, |at| {
                now + Duration::from_nanos(at.saturating_sub(now_ns))
            });
            self.reconnect_asked(ops, index as usize, at);
        }
        self.reconnect_requests = asked;
        self.reconnect_requests.clear();
        while let Some(Reverse((at, index))) = self.reopens.peek().copied() {
            if at > now {
                break;
            }
            self.reopens.pop();
            let i = index as usize;
            let slot = &mut self.slots[i];
            if slot.reopen.is_none() {
                continue;
            }
            if self.stopping {
                slot.reopen = None;
                self.waiting_reopen -= 1;
                continue;
            }
            if !matches!(slot.conn, Conn::Free) || slot.pending > 0 {
                self.reopens.push(Reverse((now + BUSY_RETRY, index)));
                continue;
            }
            slot.reopen = None;
            self.waiting_reopen -= 1;
            self.reconnect_tally.attempts += 1;
            self.open_one(ops, i, now);
        }
    }

    /// The closing phase began: reopens still waiting are given up (a lost connection) or
    /// dropped (one the workload asked for).
    pub(super) fn stop_reconnecting(&mut self) {
        self.stopping = true;
        for slot in &mut self.slots {
            if let Some(reopen) = slot.reopen.take() {
                self.waiting_reopen -= 1;
                if !reopen.asked {
                    self.reconnect_tally.gave_up += 1;
                }
            }
        }
        self.reopens.clear();
    }

    /// When the next reopen is due, if any.
    pub(super) fn next_reopen(&self) -> Option<Instant> {
        self.reopens.peek().map(|Reverse((at, _))| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_cap_with_jitter() {
        let policy = Policy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_attempts: 5,
            give_up_after: Duration::from_secs(10),
        };
        assert_eq!(policy.backoff(0, 0.0), Duration::from_millis(50));
        assert_eq!(policy.backoff(0, 1.0), Duration::from_millis(100));
        assert_eq!(policy.backoff(2, 0.0), Duration::from_millis(200));
        assert_eq!(policy.backoff(3, 1.0), Duration::from_millis(800));
        // Capped: 1.6 s becomes 1 s, of which a random half.
        assert_eq!(policy.backoff(4, 0.0), Duration::from_millis(500));
        assert_eq!(policy.backoff(40, 1.0), Duration::from_secs(1));
    }

    #[test]
    fn tallies_merge_their_seconds() {
        let mut a = ReconnectTally {
            reconnected: 2,
            per_second: vec![3, 1],
            ..ReconnectTally::default()
        };
        let b = ReconnectTally {
            reconnected: 1,
            gave_up: 1,
            per_second: vec![1, 4, 2],
            ..ReconnectTally::default()
        };
        a.merge(&b);
        assert_eq!((a.reconnected, a.gave_up), (3, 1));
        assert_eq!(a.per_second, [4, 5, 2]);
        assert_eq!(a.peak_per_second(), 5);
    }

    #[test]
    fn the_reconnect_peak_leaves_out_the_ramp_before_the_first_loss() {
        let mut tally = ReconnectTally {
            per_second: vec![900, 1000, 0, 0, 40, 700, 300],
            ..ReconnectTally::default()
        };
        assert_eq!(tally.peak_per_second_since_loss(), None, "nothing lost yet");
        assert_eq!(tally.peak_per_second(), 1000, "the ramp's peak");
        tally.first_loss_s = Some(2.7);
        assert_eq!(tally.peak_per_second_since_loss(), Some(700));
        // Lost in the last second counted: nothing came back yet.
        tally.first_loss_s = Some(9.0);
        assert_eq!(tally.peak_per_second_since_loss(), Some(0));
    }
}
