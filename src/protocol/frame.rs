//! The frame layer (RFC 6455 §5): header parsing, the §5 rules, an incremental decoder that
//! unmasks in place, and the encoders.

use bytes::{BufMut, Bytes, BytesMut};

use super::deflate::RSV1;
use super::error::ProtocolError;
use super::mask;
use super::{Limits, Role};

/// The longest frame header: 2 bytes, an 8-byte extended length and a 4-byte mask (§5.2).
pub const MAX_HEADER_BYTES: usize = 14;

/// The largest payload of a control frame (§5.5).
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A frame's opcode (§5.2), in the RFC's order; reserved values are rejected on parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation = 0x0,
    /// 0x1: the first frame of a text message.
    Text = 0x1,
    /// 0x2: the first frame of a binary message.
    Binary = 0x2,
    /// 0x8: the closing handshake.
    Close = 0x8,
    /// 0x9: a ping; answered with a pong carrying the same payload.
    Ping = 0x9,
    /// 0xA: a pong.
    Pong = 0xA,
}

impl OpCode {
    /// Parses the low nibble of the first header byte.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::ReservedOpCode`] for 0x3-0x7 and 0xB-0xF.
    pub fn from_u8(value: u8) -> Result<Self, ProtocolError> {
        Ok(match value {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            other => return Err(ProtocolError::ReservedOpCode(other)),
        })
    }

    /// Close, ping and pong: at most 125 bytes, never fragmented (§5.5).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The final fragment of its message.
    pub fin: bool,
    /// RSV1-RSV3 as the low three bits.
    pub rsv: u8,
    /// The frame's opcode.
    pub opcode: OpCode,
    /// The masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// The declared payload length.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Parses a header from the start of `input`.
    ///
    /// Returns `None` when `input` is too short to hold the whole header, else the header and
    /// its length in bytes.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::ReservedOpCode`] and [`ProtocolError::LengthOverflow`]; every other
    /// rule is checked by the decoder, which knows the role and the message in progress.
    pub fn parse(input: &[u8]) -> Result<Option<(Self, usize)>, ProtocolError> {
        let [b0, b1, rest @ ..] = input else {
            return Ok(None);
        };
        let opcode = OpCode::from_u8(b0 & 0x0F)?;
        let masked = b1 & 0x80 != 0;
        let (payload_len, rest, mut used) = match b1 & 0x7F {
            126 => {
                let Some((len, rest)) = rest.split_first_chunk::<2>() else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes(*len)), rest, 4)
            }
            127 => {
                let Some((len, rest)) = rest.split_first_chunk::<8>() else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(*len);
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthOverflow);
                }
                (len, rest, 10)
            }
            short => (u64::from(short), rest, 2),
        };
        let mask = if masked {
            let Some((key, _)) = rest.split_first_chunk::<4>() else {
                return Ok(None);
            };
            used += 4;
            Some(*key)
        } else {
            None
        };
        Ok(Some((
            Self {
                fin: b0 & 0x80 != 0,
                rsv: (b0 >> 4) & 0x7,
                opcode,
                mask,
                payload_len,
            },
            used,
        )))
    }

    /// Writes the header into `out` and returns its length.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_BYTES]) -> usize {
        out[0] = u8::from(self.fin) << 7 | (self.rsv & 0x7) << 4 | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut len = match self.payload_len {
            0..=125 => {
                out[1] = mask_bit | self.payload_len as u8;
                2
            }
            126..=0xFFFF => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
                4
            }
            _ => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&self.payload_len.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[len..len + 4].copy_from_slice(&key);
            len += 4;
        }
        len
    }
}

