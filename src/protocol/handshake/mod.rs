//! The opening handshake (RFC 6455 §4), both sides, sans-IO.
//!
//! [`ServerHandshake`] reads a request head from bytes the caller received and returns a
//! [`Request`] for any well-formed HTTP/1.x head, so plain HTTP endpoints can share the reader;
//! [`Request::validate_upgrade`] then applies the rules of §4.2.1 and yields the §4.2.2 answer.
//! [`ClientHandshake`] builds the §4.1 request from a key the caller supplies and verifies the
//! server's 101. Nothing here owns a socket, a clock or a source of randomness, and no head is
//! buffered beyond the limit given at construction.

use std::str;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use sha1::{Digest, Sha1};

use super::deflate::{self, Agreed};
use super::http::{
    ensure_complete, parse_decimal, push_header, Head, HeadReader, Span, MAX_HEADERS,
};
pub use super::http::{http_response, reason_phrase};

mod client;
pub use client::{ClientHandshake, Response};

/// Default limit on a request or response head, through its final CRLFCRLF: real browser
/// handshakes are well under 2 KiB, and a larger head is answered with 431.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 8 * 1024;

/// The GUID appended to the client's key before hashing (RFC 6455 §1.3, §4.2.2 step 5.4).
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The value of `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key + GUID))
/// (RFC 6455 §4.2.2 step 5.4). `key` is the header value as sent, not its decoded bytes.
///
/// # Examples
///
/// ```
/// use uringcast::protocol::handshake::accept_key;
/// // The example of RFC 6455 §1.3.
/// assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
/// ```
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID.as_bytes());
    STANDARD.encode(sha1.finalize())
}

/// A failed handshake, each variant with the HTTP status the server answers
/// ([`HandshakeError::status`]) and a complete response ([`HandshakeError::response`]).
///
/// After an error the handshake is over: the server sends the response and closes the
/// connection; the client closes it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The head, through its CRLFCRLF, would exceed the configured limit (RFC 6455 §10.4).
    #[error("http head exceeds {limit} bytes")]
    HeadTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The head has more header fields than the parser's fixed table holds.
    #[error("http head has more than {limit} header fields")]
    TooManyHeaders {
        /// The number of header fields accepted.
        limit: usize,
    },
    /// The head is not valid HTTP/1.x; the text says which part.
    #[error("malformed http head: {0}")]
    MalformedHead(&'static str),
    /// An upgrade request whose method is not GET (RFC 6455 §4.2.1 item 1).
    #[error("upgrade request method is {0}, not GET")]
    MethodNotGet(String),
    /// An upgrade request in HTTP/1.0; the value is the minor version (RFC 6455 §4.2.1 item 1).
    #[error("upgrade request is HTTP/1.{0}, not HTTP/1.1")]
    UnsupportedHttpVersion(u8),
    /// A required header field is absent (`host`, `sec-websocket-key`; RFC 6455 §4.2.1).
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header field that may appear only once appears more often (RFC 6455 §11.3).
    #[error("{0} header appears more than once")]
    DuplicateHeader(&'static str),
    /// `Upgrade` is absent or lacks the token `websocket` (RFC 6455 §4.2.1 item 3, §4.1).
    #[error("upgrade header does not name websocket")]
    UpgradeNotWebSocket,
    /// `Connection` is absent or lacks the token `upgrade` (RFC 6455 §4.2.1 item 4, §4.1).
    #[error("connection header lacks the upgrade token")]
    ConnectionNotUpgrade,
    /// `Sec-WebSocket-Key` is not the padded base64 of 16 bytes (RFC 6455 §4.2.1 item 5).
    #[error("sec-websocket-key is not the base64 of 16 bytes")]
    InvalidKey,
    /// `Sec-WebSocket-Version` is absent or not 13 (RFC 6455 §4.2.1 item 6, §4.4); the value
    /// is what the client offered. Answered with 426 and `Sec-WebSocket-Version: 13`.
    #[error(
        "sec-websocket-version {} is not supported, only 13",
        .0.as_deref().unwrap_or("missing")
    )]
    UnsupportedVersion(Option<String>),
    /// `Content-Length` is not a decimal number, or its copies disagree (RFC 9112 §6.3).
    #[error("invalid content-length")]
    InvalidContentLength,
    /// A request with `Transfer-Encoding`: only `Content-Length` bodies are read
    /// (RFC 9112 §6.1: an unknown transfer coding earns 501).
    #[error("transfer-encoding is not supported, send content-length")]
    UnsupportedTransferEncoding,
    /// Client side: the server answered with a status other than 101 (RFC 6455 §4.1).
    #[error("server answered {0}, not 101")]
    UnexpectedStatus(u16),
    /// Client side: `Sec-WebSocket-Accept` is absent or does not match the key (RFC 6455 §4.1).
    #[error("sec-websocket-accept is missing or does not match the key")]
    BadAccept,
    /// Client side: the server selected an extension although none was offered (RFC 6455 §4.1).
    #[error("server selected an extension that was not offered")]
    UnrequestedExtension,
    /// Client side: the server's permessage-deflate answer breaks RFC 7692 §7.1.
    #[error("server's permessage-deflate response is invalid: {0}")]
    BadExtension(&'static str),
    /// Client side: the server selected a subprotocol the client did not offer (RFC 6455 §4.1).
    #[error("server selected subprotocol {0:?}, which was not offered")]
    UnrequestedProtocol(String),
}

