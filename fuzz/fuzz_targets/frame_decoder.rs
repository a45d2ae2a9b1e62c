//! `WebSocket::server` fed in arbitrary splits, checked against a naive reference decoder
//! written here from RFC 6455 §5 (arbitrary bytes), or against the messages a valid stream
//! was built from (structured mode).
//!
//! Oracles, in both modes:
//! - the events of any split equal the events of the whole input, byte for byte, and both equal
//!   the reference (the expected messages in structured mode);
//! - `NeedMore` consumes all input, every other result consumes something;
//! - nothing follows a `Failed` or `Close`, and the state is then `Closed`;
//! - no message exceeds `max_message_bytes`, every text message is valid UTF-8.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uringcast::protocol::close::CloseState;
use uringcast::protocol::connection::{Read, WebSocket};
use uringcast::protocol::frame::encode_frame;
use uringcast::protocol::{CloseCode, Limits, OpCode, ProtocolError};

#[derive(Arbitrary, Debug)]
enum Input {
    /// Arbitrary bytes: mostly protocol errors, but libFuzzer finds masked frames quickly.
    Bytes {
        limit: u16,
        close_first: bool,
        cuts: Vec<u16>,
        bytes: Vec<u8>,
    },
    /// A valid stream built from frames that obey the fragmentation rules.
    Valid(Valid),
}

#[derive(Arbitrary, Debug)]
struct Valid {
    /// `None`: the default limit; otherwise a small one that some messages may exceed.
    limit: Option<u16>,
    close_first: bool,
    mask_seed: u32,
    items: Vec<Item>,
    close: Option<CloseSpec>,
    cuts: Vec<u16>,
    /// Bytes after the close frame: must be ignored.
    trailing: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Item {
    Text(Fragmented<String>),
    Binary(Fragmented<Vec<u8>>),
    Control(Control),
}

#[derive(Arbitrary, Debug)]
struct Fragmented<T> {
    payload: T,
    /// Fragment boundaries, as byte offsets into the payload (code points may be split).
    cuts: Vec<u16>,
    /// Control frames interleaved between fragments: (after which fragment, frame).
    controls: Vec<(u8, Control)>,
}

#[derive(Arbitrary, Debug)]
struct Control {
    ping: bool,
    payload: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct CloseSpec {
    /// `None`: an empty close payload.
    code: Option<u16>,
    reason: String,
}

/// An owned copy of a [`Read`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Message(OpCode, Vec<u8>),
    Ping(Vec<u8>, Option<Vec<u8>>),
    Pong(Vec<u8>),
    Close(Option<u16>, String, Option<Vec<u8>>),
    Failed(ProtocolError, Option<Vec<u8>>),
}

impl Event {
    fn is_terminal(&self) -> bool {
        matches!(self, Event::Close(..) | Event::Failed(..))
    }
}

fn connection(limit: u64, close_first: bool) -> WebSocket {
    let mut ws = WebSocket::server(Limits {
        max_message_bytes: limit,
    });
    if close_first {
        let sent = ws.close(CloseCode::GOING_AWAY, "bye");
        assert!(sent.is_some());
        assert_eq!(ws.close_state(), CloseState::CloseSent);
    }
    ws
}

/// Splits `bytes` at `cuts` (taken modulo `len + 1`); empty chunks are kept on purpose.
fn split(bytes: &[u8], cuts: &[u16]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) % (bytes.len() + 1))
        .collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

