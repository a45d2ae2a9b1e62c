//! permessage-deflate (RFC 7692) on a thread's connections, and what crossed the wire against
//! the payloads it carried.
//!
//! With `--deflate` every connection offers
//! [`CLIENT_OFFER`]; a server that accepts it may
//! compress what it sends. One [`Inflater`] per thread serves all of its connections: the offer
//! asks for `server_no_context_takeover`, so nothing of one message is needed for the next.
//! With `--deflate-send` one [`Deflater`] per thread compresses what the thread sends on the
//! connections that agreed; without it messages go plain, which RFC 7692 always allows.
//!
//! Wire bytes are a connection's WebSocket bytes after its handshake, frame headers and control
//! frames included, before TLS; payload bytes are the data messages' payloads, after
//! inflation. Their ratio is what compression (or framing alone) costs or saves.

use bytes::Bytes;
use uringcast::protocol::deflate::{Deflater, Inflater, CLIENT_OFFER, DEFAULT_MIN_BYTES, RSV1};
use uringcast::protocol::frame::FrameHeader;

/// `--deflate` and `--deflate-send`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Deflate {
    /// Not offered: every message is plain.
    #[default]
    Off,
    /// Offered on every connection; what arrives compressed is inflated, what is sent is plain.
    Offer,
    /// Offered, and what is sent on a connection that agreed is compressed when that pays
    /// (from [`DEFAULT_MIN_BYTES`] up, and only if smaller).
    OfferAndCompress,
}

impl Deflate {
    /// From the two flags (`--deflate-send` requires `--deflate`).
    pub fn from_flags(offer: bool, compress: bool) -> Self {
        match (offer, compress) {
            (false, _) => Self::Off,
            (true, false) => Self::Offer,
            (true, true) => Self::OfferAndCompress,
        }
    }

    /// Whether connections offer the extension.
    pub fn offered(self) -> bool {
        self != Self::Off
    }

    /// Whether what is sent is compressed where the extension was agreed.
    pub fn compresses(self) -> bool {
        self == Self::OfferAndCompress
    }
}

/// Bytes on the wire against payload bytes, and permessage-deflate's share; summed over
/// threads for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireTally {
    /// Connections whose server accepted permessage-deflate.
    pub deflate_connections: u64,
    /// WebSocket bytes received after the handshakes.
    pub wire_bytes_in: u64,
    /// Payload bytes of the data messages received, after inflation.
    pub payload_bytes_in: u64,
    /// Data messages received.
    pub messages_in: u64,
    /// Of those, messages that arrived compressed (inflated).
    pub compressed_in: u64,
    /// WebSocket bytes queued to send after the handshakes (data, pongs and closes).
    pub wire_bytes_out: u64,
    /// Payload bytes of the data messages sent.
    pub payload_bytes_out: u64,
    /// Data messages sent.
    pub messages_out: u64,
    /// Of those, messages sent compressed.
    pub compressed_out: u64,
}

impl WireTally {
    /// Adds another thread's counts.
    pub fn merge(&mut self, other: &Self) {
        self.deflate_connections += other.deflate_connections;
        self.wire_bytes_in += other.wire_bytes_in;
        self.payload_bytes_in += other.payload_bytes_in;
        self.messages_in += other.messages_in;
        self.compressed_in += other.compressed_in;
        self.wire_bytes_out += other.wire_bytes_out;
        self.payload_bytes_out += other.payload_bytes_out;
        self.messages_out += other.messages_out;
        self.compressed_out += other.compressed_out;
    }

    /// Wire bytes per payload byte received (below 1: compression saved bytes); `None`
    /// without payload.
    pub fn ratio_in(&self) -> Option<f64> {
        ratio(self.wire_bytes_in, self.payload_bytes_in)
    }

    /// Wire bytes per payload byte sent; `None` without payload.
    pub fn ratio_out(&self) -> Option<f64> {
        ratio(self.wire_bytes_out, self.payload_bytes_out)
    }
}

fn ratio(wire: u64, payload: u64) -> Option<f64> {
    (payload > 0).then(|| wire as f64 / payload as f64)
}

