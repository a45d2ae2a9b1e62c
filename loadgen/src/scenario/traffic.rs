//! The engine of every scenario (`connect`, `echo`, `broadcast`): client threads that open
//! their connections, exchange messages for the duration, drain what is still in flight, and
//! close. `connect` is the case with no messages: its hold is the traffic phase.
//!
//! Each thread owns one [`ClientRing`]: connections are opened by one linked chain per
//! connection into a direct descriptor slot (socket → [setsockopt → bind] → connect → send the
//! upgrade request), then receive with a multishot receive
//! into the thread's provided buffer ring, with bundles where the kernel has them, so one
//! completion may carry many frames. Frames are parsed by the protocol core
//! ([`WebSocket`] on the client side, pings answered); each message goes to the scenario's
//! [`Workload`], which checks it and may send more through an [`Outbox`]. Frames queued for a
//! connection go out as one send per loop turn (one send in flight per connection).
//!
//! A run has fixed phases, driven by the coordinating thread: connect every connection →
//! traffic for the duration (`Go`) → stop sending (`Stop`) → drain until every expected message
//! is in or the drain timeout (`Drain`) → closing handshakes → report. Besides the messages it
//! measures each connection's TCP connect, handshake and closing handshake, and samples the
//! server and the kernel before connecting, at `Go`, at `Stop` and after the drain.

use std::collections::VecDeque;
use std::io::{self, IsTerminal as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use uringcast::protocol::connection::ClientSide;
use uringcast::protocol::handshake::ClientHandshake;
use uringcast::protocol::{CloseCode, Limits, OpCode, Read, WebSocket};

use crate::error::LoadError;
use crate::interrupt;
use crate::procfs::{self, ProcessSample};
use crate::report::{Diagnostics, Failure, Failures};
use crate::scenario::stamp;
use crate::target::Target;
use crate::uring::user_data::OpKind;
use crate::uring::{BeforeClose, ClientFeatures, ClientRing, Completion, Ops, RecvBuffers};

/// New connections per second while connecting: a quarter of a 4096 `somaxconn` accept queue
/// per millisecond is far from overflowing it, and 10,000 connections take 2 s.
pub const DEFAULT_CONNECT_RATE: f64 = 5000.0;
/// Seconds to wait, after the senders stop, for the messages still in flight.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: f64 = 5.0;

/// The largest message a client accepts: the CLI caps `--size` below this.
pub const MAX_MESSAGE_BYTES: u64 = 16 << 20;
/// WebSocket headers are at most 14 bytes; the decoder keeps a partial one for us.
const MAX_HEADER_BYTES: usize = 14;
/// Bounds on one loop turn's new work, so a late thread never floods its queues in one turn.
const MAX_STARTS_PER_TURN: u64 = 256;
const MAX_CLOSES_PER_TURN: usize = 1024;
/// The longest a thread waits in the kernel: how soon it sees a command.
const POLL: Duration = Duration::from_millis(20);
/// After the close timeout, how long to wait for the kernel to return the last operations.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long the coordinator waits for a thread beyond every bound the thread has itself.
const STRAGGLER_WAIT: Duration = Duration::from_secs(30);
/// Traffic starts this long after the last connection is up, on every thread at once.
const GO_DELAY: Duration = Duration::from_millis(50);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How the server's CPU time is watched for the end of its teardown work after the close.
const SETTLE_EVERY: Duration = Duration::from_millis(100);
const SETTLE_MAX: Duration = Duration::from_secs(10);

/// What every scenario needs to run its connections.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where to connect.
    pub target: Target,
    /// Connections in all (echo connections, or subscribers plus publishers).
    pub connections: u64,
    /// New connections per second while connecting, over all threads.
    pub connect_rate: f64,
    /// Time with traffic.
    pub duration: Duration,
    /// Client threads (at most `connections`).
    pub threads: usize,
    /// Source addresses, round-robin; empty: the kernel picks.
    pub sources: Vec<IpAddr>,
    /// Server addresses, round-robin over each source's connections (at least one: the URL's).
    pub targets: Vec<SocketAddr>,
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
    /// 10 s more) for [`StopSample::close_cpu_s`]; a run that does not report it saves the wait.
    pub close_cpu: bool,
}

impl Settings {
    /// The client threads a run starts: at least one, at most one per connection.
    pub fn threads_used(&self) -> usize {
        self.threads.clamp(1, self.connections.max(1) as usize)
    }
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

/// Which of the run's connections a thread owns: global indices `first, first + step, ...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The thread's first global connection index.
    pub first: u64,
    /// The number of threads.
    pub step: u64,
    /// How many connections the thread owns.
    pub count: u64,
}

impl Plan {
    /// Thread `id`'s share of `connections` over `threads` threads (every `threads`-th
    /// connection from `id` on, so the shares differ by at most one).
    pub fn of_thread(id: usize, threads: usize, connections: u64) -> Self {
        Self {
            first: id as u64,
            step: threads as u64,
            count: connections
                .saturating_sub(id as u64)
                .div_ceil(threads as u64),
        }
    }

    /// The global index of local connection `local`.
    pub fn global(&self, local: usize) -> u64 {
        self.first + local as u64 * self.step
    }
}

/// What was sent and received, and how it checked; summed over threads for the report.
#[derive(Clone, Debug)]
pub struct Tally {
    /// Messages sent (queued on an open connection).
    pub sent: u64,
    /// Messages received that count (echoes, or deliveries to subscribers).
    pub received: u64,
    /// Messages that should have been received.
    pub expected: u64,
    /// Expected messages never received.
    pub missing: u64,
    /// Messages received more than once.
    pub duplicated: u64,
    /// Messages received after a later one from the same sender.
    pub out_of_order: u64,
    /// Messages whose bytes are not what was sent.
    pub corrupt: u64,
    /// Latency of each checked message, µs.
    pub latency: Histogram<u64>,
    /// The same, since the last progress line (not summed).
    pub interval: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            sent: 0,
            received: 0,
            expected: 0,
            missing: 0,
            duplicated: 0,
            out_of_order: 0,
            corrupt: 0,
            latency: new_histogram(),
            interval: new_histogram(),
        }
    }
}

impl Tally {
    /// Records one latency, µs.
    pub fn record(&mut self, micros: u64) {
        self.latency.saturating_record(micros);
        self.interval.saturating_record(micros);
    }

    /// Adds another thread's tally.
    pub fn merge(&mut self, other: &Self) {
        self.sent += other.sent;
        self.received += other.received;
        self.expected += other.expected;
        self.missing += other.missing;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.corrupt += other.corrupt;
        // Same bounds and precision everywhere: adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }

    /// Counts that mean something went wrong.
    pub fn errors(&self) -> u64 {
        self.duplicated + self.out_of_order + self.corrupt
    }
}

/// A new latency histogram: 1 µs to 1 hour at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

/// What the senders sent, known once they all stopped: what the receivers must wait for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// Messages each publisher sent, by publisher id (broadcast); empty for echo.
    pub per_publisher: Vec<u64>,
}