impl HandshakeError {
    /// The HTTP status the server answers with (RFC 6455 §4.2.1, §4.4). Client-side failures
    /// map to 502, since the peer that erred is the upstream server. No `_` arm: a new variant
    /// must choose.
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge { .. } | Self::TooManyHeaders { .. } => 431,
            Self::MalformedHead(_)
            | Self::MethodNotGet(_)
            | Self::UnsupportedHttpVersion(_)
            | Self::MissingHeader(_)
            | Self::DuplicateHeader(_)
            | Self::UpgradeNotWebSocket
            | Self::ConnectionNotUpgrade
            | Self::InvalidKey
            | Self::InvalidContentLength => 400,
            Self::UnsupportedVersion(_) => 426,
            Self::UnsupportedTransferEncoding => 501,
            Self::UnexpectedStatus(_)
            | Self::BadAccept
            | Self::UnrequestedExtension
            | Self::BadExtension(_)
            | Self::UnrequestedProtocol(_) => 502,
        }
    }

    /// A complete HTTP/1.1 error response: [`status`](Self::status), `Connection: close`, a
    /// `text/plain` body giving the reason, and `Sec-WebSocket-Version: 13` on a 426
    /// (RFC 6455 §4.2.2, §4.4).
    pub fn response(&self) -> Vec<u8> {
        let status = self.status();
        let body = format!("{self}\n");
        let mut headers = vec![("Connection", "close")];
        if let Self::UnsupportedVersion(_) = self {
            headers.push(("Sec-WebSocket-Version", SUPPORTED_VERSION));
        }
        http_response(
            status,
            reason_phrase(status),
            &headers,
            Some("text/plain; charset=utf-8"),
            body.as_bytes(),
        )
    }
}

/// Reads a client's opening handshake (RFC 6455 §4.2.1), or any HTTP/1.x request head,
/// from bytes that may arrive in any split, down to one byte at a time.
///
/// # Examples
///
/// ```
/// use uringcast::protocol::handshake::{ServerHandshake, DEFAULT_MAX_HEAD_BYTES};
///
/// let mut handshake = ServerHandshake::new(DEFAULT_MAX_HEAD_BYTES);
/// let received = b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
///     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
///     Sec-WebSocket-Version: 13\r\n\r\n\x81\x80";
/// let (used, request) = handshake.feed(received)?;
/// assert_eq!(&received[used..], b"\x81\x80"); // the first frame's bytes stay with the caller
/// let request = request.expect("the head is complete");
/// let reply = match request.validate_upgrade() {
///     Ok(upgrade) => upgrade.response(None),
///     Err(error) => error.response(),
/// };
/// assert!(reply.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
/// # Ok::<(), uringcast::protocol::handshake::HandshakeError>(())
/// ```
#[derive(Debug)]
pub struct ServerHandshake {
    reader: HeadReader,
}

impl ServerHandshake {
    /// A reader that holds at most `max_head_bytes` of a request head, through its CRLFCRLF.
    /// It allocates nothing until bytes arrive.
    pub fn new(max_head_bytes: usize) -> Self {
        Self {
            reader: HeadReader::new(max_head_bytes),
        }
    }

    /// Feeds received bytes. Returns how many bytes of `input` were consumed, and the request
    /// once its head is complete. Bytes after the head's CRLFCRLF belong to what follows (the
    /// frame stream, or a body) and are not consumed. After a request the reader is empty and
    /// ready for the next head (HTTP/1.1 keep-alive).
    ///
    /// # Errors
    ///
    /// [`HandshakeError::HeadTooLarge`] as soon as the head would exceed the limit,
    /// [`HandshakeError::TooManyHeaders`], or [`HandshakeError::MalformedHead`] if the head is
    /// not HTTP/1.x. The handshake is then over: send [`HandshakeError::response`] and close.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Request>), HandshakeError> {
        let (used, head) = self.reader.feed(input)?;
        match head {
            Some(head) => Ok((used, Some(Request::parse(head)?))),
            None => Ok((used, None)),
        }
    }

    /// Bytes of an incomplete head held now; never more than the limit.
    #[doc(hidden)]
    pub fn buffered_len(&self) -> usize {
        self.reader.buf.len()
    }
}

impl Default for ServerHandshake {
    /// A reader limited to [`DEFAULT_MAX_HEAD_BYTES`].
    fn default() -> Self {
        Self::new(DEFAULT_MAX_HEAD_BYTES)
    }
}

/// A parsed HTTP/1.x request head: an opening handshake (RFC 6455 §4.2.1) or a plain request.
/// Header names compare case-insensitively; values are the raw bytes, trimmed of surrounding
/// whitespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    head: Head,
    method: Span,
    path: Span,
    query: Option<Span>,
    version: u8,
    /// The address of the peer that sent it, when the transport knows it.
    peer: Option<std::net::SocketAddr>,
}

