//! Integration tests of the broadcast engine: the binary in `--mode broadcast`, and servers
//! started in-process with `spawn_with` and handlers of the tests' own.
//!
//! Every server listens on `127.0.0.1:0`. Every wait is a read or a signal bounded by a
//! timeout; nothing sleeps. "Never received" is shown by a marker sent afterwards along the
//! same path: it must be the first thing that arrives.

mod common;

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::*;
use futures_util::task::AtomicWaker;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uringcast::broadcast::{Connection, Decision, Handler, Message};
use uringcast::protocol::handshake::Request;
use uringcast::protocol::{CloseCode, OpCode};
use uringcast::server::{spawn_with, RoomsByPath, ServerHandle};

/// Upper bound on any single await.
const STEP: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// 1. topic isolation
// ---------------------------------------------------------------------------------------------

/// Room-a traffic never reaches room-b, on either worker, locally or through a mailbox.
///
/// Both rooms get subscribers on both workers (checked with `broadcast_stats`). A room-a
/// client publishes numbered messages until every room-a client has them all: by then each
/// worker has fanned them out, so a leak into room-b would already sit in a room-b queue.
/// Then a room-b client publishes a marker, and it must be the first thing every room-b
/// client receives. The same runs the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_isolated_across_workers() -> Result<()> {
    const ROOMS: [&str; 2] = ["room-a", "room-b"];
    const MESSAGES: usize = 50;
    let server = InProcess::start(2, RoomsByPath)?;
    let addr = server.local_addr();

    let mut rooms: [Vec<Ws>; 2] = Default::default();
    let covered = |server: &ServerHandle| {
        ROOMS.iter().all(|room| {
            server
                .broadcast_stats()
                .iter()
                .all(|worker| worker.topic_count(room) >= 1)
        })
    };
    // Connections spread over the workers by SO_REUSEPORT's hash: connect until both rooms
    // have a subscriber on both workers (64 connections all landing on one worker is 2^-63).
    for i in 0..128 {
        if i >= 8 && covered(&server) {
            break;
        }
        rooms[i % 2].push(ws_at(addr, &format!("/{}", ROOMS[i % 2])).await?);
    }
    ensure!(
        covered(&server),
        "after 128 connections, some worker has no subscriber of some room"
    );

    for (from, to) in [(0, 1), (1, 0)] {
        let tag = ROOMS[from];
        for seq in 0..MESSAGES {
            send_text(&mut rooms[from][0], &format!("{tag}:{seq}")).await?;
        }
        for (i, ws) in rooms[from].iter_mut().enumerate() {
            for seq in 0..MESSAGES {
                let got = next_text(ws)
                    .await
                    .with_context(|| format!("{tag} client {i}, message {seq}"))?;
                ensure!(
                    got == format!("{tag}:{seq}"),
                    "{tag} client {i}: expected message {seq}, got {got:?}"
                );
            }
        }
        let marker = format!("{}:marker-after-{tag}", ROOMS[to]);
        send_text(&mut rooms[to][0], &marker).await?;
        for (i, ws) in rooms[to].iter_mut().enumerate() {
            let got = next_text(ws).await?;
            ensure!(
                got == marker,
                "{} client {i} received {got:?} before the marker: {tag} traffic leaked",
                ROOMS[to]
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. per-receiver order, two workers, publishers on both
// ---------------------------------------------------------------------------------------------

/// With `--workers 2`, each room has subscribers and a publisher on each worker (placement
/// read from `/metrics` after each connection). All four publishers send numbered sequences
/// at once; every client of a room sees each of its room's publishers' sequences complete
/// and in order, and nothing of the other room.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_publishers_sequence_arrives_complete_and_in_order_on_two_workers() -> Result<()> {
    const ROOMS: [&str; 2] = ["room-a", "room-b"];
    const PER_ROOM: usize = 12;
    const MESSAGES: u64 = 1000;
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "2",
        "--ping-interval",
        "0",
    ])?;
    let addr = server.addr();

    // (room, worker, connection), learning each connection's worker from the one per-worker
    // subscription gauge that moved.
    let mut clients: Vec<(usize, usize, Ws)> = Vec::new();
    let mut before = subscriptions_by_worker(addr).await?;
    ensure!(
        before.len() == 2,
        "expected 2 workers in /metrics, got {before:?}"
    );
    let placed = |clients: &[(usize, usize, Ws)], room: usize, worker: usize| {
        clients
            .iter()
            .filter(|(r, w, _)| *r == room && *w == worker)
            .count()
    };
    for (room, tag) in ROOMS.iter().enumerate() {
        for _ in 0..64 {
            let count = clients.iter().filter(|(r, _, _)| *r == room).count();
            if count >= PER_ROOM && placed(&clients, room, 0) >= 2 && placed(&clients, room, 1) >= 2
            {
                break;
            }
            let ws = ws_at(addr, &format!("/{tag}")).await?;
            let after = subscriptions_by_worker(addr).await?;
            let moved: Vec<usize> = (0..2).filter(|&w| after[w] != before[w]).collect();
            ensure!(
                moved.len() == 1 && after[moved[0]] == before[moved[0]] + 1.0,
                "one new subscriber should move one worker's gauge by 1: {before:?} -> {after:?}"
            );
            clients.push((room, moved[0], ws));
            before = after;
        }
        for worker in 0..2 {
            ensure!(
                placed(&clients, room, worker) >= 2,
                "{tag} has fewer than 2 subscribers on worker {worker}"
            );
        }
    }

    // Publishers: per room, the first client on worker 0 and the first on worker 1.
    let mut publishers: Vec<(usize, usize)> = Vec::new(); // (client index, room)
    for room in 0..2 {
        for worker in 0..2 {
            let index = clients
                .iter()
                .position(|(r, w, _)| *r == room && *w == worker)
                .expect("placement checked above");
            publishers.push((index, room));
        }
    }
    let publishers_in = |room: usize| publishers.iter().filter(|(_, r)| *r == room).count();
    let counts = [publishers_in(0), publishers_in(1)];

    let started = Instant::now();
    let mut receivers = JoinSet::new();
    let mut senders = JoinSet::new();
    let mut idle_sinks = Vec::new();
    for (index, (room, worker, ws)) in clients.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        let tag = ROOMS[room];
        receivers.spawn(receive_sequences(
            stream,
            tag,
            index,
            worker,
            counts[room],
            MESSAGES,
        ));
        match publishers.iter().position(|(i, _)| *i == index) {
            Some(publisher) => {
                senders.spawn(send_sequence(sink, tag, publisher, MESSAGES));
            }
            None => idle_sinks.push(sink),
        }
    }
    while let Some(sent) = senders.join_next().await {
        idle_sinks.push(sent??);
    }
    let mut receiver_count = 0;
    while let Some(received) = receivers.join_next().await {
        received??;
        receiver_count += 1;
    }
    eprintln!(
        "order: {receiver_count} receivers, {} publishers x {MESSAGES} messages in {:?}",
        publishers.len(),
        started.elapsed()
    );
    Ok(())
}

