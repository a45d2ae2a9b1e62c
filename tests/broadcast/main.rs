//! Integration tests of the broadcast engine: the binary in `--mode broadcast`, and servers
//! started in-process with `spawn_with` and handlers of the tests' own.
//!
//! Every server listens on `127.0.0.1:0`. Every wait is a read or a signal bounded by a
//! timeout; nothing sleeps. "Never received" is shown by a marker sent afterwards along the
//! same path: it must be the first thing that arrives.

#[path = "../common/mod.rs"]
mod common;
mod endpoints;
mod handler_api;
mod hooks;
mod ordering;
mod slow_consumer;
mod support;

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::*;
use futures_util::task::AtomicWaker;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uringcast::broadcast::{Connection, Decision, Handler, Message};
use uringcast::protocol::handshake::Request;
use uringcast::protocol::{CloseCode, OpCode};
use uringcast::server::{spawn_with, RoomsByPath, ServerHandle};

/// Upper bound on any single await.
pub(crate) const STEP: Duration = Duration::from_secs(20);

#[allow(unused_imports)]
use {endpoints::*, handler_api::*, ordering::*, slow_consumer::*, support::*};
