//! permessage-deflate (RFC 7692) end to end: the server with deflate on, talked to by an
//! independent client with its own zlib (yawc), by tokio-tungstenite (which offers no
//! extension), and by raw sockets that check the bytes on the wire. The server runs in the
//! test process, so its counters are read directly.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;
use uringcast::config::{Mode, ServerBuilder};
use uringcast::driver::WorkerStats;
use uringcast::protocol::deflate::{Deflater, Inflater};
use uringcast::protocol::OpCode;
use uringcast::server::{spawn, Server, ServerHandle};

use common::{client_frame, pattern_bytes, HttpHead, RawClient};

const STEP: Duration = Duration::from_secs(20);

/// A realistic ticker message: JSON that repeats its keys, ~400 bytes.
fn tick(seq: u64) -> String {
    let levels: Vec<String> = (0..6)
        .map(|i| {
            format!(
                r#"{{"price":{}.{:02},"size":{}}}"#,
                101 + i,
                seq % 97,
                100 * (i + 1)
            )
        })
        .collect();
    format!(
        r#"{{"type":"tick","symbol":"ACME","seq":{seq},"bid":101.25,"ask":101.27,"ts":1764680000{seq:03},"book":[{}]}}"#,
        levels.join(",")
    )
}

async fn yawc_connect(
    url: &str,
) -> Result<yawc::WebSocket<yawc::MaybeTlsStream<tokio::net::TcpStream>>> {
    let options = yawc::Options::default()
        .with_balanced_compression()
        .with_limits(32 << 20, 64 << 20);
    let ws = yawc::WebSocket::connect(url.parse()?)
        .with_options(options)
        .await
        .with_context(|| format!("yawc connecting to {url}"))?;
    Ok(ws)
}

/// Echo over deflate with an independent zlib at both ends: every size back intact, the
/// client's compressed messages inflated by the server, and the server's answers compressed.
#[tokio::test]
async fn an_independent_client_round_trips_compressed_messages() -> Result<()> {
    let server = start(|b| b)?;
    let mut ws = yawc_connect(&url(&server, "/")).await?;
    let json = tick(7).repeat(100);
    let messages: Vec<(bool, Vec<u8>)> = vec![
        (true, Vec::new()),
        (true, b"short".to_vec()),
        (true, tick(1).into_bytes()),
        (false, pattern_bytes(125, 1)),
        (false, pattern_bytes(65_536, 2)),
        (true, json.clone().into_bytes()),
        // 16 MiB, the default limit, compressed both ways.
        (
            false,
            json.as_bytes()
                .iter()
                .cycle()
                .take(16 << 20)
                .copied()
                .collect(),
        ),
    ];
    for (text, payload) in messages {
        let frame = if text {
            yawc::frame::Frame::text(payload.clone())
        } else {
            yawc::frame::Frame::binary(payload.clone())
        };
        timeout(STEP, ws.send(frame)).await??;
        let echoed = timeout(STEP, ws.next())
            .await?
            .context("the server closed")?;
        ensure!(
            echoed.payload()[..] == payload[..],
            "a {}-byte message came back as {} bytes",
            payload.len(),
            echoed.payload().len()
        );
    }
    ensure!(
        total(&server, |w| &w.deflate_upgrades) == 1,
        "one upgrade with deflate"
    );
    let inflations = total(&server, |w| &w.deflate_inflations);
    ensure!(
        inflations >= 3,
        "the client's compressed messages were inflated ({inflations})"
    );
    let compressed = total(&server, |w| &w.deflate_frames_out);
    ensure!(
        compressed >= 3,
        "compressible answers went out compressed ({compressed})"
    );
    ensure!(
        server
            .metrics()
            .contains("uringcast_deflate_frames_out_total"),
        "in /metrics"
    );
    drop(ws);
    server.shutdown();
    Ok(())
}