type WsSink = futures_util::stream::SplitSink<Ws, WsMessage>;
type WsStream = futures_util::stream::SplitStream<Ws>;

/// Sends `room:publisher:0` .. `room:publisher:{messages-1}` as fast as the socket takes them.
async fn send_sequence(
    mut sink: WsSink,
    tag: &'static str,
    publisher: usize,
    messages: u64,
) -> Result<WsSink> {
    for seq in 0..messages {
        timeout(
            STEP,
            sink.send(WsMessage::text(format!("{tag}:{publisher}:{seq}"))),
        )
        .await
        .with_context(|| format!("publisher {publisher}: sending {seq} timed out"))?
        .with_context(|| format!("publisher {publisher}: sending {seq}"))?;
    }
    Ok(sink)
}

/// Receives until every one of the room's `publishers` has delivered `messages` numbered
/// messages; each publisher's numbers must arrive in order with no gap, and nothing may
/// come from another room.
async fn receive_sequences(
    mut stream: WsStream,
    tag: &'static str,
    index: usize,
    worker: usize,
    publishers: usize,
    messages: u64,
) -> Result<()> {
    let who = format!("{tag} client {index} (worker {worker})");
    // The next sequence number expected from each publisher.
    let mut next: HashMap<usize, u64> = HashMap::new();
    for received in 0..publishers as u64 * messages {
        let text = match timeout(STEP, stream.next()).await {
            Err(_) => bail!("{who}: nothing within {STEP:?} after {received} messages"),
            Ok(None) => bail!("{who}: the stream ended after {received} messages"),
            Ok(Some(message)) => message?.into_text()?,
        };
        let (room, publisher, seq) = parse_numbered(&text)?;
        ensure!(room == tag, "{who} received {text:?} from another room");
        let expected = next.entry(publisher).or_insert(0);
        ensure!(
            seq == *expected,
            "{who}: from publisher {publisher} expected {expected}, got {seq}"
        );
        *expected += 1;
    }
    ensure!(
        next.len() == publishers && next.values().all(|&n| n == messages),
        "{who}: incomplete sequences {next:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. publishing from an outside thread
// ---------------------------------------------------------------------------------------------

/// Subscribes every connection to `ticks`.
#[derive(Clone)]
struct Ticks;

impl Handler for Ticks {
    type Data = ();

    fn on_open(&mut self, conn: &mut Connection<'_, ()>, _request: &Request) {
        conn.subscribe("ticks")
            .expect("a short topic is within every limit");
    }

    fn on_message(&mut self, _conn: &mut Connection<'_, ()>, _message: Message<'_>) {}
}

/// A plain thread publishes through `ServerHandle::publish` while clients on both workers
/// read: every client gets every tick, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_published_from_an_outside_thread_reach_every_client_in_order() -> Result<()> {
    const TICKS: u64 = 2000;
    const CLIENTS: usize = 16;
    let server = InProcess::start(2, Ticks)?;
    let addr = server.local_addr();
    let mut clients = Vec::new();
    let on_every_worker = |server: &ServerHandle| {
        server
            .broadcast_stats()
            .iter()
            .all(|worker| worker.topic_count("ticks") >= 1)
    };
    while clients.len() < CLIENTS || !on_every_worker(&server) {
        ensure!(
            clients.len() < 128,
            "128 connections and still a worker without a subscriber"
        );
        clients.push(ws_at(addr, "/").await?);
    }
    let mut readers = JoinSet::new();
    for (index, mut ws) in clients.into_iter().enumerate() {
        readers.spawn(async move {
            for seq in 0..TICKS {
                let text = next_text(&mut ws)
                    .await
                    .with_context(|| format!("client {index} waiting for tick {seq}"))?;
                ensure!(
                    text == tick_json(seq),
                    "client {index}: expected tick {seq}, got {text:?}"
                );
            }
            Ok::<_, anyhow::Error>(ws)
        });
    }
    let handle: &ServerHandle = &server;
    let taken = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                (0..TICKS)
                    .map(|seq| handle.publish("ticks", OpCode::Text, tick_json(seq).as_bytes()))
                    .collect::<Vec<usize>>()
            })
            .join()
    })
    .map_err(|_| anyhow!("the publishing thread panicked"))?;
    let short: Vec<(usize, usize)> = taken
        .iter()
        .enumerate()
        .filter(|&(_, &workers)| workers != 2)
        .map(|(seq, &workers)| (seq, workers))
        .collect();
    ensure!(
        short.is_empty(),
        "{} of {TICKS} publishes were not handed to both workers; the first (tick, workers): {:?}",
        short.len(),
        &short[..short.len().min(5)]
    );
    let mut done = Vec::new();
    while let Some(reader) = readers.join_next().await {
        done.push(reader??);
    }
    Ok(())
}

