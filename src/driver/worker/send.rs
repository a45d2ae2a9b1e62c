//! Sending: each dirty connection's queue goes out as one (vectored) send per loop turn.

use std::io;
use std::sync::atomic::Ordering;

use io_uring::opcode;
use io_uring::types::{Fd, Fixed};
use tracing::{debug, trace};

use super::dispatch::PREFETCH_AHEAD;
use super::Worker;
use crate::driver::conn::{Ending, SendVec, MAX_IOVECS};
use crate::driver::user_data::{OpKind, UserData};
use crate::driver::Service;

/// In a flush, TLS sends are submitted as soon as this many wait in the submission queue. The
/// kernel copies each ciphertext when it runs the send: in a batch this small the records are
/// still in cache, sealed microseconds before, where a full queue of 4,096 sends would find
/// them evicted by the sealing of the rest (`docs/PERFORMANCE.md`, "wss").
const TLS_SUBMIT_BATCH: usize = 32;

impl<S: Service> Worker<S> {
    pub(super) fn on_send(&mut self, key: usize, result: i32) {
        if self.is_tls() {
            return self.on_send_tls(key, result);
        }
        let conn = &mut self.conns[key];
        trace!(key, result, "send done");
        conn.send_in_flight = false;
        if let Some(vec) = conn.send_vec.take() {
            self.send_vecs.push(vec);
        }
        if result >= 0 {
            self.shared.stats[self.id]
                .bytes_out
                .fetch_add(result as u64, Ordering::Relaxed);
            conn.queue.consume(result as usize);
            if !conn.queue.is_empty() || conn.ending == Ending::Flush {
                self.mark_dirty(key);
            }
        } else {
            self.send_failed(key, -result);
        }
        self.maybe_remove(key);
    }

    /// A send (plain or TLS) ended with `errno`: try again, ignore a cancel, or give up on
    /// the connection.
    pub(super) fn send_failed(&mut self, key: usize, errno: i32) {
        match errno {
            libc::EAGAIN | libc::EINTR | libc::ENOBUFS => self.mark_dirty(key),
            libc::ECANCELED => {}
            errno => {
                debug!(key, error = %io::Error::from_raw_os_error(errno), "send failed");
                self.teardown(key);
            }
        }
    }

    pub(super) fn mark_dirty(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Lists a connection that answers what it sent this turn: flushed before the others.
    pub(super) fn mark_reply(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.dirty {
            conn.dirty = true;
            self.replies.push(key);
        }
    }

    /// Sends each dirty connection's queue, or shuts its write side once a final queue is out:
    /// the replies first, then the rest (a fan-out's sends) in the order they were listed.
    ///
    /// Replies first matters when a request starts a fan-out (an HTTP publish to 10,000
    /// subscribers): the kernel runs a turn's sends in submission order, so the publisher has
    /// its answer, and can send its next request, while the fan-out is still going out, and
    /// the next turn takes several requests' publications in one send per subscriber.
    pub(super) fn flush(&mut self) {
        let mut replies = std::mem::take(&mut self.replies);
        self.flush_listed(&replies);
        replies.clear();
        self.replies = replies;
        let mut dirty = std::mem::take(&mut self.dirty);
        self.flush_listed(&dirty);
        dirty.clear();
        // Keep anything listed meanwhile (nothing is today: a push never handles completions).
        let listed = std::mem::replace(&mut self.dirty, dirty);
        self.dirty.extend(listed);
    }

    fn flush_listed(&mut self, dirty: &[usize]) {
        for i in 0..dirty.len() {
            let key = dirty[i];
            if let Some(tls) = self.tls.as_ref() {
                // As for completions: load the TLS state of a connection a few sends ahead,
                // and the sealing key of one half as far.
                if let Some(&ahead) = dirty.get(i + PREFETCH_AHEAD) {
                    tls.prefetch(ahead);
                }
                if let Some(&ahead) = dirty.get(i + PREFETCH_AHEAD / 2) {
                    tls.prefetch_seal(ahead);
                }
            }
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            if conn.ending == Ending::Teardown || conn.send_in_flight {
                continue;
            }
            if self.tls.is_some() {
                self.flush_tls(key);
                // Not while entries wait for room: the queue was full and a submit failed, and
                // the turn's own submit tries again.
                if self.unsubmitted.is_empty() && self.ring.submission().len() >= TLS_SUBMIT_BATCH {
                    self.submit_queued();
                }
            } else if !conn.queue.is_empty() {
                self.submit_send(key);
            } else if conn.ending == Ending::Flush {
                self.shutdown_write(key);
            }
        }
    }

    /// Everything queued is out: shut the write side and linger (RFC 6455 §7.1.1).
    pub(super) fn shutdown_write(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        trace!(key, "shutdown");
        conn.ending = Ending::Linger;
        conn.pending_ops += 1;
        let ud = UserData::new(OpKind::Shutdown, conn.generation, key as u32);
        let entry = on_conn!(self.direct, conn.slot, |fd| {
            opcode::Shutdown::new(fd, libc::SHUT_WR).build()
        })
        .user_data(ud.pack());
        // SAFETY: a shutdown reads no user memory.
        unsafe { self.push(&entry) };
    }

    pub(super) fn submit_send(&mut self, key: usize) {
        let mut vec = self.send_vecs.pop().unwrap_or_else(new_send_vec);
        let conn = &mut self.conns[key];
        let ud = UserData::new(OpKind::Send, conn.generation, key as u32).pack();
        let mut count = 0;
        for (iov, frame) in vec.iov.iter_mut().zip(conn.queue.front(MAX_IOVECS)) {
            iov.iov_base = frame.as_ptr() as *mut libc::c_void;
            iov.iov_len = frame.len();
            count += 1;
        }
        let entry = if count == 1 {
            // One frame: a plain SEND needs no iovec, so the vector goes straight back.
            let (base, len) = (vec.iov[0].iov_base as *const u8, vec.iov[0].iov_len as u32);
            self.send_vecs.push(vec);
            on_conn!(self.direct, conn.slot, |fd| {
                opcode::Send::new(fd, base, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            })
        } else {
            vec.msg.msg_iov = vec.iov.as_mut_ptr();
            vec.msg.msg_iovlen = count;
            let entry = on_conn!(self.direct, conn.slot, |fd| {
                opcode::SendMsg::new(fd, &vec.msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
            });
            conn.send_vec = Some(vec);
            entry
        };
        conn.send_in_flight = true;
        trace!(key, count, slot = conn.slot, "send");
        // The frames are `Bytes` at the front of the queue, consumed only in `on_send`; the
        // iovecs and header live in a `Box` stored in the connection until then, and a
        // connection leaves the slab only when quiescent (no send in flight).
        // SAFETY: everything the send reads stays put until its completion (see above).
        unsafe { self.push(&entry.user_data(ud)) };
    }
}

fn new_send_vec() -> Box<SendVec> {
    Box::new(SendVec {
        iov: [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOVECS],
        // SAFETY: msghdr is a plain C struct for which all-zero bytes is the empty message.
        msg: unsafe { std::mem::zeroed() },
    })
}
