//! The application protocol a connection speaks over WebSocket, between the engine's frames and
//! the scenario's stamped payloads. Plain WebSocket needs none (the engine then has no
//! [`Spec`]); a server with a protocol of its own does:
//!
//! - `--on-open FILE`: messages sent once the connection is up (after the upgrade, or after
//!   Socket.IO's namespace connect), one per line, with `{conn}` (the connection's number in
//!   the run) and `{topic}` substituted;
//! - `--ready-when POINTER=VALUE`: the connection counts as up (subscribed) only once a JSON
//!   message has VALUE at the JSON pointer (RFC 6901); until then nothing it receives is a
//!   delivery, and the run's traffic waits for it like for a handshake;
//! - `--payload-at POINTER`: a delivery is a JSON message whose string at POINTER is the
//!   stamped payload; other messages are the protocol's own and are not counted. WebSocket
//!   publishers wrap their payload the same way (`--publish-template FILE`, or an object
//!   built from the pointer);
//! - `--protocol socketio`: Socket.IO v5 over Engine.IO v4's WebSocket transport
//!   ([`socketio`]).
//!
//! It is sans-IO: [`Spec::opened`] and [`Spec::incoming`] take what arrived and return the
//! messages to send and what the message meant; the engine does the sending.

pub mod pusher;
pub mod socketio;

use serde_json::Value;

use uringcast::protocol::OpCode;

/// The most `--on-open` messages.
pub const MAX_ON_OPEN_MESSAGES: usize = 100;
/// The largest `--on-open` or `--publish-template` file.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

/// `--protocol`: what the connection speaks over WebSocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Messages are the payload, or JSON around it (`--payload-at`).
    WebSocket,
    /// Socket.IO v5 over Engine.IO v4 (WebSocket transport only).
    SocketIo,
    /// Pusher Channels protocol 7 (the `pusher` scenario, [`pusher`]).
    Pusher,
}

/// How every connection of a run speaks, built once from the flags.
#[derive(Clone, Debug)]
pub struct Spec {
    protocol: Protocol,
    /// `--on-open`'s messages, `{topic}` already substituted.
    on_open: Vec<String>,
    ready_when: Option<ReadyWhen>,
    /// Where a delivery's payload is: in the message's JSON, or (Socket.IO) in an event's
    /// array (`/1`: its first argument).
    payload_at: Option<String>,
    /// How a data message is sent: the text around the payload's JSON string.
    envelope: Option<Envelope>,
    /// The Pusher scenario's channels and credentials.
    pusher: Option<pusher::Channels>,
}

/// `--ready-when POINTER=VALUE`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadyWhen {
    /// The JSON pointer.
    pub pointer: String,
    /// The value it must hold.
    pub value: Value,
}

/// A data message's text around the payload, which goes in as a JSON string; `{conn}` is
/// substituted when sent.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Envelope {
    before: String,
    after: String,
}

/// Where one connection is in its protocol's opening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Socket.IO: waiting for Engine.IO's open packet; Pusher: for
    /// `pusher:connection_established`.
    AwaitOpen,
    /// Socket.IO: the namespace connect sent, waiting for its answer; Pusher: the subscribe
    /// sent, waiting for `pusher_internal:subscription_succeeded`.
    AwaitConnect,
    /// `--ready-when`: waiting for the message that says subscribed.
    AwaitReady,
    /// Up: data messages are deliveries.
    Ready,
}

/// What one received message meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Protocol traffic (or a message before the connection was ready): nothing to count.
    Nothing,
    /// The connection just became ready.
    Ready,
    /// A delivery: the message itself is the payload.
    AsIs,
    /// A delivery: this text (from inside the message) is the payload.
    Extracted(Vec<u8>),
    /// The server refused or ended the session.
    Failed(String),
}

