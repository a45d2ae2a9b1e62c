//! A broker's stream as the engine's [`Log`]: with `--broker` and `--history`, the broker
//! (a Redis function, `redis.rs`) gives each publish its position, so that every node agrees
//! on it, and keeps the topic's history. This is the node's side of it: a bounded hot copy of
//! what the link received per topic, which the workers read without ever waiting on the
//! network.
//!
//! - Positions need not be consecutive per topic: with NATS JetStream an offset is the
//!   stream's sequence, shared by every subject, and each publication names its topic's
//!   previous offset ([`Publication::previous`]); the copy holds a chain of them.
//! - `append` gives a publish no position and delivers nothing: the link sends it to the
//!   broker, and every node, this one included, delivers it when the broker sends it back
//!   with its position (`task.rs`), in offset order per topic.
//! - `read` answers from the hot copy. A topic the node has not heard of yet (no local
//!   subscriber until now) is answered with the client's own position as the head: the link
//!   subscribes the topic, loads its history from the broker, and sends the workers the
//!   stream's head ([`Publication::head_only`]), from which each worker brings its
//!   subscribers forward from the hot copy, or resets them. A position ahead of what the hot
//!   copy holds is treated the same way.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;

use super::redis::StreamSettings;
use super::{BrokerConfig, BrokerUrl};
use crate::broadcast::{Epoch, HistoryLimits, Log, Position, Publication, Recovery};
use crate::protocol::OpCode;

/// The hot copy of every topic's stream this node receives, and the counters of the link's
/// gap repair.
#[derive(Debug)]
pub(crate) struct BrokerLog {
    inner: Mutex<Hot>,
    limits: HistoryLimits,
    pub(crate) stats: LogStats,
}

/// What the broker log counts, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct LogStats {
    /// Publications missed from the broker's pub/sub and then read from its stream.
    pub(crate) gaps_repaired: AtomicU64,
    /// Gaps the broker's stream no longer held: the workers reset their subscribers.
    pub(crate) gaps_reported: AtomicU64,
    /// Topics whose history was loaded from the broker.
    pub(crate) loads: AtomicU64,
    /// Head checks made (one per live topic per round).
    pub(crate) head_checks: AtomicU64,
    /// Publications in the hot copy, and their bytes.
    pub(crate) kept: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

#[derive(Debug, Default)]
struct Hot {
    streams: HashMap<Arc<str>, HotStream>,
    bytes: usize,
}

#[derive(Debug)]
struct HotStream {
    epoch: Epoch,
    /// The last offset known (0 before the first).
    head: u64,
    /// The last publications, contiguous, oldest first, ending at `head` (a hole empties it).
    entries: VecDeque<(Arc<Publication>, Instant)>,
    /// The offset the first of `entries` follows (what a client must have seen to be given
    /// all of them).
    first_prev: u64,
    /// A publication of the topic was lost after this offset without leaving a gap in the
    /// positions (see [`BrokerLog::mark_loss`]): a client at or before it is not recovered.
    lost_after: Option<u64>,
}

impl BrokerLog {
    pub(crate) fn new(limits: HistoryLimits) -> Self {
        Self {
            inner: Mutex::new(Hot::default()),
            limits,
            stats: LogStats::default(),
        }
    }

    /// A log for `config`'s broker, if that broker can give positions (Redis, Redis Cluster,
    /// NATS JetStream); `None` otherwise, and the node then keeps its own positions.
    pub(crate) fn for_broker(config: &BrokerConfig, limits: HistoryLimits) -> Option<Arc<Self>> {
        match config.url {
            BrokerUrl::Redis(_)
            | BrokerUrl::RedisCluster(_)
            | BrokerUrl::Nats(_)
            | BrokerUrl::Kafka(_) => Some(Arc::new(Self::new(limits))),
        }
    }

