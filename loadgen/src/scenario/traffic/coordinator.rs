//! The coordinating side of a run: it walks every thread through the phases, samples the
//! server and the kernel between them, and sums what the threads measured.

use std::io::{self, IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::outcome::ThreadResult;
use super::{
    Command, Event, Expect, Outcome, Progress, ProgressStyle, Senders, ServerSamples, Settings,
    StopSample, DRAIN_GRACE, POLL, PROGRESS_EVERY,
};
use crate::error::LoadError;
use crate::interrupt;
use crate::procfs::{self, ProcessSample};
use crate::scenario::stamp;

/// How long the coordinator waits for a thread beyond every bound the thread has itself.
const STRAGGLER_WAIT: Duration = Duration::from_secs(30);
/// Traffic starts this long after the last connection is up, on every thread at once.
const GO_DELAY: Duration = Duration::from_millis(50);
/// How the server's CPU time is watched for the end of its teardown work after the close.
const SETTLE_EVERY: Duration = Duration::from_millis(100);
const SETTLE_MAX: Duration = Duration::from_secs(10);

/// The coordinating side of a run.
pub(super) struct Coordinator<'a> {
    pub(super) settings: &'a Settings,
    pub(super) commands: Vec<Sender<Command>>,
    pub(super) handles: Vec<JoinHandle<()>>,
    pub(super) events: Receiver<Event>,
    pub(super) progress: Arc<[Progress]>,
    pub(super) results: Vec<ThreadResult>,
    /// What the threads' publishers sent, summed as they stop.
    pub(super) sent: Expect,
    pub(super) line: ProgressLine,
    /// When the first connection was due: the zero of [`ProgressStyle::Connections`] lines.
    pub(super) first_connection: Instant,
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
    pub(super) fn drive(&mut self, senders: &mut dyn Senders) -> Result<Outcome, LoadError> {
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
        let until_go = self.until_go()?;
        let go = Instant::now() + until_go;
        let go_ns = stamp::now_ns() + until_go.as_nanos() as u64;
        self.broadcast(|| Command::Go(go_ns));
        senders.go(go_ns);
        std::thread::sleep(go.saturating_duration_since(Instant::now()));
        // The wall clock and the monotonic one may differ by a hair: the start recorded is
        // never before the one asked for.
        if let Some(early) = settings
            .start_at
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
        {
            std::thread::sleep(early);
        }
        let started_at_unix_s = unix_seconds(SystemTime::now());
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
            deflate: settings.deflate,
            wire: sum.wire,
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
            tls_handshake: sum.tls_handshake,
            tls_resumed: sum.tls_resumed,
            closing: sum.closing,
            ramp: connected_at.saturating_duration_since(start),
            duration: stopped_at.saturating_duration_since(go),
            started_at_unix_s,
            elapsed: finished.saturating_duration_since(start),
            interrupted,
            server,
            client_cpu_s: client_after.saturating_sub(client_before) as f64 / ticks,
            client_rss_bytes,
            slab: slab_before.zip(slab_stop),
            diagnostics: sum.diagnostics,
            sender_errors: senders.errors(),
            reconnect: sum.reconnect,
        })
    }

    /// How long from now traffic starts: [`GO_DELAY`], or with `--start-at` what is left of
    /// the wait for it, once this has waited until `GO_DELAY` before it (watching the threads
    /// and Ctrl-C, which ends the wait).
    ///
    /// # Errors
    ///
    /// [`LoadError::Usage`] when the time has passed by the time the connections are up: a
    /// late start would not be together with the other processes, so the run is refused.
    fn until_go(&mut self) -> Result<Duration, LoadError> {
        let Some(at) = self.settings.start_at else {
            return Ok(GO_DELAY);
        };
        if self.settings.progress != ProgressStyle::Off {
            if let Ok(left) = at.duration_since(SystemTime::now()) {
                eprintln!(
                    "uringcast-load: connections up; traffic starts at {:.3} (in {:.1} s)",
                    unix_seconds(at),
                    left.as_secs_f64()
                );
            }
        }
        loop {
            let left = at.duration_since(SystemTime::now()).map_err(|late| {
                LoadError::Usage(format!(
                    "--start-at {:.3} passed {:.3} s before traffic could start (connections \
                     took until then): give a later time",
                    unix_seconds(at),
                    late.duration().as_secs_f64()
                ))
            })?;
            if interrupt::requested() {
                return Ok(Duration::ZERO);
            }
            if left <= GO_DELAY {
                return Ok(left);
            }
            match self.events.recv_timeout((left - GO_DELAY).min(POLL)) {
                Ok(Event::Failed(id, source)) => return Err(LoadError::Thread { id, source }),
                Ok(Event::Finished(r)) => self.results.push(*r),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(thread_vanished()),
            }
        }
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

    pub(super) fn stop_and_join(&mut self) {
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

/// Seconds since the Unix epoch (0 for a clock set before it).
fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

fn thread_vanished() -> LoadError {
    LoadError::Thread {
        id: usize::MAX,
        source: io::Error::other("a client thread exited without reporting"),
    }
}

/// One progress line on stderr, rewritten in place, only when stderr is a terminal.
pub(super) struct ProgressLine {
    on: bool,
    printed: bool,
}

impl ProgressLine {
    pub(super) fn new(wanted: bool) -> Self {
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
