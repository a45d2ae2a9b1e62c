//! One server-side TLS session over caller-owned buffers (rustls's unbuffered API).
//!
//! The session never does I/O. [`TlsSession::receive`] takes ciphertext as it came off the
//! socket and gives back the plaintext it carried, plus whatever TLS must send in reply
//! (handshake flights, alerts, key updates), appended to the caller's outgoing buffer.
//! [`TlsSession::encrypt`] turns plaintext into records in the caller's buffer: one AEAD pass
//! from the caller's bytes, so a broadcast frame shared by many receivers is read in place.
//!
//! What it keeps between calls is rustls's connection state and the ciphertext of a record
//! that has not fully arrived. Once that buffer empties it is freed, so an idle session holds
//! no record buffer.

use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use std::sync::Arc;

use super::record::{self, Opened, Records};

/// Ciphertext a session may hold while a record (or a handshake message spread over
/// several records) is incomplete. TLS records carry at most 2^14 bytes of plaintext plus
/// 2,048 of expansion (RFC 8446 §5.2, RFC 5246 §6.2.3), and a handshake message at most
/// 2^16 bytes in practice (rustls's limit): beyond this a peer is only making the server
/// hold bytes.
pub const MAX_INCOMING_BYTES: usize = 72 * 1024;

/// Plaintext per record: TLS's limit (RFC 8446 §5.1).
pub const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// Bytes a record adds to its plaintext at most: a 5-byte header, and for TLS 1.3 the
/// content type and a 16-byte tag, for TLS 1.2's AES-GCM an 8-byte nonce and the tag.
pub const MAX_RECORD_OVERHEAD: usize = 5 + 8 + 16 + 1;

/// A growable byte buffer records are appended to: a `Vec<u8>`, or a `BytesMut` arena whose
/// filled part is split off for a send.
pub trait RecordBuf: std::ops::DerefMut<Target = [u8]> {
    /// Grows or shrinks to `len` bytes (new bytes zeroed).
    fn resize_to(&mut self, len: usize);
}

impl RecordBuf for Vec<u8> {
    fn resize_to(&mut self, len: usize) {
        self.resize(len, 0);
    }
}

