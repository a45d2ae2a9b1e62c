//! Echo and broadcast server on tokio-tungstenite, `--mode echo` (the default) or
//! `--mode broadcast`.
//!
//! Echo: `accept_async`, then every Text or Binary message is sent back. Pings are answered and
//! closes completed by tungstenite itself.
//!
//! Broadcast, after tokio-tungstenite's examples/server.rs: `accept_hdr_async_with_config` (the
//! callback keeps the request path), a map of peers each with an unbounded sender
//! (`uringcast_peers::Topics`), and per connection `split` into a sink fed by
//! `rx.map(Ok).forward(outgoing)` and a stream whose messages are cloned into the topic's
//! senders. The URL convention every server in the benchmark follows:
//! - an upgrade on `/<topic>` subscribes to `<topic>` (`/` alone is topic `/`), and each Text or
//!   Binary message it sends is published to that topic, the sender included;
//! - an upgrade on `/publish/<topic>` subscribes to nothing, and each Text or Binary message it
//!   sends goes to every subscriber of `<topic>`, not back to itself.
//!
//! The opcode is kept (a publish is the received `Message` itself, cloned per subscriber: its
//! payload is a shared `Bytes`). Limits: received messages up to 16 MiB
//! (`WebSocketConfig::max_message_size`); each subscriber counts the bytes queued for it in an
//! `Arc<AtomicUsize>`, decremented as the forwarding sink takes them into tungstenite's write
//! buffer (which writes to the socket past `write_buffer_size`, 128 KiB, and holds further
//! sends until it has), and a publish that would take it past 1 MiB closes it as a slow
//! consumer: it leaves the topic, its queue is dropped and its socket closed. TCP_NODELAY is set
//! in both modes.
//!
//! With `--tls-cert FILE --tls-key FILE` it speaks wss:// (tokio-rustls in front of the same
//! code).
//!
//! `tungstenite-echo --listen 127.0.0.1:0 --threads 1 [--mode broadcast] [--tls-cert F --tls-key F]`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::{future, SinkExt, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use uringcast_peers::{Mode, Route, Topics};

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    let mut ws = match tokio_tungstenite::accept_async(stream).await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("handshake failed: {e}");
            return;
        }
    };
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                if let Err(e) = ws.send(msg).await {
                    eprintln!("send failed: {e}");
                    return;
                }
            }
            Ok(Message::Close(_)) => {}
            Ok(_) => {}
            Err(e) => {
                eprintln!("read failed: {e}");
                return;
            }
        }
    }
}

async fn serve_broadcast<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    topics: Arc<Topics<Message>>,
) {
    let mut path = String::new();
    // The Err type (an HTTP response) is the one tungstenite's `Callback` trait asks for.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, response: Response| {
        path = req.uri().path().to_owned();
        Ok(response)
    };
    let config =
        WebSocketConfig::default().max_message_size(Some(uringcast_peers::MAX_MESSAGE_SIZE));
    let ws = match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
    {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("handshake failed: {e}");
            return;
        }
    };
    // Each Text or Binary message goes to the topic's subscribers; tungstenite answers pings
    // and completes closes on its own.
    let publish = |topic: &str, msg: Message| {
        if msg.is_text() || msg.is_binary() {
            topics.publish(topic, &msg, msg.len());
        }
        future::ok(())
    };
    let result = match Route::of_path(&path) {
        Route::Publish(topic) => ws.try_for_each(|msg| publish(&topic, msg)).await,
        Route::Subscribe(topic) => {
            let (tx, rx) = futures_channel::mpsc::unbounded();
            let queued = Arc::new(AtomicUsize::new(0));
            let subscription = topics.subscribe(&topic, tx, queued.clone());
            let (outgoing, incoming) = ws.split();
            let broadcast_incoming = incoming.try_for_each(|msg| publish(&topic, msg));
            let receive_from_others = rx
                .map(|msg: Message| {
                    queued.fetch_sub(msg.len(), Ordering::Relaxed);
                    Ok(msg)
                })
                .forward(outgoing);
            let result = tokio::select! {
                r = broadcast_incoming => r,
                r = receive_from_others => r,
                _ = subscription.killed => Ok(()), // a slow consumer: dropped, queue and all
            };
            topics.unsubscribe(&topic, subscription.id);
            result
        }
    };
    if let Err(e) = result {
        eprintln!("connection failed: {e}");
    }
}

fn main() {
    let args = uringcast_peers::args(&["listen", "threads", "mode", "tls-cert", "tls-key"]);
    let listen: std::net::SocketAddr =
        uringcast_peers::arg(&args, "listen", "127.0.0.1:0".parse().unwrap());
    let threads: usize = uringcast_peers::arg(&args, "threads", 1);
    let mode: Mode = uringcast_peers::arg(&args, "mode", Mode::Echo);
    let tls = uringcast_peers::tls_acceptor(&args);
    uringcast_peers::runtime(threads).block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        uringcast_peers::announce(listener.local_addr().expect("local_addr"));
        let topics = Arc::new(Topics::default());
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (tls, topics) = (tls.clone(), topics.clone());
            tokio::spawn(async move {
                match (tls, mode) {
                    (None, Mode::Echo) => serve(stream).await,
                    (None, Mode::Broadcast) => serve_broadcast(stream, topics).await,
                    (Some(tls), mode) => match tls.accept(stream).await {
                        Ok(stream) if mode == Mode::Echo => serve(stream).await,
                        Ok(stream) => serve_broadcast(stream, topics).await,
                        Err(e) => eprintln!("TLS handshake failed: {e}"),
                    },
                }
            });
        }
    });
}
