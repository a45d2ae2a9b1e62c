//! One pinned worker: its ring, listener, buffer ring, connection slab and timer wheel.
//!
//! One loop turn: wait for completions (or the wheel's next tick) → handle every completion,
//! running the protocol and the service → fire due timers → flush every dirty connection's
//! queue → hand receive buffers back → submit everything in the next wait.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd, Fixed};
use io_uring::{cqueue, opcode, squeue, IoUring};
use nix::sys::signalfd::SignalFd;
use slab::Slab;
use tracing::{debug, info, trace, warn};

use super::buf_ring::BufRing;
use super::conn::{Conn, Ending, SendVec, Stage, MAX_IOVECS};
use super::ring::{self, GENERATION_MASK};
use super::service::{Admission, ConnId, Ctx};
use super::timer::{TimerEntry, TimerWheel};
use super::user_data::{OpKind, UserData};
use super::{Features, Service, Shared};
use crate::config::Config;
use crate::protocol::connection::Read;
use crate::protocol::handshake::http_response;
use crate::protocol::{CloseCode, CloseState, Limits, WebSocket};

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

/// A [`Ctx`] over the worker's connections, borrowing its fields one by one so the service
/// (and the receive buffers) stay free to borrow beside it.
macro_rules! ctx {
    ($worker:ident) => {
        Ctx {
            conns: &mut $worker.conns,
            dirty: &mut $worker.dirty,
            now_tick: $worker.wheel.tick_at(Instant::now()),
            drain_ticks: $worker.drain_ticks,
            wheel: &mut $worker.wheel,
            max_backlog_bytes: $worker.config.max_backlog_bytes,
            stats: &$worker.shared.stats[$worker.id],
            worker: $worker.id,
            shared: &$worker.shared,
        }
    };
}

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
    pub config: Arc<Config>,
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
        }
        Err(error) => {
            let _ = ready.send(Err(error));
        }
    }
}

