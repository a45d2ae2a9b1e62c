//! The broker link's side that the workers touch: its bounded queues and interest counts, and
//! the thread that runs its task (`task.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use tracing::warn;

use super::task::Task;
use super::wire::Sequences;
use super::{
    random_u64, Broker, BrokerConfig, BrokerError, BrokerLog, BrokerStats, BrokerUrl,
    QUEUE_CAPACITY, QUEUE_MAX_BYTES,
};
use crate::broadcast::uplink::Uplink;
use crate::broadcast::{Mailboxes, Publication};

/// The workers' side of the link: bounded queues and flags, touched from any thread without
/// blocking. The link's task holds the other side.
#[derive(Debug)]
pub(crate) struct Link {
    /// This node's id in the envelopes; the low 16 bits count resets of its sequence table.
    pub(super) node: u64,
    pub(super) outbound: ArrayQueue<Arc<Publication>>,
    outbound_bytes: AtomicUsize,
    /// Workers holding each topic, and which topics changed since the task last looked.
    interest: Mutex<Interest>,
    pub(super) interest_changed: AtomicBool,
    /// Publishes dropped per topic (the queue was full) since the link last looked: their
    /// sequence numbers are skipped, so that the other nodes count them as gaps.
    pub(super) dropped: Mutex<HashMap<Arc<str>, u64>>,
    pub(super) any_dropped: AtomicBool,
    pub(super) wake: tokio::sync::Notify,
    stopping: AtomicBool,
    pub(crate) stats: Arc<BrokerStats>,
    /// Signals a change of `stats.subscribed_topics` to those who wait on it
    /// ([`wait_subscribed`](Self::wait_subscribed)); the gauge is the count.
    subscribed_lock: Mutex<()>,
    subscribed_changed: Condvar,
    pub(super) url: BrokerUrl,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The handler's side channel, once it joined the cluster (`broadcast::cluster`).
    cluster: std::sync::OnceLock<Arc<dyn crate::broadcast::cluster::ClusterSink>>,
    /// The handler's stamp (`Handler::stamp`): with a broker's log, a publication gets its
    /// position when it comes back from the broker, so it is stamped here, on every node.
    stamp: std::sync::OnceLock<crate::broadcast::Stamp>,
}

impl Link {
    pub(super) fn new(url: &BrokerUrl) -> Self {
        Self {
            node: random_u64() & !0xFFFF,
            outbound: ArrayQueue::new(QUEUE_CAPACITY),
            outbound_bytes: AtomicUsize::new(0),
            interest: Mutex::new(Interest::default()),
            interest_changed: AtomicBool::new(false),
            dropped: Mutex::new(HashMap::new()),
            any_dropped: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
            stats: Arc::new(BrokerStats::default()),
            subscribed_lock: Mutex::new(()),
            subscribed_changed: Condvar::new(),
            url: url.clone(),
            thread: Mutex::new(None),
            cluster: std::sync::OnceLock::new(),
            stamp: std::sync::OnceLock::new(),
        }
    }

    /// Hands the link the handler's stamp, once: what comes back from the broker's log with
    /// a position is stamped with it before any worker sees it.
    pub(crate) fn set_stamp(&self, stamp: crate::broadcast::Stamp) {
        let _ = self.stamp.set(stamp);
    }

    /// The handler's stamp, if it has one.
    pub(super) fn stamp(&self) -> Option<crate::broadcast::Stamp> {
        self.stamp.get().copied()
    }

    /// Hands the link the handler's side channel, once: the link holds the cluster topic
    /// from now on, and what arrives there goes to `sink`.
    pub(crate) fn set_cluster(&self, sink: Arc<dyn crate::broadcast::cluster::ClusterSink>) {
        if self.cluster.set(sink).is_ok() {
            let topic: Arc<str> = Arc::from(crate::broadcast::cluster::CLUSTER_TOPIC);
            self.interest(&topic, true);
        }
    }

    /// The handler's side channel, if it joined.
    pub(super) fn cluster(&self) -> Option<&Arc<dyn crate::broadcast::cluster::ClusterSink>> {
        self.cluster.get()
    }

