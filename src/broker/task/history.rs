//! The link task's history side: a publication from the broker handed to the workers in its
//! stream's order, gaps read back from the broker's stream or told to the workers, a topic's
//! tail loaded into the hot copy, and the periodic check of each live topic's head.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Task;
use crate::broadcast::{Position, Publication};
use crate::broker::{wire, Broker, BrokerStats, IO_TIMEOUT, SUBSCRIBE_BATCH};

impl<B: Broker> Task<B> {
    /// With history: hands a publication from the broker to the workers in its stream's
    /// order. One already handed on is dropped; one after a gap is preceded by what the gap
    /// held, read from the broker's stream, or, if the stream no longer has it, goes on after
    /// a hole in the hot copy, from which each worker resets its subscribers.
    pub(super) async fn accept(&mut self, publication: Arc<Publication>) {
        let topic = Arc::clone(publication.topic());
        if let (Some(position), Some(last)) =
            (publication.position(), self.last.get(&topic).copied())
        {
            if last.epoch == position.epoch {
                if position.offset <= last.offset {
                    BrokerStats::add(&self.link.stats.repeats, 1);
                    return;
                }
                let previous = publication
                    .previous()
                    .unwrap_or(position.offset.saturating_sub(1));
                if previous > last.offset {
                    self.repair(&topic, last, previous).await;
                } else if previous < last.offset {
                    // It follows a publication before the last one handed on (which the
                    // broker no longer has): whether any was lost between is unknown.
                    self.lost_before(&topic, position);
                }
            } else {
                // A new stream (the broker restarted empty) that began while this node was
                // away: its start is read like any gap; the workers reset to it first. On a
                // stream whose offsets are not consecutive (JetStream) the publication names
                // its predecessor, 0 for the topic's first.
                let previous = publication
                    .previous()
                    .unwrap_or(position.offset.saturating_sub(1));
                if previous > 0 {
                    let start = Position {
                        epoch: position.epoch,
                        offset: 0,
                    };
                    self.repair(&topic, start, previous).await;
                }
            }
        }
        self.hand_on(publication);
    }

    /// Keeps a publication in the hot copy and posts it to every worker.
    fn hand_on(&mut self, publication: Arc<Publication>) {
        if let (Some(position), Some(log)) = (publication.position(), &self.log) {
            log.record(&publication);
            self.last.insert(Arc::clone(publication.topic()), position);
        }
        BrokerStats::add(&self.link.stats.received, 1);
        self.hub.post(&publication, None);
    }

    /// Reads what followed `last` up to offset `up_to` from the broker's stream and hands it
    /// on; whether all of it was there. Counted as a gap repaired or reported.
    async fn repair(&mut self, topic: &Arc<str>, last: Position, up_to: u64) -> bool {
        let Some(log) = self.log.clone() else {
            return false;
        };
        let read =
            tokio::time::timeout(IO_TIMEOUT, self.broker.range(topic, last.offset, up_to)).await;
        // The chain from `last`: each publication found must follow the one before it.
        let mut reached = last.offset;
        let mut found = Vec::new();
        match read {
            Ok(Ok(envelopes)) => {
                for envelope in envelopes {
                    let Some(publication) = self.positioned(topic, envelope) else {
                        continue;
                    };
                    let Some(position) = publication.position() else {
                        continue;
                    };
                    let follows = publication.previous() == Some(reached);
                    if reached < up_to
                        && position.epoch == last.epoch
                        && position.offset <= up_to
                        && follows
                    {
                        found.push(publication);
                        reached = position.offset;
                    }
                }
            }
            Ok(Err(message)) => self.warn(format_args!("broker stream read failed: {message}")),
            Err(_) => self.warn(format_args!("broker stream read: no answer")),
        }
        let whole = reached == up_to;
        // Counted before the workers can deliver any of it.
        let counter = if whole {
            &log.stats.gaps_repaired
        } else {
            &log.stats.gaps_reported
        };
        counter.fetch_add(1, Ordering::Relaxed);
        for publication in found {
            self.hand_on(publication);
        }
        whole
    }

