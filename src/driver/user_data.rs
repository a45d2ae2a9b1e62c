//! The server's operations, as the `user_data` of its submissions names them (packing and
//! generations: [`ring::UserData`](super::ring::UserData)).

use super::ring;

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

impl ring::OpKind for OpKind {
    const ALL: &'static [Self] = &[
        Self::Accept,
        Self::Recv,
        Self::Send,
        Self::Cancel,
        Self::Close,
        Self::Shutdown,
        Self::Wake,
        Self::Signal,
    ];

    fn code(self) -> u8 {
        self as u8
    }
}

/// A server submission's tag: the key is the connection's slab key.
pub(crate) type UserData = ring::UserData<OpKind>;

#[cfg(test)]
mod tests {
    use super::ring::OpKind as _;
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        for &kind in OpKind::ALL {
            let ud = UserData::new(kind, 5, 9);
            assert_eq!(UserData::unpack(ud.pack()), Some(ud));
        }
    }
}
