//! The engine of every scenario (`connect`, `echo`, `broadcast`): client threads that open
//! their connections, exchange messages for the duration, drain what is still in flight, and
//! close. `connect` is the case with no messages: its hold is the traffic phase.
//!
//! Each thread owns one [`ClientRing`](crate::uring::ClientRing): connections are opened by
//! one linked chain per connection into a direct descriptor slot (socket → [setsockopt → bind]
//! → connect → send the upgrade request), then receive with a multishot receive
//! into the thread's provided buffer ring, with bundles where the kernel has them, so one
//! completion may carry many frames. Frames are parsed by the protocol core
//! ([`WebSocket`](uringcast::protocol::WebSocket) on the client side, pings answered); each
//! message goes to the scenario's [`Workload`], which checks it and may send more through an
//! [`Outbox`]. Frames queued for a
//! connection go out as one send per loop turn (one send in flight per connection).
//!
//! A run has fixed phases, driven by the coordinating thread: connect every connection →
//! traffic for the duration (`Go`) → stop sending (`Stop`) → drain until every expected message
//! is in or the drain timeout (`Drain`) → closing handshakes → report. Besides the messages it
//! measures each connection's TCP connect, handshake and closing handshake, and samples the
//! server and the kernel before connecting, at `Go`, at `Stop` and after the drain.
//!
//! The module follows that split: [`settings`] (what a run is asked to do), [`plan`] (which
//! connections and addresses each thread owns), [`workload`] (the scenario's side: what to send,
//! how to check it), [`coordinator`] (the phases, driven from the calling thread), [`thread`]
//! (one client thread's loop over its ring), [`conn`] and [`net`] (a thread's connections and
//! their operations), [`recv`] (received bytes through the protocol core), [`compression`]
//! (permessage-deflate, and bytes on the wire against payload bytes) and [`outcome`] (what a
//! run measured).

mod compression;
mod conn;
mod coordinator;
mod net;
mod outcome;
mod plan;
mod reconnect;
mod recv;
mod settings;
mod stream;
mod thread;
mod tls;
mod workload;

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use self::compression::{Deflate, WireTally};
pub use self::outcome::{Outcome, ServerSamples, StopSample};
pub use self::plan::target_of;
pub use self::plan::Plan;
pub use self::reconnect::{
    Policy, ReconnectTally, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP, DEFAULT_GIVE_UP_SECS,
    DEFAULT_MAX_ATTEMPTS,
};
pub use self::settings::{
    ProgressStyle, Settings, Split, DEFAULT_CONNECT_RATE, DEFAULT_DRAIN_TIMEOUT_SECS,
    MAX_MESSAGE_BYTES,
};
pub use self::workload::{
    new_histogram, Expect, NoSenders, NodeTally, Outbox, Senders, Tally, Workload,
};

use self::coordinator::{Coordinator, ProgressLine};
use self::outcome::ThreadResult;
use self::thread::ThreadSetup;
use crate::error::LoadError;
use crate::uring::ClientFeatures;

/// The longest a thread waits in the kernel: how soon it sees a command.
const POLL: Duration = Duration::from_millis(20);
/// After the close timeout, how long to wait for the kernel to return the last operations.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

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
