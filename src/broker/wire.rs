//! What crosses the broker: the envelope around each message (version 1), and the sequence
//! numbers a receiving node checks for gaps.
//!
//! ```text
//! UC1 <kind> <node> <seq>\n<payload>
//! ```
//!
//! `kind` is `text` or `binary` (the WebSocket opcode), `close` (close the topic's
//! subscribers; the payload is a close code, 2 bytes, and a UTF-8 reason), or `base64` (a
//! binary payload written as base64, for a person at a terminal); `node` is the publishing
//! node's id (16 hex digits) and
//! `seq` its count of publishes to this topic, from 1. A publish that skips one connection
//! (a Pusher client event, or an API event with a `socket_id`) adds a fifth field,
//! `except=NODE.WORKER.KEY.GENERATION` in decimal: the node that holds the connection skips
//! it, wherever the publish was made. A hand-written message may leave out
//! `node` and `seq` (`UC1 binary\n...`), and one that does not start with `UC1 ` at all is
//! delivered as it is: a text message if it is UTF-8, else a binary one. So
//! `redis-cli PUBLISH uringcast:room-a hello` reaches `ws://HOST/room-a` as the text `hello`.
//!
//! With history on a broker that assigns positions (the Redis function of `redis.rs`), the
//! broker writes the envelope itself, with the publication's position in place of the node and
//! sequence:
//!
//! ```text
//! UC1 <kind> @<epoch>:<offset>\n<payload>
//! ```
//!
//! and `kind` may then also be `auto`: text if the payload is UTF-8, else binary (what a
//! backend gets when it does not say).
//!
//! A broker whose positions are not consecutive per topic (NATS JetStream: stream sequences,
//! shared by every subject) names the topic's previous position after it, `prev=<offset>`
//! (0: none), so that a node can tell a missing publication from a gap in the numbering:
//!
//! ```text
//! UC1 <kind> @<epoch>:<offset> prev=<offset>\n<payload>
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

use crate::broadcast::{Peer, Position};
use crate::protocol::OpCode;

/// The first bytes of every envelope uringcast writes.
pub(crate) const MAGIC: &[u8] = b"UC1 ";
/// An envelope's first line, at most: the magic, a kind, 16 hex digits, a u64, an `except`
/// field (four decimal numbers) and separators.
const MAX_HEAD: usize = 128;

/// A message as a broker carries it, decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Envelope {
    pub(crate) opcode: OpCode,
    /// The publishing node and its sequence number for the topic, when the message has them.
    pub(crate) origin: Option<(u64, u64)>,
    /// The publication's position in its topic's stream, when the broker assigned one.
    pub(crate) position: Option<Position>,
    pub(crate) payload: Bytes,
    /// The one connection (of whichever node holds it) the message skips.
    pub(crate) except: Option<Peer>,
    /// With a position: the topic's previous position, where the broker's positions are not
    /// consecutive per topic (`prev=`).
    pub(crate) previous: Option<u64>,
}

/// Why a message from the broker is not delivered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("an envelope with a malformed first line")]
    Head,
    #[error("an envelope of kind {0:?}, which version 1 does not know")]
    Kind(String),
    #[error("a base64 payload that does not decode")]
    Base64,
    #[error("a text payload that is not UTF-8")]
    Utf8,
}

/// Writes one envelope: the head, then the payload (one copy, into the broker's buffer).
#[cfg(test)]
pub(crate) fn encode(opcode: OpCode, node: u64, seq: u64, payload: &[u8]) -> Bytes {
    encode_except(opcode, node, seq, payload, None)
}

/// [`encode`], with the connection the message skips, if any.
pub(crate) fn encode_except(
    opcode: OpCode,
    node: u64,
    seq: u64,
    payload: &[u8],
    except: Option<Peer>,
) -> Bytes {
    let kind = match opcode {
        OpCode::Text => "text",
        OpCode::Close => "close",
        _ => "binary",
    };
    let head = match except {
        Some(p) => format!(
            "UC1 {kind} {node:016x} {seq} except={}.{}.{}.{}\n",
            p.node, p.worker, p.conn.key, p.conn.generation
        ),
        None => format!("UC1 {kind} {node:016x} {seq}\n"),
    };
    let mut out = BytesMut::with_capacity(head.len() + payload.len());
    out.put_slice(head.as_bytes());
    out.put_slice(payload);
    out.freeze()
}

