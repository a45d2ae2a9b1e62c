//! Server settings: [`ServerBuilder`] validates them once into a [`Config`] that nothing
//! re-checks. Every default is a `DEFAULT_*` constant here, shared with the CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{Authorizer, ClientPublish, Verifier};
use crate::broker::{BrokerConfig, BrokerUrl};
use crate::driver::DriverConfig;
use crate::limits::{Cidr, LimitSettings, Limits};
use crate::protocol::handshake::DEFAULT_MAX_HEAD_BYTES;
use crate::protocol::origin::AllowedOrigins;
pub use crate::protocol::DEFAULT_MAX_MESSAGE_BYTES;
use crate::tls::{TlsAcceptor, TlsConfigError, TlsFiles};

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

/// Builds a [`Config`]; setters take and return `Self`.
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    config: Config,
    /// Read by `build`, which turns them into `config.driver.tls`.
    tls_files: Option<TlsFiles>,
    /// Read by `build`, which turns them into `config.broker`.
    broker_url: Option<String>,
    broker_prefix: String,
    broker_optional: bool,
    /// Read by `build`, which turns them into `config.history`.
    history: usize,
    history_ttl: Duration,
    history_max_bytes: usize,
    max_recover: usize,
    /// Read by `build`, which turns them into `config.authorizer`.
    jwt_key: Option<JwtKey>,
    client_publish: Option<ClientPublish>,
    /// Read by `build`, which turns them into `config.limits`.
    limit_settings: LimitSettings,
    /// Whether the receive buffer count was given; if not, `build` sizes it by the workers.
    recv_buffers_given: bool,
}

/// Where the key that checks tokens comes from.
#[derive(Clone)]
enum JwtKey {
    Secret(String),
    PublicKeyFile(PathBuf),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A secret is never printed, not even in a debug dump of the builder.
            Self::Secret(_) => f.write_str("Secret(..)"),
            Self::PublicKeyFile(path) => f.debug_tuple("PublicKeyFile").field(path).finish(),
        }
    }
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            config: Config {
                listen: DEFAULT_LISTEN
                    .parse()
                    .expect("DEFAULT_LISTEN is a valid address"),
                mode: Mode::Echo,
                handle_signals: false,
                slow_consumer: SlowConsumer::Disconnect,
                publish_token: None,
                allowed_origins: AllowedOrigins::any(),
                topic_limits: TopicLimits {
                    max_topic_bytes: DEFAULT_MAX_TOPIC_BYTES,
                    max_subscriptions_per_connection: DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION,
                    max_topics_per_worker: DEFAULT_MAX_TOPICS_PER_WORKER,
                },
                broker: None,
                history: None,
                sse: true,
                authorizer: Arc::new(Authorizer::open()),
                limits: Arc::new(Limits::default()),
                driver: DriverConfig {
                    workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
                    max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
                    max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
                    max_backlog_bytes: DEFAULT_MAX_BACKLOG_BYTES,
                    max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
                    handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
                    ping_interval: Some(DEFAULT_PING_INTERVAL),
                    drain_timeout: DEFAULT_DRAIN_TIMEOUT,
                    recv_buffer_bytes: DEFAULT_RECV_BUFFER_BYTES,
                    recv_buffers: DEFAULT_RECV_BUFFERS,
                    ring_entries: DEFAULT_RING_ENTRIES,
                    direct_descriptors: true,
                    tls: None,
                    deflate: false,
                    deflate_min_bytes: DEFAULT_DEFLATE_MIN_BYTES,
                    peer_addresses: false,
                },
            },
            tls_files: None,
            broker_url: None,
            broker_prefix: crate::broker::DEFAULT_PREFIX.to_owned(),
            broker_optional: false,
            history: DEFAULT_HISTORY,
            history_ttl: DEFAULT_HISTORY_TTL,
            history_max_bytes: DEFAULT_HISTORY_MAX_BYTES,
            max_recover: DEFAULT_MAX_RECOVER,
            jwt_key: None,
            client_publish: None,
            limit_settings: LimitSettings::default(),
            recv_buffers_given: false,
        }
    }
}

