//! Webhooks: what an app is told about its channels (`channel_occupied`, `channel_vacated`,
//! `member_added`, `member_removed`, `client_event`), batched, signed as Pusher signs them,
//! and sent by a thread of their own so that a slow or dead endpoint never blocks a worker.
//!
//! Workers hand events to a bounded queue without waiting (a full queue drops the event and
//! counts it). The sender thread gathers what arrives within [`BATCH_WINDOW`] into one
//! `{"time_ms", "events"}` body per app, signs it (`X-Pusher-Key`, and `X-Pusher-Signature` =
//! hex HMAC-SHA256 of the body under the app's secret), and POSTs it to each of the app's
//! URLs, retrying [`ATTEMPTS`] times with doubling backoff. Only `http://` URLs are served:
//! the request is a few lines of HTTP/1.1 over a `TcpStream`, not worth a client crate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::app::{App, Apps};
use super::auth::sign;

/// Events waiting for the sender thread, at most; past it new events are dropped and counted.
pub const QUEUE_CAPACITY: usize = 10_000;
/// How long the sender gathers events into one batch.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Events in one batch, at most.
pub const MAX_BATCH: usize = 100;
/// Tries per batch and URL: the first, then retries after 100 ms, 200 ms, ...
pub const ATTEMPTS: u32 = 4;
/// The first retry's delay; each next one doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The connect, write and read timeout of one try.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The event types a webhook may ask for.
pub const EVENT_TYPES: [&str; 5] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
];

/// One webhook URL of an app, with the events it wants (all when the list is empty).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host:port/path`.
    pub url: String,
    /// `channel_occupied`, `channel_vacated`, `member_added`, `member_removed`,
    /// `client_event`; empty for all.
    #[serde(default)]
    pub event_types: Vec<String>,
}

/// An event, as the webhook body lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Event {
    /// A channel's first subscription on this node.
    ChannelOccupied {
        /// The channel.
        channel: String,
    },
    /// A channel's last subscription on this node ended.
    ChannelVacated {
        /// The channel.
        channel: String,
    },
    /// A user's first subscription to a presence channel.
    MemberAdded {
        /// The channel.
        channel: String,
        /// The user.
        user_id: String,
    },
    /// A user's last subscription to a presence channel ended.
    MemberRemoved {
        /// The channel.
        channel: String,
        /// The user.
        user_id: String,
    },
    /// A client event.
    ClientEvent {
        /// The channel.
        channel: String,
        /// The event name.
        event: String,
        /// Its data, as JSON text.
        data: String,
        /// The sender.
        socket_id: String,
        /// The sender's presence user, on presence channels.
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
}

impl Event {
    /// The event's name, as `event_types` spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ChannelOccupied { .. } => "channel_occupied",
            Self::ChannelVacated { .. } => "channel_vacated",
            Self::MemberAdded { .. } => "member_added",
            Self::MemberRemoved { .. } => "member_removed",
            Self::ClientEvent { .. } => "client_event",
        }
    }
}

/// Why a webhook URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `http://host[:port][/path]`.
    #[error("webhook URL {0:?} must be http://HOST[:PORT][/PATH] (https is not supported)")]
    Unsupported(String),
}

/// A parsed `http://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// `host:port`, for connecting and for the `Host` header.
    pub authority: String,
    /// The path and query, `/` at least.
    pub path: String,
}

impl Url {
    /// Parses `http://host[:port][/path]`.
    ///
    /// # Errors
    ///
    /// Any other scheme, an empty host, or characters that cannot go in a request line.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let bad = || UrlError::Unsupported(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.is_empty() || host.contains('@') || !url.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad());
        }
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
        let authority = if has_port {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        Ok(Self {
            authority,
            path: path.to_owned(),
        })
    }
}

/// The body of one batch: `{"time_ms": ..., "events": [...]}`.
pub fn body(time_ms: u64, events: &[Event]) -> String {
    serde_json::json!({ "time_ms": time_ms, "events": events }).to_string()
}