    /// Stops the link: what is queued is published, every subscription is dropped at the
    /// broker, and the thread exits. Idempotent.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.wake.notify_one();
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            if thread.join().is_err() {
                warn!("the broker link panicked");
            }
        }
    }

    /// The link's task has `topics` subscribed at the broker now: sets the gauge and wakes
    /// whoever waits for a count.
    pub(super) fn set_subscribed(&self, topics: u64) {
        // Stored under the lock, so that a waiter between its check and its wait misses nothing.
        let _guard = self.subscribed_lock.lock();
        self.stats
            .subscribed_topics
            .store(topics, Ordering::Relaxed);
        self.subscribed_changed.notify_all();
    }

    /// Waits until `topics` are subscribed at the broker, at most `timeout`; whether they are.
    pub(crate) fn wait_subscribed(&self, topics: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let gauge = &self.stats.subscribed_topics;
        let Ok(mut guard) = self.subscribed_lock.lock() else {
            return false;
        };
        while gauge.load(Ordering::Relaxed) != topics {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = match self.subscribed_changed.wait_timeout(guard, left) {
                Ok((guard, _)) => guard,
                Err(_) => return false,
            };
        }
        true
    }

    /// Hands the link its thread, for [`stop`](Self::stop) to join.
    pub(super) fn set_thread(&self, thread: JoinHandle<()>) {
        if let Ok(mut slot) = self.thread.lock() {
            *slot = Some(thread);
        }
    }

    /// Records `count` publishes to `topic` as dropped at a full queue, as `publish` does.
    #[cfg(test)]
    pub(super) fn note_drops_for_test(&self, topic: &Arc<str>, count: u64) {
        *self
            .dropped
            .lock()
            .unwrap()
            .entry(Arc::clone(topic))
            .or_insert(0) += count;
        self.any_dropped.store(true, Ordering::Release);
    }

    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// What changed in the node's interest since the task last asked. The lock the workers
    /// take is held for the changes only (every held topic only after an overflow), so a
    /// node holding many topics does not stall a worker that joins one.
    pub(super) fn take_changes(&self) -> InterestChanges {
        self.interest_changed.store(false, Ordering::Release);
        let Ok(mut interest) = self.interest.lock() else {
            return InterestChanges::Some(Vec::new());
        };
        if std::mem::take(&mut interest.overflowed) {
            return InterestChanges::All(interest.held.keys().cloned().collect());
        }
        let changed = std::mem::take(&mut interest.changed);
        InterestChanges::Some(
            changed
                .into_iter()
                .map(|topic| {
                    let held = interest.held.contains_key(&topic);
                    (topic, held)
                })
                .collect(),
        )
    }

    pub(super) fn take(&self) -> Option<Arc<Publication>> {
        let item = self.outbound.pop()?;
        self.outbound_bytes
            .fetch_sub(item.published().len(), Ordering::AcqRel);
        Some(item)
    }
}

impl Uplink for Link {
    fn publish(&self, publication: &Arc<Publication>) {
        let topic = publication.topic();
        let len = publication.published().len();
        let over = self.outbound_bytes.fetch_add(len, Ordering::AcqRel) + len > QUEUE_MAX_BYTES;
        if over || self.outbound.push(Arc::clone(publication)).is_err() {
            self.outbound_bytes.fetch_sub(len, Ordering::AcqRel);
            BrokerStats::add(&self.stats.publish_drops, 1);
            if let Ok(mut dropped) = self.dropped.lock() {
                // Bounded like the link's own table: past it, these gaps go unseen.
                if dropped.len() < Sequences::MAX_ENTRIES || dropped.contains_key(topic) {
                    *dropped.entry(Arc::clone(topic)).or_insert(0) += 1;
                    self.any_dropped.store(true, Ordering::Release);
                }
            }
            return;
        }
        self.wake.notify_one();
    }

    fn interest(&self, topic: &Arc<str>, held: bool) {
        let Ok(mut interest) = self.interest.lock() else {
            return;
        };
        let changed = interest.count(topic, held);
        drop(interest);
        if changed {
            self.interest_changed.store(true, Ordering::Release);
            self.wake.notify_one();
        }
    }

    fn render_metrics(&self, out: &mut String) {
        super::render_metrics(&self.stats, &self.url, out);
    }
}

/// Changes in [`Interest::changed`] kept before they are given up for one resynchronisation:
/// a node whose link is away (or slow) while clients churn through topics holds at most this
/// many names beyond the topics themselves.
pub(super) const CHANGES_MAX: usize = 16_384;

/// The node's interest, as the workers report it.
#[derive(Debug, Default)]
struct Interest {
    /// Workers holding each topic: the node wants a topic while any worker does.
    held: HashMap<Arc<str>, usize>,
    /// Topics that went from no worker to one, or from one to none, since the task last took
    /// the changes; at most [`CHANGES_MAX`].
    changed: HashSet<Arc<str>>,
    /// More changed than `changed` may hold: the task takes every held topic instead.
    overflowed: bool,
}

impl Interest {
    /// One worker took up (`held`) or gave up `topic`; whether the node's interest changed.
    fn count(&mut self, topic: &Arc<str>, held: bool) -> bool {
        let changed = if held {
            let workers = self.held.entry(Arc::clone(topic)).or_insert(0);
            *workers += 1;
            *workers == 1
        } else {
            match self.held.get_mut(topic) {
                Some(workers) if *workers > 1 => {
                    *workers -= 1;
                    false
                }
                Some(_) => {
                    self.held.remove(topic);
                    true
                }
                None => false,
            }
        };
        if changed && !self.overflowed {
            if self.changed.len() < CHANGES_MAX || self.changed.contains(topic) {
                self.changed.insert(Arc::clone(topic));
            } else {
                self.overflowed = true;
                self.changed = HashSet::new();
            }
        }
        changed
    }
}

