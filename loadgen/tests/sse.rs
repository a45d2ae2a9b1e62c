//! `sse` end to end: against uringcast with history (every event once, in order; every
//! stream that reconnects recovered exactly), and against small stream servers written here
//! that skip an event (a loss the run must see) or answer a resume with `reset` (counted as a
//! reset, not as a loss). And `--reconnect` across a server restart on the same port.

// The shared harness and servers; this file uses part of them.
#[allow(dead_code)]
#[path = "traffic/harness.rs"]
mod harness;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use uringcast::config::Mode;
use uringcast::server::{self, Server, ServerHandle};

use self::harness::{describe, load, read_json, serial, temp};

const TOKEN: &str = "sse-test-token";

/// uringcast in `--mode broadcast --history 1000 --publish-token T --client-publish all` on
/// `listen`.
fn uringcast(listen: SocketAddr) -> ServerHandle {
    let config = Server::builder()
        .listen(listen)
        .workers(2)
        .mode(Mode::Broadcast)
        .ping_interval(None)
        .publish_token(Some(TOKEN.to_owned()))
        // The WebSocket publishers are members of their room: a publish token alone would
        // make them read-only.
        .client_publish(uringcast::auth::ClientPublish::All)
        .history(1000)
        .build()
        .expect("a valid configuration");
    server::spawn(config).expect("the server starts")
}

/// Runs `uringcast-load ARGS --json F --quiet`; the exit status's success and the report.
fn run(name: &str, args: &[&str]) -> (bool, Value, String) {
    let path = temp(name, "json");
    let path_text = path.to_str().expect("a UTF-8 temp path").to_owned();
    let mut all = args.to_vec();
    all.extend(["--json", &path_text, "--quiet"]);
    let output = load(&all);
    let text = describe(&output);
    assert!(path.exists(), "no report: {text}");
    (output.status.success(), read_json(&path), text)
}

fn streams(json: &Value) -> &Value {
    &json["streams"]
}

#[test]
fn every_event_arrives_once_in_order_over_websocket_and_http_publishers() {
    let _serial = serial();
    let server = uringcast("127.0.0.1:0".parse().unwrap());
    let addr = server.local_addr();
    let url = format!("http://{addr}/room");
    let publish = format!("http://{addr}/publish/room");
    for (name, extra) in [
        ("ws", vec!["--publishers", "2"]),
        (
            "http",
            vec![
                "--publishers",
                "1",
                "--publish-url",
                &publish,
                "--publish-token",
                TOKEN,
                "--payload",
                "json",
            ],
        ),
    ] {
        let mut args = vec![
            "sse",
            &url,
            "--subscribers",
            "50",
            "--rate",
            "50",
            "--duration",
            "1.5",
        ];
        args.extend(extra.iter());
        let (ok, json, text) = run(&format!("sse-exact-{name}"), &args);
        assert!(ok, "{text}");
        assert!(text.contains(&format!("target: {url} → ")), "{text}");
        assert_eq!(json["scenario"], "sse");
        let sent = json["sent"].as_u64().unwrap();
        assert!(sent > 0, "{json:#}");
        assert_eq!(json["expected"], 50 * sent, "{json:#}");
        assert_eq!(json["received"], json["expected"], "{json:#}");
        for key in ["missing", "duplicated", "out_of_order", "corrupt"] {
            assert_eq!(json[key], 0, "{key}: {json:#}");
        }
        assert_eq!(json["latency_us"]["count"], json["received"], "{json:#}");
        let s = streams(&json);
        // Every delivery had an id; each stream started with its position.
        assert_eq!(s["events"], json["received"], "{json:#}");
        assert_eq!(s["positions"], 50, "{json:#}");
        for key in [
            "without_id",
            "bad_ids",
            "gaps",
            "repeated",
            "resets",
            "resumes",
        ] {
            assert_eq!(s[key], 0, "{key}: {json:#}");
        }
    }
    server.shutdown();
}

