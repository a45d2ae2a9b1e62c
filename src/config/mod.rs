//! Server settings: [`ServerBuilder`] validates them once into a [`Config`] that nothing
//! re-checks. Every default is a `DEFAULT_*` constant here, shared with the CLI.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Authorizer;
use crate::broker::BrokerConfig;
use crate::driver::DriverConfig;
use crate::limits::Limits;
use crate::protocol::origin::AllowedOrigins;
pub use crate::protocol::DEFAULT_MAX_MESSAGE_BYTES;
use crate::tls::{TlsAcceptor, TlsConfigError};

mod builder;
pub use builder::ServerBuilder;

/// Loopback only by default: exposing a server is a decision, not an accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9001";
/// 1 MiB of queued frames per connection: room for bursts, while 10,000 stalled receivers
/// still cost at most 10 GiB only if each was sent that much (a queue holds what it was sent).
pub const DEFAULT_MAX_BACKLOG_BYTES: usize = 1 << 20;
/// Ten seconds to finish an upgrade: generous for real clients over slow links, short enough
/// that half-open handshakes cannot pile up.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Ping connections idle for 30 s: below the idle timeouts of common proxies and NATs.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Five seconds for peers to answer our close at shutdown before the connection is dropped.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// 2 KiB receive buffers: larger than most messages of chat-like traffic, and bundles let one
/// receive fill several of them when more arrives.
pub const DEFAULT_RECV_BUFFER_BYTES: usize = 2048;
/// 256 receive buffers per worker (512 KiB), shared by all its connections. The kernel cycles
/// through every buffer of the ring, so all of it becomes resident: a fixed cost per worker.
/// Buffers go back to the ring as soon as the protocol has read them, so 256 cover 256
/// receives per loop turn; past that a receive waits a turn (counted as starvation).
pub const DEFAULT_RECV_BUFFERS: u16 = 256;
/// The fewest receive buffers a worker gets when there are more workers than CPUs.
pub const MIN_AUTO_RECV_BUFFERS: u16 = 32;

/// Receive buffers per worker when `--recv-buffers` is not given: [`DEFAULT_RECV_BUFFERS`]
/// while workers are no more than CPUs. Past that (a million connections take 53 workers on
/// two CPUs, one per 19,000-slot descriptor table) the workers share the CPUs, and so the
/// receives a turn can take: the CPUs' pools are split between them, rounded down to a
/// power of two and at least [`MIN_AUTO_RECV_BUFFERS`]. A worker's whole pool becomes
/// resident, so 53 pools of 256 would be 27 MiB, where 53 of 32 are 3.4 MiB.
pub fn auto_recv_buffers(workers: usize, cpus: usize) -> u16 {
    let most = usize::from(DEFAULT_RECV_BUFFERS);
    let share =
        (most * cpus.max(1) / workers.max(1)).clamp(usize::from(MIN_AUTO_RECV_BUFFERS), most);
    let power = 1usize << (usize::BITS - 1 - share.leading_zeros());
    u16::try_from(power).unwrap_or(DEFAULT_RECV_BUFFERS)
}

/// Submission queue entries per ring; the completion queue is sized at 4x this.
pub const DEFAULT_RING_ENTRIES: u32 = 4096;
/// 256 MiB per worker of unfinished messages and request bodies, summed over its connections:
/// sixteen messages of the default 16 MiB limit in flight at once, or 250,000 connections each
/// half-way through a 1 KiB message, while a flood of giant unfinished frames costs at most
/// workers x 256 MiB (512 MiB on a 2-core machine) instead of connections x 16 MiB.
pub const DEFAULT_MAX_PENDING_BYTES: u64 = 256 << 20;

pub use crate::protocol::deflate::DEFAULT_MIN_BYTES as DEFAULT_DEFLATE_MIN_BYTES;

/// 256 bytes of topic name: room for `tenant/channel/subchannel` paths, while a topic table
/// of 100,000 names stays under 26 MB of names.
pub const DEFAULT_MAX_TOPIC_BYTES: usize = 256;
/// 256 topics per connection: more than a dashboard or chat client subscribes to, and the
/// bound that keeps a connection's subscription lookup (a scan) short.
pub const DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 256;
/// 100,000 topics per worker: one per connection of a large per-user feed, yet a bound on
/// the names and lists a flood of distinct subscriptions can make a worker hold.
pub const DEFAULT_MAX_TOPICS_PER_WORKER: usize = 100_000;

/// No history unless asked for: positions and kept publications cost memory and a lock per
/// publish, which a pure fan-out does not need.
pub const DEFAULT_HISTORY: usize = 0;
/// Five minutes of history: long enough for a phone to switch networks or a laptop to wake,
/// short enough that a stale client is told to reload rather than flooded (Centrifugo's
/// `history_ttl` examples use the same order).
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(300);
/// 64 MiB of kept publications per node: 64,000 messages of 1 KiB, or 300 of history for
/// 200 topics of 1 KiB ticks, on a machine where one worker's receive budget alone is
/// 256 MiB; past it the node's oldest publications go first, so a burst on one topic cannot
/// grow memory without bound.
pub const DEFAULT_HISTORY_MAX_BYTES: usize = 64 << 20;
/// 300 publications replayed at most per recovery, as Centrifugo's default: a client further
/// behind is told "not recovered" and reloads its state, which is cheaper than a replay flood
/// after a mass reconnect.
pub const DEFAULT_MAX_RECOVER: usize = 300;
/// Streams (topics with a position) kept per node at most: an empty one costs about 100
/// bytes, so a flood of subscriptions to distinct topics costs at most ~100 MB.
pub const DEFAULT_HISTORY_MAX_STREAMS: usize = 1 << 20;

