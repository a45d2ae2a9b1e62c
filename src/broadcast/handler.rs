//! The embedder's side: the [`Handler`] trait and the [`Connection`] it acts through.

use std::sync::Arc;

use bytes::Bytes;

use super::history::{read_resume, Log, Recovery, Resuming};
use super::publication::{Position, Stamp};
use super::topic::{Subscriptions, Topics};
use crate::config::TopicLimits;
use crate::driver::ConnId;
use crate::protocol::handshake::Request;
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
    /// Refuse for this reason: its status and headers (`WWW-Authenticate`, `Retry-After`),
    /// counted in `uringcast_refusals_total`.
    Refuse(crate::refusal::Refusal),
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
///
/// # Panics
///
/// A callback that panics does not take its worker down: the panic is caught, what the
/// callback asked for is dropped, its connection is closed with 1011 (a panic in
/// `on_upgrade` answers 500), and `uringcast_handler_panics_total` counts it. The handler's
/// own state is whatever the panic left it in, so keep invariants that span a callback
/// unwind-safe.
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

    /// Appends the handler's own counters to `GET /metrics`, in the Prometheus text format.
    /// The default adds none.
    fn render_metrics(&self, out: &mut String) {
        let _ = out;
    }

    /// What a WebSocket silent for `--ping-interval` is sent (a protocol's own ping, as
    /// text) and its close code when it stays silent for another interval. The default is
    /// a WebSocket ping and 1001.
    fn keepalive(&self) -> crate::driver::Keepalive {
        crate::driver::Keepalive::default()
    }

    /// A plain HTTP request's head (not an upgrade): `Some` to serve it here, decided before
    /// any byte of its body is read; `None` (the default) leaves it to the engine's own
    /// endpoints (`/publish`, `/healthz`, `/metrics`).
    fn on_http_head(&mut self, request: &Request) -> Option<HttpHead> {
        let _ = request;
        None
    }

    /// A request [`on_http_head`](Self::on_http_head) chose to read, with its whole body:
    /// returns the complete response. `None` (the default) leaves it to the engine's
    /// endpoints.
    fn on_http(
        &mut self,
        call: &mut HttpCall<'_>,
        request: &Request,
        body: &[u8],
    ) -> Option<Vec<u8>> {
        let _ = (call, request, body);
        None
    }

    /// What a WebSocket subscriber of `topic` is told when what it missed cannot be given to
    /// it (a live gap its node could not fill from the log, or a stream made anew), with the
    /// topic's position now: a text message, encoded once per worker and reset. `None` (the
    /// default): the subscriber is closed with [`CloseCode::NOT_RECOVERED`] (4010), so that
    /// its reconnect tells it; an SSE stream gets `event: reset` whatever the handler says.
    fn reset_notice(&self, topic: &str, head: crate::broadcast::Position) -> Option<String> {
        let _ = (topic, head);
        None
    }

    /// With a broker's log (`--broker` and `--history`): what makes the payload subscribers
    /// get from a publication's payload and its position, for every publication that comes
    /// back from the broker, as [`Connection::publish_stamped`] does on one node. `None`
    /// (the default): payloads go out as published.
    fn stamp(&self) -> Option<crate::broadcast::Stamp> {
        None
    }

    /// With a broker: the node's side channel to the other nodes ([`ClusterBus`]), given once
    /// before any worker starts. Returns what hears the other nodes' messages; `None` (the
    /// default) when the handler shares nothing beyond its topics.
    ///
    /// [`ClusterBus`]: super::cluster::ClusterBus
    fn join_cluster(
        &self,
        bus: super::cluster::ClusterBus,
    ) -> Option<std::sync::Arc<dyn super::cluster::ClusterSink>> {
        let _ = bus;
        None
    }
}

/// How to read a plain HTTP request a [`Handler`] serves.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpHead {
    /// Read its body, at most this many bytes (else 413), then call [`Handler::on_http`].
    Read {
        /// The largest body accepted.
        max_body_bytes: usize,
    },
    /// Answer with this complete response without reading the body, and close.
    Respond(Vec<u8>),
}

