//! One WebSocket connection after the handshake, sans-IO: messages assembled from fragments,
//! text validated fail-fast, pings answered, and the closing handshake (RFC 6455 §5-§7).

use std::borrow::Cow;

use bytes::Bytes;

use super::close::{CloseCode, CloseState};
use super::deflate::{Agreed, Deflater, Inflater};
use super::error::ProtocolError;
use super::frame::{close_payload, encode_frame, FrameDecoder, OpCode, Step};
use super::{utf8, Limits, Role};

/// The side of the connection, and where its frame masks come from (§5.3: a client masks every
/// frame with a fresh, unpredictable key; a server never masks).
pub trait Masking {
    /// The side this is.
    const ROLE: Role;
    /// The mask for the next outgoing frame, or `None` on the server side.
    fn next_mask(&mut self) -> Option<[u8; 4]>;
}

/// The server side: frames go out unmasked.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerSide;

impl Masking for ServerSide {
    const ROLE: Role = Role::Server;
    fn next_mask(&mut self) -> Option<[u8; 4]> {
        None
    }
}

/// The client side: each frame is masked with a key drawn from the caller's random source.
#[derive(Clone, Debug)]
pub struct ClientSide<F>(pub F);

impl<F: FnMut() -> [u8; 4]> Masking for ClientSide<F> {
    const ROLE: Role = Role::Client;
    fn next_mask(&mut self) -> Option<[u8; 4]> {
        Some((self.0)())
    }
}

/// What one call to [`WebSocket::read`] produced.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Read<'a> {
    /// All input was consumed and nothing is complete yet.
    NeedMore,
    /// A complete text or binary message. Text is valid UTF-8. The payload borrows the input
    /// when the message arrived whole in it, and is owned when it was assembled.
    Message {
        /// [`OpCode::Text`] or [`OpCode::Binary`].
        opcode: OpCode,
        /// The unmasked payload.
        payload: Cow<'a, [u8]>,
    },
    /// A ping. `pong` is the answer to send (same payload, §5.5.3); `None` once closing.
    Ping {
        /// The ping's payload.
        payload: Cow<'a, [u8]>,
        /// The encoded pong.
        pong: Option<Bytes>,
    },
    /// A pong; unsolicited ones are allowed and carry no obligation (§5.5.3).
    Pong(Cow<'a, [u8]>),
    /// The peer's close frame. `reply` is our close frame, if we had not sent one (§5.5.1).
    /// Reading is over: [`WebSocket::close_state`] is [`CloseState::Closed`].
    Close {
        /// The peer's code; `None` for an empty close payload (1005 locally).
        code: Option<CloseCode>,
        /// The peer's reason, valid UTF-8.
        reason: String,
        /// Our close frame to send, echoing the peer's code.
        reply: Option<Bytes>,
    },
    /// The peer broke the protocol: send `reply` (a close with the error's code, unless a
    /// close was already sent) and shut the connection (§7.1.7). Reading is over.
    Failed {
        /// What went wrong.
        error: ProtocolError,
        /// Our close frame to send.
        reply: Option<Bytes>,
    },
}

/// The protocol state of one connection after the opening handshake.
///
/// Feed received bytes to [`read`](Self::read) until it returns [`Read::NeedMore`]; send what
/// it hands back. An idle connection holds no heap memory: buffers exist only while a message
/// or control frame is split across reads.
#[derive(Debug)]
pub struct WebSocket<M: Masking = ServerSide> {
    decoder: FrameDecoder,
    /// Payload that spans reads or fragments; `None` (8 bytes, no allocation) on an idle
    /// connection, which is what most of a big server's connections are.
    partial: Option<Box<Partial>>,
    /// The frame whose payload is arriving.
    frame: FrameInfo,
    close: CloseState,
    /// permessage-deflate's terms, if it was negotiated (3 bytes: no zlib state here; the
    /// compressor and the inflater belong to the thread).
    deflate: Option<Agreed>,
    masking: M,
}

impl WebSocket<ServerSide> {
    /// A server-side connection.
    pub fn server(limits: Limits) -> Self {
        Self::new(ServerSide, limits)
    }
}

impl<M: Masking> WebSocket<M> {
    /// A connection on the side `masking` stands for.
    pub fn new(masking: M, limits: Limits) -> Self {
        Self {
            decoder: FrameDecoder::new(M::ROLE, limits),
            partial: None,
            frame: FrameInfo {
                opcode: OpCode::Binary,
                fin: true,
                starts_message: true,
                whole: true,
            },
            close: CloseState::Open,
            deflate: None,
            masking,
        }
    }

