//! Server-Sent Events: the stream's head, events, CORS, binary payloads, limits, shutdown.

use super::*;

#[tokio::test]
async fn a_stream_carries_each_publication_with_its_position() -> Result<()> {
    let server = InProcess::start(2, 100, |b| b)?;
    let mut stream = Sse::open(server.addr(), "/news", &[]).await?;
    ensure!(stream.status == 200, "status {}", stream.status);
    ensure!(
        stream.header("content-type") == Some("text/event-stream; charset=utf-8"),
        "{}",
        stream.head
    );
    ensure!(stream.header("x-accel-buffering") == Some("no"));
    let start = stream.position().await?;
    ensure!(offset_of(&start)? == 0, "a new stream starts at 0: {start}");
    let answer = publish(server.addr(), "news", "one\ntwo").await?;
    ensure!(answer["epoch"] == epoch_of(&start), "{answer} vs {start}");
    ensure!(answer["offset"] == 1, "{answer}");
    let event = stream.event().await?;
    ensure!(
        event
            == Event {
                kind: "message".into(),
                data: "one\ntwo".into(),
                id: format!("{}:1", epoch_of(&start)),
            },
        "{event:?}"
    );
    // The embedding handle's publish gets the next position, and binary goes as base64.
    let published = server.publish("news", uringcast::protocol::OpCode::Binary, &[0, 1, 255]);
    let position = published.position.ok_or_else(|| anyhow!("no position"))?;
    ensure!(position.offset == 2 && position.epoch.as_str() == epoch_of(&start));
    let event = stream.event().await?;
    ensure!(event.kind == "binary" && event.data == "AAH/", "{event:?}");
    ensure!(offset_of(&event.id)? == 2);
    Ok(())
}

#[tokio::test]
async fn without_history_events_have_no_id() -> Result<()> {
    let server = InProcess::start(1, 0, |b| b)?;
    let mut stream = Sse::open(server.addr(), "/plain", &[]).await?;
    ensure!(stream.status == 200);
    // The subscription is made when the head is sent; a publish after it arrives.
    wait_subscribers(&server, "plain", 1).await?;
    let answer = publish(server.addr(), "plain", "x").await?;
    ensure!(
        answer.get("offset").is_none(),
        "no position without history: {answer}"
    );
    let event = stream.event().await?;
    ensure!(event.data == "x" && event.id.is_empty(), "{event:?}");
    Ok(())
}

#[tokio::test]
async fn cors_follows_allowed_origins() -> Result<()> {
    let origins = uringcast::protocol::origin::AllowedOrigins::parse("https://app.example")
        .map_err(|e| anyhow!("{e}"))?;
    let server = InProcess::start(1, 10, |b| b.allowed_origins(origins))?;
    let allowed = Sse::open(server.addr(), "/t", &[("Origin", "https://app.example")]).await?;
    ensure!(allowed.status == 200);
    ensure!(
        allowed.header("access-control-allow-origin") == Some("https://app.example"),
        "{}",
        allowed.head
    );
    let refused = Sse::open(server.addr(), "/t", &[("Origin", "https://evil.example")]).await?;
    ensure!(refused.status == 403, "{}", refused.head);
    let no_origin = Sse::open(server.addr(), "/t", &[]).await?;
    ensure!(no_origin.status == 200);
    ensure!(no_origin.header("access-control-allow-origin").is_none());
    Ok(())
}

#[tokio::test]
async fn bad_positions_and_long_topics_are_refused_from_the_head() -> Result<()> {
    let server = InProcess::start(1, 10, |b| b.max_topic_bytes(8))?;
    let bad = Sse::open(server.addr(), "/t", &[("Last-Event-ID", "no-colon")]).await?;
    ensure!(bad.status == 400, "{}", bad.head);
    let bad = Sse::open(server.addr(), "/t?since=a:b", &[]).await?;
    ensure!(bad.status == 400, "{}", bad.head);
    let long = Sse::open(server.addr(), "/abcdefghijk", &[]).await?;
    ensure!(long.status == 414, "{}", long.head);
    // The endpoints keep their paths.
    let health = Sse::open(server.addr(), "/healthz", &[]).await?;
    ensure!(
        health.status == 200
            && health.header("content-type") != Some("text/event-stream; charset=utf-8")
    );
    Ok(())
}

