//! Pusher Channels protocol 7 on the client side, sans IO: each connection waits for
//! `pusher:connection_established`, subscribes to its channel (signing a private or presence
//! subscription with the app's secret, as the app's auth endpoint would, [`signing`]), and
//! counts as up on `pusher_internal:subscription_succeeded`. A delivery is the run's event on
//! that channel, its `data` string the stamped payload. `pusher:ping` is answered. Publishers
//! trigger through the signed HTTP API ([`Channels::trigger_body`], [`Channels::trigger_target`]) or send client events
//! ([`Channels::client_event`]).

pub mod signing;

use serde_json::{json, Value};

use self::signing::Credentials;
use super::{Incoming, State};

/// The most channels of a run: one HTTP trigger names them all, and Pusher's API takes at
/// most 100 channels per event.
pub const MAX_CHANNELS: u64 = 100;

/// Which kind of channel the run's subscribers join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `NAME`: no auth.
    Public,
    /// `private-NAME`: auth over `socket_id:channel`.
    Private,
    /// `presence-NAME`: auth over `socket_id:channel:channel_data`, one user per connection.
    Presence,
}

/// The run's channels and how a connection joins one: connection `n` joins channel
/// `n % count`.
#[derive(Clone, Debug)]
pub struct Channels {
    credentials: Credentials,
    kind: Kind,
    names: Vec<String>,
    /// The event name deliveries carry (`client-...` for client events).
    event: String,
}

impl Channels {
    /// `count` channels `{prefix}{base}-{i}` of `kind`; deliveries are events named `event`.
    pub fn new(credentials: Credentials, kind: Kind, base: &str, count: u64, event: &str) -> Self {
        let prefix = match kind {
            Kind::Public => "",
            Kind::Private => "private-",
            Kind::Presence => "presence-",
        };
        Self {
            credentials,
            kind,
            names: (0..count.max(1))
                .map(|i| format!("{prefix}{base}-{i}"))
                .collect(),
            event: event.to_owned(),
        }
    }

    /// The channel connection `conn` joins.
    pub fn of(&self, conn: u64) -> &str {
        // `names` is never empty (`count.max(1)`).
        &self.names[(conn % self.names.len() as u64) as usize]
    }

    /// One received text message of connection `conn` in `state`: what it meant, and the
    /// answers to send into `out`.
    pub fn incoming(
        &self,
        state: &mut State,
        conn: u64,
        payload: &[u8],
        out: &mut Vec<Vec<u8>>,
    ) -> Incoming {
        let Ok(message) = serde_json::from_slice::<Value>(payload) else {
            return Incoming::Nothing;
        };
        let event = message.get("event").and_then(Value::as_str).unwrap_or("");
        match (event, *state) {
            ("pusher:ping", _) => {
                out.push(br#"{"event":"pusher:pong","data":{}}"#.to_vec());
                Incoming::Nothing
            }
            ("pusher:connection_established", State::AwaitOpen) => {
                // `data` is a JSON string holding an object.
                let data = message.get("data").and_then(Value::as_str).unwrap_or("");
                let socket_id = serde_json::from_str::<Value>(data).ok().and_then(|d| {
                    d.get("socket_id")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                });
                let Some(socket_id) = socket_id else {
                    return Incoming::Failed(format!(
                        "pusher:connection_established without a socket_id: {data}"
                    ));
                };
                out.push(self.subscribe(conn, &socket_id));
                *state = State::AwaitConnect;
                Incoming::Nothing
            }
            ("pusher_internal:subscription_succeeded", State::AwaitConnect)
                if self.on_channel(&message, conn) =>
            {
                *state = State::Ready;
                Incoming::Ready
            }
            (
                "pusher:subscription_error" | "pusher:error",
                State::AwaitOpen | State::AwaitConnect,
            ) => Incoming::Failed(format!(
                "{event}: {}",
                message.get("data").unwrap_or(&Value::Null)
            )),
            (name, State::Ready) if name == self.event && self.on_channel(&message, conn) => {
                match message.get("data") {
                    Some(Value::String(text)) => Incoming::Extracted(text.clone().into_bytes()),
                    _ => Incoming::Nothing,
                }
            }
            _ => Incoming::Nothing,
        }
    }

    /// A client event from connection `conn` carrying `payload` (a UTF-8 stamp), into `buf`.
    pub fn client_event(&self, conn: u64, payload: &str, buf: &mut Vec<u8>) {
        let message = json!({"event": self.event, "channel": self.of(conn), "data": payload});
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, &message);
    }

