//! The built-in handlers behind the CLI's `--mode`: [`Echo`] and [`RoomsByPath`].

use std::sync::Arc;

use tracing::debug;

use crate::auth::{Authorizer, Grant, UnixTime};
use crate::broadcast::{Connection, Decision, Handler, Message};
use crate::protocol::handshake::Request;
use crate::protocol::CloseCode;
use crate::refusal::Reason;

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
///
/// Who may do what is the server's [`Authorizer`]'s call, made from the upgrade request: a
/// subscription needs a JWT covering the room when a JWT key is configured, a publish-only
/// connection needs a credential as soon as one is configured, and a subscriber's messages are
/// published only as `--client-publish` allows (else the connection is closed with 1008).
/// The handler made by [`RoomsByPath::with_access`] applies it; `RoomsByPath` as a value
/// (and [`Default`]) is the open handler, which lets anyone do anything.
#[derive(Clone, Debug, Default)]
pub struct RoomsByPath {
    access: Option<Arc<Authorizer>>,
    /// What the upgrade being admitted was granted. The driver calls `on_upgrade` and, if
    /// the upgrade is valid, `on_open` for the same request back to back on this worker, so
    /// `on_open` takes what `on_upgrade` left; a grant left by an upgrade that failed
    /// validation is replaced by the next `on_upgrade` before anyone reads it.
    admitted: Option<Grant>,
}

/// The open handler, as a value: `spawn_with(config, RoomsByPath)` keeps working.
#[allow(non_upper_case_globals)]
pub const RoomsByPath: RoomsByPath = RoomsByPath {
    access: None,
    admitted: None,
};

impl RoomsByPath {
    /// Rooms by path under an access policy (see [`Config::authorizer`]).
    ///
    /// [`Config::authorizer`]: crate::config::Config::authorizer
    pub fn with_access(access: Arc<Authorizer>) -> Self {
        Self {
            access: Some(access),
            admitted: None,
        }
    }
}

/// A connection's room, and what its upgrade was granted.
#[derive(Debug, Default)]
pub struct Room {
    topic: Box<str>,
    /// A `/publish/<topic>` connection: it joined no topic.
    publish_only: bool,
    grant: Grant,
}

/// The path prefix of a publish-only connection, the same as `POST /publish/<topic>`'s.
const PUBLISH_PREFIX: &str = "/publish";

impl Handler for RoomsByPath {
    type Data = Room;

    fn on_upgrade(&mut self, request: &Request) -> Decision {
        self.admitted = None;
        let Some(access) = &self.access else {
            return Decision::Accept;
        };
        let (topic, subscribe) = room_of_path(request.path());
        let now = UnixTime::now();
        let verdict = if subscribe {
            access.authorize_subscribe(request, topic, now)
        } else {
            access.authorize_publish(request, topic, now)
        };
        match verdict {
            Ok(grant) => {
                if let Some(subject) = grant.claims.as_ref().and_then(|c| c.subject) {
                    debug!(%subject, subscribe, "token accepted");
                }
                self.admitted = Some(grant);
                Decision::Accept
            }
            Err(refusal) => {
                debug!(
                    reason = refusal.reason.label(),
                    subscribe, "upgrade refused"
                );
                Decision::Refuse(refusal)
            }
        }
    }

    fn on_open(&mut self, conn: &mut Connection<'_, Room>, request: &Request) {
        let (topic, subscribe) = room_of_path(request.path());
        *conn.data() = Room {
            topic: topic.into(),
            publish_only: !subscribe,
            // Without a grant (an open handler), `authorize_message` follows
            // `--client-publish` alone.
            grant: self.admitted.take().unwrap_or_default(),
        };
        if !subscribe {
            return;
        }
        if let Err(refusal) = conn.subscribe(topic) {
            // A room it cannot join is no use to the client: say why (1008, policy).
            conn.close(CloseCode::POLICY_VIOLATION, &refusal.to_string());
        }
    }

    fn on_message(&mut self, conn: &mut Connection<'_, Room>, message: Message<'_>) {
        let room = conn.data();
        let topic = room.topic.clone();
        if let Some(access) = &self.access {
            // Publish-only connections were authorized for their topic at the upgrade, until
            // their token (if they came with one) expires; a subscriber publishes as
            // `--client-publish` says.
            let verdict = match (&room.grant.claims, room.publish_only) {
                (Some(claims), true) if claims.expired_at(UnixTime::now().0) => {
                    Err(Reason::TokenExpired)
                }
                (_, true) => Ok(()),
                (_, false) => access.authorize_message(&room.grant, &topic, UnixTime::now()),
            };
            if let Err(reason) = verdict {
                return conn.refuse(reason);
            }
        }
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
