//! One pinned worker: its ring, listener, buffer ring, connection slab and timer wheel.
//!
//! One loop turn: wait for completions (or the wheel's next tick) → handle every completion,
//! running the protocol and the service → fire due timers → flush every dirty connection's
//! queue → hand receive buffers back → submit everything in the next wait.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use io_uring::types::Fd;
use io_uring::{opcode, squeue, IoUring};
use nix::sys::signalfd::SignalFd;
use slab::Slab;
use tracing::{info, warn};

use super::buf_ring::BufRing;
use super::conn::{Conn, SendVec};
use super::ring::{self};
use super::service::WorkerView;
use super::timer::{TimerEntry, TimerWheel};
use super::user_data::{OpKind, UserData};
use super::DriverConfig;
use super::{Features, Service, Shared};

/// After a stop, how long past the drain timeout the worker waits for the kernel to return
/// its operations before it exits anyway (leaking, never freeing, what the kernel may touch).
const TEARDOWN_GRACE: Duration = Duration::from_secs(2);
/// Builds an SQE on a connection's descriptor: a direct slot (`types::Fixed`) or, in the
/// fallback, a plain descriptor (`types::Fd`). The crate's target trait is sealed, so the
/// choice is a branch around the constructor.
macro_rules! on_conn {
    ($direct:expr, $slot:expr, |$target:ident| $build:expr) => {
        if $direct {
            let $target = Fixed($slot);
            $build
        } else {
            let $target = Fd($slot as i32);
            $build
        }
    };
}

/// A [`WorkerView`] of the worker, borrowing its fields one by one so the service (and the
/// receive buffers) stay free to borrow beside it.
macro_rules! ctx {
    ($worker:ident) => {
        WorkerView {
            conns: &mut $worker.conns,
            dirty: &mut $worker.dirty,
            now_tick: $worker.wheel.tick_at(Instant::now()),
            drain_ticks: $worker.drain_ticks,
            wheel: &mut $worker.wheel,
            max_backlog_bytes: $worker.config.max_backlog_bytes,
            stats: &$worker.shared.stats[$worker.id],
            worker: $worker.id,
            shared: &$worker.shared,
            deflate: &mut $worker.deflate,
        }
    };
}

mod accept;
mod deadlines;
mod dispatch;
mod lifecycle;
mod send;
mod tls;

/// The key used in user_data for operations that belong to no connection.
const NO_KEY: u32 = u32::MAX;
/// The generation field of an accept's user_data tells the two kinds apart.
const ACCEPT_MULTI: u32 = 0;
const ACCEPT_SINGLE: u32 = 1;
/// Single-shot accepts kept in flight when slots are scarce.
const MAX_SINGLE_ACCEPTS: usize = 16;

/// Everything a worker thread needs to start.
pub(crate) struct WorkerSetup {
    pub id: usize,
    pub listener: OwnedFd,
    pub config: Arc<DriverConfig>,
    pub shared: Arc<Shared>,
    pub features: Features,
    pub signals: Option<SignalFd>,
    /// Reports the worker's capacity once it accepts, or why it could not start.
    pub ready: mpsc::Sender<Result<usize, io::Error>>,
}

/// Runs a worker on the current thread until the server stops.
pub(crate) fn run_worker<S: Service>(setup: WorkerSetup, service: S) {
    let span = tracing::info_span!("worker", id = setup.id);
    let _entered = span.enter();
    let ready = setup.ready.clone();
    match Worker::new(setup, service) {
        Ok(mut worker) => {
            let _ = ready.send(Ok(worker.capacity));
            if let Err(error) = worker.run() {
                tracing::error!(%error, "worker stopped on a ring error");
            }
            worker.finish();
            // Dropping `worker` frees what the kernel saw only if `finish` found it quiescent.
        }
        Err(error) => {
            let _ = ready.send(Err(error));
        }
    }
}

