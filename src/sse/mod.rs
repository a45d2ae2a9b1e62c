//! Server-Sent Events (the WHATWG HTML standard, §9.2 "Server-sent events"), sans-IO: what a
//! request for an event stream asks for ([`request`]), and the bytes of the response head and
//! of each event ([`event`]). No sockets and no topics here: the driver sends these bytes on a
//! connection in its stream stage, and the broadcast engine decides what goes on it.

pub mod event;
pub mod request;

pub use event::{encode_event, position_only, reset_event, response_head, EventId, PING};
pub use request::{is_event_stream, resume_from};
