//! The broker link: its thread, its bounded queues, and the one task that connects, keeps the
//! broker's subscriptions in line with this node's topics, publishes, and delivers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use tracing::{debug, info, warn};

use super::wire::{self, Sequence, Sequences};
use super::{
    backoff, random_u64, Broker, BrokerConfig, BrokerError, BrokerStats, BrokerUrl, Events,
    Inbound, IO_TIMEOUT, QUEUE_CAPACITY, QUEUE_MAX_BYTES,
};
use crate::broadcast::uplink::Uplink;
use crate::broadcast::Hub;

/// Publishes the link sends per turn before it looks at what arrived, so neither direction
/// starves the other.
const BATCH: usize = 256;
/// How soon a subscription the broker refused is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// A connection that stayed up this long resets the reconnection backoff.
const STABLE: Duration = Duration::from_secs(5);
/// Warnings about an unreachable broker, at most one per this.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The workers' side of the link: bounded queues and flags, touched from any thread without
/// blocking. The link's task holds the other side.
#[derive(Debug)]
pub(crate) struct Link {
    /// This node's id in the envelopes; the low 16 bits count resets of its sequence table.
    node: u64,
    outbound: ArrayQueue<(Arc<str>, Bytes)>,
    outbound_bytes: AtomicUsize,
    /// Workers holding each topic: the node wants a topic while any worker does.
    interest: Mutex<HashMap<Arc<str>, usize>>,
    interest_changed: AtomicBool,
    /// Publishes dropped per topic (the queue was full) since the link last looked: their
    /// sequence numbers are skipped, so that the other nodes count them as gaps.
    dropped: Mutex<HashMap<Arc<str>, u64>>,
    any_dropped: AtomicBool,
    wake: tokio::sync::Notify,
    stopping: AtomicBool,
    pub(crate) stats: Arc<BrokerStats>,
    url: BrokerUrl,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Link {
    pub(super) fn new(url: &BrokerUrl) -> Self {
        Self {
            node: random_u64() & !0xFFFF,
            outbound: ArrayQueue::new(QUEUE_CAPACITY),
            outbound_bytes: AtomicUsize::new(0),
            interest: Mutex::new(HashMap::new()),
            interest_changed: AtomicBool::new(false),
            dropped: Mutex::new(HashMap::new()),
            any_dropped: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
            stats: Arc::new(BrokerStats::default()),
            url: url.clone(),
            thread: Mutex::new(None),
        }
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

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The topics the node holds now.
    fn wanted(&self) -> HashSet<Arc<str>> {
        self.interest_changed.store(false, Ordering::Release);
        self.interest
            .lock()
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn take(&self) -> Option<(Arc<str>, Bytes)> {
        let item = self.outbound.pop()?;
        self.outbound_bytes
            .fetch_sub(item.1.len(), Ordering::AcqRel);
        Some(item)
    }
}

impl Uplink for Link {
    fn publish(&self, topic: &Arc<str>, frame: &Bytes) {
        let len = frame.len();
        let over = self.outbound_bytes.fetch_add(len, Ordering::AcqRel) + len > QUEUE_MAX_BYTES;
        if over
            || self
                .outbound
                .push((Arc::clone(topic), frame.clone()))
                .is_err()
        {
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
        let Ok(mut map) = self.interest.lock() else {
            return;
        };
        let changed = if held {
            let workers = map.entry(Arc::clone(topic)).or_insert(0);
            *workers += 1;
            *workers == 1
        } else {
            match map.get_mut(topic) {
                Some(workers) if *workers > 1 => {
                    *workers -= 1;
                    false
                }
                Some(_) => {
                    map.remove(topic);
                    true
                }
                None => false,
            }
        };
        drop(map);
        if changed {
            self.interest_changed.store(true, Ordering::Release);
            self.wake.notify_one();
        }
    }

    fn render_metrics(&self, out: &mut String) {
        super::render_metrics(&self.stats, &self.url, out);
    }
}

/// Starts the link for `config` and waits for its first connection attempt: an unreachable
/// broker is an error unless the broker is optional, when the link goes on trying in the
/// background (with a warning) and the node starts local-only.
pub(crate) fn start(
    config: &BrokerConfig,
    hub: &Arc<Hub>,
    max_message_bytes: usize,
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
            let drive = Drive {
                runtime: &runtime,
                link: task_link,
                hub: task_hub,
                max_message_bytes,
                ready: ready_tx,
            };
            match url {
                BrokerUrl::Redis(url) => drive.run(super::redis::Redis::standalone(&url, prefix)),
                BrokerUrl::RedisCluster(nodes) => {
                    drive.run(super::redis::Redis::cluster(&nodes, prefix));
                }
                BrokerUrl::Nats(servers) => drive.run(super::nats::Nats::new(&servers, prefix)),
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
    hub: Arc<Hub>,
    max_message_bytes: usize,
    ready: mpsc::Sender<Result<(), String>>,
}

impl Drive<'_> {
    /// Runs the link's task on `broker` until the link stops; a client that could not be made
    /// is the first connection attempt's failure.
    fn run<B: Broker>(self, broker: Result<B, String>) {
        match broker {
            Ok(broker) => {
                let task = Task::new(broker, self.link, self.hub, self.max_message_bytes);
                self.runtime.block_on(task.run(self.ready));
            }
            Err(error) => drop(self.ready.send(Err(error))),
        }
    }
}

/// The link's task: the broker client and everything only it touches.
pub(super) struct Task<B: Broker> {
    broker: B,
    link: Arc<Link>,
    hub: Arc<Hub>,
    max_message_bytes: usize,
    /// Topics subscribed at the broker on the current connection.
    subscribed: HashSet<Arc<str>>,
    /// Topics subscribed on the connection before this one, until the first reconcile.
    held_before: HashSet<Arc<str>>,
    /// The last sequence number this node gave each topic it published to.
    sent: HashMap<Arc<str>, u64>,
    /// Resets of `sent`, the low bits of the node id: a receiver sees a new publisher.
    epoch: u16,
    received: Sequences,
    /// A subscription change the broker refused, to be tried again.
    retry_at: Option<tokio::time::Instant>,
    last_warning: Option<Instant>,
}

impl<B: Broker> Task<B> {
    pub(super) fn new(broker: B, link: Arc<Link>, hub: Arc<Hub>, max_message_bytes: usize) -> Self {
        Self {
            broker,
            link,
            hub,
            max_message_bytes,
            subscribed: HashSet::new(),
            held_before: HashSet::new(),
            sent: HashMap::new(),
            epoch: 0,
            received: Sequences::default(),
            retry_at: None,
            last_warning: None,
        }
    }

    pub(super) async fn run(mut self, ready: mpsc::Sender<Result<(), String>>) {
        let stats = Arc::clone(&self.link.stats);
        let (events, mut inbound, inbound_bytes) = Events::new(Arc::clone(&stats));
        let lost = events.lost_signal();
        let mut ready = Some(ready);
        let mut attempt = 0u32;
        let mut was_connected = false;
        while !self.link.stopping() {
            let connected =
                match tokio::time::timeout(IO_TIMEOUT, self.broker.connect(&events)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {IO_TIMEOUT:?}")),
                };
            match connected {
                Ok(()) => {
                    if was_connected {
                        BrokerStats::add(&stats.reconnects, 1);
                    }
                    info!(broker = %self.link.url, "broker connected");
                    was_connected = true;
                    stats.connected.store(true, Ordering::Relaxed);
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Ok(()));
                    }
                    self.held_before = std::mem::take(&mut self.subscribed);
                    self.link.interest_changed.store(true, Ordering::Release);
                    let since = Instant::now();
                    self.connected(&mut inbound, &inbound_bytes, &lost).await;
                    if since.elapsed() >= STABLE {
                        // Backoff starts over only after a connection that held: one that
                        // dies at once keeps backing off.
                        attempt = 0;
                    }
                    stats.connected.store(false, Ordering::Relaxed);
                    self.set_subscribed_gauge();
                    if self.link.stopping() {
                        self.broker.close().await;
                        break;
                    }
                    self.warn(format_args!("broker connection lost; reconnecting"));
                    self.broker.close().await;
                }
                Err(message) => {
                    stats.connected.store(false, Ordering::Relaxed);
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Err(message.clone()));
                    } else {
                        self.warn(format_args!("broker unreachable: {message}"));
                    }
                }
            }
            let delay = backoff(attempt, random_u64());
            attempt = attempt.saturating_add(1);
            self.wait_out(delay).await;
        }
    }

