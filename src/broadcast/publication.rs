//! The unit of fan-out: a [`Publication`] is one publish to one topic, with its position in
//! the topic's stream when history is on. It is made once per publish and shared by every
//! worker (an `Arc`), together with its plain WebSocket frame, encoded once when it is made.
//! Other wire formats (a compressed frame, an SSE event) are made from its opcode and payload
//! by each worker that needs them, at most once per worker (see `driver::EncodedMessage`), so
//! nothing ever re-parses a frame the server encoded itself.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::protocol::frame::encode_frame;
use crate::protocol::OpCode;

/// The longest epoch, in bytes.
pub const MAX_EPOCH_BYTES: usize = 16;

/// The name of one incarnation of a topic's stream: a short random string made when the
/// stream is created. A restart, or a stream evicted and made again, has a new epoch, so a
/// position from before it can never be mistaken for one after.
///
/// At most [`MAX_EPOCH_BYTES`] bytes of `A-Z a-z 0-9 _ -`; held inline, so it is `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch {
    bytes: [u8; MAX_EPOCH_BYTES],
    len: u8,
}

/// Why a string is not an [`Epoch`] or a [`Position`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PositionError {
    /// The epoch is empty, too long, or has a byte outside `A-Z a-z 0-9 _ -`.
    #[error("an epoch is 1 to 16 characters of A-Z a-z 0-9 _ -")]
    Epoch,
    /// The text is not `EPOCH:OFFSET` with a decimal `u64` offset.
    #[error("a position is EPOCH:OFFSET, with a decimal offset")]
    Position,
}

impl Epoch {
    /// A new random epoch: 8 characters of lowercase base32 (40 bits), from the system's
    /// random source. Two streams of one topic get the same epoch with probability 2^-40.
    pub fn random() -> Self {
        use ring::rand::SecureRandom;
        let mut seed = [0u8; 5];
        if ring::rand::SystemRandom::new().fill(&mut seed).is_err() {
            // No system randomness: the time still differs between two incarnations.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed.copy_from_slice(&nanos.to_le_bytes()[..5]);
        }
        Self::from_bits(u64::from_le_bytes([
            seed[0], seed[1], seed[2], seed[3], seed[4], 0, 0, 0,
        ]))
    }

    /// The epoch whose text is the low 40 bits of `bits` in lowercase base32 (for tests and
    /// for sources that derive their epoch from a number).
    pub fn from_bits(bits: u64) -> Self {
        const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut bytes = [0u8; MAX_EPOCH_BYTES];
        for (i, byte) in bytes[..8].iter_mut().enumerate() {
            *byte = ALPHABET[((bits >> (5 * i)) & 31) as usize];
        }
        Self { bytes, len: 8 }
    }

    /// The epoch of a stream whose incarnation this node does not know yet: a broker's log
    /// before the node has heard of the topic. It is empty, so no text parses to it, and a
    /// cursor at it is no cursor (see `Broadcast::advance`).
    pub const UNKNOWN: Self = Self {
        bytes: [0; MAX_EPOCH_BYTES],
        len: 0,
    };

    /// Whether this is [`Epoch::UNKNOWN`].
    pub fn is_unknown(&self) -> bool {
        self.len == 0
    }

    /// The epoch as text.
    pub fn as_str(&self) -> &str {
        // Only bytes of the ASCII alphabet are ever stored (see `from_str` and `from_bits`).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl FromStr for Epoch {
    type Err = PositionError;

    fn from_str(text: &str) -> Result<Self, PositionError> {
        let ok = !text.is_empty()
            && text.len() <= MAX_EPOCH_BYTES
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(PositionError::Epoch);
        }
        let mut bytes = [0u8; MAX_EPOCH_BYTES];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Ok(Self {
            bytes,
            len: text.len() as u8,
        })
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({})", self.as_str())
    }
}

/// A publication's place in its topic's stream: the stream's epoch and the offset under it
/// (from 1; offset 0 is the position of a stream before its first publication). Written
/// `EPOCH:OFFSET`, as in an SSE event's `id:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The stream's incarnation.
    pub epoch: Epoch,
    /// The publication's number in it.
    pub offset: u64,
}

impl Position {
    /// A head not known (nothing of the topic read yet): told as a gap's head, each worker
    /// resets its subscribers where its own cursor stands.
    pub const UNKNOWN: Self = Self {
        epoch: Epoch::UNKNOWN,
        offset: 0,
    };
}

impl FromStr for Position {
    type Err = PositionError;

