//! The topics served: following the node's interest, loading a topic's history into the hot
//! copy, handing records on in order with their predecessor, and resets when the partition
//! lost what a topic had.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use rskafka::client::partition::OffsetAt;
use rskafka::record::RecordAndOffset;

use super::epoch::epoch_at;
use super::reader::{fetch, offset, QUICK_WAIT_MS};
use super::record::{except_of, opcode_of, partition_for};
use super::{KafkaTask, Session, LOAD_SCAN_RECORDS, RETRY};
use crate::broadcast::{Position, Publication};
use crate::broker::link::InterestChanges;
use crate::broker::{BrokerStats, IO_TIMEOUT};

impl KafkaTask {
    /// One record read from `partition`, in order: handed on if its topic is served here.
    pub(super) fn hand_on(&mut self, partition: usize, record: RecordAndOffset) {
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
        if partition_for(name.as_bytes(), self.parts.len()) != partition {
            self.misplaced(name, partition);
            return;
        }
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
                    tracing::trace!(%topic, ?position, ?last, "repeat");
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
        if self.owed.remove(&topic) {
            let head = Position {
                offset: predecessor,
                ..position
            };
            self.tell_loss(Arc::clone(&topic), head);
        }
        let opcode = opcode_of(&record.record, &payload);
        // Stamped with its position here, for every worker (Pusher's `offset` and `epoch`).
        let publication = Publication::stamped(
            Arc::clone(&topic),
            opcode,
            Bytes::from(payload),
            Some(position),
            self.link.stamp(),
        );
        publication.follow(predecessor);
        if let Some(peer) = except_of(&record.record) {
            publication.exclude(peer);
        }
        self.log.record(&publication);
        self.last.insert(topic, position);
        BrokerStats::add(&stats.received, 1);
        self.hub.post(&publication, None);
    }

    /// A record keyed `name` in `partition`, which is not the topic's partition by the
    /// count this node reads: a node that counted the partitions otherwise produced it (the
    /// Kafka topic was made again with another count, or partitions were added, under
    /// running nodes), or a backend whose client partitions otherwise. It has no place in
    /// the topic's positions here, so it cannot be handed on. Every one is counted; if the
    /// topic is served, its subscribers are told they missed something, and the hot copy
    /// answers "not recovered" to a client that stood before it.
    pub(super) fn misplaced(&mut self, name: &str, partition: usize) {
        BrokerStats::add(&self.link.stats.misplaced, 1);
        let message = format!(
            "a record keyed {name:?} in partition {partition} of {:?}, not the topic's by the {} partitions read: its subscribers here are told they missed it",
            self.topic,
            self.parts.len()
        );
        self.warn(format_args!("{message}"));
        let Some(topic) = self.wanted.get(name).cloned() else {
            return;
        };
        if self.loaded.contains(&topic) {
            // Told once the batch is handed on (see `tell_misplaced`).
            self.misplaced.insert(topic);
        } else {
            // Told when the topic has loaded (see `load`).
            self.owed.insert(topic);
        }
    }

    /// Tells each topic that lost records to another partition in the batch just handed on,
    /// once: its subscribers are reset where the topic stands now (its last position, or,
    /// with nothing of it read yet, wherever each worker's cursor is), and the hot copy
    /// answers "not recovered" to a client that stood at or before it.
    pub(super) fn tell_misplaced(&mut self) {
        for topic in std::mem::take(&mut self.misplaced) {
            if !self.loaded.contains(&topic) {
                // Unloaded within the batch: told when it has loaded again, if still served.
                if self.wanted.contains(&topic) {
                    self.owed.insert(topic);
                }
                continue;
            }
            let head = self.last.get(&topic).copied().unwrap_or(Position::UNKNOWN);
            self.tell_loss(topic, head);
        }
    }

    /// Tells the workers that `topic` lost a publication right after `head`, and marks it in
    /// the hot copy; if a worker could not take the notice (a full mailbox), it is owed to the
    /// topic's next record.
    fn tell_loss(&mut self, topic: Arc<str>, head: Position) {
        if !head.epoch.is_unknown() {
            self.log.mark_loss(&topic, head);
        }
        self.log.stats.gaps_reported.fetch_add(1, Ordering::Relaxed);
        let notice = Publication::gap_at(Arc::clone(&topic), head);
        if self.hub.post(&notice, None) < self.hub.workers() {
            self.owed.insert(topic);
        }
    }

    /// What lay before `earliest` in `partition` is gone: every served topic there is told
    /// (its subscribers are reset), since any of them may have had records in it.
    pub(super) fn lost(&mut self, partition: usize, earliest: i64) {
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
        tracing::debug!(partition, earliest, "partition lost what lay before");
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
    pub(super) fn recreated(&mut self, partition: usize, count: usize) {
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
    pub(super) fn unload(&mut self, topic: &Arc<str>) {
        tracing::debug!(%topic, "topic unloaded");
        self.log.stats.gaps_reported.fetch_add(1, Ordering::Relaxed);
        self.loaded.remove(topic);
        self.last.remove(topic);
        self.log.forget(topic);
        self.set_subscribed_gauge();
    }

    /// Takes the node's interest changes: topics dropped are forgotten, new ones wait to load.
    pub(super) fn follow_interest(&mut self) {
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
            tracing::debug!(%topic, held, "interest");
            if held {
                self.wanted.insert(topic);
            } else {
                self.wanted.remove(&topic);
                self.owed.remove(&topic);
                self.loaded.remove(&topic);
                self.last.remove(&topic);
                self.log.forget(&topic);
            }
        }
        self.set_subscribed_gauge();
    }

    /// Loads the wanted topics not loaded yet; `false` when the broker stopped answering.
    pub(super) async fn load_pending(&mut self, session: &Session) -> bool {
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
        if next < end {
            // Cut short (Tansu may answer a fetch with nothing even when it has records): a
            // head taken from what was found would hide the rest, which the reader may
            // already have passed. The load is tried again; the rest is in the next scan.
            return Err(format!(
                "the scan of partition {index} for {topic:?} stopped at offset {next} of {end}"
            ));
        }
        let part = &mut self.parts[index];
        if let Some(first) = first_record {
            part.epoch = Some(epoch_at(index, &first));
        }
        let Some(epoch) = part.epoch else {
            // An empty partition: its first record brings the epoch, and nothing precedes it.
            self.loaded.insert(Arc::clone(topic));
            if self.owed.remove(topic) {
                self.tell_loss(Arc::clone(topic), Position::UNKNOWN);
            }
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
                let publication = Publication::stamped(
                    Arc::clone(topic),
                    opcode,
                    Bytes::from(payload),
                    Some(Position { epoch, offset }),
                    self.link.stamp(),
                );
                publication.follow(predecessor);
                if let Some(peer) = except_of(&record.record) {
                    publication.exclude(peer);
                }
                publications.push(publication);
            }
            predecessor = offset;
        }
        tracing::debug!(%topic, start, end, ?head, kept = publications.len(), "topic loaded");
        self.log.load(topic, head, publications);
        self.last.insert(Arc::clone(topic), head);
        self.loaded.insert(Arc::clone(topic));
        self.hub
            .post(&Publication::head_only(Arc::clone(topic), head), None);
        if self.owed.remove(topic) {
            self.tell_loss(Arc::clone(topic), head);
        }
        Ok(())
    }
}
