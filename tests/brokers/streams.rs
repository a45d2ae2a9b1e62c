//! Positions from the broker (`--history` with Redis or Redis Cluster): every node agrees on
//! a publication's position, a client recovers on any node, and a node that misses a
//! publication on the broker's pub/sub repairs it from the topic's stream, or says it cannot.
//!
//! A lost pub/sub message is made by a script that does what the uringcast function does
//! (next offset, append to the stream) but does not publish.

use tokio::io::AsyncBufReadExt;
use tokio::io::BufReader;

use super::*;

/// The history flags of every node here.
const HISTORY: &[&str] = &["--history", "100"];

/// A publish that reaches the topic's stream but never its subscribers: what a node sees when
/// the broker's pub/sub drops a message.
const LOSE: &str = "local o = redis.call('INCR', KEYS[1]..':offset') \
    local e = redis.call('GET', KEYS[1]..':epoch') \
    redis.call('XADD', KEYS[1]..':stream', 'MAXLEN', ARGV[2], o..'-0', 'm', \
      'UC1 text @'..e..':'..o..'\\n'..ARGV[1]) \
    return o";

/// Loses `text` on `topic` (see [`LOSE`]), the stream keeping at most `keep` entries.
fn lose(broker: &Broker, topic: &str, text: &str, keep: usize) -> Result<()> {
    broker.redis_cli(&[
        "EVAL",
        LOSE,
        "1",
        &format!("{{uringcast:{topic}}}"),
        text,
        &keep.to_string(),
    ])?;
    Ok(())
}

/// Publishes as a backend does, with one `FCALL`; the position Redis gave.
fn fcall(broker: &Broker, topic: &str, text: &str) -> Result<String> {
    let function = if broker.kind == Kind::Cluster {
        "uringcast_spublish"
    } else {
        "uringcast_publish"
    };
    broker.redis_cli(&[
        "FCALL",
        function,
        "1",
        &format!("{{uringcast:{topic}}}"),
        text,
    ])
}

/// A client at `node`'s SSE stream `/feed` that read to m2 reconnects to another node with
/// its last id, after more was published: it gets exactly m3..m8, with the same positions.
pub(crate) async fn a_stream_recovers_exactly_on_another_node(kind: Kind) -> Result<()> {
    with_broker(kind, "streams_recover", |broker| async move {
        let a = node(&broker, HISTORY)?;
        let b = node(&broker, HISTORY)?;
        let mut on_a = Sse::open(a.addr(), "/feed").await?;
        wait_subscribed(a.addr(), 1).await?;
        for i in 1..=5 {
            publish_http(a.addr(), "feed", &format!("m{i}")).await?;
        }
        let mut ids = Vec::new();
        for i in 1..=5 {
            let event = on_a.event().await?;
            ensure!(event.data == format!("m{i}"), "on A: {event:?}");
            ids.push(event.id);
        }
        let first = position(&ids[0])?;
        for (i, id) in ids.iter().enumerate() {
            ensure!(
                position(id)? == (first.0.clone(), first.1 + i as u64),
                "{ids:?}"
            );
        }
        drop(on_a);
        for i in 6..=8 {
            publish_http(a.addr(), "feed", &format!("m{i}")).await?;
        }
        let mut on_b = Sse::open_from(b.addr(), "/feed", &ids[1]).await?;
        for i in 3..=8u64 {
            let event = on_b.event().await?;
            ensure!(
                event.kind == "message" && event.data == format!("m{i}"),
                "on B: {event:?}, expected m{i}"
            );
            ensure!(position(&event.id)? == (first.0.clone(), first.1 + i - 1));
        }
        // And it goes on live, from a publish on B.
        publish_http(b.addr(), "feed", "m9").await?;
        let event = on_b.event().await?;
        ensure!(event.data == "m9" && position(&event.id)?.1 == first.1 + 8);
        Ok(())
    })
    .await
}

