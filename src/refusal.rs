//! Why a request or a connection was refused: one reason per check, each with its HTTP status
//! (or close code) and its label in `/metrics` (`uringcast_refusals_total{reason="..."}`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::handshake::http_response;
use crate::protocol::http::reason_phrase;

/// One reason to refuse, with what the client is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// No token where one is needed: 401.
    TokenMissing,
    /// A token that is not a valid JWT for the configured key and algorithm (forged, wrong
    /// algorithm, `alg: none`, malformed, not valid yet), or a wrong publish token: 401.
    TokenInvalid,
    /// A token past its `exp` (plus the leeway): 401.
    TokenExpired,
    /// A valid token whose claims do not cover the topic: 403.
    TopicNotCovered,
    /// A message from a connection that may not publish (`--client-publish`): close 1008.
    PublishDenied,
    /// The client address holds `max_connections_per_ip` connections already: 429.
    ConnectionsPerIp,
    /// The client address is past `max_handshakes_per_ip` per second: 429.
    HandshakesPerIp,
    /// The server holds `max_connections` connections already: 503.
    ServerFull,
    /// The address table is full of addresses still active: 503.
    AddressTableFull,
    /// A connection past `max_messages_per_second`: close 1008.
    MessageRate,
    /// A connection past `max_bytes_per_second`: close 1008.
    ByteRate,
}

impl Reason {
    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [Self; 11] = [
        Self::TokenMissing,
        Self::TokenInvalid,
        Self::TokenExpired,
        Self::TopicNotCovered,
        Self::PublishDenied,
        Self::ConnectionsPerIp,
        Self::HandshakesPerIp,
        Self::ServerFull,
        Self::AddressTableFull,
        Self::MessageRate,
        Self::ByteRate,
    ];

    /// The label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Self::TokenMissing => "token_missing",
            Self::TokenInvalid => "token_invalid",
            Self::TokenExpired => "token_expired",
            Self::TopicNotCovered => "topic_not_covered",
            Self::PublishDenied => "publish_denied",
            Self::ConnectionsPerIp => "connections_per_ip",
            Self::HandshakesPerIp => "handshakes_per_ip",
            Self::ServerFull => "server_full",
            Self::AddressTableFull => "address_table_full",
            Self::MessageRate => "message_rate",
            Self::ByteRate => "byte_rate",
        }
    }

    /// The HTTP status a request refused for this reason gets (RFC 9110 §15.5.2 401,
    /// §15.5.4 403, §15.6.4 503; RFC 6585 §4 429). The reasons that refuse an open
    /// connection (a close 1008) answer 403 where they must answer a request.
    pub fn status(self) -> u16 {
        match self {
            Self::TokenMissing | Self::TokenInvalid | Self::TokenExpired => 401,
            Self::TopicNotCovered | Self::PublishDenied | Self::MessageRate | Self::ByteRate => 403,
            Self::ConnectionsPerIp | Self::HandshakesPerIp => 429,
            Self::ServerFull | Self::AddressTableFull => 503,
        }
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|r| *r == self)
            .expect("ALL lists every reason")
    }
}

/// A refused request: the reason, and for 429 and 503 the seconds after which to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: Reason,
    /// `Retry-After`, in seconds, for 429 and 503.
    pub retry_after: Option<u32>,
}

impl Refusal {
    /// A refusal with no `Retry-After`.
    pub fn new(reason: Reason) -> Self {
        Self {
            reason,
            retry_after: None,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.reason.status()
    }

    /// The complete HTTP response, which closes the connection: 401 with
    /// `WWW-Authenticate: Bearer` (RFC 6750 §3), 429 and 503 with `Retry-After`
    /// (RFC 9110 §10.2.3), and a one-line body naming the reason.
    pub fn response(&self) -> Vec<u8> {
        let status = self.status();
        let retry = self.retry_after.map(|s| s.max(1).to_string());
        let mut headers: Vec<(&str, &str)> = vec![("Connection", "close")];
        if status == 401 {
            headers.push(("WWW-Authenticate", "Bearer"));
        }
        if let Some(retry) = &retry {
            headers.push(("Retry-After", retry));
        }
        let body = format!("{}\n", self.reason.label());
        http_response(
            status,
            reason_phrase(status),
            &headers,
            Some("text/plain; charset=utf-8"),
            body.as_bytes(),
        )
    }
}

/// Refusals counted by reason, readable from any thread.
#[derive(Debug, Default)]
pub struct RefusalCounts([AtomicU64; Reason::ALL.len()]);

impl RefusalCounts {
    /// Counts one refusal.
    pub fn count(&self, reason: Reason) {
        self.0[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The refusals counted for `reason`.
    pub fn get(&self, reason: Reason) -> u64 {
        self.0[reason.index()].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_distinct_label_and_an_error_status() {
        let mut labels: Vec<_> = Reason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len());
        assert!(Reason::ALL.iter().all(|r| (400..600).contains(&r.status())));
    }

    #[test]
    fn responses_carry_their_headers() {
        let text = |refusal: Refusal| String::from_utf8(refusal.response()).expect("ASCII");
        let missing = text(Refusal::new(Reason::TokenMissing));
        assert!(missing.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(missing.contains("WWW-Authenticate: Bearer\r\n"));
        let busy = text(Refusal {
            reason: Reason::HandshakesPerIp,
            retry_after: Some(0),
        });
        assert!(busy.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        // Never "Retry-After: 0", which would invite an immediate retry.
        assert!(busy.contains("Retry-After: 1\r\n"), "{busy}");
        let full = text(Refusal {
            reason: Reason::ServerFull,
            retry_after: Some(5),
        });
        assert!(full.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(full.contains("Retry-After: 5\r\n"));
        let counts = RefusalCounts::default();
        counts.count(Reason::ByteRate);
        assert_eq!(counts.get(Reason::ByteRate), 1);
        assert_eq!(counts.get(Reason::MessageRate), 0);
    }
}
