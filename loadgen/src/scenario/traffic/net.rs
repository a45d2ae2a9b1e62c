//! A thread's connections and the operations on them: opening, sending, closing, deadlines,
//! and each completion routed to its connection.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use uringcast::protocol::handshake::ClientHandshake;
use uringcast::protocol::CloseCode;

use super::compression::Compression;
use super::conn::{Conn, Connecting, Deadline, Opening, Slot};
use super::plan::address_pair;
use super::reconnect::{Policy, ReconnectTally};
use super::stream::{self, StreamSlot};
use super::thread::ThreadSetup;
use super::tls::SlotTls;
use super::{new_histogram, Plan, Progress, Split, Workload};
use crate::report::{Diagnostics, Failure, Failures};
use crate::scenario::session::Spec;
use crate::uring::user_data::OpKind;
use crate::uring::{BeforeClose, Completion, Ops};

/// Bounds on one loop turn's new work, so a late thread never floods its queues in one turn.
const MAX_STARTS_PER_TURN: u64 = 256;
const MAX_CLOSES_PER_TURN: usize = 1024;

/// A thread's connections: everything of a thread but its ring and its workload.
pub(super) struct Net {
    pub(super) id: usize,
    pub(super) plan: Plan,
    pub(super) host: String,
    pub(super) path: String,
    pub(super) sources: usize,
    /// Server addresses (at least one).
    pub(super) targets: usize,
    /// Connections from a global index on go to another server: ring target `targets`.
    pub(super) split: Option<Split>,
    /// New connections per second over all threads.
    pub(super) rate: f64,
    pub(super) handshake_timeout: Duration,
    pub(super) close_timeout: Duration,
    pub(super) bundle: bool,
    /// Connections of the plan opened so far.
    pub(super) next: u64,
    pub(super) slots: Vec<Slot>,
    /// Connections with frames queued and no send in flight.
    pub(super) dirty: Vec<u32>,
    pub(super) handshake_deadlines: VecDeque<Deadline>,
    pub(super) close_deadlines: VecDeque<Deadline>,
    /// Connections whose receive ended for want of buffers: re-armed next turn.
    pub(super) starved: Vec<u32>,
    pub(super) close_cursor: usize,
    pub(super) connecting: u64,
    pub(super) open: u64,
    pub(super) established: u64,
    pub(super) closed_clean: u64,
    pub(super) closed_forced: u64,
    pub(super) handshake: Histogram<u64>,
    pub(super) tcp_connect: Histogram<u64>,
    pub(super) closing: Histogram<u64>,
    pub(super) failed: Failures,
    pub(super) dropped: Failures,
    pub(super) diagnostics: Diagnostics,
    pub(super) progress: Arc<[Progress]>,
    pub(super) ring_error: Option<io::Error>,
    /// `wss://`: the client configuration every connection's session starts from.
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    /// The name the server's certificate must carry.
    pub(super) server_name: String,
    /// TCP connect to the end of the TLS handshake.
    pub(super) tls_handshake: Histogram<u64>,
    /// TLS handshakes that resumed a session.
    pub(super) tls_resumed: u64,
    /// Plaintext of the receive being handled (TLS).
    pub(super) tls_plain: Vec<u8>,
    /// permessage-deflate and the byte counts.
    pub(super) compression: Compression,
    /// The protocol over WebSocket, if any besides plain messages.
    pub(super) session: Option<Arc<Spec>>,
    /// The messages the session asks to send, reused.
    pub(super) session_out: Vec<Vec<u8>>,
    /// A data message wrapped for the session's protocol, reused.
    pub(super) wrapped: Vec<u8>,
    /// Global connections below this one are event streams (`sse`), not WebSockets.
    pub(super) streams_below: u64,
    /// `--reconnect`: lost connections open again within these bounds.
    pub(super) reconnect: Option<Policy>,
    pub(super) reconnect_tally: ReconnectTally,
    /// Slots due to open again, soonest first.
    pub(super) reopens: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Slots with a reopen pending.
    pub(super) waiting_reopen: u64,
    /// Connections the workload asked to reconnect this turn, and when each opens again
    /// (`CLOCK_MONOTONIC` ns; `None`: at once).
    pub(super) reconnect_requests: Vec<(u32, Option<u64>)>,
    /// The closing phase began: nothing opens again.
    pub(super) stopping: bool,
    /// The thread's start, for handshakes per second.
    pub(super) epoch: Instant,
}

