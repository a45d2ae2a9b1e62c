//! TLS for `wss://` targets: the flags (`--ca`,
//! `--insecure`, `--tls-resumption`), and one connection's client session over the
//! connection's own buffers.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
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
pub struct ClientTls {
    conn: ClientConnection,
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
        let conn = ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
        let mut tls = Self { conn };
        let mut hello = Vec::new();
        tls.drain(&mut hello);
        Ok((tls, hello))
    }

    /// Whether the handshake is over.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the session resumed an earlier one.
    pub fn resumed(&self) -> bool {
        matches!(
            self.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        )
    }

    /// Takes ciphertext from the server: the plaintext it carried is appended to `plain`, and
    /// what TLS must send back to `out`.
    ///
    /// # Errors
    ///
    /// A TLS error (a bad certificate, an alert from the server, a broken record).
    pub fn receive(
        &mut self,
        mut input: &[u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        while !input.is_empty() {
            self.conn
                .read_tls(&mut input)
                .map_err(|e| format!("TLS read: {e}"))?;
            let state = self.conn.process_new_packets();
            // Whatever it says, an alert it made goes out first.
            self.drain(out);
            let state = state.map_err(|e| format!("TLS: {e}"))?;
            let ready = state.plaintext_bytes_to_read();
            if ready > 0 {
                let start = plain.len();
                plain.resize(start + ready, 0);
                let read = self.conn.reader().read(&mut plain[start..]).unwrap_or(0);
                plain.truncate(start + read);
            }
        }
        Ok(())
    }

    /// Encrypts `plain` and appends the records to `out`.
    pub fn encrypt(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        // The buffered writer takes everything while the handshake is over.
        let _ = self.conn.writer().write_all(plain);
        self.drain(out);
    }

    fn drain(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }
}
