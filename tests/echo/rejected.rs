//! What the server refuses: malformed handshakes (answered with their HTTP status), protocol
//! violations (closed with their RFC 6455 code), and handshakes never finished.

use super::*;

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