#[test]
fn every_stream_that_reconnects_recovers_exactly() {
    let _serial = serial();
    let server = uringcast("127.0.0.1:0".parse().unwrap());
    let url = format!("http://{}/feed", server.local_addr());
    let (ok, json, text) = run(
        "sse-reconnect-after",
        &[
            "sse",
            &url,
            "--subscribers",
            "40",
            "--publishers",
            "1",
            "--rate",
            "100",
            "--duration",
            "2",
            "--reconnect-after",
            "0.5",
        ],
    );
    assert!(ok, "{text}");
    let s = streams(&json);
    assert_eq!(s["resumes"], 40, "{json:#}");
    assert_eq!(s["recovered"], 40, "{json:#}");
    for key in [
        "reset_on_resume",
        "silent_losses",
        "repeated_on_resume",
        "unconfirmed",
        "gaps",
        "repeated",
    ] {
        assert_eq!(s[key], 0, "{key}: {json:#}");
    }
    assert_eq!(json["reconnect"]["asked"], 40, "{json:#}");
    assert_eq!(json["reconnect"]["reconnected"], 40, "{json:#}");
    assert_eq!(json["connections"]["dropped"], 0, "{json:#}");
    for key in ["missing", "duplicated", "out_of_order", "corrupt"] {
        assert_eq!(json[key], 0, "{key}: {json:#}");
    }
    server.shutdown();
}

#[test]
fn a_reconnect_storm_recovers_every_stream_and_says_when_the_last_is_live() {
    let _serial = serial();
    let server = uringcast("127.0.0.1:0".parse().unwrap());
    let url = format!("http://{}/storm", server.local_addr());
    // Every stream closes at 0.5 s, stays away 0.5 s (50 publications at 100/s), and comes
    // back within the next 0.5 s: 50 to 100 publications behind, all under --max-recover.
    let (ok, json, text) = run(
        "sse-storm",
        &[
            "sse",
            &url,
            "--subscribers",
            "60",
            "--publishers",
            "1",
            "--rate",
            "100",
            "--duration",
            "2.5",
            "--reconnect-after",
            "0.5",
            "--reconnect-down",
            "0.5",
            "--reconnect-window",
            "0.5",
        ],
    );
    assert!(ok, "{text}");
    let s = streams(&json);
    assert_eq!(s["resumes"], 60, "{json:#}");
    assert_eq!(s["recovered"], 60, "{json:#}");
    for key in [
        "reset_on_resume",
        "silent_losses",
        "repeated_on_resume",
        "unconfirmed",
        "gaps",
        "repeated",
    ] {
        assert_eq!(s[key], 0, "{key}: {json:#}");
    }
    let storm = &s["storm"];
    assert_eq!(storm["streams"], 60, "{json:#}");
    assert_eq!(storm["live_again"], 60, "{json:#}");
    // Each stream missed at least the 0.5 s it was away: about 50 publications.
    let replayed = storm["replayed"].as_u64().unwrap();
    assert!(replayed >= 60 * 40, "{replayed} replayed: {json:#}");
    let spread = storm["reopen_spread_s"].as_f64().unwrap();
    assert!((0.4..=0.5).contains(&spread), "reopens over {spread} s");
    let all_live = storm["all_live_after_s"].as_f64().unwrap();
    assert!(
        (spread..2.0).contains(&all_live),
        "all live after {all_live} s: {json:#}"
    );
    assert!(text.contains("storm     60 streams reopened"), "{text}");
    assert_eq!(json["reconnect"]["asked"], 60, "{json:#}");
    assert_eq!(json["reconnect"]["reconnected"], 60, "{json:#}");
    assert_eq!(json["connections"]["dropped"], 0, "{json:#}");
    for key in ["missing", "duplicated", "out_of_order", "corrupt"] {
        assert_eq!(json[key], 0, "{key}: {json:#}");
    }
    server.shutdown();
}

#[test]
fn a_reconnect_window_needs_a_reconnect_time() {
    let output = load(&["sse", "http://127.0.0.1:9/t", "--reconnect-window", "1"]);
    let text = describe(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("--reconnect-after"), "{text}");
}

/// A stamped binary payload of 24 bytes, as the load generator's publishers write it: id,
/// sequence number, send time (`CLOCK_MONOTONIC` ns).
fn stamped(seq: u64) -> String {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    let ns = now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64;
    let mut bytes = Vec::new();
    for value in [0u64, seq, ns] {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A stream server for the tests: each connection's request head is read, then `serve`
/// writes the stream (given the request's `Last-Event-ID`), and the connection stays open
/// until the client closes it.
fn stream_server(
    serve: impl Fn(usize, Option<String>, &mut TcpStream) + Send + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut last_id = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.strip_prefix("Last-Event-ID:") {
                    last_id = Some(value.trim().to_owned());
                }
            }
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
            let _ = stream.write_all(head.as_bytes());
            serve(n, last_id, &mut stream);
            // Held open (the client closes it) on a thread of its own.
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut stream, &mut sink);
            });
        }
    });
    addr
}

