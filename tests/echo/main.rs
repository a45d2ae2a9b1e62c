//! Integration tests of the `uringcast` binary in `--mode echo`.
//!
//! Each test starts its own server on `127.0.0.1:0` (`--workers 2` unless stated) and talks
//! to it with tokio-tungstenite (an independent implementation) or with the raw TCP client of
//! `common`, which builds frames by hand for the malformed cases.

#[path = "../common/mod.rs"]
mod common;
mod lifecycle;
mod rejected;

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