/// What changed in the node's interest since the link's task last asked.
#[derive(Debug)]
pub(super) enum InterestChanges {
    /// These topics, each with whether the node wants it now.
    Some(Vec<(Arc<str>, bool)>),
    /// Too many changes to list: every topic the node wants now.
    All(HashSet<Arc<str>>),
}

/// Starts the link for `config` and waits for its first connection attempt: an unreachable
/// broker is an error unless the broker is optional, when the link goes on trying in the
/// background (with a warning) and the node starts local-only.
pub(crate) fn start(
    config: &BrokerConfig,
    hub: &Arc<Mailboxes>,
    max_message_bytes: usize,
    log: Option<Arc<BrokerLog>>,
) -> Result<Arc<Link>, BrokerError> {
    let link = Arc::new(Link::new(&config.url));
    let (ready_tx, ready_rx) = mpsc::channel();
    let task_link = Arc::clone(&link);
    let task_hub = Arc::clone(hub);
    let url = config.url.clone();
    let prefix = config.prefix.clone();
    let thread = std::thread::Builder::new()
        .name("uringcast-broker".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready_tx.send(Err(format!("cannot start its runtime: {error}")));
                    return;
                }
            };
            let settings = log.as_ref().map(|log| log.stream_settings());
            let with_history = |redis: super::redis::Redis| match settings {
                Some(settings) => redis.with_history(settings),
                None => redis,
            };
            let drive = Drive {
                runtime: &runtime,
                link: task_link,
                hub: task_hub,
                max_message_bytes,
                ready: ready_tx,
                log,
            };
            match url {
                BrokerUrl::Redis(url) => {
                    drive.run(super::redis::Redis::standalone(&url, prefix).map(with_history));
                }
                BrokerUrl::RedisCluster(nodes) => {
                    drive.run(super::redis::Redis::cluster(&nodes, prefix).map(with_history));
                }
                BrokerUrl::Nats(servers) => {
                    drive.run(super::nats::Nats::new(&servers, prefix).map(
                        |nats| match settings {
                            Some(settings) => nats.with_history(settings),
                            None => nats,
                        },
                    ));
                }
                BrokerUrl::Kafka(hosts) => drive.run_kafka(hosts, prefix),
            }
        })
        .map_err(BrokerError::Start)?;
    link.set_thread(thread);
    let first = ready_rx
        .recv()
        .unwrap_or_else(|_| Err("the link's thread ended".into()));
    match first {
        Ok(()) => {}
        Err(message) if config.optional => {
            warn!(
                broker = %config.url,
                %message,
                "broker unreachable; starting local-only (--broker-optional), retrying in the background"
            );
        }
        Err(message) => {
            link.stop();
            return Err(BrokerError::Unreachable {
                url: config.url.to_string(),
                message,
            });
        }
    }
    hub.set_uplink(Arc::clone(&link) as Arc<dyn Uplink>);
    Ok(link)
}

/// What the link's thread needs to run a task for whichever broker the URL names.
struct Drive<'r> {
    runtime: &'r tokio::runtime::Runtime,
    link: Arc<Link>,
    hub: Arc<Mailboxes>,
    max_message_bytes: usize,
    ready: mpsc::Sender<Result<(), String>>,
    log: Option<Arc<BrokerLog>>,
}

impl Drive<'_> {
    /// Runs the link's task on `broker` until the link stops; a client that could not be made
    /// is the first connection attempt's failure.
    fn run<B: Broker>(self, broker: Result<B, String>) {
        match broker {
            Ok(broker) => {
                let mut task = Task::new(broker, self.link, self.hub, self.max_message_bytes);
                if let Some(log) = self.log {
                    task = task.with_log(log);
                }
                self.runtime.block_on(task.run(self.ready));
            }
            Err(error) => drop(self.ready.send(Err(error))),
        }
    }
}

