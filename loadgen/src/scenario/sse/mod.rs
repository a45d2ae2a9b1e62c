//! The `sse` scenario: N subscribers each holding one Server-Sent Events stream of a topic,
//! publishers as in [`broadcast`](super::broadcast) (WebSocket connections or HTTP POSTs), and
//! every event checked twice: by its id, a position `EPOCH:OFFSET` that must follow the last
//! ([`position`]), and by its payload's stamp, as a broadcast delivery is (loss, repeats,
//! order, content, latency from the publish).
//!
//! With `--reconnect-after S` each stream closes once, at a time spread over `[S, 1.5 S]`
//! after the traffic starts, and opens again with `Last-Event-ID`: the first event after it
//! says whether the stream recovered exactly, was reset, or lost events silently.
//!
//! With `--reconnect-window W` as well, the reconnects are a storm: every stream closes at
//! `S`, stays away `--reconnect-down D`, and the streams open again spread evenly over
//! `[S + D, S + D + W]` (each thread spreads its own over the whole window). A storm stream is
//! live again once it receives a publication stamped at or after the moment it reopened: it
//! then has everything it missed before it (the position checks say whether exactly), and the
//! report gives the time from the first reopen until the last stream was live again.

mod parser;
pub mod position;

use base64::Engine as _;
use uringcast::protocol::OpCode;

pub use self::parser::{Event, Limits, Parser, Step};
pub use self::position::StreamTally;
use self::position::Track;
use super::broadcast::BroadcastWork;
use super::stamp::Stamper;
use super::traffic::{Expect, Outbox, Plan, Tally, Workload};

/// `--reconnect-after`, and with `--reconnect-window` its storm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconnects {
    /// Nanoseconds after the traffic starts: each stream drops once in `[after, 1.5 after]`,
    /// or with a storm, all at `after`.
    pub after_ns: u64,
    /// `--reconnect-window`: all streams drop together and reopen over a window.
    pub storm: Option<Storm>,
}

/// A reconnect storm's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Storm {
    /// `--reconnect-down`: how long every stream stays closed before the window opens.
    pub down_ns: u64,
    /// `--reconnect-window`: the reopens are spread evenly over this long.
    pub window_ns: u64,
}

/// One stream's drop: when (ns after the start), which local connection, and with a storm
/// when it opens again (ns after the start).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PlannedDrop {
    at: u64,
    conn: usize,
    reopen: Option<u64>,
}

/// One thread's share of an `sse` run: a broadcast run whose subscribers read streams.
pub struct SseWork {
    inner: BroadcastWork,
    /// Per local connection: the stream's position; `None` for a publisher.
    tracks: Vec<Option<Track>>,
    /// `--reconnect-after`: the streams' drops still to come, latest first.
    drops: Vec<PlannedDrop>,
    /// Per local connection, in a storm: when it reopened (`CLOCK_MONOTONIC` ns), until it is
    /// live again.
    reopened_at: Vec<Option<u64>>,
    /// Reads the stamps' send times, to tell a replayed publication from a live one.
    stamper: Stamper,
    start_ns: u64,
    running: bool,
    decoded: Vec<u8>,
}

impl SseWork {
    /// A thread's share: global connections below `subscribers` are streams, `inner` checks
    /// their payloads and drives the publishers, and `stamper` is the one their payloads are
    /// written with. With `reconnects`, each stream drops once at a random time in
    /// `[after, 1.5 after]` from the start, or in a storm as [`Storm`] says.
    pub fn new(
        inner: BroadcastWork,
        plan: Plan,
        subscribers: u64,
        reconnects: Option<Reconnects>,
        stamper: Stamper,
    ) -> Self {
        let streams: Vec<bool> = (0..plan.count as usize)
            .map(|local| plan.global(local) < subscribers)
            .collect();
        let tracks = streams.iter().map(|&s| s.then(Track::default)).collect();
        let mut drops = plan_drops(&streams, reconnects);
        drops.sort_unstable_by(|a, b| b.cmp(a));
        Self {
            inner,
            tracks,
            drops,
            reopened_at: vec![None; streams.len()],
            stamper,
            start_ns: 0,
            running: false,
            decoded: Vec::new(),
        }
    }

    /// A new delivery on storm stream `conn`: replayed (stamped before the stream reopened)
    /// or live, which ends the stream's part in the storm.
    fn storm_delivery(&mut self, conn: usize, payload: &[u8], now_ns: u64) {
        let Some(reopened) = self.reopened_at.get(conn).copied().flatten() else {
            return;
        };
        let Some(stamp) = self.stamper.read(payload) else {
            return;
        };
        let streams = &mut self.inner.tally().streams;
        if stamp.sent_ns >= reopened {
            streams.storm_live_at(now_ns);
            self.reopened_at[conn] = None;
        } else {
            streams.storm_replayed += 1;
        }
    }
}

