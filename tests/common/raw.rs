//! Hand-built client frames and a raw TCP client, for the handshake and malformed-frame
//! tests: every byte on the wire is the test's own.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use uringcast::protocol::frame::{encode_frame, OpCode};

use super::{MASK, READ_TIMEOUT};

// ---------------------------------------------------------------------------------------------
// Hand-built client frames
// ---------------------------------------------------------------------------------------------

/// A masked client frame (the well-formed kind), via the library's encoder.
pub fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    encode_frame(opcode, fin, payload, Some(MASK)).to_vec()
}

/// An unmasked frame, as a server would send it: a protocol violation from a client.
pub fn unmasked_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    encode_frame(opcode, fin, payload, None).to_vec()
}

/// A masked frame built byte by byte, with any first byte (FIN, RSV bits, any opcode,
/// reserved ones included).
pub fn raw_masked_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// A client close frame's payload: the code, then the reason.
pub fn close_body(code: u16, reason: &str) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason.as_bytes());
    body
}

// ---------------------------------------------------------------------------------------------
// Raw TCP client
// ---------------------------------------------------------------------------------------------

/// A frame as received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// For a close frame: its code (None for an empty payload).
    pub fn close_code(&self) -> Option<u16> {
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A parsed HTTP response head.
#[derive(Debug, Clone)]
pub struct HttpHead {
    pub status: u16,
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub raw: String,
}

impl HttpHead {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How a read ended when no data came.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// read returned 0.
    Eof,
    /// ECONNRESET (or similar): the peer closed with unread data, or aborted.
    Reset(ErrorKind),
}

/// A blocking std::net client speaking raw bytes; every read has an upper-bound deadline.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub timeout: Duration,
}

/// The request head of a well-formed opening handshake.
pub fn upgrade_request(addr: SocketAddr, key: &str) -> String {
    format!(
        "GET /chat HTTP/1.1\r\n\
         Host: {addr}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         \r\n"
    )
}

/// The RFC 6455 §1.3 sample key.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

