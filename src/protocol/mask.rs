//! Payload masking (RFC 6455 §5.3), the server's hot path: every payload byte a client sends
//! passes through [`unmask`] once.
//!
//! XOR is its own inverse, so the same call masks and unmasks. `phase` is the position in the
//! 4-byte mask of `buf[0]`, which lets a payload split across reads resume mid-mask.
//!
//! On `x86_64` the widest vector level the CPU supports is detected once and cached. Miri,
//! `--cfg uringcast_force_scalar` builds and other architectures run the portable word path.
#![allow(unsafe_code)]
#![deny(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

use std::sync::atomic::{AtomicU8, Ordering};

/// XOR `buf[i]` with `mask[(i + phase) % 4]`, in place (RFC 6455 §5.3).
///
/// `phase` is the mask phase at `buf[0]` and is taken modulo 4. Uses the level
/// [`simd_level`] chose; the result is the same at every level.
///
/// # Examples
///
/// ```
/// use uringcast::protocol::mask::unmask;
///
/// // RFC 6455 §5.7: a masked "Hello", unmasked in two pieces, the phase carried across.
/// let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
/// let mask = [0x37, 0xfa, 0x21, 0x3d];
/// let (head, tail) = payload.split_at_mut(3);
/// unmask(head, mask, 0);
/// unmask(tail, mask, 3);
/// assert_eq!(&payload, b"Hello");
/// ```
pub fn unmask(buf: &mut [u8], mask: [u8; 4], phase: usize) {
    let level = simd_level();
    // `simd_level` returns only what `detect` found, and `detect` only a level for which
    // `is_supported` was true on this CPU.
    // SAFETY: this CPU runs `level`'s instructions: exactly `run`'s precondition.
    unsafe { run(level, buf, mask, phase) }
}

/// The naive byte loop: the reference every fast path is tested against.
#[doc(hidden)]
pub fn unmask_bytewise(buf: &mut [u8], mask: [u8; 4], phase: usize) {
    // Reduced first so that `i + phase` cannot overflow for any caller-supplied phase.
    let phase = phase % 4;
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= mask[(i + phase) % 4];
    }
}

/// The portable path: eight bytes per step as a `u64`, then the byte loop for the last 0..8.
#[doc(hidden)]
pub fn unmask_words(buf: &mut [u8], mask: [u8; 4], phase: usize) {
    let m = rotate(mask, phase);
    let word = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let bytes: &mut [u8; 8] = chunk
            .try_into()
            .expect("chunks_exact_mut(8) yields only 8-byte chunks");
        *bytes = (u64::from_ne_bytes(*bytes) ^ word).to_ne_bytes();
    }
    // 8 is a multiple of 4, so the remainder starts at phase 0 of the rotated mask.
    unmask_bytewise(chunks.into_remainder(), m, 0);
}

/// [`unmask`] at a forced level, so tests and benches can reach every path. Runs the portable
/// path when this CPU lacks `level`.
#[doc(hidden)]
pub fn unmask_with(level: SimdLevel, buf: &mut [u8], mask: [u8; 4], phase: usize) {
    let level = if is_supported(level) {
        level
    } else {
        SimdLevel::Portable
    };
    // `level` is one `is_supported` just reported this CPU able to run (its features seen by
    // `is_x86_feature_detected!`), or `Portable`, which needs nothing.
    // SAFETY: this CPU runs `level`'s instructions: exactly `run`'s precondition.
    unsafe { run(level, buf, mask, phase) }
}

/// The instruction set [`unmask`] runs on this machine, widest first in `Ord`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
#[non_exhaustive] // an aarch64 NEON level may join.
pub enum SimdLevel {
    /// [`unmask_words`]: no `std::arch` intrinsics, for CPUs and builds without them.
    Portable = 0,
    /// 128-bit SSE2 vectors.
    Sse2 = 1,
    /// 256-bit AVX2 vectors.
    Avx2 = 2,
    /// 512-bit AVX-512F vectors.
    Avx512 = 3,
}

impl SimdLevel {
    /// A short lowercase name for logs and benchmark ids: `portable`, `sse2`, `avx2`, `avx512`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Sse2 => "sse2",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }

    fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Self::Portable),
            1 => Some(Self::Sse2),
            2 => Some(Self::Avx2),
            3 => Some(Self::Avx512),
            _ => None,
        }
    }
}

/// The level [`unmask`] uses: detected on the first call, then read from a cached atomic.
#[must_use]
pub fn simd_level() -> SimdLevel {
    if let Some(level) = SimdLevel::from_raw(LEVEL.load(Ordering::Relaxed)) {
        return level;
    }
    let level = detect();
    // Relaxed suffices: detection is deterministic, so threads racing here store the same value,
    // and the atomic only spares the later calls a CPUID.
    LEVEL.store(level as u8, Ordering::Relaxed);
    level
}

/// `LEVEL` before the first detection; any value that is not a `SimdLevel`.
const UNDETECTED: u8 = u8::MAX;

/// Holds `UNDETECTED` or a level `detect` returned.
static LEVEL: AtomicU8 = AtomicU8::new(UNDETECTED);

/// The widest level this CPU supports.
fn detect() -> SimdLevel {
    [SimdLevel::Avx512, SimdLevel::Avx2, SimdLevel::Sse2]
        .into_iter()
        .find(|level| is_supported(*level))
        .unwrap_or(SimdLevel::Portable)
}

/// Whether this build and this CPU can run `level`'s path.
fn is_supported(level: SimdLevel) -> bool {
    match level {
        SimdLevel::Portable => true,
        #[cfg(all(target_arch = "x86_64", not(miri), not(uringcast_force_scalar)))]
        SimdLevel::Sse2 => is_x86_feature_detected!("sse2"),
        #[cfg(all(target_arch = "x86_64", not(miri), not(uringcast_force_scalar)))]
        SimdLevel::Avx2 => is_x86_feature_detected!("avx2"),
        // rustc's `avx512f` target feature implies `avx2`, so ask for both rather than assume
        // every AVX-512 CPU has AVX2.
        #[cfg(all(target_arch = "x86_64", not(miri), not(uringcast_force_scalar)))]
        SimdLevel::Avx512 => {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx2")
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri), not(uringcast_force_scalar))))]
        SimdLevel::Sse2 | SimdLevel::Avx2 | SimdLevel::Avx512 => false,
    }
}

/// `mask` rotated so that its byte 0 is the one `phase` selects.
fn rotate(mask: [u8; 4], phase: usize) -> [u8; 4] {
    // One rotate instruction; `<[u8]>::rotate_left` runs a general algorithm costing several ns,
    // which dominated 64-byte frames.
    let shift = 8 * (phase % 4) as u32;
    u32::from_le_bytes(mask).rotate_right(shift).to_le_bytes()
}

/// Runs `level`'s path.
///
/// # Safety
///
/// `is_supported(level)` must be true on this CPU.
unsafe fn run(level: SimdLevel, buf: &mut [u8], mask: [u8; 4], phase: usize) {
    #[cfg(all(target_arch = "x86_64", not(miri), not(uringcast_force_scalar)))]
    match level {
        SimdLevel::Portable => unmask_words(buf, mask, phase),
        // SAFETY: the caller guarantees `is_supported(Sse2)`: `sse2` was detected.
        SimdLevel::Sse2 => unsafe { x86::unmask_sse2(buf, mask, phase) },
        // SAFETY: the caller guarantees `is_supported(Avx2)`: `avx2` was detected.
        SimdLevel::Avx2 => unsafe { x86::unmask_avx2(buf, mask, phase) },
        // SAFETY: the caller guarantees `is_supported(Avx512)`: `avx512f` and `avx2` were detected.
        SimdLevel::Avx512 => unsafe { x86::unmask_avx512(buf, mask, phase) },
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri), not(uringcast_force_scalar))))]
    {
        // Only `Portable` is supported here, so the level has nothing left to choose.
        let _ = level;
        unmask_words(buf, mask, phase)
    }
}

