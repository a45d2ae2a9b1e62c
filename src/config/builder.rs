//! [`ServerBuilder`]: the settings one by one, checked together by `build` into a [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{
    auto_recv_buffers, Config, ConfigError, HistoryConfig, Mode, SlowConsumer, TopicLimits,
    DEFAULT_DEFLATE_MIN_BYTES, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HISTORY,
    DEFAULT_HISTORY_MAX_BYTES, DEFAULT_HISTORY_MAX_STREAMS, DEFAULT_HISTORY_TTL, DEFAULT_LISTEN,
    DEFAULT_MAX_BACKLOG_BYTES, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_RECOVER, DEFAULT_MAX_SUBSCRIPTIONS_PER_CONNECTION, DEFAULT_MAX_TOPICS_PER_WORKER,
    DEFAULT_MAX_TOPIC_BYTES, DEFAULT_PING_INTERVAL, DEFAULT_RECV_BUFFERS,
    DEFAULT_RECV_BUFFER_BYTES, DEFAULT_RING_ENTRIES,
};
use crate::auth::{Authorizer, ClientPublish, Verifier};
use crate::broker::{BrokerConfig, BrokerUrl};
use crate::driver::DriverConfig;
use crate::limits::{Cidr, LimitSettings, Limits};
use crate::protocol::handshake::DEFAULT_MAX_HEAD_BYTES;
use crate::protocol::origin::AllowedOrigins;
use crate::tls::{TlsAcceptor, TlsFiles};

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
    use crate::config::MIN_AUTO_RECV_BUFFERS;

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