impl RawClient {
    /// Connects, with [`READ_TIMEOUT`] as the per-read upper bound.
    pub fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        Ok(Self {
            stream,
            buf: Vec::new(),
            timeout: READ_TIMEOUT,
        })
    }

    /// Connects from `local` (any 127.0.0.0/8 address works on loopback), so that a test can
    /// be two client addresses at once.
    pub fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.bind(&SocketAddr::new(local, 0).into())?;
        socket
            .connect(&addr.into())
            .with_context(|| format!("connecting to {addr} from {local}"))?;
        let stream = TcpStream::from(socket);
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        Ok(Self {
            stream,
            buf: Vec::new(),
            timeout: READ_TIMEOUT,
        })
    }

    /// Connects and completes the opening handshake, checking the 101 and the accept key.
    pub fn upgrade(addr: SocketAddr) -> Result<Self> {
        let mut client = Self::connect(addr)?;
        client.send(upgrade_request(addr, SAMPLE_KEY).as_bytes())?;
        let head = client
            .read_http_head()
            .context("reading the 101 response")?;
        ensure!(head.status == 101, "expected 101, got:\n{}", head.raw);
        let accept = head.header("Sec-WebSocket-Accept");
        ensure!(
            accept == Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "wrong Sec-WebSocket-Accept {accept:?} in:\n{}",
            head.raw
        );
        ensure!(
            head.header("Upgrade")
                .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
            "no `Upgrade: websocket` in:\n{}",
            head.raw
        );
        Ok(client)
    }

    /// Writes all of `bytes`.
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .context("writing to the server")?;
        Ok(())
    }

    /// Reads more bytes into the buffer before `deadline`. Ok(None) on EOF / reset.
    fn fill(&mut self, deadline: Instant) -> Result<Option<Ended>> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("timed out after {:?} waiting for the server", self.timeout);
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(Some(Ended::Eof)),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(None);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    bail!("timed out after {:?} waiting for the server", self.timeout)
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Ok(Some(Ended::Reset(e.kind())))
                }
                Err(e) => return Err(e).context("reading from the server"),
            }
        }
    }

    /// Reads an HTTP response head (through CRLFCRLF); bytes after it stay buffered.
    pub fn read_http_head(&mut self) -> Result<HttpHead> {
        let deadline = Instant::now() + self.timeout;
        let end = loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if let Some(ended) = self.fill(deadline)? {
                bail!(
                    "connection ended ({ended:?}) before a whole HTTP response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        };
        let raw: Vec<u8> = self.buf.drain(..end).collect();
        let raw = String::from_utf8(raw).context("the response head is not UTF-8")?;
        let mut lines = raw.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_string();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        ensure!(version == "HTTP/1.1", "bad status line {status_line:?}");
        let status = parts
            .next()
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap_or((l, ""));
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        Ok(HttpHead {
            status,
            status_line,
            headers,
            raw,
        })
    }

    /// Reads one frame from the server. Fails on EOF, on timeout, and on a masked frame.
    pub fn read_frame(&mut self) -> Result<Frame> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf)? {
                self.buf.drain(..used);
                return Ok(frame);
            }
            if let Some(ended) = self.fill(deadline)? {
                bail!(
                    "connection ended ({ended:?}) while waiting for a frame ({} bytes buffered)",
                    self.buf.len()
                );
            }
        }
    }

    /// Reads one whole data message (reassembling fragments), failing on any control frame
    /// other than a pong.
    pub fn read_message(&mut self) -> Result<(u8, Vec<u8>)> {
        let first = self.read_frame()?;
        ensure!(
            first.opcode == 0x1 || first.opcode == 0x2,
            "expected a text or binary frame, got {}",
            describe(&first)
        );
        let mut payload = first.payload;
        let mut fin = first.fin;
        while !fin {
            let next = self.read_frame()?;
            ensure!(
                next.opcode == 0x0,
                "expected a continuation frame, got {}",
                describe(&next)
            );
            payload.extend_from_slice(&next.payload);
            fin = next.fin;
        }
        Ok((first.opcode, payload))
    }

    /// Reads frames until a close frame, skipping pings and data; returns the close frame.
    pub fn expect_close(&mut self) -> Result<Frame> {
        loop {
            let frame = self.read_frame().context("waiting for a close frame")?;
            if frame.opcode == 0x8 {
                return Ok(frame);
            }
        }
    }

    /// Reads until the server closes the connection (read returns 0, or a reset), within the
    /// client's timeout; returns whatever bytes came first (buffered ones included).
    pub fn read_to_end(&mut self) -> Result<(Vec<u8>, Ended)> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(ended) = self
                .fill(deadline)
                .context("waiting for the server to close the connection")?
            {
                return Ok((std::mem::take(&mut self.buf), ended));
            }
        }
    }

    /// Like [`read_to_end`](Self::read_to_end), and fails if any byte came first.
    pub fn expect_eof(&mut self) -> Result<Ended> {
        let (extra, ended) = self.read_to_end()?;
        ensure!(
            extra.is_empty(),
            "expected the connection to end, but got {} more bytes: {:?}",
            extra.len(),
            &extra[..extra.len().min(64)]
        );
        Ok(ended)
    }

    /// Sends a masked close frame.
    pub fn send_close(&mut self, code: u16, reason: &str) -> Result<()> {
        self.send(&client_frame(
            OpCode::Close,
            true,
            &close_body(code, reason),
        ))
    }

    /// Closes the socket abruptly with an RST (SO_LINGER 0) instead of a FIN.
    pub fn abort(self) -> Result<()> {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket fd and a pointer to a live `linger` of the length given.
        let rc = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("setsockopt(SO_LINGER)");
        }
        drop(self.stream);
        Ok(())
    }
}

/// A short human description of a frame for failure messages.
pub fn describe(frame: &Frame) -> String {
    let name = match frame.opcode {
        0x0 => "continuation",
        0x1 => "text",
        0x2 => "binary",
        0x8 => "close",
        0x9 => "ping",
        0xA => "pong",
        _ => "reserved-opcode",
    };
    let mut s = format!(
        "{name} frame (fin={}, rsv={}, {} bytes",
        frame.fin,
        frame.rsv,
        frame.payload.len()
    );
    if frame.opcode == 0x8 {
        s += &format!(", code {:?}", frame.close_code());
        if frame.payload.len() > 2 {
            s += &format!(
                ", reason {:?}",
                String::from_utf8_lossy(&frame.payload[2..])
            );
        }
    }
    s + ")"
}

/// Parses one server frame from the start of `buf`: Ok(None) if incomplete. Independent of the
/// library's decoder on purpose.
pub fn parse_server_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv = (buf[0] >> 4) & 0x7;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    ensure!(
        !masked,
        "the server sent a masked frame (RFC 6455 §5.1 forbids it)"
    );
    let (len, mut pos) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10)
        }
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len)?;
    if buf.len() < pos + len {
        return Ok(None);
    }
    let payload = buf[pos..pos + len].to_vec();
    pos += len;
    Ok(Some((
        Frame {
            fin,
            rsv,
            opcode,
            payload,
        },
        pos,
    )))
}
