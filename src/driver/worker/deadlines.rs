//! Deadlines: the handshake, drain and ping timers of each connection on the wheel.

use std::time::{Duration, Instant};

use tracing::debug;

use super::Worker;
use crate::driver::conn::{Ending, Stage};
use crate::driver::timer::TimerEntry;
use crate::driver::Service;
use crate::protocol::CloseState;

/// Entries the list of due timers keeps room for between ticks.
const DUE_CAPACITY: usize = 1024;

impl<S: Service> Worker<S> {
    pub(super) fn fire_timers(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        self.wheel.advance(now, &mut due);
        for entry in due.drain(..) {
            let key = entry.key as usize;
            let current = self
                .conns
                .get(key)
                .is_some_and(|c| c.deadline == entry.tick);
            if current {
                self.on_deadline(key, now);
            }
        }
        // Keep room for an ordinary tick's worth, not for the largest burst ever seen.
        due.shrink_to(DUE_CAPACITY);
        self.due = due;
    }

    pub(super) fn on_deadline(&mut self, key: usize, now: Instant) {
        let conn = &mut self.conns[key];
        conn.deadline = crate::driver::timer::NEVER;
        let close_state = match &conn.stage {
            Stage::Open(ws) => Some(ws.close_state()),
            // A stream is open until it ends: its deadline is the next comment line.
            Stage::Stream => Some(CloseState::Open),
            Stage::Handshake(..) | Stage::Http { .. } | Stage::Answered => None,
        };
        match (conn.ending, close_state) {
            (Ending::Teardown, _) => {}
            // Handshake timeout, flush or linger over, or our close unanswered.
            (Ending::Flush | Ending::Linger, _)
            | (Ending::No, None | Some(CloseState::CloseSent | CloseState::Closed)) => {
                debug!(key, "deadline passed; dropping the connection");
                self.teardown(key);
            }
            (Ending::No, Some(CloseState::Open)) => self.on_ping_deadline(key, now),
        }
    }

    /// Pings a connection idle for an interval (a WebSocket ping, or the service's own text
    /// ping); closes it (1001, or the service's code) one interval after an unanswered ping.
    pub(super) fn on_ping_deadline(&mut self, key: usize, now: Instant) {
        let Some(interval) = self.ping_ticks else {
            return;
        };
        let interval_ticks = self.wheel.deadline(now, interval) - self.wheel.tick_at(now);
        let now_tick = self.wheel.tick_at(now);
        let conn = &mut self.conns[key];
        if matches!(conn.stage, Stage::Stream) {
            // Keep proxies from closing an idle stream: a comment line every interval. A
            // client that has gone shows as a failed send or a full backlog.
            if !conn.queue.push(
                bytes::Bytes::from_static(crate::sse::PING),
                self.config.max_backlog_bytes,
            ) {
                self.teardown(key);
                return;
            }
            self.mark_dirty(key);
            self.set_deadline(key, now, interval);
            return;
        }
        let Stage::Open(ws) = &mut conn.stage else {
            return;
        };
        let idle_since = conn.last_recv_tick;
        if now_tick < idle_since + interval_ticks && !conn.ping_outstanding {
            // Heard from recently: check again one interval after that.
            self.set_deadline_tick(key, idle_since + interval_ticks);
            return;
        }
        let (text_ping, keepalive) = &self.keepalive;
        if conn.ping_outstanding {
            debug!(
                key,
                code = keepalive.close_code.0,
                "ping unanswered; closing"
            );
            if let Some(frame) = ws.close(keepalive.close_code, keepalive.close_reason) {
                conn.queue.push_unbounded(frame);
            }
            self.mark_dirty(key);
            self.set_deadline(key, now, self.config.drain_timeout);
        } else if let Some(frame) = text_ping
            .clone()
            .filter(|_| ws.close_state() == CloseState::Open)
        {
            conn.queue.push_unbounded(frame);
            conn.ping_outstanding = true;
            self.mark_dirty(key);
            self.set_deadline(key, now, interval);
        } else if let Some(frame) = ws.ping(b"") {
            conn.queue.push_unbounded(frame);
            conn.ping_outstanding = true;
            self.mark_dirty(key);
            self.set_deadline(key, now, interval);
        }
    }

    pub(super) fn set_deadline(&mut self, key: usize, now: Instant, delay: Duration) {
        let tick = self.wheel.deadline(now, delay);
        self.set_deadline_tick(key, tick);
    }

    /// Makes `tick` the connection's one authoritative deadline (older wheel entries for it
    /// are ignored when they fire).
    pub(super) fn set_deadline_tick(&mut self, key: usize, tick: u32) {
        let conn = &mut self.conns[key];
        conn.deadline = tick;
        self.wheel.insert(TimerEntry {
            key: key as u32,
            tick,
        });
    }
}
