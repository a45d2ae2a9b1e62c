//! The `echo` and `broadcast` scenarios, run as the `uringcast-load` binary against servers
//! started here: an echo and a broadcast server written with tokio-tungstenite (independent of
//! uringcast's code), uringcast itself in-process, and an echo server that stalls for 200 ms
//! every second. Counts must be exact and the JSON report must have every documented field.
//!
//! The tests take a lock each, so their timings do not disturb one another on a small machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use uringcast::config::Mode;
use uringcast::server::{self, Server, ServerHandle};

/// The longest one load generator run may take here.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// The stalling server pauses this long every second.
const STALL: Duration = Duration::from_millis(200);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `uringcast-load ARGS`, waiting at most [`RUN_TIMEOUT`]; `interrupt_after` sends it a
/// SIGINT that long after the start.
fn load_with(args: &[&str], interrupt_after: Option<Duration>) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_uringcast-load"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("uringcast-load starts");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    if let Some(after) = interrupt_after {
        if let Ok(output) = rx.recv_timeout(after) {
            return output.expect("uringcast-load ran");
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    }
    match rx.recv_timeout(RUN_TIMEOUT) {
        Ok(output) => output.expect("uringcast-load ran"),
        Err(_) => {
            // The run is bounded: stop the child rather than leave it running.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("uringcast-load {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
    }
}

fn load(args: &[&str]) -> Output {
    load_with(args, None)
}

fn temp(name: &str, ext: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "uringcast-load-{name}-{}.{ext}",
        std::process::id()
    ))
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

/// Runs a scenario that must succeed and returns its JSON report.
fn run_json(name: &str, args: &[&str]) -> Value {
    let path = temp(name, "json");
    let mut all: Vec<&str> = args.to_vec();
    let path_text = path.to_str().expect("a UTF-8 temp path").to_owned();
    all.extend(["--json", &path_text, "--quiet"]);
    let output = load(&all);
    assert!(output.status.success(), "{}", describe(&output));
    read_json(&path)
}

/// Every key the issue promises scripts, with the right types.
fn assert_documented_keys(json: &Value, scenario: &str, pace: &str) {
    assert_eq!(json["scenario"], scenario);
    assert!(json["settings"].is_object(), "settings");
    assert_eq!(json["loop"], pace);
    let c = &json["connections"];
    for key in ["target", "reached"] {
        assert!(c[key].is_u64(), "connections.{key}");
    }
    for kind in ["refused", "timeout", "bad_handshake", "reset"] {
        assert!(c["failed"][kind].is_u64(), "connections.failed.{kind}");
    }
    for key in [
        "sent",
        "received",
        "expected",
        "missing",
        "duplicated",
        "out_of_order",
        "corrupt",
    ] {
        assert!(json[key].is_u64(), "{key}: {}", json[key]);
    }
    assert!(json["duration_s"].as_f64().expect("duration_s") > 0.0);
    assert!(json["throughput_per_s"].is_number(), "throughput_per_s");
    for key in ["p50", "p90", "p99", "p999", "p9999", "max", "count"] {
        assert!(json["latency_us"][key].is_u64(), "latency_us.{key}");
    }
    assert!(json.get("server").is_some(), "server (object or null)");
    assert_eq!(json["deflate_offered"], false, "deflate_offered");
    assert_eq!(json["deflate_connections"], 0, "deflate_connections");
    for key in ["wire_bytes_in", "payload_bytes_in"] {
        assert!(json[key].as_u64().is_some_and(|n| n > 0), "{key}");
    }
    // HTTP publishers send nothing over WebSocket but closes.
    for key in ["wire_bytes_out", "payload_bytes_out"] {
        assert!(json[key].is_u64(), "{key}");
    }
    // Plain frames: every payload byte and a header besides.
    let ratio = json["wire_ratio_in"].as_f64().expect("wire_ratio_in");
    assert!(ratio > 1.0, "wire_ratio_in {ratio}");
}