/// The bytes on the wire: the 101 names the terms, a compressible echo comes back with RSV1
/// and shorter than it went, a short one comes back plain.
#[test]
fn the_wire_shows_the_terms_and_rsv1() -> Result<()> {
    let server = start(|b| b)?;
    let (mut client, head) = upgrade_with(
        server.local_addr(),
        &["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"],
    )?;
    ensure!(
        head.header("Sec-WebSocket-Extensions")
            == Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        "terms: {:?}",
        head.header("Sec-WebSocket-Extensions")
    );
    let text = tick(3);
    client.send(&client_frame(OpCode::Text, true, text.as_bytes()))?;
    let frame = client.read_frame()?;
    ensure!(
        frame.rsv == 0b100 && frame.opcode == 1,
        "compressed text, got {frame:?}"
    );
    ensure!(
        frame.payload.len() * 2 < text.len(),
        "{} -> {}",
        text.len(),
        frame.payload.len()
    );
    let plain = Inflater::new().inflate(&frame.payload, 1 << 20, &mut u64::MAX.clone())?;
    ensure!(plain == text.as_bytes(), "inflates to the message");
    client.send(&client_frame(OpCode::Text, true, b"hi"))?;
    let frame = client.read_frame()?;
    ensure!(
        frame.rsv == 0 && frame.payload == b"hi",
        "short: plain, got {frame:?}"
    );
    Ok(())
}

/// What a server must refuse, with the RFC's codes.
#[test]
fn rule_breakers_get_the_rfc_close_codes() -> Result<()> {
    let offer = "Sec-WebSocket-Extensions: permessage-deflate";
    let compressed = Deflater::new(0).compress(tick(1).as_bytes(), 15);
    // A decompression bomb: 64 MiB of zeros in ~64 KiB, against a 1 MiB limit: 1009.
    let server = start(|b| b.max_message_bytes(1 << 20))?;
    let addr = server.local_addr();
    let bomb = Deflater::new(0).compress(&vec![0; 64 << 20], 15);
    ensure!(
        bomb.len() < 1 << 20,
        "the bomb is under the limit on the wire"
    );
    let (mut client, _) = upgrade_with(addr, &[offer])?;
    client.send(&masked_rsv1(OpCode::Binary, true, &bomb))?;
    ensure!(
        client.expect_close()?.close_code() == Some(1009),
        "the bomb is closed with 1009"
    );
    // RSV1 on a continuation: 1002.
    let (mut client, _) = upgrade_with(addr, &[offer])?;
    client.send(&masked_rsv1(OpCode::Text, false, &compressed[..3]))?;
    let mut cont = masked_rsv1(OpCode::Continuation, true, &compressed[3..]);
    cont[0] = 0x80 | 0x40; // FIN, RSV1, continuation
    client.send(&cont)?;
    ensure!(
        client.expect_close()?.close_code() == Some(1002),
        "RSV1 on a continuation"
    );
    // RSV1 on a control frame: 1002.
    let (mut client, _) = upgrade_with(addr, &[offer])?;
    client.send(&masked_rsv1(OpCode::Ping, true, b""))?;
    ensure!(
        client.expect_close()?.close_code() == Some(1002),
        "RSV1 on a ping"
    );
    // The server is still serving.
    let (mut client, _) = upgrade_with(addr, &[offer])?;
    client.send(&masked_rsv1(OpCode::Text, true, &compressed))?;
    let (_, echoed) = client.read_message()?;
    ensure!(
        Inflater::new().inflate(&echoed, 1 << 20, &mut u64::MAX.clone())? == tick(1).as_bytes()
    );
    // Without --deflate the offer is declined and RSV1 is a reserved bit: 1002.
    let plain = start(|b| b.deflate(false))?;
    let (mut client, head) = upgrade_with(plain.local_addr(), &[offer])?;
    ensure!(
        head.header("Sec-WebSocket-Extensions").is_none(),
        "declined: {}",
        head.raw
    );
    client.send(&masked_rsv1(OpCode::Text, true, &compressed))?;
    ensure!(
        client.expect_close()?.close_code() == Some(1002),
        "RSV1 without the extension"
    );
    server.shutdown();
    plain.shutdown();
    Ok(())
}

