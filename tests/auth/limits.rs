//! Caps per address, per connection and per server.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::*;

const OTHER: &str = "127.0.0.2";

/// An upgrade to `target` from the local address `from`: the client and the answer's head.
fn upgrade_from(
    addr: SocketAddr,
    from: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<(RawClient, HttpHead)> {
    let mut client = RawClient::connect_from(addr, from.parse::<IpAddr>()?)?;
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    client.send(request.as_bytes())?;
    let head = client.read_http_head()?;
    Ok((client, head))
}

/// One address at its cap gets 429 with `Retry-After` while another address is served; a
/// place comes back when a connection closes.
#[test]
fn one_address_over_its_cap_while_another_is_served() -> Result<()> {
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "2",
        "--max-connections-per-ip",
        "2",
    ])?;
    let addr = server.addr();
    let mut first = open(addr, "/room")?;
    let _second = open(addr, "/room")?;
    let (_, head) = upgrade_at(addr, "/room", &[])?;
    ensure!(
        head.status == 429,
        "a third from one address:\n{}",
        head.raw
    );
    ensure!(head.header("retry-after").is_some(), "{}", head.raw);
    let (_, head) = upgrade_from(addr, OTHER, "/room", &[])?;
    ensure!(head.status == 101, "another address:\n{}", head.raw);
    ensure!(refusals(addr, "connections_per_ip")? == 1);

    // Closing one frees its place. No event tells the client when the server has let go of
    // it, so ask again until it is served, within a bound.
    first.send_close(1000, "")?;
    first.expect_close()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, head) = upgrade_at(addr, "/room", &[])?;
        if head.status == 101 {
            break;
        }
        ensure!(
            head.status == 429 && Instant::now() < deadline,
            "{}",
            head.raw
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Past the handshake rate: 429 with `Retry-After`, for that address only.
#[test]
fn handshakes_per_address_are_rate_limited() -> Result<()> {
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "2",
        "--max-handshakes-per-ip",
        "3",
    ])?;
    let addr = server.addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(open(addr, "/room")?);
    }
    let (_, head) = upgrade_at(addr, "/room", &[])?;
    ensure!(head.status == 429, "{}", head.raw);
    ensure!(head.header("retry-after") == Some("1"), "{}", head.raw);
    ensure!(upgrade_from(addr, OTHER, "/room", &[])?.1.status == 101);
    ensure!(refusals(addr, "handshakes_per_ip")? == 1);
    Ok(())
}

/// `X-Forwarded-For` names the client only when the peer is a trusted proxy.
#[test]
fn forwarded_addresses_count_only_from_trusted_proxies() -> Result<()> {
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "1",
        "--max-connections-per-ip",
        "1",
        "--trusted-proxies",
        "127.0.0.1",
    ])?;
    let addr = server.addr();
    let xff = |client: &'static str| [("X-Forwarded-For", client)];
    // Through the trusted proxy (127.0.0.1), two clients are two addresses.
    let (_a, head) = upgrade_at(addr, "/room", &xff("203.0.113.1"))?;
    ensure!(head.status == 101, "{}", head.raw);
    let (_b, head) = upgrade_at(addr, "/room", &xff("203.0.113.2"))?;
    ensure!(head.status == 101, "{}", head.raw);
    ensure!(upgrade_at(addr, "/room", &xff("203.0.113.1"))?.1.status == 429);
    // From 127.0.0.2, not trusted, the header is ignored: both count as 127.0.0.2.
    let (_c, head) = upgrade_from(addr, OTHER, "/room", &xff("203.0.113.3"))?;
    ensure!(head.status == 101, "{}", head.raw);
    let (_, head) = upgrade_from(addr, OTHER, "/room", &xff("203.0.113.4"))?;
    ensure!(
        head.status == 429,
        "a spoofed header from an untrusted peer:\n{}",
        head.raw
    );
    Ok(())
}

/// A flooding connection is closed with 1008 while its neighbours in the same room are
/// served.
#[test]
fn a_flooding_connection_is_closed_while_its_neighbours_are_served() -> Result<()> {
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "1",
        "--max-messages-per-second",
        "20",
        "--max-bytes-per-second",
        "4096",
    ])?;
    let addr = server.addr();
    let mut listener = open(addr, "/room")?;
    let mut neighbour = open(addr, "/room")?;
    let mut flooder = open(addr, "/room")?;
    let mut flood = Vec::new();
    for i in 0..200 {
        flood.extend_from_slice(&client_frame(
            OpCode::Text,
            true,
            format!("flood {i}").as_bytes(),
        ));
    }
    flooder.send(&flood)?;
    ensure!(close_of(&mut flooder)? == (Some(1008), "message_rate".into()));
    // What got through before the cap is at most the burst (20): the listener sees those,
    // then the neighbour's message.
    neighbour.send(&client_frame(OpCode::Text, true, b"still here"))?;
    let mut floods = 0;
    loop {
        let (_, payload) = listener.read_message()?;
        if payload == b"still here" {
            break;
        }
        ensure!(payload.starts_with(b"flood "), "{payload:?}");
        floods += 1;
    }
    ensure!(
        floods <= 20,
        "{floods} flood messages passed a cap of 20 per second"
    );
    ensure!(refusals(addr, "message_rate")? == 1);

    // Bytes: one second's worth passes, the next big message closes.
    let mut hog = open(addr, "/room")?;
    let chunk = vec![b'x'; 3000];
    hog.send(&client_frame(OpCode::Binary, true, &chunk))?;
    hog.send(&client_frame(OpCode::Binary, true, &chunk))?;
    ensure!(close_of(&mut hog)? == (Some(1008), "byte_rate".into()));
    Ok(())
}

/// Past `--max-connections`, upgrades get 503 with `Retry-After`, while the listener keeps
/// answering other requests.
#[test]
fn a_full_server_answers_503_and_keeps_listening() -> Result<()> {
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "2",
        "--max-connections",
        "2",
    ])?;
    let addr = server.addr();
    let _a = open(addr, "/room")?;
    let _b = open(addr, "/room")?;
    let (_, head) = upgrade_from(addr, OTHER, "/room", &[])?;
    ensure!(head.status == 503, "{}", head.raw);
    ensure!(head.header("retry-after") == Some("5"), "{}", head.raw);
    let mut health = RawClient::connect(addr)?;
    health.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")?;
    ensure!(
        health.read_http_head()?.status == 200,
        "the listener still answers"
    );
    ensure!(refusals(addr, "server_full")? == 1);
    Ok(())
}

/// A cap of 0 (or past its range) is one line and exit 2.
#[test]
fn bad_caps_exit_2() -> Result<()> {
    for flag in [
        "--max-connections",
        "--max-connections-per-ip",
        "--max-handshakes-per-ip",
        "--max-messages-per-second",
        "--max-bytes-per-second",
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_uringcast"))
            .args(["--listen", "127.0.0.1:0", flag, "0"])
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(output.status.code() == Some(2), "{flag}: {stderr}");
        ensure!(
            stderr.trim().lines().count() == 1 && stderr.contains(flag),
            "{flag}: {stderr}"
        );
    }
    Ok(())
}