/// A publication missed on the pub/sub is read from the stream and delivered in its place,
/// whether a later publication shows the gap or only the head check does.
pub(crate) async fn a_lost_publication_is_repaired_from_the_stream(kind: Kind) -> Result<()> {
    with_broker(kind, "streams_repair", |broker| async move {
        let a = node(&broker, HISTORY)?;
        let b = node(&broker, HISTORY)?;
        let start = fcall(&broker, "gaps", "first")?;
        let (epoch, offset) = position(&start)?;
        let mut on_b = Sse::open_from(b.addr(), "/gaps", &start).await?;
        wait_subscribed(b.addr(), 1).await?;
        lose(&broker, "gaps", "lost", 100)?;
        publish_http(a.addr(), "gaps", "after").await?;
        for (i, text) in ["lost", "after"].into_iter().enumerate() {
            let event = on_b.event().await?;
            ensure!(
                event.kind == "message" && event.data == text,
                "got {event:?}, expected {text}"
            );
            ensure!(position(&event.id)? == (epoch.clone(), offset + 1 + i as u64));
        }
        // Lost with nothing after it: the head check finds it.
        lose(&broker, "gaps", "lost-last", 100)?;
        let event = on_b.event().await?;
        ensure!(event.data == "lost-last", "got {event:?}");
        ensure!(position(&event.id)? == (epoch, offset + 3));
        ensure!(metric(b.addr(), "uringcast_broker_history_gaps_repaired_total").await? == 2);
        ensure!(metric(b.addr(), "uringcast_broker_history_gaps_reported_total").await? == 0);
        Ok(())
    })
    .await
}

/// A client that resumes on a node from a position the node has not reached yet (it read
/// further on another node; this node missed a publication the stream has) is given nothing
/// up to its position, and the node's other subscribers still get everything: the node does
/// not move its topic to the client's position before it has delivered what lies before.
/// Without that, the subscriber here silently lacked the publication the node was behind on.
pub(crate) async fn a_resume_ahead_of_the_node_skips_nothing_for_the_others(
    kind: Kind,
) -> Result<()> {
    with_broker(kind, "streams_ahead", |broker| async move {
        let a = node(&broker, HISTORY)?;
        // One worker: both of B's subscribers share the topic's place on it.
        let b = node(&broker, &["--history", "100", "--workers", "1"])?;
        let start = fcall(&broker, "ahead", "first")?;
        let (epoch, offset) = position(&start)?;
        let mut here = Sse::open_from(b.addr(), "/ahead", &start).await?;
        wait_subscribed(b.addr(), 1).await?;
        // The stream has "lost" at offset + 1; node B has not heard of it (until a later
        // publication or its head check, within a second, shows the gap).
        lose(&broker, "ahead", "lost", 100)?;
        let ahead_id = format!("{epoch}:{}", offset + 1);
        // Subscribed in the turn that sent its response head.
        let mut resumed = Sse::open_from(b.addr(), "/ahead", &ahead_id).await?;
        publish_http(a.addr(), "ahead", "after").await?;
        for (i, text) in ["lost", "after"].into_iter().enumerate() {
            let event = here.event().await?;
            ensure!(
                event.kind == "message" && event.data == text,
                "the subscriber already on B got {event:?}, expected {text}"
            );
            ensure!(position(&event.id)? == (epoch.clone(), offset + 1 + i as u64));
        }
        let event = resumed.event().await?;
        ensure!(
            event.kind == "message" && event.data == "after",
            "the client that resumed ahead got {event:?}, expected only what follows its position"
        );
        ensure!(position(&event.id)? == (epoch, offset + 2));
        Ok(())
    })
    .await
}

