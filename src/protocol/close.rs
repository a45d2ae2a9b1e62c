//! Close codes (RFC 6455 §7.4) and the closing handshake's states (§7.1).

use std::fmt;

/// A close status code: an open newtype, since peers may send any registered or private code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection was fulfilled.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the endpoint is going away (server shutdown, unanswered ping).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1005: no code was present (never sent on the wire).
    pub const NO_STATUS: Self = Self(1005);
    /// 1006: closed without a close frame (never sent on the wire).
    pub const ABNORMAL: Self = Self(1006);
    /// 1007: message data inconsistent with its type (invalid UTF-8 in text).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: a message violates the endpoint's policy (a slow consumer, for one).
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// 1009: a message too big to process.
    pub const MESSAGE_TOO_BIG: Self = Self(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: Self = Self(1010);
    /// 1011: the server hit an unexpected condition.
    pub const INTERNAL_ERROR: Self = Self(1011);
    /// 1013: try again later; the server is temporarily out of a resource (IANA registry,
    /// RFC 6455 §7.4.2).
    pub const TRY_AGAIN_LATER: Self = Self(1013);
    /// 4010 (private use, §7.4.2): uringcast's "not recovered" for a WebSocket subscriber
    /// whose handler has no message for it: publications it was owed are lost (a gap its
    /// node could not fill, a stream made anew), and its reconnect is its notice.
    pub const NOT_RECOVERED: Self = Self(4010);

    /// Whether this code may appear in a close frame on the wire (§7.4.1, §7.4.2 and the
    /// IANA registry): 1000-1003, 1007-1014 and 3000-4999. 1004-1006 and 1015 are reserved
    /// for local use; everything else below 3000 is unassigned.
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CloseCode({})", self.0)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        Self(code)
    }
}

/// Where a connection stands in the closing handshake (§7.1.2-§7.1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseState {
    /// Data flows both ways.
    Open,
    /// We sent a close frame and wait for the peer's. Incoming messages are still delivered,
    /// but nothing more may be sent: no data, no pongs (§5.5.1).
    CloseSent,
    /// Both close frames are accounted for, or the connection was failed: read nothing more.
    /// The TCP connection may be shut once the queued frames are sent (§7.1.1: the server
    /// closes first).
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendable_codes_follow_rfc_7_4() {
        let sendable: Vec<u16> = (0..=u16::MAX)
            .filter(|c| CloseCode(*c).is_sendable())
            .collect();
        let expected: Vec<u16> = (1000..=1003)
            .chain(1007..=1014)
            .chain(3000..=4999)
            .collect();
        assert_eq!(sendable, expected);
        for code in [1004, 1005, 1006, 1015, 999, 1016, 2999, 5000] {
            assert!(!CloseCode(code).is_sendable(), "{code}");
        }
    }
}
