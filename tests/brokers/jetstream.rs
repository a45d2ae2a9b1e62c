//! Positions from NATS JetStream (`--broker nats://…` with `--history`): one stream over the
//! prefix's subjects gives every publication its stream sequence, every node agrees on it, a
//! client recovers on any node, a backend's plain `PUB` gets a position, a publication a node
//! missed is read back from the stream, and a stream made anew is a new epoch.
//!
//! A publication is lost on the way by a TCP proxy between one node and the server, cut while
//! another node publishes: the stream stores it, the cut node never receives its copy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::streams::{position, Sse};
use super::*;

/// The stream the nodes make, for prefix `uringcast`.
const STREAM: &str = "UC_uringcast";
/// The history flags of most nodes here.
const HISTORY: &[&str] = &["--history", "100"];

/// A broadcast node on the NATS server at `url`, as [`node`] makes one.
fn node_at(url: &str, extra: &[&str]) -> Result<Server> {
    let mut args = vec![
        "--mode",
        "broadcast",
        "--workers",
        "2",
        "--publish-token",
        TOKEN,
        "--client-publish",
        "all",
        "--broker",
        url,
    ];
    args.extend_from_slice(extra);
    Server::start_with(&args, |cmd| {
        cmd.env("RUST_LOG", "warn,async_nats=off");
    })
}

/// Two topics published in turn, so that each topic's positions are not consecutive: both
/// nodes give every publication the same position; a client that read to x3 on A resumes on
/// B, and on a node that never served the topic, with exactly x4 and x5; one that read only
/// to x1 (no longer kept: `--history 3`) is told it was not recovered.
pub(crate) async fn positions_agree_and_recovery_elsewhere_is_exact_or_reset(
    kind: Kind,
) -> Result<()> {
    with_broker(kind, "jetstream_recover", |broker| async move {
        let history = ["--history", "3"];
        let a = node(&broker, &history)?;
        let b = node(&broker, &history)?;
        let mut on_a = Sse::open(a.addr(), "/x").await?;
        let mut on_b = Sse::open(b.addr(), "/x").await?;
        wait_subscribed(a.addr(), 1).await?;
        wait_subscribed(b.addr(), 1).await?;
        for i in 1..=5 {
            publish_http(a.addr(), "x", &format!("x{i}")).await?;
            // Through the same node, so that the stream interleaves them in this order.
            publish_http(a.addr(), "y", &format!("y{i}")).await?;
        }
        let mut ids = Vec::new();
        for i in 1..=5 {
            let (from_a, from_b) = (on_a.event().await?, on_b.event().await?);
            ensure!(from_a.data == format!("x{i}"), "on A: {from_a:?}");
            ensure!(from_b.data == format!("x{i}"), "on B: {from_b:?}");
            ensure!(from_a.id == from_b.id, "A {from_a:?}, B {from_b:?}");
            ids.push(from_a.id);
        }
        let offsets: Vec<u64> = ids
            .iter()
            .map(|id| position(id).map(|p| p.1))
            .collect::<Result<_>>()?;
        ensure!(
            offsets.windows(2).all(|w| w[1] > w[0] + 1),
            "the stream's sequences, shared with topic y: {offsets:?}"
        );
        drop(on_b);
        let c = node(&broker, &history)?;
        for (who, addr) in [("B", b.addr()), ("C", c.addr())] {
            let mut resumed = Sse::open_from(addr, "/x", &ids[2]).await?;
            for i in 4..=5 {
                let event = resumed.event().await?;
                ensure!(
                    event.kind == "message"
                        && event.data == format!("x{i}")
                        && event.id == ids[i - 1],
                    "{who}: {event:?}, expected x{i} at {}",
                    ids[i - 1]
                );
            }
            let mut too_old = Sse::open_from(addr, "/x", &ids[0]).await?;
            let event = too_old.event().await?;
            ensure!(event.kind == "reset", "{who} from x1: {event:?}");
        }
        Ok(())
    })
    .await
}

