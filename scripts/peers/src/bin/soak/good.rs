//! Good clients: subscribers, publishers and echo clients that check every message.

use super::*;

/// What the good clients share: counters, checkers, and the run's signals.
pub(crate) struct Good {
    /// Messages each publisher got the server to take (sent on an open WebSocket, or 202).
    pub(crate) published: Vec<AtomicU64>,
    pub(crate) checkers: Mutex<Vec<Arc<Mutex<Checker>>>>,
    pub(crate) upgraded: AtomicU64,
    pub(crate) failed_upgrades: AtomicU64,
    /// Publishers still sending.
    pub(crate) writers: AtomicU64,
    pub(crate) http_errors: AtomicU64,
    pub(crate) unexpected_closes: AtomicU64,
    pub(crate) reasons: Mutex<Vec<String>>,
    /// Publishers may start.
    pub(crate) go: AtomicBool,
    /// Every good client closes now.
    pub(crate) close: AtomicBool,
}

impl Good {
    pub(crate) fn new(shape: &Shape) -> Self {
        let publishers = shape.ws_publishers + shape.http_publishers + shape.echo;
        Self {
            published: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            checkers: Mutex::new(Vec::new()),
            upgraded: AtomicU64::new(0),
            failed_upgrades: AtomicU64::new(0),
            writers: AtomicU64::new(0),
            http_errors: AtomicU64::new(0),
            unexpected_closes: AtomicU64::new(0),
            reasons: Mutex::new(Vec::new()),
            go: AtomicBool::new(false),
            close: AtomicBool::new(false),
        }
    }

    pub(crate) fn checker(&self, expect: Vec<usize>) -> Arc<Mutex<Checker>> {
        let checker = Arc::new(Mutex::new(Checker::new(expect)));
        self.checkers
            .lock()
            .expect("checkers lock")
            .push(Arc::clone(&checker));
        checker
    }

    pub(crate) fn note_close(&self, reason: String) {
        self.unexpected_closes.fetch_add(1, Ordering::Relaxed);
        self.note(reason);
    }

    pub(crate) fn note(&self, reason: String) {
        let mut reasons = self.reasons.lock().expect("reasons lock");
        if reasons.len() < MAX_REASONS {
            reasons.push(reason);
        }
    }

    pub(crate) fn published(&self) -> Vec<u64> {
        self.published
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .collect()
    }

    /// Every checker has every message its publishers had published.
    pub(crate) fn caught_up(&self) -> bool {
        let published = self.published();
        self.checkers
            .lock()
            .expect("checkers lock")
            .iter()
            .all(|c| c.lock().expect("checker lock").missing(&published) == 0)
    }
}

/// One receiver's view of its publishers' streams.
pub(crate) struct Checker {
    /// The publishers whose every message this receiver must see.
    pub(crate) expect: Vec<usize>,
    /// The next sequence number due from each publisher.
    pub(crate) next: BTreeMap<usize, u64>,
    pub(crate) received: u64,
    /// Sequence numbers skipped over (a later message arrived first).
    pub(crate) skipped: u64,
    /// Messages that were not the next one due from their publisher.
    pub(crate) out_of_order: u64,
    /// Messages whose bytes or source are wrong.
    pub(crate) corrupt: u64,
}

impl Checker {
    pub(crate) fn new(expect: Vec<usize>) -> Self {
        Self {
            next: expect.iter().map(|&p| (p, 0)).collect(),
            expect,
            received: 0,
            skipped: 0,
            out_of_order: 0,
            corrupt: 0,
        }
    }

    pub(crate) fn check(&mut self, payload: &[u8]) {
        self.received += 1;
        let Some((publisher, seq)) = parse_message(payload) else {
            self.corrupt += 1;
            return;
        };
        let Some(next) = self.next.get_mut(&publisher) else {
            self.corrupt += 1;
            return;
        };
        if seq != *next {
            self.out_of_order += 1;
        }
        if seq >= *next {
            self.skipped += seq - *next;
            *next = seq + 1;
        }
    }

    /// Messages published to this receiver that it has not seen.
    pub(crate) fn missing(&self, published: &[u64]) -> u64 {
        self.skipped
            + self
                .expect
                .iter()
                .map(|p| published[*p].saturating_sub(self.next[p]))
                .sum::<u64>()
    }
}

/// What a publishing good client sends.
pub(crate) struct Sender {
    pub(crate) id: usize,
    pub(crate) rate: f64,
    pub(crate) until: Instant,
}

