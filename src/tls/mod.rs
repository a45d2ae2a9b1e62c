//! TLS for `wss://` and `https://`, as a sans-IO layer between the driver's buffers and the
//! protocol core: [`TlsSession`] turns ciphertext into plaintext and back without touching a
//! socket, and [`TlsAcceptor`] holds the certificate new handshakes use.
//!
//! The kernel has no kTLS here (and may not elsewhere), so records are sealed and opened in
//! user space, in each worker's loop, with rustls's unbuffered API over buffers the driver
//! owns. See `docs/ARCHITECTURE.md` for the copies per message.

mod alert;
mod config;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod record;
mod session;
#[cfg(test)]
pub(crate) mod testing;

pub use alert::{AlertDescription, RecordError};
pub use config::{TlsAcceptor, TlsConfigError, TlsFiles};
pub use session::{
    RecordBuf, Status, TlsError, TlsSession, MAX_INCOMING_BYTES, MAX_RECORD_OVERHEAD,
    MAX_RECORD_PLAINTEXT,
};
