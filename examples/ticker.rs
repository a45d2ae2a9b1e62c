//! A price ticker: every connection is subscribed to topic `ticks`, and a thread outside
//! the server publishes a JSON tick every 100 ms through `ServerHandle::publish`.
//!
//! ```sh
//! cargo run --release --example ticker            # listens on 127.0.0.1:9001
//! cargo run --release --example ticker -- 0.0.0.0:9001
//! ```
//!
//! Then, in a browser console:
//!
//! ```js
//! const ws = new WebSocket("ws://127.0.0.1:9001/");
//! ws.onmessage = (e) => console.log(JSON.parse(e.data));
//! ```
//!
//! Ctrl-C closes every connection with 1001; the ticker sees the server stopping and stops.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uringcast::broadcast::{Connection, Handler, Message};
use uringcast::protocol::handshake::Request;
use uringcast::protocol::OpCode;
use uringcast::server::{spawn_with, Publisher, Server};

const TOPIC: &str = "ticks";
const INTERVAL: Duration = Duration::from_millis(100);

/// Subscribes every connection to [`TOPIC`]; clients only listen.
#[derive(Clone)]
struct Ticker;

impl Handler for Ticker {
    type Data = ();

    fn on_open(&mut self, conn: &mut Connection<'_, ()>, _request: &Request) {
        // One short topic: no limit can refuse it.
        let _ = conn.subscribe(TOPIC);
    }

    fn on_message(&mut self, _conn: &mut Connection<'_, ()>, _message: Message<'_>) {}
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:9001")
        .parse()?;
    let config = Server::builder()
        .listen(listen)
        .handle_signals(true)
        .build()?;
    let server = spawn_with(config, Ticker)?;
    println!("listening on {}", server.local_addr());
    let publisher = server.publisher();
    let ticker = std::thread::Builder::new()
        .name("ticker".into())
        .spawn(move || tick(&publisher))?;
    // Returns after Ctrl-C, once every connection got its 1001 and the workers exited.
    server.wait();
    ticker.join().map_err(|_| "the ticker thread panicked")??;
    Ok(())
}

/// Publishes a tick every [`INTERVAL`] until the server stops.
fn tick(publisher: &Publisher) -> Result<(), String> {
    let mut price: f64 = 100.0;
    let mut seq: u64 = 0;
    while publisher.is_running() {
        // A deterministic wobble stands in for a market feed.
        price = (price + ((seq * 7919) % 41) as f64 / 100.0 - 0.2).max(1.0);
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_millis();
        let json =
            format!(r#"{{"symbol":"URNG","seq":{seq},"price":{price:.2},"time_ms":{millis}}}"#);
        publisher.publish(TOPIC, OpCode::Text, json.as_bytes());
        seq += 1;
        std::thread::sleep(INTERVAL);
    }
    Ok(())
}
