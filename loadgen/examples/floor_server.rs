//! A WebSocket "server" that is as cheap as a sender can be, to measure the load generator's
//! own ceiling: it accepts N connections with a minimal handshake, then writes the same
//! pre-encoded binary frame to every socket with plain blocking `write()`s, round after round,
//! at a target rate (or as fast as the sockets take them). It never reads after the handshake.
//!
//! Each round's payload is what `uringcast-load broadcast --publishers 0` checks: publisher id
//! 0, the round number as sequence number, the round's scheduled time (`CLOCK_MONOTONIC` ns),
//! then the `a..z` filler from offset `seq % 26` (see `src/scenario/stamp.rs`). With
//! `--batch B` each write carries B consecutive rounds, so each receive sees B frames.
//!
//! With `--io-uring` each round is one `IORING_OP_SEND` per socket instead of one `write()`:
//! the sockets registered as fixed files, the whole round pushed into a
//! `SINGLE_ISSUER | DEFER_TASKRUN` ring with as few `io_uring_enter` calls as its 4,096-entry
//! queue allows, every completion reaped before the next round. It is the bare io_uring send
//! loop a server could at best be: no protocol, no queues, no per-connection state.
//!
//! ```text
//! cargo run --release -p uringcast-loadgen --example floor_server -- \
//!     --listen 127.0.0.1:9200 --connections 10000 --rate 1000000 --size 64
//! uringcast-load broadcast ws://127.0.0.1:9200/ --subscribers 10000 --publishers 0 \
//!     --duration 5 --drain-timeout 0 --close-timeout 0.5
//! ```
//!
//! It stops when every connection is gone (the load generator closes them at its end) or after
//! `--max-seconds`, and prints what it wrote. Loopback addresses only.

// The io_uring mode pushes SQEs that point at this process's memory.
#![allow(unsafe_code)]

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};
use uringcast::driver::ring;

#[path = "floor/handshake.rs"]
mod handshake;
use handshake::handshake;

const STAMP_BYTES: usize = 24;
const ALPHABET: u64 = 26;
const USAGE: &str =
    "floor_server [--listen 127.0.0.1:9200] [--connections N] [--rate ROUNDS_PER_S] \
                     [--size BYTES] [--batch FRAMES] [--start-delay S] [--max-seconds S] [--io-uring]";
/// Submission queue entries of the `--io-uring` ring: a round of 10,000 sends is three enters.
const SQ_ENTRIES: u32 = 4096;

struct Options {
    listen: SocketAddr,
    connections: usize,
    rate: f64,
    size: usize,
    batch: u64,
    start_delay: Duration,
    max: Duration,
    io_uring: bool,
}