    /// Serves one connection until it is lost or the link stops. Each turn reads what
    /// arrived, then publishes a batch, then follows the interest, and waits only when none of
    /// them has work: a node that publishes steadily still reads what others publish.
    async fn connected(
        &mut self,
        inbound: &mut tokio::sync::mpsc::Receiver<Inbound>,
        inbound_bytes: &AtomicUsize,
        lost: &tokio::sync::Notify,
    ) {
        let mut arrived = Vec::with_capacity(BATCH);
        loop {
            if self.link.stopping() {
                // At most one IO_TIMEOUT for the whole goodbye: a broker that stopped
                // answering must not hold the server's shutdown.
                let _ = tokio::time::timeout(IO_TIMEOUT, self.leave()).await;
                return;
            }
            while arrived.len() < BATCH {
                match inbound.try_recv() {
                    Ok(message) => arrived.push(message),
                    Err(_) => break,
                }
            }
            let read = !arrived.is_empty();
            for message in arrived.drain(..) {
                inbound_bytes.fetch_sub(message.payload.len(), Ordering::AcqRel);
                self.deliver(message);
            }
            let more = match self.flush(BATCH).await {
                Ok(more) => more,
                Err(()) => return,
            };
            let due = self
                .retry_at
                .is_some_and(|at| at <= tokio::time::Instant::now());
            if (self.link.interest_changed.load(Ordering::Acquire) || due)
                && (!self.reconcile().await || !self.broker.is_connected())
            {
                return;
            }
            if more || read {
                // Work is waiting: let the clients' own tasks run, then go round again.
                tokio::task::yield_now().await;
                continue;
            }
            let retry = self.retry_at;
            tokio::select! {
                biased;
                // A permit left by a connection already replaced is stale: go on.
                () = lost.notified() => if !self.broker.is_connected() {
                    return;
                },
                n = inbound.recv_many(&mut arrived, BATCH) => if n == 0 {
                    return;
                },
                () = self.link.wake.notified() => {}
                () = sleep_until(retry) => {}
            }
        }
    }

