//! Slow consumers: disconnected or dropped from, without holding back 1,000 readers.

use super::*;

// ---------------------------------------------------------------------------------------------
// 4. slow consumers
// ---------------------------------------------------------------------------------------------

pub(crate) const SLOW_READERS: usize = 1000;
/// At least this many messages are published: more when the kernel may buffer more (see
/// [`slow_messages`]).
pub(crate) const SLOW_MIN_MESSAGES: u64 = 200;
pub(crate) const SLOW_MESSAGE_BYTES: usize = 16 * 1024;
/// Small beside the data sent (about 5 MiB per subscriber), yet room for the pacing window
/// below twice over.
pub(crate) const SLOW_BACKLOG_BYTES: usize = 512 * 1024;
/// Messages not yet received by every reader when the next is published, at most. The
/// server counts a frame against the backlog until it reaps the send's completion, and the
/// reader may have the bytes before that: with one send in flight per connection, a reader
/// never more than W messages behind can have up to 2W frames counted. 2 x 15 frames of
/// 16 KiB + 4 header bytes fit the backlog, so a reader that keeps reading is never over it,
/// whatever the kernel buffers hold, while the readers stream rather than move in lock-step.
pub(crate) const SLOW_IN_FLIGHT: u64 = (SLOW_BACKLOG_BYTES / (2 * (SLOW_MESSAGE_BYTES + 4))) as u64;
/// Allowed growth of the server's resident memory during the publishing.
pub(crate) const SLOW_RSS_GROWTH_BYTES: u64 = 64 << 20;
/// The slow client's receive buffer (the kernel doubles it).
pub(crate) const SLOW_RCVBUF_BYTES: u32 = 4096;

/// Enough messages that the slow client must pass its backlog whatever the kernel holds for
/// it: the server's send buffer can autotune up to `tcp_wmem`'s maximum, the slow client's
/// receive queue holds about twice its `SO_RCVBUF`, and the backlog takes the rest.
pub(crate) fn slow_messages() -> Result<u64> {
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")?;
    let wmem_max: u64 = wmem
        .split_whitespace()
        .nth(2)
        .ok_or_else(|| anyhow!("tcp_wmem has no maximum: {wmem:?}"))?
        .parse()?;
    let absorbable = wmem_max + 4 * u64::from(SLOW_RCVBUF_BYTES) + SLOW_BACKLOG_BYTES as u64;
    Ok(SLOW_MIN_MESSAGES.max(absorbable.div_ceil(SLOW_MESSAGE_BYTES as u64) + 8))
}

/// `--slow-consumer disconnect`: the one client that never reads is closed with 1008 (or cut
/// off), while 1,000 readers get every message (200 or more) in order; memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_slow_consumer_is_disconnected_without_holding_back_1000_readers() -> Result<()>
{
    slow_consumer("disconnect").await
}

/// `--slow-consumer drop`: the client that never reads stays connected and loses messages
/// (counted), while 1,000 readers get every message in order; memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_slow_consumer_loses_messages_without_holding_back_1000_readers() -> Result<()>
{
    slow_consumer("drop").await
}

