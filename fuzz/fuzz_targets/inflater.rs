//! uringcast's permessage-deflate inflater (`protocol/deflate/codec.rs`), called directly and
//! through a `WebSocket` that agreed to the extension, with compressed messages split into
//! fragments and the byte stream cut anywhere.
//!
//! Inputs are either arbitrary bytes taken as a compressed payload, or a stream the target
//! compresses itself from a known message (a unit repeated up to 256 KiB, so bombs are
//! common), with uringcast's own compressor or with flate2 at any level, window, block
//! structure and ending (sync flush with the tail removed, a final block, padding after it),
//! optionally with one byte changed afterwards. The message limit is arbitrary, mostly small.
//!
//! Oracles:
//! - the result equals a reference: flate2 called once, naively, on the payload with the
//!   RFC 7692 tail appended and an output buffer of `limit + 1` bytes. Longer than `limit` is
//!   `MessageTooBig { len: limit + 1, limit }`; a broken stream is `InvalidCompressedData` or
//!   `CompressedContextTakeover`; otherwise the output is the reference's, byte for byte;
//! - for a stream the target compressed and did not change, the output is the message itself
//!   (or `MessageTooBig` when the message is longer than the limit);
//! - what is charged to the budget never passes `limit + 1`, and a budget short of that gives
//!   the same result or `OverBudget`, never more output;
//! - the same inflater, reused after any result, gives the same result again;
//! - through a `WebSocket` (limit = the message limit, any fragmentation, pings between
//!   fragments, any cuts of the byte stream), the message or the close code and reply are the
//!   ones the direct call implies: 1009 for a message over the limit, compressed or inflated.
//!   Nothing panics.
#![no_main]

use arbitrary::Arbitrary;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use libfuzzer_sys::fuzz_target;
use uringcast::protocol::deflate::{Agreed, Deflater, Inflater, RSV1};
use uringcast::protocol::{FrameHeader, Limits, OpCode, ProtocolError, Read, WebSocket};

const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
const MAX_MESSAGE: usize = 256 << 10;
const KEY: [u8; 4] = [0x5a, 0x01, 0xc3, 0x7e];

#[derive(Arbitrary, Debug)]
enum Source {
    /// Arbitrary bytes as the compressed payload.
    Raw(Vec<u8>),
    /// `unit` repeated `times` times (capped at 256 KiB), compressed by the target.
    Compressed {
        unit: Vec<u8>,
        times: u32,
        how: How,
        /// One byte changed after compression: (position, xor).
        corrupt: Option<(u16, u8)>,
    },
}

#[derive(Arbitrary, Debug)]
enum How {
    /// `Deflater::compress`, the server's own compressor (tail removed).
    Own { window_bits: u8 },
    /// flate2 directly: the message cut into blocks at `blocks`, each flushed with a sync or
    /// full flush, then ended as `end` says.
    Flate2 {
        level: u8,
        window_bits: u8,
        blocks: Vec<(u32, bool)>,
        end: End,
    },
}