/// Feeds `chunks` in order, checking the calling contract on every call.
fn feed(ws: &mut WebSocket, chunks: &mut [Vec<u8>], limit: u64) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    for chunk in chunks.iter_mut() {
        let mut pos = 0;
        loop {
            let rest = chunk.len() - pos;
            let (used, read) = ws.read(&mut chunk[pos..]);
            assert!(used <= rest, "consumed {used} of {rest}");
            let event = match read {
                Read::NeedMore => None,
                Read::Message { opcode, payload } => {
                    assert!(matches!(opcode, OpCode::Text | OpCode::Binary));
                    assert!(payload.len() as u64 <= limit, "message over the limit");
                    if opcode == OpCode::Text {
                        assert!(std::str::from_utf8(&payload).is_ok(), "text not UTF-8");
                    }
                    Some(Event::Message(opcode, payload.into_owned()))
                }
                Read::Ping { payload, pong } => {
                    assert!(payload.len() <= 125);
                    Some(Event::Ping(payload.into_owned(), pong.map(|b| b.to_vec())))
                }
                Read::Pong(payload) => {
                    assert!(payload.len() <= 125);
                    Some(Event::Pong(payload.into_owned()))
                }
                Read::Close {
                    code,
                    reason,
                    reply,
                } => Some(Event::Close(
                    code.map(|c| c.0),
                    reason,
                    reply.map(|b| b.to_vec()),
                )),
                Read::Failed { error, reply } => {
                    Some(Event::Failed(error, reply.map(|b| b.to_vec())))
                }
            };
            pos += used;
            match event {
                Some(event) => {
                    assert!(used > 0, "an event without progress: {event:?}");
                    if let Some(last) = events.last() {
                        assert!(!last.is_terminal(), "{event:?} after {last:?}");
                    }
                    if event.is_terminal() {
                        assert_eq!(ws.close_state(), CloseState::Closed);
                    }
                    events.push(event);
                }
                None => {
                    assert_eq!(pos, chunk.len(), "NeedMore must consume everything");
                    break;
                }
            }
        }
    }
    events
}

/// The frame a server sends for a close with `code` and no reason.
fn close_frame(code: Option<u16>) -> Vec<u8> {
    let payload = code.map_or_else(Vec::new, |c| c.to_be_bytes().to_vec());
    encode_frame(OpCode::Close, true, &payload, None).to_vec()
}

fn failed(error: ProtocolError, open: bool) -> Event {
    let reply = open.then(|| close_frame(Some(error.close_code().0)));
    Event::Failed(error, reply)
}

/// A naive reference: RFC 6455 §5-§7 applied to the whole input at once, frame by frame, with
/// nothing shared with the implementation but the public types.
fn reference(input: &[u8], limit: u64, close_first: bool) -> Vec<Event> {
    let open = !close_first;
    let mut events = Vec::new();
    // The data message in progress: opcode, payload so far, declared length so far.
    let mut message: Option<(OpCode, Vec<u8>, u64)> = None;
    let mut rest = input;
    loop {
        // The header: return silently on truncation, error as soon as a rule is broken.
        let [b0, b1, after @ ..] = rest else {
            return events;
        };
        let opcode = match b0 & 0x0F {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => {
                events.push(failed(ProtocolError::ReservedOpCode(other), open));
                return events;
            }
        };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 7;
        let (len, after) = match b1 & 0x7F {
            126 if after.len() >= 2 => (
                u64::from(u16::from_be_bytes([after[0], after[1]])),
                &after[2..],
            ),
            127 if after.len() >= 8 => {
                let len = u64::from_be_bytes(after[..8].try_into().unwrap());
                if len >= 1 << 63 {
                    events.push(failed(ProtocolError::LengthOverflow, open));
                    return events;
                }
                (len, &after[8..])
            }
            126 | 127 => return events,
            short => (u64::from(short), after),
        };
        let (mask, after) = if b1 & 0x80 != 0 {
            if after.len() < 4 {
                return events;
            }
            (Some([after[0], after[1], after[2], after[3]]), &after[4..])
        } else {
            (None, after)
        };
        let Some(mask) = mask else {
            events.push(failed(ProtocolError::UnmaskedClientFrame, open));
            return events;
        };
        if rsv != 0 {
            events.push(failed(ProtocolError::ReservedBits(rsv), open));
            return events;
        }
        let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        if control {
            if len > 125 {
                events.push(failed(ProtocolError::ControlFrameTooLong(len), open));
                return events;
            }
            if !fin {
                events.push(failed(ProtocolError::FragmentedControlFrame, open));
                return events;
            }
        } else {
            let (message_opcode, so_far) = match (opcode, &message) {
                (OpCode::Continuation, None) => {
                    events.push(failed(ProtocolError::UnexpectedContinuation, open));
                    return events;
                }
                (OpCode::Continuation, Some((op, _, declared))) => (*op, *declared),
                (_, Some(_)) => {
                    events.push(failed(ProtocolError::InterleavedDataFrame, open));
                    return events;
                }
                (op, None) => (op, 0),
            };
            let total = so_far.saturating_add(len);
            if total > limit {
                events.push(failed(
                    ProtocolError::MessageTooBig { len: total, limit },
                    open,
                ));
                return events;
            }
            match &mut message {
                Some((_, _, declared)) => *declared = total,
                None => message = Some((message_opcode, Vec::new(), total)),
            }
        }
        // The payload, as much of it as the input holds.
        let available = after.len().min(usize::try_from(len).unwrap_or(usize::MAX));
        let payload: Vec<u8> = after[..available]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        let complete = available as u64 == len;
        rest = &after[available..];
        if control {
            if !complete {
                return events;
            }
            match opcode {
                OpCode::Ping => {
                    let pong =
                        open.then(|| encode_frame(OpCode::Pong, true, &payload, None).to_vec());
                    events.push(Event::Ping(payload, pong));
                }
                OpCode::Pong => events.push(Event::Pong(payload)),
                _ => {
                    let event = match payload.as_slice() {
                        [] => Event::Close(None, String::new(), open.then(|| close_frame(None))),
                        [_] => failed(ProtocolError::CloseTooShort, open),
                        [high, low, reason @ ..] => {
                            let code = u16::from_be_bytes([*high, *low]);
                            let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                            if !sendable {
                                failed(ProtocolError::InvalidCloseCode(code), open)
                            } else if let Ok(reason) = std::str::from_utf8(reason) {
                                Event::Close(
                                    Some(code),
                                    reason.to_owned(),
                                    open.then(|| close_frame(Some(code))),
                                )
                            } else {
                                failed(ProtocolError::InvalidCloseReason, open)
                            }
                        }
                    };
                    events.push(event);
                    return events;
                }
            }
            continue;
        }
        let (message_opcode, buffer, _) = message.as_mut().expect("a data frame");
        buffer.extend_from_slice(&payload);
        if *message_opcode == OpCode::Text {
            // Fail fast: invalid as soon as no continuation could repair it (§8.1).
            if let Err(e) = std::str::from_utf8(buffer) {
                if e.error_len().is_some() || (complete && fin) {
                    events.push(failed(ProtocolError::InvalidUtf8, open));
                    return events;
                }
            }
        }
        if !complete {
            return events;
        }
        if fin {
            let (opcode, payload, _) = message.take().expect("a data message");
            events.push(Event::Message(opcode, payload));
        }
    }
}

