//! Presence churn (`pusher --churn R`): members joining and leaving the first presence channel
//! R times a second, beside the run's traffic. One thread opens a WebSocket connection on
//! schedule, subscribes it as a new member (signed like every subscription, [`Channels`]),
//! waits for `pusher_internal:subscription_succeeded` (joined), then closes it (left). Blocking
//! sockets: a join over loopback takes about a millisecond, far below any useful interval.

use std::io::{self, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::RngCore as _;
use serde_json::Value;
use uringcast::protocol::frame::encode_frame;
use uringcast::protocol::handshake::ClientHandshake;
use uringcast::protocol::OpCode;

use crate::scenario::session::pusher::Channels;
use crate::scenario::stamp;
use crate::scenario::traffic::{Expect, Senders};
use crate::target::Target;

/// How long one join may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest server frame read by a churning member (Pusher's protocol messages are small).
const MAX_FRAME_BYTES: u64 = 64 * 1024;
/// The most messages read while waiting for one answer.
const MAX_MESSAGES: usize = 1000;

/// What the churn did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChurnTally {
    /// Members per second asked for.
    pub rate: f64,
    /// Members that joined (subscription succeeded).
    pub joined: u64,
    /// Members that left again (closed after joining).
    pub left: u64,
    /// Joins that failed (refused, timed out, or the connection failed).
    pub failed: u64,
    /// The first failure's text.
    pub first_error: Option<String>,
}

/// The run's senders, and the churn thread beside them.
pub struct Churn<'a> {
    inner: &'a mut dyn Senders,
    target: Target,
    channels: Arc<Channels>,
    rate: f64,
    stop: Arc<AtomicBool>,
    joined: Arc<AtomicU64>,
    left: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    first_error: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl<'a> Churn<'a> {
    /// `rate` members a second joining and leaving `channels`' first channel on `target`,
    /// beside `inner`.
    pub fn new(
        inner: &'a mut dyn Senders,
        target: Target,
        channels: Arc<Channels>,
        rate: f64,
    ) -> Self {
        Self {
            inner,
            target,
            channels,
            rate,
            stop: Arc::default(),
            joined: Arc::default(),
            left: Arc::default(),
            failed: Arc::default(),
            first_error: Arc::default(),
            thread: None,
        }
    }

    /// What the churn did.
    pub fn tally(&self) -> ChurnTally {
        ChurnTally {
            rate: self.rate,
            joined: self.joined.load(Ordering::Relaxed),
            left: self.left.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            first_error: self.first_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

impl Senders for Churn<'_> {
    fn go(&mut self, start_ns: u64) {
        self.inner.go(start_ns);
        let interval_ns = 1e9 / self.rate;
        let (target, channels) = (self.target.clone(), Arc::clone(&self.channels));
        let (stop, joined, left, failed) = (
            Arc::clone(&self.stop),
            Arc::clone(&self.joined),
            Arc::clone(&self.left),
            Arc::clone(&self.failed),
        );
        let first_error = Arc::clone(&self.first_error);
        let spawned = std::thread::Builder::new()
            .name("uringcast-load-churn".into())
            .spawn(move || {
                let mut member = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = start_ns + (member as f64 * interval_ns) as u64;
                    let now = stamp::now_ns();
                    if due > now {
                        std::thread::sleep(Duration::from_nanos(due - now).min(POLL_STOP));
                        continue;
                    }
                    match join_and_leave(&target, &channels, member, &joined) {
                        Ok(()) => {
                            left.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut first) = first_error.lock() {
                                first.get_or_insert_with(|| error.to_string());
                            }
                        }
                    }
                    member += 1;
                }
            });
        match spawned {
            Ok(handle) => self.thread = Some(handle),
            Err(error) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| format!("cannot start the churn: {error}"));
                }
            }
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.thread.take() {
            let _ = handle.join();
        }
        self.inner.stop();
    }

    fn expect(&self, sent_by_threads: &Expect) -> Expect {
        self.inner.expect(sent_by_threads)
    }

    fn sent(&self) -> u64 {
        self.inner.sent()
    }

    fn errors(&self) -> u64 {
        self.inner.errors()
    }
}

