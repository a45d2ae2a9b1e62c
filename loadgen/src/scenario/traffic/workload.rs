//! The scenario's side of a run: what each thread sends, and how what arrives is checked.

use hdrhistogram::Histogram;
use uringcast::protocol::OpCode;

use super::conn::Conn;
use super::net::Net;

/// What was sent and received, and how it checked; summed over threads for the report.
#[derive(Clone, Debug)]
pub struct Tally {
    /// Messages sent (queued on an open connection).
    pub sent: u64,
    /// Messages received that count (echoes, or deliveries to subscribers).
    pub received: u64,
    /// Messages that should have been received.
    pub expected: u64,
    /// Expected messages never received.
    pub missing: u64,
    /// Messages received more than once.
    pub duplicated: u64,
    /// Messages received after a later one from the same sender.
    pub out_of_order: u64,
    /// Messages whose bytes are not what was sent.
    pub corrupt: u64,
    /// Latency of each checked message, µs.
    pub latency: Histogram<u64>,
    /// The same, since the last progress line (not summed).
    pub interval: Histogram<u64>,
    /// Broadcast over several server addresses, or with `--publisher-url`: the deliveries by
    /// the address each subscriber connected to; empty otherwise.
    pub nodes: Vec<NodeTally>,
    /// `sse`: the streams' positions.
    pub streams: crate::scenario::sse::StreamTally,
}

/// The deliveries to the subscribers of one server address (a "node").
#[derive(Clone, Debug)]
pub struct NodeTally {
    /// The address, as `IP:PORT`.
    pub address: String,
    /// Subscribers planned on this address.
    pub subscribers: u64,
    /// Deliveries these subscribers received (as [`Tally::received`]).
    pub received: u64,
    /// Messages they should have received (as [`Tally::expected`]).
    pub expected: u64,
    /// Expected messages they never received.
    pub missing: u64,
    /// Latency of each checked delivery, µs.
    pub latency: Histogram<u64>,
}

impl NodeTally {
    /// Nothing counted yet on `address`.
    pub fn new(address: String) -> Self {
        Self {
            address,
            subscribers: 0,
            received: 0,
            expected: 0,
            missing: 0,
            latency: new_histogram(),
        }
    }

    /// Adds another count of the same address.
    pub fn merge(&mut self, other: &Self) {
        self.subscribers += other.subscribers;
        self.received += other.received;
        self.expected += other.expected;
        self.missing += other.missing;
        // Same bounds and precision everywhere: adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            sent: 0,
            received: 0,
            expected: 0,
            missing: 0,
            duplicated: 0,
            out_of_order: 0,
            corrupt: 0,
            latency: new_histogram(),
            interval: new_histogram(),
            nodes: Vec::new(),
            streams: crate::scenario::sse::StreamTally::default(),
        }
    }
}

impl Tally {
    /// Records one latency, µs.
    pub fn record(&mut self, micros: u64) {
        self.latency.saturating_record(micros);
        self.interval.saturating_record(micros);
    }

    /// Adds another thread's tally.
    pub fn merge(&mut self, other: &Self) {
        self.sent += other.sent;
        self.received += other.received;
        self.expected += other.expected;
        self.missing += other.missing;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.corrupt += other.corrupt;
        // Same bounds and precision everywhere: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.streams.merge(&other.streams);
        for node in &other.nodes {
            match self.nodes.iter_mut().find(|n| n.address == node.address) {
                Some(mine) => mine.merge(node),
                None => self.nodes.push(node.clone()),
            }
        }
    }

    /// Counts that mean something went wrong.
    pub fn errors(&self) -> u64 {
        self.duplicated + self.out_of_order + self.corrupt + self.streams.errors()
    }
}

/// A new latency histogram: 1 µs to 1 hour at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

/// What the senders sent, known once they all stopped: what the receivers must wait for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// Messages each publisher sent, by publisher id (broadcast); empty for echo.
    pub per_publisher: Vec<u64>,
}

/// One thread's share of a scenario: it decides what to send and checks what arrives.
pub trait Workload: Send + 'static {
    /// Traffic starts; the first sends are due at `start_ns` (`CLOCK_MONOTONIC`).
    fn start(&mut self, start_ns: u64, out: &mut Outbox<'_>);
    /// Queues the sends due by `now_ns`; returns when the next one is due, if any is planned.
    fn due(&mut self, now_ns: u64, out: &mut Outbox<'_>) -> Option<u64>;
    /// A message arrived on local connection `conn` at `now_ns`.
    fn message(
        &mut self,
        conn: usize,
        opcode: OpCode,
        payload: &[u8],
        now_ns: u64,
        out: &mut Outbox<'_>,
    );
    /// No more sends from now on (replies included).
    fn stop(&mut self);
    /// An event (or an id-only block) arrived on event stream `conn` at `now_ns` (`sse`).
    fn event(
        &mut self,
        conn: usize,
        event: &crate::scenario::sse::Event,
        now_ns: u64,
        out: &mut Outbox<'_>,
    ) {
        let _ = (conn, event, now_ns, out);
    }
    /// Local connection `conn` came up again after a reconnect.
    fn reopened(&mut self, conn: usize) {
        let _ = conn;
    }
    /// Everything `expect` implies has arrived on this thread's connections that are still
    /// open (`open[conn]`).
    fn drained(&self, expect: &Expect, open: &[bool]) -> bool;
    /// Messages each publisher of this thread sent, by publisher id (empty for echo).
    fn published(&self) -> Vec<u64>;
    /// The counts so far (for progress lines).
    fn tally(&mut self) -> &mut Tally;
    /// The final counts, `expected` and `missing` computed from `expect`.
    fn finish(&mut self, expect: &Expect, open_at_go: &[bool]) -> Tally;
}

/// The hooks of a scenario's own senders outside the client threads (HTTP publishers).
pub trait Senders {
    /// Traffic starts at `start_ns`.
    fn go(&mut self, start_ns: u64);
    /// Stop sending and wait until every sender has stopped.
    fn stop(&mut self);
    /// What the client threads' publishers sent (`sent_by_threads`), plus the senders' own.
    fn expect(&self, sent_by_threads: &Expect) -> Expect;
    /// Messages the senders sent (accepted by the server).
    fn sent(&self) -> u64;
    /// Sends that failed (requests refused or lost), if the senders count them.
    fn errors(&self) -> u64;
}

/// No senders besides the client threads.
pub struct NoSenders;

impl Senders for NoSenders {
    fn go(&mut self, _: u64) {}
    fn stop(&mut self) {}
    fn expect(&self, sent_by_threads: &Expect) -> Expect {
        sent_by_threads.clone()
    }
    fn sent(&self) -> u64 {
        0
    }
    fn errors(&self) -> u64 {
        0
    }
}

/// Where a [`Workload`] queues frames.
pub struct Outbox<'a> {
    pub(super) net: &'a mut Net,
}

