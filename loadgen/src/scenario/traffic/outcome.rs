//! What a run measured, summed over its threads, before it becomes a report.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::{new_histogram, Deflate, ReconnectTally, Tally, WireTally};
use crate::report::{Diagnostics, Failures};

/// What a run measured, before it becomes a report.
pub struct Outcome {
    /// Messages, merged over threads.
    pub tally: Tally,
    /// What the run asked of permessage-deflate.
    pub deflate: Deflate,
    /// Bytes on the wire against payload bytes, and the connections that agreed to deflate.
    pub wire: WireTally,
    /// Connections asked for.
    pub target: u64,
    /// Connections open when traffic started.
    pub reached: u64,
    /// Connections open when traffic stopped (`connect`'s hold sample).
    pub held: u64,
    /// Handshakes verified.
    pub established: u64,
    /// Connections that never reached a verified 101.
    pub failed: Failures,
    /// Connections the server closed or reset before the end.
    pub dropped: Failures,
    /// Connections closed at the end with a completed closing handshake.
    pub closed_clean: u64,
    /// Connections closed at the end without one (timeout or error).
    pub closed_forced: u64,
    /// Connections still open when their thread gave up waiting (closed as its ring went).
    pub closed_abandoned: u64,
    /// Handshake latency: the open chain submitted to the verified 101, µs.
    pub handshake: Histogram<u64>,
    /// TCP connect latency: the open chain submitted to the connect's completion, µs.
    pub tcp_connect: Histogram<u64>,
    /// `wss://`: TLS handshake latency, TCP's connect to the end of the TLS handshake, µs
    /// (the upgrade's latency, in `handshake`, includes it).
    pub tls_handshake: Histogram<u64>,
    /// `wss://`: TLS handshakes that resumed a session rather than making a new one.
    pub tls_resumed: u64,
    /// Closing handshake latency at the end, for clean closes: our close frame queued to the
    /// server's FIN, µs.
    pub closing: Histogram<u64>,
    /// Time from the first connection until every connection had settled, or the wait for
    /// them ended (limit or Ctrl-C).
    pub ramp: Duration,
    /// Time with traffic (Go to Stop).
    pub duration: Duration,
    /// Wall-clock time of Go, seconds since the Unix epoch: with `--start-at`, never before
    /// the time asked for.
    pub started_at_unix_s: f64,
    /// Time from the first connection until every thread had closed, or was given up on.
    pub elapsed: Duration,
    /// Ctrl-C stopped the run early.
    pub interrupted: bool,
    /// Server figures, with `--server-pid`.
    pub server: Option<ServerSamples>,
    /// This process's CPU seconds (user + system) over the traffic and drain.
    pub client_cpu_s: f64,
    /// This process's RSS at the end of the traffic.
    pub client_rss_bytes: Option<u64>,
    /// Kernel slab (system-wide) before the first connection and at the end of the traffic.
    pub slab: Option<(u64, u64)>,
    /// Counters that should be 0.
    pub diagnostics: Diagnostics,
    /// Sends that the scenario's own senders could not make.
    pub sender_errors: u64,
    /// Reconnects (`--reconnect`, `sse --reconnect-after`).
    pub reconnect: ReconnectTally,
}

/// The server's cost, read from `/proc`.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerSamples {
    /// The server's pid.
    pub pid: u32,
    /// CPU seconds (user + system) from the start of the traffic to the end of the drain.
    pub cpu_s: f64,
    /// RSS before the first connection.
    pub rss_before_bytes: u64,
    /// RSS once every connection was up.
    pub rss_connected_bytes: u64,
    /// RSS at the end of the drain.
    pub rss_bytes: u64,
    /// The reading at Stop, the end of the traffic (`connect`'s hold sample), or why the
    /// server could not be read then.
    pub stop: Result<StopSample, String>,
}

/// The server read at Stop, the end of the traffic, and watched after the close.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StopSample {
    /// CPU seconds (user + system) from before the first connection to Stop.
    pub cpu_s: f64,
    /// RSS at Stop.
    pub rss_bytes: u64,
    /// CPU seconds from Stop until the server went idle after the close, with
    /// [`Settings::close_cpu`](super::Settings::close_cpu) (`None` without it, or if the
    /// server could not be read).
    pub close_cpu_s: Option<f64>,
}

/// What a thread measured.
pub(super) struct ThreadResult {
    pub(super) tally: Tally,
    pub(super) reconnect: ReconnectTally,
    pub(super) wire: WireTally,
    /// Open chain submitted to the verified 101, µs.
    pub(super) handshake: Histogram<u64>,
    /// Open chain submitted to the connect's completion (the TCP handshake), µs.
    pub(super) tcp_connect: Histogram<u64>,
    /// TCP connect to the end of the TLS handshake, µs (`wss://`).
    pub(super) tls_handshake: Histogram<u64>,
    pub(super) tls_resumed: u64,
    /// Our close frame queued to the server's FIN, µs, for clean closes.
    pub(super) closing: Histogram<u64>,
    pub(super) failed: Failures,
    pub(super) dropped: Failures,
    pub(super) established: u64,
    pub(super) closed_clean: u64,
    pub(super) closed_forced: u64,
    pub(super) closed_abandoned: u64,
    pub(super) diagnostics: Diagnostics,
}

impl ThreadResult {
    /// Nothing measured yet: what the coordinator sums the threads' results into.
    pub(super) fn empty() -> Self {
        Self {
            tally: Tally::default(),
            reconnect: ReconnectTally::default(),
            wire: WireTally::default(),
            handshake: new_histogram(),
            tcp_connect: new_histogram(),
            tls_handshake: new_histogram(),
            tls_resumed: 0,
            closing: new_histogram(),
            failed: Failures::default(),
            dropped: Failures::default(),
            established: 0,
            closed_clean: 0,
            closed_forced: 0,
            closed_abandoned: 0,
            diagnostics: Diagnostics::default(),
        }
    }

    /// Adds another thread's figures.
    pub(super) fn merge(&mut self, other: &Self) {
        self.tally.merge(&other.tally);
        self.reconnect.merge(&other.reconnect);
        self.wire.merge(&other.wire);
        // Same bounds and precision everywhere: adding cannot fail.
        let _ = self.handshake.add(&other.handshake);
        let _ = self.tcp_connect.add(&other.tcp_connect);
        let _ = self.tls_handshake.add(&other.tls_handshake);
        self.tls_resumed += other.tls_resumed;
        let _ = self.closing.add(&other.closing);
        self.failed.merge(&other.failed);
        self.dropped.merge(&other.dropped);
        self.established += other.established;
        self.closed_clean += other.closed_clean;
        self.closed_forced += other.closed_forced;
        self.closed_abandoned += other.closed_abandoned;
        self.diagnostics.merge(&other.diagnostics);
    }
}
