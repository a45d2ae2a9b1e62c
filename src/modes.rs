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
/// to its topic, sender included. `POST /publish/room-a` reaches the same room, and so does a
/// publish-only WebSocket on `ws://host/publish/room-a`: it joins no topic, so it never
/// receives its own messages (the path a feed or a benchmark's publisher takes).
#[derive(Clone, Copy, Debug, Default)]
pub struct RoomsByPath;

/// The path prefix of a publish-only connection, the same as `POST /publish/<topic>`'s.
const PUBLISH_PREFIX: &str = "/publish";

impl Handler for RoomsByPath {
    /// The connection's topic.
    type Data = Box<str>;

    fn on_open(&mut self, conn: &mut Connection<'_, Box<str>>, request: &Request) {
        let (topic, subscribe) = room_of_path(request.path());
        *conn.data() = topic.into();
        if !subscribe {
            return;
        }
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

/// A path's topic, and whether the connection subscribes to it: `/publish/room` publishes to
/// `room` without joining it; any other path joins its own topic ([`topic_of_path`]).
///
/// [`topic_of_path`]: crate::broadcast::topic_of_path
fn room_of_path(path: &str) -> (&str, bool) {
    match path.strip_prefix(PUBLISH_PREFIX) {
        Some(rest) if rest.starts_with('/') => (crate::broadcast::topic_of_path(rest), false),
        _ => (crate::broadcast::topic_of_path(path), true),
    }
}

#[cfg(test)]
mod tests {
    use super::room_of_path;

    #[test]
    fn publish_paths_publish_without_joining() {
        assert_eq!(room_of_path("/publish/room-a"), ("room-a", false));
        assert_eq!(room_of_path("/publish/a/b?x=1"), ("a/b?x=1", false));
        // `/publish/` is the root topic, as `POST /publish/` is.
        assert_eq!(room_of_path("/publish/"), ("/", false));
        // Anything else is a room of its own, joined.
        assert_eq!(room_of_path("/publish"), ("publish", true));
        assert_eq!(room_of_path("/publisher/x"), ("publisher/x", true));
        assert_eq!(room_of_path("/room-a"), ("room-a", true));
        assert_eq!(room_of_path("/"), ("/", true));
    }
}
