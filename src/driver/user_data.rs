//! What a completion is for: each submission's `user_data` packs the operation, the slab key of
//! its connection and that slot's generation, so a completion that arrives after its
//! connection was closed and its slot reused is recognised and dropped.

/// The operation a submission performed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum OpKind {
    /// Multishot accept on the worker's listener.
    Accept = 1,
    /// Multishot receive on a connection.
    Recv,
    /// A (vectored) send on a connection.
    Send,
    /// Cancellation of a connection's operations before its close.
    Cancel,
    /// Close of a connection's direct descriptor.
    Close,
    /// Shutdown of a connection's write side after its last frame.
    Shutdown,
    /// Read of the worker's wake eventfd.
    Wake,
    /// Read of the process's signalfd (worker 0 only).
    Signal,
}

impl OpKind {
    const ALL: [Self; 8] = [
        Self::Accept,
        Self::Recv,
        Self::Send,
        Self::Cancel,
        Self::Close,
        Self::Shutdown,
        Self::Wake,
        Self::Signal,
    ];
}

/// Bits 56..64 op kind, 32..56 slot generation (24 bits, wraps), 0..32 slab key.
/// Kinds start at 1, so a zero `user_data` is always a bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UserData {
    pub kind: OpKind,
    pub generation: u32,
    pub key: u32,
}

pub(crate) const GENERATION_MASK: u32 = (1 << 24) - 1;

impl UserData {
    pub(crate) fn new(kind: OpKind, generation: u32, key: usize) -> Self {
        Self {
            kind,
            generation: generation & GENERATION_MASK,
            key: key as u32,
        }
    }

    pub(crate) fn pack(self) -> u64 {
        (self.kind as u64) << 56
            | u64::from(self.generation & GENERATION_MASK) << 32
            | u64::from(self.key)
    }

    pub(crate) fn unpack(raw: u64) -> Option<Self> {
        let kind = OpKind::ALL.into_iter().find(|k| *k as u64 == raw >> 56)?;
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

    #[test]
    fn pack_unpack_round_trip_and_generation_wraps() {
        for kind in OpKind::ALL {
            for (generation, key) in [(0, 0), (1, 7), (GENERATION_MASK, u32::MAX as usize)] {
                let ud = UserData::new(kind, generation, key);
                assert_eq!(UserData::unpack(ud.pack()), Some(ud));
                assert_ne!(ud.pack(), 0);
            }
        }
        // Generations wrap at 24 bits, so generation 2^24 aliases 0: a reuse must come
        // 16 million closes later on the same slab key for a stale completion to pass.
        assert_eq!(UserData::new(OpKind::Recv, 1 << 24, 3).generation, 0);
        assert_eq!(UserData::unpack(0), None);
        assert_eq!(UserData::unpack(0xFF << 56), None);
    }
}
