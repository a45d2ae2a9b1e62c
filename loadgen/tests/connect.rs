//! The `connect` scenario against an in-process `uringcast` server on `127.0.0.1:0`: the
//! `uringcast-load` binary runs as a child, and its exit code, report and JSON are checked.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use uringcast::server::{self, Server, ServerHandle};

/// The longest one load generator run may take here; each run is ~1 s.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn start_server() -> ServerHandle {
    let config = Server::builder()
        .listen("127.0.0.1:0".parse().expect("a valid address"))
        .workers(1)
        .ping_interval(None)
        .build()
        .expect("a valid configuration");
    server::spawn(config).expect("the server starts")
}

/// Runs `uringcast-load ARGS`, waiting at most [`RUN_TIMEOUT`].
fn load(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_uringcast-load"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("uringcast-load starts");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(output) => output.expect("uringcast-load ran"),
        Err(_) => {
            // The run is bounded: stop the child rather than leave it running.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("uringcast-load {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
    }
}

fn json_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("uringcast-load-{name}-{}.json", std::process::id()))
}

fn read_json(path: &PathBuf) -> Value {
    let text = std::fs::read_to_string(path).expect("the JSON report was written");
    let _ = std::fs::remove_file(path);
    serde_json::from_str(&text).expect("the report is valid JSON")
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Checks a run that reached all `target` connections.
fn assert_reached(json: &Value, target: u64) {
    assert_eq!(json["scenario"], "connect");
    let connections = &json["connections"];
    assert_eq!(connections["target"], target);
    assert_eq!(connections["reached"], target, "{json:#}");
    assert_eq!(connections["established"], target);
    for kind in [
        "refused",
        "timeout",
        "bad_handshake",
        "reset",
        "no_port",
        "other",
    ] {
        assert_eq!(connections["failed"][kind], 0, "failed.{kind}");
    }
    assert_eq!(connections["closed_clean"], target, "every close was clean");
    assert_eq!(connections["closed_forced"], 0);
    assert_eq!(connections["closed_abandoned"], 0);
    // One handshake, one TCP connect and one clean closing handshake per connection.
    for name in ["latency_us", "connect_latency_us", "close_latency_us"] {
        let latency = &json[name];
        assert_eq!(latency["count"], target, "{name}.count");
        for key in ["p50", "p90", "p99", "p999", "p9999", "max"] {
            let value = latency[key].as_u64().expect("a latency in µs");
            assert!(value >= 1, "{name}.{key} = {value}");
        }
        assert!(latency["p50"].as_u64() <= latency["max"].as_u64());
    }
    // Each TCP connect completes before the 101 that follows it on the same connection, so
    // every quantile of the one is at most that of the other.
    for key in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        let tcp = &json["connect_latency_us"][key];
        let handshake = &json["latency_us"][key];
        assert!(
            tcp.as_u64() <= handshake.as_u64(),
            "{key}: {tcp} > {handshake}"
        );
    }
    let duration = json["duration_s"].as_f64().expect("a duration");
    let ramp = json["ramp_s"].as_f64().expect("a ramp time");
    let hold = json["hold_s"].as_f64().expect("a hold time");
    assert!(ramp > 0.0, "ramp_s = {ramp}");
    assert!(
        ramp + hold <= duration,
        "ramp {ramp} + hold {hold} > run {duration}"
    );
    assert_eq!(json["diagnostics"]["cq_overflow"], 0);
    assert_eq!(json["diagnostics"]["stale_completions"], 0);
    assert_eq!(json["diagnostics"]["rings_leaked"], 0);
}