fn check_bytes(limit: u64, close_first: bool, cuts: &[u16], bytes: &[u8]) {
    let expected = reference(bytes, limit, close_first);
    let whole = feed(
        &mut connection(limit, close_first),
        &mut [bytes.to_vec()],
        limit,
    );
    assert_eq!(whole, expected, "whole input differs from the reference");
    let mut chunks = split(bytes, cuts);
    let pieces = feed(&mut connection(limit, close_first), &mut chunks, limit);
    assert_eq!(pieces, expected, "split input differs from the reference");
    if bytes.len() <= 512 {
        let mut singles: Vec<Vec<u8>> = bytes.iter().map(|&b| vec![b]).collect();
        let singles = feed(&mut connection(limit, close_first), &mut singles, limit);
        assert_eq!(
            singles, expected,
            "byte-at-a-time input differs from the reference"
        );
    }
}

/// Appends one masked frame (opcode, fin, payload) to the wire.
type EncodeFrame<'a> = dyn FnMut(&mut Vec<u8>, OpCode, bool, &[u8]) + 'a;

/// Encodes `valid` and the events it must produce.
fn build(valid: &Valid) -> (Vec<u8>, Vec<Event>, u64) {
    let limit = valid
        .limit
        .map_or(Limits::default().max_message_bytes, u64::from);
    let open = !valid.close_first;
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut failed_already = false;
    let mut masks = 0u32;
    let mut frame = |wire: &mut Vec<u8>, opcode, fin, payload: &[u8]| {
        masks = masks.wrapping_add(1);
        let key = valid.mask_seed.wrapping_mul(masks).to_be_bytes();
        wire.extend_from_slice(&encode_frame(opcode, fin, payload, Some(key)));
    };
    let control = |wire: &mut Vec<u8>,
                   expected: &mut Vec<Event>,
                   failed_already: bool,
                   frame: &mut EncodeFrame,
                   c: &Control| {
        let payload = &c.payload[..c.payload.len().min(125)];
        let opcode = if c.ping { OpCode::Ping } else { OpCode::Pong };
        frame(wire, opcode, true, payload);
        if !failed_already {
            expected.push(if c.ping {
                let pong = open.then(|| encode_frame(OpCode::Pong, true, payload, None).to_vec());
                Event::Ping(payload.to_vec(), pong)
            } else {
                Event::Pong(payload.to_vec())
            });
        }
    };
    for item in &valid.items {
        let (opcode, payload, fragmented) = match item {
            Item::Control(c) => {
                control(&mut wire, &mut expected, failed_already, &mut frame, c);
                continue;
            }
            Item::Text(f) => (OpCode::Text, f.payload.as_bytes(), f.cuts.as_slice()),
            Item::Binary(f) => (OpCode::Binary, f.payload.as_slice(), f.cuts.as_slice()),
        };
        let controls = match item {
            Item::Text(f) => f.controls.as_slice(),
            Item::Binary(f) => f.controls.as_slice(),
            Item::Control(_) => unreachable!(),
        };
        let fragments = split(payload, fragmented);
        let count = fragments.len();
        // Controls whose slot is the last fragment go before the message instead.
        for (_, c) in controls
            .iter()
            .filter(|(at, _)| usize::from(*at) % count == count - 1)
        {
            control(&mut wire, &mut expected, failed_already, &mut frame, c);
        }
        let mut declared = 0u64;
        for (i, fragment) in fragments.iter().enumerate() {
            let fin = i + 1 == count;
            let op = if i == 0 { opcode } else { OpCode::Continuation };
            frame(&mut wire, op, fin, fragment);
            declared += fragment.len() as u64;
            if declared > limit && !failed_already {
                expected.push(failed(
                    ProtocolError::MessageTooBig {
                        len: declared,
                        limit,
                    },
                    open,
                ));
                failed_already = true;
            }
            for (_, c) in controls
                .iter()
                .filter(|(at, _)| usize::from(*at) % count == i)
            {
                if !fin {
                    control(&mut wire, &mut expected, failed_already, &mut frame, c);
                }
            }
        }
        if !failed_already {
            expected.push(Event::Message(opcode, payload.to_vec()));
        }
    }
    if let Some(close) = &valid.close {
        // Only codes a peer may send (RFC 6455 §7.4).
        let code = close.code.map(|c| match c % 4 {
            0 => 1000 + (c / 4) % 4,
            1 => 1007 + (c / 4) % 8,
            _ => 3000 + (c / 4) % 2000,
        });
        let mut end = close.reason.len().min(123);
        while !close.reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = &close.reason[..end];
        let payload = match code {
            Some(code) => [&code.to_be_bytes()[..], reason.as_bytes()].concat(),
            None => Vec::new(),
        };
        frame(&mut wire, OpCode::Close, true, &payload);
        if !failed_already {
            let reason = if code.is_some() { reason } else { "" };
            let reply = open.then(|| close_frame(code));
            expected.push(Event::Close(code, reason.to_owned(), reply));
        }
        wire.extend_from_slice(&valid.trailing);
    }
    (wire, expected, limit)
}

fn check_valid(valid: &Valid) {
    let (wire, expected, limit) = build(valid);
    let whole = feed(
        &mut connection(limit, valid.close_first),
        &mut [wire.clone()],
        limit,
    );
    assert_eq!(
        whole, expected,
        "whole stream differs from the messages encoded"
    );
    let mut chunks = split(&wire, &valid.cuts);
    let pieces = feed(
        &mut connection(limit, valid.close_first),
        &mut chunks,
        limit,
    );
    assert_eq!(
        pieces, expected,
        "split stream differs from the messages encoded"
    );
    // The reference agrees on valid streams too (trailing garbage after a close included).
    assert_eq!(reference(&wire, limit, valid.close_first), expected);
}

fuzz_target!(|input: Input| {
    match input {
        Input::Bytes {
            limit,
            close_first,
            cuts,
            bytes,
        } => check_bytes(u64::from(limit % 1024), close_first, &cuts, &bytes),
        Input::Valid(valid) => check_valid(&valid),
    }
});