/// Reads one message from the broker (the payload is a slice of `message`, not a copy, but
/// for `base64`).
pub(crate) fn decode(message: Bytes) -> Result<Envelope, WireError> {
    if !message.starts_with(MAGIC) {
        let opcode = if simdutf8::basic::from_utf8(&message).is_ok() {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        return Ok(Envelope {
            opcode,
            origin: None,
            position: None,
            payload: message,
            except: None,
            previous: None,
        });
    }
    let end = message
        .iter()
        .take(MAX_HEAD)
        .position(|&b| b == b'\n')
        .ok_or(WireError::Head)?;
    let head = std::str::from_utf8(&message[MAGIC.len()..end]).map_err(|_| WireError::Head)?;
    let mut fields = head.split(' ');
    let kind = fields.next().ok_or(WireError::Head)?;
    let mut position = None;
    let mut previous = None;
    let (origin, except) = match (fields.next(), fields.next(), fields.next(), fields.next()) {
        (None, _, _, _) => (None, None),
        // A position from the broker's log (`@EPOCH:OFFSET`), and the skipped connection.
        // `prev=` first, then `except=`, each at most once.
        (Some(at), extra, more, None) if at.starts_with('@') => {
            position = Some(at[1..].parse().map_err(|_| WireError::Head)?);
            let mut except = None;
            for field in [extra, more].into_iter().flatten() {
                match field.strip_prefix("prev=") {
                    Some(value) if previous.is_none() && except.is_none() => {
                        previous = Some(value.parse().map_err(|_| WireError::Head)?);
                    }
                    Some(_) => return Err(WireError::Head),
                    None if except.is_none() => {
                        except = Some(parse_except(field).ok_or(WireError::Head)?);
                    }
                    None => return Err(WireError::Head),
                }
            }
            (None, except)
        }
        (Some(node), Some(seq), except, None) => (
            Some((
                u64::from_str_radix(node, 16).map_err(|_| WireError::Head)?,
                seq.parse().map_err(|_| WireError::Head)?,
            )),
            match except {
                Some(field) => Some(parse_except(field).ok_or(WireError::Head)?),
                None => None,
            },
        ),
        _ => return Err(WireError::Head),
    };
    let payload = message.slice(end + 1..);
    let (opcode, payload) = match kind {
        "text" => {
            simdutf8::basic::from_utf8(&payload).map_err(|_| WireError::Utf8)?;
            (OpCode::Text, payload)
        }
        "binary" => (OpCode::Binary, payload),
        // Closes the topic's subscribers: a close code (2 bytes) and a UTF-8 reason.
        "close" => {
            if payload.len() < 2 || simdutf8::basic::from_utf8(&payload[2..]).is_err() {
                return Err(WireError::Head);
            }
            (OpCode::Close, payload)
        }
        "auto" if position.is_some() => {
            if simdutf8::basic::from_utf8(&payload).is_ok() {
                (OpCode::Text, payload)
            } else {
                (OpCode::Binary, payload)
            }
        }
        "base64" => {
            let text: Vec<u8> = payload
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| WireError::Base64)?;
            (OpCode::Binary, Bytes::from(bytes))
        }
        other => return Err(WireError::Kind(other.chars().take(16).collect())),
    };
    Ok(Envelope {
        opcode,
        origin,
        position,
        payload,
        except,
        previous,
    })
}

/// `except=NODE.WORKER.KEY.GENERATION`, the field [`parse_except`] reads.
pub(crate) fn except_field(p: &Peer) -> String {
    format!("except={}", peer_text(p))
}

/// `NODE.WORKER.KEY.GENERATION`: a connection as a stream's header carries it (JetStream's
/// `Uc-Except`, Kafka's `uringcast-except`), read back by [`parse_peer`].
pub(crate) fn peer_text(p: &Peer) -> String {
    format!(
        "{}.{}.{}.{}",
        p.node, p.worker, p.conn.key, p.conn.generation
    )
}

/// `except=NODE.WORKER.KEY.GENERATION`.
fn parse_except(field: &str) -> Option<Peer> {
    parse_peer(field.strip_prefix("except=")?)
}

