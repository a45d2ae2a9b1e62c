//! The WebSocket message codec: what clients send ([`ClientMessage::decode`]) and what the
//! server sends (the `encode_*` functions), as protocol.adoc spells them.
//!
//! Server events carry their `data` as a JSON-encoded string, as Pusher's servers do; client
//! events are relayed with the `data` their sender gave, byte for byte.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::broadcast::{Epoch, Position};

/// A message from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage<'a> {
    /// `pusher:subscribe`.
    Subscribe {
        /// The channel.
        channel: Cow<'a, str>,
        /// `key:signature`, for private and presence channels.
        auth: Option<Cow<'a, str>>,
        /// The presence member's JSON, signed in `auth`.
        channel_data: Option<Cow<'a, str>>,
        /// `"resume": {"epoch", "offset"}`: the position of the last event the client has.
        resume: Resume,
    },
    /// `pusher:unsubscribe`.
    Unsubscribe {
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// `pusher:ping`.
    Ping,
    /// `pusher:pong` (an answer to the server's ping): nothing to do.
    Pong,
    /// `pusher:signin`.
    Signin {
        /// `key:signature` over `user_data`.
        auth: Option<Cow<'a, str>>,
        /// The user's JSON, with at least `id`.
        user_data: Cow<'a, str>,
    },
    /// A `client-*` event.
    ClientEvent {
        /// The event name, `client-` included.
        event: Cow<'a, str>,
        /// The channel.
        channel: Cow<'a, str>,
        /// The data as sent (any JSON value).
        data: Json<'a>,
    },
    /// Any other event: protocol.adoc has the server ignore it.
    Other,
}

/// A borrowed JSON value, compared by its text.
#[derive(Clone, Copy, Debug)]
pub struct Json<'a>(pub &'a RawValue);

impl PartialEq for Json<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for Json<'_> {}

/// Why a client message could not be understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not an object with a string `event`.
    #[error("the message is not a JSON object with an event")]
    NotAnEvent,
    /// A known event without the fields it needs.
    #[error("{0} is missing its {1}")]
    MissingField(&'static str, &'static str),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SubscribeData<'a> {
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    auth: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel_data: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resume: Option<&'a RawValue>,
}

/// What a `pusher:subscribe` asks to resume from (uringcast's extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// No `resume`: a plain subscription.
    No,
    /// The client has every event up to this position.
    From(Position),
    /// A `resume` that is not `{"epoch": string, "offset": integer}`: nothing can be
    /// resumed from it.
    Malformed,
}

impl Resume {
    fn parse(raw: Option<&RawValue>) -> Self {
        #[derive(Deserialize)]
        struct At<'a> {
            #[serde(borrow)]
            epoch: Cow<'a, str>,
            offset: u64,
        }
        let Some(raw) = raw else {
            return Self::No;
        };
        let Ok(at) = serde_json::from_str::<At<'_>>(raw.get()) else {
            return Self::Malformed;
        };
        match at.epoch.parse::<Epoch>() {
            Ok(epoch) => Self::From(Position {
                epoch,
                offset: at.offset,
            }),
            Err(_) => Self::Malformed,
        }
    }
}

#[derive(Deserialize)]
struct SigninData<'a> {
    #[serde(borrow, default)]
    auth: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user_data: Option<Cow<'a, str>>,
}

impl<'a> ClientMessage<'a> {
    /// Decodes one text message.
    ///
    /// # Errors
    ///
    /// See [`DecodeError`].
    pub fn decode(text: &'a str) -> Result<Self, DecodeError> {
        let envelope: Envelope<'a> =
            serde_json::from_str(text).map_err(|_| DecodeError::NotAnEvent)?;
        match &*envelope.event {
            "pusher:subscribe" => {
                let data: SubscribeData<'a> = object(envelope.data)
                    .ok_or(DecodeError::MissingField("pusher:subscribe", "data"))?;
                Ok(Self::Subscribe {
                    channel: data
                        .channel
                        .ok_or(DecodeError::MissingField("pusher:subscribe", "channel"))?,
                    auth: data.auth,
                    channel_data: data.channel_data,
                    resume: Resume::parse(data.resume),
                })
            }
            "pusher:unsubscribe" => {
                let data: SubscribeData<'a> = object(envelope.data)
                    .ok_or(DecodeError::MissingField("pusher:unsubscribe", "data"))?;
                Ok(Self::Unsubscribe {
                    channel: data
                        .channel
                        .ok_or(DecodeError::MissingField("pusher:unsubscribe", "channel"))?,
                })
            }
            "pusher:ping" => Ok(Self::Ping),
            "pusher:pong" => Ok(Self::Pong),
            "pusher:signin" => {
                let data: SigninData<'a> = object(envelope.data)
                    .ok_or(DecodeError::MissingField("pusher:signin", "data"))?;
                Ok(Self::Signin {
                    auth: data.auth,
                    user_data: data
                        .user_data
                        .ok_or(DecodeError::MissingField("pusher:signin", "user_data"))?,
                })
            }
            event if event.starts_with("client-") => Ok(Self::ClientEvent {
                channel: envelope
                    .channel
                    .ok_or(DecodeError::MissingField("client event", "channel"))?,
                data: Json(
                    envelope
                        .data
                        .ok_or(DecodeError::MissingField("client event", "data"))?,
                ),
                event: envelope.event,
            }),
            _ => Ok(Self::Other),
        }
    }
}

