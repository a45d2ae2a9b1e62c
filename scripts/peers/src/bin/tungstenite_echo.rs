//! Echo server on tokio-tungstenite: `accept_async`, then every Text or Binary message is sent
//! back. Pings are answered and closes completed by tungstenite itself.
//!
//! `tungstenite-echo --listen 127.0.0.1:0 --threads 1`

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

async fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
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

fn main() {
    let args = uringcast_peers::args(&["listen", "threads"]);
    let listen: std::net::SocketAddr =
        uringcast_peers::arg(&args, "listen", "127.0.0.1:0".parse().unwrap());
    let threads: usize = uringcast_peers::arg(&args, "threads", 1);
    uringcast_peers::runtime(threads).block_on(async move {
        let listener = TcpListener::bind(listen).await.expect("bind");
        uringcast_peers::announce(listener.local_addr().expect("local_addr"));
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream));
                }
                Err(e) => eprintln!("accept failed: {e}"),
            }
        }
    });
}
