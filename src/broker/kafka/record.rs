//! A record's codec: the opcode header, the partitioner (Kafka's murmur2) and timestamps.

use rskafka::record::Record;

use crate::broadcast::Peer;
use crate::broker::wire;
use crate::protocol::OpCode;

/// The record header that marks a binary publication (value `binary`).
pub(crate) const OPCODE_HEADER: &str = "uringcast-opcode";

/// The record header that names the connection a publication skips (Pusher's `socket_id`):
/// `NODE.WORKER.KEY.GENERATION` in decimal.
pub(crate) const EXCEPT_HEADER: &str = "uringcast-except";

/// The connection a record's publication skips, from its header; none if the header does
/// not name one.
pub(super) fn except_of(record: &Record) -> Option<Peer> {
    let value = record.headers.get(EXCEPT_HEADER)?;
    wire::parse_peer(std::str::from_utf8(value).ok()?)
}

/// The time now, as a record's timestamp (rskafka's chrono comes without its clock).
pub(super) fn now() -> rskafka::chrono::DateTime<rskafka::chrono::Utc> {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    rskafka::chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default()
}

/// A record's opcode: binary if its header says so, else text if the value is UTF-8.
pub(super) fn opcode_of(record: &Record, payload: &[u8]) -> OpCode {
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

    #[test]
    fn a_records_skipped_connection_comes_from_its_header() {
        let mut record = Record {
            key: None,
            value: None,
            headers: Default::default(),
            timestamp: now(),
        };
        assert_eq!(except_of(&record), None);
        record
            .headers
            .insert(EXCEPT_HEADER.to_owned(), b"7.1.2.3".to_vec());
        assert_eq!(
            except_of(&record).map(|p| wire::peer_text(&p)).as_deref(),
            Some("7.1.2.3")
        );
        record
            .headers
            .insert(EXCEPT_HEADER.to_owned(), b"7.1.2".to_vec());
        assert_eq!(except_of(&record), None);
    }
}
