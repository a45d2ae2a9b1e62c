//! The `broadcast` scenario: N subscribers on a topic (the URL's path), K publishers sending R
//! messages per second in total, and every delivery checked.
//!
//! Publishers are WebSocket connections on the same path (in uringcast's `--mode broadcast`
//! every message a connection sends is published to its path, the publisher included), or
//! with `--publish-url` HTTP clients that `POST` each message to a publish endpoint. With
//! `--publishers 0` nobody here publishes: an outside publisher (the `floor_server` example, or
//! another process) does, and each subscriber expects every sequence number between the first
//! and the last it saw from each publisher, or with `--expect N` all N of publisher 0's.
//!
//! Publishing is open loop by default: message `s` of publisher `p` is due at
//! `start + (s + p / K) * K / R`, whatever the server does, and each payload carries that
//! scheduled time; a subscriber's latency runs from it (coordinated omission). With
//! `--inflight P` it is closed loop ([`closed_loop`]): P publishes in flight over the K
//! WebSocket publishers, the next sent as soon as one has reached every open subscriber (or
//! was given up on), and each payload carries its actual send time. Each subscriber
//! keeps, per publisher, a 512-message window of the sequence numbers it received: a number
//! seen twice is `duplicated`, one below the highest seen is `out_of_order`, a payload that is
//! not exactly what its stamp says is `corrupt`, and `missing` is what was published while the
//! subscriber was open minus what it received once. Only subscribers count deliveries: what a
//! publisher receives (its own messages) is parsed and dropped.

mod closed_loop;
mod http;
mod seq_window;

use std::sync::Arc;

use uringcast::protocol::OpCode;

use self::closed_loop::Window;
pub use self::closed_loop::{ClosedLoop, ClosedLoopTally, DEFAULT_PUBLISH_TIMEOUT_SECS};
pub use self::http::{HttpSenders, PublishUrl};
pub use self::seq_window::{Seen, SeqWindow};
use super::stamp::{self, Stamp, Stamper};
use super::traffic::{target_of, Expect, NodeTally, Outbox, Plan, Tally, Workload};

/// 1,000 subscribers.
pub const DEFAULT_SUBSCRIBERS: u64 = 1000;
/// One publisher.
pub const DEFAULT_PUBLISHERS: u64 = 1;
/// Ten publishes per second.
pub const DEFAULT_RATE: f64 = 10.0;
/// 64-byte messages.
pub const DEFAULT_SIZE: usize = 64;
/// Ten seconds of traffic.
pub const DEFAULT_DURATION_SECS: f64 = 10.0;
/// Publisher ids an outside publisher may use (`--publishers 0`); higher ids are corrupt.
pub const MAX_EXTERNAL_PUBLISHERS: u64 = 64;

/// With an outside publisher, the drain ends after this long without a delivery.
const QUIET_NS: u64 = 250_000_000;
/// Sends scheduled per loop turn at most.
const MAX_SENDS_PER_TURN: u64 = 4096;
/// Closed loop over several threads: how often a publisher's thread looks for publishes that
/// other threads' subscribers completed (its ring sleeps until then if nothing else arrives).
const REMOTE_POLL_NS: u64 = 50_000;
/// Closed loop: how often a thread counts its subscribers that closed.
const RECOUNT_NS: u64 = 20_000_000;

/// How the WebSocket publishers pace their sends.
#[derive(Clone, Debug)]
pub enum Pace {
    /// `--rate R`: messages per second over all publishers, on a fixed schedule.
    Open {
        /// R.
        rate: f64,
    },
    /// `--inflight P`: publishes in flight in all, shared by every thread.
    Closed(Arc<ClosedLoop>),
}

/// Who publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Publishing {
    /// K WebSocket connections on the topic, after the subscribers.
    WebSocket {
        /// K.
        publishers: u64,
    },
    /// K HTTP clients posting to the publish endpoint.
    Http {
        /// K.
        publishers: u64,
    },
    /// Someone else.
    External {
        /// `--expect N`: what it sends, if known.
        expect: Option<u64>,
    },
}

impl Publishing {
    /// Publishers whose sends this run knows (0 for an outside one).
    pub fn publishers(&self) -> u64 {
        match self {
            Self::WebSocket { publishers } | Self::Http { publishers } => *publishers,
            Self::External { .. } => 0,
        }
    }
}