/// History and recovery settings, when history is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HistoryConfig {
    pub limits: crate::broadcast::HistoryLimits,
    pub max_recover: usize,
}

/// Limits on what clients (through the handler) can make the topic table hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TopicLimits {
    pub max_topic_bytes: usize,
    pub max_subscriptions_per_connection: usize,
    pub max_topics_per_worker: usize,
}

/// What the server does with messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Send every message back to its sender with its opcode.
    Echo,
    /// The request path is the topic: each connection subscribes to it, and every message a
    /// client sends is published to it, the sender included.
    Broadcast,
}

/// What to do with a subscriber whose send queue is past `max_backlog_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Close it with 1008 (policy violation): it cannot keep up.
    #[default]
    Disconnect,
    /// Drop the messages it cannot take, and count them.
    Drop,
}

/// A validated configuration, made only by [`ServerBuilder::build`]: every value in it is in
/// range, so nothing downstream re-checks it.
#[derive(Clone, Debug)]
pub struct Config {
    /// The address every worker listens on (with `SO_REUSEPORT`).
    pub(crate) listen: SocketAddr,
    /// What to do with messages.
    pub(crate) mode: Mode,
    /// Read SIGINT and SIGTERM on the ring and shut down gracefully on them (the CLI does).
    pub(crate) handle_signals: bool,
    /// What to do with slow subscribers.
    pub(crate) slow_consumer: SlowConsumer,
    /// The bearer token that enables `POST /publish/<topic>`; `None` turns it off.
    pub(crate) publish_token: Option<String>,
    /// The `Origin`s a WebSocket upgrade may come from.
    pub(crate) allowed_origins: AllowedOrigins,
    /// Limits on the topics clients can make the broadcast engine hold.
    pub(crate) topic_limits: TopicLimits,
    /// What the io_uring workers need to know, and nothing more.
    pub(crate) driver: DriverConfig,
    /// The broker that spreads topics over several nodes, if any.
    pub(crate) broker: Option<BrokerConfig>,
    /// Positions and history (`--history N`, N > 0), if on.
    pub(crate) history: Option<HistoryConfig>,
    /// Server-Sent Events on `GET /<topic>` with `Accept: text/event-stream`.
    pub(crate) sse: bool,
    /// Who may subscribe and publish: the JWT key, the publish token, `--client-publish`.
    pub(crate) authorizer: Arc<Authorizer>,
    /// Caps per server, client address and connection, shared by the workers (a `Config`
    /// spawned twice shares them too).
    pub(crate) limits: Arc<Limits>,
}

impl Config {
    /// The certificate TLS connections use, when the listener speaks TLS.
    pub fn tls(&self) -> Option<&Arc<TlsAcceptor>> {
        self.driver.tls.as_ref()
    }
    /// The address to listen on (port 0 picks one; see `ServerHandle::local_addr`).
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }
    /// What the server does with messages.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// Worker threads.
    pub fn workers(&self) -> usize {
        self.driver.workers
    }
    /// The access policy, for any request type with a topic (WebSocket, SSE, HTTP).
    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authorizer
    }
    /// The caps per server, client address and connection, for any long-lived request type.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }
}

/// A setting outside its valid range. Each message names the setting as the CLI spells it,
/// the value given and the range allowed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A count or size outside its range.
    #[error("--{name} must be between {min} and {max} (got {value})")]
    OutOfRange {
        /// The setting, as its CLI flag.
        name: &'static str,
        /// The value given.
        value: u64,
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
    },
    /// A count that must be a power of two.
    #[error("--{name} must be a power of two (got {value})")]
    NotPowerOfTwo {
        /// The setting, as its CLI flag.
        name: &'static str,
        /// The value given.
        value: u64,
    },
    /// A duration outside its range.
    #[error("--{name} must be between {min:?} and {max:?} (got {value:?})")]
    DurationOutOfRange {
        /// The setting, as its CLI flag.
        name: &'static str,
        /// The value given.
        value: Duration,
        /// The shortest allowed.
        min: Duration,
        /// The longest allowed.
        max: Duration,
    },
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] TlsConfigError),
    /// The `--broker` URL cannot be used.
    #[error(transparent)]
    BrokerUrl(#[from] crate::broker::BrokerUrlError),
    /// The `--broker-prefix` cannot start a channel name.
    #[error("--broker-prefix must be 1 to {max} bytes of A-Z a-z 0-9 _ - (got {value:?})", max = crate::broker::MAX_PREFIX_BYTES)]
    BrokerPrefix {
        /// The prefix given.
        value: String,
    },
    /// The per-worker budget could never hold one message of the largest size.
    #[error("--max-pending-bytes ({pending}) must be at least --max-message-bytes ({message})")]
    PendingBelowMessage {
        /// `max_pending_bytes`.
        pending: u64,
        /// `max_message_bytes`.
        message: u64,
    },
    /// The JWT key cannot be used.
    #[error(transparent)]
    Jwt(#[from] crate::auth::KeyError),
    /// Two settings that cannot go together, or one that needs another.
    #[error("{0}")]
    Conflict(&'static str),
}