struct Worker<S: Service> {
    // Field order is drop order: the ring goes first, so the kernel lets go of every buffer
    // before the buffers below are freed.
    ring: IoUring,
    bufs: BufRing,
    /// Connections are direct descriptors (slots of the ring's table), not plain ones.
    direct: bool,
    conns: Slab<Conn<S::Data>>,
    /// Spare send vectors, boxed because their address is handed to the kernel.
    #[allow(clippy::vec_box)]
    send_vecs: Vec<Box<SendVec>>,
    wheel: TimerWheel,
    service: S,
    config: Arc<Config>,
    shared: Arc<Shared>,
    id: usize,
    listener: OwnedFd,
    signals: Option<SignalFd>,
    signal_buf: Box<[u8; 128]>,
    wake_buf: Box<[u8; 8]>,
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
    due: Vec<TimerEntry>,
    cqes: Vec<(u64, i32, u32)>,
    /// The buffers of the receive being handled (several for a bundle).
    filled: Vec<(u16, usize)>,
    /// Receive with bundles (kernel 6.10): one completion may fill several buffers.
    bundles: bool,
    /// When set, the worker is draining towards exit: the instant to give up waiting.
    stop_deadline: Option<Instant>,
    ping_ticks: Option<Duration>,
    /// The drain timeout in ticks.
    drain_ticks: u32,
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
        let bufs = BufRing::register(&ring, 0, config.recv_buffers, config.recv_buffer_bytes)?;
        let start = Instant::now();
        Ok(Self {
            ring,
            bufs,
            direct,
            // Reserved up front (untouched pages cost no memory) so the slab never doubles
            // and copies, and never holds twice the live connections' worth of slots.
            conns: Slab::with_capacity(capacity),
            send_vecs: Vec::new(),
            wheel: TimerWheel::new(start),
            service,
            ping_ticks: config.ping_interval,
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
            signal_buf: Box::new([0; 128]),
            wake_buf: Box::new([0; 8]),
            capacity,
            multishot_armed: false,
            singles_in_flight: 0,
            multishot_min_free: listen_backlog() + 64,
            accept_paused: false,
            accept_retry: None,
            last_accept_warning: None,
            next_generation: 0,
            dirty: Vec::new(),
            due: Vec::new(),
            cqes: Vec::with_capacity(1024),
            filled: Vec::new(),
            bundles: setup.features.recv_bundle,
            stop_deadline: None,
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
            self.arm_accepts();
            if self.ring.completion().overflow() > 0 {
                warn!(
                    overflow = self.ring.completion().overflow(),
                    "completion queue overflowed"
                );
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

    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        // Completions are copied out first so that handling them may push submissions.
        loop {
            ring::take_completions(&mut self.ring, &mut cqes);
            if cqes.is_empty() {
                break;
            }
            for &(user_data, result, flags) in &cqes {
                self.complete(user_data, result, flags);
            }
        }
        self.cqes = cqes;
    }

    fn complete(&mut self, raw: u64, result: i32, flags: u32) {
        let Some(ud) = UserData::unpack(raw) else {
            warn!(user_data = raw, "completion with an unknown user_data");
            return;
        };
        match ud.kind {
            OpKind::Accept => self.on_accept(ud.generation == ACCEPT_SINGLE, result, flags),
            OpKind::Cancel if ud.key == NO_KEY => {}
            OpKind::Wake => self.on_wake(result),
            OpKind::Signal => self.on_signal(result),
            kind => {
                let key = ud.key as usize;
                let live = self
                    .conns
                    .get(key)
                    .is_some_and(|c| c.generation & GENERATION_MASK == ud.generation);
                if !live {
                    // A completion for a slot already reused: keep the buffer, touch nothing.
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        self.bufs.push(bid);
                    }
                    self.shared.stats[self.id]
                        .stale_completions
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                match kind {
                    OpKind::Recv => self.on_recv(key, result, flags),
                    OpKind::Send => self.on_send(key, result),
                    OpKind::Shutdown | OpKind::Cancel | OpKind::Close => {
                        let conn = &mut self.conns[key];
                        trace!(key, ?kind, result, slot = conn.slot, "op done");
                        conn.pending_ops -= 1;
                        if kind == OpKind::Close {
                            // A slot is free again: accept if the table was full.
                            self.accept_paused = false;
                        } else if kind == OpKind::Shutdown && result < 0 {
                            self.teardown(key);
                        }
                        self.maybe_remove(key);
                    }
                    OpKind::Accept | OpKind::Wake | OpKind::Signal => {}
                }
            }
        }
    }

    fn on_accept(&mut self, single: bool, result: i32, flags: u32) {
        if single {
            self.singles_in_flight -= 1;
        } else if !cqueue::more(flags) {
            self.multishot_armed = false;
        }
        if result < 0 {
            match -result {
                libc::ENFILE | libc::EMFILE => {
                    warn!(
                        capacity = self.capacity,
                        "fixed file table full; accepting paused until a connection closes"
                    );
                    self.accept_paused = true;
                }
                libc::ECANCELED => {}
                errno => {
                    let now = Instant::now();
                    if self
                        .last_accept_warning
                        .is_none_or(|at| now - at >= Duration::from_secs(10))
                    {
                        self.last_accept_warning = Some(now);
                        warn!(error = %io::Error::from_raw_os_error(errno), "accept failed (logged at most every 10 s)");
                    }
                    // Transient (ENOMEM, ECONNABORTED...): retry after a tick, not in a tight loop.
                    self.accept_paused = true;
                    self.accept_retry = Some(Instant::now() + super::timer::TICK);
                }
            }
            return;
        }
        let slot = result as u32;
        let now = Instant::now();
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1) & GENERATION_MASK;
        let tick = self.wheel.tick_at(now);
        let key = self.conns.insert(Conn::new(
            generation,
            slot,
            self.config.max_head_bytes,
            tick,
        ));
        let stats = &self.shared.stats[self.id];
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats
            .connections
            .store(self.conns.len() as u64, Ordering::Relaxed);
        trace!(key, slot, "accepted");
        self.arm_recv(key);
        self.set_deadline(key, now, self.config.handshake_timeout);
        if self.stop_deadline.is_some() {
            self.teardown(key);
        } else if self.multishot_armed && self.free_slots() < self.multishot_min_free {
            self.cancel_multishot_accept();
        }
    }

    fn on_recv(&mut self, key: usize, result: i32, flags: u32) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let conn = &mut self.conns[key];
        trace!(key, result, more, "recv");
        if !more {
            conn.recv_armed = false;
        }
        if result > 0 {
            let Some(bid) = bid else {
                warn!(key, "receive completion without a buffer");
                self.teardown(key);
                return;
            };
            let now_tick = self.wheel.tick_at(Instant::now());
            conn.last_recv_tick = now_tick;
            conn.ping_outstanding = false;
            let before = conn.ending;
            let mut filled = std::mem::take(&mut self.filled);
            self.bufs.bundle(bid, result as usize, &mut filled);
            let limits = Limits {
                max_message_bytes: self.config.max_message_bytes,
            };
            for &(bid, len) in &filled {
                let data = self.bufs.buffer_mut(bid, len);
                let mut ctx = ctx!(self);
                receive(&mut self.service, &mut ctx, key, data, limits);
                self.bufs.push(bid);
            }
            filled.clear();
            self.filled = filled;
            self.after_receive(key, before);
        } else if result == 0 {
            // The peer closed its side.
            self.teardown(key);
        } else {
            match -result {
                libc::ENOBUFS => {
                    self.shared.stats[self.id]
                        .recv_buffer_starvation
                        .fetch_add(1, Ordering::Relaxed);
                }
                libc::ECANCELED => {}
                libc::EAGAIN | libc::EINTR => {}
                errno => {
                    debug!(key, error = %io::Error::from_raw_os_error(errno), "receive failed");
                    self.teardown(key);
                }
            }
        }
        let conn = &self.conns[key];
        if !conn.recv_armed && conn.ending != Ending::Teardown {
            self.arm_recv(key);
        }
        self.maybe_remove(key);
    }

