//! A bounded soak of a uringcast broadcast server on loopback: good clients that check every
//! message, and hostile clients at the same time, while the server's RSS is sampled each second.
//!
//! Good clients (all for the whole run):
//! - subscribers of topic `soak-main`, which check that every message of every publisher
//!   arrives complete and in order;
//! - WebSocket publishers on `soak-main` (subscribers too, so they check the same stream);
//! - HTTP publishers: `POST /publish/soak-main` with the bearer token, one request per
//!   connection (the server answers one request per connection), each waiting for its 202;
//! - echo clients, each alone on its own topic `soak-echo-N`, which receive their own messages
//!   back and check them.
//!
//! Every message is `soak <publisher> <sequence> <length> ` padded to `length` with a letter
//! derived from the publisher and the sequence, so a receiver checks source, order and bytes.
//!
//! Hostile clients, from `hostile_start` to `hostile_end`, each loop bounded in count and time
//! (at `hostile_end` whatever is left is aborted, which drops its sockets):
//! - churn: upgrade then close, upgrade then drop, or half a request then drop;
//! - slow consumers: subscribe to `soak-main` with a 4 KiB receive buffer and never read;
//! - giant messages: a header declaring 8 MiB, 3 MiB of payload, then a stall;
//! - unauthenticated `POST /publish/soak-main` with 1 MiB bodies, and some that stall after
//!   900 KiB;
//! - ping floods, half of them never reading the pongs;
//! - bad frames: unmasked, reserved opcodes 0x3 and 0xB, RSV1 set.
//!
//! The run passes when no good client saw a missing, reordered or corrupt message, an
//! unexpected close, or a failed publish. Prints a summary on stdout, writes it as JSON to
//! `--json`, exits 0 on pass and 1 on fail (2 on bad arguments).
//!
//! `soak --connect 127.0.0.1:PORT --server-pid PID --secs 60 --token soaktoken --json out.json`

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;
use uringcast::protocol::frame::encode_frame;
use uringcast::protocol::handshake::ClientHandshake;
use uringcast::protocol::OpCode;

/// The topic every subscriber and publisher of the main stream uses.
const MAIN_TOPIC: &str = "soak-main";
/// Time for one connect, upgrade, request or close before it counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// After the publishers stop: the longest wait for the last messages to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// RSS samples taken before any client connects.
const BASELINE_SAMPLES: u32 = 3;
/// Reasons kept per list in the report (the counts are always complete).
const MAX_REASONS: usize = 20;

/// How many of each client, and how fast the good ones send.
struct Shape {
    subscribers: usize,
    ws_publishers: usize,
    http_publishers: usize,
    echo: usize,
    /// Messages per second per WebSocket publisher.
    ws_rate: f64,
    /// Requests per second per HTTP publisher.
    http_rate: f64,
    /// Messages per second per echo client.
    echo_rate: f64,
}

const SHAPE: Shape = Shape {
    subscribers: 8,
    ws_publishers: 2,
    http_publishers: 2,
    echo: 4,
    ws_rate: 200.0,
    http_rate: 20.0,
    echo_rate: 50.0,
};

/// Bounds of the hostile loops: tasks of each kind and iterations per task.
const CHURN_TASKS: usize = 4;
const CHURN_MAX: u64 = 3000;
const SLOW_CONSUMERS: usize = 8;
const GIANT_TASKS: usize = 6;
const GIANT_ROUNDS: u64 = 3;
const GIANT_DECLARED: u64 = 8 << 20;
const GIANT_SENT: usize = 3 << 20;
const UNAUTH_TASKS: usize = 2;
const UNAUTH_MAX: u64 = 150;
const UNAUTH_BODY: usize = 1 << 20;
const UNAUTH_STALLERS: usize = 4;
const UNAUTH_STALL_SENT: usize = 900 << 10;
const PING_TASKS: usize = 4;
const PING_BATCHES: u64 = 2000;
const PING_BATCH: usize = 256;
const PING_ROUNDS: u64 = 5;
const BAD_TASKS: usize = 2;
const BAD_MAX: u64 = 400;

