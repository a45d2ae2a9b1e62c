//! Topic isolation, per-receiver order with publishers on both workers, and publishing from an outside thread.

use super::*;

// ---------------------------------------------------------------------------------------------
// 1. topic isolation
// ---------------------------------------------------------------------------------------------

/// Room-a traffic never reaches room-b, on either worker, locally or through a mailbox.
///
/// Both rooms get subscribers on both workers (checked with `broadcast_stats`). A room-a
/// client publishes numbered messages until every room-a client has them all: by then each
/// worker has fanned them out, so a leak into room-b would already sit in a room-b queue.
/// Then a room-b client publishes a marker, and it must be the first thing every room-b
/// client receives. The same runs the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn topics_are_isolated_across_workers() -> Result<()> {
    const ROOMS: [&str; 2] = ["room-a", "room-b"];
    const MESSAGES: usize = 50;
    let server = InProcess::start(2, RoomsByPath)?;
    let addr = server.local_addr();

    let mut rooms: [Vec<Ws>; 2] = Default::default();
    let covered = |server: &ServerHandle| {
        ROOMS.iter().all(|room| {
            server
                .broadcast_stats()
                .iter()
                .all(|worker| worker.topic_count(room) >= 1)
        })
    };
    // Connections spread over the workers by SO_REUSEPORT's hash: connect until both rooms
    // have a subscriber on both workers (64 connections all landing on one worker is 2^-63).
    for i in 0..128 {
        if i >= 8 && covered(&server) {
            break;
        }
        rooms[i % 2].push(ws_at(addr, &format!("/{}", ROOMS[i % 2])).await?);
    }
    ensure!(
        covered(&server),
        "after 128 connections, some worker has no subscriber of some room"
    );

    for (from, to) in [(0, 1), (1, 0)] {
        let tag = ROOMS[from];
        for seq in 0..MESSAGES {
            send_text(&mut rooms[from][0], &format!("{tag}:{seq}")).await?;
        }
        for (i, ws) in rooms[from].iter_mut().enumerate() {
            for seq in 0..MESSAGES {
                let got = next_text(ws)
                    .await
                    .with_context(|| format!("{tag} client {i}, message {seq}"))?;
                ensure!(
                    got == format!("{tag}:{seq}"),
                    "{tag} client {i}: expected message {seq}, got {got:?}"
                );
            }
        }
        let marker = format!("{}:marker-after-{tag}", ROOMS[to]);
        send_text(&mut rooms[to][0], &marker).await?;
        for (i, ws) in rooms[to].iter_mut().enumerate() {
            let got = next_text(ws).await?;
            ensure!(
                got == marker,
                "{} client {i} received {got:?} before the marker: {tag} traffic leaked",
                ROOMS[to]
            );
        }
    }
    Ok(())
}

