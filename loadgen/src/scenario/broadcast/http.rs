//! Publishing over HTTP (`--publish-url`): K threads that each `POST` their messages to the
//! publish endpoint on their own schedule, one request at a time.

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use uringcast::protocol::OpCode;

use crate::scenario::session::pusher::Channels;
use crate::scenario::stamp::{self, Stamp, Stamper};
use crate::scenario::traffic::{Expect, Senders};
use crate::target::Target;

/// How long an HTTP publish may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest HTTP response head accepted from the publish endpoint.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// `http://HOST[:PORT]/PATH`: where `--publish-url` posts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishUrl {
    /// Address, `Host` header and request target, as for a `ws://` URL.
    pub target: Target,
}

impl std::str::FromStr for PublishUrl {
    type Err = crate::target::TargetError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        match url.strip_prefix("http://") {
            // The same rules as a ws:// URL, default port 80 alike.
            Some(rest) => Ok(Self {
                target: format!("ws://{rest}").parse()?,
            }),
            None if url.starts_with("https://") => {
                Err(crate::target::TargetError::HttpsPublish(url.to_owned()))
            }
            None => Err(crate::target::TargetError::PublishScheme(url.to_owned())),
        }
    }
}

/// K threads that publish over HTTP, each on its own schedule, one request at a time.
pub struct HttpSenders {
    url: PublishUrl,
    token: Option<String>,
    publishers: u64,
    rate: f64,
    stamper: Stamper,
    stop: Arc<AtomicBool>,
    /// Accepted publishes (2xx) per publisher.
    accepted: Arc<[AtomicU64]>,
    errors: Arc<AtomicU64>,
    /// The first error's text, for the report.
    first_error: Arc<std::sync::Mutex<Option<String>>>,
    threads: Vec<JoinHandle<()>>,
    /// The `pusher` scenario: each publish is a signed trigger to the app's channels.
    pusher: Option<Arc<Channels>>,
}

impl HttpSenders {
    /// `publishers` clients posting `rate` messages per second in total to `url`.
    pub fn new(
        url: PublishUrl,
        token: Option<String>,
        publishers: u64,
        rate: f64,
        stamper: Stamper,
    ) -> Self {
        Self {
            url,
            token,
            publishers,
            rate,
            stamper,
            stop: Arc::new(AtomicBool::new(false)),
            accepted: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            errors: Arc::new(AtomicU64::new(0)),
            first_error: Arc::new(std::sync::Mutex::new(None)),
            threads: Vec::new(),
            pusher: None,
        }
    }

    /// Each publish becomes a trigger through Pusher's signed HTTP API
    /// (`POST /apps/{id}/events?auth_...`) to every channel of `channels`, the stamp its
    /// `data`.
    #[must_use]
    pub fn pusher(mut self, channels: Arc<Channels>) -> Self {
        self.pusher = Some(channels);
        self
    }

    /// The first failed publish, if any.
    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }
}

impl Senders for HttpSenders {
    fn go(&mut self, start_ns: u64) {
        let k = self.publishers;
        let interval_ns = 1e9 * k as f64 / self.rate;
        for id in 0..k {
            let mut client = HttpPublisher {
                url: self.url.clone(),
                token: self.token.clone(),
                stamper: self.stamper.clone(),
                stream: None,
                pusher: self.pusher.clone(),
            };
            let stop = Arc::clone(&self.stop);
            let accepted = Arc::clone(&self.accepted);
            let errors = Arc::clone(&self.errors);
            let first_error = Arc::clone(&self.first_error);
            let offset_ns = interval_ns * id as f64 / k as f64;
            let spawned = std::thread::Builder::new()
                .name(format!("uringcast-load-http-{id}"))
                .spawn(move || {
                    let mut seq = 0u64;
                    let mut body = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let due = start_ns + (offset_ns + seq as f64 * interval_ns) as u64;
                        let now = stamp::now_ns();
                        if due > now {
                            // Sleep in short steps, so a stop is seen soon.
                            std::thread::sleep(Duration::from_nanos(due - now).min(POLL_STOP));
                            continue;
                        }
                        let stamp = Stamp {
                            id,
                            seq,
                            sent_ns: due,
                        };
                        client.stamper.write(stamp, &mut body);
                        match client.publish(&body) {
                            Ok(()) => {
                                accepted[id as usize].fetch_add(1, Ordering::Relaxed);
                            }
                            Err(error) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut first) = first_error.lock() {
                                    first.get_or_insert_with(|| error.to_string());
                                }
                            }
                        }
                        seq += 1;
                    }
                });
            match spawned {
                Ok(handle) => self.threads.push(handle),
                Err(error) => {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut first) = self.first_error.lock() {
                        first.get_or_insert_with(|| format!("cannot start a publisher: {error}"));
                    }
                }
            }
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }

    fn expect(&self, _: &Expect) -> Expect {
        Expect {
            per_publisher: self
                .accepted
                .iter()
                .map(|a| a.load(Ordering::Relaxed))
                .collect(),
        }
    }

    fn sent(&self) -> u64 {
        self.accepted
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }

    fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

