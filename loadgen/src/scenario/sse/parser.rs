//! An event stream's body, parsed as the WHATWG HTML standard says (§9.2.6 "Interpreting an
//! event stream"), sans-IO: bytes in, one event out per call.
//!
//! Lines end with CR LF, LF or CR (a CR LF split across two reads is one line end). A line
//! starting with `:` is a comment; `field: value` sets a field (one space after the colon is
//! dropped); a blank line dispatches the event. `data` lines are joined with LF; `id` sets the
//! event's id unless it holds a NUL; `event` its type; other fields are ignored. A block with
//! data is an event; a block with an `id` and no data only moves the stream's last event id
//! (the server's position-only event); anything else dispatches nothing.
//!
//! The parser keeps only what a line or an event needs, within [`Limits`]: a line or an
//! event's data past its limit is an error, not a bigger buffer. Any split of the stream gives
//! the same events (the property test below feeds every split).

use thiserror::Error;

/// How long a line, and an event's data, may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one line, its end excluded.
    pub line_bytes: usize,
    /// Bytes of one event's data, its joining line feeds included.
    pub data_bytes: usize,
}

/// One dispatched block of fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The `id` field of this block, if it had one (the last one if several).
    pub id: Option<String>,
    /// The `event` field: empty for the default `message`.
    pub kind: String,
    /// The data lines joined with LF; `None` for a block with an id and no data, which
    /// dispatches nothing but moves the last event id.
    pub data: Option<Vec<u8>>,
}

/// What one call to [`Parser::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The input is used up without completing an event.
    NeedMore,
    /// An event (or an id-only block) ended.
    Event(Event),
}

/// A stream that breaks the limits, or is not text.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// A line longer than [`Limits::line_bytes`].
    #[error("an event stream line is longer than {0} bytes")]
    LineTooLong(usize),
    /// An event's data longer than [`Limits::data_bytes`].
    #[error("an event's data is longer than {0} bytes")]
    DataTooLong(usize),
    /// A field name or id that is not UTF-8.
    #[error("an event stream field is not UTF-8")]
    NotUtf8,
}