/// A run where every message arrived once, intact, in order.
fn assert_exact(json: &Value, connections: u64) {
    assert_eq!(json["connections"]["target"], connections, "{json:#}");
    assert_eq!(json["connections"]["reached"], connections, "{json:#}");
    let sent = json["sent"].as_u64().expect("sent");
    assert!(sent > 0, "{json:#}");
    assert_eq!(json["received"], json["expected"], "{json:#}");
    for key in ["missing", "duplicated", "out_of_order", "corrupt"] {
        assert_eq!(json[key], 0, "{key}: {json:#}");
    }
    assert_eq!(json["latency_us"]["count"], json["received"], "{json:#}");
    // Every connection's TCP connect and handshake measured once; a closing handshake for
    // each clean close.
    assert_eq!(
        json["handshake_latency_us"]["count"], connections,
        "{json:#}"
    );
    assert_eq!(json["connect_latency_us"]["count"], connections, "{json:#}");
    assert_eq!(
        json["close_latency_us"]["count"], json["connections"]["closed_clean"],
        "{json:#}"
    );
    assert_eq!(json["diagnostics"]["cq_overflow"], 0);
    assert_eq!(json["diagnostics"]["stale_completions"], 0);
}

/// An echo server on tokio-tungstenite; with `stall`, each echo waits while the flag is set.
fn tungstenite_echo(runtime: &Runtime, stall: Option<watch::Receiver<bool>>) -> SocketAddr {
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("an address");
    serve_echo(runtime, listener, stall, Arc::default());
    addr
}

/// Serves [`tungstenite_echo`] on `listener`, counting its accepted connections in `accepted`.
fn serve_echo(
    runtime: &Runtime,
    listener: TcpListener,
    stall: Option<watch::Receiver<bool>>,
    accepted: Arc<AtomicU64>,
) {
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::Relaxed);
            let stall = stall.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if let Some(stalled) = &stall {
                        // Wakes the moment the stall ends; no polling.
                        let mut stalled = stalled.clone();
                        if stalled.wait_for(|on| !*on).await.is_err() {
                            return;
                        }
                    }
                    if let Message::Close(_) = message {
                        let _ = ws.close(None).await;
                        return;
                    }
                    let data = matches!(message, Message::Text(_) | Message::Binary(_));
                    if data && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A flag set for [`STALL`] at the start of every second, for the length of a test. The
/// timer is the fault being injected (the system under test stalls on a clock), not a wait
/// standing in for a signal.
fn stall_flag(runtime: &Runtime) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if tx.send(true).is_err() {
                return;
            }
            tokio::time::sleep(STALL).await;
            if tx.send(false).is_err() {
                return;
            }
        }
    });
    rx
}

type Topics = Arc<Mutex<HashMap<String, Vec<UnboundedSender<Message>>>>>;

/// A broadcast server on tokio-tungstenite: the path is the topic; every message a connection
/// sends goes to every connection on its path, the sender included (as uringcast does). A
/// connection joins its topic before its 101 is sent, so it misses nothing published after.
#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
fn tungstenite_broadcast(runtime: &Runtime) -> SocketAddr {
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("an address");
    let topics: Topics = Arc::default();
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let topics = Arc::clone(&topics);
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let (tx, mut rx) = unbounded_channel::<Message>();
                let path = Arc::new(Mutex::new(String::new()));
                let joined = Arc::clone(&path);
                let join_topics = Arc::clone(&topics);
                let callback = move |request: &Request, response: Response| {
                    let topic = request.uri().path().to_owned();
                    join_topics
                        .lock()
                        .unwrap()
                        .entry(topic.clone())
                        .or_default()
                        .push(tx);
                    *joined.lock().unwrap() = topic;
                    Ok(response)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                let topic = path.lock().unwrap().clone();
                let (mut sink, mut stream) = ws.split();
                let writer = tokio::spawn(async move {
                    while let Some(message) = rx.recv().await {
                        let close = matches!(message, Message::Close(_));
                        if sink.send(message).await.is_err() || close {
                            return;
                        }
                    }
                });
                while let Some(Ok(message)) = stream.next().await {
                    match message {
                        Message::Text(_) | Message::Binary(_) => {
                            let subscribers = topics.lock().unwrap().get(&topic).cloned();
                            for tx in subscribers.into_iter().flatten() {
                                let _ = tx.send(message.clone());
                            }
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                // Leave the topic, answer the close, and let the writer end.
                if let Some(list) = topics.lock().unwrap().get_mut(&topic) {
                    list.retain(|tx| !tx.is_closed());
                }
                drop(writer.await);
            });
        }
    });
    addr
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn uringcast(mode: Mode, token: Option<&str>) -> ServerHandle {
    let config = Server::builder()
        .listen("127.0.0.1:0".parse().expect("a valid address"))
        .workers(1)
        .mode(mode)
        .ping_interval(None)
        .publish_token(token.map(str::to_owned))
        .build()
        .expect("a valid configuration");
    server::spawn(config).expect("the server starts")
}

