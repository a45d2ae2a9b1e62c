//! The `connect` scenario: open N WebSocket connections at a steady rate, hold them idle, then
//! close them all, measuring each handshake and what holding them costs the server.
//!
//! Each client thread owns a ring whose direct descriptor table has one slot per connection of
//! the thread, so the run is bounded by `RLIMIT_NOFILE` per ring, not per process. A
//! connection is one linked chain (socket → [setsockopt → bind] → connect → send the upgrade
//! request), then a multishot receive that verifies the 101 and afterwards answers pings and
//! notices a server that drops the connection. At the end each connection sends a close frame,
//! waits for the server's close and FIN, and its slot is cancelled and closed.

use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use uringcast::protocol::connection::ClientSide;
use uringcast::protocol::handshake::ClientHandshake;
use uringcast::protocol::{CloseCode, Limits, Read, WebSocket};

use crate::capacity::Capacity;
use crate::error::LoadError;
use crate::interrupt;
use crate::procfs::{self, ProcessSample};
use crate::report::{
    ConnectReport, Diagnostics, Failure, Failures, LatencySummary, ServerUsage, SettingsSummary,
};
use crate::target::Target;
use crate::uring::user_data::{OpKind, GENERATION_MASK};
use crate::uring::{BeforeClose, ClientFeatures, ClientRing, Completion, Ops, RecvBuffers};

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

/// Bounds on one loop turn's new submissions, so a late thread catching up, or the closing of
/// tens of thousands of connections, never floods the completion queue in one turn.
const MAX_STARTS_PER_TURN: u64 = 256;
const MAX_CLOSES_PER_TURN: usize = 1024;
/// The longest a thread waits in the kernel: how soon it sees a stop.
const POLL: Duration = Duration::from_millis(50);
/// After the close timeout, how long to wait for the kernel to return the last operations
/// before giving up (the ring then leaks its buffers rather than free them).
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Frames waiting behind a send in flight (pongs, the close); more pongs are dropped.
const MAX_QUEUED_FRAMES: usize = 4;
/// The largest message a client accepts; the scenario expects none.
const MAX_MESSAGE_BYTES: u64 = 1 << 20;
/// How long past its own bound the coordinator waits for a thread that has not finished.
const STRAGGLER_WAIT: Duration = Duration::from_secs(60);
/// How the server's CPU time is watched for the end of its teardown work after the close.
const SETTLE_EVERY: Duration = Duration::from_millis(100);
const SETTLE_MAX: Duration = Duration::from_secs(10);
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A validated `connect` run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where to connect.
    pub target: Target,
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
    /// Time for a connection to reach a verified 101.
    pub handshake_timeout: Duration,
    /// Time for the closing handshake at the end.
    pub close_timeout: Duration,
    /// The server to measure.
    pub server_pid: Option<u32>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
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
    let threads = settings
        .threads
        .clamp(1, settings.connections.max(1) as usize);
    let progress: Arc<[Progress]> = (0..threads).map(|_| Progress::default()).collect();
    let (events_tx, events) = mpsc::channel();
    let mut commands = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for id in 0..threads {
        let (command_tx, command_rx) = mpsc::channel();
        commands.push(command_tx);
        let plan = Plan {
            first: id as u64,
            step: threads as u64,
            count: (settings.connections.saturating_sub(id as u64)).div_ceil(threads as u64),
        };
        let thread = ThreadSetup {
            id,
            plan,
            settings: settings.clone(),
            features,
            commands: command_rx,
            events: events_tx.clone(),
            progress: Arc::clone(&progress),
        };
        let handle = std::thread::Builder::new()
            .name(format!("uringcast-load-{id}"))
            .spawn(move || {
                super::pin_thread(id);
                thread.run()
            })
            .map_err(|source| LoadError::Thread { id, source })?;
        handles.push(handle);
    }
    drop(events_tx);
    let mut run = Run {
        settings,
        features,
        commands,
        handles,
        events,
        progress,
        results: Vec::new(),
    };
    let result = run.drive(capacity, settings.connections);
    run.stop_and_join();
    result
}

/// The coordinating side of a run: threads, their channels, and what they reported.
struct Run<'a> {
    settings: &'a Settings,
    features: ClientFeatures,
    commands: Vec<Sender<Command>>,
    handles: Vec<JoinHandle<()>>,
    events: Receiver<Event>,
    progress: Arc<[Progress]>,
    results: Vec<ThreadResult>,
}

