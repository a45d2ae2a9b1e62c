//! The `sse` scenario: N subscribers each holding one Server-Sent Events stream of a topic,
//! publishers as in [`broadcast`](super::broadcast) (WebSocket connections or HTTP POSTs), and
//! every event checked twice: by its id, a position `EPOCH:OFFSET` that must follow the last
//! ([`position`]), and by its payload's stamp, as a broadcast delivery is (loss, repeats,
//! order, content, latency from the publish).
//!
//! With `--reconnect-after S` each stream closes once, at a time spread over `[S, 1.5 S]`
//! after the traffic starts, and opens again with `Last-Event-ID`: the first event after it
//! says whether the stream recovered exactly, was reset, or lost events silently.

mod parser;
pub mod position;

use base64::Engine as _;
use uringcast::protocol::OpCode;

pub use self::parser::{Event, Limits, Parser, Step};
pub use self::position::StreamTally;
use self::position::Track;
use super::broadcast::BroadcastWork;
use super::traffic::{Expect, Outbox, Plan, Tally, Workload};

/// One thread's share of an `sse` run: a broadcast run whose subscribers read streams.
pub struct SseWork {
    inner: BroadcastWork,
    /// Per local connection: the stream's position; `None` for a publisher.
    tracks: Vec<Option<Track>>,
    /// `--reconnect-after`: the streams' drops still to come, (ns after the start, local
    /// connection), latest first.
    drops: Vec<(u64, usize)>,
    start_ns: u64,
    running: bool,
    decoded: Vec<u8>,
}

impl SseWork {
    /// A thread's share: global connections below `subscribers` are streams, `inner` checks
    /// their payloads and drives the publishers. With `reconnect_after_ns`, each stream drops
    /// once at a random time in `[after, 1.5 after]` from the start.
    pub fn new(
        inner: BroadcastWork,
        plan: Plan,
        subscribers: u64,
        reconnect_after_ns: Option<u64>,
    ) -> Self {
        let streams = (0..plan.count as usize).map(|local| plan.global(local) < subscribers);
        let tracks = streams.clone().map(|s| s.then(Track::default)).collect();
        let mut drops: Vec<(u64, usize)> = streams
            .enumerate()
            .filter_map(|(conn, s)| {
                let after = reconnect_after_ns.filter(|_| s)?;
                Some((
                    after + (after as f64 * rand::random::<f64>() / 2.0) as u64,
                    conn,
                ))
            })
            .collect();
        drops.sort_unstable_by(|a, b| b.cmp(a));
        Self {
            inner,
            tracks,
            drops,
            start_ns: 0,
            running: false,
            decoded: Vec::new(),
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
        while let Some(&(after, conn)) = self.drops.last() {
            let at = self.start_ns + after;
            if at > now_ns {
                next = Some(next.map_or(at, |n| n.min(at)));
                break;
            }
            self.drops.pop();
            if out.is_open(conn) {
                out.reconnect(conn);
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
            "" | "message" => self.inner.message(conn, OpCode::Text, data, now_ns, out),
            "binary" => {
                let mut decoded = std::mem::take(&mut self.decoded);
                decoded.clear();
                match base64::engine::general_purpose::STANDARD.decode_vec(data, &mut decoded) {
                    Ok(()) => self
                        .inner
                        .message(conn, OpCode::Binary, &decoded, now_ns, out),
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
