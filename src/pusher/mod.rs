//! The Pusher Channels protocol (version 7) over the broadcast engine: `--mode pusher`.
//!
//! Sans-IO pieces first, one concept each: [`channel`] names, the [`message`] codec,
//! [`auth`] for subscriptions and sign-in, [`signing`] for the HTTP API, the [`presence`]
//! member set, the client-event [`rate`] limit and the [`app`] settings.

pub mod app;
pub mod auth;
pub mod channel;
pub mod message;
pub mod presence;
pub mod rate;
pub mod signing;