    /// At a stop: out with what was published before it, then leave every channel.
    async fn leave(&mut self) {
        while self.flush(BATCH).await.is_ok_and(|more| more) {}
        let topics: Vec<Arc<str>> = self.subscribed.iter().cloned().collect();
        for topic in topics {
            let channel = self.broker.channel(&topic);
            if self.broker.unsubscribe(&channel).await.is_err() {
                return;
            }
            self.subscribed.remove(&topic);
        }
    }

    /// Publishes up to `limit` queued messages; whether more are waiting, or `Err` when the
    /// connection is gone.
    async fn flush(&mut self, limit: usize) -> Result<bool, ()> {
        let stats = Arc::clone(&self.link.stats);
        let mut left = limit;
        while left > 0 {
            let mut batch = Vec::with_capacity(left.min(BATCH));
            while batch.len() < left.min(BATCH) {
                let Some((topic, frame)) = self.link.take() else {
                    break;
                };
                let Some((opcode, payload)) = wire::split_frame(&frame) else {
                    debug_assert!(false, "an uplink frame is one the engine encoded");
                    continue;
                };
                let seq = self.next_seq(&topic);
                let node = self.link.node | u64::from(self.epoch);
                let message = wire::encode(opcode, node, seq, &payload);
                batch.push((self.broker.channel(&topic), message));
            }
            if batch.is_empty() {
                return Ok(false);
            }
            left -= batch.len();
            let Ok(results) = tokio::time::timeout(IO_TIMEOUT, self.broker.publish(&batch)).await
            else {
                // A broker that stops answering is as good as lost: make the connection anew.
                BrokerStats::add(&stats.publish_failures, batch.len() as u64);
                self.warn(format_args!("broker gave no answer within {IO_TIMEOUT:?}"));
                return Err(());
            };
            let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
            BrokerStats::add(&stats.published, (batch.len() - failed.len()) as u64);
            if let Some(message) = failed.first() {
                BrokerStats::add(&stats.publish_failures, failed.len() as u64);
                if !self.broker.is_connected() {
                    return Err(());
                }
                self.warn(format_args!("broker refused a publish: {message}"));
            }
        }
        Ok(!self.link.outbound.is_empty())
    }