/// A connection of any node: the node's random tag, the worker and its id there. A publish
/// that skips a peer skips it wherever the publish goes, through the broker too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub(crate) node: u64,
    pub(crate) worker: usize,
    pub(crate) conn: ConnId,
}

impl Peer {
    /// A peer from its parts, e.g. read back from an id made of them.
    pub fn new(node: u64, worker: usize, conn: ConnId) -> Self {
        Self { node, worker, conn }
    }

    /// The tag of its node (below 10^12, random per server).
    pub fn node(&self) -> u64 {
        self.node
    }

    /// Its worker's index.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Its id on that worker.
    pub fn conn(&self) -> ConnId {
        self.conn
    }
}

/// What a [`Handler`] serving an HTTP request may do: publish, and close subscribers.
pub struct HttpCall<'a> {
    actions: &'a mut Actions,
}

impl<'a> HttpCall<'a> {
    pub(crate) fn new(actions: &'a mut Actions) -> Self {
        Self { actions }
    }

    /// Publishes to every subscriber of `topic` on every worker, except `except` when given
    /// (a subscriber that must not get its own event back). Encoded once.
    pub fn publish_except(
        &mut self,
        topic: &str,
        opcode: OpCode,
        payload: &[u8],
        except: Option<Peer>,
    ) {
        self.actions.list.push(Action::PublishExcept(
            topic.into(),
            opcode,
            Bytes::copy_from_slice(payload),
            except,
            None,
        ));
    }

    /// [`publish_except`](Self::publish_except), with the payload subscribers get made by
    /// `stamp` once the publish has its position (with history on; without, `payload` as
    /// is). Still made and encoded once per publish.
    pub fn publish_stamped(
        &mut self,
        topic: &str,
        opcode: OpCode,
        payload: &[u8],
        except: Option<Peer>,
        stamp: Stamp,
    ) {
        self.actions.list.push(Action::PublishExcept(
            topic.into(),
            opcode,
            Bytes::copy_from_slice(payload),
            except,
            Some(stamp),
        ));
    }

    /// Closes every subscriber of `topic` on every worker, and on every node of the broker.
    pub fn close_subscribers(&mut self, topic: &str, code: CloseCode, reason: &str) {
        self.actions
            .list
            .push(Action::CloseSubscribers(topic.into(), code, reason.into()));
    }
}

/// One requested action, carried out in order once the handler returns.
#[derive(Debug)]
pub(crate) enum Action {
    /// A message to this connection: its encoded frame, and its payload (a slice of it).
    Send {
        opcode: OpCode,
        frame: Bytes,
        payload: Bytes,
    },
    Subscribe(Box<str>),
    /// A subscription from a position, with what the log held after it when asked, and
    /// whether the connection presented a position (only then is it counted as a recovery).
    SubscribeFrom(Box<str>, Box<Recovery>, Resuming),
    Unsubscribe(Box<str>),
    Publish(Box<str>, OpCode, Bytes),
    Close(CloseCode, Box<str>),
    /// A publish that skips one subscriber, its payload stamped with its position.
    PublishExcept(Box<str>, OpCode, Bytes, Option<Peer>, Option<Stamp>),
    /// Closes every subscriber of a topic, on every worker and node.
    CloseSubscribers(Box<str>, CloseCode, Box<str>),
}

/// What [`Connection::subscribe_from`] could give a connection of what it missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resumed {
    /// Everything after the position is sent first, then live publications: no gap and no
    /// duplicate. `replayed` publications were missed.
    Exact {
        /// Publications sent from history.
        replayed: usize,
        /// The position the last of them had (the topic's position when asked): live
        /// publications follow it.
        head: Position,
    },
    /// The position cannot be served exactly (another epoch, older than the history kept,
    /// more than `max_recover` behind, or unknown): only live publications follow, from
    /// `head`, the topic's position now.
    NotRecovered {
        /// The topic's current position.
        head: Position,
    },
    /// The position is of another epoch than the topic's (its node restarted, or a broker's
    /// stream was made anew), so what followed it there is lost; but the current epoch is
    /// kept from its first publication, and all of it is sent first (`replayed`), then live
    /// publications. `start` is the epoch's start (offset 0), where the connection now is.
    EpochStart {
        /// Publications sent from history: the whole epoch so far.
        replayed: usize,
        /// The epoch's start, before its first publication.
        start: Position,
        /// The position the last of them had: live publications follow it.
        head: Position,
    },
    /// The server keeps no history (`--history 0`): subscribed, live publications only.
    NoHistory,
}

