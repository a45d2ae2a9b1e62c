//! Socket ids: `A.B`, where A carries a random tag of this node and the worker, and B the
//! connection's id on that worker, so an id is unique across nodes and leads back to its
//! connection (for the HTTP API's `socket_id` exclusion).

use crate::broadcast::Peer;
use crate::driver::ConnId;

/// Workers a socket id can name (A = node tag × this + worker).
const WORKER_SPAN: u64 = 1024;

/// Makes a socket id for a connection of the node tagged `node`.
pub fn encode(node: u64, peer: Peer) -> String {
    let conn = peer.conn();
    let a = node * WORKER_SPAN + peer.worker() as u64 % WORKER_SPAN;
    let b = u64::from(conn.generation) << 32 | u64::from(conn.key);
    format!("{a}.{b}")
}

/// Whether `text` has the shape of a socket id, `\d+\.\d+` (each at most 20 digits).
pub fn is_valid(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    text.split_once('.')
        .is_some_and(|(a, b)| digits(a) && digits(b))
}

/// The connection a socket id names, when it was made by the node tagged `node`.
pub fn decode(node: u64, text: &str) -> Option<Peer> {
    let (a, b) = text.split_once('.')?;
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    if a / WORKER_SPAN != node {
        return None;
    }
    Some(Peer {
        worker: (a % WORKER_SPAN) as usize,
        conn: ConnId {
            key: b as u32,
            generation: (b >> 32) as u32,
        },
    })
}

/// A random node tag, below 10^12 so that A stays well inside a u64.
pub fn random_node_tag() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    // Without randomness every node would share tag 1: ids stay valid, and unique per node.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return 1;
    }
    u64::from_le_bytes(bytes) % 1_000_000_000_000 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips_on_its_node_only(node in 1u64..1_000_000_000_000, worker in 0usize..1024, key: u32, generation: u32) {
            let peer = Peer { worker, conn: ConnId { key, generation } };
            let id = encode(node, peer);
            prop_assert!(is_valid(&id));
            prop_assert_eq!(decode(node, &id), Some(peer));
            prop_assert_eq!(decode(node + 1, &id), None);
        }
    }

    #[test]
    fn shape() {
        assert!(is_valid("123.456"));
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "a.1",
            "1.2.3",
            "1.-2",
            &"9".repeat(21).replace("99", "9.9"),
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
        assert!(decode(1, "x.y").is_none());
    }
}
