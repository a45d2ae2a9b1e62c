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

use nix::sys::eventfd::EventFd;

pub use features::Features;
pub use service::{Admission, ConnId, Ctx, SendError, Service};
pub(crate) use worker::{run_worker, WorkerSetup};

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
    /// Connections closed because their send queue passed the backlog limit.
    pub slow_consumer_closes: AtomicU64,
}

/// State shared by the workers of one server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub stopping: AtomicBool,
    pub wakers: Vec<EventFd>,
    pub stats: Vec<WorkerStats>,
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