#[test]
fn connect_holds_200_connections_and_reports_them() {
    let server = start_server();
    let url = format!("ws://{}/chat", server.local_addr());
    let path = json_path("reach");
    let pid = std::process::id().to_string();
    let output = load(&[
        "connect",
        &url,
        "--connections",
        "200",
        "--rate",
        "2000",
        "--duration",
        "0.2",
        "--threads",
        "2",
        "--server-pid",
        &pid,
        "--json",
        path.to_str().expect("a UTF-8 temp path"),
        "--quiet",
    ]);
    server.shutdown();
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("capacity: 2 threads x"), "{stdout}");
    assert!(stdout.contains("reached   200 of 200"), "{stdout}");

    let json = read_json(&path);
    assert_reached(&json, 200);
    assert_eq!(json["settings"]["threads"], 2);
    assert_eq!(json["settings"]["url"], url);
    // The hold runs its full --duration (no Ctrl-C here).
    let hold = json["hold_s"].as_f64().expect("a hold time");
    assert!(hold >= 0.2, "hold_s = {hold}");
    let server = &json["server"];
    assert_eq!(server["pid"], std::process::id());
    assert!(server["cpu_s"].as_f64().is_some());
    assert!(server["close_cpu_s"].as_f64().is_some(), "{server:#}");
    assert!(server["rss_bytes"].as_u64().expect("an RSS") > 0);
    assert!(server["rss_per_conn_bytes"].as_f64().is_some());
    assert!(server["slab_per_conn_bytes"].as_f64().is_some());
}

#[test]
fn connect_binds_source_addresses() {
    let server = start_server();
    let url = format!("ws://{}/", server.local_addr());
    let path = json_path("source");
    let output = load(&[
        "connect",
        &url,
        "--connections",
        "200",
        "--rate",
        "4000",
        "--duration",
        "0",
        "--source",
        "127.0.0.2-127.0.0.3",
        "--json",
        path.to_str().expect("a UTF-8 temp path"),
        "--quiet",
    ]);
    server.shutdown();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("lacks IORING_OP_BIND") {
        println!("SKIP connect_binds_source_addresses: IORING_OP_BIND missing (Linux 6.11+)");
        return;
    }
    assert!(output.status.success(), "{}", describe(&output));
    let json = read_json(&path);
    assert_reached(&json, 200);
    assert_eq!(
        json["settings"]["sources"],
        serde_json::json!(["127.0.0.2", "127.0.0.3"])
    );
    assert!(
        json["server"].is_null(),
        "no --server-pid, no server figures"
    );
}

/// A server that answers every upgrade and then never reads again: it neither answers a close
/// frame nor closes. It holds its connections until `release` is dropped.
fn deaf_server(connections: usize) -> (SocketAddr, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("an address");
    let (release, released) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while held.len() < connections {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                if std::io::Read::read(&mut stream, &mut byte).unwrap_or(0) == 0 {
                    break;
                }
                request.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&request);
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .or_else(|| {
                    text.lines()
                        .find_map(|l| l.strip_prefix("sec-websocket-key: "))
                })
                .unwrap_or_default()
                .trim()
                .to_owned();
            let accept = uringcast::protocol::handshake::accept_key(key.as_bytes());
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            let _ = std::io::Write::write_all(&mut stream, response.as_bytes());
            held.push(stream);
        }
        // Until the test is done: an error means the sender is gone, the same signal.
        let _ = released.recv();
    });
    (addr, release)
}

#[test]
fn a_server_that_ignores_close_frames_counts_as_forced_closes() {
    let (addr, release) = deaf_server(5);
    let url = format!("ws://{addr}/");
    let path = json_path("deaf");
    let output = load(&[
        "connect",
        &url,
        "--connections",
        "5",
        "--rate",
        "1000",
        "--duration",
        "0.2",
        "--close-timeout",
        "0.3",
        "--quiet",
        "--json",
        path.to_str().expect("a UTF-8 path"),
    ]);
    drop(release);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let json = read_json(&path);
    let connections = &json["connections"];
    assert_eq!(connections["reached"], 5, "{json:#}");
    assert_eq!(connections["closed_clean"], 0, "{json:#}");
    assert_eq!(connections["closed_forced"], 5, "{json:#}");
    assert_eq!(connections["closed_abandoned"], 0, "{json:#}");
    assert_eq!(connections["dropped"], 0, "{json:#}");
    assert_eq!(json["close_latency_us"]["count"], 0, "{json:#}");
}

