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
    pub(super) fn on_accept(&mut self, single: bool, key: u32, result: i32, flags: u32) {
        let mut peer = None;
        if single {
            self.singles_in_flight -= 1;
            let index = key as usize;
            if index < MAX_SINGLE_ACCEPTS {
                // The accept is over: its address buffer is free again, whatever `result` says.
                self.accept_addrs_free |= 1 << index;
                if result >= 0 {
                    peer = self.accept_addrs[index].socket_addr();
                }
            }
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
        let mut conn = Conn::new(generation, slot, self.config.max_head_bytes, tick);
        if let (Some(peer), crate::driver::conn::Stage::Handshake(_, held)) =
            (peer, &mut conn.stage)
        {
            *held = Some(Box::new(peer));
        }
        let key = self.conns.insert(conn);
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
        self.accepted_in_reap = true;
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
        // A multishot accept has one address buffer for all its connections: to learn each
        // peer's address, accept one at a time, each into its own buffer.
        if self.free_slots() >= self.multishot_min_free && !self.config.peer_addresses {
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
            let (addr, len, key) = match self.take_addr_buffer() {
                Some(index) => {
                    let buffer = &mut self.accept_addrs[index];
                    buffer.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                    (
                        std::ptr::addr_of_mut!(buffer.storage).cast::<libc::sockaddr>(),
                        std::ptr::addr_of_mut!(buffer.len),
                        index as u32,
                    )
                }
                None => (std::ptr::null_mut(), std::ptr::null_mut(), NO_KEY),
            };
            let entry = opcode::Accept::new(listener, addr, len)
                .file_index(slot)
                .flags(self.accept_flags())
                .build()
                .user_data(UserData::new(OpKind::Accept, ACCEPT_SINGLE, key).pack());
            // The address buffer sits in the worker's boxed `accept_addrs` (freed only once no
            // operation is in flight) and goes to no other accept until this one completes.
            // SAFETY: the accept writes at most that buffer, or no user memory without one.
            unsafe { self.push(&entry) };
            self.singles_in_flight += 1;
        }
    }

    /// With `peer_addresses`, a free address buffer for the next accept, taken.
    fn take_addr_buffer(&mut self) -> Option<usize> {
        if !self.config.peer_addresses || self.accept_addrs_free == 0 {
            return None;
        }
        let index = self.accept_addrs_free.trailing_zeros() as usize;
        self.accept_addrs_free &= !(1 << index);
        Some(index)
    }

    /// Cancels every accept in flight (multishot and single-shot alike).
    pub(super) fn cancel_accepts(&mut self) {
        // Single-shot accepts with an address buffer carry its index as their key.
        let buffered = (0..MAX_SINGLE_ACCEPTS as u32)
            .filter(|&i| self.accept_addrs_free & (1 << i) == 0)
            .map(|i| (ACCEPT_SINGLE, i));
        let targets: Vec<(u32, u32)> = [(ACCEPT_MULTI, NO_KEY), (ACCEPT_SINGLE, NO_KEY)]
            .into_iter()
            .chain(buffered)
            .collect();
        for (target, key) in targets {
            let target = UserData::new(OpKind::Accept, target, key).pack();
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

/// A buffer a single-shot accept writes its peer's address into.
#[derive(Clone, Copy)]
pub(super) struct PeerAddr {
    pub storage: libc::sockaddr_storage,
    pub len: libc::socklen_t,
}

impl PeerAddr {
    pub(super) const EMPTY: Self = Self {
        // `sockaddr_storage` is plain integers and arrays of them.
        // SAFETY: all zeros is a valid (unspecified-family) `sockaddr_storage`.
        storage: unsafe { std::mem::zeroed() },
        len: 0,
    };

    /// The address the accept wrote, if it is IPv4 or IPv6.
    fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        let len = self
            .len
            .min(std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t);
        // `SockAddr` reads only the first `len` bytes, by the family they name.
        // SAFETY: `storage` is a whole `sockaddr_storage` and `len` is clamped to its size.
        unsafe { socket2::SockAddr::new(self.storage, len) }.as_socket()
    }
}

/// The listen backlog the kernel grants (`listen(2)` caps it at `net.core.somaxconn`).
pub(super) fn listen_backlog() -> usize {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}
