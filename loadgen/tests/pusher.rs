//! `pusher` end to end: exact against uringcast `--mode pusher` (public, private and presence
//! channels through the signed HTTP API, and client events), and its loss detection against
//! a small Pusher-speaking server written here that drops one event on purpose.

// The shared harness; this file uses part of it.
#[allow(dead_code)]
#[path = "traffic/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_tungstenite::tungstenite::Message;
use uringcast::config::Mode;
use uringcast::pusher::app::{App, Apps};
use uringcast::pusher::Pusher;
use uringcast::server::{self, Server, ServerHandle};

use self::harness::{describe, load, read_json, serial, temp};

const APP_ID: &str = "7";
const KEY: &str = "load-key";
const SECRET: &str = "load-secret";

/// uringcast in `--mode pusher` with one app, on 127.0.0.1:0.
fn uringcast_pusher() -> ServerHandle {
    let config = Server::builder()
        .listen("127.0.0.1:0".parse().expect("a valid address"))
        .workers(2)
        .mode(Mode::Broadcast)
        .ping_interval(None)
        .build()
        .expect("a valid configuration");
    let apps = Apps::new(vec![App {
        id: APP_ID.into(),
        key: KEY.into(),
        secret: SECRET.into(),
        limits: Default::default(),
        webhooks: Vec::new(),
    }])
    .expect("a valid app");
    server::spawn_with(config, Pusher::new(apps)).expect("the server starts")
}

/// Runs `uringcast-load pusher URL --app-... ARGS --json F --quiet`; success, report, output.
fn run(name: &str, url: &str, args: &[&str]) -> (bool, Value, String) {
    let path = temp(name, "json");
    let path_text = path.to_str().expect("a UTF-8 temp path").to_owned();
    let mut all = vec![
        "pusher",
        url,
        "--app-id",
        APP_ID,
        "--app-key",
        KEY,
        "--app-secret",
        SECRET,
    ];
    all.extend_from_slice(args);
    all.extend(["--json", &path_text, "--quiet"]);
    let output = load(&all);
    let text = describe(&output);
    assert!(path.exists(), "no report: {text}");
    (output.status.success(), read_json(&path), text)
}

fn assert_exact(json: &Value, subscribers: u64) {
    assert_eq!(json["scenario"], "pusher", "{json:#}");
    let sent = json["sent"].as_u64().expect("sent");
    assert!(sent > 0, "{json:#}");
    assert_eq!(json["expected"], subscribers * sent, "{json:#}");
    assert_eq!(json["received"], json["expected"], "{json:#}");
    for key in ["missing", "duplicated", "out_of_order", "corrupt"] {
        assert_eq!(json[key], 0, "{key}: {json:#}");
    }
    assert_eq!(json["latency_us"]["count"], json["received"], "{json:#}");
}

#[test]
fn every_event_arrives_once_in_order_on_every_kind_of_channel() {
    let _serial = serial();
    let server = uringcast_pusher();
    let url = format!("ws://{}", server.local_addr());
    let cases: [(&str, &[&str]); 4] = [
        ("public", &["--channels", "3", "--rate", "40"]),
        (
            "private",
            &[
                "--channels",
                "2",
                "--private",
                "--payload",
                "json",
                "--rate",
                "40",
            ],
        ),
        // Presence: at most 100 members per channel on uringcast by default.
        (
            "presence",
            &["--channels", "2", "--presence", "--rate", "40"],
        ),
        // Client events: at most 10/s per connection on uringcast by default.
        (
            "client",
            &[
                "--private",
                "--client-events",
                "--publishers",
                "2",
                "--rate",
                "8",
            ],
        ),
    ];
    for (name, extra) in cases {
        let mut args = vec!["--subscribers", "60", "--duration", "1.5"];
        args.extend_from_slice(extra);
        let (ok, json, text) = run(&format!("pusher-exact-{name}"), &url, &args);
        assert!(ok, "{name}: {text}");
        assert_exact(&json, 60);
        if name == "client" {
            assert_eq!(json["settings"]["publish"], "websocket", "{json:#}");
        } else {
            assert_eq!(json["settings"]["publish"], "http", "{json:#}");
        }
    }
    server.shutdown();
}

