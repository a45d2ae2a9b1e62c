//! Real brokers for the scale-out tests, started by the test on free loopback ports and killed
//! on drop: `redis-server` alone, three of them as a Redis Cluster, or `nats-server`. A test
//! whose broker's binary is missing is ignored by the harness (main.rs) with the reason;
//! `Broker::start` still prints `SKIP <test>: <binary> missing` and returns `None` if asked
//! anyway (`scripts/brokers.sh install` installs them; `.ci/run` does).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// How long a broker may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Which broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Redis,
    Cluster,
    Nats,
}

impl Kind {
    pub(crate) const ALL: [Kind; 3] = [Kind::Redis, Kind::Cluster, Kind::Nats];

    fn binary(self) -> &'static str {
        match self {
            Kind::Redis | Kind::Cluster => "redis-server",
            Kind::Nats => "nats-server",
        }
    }

    /// The first binary this broker needs that is not installed, if any.
    pub(crate) fn missing(self) -> Option<&'static str> {
        let mut needed = vec![self.binary()];
        if self == Kind::Cluster {
            needed.push("redis-cli");
        }
        needed.into_iter().find(|binary| find(binary).is_none())
    }

    /// The metrics label the server gives this broker.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Cluster => "redis-cluster",
            Kind::Nats => "nats",
        }
    }
}

/// A running broker (one process, or three for a cluster).
pub(crate) struct Broker {
    pub(crate) kind: Kind,
    pub(crate) ports: Vec<u16>,
    children: Vec<Option<Child>>,
    dir: PathBuf,
    /// NATS only: whether JetStream is on (`-js`, stored under `dir`).
    jetstream: bool,
}

impl Broker {
    /// Starts a broker of `kind` for `test`, or prints `SKIP` and returns `None` when its
    /// binaries are not installed.
    pub(crate) fn start(kind: Kind, test: &str) -> Result<Option<Self>> {
        Self::start_js(kind, test, true)
    }

    /// [`start`](Self::start), a NATS server with JetStream on or off.
    pub(crate) fn start_js(kind: Kind, test: &str, jetstream: bool) -> Result<Option<Self>> {
        let mut needed = vec![kind.binary()];
        if kind == Kind::Cluster {
            needed.push("redis-cli");
        }
        for binary in needed {
            if find(binary).is_none() {
                println!("SKIP {test} ({kind:?}): {binary} missing");
                return Ok(None);
            }
        }
        let count = if kind == Kind::Cluster { 3 } else { 1 };
        let dir = std::env::temp_dir().join(format!(
            "uringcast-broker-{}-{}-{}",
            std::process::id(),
            test,
            kind.label()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut broker = Self {
            kind,
            ports: (0..count).map(|_| free_port()).collect::<Result<_>>()?,
            children: (0..count).map(|_| None).collect(),
            dir,
            jetstream,
        };
        broker.launch_all()?;
        if kind == Kind::Cluster {
            broker.create_cluster()?;
        }
        Ok(Some(broker))
    }

    /// The `--broker` URL.
    pub(crate) fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        match self.kind {
            Kind::Redis => format!("redis://{}", hosts[0]),
            Kind::Cluster => format!("redis+cluster://{}", hosts.join(",")),
            Kind::Nats => format!("nats://{}", hosts[0]),
        }
    }

    /// SIGKILLs every process of the broker and reaps it.
    pub(crate) fn kill(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same ports (a cluster from its nodes.conf files) and
    /// waits until it is ready.
    pub(crate) fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch_all()?;
        if self.kind == Kind::Cluster {
            self.wait_cluster_ok()?;
        }
        Ok(())
    }

    /// Publishes `payload` to the channel of `topic` under prefix `uringcast` as an outside
    /// backend would: `redis-cli PUBLISH`, `redis-cli -c SPUBLISH`, or a NATS `PUB` on a plain
    /// socket.
    pub(crate) fn publish_raw(&self, topic: &str, payload: &[u8]) -> Result<()> {
        match self.kind {
            Kind::Redis | Kind::Cluster => {
                let (command, follow) = if self.kind == Kind::Redis {
                    ("PUBLISH", None)
                } else {
                    ("SPUBLISH", Some("-c"))
                };
                let mut cmd = Command::new("redis-cli");
                cmd.args(["-h", "127.0.0.1", "-p", &self.ports[0].to_string()]);
                cmd.args(follow);
                cmd.arg("-x")
                    .arg(command)
                    .arg(format!("uringcast:{topic}"))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped());
                let mut child = cmd.spawn().context("redis-cli")?;
                child
                    .stdin
                    .take()
                    .expect("piped")
                    .write_all(payload)
                    .context("redis-cli's stdin")?;
                let out = child.wait_with_output()?;
                ensure!(
                    out.status.success(),
                    "redis-cli {command}: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
                Ok(())
            }
            Kind::Nats => {
                let mut stream = TcpStream::connect(("127.0.0.1", self.ports[0]))?;
                stream.set_read_timeout(Some(READY_TIMEOUT))?;
                let mut reader = BufReader::new(stream.try_clone()?);
                let mut line = String::new();
                reader.read_line(&mut line)?;
                ensure!(line.starts_with("INFO "), "NATS said {line:?}");
                let subject = nats_subject(topic);
                let mut out = format!(
                    "CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n",
                    payload.len()
                )
                .into_bytes();
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\nPING\r\n");
                stream.write_all(&out)?;
                loop {
                    line.clear();
                    ensure!(reader.read_line(&mut line)? > 0, "NATS closed");
                    if line.starts_with("PONG") {
                        return Ok(());
                    }
                    ensure!(!line.starts_with("-ERR"), "NATS: {line}");
                }
            }
        }
    }

    /// Runs `redis-cli ARGS` against the broker (following redirections on a cluster) and
    /// returns its output, trimmed; a Redis error is an error.
    pub(crate) fn redis_cli(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.ports[0].to_string()]);
        if self.kind == Kind::Cluster {
            cmd.arg("-c");
        }
        let out = cmd.args(args).output().context("redis-cli")?;
        let text = String::from_utf8(out.stdout)?.trim().to_owned();
        ensure!(
            out.status.success() && !text.starts_with("ERR") && !text.starts_with("(error)"),
            "redis-cli {args:?}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(text)
    }

