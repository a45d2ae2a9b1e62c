//! Reports built as a run builds them, serialised, read back and merged.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::merge;
use super::outcome::zero;
use crate::error::{LoadError, EXIT_USAGE};
use crate::report::{histograms, Failure, Loop, TrafficReport};
use crate::scenario::traffic::{new_histogram, Deflate, NodeTally};

/// An echo run's settings, as `run_echo` writes them (the keys `merge` reads).
fn settings(connections: u64, size: u64) -> Value {
    json!({
        "url": "ws://127.0.0.1:9001/echo",
        "duration_s": 2.0,
        "start_at_unix_s": 1.7e9,
        "threads": 1,
        "sources": ["127.0.0.1"],
        "target_addresses": [],
        "payload": "stamp",
        "deflate": false,
        "deflate_send": false,
        "connections": connections,
        "size": size,
        "encoding": "text",
        "inflight": 4,
        "rate": null,
    })
}

/// An echo report of `connections` connections whose latencies are `values`, as JSON.
fn report(connections: u64, values: &[u64], settings: Value) -> Value {
    let mut outcome = zero(Deflate::Off);
    for &v in values {
        outcome.tally.record(v);
        outcome.handshake.record(v / 2 + 1).unwrap();
    }
    let n = values.len() as u64;
    outcome.tally.sent = n + 1;
    outcome.tally.received = n;
    outcome.tally.expected = n;
    outcome.tally.missing = 1;
    outcome.target = connections;
    outcome.reached = connections;
    outcome.established = connections;
    outcome.closed_clean = connections;
    outcome.failed.add(Failure::Reset, "connect: reset".into());
    outcome.wire.wire_bytes_in = 10 * n;
    outcome.wire.messages_in = n;
    outcome.duration = std::time::Duration::from_secs(2);
    outcome.started_at_unix_s = 1.7e9;
    outcome.client_cpu_s = 0.5;
    outcome.client_rss_bytes = Some(1000);
    outcome.diagnostics.cq_overflow = 1;
    TrafficReport {
        scenario: "echo",
        settings,
        pace: Loop::Closed,
        headline: String::new(),
        unit: "echoes",
        outcome,
        closed_loop: None,
        churn: None,
    }
    .json()
}

/// Latencies spread over several orders of magnitude, deterministic.
fn values(seed: u64, n: usize) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            1 + (x >> 33) % 10u64.pow(1 + (x >> 60) as u32 % 7)
        })
        .collect()
}

fn named(reports: Vec<Value>) -> Vec<(String, Value)> {
    reports
        .into_iter()
        .enumerate()
        .map(|(i, r)| (format!("r{i}.json"), r))
        .collect()
}

fn refusal(reports: Vec<Value>) -> String {
    match merge(&named(reports)) {
        Ok(_) => panic!("merged what should be refused"),
        Err(e) => {
            assert!(matches!(e, LoadError::Usage(_)), "{e:?}");
            assert_eq!(e.exit_code(), EXIT_USAGE);
            let message = e.to_string();
            assert!(!message.contains('\n'), "one line: {message}");
            message
        }
    }
}

#[test]
fn merged_histogram_is_that_of_all_samples() {
    let (a, b) = (values(1, 5000), values(2, 3000));
    let mut all = new_histogram();
    for v in a.iter().chain(&b) {
        all.record(*v).unwrap();
    }
    let (merged, json) = merge(&named(vec![
        report(10, &a, settings(10, 64)),
        report(6, &b, settings(6, 64)),
    ]))
    .unwrap();
    let latency: &Histogram<u64> = merged.latency();
    assert_eq!(latency.len(), 8000);
    assert_eq!(latency.min(), all.min());
    assert_eq!(latency.max(), all.max());
    for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
        assert_eq!(
            latency.value_at_quantile(q),
            all.value_at_quantile(q),
            "q {q}"
        );
    }
    assert_eq!(*latency, all);
    // The JSON written carries the same histogram and summary.
    assert_eq!(histograms::read(&json, "latency_us").unwrap(), all);
    assert_eq!(json["latency_us"]["count"], 8000);
    assert_eq!(json["latency_us"]["p99"], all.value_at_quantile(0.99));
    assert_eq!(
        json["handshake_latency_us"]["count"], 8000,
        "every histogram adds"
    );
    // A merged report merges again, to the same histogram.
    let (again, _) = merge(&named(vec![json])).unwrap();
    assert_eq!(*again.latency(), all);
}