/// One thread's share of a broadcast run.
pub struct BroadcastWork {
    publishing: Publishing,
    stamper: Stamper,
    /// Per local connection: the subscriber's windows, by publisher id; `None` for a publisher.
    subs: Vec<Option<Vec<SeqWindow>>>,
    /// With [`Nodes`]: per local connection, the index of its node in `tally.nodes`.
    node_of: Vec<usize>,
    /// This thread's WebSocket publishers.
    pubs: Vec<Publisher>,
    /// The schedule's interval for one publisher, ns (open loop).
    interval_ns: f64,
    /// Closed loop: the shared counts; the index in `pubs` of each local publisher by id; the
    /// subscribers of this thread last found open, and when to count them again.
    closed: Option<Arc<ClosedLoop>>,
    local_pubs: Vec<Option<usize>>,
    open_subs: u64,
    recount_ns: u64,
    /// Other threads' subscribers may complete this thread's publishes.
    remote: bool,
    start_ns: u64,
    /// Open loop: nothing due this long after the start or later is sent, so that R messages/s
    /// for D seconds is exactly R x D messages (rounded up) however late the stop arrives.
    window_ns: Option<u64>,
    running: bool,
    last_delivery_ns: u64,
    tally: Tally,
    scratch: Vec<u8>,
}

struct Publisher {
    conn: usize,
    id: u64,
    /// Messages sent so far: the next sequence number.
    seq: u64,
    /// The schedule's offset of this publisher, so K publishers interleave evenly.
    offset_ns: f64,
    /// Closed loop: its publishes in flight.
    window: Option<Window>,
}

/// The server addresses subscribers spread over, to count deliveries by node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nodes {
    /// The run's target addresses (`IP:PORT`), in order.
    pub addresses: Vec<String>,
    /// Source addresses (0: the kernel picks): with the targets, they decide each connection's.
    pub sources: usize,
}

impl BroadcastWork {
    /// A thread's share: global connections below `subscribers` subscribe, the next ones
    /// publish (when `publishing` is over WebSocket) as `pace` says. With `nodes`, deliveries
    /// are also counted by the address each subscriber connects to.
    pub fn new(
        plan: Plan,
        subscribers: u64,
        publishing: Publishing,
        pace: Pace,
        stamper: Stamper,
        nodes: Option<&Nodes>,
    ) -> Self {
        let k = publishing.publishers().max(1);
        let (interval_ns, closed) = match pace {
            Pace::Open { rate } => (1e9 * k as f64 / rate, None),
            Pace::Closed(shared) => (0.0, Some(shared)),
        };
        let mut local_pubs = Vec::new();
        let mut subs = Vec::with_capacity(plan.count as usize);
        let mut pubs = Vec::new();
        let mut tally = Tally::default();
        let mut node_of = Vec::new();
        if let Some(nodes) = nodes {
            tally.nodes = nodes
                .addresses
                .iter()
                .cloned()
                .map(NodeTally::new)
                .collect();
        }
        for local in 0..plan.count as usize {
            let global = plan.global(local);
            if let Some(nodes) = nodes {
                let node = target_of(global, nodes.sources, nodes.addresses.len());
                if global < subscribers {
                    tally.nodes[node].subscribers += 1;
                }
                node_of.push(node);
            }
            if global < subscribers {
                subs.push(Some(Vec::new()));
            } else {
                subs.push(None);
                let id = global - subscribers;
                if local_pubs.len() <= id as usize {
                    local_pubs.resize(id as usize + 1, None);
                }
                local_pubs[id as usize] = Some(pubs.len());
                pubs.push(Publisher {
                    conn: local,
                    id,
                    seq: 0,
                    offset_ns: interval_ns * id as f64 / k as f64,
                    window: closed.as_ref().map(|c| c.window(id)),
                });
            }
        }
        let open_subs = subs.iter().filter(|s| s.is_some()).count() as u64;
        Self {
            publishing,
            stamper,
            subs,
            node_of,
            pubs,
            interval_ns,
            closed,
            local_pubs,
            open_subs,
            recount_ns: 0,
            remote: plan.step > 1,
            start_ns: 0,
            window_ns: None,
            running: false,
            last_delivery_ns: 0,
            tally,
            scratch: Vec::new(),
        }
    }

    /// Open loop: publish only what is due within `window` of the start.
    #[must_use]
    pub fn publishing_for(mut self, window: std::time::Duration) -> Self {
        self.window_ns = Some(u64::try_from(window.as_nanos()).unwrap_or(u64::MAX));
        self
    }

