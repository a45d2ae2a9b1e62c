//! The `--payload json` message: a market-data tick, the kind of text a real feed sends and
//! permessage-deflate was made for, in which every byte still follows from the stamp, so each
//! one received is checked as strictly as the pattern payload.
//!
//! ```text
//! {"type":"tick","src":7,"seq":42,"ts":81234567890123,"symbol":"ACME","bid":101.25,
//!  "ask":101.27,"book":[{"px":101.25,"qty":300,"side":"bid"},...],"trace":"9f2c0e"}
//! ```
//!
//! The stamp's three numbers come first (`src` is the sender's id, `ts` the scheduled send time
//! in `CLOCK_MONOTONIC` ns), so a receiver finds them without parsing JSON. The symbol, prices
//! and quantities follow from a hash of (`src`, `seq`): a tick with another's body fails the
//! check. Book levels are added while they fit in the size asked for, and `trace`, a hex
//! string like a tracing id, takes what is left, so every tick is exactly that size. Keys repeat
//! and digits vary, as in real feeds: such a tick deflates to about half its size.

use std::fmt::Write as _;

use super::stamp::{format_hex, Stamp};

/// The smallest tick: its fields with the longest numbers (three 20-digit `u64`s), an empty
/// book and an empty trace fit in this.
pub const MIN_BYTES: usize = 192;
/// A tick of 400 bytes: about 8 book levels, in the middle of what feeds send (300-600).
pub const DEFAULT_BYTES: usize = 400;

/// What every tick starts with, before the sender's id.
const HEAD: &[u8] = br#"{"type":"tick","src":"#;
/// After the book: the trace's opening.
const TRACE_OPEN: &[u8] = br#"],"trace":""#;
/// The end of the trace and of the tick.
const CLOSE: &[u8] = br#""}"#;
const SYMBOLS: [&str; 8] = [
    "ACME", "GLOBEX", "INITECH", "UMBRELLA", "HOOLI", "STARK", "WAYNE", "WONKA",
];
/// Room for the longest piece written at once: the fields up to the book (149 bytes at most).
const PIECE_BYTES: usize = 160;

/// Writes the tick of `stamp`, exactly `size` bytes (at least [`MIN_BYTES`]), into `out`
/// (cleared first).
pub fn write(stamp: Stamp, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(size);
    emit(stamp, size, &mut |bytes| out.extend_from_slice(bytes));
}

/// Reads the stamp at the start of a tick, if `payload` starts like one.
pub fn read(payload: &[u8]) -> Option<Stamp> {
    let rest = payload.strip_prefix(HEAD)?;
    let (id, rest) = number(rest)?;
    let (seq, rest) = number(rest.strip_prefix(br#","seq":"#)?)?;
    let (sent_ns, rest) = number(rest.strip_prefix(br#","ts":"#)?)?;
    rest.starts_with(b",").then_some(Stamp { id, seq, sent_ns })
}

/// Whether `payload` is exactly the tick of `stamp` at `size` bytes; compared as it is
/// generated, without building it.
pub fn matches(stamp: Stamp, size: usize, payload: &[u8]) -> bool {
    if payload.len() != size {
        return false;
    }
    let mut rest = payload;
    let mut same = true;
    emit(stamp, size, &mut |bytes| {
        same = same && rest.starts_with(bytes);
        if same {
            rest = &rest[bytes.len()..];
        }
    });
    same && rest.is_empty()
}

/// Produces the tick piece by piece, each handed to `put`.
fn emit(stamp: Stamp, size: usize, put: &mut dyn FnMut(&[u8])) {
    let mut random = SplitMix(stamp.id.rotate_left(32) ^ stamp.seq);
    // Prices in cents: a mid of 50.00 to 149.99 and a spread of 1 to 5 cents.
    let mid = 5_000 + random.next() % 10_000;
    let spread = 1 + random.next() % 5;
    let (bid, ask) = (mid - spread, mid + spread);
    let symbol = SYMBOLS[(stamp.id % SYMBOLS.len() as u64) as usize];
    let mut piece = Piece::default();
    write!(
        piece,
        r#"{{"type":"tick","src":{},"seq":{},"ts":{},"symbol":"{symbol}","bid":{},"ask":{},"book":["#,
        stamp.id,
        stamp.seq,
        stamp.sent_ns,
        Cents(bid),
        Cents(ask),
    )
    .expect("a tick's fields up to the book fit in a piece");
    put(piece.bytes());
    let tail = TRACE_OPEN.len() + CLOSE.len();
    let mut used = piece.len;
    for level in 0u64.. {
        // Bids below the best bid, asks above the best ask, a cent apart, alternating.
        let step = (level / 2) % 500;
        let (side, px) = if level % 2 == 0 {
            ("bid", bid - step)
        } else {
            ("ask", ask + step)
        };
        let qty = 100 * (1 + random.next() % 50);
        piece.len = 0;
        if level > 0 {
            piece.push(b",");
        }
        write!(
            piece,
            r#"{{"px":{},"qty":{qty},"side":"{side}"}}"#,
            Cents(px)
        )
        .expect("a book level fits in a piece");
        if used + piece.len + tail > size {
            break;
        }
        put(piece.bytes());
        used += piece.len;
    }
    put(TRACE_OPEN);
    let mut trace = size.saturating_sub(used + tail);
    while trace > 0 {
        let digits = format_hex(random.next());
        let take = trace.min(digits.len());
        put(&digits[..take]);
        trace -= take;
    }
    put(CLOSE);
}

/// A price in cents, written as `101.25`.
struct Cents(u64);

impl std::fmt::Display for Cents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// Up to [`PIECE_BYTES`] of text on the stack: a tick is written without allocating.
struct Piece {
    buf: [u8; PIECE_BYTES],
    len: usize,
}

impl Default for Piece {
    fn default() -> Self {
        Self {
            buf: [0; PIECE_BYTES],
            len: 0,
        }
    }
}

impl Piece {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn push(&mut self, bytes: &[u8]) -> bool {
        let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) else {
            return false;
        };
        room.copy_from_slice(bytes);
        self.len += bytes.len();
        true
    }
}

impl std::fmt::Write for Piece {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes()).then_some(()).ok_or(std::fmt::Error)
    }
}

/// A decimal `u64` at the start of `bytes`, and what follows it.
fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let value = bytes[..digits].iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })?;
    Some((value, &bytes[digits..]))
}

