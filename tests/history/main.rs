//! Integration tests of positions, history and recovery, and of Server-Sent Events: servers
//! started in-process (`spawn_with`, rooms by path) on `127.0.0.1:0`, read by a small SSE
//! client written here (the HTML standard's parsing, §9.2.6) and by tokio-tungstenite.
//!
//! Every wait is a read bounded by a timeout; nothing sleeps.

#[path = "../common/mod.rs"]
mod common;
mod recovery;
mod sse;

use std::net::SocketAddr;
use std::ops::Deref;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;
use uringcast::config::ServerBuilder;
use uringcast::server::{spawn_with, RoomsByPath, ServerHandle};

/// Upper bound on any single await.
const STEP: Duration = Duration::from_secs(20);

/// An in-process server in rooms-by-path mode, shut down on drop.
struct InProcess(Option<ServerHandle>);

impl InProcess {
    /// `workers` workers, history of `history` per topic, and `configure` for the rest.
    fn start(
        workers: usize,
        history: usize,
        configure: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> Result<Self> {
        let builder = uringcast::server::Server::builder()
            .listen("127.0.0.1:0".parse()?)
            .workers(workers)
            .ping_interval(None)
            .drain_timeout(Duration::from_secs(1))
            .publish_token(Some("T".into()))
            .history(history);
        let config = configure(builder).build()?;
        Ok(Self(Some(spawn_with(config, RoomsByPath)?)))
    }

    fn addr(&self) -> SocketAddr {
        self.local_addr()
    }

    fn stop(mut self) {
        if let Some(handle) = self.0.take() {
            handle.shutdown();
        }
    }
}

impl Deref for InProcess {
    type Target = ServerHandle;
    fn deref(&self) -> &ServerHandle {
        self.0.as_ref().expect("the handle is taken only on drop")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.shutdown();
        }
    }
}

/// One dispatched event, as a browser's `EventSource` would see it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Event {
    /// `message`, `binary` or `reset`.
    kind: String,
    data: String,
    /// The stream's last event id when it was dispatched.
    id: String,
}

/// An event-stream client: the request, the response head, then events.
struct Sse {
    reader: BufReader<TcpStream>,
    status: u16,
    head: String,
    /// The last event id seen (set by id-only events too, as a browser does).
    last_id: String,
}

impl Sse {
    /// `GET path` with `Accept: text/event-stream` and `headers`.
    async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Self> {
        let mut stream = timeout(STEP, TcpStream::connect(addr))
            .await
            .context("connect timed out")??;
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request += &format!("{name}: {value}\r\n");
        }
        request += "\r\n";
        stream.write_all(request.as_bytes()).await?;
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = timeout(STEP, reader.read_line(&mut line))
                .await
                .context("no response head")??;
            ensure!(n > 0, "closed in the response head: {head:?}");
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
        Ok(Self {
            reader,
            status,
            head,
            last_id: String::new(),
        })
    }

    /// A header of the response, by its lowercase name.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The next dispatched event; `Ok(None)` when the stream ends.
    async fn next(&mut self) -> Result<Option<Event>> {
        let (mut kind, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            let n = timeout(STEP, self.reader.read_line(&mut line))
                .await
                .context("no event within the step")??;
            if n == 0 {
                return Ok(None);
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if data.is_empty() {
                    kind.clear();
                    continue;
                }
                data.pop();
                let kind = if kind.is_empty() {
                    "message".into()
                } else {
                    kind
                };
                return Ok(Some(Event {
                    kind,
                    data,
                    id: self.last_id.clone(),
                }));
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => kind = value.into(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" => self.last_id = value.into(),
                _ => {}
            }
        }
    }

    /// The next event, which must exist.
    async fn event(&mut self) -> Result<Event> {
        self.next()
            .await?
            .ok_or_else(|| anyhow!("the stream ended"))
    }

    /// Reads until the stream's first id is known (the id-only event it starts with).
    async fn position(&mut self) -> Result<String> {
        while self.last_id.is_empty() {
            let mut line = String::new();
            let n = timeout(STEP, self.reader.read_line(&mut line))
                .await
                .context("no position within the step")??;
            ensure!(n > 0, "the stream ended before its position");
            if let Some(id) = line.trim_end().strip_prefix("id: ") {
                self.last_id = id.into();
            }
        }
        Ok(self.last_id.clone())
    }
}

/// The offset of an `EPOCH:OFFSET` id.
fn offset_of(id: &str) -> Result<u64> {
    id.rsplit_once(':')
        .and_then(|(_, o)| o.parse().ok())
        .ok_or_else(|| anyhow!("{id:?} is not EPOCH:OFFSET"))
}

/// The epoch of an `EPOCH:OFFSET` id.
fn epoch_of(id: &str) -> &str {
    id.rsplit_once(':').map_or(id, |(e, _)| e)
}

/// A plain HTTP request; the whole response (head, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String, Vec<u8>)> {
    let mut stream = timeout(STEP, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    if method == "POST" {
        request += &format!("Content-Length: {}\r\n", body.len());
    }
    request += "\r\n";
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    timeout(STEP, stream.read_to_end(&mut raw))
        .await
        .context("no end of response")??;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no response head in {raw:?}"))?
        + 4;
    let head = String::from_utf8(raw[..end].to_vec())?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line"))?;
    Ok((status, head, raw[end..].to_vec()))
}

/// `POST /publish/<topic>` with the test token; the JSON answer.
async fn publish(addr: SocketAddr, topic: &str, text: &str) -> Result<serde_json::Value> {
    let (status, head, body) = http(
        addr,
        "POST",
        &format!("/publish/{topic}"),
        &[
            ("Authorization", "Bearer T"),
            ("Content-Type", "text/plain"),
        ],
        text.as_bytes(),
    )
    .await?;
    if status != 202 {
        bail!("publish answered {status}: {head}");
    }
    Ok(serde_json::from_slice(&body)?)
}