/// `data` as an object, given either inline or as a JSON string holding one (both occur).
fn object<'a, T: Deserialize<'a>>(data: Option<&'a RawValue>) -> Option<T> {
    let raw = data?.get();
    if raw.starts_with('"') {
        // A string: the object is inside it, and cannot borrow from the message.
        let inner: String = serde_json::from_str(raw).ok()?;
        let value: serde_json::Value = serde_json::from_str(&inner).ok()?;
        return T::deserialize(value).ok();
    }
    serde_json::from_str(raw).ok()
}

/// A server event's `data`: a string (server events) or raw JSON (relayed client events).
#[derive(Clone, Copy, Debug)]
pub enum Data<'a> {
    /// Encoded as a JSON string.
    Text(&'a str),
    /// Written as it is: already valid JSON.
    Raw(&'a RawValue),
}

#[derive(Serialize)]
struct Outgoing<'a> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<DataOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum DataOut<'a> {
    Text(&'a str),
    Raw(&'a RawValue),
    Object(serde_json::Value),
}

impl<'a> From<Data<'a>> for DataOut<'a> {
    fn from(data: Data<'a>) -> Self {
        match data {
            Data::Text(text) => Self::Text(text),
            Data::Raw(raw) => Self::Raw(raw),
        }
    }
}

fn encode(
    event: &str,
    channel: Option<&str>,
    data: Option<DataOut<'_>>,
    user_id: Option<&str>,
) -> String {
    let message = Outgoing {
        event,
        channel,
        data,
        user_id,
    };
    // Strings, raw JSON and `Value`s always serialize.
    serde_json::to_string(&message).unwrap_or_default()
}

/// An event on a channel, as every subscriber receives it.
pub fn encode_event(event: &str, channel: &str, data: Data<'_>, user_id: Option<&str>) -> String {
    encode(event, Some(channel), Some(data.into()), user_id)
}

/// `pusher:connection_established`.
pub fn encode_connection_established(socket_id: &str, activity_timeout: u64) -> String {
    let data = serde_json::json!({"socket_id": socket_id, "activity_timeout": activity_timeout});
    encode(
        "pusher:connection_established",
        None,
        Some(DataOut::Text(&data.to_string())),
        None,
    )
}

/// `pusher_internal:subscription_succeeded`; `presence` is `{ids, hash, count}`.
pub fn encode_subscription_succeeded(channel: &str, presence: Option<serde_json::Value>) -> String {
    let data = match presence {
        Some(presence) => serde_json::json!({ "presence": presence }).to_string(),
        None => "{}".to_owned(),
    };
    encode(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        Some(DataOut::Text(&data)),
        None,
    )
}

/// `uringcast:resume_failed` on a channel: the events after the position the client asked
/// to resume from cannot be given to it; `head`, when known, is the channel's position now
/// (what follows the subscription). Its data, a JSON string as Pusher's: `{"epoch",
/// "offset"}`, or `{}`.
pub fn encode_resume_failed(channel: &str, head: Option<Position>) -> String {
    let data = match head {
        Some(head) => {
            serde_json::json!({"epoch": head.epoch.as_str(), "offset": head.offset}).to_string()
        }
        None => "{}".to_owned(),
    };
    encode(
        "uringcast:resume_failed",
        Some(channel),
        Some(DataOut::Text(&data)),
        None,
    )
}

/// A channel event with its position in the channel's stream at the top level, as
/// `"offset": N, "epoch": "E"` before its closing brace (the [`Stamp`](crate::broadcast::Stamp)
/// of every channel event when history is on). pusher-js ignores fields it does not know.
/// Anything but a JSON object is left as it is.
pub fn stamp_position(event: &[u8], position: Position) -> Bytes {
    let Some(head) = event.strip_suffix(b"}") else {
        return Bytes::copy_from_slice(event);
    };
    let empty = head.iter().rev().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let fields = format!(
        "{}\"offset\":{},\"epoch\":\"{}\"}}",
        if empty { "" } else { "," },
        position.offset,
        position.epoch
    );
    let mut out = Vec::with_capacity(head.len() + fields.len());
    out.extend_from_slice(head);
    out.extend_from_slice(fields.as_bytes());
    Bytes::from(out)
}

/// `pusher:subscription_error` with its `type`, `error` and `status`.
pub fn encode_subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> String {
    let data = serde_json::json!({"type": kind, "error": error, "status": status});
    encode(
        "pusher:subscription_error",
        Some(channel),
        Some(DataOut::Object(data)),
        None,
    )
}

/// `pusher:ping`, the server's activity check (answered by `pusher:pong`).
pub fn encode_ping() -> String {
    encode("pusher:ping", None, Some(DataOut::Text("{}")), None)
}

/// `pusher:error` with a message and, when there is one, a code from protocol.adoc's ranges.
pub fn encode_error(code: Option<u16>, message: &str) -> String {
    let data = serde_json::json!({"code": code, "message": message});
    encode("pusher:error", None, Some(DataOut::Object(data)), None)
}

/// `pusher:pong`.
pub fn encode_pong() -> String {
    encode("pusher:pong", None, Some(DataOut::Text("{}")), None)
}

/// `pusher_internal:member_added`.
pub fn encode_member_added(channel: &str, user_id: &str, user_info: &RawValue) -> String {
    let data = serde_json::json!({"user_id": user_id, "user_info": user_info});
    encode(
        "pusher_internal:member_added",
        Some(channel),
        Some(DataOut::Text(&data.to_string())),
        None,
    )
}

/// `pusher_internal:member_removed`.
pub fn encode_member_removed(channel: &str, user_id: &str) -> String {
    let data = serde_json::json!({ "user_id": user_id });
    encode(
        "pusher_internal:member_removed",
        Some(channel),
        Some(DataOut::Text(&data.to_string())),
        None,
    )
}

/// `pusher:cache_miss`: a cache channel with no event kept.
pub fn encode_cache_miss(channel: &str) -> String {
    encode(
        "pusher:cache_miss",
        Some(channel),
        Some(DataOut::Text("{}")),
        None,
    )
}

/// `pusher:signin_success`, echoing the signed `user_data`.
pub fn encode_signin_success(user_data: &str) -> String {
    let data = serde_json::json!({ "user_data": user_data });
    encode(
        "pusher:signin_success",
        None,
        Some(DataOut::Text(&data.to_string())),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_subscribe_may_carry_a_resume_position() {
        let decode = |resume: &str| {
            let text = format!(
                r#"{{"event":"pusher:subscribe","data":{{"channel":"a","resume":{resume}}}}}"#
            );
            match ClientMessage::decode(&text) {
                Ok(ClientMessage::Subscribe { resume, .. }) => resume,
                other => panic!("not a subscribe: {other:?}"),
            }
        };
        assert_eq!(
            decode(r#"{"epoch":"abc","offset":12}"#),
            Resume::From(Position {
                epoch: "abc".parse().unwrap(),
                offset: 12
            })
        );
        for bad in [
            r#"{"epoch":"abc"}"#,
            r#"{"epoch":"a b","offset":1}"#,
            r#"{"epoch":"abc","offset":-1}"#,
            r#"{"epoch":"abc","offset":"1"}"#,
            r#""abc:1""#,
        ] {
            assert_eq!(decode(bad), Resume::Malformed, "{bad}");
        }
        assert_eq!(decode("null"), Resume::No, "null is no resume");
    }

    #[test]
    fn a_stamp_adds_the_position_as_top_level_fields() {
        let position = Position {
            epoch: "e1".parse().unwrap(),
            offset: 9,
        };
        let event = encode_event("news", "ch", Data::Text("{\"a\":1}"), None);
        let stamped = stamp_position(event.as_bytes(), position);
        let value: serde_json::Value = serde_json::from_slice(&stamped).unwrap();
        assert_eq!(value["offset"], 9);
        assert_eq!(value["epoch"], "e1");
        assert_eq!(value["event"], "news");
        assert_eq!(value["data"], "{\"a\":1}");
        let empty: serde_json::Value =
            serde_json::from_slice(&stamp_position(b"{ }", position)).unwrap();
        assert_eq!(empty, json!({"offset": 9, "epoch": "e1"}));
        assert_eq!(&stamp_position(b"[1]", position)[..], b"[1]");
    }

    #[test]
    fn decodes_what_pusher_js_sends() {
        let m = ClientMessage::decode(
            r#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel":"private-a"}}"#,
        );
        assert_eq!(
            m,
            Ok(ClientMessage::Subscribe {
                channel: "private-a".into(),
                auth: Some("k:s".into()),
                channel_data: None,
                resume: Resume::No,
            })
        );
        let m = ClientMessage::decode(
            r#"{"event":"pusher:subscribe","data":{"channel":"presence-a","auth":"k:s","channel_data":"{\"user_id\":1}"}}"#,
        );
        assert!(
            matches!(m, Ok(ClientMessage::Subscribe { channel_data: Some(d), .. }) if d == r#"{"user_id":1}"#)
        );
        // Some clients send data as a string holding the object.
        let m =
            ClientMessage::decode(r#"{"event":"pusher:unsubscribe","data":"{\"channel\":\"a\"}"}"#);
        assert_eq!(
            m,
            Ok(ClientMessage::Unsubscribe {
                channel: "a".into()
            })
        );
        assert_eq!(
            ClientMessage::decode(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        let m = ClientMessage::decode(
            r#"{"event":"client-typing","channel":"private-a","data":{"x":[1,2]}}"#,
        )
        .unwrap();
        let ClientMessage::ClientEvent {
            event,
            channel,
            data,
        } = m
        else {
            panic!("not a client event")
        };
        assert_eq!(
            (&*event, &*channel, data.0.get()),
            ("client-typing", "private-a", r#"{"x":[1,2]}"#)
        );
        let m = ClientMessage::decode(
            r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{\"id\":\"1\"}"}}"#,
        );
        assert!(
            matches!(m, Ok(ClientMessage::Signin { user_data, .. }) if user_data == r#"{"id":"1"}"#)
        );
        assert_eq!(
            ClientMessage::decode(r#"{"event":"something-else"}"#),
            Ok(ClientMessage::Other)
        );
    }

    #[test]
    fn refuses_what_is_not_an_event() {
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"event":1}"#,
            "nul",
            r#"{"event":"x","data":}"#,
        ] {
            assert_eq!(
                ClientMessage::decode(bad),
                Err(DecodeError::NotAnEvent),
                "{bad}"
            );
        }
        assert_eq!(
            ClientMessage::decode(r#"{"event":"pusher:subscribe","data":{}}"#),
            Err(DecodeError::MissingField("pusher:subscribe", "channel"))
        );
        assert_eq!(
            ClientMessage::decode(r#"{"event":"client-x","data":{}}"#),
            Err(DecodeError::MissingField("client event", "channel"))
        );
    }

    #[test]
    fn server_messages_have_pusher_shapes() {
        let m = parse(&encode_connection_established("1.2", 120));
        assert_eq!(m["event"], "pusher:connection_established");
        assert_eq!(
            parse(m["data"].as_str().unwrap()),
            json!({"socket_id":"1.2","activity_timeout":120})
        );
        let m = parse(&encode_subscription_succeeded("a", None));
        assert_eq!(
            m,
            json!({"event":"pusher_internal:subscription_succeeded","channel":"a","data":"{}"})
        );
        let m = parse(&encode_subscription_error(
            "private-a",
            "AuthError",
            "bad",
            401,
        ));
        assert_eq!(
            m["data"],
            json!({"type":"AuthError","error":"bad","status":401})
        );
        let m = parse(&encode_error(Some(4301), "slow down"));
        assert_eq!(m["data"], json!({"code":4301,"message":"slow down"}));
        let info = RawValue::from_string(r#"{"name":"a"}"#.into()).unwrap();
        let m = parse(&encode_member_added("presence-a", "7", &info));
        assert_eq!(
            parse(m["data"].as_str().unwrap()),
            json!({"user_id":"7","user_info":{"name":"a"}})
        );
        assert_eq!(parse(&encode_pong())["event"], "pusher:pong");
        assert_eq!(parse(&encode_cache_miss("cache-a"))["channel"], "cache-a");
    }

    #[test]
    fn relayed_data_is_kept_byte_for_byte() {
        let raw = RawValue::from_string(r#"{"b":1,  "a":"é"}"#.into()).unwrap();
        let m = encode_event("client-x", "private-a", Data::Raw(&raw), Some("u1"));
        assert_eq!(
            m,
            r#"{"event":"client-x","channel":"private-a","data":{"b":1,  "a":"é"},"user_id":"u1"}"#
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(text in "\\PC{0,200}") {
            let _ = ClientMessage::decode(&text);
        }

        #[test]
        fn text_events_round_trip(event in "\\PC{0,30}", channel in "[a-z-]{1,30}", data in "\\PC{0,100}") {
            let m = parse(&encode_event(&event, &channel, Data::Text(&data), None));
            prop_assert_eq!(m, json!({"event": event, "channel": channel, "data": data}));
        }

        #[test]
        fn subscribe_round_trips(channel in "[A-Za-z0-9_=@,.;-]{1,200}", auth in "\\PC{0,80}") {
            let text = json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}}).to_string();
            let m = ClientMessage::decode(&text).unwrap();
            prop_assert_eq!(m, ClientMessage::Subscribe {
                channel: channel.as_str().into(),
                auth: Some(auth.as_str().into()),
                channel_data: None,
                resume: Resume::No,
            });
        }
    }
}
