//! Hostile clients, each loop bounded in count and time.

use super::*;

/// Counters of the hostile clients: `kind` → `what` → count.
#[derive(Default)]
pub(crate) struct Hostile {
    pub(crate) counts: Mutex<BTreeMap<&'static str, BTreeMap<String, u64>>>,
}

impl Hostile {
    pub(crate) fn count(&self, kind: &'static str, what: impl Into<String>) {
        *self
            .counts
            .lock()
            .expect("hostile lock")
            .entry(kind)
            .or_default()
            .entry(what.into())
            .or_insert(0) += 1;
    }
}

pub(crate) fn spawn_hostile(
    config: &Arc<Config>,
    hostile: &Arc<Hostile>,
    end: Instant,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let addr = config.addr;
    for i in 0..CHURN_TASKS {
        tasks.push(tokio::spawn(churn(addr, Arc::clone(hostile), i, end)));
    }
    for i in 0..SLOW_CONSUMERS {
        tasks.push(tokio::spawn(slow_consumer(
            addr,
            Arc::clone(hostile),
            i,
            end,
        )));
    }
    for i in 0..GIANT_TASKS {
        tasks.push(tokio::spawn(giant(addr, Arc::clone(hostile), i, end)));
    }
    for _ in 0..UNAUTH_TASKS {
        tasks.push(tokio::spawn(unauthenticated(
            addr,
            Arc::clone(hostile),
            end,
        )));
    }
    for _ in 0..UNAUTH_STALLERS {
        tasks.push(tokio::spawn(unauthenticated_stall(
            addr,
            Arc::clone(hostile),
            end,
        )));
    }
    for i in 0..PING_TASKS {
        tasks.push(tokio::spawn(ping_flood(addr, Arc::clone(hostile), i, end)));
    }
    for i in 0..BAD_TASKS {
        tasks.push(tokio::spawn(bad_frames(addr, Arc::clone(hostile), i, end)));
    }
    tasks.push(tokio::spawn(address_flood(addr, Arc::clone(hostile), end)));
    for i in 0..FLOOD_TASKS {
        tasks.push(tokio::spawn(message_flood(addr, Arc::clone(hostile), i, end)));
    }
    tasks
}

/// From one address of its own ([`FLOOD_ADDRESS`]), open connections without end and hold
/// them: past `--max-connections-per-ip` the server answers 429 before the upgrade.
pub(crate) async fn address_flood(addr: SocketAddr, hostile: Arc<Hostile>, end: Instant) {
    const KIND: &str = "address flood";
    let mut held = Vec::new();
    for _ in 0..ADDRESS_FLOOD_MAX {
        if Instant::now() >= end {
            break;
        }
        match upgrade_status(addr, FLOOD_ADDRESS, "/soak-flood").await {
            Ok((101, stream)) => {
                hostile.count(KIND, "101 (held)");
                held.push(stream);
            }
            Ok((status, _)) => {
                hostile.count(KIND, format!("refused {status}"));
                // Refused from the head: try again soon, not in a tight loop.
                sleep(Duration::from_millis(2)).await;
            }
            Err(error) => hostile.count(KIND, format!("failed: {error}")),
        }
    }
    sleep_until(end).await;
    drop(held);
}

/// From another address ([`FLOOD_ADDRESS`]), send as fast as the socket takes on a topic of
/// its own: past `--max-messages-per-second` the server closes it with 1008; then again.
pub(crate) async fn message_flood(addr: SocketAddr, hostile: Arc<Hostile>, task: usize, end: Instant) {
    const KIND: &str = "message flood";
    let burst: Vec<u8> = (0..256)
        .flat_map(|i| {
            encode_frame(OpCode::Text, true, format!("flood {i}").as_bytes(), Some(mask())).to_vec()
        })
        .collect();
    for _ in 0..FLOOD_ROUNDS {
        if Instant::now() >= end {
            break;
        }
        let path = format!("/soak-flood-{task}");
        let stream = match upgrade_status(addr, FLOOD_ADDRESS, &path).await {
            Ok((101, stream)) => stream,
            Ok((status, _)) => {
                hostile.count(KIND, format!("upgrade refused {status}"));
                sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(error) => {
                hostile.count(KIND, format!("upgrade failed: {error}"));
                continue;
            }
        };
        // Whole bursts from a task of their own, so no frame is ever cut by a cancelled
        // write; the reader waits for the close.
        let (mut reader, mut writer) = stream.into_split();
        let frames = burst.clone();
        let flood = tokio::spawn(async move {
            while writer.write_all(&frames).await.is_ok() {}
        });
        let outcome = timeout(IO_TIMEOUT, async {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match reader.read(&mut buf).await {
                    Ok(n) if n > 0 => {
                        seen.extend_from_slice(&buf[..n]);
                        if let Some(close) = find_close(&seen) {
                            return close;
                        }
                    }
                    _ => return "closed without a close frame".to_owned(),
                }
            }
        })
        .await
        .unwrap_or_else(|_| "not closed in 5 s".to_owned());
        flood.abort();
        hostile.count(KIND, outcome);
    }
}

