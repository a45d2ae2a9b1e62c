//! `wss://` and `https://` against the real server, with a certificate made here (rcgen) and
//! independent clients: tokio-tungstenite over rustls, and rustls's own blocking stream.
//! A test whose component (openssl) is missing shows as ignored, with the reason: this is a
//! `libtest-mimic` harness (`harness = false` in Cargo.toml), and a test that returns a
//! [`Skip`] error is ignored.

mod alerts;
mod certificates;
#[path = "../common/mod.rs"]
mod common;
mod hostile;
mod key_update;

#[path = "../common/skip.rs"]
mod skip;
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
use skip::{skip, trial};
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

/// Backpressure holds over TLS: a wss subscriber that never reads has its queue bounded by
/// --max-backlog-bytes (ciphertext in flight included) and is closed as a slow consumer, while
/// HTTPS publishes go on being accepted.
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

/// A client configuration for one TLS version that trusts `cert` only.
fn client_for_version(
    cert: &TestCert,
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.der.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A TLS connection whose handshake is done, as rustls's client and the socket apart, so a
/// test can write records the client would not.
fn handshaken(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<(TcpStream, ClientConnection)> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(STEP))?;
    let mut conn = ClientConnection::new(config, ServerName::try_from("localhost")?)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    Ok((tcp, conn))
}

/// Everything the client has to send, as bytes.
fn tls_out(conn: &mut ClientConnection) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut bytes)?;
    }
    Ok(bytes)
}

/// Feeds what the server sent to the client; returns the plaintext, and how reading ended:
/// `Ok` for a close_notify, else the client's error.
fn tls_in(conn: &mut ClientConnection, mut bytes: &[u8]) -> (Vec<u8>, Result<(), rustls::Error>) {
    let mut plain = Vec::new();
    while !bytes.is_empty() {
        if conn.read_tls(&mut bytes).is_err() {
            break;
        }
        if let Err(error) = conn.process_new_packets() {
            return (plain, Err(error));
        }
        let _ = conn.reader().read_to_end(&mut plain);
    }
    let clean = conn.reader().read_to_end(&mut plain).is_ok();
    let ended = if clean {
        Ok(())
    } else {
        Err(rustls::Error::General("no close_notify".into()))
    };
    (plain, ended)
}

/// Runs an async test on its own two-worker runtime, as `#[tokio::test(flavor =
/// "multi_thread", worker_threads = 2)]` did.
fn block_on(test: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot build the runtime")?
        .block_on(test)
}

/// The trial of a plain test and of an async one, each named as libtest named it.
macro_rules! sync_trial {
    ($test:ident) => {
        trial(stringify!($test), $test)
    };
    ($module:ident::$test:ident) => {
        trial(
            concat!(stringify!($module), "::", stringify!($test)),
            $module::$test,
        )
    };
}
macro_rules! async_trial {
    ($test:ident) => {
        trial(stringify!($test), || block_on($test()))
    };
    ($module:ident::$test:ident) => {
        trial(
            concat!(stringify!($module), "::", stringify!($test)),
            || block_on($module::$test()),
        )
    };
}

fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let trials = vec![
        async_trial!(wss_echo_at_every_size),
        async_trial!(a_flood_of_tiny_records_is_echoed_whole),
        async_trial!(wss_broadcast_reaches_both_workers),
        async_trial!(a_wss_fan_out_wider_than_a_submit_batch_arrives_whole_and_in_order),
        async_trial!(https_publish_needs_the_token),
        async_trial!(a_wss_subscriber_that_never_reads_is_a_slow_consumer),
        sync_trial!(alerts::a_bad_record_after_the_handshake_gets_its_alert),
        sync_trial!(alerts::close_notify_is_answered_after_what_was_queued),
        async_trial!(certificates::sighup_rotates_the_certificate_for_new_handshakes),
        sync_trial!(certificates::an_unusable_certificate_is_a_one_line_startup_error),
        async_trial!(certificates::ed25519_with_a_chain_and_rsa_keys_serve_wss),
        sync_trial!(hostile::hostile_tls_input_gets_an_alert_or_a_close),
        sync_trial!(hostile::renegotiation_is_refused_with_an_alert),
        sync_trial!(key_update::a_key_update_flood_is_closed_and_others_are_served),
    ];
    libtest_mimic::run(&args, trials).exit_code()
}
