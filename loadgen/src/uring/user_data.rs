//! What a completion is for: each submission's `user_data` packs the operation, the direct
//! descriptor slot of its connection and that slot's generation, so a completion that arrives
//! after its connection was closed and its slot reused is recognised and dropped.

/// The operation a submission performed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    /// `IORING_OP_SOCKET` straight into the connection's direct descriptor slot.
    Socket = 1,
    /// `SOCKET_URING_OP_SETSOCKOPT`: `IP_BIND_ADDRESS_NO_PORT` before the bind.
    SockOpt,
    /// `IORING_OP_BIND` to the connection's source address, port 0.
    Bind,
    /// `IORING_OP_CONNECT` to the target.
    Connect,
    /// A send: the upgrade request, a pong or a close frame.
    Send,
    /// Multishot receive into the thread's provided buffer ring.
    Recv,
    /// `shutdown(SHUT_RDWR)` before the close, to end the receive.
    Shutdown,
    /// Cancellation of a connect that has not completed, before the close.
    Cancel,
    /// Close of the direct descriptor.
    Close,
}

impl OpKind {
    const ALL: [Self; 9] = [
        Self::Socket,
        Self::SockOpt,
        Self::Bind,
        Self::Connect,
        Self::Send,
        Self::Recv,
        Self::Shutdown,
        Self::Cancel,
        Self::Close,
    ];
}

/// Generations wrap at 24 bits.
pub const GENERATION_MASK: u32 = (1 << 24) - 1;

/// Bits 56..64 op kind, 32..56 slot generation (24 bits, wraps), 0..32 slot.
/// Kinds start at 1, so a zero `user_data` is always a bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserData {
    /// The operation.
    pub kind: OpKind,
    /// The slot's generation when the operation was submitted.
    pub generation: u32,
    /// The direct descriptor slot, which is also the connection's key.
    pub slot: u32,
}

impl UserData {
    /// Packs into the 64 bits an SQE carries.
    pub fn pack(self) -> u64 {
        (self.kind as u64) << 56
            | u64::from(self.generation & GENERATION_MASK) << 32
            | u64::from(self.slot)
    }

    /// Unpacks; `None` for a value no [`pack`](Self::pack) produced.
    pub fn unpack(raw: u64) -> Option<Self> {
        let kind = OpKind::ALL.into_iter().find(|k| *k as u64 == raw >> 56)?;
        Some(Self {
            kind,
            generation: (raw >> 32) as u32 & GENERATION_MASK,
            slot: raw as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trip() {
        for kind in OpKind::ALL {
            for (generation, slot) in [(0, 0), (1, 7), (GENERATION_MASK, u32::MAX)] {
                let ud = UserData {
                    kind,
                    generation,
                    slot,
                };
                assert_eq!(UserData::unpack(ud.pack()), Some(ud));
                assert_ne!(ud.pack(), 0);
            }
        }
        assert_eq!(UserData::unpack(0), None);
        assert_eq!(UserData::unpack(0xFF << 56), None);
    }
}