    /// Schedules what a receive made necessary: a flush, and the deadline of a new stage.
    fn after_receive(&mut self, key: usize, before: Ending) {
        let now = Instant::now();
        let conn = &mut self.conns[key];
        let upgraded = std::mem::take(&mut conn.upgraded_now);
        let flushing = conn.ending == Ending::Flush;
        if !conn.queue.is_empty() || flushing {
            self.mark_dirty(key);
        }
        if flushing && before == Ending::No {
            // Bounded: a peer that never reads cannot hold the connection open.
            self.set_deadline(key, now, self.config.drain_timeout);
        } else if upgraded {
            match self.ping_ticks {
                Some(interval) => self.set_deadline(key, now, interval),
                None => self.conns[key].deadline = super::timer::NEVER,
            }
        }
    }

    fn on_send(&mut self, key: usize, result: i32) {
        let conn = &mut self.conns[key];
        trace!(key, result, "send done");
        conn.send_in_flight = false;
        if let Some(vec) = conn.send_vec.take() {
            self.send_vecs.push(vec);
        }
        if result >= 0 {
            self.shared.stats[self.id]
                .bytes_out
                .fetch_add(result as u64, Ordering::Relaxed);
            conn.queue.consume(result as usize);
            if !conn.queue.is_empty() || conn.ending == Ending::Flush {
                self.mark_dirty(key);
            }
        } else {
            match -result {
                libc::EAGAIN | libc::EINTR | libc::ENOBUFS => self.mark_dirty(key),
                libc::ECANCELED => {}
                errno => {
                    debug!(key, error = %io::Error::from_raw_os_error(errno), "send failed");
                    self.teardown(key);
                }
            }
        }
        self.maybe_remove(key);
    }

    fn on_wake(&mut self, _result: i32) {
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
        if result > 0 {
            info!("signal received: shutting down");
            self.shared.stop();
        } else if result != -libc::ECANCELED {
            self.arm_signals();
        }
    }