fn tick_json(seq: u64) -> String {
    format!(
        "{{\"seq\":{seq},\"price\":{}.{:02}}}",
        100 + seq % 7,
        seq % 100
    )
}

// ---------------------------------------------------------------------------------------------
// 4. slow consumers
// ---------------------------------------------------------------------------------------------

const SLOW_READERS: usize = 1000;
/// At least this many messages are published: more when the kernel may buffer more (see
/// [`slow_messages`]).
const SLOW_MIN_MESSAGES: u64 = 200;
const SLOW_MESSAGE_BYTES: usize = 16 * 1024;
/// Small beside the data sent (about 5 MiB per subscriber), yet room for the pacing window
/// below twice over.
const SLOW_BACKLOG_BYTES: usize = 512 * 1024;
/// Messages not yet received by every reader when the next is published, at most. The
/// server counts a frame against the backlog until it reaps the send's completion, and the
/// reader may have the bytes before that: with one send in flight per connection, a reader
/// never more than W messages behind can have up to 2W frames counted. 2 x 15 frames of
/// 16 KiB + 4 header bytes fit the backlog, so a reader that keeps reading is never over it,
/// whatever the kernel buffers hold, while the readers stream rather than move in lock-step.
const SLOW_IN_FLIGHT: u64 = (SLOW_BACKLOG_BYTES / (2 * (SLOW_MESSAGE_BYTES + 4))) as u64;
/// Allowed growth of the server's resident memory during the publishing.
const SLOW_RSS_GROWTH_BYTES: u64 = 64 << 20;
/// The slow client's receive buffer (the kernel doubles it).
const SLOW_RCVBUF_BYTES: u32 = 4096;

/// Enough messages that the slow client must pass its backlog whatever the kernel holds for
/// it: the server's send buffer can autotune up to `tcp_wmem`'s maximum, the slow client's
/// receive queue holds about twice its `SO_RCVBUF`, and the backlog takes the rest.
fn slow_messages() -> Result<u64> {
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
async fn a_slow_consumer_is_disconnected_without_holding_back_1000_readers() -> Result<()> {
    slow_consumer("disconnect").await
}

/// `--slow-consumer drop`: the client that never reads stays connected and loses messages
/// (counted), while 1,000 readers get every message in order; memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_loses_messages_without_holding_back_1000_readers() -> Result<()> {
    slow_consumer("drop").await
}

