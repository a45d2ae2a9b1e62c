//! TLS alerts (RFC 8446 §6) and the record layer's faults, each with the alert it sends: one
//! enum with a total mapping, so a new fault must choose its alert to compile.

use std::fmt;

/// An alert description (RFC 8446 §6.2). A newtype rather than an enum: a peer may send any
/// value, and one this server never sends is still worth naming in a log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AlertDescription(pub u8);

impl AlertDescription {
    /// The sender will send nothing more (§6.1).
    pub const CLOSE_NOTIFY: Self = Self(0);
    /// A message that is not allowed here.
    pub const UNEXPECTED_MESSAGE: Self = Self(10);
    /// A record that does not authenticate.
    pub const BAD_RECORD_MAC: Self = Self(20);
    /// A record longer than the protocol allows.
    pub const RECORD_OVERFLOW: Self = Self(22);
    /// A field out of its range, or inconsistent with other fields.
    pub const ILLEGAL_PARAMETER: Self = Self(47);
    /// A message that cannot be parsed.
    pub const DECODE_ERROR: Self = Self(50);
    /// A fault of this side, not of the peer.
    pub const INTERNAL_ERROR: Self = Self(80);
    /// The peer cancels for reasons of its own (§6.1); a close_notify should follow.
    pub const USER_CANCELED: Self = Self(90);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::CLOSE_NOTIFY => "close_notify",
            Self::UNEXPECTED_MESSAGE => "unexpected_message",
            Self::BAD_RECORD_MAC => "bad_record_mac",
            Self::RECORD_OVERFLOW => "record_overflow",
            Self::ILLEGAL_PARAMETER => "illegal_parameter",
            Self::DECODE_ERROR => "decode_error",
            Self::INTERNAL_ERROR => "internal_error",
            Self::USER_CANCELED => "user_canceled",
            _ => return None,
        })
    }
}

impl fmt::Display for AlertDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "alert {}", self.0),
        }
    }
}

/// Alert levels (RFC 8446 §6).
pub(crate) const WARNING: u8 = 1;
pub(crate) const FATAL: u8 = 2;

/// Why uringcast's TLS 1.3 record layer gave up on a session: the peer's faults first, in the
/// order of RFC 8446 (§5 records, §4.6.3 KeyUpdate, §6 alerts), then this side's.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum RecordError {
    /// After the handshake every record is protected application data (§5); this one is of
    /// another outer type (change_cipher_spec, alert, handshake, or none known).
    #[error("unprotected record of type {0} after the handshake")]
    Unprotected(u8),
    /// A protected record longer than 2^14 + 256 bytes (§5.2).
    #[error("protected record of {0} bytes exceeds limit 16640")]
    CiphertextOverflow(usize),
    /// A protected record too short to hold a content type and a tag.
    #[error("protected record of {0} bytes is shorter than its tag")]
    Truncated(usize),
    /// A record that does not authenticate (§5.2).
    #[error("record does not authenticate")]
    BadRecordMac,
    /// Inner plaintext (content, type and padding) longer than 2^14 + 1 bytes (§5.4).
    #[error("inner plaintext of {0} bytes exceeds limit 16385")]
    PlaintextOverflow(usize),
    /// Inner plaintext of padding only (§5.4).
    #[error("record without a content type")]
    NoContentType,
    /// An inner content type that is unknown or not allowed after the handshake.
    #[error("inner content type {0} after the handshake")]
    UnexpectedContentType(u8),
    /// A zero-length handshake or alert record (§5.1).
    #[error("zero-length record of content type {0}")]
    EmptyRecord(u8),
    /// A record of another type between the fragments of a handshake message (§5.1).
    #[error("record of content type {0} inside a handshake message")]
    Interleaved(u8),
    /// A handshake message other than KeyUpdate after the handshake.
    #[error("handshake message of type {0} after the handshake")]
    UnexpectedHandshake(u8),
    /// A KeyUpdate whose body is not one byte.
    #[error("KeyUpdate of {0} bytes (must be 1)")]
    MalformedKeyUpdate(u32),
    /// A KeyUpdate whose request_update is neither 0 nor 1 (§4.6.3).
    #[error("KeyUpdate with request_update {0} (must be 0 or 1)")]
    IllegalKeyUpdateRequest(u8),
    /// Bytes after a KeyUpdate in its record: it must end its record (§5.1).
    #[error("KeyUpdate not at the end of its record")]
    KeyUpdateNotLast,
    /// More KeyUpdates in a row than the server derives keys for.
    #[error("more than {0} KeyUpdates between application-data records")]
    TooManyKeyUpdates(u8),
    /// An alert record whose content is not two bytes.
    #[error("alert record of {0} bytes (must be 2)")]
    MalformedAlert(usize),
    /// The peer sent a fatal alert: it has closed, and gets nothing back (§6.2).
    #[error("peer sent {0}")]
    PeerAlert(AlertDescription),
    /// A cipher suite uringcast's record layer does not implement (a rustls update added one).
    #[error("cipher suite not supported by the record layer")]
    UnsupportedSuite,
    /// ring refused a traffic key or IV rustls produced.
    #[error("traffic key or IV refused")]
    BadTrafficKey,
    /// rustls could not derive the next traffic secret.
    #[error("next traffic secret: {0}")]
    KeySchedule(rustls::Error),
    /// Sealing failed (ring's sealing fails only on lengths this code never makes).
    #[error("sealing failed")]
    Seal,
    /// A sequence number would wrap (§5.3): 2^64 records under one key.
    #[error("sequence number exhausted")]
    SequenceExhausted,
}

impl RecordError {
    /// The alert to send before closing; `None` when the peer ended the session with an
    /// alert of its own. No `_` arm: a new variant must choose.
    pub fn alert(&self) -> Option<AlertDescription> {
        Some(match self {
            Self::Unprotected(_)
            | Self::NoContentType
            | Self::UnexpectedContentType(_)
            | Self::EmptyRecord(_)
            | Self::Interleaved(_)
            | Self::UnexpectedHandshake(_)
            | Self::KeyUpdateNotLast
            | Self::TooManyKeyUpdates(_) => AlertDescription::UNEXPECTED_MESSAGE,
            Self::CiphertextOverflow(_) | Self::PlaintextOverflow(_) => {
                AlertDescription::RECORD_OVERFLOW
            }
            Self::Truncated(_) | Self::BadRecordMac => AlertDescription::BAD_RECORD_MAC,
            Self::MalformedKeyUpdate(_) | Self::MalformedAlert(_) => AlertDescription::DECODE_ERROR,
            Self::IllegalKeyUpdateRequest(_) => AlertDescription::ILLEGAL_PARAMETER,
            Self::PeerAlert(_) => return None,
            Self::UnsupportedSuite
            | Self::BadTrafficKey
            | Self::KeySchedule(_)
            | Self::Seal
            | Self::SequenceExhausted => AlertDescription::INTERNAL_ERROR,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_print_their_rfc_names() {
        assert_eq!(
            AlertDescription::BAD_RECORD_MAC.to_string(),
            "bad_record_mac"
        );
        assert_eq!(AlertDescription(255).to_string(), "alert 255");
        assert_eq!(
            RecordError::PeerAlert(AlertDescription::DECODE_ERROR).to_string(),
            "peer sent decode_error"
        );
    }
}