/// One result of [`FrameDecoder::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// All input was consumed (a partial header is kept inside the decoder); more is needed.
    Need,
    /// A complete header that passed every §5 rule and the message size limit.
    Header(FrameHeader),
    /// The first `len` bytes of the input are payload of the current frame, now unmasked in
    /// place. `frame_done` marks the frame's last payload byte (or an empty payload).
    Payload {
        /// Payload bytes at the start of the input.
        len: usize,
        /// The frame is complete.
        frame_done: bool,
    },
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Between frames; `spill[..spilled]` holds the start of a header split across inputs.
    Header {
        spill: [u8; MAX_HEADER_BYTES],
        spilled: u8,
    },
    /// Inside a frame's payload.
    Payload {
        remaining: u64,
        mask: Option<[u8; 4]>,
        phase: u8,
        /// The frame ends its message (a final data frame): the message state resets with it.
        ends_message: bool,
    },
}

const BETWEEN_FRAMES: State = State::Header {
    spill: [0; MAX_HEADER_BYTES],
    spilled: 0,
};

/// An incremental frame decoder: accepts the byte stream in any split, enforces every rule of
/// RFC 6455 §5 and the message size limit on declared lengths, before any payload arrives.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    state: State,
    role: Role,
    /// The opcode of the data message in progress (Text or Binary), if one is.
    message: Option<OpCode>,
    /// Declared payload bytes of the message in progress, across its fragments so far.
    message_len: u64,
    /// `Limits::max_message_bytes`, at most 4 GiB - 1: 4 bytes, not 8, in every connection's
    /// state (a million idle connections hold a million decoders).
    max_message_bytes: u32,
    /// permessage-deflate was negotiated: RSV1 may mark a message compressed.
    compression: bool,
    /// The message in progress had RSV1 on its first frame.
    message_compressed: bool,
}

impl FrameDecoder {
    /// A decoder for frames received by `role` (a server expects masked frames).
    pub fn new(role: Role, limits: Limits) -> Self {
        Self {
            state: BETWEEN_FRAMES,
            role,
            message: None,
            message_len: 0,
            max_message_bytes: u32::try_from(limits.max_message_bytes).unwrap_or(u32::MAX),
            compression: false,
            message_compressed: false,
        }
    }

    /// Allows RSV1 on the first frame of a data message (RFC 7692 §6: permessage-deflate was
    /// negotiated). It stays a protocol error on control frames and continuations.
    pub fn allow_compression(&mut self) {
        self.compression = true;
    }

    /// The data message in progress is compressed (its first frame had RSV1).
    pub fn message_compressed(&self) -> bool {
        self.message_compressed
    }

    /// The largest message allowed, summed across fragments.
    pub fn max_message_bytes(&self) -> u64 {
        u64::from(self.max_message_bytes)
    }

    /// The opcode (Text or Binary) of the data message in progress, if any.
    pub fn message_opcode(&self) -> Option<OpCode> {
        self.message
    }

