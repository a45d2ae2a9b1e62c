//! Protocols over WebSocket: `broadcast` driving a server with a JSON protocol of its own
//! (`--on-open`, `--ready-when`, `--payload-at`, `--publish-template`), against a small such
//! server written here with tokio-tungstenite.

// The shared harness; this file uses part of it.
#[allow(dead_code)]
#[path = "traffic/harness.rs"]
mod harness;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio_tungstenite::tungstenite::Message;

use self::harness::{assert_exact, describe, load, read_json, run_json, serial, temp};

/// How long the JSON server takes to subscribe a connection: long enough that traffic started
/// at the upgrade would miss the first messages.
const SUBSCRIBE_DELAY: Duration = Duration::from_millis(300);

/// What the JSON server saw: each `subscribe`'s (channel, id).
type Seen = Arc<Mutex<Vec<(String, u64)>>>;

/// A pub/sub server with a JSON protocol of its own, on any path:
/// - it greets each connection with `{"op":"welcome"}`;
/// - `{"op":"subscribe","channel":C,"id":N}` subscribes the connection to C after
///   [`SUBSCRIBE_DELAY`], then answers `{"op":"subscribed","channel":C}` (never, for the
///   channel `silent`);
/// - `{"op":"publish","channel":C,"data":D}` sends `{"op":"message","channel":C,"n":K,
///   "payload":{"data":D}}` to every subscriber of C (K counts the channel's messages), and
///   `{"op":"ack"}` to the publisher.
fn json_server(runtime: &Runtime) -> (SocketAddr, Seen) {
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("an address");
    let seen: Seen = Arc::default();
    let channels: Arc<Mutex<HashMap<String, Vec<UnboundedSender<Message>>>>> = Arc::default();
    let counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let log = Arc::clone(&seen);
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, channels, counts) =
                (Arc::clone(&log), Arc::clone(&channels), Arc::clone(&counts));
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                let (tx, mut rx) = unbounded_channel::<Message>();
                let writer = tokio::spawn(async move {
                    while let Some(message) = rx.recv().await {
                        if sink.send(message).await.is_err() {
                            return;
                        }
                    }
                });
                let _ = tx.send(Message::text(json!({"op": "welcome"}).to_string()));
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        if matches!(message, Message::Close(_)) {
                            break;
                        }
                        continue;
                    };
                    let Ok(request) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    let channel = request["channel"].as_str().unwrap_or_default().to_owned();
                    match request["op"].as_str() {
                        Some("subscribe") => {
                            let id = request["id"].as_u64().unwrap_or(u64::MAX);
                            seen.lock().unwrap().push((channel.clone(), id));
                            let (tx, channels) = (tx.clone(), Arc::clone(&channels));
                            tokio::spawn(async move {
                                tokio::time::sleep(SUBSCRIBE_DELAY).await;
                                if channel == "silent" {
                                    return;
                                }
                                channels
                                    .lock()
                                    .unwrap()
                                    .entry(channel.clone())
                                    .or_default()
                                    .push(tx.clone());
                                let answer = json!({"op": "subscribed", "channel": channel});
                                let _ = tx.send(Message::text(answer.to_string()));
                            });
                        }
                        Some("publish") => {
                            let n = {
                                let mut counts = counts.lock().unwrap();
                                let n = counts.entry(channel.clone()).or_default();
                                *n += 1;
                                *n
                            };
                            let out = json!({
                                "op": "message",
                                "channel": channel,
                                "n": n,
                                "payload": {"data": request["data"]},
                            })
                            .to_string();
                            let subscribers = channels.lock().unwrap().get(&channel).cloned();
                            for subscriber in subscribers.into_iter().flatten() {
                                let _ = subscriber.send(Message::text(out.clone()));
                            }
                            let _ = tx.send(Message::text(json!({"op": "ack"}).to_string()));
                        }
                        _ => {}
                    }
                }
                let _ = tx.send(Message::Close(None));
                drop(tx);
                drop(writer.await);
            });
        }
    });
    (addr, seen)
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Writes `text` to a temporary file for a flag.
fn file(name: &str, text: &str) -> String {
    let path = temp(name, "txt");
    std::fs::write(&path, text).expect("a temporary file");
    path.to_str().expect("a UTF-8 temp path").to_owned()
}

const SUBSCRIBE: &str = r#"{"op":"subscribe","channel":"{topic}","id":{conn}}"#;
const PUBLISH: &str = r#"{"op":"publish","channel":"{topic}","data":{payload}}"#;

/// The broadcast flags of a JSON-protocol run on `url`, the subscription awaited or not.
fn json_args<'a>(url: &'a str, on_open: &'a str, template: &'a str, ready: bool) -> Vec<&'a str> {
    let mut args = vec![
        "broadcast",
        url,
        "--subscribers",
        "20",
        "--publishers",
        "2",
        "--rate",
        "200",
        "--duration",
        "1",
        "--on-open",
        on_open,
        "--payload-at",
        "/payload/data",
        "--publish-template",
        template,
        "--payload",
        "json",
    ];
    if ready {
        args.extend(["--ready-when", "/op=subscribed"]);
    }
    args
}