/// The close code and reason of the first close frame in what a flooder read back (its own
/// messages echoed in its room come first).
fn find_close(bytes: &[u8]) -> Option<String> {
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let len = usize::from(bytes[at + 1] & 0x7f);
        let (header, len) = match len {
            126 if at + 4 <= bytes.len() => (4, usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]))),
            126 | 127 => return None,
            n => (2, n),
        };
        let end = at + header + len;
        if end > bytes.len() {
            return None;
        }
        if bytes[at] & 0x0f == 0x8 && len >= 2 {
            let payload = &bytes[at + header..end];
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            return Some(format!("close {code} {}", String::from_utf8_lossy(&payload[2..])));
        }
        at = end;
    }
    None
}

/// An upgrade from the local address `from`: the status of the answer, and the stream.
async fn upgrade_status(addr: SocketAddr, from: &str, path: &str) -> io::Result<(u16, TcpStream)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse().map_err(io::Error::other)?, 0))?;
    let mut stream = timeout(IO_TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| io::Error::other("connect timed out"))??;
    let (_, request) = ClientHandshake::new(&addr.to_string(), path, key(), &[]);
    let head = timeout(IO_TIMEOUT, async {
        stream.write_all(&request).await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
            if stream.read(&mut byte).await? == 0 {
                return Err(io::Error::other("closed during the upgrade"));
            }
            head.push(byte[0]);
        }
        Ok(head)
    })
    .await
    .map_err(|_| io::Error::other("upgrade timed out"))??;
    let status = std::str::from_utf8(&head)
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("no status line"))?;
    Ok((status, stream))
}

/// Connect and upgrade fast, then leave: with a close frame, by dropping the socket, or in the
/// middle of the request.
pub(crate) async fn churn(addr: SocketAddr, hostile: Arc<Hostile>, task: usize, end: Instant) {
    const KIND: &str = "churn";
    for i in 0..CHURN_MAX {
        if Instant::now() >= end {
            break;
        }
        hostile.count(KIND, "attempts");
        let path = format!("/hostile-churn-{task}");
        match i % 3 {
            0 | 1 => match upgrade(addr, &path).await {
                Ok(mut stream) => {
                    if i % 3 == 0 {
                        let close =
                            encode_frame(OpCode::Close, true, &1000u16.to_be_bytes(), Some(mask()));
                        let _ = stream.write_all(&close).await;
                        hostile.count(KIND, "upgraded, closed");
                    } else {
                        hostile.count(KIND, "upgraded, dropped");
                    }
                }
                Err(_) => hostile.count(KIND, "upgrade failed"),
            },
            _ => match timeout(IO_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(mut stream)) => {
                    let (_, request) = ClientHandshake::new(&addr.to_string(), &path, key(), &[]);
                    let _ = stream.write_all(&request[..request.len() / 2]).await;
                    hostile.count(KIND, "half request, dropped");
                }
                _ => hostile.count(KIND, "connect failed"),
            },
        }
        sleep(Duration::from_millis(2)).await;
    }
}

/// Subscribes to the main topic with a small receive buffer and never reads: the server's
/// slow-consumer policy should close it once its backlog passes the limit.
pub(crate) async fn slow_consumer(
    addr: SocketAddr,
    hostile: Arc<Hostile>,
    _task: usize,
    end: Instant,
) {
    const KIND: &str = "slow consumer";
    let stream = async {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let stream = timeout(IO_TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| io::Error::other("connect timed out"))??;
        upgrade_on(stream, addr, &format!("/{MAIN_TOPIC}")).await
    }
    .await;
    match stream {
        Ok(stream) => {
            hostile.count(KIND, "subscribed, never reading");
            sleep_until(end).await;
            drop(stream);
        }
        Err(_) => hostile.count(KIND, "upgrade failed"),
    }
}

