//! `broadcast` over several server nodes: subscribers spread over two addresses get delivery
//! latency per node, `--publisher-url` sends the publishers to another server, and (when
//! `redis-server` is installed) a publisher on one uringcast node reaches subscribers on
//! another through Redis, with nothing missing.

#[path = "traffic/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "traffic/peers.rs"]
#[allow(dead_code)]
mod peers;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::Message;
use uringcast::config::Mode;
use uringcast::server::{self, Server, ServerHandle};

use self::harness::{assert_exact, describe, load, run_json, serial};
use self::peers::{runtime, serve_broadcast, Topics};

const REDIS: &str = "/usr/bin/redis-server";

/// One tungstenite broadcast server listening on 127.0.0.1:P and 127.0.0.2:P, its topics
/// shared: the port, and each address's accepted connections.
fn two_address_broadcast(rt: &Runtime) -> (u16, Arc<AtomicU64>, Arc<AtomicU64>) {
    let first = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let port = first.local_addr().expect("an address").port();
    let second = rt
        .block_on(TcpListener::bind(("127.0.0.2", port)))
        .expect("127.0.0.2 takes the same port");
    let topics: Topics = Arc::default();
    let (on_first, on_second) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    serve_broadcast(rt, first, Arc::clone(&topics), Arc::clone(&on_first));
    serve_broadcast(rt, second, topics, Arc::clone(&on_second));
    (port, on_first, on_second)
}

/// The `nodes` of an exact run, checked against its totals: counts and histograms add up
/// exactly, and each node's latencies are those of its own deliveries.
fn nodes_adding_up(json: &Value) -> Vec<Value> {
    let nodes = json["nodes"].as_array().expect("nodes").clone();
    let sum = |key: &dyn Fn(&Value) -> u64| nodes.iter().map(key).sum::<u64>();
    assert_eq!(
        sum(&|n| n["received"].as_u64().unwrap()),
        json["received"].as_u64().unwrap(),
        "{json:#}"
    );
    assert_eq!(
        sum(&|n| n["latency_us"]["count"].as_u64().unwrap()),
        json["latency_us"]["count"].as_u64().unwrap(),
        "{json:#}"
    );
    assert_eq!(
        sum(&|n| n["expected"].as_u64().unwrap()),
        json["expected"].as_u64().unwrap()
    );
    assert_eq!(
        sum(&|n| n["missing"].as_u64().unwrap()),
        json["missing"].as_u64().unwrap()
    );
    assert_eq!(
        sum(&|n| n["subscribers"].as_u64().unwrap()),
        json["settings"]["subscribers"].as_u64().unwrap()
    );
    for n in &nodes {
        let address = n["address"].as_str().expect("address");
        assert!(
            json["histograms"][format!("latency_us@{address}")].is_string(),
            "{address}'s histogram"
        );
        assert_eq!(
            n["latency_us"]["count"], n["received"],
            "{address}: {json:#}"
        );
        for key in ["p50", "p90", "p99", "p999", "p9999", "max"] {
            assert!(n["latency_us"][key].is_u64(), "{address}: latency_us.{key}");
        }
    }
    nodes
}

#[test]
fn subscribers_over_two_addresses_get_latency_per_node() {
    let _serial = serial();
    let rt = runtime();
    let (port, on_first, on_second) = two_address_broadcast(&rt);
    let url = format!("ws://127.0.0.1:{port}/room");
    let json = run_json(
        "nodes-two",
        &[
            "broadcast",
            &url,
            "--target-addresses",
            "127.0.0.1-127.0.0.2",
            "--subscribers",
            "20",
            "--publishers",
            "2",
            "--rate",
            "200",
            "--duration",
            "1",
        ],
    );
    assert_exact(&json, 22);
    let nodes = nodes_adding_up(&json);
    let got: Vec<(&str, u64)> = nodes
        .iter()
        .map(|n| {
            (
                n["address"].as_str().unwrap(),
                n["subscribers"].as_u64().unwrap(),
            )
        })
        .collect();
    let (a, b) = (format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}"));
    assert_eq!(got, [(a.as_str(), 10), (b.as_str(), 10)]);
    for n in &nodes {
        assert_eq!(n["missing"], 0);
        assert!(n["received"].as_u64().unwrap() > 0, "{n}");
    }
    // 10 subscribers on each, and the 2 publishers round-robin too.
    assert_eq!(on_first.load(Ordering::Relaxed), 11);
    assert_eq!(on_second.load(Ordering::Relaxed), 11);
    assert!(json["settings"]["publisher_url"].is_null());
}

