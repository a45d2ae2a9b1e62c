//! Server settings: [`ServerBuilder`] validates them once into a [`Config`] that nothing
//! re-checks. Every default is a `DEFAULT_*` constant here, shared with the CLI.

use std::net::SocketAddr;
use std::time::Duration;

use crate::protocol::handshake::DEFAULT_MAX_HEAD_BYTES;
pub use crate::protocol::DEFAULT_MAX_MESSAGE_BYTES;

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
/// Submission queue entries per ring; the completion queue is sized at 4x this.
pub const DEFAULT_RING_ENTRIES: u32 = 4096;

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

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The address every worker listens on (with `SO_REUSEPORT`).
    pub listen: SocketAddr,
    /// What to do with messages.
    pub mode: Mode,
    /// Worker threads, each pinned to a CPU with its own ring.
    pub workers: usize,
    /// Largest message, summed across fragments.
    pub max_message_bytes: u64,
    /// Largest request head.
    pub max_head_bytes: usize,
    /// Bytes of frames queued per connection, counting those of the send in flight until the
    /// kernel reports them sent; one frame of any size is admitted into an empty queue.
    pub max_backlog_bytes: usize,
    /// Time allowed to complete the opening handshake.
    pub handshake_timeout: Duration,
    /// Idle time before a ping; `None` turns pings off.
    pub ping_interval: Option<Duration>,
    /// Time allowed for peers to answer our close frame.
    pub drain_timeout: Duration,
    /// Size of each receive buffer.
    pub recv_buffer_bytes: usize,
    /// Receive buffers per worker (a power of two).
    pub recv_buffers: u16,
    /// Submission queue entries per ring.
    pub ring_entries: u32,
    /// Read SIGINT and SIGTERM on the ring and shut down gracefully on them (the CLI does).
    pub handle_signals: bool,
    /// What to do with slow subscribers.
    pub slow_consumer: SlowConsumer,
    /// The bearer token that enables `POST /publish/<topic>`; `None` turns it off.
    pub publish_token: Option<String>,
    /// Hold connections as direct descriptors (the default). `false` uses plain descriptors,
    /// as the server also does when the kernel refuses a fixed file table.
    pub direct_descriptors: bool,
}

/// A setting outside its valid range.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `workers` was 0.
    #[error("workers must be at least 1")]
    NoWorkers,
    /// A size limit of 0.
    #[error("{name} must be at least 1 (got 0)")]
    Zero {
        /// The setting.
        name: &'static str,
    },
    /// `recv_buffers` not a power of two or above 32768.
    #[error("recv buffers must be a power of two up to 32768 (got {0})")]
    RecvBuffers(u16),
    /// A timeout of zero where zero makes no sense.
    #[error("{name} must be positive")]
    ZeroTimeout {
        /// The setting.
        name: &'static str,
    },
}

/// Builds a [`Config`]; setters take and return `Self`.
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    config: Config,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            config: Config {
                listen: DEFAULT_LISTEN
                    .parse()
                    .expect("DEFAULT_LISTEN is a valid address"),
                mode: Mode::Echo,
                workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
                max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
                max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
                max_backlog_bytes: DEFAULT_MAX_BACKLOG_BYTES,
                handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
                ping_interval: Some(DEFAULT_PING_INTERVAL),
                drain_timeout: DEFAULT_DRAIN_TIMEOUT,
                recv_buffer_bytes: DEFAULT_RECV_BUFFER_BYTES,
                recv_buffers: DEFAULT_RECV_BUFFERS,
                ring_entries: DEFAULT_RING_ENTRIES,
                handle_signals: false,
                direct_descriptors: true,
                slow_consumer: SlowConsumer::Disconnect,
                publish_token: None,
            },
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
        self.config.workers = workers;
        self
    }
    /// Largest message, summed across fragments (default [`DEFAULT_MAX_MESSAGE_BYTES`]).
    pub fn max_message_bytes(mut self, bytes: u64) -> Self {
        self.config.max_message_bytes = bytes;
        self
    }
    /// Largest request head (default 8 KiB); larger ones get 431.
    pub fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.config.max_head_bytes = bytes;
        self
    }
    /// Bytes of frames queued per connection (default [`DEFAULT_MAX_BACKLOG_BYTES`]).
    pub fn max_backlog_bytes(mut self, bytes: usize) -> Self {
        self.config.max_backlog_bytes = bytes;
        self
    }
    /// Time allowed to complete the upgrade (default [`DEFAULT_HANDSHAKE_TIMEOUT`]).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }
    /// Idle time before a ping; `None` or zero turns pings off.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.ping_interval = interval.filter(|d| !d.is_zero());
        self
    }
    /// Time allowed for peers to answer a close (default [`DEFAULT_DRAIN_TIMEOUT`]).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }
    /// Receive buffer size and count per worker.
    pub fn recv_buffers(mut self, count: u16, bytes: usize) -> Self {
        self.config.recv_buffers = count;
        self.config.recv_buffer_bytes = bytes;
        self
    }
    /// Read SIGINT/SIGTERM on the ring and shut down gracefully (for binaries).
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.config.handle_signals = on;
        self
    }

    /// Connections as direct descriptors (default `true`): they use no entry of the process's
    /// descriptor table, so capacity is workers × `RLIMIT_NOFILE`. With `false` they are plain
    /// descriptors, visible to `ss -p` and `/proc/PID/fd`, and capacity is one `RLIMIT_NOFILE`
    /// shared by all workers.
    pub fn direct_descriptors(mut self, on: bool) -> Self {
        self.config.direct_descriptors = on;
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

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn build(self) -> Result<Config, ConfigError> {
        let c = &self.config;
        if c.workers == 0 {
            return Err(ConfigError::NoWorkers);
        }
        for (name, value) in [
            ("max message bytes", c.max_message_bytes as usize),
            ("max head bytes", c.max_head_bytes),
            ("max backlog bytes", c.max_backlog_bytes),
            ("recv buffer bytes", c.recv_buffer_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { name });
            }
        }
        if !c.recv_buffers.is_power_of_two() || c.recv_buffers > 32768 {
            return Err(ConfigError::RecvBuffers(c.recv_buffers));
        }
        if c.handshake_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout {
                name: "handshake timeout",
            });
        }
        Ok(self.config)
    }
}
