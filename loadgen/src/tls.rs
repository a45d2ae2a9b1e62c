//! TLS for `wss://` targets: the flags (`--ca`,
//! `--insecure`, `--tls-resumption`), and one connection's client session over the
//! connection's own buffers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::aead::{
    Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConnectionData, Resumption, UnbufferedClientConnection};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::kernel::KernelConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{
    ClientConfig, ConnectionTrafficSecrets, DigitallySignedStruct, ExtractedSecrets, RootCertStore,
    SignatureScheme,
};

use clap::Args;

use crate::error::LoadError;

/// Flags of `wss://` runs.
#[derive(Args, Debug)]
pub struct TlsArgs {
    /// wss://: PEM certificates to trust (the server's own, or the CA that signed it).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// wss://: take any certificate (prints a warning): only for a test server whose
    /// certificate you do not have.
    #[arg(long)]
    insecure: bool,
    /// wss://: resume TLS sessions (tickets) instead of a full handshake for every
    /// connection, to load the resumption path.
    #[arg(long)]
    tls_resumption: bool,
}

impl TlsArgs {
    /// The TLS client configuration a `wss://` target needs; `None` for `ws://`.
    pub fn config(
        &self,
        target: &crate::target::Target,
    ) -> Result<Option<Arc<ClientConfig>>, LoadError> {
        if !target.secure {
            if self.ca.is_some() || self.insecure || self.tls_resumption {
                return Err(LoadError::Usage(
                    "--ca, --insecure and --tls-resumption are for wss:// URLs".into(),
                ));
            }
            return Ok(None);
        }
        if self.insecure {
            eprintln!(
                "uringcast-load: warning: --insecure: the server's certificate is not verified"
            );
        }
        self.client_config().map(Some)
    }

    /// The client configuration, shared by every connection of the run.
    ///
    /// # Errors
    ///
    /// Neither `--ca` nor `--insecure`, or a `--ca` file with no certificate.
    fn client_config(&self) -> Result<Arc<ClientConfig>, LoadError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| LoadError::Usage(format!("TLS: {e}")))?;
        let mut config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let Some(ca) = &self.ca else {
                return Err(LoadError::Usage(
                    "wss:// needs --ca FILE (the certificates to trust) or --insecure".into(),
                ));
            };
            builder
                .with_root_certificates(roots(ca)?)
                .with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // The secrets go to ClientTls's own record layer once the handshake is over.
        config.enable_secret_extraction = true;
        if !self.tls_resumption {
            config.resumption = Resumption::disabled();
        }
        Ok(Arc::new(config))
    }
}

fn roots(path: &Path) -> Result<RootCertStore, LoadError> {
    let bad = |reason: String| LoadError::Usage(format!("--ca {}: {reason}", path.display()));
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("{e:?}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{e:?}")))?;
    for cert in certs {
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(roots)
}

/// `--insecure`: any certificate is taken, but signatures are still checked, so the
/// handshake costs what a verifying client's does short of the chain walk.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One connection's client session. Ciphertext in, plaintext out, and back; the caller owns
/// the sockets.
///
/// rustls's unbuffered API runs the handshake over buffers this session owns. Once a TLS 1.3
/// handshake is over, rustls's kernel-connection API hands over the traffic secrets and the
/// records are sealed and opened here with ring, as the server does (`src/tls/record.rs`):
/// an idle session then keeps two AEAD keys, the key schedule rustls needs for a KeyUpdate or
/// a ticket, and no buffer at all (rustls's buffered client kept a 4 KiB receive buffer and
/// its queues per connection: a million of them did not fit beside the server).
pub struct ClientTls {
    engine: Engine,
    /// Ciphertext received and not yet consumed (part of a record); freed once it empties.
    incoming: Vec<u8>,
    resumed: bool,
    peer_closed: bool,
}

/// Who handles the records.
enum Engine {
    /// rustls, through the handshake, and for good on a TLS 1.2 session.
    Rustls(Box<UnbufferedClientConnection>),
    /// A TLS 1.3 session past its handshake.
    Records(Box<ClientRecords>),
    /// A session whose take-over failed.
    Failed,
}

