//! Socket.IO v5 over Engine.IO v4, on the WebSocket transport only (the URL names it:
//! `/socket.io/?EIO=4&transport=websocket`), as the `socket.io` server speaks it:
//!
//! - every Engine.IO packet is one text frame, its type the first character: `0` open (with
//!   the session's JSON), `1` close, `2` ping, `3` pong, `4` message, `6` noop;
//! - a message carries a Socket.IO packet: `0` connect, `1` disconnect, `2` event, `3` ack,
//!   `4` connect error (`5` and `6` are binary events and acks, whose attachments follow as
//!   binary frames: not supported); then an optional namespace (`/chat,`), ack id (digits) and
//!   JSON data;
//! - the client answers the open packet with a connect to the main namespace (`40`), waits for
//!   the server's connect (`40{"sid":...}`), answers every ping `2` with a pong `3`, and sends
//!   its data as events `42["publish",PAYLOAD]`.
//!
//! A delivery is an event whose first argument is a string (`--payload-at` takes another
//! pointer into the event's array, `/0` being its name).

use uringcast::protocol::OpCode;

use super::{extract, Envelope, Incoming, Spec, State};

/// An Engine.IO packet, borrowed from the frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0{...}`: the session opens.
    Open(&'a [u8]),
    /// `1`: the server closes the session.
    Close,
    /// `2[data]`: answer with a pong carrying the same data.
    Ping(&'a [u8]),
    /// `3`.
    Pong,
    /// `4...`: a Socket.IO packet.
    Message(SocketPacket<'a>),
    /// `5`, `6`, an empty frame, or an unknown type: nothing to do.
    Other,
}

/// A Socket.IO packet: its type and JSON data (namespace and ack id skipped).
#[derive(Debug, PartialEq, Eq)]
pub enum SocketPacket<'a> {
    /// `0`: the namespace is connected.
    Connect(&'a [u8]),
    /// `1`: the server left the namespace.
    Disconnect,
    /// `2`: an event, `["name", args...]`.
    Event(&'a [u8]),
    /// `3`: an acknowledgement, `[args...]`.
    Ack(&'a [u8]),
    /// `4`: the connect was refused, `{"message": ...}`.
    ConnectError(&'a [u8]),
    /// `5`, `6`: binary, with attachments in the frames that follow.
    Binary,
    /// Anything else.
    Malformed,
}

/// Decodes one text frame.
pub fn decode(frame: &[u8]) -> Packet<'_> {
    let Some((&kind, rest)) = frame.split_first() else {
        return Packet::Other;
    };
    match kind {
        b'0' => Packet::Open(rest),
        b'1' => Packet::Close,
        b'2' => Packet::Ping(rest),
        b'3' => Packet::Pong,
        b'4' => Packet::Message(decode_socket(rest)),
        _ => Packet::Other,
    }
}

fn decode_socket(packet: &[u8]) -> SocketPacket<'_> {
    let Some((&kind, mut rest)) = packet.split_first() else {
        return SocketPacket::Malformed;
    };
    if matches!(kind, b'5' | b'6') {
        return SocketPacket::Binary;
    }
    // A namespace other than the main one: `/name,`.
    if rest.first() == Some(&b'/') {
        match rest.iter().position(|&b| b == b',') {
            Some(comma) => rest = &rest[comma + 1..],
            // The namespace alone, with no data (`41/chat`).
            None => rest = &[],
        }
    }
    // An ack id.
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let data = &rest[digits..];
    match kind {
        b'0' => SocketPacket::Connect(data),
        b'1' => SocketPacket::Disconnect,
        b'2' => SocketPacket::Event(data),
        b'3' => SocketPacket::Ack(data),
        b'4' => SocketPacket::ConnectError(data),
        _ => SocketPacket::Malformed,
    }
}

/// Data messages go as the event `event`: `42["event",PAYLOAD]`.
pub(super) fn event_envelope(event: &str) -> Envelope {
    Envelope {
        before: format!(
            "42[{},",
            serde_json::to_string(event).unwrap_or_else(|_| "\"message\"".into())
        ),
        after: "]".into(),
    }
}

impl Spec {
    /// One frame of a Socket.IO connection in `state`.
    pub(super) fn incoming_socketio(
        &self,
        state: &mut State,
        conn: u64,
        opcode: OpCode,
        frame: &[u8],
        out: &mut Vec<Vec<u8>>,
    ) -> Incoming {
        if opcode != OpCode::Text {
            // A binary attachment: only binary events have them, and none is asked for.
            return Incoming::Nothing;
        }
        match decode(frame) {
            Packet::Open(_) if *state == State::AwaitOpen => {
                out.push(b"40".to_vec());
                *state = State::AwaitConnect;
                Incoming::Nothing
            }
            Packet::Ping(data) => {
                let mut pong = b"3".to_vec();
                pong.extend_from_slice(data);
                out.push(pong);
                Incoming::Nothing
            }
            Packet::Close => Incoming::Failed("the server closed the Engine.IO session".into()),
            Packet::Message(SocketPacket::Connect(_)) if *state == State::AwaitConnect => {
                *state = self.up(conn, out);
                if *state == State::Ready {
                    Incoming::Ready
                } else {
                    Incoming::Nothing
                }
            }
            Packet::Message(SocketPacket::ConnectError(data)) => Incoming::Failed(format!(
                "Socket.IO connect refused: {}",
                String::from_utf8_lossy(data)
            )),
            Packet::Message(SocketPacket::Disconnect) => {
                Incoming::Failed("the server left the Socket.IO namespace".into())
            }
            Packet::Message(SocketPacket::Event(data) | SocketPacket::Ack(data)) => {
                let json = serde_json::from_slice(data).ok();
                match (*state, &self.payload_at) {
                    (State::Ready, Some(pointer)) => extract(json, pointer),
                    (State::AwaitReady, _) => self.ready_check(state, json),
                    _ => Incoming::Nothing,
                }
            }
            _ => Incoming::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Protocol;
    use super::*;

    fn spec(on_open: Option<&str>, ready: Option<&str>) -> Spec {
        Spec::new(
            Protocol::SocketIo,
            on_open,
            ready,
            None,
            None,
            "room",
            "publish",
        )
        .unwrap()
    }

    #[test]
    fn decodes_engine_and_socket_packets() {
        assert_eq!(
            decode(b"0{\"sid\":\"a\"}"),
            Packet::Open(b"{\"sid\":\"a\"}")
        );
        assert_eq!(decode(b"2"), Packet::Ping(b""));
        assert_eq!(decode(b"2probe"), Packet::Ping(b"probe"));
        assert_eq!(decode(b"3"), Packet::Pong);
        assert_eq!(decode(b"1"), Packet::Close);
        assert_eq!(decode(b""), Packet::Other);
        assert_eq!(decode(b"6"), Packet::Other);
        let m = |p| Packet::Message(p);
        assert_eq!(
            decode(b"40{\"sid\":\"x\"}"),
            m(SocketPacket::Connect(b"{\"sid\":\"x\"}"))
        );
        assert_eq!(
            decode(b"42[\"m\",\"p\"]"),
            m(SocketPacket::Event(b"[\"m\",\"p\"]"))
        );
        assert_eq!(
            decode(b"42/chat,[\"m\"]"),
            m(SocketPacket::Event(b"[\"m\"]"))
        );
        assert_eq!(decode(b"4217[\"m\"]"), m(SocketPacket::Event(b"[\"m\"]")));
        assert_eq!(
            decode(b"42/chat,17[\"m\"]"),
            m(SocketPacket::Event(b"[\"m\"]"))
        );
        assert_eq!(decode(b"431[\"ok\"]"), m(SocketPacket::Ack(b"[\"ok\"]")));
        assert_eq!(decode(b"41"), m(SocketPacket::Disconnect));
        assert_eq!(decode(b"41/chat"), m(SocketPacket::Disconnect));
        assert_eq!(
            decode(b"44{\"message\":\"no\"}"),
            m(SocketPacket::ConnectError(b"{\"message\":\"no\"}"))
        );
        assert_eq!(decode(b"451-[\"m\",{}]"), m(SocketPacket::Binary));
        assert_eq!(decode(b"4"), m(SocketPacket::Malformed));
        assert_eq!(decode(b"49"), m(SocketPacket::Malformed));
    }

    #[test]
    fn opens_connects_answers_pings_and_delivers_first_arguments() {
        let s = spec(None, None);
        let mut out = Vec::new();
        let mut state = s.opened(4, &mut out);
        assert_eq!((state, out.len()), (State::AwaitOpen, 0));
        let open = br#"0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000}"#;
        assert_eq!(
            s.incoming(&mut state, 4, OpCode::Text, open, &mut out),
            Incoming::Nothing
        );
        assert_eq!(
            (state, out.as_slice()),
            (State::AwaitConnect, &[b"40".to_vec()][..])
        );
        out.clear();
        // An event before the connect is not a delivery.
        let event = br#"42["message","stamp"]"#;
        assert_eq!(
            s.incoming(&mut state, 4, OpCode::Text, event, &mut out),
            Incoming::Nothing
        );
        assert_eq!(
            s.incoming(&mut state, 4, OpCode::Text, br#"40{"sid":"n"}"#, &mut out),
            Incoming::Ready
        );
        assert_eq!(
            s.incoming(&mut state, 4, OpCode::Text, event, &mut out),
            Incoming::Extracted(b"stamp".to_vec())
        );
        assert_eq!(
            s.incoming(&mut state, 4, OpCode::Text, b"2", &mut out),
            Incoming::Nothing
        );
        assert_eq!(out, [b"3".to_vec()]);
        assert!(matches!(
            s.incoming(&mut state, 4, OpCode::Text, b"41", &mut out),
            Incoming::Failed(_)
        ));
        assert!(matches!(
            s.incoming(&mut state, 4, OpCode::Text, b"1", &mut out),
            Incoming::Failed(_)
        ));
        // Publishing: an event named as the scenario says, the payload its argument.
        let mut buf = Vec::new();
        assert_eq!(s.wrap(0, OpCode::Binary, b"a\"b", &mut buf), OpCode::Text);
        assert_eq!(buf, br#"42["publish","a\"b"]"#);
    }

    #[test]
    fn a_refused_connect_fails_the_connection() {
        let s = spec(None, None);
        let mut state = State::AwaitConnect;
        let refused = br#"44{"message":"Not authorized"}"#;
        match s.incoming(&mut state, 0, OpCode::Text, refused, &mut Vec::new()) {
            Incoming::Failed(detail) => assert!(detail.contains("Not authorized"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn on_open_events_and_ready_when_follow_the_connect() {
        let s = spec(Some("42[\"subscribe\",\"{topic}\"]"), Some("/0=subscribed"));
        let mut out = Vec::new();
        let mut state = State::AwaitConnect;
        assert_eq!(
            s.incoming(&mut state, 0, OpCode::Text, b"40{\"sid\":\"n\"}", &mut out),
            Incoming::Nothing
        );
        assert_eq!(state, State::AwaitReady);
        assert_eq!(out, [br#"42["subscribe","room"]"#.to_vec()]);
        assert_eq!(
            s.incoming(
                &mut state,
                0,
                OpCode::Text,
                br#"42["subscribed","room"]"#,
                &mut out
            ),
            Incoming::Ready
        );
    }
}
