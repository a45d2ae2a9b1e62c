//! Software prefetch: a hint that memory is about to be read, for walks over many cold
//! allocations in a row (a fan-out's connections, a batch of their completions, their TLS
//! sessions' keys). A no-op on targets without the hint.
#![allow(unsafe_code)] // the x86_64 intrinsic is an `unsafe fn`; it touches no memory.

/// Asks the CPU to start loading the cache lines of the `len` bytes at `ptr`. Nothing is read
/// that the program can see, and no address can fault: it is only a hint.
#[inline]
pub(crate) fn lines(ptr: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut offset = 0;
        while offset < len {
            // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has; the instruction
            // never faults and changes nothing the program can observe, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(ptr.wrapping_add(offset).cast()) };
            offset += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ptr, len);
}