impl Run<'_> {
    fn drive(&mut self, capacity: Capacity, target: u64) -> Result<ConnectReport, LoadError> {
        let threads = self.commands.len();
        let mut ready = 0;
        while ready < threads {
            match self.events.recv() {
                Ok(Event::Ready { result: Ok(()), .. }) => ready += 1,
                Ok(Event::Ready {
                    id,
                    result: Err(source),
                })
                | Ok(Event::Finished {
                    id,
                    result: Err(source),
                }) => return Err(LoadError::Thread { id, source }),
                Ok(_) => {}
                Err(_) => return Err(thread_vanished()),
            }
        }
        let settings = self.settings;
        let server_before = settings
            .server_pid
            .map(|pid| {
                ProcessSample::read(pid).map_err(|source| LoadError::ServerPid { pid, source })
            })
            .transpose()?;
        let slab_before = procfs::slab_bytes().ok();
        let start = Instant::now();
        for command in &self.commands {
            let _ = command.send(Command::Start(start));
        }

        // Ramp: until every thread has settled every handshake. Each is bounded by the
        // handshake timeout, so this is too; the limit only guards against a stuck thread.
        let ramp_limit = start
            + Duration::from_secs_f64(target as f64 / settings.rate)
            + settings.handshake_timeout
            + Duration::from_secs(30);
        let mut ramped = 0;
        let mut next_print = start + PROGRESS_EVERY;
        while ramped < threads {
            let now = Instant::now();
            if interrupt::requested() {
                break;
            }
            if now >= ramp_limit {
                eprintln!("uringcast-load: ramp did not settle in time; holding what is open");
                break;
            }
            match self.events.recv_timeout(next_print.min(ramp_limit) - now) {
                Ok(Event::RampDone) => ramped += 1,
                Ok(Event::Finished {
                    id,
                    result: Err(source),
                }) => return Err(LoadError::Thread { id, source }),
                Ok(Event::Finished { result: Ok(r), .. }) => {
                    ramped += 1;
                    self.results.push(*r);
                }
                Ok(Event::Ready { .. }) => {}
                Err(RecvTimeoutError::Timeout) => {
                    self.print_progress(start, target);
                    next_print += PROGRESS_EVERY;
                }
                Err(RecvTimeoutError::Disconnected) => return Err(thread_vanished()),
            }
        }
        let ramp_end = Instant::now();
        self.print_progress(start, target);

        // Hold.
        let hold_end = ramp_end + settings.hold;
        next_print = ramp_end + PROGRESS_EVERY;
        loop {
            let now = Instant::now();
            // Ctrl-C ends the hold: close what is open and report it.
            if now >= hold_end || interrupt::requested() {
                break;
            }
            match self.events.recv_timeout(next_print.min(hold_end) - now) {
                Ok(Event::Finished {
                    id,
                    result: Err(source),
                }) => return Err(LoadError::Thread { id, source }),
                Ok(Event::Finished { result: Ok(r), .. }) => self.results.push(*r),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    if Instant::now() >= next_print {
                        self.print_progress(start, target);
                        next_print += PROGRESS_EVERY;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err(thread_vanished()),
            }
        }
        let hold_sample = Instant::now();
        let reached = self.sum(|p| &p.open);
        let server_hold = settings.server_pid.map(ProcessSample::read);
        let slab_hold = procfs::slab_bytes().ok();
        let client_rss_bytes = procfs::own_rss_bytes();

        // Close.
        for command in &self.commands {
            let _ = command.send(Command::Stop);
        }
        // Each thread gives up on its closes after the close timeout and the drain grace; a
        // thread later than that is stuck in the kernel or starved of CPU. Wait for it a while
        // longer (its figures are part of the report), then report without it.
        let expected = Instant::now() + settings.close_timeout + DRAIN_GRACE * 2;
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
                Ok(Event::Finished { result: Ok(r), .. }) => self.results.push(*r),
                Ok(Event::Finished {
                    id,
                    result: Err(source),
                }) => return Err(LoadError::Thread { id, source }),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let threads_missing = (threads - self.results.len()) as u64;
        if threads_missing > 0 {
            eprintln!(
                "uringcast-load: {threads_missing} client thread(s) never finished; their \
                 connections are missing from the latency and close figures"
            );
        }
        let finished = Instant::now();

        let server = match (settings.server_pid, server_before, server_hold) {
            (Some(pid), Some(before), Some(Ok(hold))) => {
                let slab = slab_before.zip(slab_hold).unwrap_or((0, 0));
                let ticks = procfs::clock_ticks_per_second() as f64;
                let settled = settle_cpu(pid);
                Some(ServerUsage {
                    pid,
                    cpu_s: hold.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / ticks,
                    close_cpu_s: settled
                        .map(|after| after.saturating_sub(hold.cpu_ticks) as f64 / ticks),
                    rss_before_bytes: before.rss_bytes,
                    rss_bytes: hold.rss_bytes,
                    slab_before_bytes: slab.0,
                    slab_bytes: slab.1,
                })
            }
            (Some(pid), _, Some(Err(error))) => {
                eprintln!(
                    "uringcast-load: server {pid} unreadable at hold ({error}); did it exit?"
                );
                None
            }
            _ => None,
        };
        Ok(self.report(ReportInputs {
            capacity,
            reached,
            duration: finished - start,
            ramp: ramp_end - start,
            hold: hold_sample - ramp_end,
            server,
            slab: slab_before.zip(slab_hold),
            client_rss_bytes,
            threads_missing,
        }))
    }

    fn report(&self, inputs: ReportInputs) -> ConnectReport {
        let settings = self.settings;
        let mut histogram = new_histogram();
        let mut connect_histogram = new_histogram();
        let mut close_histogram = new_histogram();
        let mut failed = Failures::default();
        let mut dropped = Failures::default();
        let mut established = 0;
        let mut closed_clean = 0;
        let mut closed_forced = 0;
        let mut closed_abandoned = 0;
        let mut diagnostics = Diagnostics {
            threads_missing: inputs.threads_missing,
            ..Diagnostics::default()
        };
        for r in &self.results {
            // Same bounds and precision everywhere: adding cannot fail.
            let _ = histogram.add(&r.histogram);
            let _ = connect_histogram.add(&r.connect_histogram);
            let _ = close_histogram.add(&r.close_histogram);
            failed.merge(&r.failed);
            dropped.merge(&r.dropped);
            established += r.established;
            closed_clean += r.closed_clean;
            closed_forced += r.closed_forced;
            closed_abandoned += r.closed_abandoned;
            diagnostics.stale_completions += r.diagnostics.stale_completions;
            diagnostics.recv_buffer_starvation += r.diagnostics.recv_buffer_starvation;
            diagnostics.cq_overflow += r.diagnostics.cq_overflow;
            diagnostics.rings_leaked += r.diagnostics.rings_leaked;
        }
        ConnectReport {
            settings: SettingsSummary {
                url: settings.target.to_string(),
                connections: settings.connections,
                rate: settings.rate,
                hold: settings.hold,
                threads: self.commands.len(),
                sources: settings.sources.iter().map(ToString::to_string).collect(),
                handshake_timeout: settings.handshake_timeout,
                close_timeout: settings.close_timeout,
                bind_no_port: self.features.bind_no_port && !settings.sources.is_empty(),
            },
            capacity: inputs.capacity,
            reached: inputs.reached,
            established,
            dropped,
            failed,
            closed_clean,
            closed_forced,
            closed_abandoned,
            duration: inputs.duration,
            ramp: inputs.ramp,
            hold: inputs.hold,
            latency: LatencySummary::of(&histogram),
            connect_latency: LatencySummary::of(&connect_histogram),
            close_latency: LatencySummary::of(&close_histogram),
            server: inputs.server,
            slab: inputs.slab,
            client_rss_bytes: inputs.client_rss_bytes,
            diagnostics,
        }
    }

    fn sum(&self, field: impl Fn(&Progress) -> &AtomicU64) -> u64 {
        self.progress
            .iter()
            .map(|p| field(p).load(Ordering::Relaxed))
            .sum()
    }

    fn print_progress(&self, start: Instant, target: u64) {
        if !self.settings.progress {
            return;
        }
        eprintln!(
            "[{:7.1}s] established {}/{target}  open {}  connecting {}  failed {}  dropped {}",
            start.elapsed().as_secs_f64(),
            self.sum(|p| &p.established),
            self.sum(|p| &p.open),
            self.sum(|p| &p.connecting),
            self.sum(|p| &p.failed),
            self.sum(|p| &p.dropped),
        );
    }

    /// Tells every thread to stop (again, harmlessly, after a normal run) and joins them.
    fn stop_and_join(&mut self) {
        for command in &self.commands {
            let _ = command.send(Command::Stop);
        }
        for handle in self.handles.drain(..) {
            if handle.join().is_err() {
                eprintln!("uringcast-load: a client thread panicked");
            }
        }
    }
}

