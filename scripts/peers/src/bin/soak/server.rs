//! The server's side: its RSS and its `/metrics`.

use super::*;

/// VmRSS of `pid` from /proc/PID/status, KiB.
pub(crate) fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The server's `/metrics`, summed over workers: name → value.
pub(crate) async fn fetch_metrics(addr: SocketAddr) -> BTreeMap<String, u64> {
    let head = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let response = timeout(IO_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(head.as_bytes()).await?;
        read_to_end(&mut stream, 1 << 20).await
    })
    .await;
    let mut out = BTreeMap::new();
    let Ok(Ok(response)) = response else {
        return out;
    };
    let text = String::from_utf8_lossy(&response);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let mut parts = line.split_whitespace();
        let (Some(series), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        if let Ok(value) = value.parse::<u64>() {
            *out.entry(name.trim_start_matches("uringcast_").to_owned())
                .or_insert(0) += value;
        }
    }
    out
}
