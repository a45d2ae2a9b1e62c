//! The `echo` scenario: every connection sends messages and expects each one back, byte for
//! byte, in order.
//!
//! Closed loop (`--inflight P`): each connection keeps P messages in flight, sending the next
//! when an echo arrives; latency runs from the send. Open loop (`--rate R`): R messages per
//! second in total, spread round-robin over the connections on a fixed schedule whatever the
//! server does; latency runs from the scheduled send time, so a server that stalls cannot hide
//! the stall by slowing the sender down (coordinated omission).
//!
//! Each payload carries the connection's global index, a per-connection sequence number and
//! its send time ([`stamp`]). An echo is checked against the record of what was
//! sent: its opcode and every byte must match (else `corrupt`); a sequence number already
//! answered is `duplicated`; one that overtakes an earlier message still in flight is
//! `out_of_order`; messages never answered by the end of the drain are `missing`.

use std::collections::VecDeque;

use uringcast::protocol::OpCode;

use super::stamp::{self, Stamp, Stamper};
use super::traffic::{Expect, Outbox, Plan, Tally, Workload};

/// One message in flight per connection: the classic ping-pong.
pub const DEFAULT_INFLIGHT: u32 = 1;
/// 100 connections.
pub const DEFAULT_CONNECTIONS: u64 = 100;
/// 64-byte messages: the size of a typical small update.
pub const DEFAULT_SIZE: usize = 64;
/// Ten seconds of traffic.
pub const DEFAULT_DURATION_SECS: f64 = 10.0;

/// At most this many sends are scheduled per loop turn, so a thread that fell behind its
/// schedule still reads its receives between batches.
const MAX_SENDS_PER_TURN: u64 = 4096;

/// How the sends are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// Each connection keeps this many messages in flight.
    Closed {
        /// Messages in flight per connection.
        inflight: u32,
    },
    /// Messages per second over all connections, on a fixed schedule.
    Open {
        /// Messages per second in total.
        rate: f64,
    },
}

/// One thread's share of an echo run.
pub struct EchoWork {
    plan: Plan,
    pace: Pace,
    opcode: OpCode,
    stamper: Stamper,
    conns: Vec<EchoConn>,
    tally: Tally,
    running: bool,
    /// Open loop: the schedule's start, its interval, messages scheduled so far, and the
    /// connection the next one goes to.
    start_ns: u64,
    interval_ns: f64,
    scheduled: u64,
    next_conn: usize,
    scratch: Vec<u8>,
}

#[derive(Default)]
struct EchoConn {
    next_seq: u64,
    /// `(seq, sent_ns)` of each message not answered yet, in send order.
    in_flight: VecDeque<(u64, u64)>,
}

impl EchoConn {
    /// Checks one echo of connection `id` against what is in flight and counts it; returns
    /// whether it answered a message in flight (so the closed loop sends another).
    #[allow(clippy::too_many_arguments)]
    fn check(
        &mut self,
        stamper: &Stamper,
        id: u64,
        sent_opcode: OpCode,
        opcode: OpCode,
        payload: &[u8],
        now_ns: u64,
        tally: &mut Tally,
    ) -> bool {
        tally.received += 1;
        let stamp = stamper.read(payload).filter(|s| s.id == id);
        let position = stamp.and_then(|s| self.in_flight.iter().position(|(seq, _)| *seq == s.seq));
        match (stamp, position) {
            (Some(s), Some(position)) => {
                let (seq, sent_ns) = self.in_flight.remove(position).expect("found above");
                if position > 0 {
                    tally.out_of_order += 1;
                }
                let sent = Stamp { id, seq, sent_ns };
                if opcode == sent_opcode && s.sent_ns == sent_ns && stamper.matches(sent, payload) {
                    tally.record(stamp::micros_between(sent_ns, now_ns));
                } else {
                    tally.corrupt += 1;
                }
                true
            }
            (Some(s), None) if s.seq < self.next_seq => {
                tally.duplicated += 1;
                false
            }
            _ => {
                // Unreadable, or not a message of ours: take it as the answer to the oldest
                // one, or the closed loop would lose a slot.
                tally.corrupt += 1;
                self.in_flight.pop_front().is_some()
            }
        }
    }
}

impl EchoWork {
    /// A thread's share: `threads` threads pace `pace` between them.
    pub fn new(plan: Plan, pace: Pace, opcode: OpCode, stamper: Stamper) -> Self {
        let interval_ns = match pace {
            Pace::Open { rate } => 1e9 * plan.step as f64 / rate,
            Pace::Closed { .. } => 0.0,
        };
        Self {
            plan,
            pace,
            opcode,
            conns: (0..plan.count).map(|_| EchoConn::default()).collect(),
            stamper,
            tally: Tally::default(),
            running: false,
            start_ns: 0,
            interval_ns,
            scheduled: 0,
            next_conn: 0,
            scratch: Vec::new(),
        }
    }

    /// Sends the next message on `conn`, stamped `sent_ns`.
    fn send(&mut self, conn: usize, sent_ns: u64, out: &mut Outbox<'_>) -> bool {
        let c = &mut self.conns[conn];
        let stamp = Stamp {
            id: self.plan.global(conn),
            seq: c.next_seq,
            sent_ns,
        };
        self.stamper.write(stamp, &mut self.scratch);
        if !out.send(conn, self.opcode, &self.scratch) {
            return false;
        }
        c.next_seq += 1;
        c.in_flight.push_back((stamp.seq, sent_ns));
        self.tally.sent += 1;
        true
    }

