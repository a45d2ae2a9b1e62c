//! The client's side of the opening handshake (RFC 6455 §4.1): the request, and the check of
//! the server's 101.

use std::str;

use base64::{engine::general_purpose::STANDARD, Engine as _};

use super::{accept_key, HandshakeError, DEFAULT_MAX_HEAD_BYTES, SUPPORTED_VERSION};
use crate::protocol::deflate::{self, Agreed};
use crate::protocol::http::{ensure_complete, push_header, Head, HeadReader, Span, MAX_HEADERS};

/// The client's side of the opening handshake (RFC 6455 §4.1): builds the request and
/// verifies the server's 101, from response bytes in any split.
///
/// # Examples
///
/// ```
/// use uringcast::protocol::handshake::{ClientHandshake, ServerHandshake};
///
/// let key = [7; 16]; // from the caller's random source
/// let (mut client, request) = ClientHandshake::new("example.com", "/chat", key, &[]);
/// let (_, received) = ServerHandshake::default().feed(&request)?;
/// let upgrade = received.expect("a whole request").validate_upgrade()?;
/// let (_, response) = client.feed(&upgrade.response(None))?;
/// assert_eq!(response.expect("a whole response").status(), 101);
/// # Ok::<(), uringcast::protocol::handshake::HandshakeError>(())
/// ```
#[derive(Debug)]
pub struct ClientHandshake {
    reader: HeadReader,
    accept: String,
    protocols: Vec<String>,
    /// [`deflate::CLIENT_OFFER`] is among the extra headers: the server may accept it.
    offered_deflate: bool,
}

impl ClientHandshake {
    /// Builds the opening handshake for `host` and `path_and_query` (RFC 6455 §4.1), with `key`
    /// as the nonce: 16 random bytes from the caller. `extra_headers` follow the required ones;
    /// a `Sec-WebSocket-Protocol` among them is what the server's choice is checked against.
    /// Returns the handshake and the request bytes to send. Arguments come from the caller and
    /// must not contain CR or LF. Response heads are limited to [`DEFAULT_MAX_HEAD_BYTES`].
    pub fn new(
        host: &str,
        path_and_query: &str,
        key: [u8; 16],
        extra_headers: &[(&str, &str)],
    ) -> (Self, Vec<u8>) {
        let key = STANDARD.encode(key);
        let mut request = format!("GET {path_and_query} HTTP/1.1\r\n");
        push_header(&mut request, "Host", host);
        push_header(&mut request, "Upgrade", "websocket");
        push_header(&mut request, "Connection", "Upgrade");
        push_header(&mut request, "Sec-WebSocket-Key", &key);
        push_header(&mut request, "Sec-WebSocket-Version", SUPPORTED_VERSION);
        for (name, value) in extra_headers {
            push_header(&mut request, name, value);
        }
        request.push_str("\r\n");
        let protocols = extra_headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-protocol"))
            .flat_map(|(_, list)| list.split(','))
            .map(str::trim)
            .filter(|protocol| !protocol.is_empty())
            .map(str::to_owned)
            .collect();
        let offered_deflate = extra_headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                && value.to_ascii_lowercase().contains(deflate::EXTENSION)
        });
        let handshake = Self {
            reader: HeadReader::new(DEFAULT_MAX_HEAD_BYTES),
            accept: accept_key(key.as_bytes()),
            protocols,
            offered_deflate,
        };
        (handshake, request.into_bytes())
    }

    /// Feeds received bytes; the same contract as
    /// [`ServerHandshake::feed`](super::ServerHandshake::feed). Returns the response once its
    /// head is complete and verified: status 101, `Upgrade: websocket`,
    /// `Connection: upgrade`, the expected `Sec-WebSocket-Accept`, no extension, and a
    /// subprotocol only if one was offered (RFC 6455 §4.1). Bytes after the head are the first
    /// frames and are not consumed.
    ///
    /// # Errors
    ///
    /// The reader's errors (as for [`ServerHandshake::feed`](super::ServerHandshake::feed)),
    /// then [`HandshakeError::UnexpectedStatus`], [`HandshakeError::UpgradeNotWebSocket`],
    /// [`HandshakeError::ConnectionNotUpgrade`], [`HandshakeError::BadAccept`],
    /// [`HandshakeError::UnrequestedExtension`] or [`HandshakeError::UnrequestedProtocol`].
    /// The connection must then be closed.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Response>), HandshakeError> {
        let (used, head) = self.reader.feed(input)?;
        let Some(head) = head else {
            return Ok((used, None));
        };
        let response = Response::parse(head)?;
        self.verify(&response)?;
        Ok((used, Some(response)))
    }

    /// Bytes of an incomplete head held now; never more than the limit.
    #[doc(hidden)]
    pub fn buffered_len(&self) -> usize {
        self.reader.buf.len()
    }

    fn verify(&self, response: &Response) -> Result<(), HandshakeError> {
        if response.status != 101 {
            return Err(HandshakeError::UnexpectedStatus(response.status));
        }
        if !response.head.has_token("upgrade", "websocket") {
            return Err(HandshakeError::UpgradeNotWebSocket);
        }
        if !response.head.has_token("connection", "upgrade") {
            return Err(HandshakeError::ConnectionNotUpgrade);
        }
        match response.head.single("sec-websocket-accept") {
            Ok(Some(accept)) if accept == self.accept.as_bytes() => {}
            _ => return Err(HandshakeError::BadAccept),
        }
        let mut extensions = response.head.values("sec-websocket-extensions");
        if self.offered_deflate {
            deflate::parse_response(extensions).map_err(HandshakeError::BadExtension)?;
        } else if extensions.any(|value| !value.is_empty()) {
            return Err(HandshakeError::UnrequestedExtension);
        }
        if let Some(value) = response.header("sec-websocket-protocol") {
            let chosen = str::from_utf8(value).map(str::trim);
            if !chosen.is_ok_and(|chosen| self.protocols.iter().any(|offered| offered == chosen)) {
                let chosen = String::from_utf8_lossy(value).into_owned();
                return Err(HandshakeError::UnrequestedProtocol(chosen));
            }
        }
        Ok(())
    }
}

