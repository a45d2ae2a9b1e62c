//! Start-up errors and a full direct-descriptor table: clear errors, and a worker that pauses
//! accepting when its table is full and resumes when a slot frees.

mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use common::*;

/// With RLIMIT_NOFILE at 64, one worker's table holds 64 connections. Clients beyond that wait
/// in the listen backlog (the worker stops accepting rather than letting the kernel accept and
/// reset them) and are served as soon as earlier connections close.
#[test]
fn full_table_pauses_accepting_and_resumes() -> Result<()> {
    const LIMIT: libc::rlim_t = 64;
    let server = Server::start_with(&["--workers", "1", "--ping-interval", "0"], |cmd| {
        // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: LIMIT,
                    rlim_max: LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    })?;
    let addr = server.addr();
    let mut first: Vec<RawClient> = (0..LIMIT)
        .map(|i| {
            RawClient::upgrade(addr).with_context(|| format!("connection {i} of the first {LIMIT}"))
        })
        .collect::<Result<_>>()?;
    // These connect (the kernel completes TCP handshakes into the backlog) but are not accepted.
    let mut waiting: Vec<RawClient> = (0..8)
        .map(|_| {
            let mut c = RawClient::connect(addr)?;
            c.send(upgrade_request(addr, SAMPLE_KEY).as_bytes())?;
            Ok(c)
        })
        .collect::<Result<_>>()?;
    // Every accepted connection still works while the table is full.
    let last = first.last_mut().expect("LIMIT > 0");
    last.send(&client_frame(
        uringcast::protocol::OpCode::Text,
        true,
        b"still here",
    ))?;
    let (_, echo) = last.read_message().context("echo on a full table")?;
    ensure!(echo == b"still here", "wrong echo on a full table");
    // Free eight slots; the eight waiting clients must now be upgraded.
    first.truncate(first.len() - 8);
    for (i, client) in waiting.iter_mut().enumerate() {
        let head = client
            .read_http_head()
            .with_context(|| format!("waiting client {i} after slots were freed"))?;
        ensure!(
            head.status == 101,
            "waiting client {i} got {}",
            head.status_line
        );
    }
    drop(first);
    Ok(())
}

#[test]
fn address_in_use_is_a_clear_error() -> Result<()> {
    // A listener without SO_REUSEPORT makes the port unavailable to the server's listeners.
    let taken = TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let output = Command::new(env!("CARGO_BIN_EXE_uringcast"))
        .args(["--listen", &addr.to_string(), "--workers", "1"])
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(1),
        "exit status {:?}, stderr: {stderr}",
        output.status
    );
    ensure!(
        stderr.contains(&format!("cannot listen on {addr}")) && stderr.contains("in use"),
        "stderr does not say the address is in use: {stderr}"
    );
    ensure!(output.stdout.is_empty(), "printed a listening line anyway");
    Ok(())
}

/// Every out-of-range setting is refused by `ServerBuilder::build` with one line naming it,
/// and exit status 2 (a usage error), before anything is bound.
#[test]
fn each_bad_value_is_one_line_and_exit_2() -> Result<()> {
    for (args, names) in [
        (&["--workers", "0"][..], "--workers"),
        (&["--workers", "100000"], "--workers"),
        (&["--ring-entries", "12"], "--ring-entries"),
        (&["--ring-entries", "4"], "--ring-entries"),
        (&["--recv-buffers", "3"], "--recv-buffers"),
        (&["--recv-buffers", "0"], "--recv-buffers"),
        (&["--recv-buffer-bytes", "0"], "--recv-buffer-bytes"),
        (&["--max-message-bytes", "0"], "--max-message-bytes"),
        (&["--max-backlog-bytes", "0"], "--max-backlog-bytes"),
        (&["--max-pending-bytes", "1000"], "--max-pending-bytes"),
        (&["--handshake-timeout", "0"], "--handshake-timeout"),
        (&["--drain-timeout", "0"], "--drain-timeout"),
        (&["--drain-timeout", "1e9"], "--drain-timeout"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_uringcast"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.code() == Some(2),
            "{args:?}: exit {:?}, not 2: {stderr}",
            output.status.code()
        );
        ensure!(
            stderr.lines().count() == 1 && stderr.contains(names),
            "{args:?}: not one line naming {names}: {stderr}"
        );
        ensure!(
            output.stdout.is_empty(),
            "{args:?} printed a listening line"
        );
    }
    Ok(())
}

