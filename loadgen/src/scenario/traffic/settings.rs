//! What a run is asked to do.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use super::Deflate;
use crate::target::Target;
use crate::uring::RecvBuffers;

/// New connections per second while connecting: a quarter of a 4096 `somaxconn` accept queue
/// per millisecond is far from overflowing it, and 10,000 connections take 2 s.
pub const DEFAULT_CONNECT_RATE: f64 = 5000.0;
/// Seconds to wait, after the senders stop, for the messages still in flight.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: f64 = 5.0;

/// The largest message a client accepts: the CLI caps `--size` below this.
pub const MAX_MESSAGE_BYTES: u64 = 16 << 20;

/// What every scenario needs to run its connections.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where to connect.
    pub target: Target,
    /// `wss://`: the TLS client configuration (trust, resumption) every connection uses.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// permessage-deflate: offered on every connection, and whether sends are compressed.
    pub deflate: Deflate,
    /// Connections in all (echo connections, or subscribers plus publishers).
    pub connections: u64,
    /// New connections per second while connecting, over all threads.
    pub connect_rate: f64,
    /// Time with traffic.
    pub duration: Duration,
    /// `--start-at`: traffic starts at this wall-clock time, once every connection is up
    /// (`None`: as soon as they are).
    pub start_at: Option<SystemTime>,
    /// Client threads (at most `connections`).
    pub threads: usize,
    /// Source addresses, round-robin; empty: the kernel picks.
    pub sources: Vec<IpAddr>,
    /// Server addresses, round-robin over each source's connections (at least one: the URL's).
    pub targets: Vec<SocketAddr>,
    /// Connections from a global index on that go elsewhere (broadcast's `--publisher-url`).
    pub split: Option<Split>,
    /// Time for a connection to reach a verified 101.
    pub handshake_timeout: Duration,
    /// Time for the closing handshake at the end.
    pub close_timeout: Duration,
    /// Time for messages in flight when the senders stop.
    pub drain_timeout: Duration,
    /// The server to measure.
    pub server_pid: Option<u32>,
    /// What to print on stderr while the run goes on.
    pub progress: ProgressStyle,
    /// Provided receive buffers per thread.
    pub recv: RecvBuffers,
    /// With `server_pid`: after the close, watch the server's CPU until it goes idle (up to
    /// 10 s more) for
    /// [`StopSample::close_cpu_s`](super::outcome::StopSample::close_cpu_s); a run that does
    /// not report it saves the wait.
    pub close_cpu: bool,
    /// The protocol over WebSocket (`--protocol`, `--on-open`, `--ready-when`,
    /// `--payload-at`); `None`: plain WebSocket, each message a payload.
    pub session: Option<std::sync::Arc<crate::scenario::session::Spec>>,
    /// Global connections below this one are event streams (`sse`); 0: none.
    pub streams_below: u64,
    /// `--reconnect`: lost connections open again within these bounds.
    pub reconnect: Option<super::reconnect::Policy>,
}

impl Settings {
    /// The client threads a run starts: at least one, at most one per connection.
    pub fn threads_used(&self) -> usize {
        self.threads.clamp(1, self.connections.max(1) as usize)
    }

    /// Every address a ring connects to: [`targets`](Self::targets), then the split's, whose
    /// index is `targets.len()`.
    pub fn ring_targets(&self) -> Vec<SocketAddr> {
        let mut all = self.targets.clone();
        all.extend(self.split.as_ref().map(|s| s.target.addr));
        all
    }
}

/// Global connections `from` and above connect to `target` (its address, `Host`, path and TLS
/// name) rather than to the run's target addresses; the ones below keep to those.
#[derive(Clone, Debug)]
pub struct Split {
    /// The first global connection index that goes to `target`.
    pub from: u64,
    /// Where those go; of the same scheme as the run's target (one TLS configuration).
    pub target: Target,
}

/// What the coordinator prints on stderr while a run goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressStyle {
    /// Nothing (`--quiet`).
    Off,
    /// Message counts on one line rewritten each second, only when stderr is a terminal.
    Live,
    /// Connection counts on a new line each second, terminal or not: an idle hold has no
    /// messages to count, and its long runs are often logged to a file.
    Connections,
}