/// A backend publishes with a plain NATS `PUB` to `uringcast.TOPIC`, no header: every node
/// delivers it at the same position, and a node's own publish follows at the next one.
pub(crate) async fn a_backends_plain_publish_gets_a_position(kind: Kind) -> Result<()> {
    with_broker(kind, "jetstream_plain", |broker| async move {
        let a = node(&broker, HISTORY)?;
        let b = node(&broker, HISTORY)?;
        let mut on_a = Sse::open(a.addr(), "/api").await?;
        let mut on_b = Sse::open(b.addr(), "/api").await?;
        wait_subscribed(a.addr(), 1).await?;
        wait_subscribed(b.addr(), 1).await?;
        broker.publish_raw("api", b"hello")?;
        publish_http(b.addr(), "api", "again").await?;
        let mut offsets = Vec::new();
        for text in ["hello", "again"] {
            let (from_a, from_b) = (on_a.event().await?, on_b.event().await?);
            ensure!(
                from_a.data == text && from_b.data == text,
                "{from_a:?} {from_b:?}"
            );
            ensure!(from_a.id == from_b.id, "{from_a:?} {from_b:?}");
            offsets.push(position(&from_a.id)?.1);
        }
        ensure!(
            offsets == [1, 2],
            "the stream's first two sequences: {offsets:?}"
        );
        Ok(())
    })
    .await
}

/// A publication the node missed (its connection to the server was cut while another node
/// published) is read from the stream and delivered in its place, before what followed it.
pub(crate) async fn a_publication_missed_on_the_way_is_repaired_from_the_stream(
    kind: Kind,
) -> Result<()> {
    with_broker(kind, "jetstream_repair", |broker| async move {
        let proxy = Proxy::start(broker.ports[0]).await?;
        let a = node(&broker, HISTORY)?;
        let b = node_at(&format!("nats://{}", proxy.addr), HISTORY)?;
        let mut on_b = Sse::open(b.addr(), "/gaps").await?;
        wait_subscribed(b.addr(), 1).await?;
        publish_http(a.addr(), "gaps", "first").await?;
        let first = on_b.event().await?;
        ensure!(first.data == "first", "{first:?}");

        proxy.cut();
        wait_metric(b.addr(), "uringcast_broker_connected", |n| n == 0).await?;
        publish_http(a.addr(), "gaps", "lost").await?;
        proxy.restore();
        wait_metric(b.addr(), "uringcast_broker_connected", |n| n == 1).await?;
        publish_http(a.addr(), "gaps", "after").await?;

        let mut last = position(&first.id)?;
        for text in ["lost", "after"] {
            let event = on_b.event().await?;
            ensure!(
                event.kind == "message" && event.data == text,
                "got {event:?}, expected {text}"
            );
            let at = position(&event.id)?;
            ensure!(at.0 == last.0 && at.1 > last.1, "{event:?} after {last:?}");
            last = at;
        }
        ensure!(metric(b.addr(), "uringcast_broker_history_gaps_repaired_total").await? >= 1);
        ensure!(metric(b.addr(), "uringcast_broker_history_gaps_reported_total").await? == 0);
        Ok(())
    })
    .await
}