    /// How the broker is to keep each stream: `--history` entries, and `--history-ttl` (in
    /// whole seconds, at least one) as the idle time before a stream is dropped.
    pub(crate) fn stream_settings(&self) -> StreamSettings {
        StreamSettings {
            max_len: self.limits.entries_per_topic,
            ttl_secs: self.limits.ttl.as_secs_f64().ceil().max(1.0) as u64,
        }
    }

    /// Publications kept per topic (what the link loads from the broker).
    pub(crate) fn entries_per_topic(&self) -> usize {
        self.limits.entries_per_topic
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hot> {
        // Every mutation completes before anything that can panic: a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a publication the link is about to hand to the workers: the next of its stream,
    /// or after a hole (what came before it is then dropped), or of a new epoch. Returns
    /// `false` for one already known (an offset not past the head).
    pub(crate) fn record(&self, publication: &Arc<Publication>) -> bool {
        let Some(position) = publication.position() else {
            return false;
        };
        let mut hot = self.lock();
        let stream = hot.stream(publication.topic(), position.epoch);
        if position.offset <= stream.head {
            return false;
        }
        let mut freed = 0;
        let previous = publication
            .previous()
            .unwrap_or(position.offset.saturating_sub(1));
        if previous != stream.head {
            freed += stream.clear();
        }
        if stream.entries.is_empty() {
            stream.first_prev = previous;
        }
        stream.head = position.offset;
        stream
            .entries
            .push_back((Arc::clone(publication), Instant::now()));
        while stream.entries.len() > self.limits.entries_per_topic {
            freed += stream.pop_front();
        }
        hot.bytes = hot.bytes + publication.size() - freed.min(hot.bytes + publication.size());
        hot.enforce_budget(&self.limits, publication.topic());
        self.publish_gauges(&hot);
        true
    }

    /// Replaces a topic's hot copy with what was loaded from the broker: its head and its
    /// last publications (contiguous, ending at the head), unless the copy already holds a
    /// later head of the same epoch.
    pub(crate) fn load(&self, topic: &Arc<str>, head: Position, entries: Vec<Arc<Publication>>) {
        let mut hot = self.lock();
        let now = Instant::now();
        let stream = hot.stream(topic, head.epoch);
        if stream.head > head.offset {
            return;
        }
        // The contiguous run that ends at the head: what precedes a break is of no use.
        let mut tail: Vec<Arc<Publication>> = Vec::new();
        let mut first_prev = 0;
        for publication in entries {
            let Some(position) = publication.position() else {
                continue;
            };
            if position.epoch != head.epoch || position.offset > head.offset {
                continue;
            }
            let previous = publication
                .previous()
                .unwrap_or(position.offset.saturating_sub(1));
            let follows = tail
                .last()
                .and_then(|p| p.position())
                .is_none_or(|last| last.offset == previous);
            if !follows || tail.is_empty() {
                tail.clear();
                first_prev = previous;
            }
            tail.push(publication);
        }
        let ends_at_head = tail
            .last()
            .and_then(|p| p.position())
            .is_some_and(|last| last.offset == head.offset);
        if !ends_at_head {
            tail.clear();
        }
        let skip = tail.len().saturating_sub(self.limits.entries_per_topic);
        if skip > 0 {
            first_prev = tail[skip - 1].position().map_or(0, |p| p.offset);
        }
        let freed = stream.clear();
        stream.head = head.offset;
        stream.first_prev = first_prev;
        let mut added = 0;
        for publication in tail.into_iter().skip(skip) {
            added += publication.size();
            stream.entries.push_back((publication, now));
        }
        hot.bytes = (hot.bytes + added).saturating_sub(freed);
        hot.enforce_budget(&self.limits, topic);
        self.stats.loads.fetch_add(1, Ordering::Relaxed);
        self.publish_gauges(&hot);
    }

    /// The stream is at `head`, and what lies between the copy's head and it is lost.
    pub(crate) fn mark_head(&self, topic: &Arc<str>, head: Position) {
        let mut hot = self.lock();
        let stream = hot.stream(topic, head.epoch);
        if stream.head >= head.offset {
            return;
        }
        let freed = stream.clear();
        stream.head = head.offset;
        hot.bytes = hot.bytes.saturating_sub(freed);
        self.publish_gauges(&hot);
    }

    /// A publication of the topic was lost right after `at` though the positions show no gap
    /// (a Kafka record this node could not place, `kafka/topics.rs`): a client whose last
    /// position is `at` or earlier in that epoch is answered "not recovered" from now on,
    /// instead of being given what follows as if it were all.
    pub(crate) fn mark_loss(&self, topic: &Arc<str>, at: Position) {
        let mut hot = self.lock();
        let stream = hot.stream(topic, at.epoch);
        stream.lost_after = Some(stream.lost_after.map_or(at.offset, |o| o.max(at.offset)));
    }

    /// Drops a topic the node no longer serves: its copy would go stale.
    pub(crate) fn forget(&self, topic: &str) {
        let mut hot = self.lock();
        if let Some(mut stream) = hot.streams.remove(topic) {
            let freed = stream.clear();
            hot.bytes = hot.bytes.saturating_sub(freed);
        }
        self.publish_gauges(&hot);
    }

    fn publish_gauges(&self, hot: &Hot) {
        let kept: usize = hot.streams.values().map(|s| s.entries.len()).sum();
        self.stats.kept.store(kept as u64, Ordering::Relaxed);
        self.stats.bytes.store(hot.bytes as u64, Ordering::Relaxed);
    }
}

impl Log for BrokerLog {
    fn append(
        &self,
        topic: &Arc<str>,
        opcode: OpCode,
        payload: Bytes,
        _stamp: Option<crate::broadcast::publication::Stamp>,
        _deliver: &mut dyn FnMut(&Arc<Publication>),
    ) -> Arc<Publication> {
        // The broker gives the position; the link publishes this (`Mailboxes::publish` hands it to
        // the uplink) and delivers it when it comes back. A stamp needs the position, which
        // is not known here: the payload goes out as published (docs/PUSHER.md: positions
        // in Pusher events are per node).
        Publication::new(Arc::clone(topic), opcode, payload, None)
    }

    fn read(&self, topic: &str, since: Option<Position>, limit: usize) -> Recovery {
        let hot = self.lock();
        let Some(stream) = hot.streams.get(topic) else {
            let head = since.unwrap_or(Position::UNKNOWN);
            return Recovery::Recovered {
                head,
                publications: Vec::new(),
            };
        };
        let head = Position {
            epoch: stream.epoch,
            offset: stream.head,
        };
        let Some(since) = since else {
            return Recovery::Recovered {
                head,
                publications: Vec::new(),
            };
        };
        if since.epoch != stream.epoch || stream.lost_after.is_some_and(|at| since.offset <= at) {
            return Recovery::NotRecovered { head };
        }
        if since.offset >= stream.head {
            // At the head, or ahead of what this node has heard: what follows comes from the
            // broker, and a head check finds a position the broker never had.
            return Recovery::Recovered {
                head: since,
                publications: Vec::new(),
            };
        }
        let now = Instant::now();
        let fresh = stream
            .entries
            .iter()
            .position(|(_, at)| now.duration_since(*at) < self.limits.ttl)
            .unwrap_or(stream.entries.len());
        if fresh == stream.entries.len() {
            return Recovery::NotRecovered { head };
        }
        // The offset the first fresh entry follows: the chain is whole from there to the head.
        let start = match fresh {
            0 => stream.first_prev,
            _ => offset_of(&stream.entries[fresh - 1].0),
        };
        let skip = if since.offset == start {
            fresh
        } else if since.offset < start {
            return Recovery::NotRecovered { head };
        } else {
            // Offsets rise along the chain: a position that is none of them was never this
            // topic's (or is one this node cannot vouch for).
            let found = stream
                .entries
                .binary_search_by_key(&since.offset, |(p, _)| offset_of(p))
                .ok()
                .filter(|&i| i >= fresh);
            match found {
                Some(i) => i + 1,
                None => return Recovery::NotRecovered { head },
            }
        };
        if stream.entries.len() - skip > limit {
            return Recovery::NotRecovered { head };
        }
        Recovery::Recovered {
            head,
            publications: stream
                .entries
                .iter()
                .skip(skip)
                .map(|(p, _)| Arc::clone(p))
                .collect(),
        }
    }

    fn render_metrics(&self, out: &mut String) {
        let stats = &self.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, kind, value) in [
            (
                "broker_history_gaps_repaired_total",
                "Publications missed from the broker's pub/sub, then read from its stream.",
                "counter",
                load(&stats.gaps_repaired),
            ),
            (
                "broker_history_gaps_reported_total",
                "Gaps the broker's stream no longer held; subscribers were told (reset).",
                "counter",
                load(&stats.gaps_reported),
            ),
            (
                "broker_history_loads_total",
                "Topics whose history was loaded from the broker.",
                "counter",
                load(&stats.loads),
            ),
            (
                "broker_history_head_checks_total",
                "Topic heads asked of the broker, to find a loss with no later publish.",
                "counter",
                load(&stats.head_checks),
            ),
            (
                "history_kept",
                "Publications in the node's hot copy of the broker's streams.",
                "gauge",
                load(&stats.kept),
            ),
            (
                "history_bytes",
                "Bytes of publications kept for recovery.",
                "gauge",
                load(&stats.bytes),
            ),
        ] {
            let _ = writeln!(out, "# HELP uringcast_{name} {help}");
            let _ = writeln!(out, "# TYPE uringcast_{name} {kind}");
            let _ = writeln!(out, "uringcast_{name} {value}");
        }
    }
}

impl Hot {
    /// The topic's stream at `epoch`: made, or made again (emptied) for a new epoch.
    fn stream(&mut self, topic: &Arc<str>, epoch: Epoch) -> &mut HotStream {
        let mut freed = 0;
        let stream = self
            .streams
            .entry(Arc::clone(topic))
            .or_insert_with(|| HotStream {
                epoch,
                head: 0,
                entries: VecDeque::new(),
                first_prev: 0,
                lost_after: None,
            });
        if stream.epoch != epoch {
            freed = stream.clear();
            stream.epoch = epoch;
            stream.head = 0;
            stream.first_prev = 0;
            stream.lost_after = None;
        }
        self.bytes = self.bytes.saturating_sub(freed);
        self.streams.get_mut(&**topic).expect("inserted above")
    }