#[test]
fn broadcast_drives_a_json_protocol_exactly() {
    let _serial = serial();
    let rt = runtime();
    let (addr, seen) = json_server(&rt);
    let url = format!("ws://{addr}/news");
    let on_open = file("on-open", &format!("{SUBSCRIBE}\n"));
    let template = file("publish", PUBLISH);
    let json = run_json("json-protocol", &json_args(&url, &on_open, &template, true));
    // Every subscription arrived before the traffic: nothing missing, every payload intact
    // out of its JSON envelope; the greetings, acks and answers are not deliveries.
    assert_exact(&json, 22);
    let sent = json["sent"].as_u64().unwrap();
    assert_eq!(json["expected"].as_u64().unwrap(), 20 * sent, "{json:#}");
    assert_eq!(json["settings"]["payload_at"], "/payload/data");
    assert_eq!(json["settings"]["ready_when"], "/op=subscribed");
    // {topic} and {conn}: each connection subscribed once to the path's topic, with its number.
    let seen = seen.lock().unwrap().clone();
    let mut ids: BTreeMap<u64, usize> = BTreeMap::new();
    for (channel, id) in &seen {
        assert_eq!(channel, "news");
        *ids.entry(*id).or_default() += 1;
    }
    assert_eq!(
        ids.keys().copied().collect::<Vec<_>>(),
        (0..22).collect::<Vec<_>>()
    );
    assert!(ids.values().all(|n| *n == 1), "{ids:?}");
    let _ = std::fs::remove_file(on_open);
    let _ = std::fs::remove_file(template);
}

#[test]
fn without_ready_when_the_late_subscriptions_miss_messages() {
    let _serial = serial();
    let rt = runtime();
    let (addr, _) = json_server(&rt);
    let url = format!("ws://{addr}/news");
    let on_open = file("on-open-late", &format!("{SUBSCRIBE}\n"));
    let template = file("publish-late", PUBLISH);
    let path = temp("json-protocol-late", "json");
    let path_text = path.to_str().unwrap().to_owned();
    let mut args = json_args(&url, &on_open, &template, false);
    args.extend(["--json", &path_text, "--quiet"]);
    let output = load(&args);
    // Traffic started at the upgrade, 300 ms before the server subscribed anyone: at 200
    // messages/s the first ones reached no subscriber. That is what --ready-when is for.
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let json = read_json(&path);
    assert!(json["missing"].as_u64().unwrap() >= 20, "{json:#}");
    for key in ["duplicated", "out_of_order", "corrupt"] {
        assert_eq!(json[key], 0, "{key}: {json:#}");
    }
    let _ = std::fs::remove_file(on_open);
    let _ = std::fs::remove_file(template);
}

#[test]
fn a_subscription_never_confirmed_fails_the_connection() {
    let _serial = serial();
    let rt = runtime();
    let (addr, _) = json_server(&rt);
    let url = format!("ws://{addr}/silent");
    let on_open = file("on-open-silent", &format!("{SUBSCRIBE}\n"));
    let path = temp("json-protocol-silent", "json");
    let path_text = path.to_str().unwrap().to_owned();
    let output = load(&[
        "broadcast",
        &url,
        "--subscribers",
        "3",
        "--publishers",
        "0",
        "--duration",
        "0.2",
        "--on-open",
        &on_open,
        "--ready-when",
        "/op=subscribed",
        "--handshake-timeout",
        "1",
        "--json",
        &path_text,
        "--quiet",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let json = read_json(&path);
    assert_eq!(json["connections"]["failed"]["timeout"], 3, "{json:#}");
    assert_eq!(json["connections"]["reached"], 0, "{json:#}");
    let _ = std::fs::remove_file(on_open);
}

#[test]
fn protocol_flags_are_checked_before_connecting() {
    let template = file("publish-bad", r#"{"op":"publish","data":"no payload"}"#);
    for (args, message) in [
        (
            vec!["broadcast", "ws://127.0.0.1:9/", "--ready-when", "op=x"],
            "a JSON pointer",
        ),
        (
            vec!["broadcast", "ws://127.0.0.1:9/", "--ready-when", "/op"],
            "expected POINTER=VALUE",
        ),
        (
            vec![
                "broadcast",
                "ws://127.0.0.1:9/",
                "--payload-at",
                "/payload/data",
                "--publish-template",
                &template,
            ],
            "no {payload} where the payload goes",
        ),
        (
            vec![
                "broadcast",
                "ws://127.0.0.1:9/",
                "--on-open",
                "/nonexistent/file",
            ],
            "--on-open /nonexistent/file",
        ),
        (
            vec![
                "echo",
                "ws://127.0.0.1:9/",
                "--binary",
                "--protocol",
                "socketio",
            ],
            "--binary cannot be used",
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
    let _ = std::fs::remove_file(template);
}
