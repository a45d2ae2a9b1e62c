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
//! for, with one reply owed at most and 32 in a row at most; anything else is an error),
//! alerts (close_notify, and an encrypted alert before closing on an error, chosen by
//! [`RecordError::alert`]), and the AEAD's confidentiality limit (a KeyUpdate of its own
//! before it is reached).

use ring::aead::{
    Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

use super::alert::{self, AlertDescription, RecordError};
use super::session::{RecordBuf, MAX_RECORD_PLAINTEXT};

/// Content types (RFC 8446 §5.1, §B.1).
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
pub(crate) const APPLICATION_DATA: u8 = 23;
/// The handshake message type of a KeyUpdate (RFC 8446 §4.6.3).
const KEY_UPDATE: u8 = 24;
/// A KeyUpdate's length: type, 24-bit body length, request_update.
const KEY_UPDATE_LEN: usize = 5;
/// KeyUpdates a peer may send between two application-data records (rustls's bound too):
/// each costs a key derivation, and a peer that sends nothing else is only burning a core.
const MAX_KEY_UPDATES_BETWEEN_DATA: u8 = 32;
/// A record's header: type, legacy version, length.
const HEADER: usize = 5;
const TAG: usize = 16;
/// The most a TLS 1.3 ciphertext record may carry (RFC 8446 §5.2).
const MAX_CIPHERTEXT: usize = MAX_RECORD_PLAINTEXT + 256;
/// The most inner plaintext may hold: content and its type byte, padding included (RFC 8446
/// §5.4).
const MAX_INNER_PLAINTEXT: usize = MAX_RECORD_PLAINTEXT + 1;

/// One direction's key, IV and sequence number.
struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Self, RecordError> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err(RecordError::UnsupportedSuite),
        };
        let key =
            UnboundKey::new(algorithm, key.as_ref()).map_err(|_| RecordError::BadTrafficKey)?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| RecordError::BadTrafficKey)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The per-record nonce: the IV XOR the sequence number (RFC 8446 §5.3), which then
    /// moves on.
    ///
    /// A sequence number must not wrap (§5.3). It cannot in practice: our side rolls its key
    /// well before the AEAD's confidentiality limit (2^24.5 records for AES-GCM), and a peer
    /// would need 2^64 records under one key, 584 years at a billion records a second. It is
    /// checked all the same, as the RFC asks.
    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        let seq = self.seq;
        self.seq = seq.checked_add(1).ok_or(RecordError::SequenceExhausted)?;
        let mut nonce = self.iv;
        for (byte, seq) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *byte ^= seq;
        }
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// The first bytes of a handshake message split across records, which RFC 8446 §5.1 allows:
/// room for a KeyUpdate, the only message a client may send after the handshake (any other
/// is refused on its first byte).
#[derive(Default)]
struct Fragment {
    bytes: [u8; KEY_UPDATE_LEN],
    len: u8,
}

/// What opening the received records produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Opened {
    /// The peer sent close_notify.
    pub peer_closed: bool,
}

/// Where the next traffic secrets come from at a KeyUpdate: rustls's kernel connection, or
/// a fixed schedule in the fuzz harness (`tls::fuzzing`).
pub(crate) trait KeySchedule {
    /// The next sending secret, with its first sequence number.
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
    /// The next receiving secret, with its first sequence number.
    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;
}

impl KeySchedule for KernelConnection<ServerConnectionData> {
    fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_tx_secret()
    }

    fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        self.update_rx_secret()
    }
}

/// A TLS 1.3 session's record layer after its handshake.
pub(crate) struct Records<K = KernelConnection<ServerConnectionData>> {
    kernel: K,
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
    /// A handshake message that began in an earlier record.
    fragment: Fragment,
}

impl Records {
    /// Takes over from rustls with the secrets it extracted.
    pub(crate) fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<Self, RecordError> {
        let limit = match kernel.negotiated_cipher_suite() {
            rustls::SupportedCipherSuite::Tls13(suite) => suite.common.confidentiality_limit,
            // TLS 1.2 stays with rustls; this is a caller's mistake.
            _ => return Err(RecordError::UnsupportedSuite),
        };
        Self::from_parts(kernel, secrets.tx, secrets.rx, limit)
    }
}