/// The headers that sign a body for `app`: `X-Pusher-Key` and `X-Pusher-Signature`.
pub fn signature_headers(app: &App, body: &str) -> [(&'static str, String); 2] {
    [
        ("X-Pusher-Key", app.key.clone()),
        ("X-Pusher-Signature", sign(&app.secret, body)),
    ]
}

/// The delay before try `attempt` (0 is the first try, with none).
pub fn backoff(attempt: u32) -> Duration {
    match attempt {
        0 => Duration::ZERO,
        n => FIRST_BACKOFF * 2u32.saturating_pow(n - 1),
    }
}

/// Counters of the webhooks, for `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Batches delivered (a 2xx answer).
    pub sent: AtomicU64,
    /// Batches given up after every try.
    pub failed: AtomicU64,
    /// Tries that failed and were retried.
    pub retried: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// Each app's webhook URLs with the event types they want (all when empty), by app index.
type Targets = Vec<Vec<(Url, Vec<String>)>>;

/// The workers' end: hands events to the sender thread without ever waiting.
#[derive(Clone, Debug)]
pub struct Webhooks {
    queue: SyncSender<(usize, Event)>,
    /// Which apps have webhooks, and for which events, by app index.
    wanted: Arc<Targets>,
    /// The counters.
    pub stats: Arc<WebhookStats>,
}

impl Webhooks {
    /// Starts the sender thread for the apps that have webhooks; `None` when none has.
    ///
    /// # Errors
    ///
    /// A URL that is not `http://…`.
    pub fn start(apps: &Apps) -> Result<Option<Self>, UrlError> {
        let mut wanted = Vec::new();
        for app in apps.iter() {
            let mut urls = Vec::new();
            for hook in &app.webhooks {
                urls.push((Url::parse(&hook.url)?, hook.event_types.clone()));
            }
            wanted.push(urls);
        }
        if wanted.iter().all(Vec::is_empty) {
            return Ok(None);
        }
        let (queue, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let stats = Arc::new(WebhookStats::default());
        let wanted = Arc::new(wanted);
        let apps: Vec<Arc<App>> = apps.iter().cloned().collect();
        let (thread_stats, thread_wanted) = (Arc::clone(&stats), Arc::clone(&wanted));
        let spawned = std::thread::Builder::new()
            .name("uringcast-webhooks".into())
            .spawn(move || run(&rx, &apps, &thread_wanted, &thread_stats));
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the webhook thread; webhooks are off");
            return Ok(None);
        }
        Ok(Some(Self {
            queue,
            wanted,
            stats,
        }))
    }

    /// Queues `event` for app number `app`, if one of its URLs wants it. Never waits: a full
    /// queue drops the event and counts it.
    pub fn send(&self, app: usize, event: Event) {
        let Some(urls) = self.wanted.get(app) else {
            return;
        };
        let kind = event.kind();
        if !urls
            .iter()
            .any(|(_, types)| types.is_empty() || types.iter().any(|t| t == kind))
        {
            return;
        }
        match self.queue.try_send((app, event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The thread is gone (it never exits while a sender lives, short of a panic).
            Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counters in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        for (name, help, value) in [
            ("sent", "webhook batches delivered", &self.stats.sent),
            (
                "failed",
                "webhook batches given up after every try",
                &self.stats.failed,
            ),
            (
                "retried",
                "webhook tries that failed and were retried",
                &self.stats.retried,
            ),
            (
                "dropped",
                "webhook events dropped on a full queue",
                &self.stats.dropped,
            ),
        ] {
            let _ = writeln!(out, "# HELP uringcast_pusher_webhooks_{name}_total {help}");
            let _ = writeln!(out, "# TYPE uringcast_pusher_webhooks_{name}_total counter");
            let _ = writeln!(
                out,
                "uringcast_pusher_webhooks_{name}_total {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}

/// The sender thread: batches, signs, posts, retries; exits when every worker's sender is
/// gone, after sending what it holds.
fn run(rx: &Receiver<(usize, Event)>, apps: &[Arc<App>], wanted: &Targets, stats: &WebhookStats) {
    let mut pending: Vec<Vec<Event>> = vec![Vec::new(); apps.len()];
    let mut open = true;
    while open {
        // Wait for the first event, then gather for the window.
        match rx.recv() {
            Ok((app, event)) => pending[app].push(event),
            Err(_) => break,
        }
        let deadline = Instant::now() + BATCH_WINDOW;
        while pending.iter().map(Vec::len).sum::<usize>() < MAX_BATCH {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((app, event)) => pending[app].push(event),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for (index, events) in pending.iter_mut().enumerate() {
            if events.is_empty() {
                continue;
            }
            let app = &apps[index];
            for (url, types) in &wanted[index] {
                let chosen: Vec<Event> = events
                    .iter()
                    .filter(|e| types.is_empty() || types.iter().any(|t| t == e.kind()))
                    .cloned()
                    .collect();
                if chosen.is_empty() {
                    continue;
                }
                let body = body(time_ms, &chosen);
                deliver(app, url, &body, stats);
            }
            events.clear();
        }
    }
}

/// Posts one batch to one URL, with retries.
fn deliver(app: &App, url: &Url, body: &str, stats: &WebhookStats) {
    let headers = signature_headers(app, body);
    for attempt in 0..ATTEMPTS {
        std::thread::sleep(backoff(attempt));
        match post(url, &headers, body) {
            Ok(status) if (200..300).contains(&status) => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(status) => tracing::debug!(status, url = %url.authority, "webhook refused"),
            Err(error) => tracing::debug!(%error, url = %url.authority, "webhook failed"),
        }
        if attempt + 1 < ATTEMPTS {
            stats.retried.fetch_add(1, Ordering::Relaxed);
        }
    }
    stats.failed.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(url = %url.authority, path = %url.path, "webhook batch given up after {ATTEMPTS} tries");
}

/// One HTTP/1.1 POST; returns the status.
fn post(url: &Url, headers: &[(&str, String)], body: &str) -> std::io::Result<u16> {
    let addr: SocketAddr = url
        .authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the host has no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        url.path,
        url.authority,
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    // The status line is all we need; read at most 1 KiB of the answer.
    let mut head = [0u8; 1024];
    let mut len = 0;
    while len < head.len() && !head[..len].windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut head[len..])? {
            0 => break,
            n => len += n,
        }
    }
    let line = std::str::from_utf8(&head[..len]).unwrap_or_default();
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status line"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pusher::app::AppLimits;

    #[test]
    fn urls() {
        let url = Url::parse("http://127.0.0.1:8080/hooks?x=1").unwrap();
        assert_eq!(
            (url.authority.as_str(), url.path.as_str()),
            ("127.0.0.1:8080", "/hooks?x=1")
        );
        let url = Url::parse("http://localhost").unwrap();
        assert_eq!(
            (url.authority.as_str(), url.path.as_str()),
            ("localhost:80", "/")
        );
        for bad in [
            "https://a/",
            "ftp://a",
            "http://",
            "http://a b/",
            "http://u@h/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bodies_and_signatures_are_pushers() {
        let events = [
            Event::ChannelOccupied {
                channel: "a".into(),
            },
            Event::MemberAdded {
                channel: "presence-a".into(),
                user_id: "7".into(),
            },
            Event::ClientEvent {
                channel: "private-a".into(),
                event: "client-x".into(),
                data: "{}".into(),
                socket_id: "1.2".into(),
                user_id: None,
            },
        ];
        let text = body(1234, &events);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["time_ms"], 1234);
        assert_eq!(
            value["events"][0],
            serde_json::json!({"name": "channel_occupied", "channel": "a"})
        );
        assert_eq!(value["events"][1]["user_id"], "7");
        assert_eq!(value["events"][2]["name"], "client_event");
        assert!(value["events"][2].get("user_id").is_none());
        let app = App {
            id: "1".into(),
            key: "k".into(),
            secret: "s".into(),
            limits: AppLimits::default(),
            webhooks: Vec::new(),
        };
        let [key, signature] = signature_headers(&app, &text);
        assert_eq!(key, ("X-Pusher-Key", "k".to_owned()));
        assert_eq!(signature.1, sign("s", &text));
    }

    #[test]
    fn backoff_doubles() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(3), FIRST_BACKOFF * 4);
    }
}
