//! The cross-core hand-off: each worker's bounded mailbox of publishes from other workers,
//! and the wake that tells it to drain.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;

use super::uplink::Uplink;
use super::{BroadcastStats, Peer};
use crate::protocol::CloseCode;

/// Publishes waiting in one worker's mailbox, at most: past it a publish to that worker is
/// dropped and counted rather than queued without bound.
pub const MAILBOX_CAPACITY: usize = 1 << 16;
/// Bytes of frames waiting in one worker's mailbox, at most: 65,536 publishes of 16 MiB
/// would otherwise pin a terabyte. 64 MiB holds 65,536 frames of 1 KiB, or four of the
/// largest default message.
pub const MAILBOX_MAX_BYTES: usize = 64 << 20;

/// One publish crossing to another worker: the topic and the frame, encoded once.
#[derive(Debug)]
pub(crate) struct Mail {
    pub(crate) topic: Arc<str>,
    pub(crate) frame: Bytes,
    /// A subscriber this publish skips (the connection that made it), if any.
    pub(crate) except: Option<Peer>,
    /// Instead of sending `frame`, close every subscriber with this code and reason.
    pub(crate) close: Option<Arc<(CloseCode, Box<str>)>>,
}

/// What the workers of one server share for broadcasting.
#[derive(Debug)]
pub(crate) struct Hub {
    mailboxes: Vec<ArrayQueue<Mail>>,
    /// Set when a wake for the worker is on its way; cleared by the worker before it drains,
    /// so a burst of publishes costs one eventfd write per receiving turn, not one each.
    pub(crate) wake_pending: Vec<AtomicBool>,
    /// Bytes of the frames in each mailbox (a frame posted to n workers counts n times).
    mailbox_bytes: Vec<AtomicUsize>,
    pub(crate) stats: Vec<BroadcastStats>,
    pub(crate) shared: Arc<crate::driver::Shared>,
    /// Where this node's publishes and topics go beyond it (the broker link), if anywhere.
    uplink: OnceLock<Arc<dyn Uplink>>,
}

impl Hub {
    pub(crate) fn new(shared: Arc<crate::driver::Shared>) -> Self {
        let workers = shared.wakers.len();
        Self {
            mailboxes: (0..workers)
                .map(|_| ArrayQueue::new(MAILBOX_CAPACITY))
                .collect(),
            wake_pending: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            mailbox_bytes: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            stats: (0..workers).map(|_| BroadcastStats::default()).collect(),
            shared,
            uplink: OnceLock::new(),
        }
    }

    /// Connects the uplink, once, before any worker starts.
    pub(crate) fn set_uplink(&self, uplink: Arc<dyn Uplink>) {
        for stats in &self.stats {
            stats.topics.set_uplink(Arc::clone(&uplink));
        }
        if self.uplink.set(uplink).is_err() {
            debug_assert!(false, "one uplink per server");
        }
    }

    /// The uplink, if one is connected.
    pub(crate) fn uplink(&self) -> Option<&Arc<dyn Uplink>> {
        self.uplink.get()
    }

    /// A publish made on this node, delivered here already: off it goes to the uplink too.
    pub(crate) fn publish_out(&self, topic: &Arc<str>, frame: &Bytes) {
        if let Some(uplink) = self.uplink.get() {
            uplink.publish(topic, frame);
        }
    }

    /// Hands a frame to every worker but `except`; returns how many took it.
    pub(crate) fn post(&self, topic: &Arc<str>, frame: &Bytes, except: Option<usize>) -> usize {
        self.post_with(topic, frame, except, None, None)
    }

    /// [`post`](Self::post), skipping the subscriber `peer` or, with `close`, closing every
    /// subscriber instead of sending.
    pub(crate) fn post_with(
        &self,
        topic: &Arc<str>,
        frame: &Bytes,
        except: Option<usize>,
        peer: Option<Peer>,
        close: Option<&Arc<(CloseCode, Box<str>)>>,
    ) -> usize {
        let mut posted = 0;
        for (worker, mailbox) in self.mailboxes.iter().enumerate() {
            if Some(worker) == except {
                continue;
            }
            let mail = Mail {
                topic: Arc::clone(topic),
                frame: frame.clone(),
                except: peer,
                close: close.cloned(),
            };
            let bytes = &self.mailbox_bytes[worker];
            let over =
                bytes.fetch_add(frame.len(), Ordering::AcqRel) + frame.len() > MAILBOX_MAX_BYTES;
            if over || mailbox.push(mail).is_err() {
                bytes.fetch_sub(frame.len(), Ordering::AcqRel);
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

    /// Takes the oldest publish from `worker`'s mailbox.
    pub(crate) fn take(&self, worker: usize) -> Option<Mail> {
        let mail = self.mailboxes[worker].pop()?;
        self.mailbox_bytes[worker].fetch_sub(mail.frame.len(), Ordering::AcqRel);
        Some(mail)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mailbox_is_bounded_in_bytes_as_well_as_in_count() {
        let shared = Arc::new(crate::driver::Shared::new(2).expect("two eventfds"));
        let hub = Hub::new(shared);
        let topic: Arc<str> = Arc::from("t");
        let frame = Bytes::from(vec![0u8; MAILBOX_MAX_BYTES / 4]);
        for _ in 0..4 {
            assert_eq!(hub.post(&topic, &frame, Some(0)), 1, "fits");
        }
        assert_eq!(
            hub.post(&topic, &frame, Some(0)),
            0,
            "a fifth is over the byte bound"
        );
        assert_eq!(hub.stats[1].mailbox_drops.load(Ordering::Relaxed), 1);
        assert!(hub.take(1).is_some());
        assert_eq!(
            hub.post(&topic, &frame, Some(0)),
            1,
            "room again after a take"
        );
    }
}
