//! A plain epoll broadcast subscriber, the reference `uringcast-load broadcast` is compared with:
//! one thread, N connections, level-triggered epoll, one `read()` per ready connection. Frames
//! are parsed by hand and each delivery is checked the cheap way (its sequence number follows
//! the previous one on that connection); there is no latency histogram, so it does less per
//! delivery than the load generator, not more.
//!
//! Made for `loadgen/examples/floor_server.rs`, whose frames carry publisher 0, a sequence
//! number and a send time. Measures for `--secs` after the first frame, then prints one line of
//! `key=value` pairs with its own CPU time per delivery (utime+stime from /proc/self/stat).
//!
//! `epoll-subscriber --connect 127.0.0.1:PORT --connections 10000 --secs 5`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use uringcast::protocol::handshake::ClientHandshake;

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    len: usize,
    next_seq: Option<u64>,
}

fn main() {
    let mut connect: Option<SocketAddr> = None;
    let (mut connections, mut secs) = (1000usize, 5.0f64);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| die(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--connect" => connect = value.parse().ok(),
            "--connections" => connections = value.parse().unwrap_or_else(|_| die("--connections")),
            "--secs" => secs = value.parse().unwrap_or_else(|_| die("--secs")),
            _ => die(&format!("unknown flag {flag}")),
        }
    }
    let addr = connect.unwrap_or_else(|| die("--connect ADDR is required"));
    if !addr.ip().is_loopback() {
        die("loopback addresses only");
    }
    raise_nofile();
    let epoll = unsafe_epoll_create();
    let mut conns = Vec::with_capacity(connections);
    for i in 0..connections {
        let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| die(&format!("connect: {e}")));
        let (mut handshake, request) = ClientHandshake::new("localhost", "/", rand_key(i), &[]);
        stream
            .write_all(&request)
            .unwrap_or_else(|e| die(&format!("request: {e}")));
        let mut buf = vec![0u8; 64 * 1024];
        // The handshake reader takes each byte once: it is fed only what it has not seen.
        let (mut len, mut fed) = (0, 0);
        let used = loop {
            let n = stream.read(&mut buf[len..]).unwrap_or(0);
            if n == 0 {
                die("the server closed during the handshake");
            }
            len += n;
            match handshake.feed(&buf[fed..len]) {
                Ok((used, Some(_))) => break fed + used,
                Ok((used, None)) => fed += used,
                Err(e) => die(&format!(
                    "connection {i}: handshake: {e}: {:?}",
                    String::from_utf8_lossy(&buf[..len])
                )),
            }
        };
        buf.copy_within(used..len, 0);
        len -= used;
        stream.set_nonblocking(true).expect("non-blocking");
        epoll_add(epoll, stream.as_raw_fd(), i as u64);
        conns.push(Conn {
            stream,
            buf,
            len,
            next_seq: None,
        });
    }
    eprintln!("epoll-subscriber: {connections} connections; receiving");

    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let (mut deliveries, mut bad) = (0u64, 0u64);
    let mut started: Option<(Instant, u64)> = None;
    loop {
        if let Some((at, _)) = started {
            if at.elapsed() >= Duration::from_secs_f64(secs) {
                break;
            }
        }
        // SAFETY: `events` has room for its length; epoll writes at most that many entries.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 100) };
        for event in events.iter().take(n.max(0) as usize) {
            let conn = &mut conns[event.u64 as usize];
            let got = match conn.stream.read(&mut conn.buf[conn.len..]) {
                Ok(0) => die("a connection closed"),
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => die(&format!("read: {e}")),
            };
            conn.len += got;
            let (frames, wrong, used) = parse(&conn.buf[..conn.len], &mut conn.next_seq);
            conn.buf.copy_within(used..conn.len, 0);
            conn.len -= used;
            deliveries += frames;
            bad += wrong;
            if started.is_none() && deliveries > 0 {
                started = Some((Instant::now(), cpu_ticks()));
                deliveries = 0;
            }
        }
    }
    let (at, cpu_before) = started.expect("frames arrived");
    let elapsed = at.elapsed().as_secs_f64();
    let cpu_s = cpu_ticks().saturating_sub(cpu_before) as f64 / 100.0;
    println!(
        "deliveries={deliveries} secs={elapsed:.2} per_s={:.0} cpu_s={cpu_s:.2} \
         cpu_per_delivery_us={:.2} out_of_sequence={bad}",
        deliveries as f64 / elapsed,
        cpu_s * 1e6 / deliveries.max(1) as f64
    );
    if bad > 0 {
        std::process::exit(1);
    }
}

/// Counts the whole unmasked frames at the front of `input` and checks each one's sequence
/// number (bytes 8..16 of its payload) follows the last; returns (frames, wrong, bytes used).
fn parse(input: &[u8], next_seq: &mut Option<u64>) -> (u64, u64, usize) {
    let (mut pos, mut frames, mut wrong) = (0, 0, 0);
    while let Some(&[_, b1]) = input.get(pos..pos + 2) {
        let (header, len) = match b1 & 0x7f {
            126 => match input.get(pos + 2..pos + 4) {
                Some(l) => (4, usize::from(u16::from_be_bytes([l[0], l[1]]))),
                None => break,
            },
            127 => die("frames over 64 KiB are not expected"),
            len => (2, usize::from(len)),
        };
        let Some(payload) = input.get(pos + header..pos + header + len) else {
            break;
        };
        let seq = payload
            .get(8..16)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")));
        match (seq, *next_seq) {
            (Some(seq), Some(expected)) if seq != expected => wrong += 1,
            (None, _) => wrong += 1,
            _ => {}
        }
        *next_seq = seq.map(|s| s + 1);
        frames += 1;
        pos += header + len;
    }
    (frames, wrong, pos)
}

fn rand_key(i: usize) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&(i as u64 ^ 0x9E37_79B9_7F4A_7C15).to_le_bytes());
    key
}

fn unsafe_epoll_create() -> i32 {
    // SAFETY: epoll_create1 takes a flag and returns a new descriptor or -1.
    let fd = unsafe { libc::epoll_create1(0) };
    if fd < 0 {
        die("epoll_create1 failed");
    }
    fd
}

fn epoll_add(epoll: i32, fd: i32, token: u64) {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: both descriptors are open and `event` lives across the call.
    if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) } != 0 {
        die("epoll_ctl failed");
    }
}

fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the one struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn cpu_ticks() -> u64 {
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

fn die(message: &str) -> ! {
    eprintln!("epoll-subscriber: {message}");
    std::process::exit(2);
}