impl Request {
    /// The address of the TCP peer that sent the request, when the server was asked to learn
    /// it (a cap per client address is configured); a proxy's address when behind one.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.peer
    }

    /// Records the peer's address (the driver does, from the accept).
    pub fn set_peer_addr(&mut self, peer: Option<std::net::SocketAddr>) {
        self.peer = peer;
    }

    /// The method, e.g. `GET`.
    pub fn method(&self) -> &str {
        self.head.text(self.method)
    }

    /// The request target without its query, e.g. `/chat` for `/chat?room=1`.
    pub fn path(&self) -> &str {
        self.head.text(self.path)
    }

    /// The query after the first `?` of the target, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.map(|span| self.head.text(span))
    }

    /// The minor HTTP version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Whether the client asks to send another request on this connection: HTTP/1.1 with
    /// `keep-alive` among its `Connection` tokens and no `close` (RFC 9112 §9.3, §9.6).
    /// HTTP/1.1 makes every connection persistent unless it says otherwise, but a server may
    /// close after any answer; this one keeps a connection only for clients that say they
    /// will reuse it (the Pusher SDKs, Node's and Python's HTTP clients with their agents),
    /// so a client that reads its answer to the end of the stream still gets its end.
    pub fn asks_keep_alive(&self) -> bool {
        let tokens = || {
            self.head
                .values("connection")
                .flat_map(|value| value.split(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
        };
        self.version == 1
            && tokens().any(|token| token.eq_ignore_ascii_case(b"keep-alive"))
            && !tokens().any(|token| token.eq_ignore_ascii_case(b"close"))
    }

    /// The value of the first header field called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.values(name).next()
    }

    /// Every header field in order of arrival, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.head.fields()
    }

    /// The `Origin` header (RFC 6455 §4.2.1 item 7, §10.2), if present and UTF-8.
    pub fn origin(&self) -> Option<&str> {
        self.header("origin")
            .and_then(|value| str::from_utf8(value).ok())
    }

    /// The subprotocols the client offers in `Sec-WebSocket-Protocol`, in order of preference
    /// (RFC 6455 §4.2.1 item 8, §11.3.4): every copy of the field, split at commas, trimmed.
    pub fn protocols(&self) -> impl Iterator<Item = &str> {
        self.head
            .values("sec-websocket-protocol")
            .filter_map(|value| str::from_utf8(value).ok())
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|protocol| !protocol.is_empty())
    }

    /// Whether the request asks for a WebSocket upgrade at all: an `Upgrade` header with the
    /// token `websocket` (RFC 6455 §4.2.1 item 3). Routes plain HTTP away from
    /// [`validate_upgrade`](Self::validate_upgrade).
    pub fn is_upgrade(&self) -> bool {
        self.head.has_token("upgrade", "websocket")
    }

    /// The body length from `Content-Length`, or `None` if there is no body (RFC 9112 §6.3).
    /// A list of identical values (`5, 5`) is accepted as one.
    ///
    /// # Errors
    ///
    /// [`HandshakeError::UnsupportedTransferEncoding`] if `Transfer-Encoding` is present,
    /// [`HandshakeError::InvalidContentLength`] if a value is not a decimal `u64` or the
    /// values disagree.
    pub fn body_length(&self) -> Result<Option<u64>, HandshakeError> {
        if self.header("transfer-encoding").is_some() {
            return Err(HandshakeError::UnsupportedTransferEncoding);
        }
        let mut length = None;
        for value in self.head.values("content-length") {
            for item in value.split(|&byte| byte == b',') {
                let parsed =
                    parse_decimal(item.trim_ascii()).ok_or(HandshakeError::InvalidContentLength)?;
                if length.is_some_and(|earlier| earlier != parsed) {
                    return Err(HandshakeError::InvalidContentLength);
                }
                length = Some(parsed);
            }
        }
        Ok(length)
    }

    /// The `Sec-WebSocket-Key` as sent, once checked to be the padded base64 of exactly
    /// 16 bytes (RFC 6455 §4.2.1 item 5).
    ///
    /// # Errors
    ///
    /// [`HandshakeError::MissingHeader`], [`HandshakeError::DuplicateHeader`] or
    /// [`HandshakeError::InvalidKey`].
    pub fn websocket_key(&self) -> Result<&str, HandshakeError> {
        const NAME: &str = "sec-websocket-key";
        let key = self
            .head
            .single(NAME)?
            .ok_or(HandshakeError::MissingHeader(NAME))?;
        // 16 bytes always encode to 24 characters; checking first also bounds `decoded`.
        if key.len() != 24 {
            return Err(HandshakeError::InvalidKey);
        }
        let mut decoded = [0; 18];
        match STANDARD.decode_slice(key, &mut decoded) {
            Ok(16) => str::from_utf8(key).map_err(|_| HandshakeError::InvalidKey),
            _ => Err(HandshakeError::InvalidKey),
        }
    }

    /// The permessage-deflate offer uringcast would accept among the request's
    /// `Sec-WebSocket-Extensions` (RFC 7692 §7.1; see [`deflate::negotiate`]), if any.
    pub fn deflate_offer(&self) -> Option<Agreed> {
        deflate::negotiate(self.head.values("sec-websocket-extensions"))
    }

    /// Checks the opening handshake against RFC 6455 §4.2.1, in its order: GET, HTTP/1.1,
    /// `Host`, `Upgrade: websocket`, `Connection: upgrade` (tokens in comma lists, any case),
    /// the key, then `Sec-WebSocket-Version: 13`. `Sec-WebSocket-Extensions` is ignored: no
    /// extension is negotiated. Subprotocol and origin policy are the caller's
    /// ([`protocols`](Self::protocols), [`origin`](Self::origin)).
    ///
    /// # Errors
    ///
    /// The first rule broken: [`HandshakeError::UnsupportedVersion`] answers 426, every other
    /// 400 (see [`HandshakeError::status`]).
    pub fn validate_upgrade(&self) -> Result<Upgrade, HandshakeError> {
        if self.method() != "GET" {
            return Err(HandshakeError::MethodNotGet(self.method().to_owned()));
        }
        if self.version != 1 {
            return Err(HandshakeError::UnsupportedHttpVersion(self.version));
        }
        self.head
            .single("host")?
            .ok_or(HandshakeError::MissingHeader("host"))?;
        if !self.is_upgrade() {
            return Err(HandshakeError::UpgradeNotWebSocket);
        }
        if !self.head.has_token("connection", "upgrade") {
            return Err(HandshakeError::ConnectionNotUpgrade);
        }
        let key = self.websocket_key()?;
        match self.head.single("sec-websocket-version")? {
            Some(version) if version == SUPPORTED_VERSION.as_bytes() => {}
            offered => {
                return Err(HandshakeError::UnsupportedVersion(
                    offered.map(|value| String::from_utf8_lossy(value).into_owned()),
                ))
            }
        }
        Ok(Upgrade {
            accept: accept_key(key.as_bytes()),
        })
    }

    fn parse(head: Vec<u8>) -> Result<Self, HandshakeError> {
        let mut table = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut table);
        let status = request.parse(&head).map_err(HandshakeError::from)?;
        ensure_complete(status, head.len())?;
        let (Some(method), Some(target), Some(version)) =
            (request.method, request.path, request.version)
        else {
            return Err(HandshakeError::MalformedHead("incomplete request line"));
        };
        let method = Span::within(&head, method.as_bytes());
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(Span::within(&head, query.as_bytes()))),
            None => (target, None),
        };
        let path = Span::within(&head, path.as_bytes());
        let fields = Span::fields(&head, request.headers);
        Ok(Self {
            head: Head {
                bytes: head,
                fields,
            },
            method,
            path,
            query,
            version,
            peer: None,
        })
    }
}