fn main() {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("floor_server: {message}\nusage: {USAGE}");
            std::process::exit(2);
        }
    };
    // The time limit holds even while `accept` waits for connections that never come (a load
    // generator that gave up): the process ends a few seconds past it, whatever it is doing.
    let limit = options.max + std::time::Duration::from_secs(5);
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("floor_server: --max-seconds passed; exiting");
        std::process::exit(1);
    });
    if let Err(error) = run(&options) {
        eprintln!("floor_server: {error}");
        std::process::exit(1);
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        listen: "127.0.0.1:9200".parse().expect("a valid address"),
        connections: 1000,
        rate: 1000.0,
        size: 64,
        batch: 1,
        start_delay: Duration::from_secs(1),
        max: Duration::from_secs(60),
        io_uring: false,
    };
    while let Some(flag) = args.next() {
        if flag == "--io-uring" {
            o.io_uring = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |_| format!("{flag} {value}: not a valid value");
        match flag.as_str() {
            "--listen" => o.listen = value.parse().map_err(|_| bad(()))?,
            "--connections" => o.connections = value.parse().map_err(|_| bad(()))?,
            "--rate" => o.rate = value.parse().map_err(|_| bad(()))?,
            "--size" => o.size = value.parse().map_err(|_| bad(()))?,
            "--batch" => o.batch = value.parse().map_err(|_| bad(()))?,
            "--start-delay" => {
                o.start_delay = Duration::from_secs_f64(value.parse().map_err(|_| bad(()))?)
            }
            "--max-seconds" => o.max = Duration::from_secs_f64(value.parse().map_err(|_| bad(()))?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if !o.listen.ip().is_loopback() {
        return Err(format!("{} is not a loopback address", o.listen));
    }
    if o.size < STAMP_BYTES || o.size > 65_535 || o.connections == 0 || o.batch == 0 {
        return Err("--size must be 24..=65535, --connections and --batch at least 1".into());
    }
    if !o.rate.is_finite() || o.rate <= 0.0 || o.max > Duration::from_secs(3600) {
        return Err("--rate must be positive, --max-seconds at most 3600".into());
    }
    Ok(o)
}

fn run(o: &Options) -> io::Result<()> {
    let listener = TcpListener::bind(o.listen)?;
    println!("listening on {}", listener.local_addr()?);
    let deadline = Instant::now() + o.max;
    let mut sockets = Vec::with_capacity(o.connections);
    while sockets.len() < o.connections {
        let (stream, _) = listener.accept()?;
        if let Some(stream) = handshake(stream)? {
            sockets.push(Some(stream));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other("not every connection arrived in time"));
        }
    }
    eprintln!("floor_server: {} connections; sending", sockets.len());
    let mut ring = if o.io_uring {
        Some(UringSender::new(&sockets)?)
    } else {
        None
    };
    let mut lost = Vec::new();
    std::thread::sleep(o.start_delay);
    let cpu_before = own_cpu_ticks();
    let start_ns = now_ns();
    let start = Instant::now();
    let interval_ns = 1e9 / o.rate;
    let mut round = 0u64;
    let mut written = 0u64;
    let mut buffer = Vec::new();
    let mut open = sockets.len();
    while open > 0 && Instant::now() < deadline {
        let due = start_ns + (round as f64 * interval_ns) as u64;
        let now = now_ns();
        if due > now {
            std::thread::sleep(Duration::from_nanos(due - now));
        }
        buffer.clear();
        for k in 0..o.batch {
            let seq = round + k;
            encode(
                seq,
                start_ns + (seq as f64 * interval_ns) as u64,
                o.size,
                &mut buffer,
            );
        }
        if let Some(ring) = &mut ring {
            lost.clear();
            written += ring.round(&buffer, &mut lost) * o.batch;
            for &index in &lost {
                ring.forget(index);
                sockets[index] = None;
                open -= 1;
            }
        } else {
            for slot in &mut sockets {
                let Some(stream) = slot else { continue };
                if stream.write_all(&buffer).is_err() {
                    *slot = None;
                    open -= 1;
                } else {
                    written += o.batch;
                }
            }
        }
        round += o.batch;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = own_cpu_ticks().saturating_sub(cpu_before) as f64 / 100.0;
    println!(
        "floor_server: {round} rounds, {written} frames written in {elapsed:.2} s: {:.0} \
         frames/s; cpu {cpu:.2} s ({:.2} µs per frame)",
        written as f64 / elapsed,
        cpu * 1e6 / written.max(1) as f64
    );
    Ok(())
}

/// One `IORING_OP_SEND` per live socket per round, through fixed files.
struct UringSender {
    ring: io_uring::IoUring,
    /// Whether each registered socket still takes frames.
    live: Vec<bool>,
}

impl UringSender {
    fn new(sockets: &[Option<TcpStream>]) -> io::Result<Self> {
        let (ring, _) = ring::build(SQ_ENTRIES, SQ_ENTRIES * 4, true)?;
        let fds: Vec<i32> = sockets
            .iter()
            .map(|s| s.as_ref().map_or(-1, AsRawFd::as_raw_fd))
            .collect();
        ring.submitter().register_files(&fds)?;
        Ok(Self {
            ring,
            live: fds.iter().map(|fd| *fd >= 0).collect(),
        })
    }

    /// Sends `frame` whole to every live socket, as `write_all` does (`MSG_WAITALL`: a short
    /// send is finished by the kernel when the socket has room). Returns the sends that wrote
    /// it; the sockets that failed are appended to `lost` and take no more frames.
    ///
    /// It returns only once every send it pushed has completed: a ring that fails mid-round
    /// could still read `frame`, so the process exits instead of returning.
    fn round(&mut self, frame: &[u8], lost: &mut Vec<usize>) -> u64 {
        use io_uring::{opcode, types::Fixed};
        let (mut pending, mut sent) = (0usize, 0u64);
        let mut next = 0;
        while next < self.live.len() || pending > 0 {
            while next < self.live.len() {
                if !self.live[next] {
                    next += 1;
                    continue;
                }
                let entry =
                    opcode::Send::new(Fixed(next as u32), frame.as_ptr(), frame.len() as u32)
                        .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
                        .build()
                        .user_data(next as u64);
                // SAFETY: `frame` is read until this send completes, and this call returns only then.
                if unsafe { self.ring.submission().push(&entry) }.is_err() {
                    break;
                }
                pending += 1;
                next += 1;
            }
            if let Err(error) = ring::submit_and_wait(&self.ring, None) {
                eprintln!("floor_server: io_uring failed with {pending} sends in flight: {error}");
                std::process::exit(1);
            }
            for cqe in self.ring.completion() {
                pending -= 1;
                if cqe.result() == frame.len() as i32 {
                    sent += 1;
                } else {
                    let index = cqe.user_data() as usize;
                    self.live[index] = false;
                    lost.push(index);
                }
            }
        }
        sent
    }

    /// Takes a lost socket out of the file table, so that dropping its stream closes it.
    fn forget(&mut self, index: usize) {
        // Failure leaves the table's reference: the socket then closes when the ring does.
        let _ = self
            .ring
            .submitter()
            .register_files_update(index as u32, &[-1]);
    }
}

/// Appends one unmasked binary frame: publisher 0, `seq`, `sent_ns`, then the filler.
fn encode(seq: u64, sent_ns: u64, size: usize, out: &mut Vec<u8>) {
    out.push(0x82);
    if size < 126 {
        out.push(size as u8);
    } else {
        out.push(126);
        out.extend_from_slice(&(size as u16).to_be_bytes());
    }
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&sent_ns.to_le_bytes());
    let offset = seq % ALPHABET;
    out.extend((0..(size - STAMP_BYTES) as u64).map(|i| b'a' + ((offset + i) % ALPHABET) as u8));
}

fn now_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

fn own_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let mut fields = after.split_whitespace().skip(11);
    let mut next = || {
        fields
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    next() + next()
}