    /// Past the byte budget, drops the oldest publications: of `topic` first, then of any.
    fn enforce_budget(&mut self, limits: &HistoryLimits, topic: &str) {
        if self.bytes <= limits.max_bytes {
            return;
        }
        let mut order: Vec<Arc<str>> = vec![Arc::from(topic)];
        order.extend(self.streams.keys().filter(|t| &***t != topic).cloned());
        for name in order {
            let Some(stream) = self.streams.get_mut(&name) else {
                continue;
            };
            while self.bytes > limits.max_bytes && !stream.entries.is_empty() {
                let freed = stream.pop_front();
                self.bytes = self.bytes.saturating_sub(freed);
            }
            if self.bytes <= limits.max_bytes {
                return;
            }
        }
    }
}

impl HotStream {
    /// Empties the stream (its head stays); the bytes freed.
    fn clear(&mut self) -> usize {
        let freed = self.entries.iter().map(|(p, _)| p.size()).sum();
        self.entries.clear();
        self.first_prev = self.head;
        freed
    }

    /// Drops the oldest entry (the next one then follows it); the bytes freed.
    fn pop_front(&mut self) -> usize {
        match self.entries.pop_front() {
            Some((old, _)) => {
                self.first_prev = offset_of(&old);
                old.size()
            }
            None => 0,
        }
    }
}

/// A kept publication's offset (every one kept has a position).
fn offset_of(publication: &Publication) -> u64 {
    publication.position().map_or(0, |p| p.offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> HistoryLimits {
        HistoryLimits {
            entries_per_topic: 4,
            ttl: Duration::from_secs(300),
            max_bytes: 1 << 20,
            max_streams: 100,
        }
    }

    fn at(offset: u64) -> Position {
        Position {
            epoch: Epoch::from_bits(7),
            offset,
        }
    }

    fn publication(offset: u64) -> Arc<Publication> {
        Publication::new(
            Arc::from("t"),
            OpCode::Text,
            Bytes::from(offset.to_string()),
            Some(at(offset)),
        )
    }

    fn offsets(recovery: Recovery) -> Vec<u64> {
        match recovery {
            Recovery::Recovered { publications, .. } => publications
                .iter()
                .map(|p| p.position().unwrap().offset)
                .collect(),
            Recovery::NotRecovered { head } => panic!("not recovered, head {head}"),
        }
    }

    #[test]
    fn an_unknown_topic_takes_the_clients_position_and_a_known_one_is_exact() {
        let log = BrokerLog::new(limits());
        let cold = log.read("t", Some(at(3)), 100);
        assert!(
            matches!(cold, Recovery::Recovered { head, ref publications } if head == at(3) && publications.is_empty())
        );
        assert!(log.read("t", None, 100).head().epoch.is_unknown());
        for offset in 1..=6 {
            assert!(log.record(&publication(offset)));
        }
        assert!(!log.record(&publication(5)), "a repeat");
        // Kept: 3..=6.
        assert_eq!(offsets(log.read("t", Some(at(2)), 100)), [3, 4, 5, 6]);
        assert_eq!(offsets(log.read("t", Some(at(5)), 100)), [6]);
        assert!(matches!(
            log.read("t", Some(at(1)), 100),
            Recovery::NotRecovered { head } if head == at(6)
        ));
        assert!(matches!(
            log.read("t", Some(at(2)), 2),
            Recovery::NotRecovered { .. }
        ));
        let other = Position {
            epoch: Epoch::from_bits(8),
            offset: 6,
        };
        assert!(matches!(
            log.read("t", Some(other), 100),
            Recovery::NotRecovered { .. }
        ));
        // Ahead of the copy: the broker will bring it.
        assert_eq!(log.read("t", Some(at(9)), 100).head(), at(9));
    }

    #[test]
    fn a_hole_drops_what_came_before_it() {
        let log = BrokerLog::new(limits());
        log.record(&publication(1));
        log.record(&publication(2));
        log.record(&publication(5));
        assert!(matches!(
            log.read("t", Some(at(2)), 100),
            Recovery::NotRecovered { .. }
        ));
        assert_eq!(offsets(log.read("t", Some(at(4)), 100)), [5]);
        log.mark_head(&Arc::from("t"), at(8));
        assert!(matches!(
            log.read("t", Some(at(5)), 100),
            Recovery::NotRecovered { head } if head == at(8)
        ));
    }

    #[test]
    fn a_loss_without_a_gap_is_not_recovered_across() {
        let log = BrokerLog::new(limits());
        for offset in 1..=3 {
            log.record(&publication(offset));
        }
        log.mark_loss(&Arc::from("t"), at(3));
        log.record(&publication(4));
        // Whoever stood at or before the loss lacks what was lost, though 4 follows 3.
        for since in [1, 3] {
            assert!(matches!(
                log.read("t", Some(at(since)), 100),
                Recovery::NotRecovered { head } if head == at(4)
            ));
        }
        assert_eq!(offsets(log.read("t", Some(at(4)), 100)), Vec::<u64>::new());
        log.record(&publication(5));
        assert_eq!(offsets(log.read("t", Some(at(4)), 100)), [5]);
    }

    #[test]
    fn a_load_keeps_only_a_contiguous_tail_ending_at_the_head() {
        let log = BrokerLog::new(limits());
        let topic: Arc<str> = Arc::from("t");
        log.load(
            &topic,
            at(5),
            vec![publication(3), publication(4), publication(5)],
        );
        assert_eq!(offsets(log.read("t", Some(at(2)), 100)), [3, 4, 5]);
        log.load(
            &topic,
            at(9),
            vec![publication(6), publication(8), publication(9)],
        );
        assert_eq!(offsets(log.read("t", Some(at(7)), 100)), [8, 9]);
        assert!(matches!(
            log.read("t", Some(at(6)), 100),
            Recovery::NotRecovered { .. }
        ));
        log.forget("t");
        assert_eq!(log.read("t", Some(at(1)), 100).head(), at(1), "cold again");
        assert_eq!(log.stats.bytes.load(Ordering::Relaxed), 0);
    }

    /// A publication at `offset` whose topic's previous one is at `previous` (stream
    /// sequences shared with other topics, as NATS JetStream's).
    fn linked(offset: u64, previous: u64) -> Arc<Publication> {
        let publication = publication(offset);
        publication.follow(previous);
        publication
    }

    #[test]
    fn sparse_offsets_recover_by_their_links() {
        let log = BrokerLog::new(limits());
        for (offset, previous) in [(3, 0), (7, 3), (8, 7), (12, 8), (20, 12)] {
            assert!(log.record(&linked(offset, previous)));
        }
        // Kept: 7, 8, 12, 20 (the last four), after 3.
        assert_eq!(offsets(log.read("t", Some(at(3)), 100)), [7, 8, 12, 20]);
        assert_eq!(offsets(log.read("t", Some(at(8)), 100)), [12, 20]);
        assert_eq!(offsets(log.read("t", Some(at(20)), 100)), Vec::<u64>::new());
        for never_kept in [0, 1, 5, 10] {
            assert!(
                matches!(log.read("t", Some(at(never_kept)), 100), Recovery::NotRecovered { head } if head == at(20)),
                "{never_kept}"
            );
        }
        assert!(matches!(
            log.read("t", Some(at(7)), 2),
            Recovery::NotRecovered { .. }
        ));
        // A link to something other than the head is a hole: only what follows it is kept.
        assert!(log.record(&linked(25, 22)));
        assert!(matches!(
            log.read("t", Some(at(20)), 100),
            Recovery::NotRecovered { .. }
        ));
        assert_eq!(offsets(log.read("t", Some(at(22)), 100)), [25]);
    }

    #[test]
    fn a_sparse_load_starts_after_its_anchor() {
        let log = BrokerLog::new(limits());
        let topic: Arc<str> = Arc::from("t");
        // The oldest kept (4) is only the anchor: what preceded it is unknown.
        log.load(&topic, at(15), vec![linked(9, 4), linked(15, 9)]);
        assert_eq!(offsets(log.read("t", Some(at(4)), 100)), [9, 15]);
        assert_eq!(offsets(log.read("t", Some(at(9)), 100)), [15]);
        assert!(matches!(
            log.read("t", Some(at(3)), 100),
            Recovery::NotRecovered { .. }
        ));
    }

    #[test]
    fn the_byte_budget_holds() {
        let one = publication(1).size();
        let log = BrokerLog::new(HistoryLimits {
            max_bytes: one * 2,
            entries_per_topic: 100,
            ..limits()
        });
        for offset in 1..=10 {
            log.record(&publication(offset));
        }
        assert!(log.stats.bytes.load(Ordering::Relaxed) as usize <= one * 2 + 2);
        assert_eq!(offsets(log.read("t", Some(at(9)), 100)), [10]);
    }
}
