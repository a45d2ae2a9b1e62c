//! Positions and history: the [`Log`] that gives every publish to a topic the next offset of
//! the topic's stream and keeps its last publications, so that a subscriber that comes back
//! gets exactly what it missed, or is told it cannot.
//!
//! [`Log`] is the seam between the engine and whatever assigns positions: [`LocalLog`] does
//! it in this process; a broker's log (a Redis stream, JetStream, Kafka) can do it for a
//! cluster. The engine needs two things of it:
//! - `append` assigns a position and hands the publication to the workers while it still
//!   holds the topic's order, so every worker's mailbox receives a topic's publications in
//!   offset order (see docs/ARCHITECTURE.md, "Positions");
//! - `read` returns what follows a position, all of it or nothing.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::publication::{Epoch, Position, Publication};
use crate::protocol::OpCode;

/// What a [`Log::read`] found after a position.
#[derive(Debug, Clone)]
pub enum Recovery {
    /// Every publication after the position, in offset order, up to `head` (the last one, or
    /// the position itself when nothing followed).
    Recovered {
        /// The stream's position after the last of `publications`.
        head: Position,
        /// What followed the position.
        publications: Vec<Arc<Publication>>,
    },
    /// The position cannot be served exactly: another epoch, older than what is kept, further
    /// behind than the limit, or ahead of the stream. `head` is where the stream is now.
    NotRecovered {
        /// The stream's current position.
        head: Position,
    },
}

impl Recovery {
    /// The stream's position when it was read.
    pub fn head(&self) -> Position {
        match self {
            Self::Recovered { head, .. } | Self::NotRecovered { head } => *head,
        }
    }
}

/// Whether a subscription resumes, and how: what its subscriber is told, and how it counts
/// in `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resuming {
    /// A new subscriber, from now (or from the position its own stream head gave it).
    New,
    /// The client presented a position; the recovery is what the log gave for it.
    Presented,
    /// The client presented a position of another epoch, and the recovery is the current
    /// epoch from its first publication: what followed the position in its own epoch is lost
    /// to the client (it is told, as for a recovery that failed), and nothing of this one is.
    EpochStart,
}

/// Reads what a subscriber presenting `since` missed in `topic`: [`Log::read`]'s answer, but
/// for one case. A position of another epoch (its lone node restarted, with history in
/// memory) cannot be served exactly, since the rest of its epoch is gone; yet the client then
/// missed the whole current epoch. When the log says so ([`Log::epochs_supersede`]) and
/// still holds that epoch from its first publication up to the head, within `limit`, it is
/// the recovery, given after a reset to the epoch's start, as a node's link does when it
/// finds a new epoch.
pub(crate) fn read_resume(
    log: &dyn Log,
    topic: &str,
    since: Option<Position>,
    limit: usize,
) -> (Recovery, Resuming) {
    let recovery = log.read(topic, since, limit);
    let Some(since) = since else {
        return (recovery, Resuming::New);
    };
    if !log.epochs_supersede() {
        return (recovery, Resuming::Presented);
    }
    let head = match recovery {
        Recovery::NotRecovered { head }
            if head.epoch != since.epoch && !head.epoch.is_unknown() && head.offset > 0 =>
        {
            head
        }
        _ => return (recovery, Resuming::Presented),
    };
    let start = Position {
        epoch: head.epoch,
        offset: 0,
    };
    match log.read(topic, Some(start), limit) {
        // Whole: the first follows the epoch's start (a broker's chain says so, see
        // `Publication::previous`), all are of the epoch, and they reach the head read.
        Recovery::Recovered {
            head: reached,
            publications,
        } if publications.first().and_then(|p| p.previous()) == Some(0)
            && publications
                .iter()
                .all(|p| p.position().is_some_and(|p| p.epoch == head.epoch))
            && reached.epoch == head.epoch
            && reached.offset >= head.offset =>
        {
            (
                Recovery::Recovered {
                    head: reached,
                    publications,
                },
                Resuming::EpochStart,
            )
        }
        _ => (recovery, Resuming::Presented),
    }
}

