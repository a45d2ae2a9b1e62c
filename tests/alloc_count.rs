//! Steady-state fan-out allocates nothing per subscriber (STYLE §5): the heap allocations
//! made while one publish reaches every subscriber must not grow with the number of
//! subscribers.
//!
//! A counting global allocator wraps the system one and counts, while a flag is set, every
//! allocation in the process (the server runs in-process, so its worker is counted too).
//! The test measures one publish to 1,000 subscribers and one to 10,000, each after warm-up
//! publishes, and requires the second count to stay within a small constant of the first.
//!
//! Everything is one `#[test]`, so no other test's allocations land in the counts.
//!
//! Diagnosis: `ALLOC_COUNT_BACKTRACES=N cargo test --test alloc_count -- --nocapture` prints
//! the backtraces of the first N allocations made off the test thread during the measured
//! publish to 10,000 subscribers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use uringcast::broadcast::{Connection, Handler, Message};
use uringcast::protocol::handshake::Request;
use uringcast::protocol::OpCode;
use uringcast::server::{spawn_with, Server, ServerHandle};

/// Slack for allocations that do not depend on the subscriber count but may differ between
/// two runs (a buffer that happens to grow once more, a wake that happens to be split).
const SLACK: u64 = 16;
/// Publishes measured per subscriber count; the smallest count is compared, so a one-off
/// allocation that lands in one of them does not decide the result.
const MEASURED_PUBLISHES: usize = 3;
const TOPIC: &str = "ticks";
const PAYLOAD: &[u8] = b"{\"price\":101.25}";
const READ_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn fan_out_allocations_do_not_grow_with_subscribers() -> Result<()> {
    raise_descriptor_limit()?;
    let backtraces: usize = std::env::var("ALLOC_COUNT_BACKTRACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    IS_TEST_THREAD.with(|flag| flag.set(true));

    let small = measure(1_000, 0)?;
    let large = measure(10_000, backtraces)?;
    eprintln!(
        "allocations per publish: {:?} with 1,000 subscribers ({:?} off the publishing \
         thread), {:?} with 10,000 ({:?}); sizes with 10,000: {:?}",
        small.counts, small.worker_counts, large.counts, large.worker_counts, large.sizes
    );
    let (small_min, large_min) = (small.min(), large.min());
    if large_min > small_min + SLACK {
        eprintln!(
            "sizes of the allocations made during the smallest publish to 10,000 subscribers \
             (size: count): {:?}",
            large.sizes
        );
        for (i, (size, trace)) in traces().iter().enumerate() {
            eprintln!("--- allocation {i} of {size} bytes ---\n{trace}");
        }
    }
    ensure!(
        large_min <= small_min + SLACK,
        "one publish allocates {large_min} times with 10,000 subscribers but {small_min} times \
         with 1,000: fan-out allocates per subscriber (sizes: {:?}; rerun with \
         ALLOC_COUNT_BACKTRACES=8 -- --nocapture for where)",
        large.sizes
    );
    Ok(())
}

/// Every connection subscribes to [`TOPIC`] when it opens.
#[derive(Clone)]
struct Subscribe;

impl Handler for Subscribe {
    type Data = ();

    fn on_open(&mut self, conn: &mut Connection<'_, ()>, _request: &Request) {
        conn.subscribe(TOPIC)
            .expect("a short topic is within every limit");
    }

    fn on_message(&mut self, _conn: &mut Connection<'_, ()>, _message: Message<'_>) {}
}

struct Measurement {
    /// Allocations per measured publish, in the whole process.
    counts: Vec<u64>,
    /// Of those, the ones off the test thread (the test thread encodes the frame).
    worker_counts: Vec<u64>,
    /// (size, allocations) during the publish with the smallest count.
    sizes: Vec<(usize, u64)>,
}

impl Measurement {
    fn min(&self) -> u64 {
        self.counts.iter().copied().min().unwrap_or(u64::MAX)
    }
}

/// Starts a one-worker server, connects `subscribers` clients, warms up, and counts the
/// allocations of [`MEASURED_PUBLISHES`] publishes, each until every client has read it.
fn measure(subscribers: usize, backtraces: usize) -> Result<Measurement> {
    let config = Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .workers(1)
        .ping_interval(None)
        // No handshake deadline comes due during the test: a timer firing mid-measurement
        // could grow the worker's list of due entries.
        .handshake_timeout(Duration::from_secs(3600))
        .drain_timeout(Duration::from_millis(200))
        .build()?;
    let server = spawn_with(config, Subscribe)?;
    let result = connect_and_measure(&server, subscribers, backtraces);
    server.shutdown();
    result
}

fn connect_and_measure(
    server: &ServerHandle,
    subscribers: usize,
    backtraces: usize,
) -> Result<Measurement> {
    let addr = server.local_addr();
    // The counter must see the server's worker, or a pass would mean nothing: accepting
    // and upgrading connections allocates there.
    reset_counters(0);
    COUNTING.store(true, Ordering::SeqCst);
    let probe = connect(addr, 3);
    COUNTING.store(false, Ordering::SeqCst);
    drop(probe?);
    let seen = WORKER_ALLOCATIONS.load(Ordering::SeqCst);
    ensure!(
        seen > 0,
        "no allocation counted off the test thread while 3 clients connected: the counting \
         allocator does not see the server's worker"
    );
    let clients = connect(addr, subscribers)?;
    let subscribed = server.broadcast_stats()[0].topic_count(TOPIC);
    ensure!(
        subscribed == subscribers as u64,
        "{subscribed} of {subscribers} clients subscribed"
    );
    let mut clients = clients;
    let frame = expected_frame();
    let mut buf = vec![0u8; frame.len()];
    // Warm-up: the first publishes size the worker's reusable lists (dirty connections,
    // completions, send vectors) for this many subscribers.
    for _ in 0..2 {
        publish_and_read(server, &mut clients, &frame, &mut buf)?;
    }
    let mut counts = Vec::new();
    let mut worker_counts = Vec::new();
    let mut sizes = Vec::new();
    for round in 0..MEASURED_PUBLISHES {
        reset_counters(if round == 0 { backtraces } else { 0 });
        COUNTING.store(true, Ordering::SeqCst);
        let outcome = publish_and_read(server, &mut clients, &frame, &mut buf);
        COUNTING.store(false, Ordering::SeqCst);
        outcome?;
        let count = ALLOCATIONS.load(Ordering::SeqCst);
        if counts.iter().all(|&c| count < c) {
            sizes = size_table();
        }
        counts.push(count);
        worker_counts.push(WORKER_ALLOCATIONS.load(Ordering::SeqCst));
    }
    // Close the clients first, so the server's shutdown has no one to wait for.
    drop(clients);
    Ok(Measurement {
        counts,
        worker_counts,
        sizes,
    })
}

/// Publishes one message and reads it from every client; allocation-free on this thread.
fn publish_and_read(
    server: &ServerHandle,
    clients: &mut [TcpStream],
    frame: &[u8],
    buf: &mut [u8],
) -> Result<()> {
    let workers = server.publish(TOPIC, OpCode::Text, PAYLOAD).workers;
    ensure!(
        workers == 1,
        "the publish reached {workers} workers, expected 1"
    );
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .read_exact(buf)
            .with_context(|| format!("client {i} reading the published frame"))?;
        ensure!(buf == frame, "client {i} read {buf:?}, expected {frame:?}");
    }
    Ok(())
}

