//! A light closed-loop WebSocket echo client: one epoll thread, level-triggered, N connections
//! each with exactly one message in flight. Frames are built with uringcast's `encode_frame`
//! (masked, as a client must) and the upgrade with its `ClientHandshake`; the server's frames are
//! parsed by hand and every echo is checked byte for byte against what was sent.
//!
//! After `--warmup-secs` it measures for `--secs` (or until `--messages` echoes, whichever comes
//! first). With `--server-pid` it reads the server's CPU time (utime+stime from /proc/PID/stat,
//! and the sum of /proc/PID/task/*/schedstat run time) at both ends of the measured interval.
//! At the end it lets the in-flight echoes arrive, sends a close frame (1000) on every
//! connection and waits for the server's close.
//!
//! Prints one line of `key=value` pairs on stdout; exits 1 if any echo was wrong or lost.
//!
//! `echo-client --connect 127.0.0.1:PORT --connections 100 --size 32 --warmup-secs 2 --secs 10
//!  --server-pid PID`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use uringcast::protocol::frame::encode_frame;
use uringcast::protocol::handshake::ClientHandshake;
use uringcast::protocol::OpCode;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[derive(PartialEq)]
enum State {
    /// A message is in flight; waiting for its echo.
    Waiting,
    /// No message in flight (draining at the end).
    Idle,
    /// Close sent; waiting for the server's close frame.
    Closing,
    /// Done: close received, or the connection failed.
    Done,
}

struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    rlen: usize,
    expected: Vec<u8>,
    /// Unsent tail of the last frame (a partial write), if any.
    pending: Option<(bytes::Bytes, usize)>,
    state: State,
    sent_at: Instant,
}

#[derive(Default)]
struct Stats {
    echoes: u64,
    errors: u64,
    lost: u64,
    closes_ok: u64,
    max_rtt: Duration,
}

fn stat_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm field, index 0 is field 3 (state): utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn sched_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(path) {
            total += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

fn self_cpu() -> Duration {
    // SAFETY: rusage is a plain C struct for which all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own, which outlives the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn handshake(addr: SocketAddr, rng: &mut Rng) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut key = [0u8; 16];
    rng.fill(&mut key);
    let (mut hs, request) = ClientHandshake::new(&addr.to_string(), "/", key, &[]);
    stream.write_all(&request)?;
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("eof during handshake"));
        }
        let (used, response) = hs.feed(&buf[..n]).map_err(std::io::Error::other)?;
        if response.is_some() {
            return Ok((stream, buf[used..n].to_vec()));
        }
    }
}

fn epoll_ctl(ep: i32, op: i32, fd: i32, events: u32, token: u64) {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: ev is a valid epoll_event for the duration of the call.
    let rc = unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) };
    assert!(rc == 0, "epoll_ctl: {}", std::io::Error::last_os_error());
}

/// Writes `frame` (or its unsent tail) on `c`; on a partial write keeps the rest and asks for
/// EPOLLOUT. Returns false if the connection failed.
fn write_frame(ep: i32, token: u64, c: &mut Conn, frame: bytes::Bytes, mut off: usize) -> bool {
    while off < frame.len() {
        match c.stream.write(&frame[off..]) {
            Ok(0) => return false,
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if c.pending.is_none() {
                    let fd = c.stream.as_raw_fd();
                    let ev = (libc::EPOLLIN | libc::EPOLLOUT) as u32;
                    epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, ev, token);
                }
                c.pending = Some((frame, off));
                return true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    if c.pending.take().is_some() {
        let fd = c.stream.as_raw_fd();
        epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32, token);
    }
    true
}

fn send_message(ep: i32, token: u64, c: &mut Conn, rng: &mut Rng) -> bool {
    rng.fill(&mut c.expected);
    let mask = (rng.next() as u32).to_ne_bytes();
    let frame = encode_frame(OpCode::Binary, true, &c.expected, Some(mask));
    c.state = State::Waiting;
    c.sent_at = Instant::now();
    write_frame(ep, token, c, frame, 0)
}

fn fail(c: &mut Conn, stats: &mut Stats, i: usize, why: &str) {
    eprintln!("echo-client: connection {i}: {why}");
    if c.state == State::Waiting {
        stats.lost += 1;
    }
    stats.errors += 1;
    c.state = State::Done;
}

