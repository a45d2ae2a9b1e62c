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

mod connection;
mod continuity;
mod epoch;
mod produce;
mod reader;
mod record;
mod topics;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rskafka::client::partition::PartitionClient;
use rskafka::client::Client;
use tokio::sync::mpsc as channel;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use self::continuity::Seen;
use self::reader::{read_partition, Fetched, READER_QUEUE};
pub use self::record::partition_for;
use super::link::Link;
use super::reconnect::{sleep_until, Reconnection, Warnings};
use super::task::HEAD_CHECK;
use super::{BrokerLog, BrokerStats};
use crate::broadcast::{Epoch, Mailboxes, Position};

/// Records of a partition read back when a node loads a topic: the hot copy answers for
/// positions from there on, and a client further behind is "not recovered".
pub(crate) const LOAD_SCAN_RECORDS: i64 = 10_000;
/// Partitions of the Kafka topic when the link has to create it.
pub(crate) const CREATED_PARTITIONS: i32 = 1;
/// How long a connection may take: the client, the metadata and a few requests per
/// partition, some after others.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// Wanted topics that lost a record this node could not hand on (see `misplaced`) before
    /// their subscribers could be told: told at the topic's load or next record.
    owed: HashSet<Arc<str>>,
    /// Loaded topics that lost a record to another partition in the batch being handed on:
    /// told once when the batch is done, however many of its records were misplaced.
    misplaced: HashSet<Arc<str>>,
    retry_at: Option<tokio::time::Instant>,
    warnings: Warnings,
    /// A partition was found replaced or recreated: the connection is fine, and the next one
    /// is made at once, with no publish dropped meanwhile.
    resync: bool,
}

#[derive(Clone, Debug, Default)]
struct Part {
    /// `None` while the partition is empty (its epoch comes with its first record).
    epoch: Option<Epoch>,
    /// The next partition offset to read; `None` before the first connection.
    next: Option<i64>,
    /// The last record read, which must still be there (see `continuity`).
    seen: Option<Seen>,
    /// Found to be another log than the one read (a record read is no longer there): the
    /// next connection takes it as a new partition, whatever its epoch says.
    replaced: bool,
}

/// One connection: the client and a client per partition.
struct Session {
    client: Client,
    partitions: Vec<Arc<PartitionClient>>,
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
            owed: HashSet::new(),
            misplaced: HashSet::new(),
            retry_at: None,
            warnings: Warnings::default(),
            resync: false,
        }
    }

    pub(super) async fn run(mut self, ready: mpsc::Sender<Result<(), String>>) {
        let mut reconnection = Reconnection::new(Arc::clone(&self.link.stats), ready);
        while !self.link.stopping() {
            let connected = match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
            };
            match connected {
                Ok(session) => {
                    info!(broker = %self.link.url, topic = %self.topic, partitions = session.partitions.len(), "broker connected");
                    reconnection.connected();
                    self.serve(&session).await;
                    reconnection.lost();
                    if self.link.stopping() {
                        break;
                    }
                    if std::mem::take(&mut self.resync) {
                        // Not a lost broker: read the partitions anew at once, and keep
                        // what the workers queued meanwhile.
                        continue;
                    }
                    self.warn(format_args!("broker connection lost; reconnecting"));
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
                self.parts[index].seen,
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
                // Publishing without pause must not hold the head checks off.
                if tokio::time::Instant::now() >= check_at {
                    if !self.check_heads(session).await {
                        break;
                    }
                    check_at = tokio::time::Instant::now() + HEAD_CHECK;
                }
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
                if let (Some(part), Some(last)) = (self.parts.get_mut(partition), records.last()) {
                    part.seen = Some(Seen::of(last));
                }
                for record in records {
                    self.hand_on(partition, record);
                }
                self.tell_misplaced();
                true
            }
            Fetched::Lost {
                partition,
                earliest,
            } => {
                self.lost(partition, earliest);
                true
            }
            Fetched::Replaced { partition } => {
                let message = format!(
                    "Kafka partition {partition} of {:?} is another log now (a record read is gone); resynchronising",
                    self.topic
                );
                self.warn(format_args!("{message}"));
                if let Some(part) = self.parts.get_mut(partition) {
                    part.replaced = true;
                }
                self.resync = true;
                false
            }
            Fetched::Failed(message) => {
                self.warn(format_args!("broker fetch failed: {message}"));
                false
            }
        }
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

    /// Logs a warning, at most one per 10 s (the rest at debug; [`Warnings`]).
    fn warn(&mut self, message: std::fmt::Arguments<'_>) {
        if self.warnings.due() {
            warn!(broker = %self.link.url, "{message}");
        } else {
            debug!(broker = %self.link.url, "{message}");
        }
    }
}
