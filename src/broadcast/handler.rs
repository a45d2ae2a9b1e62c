//! The embedder's side: the [`Handler`] trait, the [`Connection`] it acts through, and the
//! plain HTTP endpoints served on the same port.

use std::sync::Arc;

use bytes::Bytes;

use super::Hub;
use crate::config::Config;
use crate::driver::{Admission, ConnId};
use crate::protocol::handshake::{http_response, Request};
use crate::protocol::{CloseCode, OpCode};

/// What [`Handler::on_upgrade`] decides about a WebSocket upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Upgrade, with no subprotocol.
    Accept,
    /// Upgrade, answering with this `Sec-WebSocket-Protocol` (one the client offered).
    AcceptProtocol(String),
    /// Refuse with this HTTP status, e.g. 401 or 403.
    Reject(u16),
}

/// A complete message from a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// [`OpCode::Text`] or [`OpCode::Binary`].
    pub opcode: OpCode,
    /// The payload; valid UTF-8 when the opcode is text.
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// The payload as text, for a text message.
    pub fn as_text(&self) -> Option<&'a str> {
        (self.opcode == OpCode::Text)
            .then(|| std::str::from_utf8(self.payload).ok())
            .flatten()
    }
}

/// The application's logic, run on the worker that owns each connection.
///
/// Each worker gets its own clone of the handler, so it needs no locks; state shared by all
/// workers goes behind an `Arc` inside it.
///
/// # Examples
///
/// A chat: every connection joins the room named by its path and every message goes to the
/// room.
///
/// ```
/// use uringcast::broadcast::{Connection, Handler, Message};
/// use uringcast::protocol::handshake::Request;
///
/// #[derive(Clone)]
/// struct Chat;
///
/// impl Handler for Chat {
///     type Data = String; // the room
///
///     fn on_open(&mut self, conn: &mut Connection<'_, String>, request: &Request) {
///         *conn.data() = request.path().to_string();
///         conn.subscribe(request.path());
///     }
///
///     fn on_message(&mut self, conn: &mut Connection<'_, String>, message: Message<'_>) {
///         let room = conn.data().clone();
///         conn.publish(&room, message.opcode, message.payload);
///     }
/// }
/// ```
pub trait Handler: Clone + Send + 'static {
    /// Per-connection state of the embedder's type.
    type Data: Default + 'static;

    /// Decides whether to upgrade (authentication goes here: path, query, `Origin`, a
    /// token, `Sec-WebSocket-Protocol`). The default accepts.
    fn on_upgrade(&mut self, request: &Request) -> Decision {
        let _ = request;
        Decision::Accept
    }

    /// The connection is open.
    fn on_open(&mut self, conn: &mut Connection<'_, Self::Data>, request: &Request) {
        let _ = (conn, request);
    }

    /// A message arrived.
    fn on_message(&mut self, conn: &mut Connection<'_, Self::Data>, message: Message<'_>);

    /// The connection closed; it can no longer be sent to, but it can still publish.
    fn on_close(&mut self, conn: &mut Connection<'_, Self::Data>) {
        let _ = conn;
    }
}

/// One requested action, carried out in order once the handler returns.
#[derive(Debug)]
pub(crate) enum Action {
    Send(Bytes),
    Subscribe(Box<str>),
    Unsubscribe(Box<str>),
    Publish(Box<str>, Bytes),
    Close(CloseCode, Box<str>),
}

#[derive(Debug, Default)]
pub(crate) struct Actions {
    pub list: Vec<Action>,
}

/// A connection, as a [`Handler`] sees it during a call.
///
/// Sends, subscriptions, publishes and closes take effect when the call returns, in the
/// order they were made; a subscription made while a publish fans out applies after it.
pub struct Connection<'a, D> {
    id: ConnId,
    data: &'a mut D,
    actions: &'a mut Actions,
}

impl<'a, D> Connection<'a, D> {
    pub(crate) fn new(id: ConnId, data: &'a mut D, actions: &'a mut Actions) -> Self {
        Self { id, data, actions }
    }

    /// This connection's id, unique on its worker while it is open.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The embedder's state for this connection.
    pub fn data(&mut self) -> &mut D {
        self.data
    }

    /// Sends a message to this connection.
    pub fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        self.actions
            .list
            .push(Action::Send(super::frame(opcode, payload)));
    }

    /// Subscribes this connection to a topic.
    pub fn subscribe(&mut self, topic: &str) {
        self.actions.list.push(Action::Subscribe(topic.into()));
    }

    /// Unsubscribes this connection from a topic.
    pub fn unsubscribe(&mut self, topic: &str) {
        self.actions.list.push(Action::Unsubscribe(topic.into()));
    }

    /// Publishes a message to every subscriber of a topic on every worker (this connection
    /// included, if it is subscribed).
    pub fn publish(&mut self, topic: &str, opcode: OpCode, payload: &[u8]) {
        self.actions
            .list
            .push(Action::Publish(topic.into(), super::frame(opcode, payload)));
    }

    /// Starts the closing handshake with this code and reason.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.actions.list.push(Action::Close(code, reason.into()));
    }
}

