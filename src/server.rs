//! Starting and stopping a server: listeners, workers, and a handle to the running whole.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use crate::broadcast::{Broadcast, BroadcastStats, Handler, Mailboxes};
use crate::config::{Config, Mode, ServerBuilder};
use crate::driver::features::FeatureError;
use crate::driver::{run_worker, Features, Shared, WorkerSetup, WorkerStats};
pub use crate::modes::{Echo, RoomsByPath};
use crate::protocol::OpCode;

/// Entry point of the library: `Server::builder()`.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// A builder with every setting at its default.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// io_uring is refused or lacks a needed operation.
    #[error(transparent)]
    Kernel(#[from] FeatureError),
    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The signalfd or eventfds could not be created.
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] io::Error),
    /// The broker could not be reached (and it was not optional).
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    /// A worker failed to build its ring, file table or buffer ring.
    #[error("worker {id} failed to start: {source}")]
    Worker {
        /// The worker.
        id: usize,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    capacity: usize,
    shared: Arc<Shared>,
    hub: Arc<Mailboxes>,
    threads: Vec<JoinHandle<()>>,
    tls: Option<Arc<crate::tls::TlsAcceptor>>,
    broker: Option<Arc<crate::broker::Link>>,
}

impl ServerHandle {
    /// The address the workers listen on (the real port when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many connections the server can hold: the sum of the workers' file tables.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Per-worker counters of the driver.
    pub fn stats(&self) -> &[WorkerStats] {
        &self.shared.stats
    }

    /// Per-worker counters of the broadcast engine.
    pub fn broadcast_stats(&self) -> &[BroadcastStats] {
        &self.hub.stats
    }

    /// The counters in the Prometheus text format, as `GET /metrics` serves them.
    pub fn metrics(&self) -> String {
        crate::broadcast::metrics::render(&self.hub)
    }

    /// Waits until the broker link holds `topics` subscriptions at the broker (one per topic
    /// some connection here holds), at most `timeout`: from then on, what other nodes publish
    /// on those topics reaches this node. Returns whether it came to that; `false` at once
    /// without a broker. The same count is `uringcast_broker_subscribed_topics` in `/metrics`.
    pub fn wait_broker_subscriptions(&self, topics: usize, timeout: std::time::Duration) -> bool {
        self.broker
            .as_ref()
            .is_some_and(|link| link.wait_subscribed(topics as u64, timeout))
    }

    /// A cloneable publisher for other threads, usable while another thread waits on
    /// [`wait`](Self::wait) or [`shutdown`](Self::shutdown).
    pub fn publisher(&self) -> Publisher {
        Publisher {
            hub: Arc::clone(&self.hub),
        }
    }

    /// Publishes a message to every subscriber of `topic` on every worker, from any thread.
    /// The frame is encoded once. Returns the workers it was handed to (a worker whose
    /// mailbox is full drops it and counts the drop) and, with history on, its position.
    pub fn publish(&self, topic: &str, opcode: OpCode, payload: &[u8]) -> Published {
        publish(&self.hub, topic, opcode, payload)
    }

    /// Reads the TLS certificate and key files again: new handshakes use the new pair, open
    /// connections keep theirs. With `handle_signals`, SIGHUP does the same.
    ///
    /// # Errors
    ///
    /// The server does not speak TLS, or a file is unreadable or bad; the old pair stays.
    pub fn reload_tls(&self) -> Result<(), crate::tls::TlsConfigError> {
        match &self.tls {
            Some(acceptor) => acceptor.reload(),
            None => Err(crate::tls::TlsConfigError::NotEnabled),
        }
    }

    /// Sends close 1001 to every connection and returns when the workers have exited (each
    /// waits at most the drain timeout for its peers' close frames). Returns whether every
    /// worker stopped clean: all its operations ended and their memory freed, none leaked.
    pub fn shutdown(self) -> bool {
        self.shared.stop();
        self.wait()
    }