#[derive(Debug, Default)]
pub(crate) struct Actions {
    pub list: Vec<Action>,
    /// Subscriptions refused during the call, for the worker's counter.
    pub refused: u64,
    /// What the subscriptions in `list` add to the connection's and the worker's counts.
    pub pending: Pending,
    /// Why the call closed the connection with [`Connection::refuse`], for the counter.
    pub refusal: Option<crate::refusal::Reason>,
}

impl Actions {
    /// Empties the actions for the next call, keeping the list's allocation.
    pub(crate) fn clear(&mut self) {
        self.list.clear();
        self.refused = 0;
        self.pending = Pending::default();
        self.refusal = None;
    }
}

/// What the subscriptions a handler call asked for so far add to the limits' counts: kept as
/// the call goes, so that each [`Connection::subscribe`] is checked in constant time however
/// many came before it in the same call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Subscriptions the connection does not hold yet.
    pub subscriptions: usize,
    /// Of those, the topics the worker does not hold yet.
    pub new_topics: usize,
}

/// Why [`Connection::subscribe`] refused a topic. Each refusal is counted in
/// `uringcast_subscribe_refusals_total`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The name is longer than the server's `max_topic_bytes`.
    #[error("topic name of {len} bytes is longer than the limit of {max}")]
    TopicTooLong {
        /// The name's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The connection holds `max_subscriptions_per_connection` already.
    #[error("the connection has {max} subscriptions, the limit")]
    TooManySubscriptions {
        /// The limit.
        max: usize,
    },
    /// The topic would be new on this worker, which has `max_topics_per_worker` already.
    #[error("this worker has {max} topics, the limit")]
    TooManyTopics {
        /// The limit.
        max: usize,
    },
    /// The connection is closed ([`Handler::on_close`](super::Handler::on_close)).
    #[error("the connection is closed")]
    Closed,
}

/// What a subscription made during a handler call is checked against: the worker's topics
/// and the connection's subscriptions as they were when the call began, plus the
/// subscriptions the call has asked for so far.
pub(crate) struct Gate<'a> {
    pub limits: TopicLimits,
    pub topics: &'a Topics,
    pub subs: &'a Subscriptions,
    /// The log, when history is on, and how far behind a recovery may be.
    pub log: Option<(&'a Arc<dyn Log>, usize)>,
}

impl Gate<'_> {
    /// Whether subscribing to `topic` after the `pending` subscriptions stays within the
    /// limits; if it does, `pending` counts it. Pending subscriptions are counted as if each
    /// were new (a topic asked for twice in one call counts twice), so a subscription allowed
    /// here is never refused when applied.
    pub(crate) fn check(&self, topic: &str, pending: &mut Pending) -> Result<(), SubscribeError> {
        let limits = self.limits;
        if topic.len() > limits.max_topic_bytes {
            return Err(SubscribeError::TopicTooLong {
                len: topic.len(),
                max: limits.max_topic_bytes,
            });
        }
        let held = |name: &str| {
            self.topics
                .id(name)
                .is_some_and(|id| self.subs.contains(id))
        };
        if held(topic) {
            return Ok(());
        }
        if self.subs.len() + pending.subscriptions >= limits.max_subscriptions_per_connection {
            return Err(SubscribeError::TooManySubscriptions {
                max: limits.max_subscriptions_per_connection,
            });
        }
        let new_topic = self.topics.id(topic).is_none();
        if new_topic && self.topics.count() + pending.new_topics >= limits.max_topics_per_worker {
            return Err(SubscribeError::TooManyTopics {
                max: limits.max_topics_per_worker,
            });
        }
        pending.subscriptions += 1;
        pending.new_topics += usize::from(new_topic);
        Ok(())
    }
}

