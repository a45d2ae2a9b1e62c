//! The server holds more connections than its RLIMIT_NOFILE allows ordinary fds for:
//! run with a limit of 1024 and `--workers 4`, it must serve 3,000 connections at once.

mod common;

use std::io;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::*;
use futures_util::{stream, SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

const SERVER_NOFILE: libc::rlim_t = 1024;
const CONNECTIONS: usize = 3000;
/// Connections being opened at any one moment: the point here is how many are held, not how
/// fast a burst of SYNs gets through the accept backlog.
const OPENING_AT_ONCE: usize = 256;

/// Makes sure this test process may hold `need` fds, raising its soft limit if needed.
fn ensure_own_fd_limit(need: libc::rlim_t) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid `rlimit` we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit");
    }
    if lim.rlim_cur >= need {
        return Ok(());
    }
    ensure!(
        lim.rlim_max >= need,
        "this test needs {need} fds but the hard RLIMIT_NOFILE is {}",
        lim.rlim_max
    );
    lim.rlim_cur = need;
    // SAFETY: setrlimit reads the valid `rlimit` we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error()).context("setrlimit");
    }
    Ok(())
}

/// The "Max open files" soft limit of a process, from /proc/PID/limits.
fn nofile_of(pid: u32) -> Result<libc::rlim_t> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no `Max open files` line")?;
    let soft = line["Max open files".len()..]
        .split_whitespace()
        .next()
        .context("no soft limit")?;
    Ok(soft.parse()?)
}

async fn one_wave(addr: std::net::SocketAddr, wave: usize) -> Result<()> {
    // Open all (at most OPENING_AT_ONCE in flight), handshake included.
    let mut conns: Vec<Ws> = stream::iter(0..CONNECTIONS)
        .map(|i| async move {
            ws_connect(addr)
                .await
                .with_context(|| format!("wave {wave}: connection {i} of {CONNECTIONS}"))
        })
        .buffer_unordered(OPENING_AT_ONCE)
        .collect::<Vec<Result<Ws>>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    ensure!(conns.len() == CONNECTIONS);

    // All are open at once now; each echoes one message.
    stream::iter(conns.iter_mut().enumerate())
        .map(|(i, ws)| async move {
            let msg = format!("wave {wave} connection {i}");
            ws.send(Message::text(msg.clone())).await?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str() == msg => return Ok(()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => bail!("wave {wave}: connection {i}: expected its echo, got {other:?}"),
                }
            }
        })
        .buffer_unordered(CONNECTIONS)
        .collect::<Vec<Result<()>>>()
        .await
        .into_iter()
        .collect::<Result<()>>()?;

    // Then all close: close handshake, then the server ends the TCP connection.
    stream::iter(conns.iter_mut().enumerate())
        .map(|(i, ws)| async move {
            ws.close(None).await?;
            loop {
                match ws.next().await {
                    None | Some(Err(_)) => return Ok(()),
                    Some(Ok(Message::Close(_) | Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(other)) => bail!("wave {wave}: connection {i}: after close: {other:?}"),
                }
            }
        })
        .buffer_unordered(CONNECTIONS)
        .collect::<Vec<Result<()>>>()
        .await
        .into_iter()
        .collect::<Result<()>>()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_connections_under_nofile_1024() -> Result<()> {
    ensure_own_fd_limit(CONNECTIONS as libc::rlim_t + 1000)?;
    let mut server = Server::start_with(&["--mode", "echo", "--workers", "4"], |cmd| {
        // The closure runs in the forked child before exec (`last_os_error` only reads errno).
        // SAFETY: it only calls setrlimit(2), which is async-signal-safe, and allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: SERVER_NOFILE,
                    rlim_max: SERVER_NOFILE,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })?;
    let nofile = nofile_of(server.pid())?;
    ensure!(
        nofile == SERVER_NOFILE,
        "the server runs with RLIMIT_NOFILE {nofile}, expected {SERVER_NOFILE}"
    );

    let addr = server.addr();
    let overall = Duration::from_secs(45);
    // Two waves: the second shows that closed connections give their slots back.
    for wave in 1..=2 {
        timeout(overall, one_wave(addr, wave))
            .await
            .with_context(|| format!("wave {wave} did not finish within {overall:?}"))??;
        server.assert_running()?;
    }
    Ok(())
}
