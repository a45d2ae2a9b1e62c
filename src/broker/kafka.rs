//! Kafka as the broker's log (`--broker kafka://HOST:PORT[,...]` with `--history`): one Kafka
//! topic, named by `--broker-prefix`, carries every uringcast topic, and Kafka's partition
//! offsets are the positions every node agrees on.
//!
//! - **Records.** A publication is a record whose key is the uringcast topic and whose value
//!   is the payload (a header `uringcast-opcode: binary` marks a binary one; otherwise it is
//!   text if it is valid UTF-8). Its partition is the one Kafka's default partitioner picks
//!   for the key (murmur2, as the Java client and kafka-python do), so a backend that
//!   produces with any standard client and the topic as its key lands on the same partition,
//!   and a topic stays on one partition, in order.
//! - **Positions.** A record at partition offset `k` is at position `EPOCH:k+1` (0 stays
//!   "before the first"). One topic's offsets skip the other topics' records in its
//!   partition: each publication carries its topic predecessor's offset
//!   (`Publication::follow`), which the node knows because it reads its partitions
//!   whole, in order, so no record can pass it unseen.
//! - **Epoch.** `k<PARTITION>-<T>`, where `T` is the base-36 timestamp (ms) of the
//!   partition's record at offset 0: a topic deleted and created again, or a broker that
//!   lost its storage, starts a new partition whose first record has a new timestamp. When
//!   offset 0 is no longer kept (retention), `T` is `x`: nodes that read offset 0 earlier and
//!   nodes that did not then disagree, and a position from one is "not recovered" on the
//!   other, never silently wrong.
//! - **Reading.** No consumer group: each node reads every partition from where it stood
//!   (the partition's end when it starts) and keeps the records of the topics it serves. A
//!   reconnection goes on from the offset reached, so what was produced meanwhile is read,
//!   late but whole (counted as a gap repaired). An offset the broker no longer keeps
//!   (retention passed the node) is a gap reported on every served topic of the partition.
//! - **Loading a topic** (a node's first subscriber to it): the last
//!   [`LOAD_SCAN_RECORDS`] records of its partition are read into the hot copy
//!   ([`BrokerLog`]), which then answers for every position from the scan's start on.
//! - **Head checks:** every [`HEAD_CHECK`] each partition's end is asked for; an end before
//!   the offset reached means the partition was recreated or truncated: the link reconnects,
//!   which finds the new epoch and reloads the topics (their subscribers are reset).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::{Record, RecordAndOffset};
use tokio::sync::mpsc as channel;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::link::{InterestChanges, Link};
use super::task::HEAD_CHECK;
use super::{backoff, random_u64, BrokerLog, BrokerStats, IO_TIMEOUT};
use crate::broadcast::{Epoch, Mailboxes, Position, Publication};
use crate::protocol::OpCode;

/// The record header that marks a binary publication (value `binary`).
pub(crate) const OPCODE_HEADER: &str = "uringcast-opcode";
/// Records of a partition read back when a node loads a topic: the hot copy answers for
/// positions from there on, and a client further behind is "not recovered".
pub(crate) const LOAD_SCAN_RECORDS: i64 = 10_000;
/// Partitions of the Kafka topic when the link has to create it.
pub(crate) const CREATED_PARTITIONS: i32 = 1;
/// How long a fetch waits at the broker for new records.
const FETCH_WAIT_MS: i32 = 100;
/// How long a fetch of records known to be there (a load, an epoch) may wait: Tansu answers
/// a fetch that may not wait at all with nothing.
const QUICK_WAIT_MS: i32 = 50;
/// The least time between two fetches of one partition that both came back empty.
const MIN_EMPTY_FETCH: Duration = Duration::from_millis(20);
/// Fetches each partition's reader may have waiting for the task.
const READER_QUEUE: usize = 16;
/// Publishes produced per turn before the link looks at what arrived.
const BATCH: usize = 256;
/// A connection that stayed up this long resets the reconnection backoff.
const STABLE: Duration = Duration::from_secs(5);
/// Warnings, at most one per this.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How soon a topic whose load failed is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The Kafka link's task: the client, the partitions' read positions and the topics served.
pub(super) struct KafkaTask {
    hosts: Vec<String>,
    /// The Kafka topic (`--broker-prefix`).
    topic: String,
    link: Arc<Link>,
    hub: Arc<Mailboxes>,
    log: Arc<BrokerLog>,
    max_message_bytes: usize,
    /// Each partition's epoch and next offset to read, kept across reconnections.
    parts: Vec<Part>,
    /// Topics the node serves, as the link last heard.
    wanted: HashSet<Arc<str>>,
    /// Wanted topics whose history is loaded: their records are handed on.
    loaded: HashSet<Arc<str>>,
    /// The position of the last publication (or head) handed on, per loaded topic.
    last: HashMap<Arc<str>, Position>,
    retry_at: Option<tokio::time::Instant>,
    last_warning: Option<Instant>,
}

