//! The TLS 1.3 record layer (RFC 8446 §5) for a session past its handshake, with rustls out of
//! the data path, as a kTLS socket would have it: rustls's kernel-connection API hands over
//! the traffic secrets and computes the next ones at a key update; records are sealed and
//! opened here with ring, straight into and out of the caller's buffers.
//!
//! What this buys over rustls's own record path: no allocation and no extra copy per record
//! (rustls seals into a buffer of its own, then copies into the caller's), plaintext opened in
//! place, and about half of an idle session's state (the handshake's state machine is gone).
//!
//! What it must do that rustls did: post-handshake messages (a KeyUpdate, answered when asked
//! for; anything else is an error), alerts (close_notify, and an encrypted alert before
//! closing on an error), and the AEAD's confidentiality limit (a KeyUpdate of its own before
//! it is reached).

use ring::aead::{
    Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

use super::session::{RecordBuf, TlsError, MAX_RECORD_PLAINTEXT};

/// Content types (RFC 8446 §5.1, §B.1).
const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
pub(crate) const APPLICATION_DATA: u8 = 23;
/// The handshake message type of a KeyUpdate (RFC 8446 §4.6.3).
const KEY_UPDATE: u8 = 24;
/// Alert descriptions (RFC 8446 §6).
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const DECODE_ERROR: u8 = 50;
/// KeyUpdates a peer may send between two application-data records (rustls's bound too):
/// each costs a key derivation, and a peer that sends nothing else is only burning a core.
const MAX_KEY_UPDATES_BETWEEN_DATA: u8 = 32;
/// A record's header: type, legacy version, length.
const HEADER: usize = 5;
const TAG: usize = 16;
/// The most a TLS 1.3 ciphertext record may carry (RFC 8446 §5.2).
const MAX_CIPHERTEXT: usize = MAX_RECORD_PLAINTEXT + 256;

/// One direction's key, IV and sequence number.
struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Self, TlsError> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err(TlsError::Unexpected("cipher suite")),
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| TlsError::Unexpected("traffic key"))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| TlsError::Unexpected("traffic IV"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The per-record nonce: the IV XOR the sequence number (RFC 8446 §5.3), which then
    /// moves on.
    fn next_nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (byte, seq) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *byte ^= seq;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(nonce)
    }
}

/// What opening the received records produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Opened {
    /// The peer sent close_notify.
    pub peer_closed: bool,
}

/// A TLS 1.3 session's record layer after its handshake.
pub(crate) struct Records {
    kernel: KernelConnection<ServerConnectionData>,
    seal: Direction,
    open: Direction,
    /// Records sealed under one key before a KeyUpdate of our own.
    limit: u64,
    /// The peer asked for our KeyUpdate (RFC 8446 §4.6.3): it goes out before our next
    /// record. One flag, not a queue: however many requests arrive before it is sent, one
    /// reply answers them all, so a peer that floods requests and never reads makes the
    /// server hold nothing more.
    key_update_owed: bool,
    /// KeyUpdates received since the last application-data record.
    key_updates_since_data: u8,
}

impl Records {
    /// Starts loading the sealing key and sequence number, which the next seal reads (see
    /// [`crate::prefetch`]).
    pub(crate) fn prefetch_seal(&self) {
        let seal: *const Direction = &self.seal;
        crate::prefetch::lines(seal.cast(), std::mem::size_of::<Direction>());
    }

    /// Takes over from rustls with the secrets it extracted.
    pub(crate) fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<Self, TlsError> {
        let limit = match kernel.negotiated_cipher_suite() {
            rustls::SupportedCipherSuite::Tls13(suite) => suite.common.confidentiality_limit,
            _ => return Err(TlsError::Unexpected("TLS 1.2 in the TLS 1.3 record layer")),
        };
        Ok(Self {
            kernel,
            seal: Direction::new(secrets.tx)?,
            open: Direction::new(secrets.rx)?,
            // Well short of the limit: the KeyUpdate itself is a record too.
            limit: limit.saturating_sub(1024).max(1),
            key_update_owed: false,
            key_updates_since_data: 0,
        })
    }

    /// Seals `plain` as records of `content_type` appended to `out` (one empty record for
    /// empty `plain`).
    pub(crate) fn seal(
        &mut self,
        content_type: u8,
        plain: &[u8],
        out: &mut impl RecordBuf,
    ) -> Result<(), TlsError> {
        self.send_owed(out)?;
        let mut chunks = plain.chunks(MAX_RECORD_PLAINTEXT);
        let mut next = chunks.next().or(Some(&[]));
        while let Some(chunk) = next {
            if self.seal.seq >= self.limit {
                self.update_keys(false, out)?;
            }
            self.seal_one(content_type, chunk, out)?;
            next = chunks.next();
        }
        Ok(())
    }

