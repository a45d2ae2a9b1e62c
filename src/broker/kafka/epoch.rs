//! Epochs: a partition's identity, from the time of its record at offset 0, and the head
//! checks that notice a partition that became another one.

use std::sync::atomic::Ordering;

use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::record::Record;

use super::reader::{fetch, is_out_of_range, offset, QUICK_WAIT_MS};
use super::{KafkaTask, Session};
use crate::broadcast::Epoch;
use crate::broker::IO_TIMEOUT;

impl KafkaTask {
    /// Asks each partition's end and epoch: another epoch (or an empty partition where
    /// records were read) means the partition was recreated. Returns `false` (reconnect,
    /// which reloads its topics) then, or when the broker stopped answering.
    ///
    /// An end before the offset reached is not taken as a sign: Tansu 0.6 reports the end of
    /// a partition as one past the first offset of its last batch.
    pub(super) async fn check_heads(&mut self, session: &Session) -> bool {
        self.log
            .stats
            .head_checks
            .fetch_add(self.loaded.len() as u64, Ordering::Relaxed);
        // Partitions added to the Kafka topic move topics to other partitions (and a broker
        // that lost the topic may make it anew with another count): every node must see it.
        let count = match tokio::time::timeout(IO_TIMEOUT, session.client.list_topics()).await {
            Ok(Ok(topics)) => topics
                .into_iter()
                .find(|t| t.name == self.topic)
                .map(|t| t.partitions.len()),
            Ok(Err(error)) => {
                self.warn(format_args!("broker head check failed: {error}"));
                return false;
            }
            Err(_) => return false,
        };
        if count != Some(session.partitions.len()) {
            let message = format!(
                "Kafka topic {:?} has {count:?} partitions now, not {}",
                self.topic,
                session.partitions.len()
            );
            self.warn(format_args!("{message}"));
            self.resync = true;
            return false;
        }
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
                self.resync = true;
                return false;
            }
        }
        true
    }
}

/// The epoch of partition `index`, which ends at `latest`: from its record at offset 0 if it
/// still has it, `None` if it is empty.
pub(super) async fn epoch_of(
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
pub(super) fn changed(old: Option<Epoch>, new: Option<Epoch>) -> bool {
    match (old, new) {
        (Some(old), Some(new)) => old != new && !new.as_str().ends_with("-x"),
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// `k<index>-<T>`: `T` is the base-36 timestamp (ms) of the partition's first record.
pub(super) fn epoch_at(index: usize, first: &Record) -> Epoch {
    let millis = u64::try_from(first.timestamp.timestamp_millis()).unwrap_or(0);
    let text = format!("k{index}-{}", base36(millis));
    text.parse().unwrap_or_else(|_| retained_epoch(index))
}

/// The epoch of a partition whose first record is gone: `k<index>-x`.
pub(super) fn retained_epoch(index: usize) -> Epoch {
    format!("k{}-x", index % 100_000)
        .parse()
        .unwrap_or(Epoch::UNKNOWN)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