/// server_max_window_bits=8: accepted, kept by sending plain (zlib cannot compress within
/// 256 bytes), while the client's compressed messages are still inflated.
#[test]
fn a_window_of_8_bits_is_kept_by_sending_plain() -> Result<()> {
    let server = start(|b| b)?;
    let (mut client, head) = upgrade_with(
        server.local_addr(),
        &["Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8"],
    )?;
    let terms = head.header("Sec-WebSocket-Extensions").unwrap_or_default();
    ensure!(
        terms.contains("server_max_window_bits=8"),
        "accepted: {terms:?}"
    );
    let text = tick(9);
    let compressed = Deflater::new(0).compress(text.as_bytes(), 15);
    client.send(&masked_rsv1(OpCode::Text, true, &compressed))?;
    let frame = client.read_frame()?;
    ensure!(
        frame.rsv == 0 && frame.payload == text.as_bytes(),
        "plain echo, got {frame:?}"
    );
    Ok(())
}

/// Broadcast across two workers to a mix of subscribers: deflate ones (yawc) and plain ones
/// (tokio-tungstenite) each get every publish, from the handle and from HTTP, as plain bytes.
#[tokio::test]
async fn broadcast_reaches_deflate_and_plain_subscribers_on_two_workers() -> Result<()> {
    let server = start(|b| b.mode(Mode::Broadcast).publish_token(Some("t0ken".into())))?;
    let addr = server.local_addr();
    let mut deflating = Vec::new();
    let mut plain = Vec::new();
    // SO_REUSEPORT spreads connections by a hash of the address pair, so a fixed handful can
    // all land on one worker (8 did, 1 time in 128). Connect pairs until both workers hold
    // subscribers: 32 pairs all on one worker is 2^-63.
    let mut per_worker = Vec::new();
    while deflating.len() < 32 {
        deflating.push(yawc_connect(&url(&server, "/ticks")).await?);
        let (ws, _) = tokio_tungstenite::connect_async(url(&server, "/ticks")).await?;
        plain.push(ws);
        let subscribers = 2 * deflating.len() as u64;
        wait_until(|| subscribers_of(&server, "ticks") == subscribers)?;
        per_worker = server
            .broadcast_stats()
            .iter()
            .map(|w| w.topic_count("ticks"))
            .collect();
        if deflating.len() >= 4 && per_worker.iter().all(|&n| n > 0) {
            break;
        }
    }
    ensure!(
        per_worker.len() == 2 && per_worker.iter().all(|&n| n > 0),
        "subscribers on both workers: {per_worker:?}"
    );
    let before = total(&server, |w| &w.deflate_compressions);
    for seq in 0..20 {
        if seq % 2 == 0 {
            ensure!(
                http_publish(addr, "ticks", "t0ken", tick(seq).as_bytes())? == 202,
                "HTTP publish"
            );
        } else {
            server.publish("ticks", OpCode::Text, tick(seq).as_bytes());
        }
    }
    for ws in &mut deflating {
        for seq in 0..20 {
            let frame = timeout(STEP, ws.next()).await?.context("closed")?;
            ensure!(
                frame.payload()[..] == *tick(seq).as_bytes(),
                "deflate subscriber, tick {seq}"
            );
        }
    }
    for ws in &mut plain {
        for seq in 0..20 {
            let message = timeout(STEP, ws.next()).await?.context("closed")??;
            ensure!(
                message.into_data()[..] == *tick(seq).as_bytes(),
                "plain subscriber, tick {seq}"
            );
        }
    }
    let compressions = total(&server, |w| &w.deflate_compressions) - before;
    ensure!(
        compressions <= 40,
        "20 publishes on 2 workers: at most one compression each per worker, got {compressions}"
    );
    let frames = total(&server, |w| &w.deflate_frames_out);
    ensure!(
        frames == 20 * deflating.len() as u64,
        "{} deflate subscribers x 20 compressed frames, got {frames}",
        deflating.len()
    );
    drop((deflating, plain));
    server.shutdown();
    Ok(())
}

