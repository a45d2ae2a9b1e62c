//! Scale-out: topics that span several uringcast nodes through a message broker (Redis
//! pub/sub, Redis Cluster sharded pub/sub, NATS core subjects).
//!
//! The broker link is one more outside publisher. It runs on a thread of its own (a
//! single-threaded tokio runtime: both broker clients are async) and meets the workers only
//! through bounded queues:
//!
//! - **Out:** every publish a node makes (WebSocket, HTTP, handle, handler) is delivered to the
//!   node's own subscribers at once, as without a broker, and a reference to its encoded frame
//!   goes into the link's bounded queue ([`Link`]). The link wraps it in a versioned envelope
//!   ([`wire`]) with the node's id and a per-topic sequence number and publishes it.
//! - **In:** the link subscribes to a topic's channel when the topic gets its first subscriber
//!   on this node and unsubscribes after its last, so a node receives only the topics it
//!   serves. A message from the broker is decoded, dropped if this node published it, checked
//!   against its publisher's sequence (gaps are counted), encoded once and posted to every
//!   worker's mailbox like any outside publish.
//! - **Faults:** a lost connection is re-made with capped exponential backoff and jitter, and
//!   every live topic subscribed again; publishes made meanwhile are delivered locally and
//!   counted as failed. Nothing here blocks a worker.
//!
//! Each broker is a [`Broker`] (`redis.rs`, `nats.rs`): connect, subscribe, unsubscribe,
//! publish, and its own naming of a topic's channel. Another engine is one more
//! implementation, and the workers do not change.

mod link;
#[cfg(test)]
mod memory;
mod nats;
mod redis;
mod wire;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub(crate) use link::{start, Link};

/// The default `--broker-prefix`.
pub const DEFAULT_PREFIX: &str = "uringcast";
/// The longest `--broker-prefix`.
pub const MAX_PREFIX_BYTES: usize = 64;

/// Where the broker is, from `--broker URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerUrl {
    /// `redis://HOST:PORT[/DB]`: standalone Redis, `PUBLISH`/`SUBSCRIBE`.
    Redis(String),
    /// `redis+cluster://HOST:PORT[,HOST:PORT...]`: Redis Cluster (7 or later), sharded pub/sub
    /// (`SPUBLISH`/`SSUBSCRIBE`); the nodes given are seeds, the rest are discovered.
    RedisCluster(Vec<String>),
    /// `nats://HOST:PORT[,HOST:PORT...]`: NATS core subjects.
    Nats(Vec<String>),
}

/// A `--broker` URL that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--broker {url:?}: {why}")]
pub struct BrokerUrlError {
    url: String,
    why: &'static str,
}

impl FromStr for BrokerUrl {
    type Err = BrokerUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let error = |why| BrokerUrlError {
            url: redact_url(url),
            why,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| error("expected redis://, redis+cluster:// or nats://"))?;
        let hosts = |rest: &str| -> Result<Vec<String>, BrokerUrlError> {
            let hosts: Vec<String> = rest.split(',').map(str::to_owned).collect();
            if hosts.iter().any(|h| h.is_empty() || h.contains('/')) {
                return Err(error("expected HOST:PORT[,HOST:PORT...]"));
            }
            Ok(hosts)
        };
        match scheme {
            "redis" => {
                let host = rest.split('/').next().unwrap_or_default();
                if host.is_empty() || rest.contains(',') {
                    return Err(error("expected redis://HOST:PORT[/DB]"));
                }
                Ok(Self::Redis(url.to_owned()))
            }
            "redis+cluster" => Ok(Self::RedisCluster(hosts(rest)?)),
            "nats" => Ok(Self::Nats(hosts(rest)?)),
            _ => Err(error("expected redis://, redis+cluster:// or nats://")),
        }
    }
}

/// The URL without its credentials (`user:password@` becomes `***@`): what logs, errors and
/// metrics show.
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match self {
            Self::Redis(url) => url.clone(),
            Self::RedisCluster(hosts) => format!("redis+cluster://{}", hosts.join(",")),
            Self::Nats(hosts) => format!("nats://{}", hosts.join(",")),
        };
        f.write_str(&redact_url(&url))
    }
}

