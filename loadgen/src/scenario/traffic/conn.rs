//! One connection's state: its direct descriptor slot, and where it is from the open chain to
//! the close.

use std::time::Instant;

use bytes::Bytes;
use uringcast::protocol::connection::ClientSide;
use uringcast::protocol::handshake::ClientHandshake;
use uringcast::protocol::WebSocket;

use crate::scenario::session::State;

/// A connection's masks come from the thread's random source (RFC 6455 §5.3).
pub(super) type ClientMasks = ClientSide<fn() -> [u8; 4]>;

pub(super) fn random_mask() -> [u8; 4] {
    rand::random()
}

/// One direct descriptor slot and the connection in it (one connection per slot, never
/// reopened: a connection lost mid-run stays lost and is counted).
pub(super) struct Slot {
    pub(super) generation: u32,
    /// Submissions on this slot whose final completion has not arrived.
    pub(super) pending: u32,
    pub(super) recv_armed: bool,
    pub(super) conn: Conn,
    /// The TLS session of a `wss://` connection.
    pub(super) tls: Option<Box<super::tls::SlotTls>>,
}

pub(super) enum Conn {
    Free,
    Connecting(Box<Connecting>),
    Open(Box<Open>),
    /// Shutdown or cancel, then close, submitted; the slot frees when `pending` reaches 0.
    Closing,
}

pub(super) struct Connecting {
    pub(super) started: Instant,
    pub(super) handshake: ClientHandshake,
    /// The upgrade request, kept to resend the rest after a short send.
    pub(super) request: Bytes,
    pub(super) sent: usize,
    pub(super) connected: bool,
}

pub(super) struct Open {
    pub(super) ws: WebSocket<ClientMasks>,
    /// The start of a frame header split across receives (under 14 bytes).
    pub(super) spill: Vec<u8>,
    /// Frames waiting for the next send.
    pub(super) queued: Vec<Bytes>,
    /// The bytes of the send in flight, to resend the rest after a short send.
    pub(super) sending: Option<Bytes>,
    /// When our close frame was queued (we closed) or the server's close arrived.
    pub(super) closing: Option<Instant>,
    /// The server closed first: already counted as dropped.
    pub(super) server_closed: bool,
    /// The server's close frame arrived.
    pub(super) close_received: bool,
    /// Where the connection is in its protocol's opening (`None`: plain WebSocket, up at the
    /// upgrade).
    pub(super) session: Option<State>,
}

impl Open {
    /// Up at the protocol's level: counted as connecting until then.
    pub(super) fn ready(&self) -> bool {
        self.session.is_none_or(|s| s == State::Ready)
    }
}

#[derive(Clone, Copy)]
pub(super) struct Deadline {
    pub(super) at: Instant,
    pub(super) slot: u32,
    pub(super) generation: u32,
}