    /// The connection negotiated permessage-deflate on these terms (RFC 7692): RSV1 marks
    /// compressed messages, which [`read_within`](Self::read_within) inflates.
    pub fn with_deflate(mut self, agreed: Agreed) -> Self {
        self.decoder.allow_compression();
        self.deflate = Some(agreed);
        self
    }

    /// The permessage-deflate terms, if negotiated.
    pub fn deflate(&self) -> Option<Agreed> {
        self.deflate
    }

    /// The window this side compresses with, if it may compress what it sends.
    pub fn send_window_bits(&self) -> Option<u8> {
        let agreed = self.deflate?;
        Some(match M::ROLE {
            Role::Server => agreed.server_window_bits,
            Role::Client => agreed.client_window_bits,
        })
    }

    /// Where the closing handshake stands.
    pub fn close_state(&self) -> CloseState {
        self.close
    }

    /// Whether the connection is between messages with nothing buffered: the state a ping
    /// timer may treat as idle.
    pub fn is_idle(&self) -> bool {
        self.decoder.is_idle() && self.partial.as_ref().is_none_or(|p| p.control.is_empty())
    }

    /// Reads from the start of `input`, unmasking in place. Returns how many bytes were
    /// consumed and what they produced; call again with the rest until [`Read::NeedMore`].
    /// Once the state is [`CloseState::Closed`] all input is discarded.
    ///
    /// A convenience for tests and tools: a compressed message gets a fresh inflater each
    /// time. A server or a load generator shares one among its connections with
    /// [`read_within`](Self::read_within).
    pub fn read<'a>(&mut self, input: &'a mut [u8]) -> (usize, Read<'a>) {
        let mut unlimited = u64::MAX;
        self.read_within(input, &mut unlimited, &mut Inflater::new())
    }

    /// Bytes of memory this connection holds for unfinished messages and control frames: the
    /// buffers' capacity, which is what they cost, not just what they hold.
    pub fn buffered_bytes(&self) -> usize {
        self.partial
            .as_ref()
            .map_or(0, |p| p.message.capacity() + p.control.capacity())
    }

    /// Like [`read`](Self::read), buffering at most `budget` more bytes of an unfinished
    /// message, and taking what it buffers from `budget`. A chunk that does not fit fails
    /// the connection with [`ProtocolError::OverBudget`] (close 1013) before it is copied,
    /// so a caller can bound the sum over many connections.
    ///
    /// A compressed message is inflated with `inflater` (shared by every connection of the
    /// thread: no context survives a message), its output bounded by the message limit and
    /// charged to `budget` while it grows; it is handed over as plain bytes.
    pub fn read_within<'a>(
        &mut self,
        input: &'a mut [u8],
        budget: &mut u64,
        inflater: &mut Inflater,
    ) -> (usize, Read<'a>) {
        if self.close == CloseState::Closed {
            return (input.len(), Read::NeedMore);
        }
        let mut pos = 0;
        loop {
            let (used, step) = match self.decoder.step(&mut input[pos..]) {
                Ok(step) => step,
                Err(error) => return (input.len(), self.fail(error)),
            };
            let start = pos;
            pos += used;
            match step {
                Step::Need => return (pos, Read::NeedMore),
                Step::Header(header) => {
                    let continues = header.opcode == OpCode::Continuation;
                    self.frame = FrameInfo {
                        opcode: match self.decoder.message_opcode() {
                            Some(message) if continues => message,
                            _ => header.opcode,
                        },
                        fin: header.fin,
                        starts_message: !continues,
                        whole: true,
                    };
                }
                Step::Payload { len, frame_done } => {
                    let chunk = &input[start..start + len];
                    match self.payload(chunk, frame_done, budget) {
                        Ok(None) => {}
                        Ok(Some(done)) => {
                            // Re-borrow the chunk for the result: it lives as long as `input`.
                            let chunk: &'a [u8] = &input[start..start + len];
                            return (pos, self.finish(done, chunk, budget, inflater));
                        }
                        Err(error) => return (input.len(), self.fail(error)),
                    }
                }
            }
        }
    }

    /// Starts the closing handshake (§7.1.2). Returns the close frame to send, or `None` if a
    /// close was already sent.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Option<Bytes> {
        if self.close != CloseState::Open {
            return None;
        }
        self.close = CloseState::CloseSent;
        Some(self.encode_control(OpCode::Close, &close_payload(code, reason)))
    }

    /// Encodes a data frame for this side (masked on the client). `None` once a close was
    /// sent: no data may follow it (§5.5.1).
    pub fn encode(&mut self, opcode: OpCode, payload: &[u8]) -> Option<Bytes> {
        if self.close != CloseState::Open {
            return None;
        }
        Some(encode_frame(
            opcode,
            true,
            payload,
            self.masking.next_mask(),
        ))
    }

    /// Like [`encode`](Self::encode), compressed with `deflater` when permessage-deflate was
    /// negotiated and compression is worth it (the deflater decides; see
    /// [`Deflater::frame`]).
    pub fn encode_with(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        deflater: &mut Deflater,
    ) -> Option<Bytes> {
        if self.close != CloseState::Open {
            return None;
        }
        let mask = self.masking.next_mask();
        let compressed = self
            .send_window_bits()
            .and_then(|bits| deflater.frame(opcode, payload, bits, mask));
        Some(compressed.unwrap_or_else(|| encode_frame(opcode, true, payload, mask)))
    }

    /// Encodes a ping (payload truncated to 125 bytes); `None` once closing.
    pub fn ping(&mut self, payload: &[u8]) -> Option<Bytes> {
        if self.close != CloseState::Open {
            return None;
        }
        Some(self.encode_control(OpCode::Ping, &payload[..payload.len().min(125)]))
    }

    fn encode_control(&mut self, opcode: OpCode, payload: &[u8]) -> Bytes {
        encode_frame(opcode, true, payload, self.masking.next_mask())
    }

    fn partial(&mut self) -> &mut Partial {
        self.partial.get_or_insert_with(Box::default)
    }

    /// Takes a completed buffer out of the partial state, freeing the state once it holds
    /// nothing, so a connection between messages owns no heap memory.
    fn take_partial(&mut self, take: impl FnOnce(&mut Partial) -> Vec<u8>) -> Vec<u8> {
        let Some(partial) = self.partial.as_mut() else {
            return Vec::new();
        };
        let taken = take(partial);
        if partial.message.is_empty() && partial.control.is_empty() {
            self.partial = None;
        }
        taken
    }

    /// Takes one payload chunk; returns what it completed, if anything.
    fn payload(
        &mut self,
        chunk: &[u8],
        frame_done: bool,
        budget: &mut u64,
    ) -> Result<Option<Done>, ProtocolError> {
        let whole = self.frame.whole && frame_done;
        self.frame.whole = false;
        let opcode = self.frame.opcode;
        if opcode.is_control() {
            if !whole {
                self.partial().control.extend_from_slice(chunk);
            }
            return Ok(frame_done.then_some(Done {
                opcode,
                borrowed: whole,
                compressed: false,
            }));
        }
        let message_done = frame_done && self.frame.fin;
        let compressed = self.decoder.message_compressed();
        if whole && self.frame.starts_message && self.frame.fin {
            if compressed {
                // Inflated (and its text checked) when it is handed over.
                return Ok(Some(Done {
                    opcode,
                    borrowed: true,
                    compressed,
                }));
            }
            // The common case: a whole unfragmented message in one read, used in place.
            if opcode == OpCode::Text {
                utf8::validate(chunk).map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            return Ok(Some(Done {
                opcode,
                borrowed: true,
                compressed: false,
            }));
        }
        // The buffer grows by doubling (amortised linear copying), but never past the largest
        // message allowed, and the budget is charged what the growth allocates, before it.
        let limit = usize::try_from(self.decoder.max_message_bytes()).unwrap_or(usize::MAX);
        let (len, capacity) = self
            .partial
            .as_ref()
            .map_or((0, 0), |p| (p.message.len(), p.message.capacity()));
        let wanted = len + chunk.len();
        let grown = if wanted > capacity {
            wanted.max(capacity.saturating_mul(2).min(limit))
        } else {
            capacity
        };
        let needed = (grown - capacity) as u64;
        if needed > *budget {
            return Err(ProtocolError::OverBudget {
                needed,
                available: *budget,
            });
        }
        *budget -= needed;
        let partial = self.partial();
        partial.message.reserve_exact(grown - len);
        partial.message.extend_from_slice(chunk);
        if opcode == OpCode::Text && !compressed {
            let unchecked = &partial.message[partial.utf8_checked..];
            partial.utf8_checked +=
                utf8::validate_prefix(unchecked).map_err(|_| ProtocolError::InvalidUtf8)?;
            if message_done && partial.utf8_checked != partial.message.len() {
                // The message ends inside a code point.
                return Err(ProtocolError::InvalidUtf8);
            }
        }
        Ok(message_done.then_some(Done {
            opcode,
            borrowed: false,
            compressed,
        }))
    }

    /// Turns a completed frame or message into its [`Read`].
    fn finish<'a>(
        &mut self,
        done: Done,
        chunk: &'a [u8],
        budget: &mut u64,
        inflater: &mut Inflater,
    ) -> Read<'a> {
        if done.compressed {
            return self.inflated(
                done.opcode,
                done.borrowed.then_some(chunk),
                budget,
                inflater,
            );
        }
        let payload: Cow<'a, [u8]> = if done.borrowed {
            Cow::Borrowed(chunk)
        } else if done.opcode.is_control() {
            Cow::Owned(self.take_partial(|p| std::mem::take(&mut p.control)))
        } else {
            Cow::Owned(self.take_partial(|p| {
                p.utf8_checked = 0;
                std::mem::take(&mut p.message)
            }))
        };
        match done.opcode {
            OpCode::Ping => {
                let pong = (self.close == CloseState::Open)
                    .then(|| self.encode_control(OpCode::Pong, &payload));
                Read::Ping { payload, pong }
            }
            OpCode::Pong => Read::Pong(payload),
            OpCode::Close => self.peer_closed(&payload),
            opcode => Read::Message { opcode, payload },
        }
    }

    /// A compressed message is complete (in `chunk` if it arrived whole, else assembled):
    /// inflate it within the message limit, then check its text (RFC 7692 §6.2).
    fn inflated<'a>(
        &mut self,
        opcode: OpCode,
        chunk: Option<&[u8]>,
        budget: &mut u64,
        inflater: &mut Inflater,
    ) -> Read<'a> {
        let assembled;
        let compressed = match chunk {
            Some(chunk) => chunk,
            None => {
                assembled = self.take_partial(|p| std::mem::take(&mut p.message));
                &assembled[..]
            }
        };
        let limit = usize::try_from(self.decoder.max_message_bytes()).unwrap_or(usize::MAX);
        let payload = match inflater.inflate(compressed, limit, budget) {
            Ok(payload) => payload,
            Err(error) => return self.fail(error),
        };
        if opcode == OpCode::Text && utf8::validate(&payload).is_err() {
            return self.fail(ProtocolError::InvalidUtf8);
        }
        Read::Message {
            opcode,
            payload: Cow::Owned(payload),
        }
    }

    /// The peer's close frame (§5.5.1, §7.1.5): validate it, echo its code, stop reading.
    fn peer_closed<'a>(&mut self, payload: &[u8]) -> Read<'a> {
        let (code, reason) = match payload {
            [] => (None, ""),
            [_] => return self.fail(ProtocolError::CloseTooShort),
            [high, low, reason @ ..] => {
                let code = CloseCode(u16::from_be_bytes([*high, *low]));
                if !code.is_sendable() {
                    return self.fail(ProtocolError::InvalidCloseCode(code.0));
                }
                let Ok(reason) = std::str::from_utf8(reason) else {
                    return self.fail(ProtocolError::InvalidCloseReason);
                };
                (Some(code), reason)
            }
        };
        let reply = (self.close == CloseState::Open).then(|| {
            let payload = code.map_or_else(Vec::new, |code| close_payload(code, ""));
            self.encode_control(OpCode::Close, &payload)
        });
        self.close = CloseState::Closed;
        self.partial = None;
        Read::Close {
            code,
            reason: reason.to_owned(),
            reply,
        }
    }

    /// Fails the connection (§7.1.7): one close frame with the error's code, then no reading.
    fn fail<'a>(&mut self, error: ProtocolError) -> Read<'a> {
        let reply = self.close(error.close_code(), "");
        self.close = CloseState::Closed;
        self.partial = None;
        Read::Failed { error, reply }
    }
}

