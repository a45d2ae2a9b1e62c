//! Producing: the workers' publishes, as records batched per partition.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rskafka::client::error::Error as ClientError;
use rskafka::client::partition::Compression;
use rskafka::record::Record;

use super::record::{now, partition_for, EXCEPT_HEADER, OPCODE_HEADER};
use super::{KafkaTask, Session};
use crate::broker::{BrokerStats, IO_TIMEOUT};
use crate::protocol::OpCode;

/// Publishes produced per turn before the link looks at what arrived.
const BATCH: usize = 256;

impl KafkaTask {
    /// Produces what the workers queued, each record to its topic's partition; `false` when
    /// the broker stopped answering.
    pub(super) async fn publish(&mut self, session: &Session) -> bool {
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
            if let Some(peer) = publication.except() {
                headers.insert(
                    EXCEPT_HEADER.to_owned(),
                    crate::broker::wire::peer_text(&peer).into_bytes(),
                );
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
    pub(super) fn forget_drops(&self) {
        if self.link.any_dropped.swap(false, Ordering::AcqRel) {
            if let Ok(mut dropped) = self.link.dropped.lock() {
                dropped.clear();
            }
        }
    }
}