/// Why the protocol flags were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A JSON pointer that does not start with `/`.
    #[error("{flag} {pointer:?}: a JSON pointer is empty or starts with / (RFC 6901)")]
    Pointer {
        /// The flag.
        flag: &'static str,
        /// The pointer given.
        pointer: String,
    },
    /// `--ready-when` without `=`.
    #[error("--ready-when {0:?}: expected POINTER=VALUE, e.g. /type=subscribed")]
    ReadyWhen(String),
    /// Too many `--on-open` messages, or a file too large.
    #[error("{flag}: {what} exceeds the limit of {limit}")]
    TooLarge {
        /// The flag.
        flag: &'static str,
        /// What was counted.
        what: String,
        /// The limit.
        limit: usize,
    },
    /// A publish template without `{payload}`, or that is not JSON once filled in.
    #[error("--publish-template: {0}")]
    Template(String),
}

impl Spec {
    /// The run's protocol: `on_open` is `--on-open`'s file content (one message per line),
    /// `template` `--publish-template`'s; `topic` fills `{topic}`; `emit` is the Socket.IO
    /// event a data message is sent as (`publish`, `echo`).
    ///
    /// # Errors
    ///
    /// [`SpecError`] for a malformed pointer, `--ready-when`, or template, or one too large.
    pub fn new(
        protocol: Protocol,
        on_open: Option<&str>,
        ready_when: Option<&str>,
        payload_at: Option<&str>,
        template: Option<&str>,
        topic: &str,
        emit: &str,
    ) -> Result<Self, SpecError> {
        let mut messages = Vec::new();
        if let Some(text) = on_open {
            if text.len() > MAX_TEMPLATE_BYTES {
                return Err(SpecError::TooLarge {
                    flag: "--on-open",
                    what: format!("a file of {} bytes", text.len()),
                    limit: MAX_TEMPLATE_BYTES,
                });
            }
            messages = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| l.replace("{topic}", topic))
                .collect();
            if messages.len() > MAX_ON_OPEN_MESSAGES {
                return Err(SpecError::TooLarge {
                    flag: "--on-open",
                    what: format!("{} messages", messages.len()),
                    limit: MAX_ON_OPEN_MESSAGES,
                });
            }
        }
        let ready_when = ready_when.map(parse_ready_when).transpose()?;
        if let Some(p) = payload_at {
            check_pointer("--payload-at", p)?;
        }
        let payload_at = match (protocol, payload_at) {
            (_, Some(p)) => Some(p.to_owned()),
            // An event `["name", payload]`: its first argument.
            (Protocol::SocketIo, None) => Some("/1".to_owned()),
            // Pusher's connections are built by `Spec::pusher`, which finds its payloads.
            (Protocol::WebSocket | Protocol::Pusher, None) => None,
        };
        let envelope = match (protocol, template) {
            (Protocol::SocketIo, _) => Some(socketio::event_envelope(emit)),
            (Protocol::WebSocket, Some(text)) => Some(template_envelope(text, topic)?),
            (Protocol::WebSocket, None) => payload_at.as_deref().map(pointer_envelope),
            (Protocol::Pusher, _) => None,
        };
        Ok(Self {
            protocol,
            on_open: messages,
            ready_when,
            payload_at,
            envelope,
            pusher: None,
        })
    }

    /// The `pusher` scenario's protocol: each connection joins its channel of `channels`.
    pub fn pusher(channels: pusher::Channels) -> Self {
        Self {
            protocol: Protocol::Pusher,
            on_open: Vec::new(),
            ready_when: None,
            payload_at: None,
            envelope: None,
            pusher: Some(channels),
        }
    }

    /// A connection's upgrade completed: its first state, and the messages to send now into
    /// `out` (text).
    pub fn opened(&self, conn: u64, out: &mut Vec<Vec<u8>>) -> State {
        match self.protocol {
            Protocol::SocketIo | Protocol::Pusher => State::AwaitOpen,
            Protocol::WebSocket => self.up(conn, out),
        }
    }

    /// One received message in `state`: what it meant, and the answers to send into `out`.
    pub fn incoming(
        &self,
        state: &mut State,
        conn: u64,
        opcode: OpCode,
        payload: &[u8],
        out: &mut Vec<Vec<u8>>,
    ) -> Incoming {
        match self.protocol {
            Protocol::SocketIo => self.incoming_socketio(state, conn, opcode, payload, out),
            Protocol::Pusher => match &self.pusher {
                Some(channels) => channels.incoming(state, conn, payload, out),
                None => Incoming::Nothing,
            },
            Protocol::WebSocket => match state {
                State::Ready => match &self.payload_at {
                    None => Incoming::AsIs,
                    Some(pointer) => extract(serde_json::from_slice(payload).ok(), pointer),
                },
                _ => self.ready_check(state, serde_json::from_slice(payload).ok()),
            },
        }
    }

    /// A data message carrying `payload` (a UTF-8 stamp) from connection `conn`, into `buf`;
    /// its opcode. Without an envelope the payload goes as it is, as `opcode`.
    pub fn wrap(&self, conn: u64, opcode: OpCode, payload: &[u8], buf: &mut Vec<u8>) -> OpCode {
        buf.clear();
        if let (Some(channels), Ok(text)) = (&self.pusher, std::str::from_utf8(payload)) {
            channels.client_event(conn, text, buf);
            return OpCode::Text;
        }
        let (Some(envelope), Ok(text)) = (&self.envelope, std::str::from_utf8(payload)) else {
            buf.extend_from_slice(payload);
            return opcode;
        };
        let conn = conn.to_string();
        buf.extend_from_slice(envelope.before.replace("{conn}", &conn).as_bytes());
        // Writing a JSON string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, text);
        buf.extend_from_slice(envelope.after.replace("{conn}", &conn).as_bytes());
        OpCode::Text
    }

    /// The connection is up at the protocol's level: `--on-open`'s messages go out, and it
    /// waits for `--ready-when` if given.
    fn up(&self, conn: u64, out: &mut Vec<Vec<u8>>) -> State {
        let conn = conn.to_string();
        out.extend(
            self.on_open
                .iter()
                .map(|m| m.replace("{conn}", &conn).into_bytes()),
        );
        if self.ready_when.is_some() {
            State::AwaitReady
        } else {
            State::Ready
        }
    }

    /// Before the connection is ready: a message that matches `--ready-when` makes it so.
    fn ready_check(&self, state: &mut State, json: Option<Value>) -> Incoming {
        let matched = match (&self.ready_when, json) {
            (Some(ready), Some(json)) => json.pointer(&ready.pointer) == Some(&ready.value),
            _ => false,
        };
        if matched {
            *state = State::Ready;
            Incoming::Ready
        } else {
            Incoming::Nothing
        }
    }
}