    /// Stops accepting and sends close 1001 to every connection (RFC 6455 §7.4.1).
    fn begin_stop(&mut self) {
        let now = Instant::now();
        info!(connections = self.conns.len(), "draining");
        self.stop_deadline = Some(now + self.config.drain_timeout);
        self.cancel_accepts();
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            match (&mut conn.stage, conn.ending) {
                (Stage::Open(ws), Ending::No) => {
                    if let Some(frame) = ws.close(CloseCode::GOING_AWAY, "server shutting down") {
                        conn.queue.push_unbounded(frame);
                        self.mark_dirty(key);
                    }
                }
                (Stage::Handshake(_), _) => self.teardown(key),
                _ => {}
            }
        }
    }

    fn should_exit(&mut self, now: Instant) -> bool {
        let Some(deadline) = self.stop_deadline else {
            return false;
        };
        let accepting = self.multishot_armed || self.singles_in_flight > 0;
        (self.conns.is_empty() && !accepting) || now >= deadline + TEARDOWN_GRACE
    }

    fn teardown_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.teardown(key);
        }
    }

    /// After the loop: if the kernel still holds operations, their memory must outlive it.
    fn finish(self) {
        if !self.conns.is_empty() {
            warn!(
                connections = self.conns.len(),
                "exiting with operations in flight; leaking their buffers"
            );
            std::mem::forget(self.bufs);
            std::mem::forget(self.conns);
            std::mem::forget(self.send_vecs);
            return;
        }
        self.bufs.unregister(&self.ring);
        info!("stopped");
    }

    fn fire_timers(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(now, &mut due);
        for entry in due.drain(..) {
            let key = entry.key as usize;
            let current = self
                .conns
                .get(key)
                .is_some_and(|c| c.generation == entry.generation && c.deadline == entry.tick);
            if current {
                self.on_deadline(key, now);
            }
        }
        self.due = due;
    }

    fn on_deadline(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        conn.deadline = super::timer::NEVER;
        let close_state = match &conn.stage {
            Stage::Open(ws) => Some(ws.close_state()),
            Stage::Handshake(_) | Stage::Http { .. } | Stage::Answered => None,
        };
        match (conn.ending, close_state) {
            (Ending::Teardown, _) => {}
            // Handshake timeout, flush or linger over, or our close unanswered.
            (Ending::Flush | Ending::Linger, _)
            | (Ending::No, None | Some(CloseState::CloseSent | CloseState::Closed)) => {
                debug!(key, "deadline passed; dropping the connection");
                self.teardown(key);
            }
            (Ending::No, Some(CloseState::Open)) => self.on_ping_deadline(key, now),
        }
    }

    /// Pings a connection idle for an interval; closes 1001 one interval after an unanswered ping.
    fn on_ping_deadline(&mut self, key: usize, now: Instant) {
        let Some(interval) = self.ping_ticks else {
            return;
        };
        let interval_ticks = self.wheel.deadline(now, interval) - self.wheel.tick_at(now);
        let now_tick = self.wheel.tick_at(now);
        let conn = &mut self.conns[key];
        let Stage::Open(ws) = &mut conn.stage else {
            return;
        };
        let idle_since = conn.last_recv_tick;
        if now_tick < idle_since + interval_ticks && !conn.ping_outstanding {
            // Heard from recently: check again one interval after that.
            let tick = idle_since + interval_ticks;
            conn.deadline = tick;
            let generation = conn.generation;
            self.wheel.insert(TimerEntry {
                key: key as u32,
                generation,
                tick,
            });
            return;
        }
        if conn.ping_outstanding {
            debug!(key, "ping unanswered; closing 1001");
            if let Some(frame) = ws.close(CloseCode::GOING_AWAY, "ping timeout") {
                conn.queue.push_unbounded(frame);
            }
            self.mark_dirty(key);
            self.set_deadline(key, now, self.config.drain_timeout);
        } else if let Some(frame) = ws.ping(b"") {
            conn.queue.push_unbounded(frame);
            conn.ping_outstanding = true;
            self.mark_dirty(key);
            self.set_deadline(key, now, interval);
        }
    }

    fn set_deadline(&mut self, key: usize, now: Instant, delay: Duration) {
        let tick = self.wheel.deadline(now, delay);
        let conn = &mut self.conns[key];
        conn.deadline = tick;
        let generation = conn.generation;
        self.wheel.insert(TimerEntry {
            key: key as u32,
            generation,
            tick,
        });
    }

    fn mark_dirty(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Sends each dirty connection's queue, or shuts its write side once a final queue is out.
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            if conn.ending == Ending::Teardown || conn.send_in_flight {
                continue;
            }
            if !conn.queue.is_empty() {
                self.submit_send(key);
            } else if conn.ending == Ending::Flush {
                trace!(key, "shutdown");
                conn.ending = Ending::Linger;
                conn.pending_ops += 1;
                let ud = UserData::new(OpKind::Shutdown, conn.generation, key as u32);
                let entry = on_conn!(self.direct, conn.slot, |fd| {
                    opcode::Shutdown::new(fd, libc::SHUT_WR).build()
                })
                .user_data(ud.pack());
                // SAFETY: a shutdown reads no user memory.
                unsafe { self.push(&entry) };
            }
        }
        self.dirty = dirty;
    }

    fn submit_send(&mut self, key: usize) {
        let mut vec = self.send_vecs.pop().unwrap_or_else(new_send_vec);
        let conn = &mut self.conns[key];
        let ud = UserData::new(OpKind::Send, conn.generation, key as u32).pack();
        let mut count = 0;
        for (iov, frame) in vec.iov.iter_mut().zip(conn.queue.front(MAX_IOVECS)) {
            iov.iov_base = frame.as_ptr() as *mut libc::c_void;
            iov.iov_len = frame.len();
            count += 1;
        }
        let entry = if count == 1 {
            // One frame: a plain SEND needs no iovec, so the vector goes straight back.
            let (base, len) = (vec.iov[0].iov_base as *const u8, vec.iov[0].iov_len as u32);
            self.send_vecs.push(vec);
            on_conn!(self.direct, conn.slot, |fd| {
                opcode::Send::new(fd, base, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            })
        } else {
            vec.msg.msg_iov = vec.iov.as_mut_ptr();
            vec.msg.msg_iovlen = count;
            let entry = on_conn!(self.direct, conn.slot, |fd| {
                opcode::SendMsg::new(fd, &vec.msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            });
            conn.send_vec = Some(vec);
            entry
        };
        conn.send_in_flight = true;
        trace!(key, count, slot = conn.slot, "send");
        // The frames are `Bytes` at the front of the queue, consumed only in `on_send`; the
        // iovecs and header live in a `Box` stored in the connection until then, and a
        // connection leaves the slab only when quiescent (no send in flight).
        // SAFETY: everything the send reads stays put until its completion (see above).
        unsafe { self.push(&entry.user_data(ud)) };
    }

    /// `SOCK_CLOEXEC` for plain descriptors; direct ones are in no process table, and the
    /// kernel rejects the flag for them (`EINVAL`).
    fn accept_flags(&self) -> i32 {
        if self.direct {
            0
        } else {
            libc::SOCK_CLOEXEC
        }
    }

    /// Slots neither held by a connection nor promised to an accept in flight.
    fn free_slots(&self) -> usize {
        self.capacity
            .saturating_sub(self.conns.len() + self.singles_in_flight)
    }

    /// Keeps accepting while slots are free: one multishot accept while plenty are, else up
    /// to [`MAX_SINGLE_ACCEPTS`] single-shot accepts, never more than the free slots.
    fn arm_accepts(&mut self) {
        if self.accept_paused || self.stop_deadline.is_some() {
            return;
        }
        let listener = Fd(self.listener.as_raw_fd());
        if self.free_slots() >= self.multishot_min_free {
            if !self.multishot_armed && self.singles_in_flight == 0 {
                let entry = opcode::AcceptMulti::new(listener)
                    .allocate_file_index(self.direct)
                    .flags(self.accept_flags())
                    .build()
                    .user_data(UserData::new(OpKind::Accept, ACCEPT_MULTI, NO_KEY).pack());
                // SAFETY: accept into an allocated direct slot writes no user memory.
                unsafe { self.push(&entry) };
                self.multishot_armed = true;
            }
            return;
        }
        if self.multishot_armed {
            return; // its cancellation is on the way
        }
        while self.singles_in_flight < MAX_SINGLE_ACCEPTS && self.free_slots() > 0 {
            let slot = self
                .direct
                .then(io_uring::types::DestinationSlot::auto_target);
            let entry = opcode::Accept::new(listener, std::ptr::null_mut(), std::ptr::null_mut())
                .file_index(slot)
                .flags(self.accept_flags())
                .build()
                .user_data(UserData::new(OpKind::Accept, ACCEPT_SINGLE, NO_KEY).pack());
            // SAFETY: no address is requested, so the accept writes no user memory.
            unsafe { self.push(&entry) };
            self.singles_in_flight += 1;
        }
    }

    /// Cancels every accept in flight (multishot and single-shot alike).
    fn cancel_accepts(&mut self) {
        for target in [ACCEPT_MULTI, ACCEPT_SINGLE] {
            let target = UserData::new(OpKind::Accept, target, NO_KEY).pack();
            let entry = opcode::AsyncCancel2::new(CancelBuilder::user_data(target).all())
                .build()
                .user_data(UserData::new(OpKind::Cancel, 0, NO_KEY).pack());
            // SAFETY: a cancel reads no user memory.
            unsafe { self.push(&entry) };
        }
    }

    fn cancel_multishot_accept(&mut self) {
        let target = UserData::new(OpKind::Accept, ACCEPT_MULTI, NO_KEY).pack();
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(UserData::new(OpKind::Cancel, 0, NO_KEY).pack());
        // SAFETY: a cancel reads no user memory.
        unsafe { self.push(&entry) };
        // It stays armed until its last completion; no new accept is armed meanwhile.
    }

    fn arm_recv(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.recv_armed = true;
        let ud = UserData::new(OpKind::Recv, conn.generation, key as u32).pack();
        let entry = if self.bundles {
            on_conn!(self.direct, conn.slot, |fd| {
                opcode::RecvMultiBundle::new(fd, self.bufs.bgid()).build()
            })
        } else {
            on_conn!(self.direct, conn.slot, |fd| {
                opcode::RecvMulti::new(fd, self.bufs.bgid()).build()
            })
        }
        .user_data(ud);
        // Drop order frees the ring first, and `finish` leaks the buffers if operations remain.
        // SAFETY: the receive writes only into the worker's buffer ring, which outlives it.
        unsafe { self.push(&entry) };
    }

    fn arm_wake(&mut self) {
        let ud = UserData::new(OpKind::Wake, 0, NO_KEY).pack();
        let fd = self.shared.wakers[self.id].as_raw_fd();
        let entry = opcode::Read::new(Fd(fd), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(ud);
        // SAFETY: `wake_buf` is a Box owned by the worker, dropped only after the ring.
        unsafe { self.push(&entry) };
    }

    fn arm_signals(&mut self) {
        let Some(signals) = &self.signals else { return };
        let ud = UserData::new(OpKind::Signal, 0, NO_KEY).pack();
        let entry = opcode::Read::new(Fd(signals.as_raw_fd()), self.signal_buf.as_mut_ptr(), 128)
            .build()
            .user_data(ud);
        // SAFETY: `signal_buf` is a Box owned by the worker, dropped only after the ring.
        unsafe { self.push(&entry) };
    }

    /// Cancels every operation of the connection; its direct descriptor is closed once the
    /// kernel has returned them all (see [`maybe_remove`](Self::maybe_remove)).
    fn teardown(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.ending == Ending::Teardown {
            return;
        }
        trace!(key, slot = conn.slot, ending = ?conn.ending, "teardown");
        conn.ending = Ending::Teardown;
        if matches!(conn.stage, Stage::Open(_)) {
            let id = ConnId {
                key: key as u32,
                generation: conn.generation,
            };
            let data = std::mem::take(&mut conn.data);
            let mut ctx = ctx!(self);
            self.service.on_close(&mut ctx, id, data);
        }
        let conn = &mut self.conns[key];
        // Cancel each operation by its user_data: the kernel finds it by hash. Cancelling by
        // descriptor walks every pending request of the ring, so closing n connections at
        // once cost O(n^2) (measured: 89% of a mass close of 150,000 in io_cancel_req_match).
        let generation = conn.generation;
        let targets = [
            (conn.recv_armed, OpKind::Recv),
            (conn.send_in_flight, OpKind::Send),
        ];
        for (in_flight, kind) in targets {
            if !in_flight {
                continue;
            }
            self.conns[key].pending_ops += 1;
            let target = UserData::new(kind, generation, key as u32).pack();
            let cancel = opcode::AsyncCancel::new(target)
                .build()
                .user_data(UserData::new(OpKind::Cancel, generation, key as u32).pack());
            // SAFETY: a cancel reads no user memory.
            unsafe { self.push(&cancel) };
        }
        self.maybe_remove(key);
    }

    /// Moves a torn-down connection on: closes its slot once nothing else of it is in the
    /// kernel, and frees its slab entry once the close is back. The close must wait: an
    /// operation queued to io-wq (a shutdown, for one) resolves its fixed file only when it
    /// runs, so after an early close it would act on the slot's next occupant.
    fn maybe_remove(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.ending != Ending::Teardown || !conn.is_quiescent() {
            return;
        }
        if !conn.close_submitted {
            conn.close_submitted = true;
            conn.pending_ops += 1;
            let close = on_conn!(self.direct, conn.slot, |fd| opcode::Close::new(fd).build())
                .user_data(UserData::new(OpKind::Close, conn.generation, key as u32).pack());
            // SAFETY: a close reads no user memory.
            unsafe { self.push(&close) };
            return;
        }
        trace!(key, "removed");
        self.conns.remove(key);
        self.shared.stats[self.id]
            .connections
            .store(self.conns.len() as u64, Ordering::Relaxed);
    }

    /// Pushes one submission, submitting first when the queue is full; never keeps a backlog.
    ///
    /// # Safety
    ///
    /// Every buffer the entry names must stay valid until its completion is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            if let Err(error) = self.ring.submit() {
                if error.raw_os_error() != Some(libc::EBUSY) {
                    warn!(%error, "submit failed while the submission queue was full");
                }
                // The completion queue is full: make room by handling completions.
                self.reap();
            }
        }
    }
}

