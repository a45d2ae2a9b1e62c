//! TLS connections: each one's [`TlsSession`] sits between the receive buffers and the
//! protocol core on the way in, and between the send queue and the socket on the way out.
//!
//! In: ciphertext from the provided buffer ring goes to the session, which hands back the
//! plaintext it carried; that runs through the same path as a plain connection's bytes.
//! Out: the queue still holds plaintext frames (shared `Bytes`, encoded once per publish).
//! At flush they are sealed, each receiver on its own, into the worker's ciphertext arena
//! (small frames gathered into full records, a large or lone one sealed straight from the
//! shared frame), and each connection's part is split off the arena and sent in one
//! operation. The frames it covers stay queued, and the records' overhead is charged to the
//! queue, until the kernel has taken every byte, so backpressure counts what goes on the wire.
//! The arena is a `BytesMut` in chunks of [`ARENA_CHUNK`]: the ciphertext of one flush turn's
//! thousands of receivers lies in a few allocations, written and then read by the kernel in
//! order, and a chunk is freed when the last send in it completes. An idle TLS connection
//! holds no record buffer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use io_uring::opcode;
use io_uring::types::{Fd, Fixed};
use tracing::{debug, trace};

use super::Worker;
use crate::driver::conn::{Ending, SendQueue, Stage};
use crate::driver::service::{ConnId, WorkerView};
use crate::driver::user_data::{OpKind, UserData};
use crate::driver::Service;
use crate::protocol::{CloseCode, Limits};
use crate::tls::{RecordBuf, Status, TlsAcceptor, TlsSession, MAX_RECORD_PLAINTEXT};

/// Plaintext sealed into one send at most: enough for a burst of frames to go out in one
/// operation, small enough that a buffer does not pin much memory while the peer reads.
const MAX_PLAINTEXT_PER_SEND: usize = 256 * 1024;
/// Frames below this are copied together into full records; larger ones are sealed in
/// place (their records are full anyway).
const GATHER_BELOW: usize = 4 * 1024;
/// The arena's allocation unit. A send not yet complete keeps its chunk alive, so this is
/// also what a connection that stops reading can pin beyond its own backlog: small next to
/// the 1 MiB `max_backlog_bytes` default, large enough that a fan-out to 10,000 receivers
/// takes a few dozen allocations rather than 10,000.
const ARENA_CHUNK: usize = 16 * 1024;

/// The TLS side of one worker.
pub(super) struct TlsLayer {
    acceptor: Arc<TlsAcceptor>,
    /// Each connection's TLS state, by slab key.
    conns: Vec<Option<Box<TlsConn>>>,
    /// Plaintext of the receive being handled.
    plain: Vec<u8>,
    /// Small frames gathered into one record.
    gather: Vec<u8>,
    /// Where ciphertext is sealed; each send's part is split off and frozen.
    arena: BytesMut,
}

/// One connection's TLS state.
struct TlsConn {
    session: TlsSession,
    /// Handshake flights and alerts a receive produced, not yet in a send. Bounded without a
    /// budget of its own: a flight is what rustls makes of one certificate chain, and after
    /// the handshake it holds one alert at most (a KeyUpdate the peer asks for is owed by the
    /// session as a flag, and sealed at flush, where the backlog is charged).
    replies: Vec<u8>,
    /// The ciphertext of the send in flight (or partly sent), a part of the arena: the kernel
    /// reads it until the send completes, and this reference keeps it alive until then.
    sending: Bytes,
    /// Bytes of `sending` the kernel has taken.
    sent: usize,
    /// Plaintext bytes at the front of the send queue that `sending` carries.
    covered: usize,
}

impl TlsLayer {
    pub(super) fn new(acceptor: Arc<TlsAcceptor>) -> Self {
        Self {
            acceptor,
            conns: Vec::new(),
            plain: Vec::new(),
            gather: Vec::new(),
            arena: BytesMut::new(),
        }
    }

    /// Asks the CPU to start loading `key`'s TLS state. A fan-out or a batch of send
    /// completions walks thousands of connections in a row, each state a separate allocation
    /// that is cold by then; loading it a few connections ahead hides most of that miss
    /// (`docs/PERFORMANCE.md`, "wss").
    pub(super) fn prefetch(&self, key: usize) {
        if let Some(Some(state)) = self.conns.get(key) {
            let state: *const TlsConn = &**state;
            crate::prefetch::lines(state.cast(), std::mem::size_of::<TlsConn>());
        }
    }

