//! The cross-core hand-off: each worker's bounded mailbox of publishes from other workers,
//! and the wake that tells it to drain.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;

use super::history::Log;
use super::publication::Publication;
use super::uplink::Uplink;
use super::{BroadcastStats, Peer};
use crate::protocol::OpCode;

/// Publishes waiting in one worker's mailbox, at most: past it a publish to that worker is
/// dropped and counted rather than queued without bound.
pub const MAILBOX_CAPACITY: usize = 1 << 16;
/// Bytes of frames waiting in one worker's mailbox, at most: 65,536 publishes of 16 MiB
/// would otherwise pin a terabyte. 64 MiB holds 65,536 frames of 1 KiB, or four of the
/// largest default message.
pub const MAILBOX_MAX_BYTES: usize = 64 << 20;

/// A random node tag in 1..=10^12, so that `tag * 1024 + worker` fits a u64 with room.
fn random_node_tag() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        // No system randomness: the time still tells two servers apart.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos as u64).to_le_bytes();
    }
    u64::from_le_bytes(bytes) % 1_000_000_000_000 + 1
}

/// One publish crossing to a worker: the publication, shared by every worker.
pub(crate) type Mail = Arc<Publication>;

/// What the workers of one server share for broadcasting: a bounded mailbox and a wake per
/// worker, through which every publish reaches the workers, and what a publish passes on its
/// way (the log that gives it a position, the uplink to the broker, the per-worker counters).
#[derive(Debug)]
pub(crate) struct Mailboxes {
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
    /// The source of positions and the store of history, when history is on.
    pub(crate) log: Option<Arc<dyn Log>>,
    /// This node's random tag, in every [`Peer`](super::Peer) of its connections.
    pub(crate) node: u64,
}

impl Mailboxes {
    /// Mailboxes without history.
    #[cfg(test)]
    pub(crate) fn new(shared: Arc<crate::driver::Shared>) -> Self {
        Self::with_log(shared, None)
    }

    /// Mailboxes whose publishes get positions from `log`, when given.
    pub(crate) fn with_log(shared: Arc<crate::driver::Shared>, log: Option<Arc<dyn Log>>) -> Self {
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
            log,
            node: random_node_tag(),
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

    /// Publishes a message made on this node (by `local`, a worker, or from outside the
    /// workers): it gets its position from the log when history is on, goes to the
    /// workers' mailboxes, and to the uplink. Returns the publication and how many workers
    /// took it.
    ///
    /// Without history the publishing worker's own subscribers are left to it (it fans out
    /// at once, without a round through its mailbox). With history every worker, `local`
    /// included, gets it through its mailbox, posted while the log holds the topic's order:
    /// `local` must then drain its mailbox for its own subscribers. With a broker's log, the
    /// publish only goes to the uplink, and every worker gets it when the broker sends it
    /// back with its position.
    pub(crate) fn publish(
        &self,
        topic: &Arc<str>,
        opcode: OpCode,
        payload: Bytes,
        local: Option<usize>,
    ) -> (Arc<Publication>, usize) {
        self.publish_except(topic, opcode, payload, local, None, None)
    }

    /// [`publish`](Self::publish), skipping the subscriber `except` wherever it is: on this
    /// node's workers, or on the node the broker link brings it to; with `stamp`, the
    /// payload subscribers get is made from the position ([`Publication::stamped`]).
    pub(crate) fn publish_except(
        &self,
        topic: &Arc<str>,
        opcode: OpCode,
        payload: Bytes,
        local: Option<usize>,
        except: Option<Peer>,
        stamp: Option<super::publication::Stamp>,
    ) -> (Arc<Publication>, usize) {
        let mut posted = 0;
        let publication = match &self.log {
            Some(log) => log.append(topic, opcode, payload, stamp, &mut |p| {
                if let Some(peer) = except {
                    p.exclude(peer);
                }
                posted = self.post(p, None);
            }),
            None => {
                let publication = Publication::new(Arc::clone(topic), opcode, payload, None);
                if let Some(peer) = except {
                    publication.exclude(peer);
                }
                posted = self.post(&publication, local);
                publication
            }
        };
        // A broker's log delivers nothing here (the publication comes back from the broker):
        // the skipped subscriber rides with it to the broker.
        if let Some(peer) = except {
            publication.exclude(peer);
        }
        if let Some(uplink) = self.uplink.get() {
            uplink.publish(&publication);
        }
        (publication, posted)
    }

    /// Hands a publication to every worker but `except`; returns how many took it.
    pub(crate) fn post(&self, publication: &Arc<Publication>, except: Option<usize>) -> usize {
        let mut posted = 0;
        let len = publication.frame().len();
        for (worker, mailbox) in self.mailboxes.iter().enumerate() {
            if Some(worker) == except {
                continue;
            }
            let bytes = &self.mailbox_bytes[worker];
            let over = bytes.fetch_add(len, Ordering::AcqRel) + len > MAILBOX_MAX_BYTES;
            if over || mailbox.push(Arc::clone(publication)).is_err() {
                bytes.fetch_sub(len, Ordering::AcqRel);
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

    /// The number of workers (of mailboxes).
    pub(crate) fn workers(&self) -> usize {
        self.mailboxes.len()
    }

    /// Takes the oldest publish from `worker`'s mailbox.
    pub(crate) fn take(&self, worker: usize) -> Option<Mail> {
        let mail = self.mailboxes[worker].pop()?;
        self.mailbox_bytes[worker].fetch_sub(mail.frame().len(), Ordering::AcqRel);
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
        let hub = Mailboxes::new(shared);
        // A frame of a quarter of the bound, its header included.
        let payload = Bytes::from(vec![0u8; MAILBOX_MAX_BYTES / 4 - 10]);
        let frame = Publication::new(Arc::from("t"), OpCode::Binary, payload, None);
        assert_eq!(frame.frame().len(), MAILBOX_MAX_BYTES / 4);
        for _ in 0..4 {
            assert_eq!(hub.post(&frame, Some(0)), 1, "fits");
        }
        assert_eq!(
            hub.post(&frame, Some(0)),
            0,
            "a fifth is over the byte bound"
        );
        assert_eq!(hub.stats[1].mailbox_drops.load(Ordering::Relaxed), 1);
        assert!(hub.take(1).is_some());
        assert_eq!(hub.post(&frame, Some(0)), 1, "room again after a take");
    }
}
