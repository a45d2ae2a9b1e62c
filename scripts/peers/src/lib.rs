//! Shared bits of the peer servers and the echo client: argument parsing, the tokio runtime
//! every peer server runs on, and for the broadcast mode the URL convention, the limits and the
//! topic map every peer server shares.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_channel::{mpsc, oneshot};

/// `--name value` pairs from the command line; exits with a message on anything else.
pub fn args(allowed: &[&str]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(name) = it.next() {
        let Some(key) = name.strip_prefix("--").filter(|k| allowed.contains(k)) else {
            eprintln!(
                "unknown argument {name:?}; allowed: --{}",
                allowed.join(" --")
            );
            std::process::exit(2);
        };
        let Some(value) = it.next() else {
            eprintln!("--{key} needs a value");
            std::process::exit(2);
        };
        out.insert(key.to_owned(), value);
    }
    out
}

/// Parses `args[key]`, or returns `default`; exits with a message on a bad value.
pub fn arg<T: std::str::FromStr>(args: &HashMap<String, String>, key: &str, default: T) -> T {
    match args.get(key) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("bad value for --{key}: {v:?}");
            std::process::exit(2);
        }),
    }
}

/// The runtime for `threads` workers: current_thread for 1 (everything on the calling thread,
/// as in fastwebsockets' examples/echo_server.rs), else multi_thread with that many workers.
pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("tokio runtime")
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_io()
            .build()
            .expect("tokio runtime")
    }
}

/// Prints `listening on ADDR` on stdout and flushes it: the readiness line the bench waits for.
pub fn announce(addr: std::net::SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
}

/// The TLS acceptor `--tls-cert FILE --tls-key FILE` ask for (PEM; rustls on ring, TLS 1.3 and
/// 1.2, ALPN `http/1.1`, as tokio-rustls' server example sets it up), or `None` without them;
/// exits with a message on a bad file.
pub fn tls_acceptor(args: &HashMap<String, String>) -> Option<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{crypto::ring, ServerConfig};
    let (cert, key) = match (args.get("tls-cert"), args.get("tls-key")) {
        (None, None) => return None,
        (Some(cert), Some(key)) => (cert, key),
        _ => fail("--tls-cert and --tls-key go together"),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| fail(&format!("--tls-cert {cert}: {e}")));
    let key = PrivateKeyDer::from_pem_file(key)
        .unwrap_or_else(|e| fail(&format!("--tls-key {key}: {e}")));
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .unwrap_or_else(|e| fail(&format!("TLS: {e}")));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2);
}

/// What a peer server does with its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every Text or Binary message goes back to its sender.
    Echo,
    /// Publish/subscribe by URL path; see [`Route`].
    Broadcast,
}

impl std::str::FromStr for Mode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "echo" => Ok(Mode::Echo),
            "broadcast" => Ok(Mode::Broadcast),
            _ => Err(()),
        }
    }
}

/// Largest message a peer server accepts (16 MiB), the same for every server in the benchmark.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Most bytes a subscriber may have queued but not yet written (1 MiB): a publish that would
/// take it past this closes it as a slow consumer.
pub const MAX_QUEUED_BYTES: usize = 1 << 20;

/// What an upgrade's path asks for, by the convention every server in the benchmark follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/<topic>`: subscribed to the topic, and what it sends is published to it (so it gets
    /// its own messages back too).
    Subscribe(String),
    /// `/publish/<topic>`: subscribed to nothing; what it sends goes to the topic's subscribers.
    Publish(String),
}

impl Route {
    /// The route of a request path (without its query): `/room` subscribes to `room`,
    /// `/publish/room` publishes to it; `/` and `/publish/` name the root topic `/`.
    pub fn of_path(path: &str) -> Route {
        fn topic(path: &str) -> String {
            match path.strip_prefix('/') {
                Some("") | None => "/".to_owned(),
                Some(topic) => topic.to_owned(),
            }
        }
        match path.strip_prefix("/publish") {
            Some(rest) if rest.starts_with('/') => Route::Publish(topic(rest)),
            _ => Route::Subscribe(topic(path)),
        }
    }
}

/// One subscriber in a [`Topics`] map: its unbounded sender, the bytes it has queued (its
/// writer subtracts what it has handed to the socket) and its kill switch, whose drop (when a
/// publish takes the subscriber out of the map for being too slow) ends the connection.
struct Subscriber<M> {
    tx: mpsc::UnboundedSender<M>,
    queued: Arc<AtomicUsize>,
    _kill: oneshot::Sender<()>,
}

/// The peers of every topic, after tokio-tungstenite's examples/server.rs (a map of peers
/// behind a mutex, each with an unbounded sender a publish clones the message into), keyed by
/// topic and then by a connection id.
pub struct Topics<M> {
    topics: Mutex<HashMap<String, HashMap<u64, Subscriber<M>>>>,
    next_id: AtomicU64,
}

impl<M> Default for Topics<M> {
    fn default() -> Self {
        Topics {
            topics: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }
}

/// A connection's place in a [`Topics`] map; `killed` resolves (cancelled) when a publish took
/// it out for going past [`MAX_QUEUED_BYTES`].
pub struct Subscription {
    pub id: u64,
    pub killed: oneshot::Receiver<()>,
}

impl<M: Clone> Topics<M> {
    /// Adds a subscriber to `topic`.
    pub fn subscribe(
        &self,
        topic: &str,
        tx: mpsc::UnboundedSender<M>,
        queued: Arc<AtomicUsize>,
    ) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (kill, killed) = oneshot::channel();
        let subscriber = Subscriber {
            tx,
            queued,
            _kill: kill,
        };
        let mut topics = self.topics.lock().unwrap();
        topics
            .entry(topic.to_owned())
            .or_default()
            .insert(id, subscriber);
        Subscription { id, killed }
    }

    /// Removes a subscriber (if a publish has not already done so).
    pub fn unsubscribe(&self, topic: &str, id: u64) {
        let mut topics = self.topics.lock().unwrap();
        if let Some(peers) = topics.get_mut(topic) {
            peers.remove(&id);
            if peers.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Queues a clone of `message` (`len` payload bytes) for every subscriber of `topic`. One
    /// whose queue would go past [`MAX_QUEUED_BYTES`] is taken out of the map instead, which
    /// drops its kill switch: its connection ends, and its queue with it.
    pub fn publish(&self, topic: &str, message: &M, len: usize) {
        let mut topics = self.topics.lock().unwrap();
        let Some(peers) = topics.get_mut(topic) else {
            return;
        };
        peers.retain(|_, peer| {
            if peer.queued.load(Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
                return false;
            }
            peer.queued.fetch_add(len, Ordering::Relaxed);
            peer.tx.unbounded_send(message.clone()).is_ok()
        });
    }
}
