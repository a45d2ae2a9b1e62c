//! One client thread: its ring, its connections and its share of the scenario, driven through
//! the phases by the coordinator's commands.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Conn;
use super::net::Net;
use super::outcome::ThreadResult;
use super::{
    Command, Event, Expect, Outbox, Plan, Progress, Settings, Workload, DRAIN_GRACE, POLL,
    PROGRESS_EVERY,
};
use crate::scenario::stamp;
use crate::uring::{ClientFeatures, ClientRing};

pub(super) struct ThreadSetup {
    pub(super) id: usize,
    pub(super) plan: Plan,
    pub(super) settings: Settings,
    pub(super) features: ClientFeatures,
    pub(super) commands: Receiver<Command>,
    pub(super) events: Sender<Event>,
    pub(super) progress: Arc<[Progress]>,
}

impl ThreadSetup {
    pub(super) fn run<W: Workload>(self, work: W) {
        let slots = u32::try_from(self.plan.count).unwrap_or(u32::MAX).max(1);
        // Built here: with SINGLE_ISSUER the ring belongs to the thread that made it.
        let ring = match ClientRing::new(
            self.features,
            slots,
            &self.settings.ring_targets(),
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
                    if self.net.next == self.net.plan.count
                        && self.net.connecting == 0
                        && self.net.waiting_reopen == 0
                    {
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
            if matches!(self.phase, Phase::Closing(_)) && !self.net.stopping {
                self.net.stop_reconnecting();
            }
            self.net.reopen_due(ops, now);
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
            reconnect: net.reconnect_tally,
            wire: net.compression.finish(),
            handshake: net.handshake,
            tcp_connect: net.tcp_connect,
            tls_handshake: net.tls_handshake,
            tls_resumed: net.tls_resumed,
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