/// The frame every subscriber must read: text, FIN, unmasked, a one-byte length.
fn expected_frame() -> Vec<u8> {
    let mut frame = vec![0x81, PAYLOAD.len() as u8];
    frame.extend_from_slice(PAYLOAD);
    frame
}

/// Opens `count` WebSocket connections with blocking sockets, in batches so the listen
/// backlog never overflows.
fn connect(addr: SocketAddr, count: usize) -> Result<Vec<TcpStream>> {
    let request = format!(
        "GET /{TOPIC} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut clients: Vec<TcpStream> = Vec::with_capacity(count);
    while clients.len() < count {
        let batch = (count - clients.len()).min(500);
        let start = clients.len();
        for _ in 0..batch {
            let stream = TcpStream::connect(addr)
                .with_context(|| format!("connection {} of {count}", clients.len()))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(READ_TIMEOUT))?;
            stream.set_write_timeout(Some(READ_TIMEOUT))?;
            clients.push(stream);
        }
        for client in &mut clients[start..] {
            client.write_all(request.as_bytes())?;
        }
        for (i, client) in clients[start..].iter_mut().enumerate() {
            let head = read_head(client).with_context(|| format!("upgrade {}", start + i))?;
            ensure!(
                head.starts_with(b"HTTP/1.1 101 "),
                "connection {}: {:?}",
                start + i,
                String::from_utf8_lossy(&head)
            );
        }
    }
    Ok(clients)
}

