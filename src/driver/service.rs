//! The driver's interface upward: what a [`Service`] is told, and the [`WorkerView`] through
//! which it acts on the worker's connections.

use bytes::Bytes;
use slab::Slab;

use std::sync::atomic::Ordering;

use super::conn::{Conn, Ending, Stage};
use super::timer::{TimerEntry, TimerWheel};
use super::WorkerStats;
use crate::protocol::deflate::{Deflater, Inflater, MIN_SERVER_WINDOW_BITS};
use crate::protocol::handshake::Request;
use crate::protocol::{CloseCode, OpCode};
use crate::sse::EventId;

/// A connection of one worker: its slab key and the slot's generation, so an id kept after
/// the connection closed never reaches the next occupant of the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub(crate) key: u32,
    pub(crate) generation: u32,
}

/// What to do with a request head, decided by [`Service::on_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admission {
    /// Upgrade to WebSocket, optionally selecting one of the offered subprotocols.
    Upgrade {
        /// The `Sec-WebSocket-Protocol` to answer with.
        protocol: Option<String>,
    },
    /// Refuse with this HTTP status (and close).
    Reject(u16),
    /// Answer with this response head and keep the connection as a stream of events the
    /// service sends ([`WorkerView::send_message`] gives it a message's SSE event); what the
    /// client sends after its request is read and ignored. [`Service::on_open`] runs for it, and
    /// [`Service::on_close`] when it ends.
    Stream {
        /// The response head (status line and headers, ending in a blank line).
        head: Vec<u8>,
    },
    /// Answer with this complete HTTP response without reading a body (and close).
    Respond(Vec<u8>),
    /// A plain HTTP request: read its body (at most `max_body_bytes`, else 413) and hand it
    /// to [`Service::on_http`].
    Http {
        /// The largest body accepted.
        max_body_bytes: usize,
    },
}

/// Why a frame was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is gone or closing: nothing more may be sent on it.
    #[error("connection closed or closing")]
    Closed,
    /// The connection's queue is past its byte limit: a slow consumer.
    #[error("send backlog over limit")]
    Backlog,
}

/// What runs on top of the driver. Every call runs on the worker that owns the connection.
pub trait Service: 'static {
    /// Per-connection state of the service's own.
    type Data: Default;

    /// A complete request head arrived. The default treats every request as an upgrade
    /// without a subprotocol: anything but a valid one gets the RFC's 400 or 426.
    fn on_request(&mut self, request: &Request) -> Admission {
        let _ = request;
        Admission::Upgrade { protocol: None }
    }

    /// The upgrade completed: the 101 is queued.
    fn on_open(&mut self, ctx: &mut WorkerView<'_, Self::Data>, conn: ConnId, request: &Request) {
        let _ = (ctx, conn, request);
    }

    /// A complete, validated message.
    fn on_message(
        &mut self,
        ctx: &mut WorkerView<'_, Self::Data>,
        conn: ConnId,
        opcode: OpCode,
        payload: &[u8],
    );

    /// The connection is gone (closed by either side, failed, or dropped); `data` is its state.
    fn on_close(&mut self, ctx: &mut WorkerView<'_, Self::Data>, conn: ConnId, data: Self::Data) {
        let _ = (ctx, conn, data);
    }

    /// A plain HTTP request with its whole body; returns the complete response. The
    /// connection is closed once the response is sent.
    fn on_http(
        &mut self,
        ctx: &mut WorkerView<'_, Self::Data>,
        request: &Request,
        body: &[u8],
    ) -> Vec<u8> {
        let _ = (ctx, request, body);
        crate::protocol::handshake::http_response(404, "Not Found", &[], None, b"")
    }

    /// What a connection silent for the ping interval is sent, and how one that stays silent
    /// for another interval is closed. Asked once per worker, when it starts; the default is
    /// a WebSocket ping and close 1001.
    fn keepalive(&self) -> Keepalive {
        Keepalive::default()
    }

    /// The worker was woken from outside (another worker or thread has work for it).
    fn on_wake(&mut self, ctx: &mut WorkerView<'_, Self::Data>) {
        let _ = ctx;
    }
}

/// How the driver keeps silent WebSocket connections in check ([`Service::keepalive`]): one
/// choice per worker, so it costs no memory per connection. Any bytes received count as an
/// answer.
#[derive(Clone, Debug)]
pub struct Keepalive {
    /// The payload of a text message sent instead of a WebSocket ping (a protocol's own
    /// ping, such as Pusher's `pusher:ping`); `None` for a WebSocket ping.
    pub text_ping: Option<Bytes>,
    /// The close code for a connection that did not answer.
    pub close_code: CloseCode,
    /// Its close reason.
    pub close_reason: &'static str,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            text_ping: None,
            close_code: CloseCode::GOING_AWAY,
            close_reason: "ping timeout",
        }
    }
}