async fn slow_consumer(policy: &str) -> Result<()> {
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
struct Progress {
    counts: Vec<AtomicUsize>,
    readers: usize,
    /// Messages received by every reader (readers receive in order, so a prefix).
    complete: AtomicU64,
    waker: AtomicWaker,
}

impl Progress {
    fn new(readers: usize, messages: u64) -> Self {
        Self {
            counts: (0..messages).map(|_| AtomicUsize::new(0)).collect(),
            readers,
            complete: AtomicU64::new(0),
            waker: AtomicWaker::new(),
        }
    }

    fn received(&self, seq: u64) {
        if self.counts[seq as usize].fetch_add(1, Ordering::AcqRel) + 1 == self.readers {
            self.complete.fetch_max(seq + 1, Ordering::AcqRel);
            self.waker.wake();
        }
    }

    /// Resolves once the first `messages` messages have reached every reader.
    async fn wait_complete(&self, messages: u64) {
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
async fn read_numbered<R: AsyncRead + Unpin>(
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
fn numbered_payload(seq: u64) -> Vec<u8> {
    let mut payload = vec![seq as u8; SLOW_MESSAGE_BYTES];
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    payload[SLOW_MESSAGE_BYTES - 8..].copy_from_slice(&seq.to_be_bytes());
    payload
}

/// The number of a [`numbered_payload`], checking its length, both ends and a middle byte.
fn check_numbered(payload: &[u8]) -> Result<u64> {
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
fn proc_status_bytes(pid: u32, field: &str) -> Result<u64> {
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
async fn raw_upgrade(mut stream: TcpStream, path: &str) -> Result<(TcpStream, Vec<u8>)> {
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
struct FrameReader<R> {
    io: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(io: R, leftover: &[u8]) -> Self {
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
    async fn next(&mut self) -> Result<Option<(u8, &[u8])>> {
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
fn frame_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>> {
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

// ---------------------------------------------------------------------------------------------
// 5. HTTP endpoints
// ---------------------------------------------------------------------------------------------

/// `POST /publish/<topic>` with and without the token, `/healthz`, `/metrics` (validated as
/// Prometheus text), 404, 405 and 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_publish_health_and_metrics() -> Result<()> {
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "2",
        "--publish-token",
        "s3cret",
        "--max-message-bytes",
        "1024",
    ])?;
    let addr = server.addr();
    let mut room = Vec::new();
    for _ in 0..3 {
        room.push(ws_at(addr, "/room-a").await?);
    }
    let mut root = ws_at(addr, "/").await?;
    let auth = ("Authorization", "Bearer s3cret");

    // Text with the token: 202 and the subscriber count; every subscriber gets a text frame.
    let reply = http(
        addr,
        "POST",
        "/publish/room-a",
        &[auth, ("Content-Type", "text/plain; charset=utf-8")],
        b"hello room",
    )
    .await?;
    ensure!(reply.status == 202, "authorized publish: {}", reply.head);
    ensure!(
        reply.header("content-type") == Some("application/json"),
        "content type of the 202: {}",
        reply.head
    );
    ensure!(
        std::str::from_utf8(&reply.body)?.trim() == r#"{"subscribers":3}"#,
        "202 body {:?}",
        String::from_utf8_lossy(&reply.body)
    );
    for ws in &mut room {
        ensure!(next_text(ws).await? == "hello room");
    }

    // Any other content type is a binary frame; `/publish/` is the root topic `/`.
    let reply = http(
        addr,
        "POST",
        "/publish/",
        &[auth, ("Content-Type", "application/octet-stream")],
        &[0, 1, 2, 255],
    )
    .await?;
    ensure!(reply.status == 202, "publish to the root: {}", reply.head);
    ensure!(std::str::from_utf8(&reply.body)?.trim() == r#"{"subscribers":1}"#);
    match next_ws(&mut root).await? {
        WsMessage::Binary(bytes) => ensure!(bytes.as_ref() == [0, 1, 2, 255]),
        other => bail!("the root subscriber got {other:?}, expected the binary publish"),
    }

    // Refused publishes reach nobody: the next message each subscriber sees is a later one.
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "Bearer s3cre")],
        vec![("Authorization", "Basic s3cret")],
    ] {
        let reply = http(addr, "POST", "/publish/room-a", &headers, b"sneaky").await?;
        ensure!(reply.status == 401, "{headers:?}: {}", reply.head);
        ensure!(
            reply.header("www-authenticate") == Some("Bearer"),
            "{}",
            reply.head
        );
    }
    let reply = http(addr, "POST", "/publish/room-a", &[auth], &[b'x'; 1025]).await?;
    ensure!(
        reply.status == 413,
        "a body over max-message-bytes: {}",
        reply.head
    );
    let reply = http(
        addr,
        "POST",
        "/publish/room-a",
        &[auth, ("Content-Type", "text/plain")],
        &[0xff, 0xfe],
    )
    .await?;
    ensure!(
        reply.status == 400,
        "a text body that is not UTF-8: {}",
        reply.head
    );
    let reply = http(
        addr,
        "POST",
        "/publish/room-a",
        &[auth, ("Content-Type", "text/plain")],
        &[b'y'; 1024],
    )
    .await?;
    ensure!(
        reply.status == 202,
        "a body of exactly max-message-bytes: {}",
        reply.head
    );
    for ws in &mut room {
        ensure!(
            next_text(ws).await? == "y".repeat(1024),
            "a refused publish reached a subscriber"
        );
    }

    let reply = http(addr, "GET", "/healthz", &[], b"").await?;
    ensure!(
        reply.status == 200 && reply.body == b"ok\n",
        "/healthz: {}",
        reply.head
    );

    let reply = http(addr, "GET", "/metrics", &[], b"").await?;
    ensure!(reply.status == 200, "/metrics: {}", reply.head);
    ensure!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "/metrics content type: {}",
        reply.head
    );
    let metrics = parse_prometheus(std::str::from_utf8(&reply.body)?)?;
    for (family, kind) in [
        ("uringcast_connections", "gauge"),
        ("uringcast_publishes_total", "counter"),
        ("uringcast_deliveries_total", "counter"),
        ("uringcast_drops_total", "counter"),
        ("uringcast_slow_consumer_closes_total", "counter"),
        ("uringcast_subscriptions", "gauge"),
        ("uringcast_topics", "gauge"),
    ] {
        ensure!(
            metrics.types.get(family).map(String::as_str) == Some(kind),
            "/metrics: {family} should be a {kind}"
        );
        ensure!(
            metrics.per_worker(family)?.len() == 2,
            "{family}: not 2 workers"
        );
    }
    ensure!(metrics.sum("uringcast_subscriptions")? == 4.0);
    ensure!(metrics.sum("uringcast_topics")? >= 2.0);
    ensure!(metrics.sum("uringcast_publishes_total")? >= 3.0);
    ensure!(metrics.sum("uringcast_deliveries_total")? >= 7.0);

    for (method, path, status) in [
        ("GET", "/nope", 404),
        ("GET", "/publishx", 404),
        ("POST", "/healthz", 405),
        ("DELETE", "/metrics", 405),
        ("GET", "/publish/room-a", 405),
    ] {
        let reply = http(addr, method, path, &[], b"").await?;
        ensure!(reply.status == status, "{method} {path}: {}", reply.head);
    }

    // Without a token the endpoint is off altogether.
    let tokenless = Server::start(&["--mode", "broadcast", "--workers", "1"])?;
    for headers in [vec![], vec![auth]] {
        let reply = http(tokenless.addr(), "POST", "/publish/room-a", &headers, b"x").await?;
        ensure!(
            reply.status == 404,
            "no token configured, {headers:?}: {}",
            reply.head
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. on_upgrade: rejection and subprotocols
// ---------------------------------------------------------------------------------------------

/// Upgrades only with `?token=ok`; picks `superchat` when offered; echoes messages.
#[derive(Clone)]
struct Gate;

impl Handler for Gate {
    type Data = ();

    fn on_upgrade(&mut self, request: &Request) -> Decision {
        let admitted = request
            .query()
            .is_some_and(|query| query.split('&').any(|pair| pair == "token=ok"));
        if !admitted {
            return Decision::Reject(403);
        }
        match request.protocols().find(|p| *p == "superchat") {
            Some(protocol) => Decision::AcceptProtocol(protocol.to_string()),
            None => Decision::Accept,
        }
    }

    fn on_message(&mut self, conn: &mut Connection<'_, ()>, message: Message<'_>) {
        conn.send(message.opcode, message.payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_upgrade_rejects_accepts_and_chooses_a_subprotocol() -> Result<()> {
    let server = InProcess::start(1, Gate)?;
    let addr = server.local_addr();
    let raw = |target: &str, protocols: Option<&str>| -> Result<(HttpHead, RawClient)> {
        let mut client = RawClient::connect(addr)?;
        let mut request =
            upgrade_request(addr, SAMPLE_KEY).replacen("GET /chat ", &format!("GET {target} "), 1);
        if let Some(protocols) = protocols {
            request.insert_str(
                request.len() - 2,
                &format!("Sec-WebSocket-Protocol: {protocols}\r\n"),
            );
        }
        client.send(request.as_bytes())?;
        let head = client.read_http_head()?;
        Ok((head, client))
    };
    for target in [
        "/chat",
        "/chat?token=no",
        "/chat?tok=ok",
        "/chat?token=okay",
    ] {
        let (head, mut client) = raw(target, None)?;
        ensure!(
            head.status == 403,
            "{target}: expected 403, got:\n{}",
            head.raw
        );
        ensure!(
            head.header("Sec-WebSocket-Accept").is_none(),
            "{target}: a 403 with an accept key:\n{}",
            head.raw
        );
        client
            .read_to_end()
            .context("the connection should end after the 403")?;
    }
    let (head, _client) = raw("/chat?x=1&token=ok", None)?;
    ensure!(
        head.status == 101,
        "token=ok: expected 101, got:\n{}",
        head.raw
    );
    ensure!(
        head.header("Sec-WebSocket-Protocol").is_none(),
        "no protocol offered, yet one chosen:\n{}",
        head.raw
    );
    let (head, _client) = raw("/chat?token=ok", Some("chat"))?;
    ensure!(head.status == 101, "{}", head.raw);
    ensure!(
        head.header("Sec-WebSocket-Protocol").is_none(),
        "`chat` offered, yet a protocol was chosen:\n{}",
        head.raw
    );
    let (head, _client) = raw("/chat?token=ok", Some("chat, superchat"))?;
    ensure!(head.status == 101, "{}", head.raw);
    ensure!(
        head.header("Sec-WebSocket-Protocol") == Some("superchat"),
        "expected Sec-WebSocket-Protocol: superchat in:\n{}",
        head.raw
    );

    // An independent client checks the same answer and then talks over it.
    let mut request = format!("ws://{addr}/chat?token=ok").into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("chat, superchat"),
    );
    let (mut ws, response) = timeout(
        STEP,
        tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true),
    )
    .await
    .context("connect timed out")??;
    ensure!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .is_some_and(|v| v == "superchat"),
        "tungstenite saw {:?}",
        response.headers()
    );
    send_text(&mut ws, "through the gate").await?;
    ensure!(next_text(&mut ws).await? == "through the gate");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. the Handler API: unsubscribe, close, on_close
// ---------------------------------------------------------------------------------------------

/// A room driven by commands: `say:X` publishes `NAME:X` to the room, `unsub`/`sub` leave and
/// rejoin it (acknowledged), `echo:X` sends X back, `close` closes with 4000 "bye". Every
/// connection joins on open; on close, `left:NAME` goes to the room.
#[derive(Clone)]
struct Commands;

impl Handler for Commands {
    type Data = String;

    fn on_open(&mut self, conn: &mut Connection<'_, String>, request: &Request) {
        *conn.data() = request.path().trim_start_matches('/').to_string();
        conn.subscribe("room")
            .expect("a short topic is within every limit");
    }

    fn on_message(&mut self, conn: &mut Connection<'_, String>, message: Message<'_>) {
        let Some(text) = message.as_text() else {
            return;
        };
        if let Some(said) = text.strip_prefix("say:") {
            let line = format!("{}:{said}", conn.data());
            conn.publish("room", OpCode::Text, line.as_bytes());
        } else if let Some(echo) = text.strip_prefix("echo:") {
            conn.send(OpCode::Text, echo.as_bytes());
        } else if text == "unsub" {
            conn.unsubscribe("room");
            conn.send(OpCode::Text, b"unsubscribed");
        } else if text == "sub" {
            conn.subscribe("room")
                .expect("a short topic is within every limit");
            conn.send(OpCode::Text, b"subscribed");
        } else if text == "close" {
            conn.close(CloseCode(4000), "bye");
        }
    }

    fn on_close(&mut self, conn: &mut Connection<'_, String>) {
        let line = format!("left:{}", conn.data());
        conn.publish("room", OpCode::Text, line.as_bytes());
    }
}

/// One worker, so a publish and a later direct send to the same connection are ordered by
/// its queue: a marker sent after a publish arriving first proves the publish never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_unsubscribe_close_and_on_close() -> Result<()> {
    let server = InProcess::start(1, Commands)?;
    let addr = server.local_addr();
    let mut alice = ws_at(addr, "/alice").await?;
    let mut bob = ws_at(addr, "/bob").await?;
    let mut carol = ws_at(addr, "/carol").await?;

    send_text(&mut alice, "unsub").await?;
    ensure!(next_text(&mut alice).await? == "unsubscribed");
    send_text(&mut bob, "say:hi").await?;
    ensure!(next_text(&mut bob).await? == "bob:hi");
    ensure!(next_text(&mut carol).await? == "bob:hi");
    send_text(&mut alice, "echo:marker-1").await?;
    let got = next_text(&mut alice).await?;
    ensure!(
        got == "marker-1",
        "alice unsubscribed, yet received {got:?}"
    );

    // A close from the handler: carol gets 4000 "bye"; on_close tells the room.
    send_text(&mut carol, "close").await?;
    match next_ws(&mut carol).await? {
        WsMessage::Close(Some(frame)) => {
            ensure!(
                frame.code == WsCloseCode::from(4000) && frame.reason == "bye",
                "carol's close frame: {frame:?}"
            );
        }
        other => bail!("carol expected a close frame, got {other:?}"),
    }
    ensure!(next_text(&mut bob).await? == "left:carol");
    send_text(&mut alice, "echo:marker-2").await?;
    let got = next_text(&mut alice).await?;
    ensure!(
        got == "marker-2",
        "alice unsubscribed, yet received {got:?}"
    );

    // Rejoining works, and a client-initiated close also runs on_close.
    send_text(&mut alice, "sub").await?;
    ensure!(next_text(&mut alice).await? == "subscribed");
    timeout(STEP, bob.close(None)).await??;
    ensure!(next_text(&mut alice).await? == "left:bob");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An in-process server, shut down on drop (after the test's clients, declared later, are
/// gone).
struct InProcess(Option<ServerHandle>);

impl InProcess {
    fn start<H: Handler>(workers: usize, handler: H) -> Result<Self> {
        let config = uringcast::server::Server::builder()
            .listen("127.0.0.1:0".parse()?)
            .workers(workers)
            .ping_interval(None)
            .drain_timeout(Duration::from_secs(1))
            .build()?;
        Ok(Self(Some(spawn_with(config, handler)?)))
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

/// A tokio-tungstenite connection to `ws://ADDR{path}`.
async fn ws_at(addr: SocketAddr, path: &str) -> Result<Ws> {
    let url = format!("ws://{addr}{path}");
    let (ws, response) = timeout(
        STEP,
        tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config()), true),
    )
    .await
    .with_context(|| format!("connecting to {url} timed out"))?
    .with_context(|| format!("connecting to {url}"))?;
    ensure!(response.status() == 101, "status {}", response.status());
    Ok(ws)
}

async fn send_text(ws: &mut Ws, text: &str) -> Result<()> {
    timeout(STEP, ws.send(WsMessage::text(text)))
        .await
        .context("sending timed out")?
        .context("sending")
}

/// The next message, skipping pings and pongs.
async fn next_ws(ws: &mut Ws) -> Result<WsMessage> {
    loop {
        match timeout(STEP, ws.next()).await {
            Err(_) => bail!("no message within {STEP:?}"),
            Ok(None) => bail!("the stream ended"),
            Ok(Some(message)) => match message.context("reading a message")? {
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                other => return Ok(other),
            },
        }
    }
}

async fn next_text(ws: &mut Ws) -> Result<String> {
    match next_ws(ws).await? {
        WsMessage::Text(text) => Ok(text.to_string()),
        other => bail!("expected a text message, got {other:?}"),
    }
}

/// `room:publisher:seq`.
fn parse_numbered(text: &str) -> Result<(&str, usize, u64)> {
    let mut parts = text.split(':');
    let (Some(room), Some(publisher), Some(seq), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("not room:publisher:seq: {text:?}");
    };
    Ok((room, publisher.parse()?, seq.parse()?))
}

/// `uringcast_subscriptions` per worker, from `/metrics`.
async fn subscriptions_by_worker(addr: SocketAddr) -> Result<Vec<f64>> {
    let metrics = fetch_metrics(addr).await?;
    metrics.per_worker("uringcast_subscriptions")
}

async fn fetch_metrics(addr: SocketAddr) -> Result<Exposition> {
    let reply = http(addr, "GET", "/metrics", &[], b"").await?;
    ensure!(reply.status == 200, "GET /metrics: {}", reply.head);
    parse_prometheus(std::str::from_utf8(&reply.body)?)
}

/// A whole HTTP response; the server closes after it.
struct HttpReply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl HttpReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 request on a new connection; reads until the server closes.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpReply> {
    let mut stream = timeout(STEP, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    if method == "POST" || !body.is_empty() {
        request += &format!("Content-Length: {}\r\n", body.len());
    }
    request += "\r\n";
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    timeout(STEP, stream.read_to_end(&mut raw))
        .await
        .with_context(|| format!("{method} {path}: no end of response within {STEP:?}"))?
        .with_context(|| format!("{method} {path}: reading the response"))?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{method} {path}: no response head in {raw:?}"))?
        + 4;
    let head = String::from_utf8(raw[..end].to_vec())?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
    let reply = HttpReply {
        status,
        head,
        body: raw[end..].to_vec(),
    };
    if let Some(length) = reply.header("content-length") {
        ensure!(
            length.parse::<usize>()? == reply.body.len(),
            "Content-Length {length} but {} body bytes in {}",
            reply.body.len(),
            reply.head
        );
    }
    Ok(reply)
}

// ---------------------------------------------------------------------------------------------
// A validating parser of the Prometheus text format (version 0.0.4)
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The values of a `{worker="N"}` family, indexed by worker.
    fn per_worker(&self, name: &str) -> Result<Vec<f64>> {
        let mut values = Vec::new();
        for sample in self.samples.iter().filter(|s| s.name == name) {
            let worker: usize = sample
                .labels
                .iter()
                .find(|(l, _)| l == "worker")
                .ok_or_else(|| anyhow!("{name} sample without a worker label"))?
                .1
                .parse()?;
            if values.len() <= worker {
                values.resize(worker + 1, f64::NAN);
            }
            values[worker] = sample.value;
        }
        ensure!(
            !values.is_empty() && values.iter().all(|v| !v.is_nan()),
            "{name}: missing workers in {values:?}"
        );
        Ok(values)
    }

    fn sum(&self, name: &str) -> Result<f64> {
        Ok(self.per_worker(name)?.iter().sum())
    }
}

/// Parses and validates an exposition: `# HELP`/`# TYPE` lines, samples
/// `name{label="value",...} value [timestamp]` with numeric values, every sample's family
/// typed before its first sample, no duplicate series.
fn parse_prometheus(text: &str) -> Result<Exposition> {
    ensure!(
        text.is_empty() || text.ends_with('\n'),
        "the exposition must end with a newline"
    );
    let mut out = Exposition::default();
    let mut helps = HashSet::new();
    let mut series = HashSet::new();
    for (number, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", number + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            if let Some(rest) = rest.strip_prefix("HELP ") {
                let (name, _) = rest.split_once(' ').unwrap_or((rest, ""));
                ensure!(is_metric_name(name), "bad metric name in HELP, {}", at());
                ensure!(helps.insert(name.to_string()), "second HELP, {}", at());
            } else if let Some(rest) = rest.strip_prefix("TYPE ") {
                let mut words = rest.split(' ');
                let (Some(name), Some(kind), None) = (words.next(), words.next(), words.next())
                else {
                    bail!("TYPE needs a name and a type, {}", at());
                };
                ensure!(is_metric_name(name), "bad metric name in TYPE, {}", at());
                ensure!(
                    matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ),
                    "unknown type, {}",
                    at()
                );
                ensure!(
                    !out.samples
                        .iter()
                        .any(|s| family_of(&s.name, &out.types) == Some(name)),
                    "TYPE after the family's samples, {}",
                    at()
                );
                ensure!(
                    out.types.insert(name.into(), kind.into()).is_none(),
                    "second TYPE, {}",
                    at()
                );
            }
            continue; // other comments are allowed
        }
        let sample = parse_sample(line).with_context(at)?;
        let family = family_of(&sample.name, &out.types)
            .ok_or_else(|| anyhow!("sample of a family with no TYPE, {}", at()))?;
        if out.types[family] == "counter" {
            ensure!(sample.value >= 0.0, "negative counter, {}", at());
        }
        let mut key = sample.labels.clone();
        key.sort();
        ensure!(
            series.insert((sample.name.clone(), key)),
            "duplicate series, {}",
            at()
        );
        out.samples.push(sample);
    }
    Ok(out)
}

/// The typed family a sample belongs to: its own name, or for histograms and summaries the
/// name without `_bucket`, `_sum` or `_count`.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        matches!(
            types.get(base).map(String::as_str),
            Some("histogram" | "summary")
        )
        .then_some(base)
    })
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    ensure!(is_metric_name(name), "bad metric name {name:?}");
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let close = loop {
            // label name
            let start = match chars.peek() {
                Some(&(_, '}')) => break chars.next().expect("peeked").0,
                Some(&(i, _)) => i,
                None => bail!("unterminated label set"),
            };
            let eq = inner[start..]
                .find('=')
                .ok_or_else(|| anyhow!("label without '='"))?
                + start;
            let label = &inner[start..eq];
            ensure!(is_label_name(label), "bad label name {label:?}");
            ensure!(
                !labels.iter().any(|(l, _)| l == label),
                "label {label:?} twice"
            );
            while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                chars.next();
            }
            ensure!(
                chars.next().map(|(_, c)| c) == Some('"'),
                "label value must be quoted"
            );
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => bail!("unterminated label value"),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => bail!("bad escape {other:?} in a label value"),
                    },
                    Some((_, '\n')) => bail!("raw newline in a label value"),
                    Some((_, c)) => value.push(c),
                }
            }
            labels.push((label.to_string(), value));
            match chars.next() {
                Some((_, ',')) => continue,
                Some((i, '}')) => break i,
                other => bail!("expected ',' or '}}' after a label, got {other:?}"),
            }
        };
        rest = &inner[close + 1..];
    }
    let mut words = rest.split_ascii_whitespace();
    ensure!(
        rest.starts_with(' '),
        "the value must follow the name or labels after a space"
    );
    let value = words.next().ok_or_else(|| anyhow!("no value"))?;
    let value = match value {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse::<f64>()
            .ok()
            .filter(|_| {
                v.bytes()
                    .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
            })
            .ok_or_else(|| anyhow!("value {v:?} is not a number"))?,
    };
    if let Some(timestamp) = words.next() {
        timestamp
            .parse::<i64>()
            .with_context(|| format!("timestamp {timestamp:?} is not an integer"))?;
    }
    ensure!(words.next().is_none(), "trailing text after the value");
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The validator must be able to fail: it rejects each way an exposition can be malformed.
#[test]
fn prometheus_validator_rejects_malformed_text() {
    let good =
        "# HELP a_total Things.\n# TYPE a_total counter\na_total{worker=\"0\",x=\"q\\\"\"} 3\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\nb_total 1\n";
    // `b_total` has no TYPE: only the prefix without it is valid.
    let valid = &good[..good.find("b_total").unwrap()];
    let parsed = parse_prometheus(valid).expect("valid exposition");
    assert_eq!(parsed.samples.len(), 4);
    assert_eq!(parsed.samples[0].labels[1].1, "q\"");
    for bad in [
        good,                                            // sample with no TYPE
        "# TYPE a gauge\na 1",                           // no final newline
        "# TYPE a gauge\na one\n",                       // value not numeric
        "# TYPE a gauge\na{w=\"0\"}1\n",                 // no space before the value
        "# TYPE a gauge\na{w=0} 1\n",                    // unquoted label value
        "# TYPE a gauge\na{w=\"0\" 1\n",                 // unterminated labels
        "# TYPE a gauge\na{0w=\"0\"} 1\n",               // bad label name
        "# TYPE a gauge\na{w=\"0\",w=\"1\"} 1\n",        // label twice
        "# TYPE a gauge\na 1\na 2\n",                    // duplicate series
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",         // second TYPE
        "# TYPE a gauges\na 1\n",                        // unknown type
        "# TYPE a counter\na -1\n",                      // negative counter
        "# TYPE a gauge\na 1 x\n",                       // timestamp not an integer
        "# TYPE a gauge\na 1\n# TYPE a gauge\n",         // TYPE after samples
        "# HELP 1a x\n",                                 // bad name in HELP
        "# TYPE a gauge\n# HELP a x\n# HELP a y\na 1\n", // second HELP
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}