impl<K: KeySchedule> Records<K> {
    /// A record layer that seals with `tx` and opens with `rx`, and rolls its own key short
    /// of `limit` records (the AEAD's confidentiality limit).
    pub(crate) fn from_parts(
        kernel: K,
        tx: (u64, ConnectionTrafficSecrets),
        rx: (u64, ConnectionTrafficSecrets),
        limit: u64,
    ) -> Result<Self, RecordError> {
        Ok(Self {
            kernel,
            seal: Direction::new(tx)?,
            open: Direction::new(rx)?,
            // Well short of the limit: the KeyUpdate itself is a record too.
            limit: limit.saturating_sub(1024).max(1),
            key_update_owed: false,
            key_updates_since_data: 0,
            fragment: Fragment::default(),
        })
    }

    /// Starts loading the sealing key and sequence number, which the next seal reads (see
    /// [`crate::prefetch`]).
    pub(crate) fn prefetch_seal(&self) {
        let seal: *const Direction = &self.seal;
        crate::prefetch::lines(seal.cast(), std::mem::size_of::<Direction>());
    }

    /// Seals `plain` as records of `content_type` appended to `out` (one empty record for
    /// empty `plain`), after the KeyUpdate the peer asked for if it is owed.
    pub(crate) fn seal(
        &mut self,
        content_type: u8,
        plain: &[u8],
        out: &mut impl RecordBuf,
    ) -> Result<(), RecordError> {
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
    ) -> Result<(), RecordError> {
        let nonce = self.seal.next_nonce()?;
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
        let sealed = self
            .seal
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*header), data);
        match sealed {
            Ok(sealed) => {
                tag.copy_from_slice(sealed.as_ref());
                Ok(())
            }
            Err(_) => {
                out.resize_to(start);
                Err(RecordError::Seal)
            }
        }
    }

    /// Whether a KeyUpdate the peer asked for is still to be sent.
    pub(crate) fn owes_key_update(&self) -> bool {
        self.key_update_owed
    }

    /// Seals the KeyUpdate the peer asked for, if it is still owed.
    pub(crate) fn send_owed(&mut self, out: &mut impl RecordBuf) -> Result<(), RecordError> {
        if std::mem::take(&mut self.key_update_owed) {
            self.update_keys(false, out)?;
        }
        Ok(())
    }

    /// Sends a KeyUpdate (sealed with the current key) and moves to the next sending key.
    fn update_keys(
        &mut self,
        requested: bool,
        out: &mut impl RecordBuf,
    ) -> Result<(), RecordError> {
        self.seal_one(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, u8::from(requested)], out)?;
        let next = self.kernel.next_tx().map_err(RecordError::KeySchedule)?;
        self.seal = Direction::new(next)?;
        Ok(())
    }

    /// Seals one record whose inner plaintext is `inner` as given: content, content type
    /// and padding (its last byte is sealed as the content type).
    #[cfg(fuzzing)]
    pub(crate) fn seal_inner(
        &mut self,
        inner: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        match inner.split_last() {
            Some((&last, content)) => self.seal_one(last, content, out),
            None => Ok(()),
        }
    }

    /// Moves to the next sending key, as after sending a KeyUpdate.
    #[cfg(fuzzing)]
    pub(crate) fn next_sending_key(&mut self) -> Result<(), RecordError> {
        let next = self.kernel.next_tx().map_err(RecordError::KeySchedule)?;
        self.seal = Direction::new(next)?;
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn set_limit_for_test(&mut self, limit: u64) {
        self.limit = limit;
    }

    #[cfg(test)]
    pub(crate) fn set_open_sequence_for_test(&mut self, seq: u64) {
        self.open.seq = seq;
    }

    /// An encrypted fatal alert (the session is dead after it, so a failure to seal it
    /// changes nothing).
    pub(crate) fn alert(&mut self, description: AlertDescription, out: &mut impl RecordBuf) {
        let _ = self.seal_one(ALERT, &[alert::FATAL, description.0], out);
    }

    /// A close_notify alert.
    pub(crate) fn close_notify(&mut self, out: &mut impl RecordBuf) -> Result<(), RecordError> {
        self.seal_one(
            ALERT,
            &[alert::WARNING, AlertDescription::CLOSE_NOTIFY.0],
            out,
        )
    }

    /// Opens the complete records at the front of `incoming`, in place: application data is
    /// appended to `plain`. Returns how many bytes it consumed (what remains is part of a
    /// record).
    ///
    /// # Errors
    ///
    /// The first record that breaks a rule; the alert it calls for is appended to `out`.
    pub(crate) fn open(
        &mut self,
        incoming: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
        opened: &mut Opened,
    ) -> Result<usize, RecordError> {
        let mut pos = 0;
        let result = self.open_records(incoming, &mut pos, plain, opened);
        if let Err(error) = &result {
            if let Some(description) = error.alert() {
                self.alert(description, out);
            }
        }
        result.map(|()| pos)
    }

    fn open_records(
        &mut self,
        incoming: &mut [u8],
        pos: &mut usize,
        plain: &mut Vec<u8>,
        opened: &mut Opened,
    ) -> Result<(), RecordError> {
        while incoming.len() - *pos >= HEADER && !opened.peer_closed {
            let header: [u8; HEADER] = incoming[*pos..*pos + HEADER]
                .try_into()
                .expect("five bytes");
            let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
            // Decided on the header, before waiting for the rest: a plaintext record (even
            // ChangeCipherSpec) after the handshake, or one of a type TLS does not have.
            if header[0] != APPLICATION_DATA {
                return Err(RecordError::Unprotected(header[0]));
            }
            if length > MAX_CIPHERTEXT {
                return Err(RecordError::CiphertextOverflow(length));
            }
            if length < TAG + 1 {
                return Err(RecordError::Truncated(length));
            }
            if incoming.len() - *pos < HEADER + length {
                break;
            }
            let body = &mut incoming[*pos + HEADER..*pos + HEADER + length];
            let nonce = self.open.next_nonce()?;
            let inner = self
                .open
                .key
                .open_in_place(nonce, Aad::from(header), body)
                .map_err(|_| RecordError::BadRecordMac)?;
            if inner.len() > MAX_INNER_PLAINTEXT {
                return Err(RecordError::PlaintextOverflow(inner.len()));
            }
            // The content type is the last non-zero byte; zeros after it are padding.
            let end = inner
                .iter()
                .rposition(|&b| b != 0)
                .ok_or(RecordError::NoContentType)?;
            let (content, content_type) = (&inner[..end], inner[end]);
            if self.fragment.len > 0 && content_type != HANDSHAKE {
                return Err(RecordError::Interleaved(content_type));
            }
            match content_type {
                APPLICATION_DATA => {
                    self.key_updates_since_data = 0;
                    plain.extend_from_slice(content);
                }
                ALERT => peer_alert(content, opened)?,
                HANDSHAKE => self.handshake(content)?,
                other => return Err(RecordError::UnexpectedContentType(other)),
            }
            *pos += HEADER + length;
        }
        Ok(())
    }

    /// A handshake record from a client: only KeyUpdate may come after the handshake (RFC
    /// 8446 §4.6.3), possibly split across records, and it must end its record (§5.1). The
    /// receiving key moves on at once; ours moves on before our next record when the client
    /// asks.
    fn handshake(&mut self, content: &[u8]) -> Result<(), RecordError> {
        if content.is_empty() {
            return Err(RecordError::EmptyRecord(HANDSHAKE));
        }
        let have = usize::from(self.fragment.len);
        let take = (KEY_UPDATE_LEN - have).min(content.len());
        self.fragment.bytes[have..have + take].copy_from_slice(&content[..take]);
        self.fragment.len = (have + take) as u8;
        let after = &content[take..];
        // Each rule is decided as soon as the bytes it needs are in.
        let message = &self.fragment.bytes[..usize::from(self.fragment.len)];
        if message[0] != KEY_UPDATE {
            return Err(RecordError::UnexpectedHandshake(message[0]));
        }
        if let [_, a, b, c, ..] = *message {
            let length = u32::from_be_bytes([0, a, b, c]);
            if length != 1 {
                return Err(RecordError::MalformedKeyUpdate(length));
            }
        }
        let [_, _, _, _, request] = *message else {
            // The rest comes in the next record.
            return Ok(());
        };
        if request > 1 {
            return Err(RecordError::IllegalKeyUpdateRequest(request));
        }
        if !after.is_empty() {
            return Err(RecordError::KeyUpdateNotLast);
        }
        self.fragment = Fragment::default();
        self.key_updates_since_data += 1;
        if self.key_updates_since_data > MAX_KEY_UPDATES_BETWEEN_DATA {
            return Err(RecordError::TooManyKeyUpdates(MAX_KEY_UPDATES_BETWEEN_DATA));
        }
        let next = self.kernel.next_rx().map_err(RecordError::KeySchedule)?;
        self.open = Direction::new(next)?;
        // Sent by the driver's next flush, or before our next record (`seal`).
        self.key_update_owed |= request == 1;
        Ok(())
    }
}