impl Outbox<'_> {
    /// Whether local connection `conn` is open (handshake done, not closing).
    pub fn is_open(&self, conn: usize) -> bool {
        matches!(&self.net.slots[conn].conn, Conn::Open(o) if o.closing.is_none())
    }

    /// Queues one data message on `conn`: the payload, wrapped as the session's protocol
    /// says (`--payload-at`, Socket.IO's events), masked with a fresh key (and compressed with
    /// `--deflate-send` where the connection agreed to it). False if it is not open.
    pub fn send(&mut self, conn: usize, opcode: OpCode, payload: &[u8]) -> bool {
        let Some(spec) = self.net.session.clone() else {
            return self.send_frame(conn, opcode, payload);
        };
        let mut wrapped = std::mem::take(&mut self.net.wrapped);
        let global = self.net.plan.global(conn);
        let opcode = spec.wrap(global, opcode, payload, &mut wrapped);
        let sent = self.send_frame(conn, opcode, &wrapped);
        self.net.wrapped = wrapped;
        sent
    }

    /// Closes `conn` and opens it again at once (an event stream resumes from its last id).
    pub fn reconnect(&mut self, conn: usize) {
        self.net.reconnect_requests.push((conn as u32, None));
    }

    /// Closes `conn` now and opens it again at `at_ns` (`CLOCK_MONOTONIC`; at once if that
    /// has passed), as [`reconnect`](Self::reconnect) does.
    pub fn reconnect_at(&mut self, conn: usize, at_ns: u64) {
        self.net.reconnect_requests.push((conn as u32, Some(at_ns)));
    }

    /// Queues one message on `conn` as it is (a data message already wrapped, or the session's
    /// own), as [`send`](Self::send) does. False if it is not open.
    pub(super) fn send_frame(&mut self, conn: usize, opcode: OpCode, payload: &[u8]) -> bool {
        let Conn::Open(o) = &mut self.net.slots[conn].conn else {
            return false;
        };
        if o.closing.is_some() {
            return false;
        }
        let compression = &mut self.net.compression;
        let frame = match compression.deflater.as_mut() {
            Some(deflater) => o.ws.encode_with(opcode, payload, deflater),
            None => o.ws.encode(opcode, payload),
        };
        let Some(frame) = frame else {
            return false;
        };
        compression.sent(payload, &frame);
        self.net.queue(conn, frame);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge() {
        let mut a = Tally {
            sent: 3,
            ..Tally::default()
        };
        a.record(10);
        let mut b = Tally {
            sent: 4,
            corrupt: 1,
            ..Tally::default()
        };
        b.record(20);
        a.merge(&b);
        assert_eq!(a.sent, 7);
        assert_eq!(a.errors(), 1);
        assert_eq!(a.latency.len(), 2);
    }

    #[test]
    fn nodes_merge_by_address() {
        let node = |address: &str, subscribers, latency: &[u64]| {
            let mut n = NodeTally::new(address.to_owned());
            n.subscribers = subscribers;
            n.received = latency.len() as u64;
            for l in latency {
                n.latency.record(*l).unwrap();
            }
            n
        };
        let mut a = Tally {
            nodes: vec![
                node("127.0.0.1:1", 2, &[10, 20]),
                node("127.0.0.2:1", 1, &[30]),
            ],
            ..Tally::default()
        };
        let b = Tally {
            nodes: vec![
                node("127.0.0.2:1", 3, &[40, 50]),
                node("127.0.0.3:1", 1, &[]),
            ],
            ..Tally::default()
        };
        a.merge(&b);
        let got: Vec<(&str, u64, u64, u64)> = a
            .nodes
            .iter()
            .map(|n| {
                (
                    n.address.as_str(),
                    n.subscribers,
                    n.received,
                    n.latency.len(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1:1", 2, 2, 2),
                ("127.0.0.2:1", 4, 3, 3),
                ("127.0.0.3:1", 1, 0, 0)
            ]
        );
        assert_eq!(a.nodes[1].latency.max(), 50);
    }
}
