//! The driver under conditions a hostile client or an unlucky operator creates: a tiny ring,
//! a starved buffer ring, a panicking handler, a flood of unfinished messages.
//!
//! Each test runs the server in-process (`spawn_with`) on 127.0.0.1:0 and talks to it with
//! blocking raw clients from `common`.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::RawClient;
use uringcast::broadcast::{Connection, Handler, Message, SubscribeError};
use uringcast::protocol::handshake::Request;
use uringcast::protocol::OpCode;
use uringcast::server::{spawn_with, Server, ServerHandle};

/// Every connection subscribes to topic `t` when it opens.
#[derive(Clone)]
struct Subscribe;

impl Handler for Subscribe {
    type Data = ();

    fn on_open(&mut self, conn: &mut Connection<'_, ()>, _request: &Request) {
        conn.subscribe("t")
            .expect("a short topic is within every limit");
    }

    fn on_message(&mut self, conn: &mut Connection<'_, ()>, message: Message<'_>) {
        conn.send(message.opcode, message.payload);
    }
}

/// Waits until `done` holds, polling the server's own counters (the only signal a test has
/// of the server's side of a close), for at most `limit`.
fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !done() {
        ensure!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn connections(server: &ServerHandle) -> u64 {
    server
        .stats()
        .iter()
        .map(|s| s.connections.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

/// An 8-entry ring (a 32-entry completion queue) under a 10,000-subscriber fan-out, a mass
/// close and a shutdown: the submission queue is full on almost every push, so any
/// completion handled inside a push would corrupt the turn. Every delivery and every close
/// must arrive.
#[test]
fn tiny_ring_fans_out_closes_and_shuts_down_completely() -> Result<()> {
    const SUBSCRIBERS: usize = 10_000;
    const PUBLISHES: u64 = 20;
    let config = Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .workers(1)
        .ring_entries(8)
        .ping_interval(None)
        .handshake_timeout(Duration::from_secs(600))
        .drain_timeout(Duration::from_secs(5))
        .build()?;
    let server = spawn_with(config, Subscribe)?;
    let addr = server.local_addr();
    let mut clients = Vec::with_capacity(SUBSCRIBERS);
    for n in 0..SUBSCRIBERS {
        clients.push(RawClient::upgrade(addr).with_context(|| format!("subscriber {n}"))?);
    }
    // The upgrade's 101 is queued before on_open subscribes, so wait for the count.
    wait_for(Duration::from_secs(30), "every subscription", || {
        server.broadcast_stats()[0].topic_count("t") == SUBSCRIBERS as u64
    })?;
    for seq in 0..PUBLISHES {
        server.publish("t", OpCode::Binary, &seq.to_be_bytes());
    }
    for (n, client) in clients.iter_mut().enumerate() {
        for seq in 0..PUBLISHES {
            let (opcode, payload) = client
                .read_message()
                .with_context(|| format!("subscriber {n}, message {seq}"))?;
            ensure!(opcode == 2, "subscriber {n}: opcode {opcode}");
            ensure!(
                payload == seq.to_be_bytes(),
                "subscriber {n}: expected message {seq}, got {payload:?}"
            );
        }
    }
    // Mass close: half the clients go away at once; the server must tear every one down.
    let leaving = clients.split_off(SUBSCRIBERS / 2);
    drop(leaving);
    wait_for(Duration::from_secs(60), "the mass close", || {
        connections(&server) == (SUBSCRIBERS / 2) as u64
    })?;
    // Shutdown: every remaining client gets close 1001, then the workers exit.
    let stopper = std::thread::spawn(move || server.shutdown());
    for (n, client) in clients.iter_mut().enumerate() {
        let close = client
            .expect_close()
            .with_context(|| format!("subscriber {n} at shutdown"))?;
        ensure!(
            close.close_code() == Some(1001),
            "subscriber {n}: close {:?}",
            close.close_code()
        );
        client.send_close(1001, "")?;
    }
    stopper.join().expect("shutdown does not panic");
    Ok(())
}

/// A buffer ring of 4 buffers under 1,000 connections that all send at once: most receives
/// end with `ENOBUFS`, and each must be re-armed after the turn's buffers are back (not at
/// once, which fails again in a tight loop). Every echo must come back.
#[test]
fn starved_buffer_ring_loses_nothing_and_does_not_spin() -> Result<()> {
    const CLIENTS: usize = 1_000;
    let config = Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .workers(1)
        .recv_buffers(4, 256)
        .ping_interval(None)
        .build()?;
    let server = spawn_with(config, Subscribe)?;
    let addr = server.local_addr();
    let mut clients = Vec::with_capacity(CLIENTS);
    for n in 0..CLIENTS {
        clients.push(RawClient::upgrade(addr).with_context(|| format!("client {n}"))?);
    }
    let payload = |n: usize| format!("message {n} ").repeat(40);
    for (n, client) in clients.iter_mut().enumerate() {
        client.send(&common::client_frame(
            OpCode::Text,
            true,
            payload(n).as_bytes(),
        ))?;
    }
    for (n, client) in clients.iter_mut().enumerate() {
        let (opcode, echoed) = client
            .read_message()
            .with_context(|| format!("echo to client {n}"))?;
        ensure!(
            opcode == 1 && echoed == payload(n).as_bytes(),
            "client {n}: wrong echo"
        );
    }
    let starved = server.stats()[0]
        .recv_buffer_starvation
        .load(std::sync::atomic::Ordering::Relaxed);
    ensure!(
        starved > 0,
        "the ring never ran dry: the test proves nothing"
    );
    let metrics = server.metrics();
    ensure!(
        metrics.contains("uringcast_recv_buffer_starvation_total"),
        "/metrics does not export the starvation count"
    );
    server.shutdown();
    Ok(())
}

/// `POST /publish/<topic>` is decided from the head: without the right token (401) or with
/// publishing off (404) the answer comes before any body byte is sent, with
/// `Connection: close`, and the connection ends instead of draining the declared megabyte.
#[test]
fn publish_refusals_come_from_the_head_before_the_body() -> Result<()> {
    for (token, authorization, status) in [
        (Some("secret"), None, 401),
        (Some("secret"), Some("Bearer wrong"), 401),
        (None, Some("Bearer secret"), 404),
    ] {
        let config = Server::builder()
            .listen("127.0.0.1:0".parse()?)
            .workers(1)
            .publish_token(token.map(String::from))
            .build()?;
        let server = spawn_with(config, Subscribe)?;
        let addr = server.local_addr();
        let mut client = RawClient::connect(addr)?;
        let authorization = authorization
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        // The head declares a 1 MB body; none of it is ever sent.
        client.send(
            format!(
                "POST /publish/room HTTP/1.1\r\nHost: {addr}\r\n{authorization}\
                 Content-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n"
            )
            .as_bytes(),
        )?;
        let head = client.read_http_head().with_context(|| {
            format!("token {token:?}, {authorization:?}: no answer to the head")
        })?;
        ensure!(
            head.status == status,
            "token {token:?}, {authorization:?}: {}",
            head.raw
        );
        ensure!(
            head.header("Connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close")),
            "no `Connection: close` in:\n{}",
            head.raw
        );
        let length: usize = head
            .header("Content-Length")
            .and_then(|v| v.parse().ok())
            .context("no Content-Length")?;
        let (body, _) = client.read_to_end().context("the connection stays open")?;
        ensure!(
            body.len() == length,
            "{} bytes after a head of length {length}",
            body.len()
        );
        server.shutdown();
    }
    Ok(())
}

/// Echoes, and panics on the payload `boom`.
#[derive(Clone)]
struct Fragile;

impl Handler for Fragile {
    type Data = ();

    fn on_message(&mut self, conn: &mut Connection<'_, ()>, message: Message<'_>) {
        assert!(message.payload != b"boom", "the embedder's bug");
        conn.send(message.opcode, message.payload);
    }
}

/// A handler that panics on one message closes that connection with 1011, counts it, and the
/// worker keeps serving 100 other connections.
#[test]
fn a_panicking_handler_closes_only_its_connection() -> Result<()> {
    let config = Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .workers(1)
        .build()?;
    let server = spawn_with(config, Fragile)?;
    let addr = server.local_addr();
    let mut others = (0..100)
        .map(|_| RawClient::upgrade(addr))
        .collect::<Result<Vec<_>>>()?;
    let mut victim = RawClient::upgrade(addr)?;
    victim.send(&common::client_frame(OpCode::Text, true, b"boom"))?;
    let close = victim.expect_close()?;
    ensure!(
        close.close_code() == Some(1011),
        "close {:?} after a handler panic",
        close.close_code()
    );
    for round in 0..3 {
        for (n, client) in others.iter_mut().enumerate() {
            let text = format!("client {n} round {round}");
            client.send(&common::client_frame(OpCode::Text, true, text.as_bytes()))?;
            let (_, echoed) = client.read_message().with_context(|| text.clone())?;
            ensure!(echoed == text.as_bytes(), "{text}: wrong echo");
        }
    }
    let panics = server.broadcast_stats()[0]
        .handler_panics
        .load(std::sync::atomic::Ordering::Relaxed);
    ensure!(panics == 1, "{panics} handler panics counted, expected 1");
    ensure!(
        server.metrics().contains("uringcast_handler_panics_total"),
        "/metrics does not export handler panics"
    );
    server.shutdown();
    Ok(())
}

fn pending_bytes(server: &ServerHandle) -> u64 {
    server.stats()[0]
        .pending_bytes
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// One worker with a 2 MiB budget for unfinished messages: two clients each holding 900 KB
/// of a 1 MiB message fit; a third that starts one is closed with 1013 before its bytes are
/// copied, and counted. The first two then finish and get their echoes, and the budget
/// empties again.
#[test]
fn unfinished_messages_share_one_budget_per_worker() -> Result<()> {
    const MESSAGE: usize = 1 << 20;
    const SENT: usize = 900_000;
    let config = Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .workers(1)
        .max_message_bytes(MESSAGE as u64)
        .max_pending_bytes(2 << 20)
        .build()?;
    let server = spawn_with(config, Subscribe)?;
    let addr = server.local_addr();
    let payload = |seed: u8| vec![seed; MESSAGE];
    let mut holders = Vec::new();
    for seed in 1..=2u8 {
        let mut client = RawClient::upgrade(addr)?;
        let frame = common::client_frame(OpCode::Binary, true, &payload(seed));
        client.send(&frame[..SENT])?;
        let held = (SENT - 14) as u64 * u64::from(seed);
        wait_for(Duration::from_secs(10), "the first bytes held", || {
            pending_bytes(&server) >= held
        })?;
        holders.push((client, frame, seed));
    }
    let mut third = RawClient::upgrade(addr)?;
    let frame = common::client_frame(OpCode::Binary, true, &payload(3));
    third.send(&frame[..SENT])?;
    let close = third
        .expect_close()
        .context("the third unfinished message")?;
    ensure!(
        close.close_code() == Some(1013),
        "close {:?}, expected 1013",
        close.close_code()
    );
    ensure!(
        pending_bytes(&server) <= 2 << 20,
        "{} bytes pending past the 2 MiB budget",
        pending_bytes(&server)
    );
    for (client, frame, seed) in &mut holders {
        client.send(&frame[SENT..])?;
        let (_, echoed) = client.read_message()?;
        ensure!(echoed == payload(*seed), "client {seed}: wrong echo");
    }
    wait_for(Duration::from_secs(10), "the budget to empty", || {
        pending_bytes(&server) == 0
    })?;
    let closes = server.stats()[0]
        .pending_budget_closes
        .load(std::sync::atomic::Ordering::Relaxed);
    ensure!(closes == 1, "{closes} budget closes counted, expected 1");
    server.shutdown();
    Ok(())
}

/// A shutdown through the handle while the worker reads its signalfd (`handle_signals`):
/// the read is cancelled and its completion reaped before the worker frees its buffer, so
/// the worker exits clean rather than leaking (or freeing memory the kernel may write).
#[test]
fn shutdown_with_signal_reads_in_flight_exits_clean() -> Result<()> {
    let config = Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .workers(2)
        .handle_signals(true)
        .build()?;
    let server = spawn_with(config, Subscribe)?;
    let mut client = RawClient::upgrade(server.local_addr())?;
    client.send(&common::client_frame(OpCode::Text, true, b"hi"))?;
    ensure!(client.read_message()?.1 == b"hi", "no echo");
    client.send_close(1000, "")?;
    ensure!(server.shutdown(), "a worker exited leaking its buffers");
    Ok(())
}

/// Subscribes to the comma-separated topics a message names, in one call, and answers with
/// each subscription's verdict.
#[derive(Clone)]
struct SubscribeTo;

impl Handler for SubscribeTo {
    type Data = ();

    fn on_message(&mut self, conn: &mut Connection<'_, ()>, message: Message<'_>) {
        let Some(topics) = message.as_text() else {
            return;
        };
        let verdicts: Vec<&str> = topics
            .split(',')
            .map(|topic| match conn.subscribe(topic) {
                Ok(()) => "ok",
                Err(SubscribeError::TopicTooLong { .. }) => "long",
                Err(SubscribeError::TooManySubscriptions { .. }) => "subs",
                Err(SubscribeError::TooManyTopics { .. }) => "topics",
                Err(_) => "other",
            })
            .collect();
        conn.send(OpCode::Text, verdicts.join(",").as_bytes());
    }
}

/// Topic-name length, subscriptions per connection and topics per worker are bounded:
/// `subscribe` says which limit refused it, at once (also for several subscriptions asked for
/// in one call), each refusal is counted, and the topic table stays as it was.
#[test]
fn topic_counts_the_peer_controls_are_bounded() -> Result<()> {
    let config = Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .workers(1)
        .max_topic_bytes(8)
        .max_subscriptions_per_connection(2)
        .max_topics_per_worker(3)
        .build()?;
    let server = spawn_with(config, SubscribeTo)?;
    let addr = server.local_addr();
    let ask = |client: &mut RawClient, topics: &str, expected: &str| -> Result<()> {
        client.send(&common::client_frame(OpCode::Text, true, topics.as_bytes()))?;
        let answer = client.read_message()?.1;
        let answer = String::from_utf8_lossy(&answer);
        ensure!(
            answer == expected,
            "{topics}: {answer}, expected {expected}"
        );
        Ok(())
    };
    let mut one = RawClient::upgrade(addr)?;
    let mut two = RawClient::upgrade(addr)?;
    let mut three = RawClient::upgrade(addr)?;
    ask(&mut one, "a-topic-name-too-long", "long")?;
    // In one call: the third is refused though none of the first two is applied yet, and
    // asking again for one already held is no new subscription.
    ask(&mut one, "a,b,c", "ok,ok,subs")?;
    ask(&mut one, "a", "ok")?;
    ask(&mut two, "c,d", "ok,topics")?; // a, b and c exist: d would be a fourth
    ask(&mut two, "a", "ok")?; // a known topic is no new one
    ask(&mut three, "d", "topics")?;
    let stats = &server.broadcast_stats()[0];
    let refusals = stats
        .subscribe_refusals
        .load(std::sync::atomic::Ordering::Relaxed);
    ensure!(refusals == 4, "{refusals} refusals counted, expected 4");
    let counts: Vec<u64> = ["a", "b", "c", "d", "a-topic-name-too-long"]
        .iter()
        .map(|t| stats.topic_count(t))
        .collect();
    ensure!(
        counts == [2, 1, 1, 0, 0],
        "subscribers per topic: {counts:?}"
    );
    // Leaving frees the topic slots: after `one` closes, b is gone and d fits.
    one.send_close(1000, "")?;
    wait_for(
        Duration::from_secs(10),
        "one's subscriptions to be dropped",
        || stats.topic_count("b") == 0,
    )?;
    ask(&mut three, "d", "ok")?;
    server.shutdown();
    Ok(())
}

/// `--allowed-origins`: a browser upgrade from another site gets 403 (cross-site WebSocket
/// hijacking), a listed origin or subdomain pattern and a request without `Origin` upgrade,
/// and a bad list is a one-line usage error.
#[test]
fn upgrades_from_unlisted_origins_get_403() -> Result<()> {
    let server = common::Server::echo(&[
        "--allowed-origins",
        "https://app.example.com,https://*.example.org",
    ])?;
    let addr = server.addr();
    for (origin, status) in [
        (Some("https://app.example.com"), 101),
        (Some("https://eu.example.org"), 101),
        (None, 101),
        (Some("https://evil.example.net"), 403),
        (Some("https://app.example.com.evil.net"), 403),
        (Some("null"), 403),
    ] {
        let mut client = RawClient::connect(addr)?;
        let request = common::upgrade_request(addr, common::SAMPLE_KEY);
        let request = match origin {
            Some(origin) => {
                request.replacen("\r\n\r\n", &format!("\r\nOrigin: {origin}\r\n\r\n"), 1)
            }
            None => request,
        };
        client.send(request.as_bytes())?;
        let head = client.read_http_head()?;
        ensure!(head.status == status, "Origin {origin:?}: {}", head.raw);
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_uringcast"))
        .args(["--allowed-origins", "https://example.com/"])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(2) && stderr.contains("bad origin"),
        "a bad list: {:?} {stderr}",
        output.status.code()
    );
    Ok(())
}

/// An upgraded connection keeps nothing from its handshake: its handshake deadline's timer
/// entry is reused for its idle checks, so the worker's wheel holds one entry per connection
/// right after the upgrades, not two until the handshake deadlines pass.
#[test]
fn an_upgraded_connection_keeps_one_timer_entry() -> Result<()> {
    const CONNECTIONS: usize = 500;
    let config = Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .workers(1)
        .handshake_timeout(Duration::from_secs(30))
        .ping_interval(Some(Duration::from_secs(60)))
        .build()?;
    let server = spawn_with(config, Subscribe)?;
    let mut clients = (0..CONNECTIONS)
        .map(|_| RawClient::upgrade(server.local_addr()))
        .collect::<Result<Vec<_>>>()?;
    // Two round trips after the last upgrade: the loop turn that answered the first one has
    // ended, and with it the gauge's update, before the second answer is sent.
    for _ in 0..2 {
        let last = clients.last_mut().context("no clients")?;
        last.send(&common::client_frame(OpCode::Text, true, b"sync"))?;
        ensure!(last.read_message()?.1 == b"sync", "no echo");
    }
    let timers = server.stats()[0]
        .timers
        .load(std::sync::atomic::Ordering::Relaxed);
    ensure!(
        timers == CONNECTIONS as u64,
        "{timers} timer entries for {CONNECTIONS} upgraded connections"
    );
    drop(clients);
    server.shutdown();
    Ok(())
}

/// Every slow-consumer close goes down one path and one counter, whichever part of the
/// engine found the queue full: a subscriber that stops reading a broadcast, and a
/// connection that stops reading what its own handler sends it (echo).
/// `WorkerStats::slow_consumer_closes` (the one series `/metrics` exports) counts both; the
/// 1008 itself is checked end to end in `tests/broadcast/slow_consumer.rs`.
#[test]
fn slow_consumers_are_closed_and_counted_in_one_place() -> Result<()> {
    let config = Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .workers(1)
        .max_backlog_bytes(256 * 1024)
        .build()?;
    let server = spawn_with(config, Subscribe)?;
    let closes = || {
        server.stats()[0]
            .slow_consumer_closes
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let big = vec![b'x'; 60 * 1024];
    // A subscriber that never reads: publishes pile up behind its full socket.
    let _subscriber = RawClient::upgrade(server.local_addr())?;
    wait_for(Duration::from_secs(10), "the subscription", || {
        server.broadcast_stats()[0].topic_count("t") == 1
    })?;
    for _ in 0..2_000 {
        if closes() == 1 {
            break;
        }
        server.publish("t", OpCode::Binary, &big);
    }
    wait_for(Duration::from_secs(10), "the subscriber's close", || {
        closes() == 1
    })?;
    // A client that sends and never reads its echoes.
    let mut echoer = RawClient::upgrade(server.local_addr())?;
    echoer
        .stream
        .set_write_timeout(Some(Duration::from_millis(200)))?;
    let frame = common::client_frame(OpCode::Binary, true, &big);
    for _ in 0..2_000 {
        if closes() == 2 || echoer.send(&frame).is_err() {
            break;
        }
    }
    wait_for(Duration::from_secs(10), "the echoer's close", || {
        closes() == 2
    })?;
    server.shutdown();
    Ok(())
}