/// The string at `pointer` in `json`: a delivery; anything else is the protocol's own.
fn extract(json: Option<Value>, pointer: &str) -> Incoming {
    match json.as_ref().and_then(|j| j.pointer(pointer)) {
        Some(Value::String(text)) => Incoming::Extracted(text.clone().into_bytes()),
        _ => Incoming::Nothing,
    }
}

fn check_pointer(flag: &'static str, pointer: &str) -> Result<(), SpecError> {
    if pointer.is_empty() || pointer.starts_with('/') {
        Ok(())
    } else {
        Err(SpecError::Pointer {
            flag,
            pointer: pointer.to_owned(),
        })
    }
}

/// `POINTER=VALUE`: VALUE is JSON when it parses as JSON (`true`, `1`, `"x"`, `{...}`), else
/// a string.
fn parse_ready_when(text: &str) -> Result<ReadyWhen, SpecError> {
    let (pointer, value) = text
        .split_once('=')
        .ok_or_else(|| SpecError::ReadyWhen(text.to_owned()))?;
    check_pointer("--ready-when", pointer)?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok(ReadyWhen {
        pointer: pointer.to_owned(),
        value,
    })
}

/// `--publish-template`'s text: `{payload}` marks where the payload's JSON string goes.
/// Checked once: filled in, it must be JSON. (Where the payload sits in it need not be where
/// subscribers find it: a server may wrap what it forwards.)
fn template_envelope(text: &str, topic: &str) -> Result<Envelope, SpecError> {
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(SpecError::TooLarge {
            flag: "--publish-template",
            what: format!("a file of {} bytes", text.len()),
            limit: MAX_TEMPLATE_BYTES,
        });
    }
    let text = text.trim().replace("{topic}", topic);
    let Some((before, after)) = text.split_once("{payload}") else {
        return Err(SpecError::Template(
            "no {payload} where the payload goes".into(),
        ));
    };
    if after.contains("{payload}") {
        return Err(SpecError::Template("{payload} appears twice".into()));
    }
    let envelope = Envelope {
        before: before.to_owned(),
        after: after.to_owned(),
    };
    let probe = format!("{before}\"probe\"{after}").replace("{conn}", "0");
    serde_json::from_str::<Value>(&probe)
        .map_err(|e| SpecError::Template(format!("not JSON once filled in ({e}): {probe}")))?;
    Ok(envelope)
}

