//! An in-memory harness for the engine, in the spirit of quinn-proto's `Pair`: several
//! workers' [`Broadcast`] services, their mailboxes and their connections, driven step by
//! step on one thread with no io_uring. A connection here is a slot like the driver's, in
//! its open or stream stage, whose send queue the test reads instead of a socket.
//!
//! With it, the tests below check the engine against a model: for any interleaving of
//! publishes from several workers, subscriptions, disconnects, lost mail and recoveries,
//! every subscriber's publications come in strictly increasing order with no duplicate and
//! no gap, and each recovery is exact or says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

use super::history::{HistoryLimits, LocalLog, Log};
use super::{Broadcast, ConnState, Connection, Handler, Mailboxes, Message, Position, Publication};
use crate::config::Config;
use crate::driver::testing::{Conn, PerMessageDeflate, Stage, TimerWheel};
use crate::driver::{ConnId, Shared, WorkerView};
use crate::protocol::OpCode;

/// A handler with nothing to do: the harness drives the engine's own paths.
#[derive(Clone, Debug, Default)]
pub(crate) struct Probe;

impl Handler for Probe {
    type Data = ();

    fn on_message(&mut self, _: &mut Connection<'_, ()>, _: Message<'_>) {}
}

type Service = Broadcast<Probe>;

/// One worker: its service and its connections.
struct Node {
    service: Service,
    conns: Slab<Conn<ConnState<()>>>,
    dirty: Vec<usize>,
    wheel: TimerWheel,
    deflate: PerMessageDeflate,
}

/// Several workers of one server, in memory.
pub(crate) struct Cluster {
    pub hub: Arc<Mailboxes>,
    shared: Arc<Shared>,
    nodes: Vec<Node>,
}