impl Drive<'_> {
    /// Runs the Kafka link (`kafka.rs`), which is a log only: without one (no `--history`,
    /// refused by the config) it fails the first connection attempt.
    fn run_kafka(self, hosts: Vec<String>, topic: String) {
        let Some(log) = self.log else {
            drop(self.ready.send(Err("kafka:// needs --history".into())));
            return;
        };
        let task = super::kafka::KafkaTask::new(
            hosts,
            topic,
            self.link,
            self.hub,
            log,
            self.max_message_bytes,
        );
        self.runtime.block_on(task.run(self.ready));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn link() -> Link {
        Link::new(&"redis://127.0.0.1:1".parse().expect("a valid URL"))
    }

    /// The changes the task is handed, which must be a list.
    fn changes(link: &Link) -> Vec<(Arc<str>, bool)> {
        match link.take_changes() {
            InterestChanges::Some(mut changes) => {
                changes.sort();
                changes
            }
            InterestChanges::All(all) => {
                panic!("a list was expected, got all {} topics", all.len())
            }
        }
    }

    #[test]
    fn a_topic_is_wanted_while_any_worker_holds_it() {
        let link = link();
        let topic: Arc<str> = Arc::from("room");
        let news = || link.interest_changed.load(Ordering::Acquire);
        link.interest(&topic, true);
        assert!(news(), "0 -> 1 worker");
        assert_eq!(changes(&link), [(Arc::clone(&topic), true)]);
        link.interest(&topic, true);
        assert!(!news(), "1 -> 2: no news");
        link.interest(&topic, false);
        assert!(!news(), "2 -> 1: no news");
        assert_eq!(changes(&link), []);
        link.interest(&topic, false);
        assert!(news(), "1 -> 0 workers");
        assert_eq!(changes(&link), [(Arc::clone(&topic), false)]);
        link.interest(&topic, false);
        assert!(!news(), "an extra leave is ignored");
        assert_eq!(changes(&link), []);
    }

    #[test]
    fn only_the_topics_that_changed_are_handed_over_each_with_its_state_now() {
        let link = link();
        let topics: Vec<Arc<str>> = (0..1000).map(|i| Arc::from(format!("t{i}"))).collect();
        for topic in &topics {
            link.interest(topic, true);
        }
        assert_eq!(changes(&link).len(), 1000);
        // One topic joins, one leaves, and one comes and goes before the task looks: three
        // changes, not the 1,000 topics held.
        let (new, brief): (Arc<str>, Arc<str>) = (Arc::from("new"), Arc::from("brief"));
        link.interest(&new, true);
        link.interest(&topics[0], false);
        link.interest(&brief, true);
        link.interest(&brief, false);
        assert_eq!(
            changes(&link),
            [(brief, false), (new, true), (Arc::clone(&topics[0]), false)]
        );
    }

    #[test]
    fn past_the_change_limit_the_list_is_given_up_for_every_held_topic_once() {
        let link = link();
        let kept: Arc<str> = Arc::from("kept");
        link.interest(&kept, true);
        for i in 0..CHANGES_MAX {
            let topic: Arc<str> = Arc::from(format!("brief-{i}"));
            link.interest(&topic, true);
            link.interest(&topic, false);
        }
        {
            let interest = link.interest.lock().unwrap();
            assert!(interest.overflowed);
            assert!(
                interest.changed.is_empty(),
                "the list is dropped, not grown"
            );
        }
        match link.take_changes() {
            InterestChanges::All(all) => assert_eq!(all, HashSet::from([kept])),
            other => panic!("every held topic was expected, got {other:?}"),
        }
        assert_eq!(changes(&link), [], "and then lists again");
    }

    #[test]
    fn the_outbound_queue_is_bounded_and_its_drops_are_remembered_per_topic() {
        let link = link();
        let topic: Arc<str> = Arc::from("t");
        let publication = |payload: Bytes| {
            Publication::new(
                Arc::clone(&topic),
                crate::protocol::OpCode::Text,
                payload,
                None,
            )
        };
        let frame = publication(Bytes::from_static(b"x"));
        for _ in 0..QUEUE_CAPACITY {
            link.publish(&frame);
        }
        assert_eq!(link.stats.publish_drops.load(Ordering::Relaxed), 0);
        link.publish(&frame);
        link.publish(&frame);
        assert_eq!(link.stats.publish_drops.load(Ordering::Relaxed), 2);
        assert_eq!(link.dropped.lock().unwrap().get(&topic), Some(&2));
        // Bytes bound too: one frame over the whole budget never fits.
        let big = publication(Bytes::from(vec![0u8; QUEUE_MAX_BYTES + 1]));
        assert!(link.take().is_some());
        link.publish(&big);
        assert_eq!(link.stats.publish_drops.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_waiter_for_the_subscription_count_is_woken_by_the_task_and_bounded_by_its_timeout() {
        let link = Arc::new(link());
        assert!(link.wait_subscribed(0, Duration::ZERO), "none at first");
        assert!(!link.wait_subscribed(1, Duration::from_millis(20)));
        let waiting = Arc::clone(&link);
        let waiter =
            std::thread::spawn(move || waiting.wait_subscribed(2, Duration::from_secs(10)));
        link.set_subscribed(1);
        link.set_subscribed(2);
        assert!(waiter.join().unwrap(), "woken at 2");
        assert_eq!(
            link.stats.subscribed_topics.load(Ordering::Relaxed),
            2,
            "the gauge"
        );
    }
}