/// A publish-only connection (`/publish/<topic>`) reaches the room without joining it.
///
/// One worker, so a publish is fanned out within the turn that reads it: had the publisher
/// joined the room, its own message and the subscriber's would be queued to it before the
/// pong that answers its later ping. The pong must be the first thing it receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_publish_only_connection_never_receives_its_own_messages() -> Result<()> {
    let server = InProcess::start(1, RoomsByPath)?;
    let addr = server.local_addr();
    let mut subscriber = ws_at(addr, "/room").await?;
    let mut publisher = ws_at(addr, "/publish/room").await?;
    send_text(&mut publisher, "from the feed").await?;
    ensure!(next_text(&mut subscriber).await? == "from the feed");
    send_text(&mut subscriber, "from the room").await?;
    ensure!(next_text(&mut subscriber).await? == "from the room");
    ensure!(
        server.broadcast_stats()[0].topic_count("room") == 1,
        "the publisher must not count as a subscriber"
    );
    timeout(
        STEP,
        publisher.send(WsMessage::Ping(b"marker".to_vec().into())),
    )
    .await
    .context("sending the ping timed out")??;
    match timeout(STEP, publisher.next()).await {
        Ok(Some(Ok(WsMessage::Pong(payload)))) => ensure!(&payload[..] == b"marker"),
        other => bail!("the publisher's first frame should be the pong, got {other:?}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. per-receiver order, two workers, publishers on both
// ---------------------------------------------------------------------------------------------

/// With `--workers 2`, each room has subscribers and a publisher on each worker (placement
/// read from `/metrics` after each connection). All four publishers send numbered sequences
/// at once; every client of a room sees each of its room's publishers' sequences complete
/// and in order, and nothing of the other room.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
pub(crate) async fn every_publishers_sequence_arrives_complete_and_in_order_on_two_workers(
) -> Result<()> {
    const ROOMS: [&str; 2] = ["room-a", "room-b"];
    const PER_ROOM: usize = 12;
    const MESSAGES: u64 = 1000;
    let server = Server::start(&[
        "--mode",
        "broadcast",
        "--workers",
        "2",
        "--ping-interval",
        "0",
    ])?;
    let addr = server.addr();

    // (room, worker, connection), learning each connection's worker from the one per-worker
    // subscription gauge that moved.
    let mut clients: Vec<(usize, usize, Ws)> = Vec::new();
    let mut before = subscriptions_by_worker(addr).await?;
    ensure!(
        before.len() == 2,
        "expected 2 workers in /metrics, got {before:?}"
    );
    let placed = |clients: &[(usize, usize, Ws)], room: usize, worker: usize| {
        clients
            .iter()
            .filter(|(r, w, _)| *r == room && *w == worker)
            .count()
    };
    for (room, tag) in ROOMS.iter().enumerate() {
        for _ in 0..64 {
            let count = clients.iter().filter(|(r, _, _)| *r == room).count();
            if count >= PER_ROOM && placed(&clients, room, 0) >= 2 && placed(&clients, room, 1) >= 2
            {
                break;
            }
            let ws = ws_at(addr, &format!("/{tag}")).await?;
            let after = subscriptions_by_worker(addr).await?;
            let moved: Vec<usize> = (0..2).filter(|&w| after[w] != before[w]).collect();
            ensure!(
                moved.len() == 1 && after[moved[0]] == before[moved[0]] + 1.0,
                "one new subscriber should move one worker's gauge by 1: {before:?} -> {after:?}"
            );
            clients.push((room, moved[0], ws));
            before = after;
        }
        for worker in 0..2 {
            ensure!(
                placed(&clients, room, worker) >= 2,
                "{tag} has fewer than 2 subscribers on worker {worker}"
            );
        }
    }

    // Publishers: per room, the first client on worker 0 and the first on worker 1.
    let mut publishers: Vec<(usize, usize)> = Vec::new(); // (client index, room)
    for room in 0..2 {
        for worker in 0..2 {
            let index = clients
                .iter()
                .position(|(r, w, _)| *r == room && *w == worker)
                .expect("placement checked above");
            publishers.push((index, room));
        }
    }
    let publishers_in = |room: usize| publishers.iter().filter(|(_, r)| *r == room).count();
    let counts = [publishers_in(0), publishers_in(1)];

    let started = Instant::now();
    let mut receivers = JoinSet::new();
    let mut senders = JoinSet::new();
    let mut idle_sinks = Vec::new();
    for (index, (room, worker, ws)) in clients.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        let tag = ROOMS[room];
        receivers.spawn(receive_sequences(
            stream,
            tag,
            index,
            worker,
            counts[room],
            MESSAGES,
        ));
        match publishers.iter().position(|(i, _)| *i == index) {
            Some(publisher) => {
                senders.spawn(send_sequence(sink, tag, publisher, MESSAGES));
            }
            None => idle_sinks.push(sink),
        }
    }
    while let Some(sent) = senders.join_next().await {
        idle_sinks.push(sent??);
    }
    let mut receiver_count = 0;
    while let Some(received) = receivers.join_next().await {
        received??;
        receiver_count += 1;
    }
    eprintln!(
        "order: {receiver_count} receivers, {} publishers x {MESSAGES} messages in {:?}",
        publishers.len(),
        started.elapsed()
    );
    Ok(())
}

pub(crate) type WsSink = futures_util::stream::SplitSink<Ws, WsMessage>;
pub(crate) type WsStream = futures_util::stream::SplitStream<Ws>;

/// Sends `room:publisher:0` .. `room:publisher:{messages-1}` as fast as the socket takes them.
pub(crate) async fn send_sequence(
    mut sink: WsSink,
    tag: &'static str,
    publisher: usize,
    messages: u64,
) -> Result<WsSink> {
    for seq in 0..messages {
        timeout(
            STEP,
            sink.send(WsMessage::text(format!("{tag}:{publisher}:{seq}"))),
        )
        .await
        .with_context(|| format!("publisher {publisher}: sending {seq} timed out"))?
        .with_context(|| format!("publisher {publisher}: sending {seq}"))?;
    }
    Ok(sink)
}

/// Receives until every one of the room's `publishers` has delivered `messages` numbered
/// messages; each publisher's numbers must arrive in order with no gap, and nothing may
/// come from another room.
pub(crate) async fn receive_sequences(
    mut stream: WsStream,
    tag: &'static str,
    index: usize,
    worker: usize,
    publishers: usize,
    messages: u64,
) -> Result<()> {
    let who = format!("{tag} client {index} (worker {worker})");
    // The next sequence number expected from each publisher.
    let mut next: HashMap<usize, u64> = HashMap::new();
    for received in 0..publishers as u64 * messages {
        let text = match timeout(STEP, stream.next()).await {
            Err(_) => bail!("{who}: nothing within {STEP:?} after {received} messages"),
            Ok(None) => bail!("{who}: the stream ended after {received} messages"),
            Ok(Some(message)) => message?.into_text()?,
        };
        let (room, publisher, seq) = parse_numbered(&text)?;
        ensure!(room == tag, "{who} received {text:?} from another room");
        let expected = next.entry(publisher).or_insert(0);
        ensure!(
            seq == *expected,
            "{who}: from publisher {publisher} expected {expected}, got {seq}"
        );
        *expected += 1;
    }
    ensure!(
        next.len() == publishers && next.values().all(|&n| n == messages),
        "{who}: incomplete sequences {next:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. publishing from an outside thread
// ---------------------------------------------------------------------------------------------

/// Subscribes every connection to `ticks`.
#[derive(Clone)]
pub(crate) struct Ticks;

impl Handler for Ticks {
    type Data = ();

    fn on_open(&mut self, conn: &mut Connection<'_, ()>, _request: &Request) {
        conn.subscribe("ticks")
            .expect("a short topic is within every limit");
    }

    fn on_message(&mut self, _conn: &mut Connection<'_, ()>, _message: Message<'_>) {}
}

/// A plain thread publishes through `ServerHandle::publish` while clients on both workers
/// read: every client gets every tick, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn ticks_published_from_an_outside_thread_reach_every_client_in_order(
) -> Result<()> {
    const TICKS: u64 = 2000;
    const CLIENTS: usize = 16;
    let server = InProcess::start(2, Ticks)?;
    let addr = server.local_addr();
    let mut clients = Vec::new();
    let on_every_worker = |server: &ServerHandle| {
        server
            .broadcast_stats()
            .iter()
            .all(|worker| worker.topic_count("ticks") >= 1)
    };
    while clients.len() < CLIENTS || !on_every_worker(&server) {
        ensure!(
            clients.len() < 128,
            "128 connections and still a worker without a subscriber"
        );
        clients.push(ws_at(addr, "/").await?);
    }
    let mut readers = JoinSet::new();
    for (index, mut ws) in clients.into_iter().enumerate() {
        readers.spawn(async move {
            for seq in 0..TICKS {
                let text = next_text(&mut ws)
                    .await
                    .with_context(|| format!("client {index} waiting for tick {seq}"))?;
                ensure!(
                    text == tick_json(seq),
                    "client {index}: expected tick {seq}, got {text:?}"
                );
            }
            Ok::<_, anyhow::Error>(ws)
        });
    }
    let handle: &ServerHandle = &server;
    let taken = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                (0..TICKS)
                    .map(|seq| {
                        handle
                            .publish("ticks", OpCode::Text, tick_json(seq).as_bytes())
                            .workers
                    })
                    .collect::<Vec<usize>>()
            })
            .join()
    })
    .map_err(|_| anyhow!("the publishing thread panicked"))?;
    let short: Vec<(usize, usize)> = taken
        .iter()
        .enumerate()
        .filter(|&(_, &workers)| workers != 2)
        .map(|(seq, &workers)| (seq, workers))
        .collect();
    ensure!(
        short.is_empty(),
        "{} of {TICKS} publishes were not handed to both workers; the first (tick, workers): {:?}",
        short.len(),
        &short[..short.len().min(5)]
    );
    let mut done = Vec::new();
    while let Some(reader) = readers.join_next().await {
        done.push(reader??);
    }
    Ok(())
}

pub(crate) fn tick_json(seq: u64) -> String {
    format!(
        "{{\"seq\":{seq},\"price\":{}.{:02}}}",
        100 + seq % 7,
        seq % 100
    )
}