#[tokio::test]
async fn a_stream_ends_at_shutdown_and_is_counted() -> Result<()> {
    let server = InProcess::start(2, 10, |b| b)?;
    let mut stream = Sse::open(server.addr(), "/t", &[]).await?;
    stream.position().await?;
    let metrics = server.metrics();
    ensure!(
        metrics
            .lines()
            .filter(|l| l.starts_with("uringcast_sse_streams_opened_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
            == 1,
        "{metrics}"
    );
    server.stop();
    ensure!(
        stream.next().await?.is_none(),
        "the stream ends at shutdown"
    );
    Ok(())
}

#[tokio::test]
async fn a_slow_stream_is_closed_by_the_backlog_rule_while_others_are_served() -> Result<()> {
    let server = InProcess::start(1, 0, |b| b.max_backlog_bytes(64 * 1024))?;
    // A client that never reads: its socket buffers fill, then its queue.
    let stalled = Sse::open(server.addr(), "/t", &[]).await?;
    let mut reader = Sse::open(server.addr(), "/t", &[]).await?;
    wait_subscribers(&server, "t", 2).await?;
    let payload = "x".repeat(16 * 1024);
    let mut delivered = 0u64;
    let mut closed = false;
    for _ in 0..2000 {
        server.publish("t", uringcast::protocol::OpCode::Text, payload.as_bytes());
        let event = reader.event().await?;
        ensure!(event.data.len() == payload.len());
        delivered += 1;
        if server
            .stats()
            .iter()
            .map(|s| {
                s.slow_consumer_closes
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum::<u64>()
            > 0
        {
            closed = true;
            break;
        }
    }
    ensure!(
        closed,
        "the stalled stream was never closed ({delivered} delivered)"
    );
    drop(stalled);
    Ok(())
}

/// Waits until `topic` has `n` subscribers over all workers (read from the counters the
/// workers update as they subscribe), for at most the step.
pub(crate) async fn wait_subscribers(server: &ServerHandle, topic: &str, n: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let count: u64 = server
            .broadcast_stats()
            .iter()
            .map(|s| s.topic_count(topic))
            .sum();
        if count >= n {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{topic}: {count} subscribers, expected {n}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn a_stream_needs_a_token_covering_its_topic_when_tokens_are_on() -> Result<()> {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    const SECRET: &str = "sse-secret";
    let server = InProcess::start(1, 10, |b| {
        b.mode(uringcast::config::Mode::Broadcast)
            .jwt_secret(SECRET)
            .max_connections_per_ip(Some(2))
    })?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 600;
    let token = |subscribe: &[&str]| {
        encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"exp": exp, "subscribe": subscribe}),
            &EncodingKey::from_secret(SECRET.as_bytes()).expect("a secret"),
        )
    };
    let missing = Sse::open(server.addr(), "/prices", &[]).await?;
    ensure!(missing.status == 401, "{}", missing.head);
    let other = token(&["news.*"])?;
    let wrong = Sse::open(server.addr(), &format!("/prices?token={other}"), &[]).await?;
    ensure!(wrong.status == 403, "{}", wrong.head);
    let good = token(&["prices"])?;
    let mut first = Sse::open(server.addr(), &format!("/prices?token={good}"), &[]).await?;
    ensure!(first.status == 200, "{}", first.head);
    first.position().await?;
    let bearer = format!("Bearer {good}");
    let second = Sse::open(server.addr(), "/prices", &[("Authorization", &bearer)]).await?;
    ensure!(second.status == 200, "{}", second.head);
    // Two streams from this address: a third is over --max-connections-per-ip 2.
    let third = Sse::open(server.addr(), &format!("/prices?token={good}"), &[]).await?;
    ensure!(third.status == 429, "{}", third.head);
    ensure!(third.header("retry-after").is_some(), "{}", third.head);
    // A stream that ends gives its place back.
    drop(second);
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let again = Sse::open(server.addr(), &format!("/prices?token={good}"), &[]).await?;
        if again.status == 200 {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the place was never given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
