//! Scale-out: topics that span several uringcast nodes through a message broker (Redis
//! pub/sub, Redis Cluster sharded pub/sub, NATS core subjects).
//!
//! The broker link is one more outside publisher. It runs on a thread of its own (a
//! single-threaded tokio runtime: both broker clients are async) and meets the workers only
//! through bounded queues:
//!
//! - **Out:** every publish a node makes (WebSocket, HTTP, handle, handler) is delivered to the
//!   node's own subscribers at once, as without a broker, and a reference to its encoded frame
//!   goes into the link's bounded queue (`Link`). The link wraps it in a versioned envelope
//!   (`wire.rs`) with the node's id and a per-topic sequence number and publishes it.
//! - **In:** the link subscribes to a topic's channel when the topic gets its first subscriber
//!   on this node and unsubscribes after its last, so a node receives only the topics it
//!   serves. A message from the broker is decoded, dropped if this node published it, checked
//!   against its publisher's sequence (gaps are counted), encoded once and posted to every
//!   worker's mailbox like any outside publish.
//! - **Faults:** a lost connection is re-made with capped exponential backoff and jitter, and
//!   every live topic subscribed again; publishes made meanwhile are delivered locally and
//!   counted as failed. Nothing here blocks a worker.
//!
//! Each broker is a `Broker` (`redis.rs`, `nats.rs`): connect, subscribe, unsubscribe,
//! publish, and its own naming of a topic's channel. Another engine is one more
//! implementation, and the workers do not change.

mod events;
mod jetstream;
mod kafka;
mod link;
mod log;
#[cfg(test)]
mod memory;
mod nats;
mod reconnect;
mod redis;
mod stats;
mod task;
mod url;
mod wire;

use std::time::Duration;

use bytes::Bytes;

/// One message for a broker's stream: its channel, opcode and payload, and the connection
/// that must not get it back, if any.
pub(crate) type Appended = (
    String,
    crate::protocol::OpCode,
    Bytes,
    Option<crate::broadcast::Peer>,
);

pub(crate) use events::{Events, Inbound};
pub use kafka::partition_for as kafka_partition;
pub(crate) use link::{start, Link};
pub(crate) use log::BrokerLog;
pub(crate) use stats::render_metrics;
pub use stats::BrokerStats;
pub use url::{BrokerConfig, BrokerUrl, BrokerUrlError, DEFAULT_PREFIX, MAX_PREFIX_BYTES};

/// Why the broker could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker refused or could not be reached.
    #[error("broker {url}: {message}")]
    Unreachable {
        /// The broker.
        url: String,
        /// What the client said.
        message: String,
    },
    /// The link's thread or runtime could not be started.
    #[error("broker link: {0}")]
    Start(#[source] std::io::Error),
}