impl RecordBuf for bytes::BytesMut {
    fn resize_to(&mut self, len: usize) {
        self.resize(len, 0);
    }
}

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The peer broke the protocol, or a check failed (rustls's error). An alert for the
    /// peer may have been appended to the outgoing buffer.
    #[error("TLS: {0}")]
    Protocol(#[from] rustls::Error),
    /// The peer sent more than [`MAX_INCOMING_BYTES`] without completing a record.
    #[error("TLS: {0} bytes of ciphertext without a complete record")]
    Oversized(usize),
    /// The peer broke a rule of uringcast's TLS 1.3 record layer, or a key operation
    /// failed; the alert the error calls for was appended to the outgoing buffer.
    #[error("TLS: {0}")]
    Record(#[from] super::alert::RecordError),
    /// A session state this server never enables (early data).
    #[error("TLS: unexpected session state {0}")]
    Unexpected(&'static str),
}

/// Where a session is after a receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The handshake is still going on.
    Handshaking,
    /// Application data flows both ways.
    Open,
    /// The peer sent close_notify: it sends nothing more.
    PeerClosed,
}

/// Who handles the records.
enum Engine {
    /// rustls: through the handshake, and for good on a TLS 1.2 session. Boxed, as the
    /// other: an idle session holds only the one it uses.
    Rustls(Box<UnbufferedServerConnection>),
    /// A TLS 1.3 session past its handshake: [`Records`], with rustls out of the data path.
    Records(Box<Records>),
    /// A session whose take-over failed; nothing more goes through it.
    Failed,
}

/// A server-side TLS session.
pub struct TlsSession {
    engine: Engine,
    /// Ciphertext received and not yet consumed: part of a record, or of a handshake message.
    incoming: Vec<u8>,
    /// Bytes at the front of `incoming`, in whole records, that rustls has been shown during
    /// a handshake (see `process`).
    shown: usize,
    peer_closed: bool,
    close_notify_sent: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("incoming", &self.incoming.len())
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

impl TlsSession {
    /// A session that will handshake with `config`.
    ///
    /// # Errors
    ///
    /// rustls refuses the configuration.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        Ok(Self {
            engine: Engine::Rustls(Box::new(UnbufferedServerConnection::new(config)?)),
            incoming: Vec::new(),
            shown: 0,
            peer_closed: false,
            close_notify_sent: false,
        })
    }

    /// Ciphertext held for an incomplete record.
    pub fn buffered_bytes(&self) -> usize {
        self.incoming.len()
    }

    /// Starts loading what sealing the next record reads, when uringcast's record layer
    /// seals it (a hint for walks over many sessions, as the driver makes in a fan-out).
    pub fn prefetch_seal(&self) {
        if let Engine::Records(records) = &self.engine {
            records.prefetch_seal();
        }
    }

    /// Whether the handshake is still going on.
    pub fn is_handshaking(&self) -> bool {
        match &self.engine {
            Engine::Rustls(conn) => conn.is_handshaking(),
            Engine::Records(_) | Engine::Failed => false,
        }
    }

    /// Whether the session has failed: it seals nothing more, and what it owed the peer (an
    /// alert) was appended to the outgoing buffer by the call that failed.
    pub fn is_failed(&self) -> bool {
        matches!(self.engine, Engine::Failed)
    }

    #[cfg(test)]
    pub(crate) fn set_open_sequence_for_test(&mut self, seq: u64) {
        if let Engine::Records(records) = &mut self.engine {
            records.set_open_sequence_for_test(seq);
        }
    }

    /// Whether the records are sealed and opened by uringcast's own record layer (a TLS 1.3
    /// session past its handshake) rather than by rustls.
    pub fn is_taken_over(&self) -> bool {
        matches!(self.engine, Engine::Records(_))
    }

    /// Takes ciphertext from the peer. The plaintext it carried is appended to `plain`, and
    /// what TLS must send in reply to `out`, in order, to go out before anything encrypted
    /// later.
    ///
    /// # Errors
    ///
    /// A protocol error (after which `out` may hold the alert to send before closing), or a
    /// peer that makes the session hold more than [`MAX_INCOMING_BYTES`].
    pub fn receive(
        &mut self,
        input: &[u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<Status, TlsError> {
        let held = self.incoming.len() + input.len();
        if held > MAX_INCOMING_BYTES {
            return Err(TlsError::Oversized(held));
        }
        self.incoming.extend_from_slice(input);
        let mut result = match &mut self.engine {
            Engine::Rustls(_) => self.process(plain, out),
            Engine::Records(_) => self.open(plain, out),
            Engine::Failed => Err(TlsError::Unexpected("a failed session")),
        };
        if matches!(result, Ok(Status::Open)) && self.take_over()? && !self.incoming.is_empty() {
            // What followed the handshake's last record is the record layer's now.
            result = self.open(plain, out);
        }
        if self.incoming.is_empty() {
            // Idle sessions keep no record buffer.
            self.incoming = Vec::new();
        }
        result
    }

    /// A TLS 1.3 session that has finished its handshake (rustls has returned to
    /// `WriteTraffic` with nothing left to send) moves to [`Records`]; returns whether it did.
    fn take_over(&mut self) -> Result<bool, TlsError> {
        let Engine::Rustls(conn) = &self.engine else {
            return Ok(false);
        };
        if conn.is_handshaking()
            || conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3)
        {
            return Ok(false);
        }
        let Engine::Rustls(conn) = std::mem::replace(&mut self.engine, Engine::Failed) else {
            return Ok(false);
        };
        let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
        self.engine = Engine::Records(Box::new(Records::new(secrets, kernel)?));
        Ok(true)
    }

    fn open(&mut self, plain: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<Status, TlsError> {
        let Engine::Records(records) = &mut self.engine else {
            return Err(TlsError::Unexpected("no record layer"));
        };
        let mut opened = Opened::default();
        let used = records.open(&mut self.incoming, plain, out, &mut opened);
        let used = used.inspect_err(|_| self.engine = Engine::Failed)?;
        self.incoming.drain(..used);
        if opened.peer_closed {
            self.peer_closed = true;
        }
        Ok(if self.peer_closed {
            Status::PeerClosed
        } else {
            Status::Open
        })
    }

    fn process(&mut self, plain: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<Status, TlsError> {
        let Engine::Rustls(conn) = &mut self.engine else {
            return Err(TlsError::Unexpected("rustls is out of the data path"));
        };
        loop {
            // Until a TLS 1.3 handshake ends, rustls is shown the records it has seen plus
            // one: the record that ends the handshake is then the last it takes, and those
            // after it (a KeyUpdate in the same read) are left to the record layer. Shown
            // them, rustls would take a KeyUpdate and park its reply, which the take-over
            // drops: the server would seal with a key the client never learned.
            let visible = if conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2) {
                self.incoming.len()
            } else if conn.is_handshaking() {
                record_end(&self.incoming, self.shown)
            } else {
                // Over: rustls hands out what it queued (tickets), and takes nothing more.
                self.shown
            };
            let UnbufferedStatus { mut discard, state } =
                conn.process_tls_records(&mut self.incoming[..visible]);
            let step = match state {
                Err(error) => Err(error.into()),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut failed = None;
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                plain.extend_from_slice(record.payload);
                            }
                            Err(error) => {
                                failed = Some(error);
                                break;
                            }
                        }
                    }
                    failed.map_or(Ok(None), |error| Err(error.into()))
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    append(out, |buf| encode.encode(buf).map_err(encode_size)).map(|()| None)
                }
                // What was encoded is in `out`, which the caller sends before anything later:
                // for the session it is as good as sent.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Status::Handshaking)),
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => Ok(Some(Status::PeerClosed)),
                Ok(ConnectionState::WriteTraffic(_)) => Ok(Some(if self.peer_closed {
                    Status::PeerClosed
                } else {
                    Status::Open
                })),
                Ok(ConnectionState::ReadEarlyData(_)) => Err(TlsError::Unexpected("early data")),
                Ok(_) => Err(TlsError::Unexpected("unknown")),
            };
            let discard = discard.min(visible);
            self.incoming.drain(..discard);
            self.shown = self.shown.saturating_sub(discard);
            let unseen = visible - discard < self.incoming.len();
            match step {
                // rustls needs more, and the next record has arrived: one more.
                Ok(Some(Status::Handshaking)) if unseen => self.shown = visible - discard,
                Ok(Some(status)) => {
                    if status != Status::Handshaking {
                        self.shown = 0;
                    }
                    return Ok(status);
                }
                Ok(None) => {}
                Err(error) => {
                    flush_alert(conn, &mut self.incoming, out);
                    // Nothing more goes through it: the alert was its last word.
                    self.engine = Engine::Failed;
                    return Err(error);
                }
            }
        }
    }

    /// Encrypts `plaintext` into records appended to `out` (records of at most
    /// [`MAX_RECORD_PLAINTEXT`] bytes; give it up to that much at once so it needs one).
    ///
    /// # Errors
    ///
    /// The handshake is not over, or the session has failed.
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut impl RecordBuf) -> Result<(), TlsError> {
        if let Engine::Records(records) = &mut self.engine {
            return Ok(records.seal(record::APPLICATION_DATA, plaintext, out)?);
        }
        self.write(
            out,
            |traffic, buf| traffic.encrypt(plaintext, buf),
            plaintext.len(),
        )
    }

    /// Whether the session owes the peer a record even with nothing to send: the KeyUpdate it
    /// asked for (RFC 8446 §4.6.3). [`Self::write_owed`] seals it; [`Self::encrypt`] seals it
    /// first too.
    pub fn wants_write(&self) -> bool {
        match &self.engine {
            Engine::Records(records) => records.owes_key_update(),
            Engine::Rustls(_) | Engine::Failed => false,
        }
    }

    /// Appends what the session owes the peer (see [`Self::wants_write`]) to `out`: at most
    /// one KeyUpdate, however many the peer asked for since the last.
    ///
    /// # Errors
    ///
    /// The session failed while sealing.
    pub fn write_owed(&mut self, out: &mut impl RecordBuf) -> Result<(), TlsError> {
        match &mut self.engine {
            Engine::Records(records) => Ok(records.send_owed(out)?),
            Engine::Rustls(_) | Engine::Failed => Ok(()),
        }
    }

    /// Appends a close_notify alert to `out`, once.
    ///
    /// # Errors
    ///
    /// The handshake is not over, or the session has failed.
    pub fn close_notify(&mut self, out: &mut impl RecordBuf) -> Result<(), TlsError> {
        if std::mem::replace(&mut self.close_notify_sent, true) {
            return Ok(());
        }
        if let Engine::Records(records) = &mut self.engine {
            return Ok(records.close_notify(out)?);
        }
        self.write(out, |traffic, buf| traffic.queue_close_notify(buf), 0)
    }

    fn write(
        &mut self,
        out: &mut impl RecordBuf,
        mut f: impl FnMut(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut [u8],
        ) -> Result<usize, EncryptError>,
        plaintext_len: usize,
    ) -> Result<(), TlsError> {
        let Engine::Rustls(conn) = &mut self.engine else {
            return Err(TlsError::Unexpected("a failed session"));
        };
        loop {
            // Every complete record was consumed by `receive`, so what is left in `incoming`
            // is part of one: the session's state is what rustls asks to handle first.
            let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut self.incoming);
            debug_assert_eq!(discard, 0, "receive consumed every complete record");
            match state? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    let records = plaintext_len.div_ceil(MAX_RECORD_PLAINTEXT).max(1);
                    let guess = plaintext_len + records * MAX_RECORD_OVERHEAD;
                    return append_sized(out, guess, |buf| {
                        f(&mut traffic, buf).map_err(encrypt_size)
                    });
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(out, |buf| encode.encode(buf).map_err(encode_size))?;
                }
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                _ => return Err(TlsError::Unexpected("write before the handshake is over")),
            }
        }
    }
}