fn event(stream: &mut TcpStream, id: &str, seq: u64) {
    let text = format!("id: {id}\nevent: binary\ndata: {}\n\n", stamped(seq));
    let _ = stream.write_all(text.as_bytes());
}

#[test]
fn a_skipped_event_is_a_gap_and_a_loss() {
    let _serial = serial();
    let addr = stream_server(|_, _, stream| {
        let _ = stream.write_all(b"id: ep:0\n\n: comment\n\n");
        for offset in 1..=10u64 {
            // Offset 6 (sequence number 5) is never sent.
            if offset != 6 {
                event(stream, &format!("ep:{offset}"), offset - 1);
            }
        }
    });
    let (ok, json, text) = run(
        "sse-gap",
        &[
            "sse",
            &format!("http://{addr}/t"),
            "--subscribers",
            "1",
            "--publishers",
            "0",
            "--size",
            "24",
            "--duration",
            "0.5",
        ],
    );
    assert!(!ok, "a loss must fail the run: {text}");
    let s = streams(&json);
    assert_eq!(
        (s["gaps"].as_u64(), s["gap_events"].as_u64()),
        (Some(1), Some(1)),
        "{json:#}"
    );
    assert_eq!(s["events"], 9, "{json:#}");
    assert_eq!(json["received"], 9, "{json:#}");
    assert_eq!(json["missing"], 1, "{json:#}");
}

#[test]
fn a_reset_on_resume_is_counted_as_a_reset_not_a_loss() {
    let _serial = serial();
    let addr = stream_server(|_, last_id, stream| match last_id {
        None => {
            let _ = stream.write_all(b"id: ep:0\n\n");
            for offset in 1..=3u64 {
                event(stream, &format!("ep:{offset}"), offset - 1);
            }
        }
        Some(id) => {
            assert_eq!(id, "ep:3");
            let reset = "id: ep:50\nevent: reset\ndata: {\"epoch\":\"ep\",\"offset\":50}\n\n";
            let _ = stream.write_all(reset.as_bytes());
            for offset in 51..=53u64 {
                event(stream, &format!("ep:{offset}"), offset - 48);
            }
        }
    });
    let (_, json, text) = run(
        "sse-reset",
        &[
            "sse",
            &format!("http://{addr}/t"),
            "--subscribers",
            "1",
            "--publishers",
            "0",
            "--size",
            "24",
            "--duration",
            "0.6",
            "--reconnect-after",
            "0.1",
        ],
    );
    let s = streams(&json);
    assert_eq!(s["resumes"], 1, "{text}\n{json:#}");
    assert_eq!(s["reset_on_resume"], 1, "{json:#}");
    assert_eq!(s["resets"], 1, "{json:#}");
    for key in ["silent_losses", "gaps", "repeated", "recovered"] {
        assert_eq!(s[key], 0, "{key}: {json:#}");
    }
    assert_eq!(json["received"], 6, "{json:#}");
}

