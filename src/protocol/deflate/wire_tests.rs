//! Compressed messages through a [`WebSocket`]: the RFC's frames, every split, and every way a
//! peer can break permessage-deflate's rules.

use proptest::prelude::*;

use super::{Agreed, Deflater, Inflater, RSV1};
use crate::protocol::connection::ClientSide;
use crate::protocol::frame::{encode_frame, FrameHeader, MAX_HEADER_BYTES};
use crate::protocol::{mask, CloseCode, Limits, OpCode, Read, WebSocket};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const TERMS: Agreed = Agreed {
    server_window_bits: 15,
    client_window_bits: 15,
};

fn server() -> WebSocket {
    WebSocket::server(Limits::default()).with_deflate(TERMS)
}

/// A frame with any RSV bits, masked as a client sends it.
fn client_frame(opcode: OpCode, fin: bool, rsv: u8, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        fin,
        rsv,
        opcode,
        mask: Some(KEY),
        payload_len: payload.len() as u64,
    };
    let mut head = [0u8; MAX_HEADER_BYTES];
    let len = header.encode(&mut head);
    let mut out = head[..len].to_vec();
    let start = out.len();
    out.extend_from_slice(payload);
    mask::unmask(&mut out[start..], KEY, 0);
    out
}

/// What `ws` makes of `chunks`, fed in order: messages, or the close code it failed with.
fn feed(ws: &mut WebSocket, chunks: &mut [Vec<u8>]) -> Vec<Result<Vec<u8>, u16>> {
    let mut inflater = Inflater::new();
    let mut out = Vec::new();
    for chunk in chunks.iter_mut() {
        let mut pos = 0;
        loop {
            let (used, read) =
                ws.read_within(&mut chunk[pos..], &mut u64::MAX.clone(), &mut inflater);
            pos += used;
            match read {
                Read::NeedMore => break,
                Read::Message { payload, .. } => out.push(Ok(payload.into_owned())),
                Read::Failed { error, .. } => {
                    out.push(Err(error.close_code().0));
                    return out;
                }
                _ => {}
            }
        }
    }
    out
}