/// What an HTTP request turned into.
pub(crate) enum Routed {
    Response(Vec<u8>),
    Publish { topic: Box<str>, frame: Bytes },
}

/// The plain HTTP endpoints: `POST /publish/<topic>`, `GET /healthz`, `GET /metrics`.
#[derive(Clone, Debug)]
pub(crate) struct Endpoints {
    /// `Authorization: Bearer` value; the publish endpoint is off without one.
    publish_token: Option<Arc<str>>,
    max_publish_bytes: usize,
}

impl Endpoints {
    pub(crate) fn from_config(config: &Config) -> Self {
        Self {
            publish_token: config.publish_token.as_deref().map(Arc::from),
            max_publish_bytes: config.max_message_bytes.min(usize::MAX as u64) as usize,
        }
    }

    /// Decides how to read a request that is not an upgrade.
    pub(crate) fn admit(&self, request: &Request) -> Admission {
        match (request.method(), request.path()) {
            ("GET", "/healthz" | "/metrics") => Admission::Http { max_body_bytes: 0 },
            ("POST", path) if path.starts_with("/publish/") => Admission::Http {
                max_body_bytes: self.max_publish_bytes,
            },
            // Wrong methods and unknown paths are answered from the head: any body they
            // carry is never read, so it cannot earn a 413 instead of the right status.
            (_, path) => Admission::Respond(Self::refusal(path)),
        }
    }

    /// The 404 or 405 (with `Allow`, RFC 9110 §15.5.6) for a request no endpoint takes.
    fn refusal(path: &str) -> Vec<u8> {
        let (status, reason, allow, body) = match path {
            "/healthz" | "/metrics" => (405, "Method Not Allowed", Some("GET"), "use GET\n"),
            p if p.starts_with("/publish/") => {
                (405, "Method Not Allowed", Some("POST"), "use POST\n")
            }
            _ => (404, "Not Found", None, "not found\n"),
        };
        let headers: Vec<(&str, &str)> = allow.map(|a| ("Allow", a)).into_iter().collect();
        http_response(
            status,
            reason,
            &headers,
            Some("text/plain; charset=utf-8"),
            body.as_bytes(),
        )
    }

    /// Answers a request whose body has arrived.
    pub(crate) fn route(&self, request: &Request, body: &[u8], hub: &Hub) -> Routed {
        let text = |status: u16, reason: &str, body: &str| {
            Routed::Response(http_response(
                status,
                reason,
                &[],
                Some("text/plain; charset=utf-8"),
                body.as_bytes(),
            ))
        };
        match (request.method(), request.path()) {
            ("GET", "/healthz") => text(200, "OK", "ok\n"),
            ("GET", "/metrics") => Routed::Response(http_response(
                200,
                "OK",
                &[],
                Some("text/plain; version=0.0.4; charset=utf-8"),
                super::metrics::render(hub).as_bytes(),
            )),
            ("POST", path) if path.starts_with("/publish/") => {
                let Some(token) = &self.publish_token else {
                    return text(
                        404,
                        "Not Found",
                        "publishing over HTTP is off: start with --publish-token\n",
                    );
                };
                let authorized = request
                    .header("authorization")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .is_some_and(|given| {
                        constant_time_eq(given.trim().as_bytes(), token.as_bytes())
                    });
                if !authorized {
                    return Routed::Response(http_response(
                        401,
                        "Unauthorized",
                        &[("WWW-Authenticate", "Bearer")],
                        Some("text/plain; charset=utf-8"),
                        b"missing or wrong bearer token\n",
                    ));
                }
                // `/publish/room-a` is topic `room-a`; `/publish/` is the root topic `/`.
                let topic = super::topic_of_path(&path["/publish".len()..]);
                let is_text = request
                    .header("content-type")
                    .is_some_and(|v| v.len() >= 5 && v[..5].eq_ignore_ascii_case(b"text/"));
                let opcode = if is_text {
                    if std::str::from_utf8(body).is_err() {
                        return text(400, "Bad Request", "a text/* body must be UTF-8\n");
                    }
                    OpCode::Text
                } else {
                    OpCode::Binary
                };
                Routed::Publish {
                    topic: topic.into(),
                    frame: super::frame(opcode, body),
                }
            }
            (_, "/healthz" | "/metrics") => text(405, "Method Not Allowed", "use GET\n"),
            (_, path) if path.starts_with("/publish/") => {
                text(405, "Method Not Allowed", "use POST\n")
            }
            _ => text(404, "Not Found", "not found\n"),
        }
    }

    /// The answer to an accepted publish: 202 with the subscribers reached.
    pub(crate) fn published(reached: u64) -> Vec<u8> {
        let body = format!("{{\"subscribers\":{reached}}}\n");
        http_response(
            202,
            "Accepted",
            &[],
            Some("application/json"),
            body.as_bytes(),
        )
    }
}

/// Compares secrets without an early exit, so timing does not tell how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