/// The worker as a service sees it during a call: its connections (to send to, close, and
/// keep per-connection data on), its counters, and the wakes of the other workers.
pub struct WorkerView<'a, D> {
    pub(crate) conns: &'a mut Slab<Conn<D>>,
    pub(crate) dirty: &'a mut Vec<usize>,
    pub(crate) wheel: &'a mut TimerWheel,
    pub(crate) now_tick: u32,
    pub(crate) drain_ticks: u32,
    pub(crate) max_backlog_bytes: usize,
    pub(crate) stats: &'a WorkerStats,
    pub(crate) worker: usize,
    pub(crate) shared: &'a super::Shared,
    pub(crate) deflate: &'a mut PerMessageDeflate,
}

/// The worker's permessage-deflate state: one compressor and one inflater for all its
/// connections (RFC 7692 with no context takeover either way).
#[derive(Debug)]
pub(crate) struct PerMessageDeflate {
    /// permessage-deflate is accepted from clients that offer it.
    pub enabled: bool,
    pub deflater: Deflater,
    pub inflater: Inflater,
}

impl PerMessageDeflate {
    pub(crate) fn new(enabled: bool, min_bytes: usize) -> Self {
        Self {
            enabled,
            deflater: Deflater::new(min_bytes),
            inflater: Inflater::new(),
        }
    }
}

/// One message on its way to any number of a worker's connections, and each wire format it
/// goes out in, made the first time a receiver needs it: the plain frame (encoded once by
/// whoever made the message), a compressed frame per window size in use, and an SSE event.
/// So a broadcast is encoded at most once per worker and format, and nothing re-parses a
/// frame: every format is made from the opcode and the payload.
#[derive(Debug)]
pub struct EncodedMessage {
    opcode: OpCode,
    payload: Bytes,
    plain: Bytes,
    /// The SSE `id:` of the message (its position in its topic), if it has one.
    event_id: Option<EventId>,
    /// Indexed by window bits - 9; `Some(None)`: tried, not worth it.
    compressed: [Option<Option<Bytes>>; 7],
    /// The SSE event, once made.
    event: Option<Bytes>,
}

impl EncodedMessage {
    /// A message as its payload and its encoded, uncompressed server frame (which must be
    /// `encode_frame(opcode, true, &payload, None)`).
    pub fn new(opcode: OpCode, payload: Bytes, frame: Bytes) -> Self {
        Self {
            opcode,
            payload,
            plain: frame,
            event_id: None,
            compressed: Default::default(),
            event: None,
        }
    }

    /// A message, its frame encoded here.
    pub fn encode(opcode: OpCode, payload: &[u8]) -> Self {
        let frame = crate::protocol::frame::encode_frame(opcode, true, payload, None);
        let payload = frame.slice(frame.len() - payload.len()..);
        Self::new(opcode, payload, frame)
    }

    /// The same message, with this id on its SSE event.
    pub fn with_event_id(mut self, id: Option<EventId>) -> Self {
        self.event_id = id;
        self
    }

    /// The frame for a receiver that compresses with `window_bits`, if any.
    fn frame_for(
        &mut self,
        window_bits: Option<u8>,
        deflate: &mut PerMessageDeflate,
        stats: &WorkerStats,
    ) -> Bytes {
        let Some(bits) = window_bits.filter(|&b| b >= MIN_SERVER_WINDOW_BITS) else {
            return self.plain.clone();
        };
        let slot = &mut self.compressed[usize::from(bits - MIN_SERVER_WINDOW_BITS)];
        let compressed = slot.get_or_insert_with(|| {
            let data = matches!(self.opcode, OpCode::Text | OpCode::Binary);
            if !data || self.payload.len() < deflate.deflater.min_bytes() {
                return None;
            }
            stats.deflate_compressions.fetch_add(1, Ordering::Relaxed);
            deflate
                .deflater
                .frame(self.opcode, &self.payload, bits, None)
        });
        match compressed {
            Some(frame) => {
                stats.deflate_frames_out.fetch_add(1, Ordering::Relaxed);
                frame.clone()
            }
            None => self.plain.clone(),
        }
    }

    /// The SSE event for a receiver on an event stream.
    fn event(&mut self) -> Bytes {
        let (id, opcode, payload) = (self.event_id.as_ref(), self.opcode, &self.payload);
        self.event
            .get_or_insert_with(|| crate::sse::encode_event(id, opcode, payload))
            .clone()
    }
}