    /// Waits until the workers exit (after a signal, when signals are handled); returns
    /// whether every one stopped clean, as [`shutdown`](Self::shutdown) does.
    pub fn wait(self) -> bool {
        let mut clean = true;
        for thread in self.threads {
            if thread.join().is_err() {
                warn!("a worker panicked");
                clean = false;
            }
        }
        if let Some(link) = &self.broker {
            // The workers are gone, their topics with them: the link has left every channel
            // or leaves them now, and publishes what is still queued first.
            link.stop();
        }
        clean
            && self
                .shared
                .stats
                .iter()
                .all(|s| s.leaked_on_exit.load(std::sync::atomic::Ordering::Relaxed) == 0)
    }
}

/// Publishes to a running server from any thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct Publisher {
    hub: Arc<Mailboxes>,
}

impl Publisher {
    /// Publishes a message to every subscriber of `topic` on every worker; the frame is
    /// encoded once. Returns the workers it was handed to (0 once the server has stopped).
    pub fn publish(&self, topic: &str, opcode: OpCode, payload: &[u8]) -> Published {
        if !self.is_running() {
            return Published {
                workers: 0,
                position: None,
            };
        }
        publish(&self.hub, topic, opcode, payload)
    }

    /// Whether the server is still running (no shutdown has begun).
    pub fn is_running(&self) -> bool {
        !self.hub.stopping()
    }
}

/// What a publish from outside the workers did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// The workers it was handed to (0 once the server has stopped).
    pub workers: usize,
    /// Its position in the topic's stream, with history on.
    pub position: Option<crate::broadcast::Position>,
}

fn publish(hub: &Mailboxes, topic: &str, opcode: OpCode, payload: &[u8]) -> Published {
    let topic: Arc<str> = Arc::from(topic);
    let (publication, workers) =
        hub.publish(&topic, opcode, bytes::Bytes::copy_from_slice(payload), None);
    Published {
        workers,
        position: publication.position(),
    }
}

/// Starts a server running the built-in handler of `config.mode`.
///
/// # Errors
///
/// A [`StartError`] saying what could not be set up: nothing is left running.
pub fn spawn(config: Config) -> Result<ServerHandle, StartError> {
    match config.mode {
        Mode::Echo => spawn_with(config, Echo),
        Mode::Broadcast => {
            let rooms = RoomsByPath::with_access(Arc::clone(&config.authorizer));
            spawn_with(config, rooms)
        }
    }
}