    /// The body of an HTTP trigger of `payload` to every channel of the run.
    pub fn trigger_body(&self, payload: &str) -> Vec<u8> {
        let body = json!({"name": self.event, "channels": self.names, "data": payload});
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The path and signed query of a trigger with `body` at `timestamp` (Unix seconds).
    pub fn trigger_target(&self, body: &[u8], timestamp: u64) -> String {
        let path = format!("/apps/{}/events", self.credentials.app_id);
        let query = self
            .credentials
            .signed_query("POST", &path, body, timestamp);
        format!("{path}?{query}")
    }

    /// The WebSocket path of the app: `/app/{key}` with the protocol version.
    pub fn websocket_path(&self) -> String {
        format!(
            "/app/{}?protocol=7&client=uringcast-load&version={}",
            self.credentials.key,
            env!("CARGO_PKG_VERSION")
        )
    }

    /// `pusher:subscribe` of connection `conn` to its channel, signed for `socket_id`.
    fn subscribe(&self, conn: u64, socket_id: &str) -> Vec<u8> {
        self.subscribe_as(self.of(conn), &format!("load-{conn}"), socket_id)
    }

    /// `pusher:subscribe` of churning member `member` (user `churn-{member}`) to the first
    /// channel, signed for `socket_id`.
    pub fn churn_subscribe(&self, member: u64, socket_id: &str) -> Vec<u8> {
        self.subscribe_as(&self.names[0], &format!("churn-{member}"), socket_id)
    }

    /// `pusher:subscribe` to `channel`, signed for `socket_id`; `user` is the presence member.
    fn subscribe_as(&self, channel: &str, user: &str, socket_id: &str) -> Vec<u8> {
        let data = match self.kind {
            Kind::Public => json!({ "channel": channel }),
            Kind::Private => json!({
                "channel": channel,
                "auth": self.credentials.channel_auth(socket_id, channel, None),
            }),
            Kind::Presence => {
                let channel_data = presence_member(user);
                json!({
                    "channel": channel,
                    "auth": self.credentials.channel_auth(socket_id, channel, Some(&channel_data)),
                    "channel_data": channel_data,
                })
            }
        };
        serde_json::to_vec(&json!({"event": "pusher:subscribe", "data": data})).unwrap_or_default()
    }

    fn on_channel(&self, message: &Value, conn: u64) -> bool {
        message.get("channel").and_then(Value::as_str) == Some(self.of(conn))
    }
}

/// A presence member's `channel_data`: one user per connection.
pub fn presence_member(user: &str) -> String {
    json!({"user_id": user, "user_info": {}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels(kind: Kind, count: u64) -> Channels {
        Channels::new(
            Credentials::new("1", "key", "secret"),
            kind,
            "load",
            count,
            "tick",
        )
    }

    fn established(id: &str) -> Vec<u8> {
        json!({"event": "pusher:connection_established",
               "data": json!({"socket_id": id, "activity_timeout": 120}).to_string()})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn subscribes_signed_then_counts_its_channels_events() {
        let c = channels(Kind::Private, 3);
        let mut state = State::AwaitOpen;
        let mut out = Vec::new();
        assert_eq!(
            c.incoming(&mut state, 4, &established("1.2"), &mut out),
            Incoming::Nothing
        );
        assert_eq!(state, State::AwaitConnect);
        let sub: Value = serde_json::from_slice(&out[0]).unwrap();
        assert_eq!(sub["event"], "pusher:subscribe");
        assert_eq!(sub["data"]["channel"], "private-load-1");
        let expected =
            Credentials::new("1", "key", "secret").channel_auth("1.2", "private-load-1", None);
        assert_eq!(sub["data"]["auth"], expected.as_str());
        // Another channel's success does not count; its own does.
        let ok = |ch: &str| {
            json!({"event": "pusher_internal:subscription_succeeded", "channel": ch, "data": "{}"})
                .to_string()
                .into_bytes()
        };
        assert_eq!(
            c.incoming(&mut state, 4, &ok("private-load-0"), &mut out),
            Incoming::Nothing
        );
        assert_eq!(
            c.incoming(&mut state, 4, &ok("private-load-1"), &mut out),
            Incoming::Ready
        );
        let event = |name: &str, ch: &str, data: Value| {
            json!({"event": name, "channel": ch, "data": data})
                .to_string()
                .into_bytes()
        };
        assert_eq!(
            c.incoming(
                &mut state,
                4,
                &event("tick", "private-load-1", json!("abc")),
                &mut out
            ),
            Incoming::Extracted(b"abc".to_vec())
        );
        for other in [
            event("other", "private-load-1", json!("abc")),
            event("tick", "private-load-2", json!("abc")),
            event("tick", "private-load-1", json!({"a": 1})),
            b"not json".to_vec(),
        ] {
            assert_eq!(
                c.incoming(&mut state, 4, &other, &mut out),
                Incoming::Nothing
            );
        }
        out.clear();
        assert_eq!(
            c.incoming(
                &mut state,
                4,
                br#"{"event":"pusher:ping","data":{}}"#,
                &mut out
            ),
            Incoming::Nothing
        );
        assert_eq!(out, [br#"{"event":"pusher:pong","data":{}}"#.to_vec()]);
    }

    #[test]
    fn presence_signs_its_member_and_errors_fail_the_connection() {
        let c = channels(Kind::Presence, 1);
        let mut state = State::AwaitOpen;
        let mut out = Vec::new();
        c.incoming(&mut state, 7, &established("9.9"), &mut out);
        let sub: Value = serde_json::from_slice(&out[0]).unwrap();
        let data = sub["data"]["channel_data"].as_str().unwrap();
        assert_eq!(data, presence_member("load-7"));
        let creds = Credentials::new("1", "key", "secret");
        assert_eq!(
            sub["data"]["auth"],
            creds
                .channel_auth("9.9", "presence-load-0", Some(data))
                .as_str()
        );
        let error = br#"{"event":"pusher:subscription_error","channel":"presence-load-0","data":{"type":"AuthError","status":401}}"#;
        assert!(matches!(
            c.incoming(&mut state, 7, error, &mut out),
            Incoming::Failed(_)
        ));
        // A churning member: another user on the first channel, signed for its socket.
        let churn: Value = serde_json::from_slice(&c.churn_subscribe(3, "5.5")).unwrap();
        let data = churn["data"]["channel_data"].as_str().unwrap();
        assert_eq!(data, presence_member("churn-3"));
        assert_eq!(churn["data"]["channel"], "presence-load-0");
        assert_eq!(
            churn["data"]["auth"],
            creds
                .channel_auth("5.5", "presence-load-0", Some(data))
                .as_str()
        );
        // No socket id: failed too.
        let mut state = State::AwaitOpen;
        let bad = br#"{"event":"pusher:connection_established","data":"{}"}"#;
        assert!(matches!(
            c.incoming(&mut state, 7, bad, &mut out),
            Incoming::Failed(_)
        ));
    }

    #[test]
    fn triggers_name_every_channel_and_are_signed() {
        let c = channels(Kind::Public, 2);
        let body = c.trigger_body("stamp");
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            json!({"name": "tick", "channels": ["load-0", "load-1"], "data": "stamp"})
        );
        let target = c.trigger_target(&body, 1000);
        let expected = Credentials::new("1", "key", "secret").signed_query(
            "POST",
            "/apps/1/events",
            &body,
            1000,
        );
        assert_eq!(target, format!("/apps/1/events?{expected}"));
        let mut buf = Vec::new();
        c.client_event(3, "s", &mut buf);
        assert_eq!(
            serde_json::from_slice::<Value>(&buf).unwrap(),
            json!({"event": "tick", "channel": "load-1", "data": "s"})
        );
        assert!(c.websocket_path().starts_with("/app/key?protocol=7&"));
    }
}