/// Capacity of the link's queues, each way: messages, and bytes (as the workers' mailboxes).
pub(crate) const QUEUE_CAPACITY: usize = 1 << 16;
/// Bytes the link's inbound queue holds at most.
pub(crate) const QUEUE_MAX_BYTES: usize = 64 << 20;
/// Channels subscribed (or unsubscribed) per request: a node that serves 10,000 topics
/// subscribes them all again after a reconnection in 10 round trips rather than 10,000, and
/// no single command grows past a few hundred KiB.
pub(crate) const SUBSCRIBE_BATCH: usize = 1024;
/// How long a connection attempt or a request may take before the broker counts as lost.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One broker engine, driven by the link's single task. Each method may fail with a message;
/// the link counts and retries.
#[allow(async_fn_in_trait)] // driven on one thread's runtime: no Send bound needed
pub(crate) trait Broker {
    /// The broker's name for `topic`'s channel, under `prefix`.
    fn channel(&self, topic: &str) -> String;
    /// The topic a channel of ours names (the inverse of [`channel`](Self::channel)).
    fn topic_of(&self, channel: &[u8]) -> Option<String>;
    /// Connects; what arrives from now on goes to `events`.
    async fn connect(&mut self, events: &Events) -> Result<(), String>;
    /// Subscribes to a batch of channels (at most [`SUBSCRIBE_BATCH`]) in as few round trips
    /// as the broker allows. All or nothing for the link: after an error it tries the whole
    /// batch again, which is harmless for the channels that did take.
    async fn subscribe(&mut self, channels: &[String]) -> Result<(), String>;
    /// Unsubscribes from a batch of channels, as [`subscribe`](Self::subscribe).
    async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), String>;
    /// Publishes a batch of messages, in order (pipelined where the client can); one result
    /// per message.
    async fn publish(&mut self, batch: &[(String, Bytes)]) -> Vec<Result<(), String>>;
    /// With history: publishes a batch through the broker's position source (`(channel,
    /// opcode, payload)` each), in order; one result per message. A broker without streams
    /// refuses.
    async fn append(
        &mut self,
        batch: &[(String, crate::protocol::OpCode, Bytes)],
    ) -> Vec<Result<(), String>> {
        vec![Err("this broker keeps no streams".into()); batch.len()]
    }
    /// [`append`](Self::append), each message with the connection that must not get it back
    /// (Pusher's `socket_id`), carried through the stream where the broker can. The default
    /// drops that connection: a broker whose stream cannot carry it says so in
    /// docs/BROKERS.md.
    async fn append_except(&mut self, batch: &[Appended]) -> Vec<Result<(), String>> {
        let plain: Vec<(String, crate::protocol::OpCode, Bytes)> = batch
            .iter()
            .map(|(channel, opcode, payload, _)| (channel.clone(), *opcode, payload.clone()))
            .collect();
        self.append(&plain).await
    }
    /// With history: the envelopes of `topic`'s stream after offset `after`, up to `up_to`.
    async fn range(&mut self, topic: &str, after: u64, up_to: u64) -> Result<Vec<Bytes>, String> {
        let _ = (topic, after, up_to);
        Err("this broker keeps no streams".into())
    }
    /// With history: `topic`'s stream head (`None` if it has none) and its last `count`
    /// envelopes, oldest first.
    async fn tail(
        &mut self,
        topic: &str,
        count: usize,
    ) -> Result<(Option<crate::broadcast::Position>, Vec<Bytes>), String> {
        let _ = (topic, count);
        Err("this broker keeps no streams".into())
    }
    /// With history: the stream heads of `topics` (at most [`SUBSCRIBE_BATCH`]), in as few
    /// round trips as the broker allows; `None` for a topic without a stream.
    async fn heads(
        &mut self,
        topics: &[std::sync::Arc<str>],
    ) -> Result<Vec<Option<crate::broadcast::Position>>, String> {
        let _ = topics;
        Err("this broker keeps no streams".into())
    }
    /// Whether the connection is up (a client that reconnects by itself may be between tries).
    fn is_connected(&self) -> bool;
    /// Drops the connection (after unsubscribing, at shutdown).
    async fn close(&mut self);
}

/// The capped exponential backoff, with jitter, before reconnection attempt `attempt` (from
/// 0): 100 ms doubling up to 5 s, each delay drawn uniformly from its upper half so that
/// nodes that lost the broker together do not come back in step.
pub(crate) fn backoff(attempt: u32, random: u64) -> Duration {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);
    let full = FIRST.saturating_mul(1 << attempt.min(16)).min(CAP);
    let half = full / 2;
    let jitter = u32::try_from(random % 1024).unwrap_or(0);
    half + half.mul_f64(f64::from(jitter) / 1023.0)
}

/// A random 64-bit value from the system's generator.
pub(crate) fn random_u64() -> u64 {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    // A failing system generator leaves zeroes: ids then collide only across such nodes.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        let ms = |attempt, random| backoff(attempt, random).as_millis();
        assert_eq!((ms(0, 0), ms(0, 1023)), (50, 100));
        assert_eq!((ms(3, 0), ms(3, 1023)), (400, 800));
        assert_eq!((ms(10, 0), ms(10, 1023)), (2500, 5000));
        assert_eq!(ms(40, 1023), 5000, "no overflow past the cap");
    }
}