/// `NODE.WORKER.KEY.GENERATION`, in decimal.
pub(crate) fn parse_peer(text: &str) -> Option<Peer> {
    let mut parts = text.split('.');
    let node = parts.next()?.parse().ok()?;
    let worker = parts.next()?.parse().ok()?;
    let key = parts.next()?.parse().ok()?;
    let generation = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(Peer::new(
        node,
        worker,
        crate::driver::ConnId { key, generation },
    ))
}

/// What a receiving node makes of a message's sequence number.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sequence {
    /// The next one, or the first seen from that node on that topic.
    InOrder,
    /// This many were skipped: lost between the publisher and here.
    Gap(u64),
    /// Seen before (or older than one seen): not delivered again.
    Repeat,
}

/// The last sequence number seen per publishing node and topic, for the topics this node
/// holds. Bounded: past [`Sequences::MAX_ENTRIES`] (node, topic) pairs it starts over (gaps in
/// the next message of each pair then go unseen, which is counted as a reset). Keyed by topic
/// first, so a message looks its topic up without a new reference to it, and forgetting a
/// topic is one removal, not a scan of every pair.
#[derive(Debug, Default)]
pub(crate) struct Sequences {
    last: HashMap<Arc<str>, HashMap<u64, u64>>,
    /// Pairs held, over all topics.
    entries: usize,
}

impl Sequences {
    /// Pairs of (node, topic) remembered at most.
    pub(crate) const MAX_ENTRIES: usize = 1 << 16;

    /// Checks and records `seq` from `node` on `topic`.
    pub(crate) fn check(&mut self, node: u64, topic: &Arc<str>, seq: u64) -> Sequence {
        if let Some(last) = self.last.get_mut(&**topic).and_then(|n| n.get_mut(&node)) {
            return match seq.checked_sub(*last) {
                Some(1) => {
                    *last = seq;
                    Sequence::InOrder
                }
                Some(0) | None => Sequence::Repeat,
                Some(ahead) => {
                    *last = seq;
                    Sequence::Gap(ahead - 1)
                }
            };
        }
        if self.entries >= Self::MAX_ENTRIES {
            self.last.clear();
            self.entries = 0;
        }
        self.last
            .entry(Arc::clone(topic))
            .or_default()
            .insert(node, seq);
        self.entries += 1;
        Sequence::InOrder
    }

