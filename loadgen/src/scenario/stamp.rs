//! The payload every `echo` and `broadcast` message carries, so each one received can be
//! checked byte for byte: who sent it (a connection or publisher id), its sequence number, and
//! when it was due to be sent, followed by a filler that depends on all three.
//!
//! Binary layout (24 bytes, little endian): `id: u64, seq: u64, sent_ns: u64`. Text layout
//! (48 bytes of lower-case hex, the same three numbers), so a text message is valid UTF-8. The
//! filler is the alphabet `a..z` repeated from an offset given by `id + seq`, so a frame that
//! arrives with another message's filler, truncated, or shifted fails the check. A third
//! encoding, a JSON market-data tick ([`tick`]), carries the same three numbers in
//! a text message of realistic, compressible content.
//!
//! Times are `CLOCK_MONOTONIC` nanoseconds: the same clock in every process of the machine, so
//! a stamp written by another process (the `floor_server` example) is comparable with ours.

use nix::time::{clock_gettime, ClockId};
use uringcast::protocol::OpCode;

use super::tick;

/// The smallest binary payload: three `u64`s.
pub const BINARY_STAMP_BYTES: usize = 24;
/// The smallest text payload: three `u64`s in 16 hex digits each.
pub const TEXT_STAMP_BYTES: usize = 48;

const ALPHABET: usize = 26;

/// How the numbers are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Little-endian `u64`s, in a binary message.
    Binary,
    /// Lower-case hex digits, in a text message.
    Text,
    /// A JSON tick ([`tick`]) in a text message (`--payload json`).
    Json,
}

impl Encoding {
    /// The smallest payload: the stamp, or an empty-booked tick.
    pub fn min_bytes(self) -> usize {
        match self {
            Self::Binary => BINARY_STAMP_BYTES,
            Self::Text => TEXT_STAMP_BYTES,
            Self::Json => tick::MIN_BYTES,
        }
    }

    /// The message type the payload goes in.
    pub fn opcode(self) -> OpCode {
        match self {
            Self::Binary => OpCode::Binary,
            Self::Text | Self::Json => OpCode::Text,
        }
    }
}

/// What a payload says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The sending connection (echo) or publisher (broadcast).
    pub id: u64,
    /// The sender's sequence number, from 0.
    pub seq: u64,
    /// When the message was due to be sent, `CLOCK_MONOTONIC` ns.
    pub sent_ns: u64,
}

/// Writes and checks payloads of one size and encoding without allocating per message.
#[derive(Clone, Debug)]
pub struct Stamper {
    encoding: Encoding,
    size: usize,
    /// `a..z` repeated, long enough that any filler is one slice of it (empty for a tick).
    pattern: Vec<u8>,
}

impl Stamper {
    /// Payloads of `size` bytes.
    ///
    /// # Panics
    ///
    /// If `size` is smaller than the encoding's smallest payload (the CLI refuses that first).
    pub fn new(encoding: Encoding, size: usize) -> Self {
        assert!(
            size >= encoding.min_bytes(),
            "payload smaller than its stamp"
        );
        let pattern = match encoding {
            Encoding::Binary | Encoding::Text => (0..size + ALPHABET)
                .map(|i| b'a' + (i % ALPHABET) as u8)
                .collect(),
            Encoding::Json => Vec::new(),
        };
        Self {
            encoding,
            size,
            pattern,
        }
    }

    /// The message type of every payload.
    pub fn opcode(&self) -> OpCode {
        self.encoding.opcode()
    }

    /// Writes the payload for `stamp` into `out` (cleared first).
    pub fn write(&self, stamp: Stamp, out: &mut Vec<u8>) {
        out.clear();
        match self.encoding {
            Encoding::Binary => {
                out.extend_from_slice(&stamp.id.to_le_bytes());
                out.extend_from_slice(&stamp.seq.to_le_bytes());
                out.extend_from_slice(&stamp.sent_ns.to_le_bytes());
            }
            Encoding::Text => {
                for value in [stamp.id, stamp.seq, stamp.sent_ns] {
                    out.extend_from_slice(format_hex(value).as_slice());
                }
            }
            Encoding::Json => return tick::write(stamp, self.size, out),
        }
        out.extend_from_slice(self.filler(stamp));
    }