#[test]
fn connections_come_back_after_a_server_restart() {
    let _serial = serial();
    let server = uringcast("127.0.0.1:0".parse().unwrap());
    let addr = server.local_addr();
    let url = format!("ws://{addr}/idle");
    let path = temp("reconnect-restart", "json");
    let path_text = path.to_str().unwrap().to_owned();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_uringcast-load"))
        .args([
            "connect",
            &url,
            "--connections",
            "100",
            "--rate",
            "1000",
            "--duration",
            "4",
            "--reconnect",
            "--reconnect-timeout",
            "10",
            "--json",
            &path_text,
            "--quiet",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for all 100 to be up, from the server's side.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let open = |s: &ServerHandle| -> u64 {
        s.stats()
            .iter()
            .map(|w| w.connections.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    while open(&server) < 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "the connections came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.shutdown();
    let again = uringcast(addr);
    let output = child.wait_with_output().unwrap();
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    let json = read_json(&path);
    let r = &json["reconnect"];
    assert_eq!(r["lost"], 100, "{json:#}");
    assert_eq!(r["reconnected"], 100, "{json:#}");
    assert_eq!(r["gave_up"], 0, "{json:#}");
    assert!(
        r["peak_handshakes_per_s"].as_u64().unwrap() >= 1,
        "{json:#}"
    );
    assert!(r["back_after_s"].as_f64().unwrap() > 0.0, "{json:#}");
    // The reconnect's own peak: the 100 came back, after the first loss.
    assert!(
        r["peak_reconnect_handshakes_per_s"].as_u64().unwrap() >= 1,
        "{json:#}"
    );
    assert_eq!(json["connections"]["reached"], 100, "{json:#}");
    again.shutdown();
}

#[test]
fn streams_over_https_resume_exactly_too() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("uringcast-load-sse-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, key.cert.pem()).unwrap();
    std::fs::write(&pem, key.signing_key.serialize_pem()).unwrap();
    let config = Server::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .mode(Mode::Broadcast)
        .ping_interval(None)
        .history(1000)
        .tls(cert.display().to_string(), pem.display().to_string())
        .build()
        .expect("a valid configuration");
    let server = server::spawn(config).expect("the server starts");
    let url = format!("https://localhost:{}/secure", server.local_addr().port());
    let ca = cert.display().to_string();
    let (ok, json, text) = run(
        "sse-https",
        &[
            "sse",
            &url,
            "--ca",
            &ca,
            "--subscribers",
            "10",
            "--rate",
            "50",
            "--duration",
            "1.5",
            "--reconnect-after",
            "0.4",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "{text}");
    assert!(
        json["tls_handshake_latency_us"]["count"].as_u64().unwrap() >= 20,
        "{json:#}"
    );
    let s = streams(&json);
    assert_eq!(
        (s["resumes"].as_u64(), s["recovered"].as_u64()),
        (Some(10), Some(10)),
        "{json:#}"
    );
    assert_eq!(json["missing"], 0, "{json:#}");
    server.shutdown();
}

#[test]
fn streams_back_from_a_restart_are_reset_never_silently_short() {
    let _serial = serial();
    let server = uringcast("127.0.0.1:0".parse().unwrap());
    let addr = server.local_addr();
    let path = temp("sse-restart", "json");
    let path_text = path.to_str().unwrap().to_owned();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_uringcast-load"))
        .args([
            "sse",
            &format!("http://{addr}/news"),
            "--subscribers",
            "20",
            "--publishers",
            "1",
            "--rate",
            "20",
            "--duration",
            "4",
            "--reconnect",
            "--reconnect-timeout",
            "10",
            "--json",
            &path_text,
            "--quiet",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The streams are up and have seen publications (at 20/s, a second is about 20).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let published = |s: &ServerHandle| -> u64 {
        s.stats()
            .iter()
            .map(|w| w.messages_in.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    while published(&server) < 10 {
        assert!(std::time::Instant::now() < deadline, "publications began");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.shutdown();
    let again = uringcast(addr);
    let output = child.wait_with_output().unwrap();
    let text = describe(&output);
    let json = read_json(&path);
    let s = streams(&json);
    // The new server is a new epoch: every stream that resumed was told so.
    assert_eq!(s["resumes"], 20, "{text}\n{json:#}");
    assert_eq!(s["reset_on_resume"], 20, "{json:#}");
    for key in ["silent_losses", "gaps", "repeated", "bad_ids", "recovered"] {
        assert_eq!(s[key], 0, "{key}: {json:#}");
    }
    let r = &json["reconnect"];
    assert_eq!(r["gave_up"], 0, "{json:#}");
    // 20 streams and the publisher.
    assert_eq!(r["reconnected"], 21, "{json:#}");
    again.shutdown();
}

#[test]
fn reconnecting_gives_up_within_its_bounds() {
    let _serial = serial();
    let server = uringcast("127.0.0.1:0".parse().unwrap());
    let url = format!("ws://{}/gone", server.local_addr());
    let path = temp("reconnect-give-up", "json");
    let path_text = path.to_str().unwrap().to_owned();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_uringcast-load"))
        .args([
            "connect",
            &url,
            "--connections",
            "5",
            "--duration",
            "3",
            "--reconnect",
            "--reconnect-max",
            "3",
            "--json",
            &path_text,
            "--quiet",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let open = |s: &ServerHandle| -> u64 {
        s.stats()
            .iter()
            .map(|w| w.connections.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open(&server) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the connections came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Gone for good: every attempt is refused (3 each, within 0.05 + 0.1 + 0.2 s at most).
    server.shutdown();
    let output = child.wait_with_output().unwrap();
    let text = describe(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let json = read_json(&path);
    let r = &json["reconnect"];
    assert_eq!(r["lost"], 5, "{json:#}");
    assert_eq!(r["attempts"], 15, "{json:#}");
    assert_eq!(r["failed_attempts"], 15, "{json:#}");
    assert_eq!(r["gave_up"], 5, "{json:#}");
    assert_eq!(r["reconnected"], 0, "{json:#}");
    assert_eq!(json["connections"]["dropped"], 5, "{json:#}");
}
