//! What a broker client reports to the link: messages and the loss of its connection,
//! through a bounded queue that never blocks the client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::{BrokerStats, QUEUE_CAPACITY, QUEUE_MAX_BYTES};

/// A message from the broker: its channel and its bytes.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub(crate) channel: Bytes,
    pub(crate) payload: Bytes,
}

/// Where a broker client reports what arrives, from whatever task or callback of its own; it
/// never blocks, so a client's reader is never held up by the workers.
#[derive(Clone, Debug)]
pub(crate) struct Events {
    tx: tokio::sync::mpsc::Sender<Inbound>,
    queued_bytes: Arc<AtomicUsize>,
    lost: Arc<tokio::sync::Notify>,
    stats: Arc<BrokerStats>,
}

impl Events {
    pub(crate) fn new(
        stats: Arc<BrokerStats>,
    ) -> (Self, tokio::sync::mpsc::Receiver<Inbound>, Arc<AtomicUsize>) {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_CAPACITY);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let events = Self {
            tx,
            queued_bytes: Arc::clone(&queued_bytes),
            lost: Arc::new(tokio::sync::Notify::new()),
            stats,
        };
        (events, rx, queued_bytes)
    }

    /// A message arrived; dropped and counted if the link is that far behind.
    pub(crate) fn message(&self, channel: Bytes, payload: Bytes) {
        let len = payload.len();
        if self.queued_bytes.fetch_add(len, Ordering::AcqRel) + len > QUEUE_MAX_BYTES {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            BrokerStats::add(&self.stats.receive_drops, 1);
            return;
        }
        if self.tx.try_send(Inbound { channel, payload }).is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            BrokerStats::add(&self.stats.receive_drops, 1);
        }
    }

    /// The client's connection is up or down (for clients that reconnect by themselves); a
    /// return after a loss counts as a reconnection.
    pub(crate) fn connected(&self, up: bool) {
        let was = self.stats.connected.swap(up, Ordering::Relaxed);
        if up && !was {
            BrokerStats::add(&self.stats.reconnects, 1);
        }
    }

    /// The connection is gone and the client will not re-make it: the link will.
    pub(crate) fn lost(&self) {
        self.lost.notify_one();
    }

    pub(crate) fn lost_signal(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.lost)
    }
}
