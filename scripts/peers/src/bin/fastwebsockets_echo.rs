//! Echo and broadcast server on fastwebsockets, `--mode echo` (the default) or
//! `--mode broadcast`; both after its examples: hyper http1 with upgrades, `upgrade::upgrade`,
//! auto_close and auto_pong set explicitly (they are also the defaults).
//!
//! Echo, after examples/echo_server.rs: a `FragmentCollector`, every Text or Binary frame
//! written back.
//!
//! Broadcast, after examples/echo_server_split.rs (`WebSocket::split(tokio::io::split)`, a
//! `FragmentCollectorRead` on the read half; the `unstable-split` feature): the read half
//! publishes, and the write half writes what a per-connection unbounded channel brings, the
//! read half's obligated sends (pongs, the close reply) included. A map of peers each with an
//! unbounded sender (`uringcast_peers::Topics`) routes publishes. The URL convention every
//! server in the benchmark follows:
//! - an upgrade on `/<topic>` subscribes to `<topic>` (`/` alone is topic `/`), and each Text or
//!   Binary message it sends is published to that topic, the sender included;
//! - an upgrade on `/publish/<topic>` subscribes to nothing, and each Text or Binary message it
//!   sends goes to every subscriber of `<topic>`, not back to itself.
//!
//! The opcode is kept; a publish is the opcode and the payload as one shared `Bytes`, written to
//! each subscriber as a `Payload::Borrowed` frame. Limits: received frames under 16 MiB
//! (`set_max_message_size`; fastwebsockets checks it per frame, and its `FragmentCollectorRead`
//! does not bound a fragmented message's total); each subscriber counts the bytes queued for it
//! in an `Arc<AtomicUsize>` that its writer decrements once `write_frame` has written them, and
//! a publish that would take it past 1 MiB closes it as a slow consumer: it leaves the topic,
//! its queue is dropped and its socket closed. TCP_NODELAY is set in both modes. Broadcast
//! connections run as ordinary tasks, not `unconstrained` as in the echo example, so that a
//! publisher whose socket always has data cannot starve the subscribers' writers.
//!
//! With `--tls-cert FILE --tls-key FILE` it speaks wss:// (tokio-rustls under hyper).
//!
//! `fastwebsockets-echo --listen 127.0.0.1:0 --threads 1 [--mode broadcast] [--tls-cert F --tls-key F]`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::{upgrade, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError};
use futures_util::StreamExt;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use uringcast_peers::{Mode, Route, Topics};

/// What a connection's writer sends: a frame's opcode and its payload.
type Outgoing = (OpCode, Bytes);

async fn handle_client(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    let mut ws = fastwebsockets::FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn handle_broadcast(
    fut: upgrade::UpgradeFut,
    route: Route,
    topics: Arc<Topics<Outgoing>>,
) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    ws.set_max_message_size(uringcast_peers::MAX_MESSAGE_SIZE);
    let (rx, mut tx) = ws.split(tokio::io::split);
    let mut rx = FragmentCollectorRead::new(rx);

    let (out_tx, mut out_rx) = futures_channel::mpsc::unbounded::<Outgoing>();
    let queued = Arc::new(AtomicUsize::new(0));
    // A publish-only connection's kill switch is kept here, so it never fires.
    let (_keep, never) = futures_channel::oneshot::channel::<()>();
    let (topic, id, killed) = match route {
        Route::Subscribe(topic) => {
            let subscription = topics.subscribe(&topic, out_tx.clone(), queued.clone());
            (topic, Some(subscription.id), subscription.killed)
        }
        Route::Publish(topic) => (topic, None, never),
    };

    let reader = async {
        loop {
            let mut obligated = |frame: Frame| {
                let _ =
                    out_tx.unbounded_send((frame.opcode, Bytes::copy_from_slice(&frame.payload)));
                async { Ok::<_, WebSocketError>(()) }
            };
            let frame = match rx.read_frame(&mut obligated).await {
                Ok(frame) => frame,
                Err(e) => break Err(e),
            };
            match frame.opcode {
                // The close reply is queued; the writer ends the connection once it is written.
                OpCode::Close => std::future::pending::<()>().await,
                OpCode::Text | OpCode::Binary => {
                    let payload = match frame.payload {
                        Payload::Bytes(b) => b.freeze(),
                        other => Bytes::from(Vec::from(other)),
                    };
                    let len = payload.len();
                    topics.publish(&topic, &(frame.opcode, payload), len);
                }
                _ => {}
            }
        }
    };
    let writer = async {
        while let Some((opcode, payload)) = out_rx.next().await {
            tx.write_frame(Frame::new(true, opcode, None, Payload::Borrowed(&payload)))
                .await?;
            match opcode {
                OpCode::Close => break,
                OpCode::Text | OpCode::Binary => {
                    queued.fetch_sub(payload.len(), Ordering::Relaxed);
                }
                _ => {}
            }
        }
        Ok(())
    };
    let result = tokio::select! {
        r = reader => r,
        r = writer => r,
        _ = killed => Ok(()), // a slow consumer: dropped, queue and all
    };
    if let Some(id) = id {
        topics.unsubscribe(&topic, id);
    }
    result
}

async fn server_upgrade(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::task::spawn(async move {
        if let Err(e) = tokio::task::unconstrained(handle_client(fut)).await {
            eprintln!("connection error: {e}");
        }
    });
    Ok(response)
}

async fn server_upgrade_broadcast(
    mut req: Request<Incoming>,
    topics: Arc<Topics<Outgoing>>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let route = Route::of_path(req.uri().path());
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::task::spawn(async move {
        if let Err(e) = handle_broadcast(fut, route, topics).await {
            eprintln!("connection error: {e}");
        }
    });
    Ok(response)
}

/// Serves HTTP/1.1 on `io` (a TCP or TLS stream) until the upgrade, as hyper's examples do.
async fn serve_http<I>(io: I, mode: Mode, topics: Arc<Topics<Outgoing>>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(io);
    let builder = http1::Builder::new();
    let conn = match mode {
        Mode::Echo => {
            builder
                .serve_connection(io, service_fn(server_upgrade))
                .with_upgrades()
                .await
        }
        Mode::Broadcast => {
            builder
                .serve_connection(
                    io,
                    service_fn(move |req| server_upgrade_broadcast(req, topics.clone())),
                )
                .with_upgrades()
                .await
        }
    };
    if let Err(e) = conn {
        eprintln!("http error: {e:?}");
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
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (tls, topics) = (tls.clone(), topics.clone());
            tokio::spawn(async move {
                match tls {
                    None => serve_http(stream, mode, topics).await,
                    Some(tls) => match tls.accept(stream).await {
                        Ok(stream) => serve_http(stream, mode, topics).await,
                        Err(e) => eprintln!("TLS handshake failed: {e}"),
                    },
                }
            });
        }
    });
}