/// A publish is compressed once however many subscribers take it: the counter grows by one
/// per publish with 1,000 subscribers and with 10,000, half of them plain.
#[test]
fn compressions_per_publish_do_not_grow_with_subscribers() -> Result<()> {
    raise_descriptor_limit(10_500)?;
    for subscribers in [1_000, 10_000] {
        let server = start(|b| b.mode(Mode::Broadcast).workers(1))?;
        let addr = server.local_addr();
        let mut clients = Vec::with_capacity(subscribers);
        while clients.len() < subscribers {
            let deflate = clients.len() % 2 == 0;
            clients.push((deflate, raw_subscriber(addr, deflate)?));
        }
        wait_until(|| subscribers_of(&server, "ticks") == subscribers as u64)?;
        let before = total(&server, |w| &w.deflate_compressions);
        let publishes = 5;
        for seq in 0..publishes {
            let text = tick(seq);
            server.publish("ticks", OpCode::Text, text.as_bytes());
            let mut inflater = Inflater::new();
            let mut compressed_frame: Option<Vec<u8>> = None;
            for (i, (deflate, stream)) in clients.iter_mut().enumerate() {
                let (rsv1, payload) = read_server_frame(stream)
                    .with_context(|| format!("subscriber {i} of {subscribers}, tick {seq}"))?;
                ensure!(
                    rsv1 == *deflate,
                    "subscriber {i}: RSV1 {rsv1}, negotiated {deflate}"
                );
                if rsv1 {
                    // Every deflate subscriber gets the same bytes: one compression, shared.
                    match &compressed_frame {
                        Some(first) => ensure!(*first == payload, "subscriber {i} got other bytes"),
                        None => {
                            let plain =
                                inflater.inflate(&payload, 1 << 20, &mut u64::MAX.clone())?;
                            ensure!(plain == text.as_bytes(), "inflates to the tick");
                            compressed_frame = Some(payload);
                        }
                    }
                } else {
                    ensure!(payload == text.as_bytes(), "subscriber {i}: the plain tick");
                }
            }
        }
        let after = total(&server, |w| &w.deflate_compressions);
        eprintln!(
            "{subscribers} subscribers: {} compressions for {publishes} publishes",
            after - before
        );
        ensure!(
            after - before == publishes,
            "{} compressions for {publishes} publishes to {subscribers} subscribers",
            after - before
        );
        drop(clients);
        server.shutdown();
    }
    Ok(())
}

/// Subscribers that agreed on different server windows get frames compressed for their
/// window: one compression per publish for each window size in use, not per subscriber.
#[test]
fn each_window_size_in_use_costs_one_compression() -> Result<()> {
    let server = start(|b| b.mode(Mode::Broadcast).workers(1))?;
    let addr = server.local_addr();
    let offers = [
        "permessage-deflate; server_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=10",
        "permessage-deflate",
        "permessage-deflate",
        "permessage-deflate; server_max_window_bits=8", // kept by sending plain
    ];
    let mut clients = Vec::new();
    for offer in offers {
        let mut client = RawClient::connect(addr)?;
        let mut request =
            common::upgrade_request(addr, common::SAMPLE_KEY).replace("/chat", "/ticks");
        request.truncate(request.len() - 2);
        request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n\r\n"));
        client.send(request.as_bytes())?;
        ensure!(
            client.read_http_head()?.status == 101,
            "upgrade with {offer}"
        );
        clients.push(client);
    }
    wait_until(|| subscribers_of(&server, "ticks") == offers.len() as u64)?;
    let before = total(&server, |w| &w.deflate_compressions);
    let text = tick(5).repeat(3);
    server.publish("ticks", OpCode::Text, text.as_bytes());
    let mut frames = Vec::new();
    for client in &mut clients {
        frames.push(client.read_frame()?);
    }
    ensure!(
        frames[0].payload == frames[1].payload,
        "one frame for the 10-bit window"
    );
    ensure!(
        frames[2].payload == frames[3].payload,
        "one frame for the 15-bit window"
    );
    ensure!(
        frames[4].rsv == 0 && frames[4].payload == text.as_bytes(),
        "8 bits: plain"
    );
    for frame in &frames[..4] {
        ensure!(frame.rsv == 0b100, "compressed: {frame:?}");
        let plain = Inflater::new().inflate(&frame.payload, 1 << 20, &mut u64::MAX.clone())?;
        ensure!(plain == text.as_bytes(), "inflates to the message");
    }
    let compressions = total(&server, |w| &w.deflate_compressions) - before;
    ensure!(
        compressions == 2,
        "two window sizes in use, {compressions} compressions"
    );
    drop(clients);
    server.shutdown();
    Ok(())
}