    /// Forgets a topic this node no longer subscribes to: after a resubscription its first
    /// message starts over, rather than count what was sent while nobody here listened.
    pub(crate) fn forget(&mut self, topic: &str) {
        if let Some(nodes) = self.last.remove(topic) {
            self.entries -= nodes.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_may_name_the_previous_one() {
        let wire = Bytes::from_static(b"UC1 auto @1765000000000000:12 prev=9\nhi");
        let envelope = decode(wire).unwrap();
        assert_eq!(envelope.position.map(|p| p.offset), Some(12));
        assert_eq!(envelope.previous, Some(9));
        assert_eq!(envelope.except, None);
        assert_eq!(envelope.opcode, OpCode::Text);
        let bad = Bytes::from_static(b"UC1 text @1765000000000000:12 prev=x\nhi");
        assert_eq!(decode(bad), Err(WireError::Head));
    }

    #[test]
    fn an_envelope_round_trips_text_and_binary() {
        for (opcode, payload) in [
            (OpCode::Text, &b"hello"[..]),
            (OpCode::Binary, &[0, 1, 2, b'\n', 255][..]),
            (OpCode::Text, &b""[..]),
        ] {
            let wire = encode(opcode, 0xdead_beef, 42, payload);
            assert_eq!(
                decode(wire).unwrap(),
                Envelope {
                    opcode,
                    origin: Some((0xdead_beef, 42)),
                    position: None,
                    payload: Bytes::copy_from_slice(payload),
                    except: None,
                    previous: None,
                }
            );
        }
    }

    #[test]
    fn a_logged_position_names_its_previous_and_the_skipped_connection() {
        let both = decode(Bytes::from_static(
            b"UC1 text @k0-abc:12 prev=9 except=7.1.2.3\nhi",
        ))
        .unwrap();
        assert_eq!(both.previous, Some(9));
        assert_eq!(
            both.except.map(|p| peer_text(&p)).as_deref(),
            Some("7.1.2.3")
        );
        assert_eq!(
            parse_peer("7.1.2.3").map(|p| peer_text(&p)).as_deref(),
            Some("7.1.2.3")
        );
        for bad in [
            &b"UC1 text @k0-abc:12 except=7.1.2.3 prev=9\nx"[..],
            b"UC1 text @k0-abc:12 prev=9 prev=9\nx",
            b"UC1 text @k0-abc:12 except=7.1.2.3 except=7.1.2.3\nx",
            b"UC1 text @k0-abc:12 prev=9 except=7.1.2\nx",
        ] {
            assert!(
                decode(Bytes::from_static(bad)).is_err(),
                "{:?}",
                std::str::from_utf8(bad)
            );
        }
    }

    #[test]
    fn the_skipped_connection_round_trips() {
        let peer = Peer::new(
            999_999_999_999,
            1023,
            crate::driver::ConnId {
                key: u32::MAX,
                generation: u32::MAX,
            },
        );
        let wire = encode_except(OpCode::Text, u64::MAX, u64::MAX, b"x", Some(peer));
        let envelope = decode(wire).unwrap();
        assert_eq!(envelope.except, Some(peer));
        let close = decode(encode(OpCode::Close, 1, 1, b"\x0f\xa9bye")).unwrap();
        assert_eq!(
            (close.opcode, &close.payload[..]),
            (OpCode::Close, &b"\x0f\xa9bye"[..])
        );
        assert!(decode(Bytes::from_static(b"UC1 close 00000000000000ff 1\nx")).is_err());
        assert_eq!(envelope.origin, Some((u64::MAX, u64::MAX)));
        for bad in [
            &b"UC1 text 00000000000000ff 1 except=1.2.3\nx"[..],
            b"UC1 text 00000000000000ff 1 except=1.2.3.4.5\nx",
            b"UC1 text 00000000000000ff 1 nope=1.2.3.4\nx",
            b"UC1 text 00000000000000ff 1 except=1.2.3.4 more\nx",
        ] {
            assert!(decode(Bytes::from_static(bad)).is_err());
        }
    }

    #[test]
    fn a_bare_message_is_text_if_utf8_else_binary() {
        let text = decode(Bytes::from_static(b"hello")).unwrap();
        assert_eq!((text.opcode, text.origin), (OpCode::Text, None));
        let binary = decode(Bytes::from_static(&[0xff, 0xfe])).unwrap();
        assert_eq!(binary.opcode, OpCode::Binary);
        assert_eq!(&binary.payload[..], &[0xff, 0xfe]);
    }

    #[test]
    fn a_person_can_type_the_kind() {
        let typed = decode(Bytes::from_static(b"UC1 binary\nabc")).unwrap();
        assert_eq!(
            (typed.opcode, typed.origin, &typed.payload[..]),
            (OpCode::Binary, None, &b"abc"[..])
        );
        let typed = decode(Bytes::from_static(b"UC1 base64\nAAH/\n")).unwrap();
        assert_eq!(
            (typed.opcode, &typed.payload[..]),
            (OpCode::Binary, &[0, 1, 255][..])
        );
    }

    #[test]
    fn a_broker_written_envelope_carries_a_position() {
        let at = "k5xq2b7a:42".parse::<Position>().unwrap();
        let text = decode(Bytes::from_static(b"UC1 text @k5xq2b7a:42\nhi")).unwrap();
        assert_eq!(
            (text.opcode, text.origin, text.position, &text.payload[..]),
            (OpCode::Text, None, Some(at), &b"hi"[..])
        );
        let auto = decode(Bytes::from_static(b"UC1 auto @k5xq2b7a:42\n\xff")).unwrap();
        assert_eq!((auto.opcode, auto.position), (OpCode::Binary, Some(at)));
        let auto = decode(Bytes::from_static(b"UC1 auto @k5xq2b7a:42\nok")).unwrap();
        assert_eq!(auto.opcode, OpCode::Text);
        for bad in [
            &b"UC1 text @k5:x\nhi"[..],
            b"UC1 text @:1\nhi",
            b"UC1 text @k5:1 2\n",
        ] {
            assert_eq!(
                decode(Bytes::from_static(bad)),
                Err(WireError::Head),
                "{bad:?}"
            );
        }
        assert_eq!(
            decode(Bytes::from_static(b"UC1 auto\nhi")),
            Err(WireError::Kind("auto".into())),
            "auto only where the broker wrote the envelope"
        );
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        for (wire, error) in [
            (&b"UC1 text"[..], WireError::Head),
            (b"UC1 text zz 1\nx", WireError::Head),
            (b"UC1 text 1\nx", WireError::Head),
            (b"UC1 text 1 2 3\nx", WireError::Head),
            (b"UC1 gzip\nx", WireError::Kind("gzip".into())),
            (b"UC1 base64\n!!", WireError::Base64),
            (b"UC1 text\n\xff", WireError::Utf8),
        ] {
            assert_eq!(decode(Bytes::from_static(wire)), Err(error), "{wire:?}");
        }
    }

    #[test]
    fn sequences_count_gaps_and_refuse_repeats() {
        let mut seen = Sequences::default();
        let topic: Arc<str> = Arc::from("t");
        assert_eq!(seen.check(1, &topic, 5), Sequence::InOrder, "first seen");
        assert_eq!(seen.check(1, &topic, 6), Sequence::InOrder);
        assert_eq!(seen.check(1, &topic, 9), Sequence::Gap(2));
        assert_eq!(seen.check(1, &topic, 9), Sequence::Repeat);
        assert_eq!(seen.check(1, &topic, 3), Sequence::Repeat);
        assert_eq!(seen.check(2, &topic, 1), Sequence::InOrder, "another node");
        seen.forget("t");
        assert_eq!(seen.check(1, &topic, 20), Sequence::InOrder, "starts over");
    }

    #[test]
    fn forgetting_a_topic_drops_it_for_every_node_and_nothing_else() {
        let mut seen = Sequences::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        for node in 1..=3 {
            seen.check(node, &a, 10);
            seen.check(node, &b, 10);
        }
        assert_eq!(seen.entries, 6);
        seen.forget("a");
        seen.forget("never held");
        assert_eq!(seen.entries, 3);
        for node in 1..=3 {
            assert_eq!(seen.check(node, &a, 50), Sequence::InOrder, "a starts over");
            assert_eq!(
                seen.check(node, &b, 10),
                Sequence::Repeat,
                "b is remembered"
            );
        }
        assert_eq!(seen.entries, 6);
    }

    #[test]
    fn the_table_starts_over_past_its_bound() {
        let mut seen = Sequences::default();
        let topic: Arc<str> = Arc::from("t");
        for node in 0..Sequences::MAX_ENTRIES as u64 {
            seen.check(node, &topic, 1);
        }
        assert_eq!(seen.entries, Sequences::MAX_ENTRIES);
        assert_eq!(seen.check(0, &topic, 1), Sequence::Repeat, "still held");
        // One pair more: the table is cleared first, so the bound holds.
        let other: Arc<str> = Arc::from("u");
        assert_eq!(seen.check(7, &other, 5), Sequence::InOrder);
        assert_eq!(seen.entries, 1);
        assert_eq!(
            seen.check(0, &topic, 1),
            Sequence::InOrder,
            "forgotten at the reset"
        );
    }

    proptest::proptest! {
        /// Whatever a broker hands over, decoding answers without panicking, and a payload
        /// it returns is never longer than the message.
        #[test]
        fn any_message_decodes_or_is_refused(message in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let len = message.len();
            if let Ok(envelope) = decode(Bytes::from(message)) {
                proptest::prop_assert!(envelope.payload.len() <= len);
            }
        }

        /// What uringcast writes, it reads back: any payload, node and sequence number.
        #[test]
        fn every_envelope_round_trips(
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            node in proptest::prelude::any::<u64>(),
            seq in proptest::prelude::any::<u64>(),
        ) {
            let envelope = decode(encode(OpCode::Binary, node, seq, &payload)).unwrap();
            proptest::prop_assert_eq!(envelope.origin, Some((node, seq)));
            proptest::prop_assert_eq!(&envelope.payload[..], &payload[..]);
        }
    }
}
