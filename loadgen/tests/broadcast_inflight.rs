//! `broadcast --inflight P` end to end against uringcast in `--mode broadcast` (in-process):
//! exact deliveries, and never more than P publishes outstanding, on one client thread and
//! with the subscribers spread over two. And its refusals.

// The shared harness and servers; this file uses part of them.
#[allow(dead_code)]
#[path = "traffic/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "traffic/peers.rs"]
mod peers;

use serde_json::Value;
use uringcast::config::Mode;

use self::harness::{assert_documented_keys, assert_exact, describe, load, run_json, serial};
use self::peers::uringcast;

#[test]
fn closed_loop_broadcast_is_exact_and_keeps_p_in_flight() {
    let _serial = serial();
    let server = uringcast(Mode::Broadcast, None);
    let url = format!("ws://{}/room", server.local_addr());
    for (name, threads, subscribers) in [("one-thread", "1", 200), ("two-threads", "2", 100)] {
        let json = run_json(
            &format!("broadcast-inflight-{name}"),
            &[
                "broadcast",
                &url,
                "--subscribers",
                &subscribers.to_string(),
                "--publishers",
                "8",
                "--inflight",
                "8",
                "--duration",
                "2",
                "--threads",
                threads,
            ],
        );
        assert_documented_keys(&json, "broadcast", "closed");
        assert_exact(&json, subscribers + 8);
        assert_closed_loop(&json, subscribers, 8);
    }
    server.shutdown();
}

/// What a closed-loop report must show with P = `inflight`: the settings, publishes that all
/// completed with at most P outstanding, and every one delivered to every subscriber.
fn assert_closed_loop(json: &Value, subscribers: u64, inflight: u64) {
    let s = &json["settings"];
    assert_eq!(s["inflight"], inflight, "{json:#}");
    assert_eq!(s["rate"], Value::Null, "{json:#}");
    let c = &json["closed_loop"];
    assert_eq!(c["inflight"], inflight, "{json:#}");
    let max = c["max_outstanding"].as_u64().expect("max_outstanding");
    assert!((1..=inflight).contains(&max), "{json:#}");
    assert_eq!(c["timed_out"], 0, "{json:#}");
    let sent = json["sent"].as_u64().expect("sent");
    let completed = c["completed"].as_u64().expect("completed");
    // Those in flight at the end of the traffic were never retired, at most P of them.
    assert!(
        completed <= sent && sent - completed <= inflight,
        "{json:#}"
    );
    assert!(json["received"].as_u64().unwrap() > 0, "{json:#}");
    assert_eq!(json["expected"].as_u64().unwrap(), subscribers * sent);
    assert!(json["sent_per_s"].as_f64().unwrap() > 0.0, "{json:#}");
}

#[test]
fn closed_loop_refusals_exit_2() {
    let _serial = serial();
    for (args, message) in [
        (
            vec!["--inflight", "4", "--publishers", "8"],
            "--inflight 4 is fewer than --publishers 8",
        ),
        (vec!["--inflight", "8", "--rate", "5"], "cannot be used"),
        (
            vec!["--inflight", "8", "--publishers", "0"],
            "--inflight needs WebSocket publishers",
        ),
        (
            vec![
                "--inflight",
                "8",
                "--publish-url",
                "http://127.0.0.1:9/publish/room",
            ],
            "--inflight needs WebSocket publishers",
        ),
        (vec!["--inflight", "0"], "--inflight 0 is out of range"),
        (
            vec!["--publish-timeout", "1"],
            "required arguments were not provided",
        ),
    ] {
        let mut all = vec!["broadcast", "ws://127.0.0.1:9/room"];
        all.extend(&args);
        let output = load(&all);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{all:?}: {}",
            describe(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{all:?}: {stderr}");
        // Ours are one line (clap's own add a usage line).
        if message.starts_with("--inflight") {
            assert_eq!(stderr.trim().lines().count(), 1, "{all:?}: {stderr}");
        }
    }
}