/// Reads a response head byte by byte, so nothing after it is consumed.
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte)?;
        head.push(byte[0]);
        ensure!(head.len() <= 4096, "response head too long");
    }
    Ok(head)
}

fn raise_descriptor_limit() -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one `rlimit` through a pointer to a live, writable one.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    ensure!(rc == 0, "getrlimit: {}", std::io::Error::last_os_error());
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit(2) reads one `rlimit` through a pointer to a live one.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    ensure!(rc == 0, "setrlimit: {}", std::io::Error::last_os_error());
    ensure!(
        limit.rlim_cur >= 10_500,
        "RLIMIT_NOFILE hard limit {} is too low for 10,000 client sockets",
        limit.rlim_max
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The counting allocator
// ---------------------------------------------------------------------------------------------

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Counts allocations (and reallocations, which may move) while [`COUNTING`] is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Of those, the ones made off the test thread (by the server's worker).
static WORKER_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Distinct allocation sizes seen while counting: key is size + 1 (0 = free slot).
const SIZE_SLOTS: usize = 64;
static SIZE_KEYS: [AtomicUsize; SIZE_SLOTS] = [const { AtomicUsize::new(0) }; SIZE_SLOTS];
static SIZE_COUNTS: [AtomicU64; SIZE_SLOTS] = [const { AtomicU64::new(0) }; SIZE_SLOTS];

/// Backtraces still to capture, and those captured with their allocation's size.
static BACKTRACES_LEFT: AtomicUsize = AtomicUsize::new(0);
static TRACES: Mutex<Vec<(usize, Backtrace)>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while this thread captures a backtrace: its own allocations are not counted.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    /// The test thread's own allocations are counted but not traced.
    static IS_TEST_THREAD: Cell<bool> = const { Cell::new(false) };
}

// The bookkeeping around the calls touches only atomics, thread-locals with const
// initialisers, and (while re-entry is excluded by `IN_HOOK`) a mutex-guarded vector.
// SAFETY: every method forwards to `System` unchanged, so `GlobalAlloc`'s contract holds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded from this method's contract (non-zero size layout).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded from this method's contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: forwarded contract: `ptr` came from this allocator (so `System`) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from this method's contract: `ptr` came from `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn record(size: usize) {
    if !COUNTING.load(Ordering::Relaxed) || IN_HOOK.with(Cell::get) {
        return;
    }
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    let key = size + 1;
    for slot in 0..SIZE_SLOTS {
        let current =
            match SIZE_KEYS[slot].compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => key,
                Err(existing) => existing,
            };
        if current == key {
            SIZE_COUNTS[slot].fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    if IS_TEST_THREAD.with(Cell::get) {
        return;
    }
    WORKER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    let claimed = BACKTRACES_LEFT
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok();
    if claimed {
        IN_HOOK.with(|h| h.set(true));
        let trace = Backtrace::force_capture();
        if let Ok(mut traces) = TRACES.lock() {
            traces.push((size, trace));
        }
        IN_HOOK.with(|h| h.set(false));
    }
}

fn reset_counters(backtraces: usize) {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    WORKER_ALLOCATIONS.store(0, Ordering::SeqCst);
    for slot in 0..SIZE_SLOTS {
        SIZE_KEYS[slot].store(0, Ordering::SeqCst);
        SIZE_COUNTS[slot].store(0, Ordering::SeqCst);
    }
    BACKTRACES_LEFT.store(backtraces, Ordering::SeqCst);
}

fn size_table() -> Vec<(usize, u64)> {
    let mut table: Vec<(usize, u64)> = (0..SIZE_SLOTS)
        .filter_map(|slot| {
            let key = SIZE_KEYS[slot].load(Ordering::SeqCst);
            (key != 0).then(|| (key - 1, SIZE_COUNTS[slot].load(Ordering::SeqCst)))
        })
        .collect();
    table.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
    table
}

fn traces() -> Vec<(usize, String)> {
    TRACES
        .lock()
        .map(|traces| {
            traces
                .iter()
                .map(|(size, trace)| (*size, trace.to_string()))
                .collect()
        })
        .unwrap_or_default()
}