/// One thread's share of a scenario: it decides what to send and checks what arrives.
pub trait Workload: Send + 'static {
    /// Traffic starts; the first sends are due at `start_ns` (`CLOCK_MONOTONIC`).
    fn start(&mut self, start_ns: u64, out: &mut Outbox<'_>);
    /// Queues the sends due by `now_ns`; returns when the next one is due, if any is planned.
    fn due(&mut self, now_ns: u64, out: &mut Outbox<'_>) -> Option<u64>;
    /// A message arrived on local connection `conn` at `now_ns`.
    fn message(
        &mut self,
        conn: usize,
        opcode: OpCode,
        payload: &[u8],
        now_ns: u64,
        out: &mut Outbox<'_>,
    );
    /// No more sends from now on (replies included).
    fn stop(&mut self);
    /// Everything `expect` implies has arrived on this thread's connections that are still
    /// open (`open[conn]`).
    fn drained(&self, expect: &Expect, open: &[bool]) -> bool;
    /// Messages each publisher of this thread sent, by publisher id (empty for echo).
    fn published(&self) -> Vec<u64>;
    /// The counts so far (for progress lines).
    fn tally(&mut self) -> &mut Tally;
    /// The final counts, `expected` and `missing` computed from `expect`.
    fn finish(&mut self, expect: &Expect, open_at_go: &[bool]) -> Tally;
}

/// The hooks of a scenario's own senders outside the client threads (HTTP publishers).
pub trait Senders {
    /// Traffic starts at `start_ns`.
    fn go(&mut self, start_ns: u64);
    /// Stop sending and wait until every sender has stopped.
    fn stop(&mut self);
    /// What the client threads' publishers sent (`sent_by_threads`), plus the senders' own.
    fn expect(&self, sent_by_threads: &Expect) -> Expect;
    /// Messages the senders sent (accepted by the server).
    fn sent(&self) -> u64;
    /// Sends that failed (requests refused or lost), if the senders count them.
    fn errors(&self) -> u64;
}

/// No senders besides the client threads.
pub struct NoSenders;

impl Senders for NoSenders {
    fn go(&mut self, _: u64) {}
    fn stop(&mut self) {}
    fn expect(&self, sent_by_threads: &Expect) -> Expect {
        sent_by_threads.clone()
    }
    fn sent(&self) -> u64 {
        0
    }
    fn errors(&self) -> u64 {
        0
    }
}

/// Where a [`Workload`] queues frames.
pub struct Outbox<'a> {
    net: &'a mut Net,
}

impl Outbox<'_> {
    /// Whether local connection `conn` is open (handshake done, not closing).
    pub fn is_open(&self, conn: usize) -> bool {
        matches!(&self.net.slots[conn].conn, Conn::Open(o) if o.closing.is_none())
    }

    /// Queues one message on `conn`, masked with a fresh key. False if it is not open.
    pub fn send(&mut self, conn: usize, opcode: OpCode, payload: &[u8]) -> bool {
        let Conn::Open(o) = &mut self.net.slots[conn].conn else {
            return false;
        };
        if o.closing.is_some() {
            return false;
        }
        let Some(frame) = o.ws.encode(opcode, payload) else {
            return false;
        };
        self.net.queue(conn, frame);
        true
    }
}

/// What a run measured, before it becomes a report.
pub struct Outcome {
    /// Messages, merged over threads.
    pub tally: Tally,
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
    /// Closing handshake latency at the end, for clean closes: our close frame queued to the
    /// server's FIN, µs.
    pub closing: Histogram<u64>,
    /// Time from the first connection until every connection had settled, or the wait for
    /// them ended (limit or Ctrl-C).
    pub ramp: Duration,
    /// Time with traffic (Go to Stop).
    pub duration: Duration,
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
    /// [`Settings::close_cpu`] (`None` without it, or if the server could not be read).
    pub close_cpu_s: Option<f64>,
}

/// Runs a scenario: `work` builds each thread's [`Workload`] from its thread id and plan.
///
/// # Errors
///
/// [`LoadError::ServerPid`] if the server cannot be read at the start, [`LoadError::Thread`]
/// if a client thread fails.
pub fn run<W: Workload>(
    settings: &Settings,
    features: ClientFeatures,
    work: impl Fn(usize, Plan) -> W + Send + Sync + 'static,
    senders: &mut dyn Senders,
) -> Result<Outcome, LoadError> {
    let threads = settings.threads_used();
    let progress: Arc<[Progress]> = (0..threads).map(|_| Progress::default()).collect();
    let work = Arc::new(work);
    let (events_tx, events) = mpsc::channel();
    let mut commands = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for id in 0..threads {
        let (command_tx, command_rx) = mpsc::channel();
        commands.push(command_tx);
        let plan = Plan::of_thread(id, threads, settings.connections);
        let setup = ThreadSetup {
            id,
            plan,
            settings: settings.clone(),
            features,
            commands: command_rx,
            events: events_tx.clone(),
            progress: Arc::clone(&progress),
        };
        let work = Arc::clone(&work);
        let handle = std::thread::Builder::new()
            .name(format!("uringcast-load-{id}"))
            .spawn(move || {
                super::pin_thread(id);
                let w = work(id, plan);
                setup.run(w);
            })
            .map_err(|source| LoadError::Thread { id, source })?;
        handles.push(handle);
    }
    drop(events_tx);
    let mut coordinator = Coordinator {
        settings,
        commands,
        handles,
        events,
        progress,
        results: Vec::new(),
        sent: Expect::default(),
        line: ProgressLine::new(settings.progress == ProgressStyle::Live),
        first_connection: Instant::now(),
    };
    let result = coordinator.drive(senders);
    coordinator.stop_and_join();
    result
}

/// The coordinating side of a run.
struct Coordinator<'a> {
    settings: &'a Settings,
    commands: Vec<Sender<Command>>,
    handles: Vec<JoinHandle<()>>,
    events: Receiver<Event>,
    progress: Arc<[Progress]>,
    results: Vec<ThreadResult>,
    /// What the threads' publishers sent, summed as they stop.
    sent: Expect,
    line: ProgressLine,
    /// When the first connection was due: the zero of [`ProgressStyle::Connections`] lines.
    first_connection: Instant,
}

/// The event a coordinator waits for from every thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Ready,
    Connected,
    Stopped,
    Drained,
}

