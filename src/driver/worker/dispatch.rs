//! Completion dispatch: every CQE is reaped here and routed by its user_data; received
//! bytes run through the protocol core and the service.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use io_uring::types::{Fd, Fixed};
use io_uring::{cqueue, opcode};
use tracing::{debug, trace, warn};

use super::{Worker, ACCEPT_SINGLE, NO_KEY};
use crate::driver::conn::{Conn, Ending, Stage};
use crate::driver::ring::{self, GENERATION_MASK};
use crate::driver::service::{Admission, ConnId, WorkerView};
use crate::driver::user_data::{OpKind, UserData};
use crate::driver::Service;
use crate::protocol::connection::Read;
use crate::protocol::handshake::{Request, ServerHandshake};
use crate::protocol::http::{self, http_response, reason_phrase};
use crate::protocol::{Limits, ProtocolError, WebSocket};

/// How many connections ahead a walk over many of them prefetches their TLS state: far enough
/// for a cache miss to be served, near enough that the line is still there when it is used.
pub(super) const PREFETCH_AHEAD: usize = 8;

impl<S: Service> Worker<S> {
    pub(super) fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        let mut resubmitted = false;
        // Completions are copied out first so that handling them may push submissions. Those
        // a push moved out of the ring to make room (see `Worker::push`) come first: they are
        // older than any still in the ring.
        loop {
            cqes.clear();
            cqes.append(&mut self.held_cqes);
            ring::append_completions(&mut self.ring, &mut cqes);
            if cqes.is_empty() {
                // New connections' receives, once, before the turn's sends: a client that
                // sent its request with its connect (an HTTP publisher, a handshake) is
                // answered this turn instead of after the next. The queue holds only arms
                // and closes here (sends are pushed by `flush`), and a receive whose data
                // has arrived completes within the submit.
                if !resubmitted
                    && std::mem::take(&mut self.accepted_in_reap)
                    && self.submit_queued()
                {
                    resubmitted = true;
                    continue;
                }
                break;
            }
            for (i, &(user_data, result, flags)) in cqes.iter().enumerate() {
                if let Some(tls) = self.tls.as_ref() {
                    // A fan-out's send completions come in thousands: load the TLS state a
                    // few completions ahead (see `TlsLayer::prefetch`).
                    if let Some(ud) = cqes
                        .get(i + PREFETCH_AHEAD)
                        .and_then(|c| UserData::unpack(c.0))
                    {
                        if ud.kind == OpKind::Send {
                            tls.prefetch(ud.key as usize);
                        }
                    }
                }
                self.complete(user_data, result, flags);
            }
        }
        self.cqes = cqes;
    }

    pub(super) fn complete(&mut self, raw: u64, result: i32, flags: u32) {
        let Some(ud) = UserData::unpack(raw) else {
            warn!(user_data = raw, "completion with an unknown user_data");
            return;
        };
        match ud.kind {
            OpKind::Accept => self.on_accept(ud.generation == ACCEPT_SINGLE, ud.key, result, flags),
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

    pub(super) fn on_recv(&mut self, key: usize, result: i32, flags: u32) {
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
                if self.is_tls() {
                    self.receive_tls(key, bid, len, limits);
                    continue;
                }
                // The worker's budget for unfinished messages and bodies: what this receive
                // may copy is checked against it before the copy (STYLE §3).
                let held_before = self.held_bytes(key);
                let mut budget = self
                    .config
                    .max_pending_bytes
                    .saturating_sub(self.pending_bytes);
                let data = self.bufs.buffer_mut(bid, len);
                let mut ctx = ctx!(self);
                let max_head = self.config.max_head_bytes;
                receive(
                    &mut self.service,
                    &mut ctx,
                    key,
                    data,
                    limits,
                    max_head,
                    &mut budget,
                );
                self.bufs.push(bid);
                let held_after = self.held_bytes(key);
                self.account_held(held_before, held_after);
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
                    // Re-arming now would fail at once: the ring stays empty until this
                    // turn's buffers are published. Re-arm after that instead.
                    let conn = &self.conns[key];
                    if !conn.recv_armed && conn.ending != Ending::Teardown {
                        self.starved.push((key, conn.generation));
                    }
                    self.maybe_remove(key);
                    return;
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

    /// A connection's held bytes went from `before` to `after`: the worker's pending total
    /// and its gauge follow.
    pub(super) fn account_held(&mut self, before: usize, after: usize) {
        if before == after {
            return;
        }
        self.pending_bytes = (self.pending_bytes + after as u64).saturating_sub(before as u64);
        self.shared.stats[self.id]
            .pending_bytes
            .store(self.pending_bytes, Ordering::Relaxed);
    }

    /// Re-arms the receives that `ENOBUFS` ended this turn, once the turn's buffers are back
    /// in the ring.
    pub(super) fn rearm_starved(&mut self) {
        let mut starved = std::mem::take(&mut self.starved);
        for (key, generation) in starved.drain(..) {
            let waiting = self.conns.get(key).is_some_and(|c| {
                c.generation == generation && !c.recv_armed && c.ending != Ending::Teardown
            });
            if waiting {
                self.arm_recv(key);
            }
        }
        self.starved = starved;
    }

    /// Schedules what a receive made necessary: a flush, and the deadline of a new stage.
    pub(super) fn after_receive(&mut self, key: usize, before: Ending) {
        let now = Instant::now();
        let conn = &mut self.conns[key];
        let upgraded = std::mem::take(&mut conn.upgraded_now);
        let flushing = conn.ending == Ending::Flush;
        if !conn.queue.is_empty() || flushing {
            self.mark_reply(key);
        }
        if flushing && before == Ending::No {
            // Bounded: a peer that never reads cannot hold the connection open.
            self.set_deadline(key, now, self.config.drain_timeout);
        } else if matches!(self.conns[key].stage, Stage::Handshake(..))
            && !self.conns[key].queue.is_empty()
        {
            // An HTTP answer with the connection kept alive (`answer`): the next request's
            // head gets the handshake's time, from now.
            self.set_deadline(key, now, self.config.handshake_timeout);
        } else if upgraded {
            // The handshake deadline's wheel entry becomes the first idle check: when it
            // fires on an open connection, `on_ping_deadline` reschedules it one interval
            // after the last receive (or, with pings off, does nothing). So an upgraded
            // connection keeps exactly one entry and nothing is left over from its handshake;
            // a new entry is made only when the first ping is due before that deadline.
            if let Some(interval) = self.ping_ticks {
                let tick = self.wheel.deadline(now, interval);
                if tick < self.conns[key].deadline {
                    self.set_deadline_tick(key, tick);
                }
            }
        }
    }

    pub(super) fn arm_recv(&mut self, key: usize) {
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
}

/// Runs received bytes through the connection's protocol state and the service.
pub(super) fn receive<S: Service>(
    service: &mut S,
    ctx: &mut WorkerView<'_, S::Data>,
    key: usize,
    data: &mut [u8],
    limits: Limits,
    max_head_bytes: usize,
    budget: &mut u64,
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
    if let Stage::Handshake(handshake, peer) = &mut conn.stage {
        let request = match handshake.feed(data) {
            Ok((_, None)) => return,
            Ok((used, Some(mut request))) => {
                data = &mut data[used..];
                request.set_peer_addr(peer.as_deref().copied());
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
                    let deflate = ctx
                        .deflate
                        .enabled
                        .then(|| request.deflate_offer())
                        .flatten();
                    conn.queue.push_unbounded(
                        upgrade
                            .response_with(protocol.as_deref(), deflate.as_ref())
                            .into(),
                    );
                    let mut ws = WebSocket::server(limits);
                    if let Some(agreed) = deflate {
                        ws = ws.with_deflate(agreed);
                        ctx.stats.deflate_upgrades.fetch_add(1, Ordering::Relaxed);
                    }
                    conn.stage = Stage::Open(ws);
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
                return respond(
                    conn,
                    http_response(status, reason_phrase(status), &[], None, b""),
                );
            }
            Admission::Respond(response) => {
                let pipelined = !data.is_empty();
                return answer(conn, &request, response, pipelined, max_head_bytes);
            }
            Admission::Stream { head } => {
                conn.queue.push_unbounded(head.into());
                conn.stage = Stage::Stream;
                conn.upgraded_now = true;
                service.on_open(ctx, id, &request);
                return;
            }
            Admission::Http { max_body_bytes } => match request.body_length() {
                Ok(length) if length.unwrap_or(0) <= max_body_bytes as u64 => {
                    conn.stage = Stage::Http {
                        remaining: length.unwrap_or(0) as usize,
                        body: Vec::new(),
                        request: Box::new(request),
                    };
                }
                Ok(_) => {
                    return respond(conn, http_response(413, reason_phrase(413), &[], None, b""))
                }
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
        // As for a message: the body's buffer doubles up to its declared length, and the
        // budget is charged what the growth allocates, before it.
        let wanted = body.len() + take;
        let grown = if wanted > body.capacity() {
            wanted.max((body.capacity() * 2).min(body.len() + *remaining))
        } else {
            body.capacity()
        };
        let growth = (grown - body.capacity()) as u64;
        if growth > *budget {
            ctx.stats
                .pending_budget_closes
                .fetch_add(1, Ordering::Relaxed);
            debug!(
                growth,
                budget = *budget,
                "request body over the worker's pending budget"
            );
            return respond(
                conn,
                http_response(
                    503,
                    reason_phrase(503),
                    &[("Connection", "close")],
                    None,
                    b"",
                ),
            );
        }
        *budget -= growth;
        body.reserve_exact(grown - body.len());
        body.extend_from_slice(&data[..take]);
        *remaining -= take;
        if *remaining > 0 {
            return;
        }
        if let Stage::Http { request, body, .. } =
            std::mem::replace(&mut conn.stage, Stage::Answered)
        {
            let pipelined = data.len() > take;
            let response = service.on_http(ctx, &request, &body);
            answer(
                &mut ctx.conns[key],
                &request,
                response,
                pipelined,
                max_head_bytes,
            );
        }
        return;
    }
    let mut pos = 0;
    loop {
        let conn = &mut ctx.conns[key];
        let Stage::Open(ws) = &mut conn.stage else {
            return;
        };
        let inflations = ctx.deflate.inflater.inflations();
        let (used, read) = ws.read_within(&mut data[pos..], budget, &mut ctx.deflate.inflater);
        if ctx.deflate.inflater.inflations() != inflations {
            ctx.stats.deflate_inflations.fetch_add(1, Ordering::Relaxed);
        }
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
                        ctx.close_slow_consumer(id);
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
                if let ProtocolError::OverBudget { .. } = error {
                    ctx.stats
                        .pending_budget_closes
                        .fetch_add(1, Ordering::Relaxed);
                }
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

/// Queues the service's answer to a plain HTTP request. A successful answer keeps the
/// connection open for the client's next request when the client asks for it
/// ([`Request::asks_keep_alive`]), so that a backend publishing request after request (a
/// Pusher SDK, `--publish-url`) pays one connection, not one per publish. The next head is
/// read with the handshake's limits and deadline (`after_receive`); anything the client
/// pipelined behind this request, and every refusal, ends the connection instead.
fn answer<D>(
    conn: &mut Conn<D>,
    request: &Request,
    mut response: Vec<u8>,
    pipelined: bool,
    max_head_bytes: usize,
) {
    let success = response.starts_with(b"HTTP/1.1 2");
    if success
        && !pipelined
        && conn.ending == Ending::No
        && request.asks_keep_alive()
        && http::keep_alive(&mut response)
    {
        conn.queue.push_unbounded(response.into());
        conn.stage = Stage::Handshake(
            ServerHandshake::new(max_head_bytes),
            request.peer_addr().map(Box::new),
        );
        return;
    }
    respond(conn, response);
}

/// Queues a final HTTP response; the connection closes once it is sent.
fn respond<D>(conn: &mut Conn<D>, response: Vec<u8>) {
    conn.queue.push_unbounded(response.into());
    conn.ending = Ending::Flush;
}