    /// A publication from an envelope of a topic's stream, if it is one with a position.
    fn positioned(&self, topic: &Arc<str>, envelope: bytes::Bytes) -> Option<Arc<Publication>> {
        let envelope = wire::decode(envelope).ok()?;
        let position = envelope.position?;
        if envelope.payload.len() as u64 > self.max_message_bytes as u64 {
            return None;
        }
        let publication = Publication::stamped(
            Arc::clone(topic),
            envelope.opcode,
            envelope.payload,
            Some(position),
            self.link.stamp(),
        );
        if let Some(previous) = envelope.previous {
            publication.follow(previous);
        }
        Some(publication)
    }

    /// A publication whose predecessor is older than the last one handed on: what lay
    /// between (if anything) cannot be read any more. Its subscribers are told (the workers
    /// reset them to the position just before it), and the gap counted as reported.
    fn lost_before(&mut self, topic: &Arc<str>, position: Position) {
        let Some(log) = self.log.clone() else {
            return;
        };
        log.stats.gaps_reported.fetch_add(1, Ordering::Relaxed);
        let before = Position {
            offset: position.offset - 1,
            ..position
        };
        log.mark_head(topic, before);
        self.last.insert(Arc::clone(topic), before);
        self.hub
            .post(&Publication::head_only(Arc::clone(topic), before), None);
    }

    /// Loads a topic's head and last publications from the broker into the hot copy (a topic
    /// just subscribed, or one found behind), then tells the workers the head: each brings
    /// its subscribers there from the hot copy, or resets them.
    pub(super) async fn load(&mut self, topic: &Arc<str>) {
        let Some(log) = self.log.clone() else {
            return;
        };
        let read =
            tokio::time::timeout(IO_TIMEOUT, self.broker.tail(topic, log.entries_per_topic()))
                .await;
        let (head, envelopes) = match read {
            Ok(Ok(tail)) => tail,
            Ok(Err(message)) => {
                self.warn(format_args!("broker stream read failed: {message}"));
                return;
            }
            Err(_) => {
                self.warn(format_args!("broker stream read: no answer"));
                return;
            }
        };
        let Some(head) = head else {
            // No stream yet (or it expired): the first publication will make one.
            return;
        };
        if let Some(last) = self.last.get(topic) {
            if last.epoch == head.epoch && last.offset >= head.offset {
                return;
            }
        }
        let publications = envelopes
            .into_iter()
            .filter_map(|e| self.positioned(topic, e))
            .collect();
        log.load(topic, head, publications);
        self.last.insert(Arc::clone(topic), head);
        self.hub
            .post(&Publication::head_only(Arc::clone(topic), head), None);
    }

    /// Asks the broker for each live topic's head. A head found past what was handed on, and
    /// still past it at the next check, means publications lost on the way: they are read
    /// from the stream, or the workers are told the new head and reset their subscribers.
    /// Returns `false` when the broker stopped answering.
    pub(super) async fn check_heads(&mut self) -> bool {
        let Some(log) = self.log.clone() else {
            return true;
        };
        for (topic, head) in std::mem::take(&mut self.suspects) {
            if !self.subscribed.contains(&topic) {
                continue;
            }
            match self.last.get(&topic).copied() {
                Some(last) if last.epoch == head.epoch => {
                    if last.offset < head.offset && !self.repair(&topic, last, head.offset).await {
                        log.mark_head(&topic, head);
                        self.last.insert(Arc::clone(&topic), head);
                        self.hub
                            .post(&Publication::head_only(Arc::clone(&topic), head), None);
                    }
                }
                _ => self.load(&topic).await,
            }
        }
        let topics: Vec<Arc<str>> = self.subscribed.iter().cloned().collect();
        for topics in topics.chunks(SUBSCRIBE_BATCH) {
            log.stats
                .head_checks
                .fetch_add(topics.len() as u64, Ordering::Relaxed);
            let heads = match tokio::time::timeout(IO_TIMEOUT, self.broker.heads(topics)).await {
                Ok(Ok(heads)) => heads,
                Ok(Err(_)) if self.broker.is_connected() => continue,
                Ok(Err(_)) | Err(_) => return false,
            };
            for (topic, head) in topics.iter().zip(heads) {
                let Some(head) = head else { continue };
                let behind = self
                    .last
                    .get(topic)
                    .is_none_or(|last| last.epoch != head.epoch || last.offset < head.offset);
                if behind {
                    self.suspects.insert(Arc::clone(topic), head);
                }
            }
        }
        true
    }
}
