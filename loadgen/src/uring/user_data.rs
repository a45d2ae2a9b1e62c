//! The client's operations, as the `user_data` of its submissions names them; the packing is
//! the server's own (`uringcast::driver::ring`).

use uringcast::driver::ring;

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

impl ring::OpKind for OpKind {
    const ALL: &'static [Self] = &[
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

    fn code(self) -> u8 {
        self as u8
    }
}

pub use ring::GENERATION_MASK;

/// A client submission's tag (packing and generations: `uringcast::driver::ring::UserData`):
/// the key is the connection's direct descriptor slot.
pub type UserData = ring::UserData<OpKind>;

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
