//! The link's task: the one async task, on the link's own thread, that connects to the
//! broker, keeps its subscriptions in line with the node's topics, publishes what the workers
//! queued, and hands what arrives to the workers.

mod history;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::link::{InterestChanges, Link};
use super::reconnect::{sleep_until, Reconnection, Warnings};
use super::wire::{self, Sequence, Sequences};
use super::{Broker, BrokerLog, BrokerStats, Events, Inbound, IO_TIMEOUT, SUBSCRIBE_BATCH};
use crate::broadcast::{Mailboxes, Position, Publication};

/// Publishes the link sends per turn before it looks at what arrived, so neither direction
/// starves the other.
const BATCH: usize = 256;
/// How soon a subscription the broker refused is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// With history, how often each live topic's head is asked of the broker: a publication lost
/// with none after it is found within two of these.
pub(crate) const HEAD_CHECK: Duration = Duration::from_secs(1);

/// The link's task: the broker client and everything only it touches.
pub(super) struct Task<B: Broker> {
    broker: B,
    link: Arc<Link>,
    hub: Arc<Mailboxes>,
    max_message_bytes: usize,
    /// The topics the node wants, as of the last changes taken from the link.
    wanted: HashSet<Arc<str>>,
    /// Topics whose subscription at the broker may differ from `wanted`: the ones changed,
    /// refused, or not yet subscribed on a new connection. A reconcile looks at these only.
    dirty: HashSet<Arc<str>>,
    /// Topics subscribed at the broker on the current connection.
    subscribed: HashSet<Arc<str>>,
    /// Topics subscribed on a connection that was lost, until the next one's first reconcile.
    held_before: HashSet<Arc<str>>,
    /// The last sequence number this node gave each topic it published to.
    sent: HashMap<Arc<str>, u64>,
    /// Resets of `sent`, the low bits of the node id: a receiver sees a new publisher.
    epoch: u16,
    received: Sequences,
    /// A subscription change the broker refused, to be tried again.
    retry_at: Option<tokio::time::Instant>,
    warnings: Warnings,
    /// With history: the broker's streams, as this node keeps them (`log.rs`).
    log: Option<Arc<BrokerLog>>,
    /// With history: the position of the last publication handed to the workers, per topic.
    last: HashMap<Arc<str>, Position>,
    /// With history: heads the last check found past `last`; still past it at the next
    /// check, what lies between was lost on the way.
    suspects: HashMap<Arc<str>, Position>,
    check_at: tokio::time::Instant,
}

