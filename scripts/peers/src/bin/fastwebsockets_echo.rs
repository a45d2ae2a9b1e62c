//! Echo server on fastwebsockets, after its examples/echo_server.rs: hyper http1 with
//! upgrades, `upgrade::upgrade`, a `FragmentCollector`, every Text or Binary frame written back.
//! auto_close and auto_pong are set explicitly (they are also the defaults).
//!
//! `fastwebsockets-echo --listen 127.0.0.1:0 --threads 1`

use fastwebsockets::{upgrade, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::net::TcpListener;

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

fn main() {
    let args = uringcast_peers::args(&["listen", "threads"]);
    let listen: std::net::SocketAddr =
        uringcast_peers::arg(&args, "listen", "127.0.0.1:0".parse().unwrap());
    let threads: usize = uringcast_peers::arg(&args, "threads", 1);
    uringcast_peers::runtime(threads).block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        uringcast_peers::announce(listener.local_addr().expect("local_addr"));
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = http1::Builder::new()
                    .serve_connection(io, service_fn(server_upgrade))
                    .with_upgrades();
                if let Err(e) = conn.await {
                    eprintln!("http error: {e:?}");
                }
            });
        }
    });
}