#[test]
fn counts_sum_and_connection_counts_may_differ() {
    let (merged, json) = merge(&named(vec![
        report(10, &values(3, 100), settings(10, 64)),
        report(6, &values(4, 50), settings(6, 64)),
    ]))
    .unwrap();
    assert_eq!(json["received"], 150);
    assert_eq!(json["sent"], 152);
    assert_eq!(json["missing"], 2);
    assert_eq!(json["connections"]["target"], 16);
    assert_eq!(json["connections"]["reached"], 16);
    assert_eq!(json["connections"]["closed_clean"], 16);
    assert_eq!(json["connections"]["failed"]["reset"], 2);
    assert_eq!(json["connections"]["failure_details"]["connect: reset"], 2);
    assert_eq!(json["wire_bytes_in"], 1500);
    assert_eq!(json["messages_in"], 150);
    assert_eq!(json["client"]["cpu_s"], 1.0);
    assert_eq!(json["client"]["rss_bytes"], 2000);
    assert_eq!(json["diagnostics"]["cq_overflow"], 2);
    assert_eq!(json["settings"]["connections"], 16);
    assert_eq!(json["settings"]["threads"], 2);
    assert_eq!(json["settings"]["size"], 64);
    assert_eq!(json["duration_s"], 2.0);
    assert_eq!(json["merged_from"].as_array().unwrap().len(), 2);
    assert_eq!(json["merged_from"][1]["received"], 50);
    // Two processes over the same 2 s: the throughput is the sum of theirs.
    assert!((merged.throughput() - 75.0).abs() < 1e-9);
    let text = merged.text();
    assert!(
        text.starts_with("echo ws://127.0.0.1:9001/echo: 16 connections, 64 B text messages"),
        "{text}"
    );
    assert!(text.contains("2 reports merged"), "{text}");
    assert!(text.contains("messages  sent 152 received 150 expected 150: missing 2"));
    assert!(text.contains("(n=150)"), "{text}");
}

#[test]
fn a_settings_mismatch_is_refused_naming_the_field() {
    let message = refusal(vec![
        report(10, &values(5, 10), settings(10, 64)),
        report(10, &values(6, 10), settings(10, 128)),
    ]);
    assert!(message.contains("settings.size"), "{message}");
    assert!(
        message.contains("64") && message.contains("128"),
        "{message}"
    );
    assert!(message.starts_with("r1.json"), "{message}");

    let mut other_path = settings(10, 64);
    other_path["url"] = "ws://127.0.0.2:9001/other".into();
    let message = refusal(vec![
        report(10, &values(5, 10), settings(10, 64)),
        report(10, &values(6, 10), other_path),
    ]);
    assert!(message.contains("settings.url's path"), "{message}");
    assert!(message.contains("\"/echo\"") && message.contains("\"/other\""));

    let mut open = report(10, &values(6, 10), settings(10, 64));
    open["loop"] = "open".into();
    let message = refusal(vec![report(10, &values(5, 10), settings(10, 64)), open]);
    assert!(message.contains("loop is \"open\""), "{message}");

    // Echo's --rate is the process's total: each connection's share must match.
    let open = |connections: u64, rate: f64| {
        let mut s = settings(connections, 64);
        s["inflight"] = Value::Null;
        s["rate"] = rate.into();
        let mut r = report(connections, &values(7, 10), s);
        r["loop"] = "open".into();
        r
    };
    let (_, json) = merge(&named(vec![open(10, 1000.0), open(6, 600.0)])).unwrap();
    assert_eq!(json["settings"]["rate"], 1600.0);
    let message = refusal(vec![open(10, 1000.0), open(6, 1000.0)]);
    assert!(
        message.contains("settings.rate per connection"),
        "{message}"
    );
    assert!(
        message.contains("100.0") && message.contains("166.66"),
        "{message}"
    );

    // Another loopback address with the same path: the same server (--target-addresses), accepted.
    let mut other_host = settings(10, 64);
    other_host["url"] = "ws://127.0.0.2:9001/echo".into();
    let (_, json) = merge(&named(vec![
        report(10, &values(5, 10), settings(10, 64)),
        report(10, &values(6, 10), other_host),
    ]))
    .unwrap();
    assert!(json["settings"]["url"].is_null());
}