    /// Subscribers the broker counts on `topic`'s channel (`PUBSUB NUMSUB` / `SHARDNUMSUB`;
    /// NATS from its monitoring port is not started here, so `None`).
    pub(crate) fn channel_subscribers(&self, topic: &str) -> Result<Option<u64>> {
        let command = match self.kind {
            Kind::Redis => "NUMSUB",
            // A master counts only the shard channels of its own slots: ask all of them.
            Kind::Cluster => "SHARDNUMSUB",
            Kind::Nats => return Ok(None),
        };
        let mut total = 0;
        for port in &self.ports {
            let out = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["PUBSUB", command, &format!("uringcast:{topic}")])
                .output()?;
            let text = String::from_utf8(out.stdout)?;
            total += text
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<u64>().ok())
                .with_context(|| format!("PUBSUB {command}: {text:?}"))?;
        }
        Ok(Some(total))
    }

    /// The hash slot of `topic`'s channel (`CLUSTER KEYSLOT`), on a cluster.
    pub(crate) fn slot(&self, topic: &str) -> Result<u16> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.ports[0].to_string()])
            .args(["CLUSTER", "KEYSLOT", &format!("uringcast:{topic}")])
            .output()?;
        let text = String::from_utf8(out.stdout)?;
        text.trim()
            .parse()
            .with_context(|| format!("CLUSTER KEYSLOT: {text:?}"))
    }

    /// The masters (by port) that count a subscriber on `topic`'s shard channel.
    pub(crate) fn shard_holders(&self, topic: &str) -> Result<Vec<u16>> {
        let mut holders = Vec::new();
        for port in &self.ports {
            let out = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["PUBSUB", "SHARDNUMSUB", &format!("uringcast:{topic}")])
                .output()?;
            let text = String::from_utf8(out.stdout)?;
            let count: u64 = text
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse().ok())
                .with_context(|| format!("PUBSUB SHARDNUMSUB: {text:?}"))?;
            if count > 0 {
                holders.push(*port);
            }
        }
        Ok(holders)
    }

    fn launch_all(&mut self) -> Result<()> {
        for i in 0..self.ports.len() {
            let child = self.launch(i)?;
            self.children[i] = Some(child);
        }
        Ok(())
    }

    fn launch(&self, i: usize) -> Result<Child> {
        let port = self.ports[i].to_string();
        let mut cmd;
        let ready;
        match self.kind {
            Kind::Redis | Kind::Cluster => {
                cmd = Command::new(find("redis-server").expect("checked at start"));
                cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
                    .args(["--appendonly", "no", "--protected-mode", "no"])
                    .arg("--dir")
                    .arg(&self.dir);
                if self.kind == Kind::Cluster {
                    cmd.args(["--cluster-enabled", "yes"])
                        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                        .args(["--cluster-node-timeout", "2000"]);
                }
                ready = "Ready to accept connections";
            }
            Kind::Nats => {
                cmd = Command::new(find("nats-server").expect("checked at start"));
                cmd.args(["-a", "127.0.0.1", "-p", &port]);
                if self.jetstream {
                    cmd.arg("-js").arg("-sd").arg(self.dir.join("nats-js"));
                }
                ready = "Server is ready";
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let (tx, rx) = mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(ready) => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("{cmd:?} did not say {ready:?}; it said {seen:?}");
                }
            }
        }
        // Keep draining its output so that it never blocks on a full pipe.
        thread::spawn(move || for _line in rx {});
        Ok(child)
    }

    fn create_cluster(&self) -> Result<()> {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&hosts)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .context("redis-cli --cluster create")?;
        ensure!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.wait_cluster_ok()
    }

    /// Every master says `cluster_state:ok`. Redis gives no event for it: this asks each node,
    /// every 50 ms, for at most [`READY_TIMEOUT`].
    fn wait_cluster_ok(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut ok = true;
            for port in &self.ports {
                let out = Command::new("redis-cli")
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port.to_string(),
                        "CLUSTER",
                        "INFO",
                    ])
                    .output()?;
                ok &= String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok");
            }
            if ok {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A NATS subject as uringcast names a topic's (see `src/broker/nats.rs`).
pub(crate) fn nats_subject(topic: &str) -> String {
    let mut subject = String::from("uringcast.");
    for byte in topic.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            subject.push(char::from(byte));
        } else {
            subject += &format!("%{byte:02X}");
        }
    }
    subject
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `binary` on PATH, or in /usr/sbin and /usr/bin (Debian puts nats-server in /usr/sbin).
fn find(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(binary))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