/// The source of positions and the store of history, for every topic of a node.
pub trait Log: Send + Sync + std::fmt::Debug {
    /// Gives a publish of `payload` to `topic` the stream's next position, keeps it, and
    /// calls `deliver` with it before any later publish to the topic can be given a
    /// position: what `deliver` hands on (the workers' mailboxes) is in offset order.
    ///
    /// A log whose positions come from elsewhere (a broker's, `broker::BrokerLog`) returns
    /// the publication without a position and does not call `deliver`: the publication
    /// reaches the workers when the broker sends it back with its position.
    /// With a `stamp`, the publication's payload is made by it from `payload` and the
    /// position ([`Publication::stamped`]).
    fn append(
        &self,
        topic: &Arc<str>,
        opcode: OpCode,
        payload: Bytes,
        stamp: Option<super::publication::Stamp>,
        deliver: &mut dyn FnMut(&Arc<Publication>),
    ) -> Arc<Publication>;

    /// What follows `since` in `topic`'s stream, at most `limit` publications (further
    /// behind is [`Recovery::NotRecovered`]). With `since` of `None`, only the head.
    fn read(&self, topic: &str, since: Option<Position>, limit: usize) -> Recovery;

    /// Appends the log's counters to `/metrics`, in the Prometheus text format.
    fn render_metrics(&self, out: &mut String);

    /// Whether every publication of a stream's current epoch is one that a client holding a
    /// position of another epoch has not had, so that a resume may be given the epoch
    /// from its start. True only for a node's own log when no other node publishes into its
    /// streams ([`LocalLog::alone`]). Not for a broker's log, whose other epoch may be an
    /// older one, or another node's name for the same records; nor for a node's own log
    /// beside a broker's pub/sub, whose streams hold other nodes' publications that the
    /// client may have had there, under that node's positions.
    fn epochs_supersede(&self) -> bool {
        false
    }
}

/// How much history a [`LocalLog`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Publications kept per topic.
    pub entries_per_topic: usize,
    /// How long a publication is kept.
    pub ttl: Duration,
    /// Bytes of publications kept on the node, over all topics; past it the oldest go first.
    pub max_bytes: usize,
    /// Streams (topics with a position) kept at most; past it the one with the oldest
    /// publication, or one with none, goes, and comes back with a new epoch.
    pub max_streams: usize,
}

/// Counters of a log.
#[derive(Debug, Default)]
pub struct HistoryStats {
    /// Publications given a position.
    pub appended: AtomicU64,
    /// Publications removed for the per-topic count.
    pub evicted_count: AtomicU64,
    /// Publications removed for their age.
    pub evicted_ttl: AtomicU64,
    /// Publications removed for the node's byte budget.
    pub evicted_bytes: AtomicU64,
    /// Streams removed (their topic starts a new epoch if it is published to again).
    pub streams_evicted: AtomicU64,
    /// Streams, with or without publications.
    pub streams: AtomicU64,
    /// Streams with at least one publication kept.
    pub streams_with_history: AtomicU64,
    /// Bytes of publications kept.
    pub bytes: AtomicU64,
}

/// Positions and history in this process: one stream per topic, behind one lock.
///
/// A publish takes the lock once (to assign, store and hand on) and so does a read; nothing
/// is held across calls. The lock orders the publishes of a topic, and of every topic, which
/// is what makes each mailbox see a topic in offset order.
#[derive(Debug)]
pub struct LocalLog {
    inner: Mutex<Inner>,
    limits: HistoryLimits,
    stats: HistoryStats,
    /// No other node publishes into these streams (see [`Log::epochs_supersede`]).
    alone: bool,
}

#[derive(Debug, Default)]
struct Inner {
    streams: HashMap<Arc<str>, Stream>,
    /// Every kept publication in the order appended (so in time order), for the byte budget
    /// and the age limit; entries already gone for the per-topic count are skipped when met.
    order: VecDeque<Kept>,
    /// Publications held in all streams (so `order.len() - held` are stale).
    held: usize,
    bytes: usize,
}

