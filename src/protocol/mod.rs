//! The sans-IO RFC 6455 core: bytes in, events and bytes out.
//!
//! Nothing here touches a socket, a ring, a thread or a clock. The driver feeds received bytes
//! to a [`WebSocket`] (or, before the upgrade, to a
//! [`ServerHandshake`](handshake::ServerHandshake)) and sends the frames it is handed back.

pub mod close;
pub mod connection;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod mask;
pub mod origin;
pub mod utf8;

pub use close::{CloseCode, CloseState};
pub use connection::{Masking, Read, ServerSide, WebSocket};
pub use error::ProtocolError;
pub use frame::{FrameDecoder, FrameHeader, OpCode};

/// Which end of the connection this side is (RFC 6455 §5.1: a client masks, a server does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Accepts connections; receives masked frames, sends unmasked ones.
    Server,
    /// Opens connections; sends masked frames, receives unmasked ones.
    Client,
}

/// Default limit on one message, counted across its fragments: large enough for any
/// interactive use, small enough that a hostile client cannot pin much memory per connection.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 16 << 20;

/// Limits on everything a peer controls in the frame layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message payload, summed across fragments; checked on each declared frame length
    /// before any byte of it is buffered (RFC 6455 §10.4). At most 4 GiB - 1 (`u32::MAX`): a
    /// larger limit is taken as that.
    pub max_message_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}