/// A URL as given, each host's credentials redacted.
fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let hosts: Vec<String> = rest.split(',').map(redact).collect();
            format!("{scheme}://{}", hosts.join(","))
        }
        None => redact(url),
    }
}

/// `user:password@host...` as `***@host...`.
fn redact(authority: &str) -> String {
    let host_end = authority.find('/').unwrap_or(authority.len());
    match authority[..host_end].rfind('@') {
        Some(at) => format!("***{}", &authority[at..]),
        None => authority.to_owned(),
    }
}

/// The broker settings of a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    pub(crate) url: BrokerUrl,
    /// The first part of every channel name.
    pub(crate) prefix: String,
    /// Start without the broker (local delivery only, with a warning) if it cannot be reached.
    pub(crate) optional: bool,
}

impl BrokerConfig {
    /// A broker at `url`, with the default prefix, required at start.
    pub fn new(url: BrokerUrl) -> Self {
        Self {
            url,
            prefix: DEFAULT_PREFIX.to_owned(),
            optional: false,
        }
    }

    /// Whether `prefix` can start every broker's channel names: 1 to [`MAX_PREFIX_BYTES`] of
    /// ASCII letters, digits, `_` and `-` (no NATS token separator or wildcard, no space).
    pub fn valid_prefix(prefix: &str) -> bool {
        (1..=MAX_PREFIX_BYTES).contains(&prefix.len())
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }
}

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

/// What the link counts, readable from any thread (`/metrics`).
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Whether the link is connected to the broker now.
    pub connected: AtomicBool,
    /// Publishes handed to the broker.
    pub published: AtomicU64,
    /// Publishes that could not reach the broker: it was unreachable, or refused them.
    pub publish_failures: AtomicU64,
    /// Publishes dropped because the link's outbound queue was full.
    pub publish_drops: AtomicU64,
    /// Messages received from the broker and handed to the workers.
    pub received: AtomicU64,
    /// Messages received that this node had published itself (not delivered twice).
    pub own_skipped: AtomicU64,
    /// Messages another node published that never arrived, from gaps in its sequence numbers.
    pub gaps: AtomicU64,
    /// Messages received twice (by sequence number), delivered once.
    pub repeats: AtomicU64,
    /// Messages received that could not be read, or were over `--max-message-bytes`.
    pub malformed: AtomicU64,
    /// Messages received but dropped because the link's inbound queue was full.
    pub receive_drops: AtomicU64,
    /// Connections re-made after a loss.
    pub reconnects: AtomicU64,
    /// Topics this node is subscribed to at the broker.
    pub subscribed_topics: AtomicU64,
}

