//! `wss://` and `https://` against the real server, with a certificate made here (rcgen) and
//! independent clients: tokio-tungstenite over rustls, and rustls's own blocking stream.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::Server;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

const STEP: Duration = Duration::from_secs(20);

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files in a
/// directory of its own.
struct TestCert {
    dir: PathBuf,
    der: CertificateDer<'static>,
}

impl TestCert {
    fn new(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("uringcast-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let cert = Self {
            dir,
            der: CertificateDer::from(Vec::new()),
        };
        cert.rotate()
    }

    /// Writes a fresh key pair into the same files.
    fn rotate(mut self) -> Result<Self> {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let key = rcgen::generate_simple_self_signed(names)?;
        std::fs::write(self.cert(), key.cert.pem())?;
        std::fs::write(self.key(), key.signing_key.serialize_pem())?;
        self.der = key.cert.der().clone();
        Ok(self)
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    fn args(&self) -> [String; 4] {
        [
            "--tls-cert".into(),
            self.cert().display().to_string(),
            "--tls-key".into(),
            self.key().display().to_string(),
        ]
    }

    /// A client configuration that trusts this certificate only.
    fn client(&self) -> Result<Arc<ClientConfig>> {
        client_trusting(&self.der, None)
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_trusting(
    der: &CertificateDer<'static>,
    max_fragment: Option<usize>,
) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add(der.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.max_fragment_size = max_fragment;
    Ok(Arc::new(config))
}

fn start(cert: &TestCert, extra: &[&str]) -> Result<Server> {
    let tls = cert.args();
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    Server::start(&args)
}

async fn wss_connect(
    addr: SocketAddr,
    path: &str,
    config: Arc<ClientConfig>,
) -> Result<common::Ws> {
    let url = format!("wss://localhost:{}{path}", addr.port());
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (ws, response) = timeout(
        STEP,
        tokio_tungstenite::client_async_tls_with_config(
            url,
            tcp,
            Some(common::ws_config()),
            Some(Connector::Rustls(config)),
        ),
    )
    .await
    .context("wss connect timed out")??;
    ensure!(response.status() == 101, "status {}", response.status());
    Ok(ws)
}

async fn next_data(ws: &mut common::Ws) -> Result<Message> {
    loop {
        match timeout(STEP, ws.next()).await {
            Err(_) => bail!("no message within {STEP:?}"),
            Ok(None) => bail!("the stream ended"),
            Ok(Some(message)) => match message? {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return Ok(other),
            },
        }
    }
}

/// One HTTPS request on its own connection (the server closes after answering); returns the
/// status and the body.
fn https(addr: SocketAddr, config: Arc<ClientConfig>, request: &str) -> Result<(u16, Vec<u8>)> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(STEP))?;
    let name = ServerName::try_from("localhost")?;
    let mut stream = StreamOwned::new(ClientConnection::new(config, name)?, tcp);
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // Some peers close without close_notify; what arrived is still the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e).context("reading the HTTPS response"),
    }
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {text:?}"))?;
    let body = match response.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => response[at + 4..].to_vec(),
        None => Vec::new(),
    };
    Ok((status, body))
}