/// Starts the workers, each with a clone of `handler`, and returns once every one of them
/// accepts connections.
///
/// # Errors
///
/// A [`StartError`] saying what could not be set up: nothing is left running.
///
/// # Examples
///
/// ```no_run
/// use uringcast::server::{spawn_with, Echo, Server};
///
/// let config = Server::builder().listen("127.0.0.1:0".parse().unwrap()).build().unwrap();
/// let server = spawn_with(config, Echo).unwrap();
/// println!("listening on {}", server.local_addr());
/// server.publish("/news", uringcast::protocol::OpCode::Text, b"hello");
/// server.shutdown();
/// ```
pub fn spawn_with<H: Handler>(config: Config, handler: H) -> Result<ServerHandle, StartError> {
    let features = Features::probe()?;
    info!(
        ?features,
        simd = crate::protocol::mask::simd_level().name(),
        "io_uring probed"
    );
    raise_descriptor_limit();
    let (listeners, local_addr) = bind_listeners(config.listen, config.driver.workers)?;
    let mut signals = if config.handle_signals {
        let reload = config.driver.tls.is_some();
        Some(block_and_open_signals(reload).map_err(StartError::Signals)?)
    } else {
        None
    };
    let mut shared = Shared::new(config.driver.workers).map_err(StartError::Signals)?;
    shared.tls = config.driver.tls.clone();
    let shared = Arc::new(shared);
    // With a broker that keeps streams, the broker gives the positions; else this node does.
    let broker_log = match (&config.broker, config.history) {
        (Some(broker), Some(history)) => {
            crate::broker::BrokerLog::for_broker(broker, history.limits)
        }
        _ => None,
    };
    let log = match (&broker_log, config.history) {
        (Some(log), _) => Some(Arc::clone(log) as Arc<dyn crate::broadcast::Log>),
        (None, Some(history)) => {
            let log = crate::broadcast::history::LocalLog::new(history.limits);
            // Beside a broker's pub/sub, other nodes' publications enter its streams too.
            let log = if config.broker.is_none() {
                log.alone()
            } else {
                log
            };
            Some(Arc::new(log) as Arc<dyn crate::broadcast::Log>)
        }
        (None, None) => None,
    };
    let hub = Arc::new(Mailboxes::with_log(Arc::clone(&shared), log));
    let broker = match &config.broker {
        Some(broker) => Some(crate::broker::start(
            broker,
            &hub,
            usize::try_from(config.driver.max_message_bytes).unwrap_or(usize::MAX),
            broker_log,
        )?),
        None => None,
    };
    if let Some(link) = &broker {
        let bus = crate::broadcast::cluster::ClusterBus::new(Arc::clone(&hub));
        if let Some(sink) = handler.join_cluster(bus) {
            link.set_cluster(sink);
        }
        if let Some(stamp) = handler.stamp() {
            link.set_stamp(stamp);
        }
    }
    let driver_config = Arc::new(config.driver.clone());
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::with_capacity(config.driver.workers);
    for (id, listener) in listeners.into_iter().enumerate() {
        let setup = WorkerSetup {
            id,
            listener,
            config: Arc::clone(&driver_config),
            shared: Arc::clone(&shared),
            features,
            signals: if id == 0 { signals.take() } else { None },
            ready: ready_tx.clone(),
        };
        let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
        let service = Broadcast::new(handler.clone(), Arc::clone(&hub), id, &config);
        let thread = std::thread::Builder::new()
            .name(format!("uringcast-{id}"))
            .spawn(move || {
                // Pin before the ring exists, so its memory and kernel state are local.
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                run_worker(setup, service);
            })
            .map_err(|source| StartError::Worker { id, source })?;
        threads.push(thread);
    }
    drop(ready_tx);
    let mut capacity = 0;
    let mut failure = None;
    for _ in 0..threads.len() {
        match ready_rx.recv() {
            Ok(Ok(slots)) => capacity += slots,
            Ok(Err(source)) => failure = failure.or(Some(StartError::Worker { id: 0, source })),
            Err(_) => break,
        }
    }
    let handle = ServerHandle {
        local_addr,
        capacity,
        shared,
        hub,
        threads,
        tls: config.driver.tls.clone(),
        broker,
    };
    if let Some(error) = failure {
        handle.shutdown();
        return Err(error);
    }
    info!(
        addr = %local_addr,
        workers = config.driver.workers,
        capacity,
        "listening; capacity is workers x file-table slots"
    );
    Ok(handle)
}

/// One `SO_REUSEPORT` listener per worker, all on the same address; when the configured port
/// is 0, the first listener's port is used by the rest.
fn bind_listeners(
    addr: SocketAddr,
    workers: usize,
) -> Result<(Vec<OwnedFd>, SocketAddr), StartError> {
    let mut bound = addr;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers {
        let listen = |addr: SocketAddr| -> io::Result<Socket> {
            let socket = Socket::new(
                Domain::for_address(addr),
                Type::STREAM.cloexec(),
                Some(Protocol::TCP),
            )?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_nodelay(true)?;
            socket.bind(&addr.into())?;
            // The kernel caps this at net.core.somaxconn.
            socket.listen(65535)?;
            Ok(socket)
        };
        let socket = listen(bound).map_err(|source| StartError::Listen {
            addr: bound,
            source,
        })?;
        if listeners.is_empty() {
            bound = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(bound);
        }
        listeners.push(OwnedFd::from(socket));
    }
    Ok((listeners, bound))
}

/// Raises the soft descriptor limit to the hard one: each ring's file table may hold that many.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
            warn!(soft, hard, "could not raise the descriptor limit");
        }
    }
}

/// Blocks SIGINT and SIGTERM (and SIGHUP, with `reload`: re-read the TLS certificate) in
/// this thread (workers inherit the mask) and opens a signalfd for them, which worker 0
/// reads on its ring.
fn block_and_open_signals(reload: bool) -> io::Result<SignalFd> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if reload {
        set.add(Signal::SIGHUP);
    }
    set.thread_block().map_err(io::Error::from)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(io::Error::from)
}
