//! The steady state: what a node publishes reaches every node's subscribers once, in order,
//! and only on its topic; outside backends publish with the broker's own tools.

use super::*;

/// Messages from each publisher in the ordering test.
const COUNT: usize = 1000;

/// A subscriber on node A (the publishing node) and one on node B receive each of a WebSocket
/// publisher's and an HTTP publisher's messages exactly once and in each publisher's order;
/// a subscriber of another topic on B receives none of them.
pub(crate) async fn a_publish_reaches_every_node_once_in_order_and_only_its_topic(
    kind: Kind,
) -> Result<()> {
    with_broker(kind, "delivery_in_order", |broker| async move {
        let a = node(&broker, &[])?;
        let b = node(&broker, &[])?;
        let mut on_a = ws(a.addr(), "/room").await?;
        let mut on_b = ws(b.addr(), "/room").await?;
        let mut other_on_b = ws(b.addr(), "/other").await?;
        wait_subscribed(a.addr(), 1).await?;
        wait_subscribed(b.addr(), 2).await?;
        // The WebSocket publisher is in the room too (rooms by path): it hears itself.
        let mut publisher = ws(a.addr(), "/room").await?;
        for i in 0..COUNT {
            send(&mut publisher, &format!("ws:{i}")).await?;
            if i % 10 == 0 {
                publish_http(a.addr(), "room", &format!("http:{}", i / 10)).await?;
            }
        }
        send(&mut publisher, "end").await?;
        publish_http(a.addr(), "other", "other-end").await?;
        for (who, sub) in [("A", &mut on_a), ("B", &mut on_b)] {
            let (mut ws_next, mut http_next) = (0, 0);
            loop {
                let text = next_text(sub).await.with_context(|| format!("on {who}"))?;
                if text == "end" {
                    break;
                }
                if let Some(i) = text.strip_prefix("ws:") {
                    ensure!(
                        i == ws_next.to_string(),
                        "{who}: {text} after ws:{ws_next}-1"
                    );
                    ws_next += 1;
                } else if let Some(i) = text.strip_prefix("http:") {
                    ensure!(
                        i == http_next.to_string(),
                        "{who}: {text}, expected http:{http_next}"
                    );
                    http_next += 1;
                } else {
                    bail!("{who} received {text:?}");
                }
            }
            ensure!(
                (ws_next, http_next) == (COUNT, COUNT / 10),
                "{who} received {ws_next} WebSocket and {http_next} HTTP publishes"
            );
        }
        // Isolation: the other topic's subscriber hears only its own marker.
        ensure!(next_text(&mut other_on_b).await? == "other-end");
        // Once, not twice: B got everything from the broker, A nothing (its own were skipped
        // or, on NATS, never echoed).
        let total = (COUNT + COUNT / 10 + 1) as u64;
        ensure!(metric(b.addr(), "uringcast_broker_received_total").await? == total + 1);
        ensure!(metric(a.addr(), "uringcast_broker_received_total").await? == 0);
        // Counted when the broker acknowledges, which may follow B's delivery.
        wait_metric(a.addr(), "uringcast_broker_published_total", |n| {
            n == total + 1
        })
        .await?;
        for node in [&a, &b] {
            ensure!(metric(node.addr(), "uringcast_broker_gaps_total").await? == 0);
            ensure!(metric(node.addr(), "uringcast_broker_connected").await? == 1);
        }
        Ok(())
    })
    .await
}

/// A backend in another language publishes with `redis-cli PUBLISH` (or `SPUBLISH` on a
/// cluster) or a NATS `PUB`: a bare UTF-8 payload arrives as text, `UC1 base64` as binary, on
/// every node.
pub(crate) async fn an_outside_backend_publishes_with_the_brokers_own_tools(
    kind: Kind,
) -> Result<()> {
    with_broker(kind, "outside_publish", |broker| async move {
        let a = node(&broker, &[])?;
        let b = node(&broker, &[])?;
        let mut subs = [
            ws(a.addr(), "/ticker").await?,
            ws(b.addr(), "/ticker").await?,
        ];
        wait_subscribed(a.addr(), 1).await?;
        wait_subscribed(b.addr(), 1).await?;
        broker.publish_raw("ticker", b"{\"px\":101.5}")?;
        broker.publish_raw("ticker", b"UC1 base64\nAAH/")?;
        for sub in &mut subs {
            ensure!(next_text(sub).await? == "{\"px\":101.5}");
            match next(sub).await? {
                WsMessage::Binary(bytes) => ensure!(bytes[..] == [0, 1, 255]),
                other => bail!("expected binary, got {other:?}"),
            }
        }
        Ok(())
    })
    .await
}