/// SplitMix64 (Steele, Lea and Flood 2014): a tick's numbers from its (id, seq) seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(stamp: Stamp, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        write(stamp, size, &mut out);
        out
    }

    #[test]
    fn ticks_are_json_of_the_exact_size_with_their_stamp() {
        let stamps = [
            Stamp {
                id: 0,
                seq: 0,
                sent_ns: 0,
            },
            Stamp {
                id: 7,
                seq: 42,
                sent_ns: 81_234_567_890_123,
            },
            // The longest numbers: what MIN_BYTES must hold.
            Stamp {
                id: u64::MAX,
                seq: u64::MAX,
                sent_ns: u64::MAX,
            },
        ];
        for stamp in stamps {
            for size in [MIN_BYTES, MIN_BYTES + 1, 300, DEFAULT_BYTES, 599, 4096] {
                let payload = tick(stamp, size);
                assert_eq!(payload.len(), size, "{stamp:?} at {size}");
                let json: serde_json::Value = serde_json::from_slice(&payload)
                    .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&payload)));
                assert_eq!(json["type"], "tick");
                assert_eq!(json["seq"].as_u64(), Some(stamp.seq));
                assert!(json["bid"].as_f64() < json["ask"].as_f64());
                assert!(json["book"].is_array() && json["trace"].is_string());
                assert_eq!(read(&payload), Some(stamp));
                assert!(matches(stamp, size, &payload));
            }
        }
        let payload = tick(stamps[1], DEFAULT_BYTES);
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let levels = json["book"].as_array().unwrap().len();
        assert!((6..=10).contains(&levels), "{levels} levels in 400 bytes");
    }

    #[test]
    fn any_change_fails_the_check() {
        let stamp = Stamp {
            id: 3,
            seq: 9,
            sent_ns: 1_000_000,
        };
        let payload = tick(stamp, DEFAULT_BYTES);
        for i in 0..payload.len() {
            let mut bad = payload.clone();
            bad[i] ^= 0x01;
            assert!(!matches(stamp, DEFAULT_BYTES, &bad), "byte {i}");
        }
        assert!(!matches(
            stamp,
            DEFAULT_BYTES,
            &payload[..DEFAULT_BYTES - 1]
        ));
        let mut longer = payload.clone();
        longer.push(b' ');
        assert!(!matches(stamp, DEFAULT_BYTES, &longer));
        // Another message's body, same size: its stamp reads, its bytes do not match.
        let other = tick(Stamp { seq: 10, ..stamp }, DEFAULT_BYTES);
        assert_eq!(read(&other).map(|s| s.seq), Some(10));
        assert!(!matches(stamp, DEFAULT_BYTES, &other));
        assert_eq!(read(b"{\"type\":\"tick\",\"src\":x"), None);
        assert_eq!(
            read(b"{\"type\":\"tick\",\"src\":99999999999999999999"),
            None
        );
    }
}
