//! HTTP/1.1 as the WebSocket port speaks it, sans-IO: the incremental head reader both
//! handshake sides share (RFC 9112 §2), responses, and one table of reason phrases.

use std::mem;

use super::handshake::HandshakeError;

/// Writes an HTTP/1.1 response: the status line, `extra_headers` in order, `Content-Type` if
/// given, `Content-Length`, a blank line and `body`. `status` should have three digits, and
/// names and values must not contain CR or LF; both come from the caller, never the peer.
///
/// # Examples
///
/// ```
/// use uringcast::protocol::handshake::http_response;
/// let response = http_response(200, "OK", &[("Cache-Control", "no-store")], Some("text/plain"), b"ok");
/// assert_eq!(
///     response,
///     b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
/// );
/// ```
///
/// The server reads one plain HTTP request per connection and closes it after the answer, so
/// every response says `Connection: close` (RFC 9112 §9.6), unless `extra_headers` already
/// has a `Connection` field: a client that keeps connections alive (Node's default agent
/// does) must not send its next request into a socket that is about to close.
pub fn http_response(
    status: u16,
    reason: &str,
    extra_headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in extra_headers {
        push_header(&mut head, name, value);
    }
    if let Some(content_type) = content_type {
        push_header(&mut head, "Content-Type", content_type);
    }
    push_header(&mut head, "Content-Length", &body.len().to_string());
    if !extra_headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("connection"))
    {
        push_header(&mut head, "Connection", "close");
    }
    head.push_str("\r\n");
    let mut response = head.into_bytes();
    response.extend_from_slice(body);
    response
}

/// Makes a response from [`http_response`] with its default `Connection: close` (the last
/// field of its head) keep the connection open instead; returns whether it did. A response
/// that names its own `Connection` field, or is not [`http_response`]'s, is left as it is.
pub fn keep_alive(response: &mut Vec<u8>) -> bool {
    const CLOSE: &[u8] = b"\r\nConnection: close\r\n\r\n";
    const KEEP: &[u8] = b"\r\nConnection: keep-alive\r\n\r\n";
    let Some(end) = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
    else {
        return false;
    };
    let Some(start) = end.checked_sub(CLOSE.len()) else {
        return false;
    };
    if &response[start..end] != CLOSE {
        return false;
    }
    response.splice(start..end, KEEP.iter().copied());
    true
}

/// Header fields parsed per head: real handshakes carry about 15, and httparse needs a fixed
/// table. More is answered with 431.
pub(crate) const MAX_HEADERS: usize = 64;

/// The first allocation for a head: most handshakes fit, so one allocation is the norm.
const INITIAL_HEAD_CAPACITY: usize = 512;

/// The end of an HTTP head (RFC 9112 §2.1).
const HEAD_END: &[u8; 4] = b"\r\n\r\n";

/// Accumulates one head, shared by both sides. Each byte is scanned once for the CRLFCRLF
/// (plus the 3 bytes before each new chunk, for a terminator split across calls), so httparse
/// runs once per head instead of once per `Partial`. Neither the length nor the capacity of
/// `buf` ever exceeds `limit`.
#[derive(Debug)]
pub(crate) struct HeadReader {
    pub(crate) buf: Vec<u8>,
    limit: usize,
}

impl HeadReader {
    pub(crate) const fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
        }
    }

    /// Returns the bytes of `input` consumed and, once the head is complete, the head through
    /// its CRLFCRLF; the reader is then empty again.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
    ) -> Result<(usize, Option<Vec<u8>>), HandshakeError> {
        let old = self.buf.len();
        let room = self.limit.saturating_sub(old);
        let (taken, beyond_limit) = input.split_at(input.len().min(room));
        self.reserve(taken.len());
        self.buf.extend_from_slice(taken);
        let from = old.saturating_sub(HEAD_END.len() - 1);
        let found = self
            .buf
            .get(from..)
            .and_then(|window| window.windows(HEAD_END.len()).position(|w| w == HEAD_END));
        if let Some(at) = found {
            // The old bytes held no terminator, so the head ends inside `taken`: end > old.
            let end = from + at + HEAD_END.len();
            self.buf.truncate(end);
            return Ok((end - old, Some(mem::take(&mut self.buf))));
        }
        if !beyond_limit.is_empty() {
            self.buf = Vec::new();
            return Err(HandshakeError::HeadTooLarge { limit: self.limit });
        }
        Ok((taken.len(), None))
    }

    /// Grows geometrically for one-byte feeds, but never past the limit.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let needed = self.buf.len() + additional;
        if needed > self.buf.capacity() {
            let target = needed
                .max(self.buf.capacity().saturating_mul(2))
                .max(INITIAL_HEAD_CAPACITY)
                .min(self.limit);
            self.buf.reserve_exact(target - self.buf.len());
        }
    }
}