impl ClientTls {
    /// A session for `server_name`; returns it with its ClientHello to send.
    ///
    /// # Errors
    ///
    /// The name is not a DNS name or an IP address.
    pub fn start(config: &Arc<ClientConfig>, server_name: &str) -> Result<(Self, Vec<u8>), String> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| format!("TLS server name {server_name:?}: {e}"))?;
        let conn =
            UnbufferedClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
        let mut tls = Self {
            engine: Engine::Rustls(Box::new(conn)),
            incoming: Vec::new(),
            resumed: false,
            peer_closed: false,
        };
        let mut hello = Vec::new();
        let mut plain = Vec::new();
        tls.process(&mut plain, &mut hello)?;
        Ok((tls, hello))
    }

    /// Whether the handshake is over.
    pub fn is_handshaking(&self) -> bool {
        match &self.engine {
            Engine::Rustls(conn) => conn.is_handshaking(),
            Engine::Records(_) | Engine::Failed => false,
        }
    }

    /// Whether the session resumed an earlier one.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Takes ciphertext from the server: the plaintext it carried is appended to `plain`, and
    /// what TLS must send back to `out`.
    ///
    /// # Errors
    ///
    /// A TLS error (a bad certificate, an alert from the server, a broken record).
    pub fn receive(
        &mut self,
        input: &[u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let held = self.incoming.len() + input.len();
        if held > MAX_INCOMING_BYTES {
            return Err(format!("TLS: {held} bytes without a complete record"));
        }
        self.incoming.extend_from_slice(input);
        let result = match &self.engine {
            Engine::Rustls(_) => self.process(plain, out).and_then(|()| {
                if self.take_over()? && !self.incoming.is_empty() {
                    // What followed the handshake's last record is the record layer's now.
                    self.open(plain, out)?;
                }
                Ok(())
            }),
            Engine::Records(_) => self.open(plain, out),
            Engine::Failed => Err("TLS: a failed session".to_owned()),
        };
        if self.incoming.is_empty() {
            // Idle sessions keep no record buffer.
            self.incoming = Vec::new();
        }
        result
    }

    /// Encrypts `plain` and appends the records to `out`.
    pub fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        match &mut self.engine {
            Engine::Records(records) => records.seal(APPLICATION_DATA, plain, out),
            Engine::Rustls(conn) => {
                // Every complete record was consumed by `receive`: rustls is in WriteTraffic
                // unless it has a message of its own to encode first.
                loop {
                    let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
                    match state {
                        Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                            let records = plain.len().div_ceil(MAX_PLAINTEXT).max(1);
                            append(out, plain.len() + records * 64, |buf| {
                                traffic.encrypt(plain, buf).map_err(|e| match e {
                                    EncryptError::InsufficientSize(InsufficientSizeError {
                                        required_size,
                                    }) => Some(required_size),
                                    _ => None,
                                })
                            });
                            return;
                        }
                        Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                            append(out, 512, |buf| {
                                encode.encode(buf).map_err(|e| match e {
                                    EncodeError::InsufficientSize(InsufficientSizeError {
                                        required_size,
                                    }) => Some(required_size),
                                    EncodeError::AlreadyEncoded => None,
                                })
                            });
                        }
                        Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                        // Nothing can be sent: the run counts the connection as failed when
                        // its message never comes back.
                        _ => return,
                    }
                }
            }
            Engine::Failed => {}
        }
    }

    /// Runs rustls over what was received: handshake flights to `out`, application data (a
    /// TLS 1.2 session's) to `plain`.
    fn process(&mut self, plain: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), String> {
        let Engine::Rustls(conn) = &mut self.engine else {
            return Err("TLS: rustls is out of the data path".to_owned());
        };
        loop {
            let UnbufferedStatus { mut discard, state } =
                conn.process_tls_records(&mut self.incoming);
            let step = match state {
                Err(error) => Err(format!("TLS: {error}")),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut failed = None;
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                plain.extend_from_slice(record.payload);
                            }
                            Err(error) => {
                                failed = Some(format!("TLS: {error}"));
                                break;
                            }
                        }
                    }
                    failed.map_or(Ok(false), Err)
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    append(out, 512, |buf| {
                        encode.encode(buf).map_err(|e| match e {
                            EncodeError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            }) => Some(required_size),
                            EncodeError::AlreadyEncoded => None,
                        })
                    });
                    Ok(false)
                }
                // What was encoded is in `out`, which goes out before anything later.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Ok(false)
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(false)
                }
                Ok(
                    ConnectionState::BlockedHandshake
                    | ConnectionState::WriteTraffic(_)
                    | ConnectionState::Closed,
                ) => Ok(true),
                Ok(_) => Err("TLS: unexpected session state".to_owned()),
            };
            self.incoming.drain(..discard.min(self.incoming.len()));
            if step? {
                return Ok(());
            }
        }
    }

    /// A TLS 1.3 session whose handshake is over moves to [`ClientRecords`]; returns whether
    /// it did.
    fn take_over(&mut self) -> Result<bool, String> {
        let Engine::Rustls(conn) = &self.engine else {
            return Ok(false);
        };
        if conn.is_handshaking()
            || conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3)
            || self.peer_closed
        {
            return Ok(false);
        }
        self.resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        let Engine::Rustls(conn) = std::mem::replace(&mut self.engine, Engine::Failed) else {
            return Ok(false);
        };
        let (secrets, kernel) = conn
            .dangerous_into_kernel_connection()
            .map_err(|e| format!("TLS take-over: {e}"))?;
        self.engine = Engine::Records(Box::new(ClientRecords::new(secrets, kernel)?));
        Ok(true)
    }

    fn open(&mut self, plain: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), String> {
        let Engine::Records(records) = &mut self.engine else {
            return Err("TLS: no record layer".to_owned());
        };
        if self.peer_closed {
            // Nothing after close_notify counts (RFC 8446 §6.1).
            self.incoming.clear();
            return Ok(());
        }
        let result = records.open(&mut self.incoming, plain, out);
        match result {
            Ok((used, closed)) => {
                self.incoming.drain(..used);
                if closed {
                    self.peer_closed = true;
                    self.incoming.clear();
                }
                Ok(())
            }
            Err(error) => {
                self.engine = Engine::Failed;
                Err(error)
            }
        }
    }
}