impl Coordinator<'_> {
    fn drive(&mut self, senders: &mut dyn Senders) -> Result<Outcome, LoadError> {
        let threads = self.commands.len();
        self.wait_all(threads, None, Wait::Ready)?;
        let settings = self.settings;
        let server_before = settings
            .server_pid
            .map(|pid| {
                ProcessSample::read(pid).map_err(|source| LoadError::ServerPid { pid, source })
            })
            .transpose()?;
        let slab_before = procfs::slab_bytes().ok();
        let start = Instant::now();
        self.first_connection = start;
        self.broadcast(|| Command::Connect(start));
        let connect_limit = start
            + Duration::from_secs_f64(settings.connections as f64 / settings.connect_rate)
            + settings.handshake_timeout
            + Duration::from_secs(30);
        let connected = self.wait_all(threads, Some(connect_limit), Wait::Connected)?;
        let connected_at = Instant::now();
        if !connected && !interrupt::requested() {
            eprintln!(
                "uringcast-load: connecting did not settle in time; going on with what is open"
            );
        }
        if settings.progress == ProgressStyle::Connections {
            self.print_connections();
        }
        let reached = self.sum(|p| &p.open);
        let server_connected = settings
            .server_pid
            .and_then(|pid| ProcessSample::read(pid).ok());

        // Traffic.
        let client_before = procfs::own_cpu_ticks();
        let go = Instant::now() + GO_DELAY;
        let go_ns = stamp::now_ns() + GO_DELAY.as_nanos() as u64;
        self.broadcast(|| Command::Go(go_ns));
        senders.go(go_ns);
        std::thread::sleep(go.saturating_duration_since(Instant::now()));
        let server_go = settings
            .server_pid
            .and_then(|pid| ProcessSample::read(pid).ok());
        let end = go + settings.duration;
        let mut next_print = go + PROGRESS_EVERY;
        let mut last = (go, 0u64);
        let mut interrupted = interrupt::requested();
        while !interrupted {
            let now = Instant::now();
            if now >= end {
                break;
            }
            match self
                .events
                .recv_timeout(next_print.min(end).min(now + POLL) - now)
            {
                Ok(Event::Failed(id, source)) => return Err(LoadError::Thread { id, source }),
                Ok(Event::Finished(r)) => self.results.push(*r),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(thread_vanished()),
            }
            interrupted = interrupt::requested();
            if Instant::now() >= next_print {
                match settings.progress {
                    ProgressStyle::Live => last = self.print_progress(go, last),
                    ProgressStyle::Connections => self.print_connections(),
                    ProgressStyle::Off => {}
                }
                next_print += PROGRESS_EVERY;
            }
        }
        // The stop sample: what holding the connections cost, before any of them closes.
        let stopped_at = Instant::now();
        let client_rss_bytes = procfs::own_rss_bytes();
        let held = self.sum(|p| &p.open);
        let server_stop = settings
            .server_pid
            .map(|pid| ProcessSample::read(pid).map_err(|error| error.to_string()));
        let slab_stop = procfs::slab_bytes().ok();
        self.broadcast(|| Command::Stop);
        senders.stop();
        let stop_limit = Instant::now() + settings.drain_timeout + STRAGGLER_WAIT;
        self.wait_all(threads, Some(stop_limit), Wait::Stopped)?;
        let expect = senders.expect(&self.sent);
        let drain = if interrupted {
            settings.drain_timeout.min(Duration::from_secs(1))
        } else {
            settings.drain_timeout
        };
        self.broadcast(|| Command::Drain(expect.clone(), drain));
        let drain_limit = Instant::now() + drain + STRAGGLER_WAIT;
        self.wait_all(threads, Some(drain_limit), Wait::Drained)?;
        let client_after = procfs::own_cpu_ticks();
        let server_end = settings
            .server_pid
            .and_then(|pid| ProcessSample::read(pid).ok());
        self.line.finish();

        // Close.
        self.broadcast(|| Command::Close);
        self.wait_closed(threads)?;
        let threads_missing = (threads - self.results.len()) as u64;
        if threads_missing > 0 {
            eprintln!(
                "uringcast-load: {threads_missing} client thread(s) never finished; their \
                 figures are missing"
            );
        }
        let finished = Instant::now();
        let ticks = procfs::clock_ticks_per_second() as f64;
        let server = match (settings.server_pid, server_before, server_stop) {
            (Some(pid), Some(before), Some(stop)) => {
                let connected = server_connected.unwrap_or(before);
                let go = server_go.unwrap_or(connected);
                let end = server_end.unwrap_or(go);
                let stop = stop.map(|stop| {
                    let settled = if settings.close_cpu {
                        settle_cpu(pid)
                    } else {
                        None
                    };
                    StopSample {
                        cpu_s: stop.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / ticks,
                        rss_bytes: stop.rss_bytes,
                        close_cpu_s: settled
                            .map(|after| after.saturating_sub(stop.cpu_ticks) as f64 / ticks),
                    }
                });
                Some(ServerSamples {
                    pid,
                    cpu_s: end.cpu_ticks.saturating_sub(go.cpu_ticks) as f64 / ticks,
                    rss_before_bytes: before.rss_bytes,
                    rss_connected_bytes: connected.rss_bytes,
                    rss_bytes: end.rss_bytes,
                    stop,
                })
            }
            _ => None,
        };
        let mut sum = ThreadResult::empty();
        sum.tally.sent += senders.sent();
        sum.diagnostics.threads_missing = threads_missing;
        for r in &self.results {
            sum.merge(r);
        }
        Ok(Outcome {
            tally: sum.tally,
            target: settings.connections,
            reached,
            held,
            established: sum.established,
            failed: sum.failed,
            dropped: sum.dropped,
            closed_clean: sum.closed_clean,
            closed_forced: sum.closed_forced,
            closed_abandoned: sum.closed_abandoned,
            handshake: sum.handshake,
            tcp_connect: sum.tcp_connect,
            closing: sum.closing,
            ramp: connected_at.saturating_duration_since(start),
            duration: stopped_at.saturating_duration_since(go),
            elapsed: finished.saturating_duration_since(start),
            interrupted,
            server,
            client_cpu_s: client_after.saturating_sub(client_before) as f64 / ticks,
            client_rss_bytes,
            slab: slab_before.zip(slab_stop),
            diagnostics: sum.diagnostics,
            sender_errors: senders.errors(),
        })
    }

    /// Waits for every thread to finish closing. Each gives up on its closes after the close
    /// timeout and the drain grace; a thread later than that is stuck in the kernel or starved
    /// of CPU: wait for it a while longer (its figures are part of the report), then go on
    /// without it.
    fn wait_closed(&mut self, threads: usize) -> Result<(), LoadError> {
        let expected = Instant::now() + self.settings.close_timeout + DRAIN_GRACE * 2;
        let give_up = expected + STRAGGLER_WAIT;
        let mut warned = false;
        while self.results.len() < threads {
            let now = Instant::now();
            if now >= give_up {
                break;
            }
            if now >= expected && !warned {
                warned = true;
                eprintln!(
                    "uringcast-load: {} client thread(s) still closing; waiting up to {} s more",
                    threads - self.results.len(),
                    STRAGGLER_WAIT.as_secs()
                );
            }
            let wait = if warned { give_up } else { expected } - now;
            match self.events.recv_timeout(wait) {
                Ok(Event::Finished(r)) => self.results.push(*r),
                Ok(Event::Failed(id, source)) => return Err(LoadError::Thread { id, source }),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(())
    }

    /// Waits until every thread has sent an event `is`; false at `limit` or on Ctrl-C.
    fn wait_all(
        &mut self,
        threads: usize,
        limit: Option<Instant>,
        wait_for: Wait,
    ) -> Result<bool, LoadError> {
        let mut seen = 0;
        let start = Instant::now();
        let mut next_print = start + PROGRESS_EVERY;
        while seen < threads {
            let now = Instant::now();
            if limit.is_some_and(|l| now >= l) {
                return Ok(false);
            }
            let wait = limit.map_or(POLL, |l| (l - now).min(POLL));
            match self.events.recv_timeout(wait) {
                Ok(Event::Failed(id, source)) => return Err(LoadError::Thread { id, source }),
                Ok(Event::Finished(r)) => {
                    // A thread that ended early (its ring failed) counts as done everywhere.
                    self.results.push(*r);
                    seen += 1;
                }
                Ok(Event::Stopped(sent)) => {
                    merge_expect(&mut self.sent, &sent);
                    seen += usize::from(wait_for == Wait::Stopped);
                }
                Ok(Event::Ready) => seen += usize::from(wait_for == Wait::Ready),
                Ok(Event::Connected) => seen += usize::from(wait_for == Wait::Connected),
                Ok(Event::Drained) => seen += usize::from(wait_for == Wait::Drained),
                Err(RecvTimeoutError::Timeout) => {
                    // Ctrl-C ends the wait for connections; later waits are bounded anyway.
                    if wait_for == Wait::Connected && interrupt::requested() {
                        return Ok(false);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err(thread_vanished()),
            }
            if Instant::now() >= next_print {
                next_print += PROGRESS_EVERY;
                match self.settings.progress {
                    ProgressStyle::Live => self.line.print(&format!(
                        "[{:6.1}s] connecting: open {}/{}  failed {}",
                        start.elapsed().as_secs_f64(),
                        self.sum(|p| &p.open),
                        self.settings.connections,
                        self.sum(|p| &p.errors),
                    )),
                    ProgressStyle::Connections => self.print_connections(),
                    ProgressStyle::Off => {}
                }
            }
        }
        Ok(true)
    }

    fn broadcast(&self, command: impl Fn() -> Command) {
        for tx in &self.commands {
            let _ = tx.send(command());
        }
    }

    fn sum(&self, field: impl Fn(&Progress) -> &AtomicU64) -> u64 {
        self.progress
            .iter()
            .map(|p| field(p).load(Ordering::Relaxed))
            .sum()
    }

    /// Prints the live line; returns the time and received count it was computed from.
    fn print_progress(&mut self, go: Instant, last: (Instant, u64)) -> (Instant, u64) {
        let now = Instant::now();
        let received = self.sum(|p| &p.received);
        let rate = (received - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-9);
        let p99 = self
            .progress
            .iter()
            .map(|p| p.p99_us.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        self.line.print(&format!(
            "[{:6.1}s] conns {}/{}  sent {}  received {}  {:.0} msgs/s  p99 {} µs  errors {}",
            (now - go).as_secs_f64(),
            self.sum(|p| &p.open),
            self.settings.connections,
            self.sum(|p| &p.sent),
            received,
            rate,
            p99,
            self.sum(|p| &p.errors),
        ));
        (now, received)
    }

    /// Prints a [`ProgressStyle::Connections`] line.
    fn print_connections(&self) {
        eprintln!(
            "[{:7.1}s] established {}/{}  open {}  connecting {}  failed {}  dropped {}",
            self.first_connection.elapsed().as_secs_f64(),
            self.sum(|p| &p.established),
            self.settings.connections,
            self.sum(|p| &p.open),
            self.sum(|p| &p.connecting),
            self.sum(|p| &p.failed),
            self.sum(|p| &p.dropped),
        );
    }

    fn stop_and_join(&mut self) {
        self.broadcast(|| Command::Close);
        for handle in self.handles.drain(..) {
            if handle.join().is_err() {
                eprintln!("uringcast-load: a client thread panicked");
            }
        }
    }
}

fn merge_expect(into: &mut Expect, from: &Expect) {
    if into.per_publisher.len() < from.per_publisher.len() {
        into.per_publisher.resize(from.per_publisher.len(), 0);
    }
    for (a, b) in into.per_publisher.iter_mut().zip(&from.per_publisher) {
        *a += b;
    }
}

/// The (source, target) address indices of global connection `global` with `sources` source
/// addresses (0: the kernel picks, `None`) and `targets` (at least 1) server addresses: sources
/// turn fastest, then targets, so any `sources x targets` consecutive connections use every
/// pair once.
fn address_pair(global: u64, sources: usize, targets: usize) -> (Option<usize>, usize) {
    let source = (sources > 0).then(|| (global % sources as u64) as usize);
    let target = (global / sources.max(1) as u64 % targets.max(1) as u64) as usize;
    (source, target)
}

/// The server's CPU ticks once it has stopped using CPU (it tears connections down after our
/// side has closed): unchanged over two readings [`SETTLE_EVERY`] apart, within [`SETTLE_MAX`].
fn settle_cpu(pid: u32) -> Option<u64> {
    let deadline = Instant::now() + SETTLE_MAX;
    let mut last = ProcessSample::read(pid).ok()?.cpu_ticks;
    let mut unchanged = 0;
    while unchanged < 2 && Instant::now() < deadline {
        std::thread::sleep(SETTLE_EVERY);
        let now = ProcessSample::read(pid).ok()?.cpu_ticks;
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
    }
    Some(last)
}

fn thread_vanished() -> LoadError {
    LoadError::Thread {
        id: usize::MAX,
        source: io::Error::other("a client thread exited without reporting"),
    }
}

/// One progress line on stderr, rewritten in place, only when stderr is a terminal.
struct ProgressLine {
    on: bool,
    printed: bool,
}

impl ProgressLine {
    fn new(wanted: bool) -> Self {
        Self {
            on: wanted && io::stderr().is_terminal(),
            printed: false,
        }
    }

    fn print(&mut self, line: &str) {
        if self.on {
            let mut err = io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            self.printed = true;
        }
    }

    fn finish(&mut self) {
        if self.printed {
            eprintln!();
            self.printed = false;
        }
    }
}

/// From the coordinator to a thread.
enum Command {
    /// Open the connections: global connection `i` is due at this instant plus
    /// `i / connect_rate`.
    Connect(Instant),
    /// Traffic starts at this `CLOCK_MONOTONIC` time.
    Go(u64),
    /// Stop sending.
    Stop,
    /// Wait for what `Expect` implies, at most this long.
    Drain(Expect, Duration),
    /// Close every connection and finish.
    Close,
}

/// From a thread to the coordinator.
enum Event {
    Ready,
    Connected,
    /// Sending stopped; what this thread's publishers sent.
    Stopped(Expect),
    Drained,
    Finished(Box<ThreadResult>),
    Failed(usize, io::Error),
}

/// Live counters of one thread.
#[derive(Default)]
struct Progress {
    established: AtomicU64,
    connecting: AtomicU64,
    open: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    /// p99 of the latencies recorded since the last progress line, µs.
    p99_us: AtomicU64,
}

/// What a thread measured.
struct ThreadResult {
    tally: Tally,
    /// Open chain submitted to the verified 101, µs.
    handshake: Histogram<u64>,
    /// Open chain submitted to the connect's completion (the TCP handshake), µs.
    tcp_connect: Histogram<u64>,
    /// Our close frame queued to the server's FIN, µs, for clean closes.
    closing: Histogram<u64>,
    failed: Failures,
    dropped: Failures,
    established: u64,
    closed_clean: u64,
    closed_forced: u64,
    closed_abandoned: u64,
    diagnostics: Diagnostics,
}

impl ThreadResult {
    /// Nothing measured yet: what the coordinator sums the threads' results into.
    fn empty() -> Self {
        Self {
            tally: Tally::default(),
            handshake: new_histogram(),
            tcp_connect: new_histogram(),
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
    fn merge(&mut self, other: &Self) {
        self.tally.merge(&other.tally);
        // Same bounds and precision everywhere: adding cannot fail.
        let _ = self.handshake.add(&other.handshake);
        let _ = self.tcp_connect.add(&other.tcp_connect);
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

struct ThreadSetup {
    id: usize,
    plan: Plan,
    settings: Settings,
    features: ClientFeatures,
    commands: Receiver<Command>,
    events: Sender<Event>,
    progress: Arc<[Progress]>,
}

impl ThreadSetup {
    fn run<W: Workload>(self, work: W) {
        let slots = u32::try_from(self.plan.count).unwrap_or(u32::MAX).max(1);
        // Built here: with SINGLE_ISSUER the ring belongs to the thread that made it.
        let ring = match ClientRing::new(
            self.features,
            slots,
            &self.settings.targets,
            &self.settings.sources,
            self.settings.recv,
        ) {
            Ok(ring) => ring,
            Err(error) => {
                let what = format!("cannot set up a ring with {slots} direct descriptor slots");
                let _ = self.events.send(Event::Failed(
                    self.id,
                    io::Error::new(error.kind(), format!("{what}: {error}")),
                ));
                return;
            }
        };
        let _ = self.events.send(Event::Ready);
        let mut thread = Thread {
            ring,
            net: Net::new(&self, self.features.recv_bundle),
            work,
            phase: Phase::Idle,
            expect: Expect::default(),
            open_at_go: Vec::new(),
            next_due: None,
            next_interval: Instant::now() + PROGRESS_EVERY,
        };
        let result = thread.run(&self.commands, &self.events);
        match result {
            Ok(()) => {
                let result = thread.finish();
                let _ = self.events.send(Event::Finished(Box::new(result)));
            }
            Err(error) => {
                let _ = self.events.send(Event::Failed(self.id, error));
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for `Connect`.
    Idle,
    /// Opening connections from this instant.
    Connecting(Instant),
    /// All connections settled; waiting for `Go`.
    Connected,
    /// Traffic.
    Running,
    /// Sending stopped; waiting for `Drain`.
    Stopped,
    /// Waiting for what is in flight, until this instant.
    Draining(Instant),
    /// Drained; waiting for `Close`.
    Drained,
    /// Closing handshakes since this instant.
    Closing(Instant),
}

/// One client thread: its ring, its connections, and its share of the scenario.
struct Thread<W> {
    // Field order is drop order: the ring (and what the kernel may touch) goes first.
    ring: ClientRing,
    net: Net,
    work: W,
    phase: Phase,
    expect: Expect,
    open_at_go: Vec<bool>,
    next_due: Option<u64>,
    next_interval: Instant,
}

impl<W: Workload> Thread<W> {
    fn run(&mut self, commands: &Receiver<Command>, events: &Sender<Event>) -> io::Result<()> {
        loop {
            let now = Instant::now();
            loop {
                match commands.try_recv() {
                    Ok(command) => self.command(command, now, events),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if !matches!(self.phase, Phase::Closing(_)) {
                            self.phase = Phase::Closing(now);
                        }
                        break;
                    }
                }
            }
            let ops = self.ring.ops();
            match self.phase {
                Phase::Idle | Phase::Connected | Phase::Stopped | Phase::Drained => {}
                Phase::Connecting(start) => {
                    self.net.start_due(ops, start, now);
                    if self.net.next == self.net.plan.count && self.net.connecting == 0 {
                        self.phase = Phase::Connected;
                        let _ = events.send(Event::Connected);
                    }
                }
                Phase::Running => {
                    let now_ns = stamp::now_ns();
                    self.next_due = self.work.due(now_ns, &mut Outbox { net: &mut self.net });
                }
                Phase::Draining(deadline) => {
                    let open: Vec<bool> = self
                        .net
                        .slots
                        .iter()
                        .map(|s| matches!(s.conn, Conn::Open(_)))
                        .collect();
                    if self.work.drained(&self.expect, &open) || now >= deadline {
                        self.phase = Phase::Drained;
                        let _ = events.send(Event::Drained);
                    }
                }
                Phase::Closing(since) => {
                    self.net.close_batch(ops, now);
                    if self.net.all_free() && ops.in_flight() == 0 {
                        return Ok(());
                    }
                    if now >= since + self.net.close_timeout + DRAIN_GRACE {
                        return Ok(());
                    }
                }
            }
            let ops = self.ring.ops();
            self.net.expire(ops, now);
            self.net.rearm_starved(ops);
            self.net.flush(ops);
            if let Some(error) = self.net.ring_error.take() {
                return Err(error);
            }
            let timeout = self.next_wake(now);
            self.ring.submit_and_wait(timeout)?;
            let net = &mut self.net;
            let work = &mut self.work;
            self.ring
                .reap(|ops, completion| net.complete(ops, work, completion));
            if let Some(error) = self.net.ring_error.take() {
                return Err(error);
            }
            self.publish_progress(now);
        }
    }

    fn command(&mut self, command: Command, now: Instant, events: &Sender<Event>) {
        match command {
            Command::Connect(start) if self.phase == Phase::Idle => {
                self.phase = Phase::Connecting(start);
            }
            Command::Go(start_ns)
                if self.phase == Phase::Connected || self.phase == Phase::Idle =>
            {
                self.open_at_go = (0..self.net.slots.len())
                    .map(|i| matches!(self.net.slots[i].conn, Conn::Open(_)))
                    .collect();
                self.phase = Phase::Running;
                self.work
                    .start(start_ns, &mut Outbox { net: &mut self.net });
                self.next_due = Some(start_ns);
            }
            Command::Go(_) => {}
            Command::Stop => {
                if matches!(
                    self.phase,
                    Phase::Connecting(_) | Phase::Connected | Phase::Idle
                ) {
                    self.open_at_go = vec![false; self.net.slots.len()];
                }
                self.work.stop();
                self.next_due = None;
                self.phase = Phase::Stopped;
                let _ = events.send(Event::Stopped(Expect {
                    per_publisher: self.work.published(),
                }));
            }
            Command::Drain(expect, timeout) => {
                self.expect = expect;
                self.phase = Phase::Draining(now + timeout);
            }
            Command::Close => {
                if !matches!(self.phase, Phase::Closing(_)) {
                    self.phase = Phase::Closing(now);
                }
            }
            Command::Connect(_) => {}
        }
    }

    fn next_wake(&self, now: Instant) -> Duration {
        let mut wait = POLL;
        match self.phase {
            Phase::Connecting(start) if self.net.next < self.net.plan.count => {
                wait = wait.min(
                    self.net
                        .due(start, self.net.next)
                        .saturating_duration_since(now),
                );
            }
            Phase::Running => {
                if let Some(due) = self.next_due {
                    let now_ns = stamp::now_ns();
                    wait = wait.min(Duration::from_nanos(due.saturating_sub(now_ns)));
                }
            }
            _ => {}
        }
        if let Some(at) = self.net.next_deadline() {
            wait = wait.min(at.saturating_duration_since(now));
        }
        wait
    }

    fn publish_progress(&mut self, now: Instant) {
        let p = &self.net.progress[self.net.id];
        let tally = self.work.tally();
        p.established.store(self.net.established, Ordering::Relaxed);
        p.connecting.store(self.net.connecting, Ordering::Relaxed);
        p.open.store(self.net.open, Ordering::Relaxed);
        p.failed.store(self.net.failed.total(), Ordering::Relaxed);
        p.dropped.store(self.net.dropped.total(), Ordering::Relaxed);
        p.sent.store(tally.sent, Ordering::Relaxed);
        p.received.store(tally.received, Ordering::Relaxed);
        p.errors.store(
            tally.errors() + self.net.failed.total() + self.net.dropped.total(),
            Ordering::Relaxed,
        );
        if now >= self.next_interval {
            self.next_interval = now + PROGRESS_EVERY;
            let interval = &mut tally.interval;
            let p99 = if interval.is_empty() {
                0
            } else {
                interval.value_at_quantile(0.99)
            };
            interval.reset();
            p.p99_us.store(p99, Ordering::Relaxed);
        }
    }

    fn finish(mut self) -> ThreadResult {
        let tally = self.work.finish(&self.expect, &self.open_at_go);
        let ops = self.ring.ops();
        let mut diagnostics = self.net.diagnostics;
        diagnostics.rings_leaked = u64::from(ops.in_flight() > 0);
        diagnostics.stale_completions += ops.unknown_completions();
        diagnostics.cq_overflow = u64::from(self.ring.overflow());
        // Connections still open when the thread gave up: closed by the kernel as the ring goes.
        let closed_abandoned = self
            .net
            .slots
            .iter()
            .filter(|slot| match &slot.conn {
                Conn::Connecting(_) => true,
                // One the server closed is counted as dropped already.
                Conn::Open(o) => !o.server_closed,
                Conn::Free | Conn::Closing => false,
            })
            .count() as u64;
        self.publish_progress(Instant::now());
        let Self { ring, net, .. } = self;
        // The ring goes first: it leaks its buffers if the kernel still holds operations.
        drop(ring);
        ThreadResult {
            tally,
            handshake: net.handshake,
            tcp_connect: net.tcp_connect,
            closing: net.closing,
            failed: net.failed,
            dropped: net.dropped,
            established: net.established,
            closed_clean: net.closed_clean,
            closed_forced: net.closed_forced,
            closed_abandoned,
            diagnostics,
        }
    }
}

/// A connection's masks come from the thread's random source (RFC 6455 §5.3).
type ClientMasks = ClientSide<fn() -> [u8; 4]>;

fn random_mask() -> [u8; 4] {
    rand::random()
}

/// One direct descriptor slot and the connection in it (one connection per slot, never
/// reopened: a connection lost mid-run stays lost and is counted).
struct Slot {
    generation: u32,
    /// Submissions on this slot whose final completion has not arrived.
    pending: u32,
    recv_armed: bool,
    conn: Conn,
}

enum Conn {
    Free,
    Connecting(Box<Connecting>),
    Open(Box<Open>),
    /// Shutdown or cancel, then close, submitted; the slot frees when `pending` reaches 0.
    Closing,
}

struct Connecting {
    started: Instant,
    handshake: ClientHandshake,
    /// The upgrade request, kept to resend the rest after a short send.
    request: Bytes,
    sent: usize,
    connected: bool,
}

struct Open {
    ws: WebSocket<ClientMasks>,
    /// The start of a frame header split across receives (under 14 bytes).
    spill: Vec<u8>,
    /// Frames waiting for the next send.
    queued: Vec<Bytes>,
    /// The bytes of the send in flight, to resend the rest after a short send.
    sending: Option<Bytes>,
    /// When our close frame was queued (we closed) or the server's close arrived.
    closing: Option<Instant>,
    /// The server closed first: already counted as dropped.
    server_closed: bool,
    /// The server's close frame arrived.
    close_received: bool,
}

#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    slot: u32,
    generation: u32,
}

/// A thread's connections: everything of a thread but its ring and its workload.
struct Net {
    id: usize,
    plan: Plan,
    host: String,
    path: String,
    sources: usize,
    /// Server addresses (at least one).
    targets: usize,
    /// New connections per second over all threads.
    rate: f64,
    handshake_timeout: Duration,
    close_timeout: Duration,
    bundle: bool,
    /// Connections of the plan opened so far.
    next: u64,
    slots: Vec<Slot>,
    /// Connections with frames queued and no send in flight.
    dirty: Vec<u32>,
    handshake_deadlines: VecDeque<Deadline>,
    close_deadlines: VecDeque<Deadline>,
    /// Connections whose receive ended for want of buffers: re-armed next turn.
    starved: Vec<u32>,
    close_cursor: usize,
    connecting: u64,
    open: u64,
    established: u64,
    closed_clean: u64,
    closed_forced: u64,
    handshake: Histogram<u64>,
    tcp_connect: Histogram<u64>,
    closing: Histogram<u64>,
    failed: Failures,
    dropped: Failures,
    diagnostics: Diagnostics,
    progress: Arc<[Progress]>,
    ring_error: Option<io::Error>,
}

impl Net {
    fn new(setup: &ThreadSetup, bundle: bool) -> Self {
        let count = usize::try_from(setup.plan.count).unwrap_or(usize::MAX);
        Self {
            id: setup.id,
            plan: setup.plan,
            host: setup.settings.target.host.clone(),
            path: setup.settings.target.path.clone(),
            sources: setup.settings.sources.len(),
            targets: setup.settings.targets.len().max(1),
            rate: setup.settings.connect_rate,
            handshake_timeout: setup.settings.handshake_timeout,
            close_timeout: setup.settings.close_timeout,
            bundle,
            next: 0,
            slots: (0..count)
                .map(|_| Slot {
                    generation: 0,
                    pending: 0,
                    recv_armed: false,
                    conn: Conn::Free,
                })
                .collect(),
            dirty: Vec::new(),
            handshake_deadlines: VecDeque::new(),
            close_deadlines: VecDeque::new(),
            starved: Vec::new(),
            close_cursor: 0,
            connecting: 0,
            open: 0,
            established: 0,
            closed_clean: 0,
            closed_forced: 0,
            handshake: new_histogram(),
            tcp_connect: new_histogram(),
            closing: new_histogram(),
            failed: Failures::default(),
            dropped: Failures::default(),
            diagnostics: Diagnostics::default(),
            progress: Arc::clone(&setup.progress),
            ring_error: None,
        }
    }

    /// When local connection `next` is due: `start + global index / rate`, so the threads'
    /// connections interleave into one steady ramp.
    fn due(&self, start: Instant, next: u64) -> Instant {
        start + Duration::from_secs_f64(self.plan.global(next as usize) as f64 / self.rate)
    }

    fn all_free(&self) -> bool {
        self.slots
            .iter()
            .all(|s| matches!(s.conn, Conn::Free) && s.pending == 0)
    }

    fn next_deadline(&self) -> Option<Instant> {
        [&self.handshake_deadlines, &self.close_deadlines]
            .iter()
            .filter_map(|d| d.front().map(|d| d.at))
            .min()
    }

    fn start_due(&mut self, ops: &mut Ops, start: Instant, now: Instant) {
        let mut started = 0;
        while self.next < self.plan.count && started < MAX_STARTS_PER_TURN {
            if self.due(start, self.next) > now {
                break;
            }
            let local = self.next as usize;
            self.next += 1;
            started += 1;
            self.open_one(ops, local, now);
        }
    }

    fn open_one(&mut self, ops: &mut Ops, local: usize, now: Instant) {
        let key: [u8; 16] = rand::random();
        let (handshake, request) = ClientHandshake::new(&self.host, &self.path, key, &[]);
        let request = Bytes::from(request);
        let global = self.plan.global(local);
        let (source, target) = address_pair(global, self.sources, self.targets);
        let slot = &mut self.slots[local];
        match ops.open(
            local as u32,
            slot.generation,
            source,
            target,
            request.clone(),
        ) {
            Ok(Ok(chain)) => {
                slot.pending += chain;
                slot.conn = Conn::Connecting(Box::new(Connecting {
                    started: now,
                    handshake,
                    request,
                    sent: 0,
                    connected: false,
                }));
                self.connecting += 1;
                self.handshake_deadlines.push_back(Deadline {
                    at: now + self.handshake_timeout,
                    slot: local as u32,
                    generation: slot.generation,
                });
            }
            Ok(Err(busy)) => unreachable!("a fresh slot has no send in flight: {busy}"),
            Err(error) => {
                self.ring_error.get_or_insert(error);
            }
        }
    }

    fn complete<W: Workload>(&mut self, ops: &mut Ops, work: &mut W, c: Completion<'_>) {
        let index = c.op.key as usize;
        let Some(slot) = self.slots.get_mut(index) else {
            self.diagnostics.stale_completions += 1;
            return;
        };
        if slot.generation != c.op.generation {
            self.diagnostics.stale_completions += 1;
            return;
        }
        if !c.more {
            slot.pending = slot.pending.saturating_sub(1);
        }
        match c.op.kind {
            OpKind::Socket | OpKind::SockOpt | OpKind::Bind | OpKind::Connect => {
                self.on_chain(ops, index, c.op.kind, c.result);
            }
            OpKind::Send => self.on_send(ops, index, c.result),
            OpKind::Recv => self.on_recv(ops, work, index, c),
            OpKind::Shutdown | OpKind::Cancel | OpKind::Close => {}
        }
        self.maybe_free(index);
    }

    fn on_chain(&mut self, ops: &mut Ops, index: usize, kind: OpKind, result: i32) {
        if result == -libc::ECANCELED {
            // A link after a failed one, or our cancel: the failure is counted already.
            return;
        }
        if result < 0 {
            let (failure, detail) = classify(kind, -result);
            self.fail(ops, index, failure, detail);
            return;
        }
        if kind == OpKind::Connect {
            if let Conn::Connecting(c) = &mut self.slots[index].conn {
                c.connected = true;
                self.tcp_connect.saturating_record(micros_since(c.started));
                // Armed now, beside the linked send: the response cannot beat the request.
                self.arm_recv(ops, index);
            }
        }
    }

    fn on_send(&mut self, ops: &mut Ops, index: usize, result: i32) {
        let slot = &mut self.slots[index];
        let generation = slot.generation;
        match &mut slot.conn {
            Conn::Connecting(c) => {
                if result < 0 {
                    if result != -libc::ECANCELED {
                        let (failure, detail) = classify(OpKind::Send, -result);
                        self.fail(ops, index, failure, detail);
                    }
                    return;
                }
                c.sent += result as usize;
                if c.sent < c.request.len() {
                    let rest = c.request.slice(c.sent..);
                    self.send(ops, index, generation, rest);
                }
            }
            Conn::Open(o) => {
                let sending = o.sending.take();
                if result < 0 {
                    if result != -libc::ECANCELED {
                        let detail = format!("send: {}", io::Error::from_raw_os_error(-result));
                        self.end_open(ops, index, detail);
                    }
                    return;
                }
                if let Some(bytes) = sending {
                    if (result as usize) < bytes.len() {
                        // A short send: the rest goes first, before anything queued since.
                        let rest = bytes.slice(result as usize..);
                        o.sending = Some(rest.clone());
                        self.send(ops, index, generation, rest);
                        return;
                    }
                }
                if !o.queued.is_empty() {
                    self.flush_one(ops, index);
                }
            }
            Conn::Free | Conn::Closing => {}
        }
    }

    fn on_recv<W: Workload>(
        &mut self,
        ops: &mut Ops,
        work: &mut W,
        index: usize,
        c: Completion<'_>,
    ) {
        if !c.more {
            self.slots[index].recv_armed = false;
        }
        match (c.result, c.data) {
            (n, Some(mut data)) if n > 0 => {
                let now_ns = stamp::now_ns();
                data.for_each(|bytes| self.on_bytes(ops, work, index, bytes, now_ns));
            }
            (0, _) => self.on_eof(ops, index),
            (n, _) if n > 0 => {
                // Bytes without a buffer: the kernel broke its contract; drop the connection.
                self.end(
                    ops,
                    index,
                    Failure::Other,
                    "recv: data without a buffer".into(),
                );
            }
            (n, _) => match -n {
                libc::ENOBUFS => {
                    self.diagnostics.recv_buffer_starvation += 1;
                    self.starved.push(index as u32);
                    return;
                }
                libc::ECANCELED => {}
                errno => {
                    let (failure, detail) = classify(OpKind::Recv, errno);
                    self.end(ops, index, failure, detail);
                }
            },
        }
        if !self.slots[index].recv_armed && self.wants_recv(index) {
            self.arm_recv(ops, index);
        }
    }

    /// Bytes from one receive buffer.
    fn on_bytes<W: Workload>(
        &mut self,
        ops: &mut Ops,
        work: &mut W,
        index: usize,
        bytes: &mut [u8],
        now_ns: u64,
    ) {
        let mut rest = bytes;
        if let Conn::Connecting(c) = &mut self.slots[index].conn {
            match c.handshake.feed(rest) {
                Ok((_, None)) => return,
                Ok((used, Some(_response))) => {
                    self.handshake.saturating_record(micros_since(c.started));
                    self.established += 1;
                    self.connecting -= 1;
                    self.open += 1;
                    self.slots[index].conn = Conn::Open(Box::new(Open {
                        ws: WebSocket::new(
                            ClientSide(random_mask as fn() -> [u8; 4]),
                            Limits {
                                max_message_bytes: MAX_MESSAGE_BYTES,
                            },
                        ),
                        spill: Vec::new(),
                        queued: Vec::new(),
                        sending: None,
                        closing: None,
                        server_closed: false,
                        close_received: false,
                    }));
                    rest = &mut rest[used..];
                }
                Err(error) => {
                    let detail = format!("handshake: {error}");
                    self.fail(ops, index, Failure::BadHandshake, detail);
                    return;
                }
            }
        }
        // A header split across buffers: complete it in the spill, at most 14 bytes at a time.
        while !rest.is_empty() {
            let Conn::Open(o) = &mut self.slots[index].conn else {
                return;
            };
            if o.spill.is_empty() {
                break;
            }
            let take = rest.len().min(MAX_HEADER_BYTES);
            let mut spill = std::mem::take(&mut o.spill);
            spill.extend_from_slice(&rest[..take]);
            rest = &mut rest[take..];
            let used = self.parse(ops, work, index, &mut spill, now_ns);
            if let Conn::Open(o) = &mut self.slots[index].conn {
                spill.drain(..used);
                o.spill = spill;
            }
        }
        if rest.is_empty() {
            return;
        }
        let used = self.parse(ops, work, index, rest, now_ns);
        if let Conn::Open(o) = &mut self.slots[index].conn {
            o.spill.extend_from_slice(&rest[used..]);
        }
    }

    /// Runs the protocol over `input`; returns the bytes consumed (the rest is the start of a
    /// header, for the spill).
    fn parse<W: Workload>(
        &mut self,
        ops: &mut Ops,
        work: &mut W,
        index: usize,
        input: &mut [u8],
        now_ns: u64,
    ) -> usize {
        let mut pos = 0;
        while pos < input.len() {
            let Conn::Open(o) = &mut self.slots[index].conn else {
                return input.len();
            };
            let (used, read) = o.ws.read(&mut input[pos..]);
            pos += used;
            match read {
                Read::NeedMore => return pos,
                Read::Message { opcode, payload } => {
                    work.message(index, opcode, &payload, now_ns, &mut Outbox { net: self });
                }
                Read::Pong(_) | Read::Ping { pong: None, .. } => {}
                Read::Ping {
                    pong: Some(pong), ..
                } => self.queue(index, pong),
                Read::Close { code, reply, .. } => {
                    let generation = self.slots[index].generation;
                    if let Conn::Open(o) = &mut self.slots[index].conn {
                        o.close_received = true;
                        if o.closing.is_none() {
                            // The server closed first: answer, then wait for its FIN.
                            o.closing = Some(Instant::now());
                            o.server_closed = true;
                            let code = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
                            self.dropped
                                .add(Failure::Reset, format!("closed by the server, code {code}"));
                            self.close_deadlines.push_back(Deadline {
                                at: Instant::now() + self.close_timeout,
                                slot: index as u32,
                                generation,
                            });
                        }
                    }
                    if let Some(reply) = reply {
                        self.queue(index, reply);
                    }
                    return input.len();
                }
                Read::Failed { error, reply } => {
                    if let Some(reply) = reply {
                        self.queue(index, reply);
                        self.flush_one(ops, index);
                    }
                    self.end_open(ops, index, format!("protocol: {error}"));
                    return input.len();
                }
            }
        }
        pos
    }

    /// The server closed its side: the end of a closing handshake, or a drop.
    fn on_eof(&mut self, ops: &mut Ops, index: usize) {
        match &self.slots[index].conn {
            Conn::Connecting(_) => self.fail(
                ops,
                index,
                Failure::Reset,
                "recv: closed by the server before the response".into(),
            ),
            Conn::Open(o) => {
                match (o.closing, o.server_closed, o.close_received) {
                    (Some(since), false, true) => {
                        self.closed_clean += 1;
                        self.closing.saturating_record(micros_since(since));
                    }
                    (Some(_), false, false) => self.closed_forced += 1,
                    (Some(_), true, _) => {}
                    (None, _, _) => self.dropped.add(
                        Failure::Reset,
                        "closed by the server without a close frame".into(),
                    ),
                }
                self.teardown(ops, index);
            }
            Conn::Free | Conn::Closing => {}
        }
    }

    /// Ends a connection for an error: a failure while connecting, a drop once open.
    fn end(&mut self, ops: &mut Ops, index: usize, failure: Failure, detail: String) {
        match &self.slots[index].conn {
            Conn::Connecting(_) => self.fail(ops, index, failure, detail),
            Conn::Open(_) => self.end_open(ops, index, detail),
            Conn::Free | Conn::Closing => {}
        }
    }

    fn end_open(&mut self, ops: &mut Ops, index: usize, detail: String) {
        if let Conn::Open(o) = &self.slots[index].conn {
            match (o.closing, o.server_closed) {
                (None, _) => self.dropped.add(Failure::Reset, detail),
                (Some(_), false) => self.closed_forced += 1,
                // The server closed first: counted as dropped then.
                (Some(_), true) => {}
            }
        }
        self.teardown(ops, index);
    }

    fn fail(&mut self, ops: &mut Ops, index: usize, failure: Failure, detail: String) {
        if matches!(self.slots[index].conn, Conn::Connecting(_)) {
            self.failed.add(failure, detail);
            self.teardown(ops, index);
        }
    }

    /// Ends the slot's operations and closes its descriptor; it frees when all are back.
    fn teardown(&mut self, ops: &mut Ops, index: usize) {
        let slot = &mut self.slots[index];
        match &slot.conn {
            Conn::Free | Conn::Closing => return,
            Conn::Connecting(_) => self.connecting -= 1,
            Conn::Open(_) => self.open -= 1,
        }
        let before = match &slot.conn {
            _ if slot.pending == 0 => BeforeClose::Nothing,
            Conn::Connecting(c) if !c.connected => BeforeClose::Cancel(OpKind::Connect),
            _ => BeforeClose::Shutdown,
        };
        slot.conn = Conn::Closing;
        match ops.close(index as u32, slot.generation, before) {
            Ok(completions) => slot.pending += completions,
            Err(error) => {
                self.ring_error.get_or_insert(error);
            }
        }
    }

    fn maybe_free(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if matches!(slot.conn, Conn::Closing) && slot.pending == 0 {
            slot.conn = Conn::Free;
            slot.recv_armed = false;
            slot.generation = (slot.generation + 1) & crate::uring::user_data::GENERATION_MASK;
        }
    }

    fn wants_recv(&self, index: usize) -> bool {
        match &self.slots[index].conn {
            Conn::Connecting(c) => c.connected,
            Conn::Open(_) => true,
            Conn::Free | Conn::Closing => false,
        }
    }

    fn arm_recv(&mut self, ops: &mut Ops, index: usize) {
        let slot = &mut self.slots[index];
        slot.recv_armed = true;
        slot.pending += 1;
        // Bundles only once open: a handshake's response is one small read.
        let bundle = self.bundle && matches!(slot.conn, Conn::Open(_));
        if let Err(error) = ops.arm_recv(index as u32, slot.generation, bundle) {
            self.ring_error.get_or_insert(error);
        }
    }

    fn rearm_starved(&mut self, ops: &mut Ops) {
        let mut starved = std::mem::take(&mut self.starved);
        for index in starved.drain(..) {
            let index = index as usize;
            if !self.slots[index].recv_armed && self.wants_recv(index) {
                self.arm_recv(ops, index);
            }
        }
        self.starved = starved;
    }

    fn send(&mut self, ops: &mut Ops, index: usize, generation: u32, frame: Bytes) {
        match ops.send(index as u32, generation, frame) {
            Ok(Ok(())) => self.slots[index].pending += 1,
            Ok(Err(busy)) => unreachable!("sends are issued only after the previous one: {busy}"),
            Err(error) => {
                self.ring_error.get_or_insert(error);
            }
        }
    }

    /// Queues a frame; it goes out with this turn's flush, or after the send in flight.
    fn queue(&mut self, index: usize, frame: Bytes) {
        if let Conn::Open(o) = &mut self.slots[index].conn {
            if o.queued.is_empty() && o.sending.is_none() {
                self.dirty.push(index as u32);
            }
            o.queued.push(frame);
        }
    }

    /// One send per dirty connection, with every frame queued on it.
    fn flush(&mut self, ops: &mut Ops) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for index in dirty.drain(..) {
            self.flush_one(ops, index as usize);
        }
        self.dirty = dirty;
    }

    fn flush_one(&mut self, ops: &mut Ops, index: usize) {
        let slot = &mut self.slots[index];
        let generation = slot.generation;
        let Conn::Open(o) = &mut slot.conn else {
            return;
        };
        if o.queued.is_empty() || o.sending.is_some() || ops.send_in_flight(index as u32) {
            return;
        }
        let bytes = if o.queued.len() == 1 {
            o.queued.pop().expect("one frame")
        } else {
            let len = o.queued.iter().map(Bytes::len).sum();
            let mut all = BytesMut::with_capacity(len);
            for frame in o.queued.drain(..) {
                all.extend_from_slice(&frame);
            }
            all.freeze()
        };
        o.sending = Some(bytes.clone());
        self.send(ops, index, generation, bytes);
    }

    /// Starts the closing handshake of up to a batch of open connections.
    fn close_batch(&mut self, ops: &mut Ops, now: Instant) {
        let mut closed = 0;
        while self.close_cursor < self.slots.len() && closed < MAX_CLOSES_PER_TURN {
            let index = self.close_cursor;
            self.close_cursor += 1;
            let slot = &mut self.slots[index];
            let generation = slot.generation;
            match &mut slot.conn {
                Conn::Connecting(_) => {
                    self.fail(
                        ops,
                        index,
                        Failure::Other,
                        "stopped before the response".into(),
                    );
                }
                Conn::Open(o) if o.closing.is_none() => {
                    closed += 1;
                    o.closing = Some(now);
                    if let Some(frame) = o.ws.close(CloseCode::NORMAL, "") {
                        self.queue(index, frame);
                    }
                    self.close_deadlines.push_back(Deadline {
                        at: now + self.close_timeout,
                        slot: index as u32,
                        generation,
                    });
                }
                Conn::Open(_) | Conn::Free | Conn::Closing => {}
            }
        }
    }

    /// Handshakes and closing handshakes past their deadline.
    fn expire(&mut self, ops: &mut Ops, now: Instant) {
        while let Some(d) = self.handshake_deadlines.front().copied() {
            if d.at > now {
                break;
            }
            self.handshake_deadlines.pop_front();
            if self.slots[d.slot as usize].generation == d.generation {
                let detail = format!(
                    "no verified 101 within {:.1} s",
                    self.handshake_timeout.as_secs_f64()
                );
                self.fail(ops, d.slot as usize, Failure::Timeout, detail);
            }
        }
        while let Some(d) = self.close_deadlines.front().copied() {
            if d.at > now {
                break;
            }
            self.close_deadlines.pop_front();
            if self.slots[d.slot as usize].generation == d.generation {
                self.end_open(ops, d.slot as usize, "closing handshake timed out".into());
            }
        }
    }
}

/// Microseconds since `start`, at least 1 (the histogram's lowest value).
fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The failure kind and a detail line for an operation's errno.
fn classify(kind: OpKind, errno: i32) -> (Failure, String) {
    let op = match kind {
        OpKind::Socket => "socket",
        OpKind::SockOpt => "setsockopt",
        OpKind::Bind => "bind",
        OpKind::Connect => "connect",
        OpKind::Send => "send",
        OpKind::Recv => "recv",
        OpKind::Shutdown => "shutdown",
        OpKind::Cancel => "cancel",
        OpKind::Close => "close",
    };
    let failure = match (kind, errno) {
        (_, libc::ECONNREFUSED) => Failure::Refused,
        (_, libc::ETIMEDOUT) => Failure::Timeout,
        (_, libc::ECONNRESET | libc::ECONNABORTED | libc::EPIPE) => Failure::Reset,
        (OpKind::Bind | OpKind::Connect, libc::EADDRINUSE | libc::EADDRNOTAVAIL) => Failure::NoPort,
        _ => Failure::Other,
    };
    (
        failure,
        format!("{op}: {}", io::Error::from_raw_os_error(errno)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_use_every_address_pair_evenly() {
        for (sources, targets) in [(0, 1), (0, 3), (1, 1), (3, 1), (2, 3), (4, 2)] {
            let pairs = sources.max(1) * targets;
            let mut count = std::collections::HashMap::new();
            for global in 0..(pairs * 5) as u64 {
                let (source, target) = address_pair(global, sources, targets);
                assert_eq!(source.is_none(), sources == 0);
                assert!(source.unwrap_or(0) < sources.max(1) && target < targets);
                *count.entry((source, target)).or_insert(0) += 1;
            }
            assert_eq!(count.len(), pairs, "{sources} x {targets}: every pair used");
            assert!(
                count.values().all(|&n| n == 5),
                "{sources} x {targets}: {count:?}"
            );
        }
    }

    #[test]
    fn plans_cover_every_connection_once() {
        for (connections, threads) in [(10_001u64, 2usize), (7, 3), (1, 1), (5, 5)] {
            let mut seen = vec![false; connections as usize];
            for id in 0..threads {
                let plan = Plan::of_thread(id, threads, connections);
                for local in 0..plan.count as usize {
                    let global = plan.global(local) as usize;
                    assert!(!seen[global]);
                    seen[global] = true;
                }
            }
            assert!(seen.iter().all(|s| *s));
        }
    }

    #[test]
    fn plans_split_connections_evenly() {
        let counts: Vec<u64> = (0..6)
            .map(|id| Plan::of_thread(id, 6, 100_000).count)
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 100_000);
        assert!(counts.iter().all(|&n| n == 16_666 || n == 16_667));
    }

    #[test]
    fn errnos_map_to_failure_kinds() {
        assert_eq!(
            classify(OpKind::Connect, libc::ECONNREFUSED).0,
            Failure::Refused
        );
        assert_eq!(
            classify(OpKind::Connect, libc::ETIMEDOUT).0,
            Failure::Timeout
        );
        assert_eq!(classify(OpKind::Send, libc::EPIPE).0, Failure::Reset);
        assert_eq!(classify(OpKind::Recv, libc::ECONNRESET).0, Failure::Reset);
        assert_eq!(classify(OpKind::Bind, libc::EADDRINUSE).0, Failure::NoPort);
        assert_eq!(
            classify(OpKind::Connect, libc::EADDRNOTAVAIL).0,
            Failure::NoPort
        );
        assert_eq!(classify(OpKind::Socket, libc::EMFILE).0, Failure::Other);
        assert!(classify(OpKind::Connect, libc::ECONNREFUSED)
            .1
            .starts_with("connect: "));
    }

    #[test]
    fn tallies_merge() {
        let mut a = Tally {
            sent: 3,
            ..Tally::default()
        };
        a.record(10);
        let mut b = Tally {
            sent: 4,
            corrupt: 1,
            ..Tally::default()
        };
        b.record(20);
        a.merge(&b);
        assert_eq!(a.sent, 7);
        assert_eq!(a.errors(), 1);
        assert_eq!(a.latency.len(), 2);
    }
}
