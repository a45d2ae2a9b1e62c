//! A provided buffer ring (`io_uring_register_buf_ring(3)`): one per worker, shared by all its
//! connections, so an idle connection owns no receive buffer. The kernel picks a buffer when
//! data arrives and names it in the completion; the worker hands it back once the protocol
//! has consumed the bytes. The load generator uses the same ring on the client side.
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
    ///
    /// # Safety
    ///
    /// The kernel writes into these buffers and reads their descriptors until the group is
    /// unregistered or `ring` is dropped. The caller must do one of those before this
    /// `BufRing` is dropped, and must not drop it while a receive naming the group may still
    /// be in flight: leak it instead (`std::mem::forget`, `ManuallyDrop`).
    pub unsafe fn register(
        ring: &IoUring,
        bgid: u16,
        entries: u16,
        buf_size: usize,
    ) -> io::Result<Self> {
        assert!(
            entries.is_power_of_two(),
            "buffer ring entries must be a power of two"
        );
        let ring_layout =
            Layout::from_size_align(usize::from(entries) * size_of::<BufRingEntry>(), 4096)
                .expect("a ring of at most 65536 16-byte entries has a valid layout");
        // SAFETY: the layout has a non-zero size (entries >= 1, checked power of two).
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
        // `ring_ptr` is a page-aligned, zeroed allocation of `entries` descriptors, freed only in
        // Drop, and this function's caller promised to end the registration (or leak this
        // ring) before that.
        // SAFETY: the registered memory outlives the registration (see above).
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
        let start = usize::from(bid) * self.buf_size;
        &mut self.buffers[start..start + len.min(self.buf_size)]
    }

    /// The buffers a receive of `len` bytes filled, starting at `first` (one for a plain
    /// receive, several for a bundle): each `(bid, bytes)`, in order, appended to `out`.
    pub fn bundle(&self, first: u16, len: usize, out: &mut Vec<(u16, usize)>) {
        let mut position = usize::from(self.position_of[usize::from(first) % self.bid_at.len()]);
        let mut left = len;
        while left > 0 {
            let bid = self.bid_at[position];
            let take = left.min(self.buf_size);
            out.push((bid, take));
            left -= take;
            position = (position + 1) & (usize::from(self.entries) - 1);
        }
    }

    /// Queues buffer `bid` for reuse; it reaches the kernel at the next [`publish`](Self::publish).
    pub fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.entries - 1));
        self.bid_at[index] = bid;
        self.position_of[usize::from(bid)] = index as u16;
        let addr = self.buffers.as_ptr() as u64 + (usize::from(bid) * self.buf_size) as u64;
        // The kernel reads only descriptors between its head and the published tail, and this
        // one is past the published tail until `publish`.
        // SAFETY: `index < entries` (inside the allocation) and the kernel does not read it now.
        let entry = unsafe { &mut *self.ring.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed buffer visible to the kernel.
    pub fn publish(&mut self) {
        // The kernel only reads the tail, with acquire semantics: a release store orders the
        // descriptors written by `push` before it.
        // SAFETY: the tail field lives in the first descriptor of our live ring allocation.
        let tail = unsafe { &*BufRingEntry::tail(self.ring).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// Unregisters the ring from `ring`; call before dropping, once no receive is in flight.
    pub fn unregister(&self, ring: &IoUring) {
        // Failure means the ring is already gone with the kernel's state: nothing to undo.
        let _ = ring.submitter().unregister_buf_ring(self.bgid);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // The owner (a server worker or a load-generator thread) unregisters the group or drops
        // the whole io_uring first, and leaks this ring instead when receives may remain.
        // SAFETY: `ring` came from `alloc_zeroed(ring_layout)` and is freed once, here.
        unsafe { dealloc(self.ring.cast(), self.ring_layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registered 4-buffer ring of 16-byte buffers on a ring of its own.
    fn ring() -> (IoUring, BufRing) {
        let ring = IoUring::new(8).expect("an io_uring");
        // No receive is ever submitted on this ring, and each test unregisters the group
        // before the BufRing is dropped.
        // SAFETY: so the buffers outlive the registration (see above).
        let bufs = unsafe { BufRing::register(&ring, 7, 4, 16) }.expect("a buffer ring");
        (ring, bufs)
    }

    #[test]
    fn a_bundle_walks_ring_positions_across_the_wrap() {
        let (ring, mut bufs) = ring();
        // Fresh: bid n sits at position n. A bundle of 40 bytes from bid 3 takes position 3,
        // then wraps to positions 0 and 1.
        let mut out = Vec::new();
        bufs.bundle(3, 40, &mut out);
        assert_eq!(out, [(3, 16), (0, 16), (1, 8)]);
        // The kernel took 0..=3; 1 comes back before 0, so the ring's positions 0 and 1
        // (tail 4 and 5, wrapped) now hold bids 1 and 0.
        bufs.push(1);
        bufs.push(0);
        out.clear();
        bufs.bundle(1, 20, &mut out);
        assert_eq!(out, [(1, 16), (0, 4)]);
        out.clear();
        bufs.bundle(3, 40, &mut out);
        assert_eq!(
            out,
            [(3, 16), (1, 16), (0, 8)],
            "position 3 wraps to 0 and 1"
        );
        bufs.unregister(&ring);
    }

    #[test]
    fn buffers_are_distinct_and_bounded() {
        let (ring, mut bufs) = ring();
        bufs.buffer_mut(2, 16).fill(0xaa);
        assert!(bufs.buffer_mut(1, 16).iter().all(|b| *b == 0));
        assert!(bufs.buffer_mut(3, 16).iter().all(|b| *b == 0));
        assert_eq!(
            bufs.buffer_mut(2, 1000).len(),
            16,
            "a length past the buffer is clamped"
        );
        let mut out = Vec::new();
        bufs.bundle(0, 0, &mut out);
        assert!(out.is_empty());
        bufs.unregister(&ring);
    }
}