#[test]
fn publishers_connect_to_the_publisher_url() {
    let _serial = serial();
    let rt = runtime();
    let (port, on_first, on_second) = two_address_broadcast(&rt);
    let url = format!("ws://127.0.0.1:{port}/room");
    // No path: the publishers take the subscribers' topic.
    let publisher_url = format!("ws://127.0.0.2:{port}");
    let args = [
        "broadcast",
        &url,
        "--publisher-url",
        &publisher_url,
        "--subscribers",
        "12",
        "--publishers",
        "3",
        "--rate",
        "150",
        "--duration",
        "1",
    ];
    let json = run_json("nodes-publisher-url", &args);
    assert_exact(&json, 15);
    // Every subscriber on the URL's address, every publisher on the other one.
    assert_eq!(on_first.load(Ordering::Relaxed), 12);
    assert_eq!(on_second.load(Ordering::Relaxed), 3);
    assert_eq!(
        json["settings"]["publisher_url"],
        format!("ws://127.0.0.2:{port}/room")
    );
    let nodes = nodes_adding_up(&json);
    assert_eq!(nodes.len(), 1, "{json:#}");
    assert_eq!(nodes[0]["address"], format!("127.0.0.1:{port}"));
    assert_eq!(nodes[0]["subscribers"], 12);

    // The text report has the node's line.
    let output = load(&args[..]);
    assert!(output.status.success(), "{}", describe(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!("node      127.0.0.1:{port}: 12 subscribers")),
        "{text}"
    );
    assert!(text.contains(&format!("publisher(s) on ws://127.0.0.2:{port}/room")));
}

#[test]
fn a_publisher_url_that_misses_the_topic_is_refused() {
    for (extra, says) in [
        (
            vec!["--publisher-url", "ws://127.0.0.1:9/other"],
            "topic /other is not the subscribers' /room",
        ),
        (
            vec!["--publisher-url", "wss://127.0.0.1:9/room"],
            "must be too",
        ),
        (
            vec!["--publisher-url", "ws://127.0.0.1:9", "--publishers", "0"],
            "needs WebSocket publishers",
        ),
        (
            vec![
                "--publisher-url",
                "ws://127.0.0.1:9",
                "--publish-url",
                "http://127.0.0.1:9/publish/room",
            ],
            "cannot be used with",
        ),
    ] {
        let mut args = vec!["broadcast", "ws://127.0.0.1:9/room", "--quiet"];
        args.extend(extra);
        let output = load(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        if !says.contains("used with") {
            assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
            // Refused before anything is set up.
            assert!(output.stdout.is_empty(), "{}", describe(&output));
        }
    }
}

/// A `redis-server` on a free port, stopped on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// Starts one and waits (at most 10 s) for it to say it accepts connections.
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new(REDIS)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let stdout = child.stdout.take().expect("its stdout");
        let (tx, rx) = mpsc::channel();
        // Reads to the end, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Ready to accept connections") {
                    let _ = tx.send(());
                }
            }
        });
        let redis = Self { child, port };
        rx.recv_timeout(Duration::from_secs(10))
            .expect("redis-server ready within 10 s");
        redis
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(listen: SocketAddr, broker: &str) -> ServerHandle {
    let config = Server::builder()
        .listen(listen)
        .workers(1)
        .mode(Mode::Broadcast)
        .ping_interval(None)
        .broker(broker)
        .build()
        .expect("a valid configuration");
    server::spawn(config).expect("the node starts")
}

/// Connects a subscriber on `to` (node `b`), waits until `b`'s link holds the topic at the
/// broker, then checks that one probe published on `from` reaches it through the broker. The
/// subscriber's deliveries are read and dropped until the returned sender is dropped.
fn wait_for_the_link(
    rt: &Runtime,
    b: &ServerHandle,
    from: &str,
    to: &str,
) -> tokio::sync::oneshot::Sender<()> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let mut subscriber = rt.block_on(async {
        let (subscriber, _) = tokio_tungstenite::connect_async(to).await.expect("on B");
        subscriber
    });
    assert!(
        b.wait_broker_subscriptions(1, Duration::from_secs(10)),
        "B did not subscribe at the broker in 10 s"
    );
    let from = from.to_owned();
    rt.block_on(async move {
        let (mut publisher, _) = tokio_tungstenite::connect_async(&from).await.expect("on A");
        publisher.send(Message::text("probe")).await.expect("send");
        loop {
            let got = tokio::time::timeout(Duration::from_secs(10), subscriber.next())
                .await
                .expect("the probe crossed the broker within 10 s");
            match got {
                Some(Ok(Message::Text(t))) if t.as_str() == "probe" => break,
                Some(Ok(_)) => {}
                other => panic!("the subscriber on B ended: {other:?}"),
            }
        }
        drop(publisher);
        tokio::spawn(async move {
            let mut done = done_rx;
            loop {
                tokio::select! {
                    _ = &mut done => break,
                    got = subscriber.next() => if !matches!(got, Some(Ok(_))) { break },
                }
            }
            let _ = subscriber.close(None).await;
        });
    });
    done_tx
}