impl ServerBuilder {
    /// The address to listen on.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }
    /// What to do with messages.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.config.mode = mode;
        self
    }
    /// Worker threads (default: one per CPU).
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.driver.workers = workers;
        self
    }
    /// Largest message, summed across fragments (default [`DEFAULT_MAX_MESSAGE_BYTES`]).
    pub fn max_message_bytes(mut self, bytes: u64) -> Self {
        self.config.driver.max_message_bytes = bytes;
        self
    }
    /// Largest request head (default 8 KiB); larger ones get 431.
    pub fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.config.driver.max_head_bytes = bytes;
        self
    }
    /// Bytes of frames queued per connection (default [`DEFAULT_MAX_BACKLOG_BYTES`]).
    pub fn max_backlog_bytes(mut self, bytes: usize) -> Self {
        self.config.driver.max_backlog_bytes = bytes;
        self
    }
    /// Time allowed to complete the upgrade (default [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.driver.handshake_timeout = timeout;
        self
    }
    /// Idle time before a ping; `None` or zero turns pings off.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.driver.ping_interval = interval.filter(|d| !d.is_zero());
        self
    }
    /// Time allowed for peers to answer a close (default [`DEFAULT_DRAIN_TIMEOUT`]).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.driver.drain_timeout = timeout;
        self
    }
    /// Receive buffer size and count per worker (by default the count is
    /// [`auto_recv_buffers`] of the workers and CPUs).
    pub fn recv_buffers(mut self, count: u16, bytes: usize) -> Self {
        self.config.driver.recv_buffers = count;
        self.config.driver.recv_buffer_bytes = bytes;
        self.recv_buffers_given = true;
        self
    }
    /// Receive buffer size, the count left to [`auto_recv_buffers`].
    pub fn recv_buffer_bytes(mut self, bytes: usize) -> Self {
        self.config.driver.recv_buffer_bytes = bytes;
        self
    }
    /// Read SIGINT/SIGTERM on the ring and shut down gracefully (for binaries).
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.config.handle_signals = on;
        self
    }

    /// Speaks TLS (`wss://`, `https://`) on the listener with this certificate chain and key
    /// (PEM files; see [`TlsFiles`]). WebSocket, `/publish`, `/healthz` and `/metrics` all
    /// work over it; plain connections to the port fail their handshake. The files are read
    /// by [`build`](Self::build), and again by `ServerHandle::reload_tls` (or SIGHUP with
    /// [`handle_signals`](Self::handle_signals)).
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_files = Some(TlsFiles {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// Spreads topics over every node that uses the same broker: `redis://HOST:PORT[/DB]`,
    /// `redis+cluster://HOST:PORT[,HOST:PORT...]` (sharded pub/sub, Redis 7) or
    /// `nats://HOST:PORT[,...]`, or `kafka://HOST:PORT[,...]` (with [`history`](Self::history)
    /// only: a Kafka topic is used as a log). A node subscribes to a topic's channel while it has
    /// subscribers to it, and every publish it makes also goes to the broker (see
    /// `docs/BROKERS.md` for the channel names and the message format). Unreachable at start:
    /// [`spawn`](crate::server::spawn) fails, unless [`broker_optional`](Self::broker_optional).
    pub fn broker(mut self, url: impl Into<String>) -> Self {
        self.broker_url = Some(url.into());
        self
    }

    /// The first part of every channel name (default [`crate::broker::DEFAULT_PREFIX`]), so
    /// that several deployments can share one broker.
    pub fn broker_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.broker_prefix = prefix.into();
        self
    }

    /// Start even when the broker cannot be reached (default `false`): local delivery only,
    /// with a warning, while the link keeps trying in the background.
    pub fn broker_optional(mut self, on: bool) -> Self {
        self.broker_optional = on;
        self
    }

    /// Accepts permessage-deflate (RFC 7692) from clients that offer it (default off). Each
    /// worker compresses a broadcast at most once per window size in use and shares the
    /// compressed frame among its subscribers that negotiated it; no connection holds zlib
    /// state between messages (no context takeover either way). Inflated messages are bound
    /// by [`max_message_bytes`](Self::max_message_bytes).
    pub fn deflate(mut self, on: bool) -> Self {
        self.config.driver.deflate = on;
        self
    }

    /// Messages shorter than this go uncompressed (default [`DEFAULT_DEFLATE_MIN_BYTES`]);
    /// so does any message compression would not shrink.
    pub fn deflate_min_bytes(mut self, bytes: usize) -> Self {
        self.config.driver.deflate_min_bytes = bytes;
        self
    }

    /// Connections as direct descriptors (default `true`): they use no entry of the process's
    /// descriptor table, so capacity is workers × `RLIMIT_NOFILE`. With `false` they are plain
    /// descriptors, visible to `ss -p` and `/proc/PID/fd`, and capacity is one `RLIMIT_NOFILE`
    /// shared by all workers.
    pub fn direct_descriptors(mut self, on: bool) -> Self {
        self.config.driver.direct_descriptors = on;
        self
    }

    /// What to do with a subscriber past its backlog limit (default: disconnect with 1008).
    pub fn slow_consumer(mut self, policy: SlowConsumer) -> Self {
        self.config.slow_consumer = policy;
        self
    }

    /// Enables `POST /publish/<topic>` for requests carrying `Authorization: Bearer TOKEN`.
    pub fn publish_token(mut self, token: Option<String>) -> Self {
        self.config.publish_token = token.filter(|t| !t.is_empty());
        self
    }

    /// Submission queue entries per ring (default [`DEFAULT_RING_ENTRIES`], a power of two
    /// from 8 to 16384); the completion queue gets four times as many.
    pub fn ring_entries(mut self, entries: u32) -> Self {
        self.config.driver.ring_entries = entries;
        self
    }

    /// Bytes one worker may hold, summed over its connections, in unfinished messages and
    /// request bodies (default [`DEFAULT_MAX_PENDING_BYTES`]). A connection whose next bytes
    /// would pass it is closed with 1013 (or answered 503 for a request body).
    pub fn max_pending_bytes(mut self, bytes: u64) -> Self {
        self.config.driver.max_pending_bytes = bytes;
        self
    }

    /// The `Origin`s a WebSocket upgrade may come from; any other gets 403 (default: any
    /// origin, as a server behind its own authentication expects). A server whose clients
    /// are browsers carrying cookies or other ambient credentials should list its sites'
    /// origins: browsers send cookies with cross-site upgrades (RFC 6455 §10.2). Requests
    /// without an `Origin` header (non-browser clients) are always allowed.
    pub fn allowed_origins(mut self, origins: AllowedOrigins) -> Self {
        self.config.allowed_origins = origins;
        self
    }

    /// Longest topic name a subscription may use (default [`DEFAULT_MAX_TOPIC_BYTES`]).
    pub fn max_topic_bytes(mut self, bytes: usize) -> Self {
        self.config.topic_limits.max_topic_bytes = bytes;
        self
    }

    /// Topics one connection may subscribe to (default
    /// [`DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION`]).
    pub fn max_subscriptions_per_connection(mut self, count: usize) -> Self {
        self.config.topic_limits.max_subscriptions_per_connection = count;
        self
    }

    /// Topics with subscribers one worker may hold (default [`DEFAULT_MAX_TOPICS_PER_WORKER`]).
    pub fn max_topics_per_worker(mut self, count: usize) -> Self {
        self.config.topic_limits.max_topics_per_worker = count;
        self
    }

    /// Publications kept per topic for recovery (default [`DEFAULT_HISTORY`]; 0 turns
    /// positions, history and recovery off). With history on, every publish to a topic gets
    /// the next offset of the topic's stream, and a subscriber that presents its last
    /// position gets exactly what it missed, or is told it cannot (see
    /// `Connection::subscribe_from`, and the SSE `Last-Event-ID`).
    pub fn history(mut self, entries_per_topic: usize) -> Self {
        self.history = entries_per_topic;
        self
    }

    /// How long a publication is kept for recovery (default [`DEFAULT_HISTORY_TTL`]).
    pub fn history_ttl(mut self, ttl: Duration) -> Self {
        self.history_ttl = ttl;
        self
    }

    /// Bytes of publications kept on the node over all topics (default
    /// [`DEFAULT_HISTORY_MAX_BYTES`]); past it the oldest go first.
    pub fn history_max_bytes(mut self, bytes: usize) -> Self {
        self.history_max_bytes = bytes;
        self
    }

    /// Publications replayed at most by one recovery (default [`DEFAULT_MAX_RECOVER`]);
    /// further behind is "not recovered".
    pub fn max_recover(mut self, count: usize) -> Self {
        self.max_recover = count;
        self
    }

    /// Serves Server-Sent Events (default `true`): `GET /<topic>` with
    /// `Accept: text/event-stream` streams the topic, as a receive-only subscriber.
    pub fn sse(mut self, on: bool) -> Self {
        self.config.sse = on;
        self
    }

    /// Checks tokens signed with HS256 and this shared secret: every subscription then needs
    /// a JWT whose `subscribe` claim covers its topic (see [`crate::auth`]).
    pub fn jwt_secret(mut self, secret: impl Into<String>) -> Self {
        self.jwt_key = Some(JwtKey::Secret(secret.into()));
        self
    }

    /// Checks tokens signed with the private half of this PEM public key: RS256 for an RSA
    /// key, ES256 for an EC P-256 key, EdDSA for an Ed25519 key. Read by
    /// [`build`](Self::build).
    pub fn jwt_public_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.jwt_key = Some(JwtKey::PublicKeyFile(path.into()));
        self
    }

    /// Who may publish from a WebSocket connection. Default: `Token` with a JWT key, `None`
    /// with only a publish token, else `All` (see [`ClientPublish`]).
    pub fn client_publish(mut self, who: ClientPublish) -> Self {
        self.client_publish = Some(who);
        self
    }

    /// Connections (WebSocket upgrades, and later SSE streams) the server holds at once;
    /// past it, upgrades get 503 with `Retry-After` while the listener keeps answering.
    /// Default: no cap but the file tables'.
    pub fn max_connections(mut self, count: Option<usize>) -> Self {
        self.limit_settings.max_connections = count;
        self
    }

    /// Connections one client address (an IPv6 /64) holds at once, over all workers; past
    /// it, upgrades get 429 with `Retry-After`. Default: no cap.
    pub fn max_connections_per_ip(mut self, count: Option<u32>) -> Self {
        self.limit_settings.max_connections_per_ip = count;
        self
    }

    /// Upgrades one client address may start per second (a token bucket with a burst of as
    /// many); past it, 429 with `Retry-After`. Default: no cap.
    pub fn max_handshakes_per_ip(mut self, per_second: Option<u32>) -> Self {
        self.limit_settings.max_handshakes_per_ip = per_second;
        self
    }

    /// Messages one connection may send per second (a token bucket with a burst of as
    /// many); past it, the connection is closed with 1008. Default: no cap.
    pub fn max_messages_per_second(mut self, per_second: Option<u32>) -> Self {
        self.limit_settings.max_messages_per_second = per_second;
        self
    }

    /// Payload bytes one connection may send per second (a token bucket with a burst of one
    /// second's worth; a larger message passes only from a full bucket); past it, the
    /// connection is closed with 1008. Default: no cap.
    pub fn max_bytes_per_second(mut self, per_second: Option<u64>) -> Self {
        self.limit_settings.max_bytes_per_second = per_second;
        self
    }

    /// Peers whose `Forwarded` or `X-Forwarded-For` header names the client for the caps
    /// per address (default: none; every peer is its own client).
    pub fn trusted_proxies(mut self, proxies: Vec<Cidr>) -> Self {
        self.limit_settings.trusted_proxies = proxies;
        self
    }

    /// Validates every setting.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting out of range, its value and the range.
    pub fn build(mut self) -> Result<Config, ConfigError> {
        if !self.recv_buffers_given {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            self.config.driver.recv_buffers = auto_recv_buffers(self.config.driver.workers, cpus);
        }
        let d = &self.config.driver;
        let t = &self.config.topic_limits;
        let counts: [(&str, u64, u64, u64); 10] = [
            ("max-topic-bytes", t.max_topic_bytes as u64, 1, 1 << 16),
            (
                "max-subscriptions-per-connection",
                t.max_subscriptions_per_connection as u64,
                1,
                1 << 16,
            ),
            (
                "max-topics-per-worker",
                t.max_topics_per_worker as u64,
                1,
                1 << 24,
            ),
            ("workers", d.workers as u64, 1, MAX_WORKERS),
            (
                "max-message-bytes",
                d.max_message_bytes,
                1,
                u64::from(u32::MAX),
            ),
            ("max-head-bytes", d.max_head_bytes as u64, 256, 1 << 20),
            ("max-backlog-bytes", d.max_backlog_bytes as u64, 1, 1 << 40),
            ("max-pending-bytes", d.max_pending_bytes, 1, 1 << 44),
            ("recv-buffer-bytes", d.recv_buffer_bytes as u64, 64, 1 << 20),
            ("ring-entries", u64::from(d.ring_entries), 8, 16384),
        ];
        for (name, value, min, max) in counts {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::OutOfRange {
                    name,
                    value,
                    min,
                    max,
                });
            }
        }
        for (name, value) in [
            ("recv-buffers", u64::from(d.recv_buffers)),
            ("ring-entries", u64::from(d.ring_entries)),
        ] {
            if !value.is_power_of_two() {
                return Err(ConfigError::NotPowerOfTwo { name, value });
            }
        }
        if d.recv_buffers > 32768 {
            return Err(ConfigError::OutOfRange {
                name: "recv-buffers",
                value: u64::from(d.recv_buffers),
                min: 1,
                max: 32768,
            });
        }
        let tick = crate::driver::TICK;
        let durations = [
            ("handshake-timeout", Some(d.handshake_timeout)),
            ("drain-timeout", Some(d.drain_timeout)),
            ("ping-interval", d.ping_interval),
        ];
        for (name, value) in durations {
            let Some(value) = value else { continue };
            if !(tick..=MAX_TIMEOUT).contains(&value) {
                return Err(ConfigError::DurationOutOfRange {
                    name,
                    value,
                    min: tick,
                    max: MAX_TIMEOUT,
                });
            }
        }
        if d.max_pending_bytes < d.max_message_bytes {
            return Err(ConfigError::PendingBelowMessage {
                pending: d.max_pending_bytes,
                message: d.max_message_bytes,
            });
        }
        let l = &self.limit_settings;
        let caps: [(&str, Option<u64>, u64); 5] = [
            (
                "max-connections",
                l.max_connections.map(|n| n as u64),
                1 << 32,
            ),
            (
                "max-connections-per-ip",
                l.max_connections_per_ip.map(u64::from),
                1 << 24,
            ),
            (
                "max-handshakes-per-ip",
                l.max_handshakes_per_ip.map(u64::from),
                1 << 24,
            ),
            (
                "max-messages-per-second",
                l.max_messages_per_second.map(u64::from),
                1 << 30,
            ),
            ("max-bytes-per-second", l.max_bytes_per_second, 1 << 40),
        ];
        for (name, value, max) in caps {
            if let Some(value) = value.filter(|v| !(1..=max).contains(v)) {
                return Err(ConfigError::OutOfRange {
                    name,
                    value,
                    min: 1,
                    max,
                });
            }
        }
        let mut config = self.config;
        if self.history > 0 {
            let counts: [(&str, u64, u64, u64); 3] = [
                ("history", self.history as u64, 1, 1 << 20),
                (
                    "history-max-bytes",
                    self.history_max_bytes as u64,
                    1,
                    1 << 44,
                ),
                ("max-recover", self.max_recover as u64, 1, 1 << 20),
            ];
            for (name, value, min, max) in counts {
                if !(min..=max).contains(&value) {
                    return Err(ConfigError::OutOfRange {
                        name,
                        value,
                        min,
                        max,
                    });
                }
            }
            let (min, max) = (Duration::from_secs(1), Duration::from_secs(30 * 24 * 3600));
            if !(min..=max).contains(&self.history_ttl) {
                return Err(ConfigError::DurationOutOfRange {
                    name: "history-ttl",
                    value: self.history_ttl,
                    min,
                    max,
                });
            }
            config.history = Some(HistoryConfig {
                limits: crate::broadcast::HistoryLimits {
                    entries_per_topic: self.history,
                    ttl: self.history_ttl,
                    max_bytes: self.history_max_bytes,
                    max_streams: DEFAULT_HISTORY_MAX_STREAMS,
                },
                max_recover: self.max_recover,
            });
        }
        config.driver.peer_addresses = self.limit_settings.needs_addresses();
        config.limits = Arc::new(Limits::new(&self.limit_settings));
        let verifier = match &self.jwt_key {
            None => None,
            Some(_) if config.mode != Mode::Broadcast => {
                return Err(ConfigError::Conflict(
                    "--jwt-secret and --jwt-public-key need --mode broadcast",
                ))
            }
            Some(JwtKey::Secret(secret)) => Some(Verifier::hs256(secret.as_bytes())?),
            Some(JwtKey::PublicKeyFile(path)) => Some(Verifier::from_public_key_file(path)?),
        };
        if self.client_publish == Some(ClientPublish::Token) && verifier.is_none() {
            return Err(ConfigError::Conflict(
                "--client-publish token needs --jwt-secret or --jwt-public-key",
            ));
        }
        config.authorizer = Arc::new(Authorizer::new(
            verifier,
            config.publish_token.clone(),
            self.client_publish,
        ));
        if let Some(url) = &self.broker_url {
            if !BrokerConfig::valid_prefix(&self.broker_prefix) {
                return Err(ConfigError::BrokerPrefix {
                    value: self.broker_prefix,
                });
            }
            let mut broker = BrokerConfig::new(url.parse::<BrokerUrl>()?);
            broker.prefix = self.broker_prefix;
            broker.optional = self.broker_optional;
            if matches!(broker.url, BrokerUrl::Kafka(_)) && config.history.is_none() {
                // A Kafka topic is a log: positions and history are what it is used for.
                return Err(ConfigError::Conflict(
                    "--broker kafka:// needs --history N (Kafka is used as a log, not a bus)",
                ));
            }
            config.broker = Some(broker);
        }
        if let Some(files) = self.tls_files {
            config.driver.tls = Some(Arc::new(TlsAcceptor::new(files)?));
        }
        Ok(config)
    }
}