/// What a subscriber's queue held, read as SSE events: `(event kind, offset)`; a reset's
/// offset is the head it names.
pub(crate) type Seen = Vec<(&'static str, u64)>;

impl Cluster {
    /// `workers` workers; with `history` publications per topic when it is not 0.
    pub(crate) fn new(workers: usize, history: usize, max_recover: usize) -> Self {
        let shared = Arc::new(Shared::new(workers).expect("eventfds for the harness"));
        let log = (history > 0).then(|| {
            Arc::new(
                LocalLog::new(HistoryLimits {
                    entries_per_topic: history,
                    ttl: Duration::from_secs(3600),
                    max_bytes: 1 << 30,
                    max_streams: 1 << 10,
                })
                .alone(),
            ) as Arc<dyn Log>
        });
        Self::with_log(shared, log, history, max_recover)
    }

    /// `workers` workers reading `log` (a broker's, say) for positions and recovery.
    pub(crate) fn with_log_of(workers: usize, log: Arc<dyn Log>, max_recover: usize) -> Self {
        let shared = Arc::new(Shared::new(workers).expect("eventfds for the harness"));
        Self::with_log(shared, Some(log), 1, max_recover)
    }

    fn with_log(
        shared: Arc<Shared>,
        log: Option<Arc<dyn Log>>,
        history: usize,
        max_recover: usize,
    ) -> Self {
        let workers = shared.stats.len();
        let hub = Arc::new(Mailboxes::with_log(Arc::clone(&shared), log));
        let config: Config = crate::config::ServerBuilder::default()
            .history(history)
            .max_recover(max_recover.max(1))
            .build()
            .expect("a valid harness configuration");
        let nodes = (0..workers)
            .map(|id| Node {
                service: Broadcast::new(Probe, Arc::clone(&hub), id, &config),
                conns: Slab::with_capacity(64),
                dirty: Vec::new(),
                wheel: TimerWheel::new(Instant::now()),
                deflate: PerMessageDeflate::new(false, 128),
            })
            .collect();
        Self { hub, shared, nodes }
    }

    /// Runs `f` on worker `w`'s service with its context, as the driver does for a call.
    fn with<R>(
        &mut self,
        w: usize,
        f: impl FnOnce(&mut Service, &mut WorkerView<'_, ConnState<()>>) -> R,
    ) -> R {
        let node = &mut self.nodes[w];
        let mut ctx = WorkerView {
            conns: &mut node.conns,
            dirty: &mut node.dirty,
            now_tick: 0,
            drain_ticks: 10,
            wheel: &mut node.wheel,
            max_backlog_bytes: 1 << 30,
            stats: &self.shared.stats[w],
            worker: w,
            shared: &self.shared,
            deflate: &mut node.deflate,
        };
        f(&mut node.service, &mut ctx)
    }

    /// A new event-stream connection on worker `w` (not yet subscribed).
    pub(crate) fn stream(&mut self, w: usize) -> ConnId {
        let node = &mut self.nodes[w];
        let entry = node.conns.vacant_entry();
        let key = entry.key();
        let mut conn = Conn::new(1, key as u32, 1024, 0);
        conn.stage = Stage::Stream;
        entry.insert(conn);
        ConnId {
            key: key as u32,
            generation: 1,
        }
    }

    /// Subscribes a stream from `since` (its last position, if any), as an SSE request does.
    pub(crate) fn subscribe(
        &mut self,
        w: usize,
        conn: ConnId,
        topic: &str,
        since: Option<Position>,
    ) {
        self.with(w, |service, ctx| {
            let log = service.hub.log.clone();
            match log {
                Some(log) => {
                    let (recovery, resuming) = super::history::read_resume(
                        log.as_ref(),
                        topic,
                        since,
                        service.max_recover,
                    );
                    service.subscribe_from(ctx, conn, topic, recovery, resuming);
                }
                None => {
                    service.subscribe(ctx, conn, topic);
                }
            }
        });
    }

    /// Publishes from worker `w`, as a handler or an HTTP publish there does.
    pub(crate) fn publish(&mut self, w: usize, topic: &str, payload: &[u8]) {
        self.with(w, |service, ctx| {
            service.publish(ctx, topic, OpCode::Text, Bytes::copy_from_slice(payload));
        });
    }

    /// Worker `w`'s turn: what its mailbox holds is fanned out.
    pub(crate) fn step(&mut self, w: usize) {
        self.with(w, |service, ctx| service.drain_mailbox(ctx));
    }

    /// Loses what worker `w`'s mailbox holds (as a full mailbox would have).
    pub(crate) fn lose_mail(&mut self, w: usize) -> usize {
        let mut lost = 0;
        while self.hub.take(w).is_some() {
            lost += 1;
        }
        lost
    }

    /// The connection goes away; its subscriptions with it.
    pub(crate) fn disconnect(&mut self, w: usize, conn: ConnId) {
        let data = std::mem::take(&mut self.nodes[w].conns[conn.key as usize].data);
        self.with(w, |service, ctx| {
            crate::driver::Service::on_close(service, ctx, conn, data)
        });
        self.nodes[w].conns.remove(conn.key as usize);
    }

    /// What has been queued for a stream since the last call, as events.
    pub(crate) fn take(&mut self, w: usize, conn: ConnId) -> Seen {
        let queue = &mut self.nodes[w].conns[conn.key as usize].queue;
        let mut bytes = Vec::new();
        let frames: Vec<Bytes> = queue.front(usize::MAX).cloned().collect();
        for frame in &frames {
            bytes.extend_from_slice(frame);
        }
        queue.consume(bytes.len());
        parse_events(&bytes)
    }
}

/// `(kind, offset)` of each event in an SSE byte stream written by `crate::sse`; id-only
/// events (the stream's starting position) are left out.
fn parse_events(bytes: &[u8]) -> Seen {
    let text = std::str::from_utf8(bytes).expect("events are UTF-8");
    let mut seen = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let mut kind = "message";
        let mut offset = None;
        let mut data = false;
        for line in block.lines() {
            if let Some(id) = line.strip_prefix("id: ") {
                offset = id.rsplit_once(':').and_then(|(_, o)| o.parse().ok());
            } else if line == "event: reset" {
                kind = "reset";
            } else if line.starts_with("data") {
                data = true;
            }
        }
        if let (true, Some(offset)) = (data, offset) {
            seen.push((kind, offset));
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_publish_reaches_every_worker_in_order() {
        let mut cluster = Cluster::new(2, 100, 300);
        let a = cluster.stream(0);
        let b = cluster.stream(1);
        cluster.subscribe(0, a, "t", None);
        cluster.subscribe(1, b, "t", None);
        cluster.publish(0, "t", b"1");
        cluster.publish(1, "t", b"2");
        cluster.publish(0, "t", b"3");
        cluster.step(0);
        cluster.step(1);
        assert_eq!(
            cluster.take(0, a),
            [("message", 1), ("message", 2), ("message", 3)]
        );
        assert_eq!(
            cluster.take(1, b),
            [("message", 1), ("message", 2), ("message", 3)]
        );
    }

    #[test]
    fn lost_mail_is_filled_from_history_before_the_next_publication() {
        let mut cluster = Cluster::new(2, 100, 300);
        let b = cluster.stream(1);
        cluster.subscribe(1, b, "t", None);
        cluster.publish(0, "t", b"1");
        cluster.publish(0, "t", b"2");
        assert_eq!(cluster.lose_mail(1), 2);
        cluster.publish(0, "t", b"3");
        cluster.step(1);
        assert_eq!(
            cluster.take(1, b),
            [("message", 1), ("message", 2), ("message", 3)]
        );
        assert_eq!(
            cluster.hub.stats[1]
                .gaps_filled
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn lost_mail_history_no_longer_holds_is_reported() {
        let mut cluster = Cluster::new(2, 2, 300);
        let b = cluster.stream(1);
        cluster.subscribe(1, b, "t", None);
        for i in 1..=4u8 {
            cluster.publish(0, "t", &[i]);
        }
        cluster.lose_mail(1);
        cluster.publish(0, "t", b"5");
        cluster.step(1);
        // 1 and 2 are gone from a history of two: a reset naming 4, then 5.
        assert_eq!(cluster.take(1, b), [("reset", 4), ("message", 5)]);
    }

    #[test]
    fn a_subscriber_that_joins_while_mail_is_in_flight_gets_no_duplicate() {
        let mut cluster = Cluster::new(2, 100, 300);
        let old = cluster.stream(1);
        cluster.subscribe(1, old, "t", None);
        cluster.publish(0, "t", b"1");
        cluster.publish(0, "t", b"2");
        // Worker 1 has not drained yet; a new subscriber arrives from position 0.
        let first = cluster.take(1, old);
        assert!(first.is_empty());
        let head = cluster.hub.log.as_ref().unwrap().read("t", None, 0).head();
        let new = cluster.stream(1);
        let from = Position { offset: 0, ..head };
        cluster.subscribe(1, new, "t", Some(from));
        cluster.step(1);
        assert_eq!(cluster.take(1, new), [("message", 1), ("message", 2)]);
        assert_eq!(cluster.take(1, old), [("message", 1), ("message", 2)]);
    }

    #[test]
    fn only_a_presented_position_counts_as_a_recovery() {
        use std::sync::atomic::Ordering::Relaxed;
        let mut cluster = Cluster::new(1, 100, 300);
        let fresh = cluster.stream(0);
        cluster.subscribe(0, fresh, "t", None);
        cluster.publish(0, "t", b"1");
        cluster.publish(0, "t", b"2");
        cluster.step(0);
        let stats = |c: &Cluster| {
            let s = &c.hub.stats[0];
            (
                s.recoveries_exact.load(Relaxed),
                s.recoveries_failed.load(Relaxed),
                s.replayed.load(Relaxed),
            )
        };
        assert_eq!(
            stats(&cluster),
            (0, 0, 0),
            "a new subscriber is no recovery"
        );
        let head = cluster.hub.log.as_ref().unwrap().read("t", None, 0).head();
        let back = cluster.stream(0);
        cluster.subscribe(0, back, "t", Some(Position { offset: 0, ..head }));
        assert_eq!(cluster.take(0, back), [("message", 1), ("message", 2)]);
        assert_eq!(stats(&cluster), (1, 0, 2));
        let lost = cluster.stream(0);
        let other = Position {
            epoch: super::super::Epoch::from_bits(99),
            offset: 1,
        };
        cluster.subscribe(0, lost, "t", Some(other));
        // Another epoch: a failed recovery, though the current epoch is given from its start.
        assert_eq!(
            cluster.take(0, lost),
            [("reset", 0), ("message", 1), ("message", 2)]
        );
        assert_eq!(stats(&cluster), (1, 1, 4));
    }

    #[test]
    fn a_position_of_another_epoch_gets_this_epoch_from_its_start_while_it_is_kept() {
        // Two publications kept per topic: the epoch's start goes with the third.
        let mut cluster = Cluster::new(2, 2, 300);
        let other = Position {
            epoch: super::super::Epoch::from_bits(99),
            offset: 7,
        };
        cluster.publish(0, "t", b"1");
        cluster.publish(0, "t", b"2");
        let early = cluster.stream(1);
        cluster.subscribe(1, early, "t", Some(other));
        cluster.publish(0, "t", b"3");
        cluster.step(1);
        // The reset says where it now is, before the epoch's first publication; then every
        // publication of the epoch, each once, the live one included.
        assert_eq!(
            cluster.take(1, early),
            [("reset", 0), ("message", 1), ("message", 2), ("message", 3)]
        );
        // Publication 1 is gone: only the head can be named, and nothing is replayed.
        let late = cluster.stream(1);
        cluster.subscribe(1, late, "t", Some(other));
        cluster.publish(0, "t", b"4");
        cluster.step(1);
        assert_eq!(cluster.take(1, late), [("reset", 3), ("message", 4)]);
        assert_eq!(cluster.take(1, early), [("message", 4)]);
        // A position of the epoch itself is no epoch start, even one before what is kept.
        let head = cluster.hub.log.as_ref().unwrap().read("t", None, 0).head();
        let behind = cluster.stream(0);
        cluster.subscribe(0, behind, "t", Some(Position { offset: 0, ..head }));
        assert_eq!(cluster.take(0, behind), [("reset", 4)]);
    }

    #[test]
    fn a_head_learned_without_a_publication_fills_the_gap_or_resets() {
        let mut cluster = Cluster::new(2, 100, 300);
        let b = cluster.stream(1);
        cluster.subscribe(1, b, "t", None);
        cluster.publish(0, "t", b"1");
        cluster.publish(0, "t", b"2");
        cluster.lose_mail(1);
        let head = cluster.hub.log.as_ref().unwrap().read("t", None, 0).head();
        cluster
            .hub
            .post(&Publication::head_only(Arc::from("t"), head), None);
        cluster.step(1);
        assert_eq!(cluster.take(1, b), [("message", 1), ("message", 2)]);
        // A head of another epoch (the stream was made again): what came before is lost.
        let other = Position {
            epoch: super::super::Epoch::from_bits(99),
            offset: 1,
        };
        cluster
            .hub
            .post(&Publication::head_only(Arc::from("t"), other), None);
        cluster.step(1);
        assert_eq!(cluster.take(1, b), [("reset", 1)]);
    }

    #[test]
    fn a_gap_at_the_head_resets_the_subscribers_though_no_position_is_missing() {
        let mut cluster = Cluster::new(2, 100, 300);
        let b = cluster.stream(1);
        cluster.subscribe(1, b, "t", None);
        cluster.publish(0, "t", b"1");
        cluster.step(1);
        assert_eq!(cluster.take(1, b), [("message", 1)]);
        let head = cluster.hub.log.as_ref().unwrap().read("t", None, 0).head();
        // The same head as a plain head_only changes nothing for them.
        cluster
            .hub
            .post(&Publication::head_only(Arc::from("t"), head), None);
        cluster.step(1);
        assert_eq!(cluster.take(1, b), []);
        let reported = |c: &Cluster| {
            c.hub.stats[1]
                .gaps_reported
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = reported(&cluster);
        // As a gap, they are told they missed something there, and it is counted.
        cluster
            .hub
            .post(&Publication::gap_at(Arc::from("t"), head), None);
        cluster.step(1);
        assert_eq!(cluster.take(1, b), [("reset", 1)]);
        assert_eq!(reported(&cluster), before + 1);
        // What follows reaches them as before.
        cluster.publish(0, "t", b"2");
        cluster.step(1);
        assert_eq!(cluster.take(1, b), [("message", 2)]);
        // A gap with no head known (nothing of the topic read by the link yet): they are
        // told where they stand.
        let unknown = Position::UNKNOWN;
        cluster
            .hub
            .post(&Publication::gap_at(Arc::from("t"), unknown), None);
        cluster.step(1);
        assert_eq!(cluster.take(1, b), [("reset", 2)]);
        // A gap whose head the worker cannot fill is told once, not twice.
        let later = Position {
            offset: head.offset + 5,
            ..head
        };
        let before = reported(&cluster);
        cluster
            .hub
            .post(&Publication::gap_at(Arc::from("t"), later), None);
        cluster.step(1);
        assert_eq!(cluster.take(1, b), [("reset", later.offset)]);
        assert_eq!(reported(&cluster), before + 1);
    }

    /// A broker's stream as a node holds it, set by the test: one epoch, offsets from 1.
    #[derive(Debug, Default)]
    struct Stream(std::sync::Mutex<Vec<Arc<Publication>>>);

    impl Stream {
        fn put(&self, epoch: u64, offset: u64) -> Arc<Publication> {
            let position = Position {
                epoch: super::super::Epoch::from_bits(epoch),
                offset,
            };
            let publication = Publication::new(
                Arc::from("t"),
                OpCode::Text,
                Bytes::from(offset.to_string()),
                Some(position),
            );
            let mut entries = self.0.lock().unwrap();
            if entries.first().and_then(|p| p.position()).map(|p| p.epoch) != Some(position.epoch) {
                entries.clear();
            }
            entries.push(Arc::clone(&publication));
            publication
        }
    }

    impl Log for Stream {
        fn append(
            &self,
            topic: &Arc<str>,
            opcode: OpCode,
            payload: Bytes,
            _: Option<super::super::publication::Stamp>,
            _: &mut dyn FnMut(&Arc<Publication>),
        ) -> Arc<Publication> {
            Publication::new(Arc::clone(topic), opcode, payload, None)
        }

        fn read(&self, _: &str, since: Option<Position>, _: usize) -> super::super::Recovery {
            let entries = self.0.lock().unwrap();
            let head = entries
                .last()
                .and_then(|p| p.position())
                .unwrap_or(Position::UNKNOWN);
            match since {
                Some(since) if since.epoch != head.epoch => {
                    super::super::Recovery::NotRecovered { head }
                }
                _ => super::super::Recovery::Recovered {
                    head,
                    publications: entries
                        .iter()
                        .filter(|p| since.is_some_and(|s| p.position().unwrap().offset > s.offset))
                        .cloned()
                        .collect(),
                },
            }
        }

        fn render_metrics(&self, _: &mut String) {}
    }

    #[test]
    fn a_new_epoch_is_given_from_its_start_when_the_log_has_it() {
        let stream = Arc::new(Stream::default());
        let mut cluster = Cluster::with_log_of(1, Arc::clone(&stream) as Arc<dyn Log>, 300);
        let a = cluster.stream(0);
        cluster.subscribe(0, a, "t", None);
        cluster.hub.post(&stream.put(7, 1), None);
        cluster.step(0);
        assert_eq!(cluster.take(0, a), [("message", 1)]);
        // The broker restarted empty: epoch 9 made 1 and 2 while this node was away, and its
        // link came back with the stream's tail, then 3 arrived live.
        stream.put(9, 1);
        let head = stream.put(9, 2).position().unwrap();
        cluster
            .hub
            .post(&Publication::head_only(Arc::from("t"), head), None);
        cluster.hub.post(&stream.put(9, 3), None);
        cluster.step(0);
        // Epoch 7's tail is lost to it (a reset at the start of 9), and nothing of 9 is.
        assert_eq!(
            cluster.take(0, a),
            [("reset", 0), ("message", 1), ("message", 2), ("message", 3)]
        );
        // A new epoch whose start the log no longer has: a reset naming its head.
        let mut entries = stream.0.lock().unwrap();
        entries.clear();
        drop(entries);
        stream.put(11, 5);
        let head = stream.put(11, 6).position().unwrap();
        stream.0.lock().unwrap().remove(0);
        cluster
            .hub
            .post(&Publication::head_only(Arc::from("t"), head), None);
        cluster.step(0);
        assert_eq!(cluster.take(0, a), [("reset", 6)]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Publish { worker: usize, topic: usize },
        Step { worker: usize },
        LoseMail { worker: usize },
        Join { worker: usize, topic: usize },
        Leave { index: usize },
        Rejoin { index: usize, worker: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, 0..2usize).prop_map(|(worker, topic)| Op::Publish { worker, topic }),
            3 => (0..3usize).prop_map(|worker| Op::Step { worker }),
            1 => (0..3usize).prop_map(|worker| Op::LoseMail { worker }),
            2 => (0..3usize, 0..2usize).prop_map(|(worker, topic)| Op::Join { worker, topic }),
            1 => any::<usize>().prop_map(|index| Op::Leave { index }),
            2 => (any::<usize>(), 0..3usize).prop_map(|(index, worker)| Op::Rejoin { index, worker }),
        ]
    }

    /// A subscriber across its reconnections: its topic, the last offset it has, where it is
    /// connected now.
    struct Subscriber {
        topic: usize,
        last: Option<Position>,
        at: Option<(usize, ConnId)>,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// For any interleaving, each subscriber sees its topic's offsets as 1, 2, 3, … with
        /// no gap and no duplicate across its reconnections, when history holds everything
        /// (a large history and recover limit); and everything published is seen by a
        /// subscriber that is still connected once every mailbox is drained.
        #[test]
        fn subscribers_see_every_offset_once_and_in_order(ops in proptest::collection::vec(op(), 1..120)) {
            check(&ops, 10_000, 10_000, true)?;
        }

        /// With a small history and recover limit, order still holds and there is never a
        /// duplicate; a gap is allowed only right after a reset that names the head.
        #[test]
        fn with_little_history_every_loss_is_announced(ops in proptest::collection::vec(op(), 1..120)) {
            check(&ops, 3, 2, false)?;
        }
    }

    fn check(
        ops: &[Op],
        history: usize,
        max_recover: usize,
        exact: bool,
    ) -> Result<(), TestCaseError> {
        let topics = ["a", "b"];
        let mut cluster = Cluster::new(3, history, max_recover);
        let mut subscribers: Vec<Subscriber> = Vec::new();
        let mut heads = [0u64; 2];
        let observe = |cluster: &mut Cluster, s: &mut Subscriber| -> Result<(), TestCaseError> {
            let Some((w, conn)) = s.at else { return Ok(()) };
            for (kind, offset) in cluster.take(w, conn) {
                let last = s.last.map_or(0, |p| p.offset);
                match kind {
                    "message" => {
                        if exact {
                            prop_assert_eq!(offset, last + 1, "a gap or a duplicate");
                        } else {
                            prop_assert!(
                                offset > last || s.last.is_none(),
                                "out of order: {} after {}",
                                offset,
                                last
                            );
                        }
                    }
                    _ => {
                        prop_assert!(!exact, "a reset although history holds everything");
                    }
                }
                let epoch = s
                    .last
                    .map(|p| p.epoch)
                    .or(epochs_of(cluster, topics[s.topic]));
                if let Some(epoch) = epoch {
                    s.last = Some(Position { epoch, offset });
                }
            }
            Ok(())
        };
        fn epochs_of(cluster: &Cluster, topic: &str) -> Option<super::super::Epoch> {
            cluster
                .hub
                .log
                .as_ref()
                .map(|log| log.read(topic, None, 0).head().epoch)
        }
        for op in ops {
            match *op {
                Op::Publish { worker, topic } => {
                    cluster.publish(worker, topics[topic], b"x");
                    heads[topic] += 1;
                }
                Op::Step { worker } => cluster.step(worker),
                Op::LoseMail { worker } => {
                    cluster.lose_mail(worker);
                }
                Op::Join { worker, topic } => {
                    let conn = cluster.stream(worker);
                    cluster.subscribe(worker, conn, topics[topic], None);
                    let head = cluster
                        .hub
                        .log
                        .as_ref()
                        .unwrap()
                        .read(topics[topic], None, 0)
                        .head();
                    // A new subscriber starts at the head it was told.
                    subscribers.push(Subscriber {
                        topic,
                        last: Some(head),
                        at: Some((worker, conn)),
                    });
                }
                Op::Leave { index } if !subscribers.is_empty() => {
                    let count = subscribers.len();
                    let s = &mut subscribers[index % count];
                    observe(&mut cluster, s)?;
                    if let Some((w, conn)) = s.at.take() {
                        cluster.disconnect(w, conn);
                    }
                }
                Op::Rejoin { index, worker } if !subscribers.is_empty() => {
                    let count = subscribers.len();
                    let s = &mut subscribers[index % count];
                    observe(&mut cluster, s)?;
                    if let Some((w, conn)) = s.at.take() {
                        cluster.disconnect(w, conn);
                    }
                    let conn = cluster.stream(worker);
                    cluster.subscribe(worker, conn, topics[s.topic], s.last);
                    s.at = Some((worker, conn));
                }
                Op::Leave { .. } | Op::Rejoin { .. } => {}
            }
            for s in &mut subscribers {
                observe(&mut cluster, s)?;
            }
        }
        // Drained, then one more publish per topic: gaps left by lost mail are filled (or
        // announced) by it.
        for (t, topic) in topics.iter().enumerate() {
            cluster.publish(0, topic, b"last");
            heads[t] += 1;
        }
        for w in 0..3 {
            cluster.step(w);
        }
        for s in &mut subscribers {
            observe(&mut cluster, s)?;
            if s.at.is_some() {
                prop_assert_eq!(
                    s.last.map(|p| p.offset),
                    Some(heads[s.topic]),
                    "a connected subscriber reaches the head"
                );
            }
        }
        Ok(())
    }
}