/// Payload held across reads: the data message being assembled and the control frame
/// being received (a control frame may arrive between two fragments of a message).
#[derive(Debug, Default)]
struct Partial {
    /// The data message's payload so far.
    message: Vec<u8>,
    /// How much of `message` is known valid UTF-8 (text messages only).
    utf8_checked: usize,
    /// The control frame's payload so far (at most 125 bytes).
    control: Vec<u8>,
}

/// A frame or message that completed in the last payload chunk.
#[derive(Clone, Copy)]
struct Done {
    /// The frame's opcode, or the message's (Text or Binary) for a data message.
    opcode: OpCode,
    /// The payload is exactly the last chunk (it arrived whole), not the assembled buffer.
    borrowed: bool,
    /// A data message with RSV1: to be inflated.
    compressed: bool,
}

/// What the connection knows about the frame whose payload is arriving.
#[derive(Clone, Copy, Debug)]
struct FrameInfo {
    /// The frame's opcode; for a continuation, the opcode of the message it continues.
    opcode: OpCode,
    /// FIN was set.
    fin: bool,
    /// A Text or Binary frame: the first of its message.
    starts_message: bool,
    /// No payload chunk of this frame has been taken yet.
    whole: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::encode_frame;
    use proptest::prelude::*;

    /// An owned copy of a [`Read`], so tests can collect events across calls.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Message(OpCode, Vec<u8>),
        Ping(Vec<u8>, Option<Vec<u8>>),
        Pong(Vec<u8>),
        Close(Option<u16>, String, Option<Vec<u8>>),
        Failed(u16, Option<Vec<u8>>),
    }

    fn feed<M: Masking>(ws: &mut WebSocket<M>, chunks: &mut [Vec<u8>]) -> Vec<Event> {
        let mut events = Vec::new();
        for chunk in chunks.iter_mut() {
            let mut pos = 0;
            loop {
                let (used, read) = ws.read(&mut chunk[pos..]);
                let event = match read {
                    Read::NeedMore => None,
                    Read::Message { opcode, payload } => {
                        Some(Event::Message(opcode, payload.into_owned()))
                    }
                    Read::Ping { payload, pong } => {
                        Some(Event::Ping(payload.into_owned(), pong.map(|b| b.to_vec())))
                    }
                    Read::Pong(payload) => Some(Event::Pong(payload.into_owned())),
                    Read::Close {
                        code,
                        reason,
                        reply,
                    } => Some(Event::Close(
                        code.map(|c| c.0),
                        reason,
                        reply.map(|b| b.to_vec()),
                    )),
                    Read::Failed { error, reply } => Some(Event::Failed(
                        error.close_code().0,
                        reply.map(|b| b.to_vec()),
                    )),
                };
                pos += used;
                match event {
                    Some(event) => events.push(event),
                    None => {
                        assert_eq!(pos, chunk.len(), "NeedMore consumes everything");
                        break;
                    }
                }
            }
        }
        events
    }

    const KEY: [u8; 4] = [1, 2, 3, 4];

    /// The budget pays for what the buffer allocates: its capacity doubles as fragments
    /// arrive (so copying stays linear), never past the largest message allowed.
    #[test]
    fn the_budget_is_charged_the_buffers_capacity() {
        let mut ws = WebSocket::server(Limits {
            max_message_bytes: 300,
        });
        let mut budget = 1_000;
        let mut charged = Vec::new();
        for (opcode, fin) in [
            (OpCode::Binary, false),
            (OpCode::Continuation, false),
            (OpCode::Continuation, false),
        ] {
            let before = budget;
            let mut fragment = client(opcode, fin, &[7; 100]);
            assert!(matches!(
                ws.read_within(&mut fragment, &mut budget, &mut Inflater::new())
                    .1,
                Read::NeedMore
            ));
            charged.push((before - budget, ws.buffered_bytes()));
        }
        // 100, then doubled to 200, then 300 (not 400: no message may be larger).
        assert_eq!(charged, [(100, 100), (100, 200), (100, 300)]);
        let mut last = client(OpCode::Continuation, true, b"");
        match ws
            .read_within(&mut last, &mut budget, &mut Inflater::new())
            .1
        {
            Read::Message { payload, .. } => assert_eq!(payload.len(), 300),
            other => panic!("expected the message, got {other:?}"),
        }
        assert_eq!(ws.buffered_bytes(), 0);
    }

    #[test]
    fn a_budget_bounds_what_unfinished_messages_buffer() {
        // A 100-byte fragment starts a message: it must be buffered, and only 99 are allowed.
        let mut ws = WebSocket::server(Limits::default());
        let mut first = client(OpCode::Text, false, &[b'a'; 100]);
        let mut budget = 99;
        let (_, read) = ws.read_within(&mut first, &mut budget, &mut Inflater::new());
        match read {
            Read::Failed { error, reply } => {
                assert_eq!(error.close_code(), CloseCode::TRY_AGAIN_LATER);
                assert_eq!(reply.expect("a close frame")[2..4], 1013u16.to_be_bytes());
            }
            other => panic!("expected a 1013 failure, got {other:?}"),
        }
        assert_eq!(ws.buffered_bytes(), 0, "nothing was copied");
        // With room, the fragment is held and charged; a whole message is never charged.
        let mut ws = WebSocket::server(Limits::default());
        let mut budget = 100;
        let mut first = client(OpCode::Text, false, &[b'a'; 100]);
        assert!(matches!(
            ws.read_within(&mut first, &mut budget, &mut Inflater::new())
                .1,
            Read::NeedMore
        ));
        assert_eq!((budget, ws.buffered_bytes()), (0, 100));
        let mut whole = client(OpCode::Continuation, true, b"");
        assert!(matches!(
            ws.read_within(&mut whole, &mut budget, &mut Inflater::new())
                .1,
            Read::Message { .. }
        ));
        assert_eq!(ws.buffered_bytes(), 0);
        let mut ws = WebSocket::server(Limits::default());
        let mut single = client(OpCode::Binary, true, &[1; 500]);
        let mut none = 0;
        assert!(matches!(
            ws.read_within(&mut single, &mut none, &mut Inflater::new())
                .1,
            Read::Message { .. }
        ));
    }

    fn client(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        encode_frame(opcode, fin, payload, Some(KEY)).to_vec()
    }

    fn server_close(code: u16) -> Vec<u8> {
        encode_frame(OpCode::Close, true, &code.to_be_bytes(), None).to_vec()
    }

    #[test]
    fn whole_messages_are_borrowed_and_fragments_assembled() {
        let mut ws = WebSocket::server(Limits::default());
        let mut frame = client(OpCode::Text, true, b"hello");
        let frame_len = frame.len();
        let (used, read) = ws.read(&mut frame);
        assert_eq!(used, frame_len);
        assert!(matches!(
            read,
            Read::Message {
                opcode: OpCode::Text,
                payload: Cow::Borrowed(b"hello")
            }
        ));
        let wire = [
            client(OpCode::Binary, false, b"ab"),
            client(OpCode::Continuation, false, b""),
            client(OpCode::Continuation, true, b"cd"),
        ]
        .concat();
        assert_eq!(
            feed(&mut ws, &mut [wire]),
            [Event::Message(OpCode::Binary, b"abcd".to_vec())]
        );
        assert!(ws.is_idle());
    }

    #[test]
    fn ping_between_fragments_is_answered_with_its_payload() {
        let mut ws = WebSocket::server(Limits::default());
        let wire = [
            client(OpCode::Text, false, b"Hel"),
            client(OpCode::Ping, true, b"are you there"),
            client(OpCode::Continuation, true, b"lo"),
        ]
        .concat();
        let pong = encode_frame(OpCode::Pong, true, b"are you there", None).to_vec();
        assert_eq!(
            feed(&mut ws, &mut [wire]),
            [
                Event::Ping(b"are you there".to_vec(), Some(pong)),
                Event::Message(OpCode::Text, b"Hello".to_vec())
            ]
        );
    }

    #[test]
    fn unsolicited_pong_is_reported_and_ignored() {
        let mut ws = WebSocket::server(Limits::default());
        let wire = [
            client(OpCode::Pong, true, b"x"),
            client(OpCode::Text, true, b"y"),
        ]
        .concat();
        assert_eq!(
            feed(&mut ws, &mut [wire]),
            [
                Event::Pong(b"x".to_vec()),
                Event::Message(OpCode::Text, b"y".to_vec())
            ]
        );
    }

    #[test]
    fn invalid_utf8_fails_at_the_first_bad_fragment_not_the_end() {
        let mut ws = WebSocket::server(Limits::default());
        // Autobahn 6.4.1: the second fragment makes the text certainly invalid; the message
        // never ends, yet the connection must fail with 1007 now.
        let wire = [
            client(OpCode::Text, false, "κόσμε".as_bytes()),
            client(OpCode::Continuation, false, b"\xf4\x90\x80\x80"),
        ]
        .concat();
        let events = feed(&mut ws, &mut [wire]);
        assert_eq!(events, [Event::Failed(1007, Some(server_close(1007)))]);
        assert_eq!(ws.close_state(), CloseState::Closed);
    }

    #[test]
    fn code_point_split_across_fragments_is_valid() {
        let mut ws = WebSocket::server(Limits::default());
        let euro = "€".as_bytes();
        let wire = [
            client(OpCode::Text, false, &euro[..1]),
            client(OpCode::Continuation, false, &euro[1..2]),
            client(OpCode::Continuation, true, &euro[2..]),
        ]
        .concat();
        assert_eq!(
            feed(&mut ws, &mut [wire]),
            [Event::Message(OpCode::Text, euro.to_vec())]
        );
        // ...but a message that ends inside one is not.
        let wire = [
            client(OpCode::Text, false, b"a"),
            client(OpCode::Continuation, true, &euro[..2]),
        ]
        .concat();
        assert_eq!(
            feed(&mut ws, &mut [wire]),
            [Event::Failed(1007, Some(server_close(1007)))]
        );
    }

    #[test]
    fn close_handshake_echoes_the_code_and_stops_reading() {
        let mut ws = WebSocket::server(Limits::default());
        let wire = [
            client(OpCode::Close, true, b"\x03\xe8bye"),
            client(OpCode::Text, true, b"after close"),
        ]
        .concat();
        assert_eq!(
            feed(&mut ws, &mut [wire]),
            [Event::Close(
                Some(1000),
                "bye".into(),
                Some(server_close(1000))
            )]
        );
        assert_eq!(ws.close_state(), CloseState::Closed);
        assert_eq!(ws.encode(OpCode::Text, b"late"), None);

        let mut ws = WebSocket::server(Limits::default());
        let empty_reply = encode_frame(OpCode::Close, true, b"", None).to_vec();
        assert_eq!(
            feed(&mut ws, &mut [client(OpCode::Close, true, b"")]),
            [Event::Close(None, String::new(), Some(empty_reply))]
        );
    }

    #[test]
    fn bad_close_frames_fail_with_the_right_code() {
        let cases: [(&[u8], u16); 6] = [
            (b"\x03", 1002),             // 1-byte payload
            (b"\x03\xed", 1002),         // 1005 may not be sent
            (b"\x03\xee", 1002),         // 1006
            (b"\x03\xf7", 1002),         // 1015
            (b"\x0b\xb7", 1002),         // 2999 unassigned
            (b"\x03\xe8\xff\xfe", 1007), // reason not UTF-8
        ];
        for (payload, code) in cases {
            let mut ws = WebSocket::server(Limits::default());
            let events = feed(&mut ws, &mut [client(OpCode::Close, true, payload)]);
            assert_eq!(
                events,
                [Event::Failed(code, Some(server_close(code)))],
                "{payload:?}"
            );
        }
        for code in [1000u16, 1003, 1007, 1014, 3000, 4999] {
            let mut ws = WebSocket::server(Limits::default());
            let events = feed(
                &mut ws,
                &mut [client(OpCode::Close, true, &code.to_be_bytes())],
            );
            assert_eq!(
                events,
                [Event::Close(
                    Some(code),
                    String::new(),
                    Some(server_close(code))
                )]
            );
        }
    }

    #[test]
    fn our_close_then_theirs_closes_without_a_second_reply() {
        let mut ws = WebSocket::server(Limits::default());
        let ours = ws
            .close(CloseCode::GOING_AWAY, "shutting down")
            .expect("first close is sent");
        assert_eq!(&ours[..4], b"\x88\x0f\x03\xe9");
        assert_eq!(ws.close_state(), CloseState::CloseSent);
        assert_eq!(ws.close(CloseCode::NORMAL, ""), None);
        // Pings are no longer answered and data can no longer be sent, but reading goes on.
        let wire = [
            client(OpCode::Ping, true, b"p"),
            client(OpCode::Close, true, b"\x03\xe9"),
        ]
        .concat();
        assert_eq!(
            feed(&mut ws, &mut [wire]),
            [
                Event::Ping(b"p".to_vec(), None),
                Event::Close(Some(1001), String::new(), None)
            ]
        );
        assert_eq!(ws.close_state(), CloseState::Closed);
    }

    #[test]
    fn protocol_errors_send_one_close_with_their_code() {
        let mut ws = WebSocket::server(Limits {
            max_message_bytes: 10,
        });
        let events = feed(&mut ws, &mut [client(OpCode::Binary, true, &[0; 11])]);
        assert_eq!(events, [Event::Failed(1009, Some(server_close(1009)))]);
        let mut ws = WebSocket::server(Limits::default());
        let events = feed(
            &mut ws,
            &mut [encode_frame(OpCode::Text, true, b"x", None).to_vec()],
        );
        assert_eq!(events, [Event::Failed(1002, Some(server_close(1002)))]);
    }

    /// quinn's `Pair`, in miniature: a client and a server connection talk through memory.
    #[test]
    fn client_and_server_round_trip() {
        let mut counter = 0u32;
        let mut client_ws = WebSocket::new(
            ClientSide(move || {
                counter = counter.wrapping_add(0x9E37_79B9);
                counter.to_be_bytes()
            }),
            Limits::default(),
        );
        let mut server_ws = WebSocket::server(Limits::default());
        let to_server = client_ws
            .encode(OpCode::Text, "héllo".as_bytes())
            .unwrap()
            .to_vec();
        assert_ne!(
            &to_server[6..],
            "héllo".as_bytes(),
            "client frames are masked"
        );
        let events = feed(&mut server_ws, &mut [to_server.clone()]);
        assert_eq!(
            events,
            [Event::Message(OpCode::Text, "héllo".as_bytes().to_vec())]
        );
        let to_client = server_ws.encode(OpCode::Text, b"back").unwrap().to_vec();
        assert_eq!(
            feed(&mut client_ws, &mut [to_client]),
            [Event::Message(OpCode::Text, b"back".to_vec())]
        );
        // A client rejects masked frames and answers with a masked close 1002.
        match &feed(&mut client_ws, &mut [to_server])[..] {
            [Event::Failed(1002, Some(reply))] => {
                let mut decoder =
                    crate::protocol::FrameDecoder::new(Role::Server, Limits::default());
                let mut reply = reply.clone();
                let (_, step) = decoder.step(&mut reply).unwrap();
                assert!(
                    matches!(step, Step::Header(h) if h.opcode == OpCode::Close && h.mask.is_some())
                );
            }
            other => panic!("expected a 1002 failure, got {other:?}"),
        }
    }

    fn valid_stream() -> impl Strategy<Value = Vec<u8>> {
        let frame = (0u8..5, any::<bool>(), "[a-zé€😀]{0,40}", any::<[u8; 4]>());
        proptest::collection::vec(frame, 0..12).prop_map(|frames| {
            let mut out = Vec::new();
            let mut in_message = false;
            for (kind, fin, text, key) in frames {
                let bytes = text.as_bytes();
                let (opcode, fin, payload) = match kind {
                    0 => (OpCode::Ping, true, &bytes[..bytes.len().min(125)]),
                    1 => (OpCode::Pong, true, &bytes[..bytes.len().min(125)]),
                    _ if in_message => (OpCode::Continuation, fin, bytes),
                    2 => (OpCode::Binary, fin, bytes),
                    _ => (OpCode::Text, fin, bytes),
                };
                if !opcode.is_control() {
                    in_message = !fin;
                }
                out.extend_from_slice(&encode_frame(opcode, fin, payload, Some(key)));
            }
            out
        })
    }

    proptest! {
        /// Fragments of text may split code points anywhere: only the message must be valid.
        #[test]
        fn any_split_gives_the_same_events(stream in valid_stream(),
                                           cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20)) {
            let whole = feed(&mut WebSocket::server(Limits::default()), &mut [stream.clone()]);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.extend([0, stream.len()]);
            points.sort_unstable();
            let mut chunks: Vec<Vec<u8>> = points.windows(2).map(|w| stream[w[0]..w[1]].to_vec()).collect();
            prop_assert_eq!(&whole, &feed(&mut WebSocket::server(Limits::default()), &mut chunks));
            prop_assert!(whole.iter().all(|e| !matches!(e, Event::Failed(..))));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400),
                                       cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.extend([0, bytes.len()]);
            points.sort_unstable();
            let mut chunks: Vec<Vec<u8>> = points.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect();
            let mut ws = WebSocket::server(Limits { max_message_bytes: 100 });
            let events = feed(&mut ws, &mut chunks);
            // At most one terminal event, and it is the last.
            let terminal = events.iter().position(|e| matches!(e, Event::Failed(..) | Event::Close(..)));
            if let Some(i) = terminal { prop_assert_eq!(i, events.len() - 1); }
            for e in &events {
                if let Event::Message(_, payload) = e { prop_assert!(payload.len() <= 100); }
            }
        }
    }
}
