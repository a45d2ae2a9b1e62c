//! The io_uring driver: the only code that knows io_uring. Thread-per-core workers, each with
//! its own ring, listener, provided buffer ring, connection slab and timer wheel, run the
//! sans-IO [`protocol`](crate::protocol) core and hand complete messages to a [`Service`].

#[doc(hidden)]
pub mod buf_ring;
mod conn;
pub mod features;
#[doc(hidden)]
pub mod ring;
mod service;
mod timer;
mod user_data;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::eventfd::EventFd;

pub use features::Features;
pub use service::{Admission, ConnId, EncodedMessage, Keepalive, SendError, Service, WorkerView};
pub(crate) use timer::TICK;
pub(crate) use worker::{run_worker, WorkerSetup};

/// What the engine's in-memory harness (`broadcast::harness`) builds a `WorkerView` from,
/// without a ring.
#[cfg(test)]
pub(crate) mod testing {
    pub(crate) use super::conn::{Conn, Stage};
    pub(crate) use super::service::PerMessageDeflate;
    pub(crate) use super::timer::TimerWheel;
}

/// The settings the workers run by: limits, timers and ring sizes, validated by
/// [`ServerBuilder::build`](crate::config::ServerBuilder::build). What the service above does
/// with messages (topics, tokens, slow-consumer policy) is not the driver's business.
#[derive(Clone, Debug)]
pub(crate) struct DriverConfig {
    /// Worker threads, each pinned to a CPU with its own ring.
    pub workers: usize,
    /// Largest message, summed across fragments.
    pub max_message_bytes: u64,
    /// Largest request head.
    pub max_head_bytes: usize,
    /// Bytes of frames queued per connection, counting those of the send in flight until the
    /// kernel reports them sent; one frame of any size is admitted into an empty queue.
    pub max_backlog_bytes: usize,
    /// Bytes one worker allocates for unfinished messages, request bodies and incomplete TLS
    /// records, over all connections (the buffers' capacity).
    pub max_pending_bytes: u64,
    /// Time allowed to complete the opening handshake.
    pub handshake_timeout: Duration,
    /// Idle time before a ping; `None` turns pings off.
    pub ping_interval: Option<Duration>,
    /// Time allowed for peers to answer our close frame.
    pub drain_timeout: Duration,
    /// Size of each receive buffer.
    pub recv_buffer_bytes: usize,
    /// Receive buffers per worker (a power of two).
    pub recv_buffers: u16,
    /// Submission queue entries per ring (a power of two).
    pub ring_entries: u32,
    /// Hold connections as direct descriptors (the default).
    pub direct_descriptors: bool,
    /// The certificate for TLS on the listener, if it speaks TLS.
    pub tls: Option<std::sync::Arc<crate::tls::TlsAcceptor>>,
    /// permessage-deflate is accepted from clients that offer it.
    pub deflate: bool,
    /// Messages under this many bytes go uncompressed.
    pub deflate_min_bytes: usize,
    /// Learn each connection's peer address at the accept ([`Request::peer_addr`]): accepts
    /// are then single-shot, each with its own address buffer, instead of one multishot.
    ///
    /// [`Request::peer_addr`]: crate::protocol::handshake::Request::peer_addr
    pub peer_addresses: bool,
}

/// Counters one worker keeps, read by any thread.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Connections currently in the slab (any stage).
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Messages received.
    pub messages_in: AtomicU64,
    /// Frames queued to connections (messages, control frames and HTTP responses).
    pub frames_out: AtomicU64,
    /// Bytes the kernel accepted for sending.
    pub bytes_out: AtomicU64,
    /// Completions that arrived for a slot already reused (dropped).
    pub stale_completions: AtomicU64,
    /// Times the buffer ring ran dry (`ENOBUFS`); the receive was re-armed.
    pub recv_buffer_starvation: AtomicU64,
    /// Bytes held now in unfinished messages and request bodies (a gauge; at most
    /// `max_pending_bytes`).
    pub pending_bytes: AtomicU64,
    /// Connections closed with 1013 (or answered 503) because their next bytes would have
    /// taken the worker past `max_pending_bytes`.
    pub pending_budget_closes: AtomicU64,
    /// 1 if the worker exited with operations possibly in flight, so it leaked their memory
    /// on purpose instead of freeing it; 0 after a clean stop.
    pub leaked_on_exit: AtomicU64,
    /// Submits the kernel refused with an error other than a full completion queue.
    pub submit_failures: AtomicU64,
    /// Connections closed because their send queue passed the backlog limit.
    pub slow_consumer_closes: AtomicU64,
    /// Entries on the worker's timer wheel (a gauge, updated each loop turn): one per
    /// connection with a deadline, plus the stale entries of deadlines that moved.
    pub timers: AtomicU64,
    /// TLS sessions that failed (a bad handshake, a protocol error, plaintext on the TLS
    /// port); each was closed, after an alert where rustls had one.
    pub tls_failures: AtomicU64,
    /// Connections that negotiated permessage-deflate.
    pub deflate_upgrades: AtomicU64,
    /// Messages compressed (or tried and sent plain because compression did not shrink
    /// them): once per worker and window size for a broadcast, however many subscribers.
    pub deflate_compressions: AtomicU64,
    /// Compressed messages received and inflated (or failed).
    pub deflate_inflations: AtomicU64,
    /// Frames queued compressed.
    pub deflate_frames_out: AtomicU64,
}

/// State shared by the workers of one server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub stopping: AtomicBool,
    pub wakers: Vec<EventFd>,
    pub stats: Vec<WorkerStats>,
    /// The TLS certificate, for its reload counters.
    pub tls: Option<std::sync::Arc<crate::tls::TlsAcceptor>>,
}

impl Shared {
    pub(crate) fn new(workers: usize) -> std::io::Result<Self> {
        let wakers = (0..workers)
            .map(|_| {
                EventFd::from_flags(
                    nix::sys::eventfd::EfdFlags::EFD_CLOEXEC
                        | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
                )
                .map_err(std::io::Error::from)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            stopping: AtomicBool::new(false),
            wakers,
            stats: (0..workers).map(|_| WorkerStats::default()).collect(),
            tls: None,
        })
    }

    /// Wakes one worker: its wake read completes and its service's `on_wake` runs.
    pub(crate) fn wake(&self, worker: usize) {
        if let Some(waker) = self.wakers.get(worker) {
            // The only failure is a full counter, which already means "wake up".
            let _ = waker.write(1);
        }
    }

    /// Asks every worker to shut down gracefully; callable from any thread, more than once.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for waker in &self.wakers {
            // The only failure is a full counter, which already means "wake up".
            let _ = waker.write(1);
        }
    }
}
