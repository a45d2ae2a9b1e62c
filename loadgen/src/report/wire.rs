//! Bytes on the wire against payload bytes, and permessage-deflate's part in them, as every
//! report gives them.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::scenario::traffic::{Deflate, WireTally};

/// The report's top-level keys: whether deflate was offered, how many connections agreed, and
/// the bytes each way (`wire_ratio_*` is wire bytes per payload byte, `null` without payload).
pub(super) fn json(deflate: Deflate, wire: &WireTally) -> Map<String, Value> {
    [
        ("deflate_offered", json!(deflate.offered())),
        ("deflate_connections", json!(wire.deflate_connections)),
        ("wire_bytes_in", json!(wire.wire_bytes_in)),
        ("payload_bytes_in", json!(wire.payload_bytes_in)),
        ("wire_ratio_in", json!(wire.ratio_in())),
        ("messages_in", json!(wire.messages_in)),
        ("messages_compressed_in", json!(wire.compressed_in)),
        ("wire_bytes_out", json!(wire.wire_bytes_out)),
        ("payload_bytes_out", json!(wire.payload_bytes_out)),
        ("wire_ratio_out", json!(wire.ratio_out())),
        ("messages_out", json!(wire.messages_out)),
        ("messages_compressed_out", json!(wire.compressed_out)),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

/// Adds [`json()`]'s keys to a report's top level.
pub(super) fn extend(report: &mut Value, deflate: Deflate, wire: &WireTally) {
    if let Value::Object(map) = report {
        map.extend(json(deflate, wire));
    }
}

/// The `deflate` line, when it was offered: how many of the `established` connections agreed,
/// and how many messages were compressed each way. A server that declined is said so: the run
/// goes on with plain messages.
pub(super) fn write_deflate(
    out: &mut String,
    deflate: Deflate,
    wire: &WireTally,
    established: u64,
) {
    if !deflate.offered() {
        return;
    }
    let agreed = wire.deflate_connections;
    let _ = write!(
        out,
        "deflate   offered on every connection: {agreed} of {established} agreed"
    );
    if agreed == 0 && established > 0 {
        let _ = write!(out, " (the server declined: messages went plain)");
    } else if agreed < established {
        let _ = write!(out, " (the others declined: plain messages there)");
    }
    let _ = writeln!(
        out,
        "; compressed messages: {} of {} received, {} of {} sent{}",
        wire.compressed_in,
        wire.messages_in,
        wire.compressed_out,
        wire.messages_out,
        if deflate.compresses() {
            ""
        } else {
            " (sends plain without --deflate-send)"
        },
    );
}

/// The `wire` line: bytes each way against their payload.
pub(super) fn write_bytes(out: &mut String, wire: &WireTally) {
    let ratio = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"));
    let _ = writeln!(
        out,
        "wire      in {} for {} of payload ({} per payload byte); out {} for {} ({})",
        bytes(wire.wire_bytes_in),
        bytes(wire.payload_bytes_in),
        ratio(wire.ratio_in()),
        bytes(wire.wire_bytes_out),
        bytes(wire.payload_bytes_out),
        ratio(wire.ratio_out()),
    );
}

/// A byte count for people: exact below 10 KiB, then KiB or MiB.
fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    match n as f64 {
        v if v < 10.0 * KIB => format!("{n} B"),
        v if v < 10.0 * KIB * KIB => format!("{:.1} KiB", v / KIB),
        v => format!("{:.1} MiB", v / (KIB * KIB)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally() -> WireTally {
        WireTally {
            deflate_connections: 0,
            wire_bytes_in: 46_000,
            payload_bytes_in: 100_000,
            messages_in: 250,
            compressed_in: 250,
            wire_bytes_out: 1_000,
            payload_bytes_out: 0,
            messages_out: 0,
            compressed_out: 0,
        }
    }

    #[test]
    fn a_declined_offer_is_said_so() {
        let mut out = String::new();
        write_deflate(&mut out, Deflate::Offer, &tally(), 10);
        assert!(out.contains("0 of 10 agreed (the server declined"), "{out}");
        let mut out = String::new();
        write_deflate(&mut out, Deflate::Off, &tally(), 10);
        assert!(out.is_empty());
        let agreed = WireTally {
            deflate_connections: 10,
            ..tally()
        };
        let mut out = String::new();
        write_deflate(&mut out, Deflate::OfferAndCompress, &agreed, 10);
        assert!(
            out.contains("10 of 10 agreed; compressed messages: 250 of 250"),
            "{out}"
        );
    }

    #[test]
    fn bytes_and_ratios() {
        let map = json(Deflate::Offer, &tally());
        assert_eq!(map["deflate_offered"], true);
        assert_eq!(map["wire_bytes_in"], 46_000);
        assert_eq!(map["wire_ratio_in"], 0.46);
        assert!(map["wire_ratio_out"].is_null());
        let mut out = String::new();
        write_bytes(&mut out, &tally());
        assert!(
            out.contains("in 44.9 KiB for 97.7 KiB of payload (0.46"),
            "{out}"
        );
        assert!(out.contains("out 1000 B for 0 B (n/a)"), "{out}");
        assert_eq!(bytes(20 << 20), "20.0 MiB");
    }
}