fn main() {
    let args = uringcast_peers::args(&["connect", "server-pid", "secs", "token", "json"]);
    let Some(addr) = args
        .get("connect")
        .and_then(|a| a.parse::<SocketAddr>().ok())
    else {
        eprintln!("soak: --connect IP:PORT is required");
        std::process::exit(2);
    };
    if !addr.ip().is_loopback() {
        eprintln!("soak: {addr} is not a loopback address; this client talks only to 127.0.0.0/8");
        std::process::exit(2);
    }
    let pid: u32 = uringcast_peers::arg(&args, "server-pid", 0);
    if pid == 0 || rss_kb(pid).is_none() {
        eprintln!("soak: --server-pid must name a running process whose VmRSS can be read");
        std::process::exit(2);
    }
    let secs: f64 = uringcast_peers::arg(&args, "secs", 60.0);
    if !(10.0..=7200.0).contains(&secs) {
        eprintln!("soak: --secs must be between 10 and 7200");
        std::process::exit(2);
    }
    let token: String = uringcast_peers::arg(&args, "token", "soaktoken".to_owned());
    let json_path = args.get("json").cloned();
    let config = Config {
        addr,
        pid,
        token,
        total: Duration::from_secs_f64(secs),
    };
    // Timers are needed here, which the peers' shared runtime does not enable.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let summary = runtime.block_on(soak(config));
    runtime.shutdown_timeout(Duration::from_secs(2));
    print!("{}", summary.text);
    if let Some(path) = json_path {
        if let Err(error) = std::fs::write(&path, &summary.json) {
            eprintln!("soak: cannot write {path}: {error}");
            std::process::exit(1);
        }
    }
    std::process::exit(if summary.pass { 0 } else { 1 });
}

struct Config {
    addr: SocketAddr,
    pid: u32,
    token: String,
    /// From the first good connection to the publishers' stop.
    total: Duration,
}

struct Summary {
    text: String,
    json: String,
    pass: bool,
}

/// The phase each RSS sample is tagged with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Phase {
    Baseline,
    Good,
    Hostile,
    After,
    Drain,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Baseline,
            1 => Self::Good,
            2 => Self::Hostile,
            3 => Self::After,
            _ => Self::Drain,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Good => "good-only",
            Self::Hostile => "hostile",
            Self::After => "after-hostile",
            Self::Drain => "drain",
        }
    }
}

struct Sample {
    t: f64,
    phase: Phase,
    rss_kb: u64,
}