/// A thread's compression state: what it offers, its one inflater, its one compressor (with
/// `--deflate-send`), and its counts.
pub(super) struct Compression {
    /// The extension header of every upgrade request (empty when not offered).
    pub(super) headers: &'static [(&'static str, &'static str)],
    pub(super) inflater: Inflater,
    pub(super) deflater: Option<Deflater>,
    pub(super) tally: WireTally,
}

impl Compression {
    pub(super) fn new(deflate: Deflate) -> Self {
        Self {
            headers: if deflate.offered() {
                &[("Sec-WebSocket-Extensions", CLIENT_OFFER)]
            } else {
                &[]
            },
            inflater: Inflater::new(),
            deflater: deflate
                .compresses()
                .then(|| Deflater::new(DEFAULT_MIN_BYTES)),
            tally: WireTally::default(),
        }
    }

    /// Counts one data message sent as `frame`.
    pub(super) fn sent(&mut self, payload: &[u8], frame: &Bytes) {
        self.tally.messages_out += 1;
        self.tally.payload_bytes_out += payload.len() as u64;
        if is_compressed(frame) {
            self.tally.compressed_out += 1;
        }
    }

    /// The counts, with the messages the inflater inflated.
    pub(super) fn finish(&self) -> WireTally {
        WireTally {
            compressed_in: self.inflater.inflations(),
            ..self.tally
        }
    }
}

/// Whether an encoded frame has RSV1 set: "Per-Message Compressed" (RFC 7692 §6).
fn is_compressed(frame: &[u8]) -> bool {
    matches!(FrameHeader::parse(frame), Ok(Some((header, _))) if header.rsv & RSV1 != 0)
}

#[cfg(test)]
mod tests {
    use uringcast::protocol::deflate::{Agreed, MAX_WINDOW_BITS};
    use uringcast::protocol::{connection::ClientSide, Limits, OpCode, WebSocket};

    use super::*;

    #[test]
    fn sends_count_compressed_frames_only() {
        let agreed = Agreed {
            server_window_bits: MAX_WINDOW_BITS,
            client_window_bits: MAX_WINDOW_BITS,
        };
        let mut ws = WebSocket::new(
            ClientSide(|| [1, 2, 3, 4]),
            Limits {
                max_message_bytes: 1 << 20,
            },
        )
        .with_deflate(agreed);
        let mut compression = Compression::new(Deflate::OfferAndCompress);
        let deflater = compression.deflater.as_mut().expect("compressing");
        let long = b"tick ".repeat(100);
        let compressed = ws.encode_with(OpCode::Text, &long, deflater).unwrap();
        let short = ws.encode_with(OpCode::Text, b"hi", deflater).unwrap();
        compression.sent(&long, &compressed);
        compression.sent(b"hi", &short);
        let tally = compression.finish();
        assert_eq!(tally.messages_out, 2);
        assert_eq!(tally.compressed_out, 1);
        assert_eq!(tally.payload_bytes_out, 502);
        assert!(compressed.len() < long.len());
        assert!(Compression::new(Deflate::Offer).deflater.is_none());
        assert!(Compression::new(Deflate::Off).headers.is_empty());
    }

    #[test]
    fn tallies_merge_and_give_ratios() {
        let mut a = WireTally {
            deflate_connections: 2,
            wire_bytes_in: 450,
            payload_bytes_in: 1000,
            ..WireTally::default()
        };
        let b = WireTally {
            deflate_connections: 1,
            wire_bytes_in: 50,
            payload_bytes_in: 0,
            ..WireTally::default()
        };
        a.merge(&b);
        assert_eq!(a.deflate_connections, 3);
        assert_eq!(a.ratio_in(), Some(0.5));
        assert_eq!(a.ratio_out(), None);
        assert_eq!(Deflate::from_flags(true, true), Deflate::OfferAndCompress);
        assert_eq!(Deflate::from_flags(false, true), Deflate::Off);
        assert!(Deflate::Offer.offered() && !Deflate::Offer.compresses());
    }
}