/// The vector paths. Each XORs whole vectors with unaligned loads and stores that never leave
/// `buf`, four vectors per step while it can, then one, and hands the last partial vector to
/// [`unmask_words`]. Vector widths are multiples of 4, so the tail starts at the same phase.
#[cfg(all(target_arch = "x86_64", not(miri), not(uringcast_force_scalar)))]
mod x86 {
    use super::{rotate, unmask_words};
    use std::arch::x86_64::{
        _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256, _mm256_xor_si256,
        _mm512_loadu_si512, _mm512_set1_epi32, _mm512_storeu_si512, _mm512_xor_si512,
        _mm_loadu_si128, _mm_set1_epi32, _mm_storeu_si128, _mm_xor_si128,
    };

    /// # Safety
    ///
    /// The CPU must support SSE2 (`is_x86_feature_detected!("sse2")`).
    #[target_feature(enable = "sse2")]
    pub(super) unsafe fn unmask_sse2(buf: &mut [u8], mask: [u8; 4], phase: usize) {
        const WIDTH: usize = 16;
        let m = rotate(mask, phase);
        let vector = _mm_set1_epi32(i32::from_ne_bytes(m));
        let mut blocks = buf.chunks_exact_mut(4 * WIDTH);
        for block in &mut blocks {
            let p = block.as_mut_ptr();
            // `block` is 4 * WIDTH bytes of `buf`: the vectors at offsets 0, WIDTH, 2 * WIDTH and
            // 3 * WIDTH lie inside it, and loadu/storeu accept any alignment.
            // SAFETY: four in-bounds unaligned vectors; SSE2 is this fn's precondition.
            unsafe {
                let a = _mm_loadu_si128(p.cast());
                let b = _mm_loadu_si128(p.add(WIDTH).cast());
                let c = _mm_loadu_si128(p.add(2 * WIDTH).cast());
                let d = _mm_loadu_si128(p.add(3 * WIDTH).cast());
                _mm_storeu_si128(p.cast(), _mm_xor_si128(a, vector));
                _mm_storeu_si128(p.add(WIDTH).cast(), _mm_xor_si128(b, vector));
                _mm_storeu_si128(p.add(2 * WIDTH).cast(), _mm_xor_si128(c, vector));
                _mm_storeu_si128(p.add(3 * WIDTH).cast(), _mm_xor_si128(d, vector));
            }
        }
        let mut chunks = blocks.into_remainder().chunks_exact_mut(WIDTH);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr();
            // SAFETY: `chunk` is WIDTH bytes of `buf`, one unaligned vector; SSE2 is required.
            unsafe { _mm_storeu_si128(p.cast(), _mm_xor_si128(_mm_loadu_si128(p.cast()), vector)) };
        }
        unmask_words(chunks.into_remainder(), m, 0);
    }

    /// # Safety
    ///
    /// The CPU must support AVX2 (`is_x86_feature_detected!("avx2")`).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn unmask_avx2(buf: &mut [u8], mask: [u8; 4], phase: usize) {
        const WIDTH: usize = 32;
        let m = rotate(mask, phase);
        let vector = _mm256_set1_epi32(i32::from_ne_bytes(m));
        let mut blocks = buf.chunks_exact_mut(4 * WIDTH);
        for block in &mut blocks {
            let p = block.as_mut_ptr();
            // `block` is 4 * WIDTH bytes of `buf`: the vectors at offsets 0, WIDTH, 2 * WIDTH and
            // 3 * WIDTH lie inside it, and loadu/storeu accept any alignment.
            // SAFETY: four in-bounds unaligned vectors; AVX2 is this fn's precondition.
            unsafe {
                let a = _mm256_loadu_si256(p.cast());
                let b = _mm256_loadu_si256(p.add(WIDTH).cast());
                let c = _mm256_loadu_si256(p.add(2 * WIDTH).cast());
                let d = _mm256_loadu_si256(p.add(3 * WIDTH).cast());
                _mm256_storeu_si256(p.cast(), _mm256_xor_si256(a, vector));
                _mm256_storeu_si256(p.add(WIDTH).cast(), _mm256_xor_si256(b, vector));
                _mm256_storeu_si256(p.add(2 * WIDTH).cast(), _mm256_xor_si256(c, vector));
                _mm256_storeu_si256(p.add(3 * WIDTH).cast(), _mm256_xor_si256(d, vector));
            }
        }
        let mut chunks = blocks.into_remainder().chunks_exact_mut(WIDTH);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr();
            // SAFETY: `chunk` is WIDTH bytes of `buf`, one unaligned vector; AVX2 is required.
            unsafe {
                _mm256_storeu_si256(
                    p.cast(),
                    _mm256_xor_si256(_mm256_loadu_si256(p.cast()), vector),
                );
            }
        }
        unmask_words(chunks.into_remainder(), m, 0);
    }

    /// # Safety
    ///
    /// The CPU must support AVX-512F and AVX2 (`is_x86_feature_detected!` for both; rustc's
    /// `avx512f` target feature implies `avx2`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn unmask_avx512(buf: &mut [u8], mask: [u8; 4], phase: usize) {
        const WIDTH: usize = 64;
        let m = rotate(mask, phase);
        let vector = _mm512_set1_epi32(i32::from_ne_bytes(m));
        let mut blocks = buf.chunks_exact_mut(4 * WIDTH);
        for block in &mut blocks {
            let p = block.as_mut_ptr();
            // `block` is 4 * WIDTH bytes of `buf`: the vectors at offsets 0, WIDTH, 2 * WIDTH and
            // 3 * WIDTH lie inside it, and loadu/storeu accept any alignment.
            // SAFETY: four in-bounds unaligned vectors; AVX-512F is this fn's precondition.
            unsafe {
                let a = _mm512_loadu_si512(p.cast());
                let b = _mm512_loadu_si512(p.add(WIDTH).cast());
                let c = _mm512_loadu_si512(p.add(2 * WIDTH).cast());
                let d = _mm512_loadu_si512(p.add(3 * WIDTH).cast());
                _mm512_storeu_si512(p.cast(), _mm512_xor_si512(a, vector));
                _mm512_storeu_si512(p.add(WIDTH).cast(), _mm512_xor_si512(b, vector));
                _mm512_storeu_si512(p.add(2 * WIDTH).cast(), _mm512_xor_si512(c, vector));
                _mm512_storeu_si512(p.add(3 * WIDTH).cast(), _mm512_xor_si512(d, vector));
            }
        }
        let mut chunks = blocks.into_remainder().chunks_exact_mut(WIDTH);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr();
            // SAFETY: `chunk` is WIDTH bytes of `buf`, one unaligned vector; AVX-512F is required.
            unsafe {
                _mm512_storeu_si512(
                    p.cast(),
                    _mm512_xor_si512(_mm512_loadu_si512(p.cast()), vector),
                );
            }
        }
        unmask_words(chunks.into_remainder(), m, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6455 §5.7's mask: four distinct non-zero bytes, so a wrong phase or a stray write
    /// outside the slice changes what it touches.
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    /// The exhaustive sweep is too slow under Miri, which only checks the portable paths.
    const MAX_LEN: usize = if cfg!(miri) { 70 } else { 1100 };
    const OFFSETS: usize = if cfg!(miri) { 8 } else { 64 };
    const GUARD: usize = 64;

    /// 64-byte aligned, so offset `o` starts the slice exactly `o` bytes past a vector boundary.
    #[repr(align(64))]
    struct Arena([u8; OFFSETS + MAX_LEN + GUARD]);

    /// Every length 0..=MAX_LEN at every offset 0..OFFSETS and phase 0..4 against
    /// `unmask_bytewise`, and every byte around the slice untouched. The reference runs once per
    /// (length, phase); each case then costs a copy, the path under test and three `memcmp`s.
    fn sweep(f: impl Fn(&mut [u8], [u8; 4], usize)) {
        let input: Vec<u8> = (0..MAX_LEN).map(|i| (i * 131 + 7) as u8).collect();
        let mut template = Arena([0; OFFSETS + MAX_LEN + GUARD]);
        template
            .0
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i * 29 + 101) as u8);
        let mut arena = Arena(template.0);
        let mut expected = Vec::with_capacity(MAX_LEN);
        for len in 0..=MAX_LEN {
            for phase in 0..4 {
                expected.clear();
                expected.extend_from_slice(&input[..len]);
                unmask_bytewise(&mut expected, MASK, phase);
                for offset in 0..OFFSETS {
                    arena.0 = template.0;
                    let end = offset + len;
                    arena.0[offset..end].copy_from_slice(&input[..len]);
                    f(&mut arena.0[offset..end], MASK, phase);
                    assert!(
                        arena.0[offset..end] == expected[..],
                        "wrong output: len {len}, offset {offset}, phase {phase}"
                    );
                    assert!(
                        arena.0[..offset] == template.0[..offset]
                            && arena.0[end..] == template.0[end..],
                        "write outside the slice: len {len}, offset {offset}, phase {phase}"
                    );
                }
            }
        }
    }

    fn sweep_level(level: SimdLevel) {
        if is_supported(level) {
            sweep(|buf, mask, phase| unmask_with(level, buf, mask, phase));
        } else {
            println!(
                "SKIP mask::tests::{}: not supported by this CPU or build",
                level.name()
            );
        }
    }

    #[test]
    fn portable_matches_bytewise() {
        sweep(unmask_words);
        sweep_level(SimdLevel::Portable);
    }

    #[test]
    fn sse2_matches_bytewise() {
        sweep_level(SimdLevel::Sse2);
    }

    #[test]
    fn avx2_matches_bytewise() {
        sweep_level(SimdLevel::Avx2);
    }

    #[test]
    fn avx512_matches_bytewise() {
        sweep_level(SimdLevel::Avx512);
    }

    #[test]
    fn dispatch_matches_bytewise() {
        sweep(unmask);
    }

    #[test]
    fn unmask_twice_restores_input() {
        let input: Vec<u8> = (0..2000).map(|i| (i * 7 + 3) as u8).collect();
        for len in [
            0, 1, 3, 4, 5, 15, 16, 17, 63, 64, 65, 255, 256, 257, 1000, 2000,
        ] {
            for phase in 0..4 {
                let mut buf = input[..len].to_vec();
                unmask(&mut buf, MASK, phase);
                if len > 0 {
                    assert_ne!(buf, input[..len], "len {len}, phase {phase}");
                }
                unmask(&mut buf, MASK, phase);
                assert_eq!(buf, input[..len], "len {len}, phase {phase}");
            }
        }
    }

    #[test]
    fn rfc_6455_section_5_7_hello() {
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        unmask(&mut payload, MASK, 0);
        assert_eq!(&payload, b"Hello");
    }

    #[test]
    fn split_resumes_at_carried_phase() {
        let input: Vec<u8> = (0..700).map(|i| (i * 13 + 5) as u8).collect();
        let mut whole = input.clone();
        unmask(&mut whole, MASK, 1);
        for split in [0, 1, 2, 3, 5, 64, 67, 300, 699, 700] {
            let mut pieces = input.clone();
            let (head, tail) = pieces.split_at_mut(split);
            unmask(head, MASK, 1);
            unmask(tail, MASK, (1 + split) % 4);
            assert_eq!(pieces, whole, "split at {split}");
        }
    }

    #[test]
    fn phase_is_taken_modulo_4() {
        let input: Vec<u8> = (0..300).map(|i| i as u8).collect();
        for phase in 0..4 {
            let mut reference = input.clone();
            unmask_bytewise(&mut reference, MASK, phase);
            for alias in [phase + 4, phase + 400, usize::MAX - 3 + phase] {
                for f in [unmask, unmask_words, unmask_bytewise] {
                    let mut buf = input.clone();
                    f(&mut buf, MASK, alias);
                    assert_eq!(buf, reference, "phase {alias}");
                }
            }
        }
    }

    #[test]
    fn level_is_detected_once_and_supported() {
        let level = simd_level();
        assert_eq!(simd_level(), level);
        assert!(is_supported(level));
        assert_eq!(SimdLevel::from_raw(UNDETECTED), None);
        let names = [
            SimdLevel::Portable,
            SimdLevel::Sse2,
            SimdLevel::Avx2,
            SimdLevel::Avx512,
        ]
        .map(SimdLevel::name);
        assert_eq!(names, ["portable", "sse2", "avx2", "avx512"]);
    }
}
