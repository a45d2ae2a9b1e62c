//! The cross-core hand-off: each worker's bounded mailbox of publishes from other workers,
//! and the wake that tells it to drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;

use super::BroadcastStats;

/// Publishes waiting in one worker's mailbox, at most: past it a publish to that worker is
/// dropped and counted rather than queued without bound.
pub const MAILBOX_CAPACITY: usize = 1 << 16;

/// One publish crossing to another worker: the topic and the frame, encoded once.
#[derive(Debug)]
pub(crate) struct Mail {
    pub(crate) topic: Arc<str>,
    pub(crate) frame: Bytes,
}

/// What the workers of one server share for broadcasting.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) mailboxes: Vec<ArrayQueue<Mail>>,
    /// Set when a wake for the worker is on its way; cleared by the worker before it drains,
    /// so a burst of publishes costs one eventfd write per receiving turn, not one each.
    pub(crate) wake_pending: Vec<AtomicBool>,
    pub(crate) stats: Vec<BroadcastStats>,
    pub(crate) shared: Arc<crate::driver::Shared>,
}

impl Hub {
    pub(crate) fn new(shared: Arc<crate::driver::Shared>) -> Self {
        let workers = shared.wakers.len();
        Self {
            mailboxes: (0..workers)
                .map(|_| ArrayQueue::new(MAILBOX_CAPACITY))
                .collect(),
            wake_pending: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            stats: (0..workers).map(|_| BroadcastStats::default()).collect(),
            shared,
        }
    }

    /// Hands a frame to every worker but `except`; returns how many took it.
    pub(crate) fn post(&self, topic: &Arc<str>, frame: &Bytes, except: Option<usize>) -> usize {
        let mut posted = 0;
        for (worker, mailbox) in self.mailboxes.iter().enumerate() {
            if Some(worker) == except {
                continue;
            }
            let mail = Mail {
                topic: Arc::clone(topic),
                frame: frame.clone(),
            };
            if mailbox.push(mail).is_err() {
                self.stats[worker]
                    .mailbox_drops
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            posted += 1;
            if !self.wake_pending[worker].swap(true, Ordering::AcqRel) {
                self.shared.wake(worker);
            }
        }
        posted
    }

    /// Whether the server is shutting down or stopped.
    pub(crate) fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// Subscribers of `topic` on all workers, as last counted by each.
    pub(crate) fn subscriber_count(&self, topic: &str) -> u64 {
        self.stats.iter().map(|s| s.topic_count(topic)).sum()
    }
}
