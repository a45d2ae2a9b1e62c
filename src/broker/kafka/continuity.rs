//! Continuity: a node checks that the partition it reads is still the log it read before.
//!
//! A broker that loses acknowledged records (Tansu with memory storage, restarted; a Kafka
//! failover to a replica that lacked them) and is written again serves another log at the
//! same offsets. rskafka re-makes a lost connection by itself, so a reader waiting at offset
//! `next` may be answered from the new log, without an error, once it grows past `next`:
//! handed on, its records would take positions of the old epoch, silently. So the reader
//! remembers the last record it read ([`Seen`]: its offset and a digest of its timestamp,
//! key and value) and, after each fetch that brought records, reads that offset again: a
//! record that differs means the log was replaced, and the task resynchronises (a new epoch,
//! its topics loaded again and their subscribers reset) before anything of it is handed on.

use std::hash::{Hash, Hasher};

use rskafka::client::partition::PartitionClient;
use rskafka::record::{Record, RecordAndOffset};

use super::reader::{fetch, is_out_of_range, QUICK_WAIT_MS};

/// The last record a node read from a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) offset: i64,
    digest: u64,
}

impl Seen {
    pub(super) fn of(record: &RecordAndOffset) -> Self {
        Self {
            offset: record.offset,
            digest: digest(&record.record),
        }
    }
}

/// What the partition holds at a [`Seen`] offset now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The same record: the log goes on.
    Same,
    /// Another record, or none where the log had one: the log was replaced or went back.
    Replaced,
    /// No longer kept (retention): continuity cannot be told from it.
    Unknown,
}

/// Reads the record at `seen.offset` again and compares it.
///
/// `missing_is_replaced`: whether a partition that ends before `seen.offset` counts as
/// replaced (a log that went back). A reader that just fetched records past it sets it to
/// `false`: the log is not shorter, and an empty answer says nothing.
pub(super) async fn verify(
    partition: &PartitionClient,
    seen: Seen,
    fetch_bytes: i32,
    missing_is_replaced: bool,
) -> Result<Verdict, String> {
    match fetch(partition, seen.offset, fetch_bytes, QUICK_WAIT_MS).await {
        Ok(records) => Ok(match records.iter().find(|r| r.offset == seen.offset) {
            Some(record) if Seen::of(record) == seen => Verdict::Same,
            Some(_) => Verdict::Replaced,
            None if missing_is_replaced => Verdict::Replaced,
            None => Verdict::Unknown,
        }),
        Err(error) if is_out_of_range(&error) => Ok(Verdict::Unknown),
        Err(error) => Err(error.to_string()),
    }
}

/// A digest of what identifies a record: its timestamp, key, value and headers.
fn digest(record: &Record) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    record.timestamp.timestamp_millis().hash(&mut hasher);
    record.key.hash(&mut hasher);
    record.value.hash(&mut hasher);
    record.headers.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64, value: &str, millis: i64) -> RecordAndOffset {
        RecordAndOffset {
            record: Record {
                key: Some(b"room".to_vec()),
                value: Some(value.as_bytes().to_vec()),
                headers: Default::default(),
                timestamp: rskafka::chrono::DateTime::from_timestamp_millis(millis)
                    .expect("a valid time"),
            },
            offset,
        }
    }

    #[test]
    fn a_record_is_seen_as_itself_and_not_as_another_at_its_offset() {
        let seen = Seen::of(&at(7, "a", 1_000));
        assert_eq!(Seen::of(&at(7, "a", 1_000)), seen);
        assert_ne!(Seen::of(&at(7, "b", 1_000)), seen, "another value");
        assert_ne!(Seen::of(&at(7, "a", 1_001)), seen, "another time");
        assert_ne!(Seen::of(&at(8, "a", 1_000)), seen, "another offset");
    }
}