impl Net {
    pub(super) fn new(setup: &ThreadSetup, bundle: bool) -> Self {
        let count = usize::try_from(setup.plan.count).unwrap_or(usize::MAX);
        Self {
            id: setup.id,
            plan: setup.plan,
            host: setup.settings.target.host.clone(),
            path: setup.settings.target.path.clone(),
            sources: setup.settings.sources.len(),
            targets: setup.settings.targets.len().max(1),
            split: setup.settings.split.clone(),
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
                    tls: None,
                    stream: None,
                    reopen: None,
                    was_open: false,
                    attempt: 0,
                    lost_at: None,
                    reopen_after_loss: false,
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
            tls: setup.settings.tls.clone(),
            server_name: setup.settings.target.server_name.clone(),
            tls_handshake: new_histogram(),
            tls_resumed: 0,
            tls_plain: Vec::new(),
            compression: Compression::new(setup.settings.deflate),
            session: setup.settings.session.clone(),
            session_out: Vec::new(),
            wrapped: Vec::new(),
            streams_below: setup.settings.streams_below,
            reconnect: setup.settings.reconnect,
            reconnect_tally: ReconnectTally {
                enabled: setup.settings.reconnect.is_some(),
                ..ReconnectTally::default()
            },
            reopens: BinaryHeap::new(),
            waiting_reopen: 0,
            reconnect_requests: Vec::new(),
            stopping: false,
            epoch: Instant::now(),
        }
    }

    /// When local connection `next` is due: `start + global index / rate`, so the threads'
    /// connections interleave into one steady ramp.
    pub(super) fn due(&self, start: Instant, next: u64) -> Instant {
        start + Duration::from_secs_f64(self.plan.global(next as usize) as f64 / self.rate)
    }

    pub(super) fn all_free(&self) -> bool {
        self.slots
            .iter()
            .all(|s| matches!(s.conn, Conn::Free) && s.pending == 0)
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [&self.handshake_deadlines, &self.close_deadlines]
            .iter()
            .filter_map(|d| d.front().map(|d| d.at))
            .chain(self.next_reopen())
            .min()
    }

