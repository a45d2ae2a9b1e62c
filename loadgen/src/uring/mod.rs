//! The client side of io_uring: the only code in the load generator that builds an SQE.
//!
//! Each client thread owns one [`ClientRing`]: a ring, a sparse table of direct descriptors
//! (one slot per connection, so the process's descriptor limit bounds nothing but the table
//! size) and a provided buffer ring for multishot receives. Its API is safe: every buffer an
//! operation points to is owned here until the completion that ends the operation has been
//! reaped, and a ring dropped with operations in flight leaks that memory rather than free it.
//!
//! The ring's set-up, the `user_data` tags, the submit-and-wait step and the provided buffer
//! ring are the server's own (`uringcast::driver::ring` and `buf_ring`); what is here is what
//! only a client does: sockets opened, bound and connected through the ring. It is the one
//! place in `loadgen/` that allows `unsafe` (see `README.md`).
#![allow(unsafe_code)]

pub mod user_data;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use io_uring::types::{DestinationSlot, Fixed};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

use self::user_data::{OpKind, UserData};
use uringcast::driver::buf_ring::BufRing;
use uringcast::driver::ring;

/// Submission queue entries per ring; the completion queue is [`CQ_FACTOR`] times larger, as
/// multishot receives post many completions per submission.
const SQ_ENTRIES: u32 = 2048;
const CQ_FACTOR: u32 = 8;
/// Receive buffers per thread for idle connections: an upgrade response is one buffer, and
/// buffers are returned in the same loop turn, so this only has to cover one turn's burst.
const RECV_BUFFERS: u16 = 1024;
/// A 101 response is about 130 bytes; pings and close frames are smaller.
const RECV_BUFFER_BYTES: usize = 512;
const BUFFER_GROUP: u16 = 0;
/// Times a push retries a ring that is busy (`EBUSY`) before the thread gives up with it.
const BUSY_TRIES: u32 = 1000;

/// The provided receive buffers of one ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvBuffers {
    /// How many (a power of two, at most 32,768).
    pub count: u16,
    /// Bytes in each.
    pub bytes: usize,
}

impl RecvBuffers {
    /// Enough for idle connections: handshakes, pings and closes.
    pub const IDLE: Self = Self {
        count: RECV_BUFFERS,
        bytes: RECV_BUFFER_BYTES,
    };
}