const POLL_STOP: Duration = Duration::from_millis(20);

/// One HTTP publisher: plain HTTP/1.1 over a TCP socket, the connection reused while the
/// server keeps it open (it asks with `Connection: keep-alive`, as the Pusher SDKs' HTTP
/// clients do; a server that closes after each answer gets a fresh connection per publish).
struct HttpPublisher {
    url: PublishUrl,
    token: Option<String>,
    stamper: Stamper,
    stream: Option<BufReader<TcpStream>>,
    pusher: Option<Arc<Channels>>,
}

impl HttpPublisher {
    /// Posts one message; `Ok` for a 2xx answer.
    fn publish(&mut self, body: &[u8]) -> io::Result<()> {
        let reused = self.stream.is_some();
        match self.try_publish(body) {
            Err(error) if reused && is_stale(&error) => {
                // The server closed the kept-alive connection between requests: retry fresh.
                self.stream = None;
                self.try_publish(body)
            }
            other => other,
        }
    }

    fn try_publish(&mut self, body: &[u8]) -> io::Result<()> {
        let target = &self.url.target;
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&target.addr, HTTP_TIMEOUT)?;
            stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
            stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
            stream.set_nodelay(true)?;
            self.stream = Some(BufReader::new(stream));
        }
        let reader = self.stream.as_mut().expect("set above");
        // A text/* body is published as a text message, as a WebSocket publisher's would be.
        let mut content_type = match self.stamper.opcode() {
            OpCode::Text => "text/plain; charset=utf-8",
            _ => "application/octet-stream",
        };
        let mut path = std::borrow::Cow::Borrowed(target.path.as_str());
        let trigger;
        let mut body = body;
        if let Some(channels) = &self.pusher {
            // A Pusher trigger: the stamp (text) as the event's data, signed now.
            trigger = channels.trigger_body(&String::from_utf8_lossy(body));
            body = &trigger;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            path = channels.trigger_target(body, now).into();
            content_type = "application/json";
        }
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: keep-alive\r\n",
            target.host,
            body.len()
        );
        if let Some(token) = &self.token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        reader.get_mut().write_all(&bytes)?;
        let response = read_response(reader);
        let keep = matches!(&response, Ok(r) if r.keep_alive);
        if !keep {
            self.stream = None;
        }
        let response = response?;
        if (200..300).contains(&response.status) {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "publish to {}: HTTP {}",
                target.addr, response.status
            )))
        }
    }
}

/// An error that a closed kept-alive connection gives on its next request.
fn is_stale(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionAborted
    )
}

struct Response {
    status: u16,
    keep_alive: bool,
}

/// Reads a response head and its `Content-Length` body.
fn read_response(reader: &mut BufReader<TcpStream>) -> io::Result<Response> {
    let mut line = String::new();
    let mut head = 0;
    if reader.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    head += line.len();
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or("");
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {:?}", line.trim_end())))?;
    let mut keep_alive = version == "HTTP/1.1";
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head += line.len();
        if head > MAX_RESPONSE_HEAD {
            return Err(io::Error::other("HTTP response head too long"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<u64>().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    match length {
        Some(n) => {
            io::copy(&mut reader.by_ref().take(n), &mut io::sink())?;
        }
        None => {
            // No length: the body runs to the end of the connection.
            keep_alive = false;
            io::copy(reader, &mut io::sink())?;
        }
    }
    Ok(Response { status, keep_alive })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_urls_are_http() {
        let url: PublishUrl = "http://127.0.0.1:9001/publish/room".parse().unwrap();
        assert_eq!(url.target.path, "/publish/room");
        assert_eq!(url.target.addr.port(), 9001);
        // Another machine's address: taken as written (nothing is resolved or sent).
        let url: PublishUrl = "http://192.0.2.1/publish/x".parse().unwrap();
        assert_eq!(url.target.addr, "192.0.2.1:80".parse().unwrap());
        assert!("https://127.0.0.1/publish/x".parse::<PublishUrl>().is_err());
        assert!("ws://127.0.0.1/publish/x".parse::<PublishUrl>().is_err());
    }
}
