//! The [`Pusher`] handler: the WebSocket side of `--mode pusher` on the broadcast engine.
//!
//! Each channel of an app is the engine topic `{app_id}:{channel}`; a signed-in user's
//! connections also hold `{app_id}:#server-to-user-{id}`, which the HTTP API's
//! `terminate_connections` closes. What workers must agree on (presence members,
//! subscription counts, cached events) lives in [`Node`], shared behind an `Arc`.

mod subscription;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::app::{App, Apps};
use super::auth;
use super::channel::Channel;
use super::message::{self, ClientMessage, Data};
use super::rate::RateLimit;
use super::state::{self, AppState};

use super::socket_id;
use super::webhook::{self, Webhooks};
use crate::broadcast::{Connection, Decision, Handler, HttpCall, HttpHead, Message};
use crate::protocol::handshake::Request;
use crate::protocol::{CloseCode, OpCode};

/// Close and error codes of protocol.adoc.
pub mod codes {
    /// 4001: the app does not exist.
    pub const APP_DOES_NOT_EXIST: u16 = 4001;
    /// 4004: the app is over its connection quota.
    pub const OVER_QUOTA: u16 = 4004;
    /// 4006: the protocol version is not a number.
    pub const INVALID_VERSION: u16 = 4006;
    /// 4007: the protocol version is not supported.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    /// 4008: no protocol version was given.
    pub const NO_PROTOCOL: u16 = 4008;
    /// 4009: the connection is not authorized (failed sign-in, terminated).
    pub const UNAUTHORIZED: u16 = 4009;
    /// 4201: the server's `pusher:ping` got no answer within the ping interval.
    pub const PONG_NOT_RECEIVED: u16 = 4201;
    /// 4301: a client event over the rate limit.
    pub const RATE_LIMITED: u16 = 4301;
}

/// The oldest protocol version served.
pub const MIN_PROTOCOL: u32 = 7;
/// The longest signed-in user id accepted, in bytes (the same as a presence member's).
pub const MAX_USER_ID_BYTES: usize = super::presence::MAX_USER_ID_BYTES;
/// The prefix of a user's own channel (server-to-user events, and termination).
pub const USER_CHANNEL_PREFIX: &str = "#server-to-user-";

/// What every worker of the node shares.
#[derive(Debug)]
pub struct Node {
    pub(crate) apps: Apps,
    states: HashMap<String, Mutex<AppState>>,
    /// Open connections per app id.
    connections: HashMap<String, AtomicUsize>,
    /// The webhook sender, when an app has webhooks.
    pub(crate) webhooks: Option<Webhooks>,
    /// With a broker: the cluster's side (`peering.rs`).
    pub(crate) peering: std::sync::OnceLock<super::peering::Peering>,
}

impl Node {
    /// The shared state for these apps.
    pub fn new(apps: Apps) -> Self {
        let states = apps
            .iter()
            .map(|app| (app.id.clone(), Mutex::new(AppState::default())))
            .collect();
        // Every URL passed `Apps::new`, so a refusal here is only a thread that would not
        // start, which `Webhooks::start` logs.
        let webhooks = Webhooks::start(&apps).unwrap_or_default();
        let connections = apps
            .iter()
            .map(|app| (app.id.clone(), AtomicUsize::new(0)))
            .collect();
        Self {
            apps,
            states,
            connections,
            webhooks,
            peering: std::sync::OnceLock::new(),
        }
    }

    /// Counts a new connection to `app`; false (and nothing counted) past its quota.
    fn admit(&self, app: &App) -> bool {
        let count = &self.connections[&app.id];
        let limit = app.limits.max_connections.unwrap_or(usize::MAX);
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts a connection to `app` gone.
    fn release(&self, app: &App) {
        self.connections[&app.id].fetch_sub(1, Ordering::AcqRel);
    }

    /// Queues a webhook event for `app`, if it has webhooks that want it.
    pub(crate) fn webhook(&self, app: &App, event: impl FnOnce() -> webhook::Event) {
        if let Some(webhooks) = &self.webhooks {
            if let Some(index) = self.apps.index_of(&app.id) {
                webhooks.send(index, event());
            }
        }
    }

    /// An app's channel state.
    pub(crate) fn state(&self, app: &App) -> std::sync::MutexGuard<'_, AppState> {
        // Every app has its state from `new`.
        state::lock(&self.states[&app.id])
    }
}

/// The engine topic of an app's channel.
pub(crate) fn topic(app: &App, channel: &str) -> String {
    format!("{}:{channel}", app.id)
}

/// `--mode pusher`: a Pusher Channels (protocol 7) server.
#[derive(Clone, Debug)]
pub struct Pusher {
    pub(crate) node: Arc<Node>,
}

/// Every channel event carries its position when history is on.
const STAMP: crate::broadcast::Stamp = message::stamp_position;

impl Pusher {
    /// A handler serving these apps.
    pub fn new(apps: Apps) -> Self {
        Self {
            node: Arc::new(Node::new(apps)),
        }
    }
}