/// A gap the stream no longer holds (trimmed past it) is reported to the subscribers with a
/// reset, never skipped in silence: an SSE `reset`, and a WebSocket room (which has no
/// message for it) closed with 4010 "not recovered".
pub(crate) async fn a_gap_the_stream_lost_too_is_reported(kind: Kind) -> Result<()> {
    with_broker(kind, "streams_reported", |broker| async move {
        let a = node(&broker, HISTORY)?;
        let b = node(&broker, HISTORY)?;
        let start = fcall(&broker, "trimmed", "first")?;
        let mut on_b = Sse::open_from(b.addr(), "/trimmed", &start).await?;
        let mut room_b = ws(b.addr(), "/trimmed").await?;
        wait_subscribed(b.addr(), 1).await?;
        // Three lost, and the stream keeps only the last of them.
        for i in 1..=3 {
            lose(&broker, "trimmed", &format!("lost{i}"), 1)?;
        }
        publish_http(a.addr(), "trimmed", "after").await?;
        let event = on_b.event().await?;
        ensure!(event.kind == "reset", "expected a reset, got {event:?}");
        let event = on_b.event().await?;
        ensure!(event.data == "after", "got {event:?}");
        ensure!(position(&event.id)?.1 == position(&start)?.1 + 4);
        // The room's subscriber was upgraded (and so subscribed) before the loss.
        match next(&mut room_b).await? {
            WsMessage::Close(Some(frame)) => ensure!(
                u16::from(frame.code) == 4010,
                "the room subscriber was closed with {frame:?}"
            ),
            other => bail!("the room subscriber got {other:?}, not a 4010 close"),
        }
        ensure!(metric(b.addr(), "uringcast_broker_history_gaps_reported_total").await? == 1);
        Ok(())
    })
    .await
}

/// A backend publishes with one `redis-cli FCALL` and gets the position every node's
/// subscribers see.
pub(crate) async fn a_backend_fcall_gets_a_position(kind: Kind) -> Result<()> {
    with_broker(kind, "streams_fcall", |broker| async move {
        let a = node(&broker, HISTORY)?;
        let b = node(&broker, HISTORY)?;
        let mut on_a = Sse::open(a.addr(), "/api").await?;
        let mut on_b = Sse::open(b.addr(), "/api").await?;
        wait_subscribed(a.addr(), 1).await?;
        wait_subscribed(b.addr(), 1).await?;
        let first = fcall(&broker, "api", "hello")?;
        let second = fcall(&broker, "api", "again")?;
        let (epoch, offset) = position(&first)?;
        ensure!(
            position(&second)? == (epoch, offset + 1),
            "{first} then {second}"
        );
        for sse in [&mut on_a, &mut on_b] {
            for (text, id) in [("hello", &first), ("again", &second)] {
                let event = sse.event().await?;
                ensure!(
                    event.data == text && &event.id == id,
                    "got {event:?}, expected {text} at {id}"
                );
            }
        }
        Ok(())
    })
    .await
}

/// Publishes to several topics at once (so that the link's batches mix topics, which on a
/// cluster live in different slots) each reach the other node in order, at offsets 1, 2, ….
pub(crate) async fn publishes_to_many_topics_keep_each_topics_order(kind: Kind) -> Result<()> {
    const TOPICS: usize = 6;
    const ROUNDS: usize = 20;
    with_broker(kind, "streams_many", |broker| async move {
        let a = node(&broker, HISTORY)?;
        let b = node(&broker, HISTORY)?;
        let mut streams = Vec::new();
        for t in 0..TOPICS {
            streams.push(Sse::open(b.addr(), &format!("/many-{t}")).await?);
        }
        wait_subscribed(b.addr(), TOPICS as u64).await?;
        for round in 0..ROUNDS {
            let addr = a.addr();
            let publishes = (0..TOPICS).map(|t| {
                let text = format!("r{round}");
                async move { publish_http(addr, &format!("many-{t}"), &text).await }
            });
            for result in futures_util::future::join_all(publishes).await {
                result?;
            }
        }
        for (t, stream) in streams.iter_mut().enumerate() {
            for round in 0..ROUNDS {
                let event = stream.event().await?;
                ensure!(
                    event.data == format!("r{round}") && position(&event.id)?.1 == round as u64 + 1,
                    "many-{t}: got {event:?} for round {round}"
                );
            }
        }
        ensure!(metric(a.addr(), "uringcast_broker_publish_failures_total").await? == 0);
        Ok(())
    })
    .await
}

