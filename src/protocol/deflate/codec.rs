//! The compressor and the inflater (RFC 7692 §7.2), one of each per worker (or per
//! load-generator thread), never per connection.
//!
//! Both sides agree on no context takeover (see [`negotiate`](super::negotiate)), so every
//! message is a DEFLATE stream of its own: after each message the compressor and the inflater
//! are reset, nothing of one message is needed for the next, and one zlib state can serve
//! every connection of a thread in turn. An idle connection holds no zlib state at all; the
//! worker holds at most one compressor per window size in use and one inflater per window.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::negotiate::{MAX_WINDOW_BITS, MIN_SERVER_WINDOW_BITS};
use crate::protocol::frame::{FrameHeader, OpCode, MAX_HEADER_BYTES};
use crate::protocol::{mask, ProtocolError};

/// The end of a sync flush: the sender removes it, the receiver appends it (§7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// RSV1 among [`FrameHeader::rsv`]'s three bits: "Per-Message Compressed" (§6).
pub const RSV1: u8 = 0b100;

/// Default for `--deflate-min-bytes`: below this a message goes uncompressed. A DEFLATE
/// stream of a short text is mostly literals with fixed Huffman codes, about as long as the
/// text (RFC 7692's own "Hello" grows from 5 bytes to 7), while the frame header is the same
/// either way. Measured on JSON messages (`docs/PERFORMANCE.md`, "permessage-deflate"):
/// compression first pays at about 60 bytes, saves 15% at 100, 30% at 150 and more than half
/// from 300. Below 128 a message saves at most some 20 bytes, not worth a compression per
/// message where each costs one (echo, `Connection::send`).
pub const DEFAULT_MIN_BYTES: usize = 128;

/// The compression level: zlib's default, the usual trade of speed for size. A broadcast is
/// compressed once per worker, so its cost is shared by every subscriber.
const LEVEL: u32 = 6;

/// Index of a window size among the 9..=15 zlib can use.
fn slot(window_bits: u8) -> usize {
    usize::from(window_bits.clamp(MIN_SERVER_WINDOW_BITS, MAX_WINDOW_BITS) - MIN_SERVER_WINDOW_BITS)
}

const WINDOWS: usize = (MAX_WINDOW_BITS - MIN_SERVER_WINDOW_BITS + 1) as usize;

/// A thread's compressor: one zlib stream per window size in use, made on first use and reset
/// after every message.
pub struct Deflater {
    compressors: [Option<Compress>; WINDOWS],
    min_bytes: usize,
    compressions: u64,
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater")
            .field("min_bytes", &self.min_bytes)
            .field("compressions", &self.compressions)
            .finish()
    }
}

impl Deflater {
    /// A compressor that leaves messages under `min_bytes` uncompressed.
    pub fn new(min_bytes: usize) -> Self {
        Self {
            compressors: Default::default(),
            min_bytes,
            compressions: 0,
        }
    }

    /// Messages compressed (or tried) so far: what proves a broadcast is compressed once.
    pub fn compressions(&self) -> u64 {
        self.compressions
    }

    /// The smallest message compressed.
    pub fn min_bytes(&self) -> usize {
        self.min_bytes
    }

    /// Compresses one message into a whole frame (FIN and RSV1 set, masked with `mask` on a
    /// client), for a peer whose window is `window_bits`. `None` when the message should go
    /// uncompressed: under the minimum, not smaller compressed, or a window of 8 bits.
    pub fn frame(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        window_bits: u8,
        mask: Option<[u8; 4]>,
    ) -> Option<Bytes> {
        if payload.len() < self.min_bytes || window_bits < MIN_SERVER_WINDOW_BITS {
            return None;
        }
        // Room for the longest header in front, then at most as many bytes as the payload
        // (plus the tail to be removed): output that does not fit is output not worth sending.
        let room = MAX_HEADER_BYTES;
        let mut out = Vec::with_capacity(room + payload.len() + TAIL.len());
        out.resize(room, 0);
        if !self.compress_into(payload, window_bits, &mut out) {
            return None;
        }
        let len = out.len() - room;
        let header = FrameHeader {
            fin: true,
            rsv: RSV1,
            opcode,
            mask,
            payload_len: len as u64,
        };
        let mut head = [0u8; MAX_HEADER_BYTES];
        let head_len = header.encode(&mut head);
        let start = room - head_len;
        out[start..room].copy_from_slice(&head[..head_len]);
        if let Some(key) = mask {
            mask::unmask(&mut out[room..], key, 0);
        }
        // A frame may wait in slow receivers' queues: do not let it pin the payload's size
        // when it is much smaller.
        if out.capacity() > 2 * out.len() {
            return Some(Bytes::copy_from_slice(&out[start..]));
        }
        Some(Bytes::from(out).slice(start..))
    }

