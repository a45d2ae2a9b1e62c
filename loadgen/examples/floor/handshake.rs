//! The floors' opening handshake (`floor_server`, `echo_floor`): as little as answers a client
//! correctly, read and written with blocking calls.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;

/// Reads the upgrade request and answers 101; `None` for a request that is not an upgrade.
pub fn handshake(stream: TcpStream) -> io::Result<Option<TcpStream>> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream);
    let mut key = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("sec-websocket-key") {
                key = Some(value.trim().to_owned());
            }
        }
    }
    let Some(key) = key else { return Ok(None) };
    let mut stream = reader.into_inner();
    let accept = uringcast::protocol::handshake::accept_key(key.as_bytes());
    write!(
        stream,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )?;
    Ok(Some(stream))
}