    /// Whether the decoder stands between frames with no partial header held.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header { spilled: 0, .. }) && self.message.is_none()
    }

    /// Decodes from the start of `input`, unmasking payload in place.
    ///
    /// Returns the number of bytes of `input` consumed and what they were; the caller drops
    /// those bytes and calls again with the rest. A header split across inputs is kept inside
    /// the decoder (at most 13 bytes), so the caller never needs to keep unconsumed bytes.
    ///
    /// # Errors
    ///
    /// Any §5 violation or an oversized message; the decoder must not be used afterwards.
    pub fn step(&mut self, input: &mut [u8]) -> Result<(usize, Step), ProtocolError> {
        match &mut self.state {
            State::Header { spill, spilled } => {
                let spilled_len = usize::from(*spilled);
                let (parsed, from_input) = if spilled_len == 0 {
                    (FrameHeader::parse(input)?, 0)
                } else {
                    // Complete the spilled header from the new input; 14 bytes always suffice.
                    let take = input.len().min(MAX_HEADER_BYTES - spilled_len);
                    spill[spilled_len..spilled_len + take].copy_from_slice(&input[..take]);
                    (FrameHeader::parse(&spill[..spilled_len + take])?, take)
                };
                let Some((header, header_len)) = parsed else {
                    // Incomplete: everything so far fits in the spill (a header is < 14 bytes).
                    let start = spilled_len + from_input;
                    let rest = input.len() - from_input;
                    spill[start..start + rest].copy_from_slice(&input[from_input..]);
                    *spilled = (start + rest) as u8;
                    return Ok((input.len(), Step::Need));
                };
                let used = header_len - spilled_len;
                self.admit(&header)?;
                self.state = State::Payload {
                    remaining: header.payload_len,
                    mask: header.mask,
                    phase: 0,
                    ends_message: header.fin && !header.opcode.is_control(),
                };
                Ok((used, Step::Header(header)))
            }
            State::Payload {
                remaining,
                mask,
                phase,
                ends_message,
            } => {
                if *remaining > 0 && input.is_empty() {
                    return Ok((0, Step::Need));
                }
                let len = usize::try_from(*remaining).map_or(input.len(), |r| r.min(input.len()));
                if let Some(key) = mask {
                    mask::unmask(&mut input[..len], *key, usize::from(*phase));
                    *phase = ((usize::from(*phase) + len) % 4) as u8;
                }
                *remaining -= len as u64;
                let frame_done = *remaining == 0;
                if frame_done {
                    if *ends_message {
                        self.message = None;
                        self.message_len = 0;
                    }
                    self.state = BETWEEN_FRAMES;
                }
                Ok((len, Step::Payload { len, frame_done }))
            }
        }
    }

    /// Checks a header against RFC 6455 §5 and the size limit, and tracks fragmentation.
    fn admit(&mut self, header: &FrameHeader) -> Result<(), ProtocolError> {
        match (self.role, header.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedClientFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedServerFrame),
            _ => {}
        }
        // RSV1 marks a compressed message, on its first frame only (RFC 7692 §6.1).
        let compressed = header.rsv == RSV1
            && self.compression
            && matches!(header.opcode, OpCode::Text | OpCode::Binary);
        if header.rsv != 0 && !compressed {
            return Err(ProtocolError::ReservedBits(header.rsv));
        }
        if header.opcode.is_control() {
            if header.payload_len > MAX_CONTROL_PAYLOAD {
                return Err(ProtocolError::ControlFrameTooLong(header.payload_len));
            }
            if !header.fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            return Ok(());
        }
        let (opcode, so_far) = match (header.opcode, self.message) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Continuation, Some(opcode)) => (opcode, self.message_len),
            (_, Some(_)) => return Err(ProtocolError::InterleavedDataFrame),
            (opcode, None) => {
                self.message_compressed = compressed;
                (opcode, 0)
            }
        };
        let len = so_far.saturating_add(header.payload_len);
        if len > u64::from(self.max_message_bytes) {
            return Err(ProtocolError::MessageTooBig {
                len,
                limit: u64::from(self.max_message_bytes),
            });
        }
        self.message = Some(opcode);
        self.message_len = len;
        Ok(())
    }
}

/// Encodes one frame, header and payload in one buffer, so one encoded server frame can be
/// shared by every receiver of a broadcast. With a `mask` (client frames, §5.3) the payload is
/// masked in the copy; the caller's payload is untouched.
pub fn encode_frame(opcode: OpCode, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    let mut head = [0u8; MAX_HEADER_BYTES];
    let head_len = header.encode(&mut head);
    let mut out = BytesMut::with_capacity(head_len + payload.len());
    out.put_slice(&head[..head_len]);
    out.put_slice(payload);
    if let Some(key) = mask {
        mask::unmask(&mut out[head_len..], key, 0);
    }
    out.freeze()
}