#[derive(Debug)]
struct Stream {
    epoch: Epoch,
    /// The offset of the last publication (0 before the first).
    head: u64,
    /// The last publications, oldest first: offsets `head - len + 1 ..= head`.
    entries: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    publication: Arc<Publication>,
}

/// A kept publication in the node-wide order.
#[derive(Debug)]
struct Kept {
    topic: Arc<str>,
    epoch: Epoch,
    offset: u64,
    at: Instant,
}

impl LocalLog {
    /// An empty log.
    pub fn new(limits: HistoryLimits) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            limits,
            stats: HistoryStats::default(),
            alone: false,
        }
    }

    /// Says that this node is the only one publishing into its streams (it has no broker):
    /// a client presenting a position of another epoch then missed the whole current one,
    /// and is given it from its start while it is kept.
    #[must_use]
    pub fn alone(mut self) -> Self {
        self.alone = true;
        self
    }

    /// Its counters.
    pub fn stats(&self) -> &HistoryStats {
        &self.stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (every mutation is
        // completed before anything that can panic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_gauges(&self, inner: &Inner) {
        self.stats
            .streams
            .store(inner.streams.len() as u64, Ordering::Relaxed);
        self.stats
            .bytes
            .store(inner.bytes as u64, Ordering::Relaxed);
    }
}

impl Log for LocalLog {
    fn append(
        &self,
        topic: &Arc<str>,
        opcode: OpCode,
        payload: Bytes,
        stamp: Option<super::publication::Stamp>,
        deliver: &mut dyn FnMut(&Arc<Publication>),
    ) -> Arc<Publication> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire(now, &self.limits, &self.stats);
        let stream = inner.stream(topic, &self.limits, &self.stats);
        stream.head += 1;
        let position = Position {
            epoch: stream.epoch,
            offset: stream.head,
        };
        let publication =
            Publication::stamped(Arc::clone(topic), opcode, payload, Some(position), stamp);
        let size = publication.size();
        let was_empty = stream.entries.is_empty();
        stream.entries.push_back(Entry {
            publication: Arc::clone(&publication),
        });
        let mut evicted = 0;
        while stream.entries.len() > self.limits.entries_per_topic {
            if let Some(old) = stream.entries.pop_front() {
                evicted += old.publication.size();
                self.stats.evicted_count.fetch_add(1, Ordering::Relaxed);
            }
        }
        let gone = usize::from(evicted > 0);
        if was_empty && !stream.entries.is_empty() {
            self.stats
                .streams_with_history
                .fetch_add(1, Ordering::Relaxed);
        }
        inner.held = inner.held + 1 - gone.min(inner.held);
        inner.bytes = inner.bytes + size - evicted.min(inner.bytes + size);
        inner.order.push_back(Kept {
            topic: Arc::clone(topic),
            epoch: position.epoch,
            offset: position.offset,
            at: now,
        });
        inner.enforce_budget(&self.limits, &self.stats);
        inner.compact();
        self.stats.appended.fetch_add(1, Ordering::Relaxed);
        // Handed on under the lock: the next publish to this topic waits for it.
        deliver(&publication);
        self.publish_gauges(&inner);
        publication
    }

    fn read(&self, topic: &str, since: Option<Position>, limit: usize) -> Recovery {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire(now, &self.limits, &self.stats);
        let name: Arc<str> = match inner.streams.get_key_value(topic) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(topic),
        };
        let stream = inner.stream(&name, &self.limits, &self.stats);
        let head = Position {
            epoch: stream.epoch,
            offset: stream.head,
        };
        let recovery = match since {
            None => Recovery::Recovered {
                head,
                publications: Vec::new(),
            },
            Some(since) => stream.after(since, limit),
        };
        self.publish_gauges(&inner);
        recovery
    }

    fn epochs_supersede(&self) -> bool {
        self.alone
    }

    fn render_metrics(&self, out: &mut String) {
        let stats = &self.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let rows: [(&str, &str, &str, u64); 7] = [
            (
                "history_streams",
                "Topics with a position (a stream), with or without kept publications.",
                "gauge",
                load(&stats.streams),
            ),
            (
                "history_topics",
                "Topics with at least one kept publication.",
                "gauge",
                load(&stats.streams_with_history),
            ),
            (
                "history_bytes",
                "Bytes of publications kept for recovery.",
                "gauge",
                load(&stats.bytes),
            ),
            (
                "history_appended_total",
                "Publications given a position.",
                "counter",
                load(&stats.appended),
            ),
            (
                "history_evicted_total{reason=\"count\"}",
                "Publications removed from history.",
                "counter",
                load(&stats.evicted_count),
            ),
            (
                "history_evicted_total{reason=\"ttl\"}",
                "",
                "",
                load(&stats.evicted_ttl),
            ),
            (
                "history_evicted_total{reason=\"bytes\"}",
                "",
                "",
                load(&stats.evicted_bytes),
            ),
        ];
        for (name, help, kind, value) in rows {
            let family = name.split('{').next().unwrap_or(name);
            if !help.is_empty() {
                let _ = writeln!(out, "# HELP uringcast_{family} {help}");
                let _ = writeln!(out, "# TYPE uringcast_{family} {kind}");
            }
            let _ = writeln!(out, "uringcast_{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP uringcast_history_streams_evicted_total Streams removed; their topics start a new epoch.\n\
             # TYPE uringcast_history_streams_evicted_total counter\n\
             uringcast_history_streams_evicted_total {}",
            load(&stats.streams_evicted)
        );
    }
}

