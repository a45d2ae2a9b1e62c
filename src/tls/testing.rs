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
        client.process_new_packets().unwrap();
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
