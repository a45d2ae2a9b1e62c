//! The io_uring plumbing both ends of uringcast run on: the server's workers and the load
//! generator's client threads build their rings, tag their submissions and wait for
//! completions through this module, so a fix to any of them reaches both.
//!
//! Public only so the load generator can share it; not part of the embedding API.
#![allow(unsafe_code)] // `push_all` pushes entries that point at caller memory.

use std::io;
use std::time::Duration;

use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{squeue, IoUring};

/// The set-up flags a ring was built with, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// `SINGLE_ISSUER | DEFER_TASKRUN | SUBMIT_ALL` (Linux 6.1): completions' task work runs
    /// only when the owning thread waits, in one batch, with no interrupts in between.
    DeferTaskrun,
    /// `COOP_TASKRUN | SUBMIT_ALL` (Linux 5.19).
    CoopTaskrun,
    /// No optional flag was accepted.
    Plain,
}

impl Setup {
    /// The flags, as the kernel's headers spell them.
    pub fn flags(self) -> &'static str {
        match self {
            Self::DeferTaskrun => "SINGLE_ISSUER | DEFER_TASKRUN | SUBMIT_ALL",
            Self::CoopTaskrun => "COOP_TASKRUN | SUBMIT_ALL",
            Self::Plain => "none",
        }
    }
}

/// Builds a ring of `entries` submissions and `cq_entries` completions on the calling thread
/// (with `SINGLE_ISSUER` it belongs to that thread), trying the best set-up flags first and
/// dropping them one step at a time; `defer_taskrun` says whether the probe found them.
///
/// # Errors
///
/// The kernel refused even a plain ring of that size.
pub fn build(entries: u32, cq_entries: u32, defer_taskrun: bool) -> io::Result<(IoUring, Setup)> {
    if defer_taskrun {
        if let Ok(ring) = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .setup_cqsize(cq_entries)
            .build(entries)
        {
            return Ok((ring, Setup::DeferTaskrun));
        }
    }
    if let Ok(ring) = IoUring::builder()
        .setup_coop_taskrun()
        .setup_submit_all()
        .setup_cqsize(cq_entries)
        .build(entries)
    {
        return Ok((ring, Setup::CoopTaskrun));
    }
    let ring = IoUring::builder().setup_cqsize(cq_entries).build(entries)?;
    Ok((ring, Setup::Plain))
}

/// Submits what is queued and waits for one completion, or until `timeout` if one is given.
/// A timeout, a signal (`EINTR`) and a full completion queue (`EBUSY`: reap, then wait
/// again) are not errors: the caller's loop handles each by reaping.
///
/// # Errors
///
/// Any other error of `io_uring_enter`.
pub fn submit_and_wait(ring: &IoUring, timeout: Option<Duration>) -> io::Result<()> {
    let result = match timeout {
        Some(timeout) => {
            let ts = Timespec::from(timeout);
            let args = SubmitArgs::new().timespec(&ts);
            ring.submitter().submit_with_args(1, &args)
        }
        None => ring.submitter().submit_and_wait(1),
    };
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_transient(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether a failed `io_uring_enter` only asks to reap and try again.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
    )
}