/// An alert record from the peer: close_notify ends its sending; a warning user_canceled is
/// not fatal (a close_notify should follow, RFC 8446 §6.1); any other alert is fatal,
/// whatever level it claims (§6.2).
fn peer_alert(content: &[u8], opened: &mut Opened) -> Result<(), RecordError> {
    match *content {
        [] => Err(RecordError::EmptyRecord(ALERT)),
        [_, description] => match AlertDescription(description) {
            AlertDescription::CLOSE_NOTIFY => {
                opened.peer_closed = true;
                Ok(())
            }
            AlertDescription::USER_CANCELED if content[0] == alert::WARNING => Ok(()),
            other => Err(RecordError::PeerAlert(other)),
        },
        _ => Err(RecordError::MalformedAlert(content.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::RawClient;
    use crate::tls::{Status, TlsError, TlsSession};

    const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 0];
    const KEY_UPDATE_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 1];

    /// What a receive did: its status, the records the server sent back (opened), and the
    /// plaintext it read.
    type Fed = (Result<Status, TlsError>, Vec<(u8, Vec<u8>)>, Vec<u8>);

    /// Records a case builds with the client's keys.
    type Build = fn(&mut RawClient) -> Vec<Vec<u8>>;

    /// Feeds `bytes` to the server.
    fn feed(server: &mut TlsSession, client: &mut RawClient, bytes: &[u8]) -> Fed {
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        let status = server.receive(bytes, &mut plain, &mut out);
        (status, client.open(&out), plain)
    }

    /// What `build` makes, fed record by record to a fresh session: refused with `alert`,
    /// sealed, and the session seals nothing more.
    #[track_caller]
    fn refused(build: impl FnOnce(&mut RawClient) -> Vec<Vec<u8>>, alert: AlertDescription) {
        let (mut server, mut client) = RawClient::connect();
        let records = build(&mut client);
        let mut last = None;
        for record in &records {
            let result = feed(&mut server, &mut client, record);
            let failed = result.0.is_err();
            last = Some(result);
            if failed {
                break;
            }
        }
        let (status, sent, _) = last.expect("at least one record");
        assert!(status.is_err(), "accepted; expected {alert}");
        assert_eq!(
            sent,
            [(ALERT, vec![alert::FATAL, alert.0])],
            "{status:?}: expected {alert}"
        );
        assert!(server.is_failed());
        assert!(server.encrypt(b"x", &mut Vec::new()).is_err());
    }

    /// RFC 8446 §5.1: a KeyUpdate must end its record; two in one record, or one followed
    /// by anything, is unexpected_message (issue 21, defect 4).
    #[test]
    fn a_key_update_must_end_its_record() {
        refused(
            |c| {
                let mut two = KEY_UPDATE_NOT_REQUESTED.to_vec();
                two.extend(KEY_UPDATE_NOT_REQUESTED);
                vec![c.seal(HANDSHAKE, &two)]
            },
            AlertDescription::UNEXPECTED_MESSAGE,
        );
        refused(
            |c| {
                let mut more = KEY_UPDATE_REQUESTED.to_vec();
                more.push(0);
                vec![c.seal(HANDSHAKE, &more)]
            },
            AlertDescription::UNEXPECTED_MESSAGE,
        );
    }

    /// A KeyUpdate split across records is legal (§5.1 lets handshake messages span
    /// records): taken, the receiving key moves on (a record under the old one no longer
    /// authenticates), and the reply asked for is owed. Another record type between its
    /// parts is not.
    #[test]
    fn a_key_update_split_across_records_is_taken() {
        for split in 1..KEY_UPDATE_LEN {
            let (mut server, mut client) = RawClient::connect();
            let first = client.seal(HANDSHAKE, &KEY_UPDATE_REQUESTED[..split]);
            let (status, sent, _) = feed(&mut server, &mut client, &first);
            assert_eq!(status.unwrap(), Status::Open, "split at {split}");
            assert!(sent.is_empty() && !server.wants_write());
            let second = client.seal(HANDSHAKE, &KEY_UPDATE_REQUESTED[split..]);
            let (status, sent, _) = feed(&mut server, &mut client, &second);
            assert_eq!(status.unwrap(), Status::Open, "split at {split}");
            assert!(sent.is_empty());
            assert!(server.wants_write(), "the reply is owed");
            let stale = client.seal(APPLICATION_DATA, b"old key");
            let (status, sent, _) = feed(&mut server, &mut client, &stale);
            assert!(status.is_err());
            assert_eq!(
                sent,
                [(
                    ALERT,
                    vec![alert::FATAL, AlertDescription::BAD_RECORD_MAC.0]
                )]
            );
        }
        refused(
            |c| {
                vec![
                    c.seal(HANDSHAKE, &KEY_UPDATE_REQUESTED[..2]),
                    c.seal(APPLICATION_DATA, b"between"),
                ]
            },
            AlertDescription::UNEXPECTED_MESSAGE,
        );
    }

    /// Inner plaintext over 2^14 + 1 bytes, content type and padding included, is
    /// record_overflow (§5.4; issue 21, defect 5); exactly 2^14 + 1 is taken.
    #[test]
    fn inner_plaintext_over_the_limit_is_record_overflow() {
        let (mut server, mut client) = RawClient::connect();
        let full = client.seal(APPLICATION_DATA, &[7; MAX_RECORD_PLAINTEXT]);
        let (status, sent, plain) = feed(&mut server, &mut client, &full);
        assert_eq!(status.unwrap(), Status::Open);
        assert!(sent.is_empty());
        assert_eq!(plain.len(), MAX_RECORD_PLAINTEXT);
        refused(
            |c| {
                let mut inner = vec![7; MAX_RECORD_PLAINTEXT];
                inner.extend([APPLICATION_DATA, 0]);
                vec![c.seal_inner(&inner)]
            },
            AlertDescription::RECORD_OVERFLOW,
        );
        refused(
            |c| vec![c.seal(APPLICATION_DATA, &[7; MAX_RECORD_PLAINTEXT + 1])],
            AlertDescription::RECORD_OVERFLOW,
        );
    }

    /// Each bad input gets the alert RFC 8446 gives it (issue 21, defect 6).
    #[test]
    fn each_bad_record_gets_its_alert() {
        use AlertDescription as A;
        let cases: [(&str, Build, AlertDescription); 15] = [
            (
                "request_update 2",
                |c| vec![c.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 2])],
                A::ILLEGAL_PARAMETER,
            ),
            (
                "a KeyUpdate of 2 bytes",
                |c| vec![c.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 2, 0, 0])],
                A::DECODE_ERROR,
            ),
            (
                "a ClientHello after the handshake",
                |c| vec![c.seal(HANDSHAKE, &[1, 0, 0, 1, 0])],
                A::UNEXPECTED_MESSAGE,
            ),
            (
                "a zero-length handshake record",
                |c| vec![c.seal(HANDSHAKE, &[])],
                A::UNEXPECTED_MESSAGE,
            ),
            (
                "an alert of 3 bytes",
                |c| vec![c.seal(ALERT, &[2, 10, 0])],
                A::DECODE_ERROR,
            ),
            (
                "an alert of 1 byte",
                |c| vec![c.seal(ALERT, &[2])],
                A::DECODE_ERROR,
            ),
            (
                "a zero-length alert record",
                |c| vec![c.seal(ALERT, &[])],
                A::UNEXPECTED_MESSAGE,
            ),
            (
                "an unknown outer content type",
                |_| vec![vec![0x30, 3, 3, 0, 1, 0]],
                A::UNEXPECTED_MESSAGE,
            ),
            (
                "a plaintext handshake record",
                |_| vec![vec![HANDSHAKE, 3, 3, 0, 5, KEY_UPDATE, 0, 0, 1, 0]],
                A::UNEXPECTED_MESSAGE,
            ),
            (
                "a plaintext change_cipher_spec",
                |_| vec![vec![20, 3, 3, 0, 1, 1]],
                A::UNEXPECTED_MESSAGE,
            ),
            (
                "a protected change_cipher_spec",
                |c| vec![c.seal(20, &[1])],
                A::UNEXPECTED_MESSAGE,
            ),
            (
                "an unknown inner content type",
                |c| vec![c.seal(0x30, b"x")],
                A::UNEXPECTED_MESSAGE,
            ),
            (
                "padding only",
                |c| vec![c.seal_inner(&[0; 8])],
                A::UNEXPECTED_MESSAGE,
            ),
            (
                "a record shorter than its tag",
                |_| vec![vec![APPLICATION_DATA, 3, 3, 0, 5, 1, 2, 3, 4, 5]],
                A::BAD_RECORD_MAC,
            ),
            (
                "a record over 2^14 + 256",
                |_| {
                    let mut header = vec![APPLICATION_DATA, 3, 3];
                    header.extend(u16::try_from(MAX_CIPHERTEXT + 1).unwrap().to_be_bytes());
                    vec![header]
                },
                A::RECORD_OVERFLOW,
            ),
        ];
        for (what, build, alert) in cases {
            eprintln!("{what}");
            refused(build, alert);
        }
    }

    /// A warning user_canceled is not fatal (RFC 8446 §6.1): the session goes on, and its
    /// close_notify closes. Any other alert is fatal, and gets no alert back.
    #[test]
    fn a_warning_user_canceled_is_not_fatal() {
        let (mut server, mut client) = RawClient::connect();
        let canceled = client.seal(ALERT, &[alert::WARNING, AlertDescription::USER_CANCELED.0]);
        let (status, sent, _) = feed(&mut server, &mut client, &canceled);
        assert_eq!(status.unwrap(), Status::Open);
        assert!(sent.is_empty());
        let data = client.seal(APPLICATION_DATA, b"still here");
        assert_eq!(feed(&mut server, &mut client, &data).2, b"still here");
        let close = client.seal(ALERT, &[alert::WARNING, 0]);
        assert_eq!(
            feed(&mut server, &mut client, &close).0.unwrap(),
            Status::PeerClosed
        );

        let (mut server, mut client) = RawClient::connect();
        let fatal = client.seal(ALERT, &[alert::FATAL, AlertDescription::DECODE_ERROR.0]);
        let (status, sent, _) = feed(&mut server, &mut client, &fatal);
        assert!(matches!(
            status,
            Err(TlsError::Record(RecordError::PeerAlert(
                AlertDescription::DECODE_ERROR
            )))
        ));
        assert!(sent.is_empty(), "an alert answered an alert");
    }

    /// A sequence number never wraps (§5.3; issue 21, defect 8): at 2^64 - 1 the next record
    /// is refused with internal_error, whatever it holds.
    #[test]
    fn a_sequence_number_does_not_wrap() {
        let (mut server, mut client) = RawClient::connect();
        server.set_open_sequence_for_test(u64::MAX);
        let record = client.seal(APPLICATION_DATA, b"x");
        let (status, _, _) = feed(&mut server, &mut client, &record);
        assert!(matches!(
            status,
            Err(TlsError::Record(RecordError::SequenceExhausted))
        ));
    }
}