impl Stream {
    fn new() -> Self {
        Self {
            epoch: Epoch::random(),
            head: 0,
            entries: VecDeque::new(),
        }
    }

    /// The offset of the oldest kept publication (`head + 1` when none is kept).
    fn first(&self) -> u64 {
        self.head + 1 - self.entries.len() as u64
    }

    fn after(&self, since: Position, limit: usize) -> Recovery {
        let head = Position {
            epoch: self.epoch,
            offset: self.head,
        };
        let behind = self.head.checked_sub(since.offset);
        let exact = since.epoch == self.epoch
            && behind.is_some_and(|n| n <= limit as u64)
            && since.offset + 1 >= self.first();
        if !exact {
            return Recovery::NotRecovered { head };
        }
        let skip = (since.offset + 1 - self.first()) as usize;
        Recovery::Recovered {
            head,
            publications: self
                .entries
                .iter()
                .skip(skip)
                .map(|e| Arc::clone(&e.publication))
                .collect(),
        }
    }
}

impl Inner {
    /// The topic's stream, made (with a new epoch) if it has none; past `max_streams`, room is
    /// made first.
    fn stream(
        &mut self,
        topic: &Arc<str>,
        limits: &HistoryLimits,
        stats: &HistoryStats,
    ) -> &mut Stream {
        if !self.streams.contains_key(topic) {
            if self.streams.len() >= limits.max_streams {
                self.make_room(stats);
            }
            self.streams.insert(Arc::clone(topic), Stream::new());
        }
        self.streams
            .get_mut(topic)
            .expect("the stream was inserted above if it was missing")
    }