/// The parser's state between reads.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    /// The start of a line split across reads.
    line: Vec<u8>,
    /// The last line ended with CR: an LF first in the next read belongs to it.
    after_cr: bool,
    /// No line has ended yet: a leading byte order mark is dropped from the first one.
    first_line: bool,
    data: Vec<u8>,
    has_data: bool,
    kind: String,
    id: Option<String>,
    /// An id buffer handed back by [`Parser::recycle`], for the next `id` field.
    spare_id: Option<String>,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            data: Vec::new(),
            has_data: false,
            kind: String::new(),
            id: None,
            spare_id: None,
        }
    }

    /// Takes back an event's buffers once the caller is done with it, so that the next events
    /// are parsed into them rather than into new allocations (a stream at thousands of events
    /// a second would otherwise allocate its data, id and type for each).
    pub fn recycle(&mut self, event: Event) {
        if let Some(mut data) = event.data {
            if !self.has_data && self.data.capacity() < data.capacity() {
                data.clear();
                self.data = data;
            }
        }
        if let Some(id) = event.id {
            self.spare_id.get_or_insert(id);
        }
        if self.kind.is_empty() && self.kind.capacity() < event.kind.capacity() {
            let mut kind = event.kind;
            kind.clear();
            self.kind = kind;
        }
    }

    /// Parses `input` up to the end of the next event; returns the bytes consumed and what
    /// was found. Call again with the rest while it returns an event.
    ///
    /// # Errors
    ///
    /// A line or event past its [`Limits`], or a field that is not UTF-8: the stream cannot
    /// go on.
    pub fn next(&mut self, input: &[u8]) -> Result<(usize, Step), ParseError> {
        let mut pos = 0;
        loop {
            if self.after_cr && pos < input.len() {
                self.after_cr = false;
                if input[pos] == b'\n' {
                    pos += 1;
                }
            }
            let rest = &input[pos..];
            let Some(end) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
                if self.line.len() + rest.len() > self.limits.line_bytes {
                    return Err(ParseError::LineTooLong(self.limits.line_bytes));
                }
                self.line.extend_from_slice(rest);
                return Ok((input.len(), Step::NeedMore));
            };
            self.after_cr = rest[end] == b'\r';
            pos += end + 1;
            if self.line.len() + end > self.limits.line_bytes {
                return Err(ParseError::LineTooLong(self.limits.line_bytes));
            }
            let event = if self.line.is_empty() {
                self.line_ended(&rest[..end])?
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&rest[..end]);
                let event = self.line_ended(&line);
                line.clear();
                self.line = line;
                event?
            };
            if let Some(event) = event {
                return Ok((pos, Step::Event(event)));
            }
        }
    }

    /// One whole line, its end removed.
    fn line_ended(&mut self, mut line: &[u8]) -> Result<Option<Event>, ParseError> {
        if std::mem::take(&mut self.first_line) {
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                let grown = self.data.len() + usize::from(self.has_data) + value.len();
                if grown > self.limits.data_bytes {
                    return Err(ParseError::DataTooLong(self.limits.data_bytes));
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                let kind = std::str::from_utf8(value).map_err(|_| ParseError::NotUtf8)?;
                self.kind.clear();
                self.kind.push_str(kind);
            }
            b"id" if !value.contains(&0) => {
                let value = std::str::from_utf8(value).map_err(|_| ParseError::NotUtf8)?;
                let id = match self.id.take() {
                    Some(id) => id,
                    None => self.spare_id.take().unwrap_or_default(),
                };
                let id = self.id.insert(id);
                id.clear();
                id.push_str(value);
            }
            _ => {}
        }
        Ok(None)
    }

    /// A blank line: the block's event, if it had data or an id.
    fn dispatch(&mut self) -> Option<Event> {
        let kind = std::mem::take(&mut self.kind);
        let id = self.id.take();
        if !std::mem::take(&mut self.has_data) {
            return id.map(|id| Event {
                id: Some(id),
                kind: String::new(),
                data: None,
            });
        }
        Some(Event {
            id,
            kind,
            data: Some(std::mem::take(&mut self.data)),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMITS: Limits = Limits {
        line_bytes: 1024,
        data_bytes: 4096,
    };

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<Event>, ParseError> {
        let mut parser = Parser::new(LIMITS);
        let mut events = Vec::new();
        for chunk in chunks {
            let mut at = 0;
            loop {
                let (used, step) = parser.next(&chunk[at..])?;
                at += used;
                match step {
                    Step::Event(e) => events.push(e),
                    Step::NeedMore => break,
                }
            }
            assert_eq!(at, chunk.len());
        }
        Ok(events)
    }

    fn event(id: Option<&str>, kind: &str, data: Option<&str>) -> Event {
        Event {
            id: id.map(str::to_owned),
            kind: kind.to_owned(),
            data: data.map(|d| d.as_bytes().to_vec()),
        }
    }

    #[test]
    fn the_servers_events_parse() {
        let stream = b"id: ep:0\n\n: ping\n\nid: ep:1\ndata: one\ndata: two\n\n\
                       id: ep:2\nevent: binary\ndata: AAE=\n\n\
                       id: ep:9\nevent: reset\ndata: {\"epoch\":\"ep\",\"offset\":9}\n\n";
        let events = parse_all(&[stream]).unwrap();
        assert_eq!(
            events,
            [
                event(Some("ep:0"), "", None),
                event(Some("ep:1"), "", Some("one\ntwo")),
                event(Some("ep:2"), "binary", Some("AAE=")),
                event(
                    Some("ep:9"),
                    "reset",
                    Some("{\"epoch\":\"ep\",\"offset\":9}")
                ),
            ]
        );
    }

    #[test]
    fn recycled_events_lend_their_buffers_to_the_next() {
        let limits = Limits {
            line_bytes: 100,
            data_bytes: 100,
        };
        let mut parser = Parser::new(limits);
        let input = b"event: binary\nid: e:1\ndata: first payload\n\nevent: binary\nid: e:2\ndata: second\n\n";
        let (used, Step::Event(first)) = parser.next(input).unwrap() else {
            panic!("the first event")
        };
        let data = first.data.as_ref().unwrap().as_ptr();
        let id = first.id.as_ref().unwrap().as_ptr();
        let kind = first.kind.as_ptr();
        parser.recycle(first);
        let (_, Step::Event(second)) = parser.next(&input[used..]).unwrap() else {
            panic!("the second event")
        };
        assert_eq!(second, event(Some("e:2"), "binary", Some("second")));
        assert_eq!(second.data.as_ref().unwrap().as_ptr(), data);
        assert_eq!(second.id.as_ref().unwrap().as_ptr(), id);
        assert_eq!(second.kind.as_ptr(), kind);
    }

    #[test]
    fn line_ends_fields_and_blocks_follow_the_standard() {
        // CR, CR LF and LF; no space after the colon; a field without a colon; an unknown
        // field; an id with a NUL (ignored); a BOM before the first line.
        let stream = b"\xEF\xBB\xBFdata:a\r\rdata\r\ndata: b\n\nretry: 5\nfoo: x\n\n\
                       id: a\0b\ndata: c\n\nevent: lone\n\n";
        let events = parse_all(&[stream]).unwrap();
        assert_eq!(
            events,
            [
                event(None, "", Some("a")),
                event(None, "", Some("\nb")),
                event(None, "", Some("c")),
            ]
        );
        // A block that never ends dispatches nothing.
        assert!(parse_all(&[b"data: x\n"]).unwrap().is_empty());
    }

    #[test]
    fn limits_stop_a_line_or_an_event_from_growing() {
        let long = vec![b'x'; LIMITS.line_bytes + 1];
        let error = parse_all(&[b"data: ", &long]).unwrap_err();
        assert_eq!(error, ParseError::LineTooLong(LIMITS.line_bytes));
        // Many short data lines: the event's limit.
        let line = format!("data: {}\n", "y".repeat(1000));
        let many = line.repeat(5);
        let error = parse_all(&[many.as_bytes()]).unwrap_err();
        assert_eq!(error, ParseError::DataTooLong(LIMITS.data_bytes));
        assert_eq!(
            parse_all(&[b"id: \xff\n\n"]).unwrap_err(),
            ParseError::NotUtf8
        );
    }

    /// One block of the kinds a server sends, written with the given line end.
    fn block() -> impl Strategy<Value = (Vec<u8>, Option<Event>)> {
        let end = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
        let text = "[a-z0-9 :{}\"]{0,12}";
        (
            end,
            0u8..5,
            proptest::option::of("[a-z0-9]{1,6}:[0-9]{1,4}"),
            proptest::collection::vec(text, 1..4),
        )
            .prop_map(|(end, shape, id, lines)| {
                let mut bytes = Vec::new();
                let mut put = |line: &str| {
                    bytes.extend_from_slice(line.as_bytes());
                    bytes.extend_from_slice(end.as_bytes());
                };
                match shape {
                    // A comment, then a blank line: nothing.
                    0 => {
                        put(": ping");
                        put("");
                        (bytes, None)
                    }
                    // An id-only block.
                    1 => {
                        let id = id.unwrap_or_else(|| "e:1".into());
                        put(&format!("id: {id}"));
                        put("");
                        (bytes, Some(event(Some(&id), "", None)))
                    }
                    // A typed event (reset, binary) or a message, with its data lines.
                    kind => {
                        let kind = ["", "", "reset", "binary", ""][usize::from(kind)];
                        if let Some(id) = &id {
                            put(&format!("id: {id}"));
                        }
                        if !kind.is_empty() {
                            put(&format!("event: {kind}"));
                        }
                        for line in &lines {
                            put(&format!("data: {line}"));
                        }
                        put("");
                        let data = lines.join("\n");
                        (bytes, Some(event(id.as_deref(), kind, Some(&data))))
                    }
                }
            })
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_events(
            blocks in proptest::collection::vec(block(), 0..12),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (bytes, event) in blocks {
                stream.extend_from_slice(&bytes);
                expected.extend(event);
            }
            // A CR line end read at the very end is complete, but a CR LF split there is not
            // yet known to be one line end: the whole stream gives the reference events.
            let whole = parse_all(&[&stream]).unwrap();
            prop_assert_eq!(&whole, &expected);
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            at.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in at {
                chunks.push(&stream[from..cut]);
                from = cut;
            }
            chunks.push(&stream[from..]);
            prop_assert_eq!(&parse_all(&chunks).unwrap(), &expected);
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(&parse_all(&bytes).unwrap(), &expected);
        }
    }
}