/// After an error rustls has queued an alert, handed out by the next calls as data to
/// encode, one chunk a call, behind whatever the failing step queued before it (a flight's
/// messages); the session is dead after that. The same buffer goes in: rustls remembers how
/// much of it it has looked at.
///
/// It stops at the alert, which rustls queues last: one call more would have rustls deframe
/// the input again, and a record that fails again would make it queue a second fatal alert
/// (which its debug builds assert against).
fn flush_alert(conn: &mut UnbufferedServerConnection, incoming: &mut [u8], out: &mut Vec<u8>) {
    for _ in 0..MAX_QUEUED_CHUNKS {
        let UnbufferedStatus { state, .. } = conn.process_tls_records(incoming);
        let Ok(ConnectionState::EncodeTlsData(mut encode)) = state else {
            return;
        };
        let start = out.len();
        if append(out, |buf| encode.encode(buf).map_err(encode_size)).is_err()
            || is_alert_record(&out[start..])
        {
            return;
        }
    }
}

/// Chunks [`flush_alert`] encodes at most: a flight is a handful.
const MAX_QUEUED_CHUNKS: usize = 16;

/// Whether `chunk` is one alert record: a plaintext (or TLS 1.2) one says so in its type; a
/// TLS 1.3 sealed one is the only record with 2 bytes of content, sealed into 19 (content
/// type and tag added; rustls does not pad), as every handshake message has 4 at least.
fn is_alert_record(chunk: &[u8]) -> bool {
    const SEALED_ALERT: usize = 2 + 1 + 16;
    match chunk {
        [21, ..] => true,
        [23, 3, 3, 0, length, rest @ ..] => {
            usize::from(*length) == SEALED_ALERT && rest.len() == SEALED_ALERT
        }
        _ => false,
    }
}