/// The `ManuallyDrop` fields are the ring and everything its operations may read or write:
/// [`Drop`] frees them only once [`finish`](Worker::finish) has seen every operation end
/// (`quiescent`), and leaks them otherwise (a ring error, a panic), never freeing memory the
/// kernel may still touch.
struct Worker<S: Service> {
    ring: ManuallyDrop<IoUring>,
    bufs: ManuallyDrop<BufRing>,
    /// Connections are direct descriptors (slots of the ring's table), not plain ones.
    direct: bool,
    conns: ManuallyDrop<Slab<Conn<S::Data>>>,
    /// Spare send vectors, boxed because their address is handed to the kernel.
    #[allow(clippy::vec_box)]
    send_vecs: ManuallyDrop<Vec<Box<SendVec>>>,
    /// TLS sessions and their ciphertext buffers, when the listener speaks TLS.
    tls: ManuallyDrop<Option<tls::TlsLayer>>,
    wheel: TimerWheel,
    service: S,
    config: Arc<DriverConfig>,
    shared: Arc<Shared>,
    id: usize,
    listener: OwnedFd,
    signals: Option<SignalFd>,
    signal_buf: ManuallyDrop<Box<[u8; 128]>>,
    wake_buf: ManuallyDrop<Box<[u8; 8]>>,
    /// The wake eventfd's read is in flight.
    wake_armed: bool,
    /// The signalfd's read is in flight.
    signal_armed: bool,
    /// No operation is left in the kernel: `Drop` may free what they pointed to.
    quiescent: bool,
    /// Direct descriptors in this ring's table.
    capacity: usize,
    /// A multishot accept is armed (and not yet asked to stop).
    multishot_armed: bool,
    /// Single-shot accepts in flight, used when few slots are left.
    singles_in_flight: usize,
    /// Below this many free slots, accept one connection per submission: a multishot accept
    /// may take a whole listen backlog in one go, and a connection the kernel accepts without
    /// a free slot is reset.
    multishot_min_free: usize,
    /// The table was full: accept again once a slot frees.
    accept_paused: bool,
    /// After a transient accept error: when to try again.
    accept_retry: Option<Instant>,
    last_accept_warning: Option<Instant>,
    next_generation: u32,
    /// Keys of connections with something to flush this turn.
    dirty: Vec<usize>,
    /// Keys of connections with an answer to what they sent this turn (an HTTP response, a
    /// handshake's 101): flushed before `dirty`, so that the fan-out a request started does
    /// not hold back the answer its client waits for.
    replies: Vec<usize>,
    /// A connection was accepted in this reap: its receive is armed but not yet submitted.
    accepted_in_reap: bool,
    /// Bytes held in unfinished messages and request bodies, over all connections; at most
    /// `config.max_pending_bytes`.
    pending_bytes: u64,
    /// Connections whose receive ran out of buffers this turn, with their generation.
    starved: Vec<(usize, u32)>,
    /// Submissions waiting for room in the submission queue (see [`push`](Self::push)).
    unsubmitted: VecDeque<squeue::Entry>,
    /// Completions moved out of the ring so the kernel could take submissions, not yet handled.
    held_cqes: Vec<(u64, i32, u32)>,
    last_submit_warning: Option<Instant>,
    last_overflow: u32,
    due: Vec<TimerEntry>,
    cqes: Vec<(u64, i32, u32)>,
    /// The buffers of the receive being handled (several for a bundle).
    filled: Vec<(u16, usize)>,
    /// Receive with bundles (kernel 6.10): one completion may fill several buffers.
    bundles: bool,
    /// When set, the worker is draining towards exit: the instant to give up waiting.
    stop_deadline: Option<Instant>,
    ping_ticks: Option<Duration>,
    /// What a silent connection is sent (the text frame of the service's own ping, encoded
    /// once, or `None` for a WebSocket ping) and the close if it stays silent.
    keepalive: (Option<bytes::Bytes>, crate::driver::Keepalive),
    /// The drain timeout in ticks.
    drain_ticks: u32,
    /// permessage-deflate's compressor and inflater, for all connections.
    deflate: crate::driver::service::PerMessageDeflate,
    /// Where single-shot accepts write their peers' addresses (`config.peer_addresses`),
    /// one per accept in flight; boxed, so the kernel's pointers into it stay valid.
    accept_addrs: ManuallyDrop<Box<[accept::PeerAddr; MAX_SINGLE_ACCEPTS]>>,
    /// Bit `i` set: `accept_addrs[i]` is free.
    accept_addrs_free: u16,
}

