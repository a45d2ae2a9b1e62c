//! The built-in handlers behind the CLI's `--mode`: [`Echo`] and [`RoomsByPath`].

use crate::broadcast::{Connection, Handler, Message};
use crate::protocol::handshake::Request;
use crate::protocol::CloseCode;

/// Sends every message back to its sender with its opcode (`--mode echo`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    type Data = ();

    fn on_message(&mut self, conn: &mut Connection<'_, ()>, message: Message<'_>) {
        conn.send(message.opcode, message.payload);
    }
}

/// Rooms by path (`--mode broadcast`): a connection to `ws://host/room-a` joins topic
/// `room-a` (and `ws://host/` joins topic `/`), and every message a client sends is published
/// to its topic, sender included. `POST /publish/room-a` reaches the same room.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoomsByPath;

impl Handler for RoomsByPath {
    /// The connection's topic.
    type Data = Box<str>;

    fn on_open(&mut self, conn: &mut Connection<'_, Box<str>>, request: &Request) {
        let topic = crate::broadcast::topic_of_path(request.path());
        *conn.data() = topic.into();
        if let Err(refusal) = conn.subscribe(topic) {
            // A room it cannot join is no use to the client: say why (1008, policy).
            conn.close(CloseCode::POLICY_VIOLATION, &refusal.to_string());
        }
    }

    fn on_message(&mut self, conn: &mut Connection<'_, Box<str>>, message: Message<'_>) {
        let topic = conn.data().clone();
        conn.publish(&topic, message.opcode, message.payload);
    }
}
