//! The HTTP endpoints: `/publish/<topic>`, `/healthz`, `/metrics`.

use super::*;

// ---------------------------------------------------------------------------------------------
// 5. HTTP endpoints
// ---------------------------------------------------------------------------------------------

/// `POST /publish/<topic>` with and without the token, `/healthz`, `/metrics` (validated as
/// Prometheus text), 404, 405 and 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn http_endpoints_publish_health_and_metrics() -> Result<()> {
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

/// Reads one HTTP response (head and `Content-Length` body) from a kept connection.
async fn read_response(stream: &mut TcpStream) -> Result<HttpReply> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = timeout(STEP, stream.read(&mut byte))
            .await
            .context("no response head in time")??;
        ensure!(n == 1, "the server closed before a whole head: {raw:?}");
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
    let mut reply = HttpReply {
        status,
        head,
        body: Vec::new(),
    };
    let length: usize = reply
        .header("content-length")
        .ok_or_else(|| anyhow!("no Content-Length in {}", reply.head))?
        .parse()?;
    reply.body = vec![0; length];
    timeout(STEP, stream.read_exact(&mut reply.body))
        .await
        .context("no response body in time")??;
    Ok(reply)
}

/// A client that asks (`Connection: keep-alive`, as the Pusher SDKs' HTTP clients do) sends
/// request after request on one connection; one that says `close`, or gets a refusal, or
/// stays idle past the handshake timeout, sees the connection end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_client_that_asks_keeps_its_connection_for_the_next_request() -> Result<()> {
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "1",
        "--handshake-timeout",
        "1",
        "--publish-token",
        "t0ken",
    ])?;
    let addr = server.addr();
    let mut sub = ws_at(addr, "/kept").await?;
    let mut stream = timeout(STEP, TcpStream::connect(addr)).await??;
    let post = |body: &str, connection: &str| {
        format!(
            "POST /publish/kept HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer t0ken\r\n\
             Content-Type: text/plain\r\n\
             Content-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
            body.len()
        )
    };
    for n in 0..3 {
        stream
            .write_all(post(&format!("kept {n}"), "keep-alive").as_bytes())
            .await?;
        let reply = read_response(&mut stream).await?;
        ensure!(reply.status == 202, "publish {n}: {}", reply.head);
        ensure!(
            reply.header("connection") == Some("keep-alive"),
            "publish {n} kept: {}",
            reply.head
        );
        ensure!(next_text(&mut sub).await? == format!("kept {n}"));
    }
    // `close`: answered, then the end of the stream.
    stream.write_all(post("last", "close").as_bytes()).await?;
    let reply = read_response(&mut stream).await?;
    ensure!(reply.status == 202 && reply.header("connection") == Some("close"));
    ensure!(next_text(&mut sub).await? == "last");
    let mut rest = Vec::new();
    timeout(STEP, stream.read_to_end(&mut rest))
        .await
        .context("the connection stayed open after `Connection: close`")??;
    ensure!(rest.is_empty(), "bytes after the last answer: {rest:?}");

    // A refusal ends a kept connection too.
    let mut refused = timeout(STEP, TcpStream::connect(addr)).await??;
    refused
        .write_all(b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        .await?;
    let reply = read_response(&mut refused).await?;
    ensure!(reply.status == 404, "{}", reply.head);
    timeout(STEP, refused.read_to_end(&mut rest))
        .await
        .context("a refused request's connection stayed open")??;

    // Idle after an answer: closed within the handshake timeout (1 s), not held.
    let mut idle = timeout(STEP, TcpStream::connect(addr)).await??;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        .await?;
    let reply = read_response(&mut idle).await?;
    ensure!(reply.status == 200 && reply.header("connection") == Some("keep-alive"));
    let started = Instant::now();
    timeout(STEP, idle.read_to_end(&mut rest))
        .await
        .context("an idle kept connection was never closed")??;
    ensure!(
        started.elapsed() >= Duration::from_millis(500),
        "closed after {:?}, before its timeout",
        started.elapsed()
    );
    Ok(())
}