/// An accepted opening handshake: what the server answers with (RFC 6455 §4.2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "the 101 response must be sent"]
pub struct Upgrade {
    accept: String,
}

impl Upgrade {
    /// The `Sec-WebSocket-Accept` value (RFC 6455 §4.2.2 step 5.4).
    pub fn accept(&self) -> &str {
        &self.accept
    }

    /// The 101 response (RFC 6455 §4.2.2 step 5). `protocol` is the selected subprotocol,
    /// one of [`Request::protocols`], or `None` to select none; no extension is ever selected.
    pub fn response(&self, protocol: Option<&str>) -> Vec<u8> {
        self.response_with(protocol, None)
    }

    /// The 101 response, with permessage-deflate accepted on `deflate`'s terms (from
    /// [`Request::deflate_offer`]) when given.
    pub fn response_with(&self, protocol: Option<&str>, deflate: Option<&Agreed>) -> Vec<u8> {
        let mut head = String::from("HTTP/1.1 101 Switching Protocols\r\n");
        push_header(&mut head, "Upgrade", "websocket");
        push_header(&mut head, "Connection", "Upgrade");
        push_header(&mut head, "Sec-WebSocket-Accept", &self.accept);
        if let Some(protocol) = protocol {
            push_header(&mut head, "Sec-WebSocket-Protocol", protocol);
        }
        if let Some(agreed) = deflate {
            push_header(&mut head, "Sec-WebSocket-Extensions", &agreed.response());
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

/// The only `Sec-WebSocket-Version` this implementation speaks (RFC 6455 §4.1 item 9).
const SUPPORTED_VERSION: &str = "13";

impl From<httparse::Error> for HandshakeError {
    fn from(error: httparse::Error) -> Self {
        let what = match error {
            httparse::Error::TooManyHeaders => return Self::TooManyHeaders { limit: MAX_HEADERS },
            httparse::Error::HeaderName => "invalid header name",
            httparse::Error::HeaderValue => "invalid header value",
            httparse::Error::NewLine => "invalid line ending",
            httparse::Error::Status => "invalid status code",
            httparse::Error::Token => "invalid token in start line",
            httparse::Error::Version => "invalid http version",
        };
        Self::MalformedHead(what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The client handshake of RFC 6455 §1.2, with the key of §1.3.
    const RFC_REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    /// A masked text frame "Hello" (RFC 6455 §5.7), following a head in the same read.
    const FRAME: &[u8] = &[
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];

    /// A request head from its start line and header lines.
    fn head(start: &str, fields: &[&str]) -> Vec<u8> {
        let mut text = format!("{start}\r\n");
        for field in fields {
            text.push_str(field);
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        text.into_bytes()
    }

    #[test]
    fn keep_alive_is_asked_for_in_http11() {
        let parse = |bytes: Vec<u8>| {
            let mut reader = ServerHandshake::new(4096);
            reader.feed(&bytes).unwrap().1.unwrap()
        };
        let asks = |start: &str, fields: &[&str]| parse(head(start, fields)).asks_keep_alive();
        assert!(asks("POST /p HTTP/1.1", &["Connection: keep-alive"]));
        assert!(asks("POST /p HTTP/1.1", &["Connection: TE,  Keep-Alive "]));
        assert!(asks(
            "POST /p HTTP/1.1",
            &["Connection: te", "connection: keep-alive"]
        ));
        assert!(!asks("POST /p HTTP/1.1", &["Host: a"]), "not asked");
        assert!(!asks(
            "POST /p HTTP/1.1",
            &["Connection: keep-alive, close"]
        ));
        assert!(!asks(
            "POST /p HTTP/1.1",
            &["Connection: keep-alive", "Connection: close"]
        ));
        assert!(!asks("POST /p HTTP/1.0", &["Connection: keep-alive"]));
    }

    /// A valid upgrade request with the field starting with `replace`'s name swapped for
    /// `replace` (or dropped if it is only a name followed by nothing).
    fn upgrade_with(start: &str, replace: Option<(&str, Option<&str>)>) -> Vec<u8> {
        let mut fields = vec![
            "Host: server.example.com".to_owned(),
            "Upgrade: websocket".to_owned(),
            "Connection: Upgrade".to_owned(),
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==".to_owned(),
            "Sec-WebSocket-Version: 13".to_owned(),
        ];
        if let Some((name, value)) = replace {
            fields.retain(|field| !field.starts_with(&format!("{name}:")));
            if let Some(value) = value {
                fields.push(format!("{name}: {value}"));
            }
        }
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        head(start, &fields)
    }

    pub(super) fn parse_whole(bytes: &[u8]) -> Result<Request, HandshakeError> {
        let mut handshake = ServerHandshake::default();
        match handshake.feed(bytes)? {
            (used, Some(request)) => {
                assert_eq!(used, bytes.len());
                Ok(request)
            }
            (_, None) => panic!("head incomplete: {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    fn validate(bytes: &[u8]) -> Result<Upgrade, HandshakeError> {
        parse_whole(bytes)?.validate_upgrade()
    }

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn rfc_example_request_gets_101() {
        let request = parse_whole(RFC_REQUEST).unwrap();
        assert_eq!(request.method(), "GET");
        assert_eq!(request.path(), "/chat");
        assert_eq!(request.query(), None);
        assert_eq!(request.version(), 1);
        assert_eq!(request.origin(), Some("http://example.com"));
        assert_eq!(
            request.protocols().collect::<Vec<_>>(),
            ["chat", "superchat"]
        );
        assert!(request.is_upgrade());
        assert_eq!(request.websocket_key(), Ok("dGhlIHNhbXBsZSBub25jZQ=="));
        let upgrade = request.validate_upgrade().unwrap();
        assert_eq!(upgrade.accept(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(
            upgrade.response(Some("chat")),
            b"HTTP/1.1 101 Switching Protocols\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              Sec-WebSocket-Protocol: chat\r\n\r\n"
        );
        assert!(!String::from_utf8(upgrade.response(None))
            .unwrap()
            .contains("Sec-WebSocket-Protocol"));
    }

    #[test]
    fn headers_are_exposed_in_order_and_case_insensitively() {
        let request = parse_whole(RFC_REQUEST).unwrap();
        assert_eq!(request.header("HOST"), Some(&b"server.example.com"[..]));
        assert_eq!(request.header("x-missing"), None);
        let names: Vec<&str> = request.headers().map(|(name, _)| name).collect();
        assert_eq!(names.first(), Some(&"Host"));
        assert_eq!(names.last(), Some(&"Sec-WebSocket-Version"));
        assert_eq!(names.len(), 7);
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_request() {
        let whole = parse_whole(RFC_REQUEST).unwrap();
        let mut handshake = ServerHandshake::default();
        let (last, rest) = RFC_REQUEST.split_last().unwrap();
        for byte in rest {
            assert_eq!(handshake.feed(&[*byte]).unwrap(), (1, None));
        }
        assert_eq!(handshake.feed(&[*last]).unwrap(), (1, Some(whole)));
        assert_eq!(handshake.buffered_len(), 0);
    }

    #[test]
    fn every_split_gives_the_same_request_and_leaves_the_frame() {
        let whole = parse_whole(RFC_REQUEST).unwrap();
        let mut stream = RFC_REQUEST.to_vec();
        stream.extend_from_slice(FRAME);
        for split in 0..=stream.len() {
            let (first, second) = stream.split_at(split);
            let mut handshake = ServerHandshake::default();
            let (used, request) = handshake.feed(first).unwrap();
            let (used, request) = match request {
                Some(request) => (used, request),
                None => {
                    assert_eq!(used, first.len(), "split {split}");
                    let (more, request) = handshake.feed(second).unwrap();
                    (used + more, request.expect("head complete"))
                }
            };
            assert_eq!(request, whole, "split {split}");
            assert_eq!(used, RFC_REQUEST.len(), "split {split}");
            assert_eq!(stream.get(used..), Some(FRAME), "split {split}");
        }
    }

    #[test]
    fn head_of_exactly_the_limit_is_accepted_one_more_is_431() {
        let len = RFC_REQUEST.len();
        let mut at_limit = ServerHandshake::new(len);
        let mut stream = RFC_REQUEST.to_vec();
        stream.extend_from_slice(FRAME);
        assert!(matches!(at_limit.feed(&stream), Ok((used, Some(_))) if used == len));

        let mut one_under = ServerHandshake::new(len - 1);
        assert_eq!(
            one_under.feed(RFC_REQUEST),
            Err(HandshakeError::HeadTooLarge { limit: len - 1 })
        );
        assert_eq!(one_under.buffered_len(), 0);

        // One byte at a time: the reader fills to the limit, then fails on the next byte.
        let limit = len - 1;
        let mut one_under = ServerHandshake::new(limit);
        for (at, byte) in RFC_REQUEST.iter().enumerate() {
            let result = one_under.feed(&[*byte]);
            assert!(one_under.buffered_len() <= limit);
            assert!(one_under.reader.buf.capacity() <= limit);
            if at < limit {
                assert_eq!(result, Ok((1, None)), "byte {at}");
            } else {
                assert_eq!(result, Err(HandshakeError::HeadTooLarge { limit }));
            }
        }
    }

    #[test]
    fn new_reader_allocates_nothing() {
        assert_eq!(ServerHandshake::new(1 << 20).reader.buf.capacity(), 0);
    }

    #[test]
    fn too_large_error_response_is_431() {
        let error = HandshakeError::HeadTooLarge { limit: 8192 };
        assert_eq!(error.to_string(), "http head exceeds 8192 bytes");
        assert_eq!(error.status(), 431);
        let response = error.response();
        assert!(response.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    }

    #[test]
    fn too_many_headers_is_431() {
        let fields: Vec<String> = (0..=MAX_HEADERS).map(|n| format!("X-{n}: v")).collect();
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        let error = parse_whole(&head("GET / HTTP/1.1", &fields)).unwrap_err();
        assert_eq!(error, HandshakeError::TooManyHeaders { limit: 64 });
        assert_eq!(error.status(), 431);
        // Exactly the table's size is fine.
        let fields = fields.get(..MAX_HEADERS).unwrap();
        assert!(parse_whole(&head("GET / HTTP/1.1", fields)).is_ok());
    }

    #[test]
    fn each_bad_upgrade_is_400() {
        let key = |bytes: &[u8]| STANDARD.encode(bytes);
        let key15 = key(&[1; 15]);
        let key17 = key(&[1; 17]);
        let cases: Vec<(Vec<u8>, HandshakeError)> = vec![
            (
                upgrade_with("GET /chat HTTP/1.1", Some(("Host", None))),
                HandshakeError::MissingHeader("host"),
            ),
            (
                upgrade_with("POST /chat HTTP/1.1", None),
                HandshakeError::MethodNotGet("POST".to_owned()),
            ),
            (
                upgrade_with("get /chat HTTP/1.1", None),
                HandshakeError::MethodNotGet("get".to_owned()),
            ),
            (
                upgrade_with("GET /chat HTTP/1.0", None),
                HandshakeError::UnsupportedHttpVersion(0),
            ),
            (
                upgrade_with("GET /chat HTTP/1.1", Some(("Upgrade", None))),
                HandshakeError::UpgradeNotWebSocket,
            ),
            (
                upgrade_with("GET /chat HTTP/1.1", Some(("Upgrade", Some("h2c")))),
                HandshakeError::UpgradeNotWebSocket,
            ),
            (
                upgrade_with("GET /chat HTTP/1.1", Some(("Connection", None))),
                HandshakeError::ConnectionNotUpgrade,
            ),
            (
                upgrade_with(
                    "GET /chat HTTP/1.1",
                    Some(("Connection", Some("keep-alive"))),
                ),
                HandshakeError::ConnectionNotUpgrade,
            ),
            (
                upgrade_with("GET /chat HTTP/1.1", Some(("Connection", Some("upgrades")))),
                HandshakeError::ConnectionNotUpgrade,
            ),
            (
                upgrade_with("GET /chat HTTP/1.1", Some(("Sec-WebSocket-Key", None))),
                HandshakeError::MissingHeader("sec-websocket-key"),
            ),
            (
                upgrade_with(
                    "GET /chat HTTP/1.1",
                    Some(("Sec-WebSocket-Key", Some("!!!!!!!!!!!!!!!!!!!!!!!!"))),
                ),
                HandshakeError::InvalidKey,
            ),
            (
                upgrade_with(
                    "GET /chat HTTP/1.1",
                    Some(("Sec-WebSocket-Key", Some("dGhlIHNhbXBsZSBub25jZQ"))),
                ),
                HandshakeError::InvalidKey,
            ),
            (
                upgrade_with(
                    "GET /chat HTTP/1.1",
                    Some(("Sec-WebSocket-Key", Some(&key15))),
                ),
                HandshakeError::InvalidKey,
            ),
            (
                upgrade_with(
                    "GET /chat HTTP/1.1",
                    Some(("Sec-WebSocket-Key", Some(&key17))),
                ),
                HandshakeError::InvalidKey,
            ),
            (
                head(
                    "GET /chat HTTP/1.1",
                    &[
                        "Host: a",
                        "Upgrade: websocket",
                        "Connection: Upgrade",
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                        "Sec-WebSocket-Version: 13",
                    ],
                ),
                HandshakeError::DuplicateHeader("sec-websocket-key"),
            ),
        ];
        assert_eq!(key15.len(), 20);
        assert_eq!(key17.len(), 24);
        for (request, expected) in cases {
            let text = String::from_utf8_lossy(&request).into_owned();
            let error = validate(&request).unwrap_err();
            assert_eq!(error, expected, "{text}");
            assert_eq!(error.status(), 400, "{text}");
            let response = error.response();
            assert!(
                response.starts_with(b"HTTP/1.1 400 Bad Request\r\n"),
                "{text}"
            );
        }
    }

    #[test]
    fn garbage_heads_are_400() {
        let cases: [&[u8]; 6] = [
            b"\x00\x01\x02garbage\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
            b"\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\nxyz\r\n\r\n",
        ];
        for bytes in cases {
            let error = parse_whole(bytes).unwrap_err();
            assert!(
                matches!(error, HandshakeError::MalformedHead(_)),
                "{bytes:?}: {error:?}"
            );
            assert_eq!(error.status(), 400);
        }
    }

    #[test]
    fn missing_or_other_version_is_426_with_the_version_header() {
        for (value, offered) in [(None, None), (Some("8"), Some("8".to_owned()))] {
            let request =
                upgrade_with("GET /chat HTTP/1.1", Some(("Sec-WebSocket-Version", value)));
            let error = validate(&request).unwrap_err();
            assert_eq!(error, HandshakeError::UnsupportedVersion(offered));
            assert_eq!(error.status(), 426);
            let response = String::from_utf8(error.response()).unwrap();
            assert!(response.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
            assert!(response.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        }
        assert_eq!(
            HandshakeError::UnsupportedVersion(None).to_string(),
            "sec-websocket-version missing is not supported, only 13"
        );
    }

    #[test]
    fn error_response_is_complete_http() {
        let error = HandshakeError::ConnectionNotUpgrade;
        let bytes = error.response();
        let mut table = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut table);
        let httparse::Status::Complete(head_len) = response.parse(&bytes).unwrap() else {
            panic!("incomplete response");
        };
        assert_eq!(response.code, Some(400));
        let field = |name: &str| {
            response
                .headers
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case(name))
                .map(|header| header.value)
        };
        assert_eq!(field("connection"), Some(&b"close"[..]));
        assert!(field("content-type").unwrap().starts_with(b"text/plain"));
        assert_eq!(field("sec-websocket-version"), None);
        let body = bytes.get(head_len..).unwrap();
        assert_eq!(
            field("content-length"),
            Some(body.len().to_string().as_bytes())
        );
        assert_eq!(body, b"connection header lacks the upgrade token\n");
    }

    #[test]
    fn token_lists_match_in_any_case() {
        for connection in ["keep-alive, Upgrade", "UPGRADE", "upgrade,keep-alive"] {
            let request =
                upgrade_with("GET /chat HTTP/1.1", Some(("Connection", Some(connection))));
            assert!(validate(&request).is_ok(), "{connection}");
        }
        let request = upgrade_with("GET /chat HTTP/1.1", Some(("Upgrade", Some("WebSocket"))));
        assert!(validate(&request).is_ok());
    }

    #[test]
    fn query_origin_and_protocols_are_exposed() {
        let request = head(
            "GET /chat?room=1&x HTTP/1.1",
            &[
                "Host: a",
                "Origin: https://example.org",
                "Sec-WebSocket-Protocol: a , b,,",
                "Sec-WebSocket-Protocol: c",
            ],
        );
        let request = parse_whole(&request).unwrap();
        assert_eq!(request.path(), "/chat");
        assert_eq!(request.query(), Some("room=1&x"));
        assert_eq!(request.origin(), Some("https://example.org"));
        assert_eq!(request.protocols().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert!(!request.is_upgrade());
    }

    #[test]
    fn plain_requests_parse_and_report_their_body() {
        let mut stream = head(
            "POST /publish?topic=t HTTP/1.1",
            &["Host: a", "Content-Length: 5"],
        );
        let head_len = stream.len();
        stream.extend_from_slice(b"hello");
        stream.extend_from_slice(&head("GET /healthz HTTP/1.0", &[]));

        let mut handshake = ServerHandshake::default();
        let (used, request) = handshake.feed(&stream).unwrap();
        assert_eq!(used, head_len);
        let request = request.unwrap();
        assert_eq!((request.method(), request.path()), ("POST", "/publish"));
        assert!(!request.is_upgrade());
        assert_eq!(request.body_length(), Ok(Some(5)));

        // The same reader takes the next head once the caller has consumed the body.
        let next = stream.get(head_len + 5..).unwrap();
        let (used, request) = handshake.feed(next).unwrap();
        assert_eq!(used, next.len());
        let request = request.unwrap();
        assert_eq!((request.path(), request.version()), ("/healthz", 0));
        assert_eq!(request.body_length(), Ok(None));
    }

    #[test]
    fn body_length_rules() {
        let length = |fields: &[&str]| {
            parse_whole(&head("POST / HTTP/1.1", fields))
                .unwrap()
                .body_length()
        };
        assert_eq!(length(&["Content-Length: 0"]), Ok(Some(0)));
        assert_eq!(
            length(&["Content-Length: 7, 7", "Content-Length: 7"]),
            Ok(Some(7))
        );
        assert_eq!(
            length(&["Content-Length: 18446744073709551615"]),
            Ok(Some(u64::MAX))
        );
        for bad in [
            &["Content-Length: 18446744073709551616"][..],
            &["Content-Length: -1"],
            &["Content-Length: +1"],
            &["Content-Length: 1 2"],
            &["Content-Length: "],
            &["Content-Length: 1", "Content-Length: 2"],
        ] {
            assert_eq!(
                length(bad),
                Err(HandshakeError::InvalidContentLength),
                "{bad:?}"
            );
        }
        let chunked = length(&["Transfer-Encoding: chunked", "Content-Length: 3"]).unwrap_err();
        assert_eq!(chunked, HandshakeError::UnsupportedTransferEncoding);
        assert_eq!(chunked.status(), 501);
    }

    #[test]
    fn http_response_writes_every_part() {
        assert_eq!(
            http_response(204, "No Content", &[("Connection", "close")], None, b""),
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(
            http_response(200, "OK", &[], Some("text/plain"), b"ok\n"),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
        );
        // One Connection field, whoever wrote it, in any case.
        let given = http_response(200, "OK", &[("connection", "close")], None, b"");
        assert_eq!(
            String::from_utf8(given)
                .unwrap()
                .to_ascii_lowercase()
                .matches("connection:")
                .count(),
            1
        );
    }

    /// Bytes rich in the pieces a head is made of, so the reader gets past `Partial`.
    fn head_like_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"\r\n".to_vec()),
            Just(b"\r\n\r\n".to_vec()),
            Just(b"GET /a?b HTTP/1.1\r\n".to_vec()),
            Just(b"HTTP/1.1 101 OK\r\n".to_vec()),
            Just(b"Upgrade: websocket\r\n".to_vec()),
            Just(b"Connection: upgrade\r\n".to_vec()),
            Just(b"Content-Length: 12\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..16),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    fn arbitrary_stream() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            head_like_bytes()
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_or_exceed_the_limit(
            stream in arbitrary_stream(),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
            limit in 0_usize..1024,
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut server = ServerHandshake::new(limit);
            let (mut client, _) = ClientHandshake::new("h", "/", [0; 16], &[]);
            let (mut server_at, mut client_at) = (0, 0);
            let (mut server_done, mut client_done) = (false, false);
            for cut in cuts {
                while !server_done && server_at < cut {
                    let chunk = stream.get(server_at..cut).unwrap();
                    match server.feed(chunk) {
                        Ok((used, request)) => {
                            prop_assert!(used <= chunk.len());
                            prop_assert!(used > 0 || chunk.is_empty());
                            server_at += used;
                            if let Some(request) = request {
                                // Whatever parsed must answer without panicking.
                                let _ = (request.validate_upgrade(), request.body_length());
                            }
                        }
                        Err(error) => {
                            prop_assert!(matches!(error.status(), 400 | 431));
                            server_done = true;
                        }
                    }
                    prop_assert!(server.buffered_len() <= limit);
                    prop_assert!(server.reader.buf.capacity() <= limit);
                }
                while !client_done && client_at < cut {
                    let chunk = stream.get(client_at..cut).unwrap();
                    match client.feed(chunk) {
                        Ok((used, _)) => {
                            prop_assert!(used <= chunk.len() && (used > 0 || chunk.is_empty()));
                            client_at += used;
                        }
                        Err(_) => client_done = true,
                    }
                    prop_assert!(client.buffered_len() <= DEFAULT_MAX_HEAD_BYTES);
                }
            }
        }

        #[test]
        fn any_splits_of_a_valid_request_give_the_same_request(
            cuts in proptest::collection::vec(0..=RFC_REQUEST.len() + FRAME.len(), 0..8),
        ) {
            let mut stream = RFC_REQUEST.to_vec();
            stream.extend_from_slice(FRAME);
            let mut cuts = cuts;
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut handshake = ServerHandshake::default();
            let mut at = 0;
            let mut found = None;
            for cut in cuts {
                if found.is_some() || cut < at {
                    continue;
                }
                let (used, request) = handshake.feed(stream.get(at..cut).unwrap()).unwrap();
                at += used;
                found = request;
            }
            prop_assert_eq!(at, RFC_REQUEST.len());
            prop_assert_eq!(found, Some(parse_whole(RFC_REQUEST).unwrap()));
        }
    }
}