/// A connection's Pusher state.
#[derive(Debug, Default)]
pub struct PusherConn {
    app: Option<Arc<App>>,
    socket_id: String,
    /// Subscribed channels, with the presence user id where there is one.
    channels: HashMap<Box<str>, Option<String>>,
    rate: Option<RateLimit>,
    user: Option<String>,
}

impl Handler for Pusher {
    type Data = PusherConn;

    fn on_upgrade(&mut self, request: &Request) -> Decision {
        // Unknown keys and bad versions are told apart after the upgrade, with close codes
        // pusher-js understands; any other path is not ours.
        match request.path().strip_prefix("/app/") {
            Some(key) if !key.is_empty() && !key.contains('/') => Decision::Accept,
            _ => Decision::Reject(404),
        }
    }

    fn on_open(&mut self, conn: &mut Connection<'_, PusherConn>, request: &Request) {
        let key = request.path().strip_prefix("/app/").unwrap_or_default();
        let Some(app) = self.node.apps.by_key(key).cloned() else {
            return refuse(conn, codes::APP_DOES_NOT_EXIST, "app does not exist");
        };
        let version = request
            .query()
            .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("protocol=")));
        match version.map(str::parse::<u32>) {
            None => return refuse(conn, codes::NO_PROTOCOL, "no protocol version supplied"),
            Some(Err(_)) => return refuse(conn, codes::INVALID_VERSION, "invalid version string"),
            Some(Ok(v)) if v < MIN_PROTOCOL => {
                return refuse(
                    conn,
                    codes::UNSUPPORTED_PROTOCOL,
                    "unsupported protocol version",
                )
            }
            Some(Ok(_)) => {}
        }
        if !self.node.admit(&app) {
            return refuse(
                conn,
                codes::OVER_QUOTA,
                "application is over connection quota",
            );
        }
        let socket_id = socket_id::encode(conn.peer());
        let established =
            message::encode_connection_established(&socket_id, app.limits.activity_timeout);
        conn.send(OpCode::Text, established.as_bytes());
        let data = conn.data();
        data.rate = Some(RateLimit::new(app.limits.client_events_per_second));
        data.socket_id = socket_id;
        data.app = Some(app);
    }

    fn on_message(&mut self, conn: &mut Connection<'_, PusherConn>, message: Message<'_>) {
        let Some(app) = conn.data().app.clone() else {
            return;
        };
        let Some(text) = message.as_text() else {
            return send_error(conn, None, "messages are JSON text");
        };
        match ClientMessage::decode(text) {
            Ok(ClientMessage::Ping) => conn.send(OpCode::Text, message::encode_pong().as_bytes()),
            Ok(ClientMessage::Pong | ClientMessage::Other) => {}
            Ok(ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
                resume,
            }) => self.subscribe(
                conn,
                &app,
                &channel,
                auth.as_deref(),
                channel_data.as_deref(),
                resume,
            ),
            Ok(ClientMessage::Unsubscribe { channel }) => self.unsubscribe(conn, &app, &channel),
            Ok(ClientMessage::ClientEvent {
                event,
                channel,
                data,
            }) => self.client_event(conn, &app, &event, &channel, data.0),
            Ok(ClientMessage::Signin { auth, user_data }) => {
                self.signin(conn, &app, auth.as_deref(), &user_data)
            }
            Err(error) => send_error(conn, None, &error.to_string()),
        }
    }

    fn on_close(&mut self, conn: &mut Connection<'_, PusherConn>) {
        let Some(app) = conn.data().app.clone() else {
            return;
        };
        self.node.release(&app);
        let channels = std::mem::take(&mut conn.data().channels);
        for (channel, user_id) in channels {
            self.left(conn, &app, &channel, user_id.as_deref());
        }
    }

    fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP uringcast_pusher_connections Open connections per app on this node."
        );
        let _ = writeln!(out, "# TYPE uringcast_pusher_connections gauge");
        for app in self.node.apps.iter() {
            let open = self.node.connections[&app.id].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "uringcast_pusher_connections{{app=\"{}\"}} {open}",
                app.id
            );
        }
        if let Some(webhooks) = &self.node.webhooks {
            webhooks.render_metrics(out);
        }
        self.node.render_cluster_metrics(out);
    }

    fn keepalive(&self) -> crate::driver::Keepalive {
        crate::driver::Keepalive {
            text_ping: Some(message::encode_ping().into()),
            close_code: CloseCode(codes::PONG_NOT_RECEIVED),
            close_reason: "Pong reply not received",
        }
    }

    fn on_http_head(&mut self, request: &Request) -> Option<HttpHead> {
        if crate::sse::is_event_stream(request) {
            // The engine's Server-Sent Events would read any channel, private ones included,
            // with no signature: never served here.
            return Some(HttpHead::Respond(
                crate::protocol::handshake::http_response(
                    404,
                    "Not Found",
                    &[("Connection", "close")],
                    Some("text/plain; charset=utf-8"),
                    b"Server-Sent Events are not served in pusher mode\n",
                ),
            ));
        }
        super::api::head(&self.node, request)
    }

    fn on_http(
        &mut self,
        call: &mut HttpCall<'_>,
        request: &Request,
        body: &[u8],
    ) -> Option<Vec<u8>> {
        super::api::serve(&self.node, call, request, body)
    }

    fn join_cluster(
        &self,
        bus: crate::broadcast::cluster::ClusterBus,
    ) -> Option<Arc<dyn crate::broadcast::cluster::ClusterSink>> {
        super::peering::join(&self.node, bus)
    }

    /// `uringcast:resume_failed` on the channel, with its position now: the client's
    /// position is no longer one it can resume from.
    fn reset_notice(&self, topic: &str, head: crate::broadcast::Position) -> Option<String> {
        let (_, channel) = topic.split_once(':')?;
        Some(message::encode_resume_failed(channel, Some(head)))
    }

    /// Channel events carry `offset` and `epoch` on every node, the broker's positions.
    fn stamp(&self) -> Option<crate::broadcast::Stamp> {
        Some(STAMP)
    }
}

