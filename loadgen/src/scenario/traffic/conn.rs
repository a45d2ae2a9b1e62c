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
    /// An event stream's position, kept across its reconnects (`None`: a WebSocket).
    pub(super) stream: Option<Box<super::stream::StreamSlot>>,
    /// Reopening: when the slot is due to open again (`--reconnect`, or the workload asked).
    pub(super) reopen: Option<super::reconnect::Reopen>,
    /// The slot has been open once: a later open is a reconnect.
    pub(super) was_open: bool,
    /// Failed attempts since the connection was lost (`--reconnect`).
    pub(super) attempt: u32,
    /// When the connection was lost, while it is being reconnected.
    pub(super) lost_at: Option<Instant>,
    /// The pending or current attempt follows a loss (not a close the workload asked for).
    pub(super) reopen_after_loss: bool,
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
    pub(super) handshake: Opening,
    /// The upgrade request, kept to resend the rest after a short send.
    pub(super) request: Bytes,
    pub(super) sent: usize,
    pub(super) connected: bool,
}

/// What a connection waits for after its request: a WebSocket upgrade, or an event stream's
/// response head.
pub(super) enum Opening {
    Upgrade(ClientHandshake),
    Stream(super::stream::StreamHead),
}

pub(super) struct Open {
    pub(super) ws: WebSocket<ClientMasks>,
    /// An event stream's body parser (`None`: a WebSocket, whose frames `ws` reads).
    pub(super) sse: Option<Box<crate::scenario::sse::Parser>>,
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
    /// A WebSocket just upgraded.
    pub(super) fn websocket(ws: WebSocket<ClientMasks>) -> Self {
        Self {
            ws,
            sse: None,
            spill: Vec::new(),
            queued: Vec::new(),
            sending: None,
            closing: None,
            server_closed: false,
            close_received: false,
            session: None,
        }
    }

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
