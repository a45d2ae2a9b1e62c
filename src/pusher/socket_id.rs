//! Socket ids: `A.B`, where A is the node's random tag × 1024 + the worker, and B the
//! connection's id on that worker: unique across nodes, and they lead back to their
//! connection (a [`Peer`]) on whichever node the HTTP API's `socket_id` exclusion runs.

use crate::broadcast::Peer;
use crate::driver::ConnId;

/// Workers a socket id can name (A = node tag × this + worker).
const WORKER_SPAN: u64 = 1024;

/// The socket id of a connection.
pub fn encode(peer: Peer) -> String {
    let conn = peer.conn();
    let a = peer.node() * WORKER_SPAN + peer.worker() as u64 % WORKER_SPAN;
    let b = u64::from(conn.generation) << 32 | u64::from(conn.key);
    format!("{a}.{b}")
}

/// Whether `text` has the shape of a socket id, `\d+\.\d+` (each at most 20 digits).
pub fn is_valid(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    text.split_once('.')
        .is_some_and(|(a, b)| digits(a) && digits(b))
}

/// The connection a socket id names, on any node.
pub fn decode(text: &str) -> Option<Peer> {
    let (a, b) = text.split_once('.')?;
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    let conn = ConnId {
        key: b as u32,
        generation: (b >> 32) as u32,
    };
    Some(Peer::new(a / WORKER_SPAN, (a % WORKER_SPAN) as usize, conn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(node in 1u64..1_000_000_000_001, worker in 0usize..1024, key: u32, generation: u32) {
            let peer = Peer::new(node, worker, ConnId { key, generation });
            let id = encode(peer);
            prop_assert!(is_valid(&id));
            prop_assert_eq!(decode(&id), Some(peer));
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
            "123456789012345678901.1",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
        assert!(decode("x.y").is_none());
    }
}