impl<D> WorkerView<'_, D> {
    /// The index of the worker running this call.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Counters of this worker.
    pub fn stats(&self) -> &WorkerStats {
        self.stats
    }

    fn open_conn(&mut self, id: ConnId) -> Result<&mut Conn<D>, SendError> {
        match self.conns.get_mut(id.key as usize) {
            Some(conn) if conn.generation == id.generation && conn.ending == Ending::No => {
                match &conn.stage {
                    Stage::Open(ws) if ws.close_state() == crate::protocol::CloseState::Open => {
                        Ok(conn)
                    }
                    Stage::Stream => Ok(conn),
                    _ => Err(SendError::Closed),
                }
            }
            _ => Err(SendError::Closed),
        }
    }

    /// Queues an encoded server frame (from [`encode_frame`](crate::protocol::frame::encode_frame),
    /// shared by any number of receivers).
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] when the connection is gone or closing, [`SendError::Backlog`]
    /// when its queue is past the limit; the frame is then not queued and the caller decides
    /// (close the connection with 1008, or drop and count).
    pub fn send_frame(&mut self, id: ConnId, frame: Bytes) -> Result<(), SendError> {
        let limit = self.max_backlog_bytes;
        let conn = self.open_conn(id)?;
        if !conn.queue.push(frame, limit) {
            return Err(SendError::Backlog);
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(id.key as usize);
        }
        self.stats
            .frames_out
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Queues a message for a connection: compressed if the connection negotiated
    /// permessage-deflate and compression is worth it (made at most once per window size for
    /// all the receivers `message` is given to), else its plain frame.
    ///
    /// # Errors
    ///
    /// As [`send_frame`](Self::send_frame).
    pub fn send_message(
        &mut self,
        id: ConnId,
        message: &mut EncodedMessage,
    ) -> Result<(), SendError> {
        let conn = self.open_conn(id)?;
        let frame = match &conn.stage {
            Stage::Stream => message.event(),
            Stage::Open(ws) => message.frame_for(ws.send_window_bits(), self.deflate, self.stats),
            _ => message.frame_for(None, self.deflate, self.stats),
        };
        self.send_frame(id, frame)
    }

    /// Encodes and queues one message for a connection, compressed where worthwhile (see
    /// [`send_message`](Self::send_message)).
    ///
    /// # Errors
    ///
    /// As [`send_frame`](Self::send_frame).
    pub fn send(&mut self, id: ConnId, opcode: OpCode, payload: &[u8]) -> Result<(), SendError> {
        self.open_conn(id)?;
        let mut message = EncodedMessage::encode(opcode, payload);
        self.send_message(id, &mut message)
    }

    /// Starts the closing handshake (RFC 6455 §7.1.2); the connection is dropped if the peer
    /// does not answer within the drain timeout. A no-op on a connection already closing.
    pub fn close(&mut self, id: ConnId, code: CloseCode, reason: &str) {
        let drain = self.now_tick.saturating_add(self.drain_ticks);
        let Ok(conn) = self.open_conn(id) else { return };
        match &mut conn.stage {
            Stage::Open(ws) => {
                if let Some(frame) = ws.close(code, reason) {
                    conn.queue.push_unbounded(frame);
                }
            }
            // An event stream has no close frame: what is queued goes out, then the FIN.
            Stage::Stream => conn.ending = Ending::Flush,
            _ => return,
        }
        conn.deadline = drain;
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(id.key as usize);
        }
        self.wheel.insert(TimerEntry {
            key: id.key,
            tick: drain,
        });
    }

    /// Closes a connection that cannot keep up with its send queue: close 1008 (RFC 6455
    /// §7.4.1, policy violation), counted in `slow_consumer_closes`. The one path for every
    /// such close, whoever found the queue full (a fan-out, a handler's send, a pong).
    pub fn close_slow_consumer(&mut self, id: ConnId) {
        if self.open_conn(id).is_err() {
            return;
        }
        self.stats
            .slow_consumer_closes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.close(
            id,
            CloseCode::POLICY_VIOLATION,
            "too slow: send backlog over limit",
        );
    }

    /// Whether the connection is an event stream ([`Admission::Stream`]) rather than a
    /// WebSocket.
    pub fn is_stream(&self, id: ConnId) -> bool {
        self.conns
            .get(id.key as usize)
            .is_some_and(|c| c.generation == id.generation && matches!(c.stage, Stage::Stream))
    }

    /// Wakes another worker of this server (its [`Service::on_wake`] runs soon).
    pub fn wake(&self, worker: usize) {
        self.shared.wake(worker);
    }

    /// The number of workers of this server.
    pub fn workers(&self) -> usize {
        self.shared.wakers.len()
    }

    /// The service's state for a connection, if it is still open.
    pub fn data(&mut self, id: ConnId) -> Option<&mut D> {
        self.conns
            .get_mut(id.key as usize)
            .filter(|c| c.generation == id.generation)
            .map(|c| &mut c.data)
    }
}