/// A server's verified 101 response to a [`ClientHandshake`] (RFC 6455 §4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    head: Head,
    status: u16,
    reason: Span,
}

impl Response {
    /// The status code; 101 for every `Response` a [`ClientHandshake`] returns.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason phrase, e.g. `Switching Protocols`.
    pub fn reason(&self) -> &str {
        self.head.text(self.reason)
    }

    /// The value of the first header field called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.values(name).next()
    }

    /// Every header field in order of arrival, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.head.fields()
    }

    /// The permessage-deflate terms the server accepted, if it did (checked by
    /// [`ClientHandshake::feed`] against an offer of [`deflate::CLIENT_OFFER`]).
    pub fn deflate(&self) -> Option<Agreed> {
        deflate::parse_response(self.head.values("sec-websocket-extensions"))
            .ok()
            .flatten()
    }

    /// The subprotocol the server selected in `Sec-WebSocket-Protocol` (RFC 6455 §4.2.2
    /// step 5.5), if any.
    pub fn protocol(&self) -> Option<&str> {
        self.header("sec-websocket-protocol")
            .and_then(|value| str::from_utf8(value).ok())
            .map(str::trim)
    }

    fn parse(head: Vec<u8>) -> Result<Self, HandshakeError> {
        let mut table = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut table);
        let status = response.parse(&head).map_err(HandshakeError::from)?;
        ensure_complete(status, head.len())?;
        let (Some(code), Some(reason)) = (response.code, response.reason) else {
            return Err(HandshakeError::MalformedHead("incomplete status line"));
        };
        let reason = Span::within(&head, reason.as_bytes());
        let fields = Span::fields(&head, response.headers);
        Ok(Self {
            head: Head {
                bytes: head,
                fields,
            },
            status: code,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::tests::parse_whole;
    use crate::protocol::handshake::{http_response, Request};

    /// Runs the client's request through the server and returns the client and the request.
    fn client_and_request(extra: &[(&str, &str)]) -> (ClientHandshake, Request) {
        let key = *b"0123456789abcdef";
        let (client, bytes) = ClientHandshake::new("localhost:9000", "/ws?x=1", key, extra);
        let request = parse_whole(&bytes).unwrap();
        (client, request)
    }

    #[test]
    fn client_and_server_agree() {
        let (mut client, request) = client_and_request(&[
            ("Sec-WebSocket-Protocol", "chat, v2"),
            ("Origin", "http://o"),
        ]);
        assert_eq!(request.header("host"), Some(&b"localhost:9000"[..]));
        assert_eq!((request.path(), request.query()), ("/ws", Some("x=1")));
        assert_eq!(request.origin(), Some("http://o"));
        assert_eq!(request.protocols().collect::<Vec<_>>(), ["chat", "v2"]);
        let upgrade = request.validate_upgrade().unwrap();
        assert_eq!(
            upgrade.accept(),
            accept_key(STANDARD.encode(b"0123456789abcdef").as_bytes())
        );

        let mut stream = upgrade.response(Some("v2"));
        let head_len = stream.len();
        stream.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        // One byte at a time, then the rest with the frame in one read.
        let (first, rest) = stream.split_at(10);
        for byte in first {
            assert_eq!(client.feed(&[*byte]).unwrap(), (1, None));
            assert!(client.buffered_len() <= DEFAULT_MAX_HEAD_BYTES);
        }
        let (used, response) = client.feed(rest).unwrap();
        assert_eq!(used + first.len(), head_len);
        let response = response.unwrap();
        assert_eq!(
            (response.status(), response.reason()),
            (101, "Switching Protocols")
        );
        assert_eq!(response.protocol(), Some("v2"));
        assert_eq!(response.header("upgrade"), Some(&b"websocket"[..]));
        assert_eq!(response.headers().count(), 4);
    }

    #[test]
    fn client_rejects_a_tampered_accept() {
        let (mut client, request) = client_and_request(&[]);
        let genuine = request.validate_upgrade().unwrap().response(None);
        let tampered = String::from_utf8(genuine)
            .unwrap()
            .replace("Sec-WebSocket-Accept: ", "Sec-WebSocket-Accept: x");
        assert_eq!(
            client.feed(tampered.as_bytes()),
            Err(HandshakeError::BadAccept)
        );

        let (mut client, _) = client_and_request(&[]);
        let missing = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(client.feed(missing), Err(HandshakeError::BadAccept));
    }

    #[test]
    fn client_reports_a_404() {
        let (mut client, _) = client_and_request(&[]);
        let response = http_response(404, "Not Found", &[], Some("text/plain"), b"no\n");
        let error = client.feed(&response).unwrap_err();
        assert_eq!(error, HandshakeError::UnexpectedStatus(404));
        assert_eq!(error.status(), 502);
        assert_eq!(error.to_string(), "server answered 404, not 101");
    }

    #[test]
    fn client_rejects_what_it_did_not_offer() {
        let response = |extra: &str| {
            let (client, request) = client_and_request(&[("Sec-WebSocket-Protocol", "chat")]);
            let mut bytes = request.validate_upgrade().unwrap().response(None);
            bytes.truncate(bytes.len() - 2);
            bytes.extend_from_slice(format!("{extra}\r\n\r\n").as_bytes());
            let mut client = client;
            client
                .feed(&bytes)
                .map(|(_, response)| response.map(|r| r.protocol().map(str::to_owned)))
        };
        assert_eq!(
            response("Sec-WebSocket-Protocol: chat"),
            Ok(Some(Some("chat".to_owned())))
        );
        assert_eq!(
            response("Sec-WebSocket-Protocol: superchat"),
            Err(HandshakeError::UnrequestedProtocol("superchat".to_owned()))
        );
        assert_eq!(
            response("Sec-WebSocket-Extensions: permessage-deflate"),
            Err(HandshakeError::UnrequestedExtension)
        );
        assert_eq!(response("Upgrade: h2c"), Ok(Some(None)));
        let (mut client, _) = client_and_request(&[]);
        let no_upgrade = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(
            client.feed(no_upgrade),
            Err(HandshakeError::UpgradeNotWebSocket)
        );
    }
}