impl BrokerStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Appends the link's counters to `/metrics`.
pub(crate) fn render_metrics(stats: &BrokerStats, url: &BrokerUrl, out: &mut String) {
    use std::fmt::Write as _;
    let kind = match url {
        BrokerUrl::Redis(_) => "redis",
        BrokerUrl::RedisCluster(_) => "redis-cluster",
        BrokerUrl::Nats(_) => "nats",
    };
    let connected = u64::from(stats.connected.load(Ordering::Relaxed));
    let families: [(&str, &str, &str, u64); 12] = [
        ("broker_connected", "1 while the broker link is connected.", "gauge", connected),
        ("broker_subscribed_topics", "Topics this node is subscribed to at the broker.", "gauge", load(&stats.subscribed_topics)),
        ("broker_published_total", "Publishes handed to the broker.", "counter", load(&stats.published)),
        ("broker_publish_failures_total", "Publishes that could not reach the broker (it was unreachable or refused them); delivered on this node only.", "counter", load(&stats.publish_failures)),
        ("broker_publish_drops_total", "Publishes dropped because the link's outbound queue was full; delivered on this node only.", "counter", load(&stats.publish_drops)),
        ("broker_received_total", "Messages from the broker handed to this node's workers.", "counter", load(&stats.received)),
        ("broker_own_skipped_total", "Messages from the broker that this node published (delivered here already).", "counter", load(&stats.own_skipped)),
        ("broker_gaps_total", "Messages of other nodes that never arrived, from gaps in their sequence numbers.", "counter", load(&stats.gaps)),
        ("broker_repeats_total", "Messages from the broker seen before, not delivered again.", "counter", load(&stats.repeats)),
        ("broker_malformed_total", "Messages from the broker that could not be read or were over --max-message-bytes.", "counter", load(&stats.malformed)),
        ("broker_receive_drops_total", "Messages from the broker dropped because the link's inbound queue was full.", "counter", load(&stats.receive_drops)),
        ("broker_reconnects_total", "Connections to the broker re-made after a loss.", "counter", load(&stats.reconnects)),
    ];
    for (name, help, type_, value) in families {
        let _ = writeln!(out, "# HELP uringcast_{name} {help}");
        let _ = writeln!(out, "# TYPE uringcast_{name} {type_}");
        let _ = writeln!(out, "uringcast_{name}{{broker=\"{kind}\"}} {value}");
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Capacity of the link's queues, each way: messages, and bytes (as the workers' mailboxes).
pub(crate) const QUEUE_CAPACITY: usize = 1 << 16;
/// Bytes the link's inbound queue holds at most.
pub(crate) const QUEUE_MAX_BYTES: usize = 64 << 20;
/// How long a connection attempt or a request may take before the broker counts as lost.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Subscribes to one channel.
    async fn subscribe(&mut self, channel: &str) -> Result<(), String>;
    /// Unsubscribes from one channel.
    async fn unsubscribe(&mut self, channel: &str) -> Result<(), String>;
    /// Publishes a batch of messages, in order (pipelined where the client can); one result
    /// per message.
    async fn publish(&mut self, batch: &[(String, Bytes)]) -> Vec<Result<(), String>>;
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
    fn urls_pick_the_broker() {
        assert_eq!(
            "redis://127.0.0.1:6379/2".parse(),
            Ok(BrokerUrl::Redis("redis://127.0.0.1:6379/2".into()))
        );
        assert_eq!(
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001".parse(),
            Ok(BrokerUrl::RedisCluster(vec![
                "127.0.0.1:7000".into(),
                "127.0.0.1:7001".into()
            ]))
        );
        assert_eq!(
            "nats://127.0.0.1:4222".parse(),
            Ok(BrokerUrl::Nats(vec!["127.0.0.1:4222".into()]))
        );
        for bad in [
            "127.0.0.1:6379",
            "kafka://h:1",
            "redis://",
            "redis://a:1,b:2",
            "nats://a:1,,b:2",
            "redis+cluster://a:1/0",
        ] {
            assert!(bad.parse::<BrokerUrl>().is_err(), "{bad}");
        }
        let url: BrokerUrl = "nats://a:1,b:2".parse().unwrap();
        assert_eq!(url.to_string(), "nats://a:1,b:2");
        let secret: BrokerUrl = "redis://:hunter2@h:6379/0".parse().unwrap();
        assert_eq!(secret.to_string(), "redis://***@h:6379/0");
        let secret: BrokerUrl = "nats://u:hunter2@a:1,b:2".parse().unwrap();
        assert_eq!(secret.to_string(), "nats://***@a:1,b:2");
    }

    #[test]
    fn prefixes_are_safe_in_every_brokers_names() {
        assert!(BrokerConfig::valid_prefix("uringcast"));
        assert!(BrokerConfig::valid_prefix("app_1-prod"));
        for bad in ["", "a.b", "a b", "a*", "a>", "a:b", &"x".repeat(65)] {
            assert!(!BrokerConfig::valid_prefix(bad), "{bad:?}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        let ms = |attempt, random| backoff(attempt, random).as_millis();
        assert_eq!((ms(0, 0), ms(0, 1023)), (50, 100));
        assert_eq!((ms(3, 0), ms(3, 1023)), (400, 800));
        assert_eq!((ms(10, 0), ms(10, 1023)), (2500, 5000));
        assert_eq!(ms(40, 1023), 5000, "no overflow past the cap");
    }
}
