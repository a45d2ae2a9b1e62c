//! The `connect` scenario: open N WebSocket connections at a steady rate, hold them idle, then
//! close them all, measuring each handshake and what holding them costs the server.
//!
//! It is the message scenarios' engine ([`traffic`]) with a workload that sends nothing and
//! expects nothing: the ramp is the engine's connect phase at `--rate`, the hold its traffic
//! phase for `--duration`, with no drain. Holding still answers pings and notices a server
//! that drops a connection; at the end each connection sends a close frame and waits for the
//! server's close and FIN. What the engine measured becomes a [`ConnectReport`].

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use uringcast::protocol::OpCode;

use super::traffic::{
    self, Deflate, Expect, NoSenders, Outbox, Outcome, Plan, ProgressStyle, Tally, Workload,
};
use crate::capacity::Capacity;
use crate::error::LoadError;
use crate::report::{
    ConnectHistograms, ConnectReport, LatencySummary, SampleEcho, ServerUsage, SettingsSummary,
};
use crate::target::Target;
use crate::uring::{ClientFeatures, RecvBuffers};

/// 1,000 connections: enough to see a latency distribution, few enough for any machine.
pub const DEFAULT_CONNECTIONS: u64 = 1000;
/// 1,000 new connections per second: a quarter of a 4096 `somaxconn` accept queue per second,
/// so a server that stalls briefly does not overflow it.
pub const DEFAULT_RATE: f64 = 1000.0;
/// Hold for 10 s after the ramp: long enough for the server's memory to settle.
pub const DEFAULT_HOLD_SECS: f64 = 10.0;
/// Two threads: one ring each, so 2 x RLIMIT_NOFILE slots; the machine has 2 cores.
pub const DEFAULT_THREADS: usize = 2;
/// As long as the server's own default handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: f64 = 10.0;
/// Ten seconds for each closing handshake at the end: every connection closes at once, and
/// 100,000 of them took a 6-worker server on 2 cores up to 4.5 s to answer.
pub const DEFAULT_CLOSE_TIMEOUT_SECS: f64 = 10.0;

/// A validated `connect` run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where to connect.
    pub target: Target,
    /// `wss://`: the TLS client configuration.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Offer permessage-deflate on every connection (`--deflate`).
    pub deflate: bool,
    /// Connections to open.
    pub connections: u64,
    /// New connections per second over all threads.
    pub rate: f64,
    /// Hold time after the ramp.
    pub hold: Duration,
    /// Client threads (at most `connections`).
    pub threads: usize,
    /// Source addresses, used round-robin; empty: the kernel picks.
    pub sources: Vec<IpAddr>,
    /// Server addresses, round-robin (at least one: the URL's).
    pub targets: Vec<SocketAddr>,
    /// Time for a connection to reach a verified 101.
    pub handshake_timeout: Duration,
    /// Time for the closing handshake at the end.
    pub close_timeout: Duration,
    /// The server to measure.
    pub server_pid: Option<u32>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// The protocol over WebSocket (`--protocol`, `--on-open`, `--ready-when`).
    pub session: Option<std::sync::Arc<crate::scenario::session::Spec>>,
    /// `--reconnect`: lost connections open again within these bounds.
    pub reconnect: Option<traffic::Policy>,
    /// `--echo-sample K`: halfway through the hold, every K-th connection sends one message
    /// and expects its echo, to show the held connections are alive; 0: none.
    pub echo_sample: u64,
}

impl Settings {
    /// The engine's settings for this run: the ramp is its connect phase, the hold its
    /// traffic, and with nothing in flight there is nothing to drain.
    fn engine(&self) -> traffic::Settings {
        traffic::Settings {
            target: self.target.clone(),
            tls: self.tls.clone(),
            // Nothing is sent: an offer is all there is to it.
            deflate: Deflate::from_flags(self.deflate, false),
            connections: self.connections,
            connect_rate: self.rate,
            duration: self.hold,
            start_at: None,
            threads: self.threads,
            sources: self.sources.clone(),
            targets: self.targets.clone(),
            split: None,
            handshake_timeout: self.handshake_timeout,
            close_timeout: self.close_timeout,
            drain_timeout: Duration::ZERO,
            server_pid: self.server_pid,
            progress: if self.progress {
                ProgressStyle::Connections
            } else {
                ProgressStyle::Off
            },
            // Handshakes, pings and closes only.
            recv: RecvBuffers::IDLE,
            close_cpu: true,
            session: self.session.clone(),
            streams_below: 0,
            reconnect: self.reconnect,
        }
    }
}

/// Runs the scenario.
///
/// # Errors
///
/// [`LoadError::ServerPid`] if the server cannot be read before the ramp, or
/// [`LoadError::Thread`] if a client thread's ring fails.
pub fn run(
    settings: &Settings,
    features: ClientFeatures,
    capacity: Capacity,
) -> Result<ConnectReport, LoadError> {
    let engine = settings.engine();
    let (sample, after_ns) = (settings.echo_sample, duration_ns(settings.hold) / 2);
    let outcome = traffic::run(
        &engine,
        features,
        move |_, plan| Idle::new(plan, sample, after_ns),
        &mut NoSenders,
    )?;
    let summary = SettingsSummary {
        url: settings.target.to_string(),
        connections: settings.connections,
        rate: settings.rate,
        hold: settings.hold,
        threads: engine.threads_used(),
        sources: settings.sources.iter().map(ToString::to_string).collect(),
        targets: settings.targets.iter().map(ToString::to_string).collect(),
        handshake_timeout: settings.handshake_timeout,
        close_timeout: settings.close_timeout,
        bind_no_port: features.bind_no_port && !settings.sources.is_empty(),
        deflate: settings.deflate,
    };
    Ok(report(summary, capacity, outcome))
}

