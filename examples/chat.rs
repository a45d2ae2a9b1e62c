//! A chat server: rooms by path, as `uringcast --mode broadcast` has them, with join and
//! leave announcements.
//!
//! ```sh
//! cargo run --release --example chat              # listens on 127.0.0.1:9001
//! cargo run --release --example chat -- 0.0.0.0:9001
//! ```
//!
//! Then, in a browser console (two tabs make a conversation):
//!
//! ```js
//! const ws = new WebSocket("ws://127.0.0.1:9001/room-a?name=ada");
//! ws.onmessage = (e) => console.log(e.data);
//! ws.onopen = () => ws.send("hello, room");
//! ```
//!
//! Every text message goes to everyone in the room as `name: text`; binary messages are
//! relayed as they are. Ctrl-C closes every connection with 1001 and exits.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use uringcast::broadcast::{topic_of_path, Connection, Handler, Message};
use uringcast::protocol::handshake::Request;
use uringcast::protocol::{CloseCode, OpCode};
use uringcast::server::{spawn_with, Server};

/// Names longer than this are cut: a name is repeated in every line its owner sends.
const MAX_NAME_CHARS: usize = 32;

/// The chat logic; each worker runs its own clone.
#[derive(Clone, Default)]
struct Chat {
    /// Numbers guests without a `?name=`; shared by the workers' clones.
    guests: Arc<AtomicU64>,
}

/// What the chat keeps per connection.
#[derive(Default)]
struct Member {
    room: Box<str>,
    name: String,
}

impl Handler for Chat {
    type Data = Member;

    fn on_open(&mut self, conn: &mut Connection<'_, Member>, request: &Request) {
        let room = topic_of_path(request.path());
        let name = request
            .query()
            .and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("name=")))
            .filter(|name| !name.is_empty())
            .map(|name| name.chars().take(MAX_NAME_CHARS).collect())
            .unwrap_or_else(|| format!("guest-{}", self.guests.fetch_add(1, Ordering::Relaxed)));
        // Subscribe first: actions run in order, so the newcomer sees its own announcement.
        if let Err(refusal) = conn.subscribe(room) {
            conn.close(CloseCode::POLICY_VIOLATION, &refusal.to_string());
            return;
        }
        let joined = format!("* {name} joined {room}");
        conn.publish(room, OpCode::Text, joined.as_bytes());
        *conn.data() = Member {
            room: room.into(),
            name,
        };
    }

    fn on_message(&mut self, conn: &mut Connection<'_, Member>, message: Message<'_>) {
        let Member { room, name } = conn.data();
        let room = room.clone();
        match message.as_text() {
            Some(text) => {
                let line = format!("{name}: {text}");
                conn.publish(&room, OpCode::Text, line.as_bytes());
            }
            None => conn.publish(&room, message.opcode, message.payload),
        }
    }

    fn on_close(&mut self, conn: &mut Connection<'_, Member>) {
        let Member { room, name } = conn.data();
        let left = format!("* {name} left");
        let room = room.clone();
        conn.publish(&room, OpCode::Text, left.as_bytes());
    }
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
    let server = spawn_with(config, Chat::default())?;
    println!("listening on {}", server.local_addr());
    server.wait();
    Ok(())
}
