//! The servers the load generator runs against: an echo and a broadcast server written with
//! tokio-tungstenite (independent of uringcast's code), the echo server stalling on demand, and
//! uringcast itself in-process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use uringcast::config::Mode;
use uringcast::server::{self, Server, ServerHandle};

/// The stalling server pauses this long every second.
const STALL: Duration = Duration::from_millis(200);

/// An echo server on tokio-tungstenite; with `stall`, each echo waits while the flag is set.
pub fn tungstenite_echo(runtime: &Runtime, stall: Option<watch::Receiver<bool>>) -> SocketAddr {
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("an address");
    serve_echo(runtime, listener, stall, Arc::default());
    addr
}

/// Serves [`tungstenite_echo`] on `listener`, counting its accepted connections in `accepted`.
pub fn serve_echo(
    runtime: &Runtime,
    listener: TcpListener,
    stall: Option<watch::Receiver<bool>>,
    accepted: Arc<AtomicU64>,
) {
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::Relaxed);
            let stall = stall.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if let Some(stalled) = &stall {
                        // Wakes the moment the stall ends; no polling.
                        let mut stalled = stalled.clone();
                        if stalled.wait_for(|on| !*on).await.is_err() {
                            return;
                        }
                    }
                    if let Message::Close(_) = message {
                        let _ = ws.close(None).await;
                        return;
                    }
                    let data = matches!(message, Message::Text(_) | Message::Binary(_));
                    if data && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A flag set for [`STALL`] at the start of every second, for the length of a test. The
/// timer is the fault being injected (the system under test stalls on a clock), not a wait
/// standing in for a signal.
pub fn stall_flag(runtime: &Runtime) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if tx.send(true).is_err() {
                return;
            }
            tokio::time::sleep(STALL).await;
            if tx.send(false).is_err() {
                return;
            }
        }
    });
    rx
}

pub type Topics = Arc<Mutex<HashMap<String, Vec<UnboundedSender<Message>>>>>;

/// A broadcast server on tokio-tungstenite: the path is the topic; every message a connection
/// sends goes to every connection on its path, the sender included (as uringcast does). A
/// connection joins its topic before its 101 is sent, so it misses nothing published after.
pub fn tungstenite_broadcast(runtime: &Runtime) -> SocketAddr {
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("an address");
    serve_broadcast(runtime, listener, Arc::default(), Arc::default());
    addr
}

/// Serves [`tungstenite_broadcast`] on `listener` with the topics `topics` (several listeners
/// sharing them are one server on several addresses), counting accepted connections in
/// `accepted`.
#[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
pub fn serve_broadcast(
    runtime: &Runtime,
    listener: TcpListener,
    topics: Topics,
    accepted: Arc<AtomicU64>,
) {
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::Relaxed);
            let topics = Arc::clone(&topics);
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let (tx, mut rx) = unbounded_channel::<Message>();
                let path = Arc::new(Mutex::new(String::new()));
                let joined = Arc::clone(&path);
                let join_topics = Arc::clone(&topics);
                let callback = move |request: &Request, response: Response| {
                    let topic = request.uri().path().to_owned();
                    join_topics
                        .lock()
                        .unwrap()
                        .entry(topic.clone())
                        .or_default()
                        .push(tx);
                    *joined.lock().unwrap() = topic;
                    Ok(response)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                let topic = path.lock().unwrap().clone();
                let (mut sink, mut stream) = ws.split();
                let writer = tokio::spawn(async move {
                    while let Some(message) = rx.recv().await {
                        let close = matches!(message, Message::Close(_));
                        if sink.send(message).await.is_err() || close {
                            return;
                        }
                    }
                });
                while let Some(Ok(message)) = stream.next().await {
                    match message {
                        Message::Text(_) | Message::Binary(_) => {
                            let subscribers = topics.lock().unwrap().get(&topic).cloned();
                            for tx in subscribers.into_iter().flatten() {
                                let _ = tx.send(message.clone());
                            }
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                // Leave the topic, answer the close, and let the writer end.
                if let Some(list) = topics.lock().unwrap().get_mut(&topic) {
                    list.retain(|tx| !tx.is_closed());
                }
                drop(writer.await);
            });
        }
    });
}

pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

pub fn uringcast(mode: Mode, token: Option<&str>) -> ServerHandle {
    let config = Server::builder()
        .listen("127.0.0.1:0".parse().expect("a valid address"))
        .workers(1)
        .mode(mode)
        .ping_interval(None)
        .publish_token(token.map(str::to_owned))
        // The WebSocket publishers are members of their room: a publish token alone would
        // make them read-only.
        .client_publish(uringcast::auth::ClientPublish::All)
        .build()
        .expect("a valid configuration");
    server::spawn(config).expect("the server starts")
}