/// `--echo-sample 10`: halfway through the hold, every tenth connection sends one message
/// and gets its echo: the held connections are alive, and the report says so.
#[test]
fn a_sample_of_held_connections_echoes() {
    let server = start_server();
    let url = format!("ws://{}/", server.local_addr());
    let path = json_path("sample");
    let output = load(&[
        "connect",
        &url,
        "--connections",
        "200",
        "--rate",
        "4000",
        "--duration",
        "0.4",
        "--threads",
        "2",
        "--echo-sample",
        "10",
        "--json",
        path.to_str().expect("a UTF-8 temp path"),
        "--quiet",
    ]);
    server.shutdown();
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("alive     20 of 20 sampled connections echoed"),
        "{stdout}"
    );
    let json = read_json(&path);
    assert_reached(&json, 200);
    assert_eq!(json["sent"], 20, "{json:#}");
    assert_eq!(json["received"], 20, "{json:#}");
    assert_eq!(json["missing"], 0, "{json:#}");
}

/// A server that holds connections but never answers: the sampled messages go missing and
/// the run fails, though every connection was held.
#[test]
fn a_sample_that_does_not_echo_fails_the_run() {
    let (addr, release) = deaf_server(5);
    let url = format!("ws://{addr}/");
    let path = json_path("deaf-sample");
    let output = load(&[
        "connect",
        &url,
        "--connections",
        "5",
        "--rate",
        "1000",
        "--duration",
        "0.2",
        "--close-timeout",
        "0.3",
        "--echo-sample",
        "1",
        "--quiet",
        "--json",
        path.to_str().expect("a UTF-8 path"),
    ]);
    drop(release);
    assert!(!output.status.success(), "{}", describe(&output));
    let json = read_json(&path);
    assert_eq!(json["connections"]["reached"], 5, "{json:#}");
    assert_eq!(json["sent"], 5, "{json:#}");
    assert_eq!(json["received"], 0, "{json:#}");
    assert_eq!(json["missing"], 5, "{json:#}");
}

#[test]
fn connect_counts_refused_connections() {
    // A port that was free a moment ago, with nothing listening on it now.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        listener.local_addr().expect("a local address").port()
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let path = json_path("refused");
    let output = load(&[
        "connect",
        &format!("ws://{addr}/"),
        "--connections",
        "20",
        "--rate",
        "1000",
        "--duration",
        "0",
        "--json",
        path.to_str().expect("a UTF-8 temp path"),
        "--quiet",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let json = read_json(&path);
    assert_eq!(json["connections"]["reached"], 0);
    assert_eq!(json["connections"]["failed"]["refused"], 20);
    for name in ["latency_us", "connect_latency_us", "close_latency_us"] {
        assert_eq!(json[name]["count"], 0, "{name}.count");
    }
}

#[test]
fn bad_targets_and_flags_exit_2() {
    for (args, message) in [
        (
            vec!["connect", "ws://1.2.3:9001/"],
            "is not an IP address or a DNS name",
        ),
        (
            vec!["connect", "ws://[example.com]/"],
            "is not an IP address or a DNS name",
        ),
        (
            vec!["connect", "wss://127.0.0.1/"],
            "wss:// needs --ca FILE",
        ),
        (
            vec!["connect", "ws://127.0.0.1/", "--insecure"],
            "are for wss:// URLs",
        ),
        (
            vec!["connect", "127.0.0.1:9001"],
            "is not a ws:// or wss:// URL",
        ),
        (
            // A documentation address (RFC 5737) no interface has: bind refuses it locally.
            vec!["connect", "ws://127.0.0.1:9001/", "--source", "192.0.2.77"],
            "is not an address of this machine",
        ),
        (
            vec!["connect", "ws://127.0.0.1:9001/", "--rate", "0"],
            "--rate 0 is out of range",
        ),
        (
            vec!["connect", "ws://127.0.0.1:9001/", "--connections", "0"],
            "--connections 0 is out of range",
        ),
        (
            vec![
                "connect",
                "ws://127.0.0.1:9001/",
                "--connections",
                "10000000",
                "--threads",
                "1",
            ],
            "cannot hold 10000000 connections",
        ),
        (
            vec!["connect", "ws://127.0.0.1:9001/", "--bogus"],
            "--bogus",
        ),
    ] {
        let output = load(&args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            describe(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