impl<S: Service> Worker<S> {
    fn new(setup: WorkerSetup, service: S) -> io::Result<Self> {
        let config = setup.config;
        let ring = build_ring(config.ring_entries, setup.features, setup.id)?;
        // The table may hold as many descriptors as RLIMIT_NOFILE allows, per ring.
        let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_err(io::Error::from)?;
        let limit = usize::try_from(soft).unwrap_or(usize::MAX).min(1 << 20);
        let direct = config.direct_descriptors
            && match ring.submitter().register_files_sparse(limit as u32) {
                Ok(()) => true,
                Err(error) => {
                    warn!(%error, "direct descriptors unavailable; falling back to plain descriptors, \
                                   so capacity is bounded by the process's RLIMIT_NOFILE");
                    false
                }
            };
        // Plain descriptors share the process's table: split it, keeping room for the rest.
        let capacity = if direct {
            limit
        } else {
            limit.saturating_sub(64) / config.workers
        };
        let (count, size) = (config.recv_buffers, config.recv_buffer_bytes);
        // The worker holds `bufs` in a `ManuallyDrop` that its `Drop` frees only after
        // `finish` unregistered the group with no receive in flight, and leaks otherwise.
        // SAFETY: so the buffers outlive the registration (see above).
        let bufs = unsafe { BufRing::register(&ring, 0, count, size) }?;
        let start = Instant::now();
        let deflate = crate::driver::service::PerMessageDeflate::new(
            config.deflate,
            config.deflate_min_bytes,
        );
        let keepalive = service.keepalive();
        let ping_frame = keepalive.text_ping.as_ref().map(|payload| {
            crate::protocol::frame::encode_frame(crate::protocol::OpCode::Text, true, payload, None)
        });
        Ok(Self {
            ring: ManuallyDrop::new(ring),
            bufs: ManuallyDrop::new(bufs),
            direct,
            // Reserved up front (untouched pages cost no memory) so the slab never doubles
            // and copies, and never holds twice the live connections' worth of slots.
            conns: ManuallyDrop::new(Slab::with_capacity(capacity)),
            send_vecs: ManuallyDrop::new(Vec::new()),
            tls: ManuallyDrop::new(config.tls.clone().map(tls::TlsLayer::new)),
            wheel: TimerWheel::new(start),
            service,
            ping_ticks: config.ping_interval,
            keepalive: (ping_frame, keepalive),
            drain_ticks: config
                .drain_timeout
                .as_millis()
                .div_ceil(super::timer::TICK.as_millis())
                .min(u32::MAX as u128) as u32,
            config,
            shared: setup.shared,
            id: setup.id,
            listener: setup.listener,
            signals: setup.signals,
            signal_buf: ManuallyDrop::new(Box::new([0; 128])),
            wake_buf: ManuallyDrop::new(Box::new([0; 8])),
            wake_armed: false,
            signal_armed: false,
            quiescent: false,
            capacity,
            multishot_armed: false,
            singles_in_flight: 0,
            multishot_min_free: accept::listen_backlog() + 64,
            accept_paused: false,
            accept_retry: None,
            last_accept_warning: None,
            next_generation: 0,
            dirty: Vec::new(),
            replies: Vec::new(),
            accepted_in_reap: false,
            pending_bytes: 0,
            starved: Vec::new(),
            unsubmitted: VecDeque::new(),
            held_cqes: Vec::new(),
            last_submit_warning: None,
            last_overflow: 0,
            due: Vec::new(),
            cqes: Vec::with_capacity(1024),
            filled: Vec::new(),
            bundles: setup.features.recv_bundle,
            deflate,
            stop_deadline: None,
            accept_addrs: ManuallyDrop::new(Box::new(
                [accept::PeerAddr::EMPTY; MAX_SINGLE_ACCEPTS],
            )),
            accept_addrs_free: u16::MAX,
        })
    }

