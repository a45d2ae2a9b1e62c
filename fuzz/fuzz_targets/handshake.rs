//! `ServerHandshake::feed` over arbitrary splits, checked against the whole-input result, a
//! reference head reader written here (where each head ends, when the limit is exceeded), and,
//! for generated near-valid upgrade requests, the `validate_upgrade` result predicted from the
//! generator's model of RFC 6455 §4.2.1.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use uringcast::protocol::handshake::{
    accept_key, HandshakeError, Request, ServerHandshake, Upgrade, DEFAULT_MAX_HEAD_BYTES,
};

#[derive(Arbitrary, Debug)]
enum Input {
    /// Arbitrary bytes.
    Raw {
        limit: u16,
        cuts: Vec<u16>,
        bytes: Vec<u8>,
    },
    /// Pieces a head is made of, mixed with arbitrary bytes, to get past `Partial` often.
    Pieces {
        limit: u16,
        cuts: Vec<u16>,
        pieces: Vec<Piece>,
    },
    /// A generated request whose `validate_upgrade` result is predicted, then arbitrary bytes.
    Structured {
        limit: Option<u16>,
        cuts: Vec<u16>,
        request: Req,
        trailing: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
enum Piece {
    Crlf,
    HeadEnd,
    Lf,
    Cr,
    RequestLine,
    Request10Line,
    StatusLine,
    Host,
    Upgrade,
    Connection,
    Key,
    Version,
    ContentLength,
    Bytes(Vec<u8>),
}

impl Piece {
    fn bytes(&self) -> &[u8] {
        match self {
            Piece::Crlf => b"\r\n",
            Piece::HeadEnd => b"\r\n\r\n",
            Piece::Lf => b"\n",
            Piece::Cr => b"\r",
            Piece::RequestLine => b"GET /a?b HTTP/1.1\r\n",
            Piece::Request10Line => b"GET / HTTP/1.0\r\n",
            Piece::StatusLine => b"HTTP/1.1 101 OK\r\n",
            Piece::Host => b"Host: h\r\n",
            Piece::Upgrade => b"Upgrade: websocket\r\n",
            Piece::Connection => b"Connection: keep-alive, Upgrade\r\n",
            Piece::Key => b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            Piece::Version => b"Sec-WebSocket-Version: 13\r\n",
            Piece::ContentLength => b"Content-Length: 12\r\n",
            Piece::Bytes(bytes) => bytes,
        }
    }
}

/// A near-valid request: every piece is well-formed HTTP, the choices are what §4.2.1 checks.
#[derive(Arbitrary, Debug)]
struct Req {
    method: u8,
    version: u8,
    path: Vec<u8>,
    query: Option<Vec<u8>>,
    /// The five fields of a valid upgrade, with random name case and padding.
    base: Option<Base>,
    /// More fields, valid or not; shuffled in among the base fields by `order`.
    fields: Vec<Field>,
    order: u64,
}

#[derive(Arbitrary, Debug)]
struct Base {
    name_case: [u32; 5],
    pad: [u8; 5],
    key: [u8; 16],
    /// Tokens around `upgrade` in `Connection`.
    connection: Vec<Token>,
}

impl Base {
    fn fields(&self) -> Vec<Field> {
        let mut connection = vec![Token {
            which: 0,
            case: self.name_case[2],
            pad_before: self.pad[2],
            pad_after: self.pad[3],
        }];
        connection.extend(self.connection.iter().take(3).copied());
        let kinds = [
            Kind::Host(0),
            Kind::Upgrade(vec![Token {
                which: 0,
                case: self.name_case[1],
                pad_before: 0,
                pad_after: self.pad[1],
            }]),
            Kind::Connection(connection),
            Kind::Key(Key::Valid(self.key)),
            Kind::Version(0),
        ];
        kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| Field {
                kind,
                name_case: self.name_case[i],
                pad_before: self.pad[i],
                pad_after: self.pad[(i + 1) % 5],
            })
            .collect()
    }
}

#[derive(Arbitrary, Debug)]
struct Field {
    kind: Kind,
    /// Bit i uppercases (or lowercases) character i of the name.
    name_case: u32,
    /// Spaces and tabs around the value (OWS, trimmed by the parser).
    pad_before: u8,
    pad_after: u8,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    Host(u8),
    Upgrade(Vec<Token>),
    Connection(Vec<Token>),
    Key(Key),
    Version(u8),
    Other(u8, u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Token {
    which: u8,
    case: u32,
    pad_before: u8,
    pad_after: u8,
}

#[derive(Arbitrary, Debug)]
enum Key {
    /// The canonical base64 of 16 bytes.
    Valid([u8; 16]),
    /// The same with one character replaced.
    Mutated([u8; 16], u8, u8),
    /// The canonical base64 of some other number of bytes.
    OtherLength(Vec<u8>),
    /// Arbitrary base64-alphabet text.
    Text(Vec<u8>),
}

const METHODS: [&str; 8] = [
    "GET", "GET", "GET", "get", "POST", "HEAD", "GETS", "OPTIONS",
];
const HOSTS: [&str; 4] = ["server.example.com", "127.0.0.1:8080", "", "[::1]:80"];
const UPGRADE_TOKENS: [&str; 7] = [
    "websocket",
    "WebSocket",
    "h2c",
    "websocket/13",
    "",
    "web socket",
    "websockets",
];
const CONNECTION_TOKENS: [&str; 7] = [
    "upgrade",
    "Upgrade",
    "keep-alive",
    "close",
    "upgrades",
    "",
    "up grade",
];
const VERSIONS: [&str; 7] = ["13", "8", "7", "130", "013", "", "13, 8"];
const OTHER_NAMES: [&str; 11] = [
    "X-Custom",
    "Sec-WebSocket-Keys",
    "Hosts",
    "Upgrade-Insecure-Requests",
    "Connection2",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Protocol",
    "Origin",
    "Content-Length",
    "Transfer-Encoding",
    "Sec-WebSocket-Version2",
];
const OTHER_VALUES: [&str; 6] = [
    "permessage-deflate; client_max_window_bits",
    "chat, superchat",
    "http://example.com",
    "12",
    "chunked",
    "",
];
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn pick<'a>(list: &[&'a str], index: u8) -> &'a str {
    list[usize::from(index) % list.len()]
}