#[test]
fn presence_churn_joins_and_leaves_beside_exact_traffic() {
    let _serial = serial();
    let server = uringcast_pusher();
    let url = format!("ws://{}", server.local_addr());
    let (ok, json, text) = run(
        "pusher-churn",
        &url,
        &[
            "--presence",
            "--subscribers",
            "40",
            "--rate",
            "20",
            "--churn",
            "50",
            "--duration",
            "1.5",
        ],
    );
    assert!(ok, "{text}");
    // The subscribers see every trigger once, whatever member_added and member_removed pass.
    assert_exact(&json, 40);
    let churn = &json["churn"];
    let joined = churn["joined"].as_u64().expect("joined");
    // 50/s over 1.5 s of traffic: about 75 (the schedule, not a timing bound: at least a few).
    assert!(joined >= 10, "{json:#}");
    assert_eq!(churn["left"], joined, "{json:#}");
    assert_eq!(churn["failed"], 0, "{json:#}");
    assert!(text.contains("presence members joined"), "{text}");
    // Churn needs presence channels.
    let output = load(&[
        "pusher",
        &url,
        "--app-id",
        APP_ID,
        "--app-key",
        KEY,
        "--app-secret",
        SECRET,
        "--churn",
        "5",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    server.shutdown();
}

#[test]
fn a_wrong_secret_fails_every_subscription_and_every_trigger() {
    let _serial = serial();
    let server = uringcast_pusher();
    let url = format!("ws://{}", server.local_addr());
    let path = temp("pusher-bad-secret", "json");
    let path_text = path.to_str().expect("a UTF-8 temp path").to_owned();
    let output = load(&[
        "pusher",
        &url,
        "--app-id",
        APP_ID,
        "--app-key",
        KEY,
        "--app-secret",
        "wrong",
        "--private",
        "--subscribers",
        "5",
        "--duration",
        "0.5",
        "--json",
        &path_text,
        "--quiet",
    ]);
    assert!(!output.status.success(), "{}", describe(&output));
    let json = read_json(&path);
    // Every subscription refused by the server's signature check, and every trigger too.
    let conns = &json["connections"];
    assert_eq!(conns["reached"], 0, "{json:#}");
    assert_eq!(conns["failed"]["other"], 5, "{json:#}");
    let details = conns["failure_details"].as_object().expect("details");
    assert!(
        details
            .keys()
            .all(|k| k.starts_with("pusher:subscription_error")),
        "{json:#}"
    );
    assert_eq!(json["sent"], 0, "{json:#}");
    assert!(json["publish_errors"].as_u64() > Some(0), "{json:#}");
    server.shutdown();
}

#[test]
fn a_dropped_event_is_seen_as_missing() {
    let _serial = serial();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (ws, http) = dropping_server(&runtime, 3);
    let url = format!("ws://{ws}");
    let publish = format!("http://{http}");
    let (ok, json, text) = run(
        "pusher-drop",
        &url,
        &[
            "--subscribers",
            "20",
            "--channels",
            "2",
            "--rate",
            "20",
            "--duration",
            "1",
            "--publish-url",
            &publish,
        ],
    );
    assert!(!ok, "a run with a dropped event must fail: {text}");
    let sent = json["sent"].as_u64().expect("sent");
    assert!(sent >= 4, "{json:#}");
    // The third trigger reached nobody: each of the 20 subscribers misses exactly one.
    assert_eq!(json["missing"], 20, "{json:#}");
    assert_eq!(json["received"], 20 * (sent - 1), "{json:#}");
    for key in ["duplicated", "out_of_order", "corrupt"] {
        assert_eq!(json[key], 0, "{key}: {json:#}");
    }
}

type Subscribers = Arc<Mutex<HashMap<String, Vec<UnboundedSender<Message>>>>>;

/// A Pusher-speaking server: WebSocket on one port (public channels only, no auth), the
/// events API on another (signatures not checked); trigger number `drop` (from 1) is
/// answered 200 and sent to nobody.
fn dropping_server(runtime: &tokio::runtime::Runtime, drop: u64) -> (SocketAddr, SocketAddr) {
    let ws = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let http = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addrs = (
        ws.local_addr().expect("addr"),
        http.local_addr().expect("addr"),
    );
    let channels: Subscribers = Arc::default();
    let subscribers = Arc::clone(&channels);
    runtime.spawn(async move {
        let mut next = 0u64;
        while let Ok((stream, _)) = ws.accept().await {
            next += 1;
            let socket_id = format!("1.{next}");
            let channels = Arc::clone(&subscribers);
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                let (tx, mut rx) = unbounded_channel::<Message>();
                let established = json!({"event": "pusher:connection_established",
                    "data": json!({"socket_id": socket_id, "activity_timeout": 120}).to_string()});
                let _ = tx.send(Message::text(established.to_string()));
                tokio::spawn(async move {
                    while let Some(message) = rx.recv().await {
                        if sink.send(message).await.is_err() {
                            return;
                        }
                    }
                });
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let Ok(json) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if json["event"] == "pusher:subscribe" {
                        let channel = json["data"]["channel"].as_str().unwrap_or("").to_owned();
                        channels
                            .lock()
                            .unwrap()
                            .entry(channel.clone())
                            .or_default()
                            .push(tx.clone());
                        let ok = json!({"event": "pusher_internal:subscription_succeeded",
                            "channel": channel, "data": "{}"});
                        let _ = tx.send(Message::text(ok.to_string()));
                    }
                }
            });
        }
    });
    let triggers = Arc::new(AtomicU64::new(0));
    runtime.spawn(async move {
        while let Ok((stream, _)) = http.accept().await {
            let channels = Arc::clone(&channels);
            let triggers = Arc::clone(&triggers);
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    let mut first = true;
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line.trim_end().is_empty() && !first {
                            break;
                        }
                        first = false;
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let n = triggers.fetch_add(1, Ordering::Relaxed) + 1;
                    if n != drop {
                        let json: Value = serde_json::from_slice(&body).unwrap_or_default();
                        let names = json["channels"].as_array().cloned().unwrap_or_default();
                        let list = channels.lock().unwrap();
                        for name in names {
                            let name = name.as_str().unwrap_or("");
                            let event = json!({"event": json["name"], "channel": name,
                                "data": json["data"]});
                            for tx in list.get(name).into_iter().flatten() {
                                let _ = tx.send(Message::text(event.to_string()));
                            }
                        }
                    }
                    let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
                    if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addrs
}
