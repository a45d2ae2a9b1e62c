//! A provided buffer ring (`io_uring_register_buf_ring(3)`), one per client thread and shared
//! by all its connections: an idle connection owns no receive buffer. The kernel picks a
//! buffer when data arrives and names it in the completion; the thread hands it back once the
//! bytes are parsed, in the same loop turn.
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// The ring of buffer descriptors and the buffers themselves.
#[derive(Debug)]
pub struct BufRing {
    /// `entries` descriptors, page aligned, shared with the kernel.
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    /// `entries * buf_size` bytes of receive buffers.
    buffers: Box<[u8]>,
    buf_size: usize,
    entries: u16,
    /// Our copy of the tail: buffers added but not yet published to the kernel.
    tail: u16,
    /// Which buffer sits at each ring position, and where each buffer was last placed: a
    /// bundle names only its first buffer, the rest follow it in ring order.
    bid_at: Box<[u16]>,
    position_of: Box<[u16]>,
    bgid: u16,
}

impl BufRing {
    /// Allocates `entries` buffers of `buf_size` bytes and registers them as group `bgid`.
    ///
    /// # Errors
    ///
    /// The registration's error (`EINVAL` on kernels before 5.19).
    ///
    /// # Panics
    ///
    /// If `entries` is not a power of two (a constant of the caller).
    pub fn register(ring: &IoUring, bgid: u16, entries: u16, buf_size: usize) -> io::Result<Self> {
        assert!(
            entries.is_power_of_two(),
            "buffer ring entries must be a power of two"
        );
        let ring_layout =
            Layout::from_size_align(usize::from(entries) * size_of::<BufRingEntry>(), 4096)
                .expect("a ring of at most 32768 16-byte entries has a valid layout");
        // SAFETY: the layout has a non-zero size: entries is a power of two, so at least 1.
        let ring_ptr = unsafe { alloc_zeroed(ring_layout) }.cast::<BufRingEntry>();
        if ring_ptr.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut this = Self {
            ring: ring_ptr,
            ring_layout,
            buffers: vec![0u8; usize::from(entries) * buf_size].into_boxed_slice(),
            buf_size,
            entries,
            tail: 0,
            bid_at: vec![0; usize::from(entries)].into_boxed_slice(),
            position_of: vec![0; usize::from(entries)].into_boxed_slice(),
            bgid,
        };
        // SAFETY: `ring_ptr` is a page-aligned, zeroed allocation of `entries` descriptors owned
        // by `this`, which frees it only in Drop; `ClientRing` drops its io_uring (which ends
        // the registration) before this, and leaks this instead when operations may remain.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ring_ptr as u64, entries, bgid, 0)?;
        }
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        Ok(this)
    }

    /// The buffer group id to name in receive submissions.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// The first `len` bytes of buffer `bid`, which a completion just handed to us.
    pub fn buffer_mut(&mut self, bid: u16, len: usize) -> &mut [u8] {
        let start = usize::from(bid % self.entries) * self.buf_size;
        &mut self.buffers[start..start + len.min(self.buf_size)]
    }

    /// The buffers a receive of `len` bytes filled, starting at `first` (one for a plain
    /// receive, several for a bundle): each `(bid, bytes)`, in order, appended to `out`.
    pub fn bundle(&self, first: u16, len: usize, out: &mut Vec<(u16, usize)>) {
        let mask = usize::from(self.entries) - 1;
        let mut position = usize::from(self.position_of[usize::from(first) & mask]);
        let mut left = len;
        while left > 0 {
            let bid = self.bid_at[position];
            let take = left.min(self.buf_size);
            out.push((bid, take));
            left -= take;
            position = (position + 1) & mask;
        }
    }

    /// Queues buffer `bid` for reuse; it reaches the kernel at the next [`publish`](Self::publish).
    pub fn push(&mut self, bid: u16) {
        let bid = bid % self.entries;
        let index = usize::from(self.tail & (self.entries - 1));
        self.bid_at[index] = bid;
        self.position_of[usize::from(bid)] = index as u16;
        let addr = self.buffers.as_ptr() as u64 + (usize::from(bid) * self.buf_size) as u64;
        // SAFETY: `index < entries`, so the pointer stays inside the ring allocation; the kernel
        // reads only descriptors between its head and the published tail, and this one is past
        // the published tail until `publish`.
        let entry = unsafe { &mut *self.ring.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed buffer visible to the kernel.
    pub fn publish(&mut self) {
        // SAFETY: the tail field lives in the first descriptor of our live ring allocation; the
        // kernel only reads it, and an atomic release store orders the descriptors written by
        // `push` before it (the kernel reads the tail with acquire semantics).
        let tail = unsafe { &*BufRingEntry::tail(self.ring).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: `ring` came from `alloc_zeroed(ring_layout)` and is freed once, here.
        // `ClientRing` drops this only after its io_uring is gone and nothing was in flight
        // (otherwise it leaks this value instead of dropping it).
        unsafe { dealloc(self.ring.cast(), self.ring_layout) };
    }
}
