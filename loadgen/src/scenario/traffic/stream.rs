//! Server-Sent Events connections (`sse`): the request that opens a stream, its response head,
//! and the body's events handed to the workload.
//!
//! A stream's connection opens like a WebSocket one (the same chain, the same TLS), but its
//! request is `GET PATH` with `Accept: text/event-stream`, and `Last-Event-ID` once it has seen
//! an id, so that a reconnect resumes where it was. The response must be `200` with a
//! `text/event-stream` content type; its body is parsed by [`sse::Parser`] and every event
//! goes to [`Workload::event`]. The client closes a stream by closing the connection: there is
//! no closing handshake.

use super::conn::{Conn, Open};
use super::net::{micros_since, Net};
use super::{Outbox, Workload};
use crate::report::Failure;
use crate::scenario::sse::{self, Step};
use crate::uring::Ops;

/// The most bytes a response head may take.
const MAX_HEAD_BYTES: usize = 8192;

/// The longest event a stream takes: a message of the largest size in base64, with its
/// fields.
const LIMITS: sse::Limits = sse::Limits {
    line_bytes: (super::MAX_MESSAGE_BYTES as usize).div_ceil(3) * 4 + 64,
    data_bytes: (super::MAX_MESSAGE_BYTES as usize).div_ceil(3) * 4 + 64,
};

/// A stream's slot state that outlives its connections.
#[derive(Debug, Default)]
pub(super) struct StreamSlot {
    /// The last event id the stream received (HTML §9.2.6: an id-only block sets it too).
    pub(super) last_id: Option<String>,
}

/// The request that opens an event stream at `path` on `host`, resuming after `last_id`.
pub(super) fn request(host: &str, path: &str, last_id: Option<&str>) -> Vec<u8> {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\n"
    );
    if let Some(id) = last_id {
        request.push_str("Last-Event-ID: ");
        request.push_str(id);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// A stream's response head as it arrives.
#[derive(Debug, Default)]
pub(super) struct StreamHead {
    head: Vec<u8>,
}

impl StreamHead {
    /// Feeds response bytes; returns how many belong to the head once it is complete and
    /// valid, `None` while it is not complete.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, String> {
        // Only the new bytes (and 3 before them) can complete the blank line.
        let from = self.head.len().saturating_sub(3);
        let take = bytes
            .len()
            .min(MAX_HEAD_BYTES + 1 - self.head.len().min(MAX_HEAD_BYTES));
        self.head.extend_from_slice(&bytes[..take]);
        let Some(end) = self.head[from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| from + at + 4)
        else {
            if self.head.len() > MAX_HEAD_BYTES {
                return Err(format!("response head longer than {MAX_HEAD_BYTES} bytes"));
            }
            return Ok(None);
        };
        let used = take - (self.head.len() - end);
        let head = String::from_utf8_lossy(&self.head[..end]);
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        let code = status.split(' ').nth(1).unwrap_or_default();
        if !status.starts_with("HTTP/1.") || code != "200" {
            return Err(format!("response {status:?}, not 200"));
        }
        let event_stream = lines.any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("content-type")
                    && value
                        .trim()
                        .to_ascii_lowercase()
                        .starts_with("text/event-stream")
            })
        });
        if !event_stream {
            return Err("response is not text/event-stream".into());
        }
        Ok(Some(used))
    }
}

impl Net {
    /// Bytes of a stream connection: its response head, then events.
    pub(super) fn stream_bytes<W: Workload>(
        &mut self,
        ops: &mut Ops,
        work: &mut W,
        index: usize,
        bytes: &[u8],
        now_ns: u64,
    ) {
        let mut rest = bytes;
        if let Conn::Connecting(c) = &mut self.slots[index].conn {
            let super::conn::Opening::Stream(head) = &mut c.handshake else {
                return;
            };
            match head.feed(rest) {
                Ok(None) => return,
                Ok(Some(used)) => {
                    self.handshake.saturating_record(micros_since(c.started));
                    self.slots[index].conn =
                        Conn::Open(Box::new(Open::stream(sse::Parser::new(LIMITS))));
                    self.connecting -= 1;
                    self.opened(work, index);
                    rest = &rest[used..];
                }
                Err(error) => {
                    self.fail(
                        ops,
                        index,
                        Failure::BadHandshake,
                        format!("stream: {error}"),
                    );
                    return;
                }
            }
        }
        self.compression.tally.wire_bytes_in += rest.len() as u64;
        while !rest.is_empty() {
            let Conn::Open(o) = &mut self.slots[index].conn else {
                return;
            };
            let Some(parser) = o.sse.as_mut() else {
                return;
            };
            if o.closing.is_some() {
                return;
            }
            match parser.next(rest) {
                Ok((used, step)) => {
                    rest = &rest[used..];
                    let Step::Event(event) = step else { break };
                    if let (Some(id), Some(stream)) = (&event.id, self.slots[index].stream.as_mut())
                    {
                        // Its buffer reused: every event has an id.
                        let last = stream.last_id.get_or_insert_with(String::new);
                        last.clear();
                        last.push_str(id);
                    }
                    if let Some(data) = &event.data {
                        let tally = &mut self.compression.tally;
                        tally.messages_in += 1;
                        tally.payload_bytes_in += data.len() as u64;
                    }
                    work.event(index, &event, now_ns, &mut Outbox { net: self });
                    if let Conn::Open(o) = &mut self.slots[index].conn {
                        if let Some(parser) = o.sse.as_mut() {
                            parser.recycle(event);
                        }
                    }
                }
                Err(error) => {
                    self.end_open(ops, index, format!("stream: {error}"));
                    return;
                }
            }
        }
    }
}

impl Open {
    /// An open event stream.
    fn stream(parser: sse::Parser) -> Self {
        let mut open = Self::websocket(uringcast::protocol::WebSocket::new(
            uringcast::protocol::connection::ClientSide(
                super::conn::random_mask as fn() -> [u8; 4],
            ),
            uringcast::protocol::Limits {
                max_message_bytes: 0,
            },
        ));
        open.sse = Some(Box::new(parser));
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_asks_for_a_stream_and_resumes() {
        let first = String::from_utf8(request("h:1", "/t", None)).unwrap();
        assert!(first.starts_with("GET /t HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(first.contains("Accept: text/event-stream\r\n"));
        assert!(!first.contains("Last-Event-ID"));
        let again = String::from_utf8(request("h:1", "/t", Some("ab:7"))).unwrap();
        assert!(again.ends_with("Last-Event-ID: ab:7\r\n\r\n"));
    }

    #[test]
    fn a_head_split_anywhere_is_found_and_checked() {
        let response = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
                         X-Accel-Buffering: no\r\n\r\nid: a:1\n\n";
        let head_len = response.len() - b"id: a:1\n\n".len();
        for cut in 0..response.len() {
            let mut head = StreamHead::default();
            let used = match head.feed(&response[..cut]).unwrap() {
                Some(used) => used,
                None => cut + head.feed(&response[cut..]).unwrap().unwrap(),
            };
            assert_eq!(used, head_len, "cut at {cut}");
        }
        let mut head = StreamHead::default();
        let error = head
            .feed(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .unwrap_err();
        assert!(error.contains("403"), "{error}");
        let mut head = StreamHead::default();
        assert!(head
            .feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            .is_err());
        let mut head = StreamHead::default();
        assert!(head.feed(&[b'x'; MAX_HEAD_BYTES + 10]).is_err());
    }
}