async fn soak(config: Config) -> Summary {
    let config = Arc::new(config);
    let phase = Arc::new(AtomicU8::new(Phase::Baseline as u8));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let t0 = Instant::now();
    let sampler = {
        let (phase, samples, pid) = (Arc::clone(&phase), Arc::clone(&samples), config.pid);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(rss_kb) = rss_kb(pid) else { break };
                samples.lock().expect("sampler lock").push(Sample {
                    t: t0.elapsed().as_secs_f64(),
                    phase: Phase::from_u8(phase.load(Ordering::Relaxed)),
                    rss_kb,
                });
            }
        })
    };
    // The baseline: the server alone.
    sleep(Duration::from_millis(
        u64::from(BASELINE_SAMPLES) * 1000 + 200,
    ))
    .await;
    phase.store(Phase::Good as u8, Ordering::Relaxed);

    let good = Arc::new(Good::new(&SHAPE));
    let start = Instant::now();
    let hostile_start = start + (config.total / 10).min(Duration::from_secs(5));
    let hostile_end = start + config.total.mul_f64(0.6);
    let publish_end = start + config.total;

    // Receivers first, all upgraded before any message is sent.
    let mut good_tasks = Vec::new();
    let main_ids: Vec<usize> = (0..SHAPE.ws_publishers + SHAPE.http_publishers).collect();
    for _ in 0..SHAPE.subscribers {
        let checker = good.checker(main_ids.clone());
        good_tasks.push(tokio::spawn(good_ws(
            Arc::clone(&config),
            Arc::clone(&good),
            format!("/{MAIN_TOPIC}"),
            None,
            checker,
        )));
    }
    for p in 0..SHAPE.ws_publishers {
        let checker = good.checker(main_ids.clone());
        let send = Sender {
            id: p,
            rate: SHAPE.ws_rate,
            until: publish_end,
        };
        good_tasks.push(tokio::spawn(good_ws(
            Arc::clone(&config),
            Arc::clone(&good),
            format!("/{MAIN_TOPIC}"),
            Some(send),
            checker,
        )));
    }
    for e in 0..SHAPE.echo {
        let id = SHAPE.ws_publishers + SHAPE.http_publishers + e;
        let checker = good.checker(vec![id]);
        let send = Sender {
            id,
            rate: SHAPE.echo_rate,
            until: publish_end,
        };
        good_tasks.push(tokio::spawn(good_ws(
            Arc::clone(&config),
            Arc::clone(&good),
            format!("/soak-echo-{e}"),
            Some(send),
            checker,
        )));
    }
    let ws_clients = SHAPE.subscribers + SHAPE.ws_publishers + SHAPE.echo;
    let connect_deadline = Instant::now() + IO_TIMEOUT * 2;
    while good.upgraded.load(Ordering::Relaxed) + good.failed_upgrades.load(Ordering::Relaxed)
        < ws_clients as u64
        && Instant::now() < connect_deadline
    {
        sleep(Duration::from_millis(20)).await;
    }
    // Subscriptions are registered at the upgrade; give other workers a moment all the same.
    sleep(Duration::from_millis(300)).await;
    good.go.store(true, Ordering::Release);
    for k in 0..SHAPE.http_publishers {
        good_tasks.push(tokio::spawn(http_publisher(
            Arc::clone(&config),
            Arc::clone(&good),
            SHAPE.ws_publishers + k,
            publish_end,
        )));
    }

    // The hostile phase.
    sleep_until(hostile_start).await;
    phase.store(Phase::Hostile as u8, Ordering::Relaxed);
    let hostile = Arc::new(Hostile::default());
    let hostile_started = Instant::now();
    let hostile_tasks = spawn_hostile(&config, &hostile, hostile_end);
    sleep_until(hostile_end).await;
    // Every loop checks `hostile_end` itself; whatever still runs (a stall, a blocked write)
    // is aborted, which drops its sockets.
    let grace = Instant::now() + Duration::from_secs(2);
    for task in &hostile_tasks {
        if !task.is_finished() && Instant::now() < grace {
            let _ = timeout(grace - Instant::now(), async {
                while !task.is_finished() {
                    sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
        }
    }
    let mut aborted = 0;
    for task in hostile_tasks {
        if !task.is_finished() {
            aborted += 1;
        }
        task.abort();
    }
    let hostile_left = Instant::now();
    phase.store(Phase::After as u8, Ordering::Relaxed);

    // Good clients alone again, then the publishers stop and the last messages drain.
    sleep_until(publish_end).await;
    let rss_at_publish_end = rss_kb(config.pid);
    let after_secs = hostile_left.elapsed().as_secs_f64();
    phase.store(Phase::Drain as u8, Ordering::Relaxed);
    let writers_deadline = Instant::now() + IO_TIMEOUT * 2;
    while good.writers.load(Ordering::Acquire) > 0 && Instant::now() < writers_deadline {
        sleep(Duration::from_millis(20)).await;
    }
    let drain_start = Instant::now();
    while !good.caught_up() && drain_start.elapsed() < DRAIN_TIMEOUT {
        sleep(Duration::from_millis(100)).await;
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    let metrics = fetch_metrics(config.addr).await;
    good.close.store(true, Ordering::Release);
    for task in good_tasks {
        if timeout(IO_TIMEOUT * 2, task).await.is_err() {
            good.note_close("a good client did not finish closing in time".into());
        }
    }
    sampler.abort();
    let samples = std::mem::take(&mut *samples.lock().expect("sampler lock"));
    report(Report {
        config: &config,
        good: &good,
        hostile: &hostile,
        samples: &samples,
        metrics,
        rss_at_publish_end,
        after_secs,
        hostile_secs: hostile_left.duration_since(hostile_started).as_secs_f64(),
        hostile_aborted: aborted,
        drain_secs,
    })
}

// --- Good clients ---------------------------------------------------------------------------

/// What the good clients share: counters, checkers, and the run's signals.
struct Good {
    /// Messages each publisher got the server to take (sent on an open WebSocket, or 202).
    published: Vec<AtomicU64>,
    checkers: Mutex<Vec<Arc<Mutex<Checker>>>>,
    upgraded: AtomicU64,
    failed_upgrades: AtomicU64,
    /// Publishers still sending.
    writers: AtomicU64,
    http_errors: AtomicU64,
    unexpected_closes: AtomicU64,
    reasons: Mutex<Vec<String>>,
    /// Publishers may start.
    go: AtomicBool,
    /// Every good client closes now.
    close: AtomicBool,
}

impl Good {
    fn new(shape: &Shape) -> Self {
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

    fn checker(&self, expect: Vec<usize>) -> Arc<Mutex<Checker>> {
        let checker = Arc::new(Mutex::new(Checker::new(expect)));
        self.checkers
            .lock()
            .expect("checkers lock")
            .push(Arc::clone(&checker));
        checker
    }

    fn note_close(&self, reason: String) {
        self.unexpected_closes.fetch_add(1, Ordering::Relaxed);
        self.note(reason);
    }

    fn note(&self, reason: String) {
        let mut reasons = self.reasons.lock().expect("reasons lock");
        if reasons.len() < MAX_REASONS {
            reasons.push(reason);
        }
    }

    fn published(&self) -> Vec<u64> {
        self.published
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .collect()
    }

    /// Every checker has every message its publishers had published.
    fn caught_up(&self) -> bool {
        let published = self.published();
        self.checkers
            .lock()
            .expect("checkers lock")
            .iter()
            .all(|c| c.lock().expect("checker lock").missing(&published) == 0)
    }
}

/// One receiver's view of its publishers' streams.
struct Checker {
    /// The publishers whose every message this receiver must see.
    expect: Vec<usize>,
    /// The next sequence number due from each publisher.
    next: BTreeMap<usize, u64>,
    received: u64,
    /// Sequence numbers skipped over (a later message arrived first).
    skipped: u64,
    /// Messages that were not the next one due from their publisher.
    out_of_order: u64,
    /// Messages whose bytes or source are wrong.
    corrupt: u64,
}

impl Checker {
    fn new(expect: Vec<usize>) -> Self {
        Self {
            next: expect.iter().map(|&p| (p, 0)).collect(),
            expect,
            received: 0,
            skipped: 0,
            out_of_order: 0,
            corrupt: 0,
        }
    }

    fn check(&mut self, payload: &[u8]) {
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
    fn missing(&self, published: &[u64]) -> u64 {
        self.skipped
            + self
                .expect
                .iter()
                .map(|p| published[*p].saturating_sub(self.next[p]))
                .sum::<u64>()
    }
}

/// What a publishing good client sends.
struct Sender {
    id: usize,
    rate: f64,
    until: Instant,
}

/// A good WebSocket client: reads promptly and checks everything, and with `send` publishes
/// too. It closes when `good.close` is set; any close before that is unexpected.
async fn good_ws(
    config: Arc<Config>,
    good: Arc<Good>,
    path: String,
    send: Option<Sender>,
    checker: Arc<Mutex<Checker>>,
) {
    let url = format!("ws://{}{path}", config.addr);
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
async fn http_publisher(config: Arc<Config>, good: Arc<Good>, id: usize, until: Instant) {
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
async fn http_request(addr: SocketAddr, head: &[u8], body: &[u8]) -> io::Result<u16> {
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

fn status_of(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Reads until EOF, keeping at most `keep` bytes.
async fn read_to_end(stream: &mut TcpStream, keep: usize) -> io::Result<Vec<u8>> {
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
fn build_message(publisher: usize, seq: u64) -> String {
    let len = 24 + (seq as usize * 37) % 2024;
    let mut message = format!("soak {publisher} {seq} {len} ");
    let fill = fill_of(publisher, seq);
    while message.len() < len {
        message.push(fill);
    }
    message
}

fn fill_of(publisher: usize, seq: u64) -> char {
    char::from(b'a' + ((publisher as u64 * 31 + seq) % 26) as u8)
}

/// The publisher and sequence number of a message that is exactly what was sent.
fn parse_message(payload: &[u8]) -> Option<(usize, u64)> {
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

// --- Hostile clients ------------------------------------------------------------------------

/// Counters of the hostile clients: `kind` → `what` → count.
#[derive(Default)]
struct Hostile {
    counts: Mutex<BTreeMap<&'static str, BTreeMap<String, u64>>>,
}

impl Hostile {
    fn count(&self, kind: &'static str, what: impl Into<String>) {
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

fn spawn_hostile(
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
    tasks
}

/// Connect and upgrade fast, then leave: with a close frame, by dropping the socket, or in the
/// middle of the request.
async fn churn(addr: SocketAddr, hostile: Arc<Hostile>, task: usize, end: Instant) {
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
async fn slow_consumer(addr: SocketAddr, hostile: Arc<Hostile>, _task: usize, end: Instant) {
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
async fn giant(addr: SocketAddr, hostile: Arc<Hostile>, task: usize, end: Instant) {
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
async fn unauthenticated(addr: SocketAddr, hostile: Arc<Hostile>, end: Instant) {
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
async fn unauthenticated_stall(addr: SocketAddr, hostile: Arc<Hostile>, end: Instant) {
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
async fn ping_flood(addr: SocketAddr, hostile: Arc<Hostile>, task: usize, end: Instant) {
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
async fn bad_frames(addr: SocketAddr, hostile: Arc<Hostile>, task: usize, end: Instant) {
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

async fn upgrade(addr: SocketAddr, path: &str) -> io::Result<TcpStream> {
    let stream = timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::other("connect timed out"))??;
    upgrade_on(stream, addr, path).await
}

/// The upgrade on a connected socket, checked by uringcast's client handshake.
async fn upgrade_on(mut stream: TcpStream, addr: SocketAddr, path: &str) -> io::Result<TcpStream> {
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
fn random_u64() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn mask() -> [u8; 4] {
    (random_u64() as u32).to_ne_bytes()
}

fn key() -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&random_u64().to_ne_bytes());
    key[8..].copy_from_slice(&random_u64().to_ne_bytes());
    key
}

// --- The server's side ----------------------------------------------------------------------

/// VmRSS of `pid` from /proc/PID/status, KiB.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The server's `/metrics`, summed over workers: name → value.
async fn fetch_metrics(addr: SocketAddr) -> BTreeMap<String, u64> {
    let head = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let response = timeout(IO_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(head.as_bytes()).await?;
        read_to_end(&mut stream, 1 << 20).await
    })
    .await;
    let mut out = BTreeMap::new();
    let Ok(Ok(response)) = response else {
        return out;
    };
    let text = String::from_utf8_lossy(&response);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let mut parts = line.split_whitespace();
        let (Some(series), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if let Ok(value) = value.parse::<u64>() {
            *out.entry(name.trim_start_matches("uringcast_").to_owned())
                .or_insert(0) += value;
        }
    }
    out
}

// --- The report -----------------------------------------------------------------------------

struct Report<'a> {
    config: &'a Config,
    good: &'a Good,
    hostile: &'a Hostile,
    samples: &'a [Sample],
    metrics: BTreeMap<String, u64>,
    rss_at_publish_end: Option<u64>,
    after_secs: f64,
    hostile_secs: f64,
    hostile_aborted: usize,
    drain_secs: f64,
}

fn report(r: Report<'_>) -> Summary {
    let published = r.good.published();
    let (mut received, mut missing, mut out_of_order, mut corrupt) = (0, 0, 0, 0);
    for checker in r.good.checkers.lock().expect("checkers lock").iter() {
        let c = checker.lock().expect("checker lock");
        received += c.received;
        missing += c.missing(&published);
        out_of_order += c.out_of_order;
        corrupt += c.corrupt;
    }
    let expected: u64 = {
        let main: u64 = published[..SHAPE.ws_publishers + SHAPE.http_publishers]
            .iter()
            .sum();
        let echo: u64 = published[SHAPE.ws_publishers + SHAPE.http_publishers..]
            .iter()
            .sum();
        main * (SHAPE.subscribers + SHAPE.ws_publishers) as u64 + echo
    };
    let unexpected_closes = r.good.unexpected_closes.load(Ordering::Relaxed);
    let http_errors = r.good.http_errors.load(Ordering::Relaxed);
    let pass = missing == 0
        && out_of_order == 0
        && corrupt == 0
        && unexpected_closes == 0
        && http_errors == 0
        && expected > 0;

    let of = |phase: Phase| r.samples.iter().filter(move |s| s.phase == phase);
    let baseline = of(Phase::Baseline).map(|s| s.rss_kb).max();
    let good_only = of(Phase::Good).map(|s| s.rss_kb).max();
    let peak_hostile = of(Phase::Hostile).map(|s| s.rss_kb).max();
    let after_last = of(Phase::After).next_back().map(|s| s.rss_kb);
    let after = r.rss_at_publish_end.or(after_last);
    let peak = r.samples.iter().map(|s| s.rss_kb).max();
    let fmt_kb = |v: Option<u64>| {
        v.map_or("n/a".to_owned(), |kb| {
            format!("{:.1} MiB", kb as f64 / 1024.0)
        })
    };
    let json_kb = |v: Option<u64>| v.map_or("null".to_owned(), |kb| kb.to_string());
    let reasons = r.good.reasons.lock().expect("reasons lock").clone();
    let counts = r.hostile.counts.lock().expect("hostile lock").clone();

    let mut text = String::new();
    let _ = writeln!(
        text,
        "soak: {} for {:.0} s of traffic (server pid {})",
        r.config.addr,
        r.config.total.as_secs_f64(),
        r.config.pid
    );
    let _ = writeln!(
        text,
        "good: {} subscribers, {} ws publishers, {} http publishers, {} echo clients",
        SHAPE.subscribers, SHAPE.ws_publishers, SHAPE.http_publishers, SHAPE.echo
    );
    let _ = writeln!(
        text,
        "good: published {} (ws {}, http {}, echo {}), expected deliveries {expected}, received {received}",
        published.iter().sum::<u64>(),
        published[..SHAPE.ws_publishers].iter().sum::<u64>(),
        published[SHAPE.ws_publishers..SHAPE.ws_publishers + SHAPE.http_publishers].iter().sum::<u64>(),
        published[SHAPE.ws_publishers + SHAPE.http_publishers..].iter().sum::<u64>(),
    );
    let _ = writeln!(
        text,
        "good: missing {missing}, out of order {out_of_order}, corrupt {corrupt}, unexpected closes {unexpected_closes}, http errors {http_errors} (drain {:.1} s)",
        r.drain_secs
    );
    for reason in &reasons {
        let _ = writeln!(text, "good:   {reason}");
    }
    let _ = writeln!(
        text,
        "hostile: {:.1} s, {} task(s) still running at the end and aborted",
        r.hostile_secs, r.hostile_aborted
    );
    for (kind, whats) in &counts {
        let list: Vec<String> = whats.iter().map(|(w, n)| format!("{w} {n}")).collect();
        let _ = writeln!(text, "hostile: {kind}: {}", list.join(", "));
    }
    let _ = writeln!(
        text,
        "rss: baseline {}, good clients only {}, peak with hostile clients {}, {:.0} s after they left {}, peak overall {}",
        fmt_kb(baseline),
        fmt_kb(good_only),
        fmt_kb(peak_hostile),
        r.after_secs,
        fmt_kb(after),
        fmt_kb(peak)
    );
    let pick = [
        "slow_consumer_closes_total",
        "drops_total",
        "mailbox_drops_total",
        "connections_accepted_total",
        "publishes_total",
    ];
    let shown: Vec<String> = pick
        .iter()
        .filter_map(|name| r.metrics.get(*name).map(|v| format!("{name} {v}")))
        .collect();
    let _ = writeln!(
        text,
        "server metrics: {}",
        if shown.is_empty() {
            "unavailable".to_owned()
        } else {
            shown.join(", ")
        }
    );
    let _ = writeln!(text, "result: {}", if pass { "PASS" } else { "FAIL" });

    let mut json = String::new();
    let _ = writeln!(json, "{{\n  \"pass\": {pass},\n  \"addr\": \"{}\",\n  \"server_pid\": {},\n  \"traffic_secs\": {},", r.config.addr, r.config.pid, r.config.total.as_secs_f64());
    let _ = writeln!(json, "  \"good\": {{\"subscribers\": {}, \"ws_publishers\": {}, \"http_publishers\": {}, \"echo_clients\": {}, \"published\": {}, \"published_ws\": {}, \"published_http\": {}, \"published_echo\": {}, \"expected_deliveries\": {expected}, \"received\": {received}, \"missing\": {missing}, \"out_of_order\": {out_of_order}, \"corrupt\": {corrupt}, \"unexpected_closes\": {unexpected_closes}, \"http_errors\": {http_errors}, \"drain_secs\": {:.3}, \"reasons\": [{}]}},",
        SHAPE.subscribers,
        SHAPE.ws_publishers,
        SHAPE.http_publishers,
        SHAPE.echo,
        published.iter().sum::<u64>(),
        published[..SHAPE.ws_publishers].iter().sum::<u64>(),
        published[SHAPE.ws_publishers..SHAPE.ws_publishers + SHAPE.http_publishers].iter().sum::<u64>(),
        published[SHAPE.ws_publishers + SHAPE.http_publishers..].iter().sum::<u64>(),
        r.drain_secs,
        reasons.iter().map(|s| json_string(s)).collect::<Vec<_>>().join(", ")
    );
    let hostile_json: Vec<String> = counts
        .iter()
        .map(|(kind, whats)| {
            let inner: Vec<String> = whats
                .iter()
                .map(|(w, n)| format!("{}: {n}", json_string(w)))
                .collect();
            format!("{}: {{{}}}", json_string(kind), inner.join(", "))
        })
        .collect();
    let _ = writeln!(
        json,
        "  \"hostile\": {{\"secs\": {:.3}, \"aborted_tasks\": {}, \"counts\": {{{}}}}},",
        r.hostile_secs,
        r.hostile_aborted,
        hostile_json.join(", ")
    );
    let _ = writeln!(json, "  \"rss_kb\": {{\"baseline\": {}, \"good_only_peak\": {}, \"hostile_peak\": {}, \"after_hostile\": {}, \"after_hostile_secs\": {:.1}, \"peak\": {}}},",
        json_kb(baseline),
        json_kb(good_only),
        json_kb(peak_hostile),
        json_kb(after),
        r.after_secs,
        json_kb(peak)
    );
    let timeline: Vec<String> = r
        .samples
        .iter()
        .map(|s| format!("[{:.1}, \"{}\", {}]", s.t, s.phase.name(), s.rss_kb))
        .collect();
    let _ = writeln!(json, "  \"rss_samples\": [{}],", timeline.join(", "));
    let metrics: Vec<String> = r
        .metrics
        .iter()
        .map(|(k, v)| format!("{}: {v}", json_string(k)))
        .collect();
    let _ = writeln!(json, "  \"server_metrics\": {{{}}}\n}}", metrics.join(", "));
    Summary { text, json, pass }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_check_themselves() {
        for (p, seq) in [(0, 0), (3, 1), (7, 12345), (100, 54)] {
            let m = build_message(p, seq);
            assert_eq!(parse_message(m.as_bytes()), Some((p, seq)));
            let mut bad = m.clone().into_bytes();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert_eq!(parse_message(&bad), None);
            assert_eq!(parse_message(&m.as_bytes()[..m.len() - 1]), None);
        }
    }

    #[test]
    fn checker_counts_gaps_and_reorders() {
        let mut c = Checker::new(vec![0, 1]);
        for seq in [0, 1, 3, 2, 4] {
            c.check(build_message(0, seq).as_bytes());
        }
        c.check(build_message(1, 0).as_bytes());
        c.check(build_message(9, 0).as_bytes());
        assert_eq!(c.out_of_order, 2);
        assert_eq!(c.corrupt, 1);
        // 0..5 from publisher 0 seen (2 late, so 1 counted skipped), 1 of 2 from publisher 1.
        assert_eq!(c.missing(&[5, 2]), 2);
    }
}
