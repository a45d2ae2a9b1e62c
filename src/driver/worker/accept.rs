//! Accepting: one multishot accept while slots are plentiful, single-shot accepts when they
//! are scarce, paused while the fixed file table is full.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, Fd};
use io_uring::{cqueue, opcode};
use tracing::{trace, warn};

use super::{Worker, ACCEPT_MULTI, ACCEPT_SINGLE, MAX_SINGLE_ACCEPTS, NO_KEY};
use crate::driver::conn::Conn;
use crate::driver::ring::GENERATION_MASK;
use crate::driver::user_data::{OpKind, UserData};
use crate::driver::Service;

impl<S: Service> Worker<S> {
    pub(super) fn on_accept(&mut self, single: bool, result: i32, flags: u32) {
        if single {
            self.singles_in_flight -= 1;
        } else if !cqueue::more(flags) {
            self.multishot_armed = false;
        }
        if result < 0 {
            match -result {
                libc::ENFILE | libc::EMFILE => {
                    warn!(
                        capacity = self.capacity,
                        "fixed file table full; accepting paused until a connection closes"
                    );
                    self.accept_paused = true;
                }
                libc::ECANCELED => {}
                errno => {
                    let now = Instant::now();
                    if self
                        .last_accept_warning
                        .is_none_or(|at| now - at >= Duration::from_secs(10))
                    {
                        self.last_accept_warning = Some(now);
                        warn!(error = %io::Error::from_raw_os_error(errno), "accept failed (logged at most every 10 s)");
                    }
                    // Transient (ENOMEM, ECONNABORTED...): retry after a tick, not in a tight loop.
                    self.accept_paused = true;
                    self.accept_retry = Some(Instant::now() + crate::driver::timer::TICK);
                }
            }
            return;
        }
        let slot = result as u32;
        let now = Instant::now();
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1) & GENERATION_MASK;
        let tick = self.wheel.tick_at(now);
        let key = self.conns.insert(Conn::new(
            generation,
            slot,
            self.config.max_head_bytes,
            tick,
        ));
        let stats = &self.shared.stats[self.id];
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats
            .connections
            .store(self.conns.len() as u64, Ordering::Relaxed);
        trace!(key, slot, "accepted");
        if !self.open_tls(key) {
            return self.teardown(key);
        }
        self.arm_recv(key);
        self.set_deadline(key, now, self.config.handshake_timeout);
        if self.stop_deadline.is_some() {
            self.teardown(key);
        } else if self.multishot_armed && self.free_slots() < self.multishot_min_free {
            self.cancel_multishot_accept();
        }
    }

    /// `SOCK_CLOEXEC` for plain descriptors; direct ones are in no process table, and the
    /// kernel rejects the flag for them (`EINVAL`).
    pub(super) fn accept_flags(&self) -> i32 {
        if self.direct {
            0
        } else {
            libc::SOCK_CLOEXEC
        }
    }

    /// Slots neither held by a connection nor promised to an accept in flight.
    pub(super) fn free_slots(&self) -> usize {
        self.capacity
            .saturating_sub(self.conns.len() + self.singles_in_flight)
    }

    /// Keeps accepting while slots are free: one multishot accept while plenty are, else up
    /// to [`MAX_SINGLE_ACCEPTS`] single-shot accepts, never more than the free slots.
    pub(super) fn arm_accepts(&mut self) {
        if self.accept_paused || self.stop_deadline.is_some() {
            return;
        }
        let listener = Fd(self.listener.as_raw_fd());
        if self.free_slots() >= self.multishot_min_free {
            if !self.multishot_armed && self.singles_in_flight == 0 {
                let entry = opcode::AcceptMulti::new(listener)
                    .allocate_file_index(self.direct)
                    .flags(self.accept_flags())
                    .build()
                    .user_data(UserData::new(OpKind::Accept, ACCEPT_MULTI, NO_KEY).pack());
                // SAFETY: accept into an allocated direct slot writes no user memory.
                unsafe { self.push(&entry) };
                self.multishot_armed = true;
            }
            return;
        }
        if self.multishot_armed {
            return; // its cancellation is on the way
        }
        while self.singles_in_flight < MAX_SINGLE_ACCEPTS && self.free_slots() > 0 {
            let slot = self
                .direct
                .then(io_uring::types::DestinationSlot::auto_target);
            let entry = opcode::Accept::new(listener, std::ptr::null_mut(), std::ptr::null_mut())
                .file_index(slot)
                .flags(self.accept_flags())
                .build()
                .user_data(UserData::new(OpKind::Accept, ACCEPT_SINGLE, NO_KEY).pack());
            // SAFETY: no address is requested, so the accept writes no user memory.
            unsafe { self.push(&entry) };
            self.singles_in_flight += 1;
        }
    }

    /// Cancels every accept in flight (multishot and single-shot alike).
    pub(super) fn cancel_accepts(&mut self) {
        for target in [ACCEPT_MULTI, ACCEPT_SINGLE] {
            let target = UserData::new(OpKind::Accept, target, NO_KEY).pack();
            let entry = opcode::AsyncCancel2::new(CancelBuilder::user_data(target).all())
                .build()
                .user_data(UserData::new(OpKind::Cancel, 0, NO_KEY).pack());
            // SAFETY: a cancel reads no user memory.
            unsafe { self.push(&entry) };
        }
    }

    pub(super) fn cancel_multishot_accept(&mut self) {
        let target = UserData::new(OpKind::Accept, ACCEPT_MULTI, NO_KEY).pack();
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(UserData::new(OpKind::Cancel, 0, NO_KEY).pack());
        // SAFETY: a cancel reads no user memory.
        unsafe { self.push(&entry) };
        // It stays armed until its last completion; no new accept is armed meanwhile.
    }
}

/// The listen backlog the kernel grants (`listen(2)` caps it at `net.core.somaxconn`).
pub(super) fn listen_backlog() -> usize {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}