    pub(super) fn start_due(&mut self, ops: &mut Ops, start: Instant, now: Instant) {
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

    pub(super) fn open_one(&mut self, ops: &mut Ops, local: usize, now: Instant) {
        let key: [u8; 16] = rand::random();
        let global = self.plan.global(local);
        let (source, mut target) = address_pair(global, self.sources, self.targets);
        let (host, path, server_name) = match &self.split {
            Some(split) if global >= split.from => {
                target = self.targets;
                let t = &split.target;
                (&t.host, &t.path, &t.server_name)
            }
            _ => (&self.host, &self.path, &self.server_name),
        };
        let (handshake, request) = if global < self.streams_below {
            let slot = self.slots[local]
                .stream
                .get_or_insert_with(Box::<StreamSlot>::default);
            let request = stream::request(host, path, slot.last_id.as_deref());
            (Opening::Stream(stream::StreamHead::default()), request)
        } else {
            let (handshake, request) =
                ClientHandshake::new(host, path, key, self.compression.headers);
            (Opening::Upgrade(handshake), request)
        };
        let mut request = Bytes::from(request);
        let mut tls = None;
        if self.tls.is_some() {
            // wss://: the chain sends the ClientHello; the request waits for the handshake.
            match SlotTls::start(self, server_name, request) {
                Ok((session, hello)) => {
                    tls = Some(session);
                    request = hello;
                }
                Err(detail) => {
                    self.failed.add(Failure::Other, detail);
                    return;
                }
            }
        }
        let slot = &mut self.slots[local];
        slot.tls = tls;
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

    pub(super) fn complete<W: Workload>(&mut self, ops: &mut Ops, work: &mut W, c: Completion<'_>) {
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

    pub(super) fn on_chain(&mut self, ops: &mut Ops, index: usize, kind: OpKind, result: i32) {
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
                self.tls_connected(index);
                // Armed now, beside the linked send: the response cannot beat the request.
                self.arm_recv(ops, index);
            }
        }
    }

    pub(super) fn on_send(&mut self, ops: &mut Ops, index: usize, result: i32) {
        if self.tls_on_send(ops, index, result) {
            return;
        }
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
                } else {
                    // wss://: TLS may have answered the server while the ClientHello went.
                    self.tls_flush(ops, index);
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

    /// Ends a connection for an error: a failure while connecting, a drop once open.
    pub(super) fn end(&mut self, ops: &mut Ops, index: usize, failure: Failure, detail: String) {
        match &self.slots[index].conn {
            Conn::Connecting(_) => self.fail(ops, index, failure, detail),
            Conn::Open(_) => self.end_open(ops, index, detail),
            Conn::Free | Conn::Closing => {}
        }
    }

    pub(super) fn end_open(&mut self, ops: &mut Ops, index: usize, detail: String) {
        if let Conn::Open(o) = &self.slots[index].conn {
            match (o.closing, o.server_closed) {
                (None, _) if self.reconnect_after_loss(index) => {}
                (None, _) => self.dropped.add(Failure::Reset, detail),
                (Some(_), false) => self.closed_forced += 1,
                // The server closed first: counted as dropped then.
                (Some(_), true) => {}
            }
        }
        self.teardown(ops, index);
    }

    pub(super) fn fail(&mut self, ops: &mut Ops, index: usize, failure: Failure, detail: String) {
        if matches!(self.slots[index].conn, Conn::Connecting(_)) {
            self.count_failure(index, failure, detail);
            self.teardown(ops, index);
        }
    }

    /// Fails an upgraded connection that its protocol never made ready (a timeout, a refused
    /// subscription): a connection that did not come up, not one dropped.
    pub(super) fn fail_unready(
        &mut self,
        ops: &mut Ops,
        index: usize,
        failure: Failure,
        detail: String,
    ) {
        if matches!(&self.slots[index].conn, Conn::Open(o) if !o.ready()) {
            self.count_failure(index, failure, detail);
            self.teardown(ops, index);
        }
    }

    /// A connection that did not come up: a failure, unless it opens again; an attempt to
    /// bring back a lost connection that is given up on is a drop (the loss).
    fn count_failure(&mut self, index: usize, failure: Failure, detail: String) {
        let reconnecting = self.slots[index].lost_at.is_some();
        if self.reconnect_after_loss(index) {
            return;
        }
        if reconnecting {
            self.dropped.add(failure, detail);
        } else {
            self.failed.add(failure, detail);
        }
    }

    /// Ends the slot's operations and closes its descriptor; it frees when all are back.
    pub(super) fn teardown(&mut self, ops: &mut Ops, index: usize) {
        let slot = &mut self.slots[index];
        match &slot.conn {
            Conn::Free | Conn::Closing => return,
            Conn::Connecting(_) => self.connecting -= 1,
            Conn::Open(o) => {
                self.open -= 1;
                if !o.ready() {
                    self.connecting -= 1;
                }
            }
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

    pub(super) fn maybe_free(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if matches!(slot.conn, Conn::Closing) && slot.pending == 0 {
            slot.conn = Conn::Free;
            slot.tls = None;
            slot.recv_armed = false;
            slot.generation = (slot.generation + 1) & crate::uring::user_data::GENERATION_MASK;
        }
    }

    pub(super) fn wants_recv(&self, index: usize) -> bool {
        match &self.slots[index].conn {
            Conn::Connecting(c) => c.connected,
            Conn::Open(_) => true,
            Conn::Free | Conn::Closing => false,
        }
    }

    pub(super) fn arm_recv(&mut self, ops: &mut Ops, index: usize) {
        let slot = &mut self.slots[index];
        slot.recv_armed = true;
        slot.pending += 1;
        // Bundles only once open: a handshake's response is one small read.
        let bundle = self.bundle && matches!(slot.conn, Conn::Open(_));
        if let Err(error) = ops.arm_recv(index as u32, slot.generation, bundle) {
            self.ring_error.get_or_insert(error);
        }
    }

    pub(super) fn rearm_starved(&mut self, ops: &mut Ops) {
        let mut starved = std::mem::take(&mut self.starved);
        for index in starved.drain(..) {
            let index = index as usize;
            if !self.slots[index].recv_armed && self.wants_recv(index) {
                self.arm_recv(ops, index);
            }
        }
        self.starved = starved;
    }

    pub(super) fn send(&mut self, ops: &mut Ops, index: usize, generation: u32, frame: Bytes) {
        match ops.send(index as u32, generation, frame) {
            Ok(Ok(())) => self.slots[index].pending += 1,
            Ok(Err(busy)) => unreachable!("sends are issued only after the previous one: {busy}"),
            Err(error) => {
                self.ring_error.get_or_insert(error);
            }
        }
    }

    /// Queues a frame; it goes out with this turn's flush, or after the send in flight.
    pub(super) fn queue(&mut self, index: usize, frame: Bytes) {
        if let Conn::Open(o) = &mut self.slots[index].conn {
            if o.queued.is_empty() && o.sending.is_none() {
                self.dirty.push(index as u32);
            }
            self.compression.tally.wire_bytes_out += frame.len() as u64;
            o.queued.push(frame);
        }
    }

    /// One send per dirty connection, with every frame queued on it.
    pub(super) fn flush(&mut self, ops: &mut Ops) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for index in dirty.drain(..) {
            self.flush_one(ops, index as usize);
        }
        self.dirty = dirty;
    }

    pub(super) fn flush_one(&mut self, ops: &mut Ops, index: usize) {
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
        if slot.tls.is_some() {
            // Sealed into the session's ciphertext; the TLS layer tracks that send.
            return self.tls_send_plain(ops, index, &bytes);
        }
        o.sending = Some(bytes.clone());
        self.send(ops, index, generation, bytes);
    }

    /// Starts the closing handshake of up to a batch of open connections.
    pub(super) fn close_batch(&mut self, ops: &mut Ops, now: Instant) {
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
                Conn::Open(o) if o.closing.is_none() && o.sse.is_some() => {
                    // An event stream has no closing handshake: the client closes.
                    closed += 1;
                    self.closed_clean += 1;
                    self.closing.saturating_record(1);
                    self.teardown(ops, index);
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
    pub(super) fn expire(&mut self, ops: &mut Ops, now: Instant) {
        while let Some(d) = self.handshake_deadlines.front().copied() {
            if d.at > now {
                break;
            }
            self.handshake_deadlines.pop_front();
            let slot = &self.slots[d.slot as usize];
            if slot.generation != d.generation {
                continue;
            }
            if let Conn::Open(o) = &slot.conn {
                if !o.ready() {
                    let detail = format!(
                        "upgraded but not ready (--ready-when, or Socket.IO's connect) within \
                         {:.1} s",
                        self.handshake_timeout.as_secs_f64()
                    );
                    self.fail_unready(ops, d.slot as usize, Failure::Timeout, detail);
                }
                continue;
            }
            let detail = format!(
                "no verified 101 within {:.1} s",
                self.handshake_timeout.as_secs_f64()
            );
            self.fail(ops, d.slot as usize, Failure::Timeout, detail);
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
pub(super) fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The failure kind and a detail line for an operation's errno.
pub(super) fn classify(kind: OpKind, errno: i32) -> (Failure, String) {
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
}
