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
//! - bad frames: unmasked, reserved opcodes 0x3 and 0xB, RSV1 set;
//! - from 127.0.0.2: an address flood that opens connections without end (refused with 429
//!   past `--max-connections-per-ip`), and message floods on topics of their own (closed with
//!   1008 past `--max-messages-per-second`).
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

mod good;
mod hostile;
mod report;
mod server;

use good::*;
use hostile::*;
use report::*;
use server::*;

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
/// The address the flooders connect from: one of their own, so that the caps per address
/// (`--max-connections-per-ip`) refuse them while the good clients on 127.0.0.1 are served.
const FLOOD_ADDRESS: &str = "127.0.0.2";
const ADDRESS_FLOOD_MAX: u64 = 5000;
const FLOOD_TASKS: usize = 2;
const FLOOD_ROUNDS: u64 = 200;

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