fn main() {
    let args = uringcast_peers::args(&[
        "connect",
        "connections",
        "size",
        "warmup-secs",
        "secs",
        "messages",
        "server-pid",
        "seed",
    ]);
    let Some(addr) = args
        .get("connect")
        .map(|a| a.parse::<SocketAddr>().expect("--connect"))
    else {
        eprintln!("--connect ADDR is required");
        std::process::exit(2);
    };
    assert!(addr.ip().is_loopback(), "only loopback targets are allowed");
    let n: usize = uringcast_peers::arg(&args, "connections", 100);
    let size: usize = uringcast_peers::arg(&args, "size", 32);
    let warmup = Duration::from_secs_f64(uringcast_peers::arg(&args, "warmup-secs", 2.0));
    let secs = Duration::from_secs_f64(uringcast_peers::arg(&args, "secs", 10.0));
    let max_messages: u64 = uringcast_peers::arg(&args, "messages", u64::MAX);
    let server_pid: u32 = uringcast_peers::arg(&args, "server-pid", 0);
    let mut rng = Rng(uringcast_peers::arg(&args, "seed", 0x9E37_79B9_7F4A_7C15u64) | 1);

    // SAFETY: plain syscall.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(
        ep >= 0,
        "epoll_create1: {}",
        std::io::Error::last_os_error()
    );

    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let (stream, rest) = handshake(addr, &mut rng).unwrap_or_else(|e| {
            eprintln!("echo-client: connection {i}: handshake: {e}");
            std::process::exit(1);
        });
        stream.set_nonblocking(true).expect("nonblocking");
        let mut rbuf = vec![0u8; (64 * 1024).max(size + 14)];
        rbuf[..rest.len()].copy_from_slice(&rest);
        epoll_ctl(
            ep,
            libc::EPOLL_CTL_ADD,
            stream.as_raw_fd(),
            libc::EPOLLIN as u32,
            i as u64,
        );
        conns.push(Conn {
            stream,
            rbuf,
            rlen: rest.len(),
            expected: vec![0u8; size],
            pending: None,
            state: State::Idle,
            sent_at: Instant::now(),
        });
    }

    let mut stats = Stats::default();
    let start = Instant::now();
    for (i, c) in conns.iter_mut().enumerate() {
        if !send_message(ep, i as u64, c, &mut rng) {
            fail(c, &mut stats, i, "write failed");
        }
    }

    // Phases: warmup -> measure -> drain (no new messages) -> closing -> done.
    let mut measuring = false;
    let mut sending = true;
    let mut closing = false;
    let mut m_start = start;
    let mut m_end = start;
    let mut m_echoes_start = 0;
    let mut m_echoes_end = 0;
    let (mut ticks0, mut ticks1, mut sched0, mut sched1) = (None, None, None, None);
    let (mut cpu0, mut cpu1) = (Duration::ZERO, Duration::ZERO);
    let mut close_deadline = None;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];

    loop {
        let now = Instant::now();
        if !measuring && sending && now >= start + warmup {
            measuring = true;
            ticks0 = stat_ticks(server_pid);
            sched0 = sched_ns(server_pid);
            cpu0 = self_cpu();
            m_start = Instant::now();
            m_echoes_start = stats.echoes;
        }
        if measuring
            && sending
            && (now >= m_start + secs || stats.echoes - m_echoes_start >= max_messages)
        {
            ticks1 = stat_ticks(server_pid);
            sched1 = sched_ns(server_pid);
            m_end = Instant::now();
            cpu1 = self_cpu();
            m_echoes_end = stats.echoes;
            sending = false;
        }
        if !sending && !closing && conns.iter().all(|c| c.state != State::Waiting) {
            closing = true;
            close_deadline = Some(Instant::now() + Duration::from_secs(3));
            let payload = 1000u16.to_be_bytes();
            for (i, c) in conns.iter_mut().enumerate() {
                if c.state == State::Idle {
                    let mask = (rng.next() as u32).to_ne_bytes();
                    let frame = encode_frame(OpCode::Close, true, &payload, Some(mask));
                    c.state = State::Closing;
                    if !write_frame(ep, i as u64, c, frame, 0) {
                        fail(c, &mut stats, i, "write of close failed");
                    }
                }
            }
        }
        if closing && conns.iter().all(|c| c.state == State::Done) {
            break;
        }
        if close_deadline.is_some_and(|d| now >= d) {
            for (i, c) in conns.iter_mut().enumerate() {
                if c.state == State::Closing {
                    fail(
                        c,
                        &mut stats,
                        i,
                        "no close frame from the server within 3 s",
                    );
                }
            }
            break;
        }
        if now >= start + warmup + secs + Duration::from_secs(30) {
            for (i, c) in conns.iter_mut().enumerate() {
                if c.state == State::Waiting {
                    let rtt = now - c.sent_at;
                    fail(
                        c,
                        &mut stats,
                        i,
                        &format!("echo not received after {rtt:?}"),
                    );
                }
            }
            break;
        }

        // SAFETY: events is a valid buffer of events.len() entries.
        let ready = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("epoll_wait: {e}");
        }
        for ev in &events[..ready as usize] {
            let i = ev.u64 as usize;
            let flags = ev.events;
            let c = &mut conns[i];
            if c.state == State::Done {
                continue;
            }
            if flags & libc::EPOLLOUT as u32 != 0 {
                if let Some((frame, off)) = c.pending.take() {
                    if !write_frame(ep, i as u64, c, frame, off) {
                        fail(c, &mut stats, i, "write failed");
                        continue;
                    }
                }
            }
            if flags & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 == 0 {
                continue;
            }
            if c.rlen == c.rbuf.len() {
                fail(c, &mut stats, i, "receive buffer full (frame too large)");
                continue;
            }
            let rlen = c.rlen;
            match c.stream.read(&mut c.rbuf[rlen..]) {
                Ok(0) => {
                    let why = format!("eof from server (state {})", state_name(&c.state));
                    fail(c, &mut stats, i, &why);
                    continue;
                }
                Ok(got) => c.rlen += got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    fail(c, &mut stats, i, &format!("read: {e}"));
                    continue;
                }
            }
            // Parse every whole frame held.
            let mut pos = 0;
            while c.state != State::Done {
                let buf = &c.rbuf[pos..c.rlen];
                if buf.len() < 2 {
                    break;
                }
                let (b0, b1) = (buf[0], buf[1]);
                let (len, head) = match b1 & 0x7f {
                    126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                    127 if buf.len() >= 10 => (
                        u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => break,
                    l => (l as usize, 2),
                };
                if b1 & 0x80 != 0 {
                    fail(c, &mut stats, i, "masked frame from server");
                    break;
                }
                if buf.len() < head + len {
                    break;
                }
                let payload = &buf[head..head + len];
                let opcode = b0 & 0x0f;
                pos += head + len;
                match (opcode, &c.state) {
                    (0x2, State::Waiting) if b0 & 0xf0 == 0x80 => {
                        if payload != c.expected.as_slice() {
                            fail(c, &mut stats, i, "echo differs from the message sent");
                            break;
                        }
                        stats.echoes += 1;
                        stats.max_rtt = stats.max_rtt.max(c.sent_at.elapsed());
                        if sending {
                            if !send_message(ep, i as u64, c, &mut rng) {
                                fail(c, &mut stats, i, "write failed");
                            }
                        } else {
                            c.state = State::Idle;
                        }
                    }
                    (0x8, State::Closing) => {
                        stats.closes_ok += 1;
                        c.state = State::Done;
                    }
                    (0x8, _) => {
                        let code = (payload.len() >= 2)
                            .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                        let why = format!(
                            "unexpected close from server (code {code:?}, state {})",
                            state_name(&c.state)
                        );
                        fail(c, &mut stats, i, &why);
                    }
                    _ => {
                        let why = format!(
                            "unexpected frame: byte0 {b0:#04x}, len {len}, state {}",
                            state_name(&c.state)
                        );
                        fail(c, &mut stats, i, &why);
                    }
                }
            }
            if pos > 0 && c.state != State::Done {
                c.rbuf.copy_within(pos..c.rlen, 0);
                c.rlen -= pos;
            }
        }
    }

    let wall = (m_end - m_start).as_secs_f64();
    let msgs = m_echoes_end - m_echoes_start;
    // SAFETY: plain syscall.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut line = format!(
        "msgs={msgs} secs={wall:.3} msgs_per_s={:.0} connections={n} size={size} \
         client_cpu_s={:.3}",
        msgs as f64 / wall,
        (cpu1 - cpu0).as_secs_f64()
    );
    if let (Some(a), Some(b)) = (ticks0, ticks1) {
        let s = (b - a) as f64 / tck;
        line += &format!(
            " server_cpu_s={s:.3} server_cpu_s_per_million={:.3}",
            s / msgs as f64 * 1e6
        );
    }
    if let (Some(a), Some(b)) = (sched0, sched1) {
        let s = (b - a) as f64 / 1e9;
        line += &format!(
            " server_sched_s={s:.3} server_sched_s_per_million={:.3}",
            s / msgs as f64 * 1e6
        );
    }
    line += &format!(
        " total_echoes={} errors={} lost={} closes_ok={}/{n} max_rtt_ms={:.2}",
        stats.echoes,
        stats.errors,
        stats.lost,
        stats.closes_ok,
        stats.max_rtt.as_secs_f64() * 1e3
    );
    println!("{line}");
    if stats.errors > 0 || stats.lost > 0 || msgs == 0 {
        std::process::exit(1);
    }
}

fn state_name(s: &State) -> &'static str {
    match s {
        State::Waiting => "waiting",
        State::Idle => "idle",
        State::Closing => "closing",
        State::Done => "done",
    }
}