fn metric(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> Result<Vec<u64>> {
    let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let (status, body) = https(addr, Arc::clone(config), request)?;
    ensure!(status == 200, "/metrics answered {status}");
    let text = String::from_utf8(body)?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_echo_at_every_size() -> Result<()> {
    let cert = TestCert::new("echo")?;
    let server = start(&cert, &["--mode", "echo", "--workers", "2"])?;
    let mut ws = wss_connect(server.addr(), "/", cert.client()?).await?;
    for len in [0usize, 125, 65_536, 16 << 20] {
        let payload = common::pattern_bytes(len, len as u64);
        timeout(STEP, ws.send(Message::binary(payload.clone()))).await??;
        match next_data(&mut ws).await? {
            Message::Binary(echo) => ensure!(
                echo.as_ref() == payload.as_slice(),
                "{len} bytes: the echo differs at {:?}",
                common::first_difference(&echo, &payload)
            ),
            other => bail!("{len} bytes: got {other:?}"),
        }
    }
    let text = common::pattern_text(1000);
    timeout(STEP, ws.send(Message::text(text.clone()))).await??;
    match next_data(&mut ws).await? {
        Message::Text(echo) => ensure!(echo.as_str() == text),
        other => bail!("text: got {other:?}"),
    }
    timeout(STEP, ws.close(None)).await??;
    Ok(())
}

/// Records of 32 bytes of plaintext each (the smallest rustls sends): thousands of records
/// for one message, all opened and the message echoed whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_tiny_records_is_echoed_whole() -> Result<()> {
    let cert = TestCert::new("tiny")?;
    let server = start(&cert, &["--mode", "echo", "--workers", "1"])?;
    let config = client_trusting(&cert.der, Some(32))?;
    let mut ws = wss_connect(server.addr(), "/", config).await?;
    let payload = common::pattern_bytes(64 * 1024, 7);
    timeout(STEP, ws.send(Message::binary(payload.clone()))).await??;
    match next_data(&mut ws).await? {
        Message::Binary(echo) => ensure!(echo.as_ref() == payload.as_slice()),
        other => bail!("got {other:?}"),
    }
    Ok(())
}

/// Subscribers spread over both workers all receive a publish made over wss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_broadcast_reaches_both_workers() -> Result<()> {
    let cert = TestCert::new("broadcast")?;
    let server = start(&cert, &["--mode", "broadcast", "--workers", "2"])?;
    let config = cert.client()?;
    let mut subscribers = Vec::new();
    // SO_REUSEPORT spreads connections by hash: open until both workers hold some. The
    // /metrics request is a connection too, so a worker with a subscriber shows at least 2
    // on one of the two workers and 1 on the other; at least 2 on both proves both.
    let mut per_worker = Vec::new();
    for _ in 0..64 {
        subscribers.push(wss_connect(server.addr(), "/room", Arc::clone(&config)).await?);
        if subscribers.len() >= 4 {
            per_worker = metric(server.addr(), &config, "uringcast_connections")?;
            if per_worker.len() == 2 && per_worker.iter().all(|&n| n >= 2) {
                break;
            }
        }
    }
    ensure!(
        per_worker.len() == 2 && per_worker.iter().all(|&n| n >= 2),
        "connections per worker: {per_worker:?}"
    );
    let (first, rest) = subscribers.split_at_mut(1);
    timeout(STEP, first[0].send(Message::text("hello, room"))).await??;
    for (i, ws) in first.iter_mut().chain(rest.iter_mut()).enumerate() {
        match next_data(ws).await? {
            Message::Text(text) => ensure!(text.as_str() == "hello, room", "subscriber {i}"),
            other => bail!("subscriber {i}: got {other:?}"),
        }
    }
    Ok(())
}