/// Encodes a close frame's payload: the code, then the reason truncated to fit 125 bytes at a
/// character boundary.
pub fn close_payload(code: super::CloseCode, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD as usize - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.0.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits {
        max_message_bytes: 1 << 20,
    };

    /// Runs `input` through a decoder in the given chunks; returns headers and payload bytes
    /// per frame, or the first error.
    fn decode_chunks(
        role: Role,
        limits: Limits,
        chunks: &mut [Vec<u8>],
    ) -> Result<Vec<(FrameHeader, Vec<u8>)>, ProtocolError> {
        let mut decoder = FrameDecoder::new(role, limits);
        let mut frames: Vec<(FrameHeader, Vec<u8>)> = Vec::new();
        for chunk in chunks.iter_mut() {
            let mut pos = 0;
            loop {
                let (used, step) = decoder.step(&mut chunk[pos..])?;
                match step {
                    Step::Need => {
                        assert_eq!(pos + used, chunk.len(), "Need must consume all input");
                        break;
                    }
                    Step::Header(h) => frames.push((h, Vec::new())),
                    Step::Payload { len, .. } => {
                        let frame = frames.last_mut().expect("payload follows a header");
                        frame.1.extend_from_slice(&chunk[pos..pos + len]);
                    }
                }
                pos += used;
            }
        }
        Ok(frames)
    }

    fn masked(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        encode_frame(opcode, fin, payload, Some([0x37, 0xfa, 0x21, 0x3d])).to_vec()
    }

    /// RFC 6455 §5.7's example frames.
    #[test]
    fn rfc_5_7_examples() {
        type Case<'a> = (&'a [u8], Role, OpCode, bool, &'a [u8]);
        let cases: [Case; 5] = [
            (
                b"\x81\x05\x48\x65\x6c\x6c\x6f",
                Role::Client,
                OpCode::Text,
                true,
                b"Hello",
            ),
            (
                b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
                Role::Server,
                OpCode::Text,
                true,
                b"Hello",
            ),
            (
                b"\x01\x03\x48\x65\x6c",
                Role::Client,
                OpCode::Text,
                false,
                b"Hel",
            ),
            (
                b"\x89\x05\x48\x65\x6c\x6c\x6f",
                Role::Client,
                OpCode::Ping,
                true,
                b"Hello",
            ),
            (
                b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
                Role::Server,
                OpCode::Pong,
                true,
                b"Hello",
            ),
        ];
        for (wire, role, opcode, fin, payload) in cases {
            let frames = decode_chunks(role, LIMITS, &mut [wire.to_vec()]).unwrap();
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].0.opcode, opcode);
            assert_eq!(frames[0].0.fin, fin);
            assert_eq!(frames[0].1, payload);
        }
        // The masked example is exactly what our client-side encoder writes.
        assert_eq!(
            masked(OpCode::Text, true, b"Hello"),
            b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
        );
        assert_eq!(
            encode_frame(OpCode::Text, true, b"Hello", None).as_ref(),
            b"\x81\x05\x48\x65\x6c\x6c\x6f"
        );
        // 256 bytes and 64 KiB binary headers from §5.7.
        let h256 = encode_frame(OpCode::Binary, true, &[0; 256], None);
        assert_eq!(&h256[..4], b"\x82\x7E\x01\x00");
        let h64k = encode_frame(OpCode::Binary, true, &[0; 65536], None);
        assert_eq!(&h64k[..10], b"\x82\x7F\x00\x00\x00\x00\x00\x01\x00\x00");
    }

    #[test]
    fn all_three_length_encodings_round_trip() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let wire = masked(OpCode::Binary, true, &payload);
            let frames = decode_chunks(Role::Server, LIMITS, &mut [wire]).unwrap();
            assert_eq!(frames[0].0.payload_len, len as u64);
            assert_eq!(frames[0].1, payload, "len {len}");
        }
    }

    fn first_error(role: Role, wire: &[u8]) -> ProtocolError {
        decode_chunks(role, LIMITS, &mut [wire.to_vec()]).unwrap_err()
    }

    #[test]
    fn section_5_rules_map_to_their_close_codes() {
        use ProtocolError as E;
        let close = |e: &E| e.close_code().0;
        let cases: Vec<(Vec<u8>, E, u16)> = vec![
            (b"\x81\x05Hello".to_vec(), E::UnmaskedClientFrame, 1002),
            (
                {
                    let mut f = masked(OpCode::Text, true, b"x");
                    f[0] |= 0x40;
                    f
                },
                E::ReservedBits(4),
                1002,
            ),
            (
                {
                    let mut f = masked(OpCode::Text, true, b"x");
                    f[0] = 0x83;
                    f
                },
                E::ReservedOpCode(3),
                1002,
            ),
            (
                {
                    let mut f = masked(OpCode::Text, true, b"x");
                    f[0] = 0x8B;
                    f
                },
                E::ReservedOpCode(0xB),
                1002,
            ),
            (
                masked(OpCode::Ping, true, &[0; 126]),
                E::ControlFrameTooLong(126),
                1002,
            ),
            (
                masked(OpCode::Ping, false, b"x"),
                E::FragmentedControlFrame,
                1002,
            ),
            (
                masked(OpCode::Continuation, true, b"x"),
                E::UnexpectedContinuation,
                1002,
            ),
            (
                [
                    masked(OpCode::Text, false, b"a"),
                    masked(OpCode::Binary, true, b"b"),
                ]
                .concat(),
                E::InterleavedDataFrame,
                1002,
            ),
        ];
        for (wire, expected, code) in cases {
            let err = first_error(Role::Server, &wire);
            assert_eq!(err, expected);
            assert_eq!(close(&err), code);
        }
        assert_eq!(
            first_error(Role::Client, &masked(OpCode::Text, true, b"x")),
            E::MaskedServerFrame
        );
        let mut huge = b"\x82\xFF".to_vec();
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(first_error(Role::Server, &huge), E::LengthOverflow);
    }

    #[test]
    fn message_limit_counts_across_fragments_before_any_payload() {
        let limits = Limits {
            max_message_bytes: 100,
        };
        // Exactly the limit, in two fragments, passes.
        let ok = [
            masked(OpCode::Text, false, &[b'a'; 60]),
            masked(OpCode::Continuation, true, &[b'a'; 40]),
        ]
        .concat();
        assert!(decode_chunks(Role::Server, limits, &mut [ok]).is_ok());
        // One byte over fails on the second header, with only its header supplied.
        let first = masked(OpCode::Binary, false, &[0; 60]);
        let second = masked(OpCode::Continuation, true, &[0; 41]);
        let header_only = [first, second[..6].to_vec()].concat();
        assert_eq!(
            decode_chunks(Role::Server, limits, &mut [header_only]).unwrap_err(),
            ProtocolError::MessageTooBig {
                len: 101,
                limit: 100
            }
        );
        // A declared 16 EiB-ish frame fails from its 14 header bytes, before any allocation.
        let mut big = b"\x82\xFF".to_vec();
        big.extend_from_slice(&(1u64 << 40).to_be_bytes());
        big.extend_from_slice(&[1, 2, 3, 4]);
        let err = decode_chunks(Role::Server, limits, &mut [big]).unwrap_err();
        assert_eq!(err.close_code().0, 1009);
    }

    #[test]
    fn control_frames_may_interleave_fragments() {
        let wire = [
            masked(OpCode::Text, false, b"Hel"),
            masked(OpCode::Ping, true, b"p"),
            masked(OpCode::Continuation, true, b"lo"),
        ]
        .concat();
        let frames = decode_chunks(Role::Server, LIMITS, &mut [wire]).unwrap();
        let ops: Vec<OpCode> = frames.iter().map(|f| f.0.opcode).collect();
        assert_eq!(ops, [OpCode::Text, OpCode::Ping, OpCode::Continuation]);
    }

    /// A frame sequence built from arbitrary (opcode, fin, payload) choices that obey §5.4.
    fn valid_stream() -> impl Strategy<Value = Vec<u8>> {
        let frame = (
            0u8..4,
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<[u8; 4]>(),
        );
        proptest::collection::vec(frame, 0..12).prop_map(|frames| {
            let mut out = Vec::new();
            let mut in_message = false;
            for (kind, fin, payload, key) in frames {
                let (opcode, fin, payload) = match kind {
                    0 => (OpCode::Ping, true, &payload[..payload.len().min(125)]),
                    1 if in_message => (OpCode::Continuation, fin, &payload[..]),
                    _ if in_message => (OpCode::Continuation, fin, &payload[..]),
                    2 => (OpCode::Binary, fin, &payload[..]),
                    _ => (OpCode::Text, fin, &payload[..]),
                };
                if !opcode.is_control() {
                    in_message = !fin;
                }
                out.extend_from_slice(&encode_frame(opcode, fin, payload, Some(key)));
            }
            out
        })
    }

    /// RFC 6455 §5.2 read straight off one whole buffer, frame by frame, with none of the
    /// decoder's machinery (no spill, no state enum, no SIMD unmasking): the property tests
    /// compare the decoder with this, not with itself. Returns the frames seen (the last may
    /// be incomplete) and whether the stream broke a rule of §5 or the message limit.
    fn reference_decode(
        role: Role,
        limits: Limits,
        wire: &[u8],
    ) -> (Vec<(FrameHeader, Vec<u8>)>, bool) {
        let mut frames = Vec::new();
        let mut at = 0;
        let mut message: Option<OpCode> = None;
        let mut total = 0u64;
        loop {
            let rest = &wire[at..];
            if rest.len() < 2 {
                return (frames, false);
            }
            let opcode = match rest[0] & 0x0f {
                0 => OpCode::Continuation,
                1 => OpCode::Text,
                2 => OpCode::Binary,
                8 => OpCode::Close,
                9 => OpCode::Ping,
                10 => OpCode::Pong,
                _ => return (frames, true),
            };
            let fin = rest[0] & 0x80 != 0;
            let rsv = (rest[0] >> 4) & 0x7;
            let masked = rest[1] & 0x80 != 0;
            let (len, mut header_len) = match rest[1] & 0x7f {
                126 if rest.len() < 4 => return (frames, false),
                126 => (u64::from(rest[2]) << 8 | u64::from(rest[3]), 4),
                127 if rest.len() < 10 => return (frames, false),
                127 => {
                    let len = rest[2..10]
                        .iter()
                        .fold(0u64, |acc, b| acc << 8 | u64::from(*b));
                    if len >= 1 << 63 {
                        return (frames, true);
                    }
                    (len, 10)
                }
                short => (u64::from(short), 2),
            };
            let mask = if masked {
                if rest.len() < header_len + 4 {
                    return (frames, false);
                }
                let key = [
                    rest[header_len],
                    rest[header_len + 1],
                    rest[header_len + 2],
                    rest[header_len + 3],
                ];
                header_len += 4;
                Some(key)
            } else {
                None
            };
            if masked != (role == Role::Server) || rsv != 0 {
                return (frames, true);
            }
            if matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong) {
                if len > 125 || !fin {
                    return (frames, true);
                }
            } else {
                match (opcode, message) {
                    (OpCode::Continuation, None) | (OpCode::Text | OpCode::Binary, Some(_)) => {
                        return (frames, true)
                    }
                    (OpCode::Continuation, Some(_)) => total = total.saturating_add(len),
                    (first, _) => {
                        message = Some(first);
                        total = len;
                    }
                }
                if total > limits.max_message_bytes {
                    return (frames, true);
                }
                if fin {
                    message = None;
                }
            }
            let body = &rest[header_len..];
            let take = body.len().min(usize::try_from(len).unwrap_or(usize::MAX));
            let payload = (0..take)
                .map(|i| body[i] ^ mask.map_or(0, |k| k[i % 4]))
                .collect();
            frames.push((
                FrameHeader {
                    fin,
                    rsv,
                    opcode,
                    mask,
                    payload_len: len,
                },
                payload,
            ));
            if (take as u64) < len {
                return (frames, false);
            }
            at += header_len + take;
        }
    }

    /// The decoder, fed in `chunks`, agrees with [`reference_decode`] on the whole stream.
    fn agrees_with_reference(
        role: Role,
        limits: Limits,
        stream: &[u8],
        cuts: &[prop::sample::Index],
    ) -> Result<(), TestCaseError> {
        let (expected, failed) = reference_decode(role, limits, stream);
        match decode_chunks(role, limits, &mut split(stream, cuts)) {
            Ok(frames) => {
                prop_assert!(
                    !failed,
                    "the reference found a violation the decoder accepted"
                );
                prop_assert_eq!(frames, expected);
            }
            Err(error) => prop_assert!(
                failed,
                "the decoder failed ({}) where the reference did not",
                error
            ),
        }
        Ok(())
    }

    fn split(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        points
            .windows(2)
            .map(|w| bytes[w[0]..w[1]].to_vec())
            .collect()
    }

    proptest! {
        #[test]
        fn any_split_decodes_like_the_whole(stream in valid_stream(),
                                            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20)) {
            let whole = decode_chunks(Role::Server, LIMITS, &mut [stream.clone()]).unwrap();
            let pieces = decode_chunks(Role::Server, LIMITS, &mut split(&stream, &cuts)).unwrap();
            prop_assert_eq!(whole, pieces);
        }

        #[test]
        fn byte_at_a_time_decodes_like_the_whole(stream in valid_stream()) {
            let whole = decode_chunks(Role::Server, LIMITS, &mut [stream.clone()]).unwrap();
            let mut bytes: Vec<Vec<u8>> = stream.iter().map(|b| vec![*b]).collect();
            prop_assert_eq!(whole, decode_chunks(Role::Server, LIMITS, &mut bytes).unwrap());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                       cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
                                       role in prop_oneof![Just(Role::Server), Just(Role::Client)]) {
            let small = Limits { max_message_bytes: 200 };
            if let Ok(frames) = decode_chunks(role, small, &mut split(&bytes, &cuts)) {
                for (header, payload) in frames {
                    prop_assert!(header.payload_len <= 200);
                    prop_assert!(payload.len() as u64 <= header.payload_len);
                }
            }
        }

        #[test]
        fn valid_streams_decode_as_the_reference_reads_them(stream in valid_stream(),
                                            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20)) {
            agrees_with_reference(Role::Server, LIMITS, &stream, &cuts)?;
        }

        #[test]
        fn corrupted_streams_decode_as_the_reference_reads_them(stream in valid_stream(),
                                            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
                                            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
                                            limit in 0u64..600) {
            let mut stream = stream;
            if !stream.is_empty() {
                for (at, byte) in flips {
                    let at = at.index(stream.len());
                    stream[at] ^= byte;
                }
            }
            agrees_with_reference(Role::Server, Limits { max_message_bytes: limit }, &stream, &cuts)?;
        }

        #[test]
        fn arbitrary_bytes_decode_as_the_reference_reads_them(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                       cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
                                       role in prop_oneof![Just(Role::Server), Just(Role::Client)]) {
            agrees_with_reference(role, Limits { max_message_bytes: 200 }, &bytes, &cuts)?;
        }

        #[test]
        fn header_encode_parse_round_trip(fin: bool, opcode in prop_oneof![Just(OpCode::Text), Just(OpCode::Binary), Just(OpCode::Continuation)],
                                          mask: Option<[u8; 4]>, payload_len in 0u64..(1 << 62)) {
            let header = FrameHeader { fin, rsv: 0, opcode, mask, payload_len };
            let mut out = [0; MAX_HEADER_BYTES];
            let n = header.encode(&mut out);
            prop_assert_eq!(FrameHeader::parse(&out[..n]).unwrap(), Some((header, n)));
            prop_assert_eq!(FrameHeader::parse(&out[..n - 1]).unwrap(), None);
        }
    }
}