impl<B: Broker> Task<B> {
    pub(super) fn new(
        broker: B,
        link: Arc<Link>,
        hub: Arc<Mailboxes>,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            broker,
            link,
            hub,
            max_message_bytes,
            wanted: HashSet::new(),
            dirty: HashSet::new(),
            subscribed: HashSet::new(),
            held_before: HashSet::new(),
            sent: HashMap::new(),
            epoch: 0,
            received: Sequences::default(),
            retry_at: None,
            warnings: Warnings::default(),
            log: None,
            last: HashMap::new(),
            suspects: HashMap::new(),
            check_at: tokio::time::Instant::now() + HEAD_CHECK,
        }
    }

    /// Positions and history from the broker, kept in `log` (`--history` with a broker that
    /// keeps streams).
    pub(super) fn with_log(mut self, log: Arc<BrokerLog>) -> Self {
        self.log = Some(log);
        self
    }

    pub(super) async fn run(mut self, ready: mpsc::Sender<Result<(), String>>) {
        let stats = Arc::clone(&self.link.stats);
        let (events, mut inbound, inbound_bytes) = Events::new(Arc::clone(&stats));
        let lost = events.lost_signal();
        let mut reconnection = Reconnection::new(stats, ready);
        while !self.link.stopping() {
            let connected =
                match tokio::time::timeout(IO_TIMEOUT, self.broker.connect(&events)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {IO_TIMEOUT:?}")),
                };
            match connected {
                Ok(()) => {
                    info!(broker = %self.link.url, "broker connected");
                    reconnection.connected();
                    // Nothing is subscribed on a new connection: every wanted topic is to do.
                    self.dirty.extend(self.wanted.iter().cloned());
                    self.link.interest_changed.store(true, Ordering::Release);
                    self.connected(&mut inbound, &inbound_bytes, &lost).await;
                    reconnection.lost();
                    // Nothing is subscribed at a broker this node is not connected to: the
                    // gauge (and `wait_broker_subscriptions`) say 0 until the next connection's
                    // reconcile subscribes the topics again.
                    self.held_before.extend(self.subscribed.drain());
                    self.set_subscribed_gauge();
                    if self.link.stopping() {
                        self.broker.close().await;
                        break;
                    }
                    self.warn(format_args!("broker connection lost; reconnecting"));
                    self.broker.close().await;
                }
                Err(message) => {
                    if let Some(message) = reconnection.failed(message) {
                        self.warn(format_args!("broker unreachable: {message}"));
                    }
                }
            }
            let delay = reconnection.next_delay();
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
                self.deliver(message).await;
            }
            if self.log.is_some() && tokio::time::Instant::now() >= self.check_at {
                if !self.check_heads().await {
                    return;
                }
                self.check_at = tokio::time::Instant::now() + HEAD_CHECK;
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
            let check = self.log.is_some().then_some(self.check_at);
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
                () = sleep_until(check) => {}
            }
        }
    }

    /// At a stop: out with what was published before it, then leave every channel.
    async fn leave(&mut self) {
        while self.flush(BATCH).await.is_ok_and(|more| more) {}
        let topics: Vec<Arc<str>> = self.subscribed.iter().cloned().collect();
        for topics in topics.chunks(SUBSCRIBE_BATCH) {
            let channels: Vec<String> = topics.iter().map(|t| self.broker.channel(t)).collect();
            if self.broker.unsubscribe(&channels).await.is_err() {
                return;
            }
            for topic in topics {
                self.subscribed.remove(topic);
            }
        }
    }

    /// Publishes up to `limit` queued messages; whether more are waiting, or `Err` when the
    /// connection is gone.
    async fn flush(&mut self, limit: usize) -> Result<bool, ()> {
        let stats = Arc::clone(&self.link.stats);
        let mut left = limit;
        while left > 0 {
            if self.log.is_some() {
                let mut batch = Vec::with_capacity(left.min(BATCH));
                while batch.len() < left.min(BATCH) {
                    let Some(publication) = self.link.take() else {
                        break;
                    };
                    batch.push((
                        self.broker.channel(publication.topic()),
                        publication.opcode(),
                        publication.payload().clone(),
                        publication.except(),
                    ));
                }
                if batch.is_empty() {
                    return Ok(false);
                }
                left -= batch.len();
                let Ok(results) =
                    tokio::time::timeout(IO_TIMEOUT, self.broker.append_except(&batch)).await
                else {
                    BrokerStats::add(&stats.publish_failures, batch.len() as u64);
                    self.warn(format_args!("broker gave no answer within {IO_TIMEOUT:?}"));
                    return Err(());
                };
                if !self.count_published(&stats, results) {
                    return Err(());
                }
                continue;
            }
            let mut batch = Vec::with_capacity(left.min(BATCH));
            while batch.len() < left.min(BATCH) {
                let Some(publication) = self.link.take() else {
                    break;
                };
                let topic = publication.topic();
                let seq = self.next_seq(topic);
                let node = self.link.node | u64::from(self.epoch);
                let message = wire::encode_except(
                    publication.opcode(),
                    node,
                    seq,
                    publication.published(),
                    publication.except(),
                );
                batch.push((self.broker.channel(topic), message));
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
            if !self.count_published(&stats, results) {
                return Err(());
            }
        }
        Ok(!self.link.outbound.is_empty())
    }

    /// Counts a batch's results; `false` when the connection is gone.
    fn count_published(&mut self, stats: &BrokerStats, results: Vec<Result<(), String>>) -> bool {
        let total = results.len();
        let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        BrokerStats::add(&stats.published, (total - failed.len()) as u64);
        if let Some(message) = failed.first() {
            BrokerStats::add(&stats.publish_failures, failed.len() as u64);
            if !self.broker.is_connected() {
                return false;
            }
            self.warn(format_args!("broker refused a publish: {message}"));
        }
        true
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

    /// The topics to subscribe and to unsubscribe now: those whose interest changed since the
    /// link was last asked (taken into `wanted`), and those left `dirty`.
    fn take_work(&mut self) -> (Vec<Arc<str>>, Vec<Arc<str>>) {
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        match self.link.take_changes() {
            InterestChanges::Some(changes) => {
                // The list names each topic once; what it names leaves `dirty`, so that no
                // topic is asked for twice.
                for (topic, held) in changes {
                    if !self.dirty.is_empty() {
                        self.dirty.remove(&topic);
                    }
                    if held {
                        self.wanted.insert(Arc::clone(&topic));
                    } else {
                        self.wanted.remove(&topic);
                    }
                    self.sort(topic, held, &mut add, &mut remove);
                }
            }
            InterestChanges::All(all) => {
                // Anything may have changed: every topic wanted before or now, or subscribed.
                self.dirty.extend(self.wanted.drain());
                self.dirty.extend(self.subscribed.iter().cloned());
                self.wanted = all;
                self.dirty.extend(self.wanted.iter().cloned());
            }
        }
        for topic in std::mem::take(&mut self.dirty) {
            let wanted = self.wanted.contains(&topic);
            self.sort(topic, wanted, &mut add, &mut remove);
        }
        (add, remove)
    }

    /// Puts `topic` in `add` if it is `wanted` and not subscribed, in `remove` if the reverse.
    fn sort(
        &self,
        topic: Arc<str>,
        wanted: bool,
        add: &mut Vec<Arc<str>>,
        remove: &mut Vec<Arc<str>>,
    ) {
        match (wanted, self.subscribed.contains(&topic)) {
            (true, false) => add.push(topic),
            (false, true) => remove.push(topic),
            _ => {}
        }
    }

    /// Subscribes to the topics the node holds and not yet the broker, and the reverse,
    /// looking only at the topics that may differ. Returns `false` when the broker stopped
    /// answering (the connection is then re-made, and every wanted topic looked at again).
    async fn reconcile(&mut self) -> bool {
        self.retry_at = None;
        let (add, remove) = self.take_work();
        // Topics held before a reconnection and no longer wanted: their sequences go, or a
        // later subscription would count what was published meanwhile as gaps.
        for topic in std::mem::take(&mut self.held_before) {
            if !self.wanted.contains(&topic) {
                self.received.forget(&topic);
            }
        }
        for topics in add.chunks(SUBSCRIBE_BATCH) {
            let channels: Vec<String> = topics.iter().map(|t| self.broker.channel(t)).collect();
            match tokio::time::timeout(IO_TIMEOUT, self.broker.subscribe(&channels)).await {
                Ok(Ok(())) => {
                    self.subscribed.extend(topics.iter().cloned());
                    if self.log.is_some() {
                        for topic in topics {
                            self.load(topic).await;
                        }
                    }
                }
                Ok(Err(message)) => {
                    self.dirty.extend(topics.iter().cloned());
                    self.refused("subscribe", &channels, &message);
                }
                Err(_) => {
                    self.refused("subscribe", &channels, "no answer");
                    return false;
                }
            }
        }
        for topics in remove.chunks(SUBSCRIBE_BATCH) {
            let channels: Vec<String> = topics.iter().map(|t| self.broker.channel(t)).collect();
            match tokio::time::timeout(IO_TIMEOUT, self.broker.unsubscribe(&channels)).await {
                Ok(Ok(())) => {
                    for topic in topics {
                        self.subscribed.remove(topic);
                        self.received.forget(topic);
                        if let Some(log) = &self.log {
                            log.forget(topic);
                            self.last.remove(topic);
                            self.suspects.remove(topic);
                        }
                    }
                }
                Ok(Err(message)) => {
                    self.dirty.extend(topics.iter().cloned());
                    self.refused("unsubscribe", &channels, &message);
                }
                Err(_) => {
                    self.refused("unsubscribe", &channels, "no answer");
                    return false;
                }
            }
        }
        self.set_subscribed_gauge();
        true
    }

    fn refused(&mut self, what: &str, channels: &[String], message: &str) {
        self.retry_at = Some(tokio::time::Instant::now() + RETRY);
        let (first, more) = (
            channels.first().map_or("", String::as_str),
            channels.len() - 1,
        );
        let others = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        self.warn(format_args!(
            "broker refused to {what} {first:?}{others}: {message}; trying again"
        ));
    }

    fn set_subscribed_gauge(&self) {
        self.link.set_subscribed(self.subscribed.len() as u64);
    }

    /// Hands one message from the broker to the workers, unless it is this node's own, seen
    /// before, or unreadable.
    async fn deliver(&mut self, message: Inbound) {
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
        if &*topic == crate::broadcast::cluster::CLUSTER_TOPIC {
            // The handlers' side channel: for the node's handler, not its connections.
            let own = envelope
                .origin
                .is_some_and(|(node, _)| node & !0xFFFF == self.link.node);
            if own {
                BrokerStats::add(&stats.own_skipped, 1);
            } else if let Some(sink) = self.link.cluster() {
                BrokerStats::add(&stats.received, 1);
                sink.receive(&envelope.payload);
            }
            return;
        }
        if self.log.is_some() {
            let publication = Publication::stamped(
                topic,
                envelope.opcode,
                envelope.payload,
                envelope.position,
                self.link.stamp(),
            );
            if let Some(previous) = envelope.previous {
                publication.follow(previous);
            }
            // The connection that published it skips it here too (Pusher's socket_id).
            if let Some(peer) = envelope.except {
                publication.exclude(peer);
            }
            self.accept(publication).await;
            return;
        }
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
        let publication = Publication::new(topic, envelope.opcode, envelope.payload, None);
        if let Some(peer) = envelope.except {
            publication.exclude(peer);
        }
        BrokerStats::add(&stats.received, 1);
        self.hub.post(&publication, None);
    }

    /// Waits out a reconnection delay: publishes made meanwhile are counted as failed (the
    /// node delivered them itself), and a stop ends the wait.
    async fn wait_out(&mut self, delay: Duration) {
        let until = tokio::time::Instant::now() + delay;
        loop {
            while let Some(publication) = self.link.take() {
                // Its number is spent, so that the other nodes see the gap.
                self.next_seq(publication.topic());
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

    /// Logs a warning, at most one per 10 s (the rest at debug; [`Warnings`]).
    fn warn(&mut self, message: std::fmt::Arguments<'_>) {
        if self.warnings.due() {
            warn!(broker = %self.link.url, "{message}");
        } else {
            debug!(broker = %self.link.url, "{message}");
        }
    }
}
