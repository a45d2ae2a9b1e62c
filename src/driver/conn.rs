//! One connection's slot in a worker's slab: its direct descriptor, its protocol state, its
//! bounded send queue, and which of its operations the kernel still holds.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use crate::protocol::handshake::{Request, ServerHandshake};
use crate::protocol::WebSocket;

/// Where the connection is in its life.
#[derive(Debug)]
pub(crate) enum Stage {
    /// Reading the HTTP upgrade request; with the peer's address when the worker learns it
    /// (`DriverConfig::peer_addresses`), kept only until the head is read (boxed: the variant
    /// stays smaller than `Open`'s, so the slot does not grow).
    Handshake(ServerHandshake, Option<Box<std::net::SocketAddr>>),
    /// Reading the body of a plain HTTP request.
    Http {
        request: Box<Request>,
        body: Vec<u8>,
        remaining: usize,
    },
    /// Speaking WebSocket.
    Open(WebSocket),
    /// Sending an event stream (`Admission::Stream`): the response head went first, and
    /// what the client sends is read and ignored.
    Stream,
    /// A plain HTTP request was answered; nothing more is read.
    Answered,
}

/// How the connection is ending, if it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Not ending.
    No,
    /// Send what is queued, then shut the write side (the server closes first, RFC 6455 §7.1.1).
    Flush,
    /// Write side shut; reading and discarding until the peer closes or the linger timer fires,
    /// so unread bytes do not turn our FIN into a reset that could destroy the close frame.
    Linger,
    /// Operations cancelled; the close follows once the kernel has returned them all.
    Teardown,
}

/// A connection slot, with the service's state `D` for it.
#[derive(Debug)]
pub(crate) struct Conn<D> {
    /// Guards against completions for an earlier occupant of this slab key.
    pub generation: u32,
    /// Index in the ring's fixed file table.
    pub slot: u32,
    pub stage: Stage,
    pub ending: Ending,
    /// Frames waiting to be sent, front first; the front may be partly sent.
    pub queue: SendQueue,
    /// A multishot receive is armed.
    pub recv_armed: bool,
    /// A send is in flight; it covers the first `in_flight` frames of the queue.
    pub send_in_flight: bool,
    /// Shutdown, cancel or close submissions still in flight.
    pub pending_ops: u8,
    /// The close of the direct descriptor was submitted (the last operation of a connection).
    pub close_submitted: bool,
    /// The tick of this connection's one authoritative deadline (see `timer`).
    pub deadline: u32,
    /// The tick of the last bytes received; pings go only to idle connections.
    pub last_recv_tick: u32,
    /// A ping was sent and nothing was received since.
    pub ping_outstanding: bool,
    /// Listed for a flush at the end of this loop turn.
    pub dirty: bool,
    /// The upgrade completed during the current receive.
    pub upgraded_now: bool,
    /// The iovecs of the vectored send in flight, if it is one.
    pub send_vec: Option<Box<SendVec>>,
    /// The service's state for this connection.
    pub data: D,
}

/// Frames gathered into one vectored send.
pub(crate) const MAX_IOVECS: usize = 64;

/// A vectored send's iovecs and message header; boxed so their address stays put while the
/// kernel reads them.
pub(crate) struct SendVec {
    pub iov: [libc::iovec; MAX_IOVECS],
    pub msg: libc::msghdr,
}

impl std::fmt::Debug for SendVec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendVec")
            .field("iovlen", &self.msg.msg_iovlen)
            .finish()
    }
}

impl<D: Default> Conn<D> {
    pub(crate) fn new(generation: u32, slot: u32, max_head_bytes: usize, now_tick: u32) -> Self {
        Self {
            generation,
            slot,
            stage: Stage::Handshake(ServerHandshake::new(max_head_bytes), None),
            ending: Ending::No,
            queue: SendQueue::default(),
            recv_armed: false,
            send_in_flight: false,
            pending_ops: 0,
            close_submitted: false,
            deadline: 0,
            last_recv_tick: now_tick,
            ping_outstanding: false,
            dirty: false,
            upgraded_now: false,
            send_vec: None,
            data: D::default(),
        }
    }
}

impl<D> Conn<D> {
    /// Lists the connection for this turn's flush, once.
    pub(crate) fn mark_dirty_in(&mut self, dirty: &mut Vec<usize>, key: usize) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(key);
        }
    }

    /// Bytes this connection holds in an unfinished message or request body: what it takes
    /// from its worker's pending budget.
    pub(crate) fn held_bytes(&self) -> usize {
        match &self.stage {
            Stage::Open(ws) => ws.buffered_bytes(),
            Stage::Http { body, .. } => body.capacity(),
            Stage::Handshake(..) | Stage::Answered | Stage::Stream => 0,
        }
    }

    /// Nothing of this connection is left in the kernel: the slot may be freed.
    pub(crate) fn is_quiescent(&self) -> bool {
        !self.recv_armed && !self.send_in_flight && self.pending_ops == 0
    }
}

/// A bounded queue of encoded frames.
///
/// The bound is in bytes and admits one frame of any size into an empty queue, so a single
/// message larger than the bound still goes out while no backlog can build behind it.
///
/// The front frame is held inline: the common case, one frame waiting (a broadcast to an
/// attentive subscriber, an echo), allocates nothing, so a fan-out costs no allocation per
/// receiver. Frames behind it go to `rest`, boxed so that a connection that never has two
/// frames waiting (most idle ones) pays 8 bytes for it, not 24; once allocated it keeps a
/// small capacity.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    head: Option<Bytes>,
    #[allow(clippy::box_collection)] // 8 bytes on every connection instead of 24: see above
    rest: Option<Box<VecDeque<Bytes>>>,
    bytes: usize,
}