    fn seal_one(
        &mut self,
        content_type: u8,
        chunk: &[u8],
        out: &mut impl RecordBuf,
    ) -> Result<(), TlsError> {
        let start = out.len();
        let inner = chunk.len() + 1;
        let length = inner + TAG;
        out.resize_to(start + HEADER + length);
        let record = &mut out[start..];
        record[..HEADER].copy_from_slice(&[
            APPLICATION_DATA,
            0x03,
            0x03,
            (length >> 8) as u8,
            length as u8,
        ]);
        let (header, body) = record.split_at_mut(HEADER);
        body[..chunk.len()].copy_from_slice(chunk);
        body[chunk.len()] = content_type;
        let (data, tag) = body.split_at_mut(inner);
        let nonce = self.seal.next_nonce();
        let sealed = self
            .seal
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*header), data)
            .map_err(|_| TlsError::Unexpected("seal"))?;
        tag.copy_from_slice(sealed.as_ref());
        Ok(())
    }

    /// Whether a KeyUpdate the peer asked for is still to be sent.
    pub(crate) fn owes_key_update(&self) -> bool {
        self.key_update_owed
    }

    /// Seals the KeyUpdate the peer asked for, if it is still owed.
    pub(crate) fn send_owed(&mut self, out: &mut impl RecordBuf) -> Result<(), TlsError> {
        if std::mem::take(&mut self.key_update_owed) {
            self.update_keys(false, out)?;
        }
        Ok(())
    }

    /// Sends a KeyUpdate (sealed with the current key) and moves to the next sending key.
    fn update_keys(&mut self, requested: bool, out: &mut impl RecordBuf) -> Result<(), TlsError> {
        self.seal_one(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, u8::from(requested)], out)?;
        self.seal = Direction::new(self.kernel.update_tx_secret()?)?;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn set_limit_for_test(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// An encrypted fatal alert (the session is dead after it).
    pub(crate) fn alert(&mut self, description: u8, out: &mut impl RecordBuf) {
        let _ = self.seal_one(ALERT, &[2, description], out);
    }

    /// A close_notify alert.
    pub(crate) fn close_notify(&mut self, out: &mut impl RecordBuf) -> Result<(), TlsError> {
        self.seal_one(ALERT, &[1, CLOSE_NOTIFY], out)
    }

    /// Opens the complete records at the front of `incoming`, in place: application data is
    /// appended to `plain`, replies (a KeyUpdate, an alert on error) to `out`. Returns how
    /// many bytes it consumed (what remains is part of a record).
    pub(crate) fn open(
        &mut self,
        incoming: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
        opened: &mut Opened,
    ) -> Result<usize, TlsError> {
        let mut pos = 0;
        while incoming.len() - pos >= HEADER && !opened.peer_closed {
            let header: [u8; HEADER] = incoming[pos..pos + HEADER].try_into().expect("five bytes");
            let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if header[0] != APPLICATION_DATA || length < TAG + 1 {
                // A plaintext record (even ChangeCipherSpec) after the handshake, or one too
                // short to be sealed (RFC 8446 §5).
                let code = if header[0] == CHANGE_CIPHER_SPEC || header[0] == ALERT {
                    UNEXPECTED_MESSAGE
                } else {
                    DECODE_ERROR
                };
                return self.fail(code, "a record that is not protected application data", out);
            }
            if length > MAX_CIPHERTEXT {
                return self.fail(RECORD_OVERFLOW, "a record over 2^14 + 256 bytes", out);
            }
            if incoming.len() - pos < HEADER + length {
                break;
            }
            let body = &mut incoming[pos + HEADER..pos + HEADER + length];
            let nonce = self.open.next_nonce();
            let Ok(inner) = self.open.key.open_in_place(nonce, Aad::from(header), body) else {
                return self.fail(BAD_RECORD_MAC, "a record that does not authenticate", out);
            };
            // The content type is the last non-zero byte; zeros after it are padding.
            let Some(end) = inner.iter().rposition(|&b| b != 0) else {
                return self.fail(UNEXPECTED_MESSAGE, "a record without a content type", out);
            };
            let (content, content_type) = (&inner[..end], inner[end]);
            match content_type {
                APPLICATION_DATA => {
                    self.key_updates_since_data = 0;
                    plain.extend_from_slice(content);
                }
                ALERT => match content {
                    [_, CLOSE_NOTIFY] => opened.peer_closed = true,
                    _ => return Err(TlsError::Unexpected("an alert from the peer")),
                },
                HANDSHAKE => {
                    let content = content.to_vec();
                    self.handshake_messages(&content, out)?;
                }
                _ => return self.fail(UNEXPECTED_MESSAGE, "an unknown content type", out),
            }
            pos += HEADER + length;
        }
        Ok(pos)
    }

    /// Post-handshake messages from a client: only KeyUpdate (RFC 8446 §4.6.3); a new
    /// receiving key at once, and ours moved on too when the client asks.
    fn handshake_messages(
        &mut self,
        mut content: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
        while !content.is_empty() {
            match content {
                [KEY_UPDATE, 0, 0, 1, request @ (0 | 1), rest @ ..] => {
                    self.key_updates_since_data += 1;
                    if self.key_updates_since_data > MAX_KEY_UPDATES_BETWEEN_DATA {
                        return self
                            .fail(UNEXPECTED_MESSAGE, "too many KeyUpdates", out)
                            .map(drop);
                    }
                    self.open = Direction::new(self.kernel.update_rx_secret()?)?;
                    // Sent before our next record (`seal`), or by the driver's next flush.
                    self.key_update_owed |= *request == 1;
                    content = rest;
                }
                [KEY_UPDATE, ..] => {
                    return self
                        .fail(DECODE_ERROR, "a malformed KeyUpdate", out)
                        .map(drop)
                }
                _ => {
                    return self
                        .fail(
                            UNEXPECTED_MESSAGE,
                            "a handshake message after the handshake",
                            out,
                        )
                        .map(drop)
                }
            }
        }
        Ok(())
    }

    fn fail(
        &mut self,
        alert: u8,
        what: &'static str,
        out: &mut Vec<u8>,
    ) -> Result<usize, TlsError> {
        self.alert(alert, out);
        Err(TlsError::Unexpected(what))
    }
}
