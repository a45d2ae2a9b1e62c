//! A connection's life around the data path: clients that vanish mid-frame, shutdown on a
//! signal, and the keepalive pings.

use super::*;

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
