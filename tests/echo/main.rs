//! Integration tests of the `uringcast` binary in `--mode echo`.
//!
//! Each test starts its own server on `127.0.0.1:0` (`--workers 2` unless stated) and talks
//! to it with tokio-tungstenite (an independent implementation) or with the raw TCP client of
//! `common`, which builds frames by hand for the malformed cases.

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use uringcast::protocol::frame::OpCode;

/// Upper bound on a single await in the tungstenite tests.
const STEP: Duration = Duration::from_secs(20);

/// Receives the next message, failing on timeout or end of stream.
async fn next_msg(ws: &mut Ws) -> Result<Message> {
    match timeout(STEP, ws.next()).await {
        Err(_) => bail!("no message from the server within {STEP:?}"),
        Ok(None) => bail!("the server ended the stream"),
        Ok(Some(msg)) => Ok(msg.context("reading a message")?),
    }
}

/// Receives the next data message, skipping pings and pongs.
async fn next_data(ws: &mut Ws) -> Result<Message> {
    loop {
        match next_msg(ws).await? {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return Ok(other),
        }
    }
}

/// After a close frame was received: keeps reading (which flushes tungstenite's close reply)
/// until the stream ends.
async fn drain_to_end(ws: &mut Ws) -> Result<()> {
    loop {
        match timeout(STEP, ws.next()).await {
            Err(_) => bail!("the stream did not end within {STEP:?} after the close"),
            Ok(None) => return Ok(()),
            Ok(Some(Err(_))) => return Ok(()), // ConnectionClosed / reset after close: ended
            Ok(Some(Ok(Message::Close(_)))) => continue,
            Ok(Some(Ok(other))) => bail!("unexpected message after close: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. echo at boundary sizes
// ---------------------------------------------------------------------------------------------

async fn echo_sizes(sizes: &[usize], text: bool) -> Result<()> {
    let server = Server::echo(&[])?;
    let mut ws = ws_connect(server.addr()).await?;
    for (i, &size) in sizes.iter().enumerate() {
        let sent = if text {
            Message::text(pattern_text(size))
        } else {
            Message::binary(pattern_bytes(size, 0x9e37_79b9 + i as u64))
        };
        timeout(STEP, ws.send(sent.clone()))
            .await
            .with_context(|| format!("sending {size} bytes timed out"))?
            .with_context(|| format!("sending {size} bytes"))?;
        let got = next_data(&mut ws)
            .await
            .with_context(|| format!("waiting for the echo of {size} bytes"))?;
        match (&sent, &got) {
            (Message::Text(a), Message::Text(b)) => {
                ensure!(
                    a.as_bytes() == b.as_bytes(),
                    "text echo of {size} bytes differs: got {} bytes, first difference at {:?}",
                    b.len(),
                    first_difference(a.as_bytes(), b.as_bytes())
                );
            }
            (Message::Binary(a), Message::Binary(b)) => {
                ensure!(
                    a == b,
                    "binary echo of {size} bytes differs: got {} bytes, first difference at {:?}",
                    b.len(),
                    first_difference(a, b)
                );
            }
            _ => bail!(
                "sent a {} message of {size} bytes, got back {}",
                if text { "text" } else { "binary" },
                short(&got)
            ),
        }
    }
    timeout(STEP, ws.close(None)).await??;
    Ok(())
}

fn short(msg: &Message) -> String {
    match msg {
        Message::Text(t) => format!("Text({} bytes)", t.len()),
        Message::Binary(b) => format!("Binary({} bytes)", b.len()),
        other => format!("{other:?}"),
    }
}

const SMALL: [usize; 5] = [0, 125, 126, 65535, 65536];
const LARGE: [usize; 2] = [1 << 20, 16 << 20];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_text_small_sizes() -> Result<()> {
    echo_sizes(&SMALL, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_binary_small_sizes() -> Result<()> {
    echo_sizes(&SMALL, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_text_1mib_and_16mib() -> Result<()> {
    echo_sizes(&LARGE, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_binary_1mib_and_16mib() -> Result<()> {
    echo_sizes(&LARGE, false).await
}

// ---------------------------------------------------------------------------------------------
// 2. fragmented messages
// ---------------------------------------------------------------------------------------------

#[test]
fn fragmented_text_is_echoed_whole() -> Result<()> {
    let server = Server::echo(&[])?;
    let mut c = RawClient::upgrade(server.addr())?;
    // "Hello, wörld €!" split so that 'ö' and '€' straddle fragment boundaries, with an empty
    // fragment in the middle.
    let whole = "Hello, wörld €!".as_bytes();
    let o = whole.iter().position(|&b| b == 0xC3).unwrap(); // first byte of 'ö'
    let e = whole.iter().position(|&b| b == 0xE2).unwrap(); // first byte of '€'
    let parts: [&[u8]; 5] = [
        &whole[..o + 1],
        &whole[o + 1..e + 1],
        &[],
        &whole[e + 1..e + 2],
        &whole[e + 2..],
    ];
    let mut bytes = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Text
        } else {
            OpCode::Continuation
        };
        bytes.extend(client_frame(opcode, i == parts.len() - 1, part));
    }
    // Frames written one by one, so they also arrive in separate reads.
    for frame in bytes.chunks(3) {
        c.send(frame)?;
    }
    let (opcode, payload) = c.read_message()?;
    ensure!(
        opcode == 0x1,
        "expected a text echo, got opcode {opcode:#x}"
    );
    ensure!(
        payload == whole,
        "echo {:?} != sent {:?}",
        String::from_utf8_lossy(&payload),
        String::from_utf8_lossy(whole)
    );
    Ok(())
}

#[test]
fn fragmented_binary_with_interleaved_ping_is_echoed_whole() -> Result<()> {
    let server = Server::echo(&[])?;
    let mut c = RawClient::upgrade(server.addr())?;
    let whole = pattern_bytes(200_000, 7);
    let (a, rest) = whole.split_at(70_000);
    let (b, d) = rest.split_at(100);
    c.send(&client_frame(OpCode::Binary, false, a))?;
    c.send(&client_frame(OpCode::Ping, true, b"between fragments"))?;
    c.send(&client_frame(OpCode::Continuation, false, b))?;
    c.send(&client_frame(OpCode::Continuation, true, d))?;
    // The pong must come (a control frame may be interleaved, §5.4), then the whole message.
    let pong = c.read_frame()?;
    ensure!(
        pong.opcode == 0xA && pong.payload == b"between fragments",
        "expected the pong first, got {}",
        describe(&pong)
    );
    let (opcode, payload) = c.read_message()?;
    ensure!(
        opcode == 0x2,
        "expected a binary echo, got opcode {opcode:#x}"
    );
    ensure!(
        payload == whole,
        "echo of {} bytes differs: got {} bytes, first difference at {:?}",
        whole.len(),
        payload.len(),
        first_difference(&payload, &whole)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_small_fragments_are_echoed_whole() -> Result<()> {
    // The same over tungstenite's raw frame API, to cross-check the hand-built frames.
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode as TOp};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as TFrame;
    let server = Server::echo(&[])?;
    let mut ws = ws_connect(server.addr()).await?;
    let whole = pattern_text(10_000);
    let chunks: Vec<&[u8]> = whole.as_bytes().chunks(333).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let op = if i == 0 { Data::Text } else { Data::Continue };
        let frame = TFrame::message(chunk.to_vec(), TOp::Data(op), i == chunks.len() - 1);
        timeout(STEP, ws.send(Message::Frame(frame))).await??;
    }
    match next_data(&mut ws).await? {
        Message::Text(t) => ensure!(
            t.as_str() == whole,
            "echo differs at {:?}",
            first_difference(t.as_bytes(), whole.as_bytes())
        ),
        other => bail!("expected text, got {}", short(&other)),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. ping / pong
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_gets_pong_with_same_payload() -> Result<()> {
    let server = Server::echo(&[])?;
    let mut ws = ws_connect(server.addr()).await?;
    for payload in [&b""[..], b"hello", &[0xAB; 125][..]] {
        timeout(STEP, ws.send(Message::Ping(payload.to_vec().into()))).await??;
        loop {
            match next_msg(&mut ws).await? {
                Message::Pong(p) => {
                    ensure!(p == payload, "pong {p:?} != ping {payload:?}");
                    break;
                }
                Message::Ping(_) => continue, // the server's own keepalive, if any
                other => bail!("expected a pong, got {}", short(&other)),
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. close handshake
// ---------------------------------------------------------------------------------------------

fn close_round_trip(code: u16, reason: &str) -> Result<()> {
    let server = Server::echo(&[])?;
    let mut c = RawClient::upgrade(server.addr())?;
    // An echo first, so the connection is known to be fully open.
    c.send(&client_frame(OpCode::Text, true, b"before close"))?;
    let (_, echo) = c.read_message()?;
    ensure!(echo == b"before close");
    c.send_close(code, reason)?;
    let close = c.read_frame()?;
    ensure!(
        close.opcode == 0x8,
        "expected a close frame, got {}",
        describe(&close)
    );
    ensure!(
        close.close_code() == Some(code),
        "the server's close should echo code {code}, got {}",
        describe(&close)
    );
    let ended = c.expect_eof().context("after the close handshake")?;
    ensure!(
        ended == Ended::Eof,
        "expected a clean FIN after the close handshake, got {ended:?}"
    );
    Ok(())
}

#[test]
fn close_1000_is_echoed_then_tcp_closed() -> Result<()> {
    close_round_trip(1000, "")
}

#[test]
fn close_4000_with_reason_is_echoed_then_tcp_closed() -> Result<()> {
    close_round_trip(4000, "going away for a while")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tungstenite_close_handshake_completes() -> Result<()> {
    let server = Server::echo(&[])?;
    let mut ws = ws_connect(server.addr()).await?;
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    timeout(STEP, ws.send(Message::Close(Some(frame)))).await??;
    match next_msg(&mut ws).await? {
        Message::Close(Some(f)) => ensure!(f.code == CloseCode::Normal, "got close {f:?}"),
        other => bail!("expected a close frame with 1000, got {other:?}"),
    }
    drain_to_end(&mut ws).await
}

// ---------------------------------------------------------------------------------------------
// 5. malformed handshakes
// ---------------------------------------------------------------------------------------------

/// Sends `request`, reads one response head, checks its status, then that the server closes.
fn bad_handshake(addr: SocketAddr, request: &[u8], status: u16) -> Result<HttpHead> {
    let mut c = RawClient::connect(addr)?;
    c.send(request)?;
    let head = c.read_http_head().with_context(|| {
        format!(
            "reading the response to {:?}",
            String::from_utf8_lossy(&request[..request.len().min(200)])
        )
    })?;
    ensure!(
        head.status == status,
        "expected {status}, got {:?} for request {:?}",
        head.status_line,
        String::from_utf8_lossy(&request[..request.len().min(200)])
    );
    // Drain any body (Content-Length), then the connection must end.
    let (_rest, _ended) = c
        .read_to_end()
        .with_context(|| format!("the server should close the connection after its {status}"))?;
    Ok(head)
}

fn request_with(addr: SocketAddr, edit: impl FnOnce(String) -> String) -> Vec<u8> {
    edit(upgrade_request(addr, SAMPLE_KEY)).into_bytes()
}

#[test]
fn handshake_missing_host_is_400() -> Result<()> {
    let server = Server::echo(&[])?;
    let addr = server.addr();
    let req = request_with(addr, |r| r.replace(&format!("Host: {addr}\r\n"), ""));
    bad_handshake(addr, &req, 400)?;
    Ok(())
}

#[test]
fn handshake_missing_key_is_400() -> Result<()> {
    let server = Server::echo(&[])?;
    let addr = server.addr();
    let req = request_with(addr, |r| {
        r.replace(&format!("Sec-WebSocket-Key: {SAMPLE_KEY}\r\n"), "")
    });
    bad_handshake(addr, &req, 400)?;
    Ok(())
}

#[test]
fn handshake_bad_key_is_400() -> Result<()> {
    let server = Server::echo(&[])?;
    let addr = server.addr();
    // Valid base64 but 8 bytes, not 16 (§4.2.1 item 5), and then not base64 at all.
    for key in ["c2hvcnRrZXk=", "not base64 at all!!!!!!!"] {
        let req = request_with(addr, |r| r.replace(SAMPLE_KEY, key));
        bad_handshake(addr, &req, 400).with_context(|| format!("key {key:?}"))?;
    }
    Ok(())
}

#[test]
fn handshake_post_is_400() -> Result<()> {
    let server = Server::echo(&[])?;
    let addr = server.addr();
    let req = request_with(addr, |r| r.replacen("GET", "POST", 1));
    bad_handshake(addr, &req, 400)?;
    Ok(())
}

#[test]
fn handshake_without_upgrade_is_400() -> Result<()> {
    let server = Server::echo(&[])?;
    let addr = server.addr();
    let req = request_with(addr, |r| r.replace("Upgrade: websocket\r\n", ""));
    bad_handshake(addr, &req, 400)?;
    Ok(())
}

#[test]
fn handshake_garbage_is_400() -> Result<()> {
    let server = Server::echo(&[])?;
    bad_handshake(server.addr(), b"\x16\x03\x01 this is not http\r\n\r\n", 400)?;
    Ok(())
}

#[test]
fn handshake_version_8_is_426_with_version_header() -> Result<()> {
    let server = Server::echo(&[])?;
    let addr = server.addr();
    let req = request_with(addr, |r| {
        r.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8")
    });
    let head = bad_handshake(addr, &req, 426)?;
    ensure!(
        head.header("Sec-WebSocket-Version").map(str::trim) == Some("13"),
        "a 426 must carry `Sec-WebSocket-Version: 13` (§4.4); got:\n{}",
        head.raw
    );
    Ok(())
}

#[test]
fn handshake_head_over_8kib_is_431() -> Result<()> {
    let server = Server::echo(&[])?;
    let addr = server.addr();
    let filler = "x".repeat(9 * 1024);
    let req = request_with(addr, |r| {
        r.replace("\r\n\r\n", &format!("\r\nX-Filler: {filler}\r\n\r\n"))
    });
    ensure!(req.len() > 9 * 1024);
    bad_handshake(addr, &req, 431)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. protocol violations → close codes
// ---------------------------------------------------------------------------------------------

/// Sends `bytes` on a fresh upgraded connection and expects a close frame with `code`.
fn expect_close_after(addr: SocketAddr, bytes: &[u8], code: u16, what: &str) -> Result<()> {
    let mut c = RawClient::upgrade(addr)?;
    c.send(bytes)?;
    let close = c.expect_close().with_context(|| what.to_string())?;
    ensure!(
        close.close_code() == Some(code),
        "{what}: expected close {code}, got {}",
        describe(&close)
    );
    Ok(())
}

#[test]
fn invalid_utf8_single_frame_is_1007() -> Result<()> {
    let server = Server::echo(&[])?;
    // "ab" then an invalid 2-byte sequence (0xC3 followed by a non-continuation byte).
    let frame = client_frame(OpCode::Text, true, b"ab\xC3\x28cd");
    expect_close_after(server.addr(), &frame, 1007, "invalid UTF-8 in one frame")
}

#[test]
fn invalid_utf8_in_unfinished_fragmented_message_is_1007() -> Result<()> {
    let server = Server::echo(&[])?;
    let addr = server.addr();
    // Second fragment is plainly invalid; the message never finishes (no FIN).
    let mut bytes = client_frame(OpCode::Text, false, "abc é".as_bytes());
    bytes.extend(client_frame(OpCode::Continuation, false, b"\xFF\xFE"));
    expect_close_after(addr, &bytes, 1007, "0xFF in the second fragment")?;
    // A 3-byte character started in fragment 1 and broken in fragment 2: '€' is E2 82 AC.
    let mut bytes = client_frame(OpCode::Text, false, b"price: \xE2\x82");
    bytes.extend(client_frame(OpCode::Continuation, false, b"\x28 more"));
    expect_close_after(addr, &bytes, 1007, "a character broken across fragments")?;
    Ok(())
}

#[test]
fn message_over_limit_is_1009() -> Result<()> {
    let server = Server::echo(&["--max-message-bytes", "1000"])?;
    let addr = server.addr();
    // Exactly the limit is fine.
    let mut c = RawClient::upgrade(addr)?;
    let at_limit = pattern_bytes(1000, 3);
    c.send(&client_frame(OpCode::Binary, true, &at_limit))?;
    let (op, echo) = c
        .read_message()
        .context("a 1000-byte message (= the limit)")?;
    ensure!(op == 0x2 && echo == at_limit, "the 1000-byte echo differs");
    // One byte over in a single frame.
    let frame = client_frame(OpCode::Binary, true, &pattern_bytes(1001, 4));
    expect_close_after(addr, &frame, 1009, "a 1001-byte frame")?;
    Ok(())
}

#[test]
fn fragmented_message_over_limit_is_1009() -> Result<()> {
    let server = Server::echo(&["--max-message-bytes", "1000"])?;
    let mut bytes = client_frame(OpCode::Text, false, pattern_text(600).as_bytes());
    bytes.extend(client_frame(
        OpCode::Continuation,
        true,
        pattern_text(401).as_bytes(),
    ));
    expect_close_after(
        server.addr(),
        &bytes,
        1009,
        "600 + 401 bytes in two fragments",
    )
}

#[test]
fn unmasked_frame_is_1002() -> Result<()> {
    let server = Server::echo(&[])?;
    let frame = unmasked_frame(OpCode::Text, true, b"no mask");
    expect_close_after(server.addr(), &frame, 1002, "an unmasked client frame")
}

#[test]
fn reserved_bits_and_opcodes_are_1002() -> Result<()> {
    let server = Server::echo(&[])?;
    let addr = server.addr();
    // FIN + RSV1 + text (no extension was negotiated).
    expect_close_after(
        addr,
        &raw_masked_frame(0x80 | 0x40 | 0x1, b"rsv1"),
        1002,
        "RSV1 set",
    )?;
    // FIN + RSV3 + binary.
    expect_close_after(
        addr,
        &raw_masked_frame(0x80 | 0x10 | 0x2, b"rsv3"),
        1002,
        "RSV3 set",
    )?;
    // Reserved data opcode 0x3 and control opcode 0xB.
    expect_close_after(
        addr,
        &raw_masked_frame(0x80 | 0x3, b"op3"),
        1002,
        "opcode 0x3",
    )?;
    expect_close_after(
        addr,
        &raw_masked_frame(0x80 | 0xB, b"opB"),
        1002,
        "opcode 0xB",
    )?;
    // A continuation with no message in progress.
    expect_close_after(
        addr,
        &raw_masked_frame(0x80, b"orphan"),
        1002,
        "orphan continuation",
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. clients that vanish mid-frame
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_clients_do_not_disturb_the_server() -> Result<()> {
    let mut server = Server::echo(&[])?;
    let addr = server.addr();
    for i in 0..20 {
        let mut c = RawClient::upgrade(addr)?;
        // A header announcing 1000 bytes, then 10 of them.
        let frame = client_frame(OpCode::Binary, true, &pattern_bytes(1000, i));
        match i % 4 {
            0 => c.send(&frame[..1])?,   // half a header
            1 => c.send(&frame[..14])?,  // header + a few payload bytes
            2 => c.send(&frame[..500])?, // half the payload
            _ => {}
        }
        if i % 2 == 0 {
            drop(c); // FIN
        } else {
            c.abort()?; // RST
        }
    }
    // And some that vanish in the middle of the handshake.
    for i in 0..10 {
        let mut c = RawClient::connect(addr)?;
        let req = upgrade_request(addr, SAMPLE_KEY);
        c.send(&req.as_bytes()[..req.len() / 2])?;
        if i % 2 == 0 {
            drop(c);
        } else {
            c.abort()?;
        }
    }
    // The server still serves new clients.
    for round in 0..3 {
        let mut ws = ws_connect(addr)
            .await
            .with_context(|| format!("new client {round}"))?;
        let msg = format!("still here {round}");
        timeout(STEP, ws.send(Message::text(msg.clone()))).await??;
        match next_data(&mut ws).await? {
            Message::Text(t) => ensure!(t.as_str() == msg),
            other => bail!("expected the echo, got {}", short(&other)),
        }
        timeout(STEP, ws.close(None)).await??;
    }
    server.assert_running()
}

// ---------------------------------------------------------------------------------------------
// 8. handshake timeout
// ---------------------------------------------------------------------------------------------

#[test]
fn unfinished_handshake_is_dropped_after_timeout() -> Result<()> {
    let server = Server::echo(&["--handshake-timeout", "0.5"])?;
    let addr = server.addr();
    // An upgraded connection, idle throughout: the handshake timer must not touch it.
    let mut upgraded = RawClient::upgrade(addr)?;

    let started = Instant::now();
    let mut partial = RawClient::connect(addr)?;
    partial.timeout = Duration::from_secs(5);
    partial.send(b"GET / HTTP/1.1\r\n")?;
    let mut silent = RawClient::connect(addr)?;
    silent.timeout = Duration::from_secs(5);

    for (name, c) in [
        ("partial request line", &mut partial),
        ("silent", &mut silent),
    ] {
        // The server may answer 408 before closing; any bytes are accepted, the end is required.
        c.read_to_end()
            .with_context(|| format!("{name} connection: not dropped within 5 s"))?;
        let elapsed = started.elapsed();
        ensure!(
            elapsed >= Duration::from_millis(400),
            "{name} connection dropped after {elapsed:?}, before the 0.5 s handshake timeout"
        );
    }

    upgraded.send(&client_frame(OpCode::Text, true, b"still open"))?;
    let (_, echo) = upgraded
        .read_message()
        .context("an upgraded connection must outlive the handshake timeout")?;
    ensure!(echo == b"still open");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 9. many concurrent connections
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections_echo() -> Result<()> {
    const N: usize = 1000;
    let server = Server::echo(&[])?;
    let addr = server.addr();
    let overall = Duration::from_secs(40);
    timeout(overall, async {
        // Open all of them at once.
        let mut opening = JoinSet::new();
        for i in 0..N {
            opening.spawn(async move {
                ws_connect(addr)
                    .await
                    .with_context(|| format!("client {i}"))
            });
        }
        let mut conns = Vec::with_capacity(N);
        while let Some(res) = opening.join_next().await {
            conns.push(res??);
        }
        // All N are open now; each echoes one message.
        let mut echoing = JoinSet::new();
        for (i, mut ws) in conns.into_iter().enumerate() {
            echoing.spawn(async move {
                let msg = format!("client {i} says hi");
                ws.send(Message::text(msg.clone())).await?;
                match next_data(&mut ws).await? {
                    Message::Text(t) if t.as_str() == msg => {}
                    other => bail!("client {i}: wrong echo {}", short(&other)),
                }
                Ok(ws)
            });
        }
        let mut conns = Vec::with_capacity(N);
        while let Some(res) = echoing.join_next().await {
            conns.push(res??);
        }
        ensure!(conns.len() == N);
        // Then all close.
        let mut closing = JoinSet::new();
        for mut ws in conns {
            closing.spawn(async move {
                ws.close(None).await?;
                drain_to_end(&mut ws).await
            });
        }
        while let Some(res) = closing.join_next().await {
            res??;
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("{N} connections did not finish within {overall:?}"))?
}

// ---------------------------------------------------------------------------------------------
// 10. graceful shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_connection_with_1001_and_exits_0() -> Result<()> {
    const N: usize = 50;
    let mut server = Server::echo(&["--drain-timeout", "5"])?;
    let addr = server.addr();
    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        let mut ws = ws_connect(addr).await?;
        // One echo each: the connection is certainly upgraded and registered.
        ws.send(Message::text(format!("{i}"))).await?;
        next_data(&mut ws).await?;
        conns.push(ws);
    }
    server.sigterm()?;
    let mut waiting = JoinSet::new();
    for (i, mut ws) in conns.into_iter().enumerate() {
        waiting.spawn(async move {
            match next_data(&mut ws)
                .await
                .with_context(|| format!("client {i}"))?
            {
                Message::Close(Some(f)) if f.code == CloseCode::Away => {}
                other => bail!("client {i}: expected close 1001, got {other:?}"),
            }
            drain_to_end(&mut ws).await
        });
    }
    while let Some(res) = waiting.join_next().await {
        res??;
    }
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(10)))?;
    ensure!(
        status.code() == Some(0),
        "expected exit code 0 after SIGTERM, got {status}"
    );
    Ok(())
}

#[test]
fn sigint_with_no_connections_exits_0() -> Result<()> {
    let mut server = Server::echo(&[])?;
    server.sigint()?;
    let status = server.wait_exit(Duration::from_secs(10))?;
    ensure!(
        status.code() == Some(0),
        "expected exit code 0 after SIGINT, got {status}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 12. server pings
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_is_pinged_and_kept_when_it_answers() -> Result<()> {
    let server = Server::echo(&["--ping-interval", "1"])?;
    let mut ws = ws_connect(server.addr()).await?;
    // tungstenite answers each ping with a pong on its next read; keep reading.
    for n in 1..=2 {
        match timeout(Duration::from_secs(3), ws.next()).await {
            Err(_) => bail!("no ping #{n} within 3 s with --ping-interval 1"),
            Ok(None) => bail!("stream ended while waiting for ping #{n}"),
            Ok(Some(Ok(Message::Ping(_)))) => {}
            Ok(Some(other)) => bail!("expected ping #{n}, got {other:?}"),
        }
    }
    // Still alive: an echo works.
    timeout(STEP, ws.send(Message::text("alive"))).await??;
    match next_data(&mut ws).await? {
        Message::Text(t) => ensure!(t.as_str() == "alive"),
        other => bail!("expected the echo, got {}", short(&other)),
    }
    Ok(())
}

/// With the first ping due after the handshake deadline, the handshake deadline's timer is
/// what schedules it: the ping still comes one interval after the upgrade, not at the
/// handshake deadline and not never.
#[test]
fn first_ping_comes_one_interval_after_the_upgrade_when_that_is_past_the_handshake_deadline(
) -> Result<()> {
    let server = Server::echo(&["--handshake-timeout", "1", "--ping-interval", "3"])?;
    let mut c = RawClient::upgrade(server.addr())?;
    let upgraded = Instant::now();
    c.timeout = Duration::from_secs(8);
    let frame = c
        .read_frame()
        .context("waiting (8 s at most) for the first ping")?;
    let elapsed = upgraded.elapsed();
    ensure!(
        frame.opcode == 0x9,
        "expected a ping, got {}",
        describe(&frame)
    );
    ensure!(
        elapsed >= Duration::from_millis(2_500),
        "pinged {elapsed:?} after the upgrade, before the 3 s interval"
    );
    Ok(())
}

#[test]
fn client_that_never_pongs_gets_1001() -> Result<()> {
    let server = Server::echo(&["--ping-interval", "1"])?;
    let mut c = RawClient::upgrade(server.addr())?;
    let started = Instant::now();
    c.timeout = Duration::from_secs(5);
    let mut pings = 0;
    let close = loop {
        let frame = c
            .read_frame()
            .context("waiting (5 s at most) for pings then a close 1001")?;
        match frame.opcode {
            0x9 => pings += 1, // never answered
            0x8 => break frame,
            _ => bail!("unexpected {}", describe(&frame)),
        }
        let left = Duration::from_secs(5).saturating_sub(started.elapsed());
        ensure!(!left.is_zero(), "no close within 5 s ({pings} pings seen)");
        c.timeout = left;
    };
    let elapsed = started.elapsed();
    ensure!(
        pings >= 1,
        "closed without a ping first: {}",
        describe(&close)
    );
    ensure!(
        close.close_code() == Some(1001),
        "expected close 1001 for a client that never pongs, got {}",
        describe(&close)
    );
    ensure!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}: less than one ping interval"
    );
    Ok(())
}
