//! Hostile TLS input: plaintext and garbage on the TLS port, a client that stops mid-handshake,
//! renegotiation.

use super::*;

/// Reads what the server sends until it closes (or 5 s pass).
pub(super) fn read_until_closed(stream: &mut TcpStream) -> Result<(Vec<u8>, Duration)> {
    let started = Instant::now();
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok((got, started.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok((got, started.elapsed()))
            }
            Err(e) => return Err(e).context("the server did not close within 5 s"),
        }
    }
}

/// Plaintext HTTP on the TLS port, garbage, a truncated ClientHello and a client that stops
/// mid-handshake: each gets an alert or a close, and the server keeps serving.
pub(crate) fn hostile_tls_input_gets_an_alert_or_a_close() -> Result<()> {
    let cert = TestCert::new("hostile")?;
    let server = start(
        &cert,
        &[
            "--mode",
            "echo",
            "--workers",
            "1",
            "--handshake-timeout",
            "1",
        ],
    )?;
    let addr = server.addr();
    let upgrade = common::upgrade_request(addr, common::SAMPLE_KEY);
    let garbage = common::pattern_bytes(3000, 1);
    // A ClientHello record that declares 512 bytes and stops after 40.
    let mut truncated = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    truncated.extend_from_slice(&[0xab; 29]);
    for (what, bytes, alert) in [
        ("plaintext HTTP", upgrade.as_bytes(), true),
        ("garbage", &garbage[..], true),
        ("a truncated ClientHello", &truncated[..], false),
        ("nothing at all", &[][..], false),
    ] {
        let mut stream = TcpStream::connect(addr)?;
        stream.write_all(bytes)?;
        let (got, after) = read_until_closed(&mut stream).with_context(|| what.to_string())?;
        ensure!(!got.starts_with(b"HTTP/"), "{what}: answered in plaintext");
        if alert {
            ensure!(
                got.first() == Some(&0x15),
                "{what}: no alert record: {got:?}"
            );
        } else {
            // Waiting for the rest, until the handshake timeout closes it.
            ensure!(got.is_empty(), "{what}: sent {got:?}");
            ensure!(
                after >= Duration::from_millis(800),
                "{what}: closed after {after:?}"
            );
        }
    }
    let failures = metric(addr, &cert.client()?, "uringcast_tls_failures_total")?;
    ensure!(
        failures.iter().sum::<u64>() >= 2,
        "tls failures counted: {failures:?}"
    );
    // Still serving.
    let (status, _) = https(
        addr,
        cert.client()?,
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )?;
    ensure!(status == 200, "/healthz answered {status}");
    Ok(())
}

/// TLS 1.2 renegotiation, asked for by OpenSSL's client (`R` on its stdin): refused with a
/// `no_renegotiation` alert (RFC 5746 lets a server decline; rustls does not renegotiate),
/// and the server goes on serving.
pub(crate) fn renegotiation_is_refused_with_an_alert() -> Result<()> {
    let Ok(version) = std::process::Command::new("openssl")
        .arg("version")
        .output()
    else {
        return Err(skip("openssl missing"));
    };
    ensure!(version.status.success(), "openssl version failed");
    let cert = TestCert::new("reneg")?;
    let server = start(&cert, &["--mode", "echo", "--workers", "1"])?;
    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-tls1_2",
            "-servername",
            "localhost",
            "-connect",
        ])
        .arg(server.addr().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    // `R` at the start of a line asks for renegotiation once the handshake is done; then
    // stdin stays open until the client has given up (it exits on the alert).
    stdin.write_all(b"R\n")?;
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    // The client exits on the server's alert; its stdin stays open until then.
    let output = exited
        .recv_timeout(STEP)
        .context("openssl s_client did not exit within the step")??;
    drop(stdin);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        text.contains("RENEGOTIATING"),
        "no renegotiation asked for: {text}"
    );
    ensure!(
        text.contains("no renegotiation"),
        "no no_renegotiation alert: {text}"
    );
    let (status, _) = https(
        server.addr(),
        cert.client()?,
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )?;
    ensure!(
        status == 200,
        "/healthz answered {status} after the renegotiation attempt"
    );
    Ok(())
}