/// A connection, as a [`Handler`] sees it during a call.
///
/// Sends, subscriptions, publishes and closes take effect when the call returns, in the
/// order they were made; a subscription made while a publish fans out applies after it.
pub struct Connection<'a, D> {
    id: ConnId,
    node: u64,
    worker: usize,
    data: &'a mut D,
    actions: &'a mut Actions,
    /// `None` once the connection is closed.
    gate: Option<Gate<'a>>,
}

impl<'a, D> Connection<'a, D> {
    pub(crate) fn new(
        id: ConnId,
        data: &'a mut D,
        actions: &'a mut Actions,
        gate: Option<Gate<'a>>,
    ) -> Self {
        Self {
            id,
            node: 0,
            worker: 0,
            data,
            actions,
            gate,
        }
    }

    /// This connection's id, unique on its worker while it is open.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Sets the node tag and the worker it runs on (the engine does, before the handler sees
    /// it).
    pub(crate) fn on_worker(mut self, node: u64, worker: usize) -> Self {
        self.node = node;
        self.worker = worker;
        self
    }

    /// This connection as a [`Peer`]: unique across nodes while it is open.
    pub fn peer(&self) -> Peer {
        Peer {
            node: self.node,
            worker: self.worker,
            conn: self.id,
        }
    }

    /// The embedder's state for this connection.
    pub fn data(&mut self) -> &mut D {
        self.data
    }

