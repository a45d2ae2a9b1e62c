//! What the kernel's io_uring offers, probed once at start.

use std::io;

use io_uring::{opcode, IoUring, Probe};

/// The io_uring capabilities this server relies on, or falls back from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Receive bundles (kernel 6.10): one completion may cover several buffers.
    pub recv_bundle: bool,
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` (kernel 6.1).
    pub defer_taskrun: bool,
    /// `IORING_FEAT_EXT_ARG`: the wait can carry its own timeout (kernel 5.11).
    pub ext_arg: bool,
}

/// Why io_uring cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeatureError {
    /// `io_uring_setup` was refused.
    #[error("io_uring is unavailable: {reason}")]
    Unavailable {
        /// What refused it, as far as can be told.
        reason: String,
        /// The error from `io_uring_setup`.
        #[source]
        source: io::Error,
    },
    /// An operation the server needs is missing.
    #[error("the kernel's io_uring lacks {0}; uringcast needs Linux 6.0 or later")]
    Missing(&'static str),
}

/// The operations without which the server cannot run, with the names the man pages use.
const REQUIRED: [(u8, &str); 8] = [
    (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT"),
    (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
    (opcode::Send::CODE, "IORING_OP_SEND"),
    (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
    (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
    (opcode::Close::CODE, "IORING_OP_CLOSE"),
    (opcode::Shutdown::CODE, "IORING_OP_SHUTDOWN"),
    (opcode::Read::CODE, "IORING_OP_READ"),
];

impl Features {
    /// Probes the running kernel.
    ///
    /// # Errors
    ///
    /// [`FeatureError::Unavailable`] with the likely cause when io_uring is refused (the
    /// `kernel.io_uring_disabled` sysctl, a seccomp filter, a kernel without it), and
    /// [`FeatureError::Missing`] naming the first required operation the kernel lacks.
    pub fn probe() -> Result<Self, FeatureError> {
        let ring = IoUring::new(8).map_err(|source| FeatureError::Unavailable {
            reason: explain_setup_error(&source),
            source,
        })?;
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|_| FeatureError::Missing("IORING_REGISTER_PROBE"))?;
        for (code, name) in REQUIRED {
            if !probe.is_supported(code) {
                return Err(FeatureError::Missing(name));
            }
        }
        // Sparse fixed-file tables and buffer rings have no opcode: try them.
        ring.submitter().register_files_sparse(1).map_err(|_| {
            FeatureError::Missing("sparse registered file tables (IORING_REGISTER_FILES2)")
        })?;
        let params = ring.params();
        let defer_taskrun = IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(8)
            .is_ok();
        Ok(Self {
            // Bundles arrived in 6.10 together with IORING_FEAT_RECVSEND_BUNDLE.
            recv_bundle: params.is_feature_recvsend_bundle(),
            defer_taskrun,
            ext_arg: params.is_feature_ext_arg(),
        })
    }
}

/// Says why `io_uring_setup(2)` failed, reading the sysctl that most often explains it.
fn explain_setup_error(error: &io::Error) -> String {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok());
    explain(error, sysctl)
}

/// The explanation for an `io_uring_setup` error, given `kernel.io_uring_disabled`.
fn explain(error: &io::Error, sysctl: Option<u8>) -> String {
    match (error.raw_os_error(), sysctl) {
        (Some(libc::ENOSYS), _) => "the kernel was built without io_uring (ENOSYS)".into(),
        (_, Some(2)) => "disabled for all processes by sysctl kernel.io_uring_disabled=2".into(),
        (Some(libc::EPERM), Some(1)) => {
            "restricted by sysctl kernel.io_uring_disabled=1 to members of kernel.io_uring_group"
                .into()
        }
        (Some(libc::EPERM), _) => {
            "io_uring_setup was denied (EPERM) with kernel.io_uring_disabled=0: a seccomp filter \
             or security policy (container runtime, systemd SystemCallFilter) blocks it"
                .into()
        }
        _ => format!("io_uring_setup failed: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_refusals_name_their_cause() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        assert!(explain(&eperm, Some(2)).contains("kernel.io_uring_disabled=2"));
        assert!(explain(&eperm, Some(1)).contains("io_uring_group"));
        assert!(explain(&eperm, Some(0)).contains("seccomp"));
        let enosys = io::Error::from_raw_os_error(libc::ENOSYS);
        assert!(explain(&enosys, None).contains("without io_uring"));
    }

    #[test]
    fn this_kernel_has_what_the_server_needs() {
        match Features::probe() {
            Ok(features) => eprintln!("{features:?}"),
            Err(FeatureError::Unavailable { reason, .. }) => {
                eprintln!("SKIP this_kernel_has_what_the_server_needs: {reason}")
            }
            Err(error) => panic!("{error}"),
        }
    }
}