/// The stream deleted mid-run: the next publish makes it again, a new epoch, and every
/// node's subscribers are told (a reset naming the new epoch) before they go on in it.
pub(crate) async fn a_stream_made_anew_is_a_new_epoch_announced_by_a_reset(
    kind: Kind,
) -> Result<()> {
    with_broker(kind, "jetstream_anew", |broker| async move {
        let a = node(&broker, HISTORY)?;
        let b = node(&broker, HISTORY)?;
        let mut on_a = Sse::open(a.addr(), "/r").await?;
        let mut on_b = Sse::open(b.addr(), "/r").await?;
        wait_subscribed(a.addr(), 1).await?;
        wait_subscribed(b.addr(), 1).await?;
        publish_http(a.addr(), "r", "before").await?;
        ensure!(on_a.event().await?.data == "before");
        let before = on_b.event().await?;
        ensure!(before.data == "before", "{before:?}");
        let (old_epoch, _) = position(&before.id)?;

        let client = async_nats::connect(broker.url().trim_start_matches("nats://")).await?;
        async_nats::jetstream::new(client)
            .delete_stream(STREAM)
            .await
            .map_err(|e| anyhow!("deleting the stream: {e}"))?;
        publish_http(a.addr(), "r", "made-anew").await?;
        for (who, stream) in [("A", &mut on_a), ("B", &mut on_b)] {
            let reset = stream.event().await?;
            ensure!(
                reset.kind == "reset",
                "{who}: expected a reset, got {reset:?}"
            );
            let (epoch, _) = position(&reset.id)?;
            ensure!(epoch != old_epoch, "{who}: the reset names the old epoch");
        }
        publish_http(b.addr(), "r", "last").await?;
        for (who, stream) in [("A", &mut on_a), ("B", &mut on_b)] {
            // A delivers the publish that made the stream (after its reset); B learned of the
            // new epoch from its head check, past it.
            let mut event = stream.event().await?;
            if event.data == "made-anew" {
                event = stream.event().await?;
            }
            ensure!(event.data == "last", "{who}: {event:?}");
            ensure!(position(&event.id)?.0 != old_epoch, "{who}: {event:?}");
        }
        Ok(())
    })
    .await
}

/// The server restarted with its store (`-sd`): the stream, its epoch and its sequences
/// survive, so subscribers go on at the next position with no reset.
pub(crate) async fn a_restarted_server_keeps_the_stream_and_its_positions(
    kind: Kind,
) -> Result<()> {
    with_broker(kind, "jetstream_restart", |mut broker| async move {
        let a = node(&broker, HISTORY)?;
        let b = node(&broker, HISTORY)?;
        let mut on_b = Sse::open(b.addr(), "/kept").await?;
        wait_subscribed(b.addr(), 1).await?;
        publish_http(a.addr(), "kept", "before").await?;
        let before = on_b.event().await?;
        ensure!(before.data == "before", "{before:?}");
        let (epoch, offset) = position(&before.id)?;

        broker.restart()?;
        // Probe until one crosses: the clients reconnect with backoff, and publishes made
        // while the server was away fail.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut probe = 0;
        let first = loop {
            ensure!(Instant::now() < deadline, "delivery did not resume");
            probe += 1;
            publish_http(a.addr(), "kept", &format!("p{probe}")).await?;
            if let Ok(event) = timeout(Duration::from_millis(300), on_b.event()).await {
                break event?;
            }
        };
        ensure!(first.kind == "message", "after the restart: {first:?}");
        let (after_epoch, after_offset) = position(&first.id)?;
        ensure!(
            after_epoch == epoch && after_offset > offset,
            "{first:?} after {}",
            before.id
        );
        ensure!(metric(b.addr(), "uringcast_broker_history_gaps_reported_total").await? == 0);
        Ok(())
    })
    .await
}

/// A NATS server without JetStream: with `--history` the node says so in one line and exits
/// with status 2.
pub(crate) async fn a_server_without_jetstream_stops_the_start() -> Result<()> {
    let Some(broker) = Broker::start_js(Kind::Nats, "jetstream_off", false)? else {
        bail!("nats-server is missing, though the harness found it");
    };
    let url = broker.url();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_uringcast"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--mode",
            "broadcast",
            "--history",
            "10",
        ])
        .args(["--broker", &url])
        .env("RUST_LOG", "off")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(2), "{:?} {stderr}", out.status);
    ensure!(
        stderr.lines().count() == 1 && stderr.contains("JetStream is not enabled"),
        "not one line that says what is missing: {stderr}"
    );
    Ok(())
}

/// A TCP proxy in front of the NATS server that can cut every connection through it and
/// refuse new ones until restored.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: u16) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let links = Arc::new(Mutex::new(Vec::new()));
        let (refuse, held) = (Arc::clone(&cut), Arc::clone(&links));
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if refuse.load(Ordering::Acquire) {
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                held.lock().unwrap().push(link);
            }
        });
        Ok(Self {
            addr,
            cut,
            links,
            accept,
        })
    }

    /// Closes every connection through the proxy, and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