#[test]
fn a_publisher_on_one_node_reaches_subscribers_on_another_through_redis() {
    if !std::path::Path::new(REDIS).exists() {
        println!("SKIP a_publisher_on_one_node_reaches_subscribers_on_another_through_redis: redis-server missing");
        return;
    }
    let _serial = serial();
    let redis = Redis::start();
    let broker = format!("redis://127.0.0.1:{}", redis.port);
    let a = node("127.0.0.1:0".parse().unwrap(), &broker);
    let port = a.local_addr().port();
    let b = node(SocketAddr::from(([127, 0, 0, 2], port)), &broker);
    let rt = runtime();
    let (on_a, on_b) = (
        format!("ws://127.0.0.1:{port}/room"),
        format!("ws://127.0.0.2:{port}/room"),
    );
    let hold = wait_for_the_link(&rt, &b, &on_a, &on_b);
    // Subscribers on both nodes, publishers on A: B's get everything through Redis.
    let json = run_json(
        "nodes-redis",
        &[
            "broadcast",
            &on_b,
            "--target-addresses",
            "127.0.0.1,127.0.0.2",
            "--publisher-url",
            &on_a,
            "--subscribers",
            "20",
            "--publishers",
            "2",
            "--rate",
            "200",
            "--duration",
            "1",
        ],
    );
    drop(hold);
    // The publishers published on A (and the probe), none on B.
    let publishes = |node: &ServerHandle| -> u64 {
        node.broadcast_stats()
            .iter()
            .map(|s| s.publishes.load(Ordering::Relaxed))
            .sum()
    };
    assert_eq!(publishes(&b), 0);
    assert!(publishes(&a) > json["sent"].as_u64().unwrap());
    assert_exact(&json, 22);
    let nodes = nodes_adding_up(&json);
    assert_eq!(nodes.len(), 2);
    let on_b = nodes
        .iter()
        .find(|n| n["address"] == format!("127.0.0.2:{port}"))
        .expect("node B");
    assert_eq!(on_b["subscribers"], 10);
    assert_eq!(on_b["missing"], 0, "{json:#}");
    // Every message each subscriber on B expected: 2 publishers' sends, to each of 10.
    assert_eq!(on_b["received"], on_b["expected"]);
    assert_eq!(
        on_b["expected"].as_u64().unwrap(),
        10 * json["sent"].as_u64().unwrap()
    );
    b.shutdown();
    a.shutdown();
}

/// An outside publisher's messages, owed to every subscriber with `--expect N`: a publisher
/// process at 10 messages/s for 1 s sends exactly 10 (its schedule ends with its duration,
/// however late its stop), and a subscriber process started with it at the same `--start-at`
/// counts all 10 per subscriber as owed. Owing 11 makes each subscriber miss one, which the
/// gaps between what arrived could never show.
#[test]
fn an_outside_publisher_owes_each_subscriber_what_expect_says() {
    let _serial = serial();
    let rt = runtime();
    let (port, _, _) = two_address_broadcast(&rt);
    let url = format!("ws://127.0.0.1:{port}/owed");
    for (owed, exact) in [("10", true), ("11", false)] {
        let at = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            + 3)
        .to_string();
        let path = harness::temp(&format!("expect-{owed}"), "json");
        let subscribers = Command::new(env!("CARGO_BIN_EXE_uringcast-load"))
            .args(["broadcast", &url, "--subscribers", "5", "--publishers", "0"])
            .args(["--expect", owed, "--duration", "1", "--drain-timeout", "2"])
            .args(["--start-at", &at, "--quiet", "--json"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("uringcast-load starts");
        let publisher = run_json(
            &format!("expect-publisher-{owed}"),
            &[
                "broadcast",
                &url,
                "--subscribers",
                "1",
                "--publishers",
                "1",
                "--rate",
                "10",
                "--duration",
                "1",
                "--start-at",
                &at,
            ],
        );
        assert_eq!(publisher["sent"], 10, "{publisher:#}");
        let output = subscribers
            .wait_with_output()
            .expect("the subscribers finish");
        let json = harness::read_json(&path);
        assert_eq!(json["received"], 50, "{json:#}");
        if exact {
            assert!(output.status.success(), "{}", describe(&output));
            assert_eq!(json["expected"], 50, "{json:#}");
            for key in ["missing", "duplicated", "out_of_order", "corrupt"] {
                assert_eq!(json[key], 0, "{key}: {json:#}");
            }
        } else {
            assert!(!output.status.success(), "{json:#}");
            assert_eq!(
                (&json["expected"], &json["missing"]),
                (&55.into(), &5.into())
            );
        }
    }
}