struct ReportInputs {
    capacity: Capacity,
    reached: u64,
    duration: Duration,
    ramp: Duration,
    hold: Duration,
    server: Option<ServerUsage>,
    slab: Option<(u64, u64)>,
    client_rss_bytes: Option<u64>,
    threads_missing: u64,
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

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 1 hour at 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

/// From the coordinator to a thread.
enum Command {
    /// Start the ramp; the thread's connections are due at `start + index / rate`.
    Start(Instant),
    /// Close everything and finish.
    Stop,
}

/// From a thread to the coordinator.
enum Event {
    Ready {
        id: usize,
        result: io::Result<()>,
    },
    RampDone,
    Finished {
        id: usize,
        result: io::Result<Box<ThreadResult>>,
    },
}

/// Live counters of one thread, for progress lines and the hold sample.
#[derive(Default)]
struct Progress {
    established: AtomicU64,
    open: AtomicU64,
    connecting: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// Which global connection indices a thread opens: `first, first + step, ...`, `count` of them.
#[derive(Clone, Copy, Debug)]
struct Plan {
    first: u64,
    step: u64,
    count: u64,
}

/// What a thread measured.
struct ThreadResult {
    /// Connect submission to verified 101, µs.
    histogram: Histogram<u64>,
    /// Connect submission to the connect's completion (the TCP handshake), µs.
    connect_histogram: Histogram<u64>,
    /// Our close frame queued to the server's FIN, µs, for clean closes.
    close_histogram: Histogram<u64>,
    failed: Failures,
    dropped: Failures,
    established: u64,
    closed_clean: u64,
    closed_forced: u64,
    closed_abandoned: u64,
    diagnostics: Diagnostics,
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
    fn run(self) {
        let id = self.id;
        let slots = u32::try_from(self.plan.count).unwrap_or(u32::MAX);
        // The ring is built here: with SINGLE_ISSUER it belongs to the thread that made it.
        let ring = match ClientRing::new(
            self.features,
            slots,
            self.settings.target.addr,
            &self.settings.sources,
            RecvBuffers::IDLE,
        ) {
            Ok(ring) => ring,
            Err(error) => {
                let what = format!("cannot set up a ring with {slots} direct descriptor slots");
                let _ = self.events.send(Event::Ready {
                    id,
                    result: Err(io::Error::new(error.kind(), format!("{what}: {error}"))),
                });
                return;
            }
        };
        let _ = self.events.send(Event::Ready { id, result: Ok(()) });
        let Ok(Command::Start(start)) = self.commands.recv() else {
            return;
        };
        let mut client = Client {
            ring,
            state: State::new(id, self.plan, &self.settings, start, self.progress),
        };
        let result = client.run(&self.commands, &self.events);
        let result = result.map(|()| Box::new(client.finish()));
        let _ = self.events.send(Event::Finished { id, result });
    }
}

/// One thread's ring and connections.
struct Client {
    // Field order is drop order: the ring (and what the kernel may touch) goes first.
    ring: ClientRing,
    state: State,
}

impl Client {
    fn run(&mut self, commands: &Receiver<Command>, events: &Sender<Event>) -> io::Result<()> {
        loop {
            let now = Instant::now();
            match commands.try_recv() {
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => {
                    if !matches!(self.state.phase, Phase::Closing { .. }) {
                        self.state.phase = Phase::Closing { since: now };
                    }
                }
                Ok(Command::Start(_)) | Err(TryRecvError::Empty) => {}
            }
            let ops = self.ring.ops();
            match self.state.phase {
                Phase::Ramp => {
                    self.state.start_due(ops, now);
                    if self.state.next == self.state.plan.count && self.state.connecting == 0 {
                        self.state.phase = Phase::Hold;
                        let _ = events.send(Event::RampDone);
                    }
                }
                Phase::Hold => {}
                Phase::Closing { since } => {
                    self.state.close_batch(ops, now);
                    let all_free = self.state.free.len() == self.state.slots.len();
                    if all_free && ops.in_flight() == 0 {
                        return Ok(());
                    }
                    if now >= since + self.state.close_timeout + DRAIN_GRACE {
                        return Ok(());
                    }
                }
            }
            self.state.expire(ops, now);
            self.state.rearm_starved(ops);
            if let Some(error) = self.state.ring_error.take() {
                return Err(error);
            }
            let timeout = self.state.next_wake(now).saturating_duration_since(now);
            self.ring.submit_and_wait(timeout)?;
            let state = &mut self.state;
            self.ring
                .reap(|ops, completion| state.complete(ops, completion));
            if let Some(error) = self.state.ring_error.take() {
                return Err(error);
            }
            self.state.publish_progress();
        }
    }

