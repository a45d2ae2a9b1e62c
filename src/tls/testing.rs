//! Test helpers: a server configuration with a fresh certificate, rustls's own client, and
//! the bytes between them in memory.
#![cfg(test)]

use std::io::Read;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::ServerConfig;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::TlsSession;

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration with a fresh self-signed certificate, and a client that trusts it.
pub(crate) fn pair(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert: CertificateDer<'static> = key.cert.der().clone();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], der)
        .unwrap();
    // As `TlsFiles::load` sets it: TLS 1.3 sessions move to the record layer.
    server.enable_secret_extraction = true;
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

pub(crate) fn client(config: &Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(
        Arc::clone(config),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap()
}

/// Everything the client wants to send.
pub(crate) fn from_client(client: &mut ClientConnection) -> Vec<u8> {
    let mut bytes = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut bytes).unwrap();
    }
    bytes
}

/// Feeds the server's output to the client; returns the plaintext the client read.
pub(crate) fn to_client(client: &mut ClientConnection, mut bytes: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    while !bytes.is_empty() {
        client.read_tls(&mut bytes).unwrap();
        if let Err(e) = client.process_new_packets() {
            panic!("client: {e}")
        }
        match client.reader().read_to_end(&mut plain) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("client read: {e}"),
        }
    }
    plain
}

/// Runs the handshake, feeding the server `chunk` bytes at a time.
pub(crate) fn handshake(server: &mut TlsSession, client: &mut ClientConnection, chunk: usize) {
    let mut plain = Vec::new();
    for _ in 0..10 {
        let bytes = from_client(client);
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            server.receive(piece, &mut plain, &mut out).unwrap();
        }
        to_client(client, &out);
        if !server.is_handshaking() && !client.is_handshaking() {
            assert!(plain.is_empty());
            return;
        }
    }
    panic!("no handshake after 10 flights");
}

/// A client past its handshake that seals whatever a test asks for, with the keys rustls's
/// client negotiated and no rules of its own: malformed KeyUpdates, oversized plaintext,
/// records of any type. It opens the server's records to read its alerts, and does not
/// follow the server's KeyUpdates.
pub(crate) struct RawClient {
    seal: RawKeys,
    open: RawKeys,
}

struct RawKeys {
    key: ring::aead::LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl RawKeys {
    fn new((seq, secrets): (u64, rustls::ConnectionTrafficSecrets)) -> Self {
        use ring::aead::{UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};
        use rustls::ConnectionTrafficSecrets as S;
        let (algorithm, key, iv) = match &secrets {
            S::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            S::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            S::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => panic!("a cipher suite the test client does not know"),
        };
        Self {
            key: ring::aead::LessSafeKey::new(UnboundKey::new(algorithm, key.as_ref()).unwrap()),
            iv: iv.as_ref().try_into().unwrap(),
            seq,
        }
    }

    fn nonce(&mut self) -> ring::aead::Nonce {
        let mut nonce = self.iv;
        for (byte, seq) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *byte ^= seq;
        }
        self.seq += 1;
        ring::aead::Nonce::assume_unique_for_key(nonce)
    }
}

impl RawClient {
    /// Runs a TLS 1.3 handshake with a fresh server session and takes the client's keys.
    pub(crate) fn connect() -> (TlsSession, Self) {
        let (server_config, client_config) = pair(&[&rustls::version::TLS13]);
        let mut client_config = (*client_config).clone();
        client_config.enable_secret_extraction = true;
        let mut server = TlsSession::new(server_config).unwrap();
        let mut client = client(&Arc::new(client_config));
        handshake(&mut server, &mut client, usize::MAX);
        assert!(server.is_taken_over());
        #[allow(deprecated)] // No KeyUpdate on the client side is needed, so no kernel connection.
        let secrets = client.dangerous_extract_secrets().unwrap();
        let raw = Self {
            seal: RawKeys::new(secrets.tx),
            open: RawKeys::new(secrets.rx),
        };
        (server, raw)
    }

    /// A protected record whose inner plaintext is `inner` as given: content, content type
    /// and any padding.
    pub(crate) fn seal_inner(&mut self, inner: &[u8]) -> Vec<u8> {
        let length = u16::try_from(inner.len() + 16).unwrap();
        let mut record = vec![23, 3, 3];
        record.extend(length.to_be_bytes());
        let aad = ring::aead::Aad::from(<[u8; 5]>::try_from(&record[..]).unwrap());
        let mut body = inner.to_vec();
        let nonce = self.seal.nonce();
        self.seal
            .key
            .seal_in_place_append_tag(nonce, aad, &mut body)
            .unwrap();
        record.extend(body);
        record
    }

    /// A protected record of `content_type` holding `content`.
    pub(crate) fn seal(&mut self, content_type: u8, content: &[u8]) -> Vec<u8> {
        let mut inner = content.to_vec();
        inner.push(content_type);
        self.seal_inner(&inner)
    }

    /// Opens the server's records: each one's content type and content.
    pub(crate) fn open(&mut self, mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut records = Vec::new();
        while !bytes.is_empty() {
            let length = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
            let header: [u8; 5] = bytes[..5].try_into().unwrap();
            let mut body = bytes[5..5 + length].to_vec();
            let nonce = self.open.nonce();
            let inner = self
                .open
                .key
                .open_in_place(nonce, ring::aead::Aad::from(header), &mut body)
                .expect("the server's record authenticates");
            let end = inner.iter().rposition(|&b| b != 0).unwrap();
            records.push((inner[end], inner[..end].to_vec()));
            bytes = &bytes[5 + length..];
        }
        records
    }
}
