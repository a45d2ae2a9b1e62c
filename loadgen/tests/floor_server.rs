//! The `floor_server` example, the sender the load generator's ceiling and the broadcast CPU
//! floors are measured against: in both its modes (`write()` and `--io-uring`) a reader must get
//! whole frames only and keep its connection until the server's deadline, as `write_all`
//! guarantees. A smoke test of both modes (a crash, a cut frame or an early close fails it); it
//! does not force the short sends `--io-uring` answers with `MSG_WAITALL`, which need a send
//! buffer smaller than a frame when the socket wakes the sender.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Payload bytes per frame: large, so that each frame spans several receives.
const SIZE: usize = 60_000;
/// Header (2 bytes + 16-bit length) and payload.
const FRAME: usize = 4 + SIZE;
/// How long the server sends.
const SERVER_SECS: f64 = 2.0;

/// `target/<profile>/examples/floor_server`, which `cargo test` builds with the examples.
fn floor_server() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    profile_dir.join("examples").join("floor_server")
}

/// Starts the server on a free port; returns it and its port.
fn start(io_uring: bool) -> (Child, u16) {
    let mut command = Command::new(floor_server());
    command.args([
        "--listen",
        "127.0.0.1:0",
        "--connections",
        "1",
        "--rate",
        "200",
        "--size",
        &SIZE.to_string(),
        "--start-delay",
        "0",
        "--max-seconds",
        &SERVER_SECS.to_string(),
    ]);
    if io_uring {
        command.arg("--io-uring");
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("floor_server starts (built by cargo test with the examples)");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("piped"))
        .read_line(&mut line)
        .expect("its first line");
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (child, port)
}

/// Connects, upgrades, then reads until the server closes (it stops after [`SERVER_SECS`]);
/// returns the bytes received after the 101 and when the stream ended.
fn read_all(port: u16) -> (usize, Duration) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .expect("request");
    let start = Instant::now();
    // The response head, a byte at a time so that no frame byte is taken with it.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).expect("the response"), 1);
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a timeout");
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (total, start.elapsed()),
            Ok(n) => total += n,
            Err(e) => panic!("read after {total} bytes: {e}"),
        }
    }
}

fn reader_gets_whole_frames_and_keeps_its_connection(io_uring: bool) {
    let (mut server, port) = start(io_uring);
    let (bytes, ended) = read_all(port);
    let status = server.wait().expect("the server exits by itself");
    assert!(status.success(), "io_uring={io_uring}: {status:?}");
    assert!(
        bytes >= 10 * FRAME,
        "io_uring={io_uring}: only {bytes} bytes"
    );
    assert_eq!(
        bytes % FRAME,
        0,
        "io_uring={io_uring}: the stream ended inside a frame"
    );
    // The connection lasted until the server's deadline: it was not dropped early.
    assert!(
        ended >= Duration::from_secs_f64(SERVER_SECS * 0.75),
        "io_uring={io_uring}: the stream ended after {ended:?}"
    );
}

#[test]
fn write_mode_sends_whole_frames_until_its_deadline() {
    reader_gets_whole_frames_and_keeps_its_connection(false);
}

#[test]
fn io_uring_mode_sends_whole_frames_until_its_deadline() {
    reader_gets_whole_frames_and_keeps_its_connection(true);
}