/// A binary frame declaring 8 MiB, 3 MiB of it, then nothing: the server holds what came.
pub(crate) async fn giant(addr: SocketAddr, hostile: Arc<Hostile>, task: usize, end: Instant) {
    const KIND: &str = "giant message";
    for _ in 0..GIANT_ROUNDS {
        if Instant::now() >= end {
            break;
        }
        let Ok(mut stream) = upgrade(addr, &format!("/hostile-giant-{task}")).await else {
            hostile.count(KIND, "upgrade failed");
            continue;
        };
        let m = mask();
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&GIANT_DECLARED.to_be_bytes());
        header.extend_from_slice(&m);
        // Zero payload masked is the mask repeated.
        let chunk: Vec<u8> = (0..64 << 10).map(|i| m[i % 4]).collect();
        let sent = timeout(Duration::from_secs(10), async {
            stream.write_all(&header).await?;
            for _ in 0..GIANT_SENT / chunk.len() {
                stream.write_all(&chunk).await?;
            }
            io::Result::Ok(())
        })
        .await;
        match sent {
            Ok(Ok(())) => hostile.count(KIND, "3 MiB of 8 MiB sent, stalled"),
            Ok(Err(_)) => {
                hostile.count(KIND, "closed by the server while sending");
                continue;
            }
            Err(_) => {
                hostile.count(KIND, "send blocked for 10 s");
                continue;
            }
        }
        // The stall: read (and ignore pings) until the phase ends or the server closes.
        let mut buf = [0u8; 4096];
        loop {
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                return;
            };
            match timeout(left, stream.read(&mut buf)).await {
                Err(_) => return,
                Ok(Ok(0) | Err(_)) => {
                    hostile.count(KIND, "closed by the server while stalled");
                    break;
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// `POST /publish` with 1 MiB bodies and no token: each should get a 401.
pub(crate) async fn unauthenticated(addr: SocketAddr, hostile: Arc<Hostile>, end: Instant) {
    const KIND: &str = "unauthenticated POST";
    let body = vec![b'x'; UNAUTH_BODY];
    let head = format!(
        "POST /publish/{MAIN_TOPIC} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\n\
         Content-Length: {UNAUTH_BODY}\r\nConnection: close\r\n\r\n"
    );
    for _ in 0..UNAUTH_MAX {
        if Instant::now() >= end {
            break;
        }
        match http_request(addr, head.as_bytes(), &body).await {
            Ok(status) => hostile.count(KIND, format!("status {status}")),
            Err(_) => hostile.count(KIND, "no status (closed or timed out)"),
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// `POST /publish` declaring 1 MiB with no token, 900 KiB of it sent, then a stall.
pub(crate) async fn unauthenticated_stall(addr: SocketAddr, hostile: Arc<Hostile>, end: Instant) {
    const KIND: &str = "unauthenticated POST, stalled";
    let head = format!(
        "POST /publish/{MAIN_TOPIC} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\n\
         Content-Length: {UNAUTH_BODY}\r\n\r\n"
    );
    let sent = timeout(IO_TIMEOUT * 2, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&vec![b'x'; UNAUTH_STALL_SENT]).await?;
        io::Result::Ok(stream)
    })
    .await;
    let Ok(Ok(mut stream)) = sent else {
        hostile.count(KIND, "could not send the partial body");
        return;
    };
    hostile.count(KIND, "900 KiB of 1 MiB sent, stalled");
    let left = end.saturating_duration_since(Instant::now());
    let mut buf = [0u8; 1024];
    match timeout(left, stream.read(&mut buf)).await {
        Err(_) => hostile.count(KIND, "held open to the end"),
        Ok(Ok(n)) => match status_of(&buf[..n]) {
            Some(status) => hostile.count(KIND, format!("answered {status} early")),
            None => hostile.count(KIND, "closed by the server"),
        },
        Ok(Err(_)) => hostile.count(KIND, "closed by the server"),
    }
}

/// Batches of 256 pings; even tasks read the pongs, odd ones never read.
pub(crate) async fn ping_flood(addr: SocketAddr, hostile: Arc<Hostile>, task: usize, end: Instant) {
    const KIND: &str = "ping flood";
    let reads = task.is_multiple_of(2);
    let mut batches = 0;
    for _ in 0..PING_ROUNDS {
        if Instant::now() >= end || batches >= PING_BATCHES {
            break;
        }
        let Ok(stream) = upgrade(addr, &format!("/hostile-ping-{task}")).await else {
            hostile.count(KIND, "upgrade failed");
            continue;
        };
        let (mut read_half, mut write_half) = stream.into_split();
        let reader = reads.then(|| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while matches!(read_half.read(&mut buf).await, Ok(n) if n > 0) {}
            })
        });
        let payload = [b'p'; 125];
        let mut closed = false;
        while batches < PING_BATCHES && Instant::now() < end {
            let mut batch = Vec::with_capacity(PING_BATCH * 131);
            for _ in 0..PING_BATCH {
                batch.extend_from_slice(&encode_frame(OpCode::Ping, true, &payload, Some(mask())));
            }
            match timeout(IO_TIMEOUT, write_half.write_all(&batch)).await {
                Ok(Ok(())) => batches += 1,
                Ok(Err(_)) => {
                    closed = true;
                    break;
                }
                Err(_) => {
                    hostile.count(KIND, "write blocked for 5 s");
                    break;
                }
            }
            sleep(Duration::from_millis(20)).await;
        }
        let label = if reads { "reading" } else { "never reading" };
        if closed {
            hostile.count(KIND, format!("{label}: closed by the server"));
        }
        if let Some(reader) = reader {
            reader.abort();
        }
    }
    hostile.count(
        KIND,
        format!("tasks ending after {} pings", batches * PING_BATCH as u64),
    );
}

/// One protocol violation per connection; the server should answer with close 1002.
pub(crate) async fn bad_frames(addr: SocketAddr, hostile: Arc<Hostile>, task: usize, end: Instant) {
    const KIND: &str = "bad frames";
    for i in 0..BAD_MAX {
        if Instant::now() >= end {
            break;
        }
        let Ok(mut stream) = upgrade(addr, &format!("/hostile-bad-{task}")).await else {
            hostile.count(KIND, "upgrade failed");
            continue;
        };
        let m = mask();
        let (what, frame): (&str, Vec<u8>) = match i % 4 {
            0 => ("unmasked text", vec![0x81, 0x02, b'h', b'i']),
            1 => (
                "reserved opcode 0x3",
                vec![0x83, 0x80, m[0], m[1], m[2], m[3]],
            ),
            2 => (
                "reserved opcode 0xB",
                vec![0x8B, 0x80, m[0], m[1], m[2], m[3]],
            ),
            _ => (
                "RSV1 set",
                vec![0xC1, 0x82, m[0], m[1], m[2], m[3], b'h' ^ m[0], b'i' ^ m[1]],
            ),
        };
        let answer = timeout(IO_TIMEOUT, async {
            stream.write_all(&frame).await?;
            read_to_end(&mut stream, 64).await
        })
        .await;
        let code = match answer {
            Ok(Ok(bytes)) if bytes.len() >= 4 && bytes[0] == 0x88 => {
                format!("close {}", u16::from_be_bytes([bytes[2], bytes[3]]))
            }
            Ok(Ok(_)) => "closed without a close frame".to_owned(),
            Ok(Err(_)) => "reset".to_owned(),
            Err(_) => "no answer in 5 s".to_owned(),
        };
        hostile.count(KIND, format!("{what}: {code}"));
        sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) async fn upgrade(addr: SocketAddr, path: &str) -> io::Result<TcpStream> {
    let stream = timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::other("connect timed out"))??;
    upgrade_on(stream, addr, path).await
}

/// The upgrade on a connected socket, checked by uringcast's client handshake.
pub(crate) async fn upgrade_on(
    mut stream: TcpStream,
    addr: SocketAddr,
    path: &str,
) -> io::Result<TcpStream> {
    let (mut handshake, request) = ClientHandshake::new(&addr.to_string(), path, key(), &[]);
    timeout(IO_TIMEOUT, async {
        stream.write_all(&request).await?;
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::other("closed during the upgrade"));
            }
            if handshake
                .feed(&buf[..n])
                .map_err(io::Error::other)?
                .1
                .is_some()
            {
                return Ok(());
            }
        }
    })
    .await
    .map_err(|_| io::Error::other("upgrade timed out"))??;
    Ok(stream)
}

/// Masks and keys need not be secret here, only varied: xorshift over a shared counter.
pub(crate) fn random_u64() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

pub(crate) fn mask() -> [u8; 4] {
    (random_u64() as u32).to_ne_bytes()
}

pub(crate) fn key() -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&random_u64().to_ne_bytes());
    key[8..].copy_from_slice(&random_u64().to_ne_bytes());
    key
}
