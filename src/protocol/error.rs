//! Every way a peer can break RFC 6455 after the handshake, each with the close code it earns.

use super::close::CloseCode;

/// A violation of RFC 6455 by the peer. The connection must be failed (§7.1.7) with
/// [`ProtocolError::close_code`].
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A client sent an unmasked frame (§5.1).
    #[error("client frame is not masked")]
    UnmaskedClientFrame,
    /// A server sent a masked frame (§5.1).
    #[error("server frame is masked")]
    MaskedServerFrame,
    /// RSV1-3 set with no extension negotiated (§5.2), or RSV1 where permessage-deflate does
    /// not allow it: a control frame or a continuation (RFC 7692 §6.1).
    #[error("reserved bits {0:#05b} set without an extension")]
    ReservedBits(u8),
    /// Opcode 0x3-0x7 or 0xB-0xF (§5.2).
    #[error("reserved opcode {0:#x}")]
    ReservedOpCode(u8),
    /// A control frame longer than 125 bytes (§5.5).
    #[error("control frame of {0} bytes (limit 125)")]
    ControlFrameTooLong(u64),
    /// A control frame with FIN clear (§5.5).
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// A continuation frame with no message to continue (§5.4).
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress (§5.4).
    #[error("new data frame inside a fragmented message")]
    InterleavedDataFrame,
    /// A 64-bit length with the most significant bit set (§5.2).
    #[error("frame length has its most significant bit set")]
    LengthOverflow,
    /// The message, summed across fragments, exceeds the configured limit (§10.4).
    #[error("message of {len} bytes exceeds limit {limit}")]
    MessageTooBig {
        /// Declared length so far: earlier fragments plus this frame's declared length.
        len: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A text message or close reason that is not UTF-8 (§8.1).
    #[error("invalid UTF-8 in text message")]
    InvalidUtf8,
    /// A close frame with a 1-byte payload (§5.5.1).
    #[error("close frame with a 1-byte payload")]
    CloseTooShort,
    /// A close frame whose status code may not be sent on the wire (§7.4).
    #[error("close code {0} may not be sent on the wire")]
    InvalidCloseCode(u16),
    /// A close reason that is not UTF-8 (§5.5.1).
    #[error("close reason is not UTF-8")]
    InvalidCloseReason,
    /// A compressed message whose DEFLATE data is broken (RFC 7692 §7.2.2).
    #[error("invalid compressed data")]
    InvalidCompressedData,
    /// A compressed message that refers to data before it: the peer kept its compression
    /// context across messages although `client_no_context_takeover` was agreed (RFC 7692
    /// §7.1.1.2), breaking the negotiated parameters.
    #[error("compressed data refers to an earlier message (context takeover was agreed off)")]
    CompressedContextTakeover,
    /// Buffering the next bytes of an unfinished message would pass the budget the caller
    /// shares among its connections (not a fault of this peer's framing: try again later).
    #[error("no room to buffer {needed} more bytes of an unfinished message ({available} left)")]
    OverBudget {
        /// Bytes the chunk needed.
        needed: u64,
        /// Bytes left in the budget.
        available: u64,
    },
}

impl ProtocolError {
    /// The close code RFC 6455 §7.4.1 prescribes. No `_` arm: a new variant must choose.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::UnmaskedClientFrame
            | Self::MaskedServerFrame
            | Self::ReservedBits(_)
            | Self::ReservedOpCode(_)
            | Self::ControlFrameTooLong(_)
            | Self::FragmentedControlFrame
            | Self::UnexpectedContinuation
            | Self::InterleavedDataFrame
            | Self::LengthOverflow
            | Self::CloseTooShort
            | Self::InvalidCloseCode(_)
            | Self::CompressedContextTakeover => CloseCode::PROTOCOL_ERROR,
            Self::MessageTooBig { .. } => CloseCode::MESSAGE_TOO_BIG,
            Self::InvalidUtf8 | Self::InvalidCloseReason | Self::InvalidCompressedData => {
                CloseCode::INVALID_PAYLOAD
            }
            Self::OverBudget { .. } => CloseCode::TRY_AGAIN_LATER,
        }
    }
}