    fn run(&mut self) -> io::Result<()> {
        self.arm_accepts();
        self.arm_wake();
        self.arm_signals();
        self.ring.submit()?;
        loop {
            let now = Instant::now();
            if self.should_exit(now) {
                return Ok(());
            }
            self.wait(now)?;
            self.reap();
            let now = Instant::now();
            self.fire_timers(now);
            if self.accept_retry.is_some_and(|at| now >= at) {
                self.accept_retry = None;
                self.accept_paused = false;
            }
            if let Some(deadline) = self.stop_deadline {
                if now >= deadline {
                    self.teardown_all();
                }
            }
            self.flush();
            self.bufs.publish();
            self.rearm_starved();
            self.arm_accepts();
            self.push_unsubmitted();
            self.stats()
                .timers
                .store(self.wheel.len() as u64, Ordering::Relaxed);
            let overflow = self.ring.completion().overflow();
            if overflow != self.last_overflow {
                // Completions the kernel dropped: a bug, logged once per new count.
                warn!(
                    dropped = overflow.wrapping_sub(self.last_overflow),
                    "completion queue overflowed"
                );
                self.last_overflow = overflow;
            }
        }
    }

    /// Submits what is queued and waits for a completion or the next timer tick.
    fn wait(&mut self, now: Instant) -> io::Result<()> {
        let timeout = match (
            self.wheel.timeout(now),
            self.stop_deadline.or(self.accept_retry),
        ) {
            (Some(t), _) => Some(t),
            (None, Some(_)) => Some(super::timer::TICK),
            (None, None) => None,
        };
        ring::submit_and_wait(&self.ring, timeout)
    }

    fn on_wake(&mut self, _result: i32) {
        self.wake_armed = false;
        if self.shared.stopping.load(Ordering::Acquire) && self.stop_deadline.is_none() {
            self.begin_stop();
        }
        let mut ctx = ctx!(self);
        self.service.on_wake(&mut ctx);
        if self.stop_deadline.is_none() {
            self.arm_wake();
        }
    }

    fn on_signal(&mut self, result: i32) {
        self.signal_armed = false;
        // `struct signalfd_siginfo` starts with the signal's number (`ssi_signo`, a u32).
        let signo = u32::from_ne_bytes([
            self.signal_buf[0],
            self.signal_buf[1],
            self.signal_buf[2],
            self.signal_buf[3],
        ]);
        if result > 0 && signo == libc::SIGHUP as u32 {
            self.reload_tls();
            self.arm_signals();
        } else if result > 0 {
            info!("signal received: shutting down");
            self.shared.stop();
        } else if result != -libc::ECANCELED {
            self.arm_signals();
        }
    }

    fn arm_wake(&mut self) {
        let ud = UserData::new(OpKind::Wake, 0, NO_KEY).pack();
        let fd = self.shared.wakers[self.id].as_raw_fd();
        let entry = opcode::Read::new(Fd(fd), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(ud);
        // `wake_buf` is a Box owned by the worker, freed by `Drop` only when `finish` saw
        // this read end (`wake_armed` false), and leaked otherwise.
        // SAFETY: the read's target outlives the read (see above).
        unsafe { self.push(&entry) };
        self.wake_armed = true;
    }

    fn arm_signals(&mut self) {
        let Some(signals) = &self.signals else { return };
        let ud = UserData::new(OpKind::Signal, 0, NO_KEY).pack();
        let entry = opcode::Read::new(Fd(signals.as_raw_fd()), self.signal_buf.as_mut_ptr(), 128)
            .build()
            .user_data(ud);
        // `signal_buf` is a Box owned by the worker, freed by `Drop` only when `finish` saw
        // this read end (`signal_armed` false), and leaked otherwise.
        // SAFETY: the read's target outlives the read (see above).
        unsafe { self.push(&entry) };
        self.signal_armed = true;
    }

    /// Pushes one submission. When the submission queue is full it submits what is queued and
    /// tries again; it never handles a completion, so no caller sees the worker's state change
    /// under it. An entry the kernel cannot take now waits in `unsubmitted`, in order, for the
    /// next turn.
    ///
    /// # Safety
    ///
    /// Every buffer the entry names must stay valid until its completion is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) {
        if self.unsubmitted.is_empty() {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            // SAFETY: as above.
            if self.submit_queued() && unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
        }
        // Bounded: each entry is one operation whose state (and buffers) a connection or the
        // worker already holds, and each holds at most a receive, a send and one of shutdown,
        // cancel and close at a time.
        self.unsubmitted.push_back(entry.clone());
    }