/// More workers than any machine has cores is a typo, not a plan.
const MAX_WORKERS: u64 = 4096;
/// A day: the timer wheel counts in 100 ms ticks, and no handshake, drain or ping interval
/// needs longer.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = ServerBuilder::default().build().expect("defaults build");
        assert!(config.driver.max_pending_bytes >= config.driver.max_message_bytes);
    }

    #[test]
    fn workers_past_the_cpus_share_the_cpus_receive_pools() {
        assert_eq!(auto_recv_buffers(1, 2), DEFAULT_RECV_BUFFERS);
        assert_eq!(auto_recv_buffers(2, 2), DEFAULT_RECV_BUFFERS);
        assert_eq!(auto_recv_buffers(4, 2), 128);
        assert_eq!(auto_recv_buffers(6, 2), 64, "85, down to a power of two");
        assert_eq!(auto_recv_buffers(53, 2), MIN_AUTO_RECV_BUFFERS);
        assert_eq!(auto_recv_buffers(0, 0), DEFAULT_RECV_BUFFERS);
        let many = ServerBuilder::default()
            .workers(53)
            .build()
            .expect("builds");
        assert_eq!(many.driver.recv_buffers, auto_recv_buffers(53, cpus()));
        let given = ServerBuilder::default()
            .workers(53)
            .recv_buffers(512, 2048)
            .build()
            .expect("builds");
        assert_eq!(given.driver.recv_buffers, 512, "a count given is kept");
    }

    fn cpus() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    #[test]
    fn every_out_of_range_value_is_refused() {
        let cases: [(ServerBuilder, &str); 9] = [
            (ServerBuilder::default().workers(0), "--workers"),
            (ServerBuilder::default().ring_entries(0), "--ring-entries"),
            (ServerBuilder::default().ring_entries(100), "--ring-entries"),
            (
                ServerBuilder::default().recv_buffers(100, 2048),
                "--recv-buffers",
            ),
            (
                ServerBuilder::default().recv_buffers(256, 0),
                "--recv-buffer-bytes",
            ),
            (
                ServerBuilder::default().max_head_bytes(0),
                "--max-head-bytes",
            ),
            (
                ServerBuilder::default().handshake_timeout(Duration::ZERO),
                "--handshake-timeout",
            ),
            (
                ServerBuilder::default().ping_interval(Some(Duration::from_millis(1))),
                "--ping-interval",
            ),
            (
                ServerBuilder::default()
                    .max_message_bytes(1 << 20)
                    .max_pending_bytes(1 << 19),
                "--max-pending-bytes",
            ),
        ];
        for (builder, flag) in cases {
            let error = builder.build().expect_err(flag).to_string();
            assert!(error.contains(flag), "{error:?} does not name {flag}");
        }
    }

    #[test]
    fn caps_and_access_settings_are_checked() {
        let cases: [(ServerBuilder, &str); 7] = [
            (
                ServerBuilder::default().max_connections(Some(0)),
                "--max-connections",
            ),
            (
                ServerBuilder::default().max_connections_per_ip(Some(0)),
                "--max-connections-per-ip",
            ),
            (
                ServerBuilder::default().max_handshakes_per_ip(Some(0)),
                "--max-handshakes-per-ip",
            ),
            (
                ServerBuilder::default().max_messages_per_second(Some(0)),
                "--max-messages-per-second",
            ),
            (
                ServerBuilder::default().max_bytes_per_second(Some(0)),
                "--max-bytes-per-second",
            ),
            (
                ServerBuilder::default()
                    .mode(Mode::Broadcast)
                    .client_publish(ClientPublish::Token),
                "--client-publish",
            ),
            (ServerBuilder::default().jwt_secret("s"), "--jwt-secret"),
        ];
        for (builder, flag) in cases {
            let error = builder.build().expect_err(flag).to_string();
            assert!(error.contains(flag), "{error:?} does not name {flag}");
        }
        // A cap per address makes the workers learn peer addresses; none leaves them be.
        let capped = ServerBuilder::default()
            .max_connections_per_ip(Some(4))
            .build()
            .expect("valid");
        assert!(capped.driver.peer_addresses);
        assert!(
            !ServerBuilder::default()
                .build()
                .expect("valid")
                .driver
                .peer_addresses
        );
        let locked = ServerBuilder::default()
            .mode(Mode::Broadcast)
            .jwt_secret("s")
            .build()
            .expect("valid");
        assert_eq!(locked.authorizer().client_publish(), ClientPublish::Token);
        // The secret never shows in a debug dump of the builder.
        let dump = format!("{:?}", ServerBuilder::default().jwt_secret("hunter2"));
        assert!(!dump.contains("hunter2"), "{dump}");
    }
}