/// Ciphertext a session may hold while a record (or a handshake message over several) is
/// incomplete: a record is at most 2^14 + 256 bytes, a handshake message at most 64 KiB
/// (rustls's limit).
const MAX_INCOMING_BYTES: usize = 72 * 1024;
/// Plaintext per record (RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 16 * 1024;

/// Appends what `f` writes into a slice at the end of `out`, growing it as `f` asks (`Err`
/// with the size it needs, or `None` when the failure is not about size: nothing is kept).
fn append(
    out: &mut Vec<u8>,
    guess: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) {
    let start = out.len();
    let mut room = guess;
    loop {
        out.resize(start + room, 0);
        match f(&mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                return;
            }
            Err(Some(required)) if required > room => room = required,
            Err(_) => {
                out.truncate(start);
                return;
            }
        }
    }
}

/// Content types (RFC 8446 §5.1).
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// Handshake message types after the handshake (RFC 8446 §4.6).
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;
const CLOSE_NOTIFY: u8 = 0;
const HEADER: usize = 5;
const TAG: usize = 16;
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;

/// One direction's key, IV and sequence number.
struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Self, String> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err("TLS: a cipher suite the record layer lacks".to_owned()),
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| "TLS: a bad traffic key".to_owned())?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| "TLS: a bad traffic IV".to_owned())?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The IV XOR the sequence number (RFC 8446 §5.3), which then moves on.
    fn next_nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (byte, seq) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *byte ^= seq;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(nonce)
    }
}

/// A TLS 1.3 client session's records after its handshake: sealed and opened with ring;
/// rustls's kernel connection computes the next secrets at a KeyUpdate and takes the tickets.
struct ClientRecords {
    kernel: KernelConnection<ClientConnectionData>,
    seal: Direction,
    open: Direction,
    /// Records sealed under one key before a KeyUpdate of our own.
    limit: u64,
}