    /// Removes one stream: one with no kept publication if there is one, else the one whose
    /// publication is the oldest.
    fn make_room(&mut self, stats: &HistoryStats) {
        let victim = self
            .streams
            .iter()
            .find(|(_, s)| s.entries.is_empty())
            .map(|(name, _)| Arc::clone(name))
            .or_else(|| {
                self.order
                    .iter()
                    .find(|k| self.is_live(k))
                    .map(|k| Arc::clone(&k.topic))
            });
        let Some(victim) = victim else { return };
        if let Some(stream) = self.streams.remove(&victim) {
            let bytes: usize = stream.entries.iter().map(|e| e.publication.size()).sum();
            self.bytes -= bytes.min(self.bytes);
            self.held -= stream.entries.len().min(self.held);
            if !stream.entries.is_empty() {
                stats.streams_with_history.fetch_sub(1, Ordering::Relaxed);
            }
            stats.streams_evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether a kept publication is still in its stream.
    fn is_live(&self, kept: &Kept) -> bool {
        self.streams.get(&kept.topic).is_some_and(|s| {
            s.epoch == kept.epoch && kept.offset >= s.first() && kept.offset <= s.head
        })
    }

    /// Removes `kept` from its stream if it is still there (it is then its stream's oldest);
    /// `Some(emptied)` when it was, `emptied` telling whether the stream has none left.
    fn remove_front(&mut self, kept: &Kept) -> Option<bool> {
        if !self.is_live(kept) {
            return None;
        }
        let stream = self.streams.get_mut(&kept.topic)?;
        // The node-wide order is each stream's order too, so a live entry met first is its
        // stream's oldest.
        let entry = stream.entries.pop_front()?;
        let emptied = stream.entries.is_empty();
        let size = entry.publication.size();
        self.bytes -= size.min(self.bytes);
        self.held -= 1.min(self.held);
        Some(emptied)
    }

    /// Drops publications older than the limit, oldest first.
    fn expire(&mut self, now: Instant, limits: &HistoryLimits, stats: &HistoryStats) {
        while let Some(front) = self.order.front() {
            if now.duration_since(front.at) < limits.ttl {
                break;
            }
            let kept = self.order.pop_front().expect("front was just seen");
            if let Some(emptied) = self.remove_front(&kept) {
                stats.evicted_ttl.fetch_add(1, Ordering::Relaxed);
                if emptied {
                    stats.streams_with_history.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Drops the node's oldest publications while more bytes are kept than the budget.
    fn enforce_budget(&mut self, limits: &HistoryLimits, stats: &HistoryStats) {
        while self.bytes > limits.max_bytes {
            let Some(kept) = self.order.pop_front() else {
                break;
            };
            if let Some(emptied) = self.remove_front(&kept) {
                stats.evicted_bytes.fetch_add(1, Ordering::Relaxed);
                if emptied {
                    stats.streams_with_history.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Keeps the node-wide order from filling with publications already gone for the
    /// per-topic count: rebuilt when more than half of it is stale, so amortised O(1).
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.held + 1024 {
            return;
        }
        let order = std::mem::take(&mut self.order);
        self.order = order.into_iter().filter(|k| self.is_live(k)).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HistoryLimits {
        HistoryLimits {
            entries_per_topic: 5,
            ttl: Duration::from_secs(300),
            max_bytes: 1 << 20,
            max_streams: 100,
        }
    }

    fn append(log: &LocalLog, topic: &str, payload: &str) -> Arc<Publication> {
        log.append(
            &Arc::from(topic),
            OpCode::Text,
            Bytes::copy_from_slice(payload.as_bytes()),
            None,
            &mut |_| {},
        )
    }

    fn offsets(recovery: &Recovery) -> Vec<u64> {
        match recovery {
            Recovery::Recovered { publications, .. } => publications
                .iter()
                .map(|p| p.position().unwrap().offset)
                .collect(),
            Recovery::NotRecovered { .. } => panic!("not recovered: {recovery:?}"),
        }
    }

    #[test]
    fn offsets_count_from_one_under_one_epoch_per_topic() {
        let log = LocalLog::new(limits());
        let a1 = append(&log, "a", "x").position().unwrap();
        let a2 = append(&log, "a", "y").position().unwrap();
        let b1 = append(&log, "b", "z").position().unwrap();
        assert_eq!((a1.offset, a2.offset, b1.offset), (1, 2, 1));
        assert_eq!(a1.epoch, a2.epoch);
        assert_ne!(a1.epoch, b1.epoch, "each stream has its own epoch");
    }

    #[test]
    fn a_stamp_runs_once_per_append_and_history_keeps_its_bytes() {
        use std::sync::atomic::AtomicUsize;
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        fn stamp(payload: &[u8], position: Position) -> Bytes {
            RUNS.fetch_add(1, Ordering::Relaxed);
            Bytes::from(format!(
                "{}#{}",
                String::from_utf8_lossy(payload),
                position.offset
            ))
        }
        let log = LocalLog::new(limits());
        let mut delivered = Vec::new();
        for payload in ["a", "b"] {
            log.append(
                &Arc::from("t"),
                OpCode::Text,
                Bytes::from_static(payload.as_bytes()),
                Some(stamp),
                &mut |p| delivered.push(p.payload().clone()),
            );
        }
        assert_eq!(RUNS.load(Ordering::Relaxed), 2);
        assert_eq!(delivered, [Bytes::from("a#1"), Bytes::from("b#2")]);
        let first = append(&log, "t", "x").position().unwrap();
        let since = Position { offset: 0, ..first };
        match log.read("t", Some(since), 10) {
            Recovery::Recovered { publications, .. } => {
                let replayed: Vec<_> = publications.iter().map(|p| p.payload().clone()).collect();
                assert_eq!(
                    replayed,
                    [Bytes::from("a#1"), Bytes::from("b#2"), Bytes::from("x")]
                );
                assert_eq!(&publications[0].published()[..], b"a");
            }
            other => panic!("not recovered: {other:?}"),
        }
        assert_eq!(
            RUNS.load(Ordering::Relaxed),
            2,
            "a replay does not stamp again"
        );
    }

    #[test]
    fn deliver_sees_each_publication_before_the_next_is_made() {
        let log = LocalLog::new(limits());
        let mut seen = Vec::new();
        for _ in 0..3 {
            log.append(
                &Arc::from("t"),
                OpCode::Text,
                Bytes::new(),
                None,
                &mut |p| seen.push(p.position().unwrap().offset),
            );
        }
        assert_eq!(seen, [1, 2, 3]);
    }

    #[test]
    fn only_a_lone_log_gives_another_epochs_client_the_epoch_from_its_start() {
        let other = Position {
            epoch: Epoch::from_bits(99),
            offset: 3,
        };
        for alone in [false, true] {
            let log = LocalLog::new(limits());
            let log = if alone { log.alone() } else { log };
            let head = append(&log, "t", "1").position().unwrap();
            let head = Position { offset: 4, ..head };
            for i in 2..=4 {
                append(&log, "t", &i.to_string());
            }
            let (recovery, resuming) = read_resume(&log, "t", Some(other), 300);
            if alone {
                assert_eq!(resuming, Resuming::EpochStart);
                assert_eq!(offsets(&recovery), [1, 2, 3, 4]);
                assert_eq!(recovery.head(), head);
                // Not past --max-recover: then only the head.
                let (recovery, resuming) = read_resume(&log, "t", Some(other), 3);
                assert_eq!(resuming, Resuming::Presented);
                assert!(matches!(recovery, Recovery::NotRecovered { head: h } if h == head));
            } else {
                // Beside a broker's pub/sub the stream holds what the client may have had.
                assert_eq!(resuming, Resuming::Presented);
                assert!(matches!(recovery, Recovery::NotRecovered { head: h } if h == head));
            }
            // A position of the stream's own epoch, and none at all, are read as they are.
            let (recovery, resuming) =
                read_resume(&log, "t", Some(Position { offset: 2, ..head }), 300);
            assert_eq!(
                (resuming, offsets(&recovery)),
                (Resuming::Presented, vec![3, 4])
            );
            assert_eq!(read_resume(&log, "t", None, 300).1, Resuming::New);
        }
        // The epoch's start no longer kept (five per topic): only the head.
        let log = LocalLog::new(limits()).alone();
        for i in 1..=6 {
            append(&log, "t", &i.to_string());
        }
        let (recovery, resuming) = read_resume(&log, "t", Some(other), 300);
        assert_eq!(resuming, Resuming::Presented);
        assert!(matches!(recovery, Recovery::NotRecovered { head } if head.offset == 6));
    }

    #[test]
    fn a_read_is_exact_or_says_not_recovered() {
        let log = LocalLog::new(limits());
        let first = append(&log, "t", "1").position().unwrap();
        for i in 2..=7 {
            append(&log, "t", &i.to_string());
        }
        // Kept: offsets 3..=7 (five per topic).
        let at = |offset| Position {
            epoch: first.epoch,
            offset,
        };
        assert_eq!(offsets(&log.read("t", Some(at(2)), 300)), [3, 4, 5, 6, 7]);
        assert_eq!(offsets(&log.read("t", Some(at(5)), 300)), [6, 7]);
        assert_eq!(offsets(&log.read("t", Some(at(7)), 300)), Vec::<u64>::new());
        // Older than what is kept.
        assert!(matches!(
            log.read("t", Some(at(1)), 300),
            Recovery::NotRecovered { head } if head == at(7)
        ));
        // Further behind than the limit.
        assert!(matches!(
            log.read("t", Some(at(4)), 2),
            Recovery::NotRecovered { .. }
        ));
        assert_eq!(offsets(&log.read("t", Some(at(5)), 2)), [6, 7]);
        // Another epoch, and a position from the future.
        let other = Position {
            epoch: Epoch::from_bits(7),
            offset: 6,
        };
        assert!(matches!(
            log.read("t", Some(other), 300),
            Recovery::NotRecovered { .. }
        ));
        assert!(matches!(
            log.read("t", Some(at(8)), 300),
            Recovery::NotRecovered { .. }
        ));
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest_publications_of_the_node_first() {
        let payload = "x".repeat(1000);
        let one = append(&LocalLog::new(limits()), "probe", &payload).size();
        let log = LocalLog::new(HistoryLimits {
            max_bytes: one * 3,
            ..limits()
        });
        let a = append(&log, "a", &payload).position().unwrap();
        let b = append(&log, "b", &payload).position().unwrap();
        append(&log, "a", &payload);
        append(&log, "b", &payload); // over budget: a's first goes
        assert_eq!(log.stats().evicted_bytes.load(Ordering::Relaxed), 1);
        assert!(log.stats().bytes.load(Ordering::Relaxed) as usize <= one * 3);
        let from = |p: Position| Position { offset: 0, ..p };
        assert!(matches!(
            log.read("a", Some(from(a)), 300),
            Recovery::NotRecovered { .. }
        ));
        assert_eq!(offsets(&log.read("a", Some(a), 300)), [2]);
        assert_eq!(offsets(&log.read("b", Some(from(b)), 300)), [1, 2]);
    }

    #[test]
    fn publications_older_than_the_ttl_are_not_served() {
        let log = LocalLog::new(HistoryLimits {
            ttl: Duration::ZERO,
            ..limits()
        });
        let p = append(&log, "t", "1").position().unwrap();
        let from = Position { offset: 0, ..p };
        assert!(matches!(
            log.read("t", Some(from), 300),
            Recovery::NotRecovered { head } if head == p
        ));
        assert_eq!(log.stats().evicted_ttl.load(Ordering::Relaxed), 1);
        assert_eq!(log.stats().bytes.load(Ordering::Relaxed), 0);
        // The stream itself stays: the client at the head loses nothing.
        assert_eq!(offsets(&log.read("t", Some(p), 300)), Vec::<u64>::new());
    }

    #[test]
    fn streams_are_bounded_and_an_evicted_one_comes_back_with_a_new_epoch() {
        let log = LocalLog::new(HistoryLimits {
            max_streams: 2,
            ..limits()
        });
        let a = append(&log, "a", "1").position().unwrap();
        append(&log, "b", "1");
        append(&log, "c", "1"); // evicts a (the oldest publication)
        assert_eq!(log.stats().streams.load(Ordering::Relaxed), 2);
        let again = append(&log, "a", "2").position().unwrap();
        assert_ne!(again.epoch, a.epoch);
        assert_eq!(again.offset, 1);
        assert!(matches!(
            log.read("a", Some(a), 300),
            Recovery::NotRecovered { .. }
        ));
    }

    #[test]
    fn the_order_queue_stays_bounded_under_per_topic_eviction() {
        let log = LocalLog::new(limits());
        for i in 0..10_000 {
            append(&log, "busy", &i.to_string());
        }
        let inner = log.lock();
        assert!(inner.order.len() <= 2 * inner.held + 1024);
        assert_eq!(inner.held, 5);
    }
}
