//! Running `uringcast-load` and reading what it reports: each run bounded in time, its JSON
//! report read back, and the assertions every exact run must pass.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

/// The longest one load generator run may take here.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `uringcast-load ARGS`, waiting at most [`RUN_TIMEOUT`]; `interrupt_after` sends it a
/// SIGINT that long after the start.
pub fn load_with(args: &[&str], interrupt_after: Option<Duration>) -> Output {
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

pub fn load(args: &[&str]) -> Output {
    load_with(args, None)
}

pub fn temp(name: &str, ext: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "uringcast-load-{name}-{}.{ext}",
        std::process::id()
    ))
}

pub fn read_json(path: &PathBuf) -> Value {
    let text = std::fs::read_to_string(path).expect("the JSON report was written");
    let _ = std::fs::remove_file(path);
    serde_json::from_str(&text).expect("the report is valid JSON")
}

pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs a scenario that must succeed and returns its JSON report.
pub fn run_json(name: &str, args: &[&str]) -> Value {
    let path = temp(name, "json");
    let mut all: Vec<&str> = args.to_vec();
    let path_text = path.to_str().expect("a UTF-8 temp path").to_owned();
    all.extend(["--json", &path_text, "--quiet"]);
    let output = load(&all);
    assert!(output.status.success(), "{}", describe(&output));
    read_json(&path)
}

/// Every key the issue promises scripts, with the right types.
pub fn assert_documented_keys(json: &Value, scenario: &str, pace: &str) {
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
pub fn assert_exact(json: &Value, connections: u64) {
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