    fn finish(mut self) -> ThreadResult {
        let ops = self.ring.ops();
        self.state.result.diagnostics.rings_leaked = u64::from(ops.in_flight() > 0);
        self.state.result.diagnostics.stale_completions += ops.unknown_completions();
        self.state.result.diagnostics.cq_overflow = u64::from(self.ring.overflow());
        // Connections still open when the thread gave up: closed by the kernel as the ring goes.
        self.state.result.closed_abandoned = self
            .state
            .slots
            .iter()
            .filter(|slot| matches!(slot.conn, Conn::Connecting(_) | Conn::Open(_)))
            .count() as u64;
        self.state.publish_progress();
        let Self { ring, state } = self;
        // The ring goes first: it leaks its buffers if the kernel still holds operations.
        drop(ring);
        state.result
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Ramp,
    Hold,
    Closing { since: Instant },
}

/// A connection's masks come from the thread's random source (RFC 6455 §5.3).
type ClientMasks = ClientSide<fn() -> [u8; 4]>;

fn random_mask() -> [u8; 4] {
    rand::random()
}

/// One direct descriptor slot and the connection in it.
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
    /// Cancel and close submitted; the slot frees when `pending` reaches 0.
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
    /// Frames waiting for the send in flight to finish.
    queued: VecDeque<Bytes>,
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

/// Everything of a thread but its ring.
struct State {
    id: usize,
    plan: Plan,
    host: String,
    path: String,
    sources: usize,
    rate: f64,
    handshake_timeout: Duration,
    close_timeout: Duration,
    start: Instant,
    phase: Phase,
    /// Connections of the plan opened so far.
    next: u64,
    slots: Vec<Slot>,
    free: Vec<u32>,
    handshake_deadlines: VecDeque<Deadline>,
    close_deadlines: VecDeque<Deadline>,
    /// Connections whose receive ended for want of buffers: re-armed next turn.
    starved: Vec<u32>,
    close_cursor: usize,
    connecting: u64,
    open: u64,
    result: ThreadResult,
    progress: Arc<[Progress]>,
    ring_error: Option<io::Error>,
}

impl State {
    fn new(
        id: usize,
        plan: Plan,
        settings: &Settings,
        start: Instant,
        progress: Arc<[Progress]>,
    ) -> Self {
        let count = u32::try_from(plan.count).unwrap_or(u32::MAX);
        Self {
            id,
            plan,
            host: settings.target.host.clone(),
            path: settings.target.path.clone(),
            sources: settings.sources.len(),
            rate: settings.rate,
            handshake_timeout: settings.handshake_timeout,
            close_timeout: settings.close_timeout,
            start,
            phase: Phase::Ramp,
            next: 0,
            slots: (0..count)
                .map(|_| Slot {
                    generation: 0,
                    pending: 0,
                    recv_armed: false,
                    conn: Conn::Free,
                })
                .collect(),
            // Popped from the back: slots are used from 0 upwards.
            free: (0..count).rev().collect(),
            handshake_deadlines: VecDeque::new(),
            close_deadlines: VecDeque::new(),
            starved: Vec::new(),
            close_cursor: 0,
            connecting: 0,
            open: 0,
            result: ThreadResult {
                histogram: new_histogram(),
                connect_histogram: new_histogram(),
                close_histogram: new_histogram(),
                failed: Failures::default(),
                dropped: Failures::default(),
                established: 0,
                closed_clean: 0,
                closed_forced: 0,
                closed_abandoned: 0,
                diagnostics: Diagnostics::default(),
            },
            progress,
            ring_error: None,
        }
    }