/// RFC 7692 §7.2.3.1's frames, as a client receives them: whole and fragmented.
#[test]
fn the_rfc_frames() {
    let mut client = WebSocket::new(ClientSide(|| KEY), Limits::default()).with_deflate(TERMS);
    let mut inflater = Inflater::new();
    let mut whole = vec![0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    match client
        .read_within(&mut whole, &mut u64::MAX.clone(), &mut inflater)
        .1
    {
        Read::Message { opcode, payload } => {
            assert_eq!((opcode, &payload[..]), (OpCode::Text, &b"Hello"[..]))
        }
        other => panic!("{other:?}"),
    }
    let mut fragments = vec![
        0x41, 0x03, 0xf2, 0x48, 0xcd, 0x80, 0x04, 0xc9, 0xc9, 0x07, 0x00,
    ];
    match client
        .read_within(&mut fragments, &mut u64::MAX.clone(), &mut inflater)
        .1
    {
        Read::Message { payload, .. } => assert_eq!(&payload[..], b"Hello"),
        other => panic!("{other:?}"),
    }
}

/// RFC 7692 §7.2.3.2: a second "Hello" compressed with the first one's window. uringcast
/// agrees to no context takeover, so the second message refers to bytes the inflater never
/// saw: the peer broke the negotiated parameters, and gets 1002.
#[test]
fn the_rfc_shared_window_example_breaks_the_agreement() {
    let mut client = WebSocket::new(ClientSide(|| KEY), Limits::default()).with_deflate(TERMS);
    let mut inflater = Inflater::new();
    let mut first = vec![0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    assert!(matches!(
        client
            .read_within(&mut first, &mut u64::MAX.clone(), &mut inflater)
            .1,
        Read::Message { .. }
    ));
    let mut second = vec![0xc1, 0x05, 0xf2, 0x00, 0x11, 0x00, 0x00];
    match client
        .read_within(&mut second, &mut u64::MAX.clone(), &mut inflater)
        .1
    {
        Read::Failed { error, .. } => assert_eq!(error.close_code(), CloseCode::PROTOCOL_ERROR),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rsv1_is_allowed_only_where_the_rfc_allows_it() {
    let compressed = Deflater::new(0).compress(b"Hello", 15);
    // Without the extension: RSV1 is a reserved bit (RFC 6455 §5.2).
    let mut plain = WebSocket::server(Limits::default());
    let frames = &mut [client_frame(OpCode::Text, true, RSV1, &compressed)];
    assert_eq!(feed(&mut plain, frames), [Err(1002)]);
    // On a continuation (RFC 7692 §6.1).
    let frames = &mut [
        client_frame(OpCode::Text, false, RSV1, &compressed[..2]),
        client_frame(OpCode::Continuation, true, RSV1, &compressed[2..]),
    ];
    assert_eq!(feed(&mut server(), frames), [Err(1002)]);
    // On a control frame.
    let frames = &mut [client_frame(OpCode::Ping, true, RSV1, b"")];
    assert_eq!(feed(&mut server(), frames), [Err(1002)]);
    // RSV2 and RSV3 stay reserved.
    let frames = &mut [client_frame(OpCode::Text, true, RSV1 | 0b010, &compressed)];
    assert_eq!(feed(&mut server(), frames), [Err(1002)]);
    // A ping between two fragments of a compressed message is fine; so is a plain message.
    let frames = &mut [
        client_frame(OpCode::Text, false, RSV1, &compressed[..2]),
        client_frame(OpCode::Ping, true, 0, b"p"),
        client_frame(OpCode::Continuation, true, 0, &compressed[2..]),
        client_frame(OpCode::Text, true, 0, b"plain"),
    ];
    assert_eq!(
        feed(&mut server(), frames),
        [Ok(b"Hello".to_vec()), Ok(b"plain".to_vec())]
    );
}

#[test]
fn bad_compressed_messages_get_the_rfc_codes() {
    // 1009: 1 MiB of zeros against a 64 KiB limit, though the compressed frame is tiny.
    let bomb = Deflater::new(0).compress(&vec![0; 1 << 20], 15);
    let mut small = WebSocket::server(Limits {
        max_message_bytes: 64 << 10,
    })
    .with_deflate(TERMS);
    let frames = &mut [client_frame(OpCode::Binary, true, RSV1, &bomb)];
    assert_eq!(feed(&mut small, frames), [Err(1009)]);
    // 1007: text that is not UTF-8 once inflated, and a broken DEFLATE stream.
    let latin1 = Deflater::new(0).compress(b"caf\xe9", 15);
    let frames = &mut [client_frame(OpCode::Text, true, RSV1, &latin1)];
    assert_eq!(feed(&mut server(), frames), [Err(1007)]);
    let frames = &mut [client_frame(OpCode::Binary, true, RSV1, &[0xff, 0xff])];
    assert_eq!(feed(&mut server(), frames), [Err(1007)]);
}

/// The budget is charged for the compressed bytes buffered across fragments, and for the
/// inflated output while it grows; a message that does not fit is closed with 1013.
#[test]
fn a_compressed_message_counts_against_the_budget() {
    let text = br#"{"symbol":"ACME","bid":101.25,"ask":101.27}"#.repeat(100);
    let compressed = Deflater::new(0).compress(&text, 15);
    let mut ws = server();
    let mut inflater = Inflater::new();
    let mut budget = 100; // holds the compressed bytes, not the 4,400 inflated ones
    let mut frame = client_frame(OpCode::Text, true, RSV1, &compressed);
    match ws.read_within(&mut frame, &mut budget, &mut inflater).1 {
        Read::Failed { error, .. } => assert_eq!(error.close_code(), CloseCode::TRY_AGAIN_LATER),
        other => panic!("{other:?}"),
    }
    let mut ws = server();
    let mut budget = 1 << 20;
    let mut frame = client_frame(OpCode::Text, true, RSV1, &compressed);
    match ws.read_within(&mut frame, &mut budget, &mut inflater).1 {
        Read::Message { payload, .. } => assert_eq!(payload, &text[..]),
        other => panic!("{other:?}"),
    }
    assert!(
        (1 << 20) - budget >= text.len() as u64,
        "the output was charged"
    );
    assert_eq!(ws.buffered_bytes(), 0);
}

/// Compressed on the client side by the same core, read back on the server side.
#[test]
fn a_client_compresses_what_a_server_inflates() {
    let mut client = WebSocket::new(ClientSide(|| KEY), Limits::default()).with_deflate(TERMS);
    let mut deflater = Deflater::new(16);
    let text = br#"{"symbol":"ACME","bid":101.25,"ask":101.27}"#.repeat(3);
    let frame = client
        .encode_with(OpCode::Text, &text, &mut deflater)
        .unwrap();
    assert_eq!(frame[0] & 0x40, 0x40, "RSV1: compressed");
    let short = client
        .encode_with(OpCode::Text, b"hi", &mut deflater)
        .unwrap();
    assert_eq!(short[0] & 0x40, 0, "under the minimum: plain");
    let frames = &mut [frame.to_vec(), short.to_vec()];
    assert_eq!(
        feed(&mut server(), frames),
        [Ok(text.clone()), Ok(b"hi".to_vec())]
    );
}

proptest! {
    /// A compressed message in up to three fragments, the byte stream cut at any point:
    /// always the same message, the same plain bytes.
    #[test]
    fn every_split_gives_the_message(
        payload in proptest::collection::vec(prop_oneof![Just(b'x'), Just(b'y'), any::<u8>()], 0..600),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..3),
        split in any::<prop::sample::Index>(),
    ) {
        let compressed = Deflater::new(0).compress(&payload, 15);
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c.index(compressed.len() + 1)).collect();
        bounds.push(0);
        bounds.push(compressed.len());
        bounds.sort_unstable();
        let mut stream = Vec::new();
        for (i, pair) in bounds.windows(2).enumerate() {
            let (opcode, rsv) = if i == 0 { (OpCode::Binary, RSV1) } else { (OpCode::Continuation, 0) };
            let fin = i == bounds.len() - 2;
            stream.extend(client_frame(opcode, fin, rsv, &compressed[pair[0]..pair[1]]));
        }
        stream.extend(encode_frame(OpCode::Text, true, b"after", Some(KEY)));
        let at = split.index(stream.len() + 1);
        let mut chunks = [stream[..at].to_vec(), stream[at..].to_vec()];
        prop_assert_eq!(feed(&mut server(), &mut chunks), vec![Ok(payload), Ok(b"after".to_vec())]);
    }
}