    /// The compressed form of `payload` with the tail removed (§7.2.1), however long.
    pub fn compress(&mut self, payload: &[u8], window_bits: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 64);
        while !self.compress_into(payload, window_bits, &mut out) {
            out.clear();
            out.reserve(out.capacity() * 2);
        }
        out
    }

    /// Compresses `payload` into `out`'s spare capacity and removes the tail; `false` (and
    /// `out` unchanged in length) if it did not fit. The stream is reset either way.
    fn compress_into(&mut self, payload: &[u8], window_bits: u8, out: &mut Vec<u8>) -> bool {
        self.compressions += 1;
        let start = out.len();
        let compressor = self.compressors[slot(window_bits)].get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(LEVEL), false, window_bits.max(9))
        });
        let status = compressor.compress_vec(payload, out, FlushCompress::Sync);
        let consumed = compressor.total_in();
        compressor.reset();
        // Spare capacity left means the flush completed; none left, it may not have.
        let done = matches!(status, Ok(Status::Ok))
            && consumed == payload.len() as u64
            && out.len() < out.capacity()
            && out.ends_with(&TAIL);
        if done {
            out.truncate(out.len() - TAIL.len());
        } else {
            out.truncate(start);
        }
        done
    }
}

/// A thread's inflater: one zlib stream, made on first use and reset after every message.
///
/// It always inflates with the largest window, 15 bits: any stream with a smaller one inflates
/// the same, and what a peer can make it hold is bounded by that window whatever the peer
/// promised. (zlib could not enforce a smaller promise anyway: a reference inside the
/// message's own output is resolved from the output, not the window.) What it does catch is a
/// reference to before the message, which only a peer that kept its context across messages
/// against the agreement would make.
#[derive(Default)]
pub struct Inflater {
    decompressor: Option<Decompress>,
    inflations: u64,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("inflations", &self.inflations)
            .finish()
    }
}

impl Inflater {
    /// An inflater with no zlib state yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages inflated (or tried) so far.
    pub fn inflations(&self) -> u64 {
        self.inflations
    }

    /// Inflates one message's payload (§7.2.2). The output never grows past `limit` bytes: a
    /// longer message fails with [`ProtocolError::MessageTooBig`] as soon as its
    /// `limit + 1`st byte appears, so a decompression bomb costs at most `limit` bytes. Each
    /// growth of the output is taken from `budget` before it is made
    /// ([`ProtocolError::OverBudget`] when it does not fit).
    ///
    /// # Errors
    ///
    /// [`ProtocolError::InvalidCompressedData`] for a broken stream,
    /// [`ProtocolError::CompressedContextTakeover`] for a reference to before the message,
    /// and the two above.
    pub fn inflate(
        &mut self,
        compressed: &[u8],
        limit: usize,
        budget: &mut u64,
    ) -> Result<Vec<u8>, ProtocolError> {
        self.inflations += 1;
        let decompressor = self
            .decompressor
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, MAX_WINDOW_BITS));
        let result = inflate_with(decompressor, compressed, limit, budget);
        decompressor.reset(false);
        result
    }
}