    /// When the plan's next connection is due: `start + global index / rate`.
    fn due(&self, next: u64) -> Instant {
        let index = self.plan.first + next * self.plan.step;
        self.start + Duration::from_secs_f64(index as f64 / self.rate)
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + POLL;
        if self.phase == Phase::Ramp && self.next < self.plan.count {
            wake = wake.min(self.due(self.next));
        }
        for deadlines in [&self.handshake_deadlines, &self.close_deadlines] {
            if let Some(first) = deadlines.front() {
                wake = wake.min(first.at);
            }
        }
        wake
    }

    fn start_due(&mut self, ops: &mut Ops, now: Instant) {
        let mut started = 0;
        while self.next < self.plan.count && started < MAX_STARTS_PER_TURN {
            if self.due(self.next) > now {
                break;
            }
            let index = self.plan.first + self.next * self.plan.step;
            self.next += 1;
            started += 1;
            self.open_one(ops, index, now);
        }
    }

    fn open_one(&mut self, ops: &mut Ops, index: u64, now: Instant) {
        let slot = self
            .free
            .pop()
            .expect("each thread has one slot per connection it opens, and opens each once");
        let key: [u8; 16] = rand::random();
        let (handshake, request) = ClientHandshake::new(&self.host, &self.path, key, &[]);
        let request = Bytes::from(request);
        let source = (self.sources > 0).then(|| (index % self.sources as u64) as usize);
        let entry = &mut self.slots[slot as usize];
        match ops.open(slot, entry.generation, source, request.clone()) {
            Ok(Ok(chain)) => {
                entry.pending += chain;
                entry.conn = Conn::Connecting(Box::new(Connecting {
                    started: now,
                    handshake,
                    request,
                    sent: 0,
                    connected: false,
                }));
                self.connecting += 1;
                self.handshake_deadlines.push_back(Deadline {
                    at: now + self.handshake_timeout,
                    slot,
                    generation: entry.generation,
                });
            }
            Ok(Err(busy)) => unreachable!("a free slot has no send in flight: {busy}"),
            Err(error) => {
                self.ring_error.get_or_insert(error);
                self.free.push(slot);
            }
        }
    }