/// `rest` keeps up to this many slots when it empties; a larger one (after a burst) is freed.
const KEPT_CAPACITY: usize = 8;

impl SendQueue {
    /// Appends `frame` unless it would take the queue past `limit`; returns whether it did.
    pub(crate) fn push(&mut self, frame: Bytes, limit: usize) -> bool {
        if !self.is_empty() && self.bytes + frame.len() > limit {
            return false;
        }
        self.push_unbounded(frame);
        true
    }

    /// Appends a control frame that must not be dropped (a close, a pong).
    ///
    /// An empty frame (say, a service's empty HTTP response) is not queued: a send of zero
    /// bytes consumes nothing, so it would stay at the front and be sent again forever.
    pub(crate) fn push_unbounded(&mut self, frame: Bytes) {
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        if self.head.is_none() {
            self.head = Some(frame);
        } else {
            self.rest.get_or_insert_default().push_back(frame);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// Queued bytes (with any charge: see [`charge`](Self::charge)).
    #[cfg(test)]
    pub(crate) fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// Counts `extra` bytes against the bound beyond the frames' own: a TLS connection's
    /// record overhead while its ciphertext is in flight, so backpressure counts what goes on
    /// the wire.
    pub(crate) fn charge(&mut self, extra: usize) {
        self.bytes += extra;
    }

    /// Takes back a [`charge`](Self::charge).
    pub(crate) fn discharge(&mut self, extra: usize) {
        self.bytes = self.bytes.saturating_sub(extra);
    }

    /// The frames at the front, for a vectored send.
    pub(crate) fn front(&self, max: usize) -> impl Iterator<Item = &Bytes> {
        self.head
            .iter()
            .chain(self.rest.iter().flat_map(|rest| rest.iter()))
            .take(max)
    }

    /// Drops the first `sent` bytes, which the kernel accepted; a frame sent in part keeps
    /// its rest at the front.
    pub(crate) fn consume(&mut self, mut sent: usize) {
        self.bytes -= sent.min(self.bytes);
        while sent > 0 {
            let Some(front) = self.head.as_mut() else {
                break;
            };
            if sent >= front.len() {
                sent -= front.len();
                self.head = self.rest.as_mut().and_then(|rest| rest.pop_front());
            } else {
                front.advance(sent);
                sent = 0;
            }
        }
        if self
            .rest
            .as_ref()
            .is_some_and(|rest| rest.is_empty() && rest.capacity() > KEPT_CAPACITY)
        {
            self.rest = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_bounds_bytes_but_admits_one_large_frame() {
        let mut queue = SendQueue::default();
        assert!(
            queue.push(Bytes::from(vec![0; 100]), 10),
            "an empty queue takes any frame"
        );
        assert!(!queue.push(Bytes::from_static(b"x"), 10));
        queue.push_unbounded(Bytes::from_static(b"close"));
        assert_eq!(queue.len_bytes(), 105);
    }

    #[test]
    fn empty_frames_are_never_queued() {
        let mut queue = SendQueue::default();
        queue.push_unbounded(Bytes::new());
        assert!(
            queue.is_empty(),
            "an empty frame at the front is resent forever"
        );
        assert!(queue.push(Bytes::new(), 10));
        assert!(queue.is_empty());
        queue.push_unbounded(Bytes::from_static(b"abc"));
        queue.push_unbounded(Bytes::new());
        assert_eq!(queue.front(8).count(), 1);
    }

    #[test]
    fn partial_sends_resume_mid_frame() {
        let mut queue = SendQueue::default();
        queue.push_unbounded(Bytes::from_static(b"abc"));
        queue.push_unbounded(Bytes::from_static(b"defg"));
        queue.consume(4);
        let rest: Vec<&[u8]> = queue.front(8).map(|b| b.as_ref()).collect();
        assert_eq!(rest, [b"efg".as_slice()]);
        assert_eq!(queue.len_bytes(), 3);
        queue.consume(3);
        assert!(queue.is_empty());
    }
}

#[cfg(test)]
mod size_tests {
    /// The per-connection state is most of the server's memory per idle connection.
    #[test]
    fn connection_state_stays_small() {
        let conn = size_of::<super::Conn<()>>();
        let echo = size_of::<super::Conn<crate::broadcast::ConnState<()>>>();
        eprintln!(
            "Conn {conn} WebSocket {} SendQueue {} Stage {} ServerHandshake {}; echo mode {echo}",
            size_of::<crate::protocol::WebSocket>(),
            size_of::<super::SendQueue>(),
            size_of::<super::Stage>(),
            size_of::<crate::protocol::handshake::ServerHandshake>(),
        );
        assert!(conn <= 128, "a connection's state grew to {conn} bytes");
        // What the server binary holds per connection in its slab (echo mode: the broadcast
        // service's state, subscriptions only; 160 bytes with a `Vec` of subscriptions, 152
        // with the frame decoder's limit in 8 bytes).
        assert!(
            echo <= 144,
            "an echo connection's slab entry grew to {echo} bytes"
        );
    }
}