#[test]
fn echo_closed_loop_against_tungstenite_is_exact() {
    let _serial = serial();
    let rt = runtime();
    let addr = tungstenite_echo(&rt, None);
    let url = format!("ws://{addr}/echo");
    let json = run_json(
        "echo-closed",
        &[
            "echo",
            &url,
            "--connections",
            "20",
            "--inflight",
            "4",
            "--size",
            "100",
            "--duration",
            "1",
            "--threads",
            "2",
        ],
    );
    assert_documented_keys(&json, "echo", "closed");
    assert_exact(&json, 20);
    assert_eq!(json["sent"], json["received"]);
    assert_eq!(json["settings"]["inflight"], 4);
    assert_eq!(json["settings"]["size"], 100);
    assert!(json["server"].is_null());
}

#[test]
fn connections_spread_over_target_addresses() {
    let _serial = serial();
    let rt = runtime();
    // One echo server listening on two loopback addresses, same port.
    let first = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let port = first.local_addr().expect("an address").port();
    let second = rt
        .block_on(TcpListener::bind(("127.0.0.2", port)))
        .expect("127.0.0.2 takes the same port");
    let (on_first, on_second) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    serve_echo(&rt, first, None, Arc::clone(&on_first));
    serve_echo(&rt, second, None, Arc::clone(&on_second));
    let url = format!("ws://127.0.0.1:{port}/echo");
    let json = run_json(
        "echo-targets",
        &[
            "echo",
            &url,
            "--target-addresses",
            "127.0.0.1-127.0.0.2",
            "--connections",
            "20",
            "--inflight",
            "2",
            "--duration",
            "0.5",
            "--threads",
            "2",
        ],
    );
    assert_exact(&json, 20);
    assert_eq!(
        json["settings"]["target_addresses"],
        serde_json::json!([format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}")])
    );
    // Round-robin: each address took half of the connections.
    assert_eq!(on_first.load(Ordering::Relaxed), 10);
    assert_eq!(on_second.load(Ordering::Relaxed), 10);
    // A target address of another family, or off loopback, is a usage error.
    for bad in ["::1", "10.0.0.1"] {
        let output = load(&["echo", &url, "--target-addresses", bad, "--duration", "0.1"]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{bad}: {}",
            describe(&output)
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("--target-addresses"),
            "{bad}: {}",
            describe(&output)
        );
    }
}

#[test]
fn echo_open_loop_text_writes_hdr_and_plot() {
    let _serial = serial();
    let rt = runtime();
    let addr = tungstenite_echo(&rt, None);
    let url = format!("ws://{addr}/");
    let hdr = temp("echo-open", "hgrm");
    let plot = temp("echo-open", "svg");
    let json = run_json(
        "echo-open",
        &[
            "echo",
            &url,
            "--connections",
            "10",
            "--rate",
            "2000",
            "--text",
            "--size",
            "200",
            "--duration",
            "1",
            "--hdr",
            hdr.to_str().unwrap(),
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    assert_documented_keys(&json, "echo", "open");
    assert_exact(&json, 10);
    assert_eq!(json["sent"], json["received"]);
    let sent = json["sent"].as_u64().unwrap();
    assert!((1900..=2100).contains(&sent), "2,000/s for 1 s: {sent}");
    assert_eq!(json["settings"]["encoding"], "text");
    let hgrm = std::fs::read_to_string(&hdr).expect("the .hgrm was written");
    assert!(hgrm.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(
        hgrm.contains(&format!("Total count    = {sent:12}]")),
        "{hgrm}"
    );
    let svg = std::fs::read_to_string(&plot).expect("the SVG was written");
    assert!(svg.starts_with("<svg") && svg.contains("percentile"));
    let _ = std::fs::remove_file(hdr);
    let _ = std::fs::remove_file(plot);
}

/// `--payload json`: JSON ticks in text messages of the default 400 bytes, checked byte for
/// byte like the pattern, echoed by a server that does not know them.
#[test]
fn echo_json_ticks_against_tungstenite_are_exact() {
    let _serial = serial();
    let rt = runtime();
    let addr = tungstenite_echo(&rt, None);
    let url = format!("ws://{addr}/");
    let json = run_json(
        "echo-json",
        &[
            "echo",
            &url,
            "--connections",
            "10",
            "--inflight",
            "2",
            "--payload",
            "json",
            "--duration",
            "0.5",
        ],
    );
    assert_exact(&json, 10);
    assert_eq!(json["sent"], json["received"]);
    assert_eq!(json["settings"]["payload"], "json");
    assert_eq!(json["settings"]["encoding"], "text");
    assert_eq!(json["settings"]["size"], 400);
}

#[test]
fn broadcast_against_tungstenite_is_exact() {
    let _serial = serial();
    let rt = runtime();
    let addr = tungstenite_broadcast(&rt);
    let url = format!("ws://{addr}/");
    let json = run_json(
        "broadcast-tungstenite",
        &[
            "broadcast",
            &url,
            "--path",
            "/news",
            "--subscribers",
            "50",
            "--publishers",
            "2",
            "--rate",
            "200",
            "--duration",
            "1",
            "--threads",
            "2",
        ],
    );
    assert_documented_keys(&json, "broadcast", "open");
    assert_exact(&json, 52);
    let sent = json["sent"].as_u64().unwrap();
    assert!((190..=210).contains(&sent), "200/s for 1 s: {sent}");
    assert_eq!(json["expected"].as_u64().unwrap(), 50 * sent, "{json:#}");
    assert_eq!(json["settings"]["path"], "/news");
}

#[test]
fn echo_against_uringcast_is_exact() {
    let _serial = serial();
    let server = uringcast(Mode::Echo, None);
    let url = format!("ws://{}/", server.local_addr());
    let pid = std::process::id().to_string();
    let json = run_json(
        "echo-uringcast",
        &[
            "echo",
            &url,
            "--connections",
            "50",
            "--inflight",
            "8",
            "--duration",
            "1",
            "--server-pid",
            &pid,
        ],
    );
    server.shutdown();
    assert_documented_keys(&json, "echo", "closed");
    assert_exact(&json, 50);
    assert_eq!(json["sent"], json["received"]);
    let s = &json["server"];
    assert_eq!(s["pid"], std::process::id());
    assert!(s["cpu_s"].as_f64().is_some() && s["rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn broadcast_against_uringcast_is_exact_over_websocket_and_http() {
    let _serial = serial();
    let server = uringcast(Mode::Broadcast, Some("sekrit"));
    let addr = server.local_addr();
    let url = format!("ws://{addr}/room");
    let json = run_json(
        "broadcast-uringcast",
        &[
            "broadcast",
            &url,
            "--subscribers",
            "300",
            "--publishers",
            "3",
            "--rate",
            "300",
            "--duration",
            "1",
        ],
    );
    assert_documented_keys(&json, "broadcast", "open");
    assert_exact(&json, 303);
    let sent = json["sent"].as_u64().unwrap();
    assert_eq!(json["expected"].as_u64().unwrap(), 300 * sent);

    let publish = format!("http://{addr}/publish/room");
    let json = run_json(
        "broadcast-http",
        &[
            "broadcast",
            &url,
            "--subscribers",
            "100",
            "--publishers",
            "2",
            "--rate",
            "40",
            "--duration",
            "1",
            "--publish-url",
            &publish,
            "--publish-token",
            "sekrit",
        ],
    );
    server.shutdown();
    assert_documented_keys(&json, "broadcast", "open");
    assert_exact(&json, 100);
    let sent = json["sent"].as_u64().unwrap();
    assert!((35..=45).contains(&sent), "40/s for 1 s: {sent}");
    assert_eq!(json["expected"].as_u64().unwrap(), 100 * sent);
    assert_eq!(json["publish_errors"], 0);
}

/// A server that stops for 200 ms every second: the open loop's p99 shows the stall (latency
/// from the scheduled send), and the closed loop's throughput falls against the same server
/// without stalls.
#[test]
fn a_stalling_server_shows_in_open_loop_latency_and_closed_loop_throughput() {
    let _serial = serial();
    let rt = runtime();
    let stalling = tungstenite_echo(&rt, Some(stall_flag(&rt)));
    let steady = tungstenite_echo(&rt, None);

    let path = temp("stall-open", "json");
    let output = load(&[
        "echo",
        &format!("ws://{stalling}/"),
        "--connections",
        "10",
        "--rate",
        "1000",
        "--duration",
        "3",
        "--json",
        path.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let open = read_json(&path);
    assert_exact(&open, 10);
    let p99 = open["latency_us"]["p99"].as_u64().unwrap();
    assert!(
        p99 >= 150_000,
        "open loop p99 {p99} µs hides a 200 ms stall"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("loop      open"));

    let closed = |addr: SocketAddr, name: &str| {
        run_json(
            name,
            &[
                "echo",
                &format!("ws://{addr}/"),
                "--connections",
                "10",
                "--inflight",
                "1",
                "--duration",
                "2",
            ],
        )
    };
    let steady = closed(steady, "stall-closed-steady");
    let stalled = closed(stalling, "stall-closed-stalled");
    assert_exact(&stalled, 10);
    let rate = |j: &Value| j["throughput_per_s"].as_f64().unwrap();
    assert!(
        rate(&stalled) < 0.9 * rate(&steady),
        "closed loop: {} echoes/s stalling vs {} steady",
        rate(&stalled),
        rate(&steady)
    );
    // The closed loop hides most of the stall from its percentiles: the few messages in
    // flight wait, the rest are never sent.
    assert!(stalled["sent"].as_u64().unwrap() < steady["sent"].as_u64().unwrap());
}

#[test]
fn ctrl_c_prints_the_summary_of_what_ran() {
    let _serial = serial();
    let rt = runtime();
    let addr = tungstenite_echo(&rt, None);
    let url = format!("ws://{addr}/");
    let output = load_with(
        &[
            "echo",
            &url,
            "--connections",
            "5",
            "--duration",
            "30",
            "--quiet",
        ],
        Some(Duration::from_millis(1500)),
    );
    assert_eq!(output.status.code(), Some(130), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("interrupted by Ctrl-C"), "{stdout}");
    assert!(stdout.contains("latency µs p50"), "{stdout}");
}

#[test]
fn bad_flags_exit_2() {
    let _serial = serial();
    for (args, message) in [
        (
            vec!["echo", "ws://127.0.0.1:9/", "--size", "10"],
            "--size 10 is out of range",
        ),
        (
            vec!["echo", "ws://127.0.0.1:9/", "--text", "--size", "40"],
            "at least 48",
        ),
        (
            vec![
                "echo",
                "ws://127.0.0.1:9/",
                "--inflight",
                "2",
                "--rate",
                "5",
            ],
            "cannot be used",
        ),
        (
            vec!["echo", "ws://127.0.0.1:9/", "--text", "--binary"],
            "cannot be used",
        ),
        (
            vec!["echo", "ws://10.0.0.1:9/"],
            "is not a loopback address",
        ),
        (
            vec!["echo", "ws://127.0.0.1:9/", "--rate", "0"],
            "--rate 0 is out of range",
        ),
        (
            vec!["broadcast", "ws://127.0.0.1:9/", "--size", "23"],
            "at least 24",
        ),
        (
            vec![
                "broadcast",
                "ws://127.0.0.1:9/",
                "--payload",
                "json",
                "--size",
                "100",
            ],
            "at least 192",
        ),
        (
            vec!["echo", "ws://127.0.0.1:9/", "--payload", "json", "--binary"],
            "a tick is a text message",
        ),
        (
            vec!["echo", "ws://127.0.0.1:9/", "--payload", "xml"],
            "invalid value 'xml'",
        ),
        (
            vec!["broadcast", "ws://127.0.0.1:9/", "--path", "room"],
            "must start with /",
        ),
        (
            vec![
                "broadcast",
                "ws://127.0.0.1:9/",
                "--publish-url",
                "http://192.168.1.1/publish/x",
            ],
            "is not a loopback address",
        ),
        (
            vec![
                "broadcast",
                "ws://127.0.0.1:9/",
                "--publish-url",
                "ftp://127.0.0.1/x",
            ],
            "is not an http:// publish URL",
        ),
        (
            vec![
                "broadcast",
                "ws://127.0.0.1:9/",
                "--publish-url",
                "http://127.0.0.1:9/p",
                "--publishers",
                "0",
            ],
            "needs at least one publisher",
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