const POLL_STOP: Duration = Duration::from_millis(20);

/// One member: connect, upgrade, subscribe, wait for success (`joined` counted), close.
fn join_and_leave(
    target: &Target,
    channels: &Channels,
    member: u64,
    joined: &AtomicU64,
) -> io::Result<()> {
    let stream = TcpStream::connect_timeout(&target.addr, JOIN_TIMEOUT)?;
    stream.set_read_timeout(Some(JOIN_TIMEOUT))?;
    stream.set_write_timeout(Some(JOIN_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut key = [0u8; 16];
    rand::rng().fill_bytes(&mut key);
    let (mut handshake, request) = ClientHandshake::new(&target.host, &target.path, key, &[]);
    let mut reader = BufReader::new(stream);
    reader.get_mut().write_all(&request)?;
    // The head, a byte at a time into the handshake (it keeps what it needs); what follows the
    // head stays in the reader.
    let mut byte = [0u8; 1];
    loop {
        reader.read_exact(&mut byte)?;
        let (_, response) = handshake.feed(&byte).map_err(io::Error::other)?;
        if response.is_some() {
            break;
        }
    }
    let established = wait_for(&mut reader, "pusher:connection_established")?;
    let socket_id = established
        .get("data")
        .and_then(Value::as_str)
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
        .and_then(|d| {
            d.get("socket_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .ok_or_else(|| io::Error::other("pusher:connection_established without a socket_id"))?;
    let subscribe = channels.churn_subscribe(member, &socket_id);
    send(reader.get_mut(), OpCode::Text, &subscribe)?;
    wait_for(&mut reader, "pusher_internal:subscription_succeeded")?;
    joined.fetch_add(1, Ordering::Relaxed);
    // Leave: a normal close (1000); the server's answer is not waited for.
    send(reader.get_mut(), OpCode::Close, &1000u16.to_be_bytes())?;
    Ok(())
}

fn send(stream: &mut TcpStream, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
    let mut mask = [0u8; 4];
    rand::rng().fill_bytes(&mut mask);
    stream.write_all(&encode_frame(opcode, true, payload, Some(mask)))
}

/// Reads server messages until one whose `event` is `event`; a Pusher error or a close
/// before it is an error.
fn wait_for(reader: &mut BufReader<TcpStream>, event: &str) -> io::Result<Value> {
    for _ in 0..MAX_MESSAGES {
        let (opcode, payload) = read_frame(reader)?;
        match opcode {
            0x1 => {}
            0x8 => {
                return Err(io::Error::other(format!(
                    "closed while waiting for {event}"
                )))
            }
            _ => continue,
        }
        let Ok(message) = serde_json::from_slice::<Value>(&payload) else {
            continue;
        };
        match message.get("event").and_then(Value::as_str) {
            Some(e) if e == event => return Ok(message),
            Some(e @ ("pusher:error" | "pusher:subscription_error")) => {
                return Err(io::Error::other(format!("{e}: {}", message["data"])))
            }
            _ => {}
        }
    }
    Err(io::Error::other(format!(
        "no {event} in {MAX_MESSAGES} messages"
    )))
}

/// One unfragmented, unmasked server frame (RFC 6455 §5.2): its opcode and payload.
fn read_frame(reader: &mut BufReader<TcpStream>) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head)?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            reader.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            reader.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    if head[1] & 0x80 != 0 || len > MAX_FRAME_BYTES {
        return Err(io::Error::other(format!(
            "a server frame masked or of {len} bytes (limit {MAX_FRAME_BYTES})"
        )));
    }
    let mut payload = vec![0; len as usize];
    reader.read_exact(&mut payload)?;
    Ok((head[0] & 0x0f, payload))
}