/// The smallest JSON with the payload at `pointer`: `/data` → `{"data":PAYLOAD}`, `/a/b` →
/// `{"a":{"b":PAYLOAD}}`; the empty pointer: the message is the JSON string itself.
fn pointer_envelope(pointer: &str) -> Envelope {
    let mut before = String::new();
    let mut after = String::new();
    for token in pointer.split('/').skip(1) {
        let key = token.replace("~1", "/").replace("~0", "~");
        before.push('{');
        // Writing a JSON string into a String's bytes cannot fail.
        before.push_str(&serde_json::to_string(&key).unwrap_or_default());
        before.push(':');
        after.insert(0, '}');
    }
    Envelope { before, after }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(on_open: &str, ready: Option<&str>, at: Option<&str>, template: Option<&str>) -> Spec {
        Spec::new(
            Protocol::WebSocket,
            Some(on_open),
            ready,
            at,
            template,
            "room",
            "publish",
        )
        .unwrap()
    }

    #[test]
    fn on_open_messages_fill_in_conn_and_topic_then_wait_for_ready() {
        let s = spec(
            "{\"op\":\"subscribe\",\"channel\":\"{topic}\",\"id\":{conn}}\n\n  {\"op\":\"hello\"}\n",
            Some("/op=subscribed"),
            Some("/data"),
            None,
        );
        let mut out = Vec::new();
        let mut state = s.opened(7, &mut out);
        assert_eq!(state, State::AwaitReady);
        assert_eq!(
            out,
            [
                b"{\"op\":\"subscribe\",\"channel\":\"room\",\"id\":7}".to_vec(),
                b"{\"op\":\"hello\"}".to_vec()
            ]
        );
        out.clear();
        // Before ready: a data message is not a delivery; other messages do not make it ready.
        let data = br#"{"op":"message","data":"abc"}"#;
        assert_eq!(
            s.incoming(&mut state, 7, OpCode::Text, data, &mut out),
            Incoming::Nothing
        );
        assert_eq!(
            s.incoming(&mut state, 7, OpCode::Text, b"not json", &mut out),
            Incoming::Nothing
        );
        assert_eq!(
            s.incoming(
                &mut state,
                7,
                OpCode::Text,
                br#"{"op":"subscribed"}"#,
                &mut out
            ),
            Incoming::Ready
        );
        assert_eq!(state, State::Ready);
        assert_eq!(
            s.incoming(&mut state, 7, OpCode::Text, data, &mut out),
            Incoming::Extracted(b"abc".to_vec())
        );
        // The protocol's own messages, and a payload that is not a string: not deliveries.
        for other in [&br#"{"op":"ping"}"#[..], br#"{"data":5}"#, b"[1,2"] {
            assert_eq!(
                s.incoming(&mut state, 7, OpCode::Text, other, &mut out),
                Incoming::Nothing
            );
        }
        assert!(out.is_empty());
    }

    #[test]
    fn ready_values_are_json_when_they_parse() {
        let r = parse_ready_when("/ok=true").unwrap();
        assert_eq!(r.value, Value::Bool(true));
        let r = parse_ready_when("/result/code=0").unwrap();
        assert_eq!(
            (r.pointer.as_str(), r.value),
            ("/result/code", Value::from(0))
        );
        let r = parse_ready_when("/type=subscribed").unwrap();
        assert_eq!(r.value, Value::String("subscribed".into()));
        assert_eq!(
            parse_ready_when("/a=b=c").unwrap().value,
            Value::String("b=c".into())
        );
        assert!(matches!(
            parse_ready_when("/type"),
            Err(SpecError::ReadyWhen(_))
        ));
        assert!(matches!(
            parse_ready_when("type=x"),
            Err(SpecError::Pointer { .. })
        ));
    }

    #[test]
    fn publishers_wrap_the_payload_as_a_json_string() {
        let s = spec(
            "",
            None,
            Some("/pub/data"),
            Some("{\"op\":\"publish\",\"channel\":\"{topic}\",\"from\":{conn},\"pub\":{\"data\":{payload}}}\n"),
        );
        let mut buf = Vec::new();
        let tick = br#"{"type":"tick","src":1}"#;
        assert_eq!(s.wrap(3, OpCode::Binary, tick, &mut buf), OpCode::Text);
        let json: Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(json["channel"], "room");
        assert_eq!(json["from"], 3);
        // What a subscriber extracts is the payload, byte for byte.
        let mut state = State::Ready;
        assert_eq!(
            s.incoming(&mut state, 0, OpCode::Text, &buf, &mut Vec::new()),
            Incoming::Extracted(tick.to_vec())
        );
        // Without a template: the smallest object with the payload at the pointer.
        let s = spec("", None, Some("/a/b~1c"), None);
        s.wrap(0, OpCode::Text, b"x\"y", &mut buf);
        assert_eq!(buf, br#"{"a":{"b/c":"x\"y"}}"#);
        // Without --payload-at: the payload as it is.
        let s = spec("", None, None, None);
        assert_eq!(s.wrap(0, OpCode::Binary, b"raw", &mut buf), OpCode::Binary);
        assert_eq!(buf, b"raw");
        assert_eq!(
            s.incoming(
                &mut State::Ready,
                0,
                OpCode::Binary,
                b"raw",
                &mut Vec::new()
            ),
            Incoming::AsIs
        );
    }

    #[test]
    fn refuses_bad_templates_and_pointers() {
        let new = |at: Option<&str>, template: Option<&str>| {
            Spec::new(
                Protocol::WebSocket,
                None,
                None,
                at,
                template,
                "t",
                "publish",
            )
        };
        assert!(matches!(
            new(Some("data"), None),
            Err(SpecError::Pointer { .. })
        ));
        assert!(matches!(
            new(None, Some("{\"data\":1}")),
            Err(SpecError::Template(_))
        ));
        assert!(matches!(
            new(None, Some("{\"a\":{payload},\"b\":{payload}}")),
            Err(SpecError::Template(_))
        ));
        assert!(matches!(
            new(None, Some("{\"a\":{payload}")),
            Err(SpecError::Template(_))
        ));
        // Where subscribers find the payload may differ: the server may wrap it.
        assert!(new(Some("/b/a"), Some("{\"a\":{payload},\"id\":{conn}}")).is_ok());
        let many = "{}\n".repeat(MAX_ON_OPEN_MESSAGES + 1);
        assert!(matches!(
            Spec::new(Protocol::WebSocket, Some(&many), None, None, None, "t", "p"),
            Err(SpecError::TooLarge { .. })
        ));
    }
}