    /// Moves the submissions that waited for room into the queue, before the turn's wait.
    fn push_unsubmitted(&mut self) {
        while let Some(entry) = self.unsubmitted.front() {
            // Every entry here came through `push`, whose caller guaranteed its buffers
            // outlive its completion; waiting in the list changes nothing about that.
            // SAFETY: the entry's buffers outlive its completion (see above).
            if unsafe { self.ring.submission().push(entry) }.is_err() {
                if !self.submit_queued() {
                    return;
                }
                continue;
            }
            self.unsubmitted.pop_front();
        }
    }

    /// Submits the queued entries without waiting and without handling any completion;
    /// returns whether the kernel took them.
    pub(super) fn submit_queued(&mut self) -> bool {
        let error = match self.ring.submit() {
            Ok(_) => return true,
            Err(error) => error,
        };
        let retry = match error.raw_os_error() {
            // The completion queue is full: move its entries out of the ring, to be handled
            // at the next reap, and try once more.
            Some(libc::EBUSY) => {
                ring::append_completions(&mut self.ring, &mut self.held_cqes);
                self.ring.submit()
            }
            Some(libc::EINTR | libc::EAGAIN) => self.ring.submit(),
            _ => Err(error),
        };
        match retry {
            Ok(_) => true,
            Err(error) => {
                let now = Instant::now();
                self.stats().submit_failures.fetch_add(1, Ordering::Relaxed);
                if self
                    .last_submit_warning
                    .is_none_or(|at| now - at >= Duration::from_secs(10))
                {
                    self.last_submit_warning = Some(now);
                    warn!(%error, "submit failed; the entries wait for the next turn (logged at most every 10 s)");
                }
                false
            }
        }
    }

    /// This worker's counters.
    fn stats(&self) -> &super::WorkerStats {
        &self.shared.stats[self.id]
    }
}

impl<S: Service> Drop for Worker<S> {
    fn drop(&mut self) {
        // Closing the ring while operations are in flight frees none of the memory they
        // point to: that is below, and leaked in that case.
        // SAFETY: `ring` is not used after this.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
        if !self.quiescent {
            // A ring error or a panic ended the loop with operations possibly in flight:
            // their buffers, send frames, ciphertext, iovecs and read targets stay allocated
            // for good.
            return;
        }
        // `finish` set `quiescent` only after every operation's last completion was reaped
        // and the buffer ring was unregistered, so the kernel holds no pointer into these.
        // SAFETY: the kernel holds no pointer into them (see above) and none is used after.
        unsafe {
            ManuallyDrop::drop(&mut self.bufs);
            ManuallyDrop::drop(&mut self.conns);
            ManuallyDrop::drop(&mut self.send_vecs);
            ManuallyDrop::drop(&mut self.tls);
            ManuallyDrop::drop(&mut self.signal_buf);
            ManuallyDrop::drop(&mut self.wake_buf);
            ManuallyDrop::drop(&mut self.accept_addrs);
        }
    }
}

/// Builds the worker's ring (a completion queue four times its submission queue: multishot
/// receives post many completions per submission).
fn build_ring(entries: u32, features: Features, id: usize) -> io::Result<IoUring> {
    let (ring, setup) = ring::build(entries, entries * 4, features.defer_taskrun)?;
    match setup {
        ring::Setup::DeferTaskrun if id == 0 => info!("ring setup: {}", setup.flags()),
        ring::Setup::DeferTaskrun => {}
        _ => warn!("ring setup: {}; DEFER_TASKRUN unavailable", setup.flags()),
    }
    Ok(ring)
}