fn recase(text: &str, mask: u32) -> String {
    text.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask.rotate_right(i as u32) & 1 != 0 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

fn pad(bits: u8) -> &'static str {
    ["", " ", "\t", "  ", " \t "][usize::from(bits) % 5]
}

/// Standard base64 with padding, written here rather than borrowed from the crate under test.
fn base64(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The canonical padded base64 of exactly 16 bytes: 22 characters, the last of which carries
/// only 2 data bits, then `==` (RFC 4648 §3.5: pad bits are zero).
fn is_key_of_16_bytes(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b[..22].iter().all(|c| ALPHABET.contains(c))
        && b"AQgw".contains(&b[21])
        && &b[22..] == b"=="
}

impl Key {
    fn text(&self) -> String {
        match self {
            Key::Valid(bytes) => base64(bytes),
            Key::Mutated(bytes, at, to) => {
                let mut key = base64(bytes).into_bytes();
                let specials = b"=-_ .";
                let to = *to % (64 + specials.len() as u8);
                key[usize::from(*at) % 24] = if usize::from(to) < 64 {
                    ALPHABET[usize::from(to)]
                } else {
                    specials[usize::from(to) - 64]
                };
                String::from_utf8(key).unwrap()
            }
            Key::OtherLength(bytes) => base64(&bytes[..bytes.len().min(40)]),
            Key::Text(text) => text
                .iter()
                .take(40)
                .map(|&b| char::from(ALPHABET[usize::from(b) % 64]))
                .collect(),
        }
    }
}

impl Field {
    /// The field's line (without CRLF), its canonical lowercase name, and its trimmed value.
    fn render(&self) -> (String, &'static str, String) {
        let (name, value): (&'static str, String) = match &self.kind {
            Kind::Host(i) => ("host", pick(&HOSTS, *i).to_owned()),
            Kind::Upgrade(tokens) => ("upgrade", token_list(tokens, &UPGRADE_TOKENS)),
            Kind::Connection(tokens) => ("connection", token_list(tokens, &CONNECTION_TOKENS)),
            Kind::Key(key) => ("sec-websocket-key", key.text()),
            Kind::Version(i) => ("sec-websocket-version", pick(&VERSIONS, *i).to_owned()),
            Kind::Other(name, value) => (
                leak_lower(pick(&OTHER_NAMES, *name)),
                pick(&OTHER_VALUES, *value).to_owned(),
            ),
        };
        let line = format!(
            "{}:{}{}{}",
            recase(name, self.name_case),
            pad(self.pad_before),
            value,
            pad(self.pad_after)
        );
        (line, name, value.trim_matches([' ', '\t']).to_owned())
    }
}

fn leak_lower(name: &str) -> &'static str {
    OTHER_NAMES_LOWER
        .iter()
        .find(|lower| lower.eq_ignore_ascii_case(name))
        .expect("a listed name")
}