/// Pushes `chain` into the submission queue as one unit (a link chain must not be split
/// across two submissions), submitting first as often as the queue lacks room. When the
/// kernel cannot take the queue yet (`EBUSY`: completions it could not post are waiting, or
/// `EINTR`), `make_room` runs: it should reap completions, and returns `false` to give up, in
/// which case that error is returned rather than retried forever.
///
/// # Errors
///
/// A submission error other than `EBUSY` or `EINTR`, or one of those once `make_room` gives up.
///
/// # Panics
///
/// If `chain` is longer than the submission queue (it could never fit).
///
/// # Safety
///
/// Every buffer the entries name must stay valid until their completions are reaped.
pub unsafe fn push_all(
    ring: &mut IoUring,
    chain: &[squeue::Entry],
    mut make_room: impl FnMut(&mut IoUring) -> bool,
) -> io::Result<()> {
    assert!(
        chain.len() <= ring.params().sq_entries() as usize,
        "a chain of {} entries cannot fit a queue of {}",
        chain.len(),
        ring.params().sq_entries()
    );
    loop {
        // SAFETY: forwarded from this function's contract.
        if unsafe { ring.submission().push_multiple(chain) }.is_ok() {
            return Ok(());
        }
        match ring.submit() {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) => {
                if !make_room(ring) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Copies every completion waiting in the queue into `out` (cleared first) as
/// `(user_data, result, flags)`: handling them may then push submissions.
pub fn take_completions(ring: &mut IoUring, out: &mut Vec<(u64, i32, u32)>) {
    out.clear();
    append_completions(ring, out);
}

/// Moves every completion in the queue to the end of `out` (user_data, result, flags), which
/// frees their room in the completion queue without handling them.
pub fn append_completions(ring: &mut IoUring, out: &mut Vec<(u64, i32, u32)>) {
    out.extend(
        ring.completion()
            .map(|c| (c.user_data(), c.result(), c.flags())),
    );
}

/// The operations of one side, each a distinct non-zero code that a `user_data` carries.
pub trait OpKind: Copy + Eq + std::fmt::Debug + 'static {
    /// Every kind, for decoding.
    const ALL: &'static [Self];
    /// The kind's code, 1..=255 (0 is never a valid `user_data`).
    fn code(self) -> u8;
}

/// Generations wrap at 24 bits.
pub const GENERATION_MASK: u32 = (1 << 24) - 1;

/// What a completion is for: each submission's `user_data` packs the operation, the key of its
/// connection (a slab key or a direct descriptor slot) and that key's generation, so a
/// completion that arrives after its connection was closed and its key reused is recognised
/// and dropped.
///
/// Bits 56..64 op kind, 32..56 generation (24 bits, wraps), 0..32 key. Kinds start at 1, so a
/// zero `user_data` is always a bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserData<K> {
    /// The operation.
    pub kind: K,
    /// The key's generation when the operation was submitted (masked to 24 bits).
    pub generation: u32,
    /// The connection's key.
    pub key: u32,
}

impl<K: OpKind> UserData<K> {
    /// Tags an operation on `key`; the generation is masked to 24 bits.
    pub fn new(kind: K, generation: u32, key: u32) -> Self {
        Self {
            kind,
            generation: generation & GENERATION_MASK,
            key,
        }
    }

    /// Packs into the 64 bits an SQE carries.
    pub fn pack(self) -> u64 {
        u64::from(self.kind.code()) << 56
            | u64::from(self.generation & GENERATION_MASK) << 32
            | u64::from(self.key)
    }

    /// Unpacks; `None` for a value no [`pack`](Self::pack) of this kind produced.
    pub fn unpack(raw: u64) -> Option<Self> {
        let code = (raw >> 56) as u8;
        let kind = K::ALL
            .iter()
            .copied()
            .find(|k| k.code() == code && code != 0)?;
        Some(Self {
            kind,
            generation: (raw >> 32) as u32 & GENERATION_MASK,
            key: raw as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Kind {
        A = 1,
        B = 2,
        Max = 255,
    }

    impl OpKind for Kind {
        const ALL: &'static [Self] = &[Self::A, Self::B, Self::Max];
        fn code(self) -> u8 {
            self as u8
        }
    }

    #[test]
    fn pack_unpack_round_trip_and_generation_wraps() {
        for &kind in Kind::ALL {
            for (generation, key) in [(0, 0), (1, 7), (GENERATION_MASK, u32::MAX)] {
                let ud = UserData::new(kind, generation, key);
                assert_eq!(UserData::unpack(ud.pack()), Some(ud));
                assert_ne!(ud.pack(), 0);
            }
        }
        // Generations wrap at 24 bits, so generation 2^24 aliases 0: a reuse must come
        // 16 million closes later on the same key for a stale completion to pass.
        assert_eq!(UserData::new(Kind::A, 1 << 24, 3).generation, 0);
        assert_eq!(UserData::<Kind>::unpack(0), None);
        assert_eq!(UserData::<Kind>::unpack(3 << 56), None);
    }

    #[test]
    fn a_chain_goes_in_whole_after_a_full_queue_is_submitted() {
        let (mut ring, _) = build(4, 16, true).expect("io_uring is available here");
        let nop = |n: u64| io_uring::opcode::Nop::new().build().user_data(n);
        // Three of four entries taken: a chain of two does not fit until they are submitted.
        for n in 1..=3 {
            // SAFETY: a NOP names no buffer.
            unsafe { ring.submission().push(&nop(n)) }.expect("room for three");
        }
        let chain = [nop(4).flags(squeue::Flags::IO_LINK), nop(5)];
        // SAFETY: NOPs name no buffer.
        unsafe { push_all(&mut ring, &chain, |_| false) }.expect("submitting makes room");
        submit_and_wait(&ring, Some(Duration::from_secs(5))).expect("the chain is submitted");
        let mut seen = Vec::new();
        for _ in 0..5 {
            let mut batch = Vec::new();
            take_completions(&mut ring, &mut batch);
            seen.extend(batch.iter().map(|&(ud, res, _)| (ud, res)));
            if seen.len() >= 5 {
                break;
            }
            submit_and_wait(&ring, Some(Duration::from_millis(200))).expect("a wait");
        }
        seen.sort_unstable();
        assert_eq!(seen, [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]);
    }

    #[test]
    fn a_ring_builds_and_a_timed_wait_returns() {
        let (ring, setup) = build(8, 16, true).expect("io_uring is available here");
        eprintln!("ring set-up: {}", setup.flags());
        let start = std::time::Instant::now();
        submit_and_wait(&ring, Some(Duration::from_millis(20))).expect("a timeout is not an error");
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