    fn complete(&mut self, ops: &mut Ops, c: Completion<'_>) {
        let index = c.op.key as usize;
        let Some(slot) = self.slots.get_mut(index) else {
            self.result.diagnostics.stale_completions += 1;
            return;
        };
        if slot.generation != c.op.generation {
            self.result.diagnostics.stale_completions += 1;
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
            OpKind::Recv => self.on_recv(ops, index, c),
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
                self.result
                    .connect_histogram
                    .saturating_record(micros_since(c.started));
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
                if result < 0 && result != -libc::ECANCELED {
                    let detail = format!("send: {}", io::Error::from_raw_os_error(-result));
                    self.end_open(ops, index, detail);
                } else if let Some(frame) = o.queued.pop_front() {
                    self.send(ops, index, generation, frame);
                }
            }
            Conn::Free | Conn::Closing => {}
        }
    }

    fn on_recv(&mut self, ops: &mut Ops, index: usize, c: Completion<'_>) {
        let slot = &mut self.slots[index];
        if !c.more {
            slot.recv_armed = false;
        }
        match (c.result, c.data) {
            (n, Some(mut data)) if n > 0 => data.for_each(|bytes| self.on_data(ops, index, bytes)),
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
                    self.result.diagnostics.recv_buffer_starvation += 1;
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

    fn on_data(&mut self, ops: &mut Ops, index: usize, data: &mut [u8]) {
        let slot = &mut self.slots[index];
        let mut rest = data;
        if let Conn::Connecting(c) = &mut slot.conn {
            match c.handshake.feed(rest) {
                Ok((_, None)) => return,
                Ok((used, Some(_response))) => {
                    self.result
                        .histogram
                        .saturating_record(micros_since(c.started));
                    self.result.established += 1;
                    self.connecting -= 1;
                    self.open += 1;
                    slot.conn = Conn::Open(Box::new(Open {
                        ws: WebSocket::new(
                            ClientSide(random_mask as fn() -> [u8; 4]),
                            Limits {
                                max_message_bytes: MAX_MESSAGE_BYTES,
                            },
                        ),
                        queued: VecDeque::new(),
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
        let slot = &mut self.slots[index];
        let generation = slot.generation;
        let Conn::Open(o) = &mut slot.conn else {
            return;
        };
        let mut to_send = Vec::new();
        let mut ending = None;
        let mut pos = 0;
        while pos < rest.len() {
            let (used, read) = o.ws.read(&mut rest[pos..]);
            pos += used;
            match read {
                Read::NeedMore => break,
                Read::Message { .. } | Read::Pong(_) | Read::Ping { pong: None, .. } => {}
                Read::Ping {
                    pong: Some(pong), ..
                } => to_send.push(pong),
                Read::Close { code, reply, .. } => {
                    o.close_received = true;
                    if o.closing.is_none() {
                        // The server closed first: answer, then wait for its FIN.
                        o.closing = Some(Instant::now());
                        o.server_closed = true;
                        let code = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
                        self.result
                            .dropped
                            .add(Failure::Reset, format!("closed by the server, code {code}"));
                        self.close_deadlines.push_back(Deadline {
                            at: Instant::now() + self.close_timeout,
                            slot: index as u32,
                            generation,
                        });
                    }
                    to_send.extend(reply);
                    break;
                }
                Read::Failed { error, reply } => {
                    to_send.extend(reply);
                    ending = Some(format!("protocol: {error}"));
                    break;
                }
            }
        }
        for frame in to_send {
            self.send_or_queue(ops, index, frame);
        }
        if let Some(detail) = ending {
            self.end_open(ops, index, detail);
        }
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
                match (o.closing.is_some(), o.server_closed, o.close_received) {
                    (true, false, true) => {
                        self.result.closed_clean += 1;
                        if let Some(since) = o.closing {
                            self.result
                                .close_histogram
                                .saturating_record(micros_since(since));
                        }
                    }
                    (true, false, false) => self.result.closed_forced += 1,
                    (true, true, _) => {}
                    (false, _, _) => self.result.dropped.add(
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
            if o.closing.is_some() && !o.server_closed {
                self.result.closed_forced += 1;
            } else if !o.server_closed {
                self.result.dropped.add(Failure::Reset, detail);
            }
        }
        self.teardown(ops, index);
    }

    fn fail(&mut self, ops: &mut Ops, index: usize, failure: Failure, detail: String) {
        if matches!(self.slots[index].conn, Conn::Connecting(_)) {
            self.result.failed.add(failure, detail);
            self.teardown(ops, index);
        }
    }

    /// Cancels the slot's operations and closes its descriptor; it frees when all are back.
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
            slot.generation = (slot.generation + 1) & GENERATION_MASK;
            self.free.push(index as u32);
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
        if let Err(error) = ops.arm_recv(index as u32, slot.generation, false) {
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

    /// Sends now, or after the send in flight (pongs beyond a few are dropped; RFC 6455 §5.5.3
    /// lets a pong answer only the latest ping).
    fn send_or_queue(&mut self, ops: &mut Ops, index: usize, frame: Bytes) {
        let slot = &mut self.slots[index];
        let generation = slot.generation;
        let Conn::Open(o) = &mut slot.conn else {
            return;
        };
        if !o.queued.is_empty() || ops.send_in_flight(index as u32) {
            if o.queued.len() < MAX_QUEUED_FRAMES {
                o.queued.push_back(frame);
            }
            return;
        }
        self.send(ops, index, generation, frame);
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
                        self.send_or_queue(ops, index, frame);
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

    fn publish_progress(&self) {
        let p = &self.progress[self.id];
        let r = &self.result;
        p.established.store(r.established, Ordering::Relaxed);
        p.open.store(self.open, Ordering::Relaxed);
        p.connecting.store(self.connecting, Ordering::Relaxed);
        p.failed.store(r.failed.total(), Ordering::Relaxed);
        p.dropped.store(r.dropped.total(), Ordering::Relaxed);
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
    fn plans_split_connections_evenly() {
        let plans: Vec<u64> = (0..6u64).map(|id| (100_000 - id).div_ceil(6)).collect();
        assert_eq!(plans.iter().sum::<u64>(), 100_000);
        assert!(plans.iter().all(|&n| n == 16_666 || n == 16_667));
    }
}