    fn from_str(text: &str) -> Result<Self, PositionError> {
        let (epoch, offset) = text.rsplit_once(':').ok_or(PositionError::Position)?;
        let offset = if !offset.is_empty() && offset.bytes().all(|b| b.is_ascii_digit()) {
            offset.parse().map_err(|_| PositionError::Position)?
        } else {
            return Err(PositionError::Position);
        };
        Ok(Self {
            epoch: epoch.parse()?,
            offset,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// Makes the payload subscribers get from the payload published and the position the
/// publish was given: a client protocol's wire format that carries positions (Pusher's
/// `"offset"` and `"epoch"` fields). Chosen by the publishing handler and run once per
/// publish, on the thread that gives it its position, before the frame is encoded, so every
/// worker and every subscriber (and a replay from history) shares its result.
pub type Stamp = fn(payload: &[u8], position: Position) -> Bytes;

/// One publish to one topic: what every worker fans out.
#[derive(Debug)]
pub struct Publication {
    topic: Arc<str>,
    opcode: OpCode,
    payload: Bytes,
    /// The payload as published, when a [`Stamp`] made `payload` from it.
    published: Option<Bytes>,
    position: Option<Position>,
    /// The plain WebSocket frame, encoded once for every worker and every subscriber.
    frame: Bytes,
    /// The one subscriber that does not get it (its sender), set before it is shared.
    except: OnceLock<super::Peer>,
    /// Only the stream's head, with nothing to deliver (see [`Publication::head_only`]).
    head_only: bool,
    /// With `head_only`: something of the topic was lost before the head, though the
    /// positions show no gap (see [`Publication::gap_at`]).
    gap: bool,
    /// The topic's previous position, where positions are not consecutive per topic (see
    /// [`Publication::follow`]).
    previous: OnceLock<u64>,
}

impl Publication {
    /// A publication of `payload` to `topic`, at `position` when the topic has a stream; its
    /// WebSocket frame is encoded here, once.
    pub fn new(
        topic: Arc<str>,
        opcode: OpCode,
        payload: Bytes,
        position: Option<Position>,
    ) -> Arc<Self> {
        Self::stamped(topic, opcode, payload, position, None)
    }

    /// [`new`](Self::new), with the payload subscribers get made by `stamp` from `payload`
    /// and `position` when both are given (the broker link still carries `payload`, as
    /// published: another node gives it a position of its own, or none).
    pub fn stamped(
        topic: Arc<str>,
        opcode: OpCode,
        payload: Bytes,
        position: Option<Position>,
        stamp: Option<Stamp>,
    ) -> Arc<Self> {
        let (payload, published) = match (stamp, position) {
            (Some(stamp), Some(position)) => (stamp(&payload, position), Some(payload)),
            _ => (payload, None),
        };
        let frame = encode_frame(opcode, true, &payload, None);
        Arc::new(Self {
            topic,
            opcode,
            payload,
            published,
            position,
            frame,
            except: OnceLock::new(),
            head_only: false,
            gap: false,
            previous: OnceLock::new(),
        })
    }

    /// A publication that closes every subscriber of `topic` with `code` and `reason`
    /// instead of sending them anything (its opcode is [`OpCode::Close`], its payload the
    /// close frame's body). It never enters history; the broker link carries it as kind
    /// `close`.
    pub(crate) fn closing(
        topic: Arc<str>,
        code: crate::protocol::CloseCode,
        reason: &str,
    ) -> Arc<Self> {
        let mut body = code.0.to_be_bytes().to_vec();
        body.extend_from_slice(reason.as_bytes());
        Self::new(topic, OpCode::Close, Bytes::from(body), None)
    }

    /// For a [`closing`](Self::closing) publication, its code and reason.
    pub(crate) fn close_reason(&self) -> Option<(crate::protocol::CloseCode, &str)> {
        if self.opcode != OpCode::Close || self.payload.len() < 2 {
            return None;
        }
        let code =
            crate::protocol::CloseCode(u16::from_be_bytes([self.payload[0], self.payload[1]]));
        Some((code, std::str::from_utf8(&self.payload[2..]).unwrap_or("")))
    }

    /// Makes `peer` the subscriber this publication skips. Called once, before the
    /// publication reaches any mailbox; a later call changes nothing.
    pub(crate) fn exclude(&self, peer: super::Peer) {
        let _ = self.except.set(peer);
    }

    /// Says that the topic's previous publication is at offset `previous` (0: none), for a
    /// broker whose positions are not consecutive per topic (NATS JetStream's stream
    /// sequences): the workers then look for a gap before this one's position from there,
    /// not from `offset - 1`. Called once, before the publication is shared.
    pub(crate) fn follow(&self, previous: u64) {
        let _ = self.previous.set(previous);
    }

    /// The offset of the topic's previous publication: as [`follow`](Self::follow) said, or
    /// the one before this one's.
    pub(crate) fn previous(&self) -> Option<u64> {
        self.previous
            .get()
            .copied()
            .or_else(|| self.position.map(|p| p.offset.saturating_sub(1)))
    }

    /// The subscriber this publication skips, if any (a connection of any node: only its
    /// own node's worker skips it).
    pub(crate) fn except(&self) -> Option<super::Peer> {
        self.except.get().copied()
    }

    /// No message, only news that `topic`'s stream has reached `head`: a broker's log sends
    /// it to the workers when it learns the head other than from a publication (a topic's
    /// history loaded, a loss found by a head check), so that each worker brings its
    /// subscribers there, from history or with a reset.
    pub fn head_only(topic: Arc<str>, head: Position) -> Arc<Self> {
        Self::head(topic, head, false)
    }

    /// A [`head_only`](Self::head_only) that also says a publication of `topic` was lost to
    /// this node though no position is missing: one that never entered the topic's stream
    /// here (a Kafka record produced to another partition than the topic's, by a node that
    /// counted the partitions otherwise). Each worker brings its subscribers to `head`, then
    /// tells them they missed something, as for a gap it cannot fill.
    pub(crate) fn gap_at(topic: Arc<str>, head: Position) -> Arc<Self> {
        Self::head(topic, head, true)
    }

    fn head(topic: Arc<str>, head: Position, gap: bool) -> Arc<Self> {
        Arc::new(Self {
            topic,
            opcode: OpCode::Binary,
            payload: Bytes::new(),
            position: Some(head),
            frame: Bytes::new(),
            except: OnceLock::new(),
            head_only: true,
            gap,
            published: None,
            previous: OnceLock::new(),
        })
    }

    /// Whether this is only a head (see [`Publication::head_only`]): nothing to deliver.
    pub fn is_head_only(&self) -> bool {
        self.head_only
    }

    /// Whether this head also reports a loss (see [`Publication::gap_at`]).
    pub(crate) fn is_gap(&self) -> bool {
        self.gap
    }

    /// The topic published to.
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    /// [`OpCode::Text`] or [`OpCode::Binary`].
    pub fn opcode(&self) -> OpCode {
        self.opcode
    }

    /// The message, as subscribers get it.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The message as it was published, before any [`Stamp`]: what the broker link carries.
    pub fn published(&self) -> &Bytes {
        self.published.as_ref().unwrap_or(&self.payload)
    }

    /// Its place in the topic's stream, when history is on.
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// The plain WebSocket frame (FIN set, unmasked, uncompressed).
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// Bytes this publication holds (what the mailbox and history budgets count).
    pub fn size(&self) -> usize {
        // The payload is a slice of its own buffer; the frame is a copy with its header.
        self.payload.len()
            + self.published.as_ref().map_or(0, Bytes::len)
            + self.frame.len()
            + self.topic.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FrameHeader;

    #[test]
    fn positions_round_trip_through_text() {
        let position = Position {
            epoch: Epoch::from_bits(0x12_3456_789a),
            offset: 42,
        };
        let text = position.to_string();
        assert_eq!(text.parse::<Position>(), Ok(position));
        assert_eq!(text.split(':').next().map(str::len), Some(8));
    }

    #[test]
    fn malformed_positions_are_refused() {
        for bad in [
            "",
            ":",
            "abc",
            "abc:",
            ":12",
            "abc:-1",
            "abc:+1",
            "abc:1x",
            "a b:1",
            "abcdefghijklmnopq:1",
            "abc:18446744073709551616",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            "x-y_Z9:18446744073709551615".parse::<Position>(),
            Ok(Position {
                epoch: "x-y_Z9".parse().unwrap(),
                offset: u64::MAX
            })
        );
    }

    #[test]
    fn random_epochs_differ_and_are_valid_text() {
        let a = Epoch::random();
        let b = Epoch::random();
        assert_ne!(a, b, "2^-40 odds");
        assert_eq!(a.as_str().parse::<Epoch>(), Ok(a));
    }

    #[test]
    fn the_frame_is_encoded_once_and_matches_the_payload() {
        let publication = Publication::new(
            Arc::from("t"),
            OpCode::Text,
            Bytes::from_static(b"hello"),
            None,
        );
        let frame = publication.frame();
        let (header, used) = FrameHeader::parse(frame).unwrap().unwrap();
        assert!(header.fin);
        assert_eq!(header.opcode, OpCode::Text);
        assert_eq!(&frame[used..], b"hello");
    }

    #[test]
    fn a_stamp_makes_the_payload_and_frame_once_a_position_is_given() {
        fn stamp(payload: &[u8], position: Position) -> Bytes {
            let mut out = payload.to_vec();
            out.extend_from_slice(format!("@{position}").as_bytes());
            Bytes::from(out)
        }
        let position = Position {
            epoch: Epoch::from_bits(1),
            offset: 7,
        };
        let stamped = Publication::stamped(
            Arc::from("t"),
            OpCode::Text,
            Bytes::from_static(b"hi"),
            Some(position),
            Some(stamp),
        );
        assert_eq!(&stamped.payload()[..], format!("hi@{position}").as_bytes());
        assert_eq!(&stamped.published()[..], b"hi");
        let (_, used) = FrameHeader::parse(stamped.frame()).unwrap().unwrap();
        assert_eq!(&stamped.frame()[used..], &stamped.payload()[..]);
        // Without a position there is nothing to stamp.
        let plain = Publication::stamped(
            Arc::from("t"),
            OpCode::Text,
            Bytes::from_static(b"hi"),
            None,
            Some(stamp),
        );
        assert_eq!(&plain.payload()[..], b"hi");
        assert_eq!(&plain.published()[..], b"hi");
    }
}