    /// Reads the stamp at the start of `payload`, if it has one.
    pub fn read(&self, payload: &[u8]) -> Option<Stamp> {
        if self.encoding == Encoding::Json {
            return tick::read(payload);
        }
        let field = |i: usize| -> Option<u64> {
            match self.encoding {
                Encoding::Binary => {
                    let bytes = payload.get(i * 8..i * 8 + 8)?;
                    Some(u64::from_le_bytes(bytes.try_into().ok()?))
                }
                Encoding::Text => parse_hex(payload.get(i * 16..i * 16 + 16)?),
                Encoding::Json => None,
            }
        };
        Some(Stamp {
            id: field(0)?,
            seq: field(1)?,
            sent_ns: field(2)?,
        })
    }

    /// Whether `payload` is exactly the payload of `stamp`: its size, stamp and filler.
    pub fn matches(&self, stamp: Stamp, payload: &[u8]) -> bool {
        if self.encoding == Encoding::Json {
            return tick::matches(stamp, self.size, payload);
        }
        payload.len() == self.size
            && self.read(payload) == Some(stamp)
            && payload[self.encoding.min_bytes()..] == *self.filler(stamp)
    }

    /// The pattern after the stamp (the stamp's length is the encoding's smallest payload).
    fn filler(&self, stamp: Stamp) -> &[u8] {
        let offset = (stamp.id.wrapping_add(stamp.seq) % ALPHABET as u64) as usize;
        &self.pattern[offset..offset + self.size - self.encoding.min_bytes()]
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn now_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail on Linux; 0 would only make latencies look huge.
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        (t.tv_sec() as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(t.tv_nsec() as u64)
    })
}

/// Microseconds from `from_ns` to `to_ns`, at least 1 (the histograms' lowest value).
pub fn micros_between(from_ns: u64, to_ns: u64) -> u64 {
    (to_ns.saturating_sub(from_ns) / 1000).max(1)
}

/// `value` in 16 lower-case hex digits.
pub(super) fn format_hex(value: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = DIGITS[((value >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_detect_changes() {
        for (encoding, size) in [
            (Encoding::Binary, 24),
            (Encoding::Binary, 100),
            (Encoding::Text, 48),
            (Encoding::Text, 1000),
            (Encoding::Json, 192),
            (Encoding::Json, 400),
        ] {
            let stamper = Stamper::new(encoding, size);
            let stamp = Stamp {
                id: 7,
                seq: u64::MAX - 3,
                sent_ns: 123_456_789,
            };
            let mut payload = Vec::new();
            stamper.write(stamp, &mut payload);
            assert_eq!(payload.len(), size);
            assert_eq!(stamper.read(&payload), Some(stamp));
            assert!(stamper.matches(stamp, &payload));
            if encoding.opcode() == OpCode::Text {
                assert!(std::str::from_utf8(&payload).is_ok());
            }
            // Any flipped byte, a truncation, or another message's payload fails.
            for i in 0..size {
                let mut bad = payload.clone();
                bad[i] ^= 0x01;
                assert!(!stamper.matches(stamp, &bad), "{encoding:?} byte {i}");
            }
            assert!(!stamper.matches(stamp, &payload[..size - 1]));
            let other = Stamp { seq: 1, ..stamp };
            let mut other_payload = Vec::new();
            stamper.write(other, &mut other_payload);
            assert!(!stamper.matches(stamp, &other_payload));
        }
    }

    #[test]
    fn clock_moves_forward() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a && a > 0);
        assert_eq!(micros_between(5_000, 1_000), 1);
        assert_eq!(micros_between(0, 2_500_000), 2_500);
    }
}
