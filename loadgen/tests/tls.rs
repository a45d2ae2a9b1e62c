//! `wss://` runs of `uringcast-load` against uringcast over TLS (in-process, with a
//! certificate made here): every scenario exact, TLS handshakes reported apart, resumption,
//! and a certificate the client must not trust.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;
use uringcast::config::Mode;
use uringcast::server::{self, Server, ServerHandle};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A certificate for localhost in PEM files of its own.
struct Cert {
    dir: PathBuf,
}

impl Cert {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("uringcast-load-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("a certificate");
        std::fs::write(dir.join("cert.pem"), key.cert.pem()).expect("write");
        std::fs::write(dir.join("key.pem"), key.signing_key.serialize_pem()).expect("write");
        Self { dir }
    }

    fn cert(&self) -> String {
        self.dir.join("cert.pem").display().to_string()
    }

    fn key(&self) -> String {
        self.dir.join("key.pem").display().to_string()
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn uringcast_tls(mode: Mode, cert: &Cert, workers: usize) -> ServerHandle {
    let config = Server::builder()
        .listen("127.0.0.1:0".parse().expect("an address"))
        .workers(workers)
        .mode(mode)
        .ping_interval(None)
        .tls(cert.cert(), cert.key())
        .build()
        .expect("a valid configuration");
    server::spawn(config).expect("the server starts")
}

fn load(args: &[&str]) -> Output {
    // Bounded by the run's own flags (a few seconds) and the handshake timeout.
    Command::new(env!("CARGO_BIN_EXE_uringcast-load"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("uringcast-load ran")
}

fn run_json(name: &str, args: &[&str]) -> (Output, Value) {
    let path = std::env::temp_dir().join(format!(
        "uringcast-load-tls-{name}-{}.json",
        std::process::id()
    ));
    let path_text = path.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--json", &path_text, "--quiet"]);
    let output = load(&all);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no JSON report: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let _ = std::fs::remove_file(&path);
    (output, serde_json::from_str(&text).expect("valid JSON"))
}

/// A run that must succeed: its JSON report.
fn run_ok(name: &str, args: &[&str]) -> Value {
    let (output, json) = run_json(name, args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    json
}

fn assert_exact(json: &Value, connections: u64) {
    assert_eq!(json["connections"]["reached"], connections, "{json:#}");
    assert!(json["sent"].as_u64().unwrap() > 0, "{json:#}");
    assert_eq!(json["received"], json["expected"], "{json:#}");
    for key in ["missing", "duplicated", "out_of_order", "corrupt"] {
        assert_eq!(json[key], 0, "{key}: {json:#}");
    }
    // One TLS handshake per connection, reported apart from the upgrade's.
    assert_eq!(
        json["tls_handshake_latency_us"]["count"], connections,
        "{json:#}"
    );
    assert_eq!(
        json["handshake_latency_us"]["count"], connections,
        "{json:#}"
    );
    let tls_p50 = json["tls_handshake_latency_us"]["p50"].as_u64().unwrap();
    let upgrade_p50 = json["handshake_latency_us"]["p50"].as_u64().unwrap();
    assert!(
        tls_p50 > 0 && tls_p50 <= upgrade_p50,
        "TLS p50 {tls_p50} µs, upgrade {upgrade_p50} µs"
    );
}

#[test]
fn wss_echo_and_broadcast_are_exact() {
    let _serial = serial();
    let cert = Cert::new("exact");
    let ca = cert.cert();
    let server = uringcast_tls(Mode::Echo, &cert, 1);
    let url = format!("wss://localhost:{}/", server.local_addr().port());
    let json = run_ok(
        "echo",
        &[
            "echo",
            &url,
            "--ca",
            &ca,
            "--connections",
            "20",
            "--inflight",
            "4",
            "--size",
            "3000",
            "--duration",
            "1",
        ],
    );
    assert_exact(&json, 20);
    assert_eq!(json["sent"], json["received"]);
    server.shutdown();

    let server = uringcast_tls(Mode::Broadcast, &cert, 2);
    let url = format!("wss://localhost:{}/room", server.local_addr().port());
    let json = run_ok(
        "broadcast",
        &[
            "broadcast",
            &url,
            "--ca",
            &ca,
            "--subscribers",
            "200",
            "--rate",
            "50",
            "--duration",
            "1",
        ],
    );
    assert_exact(&json, 201);
    server.shutdown();
}

#[test]
fn wss_connect_resumes_sessions_when_asked() {
    let _serial = serial();
    let cert = Cert::new("resume");
    let ca = cert.cert();
    let server = uringcast_tls(Mode::Echo, &cert, 1);
    let url = format!("wss://localhost:{}/", server.local_addr().port());
    let base = [
        "connect",
        url.as_str(),
        "--ca",
        ca.as_str(),
        "--connections",
        "40",
        "--rate",
        "40",
        "--duration",
        "0.2",
        "--threads",
        "1",
    ];
    let full = run_ok("full", &base);
    assert_eq!(full["tls_resumed"], 0, "{full:#}");
    assert_eq!(full["tls_handshake_latency_us"]["count"], 40);
    let mut resuming = base.to_vec();
    resuming.push("--tls-resumption");
    let resumed = run_ok("resumed", &resuming);
    // A connection resumes with a ticket an earlier one received after its handshake: at
    // 40 connections a second each finds one (at thousands a second most start before any
    // ticket arrived, which is why resumption is a flag and the rate is low here).
    let count = resumed["tls_resumed"].as_u64().expect("tls_resumed");
    assert!(count >= 20, "{count} of 40 resumed: {resumed:#}");
    server.shutdown();
}

#[test]
fn an_untrusted_certificate_fails_every_handshake_unless_insecure() {
    let _serial = serial();
    let cert = Cert::new("served");
    let other = Cert::new("other");
    let server = uringcast_tls(Mode::Echo, &cert, 1);
    let url = format!("wss://localhost:{}/", server.local_addr().port());
    let wrong = other.cert();
    let (output, json) = run_json(
        "untrusted",
        &[
            "connect",
            &url,
            "--ca",
            &wrong,
            "--connections",
            "10",
            "--duration",
            "0.1",
            "--handshake-timeout",
            "5",
        ],
    );
    assert!(
        !output.status.success(),
        "a run with no connection up must fail"
    );
    assert_eq!(
        json["connections"]["failed"]["bad_handshake"], 10,
        "{json:#}"
    );
    let (output, json) = run_json(
        "insecure",
        &[
            "connect",
            &url,
            "--insecure",
            "--connections",
            "10",
            "--duration",
            "0.1",
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--insecure"),
        "no warning"
    );
    assert_eq!(json["connections"]["reached"], 10);
    // Without trust flags, a wss:// run is a usage error.
    let output = load(&["connect", &url, "--connections", "1"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.shutdown();
}

/// permessage-deflate over TLS: the wire bytes are the WebSocket bytes inside the session, so
/// they show what compression saved, and every compressed echo is checked.
#[test]
fn wss_echo_with_deflate_counts_the_bytes_inside_tls() {
    let _serial = serial();
    let cert = Cert::new("deflate");
    let ca = cert.cert();
    let config = Server::builder()
        .listen("127.0.0.1:0".parse().expect("an address"))
        .workers(1)
        .mode(Mode::Echo)
        .ping_interval(None)
        .tls(cert.cert(), cert.key())
        .deflate(true)
        .build()
        .expect("a valid configuration");
    let server = server::spawn(config).expect("the server starts");
    let url = format!("wss://localhost:{}/", server.local_addr().port());
    let json = run_ok(
        "echo-deflate",
        &[
            "echo",
            &url,
            "--ca",
            &ca,
            "--payload",
            "json",
            "--deflate",
            "--connections",
            "10",
            "--duration",
            "0.5",
        ],
    );
    assert_exact(&json, 10);
    assert_eq!(json["deflate_connections"], 10, "{json:#}");
    let wire = json["wire_bytes_in"].as_u64().unwrap();
    let payload = json["payload_bytes_in"].as_u64().unwrap();
    assert!(wire < payload, "{wire} wire bytes for {payload} of payload");
    server.shutdown();
}

#[test]
fn wss_publishers_go_to_the_publisher_url_with_its_own_name() {
    let _serial = serial();
    let cert = Cert::new("publisher-url");
    let ca = cert.cert();
    let server = uringcast_tls(Mode::Broadcast, &cert, 1);
    let port = server.local_addr().port();
    let url = format!("wss://localhost:{port}/room");
    let args = |publisher_url: &str| -> Vec<String> {
        [
            "broadcast",
            &url,
            "--publisher-url",
            publisher_url,
            "--ca",
            &ca,
            "--subscribers",
            "20",
            "--publishers",
            "2",
            "--rate",
            "50",
            "--duration",
            "1",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let good = args(&format!("wss://localhost:{port}"));
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let json = run_ok("publisher-url", &good);
    assert_exact(&json, 22);
    assert_eq!(json["nodes"][0]["subscribers"], 20, "{json:#}");
    assert_eq!(json["nodes"][0]["received"], json["received"]);

    // The certificate names localhost only: publishers sent to 127.0.0.1 check that name,
    // and fail, while the subscribers still connect to localhost.
    let bad = args(&format!("wss://127.0.0.1:{port}/room"));
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    let (output, json) = run_json("publisher-url-name", &bad);
    assert_eq!(output.status.code(), Some(1), "{json:#}");
    assert_eq!(json["connections"]["reached"], 20, "{json:#}");
    assert_eq!(json["connections"]["established"], 20, "{json:#}");
    assert_eq!(json["sent"], 0);
    server.shutdown();
}