#[test]
fn a_report_of_another_scenario_is_refused() {
    let mut broadcast = report(10, &values(6, 10), settings(10, 64));
    broadcast["scenario"] = "broadcast".into();
    let message = refusal(vec![
        report(10, &values(5, 10), settings(10, 64)),
        broadcast,
    ]);
    assert!(message.contains("scenario is \"broadcast\""), "{message}");
    assert!(message.contains("\"echo\""), "{message}");

    // Broadcast processes take a topic each: their paths may differ; their size may not.
    let broadcast = |topic: &str, size: u64| {
        let mut s = settings(10, size);
        s["url"] = format!("ws://127.0.0.1:9001/{topic}").into();
        s["path"] = format!("/{topic}").into();
        s["subscribers"] = 9.into();
        s["publishers"] = 1.into();
        s["publish"] = "websocket".into();
        s["rate"] = 50.0.into();
        s["inflight"] = Value::Null;
        let mut r = report(10, &values(8, 10), s);
        r["scenario"] = "broadcast".into();
        r["loop"] = "open".into();
        r
    };
    let (merged, json) = merge(&named(vec![broadcast("a", 64), broadcast("b", 64)])).unwrap();
    assert_eq!(json["settings"]["subscribers"], 18);
    assert_eq!(json["settings"]["rate"], 100.0);
    assert!(json["settings"]["path"].is_null());
    assert_eq!(merged.unit, "deliveries");
    let text = merged.text();
    assert!(
        text.starts_with(
            "broadcast (several URLs): 18 subscribers, 2 WebSocket publisher(s) at 100 \
             messages/s in total"
        ),
        "{text}"
    );
    let message = refusal(vec![broadcast("a", 64), broadcast("b", 128)]);
    assert!(message.contains("settings.size is 128"), "{message}");
    // Subscriber processes of an outside publisher: their rate setting is not what was sent.
    let outside = |topic: &str| {
        let mut r = broadcast(topic, 64);
        r["settings"]["publishers"] = 0.into();
        r["settings"]["publish"] = "external".into();
        r
    };
    let (merged, _) = merge(&named(vec![outside("a"), outside("b")])).unwrap();
    let text = merged.text();
    assert!(
        text.contains("0 outside publisher(s) publishing elsewhere,"),
        "{text}"
    );

    let mut connect = report(10, &values(5, 10), settings(10, 64));
    connect["scenario"] = "connect".into();
    let message = refusal(vec![connect]);
    assert!(message.contains("a connect report"), "{message}");
}

#[test]
fn a_corrupt_or_missing_histogram_is_a_clear_error() {
    let good = || report(10, &values(5, 10), settings(10, 64));

    let mut corrupt = good();
    corrupt["histograms"]["latency_us"] = "bm90IGEgaGlzdG9ncmFt".into();
    let message = refusal(vec![good(), corrupt]);
    assert!(message.starts_with("r1.json: histograms.latency_us: not an HdrHistogram"));

    let mut not_base64 = good();
    not_base64["histograms"]["close_latency_us"] = "*** not base64 ***".into();
    let message = refusal(vec![not_base64]);
    assert!(
        message.contains("histograms.close_latency_us: not base64"),
        "{message}"
    );

    let mut without = good();
    without["histograms"]
        .as_object_mut()
        .unwrap()
        .remove("handshake_latency_us");
    let message = refusal(vec![good(), without]);
    assert!(
        message.contains("no histograms.handshake_latency_us"),
        "{message}"
    );

    let mut old = good();
    old.as_object_mut().unwrap().remove("histograms");
    let message = refusal(vec![old]);
    assert!(message.contains("no `histograms`"), "{message}");

    let mut no_count = good();
    no_count.as_object_mut().unwrap().remove("received");
    let message = refusal(vec![good(), no_count]);
    assert!(message.contains("no received"), "{message}");
}

/// A broadcast report whose subscribers spread over `nodes`: (address, latencies) each.
fn node_report(nodes: &[(&str, &[u64])]) -> Value {
    let mut outcome = zero(Deflate::Off);
    for (address, latencies) in nodes {
        let mut node = NodeTally::new((*address).to_owned());
        node.subscribers = 1;
        node.received = latencies.len() as u64;
        node.expected = latencies.len() as u64 + 1;
        node.missing = 1;
        for &l in *latencies {
            outcome.tally.record(l);
            node.latency.record(l).unwrap();
        }
        outcome.tally.received += node.received;
        outcome.tally.expected += node.expected;
        outcome.tally.missing += 1;
        outcome.tally.nodes.push(node);
    }
    outcome.duration = std::time::Duration::from_secs(2);
    let mut s = settings(nodes.len() as u64, 64);
    s["subscribers"] = nodes.len().into();
    s["publishers"] = 1.into();
    s["publish"] = "websocket".into();
    s["rate"] = 50.0.into();
    s["inflight"] = Value::Null;
    TrafficReport {
        scenario: "broadcast",
        settings: s,
        pace: Loop::Open,
        headline: String::new(),
        unit: "deliveries",
        outcome,
        closed_loop: None,
        churn: None,
    }
    .json()
}