    fn next_seq(&mut self, topic: &Arc<str>) -> u64 {
        if self.link.any_dropped.swap(false, Ordering::AcqRel) {
            let dropped = self
                .link
                .dropped
                .lock()
                .map(|mut d| std::mem::take(&mut *d))
                .unwrap_or_default();
            for (topic, count) in dropped {
                let seq = self.next_seq(&topic);
                if let Some(last) = self.sent.get_mut(&topic) {
                    *last = seq + count - 1;
                }
            }
        }
        if !self.sent.contains_key(topic) && self.sent.len() >= Sequences::MAX_ENTRIES {
            // A fresh table under a fresh id: receivers start counting over instead of seeing
            // sequence numbers go back.
            self.sent.clear();
            self.epoch = self.epoch.wrapping_add(1);
        }
        let seq = self.sent.entry(Arc::clone(topic)).or_insert(0);
        *seq += 1;
        *seq
    }

    /// Subscribes to the topics the node holds and not yet the broker, and the reverse.
    /// Returns `false` when the broker stopped answering (the connection is then re-made).
    async fn reconcile(&mut self) -> bool {
        self.retry_at = None;
        let wanted = self.link.wanted();
        // Topics held before a reconnection and no longer wanted: their sequences go, or a
        // later subscription would count what was published meanwhile as gaps.
        for topic in std::mem::take(&mut self.held_before) {
            if !wanted.contains(&topic) {
                self.received.forget(&topic);
            }
        }
        let add: Vec<Arc<str>> = wanted.difference(&self.subscribed).cloned().collect();
        let remove: Vec<Arc<str>> = self.subscribed.difference(&wanted).cloned().collect();
        for topic in add {
            let channel = self.broker.channel(&topic);
            match tokio::time::timeout(IO_TIMEOUT, self.broker.subscribe(&channel)).await {
                Ok(Ok(())) => {
                    self.subscribed.insert(topic);
                }
                Ok(Err(message)) => self.refused("subscribe", &channel, &message),
                Err(_) => {
                    self.refused("subscribe", &channel, "no answer");
                    return false;
                }
            }
        }
        for topic in remove {
            let channel = self.broker.channel(&topic);
            match tokio::time::timeout(IO_TIMEOUT, self.broker.unsubscribe(&channel)).await {
                Ok(Ok(())) => {
                    self.subscribed.remove(&topic);
                    self.received.forget(&topic);
                }
                Ok(Err(message)) => self.refused("unsubscribe", &channel, &message),
                Err(_) => {
                    self.refused("unsubscribe", &channel, "no answer");
                    return false;
                }
            }
        }
        self.set_subscribed_gauge();
        true
    }

    fn refused(&mut self, what: &str, channel: &str, message: &str) {
        self.retry_at = Some(tokio::time::Instant::now() + RETRY);
        self.warn(format_args!(
            "broker refused to {what} {channel:?}: {message}; trying again"
        ));
    }

    fn set_subscribed_gauge(&self) {
        self.link
            .stats
            .subscribed_topics
            .store(self.subscribed.len() as u64, Ordering::Relaxed);
    }

