//! Recovery: exact or explicitly not, over SSE, the handler API and `GET /history`.

use super::sse::wait_subscribers;
use super::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uringcast::broadcast::{Connection, Handler, Message, Position, Resumed};
use uringcast::protocol::handshake::Request;
use uringcast::protocol::OpCode;

#[tokio::test]
async fn a_stream_that_reconnects_gets_exactly_what_it_missed() -> Result<()> {
    let server = InProcess::start(2, 100, |b| b)?;
    let mut stream = Sse::open(server.addr(), "/feed", &[]).await?;
    stream.position().await?;
    for i in 1..=3 {
        publish(server.addr(), "feed", &format!("m{i}")).await?;
    }
    for i in 1..=3 {
        ensure!(stream.event().await?.data == format!("m{i}"));
    }
    let last = stream.last_id.clone();
    drop(stream);
    for i in 4..=6 {
        publish(server.addr(), "feed", &format!("m{i}")).await?;
    }
    let mut again = Sse::open(server.addr(), "/feed", &[("Last-Event-ID", &last)]).await?;
    for i in 4..=6 {
        let event = again.event().await?;
        ensure!(event.data == format!("m{i}"), "{event:?}");
        ensure!(offset_of(&event.id)? == i, "{event:?}");
    }
    publish(server.addr(), "feed", "m7").await?;
    let live = again.event().await?;
    ensure!(live.data == "m7" && offset_of(&live.id)? == 7, "{live:?}");
    // ?since= does the same for a first request.
    let mut first = Sse::open(server.addr(), &format!("/feed?since={last}"), &[]).await?;
    ensure!(first.event().await?.data == "m4");
    Ok(())
}