/// What the kernel offers the client, probed once before any thread starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientFeatures {
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` (Linux 6.1).
    pub defer_taskrun: bool,
    /// `IP_BIND_ADDRESS_NO_PORT` can be set through io_uring (`SOCKET_URING_OP_SETSOCKOPT`,
    /// Linux 6.7): the port is then chosen at connect time, by the 4-tuple, not reserved at
    /// bind time.
    pub bind_no_port: bool,
    /// Receive bundles (`IORING_FEAT_RECVSEND_BUNDLE`, Linux 6.10): one multishot receive
    /// completion may fill several provided buffers.
    pub recv_bundle: bool,
}

/// Why the kernel cannot run the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeatureError {
    /// io_uring is refused, or lacks something the server's probe needs too.
    #[error(transparent)]
    Kernel(#[from] uringcast::driver::features::FeatureError),
    /// An operation the client needs is missing.
    #[error("the kernel's io_uring lacks {name}, which the client needs (Linux {since} or later)")]
    Missing {
        /// The operation, as the man pages name it.
        name: &'static str,
        /// The first kernel version that has it.
        since: &'static str,
    },
}

impl ClientFeatures {
    /// Probes the running kernel; `bind` says whether source addresses are to be bound.
    ///
    /// # Errors
    ///
    /// [`FeatureError`] naming why io_uring is refused or the first missing operation.
    pub fn probe(bind: bool) -> Result<Self, FeatureError> {
        let server = uringcast::driver::Features::probe()?;
        let ring = IoUring::new(8).map_err(|_| FeatureError::Missing {
            name: "io_uring_setup",
            since: "5.1",
        })?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|_| FeatureError::Missing {
                name: "IORING_REGISTER_PROBE",
                since: "5.6",
            })?;
        let mut required = vec![
            (opcode::Socket::CODE, "IORING_OP_SOCKET", "5.19"),
            (opcode::Connect::CODE, "IORING_OP_CONNECT", "5.5"),
            (opcode::Send::CODE, "IORING_OP_SEND", "5.6"),
            (opcode::RecvMulti::CODE, "IORING_OP_RECV", "6.0"),
            (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL", "5.5"),
            (opcode::Shutdown::CODE, "IORING_OP_SHUTDOWN", "5.11"),
            (opcode::Close::CODE, "IORING_OP_CLOSE", "5.15"),
        ];
        if bind {
            required.push((opcode::Bind::CODE, "IORING_OP_BIND", "6.11"));
        }
        for (code, name, since) in required {
            if !probe.is_supported(code) {
                return Err(FeatureError::Missing { name, since });
            }
        }
        let bind_no_port = bind && probe.is_supported(opcode::SetSockOpt::CODE) && {
            // The opcode is the generic URING_CMD; only a try tells whether sockets take it.
            try_bind_no_port(ring).unwrap_or(false)
        };
        Ok(Self {
            defer_taskrun: server.defer_taskrun,
            bind_no_port,
            recv_bundle: server.recv_bundle,
        })
    }
}

/// Opens a socket in a direct slot and sets `IP_BIND_ADDRESS_NO_PORT` on it through the ring.
fn try_bind_no_port(mut ring: IoUring) -> io::Result<bool> {
    ring.submitter().register_files_sparse(1)?;
    let one: libc::c_int = 1;
    let slot = DestinationSlot::try_from_slot_target(0).expect("slot 0 is a valid target");
    let entries = [
        opcode::Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0)
            .file_index(Some(slot))
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(1),
        opcode::SetSockOpt::new(
            Fixed(0),
            libc::IPPROTO_IP as u32,
            libc::IP_BIND_ADDRESS_NO_PORT as u32,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as u32,
        )
        .build()
        .flags(squeue::Flags::IO_HARDLINK)
        .user_data(2),
        opcode::Close::new(Fixed(0)).build().user_data(3),
    ];
    // Three submissions, three completions waited for below; nothing but `one` is user memory.
    // SAFETY: `one` lives on this stack frame until every completion has been reaped.
    unsafe { ring.submission().push_multiple(&entries) }
        .map_err(|_| io::Error::other("a fresh ring has room for three entries"))?;
    ring.submit_and_wait(3)?;
    let mut supported = false;
    for cqe in ring.completion() {
        if cqe.user_data() == 2 {
            supported = cqe.result() == 0;
        }
    }
    Ok(supported)
}

/// A completion as the scenario sees it.
#[derive(Debug)]
pub struct Completion<'a> {
    /// What the operation was and which connection it belongs to.
    pub op: UserData,
    /// The operation's result: a count, or a negated errno.
    pub result: i32,
    /// `IORING_CQE_F_MORE`: the multishot operation goes on.
    pub more: bool,
    /// The received bytes, for a receive that filled buffers; valid for this call only.
    pub data: Option<Received<'a>>,
}

/// The bytes one receive completion delivered: one buffer, or several for a bundle.
#[derive(Debug)]
pub struct Received<'a> {
    bufs: &'a mut BufRing,
    filled: &'a [(u16, usize)],
}

impl Received<'_> {
    /// Hands each filled buffer to `each`, in the order the bytes arrived.
    pub fn for_each(&mut self, mut each: impl FnMut(&mut [u8])) {
        for &(bid, len) in self.filled {
            each(self.bufs.buffer_mut(bid, len));
        }
    }
}

/// What must end before a slot's descriptor is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeforeClose {
    /// Nothing is in flight.
    Nothing,
    /// A connected socket: `shutdown(SHUT_RDWR)` ends its receive and any blocked send.
    Shutdown,
    /// The one operation of this kind on the slot (a connect not yet completed).
    Cancel(OpKind),
}

/// A send is already in flight on the slot (one at a time per connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a send is already in flight on slot {0}")]
pub struct SendBusy(pub u32);

/// A ring, its direct descriptor table and its provided buffers, for one client thread.
pub struct ClientRing {
    // Field order is drop order: the ring goes first (inside `ops`), so the kernel lets go of
    // the buffers before they are freed.
    ops: Ops,
    bufs: Option<BufRing>,
    cqes: Vec<(u64, i32, u32)>,
    /// The buffers of the receive being handled.
    filled: Vec<(u16, usize)>,
}

/// The submitting half of a [`ClientRing`], handed to the completion handler so it can react.
pub struct Ops {
    ring: IoUring,
    /// The bytes of each slot's send in flight, with the generation that sent them: freed only
    /// by that send's completion.
    held: Box<[Option<(u32, Bytes)>]>,
    /// Server addresses (at least one, all of one family).
    targets: Box<[SockAddr]>,
    sources: Box<[SockAddr]>,
    /// `IP_BIND_ADDRESS_NO_PORT`'s value, read by the kernel when a chain's setsockopt runs.
    one: Box<libc::c_int>,
    bind_no_port: bool,
    bgid: u16,
    /// Submissions whose final completion has not been reaped.
    in_flight: usize,
    /// Completions whose `user_data` no submission here produced.
    unknown: u64,
}

impl ClientRing {
    /// Builds a ring on the current thread (with `SINGLE_ISSUER` it belongs to this thread),
    /// with `slots` direct descriptor slots and receive buffers, connecting to `targets`.
    ///
    /// # Errors
    ///
    /// Ring setup, file table or buffer ring registration failed; `EMFILE` from the table
    /// means `slots` exceeds `RLIMIT_NOFILE`; `EINVAL` if `targets` is empty.
    pub fn new(
        features: ClientFeatures,
        slots: u32,
        targets: &[SocketAddr],
        sources: &[IpAddr],
        recv: RecvBuffers,
    ) -> io::Result<Self> {
        if targets.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no target address",
            ));
        }
        let (ring, _) = ring::build(SQ_ENTRIES, SQ_ENTRIES * CQ_FACTOR, features.defer_taskrun)?;
        ring.submitter().register_files_sparse(slots)?;
        // `ClientRing::drop` unregisters the group when nothing is in flight and leaks `bufs`
        // otherwise.
        // SAFETY: so the buffers outlive the registration (see above).
        let bufs = unsafe { BufRing::register(&ring, BUFFER_GROUP, recv.count, recv.bytes) }?;
        Ok(Self {
            ops: Ops {
                ring,
                held: (0..slots).map(|_| None).collect(),
                targets: targets.iter().map(|a| SockAddr::new(*a)).collect(),
                sources: sources
                    .iter()
                    .map(|ip| SockAddr::new(SocketAddr::new(*ip, 0)))
                    .collect(),
                one: Box::new(1),
                bind_no_port: features.bind_no_port,
                bgid: bufs.bgid(),
                in_flight: 0,
                unknown: 0,
            },
            bufs: Some(bufs),
            cqes: Vec::with_capacity(1024),
            filled: Vec::with_capacity(16),
        })
    }

    /// The submitting half.
    pub fn ops(&mut self) -> &mut Ops {
        &mut self.ops
    }

    /// Submits what is queued and waits for one completion or `timeout`.
    ///
    /// # Errors
    ///
    /// A ring error other than the timeout, `EINTR` or `EBUSY`.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        ring::submit_and_wait(&self.ops.ring, Some(timeout))
    }

    /// Hands every completion to `handle`, then returns the receive buffers to the kernel.
    /// A send's bytes are released before its completion is handled.
    pub fn reap(&mut self, mut handle: impl FnMut(&mut Ops, Completion<'_>)) {
        let bufs = self
            .bufs
            .as_mut()
            .expect("the buffer ring lives until drop");
        loop {
            ring::take_completions(&mut self.ops.ring, &mut self.cqes);
            if self.cqes.is_empty() {
                break;
            }
            for &(raw, result, flags) in &self.cqes {
                let more = cqueue::more(flags);
                if !more {
                    self.ops.in_flight = self.ops.in_flight.saturating_sub(1);
                }
                let bid = cqueue::buffer_select(flags);
                let Some(op) = UserData::unpack(raw) else {
                    self.ops.unknown += 1;
                    if let Some(bid) = bid {
                        bufs.push(bid);
                    }
                    continue;
                };
                if op.kind == OpKind::Send {
                    if let Some(held) = self.ops.held.get_mut(op.key as usize) {
                        if held.as_ref().is_some_and(|(g, _)| *g == op.generation) {
                            *held = None;
                        }
                    }
                }
                self.filled.clear();
                if let Some(bid) = bid {
                    if result > 0 {
                        // One buffer, or for a bundle the following ones in ring order.
                        bufs.bundle(bid, result as usize, &mut self.filled);
                    } else {
                        self.filled.push((bid, 0));
                    }
                }
                let data = (result > 0 && bid.is_some()).then_some(Received {
                    bufs: &mut *bufs,
                    filled: &self.filled,
                });
                handle(
                    &mut self.ops,
                    Completion {
                        op,
                        result,
                        more,
                        data,
                    },
                );
                for &(bid, _) in &self.filled {
                    bufs.push(bid);
                }
            }
        }
        bufs.publish();
    }

    /// Completions the kernel dropped because the completion queue was full (a bug if not 0).
    pub fn overflow(&mut self) -> u32 {
        self.ops.ring.completion().overflow()
    }
}

impl Drop for ClientRing {
    fn drop(&mut self) {
        if self.ops.in_flight == 0 {
            if let Some(bufs) = &self.bufs {
                // Failure means the registration is already gone: nothing to undo.
                let _ = self.ops.ring.submitter().unregister_buf_ring(bufs.bgid());
            }
            return;
        }
        // The kernel may still write into the receive buffers or read a send's bytes after
        // the ring is closed: leak them rather than free memory it may touch.
        std::mem::forget(self.bufs.take());
        std::mem::forget(std::mem::take(&mut self.ops.held));
        std::mem::forget(std::mem::replace(&mut self.ops.one, Box::new(1)));
    }
}

impl Ops {
    /// Opens a connection in `slot`, as one linked chain: socket (into the slot) → [set
    /// `IP_BIND_ADDRESS_NO_PORT` → bind to `sources[source]`, port 0] → connect to
    /// `targets[target]` → send `request`. Returns how many completions the chain will post (one per operation; after
    /// a failure the rest complete with `-ECANCELED`).
    ///
    /// # Errors
    ///
    /// [`SendBusy`] if the slot still has a send in flight (nothing is submitted), or a ring
    /// error while making room.
    ///
    /// # Panics
    ///
    /// If `slot` is outside the table, `source` outside the source list or `target` outside
    /// the target list (caller invariants).
    pub fn open(
        &mut self,
        slot: u32,
        generation: u32,
        source: Option<usize>,
        target: usize,
        request: Bytes,
    ) -> io::Result<Result<u32, SendBusy>> {
        let index = slot as usize;
        assert!(index < self.held.len(), "slot {slot} is outside the table");
        if self.held[index].is_some() {
            return Ok(Err(SendBusy(slot)));
        }
        let ud = |kind| UserData::new(kind, generation, slot).pack();
        let link = squeue::Flags::IO_LINK;
        let fixed = Fixed(slot);
        let destination =
            DestinationSlot::try_from_slot_target(slot).expect("table slots are below u32::MAX-2");
        let mut chain = Vec::with_capacity(5);
        chain.push(
            opcode::Socket::new(self.targets[target].domain(), libc::SOCK_STREAM, 0)
                .file_index(Some(destination))
                .build()
                .flags(link)
                .user_data(ud(OpKind::Socket)),
        );
        if let Some(source) = source {
            let source = &self.sources[source];
            if self.bind_no_port {
                chain.push(
                    opcode::SetSockOpt::new(
                        fixed,
                        libc::IPPROTO_IP as u32,
                        libc::IP_BIND_ADDRESS_NO_PORT as u32,
                        (&raw const *self.one).cast(),
                        size_of::<libc::c_int>() as u32,
                    )
                    .build()
                    .flags(link)
                    .user_data(ud(OpKind::SockOpt)),
                );
            }
            chain.push(
                opcode::Bind::new(fixed, source.as_ptr(), source.len())
                    .build()
                    .flags(link)
                    .user_data(ud(OpKind::Bind)),
            );
        }
        chain.push(
            opcode::Connect::new(
                fixed,
                self.targets[target].as_ptr(),
                self.targets[target].len(),
            )
            .build()
            .flags(link)
            .user_data(ud(OpKind::Connect)),
        );
        chain.push(
            opcode::Send::new(fixed, request.as_ptr(), request.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(ud(OpKind::Send)),
        );
        self.held[index] = Some((generation & ring::GENERATION_MASK, request));
        // The addresses and `one` live in boxes owned by `self` for the ring's life (leaked with
        // it if operations remain); `reap` alone releases `held[slot]`, at the send's completion.
        // SAFETY: every buffer the chain names outlives its operation (see above).
        unsafe { self.push_chain(&chain)? };
        Ok(Ok(chain.len() as u32))
    }

    /// Arms a multishot receive on the slot into the thread's buffer ring; with `bundle`
    /// (kernel 6.10, [`ClientFeatures::recv_bundle`]) one completion may fill several buffers.
    ///
    /// # Errors
    ///
    /// A ring error while making room.
    pub fn arm_recv(&mut self, slot: u32, generation: u32, bundle: bool) -> io::Result<()> {
        let entry = if bundle {
            opcode::RecvMultiBundle::new(Fixed(slot), self.bgid).build()
        } else {
            opcode::RecvMulti::new(Fixed(slot), self.bgid).build()
        };
        let entry = entry.user_data(UserData::new(OpKind::Recv, generation, slot).pack());
        // Drop order frees the ring first, and `Drop` leaks the buffers while operations remain.
        // SAFETY: the receive writes only into the buffer ring, which outlives the operation.
        unsafe { self.push_chain(&[entry]) }
    }

    /// Sends `frame` on the slot; at most one send is in flight per slot.
    ///
    /// # Errors
    ///
    /// [`SendBusy`] (nothing is submitted), or a ring error while making room.
    ///
    /// # Panics
    ///
    /// If `slot` is outside the table (a caller invariant).
    pub fn send(
        &mut self,
        slot: u32,
        generation: u32,
        frame: Bytes,
    ) -> io::Result<Result<(), SendBusy>> {
        let index = slot as usize;
        assert!(index < self.held.len(), "slot {slot} is outside the table");
        if self.held[index].is_some() {
            return Ok(Err(SendBusy(slot)));
        }
        let entry = opcode::Send::new(Fixed(slot), frame.as_ptr(), frame.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(UserData::new(OpKind::Send, generation, slot).pack());
        self.held[index] = Some((generation & ring::GENERATION_MASK, frame));
        // SAFETY: `held[slot]` keeps the frame's bytes until this send's completion is reaped.
        unsafe { self.push_chain(&[entry])? };
        Ok(Ok(()))
    }

    /// Ends what is in flight on the slot as `before` says, then closes its direct descriptor
    /// (linked with `IO_HARDLINK`, so the close runs even when there was nothing to end).
    /// Returns how many completions follow.
    ///
    /// Closing a direct descriptor alone ends no operation: each holds its own reference to
    /// the socket. Cancelling by descriptor (`IORING_ASYNC_CANCEL_FD`) would end them all, but
    /// the kernel finds them by walking every cancelable request of the ring, so closing
    /// 20,000 connections that way costs 20,000² steps; a shutdown wakes exactly this socket's
    /// waiters, and a cancel by `user_data` names one request.
    ///
    /// # Errors
    ///
    /// A ring error while making room.
    pub fn close(&mut self, slot: u32, generation: u32, before: BeforeClose) -> io::Result<u32> {
        let ud = |kind| UserData::new(kind, generation, slot).pack();
        let hardlink = squeue::Flags::IO_HARDLINK;
        let close = opcode::Close::new(Fixed(slot))
            .build()
            .user_data(ud(OpKind::Close));
        let chain = match before {
            BeforeClose::Nothing => vec![close],
            BeforeClose::Shutdown => vec![
                opcode::Shutdown::new(Fixed(slot), libc::SHUT_RDWR)
                    .build()
                    .flags(hardlink)
                    .user_data(ud(OpKind::Shutdown)),
                close,
            ],
            BeforeClose::Cancel(kind) => vec![
                opcode::AsyncCancel::new(ud(kind))
                    .build()
                    .flags(hardlink)
                    .user_data(ud(OpKind::Cancel)),
                close,
            ],
        };
        // SAFETY: shutdown, cancel and close read no user memory.
        unsafe { self.push_chain(&chain)? };
        Ok(chain.len() as u32)
    }

    /// Whether a send (or an open's request) is in flight on the slot.
    pub fn send_in_flight(&self, slot: u32) -> bool {
        self.held.get(slot as usize).is_some_and(Option::is_some)
    }

    /// Submissions whose final completion has not been reaped yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Completions with a `user_data` this ring never produced (a bug if not 0).
    pub fn unknown_completions(&self) -> u64 {
        self.unknown
    }

    /// Pushes a chain of entries into one submission, submitting first if the queue lacks
    /// room for all of them (a link chain ends at a submission's boundary).
    ///
    /// # Safety
    ///
    /// Every buffer the entries name must stay valid until their completions are reaped.
    unsafe fn push_chain(&mut self, chain: &[squeue::Entry]) -> io::Result<()> {
        // The kernel cannot take the queue while completions it could not post wait (this
        // thread reaps only between turns): let it run a while, then fail the thread with the
        // error rather than spin forever.
        let mut tries = 0;
        let make_room = |_: &mut IoUring| {
            tries += 1;
            std::thread::yield_now();
            tries < BUSY_TRIES
        };
        // SAFETY: forwarded from this function's contract.
        unsafe { ring::push_all(&mut self.ring, chain, make_room)? };
        self.in_flight += chain.len();
        Ok(())
    }
}

/// A socket address in the C layout the kernel reads.
enum SockAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl SockAddr {
    fn new(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(v4) => Self::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(v6) => Self::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            }),
        }
    }

    fn domain(&self) -> i32 {
        match self {
            Self::V4(_) => libc::AF_INET,
            Self::V6(_) => libc::AF_INET6,
        }
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        match self {
            Self::V4(addr) => (addr as *const libc::sockaddr_in).cast(),
            Self::V6(addr) => (addr as *const libc::sockaddr_in6).cast(),
        }
    }

    fn len(&self) -> libc::socklen_t {
        match self {
            Self::V4(_) => size_of::<libc::sockaddr_in>() as libc::socklen_t,
            Self::V6(_) => size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        }
    }
}
