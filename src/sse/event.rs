//! The bytes of an event stream: the response head, one event per publication, the `reset`
//! event that says a position could not be recovered, and the comment that keeps proxies
//! from closing an idle stream.
//!
//! An event is `id:` (when the publication has a position), then `data:` lines, then a blank
//! line. A text payload is split on its line breaks (CR LF, CR or LF), one `data:` line each,
//! which the client joins again with LF; a binary payload goes as `event: binary` with its
//! base64. An empty payload makes an event the client does not dispatch (HTML §9.2.6: an
//! empty data buffer), so empty messages do not reach SSE clients.

use std::fmt;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::OpCode;

/// A comment line and the blank line that ends it: sent every ping interval so that proxies
/// and load balancers see traffic on an idle stream. Clients ignore it.
pub const PING: &[u8] = b": ping\n\n";

/// An event's `id:` as text, held inline (an epoch of up to 16 bytes, `:`, and a `u64`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EventId {
    bytes: [u8; Self::MAX],
    len: u8,
}

impl EventId {
    /// The longest id: 16 bytes of epoch, the colon, and 20 digits.
    pub const MAX: usize = 40;

    /// The id written as `Display` writes `value`; `None` if it is longer than [`MAX`](Self::MAX)
    /// or holds a line break or NUL (which would end the field early).
    pub fn new(value: impl fmt::Display) -> Option<Self> {
        let mut id = Self {
            bytes: [0; Self::MAX],
            len: 0,
        };
        fmt::write(&mut id, format_args!("{value}")).ok()?;
        let text = id.as_bytes();
        (!text.iter().any(|b| matches!(b, b'\r' | b'\n' | 0))).then_some(id)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Write for EventId {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let start = usize::from(self.len);
        let end = start + s.len();
        if end > Self::MAX {
            return Err(fmt::Error);
        }
        self.bytes[start..end].copy_from_slice(s.as_bytes());
        self.len = end as u8;
        Ok(())
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The response head that starts an event stream. The stream has no length: it ends when the
/// connection closes (RFC 9112 §6.3, item 8), so it needs no chunked framing.
///
/// `allow_origin` is the `Access-Control-Allow-Origin` to send, for a page on another origin
/// (CORS): the request's own `Origin` when it is allowed, or `None` to send none.
/// `X-Accel-Buffering: no` tells nginx not to buffer the stream.
pub fn response_head(allow_origin: Option<&str>) -> Vec<u8> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\n\
         Content-Type: text/event-stream; charset=utf-8\r\n\
         Cache-Control: no-cache, no-transform\r\n\
         X-Accel-Buffering: no\r\n",
    );
    if let Some(origin) = allow_origin {
        head.push_str("Access-Control-Allow-Origin: ");
        head.push_str(origin);
        head.push_str("\r\nVary: Origin\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// One event: the payload of a publication, with its position as the `id:` if it has one.
pub fn encode_event(id: Option<&EventId>, opcode: OpCode, payload: &[u8]) -> Bytes {
    let binary = opcode != OpCode::Text || std::str::from_utf8(payload).is_err();
    let mut out = if binary {
        BytesMut::with_capacity(48 + payload.len().div_ceil(3) * 4)
    } else {
        // Each line costs "data: " and "\n"; most payloads are one line.
        BytesMut::with_capacity(48 + payload.len())
    };
    if let Some(id) = id {
        put_field(&mut out, b"id", id.as_bytes());
    }
    if binary {
        put_field(&mut out, b"event", b"binary");
        let text = base64::engine::general_purpose::STANDARD.encode(payload);
        put_field(&mut out, b"data", text.as_bytes());
    } else {
        for line in lines(payload) {
            put_field(&mut out, b"data", line);
        }
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// The event that tells a client its position could not be recovered: `event: reset`, with
/// the stream's current position as the id (so the client's next reconnect starts from it)
/// and as JSON data (`{"epoch":"…","offset":N}`).
pub fn reset_event(epoch: &str, offset: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(96);
    let id = format!("{epoch}:{offset}");
    put_field(&mut out, b"id", id.as_bytes());
    put_field(&mut out, b"event", b"reset");
    let data = format!("{{\"epoch\":\"{epoch}\",\"offset\":{offset}}}");
    put_field(&mut out, b"data", data.as_bytes());
    out.put_u8(b'\n');
    out.freeze()
}

/// An event with only an id: the client records it as its last event id (HTML §9.2.6,
/// "dispatch the event", step 1) but dispatches nothing, since its data is empty. A stream
/// starts with one, so that a client that sees no publication still reconnects from here.
pub fn position_only(id: &EventId) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + EventId::MAX);
    put_field(&mut out, b"id", id.as_bytes());
    out.put_u8(b'\n');
    out.freeze()
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_u8(b'\n');
}

/// The lines of a text payload, split on CR LF, CR or LF (HTML §9.2.5's line ends).
fn lines(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(payload);
    std::iter::from_fn(move || {
        let text = rest?;
        match text.iter().position(|&b| b == b'\r' || b == b'\n') {
            None => {
                rest = None;
                Some(text)
            }
            Some(at) => {
                let skip = if text[at] == b'\r' && text.get(at + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = Some(&text[at + skip..]);
                Some(&text[..at])
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's reading of a stream (HTML §9.2.6), for the events this module writes:
    /// (event type, data, last event id) for each dispatched event.
    fn parse(stream: &[u8]) -> Vec<(String, String, String)> {
        let text = std::str::from_utf8(stream).unwrap();
        let mut out = Vec::new();
        let (mut kind, mut data, mut last_id) = (String::new(), String::new(), String::new());
        // Our own encoder only writes LF line ends.
        for line in text.split('\n') {
            if line.is_empty() {
                if !data.is_empty() {
                    data.pop();
                    let event = if kind.is_empty() { "message" } else { &kind };
                    out.push((event.to_string(), data.clone(), last_id.clone()));
                }
                kind.clear();
                data.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => kind = value.to_string(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" => last_id = value.to_string(),
                _ => {}
            }
        }
        out
    }

    fn id(text: &str) -> EventId {
        EventId::new(text).unwrap()
    }

    #[test]
    fn a_text_event_round_trips_with_its_line_breaks_normalised() {
        let stream = encode_event(Some(&id("ab:7")), OpCode::Text, b"one\r\ntwo\rthree\nfour");
        assert_eq!(
            parse(&stream),
            vec![(
                "message".into(),
                "one\ntwo\nthree\nfour".into(),
                "ab:7".into()
            )]
        );
        let stream = encode_event(None, OpCode::Text, b"trailing\n");
        assert_eq!(parse(&stream)[0].1, "trailing\n");
    }

    #[test]
    fn a_binary_event_is_base64() {
        let payload = [0u8, 255, 10, 13, 58];
        let stream = encode_event(Some(&id("e:1")), OpCode::Binary, &payload);
        let events = parse(&stream);
        assert_eq!(events[0].0, "binary");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&events[0].1)
            .unwrap();
        assert_eq!(decoded, payload);
    }

    #[test]
    fn reset_and_position_only_events() {
        let mut stream = position_only(&id("ep:3")).to_vec();
        stream.extend_from_slice(PING);
        stream.extend_from_slice(&reset_event("ep", 9));
        let events = parse(&stream);
        assert_eq!(
            events,
            vec![(
                "reset".into(),
                "{\"epoch\":\"ep\",\"offset\":9}".into(),
                "ep:9".into()
            )]
        );
        assert_eq!(&position_only(&id("ep:3"))[..], b"id: ep:3\n\n");
    }

    #[test]
    fn ids_that_could_break_a_field_are_refused() {
        assert!(EventId::new("a\nb").is_none());
        assert!(EventId::new("x".repeat(41)).is_none());
        assert_eq!(EventId::new("x".repeat(40)).unwrap().as_bytes().len(), 40);
    }

    #[test]
    fn the_head_names_the_allowed_origin() {
        let head = String::from_utf8(response_head(Some("https://a.example"))).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(head.contains("Content-Type: text/event-stream"));
        assert!(head.contains("Access-Control-Allow-Origin: https://a.example\r\n"));
        assert!(head.ends_with("\r\n\r\n"));
        assert!(!String::from_utf8(response_head(None))
            .unwrap()
            .contains("Access-Control"));
    }
}
