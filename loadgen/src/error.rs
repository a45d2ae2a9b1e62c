//! Why the load generator stopped, and the exit code each reason gets.

use std::io;

use crate::capacity::CapacityError;
use crate::source::SourceError;
use crate::target::TargetError;
use crate::uring::FeatureError;

/// Exit code of a run that completed and reached its target.
pub const EXIT_OK: i32 = 0;
/// Exit code of a run that failed, or completed without reaching its target.
pub const EXIT_FAILED: i32 = 1;
/// Exit code for a bad URL, flag, or a target out of this machine's reach.
pub const EXIT_USAGE: i32 = 2;

/// Everything that stops a run before it reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// A flag's value is out of range.
    #[error("{0}")]
    Usage(String),
    /// The URL was refused.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// An address list (`--source`, `--target-addresses`) was refused.
    #[error("{flag}: {source}")]
    Addresses {
        /// The flag.
        flag: &'static str,
        /// What is wrong with its list.
        #[source]
        source: SourceError,
    },
    /// The target number of connections is out of reach.
    #[error(transparent)]
    Capacity(#[from] CapacityError),
    /// `--server-pid` names no readable process.
    #[error("--server-pid {pid}: cannot read /proc/{pid}: {source}")]
    ServerPid {
        /// The pid given.
        pid: u32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The kernel's io_uring cannot run the client.
    #[error(transparent)]
    Kernel(#[from] FeatureError),
    /// An operation on the local system failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A client thread failed.
    #[error("client thread {id}: {source}")]
    Thread {
        /// The thread.
        id: usize,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl LoadError {
    /// The process exit code for this error. No `_` arm: a new variant must choose.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_)
            | Self::Target(_)
            | Self::Addresses { .. }
            | Self::Capacity(_)
            | Self::ServerPid { .. } => EXIT_USAGE,
            Self::Kernel(_) | Self::Io { .. } | Self::Thread { .. } => EXIT_FAILED,
        }
    }
}