pub(crate) async fn slow_consumer(policy: &str) -> Result<()> {
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "2",
        "--ping-interval",
        "0",
        "--max-backlog-bytes",
        &SLOW_BACKLOG_BYTES.to_string(),
        "--slow-consumer",
        policy,
    ])?;
    let addr = server.addr();
    let path = "/feed";
    let messages = slow_messages()?;

    // The slow one: a small receive buffer, so the kernel absorbs little on its behalf.
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(SLOW_RCVBUF_BYTES)?;
    let slow = timeout(STEP, socket.connect(addr)).await??;
    let (slow, slow_leftover) = raw_upgrade(slow, path).await?;

    // The publisher, itself a subscriber whose reads are checked like everyone's.
    let (publisher, publisher_leftover) =
        raw_upgrade(timeout(STEP, TcpStream::connect(addr)).await??, path).await?;
    let (publisher_read, mut publisher_write) = publisher.into_split();

    let mut connecting = JoinSet::new();
    let mut readers = Vec::with_capacity(SLOW_READERS);
    for _ in 0..SLOW_READERS {
        if connecting.len() >= 100 {
            readers.push(connecting.join_next().await.expect("not empty")??);
        }
        connecting.spawn(async move {
            let stream = timeout(STEP, TcpStream::connect(addr)).await??;
            raw_upgrade(stream, path).await
        });
    }
    while let Some(reader) = connecting.join_next().await {
        readers.push(reader??);
    }
    let metrics = fetch_metrics(addr).await?;
    let subscribed = metrics.sum("uringcast_subscriptions")?;
    ensure!(
        subscribed == (SLOW_READERS + 2) as f64,
        "expected {} subscriptions, /metrics says {subscribed}",
        SLOW_READERS + 2
    );
    let rss_before = proc_status_bytes(server.pid(), "VmRSS")?;

    let progress = Arc::new(Progress::new(SLOW_READERS + 1, messages));
    let mut reading = JoinSet::new();
    let all_readers = readers
        .into_iter()
        .map(|(stream, leftover)| {
            let (read, write) = stream.into_split();
            (FrameReader::new(read, &leftover), Some(write))
        })
        .chain([(FrameReader::new(publisher_read, &publisher_leftover), None)]);
    for (index, (reader, write_half)) in all_readers.enumerate() {
        let progress = Arc::clone(&progress);
        reading.spawn(async move {
            let mut reader = reader;
            read_numbered(&mut reader, index, messages, &progress).await?;
            // Keep both halves open until every reader is done.
            Ok::<_, anyhow::Error>((reader, write_half))
        });
    }

    let started = Instant::now();
    for seq in 0..messages {
        if seq >= SLOW_IN_FLIGHT {
            let wanted = seq + 1 - SLOW_IN_FLIGHT;
            // A reader ends early only on an error: report that rather than the stall.
            let waited = timeout(STEP, async {
                tokio::select! {
                    () = progress.wait_complete(wanted) => Ok(()),
                    Some(ended) = reading.join_next() => match ended? {
                        Err(error) => Err(error),
                        Ok(_) => Err(anyhow!("a reader finished before the last message")),
                    },
                }
            })
            .await;
            waited
                .with_context(|| {
                    format!(
                        "message {} did not reach every reader within {STEP:?}",
                        wanted - 1
                    )
                })?
                .with_context(|| format!("while waiting for message {}", wanted - 1))?;
        }
        let frame = client_frame(OpCode::Binary, true, &numbered_payload(seq));
        timeout(STEP, publisher_write.write_all(&frame))
            .await
            .context("publishing timed out")??;
    }
    let mut kept = Vec::new();
    while let Some(reader) = reading.join_next().await {
        kept.push(reader??);
    }
    let elapsed = started.elapsed();
    let peak = proc_status_bytes(server.pid(), "VmHWM")?;
    let rss_after = proc_status_bytes(server.pid(), "VmRSS")?;
    eprintln!(
        "slow consumer ({policy}): {} readers got {messages} x {SLOW_MESSAGE_BYTES} B in \
         {elapsed:?}; server VmRSS {} KiB before, {} KiB after, VmHWM {} KiB",
        SLOW_READERS + 1,
        rss_before >> 10,
        rss_after >> 10,
        peak >> 10
    );
    ensure!(
        peak.saturating_sub(rss_before) < SLOW_RSS_GROWTH_BYTES,
        "the server's peak RSS grew by {} KiB (limit {} KiB)",
        (peak - rss_before) >> 10,
        SLOW_RSS_GROWTH_BYTES >> 10
    );

    // Now the slow one reads what it was sent.
    let (slow_read, mut slow_write) = slow.into_split();
    let mut slow = FrameReader::new(slow_read, &slow_leftover);
    let metrics;
    if policy == "disconnect" {
        // A prefix of the sequence, then close 1008 or the end of the stream.
        let mut next = 0;
        let ending = loop {
            match slow.next().await? {
                None => break "EOF",
                Some((0x2, payload)) => {
                    let seq = check_numbered(payload)?;
                    ensure!(seq == next, "slow client: expected {next}, got {seq}");
                    next += 1;
                    ensure!(
                        next < messages,
                        "the slow client got all {messages} messages: it was never over the \
                         backlog"
                    );
                }
                Some((0x8, payload)) => {
                    ensure!(
                        payload.len() >= 2 && u16::from_be_bytes([payload[0], payload[1]]) == 1008,
                        "slow client: close frame {payload:?}, expected code 1008"
                    );
                    break "close 1008";
                }
                Some((opcode, _)) => bail!("slow client: unexpected opcode {opcode}"),
            }
        };
        eprintln!("slow client: {next} messages, then {ending}");
        metrics = fetch_metrics(addr).await?;
        let closes = metrics.sum("uringcast_slow_consumer_closes_total")?;
        ensure!(
            closes == 1.0,
            "slow_consumer_closes_total is {closes}, expected 1"
        );
        let drops = metrics.sum("uringcast_drops_total")?;
        ensure!(drops == 0.0, "drops_total is {drops} under disconnect");
    } else {
        // Still connected: a ping is answered after everything queued before it, in order,
        // with gaps where messages were dropped.
        slow_write
            .write_all(&client_frame(OpCode::Ping, true, b"still there?"))
            .await?;
        let mut seen = Vec::new();
        loop {
            match slow.next().await? {
                None => bail!("slow client: the connection ended under the drop policy"),
                Some((0x2, payload)) => seen.push(check_numbered(payload)?),
                Some((0xA, payload)) => {
                    ensure!(payload == b"still there?", "pong with {payload:?}");
                    break;
                }
                Some((opcode, _)) => bail!("slow client: unexpected opcode {opcode}"),
            }
        }
        ensure!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "slow client: messages out of order: {seen:?}"
        );
        metrics = fetch_metrics(addr).await?;
        let drops = metrics.sum("uringcast_drops_total")?;
        eprintln!(
            "slow client: {} of {messages} messages, {drops} dropped",
            seen.len()
        );
        ensure!(
            drops > 0.0,
            "drops_total is 0: the slow client was never over the backlog"
        );
        ensure!(
            drops as u64 + seen.len() as u64 == messages,
            "{} received + {drops} dropped != {messages} sent",
            seen.len()
        );
        let closes = metrics.sum("uringcast_slow_consumer_closes_total")?;
        ensure!(
            closes == 0.0,
            "slow_consumer_closes_total is {closes} under drop"
        );
    }
    drop(kept);
    Ok(())
}