#[test]
fn nodes_merge_by_address_with_their_histograms() {
    let (a, b, c) = (values(1, 300), values(2, 200), values(3, 100));
    let first = node_report(&[("127.0.0.1:9001", &a), ("127.0.0.2:9001", &b)]);
    let second = node_report(&[("127.0.0.2:9001", &c)]);
    assert_eq!(first["nodes"][1]["latency_us"]["count"], 200);
    let (merged, json) = merge(&named(vec![first, second])).unwrap();
    let nodes = json["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0]["address"], "127.0.0.1:9001");
    assert_eq!(nodes[1]["address"], "127.0.0.2:9001");
    assert_eq!(nodes[1]["subscribers"], 2);
    assert_eq!(nodes[1]["received"], 300);
    assert_eq!(nodes[1]["missing"], 2);
    // Exact: the merged node histogram is that of its samples from both reports.
    let mut exact = new_histogram();
    for v in b.iter().chain(&c) {
        exact.record(*v).unwrap();
    }
    let merged_node = &merged.outcome.tally.nodes[1].latency;
    assert_eq!(merged_node, &exact);
    assert_eq!(
        nodes[1]["latency_us"]["p99"],
        exact.value_at_quantile(0.99),
        "{json:#}"
    );
    let counts: u64 = nodes
        .iter()
        .map(|n| n["latency_us"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counts, json["latency_us"]["count"].as_u64().unwrap());
    assert!(merged
        .text()
        .contains("node      127.0.0.2:9001: 2 subscribers, received 300"));

    // A report without nodes among ones with: refused, in one line.
    let plain = node_report(&[]);
    assert!(plain["nodes"].is_null());
    let message = refusal(vec![node_report(&[("127.0.0.1:9001", &a)]), plain]);
    assert!(message.contains("r1.json does not"), "{message}");
    // A node without its histogram: a clear error.
    let mut lost = node_report(&[("127.0.0.1:9001", &a)]);
    lost["histograms"]
        .as_object_mut()
        .unwrap()
        .remove("latency_us@127.0.0.1:9001");
    let message = refusal(vec![lost]);
    assert!(
        message.contains("no histograms.latency_us@127.0.0.1:9001"),
        "{message}"
    );
}

/// A closed-loop broadcast report with P = `inflight` and `timed_out` publishes given up on.
fn closed_loop_report(inflight: u64, timed_out: u64) -> Value {
    let mut report = node_report(&[]);
    report["loop"] = "closed".into();
    let s = &mut report["settings"];
    s["rate"] = Value::Null;
    s["inflight"] = inflight.into();
    report["closed_loop"] = json!({
        "inflight": inflight,
        "publish_timeout_s": 5.0,
        "completed": 100,
        "timed_out": timed_out,
        "max_outstanding": inflight,
    });
    report
}

#[test]
fn closed_loop_broadcasts_merge_only_with_the_same_inflight() {
    let (merged, json) = merge(&named(vec![
        closed_loop_report(8, 1),
        closed_loop_report(8, 2),
    ]))
    .unwrap();
    assert_eq!(json["loop"], "closed");
    assert_eq!(json["settings"]["inflight"], 8);
    assert!(json["settings"]["rate"].is_null(), "{json:#}");
    let c = &json["closed_loop"];
    for (key, sum) in [
        ("inflight", 16),
        ("completed", 200),
        ("timed_out", 3),
        ("max_outstanding", 16),
    ] {
        assert_eq!(c[key], sum, "{key}: {json:#}");
    }
    assert!(merged.text().contains("closed loop: 16 in flight"));
    assert!(merged.headline.contains("with 8 in flight each run"));

    let message = refusal(vec![closed_loop_report(8, 0), closed_loop_report(1, 0)]);
    assert!(message.contains("settings.inflight is 1"), "{message}");
    // Open and closed loop do not add up either.
    let message = refusal(vec![closed_loop_report(8, 0), node_report(&[])]);
    assert!(message.contains("loop is \"open\""), "{message}");
}