    /// Sends a message to this connection.
    pub fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        let frame = super::frame(opcode, payload);
        let payload = frame.slice(frame.len() - payload.len()..);
        self.actions.list.push(Action::Send {
            opcode,
            frame,
            payload,
        });
    }

    /// Subscribes this connection to a topic (already subscribed is `Ok`).
    ///
    /// # Errors
    ///
    /// A name longer than the server's `max_topic_bytes`, a connection at
    /// `max_subscriptions_per_connection`, a new topic on a worker at
    /// `max_topics_per_worker` (see [`SubscribeError`]), or a closed connection. The
    /// connection is not subscribed, and a refusal by a limit is counted.
    pub fn subscribe(&mut self, topic: &str) -> Result<(), SubscribeError> {
        let verdict = match &self.gate {
            Some(gate) => gate.check(topic, &mut self.actions.pending),
            None => Err(SubscribeError::Closed),
        };
        match verdict {
            Ok(()) => self.actions.list.push(Action::Subscribe(topic.into())),
            Err(SubscribeError::Closed) => {}
            Err(_) => self.actions.refused += 1,
        }
        verdict
    }

    /// Subscribes this connection to a topic from a position it presents (the last
    /// publication it has), and says whether what it missed can be given to it exactly.
    ///
    /// With [`Resumed::Exact`], the publications after `since` are sent to the connection
    /// when the call returns, before any live one, with no gap and no duplicate. With
    /// [`Resumed::EpochStart`] (a lone node's new epoch, kept from its start), that whole
    /// epoch is sent first. Otherwise only live publications follow. `since` of `None`
    /// subscribes from now, and tells the
    /// topic's current position. The publications' positions are
    /// [`Publication::position`](super::Publication::position); for a connection already
    /// subscribed, nothing is replayed.
    ///
    /// # Errors
    ///
    /// As [`subscribe`](Self::subscribe).
    pub fn subscribe_from(
        &mut self,
        topic: &str,
        since: Option<Position>,
    ) -> Result<Resumed, SubscribeError> {
        self.subscribe_from_with(topic, since, |_| None)
    }

    /// [`subscribe_from`](Self::subscribe_from), with a first message to this connection,
    /// made by `first` from what the subscription resumed, sent before anything replayed
    /// (a protocol's "subscribed" answer). Nothing is sent when the subscription is refused.
    ///
    /// # Errors
    ///
    /// As [`subscribe`](Self::subscribe).
    pub fn subscribe_from_with(
        &mut self,
        topic: &str,
        since: Option<Position>,
        first: impl FnOnce(&Resumed) -> Option<Vec<u8>>,
    ) -> Result<Resumed, SubscribeError> {
        self.subscribe_from_with_all(topic, since, |resumed| first(resumed).into_iter().collect())
    }

    /// [`subscribe_from_with`](Self::subscribe_from_with) with any number of first messages,
    /// all sent before anything replayed.
    pub(crate) fn subscribe_from_with_all(
        &mut self,
        topic: &str,
        since: Option<Position>,
        first: impl FnOnce(&Resumed) -> Vec<Vec<u8>>,
    ) -> Result<Resumed, SubscribeError> {
        let verdict = match &self.gate {
            Some(gate) => gate
                .check(topic, &mut self.actions.pending)
                .map(|()| gate.log),
            None => Err(SubscribeError::Closed),
        };
        let log = match verdict {
            Ok(log) => log,
            Err(error) => {
                if error != SubscribeError::Closed {
                    self.actions.refused += 1;
                }
                return Err(error);
            }
        };
        let Some((log, max_recover)) = log else {
            for message in first(&Resumed::NoHistory) {
                self.send(OpCode::Text, &message);
            }
            self.actions.list.push(Action::Subscribe(topic.into()));
            return Ok(Resumed::NoHistory);
        };
        let (recovery, resuming) = read_resume(log.as_ref(), topic, since, max_recover);
        let resumed = match (&recovery, resuming) {
            (Recovery::Recovered { publications, head }, Resuming::EpochStart) => {
                Resumed::EpochStart {
                    replayed: publications.len(),
                    start: Position {
                        epoch: head.epoch,
                        offset: 0,
                    },
                    head: *head,
                }
            }
            (Recovery::Recovered { publications, head }, _) => Resumed::Exact {
                replayed: publications.len(),
                head: *head,
            },
            (Recovery::NotRecovered { head }, _) => Resumed::NotRecovered { head: *head },
        };
        for message in first(&resumed) {
            self.send(OpCode::Text, &message);
        }
        self.actions.list.push(Action::SubscribeFrom(
            topic.into(),
            Box::new(recovery),
            resuming,
        ));
        Ok(resumed)
    }

    /// Unsubscribes this connection from a topic.
    pub fn unsubscribe(&mut self, topic: &str) {
        self.actions.list.push(Action::Unsubscribe(topic.into()));
    }

    /// Publishes a message to every subscriber of a topic on every worker (this connection
    /// included, if it is subscribed).
    pub fn publish(&mut self, topic: &str, opcode: OpCode, payload: &[u8]) {
        self.actions.list.push(Action::Publish(
            topic.into(),
            opcode,
            Bytes::copy_from_slice(payload),
        ));
    }

    /// Publishes to every subscriber of a topic on every worker but this connection (a
    /// message must not come back to its sender). Encoded once.
    pub fn publish_to_others(&mut self, topic: &str, opcode: OpCode, payload: &[u8]) {
        let peer = self.peer();
        self.actions.list.push(Action::PublishExcept(
            topic.into(),
            opcode,
            Bytes::copy_from_slice(payload),
            Some(peer),
            None,
        ));
    }

    /// Publishes to every subscriber of a topic on every worker, but this connection when
    /// `to_others`, with the payload subscribers get made by `stamp` once the publish has
    /// its position (see [`HttpCall::publish_stamped`]).
    pub fn publish_stamped(
        &mut self,
        topic: &str,
        opcode: OpCode,
        payload: &[u8],
        to_others: bool,
        stamp: Stamp,
    ) {
        let except = to_others.then(|| self.peer());
        self.actions.list.push(Action::PublishExcept(
            topic.into(),
            opcode,
            Bytes::copy_from_slice(payload),
            except,
            Some(stamp),
        ));
    }

    /// Starts the closing handshake with this code and reason.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.actions.list.push(Action::Close(code, reason.into()));
    }

    /// Closes the connection with 1008 (policy violation, RFC 6455 §7.4.1) for `reason`,
    /// whose label is the close reason, and counts it in `uringcast_refusals_total`.
    pub fn refuse(&mut self, reason: crate::refusal::Reason) {
        if self.gate.is_none() {
            return;
        }
        self.actions.refusal.get_or_insert(reason);
        self.close(CloseCode::POLICY_VIOLATION, reason.label());
    }
}