/// How far every reader has got: readers report each message, one task waits.
pub(crate) struct Progress {
    counts: Vec<AtomicUsize>,
    readers: usize,
    /// Messages received by every reader (readers receive in order, so a prefix).
    complete: AtomicU64,
    waker: AtomicWaker,
}

impl Progress {
    pub(crate) fn new(readers: usize, messages: u64) -> Self {
        Self {
            counts: (0..messages).map(|_| AtomicUsize::new(0)).collect(),
            readers,
            complete: AtomicU64::new(0),
            waker: AtomicWaker::new(),
        }
    }

    pub(crate) fn received(&self, seq: u64) {
        if self.counts[seq as usize].fetch_add(1, Ordering::AcqRel) + 1 == self.readers {
            self.complete.fetch_max(seq + 1, Ordering::AcqRel);
            self.waker.wake();
        }
    }

    /// Resolves once the first `messages` messages have reached every reader.
    pub(crate) async fn wait_complete(&self, messages: u64) {
        poll_fn(|cx| {
            if self.complete.load(Ordering::Acquire) >= messages {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.complete.load(Ordering::Acquire) >= messages {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// Reads the whole numbered sequence, in order, reporting each message.
pub(crate) async fn read_numbered<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    index: usize,
    messages: u64,
    progress: &Progress,
) -> Result<()> {
    for seq in 0..messages {
        let (opcode, payload) = reader
            .next()
            .await
            .with_context(|| format!("reader {index} waiting for message {seq}"))?
            .ok_or_else(|| anyhow!("reader {index}: connection ended before message {seq}"))?;
        if opcode == 0x8 {
            let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
            bail!("reader {index} was closed ({code:?} {reason:?}) before message {seq}");
        }
        ensure!(
            opcode == 0x2,
            "reader {index}: opcode {opcode}, expected binary"
        );
        let got = check_numbered(payload)?;
        ensure!(
            got == seq,
            "reader {index}: expected message {seq}, got {got}"
        );
        progress.received(seq);
    }
    Ok(())
}

/// A payload of [`SLOW_MESSAGE_BYTES`] that starts and ends with its number.
pub(crate) fn numbered_payload(seq: u64) -> Vec<u8> {
    let mut payload = vec![seq as u8; SLOW_MESSAGE_BYTES];
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    payload[SLOW_MESSAGE_BYTES - 8..].copy_from_slice(&seq.to_be_bytes());
    payload
}

/// The number of a [`numbered_payload`], checking its length, both ends and a middle byte.
pub(crate) fn check_numbered(payload: &[u8]) -> Result<u64> {
    ensure!(
        payload.len() == SLOW_MESSAGE_BYTES,
        "payload of {} bytes, expected {SLOW_MESSAGE_BYTES}",
        payload.len()
    );
    let head = u64::from_be_bytes(payload[..8].try_into()?);
    let tail = u64::from_be_bytes(payload[SLOW_MESSAGE_BYTES - 8..].try_into()?);
    ensure!(
        head == tail && payload[SLOW_MESSAGE_BYTES / 2] == head as u8,
        "corrupt payload: starts with {head}, ends with {tail}"
    );
    Ok(head)
}

/// A field of `/proc/PID/status` given in kB (`VmRSS`, `VmHWM`), in bytes.
pub(crate) fn proc_status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))?;
    let kib: u64 = line
        .trim()
        .strip_suffix("kB")
        .ok_or_else(|| anyhow!("{field} not in kB: {line:?}"))?
        .trim()
        .parse()?;
    Ok(kib << 10)
}

/// Sends an upgrade request for `path` on `stream` and reads the 101; returns the stream and
/// any bytes read past the response head.
pub(crate) async fn raw_upgrade(mut stream: TcpStream, path: &str) -> Result<(TcpStream, Vec<u8>)> {
    // Frames go out whole and at once: Nagle's algorithm would hold a frame back until the
    // previous one is acknowledged, and delayed ACKs make that 40 ms.
    stream.set_nodelay(true)?;
    let addr = stream.peer_addr()?;
    let request =
        upgrade_request(addr, SAMPLE_KEY).replacen("GET /chat ", &format!("GET {path} "), 1);
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = timeout(STEP, stream.read(&mut chunk))
            .await
            .context("no 101 in time")??;
        ensure!(n > 0, "connection ended during the upgrade: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    ensure!(
        buf.starts_with(b"HTTP/1.1 101 "),
        "expected 101, got {:?}",
        String::from_utf8_lossy(&buf[..end])
    );
    Ok((stream, buf[end..].to_vec()))
}

/// Reads server frames with one fixed buffer and no copy per frame.
pub(crate) struct FrameReader<R> {
    io: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, leftover: &[u8]) -> Self {
        let mut buf = vec![0u8; 64 * 1024].into_boxed_slice();
        buf[..leftover.len()].copy_from_slice(leftover);
        Self {
            io,
            buf,
            start: 0,
            end: leftover.len(),
        }
    }

    /// The next frame's opcode and payload; `None` when the server ended the connection
    /// (EOF or reset). Each read waits at most [`STEP`].
    pub(crate) async fn next(&mut self) -> Result<Option<(u8, &[u8])>> {
        loop {
            let available = &self.buf[self.start..self.end];
            if let Some((opcode, header, len)) = frame_header(available)? {
                if available.len() >= header + len {
                    let payload = self.start + header;
                    self.start = payload + len;
                    return Ok(Some((opcode, &self.buf[payload..payload + len])));
                }
                ensure!(
                    header + len <= self.buf.len(),
                    "a frame of {len} bytes does not fit the read buffer"
                );
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let read = timeout(STEP, self.io.read(&mut self.buf[self.end..]))
                .await
                .with_context(|| format!("no bytes within {STEP:?}"))?;
            match read {
                Ok(0) => return Ok(None),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e).context("reading frames"),
            }
        }
    }
}

/// A complete, unmasked, final server frame header at the start of `buf`: (opcode, header
/// length, payload length); `None` while incomplete.
pub(crate) fn frame_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    ensure!(
        buf[0] & 0xf0 == 0x80,
        "not a final frame without RSV bits: {:#04x}",
        buf[0]
    );
    ensure!(buf[1] & 0x80 == 0, "the server masked a frame");
    let (len, header) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (
            usize::try_from(u64::from_be_bytes(buf[2..10].try_into()?))?,
            10,
        ),
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    Ok(Some((buf[0] & 0x0f, header, len)))
}