#[derive(Clone, Debug, Default)]
struct Part {
    /// `None` while the partition is empty (its epoch comes with its first record).
    epoch: Option<Epoch>,
    /// The next partition offset to read; `None` before the first connection.
    next: Option<i64>,
}

/// One connection: the client and a client per partition.
struct Session {
    _client: Client,
    partitions: Vec<Arc<PartitionClient>>,
}

/// What a partition's reader hands the task.
enum Fetched {
    Records {
        partition: usize,
        records: Vec<RecordAndOffset>,
    },
    /// The offset to read is no longer kept: what lay before `earliest` is lost.
    Lost {
        partition: usize,
        earliest: i64,
    },
    Failed(String),
}

impl KafkaTask {
    pub(super) fn new(
        hosts: Vec<String>,
        topic: String,
        link: Arc<Link>,
        hub: Arc<Mailboxes>,
        log: Arc<BrokerLog>,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            hosts,
            topic,
            link,
            hub,
            log,
            max_message_bytes,
            parts: Vec::new(),
            wanted: HashSet::new(),
            loaded: HashSet::new(),
            last: HashMap::new(),
            retry_at: None,
            last_warning: None,
        }
    }

    pub(super) async fn run(mut self, ready: mpsc::Sender<Result<(), String>>) {
        let stats = Arc::clone(&self.link.stats);
        let mut ready = Some(ready);
        let mut attempt = 0u32;
        let mut was_connected = false;
        while !self.link.stopping() {
            let connected = match tokio::time::timeout(IO_TIMEOUT, self.connect()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {IO_TIMEOUT:?}")),
            };
            match connected {
                Ok(session) => {
                    if was_connected {
                        BrokerStats::add(&stats.reconnects, 1);
                    }
                    info!(broker = %self.link.url, topic = %self.topic, "broker connected");
                    was_connected = true;
                    stats.connected.store(true, Ordering::Relaxed);
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Ok(()));
                    }
                    let since = Instant::now();
                    self.serve(&session).await;
                    if since.elapsed() >= STABLE {
                        attempt = 0;
                    }
                    stats.connected.store(false, Ordering::Relaxed);
                    if self.link.stopping() {
                        break;
                    }
                    self.warn(format_args!("broker connection lost; reconnecting"));
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

    /// Connects, finds (or creates) the Kafka topic and its partitions, and sets where each
    /// partition is read from: where the last connection stopped if the partition is the
    /// same (same epoch, not shorter), else its end, after which its topics load again.
    async fn connect(&mut self) -> Result<Session, String> {
        let client = ClientBuilder::new(self.hosts.clone())
            .client_id("uringcast")
            .backoff_config(rskafka::BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
                deadline: Some(IO_TIMEOUT),
            })
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let count = self.partition_count(&client).await?;
        let mut partitions = Vec::with_capacity(count);
        for index in 0..count {
            let partition = client
                .partition_client(
                    self.topic.clone(),
                    index as i32,
                    UnknownTopicHandling::Retry,
                )
                .await
                .map_err(|e| e.to_string())?;
            partitions.push(Arc::new(partition));
        }
        if self.parts.len() != count {
            // New partitions move topics to other partitions: every position so far is of
            // another epoch (the partition is part of it), and every topic loads again.
            if !self.parts.is_empty() {
                let topics: Vec<Arc<str>> = self.loaded.iter().cloned().collect();
                for topic in topics {
                    self.unload(&topic);
                }
            }
            self.parts = vec![Part::default(); count];
        }
        for (index, partition) in partitions.iter().enumerate() {
            let earliest = offset(partition, OffsetAt::Earliest).await?;
            let latest = offset(partition, OffsetAt::Latest).await?;
            let epoch = epoch_of(partition, index, latest).await?;
            let part = &mut self.parts[index];
            let same = !changed(part.epoch, epoch);
            match part.next {
                Some(next) if same => {
                    if part.epoch.is_none() {
                        part.epoch = epoch;
                    }
                    if next < earliest {
                        self.lost(index, earliest);
                    } else if next < latest {
                        // Produced while this node was away: read now, in order.
                        self.log.stats.gaps_repaired.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {
                    let first = part.next.is_none();
                    *part = Part {
                        epoch,
                        next: Some(latest),
                    };
                    if !first {
                        self.recreated(index, count);
                    }
                }
            }
        }
        Ok(Session {
            _client: client,
            partitions,
        })
    }

    /// The number of partitions of the Kafka topic, which is created if missing.
    async fn partition_count(&self, client: &Client) -> Result<usize, String> {
        let find = |topics: Vec<rskafka::topic::Topic>| {
            topics
                .into_iter()
                .find(|t| t.name == self.topic)
                .map(|t| t.partitions.len())
        };
        let topics = client.list_topics().await.map_err(|e| e.to_string())?;
        if let Some(count) = find(topics).filter(|&n| n > 0) {
            return Ok(count);
        }
        let controller = client.controller_client().map_err(|e| e.to_string())?;
        if let Err(error) = controller
            .create_topic(self.topic.clone(), CREATED_PARTITIONS, 1, 5_000)
            .await
        {
            debug!(%error, topic = %self.topic, "could not create the Kafka topic");
        }
        let topics = client.list_topics().await.map_err(|e| e.to_string())?;
        find(topics)
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("Kafka topic {:?} missing and not created", self.topic))
    }

    /// Serves one connection until it is lost or the link stops.
    async fn serve(&mut self, session: &Session) {
        let (sender, mut inbound) = channel::channel(READER_QUEUE);
        let mut readers = JoinSet::new();
        let fetch_bytes = self.fetch_bytes();
        for (index, partition) in session.partitions.iter().enumerate() {
            let next = self.parts[index].next.unwrap_or(0);
            readers.spawn(read_partition(
                Arc::clone(partition),
                index,
                next,
                sender.clone(),
                fetch_bytes,
            ));
        }
        drop(sender);
        let link = Arc::clone(&self.link);
        link.interest_changed.store(true, Ordering::Release);
        let mut check_at = tokio::time::Instant::now() + HEAD_CHECK;
        loop {
            if !self.publish(session).await || self.link.stopping() {
                break;
            }
            if self.link.interest_changed.load(Ordering::Acquire) {
                self.follow_interest();
            }
            let due = self
                .retry_at
                .is_none_or(|at| at <= tokio::time::Instant::now());
            if due && self.wanted.len() > self.loaded.len() && !self.load_pending(session).await {
                break;
            }
            if !self.link.outbound.is_empty() {
                // More to publish: look at what arrived without waiting, then go on.
                match inbound.try_recv() {
                    Ok(fetched) => {
                        if !self.take(fetched) {
                            break;
                        }
                    }
                    Err(channel::error::TryRecvError::Empty) => {}
                    Err(channel::error::TryRecvError::Disconnected) => break,
                }
                continue;
            }
            let retry = self
                .retry_at
                .filter(|_| self.wanted.len() > self.loaded.len());
            tokio::select! {
                fetched = inbound.recv() => match fetched {
                    Some(fetched) => {
                        if !self.take(fetched) {
                            break;
                        }
                    }
                    None => break,
                },
                () = link.wake.notified() => {}
                () = sleep_until(retry) => {}
                () = tokio::time::sleep_until(check_at) => {
                    if !self.check_heads(session).await {
                        break;
                    }
                    check_at = tokio::time::Instant::now() + HEAD_CHECK;
                }
            }
        }
        readers.abort_all();
        if self.link.stopping() {
            // What is still queued goes out before the link stops.
            let _ = self.publish(session).await;
        }
    }

    /// The largest fetch: a record of the largest message with room for its batch.
    fn fetch_bytes(&self) -> i32 {
        i32::try_from(self.max_message_bytes.saturating_add(64 << 10))
            .unwrap_or(i32::MAX)
            .max(1 << 20)
    }

    /// Hands what a reader fetched to the workers; `false` when the connection is lost.
    fn take(&mut self, fetched: Fetched) -> bool {
        match fetched {
            Fetched::Records { partition, records } => {
                for record in records {
                    self.hand_on(partition, record);
                }
                true
            }
            Fetched::Lost {
                partition,
                earliest,
            } => {
                self.lost(partition, earliest);
                true
            }
            Fetched::Failed(message) => {
                self.warn(format_args!("broker fetch failed: {message}"));
                false
            }
        }
    }

    /// One record read from `partition`, in order: handed on if its topic is served here.
    fn hand_on(&mut self, partition: usize, record: RecordAndOffset) {
        let stats = Arc::clone(&self.link.stats);
        let Some(part) = self.parts.get_mut(partition) else {
            return;
        };
        if part.next.is_some_and(|next| record.offset < next) {
            return;
        }
        part.next = Some(record.offset + 1);
        if record.offset == 0 {
            part.epoch = Some(epoch_at(partition, &record.record));
        }
        let Some(epoch) = part.epoch else {
            return;
        };
        let Some(name) = record
            .record
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
        else {
            BrokerStats::add(&stats.malformed, 1);
            return;
        };
        let Some(topic) = self.loaded.get(name).cloned() else {
            return;
        };
        let payload = record.record.value.clone().unwrap_or_default();
        if payload.len() > self.max_message_bytes {
            BrokerStats::add(&stats.malformed, 1);
            return;
        }
        let position = Position {
            epoch,
            offset: record.offset as u64 + 1,
        };
        let predecessor = match self.last.get(&topic) {
            Some(last) if last.epoch == epoch => {
                if last.offset >= position.offset {
                    BrokerStats::add(&stats.repeats, 1);
                    return;
                }
                last.offset
            }
            Some(_) => {
                // Another partition now: what the node holds of the topic says nothing of
                // this one, so the topic loads again (this record with it).
                self.unload(&topic);
                return;
            }
            // The partition was empty when the topic loaded and is read from its start:
            // nothing of the topic came before this record.
            None => 0,
        };
        let opcode = opcode_of(&record.record, &payload);
        let publication = Publication::new(
            Arc::clone(&topic),
            opcode,
            Bytes::from(payload),
            Some(position),
        );
        publication.follow(predecessor);
        self.log.record(&publication);
        self.last.insert(topic, position);
        BrokerStats::add(&stats.received, 1);
        self.hub.post(&publication, None);
    }

    /// What lay before `earliest` in `partition` is gone: every served topic there is told
    /// (its subscribers are reset), since any of them may have had records in it.
    fn lost(&mut self, partition: usize, earliest: i64) {
        let count = self.parts.len();
        let Some(part) = self.parts.get_mut(partition) else {
            return;
        };
        part.next = Some(earliest);
        let Some(epoch) = part.epoch else {
            return;
        };
        let head = Position {
            epoch,
            offset: earliest as u64,
        };
        let topics: Vec<Arc<str>> = self
            .loaded
            .iter()
            .filter(|t| partition_for(t.as_bytes(), count) == partition)
            .cloned()
            .collect();
        for topic in topics {
            if self
                .last
                .get(&topic)
                .is_some_and(|l| l.epoch == epoch && l.offset >= head.offset)
            {
                continue;
            }
            self.log.stats.gaps_reported.fetch_add(1, Ordering::Relaxed);
            self.log.mark_head(&topic, head);
            self.last.insert(Arc::clone(&topic), head);
            self.hub.post(&Publication::head_only(topic, head), None);
        }
    }

    /// `partition` is another one now (a new epoch, or shorter than what was read): its
    /// topics load again, and their subscribers are told of the new head.
    fn recreated(&mut self, partition: usize, count: usize) {
        let topics: Vec<Arc<str>> = self
            .loaded
            .iter()
            .filter(|t| partition_for(t.as_bytes(), count) == partition)
            .cloned()
            .collect();
        for topic in topics {
            self.unload(&topic);
        }
    }

    /// A served topic's copy no longer holds: it is dropped, counted as a gap reported, and
    /// loaded again (its subscribers are brought to the new head, or reset).
    fn unload(&mut self, topic: &Arc<str>) {
        self.log.stats.gaps_reported.fetch_add(1, Ordering::Relaxed);
        self.loaded.remove(topic);
        self.last.remove(topic);
        self.log.forget(topic);
        self.set_subscribed_gauge();
    }

    /// Takes the node's interest changes: topics dropped are forgotten, new ones wait to load.
    fn follow_interest(&mut self) {
        let changes = match self.link.take_changes() {
            InterestChanges::Some(changes) => changes,
            InterestChanges::All(all) => {
                let gone: Vec<(Arc<str>, bool)> = self
                    .wanted
                    .iter()
                    .filter(|t| !all.contains(*t))
                    .map(|t| (Arc::clone(t), false))
                    .collect();
                gone.into_iter()
                    .chain(all.into_iter().map(|t| (t, true)))
                    .collect()
            }
        };
        for (topic, held) in changes {
            if held {
                self.wanted.insert(topic);
            } else {
                self.wanted.remove(&topic);
                self.loaded.remove(&topic);
                self.last.remove(&topic);
                self.log.forget(&topic);
            }
        }
        self.set_subscribed_gauge();
    }

    /// Loads the wanted topics not loaded yet; `false` when the broker stopped answering.
    async fn load_pending(&mut self, session: &Session) -> bool {
        self.retry_at = None;
        let pending: Vec<Arc<str>> = self
            .wanted
            .iter()
            .filter(|t| !self.loaded.contains(*t))
            .cloned()
            .collect();
        for topic in pending {
            match tokio::time::timeout(IO_TIMEOUT, self.load(session, &topic)).await {
                Ok(Ok(())) => {}
                Ok(Err(message)) => {
                    self.retry_at = Some(tokio::time::Instant::now() + RETRY);
                    self.warn(format_args!("broker history read failed: {message}"));
                }
                Err(_) => {
                    self.warn(format_args!("broker history read: no answer"));
                    return false;
                }
            }
        }
        self.set_subscribed_gauge();
        true
    }

    /// Reads the last [`LOAD_SCAN_RECORDS`] records of `topic`'s partition, up to its end
    /// now, into the hot copy, and tells the workers the topic's head.
    async fn load(&mut self, session: &Session, topic: &Arc<str>) -> Result<(), String> {
        let count = session.partitions.len();
        let index = partition_for(topic.as_bytes(), count);
        let partition = &session.partitions[index];
        let earliest = offset(partition, OffsetAt::Earliest).await?;
        // Up to the partition's end, or past it to where the reader stands: records of the
        // topic the reader passed before the topic was loaded are in the scan.
        let end = offset(partition, OffsetAt::Latest)
            .await?
            .max(self.parts[index].next.unwrap_or(0));
        let start = end.saturating_sub(LOAD_SCAN_RECORDS).max(earliest);
        let mut found: Vec<RecordAndOffset> = Vec::new();
        let mut next = start;
        let mut first_record = None;
        while next < end {
            let records = fetch(partition, next, self.fetch_bytes(), QUICK_WAIT_MS)
                .await
                .map_err(|e| e.to_string())?;
            let before = next;
            for record in records {
                if record.offset < next || record.offset >= end {
                    continue;
                }
                next = record.offset + 1;
                if record.offset == 0 {
                    first_record = Some(record.record.clone());
                }
                if record.record.key.as_deref() == Some(topic.as_bytes()) {
                    found.push(record);
                }
            }
            if next == before {
                break;
            }
        }
        let part = &mut self.parts[index];
        if let Some(first) = first_record {
            part.epoch = Some(epoch_at(index, &first));
        }
        let Some(epoch) = part.epoch else {
            // An empty partition: its first record brings the epoch, and nothing precedes it.
            self.loaded.insert(Arc::clone(topic));
            return Ok(());
        };
        let keep = found.len().saturating_sub(self.log.entries_per_topic());
        let from = match keep.checked_sub(1) {
            Some(dropped) => found[dropped].offset as u64 + 1,
            None => start as u64,
        };
        // The head is the topic's last record, or the scan's start if it has none there: a
        // position this node can vouch for either way.
        let head = Position {
            epoch,
            offset: found.last().map_or(start as u64, |r| r.offset as u64 + 1),
        };
        let mut predecessor = from;
        let mut publications = Vec::new();
        for record in found.into_iter().skip(keep) {
            let payload = record.record.value.clone().unwrap_or_default();
            let offset = record.offset as u64 + 1;
            if payload.len() <= self.max_message_bytes {
                let opcode = opcode_of(&record.record, &payload);
                let publication = Publication::new(
                    Arc::clone(topic),
                    opcode,
                    Bytes::from(payload),
                    Some(Position { epoch, offset }),
                );
                publication.follow(predecessor);
                publications.push(publication);
            }
            predecessor = offset;
        }
        self.log.load(topic, head, publications);
        self.last.insert(Arc::clone(topic), head);
        self.loaded.insert(Arc::clone(topic));
        self.hub
            .post(&Publication::head_only(Arc::clone(topic), head), None);
        Ok(())
    }

    /// Produces what the workers queued, each record to its topic's partition; `false` when
    /// the broker stopped answering.
    async fn publish(&mut self, session: &Session) -> bool {
        self.forget_drops();
        let count = session.partitions.len();
        let mut batches: HashMap<usize, Vec<Record>> = HashMap::new();
        let mut taken = 0;
        while taken < BATCH {
            let Some(publication) = self.link.take() else {
                break;
            };
            taken += 1;
            let topic = publication.topic();
            let mut headers = std::collections::BTreeMap::new();
            if publication.opcode() == OpCode::Binary {
                headers.insert(OPCODE_HEADER.to_owned(), b"binary".to_vec());
            }
            batches
                .entry(partition_for(topic.as_bytes(), count))
                .or_default()
                .push(Record {
                    key: Some(topic.as_bytes().to_vec()),
                    value: Some(publication.published().to_vec()),
                    headers,
                    timestamp: now(),
                });
        }
        let stats = Arc::clone(&self.link.stats);
        for (index, records) in batches {
            let n = records.len() as u64;
            let produce = session.partitions[index].produce(records, Compression::NoCompression);
            match tokio::time::timeout(IO_TIMEOUT, produce).await {
                Ok(Ok(_)) => BrokerStats::add(&stats.published, n),
                Ok(Err(error)) => {
                    BrokerStats::add(&stats.publish_failures, n);
                    self.warn(format_args!("broker refused a publish: {error}"));
                    if matches!(error, ClientError::Connection(_) | ClientError::Request(_)) {
                        return false;
                    }
                }
                Err(_) => {
                    BrokerStats::add(&stats.publish_failures, n);
                    return false;
                }
            }
        }
        true
    }

    /// Publishes dropped at a full queue: with a log, nothing delivered them, and no
    /// sequence numbers are kept, so there is nothing to do but forget them (they are counted
    /// in `broker_publish_drops_total`).
    fn forget_drops(&self) {
        if self.link.any_dropped.swap(false, Ordering::AcqRel) {
            if let Ok(mut dropped) = self.link.dropped.lock() {
                dropped.clear();
            }
        }
    }

    /// Asks each partition's end and epoch: another epoch (or an empty partition where
    /// records were read) means the partition was recreated. Returns `false` (reconnect,
    /// which reloads its topics) then, or when the broker stopped answering.
    ///
    /// An end before the offset reached is not taken as a sign: Tansu 0.6 reports the end of
    /// a partition as one past the first offset of its last batch.
    async fn check_heads(&mut self, session: &Session) -> bool {
        self.log
            .stats
            .head_checks
            .fetch_add(self.loaded.len() as u64, Ordering::Relaxed);
        for (index, partition) in session.partitions.iter().enumerate() {
            let check = async {
                let latest = offset(partition, OffsetAt::Latest).await?;
                epoch_of(partition, index, latest).await
            };
            let epoch = match tokio::time::timeout(IO_TIMEOUT, check).await {
                Ok(Ok(epoch)) => epoch,
                Ok(Err(message)) => {
                    self.warn(format_args!("broker head check failed: {message}"));
                    return false;
                }
                Err(_) => return false,
            };
            if changed(self.parts[index].epoch, epoch) {
                let message = format!(
                    "Kafka partition {index} of {:?} is another one now (epoch {:?}, was {:?})",
                    self.topic, epoch, self.parts[index].epoch
                );
                self.warn(format_args!("{message}"));
                return false;
            }
        }
        true
    }

    /// Waits out a reconnection delay: publishes made meanwhile are counted as failed.
    async fn wait_out(&mut self, delay: Duration) {
        let until = tokio::time::Instant::now() + delay;
        loop {
            while self.link.take().is_some() {
                BrokerStats::add(&self.link.stats.publish_failures, 1);
            }
            self.forget_drops();
            if self.link.stopping() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => return,
                () = self.link.wake.notified() => {}
            }
        }
    }

    fn set_subscribed_gauge(&self) {
        self.link.set_subscribed(self.loaded.len() as u64);
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

/// Reads one partition from `next` on, in order, until the task stops listening or a fetch
/// fails.
async fn read_partition(
    partition: Arc<PartitionClient>,
    index: usize,
    mut next: i64,
    sender: channel::Sender<Fetched>,
    fetch_bytes: i32,
) {
    let wait = IO_TIMEOUT + Duration::from_millis(FETCH_WAIT_MS as u64);
    loop {
        let asked = tokio::time::Instant::now();
        let fetch = fetch(&partition, next, fetch_bytes, FETCH_WAIT_MS);
        let fetched = match tokio::time::timeout(wait, fetch).await {
            Ok(Ok(records)) => {
                let records: Vec<RecordAndOffset> =
                    records.into_iter().filter(|r| r.offset >= next).collect();
                if let Some(last) = records.last() {
                    next = last.offset + 1;
                }
                if records.is_empty() {
                    // A broker that answers an empty fetch at once (not waiting the
                    // `max_wait` asked) is not asked again at once.
                    tokio::time::sleep_until(asked + MIN_EMPTY_FETCH).await;
                    continue;
                }
                Fetched::Records {
                    partition: index,
                    records,
                }
            }
            Ok(Err(error)) if is_out_of_range(&error) => {
                match offset(&partition, OffsetAt::Earliest).await {
                    Ok(earliest) if earliest > next => {
                        next = earliest;
                        Fetched::Lost {
                            partition: index,
                            earliest,
                        }
                    }
                    Ok(_) => Fetched::Failed(format!(
                        "partition {index}: offset {next} out of range (recreated or truncated)"
                    )),
                    Err(message) => Fetched::Failed(message),
                }
            }
            Ok(Err(error)) => Fetched::Failed(format!("partition {index}: {error}")),
            Err(_) => Fetched::Failed(format!("partition {index}: no answer")),
        };
        let failed = matches!(fetched, Fetched::Failed(_));
        if sender.send(fetched).await.is_err() || failed {
            return;
        }
    }
}

fn is_out_of_range(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::ServerError {
            protocol_error: ProtocolError::OffsetOutOfRange,
            ..
        }
    )
}

async fn offset(partition: &PartitionClient, at: OffsetAt) -> Result<i64, String> {
    partition.get_offset(at).await.map_err(|e| e.to_string())
}

/// Records of `partition` from `offset` on, at most about `bytes`, waiting up to `wait_ms`
/// for some. An answer that names no topic at all is an empty fetch: Tansu answers so when
/// it has nothing to give (Kafka names the topic, with no records).
async fn fetch(
    partition: &PartitionClient,
    offset: i64,
    bytes: i32,
    wait_ms: i32,
) -> Result<Vec<RecordAndOffset>, ClientError> {
    match partition.fetch_records(offset, 1..bytes, wait_ms).await {
        Ok((records, _high_watermark)) => Ok(records),
        Err(ClientError::InvalidResponse(message))
            if message == "Expected a single topic in response, got 0" =>
        {
            Ok(Vec::new())
        }
        Err(error) => Err(error),
    }
}

/// The epoch of partition `index`, which ends at `latest`: from its record at offset 0 if it
/// still has it, `None` if it is empty.
async fn epoch_of(
    partition: &PartitionClient,
    index: usize,
    latest: i64,
) -> Result<Option<Epoch>, String> {
    if latest == 0 {
        return Ok(None);
    }
    match fetch(partition, 0, 1 << 20, QUICK_WAIT_MS).await {
        Ok(records) => match records.first() {
            Some(first) if first.offset == 0 => Ok(Some(epoch_at(index, &first.record))),
            _ => Ok(Some(retained_epoch(index))),
        },
        Err(error) if is_out_of_range(&error) => Ok(Some(retained_epoch(index))),
        Err(error) => Err(error.to_string()),
    }
}

/// Whether a partition whose epoch was `old` is another one now that it is `new`: a first
/// record of another time, or no record at all. An epoch that only lost its first record to
/// retention (`k<index>-x`) is the same partition.
fn changed(old: Option<Epoch>, new: Option<Epoch>) -> bool {
    match (old, new) {
        (Some(old), Some(new)) => old != new && !new.as_str().ends_with("-x"),
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// `k<index>-<T>`: `T` is the base-36 timestamp (ms) of the partition's first record.
fn epoch_at(index: usize, first: &Record) -> Epoch {
    let millis = u64::try_from(first.timestamp.timestamp_millis()).unwrap_or(0);
    let text = format!("k{index}-{}", base36(millis));
    text.parse().unwrap_or_else(|_| retained_epoch(index))
}

/// The epoch of a partition whose first record is gone: `k<index>-x`.
fn retained_epoch(index: usize) -> Epoch {
    format!("k{}-x", index % 100_000)
        .parse()
        .unwrap_or(Epoch::UNKNOWN)
}

/// The time now, as a record's timestamp (rskafka's chrono comes without its clock).
fn now() -> rskafka::chrono::DateTime<rskafka::chrono::Utc> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    rskafka::chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// A record's opcode: binary if its header says so, else text if the value is UTF-8.
fn opcode_of(record: &Record, payload: &[u8]) -> OpCode {
    let binary = record
        .headers
        .get(OPCODE_HEADER)
        .is_some_and(|v| v.as_slice() == b"binary");
    if binary || std::str::from_utf8(payload).is_err() {
        OpCode::Binary
    } else {
        OpCode::Text
    }
}

/// The partition Kafka's default partitioner gives a record with `key` among `count`:
/// `murmur2(key) & 0x7fffffff % count`, as the Java client and kafka-python compute it. A
/// backend that produces with a client of its own and picks partitions itself must pick
/// this one for a uringcast topic's records.
pub fn partition_for(key: &[u8], count: usize) -> usize {
    if count == 0 {
        return 0;
    }
    (murmur2(key) & 0x7fff_ffff) as usize % count
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed 0x9747b28c.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
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

    #[test]
    fn murmur2_matches_kafkas_partitioner() {
        // Values of Kafka's `Utils.murmur2`, as signed Java ints (checked against
        // kafka-python's `murmur2`, which Kafka's own tests pin).
        for (key, java) in [
            (&b"21"[..], -973_932_308_i32),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"", 275_646_681),
        ] {
            assert_eq!(murmur2(key) as i32, java, "{:?}", std::str::from_utf8(key));
        }
        assert_eq!(partition_for(b"feed", 3), 1);
        assert_eq!(partition_for(b"room1", 3), 0);
        assert_eq!(partition_for(b"anything", 1), 0);
    }

    #[test]
    fn epochs_name_the_partition_and_its_first_record() {
        let record = Record {
            key: None,
            value: None,
            headers: Default::default(),
            timestamp: rskafka::chrono::DateTime::from_timestamp_millis(1_796_612_181_285)
                .expect("a valid time"),
        };
        let epoch = epoch_at(3, &record);
        assert_eq!(epoch.as_str(), format!("k3-{}", base36(1_796_612_181_285)));
        assert!(epoch.as_str().len() <= crate::broadcast::publication::MAX_EPOCH_BYTES);
        assert_eq!(retained_epoch(12).as_str(), "k12-x");
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }

    #[test]
    fn a_partition_is_another_one_only_with_another_first_record_or_none() {
        let epoch = |text: &str| Some(text.parse::<Epoch>().expect("a valid epoch"));
        assert!(!changed(epoch("k0-abc"), epoch("k0-abc")));
        assert!(changed(epoch("k0-abc"), epoch("k0-abd")), "recreated");
        assert!(changed(epoch("k0-abc"), None), "emptied");
        assert!(!changed(epoch("k0-abc"), epoch("k0-x")), "offset 0 expired");
        assert!(
            changed(epoch("k0-x"), epoch("k0-abc")),
            "recreated after retention"
        );
        assert!(!changed(None, epoch("k0-abc")), "first records");
        assert!(!changed(None, None));
    }

    #[test]
    fn a_records_opcode_comes_from_its_header_or_its_bytes() {
        let mut record = Record {
            key: None,
            value: None,
            headers: Default::default(),
            timestamp: now(),
        };
        assert_eq!(opcode_of(&record, b"hi"), OpCode::Text);
        assert_eq!(opcode_of(&record, &[0xff, 0xfe]), OpCode::Binary);
        record
            .headers
            .insert(OPCODE_HEADER.to_owned(), b"binary".to_vec());
        assert_eq!(opcode_of(&record, b"hi"), OpCode::Binary);
    }
}