    /// The second step, half as far ahead: `key`'s state is in cache by now, so reading it to
    /// find its session's sealing key costs no miss, and the key starts loading.
    pub(super) fn prefetch_seal(&self, key: usize) {
        if let Some(Some(state)) = self.conns.get(key) {
            state.session.prefetch_seal();
        }
    }

    /// Ciphertext held for `key`'s incomplete record (part of the worker's pending budget).
    pub(super) fn held_bytes(&self, key: usize) -> usize {
        self.conns
            .get(key)
            .and_then(|c| c.as_deref())
            .map_or(0, |c| c.session.buffered_bytes())
    }
}

impl<S: Service> Worker<S> {
    /// A new connection on a TLS listener: its session starts with the certificate current
    /// now, and keeps it.
    pub(super) fn open_tls(&mut self, key: usize) -> bool {
        let Some(tls) = self.tls.as_mut() else {
            return true;
        };
        match TlsSession::new(tls.acceptor.current()) {
            Ok(session) => {
                if tls.conns.len() <= key {
                    tls.conns.resize_with(key + 1, || None);
                }
                tls.conns[key] = Some(Box::new(TlsConn {
                    session,
                    replies: Vec::new(),
                    sending: Bytes::new(),
                    sent: 0,
                    covered: 0,
                }));
                true
            }
            Err(error) => {
                debug!(%error, "TLS session refused");
                false
            }
        }
    }

    /// The connection left the slab (nothing of it is in the kernel): its TLS state goes.
    pub(super) fn close_tls(&mut self, key: usize) {
        let Some(tls) = self.tls.as_mut() else { return };
        if let Some(slot) = tls.conns.get_mut(key) {
            *slot = None;
        }
    }

    /// Runs one receive buffer of ciphertext through the session, then its plaintext through
    /// the protocol core like a plain connection's bytes.
    pub(super) fn receive_tls(&mut self, key: usize, bid: u16, len: usize, limits: Limits) {
        let held_before = self.held_bytes(key);
        let ending = self.conns[key].ending;
        let room = self
            .config
            .max_pending_bytes
            .saturating_sub(self.pending_bytes);
        let Some(tls) = self.tls.as_mut() else {
            return self.bufs.push(bid);
        };
        let TlsLayer {
            conns: states,
            plain,
            ..
        } = tls;
        let Some(state) = states.get_mut(key).and_then(|c| c.as_deref_mut()) else {
            return self.bufs.push(bid);
        };
        if ending != Ending::No {
            // Closing: bytes are read only so the peer's FIN can arrive.
            return self.bufs.push(bid);
        }
        // Budget first, before the copy: all of it may stay held if no record completes.
        let tls_before = state.session.buffered_bytes();
        if (tls_before + len) as u64 > room {
            self.bufs.push(bid);
            self.stats()
                .pending_budget_closes
                .fetch_add(1, Ordering::Relaxed);
            debug!(key, "TLS record over the worker's pending budget");
            return self.refuse(key, CloseCode::TRY_AGAIN_LATER, "server busy");
        }
        let mut plain = std::mem::take(plain);
        let status = state.session.receive(
            self.bufs.buffer_mut(bid, len),
            &mut plain,
            &mut state.replies,
        );
        self.bufs.push(bid);
        let tls_growth = state.session.buffered_bytes().saturating_sub(tls_before);
        if !state.replies.is_empty() || state.session.wants_write() {
            self.mark_dirty(key);
        }
        match status {
            Ok(status) => {
                if !plain.is_empty() {
                    let mut budget = room.saturating_sub(tls_growth as u64);
                    let mut ctx = ctx!(self);
                    super::dispatch::receive(
                        &mut self.service,
                        &mut ctx,
                        key,
                        &mut plain,
                        limits,
                        self.config.max_head_bytes,
                        &mut budget,
                    );
                }
                if status == Status::PeerClosed {
                    // RFC 8446 §6.1: the peer writes no more, but still reads. What is queued
                    // goes out, then our close_notify (`seal_queue`), then the FIN, within
                    // the drain timeout `after_receive` sets.
                    debug!(key, "peer sent close_notify");
                    let conn = &mut self.conns[key];
                    if conn.ending == Ending::No {
                        conn.ending = Ending::Flush;
                    }
                    self.mark_dirty(key);
                }
            }
            Err(error) => {
                debug!(key, %error, "TLS failed");
                self.stats().tls_failures.fetch_add(1, Ordering::Relaxed);
                // The alert (if rustls made one) goes out before the close, within the drain
                // timeout.
                self.conns[key].ending = Ending::Flush;
                self.mark_dirty(key);
                let now = Instant::now();
                self.set_deadline(key, now, self.config.drain_timeout);
            }
        }
        plain.clear();
        if let Some(tls) = self.tls.as_mut() {
            tls.plain = plain;
        }
        self.account_held(held_before, self.held_bytes(key));
    }