fn inflate_with(
    decompressor: &mut Decompress,
    compressed: &[u8],
    limit: usize,
    budget: &mut u64,
) -> Result<Vec<u8>, ProtocolError> {
    let cap = limit.saturating_add(1);
    let mut out = Vec::new();
    let grow = |out: &mut Vec<u8>, budget: &mut u64| {
        let wanted = if out.capacity() == 0 {
            compressed.len().saturating_mul(4).max(256)
        } else {
            out.capacity().saturating_mul(2)
        }
        .min(cap);
        let needed = (wanted - out.capacity()) as u64;
        if needed > *budget {
            return Err(ProtocolError::OverBudget {
                needed,
                available: *budget,
            });
        }
        *budget -= needed;
        out.reserve_exact(wanted - out.len());
        Ok(())
    };
    for part in [compressed, &TAIL[..]] {
        let mut input = part;
        loop {
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(ProtocolError::MessageTooBig {
                        len: out.len() as u64,
                        limit: limit as u64,
                    });
                }
                grow(&mut out, budget)?;
            }
            let before = decompressor.total_in();
            let status = decompressor
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|error| match error.message() {
                    Some(message) if message.contains("distance too far") => {
                        ProtocolError::CompressedContextTakeover
                    }
                    _ => ProtocolError::InvalidCompressedData,
                })?;
            input = &input[(decompressor.total_in() - before) as usize..];
            if out.len() > limit {
                return Err(ProtocolError::MessageTooBig {
                    len: out.len() as u64,
                    limit: limit as u64,
                });
            }
            match status {
                // A final block (§7.2.3.4) ends the message; what follows it is padding.
                Status::StreamEnd => return Ok(out),
                // Room left after the call: the input, not the output, ran out.
                _ if input.is_empty() && out.len() < out.capacity() => break,
                Status::BufError if out.len() < out.capacity() => break,
                _ => {}
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &[u8] = b"Hello";
    /// RFC 7692 §7.2.3.1: "Hello" compressed, tail removed.
    const HELLO_DEFLATED: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

    fn inflate(bytes: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        Inflater::new().inflate(bytes, 1 << 20, &mut u64::MAX.clone())
    }

    /// RFC 7692 §7.2.3's worked examples, byte for byte (§7.2.3.2 shares a window between
    /// messages, which uringcast never agrees to).
    #[test]
    fn the_rfc_examples() {
        assert_eq!(Deflater::new(0).compress(HELLO, 15), HELLO_DEFLATED);
        assert_eq!(inflate(&HELLO_DEFLATED).unwrap(), HELLO);
        // §7.2.3.3: a block with no compression.
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inflate(&stored).unwrap(), HELLO);
        // §7.2.3.4: BFINAL set.
        let last = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(inflate(&last).unwrap(), HELLO);
        // §7.2.3.5: two blocks in one message.
        let two = [
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ];
        assert_eq!(inflate(&two).unwrap(), HELLO);
    }

    #[test]
    fn frames_are_compressed_only_when_worth_it() {
        let mut deflater = Deflater::new(0);
        // "Hello" grows when compressed: sent plain.
        assert_eq!(deflater.frame(OpCode::Text, HELLO, 15, None), None);
        let json = br#"{"symbol":"ACME","bid":101.25,"ask":101.27,"symbol2":"ACME","bid2":101.25}"#
            .repeat(4);
        let frame = deflater.frame(OpCode::Text, &json, 15, None).unwrap();
        assert_eq!(frame[0], 0xc1, "FIN, RSV1, text");
        let (header, used) = FrameHeader::parse(&frame).unwrap().unwrap();
        assert_eq!(header.payload_len as usize, frame.len() - used);
        assert!(frame.len() < json.len() / 2);
        assert_eq!(inflate(&frame[used..]).unwrap(), json);
        // Under the minimum, or a window of 8 bits: plain.
        assert_eq!(
            Deflater::new(1000).frame(OpCode::Text, &json, 15, None),
            None
        );
        assert_eq!(deflater.frame(OpCode::Text, &json, 8, None), None);
        // A client frame is masked after compression.
        let masked = deflater
            .frame(OpCode::Binary, &json, 9, Some([1, 2, 3, 4]))
            .unwrap();
        let (header, used) = FrameHeader::parse(&masked).unwrap().unwrap();
        assert_eq!((header.rsv, header.mask), (RSV1, Some([1, 2, 3, 4])));
        let mut payload = masked[used..].to_vec();
        mask::unmask(&mut payload, [1, 2, 3, 4], 0);
        assert_eq!(
            Inflater::new()
                .inflate(&payload, 1 << 20, &mut u64::MAX.clone())
                .unwrap(),
            json
        );
    }

    /// A bomb: 16 MiB of zeros compress to a few KiB; inflating stops at the limit, having
    /// grown its output to at most `limit + 1`.
    #[test]
    fn inflating_stops_at_the_limit() {
        let zeros = vec![0u8; 16 << 20];
        let bomb = Deflater::new(0).compress(&zeros, 15);
        assert!(bomb.len() < 32 << 10, "{} bytes", bomb.len());
        let mut budget = u64::MAX;
        let error = Inflater::new()
            .inflate(&bomb, 1 << 20, &mut budget)
            .unwrap_err();
        assert!(matches!(error, ProtocolError::MessageTooBig { limit, .. } if limit == 1 << 20));
        assert!(
            u64::MAX - budget <= (1 << 20) + 1,
            "charged {}",
            u64::MAX - budget
        );
        // Exactly at the limit is fine.
        let at = Inflater::new()
            .inflate(
                &Deflater::new(0).compress(&zeros[..1 << 20], 15),
                1 << 20,
                &mut u64::MAX.clone(),
            )
            .unwrap();
        assert_eq!(at.len(), 1 << 20);
        // The budget is charged before the output grows.
        let mut small = 1000;
        let error = Inflater::new()
            .inflate(&bomb, 1 << 20, &mut small)
            .unwrap_err();
        assert!(
            matches!(error, ProtocolError::OverBudget { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn broken_streams_and_windows_are_refused() {
        // BTYPE 11 is reserved.
        assert_eq!(
            inflate(&[0xff, 0xff]),
            Err(ProtocolError::InvalidCompressedData)
        );
        // A second message compressed with the first one's context, which the agreement
        // rules out: it refers to bytes the inflater never saw.
        let mut shared = Compress::new_with_window_bits(Compression::new(LEVEL), false, 15);
        let tick = br#"{"symbol":"ACME","bid":101.25,"ask":101.27}"#;
        let mut first = Vec::with_capacity(256);
        shared
            .compress_vec(tick, &mut first, FlushCompress::Sync)
            .unwrap();
        let mut second = Vec::with_capacity(256);
        shared
            .compress_vec(tick, &mut second, FlushCompress::Sync)
            .unwrap();
        let mut inflater = Inflater::new();
        let mut budget = u64::MAX;
        assert_eq!(
            inflater
                .inflate(&first[..first.len() - 4], 100, &mut budget)
                .unwrap(),
            tick
        );
        assert_eq!(
            inflater.inflate(&second[..second.len() - 4], 100, &mut budget),
            Err(ProtocolError::CompressedContextTakeover)
        );
        // The inflater is reset after a failure and serves the next message.
        let mut inflater = Inflater::new();
        assert!(inflater
            .inflate(&[0xff, 0xff], 100, &mut u64::MAX.clone())
            .is_err());
        assert_eq!(
            inflater
                .inflate(&HELLO_DEFLATED, 100, &mut u64::MAX.clone())
                .unwrap(),
            HELLO
        );
    }

    use proptest::prelude::*;

    proptest! {
        /// Every window, any payload: what one thread's compressor writes, its inflater reads
        /// back, message after message on the same streams.
        #[test]
        fn round_trips(
            messages in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), any::<u8>()], 0..3000),
                1..4,
            ),
            bits in 9u8..=15,
        ) {
            let mut deflater = Deflater::new(0);
            let mut inflater = Inflater::new();
            for message in &messages {
                let compressed = deflater.compress(message, bits);
                let back = inflater.inflate(&compressed, 1 << 20, &mut u64::MAX.clone());
                prop_assert_eq!(back.as_deref(), Ok(message.as_slice()));
            }
        }
    }
}