/// A masked client frame with RSV1 set.
fn masked_rsv1(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = client_frame(opcode, fin, payload);
    frame[0] |= 0x40;
    frame
}

/// A blocking subscriber of `/ticks`, offering permessage-deflate or not.
fn raw_subscriber(addr: SocketAddr, deflate: bool) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(STEP))?;
    let extension = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    write!(
        stream,
        "GET /ticks HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extension}\r\n"
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte)?;
        head.push(byte[0]);
        ensure!(head.len() < 4096, "response head too long");
    }
    let head = String::from_utf8_lossy(&head);
    ensure!(head.starts_with("HTTP/1.1 101"), "{head}");
    ensure!(head.contains("permessage-deflate") == deflate, "{head}");
    Ok(stream)
}

/// One unfragmented server frame: (RSV1, payload).
fn read_server_frame(stream: &mut TcpStream) -> Result<(bool, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head)?;
    ensure!(
        head[0] & 0x80 != 0 && head[1] & 0x80 == 0,
        "FIN and unmasked: {head:?}"
    );
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext)?;
            u16::from_be_bytes(ext) as usize
        }
        127 => bail!("an unexpectedly long frame"),
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok((head[0] & 0x40 != 0, payload))
}

/// A server on a free loopback port, echo by default, deflate on.
fn start(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Result<ServerHandle> {
    let builder = Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .workers(2)
        .deflate(true)
        .ping_interval(None);
    Ok(spawn(configure(builder).build()?)?)
}

fn url(server: &ServerHandle, path: &str) -> String {
    format!("ws://{}{path}", server.local_addr())
}

/// A counter summed over the workers.
fn total(
    server: &ServerHandle,
    counter: impl Fn(&WorkerStats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    server
        .stats()
        .iter()
        .map(|w| counter(w).load(Ordering::Relaxed))
        .sum()
}

/// Upgrades a raw client with extra request headers; returns it and the 101's head.
fn upgrade_with(addr: SocketAddr, headers: &[&str]) -> Result<(RawClient, HttpHead)> {
    let mut client = RawClient::connect(addr)?;
    let mut request = common::upgrade_request(addr, common::SAMPLE_KEY);
    request.truncate(request.len() - 2);
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    client.send(request.as_bytes())?;
    let head = client.read_http_head()?;
    ensure!(head.status == 101, "expected 101, got:\n{}", head.raw);
    Ok((client, head))
}

/// `POST /publish/<topic>` with a bearer token; the status.
fn http_publish(addr: SocketAddr, topic: &str, token: &str, body: &[u8]) -> Result<u16> {
    let mut client = RawClient::connect(addr)?;
    let head = format!(
        "POST /publish/{topic} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.send(head.as_bytes())?;
    client.send(body)?;
    Ok(client.read_http_head()?.status)
}

fn subscribers_of(server: &ServerHandle, topic: &str) -> u64 {
    server
        .broadcast_stats()
        .iter()
        .map(|w| w.topic_count(topic))
        .sum()
}

/// Waits for a condition the server reaches on its own (subscriptions registered by its
/// workers), with an upper bound; the counters have no other signal to wait on.
fn wait_until(mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + STEP;
    while !done() {
        ensure!(Instant::now() < deadline, "timed out after {STEP:?}");
        std::thread::yield_now();
    }
    Ok(())
}

fn raise_descriptor_limit(needed: u64) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one `rlimit` through a pointer to a live, writable one.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    ensure!(rc == 0, "getrlimit: {}", std::io::Error::last_os_error());
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit(2) reads one `rlimit` through a pointer to a live one.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    ensure!(rc == 0, "setrlimit: {}", std::io::Error::last_os_error());
    ensure!(
        limit.rlim_cur >= needed,
        "RLIMIT_NOFILE hard limit {} is below the {needed} sockets this test needs",
        limit.rlim_max
    );
    Ok(())
}
