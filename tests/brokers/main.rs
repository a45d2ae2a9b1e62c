//! Scale-out through real brokers: two or three `uringcast --mode broadcast` nodes on one
//! Redis, Redis Cluster (three masters, sharded pub/sub) or NATS server, each test run against
//! every one of them. Brokers come from Debian's packages (`scripts/brokers.sh install`); a
//! test whose broker is missing shows as ignored, with the reason (a `libtest-mimic` harness:
//! `harness = false` in Cargo.toml).
//!
//! Clients are tokio-tungstenite. "Never received" (no duplicate, no cross-topic leak) is shown
//! by a marker sent afterwards along the same path: it must be the next thing that arrives.

#[path = "../common/mod.rs"]
mod common;
mod delivery;
mod faults;
mod jetstream;
mod kafka;
mod streams;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::{Server, Ws};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use libtest_mimic::{Completion, Failed, Trial};
use support::{Broker, Kind};

/// The bound on any one step.
const STEP: Duration = Duration::from_secs(15);
/// The publish token every node gets.
const TOKEN: &str = "t0k3n";

/// A broadcast node on `broker`, with two workers.
fn node(broker: &Broker, extra: &[&str]) -> Result<Server> {
    let url = broker.url();
    let mut args = vec!["--mode", "broadcast"];
    if !extra.contains(&"--workers") {
        args.extend_from_slice(&["--workers", "2"]);
    }
    args.extend_from_slice(&[
        "--publish-token",
        TOKEN,
        // Subscribers publish to their rooms here, as before a publish token made them
        // read-only by default.
        "--client-publish",
        "all",
        "--broker",
        &url,
    ]);
    args.extend_from_slice(extra);
    // The broker clients log every reconnection attempt; the link's own warnings say enough.
    Server::start_with(&args, |cmd| {
        cmd.env("RUST_LOG", "warn,redis=off,async_nats=off");
    })
}

