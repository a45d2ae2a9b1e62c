//! A partition's reader: fetches one partition in order and hands the task what it got.

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::record::RecordAndOffset;
use tokio::sync::mpsc as channel;
use tracing::{debug, warn};

use super::continuity::{verify, Seen, Verdict};
use crate::broker::IO_TIMEOUT;

/// How long a fetch waits at the broker for new records.
const FETCH_WAIT_MS: i32 = 100;
/// How long a fetch of records known to be there (a load, an epoch) may wait: Tansu answers
/// a fetch that may not wait at all with nothing.
pub(super) const QUICK_WAIT_MS: i32 = 50;
/// The least time between two fetches of one partition that both came back empty.
const MIN_EMPTY_FETCH: Duration = Duration::from_millis(20);
/// Fetches that may show a hole in a partition's offsets before it is reported lost.
const HOLE_RETRIES: u32 = 20;
/// The pause before a fetch asks again for what a hole held back.
const HOLE_WAIT: Duration = Duration::from_millis(25);
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
    let mut hole_tries = 0;
    loop {
        let asked = tokio::time::Instant::now();
        let fetch = fetch(&partition, next, fetch_bytes, FETCH_WAIT_MS);
        let fetched = match tokio::time::timeout(wait, fetch).await {
            Ok(Ok(records)) => {
                let mut records: Vec<RecordAndOffset> =
                    records.into_iter().filter(|r| r.offset >= next).collect();
                // A partition's offsets are dense, so a fetch that starts past `next` or
                // skips an offset met records that are not all visible yet (Tansu's memory
                // engine has answered with a later batch before an earlier one): what is
                // whole goes on, the rest is asked again, and a hole that stays is reported
                // lost, never passed over in silence.
                let fetched_from = records.first().map(|r| r.offset);
                let (rest, hole_end) = hold_back_hole(next, &mut records, &mut hole_tries);
                if hole_tries > 0 {
                    debug!(
                        partition = index,
                        next,
                        ?fetched_from,
                        tries = hole_tries,
                        "hole in the fetched offsets; asking again"
                    );
                }
                if let Some(end) = hole_end {
                    warn!(
                        partition = index,
                        from = next + records.len() as i64,
                        to = end,
                        "Kafka offsets missing from the partition after {HOLE_RETRIES} fetches; reported lost"
                    );
                }
                if let Some(last) = rest.last().or(records.last()) {
                    next = last.offset + 1;
                }
                if records.is_empty() && rest.is_empty() {
                    // A broker that answers an empty fetch at once (not waiting the
                    // `max_wait` asked) is not asked again at once; nor is one that showed
                    // only what lies past a hole.
                    let pause = if hole_tries > 0 {
                        HOLE_WAIT
                    } else {
                        MIN_EMPTY_FETCH
                    };
                    tokio::time::sleep_until(asked + pause).await;
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
                seen = rest.last().or(records.last()).map(Seen::of);
                match check {
                    Ok(Verdict::Replaced) => Fetched::Replaced { partition: index },
                    Ok(Verdict::Same | Verdict::Unknown) => {
                        if let Some(earliest) = hole_end {
                            // The whole part, the hole, then what follows it, in order.
                            let before = Fetched::Records {
                                partition: index,
                                records,
                            };
                            let hole = Fetched::Lost {
                                partition: index,
                                earliest,
                            };
                            if sender.send(before).await.is_err()
                                || sender.send(hole).await.is_err()
                            {
                                return;
                            }
                            records = rest;
                        }
                        Fetched::Records {
                            partition: index,
                            records,
                        }
                    }
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

/// Keeps in `records` the part that runs on from `next` without a gap. The rest is dropped,
/// to be fetched again, while `tries` (counting fetches that showed a hole) is at most
/// [`HOLE_RETRIES`]; after that it is returned, with the offset where the hole ends.
fn hold_back_hole(
    next: i64,
    records: &mut Vec<RecordAndOffset>,
    tries: &mut u32,
) -> (Vec<RecordAndOffset>, Option<i64>) {
    let whole = contiguous(next, records);
    if whole == records.len() {
        if whole > 0 {
            // An empty answer says nothing of the hole; records from `next` on end it.
            *tries = 0;
        }
        return (Vec::new(), None);
    }
    *tries += 1;
    let tail = records.split_off(whole);
    if *tries <= HOLE_RETRIES {
        return (Vec::new(), None);
    }
    *tries = 0;
    let end = tail[0].offset;
    (tail, Some(end))
}

/// How many of `records` (in offset order) run on from `next` without a gap.
fn contiguous(next: i64, records: &[RecordAndOffset]) -> usize {
    records
        .iter()
        .zip(next..)
        .take_while(|(record, expected)| record.offset == *expected)
        .count()
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

#[cfg(test)]
mod tests {
    use super::*;
    use rskafka::record::Record;

    fn at(offset: i64) -> RecordAndOffset {
        RecordAndOffset {
            record: Record {
                key: Some(b"room".to_vec()),
                value: Some(offset.to_string().into_bytes()),
                headers: Default::default(),
                timestamp: rskafka::chrono::DateTime::from_timestamp_millis(1_000)
                    .expect("a valid time"),
            },
            offset,
        }
    }

    fn offsets(records: &[RecordAndOffset]) -> Vec<i64> {
        records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn records_that_run_on_from_next_all_go_on() {
        let mut records: Vec<_> = (5..9).map(at).collect();
        let mut tries = 3;
        let (rest, hole) = hold_back_hole(5, &mut records, &mut tries);
        assert_eq!(offsets(&records), [5, 6, 7, 8]);
        assert!(rest.is_empty());
        assert_eq!(hole, None);
        assert_eq!(tries, 0, "a whole fetch ends a run of holes");
        let mut empty = Vec::new();
        let mut tries = 3;
        let _ = hold_back_hole(5, &mut empty, &mut tries);
        assert_eq!(
            tries, 3,
            "an empty fetch neither ends nor adds to a run of holes"
        );
    }

    #[test]
    fn what_lies_past_a_hole_is_asked_again_then_reported_with_its_end() {
        // Offsets 7 and 8 not visible yet: 5 and 6 go on, 9 and 10 are held back.
        let fetch = || vec![at(5), at(6), at(9), at(10)];
        let mut tries = 0;
        for attempt in 1..=HOLE_RETRIES {
            let mut records = fetch();
            let (rest, hole) = hold_back_hole(5, &mut records, &mut tries);
            assert_eq!(offsets(&records), [5, 6], "attempt {attempt}");
            assert!(rest.is_empty(), "held back at attempt {attempt}");
            assert_eq!(hole, None);
        }
        let mut records = fetch();
        let (rest, hole) = hold_back_hole(5, &mut records, &mut tries);
        assert_eq!(offsets(&records), [5, 6]);
        assert_eq!(offsets(&rest), [9, 10]);
        assert_eq!(hole, Some(9), "positions up to offset 8 are reported lost");
        assert_eq!(tries, 0);
    }

    #[test]
    fn a_fetch_that_starts_past_next_hands_on_nothing_while_it_may_still_fill() {
        let mut records = vec![at(12), at(13)];
        let mut tries = 0;
        let (rest, hole) = hold_back_hole(10, &mut records, &mut tries);
        assert!(records.is_empty() && rest.is_empty());
        assert_eq!((hole, tries), (None, 1));
    }
}
