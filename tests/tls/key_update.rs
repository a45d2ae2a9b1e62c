//! KeyUpdate from a client that does not play along (RFC 8446 §4.6.3; issue 21).

use super::*;

/// A client that asks for KeyUpdates without end and never reads: the server owes one reply
/// at a time, refuses the 33rd request in a row with an alert and closes, and goes on
/// serving others. Before the bound, each request sealed a reply into a buffer no budget
/// counted, and the connection stayed open for as long as the client kept sending.
pub(crate) fn a_key_update_flood_is_closed_and_others_are_served() -> Result<()> {
    let cert = TestCert::new("key-update-flood")?;
    let server = start(&cert, &["--mode", "echo", "--workers", "1"])?;
    let addr = server.addr();
    let config = cert.client()?;
    let (mut tcp, mut conn) = handshaken(addr, Arc::clone(&config))?;
    ensure!(conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3));
    // Up to 10,000 requests (270 KB), written without reading a byte.
    let mut written = 0;
    for _ in 0..10_000 {
        conn.refresh_traffic_keys()?;
        let bytes = tls_out(&mut conn)?;
        if tcp.write_all(&bytes).is_err() {
            // The server has closed: our writes hit a reset.
            break;
        }
        written += 1;
    }
    // The server closes (an alert, then EOF or a reset for the bytes it did not read).
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("the server kept the flood open ({written} requests written)")
                })
            }
        }
    }
    ensure!(started.elapsed() < STEP);
    let failures: u64 = metric(addr, &config, "uringcast_tls_failures_total")?
        .iter()
        .sum();
    ensure!(failures >= 1, "the flood was not counted as a TLS failure");
    // Others are served: a wss echo after the flood.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut ws = wss_connect(addr, "/", config).await?;
        ws.send(Message::text("still here")).await?;
        ensure!(next_data(&mut ws).await? == Message::text("still here"));
        Ok(())
    })
}