/// A good WebSocket client: reads promptly and checks everything, and with `send` publishes
/// too. It closes when `good.close` is set; any close before that is unexpected.
pub(crate) async fn good_ws(
    config: Arc<Config>,
    good: Arc<Good>,
    path: String,
    send: Option<Sender>,
    checker: Arc<Mutex<Checker>>,
) {
    // The token opens the publish-only path, which needs a credential once one is set.
    let url = format!("ws://{}{path}?token={}", config.addr, config.token);
    let ws = match timeout(IO_TIMEOUT, tokio_tungstenite::connect_async(url.as_str())).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(error)) => {
            good.failed_upgrades.fetch_add(1, Ordering::Relaxed);
            good.note_close(format!("{path}: upgrade failed: {error}"));
            return;
        }
        Err(_) => {
            good.failed_upgrades.fetch_add(1, Ordering::Relaxed);
            good.note_close(format!("{path}: upgrade timed out"));
            return;
        }
    };
    good.upgraded.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = ws.split();
    let closing = Arc::new(AtomicBool::new(false));
    let writer = {
        let (good, closing, path) = (Arc::clone(&good), Arc::clone(&closing), path.clone());
        tokio::spawn(async move {
            if let Some(send) = send {
                good.writers.fetch_add(1, Ordering::AcqRel);
                while !good.go.load(Ordering::Acquire) {
                    sleep(Duration::from_millis(5)).await;
                }
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / send.rate));
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                let mut seq = 0u64;
                let mut failed = false;
                while Instant::now() < send.until {
                    tick.tick().await;
                    let message = Message::text(build_message(send.id, seq));
                    match timeout(IO_TIMEOUT, sink.send(message)).await {
                        Ok(Ok(())) => {
                            seq += 1;
                            good.published[send.id].store(seq, Ordering::Release);
                        }
                        Ok(Err(error)) => {
                            good.note_close(format!("{path}: publish failed: {error}"));
                            failed = true;
                            break;
                        }
                        Err(_) => {
                            good.note_close(format!("{path}: publish blocked for 5 s"));
                            failed = true;
                            break;
                        }
                    }
                }
                good.writers.fetch_sub(1, Ordering::AcqRel);
                if failed {
                    return;
                }
            }
            while !good.close.load(Ordering::Acquire) {
                sleep(Duration::from_millis(20)).await;
            }
            closing.store(true, Ordering::Release);
            let _ = timeout(IO_TIMEOUT, sink.send(Message::Close(None))).await;
        })
    };
    let mut close_sent_at: Option<Instant> = None;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = sleep(Duration::from_millis(200)) => {
                // After our close frame, wait a bounded time for the server's.
                if closing.load(Ordering::Acquire) {
                    let since = *close_sent_at.get_or_insert_with(Instant::now);
                    if since.elapsed() > IO_TIMEOUT {
                        good.note(format!("{path}: no close frame from the server in 5 s"));
                        break;
                    }
                }
                continue;
            }
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                checker.lock().expect("checker lock").check(text.as_bytes());
            }
            Some(Ok(Message::Binary(bytes))) => {
                checker.lock().expect("checker lock").check(&bytes);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                if !closing.load(Ordering::Acquire) {
                    let code = frame.map_or_else(|| "none".into(), |f| f.code.to_string());
                    good.note_close(format!("{path}: closed by the server, code {code}"));
                }
                // tungstenite answers the close; the stream then ends.
            }
            Some(Err(error)) => {
                if !closing.load(Ordering::Acquire) {
                    good.note_close(format!("{path}: read failed: {error}"));
                }
                break;
            }
            None => {
                if !closing.load(Ordering::Acquire) {
                    good.note_close(format!("{path}: stream ended without a close"));
                }
                break;
            }
        }
    }
    writer.abort();
}

/// A good HTTP publisher: sequential `POST /publish/soak-main` with the token, each on a new
/// connection, each waiting for its 202 before the next.
pub(crate) async fn http_publisher(
    config: Arc<Config>,
    good: Arc<Good>,
    id: usize,
    until: Instant,
) {
    good.writers.fetch_add(1, Ordering::AcqRel);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / SHAPE.http_rate));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        let body = build_message(id, seq);
        // The sequence number advances even on failure: a publish whose answer was lost
        // may still have gone out, and a gap is counted as missing anyway.
        seq += 1;
        let head = format!(
            "POST /publish/{MAIN_TOPIC} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            config.addr,
            config.token,
            body.len()
        );
        match http_request(config.addr, head.as_bytes(), body.as_bytes()).await {
            Ok(202) => {
                good.published[id].store(seq, Ordering::Release);
            }
            Ok(status) => {
                good.http_errors.fetch_add(1, Ordering::Relaxed);
                good.note(format!(
                    "http publisher {id}: status {status} for seq {}",
                    seq - 1
                ));
            }
            Err(error) => {
                good.http_errors.fetch_add(1, Ordering::Relaxed);
                good.note(format!("http publisher {id}: seq {}: {error}", seq - 1));
            }
        }
    }
    good.writers.fetch_sub(1, Ordering::AcqRel);
}

/// Sends one request and returns the response's status (the server closes after it).
pub(crate) async fn http_request(addr: SocketAddr, head: &[u8], body: &[u8]) -> io::Result<u16> {
    timeout(IO_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(head).await?;
        stream.write_all(body).await?;
        let response = read_to_end(&mut stream, 1 << 16).await?;
        status_of(&response).ok_or_else(|| io::Error::other("no HTTP status line"))
    })
    .await
    .map_err(|_| io::Error::other("no response within 5 s"))?
}

pub(crate) fn status_of(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Reads until EOF, keeping at most `keep` bytes.
pub(crate) async fn read_to_end(stream: &mut TcpStream, keep: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        let room = keep.saturating_sub(out.len()).min(n);
        out.extend_from_slice(&buf[..room]);
    }
}

/// `soak <publisher> <seq> <len> ` padded with one letter to `len` bytes (24 to 2047).
pub(crate) fn build_message(publisher: usize, seq: u64) -> String {
    let len = 24 + (seq as usize * 37) % 2024;
    let mut message = format!("soak {publisher} {seq} {len} ");
    let fill = fill_of(publisher, seq);
    while message.len() < len {
        message.push(fill);
    }
    message
}

pub(crate) fn fill_of(publisher: usize, seq: u64) -> char {
    char::from(b'a' + ((publisher as u64 * 31 + seq) % 26) as u8)
}

/// The publisher and sequence number of a message that is exactly what was sent.
pub(crate) fn parse_message(payload: &[u8]) -> Option<(usize, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut fields = text.splitn(5, ' ');
    if fields.next()? != "soak" {
        return None;
    }
    let publisher: usize = fields.next()?.parse().ok()?;
    let seq: u64 = fields.next()?.parse().ok()?;
    let len: usize = fields.next()?.parse().ok()?;
    let fill = fields.next()?;
    let fill_char = fill_of(publisher, seq);
    (payload.len() == len && fill.chars().all(|c| c == fill_char)).then_some((publisher, seq))
}
