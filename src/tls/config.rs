//! The server's certificate and key: read from PEM files, made into a rustls configuration,
//! and swapped on reload while open connections keep the one they started with.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConfig;

/// Why a certificate or key could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsConfigError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// A reload was asked of a server that does not speak TLS.
    #[error("the server was started without TLS")]
    NotEnabled,
    /// rustls refused the pair (a key that does not match the certificate, say).
    #[error("certificate {cert} with key {key}: {error}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        error: String,
    },
}

/// Where the certificate chain and private key are (PEM; the chain leaf first; ECDSA, RSA or
/// Ed25519 keys in PKCS#8, PKCS#1 or SEC1 form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads both files and builds the rustls configuration: TLS 1.3 and 1.2, ALPN
    /// `http/1.1`, no client certificates, the `ring` provider.
    ///
    /// # Errors
    ///
    /// A file is unreadable or holds no certificate or key, or the pair does not match.
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsConfigError> {
        let certs = read_certs(&self.cert)?;
        let key =
            PrivateKeyDer::from_pem_file(&self.key).map_err(|error| TlsConfigError::File {
                path: self.key.clone(),
                reason: pem_reason(&error, "private key"),
            })?;
        let pair = |error: rustls::Error| TlsConfigError::Pair {
            cert: self.cert.clone(),
            key: self.key.clone(),
            error: error.to_string(),
        };
        // The server's order, not the client's: AES-128-GCM first (RFC 8446 §9.1's mandatory
        // suite, the one browsers prefer, 10 AES rounds to AES-256's 14 on every record of a
        // fan-out), then AES-256-GCM, then ChaCha20-Poly1305.
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .sort_by_key(|suite| match suite.suite() {
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
                _ => 3,
            });
        let provider = Arc::new(provider);
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(pair)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(pair)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.ignore_client_order = true;
        // One ticket is enough for a client to resume; each one costs a record per handshake.
        config.send_tls13_tickets = 1;
        // A TLS 1.3 session past its handshake moves to uringcast's own record layer
        // (`tls::record`), which takes over the traffic secrets.
        config.enable_secret_extraction = true;
        Ok(Arc::new(config))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let file = |reason: String| TlsConfigError::File {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| file(pem_reason(&error, "certificate")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| file(pem_reason(&error, "certificate")))?;
    if certs.is_empty() {
        return Err(file("no certificate in the file".into()));
    }
    Ok(certs)
}

fn pem_reason(error: &rustls::pki_types::pem::Error, what: &str) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => format!("no {what} in the file"),
        other => format!("not a PEM {what}: {other:?}"),
    }
}

/// The configuration new handshakes use, replaceable while the server runs.
#[derive(Debug)]
pub struct TlsAcceptor {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// Reloads that took effect.
    pub reloads: AtomicU64,
    /// Reloads refused (a bad or unreadable file); the old pair stayed.
    pub reload_failures: AtomicU64,
}

impl TlsAcceptor {
    /// Loads the pair once.
    ///
    /// # Errors
    ///
    /// As [`TlsFiles::load`].
    pub fn new(files: TlsFiles) -> Result<Self, TlsConfigError> {
        let current = RwLock::new(files.load()?);
        Ok(Self {
            files,
            current,
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(config) => Arc::clone(&config),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reads the files again; on success new handshakes use the new pair (open connections
    /// keep theirs), on failure the old pair stays.
    ///
    /// # Errors
    ///
    /// As [`TlsFiles::load`]; nothing changes.
    pub fn reload(&self) -> Result<(), TlsConfigError> {
        let fresh = self.files.load().inspect_err(|_| {
            self.reload_failures.fetch_add(1, Ordering::Relaxed);
        })?;
        match self.current.write() {
            Ok(mut config) => *config = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}
