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
//! Prints one line: the topic count and the milliseconds from the connection's open to the
//! last subscription confirmed. Loopback only; bounded by a 120 s wait.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use uringcast::broadcast::{Connection, Handler, Message};
use uringcast::protocol::handshake::Request;
use uringcast::server::{spawn_with, Server};

/// Subscribes every connection to topics `t0` to `t{N-1}`.
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

    fn on_message(&mut self, _conn: &mut Connection<'_, ()>, _message: Message<'_>) {}
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
        .max_subscriptions_per_connection(topics)
        .max_topics_per_worker(topics)
        .build()?;
    let server = spawn_with(config, ManyTopics(topics))?;
    let started = Instant::now();
    let _client = upgrade(server.local_addr())?;
    if !server.wait_broker_subscriptions(topics, Duration::from_secs(120)) {
        return Err(format!("{topics} topics not subscribed within 120 s").into());
    }
    println!(
        "topics {topics} subscribed_ms {:.1}",
        started.elapsed().as_secs_f64() * 1e3
    );
    server.shutdown();
    Ok(())
}

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