/// The engine's outcome as a `connect` report: `reached` is what was open at the end of the
/// hold, and the server's figures are those of that sample.
fn report(settings: SettingsSummary, capacity: Capacity, outcome: Outcome) -> ConnectReport {
    let server = outcome
        .server
        .as_ref()
        .and_then(|server| match &server.stop {
            Ok(stop) => {
                let (slab_before_bytes, slab_bytes) = outcome.slab.unwrap_or((0, 0));
                Some(ServerUsage {
                    pid: server.pid,
                    cpu_s: stop.cpu_s,
                    close_cpu_s: stop.close_cpu_s,
                    rss_before_bytes: server.rss_before_bytes,
                    rss_bytes: stop.rss_bytes,
                    slab_before_bytes,
                    slab_bytes,
                })
            }
            Err(error) => {
                eprintln!(
                    "uringcast-load: server {} unreadable at hold ({error}); did it exit?",
                    server.pid
                );
                None
            }
        });
    let tally = &outcome.tally;
    let echo = SampleEcho {
        sent: tally.sent,
        received: tally.received,
        missing: tally.missing,
        corrupt: tally.corrupt,
    };
    ConnectReport {
        reconnect: outcome.reconnect.clone(),
        echo,
        settings,
        capacity,
        reached: outcome.held,
        established: outcome.established,
        dropped: outcome.dropped,
        failed: outcome.failed,
        closed_clean: outcome.closed_clean,
        closed_forced: outcome.closed_forced,
        closed_abandoned: outcome.closed_abandoned,
        duration: outcome.elapsed,
        ramp: outcome.ramp,
        hold: outcome.duration,
        latency: LatencySummary::of(&outcome.handshake),
        connect_latency: LatencySummary::of(&outcome.tcp_connect),
        tls: (!outcome.tls_handshake.is_empty()).then(|| {
            (
                LatencySummary::of(&outcome.tls_handshake),
                outcome.tls_resumed,
            )
        }),
        close_latency: LatencySummary::of(&outcome.closing),
        server,
        slab: outcome.slab,
        client_rss_bytes: outcome.client_rss_bytes,
        diagnostics: outcome.diagnostics,
        wire: outcome.wire,
        started_at_unix_s: outcome.started_at_unix_s,
        histograms: ConnectHistograms {
            handshake: outcome.handshake,
            tcp_connect: outcome.tcp_connect,
            tls_handshake: outcome.tls_handshake,
            closing: outcome.closing,
        },
    }
}

/// A thread's share of a `connect` run: its connections only wait, and with `--echo-sample`
/// every K-th one (by global index) sends [`SAMPLE_PAYLOAD`] once, halfway through the hold,
/// and must get it back. Anything else the server sends is ignored.
struct Idle {
    plan: Plan,
    /// Every `sample`-th connection echoes once; 0: none.
    sample: u64,
    /// When the sample sends, after the hold starts.
    after_ns: u64,
    /// When the sample sends, once the hold has started; `None` before, and once it has sent.
    due_ns: Option<u64>,
    /// Local connections whose sample message is not answered yet.
    waiting: HashSet<usize>,
    tally: Tally,
}

/// What a sampled connection sends.
const SAMPLE_PAYLOAD: &[u8] = b"uringcast-load: alive?";

impl Idle {
    fn new(plan: Plan, sample: u64, after_ns: u64) -> Self {
        Self {
            plan,
            sample,
            after_ns,
            due_ns: None,
            waiting: HashSet::new(),
            tally: Tally::default(),
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Workload for Idle {
    fn start(&mut self, start_ns: u64, _: &mut Outbox<'_>) {
        if self.sample > 0 {
            self.due_ns = Some(start_ns.saturating_add(self.after_ns));
        }
    }

    fn due(&mut self, now_ns: u64, out: &mut Outbox<'_>) -> Option<u64> {
        let due = self.due_ns?;
        if now_ns < due {
            return Some(due);
        }
        self.due_ns = None;
        let count = usize::try_from(self.plan.count).unwrap_or(usize::MAX);
        for conn in 0..count {
            if self.plan.global(conn).is_multiple_of(self.sample)
                && out.is_open(conn)
                && out.send(conn, OpCode::Text, SAMPLE_PAYLOAD)
            {
                self.tally.sent += 1;
                self.waiting.insert(conn);
            }
        }
        None
    }

    fn message(&mut self, conn: usize, opcode: OpCode, payload: &[u8], _: u64, _: &mut Outbox<'_>) {
        if !self.waiting.remove(&conn) {
            return;
        }
        if opcode == OpCode::Text && payload == SAMPLE_PAYLOAD {
            self.tally.received += 1;
        } else {
            self.tally.corrupt += 1;
        }
    }

    fn stop(&mut self) {}

    fn drained(&self, _: &Expect, _: &[bool]) -> bool {
        true
    }

    fn published(&self) -> Vec<u64> {
        Vec::new()
    }

    fn tally(&mut self) -> &mut Tally {
        &mut self.tally
    }

    fn finish(&mut self, _: &Expect, _: &[bool]) -> Tally {
        self.tally.expected = self.tally.sent;
        self.tally.missing = self.waiting.len() as u64;
        std::mem::take(&mut self.tally)
    }
}
