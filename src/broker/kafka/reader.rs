//! A partition's reader: fetches one partition in order and hands the task what it got.

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::record::RecordAndOffset;
use tokio::sync::mpsc as channel;

use super::continuity::{verify, Seen, Verdict};
use crate::broker::IO_TIMEOUT;

/// How long a fetch waits at the broker for new records.
const FETCH_WAIT_MS: i32 = 100;
/// How long a fetch of records known to be there (a load, an epoch) may wait: Tansu answers
/// a fetch that may not wait at all with nothing.
pub(super) const QUICK_WAIT_MS: i32 = 50;
/// The least time between two fetches of one partition that both came back empty.
const MIN_EMPTY_FETCH: Duration = Duration::from_millis(20);
/// Fetches each partition's reader may have waiting for the task.
pub(super) const READER_QUEUE: usize = 16;

/// What a partition's reader hands the task.
pub(super) enum Fetched {
    Records {
        partition: usize,
        records: Vec<RecordAndOffset>,
    },
    /// The partition is another log than the one read so far (see `continuity`): nothing
    /// more of it is handed on before the task resynchronises.
    Replaced {
        partition: usize,
    },
    /// The offset to read is no longer kept: what lay before `earliest` is lost.
    Lost {
        partition: usize,
        earliest: i64,
    },
    Failed(String),
}

/// Reads one partition from `next` on, in order, until the task stops listening or a fetch
/// fails. `seen` is the last record read before `next`, if known: after every fetch that
/// brings records, it must still be there (see `continuity`), or the partition is reported
/// replaced and the reader stops.
pub(super) async fn read_partition(
    partition: Arc<PartitionClient>,
    index: usize,
    mut next: i64,
    mut seen: Option<Seen>,
    sender: channel::Sender<Fetched>,
    fetch_bytes: i32,
) {
    let wait = IO_TIMEOUT + Duration::from_millis(FETCH_WAIT_MS as u64);
    if seen.is_none() && next > 0 {
        // Started at the partition's end: the record before it is the one to check.
        if let Ok(Ok(records)) = tokio::time::timeout(
            wait,
            fetch(&partition, next - 1, fetch_bytes, QUICK_WAIT_MS),
        )
        .await
        {
            seen = records.iter().find(|r| r.offset == next - 1).map(Seen::of);
        }
    }
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
                // Fetched first, checked after: a log replaced in between is caught too.
                let check = match seen {
                    Some(seen) => {
                        let check = verify(&partition, seen, fetch_bytes, false);
                        match tokio::time::timeout(wait, check).await {
                            Ok(result) => result,
                            Err(_) => Err("no answer".to_owned()),
                        }
                    }
                    None => Ok(Verdict::Unknown),
                };
                seen = records.last().map(Seen::of);
                match check {
                    Ok(Verdict::Replaced) => Fetched::Replaced { partition: index },
                    Ok(Verdict::Same | Verdict::Unknown) => Fetched::Records {
                        partition: index,
                        records,
                    },
                    Err(message) => Fetched::Failed(format!("partition {index}: {message}")),
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
        let failed = matches!(fetched, Fetched::Failed(_) | Fetched::Replaced { .. });
        if sender.send(fetched).await.is_err() || failed {
            return;
        }
    }
}

pub(super) fn is_out_of_range(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::ServerError {
            protocol_error: ProtocolError::OffsetOutOfRange,
            ..
        }
    )
}

pub(super) async fn offset(partition: &PartitionClient, at: OffsetAt) -> Result<i64, String> {
    partition.get_offset(at).await.map_err(|e| e.to_string())
}

/// Records of `partition` from `offset` on, at most about `bytes`, waiting up to `wait_ms`
/// for some. An answer that names no topic at all is an empty fetch: Tansu answers so when
/// it has nothing to give (Kafka names the topic, with no records).
pub(super) async fn fetch(
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