    fn due_of(&self, p: &Publisher) -> u64 {
        self.start_ns + (p.offset_ns + p.seq as f64 * self.interval_ns) as u64
    }

    /// Closed loop: every publisher retires what finished and sends what it may; returns when
    /// to look again.
    fn due_closed(&mut self, now_ns: u64, out: &mut Outbox<'_>) -> Option<u64> {
        if now_ns < self.start_ns {
            return Some(self.start_ns);
        }
        if now_ns >= self.recount_ns {
            self.recount(out);
            self.recount_ns = now_ns + RECOUNT_NS;
        }
        let mut next: Option<u64> = None;
        for i in 0..self.pubs.len() {
            if let Some(deadline) = self.pump(i, now_ns, out) {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            }
        }
        if self.remote && next.is_some() {
            next = next.map(|n| n.min(now_ns + REMOTE_POLL_NS));
        }
        next
    }

    /// Closed loop: retires publisher `i`'s finished publishes, oldest first, and sends as many
    /// as its window takes; returns when its oldest in flight times out, if any is.
    fn pump(&mut self, i: usize, now_ns: u64, out: &mut Outbox<'_>) -> Option<u64> {
        let shared = self.closed.as_deref()?;
        let p = &mut self.pubs[i];
        let window = p.window.as_mut()?;
        window.retire(shared, p.seq, now_ns);
        if self.running && now_ns >= self.start_ns && out.is_open(p.conn) {
            loop {
                // The payload carries the actual send time: there is no schedule.
                let sent_ns = stamp::now_ns();
                if !window.admit(shared, p.seq, sent_ns) {
                    break;
                }
                let stamp = Stamp {
                    id: p.id,
                    seq: p.seq,
                    sent_ns,
                };
                self.stamper.write(stamp, &mut self.scratch);
                if out.send(p.conn, self.stamper.opcode(), &self.scratch) {
                    self.tally.sent += 1;
                }
                p.seq += 1;
            }
        }
        window.deadline(shared, p.seq)
    }

    /// Closed loop: tells the other threads how many of this thread's subscribers closed since
    /// the last count, so that no publish waits for them.
    fn recount(&mut self, out: &Outbox<'_>) {
        let Some(shared) = self.closed.as_deref() else {
            return;
        };
        let open = self
            .subs
            .iter()
            .enumerate()
            .filter(|(conn, sub)| sub.is_some() && out.is_open(*conn))
            .count() as u64;
        if open < self.open_subs {
            shared.subscribers_closed(self.open_subs - open);
            self.open_subs = open;
        }
    }

    /// The most publisher ids a subscriber tracks.
    fn id_limit(&self) -> u64 {
        match self.publishing {
            Publishing::External { .. } => MAX_EXTERNAL_PUBLISHERS,
            _ => self.publishing.publishers(),
        }
    }
}

impl Workload for BroadcastWork {
    fn start(&mut self, start_ns: u64, out: &mut Outbox<'_>) {
        self.start_ns = start_ns;
        self.running = true;
        self.last_delivery_ns = start_ns;
        if self.closed.is_some() {
            self.recount(out);
        }
    }

    fn due(&mut self, now_ns: u64, out: &mut Outbox<'_>) -> Option<u64> {
        if !self.running {
            return None;
        }
        if self.closed.is_some() {
            return self.due_closed(now_ns, out);
        }
        let mut next: Option<u64> = None;
        let end_ns = self
            .window_ns
            .map_or(u64::MAX, |w| self.start_ns.saturating_add(w));
        for i in 0..self.pubs.len() {
            let mut batch = 0;
            loop {
                let p = &self.pubs[i];
                let due = self.due_of(p);
                if due >= end_ns {
                    // This publisher's schedule is over.
                    break;
                }
                if due > now_ns || batch >= MAX_SENDS_PER_TURN {
                    next = Some(next.map_or(due, |n| n.min(due)));
                    break;
                }
                if !out.is_open(p.conn) {
                    // A lost publisher publishes no more; its sends so far are what counts.
                    break;
                }
                let stamp = Stamp {
                    id: p.id,
                    seq: p.seq,
                    sent_ns: due,
                };
                self.stamper.write(stamp, &mut self.scratch);
                if out.send(p.conn, self.stamper.opcode(), &self.scratch) {
                    self.tally.sent += 1;
                }
                self.pubs[i].seq += 1;
                batch += 1;
            }
        }
        next
    }

