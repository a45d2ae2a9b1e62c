//! `uringcast-load merge` end to end: two `echo` processes started together with `--start-at`
//! against one uringcast server in-process, each writing `--json`, merged into one report whose
//! counts and histogram are the sums of theirs. And the refusals: a start time already past,
//! reports of different settings.

// The shared harness and servers; this file uses part of them.
#[allow(dead_code)]
#[path = "traffic/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "traffic/peers.rs"]
mod peers;

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use uringcast::config::Mode;

use self::harness::{assert_exact, describe, load, read_json, serial, temp};
use self::peers::uringcast;

/// How far ahead the processes are told to start: time enough for both to connect their few
/// connections on a busy machine. A start that passes while connecting fails the run (exit 2),
/// so a machine too slow for this fails the test rather than passing it untogether.
const START_AHEAD_S: f64 = 4.0;

fn now_unix_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs_f64()
}

fn count(json: &Value, pointer: &str) -> u64 {
    json.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} in {json:#}"))
}

#[test]
fn two_echo_processes_started_together_merge_into_their_sum() {
    let _serial = serial();
    let server = uringcast(Mode::Echo, None);
    let url = format!("ws://{}/", server.local_addr());
    let start_at = (now_unix_s() + START_AHEAD_S).floor() + 1.0;
    let start_text = format!("{start_at}");
    let paths = [temp("merge-a", "json"), temp("merge-b", "json")];
    let outputs: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = [("12", "1"), ("8", "2")]
            .into_iter()
            .zip(&paths)
            .map(|((connections, threads), path)| {
                let (url, start) = (&url, &start_text);
                scope.spawn(move || {
                    load(&[
                        "echo",
                        url,
                        "--connections",
                        connections,
                        "--threads",
                        threads,
                        "--inflight",
                        "4",
                        "--duration",
                        "1",
                        "--start-at",
                        start,
                        "--quiet",
                        "--json",
                        path.to_str().expect("a UTF-8 temp path"),
                    ])
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("the run's thread"))
            .collect()
    });
    for output in &outputs {
        assert!(output.status.success(), "{}", describe(output));
    }
    // Kept for merge: read_json removes the file it reads.
    let texts: Vec<String> = paths
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("the JSON report was written"))
        .collect();
    let [a, b] = [&paths[0], &paths[1]].map(read_json);
    assert_exact(&a, 12);
    assert_exact(&b, 8);
    // Traffic started at the time asked for, in both, not before and not much after.
    for json in [&a, &b] {
        let started = json["started_at_unix_s"]
            .as_f64()
            .expect("started_at_unix_s");
        assert!(
            started >= start_at && started < start_at + 0.5,
            "started at {started}, asked for {start_at}"
        );
        assert_eq!(json["settings"]["start_at_unix_s"], start_at);
    }
    server.shutdown();

    for (path, text) in paths.iter().zip(&texts) {
        std::fs::write(path, text).expect("the report rewritten");
    }
    let merged_path = temp("merge-out", "json");
    let hgrm_path = temp("merge-out", "hgrm");
    let path_str = |p: &std::path::PathBuf| p.to_str().expect("a UTF-8 temp path").to_owned();
    let (pa, pb, pm, ph) = (
        path_str(&paths[0]),
        path_str(&paths[1]),
        path_str(&merged_path),
        path_str(&hgrm_path),
    );
    let output = load(&["merge", &pa, &pb, "--json", &pm, "--hdr", &ph]);
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("20 connections"), "{stdout}");
    assert!(stdout.contains("2 reports merged"), "{stdout}");
    let merged = read_json(&merged_path);

    for key in ["/sent", "/received", "/expected", "/connections/target"] {
        assert_eq!(
            count(&merged, key),
            count(&a, key) + count(&b, key),
            "{key}"
        );
    }
    let latency_count = count(&a, "/latency_us/count") + count(&b, "/latency_us/count");
    assert!(latency_count > 0);
    assert_eq!(count(&merged, "/latency_us/count"), latency_count);
    assert_eq!(
        count(&merged, "/received"),
        latency_count,
        "one latency per echo"
    );
    assert_exact(&merged, 20);
    assert_eq!(merged["settings"]["connections"], 20);
    assert_eq!(merged["merged_from"].as_array().map(Vec::len), Some(2));
    // The merged histogram's own count, from its percentile text.
    let hgrm = std::fs::read_to_string(&hgrm_path).expect("the .hgrm was written");
    let _ = std::fs::remove_file(&hgrm_path);
    let total = hgrm
        .lines()
        .find_map(|line| line.split("Total count").nth(1))
        .and_then(|tail| {
            tail.trim_matches(|c: char| c == '=' || c == ']' || c.is_whitespace())
                .parse::<u64>()
                .ok()
        });
    assert_eq!(total, Some(latency_count), "{hgrm}");

    // Reports of another message size do not add up: refused, naming the field, exit 2.
    let mut other: Value = serde_json::from_str(&texts[1]).expect("JSON");
    other["settings"]["size"] = 4096.into();
    std::fs::write(&paths[1], other.to_string()).expect("the report rewritten");
    let output = load(&["merge", &pa, &pb]);
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("settings.size is 4096"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_start_time_already_past_is_refused() {
    let _serial = serial();
    let past = format!("{}", now_unix_s().floor() - 10.0);
    // Nothing listens there: the time is refused before anything connects.
    let output = load(&[
        "echo",
        "ws://127.0.0.1:9/",
        "--duration",
        "1",
        "--start-at",
        &past,
        "--quiet",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in the past"), "{stderr}");
}