    /// Closed loop: one answered, one more sent.
    fn replenish(&mut self, conn: usize, out: &mut Outbox<'_>) {
        if self.running && matches!(self.pace, Pace::Closed { .. }) {
            self.send(conn, stamp::now_ns(), out);
        }
    }
}

impl Workload for EchoWork {
    fn start(&mut self, start_ns: u64, out: &mut Outbox<'_>) {
        self.running = true;
        self.start_ns = start_ns;
        if let Pace::Closed { inflight } = self.pace {
            let now = stamp::now_ns().max(start_ns);
            for conn in 0..self.conns.len() {
                if out.is_open(conn) {
                    for _ in 0..inflight {
                        self.send(conn, now, out);
                    }
                }
            }
        }
    }

    fn due(&mut self, now_ns: u64, out: &mut Outbox<'_>) -> Option<u64> {
        if !self.running || matches!(self.pace, Pace::Closed { .. }) || self.conns.is_empty() {
            return None;
        }
        let (start_ns, interval_ns) = (self.start_ns, self.interval_ns);
        let due = move |k: u64| start_ns + (k as f64 * interval_ns) as u64;
        let mut batch = 0;
        while due(self.scheduled) <= now_ns && batch < MAX_SENDS_PER_TURN {
            let sent_ns = due(self.scheduled);
            // The next open connection, round-robin; none open: nothing more to schedule.
            let mut tries = 0;
            while !out.is_open(self.next_conn) {
                self.next_conn = (self.next_conn + 1) % self.conns.len();
                tries += 1;
                if tries > self.conns.len() {
                    return None;
                }
            }
            let conn = self.next_conn;
            self.next_conn = (self.next_conn + 1) % self.conns.len();
            self.send(conn, sent_ns, out);
            self.scheduled += 1;
            batch += 1;
        }
        Some(due(self.scheduled))
    }

    fn message(
        &mut self,
        conn: usize,
        opcode: OpCode,
        payload: &[u8],
        now_ns: u64,
        out: &mut Outbox<'_>,
    ) {
        let id = self.plan.global(conn);
        let answered = self.conns[conn].check(
            &self.stamper,
            id,
            self.opcode,
            opcode,
            payload,
            now_ns,
            &mut self.tally,
        );
        if answered {
            self.replenish(conn, out);
        }
    }

    fn stop(&mut self) {
        self.running = false;
    }

    fn drained(&self, _: &Expect, open: &[bool]) -> bool {
        self.conns
            .iter()
            .zip(open)
            .all(|(c, open)| !open || c.in_flight.is_empty())
    }

    fn published(&self) -> Vec<u64> {
        Vec::new()
    }

    fn tally(&mut self) -> &mut Tally {
        &mut self.tally
    }

    fn finish(&mut self, _: &Expect, _: &[bool]) -> Tally {
        let mut tally = self.tally.clone();
        tally.expected = tally.sent;
        tally.missing = self.conns.iter().map(|c| c.in_flight.len() as u64).sum();
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::stamp::Encoding;

    #[test]
    fn intervals_split_the_rate_over_threads() {
        let two = Plan {
            first: 1,
            step: 2,
            count: 5,
        };
        let w = EchoWork::new(
            two,
            Pace::Open { rate: 1000.0 },
            OpCode::Binary,
            Stamper::new(Encoding::Binary, 64),
        );
        assert_eq!(w.interval_ns, 2e6);
    }

    /// Echo checks without a socket: each case counted once, in the right column.
    #[test]
    fn checks_echoes() {
        let stamper = Stamper::new(Encoding::Binary, 32);
        let mut conn = EchoConn {
            next_seq: 3,
            in_flight: [(0, 100), (1, 200), (2, 300)].into(),
        };
        let payload = |seq, sent_ns| {
            let mut p = Vec::new();
            stamper.write(
                Stamp {
                    id: 9,
                    seq,
                    sent_ns,
                },
                &mut p,
            );
            p
        };
        let mut tally = Tally::default();
        let mut check = |opcode, p: &[u8]| {
            conn.check(
                &stamper,
                9,
                OpCode::Binary,
                opcode,
                p,
                1_000_000,
                &mut tally,
            )
        };
        assert!(check(OpCode::Binary, &payload(1, 200)), "overtakes seq 0");
        assert!(check(OpCode::Binary, &payload(0, 100)));
        assert!(!check(OpCode::Binary, &payload(0, 100)), "a duplicate");
        let mut bad = payload(2, 300);
        bad[30] ^= 1;
        assert!(
            check(OpCode::Binary, &bad),
            "corrupt filler still answers seq 2"
        );
        assert!(!check(OpCode::Binary, &payload(7, 700)), "never sent");
        assert_eq!(tally.received, 5);
        assert_eq!(tally.out_of_order, 1);
        assert_eq!(tally.duplicated, 1);
        assert_eq!(tally.corrupt, 2);
        assert_eq!(tally.latency.len(), 2);
        assert!(conn.in_flight.is_empty());
        // The wrong opcode, or another connection's id, is corrupt too.
        conn.in_flight.push_back((3, 400));
        conn.next_seq = 4;
        let mut p = Vec::new();
        stamper.write(
            Stamp {
                id: 9,
                seq: 3,
                sent_ns: 400,
            },
            &mut p,
        );
        let mut tally = Tally::default();
        assert!(conn.check(
            &stamper,
            9,
            OpCode::Binary,
            OpCode::Text,
            &p,
            500,
            &mut tally
        ));
        assert_eq!(tally.corrupt, 1);
    }
}