/// Redis restarted empty mid-stream: the topic's stream starts a new epoch, and each node's
/// subscribers are told (a reset) before they get the new epoch's publications, each at the
/// next offset: no gap goes unannounced.
pub(crate) async fn a_restarted_broker_is_a_new_epoch_announced_by_a_reset(
    kind: Kind,
) -> Result<()> {
    with_broker(kind, "streams_restart", |mut broker| async move {
        let a = node(&broker, HISTORY)?;
        let b = node(&broker, HISTORY)?;
        let mut on_a = Sse::open(a.addr(), "/r").await?;
        let mut on_b = Sse::open(b.addr(), "/r").await?;
        wait_subscribed(a.addr(), 1).await?;
        wait_subscribed(b.addr(), 1).await?;
        publish_http(a.addr(), "r", "before").await?;
        let before = on_b.event().await?;
        ensure!(before.data == "before", "{before:?}");
        ensure!(on_a.event().await?.data == "before");
        let (old_epoch, _) = position(&before.id)?;

        broker.kill();
        broker.restart()?;
        // Probe until one crosses: the links reconnect with backoff (at most 5 s apart), and
        // publishes made before are refused, not delivered.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut probe = 0;
        let first = loop {
            ensure!(Instant::now() < deadline, "delivery did not resume");
            probe += 1;
            publish_http(a.addr(), "r", &format!("p{probe}")).await?;
            if let Ok(event) = timeout(Duration::from_millis(300), on_b.event()).await {
                break event?;
            }
        };
        publish_http(a.addr(), "r", "last").await?;
        for (who, stream, first) in [("B", &mut on_b, Some(first)), ("A", &mut on_a, None)] {
            let reset = match first {
                Some(event) => event,
                None => stream.event().await?,
            };
            ensure!(
                reset.kind == "reset",
                "{who}: expected a reset, got {reset:?}"
            );
            let (epoch, mut offset) = position(&reset.id)?;
            ensure!(epoch != old_epoch, "{who}: the reset names the old epoch");
            loop {
                let event = stream.event().await?;
                ensure!(
                    event.kind == "message" && position(&event.id)? == (epoch.clone(), offset + 1),
                    "{who}: {event:?} after {epoch}:{offset}"
                );
                offset += 1;
                if event.data == "last" {
                    break;
                }
            }
        }
        Ok(())
    })
    .await
}

/// A topic's stream made anew (as by a broker restarted empty) whose first publications a
/// node missed: the node reads them from the new stream, so its subscribers get a reset to
/// the new epoch's start, then all of it. Without the read they got a reset past them, and a
/// WebSocket or Pusher subscriber, which has no reset, lost them in silence.
pub(crate) async fn a_new_stream_begun_while_a_node_was_away_is_given_from_its_start(
    kind: Kind,
) -> Result<()> {
    with_broker(kind, "streams_reborn", |broker| async move {
        let a = node(&broker, HISTORY)?;
        let b = node(&broker, HISTORY)?;
        let start = fcall(&broker, "reborn", "first")?;
        let (old_epoch, _) = position(&start)?;
        let mut on_b = Sse::open_from(b.addr(), "/reborn", &start).await?;
        let mut room_b = ws(b.addr(), "/reborn").await?;
        wait_subscribed(b.addr(), 1).await?;
        // The stream starts again under a new epoch, and its first two never reach the nodes.
        let base = "{uringcast:reborn}";
        broker.redis_cli(&[
            "DEL",
            &format!("{base}:offset"),
            &format!("{base}:epoch"),
            &format!("{base}:stream"),
        ])?;
        let new_epoch = "1000000000000042";
        broker.redis_cli(&["SET", &format!("{base}:epoch"), new_epoch])?;
        lose(&broker, "reborn", "lost1", 100)?;
        lose(&broker, "reborn", "lost2", 100)?;
        publish_http(a.addr(), "reborn", "after").await?;
        let reset = on_b.event().await?;
        ensure!(reset.kind == "reset", "expected a reset, got {reset:?}");
        ensure!(
            position(&reset.id)? == (new_epoch.to_string(), 0),
            "{reset:?}"
        );
        ensure!(old_epoch != new_epoch);
        for (i, text) in ["lost1", "lost2", "after"].into_iter().enumerate() {
            let event = on_b.event().await?;
            ensure!(
                event.kind == "message" && event.data == text,
                "got {event:?}, expected {text}"
            );
            ensure!(position(&event.id)? == (new_epoch.to_string(), 1 + i as u64));
        }
        // A room's subscriber cannot be told where the old stream ended (the node cannot
        // know whether it went on past what the node saw): closed with 4010.
        match next(&mut room_b).await? {
            WsMessage::Close(Some(frame)) => ensure!(
                u16::from(frame.code) == 4010,
                "the room subscriber was closed with {frame:?}"
            ),
            other => bail!("the room subscriber got {other:?}, not a 4010 close"),
        }
        Ok(())
    })
    .await
}

