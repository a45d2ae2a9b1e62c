//! Shared helpers for the integration tests: the server under test, a raw TCP client for
//! handshake and malformed-frame tests (`raw.rs`, re-exported here), and a
//! tokio-tungstenite client.
//!
//! Every wait here is a read or a child-process wait with an upper-bound timeout; nothing
//! sleeps.
#![allow(dead_code)]

mod raw;
// Not every test binary uses the raw client.
#[allow(unused_imports)]
pub use raw::*;

use std::io::{self, BufRead, BufReader, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The longest a server may take to print its `listening on` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The default upper bound on one read in the raw client.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The mask used for every hand-built client frame; not all zeros, so an unmasking bug shows.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/// The `uringcast` binary, running on `127.0.0.1:0`; killed (SIGKILL) on drop if still running.
pub struct Server {
    child: Child,
    addr: SocketAddr,
    /// The server's stderr, line by line, when started with [`Server::start_with_log`].
    log: Option<mpsc::Receiver<String>>,
}

impl Server {
    /// Starts `uringcast --listen 127.0.0.1:0 ARGS...` and waits for its `listening on` line.
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::start_with(args, |_| {})
    }

    /// The usual echo server: `--mode echo --workers 2` plus `extra`.
    pub fn echo(extra: &[&str]) -> Result<Self> {
        let mut args = vec!["--mode", "echo", "--workers", "2"];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// Like [`start`](Self::start), with a hook to adjust the command (e.g. `pre_exec`).
    pub fn start_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> Result<Self> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_uringcast"));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Dozens of servers log to the same terminal: only warnings and errors, unless the
        // caller chose a level.
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        configure(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning uringcast {args:?}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");

        // A thread reads stdout line by line for the whole life of the child, so the server
        // never blocks on a full pipe; the first `listening on` line is handed over.
        let (tx, rx) = mpsc::channel::<io::Result<String>>();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut tx = Some(tx);
            for line in &mut lines {
                let Some(sender) = &tx else {
                    continue; // drain the rest
                };
                let is_listening = matches!(&line, Ok(l) if l.starts_with("listening on "));
                let failed = line.is_err();
                let _ = sender.send(line);
                if is_listening || failed {
                    tx = None;
                }
            }
        });

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut other_lines = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("listening on ") {
                        break rest.trim().parse::<SocketAddr>().with_context(|| {
                            format!("parsing the address in the stdout line {line:?}")
                        })?;
                    }
                    other_lines.push(line);
                }
                Ok(Err(e)) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e).context("reading the server's stdout");
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait()?;
                    bail!(
                        "uringcast {args:?} closed stdout without printing `listening on` \
                         (exit status {status}); other stdout lines: {other_lines:?}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "uringcast {args:?} printed no `listening on` line within \
                         {STARTUP_TIMEOUT:?}; other stdout lines: {other_lines:?}"
                    );
                }
            }
        };
        ensure!(
            addr.ip().is_loopback() && addr.port() != 0,
            "the server reported {addr}, expected 127.0.0.1 and a real port"
        );
        Ok(Self {
            child,
            addr,
            log: None,
        })
    }

    /// Like [`start`](Self::start) at log level `info`, keeping its stderr lines (still
    /// echoed to ours) for [`wait_for_log`](Self::wait_for_log).
    pub fn start_with_log(args: &[&str]) -> Result<Self> {
        let mut server = Self::start_with(args, |cmd| {
            cmd.stderr(Stdio::piped()).env("RUST_LOG", "info");
        })?;
        let stderr = server.child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                let _ = tx.send(line); // drained to the end even when nobody listens
            }
        });
        server.log = Some(rx);
        Ok(server)
    }

    /// Waits for the next stderr line containing `needle` (at most `limit`); returns it.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> Result<String> {
        let log = self
            .log
            .as_ref()
            .context("the server was not started with start_with_log")?;
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("no log line with {needle:?} within {limit:?}"),
            }
        }
    }

    /// The bound address from the `listening on` line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// Sends SIGINT.
    pub fn sigint(&self) -> Result<()> {
        self.signal(libc::SIGINT)
    }

    fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // The child is reaped only by `wait_exit` or `Drop`, both of which take `&mut self`.
        // SAFETY: kill(2) takes plain integers; the pid is our own child, not yet reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("kill(2)");
        }
        Ok(())
    }

    /// Returns `Some(status)` if the server has exited, without waiting.
    pub fn try_exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Fails if the server process has exited.
    pub fn assert_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the server exited unexpectedly: {status}");
        }
        Ok(())
    }

    /// Waits for the process to exit, at most `timeout` (then fails; Drop kills it).
    /// Waits on a pidfd with poll(2): woken by the exit itself, not by polling.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: pidfd_open(2) takes plain integers; our unreaped child's pid cannot be recycled.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("pidfd_open(2)");
        }
        // SAFETY: `fd` was just returned by pidfd_open and is owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd, count 1.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(err).context("poll(2) on a pidfd");
            }
            if n > 0 {
                return Ok(self.child.wait()?);
            }
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            bail!("the server did not exit within {timeout:?}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tokio-tungstenite client
// ---------------------------------------------------------------------------------------------

/// A tokio-tungstenite client connection.
pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Client config with tungstenite's own size limits lifted, so only the server's count.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None)
}

/// Opens a tokio-tungstenite connection to the server (within [`READ_TIMEOUT`]).
pub async fn ws_connect(addr: SocketAddr) -> Result<Ws> {
    let url = format!("ws://{addr}/");
    let (ws, response) = tokio::time::timeout(
        READ_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true),
    )
    .await
    .with_context(|| format!("websocket connect to {addr} timed out"))?
    .with_context(|| format!("websocket connect to {addr}"))?;
    ensure!(response.status() == 101, "status {}", response.status());
    Ok(ws)
}

/// Deterministic pseudo-random bytes (xorshift), so every size checks real content.
pub fn pattern_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word = x.to_le_bytes();
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&word[..take]);
    }
    out
}

/// Valid UTF-8 of exactly `len` bytes with 1-, 2-, 3- and 4-byte characters.
pub fn pattern_text(len: usize) -> String {
    const CHARS: [char; 6] = ['a', 'é', '€', '😀', 'Z', 'ж'];
    let mut s = String::with_capacity(len);
    let mut i = 0usize;
    loop {
        let c = CHARS[i % CHARS.len()];
        if s.len() + c.len_utf8() > len {
            break;
        }
        s.push(c);
        i += 1;
    }
    while s.len() < len {
        s.push('.');
    }
    s
}

/// First index where two byte strings differ, for readable failure messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}
