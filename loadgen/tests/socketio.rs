//! `--protocol socketio` against the real `socket.io` server from npm
//! (scripts/peers/socketio/server.js, installed into target/peers/socketio by
//! scripts/peers/install.sh): connect, echo and broadcast exact, and the server's pings
//! answered. Without node or npm (or the package), each test is reported as ignored, with
//! the reason (a `libtest-mimic` harness: `harness = false` in loadgen/Cargo.toml).

// The shared harness; this file uses part of it.
#[allow(dead_code)]
#[path = "traffic/harness.rs"]
mod harness;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use libtest_mimic::{Arguments, Completion, Trial};

use self::harness::{assert_exact, describe, load, read_json, run_json, serial, temp};

fn main() -> std::process::ExitCode {
    let args = Arguments::from_args();
    let trials = [
        (
            "echo_over_socketio_is_exact",
            echo_over_socketio_is_exact as fn(SocketIo),
        ),
        (
            "broadcast_over_socketio_rooms_is_exact",
            broadcast_over_socketio_rooms_is_exact,
        ),
        (
            "connections_answer_the_servers_pings",
            connections_answer_the_servers_pings,
        ),
    ]
    .into_iter()
    .map(|(name, test)| {
        Trial::ignorable_test(name, move || {
            let _serial = serial();
            let env: &[(&str, &str)] = match name {
                "echo_over_socketio_is_exact" => &[("MODE", "echo")],
                // A ping every 200 ms, unanswered within 1 s closes the connection: without
                // pongs every connection is gone after 1.2 s, well inside the 3 s hold, while
                // a busy machine (CI) still answers in time.
                "connections_answer_the_servers_pings" => {
                    &[("PING_INTERVAL_MS", "200"), ("PING_TIMEOUT_MS", "1000")]
                }
                _ => &[],
            };
            match SocketIo::start(env) {
                Ok(server) => {
                    test(server);
                    Ok(Completion::Completed)
                }
                Err(reason) => Ok(Completion::ignored_with(reason)),
            }
        })
    })
    .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// The repository's root (loadgen's parent).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadgen is in the repository")
        .to_path_buf()
}

/// A `socket.io` server on a free loopback port, killed on drop.
struct SocketIo {
    child: Child,
    port: u16,
}

impl SocketIo {
    /// Starts the peer with `env`; the reason to ignore the test without node, npm or the
    /// package.
    fn start(env: &[(&str, &str)]) -> Result<Self, String> {
        let installed = Command::new("bash")
            .arg("-c")
            .arg(". scripts/peers/install.sh && peer_install socketio")
            .current_dir(root())
            .stdout(Stdio::null())
            .status();
        let modules = root().join("target/peers/socketio/node_modules");
        let node = Command::new("node").arg("--version").output();
        if node.is_err()
            || !installed.is_ok_and(|s| s.success())
            || !modules.join("socket.io").is_dir()
        {
            return Err("node, npm or the socket.io package from npm missing".into());
        }
        let mut child = Command::new("node")
            .arg(root().join("scripts/peers/socketio/server.js"))
            .env("PORT", "0")
            .env("NODE_PATH", &modules)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the server's first line");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Ok(Self { child, port })
    }

    fn url(&self, query: &str) -> String {
        format!(
            "ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket{query}",
            self.port
        )
    }
}

impl Drop for SocketIo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn echo_over_socketio_is_exact(server: SocketIo) {
    let url = server.url("");
    let json = run_json(
        "socketio-echo",
        &[
            "echo",
            &url,
            "--protocol",
            "socketio",
            "--connections",
            "10",
            "--inflight",
            "2",
            "--duration",
            "1",
            "--payload",
            "json",
        ],
    );
    assert_exact(&json, 10);
    assert_eq!(json["sent"], json["received"]);
    assert_eq!(json["settings"]["protocol"], "socketio");
}

fn broadcast_over_socketio_rooms_is_exact(server: SocketIo) {
    // Subscribers in the room `news`; publishers emit into it without joining it.
    let subscribers = server.url("&topic=news");
    let publishers = server.url("&topic=news&publish=1");
    let json = run_json(
        "socketio-broadcast",
        &[
            "broadcast",
            &subscribers,
            "--publisher-url",
            &publishers,
            "--protocol",
            "socketio",
            "--subscribers",
            "30",
            "--publishers",
            "2",
            "--rate",
            "200",
            "--duration",
            "1",
        ],
    );
    assert_exact(&json, 32);
    let sent = json["sent"].as_u64().unwrap();
    assert_eq!(json["expected"].as_u64().unwrap(), 30 * sent, "{json:#}");
}

/// With a ping every 200 ms (main's environment), unanswered within 1 s: a hold of 3 s keeps
/// the connections only if the pings get their pongs.
fn connections_answer_the_servers_pings(server: SocketIo) {
    let url = server.url("&topic=idle");
    let path = temp("socketio-connect", "json");
    let path_text = path.to_str().unwrap().to_owned();
    let output = load(&[
        "connect",
        &url,
        "--protocol",
        "socketio",
        "--connections",
        "20",
        "--duration",
        "3",
        "--json",
        &path_text,
        "--quiet",
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let json = read_json(&path);
    assert_eq!(json["connections"]["reached"], 20, "{json:#}");
    assert_eq!(json["connections"]["dropped"], 0, "{json:#}");
}