/// A fan-out to more wss subscribers than the driver submits at once (its TLS sends go to the
/// kernel in batches of 32 during a flush): every subscriber gets every message, whole and in
/// order, whether a flush seals one frame or several for a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_fan_out_wider_than_a_submit_batch_arrives_whole_and_in_order() -> Result<()> {
    const SUBSCRIBERS: usize = 150;
    const MESSAGES: usize = 40;
    let cert = TestCert::new("fanout")?;
    let server = start(&cert, &["--mode", "broadcast", "--workers", "1"])?;
    let config = cert.client()?;
    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        subscribers.push(wss_connect(server.addr(), "/room", Arc::clone(&config)).await?);
    }
    let mut publisher = wss_connect(server.addr(), "/publish/room", Arc::clone(&config)).await?;
    // The publishes go out back to back, so some flushes find several frames per connection.
    for n in 0..MESSAGES {
        timeout(STEP, publisher.feed(Message::text(format!("message {n}")))).await??;
    }
    timeout(STEP, publisher.flush()).await??;
    let readers = subscribers.into_iter().enumerate().map(|(i, mut ws)| {
        tokio::spawn(async move {
            for n in 0..MESSAGES {
                match next_data(&mut ws).await? {
                    Message::Text(text) if text.as_str() == format!("message {n}") => {}
                    other => bail!("subscriber {i}, message {n}: got {other:?}"),
                }
            }
            Ok(())
        })
    });
    for reader in readers.collect::<Vec<_>>() {
        reader.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_publish_needs_the_token() -> Result<()> {
    let cert = TestCert::new("publish")?;
    let server = start(
        &cert,
        &[
            "--mode",
            "broadcast",
            "--workers",
            "2",
            "--publish-token",
            "s3cret",
        ],
    )?;
    let config = cert.client()?;
    let mut subscriber = wss_connect(server.addr(), "/news", Arc::clone(&config)).await?;
    let addr = server.addr();
    let post = |token: Option<&str>| {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let body = "breaking";
        let request = format!(
            "POST /publish/news HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let config = Arc::clone(&config);
        tokio::task::spawn_blocking(move || https(addr, config, &request))
    };
    ensure!(post(None).await??.0 == 401, "no token: not 401");
    ensure!(post(Some("wrong")).await??.0 == 401, "wrong token: not 401");
    let (status, body) = post(Some("s3cret")).await??;
    ensure!(
        status == 202,
        "with the token: {status} {:?}",
        String::from_utf8_lossy(&body)
    );
    match next_data(&mut subscriber).await? {
        Message::Text(text) => ensure!(text.as_str() == "breaking"),
        other => bail!("got {other:?}"),
    }
    Ok(())
}

/// Reads what the server sends until it closes (or 5 s pass).
fn read_until_closed(stream: &mut TcpStream) -> Result<(Vec<u8>, Duration)> {
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
#[test]
fn hostile_tls_input_gets_an_alert_or_a_close() -> Result<()> {
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

/// SIGHUP reads the files again: new handshakes get the new certificate, an open connection
/// keeps working, and a bad file on reload keeps the old pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_certificate_for_new_handshakes() -> Result<()> {
    let cert = TestCert::new("rotate")?;
    let tls = cert.args();
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.extend(["--mode", "echo", "--workers", "2"]);
    let server = Server::start_with_log(&args)?;
    let old = cert.client()?;
    let mut open = wss_connect(server.addr(), "/", Arc::clone(&old)).await?;
    let cert = cert.rotate()?;
    let new = cert.client()?;
    let sighup = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
    };
    let counted = |config: &Arc<ClientConfig>, name: &str| -> Result<u64> {
        Ok(metric(server.addr(), config, name)?.iter().sum())
    };
    sighup()?;
    // The server says when the reload took effect; until then handshakes get the old pair.
    server.wait_for_log("TLS certificate reloaded", STEP)?;
    ensure!(counted(&new, "uringcast_tls_reloads_total")? == 1);
    ensure!(
        wss_connect(server.addr(), "/", Arc::clone(&old))
            .await
            .is_err(),
        "a new handshake still got the old certificate"
    );
    let mut fresh = wss_connect(server.addr(), "/", Arc::clone(&new)).await?;
    for ws in [&mut open, &mut fresh] {
        timeout(STEP, ws.send(Message::text("still here"))).await??;
        match next_data(ws).await? {
            Message::Text(text) => ensure!(text.as_str() == "still here"),
            other => bail!("got {other:?}"),
        }
    }
    // A broken file: the reload is refused and counted, and the pair in use stays.
    std::fs::write(cert.key(), "not a key")?;
    sighup()?;
    server.wait_for_log("TLS reload failed", STEP)?;
    ensure!(counted(&new, "uringcast_tls_reload_failures_total")? == 1);
    wss_connect(server.addr(), "/", Arc::clone(&new)).await?;
    Ok(())
}

#[test]
fn an_unusable_certificate_is_a_one_line_startup_error() -> Result<()> {
    let cert = TestCert::new("bad")?;
    let missing = cert.dir.join("missing.pem");
    let not_pem = cert.dir.join("not.pem");
    std::fs::write(&not_pem, "hello")?;
    let other = TestCert::new("other")?;
    for (what, cert_file, key_file, expect) in [
        (
            "a missing file",
            missing.as_path(),
            cert.key(),
            "missing.pem",
        ),
        (
            "no certificate",
            not_pem.as_path(),
            cert.key(),
            "no certificate",
        ),
        (
            "a key of another pair",
            cert.cert().as_path(),
            other.key(),
            "certificate",
        ),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_uringcast"))
            .args(["--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(cert_file)
            .arg("--tls-key")
            .arg(&key_file)
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.code() == Some(2),
            "{what}: exit {:?}: {stderr}",
            output.status
        );
        ensure!(
            stderr.lines().count() == 1 && stderr.contains(expect),
            "{what}: {stderr:?}"
        );
    }
    Ok(())
}

/// TLS 1.2 renegotiation, asked for by OpenSSL's client (`R` on its stdin): refused with a
/// `no_renegotiation` alert (RFC 5746 lets a server decline; rustls does not renegotiate),
/// and the server goes on serving.
#[test]
fn renegotiation_is_refused_with_an_alert() -> Result<()> {
    let Ok(version) = std::process::Command::new("openssl")
        .arg("version")
        .output()
    else {
        println!("SKIP renegotiation_is_refused_with_an_alert: openssl missing");
        return Ok(());
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

/// Writes `cert_pem` and `key_pem` into `dir` and returns the server flags for them.
fn write_pair(dir: &std::path::Path, cert_pem: &str, key_pem: &str) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("chain.pem"), cert_pem)?;
    std::fs::write(dir.join("key.pem"), key_pem)?;
    Ok(vec![
        "--tls-cert".into(),
        dir.join("chain.pem").display().to_string(),
        "--tls-key".into(),
        dir.join("key.pem").display().to_string(),
    ])
}

async fn echo_once(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<()> {
    let mut ws = wss_connect(addr, "/", config).await?;
    timeout(STEP, ws.send(Message::text("key types"))).await??;
    match next_data(&mut ws).await? {
        Message::Text(text) => ensure!(text.as_str() == "key types"),
        other => bail!("got {other:?}"),
    }
    Ok(())
}

/// An Ed25519 leaf signed by a CA, the chain in one file (leaf first), trusted by the CA
/// alone (so the server must send the chain); and an RSA 2048 key from OpenSSL, in the
/// PKCS#8 form OpenSSL writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_with_a_chain_and_rsa_keys_serve_wss() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("uringcast-tls-{}-keys", std::process::id()));
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])?
        .signed_by(&leaf_key, &issuer)?;
    let chain = format!("{}{}", leaf.pem(), ca_cert.pem());
    let args = write_pair(&dir.join("ed25519"), &chain, &leaf_key.serialize_pem())?;
    let mut flags: Vec<&str> = args.iter().map(String::as_str).collect();
    flags.extend(["--mode", "echo", "--workers", "1"]);
    let server = Server::start(&flags)?;
    echo_once(server.addr(), client_trusting(ca_cert.der(), None)?).await?;
    drop(server);

    let rsa = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args([
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(dir.join("rsa.key"))
        .arg("-out")
        .arg(dir.join("rsa.pem"))
        .output();
    match rsa {
        Ok(output) if output.status.success() => {
            let cert_pem = std::fs::read_to_string(dir.join("rsa.pem"))?;
            let key_pem = std::fs::read_to_string(dir.join("rsa.key"))?;
            let args = write_pair(&dir.join("rsa"), &cert_pem, &key_pem)?;
            let mut flags: Vec<&str> = args.iter().map(String::as_str).collect();
            flags.extend(["--mode", "echo", "--workers", "1"]);
            let server = Server::start(&flags)?;
            let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
            echo_once(server.addr(), client_trusting(&der, None)?).await?;
        }
        _ => {
            println!("SKIP ed25519_with_a_chain_and_rsa_keys_serve_wss (RSA part): openssl missing")
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Backpressure holds over TLS: a wss subscriber that never reads has its queue bounded by
/// --max-backlog-bytes (ciphertext in flight included) and is closed as a slow consumer, while
/// HTTPS publishes go on being accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_subscriber_that_never_reads_is_a_slow_consumer() -> Result<()> {
    let cert = TestCert::new("slow")?;
    let server = start(
        &cert,
        &[
            "--mode",
            "broadcast",
            "--workers",
            "1",
            "--publish-token",
            "t0ken",
            "--max-backlog-bytes",
            "65536",
            "--max-message-bytes",
            "1048576",
        ],
    )?;
    let config = cert.client()?;
    let _idle = wss_connect(server.addr(), "/feed", Arc::clone(&config)).await?;
    let addr = server.addr();
    let body = "x".repeat(60_000);
    for round in 0..400 {
        let request = format!(
            "POST /publish/feed HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer t0ken\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let client = Arc::clone(&config);
        let (status, _) =
            tokio::task::spawn_blocking(move || https(addr, client, &request)).await??;
        ensure!(status == 202, "publish {round}: {status}");
        let closes = "uringcast_slow_consumer_closes_total";
        if round % 10 == 9 && metric(addr, &config, closes)?.iter().sum::<u64>() == 1 {
            return Ok(());
        }
    }
    bail!("400 publishes of 60 KB and the subscriber that never reads was not closed")
}