/// Where the record that starts at `start` of `incoming` ends, or the end of `incoming` if
/// it has not all arrived.
fn record_end(incoming: &[u8], start: usize) -> usize {
    let length = match incoming.get(start + 3..start + 5) {
        Some(&[high, low]) => usize::from(u16::from_be_bytes([high, low])),
        _ => return incoming.len(),
    };
    (start + 5 + length).min(incoming.len())
}

/// A buffer was too small: how large it must be, or the error that is not about size.
enum Sized {
    Need(usize),
    Failed(TlsError),
}

fn encode_size(error: EncodeError) -> Sized {
    match error {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Sized::Need(required_size)
        }
        EncodeError::AlreadyEncoded => Sized::Failed(TlsError::Unexpected("encoded twice")),
    }
}

fn encrypt_size(error: EncryptError) -> Sized {
    match error {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Sized::Need(required_size)
        }
        other => Sized::Failed(TlsError::Protocol(rustls::Error::General(
            other.to_string(),
        ))),
    }
}

/// Appends what `f` writes into a slice at the end of `out`, growing it as `f` asks.
fn append(
    out: &mut impl RecordBuf,
    f: impl FnMut(&mut [u8]) -> Result<usize, Sized>,
) -> Result<(), TlsError> {
    append_sized(out, 512, f)
}