#[tokio::test]
async fn every_not_recoverable_case_says_so() -> Result<()> {
    // The same cases, one server each, so each reset's head is known exactly.
    for (since, why) in [
        ("{E}:1", "older than the history kept"),
        ("{E}:7", "further behind than --max-recover"),
        ("zzzz:9", "another epoch"),
        ("{E}:11", "ahead of the stream"),
    ] {
        let server = InProcess::start(1, 3, |b| b.max_recover(2))?;
        let mut probe = Sse::open(server.addr(), "/t", &[]).await?;
        let epoch = epoch_of(&probe.position().await?).to_string();
        for i in 1..=10 {
            publish(server.addr(), "t", &format!("m{i}")).await?;
        }
        let since = since.replace("{E}", &epoch);
        let mut stream = Sse::open(server.addr(), "/t", &[("Last-Event-ID", &since)]).await?;
        let reset = stream.event().await?;
        ensure!(reset.kind == "reset", "{why}: {reset:?}");
        ensure!(reset.id == format!("{epoch}:10"), "{why}: {reset:?}");
        publish(server.addr(), "t", "live").await?;
        let live = stream.event().await?;
        ensure!(
            live.data == "live" && offset_of(&live.id)? == 11,
            "{why}: {live:?}"
        );
        for _ in 0..11 {
            probe.event().await?;
        }
        // Two behind, with --max-recover 2, is served exactly.
        let since = format!("{epoch}:9");
        let mut near = Sse::open(server.addr(), "/t", &[("Last-Event-ID", &since)]).await?;
        for offset in [10, 11] {
            let event = near.event().await?;
            ensure!(
                event.kind == "message" && offset_of(&event.id)? == offset,
                "{event:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn recovery_is_exact_while_publishes_arrive_on_several_workers() -> Result<()> {
    // 16 connections land on both workers but with odds of 2^-15 (checked below).
    const PUBLISHERS: usize = 16;
    const EACH: usize = 120;
    let total = (PUBLISHERS * EACH) as u64;
    let server = InProcess::start(2, 4000, |b| b.max_recover(4000))?;
    let addr = server.addr();
    // Publishers on both workers: rooms-by-path publish-only connections.
    let mut publishers = Vec::new();
    for _ in 0..PUBLISHERS {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/publish/busy")).await?;
        publishers.push(ws);
    }
    let mut stream = Sse::open(addr, "/busy", &[]).await?;
    stream.position().await?;
    let tasks: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(p, mut ws)| {
            tokio::spawn(async move {
                for i in 0..EACH {
                    ws.send(WsMessage::text(format!("{p}:{i}"))).await?;
                }
                ws.close(None).await?;
                while let Some(Ok(_)) = ws.next().await {}
                anyhow::Ok(())
            })
        })
        .collect();
    // Read a while, drop the stream, come back from the last id: again and again.
    let mut seen = Vec::new();
    let mut per_publisher = vec![None::<usize>; PUBLISHERS];
    let mut reconnects = 0;
    while (seen.len() as u64) < total {
        let event = stream.event().await?;
        ensure!(event.kind == "message", "{event:?}");
        let offset = offset_of(&event.id)?;
        ensure!(
            offset == seen.len() as u64 + 1,
            "after {} events, offset {offset}: a gap or a duplicate",
            seen.len()
        );
        // Each publisher's own messages stay in its order.
        let (p, i) = event
            .data
            .split_once(':')
            .and_then(|(p, i)| Some((p.parse::<usize>().ok()?, i.parse::<usize>().ok()?)))
            .ok_or_else(|| anyhow!("bad payload {:?}", event.data))?;
        ensure!(per_publisher[p].map_or(i == 0, |last| i == last + 1));
        per_publisher[p] = Some(i);
        seen.push(offset);
        if seen.len() % 250 == 0 {
            let last = stream.last_id.clone();
            stream = Sse::open(addr, "/busy", &[("Last-Event-ID", &last)]).await?;
            reconnects += 1;
        }
    }
    for task in tasks {
        task.await??;
    }
    ensure!(reconnects >= 5);
    let publishes: Vec<u64> = server
        .broadcast_stats()
        .iter()
        .map(|s| s.publishes.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    ensure!(
        publishes.iter().all(|&n| n > 0),
        "publishes per worker {publishes:?}: both workers must publish"
    );
    let exact = counter(&server, "recoveries_exact_total");
    ensure!(
        exact == reconnects,
        "{exact} exact recoveries for {reconnects} reconnects"
    );
    Ok(())
}

/// A `/metrics` counter family summed over the workers.
fn counter(server: &ServerHandle, family: &str) -> u64 {
    let prefix = format!("uringcast_{family}{{");
    server
        .metrics()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Exact recoveries, not-recovered answers and publications replayed, from `/metrics`.
fn recoveries(server: &ServerHandle) -> (u64, u64, u64) {
    (
        counter(server, "recoveries_exact_total"),
        counter(server, "recoveries_not_recovered_total"),
        counter(server, "replayed_total"),
    )
}

#[tokio::test]
async fn only_streams_that_present_a_position_count_as_recoveries() -> Result<()> {
    let server = InProcess::start(2, 100, |b| b)?;
    let addr = server.addr();
    let mut fresh = Vec::new();
    for _ in 0..3 {
        let mut stream = Sse::open(addr, "/r", &[]).await?;
        stream.position().await?;
        fresh.push(stream);
    }
    publish(addr, "r", "m1").await?;
    for stream in &mut fresh {
        ensure!(stream.event().await?.data == "m1");
    }
    ensure!(
        recoveries(&server) == (0, 0, 0),
        "three new streams are no recovery: {:?}",
        recoveries(&server)
    );
    let since = fresh[0].last_id.clone();
    publish(addr, "r", "m2").await?;
    publish(addr, "r", "m3").await?;
    let mut back = Sse::open(addr, "/r", &[("Last-Event-ID", &since)]).await?;
    ensure!(back.event().await?.data == "m2");
    ensure!(back.event().await?.data == "m3");
    ensure!(
        recoveries(&server) == (1, 0, 2),
        "{:?}",
        recoveries(&server)
    );
    // Another epoch: not recovered, but this epoch is kept whole, and follows the reset.
    let mut lost = Sse::open(addr, "/r", &[("Last-Event-ID", "zzzz:1")]).await?;
    let reset = lost.event().await?;
    let epoch = since.split(':').next().unwrap_or_default();
    ensure!(
        reset.kind == "reset" && reset.id == format!("{epoch}:0"),
        "{reset:?}"
    );
    for data in ["m1", "m2", "m3"] {
        ensure!(lost.event().await?.data == data);
    }
    ensure!(
        recoveries(&server) == (1, 1, 5),
        "{:?}",
        recoveries(&server)
    );
    Ok(())
}

#[tokio::test]
async fn a_restart_is_a_new_epoch() -> Result<()> {
    let server = InProcess::start(1, 10, |b| b)?;
    let before = publish(server.addr(), "t", "x").await?;
    server.stop();
    let server = InProcess::start(1, 10, |b| b)?;
    let after = publish(server.addr(), "t", "y").await?;
    ensure!(after["offset"] == 1, "{after}");
    ensure!(before["epoch"] != after["epoch"], "{before} vs {after}");
    let since = format!("{}:1", before["epoch"].as_str().unwrap_or(""));
    let mut stream = Sse::open(server.addr(), "/t", &[("Last-Event-ID", &since)]).await?;
    // What followed `x` on the stopped node is lost to the client; what the new one
    // published before the client came back is not.
    let reset = stream.event().await?;
    ensure!(reset.kind == "reset", "{reset:?}");
    let epoch = after["epoch"].as_str().unwrap_or("");
    ensure!(reset.id == format!("{epoch}:0"), "{reset:?}");
    let replayed = stream.event().await?;
    ensure!(
        replayed.data == "y" && replayed.id == format!("{epoch}:1"),
        "{replayed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_history_endpoint_answers_exactly_or_not_recovered() -> Result<()> {
    let server = InProcess::start(1, 3, |b| b)?;
    let first = publish(server.addr(), "h", "a").await?;
    let epoch = first["epoch"].as_str().unwrap_or("").to_string();
    publish(server.addr(), "h", "b").await?;
    server.publish("h", OpCode::Binary, &[1, 2, 3]);
    let auth = [("Authorization", "Bearer T")];
    let (status, _, body) = http(
        server.addr(),
        "GET",
        &format!("/history/h?since={epoch}:1"),
        &auth,
        b"",
    )
    .await?;
    ensure!(status == 200);
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    ensure!(
        answer["recovered"] == true && answer["offset"] == 3,
        "{answer}"
    );
    let list = answer["publications"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(list.len() == 2, "{answer}");
    ensure!(list[0]["data"] == "b" && list[0]["offset"] == 2, "{answer}");
    ensure!(
        list[1]["binary"] == true && list[1]["data"] == "AQID",
        "{answer}"
    );
    publish(server.addr(), "h", "c").await?;
    publish(server.addr(), "h", "d").await?;
    let (_, _, body) = http(
        server.addr(),
        "GET",
        &format!("/history/h?since={epoch}:0"),
        &auth,
        b"",
    )
    .await?;
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    ensure!(
        answer["recovered"] == false && answer["offset"] == 5,
        "{answer}"
    );
    ensure!(answer["publications"].as_array().is_some_and(Vec::is_empty));
    // The token is required, and checked from the head.
    let (status, _, _) = http(server.addr(), "GET", "/history/h", &[], b"").await?;
    ensure!(status == 401, "without a token: {status}");
    Ok(())
}

/// A handler that subscribes each connection to `/topic` from the position in its query
/// (`?since=EPOCH:OFFSET`) and first sends what `subscribe_from` said.
#[derive(Clone)]
struct Resuming;

impl Handler for Resuming {
    type Data = ();

    fn on_open(&mut self, conn: &mut Connection<'_, ()>, request: &Request) {
        let since = request
            .query()
            .and_then(|q| q.strip_prefix("since="))
            .and_then(|s| s.parse::<Position>().ok());
        let topic = uringcast::broadcast::topic_of_path(request.path());
        let said = match conn.subscribe_from(topic, since) {
            Ok(Resumed::Exact { replayed, .. }) => format!("exact {replayed}"),
            Ok(Resumed::NotRecovered { head }) => format!("not {head}"),
            Ok(Resumed::EpochStart {
                replayed, start, ..
            }) => format!("epoch start {start}, {replayed}"),
            Ok(other) => format!("{other:?}"),
            Err(error) => format!("refused {error}"),
        };
        conn.send(OpCode::Text, said.as_bytes());
    }

    fn on_message(&mut self, _: &mut Connection<'_, ()>, _: Message<'_>) {}
}

#[tokio::test]
async fn a_handler_subscribes_from_a_position_and_learns_the_outcome() -> Result<()> {
    let config = uringcast::server::Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .workers(2)
        .ping_interval(None)
        .history(10)
        .build()?;
    let server = spawn_with(config, Resuming)?;
    let addr = server.local_addr();
    let mut positions = Vec::new();
    for i in 1..=4 {
        let published = server.publish("room", OpCode::Text, format!("m{i}").as_bytes());
        positions.push(published.position.ok_or_else(|| anyhow!("no position"))?);
    }
    let url = format!("ws://{addr}/room?since={}", positions[1]);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    // What a handler asks for happens in order: the replay, then its own message.
    ensure!(next_text(&mut ws).await? == "m3");
    ensure!(next_text(&mut ws).await? == "m4");
    ensure!(next_text(&mut ws).await? == "exact 2");
    server.publish("room", OpCode::Text, b"m5");
    ensure!(next_text(&mut ws).await? == "m5");
    let epoch = positions[0].epoch;
    let url = format!("ws://{addr}/room?since={epoch}:99");
    let (mut ahead, _) = tokio_tungstenite::connect_async(url).await?;
    ensure!(next_text(&mut ahead).await? == format!("not {epoch}:5"));
    // Another epoch: this one is kept from its start, and all of it is replayed.
    let url = format!("ws://{addr}/room?since=xx:1");
    let (mut stale, _) = tokio_tungstenite::connect_async(url).await?;
    for i in 1..=5 {
        ensure!(next_text(&mut stale).await? == format!("m{i}"));
    }
    ensure!(next_text(&mut stale).await? == format!("epoch start {epoch}:0, 5"));
    server.publish("room", OpCode::Text, b"m6");
    ensure!(next_text(&mut stale).await? == "m6");
    ensure!(next_text(&mut ahead).await? == "m6");
    ensure!(next_text(&mut ws).await? == "m6");
    wait_subscribers(&server, "room", 3).await?;
    server.shutdown();
    Ok(())
}

async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Result<String> {
    match timeout(STEP, ws.next()).await? {
        Some(Ok(WsMessage::Text(text))) => Ok(text.to_string()),
        other => Err(anyhow!("expected text, got {other:?}")),
    }
}
