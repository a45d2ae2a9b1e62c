//! The receive path: bytes from the kernel through the handshake and the protocol core, each
//! message handed to the workload, pings and closes answered.

use std::time::Instant;

use uringcast::protocol::connection::ClientSide;
use uringcast::protocol::{Limits, OpCode, Read, WebSocket};

use super::conn::{random_mask, Conn, Deadline, Open, Opening};
use super::net::{classify, micros_since, Net};
use super::{Outbox, Workload, MAX_MESSAGE_BYTES};
use crate::report::Failure;
use crate::scenario::session::{Incoming, Spec, State};
use crate::scenario::stamp;
use crate::uring::user_data::OpKind;
use crate::uring::{Completion, Ops};

/// WebSocket headers are at most 14 bytes; the decoder keeps a partial one for us.
const MAX_HEADER_BYTES: usize = 14;

impl Net {
    pub(super) fn on_recv<W: Workload>(
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
    pub(super) fn on_bytes<W: Workload>(
        &mut self,
        ops: &mut Ops,
        work: &mut W,
        index: usize,
        bytes: &mut [u8],
        now_ns: u64,
    ) {
        if self.slots[index].tls.is_some() {
            return self.tls_bytes(ops, work, index, bytes, now_ns);
        }
        self.on_plain(ops, work, index, bytes, now_ns);
    }

    /// Plaintext bytes: the upgrade response, then frames.
    pub(super) fn on_plain<W: Workload>(
        &mut self,
        ops: &mut Ops,
        work: &mut W,
        index: usize,
        bytes: &mut [u8],
        now_ns: u64,
    ) {
        if self.slots[index].stream.is_some() {
            return self.stream_bytes(ops, work, index, bytes, now_ns);
        }
        let mut rest = bytes;
        if let Conn::Connecting(c) = &mut self.slots[index].conn {
            let Opening::Upgrade(handshake) = &mut c.handshake else {
                return;
            };
            match handshake.feed(rest) {
                Ok((_, None)) => return,
                Ok((used, Some(response))) => {
                    self.handshake.saturating_record(micros_since(c.started));
                    let mut ws = WebSocket::new(
                        ClientSide(random_mask as fn() -> [u8; 4]),
                        Limits {
                            max_message_bytes: MAX_MESSAGE_BYTES,
                        },
                    );
                    // Verified by the handshake against our offer; `None`: the server declined.
                    if let Some(agreed) = response.deflate() {
                        ws = ws.with_deflate(agreed);
                        self.compression.tally.deflate_connections += 1;
                    }
                    self.slots[index].conn = Conn::Open(Box::new(Open::websocket(ws)));
                    self.opened(work, index);
                    self.session_opened(index);
                    rest = &mut rest[used..];
                }
                Err(error) => {
                    let detail = format!("handshake: {error}");
                    self.fail(ops, index, Failure::BadHandshake, detail);
                    return;
                }
            }
        }
        if matches!(self.slots[index].conn, Conn::Open(_)) {
            self.compression.tally.wire_bytes_in += rest.len() as u64;
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
    pub(super) fn parse<W: Workload>(
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
            // The memory a message may take is bounded by its limit, not by a shared budget.
            let mut budget = u64::MAX;
            let inflater = &mut self.compression.inflater;
            let (used, read) = o.ws.read_within(&mut input[pos..], &mut budget, inflater);
            pos += used;
            match read {
                Read::NeedMore => return pos,
                Read::Message { opcode, payload } => {
                    let tally = &mut self.compression.tally;
                    tally.messages_in += 1;
                    tally.payload_bytes_in += payload.len() as u64;
                    match self.session.clone() {
                        None => {
                            work.message(
                                index,
                                opcode,
                                &payload,
                                now_ns,
                                &mut Outbox { net: self },
                            );
                        }
                        Some(spec) => {
                            let up = self
                                .session_message(ops, work, &spec, index, opcode, &payload, now_ns);
                            if !up {
                                return input.len();
                            }
                        }
                    }
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
                            if !self.reconnect_after_loss(index) {
                                self.dropped.add(
                                    Failure::Reset,
                                    format!("closed by the server, code {code}"),
                                );
                            }
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

    /// The upgrade completed: the session's protocol starts (its first messages are sent), and
    /// without one, or when it needs nothing more, the connection is up.
    fn session_opened(&mut self, index: usize) {
        let Some(spec) = self.session.clone() else {
            self.connecting -= 1;
            return;
        };
        let mut out = std::mem::take(&mut self.session_out);
        let state = spec.opened(self.plan.global(index), &mut out);
        if let Conn::Open(o) = &mut self.slots[index].conn {
            o.session = Some(state);
        }
        if state == State::Ready {
            self.connecting -= 1;
        }
        self.send_session(index, &mut out);
        self.session_out = out;
    }

    /// One message through the session's protocol: its answers sent, a delivery handed to the
    /// workload. False when the connection ended.
    #[allow(clippy::too_many_arguments)]
    fn session_message<W: Workload>(
        &mut self,
        ops: &mut Ops,
        work: &mut W,
        spec: &Spec,
        index: usize,
        opcode: OpCode,
        payload: &[u8],
        now_ns: u64,
    ) -> bool {
        let global = self.plan.global(index);
        let Conn::Open(o) = &mut self.slots[index].conn else {
            return false;
        };
        let Some(state) = o.session.as_mut() else {
            return true;
        };
        let mut out = std::mem::take(&mut self.session_out);
        let incoming = spec.incoming(state, global, opcode, payload, &mut out);
        self.send_session(index, &mut out);
        self.session_out = out;
        match incoming {
            Incoming::Nothing => {}
            Incoming::Ready => self.connecting -= 1,
            Incoming::AsIs => {
                work.message(index, opcode, payload, now_ns, &mut Outbox { net: self })
            }
            Incoming::Extracted(text) => {
                work.message(
                    index,
                    OpCode::Text,
                    &text,
                    now_ns,
                    &mut Outbox { net: self },
                );
            }
            Incoming::Failed(detail) => {
                let ready = matches!(&self.slots[index].conn, Conn::Open(o) if o.ready());
                if ready {
                    self.end_open(ops, index, detail);
                } else {
                    self.fail_unready(ops, index, Failure::Other, detail);
                }
                return false;
            }
        }
        true
    }

    /// Sends the session's messages in `out` (text), emptying it.
    fn send_session(&mut self, index: usize, out: &mut Vec<Vec<u8>>) {
        for message in out.drain(..) {
            Outbox { net: self }.send_frame(index, OpCode::Text, &message);
        }
    }

    /// The server closed its side: the end of a closing handshake, or a drop.
    pub(super) fn on_eof(&mut self, ops: &mut Ops, index: usize) {
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
                    (None, _, _) if self.reconnect_after_loss(index) => {}
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
}