/// Each stream's drop (`streams[local]`: whether local connection `local` is a stream).
fn plan_drops(streams: &[bool], reconnects: Option<Reconnects>) -> Vec<PlannedDrop> {
    let Some(Reconnects { after_ns, storm }) = reconnects else {
        return Vec::new();
    };
    let conns = streams
        .iter()
        .enumerate()
        .filter(|(_, s)| **s)
        .map(|(conn, _)| conn);
    match storm {
        None => conns
            .map(|conn| PlannedDrop {
                at: after_ns + (after_ns as f64 * rand::random::<f64>() / 2.0) as u64,
                conn,
                reopen: None,
            })
            .collect(),
        Some(Storm { down_ns, window_ns }) => {
            let count = streams.iter().filter(|s| **s).count().max(1) as u128;
            conns
                .enumerate()
                .map(|(rank, conn)| PlannedDrop {
                    at: after_ns,
                    conn,
                    reopen: Some(
                        after_ns + down_ns + (u128::from(window_ns) * rank as u128 / count) as u64,
                    ),
                })
                .collect()
        }
    }
}

impl Workload for SseWork {
    fn start(&mut self, start_ns: u64, out: &mut Outbox<'_>) {
        self.start_ns = start_ns;
        self.running = true;
        self.inner.start(start_ns, out);
    }

    fn due(&mut self, now_ns: u64, out: &mut Outbox<'_>) -> Option<u64> {
        let mut next = self.inner.due(now_ns, out);
        if !self.running {
            return next;
        }
        while let Some(&planned) = self.drops.last() {
            let at = self.start_ns + planned.at;
            if at > now_ns {
                next = Some(next.map_or(at, |n| n.min(at)));
                break;
            }
            self.drops.pop();
            if !out.is_open(planned.conn) {
                continue;
            }
            match planned.reopen {
                None => out.reconnect(planned.conn),
                Some(reopen) => {
                    let reopen = self.start_ns + reopen;
                    out.reconnect_at(planned.conn, reopen);
                    self.reopened_at[planned.conn] = Some(reopen);
                    self.inner.tally().streams.storm_reopen(reopen);
                }
            }
        }
        next
    }

    fn message(
        &mut self,
        conn: usize,
        opcode: OpCode,
        payload: &[u8],
        now_ns: u64,
        out: &mut Outbox<'_>,
    ) {
        // A WebSocket publisher hearing its own messages: the broadcast work drops them.
        self.inner.message(conn, opcode, payload, now_ns, out);
    }

    fn event(&mut self, conn: usize, event: &Event, now_ns: u64, out: &mut Outbox<'_>) {
        let Some(track) = self.tracks.get_mut(conn).and_then(Option::as_mut) else {
            return;
        };
        let tally = &mut self.inner.tally().streams;
        let new = track.event(
            event.id.as_deref(),
            &event.kind,
            event.data.is_some(),
            tally,
        );
        let Some(data) = event.data.as_deref().filter(|_| new) else {
            return;
        };
        match event.kind.as_str() {
            "" | "message" => {
                self.storm_delivery(conn, data, now_ns);
                self.inner.message(conn, OpCode::Text, data, now_ns, out);
            }
            "binary" => {
                let mut decoded = std::mem::take(&mut self.decoded);
                decoded.clear();
                match base64::engine::general_purpose::STANDARD.decode_vec(data, &mut decoded) {
                    Ok(()) => {
                        self.storm_delivery(conn, &decoded, now_ns);
                        self.inner
                            .message(conn, OpCode::Binary, &decoded, now_ns, out);
                    }
                    Err(_) => self.inner.tally().corrupt += 1,
                }
                self.decoded = decoded;
            }
            // Another server's own event types: not deliveries.
            _ => {}
        }
    }

    fn reopened(&mut self, conn: usize) {
        if let Some(track) = self.tracks.get_mut(conn).and_then(Option::as_mut) {
            let with_position = track.has_position();
            track.reconnected(with_position, &mut self.inner.tally().streams);
        }
    }

    fn stop(&mut self) {
        self.running = false;
        self.inner.stop();
    }

    fn drained(&self, expect: &Expect, open: &[bool]) -> bool {
        self.inner.drained(expect, open)
    }

    fn published(&self) -> Vec<u64> {
        self.inner.published()
    }

    fn tally(&mut self) -> &mut Tally {
        self.inner.tally()
    }

    fn finish(&mut self, expect: &Expect, open_at_go: &[bool]) -> Tally {
        for track in self.tracks.iter_mut().flatten() {
            track.finish(&mut self.inner.tally().streams);
        }
        self.inner.finish(expect, open_at_go)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_drops_every_stream_at_once_and_spreads_the_reopens() {
        let streams = [true, false, true, true, true];
        let storm = Reconnects {
            after_ns: 5_000,
            storm: Some(Storm {
                down_ns: 1_000,
                window_ns: 400,
            }),
        };
        let drops = plan_drops(&streams, Some(storm));
        let got: Vec<(u64, usize, Option<u64>)> =
            drops.iter().map(|d| (d.at, d.conn, d.reopen)).collect();
        assert_eq!(
            got,
            [
                (5_000, 0, Some(6_000)),
                (5_000, 2, Some(6_100)),
                (5_000, 3, Some(6_200)),
                (5_000, 4, Some(6_300)),
            ]
        );
        let spread = plan_drops(
            &streams,
            Some(Reconnects {
                after_ns: 1_000,
                storm: None,
            }),
        );
        assert_eq!(spread.len(), 4);
        assert!(spread
            .iter()
            .all(|d| (1_000..=1_500).contains(&d.at) && d.reopen.is_none() && streams[d.conn]));
        assert!(plan_drops(&streams, None).is_empty());
    }
}