const OTHER_NAMES_LOWER: [&str; 11] = [
    "x-custom",
    "sec-websocket-keys",
    "hosts",
    "upgrade-insecure-requests",
    "connection2",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "origin",
    "content-length",
    "transfer-encoding",
    "sec-websocket-version2",
];

fn token_list(tokens: &[Token], list: &[&str]) -> String {
    tokens
        .iter()
        .take(8)
        .map(|t| {
            format!(
                "{}{}{}",
                pad(t.pad_before),
                recase(pick(list, t.which), t.case),
                pad(t.pad_after)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Req {
    /// The request head, and what parsing then `validate_upgrade` must give.
    fn render(
        &self,
    ) -> (
        Vec<u8>,
        Result<Result<String, HandshakeError>, HandshakeError>,
    ) {
        let method = pick(&METHODS, self.method);
        let path: String = std::iter::once('/')
            .chain(
                self.path
                    .iter()
                    .take(20)
                    .map(|&b| char::from(ALPHABET[usize::from(b) % 62])),
            )
            .collect();
        let query: Option<String> = self.query.as_ref().map(|q| {
            q.iter()
                .take(20)
                .map(|&b| char::from(b"abc=&%20"[usize::from(b) % 8]))
                .collect()
        });
        let minor = u8::from(!self.version.is_multiple_of(4));
        let mut head = match &query {
            Some(query) => format!("{method} {path}?{query} HTTP/1.{minor}\r\n"),
            None => format!("{method} {path} HTTP/1.{minor}\r\n"),
        };
        let mut all: Vec<&Field> = self.fields.iter().collect();
        let base = self.base.as_ref().map(Base::fields).unwrap_or_default();
        all.extend(&base);
        // Fisher-Yates driven by `order` (an LCG), so any order of the fields can come up.
        let mut state = self.order;
        for i in (1..all.len()).rev() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            all.swap(i, (state >> 33) as usize % (i + 1));
        }
        let fields: Vec<(String, &'static str, String)> =
            all.into_iter().map(Field::render).collect();
        for (line, _, _) in &fields {
            head.push_str(line);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        if fields.len() > 64 {
            return (
                head.into_bytes(),
                Err(HandshakeError::TooManyHeaders { limit: 64 }),
            );
        }
        (head.into_bytes(), Ok(predict(method, minor, &fields)))
    }
}

/// RFC 6455 §4.2.1 in `validate_upgrade`'s order; the accept key on success.
fn predict(
    method: &str,
    minor: u8,
    fields: &[(String, &'static str, String)],
) -> Result<String, HandshakeError> {
    let values = |name: &str| -> Vec<&str> {
        fields
            .iter()
            .filter(|(_, n, _)| *n == name)
            .map(|(_, _, v)| v.as_str())
            .collect()
    };
    let single = |name: &'static str| -> Result<Option<&str>, HandshakeError> {
        match values(name)[..] {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => Err(HandshakeError::DuplicateHeader(name)),
        }
    };
    let has_token = |name: &str, token: &str| {
        values(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim_matches([' ', '\t']).eq_ignore_ascii_case(token))
    };
    if method != "GET" {
        return Err(HandshakeError::MethodNotGet(method.to_owned()));
    }
    if minor != 1 {
        return Err(HandshakeError::UnsupportedHttpVersion(minor));
    }
    single("host")?.ok_or(HandshakeError::MissingHeader("host"))?;
    if !has_token("upgrade", "websocket") {
        return Err(HandshakeError::UpgradeNotWebSocket);
    }
    if !has_token("connection", "upgrade") {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    let key =
        single("sec-websocket-key")?.ok_or(HandshakeError::MissingHeader("sec-websocket-key"))?;
    if !is_key_of_16_bytes(key) {
        return Err(HandshakeError::InvalidKey);
    }
    match single("sec-websocket-version")? {
        Some("13") => {}
        other => return Err(HandshakeError::UnsupportedVersion(other.map(str::to_owned))),
    }
    Ok(accept_key(key.as_bytes()))
}

#[derive(Debug, PartialEq)]
enum End {
    /// All input consumed; this many bytes of an incomplete head are held.
    Pending(usize),
    Error(HandshakeError),
}

/// Requests with the stream offset where each head ended, then how feeding ended.
#[derive(Debug, PartialEq)]
struct Outcome {
    requests: Vec<(usize, Request)>,
    end: End,
}

fn check_request(request: &Request) {
    let _ = (
        request.method(),
        request.path(),
        request.query(),
        request.version(),
    );
    let _ = (
        request.origin(),
        request.is_upgrade(),
        request.headers().count(),
    );
    let protocols: Vec<&str> = request.protocols().collect();
    if let Err(error) = request.body_length() {
        assert!(matches!(error.status(), 400 | 501), "{error:?}");
        check_error(&error);
    }
    match request.validate_upgrade() {
        Ok(upgrade) => check_upgrade(request, &upgrade, protocols.first().copied()),
        Err(error) => {
            assert!(matches!(error.status(), 400 | 426), "{error:?}");
            check_error(&error);
        }
    }
}

fn check_upgrade(request: &Request, upgrade: &Upgrade, protocol: Option<&str>) {
    assert_eq!(request.method(), "GET");
    assert_eq!(request.version(), 1);
    assert!(request.is_upgrade());
    let key = request.header("sec-websocket-key").expect("a key");
    assert_eq!(
        request.websocket_key(),
        Ok(std::str::from_utf8(key).unwrap())
    );
    assert!(is_key_of_16_bytes(std::str::from_utf8(key).unwrap()));
    assert_eq!(upgrade.accept(), accept_key(key));
    let response = upgrade.response(protocol);
    assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(response.ends_with(b"\r\n\r\n"));
    let accept_line = format!("\r\nSec-WebSocket-Accept: {}\r\n", upgrade.accept());
    assert!(response
        .windows(accept_line.len())
        .any(|w| w == accept_line.as_bytes()));
}

fn check_error(error: &HandshakeError) {
    let response = error.response();
    let start = format!("HTTP/1.1 {} ", error.status());
    assert!(response.starts_with(start.as_bytes()), "{error:?}");
    assert!(response.windows(4).any(|w| w == b"\r\n\r\n"));
}

fn feed_whole(limit: usize, stream: &[u8]) -> Outcome {
    let mut handshake = ServerHandshake::new(limit);
    let mut requests = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &stream[pos..];
        let result = handshake.feed(rest);
        assert!(handshake.buffered_len() <= limit);
        match result {
            Ok((used, Some(request))) => {
                assert!(used > 0 && used <= rest.len(), "{used} of {}", rest.len());
                assert_eq!(handshake.buffered_len(), 0);
                check_request(&request);
                pos += used;
                requests.push((pos, request));
            }
            Ok((used, None)) => {
                assert_eq!(used, rest.len(), "an incomplete head consumes everything");
                let end = End::Pending(handshake.buffered_len());
                return Outcome { requests, end };
            }
            Err(error) => {
                check_error(&error);
                return Outcome {
                    requests,
                    end: End::Error(error),
                };
            }
        }
    }
}

fn feed_split(limit: usize, chunks: &[&[u8]]) -> Outcome {
    let mut handshake = ServerHandshake::new(limit);
    let mut requests = Vec::new();
    let mut offset = 0;
    for chunk in chunks {
        let mut at = 0;
        loop {
            let rest = &chunk[at..];
            let result = handshake.feed(rest);
            assert!(handshake.buffered_len() <= limit);
            match result {
                Ok((used, Some(request))) => {
                    assert!(used > 0 && used <= rest.len());
                    at += used;
                    requests.push((offset + at, request));
                }
                Ok((used, None)) => {
                    assert_eq!(used, rest.len());
                    break;
                }
                Err(error) => {
                    return Outcome {
                        requests,
                        end: End::Error(error),
                    }
                }
            }
        }
        offset += chunk.len();
    }
    let end = End::Pending(handshake.buffered_len());
    Outcome { requests, end }
}

/// Where the head starting at `from` ends (after its first CRLFCRLF), if it does.
fn head_end(stream: &[u8], from: usize) -> Option<usize> {
    stream[from..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| from + at + 4)
}

/// The reference head reader: heads end at the first CRLFCRLF, are at most `limit` bytes
/// through it, and an over-long head fails only once a byte beyond the limit arrives.
fn check_against_reader(limit: usize, stream: &[u8], outcome: &Outcome) {
    let mut pos = 0;
    for (end, _) in &outcome.requests {
        let expected = head_end(stream, pos).expect("a request needs a CRLFCRLF");
        assert_eq!(*end, expected, "a head ends at its first CRLFCRLF");
        assert!(
            end - pos <= limit,
            "a head of {} bytes, limit {limit}",
            end - pos
        );
        pos = *end;
    }
    let fits = head_end(stream, pos).filter(|end| end - pos <= limit);
    match &outcome.end {
        End::Pending(held) => {
            assert!(fits.is_none(), "a complete head was not returned");
            assert_eq!(*held, stream.len() - pos);
            assert!(*held <= limit);
        }
        End::Error(HandshakeError::HeadTooLarge { limit: reported }) => {
            assert_eq!(*reported, limit);
            assert!(fits.is_none(), "a head within the limit was refused");
            assert!(
                stream.len() - pos > limit,
                "refused before the limit was passed"
            );
        }
        End::Error(HandshakeError::TooManyHeaders { .. } | HandshakeError::MalformedHead(_)) => {
            assert!(fits.is_some(), "a parse error without a complete head");
        }
        End::Error(other) => panic!("feed returned {other:?}"),
    }
}

fn split<'a>(bytes: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) % (bytes.len() + 1))
        .collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

fn check_stream(limit: usize, cuts: &[u16], stream: &[u8]) -> Outcome {
    let whole = feed_whole(limit, stream);
    check_against_reader(limit, stream, &whole);
    let pieces = feed_split(limit, &split(stream, cuts));
    assert_eq!(whole, pieces, "split feeding differs from whole feeding");
    if stream.len() <= 512 {
        let singles: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(whole, feed_split(limit, &singles), "byte-at-a-time differs");
    }
    whole
}

fuzz_target!(|input: Input| {
    match input {
        Input::Raw { limit, cuts, bytes } => {
            check_stream(usize::from(limit) % 2048, &cuts, &bytes);
        }
        Input::Pieces {
            limit,
            cuts,
            pieces,
        } => {
            let stream: Vec<u8> = pieces.iter().flat_map(|p| p.bytes()).copied().collect();
            check_stream(usize::from(limit) % 2048, &cuts, &stream);
        }
        Input::Structured {
            limit,
            cuts,
            request,
            trailing,
        } => {
            let limit = limit.map_or(DEFAULT_MAX_HEAD_BYTES, usize::from);
            let (head, expected) = request.render();
            let mut stream = head.clone();
            stream.extend_from_slice(&trailing);
            let outcome = check_stream(limit, &cuts, &stream);
            if head.len() > limit {
                return;
            }
            match (expected, outcome.requests.first()) {
                (Ok(expected), Some((end, request))) => {
                    assert_eq!(*end, head.len());
                    assert_eq!(request.headers().count(), head_fields(&head));
                    let got = request.validate_upgrade().map(|u| u.accept().to_owned());
                    assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(&head));
                }
                (Err(expected), None) => assert_eq!(outcome.end, End::Error(expected)),
                (expected, got) => panic!(
                    "expected {expected:?}, got {got:?} / {:?} for {:?}",
                    outcome.end,
                    String::from_utf8_lossy(&head)
                ),
            }
        }
    }
});

/// The number of header lines in a generated head.
fn head_fields(head: &[u8]) -> usize {
    head.windows(2).filter(|w| w == b"\r\n").count() - 2
}