/// A parsed head: its bytes and the spans of each header field's name and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fields: Vec<(Span, Span)>,
}

impl Head {
    pub(crate) fn bytes(&self, span: Span) -> &[u8] {
        self.bytes.get(span.start..span.end).unwrap_or_default()
    }

    /// Only for spans httparse returned as `&str` (method, target, names, reason), so the
    /// fallback to "" is never taken.
    pub(crate) fn text(&self, span: Span) -> &str {
        str::from_utf8(self.bytes(span)).unwrap_or_default()
    }

    pub(crate) fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields
            .iter()
            .map(|&(name, value)| (self.text(name), self.bytes(value)))
    }

    pub(crate) fn values<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        self.fields
            .iter()
            .filter(move |&&(field, _)| self.bytes(field).eq_ignore_ascii_case(name.as_bytes()))
            .map(|&(_, value)| self.bytes(value))
    }

    /// The value of a field that may appear at most once (RFC 6455 §11.3, RFC 9112 §3.2).
    pub(crate) fn single(&self, name: &'static str) -> Result<Option<&[u8]>, HandshakeError> {
        let mut values = self.values(name);
        let first = values.next();
        match values.next() {
            Some(_) => Err(HandshakeError::DuplicateHeader(name)),
            None => Ok(first),
        }
    }

    /// Whether any copy of the comma-separated field `name` lists `token`, in any case
    /// (RFC 9110 §5.6.1, §7.6.1, §7.8).
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.values(name)
            .flat_map(|list| list.split(|&byte| byte == b','))
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }
}

/// A range of a head's bytes; `Copy`, unlike `Range`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl Span {
    /// The position of `part`, a subslice httparse returned, inside `head`.
    pub(crate) fn within(head: &[u8], part: &[u8]) -> Self {
        let start = (part.as_ptr() as usize).wrapping_sub(head.as_ptr() as usize);
        Self {
            start,
            end: start.wrapping_add(part.len()),
        }
    }

    pub(crate) fn fields(head: &[u8], headers: &[httparse::Header<'_>]) -> Vec<(Self, Self)> {
        headers
            .iter()
            .map(|header| {
                (
                    Self::within(head, header.name.as_bytes()),
                    Self::within(head, header.value),
                )
            })
            .collect()
    }
}

/// httparse must consume the whole head: it stops early on bare-LF line endings, and reports
/// `Partial` for a head that is only empty lines.
pub(crate) fn ensure_complete(
    status: httparse::Status<usize>,
    head_len: usize,
) -> Result<(), HandshakeError> {
    match status {
        httparse::Status::Complete(len) if len == head_len => Ok(()),
        httparse::Status::Complete(_) => Err(HandshakeError::MalformedHead("bare lf line ending")),
        httparse::Status::Partial => Err(HandshakeError::MalformedHead("empty head")),
    }
}

/// `1*DIGIT` as a `u64` (RFC 9110 §8.6), `None` if empty, not digits, or too large.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0_u64, |value, &digit| {
        let digit = char::from(digit).to_digit(10)?;
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

pub(crate) fn push_header(head: &mut String, name: &str, value: &str) {
    debug_assert!(
        !(name.contains(['\r', '\n']) || value.contains(['\r', '\n'])),
        "header {name:?} from the caller contains CR or LF"
    );
    head.push_str(name);
    head.push_str(": ");
    head.push_str(value);
    head.push_str("\r\n");
}

/// The reason phrase of RFC 9110 §15 for `status`: the one table the server and its
/// endpoints use.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_replaces_only_the_default_close() {
        let mut ok = http_response(200, "OK", &[], Some("application/json"), b"{}");
        assert!(keep_alive(&mut ok));
        let text = String::from_utf8(ok).unwrap();
        assert!(text.ends_with("Content-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"));
        assert!(!text.contains("close"));

        // A service's own `Connection` field stands, and so does anything not made here.
        let mut own = http_response(
            503,
            "Service Unavailable",
            &[("Connection", "close")],
            None,
            b"",
        );
        let before = own.clone();
        assert!(!keep_alive(&mut own));
        assert_eq!(own, before);
        assert!(!keep_alive(&mut b"HTTP/1.1 200 OK\r\n".to_vec()));
        assert!(!keep_alive(&mut b"\r\n\r\n".to_vec()));
    }

    #[test]
    fn a_body_that_looks_like_the_field_is_not_rewritten() {
        let mut response = http_response(
            200,
            "OK",
            &[("Connection", "upgrade")],
            None,
            b"\r\nConnection: close\r\n\r\n",
        );
        let before = response.clone();
        assert!(!keep_alive(&mut response));
        assert_eq!(response, before);
    }
}
