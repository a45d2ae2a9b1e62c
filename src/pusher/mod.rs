//! The Pusher Channels protocol (version 7) over the broadcast engine: `--mode pusher`.
//!
//! Sans-IO pieces first, one concept each: [`channel`] names, the [`message`] codec,
//! [`auth`] for subscriptions and sign-in, [`signing`] for the HTTP API, the [`presence`]
//! member set, the client-event [`rate`] limit and the [`app`] settings.

pub mod app;
pub mod auth;
pub mod channel;
pub mod cluster;
pub mod message;
pub mod presence;
pub mod rate;
pub mod signing;

mod api;
mod handler;
mod peering;
pub mod socket_id;
pub mod state;
pub mod webhook;

pub use handler::{codes, Node, Pusher, PusherConn};

/// The longest engine topic the mode makes: `APP_ID:CHANNEL` with a 100-byte app id and a
/// 200-byte channel, or a 128-byte user id behind `#server-to-user-`.
pub const MAX_TOPIC_BYTES: usize = 320;
