//! `--deflate` (permessage-deflate, RFC 7692) runs of `uringcast-load` against uringcast
//! in-process, with the extension accepted (`deflate(true)`, the server's `--deflate`) and
//! without it: every message checked as a plain run checks it, the connections that agreed
//! counted, and the bytes on the wire set against the payload bytes.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;
use uringcast::config::Mode;
use uringcast::server::{self, Server, ServerHandle};

static SERIAL: Mutex<()> = Mutex::new(());

/// The publish endpoint's token (it is off without one).
const TOKEN: &str = "sekrit";

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn uringcast(mode: Mode, deflate: bool, workers: usize) -> ServerHandle {
    let config = Server::builder()
        .listen("127.0.0.1:0".parse().expect("an address"))
        .workers(workers)
        .mode(mode)
        .ping_interval(None)
        .deflate(deflate)
        .publish_token(Some(TOKEN.to_owned()))
        // The WebSocket publishers are members of their room: a publish token alone would
        // make them read-only.
        .client_publish(uringcast::auth::ClientPublish::All)
        .build()
        .expect("a valid configuration");
    server::spawn(config).expect("the server starts")
}

fn load(args: &[&str]) -> Output {
    // Bounded by the run's own flags (a second or two) and the handshake timeout.
    Command::new(env!("CARGO_BIN_EXE_uringcast-load"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("uringcast-load ran")
}

/// A run that must succeed: its text summary and its JSON report.
fn run_ok(name: &str, args: &[&str]) -> (String, Value) {
    let path: PathBuf = std::env::temp_dir().join(format!(
        "uringcast-load-deflate-{name}-{}.json",
        std::process::id()
    ));
    let path_text = path.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--json", &path_text, "--quiet"]);
    let output = load(&all);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&path).expect("the JSON report was written");
    let _ = std::fs::remove_file(&path);
    (stdout, serde_json::from_str(&text).expect("valid JSON"))
}

/// Every connection up, every message once, intact, in order.
fn assert_exact(json: &Value, connections: u64) {
    assert_eq!(json["connections"]["reached"], connections, "{json:#}");
    assert!(json["sent"].as_u64().unwrap() > 0, "{json:#}");
    assert_eq!(json["received"], json["expected"], "{json:#}");
    for key in ["missing", "duplicated", "out_of_order", "corrupt"] {
        assert_eq!(json[key], 0, "{key}: {json:#}");
    }
}

fn count(json: &Value, key: &str) -> u64 {
    json[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key}: {json:#}"))
}

/// JSON ticks echoed by a server that accepted deflate: it compresses every echo (400 bytes,
/// above its 128-byte floor), each one is inflated and checked, and the wire carries less than
/// the payload. With --deflate-send what the client sends shrinks too.
#[test]
fn echo_json_with_deflate_is_compressed_and_exact() {
    let _serial = serial();
    let server = uringcast(Mode::Echo, true, 1);
    let url = format!("ws://{}/", server.local_addr());
    let base = [
        "echo",
        url.as_str(),
        "--payload",
        "json",
        "--deflate",
        "--connections",
        "20",
        "--inflight",
        "2",
        "--duration",
        "0.5",
        "--threads",
        "2",
    ];
    let (text, json) = run_ok("echo", &base);
    assert_exact(&json, 20);
    assert_eq!(json["deflate_offered"], true);
    assert_eq!(count(&json, "deflate_connections"), 20, "{json:#}");
    let received = count(&json, "received");
    assert_eq!(count(&json, "messages_compressed_in"), received, "{json:#}");
    assert_eq!(count(&json, "payload_bytes_in"), received * 400, "{json:#}");
    let (wire_in, payload_in) = (
        count(&json, "wire_bytes_in"),
        count(&json, "payload_bytes_in"),
    );
    assert!(
        wire_in < payload_in,
        "in: {wire_in} wire, {payload_in} payload"
    );
    // Sends are plain without --deflate-send: frame headers make the wire longer.
    assert_eq!(count(&json, "messages_compressed_out"), 0, "{json:#}");
    assert!(count(&json, "wire_bytes_out") > count(&json, "payload_bytes_out"));
    assert!(text.contains("20 of 20 agreed"), "{text}");

    let mut compressing = base.to_vec();
    compressing.push("--deflate-send");
    let (_, json) = run_ok("echo-send", &compressing);
    assert_exact(&json, 20);
    assert_eq!(
        count(&json, "messages_compressed_out"),
        count(&json, "sent")
    );
    let (wire_out, payload_out) = (
        count(&json, "wire_bytes_out"),
        count(&json, "payload_bytes_out"),
    );
    assert!(
        wire_out < payload_out,
        "out: {wire_out} wire, {payload_out} payload"
    );
    assert!(json["wire_ratio_out"].as_f64().unwrap() < 1.0, "{json:#}");
    assert_eq!(json["settings"]["deflate_send"], true);
    server.shutdown();
}

/// A broadcast on two workers with deflate: every subscriber and publisher agreed, every
/// delivery inflated and checked, fewer bytes on the wire than in the payloads; over HTTP
/// publishing too.
#[test]
fn broadcast_json_with_deflate_is_compressed_and_exact() {
    let _serial = serial();
    let server = uringcast(Mode::Broadcast, true, 2);
    let addr = server.local_addr();
    let url = format!("ws://{addr}/room");
    let (_, json) = run_ok(
        "broadcast",
        &[
            "broadcast",
            &url,
            "--payload",
            "json",
            "--size",
            "600",
            "--deflate",
            "--subscribers",
            "100",
            "--publishers",
            "2",
            "--rate",
            "100",
            "--duration",
            "1",
        ],
    );
    assert_exact(&json, 102);
    assert_eq!(count(&json, "expected"), 100 * count(&json, "sent"));
    assert_eq!(count(&json, "deflate_connections"), 102, "{json:#}");
    assert!(count(&json, "messages_compressed_in") >= count(&json, "received"));
    let ratio = json["wire_ratio_in"].as_f64().expect("wire_ratio_in");
    assert!(ratio < 0.8, "wire per payload byte {ratio}: {json:#}");

    let publish = format!("http://{addr}/publish/room");
    let (_, json) = run_ok(
        "broadcast-http",
        &[
            "broadcast",
            &url,
            "--payload",
            "json",
            "--deflate",
            "--subscribers",
            "50",
            "--rate",
            "40",
            "--duration",
            "0.5",
            "--publish-url",
            &publish,
            "--publish-token",
            TOKEN,
        ],
    );
    assert_exact(&json, 50);
    assert_eq!(count(&json, "deflate_connections"), 50, "{json:#}");
    assert!(count(&json, "wire_bytes_in") < count(&json, "payload_bytes_in"));
    server.shutdown();
}

/// A server without deflate declines the offer: the report says so (0 agreed), the run goes on
/// with plain messages, and every one is still checked.
#[test]
fn a_server_that_declines_deflate_gets_plain_messages_checked() {
    let _serial = serial();
    let server = uringcast(Mode::Echo, false, 1);
    let url = format!("ws://{}/", server.local_addr());
    let (text, json) = run_ok(
        "declined-echo",
        &[
            "echo",
            &url,
            "--payload",
            "json",
            "--deflate",
            "--deflate-send",
            "--connections",
            "10",
            "--duration",
            "0.5",
        ],
    );
    assert_exact(&json, 10);
    assert_eq!(json["deflate_offered"], true);
    assert_eq!(count(&json, "deflate_connections"), 0, "{json:#}");
    assert_eq!(count(&json, "messages_compressed_in"), 0);
    assert_eq!(count(&json, "messages_compressed_out"), 0);
    assert!(count(&json, "wire_bytes_in") > count(&json, "payload_bytes_in"));
    assert!(
        text.contains("0 of 10 agreed (the server declined: messages went plain)"),
        "{text}"
    );
    server.shutdown();

    let server = uringcast(Mode::Broadcast, false, 1);
    let url = format!("ws://{}/room", server.local_addr());
    let (_, json) = run_ok(
        "declined-broadcast",
        &[
            "broadcast",
            &url,
            "--payload",
            "json",
            "--deflate",
            "--subscribers",
            "30",
            "--rate",
            "50",
            "--duration",
            "0.5",
        ],
    );
    assert_exact(&json, 31);
    assert_eq!(count(&json, "deflate_connections"), 0, "{json:#}");
    assert!(count(&json, "wire_bytes_in") > count(&json, "payload_bytes_in"));
    server.shutdown();
}

/// `connect --deflate` counts the connections that agreed; without the flag nothing is
/// offered, even to a server that would accept.
#[test]
fn connect_counts_the_connections_that_agreed() {
    let _serial = serial();
    let server = uringcast(Mode::Echo, true, 1);
    let url = format!("ws://{}/", server.local_addr());
    let base = [
        "connect",
        url.as_str(),
        "--connections",
        "30",
        "--rate",
        "1000",
        "--duration",
        "0.1",
    ];
    let mut offering = base.to_vec();
    offering.push("--deflate");
    let (text, json) = run_ok("connect", &offering);
    assert_eq!(count(&json, "deflate_connections"), 30, "{json:#}");
    assert_eq!(json["settings"]["deflate"], true);
    assert!(text.contains("30 of 30 agreed"), "{text}");
    let (text, json) = run_ok("connect-plain", &base);
    assert_eq!(json["deflate_offered"], false);
    assert_eq!(count(&json, "deflate_connections"), 0, "{json:#}");
    assert!(!text.contains("deflate"), "{text}");
    // --deflate-send means nothing without the offer.
    let output = load(&["echo", &url, "--deflate-send", "--duration", "0.1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--deflate"));
    server.shutdown();
}