async fn ws(addr: SocketAddr, path: &str) -> Result<Ws> {
    let url = format!("ws://{addr}{path}");
    let (ws, _) = timeout(STEP, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .with_context(|| format!("connecting to {url} timed out"))?
        .with_context(|| format!("connecting to {url}"))?;
    Ok(ws)
}

async fn send(ws: &mut Ws, text: &str) -> Result<()> {
    timeout(STEP, ws.send(WsMessage::text(text)))
        .await
        .context("sending timed out")?
        .context("sending")
}

/// The next data message, skipping pings and pongs.
async fn next(ws: &mut Ws) -> Result<WsMessage> {
    loop {
        match timeout(STEP, ws.next()).await {
            Err(_) => bail!("no message within {STEP:?}"),
            Ok(None) => bail!("the stream ended"),
            Ok(Some(message)) => match message.context("reading")? {
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                other => return Ok(other),
            },
        }
    }
}

async fn next_text(ws: &mut Ws) -> Result<String> {
    match next(ws).await? {
        WsMessage::Text(text) => Ok(text.to_string()),
        other => bail!("expected text, got {other:?}"),
    }
}

/// One HTTP request; the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Result<(u16, String)> {
    let mut stream = timeout(STEP, TcpStream::connect(addr)).await??;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    timeout(STEP, stream.read_to_end(&mut raw)).await??;
    let text = String::from_utf8(raw)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `POST /publish/{topic}` with a text body; it must be accepted.
async fn publish_http(addr: SocketAddr, topic: &str, text: &str) -> Result<()> {
    let (status, body) = http(addr, "POST", &format!("/publish/{topic}"), text.as_bytes()).await?;
    ensure!(status == 202, "publish: {status} {body}");
    Ok(())
}

/// The value of a broker metric on a node.
async fn metric(addr: SocketAddr, name: &str) -> Result<u64> {
    let (status, body) = http(addr, "GET", "/metrics", b"").await?;
    ensure!(status == 200, "GET /metrics: {status}");
    let line = body
        .lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .ok_or_else(|| anyhow!("no {name} in /metrics"))?;
    let value = line.rsplit(' ').next().unwrap_or_default();
    value
        .parse::<f64>()
        .map(|v| v as u64)
        .with_context(|| format!("{line:?}"))
}

/// Waits until `name` on the node satisfies `ok`.
async fn wait_metric(addr: SocketAddr, name: &str, ok: impl Fn(u64) -> bool) -> Result<u64> {
    let values = wait_metrics(addr, &[name], |v| ok(v[0])).await?;
    Ok(values[0])
}

/// Waits until the values of `names` on the node, together, satisfy `ok`. The server has no
/// event for what its broker link did, so this reads its counters every 10 ms, for at most
/// [`STEP`].
async fn wait_metrics(
    addr: SocketAddr,
    names: &[&str],
    ok: impl Fn(&[u64]) -> bool,
) -> Result<Vec<u64>> {
    let deadline = Instant::now() + STEP;
    loop {
        let mut values = Vec::with_capacity(names.len());
        for name in names {
            values.push(metric(addr, name).await?);
        }
        if ok(&values) {
            return Ok(values);
        }
        ensure!(
            Instant::now() < deadline,
            "{names:?} on {addr} stayed at {values:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the node's link holds `topics` subscriptions at the broker.
async fn wait_subscribed(addr: SocketAddr, topics: u64) -> Result<()> {
    wait_metric(addr, "uringcast_broker_subscribed_topics", |n| n == topics).await?;
    Ok(())
}

/// Runs `test` against a broker of `kind`, which the harness found installed.
async fn with_broker<F, Fut>(kind: Kind, name: &str, test: F) -> Result<()>
where
    F: FnOnce(Broker) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let Some(broker) = Broker::start(kind, name)? else {
        bail!("{name}: the {kind:?} broker is missing, though the harness found it");
    };
    test(broker)
        .await
        .with_context(|| format!("{name} with {kind:?}"))
}

/// The harness: each broker test once per broker kind, named `module::test::kind`. A test
/// whose broker is not installed is reported as ignored, with the missing binary as the
/// reason, so `cargo test`'s summary counts it as ignored instead of passed.
fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let mut trials = vec![Trial::test(
        "faults::an_unreachable_broker_stops_the_start_unless_optional",
        || block_on(faults::an_unreachable_broker_stops_the_start_unless_optional()),
    )];
    for kind in Kind::ALL {
        trials.extend([
            on(
                kind,
                "delivery::a_publish_reaches_every_node_once_in_order_and_only_its_topic",
                delivery::a_publish_reaches_every_node_once_in_order_and_only_its_topic,
            ),
            on(
                kind,
                "delivery::an_outside_backend_publishes_with_the_brokers_own_tools",
                delivery::an_outside_backend_publishes_with_the_brokers_own_tools,
            ),
            on(
                kind,
                "delivery::the_embedding_handle_publishes_through_the_broker",
                delivery::the_embedding_handle_publishes_through_the_broker,
            ),
            on(
                kind,
                "faults::a_lost_broker_stops_only_cross_node_delivery_and_the_loss_is_counted",
                faults::a_lost_broker_stops_only_cross_node_delivery_and_the_loss_is_counted,
            ),
            on(
                kind,
                "faults::nodes_join_and_leave_while_traffic_flows",
                faults::nodes_join_and_leave_while_traffic_flows,
            ),
        ]);
    }
    for kind in [Kind::Redis, Kind::Cluster] {
        trials.extend([
            on(
                kind,
                "streams::a_stream_recovers_exactly_on_another_node",
                streams::a_stream_recovers_exactly_on_another_node,
            ),
            on(
                kind,
                "streams::a_lost_publication_is_repaired_from_the_stream",
                streams::a_lost_publication_is_repaired_from_the_stream,
            ),
            on(
                kind,
                "streams::a_resume_ahead_of_the_node_skips_nothing_for_the_others",
                streams::a_resume_ahead_of_the_node_skips_nothing_for_the_others,
            ),
            on(
                kind,
                "streams::a_gap_the_stream_lost_too_is_reported",
                streams::a_gap_the_stream_lost_too_is_reported,
            ),
            on(
                kind,
                "streams::a_backend_fcall_gets_a_position",
                streams::a_backend_fcall_gets_a_position,
            ),
            on(
                kind,
                "streams::publishes_to_many_topics_keep_each_topics_order",
                streams::publishes_to_many_topics_keep_each_topics_order,
            ),
            on(
                kind,
                "streams::a_restarted_broker_is_a_new_epoch_announced_by_a_reset",
                streams::a_restarted_broker_is_a_new_epoch_announced_by_a_reset,
            ),
            on(
                kind,
                "streams::two_resumes_from_different_positions_are_exact_or_reset",
                streams::two_resumes_from_different_positions_are_exact_or_reset,
            ),
            on(
                kind,
                "streams::a_new_stream_begun_while_a_node_was_away_is_given_from_its_start",
                streams::a_new_stream_begun_while_a_node_was_away_is_given_from_its_start,
            ),
        ]);
    }
    trials.extend([
        on(
            Kind::Nats,
            "streams::a_stream_recovers_exactly_on_another_node",
            streams::a_stream_recovers_exactly_on_another_node,
        ),
        on(
            Kind::Nats,
            "jetstream::positions_agree_and_recovery_elsewhere_is_exact_or_reset",
            jetstream::positions_agree_and_recovery_elsewhere_is_exact_or_reset,
        ),
        on(
            Kind::Nats,
            "jetstream::a_backends_plain_publish_gets_a_position",
            jetstream::a_backends_plain_publish_gets_a_position,
        ),
        on(
            Kind::Nats,
            "jetstream::a_publication_missed_on_the_way_is_repaired_from_the_stream",
            jetstream::a_publication_missed_on_the_way_is_repaired_from_the_stream,
        ),
        on(
            Kind::Nats,
            "jetstream::a_stream_made_anew_is_a_new_epoch_announced_by_a_reset",
            jetstream::a_stream_made_anew_is_a_new_epoch_announced_by_a_reset,
        ),
        on(
            Kind::Nats,
            "jetstream::a_restarted_server_keeps_the_stream_and_its_positions",
            jetstream::a_restarted_server_keeps_the_stream_and_its_positions,
        ),
        on(
            Kind::Nats,
            "jetstream::a_server_without_jetstream_stops_the_start",
            |_| jetstream::a_server_without_jetstream_stops_the_start(),
        ),
    ]);
    trials.push(on(
        Kind::Cluster,
        "delivery::cluster_topics_on_three_masters_each_reach_every_node",
        |_| delivery::cluster_topics_on_three_masters_each_reach_every_node(),
    ));
    trials.extend(kafka_trials());
    libtest_mimic::run(&args, trials).exit_code()
}

/// The Kafka trials (`kafka.rs`), against Tansu; ignored, with the reason, when it is
/// missing (except the one that needs no broker).
fn kafka_trials() -> Vec<Trial> {
    fn on_tansu<Fut>(name: &str, test: fn() -> Fut) -> Trial
    where
        Fut: std::future::Future<Output = Result<()>> + 'static,
    {
        Trial::ignorable_test(format!("kafka::{name}::tansu"), move || {
            if kafka::tansu().is_none() {
                return Ok(Completion::ignored_with(
                    "tansu missing; scripts/brokers.sh install".to_owned(),
                ));
            }
            block_on(test()).map(|()| Completion::Completed)
        })
    }
    vec![
        Trial::test("kafka::kafka_needs_history_and_a_reachable_broker", || {
            block_on(kafka::kafka_needs_history_and_a_reachable_broker())
        }),
        on_tansu(
            "positions_agree_across_nodes",
            kafka::positions_agree_across_nodes,
        ),
        on_tansu(
            "a_stream_recovers_exactly_on_another_node",
            kafka::a_stream_recovers_exactly_on_another_node,
        ),
        on_tansu(
            "an_old_position_is_not_recovered",
            kafka::an_old_position_is_not_recovered,
        ),
        on_tansu(
            "a_backends_plain_produce_gets_a_position",
            kafka::a_backends_plain_produce_gets_a_position,
        ),
        on_tansu(
            "a_node_cut_off_reads_what_it_missed",
            kafka::a_node_cut_off_reads_what_it_missed,
        ),
        on_tansu(
            "a_restarted_broker_is_a_new_epoch_announced_by_a_reset",
            kafka::a_restarted_broker_is_a_new_epoch_announced_by_a_reset,
        ),
        on_tansu(
            "a_log_replaced_under_the_node_is_a_reset_never_a_silent_skip",
            kafka::a_log_replaced_under_the_node_is_a_reset_never_a_silent_skip,
        ),
        on_tansu(
            "a_record_in_another_partition_is_told_never_skipped",
            kafka::a_record_in_another_partition_is_told_never_skipped,
        ),
    ]
}

/// The trial `name::kind`: `test` against that broker, ignored when its binaries are missing.
fn on<F, Fut>(kind: Kind, name: &str, test: F) -> Trial
where
    F: FnOnce(Kind) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>>,
{
    Trial::ignorable_test(format!("{name}::{}", kind.label()), move || {
        if let Some(binary) = kind.missing() {
            return Ok(Completion::ignored_with(format!(
                "{binary} missing; scripts/brokers.sh install"
            )));
        }
        block_on(test(kind)).map(|()| Completion::Completed)
    })
}

/// Runs a test on its own two-worker runtime, as `#[tokio::test(flavor = "multi_thread",
/// worker_threads = 2)]` would; an error fails the trial with its whole chain.
fn block_on(test: impl std::future::Future<Output = Result<()>>) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("cannot build the runtime: {e}")))?;
    runtime
        .block_on(test)
        .map_err(|e| Failed::from(format!("{e:?}")))
}
