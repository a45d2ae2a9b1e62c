//! How long a node takes to subscribe many topics at its broker: one WebSocket connection whose
//! handler subscribes it to `t0` … `t{N-1}` on open, then
//! [`ServerHandle::wait_broker_subscriptions`] until the broker holds all N. The link
//! subscribes the same way after every reconnection, with the whole set wanted at once.
//!
//! ```sh
//! scripts/brokers.sh start /tmp/brokers      # prints REDIS_URL=… and NATS_URL=…
//! cargo run --release --example many_topics -- redis://127.0.0.1:PORT 10000
//! ```
//!
//! Then, with the N held, the same connection asks for one more topic at a time, 21 times (a
//! text message naming it), and each is timed from the message sent to the broker holding it.
//!
//! Prints one line: the topic count, the milliseconds from the connection's open to the last
//! subscription confirmed, and the median milliseconds for one more. Loopback only; each wait
//! is bounded (120 s, then 10 s).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use uringcast::broadcast::{Connection, Handler, Message};
use uringcast::protocol::frame::encode_frame;
use uringcast::protocol::handshake::Request;
use uringcast::protocol::OpCode;
use uringcast::server::{spawn_with, Server};

/// Subscribes every connection to topics `t0` to `t{N-1}`, and to the topic each text
/// message names.
#[derive(Clone)]
struct ManyTopics(usize);

impl Handler for ManyTopics {
    type Data = ();

    fn on_open(&mut self, conn: &mut Connection<'_, ()>, _request: &Request) {
        for i in 0..self.0 {
            if let Err(error) = conn.subscribe(&format!("t{i}")) {
                eprintln!("topic t{i} refused: {error}");
                return;
            }
        }
    }

    fn on_message(&mut self, conn: &mut Connection<'_, ()>, message: Message<'_>) {
        if let Some(topic) = message.as_text() {
            if let Err(error) = conn.subscribe(topic) {
                eprintln!("topic {topic} refused: {error}");
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let broker = args
        .next()
        .ok_or("usage: many_topics BROKER_URL [TOPICS]")?;
    let topics: usize = args.next().as_deref().unwrap_or("10000").parse()?;
    let config = Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .workers(1)
        .broker(broker)
        .max_subscriptions_per_connection(topics + EXTRA)
        .max_topics_per_worker(topics + EXTRA)
        .build()?;
    let server = spawn_with(config, ManyTopics(topics))?;
    let started = Instant::now();
    let mut client = upgrade(server.local_addr())?;
    if !server.wait_broker_subscriptions(topics, Duration::from_secs(120)) {
        return Err(format!("{topics} topics not subscribed within 120 s").into());
    }
    let all_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut one_more_ms = Vec::with_capacity(EXTRA);
    for i in 0..EXTRA {
        let started = Instant::now();
        // A client frame must be masked (RFC 6455 §5.3); any key will do.
        let topic = format!("extra-{i}");
        client.write_all(&encode_frame(
            OpCode::Text,
            true,
            topic.as_bytes(),
            Some([7; 4]),
        ))?;
        if !server.wait_broker_subscriptions(topics + i + 1, Duration::from_secs(10)) {
            return Err(format!("topic extra-{i} not subscribed within 10 s").into());
        }
        one_more_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    one_more_ms.sort_by(f64::total_cmp);
    println!(
        "topics {topics} subscribed_ms {all_ms:.1} one_more_ms {:.3}",
        one_more_ms[EXTRA / 2]
    );
    server.shutdown();
    Ok(())
}

/// Topics asked for one at a time once the N are held.
const EXTRA: usize = 21;

/// Opens a WebSocket connection (the handshake only; it stays open while the value lives).
fn upgrade(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Err(std::io::Error::other("closed during the upgrade")),
            Ok(_) => head.push(byte[0]),
            // The server's threads may signal this process while it starts.
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    Ok(stream)
}