/// Two clients resume a topic new to the node, on its one worker, from different positions,
/// the later one first: each gets exactly what followed its position, or a reset, never a
/// stream with a hole in it.
pub(crate) async fn two_resumes_from_different_positions_are_exact_or_reset(
    kind: Kind,
) -> Result<()> {
    with_broker(kind, "streams_two_resumes", |broker| async move {
        let url = broker.url();
        let b = Server::start_with(
            &[
                "--mode",
                "broadcast",
                "--workers",
                "1",
                "--history",
                "100",
                "--broker",
                &url,
            ],
            |cmd| {
                cmd.env("RUST_LOG", "warn,redis=off");
            },
        )?;
        let mut ids = Vec::new();
        for i in 1..=6 {
            ids.push(fcall(&broker, "two", &format!("m{i}"))?);
        }
        let mut later = Sse::open_from(b.addr(), "/two", &ids[3]).await?;
        let mut earlier = Sse::open_from(b.addr(), "/two", &ids[1]).await?;
        for (who, stream, from) in [("later", &mut later, 5), ("earlier", &mut earlier, 3)] {
            let first = stream.event().await?;
            if first.kind == "reset" {
                // Told; what follows is whatever comes next, in order.
                continue;
            }
            ensure!(first.data == format!("m{from}"), "{who}: {first:?}");
            for i in from + 1..=6 {
                let event = stream.event().await?;
                ensure!(
                    event.data == format!("m{i}"),
                    "{who}: {event:?}, expected m{i}"
                );
            }
        }
        Ok(())
    })
    .await
}

/// The epoch and offset of an `EPOCH:OFFSET` id.
pub(crate) fn position(id: &str) -> Result<(String, u64)> {
    let (epoch, offset) = id
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{id:?} is not EPOCH:OFFSET"))?;
    Ok((epoch.to_owned(), offset.parse()?))
}

/// One dispatched event, as a browser's `EventSource` would see it.
#[derive(Debug)]
pub(crate) struct Event {
    /// `message`, `binary` or `reset`.
    pub(crate) kind: String,
    pub(crate) data: String,
    /// The stream's last event id when it was dispatched.
    pub(crate) id: String,
}

/// An event-stream client.
pub(crate) struct Sse {
    reader: BufReader<TcpStream>,
    last_id: String,
}

impl Sse {
    pub(crate) async fn open(addr: SocketAddr, path: &str) -> Result<Self> {
        Self::request(addr, path, "").await
    }

    pub(crate) async fn open_from(addr: SocketAddr, path: &str, last_id: &str) -> Result<Self> {
        Self::request(addr, path, &format!("Last-Event-ID: {last_id}\r\n")).await
    }

    async fn request(addr: SocketAddr, path: &str, extra: &str) -> Result<Self> {
        let mut stream = timeout(STEP, TcpStream::connect(addr)).await??;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{extra}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = timeout(STEP, reader.read_line(&mut line)).await??;
            ensure!(n > 0, "closed in the response head: {head:?}");
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
        Ok(Self {
            reader,
            last_id: String::new(),
        })
    }

    /// The next dispatched event.
    pub(crate) async fn event(&mut self) -> Result<Event> {
        let (mut kind, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            let n = timeout(STEP, self.reader.read_line(&mut line))
                .await
                .context("no event within the step")??;
            ensure!(n > 0, "the stream ended");
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if data.is_empty() {
                    kind.clear();
                    continue;
                }
                data.pop();
                let kind = if kind.is_empty() {
                    "message".into()
                } else {
                    kind
                };
                return Ok(Event {
                    kind,
                    data,
                    id: self.last_id.clone(),
                });
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => kind = value.into(),
                "data" => {
                    data.push_str(value);
                    data.push('\n');
                }
                "id" => self.last_id = value.into(),
                _ => {}
            }
        }
    }
}
