//! uringcast: a WebSocket (RFC 6455) broadcast server for Linux on io_uring.
//!
//! The crate is built in layers, each knowing only the one below it:
//!
//! - [`protocol`]: the sans-IO core (handshake, frames, masking, UTF-8, close rules). Bytes in,
//!   events and bytes out; no sockets, no clock, no threads.
//! - [`tls`]: the sans-IO TLS layer (rustls over caller-owned buffers) for `wss://`.
//! - [`driver`]: thread-per-core io_uring workers around the core: direct descriptors,
//!   provided buffer rings, bounded send queues, one timer wheel per worker.
//! - [`broker`]: scale-out across nodes: a link to Redis, Redis Cluster or NATS that is one
//!   more outside publisher to the workers, on a thread of its own.
//! - [`pusher`]: the Pusher Channels protocol (`--mode pusher`) as a handler on the broadcast
//!   engine, its codec, auth and API signing sans-IO.
//! - [`server`]: starts the workers for a [`Config`](config::Config) and a service.
//!
//! See `docs/ARCHITECTURE.md` for how a byte travels through them.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod auth;
pub mod broadcast;
pub mod broker;
pub mod config;
pub mod driver;
pub mod limits;
mod modes;
mod prefetch;
pub mod protocol;
pub mod pusher;
pub mod refusal;
pub mod server;
pub mod sse;
pub mod tls;