#[derive(Arbitrary, Debug)]
enum End {
    /// Sync flush, its empty stored block removed (§7.2.1).
    Sync,
    /// A final block (BFINAL, §7.2.3.4), nothing removed.
    Final,
    /// A final block followed by bytes the inflater must ignore.
    FinalThen(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum LimitChoice {
    Small(u8),
    Medium(u16),
    Large(u32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    source: Source,
    limit: LimitChoice,
    /// A budget short of `limit + 1`, as a fraction of it in 1/256ths.
    short_budget: u8,
    /// Fragment boundaries in the compressed payload.
    fragments: Vec<u16>,
    /// Pings between fragments (by fragment index).
    pings: Vec<u8>,
    /// Cuts of the frame stream.
    cuts: Vec<u16>,
    text: bool,
}

/// The reference's verdict.
#[derive(Debug, PartialEq)]
enum Verdict {
    Message(Vec<u8>),
    TooBig,
    Broken,
    /// More than `limit` bytes came out before zlib saw the stream was broken. Whether an
    /// inflater that grows its output in steps reports one or the other depends on how much
    /// input zlib could look at: both are right.
    TooBigOrBroken,
}

/// flate2 once, naively: payload and tail in one buffer, an output buffer of `limit + 1`.
fn reference(compressed: &[u8], limit: usize) -> Verdict {
    let mut input = compressed.to_vec();
    input.extend_from_slice(&TAIL);
    let mut inflater = Decompress::new_with_window_bits(false, 15);
    let mut out = Vec::with_capacity(limit + 1);
    match inflater.decompress_vec(&input, &mut out, FlushDecompress::Sync) {
        // Broken after the limit was already passed: over the limit either way.
        Err(_) if out.len() > limit => Verdict::TooBigOrBroken,
        Err(_) => Verdict::Broken,
        Ok(_) if out.len() > limit => Verdict::TooBig,
        Ok(_) => Verdict::Message(out),
    }
}

fn verdict_of(result: &Result<Vec<u8>, ProtocolError>, limit: usize) -> Verdict {
    match result {
        Ok(out) => Verdict::Message(out.clone()),
        Err(ProtocolError::MessageTooBig { len, limit: l }) => {
            assert_eq!(
                (*len, *l),
                (limit as u64 + 1, limit as u64),
                "MessageTooBig must stop at the limit's first extra byte"
            );
            Verdict::TooBig
        }
        Err(ProtocolError::InvalidCompressedData | ProtocolError::CompressedContextTakeover) => {
            Verdict::Broken
        }
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

/// Compresses `message` as `how` says.
fn compress(message: &[u8], how: &How) -> Vec<u8> {
    match how {
        How::Own { window_bits } => {
            let bits = 9 + window_bits % 7;
            Deflater::new(0).compress(message, bits)
        }
        How::Flate2 {
            level,
            window_bits,
            blocks,
            end,
        } => {
            let bits = 9 + window_bits % 7;
            let mut compressor = Compress::new_with_window_bits(
                Compression::new(u32::from(level % 10)),
                false,
                bits,
            );
            let mut cuts: Vec<(usize, bool)> = blocks
                .iter()
                .take(16)
                .map(|(at, full)| (*at as usize % (message.len() + 1), *full))
                .collect();
            cuts.sort_unstable();
            let mut out = Vec::new();
            let mut start = 0;
            for (cut, full) in &cuts {
                let flush = if *full {
                    FlushCompress::Full
                } else {
                    FlushCompress::Sync
                };
                run(&mut compressor, &message[start..*cut], &mut out, flush);
                start = *cut;
            }
            match end {
                End::Sync => {
                    run(
                        &mut compressor,
                        &message[start..],
                        &mut out,
                        FlushCompress::Sync,
                    );
                    assert!(out.ends_with(&TAIL));
                    out.truncate(out.len() - TAIL.len());
                }
                End::Final | End::FinalThen(_) => {
                    run(
                        &mut compressor,
                        &message[start..],
                        &mut out,
                        FlushCompress::Finish,
                    );
                    if let End::FinalThen(padding) = end {
                        out.extend_from_slice(padding);
                    }
                }
            }
            out
        }
    }
}

/// Feeds `input` to `compressor` with `flush` until it is all consumed and flushed.
fn run(compressor: &mut Compress, input: &[u8], out: &mut Vec<u8>, flush: FlushCompress) {
    let start = compressor.total_in();
    loop {
        out.reserve(input.len() + 1024);
        let done = (compressor.total_in() - start) as usize;
        let status = compressor
            .compress_vec(&input[done..], out, flush)
            .expect("compression cannot fail");
        let consumed = (compressor.total_in() - start) as usize == input.len();
        if status == Status::StreamEnd || (consumed && out.len() < out.capacity()) {
            return;
        }
    }
}

/// What a `WebSocket` made of the stream: the message, or the failure's close code.
#[derive(Debug, PartialEq)]
enum Seen {
    Message(OpCode, Vec<u8>),
    Failed(u16, ProtocolError),
}

fn through_websocket(
    compressed: &[u8],
    limit: usize,
    opcode: OpCode,
    input: &Input,
) -> Option<Seen> {
    // Fragment the compressed payload; the first frame carries RSV1 (RFC 7692 §6.1).
    let mut bounds: Vec<usize> = input
        .fragments
        .iter()
        .take(32)
        .map(|at| *at as usize % (compressed.len() + 1))
        .collect();
    bounds.sort_unstable();
    bounds.push(compressed.len());
    let mut stream = Vec::new();
    let mut start = 0;
    for (i, end) in bounds.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == bounds.len();
        frame(
            &mut stream,
            if first { opcode } else { OpCode::Continuation },
            last,
            if first { RSV1 } else { 0 },
            &compressed[start..*end],
        );
        start = *end;
        if !last && input.pings.contains(&(i as u8)) {
            frame(&mut stream, OpCode::Ping, true, 0, b"p");
        }
    }
    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .take(64)
        .map(|at| *at as usize % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.push(stream.len());

    let agreed = Agreed {
        server_window_bits: 15,
        client_window_bits: 15,
    };
    let mut ws = WebSocket::server(Limits {
        max_message_bytes: limit as u64,
    })
    .with_deflate(agreed);
    let mut inflater = Inflater::new();
    let mut seen = None;
    let mut start = 0;
    for cut in cuts {
        let mut chunk = stream[start..cut].to_vec();
        start = cut;
        let mut pos = 0;
        loop {
            let left = chunk.len() - pos;
            let (used, read) =
                ws.read_within(&mut chunk[pos..], &mut u64::MAX.clone(), &mut inflater);
            assert!(used <= left);
            pos += used;
            match read {
                Read::NeedMore => {
                    assert_eq!(used, left);
                    break;
                }
                Read::Ping { payload, .. } => assert_eq!(&payload[..], b"p"),
                Read::Message { opcode, payload } => {
                    assert!(seen.is_none(), "a second message");
                    seen = Some(Seen::Message(opcode, payload.into_owned()));
                }
                Read::Failed { error, reply } => {
                    let code = error.close_code().0;
                    let mut close = vec![0x88, 0x02];
                    close.extend_from_slice(&code.to_be_bytes());
                    assert_eq!(
                        reply.as_deref(),
                        Some(&close[..]),
                        "close frame for {error:?}"
                    );
                    assert!(seen.is_none());
                    return Some(Seen::Failed(code, error));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    seen
}

fn frame(stream: &mut Vec<u8>, opcode: OpCode, fin: bool, rsv: u8, payload: &[u8]) {
    let header = FrameHeader {
        fin,
        rsv,
        opcode,
        mask: Some(KEY),
        payload_len: payload.len() as u64,
    };
    let mut head = [0u8; 14];
    let len = header.encode(&mut head);
    stream.extend_from_slice(&head[..len]);
    stream.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
}

fuzz_target!(|input: Input| {
    let limit = match input.limit {
        LimitChoice::Small(n) => usize::from(n),
        LimitChoice::Medium(n) => usize::from(n),
        LimitChoice::Large(n) => n as usize % (MAX_MESSAGE * 2),
    };
    // The compressed payload and, when the target made it untouched, the message it holds.
    let (compressed, known) = match &input.source {
        Source::Raw(bytes) => (bytes.clone(), None),
        Source::Compressed {
            unit,
            times,
            how,
            corrupt,
        } => {
            let message: Vec<u8> = if unit.is_empty() {
                Vec::new()
            } else {
                let times = (*times as usize).min(MAX_MESSAGE / unit.len());
                unit.repeat(times)
            };
            let mut compressed = compress(&message, how);
            match corrupt {
                Some((at, xor)) if !compressed.is_empty() && *xor != 0 => {
                    let at = *at as usize % compressed.len();
                    compressed[at] ^= xor;
                    (compressed, None)
                }
                _ => (compressed, Some(message)),
            }
        }
    };

    // Directly, with an unlimited budget.
    let mut inflater = Inflater::new();
    let mut budget = u64::MAX;
    let result = inflater.inflate(&compressed, limit, &mut budget);
    let charged = u64::MAX - budget;
    assert!(
        charged <= limit as u64 + 1,
        "charged {charged} for a limit of {limit}"
    );
    let verdict = verdict_of(&result, limit);
    if let Verdict::Message(out) = &verdict {
        assert!(out.len() <= limit);
    }
    match reference(&compressed, limit) {
        Verdict::TooBigOrBroken => assert!(
            matches!(verdict, Verdict::TooBig | Verdict::Broken),
            "against the reference: {verdict:?}"
        ),
        expected => assert_eq!(verdict, expected, "against the reference"),
    }
    if let Some(message) = &known {
        let expected = if message.len() > limit {
            Verdict::TooBig
        } else {
            Verdict::Message(message.clone())
        };
        assert_eq!(verdict, expected, "against the compressed message");
    }

    // The same inflater again: nothing of the last call survives it.
    let again = inflater.inflate(&compressed, limit, &mut u64::MAX.clone());
    assert_eq!(again, result, "a reused inflater");

    // A short budget: the same result, or OverBudget, and never more charged than it had.
    let short = (limit as u64 + 1) * u64::from(input.short_budget) / 256;
    let mut budget = short;
    match inflater.inflate(&compressed, limit, &mut budget) {
        Err(ProtocolError::OverBudget { needed, available }) => {
            assert!(needed > available);
            assert_eq!(available, budget);
        }
        other => assert_eq!(other, result, "with a budget of {short}"),
    }

    // Through a WebSocket.
    let opcode = if input.text {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    let seen = through_websocket(&compressed, limit, opcode, &input);
    let expected = if compressed.len() > limit {
        // The frame layer counts the compressed bytes against the same limit.
        Some(1009)
    } else {
        match &result {
            Ok(out) if opcode == OpCode::Text && std::str::from_utf8(out).is_err() => Some(1007),
            Ok(out) => {
                assert_eq!(seen, Some(Seen::Message(opcode, out.clone())));
                None
            }
            Err(error) => Some(error.close_code().0),
        }
    };
    if let Some(code) = expected {
        match &seen {
            Some(Seen::Failed(seen_code, _)) => assert_eq!(*seen_code, code, "{seen:?}"),
            other => panic!("expected close {code}, got {other:?}"),
        }
        if code == 1009 {
            assert!(matches!(
                seen,
                Some(Seen::Failed(_, ProtocolError::MessageTooBig { .. }))
            ));
        }
    }
});