    /// Closes a connection for want of a resource: a close frame if it speaks WebSocket,
    /// else a teardown.
    fn refuse(&mut self, key: usize, code: CloseCode, reason: &str) {
        let conn = &self.conns[key];
        if matches!(conn.stage, Stage::Open(_) | Stage::Stream) {
            let id = ConnId {
                key: key as u32,
                generation: conn.generation,
            };
            let mut ctx = ctx!(self);
            ctx.close(id, code, reason);
        } else {
            self.teardown(key);
        }
    }

    /// Seals what the connection's queue holds (and the session's replies) into one
    /// ciphertext buffer and sends it; or resumes a partial send; or, with nothing left and
    /// the connection ending, shuts the write side.
    pub(super) fn flush_tls(&mut self, key: usize) {
        let Some(tls) = self.tls.as_mut() else { return };
        let TlsLayer {
            conns: states,
            gather,
            arena,
            ..
        } = tls;
        let Some(state) = states.get_mut(key).and_then(|c| c.as_deref_mut()) else {
            return;
        };
        let conn = &mut self.conns[key];
        if state.sent == state.sending.len() {
            if arena.capacity() < ARENA_CHUNK / 4 {
                arena.reserve(ARENA_CHUNK);
            }
            if !state.replies.is_empty() {
                // Handshake flights: a connection past its handshake keeps no buffer of them.
                arena.extend_from_slice(&std::mem::take(&mut state.replies));
            }
            let mut covered = 0;
            // A failed session seals nothing more: its alert, in `replies`, is its last record.
            if !state.session.is_handshaking() && !state.session.is_failed() {
                let closing = conn.ending == Ending::Flush;
                match seal_queue(&mut state.session, &conn.queue, gather, arena, closing) {
                    Ok(bytes) => covered = bytes,
                    Err(error) => {
                        debug!(key, %error, "TLS encrypt failed");
                        arena.clear();
                        return self.teardown(key);
                    }
                }
            }
            if arena.is_empty() {
                if conn.ending == Ending::Flush {
                    self.shutdown_write(key);
                }
                return;
            }
            let buffer = arena.split().freeze();
            // The records' overhead (and any handshake bytes) count against the backlog too.
            conn.queue.charge(buffer.len().saturating_sub(covered));
            state.covered = covered;
            state.sending = buffer;
            state.sent = 0;
        }
        let rest = &state.sending[state.sent..];
        let (base, len) = (rest.as_ptr(), rest.len() as u32);
        let ud = UserData::new(OpKind::Send, conn.generation, key as u32).pack();
        let entry = on_conn!(self.direct, conn.slot, |fd| {
            opcode::Send::new(fd, base, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        });
        conn.send_in_flight = true;
        trace!(key, len, "TLS send");
        // `sending` is a reference to its part of the arena, held by the connection's TLS
        // state until this send completes: `flush_tls` replaces it only when it is fully
        // sent, and the state goes only when the connection leaves the slab, which needs no
        // send in flight. The arena never writes into a part it has split off.
        // SAFETY: the bytes the send reads stay put until its completion (see above).
        unsafe { self.push(&entry.user_data(ud)) };
    }

    /// A TLS send completed: once all of its buffer is out, the frames it carried leave the
    /// queue and the buffer goes back to the pool.
    pub(super) fn on_send_tls(&mut self, key: usize, result: i32) {
        let conn = &mut self.conns[key];
        conn.send_in_flight = false;
        let Some(tls) = self.tls.as_mut() else { return };
        let TlsLayer { conns: states, .. } = tls;
        let Some(state) = states.get_mut(key).and_then(|c| c.as_deref_mut()) else {
            return;
        };
        if result >= 0 {
            self.shared.stats[self.id]
                .bytes_out
                .fetch_add(result as u64, Ordering::Relaxed);
            state.sent += result as usize;
            if state.sent >= state.sending.len() {
                conn.queue
                    .discharge(state.sending.len().saturating_sub(state.covered));
                conn.queue.consume(std::mem::take(&mut state.covered));
                state.sent = 0;
                // The last reference to a chunk frees it.
                state.sending = Bytes::new();
                let more = !conn.queue.is_empty()
                    || !state.replies.is_empty()
                    || state.session.wants_write();
                if more || conn.ending == Ending::Flush {
                    self.mark_dirty(key);
                }
            } else {
                self.mark_dirty(key);
            }
        } else {
            self.send_failed(key, -result);
        }
        self.maybe_remove(key);
    }

    /// What connection `key` takes from the worker's pending budget: its unfinished message
    /// or body, and its TLS session's incomplete record.
    pub(super) fn held_bytes(&self, key: usize) -> usize {
        let conn = self.conns.get(key).map_or(0, |c| c.held_bytes());
        conn + self.tls.as_ref().map_or(0, |t| t.held_bytes(key))
    }

    /// SIGHUP: new handshakes use the certificate and key as the files hold them now; open
    /// connections keep theirs. A bad file keeps the old pair.
    pub(super) fn reload_tls(&mut self) {
        let Some(tls) = self.tls.as_ref() else {
            return;
        };
        match tls.acceptor.reload() {
            Ok(()) => {
                tracing::info!(cert = %tls.acceptor.files().cert.display(), "TLS certificate reloaded")
            }
            Err(error) => tracing::error!(%error, "TLS reload failed; keeping the old certificate"),
        }
    }

    /// Whether the worker's listener speaks TLS.
    pub(super) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Seals the frames at the front of `queue` into `out`, up to [`MAX_PLAINTEXT_PER_SEND`]:
/// runs of small frames gathered into full records, large frames sealed in place. A small
/// frame alone is sealed in place too: it is copied only to share a record with others. With
/// `closing` and the whole queue sealed, close_notify follows. Returns the plaintext bytes
/// sealed (whole frames).
fn seal_queue(
    session: &mut TlsSession,
    queue: &SendQueue,
    gather: &mut Vec<u8>,
    out: &mut impl RecordBuf,
    closing: bool,
) -> Result<usize, crate::tls::TlsError> {
    // A KeyUpdate the peer asked for goes out at this flush, even with nothing else to send:
    // promptly, as peers expect, and one for all the requests this turn's reads carried.
    session.write_owed(out)?;
    let mut covered = 0;
    let mut everything = true;
    // The run of small frames being gathered: its first frame is held by reference until a
    // second one joins it.
    let mut first: Option<&[u8]> = None;
    for frame in queue.front(usize::MAX) {
        if covered >= MAX_PLAINTEXT_PER_SEND {
            everything = false;
            break;
        }
        if frame.len() < GATHER_BELOW {
            let run = first.map_or(0, <[u8]>::len) + gather.len();
            if run + frame.len() > MAX_RECORD_PLAINTEXT {
                seal_run(session, &mut first, gather, out)?;
            }
            match first {
                None if gather.is_empty() => first = Some(frame),
                Some(alone) => {
                    gather.extend_from_slice(alone);
                    gather.extend_from_slice(frame);
                    first = None;
                }
                None => gather.extend_from_slice(frame),
            }
        } else {
            seal_run(session, &mut first, gather, out)?;
            session.encrypt(frame, out)?;
        }
        covered += frame.len();
    }
    seal_run(session, &mut first, gather, out)?;
    if closing && everything {
        // The last bytes: say so in TLS too (RFC 8446 §6.1), so the peer can tell our close
        // from a truncation.
        session.close_notify(out)?;
    }
    Ok(covered)
}

/// Seals the current run of small frames, if any: one frame in place, several from the
/// gather buffer.
fn seal_run(
    session: &mut TlsSession,
    first: &mut Option<&[u8]>,
    gather: &mut Vec<u8>,
    out: &mut impl RecordBuf,
) -> Result<(), crate::tls::TlsError> {
    if let Some(alone) = first.take() {
        return session.encrypt(alone, out);
    }
    seal(session, gather, out)
}

/// Seals the gathered small frames, if any, into records.
fn seal(
    session: &mut TlsSession,
    gather: &mut Vec<u8>,
    out: &mut impl RecordBuf,
) -> Result<(), crate::tls::TlsError> {
    if gather.is_empty() {
        return Ok(());
    }
    let sealed = session.encrypt(gather, out);
    gather.clear();
    sealed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::{client, handshake, pair, to_client};
    use bytes::Bytes;

    /// The lengths of the TLS records in `bytes` (5-byte headers: type, version, length).
    fn records(mut bytes: &[u8]) -> Vec<usize> {
        let mut lengths = Vec::new();
        while bytes.len() >= 5 {
            let len = u16::from_be_bytes([bytes[3], bytes[4]]) as usize;
            lengths.push(len);
            bytes = &bytes[5 + len..];
        }
        assert!(bytes.is_empty(), "a record cut short");
        lengths
    }

    fn session() -> (TlsSession, rustls::ClientConnection) {
        let (server_config, client_config) = pair(&[&rustls::version::TLS13]);
        let mut server = TlsSession::new(server_config).unwrap();
        let mut client = client(&client_config);
        handshake(&mut server, &mut client, usize::MAX);
        (server, client)
    }

    #[test]
    fn small_frames_share_records_and_a_lone_one_is_not_copied() {
        let (mut server, mut client) = session();
        let frame = |len: usize, fill: u8| Bytes::from(vec![fill; len]);
        let mut queue = SendQueue::default();
        for f in [frame(10, 1), frame(20, 2), frame(5000, 3), frame(30, 4)] {
            queue.push_unbounded(f);
        }
        let (mut gather, mut out) = (Vec::new(), Vec::new());
        let covered = seal_queue(&mut server, &queue, &mut gather, &mut out, false).unwrap();
        assert_eq!(covered, 5060);
        // 10 + 20 gathered into one record, 5,000 sealed in place, 30 alone in place (each
        // TLS 1.3 record adds a content-type byte and a 16-byte tag).
        assert_eq!(records(&out), [30 + 17, 5000 + 17, 30 + 17]);
        let mut expected = vec![1u8; 10];
        expected.extend([2; 20]);
        expected.extend([3; 5000]);
        expected.extend([4; 30]);
        assert_eq!(to_client(&mut client, &out), expected);

        // One small frame: one record, and the gather buffer never touched.
        let mut queue = SendQueue::default();
        queue.push_unbounded(frame(64, 9));
        let (mut gather, mut out) = (Vec::new(), Vec::new());
        seal_queue(&mut server, &queue, &mut gather, &mut out, true).unwrap();
        assert_eq!(gather.capacity(), 0, "a lone frame was copied");
        // The frame's record, then close_notify (an alert: 2 bytes, sealed).
        assert_eq!(records(&out), [64 + 17, 2 + 17]);
        assert_eq!(to_client(&mut client, &out), vec![9; 64]);
    }

    #[test]
    fn a_long_run_of_small_frames_fills_records_to_the_limit() {
        let (mut server, mut client) = session();
        let mut queue = SendQueue::default();
        for i in 0..100u8 {
            queue.push_unbounded(Bytes::from(vec![i; 1000]));
        }
        let (mut gather, mut out) = (Vec::new(), Vec::new());
        seal_queue(&mut server, &queue, &mut gather, &mut out, false).unwrap();
        // 16 frames of 1,000 bytes fit in 16 KiB of plaintext: 100 frames make 7 records.
        let lengths = records(&out);
        assert_eq!(lengths.len(), 7, "{lengths:?}");
        assert!(lengths[..6].iter().all(|&l| l == 16_000 + 17));
        let plain = to_client(&mut client, &out);
        assert_eq!(plain.len(), 100_000);
        assert!(plain
            .chunks(1000)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
    }
}