impl ClientRecords {
    fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ClientConnectionData>,
    ) -> Result<Self, String> {
        let limit = match kernel.negotiated_cipher_suite() {
            rustls::SupportedCipherSuite::Tls13(suite) => suite.common.confidentiality_limit,
            _ => return Err("TLS: TLS 1.2 in the TLS 1.3 record layer".to_owned()),
        };
        Ok(Self {
            kernel,
            seal: Direction::new(secrets.tx)?,
            open: Direction::new(secrets.rx)?,
            limit: limit.saturating_sub(1024).max(1),
        })
    }

    /// Seals `plain` as records of `content_type` appended to `out`.
    fn seal(&mut self, content_type: u8, plain: &[u8], out: &mut Vec<u8>) {
        let mut chunks = plain.chunks(MAX_PLAINTEXT);
        let mut next = chunks.next().or(Some(&[]));
        while let Some(chunk) = next {
            if self.seal.seq >= self.limit {
                self.update_keys(false, out);
            }
            self.seal_one(content_type, chunk, out);
            next = chunks.next();
        }
    }

    fn seal_one(&mut self, content_type: u8, chunk: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let inner = chunk.len() + 1;
        let length = inner + TAG;
        out.resize(start + HEADER + length, 0);
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
        match self
            .seal
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*header), data)
        {
            Ok(sealed) => tag.copy_from_slice(sealed.as_ref()),
            // ring fails only past the AEAD's input limit, far above a record.
            Err(_) => out.truncate(start),
        }
    }

    /// Sends a KeyUpdate under the current key, then moves to the next sending key.
    fn update_keys(&mut self, requested: bool, out: &mut Vec<u8>) {
        self.seal_one(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, u8::from(requested)], out);
        if let Ok(next) = self.kernel.update_tx_secret() {
            if let Ok(direction) = Direction::new(next) {
                self.seal = direction;
            }
        }
    }

    /// Opens the complete records at the front of `incoming`, in place: application data to
    /// `plain`, replies (a KeyUpdate) to `out`. Returns the bytes consumed and whether the
    /// server sent close_notify.
    fn open(
        &mut self,
        incoming: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(usize, bool), String> {
        let mut pos = 0;
        while incoming.len() - pos >= HEADER {
            let header: [u8; HEADER] = incoming[pos..pos + HEADER].try_into().expect("five bytes");
            let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if header[0] != APPLICATION_DATA || length < TAG + 1 {
                return Err("TLS: a record that is not protected application data".to_owned());
            }
            if length > MAX_CIPHERTEXT {
                return Err("TLS: a record over 2^14 + 256 bytes".to_owned());
            }
            if incoming.len() - pos < HEADER + length {
                break;
            }
            let body = &mut incoming[pos + HEADER..pos + HEADER + length];
            pos += HEADER + length;
            let nonce = self.open.next_nonce();
            let inner = self
                .open
                .key
                .open_in_place(nonce, Aad::from(header), body)
                .map_err(|_| "TLS: a record that does not authenticate".to_owned())?;
            // The content type is the last non-zero byte; zeros after it are padding.
            let end = inner
                .iter()
                .rposition(|&b| b != 0)
                .ok_or("TLS: a record without a content type")?;
            let (content, content_type) = (&inner[..end], inner[end]);
            match content_type {
                APPLICATION_DATA => plain.extend_from_slice(content),
                ALERT => match content {
                    [_, CLOSE_NOTIFY] => return Ok((pos, true)),
                    _ => return Err(format!("TLS: alert {content:?} from the server")),
                },
                HANDSHAKE => {
                    let content = content.to_vec();
                    self.handshake_messages(&content, out)?;
                }
                _ => return Err("TLS: a record of an unknown content type".to_owned()),
            }
        }
        Ok((pos, false))
    }

    /// Post-handshake messages from a server (RFC 8446 §4.6): tickets go to rustls (which
    /// keeps them only with `--tls-resumption`), a KeyUpdate moves the receiving key on, and
    /// ours too when asked.
    fn handshake_messages(&mut self, mut content: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        while let [kind, a, b, c, rest @ ..] = content {
            let length = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            if rest.len() < length {
                // A handshake message split over records: no server of ours does that after
                // the handshake.
                return Err("TLS: a post-handshake message split over records".to_owned());
            }
            let (payload, rest) = rest.split_at(length);
            match (*kind, payload) {
                (NEW_SESSION_TICKET, _) => self
                    .kernel
                    .handle_new_session_ticket(payload)
                    .map_err(|e| format!("TLS: NewSessionTicket: {e}"))?,
                (KEY_UPDATE, [request @ (0 | 1)]) => {
                    let next = self
                        .kernel
                        .update_rx_secret()
                        .map_err(|e| format!("TLS: KeyUpdate: {e}"))?;
                    self.open = Direction::new(next)?;
                    if *request == 1 {
                        self.update_keys(false, out);
                    }
                }
                _ => return Err(format!("TLS: handshake message {kind} after the handshake")),
            }
            content = rest;
        }
        if content.is_empty() {
            Ok(())
        } else {
            Err("TLS: a truncated handshake message".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::ServerConnection;
    use std::io::{Read, Write};

    /// A client session against rustls's own server in memory, past the handshake and the
    /// server's session tickets.
    fn pair() -> (ClientTls, ServerConnection) {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = key.cert.der().clone();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.clone()],
                PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut client_config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client_config.enable_secret_extraction = true;
        let (mut client, mut to_server) =
            ClientTls::start(&Arc::new(client_config), "localhost").unwrap();
        let mut server = ServerConnection::new(Arc::new(server_config)).unwrap();
        while client.is_handshaking() {
            let to_client = server_takes(&mut server, &to_server);
            to_server.clear();
            let mut plain = Vec::new();
            client
                .receive(&to_client, &mut plain, &mut to_server)
                .unwrap();
        }
        // The client's Finished; the server answers with its tickets.
        let tickets = server_takes(&mut server, &to_server);
        assert!(!tickets.is_empty(), "a TLS 1.3 server sends tickets");
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        client.receive(&tickets, &mut plain, &mut out).unwrap();
        assert!(plain.is_empty() && out.is_empty());
        (client, server)
    }

    /// Feeds ciphertext to the server; returns what it sends back.
    fn server_takes(server: &mut ServerConnection, mut input: &[u8]) -> Vec<u8> {
        while !input.is_empty() {
            server.read_tls(&mut input).unwrap();
            server.process_new_packets().unwrap();
        }
        let mut out = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut out).unwrap();
        }
        out
    }

    fn server_plaintext(server: &mut ServerConnection) -> Vec<u8> {
        let mut plain = Vec::new();
        // WouldBlock once everything received is read.
        let _ = server.reader().read_to_end(&mut plain);
        plain
    }

    #[test]
    fn after_the_handshake_records_flow_both_ways_without_rustls() {
        let (mut client, mut server) = pair();
        assert!(matches!(client.engine, Engine::Records(_)));
        assert!(
            client.incoming.capacity() == 0,
            "an idle session keeps no buffer"
        );
        let mut out = Vec::new();
        client.encrypt(b"GET / HTTP/1.1\r\n\r\n", &mut out);
        assert!(server_takes(&mut server, &out).is_empty());
        assert_eq!(server_plaintext(&mut server), b"GET / HTTP/1.1\r\n\r\n");
        // Large enough for several records, fed one byte at a time.
        let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        server.writer().write_all(&big).unwrap();
        let records = server_takes(&mut server, &[]);
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        for byte in records.chunks(1) {
            client.receive(byte, &mut plain, &mut out).unwrap();
        }
        assert_eq!(plain, big);
        assert!(out.is_empty());
    }

    #[test]
    fn a_key_update_from_the_server_is_followed_and_answered() {
        let (mut client, mut server) = pair();
        // The server moves its key on and asks the client to move its own.
        server.refresh_traffic_keys().unwrap();
        server.writer().write_all(b"after the update").unwrap();
        let records = server_takes(&mut server, &[]);
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        client.receive(&records, &mut plain, &mut out).unwrap();
        assert_eq!(plain, b"after the update");
        assert!(!out.is_empty(), "the client's own KeyUpdate");
        client.encrypt(b"under the new key", &mut out);
        server_takes(&mut server, &out);
        assert_eq!(server_plaintext(&mut server), b"under the new key");
    }

    #[test]
    fn a_tampered_record_fails_the_session() {
        let (mut client, mut server) = pair();
        server.writer().write_all(b"intact?").unwrap();
        let mut records = server_takes(&mut server, &[]);
        let last = records.len() - 1;
        records[last] ^= 1;
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        let error = client.receive(&records, &mut plain, &mut out).unwrap_err();
        assert!(error.contains("does not authenticate"), "{error}");
        assert!(plain.is_empty());
        assert!(
            client.receive(b"", &mut plain, &mut out).is_err(),
            "the session is dead"
        );
    }

    #[test]
    fn close_notify_ends_what_is_read() {
        let (mut client, mut server) = pair();
        server.writer().write_all(b"last words").unwrap();
        server.send_close_notify();
        let records = server_takes(&mut server, &[]);
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        client.receive(&records, &mut plain, &mut out).unwrap();
        assert_eq!(plain, b"last words");
        assert!(client.peer_closed);
    }
}