    fn message(
        &mut self,
        conn: usize,
        _: OpCode,
        payload: &[u8],
        now_ns: u64,
        out: &mut Outbox<'_>,
    ) {
        let limit = self.id_limit();
        let Some(windows) = self.subs[conn].as_mut() else {
            // A publisher hearing its own messages: not a delivery.
            return;
        };
        self.tally.received += 1;
        let node = self.node_of.get(conn).copied();
        if let Some(n) = node {
            self.tally.nodes[n].received += 1;
        }
        self.last_delivery_ns = now_ns;
        let Some(stamp) = self
            .stamper
            .read(payload)
            .filter(|s| s.id < limit && self.stamper.matches(*s, payload))
        else {
            self.tally.corrupt += 1;
            return;
        };
        let id = stamp.id as usize;
        if windows.len() <= id {
            windows.resize_with(id + 1, SeqWindow::default);
        }
        match windows[id].record(stamp.seq) {
            Seen::Duplicate => self.tally.duplicated += 1,
            Seen::New { late } => {
                if late {
                    self.tally.out_of_order += 1;
                }
                let micros = stamp::micros_between(stamp.sent_ns, now_ns);
                self.tally.record(micros);
                if let Some(n) = node {
                    self.tally.nodes[n].latency.saturating_record(micros);
                }
                if let Some(shared) = &self.closed {
                    shared.delivered(stamp.id, stamp.seq);
                    // Perhaps the last delivery of a local publisher's publish: if so, its next
                    // goes now rather than at the next loop turn.
                    if let Some(&Some(i)) = self.local_pubs.get(id) {
                        self.pump(i, now_ns, out);
                    }
                }
            }
        }
    }

    fn stop(&mut self) {
        self.running = false;
    }

    fn drained(&self, expect: &Expect, open: &[bool]) -> bool {
        let owed = match &self.publishing {
            Publishing::External { expect: None } => {
                return stamp::now_ns().saturating_sub(self.last_delivery_ns) >= QUIET_NS;
            }
            Publishing::External { expect: Some(n) } => std::slice::from_ref(n),
            _ => &expect.per_publisher[..],
        };
        self.subs.iter().zip(open).all(|(sub, open)| match sub {
            Some(windows) if *open => owed
                .iter()
                .enumerate()
                .all(|(id, sent)| windows.get(id).map_or(0, SeqWindow::unique) >= *sent),
            _ => true,
        })
    }

    fn published(&self) -> Vec<u64> {
        let mut sent = vec![0; self.publishing.publishers() as usize];
        for p in &self.pubs {
            if let Some(s) = sent.get_mut(p.id as usize) {
                *s = p.seq;
            }
        }
        sent
    }

    fn tally(&mut self) -> &mut Tally {
        &mut self.tally
    }