    /// Hands one message from the broker to the workers, unless it is this node's own, seen
    /// before, or unreadable.
    fn deliver(&mut self, message: Inbound) {
        let stats = &self.link.stats;
        let Some(topic) = self.broker.topic_of(&message.channel) else {
            BrokerStats::add(&stats.malformed, 1);
            return;
        };
        let envelope = match wire::decode(message.payload) {
            Ok(envelope) if envelope.payload.len() as u64 <= self.max_message_bytes as u64 => {
                envelope
            }
            Ok(_) | Err(_) => {
                BrokerStats::add(&stats.malformed, 1);
                return;
            }
        };
        let Some(topic) = self.subscribed.get(topic.as_str()).cloned() else {
            // Left (or not yet re-made after a reconnection): nobody here wants it, and
            // recording its sequence would make a gap of what follows a later subscription.
            return;
        };
        if let Some((node, seq)) = envelope.origin {
            if node & !0xFFFF == self.link.node {
                BrokerStats::add(&stats.own_skipped, 1);
                return;
            }
            match self.received.check(node, &topic, seq) {
                Sequence::InOrder => {}
                Sequence::Gap(missed) => BrokerStats::add(&stats.gaps, missed),
                Sequence::Repeat => {
                    BrokerStats::add(&stats.repeats, 1);
                    return;
                }
            }
        }
        // Encoded once for the whole node; every worker shares it.
        let frame = crate::broadcast::frame(envelope.opcode, &envelope.payload);
        BrokerStats::add(&stats.received, 1);
        self.hub.post(&topic, &frame, None);
    }

    /// Waits out a reconnection delay: publishes made meanwhile are counted as failed (the
    /// node delivered them itself), and a stop ends the wait.
    async fn wait_out(&mut self, delay: Duration) {
        let until = tokio::time::Instant::now() + delay;
        loop {
            while let Some((topic, _)) = self.link.take() {
                // Its number is spent, so that the other nodes see the gap.
                self.next_seq(&topic);
                BrokerStats::add(&self.link.stats.publish_failures, 1);
            }
            if self.link.stopping() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => return,
                () = self.link.wake.notified() => {}
            }
        }
    }

    /// Logs a warning, at most one per [`WARN_EVERY`] (the rest at debug).
    fn warn(&mut self, message: std::fmt::Arguments<'_>) {
        let now = Instant::now();
        if self.last_warning.is_none_or(|at| now - at >= WARN_EVERY) {
            self.last_warning = Some(now);
            warn!(broker = %self.link.url, "{message}");
        } else {
            debug!(broker = %self.link.url, "{message}");
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link::new(&"redis://127.0.0.1:1".parse().expect("a valid URL"))
    }

    #[test]
    fn a_topic_is_wanted_while_any_worker_holds_it() {
        let link = link();
        let topic: Arc<str> = Arc::from("room");
        link.interest(&topic, true);
        assert!(
            link.interest_changed.load(Ordering::Acquire),
            "0 -> 1 worker"
        );
        assert!(link.wanted().contains(&topic));
        link.interest(&topic, true);
        assert!(
            !link.interest_changed.load(Ordering::Acquire),
            "1 -> 2: no news"
        );
        link.interest(&topic, false);
        assert!(
            !link.interest_changed.load(Ordering::Acquire),
            "2 -> 1: no news"
        );
        assert!(link.wanted().contains(&topic));
        link.interest(&topic, false);
        assert!(
            link.interest_changed.load(Ordering::Acquire),
            "1 -> 0 workers"
        );
        assert!(link.wanted().is_empty());
        link.interest(&topic, false);
        assert!(link.wanted().is_empty(), "an extra leave is ignored");
    }

    #[test]
    fn the_outbound_queue_is_bounded_and_its_drops_are_remembered_per_topic() {
        let link = link();
        let topic: Arc<str> = Arc::from("t");
        let frame = crate::broadcast::frame(crate::protocol::OpCode::Text, b"x");
        for _ in 0..QUEUE_CAPACITY {
            link.publish(&topic, &frame);
        }
        assert_eq!(link.stats.publish_drops.load(Ordering::Relaxed), 0);
        link.publish(&topic, &frame);
        link.publish(&topic, &frame);
        assert_eq!(link.stats.publish_drops.load(Ordering::Relaxed), 2);
        assert_eq!(link.dropped.lock().unwrap().get(&topic), Some(&2));
        // Bytes bound too: one frame over the whole budget never fits.
        let big = Bytes::from(vec![0u8; QUEUE_MAX_BYTES + 1]);
        assert!(link.take().is_some());
        link.publish(&topic, &big);
        assert_eq!(link.stats.publish_drops.load(Ordering::Relaxed), 3);
    }
}
