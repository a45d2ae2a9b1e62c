//! The echo floor: what echoing WebSocket messages costs at the least, to put a server's echo
//! CPU beside (`scripts/bench.sh`, the echo scenario). One thread, level-triggered epoll, one
//! `read()` per ready socket, and one `write()` of every whole frame that read completed,
//! unmasked, back to the same socket: what any server must do, and nothing else. No limits, no
//! queues, no fragments, no UTF-8 check; a close frame is answered and the socket closed.
//!
//! ```text
//! cargo run --release -p uringcast-loadgen --example echo_floor -- --listen 127.0.0.1:9200
//! uringcast-load echo ws://127.0.0.1:9200/ --connections 100 --size 32 --inflight 1 --duration 5
//! ```
//!
//! It stops once every connection it accepted has gone (the load generator closes them at its
//! end), or after `--max-seconds`. Loopback addresses only.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use uringcast::protocol::mask::unmask;

#[path = "floor/handshake.rs"]
mod handshake;
use handshake::handshake;

const USAGE: &str = "echo_floor [--listen 127.0.0.1:9200] [--max-seconds S]";
/// The epoll key of the listener; a connection's key is its index.
const LISTENER: u64 = u64::MAX;
/// Bytes taken per `read()`.
const READ_BYTES: usize = 64 << 10;

/// One client: its socket and the bytes of a frame not yet whole.
struct Conn {
    stream: TcpStream,
    spill: Vec<u8>,
}

fn main() {
    let (listen, max) = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("echo_floor: {message}\nusage: {USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(error) = run(listen, max) {
        eprintln!("echo_floor: {error}");
        std::process::exit(1);
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<(SocketAddr, Duration), String> {
    let mut listen: SocketAddr = "127.0.0.1:9200".parse().expect("a valid address");
    let mut max = Duration::from_secs(60);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag} {value}: not a valid value");
        match flag.as_str() {
            "--listen" => listen = value.parse().map_err(|_| bad())?,
            "--max-seconds" => {
                let secs: f64 = value.parse().map_err(|_| bad())?;
                if !(0.0..=3600.0).contains(&secs) {
                    return Err(bad());
                }
                max = Duration::from_secs_f64(secs);
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if !listen.ip().is_loopback() {
        return Err(format!("{listen} is not a loopback address"));
    }
    Ok((listen, max))
}

fn run(listen: SocketAddr, max: Duration) -> io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(
        listener.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, LISTENER),
    )?;
    let deadline = Instant::now() + max;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let (mut open, mut accepted, mut echoed) = (0usize, 0usize, 0u64);
    let mut events = vec![EpollEvent::empty(); 256];
    let mut scratch = vec![0u8; READ_BYTES];
    let mut out = Vec::with_capacity(READ_BYTES);
    while Instant::now() < deadline && (accepted == 0 || open > 0) {
        let ready = epoll.wait(&mut events, 100u16)?;
        for event in &events[..ready] {
            if event.data() == LISTENER {
                // The handshake is read with blocking calls: the client sends it at once.
                while let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(false)?;
                    let Some(stream) = handshake(stream)? else {
                        continue;
                    };
                    epoll.add(
                        stream.as_fd(),
                        EpollEvent::new(EpollFlags::EPOLLIN, conns.len() as u64),
                    )?;
                    conns.push(Some(Conn {
                        stream,
                        spill: Vec::new(),
                    }));
                    (open, accepted) = (open + 1, accepted + 1);
                }
                continue;
            }
            let index = event.data() as usize;
            let Some(conn) = &mut conns[index] else {
                continue;
            };
            out.clear();
            let keep = match conn.stream.read(&mut scratch) {
                Ok(0) | Err(_) => false,
                Ok(n) => {
                    conn.spill.extend_from_slice(&scratch[..n]);
                    let (consumed, frames, closing) = echo_frames(&mut conn.spill, &mut out);
                    conn.spill.drain(..consumed);
                    echoed += frames;
                    conn.stream.write_all(&out).is_ok() && !closing
                }
            };
            if !keep {
                let conn = conns[index].take().expect("a live connection");
                epoll.delete(conn.stream.as_fd())?;
                open -= 1;
            }
        }
    }
    println!("echo_floor: {accepted} connections, {echoed} frames echoed");
    Ok(())
}

/// Unmasks every whole client frame at the front of `buf` and appends it to `out` as a server
/// frame with the same first byte. Returns the bytes consumed, the data frames echoed, and
/// whether a close frame (echoed too) ends the connection.
fn echo_frames(buf: &mut [u8], out: &mut Vec<u8>) -> (usize, u64, bool) {
    let (mut at, mut frames) = (0usize, 0u64);
    while buf.len() - at >= 2 {
        let (first, short) = (buf[at], (buf[at + 1] & 0x7f) as usize);
        let (len, head) = match short {
            126 if buf.len() - at >= 4 => {
                (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4)
            }
            127 if buf.len() - at >= 10 => {
                let bytes: [u8; 8] = buf[at + 2..at + 10].try_into().expect("8 bytes");
                (u64::from_be_bytes(bytes) as usize, 10)
            }
            126 | 127 => break,
            n => (n, 2),
        };
        if buf.len() - at < head + 4 + len {
            break;
        }
        let mask: [u8; 4] = buf[at + head..at + head + 4].try_into().expect("4 bytes");
        let payload = &mut buf[at + head + 4..at + head + 4 + len];
        unmask(payload, mask, 0);
        out.push(first);
        match len {
            0..=125 => out.push(len as u8),
            126..=65_535 => {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        at += head + 4 + len;
        if first & 0x0f == 0x8 {
            return (at, frames, true);
        }
        frames += 1;
    }
    (at, frames, false)
}

#[cfg(test)]
mod tests {
    use super::echo_frames;

    /// A masked client frame of `payload` with opcode `first & 0x0f`.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut frame = vec![first];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    #[test]
    fn whole_frames_are_echoed_unmasked_and_a_partial_one_waits() {
        let long = vec![7u8; 300];
        let mut buf = client_frame(0x82, b"hello");
        buf.extend(client_frame(0x81, &long));
        let second = buf.len();
        buf.extend(&client_frame(0x82, b"later")[..4]);
        let mut out = Vec::new();
        let (consumed, frames, closing) = echo_frames(&mut buf, &mut out);
        assert_eq!((consumed, frames, closing), (second, 2, false));
        let mut expected = vec![0x82, 5];
        expected.extend_from_slice(b"hello");
        expected.extend_from_slice(&[0x81, 126, 1, 44]);
        expected.extend_from_slice(&long);
        assert_eq!(out, expected);
    }

    #[test]
    fn a_close_frame_is_answered_and_ends_the_connection() {
        let mut buf = client_frame(0x88, &[3, 232]);
        buf.extend(client_frame(0x82, b"after"));
        let mut out = Vec::new();
        let (consumed, frames, closing) = echo_frames(&mut buf, &mut out);
        assert_eq!((consumed, frames, closing), (8, 0, true));
        assert_eq!(out, [0x88, 2, 3, 232]);
    }
}