#[test]
fn bad_flags_are_usage_errors() -> Result<()> {
    for args in [
        &["--workers", "0"][..],
        &["--listen", "nowhere"],
        &["--handshake-timeout", "-1"],
        &["--bogus"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_uringcast"))
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(!output.status.success(), "{args:?} was accepted");
        ensure!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        ensure!(
            stderr.lines().count() <= 6,
            "{args:?}: a usage error should be short: {stderr}"
        );
    }
    // --help works and names every flag of the issue.
    let help = Command::new(env!("CARGO_BIN_EXE_uringcast"))
        .arg("--help")
        .output()?;
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--mode",
        "--workers",
        "--max-message-bytes",
        "--max-backlog-bytes",
        "--handshake-timeout",
        "--ping-interval",
        "--drain-timeout",
    ] {
        ensure!(text.contains(flag), "--help does not mention {flag}");
    }
    Ok(())
}

/// The fallback the server takes when the kernel refuses a fixed file table: plain
/// descriptors, forced here with `--plain-descriptors`. Connections then show up in
/// /proc/PID/fd, and everything else works the same.
#[test]
fn plain_descriptor_fallback_serves_and_closes() -> Result<()> {
    let server = Server::start(&["--workers", "2", "--plain-descriptors"])?;
    let addr = server.addr();
    let fds_before = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))?.count();
    let mut clients: Vec<RawClient> = (0..50)
        .map(|_| RawClient::upgrade(addr))
        .collect::<Result<_>>()?;
    let fds_open = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))?.count();
    ensure!(
        fds_open >= fds_before + 50,
        "plain descriptors should be in the process table: {fds_before} -> {fds_open}"
    );
    for (i, client) in clients.iter_mut().enumerate() {
        let text = format!("message {i}");
        client.send(&client_frame(
            uringcast::protocol::OpCode::Text,
            true,
            text.as_bytes(),
        ))?;
        let (_, echo) = client.read_message()?;
        ensure!(echo == text.as_bytes(), "wrong echo on connection {i}");
        client.send(&client_frame(
            uringcast::protocol::OpCode::Close,
            true,
            &1000u16.to_be_bytes(),
        ))?;
        let close = client.expect_close()?;
        ensure!(
            close.close_code() == Some(1000),
            "close code {:?}",
            close.close_code()
        );
        let (_, ended) = client.read_to_end()?;
        ensure!(
            ended == Ended::Eof,
            "expected the server's FIN, got {ended:?}"
        );
    }
    Ok(())
}

/// Pongs count against the send backlog: a client that floods pings and never reads is
/// closed (1008), and the server's memory stays bounded.
#[test]
fn ping_flood_without_reading_is_bounded() -> Result<()> {
    let server = Server::start(&[
        "--workers",
        "1",
        "--max-backlog-bytes",
        "65536",
        "--drain-timeout",
        "1",
    ])?;
    let rss = |pid: u32| -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("no value")?
            .parse::<u64>()?
            * 1024)
    };
    let before = rss(server.pid())?;
    let mut client = RawClient::upgrade(server.addr())?;
    // SAFETY: setsockopt on our own open socket with a valid int.
    unsafe {
        let small: libc::c_int = 4096;
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&client.stream),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let ping = client_frame(uringcast::protocol::OpCode::Ping, true, &[b'p'; 125]);
    let burst: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 1000)
        .collect();
    let mut sent = 0usize;
    // 40 MB of pings, unless the server ends the connection first (a write then fails).
    while sent < 40 << 20 {
        if client.send(&burst).is_err() {
            break;
        }
        sent += burst.len();
    }
    let after = rss(server.pid())?;
    ensure!(
        after < before + (16 << 20),
        "server RSS grew from {before} to {after} bytes after {sent} bytes of pings"
    );
    Ok(())
}