/// On a Redis Cluster, topics whose channels hash to slots of three different masters each
/// reach every node: each channel is subscribed on its own master only (sharded pub/sub), and
/// a publish costs that one shard.
pub(crate) async fn cluster_topics_on_three_masters_each_reach_every_node() -> Result<()> {
    let Some(broker) = Broker::start(Kind::Cluster, "cluster_slots")? else {
        return Ok(());
    };
    // `redis-cli --cluster create` splits the slots in three equal ranges: one topic each.
    let mut topics: [Option<String>; 3] = Default::default();
    for i in 0..200 {
        let topic = format!("feed-{i}");
        let third = usize::from(broker.slot(&topic)?) * 3 / 16384;
        topics[third].get_or_insert(topic);
        if topics.iter().all(Option::is_some) {
            break;
        }
    }
    let topics: Vec<String> = topics.into_iter().flatten().collect();
    ensure!(topics.len() == 3, "no topic for every third of the slots");
    let a = node(&broker, &[])?;
    let b = node(&broker, &[])?;
    let mut subs = Vec::new();
    for topic in &topics {
        subs.push(ws(b.addr(), &format!("/{topic}")).await?);
    }
    wait_subscribed(b.addr(), 3).await?;
    let mut owners = Vec::new();
    for topic in &topics {
        let holders = broker.shard_holders(topic)?;
        ensure!(holders.len() == 1, "{topic} is subscribed on {holders:?}");
        owners.push(holders[0]);
    }
    owners.sort_unstable();
    owners.dedup();
    ensure!(
        owners.len() == 3,
        "the three topics share masters: {owners:?}"
    );
    for topic in &topics {
        publish_http(a.addr(), topic, &format!("to {topic}")).await?;
    }
    for (topic, sub) in topics.iter().zip(&mut subs) {
        ensure!(next_text(sub).await? == format!("to {topic}"));
    }
    Ok(())
}

/// An embedder's `ServerHandle::publish` (and a `Publisher` on another thread) goes through
/// the broker like any publish: an in-process node A publishes, a subscriber on node B hears.
pub(crate) async fn the_embedding_handle_publishes_through_the_broker(kind: Kind) -> Result<()> {
    with_broker(kind, "handle_publish", |broker| async move {
        let config = uringcast::server::Server::builder()
            .listen("127.0.0.1:0".parse()?)
            .workers(2)
            .mode(uringcast::config::Mode::Broadcast)
            .broker(broker.url())
            .build()?;
        let a = uringcast::server::spawn(config)?;
        let b = node(&broker, &[])?;
        let mut on_b = ws(b.addr(), "/news").await?;
        wait_subscribed(b.addr(), 1).await?;
        a.publish(
            "news",
            uringcast::protocol::OpCode::Text,
            b"from the handle",
        );
        let publisher = a.publisher();
        std::thread::spawn(move || {
            publisher.publish(
                "news",
                uringcast::protocol::OpCode::Binary,
                b"\x00from a thread",
            )
        })
        .join()
        .map_err(|_| anyhow!("the publishing thread panicked"))?;
        ensure!(next_text(&mut on_b).await? == "from the handle");
        match next(&mut on_b).await? {
            WsMessage::Binary(bytes) => ensure!(&bytes[..] == b"\x00from a thread"),
            other => bail!("expected binary, got {other:?}"),
        }
        ensure!(a.shutdown(), "A did not stop clean");
        Ok(())
    })
    .await
}
