//! The connection: the client, the Kafka topic's partitions (created if missing), and where
//! each partition is read from after a (re)connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use tracing::debug;

use super::continuity::{verify, Verdict};
use super::epoch::{changed, epoch_of};
use super::reader::offset;
use super::{KafkaTask, Part, Session, CREATED_PARTITIONS};
use crate::broker::IO_TIMEOUT;

impl KafkaTask {
    /// Connects, finds (or creates) the Kafka topic and its partitions, and sets where each
    /// partition is read from: where the last connection stopped if the partition is the
    /// same (same epoch, not shorter), else its end, after which its topics load again.
    pub(super) async fn connect(&mut self) -> Result<Session, String> {
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
        // Only a node that never connected makes a missing topic: after a broker lost it,
        // whoever made it first (the operator, with its partitions) makes it again, and
        // nodes that all raced to make it could leave a topic of other partitions (Tansu 0.6
        // took concurrent creations as more partitions).
        let may_create = self.parts.is_empty();
        let count = self.partition_count(&client, may_create).await?;
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
        // Every partition is probed at once: a broker that takes a few hundred milliseconds
        // a request (Tansu under load) must not make the connection outlast its deadline.
        let fetch_bytes = self.fetch_bytes();
        let probes = partitions.iter().enumerate().map(|(index, partition)| {
            let part = self.parts[index].clone();
            async move {
                let earliest = offset(partition, OffsetAt::Earliest).await?;
                let latest = offset(partition, OffsetAt::Latest).await?;
                let epoch = epoch_of(partition, index, latest).await?;
                let mut same = !part.replaced && !changed(part.epoch, epoch);
                if let (true, Some(seen)) = (same, part.seen) {
                    // The same first record, but the last one read must be there too: a
                    // log that went back or was written anew past its start is another one.
                    same = verify(partition, seen, fetch_bytes, true).await? != Verdict::Replaced;
                }
                Ok::<_, String>((earliest, latest, epoch, same))
            }
        });
        let probed = futures_util::future::join_all(probes).await;
        for (index, probe) in probed.into_iter().enumerate() {
            let (earliest, latest, epoch, same) = probe?;
            let part = &mut self.parts[index];
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
                        ..Part::default()
                    };
                    if !first {
                        self.recreated(index, count);
                    }
                }
            }
        }
        Ok(Session { client, partitions })
    }

    /// The number of partitions of the Kafka topic, which is created if missing and `may_create`.
    async fn partition_count(&self, client: &Client, may_create: bool) -> Result<usize, String> {
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
        if !may_create {
            return Err(format!(
                "Kafka topic {:?} missing; waiting for it to be made again",
                self.topic
            ));
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
}