fn new_send_vec() -> Box<SendVec> {
    Box::new(SendVec {
        iov: [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOVECS],
        // SAFETY: msghdr is a plain C struct for which all-zero bytes is the empty message.
        msg: unsafe { std::mem::zeroed() },
    })
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

/// Runs received bytes through the connection's protocol state and the service.
fn receive<S: Service>(
    service: &mut S,
    ctx: &mut Ctx<'_, S::Data>,
    key: usize,
    data: &mut [u8],
    limits: Limits,
) {
    let conn = &mut ctx.conns[key];
    if conn.ending != Ending::No {
        // Closing: the bytes are read only so the peer's FIN can arrive; they mean nothing.
        return;
    }
    let id = ConnId {
        key: key as u32,
        generation: conn.generation,
    };
    let mut data = data;
    if let Stage::Handshake(handshake) = &mut conn.stage {
        let request = match handshake.feed(data) {
            Ok((_, None)) => return,
            Ok((used, Some(request))) => {
                data = &mut data[used..];
                request
            }
            Err(error) => {
                debug!(%error, "bad request head");
                return respond(conn, error.response());
            }
        };
        match service.on_request(&request) {
            Admission::Upgrade { protocol } => match request.validate_upgrade() {
                Ok(upgrade) => {
                    conn.queue
                        .push_unbounded(upgrade.response(protocol.as_deref()).into());
                    conn.stage = Stage::Open(WebSocket::server(limits));
                    conn.upgraded_now = true;
                    service.on_open(ctx, id, &request);
                }
                Err(error) => {
                    debug!(%error, "upgrade refused");
                    return respond(conn, error.response());
                }
            },
            Admission::Reject(status) => {
                debug!(status, "request rejected by the service");
                return respond(conn, http_response(status, reason(status), &[], None, b""));
            }
            Admission::Respond(response) => return respond(conn, response),
            Admission::Http { max_body_bytes } => match request.body_length() {
                Ok(length) if length.unwrap_or(0) <= max_body_bytes as u64 => {
                    conn.stage = Stage::Http {
                        remaining: length.unwrap_or(0) as usize,
                        body: Vec::new(),
                        request: Box::new(request),
                    };
                }
                Ok(_) => return respond(conn, http_response(413, reason(413), &[], None, b"")),
                Err(error) => return respond(conn, error.response()),
            },
        }
    }
    let conn = &mut ctx.conns[key];
    if let Stage::Http {
        body, remaining, ..
    } = &mut conn.stage
    {
        let take = (*remaining).min(data.len());
        body.extend_from_slice(&data[..take]);
        *remaining -= take;
        if *remaining > 0 {
            return;
        }
        // One request per connection: anything pipelined after it is ignored.
        if let Stage::Http { request, body, .. } =
            std::mem::replace(&mut conn.stage, Stage::Answered)
        {
            let response = service.on_http(ctx, &request, &body);
            respond(&mut ctx.conns[key], response);
        }
        return;
    }
    let mut pos = 0;
    loop {
        let conn = &mut ctx.conns[key];
        let Stage::Open(ws) = &mut conn.stage else {
            return;
        };
        let (used, read) = ws.read(&mut data[pos..]);
        pos += used;
        match read {
            Read::NeedMore => return,
            Read::Message { opcode, payload } => {
                ctx.stats.messages_in.fetch_add(1, Ordering::Relaxed);
                service.on_message(ctx, id, opcode, &payload);
            }
            Read::Ping { pong, .. } => {
                // Pongs count against the backlog: a client that pings and never reads must
                // not grow the queue without bound.
                if let Some(pong) = pong {
                    if conn.queue.push(pong, ctx.max_backlog_bytes) {
                        conn.mark_dirty_in(ctx.dirty, key);
                    } else {
                        ctx.stats
                            .slow_consumer_closes
                            .fetch_add(1, Ordering::Relaxed);
                        ctx.close(
                            id,
                            CloseCode::POLICY_VIOLATION,
                            "too slow: send backlog over limit",
                        );
                    }
                }
            }
            Read::Pong(_) => {}
            Read::Close { code, reply, .. } => {
                debug!(code = ?code, "peer closed");
                if let Some(reply) = reply {
                    conn.queue.push_unbounded(reply);
                }
                conn.ending = Ending::Flush;
                return;
            }
            Read::Failed { error, reply } => {
                debug!(%error, code = %error.close_code(), "protocol error");
                if let Some(reply) = reply {
                    conn.queue.push_unbounded(reply);
                }
                conn.ending = Ending::Flush;
                return;
            }
        }
    }
}

/// Queues a final HTTP response; the connection closes once it is sent.
fn respond<D>(conn: &mut Conn<D>, response: Vec<u8>) {
    conn.queue.push_unbounded(response.into());
    conn.ending = Ending::Flush;
}

/// The reason phrase of the statuses the driver itself sends.
fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// The listen backlog the kernel grants (`listen(2)` caps it at `net.core.somaxconn`).
fn listen_backlog() -> usize {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}