fn append_sized(
    out: &mut impl RecordBuf,
    guess: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, Sized>,
) -> Result<(), TlsError> {
    let start = out.len();
    let mut room = guess;
    loop {
        out.resize_to(start + room);
        match f(&mut out[start..]) {
            Ok(written) => {
                out.resize_to(start + written);
                return Ok(());
            }
            Err(Sized::Need(required)) if required > room => room = required,
            Err(Sized::Need(_)) => {
                out.resize_to(start);
                return Err(TlsError::Unexpected("buffer size"));
            }
            Err(Sized::Failed(error)) => {
                out.resize_to(start);
                return Err(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::{client, from_client, handshake, pair, to_client};
    use std::io::Write;

    #[test]
    fn data_flows_both_ways_on_tls13_and_tls12() {
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let (server_config, client_config) = pair(versions);
            let mut server = TlsSession::new(server_config).unwrap();
            let mut client = client(&client_config);
            handshake(&mut server, &mut client, usize::MAX);
            let tls13 = versions[0] == &rustls::version::TLS13;
            assert_eq!(
                server.is_taken_over(),
                tls13,
                "TLS 1.3 moves to the record layer"
            );
            // Client to server, delivered one byte at a time.
            client
                .writer()
                .write_all(b"GET / HTTP/1.1\r\n\r\n")
                .unwrap();
            let (mut plain, mut out) = (Vec::new(), Vec::new());
            for byte in from_client(&mut client).chunks(1) {
                server.receive(byte, &mut plain, &mut out).unwrap();
            }
            assert_eq!(plain, b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(server.buffered_bytes(), 0);
            assert_eq!(
                server.incoming.capacity(),
                0,
                "an idle session holds no record buffer"
            );
            // Server to client: a large message spans several records.
            let message: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
            server.encrypt(&message, &mut out).unwrap();
            let records = message.len().div_ceil(MAX_RECORD_PLAINTEXT);
            assert!(out.len() <= message.len() + records * MAX_RECORD_OVERHEAD);
            assert_eq!(to_client(&mut client, &out), message);
            // close_notify once; then the peer's close is seen.
            let mut out = Vec::new();
            server.close_notify(&mut out).unwrap();
            server.close_notify(&mut out).unwrap();
            let closing = out.len();
            to_client(&mut client, &out);
            assert!(closing > 0 && closing < 64);
            client.send_close_notify();
            let status = server
                .receive(&from_client(&mut client), &mut plain, &mut out)
                .unwrap();
            assert_eq!(status, Status::PeerClosed);
        }
    }

    #[test]
    fn a_handshake_fed_byte_by_byte_completes() {
        let (server_config, client_config) = pair(&[&rustls::version::TLS13]);
        let mut server = TlsSession::new(server_config).unwrap();
        let mut client = client(&client_config);
        handshake(&mut server, &mut client, 1);
    }

    #[test]
    fn plaintext_http_and_garbage_are_refused() {
        let (server_config, _) = pair(&[&rustls::version::TLS13]);
        // (input, whether rustls answers with an alert before the close)
        for (input, alert) in [
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], true),
            (&[0x17; 64][..], true),
            // A handshake message declaring 16 MiB: refused as too large, without an alert.
            (
                &[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0xff, 0xff, 0xff, 0xff][..],
                false,
            ),
        ] {
            let mut server = TlsSession::new(Arc::clone(&server_config)).unwrap();
            let (mut plain, mut out) = (Vec::new(), Vec::new());
            let result = server.receive(input, &mut plain, &mut out);
            assert!(result.is_err(), "{input:?} was accepted");
            assert!(plain.is_empty());
            // An alert record: content type 21.
            assert_eq!(
                out.first() == Some(&21),
                alert,
                "{input:?}: {result:?}, sent {out:?}"
            );
        }
    }

    #[test]
    fn a_peer_cannot_make_the_session_hold_more_than_the_limit() {
        let (server_config, _) = pair(&[&rustls::version::TLS13]);
        let mut server = TlsSession::new(server_config).unwrap();
        // A ClientHello record header that declares the most a record may hold, then
        // never completes: the session holds it, up to the limit.
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        let mut held = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        held.resize(4_000, 0x01);
        assert_eq!(
            server.receive(&held, &mut plain, &mut out).unwrap(),
            Status::Handshaking
        );
        let flood = vec![0u8; MAX_INCOMING_BYTES];
        assert!(matches!(
            server.receive(&flood, &mut plain, &mut out),
            Err(TlsError::Oversized(_))
        ));
    }

    #[test]
    fn writing_before_the_handshake_is_an_error() {
        let (server_config, _) = pair(&[&rustls::version::TLS13]);
        let mut server = TlsSession::new(server_config).unwrap();
        let mut out = Vec::new();
        assert!(server.encrypt(b"early", &mut out).is_err());
        assert!(out.is_empty());
    }

    fn open_session() -> (TlsSession, rustls::ClientConnection) {
        let (server_config, client_config) = pair(&[&rustls::version::TLS13]);
        let mut server = TlsSession::new(server_config).unwrap();
        let mut client = client(&client_config);
        handshake(&mut server, &mut client, usize::MAX);
        assert!(server.is_taken_over());
        (server, client)
    }

    fn round_trip(server: &mut TlsSession, client: &mut rustls::ClientConnection, what: &[u8]) {
        client.writer().write_all(what).unwrap();
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        server
            .receive(&from_client(client), &mut plain, &mut out)
            .unwrap();
        assert_eq!(plain, what);
        // Anything the server owes (a KeyUpdate) goes out before its answer.
        server.encrypt(what, &mut out).unwrap();
        assert_eq!(to_client(client, &out), what);
    }

    /// A client's KeyUpdate asking for ours: the server takes the new receiving key at once,
    /// sends its own KeyUpdate and seals with the new sending key from then on; both keep
    /// reading each other.
    #[test]
    fn key_updates_from_the_client_are_followed() {
        let (mut server, mut client) = open_session();
        round_trip(&mut server, &mut client, b"before");
        for round in 0..3 {
            client.refresh_traffic_keys().unwrap();
            round_trip(
                &mut server,
                &mut client,
                format!("after {round}").as_bytes(),
            );
        }
    }

    /// A client that asks for KeyUpdates and never reads (defect 1 of issue 21): however many
    /// requests arrive, the server owes one reply and queues nothing per request; beyond 32
    /// KeyUpdates between two application-data records the session fails, with an alert.
    #[test]
    fn key_update_requests_are_answered_once_and_bounded() {
        let (mut server, mut client) = open_session();
        for _ in 0..32 {
            client.refresh_traffic_keys().unwrap();
        }
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        server
            .receive(&from_client(&mut client), &mut plain, &mut out)
            .unwrap();
        assert!(
            out.is_empty(),
            "a reply queued per request: {} bytes",
            out.len()
        );
        assert!(server.wants_write());
        let mut owed = Vec::new();
        server.encrypt(b"x", &mut owed).unwrap();
        // One sealed KeyUpdate (header, 4 + 1 bytes of message, content type, tag), then the
        // data.
        assert_eq!(owed.len(), (5 + 5 + 1 + 16) + (5 + 1 + 1 + 16));
        assert!(!server.wants_write());
        assert_eq!(to_client(&mut client, &owed), b"x");
        // Application data resets the count.
        round_trip(&mut server, &mut client, b"after 32");
        for _ in 0..32 {
            client.refresh_traffic_keys().unwrap();
        }
        round_trip(&mut server, &mut client, b"after 64");

        // The flood: a thousand requests and nothing else.
        for _ in 0..1000 {
            client.refresh_traffic_keys().unwrap();
        }
        let flood = from_client(&mut client);
        let mut out = Vec::new();
        assert!(server.receive(&flood, &mut plain, &mut out).is_err());
        // Only the alert, one sealed record.
        assert_eq!(out.len(), 5 + 2 + 1 + 16, "sent {out:?}");
        assert!(!server.wants_write());
    }

    /// The client's Finished and a KeyUpdate asking for ours arrive in one read (issue 21,
    /// defect 2): rustls must not take the KeyUpdate at the end of the handshake, or its
    /// reply is lost at the take-over and the server seals with a key the client never
    /// learned. Also split anywhere: the same outcome.
    #[test]
    fn a_key_update_in_the_read_that_ends_the_handshake_is_answered() {
        for chunk in [usize::MAX, 1, 7, 100] {
            let (server_config, client_config) = pair(&[&rustls::version::TLS13]);
            let mut server = TlsSession::new(server_config).unwrap();
            let mut client = client(&client_config);
            let (mut plain, mut out) = (Vec::new(), Vec::new());
            server
                .receive(&from_client(&mut client), &mut plain, &mut out)
                .unwrap();
            to_client(&mut client, &out);
            assert!(!client.is_handshaking());
            client.refresh_traffic_keys().unwrap();
            client.writer().write_all(b"and data").unwrap();
            let finished_and_update = from_client(&mut client);
            let mut out = Vec::new();
            for piece in finished_and_update.chunks(chunk) {
                server.receive(piece, &mut plain, &mut out).unwrap();
            }
            assert!(server.is_taken_over());
            assert_eq!(plain, b"and data");
            server.encrypt(b"after", &mut out).unwrap();
            assert_eq!(to_client(&mut client, &out), b"after", "chunks of {chunk}");
            round_trip(&mut server, &mut client, b"later");
        }
    }

    /// Short of the AEAD's confidentiality limit the server rolls its own key.
    #[test]
    fn the_server_rolls_its_key_before_the_confidentiality_limit() {
        let (mut server, mut client) = open_session();
        if let Engine::Records(records) = &mut server.engine {
            records.set_limit_for_test(3);
        }
        let mut out = Vec::new();
        let mut expected = Vec::new();
        for i in 0..10u8 {
            server.encrypt(&[i; 100], &mut out).unwrap();
            expected.extend([i; 100]);
        }
        assert_eq!(to_client(&mut client, &out), expected);
    }

    /// A record with a flipped bit: bad_record_mac, sealed (TLS 1.3 encrypts alerts), and the
    /// session is dead. A plaintext record after the handshake: unexpected_message.
    #[test]
    fn tampered_and_plaintext_records_are_refused_with_an_alert() {
        let (mut server, mut client) = open_session();
        client.writer().write_all(b"hello").unwrap();
        let mut record = from_client(&mut client);
        let last = record.len() - 1;
        record[last] ^= 1;
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        assert!(server.receive(&record, &mut plain, &mut out).is_err());
        assert!(plain.is_empty());
        // One sealed record (outer type application_data) holding the alert.
        assert_eq!(out.first(), Some(&23));
        let error = {
            let mut bytes = &out[..];
            client.read_tls(&mut bytes).unwrap();
            client.process_new_packets().unwrap_err()
        };
        assert!(
            error.to_string().contains("BadRecordMac"),
            "the client saw {error}"
        );
        assert!(
            server.encrypt(b"x", &mut Vec::new()).is_err(),
            "a dead session seals"
        );

        let (mut server, _client) = open_session();
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        let plaintext_alert = [21, 3, 3, 0, 2, 1, 0];
        assert!(server
            .receive(&plaintext_alert, &mut plain, &mut out)
            .is_err());
        assert_eq!(out.first(), Some(&23));
    }

    /// A session that failed while rustls held it (TLS 1.2 here) is never driven again: its
    /// alert is in `out`, and sealing after it is an error. Driving it again for a
    /// close_notify made rustls read the bad record twice and queue a second fatal alert,
    /// which its debug builds assert against (a worker panicked under tlsfuzzer).
    #[test]
    fn a_session_failed_in_rustls_seals_nothing_more() {
        let (server_config, client_config) = pair(&[&rustls::version::TLS12]);
        let mut server = TlsSession::new(server_config).unwrap();
        let mut client = client(&client_config);
        handshake(&mut server, &mut client, usize::MAX);
        client.writer().write_all(b"hello").unwrap();
        let mut record = from_client(&mut client);
        let last = record.len() - 1;
        record[last] ^= 1;
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        assert!(server.receive(&record, &mut plain, &mut out).is_err());
        assert_eq!(out.first(), Some(&21), "the alert");
        assert!(server.is_failed());
        let mut more = Vec::new();
        assert!(server.close_notify(&mut more).is_err());
        assert!(server.encrypt(b"x", &mut more).is_err());
        assert!(more.is_empty());
    }

    /// An idle TLS 1.3 session after the take-over holds rustls's kernel connection and two
    /// keys, not the handshake's state machine and buffers.
    #[test]
    fn a_taken_over_session_is_small() {
        let inline = std::mem::size_of::<TlsSession>();
        let records = std::mem::size_of::<Records>();
        let rustls = std::mem::size_of::<UnbufferedServerConnection>();
        eprintln!(
            "TlsSession {inline} B inline, Records {records} B (key {} B, kernel connection {} B), rustls's connection {rustls} B",
            std::mem::size_of::<ring::aead::LessSafeKey>(),
            std::mem::size_of::<rustls::kernel::KernelConnection<rustls::server::ServerConnectionData>>()
        );
        assert!(inline <= 64, "TlsSession grew to {inline} bytes inline");
        assert!(records <= 1_800, "Records grew to {records} bytes");
    }
}