impl Pusher {
    fn client_event(
        &mut self,
        conn: &mut Connection<'_, PusherConn>,
        app: &App,
        event: &str,
        name: &str,
        data: &serde_json::value::RawValue,
    ) {
        let Some(user_id) = conn.data().channels.get(name).cloned() else {
            return send_error(
                conn,
                None,
                "client events need a subscription to their channel",
            );
        };
        let Ok(channel) = Channel::parse(name) else {
            return;
        };
        if !channel.takes_client_events() {
            return send_error(
                conn,
                None,
                "client events are only for private and presence channels",
            );
        }
        if data.get().len() > app.limits.max_event_data_bytes || event.len() > 200 {
            return send_error(conn, None, "client event over the size limit");
        }
        let allowed = conn
            .data()
            .rate
            .as_mut()
            .is_some_and(|r| r.allow(Instant::now()));
        if !allowed {
            return send_error(
                conn,
                Some(codes::RATE_LIMITED),
                "client event rejected due to rate limit",
            );
        }
        let encoded = message::encode_event(event, name, Data::Raw(data), user_id.as_deref());
        conn.publish_stamped(
            &topic(app, name),
            OpCode::Text,
            encoded.as_bytes(),
            true,
            STAMP,
        );
        if channel.is_cache() {
            self.node.state(app).cache(name, encoded);
        }
        let socket_id = conn.data().socket_id.clone();
        self.node.webhook(app, || webhook::Event::ClientEvent {
            channel: name.to_owned(),
            event: event.to_owned(),
            data: data.get().to_owned(),
            socket_id,
            user_id,
        });
    }

    fn signin(
        &mut self,
        conn: &mut Connection<'_, PusherConn>,
        app: &App,
        auth: Option<&str>,
        user_data: &str,
    ) {
        let socket_id = conn.data().socket_id.clone();
        if let Err(error) = auth::verify_signin(&app.key, &app.secret, &socket_id, user_data, auth)
        {
            return refuse(
                conn,
                codes::UNAUTHORIZED,
                &format!("sign-in refused: {error}"),
            );
        }
        let id = serde_json::from_str::<serde_json::Value>(user_data)
            .ok()
            .and_then(|v| match &v["id"] {
                serde_json::Value::String(id) => Some(id.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .filter(|id| !id.is_empty() && id.len() <= MAX_USER_ID_BYTES);
        let Some(id) = id else {
            return refuse(
                conn,
                codes::UNAUTHORIZED,
                "user_data needs an id of 1 to 128 bytes",
            );
        };
        if let Some(old) = conn.data().user.take() {
            conn.unsubscribe(&topic(app, &format!("{USER_CHANNEL_PREFIX}{old}")));
        }
        if let Err(refusal) = conn.subscribe(&topic(app, &format!("{USER_CHANNEL_PREFIX}{id}"))) {
            return send_error(conn, None, &refusal.to_string());
        }
        conn.data().user = Some(id);
        conn.send(
            OpCode::Text,
            message::encode_signin_success(user_data).as_bytes(),
        );
    }
}

/// `pusher:error`, then close with the same code.
fn refuse(conn: &mut Connection<'_, PusherConn>, code: u16, reason: &str) {
    send_error(conn, Some(code), reason);
    conn.close(CloseCode(code), reason);
}

fn send_error(conn: &mut Connection<'_, PusherConn>, code: Option<u16>, text: &str) {
    conn.send(OpCode::Text, message::encode_error(code, text).as_bytes());
}

fn subscription_error(
    conn: &mut Connection<'_, PusherConn>,
    channel: &str,
    kind: &str,
    error: &str,
    status: u16,
) {
    let text = message::encode_subscription_error(channel, kind, error, status);
    conn.send(OpCode::Text, text.as_bytes());
}