    fn finish(&mut self, expect: &Expect, open_at_go: &[bool]) -> Tally {
        let mut tally = self.tally.clone();
        // (expected, unique) of the whole thread, then of each node.
        let mut total = (0, 0);
        let mut by_node = vec![(0, 0); tally.nodes.len()];
        for (conn, (sub, open)) in self.subs.iter().zip(open_at_go).enumerate() {
            let Some(windows) = sub else { continue };
            // A subscriber that was not open at Go is expected to have nothing, and what it
            // got anyway does not make up for what another one missed.
            if !open {
                continue;
            }
            let unique = windows.iter().map(SeqWindow::unique).sum::<u64>();
            let expected = match self.publishing {
                Publishing::External { expect: None } => {
                    windows.iter().map(SeqWindow::span).sum::<u64>()
                }
                Publishing::External { expect: Some(n) } => n,
                _ => expect.per_publisher.iter().sum::<u64>(),
            };
            let node = self.node_of.get(conn).and_then(|n| by_node.get_mut(*n));
            for count in std::iter::once(&mut total).chain(node) {
                count.0 += expected;
                count.1 += unique;
            }
        }
        tally.expected = total.0;
        tally.missing = total.0.saturating_sub(total.1);
        for (node, (expected, unique)) in tally.nodes.iter_mut().zip(by_node) {
            node.expected = expected;
            node.missing = expected.saturating_sub(unique);
        }
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_interleave_and_subscribers_come_first() {
        let stamper = Stamper::new(super::super::stamp::Encoding::Binary, 64);
        // 4 connections on one thread: 2 subscribers, 2 publishers, 100 messages/s in total.
        let plan = Plan {
            first: 0,
            step: 1,
            count: 4,
        };
        let w = BroadcastWork::new(
            plan,
            2,
            Publishing::WebSocket { publishers: 2 },
            Pace::Open { rate: 100.0 },
            stamper,
            None,
        );
        assert_eq!(w.subs.iter().filter(|s| s.is_some()).count(), 2);
        assert_eq!(w.pubs.len(), 2);
        assert_eq!(w.interval_ns, 2e7);
        assert_eq!(w.pubs[1].offset_ns, 1e7);
        assert_eq!(w.published(), vec![0, 0]);
    }

    #[test]
    fn deliveries_count_by_the_node_each_subscriber_connects_to() {
        let stamper = Stamper::new(super::super::stamp::Encoding::Binary, 64);
        // One thread: 5 subscribers over 2 addresses (0, 1, 0, 1, 0), then a publisher.
        let plan = Plan {
            first: 0,
            step: 1,
            count: 6,
        };
        let nodes = Nodes {
            addresses: vec!["127.0.0.1:9".into(), "127.0.0.2:9".into()],
            sources: 0,
        };
        let mut w = BroadcastWork::new(
            plan,
            5,
            Publishing::WebSocket { publishers: 1 },
            Pace::Open { rate: 100.0 },
            stamper,
            Some(&nodes),
        );
        let subscribers: Vec<u64> = w.tally.nodes.iter().map(|n| n.subscribers).collect();
        assert_eq!(subscribers, [3, 2]);
        assert_eq!(w.node_of, [0, 1, 0, 1, 0, 1]);
        // The publisher sent 4; subscriber 0 got them all, 1 got 3, 2 got 2 and closed before
        // traffic (nothing expected of it), 3 got none, 4 got 4.
        for (conn, got) in [(0, 4), (1, 3), (2, 2), (4, 4)] {
            let windows = w.subs[conn].as_mut().unwrap();
            windows.push(SeqWindow::default());
            for seq in 0..got {
                windows[0].record(seq);
            }
        }
        let expect = Expect {
            per_publisher: vec![4],
        };
        let tally = w.finish(&expect, &[true, true, false, true, true, true]);
        assert_eq!((tally.expected, tally.missing), (16, 5));
        let by_node: Vec<(u64, u64)> = tally
            .nodes
            .iter()
            .map(|n| (n.expected, n.missing))
            .collect();
        // Node 0: subscribers 0, 2 (closed: not counted), 4. Node 1: subscribers 1 and 3.
        assert_eq!(by_node, [(8, 0), (8, 5)]);
    }
    #[test]
    fn an_outside_publisher_with_expect_owes_every_subscriber_all_n() {
        let stamper = Stamper::new(super::super::stamp::Encoding::Binary, 64);
        let plan = Plan {
            first: 0,
            step: 1,
            count: 3,
        };
        let work = |expect| {
            BroadcastWork::new(
                plan,
                3,
                Publishing::External { expect },
                Pace::Open { rate: 1.0 },
                stamper.clone(),
                None,
            )
        };
        // Subscriber 0 got 0, 1 and 2; subscriber 1 got 0 and 1 (the last never came);
        // subscriber 2 got nothing.
        let received = |w: &mut BroadcastWork| {
            for (conn, got) in [(0, 3), (1, 2)] {
                let windows = w.subs[conn].as_mut().unwrap();
                windows.push(SeqWindow::default());
                for seq in 0..got {
                    windows[0].record(seq);
                }
            }
        };
        let nothing = Expect {
            per_publisher: Vec::new(),
        };
        let open = [true, true, true];

        // Without --expect only the gaps between what arrived count: nothing is missing.
        let mut blind = work(None);
        received(&mut blind);
        let tally = blind.finish(&nothing, &open);
        assert_eq!((tally.expected, tally.missing), (5, 0));

        // With --expect 3 every subscriber owes 3, and the drain waits for them.
        let mut owed = work(Some(3));
        received(&mut owed);
        assert!(!owed.drained(&nothing, &open));
        let tally = owed.finish(&nothing, &open);
        assert_eq!((tally.expected, tally.missing), (9, 4));
        assert!(owed.drained(&nothing, &[true, false, false]));
    }
}
